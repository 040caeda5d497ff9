"""bossDB-shaped HTTP errors: ``{"status", "code", "message"}`` with bossDB's codes, and the
one mapping of every exception a route can raise to its HTTP answer (:func:`error_response`)."""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from ..errors import (
    AuthenticationError,
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    MissingChunkError,
    MissingDependencyError,
    OutOfBoundsError,
    ReadOnlyError,
    RemoteBusyError,
    RemoteNotFoundError,
    RemoteUnavailableError,
    VoxgateError,
    redacting_logger,
)
from .cache import UpstreamError, UpstreamTimeoutError
from .catalog import NotFound

__all__ = ["CORRUPT_HEADER", "CORRUPT_VALUE", "BossHTTPError", "boss_error", "drf_error",
           "error_response"]

log = redacting_logger("voxgate.relay")

# bossDB error codes (boss/django/bosscore/error.py)
INVALID_URL = 1000
INVALID_CUTOUT_ARGS = 1001
TYPE_ERROR = 1002
INVALID_POST_ARGUMENT = 1003
INVALID_ARGUMENT = 1005
BAD_REQUEST = 1006
REQUEST_TOO_LARGE = 2000
DATATYPE_DOES_NOT_MATCH = 2001
DATA_DIMENSION_MISMATCH = 2002
DATATYPE_NOT_SUPPORTED = 2003
UNSUPPORTED_4D = 2005
INVALID_STATE = 2006
MISSING_PERMISSION = 3001
RESOURCE_NOT_FOUND = 4000
INTEGRITY_ERROR = 4003
OBJECT_NOT_FOUND = 4004
IO_ERROR = 5000
UNSUPPORTED_TRANSPORT_FORMAT = 5001
RESOURCE_EXISTS = 6002
FUTURE = 9000  # bossDB: a feature not (yet) available
UNHANDLED_EXCEPTION = 9002
UNSUPPORTED_VERSION = 9003


class BossHTTPError(Exception):
    """Raised inside a handler; the app turns it into the boss JSON error."""

    def __init__(self, status: int, code: int, message: str, *, drf: bool = False,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.drf = drf
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        if self.drf:
            return drf_error(self.status, self.message, self.headers)
        return boss_error(self.status, self.code, self.message, self.headers)


def boss_error(status: int, code: int, message: str,
               headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"status": status, "code": code, "message": message}, status_code=status,
                        headers=headers)


def drf_error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Django REST framework's shape, which bossDB uses for authentication and media types."""
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def bad_request(code: int, message: str) -> BossHTTPError:
    return BossHTTPError(400, code, message)


def not_found(message: str, code: int = RESOURCE_NOT_FOUND) -> BossHTTPError:
    return BossHTTPError(404, code, message)


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


#: seconds a 503 for a locked upstream asks clients to wait (a hint: how long another process
#: holds its lock is not known)
BUSY_RETRY_AFTER = 5


def _busy_cause(exc: BaseException) -> RemoteBusyError | None:
    """The RemoteBusyError behind ``exc`` (itself, or the cause of the UpstreamErrors the
    relay wraps it in), if that is what it was."""
    cur: BaseException | None = exc
    for _ in range(8):
        if isinstance(cur, RemoteBusyError):
            return cur
        if not isinstance(cur, UpstreamError):
            return None
        cur = cur.__cause__
    return None


def _channel_of(request: Request) -> str:
    """The words ' of channel c/e/ch' for a request under one (its route's names), ' of
    experiment c/e' under an experiment, else '': which of the relay's channels an upstream
    failure is of, which the upstream's own words do not say (a bossDB or DVID upstream names
    its own server's resources)."""
    p = request.scope.get("path_params") or {}
    names = [str(p[k]) for k in ("c", "e", "ch") if p.get(k)]
    if len(names) == 3:
        return f" of channel {'/'.join(names)}"
    if len(names) == 2 and "ch" not in p:
        return f" of experiment {'/'.join(names)}"
    return ""


def error_response(request: Request, exc: Exception,
                   scrub: Callable[[str, str], str]) -> Response:
    """The boss JSON error of ``exc``, its message passed through ``scrub(message, request
    path)`` (the relay's, which takes the server's paths out)."""
    res = _raw_error_response(request, exc)
    if not res.body:
        return res
    doc = json.loads(bytes(res.body))
    for key in ("message", "detail"):
        if isinstance(doc.get(key), str):
            doc[key] = scrub(doc[key], request.url.path)
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
        return boss_error(502, IO_ERROR, f"corrupt data upstream{_channel_of(request)}: "
                          f"{corrupt} (the stored data does not decode; this is not transient "
                          "and retrying will not help; the relay never serves zeros in its "
                          "place)",
                          headers={CORRUPT_HEADER: CORRUPT_VALUE})
    if isinstance(exc, NotFound | RemoteNotFoundError):
        return boss_error(404, RESOURCE_NOT_FOUND, str(exc))
    busy = _busy_cause(exc)
    if busy is not None:
        # a lock another process holds (a notebook with the HDF5 file open): temporary and
        # not an upstream failure, so 503 with Retry-After (RFC 9110 15.6.4), not 502.
        # Clients that retry 5xx (voxgate's HTTPClient for idempotent requests, CloudFiles)
        # retry 503 as they did 502; intern retries neither; a POST cutout is not retried by
        # voxgate's client either way (it says the server may have done it)
        return boss_error(503, IO_ERROR, f"upstream{_channel_of(request)} is busy: {busy}; "
                          "try again later", headers={"Retry-After": str(BUSY_RETRY_AFTER)})
    if isinstance(exc, UpstreamTimeoutError):
        return boss_error(504, IO_ERROR, f"upstream{_channel_of(request)} timed out: {exc}")
    if isinstance(exc, UpstreamError | RemoteUnavailableError | CorruptChunkError):
        return boss_error(502, IO_ERROR, f"upstream{_channel_of(request)} failed: {exc}")
    if isinstance(exc, AuthenticationError):
        return boss_error(403, MISSING_PERMISSION, f"the upstream refused the credentials: {exc}")
    if isinstance(exc, ReadOnlyError):
        return boss_error(403, MISSING_PERMISSION, str(exc))
    if isinstance(exc, OutOfBoundsError | InvalidRequestError):
        return boss_error(400, 1001, str(exc))
    if isinstance(exc, CapabilityNotSupportedError | MissingDependencyError):
        # what the upstream store cannot do (a write to a TIFF of RGB pages), or not without
        # a package the relay lacks: the request was understood and is not the client's
        # fault, nor transient (501: clients do not retry it; voxgate's HTTP client raises
        # CapabilityNotSupportedError from it)
        return boss_error(501, FUTURE, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, VoxgateError):
        log.warning("request %s %s failed: %s", request.method, request.url.path, exc)
        return boss_error(500, UNHANDLED_EXCEPTION, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, ClientDisconnect):
        # the client left while its body was coming in: nobody to answer, nothing written, no
        # fault of the relay's (it was logged as an unhandled error, with a traceback)
        log.info("client left during its request body: %s %s", request.method,
                 request.url.path)
        return boss_error(400, INVALID_POST_ARGUMENT, "the client disconnected before its "
                          "request body was complete")
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return boss_error(500, UNHANDLED_EXCEPTION, f"internal error ({type(exc).__name__})")
