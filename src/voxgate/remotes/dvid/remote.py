"""The ``dvid://`` Remote: voxel volumes (images and labels), their meshes and skeletons."""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import lz4.block
import numpy as np

from ...errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    DtypeError,
    InvalidRequestError,
    PartialWriteError,
    ReadOnlyError,
    RemoteExistsError,
    RemoteNotFoundError,
    redact,
)
from ...geometry import Box, Vec, VoxelSize, grow_block, origin_grid_bounds
from ...meta import Kind, PyramidAnchor, Scale, VolumeMeta
from .._http import server_answer
from ..base import Capability, Remote, check_options, check_same_volume
from .client import _call, answered, client_for, normalize_server, parse_location
from .keyvalue import DVIDKeyValue
from .labels import DVIDLabels
from .ngmesh import decode_ngmesh, encode_ngmesh
from .repo import DVIDRepo

IMAGE_TYPES = {"uint8blk": "uint8", "uint16blk": "uint16", "uint32blk": "uint32",
               "uint64blk": "uint64", "float32blk": "float32"}
LABEL_TYPES = ("labelmap", "labelarray", "labelblk")
_TYPE_FOR_DTYPE = {v: k for k, v in IMAGE_TYPES.items()}
#: a read or write request moves at most about this many uncompressed bytes
REQUEST_BYTES = 8 * 2**20
#: bounds of a DVID volume that has neither voxgate geometry nor extents (DVID has no size)
UNBOUNDED = 2**31 - 1
_UNIT_NM = {"nanometers": 1.0, "nanometer": 1.0, "nm": 1.0, "micrometers": 1e3,
            "micrometer": 1e3, "um": 1e3, "microns": 1e3, "millimeters": 1e6, "angstroms": 0.1}
_COMPRESSIONS = ("lz4", "gzip", "none")

#: the lock of the read-patch-write of blocks an unaligned write touches, per (server, node or
#: repo of an unversioned instance, instance): one for all volumes of it in this process
_RMW_LOCKS: dict[tuple[str, str, str], threading.Lock] = {}
_RMW_LOCKS_LOCK = threading.Lock()


def _rmw_lock(server: str, node: str, instance: str) -> threading.Lock:
    with _RMW_LOCKS_LOCK:
        return _RMW_LOCKS.setdefault((server, node, instance), threading.Lock())


# -- the Remote -----------------------------------------------------------------------------------
def _xyz_tag(text: str) -> Vec:
    x, y, z = (int(p) for p in text.split("_"))
    return Vec(z, y, x)


def _json_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} is {value!r:.80}, not true or false")
    return value


def _check_base(base: Any, instance: str) -> None:
    """The members of an instance's ``Base`` that voxgate uses are of DVID's JSON types (a
    garbled answer, say every member a string, is no instance of an unknown type)."""
    if not isinstance(base, dict):
        raise TypeError(f"the instance's Base is {base!r:.80}, not an object")
    if not isinstance(base["TypeName"], str):
        raise TypeError(f"the instance's TypeName is {base['TypeName']!r:.80}")
    _json_bool(base.get("Versioned", True), "the instance's Versioned")
    if base.get("Name", instance) != instance:
        raise ValueError(f"the instance listed as {instance!r} is named {base['Name']!r:.80}")


def _int_list(value: Any, what: str, *, null: bool = False) -> list[int] | None:
    """A JSON list of 3 integers (x, y, z), or None for null (or []) when ``null``."""
    if null and (value is None or value == []):
        return None
    if not (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"its {what} is {value!r:.80}, not a list of 3 integers")
    return value


def _aligned(box: Box, grid: Vec) -> Box:
    return Box._trusted(
        Vec(*(a // g * g for a, g in zip(box.start, grid, strict=True))),
        Vec(*(-(-b // g) * g for b, g in zip(box.stop, grid, strict=True))),
    )


def _downres_breaks(lo: Vec, hi: Vec, levels: int) -> tuple[int, int] | None:
    """(axis, block) of the first block in ``lo..hi`` (inclusive block coordinates, z, y, x)
    that DVID's labelmap/labelarray downres cannot take with ``levels`` coarser scales, or None.

    downres.go getHiresChanges puts a changed block of level k at octant
    ``((z % 2) << 2) + ((y % 2) << 1) + (x % 2)`` of its parent, with Go's ``%``, which is
    negative for a negative odd coordinate: the index is negative (a panic, answered 500,
    after scale 0 was stored) or another octant's (the coarser scales wrong).  Block b reaches
    level k as ``b >> k``; that is odd and negative for some k < ``levels`` exactly when b is
    negative and not a multiple of 2^levels."""
    if levels < 1:
        return None
    step = 2**levels
    for axis, (a, b) in enumerate(zip(lo, hi, strict=True)):
        for blk in range(a, min(b, -1) + 1):
            if blk % step:
                return axis, blk
    return None


def _downres_refusal(where: str, typename: str, levels: int, block: Vec,
                     found: tuple[int, int], nothing: str) -> InvalidRequestError:
    axis, b = found
    name = "zyx"[axis]
    bs = block[axis]
    return InvalidRequestError(
        f"{where}: a DVID {typename} with coarser scales (MaxDownresLevel {levels}) cannot "
        f"take voxels in block {b} along {name} (voxels {b * bs}..{(b + 1) * bs - 1}): DVID's "
        "downres (downres.go getHiresChanges) finds a block's octant with Go's %, negative "
        "for a negative odd block coordinate at any scale it downsamples, so a write there "
        "fails with a server panic (500) after storing scale 0, or lands in the wrong place "
        f"of the coarser scales. At negative coordinates only blocks at multiples of "
        f"2^{levels} = {2**levels} are safe. {nothing}: place the volume at non-negative "
        "coordinates, or make it with one scale (num_scales=1)")


def _tiles(box: Box, tile: Vec) -> list[Box]:
    """``box`` cut on a grid of ``tile`` anchored at the origin (DVID's blocks are)."""
    lo = [a // t for a, t in zip(box.start, tile, strict=True)]
    hi = [-(-b // t) for b, t in zip(box.stop, tile, strict=True)]
    out = []
    for z in range(lo[0], hi[0]):
        for y in range(lo[1], hi[1]):
            for x in range(lo[2], hi[2]):
                s = Vec(z * tile.z, y * tile.y, x * tile.x)
                out.append(Box._trusted(s, Vec(s.z + tile.z, s.y + tile.y, s.x + tile.x))
                           .intersect(box))
    return out


class DVIDRemote(Remote):
    scheme = "dvid"
    open_options = ("timeout", "concurrency", "compression", "supervoxels", "token", "meshes",
                    "skeletons")
    create_options = ("typename", "versioned", "block_size", *open_options)

    def __init__(self, server: str, node_spec: str, instance: str, mode: str, *,
                 timeout: float = 60.0, concurrency: int = 8, compression: str = "lz4",
                 supervoxels: bool = False, token: str | None = None,
                 meshes: str | None = None, skeletons: str | None = None) -> None:
        if mode not in ("r", "r+"):
            raise InvalidRequestError(f"mode must be 'r' or 'r+', got {mode!r}")
        if compression not in _COMPRESSIONS:
            raise InvalidRequestError(
                f"compression must be one of {', '.join(_COMPRESSIONS)}, got {compression!r}")
        self.server = normalize_server(server)
        self.instance = instance
        self.mode = mode
        self.timeout, self.concurrency = float(timeout), int(concurrency)
        self.compression = compression
        self.supervoxels = bool(supervoxels)
        self.client = client_for(self.server, token=token, timeout=timeout,
                                 concurrency=concurrency)
        self.repo = DVIDRepo(self.server, node_spec, token=token, timeout=timeout)
        self.node_spec = node_spec
        repo_info = self.repo.opened_info
        self.uuid = self.repo.resolve(node_spec, repo_info)
        self.url = f"dvid://{self.server}/{node_spec}/{instance}"
        # (what the server answered, read member by member: a member missing or of another
        # type is a CorruptChunkError naming this URL, not a KeyError or TypeError)
        answer = server_answer(f"{self.url}: the repo info {self.server} answered does not "
                               "describe the instance")
        with answer:
            insts = repo_info.get("DataInstances") or {}
            if not isinstance(insts, dict):
                raise TypeError(f"its DataInstances are {insts!r:.80}, not an object")
            if instance in insts:
                self.info: dict[str, Any] = dict(insts[instance])
                base = self.info["Base"]
                _check_base(base, instance)
                self.typename: str = base["TypeName"]
                self.versioned = base.get("Versioned", True)
                node = repo_info["DAG"]["Nodes"][self.uuid]
                self.locked = _json_bool(node.get("Locked", False), "the node's Locked")
        if instance not in insts:
            names = ", ".join(sorted(insts)) or "none"
            raise RemoteNotFoundError(
                f"repo {self.repo.root} on {self.server} has no data instance {instance!r} "
                f"(it has: {names})")
        if self.typename not in IMAGE_TYPES and self.typename not in LABEL_TYPES:
            raise CapabilityNotSupportedError(
                f"{self.url} is a {self.typename} instance; dvid:// volumes are "
                f"{', '.join([*IMAGE_TYPES, *LABEL_TYPES])}")
        if mode == "r+" and self.locked and self.versioned:
            raise ReadOnlyError(
                f"{self.url}: node {self.uuid} is committed (locked) and DVID refuses writes to "
                "it; branch or make a new version (DVIDRepo.branch / new_version) and open "
                "that node with mode='r+'")
        self.is_label = self.typename in LABEL_TYPES
        if self.is_label:
            # a labelmap's scale k is DVID's downres level k, on the block grid through 0
            # (create checks its scales so): voxgate.downsample computes it on that grid
            self.pyramid_anchor = "origin"
        self._mesh_name = meshes or f"{instance}_meshes"
        self._skel_name = skeletons or f"{instance}_skeletons"
        with answer:
            self._instances = {n: i["Base"]["TypeName"] for n, i in insts.items()}
            self._scale_names = [instance]
            if not self.is_label:
                k = 1
                while f"{instance}_{k}" in insts and \
                        insts[f"{instance}_{k}"]["Base"]["TypeName"] == self.typename:
                    self._scale_names.append(f"{instance}_{k}")
                    k += 1
            self.meta = self._meta(insts)
        self._pool: ThreadPoolExecutor | None = None
        # shared by every volume of this instance in the process (threads each opening their
        # own): a lock of each volume's own let two edge writes of one block lose one
        self._rmw_lock = _rmw_lock(self.server, self.uuid if self.versioned
                                   else self.repo.root, instance)
        self._pool_lock = threading.Lock()
        self.labels: DVIDLabels | None = (
            DVIDLabels(self.client, self.uuid, instance, self.typename) if self.is_label
            else None)

    def __repr__(self) -> str:
        return redact(f"<DVIDRemote {self.url} node={self.uuid} mode={self.mode!r}>")

    # -- metadata -------------------------------------------------------------------------------
    def _geometry(self, info: dict[str, Any]) -> tuple[Vec, Vec, Kind | None]:
        """(shape, offset, kind) from voxgate's tags, else DVID's extents, else unbounded."""
        tags = info["Base"].get("Tags") or {}
        kind: Kind | None = None
        if tags.get("voxgate_kind") in ("image", "segmentation"):
            kind = tags["voxgate_kind"]
        if "voxgate_shape" in tags:
            try:
                shape = _xyz_tag(tags["voxgate_shape"])
                offset = _xyz_tag(tags.get("voxgate_offset", "0_0_0"))
                return shape, offset, kind
            except ValueError:
                pass
        ext = info.get("Extended") or {}
        mn = _int_list(ext.get("MinPoint"), "MinPoint", null=True)
        mx = _int_list(ext.get("MaxPoint"), "MaxPoint", null=True)
        if mn and mx:
            offset = Vec(int(mn[2]), int(mn[1]), int(mn[0]))
            stop = Vec(int(mx[2]) + 1, int(mx[1]) + 1, int(mx[0]) + 1)
            return stop - offset, offset, kind
        return Vec(UNBOUNDED, UNBOUNDED, UNBOUNDED), Vec(0, 0, 0), kind

    @staticmethod
    def _voxel(info: dict[str, Any]) -> tuple[Vec, VoxelSize]:
        ext = info.get("Extended") or {}
        bs = _int_list(ext.get("BlockSize") or [32, 32, 32], "BlockSize")
        assert bs is not None
        if min(bs) < 1:
            # imageblk setByConfig (dvid.StringToPoint) takes any BlockSize, 0 and negative
            # ones too (labelmap.go NewData only wants multiples of 16, which 0 is); every
            # request that cuts such an instance into blocks then fails on the server (a 0
            # divides by zero: a panic, answered 500)
            name = (info.get("Base") or {}).get("Name", "this instance")
            raise InvalidRequestError(
                f"DVID instance {name!r} has BlockSize {list(bs)} (x, y, z): DVID created it "
                "without checking, but cannot cut voxels into such blocks, so it can be neither "
                "read nor written: make a new instance with positive block sizes (e.g. "
                "64,64,64)")
        vs = ext.get("VoxelSize") or [8, 8, 8]
        units = ext.get("VoxelUnits") or ["nanometers"] * 3
        f = [_UNIT_NM.get(str(u).lower(), 1.0) for u in units]
        return (Vec(int(bs[2]), int(bs[1]), int(bs[0])),
                VoxelSize(float(vs[2]) * f[2], float(vs[1]) * f[1], float(vs[0]) * f[0]))

    def _meta(self, insts: dict[str, Any]) -> VolumeMeta:
        shape, offset, kind = self._geometry(self.info)
        block, vs = self._voxel(self.info)
        self.block = block
        enc = self.compression if self.is_label else "raw"
        scales = [Scale(0, shape, block, vs, offset, enc)]
        if self.is_label:
            levels = int((self.info.get("Extended") or {}).get("MaxDownresLevel") or 0)
            for k in range(1, levels + 1):
                f = 2**k
                lo = Vec(*(o // f for o in offset))
                hi = Vec(*(-(-(o + s) // f) for o, s in zip(offset, shape, strict=True)))
                scales.append(Scale(k, hi - lo, block,
                                    VoxelSize(vs.z * f, vs.y * f, vs.x * f), lo, enc))
            dtype = np.dtype("uint64")
            kind = "segmentation"
        else:
            for k, name in enumerate(self._scale_names[1:], start=1):
                sinfo = self._instance_info(name, insts)
                s_shape, s_off, _ = self._geometry(sinfo)
                s_block, s_vs = self._voxel(sinfo)
                scales.append(Scale(k, s_shape, s_block, s_vs, s_off, "raw"))
            dtype = np.dtype(IMAGE_TYPES[self.typename])
            kind = kind or "image"
        return VolumeMeta(dtype, tuple(scales), kind,
                          extra={"dvid": {"node": self.uuid, "typename": self.typename}})

    def _instance_info(self, name: str, insts: dict[str, Any]) -> dict[str, Any]:
        if name in insts:
            return dict(insts[name])
        what = f"info of {name}"
        return dict(answered(_call(self.client, "GET", f"/api/node/{self.uuid}/{name}/info",
                                   what=what), what))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> DVIDRemote:
        check_options("dvid://", options, cls.open_options, "open")
        server, node, instance = parse_location(location)
        return cls(server, node, instance, mode, **options)

    @classmethod
    def create_anchor(cls, meta: VolumeMeta, options: Mapping[str, Any]) -> PyramidAnchor:
        typename = options.get("typename")
        label = typename in ("labelmap", "labelarray") if typename is not None else (
            meta.kind == "segmentation" and meta.dtype == np.uint64)
        return "origin" if label else "offset"

    @classmethod
    def create(cls, location: str, meta: VolumeMeta, *, exist_ok: bool = False,
               **options: Any) -> DVIDRemote:
        """Add an instance for ``meta``: labelmap for uint64 segmentations, else ``<dtype>blk``.

        Its geometry (shape, offset, kind) is kept in the instance's tags and its extents;
        an image volume's scales 1.. become instances ``<name>_1``, ... .
        """
        check_options("dvid://", options, cls.create_options, "create")
        server, node, instance = parse_location(location)
        typename = options.pop("typename", None)
        versioned = options.pop("versioned", True)
        block_size = options.pop("block_size", None)
        if block_size is not None:
            bs = Vec.of(block_size, "block_size")
            if min(bs) < 1:
                raise InvalidRequestError(f"block_size must be positive, got {tuple(bs)}")
            meta = meta.with_scales([replace(s, chunks=bs) for s in meta.scales])
        if meta.num_channels != 1:
            raise InvalidRequestError("DVID volumes have one channel")
        if typename is None:
            if meta.kind == "segmentation" and meta.dtype == np.uint64:
                typename = "labelmap"
            elif meta.dtype.name in _TYPE_FOR_DTYPE:
                typename = _TYPE_FOR_DTYPE[meta.dtype.name]
            else:
                raise DtypeError(
                    f"DVID stores {', '.join(IMAGE_TYPES.values())}; {meta.dtype.name} has no "
                    "DVID type (convert the data first)")
        if typename in ("labelmap", "labelarray"):
            if meta.dtype != np.uint64:
                raise DtypeError(f"a {typename} holds uint64 labels, not {meta.dtype.name}")
            s0 = meta.scale(0)
            for k, sc in enumerate(meta.scales[1:], start=1):
                f = 2**k
                want = Vec(*(-(-(o + s) // f) - o // f for o, s in zip(s0.offset, s0.shape,
                                                                      strict=True)))
                if sc.shape != want:
                    raise InvalidRequestError(
                        f"DVID {typename} scales halve every axis: scale {k} would be "
                        f"{tuple(want)}, this volume's is {tuple(sc.shape)} (copy only scale 0 "
                        "with scales=[0], or use an image type)")
            if typename == "labelmap" and any(c % 16 for c in s0.chunks):
                # labelmap.go NewData: "BlockSize must be multiples of 16"
                raise InvalidRequestError(
                    f"DVID labelmap blocks must be multiples of 16 voxels on every axis "
                    f"(DVID refuses others); got chunks {tuple(s0.chunks)}: use e.g. "
                    "(64, 64, 64), DVID's default, or (16, 16, 16)")
            if any(c % 8 or c < 16 for c in s0.chunks):
                # labelarray.go NewData takes any BlockSize, but write.go putChunk cannot make
                # such blocks (labels/compressed.go setSubvolume: multiples of 8, "Blocks must
                # be at least 16x16x16"), logs it and stores nothing, answering 200
                raise InvalidRequestError(
                    f"DVID {typename} blocks must be multiples of 8 voxels and at least 16 on "
                    f"every axis; got chunks {tuple(s0.chunks)}: DVID creates such an instance "
                    "but its label codec cannot hold the blocks, so it stores none of the "
                    "writes (answering them 200). Use e.g. (64, 64, 64), DVID's default, or "
                    "(16, 16, 16)")
            levels = len(meta.scales) - 1
            first = Vec(*(o // c for o, c in zip(s0.offset, s0.chunks, strict=True)))
            last = Vec(*(-(-(o + s) // c) - 1 for o, s, c in zip(s0.offset, s0.shape, s0.chunks,
                                                                  strict=True)))
            breaks = _downres_breaks(first, last, levels)
            if breaks is not None:
                raise _downres_refusal(f"dvid://{server}/{node}/{instance}", typename, levels,
                                       s0.chunks, breaks, "Nothing was created")
        elif typename in IMAGE_TYPES:
            if IMAGE_TYPES[typename] != meta.dtype.name:
                raise DtypeError(f"a {typename} holds {IMAGE_TYPES[typename]}, not "
                                 f"{meta.dtype.name}")
        else:
            raise InvalidRequestError(
                f"typename must be one of {', '.join([*IMAGE_TYPES, 'labelmap', 'labelarray'])}")
        open_opts = dict(options)
        repo = DVIDRepo(server, node, token=options.get("token"),
                        timeout=options.get("timeout", 60.0))
        uuid = repo.resolve(node)
        existing = repo.instances()
        if instance in existing:
            if not exist_ok:
                raise RemoteExistsError(f"DVID repo {repo.root} already has an instance "
                                        f"{instance!r} ({existing[instance]})")
            found = cls(server, node, instance, "r+", **open_opts)
            check_same_volume(found.meta, meta, f"DVID instance {instance!r} of {repo.root}")
            return found
        is_label = typename in ("labelmap", "labelarray")
        names = [instance] if is_label else [instance] + [f"{instance}_{k}" for k in
                                                           range(1, len(meta.scales))]
        for k, name in enumerate(names):
            sc = meta.scale(k)
            tags = {"voxgate_shape": "_".join(map(str, sc.shape.xyz())),
                    "voxgate_offset": "_".join(map(str, sc.offset.xyz())),
                    "voxgate_kind": meta.kind}
            repo.create_instance(
                name, typename, node=uuid, block_size=tuple(sc.chunks),
                voxel_size=sc.voxel_size.zyx(), max_scale=len(meta.scales) - 1 if is_label else 0,
                versioned=bool(versioned), tags=tags)
            if typename == "labelarray":
                # labelarray.go ServeHTTP has no extents endpoint (its extents grow with the
                # blocks written); the tags above carry the shape and offset
                continue
            lo, hi = sc.offset.xyz(), (sc.offset + sc.shape).xyz()
            _call(repo.client, "POST", f"/api/node/{uuid}/{name}/extents",
                  json={"MinPoint": list(lo), "MaxPoint": [v - 1 for v in hi]},
                  what=f"setting the extents of {name}", idempotent=True)
        return cls(server, node, instance, "r+", **open_opts)

    def spec(self) -> dict[str, Any]:
        # the token is not part of the spec: the reopening process reads VOXGATE_DVID_TOKEN
        return {"url": f"dvid://{self.server}/{self.uuid}/{self.instance}", "mode": self.mode,
                "options": {"timeout": self.timeout, "concurrency": self.concurrency,
                            "compression": self.compression, "supervoxels": self.supervoxels}}

    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = {Capability.VERSIONING, Capability.BATCH_READ}
        if self.mode == "r+":
            caps.add(Capability.WRITE)
            if self.typename == "labelmap":
                # a labelarray hands out no ids (labelarray.go handleNextlabel: POST is
                # refused), so the Services and the relay count ids themselves there
                caps.add(Capability.RESERVE_IDS)
            if self.typename == "labelmap" and not self.supervoxels:
                caps.add(Capability.SERVER_PROOFREAD)
        if self._instances.get(self._mesh_name) == "keyvalue":
            caps.add(Capability.SERVER_MESH)
        if self._instances.get(self._skel_name) == "keyvalue":
            caps.add(Capability.SERVER_SKELETON)
        if self.derives_scales:
            caps.add(Capability.DERIVED_SCALES)
        return frozenset(caps)

    @property
    def derives_scales(self) -> bool:
        """Whether DVID itself rebuilds this instance's coarser scales from every scale-0
        write: a labelmap or labelarray with ``MaxDownresLevel`` >= 1 (write.go ``PutLabels``
        ends with ``downres.Mutation.Execute``; a split does the same).  Its scales 1.. are
        then DVID's (labels/compressed.go ``downresArray``: the most frequent non-zero label
        of each 2x2x2 cell, the smaller on a tie), not something to recompute and write."""
        return self.is_label and self.typename != "labelblk" and len(self.meta.scales) > 1

    def check_downres_blocks(self, blocks: Iterable[Iterable[int]], what: str,
                             nothing: str) -> None:
        """Refuse (InvalidRequestError naming the first, before anything is sent) a change of
        scale 0 that makes DVID rewrite any of ``blocks`` ((z, y, x) block coordinates) when
        DVID's downres cannot take one of them: the rule of :meth:`write`, for edits that
        DVID runs itself (a split rewrites every block of the supervoxels it cuts).  ``what``
        says what was asked, ``nothing`` what was left undone ("Nothing was split")."""
        if not self.derives_scales:
            return
        levels = len(self.meta.scales) - 1
        for blk in blocks:
            at = Vec(*blk)
            breaks = _downres_breaks(at, at, levels)  # (the rule create and write apply)
            if breaks is not None:
                raise _downres_refusal(f"{self.url}: {what}", self.typename, levels,
                                       self.meta.scale(0).chunks, breaks, nothing)

    def check_local_edit(self, what: str, blocks: Iterable[Box] | None = None, *,
                         bodies: Iterable[int] | None = None, writes: Iterable[int] = (),
                         scale: int = 0) -> None:
        """Refuse (InvalidRequestError, before anything is written) an edit that voxgate would
        make by writing a labelmap's body view block by block (proofreading's local path, its
        undo) where DVID agglomerates supervoxels: a write stores each id as a supervoxel, so
        every body read from the blocks and written back becomes a supervoxel of its id,
        which the mapping may send elsewhere (a supervoxel merged into body w reads as w, one
        DVID split is retired and reads as 0: the voxels of a body split and undone on the
        server became 0), and the body's own supervoxels are lost.  Edits then go through
        DVID (prefer="server"); the supervoxels view (``supervoxels=True``) is written as
        supervoxels.

        ``blocks``: the boxes (at ``scale``) of the blocks the edit may rewrite.  The edit is
        then safe when each supervoxel they hold, and each id it ``writes``, is its own body:
        ``GET mapping?nolookup=true`` answers the id itself (handlers.go handleMapping: the
        id where the mapping has no entry, else its entry; 0 for a retired id).  Written back
        as a supervoxel, each voxel then reads as the body it read as, and no supervoxel
        another body holds is overwritten.  Only those supervoxels are asked about (one
        ``supervoxels=true`` read of the blocks, one mapping request per 100,000 ids), not
        the node's whole mapping.  ``bodies``: the edit rewrites only the blocks holding one
        of these bodies (a relabel's old ids); None: every block given.  Without ``blocks``
        (the check of old) any non-identity mapping or supervoxel split of the node refuses
        (``GET mappings``, ``GET supervoxel-splits``, each fetched whole)."""
        if self.labels is None or self.supervoxels or self.typename != "labelmap":
            return
        if blocks is None:
            if self.labels.agglomerated():
                raise self._local_edit_refusal(
                    what, "this labelmap maps supervoxels to other bodies (merges, or "
                    "supervoxels DVID split, which now read as 0)")
            return
        bad = self._not_own_bodies(list(blocks), bodies, writes, scale)
        if bad:
            shown = ", ".join(f"{i} reads as {f'body {b}' if b else '0'}" for i, b in bad[:5])
            raise self._local_edit_refusal(
                what, f"DVID maps ids of the blocks it rewrites (or that it writes) to other "
                f"bodies ({shown}{', ...' if len(bad) > 5 else ''}; 0: a supervoxel DVID "
                "split, a cleaved or renumbered body's new id)")

    def _local_edit_refusal(self, what: str, why: str) -> InvalidRequestError:
        return InvalidRequestError(
            f"{self.url}: {what} on voxgate's local path would write body ids into DVID as "
            f"supervoxels, and {why}: the written voxels could read back as another body or "
            "as 0, and the bodies' supervoxels would be lost. Nothing was changed. Edit "
            "through DVID (prefer='server', the default for merge and split; a merge into one "
            "of the merged ids), or open the supervoxels view (supervoxels=True) to edit "
            "supervoxels")

    def _not_own_bodies(self, blocks: list[Box], bodies: Iterable[int] | None,
                        writes: Iterable[int], scale: int) -> list[tuple[int, int]]:
        """(id, its entry in DVID's mapping) of each supervoxel of ``blocks`` (those holding
        one of ``bodies``, all when None) and each id of ``writes`` that is not its own
        body."""
        assert self.labels is not None
        tile = self._request_tile(scale)
        held: dict[Box, np.ndarray] = {}
        lock = threading.Lock()

        def fetch(b: Box) -> None:
            u = np.unique(np.concatenate([
                np.unique(self._get(t, scale, supervoxels=True)) for t in _tiles(b, tile)]))
            with lock:
                held[b] = u[u != 0]

        self._map(fetch, sorted({b for b in blocks if not b.is_empty()},
                                key=lambda b: tuple(b.start)))
        wr = np.unique(np.array([int(w) for w in writes], dtype=np.uint64))
        wr = wr[wr != 0]
        ids = np.unique(np.concatenate([*held.values(), wr]))
        ids = ids[ids != 0]
        if not len(ids):
            return []
        step = 100_000
        mapped = np.concatenate([self.labels.mapping(ids[i:i + step].tolist(), nolookup=True)
                                 for i in range(0, len(ids), step)])
        if (mapped == ids).all():
            return []
        wanted = None if bodies is None else np.array(sorted({int(b) for b in bodies}),
                                                      dtype=np.uint64)
        bad = [wr[mapped[np.searchsorted(ids, wr)] != wr]] if len(wr) else []
        for u in held.values():
            m = mapped[np.searchsorted(ids, u)]
            if wanted is None or np.isin(m, wanted).any():
                bad.append(u[m != u])
        out = np.unique(np.concatenate(bad)) if bad else np.empty(0, np.uint64)
        return list(zip(out.tolist(), mapped[np.searchsorted(ids, out)].tolist(), strict=True))

    def write_grid(self, scale: int = 0) -> Vec:
        return self.meta.scale(scale).chunks

    def grid_bounds(self, scale: int = 0) -> Box:
        # DVID's blocks lie on the grid through 0: a block planned from an unaligned offset
        # is a read-modify-write of every block it straddles (serialized in this process,
        # racing between worker processes)
        sc = self.meta.scale(scale)
        return origin_grid_bounds(sc.bounds, sc.chunks)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # -- voxels ---------------------------------------------------------------------------------
    def _target(self, scale: int) -> tuple[str, str]:
        """(instance name, query prefix) serving ``scale``."""
        self.meta.scale(scale)
        if self.is_label:
            return self.instance, f"scale={scale}&" if scale else ""
        return self._scale_names[scale], ""

    def _map(self, fn: Any, items: list[Box], *, writing: Box | None = None) -> None:
        """``fn`` over ``items`` on the pool; the first failure raised, with a note of how
        many failed.  ``writing``: the box a write of these requests was given, and a failure
        after others were written raises :class:`PartialWriteError` naming which parts of it
        hold the new data (each request is written whole or not at all)."""
        if len(items) == 1:
            fn(items[0])
            return
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency,
                                                thread_name_prefix="voxgate-dvid")
            pool = self._pool
        futures = [(b, pool.submit(fn, b)) for b in items]
        errors = [(b, f.exception()) for b, f in futures]
        failed = [(b, e) for b, e in errors if e is not None]
        if failed:
            b, exc = failed[0]
            assert exc is not None
            if writing is None:
                exc.add_note(f"{len(failed)} of {len(items)} requests failed, the first at "
                             f"{b!r}; no partial data is returned")
                raise exc
            done = [i.intersect(writing) for i, e in errors if e is None]
            done = [d for d in done if not d.is_empty()]
            if not done:
                raise exc
            raise PartialWriteError(
                f"writing {writing!r} to {self.url}: {len(failed)} of {len(items)} requests "
                f"failed, the first at {b!r} ({exc}); {len(done)} region(s) (in .written) "
                "hold the new data, the others (in .failed) what they held before",
                written=done,
                failed=[d for d in (i.intersect(writing) for i, _ in failed) if not d.is_empty()],
            ) from exc

    def _request_tile(self, scale: int) -> Vec:
        grid = self.meta.scale(scale).chunks
        return grow_block(grid, self.meta.dtype.itemsize, Vec(2**30, 2**30, 2**30),
                          REQUEST_BYTES)

    def _get(self, box: Box, scale: int, *, supervoxels: bool) -> np.ndarray:
        grid = self.meta.scale(scale).chunks
        if self.typename == "labelmap" and box.shape == grid and \
                all(a % g == 0 for a, g in zip(box.start, grid, strict=True)):
            # a labelmap answers a raw GET of exactly one aligned block from that block alone
            # (labelmap blocks.go writeBlockToHTTP) and fails when it was never written: 400
            # "unable to get label block" compressed, a nil-pointer panic (500) uncompressed.
            # One more voxel along x takes DVID's general path, which reads absent blocks as 0
            wider = Box._trusted(box.start, Vec(box.stop.z, box.stop.y, box.stop.x + 1))
            return self._get(wider, scale, supervoxels=supervoxels)[..., :-1]
        name, q = self._target(scale)
        dtype = self.meta.dtype.newbyteorder("<")
        n = box.size * dtype.itemsize
        (ox, oy, oz), (sx, sy, sz) = box.start.xyz(), box.shape.xyz()
        query = q
        if self.is_label:
            if self.compression != "none":
                query += f"compression={self.compression}&"
            if supervoxels:
                query += "supervoxels=true&"
        path = f"/api/node/{self.uuid}/{name}/raw/0_1_2/{sx}_{sy}_{sz}/{ox}_{oy}_{oz}"
        if query:
            path += "?" + query.rstrip("&")
        # the body straight into a buffer of its own (HTTPClient's bulk path: httpx took
        # several times the CPU to receive large bodies)
        raw: bytes | bytearray = bytearray()
        _call(self.client, "GET", path, what=f"reading {box!r} of {self.url}", into=raw)
        where = f"{self.url} {box}"
        try:
            if self.is_label and self.compression == "lz4":
                raw = lz4.block.decompress(raw, uncompressed_size=n)
            elif self.is_label and self.compression == "gzip":
                raw = gzip.decompress(raw)
        except (lz4.block.LZ4BlockError, OSError, EOFError, ValueError, zlib.error) as exc:
            raise CorruptChunkError(
                f"{self.url}: the server's {self.compression} data for {box!r} does not decode "
                f"({exc})", chunk=where) from None
        if len(raw) != n:
            raise CorruptChunkError(
                f"{self.url}: the server sent {len(raw)} bytes for {box!r}, expected {n}",
                chunk=where)
        return np.frombuffer(raw, dtype=dtype).reshape(tuple(box.shape))

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        out = np.empty(tuple(box.shape), dtype=self.meta.dtype)
        if box.is_empty():
            return out
        parts = _tiles(box, self._request_tile(scale))

        def fetch(b: Box) -> None:
            out[b.slices(box.start)] = self._get(b, scale, supervoxels=self.supervoxels)

        self._map(fetch, parts)
        return out

    def _post_label_blocks(self, box: Box, data: np.ndarray, scale: int) -> None:
        """A block-aligned piece of a coarser label scale: ``POST blocks?scale=`` (labelmap
        write.go storeBlocks stores gzipped label Blocks at that scale; a raw POST ignores
        ``scale`` and would land in scale 0)."""
        from ...formats.dvid_block import encode_label_block, pack_block_records

        g = self.meta.scale(scale).chunks
        records = []
        for b in _tiles(box, g):
            blk = np.ascontiguousarray(data[b.slices(box.start)], dtype="<u8")
            records.append(((b.start.x // g.x, b.start.y // g.y, b.start.z // g.z),
                            gzip.compress(encode_label_block(blk), 1)))
        _call(self.client, "POST", f"/api/node/{self.uuid}/{self.instance}/blocks?scale={scale}",
              content=pack_block_records(records), what=f"writing {box!r} of {self.url}",
              idempotent=True)  # (the same voxels again: the label index moves by nothing)

    def _post(self, box: Box, data: np.ndarray, scale: int) -> None:
        if self.is_label and scale > 0:
            self._post_label_blocks(box, data, scale)
            return
        name, q = self._target(scale)
        raw = np.ascontiguousarray(data, dtype=self.meta.dtype.newbyteorder("<")).tobytes()
        # labels: DVID updates its label index by the difference to the blocks it replaces
        # only with mutate=true; without it a write counts the new labels on top of the old
        # ones (labelmap write.go putChunk)
        query = q + ("mutate=true&" if self.is_label else "")
        if self.is_label and self.compression == "lz4":
            raw = lz4.block.compress(raw, store_size=False)
            query += "compression=lz4&"
        elif self.is_label and self.compression == "gzip":
            raw = gzip.compress(raw, 1)
            query += "compression=gzip&"
        (ox, oy, oz), (sx, sy, sz) = box.start.xyz(), box.shape.xyz()
        path = f"/api/node/{self.uuid}/{name}/raw/0_1_2/{sx}_{sy}_{sz}/{ox}_{oy}_{oz}"
        if query:
            path += "?" + query.rstrip("&")
        _call(self.client, "POST", path, content=raw, what=f"writing {box!r} of {self.url}",
              idempotent=True)

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._check_writable()
        if tuple(array.shape) != tuple(box.shape):
            raise InvalidRequestError(
                f"array of shape {array.shape} does not match {box!r} (shape {tuple(box.shape)})")
        if box.is_empty():
            return
        grid = self.meta.scale(scale).chunks
        outer = _aligned(box, grid)
        levels = len(self.meta.scales) - 1
        if self.is_label and scale == 0 and levels:
            breaks = _downres_breaks(
                Vec(*(a // g for a, g in zip(outer.start, grid, strict=True))),
                Vec(*(b // g - 1 for b, g in zip(outer.stop, grid, strict=True))), levels)
            if breaks is not None:
                raise _downres_refusal(f"{self.url}: writing {box!r}", self.typename, levels,
                                       grid, breaks, "Nothing was written")
        tile = self._request_tile(scale)
        if outer == box:
            def put(b: Box) -> None:
                self._post(b, array[b.slices(box.start)], scale)

            self._map(put, _tiles(box, tile), writing=box)
            return
        # DVID takes only block-aligned writes: read the whole blocks (as stored: supervoxels),
        # patch them and write them back; one edge write at a time, so two writes that share
        # a block never lose each other's voxels
        with self._rmw_lock:
            data = np.empty(tuple(outer.shape), dtype=self.meta.dtype)

            def fetch(b: Box) -> None:
                data[b.slices(outer.start)] = self._get(b, scale, supervoxels=True)

            self._map(fetch, _tiles(outer, tile))
            data[box.slices(outer.start)] = array

            def put_all(b: Box) -> None:
                self._post(b, data[b.slices(outer.start)], scale)

            self._map(put_all, _tiles(outer, tile), writing=box)

    # -- ids ------------------------------------------------------------------------------------
    def _labels(self) -> DVIDLabels:
        if self.labels is None:
            raise CapabilityNotSupportedError(f"{self.url} is a {self.typename}, not a labelmap")
        return self.labels

    def reserve_ids(self, count: int) -> int:
        """Reserve ``count`` new label ids; returns the first (like bossdb://'s reserve)."""
        if self.locked and self.versioned:
            raise ReadOnlyError(f"{self.url}: node {self.uuid} is committed; reserve ids on an "
                                "open node")
        if self.typename != "labelmap":
            raise CapabilityNotSupportedError(
                f"{self.url} is a DVID {self.typename}, which hands out no ids (only a "
                "labelmap serves POST nextlabel); take ids above labels.maxlabel() instead")
        return self._labels().reserve_ids(count)

    def label_at(self, point: Iterable[Any], scale: int = 0) -> int:
        return self._labels().label_at(point, scale=scale, supervoxels=self.supervoxels)

    # -- meshes and skeletons (the Services' server-side mesh / skeleton capability) ------------
    def _kv(self, name: str, what: str, create: bool) -> DVIDKeyValue:
        if self._instances.get(name) != "keyvalue":
            self._instances = self.repo.instances()
        if self._instances.get(name) != "keyvalue":
            if not create:
                raise CapabilityNotSupportedError(
                    f"repo {self.repo.root} has no keyvalue instance {name!r} holding {what}s; "
                    f"put_{what}() creates it")
            self._check_writable()
            self.repo.create_instance(name, "keyvalue", node=self.uuid,
                                      tags={"type": what + "es" if what == "mesh" else what + "s"})
            self._instances = self.repo.instances()
        return DVIDKeyValue(self.client, self.uuid, name)

    @staticmethod
    def _body(body: int) -> int:
        if isinstance(body, bool) or not isinstance(body, (int, np.integer)) or \
                not 0 < int(body) < 2**64:
            raise InvalidRequestError(f"a body id is an integer in 1..2^64-1, got {body!r}")
        return int(body)

    def get_mesh(self, body: int) -> bytes:
        """The body's mesh: Neuroglancer legacy fragment bytes from ``<seg>_meshes``."""
        b = self._body(body)
        try:
            return self._kv(self._mesh_name, "mesh", False)[f"{b}.ngmesh"]
        except KeyError:
            raise RemoteNotFoundError(f"no mesh for body {b} in {self._mesh_name} at node "
                                      f"{self.uuid}") from None

    def get_mesh_arrays(self, body: int) -> tuple[np.ndarray, np.ndarray]:
        """(vertices (n, 3) float32 x, y, z in nm, faces (m, 3) uint32) of the body's mesh."""
        return decode_ngmesh(self.get_mesh(body))

    def put_mesh(self, body: int, mesh: Any) -> None:
        """Store a mesh as ``<body>.ngmesh``: fragment bytes, (vertices, faces), or a Mesh."""
        self._check_writable()
        b = self._body(body)
        if isinstance(mesh, tuple):
            data = encode_ngmesh(*mesh)
        elif hasattr(mesh, "to_ngmesh"):
            data = mesh.to_ngmesh()
        elif isinstance(mesh, (bytes, bytearray, memoryview)):
            data = bytes(mesh)
        else:
            raise InvalidRequestError(
                f"a mesh is ngmesh bytes, (vertices, faces) or a Mesh, got {type(mesh).__name__}")
        self._kv(self._mesh_name, "mesh", True)[f"{b}.ngmesh"] = data

    def meshes(self, ids: Iterable[int] | None = None) -> dict[int, Any]:
        """Stored meshes as ``{body: voxgate.formats.mesh.Mesh}`` (all when ``ids`` is None);
        bodies without a stored mesh are left out.  The mesh Service's server path."""
        from ...formats.mesh import Mesh

        kv = self._kv(self._mesh_name, "mesh", False)
        wanted = self.mesh_ids() if ids is None else [self._body(i) for i in ids]
        got = kv.get_many([f"{b}.ngmesh" for b in wanted])
        return {b: Mesh.from_ngmesh(got[f"{b}.ngmesh"], b, name=f"{self._mesh_name}/{b}.ngmesh")
                for b in wanted if f"{b}.ngmesh" in got}

    def skeletons(self, ids: Iterable[int] | None = None) -> dict[int, Any]:
        """Stored skeletons as ``{body: voxgate.formats.skeleton.Skeleton}`` (all when ``ids``
        is None); bodies without one are left out.  The skeletonize Service's server path."""
        from ...formats.skeleton import Skeleton

        kv = self._kv(self._skel_name, "skeleton", False)
        wanted = self.skeleton_ids() if ids is None else [self._body(i) for i in ids]
        got = kv.get_many([f"{b}_swc" for b in wanted])
        return {b: Skeleton.from_swc(got[f"{b}_swc"], b) for b in wanted if f"{b}_swc" in got}

    def has_mesh(self, body: int) -> bool:
        try:
            return f"{self._body(body)}.ngmesh" in self._kv(self._mesh_name, "mesh", False)
        except CapabilityNotSupportedError:
            return False

    def delete_mesh(self, body: int) -> None:
        self._check_writable()
        b = self._body(body)
        try:
            del self._kv(self._mesh_name, "mesh", False)[f"{b}.ngmesh"]
        except KeyError:
            raise RemoteNotFoundError(f"no mesh for body {b}") from None

    def mesh_ids(self) -> list[int]:
        keys = self._kv(self._mesh_name, "mesh", False).keys_list()
        return sorted(int(k[:-7]) for k in keys if k.endswith(".ngmesh") and k[:-7].isdigit())

    def get_skeleton(self, body: int) -> str:
        """The body's skeleton, SWC text from ``<seg>_skeletons`` key ``<body>_swc``."""
        b = self._body(body)
        try:
            return self._kv(self._skel_name, "skeleton", False)[f"{b}_swc"].decode()
        except KeyError:
            raise RemoteNotFoundError(f"no skeleton for body {b} in {self._skel_name} at node "
                                      f"{self.uuid}") from None

    def put_skeleton(self, body: int, skeleton: Any) -> None:
        """Store a skeleton as ``<body>_swc``: SWC text, or a Skeleton (its ``to_swc()``)."""
        self._check_writable()
        b = self._body(body)
        if hasattr(skeleton, "to_swc"):
            skeleton = skeleton.to_swc()
        if not isinstance(skeleton, str):
            raise InvalidRequestError(
                f"a skeleton is SWC text or a Skeleton, got {type(skeleton).__name__}")
        self._kv(self._skel_name, "skeleton", True)[f"{b}_swc"] = skeleton.encode()

    def has_skeleton(self, body: int) -> bool:
        try:
            return f"{self._body(body)}_swc" in self._kv(self._skel_name, "skeleton", False)
        except CapabilityNotSupportedError:
            return False

    def delete_skeleton(self, body: int) -> None:
        self._check_writable()
        b = self._body(body)
        try:
            del self._kv(self._skel_name, "skeleton", False)[f"{b}_swc"]
        except KeyError:
            raise RemoteNotFoundError(f"no skeleton for body {b}") from None

    def skeleton_ids(self) -> list[int]:
        keys = self._kv(self._skel_name, "skeleton", False).keys_list()
        return sorted(int(k[:-4]) for k in keys if k.endswith("_swc") and k[:-4].isdigit())
