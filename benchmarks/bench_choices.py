"""What the choices made on validation add to `dvc repro` on the chest X-ray set.

Times, on the chest X-ray zip and on a finished chest project (bench_chest.py's work folder, for
its features and cache), each new default against the fixed value it replaced:
- split: near-duplicate fingerprints (split.near_duplicate_similarity 0.97) vs identical bytes only;
- train-head: head.C auto (the grid) vs a fixed C;
- finetune: probe_C auto + temperature vs a fixed probe_C, plus validating the starting model (the
  check that the frozen epochs do not end worse than the probe): its head on extract-features'
  cached validation features, as the stage does, beside a pass over the validation images.

    python benchmarks/bench_choices.py [--data ZIP] [--project DIR]
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, default=common.DEFAULT_WORK / "chest",
                   help="a chest project after `dvc repro` (default: bench_chest.py's, %(default)s)")
    args = p.parse_args()
    data = common.check_data(args.data)
    from dataclasses import replace

    import torch

    from tlpipe import params
    from tlpipe.data.cache import load_features, load_split
    from tlpipe.data.raw import RawData
    from tlpipe.data.split import build_split
    from tlpipe.model.backbones import create_backbone
    from tlpipe.train import finetune as ft
    from tlpipe.train.choose import choose_logreg

    summary = common.Summary("choices made on validation: added wall time (chest X-ray)")
    raw = RawData(common.raw_folder(args.work, data))
    project = params.load(args.project / "params.yaml")
    plain, _ = timed(lambda: build_split(raw, replace(project.split, near_duplicate_similarity=None)))
    near, (_, report) = timed(lambda: build_split(raw, replace(project.split, near_duplicate_similarity=0.97)))
    summary.figure(f"split: {plain:.1f} s identical bytes only, {near:.1f} s with near-duplicates "
                   f"(+{near - plain:.1f} s; {len(report.near_duplicate_pairs)} near-duplicate pairs)")
    features = {s: load_features(args.project / "data/features", s) for s in ("train", "val")}
    x, y = features["train"]
    xv, yv = features["val"]
    fixed, _ = timed(lambda: choose_logreg(x, y, xv, yv, 2, 1.0, True, 0))
    auto, (_, chosen) = timed(lambda: choose_logreg(x, y, xv, yv, 2, "auto", True, 0))
    summary.figure(f"train-head: C 1.0 {fixed:.1f} s, C auto {auto:.1f} s (+{auto - fixed:.1f} s; chose C "
                   f"{chosen['C']:g} of {len(chosen['C_grid'])} tried)")
    backbone = create_backbone(project.backbone.name, "default")
    fcfg = project.finetune
    probe, probe_val = ft.Features(x, y), ft.Features(xv, yv)
    fixed, _ = timed(lambda: ft.probe_head(backbone, 2, replace(fcfg, probe_C=0.1), probe))
    auto, (_, chosen) = timed(lambda: ft.probe_head(backbone, 2, replace(fcfg, probe_C="auto"), probe, probe_val))
    images = load_split(args.project / "data/cache", "val")[0]
    model = ft.build_model(backbone, 2, fcfg, head=torch.nn.Linear(backbone.num_features, 2))
    val, cpu = ft.Split(images, yv), torch.device("cpu")
    over_images, _ = timed(lambda: ft.validate(model, val, fcfg, cpu))
    on_features, _ = timed(lambda: ft.validate_start(model, replace(val, features=xv), fcfg, cpu))
    summary.figure(f"finetune: probe_C 0.1 {fixed:.1f} s, probe_C auto + temperature {auto:.1f} s "
                   f"(+{auto - fixed:.1f} s; C {chosen['probe_C']:g}, T {chosen['probe_temperature']:.3f}); "
                   f"validating the starting model: +{on_features:.2f} s on the cached features "
                   f"({over_images:.1f} s for a pass over the {len(images)} images)")
    summary.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
