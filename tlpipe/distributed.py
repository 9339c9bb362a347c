"""One stage on several processes: torchrun + DistributedDataParallel, on CPUs (gloo) or GPUs (nccl).

`python stages/finetune.py` (dvc.yaml's cmd) with `finetune.processes` above 1 runs itself again
under `torchrun --standalone` (`relaunch`); started by a torchrun the user launched (several
nodes: `torchrun --nnodes 2 ... stages/finetune.py`) it joins that group as it finds it. The
process count is a setting DVC does not track: 1 and N processes give the same outputs.

How work is dealt out, one rule for every stage: training takes every global batch of the one
epoch order (tlpipe.train.order) and gives rank r the rows r, r + N, ... of it; inference deals
whole batches round-robin and gathers the results back on every rank in order (`map_batches`), so
every rank computes the same validation figures and takes the same early-stop decisions. Rank 0
alone writes outputs, logs and shows progress.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tlpipe import gpu_slots
from tlpipe.errors import TlpipeError
from tlpipe.jobs import cores_for_this_job
from tlpipe.runtime import pick_device

TIMEOUT = timedelta(minutes=30)   # a collective waiting longer than this fails instead of hanging


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


SINGLE = Ranks()


def from_env() -> Ranks:
    """This process's place in the group torchrun started (SINGLE outside torchrun)."""
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    return Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


NO_DDP_ON_MPS = ("several processes train on CPUs (gloo) or CUDA GPUs (nccl), not on an Apple GPU: set "
                 "processes: 1 to train on the MPS device, or device: cpu.")


def process_count(setting: int | str, device_setting: str) -> int:
    """`processes: auto` is one per GPU this job may use, and one on a CPU. On a GPU box where nobody
    chose the GPUs (no CUDA_VISIBLE_DEVICES, not under the user's torchrun) they are claimed first,
    so that concurrent jobs never share one (tlpipe.gpu_slots)."""
    if device_setting == "cpu" or not torch.cuda.is_available():
        count = 1 if setting == "auto" else int(setting)
        if count > 1 and pick_device(device_setting).type == "mps":
            raise TlpipeError(NO_DDP_ON_MPS)
        return count
    if "WORLD_SIZE" not in os.environ and "CUDA_VISIBLE_DEVICES" not in os.environ:
        gpus = gpu_slots.claim(torch.cuda.device_count(), None if setting == "auto" else int(setting))
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpus)
        return len(gpus)
    return max(1, torch.cuda.device_count()) if setting == "auto" else int(setting)


def relaunch(stage: str, processes: int) -> None:
    """Outside torchrun, with several processes asked for: run this script under
    `torchrun --standalone --nproc_per_node N` and exit with it. A rank that dies makes torchrun
    stop the others; the stage then fails with this message and, as only rank 0 writes, and only
    at the end, through atomic renames, leaves the previous outputs in place."""
    if processes <= 1 or "WORLD_SIZE" in os.environ:
        return
    env = dict(os.environ)
    if not torch.cuda.is_available():  # CPU ranks share the cores instead of each taking them all
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores_for_this_job() // processes)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               sys.argv[0], *sys.argv[1:]]
    agent = subprocess.Popen(command, env=env)
    try:
        code = agent.wait()
    except BaseException:  # Ctrl-C or SIGTERM: torchrun passes it on to its ranks and waits for them
        agent.send_signal(signal.SIGTERM)
        agent.wait()
        raise
    if code:
        raise TlpipeError(f"{stage}: one of its {processes} processes failed (torchrun exit status {code}; the "
                          f"failing rank's error is above); no output was written and the previous ones are kept. "
                          f"Fix that error, or run it on one process with {stage}.processes: 1.")
    sys.exit(0)


def init(device_setting: str, ranks: Ranks) -> torch.device:
    """The device of this rank (GPU `local_rank` on a GPU node), with the process group joined."""
    device = pick_device(device_setting)
    if not ranks.distributed:
        if device.type == "cuda" and gpu_slots.claimed():  # the slot this job claimed (process_count)
            device = torch.device("cuda", gpu_slots.claimed()[0])
            torch.cuda.set_device(device)
        return device
    if device.type == "mps":
        raise TlpipeError(NO_DDP_ON_MPS)
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return device


def finish(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


def share(value, ranks: Ranks):
    """Rank 0's `value` (any picklable object) on every rank."""
    if not ranks.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    if ranks.distributed:
        dist.all_reduce(value)
    return value


def share_weights(model: nn.Module, ranks: Ranks) -> None:
    """Rank 0's parameters and buffers on every rank (each rank fitted its own probe head)."""
    if ranks.distributed:
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, src=0)


def map_batches(fn: Callable[[slice], object], parts: list[slice], ranks: Ranks) -> Iterator[tuple[slice, object]]:
    """(part, fn(part)) for every part in order, on every rank; under several processes each rank
    computes batches rank, rank + N, ... and receives the others' results (CPU objects)."""
    if not ranks.distributed:
        for part in parts:
            yield part, fn(part)
        return
    for start in range(0, len(parts), ranks.world):
        mine = start + ranks.rank
        local = fn(parts[mine]) if mine < len(parts) else None
        gathered = [None] * ranks.world
        dist.all_gather_object(gathered, local)
        for offset, result in enumerate(gathered):
            if start + offset < len(parts):
                yield parts[start + offset], result


class Replicas:
    """The model as a training step calls it: the model itself on one process; under several, a
    DistributedDataParallel wrapper, built again whenever the set of trainable parameters changes
    (DDP only averages the gradients of what was trainable when it was built: kept across an
    unfreeze, the replicas would silently drift apart). Frozen BatchNorm layers (bn_policy freeze)
    keep identical statistics on every rank; with bn_policy train every forward takes rank 0's
    running statistics (DDP's buffer broadcast; SyncBatchNorm is not used: it cannot run on CPUs)."""

    def __init__(self, model: nn.Module, ranks: Ranks, device: torch.device):
        self.model, self.ranks, self.device = model, ranks, device
        self._wrapped, self._trainable = None, None

    def __call__(self) -> nn.Module:
        if not self.ranks.distributed:
            return self.model
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if trainable != self._trainable:
            self._wrapped = None  # the old wrapper's gradient hooks go with it
            self._wrapped = DistributedDataParallel(   # buffers: rank 0's, at every forward (the default)
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self._trainable = trainable
        return self._wrapped
