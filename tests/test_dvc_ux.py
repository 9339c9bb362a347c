"""What a DVC user reaches for, on a tiny `dvc repro`: `dvc plots show` offline, a readable
`dvc exp show`, and metrics that move while finetune runs."""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from conftest import run, set_params
from test_offline_plots import remote_scripts

pytestmark = pytest.mark.slow

VEGA_PLOTS = ("reliability", "confusion_finetuned", "confusion_finetuned_normalized", "confusion_head", "roc",
              "precision_recall", "finetune_loss", "finetune_accuracy", "train_head_loss")
KEEP = r"^(finetuned|head)\.(val|test)\."  # the README's --keep
HEADLINE = ("finetuned.val.accuracy", "finetuned.val.balanced_accuracy", "finetuned.test.accuracy",
            "finetuned.test.balanced_accuracy", "head.val.accuracy", "head.test.accuracy")


def exp_show(project, *options) -> tuple[list[str], list[dict]]:
    text = run(["dvc", "exp", "show", "--csv", "--no-pager", *options], project).stdout
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], [dict(zip(rows[0], row)) for row in rows[1:]]


def rendered_dom(page) -> str | None:
    """The page's DOM after its scripts ran, by headless Chromium with no network; None without it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        assert not os.environ.get("CI"), "CI draws the plots: .ci/run installs Debian's chromium"
        return None
    profile = page.parent / "chromium-profile"
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
         "--virtual-time-budget=20000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180)
    return result.stdout


def test_plots_offline_and_experiments_in_one_screen(tiny_run):
    project = tiny_run

    # `dvc plots show`: DVC's page with the template of .dvc/config: vega inline, no CDN script.
    run(["dvc", "plots", "show", "-o", "plots_html"], project)
    page = project / "plots_html" / "index.html"
    html = page.read_text(encoding="utf-8")
    assert not remote_scripts(html), remote_scripts(html)
    assert "window.vegaEmbed=" in html and "vega-lite" in html
    for plot_id in VEGA_PLOTS:
        assert f'"{plot_id}"' in html or f"'{plot_id}'" in html or plot_id in html, plot_id
    dom = rendered_dom(page)
    if dom is not None:  # each vega plot became a drawn chart, with the network unused
        assert dom.count('class="vega-embed') >= len(VEGA_PLOTS), dom[:2000]
        assert dom.count('role="graphics-document"') >= len(VEGA_PLOTS), dom[:2000]
        assert ">undefined<" not in dom  # no facet panel without a file name

    # The run's page: self-contained (charts as inline SVG, pictures inline), no script, no remote file.
    summary = (project / "reports" / "summary.html").read_text(encoding="utf-8")
    assert summary.count("<svg") >= 4 and summary.count("data:image/png;base64,") == 3  # batch, top losses, Grad-CAM
    assert "<script" not in summary and not re.search(r"(src|href)=[\"']?https?:", summary)
    assert "finetuned val" in summary and "backbone.name" in summary and "circle" in summary

    # One flat headline file is the metric, beside the data's identity (so `dvc metrics diff` shows a
    # data change); the detailed files are plain outputs.
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    files = set(next(iter(shown.values()))["data"])
    assert files == {"metrics/headline.json", "live/finetune/metrics.json", "metrics/data.json"}, files
    detail = json.loads(run(["dvc", "metrics", "show", "--json", "metrics/evaluate.json"], project).stdout)
    assert "per_class" in json.dumps(detail)  # still there for whoever asks for it

    run(["dvc", "exp", "run", "-n", "lr-low", "-S", "finetune.lr=0.0003"], project)
    run(["dvc", "exp", "run", "-n", "lr-high", "-S", "finetune.lr=0.003"], project)
    columns, rows = exp_show(project)
    # DVC adds a column per param and per dependency; the metrics are the rest (head.* is both a
    # params section and a headline group: the params are told apart by params.yaml's keys).
    params = yaml.safe_load((project / "params.yaml").read_text())
    param_columns = {f"{section}.{key}" for section, keys in params.items() for key in keys}
    metric_columns = [c for c in columns if c.startswith(("finetuned.", "head.", "baseline.", "wall_s.", "training."))
                      and c not in param_columns]
    assert "finetuned.val.balanced_accuracy" in metric_columns and "training.val_loss" in metric_columns
    assert len(metric_columns) <= 40, " ".join(metric_columns)
    assert len(set(columns)) == len(columns)
    # What differs between the experiments, and the headline figures even where they do not.
    narrow, rows = exp_show(project, "--only-changed", "--keep", KEEP)
    assert len(narrow) <= 40, narrow
    by_name = {row["Experiment"] or row["rev"]: row for row in rows}
    for name in ("lr-low", "lr-high"):
        row = next(r for n, r in by_name.items() if name in n)
        for column in ("finetuned.val.accuracy", "finetuned.val.balanced_accuracy", "finetuned.test.accuracy"):
            assert re.fullmatch(r"[0-9.]+", row[column]), (name, column, row[column])
    # The README's "which experiment is best on validation".
    _, ranked = exp_show(project, "--only-changed", "--keep", KEEP, "--sort-by",
                         "metrics/headline.json:finetuned.val.balanced_accuracy", "--sort-order", "desc")
    values = [float(r["finetuned.val.balanced_accuracy"]) for r in ranked if r["typ"] != "baseline"]
    assert values == sorted(values, reverse=True)


def test_live_metrics_move_while_finetune_runs(tiny_run):
    project = tiny_run
    set_params(project, **{"finetune.epochs": 6, "finetune.patience": 0})
    shutil.rmtree(project / "live" / "finetune")  # as `dvc repro` removes a stage's outputs before it runs
    metrics = project / "live" / "finetune" / "metrics.json"
    stage = subprocess.Popen([sys.executable, "stages/finetune.py"], cwd=project,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, shown_mid_run = {}, None
    while stage.poll() is None:
        try:
            latest = json.loads(metrics.read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or being rewritten
            latest = None
        if latest is not None and latest["step"] not in seen:
            seen[latest["step"]] = latest
            if shown_mid_run is None:  # what `dvc metrics show` (and so `dvc exp show`) sees mid-run
                shown_mid_run = run(["dvc", "metrics", "show", "--json"], project).stdout
        time.sleep(0.02)
    output = stage.stdout.read()
    assert stage.returncode == 0, output
    assert len(seen) >= 3, (seen, output)  # read from this process while finetune was still training
    assert all("val_loss" in row["training"] for row in seen.values())
    assert "training" in shown_mid_run
    curve = (project / "live/finetune/plots/metrics/training/val_loss.tsv").read_text().splitlines()
    assert curve[0].split("\t") == ["step", "val_loss"] and len(curve) == 1 + 6
