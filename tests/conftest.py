import fcntl
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

# Under `pytest -n 2` each worker (and every stage it starts) computes on one thread: two workers
# of two OpenMP threads each on a 2-core machine spend their time waiting for each other.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") != "1":
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def png_bytes(seed: int, size=(12, 12), mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(*size[::-1], channels), dtype=np.uint8).squeeze()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def make_image_tree(root: Path, layout: dict[str, int], seed: int = 0, prefix: str = "img") -> list[Path]:
    """layout: {'class_or/sub/path': count} -> distinct random PNGs; returns the files."""
    files = []
    for n_folder, (folder, count) in enumerate(sorted(layout.items())):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = root / folder / f"{prefix}{i:03d}.png"
            path.write_bytes(png_bytes(seed * 100_000 + n_folder * 1000 + i))
            files.append(path)
    return files


def learnable_tree(root: Path, per_class: int = 30) -> None:
    """Three classes a network can tell apart (which of the three colour channels is bright), so
    that training moves the weights and the compared models are the trained ones, not the probe."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 216, size=(16, 16, 3), dtype=np.uint8)
            pixels[..., c] += 24  # a weak signal under strong noise: the probe is not perfect
            Image.fromarray(pixels).save(root / name / f"img{i:03d}.png")


def rotating_fruit_frames(root: Path, classes=("apple", "banana", "cherry"), objects: int = 2, frames: int = 30,
                          test_objects: int = 0) -> None:
    """Fruits-360-like data: each class a few objects of its own colour, each filmed as many
    near-identical 64 px frames, in Training/<class>/ (and Test/<class>/ for `test_objects` further objects), named as
    Fruits-360 names them (r_<angle>_100.jpg: no subject key)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        for folder, count in (("Training", objects), ("Test", test_objects)):
            if count:
                (root / folder / name).mkdir(parents=True)
            for o in range(count):
                base = rng.integers(0, 176, (12, 12, 3)).astype(np.uint8)
                base[..., c % 3] += 80  # the class's colour, as a fruit's
                base = np.asarray(Image.fromarray(base).resize((64, 64), Image.Resampling.BICUBIC), dtype=np.int16)
                for f in range(frames):
                    frame = np.clip(base + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)
                    Image.fromarray(frame).save(root / folder / name / f"r_{o * 100 + f}_100.jpg")


def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def section(name: str, *changes: dict, **overrides):
    """The typed params section `name` (tlpipe.params): params.yaml's values, with `changes` and
    `overrides` on top."""
    from tlpipe import params

    values = default_params()[name]
    for change in changes:
        values |= change
    return params.make_section(name, values | overrides)


def split_cfg(**overrides):
    return section("split", **overrides)


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


STAGES = ["download", "split", "resize", "extract-features", "train-head", "finetune", "evaluate", "report", "summary"]


def ran_stages(output: str) -> list[str]:
    """The stages that a `dvc repro` (or `dvc queue logs`) output says it ran, in pipeline order."""
    return [s for s in STAGES if re.search(rf"Running stage '{re.escape(s)}'", output)]


def repro(project: Path) -> list[str]:
    return ran_stages(run(["dvc", "repro"], project).stdout)


@pytest.fixture
def dvc_project(tmp_path):
    return make_dvc_project(tmp_path / "project")


def make_dvc_project(project: Path) -> Path:
    """A fresh Git + DVC repository holding this project's pipeline (not its data or metrics)."""
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, project / name)
    shutil.copytree(REPO / "stages", project / "stages")
    shutil.copytree(REPO / "tlpipe", project / "tlpipe", ignore=shutil.ignore_patterns("__pycache__"))
    run(["git", "init", "-q"], project)
    run(["git", "config", "user.email", "test@example.com"], project)
    run(["git", "config", "user.name", "test"], project)
    run(["dvc", "init", "-q"], project)
    run(["dvc", "config", "core.analytics", "false"], project)
    # The offline `dvc plots show` page, as the repository's .dvc/config names it.
    # and the project's plot templates beside it.
    shutil.copytree(REPO / ".dvc" / "plots", project / ".dvc" / "plots")
    run(["dvc", "config", "plots.html_template", "plots/offline.html"], project)
    return project


# The tiny run most end-to-end tests start from: three classes of 30 random 12 px PNGs, 32 px, random
# weights, two epochs.
TINY_RUN = {"resize.size": 32, "backbone.weights": "none", "finetune.epochs": 2, "finetune.batch_size": 16,
            "features.batch_size": 32}
TINY_CLASSES = ("circle", "cross", "square")


def set_params(project: Path, **changes) -> None:
    """changes: {'section.key': value}; a data.source comes with its data.track, as `tlpipe source` sets it."""
    from tlpipe.params import track_for

    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    if "data.source" in changes:
        changes = {"data.track": track_for(changes["data.source"])} | changes
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def tiny_run_template(tmp_path_factory, worker_id) -> Path:
    """A project after `dvc repro` of TINY_RUN, committed ("pipeline", then "reference run"). Built
    once per test session, shared by the xdist workers (a file lock), and never changed: tests take
    a copy (the `tiny_run` fixture). Its images stay where they are, read by every copy."""
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # each xdist worker has its own basetemp under the session's
        shared = shared.parent
    root = shared / "tiny_run"
    with open(shared / "tiny_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").exists():
            if root.exists():  # a worker failed half-way: start again
                shutil.rmtree(root)
            make_image_tree(root / "images", {name: 30 for name in TINY_CLASSES})
            project = make_dvc_project(root / "project")
            set_params(project, **{"data.source": f"path:{root / 'images'}"}, **TINY_RUN)
            run(["git", "add", "-A"], project)
            run(["git", "commit", "-qm", "pipeline"], project)
            assert repro(project) == STAGES
            run(["git", "add", "-A"], project)
            run(["git", "commit", "-qm", "reference run"], project)
            (root / "done").touch()
    return root / "project"


def copy_project(source: Path, project: Path) -> Path:
    """A private copy of a project: Git history, DVC cache and run-cache, outputs (not DVC's
    per-repository state in .dvc/tmp)."""
    shutil.copytree(source, project, symlinks=True,
                    ignore=lambda folder, names: ["tmp"] if Path(folder).name == ".dvc" else [])
    return project


@pytest.fixture
def tiny_run(tiny_run_template, tmp_path) -> Path:
    """This test's own copy of the finished tiny run."""
    return copy_project(tiny_run_template, tmp_path / "project")
