"""Synthetic EM-like data for the demo, tests and benchmarks (numpy only, deterministic).

Cells are the Voronoi regions of seeds jittered on a regular grid (so each voxel only compares
the 27 neighbouring seeds), membranes are dark voxels where the label changes, the cytoplasm is
mid-grey with noise.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["synthetic_em", "synthetic_labels"]


def synthetic_labels(
    shape: tuple[int, int, int],
    *,
    cell: tuple[int, int, int] = (16, 32, 32),
    seed: int = 0,
    id_base: int = 0,
) -> np.ndarray:
    """A uint64 label volume of Voronoi cells about ``cell`` voxels wide; ids start at id_base+1."""
    rng = np.random.default_rng(seed)
    grid = tuple(math.ceil(s / c) for s, c in zip(shape, cell, strict=True))
    jitter = rng.uniform(0.15, 0.85, size=(*grid, 3))
    seeds = (np.indices(grid).transpose(1, 2, 3, 0) + jitter) * np.asarray(cell)
    ids = rng.permutation(math.prod(grid)).reshape(grid).astype(np.uint64) + np.uint64(id_base + 1)
    # each seed only competes inside the 3x3x3 grid cells around its own: plain box slices
    best = np.full(shape, np.inf, dtype=np.float32)
    out = np.zeros(shape, dtype=np.uint64)
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    for g in itertools.product(*(range(n) for n in grid)):
        lo = [max(0, (gi - 1) * c) for gi, c in zip(g, cell, strict=True)]
        hi = [min(n, (gi + 2) * c) for gi, c, n in zip(g, cell, shape, strict=True)]
        s = seeds[g]
        dz = ((axes[0][lo[0]:hi[0]] - s[0]) / cell[0]) ** 2
        dy = ((axes[1][lo[1]:hi[1]] - s[1]) / cell[1]) ** 2
        dx = ((axes[2][lo[2]:hi[2]] - s[2]) / cell[2]) ** 2
        d = dz[:, None, None] + dy[None, :, None] + dx[None, None, :]
        region = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        closer = d < best[region]
        best[region][closer] = d[closer]
        out[region][closer] = ids[g]
    return out


def synthetic_em(
    shape: tuple[int, int, int], *, seed: int = 0, cell: tuple[int, int, int] = (16, 32, 32)
) -> tuple[np.ndarray, np.ndarray]:
    """A (uint8 image, uint64 segmentation) pair of the same shape."""
    labels = synthetic_labels(shape, cell=cell, seed=seed)
    boundary = np.zeros(shape, dtype=bool)
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        diff = labels[tuple(a)] != labels[tuple(b)]
        boundary[tuple(a)] |= diff
        boundary[tuple(b)] |= diff
    rng = np.random.default_rng(seed + 1)
    shade = rng.integers(120, 200, size=int(labels.max() % 4096) + 1)
    image = shade[(labels % 4096).astype(np.intp) % len(shade)].astype(np.int16)
    image += rng.integers(-12, 13, size=shape, dtype=np.int16)
    image[boundary] = rng.integers(20, 50, size=int(boundary.sum()), dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8), labels
