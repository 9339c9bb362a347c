"""Prior shift at deployment: re-estimate the class prior of an unlabelled batch and adjust the
probabilities to it (EM of Saerens, Latinne & Decaestecker, Neural Computation 2002).

The model's probabilities assume the class mix it was trained and validated on (`source_prior`:
the mean predicted probability on the validation split, which also covers class-weighted training).
On a batch whose mix differs, EM alternates: adjust every image's probabilities by the ratio of
the current prior estimate to the source prior and renormalise; the new prior estimate is the mean
adjusted probability. No label is read.
"""

import numpy as np


def source_prior(val_probs: np.ndarray) -> np.ndarray:
    """The class prior the model's probabilities are calibrated to: their mean on validation."""
    prior = np.asarray(val_probs, dtype=np.float64).mean(0)
    return prior / prior.sum()


def adjust(probs: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Probabilities re-weighted from the `source` prior to the `target` prior (Bayes' rule)."""
    weighted = np.asarray(probs, dtype=np.float64) * (np.asarray(target) / np.maximum(source, 1e-12))
    return weighted / np.maximum(weighted.sum(1, keepdims=True), 1e-300)


def estimate_prior(probs: np.ndarray, source: np.ndarray, max_iter: int = 1000,
                   tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """EM estimate of the batch's class prior; returns (prior, adjusted probabilities)."""
    probs = np.asarray(probs, dtype=np.float64)
    prior = np.asarray(source, dtype=np.float64).copy()
    adjusted = probs
    for _ in range(max_iter):
        adjusted = adjust(probs, source, prior)
        new = adjusted.mean(0)
        if np.abs(new - prior).max() < tol:
            prior = new
            break
        prior = new
    return prior, adjust(probs, source, prior)


def prior_adjusted_figures(val_probs: np.ndarray, probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """What `evaluate.prior_shift: true` reports next to (never instead of) the plain figures: the
    estimated prior of the batch and the argmax figures on the adjusted probabilities."""
    from sklearn import metrics as skm

    source = source_prior(val_probs)
    prior, adjusted = estimate_prior(probs, source)
    predicted = adjusted.argmax(1)
    labels_all = list(range(len(classes)))
    return {"source_prior": dict(zip(classes, source.round(4).tolist())),
            "estimated_prior": dict(zip(classes, prior.round(4).tolist())),
            "accuracy": float(skm.accuracy_score(labels, predicted)),
            "balanced_accuracy": float(skm.balanced_accuracy_score(labels, predicted)),
            "macro_f1": float(skm.f1_score(labels, predicted, labels=labels_all, average="macro", zero_division=0)),
            "log_loss": float(skm.log_loss(labels, np.clip(adjusted, 1e-12, 1), labels=labels_all))}
