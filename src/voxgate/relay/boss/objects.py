"""Object services on annotation channels (ids, bounding boxes, reserve) and the downsample
status of a channel."""

from __future__ import annotations

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from ...geometry import Box, Vec
from ..errors import (
    INVALID_ARGUMENT,
    INVALID_STATE,
    MISSING_PERMISSION,
    OBJECT_NOT_FOUND,
    BossHTTPError,
    bad_request,
    not_found,
)
from ..state import Relay
from .cutout import _ID, _INT, _Cutout, _kind_error, level
from .records import _short
from .routing import Handler, is_admin, json, reads, runner

_BOSS_CUBOID = Vec(16, 512, 512)  # z, y, x: the grid "loose" bounding boxes align to


def object_handlers(relay: Relay) -> dict[str, Handler]:
    """The ids, boundingbox, reserve and downsample endpoints, bound to ``relay``."""
    run = runner(relay)

    # -- object services ------------------------------------------------------------------------
    async def ids(request: Request) -> Response:
        # (bossobject/views.py Ids: the channel type first, and no size limit)
        cut = await run(lambda: _Cutout(relay, request, write=False, service="ids"))
        # (a signed channel's ids, here and in bounding boxes, are uint64 as its cutouts serve
        # them, -7 as 2**64 - 7: relay/stats.py converts its blocks before counting them)
        if request.query_params.get("boxes") == "tight" and \
                cut.box.contains(cut.remote.meta.scale(cut.res).bounds):
            # (a voxgate extension bossDB ignores: the whole channel's ids with their tight
            # bounding boxes, [z0, y0, x0, z1, y1, x1] each, voxel counts and the sums of
            # their voxels' coordinates [z, y, x] (float64 holding integers, which JSON
            # carries exactly), from the one kept pass: a client's label statistics,
            # centroids included, in one request instead of one per id)
            st = await run(lambda: relay.stats.get(cut.remote, cut.res))
            return json({"ids": [str(i) for i in st.ids.tolist()],
                         "boxes": np.concatenate([st.lo, st.hi], axis=1).tolist(),
                         "counts": st.count.tolist(),
                         "sums": st.sum.tolist()})
        found = await run(lambda: relay.ids_in(cut.remote, cut.box, cut.res))
        return json({"ids": [str(i) for i in found]})

    async def bounding_box(request: Request) -> Response:
        p = request.path_params
        c, e, ch = p["c"], p["e"], p["ch"]
        # (bossobject/views.py BoundingBox: ``type`` is checked before anything else)
        kind = request.query_params.get("type", "loose")
        if kind not in ("loose", "tight"):
            raise bad_request(INVALID_ARGUMENT, f"Invalid option for bounding box type "
                              f"{kind[:60]}. The valid options are : loose or "
                              "tight")
        token = relay.authorize(request, c, write=False)
        entry = relay.channel(c, e, ch)
        # the client's own upstream credentials (forward_token), opened off the event loop
        remote = await run(lambda: relay.remote(entry, token))
        if remote.meta.kind != "segmentation":
            raise _kind_error(remote.meta.kind, "Can only perform bounding box operations on "
                              "annotation channels")
        if not _INT.fullmatch(p["res"]) or not _ID.fullmatch(p["id"]):
            raise bad_request(INVALID_ARGUMENT, f"resolution and id must be non-negative integers "
                              f"(ASCII digits), got {_short(p['res'])} and {_short(p['id'])}")
        ident = int(p["id"])
        if not 0 < ident < 2**64:
            raise bad_request(INVALID_ARGUMENT, f"an object id is an integer from 1 to 2**64-1, "
                              f"got {_short(p['id'])}")
        res = level(relay, entry, len(remote.meta.scales), p["res"])[0]  # (the base's 0)
        dt = remote.meta.dtype  # an id above an unsigned dtype's range cannot be stored in it
        # (a signed channel's negative ids are named as its cutouts serve them, 2**64 + id)
        fits = dt.kind != "u" or ident <= int(np.iinfo(dt).max)
        if fits:
            # every id's box comes from one pass over the channel, kept until it is written
            box = await run(lambda: relay.stats.bounding_box(remote, ident, res))
        else:
            box = None
        if box is None:
            raise not_found(f"The id does not exist. {ident}", OBJECT_NOT_FOUND)
        if kind == "loose":
            # whole cuboids, as bossDB's id index holds them (spdb object_indices.py
            # get_loose_bounding_box): not clipped to the coordinate frame
            start = Vec(*(a // g * g for a, g in zip(box.start, _BOSS_CUBOID, strict=True)))
            stop = Vec(*(-(-b // g) * g for b, g in zip(box.stop, _BOSS_CUBOID, strict=True)))
            box = Box(start, stop)
        return json({"x_range": [box.start.x, box.stop.x], "y_range": [box.start.y, box.stop.y],
                     "z_range": [box.start.z, box.stop.z], "t_range": [0, 1]})

    async def reserve(request: Request) -> Response:
        p = request.path_params
        c, e, ch = p["c"], p["e"], p["ch"]
        token = relay.authorize(request, c, write=True)
        entry = relay.channel(c, e, ch)
        remote = await run(lambda: relay.remote(entry, token))
        # bosscore/request.py validate_reserve_service: the channel type before the count.
        # (bossDB means 400 / 2003 with these words; its code names the error code as
        # ErrorCodes.ErrorCodes.DATATYPE_NOT_SUPPORTED, an AttributeError, so a real server
        # answers a bare 500 instead: the relay answers what was meant)
        if remote.meta.kind != "segmentation":
            raise _kind_error(remote.meta.kind, "Can only reserve IDs for annotation channels")
        if not _INT.fullmatch(p["n"]):
            raise bad_request(INVALID_ARGUMENT, f"the number of ids must be a positive integer, "
                              f"got {_short(p['n'])}")
        count = int(p["n"])
        if not 1 <= count <= 2**40:
            raise bad_request(INVALID_ARGUMENT, f"reserve between 1 and 2**40 ids, not {count}")
        start = await run(lambda: relay.reserve(entry, count, token))
        # bossobject/views.py Reserve answers the count as the URL gave it: a string
        return json({"start_id": start, "count": p["n"]})

    # -- downsample status ----------------------------------------------------------------------
    async def downsample(request: Request) -> Response:
        # (bossspatialdb/views.py Downsample, bossspatialdb/downsample.py start)
        p = request.path_params
        token = relay.authorize(request, p["c"], write=not reads(request))
        entry = relay.channel(p["c"], p["e"], p["ch"])
        remote = await run(lambda: relay.remote(entry, None))
        meta = remote.meta
        status = relay.downsample_status(entry, remote)
        if request.method == "POST":
            if not entry.writable:
                raise BossHTTPError(403, MISSING_PERMISSION,
                                    f"channel {'/'.join(entry.key)} is read-only on this relay")
            if status == "IN_PROGRESS":
                raise BossHTTPError(409, INVALID_STATE, "Channel is currently being downsampled. "
                                    "Invalid Request.")
            if status == "DOWNSAMPLED" and not is_admin(relay, token):
                raise BossHTTPError(409, INVALID_STATE, "Channel is already downsampled. Invalid "
                                    "Request.")
            if len(meta.scales) < 2:
                raise BossHTTPError(409, INVALID_STATE, "this channel has one resolution level; "
                                    "there is nothing to downsample into")
            relay.start_downsample(entry, remote)  # 409 when one is running already
            return Response(status_code=201)
        if request.method == "DELETE":
            if status not in ("IN_PROGRESS", "QUEUED"):
                raise BossHTTPError(409, INVALID_STATE, "You can only cancel a queued or "
                                    "in-progress downsample operation.")
            raise BossHTTPError(409, INVALID_STATE, "this relay's downsample jobs run to the "
                                "end once started and cannot be cancelled")
        frames = {s.index: relay.frame_at(p["c"], p["e"], entry, s.index) for s in meta.scales}
        # keyed by the resolution a cutout names, base_resolution + level (bossDB's keys run
        # from 0 whatever the base: spdb get_downsampled_voxel_dims; the same where it is 0)
        base = relay.base_resolution(entry)
        return json({
            "status": status,
            "num_hierarchy_levels": len(meta.scales),
            "voxel_size": {str(base + s.index): list(s.voxel_size.xyz()) for s in meta.scales},
            # each level's coordinate frame stop (spdb project/resource.py
            # get_downsampled_extent_dims halves x_stop, not the size)
            "extent": {str(base + k): list(f.stop.xyz()) for k, f in frames.items()},
            # bossDB's cuboid at every level (spdb c_lib/ndtype.py CUBOIDSIZE), x, y, z
            "cuboid_size": {str(base + s.index): list(_BOSS_CUBOID.xyz())
                            for s in meta.scales},
            # (a voxgate extension bossDB does not send: how each level's voxels lie over the
            # finer level's, the upstream's own rule; bossDB's levels lie on the grid through 0)
            "pyramid_anchor": remote.pyramid_anchor,
        })

    return {"ids": ids, "bounding_box": bounding_box, "reserve": reserve,
            "downsample": downsample}
