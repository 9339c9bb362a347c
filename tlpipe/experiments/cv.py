"""`tlpipe cv`: k-fold cross-validation as k DVC experiments, and their aggregate.

Fold I is one experiment of the pipeline up to evaluate, `dvc exp run --queue -n cv-ID-fold-I
-S split.folds=K -S split.fold=I evaluate`. Its split stage keeps the test split exactly as without
folds and makes fold I of the rest the validation split, so every choice of that run (C, the
checkpoint, the decision rule, lr: auto) is made on its own fold; the test split is read by
evaluate alone. Stages a fold shares with an earlier run come from DVC's run-cache: after a change
to finetune.* each fold reruns finetune and evaluate, nothing upstream.

The aggregate reads, at each fold's experiment commit, metrics/evaluate.json and the validation
predictions (data/predictions/*_val.csv), and writes:
- every test figure of each model per fold, with mean, standard deviation, min and max: the spread
  says how much of a figure is the luck of which images landed in validation;
- the out-of-fold predictions: every image outside the test split, predicted by the one fold model
  that did not train on it (under that fold's rule), and the figures on them.
"""

import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tlpipe.atomic import atomic_path
from tlpipe.errors import TlpipeError
from tlpipe.experiments.compare import experiments, file_at
from tlpipe.experiments.queue import run_queued, stages_run
from tlpipe.use.metrics import classification_metrics, decision_figures
from tlpipe.use.predictions import probabilities, probability_columns

MODELS = ("head", "finetune")
PIPELINE = ("download", "split", "resize", "extract-features", "train-head", "finetune", "evaluate")
# the figures of each model's test split that the aggregate carries (under its rule; `argmax_*` without)
FIGURES = ("accuracy", "balanced_accuracy", "macro_f1", "cohen_kappa", "sensitivity", "specificity",
           "roc_auc", "log_loss", "ece")
TABLE_FIGURES = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")


def fold_names(folds: int, run_id: str) -> list[str]:
    return [f"cv-{run_id}-fold{index}" for index in range(folds)]


def run_folds(folds: int, jobs: int, cwd: Path = Path("."), timeout_s: float = 24 * 3600, log=print) -> list[str]:
    """Queue and run one experiment per fold; returns their names."""
    if folds < 2:
        raise TlpipeError(f"cv: --folds must be at least 2, got {folds}.")
    names = fold_names(folds, time.strftime("%Y%m%d-%H%M%S"))
    log(f"cv: {folds} folds queued as {names[0]}..{names[-1].rsplit('-', 1)[1]} (each: the pipeline up to "
        "evaluate, its choices made on its own validation fold)")
    run_queued({name: ["-S", f"split.folds={folds}", "-S", f"split.fold={index}"] for index, name in enumerate(names)},
               "evaluate", jobs, cwd, "cv", timeout_s)
    return names


def _read_csv_at(rev: str, path: str, cwd: Path) -> pd.DataFrame | None:
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        text = dvc.api.read(path, repo=str(cwd), rev=rev)
    except (DvcException, FileNotFoundError, OSError):
        return None
    return pd.read_csv(io.StringIO(text), dtype={"path": str, "label": str, "predicted": str}, keep_default_na=False)


def _test_figures(figures: dict) -> dict:
    flat = {name: figures.get(name) for name in FIGURES}
    flat |= {f"argmax_{name}": (figures.get("argmax") or {}).get(name) for name in ("accuracy", "balanced_accuracy")}
    return flat


def _spread(values: list) -> dict:
    present = [v for v in values if v is not None]
    if not present:
        return {"folds": values, "mean": None, "sd": None, "min": None, "max": None}
    sd = float(np.std(present, ddof=1)) if len(present) > 1 else None
    return {"folds": values, "mean": round(float(np.mean(present)), 6), "sd": None if sd is None else round(sd, 6),
            "min": min(present), "max": max(present)}


def out_of_fold_figures(table: pd.DataFrame, classes: list[str]) -> dict:
    """Figures of the out-of-fold predictions: the decisions as each fold's rule made them, the
    probability figures (log loss, ROC AUC) over all of them."""
    index = {name: i for i, name in enumerate(classes)}
    y_true = table["label"].map(index).to_numpy()
    probs = probabilities(table, classes)
    figures = decision_figures(y_true, table["predicted"].map(index).to_numpy(), classes)
    scored = classification_metrics(y_true, probs, classes)
    return {"n": len(table)} | {k: v for k, v in figures.items() if k != "per_class"} | {
        "log_loss": scored["log_loss"], "roc_auc": scored["roc_auc"], "per_class": figures["per_class"]}


def aggregate(names: list[str], cwd: Path = Path(".")) -> tuple[dict, pd.DataFrame]:
    """The record of every fold and their aggregate, and the out-of-fold predictions table."""
    finished = dict(experiments(cwd, allow_none=True))
    missing = [name for name in names if name not in finished]
    if missing:
        raise TlpipeError(f"cv: {len(missing)} of {len(names)} folds did not finish ({', '.join(missing)}); "
                          "`dvc queue logs NAME` shows why.")
    folds, tables, test_counts = [], {model: [] for model in MODELS}, set()
    for index, name in enumerate(names):
        rev = finished[name]
        report = file_at(rev, "metrics/evaluate.json", cwd)
        split = file_at(rev, "metrics/split.json", cwd)
        if report is None or split is None:
            raise TlpipeError(f"cv: fold {name} has no metrics/evaluate.json or metrics/split.json in the DVC cache; "
                              "`dvc queue logs NAME` shows whether it ran to the end.")
        test_counts.add(json.dumps(split["counts"].get("test"), sort_keys=True))
        classes = list(report["finetune"]["test"]["per_class"])
        folds.append({"name": name, "rev": rev, "val_images": split["total"]["val"],
                      "stages_run": stages_run(name, cwd, list(PIPELINE)),
                      **{model: {"test": _test_figures(report[model]["test"]),
                                 "val": _test_figures(report[model]["val"])} for model in MODELS}})
        for model in MODELS:
            table = _read_csv_at(rev, f"data/predictions/{model}_val.csv", cwd)
            if table is None:
                raise TlpipeError(f"cv: fold {name} has no data/predictions/{model}_val.csv in the DVC cache.")
            tables[model].append(table.assign(fold=index, model=model))
    if len(test_counts) != 1:  # the split stage keeps the test split whatever the fold; this checks it did
        raise TlpipeError(f"cv: the folds' test splits differ ({sorted(test_counts)}); they must be one split.")
    record = {"folds": len(names), "classes": classes, "runs": folds,
              "test": {model: {figure: _spread([f[model]["test"][figure] for f in folds])
                               for figure in folds[0][model]["test"]} for model in MODELS}}
    oof = pd.concat([t for model in MODELS for t in tables[model]], ignore_index=True)
    record["out_of_fold"] = {model: out_of_fold_figures(oof[oof["model"] == model], classes) for model in MODELS}
    duplicated = oof[oof["model"] == "finetune"]["path"].duplicated()
    if duplicated.any():
        raise TlpipeError(f"cv: {int(duplicated.sum())} images are in the validation split of two folds (e.g. "
                          f"{oof['path'][duplicated.index[duplicated]].iloc[0]}); the folds must not overlap.")
    columns = ["model", "fold", "path", "label", "predicted", *probability_columns(classes)]
    return record, oof[columns]


def _cell(spread: dict) -> str:
    if spread["mean"] is None:
        return "n/a"
    return f"{spread['mean']:.4f} ± {spread['sd']:.4f}" if spread["sd"] is not None else f"{spread['mean']:.4f}"


def markdown(record: dict) -> str:
    """Test figures per fold and mean ± SD, then the out-of-fold figures, for each model."""
    k = record["folds"]
    lines = [f"| model | test figure | {' | '.join(f'fold {i}' for i in range(k))} | mean ± SD |",
             "|---" * (k + 3) + "|"]
    for model in MODELS:
        for figure in TABLE_FIGURES:
            spread = record["test"][model][figure]
            cells = ["n/a" if v is None else f"{v:.4f}" for v in spread["folds"]]
            lines.append(f"| {model} | {figure} | {' | '.join(cells)} | {_cell(spread)} |")
    lines += ["", "| model | out-of-fold figure | value |", "|---|---|---|"]
    for model in MODELS:
        oof = record["out_of_fold"][model]
        for figure in TABLE_FIGURES:
            value = oof.get(figure)
            lines.append(f"| {model} | {figure} (n={oof['n']}) | "
                         f"{'n/a' if value is None or math.isnan(value) else f'{value:.4f}'} |")
    return "\n".join(lines) + "\n"


def write(record: dict, oof: pd.DataFrame, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"record": out / "cv.json", "table": out / "cv.md", "out_of_fold": out / "oof_predictions.csv"}
    with atomic_path(paths["record"]) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    with atomic_path(paths["table"]) as tmp:
        tmp.write_text(markdown(record))
    with atomic_path(paths["out_of_fold"]) as tmp:
        oof.to_csv(tmp, index=False, lineterminator="\n", float_format="%.6f")
    return paths
