"""The predictions table: one row per image with path, (label,) predicted class and prob_<class>.

evaluate writes it for val and test, `tlpipe predict` for new images, the report reads it; this
module alone knows its columns."""

import os

import numpy as np
import pandas as pd

from tlpipe.atomic import atomic_path
from tlpipe.data.cache import read_csv
from tlpipe.model.decision import decide

TEXT_COLUMNS = ("path", "label", "predicted")


def probability_columns(classes: list[str]) -> list[str]:
    return [f"prob_{name}" for name in classes]


def make_table(paths: list[str], probs: np.ndarray, classes: list[str], rule: dict | None,
               labels: list[str] | None = None) -> pd.DataFrame:
    """`predicted` is the decision under the model's rule (tlpipe.model.decision; None: argmax)."""
    table = pd.DataFrame({"path": list(paths)})
    if labels is not None:
        table["label"] = list(labels)
    table["predicted"] = [classes[i] for i in decide(probs, rule)]
    for column, values in zip(probability_columns(classes), np.asarray(probs).T):
        table[column] = values
    return table


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n", float_format="%.6f")


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Class names and paths stay text: a class called 'NA' or 'None' is not a missing value."""
    return read_csv(path, dtype={c: str for c in TEXT_COLUMNS})


def probabilities(table: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return table[probability_columns(classes)].to_numpy(np.float64)


def label_indices(table: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return table["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
