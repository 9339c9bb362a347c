"""The resize cache's shards: which images go together (content-defined, so membership is stable),
how a shard file is laid out, and one split presented as a single indexable memory-mapped sequence.

A split's images, sorted by path, are cut into shards where a hash of the path meets a condition
(content-defined chunking, as rsync and restic cut byte streams). Adding or removing images changes
only the shard(s) they fall into; every other shard keeps its exact bytes, so DVC stores, hashes and
uploads only those. A run of images longer than the size bound is cut again at a weaker hash
condition (still content-defined), and only as a last resort at fixed row counts.
Growing a run past the bound re-cuts that run, so a shard averages a quarter of the bound to keep
that rare (about 2% of runs).

Each shard is `{split}-{name}.npy` ((rows, H, W, 3) uint8, memory-mapped on reading) beside
`{split}-{name}.csv` (path, label, label_index of the same rows); `name` is a hash of the shard's
paths, so equal membership gives an equal name. A split's row order is the order of its paths."""

import hashlib
import mmap
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def path_hashes(paths: Sequence[str]) -> np.ndarray:
    """A uint64 per path (the first 8 bytes of its SHA-1): the same on every machine and run."""
    return np.array([int.from_bytes(hashlib.sha1(p.encode()).digest()[:8], "big") for p in paths], dtype=np.uint64)


def rows_per_shard(shard_mb: float, row_bytes: int) -> int:
    """The most rows a shard of at most `shard_mb` MiB holds (at least one)."""
    return max(1, int(shard_mb * (1 << 20)) // row_bytes)


def shard_ranges(paths: Sequence[str], max_rows: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges cutting `paths` (sorted) into shards of at most `max_rows` rows.

    A cut falls before every path whose hash is 0 modulo max_rows // 4: a shard holds a quarter of
    the bound on average, and inserting k images (k well below that) changes one shard, or two when
    a new image starts one. A run longer than the bound (e^-4, about 2% of runs) is cut again at hash
    0 modulo half that, and so on (all its pieces then change); below a modulus of 2, every
    `max_rows` rows."""
    hashes = path_hashes(paths)

    def cut(start: int, stop: int, modulus: int, always: bool = False) -> list[tuple[int, int]]:
        if stop - start <= max_rows and not always:
            return [(start, stop)]
        if modulus < 2:
            return [(a, min(a + max_rows, stop)) for a in range(start, stop, max_rows)]
        inner = (start + 1 + np.flatnonzero(hashes[start + 1:stop] % np.uint64(modulus) == 0)).tolist()
        edges = [start, *inner, stop]
        return [piece for a, b in zip(edges, edges[1:]) for piece in cut(a, b, modulus // 2)]

    if not len(paths):
        return []
    return cut(0, len(paths), max(2, max_rows // 4), always=True)


def shard_name(paths: Sequence[str]) -> str:
    """A name from the shard's member paths: same members, same name."""
    return hashlib.sha1("\n".join(paths).encode()).hexdigest()[:16]


def create_npy(path: Path, shape: tuple[int, ...]) -> int:
    """An .npy file of uint8 zeros (sparse, nothing written but the header); returns the data offset."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape})
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape)))
    return offset


def release(array: np.ndarray) -> None:
    """Drop a memory map's pages from this process (they stay in the page cache): reading a split
    through the map then never grows the process's resident memory beyond what one call touched."""
    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            handle.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # a closed map or a platform without it: only memory is at stake
            pass


class ShardedImages:
    """A split's shards as one read-only (N, H, W, 3) uint8 sequence: `x[i]`, `x[a:b]` and `x[rows]`
    (an index array) return arrays of just those rows, read through the shards' memory maps, whose
    pages are then released; nothing concatenates the split in memory."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, shards: list[np.ndarray], image_shape: tuple[int, ...]):
        self.shards = shards
        self.image_shape = tuple(image_shape)
        self.bounds = np.cumsum([0, *(len(s) for s in shards)])  # shard k holds rows bounds[k]:bounds[k+1]

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.bounds[-1]), *self.image_shape)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __array__(self, dtype=None, copy=None):
        return self[np.arange(len(self))].astype(dtype or self.dtype, copy=False)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            index = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= index < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} images")
            return self[np.array([index])][0]
        if isinstance(key, slice):
            return self[np.arange(*key.indices(len(self)))]
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64).ravel()
        if len(rows) and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} images")
        rows = np.where(rows < 0, rows + len(self), rows)
        out = np.empty((len(rows), *self.image_shape), dtype=np.uint8)
        shard_of = np.searchsorted(self.bounds, rows, side="right") - 1
        for k in np.unique(shard_of):
            mine = np.flatnonzero(shard_of == k)
            local = rows[mine] - self.bounds[k]
            if local[-1] - local[0] == len(local) - 1 and mine[-1] - mine[0] == len(mine) - 1 \
                    and np.all(np.diff(local) == 1):  # a run of rows (a batch in order): one plain copy
                out[mine[0]:mine[-1] + 1] = self.shards[k][local[0]:local[-1] + 1]
            else:
                out[mine] = self.shards[k][local]
            release(self.shards[k])
        return out
