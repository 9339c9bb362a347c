"""Every benchmark script starts (`--help`) and every name it imports, at the top or inside a
function, exists: a benchmark that nothing runs must not rot unseen (two once imported a class
from a module it had left)."""

import ast
import os
import re
import shutil
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))
SCRIPTS = [p for p in BENCHMARKS if p.name != "common.py"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_benchmark_starts(script):
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_every_name_the_benchmark_imports_exists(script):
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tlpipe"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
                    f"{script.name}: `from {node.module} import {alias.name}`: no such name")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tlpipe"):
                    importlib.import_module(alias.name)


def tiny_chest_zip(path: Path) -> Path:
    """The chest X-ray zip's layout (chest_xray/{train,test}/{NORMAL,PNEUMONIA}/), 104 small JPEGs."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for split, count in (("train", 40), ("test", 12)):
            for label, shift in (("NORMAL", 0), ("PNEUMONIA", 60)):
                for i in range(count):
                    pixels = (rng.random((64, 64)) * 190).astype(np.uint8) + shift
                    buffer = io.BytesIO()
                    Image.fromarray(pixels).convert("RGB").save(buffer, "JPEG")
                    name = f"person{i}_bacteria_{i}.jpeg" if shift else f"IM-{i:04d}-0001.jpeg"
                    archive.writestr(f"chest_xray/{split}/{label}/{name}", buffer.getvalue())
    return path


def tiny_mri_zip(path: Path) -> Path:
    """The brain MRI zip's layout (Training/ and Testing/ of 4 classes), 96 small JPEGs."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    with zipfile.ZipFile(path, "w") as archive:
        for split, count in (("Training", 18), ("Testing", 6)):
            for c, label in enumerate(("glioma", "meningioma", "notumor", "pituitary")):
                for i in range(count):
                    pixels = (rng.random((64, 64)) * 150).astype(np.uint8) + 30 * c
                    buffer = io.BytesIO()
                    Image.fromarray(pixels).convert("RGB").save(buffer, "JPEG")
                    archive.writestr(f"{split}/{label}/{split[:2]}-{label[:2]}_{i:04d}.jpg", buffer.getvalue())
    return path


BENCHMARK_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(script: str, *args: str, cwd: Path, timeout: int = 600) -> str:
    """Run a benchmark as written; its stdout. Exit 1 is a missed target (the figures mean nothing
    at a tiny size); a crash or a traceback fails."""
    result = subprocess.run([sys.executable, str(BENCHMARK_DIR / script), *args], capture_output=True, text=True,
                            timeout=timeout, cwd=cwd)
    output = result.stdout + result.stderr
    assert result.returncode in (0, 1) and "Traceback" not in output, output[-3000:]
    return result.stdout


# Each runs as written, end to end, on a tiny copy of its data: its figures mean nothing at this size,
# but every code path it times (the stage's library calls and the notebook-style alternative) runs.
ON_THE_CHEST_ZIP = {"bench_resize.py": [], "bench_input.py": ["--n", "64"], "bench_features.py": ["--n", "32"],
                    "bench_finetune.py": ["--batches", "2"], "bench_incremental.py": [],
                    "bench_grid.py": ["--strategies", "head"]}
ON_GENERATED_DATA = {"bench_source.py": ["--files", "300"], "bench_decision.py": ["--seeds", "1"],
                     # N frames, 500 a class: 1,000 and 4,000 images; no MRI zip there: its recall is skipped
                     "bench_near_duplicates.py": ["--n", "1000", "--data", "no-mri.zip", "--work", "work"],
                     "bench_scale.py": ["--quick", "--n", "200", "--work", "work"], "bench_concurrent.py": ["--quick", "--work", "work"],
                     "bench_compile.py": ["--quick"]}


@pytest.mark.slow
@pytest.mark.parametrize("script", [*ON_THE_CHEST_ZIP, *ON_GENERATED_DATA])
def test_the_benchmark_runs_at_a_tiny_size(script, tmp_path):
    args = (["--data", str(tiny_chest_zip(tmp_path / "chest.zip")), "--work", str(tmp_path / "work"), "--quick",
             *ON_THE_CHEST_ZIP[script]] if script in ON_THE_CHEST_ZIP else ON_GENERATED_DATA[script])
    stdout = run_benchmark(script, *args, cwd=tmp_path)
    assert re.search(r"^(PASS|FAIL|machine:|\| )", stdout, flags=re.M), stdout[-3000:]  # its figures


@pytest.mark.slow
def test_the_mri_benchmark_runs_at_a_tiny_size(tmp_path):
    stdout = run_benchmark("bench_mri.py", "--data", str(tiny_mri_zip(tmp_path / "mri.zip")), "--work",
                           str(tmp_path / "work"), "--quick", "--split", "carved", cwd=tmp_path)
    assert "brain MRI, carved test split" in stdout and "| " in stdout, stdout[-3000:]


@pytest.fixture(scope="session")
def chest_project(tmp_path_factory):
    """bench_chest.py's project, run as written on the tiny chest zip at 64 px: the project that
    bench_choices, bench_frozen_epoch, bench_ddp and shot_plots work in."""
    work = tmp_path_factory.mktemp("bench")
    data = tiny_chest_zip(work / "chest.zip")
    stdout = run_benchmark("bench_chest.py", "--data", str(data), "--work", str(work), "--quick",
                           "--set", "resize.size=64", cwd=work)
    assert "| fine-tuned, **test** |" in stdout, stdout[-3000:]
    return work / "chest", data


@pytest.mark.slow
@pytest.mark.xdist_group("chest_project")
def test_the_benchmarks_that_need_a_project_run_in_one(chest_project, tmp_path):
    project, data = chest_project
    stdout = run_benchmark("bench_choices.py", "--data", str(data), "--work", str(tmp_path / "work"), "--project",
                           str(project), cwd=tmp_path)
    assert "split:" in stdout and "train-head:" in stdout and "finetune:" in stdout, stdout[-3000:]
    stdout = run_benchmark("bench_frozen_epoch.py", cwd=project)
    assert stdout.startswith("defaults: probe C") and "no label smoothing:" in stdout, stdout[-3000:]
    stdout = run_benchmark("bench_ddp.py", "--project", str(project), "--epochs", "1", cwd=tmp_path)
    assert "finetune train images/s: 1 process" in stdout, stdout[-3000:]


@pytest.mark.slow
@pytest.mark.xdist_group("chest_project")
def test_the_plots_screenshot_runs_in_a_project(chest_project, tmp_path):
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        assert not os.environ.get("CI"), "CI draws the plots: .ci/run installs Debian's chromium"
        pytest.skip("no chromium here (apt-get install chromium)")
    stdout = run_benchmark("shot_plots.py", "--project", str(chest_project[0]), "--out", str(tmp_path / "shots"),
                           cwd=tmp_path)
    assert "remote scripts: 0" in stdout and (tmp_path / "shots" / "plots.png").is_file(), stdout[-3000:]


def test_every_benchmark_has_a_smoke_run():
    """A new benchmark gets its tiny run above, or this fails."""
    project = {"bench_chest.py", "bench_choices.py", "bench_frozen_epoch.py", "bench_ddp.py", "shot_plots.py"}
    assert {p.name for p in SCRIPTS} == {*ON_THE_CHEST_ZIP, *ON_GENERATED_DATA, "bench_mri.py", *project}


def test_gpu_busy_is_the_mean_of_nvidia_smi_samples_and_none_without_it(tmp_path, monkeypatch):
    sys.path.insert(0, str(BENCHMARKS[0].parent))
    try:
        common = importlib.import_module("common")
    finally:
        sys.path.remove(str(BENCHMARKS[0].parent))
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    counter = tmp_path / "calls"
    # answers 80, then 100, 100, ...: the mean lies between and every sample is a call
    fake.write_text(f"#!/bin/sh\necho x >> {counter}\n[ $(wc -l < {counter}) -eq 1 ] && echo 80 || echo 100\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    import time
    with common.GpuBusy(interval=0.05) as busy:
        time.sleep(0.5)
    calls = len(counter.read_text().splitlines())
    assert calls >= 3 and busy.percent == pytest.approx((80 + 100 * (calls - 1)) / calls)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with common.GpuBusy(interval=0.05) as busy:
        time.sleep(0.1)
    assert busy.percent is None
