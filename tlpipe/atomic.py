"""Write outputs under a temporary name and rename them into place.

An interrupted stage then never leaves a file or folder that looks complete.
"""

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from tlpipe.errors import TlpipeError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _remove_stale(final: Path) -> None:
    """Temporary paths of `final` left by a killed run (SIGKILL leaves no chance to clean up)."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.[a-z0-9_]{{8}}\.partial")
    for path in final.parent.iterdir():
        if pattern.fullmatch(path.name):
            _remove(path)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, directory: bool = False):
    """Yield a temporary path beside `final`; on success rename it to `final`.

    On any exception (KeyboardInterrupt included) the temporary path is removed and
    `final` is left as it was: absent or the previous complete version, never half written.
    A full disk becomes a TlpipeError that names `final`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory or final.is_dir():
            _remove(final)  # os.replace swaps files atomically, but not a folder for a non-empty one
        os.replace(tmp, final)
    except OSError as error:
        _remove(tmp)
        if error.errno in DISK_FULL:
            raise TlpipeError(disk_full_message(final, error)) from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def disk_full_message(final: Path, error: OSError) -> str:
    free = shutil.disk_usage(final.parent).free / 1e9
    return (f"{final}: no space left on device while writing it ({error.strerror}; {free:.1f} GB free "
            f"in {final.parent.resolve()}). The partial file was removed. Free some space, or move "
            "the project (or its DVC cache: `dvc cache dir`) to a bigger disk, and run `dvc repro` again.")


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
