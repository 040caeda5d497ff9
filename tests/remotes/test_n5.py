from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import tensorstore as ts
from hypothesis import settings

import voxgate
from voxgate.errors import InvalidRequestError, RemoteNotFoundError
from voxgate.testing import RemoteTests, remote_state_machine

from .scratch import scratch_dir


class TestN5(RemoteTests):
    dtypes = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
              "float32", "float64")

    def url(self, tmp_path: Path, name: str) -> str:
        return f"n5://{tmp_path}/{name}.n5"

    def corrupt_chunk(self, vol: voxgate.Volume, tmp_path: Path) -> str:
        path = tmp_path / "vol.n5" / "s0" / "0" / "0" / "0"
        assert path.exists()
        path.write_bytes(b"\x00\x00\x00\x03not gzip at all")
        return str(path)


class TestN5Blosc(TestN5):
    create_options: ClassVar[dict[str, Any]] = {"compression": "blosc"}

    def corrupt_chunk(self, vol: voxgate.Volume, tmp_path: Path) -> str:
        path = tmp_path / "vol.n5" / "s0" / "0" / "0" / "0"
        data = bytearray(path.read_bytes())
        data[16:40] = os.urandom(24)  # the blosc header, after N5's 16-byte block header
        path.write_bytes(bytes(data))
        return str(path)


TestN5StateMachine = remote_state_machine(lambda name: f"n5://{scratch_dir()}/{name}.n5").TestCase
TestN5StateMachine.settings = settings(max_examples=10, stateful_step_count=10, deadline=None)


# -- an independent oracle: the N5 block format decoded with numpy ------------------------------
def decode_n5(path: Path) -> np.ndarray:
    """Read a whole N5 dataset (raw or gzip) from its files, per the N5 specification: each
    block is a big-endian header (mode, ndim, block shape) then big-endian values, x fastest."""
    attrs = json.loads((path / "attributes.json").read_text())
    dims, block = attrs["dimensions"], attrs["blockSize"]
    dtype = np.dtype(attrs["dataType"]).newbyteorder(">")
    out = np.zeros(dims[::-1], dtype=dtype.newbyteorder("="))  # C order: reversed dimensions
    grid = [-(-d // b) for d, b in zip(dims, block, strict=True)]
    for idx in np.ndindex(*grid):
        f = path.joinpath(*map(str, idx))
        if not f.exists():
            continue
        raw = f.read_bytes()
        mode, ndim = struct.unpack(">HH", raw[:4])
        assert mode == 0, "only default-mode blocks are written by voxgate"
        shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        body = raw[4 + 4 * ndim :]
        if attrs["compression"]["type"] == "gzip":
            body = gzip.decompress(body)
        values = np.frombuffer(body, dtype=dtype, count=int(np.prod(shape)))
        values = values.reshape(shape[::-1])  # x fastest = C order over reversed axes
        start = [i * b for i, b in zip(idx, block, strict=True)]
        stop = [min(s + n, d) for s, n, d in zip(start, shape, dims, strict=True)]
        sl = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))[::-1]
        out[sl] = values[tuple(slice(0, b - a) for a, b in zip(start, stop, strict=True))[::-1]]
    return out


def ts_write(path: Path, array_xyz: np.ndarray, block: list[int], **metadata: Any) -> None:
    """Write an N5 dataset with tensorstore alone (array in N5's x, y, z order)."""
    store = ts.open(
        {
            "driver": "n5",
            "kvstore": {"driver": "file", "path": str(path) + "/"},
            "metadata": {
                "dimensions": list(array_xyz.shape),
                "blockSize": block,
                "dataType": array_xyz.dtype.name,
                "compression": {"type": "gzip"},
                **metadata,
            },
        },
        create=True,
    ).result()
    store.write(array_xyz).result()


def add_attrs(path: Path, **attrs: Any) -> None:
    f = path / "attributes.json"
    current = json.loads(f.read_text()) if f.exists() else {}
    current.update(attrs)
    path.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(current))


# -- voxgate writes, others read ------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["gzip", "raw", "none"])
def test_layout_matches_the_n5_spec(tmp_path: Path, compression: str) -> None:
    vol = voxgate.create(f"n5://{tmp_path}/a.n5", shape=(9, 20, 33), chunks=(4, 8, 16),
                         dtype="uint16", voxel_size=(40, 8, 8), compression=compression)
    data = RemoteTests.random((9, 20, 33), "uint16")
    vol[:] = data
    attrs = json.loads((tmp_path / "a.n5" / "s0" / "attributes.json").read_text())
    assert attrs["dimensions"] == [33, 20, 9]
    assert attrs["blockSize"] == [16, 8, 4]
    assert attrs["axes"] == ["x", "y", "z"]
    assert attrs["compression"]["type"] == ("raw" if compression == "none" else compression)
    np.testing.assert_array_equal(decode_n5(tmp_path / "a.n5" / "s0"), data)


def test_tensorstore_reads_multiscale_voxgate_wrote(tmp_path: Path) -> None:
    vol = voxgate.create(f"n5://{tmp_path}/m.n5", shape=(12, 40, 50), chunks=(4, 16, 16),
                         dtype="uint8", voxel_size=(40, 8, 8), num_scales=3,
                         offset=(2, 10, 20), kind="image")
    data = RemoteTests.random((12, 40, 50), "uint8")
    vol[:] = data
    coarse = RemoteTests.random(tuple(vol.scales[2].shape), "uint8", seed=3)
    vol.at_scale(2)[:] = coarse

    group = json.loads((tmp_path / "m.n5" / "attributes.json").read_text())
    assert group["multiScale"] is True
    assert group["n5"]
    assert group["scales"] == [[1, 1, 1], [2, 2, 1], [4, 4, 1]]
    assert group["downsamplingFactors"] == group["scales"]
    assert group["pixelResolution"] == {"unit": "nm", "dimensions": [8, 8, 40]}
    assert group["resolution"] == [8, 8, 40]
    s1 = json.loads((tmp_path / "m.n5" / "s1" / "attributes.json").read_text())
    assert s1["downsamplingFactors"] == [2, 2, 1]
    assert s1["pixelResolution"] == {"unit": "nm", "dimensions": [8, 8, 40]}
    assert s1["dimensions"] == [25, 20, 12]
    assert s1["voxgate"]["offset"] == [2, 5, 10]

    for k, expected in ((0, data), (2, coarse)):
        store = ts.open({"driver": "n5", "kvstore": {
            "driver": "file", "path": f"{tmp_path}/m.n5/s{k}/"}}).result()
        assert store.domain.labels == ("x", "y", "z")
        np.testing.assert_array_equal(store.read().result().transpose(2, 1, 0), expected)
    units = ts.open({"driver": "n5", "kvstore": {
        "driver": "file", "path": f"{tmp_path}/m.n5/s2/"}}).result().dimension_units
    assert [(u.multiplier, u.base_unit) for u in units] == [(32, "nm"), (32, "nm"), (40, "nm")]


def test_multichannel_round_trip(tmp_path: Path) -> None:
    vol = voxgate.create(f"n5://{tmp_path}/c.n5", shape=(6, 10, 12), chunks=(4, 8, 8),
                         dtype="float32", voxel_size=(8, 8, 8), num_channels=3)
    data = RemoteTests.random((3, 6, 10, 12), "float32")
    vol[:] = data
    again = voxgate.open(f"n5://{tmp_path}/c.n5")
    assert again.shape == (3, 6, 10, 12)
    np.testing.assert_array_equal(again.read(), data)
    np.testing.assert_array_equal(again[1, 2:5].read(), data[1, 2:5])
    store = ts.open({"driver": "n5", "kvstore": {
        "driver": "file", "path": f"{tmp_path}/c.n5/s0/"}}).result()
    assert store.domain.labels == ("x", "y", "z", "c")
    np.testing.assert_array_equal(store.read().result().transpose(3, 2, 1, 0), data)


# -- others write, voxgate reads ------------------------------------------------------------------
def test_reads_plain_dataset_tensorstore_wrote(tmp_path: Path) -> None:
    zyx = RemoteTests.random((7, 11, 13), "uint32")
    ts_write(tmp_path / "plain", zyx.T, [8, 8, 4])  # N5 order is x, y, z
    vol = voxgate.open(str(tmp_path / "plain"))  # detected by its attributes.json
    assert vol.url == f"n5://{tmp_path}/plain"
    assert vol.shape == (7, 11, 13)
    assert tuple(vol.chunks) == (4, 8, 8)
    assert vol.voxel_size.zyx() == (1.0, 1.0, 1.0)
    assert vol.kind == "segmentation"  # guessed from uint32
    np.testing.assert_array_equal(vol.read(), zyx)
    np.testing.assert_array_equal(vol[3, 2:9, 5].read(), zyx[3, 2:9, 5])
    rw = voxgate.open(f"n5://{tmp_path}/plain", mode="r+")
    rw[0:2, 0:2, 0:2] = 5
    zyx[0:2, 0:2, 0:2] = 5
    np.testing.assert_array_equal(decode_n5(tmp_path / "plain"), zyx)


def test_reads_tensorstore_resolution_and_units(tmp_path: Path) -> None:
    zyx = RemoteTests.random((4, 5, 6), "uint8")
    ts_write(tmp_path / "r", zyx.T, [4, 4, 4], axes=["x", "y", "z"], units=["um", "um", "nm"],
             resolution=[0.004, 0.004, 30])
    vol = voxgate.open(f"n5://{tmp_path}/r")
    assert vol.voxel_size.zyx() == pytest.approx((30.0, 4.0, 4.0))
    np.testing.assert_array_equal(vol.read(), zyx)


def test_reads_n5_viewer_multiscale(tmp_path: Path) -> None:
    """The n5-viewer / n5-spark layout: per-scale downsamplingFactors and a base pixelResolution
    in micrometres; the voxel size of scale N is their product."""
    root = tmp_path / "viewer.n5"
    s0 = RemoteTests.random((8, 16, 24), "uint16")
    s1 = RemoteTests.random((8, 8, 12), "uint16", seed=1)
    ts_write(root / "s0", s0.T, [8, 8, 8])
    ts_write(root / "s1", s1.T, [8, 8, 8])
    res = {"unit": "um", "dimensions": [0.004, 0.004, 0.04]}
    add_attrs(root, n5="2.0.0", multiScale=True)
    add_attrs(root / "s0", pixelResolution=res)
    add_attrs(root / "s1", pixelResolution=res, downsamplingFactors=[2, 2, 1])
    vol = voxgate.open(f"n5://{root}")
    assert [tuple(s.shape) for s in vol.scales] == [(8, 16, 24), (8, 8, 12)]
    assert [s.voxel_size.zyx() for s in vol.scales] == [
        pytest.approx((40.0, 4.0, 4.0)), pytest.approx((40.0, 8.0, 8.0))
    ]
    assert [s.key for s in vol.scales] == ["s0", "s1"]
    assert vol.kind == "image"
    np.testing.assert_array_equal(vol.read(), s0)
    np.testing.assert_array_equal(vol.at_scale(1).read(), s1)


@pytest.mark.parametrize("key", ["scales", "downsamplingFactors"])
def test_reads_group_level_factors_and_resolution(tmp_path: Path, key: str) -> None:
    """Paintera / Neuroglancer / BigDataViewer: factors and base resolution on the group."""
    root = tmp_path / "g.n5"
    ts_write(root / "s0", np.zeros((32, 32, 8), "uint8"), [16, 16, 8])
    ts_write(root / "s1", np.zeros((16, 16, 8), "uint8"), [16, 16, 8])
    ts_write(root / "s2", np.ones((8, 8, 4), "uint8"), [16, 16, 8])
    add_attrs(root, **{key: [[1, 1, 1], [2, 2, 1], [4, 4, 2]]}, resolution=[4, 4, 40],
              units=["nm", "nm", "nm"])
    vol = voxgate.open(f"n5://{root}")
    assert [s.voxel_size.zyx() for s in vol.scales] == [
        (40.0, 4.0, 4.0), (40.0, 8.0, 8.0), (80.0, 16.0, 16.0)
    ]
    assert (vol.at_scale(2).read() == 1).all()


def test_multiscale_group_without_attributes_infers_factors(tmp_path: Path) -> None:
    root = tmp_path / "bare.n5"
    ts_write(root / "s0", np.zeros((40, 40, 10), "uint8"), [16, 16, 8])
    ts_write(root / "s1", np.zeros((20, 20, 10), "uint8"), [16, 16, 8])
    assert not (root / "attributes.json").exists()
    vol = voxgate.open(f"n5://{root}")
    assert [s.voxel_size.zyx() for s in vol.scales] == [(1.0, 1.0, 1.0), (1.0, 2.0, 2.0)]


def test_four_dimensional_without_axes_is_xyzc(tmp_path: Path) -> None:
    czyx = RemoteTests.random((2, 3, 4, 5), "uint8")
    ts_write(tmp_path / "c4", czyx.transpose(3, 2, 1, 0), [4, 4, 4, 2])
    vol = voxgate.open(f"n5://{tmp_path}/c4")
    assert vol.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(vol.read(), czyx)


def test_axes_attribute_in_another_order(tmp_path: Path) -> None:
    zyx = RemoteTests.random((3, 4, 5), "uint8")
    ts_write(tmp_path / "zyx", zyx, [4, 4, 4], axes=["z", "y", "x"])
    vol = voxgate.open(f"n5://{tmp_path}/zyx", mode="r+")
    assert vol.shape == (3, 4, 5)
    np.testing.assert_array_equal(vol.read(), zyx)
    vol[1, 2, 3] = 200
    zyx[1, 2, 3] = 200
    np.testing.assert_array_equal(voxgate.open(f"n5://{tmp_path}/zyx").read(), zyx)


# -- errors ---------------------------------------------------------------------------------------
def test_group_that_is_not_a_volume(tmp_path: Path) -> None:
    add_attrs(tmp_path / "group.n5", n5="2.0.0")
    with pytest.raises(RemoteNotFoundError, match="neither a dataset"):
        voxgate.open(f"n5://{tmp_path}/group.n5")
    # creating a volume there keeps the group's own attributes
    voxgate.create(f"n5://{tmp_path}/group.n5", shape=(4, 4, 4), chunks=(4, 4, 4),
                   dtype="uint8", voxel_size=(1, 1, 1))
    attrs = json.loads((tmp_path / "group.n5" / "attributes.json").read_text())
    assert attrs["n5"] == "2.0.0" and attrs["multiScale"] is True


def test_nested_volume_does_not_claim_the_container_root(tmp_path: Path) -> None:
    add_attrs(tmp_path / "box.n5", n5="2.0.0", note="mine")
    voxgate.create(f"n5://{tmp_path}/box.n5/raw", shape=(4, 4, 4), chunks=(4, 4, 4),
                   dtype="uint8", voxel_size=(1, 1, 1))
    inner = json.loads((tmp_path / "box.n5" / "raw" / "attributes.json").read_text())
    assert "n5" not in inner
    assert json.loads((tmp_path / "box.n5" / "attributes.json").read_text())["note"] == "mine"


def test_bad_options(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(shape=(4, 4, 4), chunks=(4, 4, 4), dtype="uint8",
                              voxel_size=(1, 1, 1))
    with pytest.raises(InvalidRequestError, match="compression must be one of"):
        voxgate.create(f"n5://{tmp_path}/x.n5", compression="lz77", **kw)
    with pytest.raises(InvalidRequestError, match="unknown option"):
        voxgate.create(f"n5://{tmp_path}/x.n5", shards=(8, 8, 8), **kw)
    voxgate.create(f"n5://{tmp_path}/x.n5", **kw)
    with pytest.raises(InvalidRequestError, match="unknown option"):
        voxgate.open(f"n5://{tmp_path}/x.n5", cache=True)


def test_spec_reopens_in_another_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    vol = voxgate.create(f"n5://{tmp_path}/p.n5", shape=(4, 4, 4), chunks=(4, 4, 4),
                         dtype="uint8", voxel_size=(1, 1, 1))
    vol[:] = 9
    code = (
        "import sys, json, voxgate; spec = json.loads(sys.argv[1]);"
        "v = voxgate.open(spec['url'], mode=spec['mode']); v[0, 0, 0] = 1;"
        "print(int(v.read().sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(vol.remote.spec())],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(9 * 64 - 8)
    assert vol[0, 0, 0].read() == 1


def test_n5_on_s3(s3_bucket: str) -> None:
    """Object storage: metadata and blocks go through tensorstore's s3 kvstore (moto server)."""
    url = f"n5://s3://{s3_bucket}/em.n5"
    vol = voxgate.create(url, shape=(8, 16, 24), chunks=(4, 8, 8), dtype="uint8",
                         voxel_size=(40, 8, 8), num_scales=2)
    data = RemoteTests.random((8, 16, 24), "uint8")
    vol[:] = data
    again = voxgate.open(f"s3://{s3_bucket}/em.n5")  # detected from attributes.json on S3
    assert again.url == url
    assert len(again.scales) == 2
    assert again.scales[1].voxel_size.zyx() == (40.0, 16.0, 16.0)
    np.testing.assert_array_equal(again.read(), data)
    with pytest.raises(RemoteNotFoundError):
        voxgate.open(f"n5://s3://{s3_bucket}/nothing.n5")
