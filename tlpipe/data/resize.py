"""The resize stage: decode every image once into uint8 arrays, one .npy file per split
(the layout tlpipe.data.cache reads).

Decoding runs in a pool of processes, one per core: the main process reads the raw bytes (an
archive is read once, in order) and hands them out in chunks; each worker decodes its chunk and
writes the pixels straight into the output file at the image's row with `pwrite`. Pixels never
travel back through a pipe, and no output page is mapped into any process, so resident memory
stays flat whatever the data set size (the page cache holds the written data, not the process).
"""

import json
import multiprocessing
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from tlpipe.atomic import atomic_path
from tlpipe.errors import TlpipeError
from tlpipe.data.images import decode_or_reason
from tlpipe.data.raw import RawData
from tlpipe.data import SPLITS

CHUNK_IMAGES = 64       # images per task at most: amortises the hand-off (a 7 KB JPEG decodes in ~0.2 ms)
CHUNK_BYTES = 4 << 20   # ... and raw bytes per task at most, so large files make smaller tasks
WINDOW_CHUNKS = 4       # tasks in flight per worker: bounds the raw bytes held in memory

_open_files: dict[str, int] = {}  # per worker process: output file -> descriptor


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _decode_chunk(task: tuple[int, str, str, list[tuple[int, str, bytes | Exception, str, int]]]):
    """Decode a chunk of images and write each to `file` at `offset`; return (row, path, error) each."""
    size, mode, contrast, jobs = task
    done = []
    for row, path, content, file, offset in jobs:
        pixels, error = decode_or_reason(content, size, mode, contrast)
        if error is None:
            fd = _open_files.get(file)
            if fd is None:
                fd = _open_files[file] = os.open(file, os.O_WRONLY)
            _pwrite_all(fd, memoryview(np.ascontiguousarray(pixels)).cast("B"), offset)
        done.append((row, path, error))
    return done


def _chunks(jobs: Iterator, window: threading.Semaphore, images: int, size: int, mode: str,
            contrast: str) -> Iterator:
    # Pool.imap reads its input eagerly; the semaphore keeps only a window of raw bytes in memory.
    chunk, chunk_bytes = [], 0
    for job in jobs:
        chunk.append(job)
        chunk_bytes += len(job[2]) if isinstance(job[2], bytes) else 0
        if len(chunk) >= images or chunk_bytes >= CHUNK_BYTES:
            window.acquire()
            yield size, mode, contrast, chunk
            chunk, chunk_bytes = [], 0
    if chunk:
        window.acquire()
        yield size, mode, contrast, chunk


def _create_npy(path: Path, shape: tuple[int, ...]) -> int:
    """An .npy file of uint8 zeros (sparse, nothing written but the header); returns the data offset."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape})
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape)))
    return offset


def write_unreadable_list(out_dir: Path, unreadable: list[dict]) -> Path:
    """The full list of a refused run, beside the cache (not a DVC output: nothing looks complete)."""
    listing = out_dir.with_name(out_dir.name + ".unreadable.csv")
    with atomic_path(listing) as tmp:
        pd.DataFrame(sorted(unreadable, key=lambda u: u["path"]), columns=["path", "reason"]).to_csv(
            tmp, index=False, lineterminator="\n")
    return listing


def worker_count(requested: int) -> int:
    return requested or len(os.sched_getaffinity(0))


def build_cache(table: pd.DataFrame, raw: RawData, out_dir: Path, size: int, mode: str,
                workers: int = 0, max_unreadable_fraction: float = 0.0, contrast: str = "none") -> dict:
    """Write `{split}.npy` (N, size, size, 3) uint8 and `{split}.csv` (row order) per split."""
    classes = sorted(table["label"].unique())
    positions = {split: np.flatnonzero(table["split"].to_numpy() == split) for split in SPLITS}
    split_of_row = table["split"].to_numpy()
    slot = np.empty(len(table), dtype=np.int64)
    for split, rows in positions.items():
        slot[rows] = np.arange(len(rows))
    unreadable: list[dict] = []
    with atomic_path(out_dir, directory=True) as tmp:
        row_bytes = size * size * 3
        files = {split: str(tmp / f"{split}.partial.npy") for split in positions}
        data_offset = {split: _create_npy(Path(files[split]), (len(rows), size, size, 3))
                       for split, rows in positions.items()}
        ok = np.zeros(len(table), dtype=bool)
        row_of_path = {path: i for i, path in enumerate(table["path"])}
        n_workers = worker_count(workers)
        window = threading.Semaphore(n_workers * WINDOW_CHUNKS)
        per_chunk = max(1, min(CHUNK_IMAGES, -(-len(table) // (n_workers * WINDOW_CHUNKS))))

        def jobs():
            for path, content in raw.iter_bytes(table["path"].tolist()):
                row = row_of_path[path]
                split = split_of_row[row]
                yield row, path, content, files[split], data_offset[split] + int(slot[row]) * row_bytes

        with (multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(n_workers) as pool,
              tqdm(total=len(table), desc="resize", unit="img") as progress):
            for done in pool.imap_unordered(_decode_chunk, _chunks(jobs(), window, per_chunk, size, mode, contrast)):
                window.release()
                for row, path, error in done:
                    if error is None:
                        ok[row] = True
                    else:
                        unreadable.append({"path": path, "reason": error})
                progress.update(len(done))
        fraction = len(unreadable) / max(len(table), 1)
        if fraction > max_unreadable_fraction:
            listing = write_unreadable_list(out_dir, unreadable)
            examples = "; ".join(f"{u['path']}: {u['reason']}" for u in sorted(unreadable, key=lambda u: u["path"])[:3])
            raise TlpipeError(
                f"resize: {len(unreadable)} of {len(table)} images ({fraction:.1%}) are unreadable, more "
                f"than resize.max_unreadable_fraction={max_unreadable_fraction}; all of them are listed in "
                f"{listing}. First: {examples}. Fix or remove those files, or raise the limit to skip them."
            )
        for split, rows in positions.items():
            _finish_split(tmp, split, data_offset[split], (size, size, 3), ok[rows], table.iloc[rows], classes)
        (tmp / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
        (tmp / "preprocess.json").write_text(json.dumps({"size": size, "mode": mode, "contrast": contrast}) + "\n")
    counts = {split: int(ok[rows].sum()) for split, rows in positions.items()}
    return {"size": size, "mode": mode, "contrast": contrast, "images": counts, "classes": len(classes),
            "unreadable_count": len(unreadable),
            "unreadable": sorted(unreadable, key=lambda u: u["path"])}


def _finish_split(folder: Path, split: str, offset: int, image_shape: tuple[int, ...], ok: np.ndarray,
                  rows: pd.DataFrame, classes: list[str]) -> None:
    """Drop the rows of unreadable images (copied with reads and writes, never mapped) and write
    the row order."""
    partial = folder / f"{split}.partial.npy"
    final = folder / f"{split}.npy"
    if ok.all():
        os.replace(partial, final)
    else:
        kept = np.flatnonzero(ok)
        row_bytes = int(np.prod(image_shape))
        out_offset = _create_npy(final, (len(kept), *image_shape))
        with open(partial, "rb") as src, open(final, "r+b") as dst:
            dst.seek(out_offset)
            for row in kept:
                src.seek(offset + int(row) * row_bytes)
                dst.write(src.read(row_bytes))
        partial.unlink()
    index = rows[ok][["path", "label"]].copy()
    index["label_index"] = index["label"].map({c: i for i, c in enumerate(classes)})
    index.to_csv(folder / f"{split}.csv", index=False, lineterminator="\n")
