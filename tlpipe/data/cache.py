"""Reading what the stages wrote for each other: the cache of the resize stage (per split, shards of
images (tlpipe.data.shards) presented as one memory-mapped (N, H, W, 3) uint8 sequence and an index
table (path, label, label_index) in the same row order; the class names; how the arrays were made:
size, mode, contrast), the features (memory-mapped), split.csv.

An output that is missing, empty or damaged (a failed copy, a disk error, a hand edit) is one
clear error naming the file and how to restore it, never a decoder's traceback."""

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from tlpipe.data.shards import ShardedImages
from tlpipe.errors import TlpipeError


@contextlib.contextmanager
def _reading(path: Path):
    try:
        yield
    except FileNotFoundError:
        raise TlpipeError(f"{path}: missing. It is made by an earlier stage: run `dvc repro` "
                          "(or `dvc pull` / `dvc checkout` to restore it).") from None
    except IsADirectoryError:
        raise TlpipeError(f"{path}: is a folder where the stage expects a file; remove it and run `dvc repro`.") from None
    except (ValueError, EOFError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, KeyError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TlpipeError(f"{path}: empty or damaged ({detail}). Restore it with `dvc checkout`, or run "
                          "`dvc repro --force` on the stage that makes it.") from None


def read_array(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    path = Path(path)
    with _reading(path):
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def read_json(path: str | os.PathLike):
    path = Path(path)
    with _reading(path):
        return json.loads(path.read_text())


def read_csv(path: str | os.PathLike, **kwargs) -> pd.DataFrame:
    """Text columns stay text: a class called 'NA' or 'None' is not a missing value."""
    path = Path(path)
    with _reading(path):
        return pd.read_csv(path, keep_default_na=False, **kwargs)


def load_split(cache_dir: str | os.PathLike, split: str) -> tuple[ShardedImages, np.ndarray, pd.DataFrame]:
    """(images (N, H, W, 3) uint8 read through the shards' memory maps, label indices (N,), index
    table) of one split, in path order; nothing but the index is read into memory."""
    cache_dir = Path(cache_dir)
    size = load_preprocess(cache_dir)["size"]
    image_shape = (size, size, 3)
    shards, tables = [], []
    for csv in sorted(cache_dir.glob(f"{split}-*.csv")):
        table = read_csv(csv, dtype={"path": str, "label": str})
        with _reading(csv):
            table["label_index"] = table["label_index"].astype(np.int64)
        images = read_array(csv.with_suffix(".npy"), mmap=True)
        if images.shape[1:] != image_shape or len(images) != len(table):
            raise TlpipeError(f"{csv.with_suffix('.npy')} holds {images.shape} images but {csv.name} lists {len(table)} "
                              f"of {image_shape}: the cache is damaged. Run `dvc checkout data/cache` or "
                              "`dvc repro --force resize`.")
        shards.append(images)
        tables.append(table)
    order = sorted(range(len(tables)), key=lambda k: tables[k]["path"].iloc[0])  # shards hold path ranges
    index = (pd.concat([tables[k] for k in order], ignore_index=True) if tables
             else pd.DataFrame({"path": pd.Series(dtype=str), "label": pd.Series(dtype=str),
                                "label_index": pd.Series(dtype=np.int64)}))
    return ShardedImages([shards[k] for k in order], image_shape), index["label_index"].to_numpy(np.int64), index


def load_classes(cache_dir: str | os.PathLike) -> list[str]:
    return read_json(Path(cache_dir) / "classes.json")


def load_preprocess(cache_dir: str | os.PathLike) -> dict:
    """How the cached arrays were made from the image files: {size, mode, contrast}."""
    return read_json(Path(cache_dir) / "preprocess.json")


def load_features(features_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, F) float32 memory-mapped, label indices (N,)) of one split, as extract-features
    wrote them. Take rows (a sample, a batch) out of the map; do not convert the whole of it."""
    features_dir = Path(features_dir)
    return read_array(features_dir / f"{split}.npy", mmap=True), read_array(features_dir / f"{split}_labels.npy")


def load_spatial_features(features_dir: str | os.PathLike, split: str) -> np.ndarray:
    """(N, C, g, g) float16: the backbone's last feature map on a g x g grid, for attention heads."""
    path = Path(features_dir) / f"{split}_spatial.npy"
    if not path.exists():
        raise TlpipeError(f"{path}: missing: an attention head pools the backbone's feature maps, which "
                          "extract-features stores only with features.spatial_grid > 0. Set features.spatial_grid: 4 "
                          "in params.yaml and run `dvc repro`.")
    return read_array(path, mmap=True)


def load_head_inputs(features_dir: str | os.PathLike, split: str, head_spec: dict) -> np.ndarray:
    """What a head of `head_spec` (as stored in head.pt) reads: feature maps for attention, else features."""
    if head_spec.get("pooling") == "attention":
        return load_spatial_features(features_dir, split)
    return load_features(features_dir, split)[0]
