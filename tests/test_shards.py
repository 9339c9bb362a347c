"""The sharded cache: stable content-defined shards, the one-sequence view over them, the epoch
order, the bounded samples, and a sharded cache that reads exactly like a single-file one."""

import numpy as np
import pytest

from conftest import make_image_tree, split_cfg, section
from tlpipe.data.cache import load_split
from tlpipe.data.raw import RawData
from tlpipe.data.resize import build_cache
from tlpipe.data.shards import ShardedImages, rows_per_shard, shard_ranges
from tlpipe.data.split import build_split
from tlpipe.train.order import epoch_order
from tlpipe.train.sample import bounded_sample
from tlpipe.use.plots import confusion_sample


def members(paths, max_rows):
    return {tuple(paths[a:b]) for a, b in shard_ranges(paths, max_rows)}


def test_shards_cover_every_row_in_order_within_the_bound():
    paths = sorted(f"class{i % 3}/img{i:05d}.png" for i in range(5000))
    ranges = shard_ranges(paths, 40)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(paths)
    assert all(a < b <= a + 40 for a, b in ranges)
    assert all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:]))
    assert 5000 / 40 < len(ranges) < 5000 / 5  # about a quarter of the bound on average
    assert shard_ranges([], 40) == [] and shard_ranges(["a"], 40) == [(0, 1)]


def test_adding_images_changes_at_most_two_shards():
    paths = sorted(f"{c}/img{i:05d}.png" for c in "abc" for i in range(2000))
    before = members(paths, 800)
    for where in [*paths[::120], "a/", "zz/"]:  # ten new images next to each other (a new batch)
        added = sorted(paths + [f"{where[:-4]}new{i:02d}.png" for i in range(10)])
        after = members(added, 800)
        assert len(after - before) <= 2 and len(before - after) <= 2, (where, len(after - before))


def test_rows_per_shard_from_the_size_bound():
    assert rows_per_shard(1024, 224 * 224 * 3) == 7133
    assert rows_per_shard(0.0001, 224 * 224 * 3) == 1


def test_sharded_images_index_like_one_array():
    rng = np.random.default_rng(0)
    whole = rng.integers(0, 256, size=(23, 4, 4, 3), dtype=np.uint8)
    view = ShardedImages([whole[0:5], whole[5:6], whole[6:23]], (4, 4, 3))
    assert len(view) == 23 and view.shape == (23, 4, 4, 3)
    assert np.array_equal(view[7], whole[7]) and np.array_equal(view[-1], whole[-1])
    assert np.array_equal(view[3:9], whole[3:9]) and np.array_equal(view[::5], whole[::5])
    rows = np.array([22, 0, 5, 5, 6, 4])
    assert np.array_equal(view[rows], whole[rows])
    assert np.array_equal(view[whole[:, 0, 0, 0] > 128], whole[whole[:, 0, 0, 0] > 128])
    assert np.array_equal(np.asarray(view), whole)
    with pytest.raises(IndexError):
        view[23]
    with pytest.raises(IndexError):
        view[np.array([0, 23])]


def test_epoch_order_is_a_seeded_permutation_per_epoch():
    labels = np.arange(100) % 3
    first = epoch_order(labels, seed=1, epoch=0)
    assert sorted(first) == list(range(100))
    assert np.array_equal(first, epoch_order(labels, seed=1, epoch=0))
    assert not np.array_equal(first, epoch_order(labels, seed=1, epoch=1))
    assert not np.array_equal(first, epoch_order(labels, seed=2, epoch=0))


def test_epoch_order_of_a_large_split_reads_whole_blocks_within_each_window():
    n, block, window = 10_000, 50, 1000
    order = epoch_order(np.zeros(n, dtype=int), seed=0, epoch=3, block_rows=block, window_rows=window)
    assert sorted(order) == list(range(n))
    blocks_per_window = [len(np.unique(order[s:s + window] // block)) for s in range(0, n, window)]
    assert max(blocks_per_window) <= window // block + 1  # each window: whole blocks (one read each)
    # ... taken from all over the split, and shuffled inside the window
    assert np.ptp(order[:window]) > n / 2
    assert not np.array_equal(np.sort(order[:block]), order[:block])


def test_balanced_epoch_order_draws_classes_evenly():
    labels = np.array([0] * 900 + [1] * 100)
    order = epoch_order(labels, seed=0, epoch=0, balanced=True)
    assert len(order) == 1000
    assert 0.4 < labels[order].mean() < 0.6


def test_bounded_sample_is_stratified_and_keeps_small_sets_whole():
    labels = np.array([0] * 9000 + [1] * 990 + [2] * 10)
    assert np.array_equal(bounded_sample(labels[:50], 100, 0), np.arange(50))
    assert len(bounded_sample(labels, 0, 0)) == len(labels)
    rows = bounded_sample(labels, 1000, seed=0)
    assert np.all(np.diff(rows) > 0) and 990 <= len(rows) <= 1010
    assert np.bincount(labels[rows]).tolist() == [900, 99, 1]
    assert np.array_equal(rows, bounded_sample(labels, 1000, seed=0))


def test_confusion_sample_keeps_every_cell_in_proportion():
    rng = np.random.default_rng(0)
    actual = rng.integers(0, 3, 50_000)
    predicted = np.where(rng.random(50_000) < 0.9, actual, rng.integers(0, 3, 50_000))
    predicted[0], actual[0] = 2, 0  # one rare cell, kept in the sample
    rows = confusion_sample(actual, predicted, 5000)
    assert 4900 <= len(rows) <= 5100 and np.all(np.diff(rows) > 0)
    full = np.histogram2d(actual, predicted, bins=3)[0]
    sampled = np.histogram2d(actual[rows], predicted[rows], bins=3)[0]
    assert np.all((sampled > 0) == (full > 0))
    assert np.allclose(sampled / sampled.sum(1, keepdims=True), full / full.sum(1, keepdims=True), atol=0.01)
    assert np.array_equal(confusion_sample(actual[:100], predicted[:100], 5000), np.arange(100))


@pytest.fixture(scope="module")
def two_caches(tmp_path_factory):
    """The same images cached as one shard per split and as many tiny shards (with unreadable files)."""
    tmp = tmp_path_factory.mktemp("shards")
    make_image_tree(tmp / "raw" / "set", {"a": 60, "b": 60, "c": 30})
    (tmp / "raw" / "set" / "a" / "zz-empty.png").write_bytes(b"")
    (tmp / "raw" / "set" / "b" / "img0075.png").write_text("not a png")
    raw = RawData(tmp / "raw")
    table, _ = build_split(raw, split_cfg())
    one = build_cache(table, raw, tmp / "one", 12, "squash", workers=2, max_unreadable_fraction=0.1)
    many = build_cache(table, raw, tmp / "many", 12, "squash", workers=2, max_unreadable_fraction=0.1,
                       shard_mb=12 * 12 * 3 * 7 / (1 << 20))
    assert one["shards"] == {"train": 1, "val": 1, "test": 1}
    assert many["shards"]["train"] > 8 and one["images"] == many["images"]
    return tmp / "one", tmp / "many"


def test_sharded_cache_reads_exactly_like_one_shard(two_caches):
    for split in ("train", "val", "test"):
        (x1, y1, i1), (x2, y2, i2) = (load_split(c, split) for c in two_caches)
        assert len(x2.shards) > 1 or split != "train"
        assert np.array_equal(np.asarray(x1), np.asarray(x2)) and np.array_equal(y1, y2)
        assert i1.equals(i2) and list(i1["path"]) == sorted(i1["path"])
        assert not {"set/a/zz-empty.png", "set/b/img0075.png"} & set(i1["path"])


@pytest.mark.slow
def test_sharded_cache_gives_the_same_features_head_and_finetuned_model(two_caches, tmp_path):
    """Many tiny shards, streamed features and memory-mapped reads against one shard read into
    plain in-memory arrays (the single-file cache's path): same features, head and fine-tuned run."""
    import torch
    from torch import nn


    from tlpipe.model.backbones import create_backbone
    from tlpipe.model.classifier import Classifier
    from tlpipe.model.inference import predict_logits
    from tlpipe.train.features import extract_features
    from tlpipe.train.finetune import Features, Split, build_model, fit
    from tlpipe.train.choose import choose_logreg

    cpu = torch.device("cpu")
    cfg = section("finetune", {"epochs": 2, "freeze_epochs": 1, "batch_size": 16, "device": "cpu",
                               "patience": 0, "probe_C": 1.0})
    runs = []
    for cache, sharded in zip(two_caches, (False, True)):
        backbone = create_backbone("efficientnet_lite0", "none")
        body = Classifier(backbone.body, nn.Identity(), backbone.mean, backbone.std)
        splits = {s: load_split(cache, s)[:2] for s in ("train", "val")}
        if not sharded:
            splits = {s: (np.asarray(x), y) for s, (x, y) in splits.items()}
        features = {}
        for s, (x, y) in splits.items():
            out = tmp_path / f"{s}-{sharded}.npy" if sharded else None
            features[s] = extract_features(body, x, 16, cpu, out=out)
        if sharded:
            assert isinstance(features["train"], np.memmap)  # streamed to disk, read back mapped
        head, _ = choose_logreg(features["train"], splits["train"][1], np.zeros((0, 1)), np.zeros(0), 3, 1.0, True, 0)
        torch.manual_seed(0)
        model = build_model(create_backbone("efficientnet_lite0", "none"), 3, cfg,
                            Features(features["train"], splits["train"][1]))
        result = fit(model, Split(*splits["train"]), Split(*splits["val"]), cfg, 3, cpu, log=lambda _: None,
                     decision_metric="balanced_accuracy")
        logits = predict_logits(model, splits["val"][0], 32, cpu)
        runs.append((features, head, result, logits))
    (f1, h1, r1, l1), (f2, h2, r2, l2) = runs
    for s in f1:
        assert f1[s].shape == f2[s].shape and np.allclose(f1[s], f2[s], atol=1e-5)
    assert torch.allclose(h1.weight, h2.weight, atol=1e-5) and torch.allclose(h1.bias, h2.bias, atol=1e-5)
    assert r1.best_epoch == r2.best_epoch and len(r1.history) == len(r2.history) == 2
    for a, b in zip(r1.history, r2.history):
        for key in ("train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy"):
            assert abs(a[key] - b[key]) <= 1e-5, (key, a[key], b[key])
    assert torch.allclose(l1, l2, atol=1e-5) and torch.equal(l1.argmax(1), l2.argmax(1))
