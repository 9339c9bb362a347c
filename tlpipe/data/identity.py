"""The identity of the data a run used: how many files, how many bytes, a content hash, where from.

The download stage writes it to metrics/data.json, which is kept in Git: `dvc metrics diff` then
shows a data change between branches, and `git log -p metrics/data.json` says which data made a
model. The content hash covers every file's bytes and path, so adding, deleting, changing or
renaming an image changes it, and touching a file does not.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from tlpipe.data.raw import RawData

RECORD = Path("metrics/data.json")
CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe(raw_dir: Path, source: str, **details) -> dict:
    """`raw_dir`'s identity: its files (archive members counted one by one) and their bytes, and
    the SHA-256 of its listing (each file's SHA-256, size and path); `details` (a Kaggle version,
    an archive's SHA-256) are added as they are."""
    listing = hashlib.sha256()
    for path in sorted(p for p in raw_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(raw_dir).as_posix()
        listing.update(f"{file_sha256(path)}  {path.stat().st_size}  {rel}\n".encode("utf-8", "surrogateescape"))
    entries = RawData(raw_dir, max_archive_gb=float("inf"), max_archive_entries=1 << 62).entries()
    return {"source": source, "files": len(entries), "bytes": sum(e.size for e in entries),
            "content_sha256": listing.hexdigest(), **details}


def committed_record(record: Path = RECORD) -> dict | None:
    """The data record as committed at HEAD (DVC removes the working copy before download reruns)."""
    try:
        shown = subprocess.run(["git", "show", f"HEAD:{record.as_posix()}"], capture_output=True, text=True,
                               timeout=30)
        return json.loads(shown.stdout) if shown.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        return None


def recorded_kaggle_version(source: str) -> int | None:
    """For a kaggle: source that names no version, the version the committed record says was
    fetched: a rerun takes the same data, and a newer one only through `tlpipe source --update`."""
    if not names_no_version(source):
        return None
    record = committed_record()
    if record and record.get("source") == source and record.get("kaggle_version"):
        print(f"download: {source} names no version; taking version {record['kaggle_version']}, the one "
              f"{RECORD} records (`tlpipe source --update` pins Kaggle's newest).", file=sys.stderr)
        return record["kaggle_version"]
    return None


def names_no_version(source: str) -> bool:
    """A kaggle:OWNER/NAME source, without /VERSION (a competition, c/NAME, has no versions)."""
    kind, _, where = source.partition(":")
    return kind == "kaggle" and where.count("/") == 1 and not where.startswith("c/")
