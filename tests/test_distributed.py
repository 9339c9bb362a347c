"""finetune and extract-features on several processes (torchrun, DDP over gloo on the CPU): one and
two processes train the same model, every rank holds the same weights, uneven data and early
stopping behave, two localhost "nodes" agree with one process, and a dying rank fails the stage
without leaving an output that looks complete."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import learnable_tree, run, set_params

# one worker runs them all (pyproject: --dist loadgroup), so the tiny project is built once
pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.xdist_group("distributed")]
TIMEOUT = 240   # seconds for any one multi-process run: a hang fails the test instead of CI
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def stage(project: Path, command: list[str], check: bool = True, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, **THREADS}
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=TIMEOUT, **popen)
    if check and result.returncode:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def weights(project: Path) -> dict[str, torch.Tensor]:
    return torch.load(project / "models" / "model.pt", weights_only=False)["state_dict"]


def finetune_metrics(project: Path) -> dict:
    return json.loads((project / "metrics" / "finetune.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    """A tiny three-class project up to extract-features; 61 training images, so batches of 8 end
    uneven (a last global batch of 5: ranks of 3 and 2 images)."""
    from conftest import make_dvc_project

    root = tmp_path_factory.mktemp("ddp")
    project = make_dvc_project(root / "project")
    learnable_tree(root / "images")
    set_params(project, **{"data.source": f"path:{root / 'images'}", "resize.size": 32,
                           "finetune.epochs": 2, "finetune.batch_size": 8, "finetune.lr": 0.001,
                           "finetune.patience": 0, "features.batch_size": 16, "split.val_fraction": 0.2,
                           "split.test_fraction": 0.1})
    run(["dvc", "repro", "extract-features"], project)
    return project


def train(project: Path, processes: int | None = None, command: list[str] | None = None) -> tuple[dict, dict]:
    if processes is not None:
        set_params(project, **{"finetune.processes": processes})
    stage(project, command or [sys.executable, "stages/finetune.py"])
    return weights(project), finetune_metrics(project)


def assert_same_training(one: tuple[dict, dict], other: tuple[dict, dict]) -> None:
    (w1, m1), (w2, m2) = one, other
    for name in ("val_accuracy", "val_balanced_accuracy", "val_quadratic_kappa", "best_epoch", "epochs_run"):
        assert m1[name] == m2[name], (name, m1[name], m2[name])
    assert abs(m1["val_loss"] - m2["val_loss"]) <= 1e-3, (m1["val_loss"], m2["val_loss"])
    assert w1.keys() == w2.keys()
    worst = max((w1[k].double() - w2[k].double()).abs().max().item() for k in w1 if w1[k].is_floating_point())
    assert worst <= 1e-3, worst


def test_one_process_two_processes_and_two_nodes_train_the_same_model(project):
    # every block trains from the first epoch, so whichever epoch is kept, it is a trained network
    # (the DDP wrapper rebuilt at an unfreeze: the checksum test below)
    set_params(project, **{"finetune.strategy": "all", "finetune.freeze_epochs": 0})
    single = train(project, processes=1)
    assert single[1]["epochs_run"] == 2
    assert_same_training(single, train(project, processes=2))  # the setting: finetune relaunches under torchrun
    set_params(project, **{"finetune.processes": "auto"})  # auto on a CPU is one process; torchrun sets two
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "stages/finetune.py"]
    assert_same_training(single, train(project, command=torchrun))
    port = free_port()  # two torchrun agents, as on two machines: node 0 is the rendezvous host
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
                                "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
                                "stages/finetune.py"], cwd=project, env={**os.environ, **THREADS},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for node in (0, 1)]
    for agent in agents:
        out, _ = agent.communicate(timeout=TIMEOUT)
        assert agent.returncode == 0, out[-4000:]
    assert_same_training(single, (weights(project), finetune_metrics(project)))
    set_params(project, **{"finetune.freeze_epochs": 1})


def test_every_rank_holds_the_same_parameters_and_early_stop_agrees(project, tmp_path):
    """The library under torchrun: after fit (a frozen epoch, then every block: the DDP wrapper is
    rebuilt), an all-gathered checksum of the parameters is the same on both ranks; with patience 1
    and a learning rate that overshoots, both stop at the same epoch."""
    script = tmp_path / "ranks.py"
    script.write_text(f"""
import json, os, sys, torch
sys.path.insert(0, {str(Path(__file__).parents[1])!r})
from tlpipe import params
from tlpipe.distributed import from_env, init
from tlpipe.train.finetune import fit
from tlpipe.train.session import prepare
os.chdir({str(project)!r})
from dataclasses import replace
p = params.load()
p = replace(p, finetune=replace(p.finetune, strategy="all", epochs=6, patience=1, lr=0.3,
                                early_stop_metric="val_accuracy"))
ranks = from_env()
device = init("cpu", ranks)
torch.manual_seed(0)
session = prepare(p, device, log=lambda line: None, ranks=ranks)
result = fit(session.model, session.train, session.val, session.cfg, len(session.classes), device,
             log=lambda line: None, ranks=ranks)
checksum = float(sum(p.detach().double().sum().item() for p in session.model.parameters()))
# one file per rank: two ranks printing to one pipe can interleave their lines
row = {{"rank": ranks.rank, "checksum": checksum, "best": result.best_epoch, "run": len(result.history)}}
open(os.path.join({str(tmp_path)!r}, f"rank{{ranks.rank}}.json"), "w").write(json.dumps(row))
""")
    stage(project, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)])
    rows = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert sorted(r["rank"] for r in rows) == [0, 1]
    assert rows[0]["checksum"] == rows[1]["checksum"]
    assert rows[0]["run"] == rows[1]["run"] and rows[0]["best"] == rows[1]["best"]
    assert rows[0]["run"] < 6  # it did stop early


def test_extract_features_on_two_processes_gives_the_same_rows(project):
    features = project / "data" / "features"
    stage(project, [sys.executable, "stages/extract_features.py"])  # one process, on the threads the ranks get
    before = {split: (np.load(features / f"{split}.npy"), np.load(features / f"{split}_labels.npy"))
              for split in ("train", "val", "test")}
    set_params(project, **{"features.processes": 2})
    try:
        stage(project, [sys.executable, "stages/extract_features.py"])
    finally:
        set_params(project, **{"features.processes": "auto"})
    for split, (values, labels) in before.items():
        after = np.load(features / f"{split}.npy")
        assert after.shape == values.shape and np.abs(after - values).max() <= 1e-5, split
        assert (np.load(features / f"{split}_labels.npy") == labels).all()


def test_evaluate_on_two_processes_gives_the_same_metrics(project):
    run(["dvc", "repro", "evaluate"], project)
    stage(project, [sys.executable, "stages/evaluate.py"])  # one process, on the threads the ranks get
    one = json.loads((project / "metrics" / "evaluate.json").read_text())
    set_params(project, **{"evaluate.processes": 2})
    try:
        stage(project, [sys.executable, "stages/evaluate.py"])
    finally:
        set_params(project, **{"evaluate.processes": "auto"})
    two = json.loads((project / "metrics" / "evaluate.json").read_text())
    one.pop("wall_s"), two.pop("wall_s")
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


def _rank_pid(parent: int, rank: str) -> int | None:
    """The process under `parent` whose environment says RANK=`rank` (a torchrun worker)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and f"TLPIPE_TEST_PARENT={parent}".encode() in environ \
                and "python" in status.splitlines()[0]:
            return int(proc.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_rank_that_dies_fails_the_stage_and_keeps_the_previous_model(project):
    set_params(project, **{"finetune.processes": 1, "finetune.epochs": 2})
    stage(project, [sys.executable, "stages/finetune.py"])
    model = project / "models" / "model.pt"
    before = model.read_bytes()
    set_params(project, **{"finetune.processes": 2, "finetune.epochs": 200})
    marker = str(os.getpid())
    proc = subprocess.Popen([sys.executable, "stages/finetune.py"], cwd=project,
                            env={**os.environ, **THREADS, "TLPIPE_TEST_PARENT": marker},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, victim = time.monotonic() + TIMEOUT, None
        live = project / "live" / "finetune" / "metrics.json"
        while time.monotonic() < deadline and proc.poll() is None:
            victim = _rank_pid(int(marker), "1")
            if victim and live.exists() and json.loads(live.read_text()).get("step", 0) >= 1:
                break
            time.sleep(0.5)
        assert victim is not None and proc.poll() is None, "rank 1 never started"
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "one of its 2 processes failed" in err and "previous ones are kept" in err, err[-3000:]
    assert model.read_bytes() == before
    assert not [p for p in model.parent.iterdir() if p.name != "model.pt" and p.name.startswith("model")], \
        list(model.parent.iterdir())
    set_params(project, **{"finetune.processes": "auto", "finetune.epochs": 2})


def test_a_killed_finetune_resumes_after_its_last_epoch_and_ends_with_the_same_model(project):
    """tlpipe.train.resume: kill -9 after epoch 1, rerun: it goes on from the saved epoch, and the
    model and figures are those of a run that was never interrupted."""
    set_params(project, **{"finetune.strategy": "all", "finetune.processes": 1, "finetune.epochs": 8})
    checkpoint = project / ".tlpipe" / "resume" / "finetune.pt"
    reference = train(project)
    assert not checkpoint.exists()  # removed once the stage succeeded
    live = project / "live" / "finetune" / "metrics.json"
    live.unlink()
    proc = subprocess.Popen([sys.executable, "stages/finetune.py"], cwd=project, env={**os.environ, **THREADS},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if live.exists() and json.loads(live.read_text() or "{}").get("step", -1) >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "finetune ended before it could be killed"
        proc.kill()
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert checkpoint.exists()
    resumed = stage(project, [sys.executable, "stages/finetune.py"])
    assert "resuming after epoch" in resumed.stdout, resumed.stdout[-2000:]
    assert not checkpoint.exists()
    (w1, m1), (w2, m2) = reference, (weights(project), finetune_metrics(project))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert {k: m1[k] for k in ("best_epoch", "epochs_run", "val_loss")} == {k: m2[k] for k in ("best_epoch", "epochs_run", "val_loss")}
    steps = (project / "live" / "finetune" / "plots" / "metrics" / "training" / "val_loss.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in steps[1:]][-1] == "7"  # the curve goes on to the last epoch
    set_params(project, **{"finetune.epochs": 2})
