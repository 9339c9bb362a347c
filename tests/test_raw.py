import io
import tarfile
import zipfile

import pytest

from conftest import png_bytes
from tlpipe.errors import TlpipeError
from tlpipe.data.raw import RawData


def add_tar_member(tf: tarfile.TarFile, name: str, data: bytes = b"", **kwargs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in kwargs.items():
        setattr(info, key, value)
    tf.addfile(info, io.BytesIO(data) if data else None)


def test_zip_and_tar_members_are_listed_and_read(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with zipfile.ZipFile(raw / "a.zip", "w") as zf:
        zf.writestr("cats/1.png", png_bytes(1))
    with tarfile.open(raw / "b.tar.gz", "w:gz") as tf:
        add_tar_member(tf, "dogs/2.png", png_bytes(2))
    (raw / "c").mkdir()
    (raw / "c" / "3.png").write_bytes(png_bytes(3))
    data = RawData(raw)
    paths = [e.path for e in data.entries()]
    assert paths == ["a.zip/cats/1.png", "b.tar.gz/dogs/2.png", "c/3.png"]
    contents = dict(data.iter_bytes(paths))
    assert contents["b.tar.gz/dogs/2.png"] == png_bytes(2)
    assert contents["a.zip/cats/1.png"] == png_bytes(1)


@pytest.mark.robustness
def test_unsafe_archive_members_are_rejected_with_reason(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with zipfile.ZipFile(raw / "evil.zip", "w") as zf:
        zf.writestr("../outside.png", b"x")
        zf.writestr("/etc/abs.png", b"x")
        link = zipfile.ZipInfo("cats/link.png")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("cats/ok.png", png_bytes(1))
    with tarfile.open(raw / "evil.tar", "w") as tf:
        add_tar_member(tf, "dogs/sym.png", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add_tar_member(tf, "dogs/hard.png", type=tarfile.LNKTYPE, linkname="../../x")
        add_tar_member(tf, "../../up.png", b"x")
    data = RawData(raw)
    assert [e.path for e in data.entries()] == ["evil.zip/cats/ok.png"]
    reasons = {r.path: r.reason for r in data.rejected}
    assert reasons["evil.zip/../outside.png"] == "'..' in archive path"
    assert reasons["evil.zip/cats/link.png"] == "symbolic link in archive"
    assert reasons["evil.tar/dogs/sym.png"] == "link in archive"
    assert reasons["evil.tar/dogs/hard.png"] == "link in archive"
    assert reasons["evil.tar/../../up.png"] == "'..' in archive path"
    assert any("absolute" in r for r in reasons.values())


@pytest.mark.robustness
def test_corrupt_zip_is_a_clear_error(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(TlpipeError, match="broken.zip: not a readable zip archive"):
        RawData(raw).entries()


@pytest.mark.robustness
def test_archive_bomb_limits(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with zipfile.ZipFile(raw / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/zeros.png", b"\0" * 5_000_000)
        for i in range(20):
            zf.writestr(f"a/{i}.png", b"x")
    with pytest.raises(TlpipeError, match="possible archive bomb.*data.max_archive_entries"):
        RawData(raw, max_archive_gb=100, max_archive_entries=10).entries()
    with pytest.raises(TlpipeError, match="possible archive bomb"):
        RawData(raw, max_archive_gb=0.001).entries()
