"""The backbone x strategy table of docs/recipes.md, from a clean checkout, by its own recipe.

Clones this repository's HEAD into a work folder, applies the `chest-xray-pneumonia` preset with
`data.source: path:<the zip>` (and any `--set KEY=VALUE`), commits that, queues one `dvc exp run` per
backbone x strategy, runs the queue one experiment at a time (`dvc queue start -j 1`: a 2-core machine
gains nothing from two) and prints the table `tlpipe compare` writes. Experiments that share a backbone
share split, resize and extract-features through DVC's run-cache. Every choice is made on validation;
the test split is read by evaluate alone.

    python benchmarks/bench_grid.py [--data ZIP] [--work DIR] [--set resize.size=128 --set finetune.epochs=3 ...]
"""

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_chest  # noqa: E402
import common  # noqa: E402

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
STRATEGIES = ("head", "last_blocks", "all")
QUEUE_TIMEOUT_S = 6 * 3600


def run(args: list[str], project: Path) -> str:
    return subprocess.run(args, cwd=project, check=True, env=bench_chest.env(project), text=True,
                          capture_output=True).stdout


def wait_for_queue(project: Path) -> str:
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], project)
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(10)
    sys.exit(f"the queue did not finish in {QUEUE_TIMEOUT_S} s:\n{status}")


def main() -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--backbones", nargs="+", default=BACKBONES)
    p.add_argument("--strategies", nargs="+", default=STRATEGIES)
    args = p.parse_args()
    if args.quick:
        args.overrides += ["resize.size=64", "finetune.epochs=2"]
        args.backbones, args.strategies = args.backbones[:1], args.strategies[:2]
    data = common.check_data(args.data)
    project = bench_chest.checkout(args.work)
    bench_chest.apply_params(project, data, args.overrides)
    run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam",
         "chest preset for the backbone x strategy grid"], project)

    start = time.perf_counter()
    for backbone in args.backbones:
        for strategy in args.strategies:
            run(["dvc", "exp", "run", "--queue", "-n", f"{backbone}-{strategy}",
                 "-S", f"backbone.name={backbone}", "-S", f"finetune.strategy={strategy}"], project)
    run(["dvc", "queue", "start", "-j", "1"], project)
    status = wait_for_queue(project)
    minutes = (time.perf_counter() - start) / 60
    if "Failed" in status:
        print(status)
    run(["tlpipe", "compare", "--out", "comparison"], project)
    print(f"\nchest X-ray pneumonia, official test split; {common.machine()}; {len(args.backbones) * len(args.strategies)} "
          f"experiments in {minutes:.1f} min; preset + {' '.join(args.overrides) or 'nothing'}\n")
    print((project / "comparison" / "comparison.md").read_text())
    print(f"table: {project / 'comparison'}")
    return 1 if "Failed" in status else 0


if __name__ == "__main__":
    sys.exit(main())
