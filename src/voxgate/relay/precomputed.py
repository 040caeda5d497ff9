"""The Neuroglancer precomputed dialect over HTTP: ``/precomputed/{c}/{e}/{ch}/info`` and chunks.

Every channel the relay serves is also a precomputed layer: one scale per upstream scale (keys
``s0``, ``s1``, ...), chunk sizes equal to the relay's cache cells (so one chunk request is one
cache lookup), ``raw`` chunks for images and ``compressed_segmentation`` for uint32/uint64
segmentations, gzip when the client accepts it, CORS open so Neuroglancer in a browser can load
it.
"""

from __future__ import annotations

import gzip
import json
import re
from typing import Any

import numpy as np
from anyio import to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..formats.precomputed_chunks import encode_chunk
from ..geometry import Box
from .cache import CachedRemote
from .errors import BossHTTPError
from .state import Relay

__all__ = ["precomputed_info", "precomputed_routes"]

#: matched whole (no trailing newline), ASCII digits few enough that int() always takes them
_CHUNK = re.compile(r"([0-9]{1,18})-([0-9]{1,18})_([0-9]{1,18})-([0-9]{1,18})_([0-9]{1,18})-"
                    r"([0-9]{1,18})")
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


def precomputed_info(remote: CachedRemote) -> dict[str, Any]:
    meta = remote.meta
    encoding = _encoding(remote)
    scales = []
    for s in meta.scales:
        scale: dict[str, Any] = {
            "key": f"s{s.index}",
            "size": list(s.shape.xyz()),
            "resolution": [float(v) for v in s.voxel_size.xyz()],
            "voxel_offset": list(s.offset.xyz()),
            "chunk_sizes": [list(remote.grid(s.index).xyz())],
            "encoding": encoding,
        }
        if encoding == "compressed_segmentation":
            scale["compressed_segmentation_block_size"] = list(_CSEG_BLOCK)
        scales.append(scale)
    return {
        "@type": "neuroglancer_multiscale_volume",
        "type": "segmentation" if meta.kind == "segmentation" else "image",
        "data_type": _served_dtype(remote).name,
        "num_channels": meta.num_channels,
        "scales": scales,
    }


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
    async def open_remote(request: Request) -> CachedRemote:
        """The channel's Remote, opened off the event loop (a slow upstream must not stall
        every other request while it opens)."""
        p = request.path_params
        relay.authorize(request, p["c"], write=False)
        entry = relay.channel(p["c"], p["e"], p["ch"])
        token = relay.token(request)
        return await to_thread.run_sync(lambda: relay.remote(entry, token),
                                        limiter=relay.limiter)

    async def info(request: Request) -> Response:
        remote = await open_remote(request)
        body = json.dumps(precomputed_info(remote)).encode()
        return Response(body, media_type="application/json",
                        headers={"Cache-Control": "no-cache"})

    async def chunk(request: Request) -> Response:
        p = request.path_params
        remote = await open_remote(request)
        key, name = p["key"], p["chunk"]
        # exactly the keys the info lists ("s01" or "s-1" are not keys, even if int() takes them)
        keys = [f"s{s.index}" for s in remote.meta.scales]
        if key not in keys:
            raise BossHTTPError(404, 4000, f"no scale {key!r} in this layer; its scales are "
                                f"{', '.join(keys)}")
        scale = keys.index(key)
        m = _CHUNK.fullmatch(name)
        if not m:
            raise BossHTTPError(400, 1001, f"chunk name {name!r} is not x0-x1_y0-y1_z0-z1 "
                                "(non-negative integers, x first)")
        x0, x1, y0, y1, z0, z1 = (int(v) for v in m.groups())
        if not (x0 < x1 and y0 < y1 and z0 < z1):
            raise BossHTTPError(400, 1001, f"chunk {name} is empty")
        box = Box((z0, y0, x0), (z1, y1, x1))
        bounds = remote.meta.scale(scale).bounds
        if not bounds.contains(box):
            raise BossHTTPError(404, 4000, f"chunk {name} is outside scale {key}, whose bounds are "
                                f"{_chunk_name(bounds)}")
        # only cells of the grid the info announces: anything else would let one request read an
        # arbitrarily large region into memory (the whole dataset in one "chunk")
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

        def work() -> bytes:
            arr = remote.read(box, scale).astype(served, copy=False)
            if arr.ndim == 3:
                arr = arr[None]
            data = encode_chunk(arr, encoding, block_size=_CSEG_BLOCK[::-1])
            return gzip.compress(data, compresslevel=1) if use_gzip else data

        data = await to_thread.run_sync(work, limiter=relay.limiter)
        headers = {"Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        if use_gzip:
            headers["Content-Encoding"] = "gzip"
        return Response(data, media_type="application/octet-stream", headers=headers)

    base = "/precomputed/{c}/{e}/{ch}"
    return [
        Route(base + "/info", info),
        Route(base + "/{key}/{chunk}", chunk),
    ]
