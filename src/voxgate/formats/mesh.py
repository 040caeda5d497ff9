"""Triangle meshes and the files they are stored in.

:class:`Mesh` holds float32 vertices in nanometres (x, y, z, the order every mesh format uses)
and uint32 triangles, and converts to and from:

- Wavefront OBJ (text) and binary little-endian PLY;
- the Neuroglancer precomputed *legacy* fragment (``u32 n; f32 xyz[n]; u32 faces[]``), which
  is also DVID's ``.ngmesh`` keyvalue value;
- Neuroglancer precomputed mesh directories (:func:`write_meshes`, :func:`read_meshes`), in
  the legacy format (a ``<id>:0`` JSON manifest naming fragment files) and the
  multi-resolution format (``neuroglancer_multilod_draco``: an ``<id>.index`` octree
  manifest and an ``<id>`` file of Draco-encoded fragments).

Everything that decodes stored bytes checks lengths and indices before following them: a
damaged file raises :class:`CorruptChunkError` naming it.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    RemoteNotFoundError,
    VoxgateError,
)
from ..storage import UNITS_NM, Directory, join
from ._common import float_rows, index_rows, segment_id
from .layer import check_dir_name, open_layer, read_info

__all__ = [
    "LEGACY_MESH_TYPE",
    "MULTIRES_MESH_TYPE",
    "Mesh",
    "concatenate",
    "read_meshes",
    "write_meshes",
]

LEGACY_MESH_TYPE = "neuroglancer_legacy_mesh"
MULTIRES_MESH_TYPE = "neuroglancer_multilod_draco"
_IDENTITY = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
_LEGACY_MANIFEST = re.compile(r"^(\d+):0$")
_MULTIRES_MANIFEST = re.compile(r"^(\d+)\.index$")
#: Draco compression effort for multi-resolution fragments (0 fastest .. 10 smallest)
_DRACO_LEVEL = 7
#: the smallest level-0 octree node of a multires mesh (longest side), in finest voxels
_MIN_NODE = 8
#: segments encoded and written together by write_meshes
_WRITE_BATCH = 64


@dataclass(eq=False)
class Mesh:
    """A triangle mesh: ``vertices`` float32 (n, 3) x, y, z in nm; ``faces`` uint32 (m, 3).

    ``normals`` (optional) are float32 (n, 3), one per vertex.  Inputs are checked and
    converted (any real dtype to float32, any integer dtype to uint32); an array of the wrong
    shape or kind, a face index out of range or a non-finite coordinate raises
    :class:`InvalidRequestError`.  ``len(mesh)`` is the number of vertices, as in CloudVolume
    and zmesh.
    """

    vertices: np.ndarray
    faces: np.ndarray
    id: int | None = None
    normals: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.vertices = float_rows(self.vertices, "vertices", 3)
        n = len(self.vertices)
        self.faces = index_rows(self.faces, "faces", 3, n, "vertices")
        if self.id is not None:
            self.id = segment_id(self.id, "mesh id")
        if self.normals is not None:
            self.normals = float_rows(self.normals, "normals", 3)
            if len(self.normals) != n:
                raise InvalidRequestError(
                    f"normals has {len(self.normals)} rows; there must be one per vertex ({n})"
                )

    # -- basics ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def is_empty(self) -> bool:
        return self.num_faces == 0

    def __repr__(self) -> str:
        normals = ", normals" if self.normals is not None else ""
        return f"Mesh(id={self.id}, {self.num_vertices} vertices, {self.num_faces} faces{normals})"

    def __eq__(self, other: object) -> bool:
        """The same id, and exactly the same vertices, faces (in order) and normals."""
        if not isinstance(other, Mesh):
            return NotImplemented
        if (self.normals is None) != (other.normals is None):
            return False
        return (
            self.id == other.id
            and np.array_equal(self.vertices, other.vertices)
            and np.array_equal(self.faces, other.faces)
            and (self.normals is None or other.normals is None
                 or np.array_equal(self.normals, other.normals))
        )

    __hash__ = None  # type: ignore[assignment]  # mutable arrays

    def copy(self) -> Mesh:
        return Mesh(
            self.vertices.copy(), self.faces.copy(), self.id,
            None if self.normals is None else self.normals.copy(),
        )

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(min x y z, max x y z) of the vertices in nm; an empty mesh has no bounds."""
        if self.num_vertices == 0:
            raise InvalidRequestError(f"{self!r} has no vertices, so it has no bounds")
        return self.vertices.min(axis=0), self.vertices.max(axis=0)

    def triangles(self) -> np.ndarray:
        """The corner positions of every face, float32 (m, 3, 3)."""
        return self.vertices[self.faces]

    def surface_area(self) -> float:
        """Total triangle area in nm² (a quick way to compare meshes made differently)."""
        t = self.triangles().astype(np.float64)
        cross = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
        return float(0.5 * np.linalg.norm(cross, axis=1).sum())

    # -- combining and cleaning -----------------------------------------------------------------
    @staticmethod
    def concatenate(meshes: Iterable[Mesh], *, id: int | None = None) -> Mesh:
        """One mesh holding all of ``meshes`` (vertices are not merged; see ``deduplicate``).

        The result's id is ``id``, or the meshes' common id when they share one.  Normals are
        kept only when every mesh has them.
        """
        items = list(meshes)
        for m in items:
            if not isinstance(m, Mesh):
                raise InvalidRequestError(f"concatenate takes Mesh objects, got {type(m).__name__}")
        if id is None:
            ids = {m.id for m in items}
            id = ids.pop() if len(ids) == 1 else None
        if not items:
            return Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32), id)
        offsets = np.cumsum([0] + [m.num_vertices for m in items[:-1]])
        vertices = np.concatenate([m.vertices for m in items])
        faces = np.concatenate(
            [m.faces.astype(np.uint64) + np.uint64(o) for m, o in zip(items, offsets, strict=True)]
        )
        if len(vertices) > 2**32:
            raise InvalidRequestError("the concatenated mesh has more than 2**32 vertices")
        normals = None
        if all(m.normals is not None for m in items):
            normals = np.concatenate([m.normals for m in items if m.normals is not None])
        return Mesh(vertices, faces.astype(np.uint32), id, normals)

    def deduplicate(self, decimals: int = 3) -> Mesh:
        """Merge vertices at equal positions and drop degenerate and repeated faces.

        Positions are compared after rounding to ``decimals`` digits of a nanometre, so the
        pieces of a mesh made block by block, whose border vertices were computed in the same
        global frame, join into one surface with no doubled triangles.  A merged vertex keeps
        the exact position (and normal) of its first occurrence, and vertices keep their
        order of first occurrence.  A face is degenerate when two of its corners merged; two
        faces repeat each other when they have the same corners in the same winding (faces
        with opposite winding are different surfaces and both stay).  Vertices that no face
        uses any more are removed.

        Rounding is to a fixed grid: two copies of a vertex that differ by float noise across
        a rounding boundary stay apart, so compute block-wise vertices the same way in every
        block rather than relying on a coarse ``decimals``.
        """
        if isinstance(decimals, bool) or not isinstance(decimals, int):
            raise InvalidRequestError(f"decimals must be an integer, got {decimals!r}")
        if self.num_vertices == 0:
            return self.copy()
        key = np.round(self.vertices.astype(np.float64), decimals)
        key += 0.0  # -0.0 and 0.0 are the same position
        _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        keep_vertex = first[order]
        faces = rank[inverse][self.faces.astype(np.int64)] if self.num_faces else np.zeros(
            (0, 3), np.int64)
        a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
        faces = faces[(a != b) & (b != c) & (a != c)]
        if len(faces):
            # the same triangle with the same winding, whichever corner it starts from
            start = np.argmin(faces, axis=1)
            roll = (start[:, None] + np.arange(3)) % 3
            canon = np.take_along_axis(faces, roll, axis=1)
            _, firsts = np.unique(canon, axis=0, return_index=True)
            faces = faces[np.sort(firsts)]
        vertices = self.vertices[keep_vertex]
        normals = None if self.normals is None else self.normals[keep_vertex]
        used = np.zeros(len(vertices), dtype=bool)
        used[faces.reshape(-1)] = True
        if not used.all():
            remap = np.cumsum(used) - 1
            faces = remap[faces]
            vertices = vertices[used]
            normals = None if normals is None else normals[used]
        return Mesh(vertices, faces.astype(np.uint32), self.id, normals)

    # -- OBJ ------------------------------------------------------------------------------------
    def to_obj(self) -> str:
        """Wavefront OBJ text: ``v`` lines (nm, float32-exact), ``vn`` lines, 1-based ``f``."""
        head = f"# voxgate mesh{'' if self.id is None else f' {self.id}'}: " \
            f"{self.num_vertices} vertices, {self.num_faces} faces, nanometres\n"
        parts = [head]
        # %.9g prints every float32 exactly, so the text reads back to the same mesh
        parts.append(("v %.9g %.9g %.9g\n" * self.num_vertices)
                     % tuple(self.vertices.astype(np.float64).ravel().tolist()))
        if self.normals is not None:
            parts.append(("vn %.9g %.9g %.9g\n" * self.num_vertices)
                         % tuple(self.normals.astype(np.float64).ravel().tolist()))
            row = "f %d//%d %d//%d %d//%d\n"
            idx = np.repeat(self.faces.astype(np.int64) + 1, 2, axis=1)
        else:
            row = "f %d %d %d\n"
            idx = self.faces.astype(np.int64) + 1
        parts.append((row * self.num_faces) % tuple(idx.ravel().tolist()))
        return "".join(parts)

    @classmethod
    def from_obj(cls, text: str | bytes, id: int | None = None) -> Mesh:
        """A mesh from Wavefront OBJ text (``v``, ``vn`` and ``f`` lines; other lines ignored).

        Faces may use ``v``, ``v/vt``, ``v/vt/vn`` and ``v//vn`` references, negative
        (relative) indices and polygons, which are split into triangle fans.  Normals are
        kept when every face corner uses the normal with its vertex's index (as ``to_obj``
        writes them).
        """
        if isinstance(text, (bytes, bytearray, memoryview)):
            text = bytes(text).decode("utf-8", errors="replace")
        if not isinstance(text, str):
            raise InvalidRequestError(f"from_obj takes OBJ text, got {type(text).__name__}")
        vertices: list[list[float]] = []
        normals: list[list[float]] = []
        faces: list[tuple[int, int, int]] = []
        normals_match = True

        def resolve(token: str, count: int, lineno: int, what: str) -> int:
            try:
                i = int(token)
            except ValueError:
                raise InvalidRequestError(
                    f"OBJ line {lineno}: {token!r} is not a {what} index"
                ) from None
            j = i - 1 if i > 0 else count + i
            if i == 0 or not 0 <= j < count:
                raise InvalidRequestError(
                    f"OBJ line {lineno}: {what} index {i} is out of range ({count} defined "
                    "so far)"
                )
            return j

        for lineno, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            tag = fields[0]
            if tag in ("v", "vn"):
                try:
                    xyz = [float(f) for f in fields[1:4]]
                except ValueError:
                    raise InvalidRequestError(
                        f"OBJ line {lineno}: {line.strip()!r} does not hold three numbers"
                    ) from None
                if len(xyz) != 3:
                    raise InvalidRequestError(
                        f"OBJ line {lineno}: {line.strip()!r} does not hold three numbers"
                    )
                (vertices if tag == "v" else normals).append(xyz)
            elif tag == "f":
                corners = []
                for ref in fields[1:]:
                    parts = ref.split("/")
                    v = resolve(parts[0], len(vertices), lineno, "vertex")
                    if len(parts) >= 3 and parts[2]:
                        n = resolve(parts[2], len(normals), lineno, "normal")
                        normals_match = normals_match and n == v
                    else:
                        normals_match = False
                    corners.append(v)
                if len(corners) < 3:
                    raise InvalidRequestError(
                        f"OBJ line {lineno}: a face needs at least 3 vertices, got {len(corners)}"
                    )
                for k in range(1, len(corners) - 1):
                    faces.append((corners[0], corners[k], corners[k + 1]))
        keep_normals = normals_match and bool(faces) and len(normals) == len(vertices)
        return cls(
            np.asarray(vertices, dtype=np.float64).reshape(-1, 3),
            np.asarray(faces, dtype=np.int64).reshape(-1, 3),
            id,
            np.asarray(normals, dtype=np.float32) if keep_normals else None,
        )

    # -- PLY ------------------------------------------------------------------------------------
    def to_ply(self) -> bytes:
        """Binary little-endian PLY: float x y z (and nx ny nz), ``list uchar uint`` faces."""
        props = ["x", "y", "z"] + (["nx", "ny", "nz"] if self.normals is not None else [])
        head = ["ply", "format binary_little_endian 1.0"]
        head.append(f"comment voxgate mesh{'' if self.id is None else f' {self.id}'}, nanometres")
        head.append(f"element vertex {self.num_vertices}")
        head += [f"property float {p}" for p in props]
        head.append(f"element face {self.num_faces}")
        head.append("property list uchar uint vertex_indices")
        head.append("end_header")
        vdt = np.dtype([(p, "<f4") for p in props])
        verts = np.empty(self.num_vertices, dtype=vdt)
        for i, p in enumerate(props[:3]):
            verts[p] = self.vertices[:, i]
        if self.normals is not None:
            for i, p in enumerate(props[3:]):
                verts[p] = self.normals[:, i]
        fdt = np.dtype([("n", "u1"), ("v", "<u4", (3,))])
        faces = np.empty(self.num_faces, dtype=fdt)
        faces["n"] = 3
        faces["v"] = self.faces
        return ("\n".join(head) + "\n").encode("ascii") + verts.tobytes() + faces.tobytes()

    @classmethod
    def from_ply(cls, data: bytes, id: int | None = None) -> Mesh:
        """A mesh from PLY bytes (ascii or binary; vertex x y z [nx ny nz]; face index lists)."""
        return _read_ply(bytes(data), id)

    # -- precomputed legacy fragment / DVID .ngmesh ---------------------------------------------
    def to_precomputed(self) -> bytes:
        """The legacy precomputed fragment: ``u32 n; f32 xyz[n]; u32 faces[m][3]``, LE."""
        return (
            struct.pack("<I", self.num_vertices)
            + self.vertices.astype("<f4", copy=False).tobytes()
            + self.faces.astype("<u4", copy=False).tobytes()
        )

    @classmethod
    def from_precomputed(
        cls, data: bytes | bytearray | memoryview, id: int | None = None, *, name: str | None = None
    ) -> Mesh:
        """Decode a legacy fragment; ``name`` (a path or key) is used in error messages."""
        return _decode_legacy(bytes(data), id, name or "mesh fragment")

    def to_ngmesh(self) -> bytes:
        """DVID's ``.ngmesh`` keyvalue value: the legacy precomputed fragment binary."""
        return self.to_precomputed()

    @classmethod
    def from_ngmesh(
        cls, data: bytes | bytearray | memoryview, id: int | None = None, *, name: str | None = None
    ) -> Mesh:
        return cls.from_precomputed(data, id, name=name or "ngmesh")

    @classmethod
    def from_draco(cls, data: bytes, id: int | None = None, *, name: str | None = None) -> Mesh:
        """Decode one Draco-encoded mesh (positions as stored, dequantized by Draco)."""
        points, faces = _decode_draco(bytes(data), name or "draco mesh")
        return cls(points, faces, id)


def concatenate(meshes: Iterable[Mesh], *, id: int | None = None) -> Mesh:
    """Module-level alias of :meth:`Mesh.concatenate`."""
    return Mesh.concatenate(meshes, id=id)


# -- codecs --------------------------------------------------------------------------------------
def _decode_legacy(data: bytes, id: int | None, name: str) -> Mesh:
    if len(data) < 4:
        raise CorruptChunkError(
            f"{name} holds {len(data)} bytes; a legacy mesh fragment starts with a 4-byte "
            "vertex count", chunk=name,
        )
    (n,) = struct.unpack_from("<I", data)
    need = 4 + 12 * n
    if len(data) < need:
        raise CorruptChunkError(
            f"{name} declares {n} vertices, which need {need} bytes, but holds {len(data)}",
            chunk=name,
        )
    if (len(data) - need) % 12:
        raise CorruptChunkError(
            f"{name}: the {len(data) - need} bytes after the {n} vertices are not whole "
            "triangles (12 bytes each); the fragment is truncated or not a mesh", chunk=name,
        )
    vertices = np.frombuffer(data, dtype="<f4", count=3 * n, offset=4).reshape(n, 3)
    faces = np.frombuffer(data, dtype="<u4", offset=need).reshape(-1, 3)
    try:
        return Mesh(vertices.astype(np.float32), faces.astype(np.uint32), id)
    except InvalidRequestError as exc:
        raise CorruptChunkError(f"{name} is not a valid mesh: {exc}", chunk=name) from None


def _legacy_plain(data: bytes) -> bool:
    """Whether bytes that start like gzip are a complete legacy fragment as they stand."""
    if len(data) < 4:
        return False
    (n,) = struct.unpack_from("<I", data)
    need = 4 + 12 * n
    return len(data) >= need and (len(data) - need) % 12 == 0


def _decode_draco(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    import DracoPy

    try:
        decoded = DracoPy.decode(data)
    except Exception as exc:  # DracoPy raises ValueError, FileTypeException, RuntimeError
        raise CorruptChunkError(f"{name} is not a valid Draco mesh: {exc}", chunk=name) from None
    faces = getattr(decoded, "faces", None)
    if faces is None:
        raise CorruptChunkError(f"{name} is a Draco point cloud, not a mesh", chunk=name)
    try:
        points = np.asarray(decoded.points, dtype=np.float64)
        tris = np.asarray(faces, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise CorruptChunkError(f"{name} holds unreadable Draco attributes: {exc}",
                                chunk=name) from None
    if points.size == 0:
        points = points.reshape(0, 3)
    if points.ndim != 2 or points.shape[1] != 3:
        raise CorruptChunkError(
            f"{name} holds positions of shape {points.shape}; a mesh needs (n, 3) x, y, z",
            chunk=name)
    if tris.size % 3:
        raise CorruptChunkError(
            f"{name} holds {tris.size} face indices, not whole triangles", chunk=name)
    return points, tris.reshape(-1, 3)


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def _read_ply(data: bytes, id: int | None) -> Mesh:
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise InvalidRequestError("not a PLY file: it must start with 'ply' and have an end_header")
    nl = data.find(b"\n", end)
    body = data[nl + 1:] if nl >= 0 else b""
    fmt = ""
    elements: list[tuple[str, int, list[tuple[str, str, str | None]]]] = []
    for raw in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        f = raw.split()
        if not f or f[0] in ("comment", "obj_info"):
            continue
        try:
            if f[0] == "format":
                fmt = f[1]
            elif f[0] == "element":
                if int(f[2]) < 0 or any(e[0] == f[1] for e in elements):
                    raise ValueError("a negative count or a repeated element")
                elements.append((f[1], int(f[2]), []))
            elif f[0] == "property":
                prop: tuple[str, str, str | None]
                if f[1] == "list":
                    prop = (f[4], _PLY_TYPES[f[3]], _PLY_TYPES[f[2]])
                    if np.dtype(prop[2]).kind not in "iu":
                        raise ValueError("a list length must be an integer type")
                else:
                    prop = (f[2], _PLY_TYPES[f[1]], None)
                if any(p[0] == prop[0] for p in elements[-1][2]):
                    raise ValueError("a repeated property")
                elements[-1][2].append(prop)
        except (IndexError, KeyError, ValueError):
            raise InvalidRequestError(f"PLY header line {raw!r} is not understood") from None
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise InvalidRequestError(f"PLY format {fmt!r} is not ascii or binary")
    order = ">" if fmt == "binary_big_endian" else "<"
    columns: dict[str, dict[str, np.ndarray]] = {}
    lists: dict[str, list[np.ndarray]] = {}
    if fmt == "ascii":
        tokens = body.split()
        pos = 0
        try:
            for ename, count, props in elements:
                cols: dict[str, list[float]] = {p[0]: [] for p in props if p[2] is None}
                rows: list[np.ndarray] = []
                for _ in range(count):
                    for pname, _t, ltype in props:
                        if ltype is None:
                            cols[pname].append(float(tokens[pos]))
                            pos += 1
                        else:
                            k = int(tokens[pos])
                            rows.append(np.asarray([int(t) for t in tokens[pos + 1:pos + 1 + k]]))
                            pos += 1 + k
                columns[ename] = {k: np.asarray(v) for k, v in cols.items()}
                lists[ename] = rows
        except (IndexError, ValueError):
            raise InvalidRequestError("PLY body is shorter than its header says or not numbers"
                                      ) from None
    else:
        pos = 0
        for ename, count, props in elements:
            if all(p[2] is None for p in props):
                dt = np.dtype([(p, order + t) for p, t, _ in props])
                if pos + dt.itemsize * count > len(body):
                    raise InvalidRequestError(f"PLY body ends inside element {ename!r}")
                arr = np.frombuffer(body, dtype=dt, count=count, offset=pos)
                pos += dt.itemsize * count
                columns[ename] = {p: arr[p] for p, _, _ in props}
                continue
            cols2: dict[str, list[float]] = {p[0]: [] for p in props if p[2] is None}
            rows2: list[np.ndarray] = []
            # the common case, one list of triangles: read every row at once, then check
            if len(props) == 1 and count:
                _, t, lt = props[0]
                dt = np.dtype([("n", order + lt), ("v", order + t, (3,))])  # type: ignore[operator]
                if pos + dt.itemsize * count <= len(body):
                    arr = np.frombuffer(body, dtype=dt, count=count, offset=pos)
                    if (arr["n"] == 3).all():
                        pos += dt.itemsize * count
                        columns[ename] = {}
                        lists[ename] = [arr["v"]]
                        continue
            try:
                for _ in range(count):
                    for pname, t, lt in props:
                        if lt is None:
                            (v,) = np.frombuffer(body, dtype=order + t, count=1, offset=pos)
                            cols2[pname].append(float(v))
                            pos += np.dtype(t).itemsize
                        else:
                            (k,) = np.frombuffer(body, dtype=order + lt, count=1, offset=pos)
                            if k < 0:
                                raise ValueError(f"a list of {k} items")
                            pos += np.dtype(lt).itemsize
                            rows2.append(np.frombuffer(body, dtype=order + t, count=int(k),
                                                       offset=pos))
                            pos += np.dtype(t).itemsize * int(k)
            except ValueError:
                raise InvalidRequestError(f"PLY body ends inside element {ename!r}") from None
            columns[ename] = {k: np.asarray(v) for k, v in cols2.items()}
            lists[ename] = rows2
    vcols = columns.get("vertex", {})
    if not all(k in vcols for k in ("x", "y", "z")):
        raise InvalidRequestError("PLY file has no vertex element with x, y and z")
    vertices = np.stack([vcols["x"], vcols["y"], vcols["z"]], axis=1).astype(np.float64)
    normals = None
    if all(k in vcols for k in ("nx", "ny", "nz")):
        normals = np.stack([vcols["nx"], vcols["ny"], vcols["nz"]], axis=1)
    tris: list[np.ndarray] = []
    for row in lists.get("face", []):
        if np.asarray(row).dtype.kind not in "iu":
            raise InvalidRequestError("PLY face vertex indices must be integers")
        row = np.asarray(row, dtype=np.int64)
        if row.ndim == 2:  # the fast path: already triangles
            tris.append(row)
        elif len(row) >= 3:
            fan = np.stack([np.full(len(row) - 2, row[0]), row[1:-1], row[2:]], axis=1)
            tris.append(fan)
    faces = np.concatenate(tris) if tris else np.zeros((0, 3), np.int64)
    return Mesh(vertices, faces, id, normals)


# -- multi-resolution (neuroglancer_multilod_draco) ----------------------------------------------
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


def _encode_fragment(q: np.ndarray, faces: np.ndarray, name: str) -> bytes:
    import DracoPy

    try:
        # quantization off: the integer positions are stored as they are (as int32, the
        # integer type Neuroglancer's decoder accepts)
        return bytes(DracoPy.encode(q.astype(np.int32), faces.astype(np.uint32),
                                    quantization_bits=0, compression_level=_DRACO_LEVEL))
    except DracoPy.EncodingFailedException:
        # every triangle collapsed when quantized: nothing visible to store
        return b""
    except Exception as exc:
        raise VoxgateError(f"Draco could not encode {name}: {exc}") from exc


def encode_multires(
    mesh: Mesh, *, lods: int = 1, vertex_quantization_bits: int = 16, lod_scale: float = 1.0
) -> tuple[bytes, bytes]:
    """One segment's ``(<id>.index manifest, <id> fragment data)`` in the multi-resolution format.

    Stored-model coordinates are nanometres (the info's transform is the identity).  The
    octree's top level is one node covering the whole mesh; level 0 has up to
    ``2**(lods-1)`` nodes per axis (fewer levels are written for a mesh too small for
    level-0 nodes of 8 voxels, taking ``lod_scale`` as the voxel size).  Each coarser level
    is the previous one simplified to about a quarter of its triangles and cut on the finer
    level's grid, so no triangle crosses a child's boundary; every node with content has its
    parent listed (empty if need be), and fragments are in Z-curve order.  ``lod_scale`` is
    the level-0 scale (about the vertex spacing, in nm); level ``L`` gets
    ``lod_scale * 2**L``.
    """
    bits = vertex_quantization_bits
    qmax = float(2**bits - 1)
    name = f"mesh {mesh.id}" if mesh.id is not None else "mesh"
    if mesh.is_empty:
        empty = _Manifest(np.ones(3), np.zeros(3), np.asarray([lod_scale]), np.zeros((1, 3)),
                          [np.zeros((0, 3), np.uint32)], [np.zeros(0, np.uint64)])
        return empty.to_bytes(), b""
    vertices = mesh.vertices.astype(np.float64)
    used = np.unique(mesh.faces)
    lo = vertices[used].min(axis=0)
    hi = vertices[used].max(axis=0)
    origin = np.floor(lo).astype(np.float32).astype(np.float64)
    origin = np.where(origin > lo, np.nextafter(origin.astype(np.float32), np.float32(-np.inf)),
                      origin).astype(np.float64)
    # no more levels than keep level-0 nodes _MIN_NODE voxels long: finer nodes would only
    # split a small mesh into many tiny fragments
    while lods > 1 and (hi - origin).max() / 2 ** (lods - 1) < _MIN_NODE * lod_scale:
        lods -= 1
    top = 2 ** (lods - 1)
    # whole nanometres, so chunk_shape is exact in float32; chunk * top > extent strictly, so
    # every vertex lies inside the top node
    chunk = np.floor((hi - origin) / top) + 1.0

    levels = [(mesh.vertices, mesh.faces)]
    for _ in range(1, lods):
        levels.append(_simplify(*levels[-1]))

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


# -- mesh directories ----------------------------------------------------------------------------
def _legacy_fragment_name(seg: int, mesh: Mesh, resolution: np.ndarray) -> str:
    """``<id>:0:<x0>-<x1>_<y0>-<y1>_<z0>-<z1>``: the mesh's bounding box in voxels (Igneous'
    convention; Neuroglancer only follows the manifest)."""
    if mesh.num_vertices:
        lo, hi = mesh.bounds()
        a = np.floor(lo / resolution).astype(np.int64)
        b = np.ceil(hi / resolution).astype(np.int64)
    else:
        a = b = np.zeros(3, np.int64)
    return f"{seg}:0:{a[0]}-{b[0]}_{a[1]}-{b[1]}_{a[2]}-{b[2]}"


def write_meshes(
    url: str | os.PathLike[str],
    meshes: Mapping[int, Mesh],
    *,
    format: Literal["legacy", "multires"] | str = "legacy",
    mesh_dir: str = "mesh",
    lods: int = 1,
    vertex_quantization_bits: int = 16,
    sharded: bool = False,
) -> None:
    """Write ``meshes`` ({segment id: Mesh}, vertices in nm) into a precomputed layer.

    ``url`` names an existing precomputed segmentation layer (``precomputed://<location>``
    or a bare path, file://, gs:// or s3:// location).  The layer's info gets
    ``"mesh": mesh_dir`` (every other key is kept) and the mesh directory gets its ``info``.

    ``format="legacy"``: per segment a manifest ``<id>:0`` naming one fragment file
    ``<id>:0:<bbox>``.  ``format="multires"``: per segment the manifest ``<id>.index`` and the
    Draco fragment file ``<id>`` (``neuroglancer_multilod_draco``), with ``lods`` levels of
    detail (each coarser level simplified with zmesh) and vertex positions quantized to
    ``vertex_quantization_bits`` (10 or 16) per octree node.  Output is unsharded;
    ``sharded=True`` raises CapabilityNotSupportedError.  Existing meshes of other ids stay;
    a mesh directory that already holds the other format (or multires meshes with other
    settings) is refused rather than mixed.
    """
    if format not in ("legacy", "multires"):
        raise InvalidRequestError(f"format must be 'legacy' or 'multires', got {format!r}")
    if sharded:
        raise CapabilityNotSupportedError(
            "voxgate writes unsharded mesh directories only (one manifest and one fragment file "
            "per segment); write unsharded and reshard with Igneous if you need shards"
        )
    mesh_dir = check_dir_name(mesh_dir, "mesh_dir")
    if isinstance(lods, bool) or not isinstance(lods, int) or not 1 <= lods <= 10:
        raise InvalidRequestError(f"lods must be an integer from 1 to 10, got {lods!r}")
    if vertex_quantization_bits not in (10, 16) or isinstance(vertex_quantization_bits, bool):
        raise InvalidRequestError(
            f"vertex_quantization_bits must be 10 or 16, got {vertex_quantization_bits!r}"
        )
    if not isinstance(meshes, Mapping):
        raise InvalidRequestError(
            f"meshes must be a mapping {{segment id: Mesh}}, got {type(meshes).__name__}"
        )
    items: list[tuple[int, Mesh]] = []
    for key, mesh in meshes.items():
        seg = segment_id(key, "segment id")
        if not isinstance(mesh, Mesh):
            raise InvalidRequestError(f"meshes[{seg}] is a {type(mesh).__name__}, not a Mesh")
        if mesh.id is not None and mesh.id != seg:
            raise InvalidRequestError(f"meshes[{seg}] is the mesh of segment {mesh.id}")
        items.append((seg, mesh))

    remote = open_layer(url, "r+")
    if remote.meta.kind != "segmentation":
        raise InvalidRequestError(
            f"{remote.url} is an image layer; meshes belong to segmentation layers"
        )
    directory = Directory(join(remote.location, mesh_dir))
    wanted_type = LEGACY_MESH_TYPE if format == "legacy" else MULTIRES_MESH_TYPE
    info = _mesh_dir_info(directory, wanted_type, format, vertex_quantization_bits)
    vs = remote.meta.scales[0].voxel_size
    resolution = np.asarray(vs.xyz(), dtype=np.float64) * _unit_nm(vs.unit)

    lod_scale = float(resolution.min())

    def encode(item: tuple[int, Mesh]) -> tuple[tuple[str, bytes], tuple[str, bytes]]:
        """(fragment data file, manifest file) of one segment."""
        seg, mesh = item
        if format == "legacy":
            frag = _legacy_fragment_name(seg, mesh, resolution)
            return (frag, mesh.to_precomputed()), (
                f"{seg}:0", json.dumps({"fragments": [frag]}).encode())
        manifest, data = encode_multires(
            mesh, lods=lods, vertex_quantization_bits=vertex_quantization_bits,
            lod_scale=lod_scale,
        )
        return (str(seg), data), (f"{seg}.index", manifest)

    directory.put_many([("info", json.dumps(info, indent=2).encode())])
    # a batch at a time, so memory holds a few encoded meshes, not all of them; numpy and
    # Draco release the GIL for much of the encoding
    workers = 1 if format == "legacy" else min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for at in range(0, len(items), _WRITE_BATCH):
            encoded = list(pool.map(encode, items[at:at + _WRITE_BATCH]))
            # the fragments first, then the manifests that point at them
            directory.put_many([data for data, _ in encoded])
            directory.put_many([manifest for _, manifest in encoded])
    if remote.meta.extra.get("mesh") != mesh_dir:
        remote.update_info({"mesh": mesh_dir})


def _unit_nm(unit: str) -> float:
    factor = UNITS_NM.get(unit)
    if factor is None:
        raise InvalidRequestError(f"voxel size unit {unit!r} cannot be converted to nm")
    return factor


def _mesh_dir_info(directory: Directory, wanted_type: str, format: str, bits: int
                   ) -> dict[str, Any]:
    existing = read_info(directory)
    ours: dict[str, Any] = {"@type": wanted_type}
    if format == "multires":
        ours.update(vertex_quantization_bits=bits, transform=list(_IDENTITY),
                    lod_scale_multiplier=1.0)
    if existing is None:
        return ours
    have = existing.get("@type", LEGACY_MESH_TYPE)
    if existing.get("sharding"):
        raise CapabilityNotSupportedError(
            f"{directory.location} holds sharded meshes; voxgate writes unsharded meshes only "
            "(choose another mesh_dir)"
        )
    if have != wanted_type:
        other = "multires" if have == MULTIRES_MESH_TYPE else "legacy"
        raise InvalidRequestError(
            f"{directory.location} already holds {have} meshes; writing {format} meshes there "
            f"would leave a directory no reader understands. Write format={other!r} or choose "
            "another mesh_dir"
        )
    transform = existing.get("transform", _IDENTITY)
    if [float(v) for v in transform] != _IDENTITY:
        raise InvalidRequestError(
            f"{directory.location} stores meshes under the transform {transform}; voxgate writes "
            "nanometre coordinates (the identity transform): choose another mesh_dir"
        )
    if format == "multires" and int(existing.get("vertex_quantization_bits", bits)) != bits:
        raise InvalidRequestError(
            f"{directory.location} stores meshes with vertex_quantization_bits="
            f"{existing['vertex_quantization_bits']}; pass that value or choose another mesh_dir"
        )
    return {**existing, **ours, **({"lod_scale_multiplier": existing["lod_scale_multiplier"]}
                                   if "lod_scale_multiplier" in existing else {})}


def read_meshes(
    url: str | os.PathLike[str],
    ids: Iterable[int] | int | None = None,
    *,
    mesh_dir: str | None = None,
    lod: int = 0,
    strict: bool = False,
) -> dict[int, Mesh]:
    """Read the meshes of ``ids`` (every stored id when None) from a precomputed layer.

    Reads legacy meshes (all fragments of a segment concatenated) and multi-resolution
    Draco meshes (level of detail ``lod``, dequantized), as voxgate, CloudVolume and Igneous
    write them, applying the mesh info's transform, so vertices are in nm.  ``mesh_dir``
    defaults to the layer info's ``mesh`` key (else ``"mesh"``).  An id without a mesh is
    left out of the result, or raises RemoteNotFoundError when ``strict``.
    """
    remote = open_layer(url, "r")
    name = mesh_dir if mesh_dir is not None else remote.meta.extra.get("mesh") or "mesh"
    name = check_dir_name(name, "mesh_dir")
    directory = Directory(join(remote.location, name))
    info = read_info(directory) or {"@type": LEGACY_MESH_TYPE}
    kind = info.get("@type", LEGACY_MESH_TYPE)
    if kind not in (LEGACY_MESH_TYPE, MULTIRES_MESH_TYPE):
        raise CapabilityNotSupportedError(
            f"{directory.location} holds {kind!r} meshes; voxgate reads {LEGACY_MESH_TYPE} and "
            f"{MULTIRES_MESH_TYPE}"
        )
    if info.get("sharding"):
        raise CapabilityNotSupportedError(
            f"{directory.location} holds sharded meshes; voxgate reads unsharded mesh "
            "directories only"
        )
    transform = info.get("transform")
    if transform is not None:
        _transform_matrix(transform, f"{directory.path('info')} transform")
    if isinstance(lod, bool) or not isinstance(lod, int) or lod < 0:
        raise InvalidRequestError(f"lod must be an integer >= 0, got {lod!r}")
    pattern = _LEGACY_MANIFEST if kind == LEGACY_MESH_TYPE else _MULTIRES_MANIFEST
    if ids is None:
        try:
            names = directory.list()
        except RemoteNotFoundError:
            names = []
        wanted = sorted(int(m.group(1)) for n in names if (m := pattern.match(n)))
    else:
        seq = [ids] if isinstance(ids, (int, np.integer)) else list(ids)
        wanted = list(dict.fromkeys(segment_id(i, "segment id") for i in seq))
    if kind == LEGACY_MESH_TYPE:
        out = _read_legacy(directory, wanted, transform)
    else:
        bits = int(info.get("vertex_quantization_bits", 0))
        if bits not in (10, 16):
            raise CorruptChunkError(
                f"{directory.path('info')} has vertex_quantization_bits={bits}; it must be 10 "
                "or 16", chunk=directory.path("info"),
            )
        out = _read_multires(directory, wanted, transform, bits, lod)
    if strict:
        missing = [i for i in wanted if i not in out]
        if missing:
            raise RemoteNotFoundError(
                f"{directory.location} has no mesh for segment(s) "
                f"{', '.join(map(str, missing[:20]))}{' ...' if len(missing) > 20 else ''}"
            )
    return out


def _read_legacy(directory: Directory, ids: list[int], transform: Sequence[float] | None
                 ) -> dict[int, Mesh]:
    manifests = directory.get_many([f"{i}:0" for i in ids], plain=lambda d: False)
    fragments: dict[int, list[str]] = {}
    for seg in ids:
        raw = manifests[f"{seg}:0"]
        if raw is None:
            continue
        where = directory.path(f"{seg}:0")
        try:
            doc = json.loads(raw)
            names = doc["fragments"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise TypeError("fragments is not a list of names")
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptChunkError(f"mesh manifest {where} is not a legacy manifest "
                                    f"({{\"fragments\": [...]}}): {exc}", chunk=where) from None
        fragments[seg] = names
    blobs = directory.get_many([n for names in fragments.values() for n in names],
                               plain=_legacy_plain)
    out: dict[int, Mesh] = {}
    for seg, names in fragments.items():
        parts = []
        for n in names:
            data = blobs[n]
            if data is None:
                raise RemoteNotFoundError(
                    f"mesh manifest {directory.path(f'{seg}:0')} names fragment "
                    f"{directory.path(n)}, which does not exist"
                )
            parts.append(_decode_legacy(data, seg, directory.path(n)))
        mesh = Mesh.concatenate(parts, id=seg)
        if transform is not None and list(transform) != _IDENTITY:
            mesh = Mesh(_apply_transform(mesh.vertices.astype(np.float64), transform),
                        mesh.faces, seg)
        out[seg] = mesh
    return out


def _read_multires(directory: Directory, ids: list[int], transform: Sequence[float] | None,
                   bits: int, lod: int) -> dict[int, Mesh]:
    manifests = directory.get_many([f"{i}.index" for i in ids], plain=_manifest_plain)
    present = [i for i in ids if manifests[f"{i}.index"] is not None]
    # Draco data starts with "DRACO", never with the gzip magic
    datas = directory.get_many([str(i) for i in present], plain=lambda d: False)
    out: dict[int, Mesh] = {}
    for seg in present:
        data = datas[str(seg)]
        if data is None:
            raise RemoteNotFoundError(
                f"{directory.path(f'{seg}.index')} exists but its fragment file "
                f"{directory.path(str(seg))} does not"
            )
        out[seg] = decode_multires(
            manifests[f"{seg}.index"] or b"", data, lod=lod, vertex_quantization_bits=bits,
            transform=transform, id=seg, name=directory.path(str(seg)),
        )
    return out
