"""2-D HDF5 datasets: their two-number voxel size and offset are (y, x).

A 2-D dataset opens as one z plane, but its ``element_size_um`` of two numbers (y, x: what
Fiji's HDF5 plugin and other 2-D writers put there) was ignored with a warning and the voxel
size fell back to 1 nm; so were a two-number ``resolution`` / ``voxel_size`` (in ``unit``) and a
two-number ``offset`` / ``voxel_offset``.  Now two numbers on a 2-D dataset are (y, x); the z
size is the larger of the two (as for a 2-D image in every store; it was 1 of the attribute's
unit, 1 um for ``element_size_um``), the z offset 0.  Files are written with h5py; a voxgate
write leaves the attributes as they were.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import voxgate
from voxgate.errors import VoxgateWarning
from voxgate.geometry import Box

YX = (12, 20)


def _attrs(path: Path, name: str) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return {k: np.asarray(v).tolist() for k, v in f[name].attrs.items()}


def test_2d_element_size_um_is_y_x_in_micrometres(tmp_path: Path) -> None:
    path = tmp_path / "fiji.h5"
    data = np.arange(np.prod(YX), dtype=np.uint16).reshape(YX)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("img", data=data, chunks=(4, 4))
        ds.attrs["element_size_um"] = np.array([0.5, 0.25], np.float32)
    before = _attrs(path, "img")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read as the file says: no warning
        vol = voxgate.open(f"hdf5://{path}#/img", mode="r+")
    assert vol.shape == (1, *YX)
    assert vol.voxel_size.zyx() == (500.0, 500.0, 250.0)  # z: the larger in-plane size
    assert tuple(vol.offset) == (0, 0, 0)
    vol.write(np.full((1, 4, 4), 9, np.uint16), Box((0, 4, 8), (1, 8, 12)))
    vol.remote.close()

    expected = data.copy()
    expected[4:8, 8:12] = 9
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["img"][...], expected)
    assert _attrs(path, "img") == before  # the write did not rewrite the attributes


@pytest.mark.parametrize("key", ["resolution", "voxel_size"])
def test_2d_resolution_and_offset_in_unit_are_y_x(tmp_path: Path, key: str) -> None:
    # funlib.persistence / gunpowder style 2-D attributes: per-axis lists of the array's axes
    path = tmp_path / "gp.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("raw", data=np.ones(YX, np.uint8))
        ds.attrs[key] = [8, 4]
        ds.attrs["offset"] = [16, 40]
        ds.attrs["units"] = ["nm", "nm"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol = voxgate.open(f"hdf5://{path}#/raw")
    assert vol.voxel_size.zyx() == (8.0, 8.0, 4.0)
    assert tuple(vol.offset) == (0, 2, 10)
    np.testing.assert_array_equal(vol.read(), np.ones((1, *YX), np.uint8))


def test_2d_resolution_in_micrometres_and_voxel_offset(tmp_path: Path) -> None:
    path = tmp_path / "um.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("img", data=np.zeros(YX, np.uint8))
        ds.attrs["resolution"] = [0.004, 0.002]
        ds.attrs["unit"] = "um"
        ds.attrs["voxel_offset"] = [3, 5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol = voxgate.open(f"hdf5://{path}#/img")
    assert vol.voxel_size.zyx() == pytest.approx((4.0, 4.0, 2.0))
    assert tuple(vol.offset) == (0, 3, 5)


def test_malformed_2d_voxel_size_warns_naming_two_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("img", data=np.zeros(YX, np.uint8)).attrs["element_size_um"] = [0.5, -1]
        # a 3-D dataset still needs three numbers: two are not taken as (y, x) there
        f.create_dataset("vol", data=np.zeros((2, *YX), np.uint8)).attrs[
            "element_size_um"] = [0.5, 0.25]
    with pytest.warns(VoxgateWarning, match=r"two \(y, x\) or three \(z, y, x\) numbers"):
        flat = voxgate.open(f"hdf5://{path}#/img")
    assert flat.voxel_size.zyx() == (1.0, 1.0, 1.0)
    with pytest.warns(VoxgateWarning, match="three numbers, z, y, x") as record:
        deep = voxgate.open(f"hdf5://{path}#/vol")
    assert deep.voxel_size.zyx() == (1.0, 1.0, 1.0)
    assert not any("two (y, x)" in str(w.message) for w in record)
