"""The extract-features stage: a frozen backbone over the cached images, per split, each batch's
features written to disk as it is produced (the process holds one batch, never the split). Under
several processes each rank computes its share of the batches and rank 0 writes them all, in order."""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlpipe.distributed import SINGLE, Ranks, map_batches
from tlpipe.progress import progress
from tlpipe.runtime import autocast, batches, to_float_images


def _write_header(f, shape: tuple[int, ...], dtype: np.dtype) -> None:
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})


@torch.inference_mode()
def extract_features(model: nn.Module, images, batch_size: int, device: torch.device,
                     flip_tta: bool = False, channels_last: bool = True, desc: str = "features",
                     out: str | Path | None = None, dtype=np.float32, ranks: Ranks = SINGLE) -> np.ndarray | None:
    """(N, H, W, 3) uint8 -> (N, F) float32 from `model` (normalisation included), eval mode; a model
    that returns feature maps gives (N, C, h, w).

    With `out`, the features go batch by batch into that .npy file as `dtype` (plain writes, never
    a mapping: the page cache holds them, not the process) and come back memory-mapped. Under
    several processes (`ranks`) the ranks but 0 compute their share and return None."""
    model.eval().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    def features_of(part: slice) -> np.ndarray:
        x = to_float_images(images[part], device, channels_last)
        with autocast(device):
            result = model(x)
            if flip_tta:  # a feature map of the mirror is mirrored back, so positions line up
                mirrored = model(x.flip(3))
                result = (result + (mirrored.flip(3) if mirrored.ndim == 4 else mirrored)) / 2
        return result.float().cpu().numpy()

    parts = list(batches(len(images), batch_size))
    results = map_batches(features_of, parts, ranks)
    if not ranks.is_main:
        for _ in results:
            pass
        return None
    chunks, f = [], open(out, "wb") if out is not None else None
    try:
        for part, values in progress(results, total=len(parts), desc=desc, unit="batch"):
            if f is None:
                chunks.append(values)
                continue
            values = np.ascontiguousarray(values, dtype=dtype)
            if part.start == 0:
                _write_header(f, (len(images), *values.shape[1:]), dtype)
            f.write(memoryview(values).cast("B"))
        if f is not None and not len(images):
            _write_header(f, (0, 0), dtype)
    finally:
        if f is not None:
            f.close()
    if out is not None:
        return np.load(out, mmap_mode="r")
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
