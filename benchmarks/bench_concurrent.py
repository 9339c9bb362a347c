"""Benchmark: two finetune jobs on one machine, one after the other against both at once.

`dvc queue start -j 2` and `tlpipe tune --jobs 2` run two training processes at once. Each torch
process starts a compute thread per core by default, and two of them fight over the cores; with
`TLPIPE_JOBS=2` (which tune and cv set for DVC's queue workers) each takes its share. Two copies of
the default project (digits, params as shipped but `finetune.epochs`), prepared up to
extract-features, run `stages/finetune.py` as `dvc repro` runs it:

1. in turn: one, then the other;
2. at once, each taking every core (no TLPIPE_JOBS);
3. at once, TLPIPE_JOBS=2.

Target: 3 finishes no later than 1.

    python benchmarks/bench_concurrent.py [--epochs 4] [--work DIR]
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common
from tlpipe.jobs import usable_cores


def prepare(work: Path, epochs: int, quick: bool) -> list[Path]:
    import yaml

    first = work / "concurrent" / "a"
    if first.parent.exists():
        shutil.rmtree(first.parent)
    subprocess.run(["git", "clone", "-q", str(common.REPO), str(first)], check=True)
    params = yaml.safe_load((first / "params.yaml").read_text())
    params["finetune"]["epochs"] = epochs
    if quick:  # a smoke run: no range test, nothing frozen, small images
        params["finetune"] |= {"lr": 0.003, "freeze_epochs": 0}
        params["resize"]["size"] = 32
    (first / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["dvc", "repro", "-q", "extract-features"], cwd=first, check=True, env=env(None))
    second = first.parent / "b"
    shutil.copytree(first, second, symlinks=True)
    return [first, second]


def env(jobs: int | None) -> dict:
    out = {k: v for k, v in os.environ.items() if k not in ("TLPIPE_JOBS", "OMP_NUM_THREADS")}
    out["PYTHONPATH"] = str(common.REPO)
    return out | ({"TLPIPE_JOBS": str(jobs)} if jobs else {})


def finetune(projects: list[Path], jobs: int | None, together: bool) -> tuple[float, list[float]]:
    """Wall seconds for all of them, and each one's training images/s."""
    start = time.perf_counter()
    command = [sys.executable, str(common.REPO / "stages" / "finetune.py")]
    if together:
        running = [subprocess.Popen(command, cwd=p, env=env(jobs), stdout=subprocess.DEVNULL) for p in projects]
        codes = [proc.wait() for proc in running]
    else:
        codes = [subprocess.run(command, cwd=p, env=env(jobs), stdout=subprocess.DEVNULL).returncode for p in projects]
    wall = time.perf_counter() - start
    if any(codes):
        sys.exit(f"finetune failed: exit codes {codes}")
    rates = [json.loads((p / "metrics" / "finetune.json").read_text())["train_images_per_s"] for p in projects]
    return wall, rates


def main() -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4, help="finetune.epochs of each job (default %(default)s)")
    args = p.parse_args()
    epochs = 1 if args.quick else args.epochs
    projects = prepare(args.work, epochs, args.quick)
    summary = common.Summary(f"bench_concurrent: two finetune jobs (digits, {epochs} epochs), {usable_cores()} cores")
    results = {}
    runs = (("in turn", None, False), ("at once, every core each", None, True), ("at once, TLPIPE_JOBS=2", 2, True))
    for name, jobs, together in runs[::2] if args.quick else runs:  # quick: the two the target compares
        wall, rates = finetune(projects, jobs, together)
        results[name] = wall
        summary.figure(f"{name:<26} {wall:6.1f} s for both; training images/s per job: "
                       + ", ".join(f"{r:.0f}" for r in rates))
    summary.target("both at once with TLPIPE_JOBS=2 / in turn", results["at once, TLPIPE_JOBS=2"] / results["in turn"],
                   1.0, higher=False)
    return summary.print()


if __name__ == "__main__":
    sys.exit(main())
