from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
import pytest
from hypothesis import settings

import voxgate
from voxgate.errors import (
    CorruptChunkError,
    InvalidRequestError,
    ReadOnlyError,
    RemoteExistsError,
    RemoteNotFoundError,
)
from voxgate.geometry import Box
from voxgate.testing import RemoteTests, remote_state_machine

from .scratch import scratch_dir

ALL_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
              "float32", "float64")


def damage(path: Path, dataset: str, coord: tuple[int, ...]) -> None:
    """Overwrite bytes inside the stored chunk at ``coord`` of ``dataset``, in place on disk."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info_by_coord(coord)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 8)
        fh.write(os.urandom(16))


class TestHDF5(RemoteTests):
    dtypes = ALL_DTYPES

    def url(self, tmp_path: Path, name: str) -> str:
        return f"hdf5://{tmp_path}/{name}.h5#/volume"

    def corrupt_chunk(self, vol: voxgate.Volume, tmp_path: Path) -> str:
        # close voxgate's handle so the next open reads the damaged bytes, not HDF5's cache
        vol.remote.close()
        damage(tmp_path / "vol.h5", "/volume", (0, 0, 0))
        return "vol.h5#/volume chunk (0, 0, 0)"


class TestHDF5BarePath(TestHDF5):
    """No scheme (the registry detects .h5) and no fragment (the default dataset /volume)."""

    def url(self, tmp_path: Path, name: str) -> str:
        return f"{tmp_path}/{name}.h5"


class TestHDF5SharedFile(RemoteTests):
    """Every volume of a test in one file: one h5py handle serves them all."""

    dtypes = ALL_DTYPES

    def url(self, tmp_path: Path, name: str) -> str:
        return f"hdf5://{tmp_path}/all.h5#/volumes/{name}"

    def corrupt_chunk(self, vol: voxgate.Volume, tmp_path: Path) -> str:
        vol.remote.close()
        damage(tmp_path / "all.h5", "/volumes/vol", (0, 0, 0))
        return "all.h5#/volumes/vol chunk (0, 0, 0)"


class TestHDF5Uncompressed(TestHDF5):
    """Without compression only the Fletcher-32 checksum notices a damaged chunk."""

    create_options: ClassVar[dict[str, Any]] = {"compression": "none"}


TestHDF5StateMachine = remote_state_machine(
    lambda name: f"hdf5://{scratch_dir()}/{name}.h5").TestCase
TestHDF5StateMachine.settings = settings(max_examples=10, stateful_step_count=10, deadline=None)


def run_python(code: str, *args: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout


# -- voxgate writes, h5py reads -------------------------------------------------------------------
def test_h5py_reads_what_voxgate_wrote(tmp_path: Path) -> None:
    path = tmp_path / "seg.h5"
    vol = voxgate.create(f"hdf5://{path}#/labels/seg", shape=(10, 20, 30), chunks=(4, 8, 8),
                         dtype="uint64", voxel_size=(40, 8, 8), offset=(2, 4, 6),
                         kind="segmentation")
    data = RemoteTests.random((10, 20, 30), "uint64")
    vol[:] = data
    vol.remote.close()
    with h5py.File(path, "r") as f:
        ds = f["/labels/seg"]
        np.testing.assert_array_equal(ds[...], data)
        assert ds.chunks == (4, 8, 8)
        assert ds.compression == "gzip" and ds.shuffle and ds.fletcher32
        assert list(ds.attrs["voxel_size"]) == [40, 8, 8]
        assert ds.attrs["unit"] == "nm"
        assert list(ds.attrs["voxel_offset"]) == [2, 4, 6]
        assert ds.attrs["kind"] == "segmentation"
        assert list(ds.attrs["resolution"]) == [40, 8, 8]
        assert list(ds.attrs["offset"]) == [80, 32, 48]  # CREMI: physical units
        assert [a.decode() if isinstance(a, bytes) else a for a in ds.attrs["axes"]] == [
            "z", "y", "x"]


def test_h5py_reads_multiscale_group(tmp_path: Path) -> None:
    path = tmp_path / "ms.h5"
    vol = voxgate.create(f"hdf5://{path}#/raw", shape=(8, 32, 40), chunks=(8, 16, 16),
                         dtype="uint8", voxel_size=(40, 8, 8), num_scales=3)
    coarse = RemoteTests.random(tuple(vol.scales[2].shape), "uint8")
    vol.at_scale(2)[:] = coarse
    vol.remote.close()
    with h5py.File(path, "r") as f:
        g = f["/raw"]
        assert sorted(g) == ["s0", "s1", "s2"]
        assert g.attrs["multiScale"]
        assert g.attrs["kind"] == "image"
        assert g.attrs["scales"].tolist() == [[1, 1, 1], [1, 2, 2], [1, 4, 4]]
        assert list(g["s2"].attrs["downsamplingFactors"]) == [1, 4, 4]
        assert list(g["s2"].attrs["voxel_size"]) == [40, 32, 32]
        assert g["s2"].shape == (8, 8, 10)
        assert g["s2"].chunks == (8, 8, 10)  # clipped to the coarse scale's shape
        np.testing.assert_array_equal(g["s2"][...], coarse)
    again = voxgate.open(f"{path}#/raw")
    assert len(again.scales) == 3
    one = voxgate.open(f"{path}#/raw/s1")  # a dataset URL opens that one scale
    assert len(one.scales) == 1 and one.voxel_size.zyx() == (40.0, 16.0, 16.0)


def test_writes_are_on_disk_when_write_returns(tmp_path: Path) -> None:
    """Each write is flushed: another process (file locking off) sees it while voxgate still
    holds the file open for writing."""
    path = tmp_path / "live.h5"
    vol = voxgate.create(f"hdf5://{path}", shape=(8, 16, 16), chunks=(8, 8, 8), dtype="uint16",
                         voxel_size=(1, 1, 1))
    vol[0:8, 0:8, 0:8] = 1234
    code = "import sys, h5py; print(int(h5py.File(sys.argv[1], 'r')['/volume'][...].sum()))"
    out = run_python(code, str(path), HDF5_USE_FILE_LOCKING="FALSE")
    assert int(out) == 1234 * 512


def test_spec_reopens_in_another_process(tmp_path: Path) -> None:
    vol = voxgate.create(f"hdf5://{tmp_path}/p.h5", shape=(4, 4, 4), chunks=(4, 4, 4),
                         dtype="uint8", voxel_size=(1, 1, 1))
    vol[:] = 9
    spec = vol.remote.spec()
    assert spec == {"url": f"hdf5://{tmp_path}/p.h5#/volume", "mode": "r+"}
    vol.remote.close()  # HDF5 lets one process write a file at a time
    code = (
        "import sys, json, voxgate; spec = json.loads(sys.argv[1]);"
        "v = voxgate.open(spec['url'], mode=spec['mode']); v[0, 0, 0] = 1;"
        "print(int(v.read().sum()))"
    )
    assert run_python(code, json.dumps(spec)).strip() == str(9 * 64 - 8)
    assert voxgate.open(spec["url"])[0, 0, 0].read() == 1


# -- h5py writes, voxgate reads -------------------------------------------------------------------
def test_reads_plain_h5py_dataset(tmp_path: Path) -> None:
    """No attributes, contiguous (unchunked) and big-endian: everything defaults sensibly."""
    path = tmp_path / "plain.h5"
    data = RemoteTests.random((5, 70, 9), "uint16")
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=data.astype(">u2"))
    vol = voxgate.open(str(path))  # the only dataset
    assert vol.url == f"hdf5://{path}#/raw"
    assert vol.shape == (5, 70, 9) and vol.dtype == np.dtype("uint16")
    assert vol.voxel_size.zyx() == (1.0, 1.0, 1.0)
    assert vol.kind == "image"
    assert tuple(vol.chunks) == (5, 64, 9)  # voxgate's block size for a contiguous dataset
    assert tuple(vol.offset) == (0, 0, 0)
    np.testing.assert_array_equal(vol.read(), data)
    np.testing.assert_array_equal(vol[1:4, 60:, 2].read(), data[1:4, 60:, 2])
    rw = voxgate.open(str(path), mode="r+")
    rw[:, 0:64] = 3  # two of voxgate's blocks, written from two threads
    data[:, 0:64] = 3
    rw.remote.close()
    vol.remote.close()
    with h5py.File(path, "r") as f:
        assert f["raw"].dtype == np.dtype(">u2")
        np.testing.assert_array_equal(f["raw"][...], data)


def test_reads_h5py_dataset_with_voxgate_attributes(tmp_path: Path) -> None:
    path = tmp_path / "attrs.h5"
    data = RemoteTests.random((4, 6, 8), "uint32")
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("a/b", data=data, chunks=(2, 3, 4))
        ds.attrs["voxel_size"] = [30.0, 4.0, 4.0]
        ds.attrs["unit"] = "nm"
        ds.attrs["voxel_offset"] = [1, 2, 3]
        ds.attrs["kind"] = "image"
    vol = voxgate.open(f"hdf5://{path}#a/b")
    assert vol.url == f"hdf5://{path}#/a/b"
    assert vol.voxel_size.zyx() == (30.0, 4.0, 4.0)
    assert tuple(vol.offset) == (1, 2, 3)
    assert vol.kind == "image"  # the attribute wins over the uint32 guess
    assert tuple(vol.chunks) == (2, 3, 4)
    np.testing.assert_array_equal(vol.read(Box((2, 3, 4), (4, 6, 8))), data[1:3, 1:4, 1:5])


@pytest.mark.parametrize(
    ("attrs", "voxel_size", "offset"),
    [
        ({"resolution": [40.0, 4.0, 4.0], "offset": [400.0, 40.0, 80.0]}, (40, 4, 4), (10, 10, 20)),
        ({"element_size_um": [0.05, 0.01, 0.01]}, (50, 10, 10), (0, 0, 0)),
        ({"resolution": [1.0, 2.0, 2.0], "unit": "um"}, (1000, 2000, 2000), (0, 0, 0)),
    ],
    ids=["cremi", "ilastik", "micrometres"],
)
def test_reads_other_tools_voxel_attributes(
    tmp_path: Path, attrs: dict[str, Any], voxel_size: tuple[int, ...], offset: tuple[int, ...]
) -> None:
    path = tmp_path / "t.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("volumes/raw", data=np.zeros((2, 3, 4), "uint8"))
        for k, v in attrs.items():
            ds.attrs[k] = v
    vol = voxgate.open(f"{path}#/volumes/raw")
    assert vol.voxel_size.zyx() == pytest.approx(voxel_size)
    assert tuple(vol.offset) == offset


def test_reads_h5py_multiscale_group_without_voxgate_attributes(tmp_path: Path) -> None:
    path = tmp_path / "pyr.h5"
    s0 = RemoteTests.random((8, 16, 16), "uint8")
    with h5py.File(path, "w") as f:
        g = f.create_group("pyramid")
        g.attrs["voxel_size"] = [8.0, 8.0, 8.0]
        g.create_dataset("s0", data=s0, chunks=(4, 8, 8))
        g.create_dataset("s1", data=s0[::2, ::2, ::2], chunks=(4, 8, 8))
        g.create_dataset("s2", data=s0[::4, ::4, ::4], chunks=(2, 4, 4))
        g.create_dataset("notes", data=np.zeros(3))  # not a scale: ignored
    vol = voxgate.open(str(path))
    assert vol.url == f"hdf5://{path}#/pyramid"
    assert [s.voxel_size.zyx() for s in vol.scales] == [(8.0,) * 3, (16.0,) * 3, (32.0,) * 3]
    assert [s.key for s in vol.scales] == ["s0", "s1", "s2"]
    np.testing.assert_array_equal(vol.at_scale(2).read(), s0[::4, ::4, ::4])


def test_reads_four_dimensional_as_channels(tmp_path: Path) -> None:
    path = tmp_path / "rgb.h5"
    data = RemoteTests.random((3, 4, 5, 6), "uint8")
    with h5py.File(path, "w") as f:
        f.create_dataset("rgb", data=data, chunks=(3, 2, 5, 6))
        f.create_dataset("mask", data=data[:1], chunks=(1, 2, 5, 6))
    expected_mask = data[0].copy()
    vol = voxgate.open(f"{path}#/rgb", mode="r+")
    assert vol.shape == (3, 4, 5, 6) and vol.meta.num_channels == 3
    np.testing.assert_array_equal(vol[1, 2:4].read(), data[1, 2:4])
    vol[:, 0] = 0
    data[:, 0] = 0
    np.testing.assert_array_equal(vol.read(), data)
    mask = voxgate.open(f"{path}#/mask", mode="r+")  # one channel: read as (z, y, x)
    assert mask.shape == (4, 5, 6)
    mask[1] = 7
    expected_mask[1] = 7
    np.testing.assert_array_equal(mask.read(), expected_mask)


def test_multichannel_round_trip(tmp_path: Path) -> None:
    vol = voxgate.create(f"{tmp_path}/c.h5", shape=(6, 10, 12), chunks=(4, 8, 8),
                         dtype="float32", voxel_size=(8, 8, 8), num_channels=2)
    data = RemoteTests.random((2, 6, 10, 12), "float32")
    vol[:] = data
    np.testing.assert_array_equal(voxgate.open(f"{tmp_path}/c.h5").read(), data)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["volume"].shape == (2, 6, 10, 12)
        assert f["volume"].chunks == (2, 4, 8, 8)


# -- which dataset, and errors --------------------------------------------------------------------
def test_default_dataset_choice(tmp_path: Path) -> None:
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=np.zeros((2, 2, 2), "uint8"))
        f.create_dataset("b/c", data=np.zeros((2, 2, 2), "uint8"))
        f.create_dataset("table", data=np.zeros((5, 2)))  # 2-D: not a volume
    with pytest.raises(InvalidRequestError, match=r"several volumes.*/a.*/b/c"):
        voxgate.open(str(path))
    with h5py.File(path, "a") as f:
        f.create_dataset("volume", data=np.ones((2, 2, 2), "uint8"))
    assert voxgate.open(str(path)).url.endswith("#/volume")
    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()
    with pytest.raises(RemoteNotFoundError, match="holds no 3-D"):
        voxgate.open(str(empty))


def test_missing_things(tmp_path: Path) -> None:
    with pytest.raises(RemoteNotFoundError, match="does not exist"):
        voxgate.open(f"hdf5://{tmp_path}/nope.h5#/volume")
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=np.zeros((2, 2, 2), "uint8"))
        f.create_group("empty")
    with pytest.raises(RemoteNotFoundError, match=r"#/seg does not exist; it holds /raw"):
        voxgate.open(f"hdf5://{path}#/seg")
    with pytest.raises(RemoteNotFoundError, match="group without a dataset s0"):
        voxgate.open(f"hdf5://{path}#/empty")
    with pytest.raises(RemoteExistsError, match="not a volume"):
        voxgate.create(f"hdf5://{path}#/empty", shape=(2, 2, 2), chunks=(2, 2, 2),
                       dtype="uint8", voxel_size=(1, 1, 1))
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(InvalidRequestError, match="not an HDF5 file"):
        voxgate.open(str(tmp_path / "text.h5"))
    with pytest.raises(InvalidRequestError, match="local files only"):
        voxgate.open("hdf5://s3://bucket/f.h5#/raw")


def test_bad_options(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(shape=(4, 4, 4), chunks=(4, 4, 4), dtype="uint8",
                              voxel_size=(1, 1, 1))
    with pytest.raises(InvalidRequestError, match="compression must be one of"):
        voxgate.create(f"{tmp_path}/x.h5", compression="lzf", **kw)
    with pytest.raises(InvalidRequestError, match="compression_level"):
        voxgate.create(f"{tmp_path}/x.h5", compression_level=12, **kw)
    with pytest.raises(InvalidRequestError, match="unknown option"):
        voxgate.create(f"{tmp_path}/x.h5", zarr_format=2, **kw)
    voxgate.create(f"{tmp_path}/x.h5", **kw)
    with pytest.raises(InvalidRequestError, match="unknown option"):
        voxgate.open(f"{tmp_path}/x.h5", swmr=True)


def test_corrupt_chunk_is_named_with_its_file_offset(tmp_path: Path) -> None:
    path = tmp_path / "d.h5"
    vol = voxgate.create(f"{path}", shape=(16, 32, 32), chunks=(8, 16, 16), dtype="uint16",
                         voxel_size=(1, 1, 1), offset=(100, 0, 0))
    vol[:] = RemoteTests.random((16, 32, 32), "uint16")
    vol.remote.close()
    damage(path, "/volume", (8, 16, 0))
    again = voxgate.open(str(path), mode="r+")
    with pytest.raises(CorruptChunkError) as info:
        again.read()
    assert info.value.chunk == f"{path}#/volume chunk (1, 1, 0)"
    assert "file offset" in str(info.value) and "voxels 108:116,16:32,0:16" in str(info.value)
    # the chunks around it still read, and a partial write into it is refused, never zeroed
    assert again[0:8].read().any()
    with pytest.raises(voxgate.errors.PartialWriteError) as werr:
        again[7:9, 15:17, 0:2] = 1
    assert isinstance(werr.value.__cause__, CorruptChunkError)
    # overwriting the whole chunk replaces it without reading it, which repairs it
    again[8:16, 16:32, 0:16] = 5
    assert (again[8:16, 16:32, 0:16].read() == 5).all()


# -- files shared between Remotes and threads -----------------------------------------------------
def test_reader_first_then_writer_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "rw.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=np.zeros((4, 4, 4), "uint8"), chunks=(2, 2, 2))
    reader = voxgate.open(f"{path}#/a")  # HDF5 handle opened read-only
    writer = voxgate.open(f"{path}#/a", mode="r+")  # ... reopened read-write for both
    writer[:] = 6
    assert (reader.read() == 6).all()
    with pytest.raises(ReadOnlyError):
        reader[0, 0, 0] = 1
    created = voxgate.create(f"{path}#/b", shape=(2, 2, 2), chunks=(2, 2, 2), dtype="uint8",
                             voxel_size=(1, 1, 1))
    created[:] = 1
    assert (reader.read() == 6).all() and (voxgate.open(f"{path}#/b").read() == 1).all()


def test_writer_refused_while_user_holds_file_read_only(tmp_path: Path) -> None:
    path = tmp_path / "held.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=np.zeros((4, 4, 4), "uint8"))
    with h5py.File(path, "r"):
        with pytest.raises(ReadOnlyError, match="holds it open read-only"):
            voxgate.open(f"{path}#/a", mode="r+")
        assert not voxgate.open(f"{path}#/a").read().any()


def test_concurrent_reads_and_writes_from_threads(tmp_path: Path) -> None:
    path = tmp_path / "threads.h5"
    shape = (16, 64, 64)
    vol = voxgate.create(f"{path}#/a", shape=shape, chunks=(4, 16, 16), dtype="uint32",
                         voxel_size=(1, 1, 1))
    other = voxgate.create(f"{path}#/b", shape=shape, chunks=(8, 8, 8), dtype="uint8",
                           voxel_size=(1, 1, 1))
    data = RemoteTests.random(shape, "uint32")
    vol.write(data, workers=8)  # 64 chunks written from 8 threads through one handle
    np.testing.assert_array_equal(vol.read(), data)
    rng = np.random.default_rng(1)
    boxes = []
    for _ in range(64):
        start = [int(rng.integers(0, n - 1)) for n in shape]
        stop = [int(rng.integers(a + 1, n + 1)) for a, n in zip(start, shape, strict=True)]
        boxes.append(Box(start, stop))

    def work(i: int) -> None:
        b = boxes[i]
        if i % 2:
            np.testing.assert_array_equal(vol.read(b), data[b.slices()])
        else:
            other.write(i, b)

    reader = voxgate.open(f"{path}#/a")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(64)))
        futures = [pool.submit(reader.read, b) for b in boxes]
        for b, fut in zip(boxes, futures, strict=True):
            np.testing.assert_array_equal(fut.result(), data[b.slices()])


def test_copy_between_hdf5_and_n5(tmp_path: Path) -> None:
    src = voxgate.create(f"{tmp_path}/src.h5", shape=(12, 40, 40), chunks=(4, 16, 16),
                         dtype="uint16", voxel_size=(40, 8, 8), num_scales=2, offset=(1, 2, 3))
    data = RemoteTests.random((12, 40, 40), "uint16")
    src[:] = data
    voxgate.copy(src, f"n5://{tmp_path}/dst.n5", progress=False)
    dst = voxgate.open(f"n5://{tmp_path}/dst.n5")
    assert [s.voxel_size for s in dst.scales] == [s.voxel_size for s in src.scales]
    assert [s.offset for s in dst.scales] == [s.offset for s in src.scales]
    np.testing.assert_array_equal(dst.read(), data)
    voxgate.copy(dst, f"{tmp_path}/back.h5", progress=False)
    back = voxgate.open(f"{tmp_path}/back.h5")
    assert len(back.scales) == 2 and tuple(back.offset) == (1, 2, 3)
    np.testing.assert_array_equal(back.read(), data)


def test_file_locked_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "locked.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("volume", data=np.zeros((2, 2, 2), "uint8"))
    code = "import sys, h5py; f = h5py.File(sys.argv[1], 'r+'); print('ready', flush=True); " \
           "sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(voxgate.errors.RemoteUnavailableError, match="locked by another"):
            voxgate.open(str(path))
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
    assert not voxgate.open(str(path)).read().any()


def test_a_file_deleted_and_made_again_while_a_volume_is_open_is_the_new_file(
        tmp_path: Path) -> None:
    """The process shares one h5py handle per path; a file deleted (and made again under its
    name, by voxgate or by h5py) while a Volume still holds the old handle is opened anew,
    not served from the deleted file nor refused as "not a volume"."""
    path = tmp_path / "a.h5"
    url = f"hdf5://{path}#/v"
    old = voxgate.create(url, shape=(8, 16, 16), dtype="uint8", chunks=(8, 16, 16),
                         voxel_size=(1, 1, 1))
    old[:] = np.uint8(3)
    path.unlink()
    new = voxgate.create(url, shape=(4, 8, 8), dtype="uint16", chunks=(4, 8, 8),
                         voxel_size=(2, 2, 2))
    new[:] = np.uint16(400)
    with h5py.File(path, "r") as f:
        assert f["v"].shape == (4, 8, 8) and (f["v"][...] == 400).all()
    assert (old.read() == 3).all()  # the old Volume keeps its (deleted) file
    path.unlink()
    with h5py.File(path, "w") as f:  # made again by another tool
        f.create_dataset("v", data=np.full((2, 3, 5), 9, np.int32))
    again = voxgate.open(url)
    assert again.shape == (2, 3, 5) and (again.read() == 9).all()
