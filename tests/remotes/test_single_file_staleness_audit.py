"""A handle on a single-file store (one TIFF, a directory of TIFF slices, an HDF5 file) opened
before the file was written by someone else sees the write at its next read, or the read
raises an error telling to open it again: never old data, nor new bytes read through the old
structure.

Every file is aged (its modification time set to 2001) before a handle opens it, so any later
write changes its stamp whatever the clock's granularity: no test depends on time passing.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tifffile

import voxgate
from voxgate.errors import InvalidRequestError, RemoteNotFoundError
from voxgate.remotes.hdf5 import files as h5files
from voxgate.remotes.tiff import remote as tiff_remote

_OLD_NS = 978_307_200 * 10**9  # 2001-01-01


def _aged(path: Path) -> None:
    os.utime(path, ns=(_OLD_NS, _OLD_NS))


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Python ``code`` in another process (the other writer)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


def _tiff(path: Path, data: np.ndarray, **kw: object) -> None:
    tifffile.imwrite(path, data, photometric="minisblack", **kw)  # type: ignore[arg-type]
    _aged(path)


def _count_reparses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one each time a TIFF volume parses its one file again."""
    parsed: list[int] = []
    real = tiff_remote.TiffRemote._reparse_file

    def reparse(self: tiff_remote.TiffRemote, stamp: Any) -> None:
        parsed.append(1)
        real(self, stamp)

    monkeypatch.setattr(tiff_remote.TiffRemote, "_reparse_file", reparse)
    return parsed


class _OtherDevice:
    """A stat result of another device number (the file seen through another host's NFS
    mount)."""

    def __init__(self, st: os.stat_result) -> None:
        self._st = st

    def __getattr__(self, name: str) -> Any:
        return getattr(self._st, name) + (1 if name == "st_dev" else 0)


def _other_device(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    real = os.stat

    def stat(p: Any, *args: Any, **kw: Any) -> Any:
        st = real(p, *args, **kw)
        return _OtherDevice(st) if os.fspath(p) == str(path) else st

    monkeypatch.setattr(os, "stat", stat)


# -- one TIFF file ----------------------------------------------------------------------------
@pytest.mark.parametrize("writer", ["this process", "another process"])
def test_tiff_compressed_tile_written_by_another_handle_is_seen(tmp_path: Path,
                                                                writer: str) -> None:
    """A compressed tile written through another handle goes to the file's end and its offset
    entry is updated in place; the first handle read the old tile through its old offsets."""
    path = tmp_path / "x.tif"
    _tiff(path, np.zeros((2, 32, 32), np.uint16), tile=(16, 16), compression="zlib")
    a = voxgate.open(str(path))
    assert not a[0:1, 0:16, 0:16].read().any()
    if writer == "this process":
        b = voxgate.open(str(path), mode="r+")
        b[0:1, 0:16, 0:16] = np.uint16(7)
    else:
        done = _run(f"""
            import numpy as np, voxgate
            b = voxgate.open({str(path)!r}, mode="r+")
            b[0:1, 0:16, 0:16] = np.uint16(7)
        """)
        assert done.returncode == 0, done.stderr
    got = a[0:1, 0:32, 0:32].read()
    assert (got[0, :16, :16] == 7).all() and not got[0, 16:].any() and not got[0, :, 16:].any()


def test_tiff_parsed_again_never_between_a_tiles_two_entry_updates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compressed tile's byte count entry is updated, then its offset entry.  A reader that
    parsed the file between the two read the old tile's bytes with the new length ('does not
    decode', or voxels of the wrong tile); it now parses under the file's lock, which the writer
    holds from the append to the last entry.  Forced: the read starts right after the byte
    count update and the writer goes on once the reader waits for the lock (or is done)."""
    path = tmp_path / "x.tif"
    _tiff(path, np.zeros((2, 32, 32), np.uint16), tile=(16, 16), compression="zlib")
    a = voxgate.open(str(path))
    assert not a[0:1, 0:16, 0:16].read().any()
    b = voxgate.open(str(path), mode="r+")
    moved = threading.Event()  # the reader waits for the file's lock, or has read
    got: list[Any] = []

    def read() -> None:
        try:
            got.append(a[0:1, 0:16, 0:16].read())
        except Exception as exc:  # (collected: the assertion below shows it)
            got.append(exc)
        finally:
            moved.set()

    reader = threading.Thread(target=read)
    real_lock, real_pwrite = tiff_remote.file_lock, os.pwrite
    writer = threading.current_thread()
    writes: list[int] = []

    def file_lock(p: str, **kw: Any) -> Any:
        if threading.current_thread() is reader:
            moved.set()
        return real_lock(p, **kw)

    def pwrite(fd: int, data: bytes, at: int) -> int:
        n = real_pwrite(fd, data, at)
        if threading.current_thread() is writer:
            writes.append(at)
            if len(writes) == 2:  # the tile appended, its byte count entry updated
                reader.start()
                assert moved.wait(60)
        return n

    monkeypatch.setattr(tiff_remote, "file_lock", file_lock)
    monkeypatch.setattr(os, "pwrite", pwrite)
    b[0:1, 0:16, 0:16] = np.uint16(7)
    reader.join(60)
    monkeypatch.undo()
    assert len(writes) == 3 and len(got) == 1
    assert isinstance(got[0], np.ndarray), got[0]
    assert (got[0] == 7).all()


def test_tiff_rewritten_in_place_by_tifffile_reads_the_new_file(tmp_path: Path) -> None:
    """tifffile.imwrite truncates and rewrites the same file (same inode) with another layout:
    the old offsets pointed into the new bytes (a 'does not decode' error or other voxels)."""
    path = tmp_path / "x.tif"
    _tiff(path, np.zeros((2, 32, 32), np.uint16), tile=(16, 16), compression="zlib")
    a = voxgate.open(str(path))
    assert not a.read().any()
    inode = path.stat().st_ino
    new = np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32)
    tifffile.imwrite(path, new, photometric="minisblack", rowsperstrip=5,
                     description="another program's description, longer than before")
    assert path.stat().st_ino == inode  # (rewritten in place, not replaced)
    np.testing.assert_array_equal(a.read(), new)


def test_tiff_replaced_by_rename_reads_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "x.tif"
    _tiff(path, np.zeros((2, 32, 32), np.uint16), tile=(16, 16))
    a = voxgate.open(str(path))
    assert not a.read().any()
    _tiff(tmp_path / "new.tif", np.full((2, 32, 32), 5, np.uint16), tile=(16, 16))
    os.replace(tmp_path / "new.tif", path)
    assert (a.read() == 5).all()


def test_tiff_rewritten_with_another_shape_says_open_it_again(tmp_path: Path) -> None:
    """Same tiles, one page more: the old pages would have been read on silently."""
    path = tmp_path / "x.tif"
    _tiff(path, np.zeros((2, 32, 32), np.uint16), tile=(16, 16))
    a = voxgate.open(str(path))
    assert not a.read().any()
    tifffile.imwrite(path, np.full((3, 32, 32), 4, np.uint16), tile=(16, 16),
                     photometric="minisblack")
    with pytest.raises(InvalidRequestError, match=r"changed since .* open it again"):
        a.read()
    assert (voxgate.open(str(path)).read() == 4).all()


def test_tiff_own_writes_do_not_parse_the_file_again(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """(guard) A handle's own in-place writes keep its stamp current: reading them back
    parses nothing again."""
    path = tmp_path / "x.tif"
    _tiff(path, np.zeros((2, 32, 32), np.uint16), tile=(16, 16), compression="zlib")
    b = voxgate.open(str(path), mode="r+")
    now = time.time_ns()  # (the clock held: written and read back within the racy window)
    monkeypatch.setattr(tiff_remote, "_now_ns", lambda: now)
    parsed = _count_reparses(monkeypatch)
    b[0:1, 0:16, 0:16] = np.uint16(3)
    b[1:2, 0:16, 0:8] = np.uint16(9)  # (part of a tile: read, changed, stored)
    got = b.read()
    assert (got[0, :16, :16] == 3).all() and (got[1, :16, :8] == 9).all()
    assert int(got.sum()) == 3 * 256 + 9 * 128
    assert parsed == []


# -- a directory of TIFF slices ---------------------------------------------------------------
@pytest.mark.parametrize("compression", ["none", "zlib"])
def test_tiff_slices_written_by_another_handle_are_seen(tmp_path: Path,
                                                        compression: str) -> None:
    """A slice write replaces the slice's file: a handle that had read it kept the old file;
    one that had not opened the new file with the old offsets (compressed: 'does not
    decode')."""
    url = f"tiff://{tmp_path / 'stack'}"
    voxgate.create(url, shape=(3, 32, 32), dtype="uint16", chunks=(1, 16, 16),
                   voxel_size=(1, 1, 1), compression=compression)
    for f in (tmp_path / "stack").iterdir():
        _aged(f)
    before = voxgate.open(url)
    assert not before[2:3].read().any()  # (slice 2 open)
    never = voxgate.open(url)
    b = voxgate.open(url, mode="r+")
    plane = np.arange(32 * 32, dtype=np.uint16).reshape(1, 32, 32)
    b[1:2] = plane
    b[2:3] = np.uint16(3)
    np.testing.assert_array_equal(never[1:2].read(), plane)
    assert (before[2:3].read() == 3).all()
    np.testing.assert_array_equal(before[1:2].read(), plane)


# -- HDF5 -------------------------------------------------------------------------------------
def _h5(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=np.zeros((4, 32, 32), np.uint8), chunks=(4, 16, 16))
    _aged(path)


def test_hdf5_another_process_cannot_write_while_a_handle_reads(tmp_path: Path) -> None:
    """(premise) With HDF5's file locking on, the other writer is refused while a voxgate
    handle has the file open: nothing can go stale."""
    path = tmp_path / "x.h5"
    _h5(path)
    a = voxgate.open(f"{path}#/raw")
    assert not a.read().any()
    done = _run(f"""
        import h5py
        with h5py.File({str(path)!r}, "r+") as f:
            f["raw"][:] = 6
    """, env={"HDF5_USE_FILE_LOCKING": "TRUE"})
    assert done.returncode != 0 and "unable to lock" in done.stderr
    assert not a.read().any()


@pytest.mark.parametrize("writer", ["h5py locking=False", "voxgate, HDF5_USE_FILE_LOCKING=FALSE"])
@pytest.mark.parametrize("mode", ["r", "r+ hold_write=False"])
def test_hdf5_write_by_another_process_without_locking_is_seen(tmp_path: Path, writer: str,
                                                               mode: str) -> None:
    """A process with HDF5's locking off (a cluster's HDF5_USE_FILE_LOCKING=FALSE) writes the
    dataset and closes the file: the open handle served HDF5's cached chunks of before."""
    path = tmp_path / "x.h5"
    _h5(path)
    if mode == "r":
        a = voxgate.open(f"{path}#/raw")
    else:
        a = voxgate.open(f"{path}#/raw", mode="r+", hold_write=False)
    assert not a.read().any()
    if writer == "h5py locking=False":
        done = _run(f"""
            import h5py
            with h5py.File({str(path)!r}, "r+", locking=False) as f:
                f["raw"][:, :16] = 6
        """)
    else:
        done = _run(f"""
            import numpy as np, voxgate
            b = voxgate.open({str(path) + "#/raw"!r}, mode="r+")
            b[:, :16] = np.uint8(6)
            b.remote.close()
        """, env={"HDF5_USE_FILE_LOCKING": "FALSE"})
    assert done.returncode == 0, done.stderr
    got = a.read()
    assert (got[:, :16] == 6).all() and not got[:, 16:].any()


def test_hdf5_replaced_by_rename_reads_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    _h5(path)
    a = voxgate.open(f"{path}#/raw")
    assert not a.read().any()
    with h5py.File(tmp_path / "new.h5", "w") as f:
        f.create_dataset("raw", data=np.full((4, 32, 32), 3, np.uint8), chunks=(4, 16, 16))
    os.replace(tmp_path / "new.h5", path)
    assert (a.read() == 3).all()


def test_hdf5_dataset_made_again_with_another_shape_says_open_it_again(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    _h5(path)
    a = voxgate.open(f"{path}#/raw")
    assert not a.read().any()
    done = _run(f"""
        import h5py, numpy as np
        with h5py.File({str(path)!r}, "r+", locking=False) as f:
            del f["raw"]
            f.create_dataset("raw", data=np.full((8, 32, 32), 2, np.uint8))
    """)
    assert done.returncode == 0, done.stderr
    with pytest.raises(InvalidRequestError, match=r"changed since .* open it again"):
        a.read()
    assert (voxgate.open(f"{path}#/raw").read() == 2).all()


def test_hdf5_file_deleted_under_a_read_only_handle_is_not_found(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    _h5(path)
    a = voxgate.open(f"{path}#/raw")
    assert not a.read().any()
    path.unlink()
    with pytest.raises(RemoteNotFoundError, match="no longer exists"):
        a.read()


# -- review of the stamps: device, racy modification times, own writes, writes ----------------
def test_tiff_volume_unpickled_where_the_device_number_differs_parses_nothing_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A volume pickled to a worker on another host (the file on an NFS mount numbered per
    host): with the device in the stamp every file looked changed, and a 70,000-page TIFF was
    parsed whole on the worker's first read."""
    path = tmp_path / "x.tif"
    _tiff(path, np.zeros((2, 32, 32), np.uint16), tile=(16, 16), compression="zlib")
    a = voxgate.open(str(path))
    assert not a.read().any()
    worker = pickle.loads(pickle.dumps(a))
    parsed = _count_reparses(monkeypatch)
    _other_device(monkeypatch, path)
    assert not worker[0:1, 0:16, 0:16].read().any()
    assert parsed == []


def test_hdf5_read_only_handle_seeing_another_device_number_keeps_its_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.h5"
    _h5(path)
    a = voxgate.open(f"{path}#/raw")
    assert not a.read().any()
    opened = a.remote._shared.opened
    _other_device(monkeypatch, path)
    assert not a.read().any()
    assert a.remote._shared.opened == opened


def test_tiff_same_size_rewrite_in_the_stamps_tick_is_seen_after_the_racy_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another program rewrites the file in place, in another layout of the same size, within
    the modification time's tick of the stamp (kept equal here with os.utime): the stamp is as
    it was.  A stamp taken less than RACY_NS after the modification time is trusted until
    then only; the first read after it parses the file again, once."""
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, np.zeros((2, 32, 32), np.uint16), photometric="minisblack",
                     rowsperstrip=2, description="a" * 13, metadata=None)
    st = path.stat()
    clock = [st.st_mtime_ns + 10**9]  # stamped 1 s after its modification: racy
    monkeypatch.setattr(tiff_remote, "_now_ns", lambda: clock[0])
    a = voxgate.open(str(path))
    assert not a.read().any()
    parsed = _count_reparses(monkeypatch)
    new = np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32)
    tifffile.imwrite(path, new, photometric="minisblack", rowsperstrip=4, description="b" * 94,
                     metadata=None)
    os.utime(path, ns=(st.st_mtime_ns, st.st_mtime_ns))
    now = path.stat()
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    a.read()  # (within the window: the stamp is trusted, the old strips read; bounded staleness)
    assert parsed == []
    clock[0] = st.st_mtime_ns + tiff_remote.RACY_NS
    np.testing.assert_array_equal(a.read(), new)
    assert parsed == [1]
    clock[0] += 10**12
    np.testing.assert_array_equal(a.read(), new)
    assert parsed == [1]  # (the new stamp, taken after the window, is trusted for good)


def test_tiff_slice_stamp_taken_in_its_tick_is_checked_again_after_the_racy_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slice replaced by a file that got the freed inode number, the same size and the same
    modification time tick looks unchanged: parsed again once the window is up."""
    url = f"tiff://{tmp_path / 'stack'}"
    voxgate.create(url, shape=(2, 32, 32), dtype="uint16", chunks=(1, 16, 16),
                   voxel_size=(1, 1, 1), compression="none")
    mtime = _OLD_NS
    for f in (tmp_path / "stack").iterdir():
        _aged(f)
    clock = [mtime + 10**9]
    monkeypatch.setattr(tiff_remote, "_now_ns", lambda: clock[0])
    a = voxgate.open(url)
    assert not a[0:1].read().any()
    slices: list[str] = []
    real = tiff_remote.TiffRemote._reparse_slice

    def reparse(self: tiff_remote.TiffRemote, path: str, z: int, stamp: Any) -> None:
        slices.append(path)
        real(self, path, z, stamp)

    monkeypatch.setattr(tiff_remote.TiffRemote, "_reparse_slice", reparse)
    assert not a[0:1].read().any()
    assert slices == []
    clock[0] = mtime + tiff_remote.RACY_NS
    assert not a[0:1].read().any()
    assert len(slices) == 1
    assert not a[0:1].read().any()
    assert len(slices) == 1


def test_hdf5_same_size_write_in_the_stamps_tick_is_seen_after_the_racy_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process with HDF5's locking off writes the dataset in place (same size) within the
    modification time's tick of the read-only handle's stamp (kept equal with os.utime): HDF5's
    caches served the old voxels for good.  Now for RACY_NS after the modification time at
    most: the first read after it opens the file again, once."""
    path = tmp_path / "x.h5"
    _h5(path)
    st = path.stat()
    clock = [_OLD_NS + 10**9]  # stamped 1 s after its modification: racy
    monkeypatch.setattr(h5files, "_now_ns", lambda: clock[0])
    a = voxgate.open(f"{path}#/raw")
    assert not a.read().any()
    opened = a.remote._shared.opened
    done = _run(f"""
        import h5py
        with h5py.File({str(path)!r}, "r+", locking=False) as f:
            f["raw"][:] = 6
    """)
    assert done.returncode == 0, done.stderr
    _aged(path)
    now = path.stat()
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    assert not a.read().any()  # (within the window: HDF5's caches; bounded staleness)
    clock[0] = _OLD_NS + h5files.RACY_NS
    assert (a.read() == 6).all()
    assert a.remote._shared.opened == opened + 1
    clock[0] += 10**12
    assert (a.read() == 6).all()
    assert a.remote._shared.opened == opened + 1


def test_tiff_read_between_a_tile_write_and_its_stamp_update_parses_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read of the writing volume checks the stamp after a tile's pwrite and before the
    writer updates the stamp: it parses the file again.  The writer then never updated the
    stamp again for the rest of its write (its parse was no longer the volume's), so every
    read during a long write parsed the whole file.  Forced: a read after the first tile's
    pwrite and one before each later tile's; each pwrite moves the modification time a tick."""
    path = tmp_path / "x.tif"
    _tiff(path, np.zeros((1, 32, 64), np.uint16), tile=(16, 16))
    b = voxgate.open(str(path), mode="r+")
    assert not b.read().any()
    parsed = _count_reparses(monkeypatch)
    real_pwrite = os.pwrite
    writes: list[int] = []

    def pwrite(fd: int, data: bytes, at: int) -> int:
        if writes:
            b[0:1, 0:16, 0:16].read()  # (after the last tile's stamp update)
        n = real_pwrite(fd, data, at)
        writes.append(at)
        tick = _OLD_NS + len(writes) * 10**9
        os.utime(path, ns=(tick, tick))
        if len(writes) == 1:
            b[0:1, 0:16, 0:16].read()  # (between the pwrite and the stamp update)
        return n

    monkeypatch.setattr(os, "pwrite", pwrite)
    b[0:1, 0:32, 0:64] = np.uint16(5)
    monkeypatch.undo()
    assert len(writes) == 8
    assert parsed == [1]
    assert (tifffile.imread(path) == 5).all()


@pytest.mark.parametrize("compression", ["none", "zlib"])
def test_tiff_write_after_the_file_was_replaced_goes_to_the_new_file(
        tmp_path: Path, compression: str) -> None:
    """Only reads checked the stamp: a write went through the old descriptor into the
    deleted file, silently lost."""
    path = tmp_path / "x.tif"
    _tiff(path, np.zeros((2, 32, 32), np.uint16), tile=(16, 16), compression=compression)
    b = voxgate.open(str(path), mode="r+")
    assert not b.read().any()  # (the file open)
    _tiff(tmp_path / "new.tif", np.full((2, 32, 32), 5, np.uint16), tile=(16, 16),
          compression=compression)
    os.replace(tmp_path / "new.tif", path)
    b[0:1, 0:16, 0:16] = np.uint16(7)
    got = tifffile.imread(path)
    assert (got[0, :16, :16] == 7).all()
    assert int((got == 5).sum()) == 2 * 32 * 32 - 256


def test_tiff_write_after_the_file_was_replaced_in_another_shape_says_open_it_again(
        tmp_path: Path) -> None:
    path = tmp_path / "x.tif"
    _tiff(path, np.zeros((2, 32, 32), np.uint16), tile=(16, 16))
    b = voxgate.open(str(path), mode="r+")
    assert not b.read().any()
    _tiff(tmp_path / "new.tif", np.full((3, 32, 32), 4, np.uint16), tile=(16, 16))
    os.replace(tmp_path / "new.tif", path)
    with pytest.raises(InvalidRequestError, match=r"changed since .* open it again"):
        b[0:1, 0:16, 0:16] = np.uint16(7)
    assert (tifffile.imread(path) == 4).all()
