"""The decision rule: from class probabilities to one class per image.

Learning and deciding are kept apart. A model is trained for good probabilities (with a class
weighting of some strength); the decision is then `argmax(log p + offsets)`, per-class logit
offsets (prior correction / logit adjustment, Menon et al. 2021) fitted on validation to
maximise one named metric (`evaluate.decision_metric`). A binary threshold on p(classes[1]) is
the two-class case: classes[1] iff logit(p1) > offsets[0] - offsets[1].

The rule is fitted once, by the stage that trains the model (train-head for head.pt, finetune
for model.pt), stored in the model file, and applied by everything that decides: evaluate's
figures and confusion matrices, the report, `tlpipe predict` and the exported model.
How it is fitted: tlpipe.model.decision_fit.
"""

import numpy as np

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "quadratic_kappa", "youden")


def log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None))


def decide(probs: np.ndarray, rule: dict | None) -> np.ndarray:
    """Class indices under `rule` (None: argmax)."""
    probs = np.asarray(probs)
    if rule is None or len(probs) == 0:
        return probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    return (log_probs(probs) + np.asarray(rule["offsets"], dtype=np.float64)).argmax(1)


def threshold_of(rule: dict | None) -> float | None:
    """Binary rules only: the probability of classes[1] from which classes[1] is decided."""
    if rule is None or len(rule["offsets"]) != 2:
        return None
    return float(1 / (1 + np.exp(rule["offsets"][1] - rule["offsets"][0])))


def describe(rule: dict | None, classes: list[str]) -> str:
    if rule is None or not np.any(rule["offsets"]):
        return "argmax"
    if len(classes) == 2:
        return f"prob_{classes[1]} >= {threshold_of(rule):.4f} (fitted on validation for {rule['metric']})"
    return f"argmax of log-probability + per-class offsets (fitted on validation for {rule['metric']})"


def threshold_rule(threshold: float, metric: str) -> dict:
    """The two-class rule deciding classes[1] when its probability exceeds `threshold`."""
    half = float(np.log(threshold / (1 - threshold))) / 2
    return {"metric": metric, "family": "own", "tau": 0.0, "offsets": [half, -half], "refined": [0, 1],
            "held_out_gain": {}, "val_argmax": None, "val_rule": None, "why": "a threshold given by hand"}


def rule_summary(rule: dict | None, classes: list[str]) -> dict:
    """The rule as metrics files show it: what it was fitted for, its family and offsets, and its
    validation value against argmax's."""
    if rule is None:
        return {"fitted_for": "argmax"}
    summary = {"fitted_for": rule["metric"], "family": rule["family"], "tau": round(rule["tau"], 6),
               "offsets": {name: round(v, 6) for name, v in zip(classes, rule["offsets"])},
               "own_offsets": [classes[k] for k in rule["refined"]], "held_out_gain": rule["held_out_gain"],
               "why": rule.get("why"),
               "val_under_rule": rule["val_rule"], "val_under_argmax": rule["val_argmax"]}
    if len(classes) == 2:
        summary["threshold"] = round(threshold_of(rule), 6)
    return summary


# --- metrics from confusion statistics, vectorised over candidate rules -------------------------
# A candidate's decisions enter only through tp (per class), col (predicted per class) and, for
# kappa, wsum = sum of quadratic weights over the confusion; row (true per class) is fixed.

def kappa_weights(k: int) -> np.ndarray:
    i = np.arange(k)
    return (i[:, None] - i[None, :]) ** 2 / max(k - 1, 1) ** 2


def metric_from_stats(name: str, tp: np.ndarray, col: np.ndarray, wsum: np.ndarray, row: np.ndarray) -> np.ndarray:
    n = row.sum()
    present = row > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "accuracy":
            return tp.sum(1) / n
        if name == "balanced_accuracy":
            return (tp[:, present] / row[present]).mean(1)
        if name == "macro_f1":  # scikit-learn's, zero_division=0, over every class
            denominator = row[None, :] + col
            return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 0).mean(1)
        if name == "youden":  # mean one-vs-rest sensitivity + specificity - 1 (binary: the usual J)
            both = present & (row < n)
            if not both.any():
                return np.full(len(tp), np.nan)
            recall = tp[:, both] / row[both]
            specificity = (n - row[both] - col[:, both] + tp[:, both]) / (n - row[both])
            return (recall + specificity - 1).mean(1)
        if name == "quadratic_kappa":
            expected = col @ (kappa_weights(len(row)).T @ row) / n
            return np.nan_to_num(1 - wsum / expected, nan=0.0, posinf=0.0, neginf=0.0)
    raise ValueError(f"unknown decision metric {name!r}; one of {', '.join(METRICS)}")


def metric_value(name: str, y_true: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """One metric of fixed decisions, by the same definitions the fitting maximises."""
    confusion = np.bincount(np.asarray(y_true) * num_classes + np.asarray(predicted),
                            minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    return float(metric_of_confusions(name, confusion[None])[0])


def metric_of_confusions(name: str, confusions: np.ndarray) -> np.ndarray:
    """Metric of a batch of (K, K) confusion matrices of the same images (one row total per class)."""
    row = confusions[0].sum(1).astype(np.float64)
    tp = np.diagonal(confusions, axis1=1, axis2=2).astype(np.float64)
    col = confusions.sum(1).astype(np.float64)
    wsum = (confusions * kappa_weights(len(row))).sum((1, 2))
    return metric_from_stats(name, tp, col, wsum, row)
