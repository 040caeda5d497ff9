"""The Neuroglancer precomputed dialect over HTTP: ``/precomputed/{c}/{e}/{ch}/info`` and chunks.

Every channel the relay serves is also a precomputed layer: one scale per upstream scale (keys
``s0``, ``s1``, ...), chunk sizes equal to the relay's cache cells (so one chunk request is one
cache lookup), ``raw`` chunks for images and ``compressed_segmentation`` for uint32/uint64
segmentations, gzip when the client accepts it, CORS open so Neuroglancer in a browser can load
it.

A channel whose upstream is a precomputed layer also serves the files its info names (meshes,
skeletons, segment properties, annotation layers beside it): see :mod:`.layer_files`.
"""

from __future__ import annotations

import gzip
import json
import re
from typing import Any

import numpy as np
from anyio import to_thread
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import MissingChunkError
from ..formats.precomputed_chunks import encode_chunk
from ..formats.precomputed_info import ANCHOR_KEY
from ..geometry import Box, VoxelSize
from ..storage import length_unit_nm
from .cache import CachedRemote
from .catalog import ChannelEntry
from .errors import INVALID_STATE, BossHTTPError
from .layer_files import (
    Conditions,
    LayerFiles,
    check_file_path,
    not_served,
    upstream_layer,
)
from .state import Relay

__all__ = ["precomputed_info", "precomputed_routes"]

#: matched whole (no trailing newline), ASCII digits few enough that int() always takes them;
#: bounds are negative where a voxel_offset is (``-7-30`` is [-7, 30), ``-30--20`` [-30, -20)),
#: as Neuroglancer, tensorstore and CloudVolume name those chunks
_INT = r"(-?[0-9]{1,18})"
_CHUNK = re.compile("_".join([f"{_INT}-{_INT}"] * 3))
_CSEG_BLOCK = (8, 8, 8)


#: dtypes the precomputed format lacks, served as the nearest it has (clients size chunks by the
#: info's data_type, so chunk bytes must be converted, not just relabelled)
_NEAREST: dict[str, np.dtype[Any]] = {"int64": np.dtype("uint64"), "float64": np.dtype("float32")}


def _served_dtype(remote: CachedRemote) -> np.dtype[Any]:
    return _NEAREST.get(remote.meta.dtype.name, remote.meta.dtype)


def _chunk_name(box: Box) -> str:
    return "_".join(f"{a}-{b}" for a, b in zip(box.start.xyz(), box.stop.xyz(), strict=True))


def _encoding(remote: CachedRemote) -> str:
    meta = remote.meta
    if meta.kind == "segmentation" and meta.dtype.name in ("uint32", "uint64"):
        return "compressed_segmentation"
    return "raw"


def _resolution_nm(voxel_size: VoxelSize) -> list[float]:
    """x, y, z in nanometres, the unit a precomputed info's resolution is always in (an
    upstream in micrometres, e.g. an N5, TIFF or in-memory volume, keeps its unit in the meta,
    spelled as its writer gave it: ``micron``, ``μm``, ``micrometers``, ``Å``...).  A unit
    voxgate does not know (``pixel``, none) counts as nm, as the readers do."""
    factor = length_unit_nm(voxel_size.unit) or 1.0
    return [float(v) * factor for v in voxel_size.xyz()]


def precomputed_info(remote: CachedRemote) -> dict[str, Any]:
    meta = remote.meta
    encoding = _encoding(remote)
    scales = []
    for s in meta.scales:
        scale: dict[str, Any] = {
            "key": f"s{s.index}",
            "size": list(s.shape.xyz()),
            "resolution": _resolution_nm(s.voxel_size),
            "voxel_offset": list(s.offset.xyz()),
            "chunk_sizes": [list(remote.grid(s.index).xyz())],
            "encoding": encoding,
        }
        if encoding == "compressed_segmentation":
            scale["compressed_segmentation_block_size"] = list(_CSEG_BLOCK)
        scales.append(scale)
    doc: dict[str, Any] = {
        "@type": "neuroglancer_multiscale_volume",
        "type": "segmentation" if meta.kind == "segmentation" else "image",
        "data_type": _served_dtype(remote).name,
        "num_channels": meta.num_channels,
        "scales": scales,
    }
    if remote.pyramid_anchor == "origin":
        # the format cannot say where coarser voxels lie; without this a voxgate reader takes
        # blocks from the first voxel, and a copy to OME-Zarr placed the coarse scales of a
        # channel at an odd offset half a coarse voxel from where the bossDB dialect puts them
        doc[ANCHOR_KEY] = "origin"
    return doc


def _partly_absent(remote: CachedRemote, scale: int, box: Box, exc: MissingChunkError,
                   name: str) -> None:
    """Raise 409 when the upstream chunks absent from ``box`` (a served chunk) are not all of
    those it touches.  A 404 says "this chunk is absent", which Neuroglancer and tensorstore
    show as the fill value: right for an absent chunk, wrong for the data beside it."""
    chunks = remote.upstream.meta.scale(scale).chunks
    anchor = remote.grid_bounds(scale).start  # (the upstream's chunks lie on its own grid)
    touched = 1
    for lo, hi, a, c in zip(box.start, box.stop, anchor, chunks, strict=True):
        touched *= (hi - 1 - a) // c - (lo - a) // c + 1
    if exc.scale == scale and exc.total >= touched:
        return
    raise BossHTTPError(
        409, INVALID_STATE, f"chunk {name} is partly absent upstream: {exc.total} of the {touched} "
        f"upstream chunks it covers are absent and the channel's upstream is configured with "
        f"missing = \"error\"; a 404 would make clients show the data beside them as the fill "
        "value.  Read the region through the bossDB dialect to see which chunks are absent")


def _accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (``gzip;q=0`` refuses it)."""
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() not in ("gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        return q > 0
    return False


def precomputed_routes(relay: Relay) -> list[Route]:
    files = LayerFiles()

    async def open_entry(request: Request) -> tuple[ChannelEntry, CachedRemote]:
        """The channel and its Remote, opened off the event loop (a slow upstream must not
        stall every other request while it opens)."""
        p = request.path_params
        relay.authorize(request, p["c"], write=False)
        entry = relay.channel(p["c"], p["e"], p["ch"])
        token = relay.token(request)
        remote = await to_thread.run_sync(lambda: relay.remote(entry, token),
                                          limiter=relay.limiter)
        return entry, remote

    async def open_remote(request: Request) -> CachedRemote:
        return (await open_entry(request))[1]

    async def info(request: Request) -> Response:
        remote = await open_remote(request)
        doc = precomputed_info(remote)
        location = upstream_layer(remote.url)
        if location is not None:  # its meshes, skeletons, ... as the upstream's info names them
            extra = remote.meta.extra
            doc.update(await to_thread.run_sync(lambda: files.kept_keys(location, extra),
                                                limiter=relay.limiter))
        body = json.dumps(doc).encode()
        return Response(body, media_type="application/json",
                        headers={"Cache-Control": "no-cache"})

    async def chunk(request: Request) -> Response:
        p = request.path_params
        entry, remote = await open_entry(request)
        key, name = p["key"], p["chunk"]
        # exactly the keys the info lists ("s01" or "s-1" are not keys, even if int() takes them)
        keys = [f"s{s.index}" for s in remote.meta.scales]
        if key not in keys:
            answer = await serve_file(request, remote, f"{key}/{name}")
            if answer is not None:
                return answer
            raise BossHTTPError(404, 4000, f"no scale {key!r} in this layer; its scales are "
                                f"{', '.join(keys)}{await file_dirs_hint(remote)}")
        scale = keys.index(key)
        m = _CHUNK.fullmatch(name)
        if not m:
            raise BossHTTPError(400, 1001, f"chunk name {name!r} is not x0-x1_y0-y1_z0-z1 "
                                "(integers, x first)")
        x0, x1, y0, y1, z0, z1 = (int(v) for v in m.groups())
        if not (x0 < x1 and y0 < y1 and z0 < z1):
            raise BossHTTPError(400, 1001, f"chunk {name} is empty")
        box = Box((z0, y0, x0), (z1, y1, x1))
        bounds = remote.meta.scale(scale).bounds
        if not bounds.contains(box):
            raise BossHTTPError(404, 4000, f"chunk {name} is outside scale {key}, whose bounds are "
                                f"{_chunk_name(bounds)}")
        # only chunks of the grid the info announces: anything else would let one request read
        # an arbitrarily large region into memory (the whole dataset in one "chunk").  Chunks
        # start at the voxel_offset, as the format has them; the cells they are read from lie
        # on the upstream's own grid (a DVID volume at an offset on no block line: each chunk
        # is read from the up to 8 cells it covers, so each DVID block is read once)
        grid = remote.grid(scale)
        idx = [(a - o) // g for a, o, g in zip(box.start, bounds.start, grid, strict=True)]
        start = [o + i * g for o, i, g in zip(bounds.start, idx, grid, strict=True)]
        cell = Box(start, [a + g for a, g in zip(start, grid, strict=True)]).intersect(bounds)
        if box != cell:
            raise BossHTTPError(400, 1001, f"chunk {name} is not a chunk of scale {key}: chunks "
                                f"are {'x'.join(map(str, grid.xyz()))} voxels (x, y, z) from the "
                                f"voxel_offset, clipped at the far edges; the chunk holding its "
                                f"first voxel is {_chunk_name(cell)}")
        encoding = _encoding(remote)
        served = _served_dtype(remote)

        use_gzip = _accepts_gzip(request.headers.get("accept-encoding", ""))
        # the ETag comes from the write generation, before any data is read (docs/relay.md)
        version = await to_thread.run_sync(lambda: relay.generation(entry, remote),
                                           limiter=relay.limiter)
        etag = relay.etag(remote, version, "chunk", scale, box, encoding, served.name,
                          "gzip" if use_gzip else "identity")
        headers = {**relay.cache_headers(entry, etag), "Vary": "Accept-Encoding"}
        if use_gzip:
            headers["Content-Encoding"] = "gzip"
        if relay.not_modified(request, etag):
            return Response(status_code=304, headers=headers)

        media = "application/octet-stream"

        def work() -> bytes:
            # raw chunks are only copied out: the cached cell itself, when it is one
            read = remote.read_shared if encoding == "raw" else remote.read
            arr = relay.read_live(remote, lambda: read(box, scale)).astype(served, copy=False)
            if arr.ndim == 3:
                arr = arr[None]
            data = encode_chunk(arr, encoding, block_size=_CSEG_BLOCK[::-1])
            # mtime=0: the same chunk is the same bytes every time (a strong ETag's promise)
            data = gzip.compress(data, compresslevel=1, mtime=0) if use_gzip else data
            # kept for the next request with this ETag, whose generation was taken before
            # the read (relay.cache.responses)
            remote.keep_response(etag, data, media)
            return data

        found = remote.response(etag)
        try:
            data = found[0] if found is not None else await to_thread.run_sync(
                work, limiter=relay.limiter)
        except MissingChunkError as exc:
            _partly_absent(remote, scale, box, exc, name)
            raise
        return Response(data, media_type=media, headers=headers)

    async def file_dirs_hint(remote: CachedRemote) -> str:
        location = upstream_layer(remote.url)
        if location is None:
            return ("; its upstream is not a precomputed layer, so it has no mesh, skeleton or "
                    "annotation files")
        dirs = await to_thread.run_sync(lambda: files.directories(location),
                                        limiter=relay.limiter)
        return f"; its files are under {', '.join(d + '/' for d in dirs)}" if dirs else ""

    async def serve_file(request: Request, remote: CachedRemote, path: str) -> Response | None:
        """A file of the channel's upstream layer (``path`` relative to it), or None when
        the path is in no directory the layer serves."""
        location = upstream_layer(remote.url)
        if location is None:
            return None
        raw = request.scope.get("raw_path", b"").decode("latin-1")
        parts = check_file_path(path, raw)
        name = "/".join(parts)
        head = request.method == "HEAD"

        def work() -> Response | None:
            if files.served_dir(location, parts) is None:
                return None
            reply = files.read(location, name, range_header=request.headers.get("range"),
                               gzip_ok=_accepts_gzip(request.headers.get("accept-encoding", "")),
                               head=head, conditions=Conditions(
                                   request.headers.get("if-none-match"),
                                   request.headers.get("if-range")))
            if reply is None:
                raise BossHTTPError(404, 4000, f"no file {name} in this layer")
            media = reply.headers.pop("Content-Type", None)  # (a 304 has none)
            if isinstance(reply.body, bytes):
                return Response(b"" if head else reply.body, status_code=reply.status,
                                media_type=media, headers=reply.headers)
            return StreamingResponse(reply.body, status_code=reply.status, media_type=media,
                                     headers=reply.headers)

        return await to_thread.run_sync(work, limiter=relay.limiter)

    async def file(request: Request) -> Response:
        """Any other path under a channel: a file of its upstream layer, or a 404 that says
        what the channel serves."""
        p = request.path_params
        if p["path"].endswith("/") and p["path"].strip("/"):
            # as the router does for the other routes: the same path without the slash
            return RedirectResponse(request.url.replace(path=request.url.path.rstrip("/")),
                                    status_code=307)
        if not p["path"]:
            raise BossHTTPError(404, 4000, f"no such endpoint: {request.url.path}")
        remote = await open_remote(request)
        answer = await serve_file(request, remote, p["path"])
        if answer is not None:
            return answer
        location = upstream_layer(remote.url)
        if location is None:
            raise BossHTTPError(404, 4000, f"no such endpoint: {request.url.path}: channel "
                                f"{p['c']}/{p['e']}/{p['ch']} is not a precomputed layer "
                                "upstream, so it has no mesh, skeleton or annotation files; "
                                "it serves info and chunks under its scale keys")
        dirs = await to_thread.run_sync(lambda: files.directories(location),
                                        limiter=relay.limiter)
        raise not_served(request.url.path, dirs, f"channel {p['c']}/{p['e']}/{p['ch']}")

    base = "/precomputed/{c}/{e}/{ch}"
    return [
        Route(base + "/info", info),
        Route(base + "/{key}/{chunk}", chunk),
        Route(base + "/{path:path}", file, methods=["GET", "HEAD"]),
    ]
