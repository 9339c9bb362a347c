"""What the finetune stage and `tlpipe lr-find` set up the same way: the cached splits, the
probe-initialised model, the strategy (auto resolved) and the learning rate (auto: a range test)."""

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from tlpipe.data.cache import load_classes, load_features, load_groups, load_spatial_features, load_split
from tlpipe.distributed import SINGLE, Ranks, share
from tlpipe.model.backbones import create_backbone
from tlpipe.model.classifier import AttentionHead, Classifier
from tlpipe.model.inference import feature_probabilities
from tlpipe.train.choose import choose_logreg
from tlpipe.train.finetune import Features, Split, build_model, lr_range_test, probe_head
from tlpipe.train.lr_find import LrCurve, suggest
from tlpipe.train.sample import bounded_sample, take_rows
from tlpipe.train.strategy import choose
from tlpipe.params import FinetuneParams, Params


@dataclass
class Session:
    classes: list[str]
    train: Split
    val: Split
    model: Classifier
    cfg: FinetuneParams  # finetune.* with strategy and lr resolved
    choices: dict      # what was chosen and why, for metrics/finetune.json
    lr_curve: LrCurve | None = None


def probe_features(split: str, num_features: int, max_rows: int = 0, seed: int = 0) -> Features:
    """The frozen features the linear probe is fitted on: extract-features' pooled features, or, when
    they are not an average of the last feature map (VGG's come from its classifier) and finetune's
    head pools that map, the average of the cached maps (features.spatial_grid). With `max_rows`, a
    stratified sample of at most that many rows (tlpipe.train.sample), read out of the memory map."""
    values, labels = load_features("data/features", split)
    rows = bounded_sample(labels, max_rows, seed)
    features = Features(values if len(rows) == len(labels) else take_rows(values, rows), labels[rows])
    if features.values.shape[1] != num_features and Path(f"data/features/{split}_spatial.npy").exists():
        maps = load_spatial_features("data/features", split)
        features = Features(np.asarray(take_rows(maps, rows), np.float32).mean((2, 3)), features.labels)
    return features


def probe_score(model: Classifier, probe: Features, val_features: np.ndarray, val_labels: np.ndarray,
                cfg: FinetuneParams, num_classes: int) -> float:
    """Validation balanced accuracy of the linear probe on the frozen features (the model's own head
    when it was initialised from the probe, else one fitted here the same way)."""
    head = model.head.classify if isinstance(model.head, AttentionHead) else model.head
    if cfg.head_init != "probe":
        head = choose_logreg(probe.values, probe.labels, val_features, val_labels, num_classes, cfg.probe_C,
                             cfg.class_balance != "none", cfg.seed)[0]
    predicted = feature_probabilities(head, val_features).argmax(1)
    return float(balanced_accuracy_score(val_labels, predicted))


def prepare(p: Params, device: torch.device, find_lr: bool | None = None, log=print, ranks: Ranks = SINGLE) -> Session:
    """Load the inputs of finetune and resolve `strategy: auto` and `lr: auto` as the stage does.

    `find_lr`: run the range test (default: when finetune.lr is auto and there is anything to train).
    Under several processes rank 0 runs it and the others take its rate."""
    cfg = p.finetune
    classes = load_classes("data/cache")
    train = Split(*load_split("data/cache", "train", paths=False)[:2])
    val_images, val_labels, val_index = load_split("data/cache", "val")
    val = Split(val_images, val_labels, load_groups(val_index["path"]))
    backbone = create_backbone(p.backbone.name, p.backbone.weights, spatial=cfg.head == "attention")
    probe = probe_features("train", backbone.num_features, cfg.probe_max_images, cfg.seed)  # large sets: a sample
    val_probe = probe_features("val", backbone.num_features)
    if not p.features.flip_tta:  # what the starting model's body computes: its validation reads them
        val.features = val_probe.values
    choices: dict = {}
    head = None
    if cfg.head_init == "probe":  # probe_C (auto: on validation) and a temperature fitted on validation
        head, choices["chosen_on_val"] = probe_head(backbone, len(classes), cfg, probe, val_probe)
    model = build_model(backbone, len(classes), cfg, probe, head=head)
    if cfg.strategy == "auto":
        score = probe_score(model, probe, val_probe.values, val_probe.labels, cfg, len(classes))
        choices["probe_val_balanced_accuracy"] = score
    else:
        score = None
    strategy, choices["strategy_reason"] = choose(cfg.strategy, len(train.labels), score)
    cfg = replace(cfg, strategy=strategy)
    choices["strategy"] = cfg.strategy
    log(f"finetune: strategy {cfg.strategy} ({choices['strategy_reason']})")
    session = Session(classes, train, val, model, cfg, choices)
    if find_lr is None:
        find_lr = cfg.lr == "auto" and cfg.epochs > 0
    if find_lr:
        if ranks.is_main:
            torch.manual_seed(cfg.seed)
            session.lr_curve = lr_range_test(model, train, cfg, len(classes), device)
        session.lr_curve = share(session.lr_curve, ranks)
        lr = suggest(session.lr_curve)
        choices["lr_find"] = session.lr_curve.as_metrics(lr)
        log(f"finetune: lr auto -> {lr:.3g} (range test of {len(session.lr_curve.rows)} steps)")
        if cfg.lr == "auto":
            cfg = replace(cfg, lr=lr)
    if cfg.lr == "auto":  # nothing to train (finetune.epochs: 0): no rate is used
        cfg = replace(cfg, lr=cfg.lr_find_min)
    choices["peak_lr"] = cfg.lr
    session.cfg = cfg
    return session
