"""Metrics of one model on one split (scikit-learn throughout), and the calibration binning."""

import math

import numpy as np
from sklearn import metrics as skm

from tlpipe.model.decision import decide, metric_value, rule_summary

ECE_BINS = 15


def clean(value: float) -> float | None:
    """JSON has no NaN: an undefined metric is null."""
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else round(value, 6)


def calibration_bins(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width bin of top-label confidence: mean confidence, accuracy and count (non-empty bins).

    The one binning behind both the ECE figure and the reliability diagram."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            rows.append({"confidence": float(confidence[in_bin].mean()), "accuracy": float(correct[in_bin].mean()),
                         "count": int(in_bin.sum())})
    return rows


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: |accuracy - confidence| averaged over equal-width confidence bins."""
    n = max(len(y_true), 1)
    return sum(row["count"] / n * abs(row["accuracy"] - row["confidence"]) for row in calibration_bins(y_true, probs, bins))


def _normalised(probs: np.ndarray) -> np.ndarray:
    """Float32 softmax rows, clipped away from 0, summing to one in float64 (as scikit-learn checks)."""
    clipped = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1)
    return clipped / clipped.sum(1, keepdims=True)


def decision_figures(y_true: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict:
    """The figures that depend on the decisions: accuracy, balanced accuracy, macro F1, kappas, Youden's J
    (mean one-vs-rest; for two classes sensitivity + specificity - 1), per class; binary: sensitivity and
    specificity of classes[1]."""
    labels = list(range(len(classes)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, predicted, labels=labels, zero_division=0)
    result = {
        "accuracy": clean(skm.accuracy_score(y_true, predicted)),
        "balanced_accuracy": clean(metric_value("balanced_accuracy", y_true, predicted, len(classes))),
        "macro_precision": clean(precision.mean()),
        "macro_recall": clean(recall.mean()),
        "macro_f1": clean(f1.mean()),
        "cohen_kappa": clean(skm.cohen_kappa_score(y_true, predicted, labels=labels)),
        "quadratic_kappa": clean(skm.cohen_kappa_score(y_true, predicted, labels=labels, weights="quadratic")),
        "youden": clean(metric_value("youden", y_true, predicted, len(classes))),
    }
    if len(classes) == 2:
        tn, fp, fn, tp = skm.confusion_matrix(y_true, predicted, labels=[0, 1]).ravel()
        result["sensitivity"] = clean(tp / (tp + fn)) if tp + fn else None
        result["specificity"] = clean(tn / (tn + fp)) if tn + fp else None
    result["per_class"] = {
        name: {"precision": clean(p), "recall": clean(r), "f1": clean(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support)
    }
    return result


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                           rule: dict | None = None) -> dict:
    """All metrics of one model on one split. The plain names are the figures under the model's
    decision rule (fitted on validation, stored in its file; None: argmax), the same figures under
    argmax sit in `argmax`; the figures of the probabilities alone (log loss, ROC AUC, ECE) appear once."""
    labels = list(range(len(classes)))
    result = {"n": int(len(y_true)), "rule": rule_summary(rule, classes)}
    result |= decision_figures(y_true, decide(probs, rule), classes)
    result |= {
        "log_loss": clean(skm.log_loss(y_true, _normalised(probs), labels=labels)) if len(y_true) else None,
        "ece": clean(expected_calibration_error(y_true, probs)),
        "roc_auc": None,
    }
    present = np.unique(y_true)
    if len(present) == len(classes) and len(classes) == 2:
        result["roc_auc"] = clean(skm.roc_auc_score(y_true, probs[:, 1]))
    elif len(present) == len(classes):
        result["roc_auc"] = clean(skm.roc_auc_score(y_true, probs, multi_class="ovr", labels=labels))
    result["argmax"] = decision_figures(y_true, probs.argmax(1), classes)
    return result


def majority_baseline(train_labels: np.ndarray, y_true: np.ndarray, num_classes: int) -> dict:
    majority = int(np.bincount(train_labels, minlength=num_classes).argmax())
    predicted = np.full_like(y_true, majority)
    return {"accuracy": clean(skm.accuracy_score(y_true, predicted)),
            "balanced_accuracy": clean(skm.balanced_accuracy_score(y_true, predicted))}
