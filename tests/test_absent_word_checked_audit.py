"""A store's word that a chunk is absent is checked before work is skipped on it.

``voxgate.copy`` and the block-wise Services skip blocks of chunks a store calls absent, and
copy wrote those blocks with the value one voxel of the first such chunk read as.  A store
wrongly calling a chunk absent (two Remotes did until 2026-12: a wrapped numpy array, a
partly stored WEBKNOSSOS chunk; HDF5 per-channel chunks) lost that chunk's data, and spread
its first voxel's value over every absent block.  Now the first chunk called absent is read
whole: unless it reads as the volume's fill value everywhere, nothing is skipped on that
store's word.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import voxgate
from voxgate.geometry import Box, Vec
from voxgate.remotes.zarr import ZarrRemote

SHAPE = (12, 20, 28)
CHUNKS = (4, 5, 7)


@pytest.fixture
def lying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, np.ndarray]:
    """A zarr volume, every chunk stored (random labels 1..8, but 0, the fill value, at its
    first voxel: what a one-voxel look at the first chunk called absent saw), whose Remote
    says every chunk is absent."""
    data = np.random.default_rng(3).integers(1, 9, SHAPE, dtype=np.uint32)
    data[0, 0, 0] = 0
    url = f"zarr://{tmp_path}/v.zarr"
    voxgate.create(url, shape=SHAPE, dtype="uint32", chunks=CHUNKS, voxel_size=(1, 1, 1),
                   kind="segmentation")[...] = data
    real = ZarrRemote.absent_chunks

    def absent_chunks(self: Any, box: Box, scale: int = 0) -> list[Vec]:
        truth = real(self, box, scale)
        assert truth == []  # (every chunk is stored)
        lo = [(a - o) // c for a, o, c in zip(box.start, (0, 0, 0), CHUNKS, strict=True)]
        hi = [-(-b // c) for b, c in zip(box.stop, CHUNKS, strict=True)]
        return sorted(Vec(z, y, x) for z in range(lo[0], hi[0])
                      for y in range(lo[1], hi[1]) for x in range(lo[2], hi[2]))

    monkeypatch.setattr(ZarrRemote, "absent_chunks", absent_chunks)
    return url, data


def test_copy_reads_what_a_store_wrongly_calls_absent(lying: tuple[str, np.ndarray],
                                                      tmp_path: Path) -> None:
    url, data = lying
    voxgate.copy(url, f"zarr://{tmp_path}/out.zarr", progress=False)
    got = zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")[...]
    np.testing.assert_array_equal(got, data)


def test_services_read_what_a_store_wrongly_calls_absent(lying: tuple[str, np.ndarray]
                                                         ) -> None:
    url, data = lying
    stats = voxgate.label_stats(url, block=(4, 10, 14))
    ids, counts = np.unique(data[data > 0], return_counts=True)
    assert stats["id"].tolist() == ids.tolist()
    assert stats["voxel_count"].tolist() == counts.tolist()
