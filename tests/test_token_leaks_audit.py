"""Credentials never shown: a token in a TensorStore spec's http headers, or a password in a
URL's ``user:password@``, reaches the server with every request but appears in no URL a
Volume shows, no repr, no error (nor its traceback), no log record, no copy journal and no
``voxgate cp --status`` line.  Each store is a real one, served on 127.0.0.1 by a server that
refuses requests without the credential."""

from __future__ import annotations

import base64
import http.server
import logging
import signal
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import voxgate
import voxgate.transfer
from tests.static_http import RangeHandler
from voxgate.cli import main
from voxgate.errors import AuthenticationError, RemoteNotFoundError, redact
from voxgate.remotes.precomputed import PrecomputedRemote
from voxgate.transfer import CopyInterrupted, list_journals

SECRET = "Tok3n-SHOULD-NEVER-SHOW-93f1"
BEARER = f"Bearer {SECRET}"
BASIC = "Basic " + base64.b64encode(f"lab:{SECRET}".encode()).decode()


class _Server:
    def __init__(self, url: str, seen: list[str | None]) -> None:
        self.url, self.seen = url, seen

    @property
    def authorized(self) -> int:
        return sum(h in (BEARER, BASIC) for h in self.seen)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[_Server]:
    """A zarr array and a precomputed layer under ``tmp_path/www``, served on 127.0.0.1 only
    to requests that carry the secret (as a bearer token or as basic auth): 401 otherwise."""
    root = tmp_path / "www"
    data = np.arange(16 ** 3, dtype=np.uint16).reshape(16, 16, 16)
    for url in (f"zarr://{root}/a.zarr", f"precomputed://{root}/p"):
        vol = voxgate.create(url, shape=(16, 16, 16), dtype="uint16", chunks=(8, 8, 8),
                             voxel_size=(1, 1, 1))
        vol[:] = data
    seen: list[str | None] = []

    class Handler(RangeHandler):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, directory=str(root), **k)

        def do_GET(self) -> None:
            auth = self.headers.get("Authorization")
            seen.append(auth)
            if auth not in (BEARER, BASIC):
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield _Server(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()


def _spec(base: str, path: str, header: str = BEARER) -> dict[str, Any]:
    return {"driver": "zarr3", "kvstore": {"driver": "http", "base_url": f"{base}/{path}",
                                           "headers": [f"Authorization: {header}"]}}


def _shown(exc: BaseException) -> str:
    """All a user or a log sees of an error: its message and its whole traceback."""
    return str(exc) + "".join(traceback.format_exception(exc))


def test_redact_finds_each_kind_of_credential() -> None:
    for text in (f"http://lab:{SECRET}@h/p", f"https://{SECRET}@h/p",
                 f"precomputed://https://h/p?token={SECRET}&x=1",
                 f"s3://b/k?X-Amz-Signature={SECRET}", f'"headers":["Authorization: {BEARER}"]',
                 f'\\"headers\\":[\\"X-Api-Token: {SECRET}\\"]', f"Cookie: session={SECRET}",
                 f'{{"token": "{SECRET}"}}', f"{{'token': '{SECRET}'}}"):
        assert SECRET not in redact(text), text
    plain = 'tensorstore://{"driver":"zarr3","kvstore":"file:///d/a.zarr"} bossdb://c/e/ch'
    assert redact(plain) == plain


def test_tensorstore_spec_headers_never_shown(store: _Server,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    vol = voxgate.open(_spec(store.url, "a.zarr/0/"))
    # the requests carry the header: the metadata and the chunk were served
    whole = np.arange(16 ** 3, dtype=np.uint16).reshape(16, 16, 16)
    np.testing.assert_array_equal(vol[0:2, 0:2, 0:2].read(), whole[:2, :2, :2])
    assert store.authorized >= 2
    assert "Authorization: ***" in vol.url
    for text in (vol.url, repr(vol), repr(vol.remote), str(vol)):
        assert SECRET not in text
    # reopening in another process (pickle, workers, the relay) still authenticates
    again = voxgate.open(**{k: v for k, v in vol.spec().items() if k in ("url", "mode")})
    assert again[0:1, 0:1, 0:1].read().item() == 0

    with pytest.raises(RemoteNotFoundError) as missing:
        voxgate.open(_spec(store.url, "nope.zarr/"))
    with pytest.raises(AuthenticationError) as refused:  # a wrong token is not shown either
        voxgate.open(_spec(store.url, "a.zarr/0/", header=f"Bearer x{SECRET}"))
    for exc in (missing.value, refused.value):
        assert SECRET not in _shown(exc)
    assert SECRET not in caplog.text


def test_url_password_never_shown(store: _Server) -> None:
    url = f"precomputed://http://lab:{SECRET}@{store.url.split('://')[1]}/p"
    vol = voxgate.open(url)
    assert vol[0:8, 0:8, 0:8].read().sum() > 0 and store.authorized >= 2
    assert vol.url == f"precomputed://http://lab:***@{store.url.split('://')[1]}/p"
    for text in (vol.url, repr(vol), repr(vol.remote)):
        assert SECRET not in text
    with pytest.raises(RemoteNotFoundError) as missing:
        voxgate.open(url + "-nope")
    assert SECRET not in _shown(missing.value)


def test_copy_journal_and_status_never_hold_the_password(
        store: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = f"precomputed://http://lab:{SECRET}@{store.url.split('://')[1]}/p"
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)  # one block per chunk
    real = PrecomputedRemote.write
    writes = [0]

    def write(self: PrecomputedRemote, *args: object, **kwargs: object) -> None:
        writes[0] += 1
        if writes[0] == 3:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: the copy stops, its journal stays
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PrecomputedRemote, "write", write)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(CopyInterrupted) as info:
            voxgate.copy(src, f"precomputed://{tmp_path}/dst", workers=1, progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    stop = info.value
    assert stop.blocks_done >= 2 and store.authorized >= 3  # read through the password
    assert SECRET not in _shown(stop)
    assert SECRET not in stop.journal.read_text()
    [status] = list_journals()
    assert status.src.startswith("precomputed://http://lab:***@")
    assert SECRET not in str(status)
    res = CliRunner().invoke(main, ["cp", "--status"])
    assert res.exit_code == 0 and "lab:***@" in res.output and SECRET not in res.output
    # the copy run again resumes the same journal (the source given with its password)
    report = voxgate.copy(src, f"precomputed://{tmp_path}/dst", workers=1, progress=False)
    assert report.resumed and SECRET not in str(report.__dict__)
    assert list_journals() == []
