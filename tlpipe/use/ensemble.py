"""Evaluate-time ensembling, chosen on validation: the fine-tuned model alone, with flip TTA, and
averaged with the head on frozen features. The candidate with the lowest validation log loss is
reported; the test split only receives the chosen candidate's figures."""

import numpy as np
from sklearn.metrics import log_loss

from tlpipe.model.decision_fit import fit_rule
from tlpipe.use.metrics import classification_metrics


def candidates(probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """From 'head', 'finetune' and optionally 'finetune+flip' (the mean of the image's and its
    mirror's probabilities) probabilities, every combination tried."""
    out = {"finetune": probs["finetune"], "finetune+head": (probs["finetune"] + probs["head"]) / 2}
    if "finetune+flip" in probs:
        out |= {"finetune+flip": probs["finetune+flip"],
                "finetune+flip+head": (probs["finetune+flip"] + probs["head"]) / 2}
    return out


def choose(val: dict[str, np.ndarray], labels: np.ndarray, num_classes: int) -> tuple[str, dict[str, float]]:
    """The candidate with the lowest validation log loss, and every candidate's loss."""
    losses = {name: float(log_loss(labels, np.clip(p, 1e-12, 1), labels=list(range(num_classes))))
              for name, p in val.items()}
    return min(losses, key=losses.get), losses


def ensemble_report(seen: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]], classes: list[str],
                    decision_metric: str, train_labels: np.ndarray, val_groups: np.ndarray) -> dict:
    """`evaluate.ensemble: true`: the candidate chosen on validation (log loss), its decision rule
    fitted on validation as the single models' are, and its figures on val and test, next to theirs."""
    val_labels, val_probs = seen["val"]
    test_labels, test_probs = seen["test"]
    chosen, losses = choose(candidates(val_probs), val_labels, len(classes))
    val, test = candidates(val_probs)[chosen], candidates(test_probs)[chosen]
    rule = fit_rule(val_labels, val, decision_metric, train_labels, groups=val_groups)  # the rule, on validation
    return {"chosen": chosen, "val_log_loss": losses,
            "val": classification_metrics(val_labels, val, classes, rule),
            "test": classification_metrics(test_labels, test, classes, rule)}
