"""What a relay client can rely on: read-your-writes (in one relay and through a chain of relays),
and a deleted channel's data gone for good (a recreated channel of the same name starts empty).

The races are made deterministic with a gate in front of the upstream: the first upstream read
reads the old data and then waits on a ``threading.Event``, so a fetch is in flight holding
pre-write data while the test writes and reads again.  Relays whose upstream is gated run
in this process (uvicorn on a thread, bound to 127.0.0.1); the others are ``voxgate serve``
processes.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest

import voxgate
from voxgate.api import open_remote
from voxgate.errors import VoxgateError
from voxgate.geometry import Box, Vec
from voxgate.relay.app import build_app
from voxgate.relay.cache import CachedRemote, TieredCache
from voxgate.relay.config import CacheConfig, ChannelConfig, RelayConfig
from voxgate.remotes.base import Capability, Remote

from .conftest import RW, RelayProcess, free_port, serve_in_thread

#: how long a correct relay may take to start the fresh fetch the test waits for; a broken one
#: never starts it, and the test then releases the gate and sees the stale data (so the outcome
#: never depends on this figure, only how long a failing run takes)
FRESH_FETCH_WAIT = 10.0


# -- the gate -----------------------------------------------------------------------------------
class GatedRemote(Remote):
    """Wraps a Remote.  Once armed, the next read reads the data, says so (``entered``) and
    then waits for ``release`` before returning it; every later read sets ``later``."""

    scheme = "gated"

    def __init__(self, inner: Remote) -> None:
        self.inner = inner
        self.meta = inner.meta
        self.mode = inner.mode
        self.url = f"gated+{inner.url}"
        self.entered = threading.Event()
        self.release = threading.Event()
        self.later = threading.Event()
        self._armed = False
        self._lock = threading.Lock()

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> Remote:
        raise VoxgateError("made by the tests")

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self.inner.capabilities

    def write_grid(self, scale: int = 0) -> Any:
        return self.inner.write_grid(scale)

    def spec(self) -> dict[str, Any]:
        return self.inner.spec()

    def arm(self) -> None:
        with self._lock:
            self._armed = True
        self.entered.clear()
        self.release.clear()
        self.later.clear()

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        with self._lock:
            first, self._armed = self._armed, False
        arr = self.inner.read(box, scale)
        if first:
            self.entered.set()
            self.release.wait()
        else:
            self.later.set()
        return arr

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self.inner.write(box, array, scale)

    def absent_chunks(self, box: Box, scale: int = 0) -> list[Vec]:
        return self.inner.absent_chunks(box, scale)

    def close(self) -> None:
        self.inner.close()


def check_read_your_writes(gate: GatedRemote, read: Callable[[], np.ndarray],
                           write: Callable[[], None], expected: np.ndarray) -> None:
    """A read in flight upstream (holding pre-write data), a write acknowledged, then a read:
    the second read must see the write."""
    gate.arm()
    with ThreadPoolExecutor(2) as pool:
        before = pool.submit(read)
        try:
            assert gate.entered.wait(60), "the first read never reached the upstream"
            write()  # returned: acknowledged
            after = pool.submit(read)  # begins after the acknowledgment
            # a correct relay fetches afresh (the gate lets later reads through); a relay that
            # joined the fetch in flight would wait for the gate
            gate.later.wait(FRESH_FETCH_WAIT)
        finally:
            gate.release.set()
        got = after.result()
        before.result()  # may be old or new: it began before the write
    stale = int(np.count_nonzero(got != expected))
    assert stale == 0, f"{stale} of {expected.size} voxels read after the write are stale"


# -- in one relay (the cache, in-process) -------------------------------------------------------
def _mem(name: str, data: np.ndarray, chunks: tuple[int, int, int]) -> Remote:
    vol = voxgate.create(f"mem://{name}", shape=data.shape, dtype=data.dtype, chunks=chunks,
                         voxel_size=(40, 8, 8))
    vol[:] = data
    return open_remote(f"mem://{name}", mode="r+")


# uint8 (32, 256, 512) in (16, 64, 64) chunks: four cache cells of (32, 128, 256)
BIG = (32, 256, 512)


@pytest.mark.parametrize("case", ["one-cell", "union-fetch", "disk-tier", "uint64"])
def test_a_read_after_a_write_never_joins_an_older_fetch(case: str, tmp_path: Path) -> None:
    dtype = np.uint64 if case == "uint64" else np.uint8
    data = np.random.default_rng(1).integers(1, 200, BIG, dtype=dtype)
    gate = GatedRemote(_mem(f"ryw-{case}", data, (16, 64, 64)))
    disk = tmp_path / "disk" if case == "disk-tier" else None
    remote = CachedRemote(gate, TieredCache(2**26, disk, 2**30), identity=f"ryw-{case}",
                            timeout=300)
    if case != "union-fetch":
        box = Box((0, 0, 0), (32, 128, 256))  # one cell
        part = Box((3, 10, 20), (9, 100, 200))  # part of it: the write cannot re-cache it
    else:
        box = Box((0, 0, 0), BIG)  # four missing cells tile it: one union fetch
        part = Box((3, 100, 200), (9, 150, 300))  # parts of all four cells
    new = np.full(tuple(part.shape), 7, dtype=dtype)
    expected = data[box.slices()].copy()
    expected[part.intersect(box).slices(box.start)] = 7

    check_read_your_writes(gate, lambda: remote.read(box), lambda: remote.write(part, new),
                           expected)
    np.testing.assert_array_equal(remote.read(box), expected)  # and what was cached is new


def test_a_fetch_detached_by_a_write_does_not_cache_or_remove_the_new_fetch() -> None:
    data = np.zeros((16, 64, 64), np.uint8)
    gate = GatedRemote(_mem("ryw-detached", data, (16, 64, 64)))
    remote = CachedRemote(gate, TieredCache(2**26), identity="ryw-detached", timeout=300)
    box = Box((0, 0, 0), (16, 64, 64))
    part = Box((0, 0, 0), (4, 64, 64))
    check_read_your_writes(gate, lambda: remote.read(box),
                           lambda: remote.write(part, np.full((4, 64, 64), 3, np.uint8)),
                           np.concatenate([np.full((4, 64, 64), 3, np.uint8), data[4:]]))
    # the old fetch finished last: it neither cached its old data nor dropped the newer entry
    got = remote.read(box)
    assert (got[:4] == 3).all() and not got[4:].any()
    assert not remote._inflight


# -- through relays over HTTP -------------------------------------------------------------------
class InProcessRelay:
    """A relay app served by uvicorn on a thread of this process (so its upstream can be gated)."""

    def __init__(self, config: RelayConfig) -> None:
        self.port = free_port()
        config.port = self.port
        self.app = build_app(config)
        self.relay = self.app.state.relay
        self.server, self.thread = serve_in_thread(self.app, self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def gate(self, c: str, e: str, ch: str) -> GatedRemote:
        cached = self.relay.catalog.remote(self.relay.catalog.channel(c, e, ch))
        gate = GatedRemote(cached.upstream)
        cached.upstream = gate
        return gate

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.relay.cache.close()


def _config(tmp: Path, upstream: str, *, disk: bool, options: dict[str, Any] | None = None,
            ) -> RelayConfig:
    tmp.mkdir(parents=True, exist_ok=True)
    return RelayConfig(
        upstream_timeout=120.0, state_path=tmp / "state.json",
        cache=CacheConfig(memory_bytes=2**26, disk_path=tmp / "cache" if disk else None,
                          disk_bytes=2**30),
        channels=[ChannelConfig("c", "e", "img", upstream, dict(options or {}))])


def _cutout_get(url: str, box: Box, dtype: Any, *, path: str = "c/e/img") -> np.ndarray:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    res = httpx.get(f"{url}/v1/cutout/{path}/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/",
                    headers={"Authorization": f"Token {RW}"}, timeout=120)
    assert res.status_code == 200, res.text
    return np.frombuffer(blosc.decompress(res.content), dtype).reshape(tuple(box.shape))


def _cutout_post(url: str, box: Box, arr: np.ndarray, *, path: str = "c/e/img") -> None:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    arr = np.ascontiguousarray(arr)
    res = httpx.post(f"{url}/v1/cutout/{path}/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/",
                     content=blosc.compress(arr.tobytes(), typesize=arr.dtype.itemsize),
                     headers={"Authorization": f"Token {RW}",
                              "Content-Type": "application/blosc"}, timeout=120)
    assert res.status_code == 201, res.text


def _precomputed_get(url: str, box: Box, dtype: Any) -> np.ndarray:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    res = httpx.get(f"{url}/precomputed/c/e/img/s0/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}", timeout=120,
                    headers={"Authorization": f"Token {RW}", "Accept-Encoding": "identity"})
    assert res.status_code == 200, res.text
    # raw encoding: x-fastest bytes, one channel (the same memory as C-order ZYX)
    return np.frombuffer(res.content, dtype).reshape(tuple(box.shape))


def _zarr_store(tmp: Path, dtype: Any) -> tuple[str, np.ndarray]:
    data = np.random.default_rng(2).integers(1, 200, BIG, dtype=dtype)
    url = f"zarr://{tmp}/store.zarr"
    vol = voxgate.create(url, shape=BIG, chunks=(16, 64, 64), dtype=dtype, voxel_size=(40, 8, 8))
    vol[:] = data
    return url, data


@pytest.mark.parametrize("dialect", ["boss", "precomputed"])
def test_read_your_writes_through_one_relay(dialect: str, tmp_path: Path, inproc) -> None:  # type: ignore[no-untyped-def]
    url, data = _zarr_store(tmp_path, np.uint8)
    relay = inproc(_config(tmp_path / "relay", url, disk=True))
    gate = relay.gate("c", "e", "img")
    cell = Box((0, 0, 0), (32, 128, 256))  # the first cache cell (also a precomputed chunk)
    part = Box((5, 20, 30), (9, 90, 100))
    expected = data[cell.slices()].copy()
    expected[part.slices()] = 11
    read = (lambda: _precomputed_get(relay.url, cell, np.uint8)) if dialect == "precomputed" \
        else (lambda: _cutout_get(relay.url, cell, np.uint8))
    check_read_your_writes(gate, read,
                           lambda: _cutout_post(relay.url, part, np.full(part.shape, 11, np.uint8)),
                           expected)


@pytest.mark.parametrize("gated", ["upstream-relay", "downstream-relay"])
def test_read_your_writes_through_a_chain_of_relays(gated: str, tmp_path: Path, inproc) -> None:  # type: ignore[no-untyped-def]
    url, data = _zarr_store(tmp_path, np.uint64)
    lab = inproc(_config(tmp_path / "lab", url, disk=True))
    laptop = inproc(_config(tmp_path / "laptop", f"bossdb://{lab.url}/c/e/img", disk=False,
                            options={"token": RW}))
    # gated at the lab: both tiers must fetch afresh; at the laptop: the laptop must
    gate = lab.gate("c", "e", "img") if gated == "upstream-relay" else \
        laptop.gate("c", "e", "img")
    box = Box((0, 0, 0), BIG)
    part = Box((2, 100, 200), (6, 150, 300))  # parts of all four cells
    expected = data.copy()
    expected[part.slices()] = 2**60 + 1
    check_read_your_writes(
        gate, lambda: _cutout_get(laptop.url, box, np.uint64),
        lambda: _cutout_post(laptop.url, part, np.full(part.shape, 2**60 + 1, np.uint64)),
        expected)
    # and the store has it, and the lab serves it
    np.testing.assert_array_equal(voxgate.open(url)[part.slices()].read(), 2**60 + 1)
    np.testing.assert_array_equal(_cutout_get(lab.url, box, np.uint64), expected)


# -- under concurrent load ----------------------------------------------------------------------
class SlowReads(GatedRemote):
    """Every upstream read takes ``delay`` s longer (after reading): fetches stay in flight
    while writes come and go, which is the race a relay must survive (the delay only makes a
    broken relay fail more often; a correct one passes whatever the timing)."""

    delay = 0.05

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        arr = self.inner.read(box, scale)
        time.sleep(self.delay)
        return arr


@pytest.mark.parametrize("relay_kind", ["voxgate-serve", "slow-upstream"])
def test_concurrent_writers_always_read_back_what_they_wrote(
        relay_kind: str, tmp_path: Path, relay_factory, inproc) -> None:  # type: ignore[no-untyped-def]
    """N clients write disjoint slabs that share cache cells and read them back, repeatedly,
    while others read the whole volume: no read after an acknowledged write may be stale."""
    shape = (32, 128, 256)  # one cache cell: every client's slab shares it
    url, _ = _zarr_store(tmp_path, np.uint8)
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f"""
[server]
upstream_timeout = 120
state_path = "{tmp_path / 'state.json'}"
[cache]
memory_bytes = "64 MiB"
disk_path = "{tmp_path / 'cache'}"
[[channel]]
name = "c/e/img"
upstream = "{url}"
[auth]
tokens = {{ "{RW}" = "read-write" }}
""")
    relay: RelayProcess | InProcessRelay
    if relay_kind == "voxgate-serve":
        relay = relay_factory(cfg)
    else:
        relay = inproc(_config(tmp_path / "inproc", url, disk=True))
        cached = relay.relay.catalog.remote(relay.relay.catalog.channel("c", "e", "img"))
        cached.upstream = SlowReads(cached.upstream)
    writers, rounds = 8, 12
    stale: list[str] = []
    barrier = threading.Barrier(writers + 2)

    def writer(i: int) -> None:
        slab = Box((4 * i, 0, 0), (4 * i + 4, shape[1], shape[2]))
        barrier.wait()
        for r in range(rounds):
            value = (i * rounds + r) % 250 + 1
            _cutout_post(relay.url, slab, np.full(slab.shape, value, np.uint8))
            got = _cutout_get(relay.url, slab, np.uint8)
            if (got != value).any():
                stale.append(f"writer {i} round {r}: {int((got != value).sum())} stale voxels")

    def reader() -> None:  # keeps fetches of the shared cell in flight
        barrier.wait()
        for _ in range(rounds * 2):
            _cutout_get(relay.url, Box((0, 0, 0), shape), np.uint8)

    with ThreadPoolExecutor(writers + 2) as pool:
        futures = [pool.submit(writer, i) for i in range(writers)]
        futures += [pool.submit(reader) for _ in range(2)]
        for f in futures:
            f.result()
    assert not stale, stale


# -- delete, then recreate ----------------------------------------------------------------------
FRAME = {"x_start": 0, "x_stop": 300, "y_start": 0, "y_stop": 200, "z_start": 0, "z_stop": 20,
         "x_voxel_size": 4, "y_voxel_size": 4, "z_voxel_size": 30, "voxel_unit": "nanometers"}
CUT = Box((2, 10, 20), (12, 150, 260))  # spans several cache cells of either dtype


def _data_root_relay(tmp_path: Path, relay_factory: Callable[..., RelayProcess]) -> RelayProcess:
    cfg = tmp_path / "relay.toml"
    if not cfg.exists():
        cfg.write_text(f"""
[server]
upstream_timeout = 60
state_path = "{tmp_path / 'state.json'}"
[cache]
memory_bytes = "64 MiB"
disk_path = "{tmp_path / 'cache'}"
[auth]
tokens = {{ "{RW}" = "read-write" }}
""")
    return relay_factory(cfg, "--data-root", str(tmp_path / "data"))


def _channel_with_data(tmp_path: Path, relay_factory: Callable[..., RelayProcess], seed: int
                       ) -> tuple[RelayProcess, np.ndarray]:
    """A data-root relay with a uint8 channel lab/exp/ch holding random voxels in CUT."""
    relay = _data_root_relay(tmp_path, relay_factory)
    old = np.random.default_rng(seed).integers(1, 255, tuple(CUT.shape), dtype=np.uint8)
    with relay.client(RW) as http:
        _make_project(http)
        _make_channel(http, "uint8")
    _cutout_post(relay.url, CUT, old, path="lab/exp/ch")
    return relay, old


def _ok(res: httpx.Response, status: int) -> None:
    assert res.status_code == status, res.text


def _make_project(http: httpx.Client) -> None:
    _ok(http.post("/v1/collection/lab/", json={"description": "x"}), 201)
    _ok(http.post("/v1/coord/frame/", json=FRAME), 201)
    _ok(http.post("/v1/collection/lab/experiment/exp/",
                  json={"coord_frame": "frame", "num_hierarchy_levels": 1}), 201)


def _make_channel(http: httpx.Client, dtype: str) -> None:
    kind = "annotation" if dtype == "uint64" else "image"
    _ok(http.post("/v1/collection/lab/experiment/exp/channel/ch/",
                  json={"type": kind, "datatype": dtype}), 201)


def _delete_channel(http: httpx.Client) -> None:
    _ok(http.delete("/v1/collection/lab/experiment/exp/channel/ch/"), 204)


@pytest.mark.parametrize("second_dtype", ["uint8", "uint64"])
def test_a_recreated_channel_never_serves_the_deleted_ones_data(
        second_dtype: str, tmp_path: Path, relay_factory) -> None:  # type: ignore[no-untyped-def]
    relay, old = _channel_with_data(tmp_path, relay_factory, 4)
    np.testing.assert_array_equal(_cutout_get(relay.url, CUT, np.uint8, path="lab/exp/ch"), old)
    np.testing.assert_array_equal(_cutout_get(relay.url, CUT, np.uint8, path="lab/exp/ch"), old)
    with relay.client(RW) as http:
        before = http.get("/metrics").json()
        # it was served from the cache (the repeated cutout: its kept encoded response)
        assert before["cache"]["memory_hits"] + before["cache"]["response_hits"] > 0, before
        _delete_channel(http)
        after = http.get("/metrics").json()
        # its cells dropped, from memory and from disk
        assert after["memory_entries"] < before["memory_entries"], after
        assert after["disk_bytes_used"] < before["disk_bytes_used"], after
        _make_channel(http, second_dtype)
    dt = np.dtype(second_dtype)
    got = _cutout_get(relay.url, CUT, dt, path="lab/exp/ch")
    assert not got.any(), f"{np.count_nonzero(got)} voxels of the deleted channel were served"
    new = np.full(tuple(CUT.shape), 2**40 + 3 if dt == np.uint64 else 9, dtype=dt)
    part = Box((2, 10, 20), (4, 50, 60))
    _cutout_post(relay.url, part, new[part.slices(CUT.start)], path="lab/exp/ch")
    expected = np.zeros(tuple(CUT.shape), dt)
    expected[part.slices(CUT.start)] = new[part.slices(CUT.start)]
    np.testing.assert_array_equal(_cutout_get(relay.url, CUT, dt, path="lab/exp/ch"), expected)


def test_delete_and_recreate_across_restarts_with_the_disk_tier(
        tmp_path: Path, relay_factory) -> None:  # type: ignore[no-untyped-def]
    first, old = _channel_with_data(tmp_path, relay_factory, 5)
    np.testing.assert_array_equal(_cutout_get(first.url, CUT, np.uint8, path="lab/exp/ch"), old)
    first.stop()
    second = _data_root_relay(tmp_path, relay_factory)  # memory empty, disk cache kept
    np.testing.assert_array_equal(_cutout_get(second.url, CUT, np.uint8, path="lab/exp/ch"), old)
    with second.client(RW) as http:
        assert http.get("/metrics").json()["cache"]["disk_hits"] > 0  # served from disk
        _delete_channel(http)
    second.stop()
    third = _data_root_relay(tmp_path, relay_factory)
    with third.client(RW) as http:
        _make_channel(http, "uint8")
    got = _cutout_get(third.url, CUT, np.uint8, path="lab/exp/ch")
    assert not got.any(), f"{np.count_nonzero(got)} voxels of the deleted channel were served"
    # recreated again, in the same relay, after data was written and cached
    _cutout_post(third.url, CUT, old, path="lab/exp/ch")
    with third.client(RW) as http:
        _delete_channel(http)
        _make_channel(http, "uint64")
    assert not _cutout_get(third.url, CUT, np.uint64, path="lab/exp/ch").any()


def test_drop_tag_drops_one_channels_cells_from_both_tiers(tmp_path: Path) -> None:
    cache = TieredCache(2**26, tmp_path / "disk", 2**30)
    data = np.arange(16 * 64 * 64, dtype=np.uint8).reshape(16, 64, 64)
    a = CachedRemote(_mem("tag-a", data, (16, 64, 64)), cache, identity="a1", tag="chan-a")
    a2 = CachedRemote(a.upstream, cache, identity="a2", tag="chan-a")  # another token's view
    b = CachedRemote(_mem("tag-b", data, (16, 64, 64)), cache, identity="b", tag="chan-b")
    box = Box((0, 0, 0), (16, 64, 64))
    for r in (a, a2, b):
        r.read(box)
    assert cache.disk is not None
    keys = {r: r._key(0, next(iter(r.cells(box, 0)))[0]) for r in (a, a2, b)}
    cache.flush()  # (fetched cells reach the disk tier behind the reads)
    assert all(cache.disk.get(k) is not None for k in keys.values())
    assert cache.drop_tag(a.tag) == 4  # two cells, each in both tiers
    for r in (a, a2):
        assert cache.memory.get(keys[r]) is None and cache.disk.get(keys[r]) is None
    assert cache.memory.get(keys[b]) is not None and cache.disk.get(keys[b]) is not None
    cache.close()


def test_a_relay_stopped_mid_delete_never_serves_the_deleted_store_again(
        tmp_path: Path, relay_factory) -> None:  # type: ignore[no-untyped-def]
    """A relay stopped after saving a delete but before its store was moved aside and removed
    (the channel's data still in the data root, which a starting relay scans for volumes)
    finishes the removal when it starts: the name is free, the old data served nowhere."""
    relay, old = _channel_with_data(tmp_path, relay_factory, 6)
    relay.stop()
    store = tmp_path / "data" / "lab" / "exp" / "ch.zarr"
    kept = tmp_path / "kept.zarr"
    shutil.copytree(store, kept)  # what the store held before the delete
    relay = _data_root_relay(tmp_path, relay_factory)
    with relay.client(RW) as http:
        _delete_channel(http)
        assert http.get("/v1/collection/lab/experiment/exp/channel/").json()["channels"] == []
    relay.stop()
    assert not store.exists() and not any(store.parent.iterdir())  # moved aside, removed
    state_file = tmp_path / "state.json"
    state = json.loads(state_file.read_text())
    assert state.get("removing", {}) == {}
    # as if stopped between saving the delete and moving the store aside
    shutil.copytree(kept, store)
    state["removing"] = {str(store.with_name(".deleted-0")): str(store)}
    state_file.write_text(json.dumps(state))
    relay = _data_root_relay(tmp_path, relay_factory)
    assert not store.exists() and not any(store.parent.iterdir())
    with relay.client(RW) as http:
        assert http.get("/v1/collection/lab/experiment/exp/channel/").json()["channels"] == []
        _make_channel(http, "uint8")
    got = _cutout_get(relay.url, CUT, np.uint8, path="lab/exp/ch")
    assert not got.any(), f"{np.count_nonzero(got)} voxels of the deleted store were served"
    _cutout_post(relay.url, CUT, old, path="lab/exp/ch")
    np.testing.assert_array_equal(_cutout_get(relay.url, CUT, np.uint8, path="lab/exp/ch"), old)
    # a volume put into the data root while the relay runs is not a channel yet, and a create
    # of its name says so instead of overwriting (or deleting) it
    shutil.copytree(kept, store.with_name("other.zarr"))
    with relay.client(RW) as http:
        res = http.post("/v1/collection/lab/experiment/exp/channel/other/",
                        json={"type": "image", "datatype": "uint8"})
    assert res.status_code == 400 and "restart" in res.json()["message"], res.text
    assert (store.with_name("other.zarr") / "zarr.json").exists() or any(
        store.with_name("other.zarr").iterdir())


def test_a_create_whose_state_cannot_be_saved_leaves_nothing_behind(
        tmp_path: Path, inproc: Callable[[RelayConfig], InProcessRelay],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A channel create that fails on saving the state (a full disk, say) answers an error and
    leaves neither a record nor a store: the same create succeeds afterwards."""
    r = inproc(RelayConfig(state_path=tmp_path / "state.json", data_root=tmp_path / "data",
                           cache=CacheConfig(memory_bytes=2**26)))
    store = tmp_path / "data" / "lab" / "exp" / "ch.zarr"
    with httpx.Client(base_url=r.url, timeout=60) as http:
        _make_project(http)
        cat = r.relay.catalog
        saved = cat.save

        def full_disk() -> None:
            if "lab/exp/ch" in cat.state["local_channels"]:
                raise OSError(28, "No space left on device")
            saved()

        monkeypatch.setattr(cat, "save", full_disk)
        res = http.post("/v1/collection/lab/experiment/exp/channel/ch/",
                        json={"type": "image", "datatype": "uint8"})
        assert res.status_code >= 500, res.text
        assert not store.exists()
        assert "lab/exp/ch" not in cat.state["local_channels"]
        monkeypatch.setattr(cat, "save", saved)
        assert http.get("/v1/collection/lab/experiment/exp/channel/").json()["channels"] == []
        _make_channel(http, "uint8")
        assert store.exists()
