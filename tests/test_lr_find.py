"""The learning-rate range test: its suggestion trains, a too-high range is refused, it is
deterministic, leaves the model as it was, and its plot renders in `dvc plots show`."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import STAGES, learnable_tree, make_dvc_project, repro, run, section, set_params
from tlpipe.params import FinetuneParams
from tlpipe.errors import TlpipeError
from tlpipe.model.classifier import Classifier
from tlpipe.train import finetune as ft
from tlpipe.train.lr_find import suggest, text_chart


def synthetic(n: int = 64, seed: int = 0) -> ft.Split:
    """Two classes told apart by colour: red-ish against blue-ish 8x8 images, with pixel noise and
    15% of the labels flipped (so that no rate drives the loss to zero and a high one diverges)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 120, size=(n, 8, 8, 3)).astype(np.uint8)
    images[labels == 0, :, :, 0] += 100
    images[labels == 1, :, :, 2] += 100
    flipped = rng.random(n) < 0.15
    labels[flipped] = 1 - labels[flipped]
    return ft.Split(images, labels.astype(np.int64))


def small_model() -> Classifier:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Classifier(body, nn.Linear(8, 2), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def cfg(**overrides) -> FinetuneParams:
    return section("finetune", {
        "epochs": 3, "freeze_epochs": 0, "strategy": "all", "batch_size": 16, "device": "cpu", "label_smoothing": 0.0,
        "class_balance": "none", "aug_rotation": 0, "aug_jitter": 0.0, "aug_scale_min": 1.0, "channels_last": False,
        "lr_find_steps": 60, "lr_find_min": 1e-5, "lr_find_max": 1000.0, "layer_decay": 1.0, "weight_decay": 0.0},
        **overrides)


def mean_loss(model: Classifier, data: ft.Split) -> float:
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
        return nn.functional.cross_entropy(model(x), torch.from_numpy(data.labels)).item()


def train_at(model: Classifier, data: ft.Split, lr: float, steps: int = 40) -> float:
    """Plain SGD-free AdamW at a fixed rate for `steps` full batches; the loss after."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(data.labels)
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return mean_loss(model, data)


def test_the_suggested_rate_lowers_the_loss_and_the_model_is_left_as_it_was():
    data, model = synthetic(), small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    curve = ft.lr_range_test(model, data, cfg(), 2, torch.device("cpu"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    lr = suggest(curve)
    # The test climbed until the loss diverged, and the suggestion sits well below that point.
    assert curve.diverged_at is not None and lr < curve.diverged_at / 5
    assert cfg().lr_find_min <= lr <= cfg().lr_find_max
    start = mean_loss(model, data)
    assert train_at(model, data, lr) < 0.7 * start
    # ... whereas the rate where the test saw the loss diverge makes training worse than the suggestion.
    model.load_state_dict(before)
    assert train_at(model, data, curve.diverged_at) > train_at(small_model(), data, lr)
    chart = text_chart(curve, lr)
    assert f"suggested lr: {lr:.3g}" in chart and len(chart.splitlines()) > 10


def test_a_range_that_starts_too_high_diverges_and_is_refused():
    curve = ft.lr_range_test(small_model(), synthetic(), cfg(lr_find_min=300.0, lr_find_max=1e5), 2,
                             torch.device("cpu"))
    assert curve.diverged_at is not None and len(curve.rows) < 60
    with pytest.raises(TlpipeError, match="finetune.lr auto: the (loss never fell|range test diverged)"):
        suggest(curve)


def test_the_range_test_is_deterministic_for_a_seed():
    data = synthetic()
    first = ft.lr_range_test(small_model(), data, cfg(aug_rotation=10, aug_jitter=0.2), 2, torch.device("cpu"))
    second = ft.lr_range_test(small_model(), data, cfg(aug_rotation=10, aug_jitter=0.2), 2, torch.device("cpu"))
    assert first.rows == second.rows
    other = ft.lr_range_test(small_model(), data, cfg(aug_rotation=10, aug_jitter=0.2, seed=1), 2, torch.device("cpu"))
    assert other.rows != first.rows


def test_head_strategy_range_test_leaves_the_body_untouched_and_frozen():
    data, model = synthetic(), small_model()
    curve = ft.lr_range_test(model, data, cfg(strategy="head"), 2, torch.device("cpu"))
    assert len(curve.rows) > 3
    assert not any(p.requires_grad for p in model.body.parameters())


def test_the_lr_find_plot_is_declared_and_renders_in_dvc_plots_show(tmp_path):
    project = make_dvc_project(tmp_path / "project")
    curve = ft.lr_range_test(small_model(), synthetic(), cfg(), 2, torch.device("cpu"))
    (project / "plots" / "finetune").mkdir(parents=True)
    (project / "plots" / "finetune" / "lr_find.json").write_text(json.dumps(curve.rows))
    run(["dvc", "plots", "show", "-o", "html"], project)
    page = (project / "html" / "index.html").read_text()
    assert "lr_find" in page and "log10_lr" in page and "smoothed_loss" in page
    # the curve's own numbers are in the page's data
    assert json.dumps(curve.rows[5]["smoothed_loss"])[:8] in page


@pytest.mark.slow
def test_pipeline_with_lr_auto_strategy_auto_and_attention_heads(dvc_project, tmp_path):
    """One `dvc repro` with every auto and attention head on: the rate finetune trained with is the
    range test's suggestion, `tlpipe lr-find` shows the same curve, the plot renders."""
    project = dvc_project
    learnable_tree(tmp_path / "images", per_class=20)  # noise has no rate that lowers the loss
    set_params(project, **{
        "data.source": f"path:{tmp_path / 'images'}", "resize.size": 32, "backbone.weights": "none",
        "finetune.epochs": 2, "finetune.batch_size": 16, "features.batch_size": 32, "report.top_losses": 4,
        "finetune.lr": "auto", "finetune.lr_find_steps": 30, "finetune.strategy": "auto",
        "features.spatial_grid": 2, "head.kind": "attention", "head.hidden": [], "head.epochs": 10,
        "finetune.head": "attention",
    })
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "pipeline"], project)
    assert repro(project) == STAGES
    metrics = json.loads((project / "metrics" / "finetune.json").read_text())
    assert metrics["peak_lr"] == metrics["lr_find"]["suggested_lr"]
    assert metrics["strategy"] in ("head", "last_blocks") and "training images" in metrics["strategy_reason"]
    curve = json.loads((project / "plots" / "finetune" / "lr_find.json").read_text())
    assert len(curve) == metrics["lr_find"]["steps"]
    assert np.load(project / "data" / "features" / "train_spatial.npy").dtype == np.float16
    shown = run(["tlpipe", "lr-find", "--out", "again.json"], project)
    assert f"suggested lr: {metrics['peak_lr']:.3g}" in shown.stdout
    assert json.loads((project / "again.json").read_text()) == curve  # deterministic for the seed
    run(["dvc", "plots", "show", "-o", "html"], project)
    page = (project / "html" / "index.html").read_text()
    assert "lr_find" in page and json.dumps(curve[3]["smoothed_loss"])[:8] in page
