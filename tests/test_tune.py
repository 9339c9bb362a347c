"""`tlpipe tune`: a search scored on validation alone. Its experiments run the finetune stage only (the
test split is never read), its table holds each experiment's own validation figures, `--apply` writes
the best point into params.yaml, and with the test labels shuffled it makes the same choice from the
same figures."""

import json
import shutil

import dvc.api
import pandas as pd
import pytest
import yaml
from conftest import TINY_RUN, make_dvc_project, make_image_tree, ran_stages, run, set_params

pytestmark = pytest.mark.slow

SPACE = ["--space", "finetune.lr=0.0003,0.01"]


def tune_project(root, images):
    project = make_dvc_project(root)
    set_params(project, **{"data.source": f"path:{images}"}, **TINY_RUN)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "pipeline"], project)
    return project


def tune(project) -> dict:
    result = run(["tlpipe", "tune", *SPACE, "--apply"], project)
    record = json.loads((project / "outputs" / "tune.json").read_text())
    for point in record["points"]:  # each experiment ran up to finetune and no further
        assert point["state"] == "done", point
        log = run(["dvc", "queue", "logs", point["name"]], project).stdout
        assert "evaluate" not in ran_stages(log) and "finetune" in ran_stages(log), log[-2000:]
        shown = run(["dvc", "exp", "show", "--json"], project).stdout
        assert point["name"] in shown
    assert "**best**" in result.stdout
    return record


def test_tune_chooses_on_validation_and_ignores_the_test_labels(tmp_path):
    images = tmp_path / "images"
    make_image_tree(images, {"train/circle": 30, "train/square": 30, "test/circle": 8, "test/square": 8})
    project = tune_project(tmp_path / "project", images)
    first = tune(project)
    scores = [p["score"] for p in first["points"]]
    assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)
    winner = max(first["points"], key=lambda p: (p["score"], -p["val_loss"]))
    assert first["best_values"] == winner["values"]
    applied = yaml.safe_load((project / "params.yaml").read_text())
    assert applied["finetune"]["lr"] == winner["values"]["finetune.lr"]

    # the same search with every test label swapped: the same figures, the same choice
    shutil.move(images / "test" / "circle", images / "test" / "tmp")
    shutil.move(images / "test" / "square", images / "test" / "circle")
    shutil.move(images / "test" / "tmp", images / "test" / "square")
    shuffled = tune(tune_project(tmp_path / "shuffled", images))
    assert shuffled["best_values"] == first["best_values"]
    assert [p["score"] for p in shuffled["points"]] == pytest.approx(scores, abs=1e-9)
    assert [p["val_loss"] for p in shuffled["points"]] == pytest.approx([p["val_loss"] for p in first["points"]],
                                                                        abs=1e-9)


def test_tune_refuses_a_bad_space_with_one_line(dvc_project):
    result = run(["tlpipe", "tune", "--space", "finetune.lr"], dvc_project, check=False)
    assert result.returncode != 0
    assert "is not KEY=VALUE[,VALUE...]" in result.stderr and "Traceback" not in result.stderr


def test_compare_leaves_blank_what_a_tune_point_never_computed(tiny_run):
    """A tune point runs finetune alone: its evaluate.json is its baseline's, so its row shows no
    evaluate figure (a table row carries only figures computed for it), while the baseline's does."""
    project = tiny_run
    run(["tlpipe", "tune", *SPACE], project)
    names = [p["name"] for p in json.loads((project / "outputs" / "tune.json").read_text())["points"]]
    run(["tlpipe", "compare", "--out", "cmp", "HEAD", *names], project)
    rows = {r["experiment"]: r for r in pd.read_csv(project / "cmp" / "comparison.csv").to_dict("records")}
    assert rows["HEAD"]["evaluated"] == "yes" and not pd.isna(rows["HEAD"]["test_accuracy"])
    for name in names:
        assert rows[name]["evaluated"].startswith("no") and pd.isna(rows[name]["test_accuracy"]), rows[name]
        assert pd.isna(rows[name]["val_log_loss"]) and not pd.isna(rows[name]["finetune_s"])
        own = json.loads(dvc.api.read("metrics/finetune.json", repo=str(project), rev=rows[name]["rev"]))
        assert rows[name]["finetune_s"] == pytest.approx(own["wall_s"])  # its own run's time, not the baseline's
    assert len({rows[name]["rev"] for name in [*names, "HEAD"]}) == len(names) + 1
