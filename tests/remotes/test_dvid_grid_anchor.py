"""Blocks planned for a DVID volume lie on DVID's block grid through 0, not on a grid from the
volume's first voxel.  A labelmap voxgate made at an offset that is not a multiple of its
block size had every planned block straddle DVID blocks: each write was a read-modify-write
of up to 8 of them, serialized in one process (one lock for every unaligned write) and racing
between the worker processes of a cluster, where two of them rewriting one DVID block lose one
another's voxels.  Now only blocks at the volume's faces are partial, and no two blocks of a
copy, map_blocks, connected_components or proofreading edit share a DVID block."""

from __future__ import annotations

import itertools
import uuid as uuidlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.ndimage

import voxgate
from voxgate.geometry import Box, Vec
from voxgate.remotes.dvid import DVIDRepo
from voxgate.remotes.dvid.remote import DVIDRemote

BLOCK = 16
OFFSET = (5, 7, 9)  # not a multiple of the block size on any axis
SHAPE = (37, 45, 51)


def _dvid_blocks(box: Box) -> set[tuple[int, ...]]:
    return set(itertools.product(*(range(a // BLOCK, -(-b // BLOCK))
                                   for a, b in zip(box.start, box.stop, strict=True))))


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[Box]:
    """Every box written to any DVID volume (scale 0) during the test."""
    seen: list[Box] = []
    real = DVIDRemote.write

    def recording(self: DVIDRemote, box: Box, array: np.ndarray, scale: int = 0) -> None:
        if scale == 0:
            seen.append(box)
        real(self, box, array, scale)

    monkeypatch.setattr(DVIDRemote, "write", recording)
    return seen


def _owned_once(boxes: list[Box]) -> None:
    owners: dict[tuple[int, ...], int] = {}
    for b in boxes:
        for blk in _dvid_blocks(b):
            owners[blk] = owners.get(blk, 0) + 1
    assert boxes and max(owners.values()) == 1, sorted(owners.items())[:8]


def _labels() -> np.ndarray:
    rng = np.random.default_rng(11)
    fg = scipy.ndimage.binary_opening(rng.random(SHAPE) > 0.45)
    return (fg * rng.integers(1, 4, SHAPE)).astype(np.uint64) + np.uint64(2**53)


def test_grid_bounds_is_dvids_grid_through_0(repo: DVIDRepo) -> None:
    vol = voxgate.create(repo.url(f"seg_{uuidlib.uuid4().hex[:8]}"), shape=SHAPE,
                         offset=OFFSET, chunks=(BLOCK,) * 3, dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation")
    assert vol.bounds == Box(OFFSET, tuple(o + s for o, s in zip(OFFSET, SHAPE, strict=True)))
    assert vol.remote.grid_bounds(0) == Box((0, 0, 0), vol.bounds.stop)
    neg = voxgate.create(repo.url(f"img_{uuidlib.uuid4().hex[:8]}"), shape=(20, 20, 20),
                         offset=(-21, 3, -16), chunks=(BLOCK,) * 3, dtype="uint8",
                         voxel_size=(8, 8, 8))
    assert neg.remote.grid_bounds(0).start == Vec(-32, 0, -16)


def test_copy_into_an_unaligned_labelmap(repo: DVIDRepo, tmp_path: Path, writes: list[Box],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    # blocks of one DVID block (the default would copy this small volume in one block)
    monkeypatch.setattr(importlib.import_module("voxgate.transfer"), "BLOCK_BYTES",
                        BLOCK**3 * 8)
    data = _labels()
    src = voxgate.create(f"zarr://{tmp_path}/src.zarr", shape=SHAPE, offset=OFFSET,
                         chunks=(8, 8, 8), dtype="uint64", voxel_size=(8, 8, 8),
                         kind="segmentation")
    src.write(data)
    url = repo.url(f"seg_{uuidlib.uuid4().hex[:8]}")
    voxgate.copy(src, url, block_size=(BLOCK,) * 3, workers=4, progress=False)
    assert len(writes) > 8
    _owned_once(writes)
    dst = voxgate.open(url)
    assert dst.bounds == src.bounds and np.array_equal(dst.read(), data)


def test_map_blocks_and_connected_components_into_an_unaligned_labelmap(
        repo: DVIDRepo, writes: list[Box]) -> None:
    data = _labels()
    src = voxgate.create(repo.url(f"seg_{uuidlib.uuid4().hex[:8]}"), shape=SHAPE,
                         offset=OFFSET, chunks=(BLOCK,) * 3, dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation")
    src.write(data)
    out = voxgate.create(repo.url(f"out_{uuidlib.uuid4().hex[:8]}"), shape=SHAPE,
                         offset=OFFSET, chunks=(BLOCK,) * 3, dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation")
    writes.clear()
    voxgate.map_blocks(lambda b: b + np.uint64(1), voxgate.open(src.url), out=out,
                       block=(BLOCK,) * 3, workers=4, progress=False)
    _owned_once(writes)
    assert np.array_equal(voxgate.open(out.url).read(), data + np.uint64(1))

    cc = voxgate.create(repo.url(f"cc_{uuidlib.uuid4().hex[:8]}"), shape=SHAPE, offset=OFFSET,
                        chunks=(BLOCK,) * 3, dtype="uint64", voxel_size=(8, 8, 8),
                        kind="segmentation")
    writes.clear()
    got = voxgate.connected_components(voxgate.open(src.url), out=cc, block=(BLOCK,) * 3,
                                       workers=4, progress=False)
    # (pass 1 writes every block, pass 3 rewrites them: each pass on its own owns its blocks)
    half = len(writes) // 2
    assert half > 8
    _owned_once(writes[:half])
    _owned_once(writes[half:])
    want = np.zeros(SHAPE, np.uint64)
    n = 0
    for value in np.unique(data):
        lab, k = scipy.ndimage.label(data == value, structure=np.ones((3, 3, 3)))
        want[lab > 0] = lab[lab > 0] + n
        n += k
    got_arr = got.read()
    # the same partition into components (numbering may differ)
    pairs = np.unique(np.stack([got_arr.ravel(), want.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1] == n


def test_proofreading_edit_of_an_unaligned_labelmap(repo: DVIDRepo, writes: list[Any]) -> None:
    data = _labels()
    vol = voxgate.create(repo.url(f"seg_{uuidlib.uuid4().hex[:8]}"), shape=SHAPE,
                         offset=OFFSET, chunks=(BLOCK,) * 3, dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation")
    vol.write(data)
    a, b = (int(v) for v in np.unique(data)[1:3])
    writes.clear()
    voxgate.merge(voxgate.open(vol.url, mode="r+"), [a, b], into=b, prefer="local",
                  workers=4)
    _owned_once(writes)
    want = np.where(data == a, np.uint64(b), data)
    assert np.array_equal(voxgate.open(vol.url).read(), want)
