"""Seam audit of ``tiff://`` against tifffile: voxel sizes in every length unit, TIFFs whose
structure is damaged (truncated stacks, corrupt tags), and a rewrite that cannot fit the file.
Each test failed before its fix, with silently wrong data or metadata, or a bare exception."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

import voxgate
from voxgate.errors import CapabilityNotSupportedError, CorruptChunkError
from voxgate.geometry import VoxelSize

SHAPE = (7, 13, 29)


def _stack(dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 250, SHAPE).astype(dtype)


@pytest.mark.parametrize(("unit", "sizes", "nm"), [
    ("Å", (400, 40, 40), (40.0, 4.0, 4.0)),  # was read as µm: 40 Å voxels became 40 µm
    ("cm", (4e-6, 4e-7, 4e-7), (40.0, 4.0, 4.0)),
    ("µm", (0.04, 0.004, 0.004), (40.0, 4.0, 4.0)),
])
def test_ome_physical_sizes_in_any_length_unit(tmp_path: Path, unit: str,
                                               sizes: tuple[float, float, float],
                                               nm: tuple[float, float, float]) -> None:
    data = _stack()
    path = tmp_path / "u.ome.tif"
    z, y, x = sizes
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": z, "PhysicalSizeZUnit": unit, "PhysicalSizeY": y,
        "PhysicalSizeYUnit": unit, "PhysicalSizeX": x, "PhysicalSizeXUnit": unit})
    vol = voxgate.open(f"tiff://{path}")
    assert vol.voxel_size.unit == "nm"
    assert vol.voxel_size.zyx() == pytest.approx(nm)
    np.testing.assert_array_equal(vol.read(), tifffile.imread(path))


def test_ome_size_in_an_unknown_unit_is_no_size(tmp_path: Path) -> None:
    path = tmp_path / "px.ome.tif"
    tifffile.imwrite(path, _stack(), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 3, "PhysicalSizeXUnit": "pixel",
        "PhysicalSizeY": 3, "PhysicalSizeYUnit": "pixel"})
    assert voxgate.open(f"tiff://{path}").voxel_size.zyx() == (1.0, 1.0, 1.0)  # not 3 µm


def test_imagej_units_and_uncalibrated_stacks(tmp_path: Path) -> None:
    data = _stack()
    cm = tmp_path / "cm.tif"  # ImageJ's "cm" was read as µm (10^4 times too small)
    tifffile.imwrite(cm, data, imagej=True, resolution=(1 / 4e-7, 1 / 8e-7),
                     metadata={"axes": "ZYX", "spacing": 4e-6, "unit": "cm"})
    vol = voxgate.open(f"tiff://{cm}")
    assert vol.voxel_size.zyx() == pytest.approx((40.0, 8.0, 4.0))
    np.testing.assert_array_equal(vol.read(), tifffile.imread(cm))
    plain = tmp_path / "plain.tif"  # no unit: ImageJ's uncalibrated pixels, as a plain TIFF
    tifffile.imwrite(plain, data, imagej=True, metadata={"axes": "ZYX", "spacing": 3})
    assert voxgate.open(f"tiff://{plain}").voxel_size.zyx() == (3.0, 1.0, 1.0)  # not µm


@pytest.mark.parametrize(("unit", "ome_unit", "ome_x"), [
    ("nanometer", "nm", 4.0),  # written as "nanometer": not an OME UnitsLength
    ("angstrom", "Å", 4.0),
    ("micrometer", "µm", 4.0),
    ("inch", "nm", 4 * 2.54e7),  # no OME symbol voxgate writes: converted to nm
])
def test_created_ome_units_are_ome_units(tmp_path: Path, unit: str, ome_unit: str,
                                         ome_x: float) -> None:
    path = tmp_path / "vg.tif"
    vol = voxgate.create(f"tiff://{path}", shape=SHAPE, chunks=(1, 16, 16), dtype="uint8",
                         voxel_size=VoxelSize(40, 8, 4, unit))
    data = _stack("uint8", 1)
    vol[:] = data
    with tifffile.TiffFile(path) as tf:
        np.testing.assert_array_equal(tf.asarray(), data)
        pixels = re.search(r"<Pixels [^>]*>", tf.ome_metadata)
        assert pixels is not None
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0)))
    assert {attrs[f"PhysicalSize{a}Unit"] for a in "XYZ"} == {ome_unit}
    assert float(attrs["PhysicalSizeX"]) == pytest.approx(ome_x)
    again = voxgate.open(f"tiff://{path}")
    assert again.voxel_size == VoxelSize(40, 8, 4, unit)


def test_truncated_stack_is_refused_not_opened_as_its_first_slices(tmp_path: Path) -> None:
    data = _stack()
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, photometric="minisblack", tile=(16, 16), compression="zlib")
    with tifffile.TiffFile(path) as tf:
        cut = tf.pages[1].offset + 4  # page 0 whole, the IFD chain broken after it
    whole = path.read_bytes()
    path.write_bytes(whole[:cut])
    assert tifffile.imread(path).shape == SHAPE[1:]  # tifffile reads on: one slice
    with pytest.raises(CorruptChunkError, match="damaged"):  # was a (1, 13, 29) volume
        voxgate.open(f"tiff://{path}")
    sliced = tmp_path / "slices"  # the same damage to a slice of a directory
    sliced.mkdir()
    for z in range(3):
        tifffile.imwrite(sliced / f"s{z}.tif", data[:2] if z == 1 else data[z],
                         photometric="minisblack")
    two = (sliced / "s1.tif").read_bytes()
    with tifffile.TiffFile(sliced / "s1.tif") as tf:
        (sliced / "s1.tif").write_bytes(two[:tf.pages[1].offset + 4])
    with pytest.raises(CorruptChunkError, match="damaged"):
        voxgate.open(f"tiff://{sliced}")


@pytest.mark.parametrize("cut", [0, 4, 7])
def test_stub_files_raise_corrupt_chunk(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "stub.tif"
    tifffile.imwrite(path, _stack(), photometric="minisblack")
    path.write_bytes(path.read_bytes()[:cut])  # cut=4 raised struct.error before
    with pytest.raises(CorruptChunkError, match="not a readable TIFF"):
        voxgate.open(f"tiff://{path}")


def _patch(path: Path, at: int, value: np.ndarray) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(value.tobytes())


def test_corrupt_compression_tag_is_refused_not_read_as_raw(tmp_path: Path) -> None:
    # page 1 lost its Compression tag's value (now "none"): its zlib tiles were read as raw
    # voxels; tifffile refuses the page
    data = _stack()
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, data, photometric="minisblack", tile=(16, 16), compression="zlib")
    with tifffile.TiffFile(path) as tf:  # (a shaped series: tifffile decodes by page 0)
        tag = tf.pages[1].tags["Compression"]
        at, order = tag.valueoffset, tf.byteorder
    _patch(path, at, np.array([1], order + "u2"))
    with tifffile.TiffFile(path) as tf, pytest.raises(tifffile.TiffFileError):
        tf.pages[1].aspage().asarray()
    with pytest.raises(CorruptChunkError, match="segment"):
        voxgate.open(f"tiff://{path}").read()


def test_short_strip_byte_count_is_refused(tmp_path: Path) -> None:
    data = _stack()
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, data[0], photometric="minisblack", rowsperstrip=4)
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags["StripByteCounts"]
        at, fmt = tag.valueoffset, tf.byteorder + {3: "u2", 4: "u4"}[int(tag.dtype)]
    _patch(path, at, np.array([10], fmt))  # strip 0 says 10 bytes, its 4 rows need 232
    with pytest.raises(CorruptChunkError, match="segment 0"):
        voxgate.open(f"tiff://{path}")


def test_corrupt_tile_length_is_refused(tmp_path: Path) -> None:
    # TileLength 16 -> 24 on uncompressed tiles of 512 bytes: the voxels were read with the
    # wrong row count per tile (other rows' bytes); tifffile refuses to reshape the tile
    data = _stack()
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, data[0], photometric="minisblack", tile=(16, 16))
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags["TileLength"]
        at, fmt = tag.valueoffset, tf.byteorder + {3: "u2", 4: "u4"}[int(tag.dtype)]
    _patch(path, at, np.array([24], fmt))
    with pytest.raises(tifffile.TiffFileError):
        tifffile.imread(path)
    with pytest.raises(CorruptChunkError, match="needs 768"):
        voxgate.open(f"tiff://{path}")


def test_rewrite_past_classic_tiff_offsets_changes_nothing(tmp_path: Path) -> None:
    # a compressed tile is rewritten at the end of the file; in a classic TIFF over 4 GiB the
    # new offset does not fit: the byte count entry was updated before OverflowError, leaving
    # the old tile under a wrong byte count
    data = _stack()
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, data, photometric="minisblack", tile=(16, 16), compression="zlib")
    with open(path, "r+b") as f:
        f.truncate((1 << 32) + 100)  # sparse: nothing is stored
    with tifffile.TiffFile(path) as tf:
        counts = [p.databytecounts for p in tf.pages]
    vol = voxgate.open(f"tiff://{path}", mode="r+")
    with pytest.raises(CapabilityNotSupportedError, match="nothing was written"):
        vol[2, 0:3, 0:5] = np.full((3, 5), 999, "uint16")
    assert path.stat().st_size == (1 << 32) + 100
    with tifffile.TiffFile(path) as tf:
        assert [p.databytecounts for p in tf.pages] == counts
        np.testing.assert_array_equal(tf.asarray(), data)
    np.testing.assert_array_equal(voxgate.open(f"tiff://{path}").read(), data)
