"""bossDB's project service (collections, experiments, coordinate frames, channels), its
metadata, object (ids, bounding boxes, reserve), downsample, group and permission services."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any
from urllib.parse import quote

import numpy as np

from ...errors import InvalidRequestError, RemoteExistsError, RemoteNotFoundError, redact
from ...geometry import Box, VoxelSize
from .._http import json_of, server_answer
from .client import _client, boss_settings, check_name

_UNIT_NM = {"nanometers": 1.0, "micrometers": 1e3, "millimeters": 1e6, "centimeters": 1e7}
_DTYPES = ("uint8", "uint16", "uint32", "uint64")


# -- project service -----------------------------------------------------------------------------
class BossProject:
    """bossDB's project, metadata and object services: one client for one server and token.

    Records come back as the server's JSON dicts.  ``url``/``token`` default to the same
    configuration chain as ``bossdb://`` URLs.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 timeout: float = 60.0) -> None:
        self.settings = boss_settings(url, token)
        self.client = _client(self.settings, timeout, 8)

    def __repr__(self) -> str:
        return redact(f"<BossProject {self.settings.url}>")

    def _get(self, path: str, what: str, idempotent: bool = True) -> dict[str, Any]:
        """The JSON object of a GET (every bossDB record and listing is one); what the
        server answers that is none, or no JSON, is a CorruptChunkError naming the URL."""
        resp = self.client.request("GET", path, what=what, idempotent=idempotent)
        return dict(json_of(resp, what, dict))

    def _member(self, path: str, what: str, key: str, idempotent: bool = True) -> Any:
        """One member of a GET's JSON object (CorruptChunkError naming the URL if missing)."""
        doc = self._get(path, what, idempotent)
        with server_answer(f"{what}: {self.settings.url}{path.split('?')[0]} answered"):
            return doc[key]

    def _send(self, method: str, path: str, body: dict[str, Any] | None, expect: int,
              what: str) -> Any:
        resp = self.client.request(method, path, json=body, expect=expect, what=what)
        return json_of(resp, what, dict) if resp.content else None

    def _create(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        """POST a new resource.  bossDB answers an existing name with a 400 (its serializer's
        uniqueness error), as it does malformed fields: when the resource is there, that is a
        RemoteExistsError naming it, and any other 400 stays an InvalidRequestError."""
        try:
            return dict(self._send("POST", path, body, 201, f"creating {what}"))
        except InvalidRequestError as exc:
            try:
                self.client.request("GET", path, what=what)
            except (InvalidRequestError, RemoteNotFoundError):
                raise exc from None
            raise RemoteExistsError(f"bossDB {what} already exists on {self.settings.url}") \
                from exc

    # collections
    def list_collections(self) -> list[str]:
        return _names(self._member("/v1/collection/", "listing collections", "collections"))

    def get_collection(self, c: str) -> dict[str, Any]:
        return dict(self._get(f"/v1/collection/{check_name(c, 'collection')}", f"collection {c}"))

    def create_collection(self, c: str, description: str = "", *,
                          public: bool = False) -> dict[str, Any]:
        return self._create(f"/v1/collection/{check_name(c, 'collection')}",
                            {"name": c, "description": description, "public": public},
                            f"collection {c!r}")

    def update_collection(self, c: str, **fields: Any) -> dict[str, Any]:
        return dict(self._send("PUT", f"/v1/collection/{check_name(c, 'collection')}", fields,
                               200, f"updating collection {c}"))

    def delete_collection(self, c: str) -> None:
        self._send("DELETE", f"/v1/collection/{check_name(c, 'collection')}", None, 204,
                   f"deleting collection {c}")

    # experiments
    def list_experiments(self, c: str) -> list[str]:
        return _names(self._member(f"/v1/collection/{check_name(c, 'collection')}/experiment/",
                                   f"listing experiments of {c}", "experiments"))

    def _exp(self, c: str, e: str) -> str:
        return (f"/v1/collection/{check_name(c, 'collection')}/experiment/"
                f"{check_name(e, 'experiment')}")

    def get_experiment(self, c: str, e: str) -> dict[str, Any]:
        return dict(self._get(self._exp(c, e), f"experiment {c}/{e}"))

    def create_experiment(self, c: str, e: str, coord_frame: str, *, description: str = "",
                          num_hierarchy_levels: int = 1, hierarchy_method: str = "anisotropic",
                          num_time_samples: int = 1, time_step: int = 0,
                          time_step_unit: str = "seconds") -> dict[str, Any]:
        if hierarchy_method not in ("anisotropic", "isotropic"):
            raise InvalidRequestError(
                f"hierarchy_method must be anisotropic or isotropic, got {hierarchy_method!r}")
        body = {"name": e, "description": description,
                "coord_frame": check_name(coord_frame, "coordinate frame"),
                "num_hierarchy_levels": num_hierarchy_levels,
                "hierarchy_method": hierarchy_method, "num_time_samples": num_time_samples,
                "collection": c, "time_step": time_step, "time_step_unit": time_step_unit}
        return self._create(self._exp(c, e), body, f"experiment {c}/{e}")

    def update_experiment(self, c: str, e: str, **fields: Any) -> dict[str, Any]:
        return dict(self._send("PUT", self._exp(c, e), fields, 200, f"updating experiment {e}"))

    def delete_experiment(self, c: str, e: str) -> None:
        self._send("DELETE", self._exp(c, e), None, 204, f"deleting experiment {c}/{e}")

    # coordinate frames
    def list_coordinate_frames(self) -> list[str]:
        return _names(self._member("/v1/coord/", "listing coordinate frames", "coords"))

    def get_coordinate_frame(self, name: str) -> dict[str, Any]:
        return dict(self._get(f"/v1/coord/{check_name(name, 'coordinate frame')}",
                              f"coordinate frame {name}"))

    def create_coordinate_frame(self, name: str, box: Box, voxel_size: Any, *,
                                unit: str = "nanometers",
                                description: str = "") -> dict[str, Any]:
        """A frame covering ``box`` (z, y, x voxels) with ``voxel_size`` (z, y, x) in ``unit``."""
        if unit not in _UNIT_NM:
            raise InvalidRequestError(f"unit must be one of {sorted(_UNIT_NM)}, got {unit!r}")
        vs = VoxelSize.of(voxel_size)
        if isinstance(voxel_size, VoxelSize) and voxel_size.unit == "nm":
            unit = "nanometers"
        body = {"name": name, "description": description,
                "x_start": box.start.x, "x_stop": box.stop.x, "y_start": box.start.y,
                "y_stop": box.stop.y, "z_start": box.start.z, "z_stop": box.stop.z,
                "x_voxel_size": vs.x, "y_voxel_size": vs.y, "z_voxel_size": vs.z,
                "voxel_unit": unit}
        return self._create(f"/v1/coord/{check_name(name, 'coordinate frame')}", body,
                            f"coordinate frame {name!r}")

    def update_coordinate_frame(self, name: str, **fields: Any) -> dict[str, Any]:
        return dict(self._send("PUT", f"/v1/coord/{check_name(name, 'coordinate frame')}",
                               fields, 200, f"updating coordinate frame {name}"))

    def delete_coordinate_frame(self, name: str) -> None:
        self._send("DELETE", f"/v1/coord/{check_name(name, 'coordinate frame')}", None, 204,
                   f"deleting coordinate frame {name}")

    # channels
    def list_channels(self, c: str, e: str) -> list[str]:
        return _names(self._member(self._exp(c, e) + "/channel/",
                                   f"listing channels of {c}/{e}", "channels"))

    def _chan(self, c: str, e: str, ch: str) -> str:
        return self._exp(c, e) + f"/channel/{check_name(ch, 'channel')}"

    def get_channel(self, c: str, e: str, ch: str) -> dict[str, Any]:
        return dict(self._get(self._chan(c, e, ch), f"channel {c}/{e}/{ch}"))

    def create_channel(self, c: str, e: str, ch: str, *, type: str = "image",
                       datatype: str = "uint8", description: str = "", base_resolution: int = 0,
                       sources: tuple[str, ...] = (),
                       related: tuple[str, ...] = ()) -> dict[str, Any]:
        if type not in ("image", "annotation"):
            raise InvalidRequestError(f"type must be image or annotation, got {type!r}")
        if datatype not in _DTYPES:
            raise InvalidRequestError(f"datatype must be one of {_DTYPES}, got {datatype!r}")
        body = {"name": ch, "description": description, "type": type, "datatype": datatype,
                "base_resolution": base_resolution, "default_time_sample": 0,
                "sources": list(sources), "related": list(related)}
        return self._create(self._chan(c, e, ch), body, f"channel {c}/{e}/{ch}")

    def update_channel(self, c: str, e: str, ch: str, **fields: Any) -> dict[str, Any]:
        return dict(self._send("PUT", self._chan(c, e, ch), fields, 200,
                               f"updating channel {c}/{e}/{ch}"))

    def delete_channel(self, c: str, e: str, ch: str) -> None:
        self._send("DELETE", self._chan(c, e, ch), None, 204, f"deleting channel {c}/{e}/{ch}")

    # metadata
    def metadata(self, c: str, e: str | None = None, ch: str | None = None) -> BossMetadata:
        """The key/value metadata of a collection, experiment or channel, as a mapping."""
        parts = [check_name(c, "collection")]
        if e is not None:
            parts.append(check_name(e, "experiment"))
            if ch is not None:
                parts.append(check_name(ch, "channel"))
        return BossMetadata(self, "/".join(parts))

    # object services
    @staticmethod
    def _data(c: str, e: str, ch: str) -> str:
        """``c/e/ch`` for a data-service URL, each name checked (a '/' or '..' in one would
        name another resource)."""
        return (f"{check_name(c, 'collection')}/{check_name(e, 'experiment')}/"
                f"{check_name(ch, 'channel')}")

    def ids_in_region(self, c: str, e: str, ch: str, box: Box, scale: int = 0) -> np.ndarray:
        x, y, z = (f"{a}:{b}" for a, b in zip(box.start.xyz(), box.stop.xyz(), strict=True))
        path = f"/v1/ids/{self._data(c, e, ch)}/{int(scale)}/{x}/{y}/{z}/"
        ids = self._member(path, "ids in region", "ids")
        with server_answer(f"ids in region: {self.settings.url}{path} answered"):
            return np.array(sorted(int(i) for i in ids), dtype=np.uint64)

    def bounding_box(self, c: str, e: str, ch: str, ident: int, scale: int = 0, *,
                     tight: bool = True) -> Box:
        path = f"/v1/boundingbox/{self._data(c, e, ch)}/{int(scale)}/{int(ident)}/"
        d = self._get(f"{path}?type={'tight' if tight else 'loose'}", f"bounding box of {ident}")
        with server_answer(f"bounding box of {ident}: {self.settings.url}{path} answered"):
            return _range_box(d)

    def reserve_ids(self, c: str, e: str, ch: str, count: int) -> int:
        if int(count) < 1:
            raise InvalidRequestError(f"reserve at least one id, not {count}")
        # (a GET that takes ids: sent again after a 5xx, it would take a second range)
        path = f"/v1/reserve/{self._data(c, e, ch)}/{int(count)}"
        start = self._member(path, "reserving ids", "start_id", idempotent=False)
        with server_answer(f"reserving ids: {self.settings.url}{path} answered"):
            return int(start)

    # downsampling
    def downsample_status(self, c: str, e: str, ch: str) -> dict[str, Any]:
        return dict(self._get(f"/v1/downsample/{self._data(c, e, ch)}/", "downsample status"))

    def start_downsample(self, c: str, e: str, ch: str) -> None:
        self._send("POST", f"/v1/downsample/{self._data(c, e, ch)}/", None, 201,
                   "starting downsample")

    def cancel_downsample(self, c: str, e: str, ch: str) -> None:
        self._send("DELETE", f"/v1/downsample/{self._data(c, e, ch)}/", None, 204,
                   "cancelling downsample")

    # groups and permissions (as the server offers them)
    def list_groups(self) -> list[str]:
        return _names(self._member("/v1/groups/", "listing groups", "groups"))

    def create_group(self, name: str) -> None:
        self._send("POST", f"/v1/groups/{check_name(name, 'group')}/", None, 201,
                   f"creating group {name}")

    def delete_group(self, name: str) -> None:
        self._send("DELETE", f"/v1/groups/{check_name(name, 'group')}/", None, 204,
                   f"deleting group {name}")

    def permissions(self, group: str, c: str, e: str | None = None,
                    ch: str | None = None) -> list[str]:
        params = {"group": group, "collection": c}
        if e:
            params["experiment"] = e
        if ch:
            params["channel"] = ch
        query = "&".join(f"{k}={quote(v)}" for k, v in params.items())
        sets = self._member(f"/v1/permissions/?{query}", "listing permissions", "permission-sets")
        with server_answer(f"listing permissions: {self.settings.url}/v1/permissions/ answered"):
            return list(sets[0]["permissions"]) if sets else []


def _names(value: Any) -> list[str]:
    """A listing's names (TypeError, for server_answer, when it is not a list of them)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"a list of names was expected, not {value!r:.80}")
    return value


def _range_box(d: dict[str, Any]) -> Box:
    """A bounding box answer's ``z_range``, ``y_range``, ``x_range`` ([start, stop] each)."""
    return Box((int(d["z_range"][0]), int(d["y_range"][0]), int(d["x_range"][0])),
               (int(d["z_range"][1]), int(d["y_range"][1]), int(d["x_range"][1])))


class BossMetadata(MutableMapping[str, str]):
    """Key/value metadata of one bossDB resource; values are strings, as the server keeps them."""

    def __init__(self, project: BossProject, path: str) -> None:
        self._project = project
        self._path = f"/v1/meta/{path}/"

    def _q(self, key: str, value: str | None = None) -> str:
        q = f"?key={quote(str(key), safe='')}"
        if value is not None:
            q += f"&value={quote(str(value), safe='')}"
        return q

    def __getitem__(self, key: str) -> str:
        try:
            resp = self._project.client.request("GET", self._path + self._q(key),
                                                what=f"metadata {key}")
        except InvalidRequestError:
            raise KeyError(key) from None
        doc = json_of(resp, f"metadata {key}", dict)
        with server_answer(f"metadata {key}: {resp.request.url} answered"):
            return str(doc["value"])

    def __setitem__(self, key: str, value: str) -> None:
        method, expect = ("PUT", 200) if key in self else ("POST", 201)
        self._project.client.request(method, self._path + self._q(key, str(value)),
                                     expect=expect, what=f"setting metadata {key}")

    def __delitem__(self, key: str) -> None:
        try:
            self._project.client.request("DELETE", self._path + self._q(key), expect=204,
                                         what=f"deleting metadata {key}")
        except InvalidRequestError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        resp = self._project.client.request("GET", self._path, what="listing metadata")
        doc = json_of(resp, "listing metadata", dict)
        with server_answer(f"listing metadata: {resp.request.url} answered"):
            return iter(_names(doc["keys"]))

    def __len__(self) -> int:
        return len(list(iter(self)))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in list(iter(self))

