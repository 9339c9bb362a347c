"""`tlpipe tune`: a validation-only search over a small space of the recipe, as DVC experiments.

Every point of the grid is queued as `dvc exp run --queue -n tune-<id> -S key=value ... finetune`.
The target is the finetune stage, so evaluate, the only stage that reads the test split, never runs
in the search; stages a point shares with an earlier one come from DVC's run-cache. The queue runs
them (`dvc queue start -j JOBS`), each finished point is scored by its fine-tuned model's
validation figure (its best epoch, `metrics/finetune.json`), and the best point's values can be
written into params.yaml, where `dvc repro` trains and evaluates it.
"""

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

from tlpipe.atomic import atomic_path
from tlpipe.errors import TlpipeError
from tlpipe.params import HIGHER_IS_BETTER, validate
from tlpipe.params_yaml import parse
from tlpipe.experiments.compare import dig, experiments, file_at
from tlpipe.experiments.queue import run_queued

# The default space: augmentation strength, length of the schedule, learning rate (auto: the range
# test) -- 8 points, each a full finetune. Input size is left out: every size recomputes the cache
# and the features; add `resize.size=224,299` to search it.
DEFAULT_SPACE = {"finetune.aug_scale_min": [0.35, 0.8], "finetune.epochs": [8, 12], "finetune.lr": [0.002, "auto"]}


@dataclass
class Point:
    values: dict[str, object]
    name: str
    score: float | None = None
    val_loss: float | None = None
    state: str = "queued"


def parse_space(items: list[str], base: dict) -> dict[str, list]:
    """['finetune.lr=0.001,auto', ...] -> {'finetune.lr': [0.001, 'auto']}, values read as params.yaml
    and DVC read them (YAML 1.2: `1e-3` is a number). Every point is checked against the params
    schema on top of `base` (params.yaml) before anything is queued."""
    space = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or "." not in key or not values.strip():
            raise TlpipeError(f"tune: --space {item!r} is not KEY=VALUE[,VALUE...], e.g. finetune.lr=0.001,auto")
        if key in space:
            raise TlpipeError(f"tune: --space names {key} twice; give its values once: {key}=V1,V2,...")
        parts = [v.strip() for v in values.split(",")]
        if "" in parts:
            raise TlpipeError(f"tune: --space {item!r} has an empty value (two commas, or one at the end); "
                              "remove it.")
        space[key] = [parse(v, f"--space {key}") for v in parts]
    for key, values in space.items():
        section, _, name = key.partition(".")
        for value in values:
            trial = {s: dict(v) for s, v in base.items()}
            if section not in trial or name not in trial[section]:
                raise TlpipeError(f"tune: --space {key}: params.yaml has no such key; see params.yaml for the "
                                  "keys (section.key).")
            trial[section][name] = value
            try:
                validate(trial)
            except TlpipeError as error:
                raise TlpipeError(f"tune: --space {key}={value}: {error}") from None
    return space


def grid(space: dict[str, list], search_id: str) -> list[Point]:
    """The points of `space` in a fixed order, named tune-SEARCH-N."""
    return [Point(dict(zip(space, combination, strict=True)), f"tune-{search_id}-{n}")
            for n, combination in enumerate(itertools.product(*space.values()), start=1)]


def score(points: list[Point], metric: str, cwd: Path) -> None:
    """Each point's validation figures from its experiment's metrics/finetune.json."""
    finished = dict(experiments(cwd, allow_none=True))
    for point in points:
        rev = finished.get(point.name)
        figures = file_at(rev, "metrics/finetune.json", cwd) if rev else None
        if figures is None or dig(figures, metric) is None:
            point.state = "failed" if rev is None else "no metrics"
            continue
        point.score, point.val_loss, point.state = float(figures[metric]), dig(figures, "val_loss"), "done"


def best(points: list[Point], metric: str) -> Point:
    """The best-scoring point; ties go to the lower validation loss, then to the earlier point."""
    done = [p for p in points if p.score is not None]
    if not done:
        raise TlpipeError("tune: no point of the search finished; `dvc queue logs NAME` shows why "
                          f"({', '.join(p.name for p in points)}).")
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    return min(done, key=lambda p: (-sign * p.score, p.val_loss if p.val_loss is not None else float("inf"),
                                    points.index(p)))


def search(space: dict[str, list], metric: str, jobs: int, cwd: Path = Path("."),
           timeout_s: float = 24 * 3600, log=print) -> tuple[list[Point], Point]:
    """Queue every point, run the queue, score every point, return (points, best)."""
    if metric not in HIGHER_IS_BETTER:
        raise TlpipeError(f"tune: --metric {metric!r} is not one of {', '.join(HIGHER_IS_BETTER)}.")
    points = grid(space, time.strftime("%Y%m%d-%H%M%S"))
    log(f"tune: {len(points)} points queued as {points[0].name}..{points[-1].name.rsplit('-', 1)[1]} "
        "(the finetune stage only: the test split is not read)")
    run_queued({point.name: [arg for key, value in point.values.items() for arg in ("-S", f"{key}={value}")]
                for point in points}, "finetune", jobs, cwd, "tune", timeout_s)
    score(points, metric, cwd)
    return points, best(points, metric)


def table(points: list[Point], winner: Point, metric: str) -> str:
    keys = list(points[0].values)
    lines = [f"| experiment | {' | '.join(keys)} | {metric} | val_loss | |", "|---" * (len(keys) + 4) + "|"]
    for p in points:
        figure = f"{p.score:.4f}" if p.score is not None else p.state
        loss = f"{p.val_loss:.4f}" if p.val_loss is not None else ""
        lines.append(f"| {p.name} | {' | '.join(str(p.values[k]) for k in keys)} | {figure} | {loss} | "
                     f"{'**best**' if p is winner else ''} |")
    return "\n".join(lines) + "\n"


def write(points: list[Point], winner: Point, metric: str, out: Path) -> Path:
    record = {"metric": metric, "best": winner.name, "best_values": winner.values,
              "points": [p.__dict__ for p in points]}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out
