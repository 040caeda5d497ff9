"""CloudVolume's spatial index of a skeleton directory, kept up to date by skeleton writes.

A skeleton info with ``"spatial_index": {"chunk_size": [x, y, z], "resolution": [x, y, z]}``
(Igneous writes one) has, beside the skeletons, one JSON file per chunk of space,
``<x0>-<x1>_<y0>-<y1>_<z0>-<z1>.spatial``, mapping each segment id with skeleton vertices in
that chunk to their bounding box, ``{"<id>": [x0, y0, z0, x1, y1, z1]}``, integers in
physical units (nm).  CloudVolume's ``skeleton.spatial_index`` (``query(bbox)``,
``get_bbox(id)``) and its skeleton listing read only these files, so a skeleton written
without an entry there is invisible to them.

The layout is CloudVolume's reader (``cloudvolume/datasource/precomputed/spatial_index.py``):
the grid starts at the layer's bounds at the skeletons' mip (the info's ``mip``, else the
``skeletons_mip_<n>`` in the directory name, else 0) times ``resolution`` (default that mip's
resolution); the chunks of the last row end at the bounds; numbers are written with as many
decimals as the resolution has (none for integers); a bounding box is Bbox.from_points' (the
minimum, and the maximum plus 1, as integers).  Igneous gzips the files (``<name>.gz`` on a
local disk): they are read either way and written back plain.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import InvalidRequestError
from ...storage import Directory, json_object

__all__ = ["SpatialGrid", "spatial_grid", "update_spatial_index"]

_SKEL_MIP = re.compile(r"skeletons_mip_(\d+)")  # CloudVolume's SKEL_MIP_REGEXP, searched

Chunk = tuple[int, int, int]


def _precision(num: object) -> int:
    """CloudVolume's ``getprecision``: the decimals of ``str(num)``."""
    parts = str(num).split(".")
    return len(parts[1]) if len(parts) > 1 else 0


def _vector(value: object, what: str) -> list[float | int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v) for v in value)):
        raise InvalidRequestError(f"{what} must be 3 numbers (x, y, z), got {value!r}")
    return list(value)


@dataclass(frozen=True)
class SpatialGrid:
    """The chunks of a spatial index: physical bounds ``lo``..``hi`` (x, y, z) cut into
    ``chunk``-sized pieces, ``counts`` of them along each axis."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    chunk: tuple[float, float, float]
    counts: Chunk
    precision: int
    floating: bool  # the reader steps through the grid in floats (a float chunk_size)

    def name(self, index: Chunk) -> str:
        """The file of chunk ``index`` (x, y, z), as CloudVolume names it."""
        lo = [a + i * c for a, i, c in zip(self.lo, index, self.chunk, strict=True)]
        hi = [min(a + c, b) for a, c, b in zip(lo, self.chunk, self.hi, strict=True)]
        return "_".join(f"{self._render(a)}-{self._render(b)}"
                        for a, b in zip(lo, hi, strict=True)) + ".spatial"

    def _render(self, x: float) -> str:
        if self.precision:
            return f"{round(x, self.precision):.{self.precision}f}"
        return str(float(x)) if self.floating else str(int(x))

    def names(self) -> Iterator[str]:
        nx, ny, nz = self.counts
        for z in range(nz):
            for y in range(ny):
                for x in range(nx):
                    yield self.name((x, y, z))

    def names_within(self, lo: np.ndarray, hi: np.ndarray) -> list[str]:
        """The files of the chunks the physical box ``lo``..``hi`` (x, y, z; ``hi``
        excluded) meets, a box outside the bounds counting in the nearest chunks (as
        :meth:`parts` counts vertices there)."""
        if not all(self.counts):
            return []
        chunk = np.asarray(self.chunk, dtype=np.float64)
        top = np.asarray(self.counts) - 1
        a, b = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        first = np.clip(np.floor((a - self.lo) / chunk), 0, top)
        last = np.clip(np.ceil((np.maximum(a, b) - self.lo) / chunk) - 1, first, top)
        a, b = first.astype(np.int64), last.astype(np.int64)
        return [self.name((x, y, z)) for z in range(int(a[2]), int(b[2]) + 1)
                for y in range(int(a[1]), int(b[1]) + 1) for x in range(int(a[0]), int(b[0]) + 1)]

    def parts(self, vertices: np.ndarray, edges: np.ndarray) -> dict[Chunk, list[int]]:
        """{chunk: bounding box of the skeleton's part in it} for a skeleton in nm.

        Edges longer than half a chunk are sampled along their length, so a chunk an edge
        crosses without a vertex in it still lists the segment.  Vertices outside the bounds
        count in the nearest chunk (a query is clipped to the bounds) with their true
        coordinates."""
        points = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
        if not len(points):
            return {}
        chunk = np.asarray(self.chunk, dtype=np.float64)
        e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
        if len(e):
            a, b = points[e[:, 0]], points[e[:, 1]]
            steps = np.ceil(np.linalg.norm(b - a, axis=1) / (chunk.min() / 2)).astype(np.int64)
            long = steps > 1
            if long.any():
                n = steps[long]
                edge = np.repeat(np.arange(int(long.sum())), n - 1)
                # the j-th of the n - 1 inner points of each long edge: j = 1 .. n - 1
                first = np.repeat(np.cumsum(n - 1) - (n - 1), n - 1)
                t = (np.arange(len(edge)) - first + 1) / n[edge]
                la, lb = a[long][edge], b[long][edge]
                points = np.concatenate([points, la + (lb - la) * t[:, None]])
        cells = np.floor((points - np.asarray(self.lo)) / chunk).astype(np.int64)
        cells = np.clip(cells, 0, np.asarray(self.counts) - 1)
        order = np.lexsort(cells.T[::-1])
        cells, points = cells[order], points[order]
        cut = np.flatnonzero(np.any(cells[1:] != cells[:-1], axis=1)) + 1
        out: dict[Chunk, list[int]] = {}
        for cell, pts in zip(np.split(cells, cut), np.split(points, cut), strict=True):
            low = np.floor(pts.min(axis=0)).astype(np.int64)
            high = np.floor(pts.max(axis=0)).astype(np.int64) + 1
            x, y, z = (int(v) for v in cell[0])
            out[(x, y, z)] = [int(v) for v in (*low, *high)]
        return out


def spatial_grid(layer_info: Mapping[str, Any], skel_info: Mapping[str, Any], skel_dir: str,
                 where: str) -> SpatialGrid | None:
    """The spatial index grid of a skeleton directory, None when its info declares none.
    ``where`` names the skeleton info in errors."""
    index = skel_info.get("spatial_index")
    if not index:
        return None
    if not isinstance(index, Mapping) or "chunk_size" not in index:
        raise InvalidRequestError(
            f"{where}: spatial_index must be an object with a chunk_size, got {index!r}; fix "
            "it or remove it (CloudVolume cannot read it either)")
    if "mip" in skel_info:
        mip: Any = skel_info["mip"]
    else:
        found = _SKEL_MIP.search(skel_dir)
        mip = int(found.group(1)) if found else 0
    scales = layer_info.get("scales")
    if (not isinstance(mip, int) or isinstance(mip, bool) or not isinstance(scales, list)
            or not 0 <= mip < len(scales)):
        raise InvalidRequestError(
            f"{where}: the skeletons' mip {mip!r} names no scale of the layer, so the spatial "
            "index grid is unknown")
    scale = scales[mip]
    chunk = _vector(index["chunk_size"], f"{where} spatial_index.chunk_size")
    if any(c <= 0 for c in chunk):
        raise InvalidRequestError(f"{where}: spatial_index.chunk_size must be positive, got "
                                  f"{chunk}")
    resolution = _vector(index.get("resolution", scale.get("resolution")),
                         f"{where} spatial_index.resolution")
    offset = _vector(scale.get("voxel_offset", [0, 0, 0]), f"scale {mip} voxel_offset")
    size = _vector(scale.get("size"), f"scale {mip} size")
    precision = max(_precision(r) for r in resolution)
    res = [float(r) if precision else int(r) for r in resolution]
    lo = [int(o) * r for o, r in zip(offset, res, strict=True)]
    hi = [(int(o) + int(s)) * r for o, s, r in zip(offset, size, res, strict=True)]
    counts = tuple(max(0, math.ceil((b - a) / c)) for a, b, c in zip(lo, hi, chunk, strict=True))
    return SpatialGrid(
        (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2]),
        (float(chunk[0]), float(chunk[1]), float(chunk[2])),
        (counts[0], counts[1], counts[2]), precision,
        any(isinstance(c, float) for c in chunk))


#: reads and conditional writes of one index file before giving up (each retry follows another
#: writer's change of that same file)
_UPDATE_ATTEMPTS = 20


def update_spatial_index(directory: Directory, grid: SpatialGrid,
                         parts: Mapping[int, Mapping[Chunk, list[int]]],
                         replaced: set[int],
                         old_boxes: Mapping[int, Sequence[tuple[np.ndarray, np.ndarray]]]
                         | None = None) -> None:
    """Enter ``parts`` ({segment id: {chunk: bbox}}) in the index files of ``directory``.

    Entries of those ids in the files they touch are replaced; ``replaced`` ids (which had a
    skeleton before) are also removed from every other file of the grid, which reads them all
    unless ``old_boxes`` knows where each of them was: {id: the physical boxes ``(lo, hi)``
    its entries can be in} (none: it has no entry), then only the files of the chunks those
    boxes meet are read beside the ones ``parts`` touch.  (Mesh writes know an id's old box
    from the manifest they replace; a large grid cost a read per file per call.)
    Each file is read, changed and written back with ``Directory.update``: under a lock on
    local disks, conditionally on object storage (written only if nobody changed it since it
    was read, else read and changed again), so concurrent writers of one skeleton directory
    (dask workers of one skeletonization) keep each other's entries.  (On object storage it
    was written back unconditionally: a writer between another's read and write lost its
    entries.)"""
    by_file: dict[str, dict[str, list[int]]] = {}
    for seg, chunks in parts.items():
        for cell, box in chunks.items():
            by_file.setdefault(grid.name(cell), {})[str(seg)] = box
    stale = {str(s) for s in parts}
    if replaced and (old_boxes is None or not replaced <= set(old_boxes)):
        names = list(grid.names())
    else:
        wanted = set(by_file)
        for seg in replaced:
            for lo, hi in (old_boxes or {})[seg]:
                wanted.update(grid.names_within(lo, hi))
        names = sorted(wanted)
    for name in names:
        new = by_file.get(name, {})
        where = directory.path(name)

        def change(raw: bytes | None, new: dict[str, list[int]] = new,
                   where: str = where) -> bytes | None:
            if raw is None and not new:
                return None
            doc = None if raw is None else json_object(raw, where)
            kept = {k: v for k, v in (doc or {}).items() if k not in stale}
            kept.update(new)
            if doc is not None and kept == doc:
                return None
            return json.dumps(kept, separators=(",", ":")).encode()

        directory.update(name, change, attempts=_UPDATE_ATTEMPTS,
                         advice="too many writers share this spatial index file: give each "
                         "writer segments in fewer chunks of space, or fewer writers")
