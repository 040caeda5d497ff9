"""funlib.persistence's attributes on HDF5 (c, y, x) datasets and on N5 datasets.

HDF5: a 3-D dataset with ``axis_names`` ["c^", "y", "x"] (a channel axis and two space axes:
channels of one z plane) was refused ("voxgate reads a 3-D dataset as ('z', 'y', 'x')")
while the zarr store opens the same array; it now opens as the zarr one does, reads and
writes going to the 3-D dataset, its attributes untouched.

funlib.persistence is not installed in the test environment: the files are written as its
``prepare_ds`` writes them (the dataset, then its attributes axis_names, units, voxel_size,
offset, types), with h5py.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.geometry import Box

YX = (12, 20)


def _funlib(names: list[str], units: str = "nm", vs: tuple[int, int] = (8, 4),
            offset: tuple[int, int] = (16, 40)) -> dict[str, Any]:
    """funlib.persistence's attributes for a (c, y, x) array (voxel_size, offset and units
    list the space axes only)."""
    types = ["channel" if n.endswith("^") else "space" for n in names]
    return {"axis_names": names, "units": [units, units], "voxel_size": list(vs),
            "offset": list(offset), "types": types}


def _open(url: str, mode: str = "r") -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read as the attributes say: no warning
        return voxgate.open(url, mode=mode)


def _data(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape)


def _h5(path: Path, data: np.ndarray, attrs: dict[str, Any],
        chunks: tuple[int, ...] | None = (1, 5, 6)) -> dict[str, Any]:
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("raw", data=data, chunks=chunks)
        for k, v in attrs.items():
            ds.attrs[k] = v
        return {k: np.asarray(v).tolist() for k, v in ds.attrs.items()}


def _attrs_of(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return {k: np.asarray(v).tolist() for k, v in f["raw"].attrs.items()}


@pytest.mark.parametrize("names", [["c^", "y", "x"], ["c0^", "d0", "d1"]],
                         ids=["c^-y-x", "defaults"])
@pytest.mark.parametrize("chunks", [(1, 5, 6), (2, 5, 6), None], ids=["c1", "c2", "contiguous"])
def test_hdf5_channels_of_one_plane(tmp_path: Path, names: list[str],
                                    chunks: tuple[int, ...] | None) -> None:
    path = tmp_path / "rgb.h5"
    data = _data((3, *YX))
    before = _h5(path, data, _funlib(names), chunks)

    vol = _open(f"hdf5://{path}#/raw", mode="r+")
    assert vol.meta.num_channels == 3 and vol.meta.kind == "image"
    assert vol.shape == (3, 1, *YX)
    assert vol.voxel_size.zyx() == (8.0, 8.0, 4.0)  # z: the larger in-plane size, as on zarr
    assert tuple(vol.offset) == (0, 2, 10)
    np.testing.assert_array_equal(vol.read(), data[:, None])
    box = Box((0, 5, 13), (1, 9, 20))  # dataset coordinates (offset counted), across chunks
    np.testing.assert_array_equal(vol.read(box), data[:, None, 3:7, 3:10])
    new = np.stack([np.full((1, 4, 7), 100 + c, np.uint16) for c in range(3)])
    vol.write(new, box)
    # chunk presence: all written (a contiguous dataset is one chunk)
    assert vol.remote.absent_chunks(vol.meta.scale(0).bounds) == []
    vol.remote.close()

    expected = data.copy()
    expected[:, 3:7, 3:10] = new[:, 0]
    with h5py.File(path, "r") as f:
        assert f["raw"].shape == (3, *YX)  # still 3-D
        np.testing.assert_array_equal(f["raw"][...], expected)
    assert _attrs_of(path) == before  # reads and writes rewrote no attribute


def test_hdf5_one_channel_of_one_plane(tmp_path: Path) -> None:
    """A (1, y, x) dataset named c^, y, x reads and writes as a 3-D (1, y, x) volume."""
    path = tmp_path / "one.h5"
    data = _data((1, *YX))
    before = _h5(path, data, _funlib(["c^", "y", "x"], "um", (2, 1), (4, 3)))
    vol = _open(f"hdf5://{path}", mode="r+")  # the file's only volume
    assert vol.meta.num_channels == 1 and vol.shape == (1, *YX)
    assert vol.voxel_size.zyx() == (2000.0, 2000.0, 1000.0) and tuple(vol.offset) == (0, 2, 3)
    np.testing.assert_array_equal(vol.read(), data)
    vol.write(np.full((1, 2, 3), 9, np.uint16), Box((0, 2, 3), (1, 4, 6)))
    vol.remote.close()
    expected = data.copy()
    expected[0, :2, :3] = 9
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["raw"][...], expected)
    assert _attrs_of(path) == before


def test_hdf5_channels_absent_chunks(tmp_path: Path) -> None:
    """Chunk presence of a (c, y, x) dataset counts y, x chunks (the channel axis is no
    space axis): before, chunk coordinates took the channel axis as z."""
    path = tmp_path / "sparse.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("raw", shape=(2, *YX), dtype=np.uint8, chunks=(1, 6, 10))
        for k, v in _funlib(["c^", "y", "x"], offset=(0, 0)).items():
            ds.attrs[k] = v
        ds[:, :6, :10] = 1  # chunk (0, 0) of both channels
        ds[0, 6:, 10:] = 1  # chunk (1, 1) of channel 0 only
    vol = _open(f"hdf5://{path}#raw")
    assert vol.meta.scale(0).chunks == (1, 6, 10)
    absent = vol.remote.absent_chunks(vol.meta.scale(0).bounds)
    # (chunk (1, 1) holds channel 0's voxels: stored; absent only when every channel's chunk
    # is, since 2026-12, tests/remotes/test_absent_truth_audit.py)
    assert sorted(tuple(g) for g in absent) == [(0, 0, 1), (0, 1, 0)]


def test_hdf5_channel_last_refused_naming_c_y_x(tmp_path: Path) -> None:
    """A (y, x, c) dataset is still refused (HDF5 datasets are not transposed), the message
    naming the order voxgate reads, (c, y, x), not (z, y, x)."""
    path = tmp_path / "yxc.h5"
    _h5(path, _data((*YX, 3)), _funlib(["y", "x", "c^"]), None)
    with pytest.raises(InvalidRequestError, match=r"\['y', 'x', 'c'\]") as info:
        voxgate.open(f"hdf5://{path}#raw")
    assert "('c', 'y', 'x')" in str(info.value) and "'z'" not in str(info.value)


def test_hdf5_channels_in_a_multiscale_group_refused(tmp_path: Path) -> None:
    """A multiscale group of (c, y, x) datasets is not read (scales of one z plane are not
    added or read, as for 2-D datasets); the message says so rather than reading c as z."""
    path = tmp_path / "ms.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("vol/s0", data=_data((3, *YX)))
        for k, v in _funlib(["c^", "y", "x"]).items():
            ds.attrs[k] = v
    with pytest.raises(InvalidRequestError, match="not as a scale of a group"):
        voxgate.open(f"hdf5://{path}#vol")
