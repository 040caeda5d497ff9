"""What every handler of the bossDB dialect shares: JSON responses and running blocking work
off the event loop (in the relay's thread pool)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..state import Relay

__all__ = ["Handler", "is_admin", "json", "reads", "runner"]

#: a route's endpoint
Handler = Callable[[Request], Awaitable[Response]]


def reads(request: Request) -> bool:
    """Whether the request only reads: GET, or HEAD, which Starlette routes to every GET
    route's handler (a handler that took "not GET" for a write answered HEAD with a DELETE)."""
    return request.method in ("GET", "HEAD")


def json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


def runner(relay: Relay) -> Callable[[Callable[[], Any]], Awaitable[Any]]:
    """``await run(fn)``: ``fn()`` in a worker thread, bounded by ``relay.limiter``."""

    async def run(fn: Callable[[], Any]) -> Any:
        return await to_thread.run_sync(fn, limiter=relay.limiter)

    return run


def is_admin(relay: Relay, token: str | None) -> bool:
    """bossDB's admin (staff) user here: an open relay's every client, or a read-write token
    not limited to collections."""
    auth = relay.config.auth
    if auth.open:
        return True
    grant = auth.tokens.get(token) if token is not None else None
    return grant is not None and grant.role == "read-write" and grant.collections is None
