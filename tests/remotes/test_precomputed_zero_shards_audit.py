"""Sharded precomputed scales written by voxgate hold every chunk, chunks of 0 included.

tensorstore stores no chunk equal to the fill value in a sharded scale, whatever
``store_data_equal_to_fill_value`` says: a shard of only 0 was not written at all and a shard
with data held no entry for its chunks of 0, and CloudVolume (``fill_missing=False``) raised
EmptyVolumeException on them.  Each test reads what voxgate wrote with CloudVolume without
``fill_missing``, with tensorstore opened on its own and with voxgate, and checks that every
chunk of the grid has its entry.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
from cloudvolume import CloudVolume

import voxgate
from voxgate.geometry import Box, Vec
from voxgate.remotes.precomputed.sharding import _compressed_morton, _grid
from voxgate.storage.sharding import ShardingSpec, decode_shard, encode_shard

from ..services.numpy_reference import downsample_scales

#: odd sizes, not multiples of the chunks; a voxel offset off the chunk grid
SHAPE, CHUNKS, OFFSET = (21, 23, 27), (4, 6, 5), (3, 5, 7)
#: 2 x 2 x 2 chunks per shard; minishards of 2 chunks
SHARDING = {"@type": "neuroglancer_uint64_sharded_v1", "hash": "identity", "preshift_bits": 1,
            "minishard_bits": 2, "shard_bits": 6, "minishard_index_encoding": "gzip",
            "data_encoding": "gzip"}
#: two objects: in the lower corner and across the far edges; the rest is 0
BOXES = [((0, 0, 0), (3, 4, 2)), ((15, 17, 22), (21, 23, 27))]
#: the gzip level of tensorstore's shards (zlib, gzip header; uint64_sharded_encoder.cc)
TS_GZIP_LEVEL = 9


def truth_of(dtype: str) -> np.ndarray:
    out = np.zeros(SHAPE, dtype)
    for i, (a, b) in enumerate(BOXES, start=1):
        out[tuple(slice(x, y) for x, y in zip(a, b, strict=True))] = 100 + i
    return out


def cv_read(path: Path, mip: int = 0) -> np.ndarray:
    cv = CloudVolume(f"file://{path}", mip=mip, fill_missing=False, progress=False)
    return np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0)


def tensorstore_read(path: Path, scale: int = 0) -> np.ndarray:
    store = ts.open({"driver": "neuroglancer_precomputed",
                     "kvstore": {"driver": "file", "path": str(path)},
                     "scale_index": scale}, context=ts.Context()).result()
    return np.asarray(store.read().result())[..., 0].transpose(2, 1, 0)


def check_every_chunk_stored(path: Path, scale: int = 0) -> None:
    """Every shard file the grid has exists and holds an entry for each of its chunks."""
    remote = voxgate.open(f"precomputed://{path}").remote
    sc = remote.meta.scale(scale)
    info = remote._info["scales"][scale]
    spec = ShardingSpec.from_json(info["sharding"], "test")
    gx, gy, gz = _grid(sc)
    keys = np.array([_compressed_morton(Vec(z, y, x), sc) for z, y, x in
                     itertools.product(range(gz), range(gy), range(gx))], dtype=np.uint64)
    shards, _ = spec.locate(keys)
    directory = path / sc.key
    names = {spec.shard_name(s) for s in np.unique(shards).tolist()}
    assert names == {p.name for p in directory.iterdir()}
    stored: set[int] = set()
    for name in names:
        stored |= set(decode_shard(spec, (directory / name).read_bytes(), name))
    assert stored == set(keys.tolist())
    assert remote.absent_chunks(remote.meta.scale(scale).bounds, scale) == []


CASES = [
    ("uint64", "segmentation", "raw"),
    ("uint64", "segmentation", "compressed_segmentation"),
    ("uint8", "image", "raw"),
    ("uint8", "image", "jpeg"),
]


@pytest.mark.parametrize(("dtype", "kind", "encoding"), CASES)
def test_mostly_zero_sharded_layer_is_read_whole(tmp_path: Path, dtype: str, kind: str,
                                                 encoding: str) -> None:
    path = tmp_path / "v"
    vol = voxgate.create(f"precomputed://{path}", shape=SHAPE, dtype=dtype, chunks=CHUNKS,
                         voxel_size=(8, 8, 8), offset=OFFSET, kind=kind, encoding=encoding,
                         sharded=SHARDING)
    truth = truth_of(dtype)
    if encoding == "jpeg":
        truth[:] = 0  # lossy: only 0 reads back exactly
        truth[8:12, 12:18, 10:15] = 200  # one whole chunk of one value
    vol[:] = truth
    np.testing.assert_array_equal(cv_read(path), truth)
    np.testing.assert_array_equal(tensorstore_read(path), truth)
    np.testing.assert_array_equal(np.asarray(voxgate.open(f"precomputed://{path}")[:]), truth)
    check_every_chunk_stored(path)


def test_downsampled_sharded_scales_are_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "v"
    vol = voxgate.create(f"precomputed://{path}", shape=SHAPE, dtype="uint64", chunks=CHUNKS,
                         voxel_size=(8, 8, 8), offset=OFFSET, kind="segmentation",
                         encoding="raw", sharded=SHARDING)
    seg = truth_of("uint64")
    vol[:] = seg
    factors = [(1, 2, 2), (2, 2, 2)]
    voxgate.downsample(f"precomputed://{path}", 3, factors=factors)
    for k, ref in enumerate(downsample_scales(seg, factors, "segmentation"), start=1):
        np.testing.assert_array_equal(cv_read(path, k), ref)
        np.testing.assert_array_equal(tensorstore_read(path, k), ref)
        check_every_chunk_stored(path, k)


@pytest.mark.parametrize("encoding", ["raw", "compressed_segmentation"])
@pytest.mark.parametrize("writer", ["voxgate", "tensorstore"])
def test_later_partial_write_into_a_zero_shard(tmp_path: Path, writer: str,
                                               encoding: str) -> None:
    path = tmp_path / "v"
    vol = voxgate.create(f"precomputed://{path}", shape=SHAPE, dtype="uint64", chunks=CHUNKS,
                         voxel_size=(8, 8, 8), offset=OFFSET, kind="segmentation",
                         encoding=encoding, sharded=SHARDING)
    truth = truth_of("uint64")
    vol[:] = truth
    np.testing.assert_array_equal(vol.read(), truth)  # (the same Remote reads it first)
    # a few voxels in the middle of a shard written as only 0, crossing a chunk border
    part = (slice(9, 11), slice(10, 14), slice(12, 17))
    truth[part] = 7
    if writer == "voxgate":
        box = Box(Vec(9, 10, 12), Vec(11, 14, 17)).translate(Vec(*OFFSET))
        vol.remote.write(box, truth[part], 0)
        np.testing.assert_array_equal(vol.read(), truth)  # the same Remote again
    else:
        store = ts.open({"driver": "neuroglancer_precomputed",
                         "kvstore": {"driver": "file", "path": str(path)}, "scale_index": 0},
                        context=ts.Context()).result()
        xyz = tuple(slice(s.start + o, s.stop + o) for s, o in zip(part, OFFSET, strict=True))
        store[xyz[::-1]] = truth[part].T[..., np.newaxis]
    np.testing.assert_array_equal(cv_read(path), truth)
    np.testing.assert_array_equal(tensorstore_read(path), truth)
    np.testing.assert_array_equal(np.asarray(voxgate.open(f"precomputed://{path}")[:]), truth)
    check_every_chunk_stored(path)


@pytest.mark.parametrize("encodings", [("gzip", "gzip"), ("raw", "gzip"), ("gzip", "raw")])
def test_shards_are_rebuilt_as_tensorstore_writes_them(tmp_path: Path,
                                                       encodings: tuple[str, str]) -> None:
    """A shard tensorstore wrote with every chunk (none is 0), decoded and encoded again at
    tensorstore's gzip level, is the same bytes."""
    sharding: dict[str, Any] = {**SHARDING, "minishard_index_encoding": encodings[0],
                                "data_encoding": encodings[1]}
    store = ts.open({
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(tmp_path)},
        "multiscale_metadata": {"type": "segmentation", "data_type": "uint64",
                                "num_channels": 1},
        "scale_metadata": {"size": SHAPE[::-1], "chunk_size": CHUNKS[::-1], "encoding": "raw",
                           "sharding": sharding, "resolution": [8, 8, 8],
                           "voxel_offset": OFFSET[::-1]},
        "create": True}, context=ts.Context()).result()
    data = np.arange(1, np.prod(SHAPE) + 1, dtype=np.uint64).reshape(SHAPE)
    store.write(data.T[..., np.newaxis]).result()
    spec = ShardingSpec.from_json(sharding, "test")
    files = sorted(p for p in tmp_path.rglob("*.shard"))
    assert len(files) == 18  # 6 x 4 x 6 chunks (x, y, z), 2 x 2 x 2 a shard
    for f in files:
        raw = f.read_bytes()
        stored = decode_shard(spec, raw, f.name, values=False)
        assert encode_shard(spec, stored, encoded=True, level=TS_GZIP_LEVEL) == raw
        values = decode_shard(spec, raw, f.name)
        assert encode_shard(spec, values, level=TS_GZIP_LEVEL) == raw


def test_murmur_hashed_shards(tmp_path: Path) -> None:
    """A hashed layout (chunks scattered over shards): tensorstore stores its chunks of 0
    itself, nothing is added (a guard: this passed before the fix too)."""
    path = tmp_path / "v"
    sharding = {**SHARDING, "hash": "murmurhash3_x86_128", "preshift_bits": 0,
                "minishard_bits": 1, "shard_bits": 2}
    vol = voxgate.create(f"precomputed://{path}", shape=SHAPE, dtype="uint64", chunks=CHUNKS,
                         voxel_size=(8, 8, 8), offset=OFFSET, kind="segmentation",
                         encoding="raw", sharded=sharding)
    truth = truth_of("uint64")
    vol[:] = truth
    truth[9:11, 10:14, 12:17] = 7
    vol[9:11, 10:14, 12:17] = 7
    np.testing.assert_array_equal(cv_read(path), truth)
    np.testing.assert_array_equal(tensorstore_read(path), truth)
    check_every_chunk_stored(path)


def test_object_storage(s3_bucket: str, cloudvolume: Any) -> None:
    """On S3 the shards are written through the layer's own kvstore."""
    layer = f"precomputed://s3://{s3_bucket}/seg"
    vol = voxgate.create(layer, shape=SHAPE, dtype="uint64", chunks=CHUNKS, voxel_size=(8, 8, 8),
                         offset=OFFSET, kind="segmentation", sharded=SHARDING)
    truth = truth_of("uint64")
    vol[:] = truth
    cv = cloudvolume("seg", fill_missing=False)
    np.testing.assert_array_equal(np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0), truth)
    assert voxgate.open(layer).remote.absent_chunks(vol.remote.meta.scale(0).bounds, 0) == []
