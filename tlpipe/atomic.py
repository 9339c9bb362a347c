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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, directory: bool = False):
    """Yield a temporary path beside `final`; on success rename it to `final`.

    On any exception (KeyboardInterrupt included) the temporary path is removed and
    `final` is left as it was: absent or the previous complete version, never half written.
    A file is never written over a folder: that folder may be the user's (`--out images`), and
    nothing a user named is removed. Only a folder output (`directory=True`: a stage's own
    output folder such as data/cache) replaces the folder of the same name.
    A full disk becomes a TlpipeError that names `final`.
    """
    final = Path(final)
    if not directory and final.is_dir():
        raise TlpipeError(f"{final}: is a folder; nothing was written and the folder is untouched. "
                          f"Give a file path for the output, e.g. {final / 'output'}{final.suffix or ''}.")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise TlpipeError(f"{final.parent}: exists but is not a folder, so {final} cannot be written there. "
                          "Choose another output path.") from None
    _remove_stale(final)
    # mkstemp/mkdtemp create 0600/0700 paths; outputs get the usual permissions (teammates can read them).
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
            tmp.chmod(0o777 & ~_umask())
        else:
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
            os.close(fd)
            tmp = Path(name)
            tmp.chmod(0o666 & ~_umask())
    except OSError as error:
        raise _naming(error, final) from None
    try:
        yield tmp
        if directory and final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)  # os.replace cannot swap a folder for a non-empty one
        elif final.is_dir():
            raise TlpipeError(f"{final}: became a folder while it was being written; it is left as it is.")
        os.replace(tmp, final)
    except OSError as error:
        _remove(tmp)
        if error.errno in DISK_FULL:
            raise TlpipeError(disk_full_message(final, error)) from None
        raise _naming(error, final, tmp) from None
    except BaseException:
        _remove(tmp)
        raise


def _naming(error: OSError, final: Path, tmp: Path | None = None) -> OSError:
    """The error as the user sees it: about `final`, never about the temporary name, which is gone
    (a refused temporary file or rename carries that name)."""
    if tmp is None or error.filename in (str(tmp), tmp) or error.filename2 in (str(tmp), tmp):
        return type(error)(error.errno, error.strerror, str(final))
    return error


def refuse_overwriting_inputs(outputs, inputs) -> None:
    """A command never writes over what it reads: an output that exists and is one of the inputs
    (a file named, or a file inside a folder named) is refused before anything is read or written."""
    named = [Path(path).resolve() for path in inputs]
    for output in map(Path, outputs):
        if not output.exists():
            continue
        target = output.resolve()
        for source in named:
            if target == source or target.is_relative_to(source):
                raise TlpipeError(f"{output}: is one of this command's inputs ({source}); it was not overwritten "
                                  "and nothing was written. Give an output path outside the inputs.")


def disk_full_message(final: Path, error: OSError) -> str:
    free = shutil.disk_usage(final.parent).free / 1e9
    return (f"{final}: no space left on device while writing it ({error.strerror}; {free:.1f} GB free "
            f"in {final.parent.resolve()}). The partial file was removed. Free some space, or move "
            "the project (or its DVC cache: `dvc cache dir`) to a bigger disk, and run `dvc repro` again.")


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")

