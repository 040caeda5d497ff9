"""Skeletons (stick figures of segments) and the files they are stored in.

:class:`Skeleton` holds float32 vertices in nanometres (x, y, z), uint32 edges and optional
per-vertex radius and SWC vertex types, and converts to and from:

- SWC text (index, type, x, y, z, radius, parent), the interchange format of neuron tracing;
- the Neuroglancer precomputed skeleton binary (``neuroglancer_skeletons``), with the vertex
  attributes the skeleton directory's info declares, in its order;
- osteoid / kimimaro / CloudVolume ``Skeleton`` objects.

The skeleton directories of precomputed layers are in :mod:`.precomputed`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import (
    CorruptChunkError,
    InvalidRequestError,
)
from .._common import float_rows, index_rows, segment_id

__all__ = ["DEFAULT_VERTEX_ATTRIBUTES", "DIRECTORY_VERTEX_ATTRIBUTES", "SKELETON_TYPE", "Skeleton"]

SKELETON_TYPE = "neuroglancer_skeletons"
#: the attributes of a skeleton binary read or written without an info: radius (nm, float32)
#: and the SWC vertex type (uint8), as osteoid (CloudVolume's Skeleton) assumes
DEFAULT_VERTEX_ATTRIBUTES: tuple[dict[str, Any], ...] = (
    {"id": "radius", "data_type": "float32", "num_components": 1},
    {"id": "vertex_types", "data_type": "uint8", "num_components": 1},
)
#: the attributes a new skeleton directory declares: the same two, both float32, because
#: Neuroglancer hands attributes to WebGL, which takes no 8- or 16-bit types (it refuses to
#: draw CloudVolume's uint8 vertex_types); readers take vertex_types in either type
DIRECTORY_VERTEX_ATTRIBUTES: tuple[dict[str, Any], ...] = (
    {"id": "radius", "data_type": "float32", "num_components": 1},
    {"id": "vertex_types", "data_type": "float32", "num_components": 1},
)
_IDENTITY = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
_ATTRIBUTE_TYPES = ("float32", "int8", "uint8", "int16", "uint16", "int32", "uint32")
_ID_NAME = re.compile(r"^\d+$")


def _attribute_list(attributes: object, where: str) -> list[tuple[str, np.dtype[Any], int]]:
    """Validated ``vertex_attributes`` as (id, little-endian dtype, components)."""
    if not isinstance(attributes, (list, tuple)):
        raise InvalidRequestError(f"{where} must be a list of attribute specs, got {attributes!r}")
    out = []
    seen = set()
    for spec in attributes:
        try:
            name = spec["id"]
            dtype = str(spec["data_type"]).lower()
            comps = spec["num_components"]
        except (TypeError, KeyError):
            raise InvalidRequestError(
                f"{where}: {spec!r} is not an attribute spec "
                '({"id": ..., "data_type": ..., "num_components": ...})'
            ) from None
        if not isinstance(name, str) or not name or name in seen:
            raise InvalidRequestError(f"{where}: attribute id {name!r} is empty or repeated")
        if dtype not in _ATTRIBUTE_TYPES:
            raise InvalidRequestError(
                f"{where}: attribute {name!r} has data_type {dtype!r}; Neuroglancer allows "
                f"{', '.join(_ATTRIBUTE_TYPES)}"
            )
        if isinstance(comps, bool) or not isinstance(comps, int) or comps < 1:
            raise InvalidRequestError(
                f"{where}: attribute {name!r} has num_components {comps!r}; it must be >= 1"
            )
        seen.add(name)
        out.append((name, np.dtype(dtype).newbyteorder("<"), comps))
    return out


@dataclass(eq=False)
class Skeleton:
    """A skeleton: ``vertices`` float32 (n, 3) x, y, z in nm; ``edges`` uint32 (m, 2).

    ``radius`` (float32 (n,), nm) and ``vertex_types`` (uint8 (n,), SWC types: 0 undefined,
    1 soma, 2 axon, 3 basal dendrite, 4 apical dendrite) are optional.  ``attributes`` holds
    any other per-vertex arrays by name (read from precomputed files that declare them).
    Inputs are checked and converted; bad ones raise :class:`InvalidRequestError`.
    """

    vertices: np.ndarray
    edges: np.ndarray
    radius: np.ndarray | None = None
    vertex_types: np.ndarray | None = None
    id: int | None = None
    attributes: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vertices = float_rows(self.vertices, "vertices", 3)
        n = len(self.vertices)
        self.edges = index_rows(self.edges, "edges", 2, n, "vertices")
        if self.radius is not None:
            r = np.asarray(self.radius)
            if r.dtype.kind not in "fiu":
                raise InvalidRequestError(f"radius must hold numbers, not {r.dtype.name}")
            if r.ndim == 2 and r.shape[1:] == (1,):
                r = r[:, 0]
            if r.shape != (n,):
                raise InvalidRequestError(
                    f"radius must have one value per vertex, shape ({n},), got {r.shape}"
                )
            self.radius = np.ascontiguousarray(r, dtype=np.float32)
        if self.vertex_types is not None:
            t = np.asarray(self.vertex_types)
            if t.ndim == 2 and t.shape[1:] == (1,):
                t = t[:, 0]
            if t.dtype.kind not in "iu" or t.shape != (n,):
                raise InvalidRequestError(
                    f"vertex_types must be integers, one per vertex, shape ({n},), got "
                    f"{t.dtype.name} {t.shape}"
                )
            if t.size and (int(t.min()) < 0 or int(t.max()) > 255):
                raise InvalidRequestError("vertex_types must fit in uint8 (0..255)")
            self.vertex_types = np.ascontiguousarray(t, dtype=np.uint8)
        if self.id is not None:
            self.id = segment_id(self.id, "skeleton id")
        if not isinstance(self.attributes, Mapping):
            raise InvalidRequestError("attributes must be a dict {name: per-vertex array}")
        attrs = {}
        for name, value in self.attributes.items():
            if name in ("radius", "vertex_types"):
                raise InvalidRequestError(f"{name} is a field of Skeleton, not an extra attribute")
            arr = np.asarray(value)
            if arr.ndim == 0 or arr.shape[0] != n or arr.ndim > 2:
                raise InvalidRequestError(
                    f"attribute {name!r} must have one row per vertex ({n}), got shape {arr.shape}"
                )
            attrs[str(name)] = arr
        self.attributes = attrs

    # -- basics ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edges.shape[0])

    def __repr__(self) -> str:
        extra = [k for k in ("radius", "vertex_types") if getattr(self, k) is not None]
        extra += list(self.attributes)
        more = f", {', '.join(extra)}" if extra else ""
        return f"Skeleton(id={self.id}, {self.num_vertices} vertices, {self.num_edges} edges{more})"

    def __eq__(self, other: object) -> bool:
        """The same id and exactly the same arrays, in the same order."""
        if not isinstance(other, Skeleton):
            return NotImplemented

        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            return (a is None and b is None) or (
                a is not None and b is not None and np.array_equal(a, b)
            )

        return (
            self.id == other.id
            and np.array_equal(self.vertices, other.vertices)
            and np.array_equal(self.edges, other.edges)
            and same(self.radius, other.radius)
            and same(self.vertex_types, other.vertex_types)
            and self.attributes.keys() == other.attributes.keys()
            and all(np.array_equal(v, other.attributes[k]) for k, v in self.attributes.items())
        )

    __hash__ = None  # type: ignore[assignment]  # mutable arrays

    def cable_length(self) -> float:
        """Total edge length in nm."""
        v = self.vertices.astype(np.float64)
        e = self.edges.astype(np.int64)
        return float(np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1).sum())

    # -- SWC ------------------------------------------------------------------------------------
    def to_swc(self) -> str:
        """SWC text: ``index type x y z radius parent`` per vertex, coordinates in nm.

        Each connected piece is written as a tree from its lowest-numbered vertex (or its
        first soma vertex), breadth first, so every parent comes before its children; a
        forest and isolated vertices are fine.  SWC holds trees only: an edge that would close
        a cycle is left out.  A missing radius is written as 0, a missing type as 0
        (undefined).
        """
        n = self.num_vertices
        parent, order = _spanning_forest(n, self.edges, self.vertex_types)
        index = np.empty(n, dtype=np.int64)
        index[order] = np.arange(1, n + 1)
        radius = self.radius if self.radius is not None else np.zeros(n, np.float32)
        types = self.vertex_types if self.vertex_types is not None else np.zeros(n, np.uint8)
        head = [
            "# SWC written by voxgate",
            f"# id {self.id}" if self.id is not None else "# id (none)",
            "# units nanometres; columns: index type x y z radius parent",
            f"# {n} vertices, {self.num_edges} edges",
        ]
        rows = []
        v = self.vertices.astype(np.float64)
        r = radius.astype(np.float64)
        for i in order.tolist():
            p = int(parent[i])
            rows.append(
                f"{index[i]} {int(types[i])} {v[i, 0]:.9g} {v[i, 1]:.9g} {v[i, 2]:.9g} "
                f"{r[i]:.9g} {index[p] if p >= 0 else -1}"
            )
        return "\n".join(head + rows) + "\n"

    @classmethod
    def from_swc(cls, text: str | bytes, id: int | None = None) -> Skeleton:
        """A skeleton from SWC text (``#`` comments and blank lines ignored).

        Vertices keep the file's row order; each row with a parent gives the edge
        (parent, child).  Node numbers need not be contiguous or ordered; a parent that no
        row defines is an error.
        """
        if isinstance(text, (bytes, bytearray, memoryview)):
            text = bytes(text).decode("utf-8", errors="replace")
        if not isinstance(text, str):
            raise InvalidRequestError(f"from_swc takes SWC text, got {type(text).__name__}")
        nodes: list[int] = []
        types: list[int] = []
        xyz: list[tuple[float, float, float]] = []
        radii: list[float] = []
        parents: list[tuple[int, int]] = []  # (line number, parent node)
        for lineno, line in enumerate(text.splitlines(), 1):
            body = line.split("#", 1)[0].strip()
            if not body:
                continue
            f = body.split()
            if len(f) < 7:
                raise InvalidRequestError(
                    f"SWC line {lineno}: {line.strip()!r} needs 7 columns (index type x y z "
                    "radius parent)"
                )
            try:
                nodes.append(int(f[0]))
                types.append(int(float(f[1])))
                xyz.append((float(f[2]), float(f[3]), float(f[4])))
                try:
                    radii.append(float(f[5]))
                except ValueError:
                    radii.append(0.0)  # "NA" and the like
                parents.append((lineno, int(f[6])))
            except ValueError:
                raise InvalidRequestError(
                    f"SWC line {lineno}: {line.strip()!r} is not index type x y z radius parent"
                ) from None
        where = {}
        for i, node in enumerate(nodes):
            if node in where:
                raise InvalidRequestError(f"SWC node {node} is defined twice")
            where[node] = i
        edges = []
        for child, (lineno, p) in enumerate(parents):
            if p < 0:
                continue
            if p not in where:
                raise InvalidRequestError(
                    f"SWC line {lineno}: parent {p} of node {nodes[child]} is not defined"
                )
            edges.append((where[p], child))
        if any(t < 0 or t > 255 for t in types):
            raise InvalidRequestError("SWC types must be 0..255")
        return cls(
            np.asarray(xyz, dtype=np.float64).reshape(-1, 3),
            np.asarray(edges, dtype=np.int64).reshape(-1, 2),
            np.asarray(radii, dtype=np.float32),
            np.asarray(types, dtype=np.uint8),
            id,
        )

    # -- precomputed ----------------------------------------------------------------------------
    def to_precomputed(
        self, attributes: Sequence[Mapping[str, Any]] | None = None
    ) -> bytes:
        """The precomputed skeleton binary with ``attributes`` (an info's ``vertex_attributes``).

        ``None`` means radius (float32) and vertex_types (uint8), CloudVolume's layout.  A
        missing radius is written as 0 and missing types as 0; any other attribute must be in
        ``self.attributes``.
        """
        specs = _attribute_list(
            list(DEFAULT_VERTEX_ATTRIBUTES) if attributes is None else list(attributes),
            "vertex_attributes",
        )
        n = self.num_vertices
        parts = [
            struct.pack("<II", n, self.num_edges),
            self.vertices.astype("<f4", copy=False).tobytes(),
            self.edges.astype("<u4", copy=False).tobytes(),
        ]
        for name, dtype, comps in specs:
            if name == "radius":
                value: np.ndarray | None = self.radius if self.radius is not None else np.zeros(n)
            elif name == "vertex_types":
                value = self.vertex_types if self.vertex_types is not None else np.zeros(n)
            else:
                value = self.attributes.get(name)
                if value is None:
                    raise InvalidRequestError(
                        f"the skeleton directory declares vertex attribute {name!r}, which "
                        f"{self!r} does not have (add it to .attributes)"
                    )
            arr = np.asarray(value)
            # an empty skeleton (what skeletonize returns for an id it finds no skeleton of)
            # has no rows to infer the component count from
            arr = arr.reshape(n, -1) if n else arr.reshape(0, comps)
            if arr.shape[1] != comps:
                raise InvalidRequestError(
                    f"vertex attribute {name!r} has {arr.shape[1]} components per vertex; the "
                    f"directory declares {comps}"
                )
            if dtype.kind != "f" and arr.size and arr.dtype.kind == "f" \
                    and not np.array_equal(arr, np.round(arr)):
                raise InvalidRequestError(
                    f"vertex attribute {name!r} holds fractions; it is stored as {dtype.name}"
                )
            if dtype.kind in "iu" and arr.size:
                info = np.iinfo(dtype)
                if arr.min() < info.min or arr.max() > info.max:
                    raise InvalidRequestError(
                        f"vertex attribute {name!r} does not fit in {dtype.name}"
                    )
            parts.append(np.ascontiguousarray(arr, dtype=dtype).tobytes())
        return b"".join(parts)

    @classmethod
    def from_precomputed(
        cls,
        data: bytes | bytearray | memoryview,
        vertex_attributes: Sequence[Mapping[str, Any]] | None = None,
        *,
        id: int | None = None,
        name: str | None = None,
    ) -> Skeleton:
        """Decode a precomputed skeleton; attributes follow ``vertex_attributes`` (an info's
        list, None meaning radius + vertex_types).  A file holding only vertices and edges
        (no attributes at all) is accepted too; damaged bytes raise CorruptChunkError."""
        where = name or "skeleton"
        data = bytes(data)
        specs = _attribute_list(
            list(DEFAULT_VERTEX_ATTRIBUTES) if vertex_attributes is None
            else list(vertex_attributes),
            "vertex_attributes",
        )

        def corrupt(why: str) -> CorruptChunkError:
            return CorruptChunkError(f"{where} {why}", chunk=where)

        if len(data) < 8:
            raise corrupt(f"holds {len(data)} bytes; a skeleton starts with two 4-byte counts")
        nv, ne = struct.unpack_from("<II", data)
        base = 8 + 12 * nv + 8 * ne
        full = base + sum(nv * dt.itemsize * c for _, dt, c in specs)
        if len(data) not in (base, full):
            raise corrupt(
                f"declares {nv} vertices and {ne} edges, so it must hold {full} bytes (with the "
                f"vertex attributes {[s[0] for s in specs]}) or {base} (without), but holds "
                f"{len(data)}"
            )
        vertices = np.frombuffer(data, "<f4", count=3 * nv, offset=8).reshape(nv, 3)
        edges = np.frombuffer(data, "<u4", count=2 * ne, offset=8 + 12 * nv).reshape(ne, 2)
        radius = types = None
        attrs: dict[str, np.ndarray] = {}
        at = base
        if len(data) == full:
            for attr, dt, comps in specs:
                arr = np.frombuffer(data, dt, count=nv * comps, offset=at)
                at += nv * comps * dt.itemsize
                arr = arr.reshape(nv, comps) if comps > 1 else arr
                if attr == "radius" and comps == 1:
                    radius = arr.astype(np.float32)
                elif attr == "vertex_types" and comps == 1 and _small_whole(arr):
                    types = arr.astype(np.uint8)
                else:
                    attrs[attr] = arr.astype(dt.newbyteorder("="))
        try:
            return cls(vertices.astype(np.float32), edges.astype(np.uint32), radius, types, id,
                       attrs)
        except InvalidRequestError as exc:
            raise corrupt(f"is not a valid skeleton: {exc}") from None

    # -- osteoid / kimimaro / CloudVolume -------------------------------------------------------
    @classmethod
    def from_osteoid(cls, skel: Any, id: int | None = None) -> Skeleton:
        """Convert an osteoid ``Skeleton`` (what kimimaro and CloudVolume return).

        Vertices are taken in physical units: a skeleton whose ``space`` is ``"voxel"`` is
        moved through its ``transform`` first.  kimimaro's vertices are physical (voxel
        index times anisotropy) but know nothing of the volume's offset: add it to
        ``vertices`` if the volume does not start at 0.
        """
        for attr in ("vertices", "edges"):
            if not hasattr(skel, attr):
                raise InvalidRequestError(
                    f"from_osteoid takes an osteoid/kimimaro Skeleton; {type(skel).__name__} "
                    f"has no {attr}"
                )
        vertices = np.asarray(skel.vertices, dtype=np.float64).reshape(-1, 3)
        if getattr(skel, "space", "physical") == "voxel":
            mat = np.asarray(getattr(skel, "transform", np.eye(3, 4)), dtype=np.float64)
            vertices = vertices @ mat[:, :3].T + mat[:, 3]
        radius = getattr(skel, "radius", None)
        types = getattr(skel, "vertex_types", None)
        attrs = {}
        for spec in getattr(skel, "extra_attributes", None) or []:
            name = spec.get("id") if isinstance(spec, Mapping) else None
            if name and name not in ("radius", "vertex_types") and hasattr(skel, name):
                attrs[name] = np.asarray(getattr(skel, name))
        seg = id if id is not None else getattr(skel, "id", None)
        return cls(vertices, np.asarray(skel.edges).reshape(-1, 2), radius, types, seg, attrs)

    from_kimimaro = from_osteoid

    def to_osteoid(self) -> Any:
        """An ``osteoid.Skeleton`` in physical space (nm), for kimimaro's and osteoid's tools."""
        import osteoid

        n = self.num_vertices
        radius = self.radius if self.radius is not None else np.zeros(n, np.float32)
        types = self.vertex_types if self.vertex_types is not None else np.zeros(n, np.uint8)
        out = osteoid.Skeleton(self.vertices.copy(), self.edges.copy(), radius.copy(),
                               types.copy(), segid=self.id, space="physical")
        for name, arr in self.attributes.items():
            out.add_vertex_attribute(name, arr)
        return out


def _small_whole(arr: np.ndarray) -> bool:
    """Whether every value is a whole number from 0 to 255 (an SWC type, stored as any
    integer or float type)."""
    if not arr.size:
        return True
    if arr.dtype.kind == "f":
        if not (np.isfinite(arr).all() and np.array_equal(arr, np.round(arr))):
            return False
    elif arr.dtype.kind not in "iu":
        return False
    return bool(arr.min() >= 0 and arr.max() <= 255)


def _spanning_forest(
    n: int, edges: np.ndarray, types: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(parent of each vertex or -1, breadth-first visiting order) of a spanning forest."""
    from collections import deque

    adjacency: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges.tolist():
        if a != b:
            adjacency[a].append(b)
            adjacency[b].append(a)
    parent = np.full(n, -1, dtype=np.int64)
    seen = np.zeros(n, dtype=bool)
    order: list[int] = []
    somas = [] if types is None else np.flatnonzero(types == 1).tolist()
    roots = [*somas, *range(n)]
    for root in roots:
        if seen[root]:
            continue
        seen[root] = True
        queue = deque([root])
        while queue:
            v = queue.popleft()
            order.append(v)
            for w in sorted(adjacency[v]):
                if not seen[w]:
                    seen[w] = True
                    parent[w] = v
                    queue.append(w)
    return parent, np.asarray(order, dtype=np.int64)
