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
from dataclasses import dataclass

import numpy as np

from .errors import InvalidRequestError
from .progress import progress_bar

__all__ = [
    "SyntheticSynapses", "synapses", "synthetic_em", "synthetic_labels", "synthetic_neurites",
]


def _ints(value: object, what: str, n: int = 3, least: int = 1) -> tuple[int, ...]:
    """``value`` as ``n`` Python ints >= ``least`` (floats, bools and strings refused: they
    raised numpy's bare ValueError / TypeError or ZeroDivisionError deep inside)."""
    items = (list(value) if isinstance(value, (tuple, list, np.ndarray)) else None)
    if items is None or len(items) != n or any(
            isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))
            or v < least for v in items):
        raise InvalidRequestError(
            f"{what} must be {n} integers >= {least}" + (" in (z, y, x) order" if n == 3 else "")
            + f", got {value!r}")
    return tuple(int(v) for v in items)


def _whole(value: object, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < 0:
        raise InvalidRequestError(f"{what} must be an integer >= 0, got {value!r}")
    return int(value)


def _finite(value: object, what: str, *, positive: bool) -> float:
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.number))
    if not ok or not math.isfinite(float(value)) or float(value) < 0 or (   # type: ignore[arg-type]
            positive and float(value) == 0):  # type: ignore[arg-type]
        raise InvalidRequestError(
            f"{what} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _three(value: object) -> list[object]:
    if not isinstance(value, (tuple, list, np.ndarray)) or len(value) != 3:
        raise InvalidRequestError(f"voxel_size must be 3 numbers in (z, y, x) order, got "
                                  f"{value!r}")
    return list(value)


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
    shape = _ints(shape, "shape")  # type: ignore[assignment]
    cell = _ints(cell, "cell")  # type: ignore[assignment]
    seed, id_base = _whole(seed, "seed"), _whole(id_base, "id_base")
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
    width, so a block face through the middle of a lane is crossed at a good angle.  Tubes
    stay inside their lanes, so each id is one connected object; the rest is background (0).
    ``progress``: a bar over the tubes.
    """
    shape = _ints(shape, "shape")  # type: ignore[assignment]
    nz, ny = _ints(lanes, "lanes", 2)
    radius = _finite(radius, "radius", positive=True)
    seed, id_base = _whole(seed, "seed"), _whole(id_base, "id_base")
    rng = np.random.default_rng(seed)
    lz, ly = shape[0] / nz, shape[1] / ny
    if min(lz, ly) < 2 * radius + 4:
        raise InvalidRequestError(f"lanes of {lz:.0f} x {ly:.0f} voxels are too narrow for "
                                  f"radius {radius}: use fewer lanes or a larger shape")
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


# --- synthetic synapses (issue 12): EM-like volumes with synapse ground truth -----------------


@dataclass(frozen=True)
class SyntheticSynapses:
    """What :func:`synapses` returns (all arrays Z, Y, X; synapse ``i`` is row ``i``).

    ``image``: uint8 EM-like image; ``labels``: uint64 cells whose membranes the image shows;
    ``mask``: bool, the synapse voxels (cleft and postsynaptic density); ``instances``: uint32,
    ``i + 1`` on synapse ``i``'s voxels, 0 elsewhere; ``centres``: (N, 3) int64 voxels, each a
    mask voxel nearest its synapse's centroid; ``pre_id`` / ``post_id``: (N,) uint64, the cell
    holding the vesicles and the cell holding the density; ``voxel_size``: nm (z, y, x).
    """

    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    centres: np.ndarray
    pre_id: np.ndarray
    post_id: np.ndarray
    voxel_size: tuple[float, float, float]

    def __getitem__(self, key: str) -> object:  # result["image"] as well as result.image
        return getattr(self, key)


def synapses(
    shape: tuple[int, int, int],
    *,
    seed: int = 0,
    voxel_size: tuple[float, float, float] = (40.0, 8.0, 8.0),
    density: float = 1.0,
    cell: tuple[int, int, int] = (12, 48, 48),
    lone_vesicles: float = 0.3,
) -> SyntheticSynapses:
    """An EM-like volume with synapses and their ground truth (numpy only, deterministic per seed).

    Cells as :func:`synthetic_labels` (``cell`` voxels wide); membranes are dark, cytoplasm
    mid-grey with a per-cell shade, a slow texture and dark organelle-like blobs.  A synapse sits
    on the membrane between two cells: on the postsynaptic side a dark disc-shaped density
    (30-50 nm thick, 140-320 nm across) hugging the membrane, on the presynaptic side a cluster
    of 25-50 vesicles (dark rings about 40 nm across) within 220 nm of it.  Synapses are placed
    on membranes that cross the sections steeply (as annotators see them), at least 700 nm apart
    and away from the faces of the volume.  ``density``: synapses per cubic micrometre (fewer
    are placed when there is no room); ``lone_vesicles``: that many vesicle clusters without a
    density per synapse, as distractors.  The image is blurred in-plane and noisy.
    """
    shape = _ints(shape, "shape")  # type: ignore[assignment]
    try:
        density = _finite(density, "density", positive=False)
        lone_vesicles = _finite(lone_vesicles, "lone_vesicles", positive=False)
    except InvalidRequestError:
        raise InvalidRequestError(
            f"density {density!r}, lone_vesicles {lone_vesicles!r}: give densities >= 0 (finite "
            "numbers)") from None
    voxel_size = tuple(_finite(v, "voxel_size", positive=True)  # type: ignore[assignment]
                       for v in _three(voxel_size))
    vs = np.asarray(voxel_size, dtype=np.float64)
    labels = synthetic_labels(shape, cell=cell, seed=seed)
    rng = np.random.default_rng([seed, 12])
    boundary = _boundary(labels)
    shade = rng.uniform(135.0, 185.0, size=int(labels.max()) + 1)
    image = shade[labels.astype(np.intp)].astype(np.float32)
    image += _smooth_noise(shape, rng, (2, 12, 12), 10.0)
    _organelles(image, labels, boundary, rng, vs)
    wanted = round(density * math.prod(shape) * math.prod(voxel_size) / 1e9)
    lone = round(lone_vesicles * wanted)
    sites = _place_synapses(labels, rng, vs, wanted + lone, margin=(2, 20, 20), spacing=700.0)
    for site in sites:  # the last ``lone`` sites get vesicles only: distractors
        _vesicles(image, labels, rng, vs, site)
    # membranes crossing the sections are dark; those seen obliquely (the label changes only
    # along z) are grey, smeared through the section's thickness
    crossing = _boundary(labels, (1, 2))
    oblique = boundary & ~crossing
    image[oblique] = rng.uniform(80.0, 110.0, size=int(oblique.sum())).astype(np.float32)
    image[crossing] = rng.uniform(35.0, 65.0, size=int(crossing.sum())).astype(np.float32)
    mask = np.zeros(shape, dtype=bool)
    instances = np.zeros(shape, dtype=np.uint32)
    centres: list[np.ndarray] = []
    pre: list[int] = []
    post: list[int] = []
    real = round(len(sites) * wanted / max(1, wanted + lone))
    for site in sites[:real]:
        region, voxels = site.region, site.voxels
        i = len(centres)
        mask[region] |= voxels
        instances[region][voxels] = i + 1
        image[region][voxels] = rng.uniform(15.0, 45.0, size=int(voxels.sum()))
        where = np.argwhere(voxels) + np.array([s.start for s in region])
        mean = where.mean(0)
        centres.append(where[np.argmin((((where - mean) * vs) ** 2).sum(1))])
        pre.append(site.pre)
        post.append(site.post)
    image = _blur_yx(image)
    image += rng.normal(0.0, 9.0, size=shape).astype(np.float32)
    return SyntheticSynapses(
        image=np.clip(np.rint(image), 0, 255).astype(np.uint8), labels=labels, mask=mask,
        instances=instances, centres=np.asarray(centres, dtype=np.int64).reshape(-1, 3),
        pre_id=np.asarray(pre, dtype=np.uint64), post_id=np.asarray(post, dtype=np.uint64),
        voxel_size=(float(vs[0]), float(vs[1]), float(vs[2])))


@dataclass
class _Site:
    """One synapse: its window, pre and post cells, membrane plane and density voxels."""

    region: tuple[slice, slice, slice]
    pre: int
    post: int
    origin: np.ndarray  # nm, a point of the membrane plane
    normal: np.ndarray  # unit, from pre to post
    axes: np.ndarray  # (2, 3) unit vectors in the plane
    radii: np.ndarray  # nm, the density's half widths along axes
    voxels: np.ndarray  # bool over region: the synapse's cleft and density


def _boundary(labels: np.ndarray, axes: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """Voxels whose label differs from a neighbour's along ``axes``."""
    out = np.zeros(labels.shape, dtype=bool)
    for axis in axes:
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        diff = labels[tuple(a)] != labels[tuple(b)]
        out[tuple(a)] |= diff
        out[tuple(b)] |= diff
    return out


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, step: tuple[int, ...],
                  amplitude: float) -> np.ndarray:
    """Noise varying over about ``step`` voxels: a coarse grid, repeated, then blurred."""
    coarse = rng.normal(0.0, amplitude, size=tuple(-(-n // s) + 1 for n, s in zip(
        shape, step, strict=True))).astype(np.float32)
    fine = coarse
    for axis, s in enumerate(step):
        fine = np.repeat(fine, s, axis=axis)
    fine = fine[: shape[0], : shape[1], : shape[2]]
    for _ in range(max(step[1:]) // 4):
        fine = _blur_yx(fine)
    return fine


def _blur_yx(image: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] / 4 blur along y and x (edges repeated)."""
    out = image.astype(np.float32)
    for axis in (1, 2):
        p = np.pad(out, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
        n = out.shape[axis]
        out = 0.25 * (p.take(range(0, n), axis) + p.take(range(2, n + 2), axis)) + 0.5 * out
    return out


def _organelles(image: np.ndarray, labels: np.ndarray, boundary: np.ndarray,
                rng: np.random.Generator, vs: np.ndarray) -> None:
    """Dark rounded blobs (mitochondria-like) inside cells, not touching membranes."""
    count = max(1, round(math.prod(labels.shape) * math.prod(vs) / 1e9 * 1.5))
    for _ in range(count):
        centre = np.array([rng.integers(0, n) for n in labels.shape])
        radius = rng.uniform(50.0, 110.0, size=3) * np.array([1.0, 1.0, rng.uniform(1.0, 2.0)])
        half = np.ceil(radius / vs).astype(int)
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, labels.shape)
        region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grid = np.indices(tuple(hi - lo)).transpose(1, 2, 3, 0) + lo - centre
        inside = (((grid * vs / radius) ** 2).sum(-1) <= 1.0)
        inside &= labels[region] == labels[tuple(centre)]
        inside &= ~boundary[region]
        image[region][inside] = image[region][inside] * 0.55 + rng.uniform(20.0, 40.0)


def _place_synapses(labels: np.ndarray, rng: np.random.Generator, vs: np.ndarray, wanted: int,
                    *, margin: tuple[int, int, int], spacing: float) -> list[_Site]:
    """Up to ``wanted`` synapse sites on in-plane steep membranes, ``spacing`` nm apart."""
    # candidate points: label changes along y or x (membranes that cross the section)
    cand = [np.argwhere(labels[:, 1:, :] != labels[:, :-1, :]),
            np.argwhere(labels[:, :, 1:] != labels[:, :, :-1])]
    points = np.concatenate(cand) if wanted else np.zeros((0, 3), dtype=np.int64)
    lo, hi = np.asarray(margin), np.asarray(labels.shape) - np.asarray(margin)
    points = points[((points >= lo) & (points < hi)).all(1)]
    sites: list[_Site] = []
    if not len(points):
        return sites
    for p in points[rng.permutation(len(points))[: 60 * wanted]]:
        if len(sites) >= wanted:
            break
        if any(np.sqrt((((p - s.origin / vs) * vs) ** 2).sum()) < spacing for s in sites):
            continue
        site = _site(labels, rng, vs, p)
        if site is not None:
            sites.append(site)
    return sites


def _site(labels: np.ndarray, rng: np.random.Generator, vs: np.ndarray,
          p: np.ndarray) -> _Site | None:
    """The synapse at membrane point ``p`` (or None where the membrane does not suit)."""
    half = np.ceil(np.array([260.0, 320.0, 320.0]) / vs).astype(int)
    lo = np.maximum(p - half, 0)
    hi = np.minimum(p + half + 1, labels.shape)
    region = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    win = labels[region]
    q = tuple(p - lo)
    a = int(win[q])
    nbrs = [win[q[0], q[1] + 1, q[2]], win[q[0], q[1], q[2] + 1]]
    b = int(next(n for n in nbrs if n != a))
    if rng.random() < 0.5:
        a, b = b, a
    # membrane voxels of the pre side: pre voxels with a post neighbour (6-connected)
    touching = np.zeros(win.shape, dtype=bool)
    for axis in range(3):
        for step in (1, -1):
            shifted = np.roll(win, step, axis=axis) == b
            edge = [slice(None)] * 3
            edge[axis] = slice(0, 1) if step == 1 else slice(-1, None)
            shifted[tuple(edge)] = False
            touching |= shifted
    touching &= win == a
    pts = np.argwhere(touching)
    if len(pts) < 30:
        return None
    nm = (pts + lo) * vs
    origin = nm.mean(0)
    _, _, vt = np.linalg.svd(nm - origin, full_matrices=False)
    normal = vt[2] / np.linalg.norm(vt[2])
    grid = (np.indices(win.shape).transpose(1, 2, 3, 0) + lo) * vs - origin
    if (grid[win == b] @ normal).mean() < 0:
        normal = -normal
    if abs(normal[0]) > 0.6:  # nearly parallel to the sections: smeared, not annotated
        return None
    e1 = np.array([1.0, 0.0, 0.0]) - normal[0] * normal
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(normal, e1)
    radii = np.array([rng.uniform(70.0, 120.0), rng.uniform(70.0, 160.0)])
    d = grid @ normal
    ellipse = ((grid @ e1) / radii[0]) ** 2 + ((grid @ e2) / radii[1]) ** 2 <= 1.0
    thick = rng.uniform(30.0, 50.0)
    voxels = ellipse & (((win == b) & (d <= thick)) | touching)
    full = math.pi * radii[0] * radii[1] * (thick + vs[1]) / math.prod(vs)
    if voxels.sum() < 0.6 * full:
        return None  # the contact face is too small for the whole density (a corner)
    return _Site(region, a, b, origin, normal, np.stack([e1, e2]), radii, voxels)


def _vesicles(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, vs: np.ndarray,
              site: _Site) -> None:
    """25-50 vesicles (dark ring, lighter lumen) in the pre cell within 220 nm of the membrane."""
    for _ in range(int(rng.integers(25, 51))):
        depth = rng.uniform(35.0, 220.0)
        u, v = rng.uniform(-1.1, 1.1, size=2) * site.radii
        centre_nm = site.origin - depth * site.normal + u * site.axes[0] + v * site.axes[1]
        centre = np.rint(centre_nm / vs).astype(int)
        if (centre < 0).any() or (centre >= labels.shape).any():
            continue
        if labels[tuple(centre)] != site.pre:
            continue
        r = rng.uniform(16.0, 24.0)
        half = np.ceil((r + 8.0) / vs).astype(int)
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, labels.shape)
        region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        dist = np.sqrt((((np.indices(tuple(hi - lo)).transpose(1, 2, 3, 0) + lo) * vs
                         - centre_nm) ** 2).sum(-1))
        own = labels[region] == site.pre
        ring = own & (dist <= r + 4.0) & (dist > r - 6.0)
        lumen = own & (dist <= r - 6.0)
        image[region][ring] = rng.uniform(50.0, 80.0)
        image[region][lumen] += 15.0
