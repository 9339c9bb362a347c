"""`tlpipe tune` checks its whole command before any work, and leaves nothing running behind it."""

import json
import os
import subprocess
import sys

import pytest

from conftest import default_params, run
from tlpipe.errors import TlpipeError
from tlpipe.experiments import queue, tune


@pytest.mark.parametrize("space, said", [
    (["finetune.epochs=two"], "--space finetune.epochs=two: params: 'finetune.epochs' must be int >= 0"),
    (["finetune.lr=0.001,"], "has an empty value"),
    (["finetune.lr=0.001", "finetune.lr=0.01"], "names finetune.lr twice"),
    (["finetune.nosuch=1"], "--space finetune.nosuch: params.yaml has no such key"),
    (["finetune.lr="], "is not KEY=VALUE"),
])
def test_a_bad_space_is_refused_before_anything_is_queued(space, said):
    with pytest.raises(TlpipeError, match=None) as info:
        tune.parse_space(space, default_params())
    assert said in str(info.value)


def test_space_values_are_read_as_params_yaml_reads_them():
    assert tune.parse_space(["finetune.lr=1e-3,auto", "finetune.epochs=2"], default_params()) == {
        "finetune.lr": [0.001, "auto"], "finetune.epochs": [2]}


def test_the_cli_refuses_a_folder_out_and_a_bad_value_before_queueing(dvc_project):
    (dvc_project / "results").mkdir()
    for args, said in ((["--out", "results"], "--out results is a folder"),
                       (["--space", "finetune.epochs=two"], "'finetune.epochs' must be int")):
        result = run(["tlpipe", "tune", *args], dvc_project, check=False)
        assert result.returncode == 2 and said in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert "tune-" not in run(["dvc", "queue", "status"], dvc_project).stdout


def _worker_record(project, n, pid, returncode=None):
    folder = project / ".dvc" / "tmp" / "exps" / "celery"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"dvc-exp-worker-{n}.json").write_text(json.dumps({"pid": pid, "returncode": returncode}))


QUEUED = ("Task     Name          Created    Status\n"
          "abc123   tune-x-1      10:00 AM   {}\n\n"
          "Worker status: 0 active, 0 idle\n")


def test_a_dead_worker_ends_the_wait_with_one_line(monkeypatch, tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _worker_record(tmp_path, 1, int(finished.stdout), returncode=None)  # killed: no return code written
    _worker_record(tmp_path, 2, os.getpid(), returncode=0)  # ended
    _worker_record(tmp_path, 3, os.getpid())  # a live pid that is not a queue worker (this test)
    monkeypatch.setattr(queue, "dvc", lambda args, cwd, verb: QUEUED.format("Queued"))
    monkeypatch.setattr(queue, "WORKER_START_S", 0)  # past the time workers take to show up
    monkeypatch.setattr(queue, "QUEUE_POLL_S", 0)
    with pytest.raises(TlpipeError, match="tune: DVC's queue has no worker left and 1 experiments waiting"):
        queue._wait(tmp_path, {"tune-x-1"}, timeout_s=60, verb="tune")


def test_workers_that_stopped_with_experiments_queued_are_started_again(monkeypatch, tmp_path):
    """DVC's workers stop themselves when their idle check times out on a busy machine, even with
    experiments still queued: the wait starts them again (and a restarted worker then finishes them)."""
    worker = None
    restarts = []

    def restart():
        nonlocal worker
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "queue-worker"])
        _worker_record(tmp_path, 1, worker.pid)
        restarts.append(True)

    _worker_record(tmp_path, 1, os.getpid(), returncode=0)  # the first worker stopped
    # queued with no worker, and still so when asked again; then the restarted worker runs it
    answers = iter([QUEUED.format("Queued"), QUEUED.format("Queued"), QUEUED.format("Running"),
                    QUEUED.format("Success")])
    monkeypatch.setattr(queue, "dvc", lambda args, cwd, verb: next(answers))
    monkeypatch.setattr(queue, "WORKER_START_S", 0)
    monkeypatch.setattr(queue, "QUEUE_POLL_S", 0)
    try:
        queue._wait(tmp_path, {"tune-x-1"}, timeout_s=60, verb="tune", restart=restart)
    finally:
        if worker is not None:
            worker.kill()
            worker.wait()
    assert restarts == [True] and next(answers, None) is None


def test_an_experiment_that_finished_as_its_worker_stopped_is_not_an_error(monkeypatch, tmp_path):
    """The status said Running, then the worker finished that last experiment and stopped before the
    workers were counted: the status is asked again and says it is done."""
    _worker_record(tmp_path, 1, os.getpid(), returncode=0)  # the worker stopped after its last experiment
    answers = iter([QUEUED.format("Running"), QUEUED.format("Success")])
    monkeypatch.setattr(queue, "dvc", lambda args, cwd, verb: next(answers))
    monkeypatch.setattr(queue, "WORKER_START_S", 0)
    monkeypatch.setattr(queue, "QUEUE_POLL_S", 0)
    queue._wait(tmp_path, {"tune-x-1"}, timeout_s=60, verb="tune", restart=lambda: pytest.fail("nothing to restart"))
    assert next(answers, None) is None


@pytest.mark.parametrize("status, restarts_allowed", [("Running", 0), ("Queued", 1)])
def test_a_lost_running_experiment_or_workers_that_keep_stopping_end_the_wait(monkeypatch, tmp_path, status,
                                                                              restarts_allowed):
    """A running experiment with no worker left is not run again behind the user's back, and workers
    are started again at most once per experiment."""
    _worker_record(tmp_path, 1, os.getpid(), returncode=0)
    restarts = []
    monkeypatch.setattr(queue, "dvc", lambda args, cwd, verb: QUEUED.format(status))
    monkeypatch.setattr(queue, "WORKER_START_S", 0)
    monkeypatch.setattr(queue, "QUEUE_POLL_S", 0)
    with pytest.raises(TlpipeError, match="tune: DVC's queue has no worker left and 1 experiments waiting"):
        queue._wait(tmp_path, {"tune-x-1"}, timeout_s=60, verb="tune", restart=lambda: restarts.append(True))
    assert len(restarts) == restarts_allowed


def test_a_busy_worker_that_misses_the_status_ping_is_waited_for(monkeypatch, tmp_path):
    """`dvc queue status` says "0 active, 0 idle" when a busy worker answers its ping late; the wait
    goes by the worker's process, and a status that fails now and then (DVC read a file it was
    writing) is asked again."""
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "queue-worker"])
    try:
        _worker_record(tmp_path, 1, worker.pid)
        answers = iter([TlpipeError("Expecting value"), QUEUED.format("Running"), TlpipeError("Expecting value"),
                        QUEUED.format("Running"), QUEUED.format("Success")])

        def status(args, cwd, verb):
            answer = next(answers)
            if isinstance(answer, Exception):
                raise answer
            return answer

        monkeypatch.setattr(queue, "dvc", status)
        monkeypatch.setattr(queue, "WORKER_START_S", 0)
        monkeypatch.setattr(queue, "QUEUE_POLL_S", 0)
        queue._wait(tmp_path, {"tune-x-1"}, timeout_s=60, verb="tune")
        assert next(answers, None) is None
    finally:
        worker.kill()
        worker.wait()


def test_a_status_that_keeps_failing_is_reported(monkeypatch, tmp_path):
    calls = []

    def status(args, cwd, verb):
        calls.append(args)
        raise TlpipeError("tune: `dvc queue status` failed: ERROR: unexpected error")

    monkeypatch.setattr(queue, "dvc", status)
    monkeypatch.setattr(queue, "QUEUE_POLL_S", 0)
    with pytest.raises(TlpipeError, match="dvc queue status` failed"):
        queue._wait(tmp_path, {"tune-x-1"}, timeout_s=60, verb="tune")
    assert len(calls) == queue.STATUS_TRIES


def test_ctrl_c_withdraws_the_queued_points(monkeypatch, tmp_path):
    calls = []

    def fake_run(args, cwd, verb):
        calls.append(args)
        if args[:3] == ["dvc", "queue", "status"]:
            raise KeyboardInterrupt
        return ""

    monkeypatch.setattr(queue, "dvc", fake_run)
    monkeypatch.setattr(queue.subprocess, "run",
                        lambda args, **kw: calls.append(args) or subprocess.CompletedProcess(args, 0))
    with pytest.raises(KeyboardInterrupt):
        tune.search({"finetune.lr": [0.001, 0.01]}, "val_loss", 1, tmp_path, log=lambda *_: None)
    queued = [a[a.index("-n") + 1] for a in calls if a[:4] == ["dvc", "exp", "run", "--queue"]]
    assert len(queued) == 2
    assert ["dvc", "queue", "kill", "--force", *queued] in calls and ["dvc", "queue", "remove", *queued] in calls
