"""`data.source: kaggle:OWNER/NAME`: fetch a data set's archive with the official `kaggle` client, kept as a zip.

The client is imported lazily: importing `kaggle` already tries to authenticate. Its output is captured (it
prints help and warnings to stdout) and every message passed on is scrubbed of the credentials. Errors are
raised outside any `except` block, so no chained exception (whose request carries the Authorization header)
rides along. The client's API requests carry no timeout and its public calls take none, so every call runs
under a watchdog (`_watched`): no answer and no new byte of the archive for STALL_S seconds, and the fetch is
given up with a one-line error.
"""

import contextlib
import glob
import inspect
import io
import os
import re
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeVar

from tlpipe.errors import TlpipeError

READ_TIMEOUT_S = 120  # the client's download_file: the longest wait for the next chunk of the archive
RETRIES = 3
STALL_S = 120  # no answer and no new byte for this long: the fetch is given up (_watched)
POLL_S = 1.0

T = TypeVar("T")
_SLUG = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_NAME = re.compile(rf"(?P<owner>{_SLUG})/(?P<slug>{_SLUG})(?:/(?P<version>[0-9]+))?")
_CREDENTIALS_HELP = (
    "Create an API token at https://www.kaggle.com/settings/api and save the downloaded kaggle.json as "
    "~/.kaggle/kaggle.json (chmod 600), or in the folder named by KAGGLE_CONFIG_DIR; or set the environment "
    "variables KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN for an access token. If you already have "
    "the files on disk, set data.source to path:/folder/or/archive.zip instead."
)


class _Target(NamedTuple):
    source: str
    slug: str
    owner: str | None = None
    version: int | None = None

    @property
    def is_competition(self) -> bool:
        return self.owner is None

    @property
    def page(self) -> str:
        if self.is_competition:
            return f"https://www.kaggle.com/competitions/{self.slug}/rules"
        return f"https://www.kaggle.com/datasets/{self.owner}/{self.slug}"

    @property
    def label(self) -> str:
        return f"competition {self.slug}" if self.is_competition else f"data set {self.owner}/{self.slug}"


def _parse(where: str) -> _Target:
    match = _NAME.fullmatch(where)
    if match is None or (match["owner"] == "c" and match["version"]):
        raise TlpipeError(
            f"data.source: 'kaggle:{where}' is not a Kaggle data set name. Use kaggle:OWNER/NAME, the last two "
            "parts of https://www.kaggle.com/datasets/OWNER/NAME (e.g. kaggle:paultimothymooney/chest-xray-pneumonia), "
            "or kaggle:c/COMPETITION for a competition's files."
        )
    if match["owner"] == "c":
        return _Target(f"kaggle:{where}", match["slug"])
    return _Target(f"kaggle:{where}", match["slug"], match["owner"], int(match["version"]) if match["version"] else None)


def _config_dir() -> Path:
    """Where the client looks for kaggle.json, worked out now (the client does it once, at import)."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    legacy = Path(os.path.expanduser("~")) / ".kaggle"
    if sys.platform.startswith("linux") and not legacy.exists():
        return Path(os.environ.get("XDG_CONFIG_HOME") or Path(os.path.expanduser("~")) / ".config") / "kaggle"
    return legacy


class _Scrubber:
    def __init__(self, secrets=()):
        self.secrets = sorted({s for s in secrets if isinstance(s, str) and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def relay_warnings(self, captured: str) -> None:
        for line in captured.splitlines():
            if line.startswith("Warning"):
                print(self(line), file=sys.stderr)


def _env_secrets() -> list[str]:
    return [os.environ.get(name, "") for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_TOKEN")]


def _authenticated_api(target: _Target):
    scrub = _Scrubber(_env_secrets())
    problem = None
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        try:
            import requests
            from kaggle.api.kaggle_api_extended import KaggleApi
        except Exception as error:
            problem = (
                f"the kaggle client could not be loaded ({scrub(f'{type(error).__name__}: {error}')}). "
                "Install it with `pip install kaggle`."
            )
        else:
            api = KaggleApi()
            api.config_dir = str(_config_dir())
            api.config = os.path.join(api.config_dir, "kaggle.json")
            api.args = [arg for arg in api.args if arg not in ("--verbose", "-v")]
            try:
                api.authenticate()
            except requests.HTTPError as error:
                problem = _describe_http_error(error, None, scrub)
            except requests.RequestException as error:
                problem = (
                    f"could not reach Kaggle to check the credentials ({scrub(str(error))}). "
                    "Check your network, then run `dvc repro` again."
                )
            except (SystemExit, OSError):
                problem = (
                    f"no Kaggle credentials found (looked for {_config_dir() / 'kaggle.json'} and the environment). "
                    + _CREDENTIALS_HELP
                )
    if problem is None:
        scrub = _Scrubber(_env_secrets() + [api.config_values.get(name) for name in ("key", "token")])
    scrub.relay_warnings(captured.getvalue())
    if problem is not None:
        raise TlpipeError(f"data.source {target.source}: {problem}")
    return api, scrub


def _describe_http_error(error, target: _Target | None, scrub: _Scrubber) -> str:
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    what = target.label if target else "Kaggle"
    if status == 401:
        return (
            f"Kaggle rejected the credentials (HTTP 401) while fetching {what}: the key in "
            f"{_config_dir() / 'kaggle.json'} (or in KAGGLE_USERNAME/KAGGLE_KEY or KAGGLE_API_TOKEN) is wrong or "
            "expired. Create a new token at https://www.kaggle.com/settings/api and put it there."
        )
    if status == 403 and target is not None:
        return (
            f"Kaggle refused access to {what} (HTTP 403): its rules have not been accepted with this account "
            "(or it is private). "
            f"Open {target.page} while logged in, accept the rules, then run `dvc repro` again."
        )
    if status == 404 and target is not None:
        return (
            f"Kaggle has no {what} (HTTP 404), or it is private to another account. Check data.source "
            f"({target.source}): the address {target.page} should open in a browser."
        )
    return (
        f"Kaggle answered HTTP {status} for {what} ({scrub(str(error))}). "
        "Run `dvc repro` again later."
    )


def _download_kwargs(api) -> dict:
    accepted = inspect.signature(api.download_file).parameters
    wanted = {"quiet": True, "resume": False, "max_retries": RETRIES, "timeout": READ_TIMEOUT_S}
    return {name: value for name, value in wanted.items() if name in accepted}


class _Stalled(Exception):
    pass


def _watched(work: Callable[[threading.Event], T], part: Path | None = None) -> T:
    """`work(given_up)` (calls of the Kaggle client, whose API requests carry no timeout), given up
    when it has neither returned nor written a new byte to `part` for STALL_S seconds. It runs in a
    daemon thread: a stalled one is left behind (`given_up` is set, so it starts no file) and ends
    with the process (the stage stops with the error)."""
    outcome: dict = {}
    given_up = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = work(given_up)
        except BaseException as error:  # noqa: BLE001 - raised again below, in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="kaggle-client", daemon=True)
    thread.start()
    size, since = -1, time.monotonic()
    while thread.is_alive():
        thread.join(POLL_S)
        now = part.stat().st_size if part is not None and part.exists() else -1
        if now != size:
            size, since = now, time.monotonic()
        elif thread.is_alive() and time.monotonic() - since > STALL_S:
            given_up.set()
            raise _Stalled
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _current_version(client, target: _Target) -> int:
    from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetRequest

    request = ApiGetDatasetRequest()
    request.owner_slug = target.owner
    request.dataset_slug = target.slug
    return client.datasets.dataset_api_client.get_dataset(request).current_version_number or None


def _download(api, client, target: _Target, part: Path, given_up: threading.Event) -> int | None:
    """Ask for `target`'s archive (its current version when it names none) and write it to `part`,
    unless the fetch was `given_up` meanwhile; the version fetched."""
    version = target.version
    if not target.is_competition and version is None:
        version = _current_version(client, target)
    if target.is_competition:
        from kagglesdk.competitions.types.competition_api_service import ApiDownloadDataFilesRequest

        request = ApiDownloadDataFilesRequest()
        request.competition_name = target.slug
        response = client.competitions.competition_api_client.download_data_files(request)
    else:
        from kagglesdk.datasets.types.dataset_api_service import ApiDownloadDatasetRequest

        request = ApiDownloadDatasetRequest()
        request.owner_slug = target.owner
        request.dataset_slug = target.slug
        request.dataset_version_number = version
        response = client.datasets.dataset_api_client.download_dataset(request)
    if not given_up.is_set():
        api.download_file(response, str(part), client.http_client(), **_download_kwargs(api))
    return version


def _fetch_archive(api, target: _Target, part: Path, scrub: _Scrubber) -> tuple[str | None, int | None]:
    """Download into `part` the version `target` names (else the current one); return a description
    of what went wrong (or None) and the version fetched."""
    import requests
    import urllib3

    captured = io.StringIO()
    version = target.version
    try:
        with contextlib.redirect_stdout(captured), api.build_kaggle_client() as client:
            version = _watched(lambda given_up: _download(api, client, target, part, given_up), part)
    except _Stalled:
        return (f"Kaggle sent nothing for {STALL_S} s while fetching {target.label} (no answer, or the download "
                "stopped). Nothing was kept; check your network and run `dvc repro` again."), version
    except requests.HTTPError as error:
        return _describe_http_error(error, target, scrub), version
    except (requests.RequestException, urllib3.exceptions.HTTPError, ValueError) as error:
        return (
            f"the download of {target.label} broke off ({scrub(f'{type(error).__name__}: {error}')}). "
            "Nothing was kept; check your network and run `dvc repro` again."
        ), version
    except OSError as error:
        return f"could not write the archive of {target.label} to {part.parent} ({scrub(str(error))}).", version
    finally:
        scrub.relay_warnings(captured.getvalue())
    if not zipfile.is_zipfile(part):
        return (
            f"what Kaggle sent for {target.label} is not a complete zip archive. "
            "Nothing was kept; run `dvc repro` again."
        ), version
    return None, version


def download_kaggle_dataset(dataset: str, dest_dir: Path, version: int | None = None) -> tuple[Path, int | None]:
    """Download the archive of Kaggle data set `dataset` (OWNER/NAME[/VERSION], or c/COMPETITION) into
    `dest_dir`, as a zip: the version it names, else `version`, else the current one. Returns the
    archive and the version fetched (None for a competition, whose files have no versions)."""
    target = _parse(dataset)
    if target.version is None and version is not None and not target.is_competition:
        target = target._replace(version=version)
    api, scrub = _authenticated_api(target)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    archive = dest_dir / f"{target.slug}.zip"
    part = dest_dir / f"{archive.name}.part"
    print(f"Downloading Kaggle {target.label}{f' version {target.version}' if target.version else ''} ...",
          file=sys.stderr)
    problem = "interrupted"
    try:
        problem, fetched = _fetch_archive(api, target, part, scrub)
        if problem is None:
            os.replace(part, archive)
    finally:
        if problem is not None:
            for leftover in dest_dir.glob(glob.escape(part.name) + "*"):
                leftover.unlink(missing_ok=True)
    if problem is not None:
        raise TlpipeError(f"data.source {target.source}: {problem}")
    return archive, fetched


def newest_version(dataset: str) -> int | None:
    """The version Kaggle serves now for `dataset` (None for a competition)."""
    import requests

    target = _parse(dataset)
    if target.is_competition:
        return None
    api, scrub = _authenticated_api(target)
    captured = io.StringIO()
    problem = None
    try:
        with contextlib.redirect_stdout(captured), api.build_kaggle_client() as client:
            return _watched(lambda _: _current_version(client, target))
    except _Stalled:
        problem = f"Kaggle did not answer for {STALL_S} s; check your network."
    except requests.HTTPError as error:
        problem = _describe_http_error(error, target, scrub)
    except requests.RequestException as error:
        problem = f"could not reach Kaggle ({scrub(str(error))}); check your network."
    finally:
        scrub.relay_warnings(captured.getvalue())
    raise TlpipeError(f"data.source {target.source}: {problem}")


def named_version(dataset: str) -> int | None:
    """The version `dataset` names (OWNER/NAME/VERSION), or None."""
    return _parse(dataset).version


def unversioned(dataset: str) -> str:
    """OWNER/NAME of `dataset`, without the version it may name."""
    target = _parse(dataset)
    return f"c/{target.slug}" if target.is_competition else f"{target.owner}/{target.slug}"
