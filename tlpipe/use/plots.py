"""Plot data for DVC's templates: confusion rows, ROC and precision-recall curves, reliability."""

import numpy as np
from sklearn import metrics as skm

from tlpipe.use.metrics import ECE_BINS, calibration_bins, clean


def confusion_rows(y_true: np.ndarray, predicted: np.ndarray, classes: list[str]) -> list[dict]:
    """Rows for DVC's `confusion` templates: one {actual, predicted} per image."""
    return [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(y_true, predicted)]


def _positive_scores(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary: the positive class's score; multiclass: micro-averaged one-vs-rest."""
    if probs.shape[1] == 2:
        return y_true, probs[:, 1]
    onehot = np.eye(probs.shape[1], dtype=int)[y_true]
    return onehot.ravel(), probs.ravel()


def roc_rows(y_true: np.ndarray, probs: np.ndarray) -> list[dict]:
    truth, score = _positive_scores(y_true, probs)
    if len(np.unique(truth)) < 2:
        return []
    fpr, tpr, _ = skm.roc_curve(truth, score, drop_intermediate=True)
    return [{"fpr": clean(f), "tpr": clean(t)} for f, t in zip(fpr, tpr)]


def pr_rows(y_true: np.ndarray, probs: np.ndarray) -> list[dict]:
    truth, score = _positive_scores(y_true, probs)
    if len(np.unique(truth)) < 2:
        return []
    precision, recall, _ = skm.precision_recall_curve(truth, score, drop_intermediate=True)
    return [{"recall": clean(r), "precision": clean(p)} for p, r in zip(precision, recall)]


def reliability_rows(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """The reliability diagram: per confidence bin (the ECE's bins), accuracy against confidence."""
    return [{**row, "perfect_calibration": row["confidence"]} for row in calibration_bins(y_true, probs, bins)]
