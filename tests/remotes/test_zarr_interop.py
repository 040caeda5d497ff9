"""zarr-python and tensorstore as oracles for what voxgate writes and reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr

import voxgate
from voxgate.geometry import Box


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_python_reads_voxgate(tmp_path: Path, fmt: int) -> None:
    url = f"zarr://{tmp_path}/em.zarr"
    vol = voxgate.create(url, shape=(30, 50, 70), chunks=(8, 16, 16), dtype="uint16",
                         voxel_size=(40, 8, 8), num_scales=2, zarr_format=fmt, offset=(2, 4, 6))
    data = np.random.default_rng(1).integers(0, 60000, (30, 50, 70), dtype=np.uint16)
    vol[:] = data
    vol.at_scale(1)[:] = data[:, ::2, ::2]
    group = zarr.open_group(str(tmp_path / "em.zarr"), mode="r")
    np.testing.assert_array_equal(group["0"][:], data)
    np.testing.assert_array_equal(group["1"][:], data[:, ::2, ::2])
    attrs = dict(group.attrs)
    ms = (attrs["ome"] if fmt == 3 else attrs)["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [40, 8, 8]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [40, 16, 16]
    assert ms["datasets"][0]["coordinateTransformations"][1]["translation"] == [80, 32, 48]
    if fmt == 3:
        assert attrs["ome"]["version"] == "0.5"
    else:
        assert ms["version"] == "0.4"


@pytest.mark.parametrize("fmt", [2, 3])
def test_voxgate_reads_zarr_python(tmp_path: Path, fmt: int) -> None:
    data = np.random.default_rng(2).integers(0, 2**40, (20, 30, 40), dtype=np.uint64)
    z = zarr.create_array(str(tmp_path / "seg.zarr"), shape=data.shape, chunks=(8, 8, 8),
                          dtype="uint64", zarr_format=fmt)
    z[:] = data
    vol = voxgate.open(tmp_path / "seg.zarr")
    assert vol.shape == data.shape and vol.dtype == np.uint64
    assert vol.kind == "segmentation"  # guessed from a 64-bit integer dtype
    np.testing.assert_array_equal(vol[3:17, 5:29, 1:39].read(), data[3:17, 5:29, 1:39])
    with pytest.raises(voxgate.errors.ReadOnlyError):
        vol[0, 0, 0] = 1
    rw = voxgate.open(tmp_path / "seg.zarr", mode="r+")
    rw[0, 0, 0:3] = np.array([1, 2, 3], dtype=np.uint64)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "seg.zarr"))[0, 0, 0:3], [1, 2, 3])


def test_ome_zarr_04_group_in_micrometres_with_channels(tmp_path: Path) -> None:
    """An NGFF 0.4 group as other tools write it: czyx axes, micrometre units, 2 scales."""
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=2)
    data0 = np.random.default_rng(3).integers(0, 255, (2, 8, 16, 16), dtype=np.uint8)
    data1 = data0[:, :, ::2, ::2]
    root.create_array("s0", shape=data0.shape, chunks=(1, 4, 8, 8), dtype="uint8")[:] = data0
    root.create_array("s1", shape=data1.shape, chunks=(1, 4, 8, 8), dtype="uint8")[:] = data1
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "z", "type": "space", "unit": "micrometer"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {"path": "s0", "coordinateTransformations": [
                    {"type": "scale", "scale": [1, 0.04, 0.008, 0.008]}]},
                {"path": "s1", "coordinateTransformations": [
                    {"type": "scale", "scale": [1, 0.04, 0.016, 0.016]},
                    {"type": "translation", "translation": [0, 0, 0.004, 0.004]}]},
            ],
        }
    ]
    vol = voxgate.open(tmp_path / "img.ome.zarr")
    assert vol.shape == (2, 8, 16, 16)
    assert vol.meta.num_channels == 2
    assert vol.voxel_size.zyx() == pytest.approx((40.0, 8.0, 8.0))
    assert vol.at_scale(1).voxel_size.zyx() == pytest.approx((40.0, 16.0, 16.0))
    assert vol.at_scale(1).shape == (2, 8, 8, 8)
    np.testing.assert_array_equal(vol[1, 2:5].read(), data0[1, 2:5])
    np.testing.assert_array_equal(vol.at_scale(1).read(), data1)


def test_ome_zarr_05_xyz_axis_order_is_reordered(tmp_path: Path) -> None:
    """Axes stored (x, y, z) still read as (z, y, x)."""
    data_xyz = np.random.default_rng(4).integers(0, 255, (12, 10, 6), dtype=np.uint8)
    root = zarr.open_group(str(tmp_path / "xyz.zarr"), mode="w", zarr_format=3)
    arr = root.create_array("0", shape=data_xyz.shape, chunks=(4, 4, 4), dtype="uint8",
                            dimension_names=["x", "y", "z"])
    arr[:] = data_xyz
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": n, "type": "space", "unit": "nanometer"} for n in "xyz"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [4, 5, 30]}]}]}]}
    vol = voxgate.open(f"zarr://{tmp_path}/xyz.zarr")
    assert vol.shape == (6, 10, 12)
    assert vol.voxel_size.zyx() == (30.0, 5.0, 4.0)
    np.testing.assert_array_equal(vol.read(), data_xyz.transpose(2, 1, 0))
    np.testing.assert_array_equal(vol[1:3, 2:9, 5].read(), data_xyz[5, 2:9, 1:3].T)


def test_tensorstore_reads_voxgate_sharded(tmp_path: Path) -> None:
    vol = voxgate.create(f"zarr://{tmp_path}/s.zarr", shape=(32, 64, 64), chunks=(8, 16, 16),
                         dtype="uint8", voxel_size=(1, 1, 1), shards=(16, 32, 32))
    data = np.random.default_rng(5).integers(0, 255, (32, 64, 64), dtype=np.uint8)
    vol.write(data[1:31, 3:60, 5:64], Box((1, 3, 5), (31, 60, 64)))
    expected = np.zeros_like(data)
    expected[1:31, 3:60, 5:64] = data[1:31, 3:60, 5:64]
    kv = {"driver": "file", "path": str(tmp_path / "s.zarr" / "0")}
    store = ts.open({"driver": "zarr3", "kvstore": kv}).result()
    np.testing.assert_array_equal(store.read().result(), expected)
    meta = json.loads((tmp_path / "s.zarr" / "0" / "zarr.json").read_text())
    assert meta["codecs"][0]["name"] == "sharding_indexed"
    assert tuple(vol.remote.write_grid(0)) == (16, 32, 32)
    np.testing.assert_array_equal(
        zarr.open_array(str(tmp_path / "s.zarr" / "0"), mode="r")[:], expected
    )


def test_zarr_plain_array_with_voxgate_attrs(tmp_path: Path) -> None:
    z = zarr.create_array(str(tmp_path / "p.zarr"), shape=(4, 6, 8), chunks=(2, 3, 4),
                          dtype="uint8", zarr_format=3)
    z.attrs["voxgate"] = {"voxel_size": [30, 4, 4], "offset": [10, 20, 30], "kind": "image"}
    z[:] = 1
    vol = voxgate.open(tmp_path / "p.zarr")
    assert vol.voxel_size.zyx() == (30.0, 4.0, 4.0)
    assert tuple(vol.offset) == (10, 20, 30)
    assert vol.read(Box((10, 20, 30), (12, 22, 32))).sum() == 8


@pytest.mark.parametrize(
    ("options", "expected"),
    [({}, "blosc-zstd"), ({"zarr_format": 2, "compression": "blosc-lz4"}, "blosc-lz4"),
     ({"compression": "gzip", "shards": (4, 4, 4)}, "gzip"), ({"compression": "none"}, "none")],
)
def test_encoding_is_reported(tmp_path: Path, options: dict, expected: str) -> None:
    vol = voxgate.create(f"zarr://{tmp_path}/e.zarr", shape=(4, 4, 4), chunks=(2, 2, 2),
                         dtype="uint8", voxel_size=(1, 1, 1), **options)
    assert vol.scale_meta.encoding == expected
    assert voxgate.open(tmp_path / "e.zarr").scale_meta.encoding == expected
