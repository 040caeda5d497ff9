"""The pages of a long TIFF stack read in bulk: one page per distinct directory layout parsed by
tifffile, the others compared with it byte for byte, all at once (numpy), and only their
segment tables taken.

A 70,000-page stack parsed page by page with tifffile (``TiffPage``: every tag of every page)
took 20 s to open.  Pages of one stack are written alike: the same tags in the same order, the
same values but for where their data lie.  So the pages are grouped by their list of tag codes;
the first page of each group is parsed whole by tifffile and checked as any page was (shape,
dtype, bit depth, planar configuration, raw segment sizes); every other page of the group must
carry the same bytes in each tag that says how to read it (:data:`_IDENTITY`: sizes, sample
format, compression, predictor, strip and tile geometry, photometric, JPEG tables, ...) and the
same type and count of segment offsets and byte counts, and then differs from it only in those
offsets and byte counts, which are gathered.  A page that differs in anything compared, or whose
directory does not fit in the file, is parsed whole by tifffile as before: it is refused or read
exactly as a page-by-page open would.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .pages import _check_raw_sizes, _Page

#: tags whose values say how a page's segments are decoded and where they go: pages that agree
#: in these (and their tag list) share shape, dtype, segment geometry and decoder
_IDENTITY = frozenset({
    256, 257, 258, 259, 262, 266, 277, 278, 284, 317, 322, 323, 338, 339, 347, 530, 532,
    32997, 32998, 65007, 65008, 65009,
})
_OFFSETS = (273, 324)  # StripOffsets, TileOffsets
_COUNTS = (279, 325)  # StripByteCounts, TileByteCounts
_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
              13: 4, 16: 8, 17: 8, 18: 8}
_INT_CODE = {3: "H", 4: "I", 13: "I", 16: "Q"}


def scan_pages(
    tf: Any,
    path: str,
    ifds: Sequence[int],
    numbers: Sequence[int],
    whole: Callable[[int, Any], _Page],
) -> tuple[list[_Page | None], list[Any]]:
    """The :class:`_Page` of the page at each IFD offset in ``ifds`` (one level's pages, in
    order) and the tifffile page whose ``decode`` decodes it.  The first page of each layout and
    every page that differs from its group are made by ``whole(i, tiffpage)`` (which checks
    them as a page-by-page open does); the others copy their group's first page but for their
    own segment table (numbered ``numbers[i]``, the page's index in the file, and keyed
    ``(first's level, i)``).  An entry is None where ``ifds[i]`` is not a directory that fits in
    the file (the caller parses that page its own way)."""
    n = len(ifds)
    out: list[_Page | None] = [None] * n
    src: list[Any] = [None] * n
    if n == 0:
        return out, src
    t = tf.tiff
    order = tf.byteorder
    big = t.offsetsize == 8
    nsize, esize, vsize = t.tagnosize, t.tagsize, t.offsetsize
    csize = 8 if big else 4  # the count field
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return out, src
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        buf = np.frombuffer(mm, dtype=np.uint8)
        offs = np.asarray(ifds, dtype=np.int64)
        good = (offs > 0) & (offs + nsize <= size)
        tagno = np.zeros(n, dtype=np.int64)
        idx = np.flatnonzero(good)
        heads = _gather(buf, offs[idx], nsize)
        tagno[idx] = heads.copy().view(order + ("u8" if big else "u2")).ravel()
        good &= (tagno > 0) & (tagno <= 4096) & (offs + nsize + tagno * esize <= size)
        # group by tag count, then by the list of tag codes
        for count in np.unique(tagno[good]):
            members = np.flatnonzero(good & (tagno == count))
            table = _gather(buf, offs[members] + nsize, int(count) * esize)
            table = table.reshape(len(members), int(count), esize)
            codes = table[:, :, :2].copy().view(order + "u2")[..., 0]
            _, first_of, layout = np.unique(codes, axis=0, return_index=True,
                                            return_inverse=True)
            for g, rep_row in enumerate(first_of):
                rows = np.flatnonzero(layout.ravel() == g)
                _scan_group(tf, buf, size, offs, members[rows], table[rows],
                            [int(c) for c in codes[rep_row]], order, csize, vsize, numbers,
                            whole, out, src)
        del buf, heads
    finally:
        try:
            mm.close()
        except BufferError:  # (an exception's traceback still holds a view: closed by GC)
            pass
    return out, src


def _scan_group(tf: Any, buf: np.ndarray, size: int, offs: np.ndarray, members: np.ndarray,
                table: np.ndarray, codes: list[int], order: str, csize: int, vsize: int,
                numbers: Sequence[int], whole: Callable[[int, Any], _Page], out: list[_Page | None],
                src: list[Any]) -> None:
    """Pages ``members`` (their directory entries ``table``) that share the tag list ``codes``:
    the first parsed whole, the rest compared with it."""
    from .pages import _tifffile

    tifffile = _tifffile()
    first = int(members[0])
    tf.filehandle.seek(int(offs[first]))
    rep_page = tifffile.TiffPage(tf, numbers[first])
    rep = out[first] = whole(first, rep_page)
    src[first] = rep_page
    if len(members) == 1:
        return
    which = {c: i for i, c in enumerate(codes)}
    off_code = next((c for c in _OFFSETS if c in which), None)
    cnt_code = next((c for c in _COUNTS if c in which), None)
    if off_code is None or cnt_code is None:
        for m in members[1:]:
            out[int(m)], src[int(m)] = _whole_at(tf, offs, int(m), numbers, whole)
        return
    same = np.ones(len(members), dtype=bool)
    for c in codes:
        e = table[:, which[c]]
        if c in _IDENTITY:
            typ, cnt = _type_count(e[0], order, csize)
            nbytes = _TYPE_SIZE.get(typ, 1) * cnt
            if nbytes <= vsize:  # the value is in the entry
                same &= (e == e[0]).all(axis=1)
            else:  # compare the values where they are
                same &= (e[:, : 4 + csize] == e[0, : 4 + csize]).all(axis=1)
                at = _pointers(e, order, csize, vsize)
                ok = (at >= 0) & (at + nbytes <= size)
                same &= ok
                vals = _gather(buf, np.where(ok, at, 0), nbytes)
                same &= (vals == vals[0]).all(axis=1)
        elif c in (off_code, cnt_code):  # the same type and number of segments
            same &= (e[:, : 4 + csize] == e[0, : 4 + csize]).all(axis=1)
    arrays = {}
    for c in (off_code, cnt_code):
        e = table[:, which[c]]
        typ, cnt = _type_count(e[0], order, csize)
        if typ not in _INT_CODE:
            same[:] = False
            break
        isz = _TYPE_SIZE[typ]
        entry_at = offs[members] + tf.tiff.tagnosize + which[c] * tf.tiff.tagsize
        if cnt * isz <= vsize:
            at = entry_at + 4 + csize
        else:
            at = _pointers(e, order, csize, vsize)
            ok = (at >= 0) & (at + cnt * isz <= size)
            same &= ok
            at = np.where(ok, at, 0)
        vals = _gather(buf, at, cnt * isz)
        arrays[c] = (at, vals.view(order + _INT_CODE[typ]).astype(np.uint64))
    if rep.compression == 1 and same.any():  # every page's segments hold their rows
        counts = arrays[cnt_code][1]
        need = _raw_need(rep_page, rep.seg_shape, counts.shape[1])
        short = np.flatnonzero(same & ((counts != 0) & (counts < need)).any(axis=1))
        if len(short):
            r = int(short[0])
            _check_raw_sizes(rep_page, rep.path, numbers[int(members[r])], rep.seg_shape,
                             counts[r])
    for r in range(1, len(members)):
        m = int(members[r])
        if not same[r]:
            out[m], src[m] = _whole_at(tf, offs, m, numbers, whole)
            continue
        src[m] = rep_page
        out[m] = _Page(
            path=rep.path, index=numbers[m], key=(rep.key[0], m), offsets=arrays[off_code][1][r],
            bytecounts=arrays[cnt_code][1][r],
            seg_shape=rep.seg_shape, grid_x=rep.grid_x, tiled=rep.tiled,
            compression=rep.compression, predictor=rep.predictor, raw_dtype=rep.raw_dtype,
            samples=rep.samples, offsets_at=int(arrays[off_code][0][r]),
            bytecounts_at=int(arrays[cnt_code][0][r]), offset_fmt=rep.offset_fmt,
            bytecount_fmt=rep.bytecount_fmt, decoder_ifd=rep.decoder_ifd)


def _gather(buf: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """``buf[s:s + length]`` for each ``s`` of ``starts``, as rows (the index arrays made a
    batch at a time: 8 bytes of index per byte gathered)."""
    out = np.empty((len(starts), length), dtype=np.uint8)
    step = max(1, (1 << 22) // max(1, length))
    span = np.arange(length, dtype=np.int64)
    for i in range(0, len(starts), step):
        out[i:i + step] = buf[starts[i:i + step, None] + span]
    return out


def _whole_at(tf: Any, offs: np.ndarray, m: int, numbers: Sequence[int],
              whole: Callable[[int, Any], _Page]) -> tuple[_Page, Any]:
    from .pages import _tifffile

    tf.filehandle.seek(int(offs[m]))
    page = _tifffile().TiffPage(tf, numbers[m])
    return whole(m, page), page


def _raw_need(page: Any, seg: tuple[int, int], nseg: int) -> np.ndarray:
    """The bytes each uncompressed segment of ``page`` must hold (:func:`_check_raw_sizes`)."""
    row = seg[1] * int(page.samplesperpixel) * np.dtype(page.dtype).itemsize
    if page.is_tiled:
        return np.full(nseg, seg[0] * row, dtype=np.uint64)
    left = int(page.imagelength) - np.arange(nseg, dtype=np.int64) * seg[0]
    return (np.clip(left, 0, seg[0]) * row).astype(np.uint64)


def _type_count(entry: np.ndarray, order: str, csize: int) -> tuple[int, int]:
    typ = int(entry[2:4].copy().view(order + "u2")[0])
    cnt = int(entry[4: 4 + csize].copy().view(order + ("u8" if csize == 8 else "u4"))[0])
    return typ, cnt


def _pointers(e: np.ndarray, order: str, csize: int, vsize: int) -> np.ndarray:
    raw = np.ascontiguousarray(e[:, 4 + csize: 4 + csize + vsize])
    return raw.view(order + ("u8" if vsize == 8 else "u4"))[:, 0].astype(np.int64)


#: tifffile's kinds of series besides a plain uniform one (``TiffFile.series`` tries these first)
_SERIES_KINDS = ("shaped", "lsm", "mmstack", "ome", "imagej", "ndtiff", "fluoview", "stk",
                 "sis", "svs", "scn", "qpi", "ndpi", "bif", "avs", "eer", "philips",
                 "scanimage", "indica", "nih", "mdgel", "micromanager", "tvips", "agilent")


class _Directory:
    """One page's directory where ``TiffFile.series`` would have made a ``TiffFrame``."""

    __slots__ = ("index", "offset", "tf")
    is_virtual = False

    def __init__(self, tf: Any, index: int, offset: int) -> None:
        self.tf, self.index, self.offset = tf, index, offset

    def aspage(self) -> Any:
        from .pages import _tifffile

        self.tf.filehandle.seek(self.offset)
        return _tifffile().TiffPage(self.tf, self.index)


class PlainSeries:
    """A plain stack's one series, without ``TiffFile.series`` making a frame of every page
    (a third of the open of a long stack once the pages were read in bulk)."""

    def __init__(self, tf: Any, offsets: list[int]) -> None:
        self.levels: list[Any] = []
        first = tf.pages.first
        n = len(offsets)
        self.axes = ("I" + first.axes) if n > 1 else first.axes
        self.shape = (n, *first.shape) if n > 1 else tuple(first.shape)
        self.pages = [_Directory(tf, i, o) for i, o in enumerate(offsets)]


def plain_series(tf: Any) -> PlainSeries | None:
    """The one series of a plain multipage TIFF (no OME, ImageJ, tifffile shape or other
    metadata, no SubIFDs) that tifffile finds uniform (its pages 1, 7 and the last alike the
    first; every page is compared by :func:`scan_pages` after), or None: use ``tf.series``."""
    pages = tf.pages
    first = pages.first
    if first.subifds or any(getattr(tf, "is_" + k, False) for k in _SERIES_KINDS):
        return None
    if not tf.is_uniform:
        return None
    n = len(pages)  # walks the chain of directories (tifffile reports a broken one)
    offsets = getattr(pages, "_offsets", None)
    if not isinstance(offsets, list) or len(offsets) != n:
        return None
    return PlainSeries(tf, [int(o) for o in offsets])
