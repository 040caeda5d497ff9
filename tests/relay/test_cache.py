"""The relay's chunk cache: the tiers, persistence, single flight, write-through, partitioning by
credentials, damaged entries, metrics.

Unit tests drive ``voxgate.relay.cache`` (and the catalog) in-process; the protocol tests run a
real ``voxgate serve`` process.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import voxgate
from voxgate.api import open_remote
from voxgate.errors import AuthenticationError, RemoteUnavailableError, VoxgateError
from voxgate.geometry import Box, Vec
from voxgate.registry import register
from voxgate.relay.cache import (
    CachedRemote,
    CacheMetrics,
    MemoryTier,
    TieredCache,
    UpstreamError,
)
from voxgate.relay.cache import remote as cache_module  # CachedRemote reads CELL_BYTES there
from voxgate.relay.cache.responses import RESPONSE_SHARE
from voxgate.relay.catalog import Catalog
from voxgate.relay.config import ChannelConfig, RelayConfig
from voxgate.remotes.base import Remote

from .conftest import RW, RelayProcess, free_port, start_relay, start_relay_with_scheme
from .fake_remotes import TOKEN_SHAPE, TokenRemote, token_id
from .http_upstream import LayerServer


# -- in-process helpers -------------------------------------------------------------------------
class CountingRemote(Remote):
    """Wraps a Remote: counts reads and writes, can jitter them, fail writes, run a hook, or
    hold reads at a gate (``entered`` is set when a read reaches it; ``gate.set()`` lets them
    all through)."""

    scheme = "counting"

    def __init__(self, inner: Remote, delay: float = 0.0) -> None:
        self.inner = inner
        self.meta = inner.meta
        self.mode = inner.mode
        self.url = f"counting+{inner.url}"
        self.delay = delay  # random jitter (widens race windows; orders nothing)
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.reads: list[Box] = []
        self.writes: list[Box] = []
        self.fail_writes = False
        self.after_read: Callable[[], None] | None = None  # runs once, data already read
        self._lock = threading.Lock()

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> Remote:
        raise VoxgateError("made by the tests")

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        with self._lock:
            self.reads.append(box)
            hook, self.after_read = self.after_read, None
        arr = self.inner.read(box, scale)
        if self.delay:
            time.sleep(random.uniform(0, self.delay))
        if self.gate is not None:
            self.entered.set()
            self.gate.wait()
        if hook is not None:
            hook()
        return arr

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        if self.fail_writes:
            raise RemoteUnavailableError("the upstream refused the write")
        if self.delay:
            time.sleep(random.uniform(0, self.delay))
        self.inner.write(box, array, scale)
        with self._lock:
            self.writes.append(box)


def mem_volume(name: str, data: np.ndarray, chunks: tuple[int, int, int]) -> CountingRemote:
    vol = voxgate.create(f"mem://{name}", shape=data.shape, dtype=data.dtype, chunks=chunks,
                         voxel_size=(40, 8, 8))
    vol[:] = data
    return CountingRemote(open_remote(f"mem://{name}", mode="r+"))


def whole(remote: Remote) -> Box:
    return Box((0, 0, 0), remote.meta.scale(0).shape)


# -- memory tier --------------------------------------------------------------------------------
def test_memory_tier_is_lru_by_bytes() -> None:
    tier = MemoryTier(1000)
    a, b, c, d, e = (np.full(300, i, np.uint8) for i in range(5))
    tier.put("a", a)
    tier.put("b", b)
    tier.put("c", c)
    assert tier.used == 900 and len(tier) == 3
    tier.put("d", d)  # over capacity: the least recently used ("a") goes
    assert tier.get("a") is None and tier.used == 900
    assert tier.get("b") is not None  # "b" is now the most recently used
    tier.put("e", e)
    assert tier.get("c") is None and tier.get("b") is not None and tier.used == 900
    tier.put("big", np.zeros(1001, np.uint8))  # larger than the tier: not kept, nothing evicted
    assert tier.get("big") is None and len(tier) == 3 and tier.used == 900
    tier.put("b", np.zeros(100, np.uint8))  # replacing an entry re-counts its bytes
    assert tier.used == 700
    tier.pop("b")
    tier.pop("never-there")
    assert tier.used == 600 and len(tier) == 2
    stored = tier.get("e")
    assert stored is not None and not stored.flags.writeable  # shared: nobody may change it


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "get", "pop"]), st.integers(0, 7),
                          st.integers(1, 400)), max_size=80))
def test_memory_tier_matches_an_lru_model(ops: list[tuple[str, int, int]]) -> None:
    capacity = 1000
    tier = MemoryTier(capacity)
    model: OrderedDict[str, int] = OrderedDict()
    for op, k, size in ops:
        key = f"k{k}"
        if op == "put":
            tier.put(key, np.zeros(size, np.uint8))
            model.pop(key, None)
            if size <= capacity:
                model[key] = size
                while sum(model.values()) > capacity:
                    model.popitem(last=False)
        elif op == "get":
            got = tier.get(key)
            assert (got is not None) == (key in model)
            if got is not None:
                assert got.nbytes == model[key]
                model.move_to_end(key)
        else:
            tier.pop(key)
            model.pop(key, None)
        assert tier.used == sum(model.values()) <= capacity
        assert len(tier) == len(model)


# -- single flight ------------------------------------------------------------------------------
@dataclass
class WatchedMetrics(CacheMetrics):
    """Cache metrics that wake waiters on every change (a test waits for a count, not a time)."""

    changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def add(self, **counts: float) -> None:
        super().add(**counts)
        with self.changed:
            self.changed.notify_all()

    def wait_until(self, name: str, value: int) -> None:
        with self.changed:
            ok = self.changed.wait_for(lambda: getattr(self, name) >= value, timeout=120)
        assert ok, f"{name} reached {getattr(self, name)}, never {value}"


def test_concurrent_reads_of_a_missing_cell_make_one_upstream_fetch() -> None:
    data = np.random.default_rng(0).integers(0, 255, (16, 64, 64), dtype=np.uint8)
    up = mem_volume("single", data, (8, 32, 32))
    up.gate = threading.Event()  # the fetch is held until every reader has joined it
    cache = TieredCache(2**26)
    metrics = cache.metrics = WatchedMetrics()
    remote = CachedRemote(up, cache, identity="single")
    cells = len(list(remote.cells(whole(remote), 0)))
    box = Box((2, 3, 4), (14, 60, 61))
    results: list[np.ndarray] = []

    def reader() -> None:
        results.append(remote.read(box))

    threads = [threading.Thread(target=reader) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        metrics.wait_until("coalesced", 7 * cells)  # seven readers wait on the one fetch
        # (the fetch's thread may reach the upstream after the others joined it: waited for,
        # a bound against a hang, not a timing assertion)
        deadline = time.monotonic() + 60
        while len(up.reads) < cells and time.monotonic() < deadline:
            time.sleep(0.01)
        assert up.entered.wait(60) and len(up.reads) == cells and not results
    finally:
        up.gate.set()
        for t in threads:
            t.join()
    assert len(results) == 8
    for got in results:
        np.testing.assert_array_equal(got, data[2:14, 3:60, 4:61])
    assert len(up.reads) == cells
    m = cache.metrics.snapshot()
    assert m["upstream_cells"] == cells and m["coalesced"] == 7 * cells
    remote.read(box)
    assert len(up.reads) == cells  # and then it is cached


@pytest.mark.parametrize("batch", [False, True], ids=["chunk store", "REST store"])
def test_missing_cells_tiling_a_box_are_one_read_only_from_a_rest_upstream(batch: bool) -> None:
    """An upstream of REST requests (Capability.BATCH_READ: bossDB, DVID) gets the missing
    cells that tile a box as one read, which it cuts into requests of its own size; any other
    gets one read per cell (decoded straight into the cached array), in parallel."""
    from voxgate.remotes.base import Capability

    class Rest(CountingRemote):
        @property
        def capabilities(self) -> frozenset[Capability]:
            return self.inner.capabilities | {Capability.BATCH_READ}

    data = np.random.default_rng(3).integers(0, 255, (64, 256, 256), dtype=np.uint8)
    counted = mem_volume(f"tiling-{batch}", data, (64, 128, 128))  # 1 MiB chunks: cells
    up = Rest(counted.inner) if batch else counted
    remote = CachedRemote(up, TieredCache(2**26), identity=f"tiling-{batch}")
    box = Box((3, 100, 90), (60, 200, 250))  # inside all four cells
    cells = [c for _, c in remote.cells(box, 0)]
    assert len(cells) == 4
    np.testing.assert_array_equal(remote.read(box), data[box.slices()])
    if batch:
        assert up.reads == [whole(remote)]
    else:
        assert sorted(map(repr, up.reads)) == sorted(map(repr, cells))
    m = remote.cache.metrics.snapshot()
    assert m["upstream_cells"] == 4 and m["upstream_fetches"] == (1 if batch else 4)
    up.reads.clear()
    np.testing.assert_array_equal(remote.read(box), data[box.slices()])
    assert not up.reads  # every cell cached, both ways


def test_single_flight_through_the_relay(tmp_path: Path) -> None:
    shape = (32, 128, 256)  # one cache cell of 16 chunks
    data = np.random.default_rng(2).integers(0, 255, shape, dtype=np.uint8)
    vol = voxgate.create(f"precomputed://file://{tmp_path}/layer", shape=shape,
                         chunks=(16, 64, 64), dtype="uint8", voxel_size=(40, 8, 8))
    vol[:] = data
    server = LayerServer(tmp_path)
    server.start()
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f"""
[cache]
memory_bytes = "64 MiB"
[[channel]]
name = "s/f/img"
upstream = "{server.url('layer')}"
""")
    relay = start_relay(cfg, free_port())
    try:
        with relay.client(None) as http:
            assert http.get("/v1/collection/s/experiment/f/channel/img").status_code == 200
        # chunk requests are held (until ``wake`` is set) while all six requests arrive
        server.delay_chunks = 3600
        bodies: list[bytes] = []

        def get() -> None:
            res = httpx.get(relay.url + "/v1/cutout/s/f/img/0/10:200/20:100/3:30/", timeout=120)
            assert res.status_code == 200, res.text
            bodies.append(blosc.decompress(res.content))

        threads = [threading.Thread(target=get) for _ in range(6)]
        try:
            for t in threads:
                t.start()
            deadline = time.monotonic() + 120  # a ceiling for a broken relay, not a window
            while httpx.get(relay.url + "/metrics").json()["cache"]["coalesced"] < 5:
                assert time.monotonic() < deadline, "the requests never joined one fetch"
                time.sleep(0.02)
            assert not bodies
        finally:
            server.wake.set()
            for t in threads:
                t.join()
        assert len(bodies) == 6
        for body in bodies:
            np.testing.assert_array_equal(
                np.frombuffer(body, np.uint8).reshape(27, 80, 190), data[3:30, 20:100, 10:200])
        m = httpx.get(relay.url + "/metrics").json()["cache"]
        assert m["upstream_cells"] == 1 and m["coalesced"] == 5, m
        assert server.chunk_requests == 16  # the cell's chunks, once, not once per request
    finally:
        relay.stop()
        server.stop()


# -- writes -------------------------------------------------------------------------------------
def test_writes_go_through_before_returning_and_update_the_cache() -> None:
    data = np.random.default_rng(1).integers(0, 255, (16, 64, 64), dtype=np.uint8)
    up = mem_volume("wt", data, (8, 32, 32))
    old_cell_bytes = cache_module.CELL_BYTES
    cache_module.CELL_BYTES = 8 * 32 * 32  # cells = chunks, so a write can cover some cells
    try:
        remote = CachedRemote(up, TieredCache(2**26), identity="wt")
    finally:
        cache_module.CELL_BYTES = old_cell_bytes
    assert remote.grid(0) == Vec(8, 32, 32)
    np.testing.assert_array_equal(remote.read(whole(remote)), data)  # all 8 cells cached
    fetched = len(up.reads)
    box = Box((0, 0, 0), (8, 32, 40))  # one cell whole, and part of its x neighbour
    new = np.full((8, 32, 40), 7, np.uint8)
    remote.write(box, new)
    assert up.writes == [box]
    np.testing.assert_array_equal(up.inner.read(box), new)  # in the upstream when write returns
    expected = data.copy()
    expected[0:8, 0:32, 0:40] = 7
    # the covered cell is served from the cache with the new data; the partly written cell
    # was dropped and is refetched; nothing else is fetched again
    np.testing.assert_array_equal(remote.read(whole(remote)), expected)
    assert up.reads[fetched:] == [Box((0, 0, 32), (8, 32, 64))]


def test_a_failed_upstream_write_is_not_acknowledged_and_leaves_no_stale_cell() -> None:
    data = np.random.default_rng(3).integers(0, 255, (16, 64, 64), dtype=np.uint8)
    up = mem_volume("wf", data, (8, 32, 32))
    remote = CachedRemote(up, TieredCache(2**26), identity="wf")
    remote.read(whole(remote))
    up.fail_writes = True
    with pytest.raises(RemoteUnavailableError):
        remote.write(whole(remote), np.zeros((16, 64, 64), np.uint8))
    up.fail_writes = False
    np.testing.assert_array_equal(remote.read(whole(remote)), data)


def _cells_match_upstream(remote: CachedRemote, up: CountingRemote) -> None:
    for idx, cell in remote.cells(whole(remote), 0):
        key = remote._key(0, idx)
        truth = up.inner.read(cell)
        held = remote.cache.memory.get(key)
        if held is not None:
            np.testing.assert_array_equal(held, truth, err_msg=f"memory {key}")
        if remote.cache.disk is not None:
            on_disk = remote.cache.disk.get(key)
            if on_disk is not None:
                np.testing.assert_array_equal(on_disk, truth, err_msg=f"disk {key}")


class _HookedCache(TieredCache):
    """Runs ``hook`` once, inside the first ``put``, before storing."""

    hook: Callable[[], None] | None = None

    def put(self, key: str, arr: np.ndarray) -> None:
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        super().put(key, arr)


class _SignallingLock:
    """A lock that says when someone starts a blocking acquire of it."""

    def __init__(self, inner: Any, waiting: threading.Event) -> None:
        self.inner, self.waiting = inner, waiting

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if blocking:
            self.waiting.set()
        return bool(self.inner.acquire(blocking, timeout))

    def release(self) -> None:
        self.inner.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_a_write_through_a_chain_of_caches_in_one_process_never_waits_on_itself() -> None:
    # a relay whose upstream is another relay in the same process (tests, an embedded chain):
    # the outer write holds its cells' write locks while the inner one takes its own; with
    # one lock table per process, a stripe both need left each waiting for the other
    data = np.arange(8 * 64 * 64, dtype=np.uint8).reshape(8, 64, 64)
    up = mem_volume("chain1", data, (1, 8, 8))
    old_cell_bytes = cache_module.CELL_BYTES
    cache_module.CELL_BYTES = 8 * 8  # 512 cells of 1x8x8: many more stripes than not
    try:
        inner = CachedRemote(up, TieredCache(2**26), identity="chain-lab")
        outer = CachedRemote(inner, TieredCache(2**26), identity="chain-laptop")
    finally:
        cache_module.CELL_BYTES = old_cell_bytes
    assert len(list(outer.cells(whole(outer), 0))) == 512
    new = (255 - data).astype(np.uint8)
    failed: list[BaseException] = []

    def write() -> None:
        try:
            outer.write(whole(outer), new)
        except BaseException as exc:  # reported below
            failed.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(60)
    assert not writer.is_alive(), "the chained write is waiting on a lock its own chain holds"
    assert not failed, failed
    np.testing.assert_array_equal(up.inner.read(whole(outer)), new)
    np.testing.assert_array_equal(inner.read(whole(inner)), new)
    np.testing.assert_array_equal(outer.read(whole(outer)), new)


def test_a_fetch_finishing_during_a_write_does_not_cache_old_data(
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.zeros((8, 32, 32), np.uint8)
    up = mem_volume("race1", data, (8, 32, 32))
    cache = _HookedCache(2**26)
    remote = CachedRemote(up, cache, identity="race1")
    box = whole(remote)
    part = Box((0, 0, 0), (4, 32, 32))  # half the cell: dropped by the write, not re-cached
    # set when the writer waits for a cell lock, or when it has finished (a cache that lets it
    # through); either way the write has begun before the fetch stores what it read
    progressed = threading.Event()
    monkeypatch.setattr(cache, "write_stripes",
                        [_SignallingLock(lock, progressed) for lock in cache.write_stripes])

    def write() -> None:
        try:
            remote.write(part, np.full((4, 32, 32), 9, np.uint8))
        finally:
            progressed.set()

    writer = threading.Thread(target=write)

    def write_meanwhile() -> None:
        # the fetch has read the old data and is storing it; a write starts now
        writer.start()
        assert progressed.wait(120), "the writer neither waited nor finished"

    cache.hook = write_meanwhile
    np.testing.assert_array_equal(remote.read(box), data)  # the read itself may be old
    writer.join()
    _cells_match_upstream(remote, up)
    expected = data.copy()
    expected[0:4] = 9
    np.testing.assert_array_equal(remote.read(box), expected)


def test_a_write_between_a_fetch_and_its_store_is_not_overwritten() -> None:
    data = np.zeros((8, 32, 32), np.uint8)
    up = mem_volume("race3", data, (8, 32, 32))
    remote = CachedRemote(up, TieredCache(2**26), identity="race3")
    box = whole(remote)
    part = Box((0, 0, 0), (4, 32, 32))
    # the fetch has read the old data; a whole write runs before it stores it
    up.after_read = lambda: remote.write(part, np.full((4, 32, 32), 9, np.uint8))
    np.testing.assert_array_equal(remote.read(box), data)  # the read began before the write
    assert up.writes == [part]
    _cells_match_upstream(remote, up)
    expected = data.copy()
    expected[0:4] = 9
    np.testing.assert_array_equal(remote.read(box), expected)


def test_a_disk_hit_read_across_a_write_is_not_promoted(tmp_path: Path) -> None:
    data = np.zeros((8, 32, 32), np.uint8)
    up = mem_volume("race2", data, (8, 32, 32))
    remote = CachedRemote(up, TieredCache(2**26, tmp_path / "disk", 2**30), identity="race2")
    box = whole(remote)
    remote.read(box)  # on disk and in memory
    remote.cache.flush()  # (the disk write is behind, on the cache's writer thread)
    remote.cache.memory = MemoryTier(2**26)  # memory lost (as after a restart), disk kept
    assert remote.cache.disk is not None
    disk = remote.cache.disk
    disk_get = disk.get
    part = Box((0, 0, 0), (4, 32, 32))

    def hooked_get(key: str) -> np.ndarray | None:
        arr = disk_get(key)  # the old entry is read ...
        remote.write(part, np.full((4, 32, 32), 9, np.uint8))  # ... a write completes ...
        return arr  # ... and the reader goes on to promote what it read

    disk.get = hooked_get  # type: ignore[method-assign]
    np.testing.assert_array_equal(remote.read(box), data)
    disk.get = disk_get  # type: ignore[method-assign]
    _cells_match_upstream(remote, up)
    expected = data.copy()
    expected[0:4] = 9
    np.testing.assert_array_equal(remote.read(box), expected)


@pytest.mark.parametrize("thrashing", [False, True], ids=["memory and disk", "thrashing"])
def test_concurrent_reads_and_writes_leave_the_cache_equal_to_the_upstream(
        tmp_path: Path, thrashing: bool) -> None:
    """Also with a memory tier of 1 cell and no disk: then reads skim (read their parts of
    the cells, caching nothing) and one in SKIM_PROBE fetches whole cells, both racing the
    writes."""
    data = np.zeros((16, 64, 64), np.uint8)
    up = mem_volume(f"stress-{thrashing}", data, (8, 32, 32))
    up.delay = 0.003  # random jitter up to 3 ms widens every window
    old_cell_bytes = cache_module.CELL_BYTES
    cache_module.CELL_BYTES = 8 * 32 * 32
    try:
        cache = (TieredCache(int(8 * 32 * 32 / (1 - RESPONSE_SHARE)) + 1) if thrashing
                 else TieredCache(2**26, tmp_path / "disk", 2**30))
        remote = CachedRemote(up, cache, identity="stress")
    finally:
        cache_module.CELL_BYTES = old_cell_bytes
    stop = threading.Event()  # set when the writers are done: the readers stop then
    errors: list[BaseException] = []
    writes_each, reads, written = 25, [0] * 4, [0] * 3
    # on a thrashing cache the race goes on (up to a minute) until both kinds of read ran:
    # whether a read skims follows a moving average of the evictions, which hovers near its
    # threshold here, so 75 writes alone sometimes ended before the first skim (CI, 1 in 15)
    deadline = time.monotonic() + 60

    def both_kinds_ran() -> bool:
        m = remote.cache.metrics.snapshot()
        return not thrashing or (m["upstream_parts"] > 0 and m["upstream_cells"] > 0)

    def random_box(rng: random.Random) -> Box:
        lo = [rng.randrange(0, n) for n in (16, 64, 64)]
        hi = [rng.randrange(a + 1, n + 1) for a, n in zip(lo, (16, 64, 64), strict=True)]
        return Box(lo, hi)

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while written[seed] < writes_each or (
                    not both_kinds_ran() and time.monotonic() < deadline):
                box = random_box(rng)
                remote.write(box, np.full(tuple(box.shape), rng.randrange(256), np.uint8))
                written[seed] += 1
        except BaseException as exc:
            errors.append(exc)

    def reader(i: int) -> None:
        rng = random.Random(10 + i)
        try:
            while not stop.is_set() or reads[i] < 10:
                remote.read(random_box(rng))
                reads[i] += 1
                if not thrashing and rng.random() < 0.1:  # lose the memory tier at times:
                    remote.cache.memory = MemoryTier(2**26)  # disk hits promote
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    readers = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors
    assert len(up.writes) == sum(written) >= 3 * writes_each and min(reads) >= 10
    _cells_match_upstream(remote, up)
    np.testing.assert_array_equal(remote.read(whole(remote)), up.inner.read(whole(remote)))
    m = remote.cache.metrics.snapshot()
    if thrashing:  # both kinds of read ran
        assert m["upstream_parts"] > 0 and m["upstream_cells"] > 0, m
    else:
        assert m["upstream_parts"] == 0, m


def _thrashing_cache(name: str, data: np.ndarray) -> tuple[CountingRemote, CachedRemote]:
    """An upstream cut in 16 cells of 16 x 128 x 128 (256 KiB of uint8) in front of a memory
    tier that holds two cells, and no disk tier."""
    up = mem_volume(name, data, (16, 128, 128))
    old_cell_bytes = cache_module.CELL_BYTES
    cache_module.CELL_BYTES = 16 * 128 * 128
    try:
        cache = TieredCache(int(2 * 16 * 128 * 128 / (1 - RESPONSE_SHARE)) + 1)
        return up, CachedRemote(up, cache, identity=name)
    finally:
        cache_module.CELL_BYTES = old_cell_bytes


def test_a_thrashing_cache_reads_only_the_box_from_the_upstream() -> None:
    """A memory tier too small for what is read evicts cells nobody read; the cache then
    stops reading whole cells (several times the box) and reads each box as the upstream
    read would, caching nothing, except one read in SKIM_PROBE, which still fetches cells."""
    from voxgate.relay.cache.tiers import SKIM_PROBE

    rng = np.random.default_rng(5)
    data = rng.integers(0, 255, (64, 256, 256), dtype=np.uint8)
    up, remote = _thrashing_cache("thrash", data)
    assert not remote.cache.skim()  # a new cache has evicted nothing
    boxes = []
    for _ in range(60):
        z, y, x = (int(v) for v in rng.integers(0, 48, 3))
        boxes.append(Box((z, y, x), (z + 12, y + 200, x + 200)))  # a part of 4 to 8 cells
    cells = {c for _, c in remote.cells(whole(remote), 0)}
    whole_reads = parts = 0
    for i, box in enumerate(boxes):
        up.reads.clear()
        np.testing.assert_array_equal(remote.read(box), data[box.slices()])
        if set(up.reads) <= cells:  # whole cells (none reaches the box alone)
            whole_reads += 1
            continue
        assert i >= 2  # only once cells were evicted unread
        # the box in one read, or (where some cells were held) the parts of the others
        assert all(box.contains(r) for r in up.reads) and not set(up.reads) & cells, up.reads
        parts += len(up.reads)
    m = remote.cache.metrics.snapshot()
    skimmed = len(boxes) - whole_reads
    assert m["upstream_parts"] == parts and skimmed >= len(boxes) * 3 // 4, (m, skimmed)
    # while it thrashes, one read in SKIM_PROBE fetches whole cells (a few more at the start)
    assert whole_reads <= 8 + len(boxes) // SKIM_PROBE + 1, whole_reads
    assert remote.cache.memory.evicted_unread >= remote.cache.memory.evicted // 2
    assert remote.cache.memory.waste > 0.5


def test_a_thrashing_cache_caches_again_when_reads_come_back() -> None:
    """After thrashing, reads of a region the memory tier can hold are cached again: one
    read in SKIM_PROBE fetches cells, later reads of them are hits, and nothing more is read
    from the upstream."""
    from voxgate.relay.cache.tiers import SKIM_PROBE

    rng = np.random.default_rng(6)
    data = rng.integers(0, 255, (64, 256, 256), dtype=np.uint8)
    up, remote = _thrashing_cache("comeback", data)
    for z in range(0, 64, 16):  # every cell once, unread: thrashing
        for y in (0, 128):
            remote.read(Box((z, y, 0), (z + 4, y + 128, 256)))
    assert remote.cache.memory.waste > 0.5
    box = Box((1, 2, 3), (9, 100, 120))  # inside one cell
    up.reads.clear()
    for _ in range(SKIM_PROBE + 4):
        np.testing.assert_array_equal(remote.read(box), data[box.slices()])
    cell = Box((0, 0, 0), (16, 128, 128))
    assert up.reads.count(cell) == 1 and len(up.reads) <= SKIM_PROBE, up.reads
    assert set(up.reads) <= {box, cell}
    up.reads.clear()
    np.testing.assert_array_equal(remote.read(box), data[box.slices()])
    assert not up.reads  # a hit


def test_a_cache_with_a_disk_tier_never_skims(tmp_path: Path) -> None:
    """Cells the memory tier evicts stay on disk: whole cells are still worth reading."""
    rng = np.random.default_rng(7)
    data = rng.integers(0, 255, (64, 256, 256), dtype=np.uint8)
    up = mem_volume("skim-disk", data, (16, 128, 128))
    old_cell_bytes = cache_module.CELL_BYTES
    cache_module.CELL_BYTES = 16 * 128 * 128
    try:
        remote = CachedRemote(up, TieredCache(2 * 16 * 128 * 128, tmp_path / "d", 2**30),
                              identity="skim-disk")
    finally:
        cache_module.CELL_BYTES = old_cell_bytes
    for z in range(0, 64, 16):
        for y in (0, 128):
            remote.read(Box((z, y, 0), (z + 4, y + 128, 256)))
    assert remote.cache.memory.waste > 0.5 and not remote.cache.skim()
    assert remote.cache.metrics.snapshot()["upstream_parts"] == 0


# -- per-user credentials -----------------------------------------------------------------------
@pytest.fixture
def tokenfake() -> Iterator[None]:
    register("tokenfake", TokenRemote)
    TokenRemote.opened.clear()
    TokenRemote.reads.clear()
    yield
    TokenRemote.opened.clear()
    TokenRemote.reads.clear()


def test_forwarded_tokens_partition_the_cache(tokenfake: None, tmp_path: Path) -> None:
    def catalog() -> Catalog:
        cfg = RelayConfig()
        cfg.channels = [
            # an option value that is a list: the cache identity must still be computed
            ChannelConfig("c", "e", "mine", "tokenfake://vol", {"layers": ["a", "b"]},
                          forward_token=True),
            ChannelConfig("c", "e", "shared", "tokenfake://vol", forward_token=False),
        ]
        cfg.cache.disk_path = tmp_path / "disk"
        return Catalog(cfg, TieredCache(2**26, tmp_path / "disk", 2**30))

    cat = catalog()
    entry = cat.channel("c", "e", "mine")
    alice, bob = cat.remote(entry, "alice"), cat.remote(entry, "bob")
    assert alice is not bob and alice._prefix != bob._prefix
    assert cat.remote(entry, "alice") is alice
    box = Box((0, 0, 0), TOKEN_SHAPE)
    assert (alice.read(box) == token_id("alice")).all()
    assert {t for t, _ in TokenRemote.reads} == {"alice"}
    # bob's read is bob's: fetched from the upstream with his token, never alice's cells
    assert (bob.read(box) == token_id("bob")).all()
    assert {t for t, _ in TokenRemote.reads} == {"alice", "bob"}
    n = len(TokenRemote.reads)
    assert (alice.read(box) == token_id("alice")).all()
    assert len(TokenRemote.reads) == n  # alice's second read is her cached cells
    # the upstream was opened with each token, and the options came through
    opened = {(tok, str(opts)) for loc, tok, opts in TokenRemote.opened}
    assert ("alice", "{'layers': ['a', 'b']}") in opened and ("bob", str(
        {"layers": ["a", "b"]})) in opened
    # an anonymous request has its own partition, and the upstream refuses it
    anon = cat.remote(entry, None)
    assert anon._prefix not in (alice._prefix, bob._prefix)
    with pytest.raises(AuthenticationError):
        anon.read(box)
    # tokens are not written into the disk cache's keys
    assert cat.cache.disk is not None
    cat.cache.flush()  # (fetched cells reach the disk tier behind the reads)
    keys = list(cat.cache.disk._cache.iterkeys())
    assert keys and not any("alice" in k or "bob" in k for k in keys)
    cat.cache.close()
    # a restarted relay finds alice's cells on disk again (the identity is stable)
    cat2 = catalog()
    alice2 = cat2.remote(cat2.channel("c", "e", "mine"), "alice")
    assert alice2._prefix == alice._prefix
    assert (alice2.read(box) == token_id("alice")).all()
    assert len(TokenRemote.reads) == n and cat2.cache.metrics.disk_hits > 0
    cat2.cache.close()
    # without forward_token every client shares one upstream, opened with no token of theirs
    shared = cat.channel("c", "e", "shared")
    assert cat.remote(shared, "alice") is cat.remote(shared, "bob") is cat.remote(shared, None)
    assert all(tok is None for loc, tok, opts in TokenRemote.opened if not opts)


def _start_tokenfake_relay(cfg: Path) -> RelayProcess:
    return start_relay_with_scheme(cfg, 'tokenfake', 'tests.relay.fake_remotes:TokenRemote')


def test_forwarded_tokens_through_a_relay(tmp_path: Path) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text("""
[cache]
memory_bytes = "64 MiB"
[[channel]]
name = "p/e/seg"
upstream = "tokenfake://vol"
forward_token = true
[auth]
tokens = { alice = "read-write", bob = "read-write" }
""")
    relay = _start_tokenfake_relay(cfg)
    z, y, x = TOKEN_SHAPE
    url = f"/v1/cutout/p/e/seg/0/0:{x}/0:{y}/0:{z}/"
    try:
        with relay.client("alice") as alice, relay.client("bob") as bob:
            def cutout(http: httpx.Client) -> np.ndarray:
                res = http.get(url)
                assert res.status_code == 200, res.text
                return np.frombuffer(blosc.decompress(res.content), np.uint64)

            assert alice.get("/v1/collection/p/experiment/e/channel/seg").json()[
                "datatype"] == "uint64"
            assert (cutout(alice) == token_id("alice")).all()
            assert (cutout(bob) == token_id("bob")).all()
            hits = alice.get("/metrics").json()["cache"]["response_hits"]
            # the repeated cutout is alice's own encoded response (each token's view has keys
            # of its own), and bob's next one is his
            assert (cutout(alice) == token_id("alice")).all()
            assert alice.get("/metrics").json()["cache"]["response_hits"] == hits + 1
            assert (cutout(bob) == token_id("bob")).all()
            assert alice.get("/metrics").json()["cache"]["response_hits"] == hits + 2
            ids = alice.get(f"/v1/ids/p/e/seg/0/0:{x}/0:{y}/0:{z}/").json()["ids"]
            assert ids == [str(token_id("alice"))]
            # the object services read with the client's own credentials too
            res = alice.get(f"/v1/boundingbox/p/e/seg/0/{token_id('alice')}/?type=tight")
            assert res.status_code == 200, res.text
            assert res.json()["x_range"] == [0, x] and res.json()["z_range"] == [0, z]
            res = bob.get(f"/v1/boundingbox/p/e/seg/0/{token_id('alice')}/?type=tight")
            assert res.status_code == 404, res.text
            res = alice.get("/v1/reserve/p/e/seg/10")
            assert res.status_code == 200, res.text
            assert res.json()["start_id"] == token_id("alice") + 1
    finally:
        relay.stop()


# -- damaged disk entries -----------------------------------------------------------------------
def _damage(disk: Path, how: str) -> int:
    files = sorted(disk.rglob("*.val"))
    for f in files:
        raw = bytearray(f.read_bytes())
        if how == "flip":  # one bit in the middle of the payload
            raw[len(raw) // 2] ^= 0x10
        elif how == "truncate":
            raw = raw[: len(raw) // 2]
        elif how == "garbage":
            raw = bytearray(os.urandom(len(raw)))
        elif how == "empty":
            raw = bytearray()
        if how == "delete":
            f.unlink()
        else:
            f.write_bytes(bytes(raw))
    return len(files)


@pytest.mark.parametrize("how", ["flip", "truncate", "garbage", "empty", "delete"])
def test_a_damaged_disk_entry_is_refetched_never_served(tmp_path: Path, how: str) -> None:
    # random bytes do not compress, so each cell is its own file in the disk tier
    data = np.random.default_rng(5).integers(0, 255, (16, 128, 128), dtype=np.uint8)
    up = mem_volume(f"dmg-{how}", data, (8, 64, 64))
    box = whole(up)

    def fresh() -> CachedRemote:  # a relay restart: empty memory, the same disk
        return CachedRemote(up, TieredCache(2**26, tmp_path / "disk", 2**30), identity="dmg")

    first = fresh()
    np.testing.assert_array_equal(first.read(box), data)
    fetched = len(up.reads)
    first.cache.close()
    assert _damage(tmp_path / "disk", how) >= 1
    second = fresh()
    np.testing.assert_array_equal(second.read(box), data)
    assert len(up.reads) == 2 * fetched  # refetched from the upstream
    m = second.cache.metrics.snapshot()
    assert m["disk_hits"] == 0 and m["misses"] == fetched
    second.cache.close()
    third = fresh()  # and stored again, whole
    np.testing.assert_array_equal(third.read(box), data)
    assert len(up.reads) == 2 * fetched and third.cache.metrics.disk_hits == fetched
    third.cache.close()


class CreatesFile:
    """Unpickling this creates ``path``: a stand-in for any code a pickle can run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_cache_entries_are_checked_never_unpickled(tmp_path: Path) -> None:
    cache = TieredCache(2**20, tmp_path / "disk", 2**30)
    assert cache.disk is not None
    arr = np.arange(1000, dtype=np.uint64).reshape(10, 10, 10)
    cache.put("k", arr)
    np.testing.assert_array_equal(cache.disk.get("k"), arr)
    cache.disk._cache.set("k", b"VGC1 an entry of the old format, without a checksum")
    cache.memory.pop("k")
    assert cache.get("k") is None and cache.disk.get("k") is None  # dropped, to be refetched
    # an entry planted in the cache directory as a pickle (diskcache's format for objects):
    # the tier only ever stores bytes, and never unpickles what it finds
    marker = tmp_path / "unpickled"
    for size in (10, 2**16):  # inline in SQLite, and in a file of its own
        cache.disk._cache.set("k", [CreatesFile(marker), b"x" * size])
        assert cache.get("k") is None
        assert not marker.exists()
    cache.close()


# -- through a relay: restarts, damage, metrics -------------------------------------------------
def _zarr_relay(tmp_path: Path, data: np.ndarray, memory: str = "64 MiB",
                disk: bool = True) -> Path:
    vol = voxgate.create(f"zarr://{tmp_path}/up.zarr", shape=data.shape, chunks=(16, 64, 64),
                         dtype=data.dtype, voxel_size=(40, 8, 8))
    vol[:] = data
    cfg = tmp_path / "relay.toml"
    disk_path = f'disk_path = "{tmp_path / "cache"}"' if disk else ""
    cfg.write_text(f"""
[server]
state_path = "{tmp_path / 'state.json'}"
[cache]
memory_bytes = "{memory}"
{disk_path}
[[channel]]
name = "d/t/img"
upstream = "zarr://{tmp_path}/up.zarr"
[auth]
tokens = {{ "{RW}" = "read-write" }}
""")
    return cfg


SHAPE = (32, 256, 512)  # uint8 in (16, 64, 64) chunks: cache cells of (32, 128, 256), four


def _get(relay: RelayProcess, box: tuple[tuple[int, int], ...]) -> np.ndarray:
    (x0, x1), (y0, y1), (z0, z1) = box
    with relay.client(RW) as http:
        res = http.get(f"/v1/cutout/d/t/img/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/")
    assert res.status_code == 200, res.text
    return np.frombuffer(blosc.decompress(res.content), np.uint8).reshape(z1 - z0, y1 - y0,
                                                                          x1 - x0)


def _metrics(relay: RelayProcess) -> dict[str, Any]:
    with relay.client(RW) as http:  # /metrics needs a token where reads do
        return dict(http.get("/metrics").json())


def test_disk_tier_survives_a_relay_restart(tmp_path: Path) -> None:
    data = np.random.default_rng(6).integers(1, 255, SHAPE, dtype=np.uint8)
    cfg = _zarr_relay(tmp_path, data)
    read = ((10, 250), (0, 100), (3, 16))  # in the first cell
    first = start_relay(cfg, free_port())
    try:
        np.testing.assert_array_equal(_get(first, read), data[3:16, 0:100, 10:250])
    finally:
        first.stop()
    # the upstream loses its chunks (its metadata stays, so the channel still opens)
    removed = 0
    for p in (tmp_path / "up.zarr").rglob("*"):
        if p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs", ".zgroup"):
            p.unlink()
            removed += 1
    assert removed
    second = start_relay(cfg, free_port())
    try:
        np.testing.assert_array_equal(_get(second, read), data[3:16, 0:100, 10:250])
        m = _metrics(second)["cache"]
        assert m["disk_hits"] == 1 and m["misses"] == 0 and m["upstream_fetches"] == 0, m
        # proof the upstream really is empty now: a cell never read comes back as fill
        assert not _get(second, ((300, 310), (0, 10), (20, 30))).any()
    finally:
        second.stop()


def test_damaged_disk_cache_through_a_relay(tmp_path: Path) -> None:
    data = np.random.default_rng(7).integers(1, 255, SHAPE, dtype=np.uint8)
    cfg = _zarr_relay(tmp_path, data)
    box = ((0, 512), (0, 256), (0, 32))
    first = start_relay(cfg, free_port())
    try:
        np.testing.assert_array_equal(_get(first, box), data)
    finally:
        first.stop()
    assert _damage(tmp_path / "cache", "flip") == 4
    second = start_relay(cfg, free_port())
    try:
        np.testing.assert_array_equal(_get(second, box), data)
        m = _metrics(second)["cache"]
        assert m["disk_hits"] == 0 and m["upstream_cells"] == 4, m
    finally:
        second.stop()


def _post_cell(relay: RelayProcess, value: int) -> np.ndarray:
    """Write the cell x 256:512, y 0:128, z 0:32 full of ``value`` through the relay (201)."""
    patch = np.full((32, 128, 256), value, np.uint8)
    with relay.client(RW) as http:
        res = http.post("/v1/cutout/d/t/img/0/256:512/0:128/0:32/",
                        content=blosc.compress(patch.tobytes(), typesize=1),
                        headers={"Content-Type": "application/blosc"})
    assert res.status_code == 201, res.text
    return patch


def test_metrics_report_hits_misses_bytes_and_upstream_latency(tmp_path: Path) -> None:
    data = np.random.default_rng(8).integers(1, 255, SHAPE, dtype=np.uint8)
    cfg = _zarr_relay(tmp_path, data)
    relay = start_relay(cfg, free_port())
    try:
        m0 = _metrics(relay)
        assert m0["cache"]["misses"] == 0 and m0["cache"]["hit_ratio"] is None
        box = ((200, 300), (0, 100), (10, 20))  # two cells
        _get(relay, box)
        m1 = _metrics(relay)
        c = m1["cache"]
        assert c["misses"] == 2 and c["memory_hits"] == 0 and c["upstream_cells"] == 2
        assert c["upstream_fetches"] == 2  # one upstream read per missing cell
        assert c["upstream_bytes"] == 2 * 32 * 128 * 256  # whole cells come from the upstream
        assert c["bytes_served"] == 10 * 100 * 100
        assert c["upstream_seconds_total"] > 0 and c["upstream_latency_p50_ms"] > 0
        assert c["upstream_latency_p99_ms"] >= c["upstream_latency_p50_ms"]
        assert c["hit_ratio"] == 0
        assert m1["memory_entries"] == 2 and m1["memory_bytes_used"] == 2 * 32 * 128 * 256
        assert m1["disk_bytes_used"] > 0
        assert c["response_hits"] == 0 and c["response_misses"] == 1
        _get(relay, box)  # the same request again: its encoded response, as kept
        c = _metrics(relay)["cache"]
        assert c["response_hits"] == 1 and c["memory_hits"] == 0 and c["misses"] == 2
        other = ((200, 300), (0, 100), (11, 21))  # the same two cells, another region
        _get(relay, other)
        c = _metrics(relay)["cache"]
        assert c["memory_hits"] == 2 and c["misses"] == 2 and c["upstream_cells"] == 2
        assert c["bytes_served"] == 2 * 10 * 100 * 100 and c["hit_ratio"] == 0.5
        assert c["response_misses"] == 2
        # a write is counted, goes through, and the next read of the cell it covers is a hit
        patch = _post_cell(relay, 3)
        np.testing.assert_array_equal(
            voxgate.open(f"zarr://{tmp_path}/up.zarr")[0:32, 0:128, 256:512].read(), patch)
        np.testing.assert_array_equal(_get(relay, ((256, 512), (0, 128), (0, 32))), patch)
        c = _metrics(relay)["cache"]
        assert c["upstream_writes"] == 1 and c["memory_hits"] == 3 and c["upstream_cells"] == 2
    finally:
        relay.stop()


def test_a_relay_whose_memory_cannot_hold_a_cell_reads_only_the_boxes(tmp_path: Path) -> None:
    """1 MiB of memory and no disk: cells of 1 MiB cannot be kept (the encoded responses take
    a quarter), so after the first reads each cutout is one upstream read of its box, and a
    write through the relay is still seen by the next read."""
    data = np.random.default_rng(9).integers(1, 255, SHAPE, dtype=np.uint8)
    relay = start_relay(_zarr_relay(tmp_path, data, memory="1 MiB", disk=False), free_port())
    try:
        for z in range(14):  # distinct boxes: no encoded response answers them
            box = ((200, 300), (0, 100), (z, z + 10))  # across two cells
            np.testing.assert_array_equal(_get(relay, box), data[z:z + 10, 0:100, 200:300])
        m = _metrics(relay)
        c = m["cache"]
        assert m["memory_evicted_unread"] == m["memory_evicted"] >= 11 and m["memory_entries"] == 0
        # whole cells (two per read) until eleven had gone unread, then mostly boxes alone
        assert c["upstream_parts"] >= 4 and c["upstream_cells"] <= 2 * (14 - 4), c
        assert c["upstream_bytes"] == (c["upstream_cells"] * 32 * 128 * 256
                                       + c["upstream_parts"] * 10 * 100 * 100)
        _post_cell(relay, 7)
        data[0:32, 0:128, 256:512] = 7
        np.testing.assert_array_equal(_get(relay, ((250, 300), (0, 100), (3, 13))),
                                      data[3:13, 0:100, 250:300])
    finally:
        relay.stop()


def test_upstream_errors_are_counted_and_not_cached() -> None:
    data = np.ones((8, 32, 32), np.uint8)
    up = mem_volume("errs", data, (8, 32, 32))
    remote = CachedRemote(up, TieredCache(2**26), identity="errs")

    def boom() -> None:
        raise RemoteUnavailableError("connection refused")

    up.after_read = boom
    with pytest.raises(UpstreamError, match="connection refused"):
        remote.read(whole(remote))
    assert remote.cache.metrics.upstream_errors == 1
    np.testing.assert_array_equal(remote.read(whole(remote)), data)


def test_a_cached_remote_claims_only_what_it_can_do_itself() -> None:
    """Server-side work (ids, meshes, proofreading, id reservation) is the upstream's: a
    CachedRemote has none of those methods, so it must not claim those capabilities."""
    from voxgate.remotes.base import Capability, has_capability

    class Rich(CountingRemote):
        @property
        def capabilities(self) -> frozenset[Capability]:
            return frozenset(Capability)  # every capability there is

    up = mem_volume("claims", np.zeros((8, 16, 16), np.uint8), (8, 16, 16))
    rich = Rich(up.inner)
    remote = CachedRemote(rich, TieredCache(2**20), identity="claims")
    assert remote.capabilities == {Capability.WRITE, Capability.CHUNK_PRESENCE,
                                   Capability.BATCH_READ}
    for cap in remote.capabilities:  # each one it claims, it has the method for
        assert has_capability(remote, cap)
    assert hasattr(remote, "write") and hasattr(remote, "absent_chunks")
    for cap in (Capability.SERVER_IDS, Capability.RESERVE_IDS, Capability.SERVER_PROOFREAD,
                Capability.SERVER_MESH):
        assert not has_capability(remote, cap)
    plain = CachedRemote(up, TieredCache(2**20), identity="plain")
    assert plain.capabilities == up.capabilities & CachedRemote.PASSED_THROUGH


def test_cells_written_behind_never_outlive_a_drop(tmp_path: Path) -> None:
    """A fetched cell goes to disk behind the request; a drop of its key or its channel (a
    write, an invalidation) before that disk write lands means it is not stored."""
    from voxgate.relay.cache import tiers

    cache = TieredCache(2**24, tmp_path / "disk", 2**30)
    assert cache.disk is not None
    old = np.full((16, 64, 64), 1, np.uint8)
    gate = threading.Event()
    # a cell of another channel in another drop stripe than the dropped cell's (a drop skips
    # every cell of its stripe written behind across it, by design: hash randomisation put
    # "u~r/0/0_0_0" in that stripe once in 256 runs, and the test failed)
    stripe = hash("t~r/0/0_0_0") % tiers._NSTRIPES
    other = next(k for k in (f"u~r/0/0_0_{i}" for i in range(100))
                 if hash(k) % tiers._NSTRIPES != stripe)
    tiers._behind_pool.submit(gate.wait, 30)  # holds the writer thread: nothing lands yet
    try:
        cache.put_behind("t~r/0/0_0_0", old)  # then a write drops the cell
        cache.put_behind("t~r/0/0_0_1", old)  # then the channel is dropped
        cache.put_behind(other, old)  # nothing happens to this one
        assert cache.memory.get("t~r/0/0_0_0") is not None  # in memory at once
        cache.pop("t~r/0/0_0_0")
        cache.drop_tag("t")
    finally:
        gate.set()
    cache.flush()
    assert cache.disk.get("t~r/0/0_0_0") is None and cache.disk.get("t~r/0/0_0_1") is None
    np.testing.assert_array_equal(cache.disk.get(other), old)
    # and one that lands first is removed by the drop that follows it
    cache.put_behind("t~r/0/0_0_2", old)
    cache.flush()
    assert cache.disk.get("t~r/0/0_0_2") is not None
    cache.pop("t~r/0/0_0_2")
    assert cache.disk.get("t~r/0/0_0_2") is None and cache.get("t~r/0/0_0_2") is None
    cache.close()


def test_a_retired_remote_reads_and_writes_through_but_caches_nothing() -> None:
    """A Remote replaced because the upstream's metadata changed (Relay.upstream_meta_changed)
    serves the requests that still hold it, but caches nothing more: its cell grid may not be
    the channel's any more."""
    data = np.arange(16 * 64 * 64, dtype=np.uint32).reshape(16, 64, 64)
    up = mem_volume("retired", data, (8, 32, 32))
    remote = CachedRemote(up, TieredCache(2**26), identity="retired")
    remote.read(Box((0, 0, 0), (8, 32, 32)))
    assert len(remote.cache.memory) == 1
    remote.retire()
    remote.cache.drop_tag(remote.tag)
    box = Box((0, 0, 0), (16, 64, 64))
    patch = np.full((16, 64, 64), 9, np.uint32)
    remote.write(box, patch)  # covers every cell: cached again by a live Remote
    np.testing.assert_array_equal(remote.read(box), patch)
    assert len(remote.cache.memory) == 0
    np.testing.assert_array_equal(up.inner.read(box), patch)  # the upstream has it
