"""The relay server assembled: the state (:class:`~voxgate.relay.state.Relay`), the two
dialects' routes, the error handlers and middleware, and :func:`serve`."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import struct
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import RedactingFilter, VoxgateError, redacting_logger
from .boss import boss_routes
from .catalog import request_token
from .config import RelayConfig, check_channels
from .errors import RESOURCE_NOT_FOUND, BossHTTPError, boss_error, error_response
from .index import index_routes
from .precomputed import precomputed_routes
from .state import Relay

__all__ = ["Relay", "build_app", "client_timeout_protocol", "serve",
           "uvicorn_log_config"]

log = redacting_logger("voxgate.relay")

#: the ioctl giving a TCP socket's unsent and unacknowledged bytes (_unsent): Linux's; where
#: there is none (or no fcntl), the transport's buffer alone
_OUTQ: int | None = None
if sys.platform.startswith("linux"):
    try:
        import fcntl
        import termios
    except ImportError:
        pass
    else:
        _OUTQ = termios.TIOCOUTQ

#: seconds an idle keep-alive connection stays open
UVICORN_KEEP_ALIVE = 30


def _unsent(transport: Any) -> int:
    """The bytes written to ``transport`` its client has not taken: the transport's buffer and,
    where the system tells (Linux: TIOCOUTQ), the socket's send queue.  (The buffer alone
    moves in steps of megabytes, seconds apart, while a slow client empties the socket's
    queue: the loop writes again only when a third of the queue is free.)"""
    n = int(transport.get_write_buffer_size())
    sock = transport.get_extra_info("socket")
    if _OUTQ is not None and sock is not None:
        try:
            n += struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0" * 4))[0]
        except (OSError, ValueError):
            pass
    return n


def client_timeout_protocol(seconds: float, on_shutdown: Callable[[], None] | None = None
                            ) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools' where it is installed, else h11's) closing any
    connection on which the relay has waited ``seconds`` for its client without a byte
    coming or going: one that sends nothing, stops in the middle of its request line,
    headers or body, or stops reading its response.  uvicorn's own ``timeout_keep_alive``
    covers only the wait between two requests: such a connection (a client gone without a
    FIN: a crashed host, a NAT that forgot it) held its file descriptor, and a half-read
    response its buffers, for the relay's whole run, until descriptors ran out and no client
    could connect.  A request being answered (the relay, not the client, working) is never
    cut.  ``on_shutdown`` is called as uvicorn stops (before it waits for the requests in
    progress)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # (no httptools)
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]

    class ClientTimeoutProtocol(base):
        _timer: asyncio.TimerHandle | None = None
        #: the loop's time of the last byte that came or went
        _last = 0.0
        #: the bytes of responses the client had still to take at the last look (_unsent)
        _buffered = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._waited()

        def data_received(self, data: bytes) -> None:
            self._waited()
            super().data_received(data)

        def resume_writing(self) -> None:
            self._waited()
            super().resume_writing()

        def pause_writing(self) -> None:
            self._waited()
            super().pause_writing()

        def shutdown(self) -> None:
            # (uvicorn stops: it calls this on every connection, then waits for the requests
            # in progress.)  ``on_shutdown``: the relay's budget refuses its waiting requests
            # (InflightBudget.stop), each of which would wait up to its limit (30 s) otherwise
            if on_shutdown is not None:
                on_shutdown()
            super().shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

        def _waited(self) -> None:
            """Progress with the client: its wait starts again.  (A time noted, not a timer
            made again: a large body arrives in thousands of pieces; the one timer, when it
            fires, waits again for what is left of the wait.)"""
            self._last = self.loop.time()
            if self.transport is not None:  # (what later looks compare with: see _expired)
                self._buffered = _unsent(self.transport)
            if self._timer is None:
                self._timer = self.loop.call_later(seconds, self._expired)

        def _expired(self) -> None:
            self._timer = None
            transport = self.transport
            if transport is None:
                return
            # a client taking a response is progress too, though no callback says so while
            # it drains (pause_writing once, resume_writing at its end): less left to take
            # than at the last look is progress
            buffered = _unsent(transport)
            if buffered < self._buffered:
                self._last = self.loop.time()
            self._buffered = buffered
            left = self._last + seconds - self.loop.time()
            if left > 0:  # progress since the timer was set
                self._timer = self.loop.call_later(left, self._expired)
                return
            if transport.is_closing():
                # closed (by uvicorn: a stopping relay, its keep-alive timeout), but asyncio's
                # close() first waits for the client to take what is buffered: one that stopped
                # reading its response held the connection, its descriptor and the body, for
                # good, and a stopping relay waited for it for good
                if buffered:
                    transport.abort()
                return
            cycle, flow = self.cycle, self.flow
            on_client = (cycle is None or cycle.response_complete or cycle.more_body
                         or (flow is not None and flow.write_paused))
            if on_client and not (flow is not None and flow.read_paused):
                # (uvicorn tells a handler waiting on it: disconnected.)  With a response
                # the client stopped taking, abort: close() would wait for it for good
                if buffered:
                    transport.abort()
                else:
                    transport.close()
            else:
                self._waited()  # the relay is working on a request: not the client's wait

    return ClientTimeoutProtocol


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's logging configuration with a :class:`~voxgate.errors.RedactingFilter` on its
    error handler: what uvicorn logs of a relay (an exception no handler answered, with its
    traceback) shows no credential either."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["voxgate_redact"] = {"()": RedactingFilter}
    # (not on the access handler, which is off: its formatter needs the record's args)
    config["handlers"]["default"].setdefault("filters", []).append("voxgate_redact")
    return config


class _KeepConnection:
    """Answers an exception no handler took with the boss JSON 500 right here.

    Starlette's last-resort handler sends the 500 and then re-raises, and uvicorn closes the
    connection of any request whose app raised: every client with a keep-alive connection then
    got "connection reset" on its next request.  Caught here, the exception is logged and
    answered, and the connection stays usable.  (Only an exception after the response began
    still closes it: half a response cannot be taken back.)

    Also, first, the state other worker processes saved is taken in (one ``stat`` when none
    was: every request sees what was saved before it began), and with ``--workers N`` every
    response says which worker answered (``X-Voxgate-Worker: PID``).
    """

    def __init__(self, app: ASGIApp, relay: Relay) -> None:
        self.app = app
        self.relay = relay
        self.worker = [(b"x-voxgate-worker", str(os.getpid()).encode())] \
            if relay.config.workers > 1 else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_token.set(None)  # (not an earlier request's on this connection)
        self.relay.catalog.refresh()
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.worker:
                    message = {**message,
                               "headers": [*message.get("headers", []), *self.worker]}
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            # (logged there, with its traceback, when it is a bug)
            await error_response(Request(scope), exc, self.relay.scrub)(
                scope, receive, send)


def build_app(config: RelayConfig) -> Starlette:
    """The relay's ASGI app for ``config``, whose channels are checked first as
    :func:`.config.load_config` checks a file's (a :class:`RelayConfig` made in code, as
    :func:`voxgate.view` and tests make one, is refused here as :func:`serve` refuses it)."""
    check_channels(config)
    import blosc

    # blosc without the GIL (each call on a context of its own, so calls run in parallel
    # and the event loop goes on meanwhile; with the GIL held, 8 threads compressing 16 MiB of
    # ids took 7.3 ms each, one at a time, 3.4 ms without it), on 2 threads: a lone cold
    # 128^3 uint64 cutout compresses in 3.5 ms instead of 6.5, and concurrent ones share the
    # cores as before (3.7 ms each).  (blosc's global thread pool, with the GIL held, had made
    # a 4 MiB cutout's compression 3-4x slower under concurrent requests: not used.)
    blosc.set_releasegil(True)
    blosc.set_nthreads(2)
    relay = Relay(config)

    async def metrics(request: Request) -> Response:
        relay.authorize(request, None, write=False)  # as private as the data it describes
        return JSONResponse(relay.metrics())

    async def not_found_route(request: Request, exc: Exception) -> Response:
        return boss_error(404, RESOURCE_NOT_FOUND, f"no such endpoint: {request.url.path}")

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": f'Method "{request.method}" not allowed.'},
                            status_code=405)

    async def handler(request: Request, exc: Exception) -> Response:
        return error_response(request, exc, relay.scrub)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # stopped (after the requests in progress): the cells still on their way to the disk
        # tier are written, so the next start finds every cell this one fetched (a stop right
        # after a read could leave one behind)
        await anyio.to_thread.run_sync(relay.cache.flush)

    routes = [Route("/metrics", metrics), *boss_routes(relay), *precomputed_routes(relay)]
    routes += index_routes(relay)  # "/": what is served, with Neuroglancer/CloudVolume URLs
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found_route, 405: method_not_allowed,
                            BossHTTPError: handler, VoxgateError: handler,
                            # anything else is a bug here: still a boss JSON 500, never a
                            # plain-text page (Starlette re-raises it after, so it is logged)
                            Exception: handler},
        middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET"],
                               allow_headers=["*"],
                               expose_headers=["Content-Encoding", "Content-Range",
                                               "Accept-Ranges", "X-Voxgate-Error"]),
                    Middleware(_KeepConnection, relay=relay)],
    )
    app.state.relay = relay
    return app


def serve(config: RelayConfig) -> None:
    """Run the relay until interrupted (``voxgate serve``); with ``config.workers`` > 1,
    that many worker processes on the one port (:mod:`.workers`).  A configuration made in
    code is checked as :func:`.config.load_config` checks a file (its channels' names,
    upstreams and options) before anything starts."""
    check_channels(config)
    if config.workers > 1:
        from .workers import run_workers

        run_workers(config)
        return
    import uvicorn

    from .cache import limit_heap_growth

    limit_heap_growth()  # RSS stays near the cache budget (docs/relay.md, "Memory")
    app = build_app(config)
    log.info("voxgate relay on http://%s:%d", config.host, config.port)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                timeout_keep_alive=UVICORN_KEEP_ALIVE, log_config=uvicorn_log_config(),
                http=client_timeout_protocol(config.client_timeout,
                                             app.state.relay.inflight.stop))

