"""Requests that are not idempotent are never sent twice by voxgate's HTTP client.

HTTPClient retried every method on a 5xx, a timeout or a broken connection: a DVID split
whose answer was lost (a proxy's 502, a timeout while DVID worked) was sent again, found no
voxels left to move, took yet another label and returned it; ``POST nextlabel`` took two
ranges of ids, bossDB's reserve (a GET that takes ids) too.  Now a POST (or PATCH) is sent
again only when no connection was made, and fails at once otherwise, saying the server may
have done it; voxel writes (idempotent POSTs) are still retried, as are GETs.
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import pytest

import voxgate
from voxgate.errors import RemoteUnavailableError
from voxgate.formats.dvid_block import encode_rles, rles_from_mask
from voxgate.remotes._http import HTTPClient
from voxgate.remotes.dvid import DVIDRepo
from voxgate.testing.dvid import DVIDServerProcess

from .flaky_proxy import FlakyProxy, Rule, flaky_proxy


class _Counting(http.server.BaseHTTPRequestHandler):
    """Answers /fail with 500, /slow after 2 s, anything else 200; counts every request."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[str]] = []

    def _do(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        type(self).seen.append(f"{self.command} {self.path}")
        if self.path == "/slow":
            time.sleep(2.0)
        status = 500 if self.path == "/fail" else 200
        try:
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
        except (BrokenPipeError, ConnectionResetError):  # (/slow: the client gave up)
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = _do

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def counting() -> Iterator[str]:
    _Counting.seen = []
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Counting)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _client(url: str, timeout: float = 30.0) -> HTTPClient:
    return HTTPClient(url, retries=3, backoff=0.001, timeout=timeout)


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_5xx_to_a_post_is_not_sent_again(counting: str, method: str) -> None:
    c = _client(counting)
    with pytest.raises(RemoteUnavailableError, match=r"not sent again.*may or may not have"):
        c.request(method, "/fail", content=b"x", what="splitting label 5")
    assert _Counting.seen == [f"{method} /fail"]
    c.close()


def test_idempotent_requests_are_still_retried(counting: str) -> None:
    c = _client(counting)
    for method, kw in (("GET", {}), ("PUT", {}), ("POST", {"idempotent": True})):
        _Counting.seen = []
        with pytest.raises(RemoteUnavailableError, match="failed after 4 attempts"):
            c.request(method, "/fail", **kw)
        assert _Counting.seen == [f"{method} /fail"] * 4
    c.close()


def test_a_get_marked_not_idempotent_is_sent_once(counting: str) -> None:
    c = _client(counting)
    with pytest.raises(RemoteUnavailableError, match="not sent again"):
        c.request("GET", "/fail", idempotent=False, what="reserving ids")
    assert _Counting.seen == ["GET /fail"]
    c.close()


def test_a_post_that_timed_out_is_not_sent_again(counting: str) -> None:
    c = _client(counting, timeout=0.5)
    with pytest.raises(RemoteUnavailableError, match="not sent again"):
        c.request("POST", "/slow", content=b"x")
    assert _Counting.seen == ["POST /slow"]
    c.close()


def test_a_post_that_never_connected_is_sent_again() -> None:
    """No connection, no request: a refused connection is retried for any method."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # (closed again: nothing listens there)
    c = _client(f"http://127.0.0.1:{port}")
    with pytest.raises(RemoteUnavailableError, match="failed after 4 attempts: could not reach"):
        c.request("POST", "/x", content=b"x")
    c.close()


# -- DVID through a proxy that loses the answer ---------------------------------------------
@pytest.fixture
def proxy(server: DVIDServerProcess) -> Iterator[FlakyProxy]:
    with flaky_proxy(server.url) as p:
        yield p


def test_a_dvid_split_whose_answer_is_lost_is_done_once(
        repo: DVIDRepo, proxy: FlakyProxy) -> None:
    """The split reaches DVID and is done; the proxy answers 502.  Sent again (as before),
    the second split found none of the voxels left, took another label and returned it: the
    caller was told of a split into an empty label, and the real one was lost."""
    name = "idem_split"
    repo.create_instance(name, "labelmap", block_size=(16, 16, 16))
    direct = repo.labels(name)
    seg = np.zeros((16, 16, 32), dtype=np.uint64)
    seg[:, :, :16] = 5
    seg[:, :, 16:] = 6
    vol = voxgate.open(repo.url(name), mode="r+")
    vol[0:16, 0:16, 0:32] = seg
    before = direct.maxlabel()
    proxied = DVIDRepo(proxy.url, repo.root)
    via = proxied.labels(name)
    via.client.backoff = 0.001
    mask = np.zeros_like(seg, dtype=bool)
    mask[:8, :, :16] = True
    proxy.add(Rule("/split/5", "lost", status=502))
    with pytest.raises(RemoteUnavailableError, match="not sent again"):
        via.split(5, encode_rles(rles_from_mask(mask, (0, 0, 0))))
    assert proxy.count("POST") == 1
    # done once: the posted voxels are one new body (above the old maxlabel), the rest of 5
    # stays 5 (sent again, the split of voxels 5 no longer has would have been refused or
    # split off nothing)
    new = direct.label_at((0, 0, 0))
    assert new > before and direct.label_at((15, 0, 0)) == 5
    assert direct.size(new) == int(mask.sum())
    assert direct.size(5) == int((seg == 5).sum() - mask.sum())
    # ids reserved through the lost answer: one range, not two
    proxy.add(Rule("/nextlabel/", "lost", status=502))
    first = direct.next_label()
    with pytest.raises(RemoteUnavailableError, match="not sent again"):
        via.reserve_ids(10)
    assert direct.next_label() == first + 10
    # voxel writes are idempotent and still go through a lost answer on a retry
    proxy.add(Rule("/raw/", "lost", status=502, times=1))
    vol2 = voxgate.open(proxied.url(name), mode="r+")
    vol2.remote.client.backoff = 0.001
    vol2[0:16, 0:16, 0:16] = 1000  # (an id no split took)
    assert (vol[0:16, 0:16, 0:16].read() == 1000).all()
    assert proxy.count("POST") >= 4  # split, nextlabel, the write's lost try and its retry
