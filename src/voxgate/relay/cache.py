"""The relay's chunk cache: memory (LRU by bytes) then disk (size-capped LRU), in front of a Remote.

:class:`CachedRemote` is itself a Remote.  It cuts every read on a grid aligned to the
upstream's chunks (edge cells clipped to the dataset), serves the cells it holds and fetches the
rest from the upstream, concurrently, with one upstream fetch per missing cell however many
requests want it at once.  Writes go through to the upstream before they return; the cells they
touch are dropped from both tiers *before* the upstream write, so a relay killed half way never
serves stale data after a restart, and the cells the write covers completely are cached again
afterwards.  Nothing written can be lost to eviction: the upstream has it before the client is
told it was stored.

Read-your-writes: every read that begins after a write was acknowledged sees it.  Before the
write returns (still holding its cells' locks) it *detaches* every upstream fetch in flight for
its cells: a detached fetch still answers the reads that joined it (they began before the
acknowledgment), but no later read can join it, and it caches nothing (it may hold the old
data).  A fetch removes only its own in-flight entry, never a newer one.  A disk hit is promoted
to memory only when no cell was dropped meanwhile.

Every entry carries a tag (the channel's, which includes its incarnation), so a deleted
channel's cells are dropped from both tiers at once without scanning the disk tier.

Values never pass through pickle: cells are stored as a small binary header, blosc-packed
bytes and a CRC-32 of both, so a damaged disk entry (a flipped bit, a torn or truncated file)
is detected, dropped and refetched, never served.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blosc
import numpy as np

from ..errors import (
    AuthenticationError,
    CorruptChunkError,
    MissingChunkError,
    RemoteUnavailableError,
    VoxgateError,
)
from ..geometry import Box, Vec, chunk_boxes, grow_block
from ..remotes.base import Capability, Remote

__all__ = [
    "CachedRemote",
    "CacheMetrics",
    "DiskTier",
    "MemoryTier",
    "TieredCache",
    "UpstreamError",
    "UpstreamTimeoutError",
]

#: cache cells grow from the upstream's chunks toward this size (fewer entries, same alignment)
CELL_BYTES = 2**20


class UpstreamError(RemoteUnavailableError):
    """The upstream failed or answered something that could not be decoded (HTTP 502)."""


class UpstreamTimeoutError(UpstreamError, TimeoutError):
    """The upstream did not answer in time (HTTP 504)."""


@dataclass
class CacheMetrics:
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    coalesced: int = 0
    upstream_fetches: int = 0  # upstream reads (one may bring several cells)
    upstream_cells: int = 0  # cells those reads brought
    upstream_errors: int = 0
    upstream_timeouts: int = 0
    upstream_bytes: int = 0
    upstream_seconds: float = 0.0
    upstream_writes: int = 0
    bytes_served: int = 0
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
                "upstream_cells",
                "upstream_errors", "upstream_timeouts", "upstream_bytes", "upstream_writes",
                "bytes_served")}
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
    """An LRU of arrays bounded by their total bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def drop_prefix(self, prefix: str) -> int:
        """Drop every entry whose key starts with ``prefix`` (a scan bounded by the tier's
        capacity); return how many."""
        with self._lock:
            gone = [k for k in self._items if k.startswith(prefix)]
            for k in gone:
                self.used -= self._items.pop(k).nbytes
        return len(gone)

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
            return arr

    def put(self, key: str, arr: np.ndarray) -> None:
        if arr.nbytes > self.capacity:
            return
        arr.flags.writeable = False  # shared between requests: nobody may change it
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= old.nbytes
            self._items[key] = arr
            self.used += arr.nbytes
            while self.used > self.capacity and self._items:
                _, gone = self._items.popitem(last=False)
                self.used -= gone.nbytes

    def pop(self, key: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= old.nbytes

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

    def pop(self, key: str) -> None:
        self._cache.delete(key)

    def drop_tag(self, tag: str) -> int:
        return int(self._cache.evict(tag, retry=True))

    def volume(self) -> int:
        return int(self._cache.volume())

    def close(self) -> None:
        self._cache.close()


class TieredCache:
    """Memory in front of (optional) disk; a disk hit is promoted to memory."""

    def __init__(self, memory_bytes: int, disk_path: Path | None = None,
                 disk_bytes: int = 0) -> None:
        self.memory = MemoryTier(memory_bytes)
        self.disk = DiskTier(disk_path, disk_bytes) if disk_path is not None else None
        self.metrics = CacheMetrics()
        self._lock = threading.Lock()
        self._pops = 0  # how many drops so far: a disk hit read across one is not promoted

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
            self.disk.put(key, arr, tag=key.split(_TAG_END, 1)[0] if _TAG_END in key else None)

    def pop(self, key: str) -> None:
        if self.disk is not None:
            self.disk.pop(key)
        with self._lock:  # counted after the disk drop, so a read of the old entry sees it
            self._pops += 1
            self.memory.pop(key)

    def drop_tag(self, tag: str) -> int:
        """Drop every entry of ``tag`` (one channel incarnation) from both tiers."""
        n = self.disk.drop_tag(tag) if self.disk is not None else 0
        with self._lock:  # counted, as pop does: a disk hit read before is not promoted
            self._pops += 1
            n += self.memory.drop_prefix(tag + _TAG_END)
        return n

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()


#: ends a key's tag: keys are "<tag>~<remote>/<scale>/<z>_<y>_<x>"
_TAG_END = "~"


class _Flight:
    """One upstream fetch of one cell: its future, and whether a write detached it."""

    __slots__ = ("future", "stale")

    def __init__(self) -> None:
        self.future: Future[np.ndarray] = Future()
        self.stale = False


#: how often the server hands the allocator's free pages back to the system
TRIM_SECONDS = 0.25
#: ... when more than this lies free in the allocator's arenas
TRIM_ABOVE = 64 * 2**20
_trimmer: threading.Thread | None = None


def limit_heap_growth(interval: float | None = None) -> bool:
    """Hand freed memory back to the system every ``interval`` s (default: the environment's
    ``VOXGATE_RELAY_TRIM_SECONDS``, else :data:`TRIM_SECONDS`; 0 turns it off); glibc only; a
    server process calls this once; returns whether it runs.

    The relay allocates and frees cell-, cutout- and body-sized buffers (0.1-4 MiB) on ~90
    threads.  glibc serves them from per-thread arenas once its mmap threshold has risen
    (it rises on every free of a large block, up to 32 MiB) and keeps what is freed there,
    fragmented between live blocks, for reuse: measured, a relay with a 64 MiB cache grew to
    2.5 GiB RSS in two minutes of 32 clients, all of it anonymous arena heaps (limiting the
    arenas to 2 still gave 1.2 GiB after one minute).  A fixed low threshold keeps RSS down
    but makes every such buffer a fresh mapping (page faults, unmaps): 40x slower to
    allocate, measured.  ``malloc_trim(0)`` returns the free pages inside every arena to the
    system without moving anything; pages used again fault back in, which cost about 15% of
    the soak's throughput (docs/relay.md, "Memory"), so it runs only when more than
    :data:`TRIM_ABOVE` lies free.
    """
    import ctypes
    import ctypes.util
    import os

    global _trimmer
    if _trimmer is not None:
        return True
    if interval is None:
        try:
            interval = float(os.environ.get("VOXGATE_RELAY_TRIM_SECONDS", TRIM_SECONDS))
        except ValueError:
            interval = TRIM_SECONDS
    if not interval > 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return False
    trim.argtypes = [ctypes.c_size_t]

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]

    info = getattr(libc, "mallinfo2", None)  # glibc >= 2.33; without it, trim every time
    if info is not None:
        info.restype = _MallInfo2
        info.argtypes = []

    def run() -> None:
        while True:
            time.sleep(interval)
            # trimming makes the next use of those pages fault them in again: only when
            # more than TRIM_ABOVE lies free in the arenas
            if info is None or info().fordblks > TRIM_ABOVE:
                trim(0)

    _trimmer = threading.Thread(target=run, name="voxgate-malloc-trim", daemon=True)
    _trimmer.start()
    return True


_fetch_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="voxgate-upstream")
_STRIPES = [threading.Lock() for _ in range(256)]


class CachedRemote(Remote):
    """A Remote that caches another one cell by cell (see the module docstring)."""

    scheme = "relay-cache"

    def __init__(self, upstream: Remote, cache: TieredCache, *, identity: str,
                 timeout: float = 30.0, tag: str | None = None) -> None:
        self.upstream = upstream
        self.cache = cache
        self.meta = upstream.meta
        self.mode = upstream.mode
        self.url = upstream.url
        self.timeout = timeout
        ident = hashlib.sha256(identity.encode()).hexdigest()[:20]
        #: the tag every entry of this Remote carries (the relay passes the channel's, so a
        #: delete drops the cells of every token's view of it)
        self.tag = self.tag_of(tag if tag is not None else identity)
        self._prefix = f"{self.tag}{_TAG_END}{ident}"
        self._inflight: dict[str, _Flight] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._grids = [
            grow_block(s.chunks, self.meta.dtype.itemsize * self.meta.num_channels, s.shape,
                       CELL_BYTES)
            for s in self.meta.scales
        ]

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> Remote:
        raise VoxgateError("a CachedRemote is made by the relay, not opened by URL")

    @staticmethod
    def tag_of(tag: str) -> str:
        """The cache tag a CachedRemote made with ``tag=tag`` gives its entries."""
        return hashlib.sha256(tag.encode()).hexdigest()[:16]

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self.upstream.capabilities

    def grid(self, scale: int) -> Vec:
        """The cache cell shape at ``scale``: also the chunk size the precomputed dialect serves."""
        return self._grids[scale]

    def write_grid(self, scale: int = 0) -> Vec:
        return self.upstream.write_grid(scale)

    def absent_chunks(self, box: Box, scale: int = 0) -> list[Vec]:
        """The upstream's absent chunks (its CHUNK_PRESENCE capability is passed through)."""
        return self.upstream.absent_chunks(box, scale)

    def spec(self) -> dict[str, Any]:
        return self.upstream.spec()

    def _key(self, scale: int, idx: Vec) -> str:
        return f"{self._prefix}/{scale}/{idx.z}_{idx.y}_{idx.x}"

    def cells(self, box: Box, scale: int) -> Iterator[tuple[Vec, Box]]:
        return chunk_boxes(box, self._grids[scale], self.meta.scale(scale).bounds)

    # -- reading --------------------------------------------------------------------------------
    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        deadline = time.monotonic() + self.timeout
        lead = (self.meta.num_channels,) if self.meta.num_channels > 1 else ()
        out = np.empty(lead + tuple(box.shape), dtype=self.meta.dtype)
        waiting: list[tuple[Box, Future[np.ndarray]]] = []
        mine: list[tuple[str, Box, _Flight]] = []
        for idx, cell in self.cells(box, scale):
            key = self._key(scale, idx)
            arr = self.cache.get(key)
            if arr is not None:
                self._place(out, box, cell, arr)
                continue
            with self._lock:
                flight = self._inflight.get(key)
                if flight is not None:
                    self.cache.metrics.add(coalesced=1)
                else:
                    flight = _Flight()
                    self._inflight[key] = flight
                    mine.append((key, cell, flight))
            waiting.append((cell, flight.future))
        if mine:
            union = mine[0][1]
            for _, cell, _ in mine[1:]:
                union = Box(np.minimum(union.start, cell.start), np.maximum(union.stop, cell.stop))
            if len(mine) > 1 and sum(c.size for _, c, _ in mine) == union.size:
                # the missing cells tile one box: a single upstream read (the upstream
                # parallelizes it) instead of one request per cell
                _fetch_pool.submit(self._run_fetch, mine, union, scale)
            else:
                for item in mine:
                    _fetch_pool.submit(self._run_fetch, [item], item[1], scale)
        for cell, fut in waiting:
            try:
                arr = fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                self.cache.metrics.add(upstream_timeouts=1)
                raise UpstreamTimeoutError(
                    f"upstream {self.upstream.url} did not answer within {self.timeout:g} s"
                ) from None
            self._place(out, box, cell, arr)
        self.cache.metrics.add(bytes_served=out.nbytes)
        return out

    @staticmethod
    def _place(out: np.ndarray, box: Box, cell: Box, arr: np.ndarray) -> None:
        part = cell.intersect(box)
        out[(..., *part.slices(box.start))] = arr[(..., *part.slices(cell.start))]

    def _run_fetch(self, items: list[tuple[str, Box, _Flight]], region: Box,
                   scale: int) -> None:
        """Read ``region`` (one cell, or several that tile it) and hand each cell its data."""
        t0 = time.perf_counter()
        try:
            data = self.upstream.read(region, scale)
        except BaseException as exc:
            self.cache.metrics.add(upstream_errors=1)
            # the cells lie inside the dataset, so whatever goes wrong reading them is the
            # upstream's failure (502): unreachable, refusing, or answering what cannot be
            # decoded.  Refused credentials stay themselves (a forwarded token: 403).
            err: BaseException = exc
            # an absent chunk of an upstream opened with missing="error" stays itself too
            if not isinstance(exc, (UpstreamError, AuthenticationError, MissingChunkError)):
                err = UpstreamError(f"upstream {self.upstream.url} failed: {exc}")
                err.__cause__ = exc
            self._land(items)
            for _, _, flight in items:
                flight.future.set_exception(err)
            return
        self.cache.metrics.upstream_latency(time.perf_counter() - t0)
        self.cache.metrics.add(upstream_bytes=data.nbytes, upstream_cells=len(items))
        results = []
        for key, cell, flight in items:
            arr = data if cell == region else np.ascontiguousarray(
                data[(..., *cell.slices(region.start))])
            results.append(arr)
            # cached only when no write detached this fetch (then it may hold the old data),
            # checked and stored under the stripe writers of the cell hold, so no write can
            # detach it in between; a writer holding it now means the data is going stale, so
            # the fetch does not wait for it, it just does not cache
            stripe = _STRIPES[hash(key) % len(_STRIPES)]
            if stripe.acquire(blocking=False):
                try:
                    if not flight.stale and not self._closed:
                        self.cache.put(key, arr)
                finally:
                    stripe.release()
        self._land(items)
        for (_, _, flight), arr in zip(items, results, strict=True):
            flight.future.set_result(arr)

    def _land(self, items: list[tuple[str, Box, _Flight]]) -> None:
        """A fetch is over: remove its in-flight entries (never a newer fetch's)."""
        with self._lock:
            for key, _, flight in items:
                if self._inflight.get(key) is flight:
                    del self._inflight[key]

    def _detach(self, keys: list[str]) -> None:
        """No read that begins from now on may join a fetch in flight for ``keys``, and those
        fetches may not cache what they read (called by writers holding the keys' stripes)."""
        with self._lock:
            for key in keys:
                flight = self._inflight.pop(key, None)
                if flight is not None:
                    flight.stale = True

    # -- writing --------------------------------------------------------------------------------
    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        cells = list(self.cells(box, scale))
        keys = [self._key(scale, idx) for idx, _ in cells]
        # writers touching the same cells go one at a time, so the cache ends as the upstream
        # does; stripes are taken in order, so two writers never wait on each other in a cycle
        stripes = sorted({hash(k) % len(_STRIPES) for k in keys})
        for i in stripes:
            _STRIPES[i].acquire()
        try:
            for key in keys:  # dropped before the upstream changes: a crash leaves no stale cell
                self.cache.pop(key)
            try:
                self.upstream.write(box, array, scale)
            finally:
                # whether the upstream took all, part or none of it: every fetch in flight now
                # (begun before or during the upstream write) may hold old data, and a read that
                # begins after this write returns must not join one
                self._detach(keys)
            self.cache.metrics.add(upstream_writes=1)
            for key, (_, cell) in zip(keys, cells, strict=True):
                if box.contains(cell):
                    self.cache.put(key, np.array(array[(..., *cell.slices(box.start))]))
        finally:
            for i in stripes:
                _STRIPES[i].release()

    def close(self) -> None:
        """Stop caching (fetches still in flight store nothing) and close the upstream."""
        for lock in _STRIPES:  # in order, as writers take them: no fetch is storing meanwhile
            lock.acquire()
        try:
            self._closed = True
            with self._lock:
                for flight in self._inflight.values():
                    flight.stale = True
                self._inflight.clear()
        finally:
            for lock in _STRIPES:
                lock.release()
        self.upstream.close()

    def drop_cached(self) -> int:
        """Drop every cached cell carrying this Remote's tag, from both tiers."""
        return self.cache.drop_tag(self.tag)
