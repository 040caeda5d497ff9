"""The caching Remote in front of an upstream (:class:`CachedRemote`): reads cut on a cell
grid aligned to the upstream's chunks, one upstream fetch per missing cell however many readers
want it, writes through to the upstream; the rules it keeps are in the package's docstring
(:mod:`voxgate.relay.cache`)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from ...errors import (
    AuthenticationError,
    MissingChunkError,
    RemoteUnavailableError,
    VoxgateError,
)
from ...geometry import Box, Vec, chunk_boxes, grow_block
from ...meta import VolumeMeta
from ...remotes.base import Capability, Remote
from .tiers import _TAG_END, TieredCache

__all__ = ["CELL_BYTES", "CachedRemote", "UpstreamError", "UpstreamTimeoutError",
           "meta_fingerprint", "meta_version"]

#: cache cells grow from the upstream's chunks toward this size (fewer entries, same alignment)
CELL_BYTES = 2**20


class UpstreamError(RemoteUnavailableError):
    """The upstream failed or answered something that could not be decoded (HTTP 502)."""


class UpstreamTimeoutError(UpstreamError, TimeoutError):
    """The upstream did not answer in time (HTTP 504)."""


class _Flight:
    """One upstream fetch of one cell: its future, and whether a write detached it."""

    __slots__ = ("future", "stale")

    def __init__(self) -> None:
        self.future: Future[np.ndarray] = Future()
        self.stale = False


_fetch_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="voxgate-upstream")


def meta_version(meta: VolumeMeta) -> str:
    """The version of a versioned store the metadata was resolved at ("" for the others): a
    DVID node, which a reference to a branch (``uuid:branch``, ``:branch~N``) names only until
    the branch moves on.  Two Remotes of one URL at other versions read other data."""
    dvid = meta.extra.get("dvid")
    node = dvid.get("node") if isinstance(dvid, dict) else None
    return str(node) if node else ""


def meta_fingerprint(meta: VolumeMeta) -> str:
    """A short digest of what a cell's bytes and place depend on in ``meta`` (dtype, kind,
    channels, fill value, every scale's shape, chunks, offset, voxel size and encoding, and
    the version it was resolved at: :func:`meta_version`), the same in every process: part of
    a CachedRemote's cell keys and of the relay's ETags.  (A cell read from one DVID node is
    never served as another's, whatever URL names them, even after a restart.)"""
    version = meta_version(meta)
    text = json.dumps([meta.dtype.str, meta.kind, meta.num_channels, repr(meta.fill_value),
                       [[s.index, list(s.shape), list(s.chunks), list(s.offset),
                         list(s.voxel_size), s.encoding, s.key] for s in meta.scales]]
                      + ([f"version {version}"] if version else []),
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _tiled(cells: list[Box]) -> Box | None:
    """The box two or more ``cells`` (disjoint, from one grid) tile exactly, or None."""
    if len(cells) < 2:
        return None
    union = Box(np.min([c.start for c in cells], axis=0), np.max([c.stop for c in cells], axis=0))
    return union if sum(c.size for c in cells) == union.size else None


class CachedRemote(Remote):
    """A Remote that caches another one cell by cell (see the module docstring)."""

    scheme = "relay-cache"

    def __init__(self, upstream: Remote, cache: TieredCache, *, identity: str,
                 timeout: float = 30.0, tag: str | None = None) -> None:
        self.upstream = upstream
        self.pyramid_anchor = upstream.pyramid_anchor
        self.cache = cache
        self.meta = upstream.meta
        self.mode = upstream.mode
        self.url = upstream.url
        self.timeout = timeout
        #: the metadata this Remote reads with: in its cell keys (below), so cells read
        #: under other metadata (another worker process, not yet reopened after the
        #: upstream's metadata changed, storing in the disk tier they share) are never taken
        #: for cells of this grid, nor its cells for theirs
        self.meta_key = meta_fingerprint(self.meta)
        #: where each scale's cell grid is anchored: the upstream's own grid (a DVID block or
        #: bossDB cuboid grid through 0, below an offset on none of its lines), so a cell never
        #: straddles the upstream's blocks (from the offset, each straddled up to 8 of them,
        #: all read by the upstream for each cell).  Cells are clipped to the scale's bounds
        self._anchors = [self._anchor(upstream, s.index) for s in self.meta.scales]
        # (cells on another grid are other cells: a grid not from the offset is in the keys)
        moved = [list(a) for a, s in zip(self._anchors, self.meta.scales, strict=True)
                 if a != s.offset]
        grid = f"|grid {json.dumps([list(a) for a in self._anchors])}" if moved else ""
        ident = hashlib.sha256(f"{identity}|{self.meta_key}{grid}".encode()).hexdigest()[:20]
        #: the tag every entry of this Remote carries (the relay passes the channel's, so a
        #: delete drops the cells of every token's view of it)
        self.tag = self.tag_of(tag if tag is not None else identity)
        self._prefix = f"{self.tag}{_TAG_END}{ident}"
        #: (upstream URL, incarnation) of the channel this Remote serves, set by the relay's
        #: catalog for a channel created through the project service: a write checks that this
        #: incarnation is still the channel's (see Relay.writing); ("", "") for the others
        self.origin: tuple[str, str] = ("", "")
        #: how many metadata changes of its channel had been recorded (in the relay's state,
        #: shared by its worker processes) when this Remote was opened (see Catalog.remote)
        self.meta_epoch = 0
        #: the options the channel opens its upstream with (JSON, no token), when it has any:
        #: in the relay's ETags, since options such as a time point choose the bytes served
        #: (two channels of one store, one tag and metadata, at two time points)
        self.options_key = ""
        #: the fetches in flight and their lock: the cache's, shared with every CachedRemote
        #: of it (one whose keys equal this one's holds the same cells: its writes detach
        #: this one's fetches, and its reads join them)
        self._inflight: dict[str, _Flight] = cache.inflight
        self._lock = cache.inflight_lock
        #: the other views of the same upstream whose cells a write through this one changes
        #: (a channel that forwards each client's token keeps one view, with cells of its own,
        #: per token): set by the relay's catalog; a write drops their cells of it too
        self.siblings: Callable[[], list[CachedRemote]] | None = None
        #: a digest of the credential the upstream was opened with ("" for none; set by the
        #: relay's catalog): in the identity, so in every key, and in the relay's ETags
        self.credential = ""
        self._closed = False
        #: whether missing cells that tile a box are read in one upstream read (an upstream
        #: whose reads are REST requests of its own size: Capability.BATCH_READ)
        self._one_read = Capability.BATCH_READ in upstream.capabilities
        self._grids = [
            grow_block(s.chunks, self.meta.dtype.itemsize * self.meta.num_channels, s.shape,
                       CELL_BYTES)
            for s in self.meta.scales
        ]

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> Remote:
        raise VoxgateError("a CachedRemote is made by the relay, not opened by URL")

    def _anchor(self, upstream: Remote, scale: int) -> Vec:
        """The start of the upstream's grid at ``scale`` (Remote.grid_bounds), when the
        cells (multiples of the scale's chunks) stay on its lines from there; else the
        scale's offset, where the cells of every other store begin."""
        sc = self.meta.scale(scale)
        start = upstream.grid_bounds(scale).start
        block = upstream.write_grid(scale)
        ok = all(a % b == 0 and c % b == 0 and 0 <= o - a < b
                 for a, o, c, b in zip(start, sc.offset, sc.chunks, block, strict=True))
        return Vec(*start) if ok else sc.offset

    @staticmethod
    def tag_of(tag: str) -> str:
        """The cache tag a CachedRemote made with ``tag=tag`` gives its entries."""
        return hashlib.sha256(tag.encode()).hexdigest()[:16]

    #: what a CachedRemote itself can do when its upstream can: write (through the cache, so
    #: reads see it), tell absent chunks; server-side work (ids, meshes, proofreading, id
    #: reservation...) is the upstream's, asked of ``upstream`` directly, never claimed here
    PASSED_THROUGH = frozenset({Capability.WRITE, Capability.CHUNK_PRESENCE,
                                Capability.BATCH_READ})

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self.upstream.capabilities & self.PASSED_THROUGH

    def grid(self, scale: int) -> Vec:
        """The cache cell shape at ``scale``: also the chunk size the precomputed dialect
        serves (its chunks start at the scale's offset; cells at :meth:`cell_bounds`)."""
        return self._grids[scale]

    def write_grid(self, scale: int = 0) -> Vec:
        return self.upstream.write_grid(scale)

    def grid_bounds(self, scale: int = 0) -> Box:
        return self.upstream.grid_bounds(scale)

    def absent_chunks(self, box: Box, scale: int = 0) -> list[Vec]:
        """The upstream's absent chunks (its CHUNK_PRESENCE capability is passed through)."""
        return self.upstream.absent_chunks(box, scale)

    def spec(self) -> dict[str, Any]:
        return self.upstream.spec()

    def _key(self, scale: int, idx: Vec) -> str:
        return f"{self._prefix}/{scale}/{idx.z}_{idx.y}_{idx.x}"

    def cell_bounds(self, scale: int) -> Box:
        """The box whose start anchors the cell grid of ``scale`` (give it to ``chunk_boxes``
        with :meth:`grid`; clip what it gives to the scale's bounds)."""
        return Box(self._anchors[scale], self.meta.scale(scale).bounds.stop)

    def cells(self, box: Box, scale: int) -> Iterator[tuple[Vec, Box]]:
        bounds = self.meta.scale(scale).bounds
        anchor = self._anchors[scale]
        if anchor == bounds.start:
            return chunk_boxes(box, self._grids[scale], bounds)
        return ((idx, cell.intersect(bounds)) for idx, cell in
                chunk_boxes(box.intersect(bounds), self._grids[scale], self.cell_bounds(scale)))

    # -- encoded responses (.responses) ---------------------------------------------------------
    def _response_key(self, etag: str) -> str:
        # behind this Remote's prefix: the channel's tag (dropped with its cells) and the
        # identity, which holds a forwarded token's fingerprint (one client's response is
        # never another's)
        return f"{self._prefix}|{etag}"

    def response(self, etag: str) -> tuple[bytes, str] | None:
        """The encoded response (body, media type) kept under ``etag``, or None."""
        found = self.cache.responses.get(self._response_key(etag))
        self.cache.metrics.add(**{"response_hits" if found else "response_misses": 1})
        return found

    def keep_response(self, etag: str, body: bytes, media_type: str) -> None:
        """Keep an encoded response for later requests with the same ETag.  ``etag`` must
        hold the generation taken *before* the data was read (see .responses)."""
        if not self._closed:
            self.cache.responses.put(self._response_key(etag), body, media_type)

    # -- reading --------------------------------------------------------------------------------
    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        return self._read(box, scale, shared=False)

    def read_shared(self, box: Box, scale: int = 0) -> np.ndarray:
        """:meth:`read` for a caller that only reads the result (to encode it): a box that is
        exactly one cell held in memory comes back as the cached array itself, read-only,
        without a copy."""
        return self._read(box, scale, shared=True)

    def _read(self, box: Box, scale: int, shared: bool) -> np.ndarray:
        deadline = time.monotonic() + self.timeout
        cells = list(self.cells(box, scale))
        looked = False  # whether the one cell was looked up already (a miss, counted once)
        if shared and len(cells) == 1 and cells[0][1] == box:
            arr = self.cache.get(self._key(scale, cells[0][0]))
            if arr is not None:
                self.cache.metrics.add(bytes_served=arr.nbytes)
                return arr
            looked = True
        lead = (self.meta.num_channels,) if self.meta.num_channels > 1 else ()
        out = np.empty(lead + tuple(box.shape), dtype=self.meta.dtype)
        waiting: list[tuple[Box, Future[np.ndarray]]] = []
        mine: list[tuple[str, Box, _Flight]] = []
        parts: list[Box] = []  # parts of missing cells read for this request alone
        skim: bool | None = None  # asked of the cache once, at the first missing cell
        for idx, cell in cells:
            key = self._key(scale, idx)
            arr = None if looked else self.cache.get(key)
            if arr is not None:
                self._place(out, box, cell, arr)
                continue
            if skim is None:
                skim = self.cache.skim()
            with self._lock:
                flight = self._inflight.get(key)
                if flight is not None:
                    self.cache.metrics.add(coalesced=1)
                elif skim:
                    parts.append(cell.intersect(box))
                    continue
                else:
                    flight = _Flight()
                    self._inflight[key] = flight
                    mine.append((key, cell, flight))
            waiting.append((cell, flight.future))
        if parts and not waiting:
            # the cache thrashes (TieredCache.skim): the box is read as a read of the upstream
            # itself would read it, in one read, caching nothing (even around cells it held:
            # one read is faster than the parts of the others, each read on its own)
            out = self._wait(_fetch_pool.submit(self._read_part, box, scale), deadline)
            self.cache.metrics.add(bytes_served=out.nbytes)
            return out
        # a REST upstream gets missing cells that tile one box as one read, which it cuts into
        # requests of its own size (fewer round trips); otherwise one read per cell, in
        # parallel: each decodes straight into the array that is cached, where one read of the
        # box they tile would allocate and copy a box-sized buffer on top (benchmarks/README.md,
        # item 7: a cold 128^3 uint64 read of local 64^3 chunks, 65-75 ms that way, 32-35 ms)
        union = _tiled([cell for _, cell, _ in mine]) if self._one_read else None
        if union is not None:
            _fetch_pool.submit(self._run_fetch, mine, union, scale)
        else:
            for item in mine:
                _fetch_pool.submit(self._run_fetch, [item], item[1], scale)
        waiting += [(part, _fetch_pool.submit(self._read_part, part, scale)) for part in parts]
        for cell, fut in waiting:
            try:
                arr = self._wait(fut, deadline)
            except MissingChunkError:
                part = cell.intersect(box)
                if part == cell:
                    raise
                # (an upstream opened with missing="error") the cell holds an absent chunk,
                # maybe not where this request reads: its part alone is read, which either
                # holds data (served, nothing cached) or raises naming only the absent chunks
                # it touches.  A 404 for the whole cell would make tensorstore, reading the
                # precomputed dialect, show present data as zeros
                arr = self._wait(_fetch_pool.submit(self._read_part, part, scale), deadline)
                cell = part
            self._place(out, box, cell, arr)
        self.cache.metrics.add(bytes_served=out.nbytes)
        return out

    def _wait(self, fut: Future[np.ndarray], deadline: float) -> np.ndarray:
        try:
            return fut.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            self.cache.metrics.add(upstream_timeouts=1)
            raise UpstreamTimeoutError(
                f"upstream {self.upstream.url} did not answer within {self.timeout:g} s"
            ) from None

    def _read_part(self, region: Box, scale: int) -> np.ndarray:
        """Read ``region`` for one request only (nothing cached: see TieredCache.skim)."""
        t0 = time.perf_counter()
        data = self._upstream_read(region, scale)
        self.cache.metrics.upstream_latency(time.perf_counter() - t0)
        self.cache.metrics.add(upstream_bytes=data.nbytes, upstream_parts=1)
        return data

    def _upstream_read(self, region: Box, scale: int) -> np.ndarray:
        """The upstream's read of ``region``, checked (:meth:`_checked`); a failure raised as
        :meth:`_upstream_failure` says."""
        try:
            return self._checked(self.upstream.read(region, scale), region)
        except BaseException as exc:
            err = self._upstream_failure(exc)
            if err is exc:
                raise
            raise err from exc

    def _upstream_failure(self, exc: BaseException) -> BaseException:
        """What a failed upstream read raises to the reads waiting on it."""
        self.cache.metrics.add(upstream_errors=1)
        # the cells lie inside the dataset, so whatever goes wrong reading them is the
        # upstream's failure (502): unreachable, refusing, or answering what cannot be
        # decoded.  Refused credentials stay themselves (a forwarded token: 403), and so does
        # an absent chunk of an upstream opened with missing="error".
        if isinstance(exc, (UpstreamError, AuthenticationError, MissingChunkError)):
            return exc
        err = UpstreamError(f"upstream {self.upstream.url} failed: {exc}")
        err.__cause__ = exc
        return err

    @staticmethod
    def _place(out: np.ndarray, box: Box, cell: Box, arr: np.ndarray) -> None:
        part = cell.intersect(box)
        out[(..., *part.slices(box.start))] = arr[(..., *part.slices(cell.start))]

    def _run_fetch(self, items: list[tuple[str, Box, _Flight]], region: Box,
                   scale: int) -> None:
        """Read ``region`` (one cell, or several that tile it) and hand each cell its data.

        Whatever happens, every flight of ``items`` ends (its future done) and leaves the
        in-flight table: a fetch that raised past its futures left its entries there for good,
        and every later read of those cells joined it and waited out its timeout (504), until a
        write detached them."""
        try:
            t0 = time.perf_counter()
            data = self._upstream_read(region, scale)
            self.cache.metrics.upstream_latency(time.perf_counter() - t0)
            self.cache.metrics.add(upstream_bytes=data.nbytes, upstream_cells=len(items))
            results = []
            for key, cell, flight in items:
                arr = data if cell == region else np.ascontiguousarray(
                    data[(..., *cell.slices(region.start))])
                results.append(arr)
                # cached only when no write detached this fetch (then it may hold the old
                # data), checked and stored under the stripe writers of the cell hold, so no
                # write can detach it in between; a writer holding it now means the data is
                # going stale, so the fetch does not wait for it, it just does not cache
                stripes = self.cache.write_stripes
                stripe = stripes[hash(key) % len(stripes)]
                if stripe.acquire(blocking=False):
                    try:
                        if not flight.stale and not self._closed:
                            # (its disk write behind this request: see TieredCache.put_behind)
                            self.cache.put_behind(key, arr)
                    finally:
                        stripe.release()
        except BaseException as exc:
            self._land(items)
            for _, _, flight in items:
                if not flight.future.done():
                    flight.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._land(items)
        for (_, _, flight), arr in zip(items, results, strict=True):
            flight.future.set_result(arr)

    def _checked(self, data: Any, region: Box) -> np.ndarray:
        """The upstream's answer to a read of ``region``, if it is an array of the region's
        shape (behind any leading axes); else :class:`UpstreamError`."""
        want = tuple(int(n) for n in region.shape)
        if not isinstance(data, np.ndarray) or tuple(data.shape[-3:]) != want:
            what = f"an array of shape {tuple(data.shape)}" if isinstance(data, np.ndarray) \
                else f"a {type(data).__name__}"
            raise UpstreamError(f"upstream {self.upstream.url} answered a read of {want} "
                                f"voxels with {what}")
        return data

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

    def _detach_prefix(self, prefix: str) -> None:
        """:meth:`_detach` every fetch in flight whose key starts with ``prefix`` (this
        Remote's cells, or its channel's: the table is the cache's, every channel's)."""
        with self._lock:
            for key in [k for k in self._inflight if k.startswith(prefix)]:
                self._inflight.pop(key).stale = True

    # -- writing --------------------------------------------------------------------------------
    def _coarser_keys(self, box: Box, scale: int) -> list[str]:
        """The cells of every coarser scale over ``box`` of ``scale``: an upstream may derive
        them from what is written (a DVID labelmap rebuilds its coarser scales on every write,
        and so does a relay in front of one), so a write drops them as it drops its own."""
        base = self.meta.scale(scale)
        keys = []
        for sc in self.meta.scales[scale + 1:]:
            lo, hi = [], []
            for a, b, o, oc, vf, vc, n in zip(box.start, box.stop, base.offset, sc.offset,
                                              base.voxel_size.zyx(), sc.voxel_size.zyx(),
                                              sc.shape, strict=True):
                f = float(vc) / float(vf)
                # one voxel more on each side covers both anchorings of a pyramid (blocks of
                # the factor from the scale's first voxel, or on the grid through 0)
                lo.append(max(oc, oc + math.floor((a - o) / f) - 1))
                hi.append(min(oc + n, oc + math.ceil((b - o) / f) + 1))
            if all(a < b for a, b in zip(lo, hi, strict=True)):
                keys += [self._key(sc.index, idx) for idx, _ in self.cells(Box(lo, hi),
                                                                           sc.index)]
        return keys

    def _same_grid(self, other: CachedRemote) -> bool:
        """Whether ``other`` (a view of the same upstream) places every voxel where this one
        does: the same scales, each over the same box, coarser by the same factors (metadata
        that differs only in what it says of the voxels: voxel sizes, kind, fill value...).
        Then a box written here is the same box there, and so are its coarser regions."""
        if other.meta_key == self.meta_key:
            return True
        mine, theirs = self.meta.scales, other.meta.scales
        if len(mine) != len(theirs):
            return False
        v0, w0 = mine[0].voxel_size.zyx(), theirs[0].voxel_size.zyx()
        for a, b in zip(mine, theirs, strict=True):
            if a.index != b.index or a.bounds != b.bounds:
                return False
            # (a's voxel / v0 == b's voxel / w0 on each axis: the same factors from scale 0)
            if not all(math.isclose(float(va) * float(wz), float(vb) * float(vz), rel_tol=1e-9)
                       for va, vb, vz, wz in zip(a.voxel_size.zyx(), b.voxel_size.zyx(), v0,
                                                 w0, strict=True)):
                return False
        return True

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        cells = list(self.cells(box, scale))
        keys = [self._key(scale, idx) for idx, _ in cells]
        # the coarser scales' cells too: dropped, and their fetches detached, like the cells
        # written (never cached again from the write: the upstream's coarser data is its own)
        dropped = keys + self._coarser_keys(box, scale)
        # views of the upstream on another voxel grid: all their cells go (below)
        whole: list[CachedRemote] = []
        seen = {self._prefix}
        for other in self.siblings() if self.siblings is not None else ():
            # another view of the same upstream (another channel of it, or another token's:
            # configured or forwarded): its cells of the region are the old data now (one
            # that read them before this write read them again, stale, until evicted).  A
            # view with the same keys (same credential) holds the same cells: once is enough
            if other._prefix in seen or other._closed:
                continue
            seen.add(other._prefix)
            if self._same_grid(other):
                dropped += [other._key(scale, idx) for idx, _ in other.cells(box, scale)]
                dropped += other._coarser_keys(box, scale)
            else:
                # read with metadata that places its voxels elsewhere (another offset, other
                # scales: a channel's options chose them, e.g. an OME-Zarr multiscale=): where
                # the region lies in it is not known here, so none of its cells is kept
                whole.append(other)
        # writers touching the same cells go one at a time, so the cache ends as the upstream
        # does; stripes are taken in order, so two writers never wait on each other in a cycle
        # (the stripes are the cache's: a relay whose upstream is another relay in the same
        # process takes its own while this write holds these).  A write that drops whole views
        # takes every stripe, as invalidate does: no fetch of theirs stores meanwhile
        table = self.cache.write_stripes
        stripes = range(len(table)) if whole else sorted({hash(k) % len(table) for k in dropped})
        for i in stripes:
            table[i].acquire()
        try:
            for key in dropped:  # dropped before the upstream changes: a crash leaves no stale
                self.cache.pop(key)  # cell
            for other in whole:
                self.cache.drop_view(other._prefix)
            try:
                self.upstream.write(box, array, scale)
            finally:
                # whether the upstream took all, part or none of it: every fetch in flight now
                # (begun before or during the upstream write) may hold old data, and a read that
                # begins after this write returns must not join one
                self._detach(dropped)
                for other in whole:
                    self._detach_prefix(other._prefix + "/")
            self.cache.metrics.add(upstream_writes=1)
            for key, (_, cell) in zip(keys, cells, strict=True):
                # (a Remote closed or retired meanwhile caches nothing: its grid may not be
                # the channel's any more)
                if box.contains(cell) and not self._closed:  # (on disk behind, as fetches)
                    self.cache.put_behind(key, np.array(array[(..., *cell.slices(box.start))]))
        finally:
            for i in stripes:
                table[i].release()

    def close(self) -> None:
        """Stop caching (fetches still in flight store nothing) and close the upstream."""
        self.retire()
        self.upstream.close()

    def retire(self) -> None:
        """Stop caching (fetches still in flight store nothing), leaving the upstream open for
        reads in progress (a Remote replaced by one with the upstream's new metadata)."""
        for lock in self.cache.write_stripes:  # in order, as writers take them: no fetch is
            lock.acquire()  # storing meanwhile
        try:
            self._closed = True
            self._detach_prefix(self._prefix + "/")
        finally:
            for lock in self.cache.write_stripes:
                lock.release()

    def evict(self) -> None:
        """Let this Remote go (its catalog keeps it no longer): :meth:`retire` it, and drop
        its cells and encoded responses from memory.  Reads in progress on it finish, reading
        from the upstream what is no longer there, and cache nothing.  (A view opened again
        later for the same credential has another identity, so it never meets what this one
        left on disk, which a write through the other views no longer drops: it ages out.)"""
        self.retire()
        self.cache.memory.drop_prefix(self._prefix + "/")
        self.cache.responses.drop_prefix(self._prefix + "|")

    def invalidate(self) -> int:
        """Forget everything cached of this channel, as after a write made elsewhere (another
        relay): fetches in flight store nothing and no later read joins them, and every cell
        carrying this Remote's tag is dropped from both tiers; return how many."""
        for lock in self.cache.write_stripes:  # in order, as writers take them: no fetch is
            lock.acquire()  # storing meanwhile
        try:
            self._detach_prefix(self.tag + _TAG_END)
            return self.cache.drop_tag(self.tag)
        finally:
            for lock in self.cache.write_stripes:
                lock.release()

    def drop_cached(self) -> int:
        """Drop every cached cell carrying this Remote's tag, from both tiers."""
        return self.cache.drop_tag(self.tag)
