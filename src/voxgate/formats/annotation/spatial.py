"""The multi-level spatial index of an annotation layer, planned on the annotations' boxes.

Neuroglancer's rule (annotations.md, "Spatial index"): level 0 is one cell over the bounds;
each finer level halves the cell size along the axes where that keeps cells closest to
isotropic in physical units (an axis is halved when it is physically longer than half the
longest one).  At each level a uniform random subsample of the annotations still *remaining*
in each cell is *emitted* there, at the density ``limit / maxCount(level)`` (``maxCount`` the
fullest cell), and the rest go down to the child cells; levels continue until nothing
remains.  So every annotation is stored at exactly one level (in every cell of that level it
intersects), and a cell holds at most ``limit`` annotations: the number a cell emits is
``count * limit / maxCount`` rounded up or down at random (never above ``limit``), taken in a
random order that is also the order the cell lists them in.

Two exceptions, both documented: after :data:`MAX_LEVELS` levels the last one takes every
annotation left (only more than ``limit`` annotations at one position get there); an
extended annotation (line, box, ellipsoid) that would intersect more than :data:`MAX_SPAN`
cells of the next level is emitted at the current one (before the subsample), so a cell
exceeds ``limit`` only if more than ``limit`` such large annotations meet in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_LEVELS", "MAX_SPAN", "Level", "cell_ranges", "next_chunk", "plan_levels"]

MAX_LEVELS = 20
MAX_SPAN = 64


@dataclass
class Level:
    """One level of the index: its grid and, in cell order (each cell's annotations in their
    random order), the annotations it stores and the cell each is stored in."""

    grid_shape: np.ndarray  # (3,) int64, x y z
    chunk_size: np.ndarray  # (3,) float64, x y z
    indices: np.ndarray  # (m,) int64 annotation indices (an extended one once per cell)
    cells: np.ndarray  # (m, 3) int32 cells, x y z

    def cell_counts(self) -> np.ndarray:
        """How many annotations each non-empty cell holds."""
        if not len(self.cells):
            return np.zeros(0, np.int64)
        _, counts = np.unique(self.cells, axis=0, return_counts=True)
        return counts


def next_chunk(chunk: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """The next finer level's cell size: axes longer than half the longest are halved,
    lengths measured physically (``scale``: the physical size of one unit of each axis; with
    40 x 4 x 4 nm voxels a cell of 10 x 100 x 100 voxels is a cube)."""
    size = chunk if scale is None else chunk * scale
    return np.where(size > size.max() / 2, chunk / 2, chunk)


def cell_ranges(lo: np.ndarray, hi: np.ndarray, lower: np.ndarray, chunk: np.ndarray,
                grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first and last cell (inclusive, clipped to the grid) each box [lo, hi] meets."""
    top = grid - 1
    first = np.clip(np.floor((lo - lower) / chunk), 0, top).astype(np.int64)
    last = np.clip(np.floor((hi - lower) / chunk), 0, top).astype(np.int64)
    return first, last


def _expand(first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(which box, cell) for every cell of every box's range."""
    span = last - first + 1
    ncells = span.prod(axis=1)
    which = np.repeat(np.arange(len(first)), ncells)
    starts = np.cumsum(ncells) - ncells
    k = np.arange(int(ncells.sum()), dtype=np.int64) - np.repeat(starts, ncells)
    sx, sy = span[which, 0], span[which, 1]
    offset = np.stack([k % sx, (k // sx) % sy, k // (sx * sy)], axis=1)
    return which, first[which] + offset


def _point_cells(lo: np.ndarray, which: np.ndarray, lower: np.ndarray, chunk: np.ndarray,
                 grid: np.ndarray) -> np.ndarray:
    """The cell (int32, x y z) of each point ``lo[which]``, one axis at a time (memory: a few
    bytes per point, not the float64 temporaries of the whole array)."""
    out = np.empty((len(which), 3), np.int32)
    for d in range(3):
        out[:, d] = np.clip(np.floor((lo[which, d] - lower[d]) / chunk[d]), 0, grid[d] - 1)
    return out


def plan_levels(lo: np.ndarray, hi: np.ndarray | None, lower: np.ndarray, upper: np.ndarray,
                limit: int, *, seed: int = 0, scale: np.ndarray | None = None) -> list[Level]:
    """The levels for annotations whose boxes are ``lo``..``hi`` ((n, 3) float, x y z; ``hi``
    None for points) inside ``lower``..``upper``; ``scale`` (x y z) the physical size of a
    unit of each axis, which makes the cells as close to cubes as halving allows."""
    rng = np.random.default_rng(seed)
    if scale is not None:
        scale = np.asarray(scale, np.float64)
    n = len(lo)
    lower = np.asarray(lower, np.float64)
    extent = np.asarray(upper, np.float64) - lower
    chunk = np.where(extent > 0, extent, 1.0)
    grid = np.ones(3, np.int64)
    # the annotations still to place, kept in a random order (a stable sort by cell keeps it
    # within each cell, so a cell's first annotations are a uniform sample of it)
    remaining = np.argsort(rng.random(n, dtype=np.float32), kind="stable")
    levels: list[Level] = []
    while True:
        last_level = len(levels) == MAX_LEVELS - 1
        if not len(remaining):
            if not levels:
                levels.append(Level(grid.copy(), chunk.copy(), remaining,
                                    np.zeros((0, 3), np.int32)))
            return levels
        finer = next_chunk(chunk, scale)
        if hi is None:
            which, cells = np.arange(len(remaining)), _point_cells(lo, remaining, lower, chunk,
                                                                  grid)
            forced = None
        else:
            first, last = cell_ranges(lo[remaining], hi[remaining], lower, chunk, grid)
            which, cells64 = _expand(first, last)
            cells = cells64.astype(np.int32)
            del first, last, cells64
            f2, l2 = cell_ranges(lo[remaining], hi[remaining], lower, finer,
                                 np.round(grid * chunk / finer).astype(np.int64))
            forced = (l2 - f2 + 1).prod(axis=1) > MAX_SPAN
            del f2, l2
        key = cells[:, 0] + grid[0] * (cells[:, 1] + grid[1] * cells[:, 2].astype(np.int64))
        if forced is not None:  # forced ones first within their cells
            key = key * 2 + ~forced[which]
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        del key
        starts = np.concatenate([[0], np.flatnonzero(sorted_key[1:] != sorted_key[:-1]) + 1])
        del sorted_key
        counts = np.diff(np.append(starts, len(order)))
        if forced is not None:  # one run per cell, forced or not
            cell_of_run = cells[order[starts]]
            same = np.concatenate([[False], (cell_of_run[1:] == cell_of_run[:-1]).all(axis=1)])
            cell_starts = np.flatnonzero(~same)
            cell_counts = np.add.reduceat(counts, cell_starts)
            starts, counts = starts[cell_starts], cell_counts
        most = int(counts.max())
        if most <= limit or last_level:
            quota = counts
        else:
            quota = np.minimum(np.floor(counts * (limit / most) + rng.random(len(counts))),
                               limit).astype(np.int64)
        ok_sorted = np.arange(len(order)) < np.repeat(starts + quota, counts)
        if forced is not None:
            ok_sorted |= forced[which[order]]
        ok = np.empty_like(ok_sorted)
        ok[order] = ok_sorted
        del ok_sorted
        if hi is None:
            emitted = ok
        else:  # an extended annotation is emitted where every cell it meets has room
            emitted = np.ones(len(remaining), bool)
            np.logical_and.at(emitted, which, ok)
        chosen = order[emitted[which[order]]]
        del order
        levels.append(Level(grid.copy(), chunk.copy(), remaining[which[chosen]], cells[chosen]))
        remaining = remaining[~emitted]
        grid = np.round(grid * chunk / finer).astype(np.int64)
        chunk = finer
