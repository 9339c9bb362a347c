"""finetune's resume checkpoint is data, not code, and is keyed by everything that shapes the model."""

import random
from pathlib import Path

import numpy as np
import torch

from conftest import default_params
from tlpipe import params
from tlpipe.train import resume
from tlpipe.train.finetune import FitResult
from tlpipe.train.resume import Checkpoints, input_key, random_states, restore_random_states


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_planted_checkpoint_runs_nothing_and_is_set_aside(tmp_path):
    planted = tmp_path / "finetune.pt"
    torch.save({"key": "k", "epoch": 0, "payload": RunsCode(tmp_path / "ran")}, planted)
    assert Checkpoints("k", planted).load() is None
    assert not (tmp_path / "ran").exists() and not planted.exists()


def test_a_saved_state_reads_back_with_weights_only_and_restores_the_random_streams(tmp_path):
    generator = torch.Generator().manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    result = FitResult({"w": torch.ones(3)}, best_epoch=1, history=[{"val_loss": np.float64(0.25), "step": 1}])
    path = tmp_path / "finetune.pt"
    Checkpoints("k", path).save({"epoch": 1, "random": random_states(generator), "result": result,
                                 "best": np.float32(0.25)})
    expected = (torch.rand(2, generator=generator), np.random.rand(2), random.random())
    loaded = Checkpoints("k", path).load()
    assert loaded is not None and loaded["epoch"] == 1 and loaded["best"] == 0.25
    restored = FitResult(**loaded["result"])
    assert restored.best_epoch == 1 and restored.history == [{"val_loss": 0.25, "step": 1}]
    assert torch.equal(restored.state_dict["w"], torch.ones(3))
    restore_random_states(generator, loaded["random"])
    assert torch.equal(torch.rand(2, generator=generator), expected[0])
    assert np.array_equal(np.random.rand(2), expected[1]) and random.random() == expected[2]


def test_the_key_changes_with_the_code(monkeypatch):
    p = params.validate(default_params())
    before = input_key(p.finetune, p, inputs=())
    original = Path.read_bytes

    def edited(self):
        data = original(self)
        return data + b"\n# edited\n" if self.as_posix().endswith("tlpipe/train/finetune.py") else data

    monkeypatch.setattr(Path, "read_bytes", edited)
    assert resume.code_hash() and input_key(p.finetune, p, inputs=()) != before
