"""Why the frozen first epoch can end worse than the probe it starts from.

Run in a project after `dvc repro` (it reads data/cache and data/features): fits the probe as
finetune does (probe_C and temperature chosen on validation), then trains only the frozen epoch
of the configured schedule, with the defaults and with one ingredient removed at a time, and
prints the probe's and the frozen epoch's validation loss for each.

    cd PROJECT && python /path/to/benchmarks/bench_frozen_epoch.py
"""

import argparse
import sys
from dataclasses import replace

import torch

from tlpipe import params
from tlpipe.data.cache import load_classes, load_features, load_split
from tlpipe.model.backbones import create_backbone
from tlpipe.train import finetune as ft

VARIANTS = {"defaults": {}, "no augmentation": {"aug_scale_min": 1.0, "aug_rotation": 0, "aug_jitter": 0},
            "no label smoothing": {"label_smoothing": 0.0}, "head lr x0.1": {"lr_scale": 0.1}}


class _Stop(Exception):
    pass


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no options: run in a project
    p = params.load()
    base = replace(p.finetune, device="cpu", freeze_epochs=1, patience=0)
    classes = load_classes("data/cache")
    train, val = (ft.Split(*load_split("data/cache", s)[:2]) for s in ("train", "val"))
    features = [ft.Features(*load_features("data/features", s)) for s in ("train", "val")]
    for name, change in VARIANTS.items():
        cfg = replace(base, **{k: v for k, v in change.items() if k != "lr_scale"})
        if "lr_scale" in change and isinstance(cfg.lr, float):
            cfg = replace(cfg, lr=cfg.lr * change["lr_scale"])
        torch.manual_seed(0)
        backbone = create_backbone(p.backbone.name, p.backbone.weights)
        head, chosen = ft.probe_head(backbone, len(classes), cfg, *features)
        model = ft.build_model(backbone, len(classes), cfg, head=head)
        lines = []

        def log(text):
            lines.append(text)
            if text.startswith("epoch 0"):
                raise _Stop

        try:
            ft.fit(model, train, val, cfg, len(classes), torch.device("cpu"), log=log)
        except _Stop:
            pass
        print(f"{name}: probe C {chosen['probe_C']:g}, T {chosen['probe_temperature']:.3f} | " + " | ".join(lines),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
