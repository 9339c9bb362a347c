"""The decision rule: from class probabilities to one class per image.

Chosen once, on validation, by the stage that trains the model (train-head for head.pt, finetune
for model.pt), stored in the model file, and applied by everything that decides (evaluate's
headline figures and confusion matrices, the report, predict)."""

import numpy as np
from sklearn import metrics as skm


def tune_threshold(y_val: np.ndarray, positive_score: np.ndarray) -> float:
    """The threshold that maximises Youden's J (sensitivity + specificity - 1) on validation."""
    if len(np.unique(y_val)) < 2:
        return 0.5
    fpr, tpr, thresholds = skm.roc_curve(y_val, positive_score)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def fit_threshold(y_val: np.ndarray, probs_val: np.ndarray) -> float | None:
    """The binary threshold on the second class's probability; None (argmax) for more classes."""
    return tune_threshold(y_val, probs_val[:, 1]) if probs_val.shape[1] == 2 else None


def decide(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class indices: argmax, or for a binary model whether the second class's probability reaches
    the threshold chosen on validation."""
    if threshold is not None and probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(1)
