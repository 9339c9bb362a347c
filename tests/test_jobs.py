"""Jobs that run at once share the cores: TLPIPE_JOBS divides them, tune and cv set it for DVC's
queue workers (tests/test_cv.py checks that the folds' finetune took their share)."""

import subprocess

import pytest
import torch

from tlpipe import jobs, runtime
from tlpipe.errors import TlpipeError
from tlpipe.experiments import queue


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(jobs.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize("setting, cores", [(None, 8), ("1", 8), ("2", 4), ("3", 2), ("16", 1)])
def test_the_cores_are_divided_among_the_jobs(eight_cores, monkeypatch, setting, cores):
    if setting is None:
        monkeypatch.delenv(jobs.JOBS_ENV, raising=False)
    else:
        monkeypatch.setenv(jobs.JOBS_ENV, setting)
    assert jobs.cores_for_this_job() == cores


@pytest.mark.parametrize("setting", ["0", "two", "-1"])
def test_a_bad_job_count_is_one_line_naming_the_variable(eight_cores, monkeypatch, setting):
    monkeypatch.setenv(jobs.JOBS_ENV, setting)
    with pytest.raises(TlpipeError, match="TLPIPE_JOBS"):
        jobs.cores_for_this_job()


def test_share_cpu_sets_torchs_threads_unless_omp_num_threads_is_set(eight_cores, monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(jobs.JOBS_ENV, "4")
        assert runtime.share_cpu() == 2 == torch.get_num_threads()
        torch.set_num_threads(3)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's (or torchrun's) choice wins
        assert runtime.share_cpu() == 3
    finally:
        torch.set_num_threads(before)


def test_the_queue_workers_are_started_with_the_job_count(monkeypatch, tmp_path):
    started = []

    def fake_run(args, **kwargs):
        started.append((args, kwargs["env"].get("TLPIPE_JOBS"), kwargs["stdout"]))
        return subprocess.CompletedProcess(args, 0)

    monkeypatch.setattr(queue, "dvc", lambda args, cwd, verb: "")
    monkeypatch.setattr(queue, "_wait", lambda *a, **kw: None)
    monkeypatch.setattr(queue.subprocess, "run", fake_run)
    queue.run_queued({"a": [], "b": []}, "finetune", 2, tmp_path, "tune", 10)
    [(args, jobs, stdout)] = started
    assert args == ["dvc", "queue", "start", "-j", "2"] and jobs == "2"
    assert stdout not in (subprocess.PIPE, None)  # a file: the background workers must not hold a pipe open
