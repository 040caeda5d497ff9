"""Cutouts: the parsed cutout URL (channel, resolution, box, time, the size limit) and the cutout
and to_black routes."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ...geometry import Box
from ..budget import InflightBudget
from ..cache import CachedRemote
from ..catalog import ChannelEntry
from ..errors import (
    DATATYPE_NOT_SUPPORTED,
    INVALID_CUTOUT_ARGS,
    INVALID_URL,
    MISSING_PERMISSION,
    REQUEST_TOO_LARGE,
    TYPE_ERROR,
    BossHTTPError,
    bad_request,
)
from ..state import Relay
from .codecs import cutout_media, decode_body, encode_cutout, to_stored, wire_dtype
from .records import _short
from .routing import Handler, reads, runner

# ASCII digits only, and few enough that int() never refuses them (Python caps long strings)
_RANGE = re.compile(r"([0-9]{1,18}):([0-9]{1,18})")
_INT = re.compile(r"[0-9]{1,18}")
_ID = re.compile(r"[0-9]{1,25}")  # range-checked after: a uint64 id has at most 20 digits


def _range(text: str, axis: str, url_tail: str) -> tuple[int, int]:
    m = _RANGE.fullmatch(text)
    if not m:
        raise bad_request(INVALID_CUTOUT_ARGS, f"Incorrect cutout arguments {url_tail}: the {axis} "
                          f"range {text!r} must be start:stop with non-negative integers")
    a, b = int(m.group(1)), int(m.group(2))
    if a >= b:
        raise bad_request(INVALID_CUTOUT_ARGS, f"Incorrect cutout arguments {url_tail}: the {axis} "
                          f"range {text} is empty or reversed (start must be below stop)")
    return a, b


def _time(text: str, url_tail: str) -> tuple[int, int]:
    """A time segment: ``t0:t1``, or a single ``t`` meaning ``t:t+1`` (bossDB's set_time)."""
    if ":" in text:
        return _range(text, "t", url_tail)
    if not _INT.fullmatch(text):
        raise bad_request(INVALID_CUTOUT_ARGS, f"Incorrect cutout arguments {url_tail}: the time "
                          f"{text!r} must be a non-negative integer or a start:stop range")
    return int(text), int(text) + 1


def _kind_error(meta_kind: str, what: str) -> BossHTTPError:
    """bossDB's 400 for an annotation-only operation on an image channel
    (bosscore/request.py)."""
    kind = "annotation" if meta_kind == "segmentation" else "image"
    return bad_request(DATATYPE_NOT_SUPPORTED, f"The channel in request has type {kind}. {what}")


def level(relay: Relay, entry: ChannelEntry, levels: int, text: str) -> tuple[int, int]:
    """The channel's level (0 its base) of a URL's resolution, and the resolution: bossDB's
    resolutions run from the channel's ``base_resolution`` to base + levels - 1, and one
    outside is 400 / 1002 in its words (bosscore/request.py validate_resolution)."""
    base = relay.base_resolution(entry)
    if not _INT.fullmatch(text):
        raise bad_request(TYPE_ERROR, f"Invalid resolution {_short(text)}. The resolution has "
                          f"to be an integer within {base} and {base + levels}")
    res = int(text)
    if not base <= res < base + levels:
        # (bossDB's words: the upper bound it names is base_resolution + levels)
        raise bad_request(TYPE_ERROR, f"Invalid resolution {res}. The resolution has to be "
                          f"within {base} and {base + levels}")
    return res - base, res


class _Cutout:
    """A parsed cutout URL: the channel, resolution, box (dataset coords at res) and time.

    Checked in bossDB's order (bosscore/request.py validate_cutout_service and
    validate_ids_service): the resource and permission, the channel type (a GET's ``filter``,
    every ``ids`` request), the time range, the resolution, the ranges; then the size limit,
    which bossDB applies to cutouts (bossspatialdb/views.py) but not to ``ids``."""

    def __init__(self, relay: Relay, request: Request, *, write: bool,
                 service: str = "cutout") -> None:
        p = request.path_params
        self.relay = relay
        self.c, self.e, self.ch = p["c"], p["e"], p["ch"]
        self.token = relay.authorize(request, self.c, write=write)
        entry = relay.channel(self.c, self.e, self.ch)
        self.entry = entry
        self.remote: CachedRemote = relay.remote(entry, self.token)
        meta = self.remote.meta
        tail = "/".join(str(p.get(k, "")) for k in ("res", "x", "y", "z")).strip("/")
        if service == "ids" and meta.kind != "segmentation":
            raise _kind_error(meta.kind, "Can only reserve IDs for annotation channels")
        if service == "cutout" and not write and "filter" in request.query_params and \
                meta.kind != "segmentation":
            raise _kind_error(meta.kind, "Filter is only valid for annotation channels")
        if meta.num_channels > 1:
            # (a bossDB channel holds one value per voxel: intern reshapes a cutout to z, y, x)
            raise bad_request(DATATYPE_NOT_SUPPORTED, f"channel {self.ch} holds "
                              f"{meta.num_channels} values per voxel (its upstream has "
                              f"{meta.num_channels} channels) and a bossDB channel holds one; "
                              "read it through the precomputed dialect: precomputed://http://"
                              f"HOST:PORT/precomputed/{self.c}/{self.e}/{self.ch}")
        self.time: tuple[int, int] | None = None
        if p.get("t"):
            t = _time(p["t"], tail)
            if t != (0, 1):
                raise bad_request(INVALID_URL, f"Invalid time range {p['t']}: this channel has 1 "
                                  "time sample (0:1)")
            self.time = t
        self.res, res = level(relay, entry, len(meta.scales), p["res"])
        x = _range(p["x"], "x", tail)
        y = _range(p["y"], "y", tail)
        z = _range(p["z"], "z", tail)
        self.box = Box((z[0], y[0], x[0]), (z[1], y[1], x[1]))
        frame = relay.frame_at(self.c, self.e, entry, self.res)
        if not frame.contains(self.box):
            raise bad_request(INVALID_CUTOUT_ARGS, f"Incorrect cutout arguments {tail}: the region "
                              f"x {x[0]}:{x[1]}, y {y[0]}:{y[1]}, z {z[0]}:{z[1]} leaves the "
                              f"coordinate frame at resolution {res} (x {frame.start.x}:"
                              f"{frame.stop.x}, y {frame.start.y}:{frame.stop.y}, z "
                              f"{frame.start.z}:{frame.stop.z})")
        #: the dtype of its bodies (uint64 for annotation channels), not always the upstream's
        self.dtype = wire_dtype(meta)
        nbytes = self.box.size * self.dtype.itemsize
        if self.dtype.itemsize == 8:
            nbytes //= 4  # bossDB's rule: annotation cutouts compress well
        limit = relay.config.max_cutout_bytes
        if service == "cutout" and nbytes > limit:
            raise BossHTTPError(413, REQUEST_TOO_LARGE,
                                f"Cutout request is over {_size(limit)} when uncompressed. Reduce "
                                "cutout dimensions.")

    @property
    def shape(self) -> tuple[int, ...]:
        lead = (1,) if self.time is not None else ()
        return lead + tuple(self.box.shape)

    @property
    def nbytes(self) -> int:
        """Its uncompressed bytes (what the admission budget counts: relay.budget)."""
        return math.prod(self.shape) * self.dtype.itemsize

    def read(self) -> np.ndarray:
        bounds = self.remote.meta.scale(self.res).bounds
        inside = self.box.intersect(bounds)
        if inside == self.box:  # only encoded: the cached cell itself when it is one
            return self.remote.read_shared(self.box, self.res).astype(self.dtype, copy=False)
        out = np.zeros(tuple(self.box.shape), dtype=self.dtype)
        if not inside.is_empty():
            out[inside.slices(self.box.start)] = self.remote.read(inside, self.res)
        return out


def _size(n: int) -> str:
    """520 MiB, 2 MiB, 1.5 KiB: bossDB's message names its limit the same way."""
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= k:
            return f"{n / k:.4g} {unit}"
    return f"{n} bytes"


def _read_query(request: Request, cut: _Cutout) -> np.ndarray | None:
    """The ids of a GET's ``?filter=`` (None: no filter), the other query parameters checked:
    ``access-mode`` is cache, no-cache or raw (each reads the same data here), and not sent
    with the deprecated ``no-cache`` (true or false).  ``iso`` is ignored: the relay keeps one
    pyramid per channel, so there is no isotropic one to read (docs/relay.md)."""
    # (boss/utils.py get_access_mode: its checks and messages; the values are case-insensitive)
    q = request.query_params
    if "no-cache" in q and "access-mode" in q:
        raise bad_request(INVALID_CUTOUT_ARGS, "access_mode and no-cache specified  in URL, please "
                          "specify access_mode. no-cache will be deprecated.")
    if "no-cache" in q and q["no-cache"].lower() not in ("true", "false"):
        raise bad_request(INVALID_CUTOUT_ARGS, "Incorrect no-cache value. Must be True or False.")
    if "access-mode" in q and q["access-mode"].lower() not in ("cache", "no-cache", "raw"):
        raise bad_request(INVALID_CUTOUT_ARGS, "Incorrect access_mode, possible values are [raw, "
                          "no-cache, cache]")
    text = q.get("filter")
    if text is None:
        return None
    dt = cut.dtype
    if cut.remote.meta.kind != "segmentation" or not np.issubdtype(dt, np.integer):
        raise _kind_error(cut.remote.meta.kind, "Filter is only valid for annotation channels")
    parts = text.split(",")
    if not all(_ID.fullmatch(p) and int(p) < 2**64 for p in parts):
        raise bad_request(INVALID_CUTOUT_ARGS, f"filter must be object ids separated by commas "
                          f"(integers from 0 to 2**64-1, e.g. filter=1,7,9), got {_short(text)}")
    top = int(np.iinfo(dt).max)  # (an id above the channel's dtype is in no voxel)
    return np.array(sorted({int(p) for p in parts if int(p) <= top}), dtype=dt)


def _encoded(cut: _Cutout, media: str, etag: str,
             keep: np.ndarray | None = None) -> tuple[bytes, str]:
    """Read and encode a cutout in one thread hop (only the ids in ``keep`` when it is
    given: every other voxel reads 0), and keep the response for its ETag."""
    arr = cut.relay.read_live(cut.remote, cut.read)
    if keep is not None:  # (a new array: the one read may be the cached cell itself)
        arr = np.where(np.isin(arr, keep), arr, arr.dtype.type(0))
    if cut.time is not None:
        arr = arr[np.newaxis]
    body, media = encode_cutout(arr, media)
    cut.remote.keep_response(etag, body, media)
    return body, media


#: the pieces a :class:`_HeldResponse` hands its body to the connection in
_PIECE = 2**20


async def _client_gone(request: Request) -> None:
    """Returns once the client of a GET (a request without a body to read) has gone: ASGI's
    receive answers ``http.disconnect`` then (its one ``http.request`` message taken first)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _admitted_unless_gone(budget: InflightBudget, nbytes: int,
                                request: Request) -> int | None:
    """:meth:`InflightBudget.acquire` for a GET, which leaves the queue as soon as its client
    goes (None): it waited until admitted or refused (up to 30 s), holding its place in the
    queue and any smaller requests behind it that would fit, for nobody.  (A POST's client
    cannot be watched so: it would take its body's messages, not read until admitted.)"""
    admitting = asyncio.ensure_future(budget.acquire(nbytes))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait((admitting, gone), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # (cancelled: the reservation, if granted meanwhile, given back)
        admitting.cancel()
        raise
    finally:
        gone.cancel()
    if admitting.done():
        return admitting.result()  # (the 503 raised here when refused)
    admitting.cancel()  # (acquire gives back a reservation granted as it was cancelled)
    with contextlib.suppress(asyncio.CancelledError):
        await admitting
    return None


class _HeldResponse(Response):
    """A response that keeps as much of its request's reservation of the admission budget as
    its body's bytes until the client has taken all but the last piece of it (or the sending
    failed), the rest given back at once: the read and the encoding are done, the body is the
    working memory left."""

    def __init__(self, *args: Any, budget: InflightBudget, held: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._budget, self._held = budget, held

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = memoryview(self.body)
        keep = min(self._held, len(body))
        self._budget.release(self._held - keep)
        try:
            # in pieces: uvicorn waits, before handing it each, until the client has taken
            # what the connection buffers.  Handed over whole, the body was "sent" as soon as
            # it was buffered, and the reservation came back while a slow client had most of
            # it still to take: as many bodies held, past the budget, as slow clients
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            for at in range(0, len(body), _PIECE):
                await send({"type": "http.response.body", "body": body[at:at + _PIECE],
                            "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            self._budget.release(keep)


#: what a GET's first thread hop found: the body and media type (None: 304), or, for a
#: large cutout to be read, its uncompressed bytes (it reserves them before it reads)
_Found = tuple[bytes, str] | None | int


def cutout_handlers(relay: Relay) -> dict[str, Handler]:
    """The cutout and to_black endpoints, bound to ``relay``."""
    run = runner(relay)
    budget = relay.inflight

    # -- cutouts --------------------------------------------------------------------------------
    async def cutout(request: Request) -> Response:
        if reads(request):
            # one thread hop for the whole GET: parsing, the ETag, and on a miss the read and
            # the encoding (a second hop cost a cold request ~0.25 ms: benchmarks/README.md).
            # A large cutout to be read reserves its working memory first (relay.budget):
            # at once when it fits and nobody waits, in the same hop; else it stops before
            # the read, waits on the event loop (never holding one of the 32 threads), and
            # answers from the start in a second hop
            # (set by the thread, not returned with its answer: a request cancelled while
            # its thread runs gets no answer, only CancelledError once the thread is done,
            # and must still give back what the thread took)
            taken = [0]

            def answer(admitted: bool) -> tuple[_Found, dict[str, str]]:
                cut = _Cutout(relay, request, write=False)
                keep = _read_query(request, cut)
                # the ETag comes from the write generation, before any data is read: a
                # conditional GET whose ETag is current is answered without reading
                # (docs/relay.md, "Behind an HTTP cache")
                version = relay.generation(cut.entry, cut.remote)
                media = cutout_media(request.headers.get("accept", "application/blosc"))
                etag = relay.etag(cut.remote, version, "cutout", cut.res, cut.box, cut.time,
                                  media, *([] if keep is None else ["filter", keep.tolist()]),
                                  # (bodies in another dtype than the upstream's: uint64 ids)
                                  *([] if cut.dtype == cut.remote.meta.dtype
                                    else [cut.dtype.name]))
                headers = {**relay.cache_headers(cut.entry, etag), "Vary": "Accept"}
                if relay.not_modified(request, etag):
                    return None, headers
                # an encoded response kept under this ETag is these bytes (the generation in
                # it was taken before any data was read: see relay.cache.responses)
                found = cut.remote.response(etag)
                if found is None and not admitted:
                    now = budget.try_acquire(cut.nbytes)
                    if now is None:
                        return cut.nbytes, headers
                    taken[0] = now  # (given back below, or by the response once sent)
                return found or _encoded(cut, media, etag, keep), headers

            try:
                found, headers = await run(lambda: answer(False))
            except BaseException:
                budget.release(taken[0])
                raise
            held = taken[0]
            if isinstance(found, int):
                got = await _admitted_unless_gone(budget, found, request)
                held = got or 0
                if got is None or await request.is_disconnected():
                    # the client left while it waited (up to 30 s): no read and no encoding
                    # of up to max_cutout_bytes for nobody, the budget free for the next
                    budget.release(held)
                    return Response(status_code=499)  # (nginx's "client closed request")
                try:
                    found, headers = await run(lambda: answer(True))
                except BaseException:
                    budget.release(held)
                    raise
            if found is None or isinstance(found, int):
                budget.release(held)
                return Response(status_code=304, headers=headers)
            body, media = found
            if held:
                return _HeldResponse(body, media_type=media, headers=headers, budget=budget,
                                     held=held)
            return Response(body, media_type=media, headers=headers)
        cut = await run(lambda: _Cutout(relay, request, write=True))
        if not cut.entry.writable:
            raise BossHTTPError(403, MISSING_PERMISSION,
                                f"channel {'/'.join(cut.entry.key)} is read-only on this relay")
        # reserved before the body is read: the body, the array decoded from it and the write
        # (a Content-Length the region cannot take refused first: it waited for the budget)
        relay.check_length(request, cut.nbytes)
        held = await budget.acquire(cut.nbytes)
        try:
            body = await relay.read_body(request, cut.nbytes)
            ctype = request.headers.get("content-type", "")
            arr = await run(lambda: decode_body(body, ctype, cut.dtype, cut.shape))
            data = to_stored(arr[0] if cut.time is not None else arr, cut.remote.meta)
            await run(lambda: relay.write(cut.remote, cut.box, data, cut.res))
        finally:
            budget.release(held)
        return Response(status_code=201)

    async def to_black(request: Request) -> Response:
        if request.method != "PUT":  # (routed here whatever the method: see boss_routes)
            raise BossHTTPError(405, 0, f'Method "{request.method}" not allowed.', drf=True,
                                headers={"Allow": "PUT"})
        cut = await run(lambda: _Cutout(relay, request, write=True))
        held = await budget.acquire(cut.nbytes)
        try:
            await run(lambda: relay.write(cut.remote, cut.box, np.zeros(
                tuple(cut.box.shape), dtype=cut.remote.meta.dtype), cut.res))
        finally:
            budget.release(held)
        return Response(status_code=200)

    return {"cutout": cutout, "to_black": to_black}
