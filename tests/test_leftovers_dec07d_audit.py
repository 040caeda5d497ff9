"""Two leftovers of the interop and odd-paths audits (tests/test_interop_audit.py,
tests/test_odd_paths_audit.py), mended.

- A 0-d view of integer voxels could not index (``names[seg[z, y, x]]``,
  ``range(vol[0, 0, 0])``: "'Volume' object cannot be interpreted as an integer"), though
  numpy's 0-d integer arrays do and ``int(view)`` already read the voxel.
- The copy's "same volume" check cut a local path at its first ``#`` and resolved symbolic
  links only before it: ``run #3/em.zarr`` with ``run #3`` a link to ``data`` was not seen
  as ``data/em.zarr``, and the copy wrote the volume onto itself.
"""

from __future__ import annotations

import operator
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError

DATA = (np.arange(3 * 4 * 5) % 7).astype(np.uint16).reshape(3, 4, 5)


def _make(url: str, data: np.ndarray = DATA) -> voxgate.Volume:
    v = voxgate.create(url, shape=data.shape, dtype=data.dtype, chunks=(2, 2, 2),
                       voxel_size=(40, 8, 8))
    v[:] = data
    return v


def test_a_0d_view_of_integers_indexes_as_numpys_0d_arrays_do() -> None:
    vol = _make("mem://leftovers-index")
    names = [f"cell {i}" for i in range(10)]
    for z, y, x in [(0, 0, 0), (1, 2, 3), (2, 3, 4)]:
        want = int(DATA[z, y, x])
        assert operator.index(vol[z, y, x]) == want
        assert names[vol[z, y, x]] == names[want]
        assert list(range(vol[z, y, x])) == list(range(want))
    with pytest.raises(TypeError, match=r"one voxel .*has shape \(5,\)"):
        operator.index(vol[0, 0])
    floats = _make("mem://leftovers-index-f", DATA.astype(np.float32))
    with pytest.raises(TypeError, match=r"only a view of integer voxels.*float32"):
        operator.index(floats[0, 0, 1])
    signed = _make("mem://leftovers-index-i", DATA.astype(np.int8) - 3)
    assert names[signed[0, 0, 0]] == names[-3]  # (as a Python int: counted from the end)


def test_a_folder_named_with_a_hash_that_is_a_link_is_seen_through(tmp_path: Path) -> None:
    """``run #3`` a symbolic link to ``data``: ``run #3/em.zarr`` is ``data/em.zarr``."""
    data = tmp_path / "data"
    data.mkdir()
    src = _make(f"zarr://{data}/em.zarr")
    (tmp_path / "run #3").symlink_to(data)
    (tmp_path / "run #5.zarr").symlink_to(data / "em.zarr")
    before = sorted(p.name for p in (data / "em.zarr").rglob("*"))
    for dst in (f"zarr://{tmp_path}/run #3/em.zarr", f"{tmp_path}/run #3/em.zarr",
                f"zarr://{tmp_path}/run #5.zarr"):
        with pytest.raises(InvalidRequestError, match="same volume"):
            voxgate.copy(src.url, dst, progress=False)
        with pytest.raises(InvalidRequestError, match="same volume"):
            voxgate.copy(dst, src.url, progress=False)
    with pytest.raises(InvalidRequestError, match="inside the source"):
        voxgate.copy(src.url, f"zarr://{tmp_path}/run #5.zarr/inner.zarr", progress=False)
    assert sorted(p.name for p in (data / "em.zarr").rglob("*")) == before
    np.testing.assert_array_equal(voxgate.open(src.url).read(), DATA)
    # (another folder with a '#' is another volume: copied)
    voxgate.copy(src.url, f"zarr://{tmp_path}/run #4/em.zarr", progress=False)
    np.testing.assert_array_equal(voxgate.open(f"{tmp_path}/run #4/em.zarr").read(), DATA)
