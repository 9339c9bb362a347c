"""95% intervals on test figures: they cover the true value at close to the stated rate."""

import numpy as np
import pytest

from tlpipe.use.metrics import intervals, wilson


def synthetic(rng, n: int, accuracy: float, groups: np.ndarray | None = None):
    """A two-class classifier right with probability `accuracy` (per group, when groups are given:
    the images of one patient are right or wrong together)."""
    y = rng.integers(0, 2, n)
    if groups is None:
        right = rng.random(n) < accuracy
    else:
        right = (rng.random(groups.max() + 1) < accuracy)[groups]
    predicted = np.where(right, y, 1 - y)
    probs = np.stack([1 - predicted * 0.8 - 0.1, predicted * 0.8 + 0.1], axis=1)
    return y, probs


@pytest.mark.parametrize("grouped", [False, True])
def test_the_accuracy_interval_covers_the_true_accuracy_about_95_times_in_100(grouped):
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(200):
        groups = np.repeat(np.arange(100), 3) if grouped else None  # 100 patients of 3 images
        y, probs = synthetic(rng, 300, 0.8, groups)
        low, high = intervals(y, probs, ["a", "b"], groups=groups, draws=200, seed=int(rng.integers(1e9)))["accuracy"]
        covered.append(low <= 0.8 <= high)
    assert 0.92 <= np.mean(covered) <= 0.98, np.mean(covered)


def test_grouped_images_give_a_wider_interval_than_the_same_count_of_independent_ones():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(60), 5)
    y, probs = synthetic(rng, 300, 0.8, groups)
    grouped = intervals(y, probs, ["a", "b"], groups=groups, draws=400)
    plain = intervals(y, probs, ["a", "b"], draws=400)
    assert grouped["resampled"].startswith("groups") and plain["method"]["accuracy"] == "Wilson"
    width = lambda r: r["accuracy"][1] - r["accuracy"][0]  # noqa: E731
    assert width(grouped) > 1.5 * width(plain)
    assert {"balanced_accuracy", "macro_f1", "roc_auc", "sensitivity", "specificity"} <= set(grouped)


def test_wilson_matches_the_textbook_figures():
    assert wilson(81, 100) == pytest.approx([0.7222, 0.8749], abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0 and wilson(0, 0) is None


def test_the_bootstrap_auc_is_scikit_learns():
    from sklearn.metrics import roc_auc_score

    from tlpipe.use.metrics import _draw_figures

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 200)
    templates = rng.dirichlet(np.ones(3), 6)
    probs = templates[(y * 2 + rng.integers(0, 2, 200)) % 6]  # few distinct rows: many ties
    assert _draw_figures(y, probs.argmax(1), probs, 3)["roc_auc"] == pytest.approx(
        roc_auc_score(y, probs, multi_class="ovr"), abs=1e-12)
