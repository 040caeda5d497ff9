"""2-D arrays written by funlib.persistence open as one z plane.

A plain 2-D zarr or HDF5 array opens as one z plane, but one carrying funlib.persistence's
attributes (``axis_names`` ["y", "x"] or its defaults ["d0", "d1"], ``types``, ``voxel_size``,
``offset``, ``units``) was refused: "2 space axes, none named z, y or x".  Now two space axes
named y and x, or two naming none of z, y, x (taken as y, x in C order), optionally after a
channel axis, open as one z plane; the voxel size and offset are (y, x), the z size being the
larger in-plane one at offset 0 (the one rule of every store's 2-D images: N5, OME-Zarr,
HDF5's element_size_um / resolution).  Two space axes named otherwise (z and x) are refused,
naming them.

funlib.persistence is not installed in the test environment: the arrays are written as its
``prepare_ds`` writes them (zarr-python's ``open_array``, then ``attrs.put`` of axis_names,
units, voxel_size, offset, types), or with h5py for HDF5.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zarr

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.geometry import Box

YX = (12, 20)


def _funlib(names: list[str], units: str = "nm", vs: tuple[int, int] = (8, 4),
            offset: tuple[int, int] = (16, 40)) -> dict[str, Any]:
    """funlib.persistence's attributes for a (y, x) array, with an optional leading channel
    axis named in ``names`` (ending in "^")."""
    types = ["channel" if n.endswith("^") else "space" for n in names]
    return {"axis_names": names, "units": [units, units], "voxel_size": list(vs),
            "offset": list(offset), "types": types}


def _zarr(path: Path, data: np.ndarray, attrs: dict[str, Any], fmt: int) -> str:
    chunks = (1, 5, 6)[3 - data.ndim:]
    z = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                          zarr_format=fmt)  # type: ignore[arg-type]
    z[...] = data
    z.attrs.put(attrs)
    return str(path)


def _open(url: str, mode: str = "r") -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read as the attributes say: no warning
        return voxgate.open(url, mode=mode)


def _data(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape)


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("names", [["y", "x"], ["d0", "d1"]], ids=["y-x", "defaults"])
def test_2d_funlib_zarr_opens_as_one_plane(tmp_path: Path, fmt: int, names: list[str]) -> None:
    data = _data(YX)
    attrs = _funlib(names, units="" if names[0] == "d0" else "nm")  # funlib's default unit: ""
    url = _zarr(tmp_path / "img.zarr", data, attrs, fmt)

    vol = _open(f"zarr://{url}", mode="r+")
    assert vol.shape == (1, *YX)
    assert vol.voxel_size.zyx() == (8.0, 8.0, 4.0)  # z: the larger in-plane size
    assert tuple(vol.offset) == (0, 2, 10)  # (16, 40) nm of (8, 4) nm voxels
    np.testing.assert_array_equal(vol.read(), data[None])
    # a box in dataset coordinates (the offset counted), across chunk edges
    box = Box((0, 5, 13), (1, 9, 20))
    np.testing.assert_array_equal(vol.read(box), data[None, 3:7, 3:10])
    vol.write(np.full((1, 4, 7), 7, np.uint16), box)

    expected = data.copy()
    expected[3:7, 3:10] = 7
    back = zarr.open_array(url, mode="r")
    np.testing.assert_array_equal(back[...], expected)
    assert back.shape == YX  # still 2-D: nothing stored for the z plane
    assert dict(back.attrs) == attrs  # reading and writing did not rewrite the attributes


def test_2d_funlib_zarr_micrometres(tmp_path: Path) -> None:
    data = _data(YX)
    url = _zarr(tmp_path / "um.zarr", data, _funlib(["y", "x"], "um", (2, 1), (4, 3)), 3)
    vol = _open(f"zarr://{url}")
    assert vol.voxel_size.zyx() == (2000.0, 2000.0, 1000.0)  # z: the larger in-plane size
    assert tuple(vol.offset) == (0, 2, 3)


@pytest.mark.parametrize("names", [["c^", "y", "x"], ["c0^", "d0", "d1"]],
                         ids=["c^-y-x", "defaults"])
def test_2d_funlib_zarr_with_channel_axis(tmp_path: Path, names: list[str]) -> None:
    data = _data((2, *YX))
    attrs = _funlib(names)
    url = _zarr(tmp_path / "rgb.zarr", data, attrs, 2)
    vol = _open(f"zarr://{url}")
    assert vol.meta.num_channels == 2
    assert vol.voxel_size.zyx() == (8.0, 8.0, 4.0) and tuple(vol.offset) == (0, 2, 10)
    np.testing.assert_array_equal(vol.read(), data[:, None])
    assert dict(zarr.open_array(url, mode="r").attrs) == attrs


def test_2d_funlib_zarr_x_before_y(tmp_path: Path) -> None:
    """Axes named x, y (that order): the array is transposed, the lists read in that order."""
    data = _data(YX[::-1])  # (x, y)
    url = _zarr(tmp_path / "xy.zarr", data, _funlib(["x", "y"], vs=(4, 8), offset=(40, 16)), 2)
    vol = _open(f"zarr://{url}")
    assert vol.shape == (1, *YX)
    assert vol.voxel_size.zyx() == (8.0, 8.0, 4.0) and tuple(vol.offset) == (0, 2, 10)
    np.testing.assert_array_equal(vol.read(), data.T[None])


@pytest.mark.parametrize("names", [["z", "x"], ["y", "d1"]])
def test_2d_funlib_zarr_ambiguous_names_refused(tmp_path: Path, names: list[str]) -> None:
    url = _zarr(tmp_path / "zx.zarr", _data(YX), _funlib(names), 2)
    with pytest.raises(InvalidRequestError, match=r"2 space axes named \[") as info:
        voxgate.open(f"zarr://{url}")
    assert str(names) in str(info.value) and "['y', 'x']" in str(info.value)


@pytest.mark.parametrize("names", [["y", "x"], ["d0", "d1"]], ids=["y-x", "defaults"])
def test_2d_funlib_hdf5_opens_as_one_plane(tmp_path: Path, names: list[str]) -> None:
    path = tmp_path / "img.h5"
    data = _data(YX)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("raw", data=data, chunks=(5, 6))
        for k, v in _funlib(names).items():
            ds.attrs[k] = v
        before = {k: np.asarray(v).tolist() for k, v in ds.attrs.items()}

    vol = _open(f"hdf5://{path}#/raw", mode="r+")
    assert vol.shape == (1, *YX)
    assert vol.voxel_size.zyx() == (8.0, 8.0, 4.0) and tuple(vol.offset) == (0, 2, 10)
    np.testing.assert_array_equal(vol.read(), data[None])
    vol.write(np.full((1, 2, 2), 5, np.uint16), Box((0, 2, 10), (1, 4, 12)))
    vol.remote.close()

    expected = data.copy()
    expected[0:2, 0:2] = 5
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["raw"][...], expected)
        assert {k: np.asarray(v).tolist() for k, v in f["raw"].attrs.items()} == before


def test_2d_funlib_hdf5_z_x_refused(tmp_path: Path) -> None:
    path = tmp_path / "zx.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("raw", data=_data(YX))
        ds.attrs["axis_names"] = ["z", "x"]
        ds.attrs["types"] = ["space", "space"]
    with pytest.raises(InvalidRequestError, match=r"2 space axes named \['z', 'x'\]"):
        voxgate.open(f"hdf5://{path}#/raw")
