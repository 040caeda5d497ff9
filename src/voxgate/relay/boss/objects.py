"""Object services on annotation channels (ids, bounding boxes, reserve) and the downsample
status of a channel."""

from __future__ import annotations

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from ...geometry import Box, Vec
from ..errors import (
    DATATYPE_NOT_SUPPORTED,
    INVALID_ARGUMENT,
    INVALID_STATE,
    MISSING_PERMISSION,
    OBJECT_NOT_FOUND,
    TYPE_ERROR,
    BossHTTPError,
    bad_request,
    not_found,
)
from ..state import Relay
from .cutout import _ID, _INT, _Cutout
from .records import _short
from .routing import Handler, json, reads, runner

_BOSS_CUBOID = Vec(16, 512, 512)  # z, y, x: the grid "loose" bounding boxes align to


def object_handlers(relay: Relay) -> dict[str, Handler]:
    """The ids, boundingbox, reserve and downsample endpoints, bound to ``relay``."""
    run = runner(relay)

    # -- object services ------------------------------------------------------------------------
    def annotation(cut: _Cutout) -> None:
        if cut.remote.meta.kind != "segmentation":
            raise bad_request(DATATYPE_NOT_SUPPORTED, "This operation is only supported on "
                              "annotation channels")

    async def ids(request: Request) -> Response:
        cut = await run(lambda: _Cutout(relay, request, write=False))
        annotation(cut)
        found = await run(lambda: relay.ids_in(cut.remote, cut.box, cut.res))
        return json({"ids": [str(i) for i in found]})

    async def bounding_box(request: Request) -> Response:
        p = request.path_params
        c, e, ch = p["c"], p["e"], p["ch"]
        token = relay.authorize(request, c, write=False)
        entry = relay.channel(c, e, ch)
        # the client's own upstream credentials (forward_token), opened off the event loop
        remote = await run(lambda: relay.remote(entry, token))
        if remote.meta.kind != "segmentation":
            raise bad_request(DATATYPE_NOT_SUPPORTED, "This operation is only supported on "
                              "annotation channels")
        if not _INT.fullmatch(p["res"]) or not _ID.fullmatch(p["id"]):
            raise bad_request(INVALID_ARGUMENT, f"resolution and id must be non-negative integers "
                              f"(ASCII digits), got {_short(p['res'])} and {_short(p['id'])}")
        res, ident = int(p["res"]), int(p["id"])
        if not 0 < ident < 2**64:
            raise bad_request(INVALID_ARGUMENT, f"an object id is an integer from 1 to 2**64-1, "
                              f"got {_short(p['id'])}")
        if not 0 <= res < len(remote.meta.scales):
            raise bad_request(TYPE_ERROR, f"Invalid resolution {res}. The resolution has to be "
                              f"within 0 and {len(remote.meta.scales) - 1}")
        kind = request.query_params.get("type", "loose")
        if kind not in ("loose", "tight"):
            raise bad_request(INVALID_ARGUMENT, f"type must be loose or tight, got {kind!r}")
        dt = remote.meta.dtype  # an id above the dtype's range cannot be stored in it
        fits = not np.issubdtype(dt, np.integer) or ident <= int(np.iinfo(dt).max)
        # every id's box comes from one pass over the channel, kept until it is written
        box = await run(lambda: relay.stats.bounding_box(remote, ident, res)) if fits else None
        if box is None:
            raise not_found(f"Object id {ident} not found", OBJECT_NOT_FOUND)
        if kind == "loose":
            start = Vec(*(a // g * g for a, g in zip(box.start, _BOSS_CUBOID, strict=True)))
            stop = Vec(*(-(-b // g) * g for b, g in zip(box.stop, _BOSS_CUBOID, strict=True)))
            frame = relay.frame_at(c, e, entry, res)
            box = Box(start, stop).intersect(frame)
        return json({"x_range": [box.start.x, box.stop.x], "y_range": [box.start.y, box.stop.y],
                     "z_range": [box.start.z, box.stop.z], "t_range": [0, 1]})

    async def reserve(request: Request) -> Response:
        p = request.path_params
        c, e, ch = p["c"], p["e"], p["ch"]
        token = relay.authorize(request, c, write=True)
        entry = relay.channel(c, e, ch)
        if not _INT.fullmatch(p["n"]):
            raise bad_request(INVALID_ARGUMENT, f"the number of ids must be a positive integer, "
                              f"got {_short(p['n'])}")
        count = int(p["n"])
        if not 1 <= count <= 2**40:
            raise bad_request(INVALID_ARGUMENT, f"reserve between 1 and 2**40 ids, not {count}")
        remote = await run(lambda: relay.remote(entry, token))
        if remote.meta.kind != "segmentation":
            raise bad_request(DATATYPE_NOT_SUPPORTED, "This operation is only supported on "
                              "annotation channels")
        start = await run(lambda: relay.reserve(entry, count, token))
        return json({"start_id": start, "count": count})

    # -- downsample status ----------------------------------------------------------------------
    async def downsample(request: Request) -> Response:
        p = request.path_params
        relay.authorize(request, p["c"], write=not reads(request))
        entry = relay.channel(p["c"], p["e"], p["ch"])
        remote = await run(lambda: relay.remote(entry, None))
        meta = remote.meta
        if request.method == "POST":
            if not entry.writable:
                raise BossHTTPError(403, MISSING_PERMISSION,
                                    f"channel {'/'.join(entry.key)} is read-only on this relay")
            if len(meta.scales) < 2:
                raise BossHTTPError(409, INVALID_STATE, "this channel has one resolution level; "
                                    "there is nothing to downsample into")
            relay.start_downsample(entry, remote)  # 409 when one is running already
            return Response(status_code=201)
        if request.method == "DELETE":
            raise BossHTTPError(409, INVALID_STATE, "this relay's downsample jobs run to the "
                                "end once started and cannot be cancelled")
        return json({
            "status": relay.downsample_status(entry, remote),
            "num_hierarchy_levels": len(meta.scales),
            "voxel_size": {str(s.index): list(s.voxel_size.xyz()) for s in meta.scales},
            "extent": {str(s.index): list(s.shape.xyz()) for s in meta.scales},
            "cuboid_size": {str(s.index): list(remote.grid(s.index).xyz())
                            for s in meta.scales},
        })

    return {"ids": ids, "bounding_box": bounding_box, "reserve": reserve,
            "downsample": downsample}
