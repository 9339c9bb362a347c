"""The resize stage: decode every image once into uint8 arrays, each split as shards of bounded
size (tlpipe.data.shards: which images go together; tlpipe.data.cache reads them).

Decoding runs in a pool of processes, one per core: the main process reads the raw bytes (an
archive is read once, in order) and hands them out in chunks; each worker decodes its chunk and
writes the pixels straight into the output file at the image's row with `pwrite`. Pixels never
travel back through a pipe, and no output page is mapped into any process, so resident memory
stays flat whatever the data set size (the page cache holds the written data, not the process).
The workers fork before the parent holds anything per image (`decode_pool`, opened by the stage
before it reads split.csv): a forked worker's resident memory includes every page it inherits.
"""

import io
import json
import multiprocessing
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from multiprocessing.pool import Pool
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from tlpipe.atomic import atomic_path
from tlpipe.errors import TlpipeError
from tlpipe.jobs import cores_for_this_job
from tlpipe.data.images import decode_or_reason
from tlpipe.data.raw import RawData
from tlpipe.data import SPLITS
from tlpipe.progress import progress
from tlpipe.data.shards import create_npy, rows_per_shard, shard_name, shard_ranges

CHUNK_IMAGES = 64       # images per task at most: amortises the hand-off (a 7 KB JPEG decodes in ~0.2 ms)
CHUNK_BYTES = 4 << 20   # ... and raw bytes per task at most, so large files make smaller tasks
WINDOW_CHUNKS = 4       # tasks in flight per worker: bounds the raw bytes held in memory


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _decode_chunk(task: tuple[int, str, str, list[tuple[int, str, bytes | Exception, str, int]]]):
    """Decode a chunk of images and write each to `file` at `offset`; return (row, path, error) each.
    Files are opened per chunk (a chunk's images mostly share a shard): a pool outlives one cache."""
    size, mode, contrast, jobs = task
    done, open_files = [], {}
    try:
        for row, path, content, file, offset in jobs:
            pixels, error = decode_or_reason(content, size, mode, contrast)
            if error is None:
                if file not in open_files:
                    open_files[file] = os.open(file, os.O_WRONLY)
                _pwrite_all(open_files[file], memoryview(np.ascontiguousarray(pixels)).cast("B"), offset)
            done.append((row, path, error))
    finally:
        for fd in open_files.values():
            os.close(fd)
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


def write_unreadable_list(out_dir: Path, unreadable: list[dict]) -> Path:
    """The full list of a refused run, beside the cache (not a DVC output: nothing looks complete)."""
    listing = out_dir.with_name(out_dir.name + ".unreadable.csv")
    with atomic_path(listing) as tmp:
        pd.DataFrame(sorted(unreadable, key=lambda u: u["path"]), columns=["path", "reason"]).to_csv(
            tmp, index=False, lineterminator="\n")
    return listing


def worker_count(requested: int) -> int:
    return requested or cores_for_this_job()


class Decoders(NamedTuple):
    pool: Pool
    count: int


@contextmanager
def decode_pool(workers: int = 0) -> Iterator[Decoders]:
    """The decoding processes (`workers`; 0: one per core), forked now: open them before reading the
    table of a large set, so the workers do not carry copies of its pages (build_cache(decoders=...))."""
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    count = worker_count(workers)
    with context.Pool(count) as pool:
        yield Decoders(pool, count)


def _shard_plan(table: pd.DataFrame, size: int, shard_mb: float) -> dict[str, list[np.ndarray]]:
    """Per split, the table rows of each shard, in path order (tlpipe.data.shards.shard_ranges)."""
    max_rows = rows_per_shard(shard_mb, size * size * 3)
    plan = {}
    for split in SPLITS:
        rows = np.flatnonzero(table["split"].to_numpy() == split)
        rows = rows[np.argsort(table["path"].to_numpy()[rows], kind="stable")]
        paths = table["path"].to_numpy()[rows].tolist()
        plan[split] = [rows[a:b] for a, b in shard_ranges(paths, max_rows)]
    return plan


def build_cache(table: pd.DataFrame, raw: RawData, out_dir: Path, size: int, mode: str,
                workers: int = 0, max_unreadable_fraction: float = 0.0, contrast: str = "none",
                shard_mb: float = 1024, decoders: Decoders | None = None) -> dict:
    """Write each split as shards `{split}-{name}.npy` (rows, size, size, 3) uint8 + `{split}-{name}.csv`,
    decoding in `decoders` (decode_pool; None: `workers` of them started here)."""
    with nullcontext(decoders) if decoders is not None else decode_pool(workers) as decoders:
        return _build_cache(table, raw, out_dir, size, mode, decoders, max_unreadable_fraction, contrast, shard_mb)


def _build_cache(table: pd.DataFrame, raw: RawData, out_dir: Path, size: int, mode: str, decoders: Decoders,
                 max_unreadable_fraction: float, contrast: str, shard_mb: float) -> dict:
    pool, n_workers = decoders
    classes = sorted(table["label"].unique())
    plan = _shard_plan(table, size, shard_mb)
    row_bytes = size * size * 3
    unreadable: list[dict] = []
    with atomic_path(out_dir, directory=True) as tmp:
        files = []                                       # per shard: its partial file
        target = np.empty((len(table), 2), dtype=np.int64)  # per table row: (shard, byte offset)
        for split, shards in plan.items():
            for rows in shards:
                files.append(str(tmp / f"{split}-{len(files):06d}.partial.npy"))
                offset = create_npy(Path(files[-1]), (len(rows), size, size, 3))
                target[rows] = np.stack([np.full(len(rows), len(files) - 1), offset + np.arange(len(rows)) * row_bytes], 1)
        ok = np.zeros(len(table), dtype=bool)
        row_of_path = {path: i for i, path in enumerate(table["path"])}
        window = threading.Semaphore(n_workers * WINDOW_CHUNKS)
        per_chunk = max(1, min(CHUNK_IMAGES, -(-len(table) // (n_workers * WINDOW_CHUNKS))))

        def jobs():
            for path, content in raw.iter_bytes(table["path"].tolist()):
                row = row_of_path[path]
                yield row, path, content, files[target[row, 0]], int(target[row, 1])

        with progress(total=len(table), desc="resize", unit="img") as bar:
            for done in pool.imap_unordered(_decode_chunk, _chunks(jobs(), window, per_chunk, size, mode, contrast)):
                window.release()
                for row, path, error in done:
                    if error is None:
                        ok[row] = True
                    else:
                        unreadable.append({"path": path, "reason": error})
                bar.update(len(done))
        fraction = len(unreadable) / max(len(table), 1)
        if fraction > max_unreadable_fraction:
            listing = write_unreadable_list(out_dir, unreadable)
            examples = "; ".join(f"{u['path']}: {u['reason']}" for u in sorted(unreadable, key=lambda u: u["path"])[:3])
            raise TlpipeError(
                f"resize: {len(unreadable)} of {len(table)} images ({fraction:.1%}) are unreadable, more "
                f"than resize.max_unreadable_fraction={max_unreadable_fraction}; all of them are listed in "
                f"{listing}. First: {examples}. Fix or remove those files, or raise the limit to skip them."
            )
        label_index = {c: i for i, c in enumerate(classes)}
        shard_counts = {}
        for split, shards in plan.items():
            for rows in shards:
                partial = Path(files[int(target[rows[0], 0])])
                _finish_shard(tmp, split, partial, int(target[rows[0], 1]), (size, size, 3), ok[rows],
                              table.iloc[rows], label_index)
            shard_counts[split] = len(list(tmp.glob(f"{split}-*.csv")))
        (tmp / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
        (tmp / "preprocess.json").write_text(json.dumps({"size": size, "mode": mode, "contrast": contrast}) + "\n")
    counts = {split: int(sum(ok[rows].sum() for rows in shards)) for split, shards in plan.items()}
    return {"size": size, "mode": mode, "contrast": contrast, "images": counts, "classes": len(classes),
            "shards": shard_counts, "unreadable_count": len(unreadable),
            "unreadable": sorted(unreadable, key=lambda u: u["path"])}


def _finish_shard(folder: Path, split: str, partial: Path, offset: int, image_shape: tuple[int, ...], ok: np.ndarray,
                  rows: pd.DataFrame, label_index: dict[str, int]) -> None:
    """Name the shard after its readable members and write their index. The rows of unreadable
    images are dropped by copying this shard alone (reads and writes, never mapped): at most one
    shard's size of extra disk, never a second copy of the split."""
    index = rows[ok][["path", "label"]].copy()
    if not len(index):
        partial.unlink()
        return
    final = folder / f"{split}-{shard_name(index['path'].tolist())}.npy"
    if ok.all():
        os.replace(partial, final)
    else:
        row_bytes = int(np.prod(image_shape))
        out_offset = create_npy(final, (len(index), *image_shape))
        with open(partial, "rb") as src, open(final, "r+b") as dst:
            dst.seek(out_offset)
            for row in np.flatnonzero(ok):
                src.seek(offset + int(row) * row_bytes)
                dst.write(src.read(row_bytes))
        partial.unlink()
    index["label_index"] = index["label"].map(label_index)
    index.to_csv(final.with_suffix(".csv"), index=False, lineterminator="\n")


MIN_AUTO_SIZE = 64  # 2x the 32-pixel stride of the usual backbones: the last feature map keeps 2x2 cells
# On a CPU an epoch at 128 px takes 0.4x the time of one at 224 px; on the chest X-ray set it scored
# as well, on brain MRI 1.6 points lower on validation (docs/recipes.md); set resize.size for more.
MAX_AUTO_SIZE = 128
SIZE_SAMPLE = 256   # images whose headers give the source size


def source_side(raw: RawData, paths: list[str], seed: int = 0) -> int | None:
    """The median longer side, in pixels, of a seeded sample of the source images (headers only)."""
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(paths, size=min(SIZE_SAMPLE, len(paths)), replace=False)) if paths else []
    sides = []
    for _, content in raw.iter_bytes(sample):
        try:
            sides.append(max(Image.open(io.BytesIO(content)).size))
        except Exception:  # noqa: BLE001 - unreadable files are reported by the resize itself
            continue
    return int(np.median(sides)) if sides else None


def auto_size(backbone_size: int, source: int | None, minimum: int = 1) -> int:
    """`resize.size: auto`: the backbone's input size up to MAX_AUTO_SIZE, but no larger than the
    source images hold (rounded up to a multiple of 32) and never below MIN_AUTO_SIZE: upsampling
    8-pixel digits to 224 adds no information and costs 12x the compute of 64 px. Never below what
    the backbone takes (`minimum`: Inception v3 75 px, a ViT its whole input size)."""
    largest = min(backbone_size, MAX_AUTO_SIZE)
    if source is None:
        return max(minimum, largest)
    return max(minimum, min(largest, max(MIN_AUTO_SIZE, -(-source // 32) * 32)))
