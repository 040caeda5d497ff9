"""``bossdb://``: bossDB (and any server in its REST dialect, such as a voxgate relay).

```
bossdb://collection/experiment/channel                      host and token from configuration
bossdb://http://127.0.0.1:8080/collection/experiment/channel  an explicit server
```

Configuration, first found wins: the ``server=``/``token=`` options; the environment
(``VOXGATE_BOSS_URL``, ``VOXGATE_BOSS_TOKEN``, then intern's ``INTERN_PROTOCOL``,
``INTERN_HOST``, ``INTERN_TOKEN``); the voxgate config file (``$VOXGATE_CONFIG`` or
``~/.config/voxgate/config.toml``, table ``[bossdb]`` with ``url`` and ``token``); intern's
``~/.intern/intern.cfg`` (read, never written).  Without any of them the public
https://api.bossdb.io is used with the token ``public``.

Cutouts of any size are split into requests aligned to the server's cuboids (512 x 512 x 16,
from the origin) and run concurrently over one pooled client, each decoded straight into one
preallocated output array.  Writes split the same way; an all-zero block is sent like any other.
A failed block raises: no partial data is ever returned.
"""

from __future__ import annotations

import atexit
import configparser
import os
import re
import struct
import threading
import tomllib
from collections.abc import Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import blosc
import numpy as np

from ..errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    PartialWriteError,
    RemoteExistsError,
)
from ..geometry import Box, Vec, VoxelSize
from ..meta import Scale, VolumeMeta
from ._http import HTTPClient
from .base import Capability, Remote, check_options

__all__ = ["BossDBRemote", "BossMetadata", "BossProject", "boss_settings"]

PUBLIC_URL = "https://api.bossdb.io"
#: the bossDB cuboid, (z, y, x); requests align to it so the server reads whole cuboids
CUBOID = Vec(16, 512, 512)
#: a request reads at most this many uncompressed bytes (the server's limit is 500 MiB)
REQUEST_BYTES = 8 * 2**20
_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")  # bossDB's name rule and length (fullmatch)
_UNIT_NM = {"nanometers": 1.0, "micrometers": 1e3, "millimeters": 1e6, "centimeters": 1e7}
_DTYPES = ("uint8", "uint16", "uint32", "uint64")


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequestError(
            f"{what} name {name!r} is not valid for bossDB: use 1 to 255 letters, digits, '_' "
            "and '-'"
        )
    return name


@dataclass(frozen=True)
class BossSettings:
    url: str
    token: str
    source: str  # where they came from, for error messages (never the token itself)

    def __repr__(self) -> str:
        return f"BossSettings(url={self.url!r}, token=<hidden>, source={self.source!r})"


def _config_file() -> Path:
    env = os.environ.get("VOXGATE_CONFIG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME", str(Path.home() / ".config"))
    return Path(base) / "voxgate" / "config.toml"


def boss_settings(url: str | None = None, token: str | None = None) -> BossSettings:
    """Resolve the server and token: arguments, environment, voxgate config, intern.cfg."""
    sources: list[tuple[str | None, str | None, str]] = [(url, token, "arguments")]
    env_url = os.environ.get("VOXGATE_BOSS_URL")
    if not env_url and os.environ.get("INTERN_HOST"):
        env_url = f"{os.environ.get('INTERN_PROTOCOL', 'https')}://{os.environ['INTERN_HOST']}"
    sources.append((env_url, os.environ.get("VOXGATE_BOSS_TOKEN")
                    or os.environ.get("INTERN_TOKEN"), "environment"))
    cfg = _config_file()
    if cfg.exists():
        try:
            table = tomllib.loads(cfg.read_text()).get("bossdb", {})
        except tomllib.TOMLDecodeError as exc:
            raise InvalidRequestError(f"{cfg} is not valid TOML: {exc}") from None
        sources.append((table.get("url"), table.get("token"), str(cfg)))
    intern_cfg = Path(os.environ.get("INTERN_CONFIG", Path.home() / ".intern" / "intern.cfg"))
    if intern_cfg.exists():
        parser = configparser.ConfigParser()
        parser.read(intern_cfg)
        for section in ("Volume Service", "Default"):
            if parser.has_section(section):
                sec = parser[section]
                host = sec.get("host")
                proto = sec.get("protocol", "https")
                sources.append((f"{proto}://{host}" if host else None, sec.get("token"),
                                f"{intern_cfg} [{section}]"))
    found_url = next(((u, s) for u, _, s in sources if u), (PUBLIC_URL, "default"))
    found_token = next((t for _, t, _ in sources if t), "public")
    return BossSettings(found_url[0].rstrip("/"), found_token, found_url[1])


_clients: dict[tuple[str, str, float], HTTPClient] = {}
_clients_lock = threading.Lock()


@atexit.register
def _close_clients() -> None:
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()


def _client(settings: BossSettings, timeout: float, concurrency: int) -> HTTPClient:
    key = (settings.url, settings.token, timeout)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            headers = {"User-Agent": "voxgate"}
            if settings.token and settings.token != "public":
                headers["Authorization"] = f"Token {settings.token}"
            client = HTTPClient(settings.url, headers=headers, timeout=timeout,
                                max_connections=max(concurrency, 16))
            _clients[key] = client
        return client


def _parse_location(location: str) -> tuple[str | None, str, str, str]:
    """``[http(s)://host[:port][/prefix]/]c/e/ch`` -> (server or None, c, e, ch)."""
    server = None
    path = location
    if location.startswith(("http://", "https://")):
        parsed = urlparse(location)
        if not parsed.netloc:
            raise InvalidRequestError(f"bossdb://{location}: no host in the server URL")
        parts = [p for p in parsed.path.split("/") if p]
        if len(parts) < 3:
            raise InvalidRequestError(
                f"bossdb://{location} must end in collection/experiment/channel"
            )
        prefix = "/".join(parts[:-3])
        server = f"{parsed.scheme}://{parsed.netloc}" + (f"/{prefix}" if prefix else "")
        path = "/".join(parts[-3:])
    parts = [p for p in path.split("/") if p]
    if len(parts) != 3:
        raise InvalidRequestError(
            f"bossdb://{location}: expected collection/experiment/channel, got {len(parts)} parts"
        )
    c, e, ch = parts
    return server, _check_name(c, "collection"), _check_name(e, "experiment"), \
        _check_name(ch, "channel")


def _cuboid_blocks(box: Box, block: Vec) -> Iterator[Box]:
    """``box`` cut on a grid of ``block`` anchored at the origin (bossDB's cuboids are)."""
    lo = [a // b for a, b in zip(box.start, block, strict=True)]
    hi = [-(-e // b) for e, b in zip(box.stop, block, strict=True)]
    for z in range(lo[0], hi[0]):
        for y in range(lo[1], hi[1]):
            for x in range(lo[2], hi[2]):
                s = Vec(z * block.z, y * block.y, x * block.x)
                yield Box(s, s + block).intersect(box)


_scratch_local = threading.local()


def _body_buffer() -> bytearray:
    """This thread's response-body buffer (reused: bodies are read into it, not allocated)."""
    buf: bytearray | None = getattr(_scratch_local, "body", None)
    if buf is None:
        buf = bytearray()
        _scratch_local.body = buf
    return buf


def _scratch(nbytes: int) -> np.ndarray:
    """This thread's decompression buffer, at least ``nbytes`` long."""
    buf: np.ndarray | None = getattr(_scratch_local, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(max(nbytes, REQUEST_BYTES), dtype=np.uint8)
        _scratch_local.buf = buf
    return buf


def _request_block(itemsize: int) -> Vec:
    """Cuboid-aligned request shape near REQUEST_BYTES (more z slabs for small dtypes)."""
    per_cuboid = CUBOID.prod() * itemsize
    k = max(1, REQUEST_BYTES // per_cuboid)
    # grow along x, then y, then z in cuboid units
    shape = [CUBOID.z, CUBOID.y, CUBOID.x]
    axis = 2
    while k > 1:
        shape[axis] *= 2
        k //= 2
        axis = (axis - 1) % 3 if axis else 2
    return Vec(*shape)


class BossDBRemote(Remote):
    scheme = "bossdb"
    open_options = ("server", "token", "timeout", "concurrency", "time")

    def __init__(self, settings: BossSettings, c: str, e: str, ch: str, mode: str, *,
                 timeout: float = 60.0, concurrency: int = 8, time: int | None = None) -> None:
        self.settings = settings
        self.collection, self.experiment, self.channel = c, e, ch
        self.mode = mode
        self.url = f"bossdb://{settings.url}/{c}/{e}/{ch}"
        self.timeout = timeout
        self.concurrency = concurrency
        self.client = _client(settings, timeout, concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self.project = BossProject(settings.url, settings.token, timeout=timeout)
        chan = self.project.get_channel(c, e, ch)
        exp = self.project.get_experiment(c, e)
        frame = self.project.get_coordinate_frame(exp["coord_frame"])
        self.channel_record, self.experiment_record, self.frame_record = chan, exp, frame
        samples = int(exp.get("num_time_samples") or 1)
        self.time = int(chan.get("default_time_sample") or 0) if time is None else int(time)
        if not 0 <= self.time < samples:
            raise InvalidRequestError(f"time {self.time} is outside 0..{samples - 1}")
        self._samples = samples
        self.meta = _meta(chan, exp, frame)

    def __repr__(self) -> str:
        return f"<BossDBRemote {self.url} mode={self.mode!r}>"

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> BossDBRemote:
        check_options("bossdb://", options, cls.open_options)
        server, c, e, ch = _parse_location(location)
        settings = boss_settings(options.pop("server", None) or server,
                                 options.pop("token", None))
        return cls(settings, c, e, ch, mode, **options)

    @classmethod
    def create(cls, location: str, meta: VolumeMeta, *, exist_ok: bool = False,
               **options: Any) -> BossDBRemote:
        """Make the collection, frame, experiment and channel for ``meta`` (as needed)."""
        check_options("bossdb://", options, cls.open_options)
        server, c, e, ch = _parse_location(location)
        settings = boss_settings(options.get("server") or server, options.get("token"))
        project = BossProject(settings.url, settings.token)
        if c not in project.list_collections():
            project.create_collection(c)
        if e not in project.list_experiments(c):
            frame = f"{c}_{e}"
            s0 = meta.scale(0)
            if frame not in project.list_coordinate_frames():
                project.create_coordinate_frame(frame, s0.bounds, s0.voxel_size)
            iso = len(meta.scales) > 1 and meta.scales[1].voxel_size.z > s0.voxel_size.z * 1.5
            project.create_experiment(c, e, frame, num_hierarchy_levels=len(meta.scales),
                                      hierarchy_method="isotropic" if iso else "anisotropic")
        if ch in project.list_channels(c, e):
            if not exist_ok:
                raise RemoteExistsError(f"bossdb channel {c}/{e}/{ch} already exists")
        else:
            seg = meta.kind == "segmentation"
            project.create_channel(c, e, ch, type="annotation" if seg else "image",
                                   datatype="uint64" if seg else meta.dtype.name)
        opts = {k: v for k, v in options.items() if k not in ("server", "token")}
        return cls(settings, c, e, ch, "r+", **opts)

    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = {Capability.SERVER_IDS, Capability.SERVER_BOUNDING_BOXES,
                Capability.SERVER_DOWNSAMPLE, Capability.BATCH_READ}
        if self.mode == "r+":
            caps.add(Capability.WRITE)
        if self.meta.kind != "segmentation":
            caps -= {Capability.SERVER_IDS, Capability.SERVER_BOUNDING_BOXES}
        return frozenset(caps)

    def spec(self) -> dict[str, Any]:
        # the token is not part of the spec: the reopening process resolves its own
        return {"url": self.url, "mode": self.mode,
                "options": {"timeout": self.timeout, "concurrency": self.concurrency}}

    def write_grid(self, scale: int = 0) -> Vec:
        return CUBOID

    # -- data -----------------------------------------------------------------------------------
    def _path(self, kind: str, box: Box, scale: int) -> str:
        x, y, z = (f"{a}:{b}" for a, b in zip(box.start.xyz(), box.stop.xyz(), strict=True))
        t = f"{self.time}:{self.time + 1}/" if self._samples > 1 else ""
        return (f"/v1/{kind}/{self.collection}/{self.experiment}/{self.channel}/{scale}/"
                f"{x}/{y}/{z}/{t}")

    def _map(self, fn: Any, blocks: list[Box]) -> list[tuple[Box, BaseException | None]]:
        if len(blocks) == 1:
            try:
                fn(blocks[0])
            except BaseException as exc:
                return [(blocks[0], exc)]
            return [(blocks[0], None)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="voxgate-boss")
        futures = [(b, self._pool.submit(fn, b)) for b in blocks]
        out: list[tuple[Box, BaseException | None]] = []
        for b, f in futures:
            out.append((b, f.exception()))
        return out

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        dtype = self.meta.dtype
        out = np.empty(tuple(box.shape), dtype=dtype)
        blocks = list(_cuboid_blocks(box, _request_block(dtype.itemsize)))

        def fetch(b: Box) -> None:
            body = _body_buffer()
            self.client.request(
                "GET", self._path("cutout", b, scale) + "?access-mode=no-cache",
                headers={"Accept": "application/blosc"}, what=f"reading {b!r} of {self.url}",
                into=body,
            )
            expected = b.size * dtype.itemsize
            # the blosc header says how much it holds: checked before anything is inflated
            if len(body) < 16 or not body[0] or struct.unpack_from("<I", body, 4)[0] != expected:
                held = struct.unpack_from("<I", body, 4)[0] if len(body) >= 16 else None
                what = "is not a blosc buffer" if held is None or not body[0] else \
                    f"holds {held} bytes, expected {expected}"
                raise CorruptChunkError(f"{self.url}: the server's answer for {b!r} {what}",
                                        chunk=f"{self.url} {b}")
            # decompressed into one buffer per thread, reused: memory stays at the output
            # array plus a request or two per thread in flight
            scratch = _scratch(expected)
            try:
                blosc.decompress_ptr(body, scratch.ctypes.data)
            except Exception as exc:
                raise CorruptChunkError(
                    f"{self.url}: the server's answer for {b!r} is not a blosc buffer ({exc})",
                    chunk=f"{self.url} {b}",
                ) from None
            out[b.slices(box.start)] = scratch[:expected].view(dtype).reshape(tuple(b.shape))

        failures = [(b, e) for b, e in self._map(fetch, blocks) if e is not None]
        if failures:
            b, exc = failures[0]
            if len(blocks) > 1:
                exc.add_note(f"{len(failures)} of {len(blocks)} requests of the read of {box!r} "
                             f"failed, the first at {b!r}; no partial data is returned")
            raise exc
        return out

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._check_writable()
        dtype = self.meta.dtype
        blocks = list(_cuboid_blocks(box, _request_block(dtype.itemsize)))

        def send(b: Box) -> None:
            part = np.ascontiguousarray(array[b.slices(box.start)], dtype=dtype)
            body = blosc.compress(part.tobytes(), typesize=dtype.itemsize, cname="lz4")
            self.client.request("POST", self._path("cutout", b, scale), content=body,
                                headers={"Content-Type": "application/blosc"}, expect=201,
                                what=f"writing {b!r} of {self.url}")

        results = self._map(send, blocks)
        failed = [b for b, e in results if e is not None]
        if failed:
            first = next(e for _, e in results if e is not None)
            assert first is not None
            if len(blocks) == 1:
                raise first
            raise PartialWriteError(
                f"writing {box!r} to {self.url}: {len(failed)} of {len(blocks)} blocks failed "
                f"({first}); the others were written",
                written=[b for b, e in results if e is None], failed=failed,
            ) from first

    # -- server-side operations ------------------------------------------------------------------
    def ids_in(self, box: Box, scale: int = 0) -> np.ndarray:
        """The non-zero ids in ``box`` (server-side), as sorted uint64."""
        resp = self.client.request("GET", self._path("ids", box, scale),
                                   what=f"ids in {box!r} of {self.url}")
        return np.array(sorted(int(i) for i in resp.json()["ids"]), dtype=np.uint64)

    def bounding_box(self, ident: int, scale: int = 0, *, tight: bool = True) -> Box:
        kind = "tight" if tight else "loose"
        resp = self.client.request(
            "GET", f"/v1/boundingbox/{self.collection}/{self.experiment}/{self.channel}/"
                   f"{scale}/{int(ident)}/?type={kind}", what=f"bounding box of {ident}")
        d = resp.json()
        return Box((d["z_range"][0], d["y_range"][0], d["x_range"][0]),
                   (d["z_range"][1], d["y_range"][1], d["x_range"][1]))

    def reserve_ids(self, count: int) -> int:
        """Reserve ``count`` new ids; returns the first."""
        if count < 1:
            raise InvalidRequestError(f"reserve at least one id, not {count}")
        resp = self.client.request(
            "GET", f"/v1/reserve/{self.collection}/{self.experiment}/{self.channel}/{int(count)}",
            what="reserving ids")
        return int(resp.json()["start_id"])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def _meta(chan: dict[str, Any], exp: dict[str, Any], frame: dict[str, Any]) -> VolumeMeta:
    dtype = chan.get("datatype")
    if dtype not in _DTYPES:
        raise CapabilityNotSupportedError(f"bossDB datatype {dtype!r} is not supported")
    unit = _UNIT_NM.get(frame.get("voxel_unit", "nanometers"), 1.0)
    start = Vec(int(frame["z_start"]), int(frame["y_start"]), int(frame["x_start"]))
    stop = Vec(int(frame["z_stop"]), int(frame["y_stop"]), int(frame["x_stop"]))
    vs = VoxelSize(float(frame["z_voxel_size"]) * unit, float(frame["y_voxel_size"]) * unit,
                   float(frame["x_voxel_size"]) * unit)
    iso = exp.get("hierarchy_method") == "isotropic"
    scales = []
    for k in range(int(exp.get("num_hierarchy_levels") or 1)):
        f = Vec(2**k if iso else 1, 2**k, 2**k)
        lo = Vec(*(a // g for a, g in zip(start, f, strict=True)))
        hi = Vec(*(-(-b // g) for b, g in zip(stop, f, strict=True)))
        scales.append(Scale(k, hi - lo, CUBOID, VoxelSize(vs.z * f.z, vs.y * f.y, vs.x * f.x),
                            lo, "blosc"))
    kind = "segmentation" if chan.get("type") == "annotation" else "image"
    return VolumeMeta(np.dtype(dtype), tuple(scales), kind)  # type: ignore[arg-type]


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
        return f"<BossProject {self.settings.url}>"

    def _get(self, path: str, what: str) -> Any:
        return self.client.request("GET", path, what=what).json()

    def _send(self, method: str, path: str, body: dict[str, Any] | None, expect: int,
              what: str) -> Any:
        resp = self.client.request(method, path, json=body, expect=expect, what=what)
        return resp.json() if resp.content else None

    # collections
    def list_collections(self) -> list[str]:
        return list(self._get("/v1/collection/", "listing collections")["collections"])

    def get_collection(self, c: str) -> dict[str, Any]:
        return dict(self._get(f"/v1/collection/{_check_name(c, 'collection')}", f"collection {c}"))

    def create_collection(self, c: str, description: str = "", *,
                          public: bool = False) -> dict[str, Any]:
        return dict(self._send("POST", f"/v1/collection/{_check_name(c, 'collection')}",
                               {"name": c, "description": description, "public": public}, 201,
                               f"creating collection {c}"))

    def update_collection(self, c: str, **fields: Any) -> dict[str, Any]:
        return dict(self._send("PUT", f"/v1/collection/{_check_name(c, 'collection')}", fields,
                               200, f"updating collection {c}"))

    def delete_collection(self, c: str) -> None:
        self._send("DELETE", f"/v1/collection/{_check_name(c, 'collection')}", None, 204,
                   f"deleting collection {c}")

    # experiments
    def list_experiments(self, c: str) -> list[str]:
        return list(self._get(f"/v1/collection/{_check_name(c, 'collection')}/experiment/",
                              f"listing experiments of {c}")["experiments"])

    def _exp(self, c: str, e: str) -> str:
        return (f"/v1/collection/{_check_name(c, 'collection')}/experiment/"
                f"{_check_name(e, 'experiment')}")

    def get_experiment(self, c: str, e: str) -> dict[str, Any]:
        return dict(self._get(self._exp(c, e), f"experiment {c}/{e}"))

    def create_experiment(self, c: str, e: str, coord_frame: str, *, description: str = "",
                          num_hierarchy_levels: int = 1, hierarchy_method: str = "anisotropic",
                          num_time_samples: int = 1, time_step: int = 0,
                          time_step_unit: str = "seconds") -> dict[str, Any]:
        if hierarchy_method not in ("anisotropic", "isotropic"):
            raise InvalidRequestError(
                f"hierarchy_method must be anisotropic or isotropic, got {hierarchy_method!r}")
        body = {"name": e, "description": description, "coord_frame": coord_frame,
                "num_hierarchy_levels": num_hierarchy_levels,
                "hierarchy_method": hierarchy_method, "num_time_samples": num_time_samples,
                "collection": c, "time_step": time_step, "time_step_unit": time_step_unit}
        return dict(self._send("POST", self._exp(c, e), body, 201, f"creating experiment {e}"))

    def update_experiment(self, c: str, e: str, **fields: Any) -> dict[str, Any]:
        return dict(self._send("PUT", self._exp(c, e), fields, 200, f"updating experiment {e}"))

    def delete_experiment(self, c: str, e: str) -> None:
        self._send("DELETE", self._exp(c, e), None, 204, f"deleting experiment {c}/{e}")

    # coordinate frames
    def list_coordinate_frames(self) -> list[str]:
        return list(self._get("/v1/coord/", "listing coordinate frames")["coords"])

    def get_coordinate_frame(self, name: str) -> dict[str, Any]:
        return dict(self._get(f"/v1/coord/{_check_name(name, 'coordinate frame')}",
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
        return dict(self._send("POST", f"/v1/coord/{_check_name(name, 'coordinate frame')}",
                               body, 201, f"creating coordinate frame {name}"))

    def update_coordinate_frame(self, name: str, **fields: Any) -> dict[str, Any]:
        return dict(self._send("PUT", f"/v1/coord/{_check_name(name, 'coordinate frame')}",
                               fields, 200, f"updating coordinate frame {name}"))

    def delete_coordinate_frame(self, name: str) -> None:
        self._send("DELETE", f"/v1/coord/{_check_name(name, 'coordinate frame')}", None, 204,
                   f"deleting coordinate frame {name}")

    # channels
    def list_channels(self, c: str, e: str) -> list[str]:
        return list(self._get(self._exp(c, e) + "/channel/",
                              f"listing channels of {c}/{e}")["channels"])

    def _chan(self, c: str, e: str, ch: str) -> str:
        return self._exp(c, e) + f"/channel/{_check_name(ch, 'channel')}"

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
        return dict(self._send("POST", self._chan(c, e, ch), body, 201,
                               f"creating channel {c}/{e}/{ch}"))

    def update_channel(self, c: str, e: str, ch: str, **fields: Any) -> dict[str, Any]:
        return dict(self._send("PUT", self._chan(c, e, ch), fields, 200,
                               f"updating channel {c}/{e}/{ch}"))

    def delete_channel(self, c: str, e: str, ch: str) -> None:
        self._send("DELETE", self._chan(c, e, ch), None, 204, f"deleting channel {c}/{e}/{ch}")

    # metadata
    def metadata(self, c: str, e: str | None = None, ch: str | None = None) -> BossMetadata:
        """The key/value metadata of a collection, experiment or channel, as a mapping."""
        parts = [_check_name(c, "collection")]
        if e is not None:
            parts.append(_check_name(e, "experiment"))
            if ch is not None:
                parts.append(_check_name(ch, "channel"))
        return BossMetadata(self, "/".join(parts))

    # object services
    def ids_in_region(self, c: str, e: str, ch: str, box: Box, scale: int = 0) -> np.ndarray:
        x, y, z = (f"{a}:{b}" for a, b in zip(box.start.xyz(), box.stop.xyz(), strict=True))
        data = self._get(f"/v1/ids/{c}/{e}/{ch}/{scale}/{x}/{y}/{z}/", "ids in region")
        return np.array(sorted(int(i) for i in data["ids"]), dtype=np.uint64)

    def bounding_box(self, c: str, e: str, ch: str, ident: int, scale: int = 0, *,
                     tight: bool = True) -> Box:
        d = self._get(f"/v1/boundingbox/{c}/{e}/{ch}/{scale}/{int(ident)}/?type="
                      f"{'tight' if tight else 'loose'}", f"bounding box of {ident}")
        return Box((d["z_range"][0], d["y_range"][0], d["x_range"][0]),
                   (d["z_range"][1], d["y_range"][1], d["x_range"][1]))

    def reserve_ids(self, c: str, e: str, ch: str, count: int) -> int:
        return int(self._get(f"/v1/reserve/{c}/{e}/{ch}/{int(count)}", "reserving ids")
                   ["start_id"])

    # downsampling
    def downsample_status(self, c: str, e: str, ch: str) -> dict[str, Any]:
        return dict(self._get(f"/v1/downsample/{c}/{e}/{ch}/", "downsample status"))

    def start_downsample(self, c: str, e: str, ch: str) -> None:
        self._send("POST", f"/v1/downsample/{c}/{e}/{ch}/", None, 201, "starting downsample")

    def cancel_downsample(self, c: str, e: str, ch: str) -> None:
        self._send("DELETE", f"/v1/downsample/{c}/{e}/{ch}/", None, 204, "cancelling downsample")

    # groups and permissions (as the server offers them)
    def list_groups(self) -> list[str]:
        return list(self._get("/v1/groups/", "listing groups")["groups"])

    def create_group(self, name: str) -> None:
        self._send("POST", f"/v1/groups/{_check_name(name, 'group')}/", None, 201,
                   f"creating group {name}")

    def delete_group(self, name: str) -> None:
        self._send("DELETE", f"/v1/groups/{_check_name(name, 'group')}/", None, 204,
                   f"deleting group {name}")

    def permissions(self, group: str, c: str, e: str | None = None,
                    ch: str | None = None) -> list[str]:
        params = {"group": group, "collection": c}
        if e:
            params["experiment"] = e
        if ch:
            params["channel"] = ch
        query = "&".join(f"{k}={quote(v)}" for k, v in params.items())
        sets = self._get(f"/v1/permissions/?{query}", "listing permissions")["permission-sets"]
        return list(sets[0]["permissions"]) if sets else []


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
        return str(resp.json()["value"])

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
        return iter(list(resp.json()["keys"]))

    def __len__(self) -> int:
        return len(list(iter(self)))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in list(iter(self))

