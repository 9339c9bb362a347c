"""Devices, threads, memory allocator and batches: what every torch stage sets up the same way."""

import ctypes
import ctypes.util
import os
import random
from collections.abc import Iterator
from contextlib import nullcontext

import numpy as np
import torch

from tlpipe.errors import TlpipeError
from tlpipe.jobs import cores_for_this_job

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def share_cpu() -> int:
    """Set torch's compute threads to this job's share of the cores (an OMP_NUM_THREADS set by the
    user or by torchrun for its ranks wins); returns the thread count."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cores_for_this_job())
    return torch.get_num_threads()


def tune_malloc() -> None:
    """Keep freed activation buffers in the process instead of returning them to the OS.

    With glibc's defaults every large tensor is mmap'd and unmapped per batch, and re-faulting
    those pages costs as much as the convolutions at 224 px on a CPU. Trimming is off altogether
    (-1), not merely raised: a batch of 64 at 224 px frees more than 1 GiB at its end, so any
    finite threshold lets the heap shrink and grow again each batch in some runs (4,300 page
    faults per image, a third slower, depending on where small blocks happen to land).
    """
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return
    try:
        libc = ctypes.CDLL(libc_name)
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, -1)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(setting: str) -> torch.device:
    """`auto`: a CUDA GPU, else an Apple GPU (MPS), else the CPU; `cuda`, `mps` or `cpu` as asked,
    refused in one line when that device is not there."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise TlpipeError("device: 'cuda' was asked for but no CUDA GPU is visible; use auto or cpu.")
    if setting == "mps" and not mps_available():
        raise TlpipeError("device: 'mps' was asked for but PyTorch sees no Apple GPU (MPS); use auto or cpu.")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    return torch.device(setting)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on the GPU; full precision on the CPU (bf16 is slower on most CPUs)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def to_float_images(batch: np.ndarray, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1] on `device`."""
    # np.array copies out of the read-only memory map into memory torch may own; pinned, the copy
    # to a GPU is asynchronous, and the uint8 -> float conversion runs on the device.
    tensor = torch.from_numpy(np.array(batch))
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    tensor = tensor.to(device, non_blocking=True)
    tensor = tensor.permute(0, 3, 1, 2).float().div_(255)
    return tensor.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def training_batches(n: int, batch_size: int) -> Iterator[slice]:
    """`batches`, but a last batch of one image joins the one before: BatchNorm cannot train on a
    single image, and dropping it would leave that image out of the epoch."""
    parts = list(batches(n, batch_size))
    if len(parts) > 1 and parts[-1].stop - parts[-1].start == 1:
        parts[-2:] = [slice(parts[-2].start, parts[-1].stop)]
    yield from parts
