"""The :class:`Mesh` value type and its single-file codecs: Wavefront OBJ, PLY (ascii and
binary) and the Neuroglancer precomputed legacy fragment (also DVID's ``.ngmesh`` value)."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ...errors import CorruptChunkError, InvalidRequestError
from .._common import float_rows, index_rows, segment_id
from .draco import _decode_draco


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

    @classmethod
    def _trusted(cls, vertices: np.ndarray, faces: np.ndarray, id: int) -> Mesh:
        """A Mesh of arrays a kernel just made (C-contiguous float32 (n, 3) vertices, uint32
        (m, 3) faces in range, a uint64 id), without the checks: they cost a full pass over
        every mesh, about 2% of meshing 2000 segments."""
        m = object.__new__(cls)
        m.vertices, m.faces, m.id, m.normals = vertices, faces, id, None
        return m

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
        if not isinstance(meshes, Iterable):
            raise InvalidRequestError(
                f"concatenate takes an iterable of Mesh objects, got {type(meshes).__name__}")
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


# -- codecs: legacy fragment, PLY --------------------------------------------------------------
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
