"""``precomputed://``: Neuroglancer precomputed image and segmentation layers.

Read and written through tensorstore's ``neuroglancer_precomputed`` driver (several scales;
raw, jpeg, png and compressed_segmentation chunks; unsharded and
``neuroglancer_uint64_sharded_v1`` sharded scales; local, gs://, s3:// and read-only
http(s):// storage).  Precomputed's native order is x, y, z, channel in Fortran order, which
is the same memory as voxgate's C-order (c,) z, y, x: reads pay no transpose.

Two kinds of chunk tensorstore cannot read are decoded by voxgate's own codecs
(:mod:`voxgate.formats.precomputed_chunks`):

- CloudVolume's local-disk convention of storing chunks as ``<name>.gz`` (also ``.br``,
  ``.zstd``, ``.xz``, ``.bz2``).  A local scale directory holding any such file is read and
  written chunk by chunk here; writes keep the convention (gzip for raw and
  compressed_segmentation, plain for jpeg) and remove every other variant of the chunk, since
  CloudFiles reads whichever variant it tries first.
- gzip bodies on object storage that came without a Content-Encoding: when tensorstore finds
  a chunk of an unsharded remote scale undecodable, the read is retried with gzip sniffing.

A layer whose info names an encoding tensorstore refuses (e.g. compresso) makes tensorstore
refuse every scale of it, so such layers are read with voxgate's codecs throughout.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import numpy as np
import tensorstore as ts

from ..errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    ReadOnlyError,
    RemoteExistsError,
    VoxgateError,
)
from ..formats.precomputed_chunks import decode_chunk, encode_chunk
from ..formats.precomputed_info import (
    DTYPES,
    is_http,
    meta_from_info,
    normalize_location,
    read_layer_info,
    update_layer_info,
    write_layer_info,
)
from ..geometry import Box, Vec, chunk_boxes
from ..meta import Scale, VolumeMeta, check_new_scales
from ..storage import (
    GZIP_MAGIC,
    SUFFIXES,
    UNITS_NM,
    atomic_write,
    decompress,
    is_local,
    join,
    kvstore_exists,
    kvstore_spec,
    local_path,
    read_json,
    ts_context,
    ts_errors,
    write_json,
)
from ._tensorstore import TSArray
from .base import Capability, Remote, check_options

__all__ = ["PrecomputedRemote"]

#: encodings tensorstore's driver parses; any other one in an info makes it refuse the layer
_TS_ENCODINGS = frozenset({"raw", "jpeg", "png", "compressed_segmentation"})
#: encodings voxgate's own codecs handle (for chunks tensorstore cannot reach)
_OWN_ENCODINGS = frozenset({"raw", "jpeg", "compressed_segmentation"})
_SHARDING_TYPE = "neuroglancer_uint64_sharded_v1"
#: ``sharded=True`` puts up to this many uncompressed bytes in one shard: writes and copies
#: hold whole shards in memory, a few per worker
_SHARD_TARGET_BYTES = 64 * 2**20
#: up to 2**6 chunks share one minishard index, so a chunk lookup reads a small index
_MAX_PRESHIFT_BITS = 6
_CSEG_BLOCK = (8, 8, 8)


class PrecomputedRemote(Remote):
    scheme = "precomputed"
    create_options = ("sharded",)

    def __init__(self, location: str, info: dict[str, Any], mode: str) -> None:
        self.location = location
        self.mode = mode
        self.url = f"precomputed://{location}"
        self._lock = threading.Lock()
        self._io: list[_ScaleIO | None] = []  # one handle per scale, opened at first use
        self._set_info(info)

    def _set_info(self, info: dict[str, Any]) -> None:
        meta = meta_from_info(info, join(self.location, "info"))
        with self._lock:
            self._info = info
            self.meta = meta
            # scales are only ever appended, so handles already open stay valid
            self._io += [None] * (len(meta.scales) - len(self._io))
            # tensorstore parses every scale when it opens one: an encoding it does not know
            # anywhere in the info makes it refuse the whole layer
            self._ts_ok = all(s.get("encoding", "raw") in _TS_ENCODINGS for s in info["scales"])

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> PrecomputedRemote:
        check_options("precomputed://", options, cls.open_options)
        location, info = read_layer_info(location, mode)
        return cls(location, info, mode)

    @classmethod
    def exists(cls, location: str) -> bool:
        return kvstore_exists(normalize_location(location), "info")

    # -- creating -------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        location: str,
        meta: VolumeMeta,
        *,
        exist_ok: bool = False,
        sharded: bool | Mapping[str, Any] = False,
        **options: Any,
    ) -> PrecomputedRemote:
        """Write an info for ``meta`` and open the layer read-write.

        ``sharded``: False (one file per chunk), True (a ``neuroglancer_uint64_sharded_v1``
        layout with shards of up to 64 MiB of voxels) or an explicit sharding spec applied to
        every scale.  Encodings come from each scale's ``encoding``: None is raw for images
        and compressed_segmentation (8x8x8 blocks) for segmentations.
        """
        check_options("precomputed://", options, ())
        if not isinstance(sharded, (bool, Mapping)):
            raise InvalidRequestError(
                f"sharded must be True, False or a sharding spec dict, got {sharded!r}"
            )
        location = normalize_location(location)
        if is_http(location):
            raise ReadOnlyError(f"{location} is served over HTTP, which voxgate can only read")
        if cls.exists(location):
            if not exist_ok:
                raise RemoteExistsError(
                    f"a precomputed volume already exists at {location!r} (pass exist_ok=True "
                    "to open it)"
                )
            existing = cls.open(location, mode="r+")
            _check_compatible(existing.meta, meta, location)
            extra = meta.scales[len(existing.meta.scales) :]
            if extra:
                existing._append_scales(meta, extra, sharded)
            return existing
        _check_meta(meta)
        info: dict[str, Any] = {
            "@type": "neuroglancer_multiscale_volume",
            "type": meta.kind,
            "data_type": meta.dtype.name,
            "num_channels": meta.num_channels,
            "scales": [],
        }
        keys: set[str] = set()
        for sc in meta.scales:
            scale_info = _scale_info(meta, sc, sharded, keys)
            keys.add(scale_info["key"])
            info["scales"].append(scale_info)
        write_json(location, "info", info)
        return cls.open(location, mode="r+")

    def _append_scales(
        self, meta: VolumeMeta, scales: Sequence[Scale], sharded: bool | Mapping[str, Any]
    ) -> None:
        info = read_json(self.location, "info")  # the stored one: others may have added keys
        keys = {s["key"] for s in info["scales"]}
        for sc in scales:
            scale_info = _scale_info(meta, sc, sharded, keys)
            keys.add(scale_info["key"])
            info["scales"].append(scale_info)
        self._write_info(info)

    def update_info(self, changes: Mapping[str, Any]) -> None:
        """Set top-level info keys (e.g. ``{"mesh": "mesh"}``), keeping every other key.

        The keys that define the stored voxels (scales, data_type, num_channels) cannot be
        changed this way.
        """
        self._check_writable()
        self._set_info(update_layer_info(self.location, changes))

    def _write_info(self, info: dict[str, Any]) -> None:
        write_layer_info(self.location, info)
        self._set_info(info)

    # -- data -----------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        caps: set[Capability] = {Capability.CHUNK_PRESENCE}
        if self.mode == "r+":
            caps |= {Capability.WRITE, Capability.ADD_SCALES}
        # meshes and skeletons already in the layer are the "server-side" results here
        if self._info.get("mesh"):
            caps.add(Capability.SERVER_MESH)
        if self._info.get("skeletons"):
            caps.add(Capability.SERVER_SKELETON)
        return frozenset(caps)

    def meshes(self, ids: Iterable[int] | None = None) -> dict[int, Any]:
        """The layer's stored meshes of ``ids`` (all when None), as ``{id: Mesh}``."""
        from ..formats.mesh import read_meshes

        return read_meshes(self.url, ids)

    def skeletons(self, ids: Iterable[int] | None = None) -> dict[int, Any]:
        """The layer's stored skeletons of ``ids`` (all when None), as ``{id: Skeleton}``."""
        from ..formats.skeleton import read_skeletons

        return read_skeletons(self.url, ids)

    def add_scales(self, scales: Sequence[Scale]) -> None:
        """New scales in the info, sharded like scale 0 (tensorstore picks the same spec)."""
        self._check_writable()
        check_new_scales(self.meta, scales)
        sharded = "sharding" in self._info["scales"][0]
        self._append_scales(self.meta, scales, sharded)

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        if self.missing == "error":
            self._check_present(box, scale)
        io = self._scale_io(scale)
        try:
            return io.read(box)
        except CorruptChunkError:
            retry = self._gzip_fallback(scale, io)
            if retry is None:
                raise
            out = retry.read(box)  # a chunk that is really damaged raises here, naming it
            self._io[scale] = retry
            return out

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._check_writable()
        self._scale_io(scale).write(box, array)

    def absent_chunks(self, box: Box, scale: int = 0) -> list[Vec]:
        """Chunks touching ``box`` with no chunk file (any of CloudVolume's compressed
        suffixes counts) or, in a sharded scale, no entry in its shard's index."""
        sc = self.meta.scale(scale)
        cells = list(chunk_boxes(box, sc.chunks, sc.bounds))
        sharding = self._info["scales"][scale].get("sharding")
        where = join(self.location, sc.key or "")
        if sharding:
            present = _sharded_presence(where, sharding, sc, len(cells))
            absent = [g for g, _ in cells if not present(g)]
        elif is_local(self.location):
            directory = local_path(where)

            def stored(cell: Box) -> bool:
                base = os.path.join(directory, _chunk_name(cell))
                return any(os.path.exists(base + sfx) for sfx in ("", *SUFFIXES))

            absent = [g for g, cell in cells if not stored(cell)]
        else:
            kv = _KvChunks(where)
            absent = [g for g, cell in cells if not kv.exists(_chunk_name(cell))]
        return sorted(absent)

    def write_grid(self, scale: int = 0) -> Vec:
        sc = self.meta.scale(scale)
        sharding = self._info["scales"][scale].get("sharding")
        # with the identity hash a shard is a box of chunks, and writing whole shards means
        # no shard is read back and rewritten by two writers; a hashed layout scatters
        # chunks, so there is no box to align to
        if sharding and sharding.get("hash") == "identity":
            return _shard_shape(sc, sharding)
        return sc.chunks

    # -- per-scale I/O --------------------------------------------------------------------------
    def _scale_io(self, scale: int) -> _ScaleIO:
        self.meta.scale(scale)  # a clear error for a scale that does not exist
        io = self._io[scale]
        if io is None:
            with self._lock:
                io = self._io[scale]
                if io is None:
                    io = self._io[scale] = self._make_io(scale)
        return io

    def _make_io(self, scale: int) -> _ScaleIO:
        sc = self.meta.scales[scale]
        sharded = "sharding" in self._info["scales"][scale]
        local: _LocalChunks | None = None
        if is_local(self.location):
            directory = os.path.normpath(os.path.join(local_path(self.location), sc.key or ""))
            suffixed = _find_suffixed(directory)
            if suffixed is not None:
                if sharded:
                    raise CapabilityNotSupportedError(
                        f"{suffixed} is a compressed shard file (CloudVolume compress=True); "
                        "tensorstore reads only plain shard files: decompress them first"
                    )
                return self._chunk_io(scale, _LocalChunks(directory, gzip_writes=True))
            local = _LocalChunks(directory, gzip_writes=False)  # a plain layer stays plain
        if not self._ts_ok:
            if sharded:
                raise CapabilityNotSupportedError(
                    f"scale {scale} of {self.location} is sharded, and another scale's encoding "
                    f"({self._unsupported_encodings()}) keeps tensorstore from opening the layer"
                )
            return self._chunk_io(scale, local or self._kv_chunks(scale))
        return self._ts_io(scale)

    def _kv_chunks(self, scale: int) -> _KvChunks:
        return _KvChunks(join(self.location, self.meta.scales[scale].key or ""))

    def _ts_io(self, scale: int) -> TSArray:
        spec = {
            "driver": "neuroglancer_precomputed",
            "kvstore": kvstore_spec(self.location),
            "scale_index": scale,
            # chunks equal to 0 are written too, as CloudVolume does: its readers refuse
            # missing chunks unless fill_missing is set
            "store_data_equal_to_fill_value": True,
        }
        with ts_errors(f"opening scale {scale} of {self.url}"):
            store = ts.open(
                spec, read=True, write=self.mode == "r+", context=ts_context()
            ).result()
        return TSArray(
            store,
            reversed_axes=True,
            channel=True,
            keep_channel=self.meta.num_channels > 1,
            name=f"{self.url} scale {scale}",
        )

    def _chunk_io(self, scale: int, store: _ChunkStore) -> _ChunkScale:
        sc = self.meta.scales[scale]
        encoding = sc.encoding or "raw"
        if encoding not in _OWN_ENCODINGS:
            raise CapabilityNotSupportedError(
                f"scale {scale} of {self.url} is {encoding!r}-encoded; voxgate reads raw, jpeg, "
                "png and compressed_segmentation (png only where tensorstore reads the layer)"
            )
        block = self._info["scales"][scale].get("compressed_segmentation_block_size")
        return _ChunkScale(
            store,
            sc,
            self.meta.dtype,
            self.meta.num_channels,
            encoding,
            Vec.from_xyz(block, "compressed_segmentation_block_size") if block else None,
        )

    def _gzip_fallback(self, scale: int, io: _ScaleIO) -> _ChunkScale | None:
        """Our codecs with gzip sniffing, for an unsharded remote scale tensorstore failed on."""
        if not isinstance(io, TSArray) or is_local(self.location):
            return None
        if "sharding" in self._info["scales"][scale]:
            return None
        if self.meta.scales[scale].encoding not in _OWN_ENCODINGS:
            return None
        return self._chunk_io(scale, self._kv_chunks(scale))

    def _unsupported_encodings(self) -> str:
        found = {s.get("encoding") for s in self._info["scales"]} - _TS_ENCODINGS
        return ", ".join(sorted(str(e) for e in found))


class _ScaleIO(Protocol):
    def read(self, box: Box) -> np.ndarray: ...

    def write(self, box: Box, array: np.ndarray) -> None: ...


# -- chunks voxgate decodes itself --------------------------------------------------------------
class _ChunkStore(Protocol):
    where: str

    def get(self, name: str) -> tuple[bytes, str] | None:
        """The chunk's bytes (transport compression removed) and its full name, or None."""

    def put(self, name: str, data: bytes, *, compress: bool = True) -> None:
        """Store a chunk; ``compress`` False for encodings that are compressed already."""


class _LocalChunks:
    """Chunk files in one local scale directory, in CloudFiles' compressed-suffix convention."""

    def __init__(self, directory: str, *, gzip_writes: bool) -> None:
        self.directory = directory
        self.where = directory
        self.gzip_writes = gzip_writes

    def get(self, name: str) -> tuple[bytes, str] | None:
        base = os.path.join(self.directory, name)
        for suffix in (*SUFFIXES, ""):
            path = base + suffix
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise VoxgateError(f"cannot read chunk {path}: {exc}") from exc
            return decompress(data, suffix, path), path
        return None

    def put(self, name: str, data: bytes, *, compress: bool = True) -> None:
        os.makedirs(self.directory, exist_ok=True)
        # CloudVolume gzips raw and compressed_segmentation chunks and leaves jpeg plain
        suffix = ".gz" if self.gzip_writes and compress else ""
        if suffix:
            data = gzip.compress(data, compresslevel=6)
        path = os.path.join(self.directory, name + suffix)
        # a temporary name then a rename: a crash never leaves a half-written chunk
        atomic_write(path, data)
        # CloudFiles reads whichever variant it tries first (its order adapts at run time),
        # so no other variant of this chunk may survive
        for other in (*SUFFIXES, ""):
            if other != suffix:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.directory, name + other))


class _KvChunks:
    """Chunks under one scale key on any tensorstore kvstore (object storage, HTTP)."""

    def __init__(self, location: str) -> None:
        self.where = location
        self._spec = kvstore_spec(location)
        self._kv: ts.KvStore | None = None

    def _store(self) -> ts.KvStore:
        if self._kv is None:
            with ts_errors(f"opening {self.where}"):
                self._kv = ts.KvStore.open(self._spec, context=ts_context()).result()
        return self._kv

    def get(self, name: str) -> tuple[bytes, str] | None:
        full = join(self.where, name)
        with ts_errors(f"reading chunk {full}"):
            result = self._store().read(name).result()
        if result.state != "value":
            return None
        return bytes(result.value), full

    def exists(self, name: str) -> bool:
        """Whether the chunk is stored, without fetching it (a zero-length read: a HEAD over
        HTTP, object metadata on gs/s3)."""
        with ts_errors(f"looking up chunk {join(self.where, name)}"):
            result = self._store().read(name, byte_range=slice(0, 0)).result()
        return bool(result.state == "value")

    def put(self, name: str, data: bytes, *, compress: bool = True) -> None:
        with ts_errors(f"writing chunk {join(self.where, name)}"):
            self._store().write(name, data).result()


class _ChunkScale:
    """One unsharded scale read and written chunk by chunk with voxgate's codecs."""

    def __init__(
        self,
        store: _ChunkStore,
        scale: Scale,
        dtype: np.dtype[Any],
        channels: int,
        encoding: str,
        block: Vec | None,
    ) -> None:
        self.store = store
        self.scale = scale
        self.dtype = dtype
        self.channels = channels
        self.encoding = encoding
        self.block = block

    def _cells(self, box: Box) -> list[Box]:
        return [cell for _, cell in chunk_boxes(box, self.scale.chunks, self.scale.bounds)]

    def _load(self, cell: Box) -> np.ndarray | None:
        got = self.store.get(_chunk_name(cell))
        if got is None:
            return None  # an absent chunk is all zeros
        data, name = got
        shape = (self.channels, *cell.shape)
        if data[:2] == GZIP_MAGIC and not (
            self.encoding == "raw" and len(data) == math.prod(shape) * self.dtype.itemsize
        ):
            # gzip stored without a Content-Encoding (or a .gz name) to say so; no other
            # encoding starts with these bytes, and a raw chunk that does has the exact length
            data = decompress(data, ".gz", name)
        return decode_chunk(data, self.encoding, shape, self.dtype, block_size=self.block,
                            name=name)

    def read(self, box: Box) -> np.ndarray:
        out = np.zeros((self.channels, *box.shape), dtype=self.dtype)

        def load(cell: Box) -> None:
            chunk = self._load(cell)
            if chunk is not None:
                part = cell.intersect(box)
                out[(slice(None), *part.slices(box.start))] = chunk[
                    (slice(None), *part.slices(cell.start))
                ]

        _each(load, self._cells(box))
        return out if self.channels > 1 else out[0]

    def write(self, box: Box, array: np.ndarray) -> None:
        data = array if self.channels > 1 else array[np.newaxis]

        def store(cell: Box) -> None:
            part = cell.intersect(box)
            new = data[(slice(None), *part.slices(box.start))]
            if part != cell:  # a partial chunk: read, modify, write
                old = self._load(cell)
                chunk = (
                    np.zeros((self.channels, *cell.shape), self.dtype) if old is None
                    else old.copy()
                )
                chunk[(slice(None), *part.slices(cell.start))] = new
                new = chunk
            payload = encode_chunk(
                np.ascontiguousarray(new, dtype=self.dtype), self.encoding,
                block_size=self.block,
            )
            self.store.put(_chunk_name(cell), payload, compress=self.encoding != "jpeg")

        _each(store, self._cells(box))


_T = TypeVar("_T")


def _each(fn: Callable[[_T], object], items: Iterable[_T]) -> None:
    """Run ``fn`` over ``items`` on a few threads (zlib and numpy copies release the GIL)."""
    todo = list(items)
    if len(todo) <= 2:
        for item in todo:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
        for _ in pool.map(fn, todo):
            pass


def _compressed_morton(g: Vec, sc: Scale) -> int:
    """The compressed Morton code of grid index ``g`` (z, y, x): the chunk id of a sharded
    scale.  Bits are taken from x, y, z in turn, skipping axes whose grid has run out."""
    bits = [(n - 1).bit_length() for n in _grid(sc)]
    xyz = g.xyz()
    code, out = 0, 0
    for level in range(max(bits, default=0)):
        for d in range(3):
            if level < bits[d]:
                code |= ((int(xyz[d]) >> level) & 1) << out
                out += 1
    return code


def _sharded_presence(
    where: str, sharding: Mapping[str, Any], sc: Scale, count: int
) -> Callable[[Vec], bool]:
    """Whether a grid index has an entry in its shard: one lookup per chunk for a few chunks,
    one listing of the shard indexes for many (no chunk data is decoded either way)."""
    with ts_errors(f"opening the shards of {where}"):
        kv = ts.KvStore.open(
            {"driver": "neuroglancer_uint64_sharded", "base": kvstore_spec(where),
             "metadata": dict(sharding)},
            context=ts_context(),
        ).result()
    if count > 64:
        with ts_errors(f"listing the shards of {where}"):
            keys = {struct.unpack(">Q", bytes(k))[0] for k in kv.list().result()}
        return lambda g: _compressed_morton(g, sc) in keys

    def lookup(g: Vec) -> bool:
        key = struct.pack(">Q", _compressed_morton(g, sc))
        with ts_errors(f"looking up chunk {tuple(g)} in the shards of {where}"):
            # zero bytes of the chunk: only the shard's indexes are read
            return bool(kv.read(key, byte_range=slice(0, 0)).result().state == "value")

    return lookup


def _chunk_name(cell: Box) -> str:
    """``x0-x1_y0-y1_z0-z1``: absolute voxel coordinates, exclusive ends."""
    (z0, y0, x0), (z1, y1, x1) = cell.start, cell.stop
    return f"{x0}-{x1}_{y0}-{y1}_{z0}-{z1}"


def _find_suffixed(directory: str) -> str | None:
    """A compressed-suffix chunk file in ``directory``, if there is one (stops at the first)."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(SUFFIXES):
                    return entry.path
    except (FileNotFoundError, NotADirectoryError):
        pass
    return None


# -- info <-> VolumeMeta ------------------------------------------------------------------------
def _check_meta(meta: VolumeMeta) -> None:
    if meta.dtype.name not in DTYPES:
        raise InvalidRequestError(
            f"precomputed volumes hold {', '.join(DTYPES)}, not {meta.dtype.name}"
        )
    if meta.kind == "segmentation" and meta.dtype.name not in ("uint32", "uint64"):
        raise InvalidRequestError(
            f"a precomputed segmentation holds uint32 or uint64 ids, not {meta.dtype.name} "
            "(use kind='image' for other data)"
        )
    if meta.fill_value != 0:
        raise InvalidRequestError(
            f"precomputed volumes have no fill value (absent chunks read as 0); this volume "
            f"asks for {meta.fill_value}"
        )


def _nm(value: float, unit: str) -> float:
    factor = UNITS_NM.get(unit)
    if factor is None:
        raise InvalidRequestError(
            f"voxel size unit {unit!r} is unknown; use one of {', '.join(UNITS_NM)}"
        )
    nm = value * factor
    return int(nm) if float(nm).is_integer() else nm


def _scale_info(
    meta: VolumeMeta, sc: Scale, sharded: bool | Mapping[str, Any], taken: set[str]
) -> dict[str, Any]:
    """One entry of the info's ``scales``; ``taken`` holds keys already used."""
    dtype, channels = meta.dtype, meta.num_channels
    if any(c <= 0 for c in sc.chunks) or any(s <= 0 for s in sc.shape):
        raise InvalidRequestError(f"scale {sc.index}: shape and chunks must be positive")
    encoding = sc.encoding or (
        "compressed_segmentation" if meta.kind == "segmentation" else "raw"
    )
    if encoding == "compressed_segmentation" and dtype.name not in ("uint32", "uint64"):
        raise InvalidRequestError(
            f"compressed_segmentation holds uint32 or uint64 data, not {dtype.name}"
        )
    if encoding == "jpeg" and (dtype.name != "uint8" or channels not in (1, 3)):
        raise InvalidRequestError(
            f"jpeg holds uint8 data with 1 or 3 channels, not {dtype.name} with {channels}"
        )
    if encoding == "jpeg" and meta.kind == "segmentation":
        raise InvalidRequestError("jpeg is lossy and would change segment ids; use "
                                  "compressed_segmentation or raw")
    if encoding == "png" and (dtype.name not in ("uint8", "uint16") or channels > 4):
        raise InvalidRequestError(
            f"png holds uint8 or uint16 data with 1 to 4 channels, not {dtype.name} with "
            f"{channels}"
        )
    if encoding not in _TS_ENCODINGS:
        raise InvalidRequestError(
            f"voxgate writes precomputed encodings {', '.join(sorted(_TS_ENCODINGS))}, "
            f"not {encoding!r}"
        )
    res = [_nm(v, sc.voxel_size.unit) for v in sc.voxel_size.xyz()]
    key = sc.key or "_".join(f"{v:g}" for v in res)
    if key in taken:
        key = f"{key}_{sc.index}"
    if key in taken:
        raise InvalidRequestError(f"scale key {key!r} is used twice")
    out: dict[str, Any] = {
        "key": key,
        "size": list(sc.shape.xyz()),
        "resolution": res,
        "voxel_offset": list(sc.offset.xyz()),
        "chunk_sizes": [list(sc.chunks.xyz())],
        "encoding": encoding,
    }
    if encoding == "compressed_segmentation":
        out["compressed_segmentation_block_size"] = list(_CSEG_BLOCK)
    if isinstance(sharded, Mapping):
        out["sharding"] = _check_sharding(sharded)
    elif sharded:
        out["sharding"] = _pick_sharding(sc, dtype.itemsize * channels, encoding)
    if "sharding" in out and _grid_bits(sc) > 64:
        raise InvalidRequestError(
            f"scale {sc.index} has too many chunks to shard (their ids need more than 64 "
            "bits); use bigger chunks"
        )
    return out


def _grid(sc: Scale) -> list[int]:
    """Chunks per axis, (x, y, z)."""
    return [-(-n // c) for n, c in zip(sc.shape.xyz(), sc.chunks.xyz(), strict=True)]


def _grid_bits(sc: Scale) -> int:
    """Bits of the compressed Morton code of this scale's chunk grid."""
    return sum((g - 1).bit_length() for g in _grid(sc))


def _pick_sharding(sc: Scale, voxel_bytes: int, encoding: str) -> dict[str, Any]:
    chunk_bytes = sc.chunks.prod() * voxel_bytes
    per_shard = max(1, _SHARD_TARGET_BYTES // chunk_bytes).bit_length() - 1
    low = min(_grid_bits(sc), per_shard)  # Morton bits inside one shard
    preshift = min(low, _MAX_PRESHIFT_BITS)
    return {
        "@type": _SHARDING_TYPE,
        "hash": "identity",  # keeps each shard a box of chunks (see write_grid)
        "preshift_bits": preshift,
        "minishard_bits": low - preshift,
        "shard_bits": _grid_bits(sc) - low,
        "minishard_index_encoding": "gzip",
        # jpeg and png are compressed already
        "data_encoding": "raw" if encoding in ("jpeg", "png") else "gzip",
    }


def _check_sharding(spec: Mapping[str, Any]) -> dict[str, Any]:
    out = {"@type": _SHARDING_TYPE, "minishard_index_encoding": "raw", "data_encoding": "raw",
           **spec}
    problems = []
    if out["@type"] != _SHARDING_TYPE:
        problems.append(f"@type must be {_SHARDING_TYPE!r}")
    if out.get("hash") not in ("identity", "murmurhash3_x86_128"):
        problems.append("hash must be 'identity' or 'murmurhash3_x86_128'")
    bits = [out.get(k) for k in ("preshift_bits", "minishard_bits", "shard_bits")]
    if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in bits):
        problems.append("preshift_bits, minishard_bits and shard_bits must be integers >= 0")
    elif sum(bits) > 64:  # type: ignore[arg-type]
        problems.append("preshift_bits + minishard_bits + shard_bits must be <= 64")
    for k in ("minishard_index_encoding", "data_encoding"):
        if out[k] not in ("raw", "gzip"):
            problems.append(f"{k} must be 'raw' or 'gzip'")
    unknown = set(out) - {"@type", "hash", "preshift_bits", "minishard_bits", "shard_bits",
                          "minishard_index_encoding", "data_encoding"}
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)}")
    if problems:
        raise InvalidRequestError("bad sharding spec: " + "; ".join(problems))
    return out


def _shard_shape(sc: Scale, sharding: Mapping[str, Any]) -> Vec:
    """The box of chunks one shard holds under the identity hash, (z, y, x) voxels.

    The low ``preshift_bits + minishard_bits`` bits of a compressed Morton code pick the
    chunk inside its shard; they are taken from x, y, z in turn, skipping axes whose grid has
    run out of bits, so a shard is 2**k chunks along each axis.
    """
    grid = _grid(sc)
    low = int(sharding["preshift_bits"]) + int(sharding["minishard_bits"])
    counts = [0, 0, 0]
    level = 0
    while low > 0 and any((1 << level) < g for g in grid):
        for d in range(3):
            if low > 0 and (1 << level) < grid[d]:
                counts[d] += 1
                low -= 1
        level += 1
    xyz = [c << k for c, k in zip(sc.chunks.xyz(), counts, strict=True)]
    return Vec.from_xyz(xyz)


def _check_compatible(existing: VolumeMeta, wanted: VolumeMeta, location: str) -> None:
    if (
        existing.dtype != wanted.dtype
        or existing.shape != wanted.shape
        or existing.num_channels != wanted.num_channels
    ):
        raise RemoteExistsError(
            f"{location!r} already holds a {existing.dtype.name} volume of shape "
            f"{tuple(existing.shape)} with {existing.num_channels} channel(s), not the "
            f"{wanted.dtype.name} {tuple(wanted.shape)} with {wanted.num_channels} asked for"
        )
