"""The split stage: list the images, label and group them, and assign train/val/test.

Guarantees: identical inputs and seed give the same table; a group (patient, lesion) never
spans two carved splits; adding images moves few old ones between carved splits; a split the data set ships (train/ test/ folders or a split column)
is kept; every file left out is listed with the reason.
"""

import io
import re
import sys
from dataclasses import replace
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from tlpipe.errors import TlpipeError
from tlpipe.data import SPLITS
from tlpipe.data.duplicates import handle_duplicates, leak_report
from tlpipe.data.group_keys import find_group_key
from tlpipe.data.images import is_image_name
from tlpipe.data.raw import RawData, is_litter
from tlpipe.data.shards import path_hashes
from tlpipe.data.split_report import SplitReport
from tlpipe.params import SplitParams

SPLIT_ALIASES = {"train": "train", "training": "train", "test": "test", "testing": "test",
                 "val": "val", "valid": "val", "validation": "val"}
COLUMNS = ["path", "label", "split", "group"]


def _shipped_split(path: str) -> str | None:
    """train/val/test from a folder name above the class folder, if the data set has one."""
    for part in reversed(PurePosixPath(path).parts[:-2]):
        if part.lower() in SPLIT_ALIASES:
            return SPLIT_ALIASES[part.lower()]
    return None


def resolve_labels_csv(raw: RawData, name: str) -> str:
    """The labels CSV's path in the raw data: as given, or the one file ending in '/name' (so
    'HAM10000_metadata.csv' works whatever the archive around it is called)."""
    paths = [entry.path for entry in raw.entries()]
    if name in paths:
        return name
    matches = [path for path in paths if path.endswith("/" + name.lstrip("/"))]
    if len(matches) > 1:
        raise TlpipeError(f"split.labels_csv: '{name}' matches {len(matches)} files ({', '.join(matches[:3])}); "
                          "give the full path relative to data/raw.")
    return matches[0] if matches else name


def _read_labels_csv(raw: RawData, cfg: SplitParams) -> pd.DataFrame:
    csv_path = cfg.labels_csv
    (_, content), = raw.iter_bytes([csv_path])
    if isinstance(content, Exception):
        raise TlpipeError(f"split.labels_csv: cannot read '{csv_path}' in the raw data ({content}). "
                          "Give its path relative to data/raw, through the archive name if any.")
    try:
        table = pd.read_csv(io.BytesIO(content), dtype=str, keep_default_na=False)
    except ValueError as error:  # not UTF-8, empty, or ragged rows
        raise TlpipeError(f"split.labels_csv: '{csv_path}' is not a readable UTF-8 CSV file ({error}). "
                          "Save it as CSV in UTF-8, with a header row.") from None
    for key in ("id_column", "label_column", "group_column", "split_column"):
        column = getattr(cfg, key)
        if key in ("id_column", "label_column") and column is None:
            raise TlpipeError(f"split.{key}: required when split.labels_csv is set.")
        if column is not None and column not in table.columns:
            raise TlpipeError(f"split.{key}: column '{column}' is not in {csv_path} "
                              f"(columns: {', '.join(table.columns)}).")
    # an id may carry the file's extension or folder (ISIC_0024306.jpg, images/ISIC_0024306.jpg):
    # images are matched by their name without extension either way
    ids = table[cfg.id_column].map(lambda v: PurePosixPath(v.strip()).stem if is_image_name(v.strip()) else v.strip())
    if ids.duplicated().any():
        dup = table[cfg.id_column][ids.duplicated()].iloc[0]
        raise TlpipeError(f"{csv_path}: id '{dup}' appears twice in column '{cfg.id_column}'.")
    return table.set_index(ids)


def _group_pattern(paths: list[str], labels: list[str], groups: list, cfg: SplitParams, report: SplitReport) -> str | None:
    """The regex that finds each image's subject in its file name: split.group_regex, or with
    `auto` the key the names carry (tlpipe.data.group_keys), or none. Recorded in the report."""
    setting = cfg.group_regex
    if setting != "auto":
        report.group_key = {"mode": "regex" if setting else "off", "regex": setting}
        return setting
    ungrouped = [row for row, group in enumerate(groups) if group is None]
    found = find_group_key([paths[r] for r in ungrouped], [labels[r] for r in ungrouped]) if ungrouped else None
    if found is None:
        report.group_key = {"mode": "auto", "regex": None}
        return None
    report.group_key = {"mode": "auto", "regex": found.regex, "subjects": found.groups,
                        "largest": [{"key": key, "images": n} for key, n in found.examples]}
    return found.regex


def list_images(raw: RawData, cfg: SplitParams, report: SplitReport, entries: list | None = None) -> pd.DataFrame:
    """One row per image file (of `entries`, default all of `raw`): path, label, shipped split (or None), group."""
    entries = raw.entries() if entries is None else entries
    for rejected in raw.rejected:
        report.skip(rejected.path, rejected.reason)
    report.empty_folders = list(raw.empty_folders)
    if cfg.labels_csv:
        cfg = replace(cfg, labels_csv=resolve_labels_csv(raw, cfg.labels_csv))
    table = _read_labels_csv(raw, cfg) if cfg.labels_csv else None
    # one list per column, each label string shared: a million rows hold little more than their paths
    paths, labels, shipped_splits, groups, seen_ids, label_strings = [], [], [], [], set(), {}
    for entry in entries:
        path = PurePosixPath(entry.path)
        if entry.path == cfg.labels_csv:
            continue
        if is_litter(entry.path):
            report.skip(entry.path, "hidden or system file")
            continue
        if not is_image_name(entry.path):
            report.skip(entry.path, f"not an image file ('{path.suffix or path.name}')")
            continue
        shipped, group = _shipped_split(entry.path), None
        if table is not None:
            if path.stem not in table.index:
                report.skip(entry.path, f"no label for id '{path.stem}' in {cfg.labels_csv}")
                continue
            seen_ids.add(path.stem)
            record = table.loc[path.stem]
            label = record[cfg.label_column].strip()
            if not label:
                report.skip(entry.path, f"empty label in column '{cfg.label_column}' of {cfg.labels_csv}")
                continue
            if cfg.group_column:
                group = record[cfg.group_column] or None
            if cfg.split_column:
                value = record[cfg.split_column].lower()
                if value not in SPLIT_ALIASES:
                    raise TlpipeError(f"{cfg.labels_csv}: split value '{value}' for '{path.stem}' "
                                      "must be train, val or test.")
                shipped = SPLIT_ALIASES[value]
        else:
            if len(path.parts) < 2 or (len(path.parts) == 2 and raw.is_archive_root(path.parts[0])):
                report.skip(entry.path, "not inside a class folder")
                continue
            label = path.parent.name
        paths.append(entry.path)
        labels.append(label_strings.setdefault(label, label))
        shipped_splits.append(shipped)
        groups.append(group)
    if table is not None:
        report.labels_without_file = sorted(set(table.index) - seen_ids)
    pattern = _group_pattern(paths, labels, groups, cfg, report)
    group_regex = re.compile(pattern) if pattern else None
    for row, path in enumerate(paths):
        if groups[row] is None and group_regex is not None:
            match = group_regex.search(PurePosixPath(path).name)
            if match:
                groups[row] = match.group(1) if match.groups() else match.group(0)
        if groups[row] is None:
            report.ungrouped_files += group_regex is not None
            groups[row] = path
    if group_regex is not None and paths and report.ungrouped_files == len(paths):
        examples = ", ".join(PurePosixPath(path).name for path in paths[:3])
        raise TlpipeError(f"split.group_regex {cfg.group_regex!r} matches none of the {len(paths)} file names "
                          f"(e.g. {examples}), so nothing would be grouped by patient. Fix the regex (it is "
                          "searched in the file name, not the path), or set it to null.")
    if report.ungrouped_files:
        print(f"split: split.group_regex matched no group in {report.ungrouped_files} of {len(paths)} file names; "
              "each of those is its own group (listed in metrics/split.json as ungrouped_files).", file=sys.stderr)
    return pd.DataFrame({"path": paths, "label": labels, "shipped": shipped_splits, "group": groups},
                        columns=["path", "label", "shipped", "group"])


def carve(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Mask of about `fraction` of the rows, stratified by label, never splitting a group.

    Stable under additions: within each class (a group counts in its most common label), groups are
    taken in an order fixed by a hash of (seed, group name) until the class's share is reached. Adding
    images moves only the groups at that boundary (a few), so a growing data set keeps its validation
    and test images, and its cache shards keep their bytes."""
    if fraction <= 0 or len(labels) == 0:
        return np.zeros(len(labels), dtype=bool)
    rows = pd.DataFrame({"label": labels, "group": groups})
    per_group = rows.groupby(["group", "label"]).size().rename("n").reset_index()
    per_group = per_group.sort_values(["group", "n", "label"], ascending=[True, False, True])
    stratum = per_group.drop_duplicates("group").set_index("group")["label"]
    size = rows.groupby("group").size()
    table = pd.DataFrame({"label": stratum, "n": size.reindex(stratum.index)})
    min_groups = max(2, round(1 / fraction))
    if len(table) < 2:
        raise TlpipeError("split: only one group of images; cannot carve a validation or test split.")
    largest_class = int(table.groupby("label").size().max())
    if largest_class < min_groups:
        raise TlpipeError(f"split: too few images to carve a {fraction:.0%} split: the largest class has "
                          f"{largest_class} image group(s), and carving needs at least {min_groups}. Add images, "
                          "lower split.val_fraction / split.test_fraction, or ship a split (train/ val/ test/ folders).")
    table["key"] = path_hashes([f"{seed}:{group}" for group in table.index])  # the shards' stable hash
    held_out: list = []
    for _, members in table.sort_values("key").groupby("label", sort=False):
        before = members["n"].cumsum() - members["n"]
        # a group is taken when its middle falls inside the class's share: the nearest cut (a tie: fewer)
        taken = members.index[(before + members["n"] / 2 < fraction * members["n"].sum()).to_numpy()]
        if not len(taken) and len(members) >= 2:  # a small class still gets one group
            taken = members.index[:1]
        if len(taken) == len(members):  # and keeps one on the other side
            taken = taken[:-1]
        held_out.extend(taken)
    return rows["group"].isin(set(held_out)).to_numpy()


def assign_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each row: k folds of about equal size and class mix, never splitting a
    group (scikit-learn's StratifiedGroupKFold, shuffled by `seed`)."""
    from sklearn.model_selection import StratifiedGroupKFold

    codes = pd.factorize(pd.Series(groups, dtype=object))[0]
    largest = int(pd.DataFrame({"label": labels, "group": codes}).groupby("label")["group"].nunique().max())
    if largest < k:
        raise TlpipeError(f"split: split.folds is {k} but outside the test split the largest class has only "
                          f"{largest} image group(s), one per fold at least; lower split.folds or add images.")
    fold = np.empty(len(labels), dtype=int)
    cutter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for index, (_, held_out) in enumerate(cutter.split(np.zeros(len(labels)), labels, codes)):
        fold[held_out] = index
    return fold


def carvable_groups(images: pd.DataFrame, fraction: float, report: SplitReport) -> np.ndarray:
    """The groups to carve by. Where even the largest class has too few groups to carve `fraction`
    by group (the frames of a few rotating objects, a few patients), the classes short of groups
    are carved image by image instead of refusing, and the report says so: their held-out images
    then have near-copies in training, and figures on them are flattered."""
    groups = images["group"].to_numpy(dtype=object).copy()
    needed = max(2, round(1 / fraction)) if fraction > 0 else 0
    per_class = images.groupby("label")["group"].nunique()
    if not len(per_class) or per_class.max() >= needed:
        return groups
    for label, count in per_class[per_class < needed].items():
        rows = (images["label"] == label).to_numpy()
        if rows.sum() >= needed:
            groups[rows] = images["path"].to_numpy()[rows]
            report.carved_by_image.setdefault(str(label), {"groups": int(count), "images": int(rows.sum())})
    return groups


def assign_splits(images: pd.DataFrame, cfg: SplitParams, report: SplitReport) -> pd.Series:
    split = images["shipped"].copy()
    if cfg.existing_val == "train":
        split[split == "val"] = "train"
    pool = split.isna() | (split == "train")
    if not (split == "test").any() and cfg.test_fraction > 0:
        groups = carvable_groups(images[pool], cfg.test_fraction, report)
        mask = carve(images["label"][pool].to_numpy(), groups, cfg.test_fraction, cfg.seed)
        split[pool[pool].index[mask]] = "test"
        pool &= split != "test"
        val_share = cfg.val_fraction / (1 - cfg.test_fraction)
    else:
        val_share = cfg.val_fraction
    if cfg.folds >= 2:  # cross-validation: the validation split is one of k folds of what is left
        pool |= split == "val"
        groups = carvable_groups(images[pool], 1 / cfg.folds, report)
        folds = assign_folds(images["label"][pool].to_numpy(), groups, cfg.folds, cfg.seed + 1)
        split[pool] = np.where(folds == cfg.fold, "val", "train")
        report.fold = {"index": cfg.fold, "of": cfg.folds}
    elif not (split == "val").any():
        groups = carvable_groups(images[pool], min(val_share, 0.5), report)
        mask = carve(images["label"][pool].to_numpy(), groups, min(val_share, 0.5), cfg.seed + 1)
        split[pool[pool].index[mask]] = "val"
    split[split.isna()] = "train"
    if not (split == "train").any():
        shipped = ", ".join(sorted(images["shipped"].dropna().unique()))
        raise TlpipeError(f"split: no image is left to train on: all {len(split)} images sit under folders named "
                          f"after a split ({shipped}; e.g. {images['path'].iloc[0]}), and none under train/. If "
                          "that folder is not a split but part of your data, rename it; otherwise put the "
                          "training images under train/.")
    return split


def _too_small_classes(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    present = [s for s in SPLITS if (table["split"] == s).any()]
    counts = pd.crosstab(table["label"], table["split"]).reindex(columns=present, fill_value=0)
    small = counts[(counts == 0).any(axis=1)]
    return {label: {s: int(n) for s, n in row.items()} for label, row in small.iterrows()}


def build_split(raw: RawData, cfg: SplitParams) -> tuple[pd.DataFrame, SplitReport]:
    report = SplitReport()
    images = list_images(raw, cfg, report)
    if images.empty:
        raise TlpipeError(f"{raw.root}: no image files found ({len(report.skipped)} other files skipped). "
                          "Expect class folders of images, e.g. data/cats/001.jpg.")
    if cfg.existing_test == "train":  # carve a test split of our own, by groups, from everything
        images.loc[images["shipped"] == "test", "shipped"] = "train"
    images = handle_duplicates(images, raw, cfg, report)
    images["split"] = assign_splits(images, cfg, report)
    table = images[COLUMNS]
    small = _too_small_classes(table)
    if small and cfg.small_class == "error":
        detail = "; ".join(f"'{label}' {counts}" for label, counts in small.items())
        raise TlpipeError(f"split: classes too small to appear in every split: {detail}. Add images, "
                          "or set split.small_class: drop to leave them out (they are then reported).")
    for label in small:
        for path in table["path"][table["label"] == label]:
            report.skip(path, f"class '{label}' too small to appear in every split")
    table = table[~table["label"].isin(small)]
    if table["label"].nunique() < 2:
        raise TlpipeError(f"split: found {table['label'].nunique()} class(es) "
                          f"({', '.join(sorted(table['label'].unique()))}); a classifier needs at least 2. "
                          "Put each class's images in a folder named after the class.")
    return table.sort_values("path").reset_index(drop=True), report


def split_metrics(table: pd.DataFrame, report: SplitReport, similarity: float | None = None) -> dict:
    counts = pd.crosstab(table["split"], table["label"])
    return {
        "total": {s: int((table["split"] == s).sum()) for s in SPLITS},
        "classes": sorted(table["label"].unique().tolist()),
        "counts": {s: {label: int(n) for label, n in counts.loc[s].items()} for s in SPLITS if s in counts.index},
        "groups": {s: int(table["group"][table["split"] == s].nunique()) for s in SPLITS},
        "group_key": report.group_key,
        # classes with too few groups (subjects, near-duplicate groups) to carve by group, carved image
        # by image: their validation and test images have near-copies in training (flattered figures)
        "carved_by_image": report.carved_by_image,
        "fold": report.fold or None,  # k-fold cross-validation: which fold is validation, of how many
        "ungrouped_files": report.ungrouped_files,
        "skipped_count": len(report.skipped),
        "skipped": sorted(report.skipped, key=lambda r: r["path"]),
        "cross_split_duplicates": report.cross_split_duplicates,
        "duplicates_kept": report.duplicates,
        "near_duplicates": leak_report(table, report, similarity),
        "labels_without_file": report.labels_without_file,
        "empty_folders": report.empty_folders,
    }


def write_split_csv(table: pd.DataFrame, path) -> None:
    table.to_csv(path, index=False, lineterminator="\n")


def warn_leaks(metrics: dict) -> None:
    """Say loudly when validation or test images have copies or near-duplicates in another split."""
    for split, leak in metrics["near_duplicates"]["across_splits"].items():
        if leak["images"]:
            per_class = ", ".join(f"{label} {n}" for label, n in leak["per_class"].items())
            where = ", ".join(f"{n} in {other}" for other, n in leak["with_a_match_in"].items())
            print(f"split: WARNING: {leak['images']} of {leak['of']} {split} images have a copy or near-duplicate in "
                  f"another split ({where}; per class: {per_class}); figures on this {split} split are flattered. "
                  "Examples in metrics/split.json (near_duplicates). Set split.cross_split_duplicates: drop, "
                  "or split.existing_test: train to carve a leak-free test split.", file=sys.stderr)


def say_group_key(key: dict) -> None:
    """Print how subjects were found in file names (metrics/split.json: group_key)."""
    if key.get("mode") == "auto" and key.get("regex"):
        largest = ", ".join(f"{k['key']} {k['images']}" for k in key["largest"])
        print(f"split: a subject key in the file names: {key['subjects']} subjects (largest: {largest} images); "
              f"no subject spans two carved splits. split.group_regex: auto found '{key['regex']}'; pin it "
              "there, or set null to turn it off.", file=sys.stderr)
    elif key.get("mode") == "auto":
        print("split: no subject key in the file names (split.group_regex: auto); give one if images of one "
              "patient or object share no name part.", file=sys.stderr)


def warn_carved_by_image(carved: dict) -> None:
    if carved:
        detail = ", ".join(f"{label} ({c['images']} images in {c['groups']} groups)" for label, c in carved.items())
        print(f"split: WARNING: too few image groups to carve validation and test by group in {detail}: those "
              "classes were carved image by image, so their held-out images have near-copies in training and "
              "figures on them are flattered (metrics/split.json: carved_by_image). Ship a split of separate "
              "objects or sessions to measure them honestly.", file=sys.stderr)
