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
from typing import TYPE_CHECKING, Any

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..formats.precomputed_chunks import encode_chunk
from ..geometry import Box
from .cache import CachedRemote
from .errors import BossHTTPError

if TYPE_CHECKING:
    from .app import Relay

__all__ = ["precomputed_info", "precomputed_routes"]

_CHUNK = re.compile(r"^(\d+)-(\d+)_(\d+)-(\d+)_(\d+)-(\d+)$")
_CSEG_BLOCK = (8, 8, 8)


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
    dtype = meta.dtype.name
    if dtype in ("int64", "float64"):
        dtype = {"int64": "uint64", "float64": "float32"}[dtype]  # the nearest the format has
    return {
        "@type": "neuroglancer_multiscale_volume",
        "type": "segmentation" if meta.kind == "segmentation" else "image",
        "data_type": dtype,
        "num_channels": meta.num_channels,
        "scales": scales,
    }


def precomputed_routes(relay: Relay) -> list[Route]:
    async def info(request: Request) -> Response:
        p = request.path_params
        relay.authorize(request, p["c"], write=False)
        entry = relay.channel(p["c"], p["e"], p["ch"])
        remote = relay.remote(entry, relay.token(request))
        body = json.dumps(precomputed_info(remote)).encode()
        return Response(body, media_type="application/json",
                        headers={"Cache-Control": "no-cache"})

    async def chunk(request: Request) -> Response:
        p = request.path_params
        relay.authorize(request, p["c"], write=False)
        entry = relay.channel(p["c"], p["e"], p["ch"])
        remote = relay.remote(entry, relay.token(request))
        key, name = p["key"], p["chunk"]
        if not key.startswith("s") or not key[1:].isdigit() or int(key[1:]) >= len(
            remote.meta.scales
        ):
            raise BossHTTPError(404, 4000, f"no scale {key!r} in this layer")
        scale = int(key[1:])
        m = _CHUNK.match(name)
        if not m:
            raise BossHTTPError(400, 1001, f"chunk name {name!r} is not x0-x1_y0-y1_z0-z1")
        x0, x1, y0, y1, z0, z1 = (int(v) for v in m.groups())
        if not (x0 < x1 and y0 < y1 and z0 < z1):
            raise BossHTTPError(400, 1001, f"chunk {name} is empty")
        box = Box((z0, y0, x0), (z1, y1, x1))
        bounds = remote.meta.scale(scale).bounds
        if not bounds.contains(box):
            raise BossHTTPError(404, 4000, f"chunk {name} is outside scale {key} ({bounds})")
        encoding = _encoding(remote)

        def work() -> bytes:
            arr = remote.read(box, scale)
            if arr.ndim == 3:
                arr = arr[None]
            data = encode_chunk(arr, encoding, block_size=_CSEG_BLOCK[::-1])
            if "gzip" in request.headers.get("accept-encoding", ""):
                return gzip.compress(data, compresslevel=1)
            return data

        data = await to_thread.run_sync(work, limiter=relay.limiter)
        headers = {"Cache-Control": "no-cache"}
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
        return Response(data, media_type="application/octet-stream", headers=headers)

    base = "/precomputed/{c}/{e}/{ch}"
    return [
        Route(base + "/info", info),
        Route(base + "/{key}/{chunk}", chunk),
    ]
