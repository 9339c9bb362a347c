"""Heads on frozen features: MLPs of any depth and attention pooling over feature maps, trained by
train-head and by finetune, and rebuilt from their saved files alone."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss

from conftest import default_params, section
from tlpipe.params import HeadParams
from tlpipe.errors import TlpipeError
from tlpipe.model.backbones import create_backbone
from tlpipe.model.classifier import AttentionHead, AttentionPool
from tlpipe.model.inference import feature_probabilities, predict_logits
from tlpipe.model.modelfile import head_checkpoint, load_head, load_model, model_checkpoint, save_checkpoint
from tlpipe.params import validate
from tlpipe.train import finetune as ft
from tlpipe.train.head import train_head

CLASSES = ["a", "b", "c"]


def features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes on a non-linear rule of 2 of 16 features (a ring and two half-planes)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    radius = np.hypot(x[:, 0], x[:, 1])
    y = np.where(radius < 0.9, 0, np.where(x[:, 0] > 0, 1, 2))
    return x, y.astype(np.int64)


def feature_maps(n: int, seed: int, grid: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(N, 8, g, g) float16 maps: noise everywhere, and at ONE random position a spike in the channel
    of the class. Averaging over positions dilutes it 16 times; attention can find it."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3).astype(np.int64)
    maps = rng.normal(0, 0.3, size=(n, 8, grid, grid)).astype(np.float32)
    rows, cols = rng.integers(0, grid, n), rng.integers(0, grid, n)
    maps[np.arange(n), y, rows, cols] += 3.0
    maps[np.arange(n), 7, rows, cols] += 3.0  # a channel that marks where the object is, whatever its class
    return maps.astype(np.float16), y


def head_cfg(**overrides) -> HeadParams:
    return section("head", {"epochs": 40, "lr": 0.01, "batch_size": 32}, **overrides)


def saved_and_reloaded(checkpoint: dict, tmp_path):
    torch.save(checkpoint, tmp_path / "head.pt")
    return load_head(tmp_path / "head.pt")


def assert_metrics_reproduce(head, metrics: dict, splits: dict) -> None:
    for split, (x, y) in splits.items():
        probs = feature_probabilities(head, x)
        assert accuracy_score(y, probs.argmax(1)) == pytest.approx(metrics[split]["accuracy"], abs=1e-12)
        assert log_loss(y, probs, labels=[0, 1, 2]) == pytest.approx(metrics[split]["log_loss"], rel=1e-6)


def test_two_layer_mlp_trains_and_reproduces_its_metrics_from_head_pt_alone(tmp_path):
    (x, y), (xv, yv) = features(600, 0), features(200, 1)
    checkpoint, metrics, curve = train_head(head_cfg(kind="mlp", hidden=[64, 32]), x, y, xv, yv, CLASSES)
    logreg_metrics = train_head(head_cfg(kind="logreg"), x, y, xv, yv, CLASSES)[1]
    assert metrics["val"]["accuracy"] > logreg_metrics["val"]["accuracy"] + 0.05  # the ring needs the hidden layers
    head, meta = saved_and_reloaded(checkpoint, tmp_path)
    assert meta["head"]["hidden"] == [64, 32] and len(curve) == 40
    assert_metrics_reproduce(head, metrics, {"train": (x, y), "val": (xv, yv)})


def test_attention_head_on_feature_maps_trains_and_reproduces_from_head_pt_alone(tmp_path):
    (x, y), (xv, yv) = feature_maps(600, 0), feature_maps(200, 1)
    checkpoint, metrics, _ = train_head(head_cfg(kind="attention", hidden=[]), x, y, xv, yv, CLASSES)
    averaged = train_head(head_cfg(kind="logreg"), x.astype(np.float32).mean((2, 3)), y,
                          xv.astype(np.float32).mean((2, 3)), yv, CLASSES)[1]
    assert metrics["val"]["accuracy"] > 0.95 and metrics["val"]["log_loss"] < averaged["val"]["log_loss"]
    head, meta = saved_and_reloaded(checkpoint, tmp_path)
    assert isinstance(head, AttentionHead) and meta["head"]["pooling"] == "attention"
    assert_metrics_reproduce(head, metrics, {"train": (x, y), "val": (xv, yv)})
    # The pooling weights sum to 1 over the positions of each image, and sit on the marked position.
    maps = torch.from_numpy(xv.astype(np.float32))
    weights = head.pool.weights(maps)
    assert weights.shape == (200, 16)
    assert torch.allclose(weights.sum(1), torch.ones(200), atol=1e-6)
    spikes = maps[:, 7].flatten(1).argmax(1)
    assert (weights.argmax(1) == spikes).float().mean() > 0.9


def test_attention_head_needs_feature_maps():
    (x, y), (xv, yv) = features(60, 0), features(30, 1)
    with pytest.raises(TlpipeError, match="features.spatial_grid"):
        train_head(head_cfg(kind="attention"), x, y, xv, yv, CLASSES)


def test_attention_pool_starts_as_average_pooling():
    maps = torch.randn(5, 6, 3, 3)
    pool = AttentionPool(6)
    assert torch.allclose(pool(maps), maps.mean((2, 3)), atol=1e-6)
    pool.score.weight.data.normal_()
    assert torch.allclose(pool.weights(maps).sum(1), torch.ones(5), atol=1e-6)


def test_finetune_with_attention_head_saves_a_model_that_rebuilds_from_model_pt(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(16) % 2
    images = rng.integers(0, 60, size=(16, 64, 64, 3), dtype=np.uint8)
    images[labels == 1, 20:40, 20:40] += 150
    train = ft.Split(images, labels.astype(np.int64))
    backbone = create_backbone("efficientnet_lite0", "none", spatial=True)
    pooled = create_backbone("efficientnet_lite0", "none")
    # the pooled features are the average of the map: the probe fitted on them fits the attention head
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone.body.eval()(x).mean((2, 3)), pooled.body.eval()(x), atol=1e-5)
    probe = ft.Features(rng.normal(size=(16, backbone.num_features)).astype(np.float32), labels)
    cfg = section("finetune", {"epochs": 1, "freeze_epochs": 0, "batch_size": 8, "device": "cpu",
                               "head": "attention", "patience": 0, "probe_C": 0.1})
    model = ft.build_model(backbone, 2, cfg, probe)
    ft.fit(model, train, train, cfg, 2, torch.device("cpu"), log=lambda _: None, decision_metric="balanced_accuracy")
    preprocess = {"size": 64, "mode": "squash", "contrast": "none"}
    torch.save(model_checkpoint(model, "efficientnet_lite0", ["x", "y"], preprocess, cfg, 0), tmp_path / "model.pt")
    loaded, meta = load_model(tmp_path / "model.pt")
    assert meta["head"]["pooling"] == "attention"
    cpu = torch.device("cpu")
    assert torch.allclose(predict_logits(loaded, images, 8, cpu), predict_logits(model, images, 8, cpu), atol=1e-5)
    with torch.no_grad():
        maps = loaded.body(loaded.normalize(torch.from_numpy(images[:4]).permute(0, 3, 1, 2).float() / 255))
        assert torch.allclose(loaded.head.pool.weights(maps).sum(1), torch.ones(4), atol=1e-6)


@pytest.mark.parametrize("hidden, ok", [([512], True), ([512, 256], True), (256, True), ([], False),
                                        ([512, 0], False), (["wide"], False), (0, False)])
def test_head_hidden_is_a_list_of_widths_or_one_number(hidden, ok):
    params = default_params()
    params["head"] |= {"kind": "mlp", "hidden": hidden}
    if ok:
        validate(params)
    else:
        with pytest.raises(TlpipeError, match="head.hidden"):
            validate(params)


def test_the_torch_head_decays_its_weights_only(monkeypatch):
    made = []
    real = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda groups, **kw: made.append([dict(g) for g in groups]) or real(groups, **kw))
    (x, y), (xv, yv) = features(64, 0), features(32, 1)
    train_head(head_cfg(kind="mlp", hidden=[8], epochs=1, weight_decay=0.1), x, y, xv, yv, CLASSES)
    (groups,) = made
    decayed = [p for g in groups if "weight_decay" not in g for p in g["params"]]
    kept = [p for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]]
    assert decayed and kept and len(decayed) + len(kept) == sum(len(g["params"]) for g in groups)
    assert all(p.ndim > 1 for p in decayed) and all(p.ndim == 1 for p in kept)  # biases and norm scales kept


def test_the_same_head_is_saved_as_the_same_bytes_and_reads_back(tmp_path):
    """DVC hashes model files: a file that carried its temporary name would look new on every run."""
    torch.manual_seed(0)
    checkpoint = head_checkpoint(torch.nn.Linear(16, 3), CLASSES)
    for name in ("one", "two"):
        save_checkpoint(checkpoint, tmp_path / name / "head.pt")
    assert (tmp_path / "one" / "head.pt").read_bytes() == (tmp_path / "two" / "head.pt").read_bytes()
    head, read = load_head(tmp_path / "one" / "head.pt")
    assert read["classes"] == CLASSES
    assert torch.equal(head.weight, checkpoint["state_dict"]["weight"])
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["head.pt", "head.pt"]  # no temporary left
