"""Three edges of the public API (audit H31).

Before:

- ``np.asarray(vol, copy=False)`` (and ``np.array(vol, copy=False)``) quietly read the volume
  into a new array, though numpy 2's ``__array__`` protocol says ``copy=False`` must raise a
  ValueError when a copy cannot be avoided (zarr-python 3's Array does).  A lazy Volume
  always reads into a new array.
- A local folder holding only what a desktop leaves behind (macOS's ``.DS_Store`` and ``._*``
  AppleDouble files, Windows' ``Thumbs.db`` / ``desktop.ini``) was UnknownSchemeError
  ("cannot tell the format ... name the format in the URL"), where an empty folder is
  RemoteNotFoundError listing the markers voxgate looks for.
- A KNOSSOS dataset copied by a Mac onto a non-Mac disk (``ds.k.toml`` beside its AppleDouble
  ``._ds.k.toml``) did not open: the binary ``._ds.k.toml`` sorts first and was read as the
  configuration ("is not valid TOML").

Now ``copy=False`` is an InvalidRequestError (a ValueError) naming ``np.asarray(vol)`` and
``vol.read()``; such a folder is RemoteNotFoundError as an empty one, naming the files it
holds; the AppleDouble files are passed over when looking for a KNOSSOS configuration.
``create`` into such a folder already worked as into an empty one (guarded below).

``Volume.__array__`` is deliberately not wrapped in ``refuses_unknown_keywords``: numpy passes
only ``dtype`` and ``copy``, and a wrapper frame would hide xarray from the check that refuses
``xr.DataArray(vol)`` (guarded below).  ``Volume.__init__`` is left as it is: users get a
Volume from ``voxgate.open`` / ``create``, not by constructing one from a Remote.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import voxgate
from voxgate import Volume
from voxgate.errors import (
    InvalidRequestError,
    LazyOperationError,
    RemoteNotFoundError,
    UnknownSchemeError,
)


@pytest.fixture
def vol() -> Volume:
    v = voxgate.create("mem://h31-edges", shape=(4, 6, 8), dtype="uint16", chunks=(2, 3, 4),
                       voxel_size=(40, 8, 8))
    v[:] = np.arange(4 * 6 * 8, dtype=np.uint16).reshape(4, 6, 8)
    return voxgate.open(v.url)


EXPECTED = np.arange(4 * 6 * 8, dtype=np.uint16).reshape(4, 6, 8)


# -- 1. copy=False -----------------------------------------------------------------------------


@pytest.mark.parametrize("convert", [
    lambda v: np.asarray(v, copy=False),
    lambda v: np.array(v, copy=False),
    lambda v: np.asarray(v, dtype=np.float32, copy=False),
    lambda v: np.asarray(v[1:3, 2], copy=False),
    lambda v: np.asarray(v[1, 2, 3], copy=False),  # 0-d
], ids=["asarray", "array", "asarray-dtype", "view", "0-d"])
def test_copy_false_is_refused_as_numpy_asks(vol: Volume, convert) -> None:
    with pytest.raises(ValueError, match="copy=False") as info:
        convert(vol)
    assert isinstance(info.value, InvalidRequestError)
    msg = str(info.value)
    assert "lazy" in msg and "np.asarray(vol)" in msg and "vol.read()" in msg
    assert vol.url in msg


def test_copy_none_true_and_dtype_still_read(vol: Volume) -> None:
    a = np.asarray(vol)
    np.testing.assert_array_equal(a, EXPECTED)
    assert a.dtype == np.uint16
    b = np.array(vol, copy=True)
    np.testing.assert_array_equal(b, EXPECTED)
    assert not np.shares_memory(a, b)
    c = np.asarray(vol, dtype=np.float32)
    assert c.dtype == np.float32
    np.testing.assert_array_equal(c, EXPECTED.astype(np.float32))
    d = np.array(vol[1:3, ::2], dtype="int64", copy=True)
    assert d.dtype == np.int64
    np.testing.assert_array_equal(d, EXPECTED[1:3, ::2])
    assert np.asarray(vol[1, 2, 3]).shape == ()
    assert int(np.asarray(vol[1, 2, 3])) == EXPECTED[1, 2, 3]
    # numpy's positional call __array__(dtype)
    np.testing.assert_array_equal(vol.__array__(np.int32), EXPECTED.astype(np.int32))


def test_xarray_is_still_refused(vol: Volume) -> None:
    # (what a refuses_unknown_keywords wrapper on __array__ would have broken)
    with pytest.raises(LazyOperationError, match="to_xarray"):
        xr.DataArray(vol)


# -- 2. a folder holding only a desktop's files --------------------------------------------------


LITTER = [
    [".DS_Store"],
    ["Thumbs.db"],
    ["desktop.ini"],
    ["._em"],
    [".DS_Store", "._em.zarr", "Thumbs.db", "desktop.ini"],
    ["thumbs.db", "Desktop.ini"],  # (Windows names are case-blind)
]


@pytest.mark.parametrize("names", LITTER, ids=["+".join(n) for n in LITTER])
def test_folder_of_desktop_files_is_not_found_as_an_empty_one(tmp_path: Path,
                                                              names: list[str]) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    for n in names:
        (folder / n).write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    with pytest.raises(RemoteNotFoundError, match=r"nothing is stored.*marker") as info:
        voxgate.open(folder)
    msg = str(info.value)
    assert all(n in msg for n in names)
    assert "zarr.json" in msg and "info" in msg  # the markers voxgate looks for
    with pytest.raises(RemoteNotFoundError, match="nothing is stored"):
        voxgate.open(f"file://{folder}")


def test_empty_and_other_files_answer_as_before(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    with pytest.raises(RemoteNotFoundError, match=r"it is an empty directory.*marker"):
        voxgate.open(folder)
    (folder / ".DS_Store").write_bytes(b"\x00")
    (folder / "notes.txt").write_text("x")  # a file of no format, beside the litter
    with pytest.raises(UnknownSchemeError, match="marker"):
        voxgate.open(folder)


@pytest.mark.parametrize("scheme", ["zarr", "n5", "precomputed", "knossos", "webknossos"])
def test_create_into_a_folder_of_desktop_files(tmp_path: Path, scheme: str) -> None:
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / "._v").write_bytes(b"\x00\x05\x16\x07")
    made = voxgate.create(f"{scheme}://{folder}", shape=(4, 6, 8), dtype="uint8",
                          chunks=(4, 6, 8), voxel_size=(1, 1, 1))
    made[:] = 7
    again = voxgate.open(folder)  # detected from the markers create wrote
    assert again.shape == (4, 6, 8)
    assert int(again[1, 2, 3].read()) == 7


# -- 3. KNOSSOS beside its AppleDouble files -----------------------------------------------------


def _knossos_with_appledouble(tmp_path: Path) -> Path:
    folder = tmp_path / "ds"
    v = voxgate.create(f"knossos://{folder}", shape=(4, 6, 8), dtype="uint8", chunks=(4, 6, 8),
                       voxel_size=(1, 1, 1))
    v[:] = 5
    confs = [n for n in os.listdir(folder) if n.endswith((".k.toml", ".conf"))]
    assert confs
    for n in confs:  # what a Mac writes beside each file on a FAT / exFAT / network disk
        (folder / f"._{n}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    return folder


def test_knossos_opens_beside_its_appledouble_files(tmp_path: Path) -> None:
    folder = _knossos_with_appledouble(tmp_path)
    for url in (str(folder), f"knossos://{folder}"):
        v = voxgate.open(url)
        assert v.shape == (4, 6, 8)
        assert int(v[0, 0, 0].read()) == 5


def test_folder_of_only_an_appledouble_conf_is_not_found(tmp_path: Path) -> None:
    folder = _knossos_with_appledouble(tmp_path)
    for n in os.listdir(folder):
        if not n.startswith("._"):
            path = folder / n
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    assert os.listdir(folder)  # only ._*.k.toml left
    with pytest.raises(RemoteNotFoundError, match="nothing is stored"):
        voxgate.open(folder)
    with pytest.raises(RemoteNotFoundError, match="no KNOSSOS dataset"):
        voxgate.open(f"knossos://{folder}")


# -- 4. a path given to Volume(), and intern's array -----------------------------------------


@pytest.mark.parametrize("given", ["em.zarr", Path("em.zarr"), None, 3])
def test_volume_of_something_else_than_a_remote_names_voxgate_open(given: object) -> None:
    # (was a bare AttributeError: 'str' object has no attribute 'meta')
    with pytest.raises(InvalidRequestError, match=r"voxgate\.open"):
        Volume(given)  # type: ignore[arg-type]


def test_volume_of_a_remote_still_builds(vol: Volume) -> None:
    assert np.array_equal(Volume(vol.remote).read(), EXPECTED)


def test_intern_array_refuses_copy_false_and_still_reads(vol: Volume) -> None:
    from voxgate.compat.intern import array

    arr = array(vol.url)
    with pytest.raises(ValueError, match="copy=False"):
        np.asarray(arr, copy=False)
    assert np.array_equal(np.asarray(arr), EXPECTED)
    assert np.asarray(arr, dtype=np.float32).dtype == np.float32


# -- 5. an object-storage prefix a Mac folder was synced to --------------------------------------


@pytest.mark.parametrize("keys", [
    ["scan/.DS_Store"],
    ["scan/.DS_Store", "scan/sub/._raw.tif", "scan/Thumbs.db"],
], ids=["ds-store", "several"])
def test_s3_prefix_of_desktop_files_is_not_found(s3_bucket: str, put_s3_keys: Callable[..., None],
                                                  keys: list[str]) -> None:
    # (was UnknownSchemeError "cannot tell the format", as for a prefix holding data)
    put_s3_keys(keys, b"\x00\x00\x00\x01Bud1")
    with pytest.raises(RemoteNotFoundError, match=r"nothing is stored.*\.DS_Store.*desktop"):
        voxgate.open(f"s3://{s3_bucket}/scan")


def test_s3_prefix_of_desktop_and_other_files_is_still_unknown(
        s3_bucket: str, put_s3_keys: Callable[..., None]) -> None:
    put_s3_keys(("scan/.DS_Store", "scan/notes.txt"), b"x")
    with pytest.raises(UnknownSchemeError, match="cannot tell the format"):
        voxgate.open(f"s3://{s3_bucket}/scan")
    with pytest.raises(RemoteNotFoundError, match="nothing is stored"):
        voxgate.open(f"s3://{s3_bucket}/elsewhere")  # an empty prefix, as before
