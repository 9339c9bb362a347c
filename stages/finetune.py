"""finetune: backbone + head end to end from data/cache/ -> models/model.pt + metrics + curves."""

import torch

from tlpipe import params
from tlpipe.atomic import atomic_path, write_json
from tlpipe.model.backbones import create_backbone
from tlpipe.data.cache import load_classes, load_features, load_preprocess, load_split
from tlpipe.model.decision import fit_threshold
from tlpipe.model.inference import image_probabilities
from tlpipe.model.modelfile import model_checkpoint
from tlpipe.train.finetune import Features, Split, build_model, fit
from tlpipe.runtime import pick_device, seed_everything, tune_malloc
from tlpipe.stage import run


def main() -> None:
    tune_malloc()
    p = params.load()
    cfg = p["finetune"]
    seed_everything(cfg["seed"], cfg["deterministic"])
    classes = load_classes("data/cache")
    train_images, train_labels, _ = load_split("data/cache", "train")
    val_images, val_labels, _ = load_split("data/cache", "val")
    backbone = create_backbone(p["backbone"]["name"], p["backbone"]["weights"])
    probe = Features(*load_features("data/features", "train"))
    model = build_model(backbone, len(classes), cfg, probe)
    device = pick_device(cfg["device"])
    result = fit(model, Split(train_images, train_labels), Split(val_images, val_labels), cfg,
                 len(classes), device)
    threshold = None
    if len(classes) == 2:  # the rule is chosen here, on validation, and stored in model.pt for every user of it
        threshold = fit_threshold(val_labels, image_probabilities(model, val_images, cfg["batch_size"] * 2, device))
    checkpoint = model_checkpoint(model.cpu(), p["backbone"]["name"], classes, load_preprocess("data/cache"),
                                  cfg, result.best_epoch, threshold)
    with atomic_path("models/model.pt") as tmp:
        torch.save(checkpoint, tmp)
    best = result.history[result.best_epoch] if result.history else {}
    write_json("metrics/finetune.json", {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                                         **{k: v for k, v in best.items() if k != "step"}})
    write_json("plots/finetune/curve.json", result.history)


if __name__ == "__main__":
    run(main)
