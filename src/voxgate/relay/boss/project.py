"""The project service: collections, experiments, coordinate frames and channels (who may see
and change which), and the key-value metadata on them."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ...meta import VolumeMeta
from ..catalog import ChannelEntry
from ..errors import (
    INTEGRITY_ERROR,
    INVALID_POST_ARGUMENT,
    MISSING_PERMISSION,
    RESOURCE_NOT_FOUND,
    BossHTTPError,
    bad_request,
    not_found,
)
from ..state import CHANNEL_DATATYPES, Relay
from .codecs import _json_body, wire_dtype
from .records import (
    _STORED_NAME_MAX,
    _choice,
    _experiment_fields,
    _flag,
    _frame_json,
    _frame_record,
    _integer,
    _invalid,
    _kind,
    _name,
    _names,
    _only,
    _owner,
    _same_name,
    _short,
    _text,
    _undelete,
)
from .routing import Handler, is_admin, json, reads, runner

#: the largest base_resolution a channel takes: bossDB's cutout URLs have a one-digit
#: resolution (bossspatialdb/urls.py, `\d`), so a base above 9 could never be read
BASE_RESOLUTION_MAX = 9


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
        "base_resolution": relay.base_resolution(entry),
        "datatype": wire_dtype(meta).name,
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


def _missing(name: str) -> BossHTTPError:
    """The project service's 404 (bosscore/error.py BossResourceNotFoundError)."""
    return not_found(f"{name} does not exist.")


def _exists(name: str) -> BossHTTPError:
    """bossDB's answer to creating a name that exists: its serializer's unique-name error,
    400 with code 1003 (bosscore/views/views_resource.py), not 6002."""
    return bad_request(INVALID_POST_ARGUMENT, f"{{'name': ['{name} with this name already "
                       "exists.']}")


def project_handlers(relay: Relay) -> dict[str, Handler]:
    """The collection, experiment, coord, channel and meta endpoints, bound to ``relay``."""
    run = runner(relay)

    # -- the project service's lookups: its 404 names the missing resource only ----------------
    def known_collection(c: str) -> str:
        if c not in relay.catalog.collection_names():
            raise _missing(c)
        return c

    def known_experiment(c: str, e: str) -> None:
        if e not in relay.catalog.experiment_names(known_collection(c)):
            raise _missing(e)

    def known_channel(c: str, e: str, ch: str) -> ChannelEntry:
        known_experiment(c, e)
        try:
            return relay.channel(c, e, ch)
        except BossHTTPError as exc:
            if exc.status == 404 and exc.code == RESOURCE_NOT_FOUND:
                raise _missing(ch) from None
            raise

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
        if is_admin(relay, token):
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
        write = not reads(request)
        relay.authorize(request, c, write=write)
        cat = relay.catalog
        if reads(request):
            return json(await run(lambda: collection_json(known_collection(c))))
        if request.method == "POST":
            check = _name(c, "collection")
            if check in cat.collection_names():
                raise _exists("collection")
            body = await _json_body(request)
            record = {"description": _text(body, "description"),
                      "public": _flag(body, "public", False)}
            with cat.lock:
                # again under the lock (another worker process may have created it meanwhile)
                if c in cat.collection_names():
                    raise _exists("collection")
                cat.state["collections"][c] = {**record, "creator": relay.user(request)}
                _undelete(cat.state, c)
                cat.save()
            return json(collection_json(c), 201)
        known_collection(c)
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
            raise bad_request(INTEGRITY_ERROR, f"Collection {c} has experiments that reference "
                              "it and cannot be deleted.Please delete the experiments first.")
        with cat.lock:
            # again under the lock (another worker process may have made one meanwhile); the
            # name is not kept as deleted: with no experiment and no record it is gone, and a
            # channel added under it to the config later is served
            if cat.experiment_names(c):
                raise bad_request(INTEGRITY_ERROR, f"Collection {c} has experiments that "
                                  "reference it and cannot be deleted.Please delete the "
                                  "experiments first.")
            cat.state["collections"].pop(c, None)
            cat.forget_meta(c)  # (what the workers kept of channels it once held)
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
        relay.authorize(request, c, write=not reads(request))
        cat = relay.catalog
        key = f"{c}/{e}"
        if reads(request):
            known_experiment(c, e)
            return json(await run(lambda: experiment_json(c, e)))
        if request.method == "POST":
            _name(e, "experiment")
            known_collection(c)
            if e in cat.experiment_names(c):
                raise bad_request(INVALID_POST_ARGUMENT, "{'non_field_errors': ['The fields "
                                  "collection, name must make a unique set.']}")
            body = await _json_body(request)
            record = _experiment_fields(body, defaults=True)
            frame = body.get("coord_frame")
            if frame is None:
                raise _invalid("This request requires a valid coordinate frame")
            if not isinstance(frame, str):
                raise _invalid(f"coord_frame must be the name of a coordinate frame (a string), "
                               f"got {_kind(frame)}")
            frames = await run(frame_index)
            users = await run(frame_users)
            if frame not in frames or not frame_visible(request, frame, users):
                # bossDB: CoordinateFrame.DoesNotExist -> BossResourceNotFoundError, a 404
                raise _missing(_short(frame).strip("'"))
            if record["num_time_samples"] != 1:
                raise _invalid("this relay stores one time sample per channel")
            with cat.lock:
                if e in cat.experiment_names(c):  # again under the lock, as for collections
                    raise bad_request(INVALID_POST_ARGUMENT, "{'non_field_errors': ['The fields "
                                  "collection, name must make a unique set.']}")
                cat.state["experiments"][key] = {
                    **record, "coord_frame": frame, "creator": relay.user(request)}
                _undelete(cat.state, c, e)
                cat.save()
            return json(experiment_json(c, e), 201)
        known_experiment(c, e)
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
            raise bad_request(INTEGRITY_ERROR, f" Experiment {e} has channels that reference it "
                              "and cannot be deleted.Please delete the channels first.")
        with cat.lock:
            # again under the lock, and not kept as deleted (as for collections)
            if cat.channel_names(c, e):
                raise bad_request(INTEGRITY_ERROR, f" Experiment {e} has channels that "
                                  "reference it and cannot be deleted.Please delete the "
                                  "channels first.")
            cat.state["experiments"].pop(key, None)
            cat.forget_meta(c, e)  # (what the workers kept of channels it once held)
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
        token = relay.authorize(request, None, write=not reads(request))
        cat = relay.catalog
        frames = await run(frame_index)
        if request.method == "POST":
            _name(name, "coordinate frame")
            if name in frames:
                raise _exists("coordinate frame")
            body = await _json_body(request)
            rec = _frame_record(name, body)
            with cat.lock:
                if name in cat.state["coords"]:  # again under the lock, as for collections
                    raise _exists("coordinate frame")
                cat.state["coords"][name] = {**rec, "creator": relay.user(request),
                                             "owner": _owner(token)}
                _undelete(cat.state, "coord", name)
                cat.save()
            return json(rec, 201)
        if name not in frames:
            raise _missing(name)
        users = await run(frame_users)
        if not frame_visible(request, name, users):
            raise BossHTTPError(403, MISSING_PERMISSION, "This user does not have the required "
                                f"permissions: the token may not read coordinate frame {name} "
                                "(it neither created it nor may read a collection that uses it)")
        if reads(request):
            return json(_frame_json(await run(lambda: frame_record(name, frames[name]))))
        stored = cat.state["coords"].get(name)
        if stored is None:
            raise BossHTTPError(403, MISSING_PERMISSION, f"coordinate frame {name} is derived "
                                "from the relay's upstream volumes and cannot be changed")
        if not is_admin(relay, token) and (token is None or stored.get("owner") != _owner(token)):
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
            raise bad_request(INTEGRITY_ERROR, f" Coordinate frame {name} has experiments that "
                              "reference it and cannot be deleted.Please delete the experiments "
                              "first.")
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
        relay.authorize(request, c, write=not reads(request))
        cat = relay.catalog
        key = f"{c}/{e}/{ch}"
        if reads(request):
            entry = known_channel(c, e, ch)
            return json(await run(lambda: _channel_json(relay, entry)))
        if request.method == "POST":
            _name(ch, "channel")
            if len(ch) > _STORED_NAME_MAX:
                raise _invalid(f"channel name is {len(ch)} characters long; a channel this relay "
                               f"stores is the file {{name}}.zarr, so its name is at most "
                               f"{_STORED_NAME_MAX} characters")
            known_experiment(c, e)
            if ch in cat.channel_names(c, e):
                raise bad_request(INVALID_POST_ARGUMENT, "{'non_field_errors': ['The fields "
                                  "experiment, name must make a unique set.']}")
            body = await _json_body(request)
            # the whole request is checked before anything is created
            clean: dict[str, Any] = {
                "type": _choice(body, "type", "image", ("image", "annotation")),
                "description": _text(body, "description"),
                "public": _flag(body, "public", False),
                # (bossDB's serializer takes any integer, no longer bounded by the
                # experiment's levels; its cutout URLs' resolution is one digit)
                "base_resolution": _integer(body, "base_resolution", 0, 0, BASE_RESOLUTION_MAX),
                "default_time_sample": _integer(body, "default_time_sample", 0, 0, 0),
                "sources": channel_links(body, "sources", c, e, ch),
                "related": channel_links(body, "related", c, e, ch),
            }
            clean["datatype"] = _choice(body, "datatype", "uint64" if clean["type"] ==
                                        "annotation" else "uint8", CHANNEL_DATATYPES)
            entry = await run(lambda: relay.create_local_channel(c, e, ch, clean,
                                                                 relay.user(request)))
            return json(await run(lambda: _channel_json(relay, entry)), 201)
        entry = known_channel(c, e, ch)
        if request.method == "PUT":
            body = await _json_body(request)
            _only(body, {"name", "description", "sources", "related", "public",
                         "base_resolution"})
            _same_name(body, ch, "channel")
            base = relay.base_resolution(entry)
            if "base_resolution" in body and \
                    _integer(body, "base_resolution", base, 0, BASE_RESOLUTION_MAX) != base:
                # (bossDB takes it and reads the same stored cuboids as other levels; the
                # relay's store keeps its levels from the base, so the base stays)
                raise _invalid(f"base_resolution of channel {ch} is {base} and cannot be "
                               "changed on this relay: its store holds levels from "
                               f"resolution {base}; create another channel for another base")
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

    # -- metadata -------------------------------------------------------------------------------
    async def metadata(request: Request) -> Response:
        # (bossmeta/views.py: a write's missing key/value is refused before the resource is
        # looked up; the messages are bossDB's)
        p = request.path_params
        parts = [p[k] for k in ("c", "e", "ch") if p.get(k)]
        key = request.query_params.get("key")
        value = request.query_params.get("value")
        auth, token = relay.config.auth, relay.token(request)
        if not auth.open and (token is None or token not in auth.tokens):
            # (DRF authenticates before the view runs: a missing or bad token is a 401 first)
            relay.authorize(request, parts[0], write=not reads(request))
        if request.method in ("POST", "PUT") and (not key or value is None):
            raise bad_request(INVALID_POST_ARGUMENT, "Missing optional argument key/value in the "
                              "request")
        if request.method == "DELETE" and not key:
            raise bad_request(INVALID_POST_ARGUMENT, "Missing optional argument key in the request")
        relay.authorize(request, parts[0], write=not reads(request))
        if len(parts) == 1:
            relay.known_collection(parts[0])
        elif len(parts) == 2:
            relay.known_experiment(*parts)
        else:
            relay.channel(*parts)
        path = "/".join(parts)
        if key:
            _check_meta_key(key)
        if reads(request):
            store = relay.catalog.state["meta"].get(path, {})
            if key is None:
                return json({"keys": sorted(store)})
            if key not in store:
                raise bad_request(INVALID_POST_ARGUMENT,
                                  f"Invalid request. Key {key} Not found in the database")
            return json({"key": key, "value": store[key]})
        assert key  # (checked above for every write)
        with relay.catalog.lock:
            # checked and changed under the state file's lock: two worker processes POSTing
            # one key cannot both succeed, and neither change is lost
            store = relay.catalog.state["meta"].setdefault(path, {})
            if request.method == "POST" and key in store:
                raise bad_request(INVALID_POST_ARGUMENT, f"Invalid request. The key {key} "
                                  "already exists")
            if request.method == "PUT" and key not in store:
                raise bad_request(INVALID_POST_ARGUMENT, f"Invalid request. The key {key} does "
                                  "not exists")
            if request.method == "DELETE" and key not in store:
                raise bad_request(INVALID_POST_ARGUMENT, f"[ERROR]- Key {key} not found ")
            if request.method == "DELETE":
                del store[key]
            else:
                store[key] = value
            relay.catalog.save()
        return Response(status_code={"POST": 201, "PUT": 200}.get(request.method, 204))

    return {"list_collections": list_collections, "collection": collection,
            "list_experiments": list_experiments, "experiment": experiment,
            "list_coords": list_coords, "coord": coord, "list_channels": list_channels,
            "channel": channel, "metadata": metadata}


#: bossDB keeps metadata in DynamoDB with the key as the table's sort key, at most 1024 bytes
#: (django/bossmeta/metadb.py); bossDB answers a longer one with DynamoDB's error, a 500.  (A
#: value has no limit of its own here: the URL that carries it is limited to 64 KiB by the
#: HTTP server, far below DynamoDB's 400 KB item.)
META_KEY_BYTES = 1024


def _check_meta_key(key: str) -> None:
    """A metadata key over :data:`META_KEY_BYTES` (UTF-8) is refused (400), never echoed whole."""
    n = len(key.encode("utf-8", "surrogatepass"))
    if n > META_KEY_BYTES:
        raise bad_request(INVALID_POST_ARGUMENT, f"metadata keys are at most {META_KEY_BYTES} "
                          f"bytes (UTF-8), got one of {n} starting {key[:40]!r}")
