"""Metrics (scikit-learn throughout) and plot data for the evaluate stage."""

import math

import numpy as np
from sklearn import metrics as skm

ECE_BINS = 15


def _clean(value: float) -> float | None:
    """JSON has no NaN: an undefined metric is null."""
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else round(value, 6)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: |accuracy - confidence| averaged over equal-width confidence bins."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return error


def binary_rates(y_true: np.ndarray, positive_score: np.ndarray, threshold: float) -> dict:
    predicted = (positive_score >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, predicted, labels=[0, 1]).ravel()
    return {
        "threshold": _clean(threshold),
        "accuracy": _clean(skm.accuracy_score(y_true, predicted)),
        "sensitivity": _clean(tp / (tp + fn)) if tp + fn else None,
        "specificity": _clean(tn / (tn + fp)) if tn + fp else None,
        "balanced_accuracy": _clean(skm.balanced_accuracy_score(y_true, predicted)),
    }


def tune_threshold(y_val: np.ndarray, positive_score: np.ndarray) -> float:
    """The threshold that maximises Youden's J (sensitivity + specificity - 1) on validation."""
    if len(np.unique(y_val)) < 2:
        return 0.5
    fpr, tpr, thresholds = skm.roc_curve(y_val, positive_score)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                           threshold: float | None = None) -> dict:
    """All metrics of one model on one split; `threshold` (binary only) chosen on validation."""
    labels = list(range(len(classes)))
    predicted = probs.argmax(1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, predicted, labels=labels, zero_division=0)
    result = {
        "n": int(len(y_true)),
        "accuracy": _clean(skm.accuracy_score(y_true, predicted)),
        "balanced_accuracy": _clean(skm.balanced_accuracy_score(y_true, predicted)),
        "precision_macro": _clean(precision.mean()),
        "recall_macro": _clean(recall.mean()),
        "f1_macro": _clean(f1.mean()),
        "cohen_kappa": _clean(skm.cohen_kappa_score(y_true, predicted, labels=labels)),
        "quadratic_kappa": _clean(skm.cohen_kappa_score(y_true, predicted, labels=labels, weights="quadratic")),
        "log_loss": _clean(skm.log_loss(y_true, np.clip(probs, 1e-12, 1), labels=labels)),
        "ece": _clean(expected_calibration_error(y_true, probs)),
        "roc_auc": None,
    }
    present = np.unique(y_true)
    if len(present) == len(classes) and len(classes) == 2:
        result["roc_auc"] = _clean(skm.roc_auc_score(y_true, probs[:, 1]))
    elif len(present) == len(classes):
        result["roc_auc"] = _clean(skm.roc_auc_score(y_true, probs, multi_class="ovr", labels=labels))
    result["per_class"] = {
        name: {"precision": _clean(p), "recall": _clean(r), "f1": _clean(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support)
    }
    if len(classes) == 2:
        result["at_0.5"] = binary_rates(y_true, probs[:, 1], 0.5)
        if threshold is not None:
            result["at_val_threshold"] = binary_rates(y_true, probs[:, 1], threshold)
    return result


def majority_baseline(train_labels: np.ndarray, y_true: np.ndarray, num_classes: int) -> dict:
    majority = int(np.bincount(train_labels, minlength=num_classes).argmax())
    predicted = np.full_like(y_true, majority)
    return {"accuracy": _clean(skm.accuracy_score(y_true, predicted)),
            "balanced_accuracy": _clean(skm.balanced_accuracy_score(y_true, predicted))}


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
    return [{"fpr": _clean(f), "tpr": _clean(t)} for f, t in zip(fpr, tpr)]


def pr_rows(y_true: np.ndarray, probs: np.ndarray) -> list[dict]:
    truth, score = _positive_scores(y_true, probs)
    if len(np.unique(truth)) < 2:
        return []
    precision, recall, _ = skm.precision_recall_curve(truth, score, drop_intermediate=True)
    return [{"recall": _clean(r), "precision": _clean(p)} for p, r in zip(precision, recall)]


def decide(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class indices: argmax, or for a binary model whether the second class's probability reaches
    the threshold chosen on validation."""
    if threshold is not None and probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(1)
