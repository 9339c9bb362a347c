"""GPU slots (tlpipe.gpu_slots): concurrent jobs on one machine never hold the same GPU, a job
waits while none is free, and a killed job's slot is free again at once. The locking is what runs
on a GPU box; here it is driven with a GPU count given by hand (this machine has no GPU)."""

import subprocess
import sys
import time

import pytest

from tlpipe import gpu_slots
from tlpipe.errors import TlpipeError

HOLDER = """
import sys, time
from pathlib import Path
from tlpipe import gpu_slots
print(gpu_slots.claim(int(sys.argv[1]), 1, Path(sys.argv[2]), log=lambda line: print(line, flush=True)), flush=True)
time.sleep(float(sys.argv[3]))
"""


def holder(directory, gpus: int, hold_s: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(gpus), str(directory), str(hold_s)],
                            stdout=subprocess.PIPE, text=True)


def first_line(proc: subprocess.Popen) -> str:
    return proc.stdout.readline().strip()


def test_two_jobs_get_different_gpus_and_a_third_waits_for_a_freed_one(tmp_path):
    first, second = holder(tmp_path, 2, 60), holder(tmp_path, 2, 60)
    try:
        first_gpu, second_gpu = first_line(first), first_line(second)
        assert {first_gpu, second_gpu} == {"[0]", "[1]"}
        third = holder(tmp_path, 2, 0)
        assert first_line(third).startswith("waiting for a free GPU")
        started = time.monotonic()
        first.kill()  # kill -9: the kernel drops its lock
        assert first_line(third) == first_gpu
        assert time.monotonic() - started < 30
        third.wait(timeout=30)
    finally:
        for proc in (first, second):
            proc.kill()


def test_a_count_above_the_machine_is_an_error_naming_the_setting(tmp_path):
    with pytest.raises(TlpipeError, match="processes: 5 asked for, but this machine has 3 GPU"):
        gpu_slots.claim(3, 5, tmp_path)
    assert gpu_slots.claimed() == []


def test_a_slots_folder_that_cannot_be_written_is_one_line_naming_it_and_the_fix(tmp_path):
    (tmp_path / "a-file").write_text("")
    directory = tmp_path / "a-file" / "slots"  # under a file: no folder can be made there
    with pytest.raises(TlpipeError, match=r"cannot write the lock files in .*a-file/slots.*TLPIPE_GPU_SLOTS_DIR"):
        gpu_slots.claim(2, None, directory)
    assert gpu_slots.claimed() == []
