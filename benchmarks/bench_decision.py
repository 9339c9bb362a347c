"""Decision rules on a synthetic imbalanced problem, and the argmax / rule table of a real run.

    python benchmarks/bench_decision.py                         # synthetic 70/20/10, prints the table
    python benchmarks/bench_decision.py --metrics metrics/evaluate.json   # a run's test figures

Synthetic: three overlapping unit-variance Gaussian classes (70/20/10), a logistic regression
trained with class weights of power 0 (none), 0.5 (tlpipe's default) and 1 (balanced), and on a
20,000-image test draw the metric under argmax, under each family of rules fitted on validation
(prior correction alone, own offsets), and under the rule tlpipe keeps (the family that wins on
held-out halves of validation), averaged over 10 validation draws of each size.
"""

import argparse
import json

import numpy as np
from sklearn.linear_model import LogisticRegression

from tlpipe.model.decision import decide, metric_value
from tlpipe.model.decision_fit import fit_rule
from tlpipe.train.head import class_weights

PRIOR = [0.7, 0.2, 0.1]
MEANS = np.array([[0.0, 0.0], [1.3, 0.0], [0.0, 1.3]])


def draw(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=PRIOR)
    return rng.normal(size=(n, 2)) + MEANS[y], y


def synthetic(seeds: int) -> None:
    x_train, y_train = draw(3000, 0)
    x_test, y_test = draw(20000, 2)
    print("| training weights | validation images | metric | argmax | prior correction | own offsets | **kept rule** |")
    print("|---|---|---|---|---|---|---|")
    for power in (0.0, 0.5, 1.0):
        weights = class_weights(y_train, 3, power)
        model = LogisticRegression(class_weight=dict(enumerate(weights))).fit(x_train, y_train)
        test_probs = model.predict_proba(x_test)
        for n_val in (150, 1200):
            for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
                scores = {"argmax": [], "prior": [], "own": [], "kept": []}
                for seed in range(seeds):
                    x_val, y_val = draw(n_val, 100 + seed)
                    val_probs = model.predict_proba(x_val)
                    for family in ("prior", "own", None):
                        rule = fit_rule(y_val, val_probs, metric, y_train, family=family)
                        scores[family or "kept"].append(metric_value(metric, y_test, decide(test_probs, rule), 3))
                    scores["argmax"].append(metric_value(metric, y_test, test_probs.argmax(1), 3))
                cells = " | ".join(f"{np.mean(scores[k]):.3f}" for k in ("argmax", "prior", "own"))
                print(f"| power {power:g} | {n_val} | {metric} | {cells} | **{np.mean(scores['kept']):.3f}** |")


def run_table(path: str) -> None:
    report = json.loads(open(path).read())
    print("| model (test split) | rule fitted for | | accuracy | balanced accuracy | macro F1 |")
    print("|---|---|---|---|---|---|")
    for model in ("head", "finetune"):
        test = report[model]["test"]
        for name, figures in (("argmax", test["argmax"]), ("rule", test)):
            cells = " | ".join(f"{figures[k]:.3f}" for k in ("accuracy", "balanced_accuracy", "macro_f1"))
            print(f"| {model} | {test['rule']['fitted_for']} | {name} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", help="print the test figures of this metrics/evaluate.json instead")
    parser.add_argument("--seeds", type=int, default=10, help="validation draws per cell (default: %(default)s)")
    args = parser.parse_args()
    run_table(args.metrics) if args.metrics else synthetic(args.seeds)


if __name__ == "__main__":
    main()
