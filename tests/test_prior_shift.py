"""Prior-shift EM (Saerens et al. 2002): the class mix of an unlabelled batch is recovered and the
adjusted probabilities fit that batch better; an unshifted batch is left (nearly) as it is."""

import numpy as np
import pytest
from sklearn.metrics import log_loss

from tlpipe.use.prior_shift import estimate_prior, source_prior


def batch(n: int, prior_of_1: float, seed: int):
    """Two unit-variance Gaussians 2 apart; the probabilities are the true posteriors at prior 0.5."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prior_of_1).astype(int)
    x = rng.normal(size=n) + 2.0 * y - 1.0
    p1 = 1 / (1 + np.exp(-2.0 * x))
    return np.stack([1 - p1, p1], axis=1), y


@pytest.mark.parametrize("shifted", [0.1, 0.8])
def test_em_recovers_the_batch_prior_and_improves_its_log_loss(shifted):
    val_probs, _ = batch(4000, 0.5, 0)
    source = source_prior(val_probs)
    assert source == pytest.approx([0.5, 0.5], abs=0.03)
    probs, y = batch(4000, shifted, 1)
    prior, adjusted = estimate_prior(probs, source)
    assert prior[1] == pytest.approx(shifted, abs=0.03)
    assert log_loss(y, adjusted) < log_loss(y, probs) - 0.02
    assert np.allclose(adjusted.sum(1), 1)


def test_an_unshifted_batch_keeps_its_probabilities():
    val_probs, _ = batch(4000, 0.5, 0)
    probs, _ = batch(4000, 0.5, 2)
    prior, adjusted = estimate_prior(probs, source_prior(val_probs))
    assert prior == pytest.approx([0.5, 0.5], abs=0.03)
    assert np.abs(adjusted - probs).max() < 0.06
