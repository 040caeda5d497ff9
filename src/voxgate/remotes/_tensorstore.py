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

import threading
from typing import Any

import numpy as np
import tensorstore as ts

from ..geometry import Box, Vec
from ..storage import ts_errors, ts_write_context

__all__ = ["REFERENCE_WRITE_BYTES", "TSArray"]

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

        Asks tensorstore's storage statistics (a listing of the chunk keys, no chunk is read)
        over halves of the region, so few questions are needed where few chunks are absent.
        """
        from .base import bisect_absent

        def stats(region: Box) -> tuple[bool, bool]:
            with ts_errors(f"listing the chunks of {region!r} of {self.name}"):
                st = self.store[self._index(region)].storage_statistics(
                    query_not_stored=True, query_fully_stored=True
                ).result()
            return bool(st.not_stored), bool(st.fully_stored)

        return bisect_absent(box, chunks, bounds, stats)

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
