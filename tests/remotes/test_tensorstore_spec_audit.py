"""Audit of ``tensorstore://`` specs: open-mode members, zip archives, labels against axes=,
voxel_size against dimension_units, specs TensorStore refuses, and create() of zarr v2."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

import voxgate
from voxgate.errors import InvalidRequestError, ReadOnlyError


def _zarr3(path: Path, data: np.ndarray, **kw: object) -> dict:
    spec = {"driver": "zarr3", "kvstore": f"file://{path}/"}
    ts.open({**spec, "create": True}, dtype=ts.dtype(data.dtype.name), shape=data.shape,
            **kw).result().write(data).result()
    return spec


def _read(spec: dict) -> np.ndarray:
    return np.asarray(ts.open(spec).result().read().result())


def test_open_mode_members_are_refused_and_delete_nothing(tmp_path: Path) -> None:
    """``delete_existing`` in a spec opened with mode='r+' deleted the array (and then failed
    with a bare VoxgateError); ``open: false`` tried to create one."""
    data = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    spec = _zarr3(tmp_path / "a", data)
    for extra in ({"create": True, "delete_existing": True}, {"open": False},
                  {"assume_metadata": True}):
        with pytest.raises(InvalidRequestError, match=next(iter(extra))):
            voxgate.open({**spec, **extra}, mode="r+")
        np.testing.assert_array_equal(_read(spec), data)
    with pytest.raises(InvalidRequestError, match="delete_existing"):
        voxgate.create({**spec, "delete_existing": True}, shape=data.shape, dtype="uint8",
                       chunks=(4, 4, 4), voxel_size=(1, 1, 1), exist_ok=True)
    np.testing.assert_array_equal(_read(spec), data)
    with pytest.raises(InvalidRequestError, match="open"):
        voxgate.open({"driver": "zarr3", "kvstore": f"file://{tmp_path}/none/", "open": False})
    assert not (tmp_path / "none").exists()
    # what asks nothing voxgate does not do is taken: "open": true, members set to false
    vol = voxgate.open({**spec, "open": True, "create": False, "delete_existing": False})
    np.testing.assert_array_equal(vol.read(), data)


def test_zip_archive_is_read_only(tmp_path: Path) -> None:
    """TensorStore rewrites a zip archive written through its zip kvstore (here: it dropped a
    chunk from it): voxgate documents zip as read only, and mode='r+' wrote."""
    data = np.arange(8 * 8 * 8, dtype=np.uint16).reshape(8, 8, 8) + 1
    src = tmp_path / "arr"
    _zarr3(src, data, chunk_layout=ts.ChunkLayout(chunk_shape=[4, 4, 4]))
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                z.write(f, str(f.relative_to(src)))
    before = (tmp_path / "a.zip").read_bytes()
    spec = {"driver": "zarr3", "kvstore": {"driver": "zip", "base": f"file://{tmp_path}/a.zip"}}
    for given in (spec, f"tensorstore://{json.dumps(spec)}",
                  {"driver": "zarr3", "kvstore": f"file://{tmp_path}/a.zip|zip:"}):
        with pytest.raises(ReadOnlyError, match="zip"):
            voxgate.open(given, mode="r+")[:] = np.zeros((8, 8, 8), np.uint16)
    with pytest.raises(ReadOnlyError, match="zip"):
        voxgate.create({"driver": "zarr3", "kvstore": {
            "driver": "zip", "base": f"file://{tmp_path}/new.zip"}}, shape=(4, 4, 4),
            dtype="uint8", chunks=(4, 4, 4), voxel_size=(1, 1, 1))
    assert (tmp_path / "a.zip").read_bytes() == before
    assert not (tmp_path / "new.zip").exists()
    np.testing.assert_array_equal(voxgate.open(spec).read(), data)


def test_axes_that_contradict_the_labels(tmp_path: Path) -> None:
    """axes= over labelled dimensions, and the unlabelled default over partly labelled ones,
    silently took a dimension labelled z for x (or x for z)."""
    data = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)

    def spec(labels: list[str]) -> dict:
        return {"driver": "array", "array": data.tolist(), "dtype": "uint8",
                "transform": {"input_shape": [4, 5, 6], "input_labels": labels}}

    with pytest.raises(InvalidRequestError, match="contradicts axes='xyz'"):
        voxgate.open(spec(["z", "y", "x"]), axes="xyz")
    with pytest.raises(InvalidRequestError, match="contradicts the unlabelled default"):
        voxgate.open(spec(["x", "y", ""]))
    with pytest.raises(InvalidRequestError, match="contradicts"):
        voxgate.open(spec(["z", "y", "t"]))
    # labels that agree (or are partly missing) still open as before
    np.testing.assert_array_equal(voxgate.open(spec(["z", "y", "x"]), axes="zyx").read(), data)
    np.testing.assert_array_equal(voxgate.open(spec(["", "y", "x"])).read(), data)
    np.testing.assert_array_equal(voxgate.open(spec(["z", "", ""]), axes="zyx").read(), data)
    four = {"driver": "array", "array": data[None].tolist(), "dtype": "uint8",
            "transform": {"input_shape": [1, 4, 5, 6], "input_labels": ["channel", "", "", ""]}}
    np.testing.assert_array_equal(voxgate.open(four).read(), data)


def test_voxel_size_that_contradicts_the_units(tmp_path: Path) -> None:
    """voxel_size= is for arrays that state none: one that contradicts the array's length
    dimension_units was taken silently."""
    data = np.zeros((2, 3, 4), np.uint8)
    spec = _zarr3(tmp_path / "a", data, dimension_units=["40nm", "0.004um", "4 nm"])
    assert voxgate.open(spec).voxel_size.zyx() == (40.0, 4.0, 4.0)
    with pytest.raises(InvalidRequestError, match="contradicts the dimension_units"):
        voxgate.open(spec, voxel_size=(30, 4, 4))
    assert voxgate.open(spec, voxel_size=(40, 4, 4)).voxel_size.zyx() == (40.0, 4.0, 4.0)
    # unitless numbers, missing units and non-length units state no voxel size
    loose = _zarr3(tmp_path / "b", data, dimension_units=[[40, ""], None, "2 s"])
    assert voxgate.open(loose, voxel_size=(30, 4, 4)).voxel_size.zyx() == (30.0, 4.0, 4.0)


def test_specs_tensorstore_refuses_are_bad_input(tmp_path: Path) -> None:
    """A spec TensorStore parses but will not open (no kvstore; a dtype or shape the array
    does not have) raised a bare VoxgateError, not InvalidRequestError."""
    with pytest.raises(InvalidRequestError, match="kvstore"):
        voxgate.open('tensorstore://{"driver": "zarr3"}')
    spec = _zarr3(tmp_path / "a", np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(InvalidRequestError, match="uint16"):
        voxgate.open({**spec, "dtype": "uint16"})
    with pytest.raises(InvalidRequestError, match="shape"):
        voxgate.open({**spec, "metadata": {"shape": [5, 5, 5]}})
    # a sharded spec whose inner chunks contradict the chunks asked for
    sharded = {"driver": "zarr3", "kvstore": f"file://{tmp_path}/s/", "metadata": {"codecs": [
        {"name": "sharding_indexed", "configuration": {"chunk_shape": [4, 4, 4],
                                                       "codecs": [{"name": "bytes"}]}}]}}
    with pytest.raises(InvalidRequestError, match="chunk"):
        voxgate.create(sharded, shape=(8, 8, 8), dtype="uint8", chunks=(8, 8, 8),
                       voxel_size=(1, 1, 1))


def test_create_with_the_zarr_v2_driver(tmp_path: Path) -> None:
    """zarr v2 keeps no dimension units: create() asked TensorStore for them and failed."""
    data = np.random.default_rng(0).integers(0, 999, (6, 7, 9)).astype(np.uint16)
    spec = {"driver": "zarr", "kvstore": f"file://{tmp_path}/a.zarr/"}
    vol = voxgate.create(spec, shape=data.shape, dtype="uint16", chunks=(4, 4, 4),
                         voxel_size=(40, 8, 8))
    vol[:] = data
    np.testing.assert_array_equal(_read(spec), data)
    again = voxgate.open(spec, voxel_size=(40, 8, 8))
    assert tuple(again.chunks) == (4, 4, 4) and again.voxel_size.zyx() == (40.0, 8.0, 8.0)
    np.testing.assert_array_equal(again.read(), data)
