"""The TIFF file layer under ``tiff://``: one page's segment table (:class:`_Page`), an open
file read with ``pread`` (:class:`_File`), voxgate's own tag, compression names, the block shape
of a volume and writing one 2-D slice file."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    MissingDependencyError,
    VoxgateError,
)
from ...geometry import Vec
from ...meta import Kind
from ...storage.locking import file_lock

#: suffixes of single TIFF files (anything else is a directory of slices)
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
#: the private tag voxgate writes its own metadata to (JSON: kind, offset, voxel size, unit)
VOXGATE_TAG = 65000


def _tifffile() -> Any:
    try:
        import tifffile
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise MissingDependencyError(
            "tiff:// needs the tifffile package: pip install tifffile"
        ) from exc
    return tifffile


#: what tifffile only logs, then reading on as best it can, when a file's structure is broken:
#: an IFD chain cut short (a truncated stack opened as its first pages), metadata and pages
#: that disagree (a shaped, ImageJ or OME series that falls back to a generic one)
_BROKEN = ("corrupted tag list", "invalid offset to page", "invalid page offset",
           "invalid circular reference", "invalid next page", "shaped series",
           "imagej series metadata invalid", "ome series raised", "incorrect strip",
           "missing data offset", "missing data bytecounts", "missing bytecounts")


class _Broken(logging.Handler):
    """Collects tifffile's reports of a broken structure made by one thread."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.thread = threading.get_ident()
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            message = record.getMessage()
            if any(b in message.lower() for b in _BROKEN):
                self.found.append(message)


@contextlib.contextmanager
def _parsing(path: str) -> Iterator[None]:
    """Parse a TIFF's structure with tifffile.  What it raises on a corrupt file (struct.error,
    KeyError, IndexError, ...) and what it only logs before reading on with fewer pages or other
    axes (a truncated stack opened as one slice) become :class:`CorruptChunkError`."""
    handler = _Broken()
    log = logging.getLogger("tifffile")
    log.addHandler(handler)
    try:
        yield
    except Exception as exc:
        if handler.found:
            raise _broken(path, handler.found) from exc
        if isinstance(exc, VoxgateError):
            raise
        raise CorruptChunkError(f"{path} is not a readable TIFF file: {type(exc).__name__}: "
                                f"{exc}", chunk=path) from exc
    finally:
        log.removeHandler(handler)
    if handler.found:
        raise _broken(path, handler.found)


def _broken(path: str, found: list[str]) -> CorruptChunkError:
    return CorruptChunkError(
        f"{path} is a damaged TIFF file (truncated, or its structure is corrupt): tifffile "
        f"reports {'; '.join(found[:3])}", chunk=path)


def natural_key(name: str) -> list[Any]:
    """Sort key that puts ``s2.tif`` before ``s10.tif``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _guess_kind(dtype: np.dtype[Any]) -> Kind:
    return "segmentation" if dtype.kind in "ui" and dtype.itemsize >= 4 else "image"


@dataclass
class _Page:
    """One 2-D page of one file: where its segments (strips or tiles) are, how to decode them."""

    path: str
    index: int  # page index inside its file (of its pyramid level's pages)
    key: tuple[int, int]  # (pyramid level, position in the level's pages): finds its decoder
    offsets: np.ndarray  # uint64, one per segment
    bytecounts: np.ndarray
    seg_shape: tuple[int, int]  # rows, columns of one segment (strip: rowsperstrip x width)
    grid_x: int  # segments per row of segments
    tiled: bool
    compression: int
    predictor: int
    raw_dtype: np.dtype[Any]  # dtype with the file's byte order
    samples: int
    offsets_at: int  # file offset of the offsets entries (for in-place updates), -1 if unknown
    bytecounts_at: int
    offset_fmt: np.dtype[Any]
    bytecount_fmt: np.dtype[Any]
    #: file offset of the directory of a page whose tifffile decoder decodes this page (its own,
    #: or that of the first page written alike: :mod:`.ifds`); -1 if unknown
    decoder_ifd: int = -1


class _File:
    """An open file (one descriptor, pread from many threads).

    ``lock`` guards this volume's segment tables of the file and its file lock (taken by one
    thread at a time, and held once however deep the thread nests).  A file no longer in its
    volume's table (a slice replaced by a write) closes when the last reader holding it lets
    go of it.
    """

    def __init__(self, path: str, writable: bool) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        self.lock = threading.RLock()
        self._held = 0  # how deep this file's holder is in exclusive()
        self._file_lock: contextlib.ExitStack | None = None  # the file lock, while held

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The file to this thread alone, in this process and against other processes (and
        other volumes of this one): ``lock``, then the file's lock
        (:func:`~voxgate.storage.locking.file_lock`: ``.NAME.lock`` beside it, which every
        writer of the file takes, on any platform).  Re-entrant."""
        with self.lock:
            if self._held == 0:
                held = contextlib.ExitStack()
                held.enter_context(file_lock(self.path))
                self._file_lock = held
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1
                if self._held == 0 and self._file_lock is not None:
                    held, self._file_lock = self._file_lock, None
                    held.close()

    def pread(self, n: int, at: int, what: str) -> bytes:
        data = os.pread(self.fd, n, at)
        if len(data) != n:
            raise CorruptChunkError(
                f"{what} of {self.path} is truncated: {n} bytes expected at offset {at}, "
                f"{len(data)} there (the file ends early)",
                chunk=what + f" of {self.path}",
            )
        return data

    def close(self) -> None:
        fd, self.fd = getattr(self, "fd", -1), -1  # (__init__ may have failed to open it)
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self.close()


def _page_info(tf: Any, page: Any, path: str, index: int,
               key: tuple[int, int] = (0, 0)) -> _Page:
    if page.bitspersample not in (8, 16, 32, 64) or page.dtype is None:
        raise CapabilityNotSupportedError(
            f"page {index} of {path} has {page.bitspersample}-bit samples; voxgate reads TIFFs "
            "of 8, 16, 32 or 64-bit samples"
        )
    if page.samplesperpixel > 1 and page.planarconfig != 1:
        raise CapabilityNotSupportedError(
            f"page {index} of {path} stores its {page.samplesperpixel} samples in separate "
            "planes; voxgate reads interleaved (contiguous) samples"
        )
    if page.is_tiled:
        if page.tiledepth > 1:
            raise CapabilityNotSupportedError(f"page {index} of {path} has 3-D tiles")
        seg = (int(page.tilelength), int(page.tilewidth))
        grid_x = -(-int(page.imagewidth) // seg[1])
        off_tag, cnt_tag = page.tags.get("TileOffsets"), page.tags.get("TileByteCounts")
    else:
        seg = (int(min(page.rowsperstrip, page.imagelength)), int(page.imagewidth))
        grid_x = 1
        off_tag, cnt_tag = page.tags.get("StripOffsets"), page.tags.get("StripByteCounts")
    offsets = np.array(page.dataoffsets, dtype=np.uint64)
    bytecounts = np.array(page.databytecounts, dtype=np.uint64)
    if int(page.compression) == 1:
        _check_raw_sizes(page, path, index, seg, bytecounts)
    fmt = {3: "H", 4: "I", 16: "Q"}
    order = tf.byteorder
    return _Page(
        path=path,
        index=index,
        key=key,
        offsets=offsets,
        bytecounts=bytecounts,
        seg_shape=seg,
        grid_x=grid_x,
        tiled=bool(page.is_tiled),
        compression=int(page.compression),
        predictor=int(page.predictor),
        raw_dtype=np.dtype(page.dtype).newbyteorder(order),
        samples=int(page.samplesperpixel),
        offsets_at=int(off_tag.valueoffset) if off_tag is not None else -1,
        bytecounts_at=int(cnt_tag.valueoffset) if cnt_tag is not None else -1,
        offset_fmt=np.dtype(order + fmt.get(int(off_tag.dtype), "Q")) if off_tag else
        np.dtype("Q"),
        bytecount_fmt=np.dtype(order + fmt.get(int(cnt_tag.dtype), "Q")) if cnt_tag else
        np.dtype("Q"),
        decoder_ifd=int(getattr(page, "offset", -1) or -1),
    )


def _check_raw_sizes(page: Any, path: str, index: int, seg: tuple[int, int],
                     bytecounts: np.ndarray) -> None:
    """Refuse an uncompressed page whose segments hold fewer bytes than its geometry says
    (a tile is whole, a strip holds its rows, the last one those left): its tile size, strip
    rows or byte counts are corrupt, and reading by that geometry gave other voxels' bytes
    (tifffile refuses such a page too).  Absent segments (byte count 0) read as zeros."""
    row = seg[1] * int(page.samplesperpixel) * np.dtype(page.dtype).itemsize
    if page.is_tiled:
        need = np.full(len(bytecounts), seg[0] * row, dtype=np.uint64)
    else:
        left = int(page.imagelength) - np.arange(len(bytecounts), dtype=np.int64) * seg[0]
        need = (np.clip(left, 0, seg[0]) * row).astype(np.uint64)
    short = np.flatnonzero((bytecounts != 0) & (bytecounts < need))
    if len(short):
        i = int(short[0])
        raise CorruptChunkError(
            f"page {index} of {path} is corrupt: its uncompressed segment {i} holds "
            f"{int(bytecounts[i])} bytes, its {'tile' if page.is_tiled else 'strip'} of "
            f"{seg[0]} x {seg[1]} voxels needs {int(need[i])} ({len(short)} segment(s) short)",
            chunk=f"page {index} of {path}")


def _chunks(own: dict[str, Any], shape: Sequence[int], page: _Page) -> Vec:
    """The block shape reads and copies should use: the chunks voxgate was created with, else
    up to 64 pages of whole segments (strips or tiles), about 256 x 256 voxels across."""
    given = own.get("chunks")
    if isinstance(given, list) and len(given) == 3 and all(
        isinstance(n, int) and n > 0 for n in given
    ):
        return Vec(*given)
    sh, sw = page.seg_shape
    if page.tiled or sw < 256:  # tiles (or narrow strips): a whole number of segments
        ny, nx = sh * max(1, 256 // sh), sw * max(1, 256 // sw)
    elif page.compression == 1:  # uncompressed strips are read by rows: any block will do
        ny, nx = min(sh * 256, 256), 256
    else:  # compressed strips decode whole: whole strips, about 256 rows
        ny, nx = sh * max(1, 256 // sh), sw
    return Vec(max(1, min(shape[0], 64)), min(ny, shape[1]), min(nx, shape[2]))


#: a slice whose voxels pass this many bytes is written as BigTIFF: a classic TIFF's 32-bit
#: offsets end at 4 GiB (tifffile's own threshold, 32 MiB left for the tags)
BIGTIFF_ABOVE = 2**32 - 2**25


def _write_slice(path: str, plane: np.ndarray, tile: tuple[int, ...] | None, comp: str | None,
                 extratags: list[Any], keep: dict[str, Any] | None = None) -> None:
    """Write one 2-D slice file (to a temporary name, then renamed).  ``keep``: the
    description, resolution and predictor of the slice it replaces (:func:`_slice_keep`).

    A slice of more than :data:`BIGTIFF_ABOVE` bytes is a BigTIFF, compressed or not
    (tifffile decides so for uncompressed data only, and a compressed slice of noise is no
    smaller: written classic, it failed past 4 GiB)."""
    tifffile = _tifffile()
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    if tile is not None and (plane.shape[0] < tile[0] or plane.shape[1] < tile[1]):
        tile = None if comp is None else tile
    keep = dict(keep or {})
    description = keep.pop("description", None)
    if description is not None:  # as it was (OME-XML, ImageJ's): raw bytes, any encoding
        extratags = [*extratags, (270, "s", 0, description, True)]
    if comp is None:
        keep.pop("predictor", None)  # (a predictor goes with compression only)
    tifffile.imwrite(tmp, plane, tile=tile, compression=comp, photometric="minisblack",
                     metadata=None, extratags=extratags, bigtiff=plane.nbytes > BIGTIFF_ABOVE,
                     **keep)
    os.replace(tmp, path)


def _slice_keep(page: Any) -> dict[str, Any]:
    """What a rewritten slice keeps of the page it replaces, besides voxgate's own tag: its
    ImageDescription (OME-XML or ImageJ's, which say the voxel size and unit), its X/Y
    resolution and resolution unit, and a horizontal-differencing predictor.  A write that
    dropped them changed the volume's voxel size (to 1 nm) along with its voxels."""
    keep: dict[str, Any] = {}
    tags = page.tags
    desc = tags.get(270)
    if desc is not None:
        value = desc.value
        keep["description"] = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    xres, yres = tags.get(282), tags.get(283)
    if xres is not None and yres is not None:
        keep["resolution"] = (tuple(xres.value), tuple(yres.value))
        unit = tags.get(296)
        keep["resolutionunit"] = int(unit.value) if unit is not None else 2  # TIFF's default
    if int(page.predictor) == 2:
        keep["predictor"] = 2
    return keep


def _own_tag(page: Any) -> dict[str, Any]:
    tag = page.tags.get(VOXGATE_TAG)
    if tag is None:
        return {}
    try:
        value = json.loads(tag.value)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _compression_name(code: int) -> str | None:
    if code == 1:
        return None
    tifffile = _tifffile()
    try:
        return str(tifffile.COMPRESSION(code).name.lower())
    except ValueError:
        return str(code)


def _page_span(tf: Any, series: Any) -> str:
    pages = [p.index for p in series.pages if p is not None]
    if not pages:
        return "?"
    return f"{pages[0]}-{pages[-1]}" if len(pages) > 1 else str(pages[0])
