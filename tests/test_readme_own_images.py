"""A new user's first screen: the README's "Your own images" commands, run as written (the folder
swapped for a generated one), in a fresh project, end at reports/summary.html."""

import re

import pytest

from conftest import REPO, make_dvc_project, make_image_tree, run

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    section = (REPO / "README.md").read_text().split("## Your own images", 1)[1].split("\n## ", 1)[0]
    return [re.sub(r"\s+#.*$", "", line.strip()) for line in section.splitlines()
            if re.match(r"    (tlpipe|dvc|xdg-open) ", line)]


def test_the_readme_own_images_commands_reach_the_summary_page(tmp_path):
    commands = readme_commands()
    assert [c.split()[0] for c in commands] == ["tlpipe", "tlpipe", "dvc", "xdg-open"], commands
    images = tmp_path / "my-set"
    make_image_tree(images, {"NORMAL": 30, "PNEUMONIA": 30})
    project = make_dvc_project(tmp_path / "project")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "a clone of the template"], project)
    outputs = {}
    for command in commands[:-1]:
        argv = [word.replace("/data/my-set", str(images)) for word in command.split()]
        outputs[command] = run(argv, project).stdout
    check = outputs[commands[1]]
    assert "NORMAL" in check and "PNEUMONIA" in check and "60" in check, check
    page = commands[-1].split()[-1]
    summary = (project / page).read_text(encoding="utf-8")
    assert "NORMAL" in summary and "finetuned test" in summary
