"""The headline of a run: the few figures runs are compared by, in one small flat metrics file.

`metrics/headline.json` is the one results file dvc.yaml declares as a metric (with the live
training metrics and the data's identity, metrics/data.json), so `dvc metrics show`,
`dvc metrics diff` and `dvc exp show` fit one screen. The detailed files (metrics/evaluate.json:
every model x split x metric x class; split.json, ...) stay beside it as plain outputs:
`dvc metrics show metrics/evaluate.json` still reads them.

One name per figure: accuracy, balanced accuracy, sensitivity and specificity are those of the
decision rule the model file stores (the one `predict` and the confusion matrices use); the
argmax accuracy is kept beside them as `accuracy_argmax` where the rule differs from argmax.
Throughput and learning rates are not headline figures (they vary run to run); wall times are,
per stage, under `wall_s`.
"""

FIGURES = ("accuracy", "balanced_accuracy", "roc_auc", "log_loss", "cohen_kappa")
RULE_ONLY = ("sensitivity", "specificity")   # binary tasks
HEAD_FIGURES = ("accuracy", "balanced_accuracy", "roc_auc")
TIMED = ("split", "resize", "features", "train_head", "finetune", "evaluate")  # metrics/NAME.json


def under_rule(metrics: dict) -> dict:
    """The figures of one model on one split under its stored decision rule, plus argmax accuracy.

    Plain names are under the rule; an `argmax` sub-dict holds the argmax figures."""
    rule, argmax = metrics, metrics.get("argmax")
    out = {name: rule.get(name) for name in FIGURES}
    out |= {name: rule[name] for name in RULE_ONLY if rule.get(name) is not None}
    if argmax is not None:
        out["accuracy_argmax"] = argmax.get("accuracy")
    return out


def headline(evaluate: dict, finetune: dict, timings: dict[str, dict]) -> dict:
    """evaluate: metrics/evaluate.json; finetune: metrics/finetune.json; timings: {stage: its metrics}."""
    result = {
        "finetuned": {split: under_rule(evaluate["finetune"][split]) for split in ("val", "test")},
        "head": {split: {name: under_rule(evaluate["head"][split])[name] for name in HEAD_FIGURES}
                 for split in ("val", "test")},
        "baseline": {"test": {"accuracy": evaluate["baseline"]["test"]["accuracy"]}},
    }
    for model, key in (("finetuned", "finetune"), ("head", "head")):  # [low, high]: DVC shows no lists,
        band = evaluate[key]["test"].get("interval_95") or {}         # so `dvc metrics diff` stays one screen
        result[model]["test"] |= {f"{name}_95": band[name] for name in result[model]["test"] if band.get(name)}
    result["finetuned"]["best_epoch"] = finetune.get("best_epoch")
    result["wall_s"] = {name: timings[name]["wall_s"] for name in TIMED if "wall_s" in timings.get(name, {})}
    return result
