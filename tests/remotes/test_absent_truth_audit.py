"""Is "absent" always true?  Every Remote declaring CHUNK_PRESENCE, against the voxels.

``absent_chunks`` is used to skip work (``voxgate.copy`` writes the fill value over a block of
absent chunks without reading it; the block-wise Services skip it), so a chunk called absent
that holds data is lost silently.  For each store (made by voxgate, or written by a peer
library with its own chunking: CloudVolume gzip-suffixed chunk files, tensorstore's sharded
precomputed, zarr-python's OME-Zarr with a coarser level on another grid, h5py per-channel
chunks) of a small odd-shaped volume at an odd offset, with data in a few chunks including
the far partial corner: no chunk called absent reads other than the fill value, the chunks
never written are called absent where the format can tell, and a copy to zarr equals the
source (read with zarr-python).

Found: an HDF5 file chunked per channel (chunks (1, z, y, x)) called a cell absent when the
chunk of ANY channel was missing, so a copy wrote the fill value over the other channels'
stored voxels, and took the voxel it read at one such "absent" chunk (stored in some channel)
for the fill value of every absent block: channel 1 of the copy was 3 everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

import voxgate
from voxgate import Box, Vec
from voxgate.geometry import chunk_boxes

SHAPE = (11, 13, 17)
OFFSET = Vec(3, 5, 7)
#: (start, stop relative to the volume's first voxel, value): a corner voxel, the far partial
#: corner chunk's last voxel, and a run across a chunk border
WRITES = [((0, 0, 0), (1, 1, 1), 5), ((10, 12, 16), (11, 13, 17), 7), ((5, 6, 7), (6, 7, 9), 9)]


def _created(url: str, exact: bool = True, **options: object
             ) -> Callable[[Path], tuple[str, list[Box] | None]]:
    def make(d: Path) -> tuple[str, list[Box] | None]:
        vol = voxgate.create(url.format(d=d), shape=SHAPE, dtype="uint32", chunks=(4, 4, 4),
                             voxel_size=(8, 8, 8), offset=OFFSET, kind="segmentation",
                             **options)
        boxes = []
        for a, e, v in WRITES:
            box = Box(OFFSET + Vec(*a), OFFSET + Vec(*e))
            vol.remote.write(box, np.full(tuple(box.shape), v, np.uint32), 0)
            boxes.append(box)
        if len(vol.remote.meta.scales) > 1:
            voxgate.downsample(vol, progress=False)
        return vol.url, boxes if exact else None
    return make


def _cloudvolume_gzip(d: Path) -> tuple[str, list[Box] | None]:
    from cloudvolume import CloudVolume

    info = CloudVolume.create_new_info(1, "segmentation", "uint32", "raw", [8, 8, 8],
                                       [7, 5, 3], [17, 13, 11], chunk_size=[4, 4, 4])
    cv = CloudVolume(f"file://{d}/cv", info=info, compress="gzip", progress=False)
    cv.commit_info()
    first = np.zeros((4, 4, 4), np.uint32)
    first[0, 0, 0] = 5
    cv[7:11, 5:9, 3:7] = first
    cv[23:24, 17:18, 11:14] = np.array([0, 0, 7], np.uint32).reshape(1, 1, 3)  # far corner
    assert sorted(os.listdir(d / "cv" / "8_8_8")) == ["23-24_17-18_11-14.gz", "7-11_5-9_3-7.gz"]
    return f"precomputed://{d}/cv", [Box((3, 5, 7), (7, 9, 11)), Box((11, 17, 23), (14, 18, 24))]


def _tensorstore_sharded(d: Path) -> tuple[str, list[Box] | None]:
    import tensorstore as ts

    sharding = {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 1,
                "hash": "murmurhash3_x86_128", "minishard_bits": 1, "shard_bits": 1,
                "minishard_index_encoding": "gzip", "data_encoding": "gzip"}
    t = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{d}/tsp",
                 "multiscale_metadata": {"type": "segmentation", "data_type": "uint32",
                                         "num_channels": 1},
                 "scale_metadata": {"size": [17, 13, 11], "voxel_offset": [7, 5, 3],
                                    "resolution": [8, 8, 8], "chunk_size": [4, 4, 4],
                                    "encoding": "raw", "sharding": sharding},
                 "create": True}).result()
    t[7:8, 5:6, 3:4, 0].write(np.uint32(5)).result()
    t[23:24, 17:18, 13:14, 0].write(np.uint32(7)).result()
    t[13:15, 11, 8, 0].write(np.uint32(9)).result()
    return f"precomputed://{d}/tsp", [Box((3, 5, 7), (4, 6, 8)), Box((13, 17, 23), (14, 18, 24)),
                                      Box((8, 11, 13), (9, 12, 15))]


def _ome_zarr_python(d: Path) -> tuple[str, list[Box] | None]:
    """OME-Zarr 0.4 by zarr-python: level 0 chunks (3, 5, 7), level 1 chunks (2, 3, 4) at a
    translation that is not a whole number of its voxels."""
    g = zarr.open_group(d / "o.zarr", mode="w", zarr_format=2)
    a = g.create_array("0", shape=SHAPE, chunks=(3, 5, 7), dtype="uint32", fill_value=0)
    b = g.create_array("1", shape=(6, 7, 9), chunks=(2, 3, 4), dtype="uint32", fill_value=0)
    a[0, 0, 0] = 5
    a[10, 12, 16] = 7
    a[5, 6, 7:9] = 9
    b[5, 6, 8] = 7
    b[2, 3, 3:5] = 9
    axes = [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    g.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [8, 8, 8]},
            {"type": "translation", "translation": [24, 40, 56]}]},
        {"path": "1", "coordinateTransformations": [
            {"type": "scale", "scale": [16, 16, 16]},
            {"type": "translation", "translation": [28, 44, 60]}]}]}]
    return f"zarr://{d}/o.zarr", None


def _h5py_per_channel(d: Path) -> tuple[str, list[Box] | None]:
    """Two channels chunked apart (1, 3, 5, 7); channel 1 alone in two chunks, channel 0
    alone in another: none of the three is absent."""
    with h5py.File(d / "f.h5", "w") as f:
        ds = f.create_dataset("raw", shape=(2, *SHAPE), dtype="uint8", chunks=(1, 3, 5, 7))
        ds[1, 10, 12, 16] = 7
        ds[1, 0, 0, 0] = 3
        ds[0, 5, 5, 5] = 1
    return f"hdf5://{d}/f.h5#/raw", [Box((10, 12, 16), (11, 13, 17)), Box((0, 0, 0), (1, 1, 1)),
                                     Box((5, 5, 5), (6, 6, 6))]


STORES: dict[str, Callable[[Path], tuple[str, list[Box] | None]]] = {
    "precomputed": _created("precomputed://{d}/p"),
    "precomputed-sharded": _created("precomputed://{d}/p", sharded=True),
    "zarr2": _created("zarr://{d}/v.zarr", zarr_format=2),
    "zarr3": _created("zarr://{d}/v.zarr"),
    "zarr3-sharded": _created("zarr://{d}/v.zarr", shards=(8, 8, 8)),
    "ome-zarr-3-levels": _created("zarr://{d}/v.ome.zarr", num_scales=3),
    "n5": _created("n5://{d}/v.n5"),
    "hdf5": _created("hdf5://{d}/v.h5"),
    # (its chunks lie on the grid through 0, not through the offset: no exact truth)
    "webknossos-zarr3": _created("webknossos://{d}/ds", False, layer="seg",
                                 num_scales=3),
    "memory": _created("mem://absent-truth-audit-{d.name}"),
    "cloudvolume-gzip": _cloudvolume_gzip,
    "tensorstore-sharded": _tensorstore_sharded,
    "zarr-python-ome": _ome_zarr_python,
    "h5py-per-channel": _h5py_per_channel,
}


@pytest.mark.parametrize("name", sorted(STORES))
def test_absent_chunks_hold_only_fill_and_copy_equals(tmp_path: Path, name: str) -> None:
    url, written = STORES[name](tmp_path)
    remote = voxgate.open(url).remote
    fill = remote.meta.fill_value
    for k, sc in enumerate(remote.meta.scales):
        absent = set(remote.absent_chunks(sc.bounds, k))
        for g, cell in chunk_boxes(sc.bounds, sc.chunks, sc.bounds):
            if g in absent:
                assert (remote.read(cell, k) == fill).all(), (k, g)
        if k == 0 and written is not None:
            touched = {g for b in written for g, _ in chunk_boxes(b, sc.chunks, sc.bounds)}
            every = {g for g, _ in chunk_boxes(sc.bounds, sc.chunks, sc.bounds)}
            assert absent == every - touched
    voxgate.copy(url, f"zarr://{tmp_path}/copy.zarr", progress=False)
    out = zarr.open_group(tmp_path / "copy.zarr", mode="r")
    for k, sc in enumerate(remote.meta.scales):
        np.testing.assert_array_equal(np.asarray(out[str(k)][...]), remote.read(sc.bounds, k),
                                      err_msg=f"scale {k}")


def test_per_channel_hdf5_missing_error_still_names_a_channel_never_written(
        tmp_path: Path) -> None:
    """The cell is not absent (a channel holds data), yet missing="error" still refuses to
    read a channel's chunk that was never written."""
    url, _ = _h5py_per_channel(tmp_path)
    strict = voxgate.open(url, missing="error")
    with pytest.raises(voxgate.errors.MissingChunkError, match=r"\(0, 0, 0\)"):
        strict.remote.read(Box((0, 0, 0), (1, 1, 1)), 0)
