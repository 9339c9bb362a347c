"""constraints.txt records the exact versions the tests pass with: the README's commands and CI
install through it, every dependency pyproject.toml names is pinned there within its range, and the
environment running these tests holds exactly those versions."""

import os
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO


def pins() -> dict[str, str]:
    found = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not NAME==VERSION"
            found[canonicalize_name(name)] = version
    return found


def test_every_dependency_is_pinned_within_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["test"]]]
    pinned = pins()
    for requirement in required:
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"constraints.txt pins no version of {requirement.name}"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (requirement, pinned[name])
    assert not any("<=" in str(r.specifier) for r in required), "a range capped at an exact patch release"


def test_these_tests_run_on_the_pinned_versions():
    pinned = pins()
    for name in ("torch", "torchvision", "dvc", "dvclive", "timm", "numpy", "scikit-learn", "pandas"):
        installed = metadata.version(name).split("+")[0]
        assert installed == pinned[canonicalize_name(name)], (
            f"{name} {installed} is installed but constraints.txt pins {pinned[canonicalize_name(name)]}: install "
            "with `-c constraints.txt` (the README's commands), or after testing a newer set, regenerate it")


@pytest.mark.xdist_group("grouping_check")
def test_pytest_n_keeps_each_xdist_group_on_one_worker(request):
    """Under `pytest -n 2` the tests of one xdist_group run on one worker: their session-scoped
    project is built once, and the multi-process tests do not share the cores with one another.
    pytest 9.2 with pytest-xdist 3.8 stopped doing so without a word (the group never reaches the
    scheduler); pyproject.toml keeps pytest below 9.2 until that is fixed."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not request.config.getvalue("loadgroup"):
        pytest.skip("not under pytest -n with --dist loadgroup")
    assert request.node.nodeid.endswith("@grouping_check"), request.node.nodeid
