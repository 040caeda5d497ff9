"""Tables of annotations (pandas DataFrames) to records and back.

A table has the geometry columns of its kind in dataset voxels (``z, y, x``; lines and boxes
also ``z2, y2, x2``; ellipsoids the radii ``rz, ry, rx``), an optional ``id`` column (uint64;
default 1..n in table order), property columns and relationship columns.  :class:`Schema` is
decided on the first chunk of a table and checks every later chunk against it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ...errors import InvalidRequestError
from .encoding import (
    GEOMETRY_COLUMNS,
    PROPERTY_TYPES,
    PropertySpec,
    geometry_width,
    record_dtype,
)

__all__ = ["Chunk", "Schema", "records_to_frame"]

_MAX_U64 = 2**64 - 1


@dataclass
class Chunk:
    """One chunk of a table, checked and converted."""

    records: np.ndarray  # structured, record_dtype
    ids: np.ndarray  # uint64
    lo: np.ndarray  # (n, 3) float32, x y z: the box each annotation occupies
    hi: np.ndarray
    #: per relationship: (how many ids each row has (uint32), all the ids in row order)
    related: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def _is_listlike(value: object) -> bool:
    return isinstance(value, (list, np.ndarray))


def _first_value(series: pd.Series) -> object:
    for v in series:
        if v is not None and not (isinstance(v, float) and np.isnan(v)):
            return v
    return None


def _numeric(series: pd.Series) -> np.ndarray | None:
    """The column as a numpy array when its dtype is a numpy bool/int/float one."""
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "biuf":
        return series.to_numpy()
    return None


def _infer_type(name: str, series: pd.Series) -> str:
    arr = _numeric(series)
    if arr is not None:
        if arr.dtype.kind == "b":
            return "uint8"
        if arr.dtype.kind == "f":
            return "float32"
        if arr.dtype.name in PROPERTY_TYPES:
            return arr.dtype.name
        return "int32" if arr.dtype.kind == "i" else "uint32"
    value = _first_value(series)
    if isinstance(value, str) and value.startswith("#") and len(value) in (7, 9):
        return "rgb" if len(value) == 7 else "rgba"
    if isinstance(value, tuple) and len(value) in (3, 4):
        return "rgb" if len(value) == 3 else "rgba"
    raise InvalidRequestError(
        f"column {name!r} holds {type(value).__name__} values, which no property type stores "
        f"({', '.join(PROPERTY_TYPES)}; colours as '#rrggbb' / '#rrggbbaa' or (r, g, b[, a]) "
        "tuples); pass properties=[...] naming the property columns, or drop it"
    )


def _colour(value: object, width: int, name: str) -> tuple[int, ...]:
    if isinstance(value, str):
        text = value[1:] if value.startswith("#") else value
        if len(text) == 6 and width == 4:
            text += "ff"
        if len(text) == 2 * width:
            try:
                return tuple(int(text[i:i + 2], 16) for i in range(0, 2 * width, 2))
            except ValueError:
                pass
    elif isinstance(value, (tuple, list, np.ndarray)) and len(value) == width and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255
            for v in value):
        return tuple(int(v) for v in value)
    want = "'#rrggbb' or (r, g, b)" if width == 3 else "'#rrggbbaa' or (r, g, b, a)"
    raise InvalidRequestError(f"column {name!r}: {value!r} is not a colour ({want}, 0-255)")


def _property_values(series: pd.Series, spec: PropertySpec) -> np.ndarray:
    dt = PROPERTY_TYPES[spec.type][0]
    name = spec.id
    if spec.type in ("rgb", "rgba"):
        width = 3 if spec.type == "rgb" else 4
        return np.array([_colour(v, width, name) for v in series], dtype=np.uint8
                        ).reshape(len(series), width)
    arr = _numeric(series)
    if arr is None:
        raise InvalidRequestError(
            f"column {name!r} must hold numbers for its {spec.type} property, got "
            f"{series.dtype} values")
    if spec.type == "float32":
        return arr.astype(np.float32)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not (arr == np.round(arr)).all():
            raise InvalidRequestError(
                f"column {name!r} holds non-integer values (or NaN) for its {spec.type} property")
    if len(arr):
        info = np.iinfo(dt)
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            raise InvalidRequestError(
                f"column {name!r} holds values {lo}..{hi}, outside {spec.type} "
                f"({info.min}..{info.max}); pass properties=[{{'id': {name!r}, 'type': ...}}] "
                "with a wider type")
    return arr.astype(dt)


def _related(series: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(each row's count, the ids) of a relationship column (a scalar 0 means none)."""
    arr = _numeric(series)
    if arr is not None:
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all() or not (arr == np.round(arr)).all():
                raise InvalidRequestError(
                    f"relationship column {name!r} holds NaN or non-integer values; use 0 for "
                    "no segment, and an integer (uint64) column")
        if arr.dtype.kind in "if" and len(arr) and arr.min() < 0:
            raise InvalidRequestError(f"relationship column {name!r} holds a negative segment "
                                      f"id ({arr.min()}); segment ids are uint64")
        ids = arr.astype(np.uint64)
        return (ids != 0).astype(np.uint32), ids[ids != 0]
    counts = np.zeros(len(series), np.uint32)
    flat: list[int] = []
    for row, v in enumerate(series):
        if v is None:
            continue
        items = list(v) if _is_listlike(v) or isinstance(v, tuple) else [v]
        for x in items:
            if isinstance(x, bool) or not isinstance(x, (int, np.integer)) \
                    or not 0 <= int(x) <= _MAX_U64:
                raise InvalidRequestError(
                    f"relationship column {name!r} holds {x!r}; each row is a uint64 segment "
                    "id or a list of them")
        if not _is_listlike(v) and not isinstance(v, tuple) and int(v) == 0:
            items = []
        counts[row] = len(items)
        flat.extend(int(x) for x in items)
    return counts, np.array(flat, dtype=np.uint64)


class Schema:
    """The columns of a table: geometry, id, properties, relationships."""

    def __init__(self, kind: str, frame: pd.DataFrame, properties: Sequence[object] | None,
                 relationships: Sequence[str] | None) -> None:
        self.kind = kind
        self.geometry = GEOMETRY_COLUMNS[kind]
        columns = [str(c) for c in frame.columns]
        missing = [c for c in self.geometry if c not in columns]
        if missing:
            raise InvalidRequestError(
                f"a {kind} table needs the columns {', '.join(self.geometry)} (dataset voxels); "
                f"{', '.join(missing)} missing from {columns}")
        self.has_id = "id" in columns
        taken = {*self.geometry, "id"}
        if relationships is None:
            self.relationships = [c for c in columns if c not in taken and self._default_rel(
                c, frame[c])]
        else:
            if isinstance(relationships, str) or not all(isinstance(r, str)
                                                          for r in relationships):
                raise InvalidRequestError(
                    f"relationships must be a list of column names, got {relationships!r}")
            self.relationships = list(relationships)
        for r in self.relationships:
            if r not in columns or r in taken:
                raise InvalidRequestError(f"relationship {r!r} is not a column of the table "
                                          f"(besides geometry and id): {columns}")
        taken |= set(self.relationships)
        if properties is None:
            specs = [PropertySpec(c, _infer_type(c, frame[c])) for c in columns if c not in taken]
        else:
            if isinstance(properties, (str, Mapping)):
                raise InvalidRequestError("properties must be a list of column names or dicts "
                                          f"{{id, type, ...}}, got {properties!r}")
            specs = []
            for p in properties:
                if isinstance(p, str):
                    if p not in columns:
                        raise InvalidRequestError(f"property {p!r} is not a column: {columns}")
                    specs.append(PropertySpec(p, _infer_type(p, frame[p])))
                else:
                    doc = dict(p) if isinstance(p, Mapping) else p
                    if isinstance(doc, dict) and "type" not in doc and doc.get("id") in columns:
                        doc["type"] = _infer_type(str(doc["id"]), frame[doc["id"]])
                    spec = PropertySpec.from_json(doc, "properties")
                    if spec.id not in columns:
                        raise InvalidRequestError(f"property {spec.id!r} is not a column: "
                                                  f"{columns}")
                    specs.append(spec)
        for s in specs:
            PropertySpec.from_json(s.to_json(), "properties")  # the id's form
            if s.id in taken:
                raise InvalidRequestError(f"column {s.id!r} cannot be both a property and "
                                          "geometry, id or a relationship")
        if len({s.id for s in specs}) != len(specs):
            raise InvalidRequestError(f"properties name a column twice: {[s.id for s in specs]}")
        self.properties = specs
        self.dtype = record_dtype(kind, specs)

    @staticmethod
    def _default_rel(name: str, series: pd.Series) -> bool:
        arr = _numeric(series)
        if arr is not None:
            return arr.dtype == np.uint64 or (arr.dtype.kind in "iu" and (
                name.endswith("_id") or name.endswith("_ids")))
        return _is_listlike(_first_value(series))

    def convert(self, frame: pd.DataFrame, first_id: int) -> Chunk:
        """One chunk's records, ids, boxes and relationships; InvalidRequestError on bad data."""
        if not isinstance(frame, pd.DataFrame):
            raise InvalidRequestError(f"a table chunk must be a pandas DataFrame, got "
                                      f"{type(frame).__name__}")
        columns = [str(c) for c in frame.columns]
        needed = [*self.geometry, *self.relationships, *(s.id for s in self.properties)]
        missing = [c for c in needed if c not in columns]
        if missing or ("id" in columns) != self.has_id:
            raise InvalidRequestError(
                f"every chunk of a table needs the same columns as the first: {needed}"
                f"{' and id' if self.has_id else ''}; this one has {columns}")
        n = len(frame)
        geo = np.empty((n, geometry_width(self.kind)), np.float32)
        for i, c in enumerate(self.geometry):
            arr = _numeric(frame[c])
            if arr is None or arr.dtype.kind == "b":
                raise InvalidRequestError(f"column {c!r} must hold numbers (voxel coordinates), "
                                          f"got {frame[c].dtype} values")
            with np.errstate(over="ignore", invalid="ignore"):
                values = arr.astype(np.float32)
            if not np.isfinite(values).all():
                row = int(np.flatnonzero(~np.isfinite(values))[0])
                raise InvalidRequestError(f"column {c!r} holds {arr[row]!r} at row {row}; "
                                          "coordinates must be finite numbers")
            # stored x y z: the table's z, y, x go to places 2, 1, 0 (and 5, 4, 3)
            geo[:, (2 - i % 3) + 3 * (i // 3)] = values
        if self.has_id:
            raw = _numeric(frame["id"])
            if raw is None or raw.dtype.kind not in "iu":
                raise InvalidRequestError(f"column 'id' must hold integers (uint64 annotation "
                                          f"ids), got {frame['id'].dtype} values")
            if raw.dtype.kind == "i" and len(raw) and raw.min() < 0:
                raise InvalidRequestError(f"column 'id' holds a negative id ({raw.min()}); "
                                          "annotation ids are uint64")
            ids = raw.astype(np.uint64)
        else:
            ids = np.arange(first_id, first_id + n, dtype=np.uint64)
        records = np.zeros(n, self.dtype)
        records["geometry"] = geo
        for s in self.properties:
            records[s.id] = _property_values(frame[s.id], s)
        if self.kind == "point":
            lo = hi = geo
        elif self.kind == "ellipsoid":
            radii = np.abs(geo[:, 3:])
            lo, hi = geo[:, :3] - radii, geo[:, :3] + radii
        else:
            lo, hi = np.minimum(geo[:, :3], geo[:, 3:]), np.maximum(geo[:, :3], geo[:, 3:])
        related = [_related(frame[r], r) for r in self.relationships]
        return Chunk(records, ids, np.ascontiguousarray(lo), np.ascontiguousarray(hi), related)


def _hex(rows: np.ndarray) -> list[str]:
    return ["#" + bytes(r).hex() for r in rows]


def records_to_frame(kind: str, properties: Sequence[PropertySpec], records: np.ndarray,
                     ids: np.ndarray, relationships: Sequence[str] = (),
                     related: Sequence[Sequence[np.ndarray]] = ()) -> pd.DataFrame:
    """The table of decoded annotations: id, geometry (z y x order), properties (info order),
    relationships (a uint64 column when every row has at most one id, 0 for none; else a
    column of lists)."""
    geo = records["geometry"]
    data: dict[str, Any] = {"id": np.asarray(ids, np.uint64)}
    for i, c in enumerate(GEOMETRY_COLUMNS[kind]):
        data[c] = geo[:, (2 - i % 3) + 3 * (i // 3)].astype(np.float32)
    for p in properties:
        values = records[p.id]
        if p.type in ("rgb", "rgba"):
            data[p.id] = _hex(np.asarray(values))
        else:
            data[p.id] = values.astype(values.dtype.newbyteorder("="))
    for name, rows in zip(relationships, related, strict=True):
        if all(len(r) <= 1 for r in rows):
            data[name] = np.array([int(r[0]) if len(r) else 0 for r in rows], np.uint64)
        else:
            data[name] = pd.Series([[int(x) for x in r] for r in rows], dtype=object)
    return pd.DataFrame(data)
