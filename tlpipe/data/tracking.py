"""`tlpipe source`: point the project at its data, say what data the last run used, and take in
newer data where that is the user's decision (a new Kaggle version).

A path: folder or archive and a url: file need no command: the download stage depends on them
through `data.track`, so `dvc status` names a change and `dvc repro` takes it in. A Kaggle data set
is pinned by its version in `data.source`; a newer one is taken only by `tlpipe source --update`.
"""

import json
from dataclasses import replace
from pathlib import Path

from tlpipe import params
from tlpipe.data.identity import RECORD
from tlpipe.errors import TlpipeError
from tlpipe.params import DataParams, SplitParams
from tlpipe.params_edit import merge_values


def _kaggle():
    from tlpipe.data import kaggle

    return kaggle


def resolved(source: str, pin_kaggle: bool = True) -> str:
    """`source` as params.yaml should hold it: a path made absolute (DVC then finds it from
    experiments' temporary copies of the project too) and checked, a Kaggle data set pinned to its
    newest version (`pin_kaggle`)."""
    kind, _, where = source.partition(":")
    if kind == "path":
        path = Path(where.strip()).expanduser().resolve()
        if not path.exists():
            raise TlpipeError(f"data.source {source}: {path} does not exist; give an image folder or an archive. "
                              "Nothing was changed.")
        return f"path:{path}"
    if pin_kaggle and kind == "kaggle" and _kaggle().named_version(where) is None and not where.startswith("c/"):
        return f"kaggle:{where}/{_kaggle().newest_version(where)}"
    return source


def set_source(source: str, params_path: Path, sha256: str | None = None) -> dict[str, tuple]:
    source = resolved(source)
    return merge_values({"data.source": source, "data.track": params.track_for(source), "data.sha256": sha256},
                        params_path, "tlpipe source")


def recorded(record: Path = RECORD) -> dict | None:
    try:
        return json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def report(data: DataParams, record: dict | None) -> list[str]:
    """What the project points at, what the last run used, and whether newer data waits upstream."""
    watched = ("nothing on disk to watch: data.source names the data" if data.track == params.NOTHING_TO_TRACK
               else "DVC hashes it: `dvc status download`")
    lines = [f"data.source: {data.source}", f"data.track:  {data.track} ({watched})"]
    if record is None:
        lines.append(f"{RECORD}: none yet; `dvc repro download` writes it.")
    else:
        used = ", ".join(f"{key} {value}" for key, value in record.items() if key != "source")
        same = "" if record.get("source") == data.source else f" (from {record.get('source')}, not data.source)"
        lines.append(f"last run used{same}: {used}")
    kind, _, where = data.source.partition(":")
    if kind == "kaggle" and not where.startswith("c/"):
        pinned = _kaggle().named_version(where) or (record or {}).get("kaggle_version")
        newest = _kaggle().newest_version(where)
        if pinned is None or newest != pinned:
            lines.append(f"Kaggle's newest version is {newest}; this project uses {pinned or 'none yet'}. "
                         "`tlpipe source --update` pins it, then `dvc repro` takes it in.")
        else:
            lines.append(f"Kaggle's newest version is {newest}, the one this project uses.")
    elif kind in ("path", "url"):
        lines.append("New, changed or deleted files there: `dvc status` names them, `dvc repro` takes them in.")
    return lines


def update(data: DataParams, params_path: Path) -> dict[str, tuple]:
    """Pin the newest Kaggle version; other sources have nothing to pin."""
    kind, _, where = data.source.partition(":")
    if kind != "kaggle" or where.startswith("c/"):
        raise TlpipeError(f"tlpipe source --update: data.source {data.source} has no versions to update; "
                          "`dvc repro` takes in what changed at the source.")
    return set_source(f"kaggle:{_kaggle().unversioned(where)}", params_path)


def preview(data: DataParams, split_cfg: SplitParams, project: Path = Path(".")) -> list[str]:
    """What `dvc repro` would find at a path: source, without copying or decoding anything: the
    classes and their images, the files left out, and the split it would carve (before copies and
    near-duplicates are grouped). Other sources are fetched by the download stage."""
    from tlpipe.data.raw import RawData, archive_members, is_archive
    from tlpipe.data.split import assign_splits, list_images
    from tlpipe.data.split_report import SplitReport

    kind, _, where = data.source.partition(":")
    if kind != "path":
        return [f"data.source {data.source}: fetched by `dvc repro download`; not looked at here."]
    src = (project / Path(where.strip()).expanduser()).resolve()
    if not src.exists():
        raise TlpipeError(f"data.source {data.source}: {src} does not exist. Give an image folder or an archive "
                          "(`tlpipe source path:FOLDER`).")
    if src.is_file() and not is_archive(src.name):
        raise TlpipeError(f"data.source {data.source}: {src} is a file but not a .zip or .tar archive.")
    raw, entries = archive_members(src) if src.is_file() else (RawData(src), None)
    report = SplitReport()
    images = list_images(raw, replace(split_cfg, labels_csv=None), report, entries)
    if split_cfg.labels_csv:
        return [f"source {src}: {len(images)} image files; labels come from split.labels_csv, which "
                "`dvc repro split` reads."]
    counts = images["label"].value_counts().sort_index()
    lines = [f"source {src}: {len(images)} images in {len(counts)} classes ("
             + ", ".join(f"{label} {n}" for label, n in counts.items()) + ")"]
    if report.skipped:
        first = report.skipped[0]
        lines.append(f"  {len(report.skipped)} files left out (e.g. {first['path']}: {first['reason']}); "
                     "`dvc repro split` lists them all in metrics/split.json")
    if raw.empty_folders:
        lines.append(f"  empty folders, not classes: {', '.join(raw.empty_folders[:5])}")
    if len(counts) < 2:
        empty = f"; empty folders: {', '.join(raw.empty_folders[:5])}" if raw.empty_folders else ""
        raise TlpipeError(f"data.source {data.source}: found {len(counts)} class(es) with images "
                          f"({', '.join(counts.index) or 'none'}{empty}); a classifier needs at least 2. Put each "
                          "class's images in a folder named after the class: FOLDER/CLASS/image.jpg.")
    split = assign_splits(images, split_cfg, report).value_counts()
    key = report.group_key.get("regex")
    lines.append("  split it would make: " + ", ".join(f"{name} {int(split.get(name, 0))}" for name in
                                                        ("train", "val", "test"))
                 + f" (subject key in file names: {key or 'none'}; copies and near-duplicates are grouped "
                   "by `dvc repro split` too)")
    return lines
