"""The multi-level spatial index of an annotation layer, planned on the annotations' boxes.

Neuroglancer's rule (annotations.md, "Spatial index"): level 0 is one cell over the bounds;
each finer level halves the cell size along the axes where that keeps cells closest to
isotropic (an axis is halved when it is more than half the longest one).  At each level a
uniform random subsample of the annotations still *remaining* in each cell is *emitted*
there, at the density ``limit / maxCount(level)`` (``maxCount`` the fullest cell), and the
rest go down to the child cells; levels continue until nothing remains.  So every annotation
is stored at exactly one level (in every cell of that level it intersects), and a cell holds
at most ``limit`` annotations: the number a cell emits is ``count * limit / maxCount``
rounded up or down at random (never above ``limit``), taken in a random order that is also
the order the cell lists them in.

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
    cells: np.ndarray  # (m, 3) int64 cells, x y z

    def cell_counts(self) -> np.ndarray:
        """How many annotations each non-empty cell holds."""
        if not len(self.cells):
            return np.zeros(0, np.int64)
        _, counts = np.unique(self.cells, axis=0, return_counts=True)
        return counts


def next_chunk(chunk: np.ndarray) -> np.ndarray:
    """The next finer level's cell size: axes longer than half the longest are halved."""
    return np.where(chunk > chunk.max() / 2, chunk / 2, chunk)


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


def plan_levels(lo: np.ndarray, hi: np.ndarray | None, lower: np.ndarray, upper: np.ndarray,
                limit: int, *, seed: int = 0) -> list[Level]:
    """The levels for annotations whose boxes are ``lo``..``hi`` ((n, 3) float, x y z; ``hi``
    None for points) inside ``lower``..``upper``."""
    rng = np.random.default_rng(seed)
    n = len(lo)
    lower = np.asarray(lower, np.float64)
    extent = np.asarray(upper, np.float64) - lower
    chunk = np.where(extent > 0, extent, 1.0)
    grid = np.ones(3, np.int64)
    priority = rng.random(n)
    remaining = np.arange(n, dtype=np.int64)
    levels: list[Level] = []
    while True:
        last_level = len(levels) == MAX_LEVELS - 1
        if not len(remaining):
            if not levels:
                levels.append(Level(grid.copy(), chunk.copy(), remaining, np.zeros((0, 3),
                                                                                   np.int64)))
            return levels
        first, last = cell_ranges(lo[remaining], (lo if hi is None else hi)[remaining], lower,
                                  chunk, grid)
        finer = next_chunk(chunk)
        forced = np.zeros(len(remaining), bool)
        if hi is None:
            which, cells = np.arange(len(remaining)), first
        else:
            which, cells = _expand(first, last)
            f2, l2 = cell_ranges(lo[remaining], hi[remaining], lower, finer,
                                 np.round(grid * chunk / finer).astype(np.int64))
            forced = (l2 - f2 + 1).prod(axis=1) > MAX_SPAN
        key = cells[:, 0] + grid[0] * (cells[:, 1] + grid[1] * cells[:, 2])
        rank_key = np.where(forced[which], -1.0, priority[remaining[which]])
        order = np.lexsort((rank_key, key))
        _, start, counts = np.unique(key[order], return_index=True, return_counts=True)
        most = int(counts.max())
        if most <= limit or last_level:
            quota = counts
        else:
            quota = np.minimum(np.floor(counts * (limit / most) + rng.random(len(counts))),
                               limit).astype(np.int64)
        rank = np.arange(len(order)) - np.repeat(start, counts)
        ok_sorted = (rank < np.repeat(quota, counts)) | forced[which[order]]
        ok = np.empty_like(ok_sorted)
        ok[order] = ok_sorted
        if hi is None:
            emitted = ok
        else:  # an extended annotation is emitted where every cell it meets has room
            emitted = np.ones(len(remaining), bool)
            np.logical_and.at(emitted, which, ok)
        keep = emitted[which[order]]
        chosen = order[keep]
        levels.append(Level(grid.copy(), chunk.copy(), remaining[which[chosen]], cells[chosen]))
        remaining = remaining[~emitted]
        grid = np.round(grid * chunk / finer).astype(np.int64)
        chunk = finer
