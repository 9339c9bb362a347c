"""The brain MRI table of docs/results.md: the leak report of the shipped split, and the model on
the shipped Testing split next to a leak-free test split carved by tlpipe itself, from a clean checkout.

    python benchmarks/bench_mri.py [--data ZIP] [--work DIR] [--split shipped|carved] [--set KEY=VALUE ...]

`shipped` keeps Kaggle's Testing folder as the test split (near-duplicates of training images are
reported, not removed); `carved` merges it into the pool (`split.existing_test: train`) and carves
test and validation by near-duplicate groups, so that no group spans two splits. Everything else
is the default recipe (every choice on validation); the test split is read by evaluate alone.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_chest  # noqa: E402
import common  # noqa: E402

DEFAULT_MRI = common.REPO.parent / "shared" / "data" / "brain-tumor-mri-224.zip"


def set_params(project: Path, changes: dict) -> None:
    from ruamel.yaml import YAML

    yaml = YAML()
    params = yaml.load(project / "params.yaml")
    for key, value in changes.items():
        section, name = key.split(".", 1)
        if name not in params[section]:
            sys.exit(f"no param {key} in params.yaml")
        params[section][name] = yaml.load(value) if isinstance(value, str) else value
    yaml.dump(params, project / "params.yaml")


def main() -> int:
    p = common.parser(__doc__.splitlines()[0], data=DEFAULT_MRI)
    p.add_argument("--split", choices=("shipped", "carved"), default="shipped")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    data = common.check_data(args.data)
    project = bench_chest.checkout(args.work)
    changes = {"data.source": f"path:{data}", "data.track": str(data), "split.existing_test": "train" if args.split == "carved" else "keep",
               "split.test_fraction": 0.15}
    if args.quick:
        changes |= {"finetune.epochs": 2, "resize.size": 64}
    changes |= dict(item.split("=", 1) for item in args.overrides)
    set_params(project, changes)
    start = time.perf_counter()
    subprocess.run(["dvc", "repro", "--quiet"], cwd=project, check=True, env=bench_chest.env(project))
    minutes = (time.perf_counter() - start) / 60
    split = json.loads((project / "metrics" / "split.json").read_text())
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    head = json.loads((project / "metrics" / "train_head.json").read_text())
    fit = json.loads((project / "metrics" / "finetune.json").read_text())
    near = split["near_duplicates"]
    print(f"\nbrain MRI, {args.split} test split; {common.machine()}; dvc repro {minutes:.1f} min; "
          f"changes: {' '.join(f'{k}={v}' for k, v in changes.items() if k != 'data.source')}")
    print(f"splits {split['total']}; near-duplicate groups {near['groups']} ({near['images_in_groups']} images, "
          f"largest {near['largest_group']}, {near['pairs_with_different_labels']} pairs with different labels)")
    for name in ("val", "test"):
        leak = near["across_splits"][name]
        print(f"{name} images with a copy or near-duplicate in another split: {leak['images']} of {leak['of']} "
              f"{leak['per_class']}")
    print(f"chosen on validation: head {head.get('chosen_on_val')}; finetune "
          f"{ {k: v for k, v in fit.get('chosen_on_val', {}).items() if not k.endswith('grid')} }; "
          f"best epoch {fit['best_epoch']} of {fit['epochs_run']}")
    print(bench_chest.argmax_and_rule_table(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
