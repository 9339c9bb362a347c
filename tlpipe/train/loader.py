"""Training batches from the cache to the device, the next ones read while the current one trains.

A background thread gathers each batch's rows out of the shards' memory maps (rows sorted, so each
block of tlpipe.train.order is one sequential read) as uint8, in pinned memory on a CUDA machine;
the main thread moves them with `non_blocking=True` and converts to float on the device, where
augmentation, bf16 autocast and channels_last run. Bytes cross the bus as uint8 (a quarter of
float32). The GPU-side behaviour is a code path here: not measured on a GPU (none was lent).
"""

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from tlpipe.distributed import SINGLE, Ranks
from tlpipe.runtime import training_batches

PREFETCH = 2  # batches read ahead


def _read(images, labels: np.ndarray, rows: np.ndarray, pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's `rows` (sorted: rank_share) as uint8 images and labels, pinned on a CUDA machine."""
    x = torch.from_numpy(np.ascontiguousarray(images[rows]))
    y = torch.from_numpy(np.ascontiguousarray(labels[rows]))
    if pin:
        x, y = x.pin_memory(), y.pin_memory()
    return x, y


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1] on `device`, converted there."""
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def rank_share(order: np.ndarray, part: slice, ranks: Ranks) -> tuple[np.ndarray, np.ndarray]:
    """(positions, rows): this rank's share of one global batch, the batch's rows in disk order and
    rank r taking positions r, r + N, ... of them (all of them on one process)."""
    rows = np.sort(order[part])
    positions = np.arange(len(rows))[ranks.rank::ranks.world]
    return positions, rows[positions]


def device_batches(images, labels: np.ndarray, order: np.ndarray, batch_size: int, device: torch.device,
                   channels_last: bool = True, ranks: Ranks = SINGLE,
                   ) -> Iterator[tuple[np.ndarray, int, torch.Tensor, torch.Tensor]]:
    """(positions in the global batch, global batch size, float images on device, labels on device)
    for this rank's share of every global training batch of `order` (`batch_size` is the global batch)."""
    parts = list(training_batches(len(order), batch_size))  # slices: a few bytes per image
    pin = device.type == "cuda"

    def read(i: int):
        positions, rows = rank_share(order, parts[i], ranks)
        return positions, pool.submit(_read, images, labels, rows, pin)

    with ThreadPoolExecutor(1, thread_name_prefix="tlpipe-read") as pool:
        pending = deque(read(i) for i in range(min(PREFETCH, len(parts))))
        for i, part in enumerate(parts):
            positions, future = pending.popleft()
            x, y = future.result()
            if i + PREFETCH < len(parts):
                pending.append(read(i + PREFETCH))
            yield positions, part.stop - part.start, to_device(x, device, channels_last), y.to(device, non_blocking=True)
