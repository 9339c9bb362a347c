"""Patient, lesion and video keys in file names are found, used and recorded; names without one
give none, so nothing is grouped by accident."""

import re
import shutil
from pathlib import PurePosixPath

import pytest

from conftest import REPO, png_bytes, rotating_fruit_frames, split_cfg
from tlpipe.data.group_keys import find_group_key
from tlpipe.data.raw import RawData
from tlpipe.data.split import build_split, split_metrics

CHEST = REPO.parent / "shared" / "data" / "chest-xray-pneumonia-224.zip"


def chest_like_names() -> tuple[list[str], list[str]]:
    paths = []
    for person in range(60):
        for i in range(1 + person % 4):
            paths.append(f"train/PNEUMONIA/person{person}_{'virus' if i % 2 else 'bacteria'}_{person * 10 + i}.jpeg")
    for patient in range(40):
        for i in range(1 + patient % 3):
            paths.append(f"train/NORMAL/IM-{patient:04d}-{i + 1:04d}.jpeg")
            paths.append(f"train/NORMAL/NORMAL2-IM-{patient:04d}-{i + 1:04d}.jpeg")
    return paths, [PurePosixPath(p).parent.name for p in paths]


def test_the_keys_of_chest_xray_names_are_found():
    paths, labels = chest_like_names()
    key = find_group_key(paths, labels)
    assert key is not None
    rx = re.compile(key.regex)
    assert rx.search("person12_virus_121.jpeg").group(1) == "person12"
    assert rx.search("IM-0012-0003.jpeg").group(1) == "IM-0012"
    assert rx.search("NORMAL2-IM-0012-0003.jpeg").group(1) == "NORMAL2-IM-0012"
    assert all(rx.search(PurePosixPath(p).name) for p in paths)


@pytest.mark.parametrize("paths", [
    [f"digits/{i % 10}/{i:04d}.png" for i in range(1797)],                                 # no key at all
    [f"fruits/{c}/{'r_' if i % 2 else ''}{a}_100.jpg" for c in range(10) for i, a in enumerate(range(0, 300, 3))],
    [f"set/{'ab'[i % 2]}/img{i:03d}.png" for i in range(200)],                               # one subject each
    [f"scans/{'ab'[i % 2]}/scan_{i % 7}_{i}.png" for i in range(300)],                       # keys across classes
])
def test_names_without_a_subject_key_give_none(paths):
    assert find_group_key(paths, [p.split("/")[1] for p in paths]) is None


def test_auto_groups_by_the_key_and_records_the_choice(tmp_path):
    raw = tmp_path / "raw"
    for patient in range(40):
        label = "ab"[patient % 2]
        (raw / label).mkdir(parents=True, exist_ok=True)
        for s in range(4):
            (raw / label / f"patient{patient:03d}_slice{s}.png").write_bytes(png_bytes(patient * 10 + s))
    table, report = build_split(RawData(raw), split_cfg(near_duplicate_similarity=None))
    subjects = table["path"].str.extract(r"(patient\d+)")[0]
    assert (subjects.groupby(table["split"]).apply(set).pipe(lambda s: s["train"] & s["val"])) == set()
    assert table.groupby(subjects)["split"].nunique().max() == 1
    key = split_metrics(table, report)["group_key"]
    assert key["mode"] == "auto" and re.compile(key["regex"]).search("patient007_slice2.png").group(1) == "patient007"
    assert key["subjects"] == 40
    _, off = build_split(RawData(raw), split_cfg(near_duplicate_similarity=None, group_regex=None))
    assert off.group_key == {"mode": "off", "regex": None}


@pytest.mark.slow
@pytest.mark.skipif(not CHEST.is_file(), reason="the shared chest X-ray zip is not here")
def test_chest_xray_zip_with_default_params_has_no_patient_in_two_splits(tmp_path):
    (tmp_path / "raw").mkdir()
    shutil.copy(CHEST, tmp_path / "raw" / CHEST.name)
    table, report = build_split(RawData(tmp_path / "raw"), split_cfg(near_duplicate_similarity=None))
    patients = table["path"].map(lambda p: re.match(r"(person\d+|(?:NORMAL2-)?IM-\d+)", PurePosixPath(p).name)[1])
    by_split = {s: set(patients[table["split"] == s]) for s in ("train", "val")}
    assert by_split["train"] & by_split["val"] == set()
    assert report.group_key["mode"] == "auto" and report.group_key["subjects"] > 1000


def test_the_default_digits_split_keeps_every_class_share_in_test(tmp_path):
    """8x8 digits are too small for a perceptual hash (blown up, unrelated digits look alike and
    once formed a 53-image group of sixes): they are searched for exact copies only."""
    from tlpipe.data.sources import write_sklearn_dataset

    write_sklearn_dataset("digits", tmp_path)
    table, report = build_split(RawData(tmp_path), split_cfg())
    test = table[table["split"] == "test"]
    expected = table["label"].value_counts() * len(test) / len(table)
    assert (test["label"].value_counts() - expected).abs().max() <= 2, test["label"].value_counts().to_dict()
    assert split_metrics(table, report, 0.97)["near_duplicates"]["too_small_to_search"]["images"] == 1797


def test_frames_of_few_objects_split_image_by_image_and_say_so(tmp_path):
    rotating_fruit_frames(tmp_path)
    table, report = build_split(RawData(tmp_path), split_cfg(val_fraction=0.1))
    metrics = split_metrics(table, report, 0.97)
    assert metrics["near_duplicates"]["largest_group"] >= 25  # the frames of one object are one group
    assert set(metrics["carved_by_image"]) == {"apple", "banana", "cherry"}
    assert metrics["carved_by_image"]["apple"] == {"groups": 2, "images": 60}
    for split in ("train", "val", "test"):  # every class reaches every split: the set trains and reports
        assert set(table["label"][table["split"] == split]) == {"apple", "banana", "cherry"}, split
    assert metrics["group_key"] == {"mode": "auto", "regex": None}  # r_<angle>_100 names carry no subject
