"""The bossDB REST v1 dialect: project service, cutouts, ids, bounding boxes, reserve, metadata.

Compatible with the real clients (intern's BossRemote, CloudVolume's boss source): the JSON
fields they read, the status codes they expect (201 for POSTs, 204 for DELETEs), blosc cutouts
of raw C-order (z, y, x) bytes.  Request bodies are never unpickled.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import struct
import zlib
from collections.abc import Callable
from typing import Any

import blosc
import numpy as np
from anyio import to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import InvalidRequestError
from ..geometry import Box, Vec
from ..meta import VolumeMeta
from .cache import CachedRemote
from .catalog import ChannelEntry
from .config import check_name
from .errors import (
    DATA_DIMENSION_MISMATCH,
    DATATYPE_DOES_NOT_MATCH,
    DATATYPE_NOT_SUPPORTED,
    INTEGRITY_ERROR,
    INVALID_ARGUMENT,
    INVALID_CUTOUT_ARGS,
    INVALID_POST_ARGUMENT,
    INVALID_STATE,
    INVALID_URL,
    MISSING_PERMISSION,
    OBJECT_NOT_FOUND,
    REQUEST_TOO_LARGE,
    RESOURCE_EXISTS,
    TYPE_ERROR,
    UNSUPPORTED_VERSION,
    BossHTTPError,
    bad_request,
    not_found,
)
from .state import CHANNEL_DATATYPES, Relay

__all__ = ["boss_routes", "decode_body"]

# ASCII digits only, and few enough that int() never refuses them (Python caps long strings)
_RANGE = re.compile(r"([0-9]{1,18}):([0-9]{1,18})")
_INT = re.compile(r"[0-9]{1,18}")
_ID = re.compile(r"[0-9]{1,25}")  # range-checked after: a uint64 id has at most 20 digits
_BOSS_CUBOID = Vec(16, 512, 512)  # z, y, x: the grid "loose" bounding boxes align to
_HIERARCHY = ("anisotropic", "isotropic")


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


class _Cutout:
    """A parsed cutout URL: the channel, resolution, box (dataset coords at res) and time."""

    def __init__(self, relay: Relay, request: Request, *, write: bool) -> None:
        p = request.path_params
        self.c, self.e, self.ch = p["c"], p["e"], p["ch"]
        self.token = relay.authorize(request, self.c, write=write)
        entry = relay.channel(self.c, self.e, self.ch)
        self.entry = entry
        self.remote: CachedRemote = relay.remote(entry, self.token)
        meta = self.remote.meta
        tail = "/".join(str(p.get(k, "")) for k in ("res", "x", "y", "z")).strip("/")
        if not _INT.fullmatch(p["res"]):
            raise bad_request(TYPE_ERROR, f"Invalid resolution {p['res']!r}. The resolution has "
                              f"to be an integer within 0 and {len(meta.scales) - 1}")
        res = int(p["res"])
        if not 0 <= res < len(meta.scales):
            raise bad_request(TYPE_ERROR, f"Invalid resolution {res}. The resolution has to be "
                              f"within 0 and {len(meta.scales) - 1}")
        self.res = res
        x = _range(p["x"], "x", tail)
        y = _range(p["y"], "y", tail)
        z = _range(p["z"], "z", tail)
        self.time: tuple[int, int] | None = None
        if p.get("t"):
            t = _time(p["t"], tail)
            if t != (0, 1):
                raise bad_request(INVALID_URL, f"Invalid time range {p['t']}: this channel has 1 "
                                  "time sample (0:1)")
            self.time = t
        self.box = Box((z[0], y[0], x[0]), (z[1], y[1], x[1]))
        frame = relay.frame_at(self.c, self.e, entry, res)
        if not frame.contains(self.box):
            raise bad_request(INVALID_CUTOUT_ARGS, f"Incorrect cutout arguments {tail}: the region "
                              f"x {x[0]}:{x[1]}, y {y[0]}:{y[1]}, z {z[0]}:{z[1]} leaves the "
                              f"coordinate frame at resolution {res} (x {frame.start.x}:"
                              f"{frame.stop.x}, y {frame.start.y}:{frame.stop.y}, z "
                              f"{frame.start.z}:{frame.stop.z})")
        self.dtype = meta.dtype
        nbytes = self.box.size * self.dtype.itemsize
        if self.dtype.itemsize == 8:
            nbytes //= 4  # bossDB's rule: annotation cutouts compress well
        limit = relay.config.max_cutout_bytes
        if nbytes > limit:
            raise BossHTTPError(413, REQUEST_TOO_LARGE,
                                f"Cutout request is over {_size(limit)} when uncompressed. Reduce "
                                "cutout dimensions.")

    @property
    def shape(self) -> tuple[int, ...]:
        lead = (1,) if self.time is not None else ()
        return lead + tuple(self.box.shape)

    def read(self) -> np.ndarray:
        bounds = self.remote.meta.scale(self.res).bounds
        inside = self.box.intersect(bounds)
        if inside == self.box:
            return self.remote.read(self.box, self.res)
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


def _blosc_header_nbytes(body: bytes) -> int:
    if len(body) < 16:
        raise ValueError("shorter than a blosc header")
    return int(struct.unpack("<I", body[4:8])[0])


def _npy_header(buf: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """The (shape, fortran_order, dtype) an .npy stream declares, without reading its data."""
    version = np.lib.format.read_magic(buf)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(buf)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(buf)
    raise ValueError(f".npy format version {version} is not supported")


def decode_body(body: bytes, content_type: str, dtype: np.dtype[Any],
                 shape: tuple[int, ...]) -> np.ndarray:
    expected = math.prod(shape) * dtype.itemsize
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "application/blosc":
        try:
            nbytes = _blosc_header_nbytes(body)
        except ValueError:
            raise bad_request(DATA_DIMENSION_MISMATCH, "Failed to unpack data: the body is not a "
                              "blosc buffer") from None
        if nbytes != expected:
            raise bad_request(DATA_DIMENSION_MISMATCH, f"Data dimensions in URL do not match "
                              f"POSTed data: the region {shape} of {dtype.name} is {expected} "
                              f"bytes, the body holds {nbytes}")
        try:
            raw = blosc.decompress(body)
        except Exception as exc:
            raise bad_request(DATATYPE_DOES_NOT_MATCH,
                              f"Failed to decompress data: {exc}") from None
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    if ctype == "application/npygz":
        try:
            d = zlib.decompressobj()
            raw = d.decompress(body, expected + 4096)  # never inflate past what the box needs
            if d.unconsumed_tail:
                raise bad_request(DATA_DIMENSION_MISMATCH, "Data dimensions in URL do not match "
                                  "POSTed data: the body inflates past the region's size")
            buf = io.BytesIO(raw)
            # the header is checked before numpy allocates what it declares
            head_shape, _, head_dtype = _npy_header(buf)
            if head_dtype.hasobject:
                raise bad_request(DATA_DIMENSION_MISMATCH, "Failed to unpack data: the .npy "
                                  "holds Python objects, which only unpickling could read")
            if head_dtype != dtype:
                raise bad_request(DATATYPE_DOES_NOT_MATCH, f"Datatype does not match channel: "
                                  f"got {head_dtype.name}, the channel is {dtype.name}")
            if head_shape != shape:
                raise bad_request(DATA_DIMENSION_MISMATCH, f"Data dimensions in URL do not "
                                  f"match POSTed data: URL {shape}, body {head_shape}")
            buf.seek(0)
            arr = np.load(buf, allow_pickle=False)
        except BossHTTPError:
            raise
        except Exception as exc:
            raise bad_request(DATA_DIMENSION_MISMATCH,
                              f"Failed to unpack data: not a zlib-compressed .npy: {exc}") from None
        return arr
    if ctype == "application/blosc-python":
        raise BossHTTPError(415, 0, 'Unsupported media type "application/blosc-python" in '
                            "request: it can only be decoded by unpickling, which this server "
                            "never does; send application/blosc (raw C-order bytes) instead",
                            drf=True)
    raise BossHTTPError(415, 0, f'Unsupported media type "{ctype}" in request: use '
                        "application/blosc or application/npygz", drf=True)


def _channel_json(relay: Relay, entry: ChannelEntry) -> dict[str, Any]:
    meta = relay.remote(entry).meta
    stored = relay.catalog.state["channels"].get("/".join(entry.key), {})
    seg = meta.kind == "segmentation"
    return {
        "name": entry.name,
        # (not the upstream's URL: that is the server's path or internal host)
        "description": stored.get("description", "served by voxgate from a configured upstream"
                                  if not entry.local else ""),
        "experiment": entry.experiment,
        "default_time_sample": 0,
        "type": "annotation" if seg else "image",
        "base_resolution": 0,
        "datatype": meta.dtype.name,
        "creator": stored.get("creator", "voxgate"),
        "sources": stored.get("sources", []),
        "related": stored.get("related", []),
        "downsample_status": relay.downsample_status(entry, relay.remote(entry)),
        "storage_type": "spdb",
        "bucket": None,
        "cv_path": None,
        "public": stored.get("public", relay.config.auth.public_read),
    }


def _hierarchy(meta: VolumeMeta) -> str:
    if len(meta.scales) < 2:
        return "anisotropic"
    f = meta.scales[1].voxel_size.z / meta.scales[0].voxel_size.z
    return "isotropic" if f > 1.5 else "anisotropic"


def boss_routes(relay: Relay) -> list[Route]:
    """Starlette routes of the bossDB dialect, bound to ``relay``."""

    def json(data: Any, status: int = 200) -> JSONResponse:
        return JSONResponse(data, status_code=status)

    async def run(fn: Callable[[], Any]) -> Any:
        return await to_thread.run_sync(fn, limiter=relay.limiter)

    # -- ping and versions ----------------------------------------------------------------------
    async def ping(request: Request) -> Response:
        client = request.client.host if request.client else "127.0.0.1"
        return json({"ip": client})

    async def old_version(request: Request) -> Response:
        raise BossHTTPError(400, UNSUPPORTED_VERSION, "This API version is unsupported. Update "
                            "to version v1")

    # -- who may see and change what -----------------------------------------------------------
    def is_admin(token: str | None) -> bool:
        """An open relay's every client, or a read-write token not limited to collections."""
        auth = relay.config.auth
        if auth.open:
            return True
        grant = auth.tokens.get(token) if token is not None else None
        return grant is not None and grant.role == "read-write" and grant.collections is None

    def frame_index() -> dict[str, tuple[str, str] | None]:
        """Every frame's name -> the experiment it is derived from (None: a stored frame).
        Nothing is opened: one unreachable upstream does not hide every other frame."""
        cat = relay.catalog
        out: dict[str, tuple[str, str] | None] = {
            k: None for k in cat.state["coords"] if not cat.deleted("coord", k)}
        for c in cat.collection_names():
            for e in cat.experiment_names(c):
                name = cat.frame_name(c, e)
                if name not in out and not cat.deleted("coord", name) and \
                        cat.channel_names(c, e):
                    out[name] = (c, e)
        return out

    def frame_record(name: str, where: tuple[str, str] | None) -> dict[str, Any]:
        if where is None:
            return dict(relay.catalog.state["coords"][name])
        return relay.catalog.derived_frame(*where)

    def frame_users() -> dict[str, set[str]]:
        """Each coordinate frame in use -> the collections whose experiments use it."""
        cat = relay.catalog
        out: dict[str, set[str]] = {}
        for c in cat.collection_names():
            for e in cat.experiment_names(c):
                out.setdefault(cat.frame_name(c, e), set()).add(c)
        return out

    def frame_visible(request: Request, name: str, users: dict[str, set[str]]) -> bool:
        """A frame is seen by its creator, by admin tokens, and by every token that may read a
        collection with an experiment that uses it."""
        token = relay.token(request)
        if is_admin(token):
            return True
        stored = relay.catalog.state["coords"].get(name)
        if stored is not None and token is not None and stored.get("owner") == _owner(token):
            return True
        return bool(users.get(name, set()) & set(relay.readable_collections(request)))

    # -- collections ----------------------------------------------------------------------------
    def collection_json(c: str) -> dict[str, Any]:
        stored = relay.catalog.state["collections"].get(c, {})
        return {"name": c, "description": stored.get("description", ""),
                "experiments": relay.catalog.experiment_names(c),
                "creator": stored.get("creator", "voxgate"),
                "public": stored.get("public", relay.config.auth.public_read)}

    async def list_collections(request: Request) -> Response:
        return json({"collections": relay.readable_collections(request)})

    async def collection(request: Request) -> Response:
        c = request.path_params["c"]
        write = request.method != "GET"
        relay.authorize(request, c, write=write)
        cat = relay.catalog
        if request.method == "GET":
            return json(await run(lambda: collection_json(relay.known_collection(c))))
        if request.method == "POST":
            check = _name(c, "collection")
            if check in cat.collection_names():
                raise bad_request(RESOURCE_EXISTS, f"Collection {c} already exists")
            body = await _json_body(request)
            record = {"description": _text(body, "description"),
                      "public": _flag(body, "public", False)}
            with cat.lock:
                cat.state["collections"][c] = {**record, "creator": relay.user(request)}
                _undelete(cat.state, c)
                cat.save()
            return json(collection_json(c), 201)
        relay.known_collection(c)
        if request.method == "PUT":
            body = await _json_body(request)
            _only(body, {"name", "description", "public"})
            _same_name(body, c, "collection")
            changes: dict[str, Any] = {}
            if "description" in body:
                changes["description"] = _text(body, "description")
            if "public" in body:
                changes["public"] = _flag(body, "public", False)
            with cat.lock:
                cat.state["collections"].setdefault(c, {}).update(changes)
                cat.save()
            return json(collection_json(c))
        # DELETE
        if cat.experiment_names(c):
            raise bad_request(INTEGRITY_ERROR, f"Cannot delete {c}: it has experiments. Delete "
                              "them first")
        with cat.lock:
            cat.state["collections"].pop(c, None)
            cat.state["deleted"].append(c)
            cat.save()
        return Response(status_code=204)

    # -- experiments ----------------------------------------------------------------------------
    def experiment_json(c: str, e: str) -> dict[str, Any]:
        cat = relay.catalog
        stored = cat.state["experiments"].get(f"{c}/{e}")
        chans = cat.channel_names(c, e)
        if stored is None:
            metas = [relay.remote(x).meta for x in cat.experiment_channels(c, e)]
            levels = max(len(m.scales) for m in metas)
            stored = {"coord_frame": cat.frame_name(c, e), "num_hierarchy_levels": levels,
                      "hierarchy_method": _hierarchy(metas[0]), "num_time_samples": 1,
                      "time_step": 0, "time_step_unit": "seconds", "description": ""}
        return {"name": e, "collection": c, "channels": chans,
                "description": stored.get("description", ""),
                "coord_frame": stored["coord_frame"],
                "num_hierarchy_levels": stored["num_hierarchy_levels"],
                "hierarchy_method": stored["hierarchy_method"],
                "num_time_samples": stored.get("num_time_samples", 1),
                # intern refuses a null time unit: bossDB's defaults stand in
                "time_step": stored.get("time_step") or 0,
                "time_step_unit": stored.get("time_step_unit") or "seconds",
                "creator": stored.get("creator", "voxgate"),
                "public": stored.get("public", relay.config.auth.public_read)}

    async def list_experiments(request: Request) -> Response:
        c = request.path_params["c"]
        relay.authorize(request, c, write=False)
        return json({"experiments": await run(lambda: relay.catalog.experiment_names(c))})

    async def experiment(request: Request) -> Response:
        c, e = request.path_params["c"], request.path_params["e"]
        relay.authorize(request, c, write=request.method != "GET")
        cat = relay.catalog
        key = f"{c}/{e}"
        if request.method == "GET":
            relay.known_experiment(c, e)
            return json(await run(lambda: experiment_json(c, e)))
        if request.method == "POST":
            _name(e, "experiment")
            relay.known_collection(c)
            if e in cat.experiment_names(c):
                raise bad_request(RESOURCE_EXISTS, f"Experiment {e} already exists in {c}")
            body = await _json_body(request)
            record = _experiment_fields(body, defaults=True)
            frame = body.get("coord_frame")
            if not isinstance(frame, str):
                raise _invalid(f"coord_frame must be the name of a coordinate frame (a string), "
                               f"got {_kind(frame)}")
            frames = await run(frame_index)
            users = await run(frame_users)
            if frame not in frames or not frame_visible(request, frame, users):
                raise _invalid(f"coord_frame {_short(frame)} does not exist; create it first")
            if record["num_time_samples"] != 1:
                raise _invalid("this relay stores one time sample per channel")
            with cat.lock:
                cat.state["experiments"][key] = {
                    **record, "coord_frame": frame, "creator": relay.user(request)}
                _undelete(cat.state, c, e)
                cat.save()
            return json(experiment_json(c, e), 201)
        relay.known_experiment(c, e)
        if request.method == "PUT":
            body = await _json_body(request)
            _only(body, {"name", "description", "num_hierarchy_levels", "hierarchy_method",
                         "num_time_samples", "time_step", "time_step_unit", "public"})
            _same_name(body, e, "experiment")
            changes = _experiment_fields(body, defaults=False)
            current = await run(lambda: experiment_json(c, e))
            for k in ("num_hierarchy_levels", "hierarchy_method", "num_time_samples"):
                if k in changes and changes[k] != current[k]:
                    raise _invalid(f"{k} cannot change once the experiment holds channels"
                                   if current["channels"] else f"{k} cannot change on this relay")
            with cat.lock:
                stored = cat.state["experiments"].setdefault(key, {
                    k: current[k] for k in ("coord_frame", "num_hierarchy_levels",
                                            "hierarchy_method", "num_time_samples", "time_step",
                                            "time_step_unit", "description")})
                stored.update(changes)
                cat.save()
            return json(experiment_json(c, e))
        if cat.channel_names(c, e):
            raise bad_request(INTEGRITY_ERROR, f"Cannot delete {e}: it has channels. Delete them "
                              "first")
        with cat.lock:
            cat.state["experiments"].pop(key, None)
            cat.state["deleted"].append(key)
            cat.save()
        return Response(status_code=204)

    # -- coordinate frames ----------------------------------------------------------------------
    async def list_coords(request: Request) -> Response:
        relay.authorize(request, None, write=False)
        frames = await run(frame_index)
        users = await run(frame_users)
        return json({"coords": sorted(n for n in frames if frame_visible(request, n, users))})

    async def coord(request: Request) -> Response:
        name = request.path_params["cf"]
        token = relay.authorize(request, None, write=request.method != "GET")
        cat = relay.catalog
        frames = await run(frame_index)
        if request.method == "POST":
            _name(name, "coordinate frame")
            if name in frames:
                raise bad_request(RESOURCE_EXISTS, f"Coordinate frame {name} already exists")
            body = await _json_body(request)
            rec = _frame_record(name, body)
            with cat.lock:
                cat.state["coords"][name] = {**rec, "creator": relay.user(request),
                                             "owner": _owner(token)}
                _undelete(cat.state, "coord", name)
                cat.save()
            return json(rec, 201)
        if name not in frames:
            raise not_found(f"{name} does not exist.")
        users = await run(frame_users)
        if not frame_visible(request, name, users):
            raise BossHTTPError(403, MISSING_PERMISSION, "This user does not have the required "
                                f"permissions: the token may not read coordinate frame {name} "
                                "(it neither created it nor may read a collection that uses it)")
        if request.method == "GET":
            return json(_frame_json(await run(lambda: frame_record(name, frames[name]))))
        stored = cat.state["coords"].get(name)
        if stored is None:
            raise BossHTTPError(403, MISSING_PERMISSION, f"coordinate frame {name} is derived "
                                "from the relay's upstream volumes and cannot be changed")
        if not is_admin(token) and (token is None or stored.get("owner") != _owner(token)):
            what = "update" if request.method == "PUT" else "delete"
            raise BossHTTPError(403, MISSING_PERMISSION, "This user does not have the required "
                                f"permissions: only the token that created coordinate frame "
                                f"{name}, or an admin token, may {what} it")
        if request.method == "PUT":
            body = await _json_body(request)
            if set(body) - {"name", "description"}:
                raise _invalid("only name and description of a coordinate frame can be updated")
            _same_name(body, name, "coordinate frame")
            changes = {"description": _text(body, "description")} if "description" in body \
                else {}
            with cat.lock:
                stored.update(changes)
                cat.save()
            return json(_frame_json(stored))
        users_of = [k for k, v in cat.state["experiments"].items() if v.get("coord_frame") == name
                    and not cat.deleted(*k.split("/"))]
        if users_of:
            raise bad_request(INTEGRITY_ERROR, f"coordinate frame {name} is used by {users_of}")
        with cat.lock:
            cat.state["coords"].pop(name)
            cat.save()
        return Response(status_code=204)

    # -- channels -------------------------------------------------------------------------------
    async def list_channels(request: Request) -> Response:
        c, e = request.path_params["c"], request.path_params["e"]
        relay.authorize(request, c, write=False)
        return json({"channels": await run(lambda: relay.catalog.channel_names(c, e))})

    def channel_links(body: dict[str, Any], key: str, c: str, e: str,
                      ch: str) -> list[str]:
        """``sources`` / ``related``: names of other channels of the same experiment."""
        names = _names(body, key)
        known = set(relay.catalog.channel_names(c, e)) - {ch}
        missing = [n for n in names if n not in known]
        if missing:
            raise _invalid(f"{key} must name other channels of {c}/{e}; "
                           f"{', '.join(missing[:5])} {'is' if len(missing) == 1 else 'are'} not "
                           "one")
        return names

    async def channel(request: Request) -> Response:
        c, e, ch = (request.path_params[k] for k in ("c", "e", "ch"))
        relay.authorize(request, c, write=request.method != "GET")
        cat = relay.catalog
        key = f"{c}/{e}/{ch}"
        if request.method == "GET":
            entry = relay.channel(c, e, ch)
            return json(await run(lambda: _channel_json(relay, entry)))
        if request.method == "POST":
            _name(ch, "channel")
            if len(ch) > _STORED_NAME_MAX:
                raise _invalid(f"channel name is {len(ch)} characters long; a channel this relay "
                               f"stores is the file {{name}}.zarr, so its name is at most "
                               f"{_STORED_NAME_MAX} characters")
            relay.known_experiment(c, e)
            if ch in cat.channel_names(c, e):
                raise bad_request(RESOURCE_EXISTS, f"Channel {ch} already exists in {c}/{e}")
            body = await _json_body(request)
            # the whole request is checked before anything is created
            clean: dict[str, Any] = {
                "type": _choice(body, "type", "image", ("image", "annotation")),
                "description": _text(body, "description"),
                "public": _flag(body, "public", False),
                "base_resolution": _integer(body, "base_resolution", 0, 0, 0),
                "default_time_sample": _integer(body, "default_time_sample", 0, 0, 0),
                "sources": channel_links(body, "sources", c, e, ch),
                "related": channel_links(body, "related", c, e, ch),
            }
            clean["datatype"] = _choice(body, "datatype", "uint64" if clean["type"] ==
                                        "annotation" else "uint8", CHANNEL_DATATYPES)
            entry = await run(lambda: relay.create_local_channel(c, e, ch, clean,
                                                                 relay.user(request)))
            return json(await run(lambda: _channel_json(relay, entry)), 201)
        entry = relay.channel(c, e, ch)
        if request.method == "PUT":
            body = await _json_body(request)
            _only(body, {"name", "description", "sources", "related", "public",
                         "base_resolution"})
            _same_name(body, ch, "channel")
            _integer(body, "base_resolution", 0, 0, 0)
            changes: dict[str, Any] = {}
            if "description" in body:
                changes["description"] = _text(body, "description")
            if "public" in body:
                changes["public"] = _flag(body, "public", False)
            for k in ("sources", "related"):
                if k in body:
                    changes[k] = channel_links(body, k, c, e, ch)
            with cat.lock:
                cat.state["channels"].setdefault(key, {}).update(changes)
                cat.save()
            return json(await run(lambda: _channel_json(relay, entry)))
        if not entry.local:
            raise BossHTTPError(403, MISSING_PERMISSION, f"channel {key} comes from the relay's "
                                "configuration and cannot be deleted through the API")
        await run(lambda: relay.delete_local_channel(entry))
        return Response(status_code=204)

    # -- cutouts --------------------------------------------------------------------------------
    async def cutout(request: Request) -> Response:
        if request.method == "GET":
            cut = await run(lambda: _Cutout(relay, request, write=False))
            arr = await run(cut.read)
            if cut.time is not None:
                arr = arr[np.newaxis]
            accept = request.headers.get("accept", "application/blosc").lower()
            return await run(lambda: _encode_response(arr, accept))
        cut = await run(lambda: _Cutout(relay, request, write=True))
        if not cut.entry.writable:
            raise BossHTTPError(403, MISSING_PERMISSION,
                                f"channel {'/'.join(cut.entry.key)} is read-only on this relay")
        body = await relay.read_body(request, math.prod(cut.shape) * cut.dtype.itemsize)
        ctype = request.headers.get("content-type", "")
        arr = await run(lambda: decode_body(body, ctype, cut.dtype, cut.shape))
        data = arr[0] if cut.time is not None else arr
        await run(lambda: relay.write(cut.remote, cut.box, data, cut.res))
        return Response(status_code=201)

    async def to_black(request: Request) -> Response:
        cut = await run(lambda: _Cutout(relay, request, write=True))
        data = np.zeros(tuple(cut.box.shape), dtype=cut.dtype)
        await run(lambda: relay.write(cut.remote, cut.box, data, cut.res))
        return Response(status_code=200)

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
        box = await run(lambda: relay.bounding_box(remote, ident, res)) if fits else None
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

    # -- metadata -------------------------------------------------------------------------------
    async def metadata(request: Request) -> Response:
        p = request.path_params
        parts = [p[k] for k in ("c", "e", "ch") if p.get(k)]
        relay.authorize(request, parts[0], write=request.method != "GET")
        if len(parts) == 1:
            relay.known_collection(parts[0])
        elif len(parts) == 2:
            relay.known_experiment(*parts)
        else:
            relay.channel(*parts)
        store = relay.catalog.state["meta"].setdefault("/".join(parts), {})
        key = request.query_params.get("key")
        value = request.query_params.get("value")
        if request.method == "GET":
            if key is None:
                return json({"keys": sorted(store)})
            if key not in store:
                raise bad_request(INVALID_POST_ARGUMENT,
                                  f"Invalid request. Key {key} Not found in the database")
            return json({"key": key, "value": store[key]})
        if key is None:
            raise bad_request(INVALID_POST_ARGUMENT, "Missing optional argument key in request")
        if request.method in ("POST", "PUT"):
            if value is None:
                raise bad_request(INVALID_POST_ARGUMENT,
                                  "Missing optional argument value in request")
            if request.method == "POST" and key in store:
                raise bad_request(INVALID_POST_ARGUMENT, f"Invalid request. The key {key} "
                                  "already exists")
            if request.method == "PUT" and key not in store:
                raise bad_request(INVALID_POST_ARGUMENT,
                                  f"Invalid request. Key {key} Not found in the database")
            store[key] = value
            relay.catalog.save()
            return Response(status_code=201 if request.method == "POST" else 200)
        if key not in store:
            raise bad_request(INVALID_POST_ARGUMENT,
                              f"Invalid request. Key {key} Not found in the database")
        del store[key]
        relay.catalog.save()
        return Response(status_code=204)

    # -- downsample status ----------------------------------------------------------------------
    async def downsample(request: Request) -> Response:
        p = request.path_params
        relay.authorize(request, p["c"], write=request.method != "GET")
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

    c, e, ch = "{c}", "{e}", "{ch}"
    res = "{res}/{x}/{y}/{z}"
    cut_methods = ["GET", "POST"]
    rw = ["GET", "POST", "PUT", "DELETE"]
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
        Route(f"/v1/cutout/to_black/{c}/{e}/{ch}/{res}", to_black, methods=["PUT"]),
        Route(f"/v1/cutout/to_black/{c}/{e}/{ch}/{res}/", to_black, methods=["PUT"]),
        Route(f"/v1/cutout/to_black/{c}/{e}/{ch}/{res}/{{t}}", to_black, methods=["PUT"]),
        Route(f"/v1/cutout/to_black/{c}/{e}/{ch}/{res}/{{t}}/", to_black, methods=["PUT"]),
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


def _encode_response(arr: np.ndarray, accept: str) -> Response:
    arr = np.ascontiguousarray(arr)
    if "application/npygz" in accept:
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return Response(zlib.compress(buf.getvalue(), 1), media_type="application/npygz")
    if "application/blosc-python" in accept and "application/blosc," not in accept + ",":
        raise BossHTTPError(406, 0, "application/blosc-python responses need pickle; ask for "
                            "application/blosc", drf=True)
    if "image/jpeg" in accept and "application/blosc" not in accept:
        raise BossHTTPError(406, 0, "this relay serves cutouts as application/blosc or "
                            "application/npygz", drf=True)
    # lz4 at level 5: a 4 MiB cutout compresses in a few ms; any blosc decompressor reads it
    body = blosc.compress(arr.tobytes(), typesize=arr.dtype.itemsize, cname="lz4", clevel=5)
    return Response(body, media_type="application/blosc")


_JSON_LIMIT = 2**20


async def _json_body(request: Request) -> dict[str, Any]:
    """A project-service JSON record; a body too large for one is refused before it is read."""
    too_large = BossHTTPError(413, REQUEST_TOO_LARGE, f"the body is larger than a JSON record "
                              f"can be ({_JSON_LIMIT} bytes)")
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isascii() or not length.isdigit():
            raise bad_request(INVALID_POST_ARGUMENT, "bad Content-Length")
        if int(length) > _JSON_LIMIT:
            raise too_large
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > _JSON_LIMIT:
            raise too_large
        parts.append(part)
    body = b"".join(parts)
    if not body:
        return {}
    import json as _json

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"the number {text[:40]} is out of range (not a finite float)")
        return value

    def constant(text: str) -> float:
        raise ValueError(f"{text} is not a JSON number")

    try:
        data = _json.loads(body, parse_float=finite, parse_constant=constant)
    except RecursionError:
        raise bad_request(INVALID_POST_ARGUMENT, "the body is not valid JSON here: it is nested "
                          "too deeply (a project record is a flat object)") from None
    except ValueError as exc:
        raise bad_request(INVALID_POST_ARGUMENT, f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request(INVALID_POST_ARGUMENT, "the body must be a JSON object")
    return data


def _name(name: str, what: str) -> str:
    try:
        return check_name(name, what)
    except InvalidRequestError as exc:
        raise bad_request(INVALID_POST_ARGUMENT, str(exc)) from None


# -- checking project-service records: the whole request is checked before anything changes ---
_MAX_DESCRIPTION = 4096  # bossDB's CharField(max_length=4096)
_MAX_EXTENT = 2**31 - 1  # bossDB keeps frame extents in 32-bit IntegerFields
_MAX_VOXEL_SIZE = 1e12
_MAX_LEVELS = 16
_STORED_NAME_MAX = 250  # a stored channel is the file NAME.zarr, and file names stop at 255
_TIME_UNITS = ("nanoseconds", "microseconds", "milliseconds", "seconds")
_VOXEL_UNITS = ("nanometers", "micrometers", "millimeters", "centimeters")
_FRAME_FIELDS = ("name", "description", "x_start", "x_stop", "y_start", "y_stop", "z_start",
                 "z_stop", "x_voxel_size", "y_voxel_size", "z_voxel_size", "voxel_unit")


def _invalid(message: str) -> BossHTTPError:
    return bad_request(INVALID_POST_ARGUMENT, message)


def _kind(value: Any) -> str:
    """A JSON value's type, as a message names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    return "an array" if isinstance(value, list) else "an object"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    readonly = set(body) - allowed
    if readonly:
        shown = sorted(_short(k) for k in readonly)[:10]
        raise _invalid(f"Cannot update the following readonly fields: {', '.join(shown)} "
                       f"(updatable: {', '.join(sorted(allowed))})")


def _same_name(body: dict[str, Any], name: str, what: str) -> None:
    if "name" in body and body["name"] != name:
        raise _invalid(f"renaming a {what} is not supported (name {_short(body['name'])} in the "
                       f"body, {name!r} in the URL)")


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _invalid(f"{key} must be a string, got {_kind(value)}")
    if len(value) > _MAX_DESCRIPTION:
        raise _invalid(f"{key} is {len(value)} characters long; at most {_MAX_DESCRIPTION}")
    return value


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise _invalid(f"{key} must be true or false, got {_kind(value)}")
    return value


def _integer(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int:
    value = body.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{key} must be an integer, got {_kind(value)}")
    if not lo <= value <= hi:
        allowed = f"must be {lo}" if lo == hi else f"must be from {lo} to {hi}"
        raise _invalid(f"{key} {allowed}, got {value}")
    return value


def _choice(body: dict[str, Any], key: str, default: str | None,
            choices: tuple[str, ...]) -> str | None:
    value = body.get(key, default)
    if value is None and default is None:
        return None
    if not isinstance(value, str) or value not in choices:
        raise _invalid(f"{key} must be one of {', '.join(choices)}, got {_kind(value)}")
    return value


def _names(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(f"{key} must be a list of channel names, got {_kind(value)}")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise _invalid(f"{key} must be a list of channel names; it holds {_kind(item)}")
        if item not in out:
            out.append(_name(item, f"{key} entry"))
    return out


def _experiment_fields(body: dict[str, Any], *, defaults: bool) -> dict[str, Any]:
    """The experiment fields of a POST (every one, with bossDB's defaults) or a PUT (the ones
    present), each checked."""
    out: dict[str, Any] = {}

    def has(k: str) -> bool:
        return defaults or k in body

    if has("description"):
        out["description"] = _text(body, "description")
    if has("public"):
        out["public"] = _flag(body, "public", False)
    if has("num_hierarchy_levels"):
        out["num_hierarchy_levels"] = _integer(body, "num_hierarchy_levels", 1, 1, _MAX_LEVELS)
    if has("hierarchy_method"):
        out["hierarchy_method"] = _choice(body, "hierarchy_method", "anisotropic", _HIERARCHY)
    if has("num_time_samples"):
        out["num_time_samples"] = _integer(body, "num_time_samples", 1, 1, _MAX_EXTENT)
    if has("time_step"):
        step = body.get("time_step")
        out["time_step"] = None if step is None else _integer(body, "time_step", None, 0,
                                                              _MAX_EXTENT)
    if has("time_step_unit"):
        out["time_step_unit"] = _choice(body, "time_step_unit", None, _TIME_UNITS)
    return out


def _frame_record(name: str, body: dict[str, Any]) -> dict[str, Any]:
    """A new coordinate frame's record, every field checked (extents 32-bit integers as in
    bossDB, voxel sizes finite and positive)."""
    rec: dict[str, Any] = {"name": name, "description": _text(body, "description")}
    for ax in "xyz":
        for end in ("start", "stop"):
            if f"{ax}_{end}" not in body:
                raise _invalid(f"invalid coordinate frame: {ax}_{end} is required")
        a = _integer(body, f"{ax}_start", None, 0, _MAX_EXTENT - 1)
        b = _integer(body, f"{ax}_stop", None, 1, _MAX_EXTENT)
        if not a < b:
            raise _invalid(f"invalid coordinate frame: {ax}_start ({a}) must be below {ax}_stop "
                           f"({b})")
        rec[f"{ax}_start"], rec[f"{ax}_stop"] = a, b
    for ax in "xyz":
        v = body.get(f"{ax}_voxel_size", 1.0)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _invalid(f"invalid coordinate frame: {ax}_voxel_size must be a number, got "
                           f"{_kind(v)}")
        if not (math.isfinite(v) and 0 < v <= _MAX_VOXEL_SIZE):
            raise _invalid(f"invalid coordinate frame: {ax}_voxel_size must be a finite number "
                           f"above 0 and at most {_MAX_VOXEL_SIZE:g}, got {v!r}")
        rec[f"{ax}_voxel_size"] = float(v)
    rec["voxel_unit"] = _choice(body, "voxel_unit", "nanometers", _VOXEL_UNITS)
    return rec


def _frame_json(rec: dict[str, Any]) -> dict[str, Any]:
    """A frame as bossDB shows it (the relay's own bookkeeping left out)."""
    return {k: rec[k] for k in _FRAME_FIELDS if k in rec}


def _owner(token: str | None) -> str:
    """Who created a frame, for its authorization: a digest of the token, never the token."""
    if token is None:
        return "anonymous"
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:32]


def _undelete(state: dict[str, Any], *parts: str) -> None:
    key = "/".join(parts)
    while key in state["deleted"]:
        state["deleted"].remove(key)
