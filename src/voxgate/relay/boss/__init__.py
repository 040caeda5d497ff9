"""The bossDB REST v1 dialect: project service, cutouts, ids, bounding boxes, reserve, metadata.

Compatible with the real clients (intern's BossRemote, CloudVolume's boss source): the JSON
fields they read, the status codes they expect (201 for POSTs, 204 for DELETEs), blosc cutouts
of raw C-order (z, y, x) bytes.  Request bodies are never unpickled.

The package: :mod:`.project` (the project service: collections, experiments, coordinate
frames, channels, metadata), :mod:`.records` (checking their JSON records), :mod:`.cutout`
(cutout URLs and routes), :mod:`.codecs` (request and response bodies), :mod:`.objects`
(ids, bounding boxes, reserve, downsample status) and :mod:`.routing` (what every handler
shares); :func:`boss_routes` assembles the routes.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import UNSUPPORTED_VERSION, BossHTTPError
from ..state import Relay
from .codecs import decode_body
from .cutout import cutout_handlers
from .objects import object_handlers
from .project import project_handlers
from .routing import json

__all__ = ["boss_routes", "decode_body"]


def boss_routes(relay: Relay) -> list[Route]:
    """Starlette routes of the bossDB dialect, bound to ``relay``."""

    # -- ping and versions ----------------------------------------------------------------------
    async def ping(request: Request) -> Response:
        client = request.client.host if request.client else "127.0.0.1"
        return json({"ip": client})

    async def old_version(request: Request) -> Response:
        raise BossHTTPError(400, UNSUPPORTED_VERSION, "This API version is unsupported. Update "
                            "to version v1")

    project = project_handlers(relay)
    list_collections, collection = project["list_collections"], project["collection"]
    list_experiments, experiment = project["list_experiments"], project["experiment"]
    list_coords, coord = project["list_coords"], project["coord"]
    list_channels, channel = project["list_channels"], project["channel"]
    metadata = project["metadata"]
    cutouts = cutout_handlers(relay)
    cutout, to_black = cutouts["cutout"], cutouts["to_black"]
    objects = object_handlers(relay)
    ids, bounding_box = objects["ids"], objects["bounding_box"]
    reserve, downsample = objects["reserve"], objects["downsample"]

    c, e, ch = "{c}", "{e}", "{ch}"
    res = "{res}/{x}/{y}/{z}"
    cut_methods = ["GET", "POST"]
    rw = ["GET", "POST", "PUT", "DELETE"]
    black = [*rw, "PATCH"]
    routes = [
        Route("/ping", ping), Route("/ping/", ping),
        Route("/v0.{minor}/{rest:path}", old_version, methods=rw),
        Route("/v1/collection", list_collections), Route("/v1/collection/", list_collections),
        Route(f"/v1/collection/{c}", collection, methods=rw),
        Route(f"/v1/collection/{c}/", collection, methods=rw),
        Route(f"/v1/collection/{c}/experiment", list_experiments),
        Route(f"/v1/collection/{c}/experiment/", list_experiments),
        Route(f"/v1/collection/{c}/experiment/{e}", experiment, methods=rw),
        Route(f"/v1/collection/{c}/experiment/{e}/", experiment, methods=rw),
        Route(f"/v1/collection/{c}/experiment/{e}/channel", list_channels),
        Route(f"/v1/collection/{c}/experiment/{e}/channel/", list_channels),
        Route(f"/v1/collection/{c}/experiment/{e}/channel/{ch}", channel, methods=rw),
        Route(f"/v1/collection/{c}/experiment/{e}/channel/{ch}/", channel, methods=rw),
        Route("/v1/coord", list_coords), Route("/v1/coord/", list_coords),
        Route("/v1/coord/{cf}", coord, methods=rw), Route("/v1/coord/{cf}/", coord, methods=rw),
        # other methods too, answered 405 by to_black as bossDB does: with PUT alone, a GET
        # fell through to the cutout route, which looked for a collection "to_black" (a 404)
        Route(f"/v1/cutout/to_black/{c}/{e}/{ch}/{res}", to_black, methods=black),
        Route(f"/v1/cutout/to_black/{c}/{e}/{ch}/{res}/", to_black, methods=black),
        Route(f"/v1/cutout/to_black/{c}/{e}/{ch}/{res}/{{t}}", to_black, methods=black),
        Route(f"/v1/cutout/to_black/{c}/{e}/{ch}/{res}/{{t}}/", to_black, methods=black),
        Route(f"/v1/cutout/{c}/{e}/{ch}/{res}", cutout, methods=cut_methods),
        Route(f"/v1/cutout/{c}/{e}/{ch}/{res}/", cutout, methods=cut_methods),
        Route(f"/v1/cutout/{c}/{e}/{ch}/{res}/{{t}}", cutout, methods=cut_methods),
        Route(f"/v1/cutout/{c}/{e}/{ch}/{res}/{{t}}/", cutout, methods=cut_methods),
        Route(f"/v1/ids/{c}/{e}/{ch}/{res}", ids), Route(f"/v1/ids/{c}/{e}/{ch}/{res}/", ids),
        Route(f"/v1/ids/{c}/{e}/{ch}/{res}/{{t}}", ids),
        Route(f"/v1/ids/{c}/{e}/{ch}/{res}/{{t}}/", ids),
        Route(f"/v1/boundingbox/{c}/{e}/{ch}/{{res}}/{{id}}", bounding_box),
        Route(f"/v1/boundingbox/{c}/{e}/{ch}/{{res}}/{{id}}/", bounding_box),
        Route(f"/v1/reserve/{c}/{e}/{ch}/{{n}}", reserve),
        Route(f"/v1/reserve/{c}/{e}/{ch}/{{n}}/", reserve),
        Route(f"/v1/downsample/{c}/{e}/{ch}", downsample, methods=["GET", "POST", "DELETE"]),
        Route(f"/v1/downsample/{c}/{e}/{ch}/", downsample, methods=["GET", "POST", "DELETE"]),
    ]
    for path in (f"/v1/meta/{c}", f"/v1/meta/{c}/{e}", f"/v1/meta/{c}/{e}/{ch}"):
        routes += [Route(path, metadata, methods=rw), Route(path + "/", metadata, methods=rw)]
    return routes
