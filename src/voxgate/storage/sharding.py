"""Neuroglancer's sharded layout (``neuroglancer_uint64_sharded_v1``) for data keyed by a
uint64 segment id: multi-resolution meshes and skeletons.

- :class:`ShardingSpec`: the ``sharding`` object of a mesh or skeleton info, checked, with
  :meth:`ShardingSpec.for_count` choosing one for a number of segments;
- :func:`murmurhash3_x86_128`: the hash Neuroglancer applies to keys (low 64 bits), on many
  keys at once;
- :func:`encode_shard` / :func:`decode_shard`: one shard file's bytes;
- :class:`ShardedStore`: reading keys by byte ranges (shard index, minishard index, value;
  all from one version of the shard: a shard replaced between them is read again), listing
  keys, and merging new entries into shards with conditional writes, so two writers
  of one shard never lose each other's entries.

Each entry may carry a *prefix*: bytes stored immediately before its value and not counted in
the index.  Sharded multi-resolution meshes need it (the value is the manifest; the fragment
data sits just before it, and Neuroglancer finds it there); tensorstore's
``neuroglancer_uint64_sharded`` kvstore cannot place bytes outside a value, which is why the
mesh layout has this codec.  Skeletons, whose values stand alone, use tensorstore's kvstore.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorstore as ts

from ..errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    RemoteUnavailableError,
    VoxgateError,
)
from .kvstore import (
    ignores_ranges,
    join,
    kvstore_spec,
    note_ranges_ignored,
    ranges_ignored,
    ts_context,
    ts_errors,
    update_conditionally,
)

__all__ = [
    "SHARDING_TYPE",
    "ShardedStore",
    "ShardingSpec",
    "decode_shard",
    "encode_shard",
    "murmurhash3_x86_128",
]

SHARDING_TYPE = "neuroglancer_uint64_sharded_v1"
_ENCODINGS = ("raw", "gzip")
#: how often a merge into one shard is retried when another writer changed it meanwhile
_MERGE_ATTEMPTS = 20
#: how often the reads of one shard start over when the shard was replaced while they ran
_READ_ATTEMPTS = 20
#: a value's prefix: (key, value) -> number of bytes stored just before the value
PrefixSize = Callable[[int, bytes], int]


# -- the hash -------------------------------------------------------------------------------------
def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _fmix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def murmurhash3_x86_128(keys: np.ndarray | Iterable[int]) -> np.ndarray:
    """The low 64 bits of MurmurHash3_x86_128 (seed 0) of each key's 8 little-endian bytes,
    as Neuroglancer hashes sharded keys; vectorised over a uint64 array."""
    k = np.ascontiguousarray(np.asarray(keys, dtype=np.uint64)).reshape(-1)
    words = k.astype("<u8").view("<u4").reshape(-1, 2).astype(np.uint32)
    c1, c2, c3 = np.uint32(0x239B961B), np.uint32(0xAB0E9789), np.uint32(0x38B34AE5)
    with np.errstate(over="ignore"):
        # 8 bytes: no full 16-byte block; the tail fills k2 (bytes 4-7) and k1 (bytes 0-3)
        k2 = _rotl(words[:, 1] * c2, 16) * c3
        k1 = _rotl(words[:, 0] * c1, 15) * c2
        h1 = k1 ^ np.uint32(8)
        h2 = k2 ^ np.uint32(8)
        h3 = np.full_like(h1, 8)
        h4 = np.full_like(h1, 8)
        h1 = h1 + h2 + h3 + h4
        h2 = h2 + h1
        h3 = h3 + h1
        h4 = h4 + h1
        h1, h2, h3, h4 = _fmix(h1), _fmix(h2), _fmix(h3), _fmix(h4)
        h1 = h1 + h2 + h3 + h4
        h2 = h2 + h1
    return h1.astype(np.uint64) | (h2.astype(np.uint64) << np.uint64(32))


# -- the spec -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardingSpec:
    """A ``neuroglancer_uint64_sharded_v1`` sharding spec."""

    preshift_bits: int = 0
    hash: str = "murmurhash3_x86_128"
    minishard_bits: int = 0
    shard_bits: int = 0
    minishard_index_encoding: str = "gzip"
    data_encoding: str = "raw"

    @classmethod
    def from_json(cls, doc: object, where: str) -> ShardingSpec:
        """Check a ``sharding`` object; InvalidRequestError naming ``where`` when it is wrong."""
        if not isinstance(doc, Mapping):
            raise InvalidRequestError(f"{where}: sharding must be a JSON object, got {doc!r}")
        problems = []
        if doc.get("@type") != SHARDING_TYPE:
            problems.append(f"@type must be {SHARDING_TYPE!r}")
        if doc.get("hash") not in ("identity", "murmurhash3_x86_128"):
            problems.append("hash must be 'identity' or 'murmurhash3_x86_128'")
        bits = [doc.get(k) for k in ("preshift_bits", "minishard_bits", "shard_bits")]
        if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in bits):
            problems.append("preshift_bits, minishard_bits and shard_bits must be integers >= 0")
        elif sum(bits) > 64:  # type: ignore[arg-type]
            problems.append("preshift_bits + minishard_bits + shard_bits must be <= 64")
        for k in ("minishard_index_encoding", "data_encoding"):
            if doc.get(k, "raw") not in _ENCODINGS:
                problems.append(f"{k} must be 'raw' or 'gzip'")
        if problems:
            raise InvalidRequestError(f"{where}: bad sharding spec {dict(doc)}: "
                                      + "; ".join(problems))
        return cls(int(doc["preshift_bits"]), str(doc["hash"]), int(doc["minishard_bits"]),
                   int(doc["shard_bits"]), str(doc.get("minishard_index_encoding", "raw")),
                   str(doc.get("data_encoding", "raw")))

    def to_json(self) -> dict[str, Any]:
        return {"@type": SHARDING_TYPE, "preshift_bits": self.preshift_bits, "hash": self.hash,
                "minishard_bits": self.minishard_bits, "shard_bits": self.shard_bits,
                "minishard_index_encoding": self.minishard_index_encoding,
                "data_encoding": self.data_encoding}

    @classmethod
    def for_count(cls, count: int, *, per_shard: int = 4096, per_minishard: int = 64
                  ) -> ShardingSpec:
        """A spec for about ``count`` segments: hashed keys, shards of about ``per_shard``
        segments (so a shard rewritten to add one segment stays small), minishard indexes of
        about ``per_minishard`` entries (so reading one key reads a small index)."""
        count = max(int(count), 1)
        shard_bits = max(0, math.ceil(math.log2(count / per_shard))) if count > per_shard else 0
        in_shard = count / 2 ** shard_bits
        minishard_bits = (min(8, math.ceil(math.log2(in_shard / per_minishard)))
                          if in_shard > per_minishard else 0)
        return cls(0, "murmurhash3_x86_128", minishard_bits, shard_bits, "gzip", "raw")

    def locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, minishard) of each uint64 key."""
        k = np.asarray(keys, dtype=np.uint64) >> np.uint64(self.preshift_bits)
        h = murmurhash3_x86_128(k) if self.hash == "murmurhash3_x86_128" else k
        minishard = h & np.uint64((1 << self.minishard_bits) - 1)
        shard = (h >> np.uint64(self.minishard_bits)) & np.uint64((1 << self.shard_bits) - 1)
        return shard, minishard

    def shard_name(self, shard: int) -> str:
        """``<shard as lowercase hex, zero-padded to ceil(shard_bits / 4) digits>.shard``."""
        return format(int(shard), "x").zfill(-(-self.shard_bits // 4)) + ".shard"

    @property
    def index_bytes(self) -> int:
        """The size of a shard's fixed index (one start/end pair per minishard)."""
        return 16 << self.minishard_bits


#: the gzip level tensorstore's sharded writes use (its shards are rebuilt byte for byte)
TENSORSTORE_GZIP_LEVEL = 9


def _encode(data: bytes, encoding: str, level: int = 6) -> bytes:
    # (mtime 0: the header zlib writes, as tensorstore's gzip does)
    return gzip.compress(data, compresslevel=level, mtime=0) if encoding == "gzip" else data


def _decode(data: bytes, encoding: str, what: str) -> bytes:
    if encoding != "gzip":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptChunkError(f"{what} is not gzip data: {exc}", chunk=what) from None


# -- one shard file -------------------------------------------------------------------------------
def encode_shard(spec: ShardingSpec, entries: Mapping[int, tuple[bytes, bytes]], *,
                 encoded: bool = False, level: int = 6) -> bytes:
    """The bytes of one shard holding ``entries`` ({key: (prefix, value)}), all of which
    belong in it: ``[shard index][minishard 0: prefix, value, prefix, value, ...][its index]
    [minishard 1 ...]``, each minishard's keys ascending, values per ``data_encoding`` (the
    prefix stays raw), indexes per ``minishard_index_encoding``, gzip at ``level``; empty
    minishards have the index entry (0, 0).  ``encoded``: the values are in
    ``data_encoding`` already (as ``decode_shard(..., values=False)`` gives them).  With
    ``level=TENSORSTORE_GZIP_LEVEL`` this is byte for byte the shard tensorstore writes for
    the same entries."""
    keys = np.fromiter(entries, dtype=np.uint64, count=len(entries))
    _, minishards = spec.locate(keys)
    index = np.zeros((1 << spec.minishard_bits, 2), dtype="<u8")
    parts: list[bytes] = []
    at = 0  # relative to the end of the shard index
    for m in np.unique(minishards).tolist():
        chosen = np.sort(keys[minishards == m])
        rows = np.zeros((3, len(chosen)), dtype="<u8")
        # the first gap counts from the end of the shard index, later ones from the
        # previous value's end
        previous_key, previous_end = 0, 0
        for i, key in enumerate(chosen.tolist()):
            prefix, value = entries[key]
            if not encoded:
                value = _encode(value, spec.data_encoding, level)
            parts.append(prefix)
            parts.append(value)
            start = at + len(prefix)
            rows[:, i] = (key - previous_key, start - previous_end, len(value))
            previous_key, previous_end = key, start + len(value)
            at = previous_end
        blob = _encode(rows.tobytes(), spec.minishard_index_encoding, level)
        parts.append(blob)
        index[m] = (at, at + len(blob))
        at += len(blob)
    return index.tobytes() + b"".join(parts)


def _minishard_entries(spec: ShardingSpec, blob: bytes, what: str, limit: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, absolute value offsets, sizes) listed in one minishard index."""
    raw = _decode(blob, spec.minishard_index_encoding, what)
    if len(raw) % 24:
        raise CorruptChunkError(f"{what} holds {len(raw)} bytes, not a multiple of 24",
                                chunk=what)
    rows = np.frombuffer(raw, dtype="<u8").reshape(3, -1)
    with np.errstate(over="ignore"):
        keys = np.cumsum(rows[0], dtype=np.uint64)
        sizes = rows[2].astype(np.uint64)
        ends = np.cumsum(rows[1] + sizes, dtype=np.uint64)
        starts = ends - sizes + np.uint64(spec.index_bytes)
    if len(keys) and int((starts + sizes).max()) > limit:
        raise CorruptChunkError(f"{what} points past the end of its shard ({limit} bytes)",
                                chunk=what)
    return keys, starts, sizes


def _shard_index(spec: ShardingSpec, data: bytes, what: str) -> np.ndarray:
    if len(data) < spec.index_bytes:
        raise CorruptChunkError(
            f"{what} holds {len(data)} bytes; its shard index alone needs {spec.index_bytes}",
            chunk=what)
    return np.frombuffer(data[:spec.index_bytes], dtype="<u8").reshape(-1, 2)


def decode_shard(spec: ShardingSpec, data: bytes, what: str,
                 prefix_size: PrefixSize | None = None, *, values: bool = True
                 ) -> dict[int, tuple[bytes, bytes]]:
    """Every entry of one shard file: {key: (prefix, value)}, values decoded; ``values``
    False: as stored, in ``data_encoding`` (no prefixes: ``prefix_size`` is ignored)."""
    index = _shard_index(spec, data, what)
    out: dict[int, tuple[bytes, bytes]] = {}
    base = spec.index_bytes
    for m, (start, end) in enumerate(index.tolist()):
        if start == end:
            continue
        if not start < end <= len(data) - base:
            raise CorruptChunkError(f"{what}: minishard {m}'s index range {start}-{end} lies "
                                    f"outside the shard ({len(data)} bytes)", chunk=what)
        keys, starts, sizes = _minishard_entries(
            spec, data[base + start:base + end], f"{what} (minishard {m} index)", len(data))
        for key, s, n in zip(keys.tolist(), starts.tolist(), sizes.tolist(), strict=True):
            if not values:
                out[key] = (b"", data[s:s + n])
                continue
            value = _decode(data[s:s + n], spec.data_encoding, f"{what} (key {key})")
            p = prefix_size(key, value) if prefix_size else 0
            if p > s:
                raise CorruptChunkError(f"{what}: the {p} bytes before key {key}'s value start "
                                        "before the shard does", chunk=what)
            out[key] = (data[s - p:s], value)
    return out


# -- a directory of shards ------------------------------------------------------------------------
class ShardedStore:
    """The shards of one mesh or skeleton directory (any storage location)."""

    def __init__(self, location: str, spec: ShardingSpec) -> None:
        self.location = location
        self.spec = spec
        self._kv: ts.KvStore | None = None
        self._sharded_kv: ts.KvStore | None = None

    def _store(self) -> ts.KvStore:
        if self._kv is None:
            with ts_errors(f"opening {self.location}"):
                self._kv = ts.KvStore.open(kvstore_spec(self.location),
                                           context=ts_context()).result()
        return self._kv

    def _read(self, name: str, start: int | None = None, stop: int | None = None,
              pin: _Pin | None = None) -> bytes | None:
        """Bytes ``[start, stop)`` of ``name`` (None when it does not exist).  ``pin`` ties
        the reads of one lookup to one version of each file: the first read of ``name``
        records its generation there and a later read that finds another one raises
        :class:`_Changed` (the file was replaced meanwhile: its offsets, read from the old
        version, point into the new one), so the lookup starts over.

        On an HTTP server that ignores Range (it answers with the whole file, which
        tensorstore refuses) the range is cut from a whole read of the file, which ``pin``
        keeps for the lookup's other ranges; the server is remembered
        (:func:`~voxgate.storage.kvstore.note_ranges_ignored`), so later lookups read whole
        files at once instead of trying a range first."""
        where = join(self.location, name)
        ranged = start is not None or stop is not None
        if ranged and ignores_ranges(self.location):
            return self._cut(name, start, stop, pin)
        try:
            with ts_errors(f"reading {where}"):
                r = self._store().read(name, byte_range=slice(start, stop)).result()
        except VoxgateError as exc:
            if ranged and ranges_ignored(exc):
                note_ranges_ignored(self.location)
                return self._cut(name, start, stop, pin)
            if "OUT_OF_RANGE" not in str(exc):
                raise
            if pin is not None and name in pin.generations and self._replaced(
                    name, pin.generations[name]):
                raise _Changed from None  # (shorter now: replaced, not truncated)
            # an index that points past the end of the file: a truncated shard
            raise CorruptChunkError(f"{where} is shorter than its indexes say (bytes "
                                    f"{start}-{stop} asked for): {exc}", chunk=where) from None
        if pin is not None:
            pin.check(name, bytes(r.stamp.generation))
        return bytes(r.value) if r.state == "value" else None

    def _cut(self, name: str, start: int | None, stop: int | None, pin: _Pin | None
             ) -> bytes | None:
        """Bytes ``[start, stop)`` of ``name`` cut from a whole read of it (a server that
        ignores Range sends the whole file for any range anyway), read once per lookup: the
        whole file is held in memory while the lookup runs, a large shard too."""
        where = join(self.location, name)
        if pin is not None and name in pin.whole:
            data = pin.whole[name]
        else:
            with ts_errors(f"reading {where}"):
                r = self._store().read(name).result()
            data = bytes(r.value) if r.state == "value" else None
            if pin is not None:
                pin.check(name, bytes(r.stamp.generation))
                pin.whole[name] = data
        if data is None:
            return None
        if (start or 0) > len(data) or (stop is not None and stop > len(data)):
            raise CorruptChunkError(f"{where} is shorter than its indexes say (bytes "
                                    f"{start}-{stop} asked for, it holds {len(data)})",
                                    chunk=where)
        return data[start:stop]

    def _replaced(self, name: str, generation: bytes) -> bool:
        """Whether ``name`` is no longer the version of ``generation``."""
        with ts_errors(f"reading {join(self.location, name)}"):
            r = self._store().read(name, if_not_equal=generation,
                                   byte_range=slice(0, 0)).result()
        return bool(r.state != "unspecified")

    def _pinned(self, what: str, lookup: Callable[[_Pin], Any]) -> Any:
        """``lookup(pin)``, started over while the shard it reads is replaced under it."""
        for _ in range(_READ_ATTEMPTS):
            try:
                return lookup(_Pin())
            except _Changed:
                continue
        raise RemoteUnavailableError(
            f"{what} kept being replaced while it was read ({_READ_ATTEMPTS} attempts)")

    def shard_files(self) -> list[str]:
        """The names of the shard files that exist."""
        if self.location.startswith(("http://", "https://")):
            if self.spec.shard_bits > 12:
                raise CapabilityNotSupportedError(
                    f"{self.location} is served over HTTP, which cannot list its "
                    f"{2 ** self.spec.shard_bits} possible shards; pass the segment ids to read")
            names = [self.spec.shard_name(s) for s in range(1 << self.spec.shard_bits)]
            return [n for n in names if self._exists(n)]
        with ts_errors(f"listing {self.location}"):
            keys = self._store().list().result()
        return sorted(k.decode() for k in keys if k.endswith(b".shard") and b"/" not in k)

    def _exists(self, name: str) -> bool:
        """Whether the file ``name`` exists: a read of its first byte (a GET, which every
        server answers; some refuse HEAD), or, on a server that ignores Range (it would send
        the whole file), of none of its bytes (a HEAD)."""
        if not ignores_ranges(self.location):
            try:
                return self._read(name, 0, 1) is not None
            except VoxgateError as exc:
                if not ranges_ignored(exc):
                    raise
                note_ranges_ignored(self.location)
        with ts_errors(f"reading {join(self.location, name)}"):
            r = self._store().read(name, byte_range=slice(0, 0)).result()
        return bool(r.state == "value")

    # -- reading ---------------------------------------------------------------------------------
    def get_many(self, keys: Iterable[int], prefix_size: PrefixSize | None = None, *,
                 values: bool = True) -> dict[int, tuple[bytes, bytes] | None]:
        """{key: (prefix, value) or None when absent}; shards in parallel, each read by byte
        ranges: its index, the minishard indexes the keys need, then the entries.
        ``values`` False: which keys are stored, from the indexes alone (each present key's
        entry is ``(b"", b"")``)."""
        wanted = np.fromiter(dict.fromkeys(int(k) for k in keys), dtype=np.uint64)
        out: dict[int, tuple[bytes, bytes] | None] = {int(k): None for k in wanted}
        if not len(wanted):
            return out
        shards, minishards = self.spec.locate(wanted)
        groups = [(int(s), wanted[shards == s], minishards[shards == s])
                  for s in np.unique(shards).tolist()]

        def one(group: tuple[int, np.ndarray, np.ndarray]) -> None:
            out.update(self._get_from_shard(*group, prefix_size, values))

        with ThreadPoolExecutor(max_workers=min(16, len(groups))) as pool:
            list(pool.map(one, groups))
        return out

    def _get_from_shard(self, shard: int, keys: np.ndarray, minishards: np.ndarray,
                        prefix_size: PrefixSize | None, values: bool
                        ) -> dict[int, tuple[bytes, bytes]]:
        found: dict[int, tuple[bytes, bytes]] = self._pinned(
            join(self.location, self.spec.shard_name(shard)),
            lambda pin: self._get_pinned(shard, keys, minishards, prefix_size, pin, values))
        return found

    def _get_pinned(self, shard: int, keys: np.ndarray, minishards: np.ndarray,
                    prefix_size: PrefixSize | None, pin: _Pin, values: bool = True
                    ) -> dict[int, tuple[bytes, bytes]]:
        name = self.spec.shard_name(shard)
        what = join(self.location, name)
        head = self._read(name, 0, self.spec.index_bytes, pin)
        data_name, shift = name, 0
        if head is None:  # the older layout: <shard>.index beside <shard>.data
            stem = name[: -len(".shard")]
            head = self._read(stem + ".index", pin=pin)
            if head is None:
                return {}
            data_name, shift, what = stem + ".data", self.spec.index_bytes, join(
                self.location, stem + ".data")
        index = _shard_index(self.spec, head, what)
        found: dict[int, tuple[bytes, bytes]] = {}
        base = self.spec.index_bytes
        for m in np.unique(minishards).tolist():
            start, end = (int(v) for v in index[m])
            if start == end:
                continue
            blob = self._read(data_name, base + start - shift, base + end - shift, pin)
            if blob is None or len(blob) != end - start:
                raise CorruptChunkError(f"{what}: minishard {m}'s index ({start}-{end}) lies "
                                        "past the end of the shard", chunk=what)
            ids, starts, sizes = _minishard_entries(
                self.spec, blob, f"{what} (minishard {m} index)", 2 ** 63)
            lookup = dict(zip(ids.tolist(), zip(starts.tolist(), sizes.tolist(), strict=True),
                              strict=True))
            for key in keys[minishards == m].tolist():
                if key not in lookup:
                    continue
                if not values:
                    found[key] = (b"", b"")
                    continue
                s, n = lookup[key]
                raw = self._read(data_name, s - shift, s + n - shift, pin)
                if raw is None or len(raw) != n:
                    raise CorruptChunkError(f"{what}: key {key}'s bytes {s}-{s + n} lie past "
                                            "the end of the shard", chunk=what)
                value = _decode(raw, self.spec.data_encoding, f"{what} (key {key})")
                prefix = b""
                p = prefix_size(key, value) if prefix_size else 0
                if p:
                    if p > s - shift:
                        raise CorruptChunkError(f"{what}: the {p} bytes before key {key}'s "
                                                "value start before the shard", chunk=what)
                    prefix = self._read(data_name, s - shift - p, s - shift, pin) or b""
                found[key] = (prefix, value)
        return found

    def keys(self) -> list[int]:
        """Every key stored, ascending (reads each shard's indexes, not its values; shards
        in parallel: one after another, 1100 shards on S3 took seconds)."""

        def one(name: str) -> list[int]:
            found: list[int] = self._pinned(join(self.location, name),
                                            lambda pin: listed(name, pin))
            return found

        def listed(name: str, pin: _Pin) -> list[int]:
            what = join(self.location, name)
            head = self._read(name, 0, self.spec.index_bytes, pin)
            if head is None:
                return []
            index = _shard_index(self.spec, head, what)
            base = self.spec.index_bytes
            found: list[int] = []
            for m, (start, end) in enumerate(index.tolist()):
                if start == end:
                    continue
                blob = self._read(name, base + start, base + end, pin) or b""
                ids, _, _ = _minishard_entries(self.spec, blob,
                                               f"{what} (minishard {m} index)", 2 ** 63)
                found.extend(ids.tolist())
            return found

        names = self.shard_files()
        if len(names) <= 2:
            return sorted(k for n in names for k in one(n))
        with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
            return sorted(k for found in pool.map(one, names) for k in found)

    # -- plain values, through tensorstore's sharded kvstore --------------------------------------
    def _sharded(self) -> ts.KvStore:
        if self._sharded_kv is None:
            spec = {"driver": "neuroglancer_uint64_sharded",
                    "base": kvstore_spec(self.location), "metadata": self.spec.to_json()}
            with ts_errors(f"opening the shards of {self.location}"):
                self._sharded_kv = ts.KvStore.open(spec, context=ts_context()).result()
        return self._sharded_kv

    def get_values(self, keys: Iterable[int]) -> dict[int, bytes | None]:
        """{key: value or None when absent}, read by tensorstore (values without prefixes);
        on an HTTP server that ignores Range, which tensorstore's reads need, by
        :meth:`get_many` (whole shards, the ranges cut here)."""
        todo = list(dict.fromkeys(int(k) for k in keys))
        if not ignores_ranges(self.location):
            kv = self._sharded()
            try:
                with ts_errors(f"reading the shards of {self.location}"):
                    futures = [kv.read(struct.pack(">Q", k)) for k in todo]
                    results = [f.result() for f in futures]
            except VoxgateError as exc:
                if not ranges_ignored(exc):
                    raise
                note_ranges_ignored(self.location)
            else:
                return {k: bytes(r.value) if r.state == "value" else None
                        for k, r in zip(todo, results, strict=True)}
        return {k: None if got is None else got[1] for k, got in self.get_many(todo).items()}

    def put_values(self, values: Mapping[int, bytes]) -> None:
        """Write values (no prefixes) in one tensorstore transaction: each shard touched is
        read, merged and written back once, conditionally, so other writers' keys stay."""
        if not values:
            return
        txn = ts.Transaction()
        kv = self._sharded().with_transaction(txn)
        with ts_errors(f"writing the shards of {self.location}"):
            for key, value in values.items():
                kv.write(struct.pack(">Q", int(key)), value)
            txn.commit_async().result()

    # -- writing ---------------------------------------------------------------------------------
    def update(self, entries: Mapping[int, tuple[bytes, bytes]],
               prefix_size: PrefixSize | None = None, *, workers: int = 4) -> list[str]:
        """Merge ``entries`` ({key: (prefix, value)}) into their shards, replacing the keys
        they name and keeping every other key; returns the shard files written.

        Each shard is read whole, merged and written back only if nobody changed it since it
        was read (tensorstore's conditional write: on local disks through a lock file, on
        GCS through object generations, on S3 through the ETag with ``If-Match`` /
        ``If-None-Match``), else merged again, so concurrent writers of one shard lose
        nothing.  Writing whole shards from one task each avoids the retries."""
        keys = np.fromiter(entries, dtype=np.uint64, count=len(entries))
        if not len(keys):
            return []
        shards, _ = self.spec.locate(keys)
        groups = [(int(s), keys[shards == s].tolist()) for s in np.unique(shards).tolist()]

        def one(group: tuple[int, list[int]]) -> str:
            shard, members = group
            self._merge(self.spec.shard_name(shard), {k: entries[k] for k in members},
                        prefix_size)
            return self.spec.shard_name(shard)

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(groups)))) as pool:
            return list(pool.map(one, groups))

    def add_absent(self, values: Mapping[int, bytes], *, workers: int = 4) -> list[str]:
        """Store ``values`` ({key: value}, no prefixes) under those of their keys that their
        shards do not hold, keeping every stored entry byte for byte (its value is not
        decoded); returns the shard files written.  Each shard is rebuilt as tensorstore
        builds one (:func:`encode_shard` at ``TENSORSTORE_GZIP_LEVEL``) and written only if
        nobody changed it since it was read, else merged again (as :meth:`update`): a key
        another writer stores meanwhile keeps its value.  A shard that holds every key
        already is not written."""
        keys = np.fromiter(values, dtype=np.uint64, count=len(values))
        if not len(keys):
            return []
        shards, _ = self.spec.locate(keys)
        level = TENSORSTORE_GZIP_LEVEL
        # each distinct value encoded once (chunks of 0: one value per edge shape)
        by_value: dict[bytes, bytes] = {}
        for value in values.values():
            if value not in by_value:
                by_value[value] = _encode(value, self.spec.data_encoding, level)

        def one(shard: int) -> str | None:
            name = self.spec.shard_name(shard)
            what = join(self.location, name)
            members = keys[shards == shard].tolist()

            def merge(current: bytes | None) -> bytes:
                stored = ({} if current is None
                          else decode_shard(self.spec, current, what, values=False))
                new = [k for k in members if k not in stored]
                if not new:
                    raise _Unchanged
                for k in new:
                    stored[k] = (b"", by_value[values[k]])
                return encode_shard(self.spec, stored, encoded=True, level=level)

            try:
                update_conditionally(self._store(), name, merge, what,
                                     attempts=_MERGE_ATTEMPTS,
                                     advice="too many writers share this shard: give each "
                                     "writer whole shards")
            except _Unchanged:
                return None
            return name

        todo = np.unique(shards).tolist()
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
            return [n for n in pool.map(one, todo) if n is not None]

    def remove(self, keys: Iterable[int], prefix_size: PrefixSize | None = None) -> None:
        """Drop ``keys`` from their shards (each shard read, merged without them and written
        back conditionally, as :meth:`update`); absent keys are no error, and a shard that
        does not exist or holds none of them is not written (removing a key never creates
        a shard file)."""
        wanted = np.fromiter(dict.fromkeys(int(k) for k in keys), dtype=np.uint64)
        if not len(wanted):
            return
        shards, _ = self.spec.locate(wanted)
        for s in np.unique(shards).tolist():
            self._merge(self.spec.shard_name(int(s)), {}, prefix_size,
                        drop=set(wanted[shards == s].tolist()))

    def _merge(self, name: str, new: Mapping[int, tuple[bytes, bytes]],
               prefix_size: PrefixSize | None, drop: Iterable[int] = ()) -> None:
        what = join(self.location, name)
        drop = set(drop)

        def merge(current: bytes | None) -> bytes:
            merged: dict[int, tuple[bytes, bytes]] = {}
            if current is not None:
                merged = decode_shard(self.spec, current, what, prefix_size)
            if not new and not drop.intersection(merged):
                raise _Unchanged  # nothing to drop here: leave the shard (or its absence)
            merged.update(new)
            for key in drop:
                merged.pop(key, None)
            return encode_shard(self.spec, merged)

        with contextlib.suppress(_Unchanged):
            update_conditionally(self._store(), name, merge, what, attempts=_MERGE_ATTEMPTS,
                                 advice="too many writers share this shard: give each writer "
                                 "whole shards")


class _Unchanged(Exception):
    """Raised by a shard merge that would change nothing: the write is skipped."""


class _Pin:
    """One lookup's view of the files it reads: each file's generation at its first read, and
    on a server that ignores Range the whole files read (``ShardedStore._cut``)."""

    def __init__(self) -> None:
        self.generations: dict[str, bytes] = {}
        self.whole: dict[str, bytes | None] = {}

    def check(self, name: str, generation: bytes) -> None:
        """Record ``name``'s generation, or raise :class:`_Changed` when it is another one
        than the lookup's first read of it found."""
        if self.generations.setdefault(name, generation) != generation:
            raise _Changed


class _Changed(Exception):
    """Raised by a pinned read (:meth:`ShardedStore._read`) of a file replaced since the
    lookup's first read of it: the lookup starts over."""
