"""evaluate: the head model and the fine-tuned model on val and test -> metrics + plot data."""

import numpy as np
import pandas as pd
import torch

from tlpipe import params
from tlpipe.atomic import atomic_path, write_json
from tlpipe.cache import load_classes, load_split
from tlpipe.evaluation import (classification_metrics, confusion_rows, decide, majority_baseline, pr_rows,
                               roc_rows, tune_threshold)
from tlpipe.finetune import load_model, predict_logits
from tlpipe.heads import load_head, predict_proba
from tlpipe.runtime import pick_device, tune_malloc
from tlpipe.stage import run


def _finetuned_probs(model: torch.nn.Module, cfg: dict, split: str) -> np.ndarray:
    device = pick_device(cfg["device"])
    images, _, _ = load_split("data/cache", split)
    logits = predict_logits(model.to(device), images, cfg["batch_size"], device, flip_tta=cfg["flip_tta"])
    return torch.softmax(logits, 1).double().numpy()


def _write_predictions(path: str, index: pd.DataFrame, probs: np.ndarray, classes: list[str],
                       threshold: float | None) -> None:
    table = index[["path", "label"]].copy()
    table["predicted"] = [classes[i] for i in decide(probs, threshold)]
    for i, name in enumerate(classes):
        table[f"prob_{name}"] = probs[:, i]
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n", float_format="%.6f")


def _accuracy_text(metrics: dict) -> str:
    text = f"{metrics['accuracy']:.4f}"
    if "at_val_threshold" in metrics:
        text += f" (at the validated threshold {metrics['at_val_threshold']['accuracy']:.4f})"
    return text


def main() -> None:
    tune_malloc()
    cfg = params.load()["evaluate"]
    classes = load_classes("data/cache")
    head = load_head(torch.load("models/head.pt", map_location="cpu", weights_only=True))
    finetuned, _ = load_model("models/model.pt")
    _, train_labels, _ = load_split("data/cache", "train")
    report = {"baseline": {}, "head": {}, "finetune": {}}
    for model_name in ("head", "finetune"):
        probs, labels, indexes = {}, {}, {}
        for split in ("val", "test"):
            _, labels[split], indexes[split] = load_split("data/cache", split)
            if model_name == "head":
                probs[split] = predict_proba(head, np.load(f"data/features/{split}.npy"))
            else:
                probs[split] = _finetuned_probs(finetuned, cfg, split)
        threshold = tune_threshold(labels["val"], probs["val"][:, 1]) if len(classes) == 2 else None
        for split in ("val", "test"):
            report[model_name][split] = classification_metrics(labels[split], probs[split], classes, threshold)
            report["baseline"][split] = majority_baseline(train_labels, labels[split], len(classes))
            predicted = decide(probs[split], threshold)
            write_json(f"plots/evaluate/confusion_{model_name}_{split}.json",
                       confusion_rows(labels[split], predicted, classes))
            if model_name == "finetune":
                write_json(f"plots/evaluate/roc_{split}.json", roc_rows(labels[split], probs[split]))
                write_json(f"plots/evaluate/pr_{split}.json", pr_rows(labels[split], probs[split]))
            _write_predictions(f"data/predictions/{model_name}_{split}.csv", indexes[split], probs[split], classes,
                               threshold)
    write_json("metrics/evaluate.json", report)
    test = report["finetune"]["test"]
    print(f"evaluate: test accuracy fine-tuned {_accuracy_text(test)}, head {_accuracy_text(report['head']['test'])}")


if __name__ == "__main__":
    run(main)
