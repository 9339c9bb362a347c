"""dvc.yaml's code deps cover each stage's whole import closure, so that a code change reruns exactly
the stages it affects; and the layout keeps its direction (use/ never reaches train/)."""


import pytest
import yaml

from import_closure import REPO, import_closure

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_the_scripts_import_closure(stage):
    spec = STAGES[stage]
    script = spec["cmd"].split()[-1]
    deps = spec["deps"]
    missing = sorted(p for p in import_closure(script) if not _covered(p, deps))
    assert not missing, f"dvc.yaml stage '{stage}' runs code it does not depend on: {missing}"
    stale = sorted(d for d in deps if d.startswith(("tlpipe/", "stages/")) and not (REPO / d).exists())
    assert not stale, f"dvc.yaml stage '{stage}' depends on code that does not exist: {stale}"


def test_closure_follows_imports_inside_functions():
    assert "tlpipe/data/kaggle.py" in import_closure("stages/download.py")


@pytest.mark.parametrize("module", sorted(p.relative_to(REPO).as_posix() for p in (REPO / "tlpipe/use").glob("*.py")))
def test_use_never_imports_train(module):
    assert not [p for p in import_closure(module) if p.startswith("tlpipe/train/")]


@pytest.mark.parametrize("module", sorted(p.relative_to(REPO).as_posix()
                                          for folder in ("data", "model") for p in (REPO / "tlpipe" / folder).glob("*.py")))
def test_data_and_model_never_import_train_or_use(module):
    assert not [p for p in import_closure(module) if p.startswith(("tlpipe/train/", "tlpipe/use/"))]


def test_no_module_grows_past_300_lines():
    long = {p.relative_to(REPO).as_posix(): n for p in (REPO / "tlpipe").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 300}
    assert not long, f"split these modules: {long}"
