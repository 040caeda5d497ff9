"""A busy relay seen through voxgate's HTTP client, and a dying thread under the CLI (H21).

1. The relay answers a write meeting an HDF5 file another process holds with 503 and
   ``Retry-After``; voxgate's own client (``bossdb://`` through a relay) took it for any 5xx:
   a plain RemoteUnavailableError, its ``Retry-After`` ignored.  Now it is RemoteBusyError
   (still a RemoteUnavailableError) naming the server's message, and for a request the client
   sends again the wait it asks sets the next try's delay, capped at the longest backoff.
2. The CLI redacted the tracebacks reaching its main, but a thread that died was printed by
   Python's ``threading.excepthook`` as is, ``?token=`` and all.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
import pytest

import voxgate
from voxgate.errors import RemoteBusyError, RemoteUnavailableError
from voxgate.remotes import _http
from voxgate.remotes._http import HTTPClient
from voxgate.remotes.base import Remote

from .relay.conftest import RW, RelayProcess
from .test_cli_redaction_and_busy_audit import relay  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]


# -- 1. a busy relay through bossdb:// -----------------------------------------------------------
def test_a_bossdb_write_to_a_file_another_process_holds_is_remote_busy_error(
        relay: tuple[RelayProcess, Path]) -> None:  # noqa: F811
    """Before: RemoteUnavailableError ("answered HTTP 503"), not RemoteBusyError."""
    r, d = relay
    vol = voxgate.open(f"bossdb://{r.url}/c/e/nb", token=RW, mode="r+")
    with h5py.File(d / "nb.h5", "r") as notebook:
        data = notebook["vol"][...]
        with pytest.raises(RemoteBusyError) as info:
            vol[1:3, 0:8, 0:8] = 9
        assert isinstance(info.value, RemoteUnavailableError)
        text = str(info.value)
        assert "is busy" in text and f"held by process {os.getpid()}" in text, text
        # (the relay's message whole: it was cut at 300 characters, "try ag")
        assert "try again later" in text, text
        assert "Retry-After: 5" in text and RW not in text, text
        np.testing.assert_array_equal(notebook["vol"][...], data)
    vol[1:3, 0:8, 0:8] = 9  # once closed, the same write lands
    assert (vol[1:3, 0:8, 0:8].read() == 9).all()


class _Answers(http.server.BaseHTTPRequestHandler):
    """Answers every request 503, with ``Retry-After`` when the path starts /busy/."""

    seen: ClassVar[list[str]] = []

    def _answer(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"status": 503, "message": "the store is busy: held by process 7"}'
        self.send_response(503)
        if self.path.startswith("/busy/"):
            self.send_header("Retry-After", self.path.split("/")[2])
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    _Answers.seen.clear()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    thread.join()


@contextmanager
def _client(url: str) -> Iterator[HTTPClient]:
    c = HTTPClient(url, retries=2, backoff=0.1, timeout=30)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the client asks between tries (recorded, not slept)."""
    asked: list[float] = []
    monkeypatch.setattr(_http.time, "sleep", asked.append)
    return asked


@pytest.mark.parametrize("retry_after", ["0", "5", "3600"])
def test_a_get_answered_busy_waits_what_it_asks_up_to_the_longest_backoff(
        server: str, sleeps: list[float], retry_after: str) -> None:
    """Before: RemoteUnavailableError, and the backoff's own delays (0.1 .. 0.25 s here)."""
    with _client(server) as c:
        with pytest.raises(RemoteBusyError, match="held by process 7") as info:
            c.request("GET", f"/busy/{retry_after}/x")
    assert "failed after 3 attempts" in str(info.value)
    assert len(_Answers.seen) == 3
    assert sleeps == [min(float(retry_after), 0.2)] * 2  # (0.2: 0.1 * 2 ** (retries - 1))


def test_a_post_answered_busy_is_not_sent_again(server: str, sleeps: list[float]) -> None:
    with _client(server) as c, pytest.raises(RemoteBusyError, match="not sent again"):
        c.request("POST", "/busy/5/split", content=b"{}")
    assert _Answers.seen == ["POST /busy/5/split"] and sleeps == []


def test_a_503_without_retry_after_stays_a_plain_unavailable_error(
        server: str, sleeps: list[float]) -> None:
    """(guard) only a 503 saying when to come back is "busy"; the backoff is unchanged."""
    with _client(server) as c, pytest.raises(RemoteUnavailableError) as info:
        c.request("GET", "/down/x")
    assert not isinstance(info.value, RemoteBusyError)
    assert len(sleeps) == 2 and 0.1 <= sleeps[0] <= 0.125 and 0.2 <= sleeps[1] <= 0.25


# -- 2. a thread that dies under the CLI ---------------------------------------------------------
TOKEN = "TOK-thread-death-9b2c51"
SCHEME = "threaddiecli"


class _ThreadDiesRemote(Remote):
    """``threaddiecli://x``: a worker thread dies of an error naming a URL with ``?token=``
    (as a library's would); then the open is interrupted (the CLI's one-line exit 130)."""

    scheme = SCHEME

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> Remote:
        def work() -> None:
            raise RuntimeError(f"GET http://127.0.0.1:9/x?token={TOKEN} failed")

        worker = threading.Thread(target=work, name="fetcher")
        worker.start()
        worker.join()
        raise KeyboardInterrupt


def test_a_thread_dying_under_the_cli_prints_its_traceback_redacted() -> None:
    """Before: Python's threading.excepthook printed the token."""
    code = ("import sys; from voxgate.registry import register; "
            f"register({SCHEME!r}, 'tests.test_busy_and_thread_redaction_audit:_ThreadDiesRemote'"
            "); from voxgate.cli import main; sys.argv[0] = 'voxgate'; main()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", code, "info", f"{SCHEME}://x"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 130, done.stderr
    assert TOKEN not in done.stderr and TOKEN not in done.stdout, done.stderr
    assert "Exception in thread fetcher:" in done.stderr, done.stderr
    assert "Traceback (most recent call last)" in done.stderr, done.stderr
    assert "RuntimeError: GET http://127.0.0.1:9/x?token=*** failed" in done.stderr, done.stderr
