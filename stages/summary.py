"""summary: the run in brief -> metrics/headline.json (the figures runs are compared by) and
reports/summary.html (one self-contained page: headline, charts, pictures, params, split)."""

import csv
import json
from pathlib import Path

from tlpipe import params
from tlpipe.atomic import atomic_path, write_json
from tlpipe.errors import TlpipeError
from tlpipe.stage import run
from tlpipe.use.headline import TIMED, headline
from tlpipe.use import report_page

CURVES = Path("live/finetune/plots/metrics/training")
SHOWN_PARAMS = ("data.source", "backbone.name", "backbone.weights", "resize.size", "resize.mode", "resize.contrast",
                "head.kind", "head.C", "finetune.epochs", "finetune.freeze_epochs", "finetune.lr",
                "finetune.batch_size", "finetune.class_balance", "finetune.early_stop_metric", "evaluate.flip_tta")


def _read(path: Path):
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else list(csv.DictReader(text.splitlines(), delimiter="\t"))
    except FileNotFoundError:
        raise TlpipeError(f"{path}: missing. It is made by an earlier stage; run `dvc repro`.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TlpipeError(f"{path}: empty or damaged ({error}); run `dvc repro --force` on its stage.") from None


def _curve(name: str) -> list[dict]:
    return [{"epoch": int(row["step"]), name: float(row[name])} for row in _read(CURVES / f"{name}.tsv")]


def charts() -> list[str]:
    evaluate = Path("plots/evaluate")
    drawn = [report_page.confusion_svg(_read(evaluate / f"confusion_finetune_{split}.json"),
                                       f"fine-tuned model, {split}") for split in ("val", "test")]
    roc = {split: _read(evaluate / f"roc_{split}.json") for split in ("val", "test")}
    if any(roc.values()):
        drawn.append(report_page.lines_svg(roc, "fpr", "tpr", "ROC", "false positive rate", "true positive rate"))
    losses = {"train": [{"epoch": r["epoch"], "loss": r["train_loss"]} for r in _curve("train_loss")],
              "val": [{"epoch": r["epoch"], "loss": r["val_loss"]} for r in _curve("val_loss")]}
    drawn.append(report_page.lines_svg(losses, "epoch", "loss", "fine-tuning loss", "epoch", "cross-entropy"))
    return drawn


def main() -> None:
    p = params.load()
    metrics = Path("metrics")
    timings = {name: _read(metrics / f"{name}.json") for name in TIMED}
    result = headline(timings["evaluate"], timings["finetune"], timings)
    write_json(metrics / "headline.json", result)
    shown = {key: p.value(key) for key in SHOWN_PARAMS}
    pictures = {"A training batch as the model sees it (augmented)": "plots/finetune/batch.png",
                "Test images with the highest loss": "plots/report/top_losses.png",
                "Grad-CAM: where the model looked (right and wrong, per class)": "plots/report/gradcam.png"}
    images = {caption: Path(path).read_bytes() for caption, path in pictures.items() if Path(path).is_file()}
    finetune = timings["finetune"]
    choices = {"Decision rule (chosen on validation)": finetune["rule"].get("why") or "argmax",
               "Checkpoint kept": f"epoch {finetune['best_epoch']}, {finetune.get('kept_because', 'the best epoch')}"}
    page = report_page.page(f"tlpipe run: {p.backbone.name} on {p.data.source}", result, shown,
                            timings["split"], charts(), images, _read(metrics / "data.json"), choices,
                            _read(Path("plots/report/most_confused.json")))
    with atomic_path("reports/summary.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    val, test = result["finetuned"]["val"], result["finetuned"]["test"]
    print(f"summary: fine-tuned balanced accuracy val {val['balanced_accuracy']}, test {test['balanced_accuracy']} "
          "-> metrics/headline.json, reports/summary.html")


if __name__ == "__main__":
    run(main)
