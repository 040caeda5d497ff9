from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from hypothesis import settings

import voxgate
from voxgate.cli import main
from voxgate.errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    RemoteNotFoundError,
)
from voxgate.registry import detect_format
from voxgate.testing import RemoteTests, remote_state_machine

from .scratch import scratch_dir


class TestTiffFile(RemoteTests):
    """One tiled BigTIFF, uncompressed: tiles rewritten in place."""

    dtypes = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
              "float32", "float64")
    multiscale = False

    def url(self, tmp_path: Path, name: str) -> str:
        return f"tiff://{tmp_path}/{name}.tif"

    def corrupt_chunk(self, vol: voxgate.Volume, tmp_path: Path) -> str:
        path = tmp_path / "vol.tif"
        with tifffile.TiffFile(path) as tf:  # page 0's first tile now points past the end
            at = tf.pages[0].tags["TileOffsets"].valueoffset
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(np.array([size + 4096], "<u8").tobytes())
        return str(path)


class TestTiffFileZlib(TestTiffFile):
    """Compressed tiles: a rewritten tile is appended and its offset entry updated."""

    create_options: ClassVar[dict[str, Any]] = {"compression": "zlib"}

    def corrupt_chunk(self, vol: voxgate.Volume, tmp_path: Path) -> str:
        path = tmp_path / "vol.tif"
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            off, n = page.dataoffsets[0], page.databytecounts[0]
        with open(path, "r+b") as f:
            f.seek(off)
            f.write(b"\xff" * n)
        return str(path)


class TestTiffSlices(TestTiffFile):
    """A directory of 2-D slices, each rewritten whole."""

    def url(self, tmp_path: Path, name: str) -> str:
        return f"tiff://{tmp_path}/{name}"

    def corrupt_chunk(self, vol: voxgate.Volume, tmp_path: Path) -> str:
        path = tmp_path / "vol" / "00003.tif"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return str(path)


class TestTiffSlicesZlib(TestTiffSlices):
    create_options: ClassVar[dict[str, Any]] = {"compression": "zlib"}


TestTiffStateMachine = remote_state_machine(
    lambda name: f"tiff://{scratch_dir()}/{name}.tif", compression="zlib").TestCase
TestTiffStateMachine.settings = settings(max_examples=10, stateful_step_count=10, deadline=None)


# -- files written by tifffile itself ------------------------------------------------------------
def _stack(shape: tuple[int, ...], dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, shape).astype(dtype)


def test_ome_tiff_physical_sizes_become_voxel_size(tmp_path: Path) -> None:
    data = _stack((6, 70, 90))
    path = tmp_path / "em.ome.tif"
    tifffile.imwrite(
        path, data, ome=True, bigtiff=True, tile=(32, 32), compression="zlib",
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.004, "PhysicalSizeXUnit": "µm",
                  "PhysicalSizeY": 0.004, "PhysicalSizeYUnit": "µm",
                  "PhysicalSizeZ": 30, "PhysicalSizeZUnit": "nm"},
    )
    vol = voxgate.open(str(path))  # bare path: detected by the suffix
    assert vol.url.startswith("tiff://")
    assert vol.voxel_size.zyx() == (30.0, 4.0, 4.0)
    assert tuple(vol.chunks) == (6, 70, 90)  # whole tiles (8 x 8 of them), clipped to the image
    assert tuple(vol.remote.write_grid()) == (1, 32, 32)
    np.testing.assert_array_equal(vol.read(), data)
    np.testing.assert_array_equal(vol[2:5, 10:61, 33:88].read(), data[2:5, 10:61, 33:88])


def test_voxgate_file_is_ome_tiff_that_tifffile_reads(tmp_path: Path) -> None:
    vol = voxgate.create(f"tiff://{tmp_path}/out.tif", shape=(4, 50, 70), chunks=(1, 32, 32),
                         dtype="uint16", voxel_size=(40, 4, 4), compression="zlib",
                         kind="segmentation", offset=(2, 3, 4))
    data = _stack((4, 50, 70), seed=3)
    vol[:] = data
    vol[1:3, 5:9, 60:70] = 7  # a second write of some tiles: appended, offsets updated
    data[1:3, 5:9, 60:70] = 7
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        assert tf.is_bigtiff and tf.is_ome
        page = tf.pages[0]
        assert page.is_tiled and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        np.testing.assert_array_equal(tf.asarray(), data)
        assert 'PhysicalSizeZ="40.0"' in tf.ome_metadata
        assert 'PhysicalSizeX="4.0"' in tf.ome_metadata
    again = voxgate.open(f"tiff://{tmp_path}/out.tif")
    assert again.kind == "segmentation" and tuple(again.offset) == (2, 3, 4)


def test_imagej_hyperstack_spacing_and_channels(tmp_path: Path) -> None:
    data = _stack((5, 2, 30, 40), "uint8")  # Z, C, Y, X
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.01, 1 / 0.01),
                     metadata={"axes": "ZCYX", "spacing": 0.05, "unit": "um"})
    vol = voxgate.open(f"tiff://{path}")
    assert vol.meta.num_channels == 2
    assert vol.voxel_size.zyx() == pytest.approx((50.0, 10.0, 10.0))
    np.testing.assert_array_equal(vol.read(), np.moveaxis(data, 1, 0))
    np.testing.assert_array_equal(vol[:, 1:4, 3:20, 5:6].read(),
                                  np.moveaxis(data, 1, 0)[:, 1:4, 3:20, 5:6])


def test_rgb_samples_are_channels(tmp_path: Path) -> None:
    data = _stack((3, 20, 30, 3), "uint8")
    tifffile.imwrite(tmp_path / "rgb.tif", data, photometric="rgb")
    vol = voxgate.open(f"tiff://{tmp_path}/rgb.tif")
    assert vol.meta.num_channels == 3
    np.testing.assert_array_equal(vol.read(), np.moveaxis(data, -1, 0))


def test_slice_directory_natural_order(tmp_path: Path) -> None:
    d = tmp_path / "slices"
    d.mkdir()
    data = _stack((12, 25, 33))
    for z in range(12):  # slice2 must come before slice10 (a plain sort puts it after)
        tifffile.imwrite(d / f"slice{z}.tif", data[z])
    (d / "notes.txt").write_text("not a slice")
    vol = voxgate.open(f"tiff://{d}")
    assert vol.shape == (12, 25, 33)
    np.testing.assert_array_equal(vol.read(), data)
    np.testing.assert_array_equal(vol[9:12, 4:5].read(), data[9:12, 4:5])


def test_reads_touch_only_the_tiles_of_the_box(tmp_path: Path) -> None:
    """Every tile but the ones the box needs is destroyed: the box still reads."""
    data = _stack((4, 64, 64))
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, data, tile=(16, 16), compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(path) as tf:
        segs = [(p.dataoffsets, p.databytecounts) for p in tf.pages]
    keep = {(1, 1 * 4 + 2), (2, 1 * 4 + 2)}  # pages 1-2, tile row 1, tile column 2
    with open(path, "r+b") as f:
        for z, (offs, counts) in enumerate(segs):
            for i, (o, n) in enumerate(zip(offs, counts, strict=True)):
                if (z, i) not in keep:
                    f.seek(o)
                    f.write(b"\xff" * n)
    vol = voxgate.open(f"tiff://{path}")
    np.testing.assert_array_equal(vol[1:3, 17:30, 33:47].read(), data[1:3, 17:30, 33:47])
    with pytest.raises(CorruptChunkError, match="segment 0 of page 0"):
        vol[0:1, 0:2, 0:2].read()


def test_uncompressed_strips_read_only_needed_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A contiguous page (one strip) is read by its rows: the bytes asked are the box's rows."""
    data = _stack((3, 100, 40), "uint8")
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, data, rowsperstrip=100, photometric="minisblack")
    vol = voxgate.open(f"tiff://{path}")
    asked: list[int] = []
    real = os.pread

    def counting(fd: int, n: int, at: int) -> bytes:
        asked.append(n)
        return real(fd, n, at)

    monkeypatch.setattr(os, "pread", counting)
    np.testing.assert_array_equal(vol[2:3, 10:50, 5:9].read(), data[2:3, 10:50, 5:9])
    assert asked == [40 * 40]  # rows 10-49 of page 2, nothing else


# -- bad input --------------------------------------------------------------------------------
def test_inconsistent_page_shapes_refused(tmp_path: Path) -> None:
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.zeros((20, 30), "uint8"))
        tw.write(np.zeros((20, 30), "uint8"))
        tw.write(np.zeros((21, 30), "uint8"))
    with pytest.raises(InvalidRequestError, match="different shapes"):
        voxgate.open(f"tiff://{path}")


def test_inconsistent_slice_shapes_refused(tmp_path: Path) -> None:
    d = tmp_path / "slices"
    d.mkdir()
    tifffile.imwrite(d / "a1.tif", np.zeros((10, 10), "uint8"))
    tifffile.imwrite(d / "a2.tif", np.zeros((10, 11), "uint8"))
    with pytest.raises(InvalidRequestError, match=r"slice a2.tif .* shape \(10, 11\)"):
        voxgate.open(f"tiff://{d}")


def test_not_a_tiff_and_missing(tmp_path: Path) -> None:
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(CorruptChunkError, match="not a readable TIFF"):
        voxgate.open(f"tiff://{tmp_path}/junk.tif")
    with pytest.raises(RemoteNotFoundError):
        voxgate.open(f"tiff://{tmp_path}/nothing.tif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RemoteNotFoundError, match=r"without \.tif"):
        voxgate.open(f"tiff://{tmp_path}/empty")
    with pytest.raises(InvalidRequestError, match="compression must be"):
        voxgate.create(f"tiff://{tmp_path}/c.tif", shape=(2, 2, 2), chunks=(1, 2, 2),
                       dtype="uint8", voxel_size=(1, 1, 1), compression="snappy9")


def test_open_options_voxel_size_and_kind(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "p.tif", np.zeros((3, 8, 8), "uint32"), photometric="minisblack")
    vol = voxgate.open(f"tiff://{tmp_path}/p.tif")
    assert vol.kind == "segmentation" and vol.voxel_size.zyx() == (1.0, 1.0, 1.0)
    vol = voxgate.open(f"tiff://{tmp_path}/p.tif", voxel_size=(30, 4, 4), kind="image")
    assert vol.kind == "image" and vol.voxel_size.zyx() == (30.0, 4.0, 4.0)


# -- the everyday path: copy into the chunked world, info ------------------------------------
def test_copy_tiff_stack_to_zarr_and_back(tmp_path: Path) -> None:
    data = _stack((10, 80, 96))
    tifffile.imwrite(tmp_path / "stack.tif", data, bigtiff=True,
                     metadata={"axes": "ZYX"}, ome=True)
    report = voxgate.copy(f"tiff://{tmp_path}/stack.tif", f"zarr://{tmp_path}/s.zarr")
    assert report.chunks_written > 0
    np.testing.assert_array_equal(voxgate.open(f"zarr://{tmp_path}/s.zarr").read(), data)
    voxgate.copy(f"zarr://{tmp_path}/s.zarr", f"tiff://{tmp_path}/back",
                 compression="zlib")
    back = np.stack([tifffile.imread(tmp_path / "back" / f"{z:05d}.tif") for z in range(10)])
    np.testing.assert_array_equal(back, data)


def test_multiscale_source_copies_one_scale(tmp_path: Path) -> None:
    src = voxgate.create(f"zarr://{tmp_path}/ms.zarr", shape=(4, 40, 40), chunks=(4, 16, 16),
                         dtype="uint8", voxel_size=(8, 8, 8), num_scales=2)
    src[:] = 5
    with pytest.raises(CapabilityNotSupportedError, match="--scales 0"):
        voxgate.copy(src, f"tiff://{tmp_path}/ms.tif", progress=False)
    voxgate.copy(src, f"tiff://{tmp_path}/ms.tif", scales=[0], progress=False)
    assert (tifffile.imread(tmp_path / "ms.tif") == 5).all()


def test_cli_info_and_cp(tmp_path: Path) -> None:
    data = _stack((4, 30, 40))
    tifffile.imwrite(tmp_path / "st.tif", data, photometric="minisblack")
    res = CliRunner().invoke(main, ["info", "--json", str(tmp_path / "st.tif")])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["url"].startswith("tiff://") and info["scales"][0]["shape_zyx"] == [4, 30, 40]
    res = CliRunner().invoke(main, ["cp", f"tiff://{tmp_path}/st.tif",
                                    f"zarr://{tmp_path}/st.zarr"])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(voxgate.open(f"zarr://{tmp_path}/st.zarr").read(), data)


def test_detect_and_create_by_suffix(tmp_path: Path) -> None:
    assert detect_format(str(tmp_path / "x.tiff")) == "tiff"
    vol = voxgate.create(str(tmp_path / "made.tif"), shape=(2, 20, 20), chunks=(1, 16, 16),
                         dtype="uint8", voxel_size=(1, 1, 1))
    assert vol.url == f"tiff://{tmp_path}/made.tif"


def test_ome_pyramid_levels_are_scales(tmp_path: Path) -> None:
    data = _stack((4, 64, 96), "uint8")
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(data, subifds=2, tile=(32, 32), compression="zlib",
                 metadata={"axes": "ZYX", "PhysicalSizeX": 0.01, "PhysicalSizeY": 0.01,
                           "PhysicalSizeZ": 0.05})
        tw.write(data[:, ::2, ::2], subfiletype=1, tile=(32, 32), compression="zlib")
        tw.write(data[:, ::4, ::4], subfiletype=1, tile=(32, 32), compression="zlib")
    vol = voxgate.open(f"tiff://{path}")
    assert [tuple(s.shape) for s in vol.scales] == [(4, 64, 96), (4, 32, 48), (4, 16, 24)]
    assert [s.voxel_size.zyx() for s in vol.scales] == [(50.0, 10.0, 10.0), (50.0, 20.0, 20.0),
                                                        (50.0, 40.0, 40.0)]
    np.testing.assert_array_equal(vol.read(), data)
    np.testing.assert_array_equal(vol.at_scale(1)[1:3, 5:20, 7:40].read(),
                                  data[1:3, ::2, ::2][:, 5:20, 7:40])
    np.testing.assert_array_equal(vol.at_scale(2).read(), data[:, ::4, ::4])
    import pickle

    clone = pickle.loads(pickle.dumps(vol.at_scale(2)))  # decoders rebuilt after unpickling
    np.testing.assert_array_equal(clone.read(), data[:, ::4, ::4])
