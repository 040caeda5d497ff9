"""Brute-force references for the Services' kernels that are not downsampling (that one is
numpy_reference.py): connected components, label statistics, relabelling, the proofreading
split's connected pieces, synapse post-processing and a windowed model for predict.

Written to be obviously correct, not fast: one Python step per voxel (flood fills with a
stack, sums in dicts), no cc3d, fastremap, scipy.ndimage or numpy tricks beyond indexing.
Meant for small arrays (a few thousand voxels).

Rules (the ones docs/services/*.md state):

* ``components``: voxels connect when they are neighbours (6: faces, 18: faces and edges,
  26: faces, edges and corners) and hold the same non-zero value; components are numbered
  1, 2, ... in the order of their first voxel in a C-order (z, y, x) scan
  (connected_components.md).
* ``label_stats``: one row per non-zero label, ascending id: voxel count, the half-open box
  and the mean voxel coordinate, coordinates being ``origin`` + index (label_stats.md).
* ``relabel``: every voxel whose id is a key of the mapping gets its value, all at once
  (``{a: b, b: c}`` sends a to b and b to c, not a to c) (proofread.md).
* ``split_pieces``: the 26-connected pieces of one label, the largest first, ties by their
  first voxel in C order (proofread.md; splitting.py's kernel docstring).
* ``synapse_table``: synapses.md's table, computed from the probabilities as grey levels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["components", "label_stats", "neighbour_offsets", "relabel", "split_pieces",
           "synapse_table", "windowed_mean"]

_STEPS = {6: 1, 18: 2, 26: 3}


def neighbour_offsets(connectivity: int) -> list[tuple[int, int, int]]:
    """The (dz, dy, dx) of a voxel's neighbours: at most 1, 2 or 3 non-zero steps."""
    most = _STEPS[connectivity]
    return [d for d in itertools.product((-1, 0, 1), repeat=3)
            if 0 < sum(1 for v in d if v) <= most]


def _voxels(shape: Sequence[int]) -> Any:
    return itertools.product(*(range(n) for n in shape))  # C order: x fastest


def components(labels: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """Flood fill from each unlabelled non-zero voxel in C order (uint64 result)."""
    lab = np.asarray(labels)
    shape = lab.shape
    values = lab.tolist()
    out = [[[0] * shape[2] for _ in range(shape[1])] for _ in range(shape[0])]
    steps = neighbour_offsets(connectivity)
    n = 0
    for z, y, x in _voxels(shape):
        v = values[z][y][x]
        if v == 0 or out[z][y][x]:
            continue
        n += 1
        out[z][y][x] = n
        stack = [(z, y, x)]
        while stack:
            a, b, c = stack.pop()
            for dz, dy, dx in steps:
                p, q, r = a + dz, b + dy, c + dx
                if (0 <= p < shape[0] and 0 <= q < shape[1] and 0 <= r < shape[2]
                        and not out[p][q][r] and values[p][q][r] == v):
                    out[p][q][r] = n
                    stack.append((p, q, r))
    return np.array(out, dtype=np.uint64).reshape(shape)


def label_stats(labels: np.ndarray, origin: Sequence[int] = (0, 0, 0)) -> dict[int, dict]:
    """{id: {"count", "lo" (z, y, x), "hi" (exclusive), "centroid"}} for every non-zero id."""
    lab = np.asarray(labels)
    values = lab.tolist()
    acc: dict[int, dict] = {}
    for z, y, x in _voxels(lab.shape):
        v = int(values[z][y][x])
        if v == 0:
            continue
        p = (z + origin[0], y + origin[1], x + origin[2])
        s = acc.setdefault(v, {"count": 0, "lo": list(p), "hi": [c + 1 for c in p],
                               "sum": [0, 0, 0]})
        s["count"] += 1
        for a in range(3):
            s["lo"][a] = min(s["lo"][a], p[a])
            s["hi"][a] = max(s["hi"][a], p[a] + 1)
            s["sum"][a] += p[a]  # Python integers: exact
    return {v: {"count": s["count"], "lo": tuple(s["lo"]), "hi": tuple(s["hi"]),
                "centroid": tuple(t / s["count"] for t in s["sum"])}
            for v, s in sorted(acc.items())}


def assert_stats_match(table: Any, labels: np.ndarray, origin: Sequence[int] = (0, 0, 0)
                       ) -> None:
    """A label_stats table (a DataFrame with an ``id`` column) holds exactly the ids of
    ``labels``, with the brute-force counts and bounding boxes."""
    stats = table.set_index("id")
    ref = label_stats(labels, origin)
    assert sorted(int(i) for i in stats.index) == sorted(ref)
    for i, r in ref.items():
        row = stats.loc[i]
        assert int(row.voxel_count) == r["count"]
        assert (int(row.z0), int(row.y0), int(row.x0)) == r["lo"]
        assert (int(row.z1), int(row.y1), int(row.x1)) == r["hi"]


def relabel(labels: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """Each voxel looked up once in ``mapping`` (ids not in it stay)."""
    lab = np.asarray(labels)
    flat = [mapping.get(int(v), int(v)) for v in lab.ravel().tolist()]
    return np.array(flat, dtype=lab.dtype).reshape(lab.shape)


def split_pieces(labels: np.ndarray, label: int) -> tuple[np.ndarray, int]:
    """(int32 pieces: 0 outside ``label``, 1 the largest piece, ...; the number of pieces)."""
    lab = np.asarray(labels)
    comp = components((lab == label).astype(np.uint8), 26)  # numbered by first voxel
    k = int(comp.max())
    sizes = [int(np.count_nonzero(comp == i)) for i in range(1, k + 1)]
    order = sorted(range(1, k + 1), key=lambda i: (-sizes[i - 1], i))
    out = np.zeros(lab.shape, dtype=np.int32)
    for rank, i in enumerate(order, start=1):
        out[comp == i] = rank
    return out, k


def _mode(values: list[int], exclude: Sequence[int] = ()) -> int:
    counts: dict[int, int] = {}
    for v in values:
        if v != 0 and v not in exclude:
            counts[v] = counts.get(v, 0) + 1
    if not counts:
        return 0
    best = max(counts.values())
    return min(v for v, c in counts.items() if c == best)  # ties: the smaller id


def synapse_table(grey: np.ndarray, *, threshold: float, min_size: int,
                  voxel_size: Sequence[float], origin: Sequence[int] = (0, 0, 0),
                  segmentation: np.ndarray | None = None, shell: float = 100.0
                  ) -> list[dict[str, Any]]:
    """synapses.md's table from uint8 probabilities ``grey`` (z, y, x), one dict per row.

    A voxel is in the mask when ``grey / 255 >= threshold``; detections are the 26-connected
    components with at least ``min_size`` voxels, ``id`` 1.. in their first voxel's C order;
    the position is the voxel nearest the centroid in nm (ties: first in C order); score the
    mean of grey / 255; post_id the most frequent non-zero segment of the detection's voxels,
    pre_id the most frequent other non-zero segment of the voxels outside the detection within
    ``shell`` nm of one of its voxels (ties: the smaller id; 0 where none).
    """
    g = np.asarray(grey)
    mask = np.array([[[int(v) / 255 >= threshold for v in row] for row in plane]
                     for plane in g.tolist()], dtype=np.uint8).reshape(g.shape)
    comp = components(mask, 26)
    vs = [float(v) for v in voxel_size]
    everywhere = np.argwhere(np.ones(g.shape, dtype=bool)).astype(np.float64) * vs
    rows = []
    for i in range(1, int(comp.max()) + 1):
        vox = [tuple(int(c) for c in p) for p in np.argwhere(comp == i)]  # C order
        if len(vox) < min_size:
            continue
        centre = [sum(p[a] for p in vox) / len(vox) for a in range(3)]
        best, best_d = vox[0], math.inf
        for p in vox:
            d = sum(((p[a] - centre[a]) * vs[a]) ** 2 for a in range(3))
            if d < best_d:  # strictly: the first voxel in C order keeps a tie
                best, best_d = p, d
        at = [best[a] + int(origin[a]) for a in range(3)]
        row: dict[str, Any] = {
            "id": len(rows) + 1, "z": at[0], "y": at[1], "x": at[2],
            "x_nm": (at[2] + 0.5) * vs[2], "y_nm": (at[1] + 0.5) * vs[1],
            "z_nm": (at[0] + 0.5) * vs[0],
            "size": len(vox),
            "score": np.float32(sum(int(g[p]) / 255 for p in vox) / len(vox)),
        }
        if segmentation is not None:
            seg = np.asarray(segmentation)
            post = _mode([int(seg[p]) for p in vox])
            det = np.asarray(vox, dtype=np.float64) * vs
            # every voxel's distance (nm) to the nearest voxel of the detection
            dist = np.full(len(everywhere), np.inf)
            for k in range(0, len(det), 128):  # in pieces: bounded memory
                part = det[k:k + 128]
                d = np.sqrt(((everywhere[:, None, :] - part[None, :, :]) ** 2).sum(-1))
                dist = np.minimum(dist, d.min(1))
            inside = set(vox)
            near = [tuple(int(c) for c in np.unravel_index(j, g.shape))
                    for j in np.flatnonzero(dist <= shell)]
            pre = _mode([int(seg[p]) for p in near if p not in inside], exclude=(post,))
            row["pre_id"], row["post_id"] = pre, post
        rows.append(row)
    return rows


def windowed_mean(x: np.ndarray, radius: Sequence[int],
                  weight: Callable[[int, int, int], float]) -> np.ndarray:
    """For each voxel: the weighted mean of the voxels within ``radius`` (z, y, x) of it that
    lie inside the array, weight(dz, dy, dx) each; float64, voxel by voxel."""
    a = np.asarray(x, dtype=np.float64)
    rz, ry, rx = radius
    out = np.zeros(a.shape, dtype=np.float64)
    nz, ny, nx = a.shape
    for z, y, x0 in _voxels(a.shape):
        total = norm = 0.0
        for dz in range(-rz, rz + 1):
            for dy in range(-ry, ry + 1):
                for dx in range(-rx, rx + 1):
                    p, q, r = z + dz, y + dy, x0 + dx
                    if 0 <= p < nz and 0 <= q < ny and 0 <= r < nx:
                        w = weight(dz, dy, dx)
                        total += w * a[p, q, r]
                        norm += w
        out[z, y, x0] = total / norm
    return out
