"""A chunk that is partly stored is not absent.

A WEBKNOSSOS layer at an offset off its chunk grid keeps its chunks on the grid through 0,
while voxgate's grid starts at the offset: each voxgate chunk overlaps up to 8 stored ones.
Until 2026-12 ``bisect_absent`` called such a chunk, holding stored voxels, absent ("cannot
happen"), so ``absent_chunks`` called every chunk absent, ``voxgate.copy`` wrote the fill value
over the data, label_stats found nothing and connected_components returned zeros, silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import voxgate
from voxgate.geometry import Box, Vec

OFFSET = (5, 6, 7)
SHAPE = (21, 26, 23)


@pytest.fixture
def layer(tmp_path: Path) -> tuple[str, np.ndarray]:
    vol = voxgate.create(f"webknossos://{tmp_path}/ds", layer="seg", shape=SHAPE,
                         dtype="uint32", chunks=(4, 4, 4), voxel_size=(8, 8, 8),
                         offset=OFFSET, kind="segmentation")
    want = np.zeros(SHAPE, np.uint32)
    want[12:14, 12:14, 12:14] = 3  # (a 2^3 object: one voxgate chunk, parts of stored ones)
    want[0:2, 0:1, 20:23] = 9  # (at the layer's first and last voxels of two axes)
    o = Vec(*OFFSET)
    for box in (Box(o + Vec(12, 12, 12), o + Vec(14, 14, 14)),
                Box(o + Vec(0, 0, 20), o + Vec(2, 1, 23))):
        vol.remote.write(box, want[box.slices(o)])
    return f"webknossos://{tmp_path}/ds/seg", want


def test_no_chunk_holding_stored_voxels_is_called_absent(layer: tuple[str, np.ndarray]
                                                         ) -> None:
    url, want = layer
    vol = voxgate.open(url)
    sc = vol.scale_meta
    absent = set(vol.remote.absent_chunks(sc.bounds))
    holding = {tuple((np.array(p) + OFFSET - np.array(sc.bounds.start)) // np.array(sc.chunks))
               for p in np.argwhere(want)}
    assert holding and not holding & {tuple(g) for g in absent}, sorted(holding & absent)
    assert absent  # (the check can fail: most chunks hold nothing)


def test_copy_label_stats_and_cc_see_the_stored_voxels(layer: tuple[str, np.ndarray],
                                                       tmp_path: Path) -> None:
    url, want = layer
    voxgate.copy(url, f"zarr://{tmp_path}/out.zarr", progress=False)
    got = zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")[...]
    np.testing.assert_array_equal(got, want)
    stats = voxgate.label_stats(url, block=(8, 8, 8))
    assert sorted(zip(stats["id"].tolist(), stats["voxel_count"].tolist(), strict=True)) == [
        (3, 8), (9, 6)]
    cc = np.asarray(voxgate.connected_components(url, block=(8, 8, 8)))
    np.testing.assert_array_equal(cc > 0, want > 0)
