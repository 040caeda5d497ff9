"""Shared plumbing for the Remotes that tensorstore drives (zarr, N5, precomputed).

Key-value access (kvstore specs, the tensorstore context, error translation, atomic writes)
is :mod:`voxgate.storage`; this module adds

- ``TSArray``: one scale's tensorstore handle read and written as C-order (c,) z, y, x, whatever
  the format's native axis order, without paying a transpose for Fortran-order formats.

Writes to local files go through a second handle, in :func:`ts_write_context` (more files
written at once than read: each ends in an fsync), opened at the first write from the reading
handle's spec.  Large writes to local files also skip tensorstore's copy of the source array:
tensorstore encodes straight from the caller's array
(``can_reference_source_data_indefinitely``), through a handle opened for that one write in a
child context with a cache of its own.  Nothing else reads
through that cache, and it goes away with the handle when the write returns, so the caller may
change its array afterwards (tensorstore's condition for the flag) and no read, now or later,
can see it.  The copy it saves is the whole array again in new chunk buffers (and their page
faults): about 15% of the CPU time of a whole-volume compressed_segmentation write.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorstore as ts

from ..errors import CapabilityNotSupportedError, CorruptChunkError, InvalidRequestError
from ..geometry import Box, Vec, grid_range
from ..storage import ts_errors, ts_write_context
from .base import check_time

__all__ = [
    "REFERENCE_WRITE_BYTES", "TIME_NAMES", "TSArray", "at_time_point", "time_index",
]

#: the names of a time axis (OME-Zarr's type "time" axis is "t"), read one time point at a time
TIME_NAMES = ("t", "time")


def time_index(time: int | None, points: int, where: str, axis: str = "t") -> int:
    """The index along a time axis of ``points`` time points (0: the array has none) that
    ``time`` (the open option) names: required when there are several, from 0 to
    ``points - 1``; an array without a time axis takes None or 0 only."""
    check_time(time)
    if points == 0:
        if time:
            raise InvalidRequestError(
                f"{where} has no time axis ('t'); time={time} names a time point of a "
                "timelapse (leave it out, or give 0)")
        return 0
    if time is None:
        if points > 1:
            raise InvalidRequestError(
                f"{where} is a timelapse of {points} time points (its {axis!r} axis); voxgate "
                f"reads one at a time: open it with time=0..{points - 1}")
        return 0
    if not 0 <= time < points:
        raise InvalidRequestError(
            f"{where}: time={time} is outside its {points} time point"
            f"{'s' if points > 1 else ''} (its {axis!r} axis): give 0..{points - 1}")
    return int(time)


def at_time_point(view: ts.TensorStore, names: list[str], keep: Collection[str],
                  time: int | None, where: str) -> tuple[ts.TensorStore, list[str], int]:
    """``view`` (its dimensions named by ``names``) with every dimension whose name is not in
    ``keep`` indexed away: a time axis (:data:`TIME_NAMES`) at the time point ``time`` names
    (:func:`time_index`), any other at its origin when it has length 1 (a longer one is
    refused, and so are two time axes).  Returns the view, the names of the dimensions left
    (in order) and the length of the time axis (1 when there is none)."""
    timed_names = [n for n in names if n in TIME_NAMES and n not in keep]
    if len(timed_names) > 1:
        # (one time= would index both: a diagonal of the two read as one time series)
        raise InvalidRequestError(f"{where} has more than one time axis: {names}")
    left = list(names)
    points = 1
    timed = False
    for i in reversed(range(len(left))):
        name = left[i]
        if name in keep:
            continue
        at = 0
        if name in TIME_NAMES:
            timed = True
            points = max(points, int(view.shape[i]))
            at = time_index(time, int(view.shape[i]), where, name)
        elif view.shape[i] != 1:
            axis = f"a {name!r} axis" if name else f"an unnamed axis (dimension {i})"
            raise CapabilityNotSupportedError(
                f"{where} has {axis} of length {view.shape[i]}; voxgate reads a time "
                "axis ('t') one time point at a time (time=) and other extra axes of length 1 "
                "only"
            )
        view = view[ts.d[i][view.domain.origin[i] + at]]
        left.pop(i)
    if not timed:
        time_index(time, 0, where)
    return view, left, points


#: writes of at least this many bytes to local files are encoded from the caller's array (no
#: copy); smaller ones copy (a copy of less is cheap, and each handle costs a little)
REFERENCE_WRITE_BYTES = 4 * 2**20


class TSArray:
    """One scale as C-order ``(c,) z, y, x`` over a tensorstore handle.

    ``reversed_axes``: the native dimensions are ``x, y, z[, c]`` stored Fortran-order
    (precomputed, N5).  Reading the native box in Fortran order and taking ``.T`` gives exactly
    the C-order ZYX array with no copy.  Otherwise the native dimensions are ``[c,] z, y, x``.
    ``channel``: whether the native array has a channel dimension (last when reversed, first
    otherwise); with ``keep_channel`` False a single channel is dropped from results.
    """

    def __init__(
        self,
        store: ts.TensorStore,
        *,
        reversed_axes: bool,
        channel: bool,
        keep_channel: bool,
        name: str,
        reference_writes: bool = False,
        own_context: bool = False,
    ) -> None:
        """``own_context``: ``store`` was opened with voxgate's own context
        (:func:`~voxgate.storage.ts_context`) and a spec with no context of its own, so a
        handle opened from ``store.spec()`` (which leaves the store's context resources out,
        and holds its whole metadata: it is not read again) in a child of that context reaches
        the same chunks; on local files, writes then go through such a handle in
        :func:`~voxgate.storage.ts_write_context`.  ``reference_writes`` (implies
        ``own_context``): large writes may also go through a private handle (module
        docstring)."""
        self.store = store
        self.reversed_axes = reversed_axes
        #: the length of the native array's time axis, indexed away in ``store`` at one time
        #: point (1 when it has none; set by the Remote that made the view)
        self.time_points = 1
        self.channel = channel
        self.keep_channel = keep_channel
        self.name = name
        # single-channel only: tensorstore (zarr, zarr3, precomputed alike) stores wrong or no
        # chunks for referenced multi-channel sources in several layouts (a C-order
        # (2, z, y, x) source with (2, 16, 32, 32) zarr3 chunks, or a precomputed
        # x, y, z, c view of one), while it copies those correctly
        local = _on_local_files(store)
        self.reference_writes = reference_writes and not keep_channel and local
        #: writes go through a handle in ts_write_context (module docstring), opened at the
        #: first write
        self._separate_writer = (own_context or reference_writes) and local
        self._writer: ts.TensorStore | None = None
        self._writer_lock = threading.Lock()
        # a single channel dropped from reads is indexed away by tensorstore (its first index,
        # which is what taking [0] of the whole channel axis gave): no numpy views per read
        self._channel_key: int | slice = slice(None)
        if channel and not keep_channel:
            dim = store.domain[store.rank - 1 if reversed_axes else 0]
            self._channel_key = int(dim.inclusive_min)
        #: how the chunk keys are named (:class:`_ChunkKeys`), found at the first question
        self._keys: _ChunkKeys | None = _UNKNOWN
        #: the same where they cannot be listed, of a sharded array (:meth:`_shard_keys`)
        self._unlisted_shards: _ChunkKeys | None = _UNKNOWN

    def _index(self, box: Box) -> tuple[slice, ...]:
        zyx = tuple(slice(a, b) for a, b in zip(box.start, box.stop, strict=True))
        if self.reversed_axes:
            idx: tuple[slice, ...] = zyx[::-1]
            return (*idx, slice(None)) if self.channel else idx
        return (slice(None), *zyx) if self.channel else zyx

    def read(self, box: Box) -> np.ndarray:
        # the hot path of every read: plain indexing, and the message of an error (which
        # formats the box) made only when there is one
        s, e = box.start, box.stop
        try:
            if self.reversed_axes:
                key: tuple[Any, ...] = (slice(s.x, e.x), slice(s.y, e.y), slice(s.z, e.z))
                if self.channel:
                    key += (self._channel_key,)
                arr: np.ndarray = self.store[key].read(order="F").result().T
            else:
                key = (slice(s.z, e.z), slice(s.y, e.y), slice(s.x, e.x))
                if self.channel:
                    key = (self._channel_key, *key)
                arr = self.store[key].read(order="C").result()
        except (ValueError, RuntimeError, OSError):
            with ts_errors(f"reading {box!r} of {self.name}"):
                raise
        return arr

    def absent_chunks(self, box: Box, chunks: Vec, bounds: Box) -> list[Vec]:
        """Grid indices of the chunks touching ``box`` that the store does not hold.

        The chunk keys of the box are listed (:class:`_ChunkKeys`: under the narrowest key
        prefixes that take the fewest listing pages) and the absent chunks are the grid minus
        the keys found: one listing request per 1000 keys, where tensorstore's storage
        statistics over halves of the box (:func:`~voxgate.remotes.base.bisect_absent`) asked
        a question per half, each a few requests, one after another (on moto S3: 512 chunks
        of which 4 stored, 275 requests and 5.5 s; 32,768 chunks, 1% stored, 54,290 requests
        and 571 s; now 1 request each).  In a sharded zarr v3 array the keys are shards: the
        chunks of a shard not listed are absent, and the index of each shard listed (one
        ranged read each, all at once) tells which of its chunks are stored.  Halving where
        the key layout or a shard index's codecs are not known, or the listing would return
        far more keys than the box has chunks (a small box of a large dense array whose keys
        no prefix narrows to the box).  Where keys cannot be listed at all (HTTP), chunk by
        chunk, or shard by shard (:meth:`_absent_one_by_one`).
        """
        from .base import bisect_absent

        def stats(region: Box) -> tuple[bool, bool]:
            with ts_errors(f"listing the chunks of {region!r} of {self.name}"):
                try:
                    st = self.store[self._index(region)].storage_statistics(
                        query_not_stored=True, query_fully_stored=True
                    ).result()
                except NotImplementedError as exc:  # "KeyValueStore does not support listing"
                    raise _CannotList from exc
            return bool(st.not_stored), bool(st.fully_stored)

        keys = self._chunk_keys()
        if keys is None and self._shard_keys() is not None and _several(box, chunks, bounds):
            # keys that cannot be listed, of shards whose index voxgate reads: tensorstore
            # answers a region inside one shard without a listing, but halving over it asked
            # that shard's index again at each question (a HEAD and a GET each: 14 requests
            # for a shard of 8 chunks), where one read of it tells them all
            return self._absent_one_by_one(box, chunks, bounds)
        plan = None if keys is None else keys.plan(box, chunks, bounds)
        if keys is not None and keys.sharded and keys.index is None:
            plan = None  # (a shard index voxgate does not read)
        if keys is None or plan is None:
            try:
                return bisect_absent(box, chunks, bounds, stats)
            except _CannotList:  # (at the first question: the whole box, of several chunks)
                return self._absent_one_by_one(box, chunks, bounds)
        with ts_errors(f"listing the chunks of {box!r} of {self.name}"):
            if keys.sharded:  # (the keys are shards: their indexes tell the chunks)
                stored = keys.inner_stored(plan, chunks, bounds)
            else:
                stored = keys.stored(plan, chunks, bounds)
        return [Vec._make(i) for i in _grid_indices(box, chunks, bounds) if i not in stored]

    def _absent_one_by_one(self, box: Box, chunks: Vec, bounds: Box) -> list[Vec]:
        """``absent_chunks`` where the store cannot list its keys (HTTP): tensorstore answers
        for a region of one chunk by reading that chunk's key (sharded: its shard's index),
        where a larger region takes a listing, which such a store refuses (halving over it
        raised an error at the first question: ``missing_chunks`` and ``voxgate.copy`` of an
        HTTP-served zarr or N5 array failed).  A question per chunk, up to
        :data:`_ONE_BY_ONE` at once; a chunk of ours over the keys of several channels
        (channels chunked apart) a question per channel.  One that still cannot be asked alone
        counts as stored, as halving counts a chunk it cannot tell (absent must be certain).

        A sharded zarr v3 array whose shard index voxgate reads is asked shard by shard
        instead: the index of each shard the box touches, one ranged read each, up to
        :data:`_ONE_BY_ONE` at once (:meth:`_ChunkKeys.inner_stored_unlisted`), where a
        question per chunk asked tensorstore about each inner chunk apart (a HEAD of an absent
        shard per inner chunk: 8 per shard of 2 x 2 x 2 chunks)."""
        shards = self._shard_keys()
        if shards is not None:
            with ts_errors(f"reading the shard indexes of {box!r} of {self.name}"):
                stored = shards.inner_stored_unlisted(box, chunks, bounds)
            return [Vec._make(i) for i in _grid_indices(box, chunks, bounds) if i not in stored]
        out: list[Vec] = []
        cells = _grid_indices(box, chunks, bounds)
        while batch := list(itertools.islice(cells, _ONE_BY_ONE)):
            asked = [self.store[self._index(self._cell(idx, chunks, bounds))]
                     .storage_statistics(query_not_stored=True) for idx in batch]
            for idx, fut in zip(batch, asked, strict=True):
                with ts_errors(f"asking for chunk {idx} of {self.name}"):
                    try:
                        none_stored = fut.result().not_stored
                    except NotImplementedError:
                        none_stored = self._none_stored_per_channel(
                            self._cell(idx, chunks, bounds))
                if none_stored:
                    out.append(Vec._make(idx))
        return out

    def _none_stored_per_channel(self, region: Box) -> bool:
        """Whether no channel of ``region`` (one chunk) is stored, asked channel by channel;
        False when that cannot be asked either."""
        if not self.channel:
            return False
        at = self.store.rank - 1 if self.reversed_axes else 0
        dim = self.store.domain[at]
        whole = self._index(region)
        futures = [self.store[(*whole[:at], slice(k, k + 1), *whole[at + 1:])]
                   .storage_statistics(query_not_stored=True)
                   for k in range(int(dim.inclusive_min), int(dim.exclusive_max))]
        try:
            return all(f.result().not_stored for f in futures)
        except NotImplementedError:
            return False

    @staticmethod
    def _cell(idx: Sequence[int], chunks: Vec, bounds: Box) -> Box:
        """The chunk ``idx`` of the grid of ``chunks`` anchored at ``bounds.start``, clipped."""
        start = Vec(*(o + i * c for o, i, c in zip(bounds.start, idx, chunks, strict=True)))
        return Box(start, start + chunks).intersect(bounds)

    def listing_order(self) -> tuple[int, ...]:
        """The voxgate axes in the order the chunk keys name them, outermost first (zarr
        ``c/z/y/x``: z first; N5 ``x/y/z``: x first); x first when the keys are not known."""
        keys = self._chunk_keys()
        if keys is None:
            return (2, 1, 0)
        return tuple(axis for axis, _, _ in keys.dims if axis >= 0)

    def _chunk_keys(self) -> _ChunkKeys | None:
        """How the chunk keys of this array are named, or None when that is not known."""
        if self._keys is _UNKNOWN:
            self._keys = _ChunkKeys.of(self.store, self._view_dims())
        return self._keys

    def _shard_keys(self) -> _ChunkKeys | None:
        """How the shard keys of this array are named where they cannot be listed, when it
        is a sharded zarr v3 array whose shard index voxgate reads; else None."""
        if self._unlisted_shards is _UNKNOWN:
            keys = _ChunkKeys.of(self.store, self._view_dims(), unlisted=True)
            sharded = keys is not None and keys.sharded and keys.index is not None
            self._unlisted_shards = keys if sharded else None
        return self._unlisted_shards

    def _view_dims(self) -> tuple[int | None, ...]:
        """Per dimension of ``store`` (the view): the voxgate axis (0 z, 1 y, 2 x) it is, or
        None for the channel dimension."""
        zyx: tuple[int | None, ...] = (2, 1, 0) if self.reversed_axes else (0, 1, 2)
        if not self.channel:
            return zyx
        return (*zyx, None) if self.reversed_axes else (None, *zyx)

    def write(self, box: Box, array: np.ndarray) -> None:
        if self.channel and not self.keep_channel:
            array = array[np.newaxis]
        native = array.T if self.reversed_axes else array
        with ts_errors(f"writing {box!r} of {self.name}"):
            if self.reference_writes and native.nbytes >= REFERENCE_WRITE_BYTES:
                # a cache nobody else reads: released with the handle, before we return
                private = ts.Context({"cache_pool": {"total_bytes_limit": 0}},
                                     parent=ts_write_context())
                # the spec holds the whole metadata: reading it again from the store would wait
                # behind the writes queued for the file I/O threads (3-12 ms under load)
                store = ts.open(
                    self.store.spec(), read=True, write=True, context=private, assume_metadata=True
                ).result()
                _write_whole(store[self._index(box)], native,
                             can_reference_source_data_indefinitely=True)
                del store, private
            else:
                _write_whole(self._write_handle()[self._index(box)], native)

    def _write_handle(self) -> ts.TensorStore:
        """The handle writes go through: ``store`` itself, or on local files one in
        :func:`~voxgate.storage.ts_write_context` over the same chunks (module docstring)."""
        if not self._separate_writer:
            return self.store
        with self._writer_lock:
            if self._writer is None:
                # the spec holds the whole metadata: nothing is read to open it
                self._writer = ts.open(self.store.spec(), read=True, write=True,
                                       context=ts_write_context(), assume_metadata=True).result()
            return self._writer


def _write_whole(view: ts.TensorStore, native: np.ndarray, **options: Any) -> None:
    """Write ``native`` to ``view`` and return (or raise) only once every chunk it touches is
    written or has failed.  A plain write's future fails as soon as one chunk's writeback
    fails, while the writebacks of its other chunks go on and land afterwards (seen on local
    files in about half the tries): whoever reads the store after the error, to tell which
    chunks the failed write stored, would see chunks still changing.  A transaction's commit
    returns when all of them are done (each chunk still written whole or not at all)."""
    txn = ts.Transaction()
    try:
        view.with_transaction(txn).write(native, **options).result()
    except BaseException:
        txn.abort()
        raise
    txn.commit_sync()


def _on_local_files(store: ts.TensorStore) -> bool:
    """Whether ``store`` keeps its chunks in local files: a handle in another context reaches
    the same chunks only there (a ``memory://`` kvstore belongs to its context), and only there
    is the copy a noticeable part of a write (next to a request over the network it is not)."""
    try:
        kv = store.kvstore
    except (AttributeError, ValueError):
        return False
    return kv is not None and kv.spec().to_json().get("driver") == "file"


_UNKNOWN: Any = object()


class _CannotList(Exception):
    """The store's kvstore cannot list keys (tensorstore's storage statistics of a region of
    more than one chunk need a listing)."""


#: chunks asked about at once where keys cannot be listed (``TSArray._absent_one_by_one``)
_ONE_BY_ONE = 256

#: keys one listing request answers (S3 and GCS list 1000 keys a page)
_LIST_PAGE_KEYS = 1000
#: a box is asked by halving instead when its listing could return more than this many keys
#: per chunk of the box and take more than :data:`_LIST_PAGES_ANYWAY` pages
_KEYS_PER_CHUNK = 64
_LIST_PAGES_ANYWAY = 16


class _ChunkKeys:
    """The chunk keys of a zarr v2, zarr v3 or N5 array under its kvstore, and which of them
    are stored in a box, found by listing.

    A key names a chunk of the native array (sharded zarr v3: a shard) by its grid indices in
    the native dimension order: zarr v2 ``z.y.x`` (or ``z/y/x``: ``dimension_separator``),
    zarr v3 ``c/z/y/x`` (``chunk_key_encoding`` ``default``; ``v2`` as zarr v2), N5
    ``x/y/z``.  The view voxgate reads (``TSArray.store``: dimensions reordered to z, y, x,
    translated to the offset, extra length-1 dimensions indexed away, a 2-D image given a z)
    is mapped back to the native dimensions through its index transform.  Keys that are not
    chunk indices (``.zarray``, ``zarr.json``, ``attributes.json``, a stray file) or lie
    outside the box are ignored; a chunk counts as stored when a key covering any of it is
    listed (of all its channels: one is enough), so what is called absent is never stored."""

    def __init__(self, kv: ts.KvStore, prefix: str, sep: str, cell: tuple[int, ...],
                 extent: tuple[int, ...], sharded: bool,
                 dims: tuple[tuple[int, int, int], ...], bounds: tuple[int, ...]) -> None:
        self.kv, self.prefix, self.sep, self.cell = kv, prefix, sep, cell
        self.extent, self.sharded = extent, sharded
        #: per native dimension: (voxgate axis 0-2, offset, 0), or (-1, lo, hi): a channel or
        #: indexed-away dimension, whose index range [lo, hi) is all asked about
        self.dims = dims
        self.bounds = bounds
        #: a sharded array's shard index, when voxgate can read it (else tensorstore is asked)
        self.index: _ShardIndex | None = None

    @classmethod
    def of(cls, store: ts.TensorStore, view_dims: tuple[int | None, ...], *,
           unlisted: bool = False) -> _ChunkKeys | None:
        """The key layout of ``store`` (a view of a zarr, zarr3 or n5 array whose dimensions
        are ``view_dims``: voxgate axis, or None for the channel), or None when it cannot be
        listed or is not known.  ``unlisted``: also of a store that cannot list (HTTP), whose
        keys are then only read (:meth:`inner_stored_unlisted`), never listed."""
        try:
            spec = store.spec().to_json()
            kv = store.kvstore
        except (AttributeError, ValueError):
            return None
        if kv is None:
            return None
        if not unlisted and kv.spec().to_json().get("driver") in ("http", "https"):
            return None  # (HTTP cannot list)
        meta = spec.get("metadata") or {}
        driver = spec.get("driver")
        index: _ShardIndex | None = None
        try:
            if driver == "zarr":
                shape, cell = meta["shape"], meta["chunks"]
                sep, prefix, sharded = meta.get("dimension_separator") or ".", "", False
            elif driver == "zarr3":
                shape = meta["shape"]
                grid = meta["chunk_grid"]
                if grid.get("name") != "regular":
                    return None
                cell = grid["configuration"]["chunk_shape"]
                encoding = meta.get("chunk_key_encoding") or {"name": "default"}
                name = encoding.get("name")
                if name not in ("default", "v2"):
                    return None
                default_sep = "/" if name == "default" else "."
                sep = (encoding.get("configuration") or {}).get("separator") or default_sep
                prefix = "c" + sep if name == "default" else ""
                codecs = meta.get("codecs") or []
                sharded = bool(codecs) and codecs[0].get("name") == "sharding_indexed"
                if sharded:
                    index = _shard_index_layout(codecs[0].get("configuration") or {}, cell)
            elif driver == "n5":
                shape, cell, sep, prefix, sharded = (meta["dimensions"], meta["blockSize"], "/",
                                                     "", False)
            else:
                return None
            shape = tuple(int(v) for v in shape)
            cell = tuple(int(v) for v in cell)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        if sep not in ("/", ".") or len(shape) != len(cell) or not shape or min(cell) < 1:
            return None
        if len(view_dims) != store.rank:
            return None
        transform = spec.get("transform") or {}
        outputs = transform.get("output") or [{"input_dimension": j} for j in range(len(shape))]
        if len(outputs) != len(shape):
            return None
        dims: list[tuple[int, int, int]] = []
        for out in outputs:
            offset = int(out.get("offset", 0))
            if "index_array" in out or int(out.get("stride", 1)) != 1:
                return None
            if "input_dimension" not in out:  # an extra dimension indexed away
                dims.append((-1, offset, offset + 1))
                continue
            i = int(out["input_dimension"])
            axis = view_dims[i]
            if axis is None:  # the channel: all of it
                dom = store.domain[i]
                dims.append((-1, int(dom.inclusive_min) + offset,
                             int(dom.exclusive_max) + offset))
            else:
                dims.append((axis, offset, 0))
        if sorted(d[0] for d in dims if d[0] >= 0) != sorted({d[0] for d in dims if d[0] >= 0}):
            return None
        extent = tuple(-(-s // c) for s, c in zip(shape, cell, strict=True))
        out = cls(kv, prefix, sep, cell, extent, sharded, tuple(dims), shape)
        out.index = index
        return out

    def _ranges(self, box: Box) -> list[range]:
        """Per native dimension, the key grid indices of the cells that ``box`` (voxgate
        coordinates) touches."""
        out = []
        for (axis, a, b), c, n in zip(self.dims, self.cell, self.extent, strict=True):
            lo, hi = (box.start[axis] + a, box.stop[axis] + a) if axis >= 0 else (a, b)
            out.append(range(max(0, lo // c), min(n, -(-hi // c))))
        return out

    def plan(self, box: Box, chunks: Vec, bounds: Box) -> tuple[Box, list[range], int] | None:
        """How to list the keys of the chunks touching ``box``: the chunk-aligned box, the
        native key index ranges and how many leading dimensions the listing prefixes fix
        (the fewest listing pages, then the fewest keys); None when halving is cheaper."""
        lo, hi = grid_range(box, chunks, bounds.start)
        aligned = _aligned(box, chunks, bounds)
        ranges = self._ranges(aligned)
        n = len(ranges)
        best: tuple[int, int, int] | None = None
        for depth in range(n):
            prefixes = math.prod(len(r) for r in ranges[:depth])
            per = math.prod(self.extent[depth:])
            pages = prefixes * max(1, -(-per // _LIST_PAGE_KEYS))
            cost = (pages, prefixes * per, depth)
            if best is None or cost < best:
                best = cost
        assert best is not None
        pages, keys, depth = best
        n_chunks = math.prod(b - a for a, b in zip(lo, hi, strict=True))
        if pages > _LIST_PAGES_ANYWAY and keys > _KEYS_PER_CHUNK * n_chunks:
            return None
        return aligned, ranges, depth

    def stored(self, plan: tuple[Box, list[range], int], chunks: Vec,
               bounds: Box) -> set[tuple[int, ...]]:
        """The grid indices (z, y, x; of ``chunks`` anchored at ``bounds.start``) of the
        chunks of the planned box that a listed key covers."""
        lo, hi = grid_range(plan[0], chunks, bounds.start)
        found: set[tuple[int, ...]] = set()
        for idx in self._listed(plan):
            axes = [range(a, b) for a, b in zip(lo, hi, strict=True)]
            for k, (axis, off, _), c in zip(idx, self.dims, self.cell, strict=True):
                if axis < 0:
                    continue
                # the key's voxels in voxgate coordinates, as grid indices of ``chunks``
                v0, v1 = k * c - off, (k + 1) * c - off
                o, ch = bounds.start[axis], chunks[axis]
                axes[axis] = range(max(lo[axis], (v0 - o) // ch),
                                   min(hi[axis], -(-(v1 - o) // ch)))
            found.update(itertools.product(*axes))
        return found

    def _listed(self, plan: tuple[Box, list[range], int]) -> Iterator[tuple[int, ...]]:
        """The native grid indices of the chunk keys listed for the planned box (each prefix
        one listing, all at once), those outside the box left out."""
        _, ranges, depth = plan
        heads = itertools.product(*(ranges[:depth]))
        names = [self.prefix + "".join(f"{k}{self.sep}" for k in head) for head in heads]
        futures = [self.kv.list(_prefix_range(name)) for name in names]
        n = len(self.cell)
        for fut in futures:
            for raw in fut.result():
                idx = self._parse(raw, n)
                if idx is not None and all(k in r for k, r in zip(idx, ranges, strict=True)):
                    yield idx

    def inner_stored(self, plan: tuple[Box, list[range], int], chunks: Vec,
                     bounds: Box) -> set[tuple[int, ...]]:
        """The grid indices of the chunks of the planned box stored in the shards listed for
        it, from each shard's index (one ranged read per shard, all at once): an inner chunk
        is stored when its index entry is not the "missing" one."""
        listed = list(self._listed(plan))
        return self._inner_held(plan[0], listed, len(listed), chunks, bounds)

    def inner_stored_unlisted(self, box: Box, chunks: Vec,
                              bounds: Box) -> set[tuple[int, ...]]:
        """:meth:`inner_stored` where the keys cannot be listed (HTTP): the index of every
        shard that ``box`` touches is read (one ranged read per shard, up to
        :data:`_ONE_BY_ONE` at once); a shard the store does not hold is answered "missing",
        and all its chunks are absent."""
        aligned = _aligned(box, chunks, bounds)
        shards = itertools.product(*self._ranges(aligned))
        return self._inner_held(aligned, shards, _ONE_BY_ONE, chunks, bounds)

    def _inner_held(self, aligned: Box, shards: Iterable[tuple[int, ...]], at_once: int,
                    chunks: Vec, bounds: Box) -> set[tuple[int, ...]]:
        """The grid indices of the chunks of the chunk-aligned box ``aligned`` stored in
        ``shards`` (native shard grid indices), from each shard's index, ``at_once`` shard
        indexes read at a time; a shard not found holds none."""
        assert self.index is not None
        index = self.index
        size = index.nbytes
        span = slice(-size, None) if index.at_end else slice(0, size)
        lo, hi = grid_range(aligned, chunks, bounds.start)
        found: set[tuple[int, ...]] = set()
        todo = iter(shards)
        while batch := list(itertools.islice(todo, max(1, at_once))):
            futures = [self.kv.read(self.prefix + self.sep.join(map(str, idx)),
                                    byte_range=span) for idx in batch]
            for idx, fut in zip(batch, futures, strict=True):
                self._add_held(idx, fut, found, lo, hi, chunks, bounds)
        return found

    def _add_held(self, idx: tuple[int, ...], fut: Any, found: set[tuple[int, ...]],
                  lo: Sequence[int], hi: Sequence[int], chunks: Vec, bounds: Box) -> None:
        """Add to ``found`` the grid indices (between ``lo`` and ``hi``) of the chunks that
        the shard ``idx`` holds, from its index read by ``fut``."""
        assert self.index is not None
        index = self.index
        size = index.nbytes
        key = self.prefix + self.sep.join(map(str, idx))
        try:
            got = fut.result()
        except ValueError as exc:
            # a file shorter than the index is refused as a range past its end (local
            # files; over HTTP a 416, or an answer of fewer bytes than the range asked),
            # where a store that answers what it has gets the length check below
            if "OUT_OF_RANGE" not in str(exc):
                raise
            raise CorruptChunkError(f"the shard {key} is shorter than its index "
                                    f"({size} bytes)", key) from exc
        if got.state != "value":
            return  # (not held, or removed since it was listed: absent now)
        raw = bytes(got.value)
        if len(raw) != size:
            raise CorruptChunkError(f"the shard index of {key} is {len(raw)} bytes, "
                                    f"not {size}", key)
        # a damaged index would call stored chunks absent (skipped by copies and the
        # Services: lost) or absent ones stored; its checksum tells, as it does tensorstore
        # when it reads the shard
        if index.crc and _crc32c(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise CorruptChunkError(f"the shard index of {key} does not match its crc32c "
                                    "checksum: the shard is damaged", key)
        entries = np.frombuffer(raw[:index.entries * 16], index.dtype)
        held = np.argwhere(~np.all(entries.reshape(*index.grid, 2) == _MISSING, axis=-1))
        for inner in held:
            axes = [range(a, b) for a, b in zip(lo, hi, strict=True)]
            for k, j, (axis, off, _), c, ic in zip(idx, inner, self.dims, self.cell,
                                                   index.chunk, strict=True):
                if axis < 0:
                    continue
                v0 = k * c + int(j) * ic - off
                o, ch = bounds.start[axis], chunks[axis]
                axes[axis] = range(max(lo[axis], (v0 - o) // ch),
                                   min(hi[axis], -(-(v0 + ic - o) // ch)))
            found.update(itertools.product(*axes))

    def _parse(self, raw: bytes, n: int) -> tuple[int, ...] | None:
        """The grid indices a listed key names, or None when it names no chunk."""
        try:
            key = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        if not key.startswith(self.prefix):
            return None
        parts = key[len(self.prefix):].split(self.sep)
        if len(parts) != n:
            return None
        out = []
        for p in parts:  # (as zarr and tensorstore write them: no sign, no leading zero)
            if not (p.isascii() and p.isdigit()) or (len(p) > 1 and p[0] == "0"):
                return None
            out.append(int(p))
        return tuple(out)


_MISSING = np.uint64(2**64 - 1)


class _ShardIndex:
    """Where a zarr v3 shard's index is and how it reads: ``grid`` inner chunks of shape
    ``chunk`` per shard, an (offset, nbytes) uint64 pair each (both all ones: missing)."""

    def __init__(self, grid: tuple[int, ...], chunk: tuple[int, ...], at_end: bool,
                 dtype: str, crc: bool) -> None:
        self.grid, self.chunk, self.at_end, self.dtype = grid, chunk, at_end, dtype
        #: the index ends in a crc32c of the entries before it (4 bytes, little-endian)
        self.crc = crc
        self.entries = math.prod(grid)
        self.nbytes = self.entries * 16 + (4 if crc else 0)


def _shard_index_layout(conf: dict[str, Any], shard: Sequence[Any]) -> _ShardIndex | None:
    """The index of the shards of a ``sharding_indexed`` codec's configuration ``conf``, or
    None for index codecs other than ``bytes`` (and ``crc32c``)."""
    inner = tuple(int(v) for v in conf.get("chunk_shape") or ())
    outer = tuple(int(v) for v in shard)
    if len(inner) != len(outer) or not inner or any(
            c < 1 or s % c for s, c in zip(outer, inner, strict=True)):
        return None
    codecs = conf.get("index_codecs") or []
    names = [c.get("name") for c in codecs]
    if names not in (["bytes"], ["bytes", "crc32c"]):
        return None
    endian = (codecs[0].get("configuration") or {}).get("endian", "little")
    if endian not in ("little", "big"):
        return None
    location = conf.get("index_location", "end")
    if location not in ("start", "end"):
        return None
    return _ShardIndex(tuple(s // c for s, c in zip(outer, inner, strict=True)), inner,
                       location == "end", "<u8" if endian == "little" else ">u8",
                       names[-1] == "crc32c")


#: google_crc32c's C implementation (its ``value``), or None where it is not installed; found
#: at the first checksum.  It is not a dependency of voxgate (zarr-python and cloud-files bring
#: it), so :func:`_crc32c_numpy` stands in without it
_crc32c_fast: Any = _UNKNOWN


def _crc32c(data: bytes) -> int:
    """The CRC32C (Castagnoli) of ``data``, as zarr v3's ``crc32c`` codec stores it."""
    global _crc32c_fast
    if _crc32c_fast is _UNKNOWN:
        try:  # (not the package itself: without its C extension it warns and runs pure Python)
            from google_crc32c.cext import value
        except ImportError:
            _crc32c_fast = None
        else:
            _crc32c_fast = value
    if _crc32c_fast is None:
        return _crc32c_numpy(data)
    return int(_crc32c_fast(data))


#: bytes per lane of :func:`_crc32c_numpy`
_CRC_LANE = 128


def _crc32c_numpy(data: bytes) -> int:
    """The CRC32C of ``data`` without google_crc32c: a table loop for short data, else numpy
    over many lanes at once (3 ms for a 512 KiB shard index, where a byte loop in Python took
    150 ms).

    The CRC without its initial and final inversion is linear over GF(2) and does not change
    for leading zero bytes, so: the inversion of the initial register is the first 4 bytes
    inverted; the data, zero-padded at the front to a power of two lanes of ``_CRC_LANE``
    bytes, is run through every lane at once, 4 bytes a step (slicing-by-4 tables); then pairs
    of neighbours are joined, level by level: the left one's CRC shifted past the right one's
    bytes (the register run over that many zero bytes, a linear map kept as 4 tables of 256:
    :func:`_crc32c_zeros`), XORed with the right one's."""
    t0, t1, t2, t3 = _crc32c_tables()
    n = len(data)
    if n < 1024:
        table = t0.tolist()
        r = 0xFFFFFFFF
        for b in data:
            r = table[(r ^ b) & 0xFF] ^ (r >> 8)
        return r ^ 0xFFFFFFFF
    lanes = 1 << (-(-n // _CRC_LANE) - 1).bit_length()
    buf = np.zeros(lanes * _CRC_LANE, np.uint8)
    buf[-n:] = np.frombuffer(data, np.uint8)
    buf[-n:-n + 4] ^= 0xFF
    words = buf.view("<u4").reshape(lanes, _CRC_LANE // 4).T.astype(np.uint32)
    c = np.zeros(lanes, np.uint32)
    for w in words:
        c ^= w
        c = t3[c & 0xFF] ^ t2[(c >> 8) & 0xFF] ^ t1[(c >> 16) & 0xFF] ^ t0[c >> 24]
    level = 0
    while len(c) > 1:
        c = _crc32c_shift(_crc32c_zeros(level), c[0::2]) ^ c[1::2]
        level += 1
    return int(c[0]) ^ 0xFFFFFFFF


@functools.cache
def _crc32c_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Slicing-by-4 tables of the reflected Castagnoli polynomial: entry i of table k is the
    register after byte i and then k zero bytes."""
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(0x82F63B78), t >> 1).astype(np.uint32)
    out = [t]
    for _ in range(3):
        out.append((out[-1] >> 8) ^ t[out[-1] & 0xFF])
    return out[0], out[1], out[2], out[3]


@functools.cache
def _crc32c_zeros(level: int) -> np.ndarray:
    """The register run over ``_CRC_LANE * 2**level`` zero bytes, as 4 tables of 256 (one per
    byte of the register: the map is linear, so their entries XOR together)."""
    basis = (np.arange(256, dtype=np.uint32)[None, :]
             << (8 * np.arange(4, dtype=np.uint32))[:, None]).ravel()
    if level == 0:
        t0, t1, t2, t3 = _crc32c_tables()
        c = basis
        for _ in range(_CRC_LANE // 4):
            c = t3[c & 0xFF] ^ t2[(c >> 8) & 0xFF] ^ t1[(c >> 16) & 0xFF] ^ t0[c >> 24]
        return c.reshape(4, 256)
    half = _crc32c_zeros(level - 1)
    return _crc32c_shift(half, _crc32c_shift(half, basis)).reshape(4, 256)


def _crc32c_shift(zeros: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Registers ``c`` run over the zero bytes that ``zeros`` (:func:`_crc32c_zeros`) stands
    for."""
    out: np.ndarray = (zeros[0][c & 0xFF] ^ zeros[1][(c >> 8) & 0xFF]
                       ^ zeros[2][(c >> 16) & 0xFF] ^ zeros[3][c >> 24])
    return out


def _prefix_range(prefix: str) -> ts.KvStore.KeyRange:
    """The keys that start with ``prefix``, which is empty or ends with "/" or "."."""
    if not prefix:
        return ts.KvStore.KeyRange()
    return ts.KvStore.KeyRange(prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))


def _aligned(box: Box, chunks: Vec, bounds: Box) -> Box:
    """The chunks (of ``chunks`` anchored at ``bounds.start``) that ``box`` touches, as one
    box clipped to ``bounds``."""
    lo, hi = grid_range(box, chunks, bounds.start)
    o = bounds.start
    aligned = Box(Vec(*(s + i * c for s, i, c in zip(o, lo, chunks, strict=True))),
                  Vec(*(s + i * c for s, i, c in zip(o, hi, chunks, strict=True))))
    return aligned.intersect(bounds)


def _several(box: Box, chunks: Vec, bounds: Box) -> bool:
    """Whether ``box`` touches more than one chunk (of ``chunks`` anchored at
    ``bounds.start``)."""
    lo, hi = grid_range(box, chunks, bounds.start)
    return math.prod(b - a for a, b in zip(lo, hi, strict=True)) > 1


def _grid_indices(region: Box, chunks: Vec, bounds: Box) -> Iterator[tuple[int, ...]]:
    lo, hi = grid_range(region, chunks, bounds.start)
    return itertools.product(*(range(a, b) for a, b in zip(lo, hi, strict=True)))
