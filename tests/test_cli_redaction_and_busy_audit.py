"""Two credential/status items.

1. The ``voxgate`` command prints an exception no command caught (a bug, a third-party
   library's error) with its whole traceback and chained causes, but through ``redact``:
   Python's own printing showed httpx's URL with its ``?token=`` and an ``Authorization``
   header a library put in its message.  The command runs in a subprocess, with a Remote for a
   test-only scheme (this module's ``_TokenFailRemote``) that asks a static HTTP server on
   127.0.0.1 for an absent file with ``?token=`` and fails the way a library does.
2. A write through the relay that meets an HDF5 file another process holds (a notebook with
   it open read-only) is answered 503 with ``Retry-After`` (temporary), not 502 (an upstream
   failure); the Python API raises ``RemoteBusyError``, a ``RemoteUnavailableError``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blosc
import h5py
import httpx
import numpy as np
import pytest

import voxgate
from voxgate.errors import RemoteBusyError, RemoteUnavailableError
from voxgate.geometry import Box
from voxgate.remotes.base import Remote

from .relay.conftest import RW, RelayProcess, free_port, hdf5_volume, start_relay
from .static_http import serve_directory

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "TOK-cli-trace-4f1e0a"
BEARER = "BEARER-cli-trace-77c3d2"
SCHEME = "tokenfailcli"


class _TokenFailRemote(Remote):
    """``tokenfailcli://127.0.0.1:PORT/what``: asks the server for ``what`` with ``?token=``
    (absent: a 404) and, as a library would, lets httpx's error out; ``.../chained`` wraps
    it in a RuntimeError whose message shows the request's Authorization header;
    ``.../interrupt`` raises KeyboardInterrupt there (Ctrl-C inside a library call)."""

    scheme = SCHEME

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> Remote:
        host, _, what = location.partition("/")
        if what == "interrupt":
            raise KeyboardInterrupt
        res = httpx.get(f"http://{host}/absent-{what}?token={TOKEN}", timeout=30)
        try:
            res.raise_for_status()
        except httpx.HTTPStatusError as exc:
            if what != "chained":
                raise
            raise RuntimeError(f"lookup failed (sent Authorization: Bearer {BEARER})") from exc
        raise AssertionError("the server was expected to answer 404")


@pytest.fixture(scope="module")
def http_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_directory(tmp_path_factory.mktemp("static")) as url:
        yield url.split("://", 1)[1].rstrip("/")


def _voxgate(*args: str) -> subprocess.CompletedProcess[str]:
    """``voxgate ARGS`` in a process of its own, with the test-only scheme registered."""
    code = ("import sys; from voxgate.registry import register; "
            f"register({SCHEME!r}, 'tests.test_cli_redaction_and_busy_audit:_TokenFailRemote'); "
            "from voxgate.cli import main; sys.argv[0] = 'voxgate'; main()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_an_uncaught_third_party_error_prints_its_traceback_without_the_token(
        http_host: str) -> None:
    done = _voxgate("info", f"{SCHEME}://{http_host}/plain")
    assert done.returncode == 1, done.stderr
    assert TOKEN not in done.stderr, done.stderr
    assert TOKEN not in done.stdout
    # the traceback is still there for a bug report: frames, the error's type, host and path
    assert "Traceback (most recent call last)" in done.stderr, done.stderr
    assert "httpx.HTTPStatusError" in done.stderr, done.stderr
    assert "raise_for_status" in done.stderr, done.stderr
    assert f"{http_host}/absent-plain?token=***" in done.stderr, done.stderr


def test_chained_causes_and_headers_in_messages_are_redacted(http_host: str) -> None:
    done = _voxgate("info", f"{SCHEME}://{http_host}/chained")
    assert done.returncode == 1, done.stderr
    for secret in (TOKEN, BEARER):
        assert secret not in done.stderr, done.stderr
    assert "The above exception was the direct cause" in done.stderr, done.stderr
    assert "httpx.HTTPStatusError" in done.stderr and "RuntimeError: lookup failed" in (
        done.stderr), done.stderr
    assert "Authorization: ***" in done.stderr, done.stderr


def test_ctrl_c_inside_a_library_call_still_exits_130(http_host: str) -> None:
    done = _voxgate("info", f"{SCHEME}://{http_host}/interrupt")
    assert done.returncode == 130, done.stderr
    assert "interrupted (Ctrl-C): voxgate info stopped" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


# -- 2. a locked HDF5 upstream: 503 with Retry-After ---------------------------------------------
SHAPE = (8, 64, 64)
HEADERS = {"Authorization": f"Token {RW}"}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayProcess, Path]]:
    d = tmp_path_factory.mktemp("busy_hdf5")
    hdf5_volume(d / "nb.h5")
    cfg = d / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
state_path = "{d / 'state.json'}"
[auth]
public_read = false
tokens = {{ "{RW}" = "read-write" }}
[[channel]]
name = "c/e/nb"
upstream = "hdf5://{d / 'nb.h5'}#/vol"
""")
    r = start_relay(cfg, free_port())
    yield r, d
    r.stop()


def _post(r: RelayProcess, box: Box, arr: np.ndarray) -> httpx.Response:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    with httpx.Client(base_url=r.url, headers=HEADERS, timeout=60) as http:
        return http.post(f"/v1/cutout/c/e/nb/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/",
                         content=blosc.compress(arr.tobytes(), typesize=1),
                         headers={**HEADERS, "Content-Type": "application/blosc"})


def test_a_write_meeting_a_file_another_process_holds_is_503_with_retry_after(
        relay: tuple[RelayProcess, Path]) -> None:
    """One worker (the relay's default): a notebook (this process) holding the file open
    read-only makes a write a 503 "busy" with Retry-After, the file unchanged; once it is
    closed, the same write lands."""
    r, d = relay
    box = Box((1, 3, 5), (6, 40, 50))
    patch = np.full(tuple(box.shape), 7, np.uint8)
    with h5py.File(d / "nb.h5", "r") as notebook:
        data = notebook["vol"][...]
        refused = _post(r, box, patch)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) > 0, refused.headers
        doc = refused.json()
        assert doc["status"] == 503 and "is busy" in doc["message"], doc
        assert f"locked by another process (held by process {os.getpid()}" in doc["message"]
        np.testing.assert_array_equal(notebook["vol"][...], data)
    res = _post(r, box, patch)
    assert res.status_code == 201, res.text
    data[box.slices()] = patch
    with h5py.File(d / "nb.h5", "r") as f:
        np.testing.assert_array_equal(f["vol"][...], data)


def test_the_api_raises_remote_busy_error_for_a_file_another_process_locked(
        tmp_path: Path) -> None:
    path = tmp_path / "v.h5"
    hdf5_volume(path)
    code = (f"import h5py, sys\nf = h5py.File({str(path)!r}, 'r')\nprint('open', flush=True)\n"
            "sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(RemoteBusyError, match=f"held by process {holder.pid}") as info:
            voxgate.open(f"hdf5://{path}#/vol", mode="r+", hold_open=False)[0, 0, 0] = 1
        assert isinstance(info.value, RemoteUnavailableError)  # (what callers catch stays)
    finally:
        holder.communicate("", timeout=60)
