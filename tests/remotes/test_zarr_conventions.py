"""Plain (non-OME) zarr arrays as the tools of connectomics labs write them: funlib.persistence
(``voxel_size``, ``offset`` in world units, ``axis_names`` with a ``^`` channel, ``units``,
``types``), daisy / gunpowder / older funlib (``resolution``, ``offset``), Zarr v3
``dimension_names`` and xarray's ``_ARRAY_DIMENSIONS``, made with zarr-python the way each
writes them.  voxgate reads each with the right shape, axis order, channels, voxel size (nm) and
offset (voxels), every voxel at odd boxes equal to numpy's, or refuses it naming what it cannot
tell; never with wrong geometry and no word."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import voxgate
from voxgate.errors import InvalidRequestError, VoxgateWarning

ZYX = (5, 7, 9)
#: odd boxes (z, y, x slices), some across chunk edges (chunks 2, 3, 4)
BOXES = [
    (slice(None), slice(None), slice(None)),
    (slice(1, 4), slice(2, 7), slice(3, 8)),
    (slice(4, 5), slice(0, 1), slice(8, 9)),
    (slice(0, 3), slice(4, 6), slice(0, 9)),
]


def _array(path: Path, data: np.ndarray, attrs: dict[str, Any], fmt: int,
           dimension_names: list[str] | None = None) -> str:
    """As funlib.persistence's prepare_ds: zarr-python's open_array, then ``attrs.put``."""
    kw: dict[str, Any] = {"dimension_names": dimension_names} if dimension_names else {}
    chunks = (2, 3, 4, 2)[: data.ndim] if data.ndim == 4 else (2, 3, 4)
    z = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                          zarr_format=fmt, **kw)  # type: ignore[arg-type]
    z[...] = data
    z.attrs.put(attrs)
    return str(path)


def _open(url: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these are read quietly
        return voxgate.open(url)


def _same_voxels(vol: Any, ref: np.ndarray) -> None:
    assert vol.shape == ref.shape and vol.dtype == ref.dtype
    lead = (slice(None),) * (ref.ndim - 3)
    for box in BOXES:
        np.testing.assert_array_equal(vol[(*lead, *box)].read(), ref[(*lead, *box)],
                                      err_msg=str(box))


def _data(shape: tuple[int, ...] = ZYX, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**32, shape, dtype=np.uint32)


@pytest.mark.parametrize("fmt", [2, 3])
def test_funlib_persistence_prepare_ds(tmp_path: Path, fmt: int) -> None:
    """funlib.persistence >= 0.5 writes voxel size and offset (world units) per space axis;
    voxgate ignored them: 1 nm voxels at offset 0."""
    data = _data()
    url = _array(tmp_path / "a.zarr", data, {
        "axis_names": ["z", "y", "x"], "units": ["nm", "nm", "nm"], "voxel_size": [40, 4, 8],
        "offset": [80, 12, 16], "types": ["space", "space", "space"]}, fmt)
    vol = _open(url)
    assert vol.voxel_size.zyx() == (40, 4, 8) and vol.voxel_size.unit == "nm"
    assert tuple(vol.offset) == (2, 3, 2)
    _same_voxels(vol, data)


def test_funlib_units_list(tmp_path: Path) -> None:
    """A ``units`` list of micrometres: read as nm, every length was 1000x too small."""
    url = _array(tmp_path / "um.zarr", _data(), {
        "axis_names": ["z", "y", "x"], "units": ["um", "um", "um"], "voxel_size": [1, 1, 2],
        "offset": [2, 3, 4]}, 3)
    vol = _open(url)
    assert vol.voxel_size.zyx() == (1000, 1000, 2000) and tuple(vol.offset) == (2, 3, 2)


@pytest.mark.parametrize("fmt", [2, 3])
def test_funlib_axis_names_in_another_order(tmp_path: Path, fmt: int) -> None:
    """``axis_names`` x, y, z (and the per-axis lists in that order): voxgate read the array
    as z, y, x, transposed, with z's voxel size taken as x's."""
    xyz = _data((9, 7, 5))
    url = _array(tmp_path / "xyz.zarr", xyz, {
        "axis_names": ["x", "y", "z"], "units": ["nm", "nm", "nm"], "voxel_size": [4, 5, 40],
        "offset": [8, 10, 120]}, fmt)
    vol = _open(url)
    assert vol.shape == ZYX and vol.voxel_size.zyx() == (40, 5, 4)
    assert tuple(vol.offset) == (3, 2, 2)
    _same_voxels(vol, xyz.transpose(2, 1, 0))


@pytest.mark.parametrize(("shape", "attrs", "move"), [
    # channel last, as funlib.persistence names it
    ((*ZYX, 2), {"axis_names": ["z", "y", "x", "c^"], "voxel_size": [40, 4, 4]}, True),
    # channel first, with types
    ((2, *ZYX), {"axis_names": ["c^", "z", "y", "x"], "types": ["channel", "space", "space",
                                                                "space"],
                 "voxel_size": [40, 4, 4], "units": ["", "nm", "nm", "nm"]}, False),
    # funlib.persistence's default names: channel first, then d0, d1, d2 (C order: z, y, x)
    ((2, *ZYX), {"axis_names": ["c0^", "d0", "d1", "d2"], "units": ["", "", ""],
                 "voxel_size": [40, 4, 4], "offset": [0, 0, 0]}, False),
    # the same, channel last (axis_names ["d0", "d1", "d2", "c0^"])
    ((*ZYX, 2), {"axis_names": ["d0", "d1", "d2", "c0^"], "voxel_size": [40, 4, 4]}, True),
], ids=["c^-last", "c^-first-types", "default-names", "default-names-last"])
def test_funlib_channel_axis(tmp_path: Path, shape: tuple[int, ...], attrs: dict[str, Any],
                             move: bool) -> None:
    """A channel-last (z, y, x, c^) array was read as 5 channels of a (7, 9, 2) volume."""
    data = _data(shape)
    url = _array(tmp_path / "c.zarr", data, attrs, 2)
    vol = _open(url)
    ref = np.moveaxis(data, -1, 0) if move else data
    assert vol.meta.num_channels == 2 and vol.voxel_size.zyx() == (40, 4, 4)
    _same_voxels(vol, ref)


@pytest.mark.parametrize("fmt", [2, 3])
def test_daisy_gunpowder_resolution_and_offset(tmp_path: Path, fmt: int) -> None:
    """daisy / gunpowder / funlib.persistence < 0.5: ``resolution`` and ``offset`` (nm,
    z, y, x); voxgate ignored both."""
    data = _data()
    url = _array(tmp_path / "raw.zarr", data, {"resolution": [40, 4, 4],
                                               "offset": [400, 36, 44]}, fmt)
    vol = _open(url)
    assert vol.voxel_size.zyx() == (40, 4, 4) and tuple(vol.offset) == (10, 9, 11)
    _same_voxels(vol, data)


def test_offset_between_voxels_is_the_nearest_with_a_warning(tmp_path: Path) -> None:
    """A world offset that is not a whole number of voxels (a centre convention, or 2.5
    sections) was dropped with the rest: now the nearest whole voxel, with a warning that says
    so, and the exact position kept as the scale's translation."""
    url = _array(tmp_path / "f.zarr", _data(), {"resolution": [40, 4, 4],
                                                "offset": [100, 14, 8]}, 2)
    with pytest.warns(VoxgateWarning, match=r"offset = \[100, 14, 8\] is \(2\.5, 3\.5, 2\.0\)"):
        vol = voxgate.open(url)
    assert tuple(vol.offset) == (3, 4, 2)
    assert vol.meta.scales[0].translation == (100, 14, 8)


def test_v3_dimension_names_order_the_funlib_lists(tmp_path: Path) -> None:
    """Zarr v3 ``dimension_names`` x, y, z with funlib lists in that (the array's) order."""
    xyz = _data((9, 7, 5))
    url = _array(tmp_path / "d.zarr", xyz, {"voxel_size": [4, 5, 40], "offset": [0, 5, 40],
                                             "units": ["nm", "nm", "um"]}, 3,
                 dimension_names=["x", "y", "z"])
    vol = _open(url)
    assert vol.shape == ZYX and vol.voxel_size.zyx() == (40000, 5, 4)
    assert tuple(vol.offset) == (1, 1, 0)
    _same_voxels(vol, xyz.transpose(2, 1, 0))


def test_xarray_array_dimensions_order_a_resolution(tmp_path: Path) -> None:
    """Zarr v2 ``_ARRAY_DIMENSIONS`` (xarray's) x, y, z with a ``resolution`` in that order."""
    xyz = _data((9, 7, 5))
    url = _array(tmp_path / "x.zarr", xyz, {"_ARRAY_DIMENSIONS": ["x", "y", "z"],
                                             "resolution": [4, 4, 40]}, 2)
    vol = _open(url)
    assert vol.shape == ZYX and vol.voxel_size.zyx() == (40, 4, 4)
    _same_voxels(vol, xyz.transpose(2, 1, 0))


def test_voxgate_attribute_wins(tmp_path: Path) -> None:
    url = _array(tmp_path / "v.zarr", _data(), {
        "resolution": [40, 4, 4], "offset": [400, 40, 40],
        "voxgate": {"voxel_size": [30, 8, 8], "offset": [1, 2, 3], "kind": "image"}}, 2)
    vol = _open(url)
    assert vol.voxel_size.zyx() == (30, 8, 8) and tuple(vol.offset) == (1, 2, 3)
    assert vol.kind == "image"


def test_space_axes_voxgate_cannot_place_are_refused(tmp_path: Path) -> None:
    """Four space axes with funlib's default names (d0 .. d3): which three are z, y, x cannot be
    told; voxgate read the first as channels."""
    url = _array(tmp_path / "t.zarr", _data((2, *ZYX)), {
        "axis_names": ["d0", "d1", "d2", "d3"], "voxel_size": [1, 40, 4, 4]}, 2)
    with pytest.raises(InvalidRequestError, match=r"4 space axes, none named z, y or x"):
        voxgate.open(url)


@pytest.mark.parametrize(("attrs", "what"), [
    ({"resolution": [40, 4]}, "resolution"),
    ({"voxel_size": [40, 0, 4]}, "voxel_size"),
    ({"resolution": [40, 4, 4], "units": ["nm", "pixel", "nm"]}, "units"),
    ({"resolution": [40, 4, 4], "offset": "0,0,0"}, "offset"),
])
def test_unreadable_funlib_attributes_warn_and_stay_readable(
        tmp_path: Path, attrs: dict[str, Any], what: str) -> None:
    data = _data()
    url = _array(tmp_path / "b.zarr", data, attrs, 2)
    with pytest.warns(VoxgateWarning, match=f"attribute {what} = "):
        vol = voxgate.open(url)
    np.testing.assert_array_equal(vol.read(), data)
