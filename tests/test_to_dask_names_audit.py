"""``Volume.to_dask`` arrays of one view never share task keys: before, every array of a view
was named by its URL, scale and axes alone, so two of other chunks in one graph mixed their
blocks up (a crash, or blocks of one read in the other's place), and an array made after a
write held the keys of one made (and persisted) before it."""

from __future__ import annotations

import numpy as np
import pytest

import voxgate

SHAPE = (8, 12, 10)


@pytest.fixture
def vol() -> voxgate.Volume:
    v = voxgate.create("mem://to-dask-names", shape=SHAPE, dtype="uint16", chunks=(2, 4, 5),
                       voxel_size=(4, 4, 4))
    v[:] = (np.arange(np.prod(SHAPE)) % 1000).astype(np.uint16).reshape(SHAPE)
    return v  # (mem:// volumes are cleared after each test: tests/conftest.py)


def test_two_chunkings_of_one_view_in_one_graph(vol: voxgate.Volume) -> None:
    ref = vol.read().astype(np.int64)
    a, b = vol.to_dask(chunks=(4, 12, 10)), vol.to_dask(chunks=(2, 4, 5))
    np.testing.assert_array_equal((a.astype(np.int64) + b).compute(scheduler="sync"), 2 * ref)
    assert bool((a == b).all().compute(scheduler="sync"))
    # slices of views of other chunkings, stacked
    c = vol[2:6].to_dask(chunks=(1, 6, 10))
    got = np.stack([a[2:6], b[2:6], c]).compute(scheduler="sync")
    np.testing.assert_array_equal(got, np.stack([ref[2:6]] * 3))
    assert a.name != b.name


def test_an_array_made_after_a_write_reads_it_beside_one_made_before(
        vol: voxgate.Volume) -> None:
    before = vol.to_dask().persist(scheduler="sync")  # (read now, held in memory)
    vol[:] = 7
    after = vol.to_dask()
    both = np.stack([before, after]).compute(scheduler="sync")
    np.testing.assert_array_equal(both[1], np.full(SHAPE, 7, np.uint16))
    assert int(both[0].max()) > 7  # the persisted one keeps what it read
    assert before.name != after.name
