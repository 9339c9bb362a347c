import copy
import io
import sys

import numpy as np
import pytest
import torch

from conftest import section
from tlpipe.params import FinetuneParams
from tlpipe.train import finetune as ft
from tlpipe.model.backbones import block_groups, create_backbone
from tlpipe.errors import TlpipeError
from tlpipe.model.inference import predict_logits
from tlpipe.model.modelfile import load_model, model_checkpoint
from tlpipe.train.choose import choose_logreg
from tlpipe.train.selection import clearly_worse, per_image_cost
from tlpipe.train.strategy import set_trainable


def tiny_data(n: int, seed: int, size: int = 32) -> ft.Split:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, size=(n, size, size, 3), dtype=np.uint8)
    images[labels == 1] += 150  # class 1: bright
    return ft.Split(images, labels.astype(np.int64))


def tiny_cfg(**overrides) -> FinetuneParams:
    return section("finetune", {"epochs": 2, "freeze_epochs": 0, "batch_size": 8, "device": "cpu", "patience": 0,
                                "lr": 0.003, "early_stop_metric": "val_loss", "probe_C": 0.1}, **overrides)


def tiny_model(head_init: str = "random", weights: str = "none"):
    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0", weights)
    features = np.random.default_rng(0).normal(size=(8, backbone.num_features)).astype(np.float32)
    probe = ft.Features(features, np.array([0, 1] * 4))
    return ft.build_model(backbone, 2, tiny_cfg(head_init=head_init), probe), probe


def scripted_loss(val_loss: float, labels: np.ndarray, **figures) -> tuple[dict, torch.Tensor]:
    """What `validate` returns for a model whose every validation image has log loss `val_loss`."""
    p = np.exp(-val_loss)
    logits = torch.zeros(len(labels), 2, dtype=torch.float64)
    logits[np.arange(len(labels)), labels] = float(np.log(p / (1 - p)))
    return {"val_loss": val_loss, "val_accuracy": 0.5, "val_balanced_accuracy": 0.5} | figures, logits


def test_best_checkpoint_is_kept_not_the_last(monkeypatch):
    model, _ = tiny_model()
    losses = iter([0.9, 0.3, 0.8, 0.7])  # the same on every image: epoch 1 is better beyond any noise
    snapshots = []

    def scripted_evaluate(model, data, cfg, device, decision=None, ranks=None):
        snapshots.append(copy.deepcopy(model.state_dict()))
        return scripted_loss(next(losses), data.labels)

    monkeypatch.setattr(ft, "validate", scripted_evaluate)
    result = ft.fit(model, tiny_data(16, 0), tiny_data(8, 1), tiny_cfg(epochs=4), 2, torch.device("cpu"), log=lambda _: None)
    assert result.best_epoch == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[1][key]), key
    assert any(not torch.equal(snapshots[1][k], snapshots[3][k]) for k in snapshots[1])


def test_early_stopping_after_patience_counted_past_the_rate_peak(monkeypatch):
    """10 epochs: the one-cycle rate peaks in epoch 3 (30%), so epochs 0-3 never count towards
    patience; with a validation loss that only rises, patience 2 stops after epochs 4 and 5."""
    model, _ = tiny_model()
    losses = iter([0.5 + 0.1 * i for i in range(10)])
    monkeypatch.setattr(ft, "validate", lambda model, data, *a: scripted_loss(next(losses), data.labels))
    result = ft.fit(model, tiny_data(16, 0), tiny_data(8, 1), tiny_cfg(epochs=10, patience=2), 2,
                    torch.device("cpu"), log=lambda _: None)
    assert len(result.history) == 6 and result.best_epoch == 0


def test_nan_loss_stops_with_a_clear_message():
    model, _ = tiny_model()
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with pytest.raises(TlpipeError, match=r"loss became nan at epoch 0, batch 0.*Lower finetune.lr"):
        ft.fit(model, tiny_data(16, 0), tiny_data(8, 1), tiny_cfg(), 2, torch.device("cpu"), log=lambda _: None)


def test_frozen_epochs_leave_the_body_and_its_batchnorm_untouched():
    model, _ = tiny_model()
    before = copy.deepcopy(model.body.state_dict())
    ft.fit(model, tiny_data(16, 0), tiny_data(8, 1), tiny_cfg(epochs=1, freeze_epochs=1, bn_policy="freeze"), 2,
           torch.device("cpu"), log=lambda _: None)
    for key, value in model.body.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_unfreeze_last_blocks_and_discriminative_rates():
    model, _ = tiny_model()
    blocks = block_groups(model.body)
    assert len(blocks) >= 8
    set_trainable(model, epoch=1, cfg=tiny_cfg(freeze_epochs=1, strategy="last_blocks", unfreeze=2))
    trainable = [any(p.requires_grad for p in b.parameters()) for b in blocks]
    assert trainable == [False] * (len(blocks) - 2) + [True, True]
    groups = ft.param_groups(model, 1.0, 0.5)
    rates = list({g["name"].removesuffix("-no-decay"): g["lr"] for g in groups}.values())
    assert rates[:3] == [1.0, 0.5, 0.25] and rates == sorted(rates, reverse=True)
    # biases and normalisation scales are out of weight decay, every other tensor in, each once
    no_decay = [p for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]]
    assert no_decay and all(p.ndim == 1 for p in no_decay)
    assert all(p.ndim > 1 for g in groups if "weight_decay" not in g for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_probe_head_init_is_the_logistic_regression_on_the_features():
    model, probe = tiny_model(head_init="probe")
    cfg = tiny_cfg()
    expected, _ = choose_logreg(probe.values, probe.labels, probe.values[:0], probe.labels[:0], 2, cfg.probe_C,
                                ft.balance_power(cfg), cfg.seed)
    assert torch.equal(model.head.weight, expected.weight)
    assert (model.head(torch.from_numpy(probe.values)).argmax(1).numpy() == probe.labels).all()
    random_model, _ = tiny_model(head_init="random")
    assert not torch.equal(random_model.head.weight, expected.weight)


def test_probe_on_features_of_another_backbone_is_refused():
    backbone = create_backbone("efficientnet_lite0", "none")
    wrong = ft.Features(np.zeros((4, 7), np.float32), np.array([0, 1, 0, 1]))
    with pytest.raises(TlpipeError, match="run `dvc repro` so that extract-features reruns"):
        ft.build_model(backbone, 2, tiny_cfg(head_init="probe"), wrong)


def test_training_learns_a_separable_task_and_model_file_reproduces_it(tmp_path):
    model, _ = tiny_model(weights="default")
    train, val = tiny_data(64, 0), tiny_data(32, 1)
    ft.fit(model, train, val, tiny_cfg(epochs=4, aug_rotation=0, aug_jitter=0, early_stop_metric="val_accuracy"),
           2, torch.device("cpu"),
           log=lambda _: None)
    logits = predict_logits(model, val.images, 16, torch.device("cpu"))
    assert (logits.argmax(1).numpy() == val.labels).mean() >= 0.8  # chance: 0.5
    preprocess = {"size": 32, "mode": "squash", "contrast": "none"}
    checkpoint = model_checkpoint(model, "efficientnet_lite0", ["a", "b"], preprocess, tiny_cfg(), 3)
    torch.save(checkpoint, tmp_path / "model.pt")
    loaded, meta = load_model(tmp_path / "model.pt")
    assert meta["classes"] == ["a", "b"] and meta["input_size"] == 32 and meta["preprocess"] == preprocess
    assert torch.allclose(predict_logits(loaded, val.images, 16, torch.device("cpu")), logits, atol=1e-5)


def test_model_file_that_is_not_ours_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(TlpipeError, match="not a tlpipe model file"):
        load_model(tmp_path / "other.pt")


def test_ema_weights_are_validated_and_kept(monkeypatch):
    decay, raw, validated = 0.6, [], []

    class RecordingAverage(ft.AveragedModel):
        def update_parameters(self, model):
            raw.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            super().update_parameters(model)

    def scripted_evaluate(model, data, cfg, device, decision=None, ranks=None):
        validated.append(model)
        return scripted_loss(1.0 - len(validated) / 10, data.labels)

    monkeypatch.setattr(ft, "AveragedModel", RecordingAverage)
    monkeypatch.setattr(ft, "validate", scripted_evaluate)
    model, _ = tiny_model()
    result = ft.fit(model, tiny_data(16, 0), tiny_data(8, 1), tiny_cfg(epochs=2, ema_decay=decay), 2,
                    torch.device("cpu"), log=lambda _: None)
    assert result.best_epoch == 1 and len(raw) == 4  # 2 epochs x 2 batches
    assert all(m is validated[0] and m is not model for m in validated)  # the average, not the raw model
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            continue
        expected = raw[0][key]
        for step in raw[1:]:
            expected = decay * expected + (1 - decay) * step[key]
        assert torch.allclose(value, expected, atol=1e-6), key
    assert any(not torch.equal(model.state_dict()[k], raw[-1][k]) for k in raw[-1])


def test_a_later_epoch_within_the_noise_of_the_best_is_kept(monkeypatch):
    """Balanced accuracy 0.75, 0.875, 0.75 on 8 validation images: epoch 2 is one image below epoch 1,
    which no paired test can tell from noise, so the schedule's later epoch is kept."""
    model, _ = tiny_model()
    val = tiny_data(8, 1)
    wrong_per_epoch = iter([[0, 1], [0], [1]])

    def scripted_evaluate(model, data, cfg, device, decision=None, ranks=None):
        logits = torch.zeros(len(data.labels), 2, dtype=torch.float64)
        logits[np.arange(len(data.labels)), data.labels] = 1.0
        for i in next(wrong_per_epoch):
            logits[i] = logits[i].flip(0)
        right = (logits.argmax(1).numpy() == data.labels)
        return {"val_loss": 0.5, "val_accuracy": right.mean(), "val_balanced_accuracy": right.mean()}, logits

    monkeypatch.setattr(ft, "validate", scripted_evaluate)
    result = ft.fit(model, tiny_data(16, 0), val, tiny_cfg(epochs=3, early_stop_metric="val_balanced_accuracy"), 2,
                    torch.device("cpu"), log=lambda _: None)
    assert (result.best_value_epoch, result.best_epoch) == (1, 2)
    assert [round(row["val_balanced_accuracy"], 3) for row in result.history] == [0.75, 0.875, 0.875]


def test_clearly_worse_is_a_paired_test_over_groups():
    best = np.zeros(100)
    one_more_error = best.copy()
    one_more_error[0] = 1
    many_more = best.copy()
    many_more[:12] = 1
    assert not clearly_worse(one_more_error, best, None)
    assert clearly_worse(many_more, best, None)
    # the same twelve errors in one patient's twelve images are one draw, not twelve
    patients = np.concatenate([np.zeros(12), np.arange(1, 89)])
    assert not clearly_worse(many_more, best, patients)
    assert clearly_worse(best + 0.1, best, None)  # the same loss rise on every image is no noise
    assert not clearly_worse(best, best + 0.1, None)


def test_per_image_cost_averages_to_the_metric():
    labels = np.array([0, 0, 0, 1, 1, 2])
    logits = torch.tensor([[3.0, 0, 0], [0, 3, 0], [3, 0, 0], [0, 3, 0], [3, 0, 0], [0, 0, 3]])
    predicted = logits.argmax(1).numpy()
    from sklearn.metrics import balanced_accuracy_score, log_loss
    assert per_image_cost("val_accuracy", logits, labels).mean() == pytest.approx(1 - (predicted == labels).mean())
    assert per_image_cost("val_balanced_accuracy", logits, labels).mean() == pytest.approx(
        1 - balanced_accuracy_score(labels, predicted))
    assert per_image_cost("val_loss", logits, labels).mean() == pytest.approx(
        log_loss(labels, torch.softmax(logits, 1).numpy()))
    assert per_image_cost("val_quadratic_kappa", logits, labels) is None


def test_augmented_batch_is_the_first_batch_as_training_sees_it():
    train = tiny_data(20, 3)
    cfg = tiny_cfg(aug_rotation=30, aug_jitter=0.3, aug_scale_min=0.5)
    images, labels = ft.augmented_batch(train, cfg, n=8)
    assert images.shape == (8, 32, 32, 3) and images.dtype == np.uint8
    rows = ft.epoch_order(train.labels, cfg.seed, 0)[:8]
    assert np.array_equal(labels, train.labels[rows])
    assert not np.array_equal(images, train.images[rows])  # augmented, not the cached pixels
    again, _ = ft.augmented_batch(train, cfg, n=8)
    assert np.array_equal(images, again)
    mild, _ = ft.augmented_batch(train, tiny_cfg(aug_rotation=0, aug_jitter=0, aug_scale_min=1, aug_flip=False), n=8)
    difference = {name: np.abs(batch.astype(int) - train.images[rows].astype(int)).mean()
                  for name, batch in (("strong", images), ("mild", mild))}
    assert difference["mild"] < difference["strong"] / 2, difference


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_an_epoch_shows_its_progress_on_a_terminal_and_only_there(monkeypatch, terminal):
    """On a terminal an epoch draws a bar with images/s and the time left; in a log (CI, a queued
    experiment) only the epoch's own summary line is written."""
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    lines = []
    model, _ = tiny_model()
    ft.fit(model, tiny_data(16, 0), tiny_data(8, 1), tiny_cfg(epochs=1), 2, torch.device("cpu"), log=lines.append)
    drawn = stream.getvalue()
    if terminal:
        # the bar's total is the epoch's images; which counts it draws depends on tqdm's redraw interval
        assert "epoch 0" in drawn and "img/s" in drawn and "/16 [" in drawn, drawn
    else:
        assert drawn == "", drawn
    assert any(line.startswith("epoch 0:") for line in lines), lines


def test_the_starting_model_is_validated_on_the_cached_features_with_the_same_figures():
    """The starting model's body is the frozen backbone whose features extract-features cached: its
    validation runs the head on them alone, and reads what a pass over the images reads."""
    from tlpipe.train.features import extract_features

    model, _ = tiny_model(head_init="probe")
    train, val = tiny_data(16, 0), tiny_data(12, 1)
    body_only = copy.deepcopy(model)
    body_only.head = torch.nn.Identity()
    features = extract_features(body_only, val.images, 5, torch.device("cpu"))  # as extract-features runs
    passes = []
    model.body.register_forward_hook(lambda *args: passes.append(1))
    decision = ("balanced_accuracy", train.labels)

    over_images, _ = ft.validate(model, val, tiny_cfg(), torch.device("cpu"), decision)
    assert passes
    passes.clear()
    cached = ft.Split(val.images, val.labels, features=features)
    on_features = ft.validate_start(model, cached, tiny_cfg(), torch.device("cpu"), decision)
    assert not passes  # the backbone did not run
    assert on_features.keys() == over_images.keys()
    for name, value in over_images.items():
        assert on_features[name] == pytest.approx(value, abs=1e-5), name

    mismatched = ft.Split(val.images, val.labels, features=features[:, :7])  # not this backbone's: the images
    assert ft.validate_start(model, mismatched, tiny_cfg(), torch.device("cpu"), decision) == pytest.approx(over_images)
    assert passes
