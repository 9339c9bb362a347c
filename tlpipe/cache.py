"""The resize stage: decode every image once into uint8 arrays, one .npy file per split.

Decoding runs in a pool of processes; the main process reads the raw bytes and streams the
results into memory-mapped output files, so memory stays flat whatever the data set size.
"""

import json
import multiprocessing
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from tlpipe.atomic import atomic_path
from tlpipe.errors import TlpipeError
from tlpipe.images import decode
from tlpipe.raw import RawData
from tlpipe.split import SPLITS

COPY_ROWS = 256


def _decode_job(job: tuple[int, str, bytes | Exception, int, str]):
    row, path, content, size, mode = job
    if isinstance(content, Exception):
        return row, path, None, f"unreadable file: {content}"
    try:
        return row, path, decode(content, size, mode), None
    except Image.DecompressionBombError as error:
        return row, path, None, f"decompression bomb guard: {error}"
    except Exception as error:  # noqa: BLE001 - any decoder failure is a per-file report
        return row, path, None, f"{type(error).__name__}: {error}"


def _bounded(jobs: Iterator, window: threading.Semaphore) -> Iterator:
    # Pool.imap reads its input eagerly; the semaphore keeps only a window of raw bytes in memory.
    for job in jobs:
        window.acquire()
        yield job


def worker_count(requested: int) -> int:
    return requested or len(os.sched_getaffinity(0))


def build_cache(table: pd.DataFrame, raw: RawData, out_dir: Path, size: int, mode: str,
                workers: int = 0, max_unreadable_fraction: float = 0.0) -> dict:
    """Write `{split}.npy` (N, size, size, 3) uint8 and `{split}.csv` (row order) per split."""
    classes = sorted(table["label"].unique())
    positions = {split: np.flatnonzero(table["split"].to_numpy() == split) for split in SPLITS}
    split_of_row = table["split"].to_numpy()
    slot = np.empty(len(table), dtype=np.int64)
    for split, rows in positions.items():
        slot[rows] = np.arange(len(rows))
    unreadable: list[dict] = []
    with atomic_path(out_dir, directory=True) as tmp:
        arrays = {
            split: np.lib.format.open_memmap(tmp / f"{split}.partial.npy", mode="w+", dtype=np.uint8,
                                             shape=(len(rows), size, size, 3))
            for split, rows in positions.items()
        }
        ok = np.zeros(len(table), dtype=bool)
        row_of_path = {path: i for i, path in enumerate(table["path"])}
        window = threading.Semaphore(worker_count(workers) * 32)
        jobs = ((row_of_path[path], path, content, size, mode)
                for path, content in raw.iter_bytes(table["path"].tolist()))
        n_workers = worker_count(workers)
        with multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(n_workers) as pool:
            results = pool.imap_unordered(_decode_job, _bounded(jobs, window), chunksize=4)
            for row, path, pixels, error in tqdm(results, total=len(table), desc="resize", unit="img"):
                window.release()
                if error is None:
                    arrays[split_of_row[row]][slot[row]] = pixels
                    ok[row] = True
                else:
                    unreadable.append({"path": path, "reason": error})
        fraction = len(unreadable) / max(len(table), 1)
        if fraction > max_unreadable_fraction:
            examples = "; ".join(f"{u['path']}: {u['reason']}" for u in unreadable[:3])
            raise TlpipeError(
                f"resize: {len(unreadable)} of {len(table)} images ({fraction:.1%}) are unreadable, more "
                f"than resize.max_unreadable_fraction={max_unreadable_fraction}. First: {examples}. "
                "Fix or remove those files, or raise the limit to skip them."
            )
        for split, rows in positions.items():
            _finish_split(tmp, split, arrays.pop(split), ok[rows], table.iloc[rows], classes)
        (tmp / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
    counts = {split: int(ok[rows].sum()) for split, rows in positions.items()}
    return {"size": size, "mode": mode, "images": counts, "classes": len(classes),
            "unreadable_count": len(unreadable),
            "unreadable": sorted(unreadable, key=lambda u: u["path"])}


def _finish_split(folder: Path, split: str, array: np.memmap, ok: np.ndarray, rows: pd.DataFrame,
                  classes: list[str]) -> None:
    """Drop the rows of unreadable images (copying in chunks) and write the row order."""
    partial = folder / f"{split}.partial.npy"
    final = folder / f"{split}.npy"
    if ok.all():
        array.flush()
        del array
        os.replace(partial, final)
    else:
        kept = np.flatnonzero(ok)
        out = np.lib.format.open_memmap(final, mode="w+", dtype=np.uint8, shape=(len(kept), *array.shape[1:]))
        for start in range(0, len(kept), COPY_ROWS):
            chunk = kept[start:start + COPY_ROWS]
            out[start:start + len(chunk)] = array[chunk]
        out.flush()
        del out, array
        partial.unlink()
    index = rows[ok][["path", "label"]].copy()
    index["label_index"] = index["label"].map({c: i for i, c in enumerate(classes)})
    index.to_csv(folder / f"{split}.csv", index=False, lineterminator="\n")


def load_split(cache_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(images memory-mapped (N, H, W, 3) uint8, label indices (N,), index table) of one split."""
    cache_dir = Path(cache_dir)
    images = np.load(cache_dir / f"{split}.npy", mmap_mode="r")
    index = pd.read_csv(cache_dir / f"{split}.csv", dtype={"path": str, "label": str})
    return images, index["label_index"].to_numpy(np.int64), index


def load_classes(cache_dir: str | os.PathLike) -> list[str]:
    return json.loads((Path(cache_dir) / "classes.json").read_text())
