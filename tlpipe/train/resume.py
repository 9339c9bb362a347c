"""A resumable checkpoint of finetune, saved after every epoch, outside DVC's outputs.

A killed stage (Ctrl-C, `kill -9`, a preempted GPU node) reruns from the last finished epoch
instead of from scratch, and ends with the same model as an uninterrupted run: the checkpoint
holds the model, optimizer, scheduler, weight average, the augmentation and global random states
and the history, and the epoch order is a pure function of (seed, epoch) (tlpipe.train.order).

It is only used when nothing that changes the result changed: its key hashes the resolved
finetune settings (but the process count and device, which do not change the model), the backbone
and the decision metric, the library's code and the stage script, and the name, size and
modification time of every input file (DVC rewrites a changed input, so a new time means "maybe
changed": the run starts over, the safe way). The checkpoint is data, not code: tensors, numbers
and strings only, read back with `torch.load(weights_only=True)`, so a planted file runs nothing.
The file lives in .tlpipe/resume/ (ignored by Git and DVC) and is removed when the stage succeeds.
"""

import dataclasses
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch

from tlpipe.model.modelfile import save_checkpoint
from tlpipe.params import FinetuneParams, Params

RESUME_FILE = Path(".tlpipe/resume/finetune.pt")
NOT_IN_KEY = ("processes", "device")   # they change speed, not the model


def input_key(cfg: FinetuneParams, p: Params, inputs=("data/cache", "data/features")) -> str:
    """What the checkpoint must match: settings and input files (see the module's docstring)."""
    settings = {"finetune": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_KEY},
                "backbone": dataclasses.asdict(p.backbone),
                "decision_metric": p.evaluate.decision_metric}
    files = []
    for root in inputs:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file():
                stat = path.stat()
                files.append([path.as_posix(), stat.st_size, stat.st_mtime_ns])
    text = json.dumps({"settings": settings, "files": files, "code": code_hash()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def code_hash() -> str:
    """The library's and the stage script's source: a checkpoint made by other code is not resumed."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*package.rglob("*.py"), package.parent / "stages" / "finetune.py"]):
        if path.is_file():
            digest.update(path.relative_to(package.parent).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def random_states(generator: torch.Generator) -> dict:
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {"augment": generator.get_state(), "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
            "python": random.getstate()}


def restore_random_states(generator: torch.Generator, states: dict) -> None:
    generator.set_state(states["augment"])
    torch.set_rng_state(states["torch"])
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def plain(value):
    """`value` as what `torch.load(weights_only=True)` reads: numpy numbers and arrays become Python
    numbers and tensors, dataclasses dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return value


class Checkpoints:
    """save() after each epoch (rank 0), load() at the start, clear() once the stage has succeeded."""

    def __init__(self, key: str, path: Path = RESUME_FILE):
        self.key, self.path = key, Path(path)
        self._loaded: dict | None = None   # read once: a checkpoint can be hundreds of MB

    def save(self, state: dict) -> None:
        save_checkpoint(plain({"key": self.key, **state}), self.path)

    def load(self) -> dict | None:
        """The saved state when it matches this run's key, else None (a stale one is removed)."""
        if self._loaded is not None:
            return self._loaded
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a checkpoint that cannot be read, or holds code, is no reason to fail: start over
            state = None
        if not isinstance(state, dict) or state.get("key") != self.key:
            self.clear()
            return None
        self._loaded = state
        return state

    def resumable(self) -> bool:
        return self.load() is not None

    def clear(self) -> None:
        self._loaded = None
        self.path.unlink(missing_ok=True)
