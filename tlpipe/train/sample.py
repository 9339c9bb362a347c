"""A bounded, stratified sample of a split's rows: what the logistic-regression head and
finetune's starting probe are fitted on when a data set is large.

Why a sample and not an out-of-core fit: it keeps the exact multinomial L-BFGS fit that small
sets get (scikit-learn's SGDClassifier, the out-of-core alternative, is one-vs-rest for several
classes and needs a tuned learning rate), memory and time are bounded by the cap and not by the
data set, and a linear model on ~1,000 features has settled long before 50,000 images."""

import numpy as np


def bounded_sample(labels: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Sorted row indices: all rows when there are at most `max_rows` (0: no cap); otherwise about
    `max_rows` of them, every class in proportion and at least one of each."""
    n = len(labels)
    if not max_rows or n <= max_rows:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        take = min(len(rows), max(1, round(max_rows * len(rows) / n)))
        chosen.append(rng.choice(rows, size=take, replace=False))
    return np.sort(np.concatenate(chosen))


def take_rows(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The rows of an array or memory map, in memory (read in order: sequential on disk)."""
    return np.asarray(values[rows])  # fancy indexing copies out of the map
