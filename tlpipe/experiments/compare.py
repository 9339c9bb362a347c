"""`tlpipe compare`: one table of experiments (or branches, commits) side by side.

Each row is one revision: the params that tell the runs apart (backbone, strategy, size, epochs)
against the fine-tuned model's validation and test figures and the stages' wall times, read from
the params.yaml and metrics files committed in that revision (DVC experiments are Git commits
too, so `dvc exp show --json` only has to name them). Written as Markdown and CSV, with a bar
chart of the test figures (Pillow).
"""

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from tlpipe.atomic import atomic_path
from tlpipe.errors import TlpipeError
from tlpipe.params_yaml import parse  # YAML 1.2 numbers, as DVC records them in dvc.lock

PARAMS = {"backbone": "backbone.name", "strategy": "finetune.strategy", "head": "head.kind",
          "size": "resize.size", "epochs": "finetune.epochs", "lr": "finetune.lr"}
# column -> the names it has had in metrics/evaluate.json (the first one present is read)
FIGURES = {"accuracy": ("accuracy",), "balanced_accuracy": ("balanced_accuracy",), "log_loss": ("log_loss",),
           "macro_precision": ("macro_precision", "precision_macro"), "macro_recall": ("macro_recall", "recall_macro"),
           "macro_f1": ("macro_f1", "f1_macro"), "kappa": ("cohen_kappa", "kappa"), "roc_auc": ("roc_auc",)}
WALL_TIMES = {"train_head_s": "metrics/train_head.json", "finetune_s": "metrics/finetune.json"}
CHOSEN = {"strategy": ("metrics/finetune.json", "strategy"), "lr": ("metrics/finetune.json", "peak_lr")}
PAIRED_TITLE = ("Paired comparison of the best rows by test accuracy, on the same test images "
                "(McNemar's exact test on the images one model gets right and the other wrong):")
CHART_FIGURES = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#b279a2")


def _resolve(name: str, cwd: Path, names: dict[str, str]) -> str:
    """The commit of a branch, tag, commit or experiment name."""
    if name in names:
        return names[name]
    result = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"], cwd=cwd,
                            capture_output=True, text=True)
    if result.returncode != 0:
        known = ", ".join(sorted(names)[:8]) or "none"
        raise TlpipeError(f"compare: {name!r} is not a branch, tag or commit, nor an experiment of this commit "
                          f"(experiments: {known}); `dvc exp show` lists them.")
    return result.stdout.strip()


def file_at(rev: str, path: str, cwd: Path):
    """A YAML/JSON file as committed in `rev` (in Git, or a DVC output of that revision read from
    the DVC cache, as the detailed metrics files are), or None when that revision does not hold it."""
    result = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=cwd, capture_output=True, text=True)
    if result.returncode == 0:
        return parse(result.stdout, f"{rev[:12]}:{path}")
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        return parse(dvc.api.read(path, repo=str(cwd), rev=rev), f"{rev[:12]}:{path}")
    except (DvcException, FileNotFoundError, OSError):
        return None


def dig(tree, dotted: str):
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def experiments(cwd: Path, allow_none: bool = False) -> list[tuple[str, str]]:
    """(name, commit) of every finished experiment of the current commit, from `dvc exp show --json`."""
    result = subprocess.run(["dvc", "exp", "show", "--json"], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise TlpipeError(f"compare: `dvc exp show --json` failed: {result.stderr.strip()[-300:]}")
    found = []
    for baseline in json.loads(result.stdout or "[]"):
        for experiment in baseline.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state")
            if state in ("queued", "running", "failed"):  # no committed metrics (yet)
                print(f"compare: leaving out {experiment.get('name')}: {state}")
                continue
            for rev in experiment.get("revs") or []:
                if rev.get("rev") and rev.get("rev") != "workspace":
                    found.append((rev.get("name") or rev["rev"][:7], rev["rev"]))
    if not found and not allow_none:
        raise TlpipeError("compare: `dvc exp show` lists no experiments of this commit. Run some "
                          "(`dvc exp run -S backbone.name=...`, or --queue then `dvc queue start`), or name "
                          "revisions: `tlpipe compare main my-branch`.")
    return found


def stale_stages(lock: dict | None, params: dict) -> set[str]:
    """The stages of a revision whose recorded outputs were not made from that revision's inputs: a
    dependency another stage's output has changed since, or a params value that is no longer the
    one recorded (an experiment of finetune alone keeps evaluate's outputs of its baseline)."""
    stages = (lock or {}).get("stages") or {}
    made = {out["path"]: out.get("md5") for spec in stages.values() for out in spec.get("outs") or []}
    stale = set()
    for name, spec in stages.items():
        moved = any(dep["path"] in made and dep.get("md5") != made[dep["path"]] for dep in spec.get("deps") or [])
        recorded = (spec.get("params") or {}).get("params.yaml") or {}
        changed = any(dig(params, key) != value for key, value in recorded.items())
        if moved or changed:
            stale.add(name)
    for _ in stages:  # what follows a stale stage is stale too
        stale |= {name for name, spec in stages.items()
                  if any(dep["path"] in made and _producer(stages, dep["path"]) in stale
                         for dep in spec.get("deps") or [])}
    return stale


def _producer(stages: dict, path: str) -> str | None:
    return next((name for name, spec in stages.items() if any(o["path"] == path for o in spec.get("outs") or [])),
                None)


def row(name: str, rev: str, cwd: Path) -> dict:
    """One revision's row: its params, the fine-tuned model's val/test figures, the stages' wall times.
    A figure whose stage did not run on this revision's inputs is left blank, never borrowed."""
    params = file_at(rev, "params.yaml", cwd)
    if params is None:
        raise TlpipeError(f"compare: revision {name} ({rev[:12]}) holds no params.yaml; is it a commit of this "
                          "project?")
    stale = stale_stages(file_at(rev, "dvc.lock", cwd), params)
    evaluated = None if "evaluate" in stale else file_at(rev, "metrics/evaluate.json", cwd)
    out = {"experiment": name, "rev": rev[:7], "full_rev": rev,
           "evaluated": "yes" if evaluated is not None else "no (evaluate did not run on this model)"}
    out |= {column: dig(params, key) for column, key in PARAMS.items()}
    for column, (path, key) in CHOSEN.items():  # what `auto` became, where the run recorded it
        chosen = dig(file_at(rev, path, cwd), key)
        if chosen is not None and out[column] == "auto":
            out[column] = f"auto: {chosen:.3g}" if isinstance(chosen, float) else f"auto: {chosen}"
    for split in ("val", "test"):
        figures = dig(evaluated, f"finetune.{split}") or {}
        for column, names in FIGURES.items():
            out[f"{split}_{column}"] = next((figures[n] for n in names if n in figures), None)
    for column, path in WALL_TIMES.items():
        stage = "finetune" if "finetune" in path else "train-head"
        out[column] = None if stage in stale else dig(file_at(rev, path, cwd), "wall_s")
    return out


def table(revisions: Sequence[str] = (), cwd: str | Path = ".") -> pd.DataFrame:
    """The comparison of `revisions` (branches, tags, commits or experiment names), or of every
    experiment when none are given."""
    cwd = Path(cwd)
    found = experiments(cwd, allow_none=bool(revisions))
    named = [(name, _resolve(name, cwd, dict(found))) for name in revisions]
    return pd.DataFrame([row(name, rev, cwd) for name, rev in (named or found)])


def predictions_at(rev: str, cwd: Path) -> pd.DataFrame | None:
    """The fine-tuned model's test predictions of `rev` (path, label, predicted), from the DVC cache."""
    import io

    import dvc.api
    from dvc.exceptions import DvcException

    try:
        text = dvc.api.read("data/predictions/finetune_test.csv", repo=str(cwd), rev=rev)
    except (DvcException, FileNotFoundError, OSError):
        return None
    return pd.read_csv(io.StringIO(text), usecols=["path", "label", "predicted"], dtype=str)


def paired(frame: pd.DataFrame, cwd: Path, top: int = 3, alpha: float = 0.05) -> pd.DataFrame:
    """McNemar's exact test between the `top` rows by test accuracy, on the test images both
    were evaluated on: whether their difference in accuracy is beyond chance."""
    from scipy.stats import binomtest

    ranked = frame[frame["evaluated"] == "yes"].sort_values("test_accuracy", ascending=False).head(top)
    found = {r["experiment"]: predictions_at(r["full_rev"], cwd) for r in ranked.to_dict("records")}
    rows = []
    names = [name for name, table in found.items() if table is not None]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = found[a].merge(found[b], on=["path", "label"], suffixes=("_a", "_b"))
            if not len(both):
                continue
            right_a, right_b = both["predicted_a"] == both["label"], both["predicted_b"] == both["label"]
            only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
            p_value = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
            rows.append({"a": a, "b": b, "test_images": len(both), "only_a_right": only_a, "only_b_right": only_b,
                         "p_mcnemar": round(float(p_value), 4),
                         "verdict": f"differ (p < {alpha})" if p_value < alpha else "not distinguishable"})
    return pd.DataFrame(rows, columns=["a", "b", "test_images", "only_a_right", "only_b_right", "p_mcnemar", "verdict"])


def markdown(frame: pd.DataFrame) -> str:
    def cell(value):
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return ""
        if isinstance(value, float):  # figures to 4 places; small rates (lr) in significant digits
            return f"{value:.3g}" if 0 < abs(value) < 0.01 else f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in values) + " |" for values in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def bar_chart(frame: pd.DataFrame, path: Path, split: str = "test") -> None:
    """Grouped bars: per experiment, the split's accuracy, balanced accuracy, macro F1 and AUC (0..1)."""
    width, height, left, bottom, top = max(480, 130 * len(frame) + 120), 360, 50, 90, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    plot_h = height - top - bottom
    draw.text((left, 10), f"{split} split, fine-tuned model", fill="black")
    for tick in range(0, 11, 2):
        y = top + plot_h * (1 - tick / 10)
        draw.line([(left, y), (width - 10, y)], fill="#dddddd")
        draw.text((5, y - 6), f"{tick / 10:.1f}", fill="black")
    slot = (width - left - 10) / max(len(frame), 1)
    bar = slot * 0.8 / len(CHART_FIGURES)
    for i, record in enumerate(frame.to_dict("records")):
        x0 = left + i * slot + slot * 0.1
        for j, figure in enumerate(CHART_FIGURES):
            value = record.get(f"{split}_{figure}")
            if value is not None and not pd.isna(value):
                draw.rectangle([x0 + j * bar, top + plot_h * (1 - value), x0 + (j + 1) * bar - 2, top + plot_h],
                               fill=COLOURS[j])
        draw.text((x0, top + plot_h + 6), str(record["experiment"])[:20], fill="black")
        draw.text((x0, top + plot_h + 20), f"{record.get('backbone')}"[:20], fill="#444444")
        draw.text((x0, top + plot_h + 34), f"{record.get('strategy')}"[:20], fill="#444444")
    for j, figure in enumerate(CHART_FIGURES):
        x = left + j * 120
        draw.rectangle([x, height - 22, x + 10, height - 12], fill=COLOURS[j])
        draw.text((x + 14, height - 24), figure, fill="black")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write(frame: pd.DataFrame, out_dir: str | Path, pairs: pd.DataFrame | None = None) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "comparison.md", "csv": out_dir / "comparison.csv", "chart": out_dir / "comparison.png"}
    with atomic_path(paths["markdown"]) as tmp:
        Path(tmp).write_text(markdown(frame) + (f"\n{PAIRED_TITLE}\n\n{markdown(pairs)}" if pairs is not None and len(pairs) else ""))
    with atomic_path(paths["csv"]) as tmp:
        frame.to_csv(tmp, index=False)
    bar_chart(frame, paths["chart"])
    return paths
