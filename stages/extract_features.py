"""extract-features: the frozen backbone over data/cache/ -> data/features/{split}.npy (float32), and with
features.spatial_grid > 0 its last feature map average-pooled to that grid, {split}_spatial.npy (float16);
both written batch by batch."""

from contextlib import nullcontext

import numpy as np
from torch import nn

from tlpipe import params
from tlpipe.atomic import atomic_path, write_json
from tlpipe.model.backbones import create_backbone
from tlpipe.model.classifier import Classifier
from tlpipe.data.cache import load_preprocess, load_split
from tlpipe.distributed import finish, from_env, init, process_count, relaunch
from tlpipe.train.features import extract_features
from tlpipe.runtime import share_cpu, tune_malloc
from tlpipe.data import SPLITS
from tlpipe.stage import run, wall_s


def main() -> None:
    tune_malloc()
    share_cpu()
    p = params.load()
    cfg = p.features
    relaunch("features", process_count(cfg.processes, cfg.device))  # under torchrun, when asked
    ranks = from_env()
    device = init(cfg.device, ranks)
    backbone = create_backbone(p.backbone.name, p.backbone.weights)
    model = Classifier(backbone.body, nn.Identity(), backbone.mean, backbone.std)
    size = load_preprocess("data/cache")["size"]
    if size != backbone.input_size and ranks.is_main:  # said once, here: the first stage that sees both
        print(f"extract-features: {p.backbone.name} was trained on {backbone.input_size} px images; the cache "
              f"is {size} px (resize.size). Allowed; resize.size: {backbone.input_size} matches the weights.")
    spatial = None
    if cfg.spatial_grid:
        maps = create_backbone(p.backbone.name, p.backbone.weights, spatial=True)
        spatial = Classifier(maps.body, nn.AdaptiveAvgPool2d(cfg.spatial_grid), maps.mean, maps.std)
    # rank 0 writes; the other ranks (under torchrun) compute their share and write nothing
    with (atomic_path("data/features", directory=True) if ranks.is_main else nullcontext(None)) as tmp:
        for split in SPLITS:
            images, labels, _ = load_split("data/cache", split, paths=False)
            extract_features(model, images, cfg.batch_size, device, cfg.flip_tta, desc=split,
                             out=tmp and tmp / f"{split}.npy", ranks=ranks)
            if spatial is not None:  # the last feature map on a small grid, float16, for attention heads
                extract_features(spatial, images, cfg.batch_size, device, cfg.flip_tta, desc=f"{split} maps",
                                 out=tmp and tmp / f"{split}_spatial.npy", dtype=np.float16, ranks=ranks)
            if tmp is not None:
                np.save(tmp / f"{split}_labels.npy", labels)
        finish(ranks)
        if tmp is None:
            return
    # Timing apart from data/features, so that a rerun with the same features changes nothing downstream.
    write_json("metrics/features.json", {"num_features": backbone.num_features, "wall_s": wall_s()})


if __name__ == "__main__":
    run(main)
