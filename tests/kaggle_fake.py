"""A loopback stand-in for the Kaggle API: just what the real `kaggle` client calls to download an archive.

The client POSTs JSON to /v1/datasets.DatasetApiService/DownloadDataset (or
/v1/competitions.CompetitionApiService/DownloadDataFiles) and follows the redirect to the file, as on
api.kaggle.com, where the redirect goes to storage.
"""

import http.server
import json
import socket
import threading

METADATA_CALL = "datasets.DatasetApiService/GetDataset"
DOWNLOAD_CALLS = ("datasets.DatasetApiService/DownloadDataset", "competitions.CompetitionApiService/DownloadDataFiles")


class FakeKaggle:
    """mode: "ok", 401, 403, 404, "drop" (the file's body stops half way and the connection closes),
    "silent" (the API call is never answered) or "stall" (the file's body stops half way, the
    connection left open); what waits is let go on exit.

    `versions` holds each version's archive; the newest is the data set's current version (what
    GetDataset reports and an unversioned download gets). Publish a new one with `versions[n] = ...`."""

    def __init__(self, archive: bytes):
        self.versions = {1: archive}
        self.mode = "ok"
        self.requests: list[dict] = []
        self.let_go = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.let_go.set()
        self._server.shutdown()
        self._server.server_close()


def _handler(fake: FakeKaggle):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._record(json.loads(body or b"{}"))
            if not self.path.endswith((*DOWNLOAD_CALLS, METADATA_CALL)):
                return self._json(404, {"code": 404, "message": f"no such call {self.path}"})
            if isinstance(fake.mode, int):
                return self._json(fake.mode, {"code": fake.mode, "message": f"fake Kaggle says {fake.mode}"})
            if fake.mode == "silent":
                fake.let_go.wait(60)
                return None
            if self.path.endswith(METADATA_CALL):
                return self._json(200, {"currentVersionNumber": max(fake.versions)})
            version = (json.loads(body or b"{}").get("datasetVersionNumber") or max(fake.versions))
            if version not in fake.versions:
                return self._json(404, {"code": 404, "message": f"no version {version}"})
            self.send_response(302)
            self.send_header("Location", f"{fake.url}/files/{version}/archive.zip")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):
            self._record(None)
            payload = fake.versions[int(self.path.split("/")[2])]
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if fake.mode in ("drop", "stall"):
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                if fake.mode == "stall":
                    fake.let_go.wait(60)
                self.connection.shutdown(socket.SHUT_RDWR)
            else:
                self.wfile.write(payload)

        def _record(self, body):
            fake.requests.append({
                "method": self.command, "path": self.path, "body": body,
                "authorization": self.headers.get("Authorization"),
            })

        def _json(self, status, data):
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    return Handler
