"""Copies of one image among the listed files: found by content, then kept, grouped or dropped."""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import pandas as pd

from tlpipe.data.raw import RawData

if TYPE_CHECKING:
    from tlpipe.data.split import SplitReport


def _content_hashes(raw: RawData, paths: list[str], report: SplitReport) -> dict[str, str]:
    hashes = {}
    for path, content in raw.iter_bytes(paths):
        if isinstance(content, Exception):
            report.skip(path, f"unreadable: {content}")
        else:
            hashes[path] = hashlib.blake2b(content, digest_size=16).hexdigest()
    return hashes


def _union_groups(images: pd.DataFrame) -> pd.Series:
    """Merge the groups of rows that share content, so that carving never separates copies."""
    parent: dict[str, str] = {}

    def root(group: str) -> str:
        while parent.get(group, group) != group:
            group = parent[group]
        return group

    for _, copies in images.groupby("hash", sort=False):
        first = root(copies["group"].iloc[0])
        for group in copies["group"].iloc[1:]:
            other = root(group)
            if other != first:
                parent[other] = first
    return images["group"].map(root)


def handle_duplicates(images: pd.DataFrame, raw: RawData, cfg: dict, report: SplitReport) -> pd.DataFrame:
    """Find identical image content and decide, per copy, to keep, group or drop it.

    - the same file name twice in one split (a nested copy of the tree): one copy is kept;
    - other copies in one split are kept, and put in one group so carving never separates them;
    - copies across shipped splits are reported, or dropped from the side we learn from;
    - copies with different labels cannot all be right: all are dropped.
    """
    hashes = _content_hashes(raw, images["path"].tolist(), report)
    images = images[images["path"].isin(hashes)].copy()
    images["hash"] = images["path"].map(hashes)
    rank = images["shipped"].map({"test": 0, "val": 1, "train": 2}).fillna(3)
    images = images.assign(_rank=rank, _depth=images["path"].str.count("/"))
    images = images.sort_values(["hash", "_rank", "_depth", "path"])
    keep = []
    for _, copies in images.groupby("hash", sort=False):
        if copies["label"].nunique() > 1:
            labels = ", ".join(f"{p} ({l})" for p, l in zip(copies["path"], copies["label"]))
            for path in copies["path"]:
                report.skip(path, f"same image content with different labels: {labels}")
            continue
        first = copies.iloc[0]
        kept_names = {(first["shipped"], PurePosixPath(first["path"]).name)}
        keep.append(first.name)
        for _, other in copies.iloc[1:].iterrows():
            name_key = (other["shipped"], PurePosixPath(other["path"]).name)
            if name_key in kept_names:
                report.skip(other["path"], f"copy of {first['path']} (same name and content)")
            elif other["shipped"] != first["shipped"] and cfg["cross_split_duplicates"] == "drop":
                report.skip(other["path"], f"same image as {first['path']} ({first['shipped']} split)")
            else:
                keep.append(other.name)
                kept_names.add(name_key)
                entry = {"path": other["path"], "same_as": first["path"]}
                if other["shipped"] != first["shipped"]:
                    report.cross_split_duplicates.append(entry)
                else:
                    report.duplicates.append(entry)
    images = images.loc[sorted(keep)].drop(columns=["_rank", "_depth"])
    images["group"] = _union_groups(images)
    return images
