"""Reading the cache the resize stage wrote: per split, images as a memory-mapped (N, H, W, 3) uint8
array and an index table (path, label, label_index) in the same row order; the class names; and
how the arrays were made from the files (size, mode, contrast)."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd


def load_split(cache_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(images memory-mapped (N, H, W, 3) uint8, label indices (N,), index table) of one split."""
    cache_dir = Path(cache_dir)
    images = np.load(cache_dir / f"{split}.npy", mmap_mode="r")
    index = pd.read_csv(cache_dir / f"{split}.csv", dtype={"path": str, "label": str}, keep_default_na=False)
    return images, index["label_index"].to_numpy(np.int64), index


def load_classes(cache_dir: str | os.PathLike) -> list[str]:
    return json.loads((Path(cache_dir) / "classes.json").read_text())


def load_preprocess(cache_dir: str | os.PathLike) -> dict:
    """How the cached arrays were made from the image files: {size, mode, contrast}."""
    return json.loads((Path(cache_dir) / "preprocess.json").read_text())
