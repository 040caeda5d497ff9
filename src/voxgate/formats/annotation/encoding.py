"""The bytes of Neuroglancer's precomputed annotations (``neuroglancer_annotations_v1``).

- :class:`PropertySpec` and :func:`record_dtype`: one annotation's fixed-size record (geometry
  as float32, then the property values grouped by alignment, 4-byte, 2-byte then 1-byte types,
  zero padding to a multiple of 4), as Neuroglancer's ``getPropertyOffsets`` lays them out;
- :func:`encode_multiple` / :func:`decode_multiple`: a list of annotations (``u64 count``,
  the records, then the ``u64`` ids), as the spatial and relationship indexes store them;
- :func:`relationship_bytes` / :func:`decode_single`: the by-id encoding, a record followed
  by ``u32 count, u64 ids[count]`` per relationship;
- :func:`compressed_morton_code` and its inverse, the keys of sharded spatial levels.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import CorruptChunkError, InvalidRequestError

__all__ = [
    "ANNOTATION_INFO_TYPE",
    "GEOMETRY_COLUMNS",
    "KINDS",
    "PROPERTY_TYPES",
    "PropertySpec",
    "compressed_morton_code",
    "decode_multiple",
    "decode_single",
    "encode_multiple",
    "morton_to_cells",
    "record_dtype",
    "relationship_bytes",
]

ANNOTATION_INFO_TYPE = "neuroglancer_annotations_v1"

#: voxgate's kind -> the info's annotation_type (upper case: CloudVolume's reader compares
#: exactly; Neuroglancer compares case-insensitively)
KINDS = {
    "point": "POINT",
    "line": "LINE",
    "box": "AXIS_ALIGNED_BOUNDING_BOX",
    "ellipsoid": "ELLIPSOID",
}
_KIND_ALIASES = {"axis_aligned_bounding_box": "box", "aabb": "box", "bbox": "box"}

#: the table's geometry columns per kind, in (z, y, x) order; stored as x, y, z
GEOMETRY_COLUMNS = {
    "point": ("z", "y", "x"),
    "line": ("z", "y", "x", "z2", "y2", "x2"),
    "box": ("z", "y", "x", "z2", "y2", "x2"),
    "ellipsoid": ("z", "y", "x", "rz", "ry", "rx"),
}

#: property type -> (numpy dtype of one value, alignment in the record)
PROPERTY_TYPES: dict[str, tuple[np.dtype[Any], int]] = {
    "uint32": (np.dtype("<u4"), 4), "int32": (np.dtype("<i4"), 4),
    "float32": (np.dtype("<f4"), 4),
    "uint16": (np.dtype("<u2"), 2), "int16": (np.dtype("<i2"), 2),
    "uint8": (np.dtype("u1"), 1), "int8": (np.dtype("i1"), 1),
    "rgb": (np.dtype(("u1", (3,))), 1), "rgba": (np.dtype(("u1", (4,))), 1),
}
_PROPERTY_ID = re.compile(r"^[a-z][a-zA-Z0-9_]*$")


def kind_of(value: object) -> str:
    """voxgate's name of an annotation kind ("point", "line", "box", "ellipsoid")."""
    if isinstance(value, str):
        name = value.lower()
        name = _KIND_ALIASES.get(name, name)
        if name in KINDS:
            return name
    raise InvalidRequestError(
        f"kind must be one of 'point', 'line', 'box' (axis_aligned_bounding_box) or "
        f"'ellipsoid', got {value!r}"
    )


def kind_from_info(value: object, where: str) -> str:
    if isinstance(value, str):
        name = value.lower()
        name = _KIND_ALIASES.get(name, name)
        if name in KINDS:
            return name
        if name == "polyline":
            from ...errors import CapabilityNotSupportedError

            raise CapabilityNotSupportedError(f"{where}: polyline annotations are not read "
                                              "by voxgate (points, lines, boxes, ellipsoids)")
    raise InvalidRequestError(f"{where}: annotation_type {value!r} is not one of "
                              f"{', '.join(KINDS.values())}")


@dataclass(frozen=True)
class PropertySpec:
    """One entry of the info's ``properties``."""

    id: str
    type: str
    description: str | None = None
    enum_values: tuple[int | float, ...] | None = None
    enum_labels: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, doc: object, where: str) -> PropertySpec:
        if not isinstance(doc, Mapping):
            raise InvalidRequestError(f"{where}: a property must be a JSON object, got {doc!r}")
        pid, ptype = doc.get("id"), doc.get("type")
        if not isinstance(pid, str) or not _PROPERTY_ID.match(pid):
            raise InvalidRequestError(
                f"{where}: property id {pid!r} must match ^[a-z][a-zA-Z0-9_]*$ (a lower-case "
                "letter, then letters, digits or '_')")
        if ptype not in PROPERTY_TYPES:
            raise InvalidRequestError(
                f"{where}: property {pid!r} has type {ptype!r}; the types are "
                f"{', '.join(PROPERTY_TYPES)}")
        description = doc.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidRequestError(f"{where}: property {pid!r}: description must be text")
        values, labels = doc.get("enum_values"), doc.get("enum_labels")
        if (values is None) != (labels is None):
            raise InvalidRequestError(f"{where}: property {pid!r}: enum_values and enum_labels "
                                      "go together (one label per value)")
        if values is not None:
            if ptype in ("rgb", "rgba"):
                raise InvalidRequestError(f"{where}: property {pid!r}: enum_values are for "
                                          f"numeric types, not {ptype}")
            if isinstance(values, (str, bytes)) or isinstance(labels, (str, bytes)) or \
                    not isinstance(values, Sequence) or not isinstance(labels, Sequence) or \
                    len(values) != len(labels) or \
                    not all(isinstance(label, str) for label in labels):
                raise InvalidRequestError(
                    f"{where}: property {pid!r}: enum_values must be numbers and enum_labels "
                    f"text, of the same length; got {values!r} and {labels!r}")
            values = tuple(_enum_value(v, str(ptype), f"{where}: property {pid!r}")
                           for v in values)
            labels = tuple(labels)
        return cls(pid, str(ptype), description, values, labels)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.description is not None:
            out["description"] = self.description
        if self.enum_values is not None:
            out["enum_values"] = list(self.enum_values)
            out["enum_labels"] = list(self.enum_labels or ())
        return out


def _enum_value(value: object, ptype: str, where: str) -> int | float:
    """One of ``enum_values`` as a value of the property's type.  Neuroglancer parses each
    (a number, or a number written as text) with ``parseDataTypeValue``: it refuses the whole
    layer for an integer out of the type's range or a float that is not finite, and truncates
    ``1.5`` to ``1`` for an integer type (so the label would name another value)."""
    number: int | float | None = None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        number = value.item() if isinstance(value, np.generic) else value
    elif isinstance(value, str):
        try:
            number = int(value) if ptype != "float32" else float(value)
        except ValueError:
            number = None
    if ptype == "float32":
        if number is not None and math.isfinite(number):
            return float(number)
        raise InvalidRequestError(f"{where}: enum value {value!r} is not a finite float32 "
                                  "number")
    info = np.iinfo(PROPERTY_TYPES[ptype][0])
    if number is None or (isinstance(number, float) and not number.is_integer()) or \
            not info.min <= number <= info.max:
        raise InvalidRequestError(f"{where}: enum value {value!r} is not a {ptype} value "
                                  f"(an integer {info.min}..{info.max})")
    return int(number)


def storage_order(props: Sequence[PropertySpec]) -> list[PropertySpec]:
    """The properties in the order their values are stored: by alignment, 4 then 2 then 1,
    keeping the given order within a group (a stable sort, as Neuroglancer's)."""
    return sorted(props, key=lambda p: -PROPERTY_TYPES[p.type][1])


def geometry_width(kind: str) -> int:
    return 3 if kind == "point" else 6


def record_dtype(kind: str, props: Sequence[PropertySpec]) -> np.dtype[Any]:
    """The numpy dtype of one annotation's record (no relationships); field ``geometry``
    (float32, x y z [x2 y2 z2]), then one field per property under its id, then padding."""
    fields: list[tuple[Any, ...]] = [("geometry", "<f4", (geometry_width(kind),))]
    size = 4 * geometry_width(kind)
    for p in storage_order(props):
        dt = PROPERTY_TYPES[p.type][0]
        fields.append((p.id, dt))
        size += dt.itemsize
    if size % 4:
        fields.append(("_padding", "u1", (4 - size % 4,)))
    return np.dtype(fields)


# -- lists of annotations -------------------------------------------------------------------------
def encode_multiple(records: np.ndarray, ids: np.ndarray) -> bytes:
    """``u64 count``, the records, the ids (all little-endian)."""
    return b"".join((struct.pack("<Q", len(records)), np.ascontiguousarray(records).tobytes(),
                     np.ascontiguousarray(ids, dtype="<u8").tobytes()))


def decode_multiple(data: bytes, dtype: np.dtype[Any], what: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(records, ids) of a list of annotations; CorruptChunkError if the sizes disagree."""
    if len(data) < 8:
        raise CorruptChunkError(f"{what} holds {len(data)} bytes; a list of annotations "
                                "starts with an 8-byte count", chunk=what)
    (count,) = struct.unpack_from("<Q", data)
    need = 8 + count * (dtype.itemsize + 8)
    if count > len(data) or len(data) != need:
        raise CorruptChunkError(
            f"{what} holds {len(data)} bytes, but {count} annotations of {dtype.itemsize} "
            f"bytes and their ids take {need}", chunk=what)
    records = np.frombuffer(data, dtype=dtype, count=count, offset=8)
    ids = np.frombuffer(data, dtype="<u8", count=count, offset=8 + count * dtype.itemsize)
    return records, ids.astype(np.uint64)


def relationship_bytes(related: Sequence[np.ndarray]) -> bytes:
    """The tail of one annotation's by-id encoding: per relationship ``u32 n, u64 ids[n]``."""
    return b"".join(struct.pack("<I", len(r)) + np.asarray(r, dtype="<u8").tobytes()
                    for r in related)


def decode_single(data: bytes, dtype: np.dtype[Any], relationships: int, what: str
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(the record, one uint64 array per relationship) of a by-id entry."""
    if len(data) < dtype.itemsize:
        raise CorruptChunkError(f"{what} holds {len(data)} bytes, less than one annotation "
                                f"({dtype.itemsize} bytes)", chunk=what)
    record = np.frombuffer(data, dtype=dtype, count=1)
    at = dtype.itemsize
    related = []
    for _ in range(relationships):
        if at + 4 > len(data):
            raise CorruptChunkError(f"{what} ends inside its relationship lists", chunk=what)
        (n,) = struct.unpack_from("<I", data, at)
        at += 4
        if at + 8 * n > len(data):
            raise CorruptChunkError(f"{what} ends inside its relationship lists ({n} ids "
                                    "announced)", chunk=what)
        related.append(np.frombuffer(data, dtype="<u8", count=n, offset=at).astype(np.uint64))
        at += 8 * n
    if at != len(data):
        raise CorruptChunkError(f"{what} holds {len(data) - at} bytes past its last "
                                "relationship list", chunk=what)
    return record, related


# -- sharded spatial keys -------------------------------------------------------------------------
def _bits(grid_shape: Sequence[int]) -> list[int]:
    return [max(0, int(g - 1).bit_length()) for g in grid_shape]


def compressed_morton_code(cells: np.ndarray, grid_shape: Sequence[int]) -> np.ndarray:
    """Neuroglancer's compressed Morton code of grid cells ((n, rank) in the info's dimension
    order): bit i of each dimension, dimensions in order, skipping the bits a dimension of
    the grid does not need."""
    cells = np.asarray(cells, dtype=np.uint64).reshape(-1, len(grid_shape))
    bits = _bits(grid_shape)
    out = np.zeros(len(cells), dtype=np.uint64)
    j = 0
    for i in range(max(bits, default=0)):
        for d, b in enumerate(bits):
            if i < b:
                out |= ((cells[:, d] >> np.uint64(i)) & np.uint64(1)) << np.uint64(j)
                j += 1
    return out


def morton_to_cells(codes: np.ndarray, grid_shape: Sequence[int]) -> np.ndarray:
    """The inverse of :func:`compressed_morton_code`: (n, rank) cells."""
    codes = np.asarray(codes, dtype=np.uint64).reshape(-1)
    bits = _bits(grid_shape)
    cells = np.zeros((len(codes), len(grid_shape)), dtype=np.uint64)
    j = 0
    for i in range(max(bits, default=0)):
        for d, b in enumerate(bits):
            if i < b:
                cells[:, d] |= ((codes >> np.uint64(j)) & np.uint64(1)) << np.uint64(i)
                j += 1
    return cells.astype(np.int64)
