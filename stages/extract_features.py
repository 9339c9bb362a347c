"""extract-features: the frozen backbone over data/cache/ -> data/features/{split}.npy (float32)."""

import json
from pathlib import Path

import numpy as np
from torch import nn

from tlpipe import params
from tlpipe.atomic import atomic_path
from tlpipe.model.backbones import create_backbone
from tlpipe.model.classifier import Classifier
from tlpipe.data.cache import load_split
from tlpipe.train.features import extract_features
from tlpipe.runtime import pick_device, tune_malloc
from tlpipe.data import SPLITS
from tlpipe.stage import run


def main() -> None:
    tune_malloc()
    p = params.load()
    cfg = p["features"]
    backbone = create_backbone(p["backbone"]["name"], p["backbone"]["weights"])
    model = Classifier(backbone.body, nn.Identity(), backbone.mean, backbone.std)
    device = pick_device(cfg["device"])
    with atomic_path("data/features", directory=True) as tmp:
        for split in SPLITS:
            images, labels, _ = load_split("data/cache", split)
            features = extract_features(model, images, cfg["batch_size"], device, cfg["flip_tta"], desc=split)
            np.save(tmp / f"{split}.npy", features.astype(np.float32))
            np.save(tmp / f"{split}_labels.npy", labels)
        meta = {"backbone": p["backbone"]["name"], "weights": p["backbone"]["weights"],
                "num_features": backbone.num_features}
        (Path(tmp) / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    run(main)
