"""train-head: a classifier on the frozen features -> models/head.pt + metrics + curve."""

import time

from tlpipe import params
from tlpipe.atomic import write_json
from tlpipe.data.cache import load_classes, load_features, load_groups, load_spatial_features, load_split
from tlpipe.model.modelfile import save_checkpoint
from tlpipe.train.head import train_head
from tlpipe.runtime import share_cpu
from tlpipe.train.sample import bounded_sample, take_rows
from tlpipe.stage import run


def main() -> None:
    started = time.perf_counter()
    share_cpu()
    p = params.load()
    cfg = p.head
    x, y = load_features("data/features", "train")
    x_val, y_val = load_features("data/features", "val")
    if cfg.kind == "attention":  # attention pools the feature maps, not the pooled features
        x, x_val = load_spatial_features("data/features", "train"), load_spatial_features("data/features", "val")
    rows = bounded_sample(y, cfg.max_fit_images, cfg.seed)  # large sets: a stratified sample (params.yaml)
    x, y = take_rows(x, rows), y[rows]
    val_groups = load_groups(load_split("data/cache", "val")[2]["path"])  # feature rows are the cache's rows
    checkpoint, metrics, curve = train_head(cfg, x, y, x_val, y_val, load_classes("data/cache"),
                                          p.evaluate.decision_metric, val_groups)
    save_checkpoint(checkpoint, "models/head.pt")
    write_json("metrics/train_head.json", metrics | {"wall_s": round(time.perf_counter() - started, 1)})
    write_json("plots/train_head/curve.json", curve)
    chosen = "".join(f", {k} {v:g} (chosen on validation)" for k, v in metrics.get("chosen_on_val", {}).items()
                     if k == "C")
    print(f"train-head ({cfg.kind}, fitted on {len(y)} training images): "
          f"val accuracy {metrics['val']['accuracy']:.4f}{chosen}; decision rule fitted for "
          f"{metrics['rule']['fitted_for']}: val {metrics['rule']['val_under_rule']} (argmax {metrics['rule']['val_under_argmax']})")


if __name__ == "__main__":
    run(main)
