"""`tlpipe compare` on three queued DVC experiments: the table's numbers are each experiment's own
metrics files, and the chart is written."""

import io
import json

import dvc.api
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ran_stages, run
from tlpipe.experiments import queue

pytestmark = pytest.mark.slow

QUEUE_TIMEOUT_S = 1200


def wait_for_queue(project, names) -> None:
    """Until the experiments have run, starting DVC's workers again where they stopped themselves
    early (tlpipe.experiments.queue, as tune and cv wait)."""
    queue._wait(project, set(names), QUEUE_TIMEOUT_S, "test", restart=lambda: queue.start_workers(2, project, "test"))


def test_compare_three_queued_experiments(tiny_run):
    project = tiny_run
    grid = {"e-head": ["finetune.strategy=head", "finetune.epochs=1"],
            "e-last": ["finetune.strategy=last_blocks", "finetune.unfreeze=2", "finetune.epochs=1"],
            "e-all": ["finetune.strategy=all", "finetune.freeze_epochs=0"]}  # the reference run's 2 epochs
    for name, sets in grid.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, *[arg for s in sets for arg in ("-S", s)]], project)
    queue.start_workers(2, project, "test")  # two at once, as on a GPU box (tlpipe.gpu_slots)
    wait_for_queue(project, grid)
    failed = run(["dvc", "queue", "status"], project).stdout
    assert "Failed" not in failed, failed + run(["dvc", "queue", "logs", "e-head"], project, check=False).stdout
    for name in grid:  # each experiment reran only what its finetune.* params touch
        log = run(["dvc", "queue", "logs", name], project).stdout
        assert ran_stages(log) == ["finetune", "evaluate", "report", "summary"], (name, log[-3000:])

    result = run(["tlpipe", "compare", "--out", "cmp"], project)
    frame = pd.read_csv(project / "cmp" / "comparison.csv")
    assert sorted(frame["experiment"]) == sorted(grid)
    assert "| experiment |" in (project / "cmp" / "comparison.md").read_text()
    assert "e-last" in result.stdout
    for record in frame.to_dict("records"):
        rev = record["rev"]
        # The detailed metrics are DVC-cached outputs (not in Git): read each experiment's own copy.
        shown = lambda path: json.loads(dvc.api.read(path, repo=str(project), rev=rev))  # noqa: E731
        evaluated, finetuned = shown("metrics/evaluate.json"), shown("metrics/finetune.json")
        for split in ("val", "test"):
            figures = evaluated["finetune"][split]
            for column, key in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced_accuracy"),
                                ("log_loss", "log_loss"), ("kappa", "cohen_kappa"), ("roc_auc", "roc_auc")):
                assert record[f"{split}_{column}"] == pytest.approx(figures[key]), (record["experiment"], column)
            f1 = figures.get("macro_f1", figures.get("f1_macro"))
            assert record[f"{split}_macro_f1"] == pytest.approx(f1)
        assert record["finetune_s"] == pytest.approx(finetuned["wall_s"])
        assert record["strategy"] == finetuned["strategy"] == {"e-head": "head", "e-last": "last_blocks",
                                                                "e-all": "all"}[record["experiment"]]
        assert record["epochs"] == (2 if record["experiment"] == "e-all" else 1)
    # the three compared pairwise on the same test images: counts from each one's own predictions
    md = (project / "cmp" / "comparison.md").read_text()
    assert "McNemar" in md and ("not distinguishable" in md or "differ (p <" in md)
    assert "McNemar" in result.stdout
    predictions = {r["experiment"]: pd.read_csv(io.StringIO(dvc.api.read(
        "data/predictions/finetune_test.csv", repo=str(project), rev=r["rev"]))) for r in frame.to_dict("records")}
    pairs = [line for line in md.split("McNemar", 1)[1].splitlines() if line.startswith("| e-")]
    assert len(pairs) == 3
    for line in pairs:
        a, b, n, only_a, only_b = [cell.strip() for cell in line.strip("|").split("|")][:5]
        right = {k: predictions[k]["predicted"].astype(str) == predictions[k]["label"].astype(str) for k in (a, b)}
        assert int(n) == len(predictions[a])
        assert int(only_a) == int((right[a] & ~right[b]).sum()) and int(only_b) == int((right[b] & ~right[a]).sum())
    chart = Image.open(project / "cmp" / "comparison.png")
    assert chart.size[0] >= 480 and len(np.unique(np.asarray(chart.convert("RGB")).reshape(-1, 3), axis=0)) > 4

    # Named revisions work too: the baseline commit alone.
    run(["tlpipe", "compare", "HEAD", "--out", "cmp2"], project)
    assert len(pd.read_csv(project / "cmp2" / "comparison.csv")) == 1
