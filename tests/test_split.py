import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import make_image_tree, png_bytes, split_cfg
from tlpipe.errors import TlpipeError
from tlpipe.data.raw import RawData
from tlpipe.data.split import build_split, carve, split_metrics, write_split_csv

CHEST_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest-xray-pneumonia-224.zip"


def patient_tree(root: Path, seed: int = 0) -> None:
    """Chest-X-ray-like names: several images per patient."""
    (root / "NORMAL").mkdir(parents=True)
    (root / "PNEUMONIA").mkdir(parents=True)
    for patient in range(30):
        for k in range(3):
            (root / "PNEUMONIA" / f"person{patient}_bacteria_{k}.jpeg").write_bytes(png_bytes(seed + patient * 10 + k))
            (root / "NORMAL" / f"IM-{patient:04d}-000{k}.jpeg").write_bytes(png_bytes(seed + 5000 + patient * 10 + k))


def split_of(raw: Path, **overrides):
    return build_split(RawData(raw), split_cfg(**overrides))


def test_split_is_byte_identical_for_same_seed_and_changes_with_seed(tmp_path):
    make_image_tree(tmp_path / "raw" / "set", {"a": 40, "b": 40, "c": 40})
    outputs = []
    for seed in (1, 1, 2):
        table, _ = split_of(tmp_path / "raw", seed=seed)
        out = tmp_path / f"split{len(outputs)}.csv"
        write_split_csv(table, out)
        outputs.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert outputs[0] == outputs[1] != outputs[2]


def test_stratified_fractions(tmp_path):
    make_image_tree(tmp_path / "raw" / "set", {"a": 100, "b": 60})
    table, _ = split_of(tmp_path / "raw", val_fraction=0.2, test_fraction=0.2)
    counts = pd.crosstab(table["split"], table["label"])
    assert counts.loc["test", "a"] == 20 and counts.loc["test", "b"] == 12
    assert counts.loc["val", "a"] == 20 and counts.loc["val", "b"] == 12
    assert list(table.columns) == ["path", "label", "split", "group"]


def test_groups_never_span_splits(tmp_path):
    patient_tree(tmp_path / "raw" / "xray")
    table, report = split_of(tmp_path / "raw", group_regex=r"^(person\d+|IM-\d+)", seed=3)
    groups = {s: set(table["group"][table["split"] == s]) for s in ("train", "val", "test")}
    assert not groups["train"] & groups["val"]
    assert not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert table.groupby("group").size().eq(3).all()
    assert report.ungrouped_files == 0


def test_shipped_test_split_is_kept_and_val_carved_from_train_by_group(tmp_path):
    patient_tree(tmp_path / "raw" / "chest_xray" / "train")
    patient_tree(tmp_path / "raw" / "chest_xray" / "test", seed=100_000)
    table, _ = split_of(tmp_path / "raw", group_regex=r"^(person\d+|IM-\d+)")
    test = table[table["split"] == "test"]
    assert len(test) == 180 and test["path"].str.contains("/test/").all()
    train, val = table[table["split"] == "train"], table[table["split"] == "val"]
    assert val["path"].str.contains("/train/").all() and len(val) > 0
    assert not set(train["group"]) & set(val["group"])


def test_existing_val_folder_kept_or_merged(tmp_path):
    make_image_tree(tmp_path / "raw" / "d", {"train/a": 20, "train/b": 20, "val/a": 2, "val/b": 2, "test/a": 5, "test/b": 5})
    kept, _ = split_of(tmp_path / "raw")
    assert (kept["split"] == "val").sum() == 4
    merged, _ = split_of(tmp_path / "raw", existing_val="train", val_fraction=0.25)
    # a quarter of each class's 22 train + val images: 5.5, rounded down (a tie keeps more to train on)
    assert (merged["split"] == "val").sum() == 10


@pytest.mark.robustness
def test_labels_groups_and_split_from_metadata_csv(tmp_path):
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    rows = []
    for i in range(60):
        (raw / "images" / f"ISIC_{i:04d}.jpg").write_bytes(png_bytes(i))
        rows.append({"image_id": f"ISIC_{i:04d}", "dx": ["nv", "mel", "bkl"][i % 3], "lesion_id": f"L{i // 2}"})
    rows.append({"image_id": "ISIC_9999", "dx": "nv", "lesion_id": "L999"})
    (raw / "images" / "stray.jpg").write_bytes(png_bytes(999))
    pd.DataFrame(rows).to_csv(raw / "meta.csv", index=False)
    table, report = split_of(raw, labels_csv="meta.csv", id_column="image_id", label_column="dx",
                             group_column="lesion_id", test_fraction=0.2, val_fraction=0.2)
    assert sorted(table["label"].unique()) == ["bkl", "mel", "nv"]
    assert table.groupby("group")["split"].nunique().eq(1).all()
    assert report.labels_without_file == ["ISIC_9999"]
    assert {"path": "images/stray.jpg", "reason": "no label for id 'stray' in meta.csv"} in report.skipped


@pytest.mark.robustness
def test_missing_csv_column_is_a_clear_error(tmp_path):
    (tmp_path / "raw").mkdir()
    pd.DataFrame({"image_id": ["a"], "dx": ["nv"]}).to_csv(tmp_path / "raw" / "meta.csv", index=False)
    with pytest.raises(TlpipeError, match="column 'diagnosis' is not in meta.csv"):
        split_of(tmp_path / "raw", labels_csv="meta.csv", id_column="image_id", label_column="diagnosis")


@pytest.mark.robustness
def test_litter_and_non_images_are_reported(tmp_path):
    make_image_tree(tmp_path / "raw" / "set", {"a": 10, "b": 10})
    (tmp_path / "raw" / "set" / "a" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "raw" / "set" / "__MACOSX" / "a").mkdir(parents=True)
    (tmp_path / "raw" / "set" / "__MACOSX" / "a" / "._img000.png").write_bytes(b"x")
    (tmp_path / "raw" / "set" / "a" / "notes.txt").write_text("hi")
    (tmp_path / "raw" / "set" / "b" / "empty_folder").mkdir()
    table, report = split_of(tmp_path / "raw")
    reasons = {r["path"]: r["reason"] for r in report.skipped}
    assert reasons["set/a/.DS_Store"] == "hidden or system file"
    assert reasons["set/__MACOSX/a/._img000.png"] == "hidden or system file"
    assert reasons["set/a/notes.txt"] == "not an image file ('.txt')"
    assert len(table) == 20


@pytest.mark.robustness
def test_small_class_error_or_drop(tmp_path):
    make_image_tree(tmp_path / "raw" / "set", {"a": 30, "b": 30, "tiny": 2})
    with pytest.raises(TlpipeError, match="'tiny'.*split.small_class: drop"):
        split_of(tmp_path / "raw")
    table, report = split_of(tmp_path / "raw", small_class="drop")
    assert "tiny" not in set(table["label"])
    assert sum("class 'tiny' too small" in r["reason"] for r in report.skipped) == 2


@pytest.mark.robustness
def test_single_class_and_empty_source_are_errors(tmp_path):
    make_image_tree(tmp_path / "one" / "set", {"a": 30})
    with pytest.raises(TlpipeError, match="needs at least 2"):
        split_of(tmp_path / "one")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TlpipeError, match="no image files found"):
        split_of(tmp_path / "empty")


@pytest.mark.robustness
def test_nested_duplicate_tree_is_dropped_and_cross_split_copies_reported(tmp_path):
    root = tmp_path / "raw" / "chest_xray"
    make_image_tree(root / "train", {"A": 20, "B": 20})
    make_image_tree(root / "test", {"A": 5, "B": 5}, seed=7)
    shutil.copytree(root / "train", root / "chest_xray" / "train")  # the Kaggle zip's nested copy
    leak = root / "train" / "A" / "leak.png"
    shutil.copy(root / "test" / "A" / "img000.png", leak)
    table, report = split_of(tmp_path / "raw")
    assert len(table) == 51 and not table["path"].str.contains("chest_xray/chest_xray").any()
    copies = [r for r in report.skipped if "same name and content" in r["reason"]]
    assert len(copies) == 40
    assert report.cross_split_duplicates == [{"path": "chest_xray/train/A/leak.png", "same_as": "chest_xray/test/A/img000.png"}]
    dropped, report = split_of(tmp_path / "raw", cross_split_duplicates="drop")
    assert "chest_xray/train/A/leak.png" not in set(dropped["path"])
    assert any(r["path"] == "chest_xray/train/A/leak.png" for r in report.skipped)


@pytest.mark.robustness
def test_same_content_different_labels_dropped_and_copies_grouped(tmp_path):
    make_image_tree(tmp_path / "raw" / "s", {"a": 20, "b": 20})
    shutil.copy(tmp_path / "raw" / "s" / "a" / "img000.png", tmp_path / "raw" / "s" / "b" / "confused.png")
    shutil.copy(tmp_path / "raw" / "s" / "a" / "img001.png", tmp_path / "raw" / "s" / "a" / "again.png")
    table, report = split_of(tmp_path / "raw")
    assert "s/b/confused.png" not in set(table["path"]) and "s/a/img000.png" not in set(table["path"])
    splits = table.set_index("path")["split"]
    assert splits["s/a/again.png"] == splits["s/a/img001.png"]


@pytest.mark.robustness
def test_unusual_file_names(tmp_path):
    raw = tmp_path / "raw"
    make_image_tree(raw / "set", {"a": 10, "b b": 10})
    (raw / "set" / "a" / "ünïcode name.png").write_bytes(png_bytes(77))
    with zipfile.ZipFile(raw / "names.zip", "w") as zf:
        zf.writestr("a/with space é.png", png_bytes(78))
    table, _ = split_of(raw)
    assert {"set/a/ünïcode name.png", "names.zip/a/with space é.png"} <= set(table["path"])
    assert "b b" in set(table["label"])


@pytest.mark.robustness
def test_metrics_count_every_file(tmp_path):
    make_image_tree(tmp_path / "raw" / "set", {"a": 20, "b": 20})
    (tmp_path / "raw" / "set" / "a" / "x.txt").write_text("x")
    table, report = split_of(tmp_path / "raw")
    metrics = split_metrics(table, report)
    assert sum(metrics["total"].values()) + metrics["skipped_count"] == 41
    assert metrics["counts"]["train"]["a"] + metrics["counts"]["val"]["a"] + metrics["counts"]["test"]["a"] == 20


@pytest.mark.skipif(not CHEST_ZIP.exists(), reason="../shared/data/chest-xray-pneumonia-224.zip not present")
def test_real_chest_xray_keeps_official_test_and_separates_patients(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(CHEST_ZIP, raw / CHEST_ZIP.name)
    table, _ = split_of(raw, group_regex=r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)")
    test = table[table["split"] == "test"]
    assert len(test) == 624 and test["path"].str.contains("/test/").all()
    assert (test["label"] == "NORMAL").sum() == 234
    train, val = table[table["split"] == "train"], table[table["split"] == "val"]
    assert len(train) + len(val) == 5216
    assert not set(train["group"]) & set(val["group"])


def test_labels_csv_found_by_name_inside_an_archive_of_any_name(tmp_path):
    src = tmp_path / "src"
    (src / "imgs").mkdir(parents=True)
    rows = []
    for i in range(30):
        (src / "imgs" / f"ISIC_{i:04d}.png").write_bytes(png_bytes(i))
        rows.append({"image_id": f"ISIC_{i:04d}", "dx": ["nv", "mel"][i % 2]})
    pd.DataFrame(rows).to_csv(src / "HAM10000_metadata.csv", index=False)
    (tmp_path / "raw").mkdir()
    shutil.make_archive(str(tmp_path / "raw" / "archive"), "zip", src)
    table, _ = split_of(tmp_path / "raw", labels_csv="HAM10000_metadata.csv", id_column="image_id", label_column="dx")
    assert len(table) == 30 and set(table["label"]) == {"nv", "mel"}


def test_carved_splits_keep_their_images_when_images_are_added(tmp_path):
    # 2,000 images in two classes; then ten more (a new batch, in both classes)
    make_image_tree(tmp_path / "raw", {"set/a": 1200, "set/b": 800})
    before, _ = split_of(tmp_path / "raw")
    make_image_tree(tmp_path / "raw", {"set/a": 6, "set/b": 4}, seed=9, prefix="new")
    after, _ = split_of(tmp_path / "raw")
    old = after[~after["path"].str.contains("/new")].set_index("path")["split"]
    moved = (before.set_index("path")["split"] != old).sum()
    # each added image can push at most one old image across the boundary of a carve (test, then val)
    assert moved <= 2 * 10, moved
    for table in (before, after):
        counts = pd.crosstab(table["label"], table["split"])
        totals = counts.sum(axis=1)
        assert (abs(counts["test"] - 0.15 * totals) <= 1).all() and (abs(counts["val"] - 0.15 * totals) <= 1).all()


def test_carving_never_splits_a_group_and_is_stable_per_group():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 6, size=700)  # patients with 1-5 images, ~2,100 images in 3 classes
    groups = np.repeat([f"patient{i}" for i in range(700)], sizes)
    labels = np.repeat(rng.choice(["a", "b", "c"], size=700, p=[0.6, 0.3, 0.1]), sizes)
    before = carve(labels, groups, 0.2, seed=3)
    for label in "abc":  # within one group (at most 5 images) of the class's share
        assert abs(before[labels == label].sum() - 0.2 * (labels == label).sum()) <= 5
    assert not set(groups[before]) & set(groups[~before])
    # ten more images: two in a new patient, eight in existing ones (they follow their patient)
    more_groups = np.concatenate([groups, ["patient_new"] * 2, groups[rng.choice(len(groups), 8)]])
    more_labels = np.concatenate([labels, ["c", "c"], [labels[groups == g][0] for g in more_groups[-8:]]])
    after = carve(more_labels, more_groups, 0.2, seed=3)
    assert not set(more_groups[after]) & set(more_groups[~after])
    moved_groups = set(groups[before != after[:len(groups)]])
    assert len(moved_groups) <= 10, len(moved_groups)
