"""Stitching block-wise mesh pieces, as their blocks finish.

A block's piece of a segment shares vertices with its neighbours' pieces only in the planes of
its inner faces (the voxel-centre planes a block and the next one both mesh).  Each piece
comes with the inner faces whose voxel layer holds its id (:func:`touches`, computed on the
worker).  A segment is
stitched as soon as every block next to a face one of its pieces reaches has arrived, while
the workers go on with the rest; a piece of it arriving later (the same id in a disjoint part
of the volume) stitches it again from all its pieces.  The result is therefore always
:func:`stitch` of all the segment's pieces in block order: the same arrays whatever order the
blocks finish in, and the same as stitching everything at the end.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from ..formats.mesh import Mesh
from ..geometry import Box, Vec

__all__ = ["Stitcher", "stitch", "touches"]

#: bit of :func:`touches` for each box axis (z, y, x): lower face, upper face
_LOWER = (1, 4, 16)
_UPPER = (2, 8, 32)


def _candidate_bounds(box: Box, region: Box, res: Sequence[float]
                      ) -> list[tuple[int, int, float | None, float | None]]:
    """Per vertex column c (x, y, z): (c, box axis, below-this-is-on-the-lower-face,
    above-this-is-on-the-upper-face), None where the face is the region's own."""
    out = []
    for c, ax in ((0, 2), (1, 1), (2, 0)):
        tol = res[c] / 4
        lo = (box.start[ax] + 0.5) * res[c] + tol if box.start[ax] > region.start[ax] else None
        hi = (box.stop[ax] + 0.5) * res[c] - tol if box.stop[ax] < region.stop[ax] else None
        out.append((c, ax, lo, hi))
    return out


def touches(labels: np.ndarray, ext: Box, box: Box, region: Box, ids: Sequence[int]
            ) -> np.ndarray:
    """For each of ``ids`` (pieces meshed from ``labels``, the voxels of ``ext``: ``box`` plus
    one voxel on its upper faces), a bit mask of the inner faces of ``box`` whose voxel layer
    holds that id (bits :data:`_LOWER`, :data:`_UPPER` per axis).

    A piece has vertices in a face's plane only where its id is in that layer (a vertex lies on
    an edge between two voxels of the plane, one of them the id), so the bits cover every
    neighbour a piece can share vertices with, at the cost of a unique of six faces rather
    than a pass over the vertices."""
    out = np.zeros(len(ids), dtype=np.uint8)
    if not len(ids):
        return out
    wanted = np.asarray(ids, dtype=labels.dtype)
    for ax in range(3):
        layers = []
        if box.start[ax] > region.start[ax]:
            layers.append((box.start[ax] - ext.start[ax], _LOWER[ax]))
        if box.stop[ax] < region.stop[ax] and ext.stop[ax] > box.stop[ax]:
            layers.append((box.stop[ax] - ext.start[ax], _UPPER[ax]))
        for at, bit in layers:
            out[np.isin(wanted, _present(np.take(labels, at, axis=ax)),
                        assume_unique=True)] |= bit
    return out


def _present(face: np.ndarray) -> np.ndarray:
    """The ids in a face, sorted: the first of each run along its rows, then a unique of
    those (a segmentation's runs make that a few hundred values, not a face's worth)."""
    flat = face.ravel()
    if len(flat) < 2:
        return flat
    runs = np.flatnonzero(flat[1:] != flat[:-1])
    return np.unique(np.concatenate([flat[:1], flat[runs + 1]]))


def _neighbours(index: Vec, bits: int) -> list[Vec]:
    """The blocks a piece with ``touches`` bits may share vertices with (edges and corners
    of the faces it reaches included)."""
    steps = []
    for ax in range(3):
        s = [0]
        if bits & _LOWER[ax]:
            s.append(-1)
        if bits & _UPPER[ax]:
            s.append(1)
        steps.append(s)
    return [Vec(index[0] + a, index[1] + b, index[2] + c)
            for a, b, c in itertools.product(*steps) if (a, b, c) != (0, 0, 0)]


class Stitcher:
    """Collects the pieces of every segment as blocks arrive (:meth:`add`) and stitches each
    segment once no block it may continue into is outstanding; :meth:`finish` returns
    ``{id: Mesh}``.  ``finish_one(mesh)`` (e.g. simplification) runs on each stitched mesh."""

    def __init__(self, order: dict[Vec, int], region: Box, voxel_size: Sequence[float],
                 finish_one: Callable[[Mesh], Mesh] | None = None) -> None:
        self.order = order  # block index -> its place in the plan
        self.region, self.voxel_size, self.finish_one = region, voxel_size, finish_one
        self.arrived: set[Vec] = set()
        self.parts: dict[int, list[tuple[int, Box, Mesh]]] = {}
        self.need: dict[int, set[Vec]] = {}
        self.waiting: dict[Vec, set[int]] = {}
        self.done: dict[int, Mesh] = {}
        self.stitches = 0  # segments stitched, again ones included

    def add(self, index: Vec, box: Box, pieces: dict[int, Mesh], bits: np.ndarray) -> None:
        """One block's pieces (``bits`` from :func:`touches`, in the pieces' order)."""
        self.arrived.add(index)
        ready = set(self.waiting.pop(index, ()))
        for i in ready:
            self.need[i].discard(index)
        n = self.order[index]
        for (i, m), b in zip(pieces.items(), bits.tolist(), strict=True):
            self.parts.setdefault(i, []).append((n, box, m))
            self.done.pop(i, None)  # stitched before this piece came: again, with it
            need = self.need.setdefault(i, set())
            for nb in _neighbours(index, int(b)):
                if nb in self.order and nb not in self.arrived:
                    need.add(nb)
                    self.waiting.setdefault(nb, set()).add(i)
            ready.add(i)
        for i in ready:
            if not self.need[i] and i not in self.done:
                self._stitch(i)

    def _stitch(self, i: int) -> None:
        parts = self.parts[i]
        parts.sort(key=lambda p: p[0])  # block order: the same result every run
        m = parts[0][2] if len(parts) == 1 else stitch(
            [(bx, pm) for _, bx, pm in parts], self.voxel_size, i, self.region)
        self.done[i] = m if self.finish_one is None else self.finish_one(m)
        self.stitches += 1

    def finish(self) -> dict[int, Mesh]:
        """Every segment stitched (all blocks have arrived), in id order."""
        for i in self.parts:
            if i not in self.done:
                self._stitch(i)
        return {i: self.done[i] for i in sorted(self.done)}


def stitch(parts: list[tuple[Box, Mesh]], voxel_size: Sequence[float], ident: int,
           region: Box) -> Mesh:
    """Join one segment's block pieces (each with its block), merging the vertices they share.

    Two blocks share the vertices that lie in the voxel-centre plane of their border (each
    block meshes the cubes up to the first voxel of the next one), and only those: marching
    cubes puts one vertex on each cube edge.  So only vertices within a quarter voxel of a
    piece's inner faces are candidates; every vertex sits on a multiple of half a voxel, so a
    candidate's position in half voxels is an exact integer, and a 1-D unique of one integer
    key each merges the copies.  Vertices keep the order of their first occurrence.

    Every other vertex is kept, so a kept vertex's new number is its old one (in the pieces
    joined end to end) minus the copies dropped before it, and a dropped copy takes its first
    copy's: a piece with nothing dropped is copied and its faces shifted, the others go
    through a renumbering of their own vertices only.
    """
    vz, vy, vx = (float(v) for v in voxel_size)
    res = (vx, vy, vz)
    sizes = [len(m.vertices) for _, m in parts]
    starts = np.cumsum([0, *sizes])
    n = int(starts[-1])
    found, cands = [], []
    for (box, m), o in zip(parts, starts, strict=False):
        mask: np.ndarray | None = None
        for c, _ax, lo, hi in _candidate_bounds(box, region, res):
            col = m.vertices[:, c]
            if lo is not None:
                hit = col < lo
                mask = hit if mask is None else mask | hit
            if hi is not None:
                hit = col > hi
                mask = hit if mask is None else mask | hit
        if mask is not None:
            local = np.flatnonzero(mask)
            found.append(local + o)
            cands.append(m.vertices[local])
    drop = target = np.zeros(0, dtype=np.int64)  # dropped copies, ascending; their first copy
    idx = np.concatenate(found) if found else drop
    if len(idx):
        q = np.rint(np.concatenate(cands) / (np.array(res) / 2)).astype(np.int64)
        q -= q.min(axis=0)
        span = q.max(axis=0) + 1
        keys = (q[:, 2] * span[1] + q[:, 1]) * span[0] + q[:, 0]
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        rep = idx[first][inverse.reshape(-1)]  # each candidate -> its first copy
        dup = rep != idx
        drop, target = idx[dup], rep[dup]
    target_new = target - np.searchsorted(drop, target)  # first copies are never dropped
    vertices = np.empty((n - len(drop), 3), dtype=np.float32)
    faces = np.empty((sum(len(m.faces) for _, m in parts), 3), dtype=np.uint32)
    k = 0
    for (_, m), o, size in zip(parts, starts, sizes, strict=False):
        a, b = (int(v) for v in np.searchsorted(drop, [o, o + size]))
        base = int(o) - a  # the new number of this piece's first vertex
        out = faces[k:k + len(m.faces)]
        if a == b:
            np.add(m.faces, np.uint32(base), out=out)
            vertices[base:base + size] = m.vertices
        else:
            local = drop[a:b] - o
            keep = np.ones(size, dtype=bool)
            keep[local] = False
            new_index = np.cumsum(keep, dtype=np.int64)
            new_index += base - 1
            new_index[local] = target_new[a:b]
            # merged vertices are distinct positions, so no face collapses
            np.take(new_index.astype(np.uint32), m.faces, out=out)
            vertices[base:base + size - len(local)] = m.vertices[keep]
        k += len(m.faces)
    return Mesh._trusted(vertices, faces, ident)
