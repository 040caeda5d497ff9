"""The DVID test server's ASGI app, its command line, and the subprocess helpers for tests."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .state import DVIDState


# -- the ASGI app and the process helpers ---------------------------------------------------------
def make_app(data: Path | None = None) -> Any:
    """The Starlette app serving a fresh (or, with ``data``, persisted) DVID state."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    state = DVIDState(data)

    async def endpoint(request: Request) -> Response:
        body = await request.body()
        raw = request.scope.get("raw_path") or request.url.path.encode()
        raw_path = raw.decode("latin-1").split("?")[0]
        query = dict(request.query_params)
        headers = {k.lower(): v for k, v in request.headers.items()}
        reply = await run_in_threadpool(state.handle, request.method, raw_path, query, body,
                                        headers)
        hdrs = {"Access-Control-Allow-Origin": "*", **reply.headers}
        if reply.status >= 400:
            hdrs["X-Content-Type-Options"] = "nosniff"
        return Response(reply.body, reply.status, hdrs, media_type=reply.content_type)

    app = Starlette(routes=[Route("/{path:path}", endpoint,
                                  methods=["GET", "POST", "DELETE", "HEAD", "PUT"])])
    app.state.dvid = state
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m voxgate.testing.dvid",
        description="A DVID-dialect test server (in memory unless --data is given).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data", type=Path, default=None,
                        help="folder to persist repos and data in (created if missing)")
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(make_app(args.data), host=args.host, port=args.port, log_level="warning",
                access_log=False)


@dataclass
class DVIDServerProcess:
    """A test server running as a subprocess; ``url`` is ``http://127.0.0.1:PORT``."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path | None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int | None = None, data: Path | None = None, log: Path | None = None,
                 timeout: float = 60.0) -> DVIDServerProcess:
    """Start ``python -m voxgate.testing.dvid`` on 127.0.0.1 and wait until it answers."""
    import httpx

    port = port or _free_port()
    cmd = [sys.executable, "-m", "voxgate.testing.dvid", "--host", "127.0.0.1", "--port",
           str(port)]
    if data is not None:
        cmd += ["--data", str(data)]
    out = open(log, "wb") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text() if log is not None and log.exists() else ""
            raise RuntimeError(f"the DVID test server exited with {proc.returncode}: {text}")
        try:
            if httpx.get(url + "/api/server/info", timeout=1).status_code == 200:
                return DVIDServerProcess(url, port, proc, log)
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the DVID test server did not answer on {url} within {timeout} s")
