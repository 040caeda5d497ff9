"""Synthetic EM-like data for the demo, tests and benchmarks (numpy only, deterministic).

Cells are the Voronoi regions of seeds jittered on a regular grid (so each voxel only compares
the 27 neighbouring seeds), membranes are dark voxels where the label changes, the cytoplasm is
mid-grey with noise.  :func:`synthetic_neurites` draws tubes with a branch each (what
skeletons are for).  The generators that take long on large shapes draw a progress bar with
``progress=True``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .progress import progress_bar

__all__ = ["synthetic_em", "synthetic_labels", "synthetic_neurites"]


def synthetic_labels(
    shape: tuple[int, int, int],
    *,
    cell: tuple[int, int, int] = (16, 32, 32),
    seed: int = 0,
    id_base: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """A uint64 label volume of Voronoi cells about ``cell`` voxels wide; ids start at id_base+1.

    ``progress``: a bar over the cells (256 x 1024 x 1024 has 16384 of them, about 100 s).
    """
    rng = np.random.default_rng(seed)
    grid = tuple(math.ceil(s / c) for s, c in zip(shape, cell, strict=True))
    jitter = rng.uniform(0.15, 0.85, size=(*grid, 3))
    seeds = (np.indices(grid).transpose(1, 2, 3, 0) + jitter) * np.asarray(cell)
    ids = rng.permutation(math.prod(grid)).reshape(grid).astype(np.uint64) + np.uint64(id_base + 1)
    # each seed only competes inside the 3x3x3 grid cells around its own: plain box slices
    best = np.full(shape, np.inf, dtype=np.float32)
    out = np.zeros(shape, dtype=np.uint64)
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    with progress_bar(progress, math.prod(grid), "synthetic cells") as bar:
        for g in itertools.product(*(range(n) for n in grid)):
            _claim(g, cell, shape, seeds[g], axes, best, out, ids[g])
            bar.advance()
    return out


def _claim(g: tuple[int, ...], cell: tuple[int, int, int], shape: tuple[int, int, int],
           s: np.ndarray, axes: list[np.ndarray], best: np.ndarray, out: np.ndarray,
           ident: np.uint64) -> None:
    """Give the voxels around grid cell ``g`` that are closer to its seed ``s`` to ``ident``."""
    lo = [max(0, (gi - 1) * c) for gi, c in zip(g, cell, strict=True)]
    hi = [min(n, (gi + 2) * c) for gi, c, n in zip(g, cell, shape, strict=True)]
    dz = ((axes[0][lo[0]:hi[0]] - s[0]) / cell[0]) ** 2
    dy = ((axes[1][lo[1]:hi[1]] - s[1]) / cell[1]) ** 2
    dx = ((axes[2][lo[2]:hi[2]] - s[2]) / cell[2]) ** 2
    d = dz[:, None, None] + dy[None, :, None] + dx[None, None, :]
    region = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    closer = d < best[region]
    best[region][closer] = d[closer]
    out[region][closer] = ident


def synthetic_em(
    shape: tuple[int, int, int], *, seed: int = 0, cell: tuple[int, int, int] = (16, 32, 32),
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A (uint8 image, uint64 segmentation) pair of the same shape (``progress``: a bar over
    the cells of the segmentation)."""
    labels = synthetic_labels(shape, cell=cell, seed=seed, progress=progress)
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


def synthetic_neurites(
    shape: tuple[int, int, int],
    *,
    lanes: tuple[int, int] = (2, 2),
    radius: float = 3.0,
    seed: int = 0,
    id_base: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """A uint64 label volume of tubes ("neurites"), one per lane, ids from id_base+1.

    The (z, y) plane is cut into ``lanes`` (z lanes, y lanes); in each, a tube of ``radius``
    voxels runs the whole x extent with a smooth wiggle in z and y, and a branch leaves it
    part way.  The wiggle is one to two waves along x, of 0.6 times the lane's free half
    width, so a block face through the middle of a lane is crossed at a good angle.  Tubes stay inside their lanes, so each id is one connected object; the rest is
    background (0).  ``progress``: a bar over the tubes.
    """
    rng = np.random.default_rng(seed)
    nz, ny = lanes
    lz, ly = shape[0] / nz, shape[1] / ny
    if min(lz, ly) < 2 * radius + 4:
        raise ValueError(f"lanes of {lz:.0f} x {ly:.0f} voxels are too narrow for radius "
                         f"{radius}: use fewer lanes or a larger shape")
    out = np.zeros(shape, dtype=np.uint64)
    ball = math.ceil(radius)
    offs = np.stack(np.meshgrid(*([np.arange(-ball, ball + 1)] * 3), indexing="ij"), -1)
    offs = offs[(offs ** 2).sum(-1) <= radius ** 2].reshape(-1, 3)
    xs = np.arange(0.0, shape[2], 0.5)
    ident = id_base
    with progress_bar(progress, nz * ny, "synthetic neurites") as bar:
        for iz, iy in itertools.product(range(nz), range(ny)):
            ident += 1
            cz, cy = (iz + 0.5) * lz, (iy + 0.5) * ly
            az, ay = (lz / 2 - radius - 2), (ly / 2 - radius - 2)
            pz, py = rng.uniform(0, 2 * math.pi, 2)
            fz, fy = rng.uniform(1.0, 2.0, 2) * 2 * math.pi / shape[2]  # 1 to 2 waves
            trunk = np.stack([cz + 0.6 * az * np.sin(fz * xs + pz),
                              cy + 0.6 * ay * np.sin(fy * xs + py), xs], -1)
            # a branch from a third of the way along to the lane's y edge, heading on in x
            at = trunk[len(trunk) // 3]
            end = np.array([at[0], cy + (ay if at[1] < cy else -ay), min(shape[2] - 1.0,
                                                                        at[2] + shape[2] / 4)])
            t = np.linspace(0.0, 1.0, int(2 * np.abs(end - at).max()) + 2)[:, None]
            points = np.concatenate([trunk, at + t * (end - at)])
            vox = (np.rint(points).astype(np.int64)[:, None, :] + offs[None]).reshape(-1, 3)
            vox = vox[((vox >= 0) & (vox < np.asarray(shape))).all(1)]
            out[vox[:, 0], vox[:, 1], vox[:, 2]] = ident
            bar.advance()
    return out
