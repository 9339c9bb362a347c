"""Which device a stage trains on: `auto` takes a CUDA GPU, else an Apple GPU (MPS), else the CPU;
a device asked for by name and not there is refused in one line. Driven by hand here: this machine
has neither kind of GPU."""

import os

import pytest
import torch

from tlpipe import distributed, runtime
from tlpipe.distributed import Ranks
from tlpipe.errors import TlpipeError


@pytest.mark.parametrize("cuda, mps, chosen", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, chosen):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert runtime.pick_device("auto").type == chosen
    assert runtime.pick_device("cpu").type == "cpu"


@pytest.mark.parametrize("setting", ["cuda", "mps"])
def test_a_missing_device_asked_for_by_name_is_one_line(monkeypatch, setting):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(TlpipeError, match=f"device: '{setting}' was asked for but .* use auto or cpu"):
        runtime.pick_device(setting)


def test_several_processes_on_an_apple_gpu_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(TlpipeError, match="set processes: 1 to train on the MPS device"):
        distributed.init("auto", Ranks(rank=0, world=2, local_rank=0))


def test_the_mps_setting_is_a_valid_param():
    from conftest import default_params
    from tlpipe.params import validate

    params = default_params()
    params["finetune"]["device"] = "mps"
    validate(params)


def test_several_processes_on_an_apple_gpu_are_refused_before_torchrun_starts(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(TlpipeError, match="set processes: 1 to train on the MPS device"):
        distributed.process_count(2, "auto")
    assert distributed.process_count("auto", "auto") == 1


def test_the_core_count_has_a_fallback_where_there_is_no_cpu_affinity(monkeypatch):
    from tlpipe import jobs

    monkeypatch.delattr(jobs.os, "sched_getaffinity", raising=False)
    monkeypatch.setenv(jobs.JOBS_ENV, "1")
    assert jobs.cores_for_this_job() == max(1, os.cpu_count())
    monkeypatch.setenv(jobs.JOBS_ENV, "²")
    with pytest.raises(TlpipeError, match="must be the number of jobs"):
        jobs.cores_for_this_job()
