"""The documentation keeps up with the code: the README stays a front door that links to docs/,
every docs page is on the contents page, and the code map names every module (and nothing else)."""

import re

from conftest import REPO

README = (REPO / "README.md").read_text()
ARCHITECTURE = (REPO / "docs" / "architecture.md").read_text()


def test_readme_is_a_front_door_of_at_most_200_lines():
    assert len(README.splitlines()) <= 200
    commands = [line.strip() for line in README.splitlines() if line.startswith("    ")]
    assert commands[0] == "python3.11 -m venv .venv && . .venv/bin/activate && pip install -e . -c constraints.txt && dvc repro"
    assert commands[1].endswith("pip install -e '.[test]' -c constraints.txt && python -m pytest -n 2")
    assert "docs/README.md" in README


def test_ci_runs_the_readme_test_command():
    test_command = [line.strip() for line in README.splitlines() if line.startswith("    python3.11 -m venv")][1]
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == test_command


def test_every_docs_page_is_on_the_contents_page_and_every_link_resolves():
    contents = (REPO / "docs" / "README.md").read_text()
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md") if p.name != "README.md")
    assert pages and all(f"]({page})" in contents for page in pages), pages
    for document in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", document.read_text()):
            assert (document.parent / target).exists(), f"{document.name} links to {target}, which does not exist"


def test_the_code_map_names_every_module_and_nothing_else():
    named = set(re.findall(r"^\| `(tlpipe/[\w/]+\.py)` \|", ARCHITECTURE, flags=re.M))
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "tlpipe").rglob("*.py")}
    assert not modules - named, f"docs/architecture.md's code map lacks {sorted(modules - named)}"
    assert not named - modules, f"docs/architecture.md's code map names modules that do not exist: {sorted(named - modules)}"
