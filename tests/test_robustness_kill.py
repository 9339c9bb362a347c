"""Stages killed part way leave nothing that looks complete, and the next run succeeds;
the same params and data give the same files and metrics."""

import hashlib
import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY_RUN, default_params, make_dvc_project, make_image_tree, run, set_params, split_cfg
from tlpipe.data.raw import RawData
from tlpipe.data.split import build_split, write_split_csv
from tlpipe.stage import INTERRUPTED

pytestmark = pytest.mark.robustness

# Runs a stage script with one library function slowed down, so that a kill lands part way.
SLOWED_STAGE = """
import importlib, runpy, sys, time
module, name, delay, script = sys.argv[1:5]
target = importlib.import_module(module)
original = getattr(target, name)

def slow(*args, **kwargs):
    time.sleep(float(delay))
    return original(*args, **kwargs)

setattr(target, name, slow)
sys.argv = [script]
runpy.run_path(script, run_name="__main__")
"""


def start(project: Path, script: str, slowed: tuple[str, str, float] | None = None) -> subprocess.Popen:
    (project / "slowed_stage.py").write_text(SLOWED_STAGE)
    command = [sys.executable, str(REPO / "stages" / script)]
    if slowed:
        command[1:1] = ["slowed_stage.py", slowed[0], slowed[1], str(slowed[2])]
    return subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
                            preexec_fn=_as_a_terminal_job)


def _as_a_terminal_job() -> None:
    # A job started in the background by a non-interactive shell (as CI may start the tests)
    # inherits SIGINT ignored, and a stage rightly honours that; a user at a terminal does not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return process.returncode, err


def wait_until(condition, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"stage ended or stalled before the kill:\n{process.communicate()[1][-2000:]}")
        time.sleep(0.02)


def kill(process: subprocess.Popen, how: str) -> None:
    assert process.poll() is None, "the stage finished before it could be killed"
    if how == "ctrl-c":  # the terminal signals the whole process group
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(getattr(signal, how))


def partials(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.partial"))


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def check_killed(process: subprocess.Popen, how: str) -> None:
    code, err = finish(process)
    if how == "SIGKILL":
        assert code == -signal.SIGKILL
    else:
        assert code == 130 and INTERRUPTED in err, err[-2000:]
        assert "Traceback" not in err, err[-2000:]


@pytest.fixture
def resize_project(tmp_path):
    params = default_params()
    params["resize"] |= {"size": 16, "workers": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    make_image_tree(tmp_path / "data" / "raw" / "set", {"a": 30, "b": 30})
    table, _ = build_split(RawData(tmp_path / "data" / "raw"), split_cfg())
    write_split_csv(table, tmp_path / "data" / "split.csv")
    return tmp_path


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT", "ctrl-c", "SIGTERM"])
def test_killed_resize_keeps_the_previous_cache_and_reruns_cleanly(resize_project, how):
    project, data = resize_project, resize_project / "data"
    assert finish(start(project, "resize.py"))[0] == 0
    before = snapshot(data / "cache") | {"resize.json": snapshot(project / "metrics")["resize.json"]}
    set_params(project, **{"resize.size": 24})
    process = start(project, "resize.py", slowed=("tlpipe.data.resize", "decode_or_reason", 0.05))
    wait_until(lambda: any(any(p.glob("train-*.partial.npy")) for p in partials(data)), process)
    time.sleep(0.3)
    kill(process, how)
    check_killed(process, how)
    assert snapshot(data / "cache") | {"resize.json": snapshot(project / "metrics")["resize.json"]} == before
    assert bool(partials(data)) == (how == "SIGKILL")  # only SIGKILL gives no chance to clean up
    code, err = finish(start(project, "resize.py"))
    assert code == 0, err
    assert partials(data) == []
    assert json.loads((project / "metrics" / "resize.json").read_text())["size"] == 24


@pytest.fixture
def torch_project(resize_project):
    set_params(resize_project, **{"backbone.weights": "none", "features.batch_size": 4, "features.device": "cpu",
                                  "finetune.device": "cpu", "finetune.batch_size": 8, "finetune.epochs": 30})
    assert finish(start(resize_project, "resize.py"))[0] == 0
    return resize_project


def test_killed_extract_features_leaves_no_features_and_reruns_cleanly(torch_project):
    data = torch_project / "data"
    process = start(torch_project, "extract_features.py", slowed=("tlpipe.train.features", "to_float_images", 0.1))
    wait_until(lambda: any((p / "train.npy").exists() for p in partials(data)), process, timeout=60)
    kill(process, "SIGKILL")
    check_killed(process, "SIGKILL")
    assert not (data / "features").exists()
    code, err = finish(start(torch_project, "extract_features.py"))
    assert code == 0, err
    assert partials(data) == []
    assert sorted(p.name for p in (data / "features").iterdir()) == [
        f"{split}{part}.npy" for split in ("test", "train", "val") for part in ("", "_labels")]


def test_interrupted_finetune_writes_no_model_and_reruns_cleanly(torch_project, monkeypatch):
    monkeypatch.chdir(torch_project)
    runpy.run_path(str(REPO / "stages" / "extract_features.py"))["main"]()
    process = start(torch_project, "finetune.py")
    wait_until(lambda: "epoch 0:" in (process.stdout.readline() or ""), process, timeout=60)
    kill(process, "SIGINT")
    check_killed(process, "SIGINT")
    assert not (torch_project / "models").exists() or list((torch_project / "models").iterdir()) == []
    assert not (torch_project / "metrics" / "finetune.json").exists()
    set_params(torch_project, **{"finetune.epochs": 1})
    code, err = finish(start(torch_project, "finetune.py"))
    assert code == 0, err
    assert (torch_project / "models" / "model.pt").exists() and partials(torch_project / "models") == []


def test_killed_stage_is_rerun_by_dvc_repro(tmp_path):
    make_image_tree(tmp_path / "images", {"a": 30, "b": 30})
    project = make_dvc_project(tmp_path / "project")
    set_params(project, **{"data.source": f"path:{tmp_path / 'images'}"}, **TINY_RUN)
    run(["dvc", "repro", "split"], project)
    process = start(project, "resize.py", slowed=("tlpipe.data.resize", "decode_or_reason", 0.05))
    wait_until(lambda: bool(partials(project / "data")), process)
    kill(process, "SIGKILL")
    check_killed(process, "SIGKILL")
    assert "Running stage 'resize'" in run(["dvc", "repro", "resize"], project).stdout
    assert partials(project / "data") == []
    assert "up to date" in run(["dvc", "status", "resize"], project).stdout


def metrics_rounded(project: Path) -> dict:
    def rounded(value):
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items() if not k.endswith("_per_s") and k != "wall_s"}  # timings are not results
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return value

    return {p.name: rounded(json.loads(p.read_text())) for p in sorted((project / "metrics").glob("*.json"))}


@pytest.mark.slow
def test_same_params_and_data_give_the_same_files_and_metrics(tiny_run_template, tmp_path):
    """A second project, run from nothing on the tiny run's images and params, against the tiny run."""
    one = tiny_run_template  # read, never changed
    two = make_dvc_project(tmp_path / "two")
    set_params(two, **{"data.source": f"path:{one.parent / 'images'}"}, **TINY_RUN)
    run(["dvc", "repro"], two)
    assert (one / "data" / "split.csv").read_bytes() == (two / "data" / "split.csv").read_bytes()
    assert snapshot(one / "data" / "cache") == snapshot(two / "data" / "cache")
    # byte for byte: DVC hashes the model files, and the same model must not look like a new one
    assert snapshot(one / "models") == snapshot(two / "models")
    assert metrics_rounded(one) == metrics_rounded(two)
    assert metrics_rounded(one)["evaluate.json"]
