"""The label statistics of a whole channel at one resolution (ids, voxel counts, bounding
boxes), computed in one block-wise pass and cached: what the bossDB dialect's boundingbox
route, and its ids route for a whole channel, answer from.

Before, every boundingbox request scanned the whole channel for its one id (4096 ids of a
256x1024x1024 channel: hours).  Now the first request computes every id's box in one pass
with the local label_stats kernel (blocks of :data:`SCAN_BYTES`, a few at a time: bounded
memory), and the next ones look theirs up.  The pass reads the upstream itself, not through
the chunk cache: writes through the relay reach the upstream before they return, so it sees
every acknowledged write, and it neither evicts the cache's working set nor pays for filling
it (through the cache the 256x1024x1024 pass took 2 to 3 times as long).

Freshness.  Every write through the relay (cutouts, to_black, the downsample job) runs inside
:meth:`LabelStatsCache.writing`, which moves the channel's *generation* on when it starts and
again when it ends.  A computation remembers the generation it began in, and its result is kept
only if the generation is unchanged when it ends, and served only while it still is: so a result
that read (part of) the channel before a write is never served once that write has returned.
Requests that arrive while a computation for the same channel and resolution is running, with
no write begun since, join it (single flight); after a write began they start a new one.
Writes through another worker process of ``voxgate serve --workers N`` (or another relay sharing
the write generations) are seen the same way: every :meth:`LabelStatsCache.get` first looks at
the channel's shared write generation (the relay's ``freshen``), and a generation this process
did not make moves the channel's generation here on, as a write would.
Results are kept per CachedRemote (one per channel incarnation and forwarded token, so a
channel deleted and created again never meets the old results) and resolution, least recently
used first out beyond :data:`KEEP_BYTES`.  The generation is per channel (its cache tag), so a
write through any token's view invalidates them all.

As for the chunk cache, a change made to an upstream behind the relay's back is not seen.

Signed channels.  An annotation channel whose upstream holds signed ids (int64, int32, ...) is
served as uint64 in two's complement (-1 as 2**64 - 1: codecs.wire_dtype), and its statistics
are of those served ids: every block is converted (:func:`served_ids`) before it is counted, so
its ids, bounding boxes and counts are cached, and invalidated by writes, as an unsigned
channel's are, and name the ids its cutouts hold.

Bounded.  A pass holds about 64 bytes per distinct id, so a channel of random ids (53 million in
40x1100x1200 voxels) once grew a relay to 12 GB.  A pass now holds at most :data:`MAX_IDS`
distinct ids (the environment variable ``VOXGATE_RELAY_STATS_MAX_IDS`` sets another cap): a
block with more distinct ids than that is refused before its statistics are computed (its
distinct ids are counted only when its runs of equal voxels, an upper bound counted in a few
milliseconds, pass the cap: a second pass over every block cost more than the kernel's own
time on blocks of many ids), and the merged ids are counted as they grow; past the cap the
pass stops, reads no more blocks, and the request answers bossDB's 413 / 2000
(REQUEST_TOO_LARGE, its answer to a request too large to serve) naming the cap.  The refusal
is kept like a result (until the channel is written), so asking again does not read the
channel again.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

from ..errors import (
    AuthenticationError,
    InvalidRequestError,
    MissingChunkError,
    redact,
    redacting_logger,
)
from ..geometry import Box, chunk_boxes, grow_block
from ..lru import make_newest
from ..parallel import run_blocks
from .cache import CachedRemote, UpstreamError, UpstreamTimeoutError
from .errors import REQUEST_TOO_LARGE, BossHTTPError

__all__ = ["KEEP_BYTES", "MAX_IDS", "MAX_IDS_ENV", "SCAN_BYTES", "SCAN_WORKERS", "ChannelStats",
           "LabelStatsCache", "TooManyIdsError", "max_ids_setting", "region_ids", "served_ids"]

log = redacting_logger("voxgate.relay")

#: blocks scanned at once by the passes here and the relay's ids / reserve scans (bounded
#: memory on big volumes)
SCAN_BYTES = 64 * 2**20
#: blocks computed at the same time by one pass (the relay serves others meanwhile)
SCAN_WORKERS = 2
#: cached results are dropped, least recently used first, beyond this many bytes
KEEP_BYTES = 256 * 2**20
#: the most distinct ids one pass holds: as many as a kept result of KEEP_BYTES has (64 bytes
#: an id); a pass holds at most about twice this many at once, besides its blocks in flight
MAX_IDS = KEEP_BYTES // 64
#: the environment variable that sets another cap (a positive integer)
MAX_IDS_ENV = "VOXGATE_RELAY_STATS_MAX_IDS"
#: partial results are merged whenever this many blocks have come in (bounded memory)
_MERGE_EVERY = 16
#: the passes' upstream reads (each waited for at most the relay's upstream timeout)
_read_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="voxgate-stats")


def max_ids_setting() -> int:
    """The cap on distinct ids a pass holds when ``[server] stats_max_ids`` sets none:
    ``VOXGATE_RELAY_STATS_MAX_IDS``, else MAX_IDS."""
    text = os.environ.get(MAX_IDS_ENV, "").strip()
    if not text:
        return MAX_IDS
    if not text.isdigit() or int(text) < 1:
        raise InvalidRequestError(f"{MAX_IDS_ENV} must be a positive integer (distinct ids), "
                                  f"got {text[:40]!r}")
    return int(text)


class TooManyIdsError(BossHTTPError):
    """A channel with more distinct ids than a pass may hold: bossDB's 413 / REQUEST_TOO_LARGE
    (bossspatialdb/views.py answers it to a cutout too large to serve)."""

    def __init__(self, url: str, res: int, max_ids: int, *, region: bool = False) -> None:
        what = ("The region has", "ids of") if region else (
            "The channel has", "whole-channel ids and bounding boxes for")
        super().__init__(413, REQUEST_TOO_LARGE,
                         f"{what[0]} more than {max_ids} distinct ids at resolution {res}, "
                         f"more than this relay computes {what[1]} (its {MAX_IDS_ENV} cap). "
                         "Ask /v1/ids/ for smaller regions.")
        self.url = url
        self.res = res
        self.max_ids = max_ids


@dataclass(frozen=True)
class ChannelStats:
    """Every non-zero id of a channel at one resolution (sorted uint64), its voxel count, its
    tight bounding box (half-open, dataset voxels at that resolution) and the sums of its
    voxels' coordinates (float64, exact integers: centroids are ``sum / count``)."""

    ids: np.ndarray
    count: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    sum: np.ndarray
    seconds: float = 0.0

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes + self.count.nbytes + self.lo.nbytes + self.hi.nbytes
                   + self.sum.nbytes)

    def box(self, ident: int) -> Box | None:
        """The tight bounding box of ``ident``, or None when it has no voxel."""
        i = int(np.searchsorted(self.ids, np.uint64(ident)))
        if i == len(self.ids) or int(self.ids[i]) != ident:
            return None
        return Box(self.lo[i], self.hi[i])


def served_ids(data: np.ndarray) -> np.ndarray:
    """``data`` as the relay serves an annotation channel's ids: signed ids as uint64 in two's
    complement (-7 as 2**64 - 7, as numpy's ``astype`` and the relay's cutouts give them;
    int64 reinterpreted without a copy), other ids as they are."""
    if data.dtype.kind != "i":
        return data
    if data.dtype.itemsize == 8:
        return data.view(np.uint64)
    return data.astype(np.uint64)


def compute_stats(remote: CachedRemote, res: int, *, workers: int = SCAN_WORKERS,
                  max_ids: int = MAX_IDS, held: Callable[[int], None] | None = None
                  ) -> ChannelStats:
    """One pass over the whole channel at ``res``, read from ``remote``'s upstream: blocks of
    about SCAN_BYTES aligned to the cache cells, ``workers`` at a time, partial results merged
    as they come in.  The upstream's failures are the relay's UpstreamError (502), and a read
    that takes longer than the relay's upstream timeout its UpstreamTimeoutError (504), as
    for reads through the cache.  More than ``max_ids`` distinct ids, in one block or merged,
    stop the pass with TooManyIdsError; ``held`` is told how many ids the partial results
    hold whenever that changes."""
    # (here, not at import: voxgate.services imports every Service and its kernels, ~80 ms
    # of every relay's start, for the first stats request only)
    from ..services.label_stats import label_stats_kernel, merge_stats

    t0 = time.perf_counter()
    bounds = remote.meta.scale(res).bounds
    # (a narrower signed block is widened to uint64 before it is counted: sized as uint64)
    itemsize = 8 if remote.meta.dtype.kind == "i" else remote.meta.dtype.itemsize
    block = grow_block(remote.grid(res), itemsize, bounds.shape, SCAN_BYTES)
    # on the cache cells' grid (CachedRemote.cell_bounds: over a DVID upstream at an offset
    # off its 64^3 blocks, the blocks' grid), so no scan block straddles the upstream's
    blocks = [cell.intersect(bounds) for _, cell in
              chunk_boxes(bounds, block, remote.cell_bounds(res))]
    lock = threading.Lock()
    parts: list[dict[str, np.ndarray]] = []

    upstream = remote.upstream
    stop = threading.Event()

    def too_many() -> TooManyIdsError:
        return TooManyIdsError(remote.url, res, max_ids)

    def one(b: Box) -> dict[str, np.ndarray]:
        if stop.is_set():  # (blocks already handed to the pool when the cap was passed)
            raise too_many()
        try:
            data = served_ids(_read_pool.submit(upstream.read, b, res)
                              .result(timeout=remote.timeout))
        except FutureTimeout:
            raise UpstreamTimeoutError(f"upstream {upstream.url} did not answer within "
                                       f"{remote.timeout:g} s") from None
        except (UpstreamError, AuthenticationError, MissingChunkError):
            raise
        except Exception as exc:
            raise UpstreamError(f"upstream {upstream.url} failed: {exc}") from exc
        if _ids_at_most(data) > max_ids and len(_nonzero_ids(data)) > max_ids:
            # refused before the kernel, whose memory grows with the ids of its block (about
            # 200 bytes an id, fastremap.renumber's dict: 0.9 GB for 4M ids); the exact count
            # is a second pass over the block, paid only when the bound allows too many
            stop.set()
            raise too_many()
        return label_stats_kernel(data, tuple(b.start))

    def done(_b: Box, out: object) -> None:
        with lock:
            parts.append(out)  # type: ignore[arg-type]
            count = sum(len(p["id"]) for p in parts)
            if held is not None:
                held(count)
            if len(parts) >= _MERGE_EVERY or count > max_ids:
                parts[:] = [merge_stats(parts)]
                if held is not None:
                    held(len(parts[0]["id"]))
                if len(parts[0]["id"]) > max_ids:
                    stop.set()
                    parts.clear()
                    raise too_many()

    result = run_blocks(one, blocks, workers=workers, on_done=done)
    if result.failed:
        raise result.failed[0][1]
    merged = merge_stats(parts)
    seconds = time.perf_counter() - t0
    log.info("label stats of %s at resolution %d: %d ids in %d blocks, %.1f s", redact(remote.url),
             res, len(merged["id"]), len(blocks), seconds)
    # boxes as int32 where the channel's coordinates fit (they nearly always do): with the
    # sums, a kept result stays at 64 bytes an id (8 id, 8 count, 2 x 12 box, 24 sum)
    lo, hi = merged["lo"], merged["hi"]
    if len(lo) and lo.min() >= np.iinfo(np.int32).min and hi.max() <= np.iinfo(np.int32).max:
        lo, hi = lo.astype(np.int32), hi.astype(np.int32)
    return ChannelStats(merged["id"], merged["count"], lo, hi, merged["sum"], seconds)


def region_ids(read: Callable[[Box], np.ndarray], blocks: Iterable[Box], url: str, res: int,
               max_ids: int) -> np.ndarray:
    """The distinct non-zero ids of ``blocks`` (each read with ``read``; signed ids as the relay
    serves them, :func:`served_ids`), sorted uint64: held as arrays merged every few blocks,
    never more than about twice ``max_ids`` of them, past which TooManyIdsError (a region of
    random ids grew a Python set by ~70 bytes an id)."""
    parts: list[np.ndarray] = []
    held = 0
    for b in blocks:
        parts.append(_nonzero_ids(served_ids(read(b))))
        held += len(parts[-1])
        if held > max_ids or len(parts) >= _MERGE_EVERY:
            parts = [np.unique(np.concatenate(parts))]
            held = len(parts[0])
            if held > max_ids:
                raise TooManyIdsError(url, res, max_ids, region=True)
    out = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
    if len(out) > max_ids:
        raise TooManyIdsError(url, res, max_ids, region=True)
    return out.astype(np.uint64, copy=False)


def _ids_at_most(data: np.ndarray) -> int:
    """An upper bound on the distinct values of ``data``: its runs of equal values in C order
    (5 ms on a 64 MiB uint64 block, where counting them exactly took 60 to 600 ms)."""
    flat = data.reshape(-1)
    return int(np.count_nonzero(flat[1:] != flat[:-1])) + 1 if flat.size else 0


def _nonzero_ids(data: np.ndarray) -> np.ndarray:
    """The distinct non-zero values of ``data``, sorted."""
    import fastremap

    found = fastremap.unique(data)
    return found[found != 0]


class _Flight:
    """One computation in progress: the generation it began in and its future."""

    __slots__ = ("future", "generation")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.future: Future[ChannelStats] = Future()


#: refusals (too many ids) a :class:`LabelStatsCache` remembers, the last noted; an older one
#: is found again by a pass (which stops at the cap again)
REFUSALS_KEPT = 256


class LabelStatsCache:
    """Whole-channel label statistics per (CachedRemote, resolution): cached, single flight,
    invalidated by writes (see the module docstring)."""

    def __init__(self, keep_bytes: int = KEEP_BYTES, workers: int = SCAN_WORKERS,
                 freshen: Callable[[CachedRemote], None] | None = None,
                 max_ids: int | None = None) -> None:
        self.keep_bytes = keep_bytes
        self.workers = workers
        #: the most distinct ids a pass holds (see the module docstring)
        self.max_ids = max_ids_setting() if max_ids is None else max_ids
        #: called first by every :meth:`get`: the relay's look at the channel's write
        #: generation, which :meth:`drop`\ s its results when another process wrote it
        self._freshen = freshen
        self._lock = threading.Lock()
        self._generation: dict[str, int] = {}
        # (id of the CachedRemote, res) -> (the remote, kept alive so its id is not reused;
        # the generation the result is current for; the result)
        self._kept: OrderedDict[tuple[int, int], tuple[CachedRemote, int, ChannelStats]] = \
            OrderedDict()
        self._flights: dict[tuple[int, int], tuple[CachedRemote, _Flight]] = {}
        # (id of the CachedRemote, res) -> (the remote, the generation, the cap) of a pass
        # refused for too many ids: refused again without a pass until the channel is written;
        # the REFUSALS_KEPT noted last (each holds its view: one per forwarded token, without
        # end, kept every view a token was refused through)
        self._refused: OrderedDict[tuple[int, int], tuple[CachedRemote, int, int]] = \
            OrderedDict()
        #: passes run so far, and requests that joined one in progress (/metrics shows them)
        self.computations = 0
        self.joined = 0
        #: passes stopped for too many ids, and the most ids partial results held at once
        self.refused = 0
        self.peak_ids = 0

    # -- writes ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, remote: CachedRemote) -> Iterator[None]:
        """Wrap every write to ``remote``'s channel: results begun before its end are stale."""
        self._bump(remote.tag)
        try:
            yield
        finally:
            self._bump(remote.tag)  # whether it wrote all, part or nothing

    def drop(self, tag: str) -> None:
        """The channel was written elsewhere (another worker process or relay): results
        computed so far, or being computed, are stale."""
        self._bump(tag)

    def _bump(self, tag: str) -> None:
        with self._lock:
            self._generation[tag] = self._generation.get(tag, 0) + 1
            for key in [k for k, (r, _, _) in self._kept.items() if r.tag == tag]:
                del self._kept[key]
            for key in [k for k, (r, _, _) in self._refused.items() if r.tag == tag]:
                del self._refused[key]

    # -- reads ----------------------------------------------------------------------------------
    def get(self, remote: CachedRemote, res: int) -> ChannelStats:
        """The statistics of ``remote``'s whole channel at ``res``, current as of this call."""
        key = (id(remote), res)
        if self._freshen is not None:
            self._freshen(remote)
        with self._lock:
            generation = self._generation.get(remote.tag, 0)
            kept = self._kept.get(key)
            if kept is not None and kept[0] is remote and kept[1] == generation:
                self._kept.move_to_end(key)
                return kept[2]
            refused = self._refused.get(key)
            if refused is not None and refused[0] is remote and refused[1] == generation \
                    and refused[2] == self.max_ids:
                raise TooManyIdsError(remote.url, res, self.max_ids)
            running = self._flights.get(key)
            if running is not None and running[0] is remote \
                    and running[1].generation == generation:
                flight, mine = running[1], False
                self.joined += 1
            else:
                flight, mine = _Flight(generation), True
                self._flights[key] = (remote, flight)
                self.computations += 1
        if not mine:
            return flight.future.result()
        try:
            stats = compute_stats(remote, res, workers=self.workers, max_ids=self.max_ids,
                                  held=self._held)
        except BaseException as exc:
            with self._lock:
                if self._flights.get(key, (None, None))[1] is flight:
                    del self._flights[key]
                if isinstance(exc, TooManyIdsError):
                    self.refused += 1
                    if self._generation.get(remote.tag, 0) == flight.generation:
                        self._refused[key] = (remote, flight.generation, exc.max_ids)
                        make_newest(self._refused, key, limit=REFUSALS_KEPT)
            flight.future.set_exception(exc)
            raise
        with self._lock:
            if self._flights.get(key, (None, None))[1] is flight:
                del self._flights[key]
            # kept only if no write began since the pass did (it may have read old data)
            if self._generation.get(remote.tag, 0) == flight.generation \
                    and stats.nbytes <= self.keep_bytes:
                self._kept[key] = (remote, flight.generation, stats)
                make_newest(self._kept, key, weight=lambda kept: kept[2].nbytes,
                            max_weight=self.keep_bytes)
        flight.future.set_result(stats)
        return stats

    def _held(self, count: int) -> None:
        with self._lock:
            self.peak_ids = max(self.peak_ids, count)

    def ids(self, remote: CachedRemote, res: int) -> list[int]:
        """Every non-zero id of the channel at ``res``, sorted."""
        return [int(i) for i in self.get(remote, res).ids]

    def bounding_box(self, remote: CachedRemote, ident: int, res: int) -> Box | None:
        """The tight bounding box of ``ident`` at ``res``, or None when it has no voxel."""
        return self.get(remote, res).box(ident)

    def metrics(self) -> dict[str, int]:
        with self._lock:
            return {"computations": self.computations, "joined": self.joined,
                    "refused": self.refused, "peak_ids": self.peak_ids,
                    "max_ids": self.max_ids, "kept": len(self._kept),
                    "kept_bytes": sum(s.nbytes for _, _, s in self._kept.values())}
