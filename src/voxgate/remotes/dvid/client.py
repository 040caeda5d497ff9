"""DVID server URLs, the shared pooled clients, and DVID's errors as voxgate errors."""

from __future__ import annotations

import atexit
import os
import re
from typing import Any
from urllib.parse import urlparse

import httpx

from ...errors import (
    InvalidRequestError,
    ReadOnlyError,
    RemoteNotFoundError,
    VoxgateError,
)
from .._http import HTTPClient, SharedClients, json_of, server_answer


class LabelNotFoundError(RemoteNotFoundError):
    """The label (body or supervoxel) has no voxels at this node (DVID answered 404)."""


# -- URLs, clients and errors ---------------------------------------------------------------------
def normalize_server(server: str) -> str:
    """``host:port`` -> ``http://host:port``; an http(s) URL is kept (without a trailing /)."""
    server = server.strip().rstrip("/")
    if not server:
        raise InvalidRequestError("no DVID server given")
    if not server.startswith(("http://", "https://")):
        server = "http://" + server
    if not urlparse(server).netloc:
        raise InvalidRequestError(f"{server!r} names no host")
    return server


def parse_location(location: str) -> tuple[str, str, str]:
    """``[http(s)://]host[:port][/prefix]/UUID/instance`` -> (server URL, node spec, instance)."""
    loc = location.strip()
    explicit = loc.startswith(("http://", "https://"))
    parsed = urlparse(loc if explicit else "http://" + loc)
    parts = [p for p in parsed.path.split("/") if p]
    if not parsed.netloc or len(parts) < 2:
        raise InvalidRequestError(
            f"dvid://{location}: expected dvid://HOST:PORT/UUID/INSTANCE or "
            "dvid://http(s)://HOST[:PORT]/UUID/INSTANCE"
        )
    prefix = "/".join(parts[:-2])
    server = f"{parsed.scheme}://{parsed.netloc}" + (f"/{prefix}" if prefix else "")
    node, instance = parts[-2], parts[-1]
    if not re.fullmatch(r"[0-9a-fA-F]*(:[A-Za-z0-9_.\-]+(~\d+)?)?", node) or node in ("", ":"):
        raise InvalidRequestError(
            f"dvid://{location}: {node!r} is not a UUID, a UUID prefix or 'uuid:branch'"
        )
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", instance):
        raise InvalidRequestError(f"dvid://{location}: {instance!r} is not a data instance name")
    return server, node, instance


_clients = SharedClients()
atexit.register(_clients.close_all)


def _token(token: str | None) -> str:
    return token if token is not None else os.environ.get("VOXGATE_DVID_TOKEN", "")


def client_for(server: str, *, token: str | None = None, timeout: float = 60.0,
               concurrency: int = 8) -> HTTPClient:
    """The shared pooled client for one server and credential."""
    tok = _token(token)
    key = (server, tok, float(timeout), max(concurrency, 16))

    def make() -> HTTPClient:
        headers = {"User-Agent": "voxgate"}
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        return HTTPClient(server, headers=headers, timeout=timeout,
                          max_connections=max(concurrency, 16),
                          unreachable_hint=" (the DVID server)")

    return _clients.get(key, make)


def _translate(exc: InvalidRequestError) -> VoxgateError:
    """DVID answers 400 to almost everything: give each case its voxgate class and a hint."""
    msg = str(exc)
    low = msg.lower()
    if "unlocked node" in low:
        return InvalidRequestError(msg + " -- commit the node first (DVIDRepo.commit)")
    if "locked node" in low:
        return ReadOnlyError(msg + " -- the node is committed; make a child with "
                             "DVIDRepo.branch() or new_version() and write there")
    if "could not find uuid" in low or "uuid is not present" in low:
        return RemoteNotFoundError(msg)
    if "more than one uuid matches" in low:
        return InvalidRequestError(msg + " -- give more characters of the UUID")
    if "invalid data instance name" in low:
        return RemoteNotFoundError(msg + " -- no data instance of that name in the repo")
    if re.search(r"branch .* not found", low):
        return RemoteNotFoundError(msg)
    return exc


def _call(client: HTTPClient, method: str, path: str, *, what: str,
          expect: int | tuple[int, ...] = 200, **kw: Any) -> httpx.Response:
    try:
        return client.request(method, path, expect=expect, what=what, **kw)
    except InvalidRequestError as exc:
        err = _translate(exc)
        if err is exc:
            raise
        raise err from None


def answered(resp: httpx.Response, what: str, kind: type | None = dict) -> Any:
    """The JSON a DVID server answered (a JSON object by default): anything else, or no
    JSON (an HTML page of a proxy, an empty or cut-off body), is a CorruptChunkError naming
    the URL."""
    return json_of(resp, what, kind)


def answered_int(resp: httpx.Response, what: str, key: str) -> int:
    """The integer member ``key`` of the JSON object a DVID server answered."""
    doc = answered(resp, what)
    with server_answer(f"{what}: {resp.request.url} answered"):
        return int(doc[key])
