import numpy as np
import pytest
from sklearn import metrics as skm

from tlpipe.model.decision import threshold_of, threshold_rule
from tlpipe.use.metrics import classification_metrics, expected_calibration_error, majority_baseline
from tlpipe.use.plots import confusion_rows, roc_rows

CLASSES = ["cat", "dog", "fox"]
Y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
PROBS = np.array([
    [0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1],
    [0.1, 0.8, 0.1], [0.3, 0.4, 0.3], [0.5, 0.3, 0.2],
    [0.1, 0.1, 0.8], [0.2, 0.2, 0.6], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4],
])


def test_multiclass_metrics_agree_with_scikit_learn():
    m = classification_metrics(Y, PROBS, CLASSES)
    predicted = PROBS.argmax(1)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(Y, predicted))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(Y, predicted, average="macro"))
    assert m["macro_precision"] == pytest.approx(skm.precision_score(Y, predicted, average="macro"))
    assert m["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(Y, predicted), abs=1e-6)
    assert m["quadratic_kappa"] == pytest.approx(skm.cohen_kappa_score(Y, predicted, weights="quadratic"), abs=1e-6)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(Y, PROBS, multi_class="ovr"), abs=1e-6)
    assert m["log_loss"] == pytest.approx(skm.log_loss(Y, PROBS), abs=1e-6)
    assert m["per_class"]["fox"]["recall"] == pytest.approx(0.75)
    assert m["per_class"]["dog"]["support"] == 3
    assert "sensitivity" not in m and m["rule"] == {"fitted_for": "argmax"}
    assert {k: v for k, v in m["argmax"].items()} == {k: m[k] for k in m["argmax"]}  # no rule: the same figures


def test_binary_metrics_show_the_rule_beside_argmax():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    score = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.7, 0.8, 0.9])
    probs = np.stack([1 - score, score], axis=1)
    rule = threshold_rule(0.375, "youden")
    assert threshold_of(rule) == pytest.approx(0.375)
    m = classification_metrics(y, probs, ["NORMAL", "PNEUMONIA"], rule)
    assert m["argmax"]["sensitivity"] == pytest.approx(0.75)
    assert m["argmax"]["specificity"] == pytest.approx(1.0)
    assert m["sensitivity"] == pytest.approx(1.0) and m["specificity"] == pytest.approx(1.0)
    assert m["youden"] == pytest.approx(1.0) and m["argmax"]["youden"] == pytest.approx(0.75)
    assert m["rule"]["fitted_for"] == "youden" and m["rule"]["threshold"] == pytest.approx(0.375)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, score))
    assert "roc_auc" not in m["argmax"] and "log_loss" not in m["argmax"]  # threshold-free figures appear once


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(np.array([0, 0, 0, 1]), probs) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1, 1, 1, 1]), probs) == pytest.approx(0.75)


def test_baseline_confusion_and_roc_rows():
    assert majority_baseline(np.array([2, 2, 1]), Y, 3)["accuracy"] == pytest.approx(0.4)
    assert confusion_rows(np.array([0, 2]), np.array([1, 2]), CLASSES) == [
        {"actual": "cat", "predicted": "dog"}, {"actual": "fox", "predicted": "fox"}]
    rows = roc_rows(Y, PROBS)
    assert rows[0] == {"fpr": 0.0, "tpr": 0.0} and rows[-1] == {"fpr": 1.0, "tpr": 1.0}


def test_undefined_auc_is_null_not_nan():
    m = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]]), CLASSES)
    assert m["roc_auc"] is None
