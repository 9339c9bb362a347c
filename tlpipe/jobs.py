"""Jobs that run at once on one machine share its CPU cores.

Two training processes that each start a compute thread per core fight over the cores and run
slower together than one after the other. `TLPIPE_JOBS` says how many jobs run at once:
`tlpipe tune --jobs N` and `tlpipe cv --jobs N` set it for DVC's queue workers; set it yourself
beside `dvc queue start -j N`. Torch-free, so that the data stages can ask too.
"""

import os

from tlpipe.errors import TlpipeError

JOBS_ENV = "TLPIPE_JOBS"


def cores_for_this_job() -> int:
    """The cores this process may use (its CPU affinity) divided among the jobs running at once
    (TLPIPE_JOBS, default 1), at least one."""
    setting = os.environ.get(JOBS_ENV, "1").strip() or "1"
    if not setting.isdecimal() or int(setting) < 1:
        raise TlpipeError(f"{JOBS_ENV}={setting!r}: must be the number of jobs running at once, e.g. 2.")
    return max(1, usable_cores() // int(setting))


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the system has one (Linux), else all."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
