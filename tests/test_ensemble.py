"""Evaluate-time ensembling is chosen on validation: averaging pays when the members err apart,
and a useless member is left out."""

import numpy as np

from tlpipe.use.ensemble import candidates, choose


def noisy_probs(labels: np.ndarray, seed: int, strength: float) -> np.ndarray:
    """Probabilities that favour the true class by `strength` logits, with independent noise."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(labels), 3))
    logits[np.arange(len(labels)), labels] += strength
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def test_averaging_two_members_with_independent_errors_is_chosen():
    labels = np.arange(600) % 3
    probs = {"finetune": noisy_probs(labels, 0, 1.5), "head": noisy_probs(labels, 1, 1.5),
             "finetune+flip": (noisy_probs(labels, 0, 1.5) + noisy_probs(labels, 2, 1.5)) / 2}
    chosen, losses = choose(candidates(probs), labels, 3)
    assert chosen == "finetune+flip+head"
    assert losses[chosen] < losses["finetune"]


def test_a_useless_member_is_left_out():
    labels = np.arange(600) % 3
    useless = np.full((600, 3), 1e-3)
    useless[np.arange(600), (labels + 1) % 3] = 1  # confidently wrong
    useless /= useless.sum(1, keepdims=True)
    chosen, _ = choose(candidates({"finetune": noisy_probs(labels, 0, 3.0), "head": useless}), labels, 3)
    assert chosen == "finetune"
