import errno


class TlpipeError(Exception):
    """A problem the user can fix: the message names the file or key and the fix.

    Stage scripts print it without a traceback and exit non-zero.
    """


_OS_ADVICE = {
    errno.ENOENT: "not found. If it is an output of an earlier stage, run `dvc repro` (or `dvc pull`); "
                  "otherwise check the path",
    errno.EACCES: "permission denied. Make it (and its folder) readable and writable for you, or run from a "
                  "copy you own",
    errno.EPERM: "operation not permitted. Check the permissions of the file and its folder",
    errno.EROFS: "the file system is read-only. Work in a writable copy of the project",
    errno.EISDIR: "is a folder where a file was expected. Give the file's path",
    errno.ENOTDIR: "a part of this path is a file where a folder was expected. Check the path",
    errno.ENAMETOOLONG: "the name is too long for this file system. Shorten it",
    errno.EMFILE: "too many open files. Raise the limit (`ulimit -n`) and run again",
}


def user_message(error: BaseException) -> str | None:
    """One line naming the path and the fix for the errors any command can meet (OS, text decoding);
    None for anything else (a bug, shown with its traceback)."""
    if isinstance(error, TlpipeError):
        return str(error)
    if isinstance(error, UnicodeDecodeError):
        return (f"a file that should be UTF-8 text is not (byte {error.start}: {error.reason}). "
                "Save it as UTF-8.")
    if isinstance(error, OSError):
        where = error.filename if error.filename is not None else "a file"
        advice = _OS_ADVICE.get(error.errno, f"{error.strerror or type(error).__name__}. Check the path and "
                                             "the disk, then run again")
        return f"{where}: {advice}."
    return None
