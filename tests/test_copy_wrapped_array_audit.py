"""A Volume over a numpy array (how the Services hold numpy inputs: ``MemoryRemote.wrap``)
holds data in every chunk: until 2026-12 it counted none as written, so ``voxgate.copy`` of
one took every block for absent and wrote the fill value (one voxel broadcast), silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

import voxgate
from voxgate.geometry import Box, Vec
from voxgate.meta import Scale, VolumeMeta
from voxgate.remotes.memory import MemoryRemote
from voxgate.services._common import as_volume, scratch_remote


def test_a_copy_of_a_wrapped_numpy_array_is_the_array(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(1, 255, (40, 50, 61), dtype=np.uint8)
    vol = as_volume(arr)
    assert vol.remote.absent_chunks(vol.bounds) == []
    report = voxgate.copy(vol, f"zarr://{tmp_path}/out.zarr", progress=False)
    assert not report.absent_counts or not any(report.absent_counts.values()), report
    # read back by zarr-python, not by voxgate
    got = zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")[...]
    np.testing.assert_array_equal(got, arr)


def test_a_wrapped_array_of_many_chunks_counts_each_as_written() -> None:
    arr = np.arange(7 * 9 * 11, dtype=np.uint16).reshape(7, 9, 11)
    shape = Vec(7, 9, 11)
    meta = VolumeMeta(np.dtype(np.uint16), (Scale(0, shape, Vec(3, 4, 5), (1, 1, 1)),),
                      "image")
    remote = MemoryRemote.wrap("w", meta, [arr])
    assert remote.absent_chunks(Box(Vec(0, 0, 0), shape)) == []


def test_a_scratch_result_counts_chunks_as_written_only_once_written() -> None:
    """A Service's result held in memory (arrays of the fill value it writes into) keeps
    "absent until written", as an empty store does."""
    shape = Vec(8, 8, 8)
    meta = VolumeMeta(np.dtype(np.uint8), (Scale(0, shape, Vec(4, 4, 4), (1, 1, 1)),),
                      "image")
    remote = scratch_remote(meta)
    whole = Box(Vec(0, 0, 0), shape)
    assert len(remote.absent_chunks(whole)) == 8
    remote.write(Box(Vec(0, 0, 0), Vec(4, 4, 4)), np.ones((4, 4, 4), np.uint8))
    assert len(remote.absent_chunks(whole)) == 7
