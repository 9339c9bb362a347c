"""`dvc repro` end to end in a temporary Git repository, judged from DVC's own output."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import STAGES, repro, run, set_params
from tlpipe.data.cache import load_split
from tlpipe.model.inference import predict_logits
from tlpipe.model.modelfile import load_model

pytestmark = pytest.mark.slow

def changed_stages(status: str) -> list[str]:
    """Stage names that `dvc status` reports as changed (its lines `NAME:` at the start)."""
    return [s for s in STAGES if re.search(rf"^{re.escape(s)}:", status, flags=re.M)]


def test_repro_status_and_incremental_reruns(tiny_run):
    project = tiny_run  # its first `dvc repro` ran every stage (conftest.tiny_run_template checks)
    status = run(["dvc", "status"], project).stdout
    assert "up to date" in status, status
    assert repro(project) == []

    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert {"baseline", "head", "finetune"} <= set(metrics)  # plus the stage's wall_s
    assert metrics["finetune"]["test"]["n"] == len(load_split(project / "data" / "cache", "test")[1])
    # every test figure has its 95% interval, around the figure itself
    for model in ("finetune", "head"):
        test = metrics[model]["test"]
        for name in ("accuracy", "balanced_accuracy", "macro_f1"):
            low, high = test["interval_95"][name]
            assert low <= test[name] <= high, (model, name, low, test[name], high)
    headline = json.loads((project / "metrics" / "headline.json").read_text())
    assert headline["finetuned"]["test"]["accuracy_95"] == metrics["finetune"]["test"]["interval_95"]["accuracy"]
    band = headline["finetuned"]["test"]["accuracy_95"]
    assert f"({band[0]:.3f}-{band[1]:.3f})" in (project / "reports" / "summary.html").read_text()
    assert "accuracy_95" not in run(["dvc", "metrics", "show"], project).stdout  # lists: not a column

    # models/model.pt alone reproduces evaluate's test predictions.
    model, meta = load_model(project / "models" / "model.pt")
    images, _, index = load_split(project / "data" / "cache", "test")
    probs = torch.softmax(predict_logits(model, images, 64, torch.device("cpu")), 1).numpy()
    saved = pd.read_csv(project / "data" / "predictions" / "finetune_test.csv")
    assert list(saved["path"]) == list(index["path"])
    assert np.allclose(saved[[f"prob_{c}" for c in meta["classes"]]].to_numpy(), probs, atol=1e-5)

    set_params(project, **{"head.C": 0.01})
    # evaluate rewrites the fine-tuned model's predictions byte for byte, so report stays put.
    assert repro(project) == ["train-head", "evaluate", "summary"]
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project).stdout)
    assert set(diff) <= {"metrics/headline.json"} and "head" in json.dumps(diff)

    set_params(project, **{"finetune.epochs": 1})
    assert repro(project) == ["finetune", "evaluate", "report", "summary"]
    # The detailed files are out of the default diff, and diffed when named.
    diff = json.loads(run(["dvc", "metrics", "diff", "--json", "--targets", "metrics/finetune.json"], project).stdout)
    assert diff["metrics/finetune.json"]["epochs_run"] == {"old": 2, "new": 1, "diff": -1}

    set_params(project, **{"split.seed": 7})
    assert repro(project) == STAGES[1:]

    # Code is a dependency too: touching a module evaluate imports (through tlpipe.use) marks exactly
    # the stages whose import closure holds it as changed.
    with (project / "tlpipe" / "use" / "metrics.py").open("a") as module:
        module.write("\n# edited\n")
    changed = changed_stages(run(["dvc", "status"], project).stdout)
    assert changed == ["evaluate", "report"], changed
    before = (project / "metrics" / "evaluate.json").read_bytes()
    rerun = repro(project)
    # summary reads evaluate's outputs: it reruns only when they changed, and a comment changes
    # nothing in them but the stage's wall_s (0.1 s resolution, sometimes equal)
    changed_outputs = (project / "metrics" / "evaluate.json").read_bytes() != before
    assert rerun == ["evaluate", "report"] + (["summary"] if changed_outputs else []), rerun

    html = run(["dvc", "plots", "show", "-o", "plots_html"], project)
    page = (project / "plots_html" / "index.html").read_text()
    for plot_id in ("confusion_finetuned", "confusion_head", "roc", "finetune_loss"):
        assert plot_id in page, plot_id
    assert html.returncode == 0
