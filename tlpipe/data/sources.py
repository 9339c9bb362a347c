"""The download stage: bring the data named by `data.source` into the raw folder, as fetched."""

import http.client
import os
import shutil
import stat
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from tlpipe.progress import progress

from tlpipe.atomic import DISK_FULL, atomic_path
from tlpipe.errors import TlpipeError
from tlpipe.data.raw import is_archive

CHUNK = 1 << 20


def fetch(source: str, raw_dir: Path, sha256: str | None = None, kaggle_version: int | None = None) -> dict:
    """Fill `raw_dir` (replaced whole, atomically) from `source`; return what pins the data beyond
    its bytes (the Kaggle version fetched, the archive's SHA-256). An archive whose SHA-256 is not
    `sha256` is refused before anything is kept. `kaggle_version` is fetched when `source` names none."""
    kind, _, where = source.partition(":")
    details: dict = {}
    with atomic_path(raw_dir, directory=True) as tmp:
        if kind == "sklearn":
            write_sklearn_dataset(where, tmp)
        elif kind == "kaggle":
            from tlpipe.data.kaggle import download_kaggle_dataset

            _, details["kaggle_version"] = download_kaggle_dataset(where, tmp, kaggle_version)
        elif kind == "url":
            details["archive_sha256"] = verified(download_url(where, tmp), sha256)
        elif kind == "path":
            copied = copy_local(Path(where).expanduser(), tmp)
            if copied.is_file():
                details["archive_sha256"] = verified(copied, sha256)
            elif sha256 is not None:
                raise TlpipeError(f"data.sha256: checks an archive, but data.source {source} is a folder "
                                  "(DVC hashes every file of it through data.track). Set data.sha256: null.")
        else:
            raise TlpipeError(f"data.source: unknown kind '{kind}:'; use sklearn:, kaggle:, url: or path:.")
    return details


def verified(archive: Path, expected: str | None) -> str:
    """The archive's SHA-256, refused when it is not `expected`."""
    from tlpipe.data.identity import file_sha256

    actual = file_sha256(archive)
    if expected is not None and actual != expected.lower():
        raise TlpipeError(f"data.sha256: {archive.name} has SHA-256 {actual}, not the expected {expected.lower()} "
                          "(the file at the source changed, or it arrived damaged); nothing was kept. If the new "
                          f"file is the one you want, set data.sha256: {actual}.")
    return actual


def write_sklearn_dataset(name: str, dest: Path) -> None:
    """scikit-learn's 8x8 digits (shipped with the package), as PNG files in class folders."""
    if name != "digits":
        raise TlpipeError(f"data.source: 'sklearn:{name}' is not available; the embedded data set is 'sklearn:digits'.")
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = dest / "digits"
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png")


def _archive_name_from_url(url: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name
    if not is_archive(name):
        raise TlpipeError(
            f"data.source: url:{url} does not name a .zip or .tar(.gz/.bz2/.xz) archive; "
            "point it at the archive file itself."
        )
    return name


def download_url(url: str, dest: Path) -> Path:
    if not url.startswith(("http://", "https://")):
        raise TlpipeError(f"data.source: url:{url} must start with http:// or https://.")
    target = dest / _archive_name_from_url(url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if kind in ("text/html", "application/xhtml+xml"):
                raise TlpipeError(f"url:{url}: the server answered with a web page ({kind}), not the archive "
                                  "(a sign-in page, or a link to a page about the file). Use the file's direct "
                                  "download address.")
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(target, "wb") as out, progress(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        if total is not None and target.stat().st_size != total:
            raise TlpipeError(
                f"url:{url}: the download stopped after {target.stat().st_size} of {total} bytes. "
                "Run `dvc repro` again."
            )
    except http.client.IncompleteRead as error:
        raise TlpipeError(f"url:{url}: the download stopped early ({len(error.partial)} bytes of the last chunk "
                          "arrived); nothing was kept. Run `dvc repro` again.") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        if getattr(error, "errno", None) in DISK_FULL:
            raise  # atomic_path reports the full disk and removes the partial download
        raise TlpipeError(f"url:{url}: download failed ({error}). Check the address and your network.") from None
    return target


FICLONE = 0x40049409  # Linux ioctl: share the source's blocks, copy-on-write (btrfs, XFS, bcachefs)


def _copy_with_progress(src: Path, dst: Path, bar: tqdm) -> None:
    """Copy one file; on a file system with copy-on-write clones no block is written twice."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        if not _clone(fin, fout):
            while chunk := fin.read(CHUNK):
                fout.write(chunk)
                bar.update(len(chunk))
        else:
            bar.update(src.stat().st_size)
    shutil.copystat(src, dst)


def _clone(fin, fout) -> bool:
    try:
        import fcntl

        fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
        return True
    except (ImportError, OSError):  # not Linux, another file system, or a file system without clones
        return False


def _local_files(src: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(regular files, skipped with the reason) under `src`, relative to it: the rules the split stage
    applies to data/raw. Links are never followed (one out of the tree or back up it would copy data
    from elsewhere or loop forever); pipes, sockets and devices are skipped (opening a pipe waits
    forever)."""
    files, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            full = Path(dirpath) / name
            rel = full.relative_to(src)
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                skipped.append((rel, "symbolic link (not followed)"))
            elif stat.S_ISREG(mode):
                files.append(rel)
            else:
                skipped.append((rel, "not a regular file (a pipe, socket or device)"))
    return files, skipped


def copy_local(src: Path, dest: Path) -> Path:
    """Copy a local archive or folder as it is, and return the copy; what cannot be copied is listed
    on stderr."""
    if not str(src).strip():
        raise TlpipeError("data.source: path: names no folder or archive; give one, e.g. path:/data/my-set.")
    if not src.exists():
        raise TlpipeError(f"data.source: path:{src} does not exist on this machine. Give an image folder or an "
                          "archive; or, where the data is in the DVC remote and not here (a GPU box), run "
                          "`dvc pull`, then `dvc repro --allow-missing`, which keeps the pulled data.")
    if src.is_file():
        if not is_archive(src.name):
            raise TlpipeError(f"data.source: path:{src} is a file but not a .zip or .tar archive.")
        with progress(total=src.stat().st_size, unit="B", unit_scale=True, desc=src.name) as bar:
            _copy_with_progress(src, dest / src.name, bar)
        return dest / src.name
    if not src.is_dir():
        raise TlpipeError(f"data.source: path:{src} is not a folder or an archive (a pipe or device?).")
    if Path.cwd().resolve().is_relative_to(src.resolve()):
        raise TlpipeError(f"data.source: path:{src} holds this project itself; point it at the data's folder.")
    files, skipped = _local_files(src)
    if not files:
        raise TlpipeError(f"data.source: path:{src} holds no files. Point it at the folder of class folders.")
    for rel, reason in skipped:
        print(f"download: skipped {src / rel}: {reason}", file=sys.stderr)
    total = sum((src / f).stat().st_size for f in files)
    with progress(total=total, unit="B", unit_scale=True, desc=src.name) as bar:
        for rel in files:
            _copy_with_progress(src / rel, dest / src.name / rel, bar)
    return dest / src.name
