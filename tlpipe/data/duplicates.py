"""Copies of one image among the listed files: identical bytes, and near-duplicates (tlpipe.data.phash),
found by content, then kept, grouped or dropped."""

from __future__ import annotations

import hashlib
import mmap
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from tlpipe.data.phash import MIN_SIDE, THUMB_SIDE, fingerprint, near_duplicates, too_small
from tlpipe.data.raw import RawData
from tlpipe.data.split_report import SplitReport
from tlpipe.params import SplitParams


class Fingerprints:
    """Near-duplicate fingerprints (tlpipe.data.phash.fingerprint) of the searchable images, one row
    each in the order added: paths, 64-bit hashes and a flat-image flag in memory (about 100 bytes
    an image), the 1 KB thumbnails in an unlinked temporary file. The search reads thumbnails a
    block of rows at a time through a read-only map whose pages are released after each block, so
    they stay in the file (and the OS page cache), not in the process: peak memory does not grow
    with the thumbnails of a million images."""

    def __init__(self, capacity: int):
        self.paths: list[str] = []
        self.hashes = np.zeros(capacity, dtype=np.uint64)
        self.flat = np.zeros(capacity, dtype=bool)  # a zero thumbnail (one grey level): matches by hash only
        self._file = tempfile.TemporaryFile(prefix="tlpipe-thumbnails-")

    def add(self, path: str, phash: int, thumb: np.ndarray) -> None:
        row = len(self.paths)
        self.paths.append(path)
        self.hashes[row], self.flat[row] = phash, not thumb.any()
        self._file.write(np.ascontiguousarray(thumb, dtype=np.float32).tobytes())

    def __len__(self) -> int:
        return len(self.paths)

    @contextmanager
    def thumbnails(self) -> Iterator["MappedRows"]:
        self._file.flush()
        rows = MappedRows(self._file, len(self.paths), THUMB_SIDE ** 2)
        try:
            yield rows
        finally:
            rows.close()

    def close(self) -> None:
        self._file.close()


class MappedRows:
    """`rows[index]`: a copy of those rows of an (n, width) float32 file, the map's pages released."""

    def __init__(self, file, n: int, width: int):
        self._map = mmap.mmap(file.fileno(), n * width * 4, access=mmap.ACCESS_READ)
        self._rows = np.frombuffer(self._map, dtype=np.float32).reshape(n, width)

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        block = self._rows[index]
        if _RELEASE is not None:
            self._map.madvise(_RELEASE)
        return block

    def close(self) -> None:
        del self._rows  # the map cannot close while an array views it
        self._map.close()


_RELEASE = getattr(mmap, "MADV_DONTNEED", None) if hasattr(mmap.mmap, "madvise") else None


def _content_hashes(raw: RawData, paths: list[str], report: SplitReport,
                    prints: Fingerprints | None = None) -> dict[str, str]:
    """Content hash of every readable file; with `prints`, also add its near-duplicate fingerprint."""
    hashes = {}
    for path, content in raw.iter_bytes(paths):
        if isinstance(content, Exception):
            report.skip(path, f"unreadable: {content}")
        else:
            hashes[path] = hashlib.blake2b(content, digest_size=16).hexdigest()
            if prints is not None and too_small(content):
                report.too_small_for_near_duplicates += 1
            elif prints is not None and (found := fingerprint(content)) is not None:
                prints.add(path, *found)
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
    search runs over every fingerprint (copies dropped since are few)."""
    if len(prints) < 2:
        return []
    with prints.thumbnails() as thumbs:
        pairs = near_duplicates(prints.hashes[:len(prints)], thumbs, prints.flat[:len(prints)], similarity)
    content = pd.Series(images["hash"].to_numpy(), index=images["path"]).reindex(prints.paths).to_numpy()
    first, second = content[pairs[:, 0]], content[pairs[:, 1]]
    pairs = pairs[pd.notna(first) & pd.notna(second) & (first != second)]
    paths = np.asarray(prints.paths, dtype=object)
    return list(zip(paths[pairs[:, 0]], paths[pairs[:, 1]]))


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


def handle_duplicates(images: pd.DataFrame, raw: RawData, cfg: SplitParams, report: SplitReport) -> pd.DataFrame:
    """Find identical image content and decide, per copy, to keep, group or drop it.

    - the same file name twice in one split (a nested copy of the tree): one copy is kept;
    - other copies in one split are kept, and put in one group so carving never separates them;
    - copies across shipped splits are reported, or dropped from the side we learn from;
    - copies with different labels cannot all be right: all are dropped;
    - near-duplicates (split.near_duplicate_similarity, null: off) are grouped like copies; across
      shipped splits they are reported (metrics/split.json, near_duplicates) or, with
      cross_split_duplicates: drop, dropped from the side we learn from.
    """
    similarity = cfg.near_duplicate_similarity
    paths = images["path"].tolist()
    prints = Fingerprints(len(paths)) if similarity is not None else None
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
            elif other["shipped"] != first["shipped"] and cfg.cross_split_duplicates == "drop":
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
    if prints is not None:
        prints.close()
    report.near_duplicate_search_s = round(time.perf_counter() - started, 2)
    if near and cfg.cross_split_duplicates == "drop":
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
