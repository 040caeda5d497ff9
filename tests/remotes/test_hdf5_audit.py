"""Audit of ``hdf5://`` against files made by h5py the way labs make them, with h5py as the truth.

Checks, voxel for voxel against what h5py reads or writes:

- reads of h5py datasets of every storage layout (contiguous, odd chunks, gzip, lzf,
  shuffle+gzip, Fletcher-32, scale-offset, resizable, big-endian, signed, nested groups, soft /
  external links, virtual datasets) and of chunks never written (the fill value);
- datasets voxgate does not read (bool, float16, strings, compounds, 0-D/1-D/2-D/5-D, empty,
  dangling links) are refused with a voxgate error, never a bare TypeError/ZeroDivisionError;
- the voxel size / offset / kind attribute conventions of docs/remotes/hdf5.md, in every
  unit spelling tools write, and malformed attributes (wrong length, not numbers, not finite)
  ignored with a VoxgateWarning rather than silently or with a crash;
- writes into h5py-made files (unaligned boxes across chunk borders and at the edges), read
  back with h5py; a write to a read-only volume and failed writes (dtype, bounds, shape) leave
  the file's bytes as they were;
- two threads writing through two Remotes on one file; two processes writing one file
  (everything written is there, or the second is refused); a forked child of a process that
  holds the file open for writing is refused instead of corrupting the file;
- copy h5py file -> zarr -> new HDF5 file keeps voxels, dtype, voxel size and offset;
- bad URLs and files that are not (intact) HDF5 give clear errors.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import voxgate
from voxgate.errors import (
    DtypeError,
    InvalidRequestError,
    OutOfBoundsError,
    ReadOnlyError,
    RemoteNotFoundError,
    RemoteUnavailableError,
    VoxgateError,
    VoxgateWarning,
)
from voxgate.geometry import Box

SHAPE = (20, 33, 17)
UNALIGNED = Box((2, 3, 1), (19, 30, 16))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sample(dtype: str = "uint16", shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.normal(100, 50, shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(max(info.min, -30000), min(info.max, 60000), shape,
                        endpoint=True).astype(dt)


# h5py create_dataset keyword arguments of each layout; the data is sample(dtype)
LAYOUTS: dict[str, tuple[str, dict[str, Any]]] = {
    "contiguous": ("uint16", {}),
    "odd-chunks": ("uint16", {"chunks": (3, 7, 5)}),
    "gzip": ("uint16", {"chunks": (4, 8, 8), "compression": "gzip"}),
    "lzf": ("uint16", {"chunks": (4, 8, 8), "compression": "lzf"}),
    "shuffle-gzip": ("uint16", {"chunks": (4, 8, 8), "compression": "gzip", "shuffle": True}),
    "fletcher32": ("uint16", {"chunks": (4, 8, 8), "fletcher32": True}),
    "scaleoffset": ("uint16", {"chunks": (4, 8, 8), "scaleoffset": 0}),
    "resizable": ("uint16", {"chunks": (5, 6, 7), "maxshape": (None, None, None)}),
    "big-endian-u2": (">u2", {"chunks": (4, 8, 8)}),
    "big-endian-i8": (">i8", {"chunks": (4, 8, 8), "compression": "gzip"}),
    "big-endian-f4": (">f4", {}),
    "int8": ("int8", {"chunks": (7, 7, 7)}),
    "int16": ("int16", {}),
    "float64": ("float64", {"chunks": (4, 8, 8), "compression": "gzip", "shuffle": True}),
}


def make_layout(path: Path, layout: str, name: str = "v") -> np.ndarray:
    dtype, kw = LAYOUTS[layout]
    data = sample(dtype)
    with h5py.File(path, "a") as f:
        f.create_dataset(name, data=data, **kw)
    return data


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_reads_h5py_layouts_voxel_for_voxel(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "f.h5"
    data = make_layout(path, layout)
    vol = voxgate.open(f"hdf5://{path}#/v")
    assert vol.dtype == data.dtype.newbyteorder("=")  # native order, same values
    assert vol.shape == SHAPE
    with h5py.File(path, "r") as f:
        truth = f["v"][...]
    np.testing.assert_array_equal(vol.read(), truth)
    np.testing.assert_array_equal(vol.read(UNALIGNED), truth[UNALIGNED.slices()])
    np.testing.assert_array_equal(vol[19, :, 16].read(), truth[19, :, 16])


def test_reads_links_nested_groups_and_virtual_datasets(tmp_path: Path) -> None:
    data = sample("uint16")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=data, chunks=(5, 5, 5))
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("g1/g2/g3/deep", data=data, chunks=(5, 5, 5), compression="gzip")
        f["soft"] = h5py.SoftLink("/g1/g2/g3/deep")
        f["ext"] = h5py.ExternalLink(str(other), "/x")
        layout = h5py.VirtualLayout(shape=SHAPE, dtype="uint16")
        layout[:10] = h5py.VirtualSource(str(other), "x", shape=SHAPE)[:10]
        f.create_virtual_dataset("vds", layout, fillvalue=7)
        f["dangling"] = h5py.SoftLink("/nowhere")
        f["ext_missing"] = h5py.ExternalLink(str(tmp_path / "gone.h5"), "/x")
    for name in ("g1/g2/g3/deep", "soft", "ext", "vds"):
        vol = voxgate.open(f"hdf5://{path}#{name}")
        with h5py.File(path, "r") as f:
            truth = f[name][...]
        np.testing.assert_array_equal(vol.read(), truth)
        np.testing.assert_array_equal(vol.read(UNALIGNED), truth[UNALIGNED.slices()])
        vol.remote.close()
    assert (voxgate.open(f"hdf5://{path}#vds")[10:].read() == 7).all()
    for name in ("dangling", "ext_missing"):
        with pytest.raises(RemoteNotFoundError, match="does not exist"):
            voxgate.open(f"hdf5://{path}#{name}")


def test_unwritten_chunks_read_as_the_datasets_fill_value(tmp_path: Path) -> None:
    path = tmp_path / "fill.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("v", shape=SHAPE, dtype="int16", chunks=(4, 8, 8), fillvalue=-7,
                              compression="gzip")
        ds[0:4, 0:8, 0:8] = 1
        f.create_dataset("c", shape=SHAPE, dtype="float32", fillvalue=2.5)  # contiguous, empty
    vol = voxgate.open(f"hdf5://{path}#/v")
    assert vol.meta.fill_value == -7
    with h5py.File(path, "r") as f:
        truth = f["v"][...]
    assert (truth == -7).sum() == truth.size - 4 * 8 * 8
    np.testing.assert_array_equal(vol.read(), truth)
    np.testing.assert_array_equal(vol.read(UNALIGNED), truth[UNALIGNED.slices()])
    assert vol.remote.absent_chunks(Box((0, 0, 0), (4, 16, 8))) == [(0, 1, 0)]
    cont = voxgate.open(f"hdf5://{path}#/c")
    assert cont.meta.fill_value == 2.5 and (cont.read() == 2.5).all()


def test_per_channel_chunks_never_written_are_absent(tmp_path: Path) -> None:
    """A 4-D file chunked (1, z, y, x) stores each channel's chunk apart: a channel never
    written makes missing="error" raise, not hidden behind channel 0's chunk; the cell is not
    an absent chunk (it holds channel 0's voxels: a copy skipping it lost them)."""
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("v", shape=(3, 8, 8, 8), dtype="uint8", chunks=(1, 4, 8, 8),
                              fillvalue=5)
        ds[0] = 1  # channel 0 everywhere
        ds[1, 0:4] = 2  # channel 1 in the first chunk only; channel 2 never
    vol = voxgate.open(f"hdf5://{path}#/v")
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(vol.read(), f["v"][...])
    assert vol.remote.absent_chunks(Box((0, 0, 0), (8, 8, 8))) == []
    strict = voxgate.open(f"hdf5://{path}#/v", missing="error")
    with pytest.raises(voxgate.errors.MissingChunkError, match=r"\(1, 0, 0\)"):
        strict.read()
    vol.remote.close()
    strict.remote.close()
    with h5py.File(path, "a") as f:
        f["v"][1:, 4:] = 3
        f["v"][2, :4] = 3
    again = voxgate.open(f"hdf5://{path}#/v", missing="error")
    assert again.remote.absent_chunks(Box((0, 0, 0), (8, 8, 8))) == []
    assert (again[2].read() == 3).all()


def _refused_file(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("bool", data=np.ones((2, 3, 4), bool))
        f.create_dataset("float16", data=np.ones((2, 3, 4), np.float16))
        f.create_dataset("strings", data=np.full((2, 2, 2), b"a"))
        f.create_dataset("compound", data=np.zeros((2, 2, 2), dtype=[("a", "u1"), ("b", "f4")]))
        f.create_dataset("scalar", data=5)
        f.create_dataset("one_d", data=np.arange(5, dtype="uint8"))
        f.create_dataset("two_d", data=np.zeros((3, 4), "uint8"))
        f.create_dataset("five_d", data=np.zeros((1, 2, 2, 2, 2), "uint8"))
        f.create_dataset("empty", shape=(0, 4, 4), dtype="uint8")
        f.create_dataset("pyramid/s0", shape=(4, 0, 4), dtype="uint8")


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("bool", "holds bool"),
        ("float16", "holds float16"),
        ("strings", "holds"),
        ("compound", "holds"),
        ("scalar", "0-D dataset"),
        ("one_d", "1-D dataset"),
        ("five_d", "5-D dataset"),
        ("empty", "is empty"),
        ("pyramid", "is empty"),
    ],
)
def test_datasets_voxgate_does_not_read_are_refused_clearly(
        tmp_path: Path, name: str, match: str) -> None:
    path = tmp_path / "r.h5"
    _refused_file(path)
    with pytest.raises(InvalidRequestError, match=match):
        voxgate.open(f"hdf5://{path}#/{name}")


# -- attribute conventions ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("attrs", "voxel_size", "offset"),
    [
        ({"voxel_size": [30, 4, 4], "voxel_offset": [1, 2, 3]}, (30, 4, 4), (1, 2, 3)),
        ({"resolution": np.array([40, 4, 4], "int32"), "offset": [400, 40, 80]},
         (40, 4, 4), (10, 10, 20)),
        ({"element_size_um": np.array([0.04, 0.004, 0.004], "float32")}, (40, 4, 4), (0, 0, 0)),
        ({"resolution": [1.0, 0.5, 0.5], "unit": "um"}, (1000, 500, 500), (0, 0, 0)),
        ({"resolution": [1.0, 0.5, 0.5], "unit": "\u00b5m"}, (1000, 500, 500), (0, 0, 0)),
        ({"resolution": [1.0, 0.5, 0.5], "unit": "\u03bcm"}, (1000, 500, 500), (0, 0, 0)),
        ({"resolution": [1.0, 0.5, 0.5], "unit": "micron"}, (1000, 500, 500), (0, 0, 0)),
        ({"resolution": [1.0, 0.5, 0.5], "unit": "microns"}, (1000, 500, 500), (0, 0, 0)),
        ({"resolution": [40, 4, 4], "unit": "nanometers"}, (40, 4, 4), (0, 0, 0)),
        ({"resolution": [1.0, 0.5, 0.5], "unit": np.bytes_(b"um")}, (1000, 500, 500), (0, 0, 0)),
        # CREMI's offset is in the unit: 2 um / 1 um = 2 voxels, 1 um / 0.5 um = 2
        ({"resolution": [1.0, 0.5, 0.5], "unit": "um", "offset": [2.0, 1.0, 1.0]},
         (1000, 500, 500), (2, 2, 2)),
    ],
    ids=["voxgate", "cremi-int", "ilastik", "um", "micro-sign",
         "greek-mu", "micron", "microns", "nanometers", "bytes-unit", "offset-in-um"],
)
def test_voxel_size_and_offset_conventions(
        tmp_path: Path, attrs: dict[str, Any], voxel_size: tuple[float, ...],
        offset: tuple[int, ...]) -> None:
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("v", data=np.zeros((2, 3, 4), "uint8"))
        for k, v in attrs.items():
            ds.attrs[k] = v
    vol = voxgate.open(f"{path}#/v")
    assert vol.voxel_size.zyx() == pytest.approx(voxel_size, rel=1e-6)
    assert vol.voxel_size.unit == "nm"
    assert tuple(vol.offset) == offset


@pytest.mark.parametrize(
    ("attrs", "match", "voxel_size", "offset"),
    [
        ({"resolution": [4.0, 4.0]}, "resolution=", (1, 1, 1), (0, 0, 0)),
        ({"resolution": [1, 40.0, 4.0, 4.0]}, "resolution=", (1, 1, 1), (0, 0, 0)),
        ({"resolution": "40,4,4"}, "resolution=", (1, 1, 1), (0, 0, 0)),
        ({"voxel_size": [-4.0, 4.0, 4.0]}, "voxel_size=", (1, 1, 1), (0, 0, 0)),
        ({"voxel_size": [np.inf, 4.0, 4.0]}, "voxel_size=", (1, 1, 1), (0, 0, 0)),
        ({"voxel_size": [np.nan, 4.0, 4.0]}, "voxel_size=", (1, 1, 1), (0, 0, 0)),
        ({"voxel_size": [1, 2], "resolution": [8, 8, 8]}, "voxel_size=", (8, 8, 8), (0, 0, 0)),
        ({"element_size_um": [0.5, 0.5]}, "element_size_um=", (1, 1, 1), (0, 0, 0)),
        ({"resolution": [2.0, 2.0, 2.0], "unit": "furlong"}, "unit 'furlong'", (2, 2, 2),
         (0, 0, 0)),
        ({"resolution": [40.0, 4.0, 4.0], "offset": [40.0, 4.0]}, "offset=", (40, 4, 4),
         (0, 0, 0)),
        ({"voxel_offset": [1.5, 0, 0], "offset": [2, 2, 2]}, "voxel_offset=", (1, 1, 1),
         (2, 2, 2)),
        ({"voxel_offset": "origin"}, "voxel_offset=", (1, 1, 1), (0, 0, 0)),
        # half a voxel in z: the nearest whole voxel, with a warning (was (0, 0, 0), silently)
        ({"resolution": [40.0, 4.0, 4.0], "offset": [20.0, 4.0, 4.0]}, "not a whole number",
         (40, 4, 4), (1, 1, 1)),
    ],
    ids=["res-2", "res-4", "res-string", "negative", "inf", "nan", "falls-through",
         "esu-2", "unknown-unit", "offset-2", "fractional-voxel-offset", "offset-string",
         "cremi-fractional-offset"],
)
def test_malformed_attributes_warn_and_fall_back(
        tmp_path: Path, attrs: dict[str, Any], match: str, voxel_size: tuple[float, ...],
        offset: tuple[int, ...]) -> None:
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("v", data=np.arange(24, dtype="uint8").reshape(2, 3, 4))
        for k, v in attrs.items():
            ds.attrs[k] = v
    with pytest.warns(VoxgateWarning, match=match) as record:
        vol = voxgate.open(f"{path}#/v")
    assert f"{path}#/v" in str(record[0].message)
    assert vol.voxel_size.zyx() == pytest.approx(voxel_size)
    assert tuple(vol.offset) == offset
    np.testing.assert_array_equal(vol.read(), np.arange(24).reshape(2, 3, 4))


@pytest.mark.parametrize("unit", ["um", "angstrom", "pm"])
def test_every_unit_create_writes_reopens_as_the_same_length(tmp_path: Path, unit: str) -> None:
    url = f"hdf5://{tmp_path}/u.h5#/v"
    voxgate.create(url, shape=(2, 2, 2), chunks=(2, 2, 2), dtype="uint8",
                   voxel_size=voxgate.geometry.VoxelSize(4, 4, 40, unit))
    with h5py.File(tmp_path / "u.h5", "r") as f:
        assert f["v"].attrs["unit"] == unit
    vs = voxgate.open(url).voxel_size
    nm = {"um": 1e3, "angstrom": 0.1, "pm": 1e-3}[unit]
    assert vs.unit == "nm" and vs.zyx() == pytest.approx((4 * nm, 4 * nm, 40 * nm))


def test_kind_attribute_and_guess(tmp_path: Path) -> None:
    path = tmp_path / "k.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=np.zeros((2, 2, 2), "uint8")).attrs["kind"] = np.bytes_(
            b"segmentation")
        f.create_dataset("b", data=np.zeros((2, 2, 2), ">u8"))
        f.create_dataset("c", data=np.zeros((2, 2, 2), "uint64")).attrs["kind"] = "labels"
        f.create_dataset("d", data=np.zeros((2, 2, 2), "uint16"))
    kinds = {n: voxgate.open(f"{path}#/{n}").kind for n in "abcd"}
    assert kinds == {"a": "segmentation", "b": "segmentation", "c": "segmentation",
                     "d": "image"}


# -- writes ---------------------------------------------------------------------------------------
WRITE_BOXES = [Box((1, 2, 3), (19, 31, 16)), Box((0, 0, 0), (1, 1, 1)),
               Box((17, 30, 14), (20, 33, 17)), Box((5, 0, 0), (9, 33, 17)),
               Box((3, 6, 4), (5, 9, 6))]


@pytest.mark.parametrize("layout", ["contiguous", "odd-chunks", "shuffle-gzip", "lzf",
                                    "scaleoffset", "resizable", "big-endian-u2", "int16",
                                    "float64"])
def test_writes_into_h5py_files_read_back_with_h5py(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "w.h5"
    truth = make_layout(path, layout)
    with h5py.File(path, "r") as f:
        stored_dtype, chunks, compression = f["v"].dtype, f["v"].chunks, f["v"].compression
    vol = voxgate.open(f"hdf5://{path}#/v", mode="r+")
    for i, box in enumerate(WRITE_BOXES):
        block = sample(vol.dtype.name, tuple(box.shape), seed=i + 1)
        vol.write(block, box)
        truth[box.slices()] = block
    np.testing.assert_array_equal(vol.read(), truth)
    vol.remote.close()
    with h5py.File(path, "r") as f:
        ds = f["v"]
        assert (ds.dtype, ds.chunks, ds.compression) == (stored_dtype, chunks, compression)
        np.testing.assert_array_equal(ds[...], truth)


def test_refused_writes_leave_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "w.h5"
    make_layout(path, "shuffle-gzip")
    before = sha(path)
    ro = voxgate.open(f"hdf5://{path}#/v")
    with pytest.raises(ReadOnlyError, match="mode='r\\+'"):
        ro[0:2, 0:2, 0:2] = 1
    ro.remote.close()
    assert sha(path) == before
    rw = voxgate.open(f"hdf5://{path}#/v", mode="r+")
    bad: list[tuple[type[Exception], Callable[[], None]]] = [
        (DtypeError, lambda: rw.write(np.full((2, 2, 2), 1.5), Box((0, 0, 0), (2, 2, 2)))),
        (DtypeError, lambda: rw.write(np.full((2, 2, 2), -1, "int64"), Box((0, 0, 0), (2, 2, 2)))),
        (OutOfBoundsError, lambda: rw.write(np.zeros((4, 4, 4), "uint16"),
                                            Box((18, 0, 0), (22, 4, 4)))),
        (InvalidRequestError, lambda: rw.write(np.zeros((3, 3, 3), "uint16"),
                                               Box((0, 0, 0), (2, 2, 2)))),
    ]
    for error, fn in bad:
        with pytest.raises(error):
            fn()
    rw.remote.close()
    assert sha(path) == before


def test_two_threads_write_one_h5py_file_through_two_remotes(tmp_path: Path) -> None:
    path = tmp_path / "t.h5"
    truth = make_layout(path, "odd-chunks")
    a = voxgate.open(f"hdf5://{path}#/v", mode="r+")
    b = voxgate.open(f"hdf5:///{path}#v", mode="r+")
    # interleaved slabs: neighbouring boxes share chunks (3, 7, 5), so each write is a
    # read-modify-write of chunks the other thread also writes
    boxes = [Box((0, 0, x), (20, 33, x + 1)) for x in range(17)]
    blocks = [np.full((20, 33, 1), 1000 + x, "uint16") for x in range(17)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(vol: voxgate.Volume, parity: int) -> None:
        start.wait()
        try:
            for _ in range(3):
                for i in range(parity, 17, 2):
                    vol.write(blocks[i], boxes[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v, p)) for v, p in ((a, 0), (b, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for box, block in zip(boxes, blocks, strict=True):
        truth[box.slices()] = block
    a.remote.close()
    b.remote.close()
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["v"][...], truth)


# -- processes ------------------------------------------------------------------------------------
def _write_slab(url: str, z: int, value: int, hold: Any, release: Any) -> str:
    try:
        vol = voxgate.open(url, mode="r+")
    except RemoteUnavailableError as exc:
        return f"refused: {exc}"
    vol.write(np.full((1, 33, 17), value, "uint16"), Box((z, 0, 0), (z + 1, 33, 17)))
    if hold is not None:
        hold.set()
        release.wait(30)
    vol.remote.close()
    return "ok"


def _child(conn: Any, fn: Callable[..., Any], *args: Any) -> None:
    try:
        conn.send(fn(*args))
    except BaseException as exc:
        conn.send(f"error: {type(exc).__name__}: {exc}")
    conn.close()


def _run(ctx: Any, fn: Callable[..., Any], *args: Any) -> tuple[Any, Any]:
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, fn, *args))
    proc.start()
    return proc, parent


def _in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a spawned interpreter, its result (or "error: ..." text).

    The tests that need a forked child fork it there, never from this process: pytest's
    process holds threads by now (tensorstore's thread pools, once any test has used them),
    and forking a process with threads can deadlock the child on a lock another thread held
    (Python 3.12 warns of it, an error under ``filterwarnings = error``).  The spawned
    interpreter has only imported voxgate when it forks, as a worker pool started at the top
    of a script would."""
    proc, out = _run(multiprocessing.get_context("spawn"), fn, *args)
    try:
        assert out.poll(120), "the spawned process gave no answer in 120 s"
        return out.recv()
    finally:
        proc.join(30)


def test_two_processes_writing_one_file(tmp_path: Path) -> None:
    """The second writer is refused while the first holds the file; one after the other both
    land.  (spawn: each child opens the file itself, the parent has no handle on it.)"""
    ctx = multiprocessing.get_context("spawn")
    path = tmp_path / "p.h5"
    truth = make_layout(path, "shuffle-gzip")
    url = f"hdf5://{path}#/v"
    hold, release = ctx.Event(), ctx.Event()
    first, first_out = _run(ctx, _write_slab, url, 2, 111, hold, release)
    assert hold.wait(60)
    second, second_out = _run(ctx, _write_slab, url, 5, 222, None, None)
    refused = second_out.recv()
    assert refused.startswith("refused: ") and "locked by another process" in refused
    second.join(30)
    release.set()
    assert first_out.recv() == "ok"
    first.join(30)
    third, third_out = _run(ctx, _write_slab, url, 5, 222, None, None)
    assert third_out.recv() == "ok"
    third.join(30)
    truth[2], truth[5] = 111, 222
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["v"][...], truth)


def _open_and_write(url: str) -> str:
    vol = voxgate.open(url, mode="r+")
    vol.write(np.full((1, 33, 17), 999, "uint16"), Box((0, 0, 0), (1, 33, 17)))
    vol.remote.close()
    return "ok"


def _write_inherited(vol: voxgate.Volume) -> str:
    vol.write(np.full((1, 33, 17), 999, "uint16"), Box((0, 0, 0), (1, 33, 17)))
    return "ok"


def _fork_a_writer(url: str, how: str) -> tuple[str, np.ndarray]:
    """(In a spawned process.)  Open ``url`` for writing, write slab 19, fork a child that
    writes through a new open or through the inherited volume, then write slab 18: what the
    child said and what the parent reads back afterwards."""
    ctx = multiprocessing.get_context("fork")
    parent = voxgate.open(url, mode="r+")
    parent[19] = 7
    if how == "reopen":
        proc, out = _run(ctx, _open_and_write, url)
    else:
        proc, out = _run(ctx, _write_inherited, parent)
    result = out.recv()
    proc.join(30)
    parent[18] = 8
    after = parent.read()
    parent.remote.close()
    return result, after


@pytest.mark.parametrize("how", ["reopen", "inherited-volume"])
def test_forked_child_of_a_writer_is_refused_not_corrupting(tmp_path: Path, how: str) -> None:
    """A child forked while the parent has the file open for writing shares the parent's HDF5
    state; writing through it (or through HDF5's reuse of it on a new open) corrupted the
    file.  The child must be refused clearly and the parent's data stay intact."""
    path = tmp_path / "fork.h5"
    truth = make_layout(path, "shuffle-gzip")
    answer = _in_fresh_process(_fork_a_writer, f"hdf5://{path}#/v", how)
    assert isinstance(answer, tuple), answer
    result, parent_read = answer
    assert result.startswith("error: RemoteUnavailableError") and "forked" in result
    truth[19], truth[18] = 7, 8
    np.testing.assert_array_equal(parent_read, truth)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["v"][...], truth)


def _read_sum(url: str) -> str:
    return str(int(voxgate.open(url).read().astype(np.int64).sum()))


def _fork_a_reader(url: str) -> tuple[tuple[int, ...], str]:
    """(In a spawned process.)  Read ``url``, keep it open, and fork a child that reads it."""
    reader = voxgate.open(url)
    shape = tuple(reader.read().shape)
    proc, out = _run(multiprocessing.get_context("fork"), _read_sum, url)
    result = out.recv()
    proc.join(30)
    return shape, result


def test_forked_child_of_a_reader_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "r.h5"
    truth = make_layout(path, "gzip")
    answer = _in_fresh_process(_fork_a_reader, f"hdf5://{path}#/v")
    assert answer == (SHAPE, str(int(truth.astype(np.int64).sum())))


# -- copy -----------------------------------------------------------------------------------------
def test_copy_h5py_file_to_zarr_and_back_to_a_new_hdf5_file(tmp_path: Path) -> None:
    path = tmp_path / "cremi.h5"
    data = sample(">u8")
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("volumes/labels/neuron_ids", data=data, chunks=(5, 7, 6),
                              compression="gzip")
        ds.attrs["resolution"] = [40.0, 4.0, 4.0]
        ds.attrs["offset"] = [80.0, 8.0, 12.0]
    src = voxgate.open(f"{path}#/volumes/labels/neuron_ids")
    voxgate.copy(src, f"zarr://{tmp_path}/mid.zarr", progress=False)
    mid = voxgate.open(f"zarr://{tmp_path}/mid.zarr")
    voxgate.copy(mid, f"hdf5://{tmp_path}/back.h5#/out", progress=False)
    back = voxgate.open(f"hdf5://{tmp_path}/back.h5#/out")
    for vol in (mid, back):
        assert vol.dtype == np.dtype("uint64")
        assert vol.voxel_size.zyx() == (40.0, 4.0, 4.0)
        assert tuple(vol.offset) == (2, 2, 3)
        assert vol.kind == "segmentation"
        np.testing.assert_array_equal(vol.read(), data)
    back.remote.close()
    with h5py.File(tmp_path / "back.h5", "r") as f:
        np.testing.assert_array_equal(f["out"][...], data)
        assert list(f["out"].attrs["resolution"]) == [40, 4, 4]
        assert list(f["out"].attrs["offset"]) == [80, 8, 12]


# -- bad URLs and files ---------------------------------------------------------------------------
def test_bad_urls_and_files(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("volumes/raw", data=np.zeros((2, 3, 4), "uint8"))
        f.create_dataset("volumes/labels", data=np.zeros((2, 3, 4), "uint64"))
    with pytest.raises(InvalidRequestError, match="several volumes"):
        voxgate.open(f"hdf5://{path}")  # missing '#', two volumes
    assert voxgate.open(f"hdf5://{path}#/volumes/raw").shape == (2, 3, 4)
    with pytest.raises(RemoteNotFoundError, match="group without a dataset s0"):
        voxgate.open(f"hdf5://{path}#/volumes")
    with pytest.raises(RemoteNotFoundError, match="does not exist; it holds"):
        voxgate.open(f"hdf5://{path}#/volumes/nope")
    with pytest.raises(RemoteNotFoundError, match="does not exist"):
        voxgate.open(f"hdf5://{tmp_path}/missing.h5#/v")
    with pytest.raises(InvalidRequestError, match="is a directory"):
        voxgate.open(f"hdf5://{tmp_path}#/v")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(InvalidRequestError, match="not an HDF5 file"):
        voxgate.open(f"hdf5://{tmp_path}/text.h5#/v")
    # the HDF5 signature, then garbage: HDF5 says "bad superblock", which is not a lock
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(InvalidRequestError, match="damaged or truncated") as info:
        voxgate.open(f"hdf5://{tmp_path}/bad.h5#/v")
    assert not isinstance(info.value, RemoteUnavailableError)
    whole = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(VoxgateError, match="truncated"):
        voxgate.open(f"hdf5://{tmp_path}/cut.h5#/volumes/raw")


def test_an_axes_attribute_in_another_order_is_refused(tmp_path: Path) -> None:
    """A channel-last (z, y, x, c) or x, y, z dataset saying so in its ``axes`` attribute was
    read as (c, z, y, x) / (z, y, x), silently transposed; it is refused naming its axes.
    voxgate's own order, and a dataset without the attribute, open as before."""
    path = tmp_path / "axes.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("zyxc", data=np.zeros((4, 5, 6, 2), np.uint8)).attrs["axes"] = [
            "z", "y", "x", "c"]
        f.create_dataset("xyz", data=np.zeros((4, 5, 6), np.uint8)).attrs["axes"] = [
            "x", "y", "z"]
        f.create_dataset("czyx", data=np.arange(240, dtype=np.uint8).reshape(2, 4, 5, 6)
                         ).attrs["axes"] = ["c", "z", "y", "x"]
        f.create_dataset("plain", data=np.zeros((4, 5, 6), np.uint8))
    for name, words in (("zyxc", r"axes \['z', 'y', 'x', 'c'\]"), ("xyz", "axes")):
        with pytest.raises(InvalidRequestError, match=words):
            voxgate.open(f"hdf5://{path}#/{name}")
    vol = voxgate.open(f"hdf5://{path}#/czyx")
    assert vol.meta.num_channels == 2
    np.testing.assert_array_equal(vol.read(), np.arange(240, dtype=np.uint8).reshape(2, 4, 5, 6))
    assert voxgate.open(f"hdf5://{path}#/plain").shape == (4, 5, 6)
