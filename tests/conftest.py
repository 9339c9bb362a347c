import io
import os
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
