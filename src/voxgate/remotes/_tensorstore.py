"""Shared plumbing for the Remotes that tensorstore drives (zarr, N5, precomputed).

Key-value access (kvstore specs, the tensorstore context, error translation, atomic writes)
is :mod:`voxgate.storage`; this module adds

- ``TSArray``: one scale's tensorstore handle read and written as C-order (c,) z, y, x, whatever
  the format's native axis order, without paying a transpose for Fortran-order formats.
"""

from __future__ import annotations

import numpy as np
import tensorstore as ts

from ..geometry import Box, Vec
from ..storage import ts_errors

__all__ = ["TSArray"]


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
    ) -> None:
        self.store = store
        self.reversed_axes = reversed_axes
        self.channel = channel
        self.keep_channel = keep_channel
        self.name = name

    def _index(self, box: Box) -> tuple[slice, ...]:
        zyx = tuple(slice(a, b) for a, b in zip(box.start, box.stop, strict=True))
        if self.reversed_axes:
            idx: tuple[slice, ...] = zyx[::-1]
            return (*idx, slice(None)) if self.channel else idx
        return (slice(None), *zyx) if self.channel else zyx

    def read(self, box: Box) -> np.ndarray:
        with ts_errors(f"reading {box!r} of {self.name}"):
            view = self.store[self._index(box)]
            if self.reversed_axes:
                arr = view.read(order="F").result().T
            else:
                arr = view.read(order="C").result()
        if self.channel and not self.keep_channel:
            arr = arr[0]
        return np.asarray(arr)

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
            self.store[self._index(box)].write(native).result()
