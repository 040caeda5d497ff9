"""Writing Neuroglancer precomputed annotation layers: :func:`write_annotations`.

Writing streams: a first pass checks and encodes each chunk of the table and spills the
records (and relationship lists) to files in a temporary directory, keeping per annotation
only its id and its box (about 20-32 bytes); the spatial index is planned on those boxes
(:mod:`.spatial`); then the by-id index, the relationship indexes and the spatial levels are
written one batch of files, one bucket of segments or one shard at a time, reading the
records they need back from the spill.  The ``info`` is written last, so a layer whose write
failed half way has no info of its own (or keeps its old one).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ...errors import InvalidRequestError, check_flag, refuses_unknown_keywords
from ...geometry import Box, VoxelSize
from ...progress import progress_bar
from ...storage import (
    UNITS_NM,
    Directory,
    join,
    length_unit_nm,
    local_path,
    remove_tree,
)
from ...storage.sharding import ShardingSpec, encode_shard
from .encoding import (
    ANNOTATION_INFO_TYPE,
    KINDS,
    compressed_morton_code,
    encode_multiple,
    kind_of,
    storage_order,
)
from .reader import annotation_location, read_info
from .spatial import Level, plan_levels
from .table import Chunk, Schema

__all__ = ["write_annotations"]

#: annotations per batch of by-id files / per gathered group of spatial cells
_BATCH = 65536
#: pairs (segment, annotation) per bucket file of a relationship index
_PAIRS_PER_BUCKET = 1 << 18
#: annotations per shard of a sharded spatial level (about)
_SPATIAL_PER_SHARD = 1 << 18


# -- writing --------------------------------------------------------------------------------------
def _chunks(table: object) -> Iterator[pd.DataFrame]:
    if isinstance(table, pd.DataFrame):
        yield table
        return
    if isinstance(table, (str, bytes, Mapping)) or not isinstance(table, Iterable):
        raise InvalidRequestError(
            f"table must be a pandas DataFrame or an iterable of DataFrame chunks, got "
            f"{type(table).__name__}")
    for chunk in table:
        if not isinstance(chunk, pd.DataFrame):
            raise InvalidRequestError(f"table chunks must be pandas DataFrames, got "
                                      f"{type(chunk).__name__}")
        yield chunk


def _dimensions(voxel_size: object) -> dict[str, list[Any]]:
    size = VoxelSize.of(voxel_size)
    per_nm = length_unit_nm(size.unit)
    if per_nm is None:
        raise InvalidRequestError(f"voxel_size unit {size.unit!r} is not one of "
                                  f"{', '.join(UNITS_NM)}")
    return {axis: [v * per_nm * 1e-9, "m"] for axis, v in zip("xyz", size.xyz(), strict=True)}


def relationship_tails(related: Sequence[tuple[np.ndarray, np.ndarray]], n: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The by-id tails of ``n`` rows (per relationship ``u32 count, u64 ids[count]``), all in
    one byte array, and each row's size; vectorised (no Python object per row)."""
    sizes = np.zeros(n, np.int64)
    for counts, _ in related:
        sizes += 4 + 8 * counts.astype(np.int64)
    buf = np.zeros(int(sizes.sum()), np.uint8)
    at = np.cumsum(sizes) - sizes  # where each row's tail starts
    for counts, flat in related:
        buf[at[:, None] + np.arange(4)] = counts.astype("<u4").view(np.uint8).reshape(n, 4)
        at += 4
        if len(flat):
            c = counts.astype(np.int64)
            row = np.repeat(np.arange(n), c)
            place = np.arange(len(flat)) - np.repeat(np.cumsum(c) - c, c)
            buf[(at[row] + 8 * place)[:, None] + np.arange(8)] = \
                flat.astype("<u8").view(np.uint8).reshape(-1, 8)
        at += 8 * counts.astype(np.int64)
    return buf, sizes


class _Spill:
    """The first pass's files: records, relationship tails and (segment, annotation) pairs."""

    def __init__(self, root: str, relationships: int) -> None:
        self.root = root
        self.records = open(os.path.join(root, "records.bin"), "wb")
        self.tails = open(os.path.join(root, "tails.bin"), "wb") if relationships else None
        self.pairs = [open(os.path.join(root, f"pairs{r}.bin"), "wb")
                      for r in range(relationships)]
        self.tail_ends: list[np.ndarray] = []
        self.tail_at = 0
        self.n = 0

    def add(self, chunk: Chunk) -> None:
        n = len(chunk.ids)
        self.records.write(chunk.records.tobytes())
        if self.tails is not None:
            buf, sizes = relationship_tails(chunk.related, n)
            self.tails.write(buf.tobytes())
            self.tail_ends.append(self.tail_at + np.cumsum(sizes))
            self.tail_at += int(sizes.sum())
            for (counts, flat), out in zip(chunk.related, self.pairs, strict=True):
                rows = np.repeat(np.arange(self.n, self.n + n, dtype=np.uint64), counts)
                out.write(np.stack([flat.astype("<u8"), rows.astype("<u8")], axis=1).tobytes())
        self.n += n

    def close(self) -> None:
        for f in (self.records, self.tails, *self.pairs):
            if f is not None:
                f.close()

    def tail_offsets(self) -> np.ndarray:
        ends = np.concatenate([np.zeros(1, np.int64), *self.tail_ends])
        return ends


class _Reader:
    """Records (and by-id encodings) of annotations by index, read back from the spill."""

    def __init__(self, spill: _Spill, dtype: np.dtype[Any], ids: np.ndarray) -> None:
        self.path = spill.records.name
        self.dtype = dtype
        self.n = spill.n
        self.ids = ids
        self.tails_path = spill.tails.name if spill.tails is not None else None
        self.tail_offsets = spill.tail_offsets() if self.tails_path else None

    def records(self, indices: np.ndarray) -> np.ndarray:
        if not len(indices) or not self.n:
            return np.zeros(0, self.dtype)
        mm = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n,))
        try:
            return np.array(mm[indices])
        finally:
            del mm

    def singles(self, indices: np.ndarray) -> list[bytes]:
        recs = self.records(indices)
        if self.tails_path is None or self.tail_offsets is None:
            return [r.tobytes() for r in recs]
        with open(self.tails_path, "rb") as f:
            out = []
            for r, i in zip(recs, indices.tolist(), strict=True):
                a, b = int(self.tail_offsets[i]), int(self.tail_offsets[i + 1])
                f.seek(a)
                out.append(r.tobytes() + f.read(b - a))
        return out


def _clear(location: str, keys: Iterable[str]) -> None:
    """Remove the index directories an earlier annotation layer here had."""
    for key in keys:
        if not key or "/" in key.strip("/") or key.startswith("."):
            continue
        remove_tree(join(location, key))


def _old_keys(info: Mapping[str, Any]) -> list[str]:
    keys = [str((info.get("by_id") or {}).get("key", ""))]
    keys += [str(r.get("key", "")) for r in info.get("relationships") or [] if isinstance(r, dict)]
    keys += [str(s.get("key", "")) for s in info.get("spatial") or [] if isinstance(s, dict)]
    return keys


@refuses_unknown_keywords
def write_annotations(
    url: str | os.PathLike[str],
    table: pd.DataFrame | Iterable[pd.DataFrame],
    *,
    voxel_size: object,
    kind: str = "point",
    properties: Sequence[object] | None = None,
    relationships: Sequence[str] | None = None,
    sharded: bool = False,
    limit: int = 10000,
    progress: bool = False,
    bounds: Box | None = None,
) -> None:
    """Write ``table`` as a Neuroglancer precomputed annotation layer at ``url``.

    ``table`` is a DataFrame, or an iterable of DataFrame chunks (streamed: memory holds one
    chunk, then ~20-32 bytes per annotation), with ``z, y, x`` in dataset voxels (lines and
    boxes also ``z2, y2, x2``, ellipsoids the radii ``rz, ry, rx``), an optional ``id``
    (uint64; default 1..n), property and relationship columns.  ``properties``: column names
    or dicts {id, type, description, enum_values, enum_labels}; default every other column,
    typed from its dtype (bool and uint8 -> uint8, ..., float -> float32, int64 -> int32,
    '#rrggbb' -> rgb).  ``relationships``: column names; default the uint64 columns, the
    integer columns named ``*_id`` / ``*_ids`` and list-valued ones; each row holds a
    segment id (0: none) or a list of them.  ``voxel_size`` (z, y, x nm, or a VoxelSize)
    gives the layer's dimensions; ``bounds`` (a Box in voxels) its bounds, else those of the
    data.  The spatial index has levels whose cells hold at most ``limit`` annotations
    (:mod:`voxgate.formats.annotation.spatial`); ``sharded=True`` stores every index as
    ``neuroglancer_uint64_sharded_v1`` shards.
    """
    location = annotation_location(url)
    if location.startswith(("http://", "https://")):
        raise InvalidRequestError(f"{url} is served over HTTP, which is read-only; write to a "
                                  "local path, gs:// or s3://")
    kind = kind_of(kind)
    sharded = check_flag(sharded, "sharded")
    progress = check_flag(progress, "progress")
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise InvalidRequestError(f"limit must be a positive integer (annotations per spatial "
                                  f"cell), got {limit!r}")
    if bounds is not None and not isinstance(bounds, Box):
        raise InvalidRequestError(f"bounds must be a voxgate.Box in voxels, got {bounds!r}")
    dimensions = _dimensions(voxel_size)
    old = read_info(location)
    if old is not None and old.get("@type") != ANNOTATION_INFO_TYPE:
        raise InvalidRequestError(
            f"{join(location, 'info')} describes {old.get('@type') or old.get('type')!r}, not "
            "an annotation layer; write annotations into a directory of their own (e.g. a "
            "sub-directory of the image layer)")
    with tempfile.TemporaryDirectory(prefix="voxgate-annotations-") as tmp:
        schema: Schema | None = None
        spill: _Spill | None = None
        ids_parts, lo_parts, hi_parts = [], [], []
        try:
            for frame in _chunks(table):
                if schema is None:
                    schema = Schema(kind, frame, properties, relationships)
                    spill = _Spill(tmp, len(schema.relationships))
                assert spill is not None
                chunk = schema.convert(frame, spill.n + 1)
                spill.add(chunk)
                ids_parts.append(chunk.ids)
                lo_parts.append(chunk.lo)
                if kind != "point":
                    hi_parts.append(chunk.hi)
        finally:
            if spill is not None:
                spill.close()
        if schema is None or spill is None:
            raise InvalidRequestError("table has no chunks; pass a DataFrame (it may be empty)")
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.uint64)
        lo = np.concatenate(lo_parts) if lo_parts else np.zeros((0, 3), np.float32)
        hi = (np.concatenate(hi_parts) if hi_parts else np.zeros((0, 3), np.float32)) \
            if kind != "point" else None
        del ids_parts, lo_parts, hi_parts
        if len(np.unique(ids)) != len(ids):
            values, counts = np.unique(ids, return_counts=True)
            raise InvalidRequestError(f"annotation ids must be unique; {values[counts > 1][:10]}"
                                      " appear more than once")
        lower, upper = _bounds(lo, hi, bounds)
        scale = np.array([dimensions[a][0] for a in "xyz"], np.float64)
        levels = plan_levels(lo, hi, lower, upper, int(limit), scale=scale)
        del lo, hi
        reader = _Reader(spill, schema.dtype, ids)
        if old is not None:
            _clear(location, _old_keys(old))
        info: dict[str, Any] = {
            "@type": ANNOTATION_INFO_TYPE,
            "dimensions": dimensions,
            "lower_bound": lower.tolist(),
            "upper_bound": upper.tolist(),
            "annotation_type": KINDS[kind],
            "properties": [p.to_json() for p in storage_order(schema.properties)],
            "relationships": [],
            "by_id": {"key": "by_id"},
            "spatial": [],
        }
        info["by_id"].update(_write_by_id(location, reader, sharded, progress))
        for r, name in enumerate(schema.relationships):
            relation: dict[str, Any] = {"id": name, "key": f"rel_{name}"}
            relation.update(_write_relationship(location, relation["key"], reader,
                                                os.path.join(tmp, f"pairs{r}.bin"), sharded,
                                                progress, name))
            info["relationships"].append(relation)
        for i, level in enumerate(levels):
            entry: dict[str, Any] = {
                "key": f"spatial{i}", "grid_shape": level.grid_shape.tolist(),
                "chunk_size": level.chunk_size.tolist(), "limit": int(limit)}
            entry.update(_write_level(location, entry["key"], level, reader, sharded, limit,
                                      progress, i))
            info["spatial"].append(entry)
        Directory(location).put_many([("info", json.dumps(info, indent=1).encode())])


def _bounds(lo: np.ndarray, hi: np.ndarray | None, box: Box | None
            ) -> tuple[np.ndarray, np.ndarray]:
    """The layer's lower and upper bound (x y z): the Box, or whole voxels around the data."""
    top = lo if hi is None else hi
    if box is not None:
        lower = np.array(box.start[::-1], np.float64)
        upper = np.array(box.stop[::-1], np.float64)
        if len(lo) and ((lo < lower).any() or (top > upper).any()):
            raise InvalidRequestError(
                f"annotations reach from {lo.min(axis=0)[::-1].tolist()} to "
                f"{top.max(axis=0)[::-1].tolist()} (z, y, x), outside bounds {box}")
        return lower, upper
    if not len(lo):
        return np.zeros(3), np.ones(3)
    return np.floor(lo.min(axis=0)).astype(np.float64), \
        np.floor(top.max(axis=0)).astype(np.float64) + 1


class _Files(Directory):
    """An index directory this write created afresh (an older one was removed first).  On
    local disks each file is written to ``.<name>.tmp`` and renamed (atomic as
    ``Directory.put_many``, without its random temporary names, thread pool and clean-up of
    compressed variants that a fresh directory has none of: a third of the system calls, which
    matters at one file per annotation)."""

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        if not self.local:
            super().put_many(items)
            return
        directory = local_path(self.location)
        os.makedirs(directory, exist_ok=True)
        for name, data in items:
            path = os.path.join(directory, name)
            tmp = os.path.join(directory, f".{name}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)


def _put_shard(directory: Directory, spec: ShardingSpec, shard: int,
               entries: Mapping[int, bytes]) -> None:
    data = encode_shard(spec, {k: (b"", v) for k, v in entries.items()})
    directory.put_many([(spec.shard_name(shard), data)])


def _groups(keys: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(key, the positions holding it) for each distinct key, ascending."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    cuts = np.flatnonzero(np.diff(sorted_keys)) + 1
    for part in np.split(order, cuts):
        if len(part):
            yield int(keys[part[0]]), part


def _write_by_id(location: str, reader: _Reader, sharded: bool, progress: bool
                 ) -> dict[str, Any]:
    directory = _Files(join(location, "by_id"))
    n = reader.n
    if not sharded:
        with progress_bar(progress, n, "annotations by id") as bar:
            for at in range(0, n, _BATCH):
                idx = np.arange(at, min(n, at + _BATCH))
                singles = reader.singles(idx)
                directory.put_many((str(int(reader.ids[i])), s)
                                   for i, s in zip(idx.tolist(), singles, strict=True))
                bar.advance(len(idx))
        return {}
    spec = ShardingSpec.for_count(n)
    shard_of, _ = spec.locate(reader.ids)
    groups = list(_groups(shard_of))
    with progress_bar(progress, len(groups), "annotations by id (shards)") as bar:
        for shard, idx in groups:
            idx = np.sort(idx)
            singles = reader.singles(idx)
            _put_shard(directory, spec, shard, {int(reader.ids[i]): s for i, s in
                                                zip(idx.tolist(), singles, strict=True)})
            bar.advance()
    return {"sharding": spec.to_json()}


def _write_relationship(location: str, key: str, reader: _Reader, pairs_path: str,
                        sharded: bool, progress: bool, name: str) -> dict[str, Any]:
    directory = _Files(join(location, key))
    total = os.path.getsize(pairs_path) // 16
    spec = ShardingSpec.for_count(total) if sharded else None
    buckets = (1 << spec.shard_bits) if spec is not None else \
        max(1, math.ceil(total / _PAIRS_PER_BUCKET))
    bucket_dir = pairs_path + ".buckets"
    os.makedirs(bucket_dir, exist_ok=True)

    def bucket_of(segments: np.ndarray) -> np.ndarray:
        if spec is not None:
            return spec.locate(segments)[0].astype(np.int64)
        return (segments % np.uint64(buckets)).astype(np.int64)

    # scatter the pairs into buckets, a slice of the file at a time
    mm = np.memmap(pairs_path, dtype="<u8", mode="r", shape=(total, 2)) if total else None
    used: set[int] = set()
    for at in range(0, total, _PAIRS_PER_BUCKET):
        assert mm is not None
        part = np.array(mm[at:at + _PAIRS_PER_BUCKET])
        for b, pos in _groups(bucket_of(part[:, 0])):
            with open(os.path.join(bucket_dir, str(b)), "ab") as f:
                f.write(part[pos].tobytes())
            used.add(b)
    del mm
    with progress_bar(progress, len(used), f"relationship {name}") as bar:
        for b in sorted(used):
            pairs = np.fromfile(os.path.join(bucket_dir, str(b)), dtype="<u8").reshape(-1, 2)
            pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
            records = reader.records(pairs[:, 1].astype(np.int64))
            ids = reader.ids[pairs[:, 1].astype(np.int64)]
            cuts = np.flatnonzero(np.diff(pairs[:, 0])) + 1
            starts = np.concatenate([[0], cuts])
            stops = np.concatenate([cuts, [len(pairs)]])
            blobs = {int(pairs[a, 0]): encode_multiple(records[a:z], ids[a:z])
                     for a, z in zip(starts.tolist(), stops.tolist(), strict=True)}
            if spec is not None:
                _put_shard(directory, spec, b, blobs)
            else:
                directory.put_many((str(k), v) for k, v in blobs.items())
            bar.advance()
    return {"sharding": spec.to_json()} if spec is not None else {}


def _cell_bounds(level: Level) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop positions (in level.indices) of each cell's run."""
    cells = level.cells
    if not len(cells):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = np.flatnonzero((np.diff(cells, axis=0) != 0).any(axis=1)) + 1
    return np.concatenate([[0], change]), np.concatenate([change, [len(cells)]])


def _write_level(location: str, key: str, level: Level, reader: _Reader, sharded: bool,
                 limit: int, progress: bool, number: int) -> dict[str, Any]:
    directory = _Files(join(location, key))
    starts, stops = _cell_bounds(level)
    cells = level.cells[starts] if len(starts) else np.zeros((0, 3), np.int64)

    def blob(a: int, z: int, records: np.ndarray, offset: int) -> bytes:
        return encode_multiple(records[a - offset:z - offset],
                               reader.ids[level.indices[a:z]])

    if not sharded:
        with progress_bar(progress, len(starts), f"spatial level {number}") as bar:
            c = 0
            while c < len(starts):
                d = c + 1  # cells c..d-1 gathered together, about _BATCH annotations
                while d < len(starts) and stops[d] - starts[c] <= _BATCH:
                    d += 1
                records = reader.records(level.indices[starts[c]:stops[d - 1]])
                directory.put_many(
                    ("_".join(str(int(v)) for v in cells[i]),
                     blob(int(starts[i]), int(stops[i]), records, int(starts[c])))
                    for i in range(c, d))
                bar.advance(d - c)
                c = d
        return {}
    spec = ShardingSpec.for_count(max(1, len(starts)),
                                  per_shard=max(1, _SPATIAL_PER_SHARD // max(1, limit)))
    codes = compressed_morton_code(cells, level.grid_shape.tolist())
    shard_of, _ = spec.locate(codes)
    groups = list(_groups(shard_of))
    with progress_bar(progress, len(groups), f"spatial level {number} (shards)") as bar:
        for shard, members in groups:
            entries = {}
            for i in np.sort(members).tolist():
                a, z = int(starts[i]), int(stops[i])
                records = reader.records(level.indices[a:z])
                entries[int(codes[i])] = blob(a, z, records, a)
            _put_shard(directory, spec, shard, entries)
            bar.advance()
    return {"sharding": spec.to_json()}
