"""GPU slots: concurrent jobs on one GPU box (`dvc queue start -j N`) never share a GPU.

A stage about to run on CUDA, where nobody chose the GPUs (CUDA_VISIBLE_DEVICES unset, not under
a torchrun the user started), claims GPUs by locking one file per GPU in a folder every job on
the machine sees (`TLPIPE_GPU_SLOTS_DIR`, default /tmp/tlpipe-gpu-slots-UID), then sets
CUDA_VISIBLE_DEVICES to them for its torchrun ranks (one process trains on the first of them:
CUDA has already counted the devices in this process). The locks are
`flock`s: the kernel drops them when the process ends, however it ends (kill -9 included), so a
slot is never left taken. `processes: auto` takes every free GPU (at least one, waiting while
none is free); a number takes that many. For parallel sweeps set `finetune.processes: 1`: each
queued experiment then trains on a GPU of its own.
"""

import fcntl
import os
import tempfile
import time
from pathlib import Path

from tlpipe.errors import TlpipeError

WAIT_S = 2.0
_HELD: dict = {}   # GPU index -> its open lock file, for this process's life: closing it frees the GPU


def slots_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"tlpipe-gpu-slots-{os.getuid()}"
    return Path(os.environ.get("TLPIPE_GPU_SLOTS_DIR", default))


def claim(gpu_count: int, wanted: int | None, directory: Path | None = None, log=print) -> list[int]:
    """Indices of the GPUs this process now holds: `wanted` of them, or (None) every free one,
    at least one; waits while not enough are free."""
    if wanted is not None and wanted > gpu_count:
        raise TlpipeError(f"processes: {wanted} asked for, but this machine has {gpu_count} GPU(s); "
                          f"set it to auto or at most {gpu_count}.")
    directory = directory or slots_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for index in range(gpu_count):
            (directory / f"gpu{index}.lock").touch()
    except OSError as error:
        raise TlpipeError(f"GPU slots: cannot write the lock files in {directory} ({error.strerror}); set "
                          "TLPIPE_GPU_SLOTS_DIR to a folder every job on this machine can write, or "
                          "CUDA_VISIBLE_DEVICES to choose the GPUs yourself.") from None
    waited = False
    while True:
        held = []
        for index in range(gpu_count):
            if wanted is not None and len(held) == wanted:
                break
            lock = open(directory / f"gpu{index}.lock", "a")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append((index, lock))
            except BlockingIOError:
                lock.close()
        if held and (wanted is None or len(held) == wanted):
            _HELD.update(held)
            return [index for index, _ in held]
        for _, lock in held:  # not enough free: hold none while waiting, so two jobs never deadlock
            lock.close()
        if not waited:
            log(f"waiting for a free GPU: every one is held by another tlpipe job ({directory})")
            waited = True
        time.sleep(WAIT_S)


def claimed() -> list[int]:
    """The GPUs this process holds (physical indices), in order."""
    return sorted(_HELD)
