"""dvc.yaml's code deps cover each stage's whole import closure, so that a code change reruns exactly
the stages it affects; and the layout keeps its direction (use/ never reaches train/)."""


import pytest
import yaml

from pathlib import Path

from import_closure import REPO, _imported_modules, _module_file, import_closure

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


@pytest.mark.parametrize("module", sorted(p.relative_to(REPO).as_posix() for folder in ("data", "model", "train", "use")
                                          for p in (REPO / "tlpipe" / folder).glob("*.py")))
def test_only_the_command_line_reaches_experiments(module):
    """experiments/ is the top layer: it runs the pipeline through DVC; no stage's code imports it."""
    assert not [p for p in import_closure(module) if p.startswith("tlpipe/experiments/")]


def _direct_imports(path: Path) -> set[str]:
    files = {_module_file(m) for m in _imported_modules(path)}
    return {f.relative_to(REPO).as_posix() for f in files if f is not None and f != path}


def test_no_import_cycles_hidden_or_not():
    """A module never reaches itself through its imports, those inside functions included: a cycle
    hidden by a function-level import still ties the two modules together."""
    modules = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "tlpipe").rglob("*.py"))
    cycles = [f"{module} -> {other}" for module in modules for other in sorted(_direct_imports(REPO / module))
              if not other.endswith("__init__.py") and module in import_closure(other)]
    assert not cycles, f"import cycles: {cycles}"


def test_one_function_in_the_library_trains():
    """Backward and an optimizer step are taken in one place (train/step.py), which finetune, the
    MLP/attention head and the lr finder share; the temperature fit (an LBFGS closure on one scalar)
    and Grad-CAM (gradients for a heat map, no step) are the two other backward passes."""
    import ast

    calls = {}
    for path in sorted((REPO / "tlpipe").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "backward":
                calls.setdefault(path.relative_to(REPO).as_posix(), 0)
                calls[path.relative_to(REPO).as_posix()] += 1
    assert calls == {"tlpipe/train/step.py": 1, "tlpipe/train/choose.py": 1, "tlpipe/use/report.py": 1}, calls
