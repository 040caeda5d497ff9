"""A small threaded HTTP server for relay tests: serves a directory (precomputed layers written
by voxgate) and can be stopped, restarted on the same port, slowed, or made to answer garbage.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path
from typing import Any

from .conftest import free_port

__all__ = ["LayerServer"]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    owner: LayerServer


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        info = self.path.rstrip("/").endswith("/info")
        with owner.lock:
            owner.requests += 1
            if not info:
                owner.chunk_requests += 1
        delay = owner.delay_info if info else owner.delay_chunks
        if delay:
            owner.wake.wait(delay)
        mode = "ok" if info else owner.mode
        if mode == "500":
            self.send_error(500, "upstream is broken")
            return
        if mode in ("short", "gzip"):
            body = os.urandom(1000)
            self.send_response(200)
            if mode == "gzip":
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


class LayerServer:
    """Serves a directory over HTTP; can be stopped and restarted on the same port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.delay_info = 0.0
        self.delay_chunks = 0.0
        self.mode = "ok"  # "ok", "short" (wrong-length chunks), "gzip" (bad gzip), "500"
        self.requests = 0
        self.chunk_requests = 0
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self._server: _Server | None = None

    def url(self, layer: str) -> str:
        return f"precomputed://http://127.0.0.1:{self.port}/{layer}"

    def start(self) -> None:
        handler = functools.partial(_Handler, directory=str(self.directory))
        self._server = _Server(("127.0.0.1", self.port), handler)
        self._server.owner = self
        self.wake.clear()
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self.wake.set()  # release handlers that are sleeping
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def heal(self) -> None:
        self.mode = "ok"
        self.delay_info = self.delay_chunks = 0.0
