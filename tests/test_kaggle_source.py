import base64
import io
import json
import logging
import os
import time
import zipfile

import pytest
from kagglesdk import kaggle_env

from conftest import png_bytes
from kaggle_fake import FakeKaggle
from tlpipe.data import kaggle as kaggle_source
from tlpipe.data.sources import fetch
from tlpipe.errors import TlpipeError
from tlpipe.data.kaggle import download_kaggle_dataset

USER = "tester"
SECRET = "s3cr3t-f4ke-kaggle-key-0123456789abcdef"
SECRETS = (SECRET, base64.b64encode(f"{USER}:{SECRET}".encode()).decode())


def small_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for i in range(40):
            zf.writestr(f"chest_xray/{'NORMAL' if i % 2 else 'PNEUMONIA'}/{i:03d}.png", png_bytes(i, size=(32, 32)))
    return buffer.getvalue()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty home: no kaggle.json, no KAGGLE_* variables, so the user's own config is never read."""
    home = tmp_path / "home"
    home.mkdir()
    for name in list(os.environ):
        if name.startswith("KAGGLE_") or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setattr(kaggle_source, "RETRIES", 0)
    return home


@pytest.fixture
def with_key(home):
    (home / ".kaggle").mkdir()
    config = home / ".kaggle" / "kaggle.json"
    config.write_text(json.dumps({"username": USER, "key": SECRET}))
    config.chmod(0o600)
    return config


@pytest.fixture
def kaggle(home, monkeypatch):
    """The real client's api.kaggle.com pointed at a fake on a free loopback port.

    The client ignores KAGGLE_API_ENVIRONMENT=TEST (localhost:7777): KaggleApi always names its environment.
    """
    with FakeKaggle(small_zip()) as fake:
        monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.PROD, fake.url)
        yield fake


def error_from(call, capfd, caplog) -> TlpipeError:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TlpipeError) as info:
        call()
    error = info.value
    assert error.__cause__ is None and error.__context__ is None
    out, err = capfd.readouterr()
    for text in (str(error), repr(error), out, err, caplog.text):
        assert not any(secret in text for secret in SECRETS)
    return error


def test_archive_is_kept_as_a_zip(tmp_path, kaggle, with_key, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    archive, version = download_kaggle_dataset("paultimothymooney/chest-xray-pneumonia", tmp_path / "dest")
    assert archive == tmp_path / "dest" / "chest-xray-pneumonia.zip" and version == 1
    assert list((tmp_path / "dest").iterdir()) == [archive]
    assert archive.read_bytes() == kaggle.versions[1]
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None and len(zf.namelist()) == 40
    ask, download = kaggle.requests[:2]
    slugs = {"ownerSlug": "paultimothymooney", "datasetSlug": "chest-xray-pneumonia"}
    assert ask["path"] == "/v1/datasets.DatasetApiService/GetDataset" and ask["body"] == slugs
    # the current version is asked first and then downloaded by number, so the record names what came
    assert download["path"] == "/v1/datasets.DatasetApiService/DownloadDataset"
    assert download["body"] == slugs | {"datasetVersionNumber": 1}
    assert download["authorization"] == f"Basic {SECRETS[1]}"
    out, err = capfd.readouterr()
    assert not any(secret in text for secret in SECRETS for text in (out, err, caplog.text))


def test_credentials_from_environment_and_competitions(tmp_path, kaggle, home, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    archive, version = download_kaggle_dataset("c/titanic", tmp_path / "dest")
    assert archive.name == "titanic.zip" and archive.read_bytes() == kaggle.versions[1] and version is None
    assert kaggle.requests[0]["path"] == "/v1/competitions.CompetitionApiService/DownloadDataFiles"
    assert kaggle.requests[0]["body"] == {"competitionName": "titanic"}


def test_no_credentials(tmp_path, kaggle, capfd, caplog):
    error = error_from(lambda: download_kaggle_dataset("owner/name", tmp_path / "dest"), capfd, caplog)
    for part in ("no Kaggle credentials", ".kaggle/kaggle.json", "KAGGLE_CONFIG_DIR", "KAGGLE_USERNAME",
                 "KAGGLE_KEY", "path:"):
        assert part in str(error)
    assert kaggle.requests == []


@pytest.mark.parametrize("mode, message", [
    (401, "rejected the credentials (HTTP 401)"),
    (403, "Open https://www.kaggle.com/datasets/owner/name while logged in, accept the rules"),
    (404, "Kaggle has no data set owner/name (HTTP 404)"),
    ("drop", "broke off"),
])
def test_refusals_and_broken_downloads_leave_nothing(tmp_path, kaggle, with_key, capfd, caplog, mode, message):
    kaggle.mode = mode
    error = error_from(lambda: download_kaggle_dataset("owner/name", tmp_path / "dest"), capfd, caplog)
    assert message in str(error)
    assert list((tmp_path / "dest").iterdir()) == []


def test_dropped_connection_says_run_again(tmp_path, kaggle, with_key, capfd, caplog):
    kaggle.mode = "drop"
    error = error_from(lambda: download_kaggle_dataset("owner/name", tmp_path / "dest"), capfd, caplog)
    assert "run `dvc repro` again" in str(error)
    assert [r["path"] for r in kaggle.requests] == ["/v1/datasets.DatasetApiService/GetDataset",
                                                    "/v1/datasets.DatasetApiService/DownloadDataset",
                                                    "/files/1/archive.zip"]


@pytest.mark.parametrize("mode", ["silent", "stall"])
def test_a_kaggle_that_stops_answering_is_given_up_with_nothing_left(tmp_path, kaggle, with_key, monkeypatch,
                                                                      capfd, caplog, mode):
    """No answer to the API call, or an archive that stops coming with the connection left open:
    the client would wait for ever; the watchdog gives up after STALL_S seconds."""
    monkeypatch.setattr(kaggle_source, "STALL_S", 1)
    monkeypatch.setattr(kaggle_source, "POLL_S", 0.05)
    kaggle.mode = mode
    started = time.monotonic()
    error = error_from(lambda: download_kaggle_dataset("owner/name/1", tmp_path / "dest"), capfd, caplog)
    assert time.monotonic() - started < 20
    assert "Kaggle sent nothing for 1 s while fetching" in str(error) and "Nothing was kept" in str(error)
    assert list((tmp_path / "dest").iterdir()) == []
    if mode == "silent":
        error = error_from(lambda: kaggle_source.newest_version("owner/name"), capfd, caplog)
        assert "Kaggle did not answer for 1 s" in str(error)


@pytest.mark.parametrize("name", ["chest-xray-pneumonia", "", "owner/", "a/b/c/d", "owner/name/v2", "c/comp/3",
                                  "https://www.kaggle.com/datasets/owner/name"])
def test_malformed_names(tmp_path, kaggle, with_key, name):
    with pytest.raises(TlpipeError, match="Use kaggle:OWNER/NAME"):
        download_kaggle_dataset(name, tmp_path / "dest")
    assert kaggle.requests == []


def test_failed_fetch_leaves_no_raw_folder(tmp_path, kaggle, with_key, capfd, caplog):
    kaggle.mode = 403
    error_from(lambda: fetch("kaggle:owner/name", tmp_path / "raw"), capfd, caplog)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_versions_recorded_reused_pinned_and_updated_only_when_asked(tmp_path, kaggle, with_key, monkeypatch):
    from conftest import REPO, run
    from tlpipe import params
    from tlpipe.data import tracking
    from tlpipe.data.identity import recorded_kaggle_version

    first = fetch("kaggle:owner/name", tmp_path / "raw")
    assert first == {"kaggle_version": 1}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("chest_xray/NORMAL/new.png", png_bytes(77, size=(32, 32)))
    newer = buffer.getvalue()
    kaggle.versions[2] = newer  # Kaggle publishes version 2

    project = tmp_path / "project"
    (project / "metrics").mkdir(parents=True)
    (project / "metrics" / "data.json").write_text(json.dumps({"source": "kaggle:owner/name", "kaggle_version": 1}))
    text = (REPO / "params.yaml").read_text().replace("source: sklearn:digits", "source: kaggle:owner/name")
    (project / "params.yaml").write_text(text)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "run"]):
        run(command, project)
    monkeypatch.chdir(project)

    # a rerun of an unpinned source takes the version the committed record names, not the newest
    assert recorded_kaggle_version("kaggle:owner/name") == 1
    assert fetch("kaggle:owner/name", tmp_path / "raw", kaggle_version=1) == {"kaggle_version": 1}
    assert (tmp_path / "raw" / "name.zip").read_bytes() == kaggle.versions[1]
    # `tlpipe source` names the newer version and how to take it
    data = params.load().data
    said = "\n".join(tracking.report(data, tracking.recorded()))
    assert "Kaggle's newest version is 2; this project uses 1" in said and "tlpipe source --update" in said
    # a pinned version is honoured, whatever is newest
    kaggle.requests.clear()
    fetch("kaggle:owner/name/1", tmp_path / "raw")
    assert (tmp_path / "raw" / "name.zip").read_bytes() == kaggle.versions[1]
    assert "/v1/datasets.DatasetApiService/GetDataset" not in [r["path"] for r in kaggle.requests]
    # --update pins the newest; the next download takes it
    assert tracking.update(data, project / "params.yaml")["data.source"] == ("kaggle:owner/name", "kaggle:owner/name/2")
    assert params.load().data.source == "kaggle:owner/name/2"
    fetch(params.load().data.source, tmp_path / "raw")
    assert (tmp_path / "raw" / "name.zip").read_bytes() == newer
