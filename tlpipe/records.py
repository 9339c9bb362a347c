"""Every output restorable from the DVC remote, metrics kept in Git as well.

Metrics are `cache: false` outputs so that they live in Git and `dvc metrics diff main` works in
a fresh clone without the remote. DVC does not push such outputs, so on a machine without the
committed `dvc.lock` their stage could not be restored from the run-cache and would rerun. Each
stage therefore also declares a cached copy of every Git-tracked output, `records/<path>`, byte
for byte: DVC stores objects by content, so pushing the copy puts the Git-tracked file's object in
the remote too, and `dvc pull --run-cache` + `dvc repro --pull` restore the stage instead of
running it. `mirror` writes those copies once the stage has succeeded.
"""

import shutil
from pathlib import Path

import yaml

from tlpipe.atomic import atomic_path

RECORDS = Path("records")


def _entries(spec: dict) -> list[tuple[str, dict]]:
    out = []
    for section in ("outs", "metrics", "plots"):
        for entry in spec.get(section) or []:
            path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            out.append((path, options or {}))
    return out


def git_outputs(spec: dict) -> list[str]:
    """The stage's outputs that DVC does not cache (kept in Git)."""
    return [path for path, options in _entries(spec) if options.get("cache") is False]


def cached_outputs(spec: dict) -> list[str]:
    return [path for path, options in _entries(spec) if options.get("cache", True) is not False]


def stage_spec(stage: str, dvc_yaml: str | Path = "dvc.yaml") -> dict | None:
    path = Path(dvc_yaml)
    if not path.is_file():
        return None
    return (yaml.safe_load(path.read_text()) or {}).get("stages", {}).get(stage)


def record_path(path: str) -> Path:
    return RECORDS / path


def mirror(stage: str, dvc_yaml: str | Path = "dvc.yaml") -> None:
    """Copy each Git-tracked output of `stage` to its declared record (atomically)."""
    spec = stage_spec(stage, dvc_yaml)
    if spec is None:
        return
    declared = set(cached_outputs(spec))
    for path in git_outputs(spec):
        record = record_path(path)
        if record.as_posix() not in declared or not Path(path).exists():
            continue
        source = Path(path)
        with atomic_path(record, directory=source.is_dir()) as tmp:
            if source.is_dir():
                shutil.rmtree(tmp)
                shutil.copytree(source, tmp)
            else:
                shutil.copyfile(source, tmp)
