"""train-head: a classifier on the frozen features -> models/head.pt + metrics + curve."""

import numpy as np
import torch

from tlpipe import params
from tlpipe.atomic import atomic_path, write_json
from tlpipe.data.cache import load_classes
from tlpipe.train.head import train_head
from tlpipe.stage import run


def main() -> None:
    cfg = params.load()["head"]
    x, y = np.load("data/features/train.npy"), np.load("data/features/train_labels.npy")
    x_val, y_val = np.load("data/features/val.npy"), np.load("data/features/val_labels.npy")
    checkpoint, metrics, curve = train_head(cfg, x, y, x_val, y_val, load_classes("data/cache"))
    with atomic_path("models/head.pt") as tmp:
        torch.save(checkpoint, tmp)
    write_json("metrics/train_head.json", metrics)
    write_json("plots/train_head/curve.json", curve)
    print(f"train-head ({cfg['kind']}): val accuracy {metrics['val']['accuracy']:.4f}")


if __name__ == "__main__":
    run(main)
