"""Plot data for DVC's templates: confusion rows, ROC and precision-recall curves, reliability."""

import numpy as np
from sklearn import metrics as skm

from tlpipe.use.metrics import ECE_BINS, calibration_bins, clean


def confusion_rows(y_true: np.ndarray, predicted: np.ndarray, classes: list[str], max_rows: int = 0,
                   seed: int = 0) -> list[dict]:
    """Rows for DVC's `confusion` templates (they count rows): one {actual, predicted} per image, or
    for more than `max_rows` images (0: no cap) a stratified sample of about max_rows of them: each
    (actual, predicted) cell in proportion, every non-empty cell kept (a rare error stays visible).
    The normalised matrix is then the full one up to rounding; the counts are the sample's."""
    rows = confusion_sample(y_true, predicted, max_rows, seed)
    return [{"actual": classes[y_true[i]], "predicted": classes[predicted[i]]} for i in rows]


def confusion_sample(y_true: np.ndarray, predicted: np.ndarray, max_rows: int, seed: int = 0) -> np.ndarray:
    """The image indices `confusion_rows` keeps, in order."""
    n = len(y_true)
    if not max_rows or n <= max_rows:
        return np.arange(n)
    cell = np.asarray(y_true, dtype=np.int64) * (int(np.max(predicted, initial=0)) + 1) + np.asarray(predicted)
    rng = np.random.default_rng(seed)
    kept = [rng.choice(members, size=min(len(members), max(1, round(max_rows * len(members) / n))), replace=False)
            for members in (np.flatnonzero(cell == c) for c in np.unique(cell))]
    return np.sort(np.concatenate(kept))


def _positive_scores(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary: the positive class's score; multiclass: micro-averaged one-vs-rest."""
    if probs.shape[1] == 2:
        return y_true, probs[:, 1]
    onehot = np.eye(probs.shape[1], dtype=int)[y_true]
    return onehot.ravel(), probs.ravel()


def _curve_rows(y_true: np.ndarray, probs: np.ndarray, curve, names: tuple[str, str]) -> list[dict]:
    """Rows of a scikit-learn curve (x, y, thresholds) over the positive or one-vs-rest scores."""
    truth, score = _positive_scores(y_true, probs)
    if len(np.unique(truth)) < 2:
        return []
    first, second, _ = curve(truth, score, drop_intermediate=True)
    return [{names[0]: clean(a), names[1]: clean(b)} for a, b in zip(first, second)]


def roc_rows(y_true: np.ndarray, probs: np.ndarray) -> list[dict]:
    return _curve_rows(y_true, probs, skm.roc_curve, ("fpr", "tpr"))


def pr_rows(y_true: np.ndarray, probs: np.ndarray) -> list[dict]:
    return _curve_rows(y_true, probs, skm.precision_recall_curve, ("precision", "recall"))


def reliability_rows(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """The reliability diagram: per confidence bin (the ECE's bins), accuracy against confidence."""
    return [{**row, "perfect_calibration": row["confidence"]} for row in calibration_bins(y_true, probs, bins)]
