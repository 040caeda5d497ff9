"""Credentials in logs: what voxgate's loggers, the relay's log and the ``voxgate`` command
print shows no token, password or signature, not even in the traceback of an exception voxgate
did not make (httpx's, tensorstore's, an OSError) and its chained causes, while the useful part
(host, path, status) stays.

The upstreams are HTTP servers on 127.0.0.1 that fail: one answers 500 to writes (reached by a
Remote registered for a test-only scheme, which raises an OSError from httpx's error, both
naming the URL with its ``user:password@`` and ``?token=``), and one serves a precomputed layer
whose chunks do not decode (reached through ``?token=``).
"""

from __future__ import annotations

import functools
import http.server
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
from click.testing import CliRunner

import voxgate
import voxgate.relay
from voxgate import registry
from voxgate.cli import main
from voxgate.geometry import Box
from voxgate.meta import VolumeMeta
from voxgate.remotes.base import Remote, check_options

from .relay.conftest import (
    RW,
    free_port,
    one_channel_config,
    start_relay,
    start_relay_with_scheme,
)

TOKEN = "TOK-log-9c1d7e"
PASSWORD = "PW-log-51b2aa"
SECRETS = (TOKEN, PASSWORD)
SHAPE = (16, 64, 64)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    corrupt = False  # whether chunks (every file but ``info``) are answered with garbage


class _Failing(http.server.SimpleHTTPRequestHandler):
    """Serves a directory to GET; answers 500 to PUT and to GETs of ``*/fail*``."""

    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if "/fail" in self.path:
            self.send_error(500, "disk full")
            return
        if self.server.corrupt and not self.path.split("?")[0].endswith("/info"):
            body = os.urandom(100)  # not the bytes of a raw chunk
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_error(500, "disk full")


@dataclass
class Upstream:
    host: str  # 127.0.0.1:PORT
    root: Path
    server: _Server


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    """A server on 127.0.0.1 over ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()
    server = _Server(("127.0.0.1", 0), functools.partial(_Failing, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Upstream(f"127.0.0.1:{server.server_address[1]}", root, server)
    finally:
        server.shutdown()
        server.server_close()


class TokenHTTPRemote(Remote):
    """``tokenhttp://[USER:PASSWORD@]HOST:PORT/PATH?token=...``: a third-party Remote as one
    may be registered, which reads a constant and stores each write with an HTTP PUT; a failed
    request is an OSError raised from httpx's error, both naming the URL whole.  Opening a
    location whose path holds ``fail`` reads its ``info`` first (and fails the same way)."""

    scheme = "tokenhttp"
    open_options = ()

    def __init__(self, location: str, mode: str) -> None:
        self.location = location
        self.mode = mode
        self.url = f"tokenhttp://{location}"
        self.meta = VolumeMeta.build(shape=SHAPE, dtype="uint8", chunks=(8, 32, 32),
                                     voxel_size=(40, 8, 8))

    def _http(self, method: str, name: str, content: bytes = b"") -> None:
        path, _, query = self.location.partition("?")
        target = f"http://{path}/{name}?{query}"
        try:
            httpx.request(method, target, content=content, timeout=10).raise_for_status()
        except httpx.HTTPError as exc:
            raise OSError(f"{method} {target} failed") from exc

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> TokenHTTPRemote:
        check_options("tokenhttp://", options, cls.open_options)
        remote = cls(location, mode)
        if "fail" in location.partition("?")[0]:
            remote._http("GET", "info")
        return remote

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        return np.full(tuple(box.shape), 7, dtype=np.uint8)

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._http("PUT", "chunk-" + "_".join(f"{a}-{b}" for a, b in
                                             zip(box.start, box.stop, strict=True)),
                   array.tobytes())


def _no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text


def test_relay_log_of_a_third_party_error_and_its_cause_is_redacted(
        tmp_path: Path, upstream: Upstream) -> None:
    """A write the upstream refuses with an exception voxgate did not make (an OSError raised
    from httpx's HTTPStatusError) is the relay's last-resort 500, logged with its traceback:
    that traceback, the OSError and its chained cause, showed the upstream's password and
    token.  The log still names the exceptions, the upstream's host and path, and the 500."""
    host = upstream.host
    cfg = one_channel_config(tmp_path, f"tokenhttp://lab:{PASSWORD}@{host}/vol?token={TOKEN}",
                             name="t/e/up")
    relay = start_relay_with_scheme(cfg, "tokenhttp",
                                    "tests.test_log_redaction_audit:TokenHTTPRemote")
    try:
        with relay.client(RW) as http:
            data = bytes(blosc.compress(np.ones((8, 32, 32), np.uint8).tobytes(), typesize=1))
            res = http.post("/v1/cutout/t/e/up/0/0:32/0:32/0:8/", content=data,
                            headers={"Content-Type": "application/blosc"})
            assert res.status_code == 500, res.text
            _no_secret(res.text)
            assert http.get("/ping/").status_code == 200
    finally:
        relay.stop()
    log = relay.log.read_text()
    assert "unhandled error on POST /v1/cutout/t/e/up/" in log, log
    assert "Traceback" in log and "OSError: PUT http://lab:***@" + host + "/vol/" in log, log
    # the chained cause, with its own message
    assert "The above exception was the direct cause" in log, log
    assert "httpx.HTTPStatusError: Server error '500" in log, log
    assert "?token=***" in log, log
    _no_secret(log)


@pytest.mark.parametrize("workers", [1, 2])
def test_relay_own_warning_of_a_token_upstream_is_redacted(
        tmp_path: Path, upstream: Upstream, workers: int) -> None:
    """The relay's own warning about an upstream (a chunk of a precomputed layer, reached with
    ``?token=``, that does not decode) names the chunk's URL with the token hidden, in one
    process and in each worker of several."""
    host, root = upstream.host, upstream.root
    vol = voxgate.create(f"precomputed://file://{root}/raw", shape=SHAPE, chunks=(8, 32, 32),
                         dtype="uint8", voxel_size=(40, 8, 8))
    vol[:] = 3
    upstream.server.corrupt = True
    cfg = one_channel_config(tmp_path, f"precomputed://http://{host}/raw?token={TOKEN}")
    relay = start_relay(cfg, free_port(), *(["--workers", str(workers)] if workers > 1 else []))
    try:
        with relay.client(RW) as http:
            res = http.get("/v1/cutout/lab/em/seg/0/0:32/0:32/0:8/",
                           headers={"Accept": "application/blosc"})
            assert res.status_code == 502, res.text
            _no_secret(res.text)
    finally:
        relay.stop()
    log = relay.log.read_text()
    assert "corrupt upstream data on GET /v1/cutout/lab/em/seg/" in log, log
    assert f"http://{host}/raw/" in log and "?token=***" in log, log
    _no_secret(log)


def test_voxgate_loggers_redact_messages_and_chained_tracebacks(
        caplog: pytest.LogCaptureFixture, upstream: Upstream) -> None:
    """What voxgate's relay logger emits, through any handler (here pytest's), has the token
    and password taken out of the message and out of the formatted traceback of a real
    httpx failure with its chained OSError; the exception objects keep their text (other
    code holds them)."""
    host = upstream.host
    url = f"http://lab:{PASSWORD}@{host}/fail/0.0.0?token={TOKEN}"
    log = logging.getLogger("voxgate.relay")
    with caplog.at_level(logging.INFO, logger="voxgate.relay"):
        try:
            try:
                httpx.get(url, timeout=10).raise_for_status()
            except httpx.HTTPStatusError as exc:
                raise OSError(f"reading {url} failed") from exc
        except OSError as exc:
            caught = exc
            log.exception("upstream %s failed", url)
            log.warning("upstream failed: %s", exc, stack_info=True)
    text = caplog.text
    _no_secret(text)
    assert f"upstream http://lab:***@{host}/fail/0.0.0?token=*** failed" in text, text
    assert "OSError: reading http://lab:***@" in text and "Server error '500" in text, text
    assert "The above exception was the direct cause" in text, text
    assert "Stack (most recent call last)" in text, text
    # the exception objects are untouched
    assert TOKEN in str(caught) and PASSWORD in str(caught.__cause__)
    # and another formatter of the same record shows no more than this one did
    again = logging.Formatter("%(message)s")
    for record in caplog.records:
        _no_secret(again.format(record))


def test_cli_error_of_a_third_party_exception_is_redacted(
        upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """``voxgate info`` of a URL whose Remote fails with an OSError (not a VoxgateError, so
    not redacted when made) printed the error's URL with its password and token."""
    host = upstream.host
    monkeypatch.setitem(registry._registered, "tokenhttp", TokenHTTPRemote)
    url = f"tokenhttp://lab:{PASSWORD}@{host}/fail?token={TOKEN}"
    res = CliRunner().invoke(main, ["info", url])
    assert res.exit_code == 1, res.output
    assert f"OSError: GET http://lab:***@{host}/fail/info?token=*** failed" in res.output, \
        res.output
    _no_secret(res.output)


def test_cli_error_of_a_failing_http_store_with_a_token(upstream: Upstream) -> None:
    """``voxgate info`` of a precomputed layer over HTTP that answers 500, with a token in the
    query and a password in the URL: the error names the host, the path and the 500."""
    host = upstream.host
    res = CliRunner().invoke(main, ["info", f"precomputed://http://lab:{PASSWORD}@{host}"
                                            f"/fail/raw?token={TOKEN}"])
    assert res.exit_code == 1, res.output
    assert f"http://lab:***@{host}/fail/raw?token=***" in res.output, res.output
    assert "500" in res.output, res.output
    _no_secret(res.output)


def test_uvicorn_error_log_of_a_relay_is_redacted(upstream: Upstream) -> None:
    """The logging configuration the relay gives uvicorn (``voxgate serve``, its workers and
    ``voxgate view``'s relay): what uvicorn logs of a request no handler answered ("Exception
    in ASGI application", with the traceback of a real httpx failure and its chained OSError)
    is written without the token or password, in uvicorn's own format."""
    import io
    import logging.config

    from voxgate.relay.app import uvicorn_log_config

    host = upstream.host
    url = f"http://lab:{PASSWORD}@{host}/fail/0.0.0?token={TOKEN}"
    out = io.StringIO()
    config = uvicorn_log_config()
    config["handlers"]["default"]["stream"] = out  # (as uvicorn configures it, on a buffer)
    logging.config.dictConfig(config)
    try:
        try:
            httpx.get(url, timeout=10).raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise OSError(f"reading {url} failed") from exc
    except OSError:
        logging.getLogger("uvicorn.error").error("Exception in ASGI application\n",
                                                 exc_info=True)
    text = out.getvalue()
    assert text.startswith("ERROR:") and "Exception in ASGI application" in text, text
    assert f"OSError: reading http://lab:***@{host}/fail/0.0.0?token=*** failed" in text, text
    assert "The above exception was the direct cause" in text, text
    _no_secret(text)
