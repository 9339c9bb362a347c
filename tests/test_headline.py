"""metrics/headline.json: one name per figure, under the model's decision rule."""

from tlpipe.use.headline import headline, under_rule


def split_metrics(accuracy, **extra):
    return {"n": 10, "accuracy": accuracy, "balanced_accuracy": accuracy - 0.1, "roc_auc": 0.9, "log_loss": 0.3,
            "cohen_kappa": 0.5, "per_class": {"a": {"recall": 1.0}}, **extra}


def test_plain_names_are_the_rule_and_argmax_is_named_as_such():
    # The agreed layout: plain names under the stored rule, the argmax figures in `argmax`.
    rule = under_rule(split_metrics(0.9, sensitivity=0.95, specificity=0.8, argmax=split_metrics(0.85)))
    assert rule["accuracy"] == 0.9 and rule["accuracy_argmax"] == 0.85
    assert rule["sensitivity"] == 0.95 and rule["specificity"] == 0.8
    assert "per_class" not in rule and "n" not in rule


def test_multiclass_argmax_model_has_one_accuracy():
    rule = under_rule(split_metrics(0.7))
    assert rule["accuracy"] == 0.7 and "accuracy_argmax" not in rule and "sensitivity" not in rule


def test_headline_is_small_and_flat_enough_for_one_screen():
    evaluate = {model: {split: split_metrics(0.8, sensitivity=0.9, specificity=0.7, argmax=split_metrics(0.75))
                        for split in ("val", "test")} for model in ("head", "finetune")}
    evaluate["baseline"] = {"val": {"accuracy": 0.5}, "test": {"accuracy": 0.5}}
    timings = {"finetune": {"wall_s": 12.5}, "evaluate": {"wall_s": 3.0}, "split": {}}
    result = headline(evaluate, {"best_epoch": 3, "lr": 0.001, "train_images_per_s": 50}, timings)
    leaves = []

    def walk(node, prefix=""):
        for key, value in node.items():
            walk(value, f"{prefix}{key}.") if isinstance(value, dict) else leaves.append(prefix + key)

    walk(result)
    assert len(leaves) <= 32, leaves
    assert len(set(leaves)) == len(leaves)
    assert result["finetuned"]["best_epoch"] == 3 and result["wall_s"] == {"finetune": 12.5, "evaluate": 3.0}
    assert not [leaf for leaf in leaves if "lr" in leaf.split(".") or "images_per_s" in leaf]
    assert "finetuned.test.accuracy_argmax" in leaves and "finetuned.val.sensitivity" in leaves
