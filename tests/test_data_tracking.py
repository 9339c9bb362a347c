"""The lock knows its data: a change behind `data.source` reruns download and what follows, the
same data reruns nothing, and metrics/data.json names the data a run used.

Judged from DVC's own output (`dvc status`, `dvc repro`, `dvc metrics diff`) in temporary Git repos.
"""

import hashlib
import http.server
import io
import json
import os
import re
import threading
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_image_tree, png_bytes, ran_stages, run, set_params

pytestmark = pytest.mark.slow


def repro_split(project) -> list[str]:
    """The stages `dvc repro split` ran, or restored from the run-cache (data seen before)."""
    out = run(["dvc", "repro", "split"], project).stdout
    return [s for s in ("download", "split")
            if re.search(rf"Running stage '{s}'|Stage '{s}' is cached - skipping run", out)]


def status(project) -> str:
    return run(["dvc", "status", "download", "split"], project).stdout


def record(project) -> dict:
    return json.loads((project / "metrics" / "data.json").read_text())


def listed(project) -> set[str]:
    return set(pd.read_csv(project / "data" / "split.csv")["path"])


def commit(project, message="run"):
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", message], project)


@pytest.fixture
def folder_project(dvc_project, tmp_path):
    images = tmp_path / "images"
    make_image_tree(images, {"circle": 12, "square": 12, "cross": 12})
    set_params(dvc_project, **{"data.source": f"path:{images}"})
    commit(dvc_project, "pipeline")
    assert repro_split(dvc_project) == ["download", "split"]
    commit(dvc_project)
    return dvc_project, images


def test_every_change_to_a_folder_reruns_download_and_split(folder_project):
    project, images = folder_project
    first = record(project)
    assert first["files"] == 36 and first["source"] == f"path:{images}"

    def changed(edit) -> dict:
        before = record(project)
        edit()
        assert str(images) in status(project) and "modified" in status(project)
        assert repro_split(project) == ["download", "split"]
        assert "up to date" in status(project)
        after = record(project)
        assert after["content_sha256"] != before["content_sha256"]
        return after

    assert changed(lambda: (images / "circle" / "new.png").write_bytes(png_bytes(999)))["files"] == 37
    assert "images/circle/new.png" in listed(project)
    assert changed(lambda: (images / "circle" / "new.png").unlink())["files"] == 36
    assert not any(p.endswith("new.png") for p in listed(project))
    assert changed(lambda: (images / "square" / "img000.png").write_bytes(png_bytes(1234)))["files"] == 36
    renamed = changed(lambda: (images / "cross" / "img001.png").rename(images / "cross" / "renamed.png"))
    assert renamed["files"] == 36 and "images/cross/renamed.png" in listed(project)
    assert renamed["bytes"] != first["bytes"] or renamed["content_sha256"] != first["content_sha256"]


def test_touch_or_a_second_run_reruns_nothing_and_keeps_the_record(folder_project):
    project, images = folder_project
    before = (project / "metrics" / "data.json").read_bytes()
    assert repro_split(project) == []
    later = time.time() + 60
    for path in images.rglob("*.png"):
        os.utime(path, (later, later))
    assert "up to date" in status(project)
    assert repro_split(project) == []
    assert (project / "metrics" / "data.json").read_bytes() == before


def test_metrics_diff_names_a_data_change(folder_project):
    project, images = folder_project
    assert "metrics/data.json" not in run(["dvc", "metrics", "diff"], project).stdout
    (images / "square" / "extra.png").write_bytes(png_bytes(4321))
    repro_split(project)
    diff = run(["dvc", "metrics", "diff", "--json"], project).stdout
    changes = json.loads(diff)["metrics/data.json"]
    assert changes["files"] == {"old": 36, "new": 37, "diff": 1}
    assert changes["content_sha256"]["old"] != changes["content_sha256"]["new"]
    # and Git answers "which data made this model?"
    commit(project, "new image")
    log = run(["git", "log", "-p", "--format=%s", "--", "metrics/data.json"], project).stdout
    assert "new image" in log and '+  "files": 37' in log


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def images_zip(count: int, seed: int = 0) -> bytes:
    return zip_of({f"set/{'a' if i % 2 else 'b'}/{i:03d}.png": png_bytes(seed * 1000 + i) for i in range(count)})


def test_a_replaced_archive_reruns_and_the_same_bytes_do_not(dvc_project, tmp_path):
    archive = tmp_path / "set.zip"
    archive.write_bytes(images_zip(30))
    set_params(dvc_project, **{"data.source": f"path:{archive}"})
    commit(dvc_project, "pipeline")
    assert repro_split(dvc_project) == ["download", "split"]
    first = record(dvc_project)
    assert first["files"] == 30 and first["archive_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()

    archive.write_bytes(archive.read_bytes())  # same bytes, new mtime
    assert repro_split(dvc_project) == []
    archive.write_bytes(images_zip(32, seed=1))
    assert str(archive) in status(dvc_project)
    assert repro_split(dvc_project) == ["download", "split"]
    assert record(dvc_project)["files"] == 32


def test_a_pinned_sha256_refuses_another_archive_and_keeps_nothing(dvc_project, tmp_path):
    archive = tmp_path / "set.zip"
    archive.write_bytes(images_zip(30))
    wrong = "0" * 64
    set_params(dvc_project, **{"data.source": f"path:{archive}", "data.sha256": wrong})
    result = run(["dvc", "repro", "download"], dvc_project, check=False)
    assert result.returncode != 0
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert len(error) == 1 and "set.zip" in error[0] and wrong in error[0] and f"data.sha256: {actual}" in error[0]
    assert not (dvc_project / "data" / "raw").exists() and not (dvc_project / "metrics" / "data.json").exists()
    set_params(dvc_project, **{"data.sha256": actual})
    assert ran_stages(run(["dvc", "repro", "download"], dvc_project).stdout) == ["download"]


class Served:
    """A loopback HTTP server for one file, whose bytes a test can change."""

    def __init__(self, payload: bytes):
        self.payload = payload
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _head(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(served.payload)))
                self.send_header("ETag", f'"{hashlib.md5(served.payload).hexdigest()}"')
                self.end_headers()

            def do_HEAD(self):
                self._head()

            def do_GET(self):
                self._head()
                self.wfile.write(served.payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/set.zip"


@pytest.fixture
def served():
    server = Served(images_zip(30))
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_a_changed_file_at_the_same_url_is_seen_and_a_pinned_checksum_honoured(dvc_project, served):
    set_params(dvc_project, **{"data.source": f"url:{served.url}"})
    commit(dvc_project, "pipeline")
    assert repro_split(dvc_project) == ["download", "split"]
    assert record(dvc_project)["archive_sha256"] == hashlib.sha256(served.payload).hexdigest()
    assert repro_split(dvc_project) == []

    served.payload = images_zip(34, seed=2)
    assert served.url in status(dvc_project)
    assert repro_split(dvc_project) == ["download", "split"]
    assert record(dvc_project)["files"] == 34

    pinned = hashlib.sha256(served.payload).hexdigest()
    set_params(dvc_project, **{"data.sha256": pinned})
    assert repro_split(dvc_project) == ["download"]  # the same bytes: split sees the same data/raw
    served.payload = images_zip(36, seed=3)
    result = run(["dvc", "repro", "split"], dvc_project, check=False)
    assert result.returncode != 0 and f"not the expected {pinned}" in result.stderr
    assert record_is_absent_or_old(dvc_project, files=34)


def record_is_absent_or_old(project, files: int) -> bool:
    path = project / "metrics" / "data.json"
    return not path.exists() or json.loads(path.read_text())["files"] == files


def test_track_must_name_the_source(dvc_project, tmp_path):
    images = tmp_path / "images"
    make_image_tree(images, {"a": 4, "b": 4})
    set_params(dvc_project, **{"data.source": f"path:{images}", "data.track": "stages/download.py"})
    result = run(["dvc", "repro", "download"], dvc_project, check=False)
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"'data.track' must be '{images}'" in error[0]
    assert f"tlpipe source path:{images}" in error[0]
    run(["python", "-m", "tlpipe.cli", "source", f"path:{images}"], dvc_project)
    assert ran_stages(run(["dvc", "repro", "download"], dvc_project).stdout) == ["download"]
    assert Path(run(["python", "-m", "tlpipe.cli", "source"], dvc_project).stdout.splitlines()[1].split()[1]) == images


def test_check_looks_at_a_path_source_as_the_pipeline_will(tmp_path):
    from conftest import REPO

    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text((REPO / "params.yaml").read_text())

    def check():
        return run(["python", "-m", "tlpipe.cli", "check"], project, check=False)

    images = tmp_path / "images"
    make_image_tree(images, {"circle": 20, "square": 20})
    (images / "notes.txt").write_text("not an image")
    run(["python", "-m", "tlpipe.cli", "source", f"path:{images}"], project)
    said = check()
    assert said.returncode == 0, said.stderr
    assert "40 images in 2 classes (circle 20, square 20)" in said.stdout
    assert "1 files left out (e.g. notes.txt: not an image file" in said.stdout
    assert "split it would make: train 28, val 6, test 6" in said.stdout

    (images / "square").rename(tmp_path / "elsewhere")
    (images / "square").mkdir()  # a class folder left empty
    said = check()
    assert said.returncode == 2 and said.stderr.count("\n") == 1
    assert "found 1 class(es) with images (circle; empty folders: square)" in said.stderr
    (images / "square").rmdir()
    (tmp_path / "elsewhere").rename(images / "square")
    images.rename(tmp_path / "moved")
    said = check()
    assert said.returncode == 2 and f"{images} does not exist" in said.stderr and said.stderr.count("\n") == 1
