"""Audit of n5:// against N5 containers made by other tools (tensorstore, Java N5 writers'
attribute forms, BigDataViewer / n5-viewer / Neuroglancer / COSEM (OpenOrganelle) / Paintera
layouts, blocks written by hand from the N5 specification), at odd shapes and offsets.  Every
voxel is compared with numpy."""

from __future__ import annotations

import gzip
import itertools
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts

import voxgate
from voxgate.errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    VoxgateWarning,
)

from .test_n5 import add_attrs

RNG = np.random.default_rng(20)
SHAPE = (7, 13, 19)  # z, y, x: no axis a multiple of the block size
BLOCK = [5, 4, 3]  # x, y, z


def data(dtype: str, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    if info is None:
        out = RNG.standard_normal(shape).astype(dtype)
        out.flat[0], out.flat[1] = np.nan, -np.inf
        return out
    out = RNG.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    out.flat[0], out.flat[1] = info.min, info.max  # 2**64 - 1 never passes through a float
    return out


def write_by_hand(path: Path, zyx: np.ndarray, block: list[int], *, compression: str = "raw",
                  truncate_edges: bool = True, mode: int = 0,
                  skip: frozenset[tuple[int, ...]] = frozenset(),
                  attrs: dict[str, Any] | None = None) -> None:
    """An N5 dataset written from the specification: dimensions x first, each block a
    big-endian header (mode, rank, block shape[, element count]) and big-endian values, x
    fastest.  Edge blocks are stored truncated to the data (as Java N5 does) or padded."""
    dims = list(zyx.shape[::-1])
    path.mkdir(parents=True, exist_ok=True)
    meta = {"dimensions": dims, "blockSize": block, "dataType": zyx.dtype.name,
            "compression": {"type": compression}, **(attrs or {})}
    (path / "attributes.json").write_text(json.dumps(meta))
    xyz = zyx.T
    grid = [-(-d // b) for d, b in zip(dims, block, strict=True)]
    for idx in itertools.product(*map(range, grid)):
        if idx in skip:
            continue
        start = [i * b for i, b in zip(idx, block, strict=True)]
        sub = xyz[tuple(slice(s, s + b) for s, b in zip(start, block, strict=True))]
        if not truncate_edges:
            full = np.zeros(block, zyx.dtype)
            full[tuple(slice(0, n) for n in sub.shape)] = sub
            sub = full
        body = sub.astype(zyx.dtype.newbyteorder(">")).tobytes(order="F")
        if compression == "gzip":
            body = gzip.compress(body)
        head = struct.pack(f">HH{len(dims)}I", mode, len(dims), *sub.shape)
        if mode == 1:
            head += struct.pack(">I", sub.size)
        f = path.joinpath(*map(str, idx))
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(head + body)


def ts_dataset(path: Path, array: np.ndarray, block: list[int], **metadata: Any) -> None:
    """A dataset written by tensorstore alone (``array`` in the file's dimension order)."""
    store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": f"{path}/"},
                     "metadata": {"dimensions": list(array.shape), "blockSize": block,
                                  "dataType": array.dtype.name,
                                  "compression": {"type": "raw"}, **metadata}},
                    create=True).result()
    store.write(array).result()


def ts_read(path: Path) -> np.ndarray:
    store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": f"{path}/"}}).result()
    return np.asarray(store.read().result()).T


def check_reads(url: str, expected: np.ndarray) -> None:
    vol = voxgate.open(url)
    assert vol.shape == expected.shape
    np.testing.assert_array_equal(vol.read(), expected)
    # an odd cutout crossing many blocks, edge blocks included
    np.testing.assert_array_equal(vol[..., 1:7, 2:13, 1:18].read(), expected[..., 1:7, 2:13, 1:18])


# -- data written by tensorstore, every compression it has -----------------------------------
_COMPRESSIONS: list[dict[str, Any]] = [
    {"type": "raw"}, {"type": "gzip"}, {"type": "gzip", "useZlib": True}, {"type": "bzip2"},
    {"type": "xz"}, {"type": "zstd"},
    *({"type": "blosc", "cname": c, "clevel": 5, "shuffle": 2 if c == "zstd" else 1}
      for c in ("blosclz", "lz4", "lz4hc", "snappy", "zlib", "zstd")),
]
_DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32",
           "float64"]


@pytest.mark.parametrize("compression", _COMPRESSIONS, ids=lambda c: "-".join(map(str, c.values())))
def test_every_tensorstore_compression_and_dtype(tmp_path: Path,
                                                 compression: dict[str, Any]) -> None:
    k = _COMPRESSIONS.index(compression)
    for dtype in (_DTYPES[k % 10], _DTYPES[(k + 3) % 10], _DTYPES[(k + 7) % 10]):
        expected = data(dtype)
        ts_dataset(tmp_path / dtype, expected.T, BLOCK, compression=compression)
        check_reads(f"n5://{tmp_path / dtype}", expected)


# -- blocks written by hand from the specification -------------------------------------------
@pytest.mark.parametrize("compression", ["raw", "gzip"])
@pytest.mark.parametrize("truncate_edges", [True, False], ids=["truncated", "padded"])
def test_hand_written_blocks(tmp_path: Path, compression: str, truncate_edges: bool) -> None:
    for dtype in ("uint64", "int8", "float64", "uint16"):
        expected = data(dtype)
        write_by_hand(tmp_path / dtype, expected, BLOCK, compression=compression,
                      truncate_edges=truncate_edges, skip=frozenset({(1, 2, 1), (3, 3, 2)}))
        expected[3:6, 8:12, 5:10] = 0  # block (1, 2, 1): x 5:10, y 8:12, z 3:6
        expected[6:7, 12:13, 15:19] = 0  # block (3, 3, 2), a corner edge block
        check_reads(f"n5://{tmp_path / dtype}", expected)
        np.testing.assert_array_equal(ts_read(tmp_path / dtype), expected, err_msg="oracle")
    vol = voxgate.open(f"n5://{tmp_path}/uint16")
    assert sorted(map(tuple, vol.missing_chunks())) == [(1, 2, 1), (2, 3, 3)]  # z, y, x


def test_hand_written_four_dimensional(tmp_path: Path) -> None:
    expected = data("uint16", (3, *SHAPE))  # c, z, y, x: N5 dimensions x, y, z, c
    write_by_hand(tmp_path / "c", expected, [*BLOCK, 2], compression="gzip")
    check_reads(f"n5://{tmp_path}/c", expected)


def test_writes_into_a_foreign_dataset_read_back_by_tensorstore(tmp_path: Path) -> None:
    expected = data("uint32")
    write_by_hand(tmp_path / "w", expected, BLOCK, skip=frozenset({(0, 0, 0)}))
    expected[0:3, 0:4, 0:5] = 0
    vol = voxgate.open(f"n5://{tmp_path}/w", mode="r+")
    patch = data("uint32", (5, 9, 14))
    vol[2:7, 4:13, 5:19] = patch  # ends at every far edge
    vol[0:2, 0:3, 0:4] = 9  # into the absent block
    expected[2:7, 4:13, 5:19] = patch
    expected[0:2, 0:3, 0:4] = 9
    np.testing.assert_array_equal(ts_read(tmp_path / "w"), expected)
    np.testing.assert_array_equal(vol.read(), expected)


# -- attribute forms of other writers ----------------------------------------------------------
@pytest.mark.parametrize("compression,extra", [
    # n5-blosc (Java) writes its thread count and type size; tensorstore refuses both
    ({"type": "blosc", "cname": "lz4", "clevel": 6, "shuffle": 1},
     {"blocksize": 0, "typesize": 2, "nthreads": 1}),
    ({"type": "zstd", "level": 3}, {"nbWorkers": 0}),
    ({"type": "gzip", "level": -1}, {"useZlib": False}),
])
def test_java_compression_members(tmp_path: Path, compression: dict[str, Any],
                                  extra: dict[str, Any]) -> None:
    expected = data("uint16")
    ts_dataset(tmp_path / "j", expected.T, BLOCK, compression=compression)
    add_attrs(tmp_path / "j", compression={**compression, **extra})
    check_reads(f"n5://{tmp_path}/j", expected)
    vol = voxgate.open(f"n5://{tmp_path}/j", mode="r+")
    vol[1:4, 2:5, 3:6] = 77
    expected[1:4, 2:5, 3:6] = 77
    attrs = json.loads((tmp_path / "j" / "attributes.json").read_text())
    assert attrs["compression"] == {**compression, **extra}  # the writer's attributes kept
    add_attrs(tmp_path / "j", compression=compression)
    np.testing.assert_array_equal(ts_read(tmp_path / "j"), expected)


@pytest.mark.parametrize("legacy", ["raw", "gzip"])
def test_legacy_compression_type(tmp_path: Path, legacy: str) -> None:
    """N5 before 1.0 wrote "compressionType": "gzip"; Java N5 still reads it."""
    expected = data("int16")
    write_by_hand(tmp_path / "old", expected, BLOCK, compression=legacy)
    attrs = json.loads((tmp_path / "old" / "attributes.json").read_text())
    del attrs["compression"]
    attrs["compressionType"] = legacy
    (tmp_path / "old" / "attributes.json").write_text(json.dumps(attrs))
    check_reads(f"n5://{tmp_path}/old", expected)


def test_viewer_attributes_of_another_length_do_not_block_the_data(tmp_path: Path) -> None:
    """tensorstore refuses "units"/"resolution" whose length is not the rank; they are viewer
    metadata, and the x, y, z resolution of a 4-D (x, y, z, c) dataset is still read."""
    expected = data("uint8", (2, *SHAPE))
    write_by_hand(tmp_path / "r", expected, [*BLOCK, 1],
                  attrs={"resolution": [4, 5, 40], "units": ["nm", "nm", "nm"]})
    check_reads(f"n5://{tmp_path}/r", expected)
    assert voxgate.open(f"n5://{tmp_path}/r").voxel_size.zyx() == (40.0, 5.0, 4.0)


# -- axis order --------------------------------------------------------------------------------
def test_axes_order_applies_to_resolution_units_and_factors(tmp_path: Path) -> None:
    zyx = data("uint8")
    ts_dataset(tmp_path / "zyx", zyx, [3, 4, 5], axes=["z", "y", "x"],
               resolution=[0.04, 4, 5], units=["um", "nm", "nm"])
    vol = voxgate.open(f"n5://{tmp_path}/zyx")
    assert vol.voxel_size.zyx() == pytest.approx((40.0, 4.0, 5.0))
    units = ts.open({"driver": "n5", "kvstore": f"file://{tmp_path}/zyx/"}).result()
    assert [u.base_unit for u in units.dimension_units] == ["um", "nm", "nm"]  # the oracle's
    check_reads(f"n5://{tmp_path}/zyx", zyx)

    czyx = data("uint16", (2, *SHAPE))
    ts_dataset(tmp_path / "czyx", czyx, [1, 3, 4, 5], axes=["c", "z", "y", "x"],
               resolution=[1, 40, 4, 5], units=["", "nm", "nm", "nm"])
    assert voxgate.open(f"n5://{tmp_path}/czyx").voxel_size.zyx() == (40.0, 4.0, 5.0)
    check_reads(f"n5://{tmp_path}/czyx", czyx)

    # a Neuroglancer-style group whose lists follow its "axes"
    root = tmp_path / "group"
    ts_dataset(root / "s0", zyx, [3, 4, 5], axes=["z", "y", "x"])
    ts_dataset(root / "s1", zyx[:, ::2, ::2].copy(), [3, 4, 5], axes=["z", "y", "x"])
    add_attrs(root, axes=["z", "y", "x"], resolution=[40, 4, 5], units=["nm"] * 3,
               downsamplingFactors=[[1, 1, 1], [1, 2, 2]])
    vol = voxgate.open(f"n5://{root}")
    assert [s.voxel_size.zyx() for s in vol.scales] == [(40.0, 4.0, 5.0), (40.0, 8.0, 10.0)]
    np.testing.assert_array_equal(vol.at_scale(1).read(), zyx[:, ::2, ::2])


# -- multiscale layouts -------------------------------------------------------------------------
def test_bigdataviewer_setup_timepoint_layout(tmp_path: Path) -> None:
    """BigDataViewer's N5: setupN holds the factors of every scale, timepointN the sN
    datasets (and, from its exporter, "multiScale" and a "resolution")."""
    full = data("uint16", (5, 20, 23))
    factors = [[1, 1, 1], [2, 2, 1], [8, 8, 4]]
    setup = tmp_path / "bdv.n5" / "setup0"
    add_attrs(tmp_path / "bdv.n5", n5="2.0.0")
    add_attrs(setup, downsamplingFactors=factors, dataType="uint16")
    levels = []
    for i, (fx, fy, fz) in enumerate(factors):
        level = full[::fz, ::fy, ::fx].copy()  # ceil-divided shapes
        levels.append(level)
        write_by_hand(setup / "timepoint0" / f"s{i}", level, [4, 4, 4], compression="gzip")
    add_attrs(setup / "timepoint0", multiScale=True, resolution=[4, 4, 30])
    vol = voxgate.open(f"n5://{setup}/timepoint0")
    assert [tuple(s.shape) for s in vol.scales] == [(5, 20, 23), (5, 10, 12), (2, 3, 3)]
    assert [s.voxel_size.zyx() for s in vol.scales] == [
        (30.0, 4.0, 4.0), (30.0, 8.0, 8.0), (120.0, 32.0, 32.0)]
    for i, level in enumerate(levels):
        np.testing.assert_array_equal(vol.at_scale(i).read(), level)


def test_factors_inferred_from_shapes_are_powers_of_two(tmp_path: Path) -> None:
    """No factors anywhere: each is the power of two whose ceiling (or floor) division of
    s0's shape gives the scale's (20 -> 3 is 8, not the rounded ratio 7)."""
    root = tmp_path / "bare.n5"
    write_by_hand(root / "s0", data("uint8", (9, 20, 21)), [8, 8, 8])
    write_by_hand(root / "s1", data("uint8", (5, 10, 10)), [8, 8, 8])  # x: 21 // 2 (n5-spark)
    write_by_hand(root / "s2", data("uint8", (3, 3, 2)), [8, 8, 8])  # ceil: 9/4, 20/8, 21/16
    vol = voxgate.open(f"n5://{root}")
    assert [s.voxel_size.zyx() for s in vol.scales] == [
        (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (4.0, 8.0, 16.0)]


@pytest.mark.parametrize("pixel_resolution,expected", [
    ({"unit": "um", "dimensions": [0.004, 0.005, 0.04]}, (40.0, 5.0, 4.0)),
    ({"unit": "mm", "dimensions": [4e-6, 5e-6, 4e-5]}, (40.0, 5.0, 4.0)),
    ([4, 5, 40], (40.0, 5.0, 4.0)),  # older n5-viewer files: a bare list, nm
])
def test_n5_viewer_pixel_resolution_forms(tmp_path: Path, pixel_resolution: Any,
                                          expected: tuple[float, ...]) -> None:
    root = tmp_path / "v.n5"
    write_by_hand(root / "s0", data("uint8"), BLOCK, attrs={"pixelResolution": pixel_resolution})
    write_by_hand(root / "s1", data("uint8", (7, 7, 10)), BLOCK,
                  attrs={"pixelResolution": pixel_resolution, "downsamplingFactors": [2, 2, 1]})
    vol = voxgate.open(f"n5://{root}")
    assert vol.scales[0].voxel_size.zyx() == pytest.approx(expected)
    assert vol.scales[1].voxel_size.zyx() == pytest.approx(
        (expected[0], expected[1] * 2, expected[2] * 2))
    assert vol.scales[0].offset == (0, 0, 0)  # n5-viewer has no offset


# -- files that cannot be read -------------------------------------------------------------------
_GOOD = {"dimensions": [19, 13, 7], "blockSize": [5, 4, 3], "dataType": "uint16",
         "compression": {"type": "raw"}}


@pytest.mark.parametrize("change,error,match", [
    ({"dataType": None}, InvalidRequestError, "no 'dataType'"),
    ({"dataType": "uint12"}, InvalidRequestError, "'dataType' 'uint12'"),
    ({"dataType": "object"}, CapabilityNotSupportedError, "'object'"),
    ({"blockSize": None}, InvalidRequestError, "'blockSize'"),
    ({"blockSize": [5, 0, 3]}, InvalidRequestError, "'blockSize'"),
    ({"blockSize": [5, 4]}, InvalidRequestError, "'blockSize'"),
    # (2-D opens as one z plane: tests/remotes/test_store_followups_audit.py)
    ({"dimensions": [19, 13, 7, 2, 2], "blockSize": [5, 4, 3, 1, 1]}, InvalidRequestError,
     "'dimensions'"),
    ({"dimensions": [19, -13, 7]}, InvalidRequestError, "'dimensions'"),
    ({"compression": None}, InvalidRequestError, "no 'compression'"),
    ({"compression": "gzip"}, InvalidRequestError, "'compression'"),
    ({"compression": {"type": "lzma9"}}, InvalidRequestError, "'compression.type' 'lzma9'"),
    ({"compression": {"type": "lz4", "blockSize": 65536}}, CapabilityNotSupportedError, "'lz4'"),
    ({"axes": ["x", "x", "z"]}, InvalidRequestError, "'axes'"),
    ({"compression": {"type": "gzip", "level": 42}}, InvalidRequestError, "level"),
], ids=lambda v: json.dumps(v) if isinstance(v, dict) else None)
def test_bad_attributes_are_refused_naming_the_key(tmp_path: Path, change: dict[str, Any],
                                                   error: type[Exception], match: str) -> None:
    attrs = {k: v for k, v in {**_GOOD, **change}.items() if v is not None}
    write_by_hand(tmp_path / "bad", data("uint16"), BLOCK)  # valid blocks
    (tmp_path / "bad" / "attributes.json").write_text(json.dumps(attrs))
    with pytest.raises(error, match=match) as info:
        voxgate.open(f"n5://{tmp_path}/bad").read()
    assert "attributes.json" in str(info.value)


@pytest.mark.parametrize("mode", [1, 2], ids=["varlength", "object"])
def test_other_block_modes_are_unsupported_not_corrupt(tmp_path: Path, mode: int) -> None:
    write_by_hand(tmp_path / "m", data("uint16"), BLOCK, mode=mode)
    vol = voxgate.open(f"n5://{tmp_path}/m")
    with pytest.raises(CapabilityNotSupportedError, match="varlength or object mode"):
        vol.read()


def test_a_block_of_another_mode_is_corrupt(tmp_path: Path) -> None:
    """A block whose mode is none of N5's (0, 1, 2: garbage or a damaged file) is a damaged
    block, as the object-storage journeys expect, not an unsupported one."""
    write_by_hand(tmp_path / "m", data("uint16"), BLOCK, mode=3)
    with pytest.raises(CorruptChunkError, match="could not be decoded"):
        voxgate.open(f"n5://{tmp_path}/m").read()


# -- where the data lies: COSEM / OpenOrganelle transforms, Paintera offsets --------------------
VS0 = (5.24, 4.0, 4.0)  # z, y, x nm, as OpenOrganelle's FIB-SEM
O0 = (3, -5, 7)  # z, y, x voxels of s0
# each scale's factors (z, y, x), its voxel offset by voxgate's rule (floor of s0's / factor)
LEVELS = [((1, 1, 1), (3, -5, 7)), ((2, 2, 2), (1, -3, 3)), ((2, 4, 4), (1, -2, 1))]


def cosem_transform(scale: list[float], translate: list[float], form: str,
                    unit: str = "nm") -> dict[str, Any]:
    """A COSEM transform of (z, y, x) values in the form ``form``: "C" (z first, as
    OpenOrganelle writes it), "F" (x first, named) or "C-unnamed" (no axes, "order": "C")."""
    f = {"nm": 1.0, "um": 1e-3}[unit]
    scale, translate = [v * f for v in scale], [v * f for v in translate]
    if form == "F":
        return {"axes": ["x", "y", "z"], "scale": scale[::-1], "translate": translate[::-1],
                "units": [unit] * 3, "ordering": "F"}
    out = {"axes": ["z", "y", "x"], "scale": scale, "translate": translate,
           "units": [unit] * 3, "ordering": "C"}
    if form == "C-unnamed":
        del out["axes"]
        out["order"] = out.pop("ordering")
    return out


@pytest.mark.parametrize("where,form,unit", [
    ("dataset", "C", "nm"), ("group", "F", "nm"), ("dataset", "C-unnamed", "um"),
])
def test_cosem_transforms_give_voxel_size_and_offset(tmp_path: Path, where: str, form: str,
                                                     unit: str) -> None:
    """An OpenOrganelle multiscale group (as cellmap-schemas models it): each sN has its own
    voxel size in "transform" and "pixelResolution" (not the base one), and the position of
    its first voxel's centre in "translate" (nm; a downsampled scale's half a block in, as
    xarray-multiscale places it); the group lists the same transforms in "multiscales"."""
    root = tmp_path / "em" / "fibsem-uint8"
    datasets, levels = [], []
    for i, (factors, _) in enumerate(LEVELS):
        shape = tuple(-(-n // f) for n, f in zip(SHAPE, factors, strict=True))
        level = data("uint8", shape)
        levels.append(level)
        vs = [v * f for v, f in zip(VS0, factors, strict=True)]
        centre = [o * v0 + (v - v0) / 2 for o, v, v0 in zip(O0, vs, VS0, strict=True)]
        tf = cosem_transform(vs, centre, form, unit)
        ts_dataset(root / f"s{i}", level.T, BLOCK)
        own = {"pixelResolution": {"unit": "nm", "dimensions": vs[::-1]}}
        add_attrs(root / f"s{i}", **own, **({"transform": tf} if where == "dataset" else {}))
        datasets.append({"path": f"s{i}", "transform": tf})
    add_attrs(root, axes=["x", "y", "z"], units=["nm"] * 3,
               scales=[list(f[::-1]) for f, _ in LEVELS],
               pixelResolution={"unit": "nm", "dimensions": list(VS0[::-1])},
               multiscales=[{"datasets": datasets}])
    vol = voxgate.open(f"n5://{root}")
    # s1 is 8 nm, not its own pixelResolution (8 nm) times the group's factor 2
    assert [s.voxel_size.zyx() for s in vol.scales] == [
        pytest.approx([v * f for v, f in zip(VS0, factors, strict=True)]) for factors, _ in LEVELS]
    assert [s.offset for s in vol.scales] == [offset for _, offset in LEVELS]
    for i, (_, offset) in enumerate(LEVELS):
        level = vol.at_scale(i)
        assert level.bounds.start == offset
        np.testing.assert_array_equal(level.read(), levels[i])
        np.testing.assert_array_equal(ts_read(root / f"s{i}"), levels[i], err_msg="oracle")
    # the exact centres are kept (what a copy to OME-Zarr writes as its translation)
    centre1 = [o * v0 + (v0 * f - v0) / 2 for o, v0, f in zip(O0, VS0, LEVELS[1][0], strict=True)]
    assert vol.scales[1].translation == pytest.approx(centre1)


def test_paintera_resolution_and_offset(tmp_path: Path) -> None:
    """Paintera: "resolution" and "offset" (physical, x, y, z; the centre of the first voxel)
    on a multiscale group, with each sN's "downsamplingFactors"; or on a single dataset."""
    root = tmp_path / "paintera.n5" / "volumes" / "raw" / "data"
    s0, s1 = data("uint16", (5, 13, 19)), data("uint16", (5, 7, 10))
    ts_dataset(root / "s0", s0.T, BLOCK)
    ts_dataset(root / "s1", s1.T, BLOCK)
    add_attrs(root / "s1", downsamplingFactors=[2, 2, 1])
    add_attrs(root, multiScale=True, resolution=[4.0, 4.0, 40.0], offset=[-8.0, 12.0, 80.0])
    vol = voxgate.open(f"n5://{root}")
    assert [s.voxel_size.zyx() for s in vol.scales] == [(40.0, 4.0, 4.0), (40.0, 8.0, 8.0)]
    assert [s.offset for s in vol.scales] == [(2, 3, -2), (2, 1, -1)]
    np.testing.assert_array_equal(vol.at_scale(1).read(), s1)

    single = tmp_path / "single"
    ts_dataset(single, s0.T, BLOCK)
    add_attrs(single, resolution=[0.004, 0.004, 0.04], units=["um"] * 3,
               offset=[0.008, 0.012, 0.08])
    vol = voxgate.open(f"n5://{single}")
    assert vol.voxel_size.zyx() == pytest.approx((40.0, 4.0, 4.0))
    assert vol.offset == (2, 3, 2)
    np.testing.assert_array_equal(vol.read(), s0)
    np.testing.assert_array_equal(vol[1:4, 2:9, 3:17].read(), ts_read(single)[1:4, 2:9, 3:17])


def test_positions_between_voxels(tmp_path: Path) -> None:
    """A position within 1e-6 voxels of a whole voxel is that voxel, silently (float noise of
    5.24 nm steps); one further off is taken to the nearest voxel with a warning, and the exact
    position kept as the scale's translation."""
    expected = data("uint8")
    ts_dataset(tmp_path / "near", expected.T, BLOCK)
    add_attrs(tmp_path / "near", transform=cosem_transform(
        [5.24, 4.0, 4.0], [3 * 5.24 * (1 + 1e-9), 15.9999999, -8.0], "C"))
    vol = voxgate.open(f"n5://{tmp_path}/near")
    assert vol.offset == (3, 4, -2)

    ts_dataset(tmp_path / "off", expected.T, BLOCK)
    add_attrs(tmp_path / "off", transform=cosem_transform([40.0, 4.0, 4.0], [80.0, 13.6, 8.0],
                                                           "C"))
    with pytest.warns(VoxgateWarning, match=r"3\.4.*nearest whole voxel, offset \(2, 3, 2\)"):
        vol = voxgate.open(f"n5://{tmp_path}/off")
    assert vol.offset == (2, 3, 2)
    assert vol.scales[0].translation == pytest.approx((80.0, 13.6, 8.0))
    np.testing.assert_array_equal(vol.read(), expected)


def test_which_position_wins(tmp_path: Path) -> None:
    """voxgate's own attribute, then the dataset's COSEM transform, then its Paintera offset;
    an unreadable transform or offset is ignored with a warning naming it."""
    expected = data("uint8")
    tf = cosem_transform([40.0, 4.0, 4.0], [80.0, 12.0, 8.0], "C")
    ts_dataset(tmp_path / "d", expected.T, BLOCK)
    add_attrs(tmp_path / "d", transform=tf, offset=[400.0, 400.0, 400.0],
               resolution=[1.0, 1.0, 1.0])
    vol = voxgate.open(f"n5://{tmp_path}/d")
    assert (vol.voxel_size.zyx(), vol.offset) == ((40.0, 4.0, 4.0), (2, 3, 2))
    add_attrs(tmp_path / "d", voxgate={"offset": [1, 1, 1], "voxel_size": [9, 9, 9]})
    vol = voxgate.open(f"n5://{tmp_path}/d")
    assert (vol.voxel_size.zyx(), vol.offset) == ((9.0, 9.0, 9.0), (1, 1, 1))

    ts_dataset(tmp_path / "bad", expected.T, BLOCK)
    add_attrs(tmp_path / "bad", transform={**tf, "axes": ["a", "b", "c"]},
               offset=[8.0, "12", 80.0], resolution=[4, 4, 40])
    with pytest.warns(VoxgateWarning) as caught:
        vol = voxgate.open(f"n5://{tmp_path}/bad")
    assert sorted(str(w.message).split(" is ignored")[0].rsplit(" ", 1)[1] for w in caught) == [
        "'offset'", "'transform'"]
    assert (vol.voxel_size.zyx(), vol.offset) == ((40.0, 4.0, 4.0), (0, 0, 0))
