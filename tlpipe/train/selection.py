"""Which fine-tuning epoch is kept, and when training stops: the last epoch whose
`early_stop_metric` is not worse than the best epoch's beyond the noise (a paired test over
validation images, grouped by patient or near-duplicate group), and patience counted from after the
learning-rate peak. Its state is plain data, saved with each epoch's checkpoint for resume."""

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tlpipe.params import HIGHER_IS_BETTER


def per_image_cost(metric: str, logits: torch.Tensor, labels: np.ndarray) -> np.ndarray | None:
    """What `metric` averages over validation images, as a cost per image (lower is better): the
    loss, or an error weighted as the metric weighs it; None where the metric is no such mean."""
    labels = np.asarray(labels)
    if metric == "val_loss":
        return nn.functional.cross_entropy(logits.double(), torch.from_numpy(labels), reduction="none").numpy()
    wrong = (logits.argmax(1).numpy() != labels).astype(np.float64)
    if metric == "val_accuracy":
        return wrong
    if metric == "val_balanced_accuracy":  # mean recall = a mean over images weighted by 1 / their class's share
        counts = np.bincount(labels)
        return wrong * len(labels) / (np.count_nonzero(counts) * counts[labels])
    return None


def clearly_worse(cost: np.ndarray, best_cost: np.ndarray, groups: np.ndarray | None, z: float = 1.645) -> bool:
    """Whether per-image costs `cost` are above `best_cost` on average beyond the noise: the paired
    difference's mean is more than `z` (one-sided 95%) standard errors above zero, the standard
    error taken over validation groups (a patient's or near-duplicate group's images move together)."""
    difference = cost - best_cost
    _, group_of = np.unique(np.arange(len(cost)) if groups is None else np.asarray(groups), return_inverse=True)
    per_group = np.bincount(group_of.reshape(-1), weights=difference)
    size = np.bincount(group_of.reshape(-1))
    mean, n, g = difference.mean(), len(difference), len(per_group)
    if g < 2:
        return bool(mean > 0)
    se = math.sqrt(g / (g - 1) * float(((per_group - size * mean) ** 2).sum())) / n
    return bool(mean > z * se) if se > 0 else bool(mean > 0)


def is_better(metric: str, value: float, best: float | None) -> bool:
    return best is None or (value > best if HIGHER_IS_BETTER[metric] else value < best)


@dataclass
class EarlyStopping:
    """The running choice of epoch on `metric` (`cfg.early_stop_metric`). `patience` epochs without
    a better value, counted from epoch `first_counted` on, stop training (0: never)."""
    metric: str
    patience: int
    first_counted: int
    best: float | None = None
    best_cost: np.ndarray | None = None  # the best epoch's per-image costs, where the metric is a mean over images
    since_best: int = 0
    stopped: bool = False

    def observe(self, epoch: int, value: float, cost: np.ndarray | None, groups: np.ndarray | None
                ) -> tuple[bool, bool]:
        """(improved: a new best value; kept: this epoch is the one to keep so far)."""
        improved = is_better(self.metric, value, self.best)
        kept = improved or (cost is not None and not clearly_worse(cost, self.best_cost, groups))
        if improved:
            self.best, self.best_cost, self.since_best = value, cost, 0
        elif epoch >= self.first_counted:
            self.since_best += 1
            self.stopped = bool(self.patience) and self.since_best >= self.patience
        return improved, kept

    @classmethod
    def restored(cls, saved: dict) -> "EarlyStopping":
        """From a checkpoint's plain copy (its costs saved as a tensor)."""
        cost = saved["best_cost"]
        return cls(**(saved | {"best_cost": None if cost is None else np.asarray(cost, dtype=np.float64)}))
