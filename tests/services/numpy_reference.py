"""Brute-force numpy references for downsampling, the oracle the downsample tests compare with.

Written to be obviously correct, not fast: one Python step per output voxel, no kernel library.
One shortcut, for integer (and bool) arrays only: a block whose smallest voxel equals its
largest holds one value, which is both its mode and the floor of its mean, so those blocks (most
of a sparse volume) are filled at once and the Python step is taken for the others only.

Rules (the same ones docs/services/downsample.md states for voxgate):

* ``arr`` is C-order ``(z, y, x)`` or ``(c, z, y, x)`` (a leading channel axis is never
  downsampled); ``factor`` is ``(z, y, x)``.  The output shape is ``ceil(shape / factor)``: the
  blocks at odd edges are partial and still give an output voxel, computed from the voxels they
  do cover (nothing is padded, mirrored or dropped).
* image (``downsample_mean``): integers give the floor of the exact mean of the covered voxels
  (the sum is taken in Python integers, so nothing overflows); floats give the plain mean
  (computed in float64, then cast back to the input dtype).
* segmentation (``downsample_mode``): a most frequent label of the covered voxels; when several
  labels are equally frequent, the one that occurs first in the block in C order (x fastest,
  then y, then z) wins.  That tie rule is tinybrain's own 2x2x2 mode-pooling rule.
* several scales (``downsample_scales``): each scale is computed from the previous one (the
  stored scale k-1 is all scale k is made of), by that scale's factor.
* ``start`` (z, y, x; the "origin" pyramid anchor of WEBKNOSSOS mags): ``arr``'s first voxel
  sits at coordinate ``start`` and the blocks lie on the grid through coordinate 0, so output
  voxel ``j`` (coordinate ``start // factor + j``) covers the voxels whose coordinates are in
  ``[(start // factor + j) * factor, ... + factor)``; blocks cut by either end of ``arr`` count
  the voxels they cover.  The next scale starts at ``start // factor``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["downsample_mean", "downsample_mode", "downsample_scales", "output_shape"]


def output_shape(shape: Sequence[int], factor: Sequence[int],
                 start: Sequence[int] | None = None) -> tuple[int, ...]:
    """ceil(shape / factor) over the last three axes (with ``start``: the grid blocks through
    coordinate 0 that the voxels start .. start + shape touch); a leading channel axis is
    kept."""
    lead = tuple(shape[:-3])
    if start is None:
        return lead + tuple(math.ceil(s / f) for s, f in zip(shape[-3:], factor, strict=True))
    return lead + tuple(math.ceil((a + s) / f) - a // f
                        for a, s, f in zip(start, shape[-3:], factor, strict=True))


def _check(arr: np.ndarray, factor: Sequence[int]) -> tuple[int, ...]:
    f = tuple(int(v) for v in factor)
    if len(f) != 3 or any(v < 1 for v in f):
        raise ValueError(f"factor must be three positive integers (z, y, x), got {factor!r}")
    if arr.ndim not in (3, 4):
        raise ValueError(f"arr must be (z, y, x) or (c, z, y, x), got shape {arr.shape}")
    return f


def _one_value(arr: np.ndarray, factor: Sequence[int], start: Sequence[int] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(mask, values) over the output voxels: where the block's smallest and largest voxels
    are equal (it holds one value), and its smallest voxel.  Blocks are the ones
    :func:`_blocks` yields: along each axis, ``np.minimum.reduceat`` / ``maximum.reduceat``
    at each block's first index reduce up to the next one's (the last one to the end)."""
    f = _check(arr, factor)
    out_shape = output_shape(arr.shape, f, start)
    lo = hi = arr
    for i, step in enumerate(f):
        axis = arr.ndim - 3 + i
        a = 0 if start is None else start[i]
        firsts = [max(0, (a // step + j) * step - a) for j in range(out_shape[axis])]
        lo = np.minimum.reduceat(lo, firsts, axis=axis)
        hi = np.maximum.reduceat(hi, firsts, axis=axis)
    return lo == hi, lo


def _blocks(arr: np.ndarray, factor: Sequence[int], start: Sequence[int] | None = None,
            skip: np.ndarray | None = None):
    """Yield (output index, covered voxels in C order) for every output voxel (but those
    ``skip`` is True at)."""
    f = _check(arr, factor)
    out_shape = output_shape(arr.shape, f, start)
    indices = (itertools.product(*(range(n) for n in out_shape)) if skip is None else
               (tuple(int(i) for i in index) for index in np.argwhere(~skip)))
    for index in indices:
        lead, zyx = index[:-3], index[-3:]
        if start is None:
            region = lead + tuple(slice(i * step, (i + 1) * step)
                                  for i, step in zip(zyx, f, strict=True))
        else:
            # the block's coordinates, less the array's first voxel's, clipped to the array
            region = lead + tuple(
                slice(max(0, (a // step + i) * step - a), (a // step + i + 1) * step - a)
                for i, step, a in zip(zyx, f, start, strict=True))
        yield index, arr[region].ravel(order="C")


def downsample_mean(arr: np.ndarray, factor: Sequence[int],
                    start: Sequence[int] | None = None) -> np.ndarray:
    """One scale of image downsampling: floor of the mean (integers), mean (floats)."""
    arr = np.asarray(arr)
    out = np.zeros(output_shape(arr.shape, factor, start), dtype=arr.dtype)
    floating = np.issubdtype(arr.dtype, np.floating)
    one = None
    if arr.dtype.kind in "biu":  # (one value: its floor mean; floats take the step below)
        one, values = _one_value(arr, factor, start)
        out[one] = values[one]
    for index, voxels in _blocks(arr, factor, start, one):
        if floating:
            out[index] = voxels.astype(np.float64).mean()
        else:
            total = sum(int(v) for v in voxels)
            out[index] = total // len(voxels)  # Python's // is the floor, negatives included
    return out


def downsample_mode(arr: np.ndarray, factor: Sequence[int],
                    start: Sequence[int] | None = None) -> np.ndarray:
    """One scale of segmentation downsampling: a most frequent label of each block.

    Ties go to the label that occurs first in the block in C order (x fastest).
    """
    arr = np.asarray(arr)
    out = np.zeros(output_shape(arr.shape, factor, start), dtype=arr.dtype)
    one = None
    if arr.dtype.kind in "biu":  # (one value: its mode)
        one, values = _one_value(arr, factor, start)
        out[one] = values[one]
    for index, voxels in _blocks(arr, factor, start, one):
        counts = [int(np.count_nonzero(voxels == v)) for v in voxels]
        best = max(counts)
        out[index] = voxels[counts.index(best)]  # list.index: the first position with it
    return out


def downsample_scales(arr: np.ndarray, factors: Sequence[Sequence[int]],
                      kind: str, start: Sequence[int] | None = None) -> list[np.ndarray]:
    """Scales 1..len(factors): each from the previous one by its factor."""
    if kind not in ("image", "segmentation"):
        raise ValueError(f"kind must be 'image' or 'segmentation', got {kind!r}")
    fn = downsample_mean if kind == "image" else downsample_mode
    out: list[np.ndarray] = []
    current = np.asarray(arr)
    for f in factors:
        current = fn(current, f, start)
        out.append(current)
        if start is not None:
            start = [a // k for a, k in zip(start, f, strict=True)]
    return out


def dvid_mode2(a: np.ndarray) -> np.ndarray:
    """labels/compressed.go downresArray, cell by cell: the most frequent non-zero label of each
    2x2x2 cell, the smaller label on a tie (``lbl < winner``), 0 only for an all-0 cell."""
    out = np.zeros(tuple(s // 2 for s in a.shape), np.uint64)
    cells = a.reshape(out.shape[0], 2, out.shape[1], 2, out.shape[2], 2) \
        .transpose(0, 2, 4, 1, 3, 5).reshape(-1, 8)
    flat = out.reshape(-1)
    for i, cell in enumerate(cells.tolist()):
        votes: dict[int, int] = {}
        for v in cell:
            if v:
                votes[v] = votes.get(v, 0) + 1
        if votes:
            flat[i] = min(votes, key=lambda v: (-votes[v], v))
    return out
