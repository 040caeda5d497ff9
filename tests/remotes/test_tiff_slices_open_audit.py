"""Directories of 2-D TIFF slices opened in bulk (``remotes/tiff/slices.py``): the first slice
parsed whole by tifffile, the others read raw and compared with it; any slice that differs is
parsed whole, as every slice used to be.

Each odd directory is opened twice, the bulk way and file by file (the template switched off:
the loop that then runs is the open as it was), and both must end alike: the same error, or the
same voxels, which are tifffile's own reading of each file (``tifffile.imread``).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

import voxgate
import voxgate.remotes.tiff.opening as opening
from voxgate.errors import CorruptChunkError, InvalidRequestError
from voxgate.remotes.tiff import natural_key

N = 24
SHAPE = (37, 53)


def _data(n: int, shape: tuple[int, ...] = SHAPE, dtype: str = "uint16") -> np.ndarray:
    rng = np.random.default_rng(n * 1000 + sum(shape))
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    if info is None:
        return rng.standard_normal((n, *shape)).astype(dtype)
    return rng.integers(info.min, int(info.max) + 1, (n, *shape), dtype=dtype)


def _write(d: Path, data: np.ndarray, **kw: Any) -> list[Path]:
    d.mkdir(exist_ok=True)
    kw.setdefault("photometric", "rgb" if data.ndim == 4 else "minisblack")
    kw.setdefault("metadata", None)
    files = [d / f"s{z:03d}.tif" for z in range(len(data))]
    for f, plane in zip(files, data, strict=True):
        tifffile.imwrite(f, plane, **kw)
    return files


def _expected(d: Path) -> np.ndarray:
    """tifffile's reading of every slice file, each on its own, in voxgate's order."""
    names = sorted((p.name for p in d.iterdir() if p.suffix == ".tif"), key=natural_key)
    return np.stack([tifffile.imread(d / n) for n in names])


def _as_volume(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, -1, 0) if a.ndim == 4 else a  # samples are channels


def _outcome(d: Path) -> tuple[Any, ...]:
    """The open and a whole read: the error (type, message) or (shape, dtype, voxels)."""
    try:
        vol = voxgate.open(f"tiff://{d}")
        got = vol.read()
    except Exception as exc:
        return type(exc), str(exc)
    return vol.shape, str(vol.dtype), got.tobytes()


def _file_by_file(d: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    with monkeypatch.context() as m:
        m.setattr(opening.SliceTemplate, "of", classmethod(lambda cls, *a: None))
        return _outcome(d)


def _count_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    init = tifffile.TiffFile.__init__

    def counting(self: Any, arg: Any, *args: Any, **kwargs: Any) -> None:
        opened.append(str(arg))
        init(self, arg, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffFile, "__init__", counting)
    return opened


LAYOUTS: dict[str, tuple[str, tuple[int, ...], dict[str, Any]]] = {
    # several strips: the strip tables lie outside the entries
    "uint16 strips": ("uint16", SHAPE, {"rowsperstrip": 5}),
    "uint8 one strip": ("uint8", (1, 97), {}),
    # three samples: BitsPerSample's three values lie outside its entry
    "rgb uint8": ("uint8", (29, 31, 3), {"rowsperstrip": 4}),
    "big-endian float32": ("float32", (19, 7), {"byteorder": ">"}),
    "zlib tiles": ("uint16", SHAPE, {"tile": (16, 16), "compression": "zlib"}),
    "zlib strips, predictor": ("int16", SHAPE, {"compression": "zlib", "predictor": True,
                                                 "rowsperstrip": 8}),
    "bigtiff int32": ("int32", (13, 300), {"bigtiff": True, "rowsperstrip": 3}),
    "imagej": ("uint16", SHAPE, {"imagej": True, "metadata": {"spacing": 0.5}}),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_reads_equal_tifffile_per_file(tmp_path: Path, layout: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Odd shapes and layouts read back as tifffile reads each file, whole and in odd boxes,
    after an open that parsed one slice with tifffile (it parsed all N: fails on the old code);
    an unpickled volume (a worker's) reads compressed slices too."""
    dtype, shape, kw = LAYOUTS[layout]
    d = tmp_path / "slices"
    _write(d, _data(N, shape, dtype), **kw)
    expect = _as_volume(_expected(d))
    opened = _count_parses(monkeypatch)
    vol = voxgate.open(f"tiff://{d}")
    assert len(opened) == 1, opened
    monkeypatch.undo()
    assert vol.shape[-3:] == (N, *shape[:2])
    assert np.array_equal(vol.read(), expect)
    z, y, x = N - 5, shape[0] // 3, shape[1] // 2
    box = (slice(3, z), slice(y, shape[0] - 1), slice(x - 1 if x else 0, shape[1]))
    lead = (slice(None),) if len(shape) == 3 else ()  # (the channel axis)
    assert np.array_equal(vol[(*lead, *box)].read(), expect[(Ellipsis, *box)])
    again = pickle.loads(pickle.dumps(vol))
    assert np.array_equal(again[(*lead, slice(N - 3, N))].read(), expect[..., N - 3:, :, :])


@pytest.mark.parametrize("compression", [None, "tiff_deflate"])
def test_slices_written_by_pillow(tmp_path: Path, compression: str | None,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices another writer made (Pillow: its own writer; with libtiff, deflate and the page
    directory after the voxels, past the first bytes read) open parsing one slice and read as
    tifffile reads each file; one slice of another width among them is refused, naming it."""
    image = pytest.importorskip("PIL.Image")
    d = tmp_path / "pil"
    d.mkdir()
    data = _data(N, (100, 130))
    kw = {"compression": compression} if compression else {}
    for z, plane in enumerate(data):
        image.fromarray(plane).save(d / f"p{z}.tif", **kw)
    with tifffile.TiffFile(d / "p0.tif") as tf:  # (where the directory is, as described)
        assert (tf.pages.first.offset > 4096) == (compression is not None)
    opened = _count_parses(monkeypatch)
    vol = voxgate.open(f"tiff://{d}")
    assert len(opened) == 1, opened
    monkeypatch.undo()
    assert np.array_equal(vol.read(), _expected(d))
    assert np.array_equal(vol.read(), data)
    image.fromarray(data[0][:, :129]).save(d / "p9.tif", **kw)
    bulk = _outcome(d)
    assert bulk == _file_by_file(d, monkeypatch)
    assert bulk[0] is InvalidRequestError and "p9.tif" in bulk[1], bulk


def _replace(files: list[Path], at: int, plane: np.ndarray, **kw: Any) -> None:
    kw.setdefault("photometric", "minisblack")
    kw.setdefault("metadata", None)
    tifffile.imwrite(files[at], plane, **kw)


def _corrupt_bytecount(path: Path, strip: int, value: int) -> None:
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages.first.tags["StripByteCounts"]
        fmt = tf.byteorder + {3: "u2", 4: "u4", 16: "u8"}[int(tag.dtype)]
        at = tag.valueoffset + strip * np.dtype(fmt).itemsize
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(np.array([value], fmt).tobytes())


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _two_pages(path: Path, plane: np.ndarray) -> None:
    with tifffile.TiffWriter(path) as tw:
        for _ in range(2):
            tw.write(plane, photometric="minisblack", metadata=None)


#: each odd slice: what to do to the files, then the error expected (None: it reads)
ODD: dict[str, tuple[Callable[[list[Path], int], None], type[Exception] | None, str]] = {
    "shape": (lambda fs, at: _replace(fs, at, _data(1, (37, 52))[0]),
              InvalidRequestError, r"\(37, 52\)"),
    "dtype": (lambda fs, at: _replace(fs, at, _data(1, SHAPE, "int16")[0]),
              InvalidRequestError, r"\bint16"),
    "rgb": (lambda fs, at: _replace(fs, at, _data(1, (*SHAPE, 3), "uint16")[0],
                                    photometric="rgb"),
            InvalidRequestError, "shape"),
    "compressed": (lambda fs, at: _replace(fs, at, _data(7)[3], compression="zlib"),
                   None, ""),
    "tiled": (lambda fs, at: _replace(fs, at, _data(7)[4], tile=(16, 32)), None, ""),
    "other strips": (lambda fs, at: _replace(fs, at, _data(7)[5], rowsperstrip=3), None, ""),
    "big-endian": (lambda fs, at: _replace(fs, at, _data(7)[6], byteorder=">"), None, ""),
    "bigtiff": (lambda fs, at: _replace(fs, at, _data(7)[1], bigtiff=True), None, ""),
    "described": (lambda fs, at: _replace(fs, at, _data(7)[2], metadata={"note": "x"}),
                  None, ""),
    "two pages": (lambda fs, at: _two_pages(fs[at], _data(1)[0]),
                  InvalidRequestError, "holds 2 pages"),
    "not a tiff": (lambda fs, at: fs[at].write_bytes(b"GIF89a" + bytes(4000)),
                   CorruptChunkError, "not a readable TIFF"),
    "empty": (lambda fs, at: fs[at].write_bytes(b""), CorruptChunkError, "not a readable"),
    "header only": (lambda fs, at: _truncate(fs[at], 12), CorruptChunkError, "TIFF"),
    "short strip": (lambda fs, at: _corrupt_bytecount(fs[at], 2, 100),
                    CorruptChunkError, "segment 2"),
    # the directory whole, the voxels cut off: refused when read, as before
    "voxels cut off": (lambda fs, at: _truncate(fs[at], 2000), CorruptChunkError,
                       "truncated"),
    "removed": (lambda fs, at: fs[at].unlink(), None, ""),
    "a directory": (lambda fs, at: (fs[at].unlink(), fs[at].mkdir()) and None,
                    CorruptChunkError, "IsADirectoryError"),
}


@pytest.mark.parametrize("at", [0, 1, N // 2, N - 1])
@pytest.mark.parametrize("odd", list(ODD))
def test_odd_slice_ends_as_file_by_file(tmp_path: Path, odd: str, at: int,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A slice unlike the others (early, in the middle, last) is refused naming it, or read as
    tifffile reads it, exactly as when every slice was parsed whole; a slice missing from the
    numbering is refused, naming it, unless it was the first or the last (nothing shows it is
    missing: one slice fewer)."""
    d = tmp_path / "slices"
    files = _write(d, _data(N), rowsperstrip=8)
    (d / "notes.txt").write_text("not a slice")
    do, error, match = ODD[odd]
    if odd == "removed" and 0 < at < N - 1:
        error, match = InvalidRequestError, "numbered with gaps"
    do(files, at)
    bulk = _outcome(d)
    assert bulk == _file_by_file(d, monkeypatch)
    if error is not None:
        assert bulk[0] is error, bulk
        assert files[at].name in bulk[1]
        assert re.search(match, bulk[1]), bulk[1]
        with pytest.raises(error, match=match):
            voxgate.open(f"tiff://{d}").read()
        return
    expect = _expected(d)
    assert bulk[0] == expect.shape and bulk[2] == expect.tobytes()


def test_writes_to_slices_opened_in_bulk(tmp_path: Path) -> None:
    """A slice rewritten through a volume opened in bulk reads back (and as tifffile reads it),
    the others untouched."""
    d = tmp_path / "slices"
    data = _data(N)
    _write(d, data, compression="zlib")
    vol = voxgate.open(f"tiff://{d}", mode="r+")
    new = _data(2)[1][5:30, 7:50]
    vol[10:11, 5:30, 7:50].write(new[None])
    data[10, 5:30, 7:50] = new
    assert np.array_equal(vol.read(), data)
    assert np.array_equal(_expected(d), data)
    assert np.array_equal(voxgate.open(f"tiff://{d}").read(), data)


def test_a_gap_in_the_numbering_is_refused_or_closed_on_request(tmp_path: Path) -> None:
    """A number missing from the slices' names would put every later slice one z too low:
    refused naming the missing names (up to five), unless gaps='close' takes the files as they
    are; numbering by a step (every tenth slice) has no gap; gaps= is refused on one file and
    travels with the volume (pickled: reopened the same way)."""
    d = tmp_path / "slices"
    data = _data(N)
    files = _write(d, data)
    for i in (3, 4):
        files[i].unlink()
    with pytest.raises(InvalidRequestError,
                       match=re.escape(f"{files[3].name}, {files[4].name} missing")):
        voxgate.open(f"tiff://{d}")
    with pytest.raises(InvalidRequestError, match="gaps must be 'refuse'"):
        voxgate.open(f"tiff://{d}", gaps="fill")
    vol = voxgate.open(f"tiff://{d}", gaps="close")
    kept = np.delete(data, [3, 4], axis=0)
    assert np.array_equal(vol.read(), kept)
    assert np.array_equal(pickle.loads(pickle.dumps(vol)).read(), kept)
    # every tenth slice, one of them missing: the step is ten, the gap is 30
    e = tmp_path / "tenth"
    e.mkdir()
    for k, z in enumerate(range(0, 60, 10)):
        tifffile.imwrite(e / f"z{z}.tif", data[k])
    assert voxgate.open(f"tiff://{e}").shape[0] == 6
    (e / "z30.tif").unlink()
    with pytest.raises(InvalidRequestError, match=r"z30\.tif missing"):
        voxgate.open(f"tiff://{e}")
    one = tmp_path / "one.tif"
    tifffile.imwrite(one, data)
    with pytest.raises(InvalidRequestError, match="one TIFF file"):
        voxgate.open(f"tiff://{one}", gaps="close")
