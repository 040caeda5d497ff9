"""gs:// locations fail fast and say why: the first request to a bucket is retried only a few
times, and the error names where Google credentials were looked for.

A GCS stand-in on 127.0.0.1 (tensorstore's ``TENSORSTORE_GCS_HTTP_URL``) counts the requests
it gets; each case runs in a subprocess so its environment (no credentials, the metadata
server on a closed port) does not leak into other tests' tensorstore.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from voxgate.storage.kvstore import GCS_FIRST_CONTACT_RETRIES

INFO = {
    "@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": "uint8",
    "num_channels": 1,
    "scales": [{"key": "s0", "size": [16, 16, 8], "resolution": [8, 8, 40],
                "chunk_sizes": [[8, 8, 8]], "encoding": "raw", "voxel_offset": [0, 0, 0]}],
}


class FakeGCS:
    def __init__(self) -> None:
        self.status = 503
        self.paths: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.paths.append(self.path)
                if fake.status == 200 and "layer%2Finfo" in self.path:
                    body = json.dumps(INFO).encode()
                    self.send_response(200)
                elif fake.status == 200:
                    body = b""
                    self.send_response(404)
                else:
                    body = b'{"error": {"message": "refused by the test"}}'
                    self.send_response(fake.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gcs() -> Iterator[FakeGCS]:
    fake = FakeGCS()
    yield fake
    fake.close()


SCRIPT = """
import json, sys, voxgate
try:
    vol = voxgate.open(sys.argv[1])
    print(json.dumps({"ok": list(vol.shape)}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc),
                      "bases": [c.__name__ for c in type(exc).__mro__]}))
"""


def _open(url: str, gcs: FakeGCS, tmp_path: Path, **env: str) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_AUTH_TOKEN_FOR_TESTING")}
    environ.update({
        "TENSORSTORE_GCS_HTTP_URL": gcs.url,
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),  # no application-default credentials
        "GCE_METADATA_ROOT": "127.0.0.1:9",  # not on Google Compute Engine: refused at once
        **env,
    })
    out = subprocess.run([sys.executable, "-c", SCRIPT, url], env=environ, capture_output=True,
                         text=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("url", ["precomputed://gs://bucket/layer", "zarr://gs://bucket/layer",
                                 "gs://bucket/layer"])
def test_an_unreachable_bucket_fails_after_a_few_attempts(
    gcs: FakeGCS, tmp_path: Path, url: str
) -> None:
    out = _open(url, gcs, tmp_path)
    assert out["error"] == "RemoteUnavailableError", out
    assert "ConnectionError" in out["bases"]
    message = out["message"]
    assert "gs://bucket/layer" in message
    assert "Google credentials: none (GOOGLE_APPLICATION_CREDENTIALS is unset" in message
    assert "gcloud auth application-default login" in message
    # tensorstore's default is 32 retries with delays up to 32 s (minutes of silence)
    assert len(gcs.paths) == 1 + GCS_FIRST_CONTACT_RETRIES["max_retries"]


def test_a_refused_request_is_an_authentication_error_naming_the_credentials(
    gcs: FakeGCS, tmp_path: Path
) -> None:
    gcs.status = 401
    out = _open("precomputed://gs://bucket/layer", gcs, tmp_path)
    assert out["error"] == "AuthenticationError", out
    assert "PermissionError" in out["bases"]
    assert "refused" in out["message"] and "Google credentials: none" in out["message"]
    assert len(gcs.paths) <= 1 + GCS_FIRST_CONTACT_RETRIES["max_retries"]


def test_a_credentials_variable_naming_no_file_fails_before_any_request(
    gcs: FakeGCS, tmp_path: Path
) -> None:
    missing = tmp_path / "key.json"
    out = _open("precomputed://gs://bucket/layer", gcs, tmp_path,
                GOOGLE_APPLICATION_CREDENTIALS=str(missing))
    assert out["error"] == "AuthenticationError", out
    assert f"GOOGLE_APPLICATION_CREDENTIALS is {str(missing)!r}, which is not a readable file" \
        in out["message"]
    assert gcs.paths == []


def test_a_bucket_that_answers_opens(gcs: FakeGCS, tmp_path: Path) -> None:
    gcs.status = 200
    out = _open("precomputed://gs://bucket/layer", gcs, tmp_path)
    assert out == {"ok": [8, 16, 16]}
    assert any("layer%2Finfo" in p for p in gcs.paths)
