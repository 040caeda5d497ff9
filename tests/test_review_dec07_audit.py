"""Review of the sparse-writes change (c74d31c..1630020): edge cases checked against real
components, none of which found a fault.

- ``absence.write_sparse`` into zarr (v2, v3, v3 sharded) and N5 at offsets, of odd shapes,
  with two channels and non-zero fill values, boxes cutting write units: the store reads
  back exactly what was written, and no unit holding other than the fill value is missing.
- ``absence._runs``: the writes it plans cover exactly the units kept.
- the numpy crc32c that checks zarr v3 shard indexes equals google_crc32c at every length
  around its lane and table thresholds.
- precomputed scales sharded with the identity hash (``_ZeroChunks``): zeros written over part
  of a layer (two channels, compressed_segmentation, gzip shards) are read by
  CloudVolume without ``fill_missing``; chunks of -0.0 keep their sign bit.
- a two-channel sharded zarr v3 array served over HTTP (no listing): its absent chunks are
  those of the same files read locally (listed).
- connected_components into an existing ``out=`` (overwrite=True) holding stale labels, at an
  offset, block sizes of one chunk, one shard and the default: equal to cc3d everywhere.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate import Box, Vec
from voxgate.absence import StoredGroups, _runs, write_sparse
from voxgate.registry import create_remote

from .static_http import serve_directory


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view(f"u{a.dtype.itemsize}")


@pytest.mark.parametrize("seed", range(4))
def test_write_sparse_reads_back_what_was_written(tmp_path: Path, seed: int) -> None:
    """Random stores (offsets, odd shapes, shards, 2 channels, fill 0 or 3) and boxes: what
    write_sparse writes reads back bit for bit, and each write unit holding other than the
    fill value is stored (the store reads it back as written, so it cannot be missing)."""
    rng = np.random.default_rng(seed)
    for trial in range(12):
        shape = tuple(int(x) for x in rng.integers(3, 18, 3))
        chunks = tuple(int(x) for x in rng.integers(1, 7, 3))
        offset = tuple(int(x) for x in rng.integers(-5, 6, 3))
        dtype = str(rng.choice(["uint8", "float32", "uint64", "int16"]))
        channels = int(rng.choice([1, 1, 2]))
        opts: dict[str, Any] = {}
        if rng.random() < 0.5:
            opts["shards"] = tuple(c * int(rng.integers(1, 3)) for c in chunks)
        elif rng.random() < 0.3:
            opts["zarr_format"] = 2
        fmt = "n5" if channels == 1 and not opts and rng.random() < 0.4 else "zarr"
        fill = 3 if fmt == "zarr" and dtype != "uint64" and rng.random() < 0.5 else 0
        if fmt == "n5":
            offset = (0, 0, 0)
        like = voxgate.create(f"{fmt}://{tmp_path}/t{trial}.{fmt}", shape=shape, dtype=dtype,
                              chunks=chunks, voxel_size=(1, 1, 1), offset=offset,
                              **({"num_channels": channels} if channels > 1 else {}))
        meta = dataclasses.replace(like.meta, fill_value=fill)
        remote = create_remote(f"{fmt}://{tmp_path}/a{trial}.{fmt}", meta, **opts)
        bounds = remote.meta.scale(0).bounds
        lo = [int(rng.integers(s, e)) for s, e in zip(bounds.start, bounds.stop, strict=True)]
        hi = [int(rng.integers(a + 1, e + 1)) for a, e in zip(lo, bounds.stop, strict=True)]
        box = Box(Vec(*lo), Vec(*hi))
        lead = (channels,) if channels > 1 else ()
        data = np.full(lead + tuple(box.shape), fill, dtype)
        data[rng.random(data.shape) < 0.03] = 9
        absent: bool | StoredGroups = True
        if channels == 1 and rng.random() < 0.5:
            absent = StoredGroups(bounds, remote.meta.scale(0).chunks, bounds.start,
                                  Vec(1, 1, 1))
        write_sparse(remote, box, data, 0, absent)
        np.testing.assert_array_equal(_bits(remote.read(box, 0)), _bits(data),
                                      err_msg=f"{fmt} {shape} {chunks} {offset} {opts}")


def test_runs_cover_exactly_the_units_kept() -> None:
    rng = np.random.default_rng(7)
    for _ in range(500):
        shape = tuple(int(x) for x in rng.integers(1, 6, 3))
        keep = rng.random(shape) < rng.random()
        covered = np.zeros(shape, int)
        for run in _runs(keep):
            covered[tuple(slice(a, b) for a, b in run)] += 1
        np.testing.assert_array_equal(covered, keep.astype(int))


def test_numpy_crc32c_equals_google_crc32c() -> None:
    google_crc32c = pytest.importorskip("google_crc32c")
    from voxgate.remotes._tensorstore import _crc32c_numpy

    rng = np.random.default_rng(0)
    for n in [*range(0, 20), 1023, 1024, 1025, 2047, 2048, 2049, 4099, 2**17, 2**17 + 1,
              2**19 + 4, 300_001]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert _crc32c_numpy(data) == google_crc32c.value(data), n


def _identity(encoding: str) -> dict[str, Any]:
    return {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 3, "hash": "identity",
            "minishard_bits": 1, "shard_bits": 6, "minishard_index_encoding": "gzip",
            "data_encoding": encoding}


@pytest.mark.parametrize(("dtype", "channels", "kind", "encoding", "data_encoding"), [
    ("uint8", 2, "image", "raw", "gzip"),
    ("uint64", 1, "segmentation", "compressed_segmentation", "raw"),
])
def test_identity_sharded_zeros_over_data_are_read_by_cloudvolume(
        tmp_path: Path, dtype: str, channels: int, kind: str, encoding: str,
        data_encoding: str) -> None:
    from cloudvolume import CloudVolume

    shape, offset = (10, 13, 15), Vec(1, 2, 3)
    vol = voxgate.create(f"precomputed://{tmp_path}/l", shape=shape, dtype=dtype,
                         chunks=(4, 4, 4), voxel_size=(1, 1, 1), offset=tuple(offset),
                         kind=kind, encoding=encoding, sharded=_identity(data_encoding),
                         **({"num_channels": channels} if channels > 1 else {}))
    lead = (channels,) if channels > 1 else ()
    want = np.zeros(lead + shape, dtype)
    want[..., 2:3, 3:5, 4:6] = 7
    want[..., 8:10, 1:12, 13:15] = 9
    vol.write(want)
    box = Box(Vec(3, 4, 5), Vec(11, 15, 18))  # zeros across chunk and shard borders
    vol.remote.write(box, np.zeros(lead + tuple(box.shape), dtype), 0)
    want[(..., *box.slices(offset))] = 0
    cv = CloudVolume(f"file://{tmp_path}/l", fill_missing=False, progress=False)
    got = np.moveaxis(np.asarray(cv[:, :, :]), 3, 0).transpose(0, 3, 2, 1)
    np.testing.assert_array_equal(got if channels > 1 else got[0], want)


def test_identity_sharded_negative_zero_keeps_its_sign(tmp_path: Path) -> None:
    from cloudvolume import CloudVolume

    vol = voxgate.create(f"precomputed://{tmp_path}/f", shape=(10, 12, 14), dtype="float32",
                         chunks=(4, 4, 4), voxel_size=(1, 1, 1), offset=(1, 2, 3),
                         kind="image", sharded=_identity("gzip"))
    want = np.full((10, 12, 14), -0.0, np.float32)
    want[0, 0, 0] = 5
    vol.write(want)
    np.testing.assert_array_equal(_bits(vol.read()), _bits(want))
    cv = CloudVolume(f"file://{tmp_path}/f", fill_missing=False, progress=False)
    np.testing.assert_array_equal(_bits(np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0)),
                                  _bits(want))


def test_two_channel_sharded_zarr_over_http_absent_chunks(tmp_path: Path) -> None:
    offset = Vec(2, 3, 4)
    vol = voxgate.create(f"zarr://{tmp_path}/v.zarr", shape=(14, 21, 24), dtype="uint16",
                         chunks=(3, 4, 5), voxel_size=(1, 1, 1), offset=tuple(offset),
                         shards=(6, 8, 10), num_channels=2)
    one = np.zeros((2, 1, 1, 12), "uint16")
    one[1] = 5  # (only the second channel holds data here)
    vol.remote.write(Box(offset + Vec(3, 9, 0), offset + Vec(4, 10, 12)), one, 0)
    two = np.zeros((2, 1, 1, 2), "uint16")
    two[0] = 5
    vol.remote.write(Box(offset + Vec(13, 20, 22), offset + Vec(14, 21, 24)), two, 0)
    local = voxgate.open(f"zarr://{tmp_path}/v.zarr")
    bounds = local.remote.meta.scale(0).bounds
    boxes = [bounds, Box(offset + Vec(2, 5, 1), offset + Vec(9, 17, 20)),
             Box(offset + Vec(12, 19, 20), offset + Vec(14, 21, 24))]
    with serve_directory(tmp_path) as url:
        http = voxgate.open(f"zarr://{url}/v.zarr")
        for box in boxes:
            want = sorted(local.remote.absent_chunks(box, 0))
            assert 0 < len(want) < _cells(box, Vec(3, 4, 5), bounds)
            assert sorted(http.remote.absent_chunks(box, 0)) == want
        np.testing.assert_array_equal(http.read(), local.read())


def _cells(box: Box, chunks: Vec, bounds: Box) -> int:
    from voxgate.geometry import grid_range

    lo, hi = grid_range(box, chunks, bounds.start)
    return int(np.prod([b - a for a, b in zip(lo, hi, strict=True)]))


@pytest.mark.parametrize("fmt", ["zarr2", "zarr3-sharded", "n5"])
def test_connected_components_over_stale_labels(tmp_path: Path, fmt: str) -> None:
    import cc3d

    shape, chunks, offset = (19, 23, 29), (4, 5, 6), Vec(3, 5, 7)
    src = voxgate.create(f"zarr://{tmp_path}/src.zarr", shape=shape, dtype="uint64",
                         chunks=chunks, voxel_size=(1, 1, 1), offset=tuple(offset),
                         kind="segmentation")
    seg = np.zeros(shape, np.uint64)
    for value, sl in [(7, (slice(1, 3), slice(2, 4), slice(3, 9))),
                      (9, (slice(15, 19), slice(20, 23), slice(25, 29))),
                      (4, (slice(8, 10), slice(9, 15), slice(14, 16)))]:
        seg[sl] = value
        box = Box(Vec(*(s.start for s in sl)) + offset, Vec(*(s.stop for s in sl)) + offset)
        src.remote.write(box, seg[sl], 0)  # the rest of the source stays absent
    want = cc3d.connected_components(seg, connectivity=26)
    scheme = "n5" if fmt == "n5" else "zarr"
    opts = {"zarr2": {"zarr_format": 2}, "zarr3-sharded": {"shards": (8, 10, 12)},
            "n5": {}}[fmt]
    url = f"{scheme}://{tmp_path}/out.{scheme}"
    for block in [None, (4, 5, 6), (8, 10, 12)]:
        old = voxgate.create(url, shape=shape, dtype="uint64", chunks=chunks,
                             voxel_size=(1, 1, 1), offset=tuple(offset), kind="segmentation",
                             exist_ok=True, **({} if block else opts))
        old.remote.write(Box(offset, offset + Vec(10, 12, 15)),
                         np.full((10, 12, 15), 55, np.uint64), 0)
        old.remote.write(Box(offset + Vec(12, 1, 20), offset + Vec(19, 5, 29)),
                         np.full((7, 4, 9), 66, np.uint64), 0)
        voxgate.connected_components(src, out=url, overwrite=True,
                                     **({"block": block} if block else {}))
        got = voxgate.open(url).read()
        np.testing.assert_array_equal(got > 0, want > 0)
        pairs = set(zip(got[want > 0].tolist(), want[want > 0].tolist(), strict=True))
        assert len(pairs) == len(np.unique(want[want > 0])), block
