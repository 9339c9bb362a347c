"""Read the raw data as the download stage left it: folders and archives, never extracted.

A path in the raw data is relative to the raw folder; a file inside an archive is addressed
through it, e.g. `chest.zip/chest_xray/train/NORMAL/IM-0115-0001.jpeg`.
"""

import os
import stat
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tlpipe.errors import TlpipeError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
MAX_FILE_BYTES = 1 << 30  # one image file larger than this is not an image we can use: refused unread
TAR_BLOCK = 512
LITTER_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True, slots=True)  # slots: a million entries without a dict each
class Entry:
    path: str  # relative to the raw folder, "/"-separated
    size: int


@dataclass(frozen=True)
class Rejected:
    path: str
    reason: str


NOT_UTF8 = "file name is not valid UTF-8 (shown with \\x escapes); rename it, e.g. with convmv -f latin1 -t utf8"


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by Python as lone surrogates
        return False
    return True


def printable(name: str) -> str:
    """A file name as text, with the bytes of a non-UTF-8 name shown as \\xNN escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_litter(path: str) -> bool:
    """macOS/Windows debris and hidden files, never data."""
    parts = PurePosixPath(path).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() in LITTER_NAMES


def _unsafe_member_reason(name: str) -> str | None:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path in archive"
    if ".." in posix.parts:
        return "'..' in archive path"
    return None


def _looks_like_html(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(512).lstrip().lower()
    except OSError:
        return False
    return head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body"))


def _unreadable_archive(archive: Path, kind: str, error: BaseException) -> TlpipeError:
    if _looks_like_html(archive):
        return TlpipeError(f"{archive}: an HTML page, not a {kind} archive (a sign-in or error page saved "
                           "under the archive's name?). Download the archive itself again.")
    return TlpipeError(f"{archive}: not a readable {kind} archive ({error}). Download it again.")


def _check_tar_end(tf: tarfile.TarFile, archive: Path) -> None:
    """A tar ends with zero blocks; one cut at a member boundary reads as complete without this check."""
    tf.fileobj.seek(tf.offset)
    end = tf.fileobj.read(TAR_BLOCK)
    if len(end) < TAR_BLOCK or end.strip(b"\0"):
        raise TlpipeError(f"{archive}: cut short: the tar archive stops after {len(tf.members)} members "
                          "without tar's end-of-archive marker (an interrupted download?). Download it again.")


def read_capped(stream, cap: int = MAX_FILE_BYTES) -> bytes:
    """Read a file or archive member in chunks, refusing one larger than `cap` before holding it all."""
    chunks, total = [], 0
    while chunk := stream.read(min(1 << 20, cap + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > cap:
            raise ValueError(f"larger than {cap >> 20} MiB, not read (not a usable image)")
    return b"".join(chunks)


class _Limits:
    def __init__(self, archive: str, max_bytes: float, max_entries: int):
        self.archive, self.max_bytes, self.max_entries = archive, max_bytes, max_entries
        self.bytes = self.entries = 0

    def add(self, size: int) -> None:
        self.bytes += size
        self.entries += 1
        if self.bytes > self.max_bytes or self.entries > self.max_entries:
            raise TlpipeError(
                f"{self.archive}: the archive unpacks to more than {self.max_entries} entries or "
                f"{self.max_bytes / 1e9:g} GB (possible archive bomb). If it is genuine, raise "
                "data.max_archive_entries / data.max_archive_gb in params.yaml."
            )


def _repeated(names: list[str], fingerprints: list | None = None) -> dict[int, str]:
    """Entries of an archive that repeat a name: {index: why it is left out}. Only one of them can
    be read back by name, so when their bytes differ (or cannot be told apart without reading them:
    `fingerprints` None) none is used; when they are the same bytes the first is kept."""
    seen: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        seen.setdefault(name, []).append(index)
    out = {}
    for name, indices in seen.items():
        if len(indices) < 2:
            continue
        same = fingerprints is not None and len({fingerprints[i] for i in indices}) == 1
        for i in (indices[1:] if same else indices):
            out[i] = (f"the archive holds {len(indices)} entries named {name}" + (
                " with the same bytes; the first is used" if same else
                " with different bytes; which one is meant is unclear, so none is used: keep one"))
    return out


def _zip_entries(archive: Path, prefix: str, limits: _Limits, rejected: list[Rejected]) -> Iterator[Entry]:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            repeated = _repeated([i.filename for i in infos], [(i.CRC, i.file_size) for i in infos])
            for index, info in enumerate(infos):
                if info.is_dir():
                    continue
                path = f"{prefix}/{info.filename}"
                if index in repeated:
                    limits.add(info.file_size)
                    rejected.append(Rejected(path, repeated[index]))
                    continue
                limits.add(info.file_size)
                reason = _unsafe_member_reason(info.filename)
                if reason is None and stat.S_ISLNK(info.external_attr >> 16):
                    reason = "symbolic link in archive"
                if reason:
                    rejected.append(Rejected(path, reason))
                else:
                    yield Entry(path, info.file_size)
    except zipfile.BadZipFile as error:
        raise _unreadable_archive(archive, "zip", error) from None


def _tar_entries(archive: Path, prefix: str, limits: _Limits, rejected: list[Rejected]) -> Iterator[Entry]:
    listed = []
    try:
        with tarfile.open(archive) as tf:
            for member in tf:
                if member.isdir():
                    continue
                path = f"{prefix}/{member.name}"
                limits.add(member.size)
                reason = _unsafe_member_reason(member.name)
                if reason is None and (member.issym() or member.islnk()):
                    reason = "link in archive"
                elif reason is None and not member.isfile():
                    reason = "special file in archive"
                elif reason is None and not _is_utf8(member.name):
                    path, reason = printable(path), NOT_UTF8
                listed.append((path, member.size, reason, member.name))
            _check_tar_end(tf, archive)
    except (tarfile.TarError, EOFError, OSError, zlib_error()) as error:
        raise _unreadable_archive(archive, "tar", error) from None
    repeated = _repeated([name for *_, name in listed])  # sizes alone cannot tell tar members apart
    for index, (path, size, reason, _) in enumerate(listed):
        reason = reason or repeated.get(index)
        if reason:
            rejected.append(Rejected(path, reason))
        else:
            yield Entry(path, size)


class RawData:
    """The files of a raw folder, with archives seen as folders of their own."""

    def __init__(self, root: str | os.PathLike, max_archive_gb: float = 50, max_archive_entries: int = 5_000_000):
        self.root = Path(root)
        if not self.root.is_dir():
            raise TlpipeError(f"{self.root}: raw data folder not found. Run `dvc repro download` first.")
        self.max_bytes = max_archive_gb * 1e9
        self.max_entries = max_archive_entries
        self.rejected: list[Rejected] = []
        self.empty_folders: list[str] = []

    def entries(self) -> list[Entry]:
        """Every regular file, sorted by path; unsafe or unusable ones go to `self.rejected`."""
        found: list[Entry] = []
        self.rejected, self.empty_folders = [], []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
                dirnames.remove(name)  # os.walk would skip it silently
                self._reject(Path(dirpath) / name, "symbolic link to a folder (not followed)")
            if not dirnames and not filenames and Path(dirpath) != self.root:
                self.empty_folders.append(printable(Path(dirpath).relative_to(self.root).as_posix()))
            for name in sorted(filenames):
                full = Path(dirpath) / name
                rel = full.relative_to(self.root).as_posix()
                if full.is_symlink():
                    self._reject(full, "symbolic link")
                elif not stat.S_ISREG(full.stat().st_mode):
                    self._reject(full, "not a regular file (a pipe, socket or device)")
                elif not _is_utf8(rel):
                    self._reject(full, NOT_UTF8)
                elif is_archive(name):
                    limits = _Limits(rel, self.max_bytes, self.max_entries)
                    reader = _zip_entries if name.lower().endswith(".zip") else _tar_entries
                    found.extend(reader(full, rel, limits, self.rejected))
                else:
                    found.append(Entry(rel, full.stat().st_size))
        return sorted(found, key=lambda e: e.path)

    def _reject(self, full: Path, reason: str) -> None:
        self.rejected.append(Rejected(printable(full.relative_to(self.root).as_posix()), reason))

    def is_archive_root(self, name: str) -> bool:
        return is_archive(name) and (self.root / name).is_file()

    def _split_archive(self, path: str) -> tuple[Path, str | None]:
        parts = PurePosixPath(path).parts
        for i in range(1, len(parts)):
            head = self.root.joinpath(*parts[:i])
            if head.is_file() and is_archive(parts[i - 1]):
                return head, "/".join(parts[i:])
        return self.root / path, None

    def iter_bytes(self, paths: Iterable[str]) -> Iterator[tuple[str, bytes | Exception]]:
        """Yield (path, content) for each path; an unreadable one yields (path, the error).

        Paths inside one archive are read together, in archive order for tar files
        (compressed tars cannot seek), so the order of the output may differ from the input.
        """
        by_archive: dict[Path, list[str]] = {}
        for path in paths:
            archive, member = self._split_archive(path)
            if member is None:
                yield path, _read_file(archive)
            else:
                by_archive.setdefault(archive, []).append(path)
        for archive, members in by_archive.items():
            prefix = archive.relative_to(self.root).as_posix() + "/"
            if archive.name.lower().endswith(".zip"):
                yield from _read_zip(archive, prefix, members)
            else:
                yield from _read_tar(archive, prefix, members)


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def _read_file(path: Path) -> bytes | Exception:
    try:
        with open(path, "rb") as f:
            return read_capped(f)
    except (OSError, ValueError) as error:
        return error


def _read_zip(archive: Path, prefix: str, paths: list[str]) -> Iterator[tuple[str, bytes | Exception]]:
    with zipfile.ZipFile(archive) as zf:
        for path in paths:
            try:
                with zf.open(path[len(prefix):]) as member:
                    yield path, read_capped(member)
            except (KeyError, zipfile.BadZipFile, OSError, EOFError, ValueError, zlib_error()) as error:
                yield path, error


def _read_tar(archive: Path, prefix: str, paths: list[str]) -> Iterator[tuple[str, bytes | Exception]]:
    wanted = {p[len(prefix):]: p for p in paths}
    with tarfile.open(archive) as tf:
        try:
            for member in tf:
                path = wanted.pop(member.name, None)
                if path is not None:
                    try:
                        yield path, read_capped(tf.extractfile(member))
                    except ValueError as error:
                        yield path, error
        except (tarfile.TarError, EOFError, OSError, zlib_error()) as error:
            for path in wanted.values():
                yield path, error
            wanted.clear()
    for path in wanted.values():
        yield path, FileNotFoundError(f"not in {archive.name}")


def archive_members(archive: str | os.PathLike, max_archive_gb: float = 50,
                    max_archive_entries: int = 5_000_000) -> tuple[RawData, list[Entry]]:
    """One archive on its own: a RawData over its folder (for `iter_bytes`) and its safe members,
    listed without walking the rest of that folder; unsafe members go to `raw.rejected`."""
    archive = Path(archive)
    raw = RawData(archive.parent, max_archive_gb, max_archive_entries)
    limits = _Limits(archive.name, raw.max_bytes, raw.max_entries)
    reader = _zip_entries if archive.name.lower().endswith(".zip") else _tar_entries
    return raw, sorted(reader(archive, archive.name, limits, raw.rejected), key=lambda e: e.path)
