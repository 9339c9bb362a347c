"""Benchmark: finetune's training throughput on 1 vs N processes (torchrun + DDP) and the scaling
efficiency, side by side in one run, on the machine it runs on (named in the output).

    python benchmarks/bench_ddp.py [--project .] [--processes 2] [--epochs 2]

It needs a project whose extract-features has run (the repository after `dvc repro`). The
project's data/ is linked into a temporary folder and finetune runs there, so the project's
params and outputs stay as they were. Throughput is the img/s finetune logs for its last epoch
(images of the global batch per second of training, validation excluded), every block trained.
On a CPU each of the N processes gets cores / N threads (the 1-process run gets all cores), so the
efficiency says what DDP's gradient exchange costs there; on a GPU machine each rank takes a GPU.
"""

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU"


def rate(project: Path, processes: int, epochs: int) -> float:
    """finetune's img/s of its last epoch (every block trained from the first epoch), as it logs it."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["finetune"] |= {"processes": processes, "epochs": epochs, "patience": 0, "strategy": "all",
                           "freeze_epochs": 0, "lr": params["finetune"]["lr"] if params["finetune"]["lr"] != "auto" else 1e-3}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(project / ".tlpipe", ignore_errors=True)  # never resume: every epoch is timed
    log = subprocess.run([sys.executable, "stages/finetune.py"], cwd=project, check=True, capture_output=True,
                         text=True).stdout
    return float(re.findall(r"\((\d+) img/s\)", log)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--processes", type=int, default=max(2, torch.cuda.device_count()))
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    source = args.project.resolve()
    if not (source / "data" / "features").is_dir():
        sys.exit(f"error: {source / 'data' / 'features'}: missing; run `dvc repro extract-features` there first.")
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        work = Path(tmp)
        for name in ("params.yaml", "stages", "tlpipe"):
            (shutil.copytree if (source / name).is_dir() else shutil.copy)(source / name, work / name)
        (work / "data").symlink_to(source / "data")
        single = rate(work, 1, args.epochs)
        several = rate(work, args.processes, args.epochs)
    print(f"machine: {machine()}")
    print(f"finetune train images/s: 1 process {single:.1f}, {args.processes} processes {several:.1f}; "
          f"speed-up {several / single:.2f}x, scaling efficiency {several / single / args.processes:.0%}")
    if not torch.cuda.is_available():
        print("GPU: not measured (no GPU on this machine)")


if __name__ == "__main__":
    main()
