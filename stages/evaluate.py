"""evaluate: the head model and the fine-tuned model on val and test -> metrics + plot data.

Each model is judged under the decision rule stored in its own file (chosen on validation by the
stage that trained it). The one choice made here is the ensemble's rule, fitted on validation
predictions alone (tlpipe.use.ensemble); the test split is only ever scored."""


from tlpipe import params
from tlpipe.atomic import write_json
from tlpipe.data.cache import load_classes, load_groups, load_head_inputs, load_split
from tlpipe.model.decision import decide
from tlpipe.model.inference import feature_probabilities, image_probabilities
from tlpipe.model.modelfile import load_head, load_model
from tlpipe.distributed import finish, from_env, init, process_count, relaunch
from tlpipe.runtime import share_cpu, tune_malloc
from tlpipe.stage import run, wall_s
from tlpipe.use.ensemble import ensemble_report
from tlpipe.use.metrics import classification_metrics, intervals, majority_baseline
from tlpipe.use.plots import confusion_rows, pr_rows, roc_rows
from tlpipe.use.predictions import make_table, write_table
from tlpipe.use.prior_shift import prior_adjusted_figures


def _summary(metrics: dict, rule: dict | None) -> str:
    """The decision metric's figure under the rule and under argmax, and accuracy both ways."""
    def both(name: str) -> str:
        value, argmax = metrics[name], metrics["argmax"][name]
        return (f"{name} {'n/a' if value is None else f'{value:.4f}'} "
                f"(argmax {'n/a' if argmax is None else f'{argmax:.4f}'})")

    name = rule["metric"] if rule else "accuracy"
    return both(name) + (f", {both('accuracy')}" if name != "accuracy" else "")


def main() -> None:
    tune_malloc()
    share_cpu()
    cfg = params.load().evaluate
    relaunch("evaluate", process_count(cfg.processes, cfg.device))  # under torchrun, when asked
    ranks = from_env()
    device = init(cfg.device, ranks)
    classes = load_classes("data/cache")
    head, head_meta = load_head("models/head.pt")
    finetuned, model_meta = load_model("models/model.pt")
    if not ranks.is_main:  # the other ranks compute their share of the fine-tuned model's predictions
        for split in ("val", "test"):
            images = load_split("data/cache", split, paths=False)[0]
            image_probabilities(finetuned, images, cfg.batch_size, device, cfg.flip_tta, ranks)
            if cfg.ensemble and not cfg.flip_tta:
                image_probabilities(finetuned, images, cfg.batch_size, device, True, ranks)
        return finish(ranks)
    _, train_labels, _ = load_split("data/cache", "train", paths=False)
    report = {"baseline": {}, "head": {}, "finetune": {}}
    val_probs, seen = {}, {}
    rules = {"head": head_meta["rule"], "finetune": model_meta["rule"]}
    for split in ("val", "test"):
        images, labels, index = load_split("data/cache", split)
        report["baseline"][split] = majority_baseline(train_labels, labels, len(classes))
        probs = {"head": feature_probabilities(head, load_head_inputs("data/features", split, head_meta["head"])),
                 "finetune": image_probabilities(finetuned, images, cfg.batch_size, device, cfg.flip_tta, ranks)}
        if cfg.ensemble:
            seen[split] = (labels, dict(probs))
            if split == "val":
                val_groups = load_groups(index["path"])
            if not cfg.flip_tta:
                seen[split][1]["finetune+flip"] = image_probabilities(finetuned, images, cfg.batch_size, device,
                                                                      True, ranks)
        if split == "val":
            val_probs = probs
        elif cfg.prior_shift:  # opt-in: the test batch's class mix re-estimated without its labels
            for model_name, model_probs in probs.items():
                report[model_name]["test_prior_adjusted"] = prior_adjusted_figures(
                    val_probs[model_name], model_probs, labels, classes)
        groups = load_groups(index["path"]) if split == "test" else None
        for model_name, model_probs in probs.items():
            rule = rules[model_name]
            report[model_name][split] = classification_metrics(labels, model_probs, classes, rule)
            if split == "test":  # every test figure with its 95% interval, patients resampled whole
                report[model_name][split]["interval_95"] = intervals(labels, model_probs, classes, rule, groups)
            rows = confusion_rows(labels, decide(model_probs, rule), classes, cfg.confusion_max_rows)
            write_json(f"plots/evaluate/confusion_{model_name}_{split}.json", rows)
            report[model_name][split]["confusion_plot_rows"] = {"rows": len(rows), "images": len(labels)}
            write_table(make_table(index["path"], model_probs, classes, rule, labels=index["label"]),
                        f"data/predictions/{model_name}_{split}.csv")
        write_json(f"plots/evaluate/roc_{split}.json", roc_rows(labels, probs["finetune"]))
        write_json(f"plots/evaluate/pr_{split}.json", pr_rows(labels, probs["finetune"]))
    finish(ranks)
    if cfg.ensemble:
        report["ensemble"] = ensemble_report(seen, classes, cfg.decision_metric, train_labels, val_groups)
    write_json("metrics/evaluate.json", report | {"wall_s": wall_s()})
    print(f"evaluate: test, under each model's decision rule: fine-tuned "
          f"{_summary(report['finetune']['test'], rules['finetune'])}; head {_summary(report['head']['test'], rules['head'])}")


if __name__ == "__main__":
    run(main)
