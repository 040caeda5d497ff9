from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
from click.testing import CliRunner
from hypothesis import settings

import voxgate
from voxgate.cli import main
from voxgate.errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    OutOfBoundsError,
    RemoteNotFoundError,
)
from voxgate.geometry import Box
from voxgate.remotes.tensorstore_spec import spec_url
from voxgate.testing import RemoteTests, remote_state_machine

from .scratch import scratch_dir


def ocdbt(path: Path | str) -> dict:
    return {"driver": "zarr3", "kvstore": {"driver": "ocdbt", "base": f"file://{path}"}}


class TestTensorStoreOCDBT(RemoteTests):
    """zarr3 in an OCDBT database: a driver stack voxgate does not wrap itself."""

    multiscale = False
    has_chunk_files = False  # chunks live inside OCDBT's B-tree files

    def url(self, tmp_path: Path, name: str) -> str:
        return spec_url(ocdbt(tmp_path / name))

    def test_offset_and_boxes(self, tmp_path: Path) -> None:
        """zarr3 has no domain origin: an offset is refused at create and given at open."""
        with pytest.raises(InvalidRequestError, match="offset=") as info:
            self.make(tmp_path, offset=(4, 100, 200))
        assert "cannot store an offset" in str(info.value)
        self.make(tmp_path)
        vol = voxgate.open(self.url(tmp_path, "vol"), mode="r+", offset=(4, 100, 200))
        assert vol.bounds == Box((4, 100, 200), (24, 140, 250))
        data = self.random((2, 3, 4), self.dtype)
        vol.write(data, Box((5, 101, 201), (7, 104, 205)))
        np.testing.assert_array_equal(vol[1:3, 1:4, 1:5].read(), data)
        with pytest.raises(OutOfBoundsError):
            vol.read(Box((0, 0, 0), (2, 2, 2)))
        spec = vol.spec()
        again = voxgate.open(spec["url"], **spec["options"])
        assert tuple(again.offset) == (4, 100, 200)
        np.testing.assert_array_equal(voxgate.open(self.url(tmp_path, "vol"))[1:3, 1:4, 1:5]
                                      .read(), data)


TestTensorStoreStateMachine = remote_state_machine(
    lambda name: spec_url(ocdbt(scratch_dir() / f"ts-{name}"))).TestCase
TestTensorStoreStateMachine.settings = settings(max_examples=10, stateful_step_count=10,
                                                deadline=None)


def test_dict_spec_with_voxel_size_and_kind(tmp_path: Path) -> None:
    spec = {"driver": "zarr", "kvstore": f"file://{tmp_path}/plain.zarr"}
    data = np.random.default_rng(0).integers(0, 2**40, (10, 20, 30), dtype=np.uint64)
    ts.open({**spec, "create": True, "dtype": "uint64", "metadata": {
        "shape": [10, 20, 30], "chunks": [5, 10, 10]}}).result().write(data).result()
    vol = voxgate.open(spec, voxel_size=(30, 4, 4), kind="image")
    assert vol.url.startswith("tensorstore://{")
    assert vol.voxel_size.zyx() == (30.0, 4.0, 4.0) and vol.kind == "image"
    assert tuple(vol.chunks) == (5, 10, 10)
    np.testing.assert_array_equal(vol.read(), data)
    assert voxgate.open(spec).kind == "segmentation"  # guessed from the dtype
    assert voxgate.open(spec).voxel_size.zyx() == (1.0, 1.0, 1.0)


def test_zip_kvstore_read_only(tmp_path: Path) -> None:
    """A zarr3 array packed in a zip file (tensorstore's zip kvstore), read through a spec."""
    src = tmp_path / "arr"
    data = np.random.default_rng(1).integers(0, 999, (12, 34, 56)).astype(np.uint16)
    ts.open({"driver": "zarr3", "kvstore": f"file://{src}/", "create": True},
            dtype=ts.uint16, shape=data.shape, chunk_layout=ts.ChunkLayout(chunk_shape=[4, 16, 16]),
            dimension_units=[[40, "nm"], [8, "nm"], [8, "nm"]]).result().write(data).result()
    with zipfile.ZipFile(tmp_path / "arr.zip", "w", zipfile.ZIP_STORED) as z:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                z.write(f, f"inner/{f.relative_to(src)}")
    spec = {"driver": "zarr3", "kvstore": {"driver": "zip",
                                           "base": f"file://{tmp_path}/arr.zip",
                                           "path": "inner/"}}
    vol = voxgate.open(spec)
    assert vol.voxel_size.zyx() == (40.0, 8.0, 8.0)  # the array's dimension_units
    np.testing.assert_array_equal(vol.read(), data)
    np.testing.assert_array_equal(vol[3:9, 10:30, 1:55].read(), data[3:9, 10:30, 1:55])
    assert voxgate.open(f"tensorstore://{json.dumps(spec)}")[0:2, 0:2, 0:2].read().shape == (
        2, 2, 2)


def test_channel_axis_and_labelled_xyz(tmp_path: Path) -> None:
    # labels x, y, z, c in that order (an N5-like layout): read as c, z, y, x
    data = np.random.default_rng(2).integers(0, 255, (2, 6, 7, 8), dtype=np.uint8)  # c,z,y,x
    spec = {"driver": "zarr3", "kvstore": f"file://{tmp_path}/xyzc/"}
    ts.open({**spec, "create": True}, dtype=ts.uint8,
            domain=ts.IndexDomain(shape=[8, 7, 6, 2], labels=["x", "y", "z", "c"])
            ).result().write(data.transpose(3, 2, 1, 0)).result()
    vol = voxgate.open(spec)
    assert vol.meta.num_channels == 2 and vol.shape[-3:] == (6, 7, 8)
    np.testing.assert_array_equal(vol.read(), data)
    # an unlabelled x, y, z array, named by axes=
    spec2 = {"driver": "zarr", "kvstore": f"file://{tmp_path}/xyz.zarr"}
    ts.open({**spec2, "create": True, "dtype": "uint8", "metadata": {"shape": [8, 7, 6]}}
            ).result().write(data[0].T).result()
    np.testing.assert_array_equal(voxgate.open(spec2, axes="xyz").read(), data[0])


def test_array_driver_and_transform(tmp_path: Path) -> None:
    """An in-memory array driver with a translated domain: the origin is the offset."""
    spec = {"driver": "array", "array": np.arange(24).reshape(2, 3, 4).tolist(),
            "dtype": "int32", "transform": {"input_inclusive_min": [10, 20, 30],
                                            "input_shape": [2, 3, 4],
                                            "output": [{"input_dimension": 0, "offset": -10},
                                                       {"input_dimension": 1, "offset": -20},
                                                       {"input_dimension": 2, "offset": -30}]}}
    vol = voxgate.open(spec)
    assert tuple(vol.offset) == (10, 20, 30)
    np.testing.assert_array_equal(vol.read(), np.arange(24).reshape(2, 3, 4))


def test_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="not JSON"):
        voxgate.open("tensorstore://{not json")
    with pytest.raises(InvalidRequestError, match="'driver'"):
        voxgate.open('tensorstore://{"kvstore": "file:///x"}')
    with pytest.raises(RemoteNotFoundError):
        voxgate.open(ocdbt(tmp_path / "nothing"))
    five = {"driver": "array", "array": np.zeros((2, 1, 3, 4, 5)).tolist(), "dtype": "uint8"}
    with pytest.raises(InvalidRequestError, match="5 unlabelled"):
        voxgate.open(five)
    with pytest.raises(InvalidRequestError, match=r"2 time points .*time=0\.\.1"):
        voxgate.open(five, axes="tczyx")
    with pytest.raises(InvalidRequestError, match="axes must be"):
        voxgate.open(five, axes="zyx")
    # an axis named twice: neither is taken for it, nor the other dropped as an extra axis
    four = {"driver": "array", "array": np.zeros((2, 1, 4, 5)).tolist(), "dtype": "uint8"}
    with pytest.raises(InvalidRequestError, match="z twice"):
        voxgate.open(four, axes="zzyx")


def test_cli_info_and_copy(tmp_path: Path) -> None:
    vol = voxgate.create(ocdbt(tmp_path / "db"), shape=(8, 20, 30), chunks=(4, 10, 10),
                         dtype="uint8", voxel_size=(30, 5, 5))
    vol[:] = 4
    url = spec_url(ocdbt(tmp_path / "db"))
    res = CliRunner().invoke(main, ["info", "--json", url])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["scales"][0]["voxel_size_zyx"] == [30.0, 5.0, 5.0]
    voxgate.copy(url, f"n5://{tmp_path}/out.n5", progress=False)
    assert (voxgate.open(f"n5://{tmp_path}/out.n5").read() == 4).all()


def test_create_with_the_n5_and_precomputed_drivers(tmp_path: Path) -> None:
    """An N5 spec creates an array N5 readers open (it failed: tensorstore refuses a fill value
    for N5); a neuroglancer_precomputed spec is refused with what to use instead (it failed
    with tensorstore's 'Cannot inverse transform schema of rank 3')."""
    data = np.arange(6 * 7 * 9, dtype=np.uint16).reshape(6, 7, 9)
    spec = {"driver": "n5", "kvstore": f"file://{tmp_path}/a.n5/"}
    vol = voxgate.create(spec, shape=data.shape, dtype="uint16", chunks=(4, 4, 4),
                         voxel_size=(40, 8, 8))
    vol[:] = data
    np.testing.assert_array_equal(voxgate.open(vol.url).read(), data)
    np.testing.assert_array_equal(np.asarray(ts.open(spec).result().read().result()), data)
    # the axes are named in the attributes, so voxgate's n5:// reads the same array
    attrs = json.loads((tmp_path / "a.n5" / "attributes.json").read_text())
    assert attrs["axes"] == ["z", "y", "x"] and attrs["dimensions"] == [6, 7, 9]
    np.testing.assert_array_equal(voxgate.open(f"n5://{tmp_path}/a.n5").read(), data)
    with pytest.raises(CapabilityNotSupportedError, match="precomputed://"):
        voxgate.create({"driver": "neuroglancer_precomputed",
                        "kvstore": f"file://{tmp_path}/p/"}, shape=(8, 8, 8), dtype="uint8",
                       chunks=(8, 8, 8), voxel_size=(1, 1, 1))
    assert not (tmp_path / "p").exists()
