"""The ``tiff://`` Remote: opening (delegated to :mod:`.opening`), creating (:mod:`.creating`),
lazy reads of the segments a box crosses and tile-by-tile writes."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ...errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    MissingDependencyError,
    RemoteNotFoundError,
)
from ...geometry import Box, Vec, VoxelSize
from ...meta import Scale, VolumeMeta
from ...storage import file_lock, is_local, length_unit_nm, local_path
from ..base import Capability, Remote, check_options
from .calibration import resolution_voxel_size
from .creating import create_tiff
from .opening import _imagej_voxel_size, _ome_voxel_size, open_file, open_slices
from .pages import (
    TIFF_SUFFIXES,
    VOXGATE_TAG,
    _compression_name,
    _File,
    _guess_kind,
    _own_tag,
    _Page,
    _page_info,
    _parsing,
    _slice_keep,
    _tifffile,
    _write_slice,
    natural_key,
)


def _spec_options(meta: VolumeMeta, options: dict[str, Any]) -> dict[str, Any]:
    """The open options as JSON values that reopen the same geometry (``spec()``)."""
    out: dict[str, Any] = {}
    if options.get("voxel_size") is not None:
        vs = meta.scale(0).voxel_size
        f = length_unit_nm(vs.unit) or 1.0
        out["voxel_size"] = [v * f for v in vs.zyx()]  # in nm, the option's unit
    if options.get("kind") is not None:
        out["kind"] = meta.kind
    if options.get("gaps") is not None:
        out["gaps"] = options["gaps"]
    return out


def _check_codec_error(exc: BaseException, page: _Page) -> None:
    """A codec tifffile lacks (LZW, zstd, JPEG, ... come with imagecodecs) is a missing
    dependency, not a corrupt file: raise that."""
    if isinstance(exc, ImportError) or "imagecodecs" in str(exc):
        raise MissingDependencyError(
            f"{page.path} is compressed with {_compression_name(page.compression)}, whose codec "
            "needs the imagecodecs package: pip install imagecodecs"
        ) from exc


#: one thread of this process at a time per segment (all volumes on the file): writers of one
#: tile take turns, and a read of an uncompressed tile never sees it half rewritten in place
_SEGMENT_LOCKS = [threading.RLock() for _ in range(64)]


def _segment_lock(page: _Page, seg: int) -> threading.RLock:
    return _SEGMENT_LOCKS[hash((page.path, page.key, seg)) % len(_SEGMENT_LOCKS)]


#: (inode, size, modification time in ns, racy_until): racy_until is 0 when the stamp was taken
#: at least :data:`RACY_NS` after the modification time, else modification time + RACY_NS.  No
#: device: a volume unpickled on another host (an NFS mount numbered per host) saw every file
#: changed and parsed it all again on its first read
Stamp = tuple[int, int, int, int]

#: A file's modification time comes from a coarse clock: a same-size write in place in the same
#: tick as the write a stamp recorded leaves the stamp as it was.  A stamp taken less than this
#: after the modification time is trusted only until then (by :func:`_now_ns`): the first
#: check after it parses the file again, once (the new stamp is trusted for good)
RACY_NS = 2 * 10**9

#: the clock stamps are judged by (tests set it)
_now_ns = time.time_ns


def _stamp(path: str) -> Stamp:
    """What changes when ``path`` is written in place (a compressed tile appended and its
    entries updated, a program truncating and rewriting it) or replaced (renamed over)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RemoteNotFoundError(
            f"{path} no longer exists (deleted since this volume opened it)") from None
    until = st.st_mtime_ns + RACY_NS
    return (st.st_ino, st.st_size, st.st_mtime_ns, until if _now_ns() < until else 0)


def _current(stamp: Stamp | None, now: Stamp) -> bool:
    """Whether a file stamped ``stamp`` is, as stamped ``now``, as it was: the same, and not a
    racy stamp (see :data:`RACY_NS`) whose time is up."""
    return stamp is not None and stamp[:3] == now[:3] and (not stamp[3] or bool(now[3]))


def _geometry(meta: VolumeMeta) -> tuple[Any, ...]:
    """What a volume's reads stand on: a file parsed again must agree on it to be read on."""
    return (meta.dtype, meta.kind, meta.num_channels,
            tuple((sc.shape, sc.voxel_size, sc.offset) for sc in meta.scales))


class TiffRemote(Remote):
    scheme = "tiff"
    open_options = ("voxel_size", "kind", "gaps")
    create_options = ("compression", "layout")
    carried_extra = ("channel_names",)  # (OME-XML's <Channel Name=...>)

    def __init__(
        self,
        location: str,
        meta: VolumeMeta,
        pages: list[list[list[_Page]]],  # [scale][channel][z]
        mode: str,
        slices: bool,
        decoders: dict[tuple[str, tuple[int, int]], Any] | None = None,
    ) -> None:
        self.location = location
        self.meta = meta
        self.mode = mode
        self.url = f"tiff://{location}"
        self._pages = pages
        self._slices = slices
        self._decoders = decoders if decoders is not None else {}
        self._files: dict[str, _File] = {}
        self._files_lock = threading.Lock()
        self._options: dict[str, Any] = {}  # the open options spec() passes on
        #: each file's stamp as its pages were parsed: a read first checks it (one stat), and a
        #: file written since by another volume, process or program is parsed again
        self._stamps: dict[str, Stamp] = {}
        self._refresh_lock = threading.Lock()
        #: how many times the file was parsed again: a write through pages of before does not
        #: vouch for the pages of now
        self._parsed = 0

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def _path(cls, location: str) -> str:
        if not is_local(location):
            raise CapabilityNotSupportedError(
                f"tiff:// reads local files only, not {location!r}; copy the file to a local "
                "disk first"
            )
        return local_path(location)

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> TiffRemote:
        check_options("tiff://", options, cls.open_options)
        path = cls._path(location)
        if os.path.isdir(path):
            # (stamped before they are parsed: a write in between is seen at the first read)
            stamps = {f: _stamp(f) for f in cls._slice_files(path)}
            remote = cls._open_slices(location, path, mode, options)
        elif not os.path.isfile(path):
            raise RemoteNotFoundError(f"no TIFF file or directory of TIFF slices at {location!r}")
        elif options.get("gaps") is not None:
            raise InvalidRequestError(
                f"gaps= is for a directory of slices (how a number missing from their names is "
                f"taken); {location!r} is one TIFF file")
        else:
            stamps = {path: _stamp(path)}
            remote = cls._open_file(location, path, mode, options)
        remote._options = _spec_options(remote.meta, options)
        remote._stamps = stamps
        return remote

    @staticmethod
    def _slice_files(path: str) -> list[str]:
        names = [n for n in os.listdir(path) if n.lower().endswith(TIFF_SUFFIXES)
                 and not n.startswith(".")]
        return [os.path.join(path, n) for n in sorted(names, key=natural_key)]

    @classmethod
    def _open_file(
        cls, location: str, path: str, mode: str, options: dict[str, Any]
    ) -> TiffRemote:
        return open_file(cls, location, path, mode, options)

    @classmethod
    def _open_slices(
        cls, location: str, path: str, mode: str, options: dict[str, Any]
    ) -> TiffRemote:
        return open_slices(cls, location, path, mode, options)

    @staticmethod
    def _voxel_size(tf: Any, page: Any, own: dict[str, Any], options: dict[str, Any]) -> VoxelSize:
        if options.get("voxel_size") is not None:
            return VoxelSize.of(options["voxel_size"])
        if "voxel_size" in own:
            return VoxelSize.of(own["voxel_size"], own.get("unit", "nm"))
        found = None
        if tf.is_ome and tf.ome_metadata:
            found = _ome_voxel_size(tf.ome_metadata)
        if found is None and tf.is_imagej:
            found = _imagej_voxel_size(tf, page)
        if found is None and not (tf.is_ome or tf.is_imagej):
            # a plain TIFF's resolution tags give x and y; nothing in it says z
            yx = resolution_voxel_size(page, tf.filehandle.path)
            if yx is not None:
                found = (1.0, *yx)
        if found is None:
            return VoxelSize(1.0, 1.0, 1.0)
        z, y, x = (round(v, 6) for v in found)
        return VoxelSize(z, y, x)

    @staticmethod
    def _meta(
        dtype: np.dtype[Any],
        shape: tuple[int, int, int],
        chunks: Vec,
        vs: VoxelSize,
        own: dict[str, Any],
        options: dict[str, Any],
        channels: int,
        encoding: str | None,
    ) -> VolumeMeta:
        kind = options.get("kind") or own.get("kind") or _guess_kind(dtype)
        if kind not in ("image", "segmentation"):
            raise InvalidRequestError(f"kind must be 'image' or 'segmentation', got {kind!r}")
        offset = Vec.of(own.get("offset", (0, 0, 0)), "offset")
        scale = Scale(0, Vec(*shape), chunks, vs, offset, encoding)
        return VolumeMeta(dtype, (scale,), kind, channels, 0)

    def spec(self) -> dict[str, Any]:
        # the voxel size and kind given at open travel with the volume: a worker or a pickled
        # Volume reopened the file without them, as 1 nm voxels of a guessed kind
        out = super().spec()
        if self._options:
            out["options"] = {**out.get("options", {}), **self._options}
        return out

    # -- creating -------------------------------------------------------------------------------
    @classmethod
    def exists(cls, location: str) -> bool:
        path = cls._path(location)
        return os.path.isfile(path) or (os.path.isdir(path) and bool(cls._slice_files(path)))

    @classmethod
    def create(
        cls,
        location: str,
        meta: VolumeMeta,
        *,
        exist_ok: bool = False,
        compression: str = "none",
        layout: str | None = None,
        **options: Any,
    ) -> TiffRemote:
        return create_tiff(cls, location, meta, exist_ok=exist_ok, compression=compression,
                           layout=layout, **options)

    # -- data -----------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.WRITE}) if self.mode == "r+" else frozenset()

    def add_scales(self, scales: Sequence[Scale]) -> None:
        have = len(self.meta.scales)
        raise CapabilityNotSupportedError(
            f"{self.url} holds the {have} level(s) it was written with; voxgate does not add "
            "pyramid levels to a TIFF: downsample a copy (voxgate.copy(vol, 'zarr://...') then "
            "voxgate.downsample), or downsample with num_scales <= the levels the file has"
        )

    def write_grid(self, scale: int = 0) -> Vec:
        if self._slices:
            sc = self.meta.scale(0)
            return Vec(1, sc.shape[1], sc.shape[2])
        return Vec(1, *self._pages[scale][0][0].seg_shape)

    def _file(self, path: str) -> _File:
        with self._files_lock:
            f = self._files.get(path)
            if f is None:
                f = self._files[path] = _File(path, self.mode == "r+")
            return f

    def close(self) -> None:
        with self._files_lock:
            for f in self._files.values():
                f.close()
            self._files.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"] = {}
        state["_files_lock"] = None
        state["_refresh_lock"] = None
        state["_decoders"] = {}  # closures over tifffile pages: rebuilt after unpickling
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._files_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self.__dict__.setdefault("_stamps", {})
        self.__dict__.setdefault("_parsed", 0)

    # -- files changed since they were parsed ---------------------------------------------------
    def _check_current(self, paths: Sequence[str]) -> None:
        """Before a read: parse again each of ``paths`` written or replaced since this volume
        parsed it (another volume of this process, another process, another program), so the
        read sees the file as it is, never old tiles through old offsets nor new bytes through
        old offsets."""
        stale = [p for p in paths if not _current(self._stamps.get(p), _stamp(p))]
        if stale:
            self._refresh(stale)

    def _refresh(self, paths: Sequence[str]) -> None:
        """Parse ``paths`` again.  Each is stamped before it is parsed: a write while it is
        parsed is parsed again at the next read.  A slice is written whole and renamed, so it is
        parsed as it was or as it is; the one file is parsed under its lock, which voxgate's
        writers of compressed tiles hold from the tile's append to its entries' update (parsed
        between the two updates, a tile had its new byte count and its old offset)."""
        with self._refresh_lock:
            where = {p.path: z for z, p in enumerate(self._pages[0][0])} if self._slices else {}
            for path in paths:
                if self._slices:
                    before = _stamp(path)
                    if not _current(self._stamps.get(path), before):
                        self._reparse_slice(path, where[path], before)
                    continue
                with contextlib.ExitStack() as held:
                    # (a folder this process cannot write: no voxgate writer writes there)
                    with contextlib.suppress(OSError):
                        held.enter_context(file_lock(path))
                    before = _stamp(path)
                    if not _current(self._stamps.get(path), before):
                        self._reparse_file(before)

    def _changed(self, path: str, now: str) -> InvalidRequestError:
        sc = self.meta.scale(0)
        return InvalidRequestError(
            f"{path} changed since {self.url} was opened: it now holds {now}, the volume was "
            f"opened as shape {tuple(sc.shape)} {self.meta.dtype} ({self.meta.num_channels} "
            f"channel(s), voxel size {sc.voxel_size}, offset {tuple(sc.offset)}); open it "
            "again (voxgate.open) to read it as it is now")

    def _reparse_file(self, stamp: Stamp) -> None:
        """The one file parsed again (its pages' offsets, byte counts and decoders), as it
        was when stamped ``stamp``."""
        fresh = type(self).open(self.location, mode="r", **self._options)
        if _geometry(fresh.meta) != _geometry(self.meta):
            sc = fresh.meta.scale(0)
            raise self._changed(
                self.location, f"shape {tuple(sc.shape)} {fresh.meta.dtype} "
                f"({fresh.meta.num_channels} channel(s), voxel size {sc.voxel_size}, offset "
                f"{tuple(sc.offset)}, {len(fresh.meta.scales)} level(s))")
        with self._files_lock:
            # (a read holding the old pages and file finishes on them; the file closes
            # when it lets go)
            self._pages, self._decoders, self._files = fresh._pages, fresh._decoders, {}
            self._stamps[self._pages[0][0][0].path] = stamp
            self._parsed += 1

    def _reparse_slice(self, path: str, z: int, stamp: Stamp) -> None:
        """Slice ``z`` (file ``path``) parsed again, as a write of it through this volume
        does (:meth:`_write_slices`)."""
        tifffile = _tifffile()
        sc = self.meta.scale(0)
        old = self._pages[0][0][z]
        with _parsing(path), tifffile.TiffFile(path) as tf:
            p = tf.pages.first
            now = (len(tf.pages), int(p.imagelength), int(p.imagewidth),
                   int(p.samplesperpixel), np.dtype(p.dtype) if p.dtype is not None else None)
            if now != (1, int(sc.shape[1]), int(sc.shape[2]), old.samples, self.meta.dtype):
                raise self._changed(
                    path, f"{now[0]} page(s) of {now[1]} x {now[2]} voxels of {now[4]} "
                    f"({now[3]} sample(s) per voxel)")
            page = _page_info(tf, p, path, 0)
            decoder = p.decode
        with self._files_lock:
            self._files.pop(path, None)
            self._pages[0][0][z] = page
            self._decoders[(path, (0, 0))] = decoder
            self._stamps[path] = stamp

    def _own_write(self, path: str, before: Stamp, parsed: int | None) -> None:
        """After this volume wrote ``path`` in place: the file as it now is is the one its pages
        describe, if it was before the write.  A compressed tile's append moved its offsets,
        so it vouches only for the pages of the ``parsed``-th parse it wrote through; a tile
        written over (``parsed`` None) moved nothing, so the pages of any parse describe the
        file after it (a read that parsed the file again between the write and this call must
        not leave every later read of a long write parsing it again)."""
        with self._files_lock:
            if _current(self._stamps.get(path), before) and parsed in (None, self._parsed):
                self._stamps[path] = _stamp(path)

    def _segments(self, page: _Page, y0: int, y1: int, x0: int, x1: int
                  ) -> Iterator[tuple[int, int, int]]:
        """(segment index, segment row start, segment column start) of segments touching the
        rows [y0, y1) and columns [x0, x1) of ``page``."""
        sh, sw = page.seg_shape
        for gy in range(y0 // sh, -(-y1 // sh)):
            for gx in range(x0 // sw, -(-x1 // sw)):
                yield gy * page.grid_x + gx, gy * sh, gx * sw

    def _page_file(self, scale: int, c: int, z: int) -> tuple[_Page, _File]:
        """A page and the open file it describes, taken together: a slice write replaces
        both, and the old page's offsets mean nothing in the new file."""
        with self._files_lock:
            page = self._pages[scale][c][z]
            f = self._files.get(page.path)
            if f is None:
                f = self._files[page.path] = _File(page.path, self.mode == "r+")
            return page, f

    def _decode(self, page: _Page, f: _File, seg: int, rows: tuple[int, int]) -> np.ndarray:
        """Rows ``rows`` (segment-relative) of segment ``seg``, shape (rows, width, samples)."""
        what = f"segment {seg} of page {page.index}"
        sw = page.seg_shape[1]
        with f.lock:  # a compressed tile's offset and byte count change together
            off, n = int(page.offsets[seg]), int(page.bytecounts[seg])
        rb = sw * page.samples * page.raw_dtype.itemsize
        if off == 0 or n == 0:
            return np.zeros((rows[1] - rows[0], sw, page.samples), page.raw_dtype.newbyteorder("="))
        if page.compression == 1:
            if n < rows[1] * rb:  # rows past the segment's end are another's bytes (or tags)
                raise CorruptChunkError(
                    f"{what} of {page.path} holds {n} bytes, fewer than its rows up to row "
                    f"{rows[1]} need ({rows[1] * rb}; a corrupt byte count or compression "
                    "tag)", chunk=f"{what} of {page.path}")
            with _segment_lock(page, seg):  # not while this process rewrites it in place
                data = f.pread((rows[1] - rows[0]) * rb, off + rows[0] * rb, what)
            arr = np.frombuffer(data, page.raw_dtype).reshape(rows[1] - rows[0], sw, page.samples)
            return arr.astype(page.raw_dtype.newbyteorder("="), copy=False)
        data = f.pread(n, off, what)
        try:
            decoded = self._decoder(page)(data, seg)[0]
        except Exception as exc:
            _check_codec_error(exc, page)
            raise CorruptChunkError(
                f"{what} of {page.path} does not decode ({_compression_name(page.compression)}):"
                f" {exc}", chunk=f"{what} of {page.path}"
            ) from exc
        if decoded is None:
            raise CorruptChunkError(f"{what} of {page.path} does not decode",
                                    chunk=f"{what} of {page.path}")
        arr = np.asarray(decoded).reshape(-1, sw, page.samples)[rows[0]:rows[1]]
        return arr.astype(page.raw_dtype.newbyteorder("="), copy=False)

    def _decoder(self, page: _Page) -> Any:
        """tifffile's decode function of the page (made at open, or again after unpickling)."""
        fn = self._decoders.get((page.path, page.key))
        if fn is None and page.decoder_ifd > 0:
            # one directory parsed, shared by the pages written alike (not the whole file: a
            # worker that unpickled a volume of 70,000 pages parsed them all on its first read)
            shared = (page.path, (-1, page.decoder_ifd))
            fn = self._decoders.get(shared)
            if fn is None:
                tifffile = _tifffile()
                with tifffile.TiffFile(page.path) as tf:
                    tf.filehandle.seek(page.decoder_ifd)
                    fn = self._decoders[shared] = tifffile.TiffPage(tf, page.index).decode
            self._decoders[(page.path, page.key)] = fn
        if fn is None:
            tifffile = _tifffile()
            with tifffile.TiffFile(page.path) as tf:
                if self._slices:
                    self._decoders[(page.path, (0, 0))] = tf.pages.first.decode
                else:
                    for k, level in enumerate(tf.series[0].levels or [tf.series[0]]):
                        for i, frame in enumerate(level.pages):
                            if frame is not None:
                                self._decoders[(page.path, (k, i))] = frame.aspage().decode
            fn = self._decoders[(page.path, page.key)]
        return fn

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        sc = self.meta.scale(scale)
        local = box.translate([-o for o in sc.offset])
        (z0, y0, x0), (z1, y1, x1) = local.start, local.stop
        nc = self.meta.num_channels
        per_page_channels = len(self._pages[scale]) == 1 and nc > 1  # samples per pixel
        out = np.empty((nc, z1 - z0, y1 - y0, x1 - x0), dtype=self.meta.dtype)
        if self._slices:
            self._check_current([self._pages[0][0][z].path for z in range(z0, z1)])
        else:
            self._check_current([self._pages[scale][0][0].path])
        for c in range(len(self._pages[scale])):
            for z in range(z0, z1):
                page, f = self._page_file(scale, c, z)
                for seg, ry, rx in self._segments(page, y0, y1, x0, x1):
                    sh, sw = page.seg_shape
                    a, b = max(y0, ry), min(y1, ry + sh)
                    arr = self._decode(page, f, seg, (a - ry, b - ry))
                    cx0, cx1 = max(x0, rx), min(x1, rx + sw)
                    part = arr[:, cx0 - rx: cx1 - rx]
                    if per_page_channels:
                        out[:, z - z0, a - y0: b - y0, cx0 - x0: cx1 - x0] = np.moveaxis(
                            part, -1, 0)
                    else:
                        out[c, z - z0, a - y0: b - y0, cx0 - x0: cx1 - x0] = part[..., 0]
        return out if nc > 1 else out[0]

    # -- writes ---------------------------------------------------------------------------------
    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._check_writable()
        sc = self.meta.scale(scale)
        start = [a - o for a, o in zip(box.start, sc.offset, strict=True)]
        stop = [b - o for b, o in zip(box.stop, sc.offset, strict=True)]
        arr = array if self.meta.num_channels > 1 else array[np.newaxis]
        # a file replaced (renamed over) since it was parsed: written through the old
        # descriptor, into the deleted file, the write was lost
        if self._slices:
            self._check_current([self._pages[0][0][z].path for z in range(start[0], stop[0])])
            self._write_slices(start, stop, arr[0])
            return
        self._check_current([self._pages[scale][0][0].path])
        (z0, y0, x0), (z1, y1, x1) = start, stop
        parsed = self._parsed  # (before the pages are taken)
        for c, row in enumerate(self._pages[scale]):
            for z in range(z0, z1):
                page = row[z]
                for seg, ry, rx in self._segments(page, y0, y1, x0, x1):
                    self._write_segment(page, seg, ry, rx, arr[c, z - z0], y0, y1, x0, x1,
                                        scale, parsed)

    def _write_segment(self, page: _Page, seg: int, ry: int, rx: int, plane: np.ndarray,
                       y0: int, y1: int, x0: int, x1: int, scale: int = 0,
                       parsed: int = -1) -> None:
        sh, sw = page.seg_shape
        if page.samples != 1 or (page.predictor != 1 and page.compression == 1):
            raise CapabilityNotSupportedError(
                f"{page.path} has several samples per pixel or a predictor without "
                "compression; voxgate writes TIFFs of one sample per pixel (copy it to a new "
                "tiff:// first)"
            )
        sc = self.meta.scale(scale)
        ny, nx = int(sc.shape[1]), int(sc.shape[2])
        # a tile is whole even at the page's edge; the last strip holds only the rows left
        # (an uncompressed one has room for no more: writing a whole strip there overwrote
        # what follows it in the file, e.g. the next page's directory)
        rows = sh if page.tiled else min(sh, ny - ry)
        a, b = max(y0, ry), min(y1, ry + rows)
        cx0, cx1 = max(x0, rx), min(x1, rx + sw)
        covers = a == ry and b == ry + rows and cx0 == rx and (cx1 == rx + sw or cx1 == nx)
        f = self._file(page.path)
        # writes of one tile from several threads (unaligned boxes) take turns
        with _segment_lock(page, seg):
            if covers:
                tile = np.zeros((rows, sw), dtype=self.meta.dtype)
                tile[a - ry: b - ry, cx0 - rx: cx1 - rx] = plane[
                    a - y0: b - y0, cx0 - x0: cx1 - x0]
                self._store_segment(page, f, seg, tile, parsed)
                return
            # part of a tile: read, change, store it under the file's lock, so writers in other
            # volumes and processes take turns too, and read it where the file says it is now
            # (another volume or process may have rewritten it since this volume was opened)
            with f.exclusive():
                self._reload_entry(page, f, seg)
                tile = self._decode(page, f, seg, (0, rows))[..., 0].copy()
                tile[a - ry: b - ry, cx0 - rx: cx1 - rx] = plane[
                    a - y0: b - y0, cx0 - x0: cx1 - x0]
                self._store_segment(page, f, seg, tile, parsed)

    @staticmethod
    def _reload_entry(page: _Page, f: _File, seg: int) -> None:
        """Read segment ``seg``'s offset and byte count from the file (under its lock)."""
        if page.offsets_at < 0 or page.bytecounts_at < 0 or page.compression == 1:
            return  # an uncompressed segment stays where it is
        what = f"the entries of segment {seg} of page {page.index}"
        osz, bsz = page.offset_fmt.itemsize, page.bytecount_fmt.itemsize
        off = np.frombuffer(f.pread(osz, page.offsets_at + seg * osz, what), page.offset_fmt)
        cnt = np.frombuffer(f.pread(bsz, page.bytecounts_at + seg * bsz, what),
                            page.bytecount_fmt)
        page.offsets[seg], page.bytecounts[seg] = int(off[0]), int(cnt[0])

    def _store_segment(self, page: _Page, f: _File, seg: int, tile: np.ndarray,
                       parsed: int = -1) -> None:
        raw = tile.astype(page.raw_dtype, copy=False)
        if page.compression == 1:
            data = raw.tobytes()
            if len(data) > int(page.bytecounts[seg]):  # never write past the segment's end
                raise CorruptChunkError(
                    f"segment {seg} of page {page.index} of {page.path} holds "
                    f"{int(page.bytecounts[seg])} bytes, fewer than its {tile.shape[0]} rows "
                    f"of {tile.shape[1]} voxels: nothing was written to it",
                    chunk=f"segment {seg} of page {page.index} of {page.path}")
            before = _stamp(page.path)
            os.pwrite(f.fd, data, int(page.offsets[seg]))
            self._own_write(page.path, before, None)  # (in place: no offset moved)
            return
        tifffile = _tifffile()
        try:
            encode = tifffile.TIFF.COMPRESSORS[page.compression]
        except (KeyError, ImportError) as exc:
            _check_codec_error(exc, page)
            raise
        if page.predictor != 1:  # (horizontal differencing, as tifffile, libtiff write it)
            try:
                predict = tifffile.TIFF.PREDICTORS[page.predictor]
            except KeyError as exc:
                raise MissingDependencyError(
                    f"{page.path} uses the TIFF predictor {page.predictor}, whose encoder needs "
                    f"the imagecodecs package: pip install imagecodecs ({exc})"
                ) from exc
            raw = predict(np.ascontiguousarray(raw), axis=-1)
        data = bytes(encode(raw))
        if len(data) >= 1 << (8 * page.bytecount_fmt.itemsize):
            raise CapabilityNotSupportedError(
                f"{page.path}: the new tile does not fit the file's byte count entries"
            )
        with f.exclusive():
            before = _stamp(page.path)
            end = os.lseek(f.fd, 0, os.SEEK_END)
            end += (-end) % 2  # TIFF data starts on a word boundary
            # before anything is written: a classic TIFF's 32-bit offsets end at 4 GiB (the
            # byte count entry was updated, then the offset's failed: the tile was corrupt)
            if end + len(data) > 1 << (8 * page.offset_fmt.itemsize):
                raise CapabilityNotSupportedError(
                    f"{page.path}: a rewritten tile is appended at the file's end ({end} "
                    f"bytes), past what its {8 * page.offset_fmt.itemsize}-bit offsets reach; "
                    "nothing was written (copy it to a BigTIFF first: voxgate.copy(vol, "
                    "'tiff://new.tif'))")
            os.pwrite(f.fd, data, end)
            os.fsync(f.fd)
            os.pwrite(f.fd, np.array([len(data)], page.bytecount_fmt).tobytes(),
                      page.bytecounts_at + seg * page.bytecount_fmt.itemsize)
            os.pwrite(f.fd, np.array([end], page.offset_fmt).tobytes(),
                      page.offsets_at + seg * page.offset_fmt.itemsize)
            page.offsets[seg] = end
            page.bytecounts[seg] = len(data)
            self._own_write(page.path, before, parsed)

    def _write_slices(self, start: Sequence[int], stop: Sequence[int], arr: np.ndarray) -> None:
        (z0, y0, x0), (z1, y1, x1) = start, stop
        sc = self.meta.scale(0)
        ny, nx = int(sc.shape[1]), int(sc.shape[2])
        whole = (y0, x0) == (0, 0) and (y1, x1) == (ny, nx)
        tifffile = _tifffile()
        for z in range(z0, z1):
            path = self._pages[0][0][z].path
            # one writer of a slice at a time (threads, other volumes, other processes), and
            # the rest of the slice read from the file as it is now, not as this volume
            # opened it: writers of disjoint parts of one slice lost all parts but one
            with file_lock(path):
                with tifffile.TiffFile(path) as tf:
                    p = tf.pages.first
                    own = _own_tag(p)
                    tile = (p.tilelength, p.tilewidth) if p.is_tiled else None
                    comp = None if p.compression == 1 else _compression_name(int(p.compression))
                    keep = _slice_keep(p)
                    if whole:
                        plane = arr[z - z0]
                    else:
                        plane = np.array(p.asarray(), dtype=self.meta.dtype).reshape(ny, nx)
                        plane[y0:y1, x0:x1] = arr[z - z0]
                extratags = [(VOXGATE_TAG, "s", 0, json.dumps(own), True)] if own else []
                _write_slice(path, np.ascontiguousarray(plane), tile, comp, extratags, keep)
                stamp = _stamp(path)  # (the file parsed next, under the lock: as written)
                fresh = _File(path, self.mode == "r+")
                with tifffile.TiffFile(path) as tf:
                    page = _page_info(tf, tf.pages.first, path, 0)
                    decoder = tf.pages.first.decode
            # the new page and its file replace the old pair together; a read still holding
            # the old pair finishes on the old file, which closes when it lets go
            with self._files_lock:
                self._files[path] = fresh
                self._pages[0][0][z] = page
                self._decoders[(path, (0, 0))] = decoder
                self._stamps[path] = stamp
