"""Reading what the stages wrote for each other: the cache of the resize stage (per split, shards of
images (tlpipe.data.shards) presented as one memory-mapped (N, H, W, 3) uint8 sequence and an index
table (path, label, label_index) in the same row order; the class names; how the arrays were made:
size, mode, contrast), the features (memory-mapped), split.csv.

An output that is missing, empty or damaged (a failed copy, a disk error, a hand edit) is one
clear error naming the file and how to restore it, never a decoder's traceback."""

import contextlib
import csv
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


def load_split(cache_dir: str | os.PathLike, split: str,
               paths: bool = True) -> tuple[ShardedImages, np.ndarray, pd.DataFrame]:
    """(images (N, H, W, 3) uint8 read through the shards' memory maps, label indices (N,), index
    table) of one split, in path order; nothing but the index is read into memory, and with
    `paths=False` only its label_index column (a stage that needs no names holds 8 bytes per image)."""
    cache_dir = Path(cache_dir)
    size = load_preprocess(cache_dir)["size"]
    image_shape = (size, size, 3)
    shards, tables, csvs = [], [], sorted(cache_dir.glob(f"{split}-*.csv"))
    for shard_csv in csvs:
        table = (read_csv(shard_csv, dtype={"path": str, "label": str}) if paths
                 else read_csv(shard_csv, usecols=["label_index"], dtype={"label_index": np.int64}))
        with _reading(shard_csv):
            table["label_index"] = table["label_index"].astype(np.int64)
        images = read_array(shard_csv.with_suffix(".npy"), mmap=True)
        if images.shape[1:] != image_shape or len(images) != len(table):
            raise TlpipeError(f"{shard_csv.with_suffix('.npy')} holds {images.shape} images but {shard_csv.name} lists {len(table)} "
                              f"of {image_shape}: the cache is damaged. Run `dvc checkout data/cache` or "
                              "`dvc repro --force resize`.")
        shards.append(images)
        tables.append(table)
    # shards hold path ranges, and their file names do not sort by path: order them by first path
    order = sorted(range(len(tables)), key=lambda k: first_path(csvs[k]))
    index = (pd.concat([tables[k] for k in order], ignore_index=True) if tables
             else pd.DataFrame({"path": pd.Series(dtype=str), "label": pd.Series(dtype=str),
                                "label_index": pd.Series(dtype=np.int64)}))
    return ShardedImages([shards[k] for k in order], image_shape), index["label_index"].to_numpy(np.int64), index


def load_groups(paths: pd.Series, split_csv: str | os.PathLike = "data/split.csv") -> np.ndarray:
    """The group (patient, near-duplicate group) of each of `paths`, from split.csv; read in chunks,
    keeping only those rows, so the memory is that of `paths` (a validation split), not the data set's."""
    split_csv, wanted, found = Path(split_csv), set(paths), []
    with _reading(split_csv):
        for chunk in pd.read_csv(split_csv, usecols=["path", "group"], dtype=str, keep_default_na=False,
                                 chunksize=10_000):
            found.append(chunk[chunk["path"].isin(wanted)])
    group_of = pd.concat(found).set_index("path")["group"] if found else pd.Series(dtype=str)
    groups = paths.map(group_of)
    if groups.isna().any():
        missing = paths[groups.isna()].iloc[0]
        raise TlpipeError(f"{split_csv}: does not list '{missing}', which data/cache holds: the two come from "
                          "different runs. Run `dvc repro` (or `dvc checkout`) so they match.")
    return groups.to_numpy(dtype=object)


def first_path(shard_csv: Path) -> str:
    """The first path a shard's index lists, read without the rest of the file ('' when empty)."""
    with _reading(shard_csv), open(shard_csv, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header, row = next(reader, []), next(reader, None)
        return row[header.index("path")] if row else ""


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
