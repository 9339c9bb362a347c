"""Write outputs under a temporary name and rename them into place.

An interrupted stage then never leaves a file or folder that looks complete.
"""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, directory: bool = False):
    """Yield a temporary path beside `final`; on success rename it to `final`.

    On any exception (KeyboardInterrupt included) the temporary path is removed and
    `final` is left absent, never half written.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _remove(final)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
