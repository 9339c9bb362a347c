"""Results travel between machines: two clones share a local-directory DVC remote.

(a) with dvc.lock committed the second clone reruns nothing; (b) without it, the run-cache from
the remote restores every stage (`dvc pull --run-cache` + `dvc repro --pull`); (c) a head.* change
there reruns only train-head and evaluate. Judged from DVC's own output and the model's md5.
"""

import hashlib
import re

import pytest
import yaml

from conftest import REPO, STAGES, make_dvc_project, make_image_tree, ran_stages, run, set_params
from tlpipe.records import cached_outputs, git_outputs, record_path

DVC_STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# one worker under pytest -n: the machines below share one session-scoped laptop project, built once
pytestmark = pytest.mark.xdist_group("remote")


@pytest.mark.parametrize("stage", sorted(DVC_STAGES))
def test_every_output_of_every_stage_reaches_the_remote(stage):
    spec = DVC_STAGES[stage]
    # A `cache: false` entry under `outs:` turns the run-cache off for the whole stage.
    plain = [e for e in spec.get("outs", []) if isinstance(e, dict) and next(iter(e.values())).get("cache") is False]
    assert not plain, f"stage '{stage}': move {plain} to metrics: (Git-tracked) or make it cached"
    missing = [p for p in git_outputs(spec) if record_path(p).as_posix() not in cached_outputs(spec)]
    assert not missing, f"stage '{stage}': declare the cached copies {[str(record_path(p)) for p in missing]}"


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def skipped_stages(output: str) -> list[str]:
    return [s for s in STAGES if re.search(rf"Stage '{re.escape(s)}' is cached - skipping run", output)]


@pytest.fixture(scope="session")
def laptop(tmp_path_factory):
    """A project that ran once and pushed everything, run-cache included, to a shared remote."""
    tmp = tmp_path_factory.mktemp("machines")
    make_image_tree(tmp / "images", {"circle": 16, "square": 16, "cross": 16})
    project = make_dvc_project(tmp / "laptop")
    set_params(project, **{
        "data.source": f"path:{tmp / 'images'}", "resize.size": 32, "backbone.weights": "none",
        "finetune.epochs": 1, "finetune.batch_size": 16, "features.batch_size": 32,
    })
    run(["dvc", "remote", "add", "-d", "shared", str(tmp / "remote")], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "pipeline"], project)
    pipeline_commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert ran_stages(run(["dvc", "repro"], project).stdout) == STAGES
    run(["dvc", "push", "--run-cache"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "run"], project)
    return {"tmp": tmp, "project": project, "pipeline_commit": pipeline_commit}


def clone(laptop, name: str, commit: str | None = None):
    target = laptop["tmp"] / name
    run(["git", "clone", "-q", str(laptop["project"]), str(target)], laptop["tmp"])
    if commit:
        run(["git", "checkout", "-q", commit], target)
    return target


def test_lock_committed_clone_reruns_nothing(laptop):
    gpu_box = clone(laptop, "with_lock")
    # metrics are in Git: shown before anything is pulled, as `dvc metrics diff` needs
    shown = run(["dvc", "metrics", "show", "--json"], gpu_box).stdout
    assert "metrics/headline.json" in shown and "finetuned" in shown, shown
    run(["dvc", "pull"], gpu_box)
    assert ran_stages(run(["dvc", "repro"], gpu_box).stdout) == []
    assert md5(gpu_box / "models/model.pt") == md5(laptop["project"] / "models/model.pt")
    assert "up to date" in run(["dvc", "status"], gpu_box).stdout


def test_gpu_box_without_the_source_takes_the_data_from_the_remote(laptop):
    """The source folder exists on the laptop only: DVC sees its dependency as deleted, and
    `dvc repro --allow-missing` (DVC's own switch for a machine that lacks some data) keeps the
    pulled data instead of rerunning download; a finetune change reruns what it affects."""
    images = laptop["tmp"] / "images"
    away = laptop["tmp"] / "images-elsewhere"
    gpu_box = clone(laptop, "gpu_box")
    images.rename(away)
    try:
        run(["dvc", "pull"], gpu_box)
        assert f"deleted:            {images}" in run(["dvc", "status", "download"], gpu_box).stdout
        plain = run(["dvc", "repro"], gpu_box, check=False)  # DVC itself refuses a missing dependency
        assert plain.returncode != 0 and f"No such file or directory: '{images}'" in plain.stderr, plain.stderr
        # DVC removed download's outputs before it failed: Git and the remote have them (README, troubleshooting)
        run(["git", "checkout", "--", "metrics"], gpu_box)
        run(["dvc", "pull"], gpu_box)
        out = run(["dvc", "repro", "--allow-missing"], gpu_box).stdout
        assert ran_stages(out) == [], out
        assert md5(gpu_box / "models/model.pt") == md5(laptop["project"] / "models/model.pt")
        assert (gpu_box / "metrics/data.json").read_text() == (laptop["project"] / "metrics/data.json").read_text()

        set_params(gpu_box, **{"finetune.epochs": 2})
        out = run(["dvc", "repro", "--allow-missing"], gpu_box).stdout
        assert ran_stages(out) == ["finetune", "evaluate", "report", "summary"], out
    finally:
        away.rename(images)


def test_run_cache_restores_every_stage_without_the_lock(laptop):
    gpu_box = clone(laptop, "without_lock", laptop["pipeline_commit"])
    assert not (gpu_box / "dvc.lock").exists() and not (gpu_box / "metrics").exists()
    run(["dvc", "pull", "--run-cache"], gpu_box, check=False)  # no lock: only the run-cache comes
    out = run(["dvc", "repro", "--pull"], gpu_box).stdout
    assert ran_stages(out) == [], out
    assert skipped_stages(out) == STAGES, out
    for path in ("models/model.pt", "models/head.pt", "metrics/evaluate.json", "metrics/split.json",
                 "live/finetune/metrics.json", "metrics/headline.json", "plots/evaluate/roc_test.json"):
        assert md5(gpu_box / path) == md5(laptop["project"] / path), path
    # the headline stays in Git: a later commit there lets `dvc metrics diff` compare without the remote
    assert "headline.json" not in (gpu_box / "metrics" / ".gitignore").read_text()

    set_params(gpu_box, **{"head.C": 0.01})
    assert ran_stages(run(["dvc", "repro"], gpu_box).stdout) == ["train-head", "evaluate", "summary"]
    assert md5(gpu_box / "models/model.pt") == md5(laptop["project"] / "models/model.pt")
