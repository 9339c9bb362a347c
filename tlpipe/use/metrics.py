"""Metrics of one model on one split, their 95% intervals, and the calibration binning."""

import math

import numpy as np
from scipy.stats import rankdata
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


LEVEL = 0.95
BOOTSTRAP_DRAWS = 1000
Z95 = 1.959964


def wilson(successes: int, n: int, z: float = Z95) -> list[float] | None:
    """Wilson's score interval of a proportion (good where the normal approximation is not)."""
    if n == 0:
        return None
    p = successes / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [clean(max(0.0, centre - half)), clean(min(1.0, centre + half))]


def _draw_figures(y_true: np.ndarray, predicted: np.ndarray, probs: np.ndarray, k: int) -> dict:
    confusion = np.bincount(y_true * k + predicted, minlength=k * k).reshape(k, k).astype(float)
    support, called = confusion.sum(1), confusion.sum(0)
    present = support > 0
    recall = np.divide(np.diag(confusion), support, out=np.zeros(k), where=present)
    precision = np.divide(np.diag(confusion), called, out=np.zeros(k), where=called > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    out = {"accuracy": np.trace(confusion) / len(y_true), "balanced_accuracy": recall[present].mean(),
           "macro_f1": f1.mean(), "roc_auc": np.nan}
    if k == 2:
        out["sensitivity"], out["specificity"] = recall[1] if present[1] else np.nan, recall[0] if present[0] else np.nan
    if present.all():  # one-vs-rest, unweighted over classes, as scikit-learn's roc_auc_score(multi_class="ovr")
        out["roc_auc"] = _auc(y_true == 1, probs[:, 1]) if k == 2 else np.mean(
            [_auc(y_true == c, probs[:, c]) for c in range(k)])
    return out


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney U) formula, ties counted half."""
    ranks = rankdata(score)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def intervals(y_true: np.ndarray, probs: np.ndarray, classes: list[str], rule: dict | None = None,
              groups: np.ndarray | None = None, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> dict:
    """95% intervals of one model's figures on one split, under its decision rule: a percentile
    bootstrap over the images, or over whole groups (patients, near-duplicate groups) where groups
    hold several images, so correlated images count once; for accuracy, sensitivity and
    specificity of independent images, Wilson's score interval instead. Each figure is [low, high]."""
    y_true, k = np.asarray(y_true), len(classes)
    predicted = decide(probs, rule)
    rng = np.random.default_rng(seed)
    grouped = groups is not None and len(np.unique(groups)) < len(groups)
    if grouped:
        _, codes = np.unique(groups, return_inverse=True)
        members = np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes))[:-1])
    samples = []
    for _ in range(draws):
        if grouped:
            rows = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        else:
            rows = rng.integers(0, len(y_true), len(y_true))
        samples.append(_draw_figures(y_true[rows], predicted[rows], probs[rows], k))
    tail = (1 - LEVEL) / 2 * 100
    result = {"level": LEVEL, "bootstrap_draws": draws,
              "resampled": "groups (split.csv)" if grouped else "images", "method": {}}
    for name in samples[0]:
        values = np.array([s[name] for s in samples], dtype=float)
        values = values[np.isfinite(values)]
        if len(values) >= draws // 2:
            result[name] = [clean(np.percentile(values, tail)), clean(np.percentile(values, 100 - tail))]
            result["method"][name] = "percentile bootstrap"
    if not grouped:  # proportions of independent images: Wilson
        correct = predicted == y_true
        result["accuracy"], result["method"]["accuracy"] = wilson(int(correct.sum()), len(y_true)), "Wilson"
        if k == 2:
            for name, cls in (("sensitivity", 1), ("specificity", 0)):
                of = y_true == cls
                if of.any():
                    result[name], result["method"][name] = wilson(int(correct[of].sum()), int(of.sum())), "Wilson"
    return result
