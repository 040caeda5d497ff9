"""A proxy for tests: on 127.0.0.1 in front of a real server, it forwards every request and
replaces the answer to the ones a rule matches with garbage (an HTML page, JSON of the wrong
shape, a truncated or huge body, ...) or with another status.  Used by
tests/test_server_garbage_audit.py, tests/test_server_garbage_leftovers_audit.py and
tests/relay/test_upstream_garbage_audit.py; ``dvid_behind_proxy`` is their DVID test server."""

from __future__ import annotations

import http.client
import http.server
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from voxgate.remotes.dvid import DVIDRepo

HTML = (b"<!DOCTYPE html><html><head><title>Sign in</title></head>"
        b"<body>Please log in</body></html>")
#: kinds of garbage made of a good JSON answer
JSON_GARBAGE = ["html", "empty", "huge", "truncated", "extra", "bytes", "list", "null",
                "number", "emptyobj", "strings", "nulls"]
#: kinds of garbage made of a good chunk
CHUNK_GARBAGE = ["html", "empty", "huge", "truncated", "extra"]

#: what replaces a matching answer: (status, headers, body) -> (status, headers, body), the
#: headers' names in lower case
Rule = Callable[[int, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]


def _leaves(doc: Any, value: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _leaves(v, value) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_leaves(v, value) for v in doc]
    return value


def garble(kind: str, headers: dict[str, str], body: bytes) -> tuple[str, bytes]:
    """(Content-Type, body) of the garbage of ``kind`` made from a good answer."""
    ctype = headers.get("content-type", "application/octet-stream")
    if kind == "html":
        return "text/html; charset=utf-8", HTML
    if kind == "ctype":  # the good body, called a web page
        return "text/html", body
    if kind == "empty":
        return ctype, b""
    if kind == "huge":
        return ctype, b"x" * (8 << 20)
    if kind == "truncated":
        return ctype, body[: len(body) // 2]
    if kind == "extra":
        return ctype, body + b"garbage"
    if kind == "bytes":
        return ctype, bytes((i * 131 + 7) % 256 for i in range(max(len(body), 64)))
    doc = json.loads(body)
    new = {"list": [doc], "null": None, "number": 7, "emptyobj": {},
           "strings": _leaves(doc, "x"), "nulls": _leaves(doc, None)}[kind]
    return "application/json", json.dumps(new).encode()


def garbage(kind: str) -> Rule:
    """A rule answering 200 with the garbage of ``kind`` made from the good answer."""

    def rule(status: int, headers: dict[str, str], body: bytes
             ) -> tuple[int, dict[str, str], bytes]:
        ctype, new = garble(kind, headers, body)
        return 200, {"content-type": ctype}, new

    return rule


def refused(status: int) -> Rule:
    """A rule answering ``status`` with a bossDB JSON error (a server without the endpoint)."""

    def rule(_: int, __: dict[str, str], ___: bytes) -> tuple[int, dict[str, str], bytes]:
        body = b'{"status": %d, "code": 4000, "message": "no such endpoint"}' % status
        return status, {"content-type": "application/json"}, body

    return rule


class GarbageProxy:
    """Forwards every request to ``backend``; a successful answer to a path matching the
    pattern of ``rule`` is replaced by what the rule makes of it (``hits`` counts them)."""

    def __init__(self, backend: str) -> None:
        self.backend = urlparse(backend)
        self.rule: tuple[re.Pattern[str], Rule] | None = None
        self.hits = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def forward(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                sent = self.rfile.read(n) if n else None
                conn = http.client.HTTPConnection(proxy.backend.hostname or "127.0.0.1",
                                                  proxy.backend.port, timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "accept-encoding")}
                conn.request(self.command, self.path, body=sent, headers=headers)
                got = conn.getresponse()
                body, status = got.read(), got.status
                kept = {k.lower(): v for k, v in got.getheaders()}
                conn.close()
                rule = proxy.rule
                if rule is not None and rule[0].search(self.path) and status < 300:
                    proxy.hits += 1
                    status, kept, body = rule[1](status, kept, body)
                self.send_response(status)
                for k, v in kept.items():
                    if k not in ("content-length", "transfer-encoding", "connection", "date",
                                 "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.url = f"http://{self.address}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answering(self, pattern: str, rule: Rule, *, must_match: bool = True) -> _Answering:
        """``with proxy.answering(pattern, rule):`` the rule holds inside the block only; with
        ``must_match``, a block that ends without an exception must have used it at least
        once (a test whose garbage never reached the client proves nothing)."""
        return _Answering(self, re.compile(pattern), rule, must_match)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Answering:
    def __init__(self, proxy: GarbageProxy, pattern: re.Pattern[str], rule: Rule,
                 must_match: bool) -> None:
        self.proxy, self.pattern, self.rule = proxy, pattern, rule
        self.must_match = must_match

    def __enter__(self) -> None:
        self.proxy.hits = 0
        self.proxy.rule = (self.pattern, self.rule)

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self.proxy.rule = None
        if kind is None and self.must_match:
            assert self.proxy.hits > 0, f"no answer matched {self.pattern.pattern}"


@contextmanager
def dvid_behind_proxy(alias: str, **instances: str) -> Iterator[tuple[GarbageProxy, DVIDRepo]]:
    """The DVID test server with a new repo ``alias`` holding ``instances`` (name = type name),
    behind a GarbageProxy; yields the proxy and the repo (opened on the server itself, not
    through the proxy).  Proxy and server are stopped on leaving."""
    from voxgate.remotes.dvid import DVIDRepo
    from voxgate.testing.dvid import start_server

    srv = start_server()
    try:
        repo = DVIDRepo.create(srv.url, alias=alias)
        for name, typename in instances.items():
            repo.create_instance(name, typename)
        proxy = GarbageProxy(srv.url)
        try:
            yield proxy, repo
        finally:
            proxy.close()
    finally:
        srv.stop()
