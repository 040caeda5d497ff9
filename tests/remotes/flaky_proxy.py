"""A fault-injecting HTTP proxy for REST Remote tests: sits in front of a real server on
127.0.0.1 and, for requests matching a rule, answers an error status, stalls, cuts the body
short, sends the wrong length, or closes the connection."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx


@dataclass
class Rule:
    match: str                 # substring of "METHOD path"
    # "status", "slow", "truncate", "close", "wrong_length", "garbage", or "lost" (forwarded
    # to the server, which acts on it; the client gets ``status`` instead of its answer)
    action: str
    times: int = 10**9         # how many matching requests it applies to
    status: int = 500
    delay: float = 0.0
    hits: int = 0


@dataclass
class FlakyProxy:
    target: str
    port: int = 0
    rules: list[Rule] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, rule: Rule) -> Rule:
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.requests.clear()

    def count(self, match: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if match in r)

    def _rule(self, line: str) -> Rule | None:
        with self.lock:
            self.requests.append(line)
            for rule in self.rules:
                if rule.match in line and rule.hits < rule.times:
                    rule.hits += 1
                    return rule
        return None


def _handler(proxy: FlakyProxy,
             client: httpx.Client) -> type[http.server.BaseHTTPRequestHandler]:

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _do(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            rule = proxy._rule(f"{self.command} {self.path}")
            if rule is not None and rule.action == "close":
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if rule is not None and rule.action == "status":
                payload = b'{"status": %d, "code": 9002, "message": "injected"}' % rule.status
                self._send(rule.status, payload, {"Content-Type": "application/json"})
                return
            if rule is not None and rule.action == "slow":
                time.sleep(rule.delay)
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "content-length", "connection",
                                            "accept-encoding")}
            resp = client.request(self.command, self.path, content=body, headers=headers)
            data = resp.content
            out_headers = {"Content-Type": resp.headers.get("content-type", "")}
            if rule is not None and rule.action == "lost":
                self._send(rule.status, b"upstream answer lost", {"Content-Type": "text/plain"})
                return
            if rule is not None and rule.action == "garbage":
                data = b"\x00garbage" * 8
            if rule is not None and rule.action == "wrong_length":
                import blosc

                raw = blosc.decompress(data)
                data = blosc.compress(raw[: len(raw) // 2], typesize=1)
            if rule is not None and rule.action == "truncate":
                self.send_response(resp.status_code)
                self.send_header("Content-Length", str(len(data)))
                for k, v in out_headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self._send(resp.status_code, data, out_headers)

        def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                if v:
                    self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _do

    return Handler


@contextmanager
def flaky_proxy(target: str) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(target)
    client = httpx.Client(base_url=target, timeout=60)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy, client))
    server.daemon_threads = True
    proxy.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        client.close()
