"""One rule for the z voxel size of a 2-D image, in every format.

A 2-D image opens as a volume of one z plane.  The same 8 x 4 nm (y, x) image opened with
different z voxel sizes depending on its format: (8, 8, 4) as N5 or 2-D OME-Zarr (z the larger
in-plane size), but (1, 8, 4) as HDF5 with ``resolution`` [8, 4] nm or as a funlib.persistence
array (z 1 of the unit), and (1000, 8, 4) as HDF5 with ``element_size_um`` [0.008, 0.004]
(1 um).  A 1-unit z made ``voxgate.downsample``'s default factors (toward isotropy) halve the
one plane and leave y alone.  Now every format gives z the larger in-plane voxel size (in nm)
and z offset 0.

Each file is written by another library (tensorstore for N5, ome-zarr-py for OME-Zarr, h5py
for HDF5, zarr-python as funlib.persistence's ``prepare_ds`` writes for funlib).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zarr

import voxgate
from voxgate.meta import next_scales

from .n5_files import n5_dataset

with warnings.catch_warnings():
    # ome_zarr.writer builds a default deprecated Scaler() at import time (ome-zarr 0.14+)
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

YX = (12, 20)
DATA = np.arange(int(np.prod(YX)), dtype=np.uint16).reshape(YX)
FUNLIB = {"axis_names": ["y", "x"], "types": ["space", "space"], "units": ["nm", "nm"],
          "voxel_size": [8, 4], "offset": [0, 0]}


def _n5(path: Path, attrs: dict[str, Any]) -> str:
    """A 2-D N5 dataset (x-first ``dimensions``) with ``attrs`` in its attributes.json."""
    return n5_dataset(path, DATA, attrs)[0]


def n5_resolution(tmp_path: Path) -> str:
    return _n5(tmp_path / "img.n5", {"resolution": [4, 8], "units": ["nm", "nm"]})  # x first


def n5_funlib(tmp_path: Path) -> str:
    return _n5(tmp_path / "funlib.n5", FUNLIB)


def ome_zarr(tmp_path: Path) -> str:
    path = tmp_path / "img.ome.zarr"
    fmt = FormatV04()
    root = zarr.group(store=parse_url(str(path), mode="w", fmt=fmt).store,
                      zarr_format=fmt.zarr_format, overwrite=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ome-zarr-py's own deprecation warnings
        write_image(DATA, root, axes="yx", fmt=fmt, scale_factors=(),
                    scale={"y": 8.0, "x": 4.0},
                    axes_units={"y": "nanometer", "x": "nanometer"})
    return str(path)


def _hdf5(path: Path, key: str, value: list[float], **extra: Any) -> str:
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("img", data=DATA, chunks=(6, 10))
        ds.attrs[key] = value
        for k, v in extra.items():
            ds.attrs[k] = v
    return f"hdf5://{path}#/img"


def hdf5_resolution(tmp_path: Path) -> str:
    return _hdf5(tmp_path / "res.h5", "resolution", [8, 4], unit="nm")


def hdf5_element_size_um(tmp_path: Path) -> str:
    return _hdf5(tmp_path / "fiji.h5", "element_size_um", [0.008, 0.004])


def hdf5_funlib(tmp_path: Path) -> str:
    return _hdf5(tmp_path / "funlib.h5", "voxel_size", [8, 4], units=["nm", "nm"],
                 axis_names=["y", "x"])


def funlib_zarr(tmp_path: Path) -> str:
    path = tmp_path / "funlib.zarr"
    z = zarr.create_array(str(path), shape=YX, chunks=(6, 10), dtype=DATA.dtype, zarr_format=2)
    z[...] = DATA
    z.attrs.put(FUNLIB)
    return f"zarr://{path}"


WRITERS: list[Callable[[Path], str]] = [
    n5_resolution, ome_zarr, hdf5_resolution, hdf5_element_size_um, hdf5_funlib, funlib_zarr,
    n5_funlib]


def _open(url: str, mode: str = "r") -> voxgate.Volume:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each is read as its attributes say: no warning
        return voxgate.open(url, mode=mode)


@pytest.mark.parametrize("write", WRITERS, ids=[w.__name__ for w in WRITERS])
def test_every_format_gives_a_2d_image_the_same_voxel_size(tmp_path: Path,
                                                           write: Callable[[Path], str]) -> None:
    # was (1, 8, 4) for HDF5 resolution and funlib arrays, (1000, 8, 4) for element_size_um
    vol = _open(write(tmp_path))
    assert vol.shape == (1, *YX)
    assert vol.voxel_size.zyx() == pytest.approx((8.0, 8.0, 4.0))
    assert tuple(vol.offset) == (0, 0, 0)
    np.testing.assert_array_equal(vol.read(), DATA[None])


@pytest.mark.parametrize("write", [hdf5_resolution, hdf5_element_size_um],
                         ids=["resolution", "element_size_um"])
def test_default_downsampling_of_a_2d_hdf5_image_is_the_ome_zarr_one(
        tmp_path: Path, write: Callable[[Path], str]) -> None:
    url = ome_zarr(tmp_path)
    voxgate.downsample(_open(url, mode="r+"), 3)
    done = [(tuple(s.shape), s.voxel_size.zyx()) for s in _open(url).meta.scales[1:]]
    # toward isotropy: x first, then y and x together; the one plane is never halved alone
    assert done == [((1, 12, 10), (8.0, 8.0, 8.0)), ((1, 6, 5), (16.0, 16.0, 16.0))]

    # voxgate adds no scales to a 2-D HDF5 dataset: the scales voxgate.downsample's default
    # factors would make (next_scales) are compared (was: (2, 1, 2), (2, 1, 1), ... halving
    # the 1 nm / 1 um plane and x, y left alone)
    flat = _open(write(tmp_path))
    plan = next_scales(flat.meta, 2)
    assert [tuple(s.shape) for s in plan] == [shape for shape, _ in done]
    for s, (_, vs) in zip(plan, done, strict=True):
        assert s.voxel_size.zyx() == pytest.approx(vs)


def test_a_2d_funlib_array_in_two_units_takes_the_larger_size_in_nm(tmp_path: Path) -> None:
    # y in um, x in nm: the larger in-plane size is compared in nm (8 nm), not in the
    # attribute's numbers (4 > 0.008); before, z was 1 um (y's unit)
    path = tmp_path / "mixed.zarr"
    z = zarr.create_array(str(path), shape=YX, chunks=(6, 10), dtype=DATA.dtype, zarr_format=2)
    z[...] = DATA
    z.attrs.put({**FUNLIB, "units": ["um", "nm"], "voxel_size": [0.008, 4]})
    vol = _open(f"zarr://{path}")
    assert vol.voxel_size.zyx() == pytest.approx((8.0, 8.0, 4.0))
