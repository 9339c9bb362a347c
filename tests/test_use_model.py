"""From `dvc repro` to predictions on new images, exported models and the visual report."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY_CLASSES, copy_project, make_image_tree, run
from tlpipe.data.cache import load_split
from tlpipe.model.inference import predict_logits
from tlpipe.model.modelfile import load_model

# one worker under pytest -n: the tests share one session-scoped copy of the tiny run
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("use_model")]
PROBS = [f"prob_{name}" for name in TINY_CLASSES]


@pytest.fixture(scope="session")
def project(tiny_run_template, tmp_path_factory):
    """The whole pipeline run once on the tiny run's three classes (32 px, random weights): this
    module's own copy, into which its tests export models and draw plots."""
    return copy_project(tiny_run_template, tmp_path_factory.mktemp("use_model") / "project")


def tlpipe(project, *args, check=True):
    return run(["python", "-m", "tlpipe.cli", *args], project, check=check)


def test_predict_reports_the_corrupt_file_and_classifies_the_rest(project, tmp_path):
    folder = tmp_path / "new images"
    make_image_tree(folder / "nested", {"x": 3}, seed=7)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "predictions.csv"
    result = tlpipe(project, "predict", str(folder), "--out", str(out))
    table = pd.read_csv(out)
    assert sorted(table["path"]) == sorted(str(p) for p in (folder / "nested" / "x").glob("*.png"))
    assert set(table["predicted"]) <= set(TINY_CLASSES)
    assert np.allclose(table[PROBS].sum(axis=1), 1, atol=1e-5)
    skipped = pd.read_csv(tmp_path / "predictions.skipped.csv")
    assert set(skipped["path"]) == {f"{folder}/corrupt.jpg", f"{folder}/notes.txt"}
    assert "corrupt.jpg" in result.stderr and "2 files skipped" in result.stderr


def test_predictions_on_the_test_images_equal_evaluates(project, tmp_path):
    evaluated = pd.read_csv(project / "data" / "predictions" / "finetune_test.csv")
    files = [str(project / "data" / "raw" / p) for p in evaluated["path"]]
    out = tmp_path / "test.csv"
    tlpipe(project, "predict", *files, "--out", str(out), "--batch-size", "5")
    predicted = pd.read_csv(out).set_index("path").loc[files]
    assert list(predicted["predicted"]) == list(evaluated["predicted"])
    assert np.allclose(predicted[PROBS].to_numpy(), evaluated[PROBS].to_numpy(), atol=1e-5)
    _, meta = load_model(project / "models" / "model.pt")
    assert meta["rule"]["metric"] == "balanced_accuracy" and meta["preprocess"] == {"size": 32, "mode": "squash", "contrast": "none"}


def test_predict_reads_a_zip(project, tmp_path):
    make_image_tree(tmp_path / "zipped", {"a": 2, "b": 2}, seed=9)
    shutil.make_archive(str(tmp_path / "batch"), "zip", tmp_path / "zipped")
    tlpipe(project, "predict", str(tmp_path / "batch.zip"), "--out", str(tmp_path / "zip.csv"), "--flip-tta")
    assert sorted(pd.read_csv(tmp_path / "zip.csv")["path"]) == [
        f"{tmp_path}/batch.zip/{c}/img{i:03d}.png" for c in "ab" for i in range(2)]


@pytest.mark.parametrize("fmt, suffix", [("torchscript", ".torchscript.pt"), ("onnx", ".onnx")])
def test_exported_model_reproduces_pytorch_probabilities(project, fmt, suffix):
    result = tlpipe(project, "export", "--format", fmt)
    exported = project / "models" / f"model{suffix}"
    sidecar = json.loads((project / "models" / f"model{suffix}.json").read_text())
    assert "matches PyTorch" in result.stdout and sidecar["checked"]["max_abs_difference"] <= 1e-4
    assert sidecar["input"]["shape"][1:] == [3, 32, 32] and sidecar["output"]["classes"] == list(TINY_CLASSES)

    model, _ = load_model(project / "models" / "model.pt")
    images, _, _ = load_split(project / "data" / "cache", "test")
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255
    expected = torch.softmax(predict_logits(model, images, 64, torch.device("cpu")), 1).numpy()
    if fmt == "onnx":
        import onnxruntime

        got, decided = onnxruntime.InferenceSession(str(exported)).run(None, {"images": x.numpy()})
    else:
        got, decided = (t.detach().numpy() for t in torch.jit.load(str(exported))(x))
    assert np.abs(got - expected).max() <= 1e-4
    evaluated = pd.read_csv(project / "data" / "predictions" / "finetune_test.csv")  # the stored rule's decisions
    assert [sidecar["output"]["classes"][i] for i in decided] == list(evaluated["predicted"])


def test_plots_html_shows_top_losses_gradcam_and_reliability(project):
    run(["dvc", "plots", "show", "-o", "plots_html"], project)
    page = (project / "plots_html" / "index.html").read_text()
    for image in ("top_losses.png", "gradcam.png"):
        references = [part.split('"')[0] for part in page.split('src="')[1:] if image in part.split('"')[0]]
        assert references, image
        assert all((project / "plots_html" / ref).is_file() for ref in references), references
    assert "reliability" in page
    rows = json.loads((project / "plots" / "report" / "reliability.json").read_text())
    assert sum(r["count"] for r in rows) == len(load_split(project / "data" / "cache", "test")[1])


def test_the_python_api_predicts_what_the_cli_writes(project, tmp_path):
    """The README's line, run as written in the project, and the same table as `tlpipe predict`."""
    import tlpipe

    folder = tmp_path / "api"
    make_image_tree(folder, {"x": 4}, seed=11)
    (folder / "notes.txt").write_text("not an image")
    model = tlpipe.load(project / "models" / "model.pt", device="cpu")
    table = model.predict([folder])
    assert model.classes == list(TINY_CLASSES) and len(table) == 4
    assert [s["path"] for s in table.attrs["skipped"]] == [f"{folder}/notes.txt"]
    out = tmp_path / "cli.csv"
    run(["python", "-m", "tlpipe.cli", "predict", str(folder), "--out", str(out)], project)
    cli = pd.read_csv(out)
    assert list(cli["path"]) == list(table["path"]) and list(cli["predicted"]) == list(table["predicted"])
    assert np.allclose(cli[PROBS], table[PROBS], atol=1e-6)
    one = str(next((folder / "x").glob("*.png")))
    said = run(["python", "-c", "import tlpipe; m = tlpipe.load('models/model.pt'); "
                f"print(m.predict(['{one}']).to_string(index=False))"], project).stdout
    assert "predicted" in said and any(name in said for name in TINY_CLASSES)
