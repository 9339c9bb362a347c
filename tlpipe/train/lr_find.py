"""The learning-rate range test (Smith 2015; fastai's `lr_find`): train from the probe-initialised
model for a bounded number of steps while the rate grows exponentially from `min_lr` to `max_lr`,
smooth the loss, stop when it diverges, and suggest a rate from the curve.

The test trains exactly what finetune's unfrozen phase trains (the same blocks, the same
discriminative rates, augmentation and loss), then puts every weight and buffer back, so the
training that follows starts from the same model. Its batches come in finetune's order
(train.step.batch_rows), pass after pass: the same seed gives the same curve.
"""

import copy
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tlpipe.errors import TlpipeError
from tlpipe.model.classifier import Classifier
from tlpipe.runtime import to_float_images
from tlpipe.train.augment import Augment
from tlpipe.train.step import NonFiniteLoss, batch_rows, step
from tlpipe.params import FinetuneParams

SMOOTHING = 0.05       # weight of the newest loss in the exponential moving average (bias-corrected)
DIVERGENCE = 4.0       # stop once the smoothed loss exceeds this many times its minimum
SUGGEST_DIVISOR = 10   # suggestion: the rate of the lowest smoothed loss, divided by this (fastai's 'minimum')


@dataclass
class LrCurve:
    rows: list[dict] = field(default_factory=list)   # {step, lr, log10_lr, loss, smoothed_loss}
    diverged_at: float | None = None                  # the rate at which the loss diverged, if it did

    def as_metrics(self, suggestion: float) -> dict:
        best = min(self.rows, key=lambda r: r["smoothed_loss"])
        return {"suggested_lr": suggestion, "min_loss_lr": best["lr"], "min_smoothed_loss": best["smoothed_loss"],
                "start_loss": self.rows[0]["smoothed_loss"], "diverged_at_lr": self.diverged_at,
                "steps": len(self.rows)}


def rates(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """`steps` rates from min_lr to max_lr, evenly spaced on a log scale."""
    return np.geomspace(min_lr, max_lr, num=max(steps, 2))


def _batches(labels: np.ndarray, seed: int, batch_size: int, balanced: bool):
    for epoch in itertools.count():  # as many passes over the training split as the test needs
        for rows in batch_rows(labels, seed, epoch, batch_size, balanced):
            yield np.sort(rows)  # read in disk order; the batch's loss does not depend on it


def range_test(model: Classifier, images: np.ndarray, labels: np.ndarray, groups: list[dict], loss_fn: nn.Module,
               augment: Augment, cfg: FinetuneParams, device: torch.device) -> LrCurve:
    """Run the range test on `model` (already set trainable as the training will be) and restore it.

    `groups` are the optimizer's param groups with their rates relative to the head's (layer decay);
    each step sets the head's rate to the next of `rates(...)` and every group's in proportion.
    """
    saved = copy.deepcopy(model.state_dict())
    relative = [g["lr"] / groups[0]["lr"] for g in groups]
    optimizer = torch.optim.AdamW([dict(g) for g in groups], weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    curve, average, best = LrCurve(), 0.0, math.inf
    try:
        batches = _batches(np.asarray(labels), cfg.seed, cfg.batch_size, cfg.class_balance == "sampler")
        for at, lr in enumerate(rates(cfg.lr_find_min, cfg.lr_find_max, cfg.lr_find_steps)):
            for group, factor in zip(optimizer.param_groups, relative):
                group["lr"] = lr * factor
            idx = next(batches)
            x = augment(to_float_images(images[idx], device, cfg.channels_last), generator)
            y = torch.from_numpy(np.asarray(labels[idx])).to(device)
            try:
                value = step(model, x, y, loss_fn, optimizer, device, cfg.amp).item()
            except NonFiniteLoss:
                curve.diverged_at = float(lr)
                break
            average = (1 - SMOOTHING) * average + SMOOTHING * value
            smoothed = average / (1 - (1 - SMOOTHING) ** (at + 1))
            curve.rows.append({"step": at, "lr": float(lr), "log10_lr": math.log10(lr), "loss": value,
                               "smoothed_loss": smoothed})
            best = min(best, smoothed)
            if at > 0 and smoothed > DIVERGENCE * best:
                curve.diverged_at = float(lr)
                break
    finally:
        model.load_state_dict(saved)
    return curve


def suggest(curve: LrCurve) -> float:
    """The rate of the lowest smoothed loss divided by SUGGEST_DIVISOR, where the loss still falls.

    Refused (TlpipeError) when the curve never falls below its start: every rate tried was already
    too high (or the range too short to see anything), and no rate from it can be trusted.
    """
    if len(curve.rows) < 3:
        raise TlpipeError(f"finetune.lr auto: the range test diverged after {len(curve.rows)} step(s) (at lr "
                          f"{curve.diverged_at:.3g}); every rate tried is too high. Lower finetune.lr_find_min.")
    start = curve.rows[0]["smoothed_loss"]
    best = min(curve.rows, key=lambda r: r["smoothed_loss"])
    if best["smoothed_loss"] >= start * 0.99 or best is curve.rows[0]:
        where = f"diverged at lr {curve.diverged_at:.3g}" if curve.diverged_at else "never fell"
        raise TlpipeError(f"finetune.lr auto: the loss never fell below its start over the range test "
                          f"({curve.rows[0]['lr']:.3g} .. {curve.rows[-1]['lr']:.3g}; it {where}), so no rate "
                          "can be suggested. Lower finetune.lr_find_min, raise finetune.lr_find_steps, "
                          "or give finetune.lr as a number.")
    return float(max(best["lr"] / SUGGEST_DIVISOR, curve.rows[0]["lr"]))


def text_chart(curve: LrCurve, suggestion: float, width: int = 50, points: int = 20) -> str:
    """The curve as text: one line per sampled rate, a bar for the smoothed loss, the suggestion marked."""
    rows = curve.rows
    picked = sorted({round(i) for i in np.linspace(0, len(rows) - 1, min(points, len(rows)))})
    low = min(r["smoothed_loss"] for r in rows)
    high = max(r["smoothed_loss"] for r in rows)
    lines = [f"{'lr':>10}  {'smoothed loss':>13}"]
    for i in picked:
        row = rows[i]
        bar = "#" * max(1, round(width * (row["smoothed_loss"] - low) / max(high - low, 1e-12)))
        lines.append(f"{row['lr']:10.3g}  {row['smoothed_loss']:13.4f}  {bar}")
    lines.append(f"suggested lr: {suggestion:.3g}" + (f" (diverged at {curve.diverged_at:.3g})" if curve.diverged_at else ""))
    return "\n".join(lines)
