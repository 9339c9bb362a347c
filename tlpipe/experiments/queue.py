"""Running a batch of DVC experiments: queue them by name, start DVC's queue workers, wait until
none of them is queued or running, and take them back out on Ctrl-C or an error, so that nothing
goes on running unseen. Shared by `tlpipe tune` and `tlpipe cv`."""

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tlpipe.errors import TlpipeError
from tlpipe.jobs import JOBS_ENV

QUEUE_POLL_S = 2
WORKER_START_S = 60  # how long freshly started workers may take to show up
STATUS_TRIES = 5  # `dvc queue status` can read a file DVC is writing at that moment and fail; it is asked again


def dvc(args: list[str], cwd: Path, verb: str) -> str:
    """Run a DVC (or Git) command; its error, shortened to one line, names the command."""
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        detail = " ".join((result.stderr or result.stdout).split())[-400:]
        raise TlpipeError(f"{verb}: `{' '.join(args)}` failed: {detail}")
    return result.stdout


def run_queued(experiments: dict[str, list[str]], target: str, jobs: int, cwd: Path, verb: str,
               timeout_s: float) -> None:
    """Queue each experiment (name -> its `-S key=value` args) as `dvc exp run --queue -n NAME ... TARGET`,
    run the queue with `jobs` workers and wait for all of them to finish (or fail)."""
    queued: list[str] = []
    try:
        for name, sets in experiments.items():
            dvc(["dvc", "exp", "run", "--queue", "-n", name, *sets, target], cwd, verb)
            queued.append(name)
        start_workers(jobs, cwd, verb)
        _wait(cwd, set(queued), timeout_s, verb, restart=lambda: start_workers(jobs, cwd, verb))
    except BaseException:  # Ctrl-C or an error
        withdraw(queued, cwd)
        raise


def start_workers(jobs: int, cwd: Path, verb: str) -> None:
    """`dvc queue start -j JOBS`, the workers (and the stages they run) told how many jobs share the
    cores (TLPIPE_JOBS). Its output goes to a file, not a pipe: the workers it leaves running in the
    background inherit it, and a pipe would stay open until the last of them stops."""
    with tempfile.TemporaryFile() as log:
        result = subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=cwd, stdout=log, stderr=log,
                                env={**os.environ, JOBS_ENV: str(jobs)})
        if result.returncode != 0:
            log.seek(0)
            detail = " ".join(log.read().decode(errors="replace").split())[-400:]
            raise TlpipeError(f"{verb}: `dvc queue start -j {jobs}` failed: {detail}")


def _wait(cwd: Path, names: set[str], timeout_s: float, verb: str,
          restart: Callable[[], None] | None = None) -> None:
    """Wait until none of `names` is queued or running. DVC's workers stop themselves when a check of
    their own (a celery inspect with a short timeout) finds them idle, and on a busy machine that check
    can time out while experiments are still queued: then `restart` starts them again, at most once per
    experiment. A running experiment whose worker is gone, or workers that keep stopping, end the wait
    with one line."""
    started = time.monotonic()
    deadline, seen_a_worker, restarts = started + timeout_s, False, 0
    while time.monotonic() < deadline:
        if not _waiting(cwd, names, verb):
            return
        workers = live_workers(cwd)
        seen_a_worker |= workers > 0
        # workers start in the background and take a few seconds to appear
        if workers == 0 and (seen_a_worker or time.monotonic() - started > WORKER_START_S):
            # asked again now that no worker is left: the status above may predate the last one
            # finishing its experiment and stopping
            waiting = _waiting(cwd, names, verb)
            if not waiting:
                return
            only_queued = all("Queued" in line for line in waiting)
            if restart is None or not only_queued or restarts >= len(names):
                raise TlpipeError(f"{verb}: DVC's queue has no worker left and {len(waiting)} experiments waiting "
                                  "(its worker stopped); `dvc queue logs NAME` shows why, `dvc queue start` "
                                  "runs them again.")
            print(f"{verb}: DVC's queue workers stopped with {len(waiting)} experiments queued; starting them again",
                  file=sys.stderr)
            restart()
            restarts += 1
            started, seen_a_worker = time.monotonic(), False
        time.sleep(QUEUE_POLL_S)
    raise TlpipeError(f"{verb}: the queue did not finish in {timeout_s:.0f} s; `dvc queue status` shows where it is "
                      "and `dvc exp show` what has finished.")


def _waiting(cwd: Path, names: set[str], verb: str) -> list[str]:
    """`dvc queue status`'s lines of those of `names` that are queued or running. A status that fails
    (DVC reading a file it is writing at that moment) is asked again, up to STATUS_TRIES times."""
    for attempt in range(1, STATUS_TRIES + 1):
        try:
            status = dvc(["dvc", "queue", "status"], cwd, verb)
            break
        except TlpipeError:
            if attempt == STATUS_TRIES:
                raise
            time.sleep(QUEUE_POLL_S)
    return [line for line in status.splitlines() if any(name in line for name in names)
            and ("Queued" in line or "Running" in line)]


def live_workers(cwd: Path) -> int:
    """How many of DVC's queue workers are running, from the record DVC keeps of each worker process
    (.dvc/tmp/exps/celery/dvc-exp-worker-N.json: its pid, and its return code once it has ended).
    Not from `dvc queue status`'s worker line: that asks the workers over the queue's file broker with a
    one-second timeout, and a worker on a busy machine often answers too late to be counted."""
    count = 0
    for record in (cwd / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.json"):
        try:  # DVC writes a record whole (a temporary file renamed into place): one that cannot be read is no worker
            info = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if info.get("returncode") is None and _running(info.get("pid")):
            count += 1
    return count


def _running(pid) -> bool:
    """Whether `pid` is a live DVC queue worker (not a process that took the pid of one that died)."""
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        pass
    try:
        return b"queue-worker" in Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except OSError:  # no /proc (macOS): the pid alone
        return True


def withdraw(names: list[str], cwd: Path) -> None:
    """Stop the running experiments and take the queued ones out of DVC's queue (finished ones stay)."""
    if not names:
        return
    subprocess.run(["dvc", "queue", "kill", "--force", *names], cwd=cwd, capture_output=True)
    subprocess.run(["dvc", "queue", "remove", *names], cwd=cwd, capture_output=True)


def stages_run(name: str, cwd: Path, stages: list[str]) -> list[str]:
    """The stages an experiment ran (the others came from DVC's run-cache or were unchanged), from
    its queue log: DVC prints "Running stage 'NAME'" for each stage it runs."""
    log = subprocess.run(["dvc", "queue", "logs", name], cwd=cwd, capture_output=True, text=True).stdout
    return [stage for stage in stages if f"Running stage '{stage}'" in log]
