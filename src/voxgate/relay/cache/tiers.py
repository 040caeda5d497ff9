"""The cache's tiers: memory (an LRU bounded by bytes) in front of an optional disk tier
(diskcache, size-capped LRU, entries tagged by channel), their metrics, and the pickle-free
encoding of a cell on disk (header, blosc-packed bytes, CRC-32)."""

from __future__ import annotations

import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blosc
import numpy as np

from ...errors import CorruptChunkError
from .responses import RESPONSE_OVERHEAD, RESPONSE_SHARE, ResponseCache

__all__ = ["CELL_OVERHEAD", "CacheMetrics", "DiskTier", "MemoryTier", "TieredCache",
           "decode_cell", "encode_cell"]

#: what one cell in the memory tier costs beside its voxels and its key's characters: the
#: ndarray object and its data block's header, the key string's header, the OrderedDict's node
#: and slots, the key's slot in the set of unread keys.  Measured with tracemalloc (CPython
#: 3.11, 64-bit): 335-395 bytes a cell at 100 to 44,000 cells (the set's resizes); rounded
#: up.  Charged for every cell: tiny cells (the coarsest scales of a pyramid, edge cells of a
#: thin volume, one set per forwarded token's view) charged by their voxels alone held over 50
#: times the tier's budget (an 8-byte cell takes ~450 bytes)
CELL_OVERHEAD = 512


@dataclass
class CacheMetrics:
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    coalesced: int = 0
    upstream_fetches: int = 0  # upstream reads (one may bring several cells)
    upstream_cells: int = 0  # cells those reads brought
    upstream_parts: int = 0  # parts of cells read for one request only, not cached (skim)
    upstream_errors: int = 0
    upstream_timeouts: int = 0
    upstream_bytes: int = 0
    upstream_seconds: float = 0.0
    upstream_writes: int = 0
    bytes_served: int = 0
    response_hits: int = 0  # encoded responses served as stored (.responses)
    response_misses: int = 0
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: float) -> None:
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def upstream_latency(self, seconds: float) -> None:
        with self.lock:
            self.upstream_fetches += 1
            self.upstream_seconds += seconds
            self.latencies.append(seconds)
            if len(self.latencies) > 4096:
                del self.latencies[:2048]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            lat = sorted(self.latencies)
            out = {k: getattr(self, k) for k in (
                "memory_hits", "disk_hits", "misses", "coalesced", "upstream_fetches",
                "upstream_cells", "upstream_parts",
                "upstream_errors", "upstream_timeouts", "upstream_bytes", "upstream_writes",
                "bytes_served", "response_hits", "response_misses")}
            out["upstream_seconds_total"] = round(self.upstream_seconds, 6)
            if lat:
                out["upstream_latency_p50_ms"] = round(1000 * lat[len(lat) // 2], 3)
                out["upstream_latency_p99_ms"] = round(1000 * lat[min(len(lat) - 1,
                                                                      int(len(lat) * 0.99))], 3)
            hits = self.memory_hits + self.disk_hits
            total = hits + self.misses
            out["hit_ratio"] = round(hits / total, 4) if total else None
            return out


# -- value encoding (no pickle) -----------------------------------------------------------------
_MAGIC = b"VGC2"  # VGC1 entries (no checksum) read as damaged and are refetched


def encode_cell(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr)
    dt = arr.dtype.str.encode()
    header = _MAGIC + struct.pack("<B", len(dt)) + dt + struct.pack("<B", arr.ndim)
    header += struct.pack(f"<{arr.ndim}Q", *arr.shape)
    body = header + blosc.compress(arr.tobytes(), typesize=arr.dtype.itemsize, cname="lz4")
    return body + struct.pack("<I", zlib.crc32(body))


def decode_cell(data: bytes, where: str) -> np.ndarray:
    try:
        if data[:4] != _MAGIC:
            raise ValueError("bad magic")
        if len(data) < 9 or struct.unpack("<I", data[-4:])[0] != zlib.crc32(data[:-4]):
            raise ValueError("checksum mismatch")
        data = data[:-4]
        n = data[4]
        dt = np.dtype(data[5 : 5 + n].decode())
        pos = 5 + n
        ndim = data[pos]
        shape = struct.unpack(f"<{ndim}Q", data[pos + 1 : pos + 1 + 8 * ndim])
        raw = blosc.decompress(data[pos + 1 + 8 * ndim :])
        return np.frombuffer(raw, dtype=dt).reshape(shape).copy()
    except Exception as exc:
        raise CorruptChunkError(f"cache entry {where} is damaged: {exc}", chunk=where) from exc


class MemoryTier:
    """An LRU of arrays bounded by the memory they take: each entry is charged its bytes, its
    key and ``overhead`` (:data:`CELL_OVERHEAD` in :class:`TieredCache`; 0, array bytes
    only, by default)."""

    def __init__(self, capacity: int, overhead: int = 0) -> None:
        self.capacity = capacity
        #: what an entry costs beside its array's bytes and its key (see :data:`CELL_OVERHEAD`)
        self.overhead = max(0, int(overhead))
        #: the arrays' bytes, and what the entries are charged in all (held to the capacity)
        self.used = 0
        self.charged = 0
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        #: keys stored and not read since (an entry evicted while in here was wasted work)
        self._unread: set[str] = set()
        #: entries evicted to make room, and how many of them were never read
        self.evicted = 0
        self.evicted_unread = 0
        #: a moving average (the last ~16 evictions) of whether an evicted entry was unread:
        #: near 1 when the tier is too small for what is being read (it thrashes)
        self.waste = 0.0

    def drop_prefix(self, prefix: str) -> int:
        """Drop every entry whose key starts with ``prefix`` (a scan bounded by the tier's
        capacity); return how many."""
        with self._lock:
            gone = [k for k in self._items if k.startswith(prefix)]
            for k in gone:
                self._count(k, self._items.pop(k), -1)
                self._unread.discard(k)
        return len(gone)

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
                self._unread.discard(key)
            return arr

    def _charge(self, key: str, arr: np.ndarray) -> int:
        # what an entry is charged: its bytes, plus (with an overhead) its key and objects
        return arr.nbytes + (len(key) + self.overhead if self.overhead else 0)

    def _count(self, key: str, arr: np.ndarray, sign: int) -> None:
        # (under self._lock) an entry in (1) or out (-1)
        self.used += sign * arr.nbytes
        self.charged += sign * self._charge(key, arr)

    def put(self, key: str, arr: np.ndarray) -> None:
        if self._charge(key, arr) > self.capacity:  # (as good as evicted unread at once)
            with self._lock:
                self._evict(unread=True)
            return
        arr.flags.writeable = False  # shared between requests: nobody may change it
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._count(key, old, -1)
            self._items[key] = arr
            self._unread.add(key)
            self._count(key, arr, 1)
            while self.charged > self.capacity and self._items:
                k, gone = self._items.popitem(last=False)
                self._count(k, gone, -1)
                self._evict(unread=k in self._unread)
                self._unread.discard(k)

    def _evict(self, unread: bool) -> None:
        # (under self._lock) count an entry evicted to make room
        self.evicted += 1
        self.evicted_unread += unread
        self.waste += (unread - self.waste) / 16

    def pop(self, key: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._count(key, old, -1)
                self._unread.discard(key)

    def __len__(self) -> int:
        return len(self._items)


def _bytes_only_disk() -> type:
    """A diskcache ``Disk`` that never unpickles a value (the tier only stores bytes; a pickled
    entry on disk is not ours, and reads as missing)."""
    import diskcache
    from diskcache.core import MODE_PICKLE

    class BytesOnlyDisk(diskcache.Disk):
        def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
            if mode == MODE_PICKLE:
                raise OSError("a pickled cache entry is refused")  # diskcache: a miss
            return super().fetch(mode, filename, value, read)

    return BytesOnlyDisk


class DiskTier:
    """A size-capped LRU on disk (diskcache: SQLite index + files, atomic, survives restarts)."""

    def __init__(self, path: Path, capacity: int) -> None:
        import diskcache

        path.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(
            str(path), disk=_bytes_only_disk(), size_limit=capacity,
            eviction_policy="least-recently-used", cull_limit=16, disk_min_file_size=2**15,
            tag_index=True,  # drop_tag finds a channel's entries through an index, no scan
        )
        #: called before the volume is measured (TieredCache: finish the writes behind)
        self.before_volume: Callable[[], object] | None = None

    def get(self, key: str) -> np.ndarray | None:
        data = self._cache.get(key, default=None, read=False)
        if data is None:
            return None
        if not isinstance(data, bytes):
            self._cache.delete(key)
            return None
        return decode_cell(data, key)

    def put(self, key: str, arr: np.ndarray, tag: str | None = None) -> None:
        self._cache.set(key, encode_cell(arr), tag=tag)

    def put_encoded(self, key: str, data: bytes, tag: str | None = None) -> None:
        """Store what :func:`encode_cell` made (encoded beforehand, outside any lock)."""
        self._cache.set(key, data, tag=tag)

    def pop(self, key: str) -> None:
        self._cache.delete(key)

    def drop_tag(self, tag: str) -> int:
        return int(self._cache.evict(tag, retry=True))

    def volume(self) -> int:
        if self.before_volume is not None:
            self.before_volume()  # (cells being written behind are counted too)
        return int(self._cache.volume())

    def close(self) -> None:
        self._cache.close()


#: cells fetched from the upstream are written to the disk tier on this thread, after the
#: request that fetched them has its data (an encoded 1 MiB cell took ~3 ms to store, on the
#: request's path before)
_behind_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxgate-disk-behind")
#: at most this many cells wait to be written behind; past it, put_behind stores at once
_BEHIND_MAX = 256
_NSTRIPES = 256


#: while the cache thrashes, one read in this many still fetches whole cells (TieredCache.skim)
SKIM_PROBE = 8


class TieredCache:
    """Memory in front of (optional) disk; a disk hit is promoted to memory.  The memory
    budget is shared: :data:`~.responses.RESPONSE_SHARE` of it holds encoded responses
    (:attr:`responses`), the rest cells."""

    def __init__(self, memory_bytes: int, disk_path: Path | None = None,
                 disk_bytes: int = 0) -> None:
        share = int(memory_bytes * RESPONSE_SHARE)
        # (each entry charged what it takes beside its bytes: many tiny ones stay in budget)
        self.responses = ResponseCache(share, overhead=RESPONSE_OVERHEAD)
        self.memory = MemoryTier(memory_bytes - share, overhead=CELL_OVERHEAD)
        self.disk = DiskTier(disk_path, disk_bytes) if disk_path is not None else None
        self.metrics = CacheMetrics()
        self._lock = threading.Lock()
        self._pops = 0  # how many drops so far: a disk hit read across one is not promoted
        # drops per key stripe, and of whole channels: a cell written behind is stored only
        # when neither moved since it was fetched (it may be old data otherwise)
        self._stripe_pops = [0] * _NSTRIPES
        #: the locks a CachedRemote's writers of this cache's cells hold while they write
        #: upstream, one per key stripe (taken in order): one table per cache, never one per
        #: process, or a relay whose upstream is another relay in the same process would wait
        #: on a stripe its own write holds
        self.write_stripes = [threading.Lock() for _ in range(_NSTRIPES)]
        #: the upstream fetches in flight, by cell key (a CachedRemote's ``_Flight``), and the
        #: lock that guards them: one table per cache, shared by every CachedRemote of it, since
        #: two of them whose keys are equal hold the same cells (two channels of one upstream:
        #: a writable one and a read-only one, or one per configured token), and a write
        #: through either must detach the other's fetch of a cell it changes
        self.inflight: dict[str, Any] = {}
        self.inflight_lock = threading.Lock()
        self._tag_drops: dict[str | None, int] = {}
        self._closed = False
        self._behind = 0  # cells waiting to be written behind
        self._skims = 0  # reads that asked skim() while the memory tier thrashed
        self._behind_done = threading.Condition(self._lock)
        if self.disk is not None:
            self.disk.before_volume = self.flush

    def skim(self) -> bool:
        """Whether a read takes from the upstream only its own parts of the cells it misses,
        caching nothing, rather than whole cells: yes while the cache is too small for what
        is being read, as its memory tier tells by evicting mostly cells nobody read
        (:attr:`MemoryTier.waste` over 1/2, counting cells too big to keep at all) with no
        disk tier behind to keep them.  Whole cells then cost a read up to several times its
        own size and are thrown away unread.  One such read in :data:`SKIM_PROBE` still
        fetches whole cells, so the tier notices when reads come back to cells it can keep."""
        if self.disk is not None or self.memory.waste <= 0.5:
            return False
        with self._lock:
            self._skims += 1
            return self._skims % SKIM_PROBE != 0

    def get(self, key: str) -> np.ndarray | None:
        arr = self.memory.get(key)
        if arr is not None:
            self.metrics.add(memory_hits=1)
            return arr
        if self.disk is not None:
            with self._lock:
                seen = self._pops
            try:
                arr = self.disk.get(key)
            except CorruptChunkError:
                self.disk.pop(key)  # a damaged entry is refetched, never served
                arr = None
            if arr is not None:
                self.metrics.add(disk_hits=1)
                with self._lock:
                    # a drop since the disk read may have been a write's: then what was read
                    # is (or may be) the old value, and must not outlive the drop in memory
                    if self._pops == seen:
                        self.memory.put(key, arr)
                return arr
        self.metrics.add(misses=1)
        return None

    def put(self, key: str, arr: np.ndarray) -> None:
        self.memory.put(key, arr)
        if self.disk is not None:
            self.disk.put(key, arr, tag=_tag(key))

    def put_behind(self, key: str, arr: np.ndarray) -> None:
        """:meth:`put` a cell fetched from the upstream, its disk write behind the caller: in
        memory now, on disk a moment later unless a drop of its key or channel (a write, an
        invalidation) came in between, since then it may be old data.  (A subclass that
        changes :meth:`put` gets :meth:`put` itself.)"""
        if self.disk is None or type(self).put is not TieredCache.put:
            self.put(key, arr)
            return
        self.memory.put(key, arr)
        stripe = hash(key) % _NSTRIPES
        with self._lock:
            seen = (self._stripe_pops[stripe], self._tag_drops.get(_tag(key), 0))
            later = self._behind < _BEHIND_MAX and not self._closed
            if later:
                self._behind += 1
        if later:
            _behind_pool.submit(self._store_behind, key, arr, stripe, seen)
        else:
            self._store_behind(key, arr, stripe, seen, counted=False)

    def _store_behind(self, key: str, arr: np.ndarray, stripe: int, seen: tuple[int, int],
                      counted: bool = True) -> None:
        try:
            data = encode_cell(arr)  # outside the lock
            with self._lock:
                # under the lock drops count under: a drop either came before (then this
                # cell is not stored) or waits until it is stored, and then removes it
                if not self._closed and self.disk is not None and (
                        self._stripe_pops[stripe], self._tag_drops.get(_tag(key), 0)) == seen:
                    self.disk.put_encoded(key, data, tag=_tag(key))
        except Exception:  # a cell that cannot be stored stays in memory only
            pass
        finally:
            if counted:
                with self._lock:
                    self._behind -= 1
                    self._behind_done.notify_all()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until the cells being written behind are on disk (or skipped)."""
        with self._lock:
            self._behind_done.wait_for(lambda: self._behind == 0, timeout)

    def _count_drop(self, key: str | None = None, tag: str | None = None) -> None:
        # (under self._lock) a key's drop, or a whole channel's (its tag)
        self._pops += 1
        if key is None:
            self._tag_drops[tag] = self._tag_drops.get(tag, 0) + 1
        else:
            self._stripe_pops[hash(key) % _NSTRIPES] += 1

    def pop(self, key: str) -> None:
        with self._lock:  # counted before the disk drop too: a cell written behind after it
            self._count_drop(key)  # is not stored
        if self.disk is not None:
            self.disk.pop(key)
        with self._lock:  # counted after the disk drop, so a read of the old entry sees it
            self._count_drop(key)
            self.memory.pop(key)

    def drop_tag(self, tag: str) -> int:
        """Drop every entry of ``tag`` (one channel incarnation) from both tiers."""
        with self._lock:
            self._count_drop(tag=tag)
        n = self.disk.drop_tag(tag) if self.disk is not None else 0
        with self._lock:  # counted, as pop does: a disk hit read before is not promoted
            self._count_drop(tag=tag)
            n += self.memory.drop_prefix(tag + _TAG_END)
        self.responses.drop_prefix(tag + _TAG_END)
        return n

    def drop_view(self, prefix: str) -> None:
        """Drop every cell and response whose key starts with ``prefix`` (one CachedRemote's:
        ``<tag>~<remote>``) from memory; from disk, which indexes entries by tag only, every
        entry of its tag (so its view's are gone too; the other views' are refetched).
        Counted as :meth:`drop_tag` is: a cell read or fetched before is neither promoted
        from disk nor written to disk behind it."""
        tag = _tag(prefix)
        with self._lock:
            self._count_drop(tag=tag)
        if self.disk is not None and tag is not None:
            self.disk.drop_tag(tag)
        with self._lock:
            self._count_drop(tag=tag)
            self.memory.drop_prefix(prefix)
        self.responses.drop_prefix(prefix)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._closed = True
        if self.disk is not None:
            self.disk.close()


def _tag(key: str) -> str | None:
    return key.split(_TAG_END, 1)[0] if _TAG_END in key else None


#: ends a key's tag: keys are "<tag>~<remote>/<scale>/<z>_<y>_<x>"
_TAG_END = "~"
