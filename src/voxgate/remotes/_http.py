"""One pooled HTTP client per server: timeouts, retries with backoff, bounded concurrency.

Used by the REST Remotes (bossDB, DVID).  Connection errors, timeouts, a connection closed
mid-body and 5xx answers are retried with exponential backoff; 4xx answers are not (they will
not change) and become voxgate errors of the right class, nor is a host name that does not
resolve (a typo or no DNS: asking again only waits).  Connection errors name the server.
A 503 with ``Retry-After`` (a voxgate relay whose HDF5 file another process holds) is
RemoteBusyError; the wait it asks sets the next try's delay, capped at the longest backoff.
Tokens are sent in headers only and never appear in errors, logs or reprs.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.request
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

import httpx
import urllib3

from ..errors import (
    AuthenticationError,
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    MissingChunkError,
    RemoteBusyError,
    RemoteNotFoundError,
    RemoteUnavailableError,
    VoxgateError,
    redact,
)
from ..lru import make_newest

__all__ = ["HTTPClient", "RequestTooLargeError", "ServerError", "json_of", "server_answer"]


class ServerError(VoxgateError):
    """A 4xx answer that maps to no more specific voxgate error."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RequestTooLargeError(InvalidRequestError):
    """The server refused a request as too large (HTTP 413)."""


_RETRY_STATUS = frozenset({500, 502, 503, 504})
#: methods sent again after a failure by default (RFC 9110 section 9.2.2)
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: a large body is read in pieces of this size (HTTPClient._bulk_into)
_PIECE = 1 << 20


def _close_pools(pools: list[Any]) -> None:
    """Close an :class:`HTTPClient`'s httpx client and urllib3 pool (idempotent)."""
    for pool in pools:
        if isinstance(pool, httpx.Client):
            pool.close()
        else:
            pool.clear()


#: the clients :class:`SharedClients` keeps, the ones used last
CLIENTS_KEPT = 64


class SharedClients:
    """The pooled clients of one kind of Remote by server and credential, shared by its
    Remotes: the :data:`CLIENTS_KEPT` used last.  A relay forwarding each of its clients'
    tokens to its upstream made one per token and kept every one (rotating tokens: without
    end).  One let go is not closed: the Remotes using it go on, and it closes when the last
    of them lets it go (:class:`HTTPClient` closes itself when collected)."""

    def __init__(self, kept: int = CLIENTS_KEPT) -> None:
        self.kept = kept
        self._items: OrderedDict[Hashable, HTTPClient] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], HTTPClient]) -> HTTPClient:
        """The client for ``key``, made by ``make()`` when there is none."""
        with self._lock:
            client = self._items.get(key)
            if client is None:
                client = self._items[key] = make()
            make_newest(self._items, key, limit=self.kept)
            return client

    def close_all(self) -> None:
        with self._lock:
            for client in self._items.values():
                client.close()
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class HTTPClient:
    """A thread-safe pooled client for one base URL and one credential."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.1,
        max_connections: int = 16,
        unreachable_hint: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.host = urlparse(self.base_url).netloc or self.base_url
        #: said after the host when it cannot be reached (e.g. where the host came from)
        self.unreachable_hint = unreachable_hint
        self.retries = retries
        self.backoff = backoff
        self._headers = dict(headers or {})
        self._timeout = timeout
        self._max_connections = max_connections
        self._bulk: urllib3.PoolManager | None = None
        self._bulk_lock = threading.Lock()
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=dict(headers or {}),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
            follow_redirects=True,
            verify=_ssl_context(),
        )
        # (its pools, closed when it is collected: a client SharedClients let go closes once
        # the last Remote using it lets it go, its sockets shut, not left to the collector)
        self._pools: list[Any] = [self._client]
        weakref.finalize(self, _close_pools, self._pools)

    def __repr__(self) -> str:  # never shows the headers (they hold the token)
        return redact(f"<HTTPClient {self.base_url}>")

    def close(self) -> None:
        _close_pools(self._pools)

    def request(
        self,
        method: str,
        path: str,
        *,
        expect: int | tuple[int, ...] = 200,
        what: str = "",
        into: bytearray | None = None,
        idempotent: bool | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request, retrying transient failures; return the response of status ``expect``.

        With ``into``, a successful body is read straight into that buffer (resized to the
        body's length) instead of ``response.content``: big bodies are held once, not twice.

        ``idempotent``: whether sending the request twice has the effect of sending it once
        (default: GET, HEAD, PUT, DELETE and OPTIONS are, POST and PATCH are not).  One that
        is not (a DVID split or merge, a new label, an id reservation) is sent again only
        when no connection was made; after a 5xx, a timeout or a broken connection it fails
        at once, saying the server may have done it (sent again, a split that had run would
        split off nothing and return an empty label).
        """
        if idempotent is None:
            idempotent = method.upper() in _IDEMPOTENT
        expected = (expect,) if isinstance(expect, int) else expect
        what = what or f"{method} {self.base_url}{path.split('?')[0]}"
        last: str = ""
        # how far the last attempt got: "" (no connection), "connected" (then timed out or the
        # connection broke) or "answered" (a 5xx)
        reached = ""
        # whether the last answer was a 503 with Retry-After, and the seconds it asked to wait
        busy, wait = False, None  # type: tuple[bool, float | None]
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1) * (1 + random.random() * 0.25)
                if wait is not None:  # (never minutes: at most the schedule's longest wait)
                    delay = min(wait, self.backoff * 2 ** max(self.retries - 1, 0))
                time.sleep(delay)
            busy, wait = False, None
            try:
                if into is None:
                    resp = self._client.request(method, path, **kwargs)
                    resp.read()  # a connection closed mid-body fails here, in the retry loop
                else:
                    resp = self._stream_into(method, path, into, kwargs)
            except httpx.TimeoutException as exc:
                last = f"timed out ({type(exc).__name__})"
                reached = "" if isinstance(exc, httpx.ConnectTimeout) else "connected"
                if reached and not idempotent:
                    raise _not_repeated(what, self.host, f"did not answer in full: {last}"
                                        ) from None
                continue
            except httpx.TransportError as exc:
                if _name_not_resolved(exc):
                    raise RemoteUnavailableError(
                        f"{what}: could not reach {self.host}{self.unreachable_hint}: the host "
                        f"name does not resolve ({exc}); not retried: check the name, or the "
                        "network's DNS"
                    ) from None
                last = f"{type(exc).__name__}: {exc}"
                reached = "" if isinstance(exc, httpx.ConnectError) else "connected"
                if reached and not idempotent:
                    raise _not_repeated(what, self.host, f"did not answer in full: {last}"
                                        ) from None
                continue
            if resp.status_code in expected:
                return resp
            if resp.headers.get("x-voxgate-error") == "corrupt-data":
                # a voxgate relay read data that does not decode: reading it again will not
                # help, so it is not retried
                raise CorruptChunkError(f"{what}: HTTP {resp.status_code}: {_snippet(resp)}",
                                        chunk=what)
            if resp.status_code in _RETRY_STATUS:
                last, reached = f"HTTP {resp.status_code}: {_snippet(resp)}", "answered"
                busy, wait = _retry_after(resp)
                if busy:
                    last += f" (busy; Retry-After: {resp.headers['retry-after']})"
                if not idempotent:
                    raise _not_repeated(what, self.host, f"answered {last}", busy)
                continue
            raise _error(resp, what)
        if reached == "answered":
            raise (RemoteBusyError if busy else RemoteUnavailableError)(
                f"{what} failed after {self.retries + 1} attempts: {self.host} answered {last}"
            )
        if reached == "connected":
            raise RemoteUnavailableError(
                f"{what} failed after {self.retries + 1} attempts: {self.host} did not answer "
                f"in full: {last}"
            )
        raise RemoteUnavailableError(
            f"{what} failed after {self.retries + 1} attempts: could not reach "
            f"{self.host}{self.unreachable_hint}: {last}"
        )


    def _stream_into(self, method: str, path: str, into: bytearray,
                     kwargs: dict[str, Any]) -> httpx.Response:
        if set(kwargs) <= {"headers"} and not _proxied(self.base_url):
            return self._bulk_into(method, path, into, kwargs.get("headers") or {})
        with self._client.stream(method, path, **kwargs) as resp:
            if resp.status_code >= 300:
                resp.read()
                return resp
            length = resp.headers.get("content-length")
            encoded = resp.headers.get("content-encoding", "identity").lower() != "identity"
            if length is not None and length.isdigit() and not encoded:
                n = int(length)
                if len(into) < n:
                    into.extend(bytes(n - len(into)))
                pos = 0
                with memoryview(into) as view:
                    for part in resp.iter_raw():
                        end = pos + len(part)
                        if end > n:
                            raise httpx.RemoteProtocolError("body longer than its Content-Length")
                        view[pos:end] = part
                        pos = end
                if pos != n:
                    raise httpx.RemoteProtocolError(f"body ended at {pos} of {n} bytes")
                del into[n:]
            else:
                into[:] = resp.read()
            return resp


    def _bulk_pool(self) -> urllib3.PoolManager:
        with self._bulk_lock:
            if self._bulk is None:
                self._bulk = urllib3.PoolManager(
                    num_pools=4, maxsize=self._max_connections, block=True,
                    ssl_context=_ssl_context())
                self._pools.append(self._bulk)
            return self._bulk

    def _bulk_into(self, method: str, path: str, into: bytearray,
                   headers: Mapping[str, str]) -> httpx.Response:
        """A request whose (large) body is read straight into ``into`` through urllib3: it
        takes a body at memory speed, where httpx spends about 6x the CPU on receiving one
        (256 MiB of cutouts: 0.57 s of the client's CPU through httpx, 0.10 s through urllib3
        or a bare socket, the whole of voxgate's part of a ``bossdb://`` read).  Failures
        are raised as the httpx errors :meth:`request` retries; an answer other than 2xx
        comes back as an httpx.Response holding its body."""
        url = self.base_url + path
        request = httpx.Request(method, url)
        try:
            resp = self._bulk_pool().urlopen(
                method, url, headers={**self._headers, **headers}, preload_content=False,
                decode_content=False, redirect=True,
                retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0,
                                      redirect=5, raise_on_redirect=True),
                timeout=urllib3.Timeout(connect=min(self._timeout, 10.0), read=self._timeout))
        except urllib3.exceptions.HTTPError as exc:
            raise _as_httpx(exc, request) from exc
        try:
            pairs = list(resp.headers.items())
            if resp.status >= 300:
                return httpx.Response(resp.status, headers=pairs, content=resp.read(),
                                      request=request)
            length = resp.headers.get("content-length")
            encoded = resp.headers.get("content-encoding", "identity").lower() != "identity"
            if length is None or not length.isdigit() or encoded:
                # (a relay always sends a length and no content coding: this is the rare
                # server that does not, and httpx decodes what it sent)
                data = httpx.Response(resp.status, headers=pairs, content=resp.read(),
                                      request=request).content
                into[:] = data
                return httpx.Response(resp.status, headers=pairs, request=request)
            n = int(length)
            if len(into) < n:
                into.extend(bytes(n - len(into)))
            pos = 0
            with memoryview(into) as view:
                while pos < n:
                    # (in pieces: urllib3 reads each into a temporary of the piece's size)
                    got = resp.readinto(view[pos:min(n, pos + _PIECE)])
                    if not got:
                        break
                    pos += got
            if pos != n:
                raise httpx.RemoteProtocolError(f"body ended at {pos} of {n} bytes",
                                                request=request)
            del into[n:]
            return httpx.Response(resp.status, headers=pairs, request=request)
        except urllib3.exceptions.HTTPError as exc:
            raise _as_httpx(exc, request) from exc
        finally:
            resp.release_conn()


def json_of(resp: httpx.Response, what: str, kind: type | None = None) -> Any:
    """The JSON document a server answered (of type ``kind`` when given: dict, list).

    An answer that is no JSON (a proxy's or a login page's HTML sent with status 200, an
    empty or cut-off body) or JSON of another type is a CorruptChunkError naming the URL
    asked and what came back, never a raw JSONDecodeError or a TypeError further on."""
    try:
        url = redact(str(resp.request.url))
    except RuntimeError:  # (a response made without a request)
        url = "the server"
    try:
        doc = json.loads(resp.content)
    except ValueError as exc:  # (UnicodeDecodeError too)
        raise CorruptChunkError(
            f"{what}: {url} answered HTTP {resp.status_code} with {_described(resp)}, not "
            f"the JSON expected ({exc})", chunk=url) from None
    if kind is not None and not isinstance(doc, kind):
        want = _WANTED.get(kind, kind.__name__)
        got = "null" if doc is None else f"a JSON {_JSON_TYPES.get(type(doc), 'value')}"
        raise CorruptChunkError(
            f"{what}: {url} answered {got} ({_shown(resp.content)}) where {want} was expected",
            chunk=url)
    return doc


_WANTED: dict[type, str] = {dict: "a JSON object", list: "a JSON list"}
_JSON_TYPES: dict[type, str] = {dict: "object", list: "list", str: "string", int: "number",
                                float: "number", bool: "boolean"}


def server_answer(what: str) -> _ServerAnswer:
    """A context (reusable) around code that reads the members of a server's JSON answers:
    a member that is missing or of the wrong type (KeyError, TypeError, ValueError, ...)
    becomes a CorruptChunkError that says ``what`` (name the URL in it) and what was wrong."""
    return _ServerAnswer(what)


class _ServerAnswer:
    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # (returns None: the exception, when not replaced, goes on)
        if exc is None or isinstance(exc, VoxgateError):
            return
        if isinstance(exc, KeyError):
            raise CorruptChunkError(f"{self.what}: the member {exc.args[0]!r} is missing"
                                    ) from None
        if isinstance(exc, (TypeError, ValueError, AttributeError, IndexError)):
            raise CorruptChunkError(f"{self.what}: {type(exc).__name__}: {exc}") from None


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _described(resp: httpx.Response) -> str:
    """What a body that should have been JSON is, in a few words."""
    body = resp.content
    if not body:
        return "an empty body"
    ctype = resp.headers.get("content-type", "").split(";")[0].strip() or "no Content-Type"
    if "html" in ctype or body.lstrip()[:1] == b"<":
        title = _TITLE.search(body[:4096])
        named = f" titled {title.group(1).decode(errors='replace').strip()[:80]!r}" if title else ""
        return f"an HTML page{named} ({len(body)} bytes, {ctype})"
    return f"{len(body)} bytes of {ctype}: {_shown(body)}"


def _shown(body: bytes) -> str:
    """The start of a body, for an error message."""
    text = body[:80].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(body) > 80 else "")


def _proxied(url: str) -> bool:
    """Whether a proxy of the environment applies to ``url`` (httpx takes those; the urllib3
    path of :meth:`HTTPClient._bulk_into` does not, so such requests stay with httpx)."""
    parsed = urlparse(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parsed.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parsed.hostname or "")


def _ssl_context() -> ssl.SSLContext:
    """The certificates httpx trusts: SSL_CERT_FILE / SSL_CERT_DIR when set, else certifi's.
    One context per value of those, shared by every client (an SSL context is safe to share
    between threads): each client building its own loaded the CA bundle again, about 40 ms
    per bossdb:// or dvid:// volume opened."""
    return _ssl_context_for(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _ssl_context_for(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    import certifi

    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    return ssl.create_default_context(cafile=certifi.where())


def _as_httpx(exc: urllib3.exceptions.HTTPError, request: httpx.Request) -> httpx.HTTPError:
    """A urllib3 failure as the httpx error of the same kind (what the retry loop knows).
    Raised ``from`` the urllib3 error, whose causes lead to a socket.gaierror when a name
    does not resolve (:func:`_name_not_resolved` follows them)."""
    text = str(exc)
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return httpx.ConnectTimeout(text, request=request)
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return httpx.ReadTimeout(text, request=request)
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        inner = exc.reason
        if isinstance(inner, urllib3.exceptions.HTTPError) and inner is not exc:
            return _as_httpx(inner, request)
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return httpx.ConnectError(text, request=request)
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return httpx.ReadTimeout(text, request=request)
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return httpx.RemoteProtocolError(text, request=request)
    return httpx.ReadError(text, request=request)


def _name_not_resolved(exc: BaseException) -> bool:
    """Whether a transport error comes from a host name lookup that failed (socket.gaierror,
    which httpx wraps twice)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, socket.gaierror):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retry_after(resp: httpx.Response) -> tuple[bool, float | None]:
    """Whether ``resp`` is a 503 "busy, try again later" (it has ``Retry-After``), and the
    seconds it asks to wait when it says them as a number (not as a date)."""
    if resp.status_code != 503 or "retry-after" not in resp.headers:
        return False, None
    value = resp.headers["retry-after"].strip()
    return True, float(value) if value.isdigit() else None


def _not_repeated(what: str, host: str, how: str, busy: bool = False
                  ) -> RemoteUnavailableError:
    """The failure of a request that is not idempotent, which is not sent again."""
    return (RemoteBusyError if busy else RemoteUnavailableError)(
        f"{what} failed: {host} {how}; not sent again, since doing it twice is not doing it "
        "once: the server may or may not have done it, so check its state before repeating it")


def _snippet(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(data, dict) and isinstance(data.get("message") or data.get("detail"), str):
        # (the server's own explanation, kept whole up to a bound: a relay's names the channel,
        # the cause and what to do, and was cut mid-word at 300 characters)
        return str(data.get("message") or data.get("detail"))[:2000]
    return str(data)[:300]


def _missing(resp: httpx.Response, msg: str) -> MissingChunkError:
    """A voxgate relay's 404 for chunks absent from a missing="error" upstream.

    Its ``X-Voxgate-Missing`` header is ``scale=K;total=N;chunks=z,y,x z,y,x ...`` (the first
    chunks); a header that does not parse still gives the error, without the chunk list.
    """
    fields = dict(p.partition("=")[::2] for p in resp.headers.get("x-voxgate-missing", "")
                  .split(";"))
    try:
        chunks = [tuple(int(v) for v in c.split(",")) for c in fields.get("chunks", "").split()]
        scale, total = int(fields.get("scale", 0)), int(fields.get("total", len(chunks)))
    except ValueError:
        chunks, scale, total = [], 0, 0
    return MissingChunkError(msg, chunks=chunks, scale=scale, total=total)


def _error(resp: httpx.Response, what: str) -> VoxgateError:
    status = resp.status_code
    msg = f"{what}: HTTP {status}: {_snippet(resp)}"
    if status == 401:
        return AuthenticationError(msg + " (check the token)")
    if status == 403:
        return AuthenticationError(msg)
    if status == 404 and resp.headers.get("x-voxgate-error") == "missing-data":
        return _missing(resp, msg)
    if status == 404:
        return RemoteNotFoundError(msg)
    if status == 413:
        return RequestTooLargeError(msg)
    if status in (400, 409, 415, 422):
        return InvalidRequestError(msg)
    if status == 501:  # (what the server, or a relay's upstream store, cannot do)
        return CapabilityNotSupportedError(msg)
    return ServerError(msg, status)
