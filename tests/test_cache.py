import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import make_image_tree, split_cfg
from tlpipe.data.cache import load_classes, load_groups, load_split
from tlpipe.data.resize import build_cache, decode_pool
from tlpipe.errors import TlpipeError
from tlpipe.data.raw import RawData
from tlpipe.data.split import build_split


def tree_with_bad_files(tmp_path, n_bad: int):
    raw = tmp_path / "raw"
    make_image_tree(raw / "set", {"a": 20, "b": 20})
    bad = []
    if n_bad >= 1:
        (raw / "set" / "a" / "zero.png").write_bytes(b"")
        bad.append("set/a/zero.png")
    if n_bad >= 2:
        (raw / "set" / "b" / "text.jpg").write_text("not a jpeg")
        bad.append("set/b/text.jpg")
    if n_bad >= 3:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (9, 9, 9)).save(buffer, "JPEG")
        (raw / "set" / "b" / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
        bad.append("set/b/truncated.jpg")
    table, _ = build_split(RawData(raw), split_cfg(small_class="drop"))
    return RawData(raw), table, bad


@pytest.mark.robustness
def test_cache_holds_every_good_image_and_reports_each_bad_one(tmp_path):
    raw, table, bad = tree_with_bad_files(tmp_path, 3)
    metrics = build_cache(table, raw, tmp_path / "cache", 16, "squash", workers=2, max_unreadable_fraction=0.2)
    assert sorted(u["path"] for u in metrics["unreadable"]) == sorted(bad)
    total = 0
    for split in ("train", "val", "test"):
        images, labels, index = load_split(tmp_path / "cache", split)
        assert images.shape[1:] == (16, 16, 3) and images.dtype == np.uint8
        assert all(isinstance(shard, np.memmap) for shard in images.shards) and len(images.shards) == 1
        assert len(images) == len(labels) == len(index) == metrics["images"][split]
        assert not set(index["path"]) & set(bad)
        total += len(images)
    assert total + len(bad) == len(table)
    assert load_classes(tmp_path / "cache") == ["a", "b"]
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())  # a small set: one shard per split
    assert [re.sub(r"-[0-9a-f]{16}\.", "-NAME.", n) for n in names] == [
        "classes.json", "preprocess.json", "test-NAME.csv", "test-NAME.npy", "train-NAME.csv", "train-NAME.npy",
        "val-NAME.csv", "val-NAME.npy"]


def test_cache_rows_match_the_source_images(tmp_path):
    raw, table, _ = tree_with_bad_files(tmp_path, 1)
    build_cache(table, raw, tmp_path / "cache", 12, "squash", workers=1, max_unreadable_fraction=0.5)
    images, _, index = load_split(tmp_path / "cache", "train")
    for row in (0, len(index) - 1):
        expected = np.asarray(Image.open(raw.root / index["path"][row]).convert("RGB"))
        assert np.array_equal(images[row], expected)  # 12 px in, 12 px out: no resampling


@pytest.mark.robustness
def test_too_many_unreadable_fails_and_leaves_no_cache(tmp_path):
    raw, table, _ = tree_with_bad_files(tmp_path, 3)
    with pytest.raises(TlpipeError, match="3 of 43 images.*unreadable.*zero.png"):
        build_cache(table, raw, tmp_path / "cache", 16, "squash", max_unreadable_fraction=0.01)
    # nothing that looks like a cache; the full list of unreadable files stays beside it (issue 13)
    assert [p.name for p in tmp_path.glob("*cache*")] == ["cache.unreadable.csv"]


@pytest.mark.robustness
def test_cache_is_byte_identical_across_runs_and_worker_counts(tmp_path):
    raw, table, _ = tree_with_bad_files(tmp_path, 0)
    build_cache(table, raw, tmp_path / "c1", 16, "pad", workers=1)
    build_cache(table, raw, tmp_path / "c2", 16, "pad", workers=2)
    with decode_pool(2) as decoders:  # as the stage does: workers started before the table exists
        build_cache(table, raw, tmp_path / "c3", 16, "pad", decoders=decoders)
        build_cache(table, raw, tmp_path / "c4", 16, "pad", decoders=decoders)  # the pool serves again
    names = sorted(p.name for p in (tmp_path / "c1").iterdir())
    for other in ("c2", "c3", "c4"):
        assert names == sorted(p.name for p in (tmp_path / other).iterdir())
        for name in names:
            assert (tmp_path / "c1" / name).read_bytes() == (tmp_path / other / name).read_bytes()


def test_groups_come_from_split_csv_and_a_mismatch_is_one_clear_error(tmp_path):
    split_csv = tmp_path / "split.csv"
    split_csv.write_text("path,label,split,group\nset/a/1.png,a,val,p1\nset/a/2.png,a,val,p1\nset/b/3.png,b,val,p2\n")
    groups = load_groups(pd.Series(["set/b/3.png", "set/a/1.png"]), split_csv)
    assert list(groups) == ["p2", "p1"]
    with pytest.raises(TlpipeError, match=r"split.csv: does not list 'set/c/9.png', which data/cache holds.*dvc repro"):
        load_groups(pd.Series(["set/c/9.png"]), split_csv)
    with pytest.raises(TlpipeError, match=r"missing\.csv: missing.*dvc repro"):
        load_groups(pd.Series(["set/a/1.png"]), tmp_path / "missing.csv")
    (tmp_path / "nogroup.csv").write_text("path,label\nset/a/1.png,a\n")
    with pytest.raises(TlpipeError, match=r"nogroup\.csv: empty or damaged"):
        load_groups(pd.Series(["set/a/1.png"]), tmp_path / "nogroup.csv")
