"""N5 datasets written by funlib.persistence open with its voxel size and offset.

funlib.persistence writes N5 through zarr-python v2's N5Store, which reverses the C-order shape
and chunks into N5's x-first ``dimensions`` / ``blockSize`` but stores funlib's attributes
(``axis_names``, ``types``, ``voxel_size``, ``offset`` in world units, ``units``) as funlib
gives them, in C order (z first).  voxgate read such a dataset with 1 nm voxels and took
``offset`` for Paintera's x-first physical offset, so the data sat in the wrong place with no
warning; a channel axis of a 2-D array was read as z.  Now these attributes are read as the
zarr store reads funlib's, unless N5's own ``resolution`` / ``pixelResolution`` is there,
which wins (``voxel_size`` ignored with a VoxgateWarning).

zarr-python v2 (N5Store) and funlib.persistence are not installed in the test environment:
the dataset is written with tensorstore's N5 driver (x-first, as N5Store writes it) and
funlib's attributes are then added to its attributes.json as N5Store puts them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.errors import VoxgateWarning
from voxgate.geometry import Box

from .n5_files import n5_dataset


def _n5(tmp_path: Path, data: np.ndarray, attrs: dict[str, Any]) -> tuple[str, Path]:
    """A dataset ``raw`` holding ``data`` (C order: [c,] [z,] y, x) as N5Store writes it
    (dimensions reversed, x first), with ``attrs`` added to its attributes.json."""
    return n5_dataset(tmp_path / "f.n5", data, attrs)


def _funlib(names: list[str], vs: list[float], offset: list[float], unit: str
            ) -> dict[str, Any]:
    """funlib.persistence's attributes (its prepare_ds): space axes' lists in C order."""
    space = [n for n in names if not n.endswith("^")]
    return {"axis_names": names, "units": [unit] * len(space), "voxel_size": vs,
            "offset": offset, "types": ["channel" if n.endswith("^") else "space"
                                        for n in names]}


def _data(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape)


@pytest.mark.parametrize(("vs", "offset", "unit"), [
    ([40, 8, 4], [80, 16, 40], "nm"),
    ([0.04, 0.008, 0.004], [0.08, 0.016, 0.04], "um"),
], ids=["nm", "um"])
def test_3d_funlib_n5_geometry(tmp_path: Path, vs: list[float], offset: list[float],
                               unit: str) -> None:
    # was: 1 nm voxels, offset (40, 16, 80): funlib's z-first world offset read as x-first nm
    data = _data((4, 12, 20))
    url, attrs_path = _n5(tmp_path, data, _funlib(["z", "y", "x"], vs, offset, unit))
    before = attrs_path.read_bytes()

    vol = voxgate.open(url, mode="r+")
    assert vol.shape == (4, 12, 20)
    assert vol.voxel_size.zyx() == pytest.approx((40.0, 8.0, 4.0))
    assert tuple(vol.offset) == (2, 2, 10)  # (80, 16, 40) nm of (40, 8, 4) nm voxels
    np.testing.assert_array_equal(vol.read(), data)
    box = Box((3, 5, 13), (5, 9, 20))  # dataset coordinates: the offset counted
    np.testing.assert_array_equal(vol.read(box), data[1:3, 3:7, 3:10])
    vol.write(np.full((2, 4, 7), 7, np.uint16), box)

    # a write changes the voxels only, not funlib's attributes
    assert attrs_path.read_bytes() == before
    expected = data.copy()
    expected[1:3, 3:7, 3:10] = 7
    again = voxgate.open(url)
    assert tuple(again.offset) == (2, 2, 10)
    np.testing.assert_array_equal(again.read(), expected)


def test_3d_funlib_n5_with_a_channel_axis(tmp_path: Path) -> None:
    data = _data((2, 4, 12, 20))
    url, _ = _n5(tmp_path, data, _funlib(["c^", "z", "y", "x"], [40, 8, 4], [80, 16, 40], "nm"))
    vol = voxgate.open(url)
    assert vol.meta.num_channels == 2
    assert vol.voxel_size.zyx() == (40.0, 8.0, 4.0)
    assert tuple(vol.offset) == (2, 2, 10)
    np.testing.assert_array_equal(vol.read(), data)


@pytest.mark.parametrize("unit", ["nm", "um"])
def test_2d_funlib_n5_geometry(tmp_path: Path, unit: str) -> None:
    # was: 1 nm voxels and the (y, x) offset read as Paintera's (x, y)
    data = _data((12, 20))
    k = 0.001 if unit == "um" else 1.0
    url, _ = _n5(tmp_path, data, _funlib(["y", "x"], [8 * k, 4 * k], [16 * k, 40 * k], unit))
    vol = voxgate.open(url)
    assert vol.shape == (1, 12, 20)
    # as the zarr store reads funlib's 2-D arrays: z is the larger in-plane size, offset 0
    assert vol.voxel_size.zyx() == pytest.approx((8.0, 8.0, 4.0))
    assert tuple(vol.offset) == (0, 2, 10)
    np.testing.assert_array_equal(vol.read(), data[None])


def test_2d_funlib_n5_with_a_channel_axis(tmp_path: Path) -> None:
    # was: N5 dimensions [x, y, c] read as x, y, z: 3 z planes of one channel
    data = _data((3, 12, 20))
    url, _ = _n5(tmp_path, data, _funlib(["c^", "y", "x"], [8, 4], [16, 40], "nm"))
    vol = voxgate.open(url)
    assert vol.meta.num_channels == 3
    assert vol.shape == (3, 1, 12, 20)
    assert vol.voxel_size.zyx() == (8.0, 8.0, 4.0)
    assert tuple(vol.offset) == (0, 2, 10)
    np.testing.assert_array_equal(vol.read(), data[:, None])


def test_funlib_offset_between_voxels_is_kept_as_translation(tmp_path: Path) -> None:
    # as the zarr store does: the nearest whole voxel, warned, the exact position kept
    data = _data((4, 12, 20))
    url, _ = _n5(tmp_path, data, _funlib(["z", "y", "x"], [40, 8, 4], [80, 16, 41], "nm"))
    with pytest.warns(VoxgateWarning, match="not a whole number of voxels"):
        vol = voxgate.open(url)
    assert vol.voxel_size.zyx() == (40.0, 8.0, 4.0)
    assert tuple(vol.offset) == (2, 2, 10)
    assert vol.meta.scales[0].translation == pytest.approx((80.0, 16.0, 41.0))


def test_n5_resolution_wins_over_funlib_voxel_size(tmp_path: Path) -> None:
    data = _data((4, 12, 20))
    attrs = {**_funlib(["z", "y", "x"], [50, 10, 5], [80, 16, 40], "nm"),
             "resolution": [4, 8, 40]}  # N5's own, x first
    url, _ = _n5(tmp_path, data, attrs)
    with pytest.warns(VoxgateWarning, match="voxel_size .* is ignored"):
        vol = voxgate.open(url)
    assert vol.voxel_size.zyx() == (40.0, 8.0, 4.0)
    # (and its offset is Paintera's, x first: 80, 16, 40 nm of 4, 8, 40 nm voxels)
    assert tuple(vol.offset) == (1, 2, 20)


def test_paintera_offset_without_funlib_keys_reads_as_before(tmp_path: Path) -> None:
    # guard: an x-first physical offset beside an N5 resolution (Paintera) is unchanged
    data = _data((4, 12, 20))
    url, _ = _n5(tmp_path, data, {"resolution": [4, 8, 40], "offset": [40, 16, 80]})
    vol = voxgate.open(url)
    assert vol.voxel_size.zyx() == (40.0, 8.0, 4.0)
    assert tuple(vol.offset) == (2, 2, 10)
    np.testing.assert_array_equal(vol.read(), data)
    # and a voxel_size without funlib's axis_names / types is no funlib dataset
    url2, _ = _n5(tmp_path / "b", data, {"voxel_size": [40, 8, 4], "offset": [40, 16, 80]})
    vol2 = voxgate.open(url2)
    assert vol2.voxel_size.zyx() == (1.0, 1.0, 1.0)
    assert tuple(vol2.offset) == (80, 16, 40)
