"""The chest X-ray table of docs/results.md, from a clean checkout.

Clones this repository's HEAD into a work folder, applies the `chest-xray-pneumonia` preset with
`data.source: path:<the zip>`, runs `dvc repro` once, timed, and prints the head-only and the
fine-tuned model on the official test split under the decision rule fitted on validation, as a
Markdown table.

    python benchmarks/bench_chest.py [--data ZIP] [--work DIR] [--set finetune.epochs=8 ...]

`--quick` trains 2 epochs instead of the preset's 8. `--set KEY=VALUE` changes one param after the preset (as `dvc exp run -S` would), for the
variants docs/results.md compares. The test split is only read by the evaluate stage; nothing here
chooses anything from it.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

COLUMNS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity")


def checkout(work: Path) -> Path:
    project = work / "chest"
    if project.exists():
        shutil.rmtree(project)
    subprocess.run(["git", "clone", "-q", str(common.REPO), str(project)], check=True)
    return project


def apply_params(project: Path, data: Path, overrides: list[str], recipe: str = "preset") -> None:
    """`preset`: the chest X-ray preset; `default`: params.yaml as shipped, only `data.source` set."""
    def tlpipe(*args):
        subprocess.run([sys.executable, "-m", "tlpipe.cli", *args], cwd=project, check=True,
                       env=env(project), stdout=subprocess.DEVNULL)

    if recipe == "preset":
        tlpipe("preset", "chest-xray-pneumonia", "--source", f"path:{data}")
    else:
        overrides = [f"data.source=path:{data}", f"data.track={data}", *overrides]
    if overrides:
        from ruamel.yaml import YAML

        yaml = YAML()
        params = yaml.load(project / "params.yaml")
        for item in overrides:
            key, _, value = item.partition("=")
            section, name = key.split(".", 1)
            if name not in params[section]:
                sys.exit(f"--set {item}: no param {key} in params.yaml")
            params[section][name] = yaml.load(value)
        yaml.dump(params, project / "params.yaml")


def env(project: Path) -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(project)}


def row(name: str, split: dict) -> str:
    """The figures under the model's decision rule (the plain names; for two classes a threshold)."""
    cells = [f"{split[c]:.3f}" for c in COLUMNS] + [f"{split['roc_auc']:.3f}", f"{split['rule'].get('threshold', 0.5):.3f}"]
    return f"| {name} | " + " | ".join(cells) + " |"


def argmax_and_rule_table(metrics: dict) -> str:
    """Accuracy, balanced accuracy and macro F1 of both models on val and test, under argmax and
    under the decision rule fitted on validation (metrics/evaluate.json), as Markdown."""
    lines = ["\n| model | split | rule fitted for | accuracy argmax / rule | balanced acc. argmax / rule | "
             "macro F1 argmax / rule | log loss |", "|---|---|---|---|---|---|---|"]
    for key in ("head", "finetune"):
        for name in ("val", "test"):
            m = metrics[key][name]
            cells = [f"{m['argmax'][c]:.3f} / {m[c]:.3f}" for c in ("accuracy", "balanced_accuracy", "macro_f1")]
            lines.append(f"| {key} | {name} | {m['rule'].get('fitted_for', '')} | " + " | ".join(cells)
                         + f" | {m['log_loss']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--recipe", choices=("preset", "default"), default="preset",
                   help="preset: the chest-xray-pneumonia preset; default: params.yaml as shipped (a new user's first run)")
    args = p.parse_args()
    if args.quick:
        args.overrides.append("finetune.epochs=2")
    data = common.check_data(args.data)
    project = checkout(args.work)
    apply_params(project, data, args.overrides, args.recipe)

    start = time.perf_counter()
    subprocess.run(["dvc", "repro", "--quiet"], cwd=project, check=True, env=env(project))
    minutes = (time.perf_counter() - start) / 60

    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    fit = json.loads((project / "metrics" / "finetune.json").read_text())
    print(f"\nchest X-ray pneumonia, official test split (n={metrics['finetune']['test']['n']}), "
          f"threshold fitted on validation for {metrics['finetune']['test']['rule']['fitted_for']}; {common.machine()}")
    print(f"recipe {args.recipe}; dvc repro: {minutes:.1f} min; finetune best epoch {fit['best_epoch']} of {fit['epochs_run']}"
          + (f"; overrides: {' '.join(args.overrides)}" if args.overrides else ""))
    print("\n| model | accuracy | balanced acc. | sensitivity | specificity | ROC AUC | threshold |")
    print("|---|---|---|---|---|---|---|")
    for name, key in (("head only (logistic regression on frozen features)", "head"),
                      ("fine-tuned", "finetune")):
        print(row(f"{name}, validation", metrics[key]["val"]))
        print(row(f"{name}, **test**", metrics[key]["test"]))
    print(argmax_and_rule_table(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
