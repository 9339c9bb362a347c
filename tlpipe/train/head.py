"""The train-head stage: a classifier on frozen features, in seconds.

`logreg` is scikit-learn's LogisticRegression on standardised features, folded back into one
torch Linear layer so that finetune can start from it; `mlp` is a torch network with any number
of hidden layers (`head.hidden: [512, 256]`); `attention` pools the cached feature maps
(features.spatial_grid) with learned attention weights, then classifies (linear, or the MLP).
Both are saved as the same self-describing head file (tlpipe.model.modelfile).
"""

import copy
import math

import numpy as np
import torch
from sklearn.metrics import accuracy_score, log_loss
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from tlpipe.errors import TlpipeError
from tlpipe.model.classifier import AttentionHead, make_head
from tlpipe.model.decision import rule_summary
from tlpipe.model.decision_fit import fit_rule
from tlpipe.model.inference import feature_probabilities
from tlpipe.model.modelfile import head_checkpoint
from tlpipe.train.choose import choose_logreg
from tlpipe.train.step import NonFiniteLoss, batch_rows, decay_groups, step
from tlpipe.params import HeadParams


def class_weights(labels: np.ndarray, num_classes: int, power: float = 1.0) -> np.ndarray:
    """Per-class loss weights proportional to frequency ** -power: 1 is scikit-learn's 'balanced'
    (n / (classes * count)), 0 no weighting, in between a milder push towards the rare classes.
    Absent classes get weight 1."""
    weights = np.ones(num_classes)
    present = np.unique(labels)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels) ** power
    return weights


def hidden_units(hidden: int | list[int]) -> list[int]:
    """head.hidden as a list of layer widths ([512, 256]); one number is one hidden layer."""
    return [hidden] if isinstance(hidden, int) else list(hidden)


def _torch_head(cfg: HeadParams, x: np.ndarray, num_classes: int) -> nn.Module:
    torch.manual_seed(cfg.seed)
    if cfg.kind == "attention":
        if x.ndim != 4:
            raise TlpipeError("train-head: head.kind attention needs feature maps (N, C, g, g); set "
                              "features.spatial_grid > 0 and run `dvc repro`.")
        return AttentionHead(x.shape[1], num_classes, hidden_units(cfg.hidden), cfg.dropout)
    return make_head(x.shape[1], num_classes, hidden_units(cfg.hidden), cfg.dropout)


def _fit_torch_head(cfg: HeadParams, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                    num_classes: int) -> tuple[nn.Module, list[dict]]:
    """An MLP on features, or attention pooling + a head on feature maps, by AdamW; the epoch of the
    lowest validation loss is kept."""
    head = _torch_head(cfg, x, num_classes)
    weight = torch.tensor(class_weights(y, num_classes), dtype=torch.float32) if cfg.class_weight == "balanced" else None
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    optimizer = torch.optim.AdamW(decay_groups(head.parameters(), "head"), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # float16 feature maps are widened to float32 here, once: a few hundred MB at most for CI-sized sets
    xt, yt = torch.from_numpy(np.array(x, dtype=np.float32)), torch.from_numpy(y).long()
    xv, yv = torch.from_numpy(np.array(x_val, dtype=np.float32)), torch.from_numpy(y_val).long()
    curve, best, best_loss = [], None, float("inf")
    for epoch in range(cfg.epochs):
        head.train()
        total = 0.0
        for rows in batch_rows(y, cfg.seed, epoch, cfg.batch_size):
            idx = torch.from_numpy(rows)
            try:
                loss = step(head, xt[idx], yt[idx], loss_fn, optimizer)
            except NonFiniteLoss as bad:
                raise TlpipeError(f"train-head: the MLP's loss became {bad.value} at epoch {epoch}; nothing was "
                                  f"written. Lower head.lr (now {cfg.lr}) or raise head.weight_decay.") from None
            total += loss.item() * len(idx)
        head.eval()
        with torch.no_grad():
            logits = head(xv)
            val_loss = nn.functional.cross_entropy(logits, yv).item()
            val_acc = (logits.argmax(1) == yv).float().mean().item()
        curve.append({"step": epoch, "train_loss": total / len(xt), "val_loss": val_loss, "val_accuracy": val_acc})
        if val_loss < best_loss:
            best, best_loss = copy.deepcopy(head.state_dict()), val_loss
    head.load_state_dict(best)
    return head, curve


def train_head(cfg: HeadParams, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
               classes: list[str], decision_metric: str = "balanced_accuracy",
               val_groups: np.ndarray | None = None) -> tuple[dict, dict, list[dict]]:
    """Return (head checkpoint dict, metrics, per-epoch curve); the checkpoint's decision rule is
    fitted on validation for `decision_metric` (its held-out check keeps each of `val_groups` whole)."""
    if len(np.unique(y)) < 2:
        raise TlpipeError("train-head: the training split has fewer than 2 classes.")
    num_classes = len(classes)
    curve: list[dict] = []
    chosen: dict = {}
    if cfg.kind == "logreg":
        head, chosen = choose_logreg(x, y, x_val, y_val, num_classes, cfg.C, cfg.class_weight == "balanced",
                                     cfg.seed)
        # no epochs: the curve is the C search, x = log10 C (dvc.yaml's train_head_loss plot)
        curve = [{"step": round(math.log10(row["C"]), 3), "train_loss": row["train_loss"], "val_loss": row["val_loss"]}
                 for row in chosen["C_path"]]
        chosen = {"C": chosen["C"], **({"C_grid": chosen["C_grid"]} if "C_grid" in chosen else {})}
    else:
        head, curve = _fit_torch_head(cfg, x, y, x_val, y_val, num_classes)
    probs = {"train": feature_probabilities(head, x), "val": feature_probabilities(head, x_val)}
    rule = fit_rule(y_val, probs["val"], decision_metric, y, groups=val_groups)
    checkpoint = head_checkpoint(head, classes, rule=rule, kind=cfg.kind)
    metrics: dict = ({"chosen_on_val": chosen} if chosen else {}) | {"rule": rule_summary(rule, classes)}
    for split, labels in {"train": y, "val": y_val}.items():
        metrics[split] = {"accuracy": float(accuracy_score(labels, probs[split].argmax(1))),
                          "log_loss": float(log_loss(labels, probs[split], labels=list(range(num_classes))))}
    return checkpoint, metrics, curve
