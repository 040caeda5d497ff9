"""The relay application: configuration, cache, catalog, auth, and the two dialects' routes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from typing import Any

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..api import create_remote
from ..errors import (
    AuthenticationError,
    CorruptChunkError,
    InvalidRequestError,
    MissingChunkError,
    OutOfBoundsError,
    ReadOnlyError,
    RemoteNotFoundError,
    RemoteUnavailableError,
    VoxgateError,
)
from ..geometry import Box, chunk_boxes
from ..remotes._tensorstore import set_request_retries
from .boss import boss_routes, local_channel_meta, remove_tree
from .cache import CachedRemote, TieredCache, UpstreamError, UpstreamTimeoutError
from .catalog import Catalog, ChannelEntry, NotFound
from .config import RelayConfig
from .errors import (
    INVALID_POST_ARGUMENT,
    IO_ERROR,
    MISSING_PERMISSION,
    REQUEST_TOO_LARGE,
    RESOURCE_NOT_FOUND,
    UNHANDLED_EXCEPTION,
    BossHTTPError,
    bad_request,
    boss_error,
    not_found,
)
from .precomputed import precomputed_routes

__all__ = ["Relay", "build_app"]

log = logging.getLogger("voxgate.relay")

#: an absolute path in a message: "/" not inside a word, a URL or a label, up to a space,
#: quote or bracket
_ABSOLUTE_PATH = re.compile(r"(?<![\w\]\)>:/.\-~])/[^\s'\"\[\]()<>,;]+")
_FILE_URL = re.compile(r"file://[^\s'\"\[\]()<>,;]*")
#: the relay's own routes, which messages may name
_ROUTES = ("/v1/", "/v0.", "/precomputed/", "/ping", "/metrics")

#: blocks scanned at once by ids / bounding boxes / reserve (bounded memory on big volumes)
SCAN_BYTES = 64 * 2**20


class Relay:
    """Everything a request handler needs; one per server."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        # a dead upstream fails in about a second instead of being retried for minutes
        t = config.upstream_timeout
        set_request_retries(4, min(0.1, t / 40), min(1.0, t / 8))
        self.cache = TieredCache(config.cache.memory_bytes, config.cache.disk_path,
                                 config.cache.disk_bytes)
        self.catalog = Catalog(config, self.cache)
        self.limiter = anyio.CapacityLimiter(32)
        self._reserve_lock = threading.Lock()
        self._jobs_lock = threading.Lock()
        self._downsample: dict[str, str] = {}

    # -- auth -----------------------------------------------------------------------------------
    @staticmethod
    def token(request: Request) -> str | None:
        header = request.headers.get("authorization")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() not in ("token", "bearer"):
            raise BossHTTPError(401, 0, "Invalid token header. Token string should not contain "
                                "spaces.", drf=True,
                                headers={"WWW-Authenticate": 'Token realm="api"'})
        return None if parts[1] == "public" else parts[1]

    def authorize(self, request: Request, collection: str | None, *, write: bool) -> str | None:
        """Check the request's token for a read or a write; return the token (or None)."""
        token = self.token(request)
        auth = self.config.auth
        if auth.open:
            return token
        if token is None:
            if write or not auth.public_read:
                raise BossHTTPError(401, 0, "Authentication credentials were not provided.",
                                    drf=True, headers={"WWW-Authenticate": 'Token realm="api"'})
            return None
        grant = auth.tokens.get(token)
        if grant is None:
            raise BossHTTPError(401, 0, "Invalid token.", drf=True,
                                headers={"WWW-Authenticate": 'Token realm="api"'})
        if not grant.allows(collection, write):
            what = "write to" if write else "read"
            raise BossHTTPError(403, MISSING_PERMISSION, f"This user does not have the required "
                                f"permissions: the token may not {what} "
                                f"{collection or 'this resource'}")
        return token

    def readable_collections(self, request: Request) -> list[str]:
        """The collections the request's token may read (bossDB lists only those)."""
        token = self.authorize(request, None, write=False)
        names = self.catalog.collection_names()
        grant = self.config.auth.tokens.get(token) if token is not None else None
        if grant is None or grant.collections is None:
            return names
        return [c for c in names if c in grant.collections]

    def scrub(self, message: str, request_path: str = "") -> str:
        """``message`` without the server's paths and upstream URLs: each becomes a label
        (``[data root]``, ``[upstream of c/e/ch]``), and any other absolute path that is not
        one of the relay's own routes ``[server path]``, so an error body never shows them."""
        cfg = self.config
        found: dict[str, str] = {}

        def add(text: str, label: str) -> None:
            variants = [text]
            rest = text
            while "://" in rest:  # precomputed://file:///x -> file:///x -> /x
                rest = rest.split("://", 1)[1]
                variants.append(rest)
            for v in list(variants):
                if v.startswith("/"):
                    variants.append(os.path.realpath(v))
            for v in variants:
                # URLs and paths only: "faultfake://corrupt" must not replace every "corrupt"
                if v.strip("/") and (v.startswith("/") or "://" in v):
                    found.setdefault(v.rstrip("/"), label)

        for entry in list(self.catalog.channels.values()):
            add(entry.upstream_url, f"[upstream of {'/'.join(entry.key)}]")
        for path, label in ((cfg.data_root, "[data root]"), (cfg.cache.disk_path, "[cache]"),
                            (cfg.state_path, "[state file]"),
                            (self.catalog.state_path, "[state file]")):
            if path is not None:
                add(str(path), label)
        for text in sorted(found, key=len, reverse=True):
            message = message.replace(text, found[text])

        def other_path(m: re.Match[str]) -> str:
            text = m.group(0)
            if text.startswith(_ROUTES) or (request_path and text.startswith(request_path)):
                return text
            return "[server path]"

        message = _FILE_URL.sub("[server path]", message)
        return _ABSOLUTE_PATH.sub(other_path, message)

    def user(self, request: Request) -> str:
        token = self.token(request)
        if token is None:
            return "anonymous"
        return "token-" + hashlib.sha256(token.encode()).hexdigest()[:8]

    # -- resources ------------------------------------------------------------------------------
    def known_collection(self, c: str) -> str:
        if c not in self.catalog.collection_names():
            raise not_found(f"Collection {c} not found")
        return c

    def known_experiment(self, c: str, e: str) -> tuple[str, str]:
        if e not in self.catalog.experiment_names(self.known_collection(c)):
            raise not_found(f"Experiment {e} not found")
        return c, e

    def channel(self, c: str, e: str, ch: str) -> ChannelEntry:
        try:
            return self.catalog.channel(c, e, ch)
        except NotFound as exc:
            raise not_found(str(exc)) from None

    def remote(self, entry: ChannelEntry, token: str | None = None) -> CachedRemote:
        return self.catalog.remote(entry, token)

    def frame_at(self, c: str, e: str, entry: ChannelEntry, res: int) -> Box:
        """The coordinate frame at resolution ``res``, in that resolution's voxels."""
        frame = self.catalog.frame(c, e)
        meta = self.remote(entry).meta
        s0, sk = meta.scale(0), meta.scale(res)
        f = [max(1, round(b / a)) for a, b in zip(s0.voxel_size.zyx(), sk.voxel_size.zyx(),
                                                  strict=True)]
        start = [frame[f"{ax}_start"] // k for ax, k in zip("zyx", f, strict=True)]
        stop = [-(-frame[f"{ax}_stop"] // k) for ax, k in zip("zyx", f, strict=True)]
        return Box(start, stop)

    # -- data -----------------------------------------------------------------------------------
    async def read_body(self, request: Request, expected: int) -> bytes:
        """The request body, refused with 413 before reading when it cannot fit the region."""
        limit = min(self.config.max_cutout_bytes, expected) + 65536
        length = request.headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                raise bad_request(INVALID_POST_ARGUMENT, "bad Content-Length") from None
            if n > limit:
                raise BossHTTPError(413, REQUEST_TOO_LARGE, f"the body ({n} bytes) is larger "
                                    f"than the region it is for can be ({expected} bytes)")
        chunks = []
        size = 0
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise BossHTTPError(413, REQUEST_TOO_LARGE, "the body is larger than the region "
                                    f"it is for can be ({expected} bytes)")
            chunks.append(part)
        return b"".join(chunks)

    def write(self, remote: CachedRemote, box: Box, data: np.ndarray, res: int) -> None:
        bounds = remote.meta.scale(res).bounds
        if not bounds.contains(box):
            raise bad_request(1001, f"this channel's data covers {bounds} at resolution {res}; "
                              f"{box} cannot be written")
        remote.write(box, np.ascontiguousarray(data), res)
        if res == 0 and len(remote.meta.scales) > 1:
            # as bossDB does: new base data leaves the coarser levels stale
            with self._jobs_lock:
                self._downsample[remote.url] = "NOT_DOWNSAMPLED"

    # -- server-side downsampling (bossDB's /v1/downsample/) ------------------------------------
    def downsample_status(self, entry: ChannelEntry, remote: CachedRemote) -> str:
        with self._jobs_lock:
            state = self._downsample.get(remote.url)
        if state is not None:
            return state
        return "DOWNSAMPLED" if len(remote.meta.scales) > 1 else "NOT_DOWNSAMPLED"

    def start_downsample(self, entry: ChannelEntry, remote: CachedRemote) -> None:
        """Recompute every coarser level from level 0 in the background, through the cache
        (so cached cells of those levels are replaced as they are written)."""
        with self._jobs_lock:
            if self._downsample.get(remote.url) in ("QUEUED", "IN_PROGRESS"):
                raise BossHTTPError(409, 2006, "a downsample of this channel is already running")
            self._downsample[remote.url] = "IN_PROGRESS"

        def job() -> None:
            from ..services.downsample import downsample
            from ..volume import Volume

            try:
                downsample(Volume(remote), len(remote.meta.scales), prefer="local")
            except Exception as exc:  # the job's outcome is its status; the log says why
                log.warning("downsample of %s failed: %s", remote.url, exc)
                state = "FAILED"
            else:
                state = "DOWNSAMPLED"
            with self._jobs_lock:
                self._downsample[remote.url] = state

        threading.Thread(target=job, name="voxgate-downsample", daemon=True).start()

    def _blocks(self, remote: CachedRemote, box: Box, res: int) -> list[Box]:
        from ..geometry import grow_block

        grid = remote.grid(res)
        block = grow_block(grid, remote.meta.dtype.itemsize, box.shape, SCAN_BYTES)
        return [cell.intersect(box) for _, cell in chunk_boxes(box, block,
                                                               remote.meta.scale(res).bounds)]

    def ids_in(self, remote: CachedRemote, box: Box, res: int) -> list[int]:
        inside = box.intersect(remote.meta.scale(res).bounds)
        found: set[int] = set()
        if inside.is_empty():
            return []
        for block in self._blocks(remote, inside, res):
            found.update(int(v) for v in np.unique(remote.read(block, res)))
        found.discard(0)
        return sorted(found)

    def bounding_box(self, remote: CachedRemote, ident: int, res: int) -> Box | None:
        lo: list[int] | None = None
        hi: list[int] | None = None
        value = np.asarray(ident).astype(remote.meta.dtype)
        for block in self._blocks(remote, remote.meta.scale(res).bounds, res):
            where = np.nonzero(remote.read(block, res) == value)
            if not where[0].size:
                continue
            b_lo = [int(w.min()) + s for w, s in zip(where, block.start, strict=True)]
            b_hi = [int(w.max()) + 1 + s for w, s in zip(where, block.start, strict=True)]
            lo = b_lo if lo is None else [min(a, b) for a, b in zip(lo, b_lo, strict=True)]
            hi = b_hi if hi is None else [max(a, b) for a, b in zip(hi, b_hi, strict=True)]
        return None if lo is None or hi is None else Box(lo, hi)

    def reserve(self, entry: ChannelEntry, count: int, token: str | None = None) -> int:
        key = "/".join(entry.key)
        with self._reserve_lock:
            reserved = self.catalog.state["reserved"]
            if key not in reserved:
                # the first reservation starts above every id already in the volume
                remote = self.remote(entry, token)
                top = 0
                for block in self._blocks(remote, remote.meta.scale(0).bounds, 0):
                    top = max(top, int(remote.read(block, 0).max(initial=0)))
                reserved[key] = top + 1
            start = int(reserved[key])
            reserved[key] = start + count
            self.catalog.save()
            return start

    def create_local_channel(self, c: str, e: str, ch: str, body: dict[str, Any],
                             user: str) -> ChannelEntry:
        root = self.config.data_root
        if root is None:
            raise bad_request(INVALID_POST_ARGUMENT, "this relay has no --data-root, so it cannot "
                              "create channels; start it with --data-root DIR")
        cat = self.catalog
        exp = cat.state["experiments"].get(f"{c}/{e}")
        if exp is None:
            raise bad_request(INVALID_POST_ARGUMENT, f"experiment {c}/{e} is derived from "
                              "upstream volumes; new channels go into experiments created "
                              "through the API")
        # a stored frame is read without opening every upstream (one dead upstream must not
        # stop channels being created elsewhere); a derived one needs its channels' metadata
        stored_frame = cat.state["coords"].get(exp["coord_frame"])
        frame = dict(stored_frame) if stored_frame is not None else \
            cat.coord_frames()[exp["coord_frame"]]
        meta = local_channel_meta(frame, exp, body)
        path = root / c / e / f"{ch}.zarr"
        url = f"zarr://{path}"
        create_remote(url, meta, exist_ok=False)
        entry = ChannelEntry(c, e, ch, url, local=True)
        key = f"{c}/{e}/{ch}"
        with cat._lock:
            cat.channels[(c, e, ch)] = entry
            cat.state["local_channels"][key] = {"url": url}
            cat.state["channels"][key] = {
                "description": str(body.get("description", "")), "creator": user,
                "sources": list(body.get("sources", [])), "related": list(body.get("related", [])),
                "public": bool(body.get("public", False)),
            }
            while key in cat.state["deleted"]:
                cat.state["deleted"].remove(key)
            cat.save()
        return entry

    def delete_local_channel(self, entry: ChannelEntry) -> None:
        cat = self.catalog
        key = "/".join(entry.key)
        tag = cat.cache_tag(entry)  # its incarnation's: taken while it still has one
        with cat._lock:
            cat.channels.pop(entry.key, None)
            cat.state["local_channels"].pop(key, None)
            cat.state["channels"].pop(key, None)
            cat.state["meta"].pop(key, None)
            cat.state["reserved"].pop(key, None)
            cat.save()
        # its Remotes closed and its cells dropped from memory and disk; a channel created
        # later under this name is a new incarnation, with a cache identity of its own (and
        # no downsample status of the old one)
        with self._jobs_lock:
            for r in list(entry._remotes.values()):
                self._downsample.pop(r.url, None)
        cat.drop_channel(entry, tag)
        location = entry.upstream_url.split("://", 1)[1]
        remove_tree(location)

    def metrics(self) -> dict[str, Any]:
        out = {"cache": self.cache.metrics.snapshot(),
               "memory_bytes_used": self.cache.memory.used,
               "memory_entries": len(self.cache.memory),
               "channels": len(self.catalog.channels)}
        if self.cache.disk is not None:
            out["disk_bytes_used"] = self.cache.disk.volume()
        return out


#: set on the 502 of data that does not decode: not transient, so clients do not retry it
CORRUPT_HEADER = "X-Voxgate-Error"
CORRUPT_VALUE = "corrupt-data"


def _corrupt_cause(exc: BaseException) -> CorruptChunkError | None:
    """The CorruptChunkError behind an upstream failure, if that is what it was."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        if isinstance(cur, CorruptChunkError):
            return cur
        if not isinstance(cur, UpstreamError):
            return None
        cur = cur.__cause__
        seen += 1
    return None


def _error_response(relay: Relay, request: Request, exc: Exception) -> Response:
    """The boss JSON error of ``exc``, with the server's paths taken out of its message."""
    res = _raw_error_response(request, exc)
    if not res.body:
        return res
    doc = json.loads(bytes(res.body))
    for key in ("message", "detail"):
        if isinstance(doc.get(key), str):
            doc[key] = relay.scrub(doc[key], request.url.path)
    headers = {k: v for k, v in res.headers.items()
               if k.lower() not in ("content-length", "content-type")}
    return JSONResponse(doc, status_code=res.status_code, headers=headers)


def _raw_error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, BossHTTPError):
        return exc.response()
    if isinstance(exc, MissingChunkError):
        # an upstream configured with missing = "error": absent data is a 404 naming the
        # chunks by grid index (never a path), not zeros
        shown = ", ".join(str(tuple(int(v) for v in c)) for c in exc.chunks[:10])
        more = f" and {exc.total - 10} more" if exc.total > 10 else ""
        return boss_error(404, RESOURCE_NOT_FOUND,
                          f"missing data: {exc.total} chunk(s) absent from the upstream at "
                          f"scale {exc.scale}: {shown}{more} (chunk grid index z, y, x); the "
                          "channel's upstream is configured with missing = \"error\"",
                          # voxgate's HTTP client raises MissingChunkError from these, so the
                          # error keeps its type through a chain of relays
                          headers={CORRUPT_HEADER: "missing-data", "X-Voxgate-Missing":
                                   f"scale={exc.scale};total={exc.total};chunks=" + " ".join(
                                       ",".join(str(int(v)) for v in c)
                                       for c in exc.chunks[:100])})
    corrupt = _corrupt_cause(exc)
    if corrupt is not None and not isinstance(exc, UpstreamTimeoutError):
        log.warning("corrupt upstream data on %s %s: %s", request.method, request.url.path,
                    corrupt)
        return boss_error(502, IO_ERROR, f"corrupt data upstream: {corrupt} (the stored data "
                          "does not decode; this is not transient and retrying will not help; "
                          "the relay never serves zeros in its place)",
                          headers={CORRUPT_HEADER: CORRUPT_VALUE})
    if isinstance(exc, NotFound | RemoteNotFoundError):
        return boss_error(404, RESOURCE_NOT_FOUND, str(exc))
    if isinstance(exc, UpstreamTimeoutError):
        return boss_error(504, IO_ERROR, f"upstream timed out: {exc}")
    if isinstance(exc, UpstreamError | RemoteUnavailableError | CorruptChunkError):
        return boss_error(502, IO_ERROR, f"upstream failed: {exc}")
    if isinstance(exc, AuthenticationError):
        return boss_error(403, MISSING_PERMISSION, f"the upstream refused the credentials: {exc}")
    if isinstance(exc, ReadOnlyError):
        return boss_error(403, MISSING_PERMISSION, str(exc))
    if isinstance(exc, OutOfBoundsError | InvalidRequestError):
        return boss_error(400, 1001, str(exc))
    if isinstance(exc, VoxgateError):
        log.warning("request %s %s failed: %s", request.method, request.url.path, exc)
        return boss_error(500, UNHANDLED_EXCEPTION, f"{type(exc).__name__}: {exc}")
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return boss_error(500, UNHANDLED_EXCEPTION, f"internal error ({type(exc).__name__})")


class _KeepConnection:
    """Answers an exception no handler took with the boss JSON 500 right here.

    Starlette's last-resort handler sends the 500 and then re-raises, and uvicorn closes the
    connection of any request whose app raised: every client with a keep-alive connection then
    got "connection reset" on its next request.  Caught here, the exception is logged and
    answered, and the connection stays usable.  (Only an exception after the response began
    still closes it: half a response cannot be taken back.)
    """

    def __init__(self, app: ASGIApp, relay: Relay) -> None:
        self.app = app
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            # (logged there, with its traceback, when it is a bug)
            await _error_response(self.relay, Request(scope), exc)(scope, receive, send)


def build_app(config: RelayConfig) -> Starlette:
    import blosc

    # requests already run in parallel; blosc's own thread pool on top of them made a 4 MiB
    # cutout's compression 3-4x slower (measured), so each request compresses on its thread
    blosc.set_nthreads(1)
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
        return _error_response(relay, request, exc)

    routes = [Route("/metrics", metrics), *boss_routes(relay), *precomputed_routes(relay)]
    app = Starlette(
        routes=routes,
        exception_handlers={404: not_found_route, 405: method_not_allowed,
                            BossHTTPError: handler, VoxgateError: handler,
                            # anything else is a bug here: still a boss JSON 500, never a
                            # plain-text page (Starlette re-raises it after, so it is logged)
                            Exception: handler},
        middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET"],
                               allow_headers=["*"], expose_headers=["Content-Encoding"]),
                    Middleware(_KeepConnection, relay=relay)],
    )
    app.state.relay = relay
    return app


def serve(config: RelayConfig) -> None:
    """Run the relay until interrupted (``voxgate serve``)."""
    import uvicorn

    from .cache import limit_heap_growth

    limit_heap_growth()  # RSS stays near the cache budget (docs/relay.md, "Memory")
    app = build_app(config)
    log.info("voxgate relay on http://%s:%d", config.host, config.port)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                timeout_keep_alive=30)

