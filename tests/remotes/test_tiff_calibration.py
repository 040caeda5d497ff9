"""The voxel size of TIFFs in the places other readers look (resolution tags, ImageJ's
description, OME-XML), written by voxgate and read from files tifffile wrote."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

import voxgate
from voxgate.errors import VoxgateWarning
from voxgate.geometry import VoxelSize
from voxgate.remotes.tiff import opening

SHAPE = (3, 20, 30)
NM = (45.0, 9.0, 5.5)  # z, y, x: y and x differ, 5.5 nm is no whole number of pixels per cm


def _data(dtype: str) -> np.ndarray:
    return np.arange(np.prod(SHAPE)).reshape(SHAPE).astype(dtype)


def _tag_nm(page: Any) -> tuple[float, float]:
    """(y, x) nm from a page's resolution tags as a TIFF reader sees them: pixels per
    ResolutionUnit (3 cm), or per ImageJ's unit (µm here) when the unit tag says none."""
    unit = page.tags["ResolutionUnit"].value
    per = {3: 1e7, 1: 1e3}[unit]
    y, x = (Fraction(*page.tags[t].value) for t in ("YResolution", "XResolution"))
    return float(per / y), float(per / x)


@pytest.mark.parametrize("layout", ["file", "slices"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "uint32", "uint64",
                                   "int64"])
def test_created_tiffs_say_their_voxel_size_to_other_readers(
        tmp_path: Path, layout: str, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"tiff://{tmp_path}/vol" + (".tif" if layout == "file" else "")
    vol = voxgate.create(url, shape=SHAPE, chunks=(1, 16, 16), dtype=dtype,
                         voxel_size=VoxelSize(*NM), layout=layout)
    data = _data(dtype)
    vol[:] = data
    vol[1:2, 3:7, 2:9] = data[1:2, 3:7, 2:9] + 1  # a partial rewrite keeps the calibration
    data[1:2, 3:7, 2:9] += 1
    files = [tmp_path / "vol.tif"] if layout == "file" else sorted((tmp_path / "vol").iterdir())
    imagej = layout == "slices" and dtype in ("uint8", "uint16", "int16", "float32")
    ome = layout == "file" and dtype not in ("uint64", "int64")
    for f in files:
        with tifffile.TiffFile(f) as tf:
            page = tf.pages[0]
            assert (tf.is_imagej, tf.is_ome) == (imagej, ome)
            assert _tag_nm(page) == pytest.approx(NM[1:], rel=1e-9)
            if imagej:  # Fiji's own way: unit and z spacing in the description
                assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.NONE
                ij = tf.imagej_metadata
                assert ij is not None
                assert ij["unit"] == "micron"
                assert ij["spacing"] == pytest.approx(NM[0] / 1000)
            else:  # pixels per cm, which tifffile converts itself
                assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
                xres, yres = page.get_resolution(tifffile.RESUNIT.MICROMETER)
                assert (1000 / yres, 1000 / xres) == pytest.approx(NM[1:], rel=1e-9)
            if ome:
                assert tf.ome_metadata is not None
                assert 'PhysicalSizeX="5.5"' in tf.ome_metadata
                assert 'PhysicalSizeZ="45.0"' in tf.ome_metadata
            np.testing.assert_array_equal(tf.asarray(), data if layout == "file"
                                          else data[files.index(f)])
    assert voxgate.open(url).voxel_size.zyx() == NM  # voxgate's own tag: as created
    # what voxgate reads from the standard places alone (as from a file another tool wrote
    # with them): all three sizes, or x and y where nothing standard holds z
    monkeypatch.setattr(opening, "_own_tag", lambda page: {})
    again = voxgate.open(url)
    z = NM[0] if ome or imagej else 1.0
    assert again.voxel_size.zyx() == pytest.approx((z, *NM[1:]))
    np.testing.assert_array_equal(again.read(), data)


def test_created_sizes_in_other_units(tmp_path: Path) -> None:
    vol = voxgate.create(f"tiff://{tmp_path}/um", shape=SHAPE, chunks=(1, 16, 16),
                         dtype="uint8", voxel_size=VoxelSize(0.5, 0.25, 0.125, "µm"),
                         layout="slices")
    assert vol.voxel_size.unit == "µm"
    with tifffile.TiffFile(next((tmp_path / "um").iterdir())) as tf:
        assert _tag_nm(tf.pages[0]) == (250.0, 125.0)
        assert tf.imagej_metadata is not None
        assert tf.imagej_metadata["spacing"] == 0.5
    vol = voxgate.create(f"tiff://{tmp_path}/a.tif", shape=SHAPE, chunks=(1, 16, 16),
                         dtype="uint64", voxel_size=VoxelSize(40, 40, 40, "angstrom"))
    with tifffile.TiffFile(tmp_path / "a.tif") as tf:
        assert tf.pages[0].tags["XResolution"].value == (2_500_000, 1)  # 4 nm per pixel


@pytest.mark.parametrize("layout", ["file", "slices"])
def test_plain_tiff_resolution_in_centimetres(tmp_path: Path, layout: str) -> None:
    data = _data("uint16")
    kw: dict[str, Any] = {"resolution": (1e7 / 9, 1e7 / 5.5), "resolutionunit": "CENTIMETER",
                          "photometric": "minisblack"}
    if layout == "file":
        url = f"tiff://{tmp_path}/cm.tif"
        tifffile.imwrite(tmp_path / "cm.tif", data, **kw)
    else:
        url = f"tiff://{tmp_path}/cm"
        (tmp_path / "cm").mkdir()
        for z in range(SHAPE[0]):
            tifffile.imwrite(tmp_path / "cm" / f"s{z}.tif", data[z], **kw)
    vol = voxgate.open(url)
    assert vol.voxel_size.zyx() == pytest.approx((1.0, 5.5, 9.0))  # (x, y) tags: y 5.5, x 9
    np.testing.assert_array_equal(vol.read(), data)


def test_plain_tiff_resolution_in_inches(tmp_path: Path) -> None:
    data = _data("uint8")
    tifffile.imwrite(tmp_path / "in.tif", data, resolution=(25400, 12700),
                     resolutionunit="INCH", photometric="minisblack")  # 1 µm x 2 µm
    assert voxgate.open(f"tiff://{tmp_path}/in.tif").voxel_size.zyx() == (1.0, 2000.0, 1000.0)


@pytest.mark.parametrize("dpi", [72, 96, 300, 600])
def test_screen_dpi_is_no_voxel_size(tmp_path: Path, dpi: int) -> None:
    tifffile.imwrite(tmp_path / "scan.tif", _data("uint8"), resolution=(dpi, dpi),
                     resolutionunit="INCH", photometric="minisblack")
    with pytest.warns(VoxgateWarning, match=f"{dpi} x {dpi} dots per inch"):
        vol = voxgate.open(f"tiff://{tmp_path}/scan.tif")
    assert vol.voxel_size.zyx() == (1.0, 1.0, 1.0)
    given = voxgate.open(f"tiff://{tmp_path}/scan.tif", voxel_size=(30, 4, 4))  # no warning
    assert given.voxel_size.zyx() == (30.0, 4.0, 4.0)


def test_uncalibrated_plain_tiffs_stay_1_nm(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "none.tif", _data("uint8"), resolution=(250, 250),
                     resolutionunit="NONE", photometric="minisblack")
    tifffile.imwrite(tmp_path / "bare.tif", _data("uint8"), photometric="minisblack")
    tifffile.imwrite(tmp_path / "one.tif", _data("uint8"), resolution=(1, 1),
                     resolutionunit="CENTIMETER", photometric="minisblack")  # a placeholder
    for name in ("none", "bare", "one"):
        assert voxgate.open(f"tiff://{tmp_path}/{name}.tif").voxel_size.zyx() == (1, 1, 1)
