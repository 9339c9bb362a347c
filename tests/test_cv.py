"""k-fold cross-validation: the split stage's folds (the test split kept, the rest cut by group and
class), and `tlpipe cv` end to end: one DVC experiment per fold, every test figure per fold with
its mean and spread, the out-of-fold predictions, and after a change to finetune.* each fold reruns
finetune and evaluate alone (the rest from DVC's run-cache)."""

import json
import os

import pandas as pd
import pytest

from conftest import default_params, make_dvc_project, make_image_tree, run, set_params
from test_split import patient_tree, split_of
from tlpipe.errors import TlpipeError
from tlpipe.params import validate


def test_folds_keep_the_test_split_and_cut_the_rest_by_group(tmp_path):
    patient_tree(tmp_path / "raw" / "xray")
    tables = [split_of(tmp_path / "raw", group_regex=r"^(person\d+|IM-\d+)", seed=3, folds=5, fold=i)[0]
              for i in range(5)]
    without_folds = split_of(tmp_path / "raw", group_regex=r"^(person\d+|IM-\d+)", seed=3)[0]
    test = set(without_folds["path"][without_folds["split"] == "test"])
    pool = set(without_folds["path"]) - test
    vals = []
    for table in tables:
        assert set(table["path"][table["split"] == "test"]) == test  # the same test split, fold or not
        val = table[table["split"] == "val"]
        train = table[table["split"] == "train"]
        assert not set(val["group"]) & set(train["group"])  # a patient sits in one fold
        assert set(val["label"]) == {"NORMAL", "PNEUMONIA"}  # each fold holds both classes
        vals.append(set(val["path"]))
    assert set().union(*vals) == pool and sum(map(len, vals)) == len(pool)  # every image in one fold
    assert max(map(len, vals)) - min(map(len, vals)) <= 6  # folds of about equal size (whole patients of 3)


def test_fold_record_in_split_metrics(tmp_path):
    from tlpipe.data.split import split_metrics

    patient_tree(tmp_path / "raw" / "xray")
    table, report = split_of(tmp_path / "raw", folds=3, fold=2)
    assert split_metrics(table, report)["fold"] == {"index": 2, "of": 3}
    table, report = split_of(tmp_path / "raw")
    assert split_metrics(table, report)["fold"] is None


def test_more_folds_than_groups_is_one_clear_line(tmp_path):
    make_image_tree(tmp_path / "raw", {"a": 3, "b": 3})
    with pytest.raises(TlpipeError, match="split.folds is 5 but outside the test split the largest class has only 3"):
        split_of(tmp_path / "raw", folds=5, fold=0, test_fraction=0, near_duplicate_similarity=None)


@pytest.mark.parametrize("folds, fold, said", [
    (1, 0, "'split.folds' must be 0 (off: one validation split) or at least 2"),
    (5, 5, "'split.fold' (5) must be below 'split.folds' (5)"),
    (0, 1, "and it is 0 while split.folds is 0"),
])
def test_bad_fold_params_are_refused(folds, fold, said):
    params = default_params()
    params["split"] |= {"folds": folds, "fold": fold}
    with pytest.raises(TlpipeError) as info:
        validate(params)
    assert said in str(info.value)


def _cv(project, folds=2) -> dict:
    result = run(["tlpipe", "cv", "--folds", str(folds), "--jobs", "2"], project)
    assert "mean ± SD" in result.stdout
    return json.loads((project / "outputs" / "cv" / "cv.json").read_text())


@pytest.mark.slow
def test_cv_runs_one_experiment_per_fold_and_reruns_only_what_changed(tmp_path):
    images = tmp_path / "images"
    make_image_tree(images, {"circle": 40, "square": 40, "triangle": 40})
    project = make_dvc_project(tmp_path / "project")
    set_params(project, **{"data.source": f"path:{images}", "resize.size": 32, "backbone.weights": "none",
                           "finetune.epochs": 1, "finetune.batch_size": 32, "features.batch_size": 64,
                           "split.near_duplicate_similarity": None})
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "pipeline"], project)

    first = _cv(project)
    assert first["folds"] == 2 and len(first["runs"]) == 2
    for run_record in first["runs"]:
        assert {"split", "finetune", "evaluate"} <= set(run_record["stages_run"])
        assert 0 <= run_record["finetune"]["test"]["accuracy"] <= 1
    spread = first["test"]["finetune"]["accuracy"]
    assert len(spread["folds"]) == 2 and spread["min"] <= spread["mean"] <= spread["max"]
    assert spread["sd"] is not None and spread["sd"] >= 0
    shown = run(["dvc", "exp", "show", "--json"], project).stdout
    assert all(r["name"] in shown for r in first["runs"])
    # --jobs 2: DVC's queue workers pass TLPIPE_JOBS on, and each fold's finetune took half the cores
    from tlpipe.experiments.compare import file_at
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert [file_at(r["rev"], "metrics/finetune.json", project)["threads"] for r in first["runs"]] == [share] * 2

    oof = pd.read_csv(project / "outputs" / "cv" / "oof_predictions.csv")
    finetune = oof[oof["model"] == "finetune"]
    assert len(finetune) == finetune["path"].nunique() == first["out_of_fold"]["finetune"]["n"]
    assert sorted(finetune["fold"].unique()) == [0, 1]
    # every image outside the (fixed) test split is predicted once, by the fold that held it out
    assert len(finetune) == 120 - _test_images(project, first)

    set_params(project, **{"finetune.epochs": 2})
    second = _cv(project)
    for run_record in second["runs"]:
        assert run_record["stages_run"] == ["finetune", "evaluate"], run_record
    assert second["test"]["head"]["accuracy"]["folds"] == first["test"]["head"]["accuracy"]["folds"]


def _test_images(project, record) -> int:
    from tlpipe.experiments.compare import file_at

    split = file_at(record["runs"][0]["rev"], "metrics/split.json", project)
    return split["total"]["test"]
