import http.server
import threading
import zipfile

import pytest

from conftest import make_image_tree, png_bytes
from tlpipe.data.sources import fetch
from tlpipe.errors import TlpipeError


def test_sklearn_digits_written_as_png_class_folders(tmp_path):
    fetch("sklearn:digits", tmp_path / "raw")
    files = sorted((tmp_path / "raw" / "digits").rglob("*.png"))
    assert len(files) == 1797
    assert sorted({f.parent.name for f in files}) == [str(d) for d in range(10)]


@pytest.mark.robustness
def test_unknown_sklearn_dataset(tmp_path):
    with pytest.raises(TlpipeError, match="sklearn:digits"):
        fetch("sklearn:iris", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_local_folder_is_copied(tmp_path):
    make_image_tree(tmp_path / "mydata", {"a": 3, "b": 2})
    fetch(f"path:{tmp_path / 'mydata'}", tmp_path / "raw")
    assert sorted(p.relative_to(tmp_path / "raw").as_posix() for p in (tmp_path / "raw").rglob("*.png")) == [
        "mydata/a/img000.png", "mydata/a/img001.png", "mydata/a/img002.png", "mydata/b/img000.png", "mydata/b/img001.png"]


def test_local_archive_is_kept_as_archive(tmp_path):
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/1.png", png_bytes(1))
    fetch(f"path:{archive}", tmp_path / "raw")
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["set.zip"]
    assert (tmp_path / "raw" / "set.zip").read_bytes() == archive.read_bytes()


@pytest.mark.parametrize("source, message", [
    ("path:/no/such/folder", "does not exist"),
    ("url:https://example.invalid/data.csv", "does not name a .zip"),
    ("url:ftp://example.invalid/data.zip", "must start with http"),
])
@pytest.mark.robustness
def test_bad_sources(tmp_path, source, message):
    with pytest.raises(TlpipeError, match=message):
        fetch(source, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


class _ArchiveHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    cut_after: int | None = None

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload[: self.cut_after] if self.cut_after else self.payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def archive_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ArchiveHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_url_archive_downloaded_whole(tmp_path, archive_server):
    _ArchiveHandler.payload, _ArchiveHandler.cut_after = b"PK" + bytes(range(256)) * 100, None
    fetch(f"url:http://127.0.0.1:{archive_server.server_port}/files/set.zip", tmp_path / "raw")
    assert (tmp_path / "raw" / "set.zip").read_bytes() == _ArchiveHandler.payload


@pytest.mark.robustness
def test_url_download_cut_half_way_leaves_nothing(tmp_path, archive_server):
    _ArchiveHandler.payload, _ArchiveHandler.cut_after = bytes(100_000), 50_000
    with pytest.raises(TlpipeError, match="download"):
        fetch(f"url:http://127.0.0.1:{archive_server.server_port}/set.zip", tmp_path / "raw")
    assert list(tmp_path.iterdir()) == []
