"""Benchmark: incremental reruns. In a fresh Git + DVC project holding this pipeline (as the tests
build one), `dvc repro` runs the whole pipeline on the chest X-ray zip, then once more after a
change to one `head.*` param (head.C), then once more with nothing changed; `dvc status` must be
clean at the end.

Targets: the repro after the head.C change takes <= 10% of the full repro;
the repro with no change returns in seconds (here: <= 10 s).

    python benchmarks/bench_incremental.py [--data ZIP] [--size 224] [--epochs 3] [--quick]

The workload is the chest X-ray preset (patient-grouped split, equalized contrast, its finetune
recipe) with `data.source: path:ZIP`, cached at `--size` px (the preset's 224) and fine-tuned for
`--epochs` epochs (the first frozen; the preset runs 6), so that the full run takes a few minutes
on 2 cores; the preset's full recipe only makes the ratio smaller. The head change costs a fixed
~10-15 s (DVC, two stage processes starting torch, evaluate's inference on val + test), so at
128 px and 3 epochs (full run ~100 s) the ratio is ~11%. Each `dvc repro` is timed from outside, as
a user sees it (DVC's own start-up and hashing included).
"""

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.REPO / "tests"))
from conftest import make_dvc_project  # noqa: E402

RATIO_TARGET = 0.10
NO_CHANGE_TARGET_S = 10.0
STAGES = ["download", "split", "resize", "extract-features", "train-head", "finetune", "evaluate", "report", "summary"]


def set_params(project: Path, changes: dict) -> None:
    import yaml

    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def sh(cmd: list[str], project: Path) -> tuple[str, float]:
    env = {**__import__("os").environ, "PYTHONPATH": str(project)}
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=project, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout, seconds


def repro(project: Path, label: str) -> tuple[float, list[str]]:
    out, seconds = sh([dvc(), "repro"], project)
    ran = [s for s in STAGES if re.search(rf"Running stage '{re.escape(s)}'", out)]
    print(f"  {label:22s} {seconds:7.1f} s  stages run: {', '.join(ran) or 'none'}", flush=True)
    return seconds, ran


def dvc() -> str:
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else "dvc"


def main() -> int:
    import yaml

    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=None, help="resize.size, px (default 224, quick 64)")
    p.add_argument("--epochs", type=int, default=None, help="finetune.epochs, the first frozen (default 3, quick 2)")
    args = p.parse_args()
    args.data = common.check_data(args.data)
    size = args.size or (64 if args.quick else 224)
    epochs = args.epochs or (2 if args.quick else 3)

    project = args.work / "incremental-project"
    shutil.rmtree(project, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)
    make_dvc_project(project)
    preset = yaml.safe_load((common.REPO / "tlpipe" / "preset_files" / "chest-xray-pneumonia.yaml").read_text())["params"]
    changes = {f"{section}.{key}": value for section, values in preset.items() for key, value in values.items()}
    changes |= {"data.source": f"path:{args.data}", "data.track": str(args.data), "resize.size": size, "finetune.epochs": epochs,
                "finetune.freeze_epochs": 1}
    set_params(project, changes)
    sh(["git", "add", "-A"], project)
    sh(["git", "commit", "-qm", "pipeline"], project)
    print(f"[repro] chest X-ray preset, {size} px, finetune.epochs {epochs}, in {project}", flush=True)

    full, ran_full = repro(project, "full pipeline")
    head_c = yaml.safe_load((project / "params.yaml").read_text())["head"]["C"]
    new_c = 0.1 if head_c == "auto" else float(head_c) / 10  # auto: chosen on validation; a fixed C instead
    set_params(project, {"head.C": new_c})
    head, ran_head = repro(project, f"head.C {head_c} -> {new_c:g}")
    nothing, ran_nothing = repro(project, "no change")
    status, _ = sh([dvc(), "status"], project)
    clean = "up to date" in status
    print(f"  dvc status: {status.strip().splitlines()[-1] if status.strip() else '(empty)'}", flush=True)

    summary = common.Summary("bench_incremental: dvc repro, full vs after one head.* change vs no change")
    summary.figure(f"workload: chest X-ray zip, preset params, resize.size {size}, finetune.epochs {epochs}")
    summary.figure(f"full `dvc repro`                {full:7.1f} s  ({len(ran_full)} stages)")
    summary.figure(f"after head.C change             {head:7.1f} s  ({', '.join(ran_head)}), {head / full:.1%} of full")
    summary.figure(f"no change                       {nothing:7.1f} s  ({', '.join(ran_nothing) or 'no stage ran'})")
    summary.target("repro after head.C change / full repro", head / full, RATIO_TARGET, higher=False)
    summary.target("no-change repro", nothing, NO_CHANGE_TARGET_S, unit=" s", higher=False)
    summary.checks.append((f"head.C change reran only train-head and what reads models/head.pt: {', '.join(ran_head)}",
                           set(ran_head) <= {"train-head", "evaluate", "report", "summary"} and "train-head" in ran_head))
    summary.checks.append(("no-change repro ran no stage", not ran_nothing))
    summary.checks.append(("`dvc status` clean at the end", clean))
    return summary.print()


if __name__ == "__main__":
    sys.exit(main())
