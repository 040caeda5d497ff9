"""Reading Neuroglancer precomputed annotation layers: :func:`read_annotations` (every
annotation from the by-id index, some by id, or those in a box from the spatial index) and
:func:`read_related` (a segment's annotations from a relationship index)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ...errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    RemoteNotFoundError,
    refuses_unknown_keywords,
)
from ...geometry import Box
from ...meta import check_ids
from ...storage import Directory, join, split_query, split_url
from ...storage.sharding import ShardedStore, ShardingSpec, decode_shard
from .._common import segment_id
from ..layer import read_info as read_dir_info
from .encoding import (
    ANNOTATION_INFO_TYPE,
    PropertySpec,
    compressed_morton_code,
    decode_multiple,
    decode_single,
    kind_from_info,
    morton_to_cells,
    record_dtype,
)
from .spatial import cell_ranges
from .table import records_to_frame

__all__ = ["annotation_location", "read_annotations", "read_info", "read_related"]

#: spatial cells asked for by name at most; more are found by listing the level
_MAX_NAMED_CELLS = 4096
#: above this many annotations found in a box, a sharded by-id index is read shard by shard
_WHOLE_SHARDS = 50_000


def _plain(data: bytes) -> bool:
    return True  # annotation files are binary as stored; never sniffed for gzip


def annotation_location(url: str | os.PathLike[str]) -> str:
    """The storage location of an annotation layer named by a voxgate URL or a bare one."""
    scheme, location = split_url(url)  # refuses a non-path url
    if scheme not in (None, "precomputed"):
        raise InvalidRequestError(
            f"annotation layers are Neuroglancer precomputed directories; {url!r} names a "
            f"{scheme}:// volume (use precomputed://<location> or a bare path)")
    return location.rstrip("/")


def read_info(location: str) -> dict[str, Any] | None:
    """The ``info`` JSON object at ``location``, or None when there is none."""
    return read_dir_info(Directory(location))


def _child(location: str, key: str, where: str) -> str:
    """Where an index ``key`` of the info points: a sub-directory, or (Neuroglancer's rule) a
    '/'-separated path relative to the layer, whose '..' parts climb out of it.  Resolved
    here, since object stores and HTTP servers take 'a/../b' as a literal name.  An http(s)
    location's query (a token) stays at the end."""
    location, query = split_query(location)
    out = location.rstrip("/")
    for part in key.split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            out = f"{out}/{part}"
            continue
        head, sep, _ = out.rpartition("/")
        if not sep or head.endswith(":/"):  # nothing above a bucket, host or bare name
            raise InvalidRequestError(f"{where}: key {key!r} climbs above {location}")
        out = head
    return out + query


# -- the layer ----------------------------------------------------------------------------------
class _Layer:
    """An annotation layer's info, checked."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        self.location = annotation_location(url)
        info = read_info(self.location)
        where = join(self.location, "info")
        if info is None:
            raise RemoteNotFoundError(f"{where} does not exist: no annotation layer at {url}")
        if info.get("@type") != ANNOTATION_INFO_TYPE:
            raise InvalidRequestError(
                f"{where} describes {info.get('@type') or info.get('type')!r}, not an "
                f"annotation layer ({ANNOTATION_INFO_TYPE})")
        self.where = where
        self.kind = kind_from_info(info.get("annotation_type"), where)
        dims = info.get("dimensions")
        if not isinstance(dims, dict) or sorted(dims) != ["x", "y", "z"]:
            raise InvalidRequestError(f"{where}: voxgate reads 3-D annotation layers whose "
                                      f"dimensions are x, y and z (in any order), got {dims!r}")
        # the key order of dimensions is the order of every position, bound and grid cell
        # stored in the layer (Neuroglancer's writer keeps the order it is given, e.g. z y x);
        # voxgate works in x y z: axes[i] is where x, y, z (i = 0, 1, 2) sit in the layer
        self.axes = np.array([list(dims).index(a) for a in "xyz"])
        try:
            self.lower = np.asarray(info["lower_bound"], np.float64).reshape(3)[self.axes]
            self.upper = np.asarray(info["upper_bound"], np.float64).reshape(3)[self.axes]
        except (KeyError, TypeError, ValueError):
            raise CorruptChunkError(f"{where}: lower_bound and upper_bound must be 3 numbers",
                                    chunk=where) from None
        self.properties = [PropertySpec.from_json(p, f"{where} properties")
                           for p in info.get("properties") or []]
        self.dtype = record_dtype(self.kind, self.properties)
        self.relationships = [r for r in info.get("relationships") or []]
        for r in self.relationships:
            if not isinstance(r, dict) or not isinstance(r.get("id"), str) or \
                    not isinstance(r.get("key"), str):
                raise InvalidRequestError(f"{where}: each relationship needs an id and a key, "
                                          f"got {r!r}")
        by_id = info.get("by_id")
        if not isinstance(by_id, dict) or not isinstance(by_id.get("key"), str):
            raise InvalidRequestError(f"{where}: by_id must be an object with a key")
        self.by_id: dict[str, Any] = by_id
        self.spatial = info.get("spatial") or []
        self.info = info

    def xyz(self, records: np.ndarray) -> np.ndarray:
        """``records`` with their geometry in x y z order (a copy when the layer's differs)."""
        if (self.axes == np.arange(3)).all():
            return records
        out = records.copy()
        width = out["geometry"].shape[1]
        out["geometry"] = records["geometry"][:, np.concatenate(
            [self.axes + 3 * k for k in range(width // 3)])]
        return out

    def sharding(self, entry: Mapping[str, Any]) -> ShardingSpec | None:
        doc = entry.get("sharding")
        return ShardingSpec.from_json(doc, self.where) if doc else None

    # -- by id ----------------------------------------------------------------------------------
    def singles(self, ids: Sequence[int] | None) -> dict[int, bytes]:
        """{id: by-id encoding}: of ``ids`` (absent ones left out), or of every id stored."""
        key = self.by_id["key"]
        directory = Directory(_child(self.location, key, self.where))
        spec = self.sharding(self.by_id)
        if spec is not None:
            store = ShardedStore(directory.location, spec)
            if ids is None:
                out: dict[int, bytes] = {}
                for name in store.shard_files():
                    data = directory.get(name, plain=_plain)
                    if data is not None:
                        out.update({k: v for k, (_, v) in decode_shard(
                            spec, data, directory.path(name)).items()})
                return out
            got = store.get_values(ids)
            return {k: v for k, v in got.items() if v is not None}
        if ids is None:
            try:
                names = directory.list()
            except RemoteNotFoundError:
                names = []
            ids = [int(n) for n in names if n.isdigit()]
        got_files = directory.get_many([str(i) for i in ids], plain=_plain)
        return {int(k): v for k, v in got_files.items() if v is not None}

    def decode_singles(self, singles: Mapping[int, bytes]
                       ) -> tuple[np.ndarray, np.ndarray, list[list[np.ndarray]]]:
        ids = np.array(sorted(singles), dtype=np.uint64)
        records = np.zeros(len(ids), self.dtype)
        related: list[list[np.ndarray]] = [[] for _ in self.relationships]
        by_id = _child(self.location, self.by_id["key"], self.where)
        for i, k in enumerate(ids.tolist()):
            rec, rel = decode_single(singles[k], self.dtype, len(self.relationships),
                                     join(by_id, str(k)))
            records[i] = rec[0]
            for r, values in enumerate(rel):
                related[r].append(values)
        return self.xyz(records), ids, related

    # -- spatial --------------------------------------------------------------------------------
    def cells(self, level: int, box: Box | None) -> list[bytes]:
        """The encoded lists of the cells of one level that meet ``box`` (all when None)."""
        entry = self.spatial[level]
        try:  # in x y z order, like self.lower; cells are named in the layer's order
            grid = np.asarray(entry["grid_shape"], np.int64).reshape(3)[self.axes]
            chunk = np.asarray(entry["chunk_size"], np.float64).reshape(3)[self.axes]
        except (KeyError, TypeError, ValueError):
            raise CorruptChunkError(f"{self.where}: spatial level {level} needs grid_shape and "
                                    "chunk_size (3 numbers each)", chunk=self.where) from None
        layer_grid = grid[np.argsort(self.axes)]
        directory = Directory(_child(self.location, str(entry.get("key")), self.where))
        spec = self.sharding(entry)
        if box is None:
            first, last = np.zeros(3, np.int64), grid - 1
        else:
            lo = np.array(box.start[::-1], np.float64)
            hi = np.array(box.stop[::-1], np.float64)
            first, last = (v[0] for v in cell_ranges(lo[None], hi[None], self.lower, chunk, grid))
        count = int(np.prod(last - first + 1))
        if count <= _MAX_NAMED_CELLS:
            axes = [np.arange(a, b + 1) for a, b in zip(first.tolist(), last.tolist(),
                                                         strict=True)]
            wanted = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        else:  # too many to ask for by name: list the cells that exist
            if spec is not None:
                codes = np.array(ShardedStore(directory.location, spec).keys(), np.uint64)
                stored = morton_to_cells(codes, layer_grid.tolist())
            else:
                try:
                    names = directory.list()
                except CapabilityNotSupportedError:
                    raise CapabilityNotSupportedError(
                        f"{directory.location} is served over HTTP, which cannot list its "
                        f"cells; the box meets {count} cells of level {level}: read a smaller "
                        "box") from None
                except RemoteNotFoundError:
                    names = []
                parsed = [n.split("_") for n in names]
                stored = np.array([[int(v) for v in p] for p in parsed
                                   if len(p) == 3 and all(v.isdigit() for v in p)],
                                  np.int64).reshape(-1, 3)
            stored = stored[:, self.axes]
            inside = ((stored >= first) & (stored <= last)).all(axis=1)
            wanted = stored[inside]
        wanted = wanted[:, np.argsort(self.axes)]  # x y z -> the layer's order
        if spec is not None:
            codes = compressed_morton_code(wanted, layer_grid.tolist())
            got = ShardedStore(directory.location, spec).get_values(codes.tolist())
            return [v for v in got.values() if v is not None]
        files = directory.get_many(["_".join(str(int(v)) for v in c) for c in wanted],
                                   plain=_plain)
        return [v for v in files.values() if v is not None]

    def spatial_records(self, box: Box | None) -> tuple[np.ndarray, np.ndarray]:
        parts, id_parts = [], []
        for level in range(len(self.spatial)):
            for i, data in enumerate(self.cells(level, box)):
                records, ids = decode_multiple(data, self.dtype,
                                               f"{self.where} spatial level {level} cell {i}")
                parts.append(records)
                id_parts.append(ids)
        if not parts:
            return np.zeros(0, self.dtype), np.zeros(0, np.uint64)
        records, ids = np.concatenate(parts), np.concatenate(id_parts)
        ids, first = np.unique(ids, return_index=True)  # an extended one sits in many cells
        return self.xyz(records[first]), ids


def _in_box(kind: str, records: np.ndarray, box: Box) -> np.ndarray:
    geo = records["geometry"].astype(np.float64)
    start = np.array(box.start[::-1], np.float64)
    stop = np.array(box.stop[::-1], np.float64)
    if kind == "point":
        return np.asarray(((geo >= start) & (geo < stop)).all(axis=1))
    if kind == "ellipsoid":
        radii = np.abs(geo[:, 3:])
        lo, hi = geo[:, :3] - radii, geo[:, :3] + radii
    else:
        lo, hi = np.minimum(geo[:, :3], geo[:, 3:]), np.maximum(geo[:, :3], geo[:, 3:])
    return np.asarray(((hi >= start) & (lo < stop)).all(axis=1))


@refuses_unknown_keywords
def read_annotations(url: str | os.PathLike[str], *, box: Box | None = None,
                     ids: Iterable[int] | None = None) -> pd.DataFrame:
    """The annotations of a precomputed annotation layer as a table (the columns
    :func:`write_annotations` takes: ``id``, ``z, y, x`` ..., properties, relationships),
    sorted by id.

    Without ``box`` or ``ids`` every annotation is read from the by-id index (over HTTP,
    where an unsharded index cannot be listed, from the spatial index).  ``ids`` reads those
    annotations from the by-id index (absent ones left out).  ``box`` (a Box in voxels)
    reads only the spatial cells that meet it, at every level (each annotation is stored at
    one level), and keeps the annotations that meet the box; their relationships come from
    the by-id index.
    """
    layer = _Layer(url)
    names = [str(r["id"]) for r in layer.relationships]
    if box is not None and ids is not None:
        raise InvalidRequestError("pass box or ids, not both")
    if box is not None and not isinstance(box, Box):
        raise InvalidRequestError(f"box must be a voxgate.Box in voxels, got {box!r}")
    if box is None and ids is None and layer.location.startswith(("http://", "https://")) \
            and not layer.by_id.get("sharding") and layer.spatial:
        box = Box(np.floor(layer.lower[::-1]).astype(int).tolist(),
                  (np.ceil(layer.upper[::-1]).astype(int) + 1).tolist())
    if box is None:
        wanted = check_ids(ids)
        records, found, related = layer.decode_singles(layer.singles(wanted))
        return records_to_frame(layer.kind, layer.properties, records, found, names, related)
    records, found = layer.spatial_records(box)
    keep = _in_box(layer.kind, records, box)
    records, found = records[keep], found[keep]
    related = [[] for _ in names]
    if names and len(found):
        wanted = found.tolist()
        if layer.by_id.get("sharding") and len(wanted) > _WHOLE_SHARDS:
            every = layer.singles(None)  # whole shards: far fewer reads than one per id
            singles = {i: every[i] for i in wanted if i in every}
        else:
            singles = layer.singles(wanted)
        missing = [i for i in found.tolist() if i not in singles]
        if missing:
            raise CorruptChunkError(f"{layer.where}: annotations {missing[:10]} are in the "
                                    "spatial index but not in the by-id index",
                                    chunk=layer.where)
        _, _, related = layer.decode_singles(singles)
    return records_to_frame(layer.kind, layer.properties, records, found, names, related)


def read_related(url: str | os.PathLike[str], relationship: str, segment: int
                 ) -> pd.DataFrame:
    """The annotations related to ``segment`` through ``relationship`` (from its index:
    id, geometry and properties, sorted by id; empty when the segment has none)."""
    if not isinstance(relationship, str):
        raise InvalidRequestError(
            f"relationship must be a relationship's name (a str), got {relationship!r}")
    seg = segment_id(segment, "segment")
    layer = _Layer(url)
    entry = next((r for r in layer.relationships if r["id"] == relationship), None)
    if entry is None:
        raise InvalidRequestError(f"{layer.where} has no relationship {relationship!r}; it has "
                                  f"{[r['id'] for r in layer.relationships]}")
    directory = Directory(_child(layer.location, entry["key"], layer.where))
    spec = layer.sharding(entry)
    if spec is not None:
        data = ShardedStore(directory.location, spec).get_values([seg])[seg]
    else:
        data = directory.get(str(seg), plain=_plain)
    if data is None:
        records, ids = np.zeros(0, layer.dtype), np.zeros(0, np.uint64)
    else:
        records, ids = decode_multiple(data, layer.dtype, directory.path(str(seg)))
        order = np.argsort(ids, kind="stable")
        records, ids = layer.xyz(records[order]), ids[order]
    return records_to_frame(layer.kind, layer.properties, records, ids)
