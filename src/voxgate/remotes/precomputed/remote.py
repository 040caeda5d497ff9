"""The precomputed Remote: opening and creating layers, reads and writes per scale (through
tensorstore, or voxgate's own codecs for chunks tensorstore cannot read), chunk presence."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorstore as ts

from ...errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    ReadOnlyError,
    RemoteNotFoundError,
)
from ...formats.precomputed_info import (
    ANCHOR_KEY,
    is_http,
    meta_from_info,
    normalize_location,
    read_layer_info,
    update_layer_info,
)
from ...geometry import Box, Vec, chunk_boxes
from ...meta import Scale, VolumeMeta, check_new_scales
from ...storage import (
    SUFFIXES,
    Directory,
    check_bucket,
    ignores_ranges,
    is_local,
    join,
    json_object,
    kvstore_exists,
    kvstore_spec,
    local_path,
    ranges_ignored,
    ts_context,
    ts_errors,
)
from .._tensorstore import TSArray
from ..base import Capability, Remote, check_options, open_existing
from .chunks import (
    _OWN_ENCODINGS,
    _chunk_name,
    _ChunkScale,
    _ChunkStore,
    _find_suffixed,
    _KvChunks,
    _LocalChunks,
    _ScaleIO,
    _stored_remote,
)
from .info import _TS_ENCODINGS, _check_meta, _scale_info
from .sharding import _grid, _shard_shape, _sharded_presence, _WholeShards, _ZeroChunks

__all__ = ["PrecomputedRemote"]

#: reads and conditional writes of a layer's info by add_scales before giving up
_INFO_ATTEMPTS = 20


class _Taken(Exception):
    """Raised by a create that finds the layer's info already there."""


def _parse_info(raw: bytes | None, where: str) -> dict[str, Any]:
    """A layer's stored info (``raw``), checked as ``read_layer_info`` and ``open`` do."""
    if raw is None:
        raise RemoteNotFoundError(f"{where} does not exist")
    info = json_object(raw, where, InvalidRequestError)
    meta_from_info(info, where)
    return info


class PrecomputedRemote(Remote):
    scheme = "precomputed"
    create_options = ("sharded",)
    # chunks of 0 are written, as CloudVolume writes them: its readers refuse absent chunks
    # unless fill_missing is set
    keeps_fill_chunks = True

    def __init__(self, location: str, info: dict[str, Any], mode: str) -> None:
        self.location = location
        self.mode = mode
        self.url = f"precomputed://{location}"
        self._lock = threading.Lock()
        self._io: list[_ScaleIO | None] = []  # one handle per scale, opened at first use
        self._zeros: dict[int, _ZeroChunks | None] = {}  # per sharded scale, made at first use
        self._set_info(info)

    def _set_info(self, info: dict[str, Any]) -> None:
        where = join(self.location, "info")
        # refuses what tensorstore would refuse only at the first read
        meta = meta_from_info(info, where)
        with self._lock:
            # scales are only ever appended, so handles already open stay valid; the list
            # grows before the metadata names the new scales, so a read on another thread
            # that sees them finds their slot
            self._io += [None] * (len(meta.scales) - len(self._io))
            self._info = info
            self.meta = meta
            # a relay's precomputed dialect says when its coarser voxels lie on the grid
            # through 0 (docs/relay.md); the format's own rule is blocks from the first voxel
            self.pyramid_anchor = "origin" if info.get(ANCHOR_KEY) == "origin" else "offset"
            # tensorstore parses every scale when it opens one: an encoding it does not know
            # anywhere in the info makes it refuse the whole layer
            self._ts_ok = all(s.get("encoding", "raw") in _TS_ENCODINGS for s in info["scales"])

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> PrecomputedRemote:
        check_options("precomputed://", options, cls.open_options, "open")
        try:
            location, info = read_layer_info(location, mode)
        except RemoteNotFoundError:
            # a missing bucket reads as a missing info file: name the bucket instead
            check_bucket(normalize_location(location), f"opening {location}")
            raise
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
        check_options("precomputed://", options, cls.create_options, "create")
        if not isinstance(sharded, (bool, Mapping)):
            raise InvalidRequestError(
                f"sharded must be True, False or a sharding spec dict, got {sharded!r}"
            )
        location = normalize_location(location)
        if is_http(location):
            raise ReadOnlyError(f"{location} is served over HTTP, which voxgate can only read")
        if cls.exists(location):
            return cls._open_existing(location, meta, exist_ok, sharded)
        _check_meta(meta)
        check_bucket(location, f"creating {location}")
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
        data = json.dumps(info, indent=2).encode()

        def create_only(raw: bytes | None) -> bytes:
            if raw is not None:
                raise _Taken
            return data

        # only if still absent: another create between the check above and this write
        # (dask workers creating one output layer) would have lost its info or kept ours
        try:
            Directory(location).update("info", create_only, attempts=_INFO_ATTEMPTS,
                                       advice="too many writers create this layer at once")
        except _Taken:
            return cls._open_existing(location, meta, exist_ok, sharded)
        return cls.open(location, mode="r+")

    @classmethod
    def _open_existing(cls, location: str, meta: VolumeMeta, exist_ok: bool,
                       sharded: bool | Mapping[str, Any]) -> PrecomputedRemote:
        existing = open_existing(cls, location, meta, exist_ok, "a precomputed volume")
        extra = meta.scales[len(existing.meta.scales) :]
        if extra:
            existing._append_scales(meta, extra, sharded)
        return existing

    def _append_scales(
        self, meta: VolumeMeta, scales: Sequence[Scale], sharded: bool | Mapping[str, Any],
        block: Any = None,
    ) -> None:
        """Append ``scales`` (planned from ``self.meta``) to the stored info, keeping every
        other key, with ``Directory.update``: under the info's lock on local disks, on object
        storage written only if nobody changed the info since it was read, else appended
        again to the fresh info.  (It was read and written back with neither: a concurrent
        ``update_info`` lost its ``mesh`` / ``skeletons`` key, or another writer its scale.)

        Scales another writer appended since this layer was opened are kept.  Those that
        are exactly the ones planned here (two downsamples of one layer planning the same
        pyramid) count as added; any other scale at an index planned here is refused
        (InvalidRequestError) rather than stored twice or shifted to another index."""
        known = len(self.meta.scales)
        where = join(self.location, "info")
        written: list[dict[str, Any]] = []

        def change(raw: bytes | None) -> bytes | None:
            info = _parse_info(raw, where)
            stored = info["scales"]
            if len(stored) < known:
                raise InvalidRequestError(
                    f"{where} no longer holds the {known} scales this layer was opened with: "
                    "reopen it")
            keys = {s["key"] for s in stored[:known]}
            base = stored[0]["resolution"]
            ours = []
            for sc in scales:
                scale_info = _scale_info(meta, sc, sharded, keys, block, base)
                keys.add(scale_info["key"])
                ours.append(scale_info)
            theirs = stored[known:]
            for sc, mine, other in zip(scales, ours, theirs, strict=False):
                if mine != other:
                    raise InvalidRequestError(
                        f"another writer added scale {sc.index} to {where} (resolution "
                        f"{other.get('resolution')}, size {other.get('size')}) after this "
                        f"layer was opened, and it is not the scale {sc.index} added here "
                        f"(resolution {mine['resolution']}, size {mine['size']}): reopen the "
                        "layer and plan its scales again")
            written[:] = [info]
            if len(theirs) >= len(ours):
                return None  # every scale planned here is there already
            info["scales"] = stored + ours[len(theirs):]
            meta_from_info(info, where)  # never store an info we cannot read
            return json.dumps(info, indent=2).encode()

        Directory(self.location).update(
            "info", change, attempts=_INFO_ATTEMPTS,
            advice="too many writers change this layer's info at once")
        self._set_info(written[0])

    def update_info(self, changes: Mapping[str, Any]) -> None:
        """Set top-level info keys (e.g. ``{"mesh": "mesh"}``), keeping every other key.

        The keys that define the stored voxels (scales, data_type, num_channels) cannot be
        changed this way.
        """
        self._check_writable()
        self._set_info(update_layer_info(self.location, changes))

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
        from ...formats.mesh import read_meshes

        return read_meshes(self.url, ids)

    def skeletons(self, ids: Iterable[int] | None = None) -> dict[int, Any]:
        """The layer's stored skeletons of ``ids`` (all when None), as ``{id: Skeleton}``."""
        from ...formats.skeleton import read_skeletons

        return read_skeletons(self.url, ids)

    def add_scales(self, scales: Sequence[Scale]) -> None:
        """New scales in the info, as CloudVolume's and Igneous's ``add_scale`` make them:
        scale 0's compressed_segmentation block size, and sharded when scale 0 is, with a
        spec picked per scale (``sharded=True``'s identity hash, as Igneous picks one per
        scale), not scale 0's, whose bits fit scale 0's chunk grid only."""
        self._check_writable()
        check_new_scales(self.meta, scales)
        base = self._info["scales"][0]
        sharded = base.get("sharding") is not None
        self._append_scales(self.meta, scales, sharded,
                            base.get("compressed_segmentation_block_size"))

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        if self.missing == "error":
            self._check_present(box, scale)
        # (_scale_io's fast path, inline: this runs on every read)
        io = self._io[scale] if type(scale) is int and 0 <= scale < len(self.meta.scales) else None
        if io is None:
            io = self._scale_io(scale)
        try:
            return io.read(box)
        except CapabilityNotSupportedError as exc:
            # a sharded scale on an HTTP server that ignores Range: read whole shards instead
            whole = self._whole_shards(scale) if ranges_ignored(exc) else None
            if whole is None:
                raise
            self._io[scale] = whole
            return whole.read(box)
        except CorruptChunkError:
            retry = self._gzip_fallback(scale, io)
            if retry is None:
                raise
            out = retry.read(box)  # a chunk that is really damaged raises here, naming it
            self._io[scale] = retry
            return out

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._check_writable()
        io = self._scale_io(scale)
        io.write(box, array)
        if isinstance(io, TSArray):
            zero = self._zero_chunks(scale)
            if zero is not None:
                # tensorstore leaves chunks of 0 out of shards (_ZeroChunks): CloudVolume
                # refuses them then, unless fill_missing is set
                zero.after_write(box, array)

    def _zero_chunks(self, scale: int) -> _ZeroChunks | None:
        """The shard filler of a scale sharded with the identity hash (None for others: a
        hashed layout's chunks of 0 tensorstore stores), made at first use."""
        if scale in self._zeros:
            return self._zeros[scale]
        scale_info = self._info["scales"][scale]
        zero = None
        if (scale_info.get("sharding") or {}).get("hash") == "identity":
            sc = self.meta.scales[scale]
            zero = _ZeroChunks(join(self.location, sc.key or ""), sc, scale_info,
                               self._info["type"], self.meta.dtype, self.meta.num_channels)
        with self._lock:
            return self._zeros.setdefault(scale, zero)

    def absent_chunks(self, box: Box, scale: int = 0) -> list[Vec]:
        """Chunks touching ``box`` with no chunk file (on local disks any of CloudVolume's
        compressed suffixes counts) or, in a sharded scale, no entry in its shard's index."""
        sc = self.meta.scale(scale)
        cells = list(chunk_boxes(box, sc.chunks, sc.bounds))
        sharding = self._info["scales"][scale].get("sharding")
        where = join(self.location, sc.key or "")
        if sharding:
            present = _sharded_presence(where, sharding, sc, [g for g, _ in cells])
            absent = [g for g, _ in cells if not present(g)]
        elif is_local(self.location):
            directory = local_path(where)

            def stored(cell: Box) -> bool:
                base = os.path.join(directory, _chunk_name(cell))
                return any(os.path.exists(base + sfx) for sfx in ("", *SUFFIXES))

            absent = [g for g, cell in cells if not stored(cell)]
        else:
            # (not tensorstore's storage statistics, which zarr and N5 use: for precomputed
            # (tensorstore 0.1.86) they report every chunk absent under a kvstore path on
            # object storage, and fail on local files)
            names = [(g, _chunk_name(cell)) for g, cell in cells]
            found = _stored_remote(where, (n for _, n in names), _grid(sc))
            absent = [g for g, n in names if n not in found]
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
        if type(scale) is int and 0 <= scale < len(self.meta.scales):
            io = self._io[scale]
            if io is not None:  # every read but the first of a scale
                return io
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
        # "sharding": null is unsharded (tensorstore, CloudVolume)
        sharded = self._info["scales"][scale].get("sharding") is not None
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
        if sharded and ignores_ranges(self.location):
            whole = self._whole_shards(scale)
            if whole is not None:
                return whole
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
        try:
            with ts_errors(f"opening scale {scale} of {self.url}"):
                store = ts.open(
                    spec, read=True, write=self.mode == "r+", context=ts_context()
                ).result()
        except CorruptChunkError as exc:
            # no chunk is read when a scale is opened: what tensorstore refused is the info
            raise InvalidRequestError(
                f"tensorstore refuses the info of {self.url} (scale {scale}): {exc.__cause__}"
            ) from exc
        return TSArray(
            store,
            reversed_axes=True,
            channel=True,
            keep_channel=self.meta.num_channels > 1,
            name=f"{self.url} scale {scale}",
            reference_writes=True,  # opened with ts_context() alone
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
        if self._info["scales"][scale].get("sharding") is not None:
            return None
        if self.meta.scales[scale].encoding not in _OWN_ENCODINGS:
            return None
        return self._chunk_io(scale, self._kv_chunks(scale))

    def _whole_shards(self, scale: int) -> _WholeShards | None:
        """A sharded scale on an HTTP server that ignores Range (whose whole-file answers to
        tensorstore's ranged reads of shard indexes and chunks it refuses) read from whole
        shard files with voxgate's codecs; None when the scale is not sharded, the location
        is not HTTP or voxgate's codecs do not read its encoding (png: tensorstore's refusal,
        which says what to do, stands)."""
        sharding = self._info["scales"][scale].get("sharding")
        sc = self.meta.scales[scale]
        encoding = sc.encoding or "raw"
        if sharding is None or not is_http(self.location) or encoding not in _OWN_ENCODINGS:
            return None
        block = self._info["scales"][scale].get("compressed_segmentation_block_size")
        return _WholeShards(
            join(self.location, sc.key or ""), sc, sharding, self.meta.dtype,
            self.meta.num_channels, encoding,
            Vec.from_xyz(block, "compressed_segmentation_block_size") if block else None,
            f"{self.url} scale {scale}")

    def _unsupported_encodings(self) -> str:
        found = {s.get("encoding") for s in self._info["scales"]} - _TS_ENCODINGS
        return ", ".join(sorted(str(e) for e in found))
