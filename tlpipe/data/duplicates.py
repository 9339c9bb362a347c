"""Copies of one image among the listed files: identical bytes, and near-duplicates (tlpipe.data.phash),
found by content, then kept, grouped or dropped."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from tlpipe.data.phash import MIN_SIDE, THUMB_SIDE, fingerprint, near_duplicates, too_small
from tlpipe.data.raw import RawData
from tlpipe.data.split_report import SplitReport


@dataclass
class Fingerprints:
    """Near-duplicate fingerprints (tlpipe.data.phash.fingerprint) of the listed files, one row
    each, in one array per field: a million images hold about 1 KB each here."""
    paths: list[str]
    hashes: np.ndarray   # (N,) uint64 pHash
    thumbs: np.ndarray   # (N, THUMB_SIDE**2) float32, unit-norm and zero-mean
    found: np.ndarray    # (N,) bool: decoded, and large enough to search

    @classmethod
    def empty(cls, paths: list[str]) -> "Fingerprints":
        n = len(paths)
        return cls(paths, np.zeros(n, dtype=np.uint64), np.zeros((n, THUMB_SIDE ** 2), dtype=np.float32),
                   np.zeros(n, dtype=bool))


def _content_hashes(raw: RawData, paths: list[str], report: SplitReport,
                    prints: Fingerprints | None = None) -> dict[str, str]:
    """Content hash of every readable file; with `prints`, also fill in its near-duplicate fingerprint."""
    hashes = {}
    row_of = {path: row for row, path in enumerate(prints.paths)} if prints is not None else {}
    for path, content in raw.iter_bytes(paths):
        if isinstance(content, Exception):
            report.skip(path, f"unreadable: {content}")
        else:
            hashes[path] = hashlib.blake2b(content, digest_size=16).hexdigest()
            if prints is not None and too_small(content):
                report.too_small_for_near_duplicates += 1
            elif prints is not None and (found := fingerprint(content)) is not None:
                row = row_of[path]
                prints.hashes[row], prints.thumbs[row], prints.found[row] = found[0], found[1], True
    return hashes


def _union_groups(images: pd.DataFrame, near: list[tuple[str, str]]) -> pd.Series:
    """Merge the groups of rows that share content or are near-duplicates, so that carving never
    separates copies."""
    parent: dict[str, str] = {}

    def root(group: str) -> str:
        while parent.get(group, group) != group:
            group = parent[group]
        return group

    def union(a: str, b: str) -> None:
        a, b = root(a), root(b)
        if a != b:
            parent[b] = a

    for _, copies in images.groupby("hash", sort=False):
        for group in copies["group"].iloc[1:]:
            union(copies["group"].iloc[0], group)
    group_of = dict(zip(images["path"], images["group"]))
    for a, b in near:
        if a in group_of and b in group_of:
            union(group_of[a], group_of[b])
    return images["group"].map(root)


def _near_pairs(images: pd.DataFrame, prints: Fingerprints, similarity: float) -> list[tuple[str, str]]:
    """Near-duplicate pairs (path, path) among the kept images, identical content left out. The
    search runs over every fingerprint (copies dropped since are few) so that no array is copied."""
    content = dict(zip(images["path"], images["hash"]))
    searched = np.flatnonzero(prints.found)
    if len(searched) < 2:
        return []
    pairs = near_duplicates(prints.hashes[searched], prints.thumbs[searched] if len(searched) < len(prints.paths)
                            else prints.thumbs, similarity)
    paths = [prints.paths[row] for row in searched]
    return [(paths[i], paths[j]) for i, j in pairs.tolist()
            if paths[i] in content and paths[j] in content and content[paths[i]] != content[paths[j]]]


def _drop_near_across_shipped(images: pd.DataFrame, near: list[tuple[str, str]], report: SplitReport) -> pd.DataFrame:
    """`cross_split_duplicates: drop`: the image on the side we learn from (train, then val) goes."""
    rank = dict(zip(images["path"], images["shipped"].map({"test": 0, "val": 1, "train": 2}).fillna(3)))
    shipped = dict(zip(images["path"], images["shipped"]))
    dropped: set[str] = set()
    for a, b in near:
        if rank[a] == rank[b] or a in dropped or b in dropped:
            continue
        keep, drop = (a, b) if rank[a] < rank[b] else (b, a)
        dropped.add(drop)
        report.skip(drop, f"near-duplicate of {keep} ({shipped[keep]} split)")
    return images[~images["path"].isin(dropped)]


def handle_duplicates(images: pd.DataFrame, raw: RawData, cfg: dict, report: SplitReport) -> pd.DataFrame:
    """Find identical image content and decide, per copy, to keep, group or drop it.

    - the same file name twice in one split (a nested copy of the tree): one copy is kept;
    - other copies in one split are kept, and put in one group so carving never separates them;
    - copies across shipped splits are reported, or dropped from the side we learn from;
    - copies with different labels cannot all be right: all are dropped;
    - near-duplicates (split.near_duplicate_similarity, null: off) are grouped like copies; across
      shipped splits they are reported (metrics/split.json, near_duplicates) or, with
      cross_split_duplicates: drop, dropped from the side we learn from.
    """
    similarity = cfg["near_duplicate_similarity"]
    paths = images["path"].tolist()
    prints = Fingerprints.empty(paths) if similarity is not None else None
    hashes = _content_hashes(raw, paths, report, prints)
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
    started = time.perf_counter()
    near = _near_pairs(images, prints, similarity) if prints is not None else []
    report.near_duplicate_search_s = round(time.perf_counter() - started, 2)
    if near and cfg["cross_split_duplicates"] == "drop":
        images = _drop_near_across_shipped(images, near, report)
        kept = set(images["path"])
        near = [(a, b) for a, b in near if a in kept and b in kept]
    report.near_duplicate_pairs = near
    images["group"] = _union_groups(images, near)
    return images


def _components(pairs: list[tuple[str, str]]) -> list[set[str]]:
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = x = parent.get(parent[x], parent[x])
        return x

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[rb] = ra
    groups: dict[str, set[str]] = {}
    for x in {p for pair in pairs for p in pair}:
        groups.setdefault(root(x), set()).add(x)
    return list(groups.values())


def leak_report(table: pd.DataFrame, report: SplitReport, similarity: float | None, examples: int = 10) -> dict:
    """Copies and near-duplicates among the final splits: groups, and for val and test the images
    with a copy or near-duplicate in another split (count, per class, examples)."""
    copies = [(e["path"], e["same_as"]) for e in report.cross_split_duplicates + report.duplicates]
    split_of, label_of = dict(zip(table["path"], table["split"])), dict(zip(table["path"], table["label"]))
    pairs = [(a, b) for a, b in report.near_duplicate_pairs + copies if a in split_of and b in split_of]
    groups = _components(pairs)
    across: dict[str, dict] = {}
    for split in ("val", "test"):
        matches: dict[str, str] = {}
        by_split: dict[str, set[str]] = {}
        for a, b in pairs:
            for here, there in ((a, b), (b, a)):
                if split_of[here] == split and split_of[there] != split:
                    matches.setdefault(here, there)
                    by_split.setdefault(split_of[there], set()).add(here)
        per_class = pd.Series([label_of[p] for p in matches], dtype=object).value_counts()
        total = int((table["split"] == split).sum())
        across[split] = {"images": len(matches), "of": total,
                         "per_class": {label: int(n) for label, n in per_class.sort_index().items()},
                         "with_a_match_in": {other: len(found) for other, found in sorted(by_split.items())},
                         "examples": [{"path": p, "near": matches[p], "near_split": split_of[matches[p]]}
                                      for p in sorted(matches)[:examples]]}
    return {"similarity": similarity, "search_s": report.near_duplicate_search_s, "pairs": len(pairs),
            "groups": len(groups),
            "images_in_groups": sum(len(g) for g in groups), "largest_group": max((len(g) for g in groups), default=0),
            "pairs_with_different_labels": sum(label_of[a] != label_of[b] for a, b in pairs),
            # smaller images are searched for exact copies only (see tlpipe.data.phash.MIN_SIDE)
            "too_small_to_search": {"images": report.too_small_for_near_duplicates, "below_px": MIN_SIDE},
            "across_splits": across}
