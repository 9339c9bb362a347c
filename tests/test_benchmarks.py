"""Every benchmark script starts (`--help`) and every name it imports, at the top or inside a
function, exists: a benchmark that nothing runs must not rot unseen (two once imported a class
from a module it had left)."""

import ast
import re
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


# Each runs as written, end to end, on a tiny copy of its data: its figures mean nothing at this size,
# but every code path it times (the stage's library calls and the notebook-style alternative) runs.
ON_THE_CHEST_ZIP = {"bench_resize.py": [], "bench_input.py": ["--n", "64"], "bench_features.py": ["--n", "32"],
                    "bench_finetune.py": ["--batches", "2"]}
ON_GENERATED_DATA = {"bench_source.py": ["--files", "300"], "bench_decision.py": ["--seeds", "1"]}


@pytest.mark.slow
@pytest.mark.parametrize("script", [*ON_THE_CHEST_ZIP, *ON_GENERATED_DATA])
def test_the_benchmark_runs_at_a_tiny_size(script, tmp_path):
    args = (["--data", str(tiny_chest_zip(tmp_path / "chest.zip")), "--work", str(tmp_path / "work"), "--quick",
             *ON_THE_CHEST_ZIP[script]] if script in ON_THE_CHEST_ZIP else ON_GENERATED_DATA[script])
    path = Path(__file__).resolve().parents[1] / "benchmarks" / script
    result = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode in (0, 1) and "Traceback" not in output, output[-3000:]  # 1: a target missed
    assert re.search(r"^(PASS|FAIL|machine:|\| )", result.stdout, flags=re.M), result.stdout[-3000:]  # its figures
