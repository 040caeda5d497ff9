"""HTTPClient's bulk path (large bodies read with urllib3 straight into a buffer) against a
plain HTTP/1.1 server on 127.0.0.1: more threads than connections wait their turn as httpx's
limits make them (no 'connection pool is full' warnings, no connections thrown away), bodies
arrive whole, and a short body is retried then named."""

from __future__ import annotations

import http.server
import logging
import socketserver
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from voxgate.errors import RemoteUnavailableError
from voxgate.remotes._http import HTTPClient

BODY = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: ClassVar[set[int]] = set()

    def do_GET(self) -> None:
        type(self).connections.add(self.client_address[1])
        if self.path == "/short":  # says 1 MiB, sends half, closes
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[: len(BODY) // 2])
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.connections = set()
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_threads_beyond_the_pool_wait_for_a_connection(
        server: str, caplog: pytest.LogCaptureFixture) -> None:
    client = HTTPClient(server, max_connections=2)
    bad: list[int] = []

    def fetch() -> None:
        for _ in range(5):
            into = bytearray()
            client.request("GET", "/x", into=into)
            if bytes(into) != BODY:
                bad.append(len(into))

    with caplog.at_level(logging.WARNING, logger="urllib3"):
        threads = [threading.Thread(target=fetch) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    client.close()
    assert not bad
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]
    assert len(_Handler.connections) <= 2  # kept and reused, never more than the pool


def test_a_body_cut_short_is_retried_then_named(server: str) -> None:
    client = HTTPClient(server, retries=2, backoff=0.01)
    with pytest.raises(RemoteUnavailableError, match="did not answer in full") as info:
        client.request("GET", "/short", into=bytearray())
    assert "3 attempts" in str(info.value)
    client.close()
