"""Static file servers for tests: what a bucket behind HTTP looks like to Neuroglancer and
CloudVolume (CORS open, single byte ranges answered 206, as object stores do), and an object
store's answers as the relay's upstream (FileStore: strong ETags, Range served or ignored)."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler with ``Range: bytes=a-b`` (and ``a-``, ``-n``) support."""

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Headers", "*")
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        wanted = _RANGE.match(self.headers.get("Range", "").strip())
        path = self.translate_path(self.path)
        if wanted is None or not os.path.isfile(path):
            super().do_GET()
            return
        with open(path, "rb") as f:
            data = f.read()
        first, last = wanted.groups()
        if first == "":
            start, stop = max(0, len(data) - int(last or 0)), len(data)
        else:
            start, stop = int(first), min(len(data), int(last) + 1 if last else len(data))
        if start >= len(data) or start >= stop:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()
        self.wfile.write(data[start:stop])


class Server(http.server.ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 that takes tensorstore's concurrent requests: at
    socketserver's default listen backlog of 5, connections beyond it wait about a second to
    be retried (an HTTP test of many chunks took 9 s instead of 1)."""

    request_queue_size = 128
    daemon_threads = True


@contextmanager
def serve_directory(root: str | os.PathLike[str]) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1; yields the base URL."""

    class Handler(RangeHandler):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, directory=str(root), **k)

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


_BYTES = re.compile(r"bytes=([0-9]*)-([0-9]*)")


class FileStore:
    """An HTTP server on 127.0.0.1 of the files under ``root`` as a simple object store sees
    them: a strong ETag (an md5 of the bytes), If-None-Match answered 304, 404 for a missing
    file, HEAD as GET without the body (or refused 405 where ``head`` is false) and
    ``Range: bytes=a-b`` (``a-``, ``-n``) answered 206, or 416 naming the size for a first byte
    past the end, only while ``ranges`` is set (otherwise always the whole file, 200).  No
    Accept-Ranges and no CORS headers.  ``ranges`` may be switched while it serves; ``sent``
    lists (the path under ``root``, the status, its body bytes) of each answer with a body."""

    def __init__(self, root: str | os.PathLike[str], *, ranges: bool,
                 head: bool = True) -> None:
        base = Path(root)
        self.ranges = ranges
        self.sent: list[tuple[str, int, int]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                if not head:
                    self.send_response(405)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.do_GET(body=False)

            def do_GET(self, body: bool = True) -> None:
                path = base / self.path.lstrip("/").split("?")[0]
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                etag = f'"{hashlib.md5(data).hexdigest()}"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                status, part = 200, data
                m = _BYTES.fullmatch(self.headers.get("Range") or "")
                if owner.ranges and m is not None:
                    first, last = m.groups()
                    start = len(data) - int(last) if not first else int(first)
                    stop = int(last) + 1 if first and last else len(data)
                    start = max(start, 0)
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status, part = 206, data[start:stop]
                self.send_response(status)
                self.send_header("ETag", etag)
                if status == 206:
                    self.send_header("Content-Range",
                                     f"bytes {start}-{start + len(part) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if body:
                    owner.sent.append((path.relative_to(base).as_posix(), status, len(part)))
                    self.wfile.write(part)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def sizes(self, path: str | None = None) -> list[int]:
        """The body bytes of each answer sent (for the file ``path`` under ``root`` only)."""
        return [n for p, _, n in self.sent if path is None or p == path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
