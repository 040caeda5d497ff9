"""The slices of a directory read in bulk: the first slice parsed whole by tifffile, every other
one read raw (its header and directory, a few kilobytes, with ``pread``) and compared with the
first byte for byte, as :mod:`.ifds` compares the pages of one stack.

A directory of 10,000 slices opened file by file with tifffile (``TiffFile``: the header, the
whole first page, the chain of pages walked) took 2-5 s.  Slices of one acquisition are written
alike: the same byte order, the same tags in the same order, the same values but for where their
data lie.  So each slice's header and directory are read without tifffile and must match the
first slice's: its header (byte order, TIFF or BigTIFF), its tag list, the bytes of every tag
that says how it is read (:data:`.ifds._IDENTITY`: sizes, sample format, compression, predictor,
strip and tile geometry, photometric, JPEG tables, ...), the type and count of its segment
offsets and byte counts, no second page, and, uncompressed, segments that hold their rows.  Its
segment table is then taken and it shares the first slice's decoder.  A slice that differs in
anything compared, whose directory does not fit in the file, or that is no TIFF at all, is
parsed whole by tifffile, as every slice used to be: it is refused or read exactly as a
file-by-file open would.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np

from .ifds import _IDENTITY, _INT_CODE, _TYPE_SIZE, _raw_need
from .pages import _Page

_HEAD = 4096  # bytes read at a slice's start: its header, and its directory when written first
_NDPI = 65420  # (tifffile moves an NDPI page's tile offsets: never taken raw)


class SliceTemplate:
    """The first slice of a directory, raw: what every other slice's directory must repeat."""

    def __init__(self, rep: _Page, page: Any, fd: int, head: bytes, ifd: int, table: bytes,
                 order: str, big: bool) -> None:
        self.rep = rep
        self.decode = page.decode
        self.order = order
        self.byteorder = _byteorder(order)
        self.magic = head[: 8 if big else 4]
        self.vsize = self.csize = 8 if big else 4
        self.nsize, self.esize = (8, 20) if big else (2, 12)
        esize = self.esize
        self.count = len(table) // esize
        codes = [int.from_bytes(table[i * esize: i * esize + 2], self.byteorder)
                 for i in range(self.count)]
        which = {c: i for i, c in enumerate(codes)}
        mask = np.zeros(len(table), dtype=bool)
        #: identity values outside their entries: (position of the pointer in the table, bytes)
        self.outside: list[tuple[int, bytes]] = []
        #: the offsets and byte counts: (position of the entry, numpy dtype, count)
        self.segments: list[tuple[int, np.dtype[Any], int]] = []
        self.usable = True
        # tifffile prefers tile offsets to strip offsets (as _page_info reads them)
        off = next((c for c in (324, 273) if c in which), None)
        cnt = next((c for c in (325, 279) if c in which), None)
        if off is None or cnt is None or _NDPI in which or 256 not in which \
                or 257 not in which or rep.compression in (2, 3, 4):
            # (CCITT strips without byte counts, a size read from JPEG data: tifffile's own)
            self.usable = False
            return
        for i, c in enumerate(codes):
            at = i * esize
            mask[at: at + 2] = True
            typ, n = self._type_count(table, at)
            if c in _IDENTITY:
                nbytes = _TYPE_SIZE.get(typ, 1) * n
                if nbytes <= self.vsize:  # the value is in the entry
                    mask[at: at + esize] = True
                else:
                    mask[at: at + 4 + self.csize] = True
                    value = self._value(table, at, head, fd, nbytes)
                    if value is None:
                        self.usable = False
                        return
                    self.outside.append((at, value))
        for c in (off, cnt):  # the same type and number of segments, their values taken
            at = which[c] * esize
            mask[at: at + 4 + self.csize] = True
            typ, n = self._type_count(table, at)
            if typ not in _INT_CODE:
                self.usable = False
                return
            self.segments.append((at, np.dtype(order + _INT_CODE[typ]), n))
        # the bytes compared, as runs: (start, stop, the first slice's bytes there)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.view(np.int8), [0]])))
        self.runs = [(int(a), int(b), table[a:b]) for a, b in zip(edges[::2], edges[1::2],
                                                                  strict=True)]
        self.need = _raw_need(page, rep.seg_shape, len(rep.bytecounts)) \
            if rep.compression == 1 else None
        # the first slice read raw must give what tifffile gave (else tifffile fixed something)
        got = self._segments(table, ifd, head, fd)
        if got is None or not (np.array_equal(got[0], rep.offsets)
                               and np.array_equal(got[1], rep.bytecounts)):
            self.usable = False

    @classmethod
    def of(cls, path: str, rep: _Page, page: Any) -> SliceTemplate | None:
        """The template of the first slice (parsed by tifffile into ``page`` and ``rep``), or
        None when its directory is not one voxgate compares raw."""
        fd = os.open(path, os.O_RDONLY)
        try:
            raw = _directory(fd, None)
            template = None if raw is None else cls(rep, page, fd, *raw)
        finally:
            os.close(fd)
        return template if template is not None and template.usable else None

    def scan(self, path: str) -> _Page | None:
        """The page of slice ``path`` when it is written like the first slice, else None (then
        tifffile parses it whole)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            raw = _directory(fd, self)
            if raw is None:
                return None
            head, ifd, table, _, _ = raw
            for a, b, want in self.runs:
                if table[a:b] != want:
                    return None
            for at, want in self.outside:
                if self._value(table, at, head, fd, len(want)) != want:
                    return None
            got = self._segments(table, ifd, head, fd)
        except OSError:  # (a directory named like a slice, a read error: tifffile's to tell)
            return None
        finally:
            os.close(fd)
        if got is None:
            return None
        offsets, counts, offsets_at, counts_at = got
        if self.need is not None and ((counts != 0) & (counts < self.need)).any():
            return None  # (a short uncompressed strip or tile: refused by the whole parse)
        rep = self.rep
        return _Page(
            path=path, index=0, key=rep.key, offsets=offsets, bytecounts=counts,
            seg_shape=rep.seg_shape, grid_x=rep.grid_x, tiled=rep.tiled,
            compression=rep.compression, predictor=rep.predictor, raw_dtype=rep.raw_dtype,
            samples=rep.samples, offsets_at=offsets_at, bytecounts_at=counts_at,
            offset_fmt=rep.offset_fmt, bytecount_fmt=rep.bytecount_fmt, decoder_ifd=ifd)

    def _type_count(self, table: bytes, at: int) -> tuple[int, int]:
        typ = int.from_bytes(table[at + 2: at + 4], self.byteorder)
        return typ, int.from_bytes(table[at + 4: at + 4 + self.csize], self.byteorder)

    def _value(self, table: bytes, at: int, head: bytes, fd: int, nbytes: int) -> bytes | None:
        """The ``nbytes`` the entry at ``at`` points to (``head``, else read from ``fd``), None
        when they are not in the file."""
        pointer = at + 4 + self.csize
        where = int.from_bytes(table[pointer: pointer + self.vsize], self.byteorder)
        return _read(head, fd, where, nbytes)

    def _segments(self, table: bytes, ifd: int, head: bytes, fd: int
                  ) -> tuple[np.ndarray, np.ndarray, int, int] | None:
        out: list[Any] = []
        ats: list[int] = []
        for at, dtype, n in self.segments:
            nbytes = dtype.itemsize * n
            if nbytes <= self.vsize:
                start = at + 4 + self.csize
                data: bytes | None = table[start: start + nbytes]
                ats.append(ifd + self.nsize + start)
            else:
                pointer = at + 4 + self.csize
                where = int.from_bytes(table[pointer: pointer + self.vsize], self.byteorder)
                data = _read(head, fd, where, nbytes)
                ats.append(where)
            if data is None:
                return None
            out.append(np.frombuffer(data, dtype=dtype).astype(np.uint64))
        return out[0], out[1], ats[0], ats[1]


def _byteorder(order: str) -> Literal["little", "big"]:
    return "little" if order == "<" else "big"


def _read(head: bytes, fd: int, at: int, nbytes: int) -> bytes | None:
    if at <= 0:
        return None
    if at + nbytes <= len(head):
        return head[at: at + nbytes]
    data = os.pread(fd, nbytes, at)
    return data if len(data) == nbytes else None


def _directory(fd: int, like: SliceTemplate | None
               ) -> tuple[bytes, int, bytes, str, bool] | None:
    """(the file's first bytes, its first directory's offset, the directory's entries, byte
    order, BigTIFF) of a one-page TIFF, or None: not a TIFF, not like ``like`` (its header or
    number of tags), a directory past the file's end, or a second page."""
    head = os.pread(fd, _HEAD, 0)
    if like is not None:
        if head[: len(like.magic)] != like.magic:
            return None
        order, big = like.order, like.vsize == 8
    else:
        if head[:2] == b"II":
            order = "<"
        elif head[:2] == b"MM":
            order = ">"
        else:
            return None
        bo = _byteorder(order)
        version = int.from_bytes(head[2:4], bo)
        if version == 43 and int.from_bytes(head[4:6], bo) == 8 and head[6:8] == b"\0\0":
            big = True
        elif version == 42:
            big = False
        else:
            return None
    bo = _byteorder(order)
    hlen, vsize = (8, 8) if big else (4, 4)
    nsize, esize = (8, 20) if big else (2, 12)
    ifd = int.from_bytes(head[hlen: hlen + vsize], bo)
    if ifd < hlen + vsize:
        return None
    if ifd + nsize <= len(head):
        n = int.from_bytes(head[ifd: ifd + nsize], bo)
    else:
        first = os.pread(fd, nsize, ifd)
        if len(first) != nsize:
            return None
        n = int.from_bytes(first, bo)
    if n <= 0 or n > 4096 or (like is not None and n != like.count):
        return None
    end = ifd + nsize + n * esize + vsize
    block = head[ifd: end] if end <= len(head) else os.pread(fd, end - ifd, ifd)
    if len(block) != end - ifd or any(block[-vsize:]):  # (a next page: parsed whole)
        return None
    return head, ifd, block[nsize: nsize + n * esize], order, big
