"""Sharded precomputed scales (``neuroglancer_uint64_sharded_v1``): the spec ``sharded=True``
picks, checks of an explicit spec, the box of chunks one shard holds, which chunks a shard
stores, and reading a scale from whole shard files (:class:`_WholeShards`), on an HTTP server
that ignores Range."""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorstore as ts

from ...errors import CapabilityNotSupportedError, InvalidRequestError, ReadOnlyError
from ...formats.precomputed_chunks import decode_chunk
from ...geometry import Box, Vec, chunk_boxes
from ...meta import Scale
from ...storage import (
    ignores_ranges,
    join,
    kvstore_spec,
    note_ranges_ignored,
    ranges_ignored,
    ts_context,
    ts_errors,
)
from ...storage.sharding import ShardedStore, ShardingSpec

_SHARDING_TYPE = "neuroglancer_uint64_sharded_v1"
#: ``sharded=True`` puts up to this many uncompressed bytes in one shard: writes and copies
#: hold whole shards in memory, a few per worker
_SHARD_TARGET_BYTES = 64 * 2**20
#: up to 2**6 chunks share one minishard index, so a chunk lookup reads a small index
_MAX_PRESHIFT_BITS = 6


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
    where: str, sharding: Mapping[str, Any], sc: Scale, cells: list[Vec]
) -> Callable[[Vec], bool]:
    """Whether a grid index (one of ``cells``) has an entry in its shard: one lookup per chunk
    for a few chunks, one listing of the shard indexes for many (no chunk data is decoded
    either way); on an HTTP server that ignores Range, which those lookups need, from the
    indexes of whole shard files."""
    if ignores_ranges(where):
        return _whole_presence(where, sharding, sc, cells)
    try:
        present = _ts_presence(where, sharding, sc, len(cells))
        if cells:
            present(cells[0])  # (a server that ignores Range refuses the first lookup)
    except CapabilityNotSupportedError as exc:
        if not ranges_ignored(exc):
            raise
        note_ranges_ignored(where)
        return _whole_presence(where, sharding, sc, cells)
    return present


def _whole_presence(where: str, sharding: Mapping[str, Any], sc: Scale, cells: list[Vec]
                    ) -> Callable[[Vec], bool]:
    store = ShardedStore(where, ShardingSpec.from_json(sharding, join(where, "sharding")))
    keys = {g: _compressed_morton(g, sc) for g in cells}
    found = store.get_many(keys.values(), values=False)
    return lambda g: found.get(keys[g]) is not None


def _ts_presence(
    where: str, sharding: Mapping[str, Any], sc: Scale, count: int
) -> Callable[[Vec], bool]:
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


class _ZeroChunks:
    """Puts chunks of 0 into the shards of one sharded scale where a write left them out.

    tensorstore (0.1.x) stores no chunk equal to the fill value in a scale sharded with the
    identity hash, whose shards it writes as boxes of chunks, whatever
    ``store_data_equal_to_fill_value`` says (obeyed for unsharded scales and hashed shards): a
    shard whose chunks are all 0 is not written at all, and a shard with data holds no entry
    for its chunks of 0.  CloudVolume refuses such a chunk unless ``fill_missing`` is set, so after
    each tensorstore write the chunks it touched that are 0 in the array written are added
    to their shards, if their shards still do not hold them (:meth:`ShardedStore.add_absent`:
    entries already stored, by this write or any other writer since, are kept as they are).
    The chunks are encoded by tensorstore itself, into a memory store (one per edge shape);
    the shards are rebuilt as tensorstore builds them, through the layer's own kvstore."""

    def __init__(self, where: str, sc: Scale, scale_info: Mapping[str, Any], kind: str,
                 dtype: np.dtype[Any], channels: int) -> None:
        self.where = where
        self.kind = kind
        self.scale = sc
        self.scale_info = scale_info
        self.dtype = dtype
        self.channels = channels
        self.store = ShardedStore(where, ShardingSpec.from_json(scale_info["sharding"],
                                                                join(where, "sharding")))
        self._encoded: dict[tuple[int, ...], bytes] = {}
        self._lock = threading.Lock()

    def after_write(self, box: Box, array: np.ndarray) -> None:
        """Add the chunks touching ``box`` that are 0 there in ``array`` (the (c,) z, y, x
        voxels of ``box`` just written) and absent from their shards."""
        sc = self.scale
        zero: dict[int, bytes] = {}
        lead = (slice(None),) if self.channels > 1 else ()
        for g, cell in chunk_boxes(box, sc.chunks, sc.bounds):
            part = cell.intersect(box)
            if not array[(*lead, *part.slices(box.start))].any():
                # (the rest of a chunk only partly in box: were it not 0, tensorstore would
                # have kept the chunk, and a chunk its shard holds is left alone)
                zero[_compressed_morton(g, sc)] = self._zeros(tuple(cell.shape))
        self.store.add_absent(zero)

    def _zeros(self, shape: tuple[int, ...]) -> bytes:
        """A chunk of 0 of ``shape`` (z, y, x: clipped at the volume's upper edge, as stored),
        encoded by tensorstore in this scale's encoding."""
        with self._lock:
            got = self._encoded.get(shape)
        if got is not None:
            return got
        info = self.scale_info
        scale: dict[str, Any] = {
            "key": "s", "size": list(shape[::-1]), "voxel_offset": [0, 0, 0],
            "chunk_size": list(info["chunk_sizes"][0]), "resolution": info["resolution"],
            "encoding": info.get("encoding", "raw"),
        }
        for k in ("compressed_segmentation_block_size", "jpeg_quality", "png_level"):
            if k in info:
                scale[k] = info[k]
        with ts_errors(f"encoding a chunk of 0 for {self.where}"):
            store = ts.open({
                "driver": "neuroglancer_precomputed", "kvstore": {"driver": "memory"},
                "multiscale_metadata": {"type": self.kind, "data_type": self.dtype.name,
                                        "num_channels": self.channels},
                "scale_metadata": scale, "create": True,
                "store_data_equal_to_fill_value": True,
            }, context=ts.Context()).result()
            store.write(np.zeros(store.shape, self.dtype)).result()
            kv = store.kvstore
            keys = [] if kv is None else [k for k in kv.list().result() if k.startswith(b"s/")]
            if kv is None or len(keys) != 1:
                raise CapabilityNotSupportedError(
                    f"tensorstore stored {len(keys)} chunks for one chunk of 0 of {self.where}")
            data = bytes(kv.read(keys[0]).result().value)
        with self._lock:
            self._encoded[shape] = data
        return data


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
    """A sharding spec given to create(), checked (storage.sharding.ShardingSpec) and completed
    with the default encodings; unknown keys are refused rather than dropped."""
    out = {"@type": _SHARDING_TYPE, "minishard_index_encoding": "raw", "data_encoding": "raw",
           **spec}
    unknown = set(out) - {"@type", "hash", "preshift_bits", "minishard_bits", "shard_bits",
                          "minishard_index_encoding", "data_encoding"}
    if unknown:
        raise InvalidRequestError(f"bad sharding spec: unknown keys {sorted(unknown)}")
    return ShardingSpec.from_json(out, "sharding").to_json()


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


class _WholeShards:
    """One sharded scale read from whole shard files, with voxgate's chunk codecs: for an HTTP
    server that ignores Range, whose whole-file answers tensorstore refuses.  Each read reads
    every shard it touches once, whole (the server sends all of it for any range anyway), and
    holds it in memory while the read runs: a read of one voxel costs a transfer of its whole
    shard (up to 64 MiB of voxels for a layer voxgate sharded; other writers' may be larger).
    Read-only, as every HTTP location is."""

    def __init__(self, where: str, sc: Scale, sharding: Mapping[str, Any], dtype: np.dtype[Any],
                 channels: int, encoding: str, block: Vec | None, name: str) -> None:
        self.where = where
        self.scale = sc
        self.store = ShardedStore(where, ShardingSpec.from_json(sharding, f"{name} sharding"))
        self.dtype = dtype
        self.channels = channels
        self.encoding = encoding
        self.block = block
        self.name = name

    def read(self, box: Box) -> np.ndarray:
        sc = self.scale
        out = np.zeros((self.channels, *box.shape), dtype=self.dtype)
        cells = {_compressed_morton(g, sc): cell for g, cell in chunk_boxes(box, sc.chunks,
                                                                              sc.bounds)}
        for key, got in self.store.get_many(cells).items():
            if got is None:
                continue  # an absent chunk is the fill value, 0
            cell = cells[key]
            chunk = self._decode(got[1], cell, key)
            part = cell.intersect(box)
            out[(slice(None), *part.slices(box.start))] = chunk[
                (slice(None), *part.slices(cell.start))]
        return out if self.channels > 1 else out[0]

    def _decode(self, data: bytes, cell: Box, key: int) -> np.ndarray:
        """A chunk as stored in a shard: clipped to the volume at its upper edge, as tensorstore
        writes and reads it; a raw chunk stored full-size there (its length says so) is read
        too."""
        what = f"chunk {key} of {self.name} ({self.where})"
        shape = cell.shape
        full = self.scale.chunks
        if self.encoding == "raw" and len(data) == (
                self.channels * int(np.prod(tuple(full))) * self.dtype.itemsize):
            shape = full
        chunk = decode_chunk(data, self.encoding, (self.channels, *shape), self.dtype,
                             block_size=self.block, name=what)
        return chunk[(slice(None), *(slice(0, n) for n in cell.shape))]

    def write(self, box: Box, array: np.ndarray) -> None:
        raise ReadOnlyError(f"{self.where} is served over HTTP, which voxgate can only read")
