"""report: pictures of the fine-tuned model on the test split -> plots/report/ (shown by `dvc plots show`)."""

import numpy as np
import pandas as pd

from tlpipe import params
from tlpipe.atomic import atomic_path, write_json
from tlpipe.data.cache import load_split
from tlpipe.errors import TlpipeError
from tlpipe.model.decision import describe, threshold_of
from tlpipe.model.modelfile import load_model
from tlpipe.use.plots import reliability_rows
from tlpipe.use.predictions import label_indices, probabilities, read_table
from tlpipe.runtime import share_cpu
from tlpipe.use.report import gradcam_examples, grad_cam, grid, most_confused, overlay, top_losses
from tlpipe.stage import run


def _caption(row: pd.Series, classes: list[str], rule: dict | None) -> str:
    """The truth, the decision, and what explains the decision under the model's rule."""
    threshold = threshold_of(rule)
    if threshold is not None and describe(rule, classes) != "argmax":
        # Binary with a threshold fitted on validation: the positive class's probability against it.
        positive = classes[1]
        return f"true {row['label']}\npred {row['predicted']}\nP({positive}) {row[f'prob_{positive}']:.2f} vs {threshold:.2f}"
    top = max(classes, key=lambda c: row[f"prob_{c}"])
    text = f"true {row['label']}\npred {row['predicted']} p={row['prob_' + row['predicted']]:.2f}"
    # The rule's offsets can decide another class than the most probable one: say which.
    return text + (f"\nargmax {top}" if top != row["predicted"] else "")


def _save_png(image, path: str) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def main() -> None:
    share_cpu()
    cfg = params.load().report
    model, meta = load_model("models/model.pt")
    classes = meta["classes"]
    rule = meta["rule"]
    images, _, index = load_split("data/cache", "test")
    predictions = read_table("data/predictions/finetune_test.csv")
    if list(predictions["path"]) != list(index["path"]):
        raise TlpipeError("data/predictions/finetune_test.csv is not in the order of data/cache/test.csv; "
                           "run `dvc repro evaluate`.")

    worst = top_losses(predictions, classes, cfg.top_losses)
    _save_png(grid([(np.asarray(images[r["row"]]), f"{_caption(r, classes, rule)}\nloss {r['loss']:.2f}")
                    for _, r in worst.iterrows()] or
                   [(np.zeros((8, 8, 3), np.uint8), "no test images")]),
              "plots/report/top_losses.png")

    examples = gradcam_examples(predictions, classes, cfg.gradcam_per_class)
    tiles = []
    if len(examples):
        rows = examples["row"].to_numpy()
        target = [classes.index(c) for c in examples["predicted"]]
        heat = grad_cam(model, np.asarray(images[rows]), target)
        tiles = [(overlay(np.asarray(images[r["row"]]), h), _caption(r, classes, rule)) for (_, r), h in zip(examples.iterrows(), heat)]
    _save_png(grid(tiles or [(np.zeros((8, 8, 3), np.uint8), "no test images")], colour_scale=bool(tiles)),
              "plots/report/gradcam.png")

    write_json("plots/report/most_confused.json", most_confused(predictions))
    write_json("plots/report/reliability.json",
               reliability_rows(label_indices(predictions, classes), probabilities(predictions, classes)))
    print(f"report: {len(worst)} top losses, {len(tiles)} Grad-CAM images -> plots/report/")


if __name__ == "__main__":
    run(main)
