"""Knobs chosen on validation: C of the logistic regression, the probe's temperature, and a first
fine-tuning epoch that never ends worse on validation than the probe it starts from."""

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from conftest import section
from tlpipe.model.backbones import create_backbone
from tlpipe.model.inference import feature_probabilities
from tlpipe.train import finetune as ft
from tlpipe.train.choose import C_GRID, choose_logreg, fit_temperature
from tlpipe.train.features import extract_features


def few_images_many_features(n: int, seed: int, features: int = 400, informative: int = 5):
    """More features than images, few of them informative, noisy labels: a fixed large C overfits."""
    rng = np.random.default_rng(seed)
    direction = np.zeros(features)
    direction[:informative] = 1.0
    x = rng.normal(size=(n, features))
    p = 1 / (1 + np.exp(-(x @ direction)))
    y = (rng.random(n) < p).astype(np.int64)
    return x.astype(np.float32), y


def test_c_chosen_on_validation_beats_a_fixed_bad_c_on_held_out_data():
    x, y = few_images_many_features(120, 0)
    x_val, y_val = few_images_many_features(200, 1)
    x_test, y_test = few_images_many_features(2000, 2)
    auto, report = choose_logreg(x, y, x_val, y_val, 2, "auto", True, 0)
    bad, _ = choose_logreg(x, y, x_val, y_val, 2, 10.0, True, 0)
    assert report["C"] in C_GRID and report["C"] < 10.0
    assert report["val_log_loss"] == min(report["C_grid"].values())
    test_auto = log_loss(y_test, feature_probabilities(auto, x_test))
    test_bad = log_loss(y_test, feature_probabilities(bad, x_test))
    assert test_auto < test_bad - 0.05, (test_auto, test_bad)
    # the chosen C gives the same head as a plain fit at that C (the grid only picks it)
    fixed, _ = choose_logreg(x, y, x_val, y_val, 2, report["C"], True, 0)
    assert torch.allclose(fixed.weight, auto.weight, atol=1e-3)


def test_temperature_recovers_the_overconfidence_factor():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(scale=2.0, size=(4000, 3))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in probs])
    temperature = fit_temperature(torch.from_numpy(true_logits * 3.0), labels)
    assert temperature == pytest.approx(3.0, rel=0.1)


def bright_dark(n: int, seed: int, size: int = 32) -> ft.Split:
    """Two classes that overlap: brightness tells them apart only on average."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 160, size=(n, size, size, 3), dtype=np.uint8)
    images[labels == 1] += rng.integers(0, 80, size=(int((labels == 1).sum()), 1, 1, 1), dtype=np.uint8)
    return ft.Split(images, labels.astype(np.int64))


@pytest.mark.parametrize("lr", [0.003, 0.3])
def test_first_validation_loss_is_never_worse_than_the_probe(lr):
    """On small data, epoch 0 (frozen backbone, probe head) ends at most at the probe's validation loss;
    a head learning rate that wrecks the probe (0.3) is caught and undone."""
    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0", "default")
    train, val = bright_dark(48, 0), bright_dark(32, 1)
    cfg = section("finetune", {"epochs": 1, "freeze_epochs": 1, "batch_size": 16, "device": "cpu",
                               "lr": lr, "aug_rotation": 30, "aug_jitter": 0.5, "patience": 0})
    body = ft.Classifier(backbone.body, torch.nn.Identity(), backbone.mean, backbone.std)
    feats = [ft.Features(extract_features(body, s.images, 32, torch.device("cpu"), desc="t"), s.labels)
             for s in (train, val)]
    head, chosen = ft.probe_head(backbone, 2, cfg, *feats)
    assert chosen["probe_C"] in C_GRID and chosen["probe_temperature"] > 0
    model = ft.build_model(backbone, 2, cfg, head=head)
    result = ft.fit(model, train, val, cfg, 2, torch.device("cpu"), log=lambda _: None,
                    decision_metric="balanced_accuracy")
    assert result.start["val_loss"] == pytest.approx(chosen["probe_val_loss_on_features"], abs=1e-3)
    assert result.history[0]["val_loss"] <= result.start["val_loss"] + 1e-9
    if lr == 0.3:
        assert result.kept_probe
        assert torch.equal(model.head.weight, head.weight)
