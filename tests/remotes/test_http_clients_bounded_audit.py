"""The pooled HTTP clients of the bossdb:// and dvid:// Remotes are shared by server and
credential, and were kept for the whole process: a relay forwarding each client's token to a
bossDB or DVID upstream (``forward_token``) made one per distinct token, each with its
connection pool, without end (rotating tokens).  Now the 64 used last are kept
(``SharedClients``); one let go still serves the Remotes holding it and closes its pools when
the last of them lets it go."""

from __future__ import annotations

import gc
import importlib
from pathlib import Path

import pytest

from ..static_http import serve_directory

http = importlib.import_module("voxgate.remotes._http")
boss_client = importlib.import_module("voxgate.remotes.boss.client")
dvid_client = importlib.import_module("voxgate.remotes.dvid.client")


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "hello.txt").write_bytes(b"hello")
    with serve_directory(tmp_path) as base:
        yield base


def _fresh(module: object, monkeypatch: pytest.MonkeyPatch, kept: int) -> object:
    shared = getattr(http, "SharedClients", None)
    if shared is None:  # (before: a plain dict)
        table: object = {}
    else:
        table = shared(kept)
    monkeypatch.setattr(module, "_clients", table)
    return table


def test_dvid_clients_per_token_are_bounded_and_close_once_let_go(
        server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    table = _fresh(dvid_client, monkeypatch, 8)
    first = dvid_client.client_for(server, token="token-0")
    inner = first._client
    others = [dvid_client.client_for(server, token=f"token-{i}") for i in range(1, 40)]
    assert len(table) == 8  # type: ignore[arg-type]  # (40 before)
    # the first was let go, and still serves the Remote holding it
    assert first.request("GET", "/hello.txt").content == b"hello"
    assert not inner.is_closed
    assert dvid_client.client_for(server, token="token-39") is others[-1]  # (still shared)
    del first
    gc.collect()
    assert inner.is_closed  # (closed by its last user letting it go, not left to sockets' GC)


def test_boss_clients_per_token_are_bounded(server: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    table = _fresh(boss_client, monkeypatch, 4)
    settings = [boss_client.BossSettings(server, f"token-{i}", "arguments")
                for i in range(20)]
    clients = [boss_client._client(s, 30.0, 8) for s in settings]
    assert len(table) == 4  # type: ignore[arg-type]
    assert boss_client._client(settings[-1], 30.0, 8) is clients[-1]
    assert clients[0].request("GET", "/hello.txt").content == b"hello"
    assert boss_client._client(settings[0], 30.0, 8) is not clients[0]  # (made anew)
