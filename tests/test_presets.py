import json
import shutil
import sys

import pytest
import yaml

from conftest import REPO, rotating_fruit_frames, run
from tlpipe import params, presets
from tlpipe.cli import main
from tlpipe.errors import TlpipeError

REQUIRED = {"chest-xray-pneumonia", "ham10000", "fruits-360", "retina-oct", "diabetic-retinopathy", "tuberculosis-xray"}


@pytest.fixture
def params_copy(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    return path


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_preset_applies_validates_and_documents_its_sources(name, params_copy, tmp_path):
    changes = presets.apply(name, params_copy)
    applied = params.load(params_copy)
    for dotted, value in presets.overlay(name).items():
        assert applied.value(dotted) == value
    assert changes
    preset = presets.load(name)
    assert preset["kaggle"] and preset["path_example"].startswith("path:") and preset["published"]
    (tmp_path / "x").mkdir()
    assert presets.overlay(name, f"path:{tmp_path / 'x'}")["data.source"] == f"path:{tmp_path / 'x'}"
    assert presets.overlay(name, f"path:{tmp_path / 'x'}")["data.track"] == str(tmp_path / "x")


def test_apply_keeps_comments_and_other_keys(params_copy, tmp_path):
    before = params_copy.read_text()
    (tmp_path / "chest.zip").write_bytes(b"")
    presets.apply("chest-xray-pneumonia", params_copy, source=f"path:{tmp_path / 'chest.zip'}")
    after = params_copy.read_text()
    comments = [line.split("#", 1)[1] for line in before.splitlines() if "#" in line]
    assert all(comment in after for comment in comments)
    old, new = yaml.safe_load(before), yaml.safe_load(after)
    assert new["data"]["source"] == f"path:{tmp_path / 'chest.zip'}"
    assert new["split"]["group_regex"] == r"^(person\d+|(?:NORMAL2-)?IM-\d+)"
    assert new["split"]["labels_csv"] is None and "labels_csv: null" in after
    assert new["head"] == old["head"] | presets.load("chest-xray-pneumonia")["params"]["head"]


def test_unknown_preset_suggests_the_closest_name(params_copy):
    with pytest.raises(TlpipeError, match="preset 'chest-xray' does not exist. Did you mean chest-xray-pneumonia"):
        presets.apply("chest-xray", params_copy)
    assert main(["preset", "ham1000", "--params", str(params_copy)]) == 2
    assert params_copy.read_text() == (REPO / "params.yaml").read_text()


def test_a_missing_source_or_a_yaml_slip_is_one_line_and_changes_nothing(params_copy, capsys):
    assert main(["preset", "ham10000", "--source", "path:/no/such/file.zip", "--params", str(params_copy)]) == 2
    err = capsys.readouterr().err
    assert "/no/such/file.zip does not exist" in err and len(err.strip().splitlines()) == 1
    assert params_copy.read_text() == (REPO / "params.yaml").read_text()
    params_copy.write_text(params_copy.read_text().replace("  seed: 42\n", "  seed: [42\n", 1))
    slipped = params_copy.read_text()
    assert main(["preset", "ham10000", "--params", str(params_copy)]) == 2
    err = capsys.readouterr().err
    assert f"{params_copy}: not valid YAML at line" in err and len(err.strip().splitlines()) == 1
    assert params_copy.read_text() == slipped


def test_cli_lists_presets_and_prints_exp_run_arguments(capsys, tmp_path):
    assert main(["preset"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in REQUIRED) and "0.928" in listing
    (tmp_path / "fruits.zip").write_bytes(b"")
    assert main(["preset", "fruits-360", "--set-args", "--source", f"path:{tmp_path / 'fruits.zip'}"]) == 0
    command = capsys.readouterr().out.strip()
    assert command.startswith(f"dvc exp run -S 'data.source=path:{tmp_path / 'fruits.zip'}'")
    assert "-S 'resize.size=128'" in command


@pytest.mark.slow
def test_fruits_360_preset_runs_end_to_end_on_rotating_frames(dvc_project, tmp_path):
    """A seed's data set runs with its own preset: frames of one object are one near-duplicate
    group, too few to carve validation by group, so it is carved image by image, with a warning
    that validation is flattered, and the shipped Test folder stays the honest figure."""
    data = tmp_path / "fruits"
    rotating_fruit_frames(data, objects=2, frames=30, test_objects=1)
    run([sys.executable, "-m", "tlpipe.cli", "preset", "fruits-360", "--source", f"path:{data}"], dvc_project)
    run(["git", "add", "-A"], dvc_project)
    run(["git", "commit", "-qm", "fruits preset"], dvc_project)
    repro = run(["dvc", "repro"], dvc_project)
    out = repro.stdout + repro.stderr
    assert "too few image groups to carve validation and test by group" in out
    split = json.loads((dvc_project / "metrics" / "split.json").read_text())
    assert set(split["carved_by_image"]) == {"apple", "banana", "cherry"}
    assert split["counts"]["test"] == {"apple": 30, "banana": 30, "cherry": 30}  # the shipped Test folder
    evaluate = json.loads((dvc_project / "metrics" / "evaluate.json").read_text())
    assert evaluate["finetune"]["test"]["n"] == 90
    assert evaluate["finetune"]["test"]["accuracy"] > 1 / 3  # it learned something beyond chance
    assert (dvc_project / "reports" / "summary.html").is_file()
