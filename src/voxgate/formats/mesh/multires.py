"""The Neuroglancer multi-resolution mesh format (``neuroglancer_multilod_draco``): the
``<id>.index`` octree manifest, the octree cut and simplification of a mesh into levels of
detail (:func:`encode_multires`) and reading one level back (:func:`decode_multires`)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...errors import CorruptChunkError, InvalidRequestError
from .core import Mesh
from .draco import _decode_draco, _encode_fragment

_IDENTITY = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
#: the smallest level-0 octree node of a multires mesh (longest side), in finest voxels
_MIN_NODE = 8


@dataclass
class _Manifest:
    chunk_shape: np.ndarray  # (3,) float64
    grid_origin: np.ndarray  # (3,)
    lod_scales: np.ndarray  # (L,)
    vertex_offsets: np.ndarray  # (L, 3)
    positions: list[np.ndarray]  # per lod (nf, 3) uint32
    sizes: list[np.ndarray]  # per lod (nf,) uint64

    @property
    def num_lods(self) -> int:
        return len(self.positions)

    def to_bytes(self) -> bytes:
        parts = [
            np.asarray(self.chunk_shape, "<f4").tobytes(),
            np.asarray(self.grid_origin, "<f4").tobytes(),
            struct.pack("<I", self.num_lods),
            np.asarray(self.lod_scales, "<f4").tobytes(),
            np.asarray(self.vertex_offsets, "<f4").reshape(self.num_lods, 3).tobytes(),
            np.asarray([len(p) for p in self.positions], "<u4").tobytes(),
        ]
        for pos, size in zip(self.positions, self.sizes, strict=True):
            parts.append(np.ascontiguousarray(np.asarray(pos).reshape(-1, 3).T, "<u4").tobytes())
            parts.append(np.asarray(size, "<u4").tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> _Manifest:
        def corrupt(why: str) -> CorruptChunkError:
            return CorruptChunkError(f"mesh manifest {name} {why}", chunk=name)

        if len(data) < 28:
            raise corrupt(f"holds {len(data)} bytes; its header alone needs 28")
        head = np.frombuffer(data, "<f4", count=6)
        (lods,) = struct.unpack_from("<I", data, 24)
        fixed = 28 + 20 * lods
        if lods == 0 or len(data) < fixed:
            raise corrupt(f"declares {lods} levels of detail, which need at least {fixed} bytes "
                          f"of header, but holds {len(data)}")
        at = 28
        lod_scales = np.frombuffer(data, "<f4", count=lods, offset=at).astype(np.float64)
        at += 4 * lods
        offsets = np.frombuffer(data, "<f4", count=3 * lods, offset=at).astype(np.float64)
        at += 12 * lods
        counts = np.frombuffer(data, "<u4", count=lods, offset=at).astype(np.int64)
        at += 4 * lods
        need = at + 16 * int(counts.sum())
        if len(data) != need:
            raise corrupt(f"lists {counts.sum()} fragments, so it must hold {need} bytes, but "
                          f"holds {len(data)}")
        positions, sizes = [], []
        for nf in counts.tolist():
            pos = np.frombuffer(data, "<u4", count=3 * nf, offset=at).reshape(3, nf).T
            at += 12 * nf
            positions.append(np.ascontiguousarray(pos))
            sizes.append(np.frombuffer(data, "<u4", count=nf, offset=at).astype(np.uint64))
            at += 4 * nf
        chunk = head[:3].astype(np.float64)
        if not (np.isfinite(head).all() and (chunk > 0).all()):
            raise corrupt(f"has chunk shape {chunk.tolist()} and grid origin "
                          f"{head[3:].tolist()}; the chunk shape must be positive")
        return cls(chunk, head[3:6].astype(np.float64), lod_scales, offsets.reshape(lods, 3),
                   positions, sizes)


def manifest_fragment_bytes(manifest: bytes, name: str = "manifest") -> int:
    """The total size of the fragments a multi-resolution manifest lists: in a sharded mesh
    directory, the bytes stored just before the manifest."""
    return int(sum(int(s.sum()) for s in _Manifest.from_bytes(manifest, name).sizes))


def _manifest_plain(data: bytes) -> bool:
    """Whether bytes that start like gzip are a valid manifest as they stand."""
    try:
        _Manifest.from_bytes(data, "manifest")
    except CorruptChunkError:
        return False
    return True


def _morton(pos: np.ndarray) -> np.ndarray:
    """Z-curve codes of (n, 3) x, y, z grid positions (x in the lowest bit of each triple)."""
    pos = pos.astype(np.uint64)
    code = np.zeros(len(pos), dtype=np.uint64)
    for bit in range(21):
        for axis in range(3):
            code |= ((pos[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit + axis)
    return code


def _cut(vertices: np.ndarray, faces: np.ndarray, cell: np.ndarray, origin: np.ndarray
         ) -> dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]]:
    """Split a mesh on a grid of ``cell``-sized boxes from ``origin``, clipping triangles.

    Every triangle that crosses a grid plane is cut along it (winding kept), so each piece
    lies inside one box.  A new vertex on an edge is computed from the edge's endpoints in a
    fixed order and shared by the triangles on both sides of the edge, so each piece stays a
    connected surface.  (zmesh's ``chunk_mesh`` leaves some triangles overhanging their box
    by a good part of it, which quantization would then squash.)
    """
    cell = np.asarray(cell, dtype=np.float64)
    origin = np.asarray(origin, dtype=np.float64)
    points = vertices.astype(np.float64)
    tris = faces.astype(np.int64)
    if not len(tris):
        return {}
    first = np.floor((points[tris[0, 0]] - origin) / cell)
    if (np.floor((points - origin) / cell) == first).all():  # all in one box: nothing to cut
        x, y, z = (max(int(k), 0) for k in first)
        return {(x, y, z): (vertices, faces)}
    n0 = len(points)
    grown = [points]
    for axis in range(3):
        while True:
            coord = np.concatenate(grown)[:, axis] if len(grown) > 1 else grown[0][:, axis]
            c = coord[tris]
            lo_cell = np.floor((c.min(axis=1) - origin[axis]) / cell[axis])
            # a triangle that only touches the plane above it does not cross it
            hi_cell = np.ceil((c.max(axis=1) - origin[axis]) / cell[axis]) - 1
            crossing = hi_cell > lo_cell
            if not crossing.any():
                break
            allpoints = np.concatenate(grown) if len(grown) > 1 else grown[0]
            grown = [allpoints]
            pieces, new = _split_plane(allpoints, tris[crossing], axis,
                                       origin[axis] + (lo_cell[crossing] + 1) * cell[axis],
                                       lo_cell[crossing].astype(np.int64) + 1)
            grown.append(new)
            tris = np.concatenate([tris[~crossing], pieces])
    points = np.concatenate(grown) if len(grown) > 1 else grown[0]
    if len(points) > n0:
        # a point made in two passes (from the two triangles of an edge) is one vertex
        uniq, inverse = np.unique(points[n0:], axis=0, return_inverse=True)
        remap = np.concatenate([np.arange(n0), n0 + inverse.reshape(-1)])
        tris = remap[tris]
        points = np.concatenate([points[:n0], uniq])
    centre = points[tris].mean(axis=1)
    keys = np.maximum(np.floor((centre - origin) / cell).astype(np.int64), 0)
    code = np.ravel_multi_index(tuple(keys.T), tuple(keys.max(axis=0) + 1)).astype(np.int64)
    order = np.argsort(code, kind="stable")
    code, keys, tris = code[order], keys[order], tris[order]
    n = len(points)
    # each box's own vertex numbering, for all boxes in one sort: (box, vertex) pairs
    pairs, local = np.unique(np.repeat(code, 3) * n + tris.reshape(-1), return_inverse=True)
    pair_box = pairs // n
    box_start = np.searchsorted(pair_box, pair_box, side="left")
    local = (local.reshape(-1) - box_start[local.reshape(-1)]).reshape(-1, 3)
    cuts = np.flatnonzero(np.diff(code)) + 1
    vcuts = np.flatnonzero(np.diff(pair_box)) + 1
    out: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
    for t0, t1, v0, v1 in zip([0, *cuts.tolist()], [*cuts.tolist(), len(tris)],
                              [0, *vcuts.tolist()], [*vcuts.tolist(), len(pairs)], strict=True):
        x, y, z = (int(k) for k in keys[t0])
        out[(x, y, z)] = (points[pairs[v0:v1] % n], local[t0:t1])
    return out


def _split_plane(points: np.ndarray, tris: np.ndarray, axis: int, plane: np.ndarray,
                 plane_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut each triangle (vertex indices into ``points``) by its own plane along ``axis``.

    Returns the pieces (indices) and the new points they use, numbered from ``len(points)``.
    """
    c = points[:, axis][tris]
    side = np.sign(c - plane[:, None]).astype(np.int64)  # -1 below, 0 on, +1 above

    def rotate(rows: np.ndarray, first: np.ndarray) -> np.ndarray:
        # a cyclic rotation keeps the winding
        return np.take_along_axis(rows, (first[:, None] + np.arange(3)) % 3, axis=1)

    # every cut edge, as (lower endpoint, upper endpoint, plane): an edge cut by the same
    # plane from both of its triangles gets one new point
    ends_a: list[np.ndarray] = []
    ends_b: list[np.ndarray] = []
    planes: list[np.ndarray] = []
    on = side == 0
    one_on = on.sum(axis=1) == 1
    t1 = rotate(tris[one_on], np.argmax(on[one_on], axis=1))
    ends_a.append(t1[:, 1])
    ends_b.append(t1[:, 2])
    planes.append(plane_index[one_on])
    rest = ~one_on
    s = side[rest]
    lone = np.where((s == 1).sum(axis=1) == 1, np.argmax(s == 1, axis=1),
                    np.argmax(s == -1, axis=1))
    t2 = rotate(tris[rest], lone)
    ends_a += [t2[:, 0], t2[:, 0]]
    ends_b += [t2[:, 1], t2[:, 2]]
    planes += [plane_index[rest], plane_index[rest]]
    a, b, k = np.concatenate(ends_a), np.concatenate(ends_b), np.concatenate(planes)
    swap = points[a, axis] > points[b, axis]
    lo, hi = np.where(swap, b, a), np.where(swap, a, b)
    keys, inverse = np.unique(np.stack([lo, hi, k], axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    plo, phi = points[keys[:, 0]], points[keys[:, 1]]
    at = np.concatenate(
        [plane[one_on], plane[rest], plane[rest]])[np.unique(inverse, return_index=True)[1]]
    t = (at - plo[:, axis]) / (phi[:, axis] - plo[:, axis])
    new = plo + t[:, None] * (phi - plo)
    new[:, axis] = at
    index = len(points) + inverse
    n1, n2 = len(t1), len(t2)
    r = index[:n1]
    p, q = index[n1:n1 + n2], index[n1 + n2:]
    o, x, y = t1[:, 0], t1[:, 1], t1[:, 2]
    lv, va, vb = t2[:, 0], t2[:, 1], t2[:, 2]
    pieces = np.concatenate([
        np.stack([o, x, r], axis=1), np.stack([o, r, y], axis=1),
        np.stack([lv, p, q], axis=1), np.stack([p, va, vb], axis=1), np.stack([p, vb, q], axis=1),
    ])
    return pieces, new


def _used(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """The vertices some face uses, as float64."""
    return np.asarray(vertices, np.float64)[np.unique(faces)]


def _simplify(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """About a quarter of the triangles (one level of detail coarser), by zmesh's fqmr."""
    import zmesh

    target = max(len(faces) // 4, 4)
    if len(faces) <= target:
        return vertices, faces
    zm = zmesh.Mesh(np.ascontiguousarray(vertices, np.float32),
                    np.ascontiguousarray(faces, np.uint32), None)
    out = zmesh.simplify_fqmr(zm, target)
    if len(out.faces) == 0:
        return vertices, faces
    return out.vertices, out.faces



def encode_multires(
    mesh: Mesh, *, lods: int = 1, vertex_quantization_bits: int = 16, lod_scale: float = 1.0
) -> tuple[bytes, bytes]:
    """One segment's ``(<id>.index manifest, <id> fragment data)`` in the multi-resolution format.

    The vertices are taken as stored-model coordinates (nm under the identity transform,
    which every directory voxgate creates has; :func:`write_meshes` moves them into another
    directory's stored frame first), and so are the grid origin, chunk shape and
    ``lod_scale``.  The octree's top level is one node covering the whole mesh; level 0 has up to
    ``2**(lods-1)`` nodes per axis (fewer levels are written for a mesh too small for
    level-0 nodes of 8 voxels, taking ``lod_scale`` as the voxel size).  Each coarser level
    is the previous one simplified to about a quarter of its triangles and cut on the finer
    level's grid, so no triangle crosses a child's boundary; every node with content has its
    parent listed (empty if need be), and fragments are in Z-curve order.  ``lod_scale`` is
    the level-0 scale (about the vertex spacing, in stored units); level ``L`` gets
    ``lod_scale * 2**L``.
    """
    bits = vertex_quantization_bits
    qmax = float(2**bits - 1)
    name = f"mesh {mesh.id}" if mesh.id is not None else "mesh"
    if mesh.is_empty:
        empty = _Manifest(np.ones(3), np.zeros(3), np.asarray([lod_scale]), np.zeros((1, 3)),
                          [np.zeros((0, 3), np.uint32)], [np.zeros(0, np.uint64)])
        return empty.to_bytes(), b""
    levels = [(mesh.vertices, mesh.faces)]
    for _ in range(1, lods):
        levels.append(_simplify(*levels[-1]))
    while True:
        # the grid covers every level's vertices, not only level 0's: simplification puts a
        # collapsed edge's vertex where the quadric error is least, which can be outside the
        # original bounds (past a convex corner), and a vertex outside its node would be
        # clamped to the node's side when quantized
        lo = np.min([_used(v, f).min(axis=0) for v, f in levels[:lods]], axis=0)
        hi = np.max([_used(v, f).max(axis=0) for v, f in levels[:lods]], axis=0)
        origin = np.floor(lo).astype(np.float32).astype(np.float64)
        origin = np.where(origin > lo,
                          np.nextafter(origin.astype(np.float32), np.float32(-np.inf)),
                          origin).astype(np.float64)
        # no more levels than keep level-0 nodes _MIN_NODE voxels long: finer nodes would
        # only split a small mesh into many tiny fragments
        if lods > 1 and (hi - origin).max() / 2 ** (lods - 1) < _MIN_NODE * lod_scale:
            lods -= 1
            continue
        break
    levels = levels[:lods]
    top = 2 ** (lods - 1)
    # whole stored units (nm, or voxels under a voxel-size transform), so chunk_shape is exact
    # in float32; chunk * top > extent strictly, so every vertex lies inside the top node
    chunk = np.floor((hi - origin) / top) + 1.0

    nodes: list[dict[tuple[int, int, int], list[tuple[np.ndarray, np.ndarray]]]] = []
    for lod in range(lods):
        v, f = levels[lod]
        if lod == 0:
            level: dict[tuple[int, int, int], list[tuple[np.ndarray, np.ndarray]]] = {
                k: [p] for k, p in _cut(v, f, chunk, origin).items()
            }
        else:
            # cut on the finer grid and group the pieces by parent: no triangle of a node
            # crosses the boundary between two of its children
            level = {}
            for (x, y, z), piece in _cut(v, f, chunk * 2 ** (lod - 1), origin).items():
                level.setdefault((x >> 1, y >> 1, z >> 1), []).append(piece)
            for (x, y, z) in nodes[-1]:
                level.setdefault((x >> 1, y >> 1, z >> 1), [])  # every child needs a parent
        nodes.append(level)

    positions, sizes, blobs = [], [], []
    for lod, level in enumerate(nodes):
        keys = np.asarray(sorted(level), dtype=np.int64).reshape(-1, 3)
        keys = keys[np.argsort(_morton(keys), kind="stable")]
        size = np.zeros(len(keys), dtype=np.uint64)
        node = chunk * 2**lod
        for i, key in enumerate(keys):
            x, y, z = (int(k) for k in key)
            pieces = level[(x, y, z)]
            if not pieces:
                continue
            offs = np.cumsum([0, *(len(p[0]) for p in pieces[:-1])])
            v = np.concatenate([p[0] for p in pieces]).astype(np.float64)
            f = np.concatenate([p[1].astype(np.int64) + o for p, o in zip(pieces, offs,
                                                                          strict=True)])
            rel = (v - origin - node * key) / node
            q = np.clip(np.rint(rel * qmax), 0, qmax)
            blob = _encode_fragment(q, f, f"{name} lod {lod} fragment {key.tolist()}")
            size[i] = len(blob)
            blobs.append(blob)
        positions.append(keys.astype(np.uint32))
        sizes.append(size)
    manifest = _Manifest(chunk, origin, lod_scale * 2.0 ** np.arange(lods), np.zeros((lods, 3)),
                         positions, sizes)
    return manifest.to_bytes(), b"".join(blobs)


def decode_multires(
    manifest: bytes, data: bytes, *, lod: int = 0, vertex_quantization_bits: int,
    transform: Sequence[float] | None = None, id: int | None = None, name: str = "mesh",
    data_offset: int = 0,
) -> Mesh:
    """One level of detail of a multi-resolution mesh, in nm (fragments concatenated).

    ``data`` holds the fragment data from byte ``data_offset`` of the ``<id>`` file on (the
    whole file when 0).
    """
    m = _Manifest.from_bytes(manifest, f"{name}.index")
    if not 0 <= lod < m.num_lods:
        raise InvalidRequestError(f"{name} has levels of detail 0..{m.num_lods - 1}, not {lod}")
    qmax = float(2**vertex_quantization_bits - 1)
    start = int(sum(int(s.sum()) for s in m.sizes[:lod]))
    total = start + int(m.sizes[lod].sum())
    if data_offset + len(data) < total:
        raise CorruptChunkError(
            f"mesh fragment file {name} holds {data_offset + len(data)} bytes; its manifest "
            f"needs {total} for levels of detail 0..{lod}", chunk=name,
        )
    node = m.chunk_shape * 2**lod
    meshes = []
    at = start - data_offset
    for key, size in zip(m.positions[lod], m.sizes[lod].tolist(), strict=True):
        blob = data[at:at + int(size)]
        at += int(size)
        if not size:
            continue
        points, faces = _decode_draco(blob, f"{name} lod {lod} fragment {key.tolist()}")
        xyz = m.grid_origin + m.vertex_offsets[lod] + node * (key + points / qmax)
        meshes.append((xyz, faces))
    if meshes:
        offs = np.cumsum([0] + [len(p) for p, _ in meshes[:-1]])
        xyz = np.concatenate([p for p, _ in meshes])
        faces = np.concatenate([f + o for (_, f), o in zip(meshes, offs, strict=True)])
    else:
        xyz, faces = np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    xyz = _apply_transform(xyz, transform)
    try:
        return Mesh(xyz, faces, id)
    except InvalidRequestError as exc:
        raise CorruptChunkError(f"{name} is not a valid mesh: {exc}", chunk=name) from None


def _apply_transform(xyz: np.ndarray, transform: Sequence[float] | None) -> np.ndarray:
    if transform is None or list(transform) == _IDENTITY:
        return xyz
    mat = _transform_matrix(transform, "transform")
    return xyz @ mat[:, :3].T + mat[:, 3]


def _transform_matrix(transform: object, where: str) -> np.ndarray:
    try:
        mat = np.asarray(transform, dtype=np.float64).reshape(3, 4)
    except (TypeError, ValueError):
        raise InvalidRequestError(
            f"{where} must be 12 numbers (a 3x4 row-major matrix), got {transform!r}"
        ) from None
    return mat
