"""Plain zarr arrays (no OME metadata) that other writers made: zarr-python 3 (Zarr v2 and v3),
tensorstore and xarray, at odd shapes.  voxgate reads every voxel as zarr-python does, writes
what zarr-python reads back, and refuses what it cannot read with an error naming the file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import tensorstore as ts
import zarr
from zarr.codecs import (
    BloscCodec,
    BytesCodec,
    Crc32cCodec,
    GzipCodec,
    ShardingCodec,
    TransposeCodec,
    ZstdCodec,
)

import voxgate
from voxgate.errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    RemoteNotFoundError,
    VoxgateWarning,
)

SHAPE = (5, 7, 9)
CHUNKS = (2, 3, 4)


def _data(dtype: str = "uint16", shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 250, shape).astype(dtype)


def _zarr_read(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(path), mode="r")[...])


def _write_back(path: Path, box: tuple[slice, ...], seed: int) -> None:
    """A voxgate write of part of the array; zarr-python must read exactly that change."""
    before = _zarr_read(path)
    vol = voxgate.open(path, mode="r+")
    new = _data(str(vol.dtype), before[box].shape, seed)
    vol[box] = new
    before[box] = new
    np.testing.assert_array_equal(_zarr_read(path), before)


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_sharded_odd_inner_chunks_and_partial_edge_shards(tmp_path: Path,
                                                          index_location: str) -> None:
    path = tmp_path / "s.zarr"
    data = _data("uint16", (13, 29, 31))
    z = zarr.create(store=str(path), shape=data.shape, chunk_shape=(6, 10, 14), dtype="uint16",
                    zarr_format=3, fill_value=9, codecs=[ShardingCodec(
                        chunk_shape=(3, 5, 7), codecs=[BytesCodec(), ZstdCodec()],
                        index_location=index_location)])
    z[:12] = data[:12]  # the last z-plane of inner chunks is never written
    expected = _zarr_read(path)
    vol = voxgate.open(path)
    assert vol.chunks == (3, 5, 7) and tuple(vol.remote.write_grid(0)) == (6, 10, 14)
    np.testing.assert_array_equal(vol.read(), expected)
    # inner chunks (z index 4) of the partial edge shards are absent: fill value and listed
    assert vol[12:13].read().tolist() == np.full((1, 29, 31), 9).tolist()
    missing = vol.missing_chunks()
    assert {c.z for c in missing} == {4} and len(missing) == 6 * 5
    # a write into part of one shard keeps that shard's other inner chunks
    _write_back(path, (slice(7, 9), slice(11, 14), slice(15, 19)), 1)
    _write_back(path, (slice(12, 13), slice(25, 29), slice(28, 31)), 2)
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["codecs"][0]["configuration"]["index_location"] == index_location


@pytest.mark.parametrize("codecs", [
    [BytesCodec(endian="big"), GzipCodec()],
    [TransposeCodec(order=(2, 0, 1)), BytesCodec(), BloscCodec(cname="lz4")],
    [BytesCodec(), ZstdCodec(), Crc32cCodec()],
], ids=["big-endian-gzip", "transpose-blosc", "zstd-crc32c"])
@pytest.mark.parametrize("dtype", ["int64", "float64"])
def test_v3_codecs(tmp_path: Path, codecs: list[Any], dtype: str) -> None:
    path = tmp_path / "c.zarr"
    data = _data(dtype, seed=3) - 100
    zarr.create(store=str(path), shape=SHAPE, chunk_shape=CHUNKS, dtype=dtype, zarr_format=3,
                codecs=codecs)[:] = data
    vol = voxgate.open(path)
    assert vol.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(vol.read(), data)
    np.testing.assert_array_equal(vol[1:4, 2:7, 3:8].read(), data[1:4, 2:7, 3:8])
    _write_back(path, (slice(1, 4), slice(2, 6), slice(3, 8)), 4)


def test_fill_values_and_missing_chunks(tmp_path: Path) -> None:
    for name, dtype, fill in [("i.zarr", "int16", -7), ("f.zarr", "float64", float("nan"))]:
        path = tmp_path / name
        z = zarr.create_array(str(path), shape=SHAPE, chunks=CHUNKS, dtype=dtype,
                              fill_value=fill, zarr_format=3)
        z[0:2, 0:3, 0:4] = 5
        vol = voxgate.open(path)
        np.testing.assert_array_equal(vol.read(), _zarr_read(path))  # NaN == NaN here
        assert np.array_equal(vol.meta.fill_value, fill, equal_nan=True)
        assert len(vol.missing_chunks()) == 3 * 3 * 3 - 1
        with pytest.raises(voxgate.errors.MissingChunkError):
            voxgate.open(path, missing="error")[4, 6, 8].read()
        _write_back(path, (slice(4, 5), slice(6, 7), slice(8, 9)), 5)


@pytest.mark.parametrize("names", [("x", "y", "z"), ("y", "x", "z"), ("Z", "Y", "X"), None])
def test_v3_dimension_names_reorder_reads_and_writes(tmp_path: Path,
                                                      names: tuple[str, ...] | None) -> None:
    path = tmp_path / "d.zarr"
    native = _data("uint8", (9, 7, 5), 6)
    zarr.create_array(str(path), shape=native.shape, chunks=(4, 3, 2), dtype="uint8",
                      zarr_format=3, dimension_names=names)[:] = native
    order = [n.lower() for n in names or ("z", "y", "x")]
    perm = [order.index(a) for a in "zyx"]
    vol = voxgate.open(path)
    np.testing.assert_array_equal(vol.read(), native.transpose(perm))
    assert vol.chunks == tuple(np.array((4, 3, 2))[perm])
    new = _data("uint8", (2, 3, 4), 7)  # z, y, x
    voxgate.open(path, mode="r+")[1:3, 2:5, 0:4] = new
    box = {"z": slice(1, 3), "y": slice(2, 5), "x": slice(0, 4)}
    native[tuple(box[a] for a in order)] = new.transpose(np.argsort(perm))
    np.testing.assert_array_equal(_zarr_read(path), native)


def test_v2_xarray_array_dimensions_are_honoured(tmp_path: Path) -> None:
    """xarray names a Zarr v2 array's dimensions in ``_ARRAY_DIMENSIONS``; an (x, y, z) array
    was read as if it were (z, y, x): every voxel at the transposed place."""
    xr = pytest.importorskip("xarray")
    native = _data("uint8", (9, 7, 5), 8)  # x, y, z
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xarray's own about consolidated metadata / v3 specs
        xr.Dataset({"em": (("x", "y", "z"), native)}).to_zarr(
            str(tmp_path / "xr.zarr"), zarr_format=2, consolidated=True)
    path = tmp_path / "xr.zarr" / "em"
    vol = voxgate.open(path)
    assert vol.shape == (5, 7, 9)
    np.testing.assert_array_equal(vol.read(), native.transpose(2, 1, 0))
    vol = voxgate.open(path, mode="r+")
    vol[1:3, 2:4, 3:8] = np.full((2, 2, 5), 255, np.uint8)
    expected = native.copy()
    expected[3:8, 2:4, 1:3] = 255
    np.testing.assert_array_equal(_zarr_read(path), expected)
    # names that do not name each dimension once are refused, not guessed at
    attrs = json.loads((path / ".zattrs").read_text())
    (path / ".zattrs").write_text(json.dumps({**attrs, "_ARRAY_DIMENSIONS": ["x", "y"]}))
    with pytest.raises(InvalidRequestError, match=r"\.zattrs.*_ARRAY_DIMENSIONS"):
        voxgate.open(path)


@pytest.mark.parametrize(("order", "sep", "compressor", "fill"), [
    ("F", "/", None, 3), ("F", ".", numcodecs.Zstd(), None), ("C", ".", None, None),
    ("C", "/", numcodecs.Blosc(cname="lz4"), 0),
])
def test_v2_layouts(tmp_path: Path, order: str, sep: str, compressor: Any, fill: Any) -> None:
    path = tmp_path / "v2.zarr"
    z = zarr.create(store=str(path), shape=SHAPE, chunks=CHUNKS, dtype=">u2", zarr_format=2,
                    order=order, dimension_separator=sep, compressor=compressor,
                    fill_value=fill)
    z[2:, 3:, 4:] = _data("uint16", (3, 4, 5), 9)
    vol = voxgate.open(path)
    np.testing.assert_array_equal(vol.read(), _zarr_read(path))
    assert vol.meta.fill_value == (fill or 0)  # null: zarr-python reads absent chunks as 0
    assert len(vol.missing_chunks()) == 27 - 8  # those with a grid index 0
    _write_back(path, (slice(0, 3), slice(1, 5), slice(2, 9)), 10)
    assert json.loads((path / ".zarray").read_text())["order"] == order


def test_tensorstore_written_arrays(tmp_path: Path) -> None:
    data = _data("int64", SHAPE, 11) - 50
    for driver, extra in [("zarr", {"metadata": {"order": "F", "dtype": "<i8",
                                                 "chunks": list(CHUNKS)}}),
                          ("zarr3", {"metadata": {"data_type": "int64", "chunk_grid": {
                              "name": "regular", "configuration": {"chunk_shape": [3, 7, 5]}},
                              "dimension_names": ["z", "y", "x"]}})]:
        path = tmp_path / f"{driver}.zarr"
        spec = {"driver": driver, "kvstore": {"driver": "file", "path": str(path)}, **extra}
        store = ts.open(spec, create=True, shape=SHAPE).result()
        store.write(data).result()
        vol = voxgate.open(path)
        assert vol.kind == "segmentation" and vol.dtype == np.int64
        np.testing.assert_array_equal(vol.read(), data)
        _write_back(path, (slice(2, 5), slice(0, 4), slice(5, 9)), 12)
        np.testing.assert_array_equal(ts.open(spec).result().read().result(), _zarr_read(path))


def test_chunk_key_encoding_v2_dot(tmp_path: Path) -> None:
    path = tmp_path / "k.zarr"
    z = zarr.create_array(str(path), shape=SHAPE, chunks=CHUNKS, dtype="uint8", zarr_format=3,
                          chunk_key_encoding={"name": "v2", "separator": "."}, fill_value=7)
    z[0:2, 0:3, 0:4] = 1
    vol = voxgate.open(path)
    np.testing.assert_array_equal(vol.read(), _zarr_read(path))
    assert len(vol.missing_chunks()) == 26
    _write_back(path, (slice(3, 5), slice(4, 7), slice(5, 9)), 13)
    assert (path / "1.1.1").exists() and not (path / "c").exists()


def test_channels_and_ranks(tmp_path: Path) -> None:
    def make(name: str, shape: tuple[int, ...], names: Any = None) -> tuple[Path, np.ndarray]:
        data = _data("uint8", shape, 14)
        path = tmp_path / name
        zarr.create_array(str(path), shape=shape, chunks=(2,) * len(shape), dtype="uint8",
                          zarr_format=3, dimension_names=names)[:] = data
        return path, data

    path, data = make("czyx.zarr", (2, *SHAPE))  # unnamed 4-D: (c, z, y, x), the docs' rule
    vol = voxgate.open(path)
    assert vol.meta.num_channels == 2
    np.testing.assert_array_equal(vol.read(), data)
    path, data = make("zyxc.zarr", (*SHAPE, 3), ["z", "y", "x", "c"])
    np.testing.assert_array_equal(voxgate.open(path).read(), np.moveaxis(data, 3, 0))
    path, data = make("tczyx.zarr", (1, 2, *SHAPE), ["t", "c", "z", "y", "x"])
    np.testing.assert_array_equal(voxgate.open(path).read(), data[0])
    # an unnamed 2-D array is (y, x), one z plane (tests/remotes/test_store_followups_audit.py)
    path, data = make("yx.zarr", (7, 9))
    np.testing.assert_array_equal(voxgate.open(path).read(), data[None])
    path, _ = make("5d.zarr", (1, 2, *SHAPE))
    with pytest.raises(InvalidRequestError, match=r"5d.zarr is a 5-D zarr array"):
        voxgate.open(path)


@pytest.mark.parametrize(("fmt", "dtype"), [
    (3, "bool"), (3, "float16"), (3, "complex64"), (3, "str"), (2, "<U5"), (2, "<M8[s]"),
    (2, [("a", "u1"), ("b", "f4")]),
])
def test_dtypes_voxgate_cannot_hold_are_refused(tmp_path: Path, fmt: int, dtype: Any) -> None:
    path = tmp_path / "t.zarr"
    zarr.create(store=str(path), shape=(3, 4, 5), chunks=(2, 2, 2), dtype=dtype, zarr_format=fmt)
    key = "zarr.json" if fmt == 3 else ".zarray"
    with pytest.raises(InvalidRequestError, match=rf"t\.zarr/{key} holds .* voxels; voxgate reads"):
        voxgate.open(path)


def test_v2_filters_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.zarr"
    zarr.create(store=str(path), shape=SHAPE, chunks=CHUNKS, dtype="uint16", zarr_format=2,
                filters=[numcodecs.Delta(dtype="u2")])[:] = _data()
    with pytest.raises(CapabilityNotSupportedError, match=r"f\.zarr/\.zarray has .*filters"):
        voxgate.open(path)


def _edit(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("fmt", [2, 3])
def test_bad_metadata_names_the_file(tmp_path: Path, fmt: int) -> None:
    key = "zarr.json" if fmt == 3 else ".zarray"

    def fresh(name: str) -> Path:
        path = tmp_path / name
        zarr.create_array(str(path), shape=SHAPE, chunks=CHUNKS, dtype="uint8",
                          zarr_format=fmt)[:] = 1
        return path

    path = fresh("json.zarr")
    (path / key).write_text("{not json")
    with pytest.raises(CorruptChunkError, match="not valid JSON") as info:
        voxgate.open(path)
    assert info.value.chunk == f"{path}/{key}"
    path = fresh("list.zarr")
    (path / key).write_text("[1, 2]")
    with pytest.raises(InvalidRequestError, match=rf"list\.zarr/{key} is not zarr metadata"):
        voxgate.open(path)
    path = fresh("codec.zarr")
    if fmt == 3:
        _edit(path / key, lambda d: d["codecs"].append({"name": "mystery"}))
    else:
        _edit(path / key, lambda d: d.update(compressor={"id": "mystery"}))
    with pytest.raises(CapabilityNotSupportedError, match=rf"codec\.zarr/{key} .*'mystery'"):
        voxgate.open(path)
    path = fresh("chunks.zarr")
    if fmt == 3:
        _edit(path / key, lambda d: d["chunk_grid"]["configuration"].update(chunk_shape=[2, 3]))
    else:
        _edit(path / key, lambda d: d.update(chunks=[2, 3]))
    with pytest.raises(InvalidRequestError,
                       match=rf"chunks\.zarr/{key} is not valid zarr array metadata: .*chunk"):
        voxgate.open(path)


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("consolidated", [True, False])
def test_group_of_plain_arrays_names_them(tmp_path: Path, fmt: int, consolidated: bool) -> None:
    for names in (["raw"], ["raw", "seg"]):
        path = tmp_path / f"g{len(names)}.zarr"
        group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
        for n in names:
            group.create_array(n, shape=SHAPE, chunks=CHUNKS, dtype="uint8")[:] = 1
        if consolidated:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zarr-python: consolidated v3 is not in spec
                zarr.consolidate_metadata(str(path))
        with pytest.raises(RemoteNotFoundError) as info:
            voxgate.open(path)
        listed = ", ".join(f"zarr://{path}/{n}" for n in names)
        assert str(info.value).endswith(f"open one of its arrays instead: {listed}")
        assert voxgate.open(f"zarr://{path}/{names[-1]}").shape == SHAPE


def test_plain_array_voxel_size_offset_and_bad_voxgate_attribute(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    z = zarr.create_array(str(path), shape=SHAPE, chunks=CHUNKS, dtype="uint32", zarr_format=3)
    z[:] = 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no OME metadata: 1 nm at 0, quietly (as documented)
        vol = voxgate.open(path)
    assert vol.voxel_size.zyx() == (1.0, 1.0, 1.0) and tuple(vol.offset) == (0, 0, 0)
    assert vol.kind == "segmentation"
    z.attrs["voxgate"] = {"voxel_size": [40, 4], "offset": [1, 2, 3], "kind": "mask"}
    with pytest.warns(VoxgateWarning) as rec:
        vol = voxgate.open(path)
    assert sorted(str(w.message).split(": attribute ")[1].split(" ")[0] for w in rec) == [
        "voxgate.kind", "voxgate.voxel_size"]
    assert all(str(w.message).startswith(f"{path}: ") for w in rec)
    assert vol.voxel_size.zyx() == (1.0, 1.0, 1.0) and tuple(vol.offset) == (1, 2, 3)
    assert vol.kind == "segmentation" and int(vol[1, 2, 3].read()) == 3
