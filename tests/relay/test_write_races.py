"""Writes racing reads on the relay's caches that test_consistency, test_cache, test_responses and
test_label_stats_relay do not drive deterministically: the encoded-response cache and ETags (a
read that begins *during* a write), a relay's own fetch in flight when another relay sharing
the write generations writes, the disk tier shared by worker processes (a fetch landing after,
or during, another worker's write), a label-statistics pass in flight when another relay
writes, and the catalog's single-flight upstream open across a delete and create of its channel.

Every race is pinned with ``threading.Event`` gates in front of the upstream (its reads or its
writes), so the write lands while the read is in flight; then a read that begins after the
write's acknowledgement must see the write.  Relays run in this process (so their upstreams can
be gated): over HTTP (uvicorn on 127.0.0.1) where the route matters, else on their ``Relay``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest

from voxgate.geometry import Box
from voxgate.relay.cache import CachedRemote
from voxgate.relay.config import CacheConfig, ChannelConfig, RelayConfig
from voxgate.relay.shared_cache import SharedDiskCache
from voxgate.relay.state import Relay

from .conftest import RW
from .test_consistency import (
    FRESH_FETCH_WAIT,
    GatedRemote,
    InProcessRelay,
    _zarr_store,
    check_read_your_writes,
)

#: the store test_consistency makes: uint8 (32, 256, 512) in (16, 64, 64) chunks, so cache cells
#: (and precomputed chunks) of (32, 128, 256)
CELL = Box((0, 0, 0), (32, 128, 256))  # the first cell
OTHER = Box((0, 128, 0), (32, 256, 256))  # another cell
PART = Box((5, 20, 30), (9, 90, 100))  # part of CELL: a write of it cannot re-cache CELL


class WriteGate(GatedRemote):
    """A :class:`GatedRemote` whose writes, while ``hold_writes`` is set, say so (``writing``)
    and wait for ``release_write`` before they reach the store."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.hold_writes = False
        self.writing = threading.Event()
        self.release_write = threading.Event()

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        if self.hold_writes:
            self.writing.set()
            assert self.release_write.wait(60), "the test never released the write"
        self.inner.write(box, array, scale)


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def _joined(t: threading.Thread, out: dict[str, Any]) -> Any:
    t.join(60)
    assert not t.is_alive(), "the request never returned"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _url(dialect: str, box: Box) -> str:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    if dialect == "precomputed":
        return f"/precomputed/c/e/img/s0/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}"
    return f"/v1/cutout/c/e/img/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"


def _get(base: str, dialect: str, box: Box, etag: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Token {RW}", "Accept-Encoding": "identity"}
    if etag is not None:
        headers["If-None-Match"] = etag
    return httpx.get(base + _url(dialect, box), headers=headers, timeout=60)


def _array(res: httpx.Response, dialect: str, box: Box) -> np.ndarray:
    assert res.status_code == 200, (res.status_code, res.text)
    raw = res.content if dialect == "precomputed" else blosc.decompress(res.content)
    return np.frombuffer(raw, np.uint8).reshape(tuple(box.shape))


def _post(base: str, box: Box, value: int) -> None:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    res = httpx.post(f"{base}/v1/cutout/c/e/img/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/",
                     content=blosc.compress(np.full(tuple(box.shape), value, np.uint8).tobytes(),
                                            typesize=1),
                     headers={"Authorization": f"Token {RW}",
                              "Content-Type": "application/blosc"}, timeout=60)
    assert res.status_code == 201, res.text


def _config(d: Path, upstream: str, *, generations: Path | None = None,
            state: Path | None = None, disk: Path | None = None, workers: int = 1
            ) -> RelayConfig:
    d.mkdir(parents=True, exist_ok=True)
    return RelayConfig(
        upstream_timeout=60.0, state_path=state or d / "state.json",
        generations_path=generations, workers=workers,
        cache=CacheConfig(memory_bytes=2**26, disk_path=disk, disk_bytes=2**30),
        channels=[ChannelConfig("c", "e", "img", upstream)])


# -- the encoded-response cache and ETags: a read that begins during a write ----------------------
@pytest.mark.parametrize("dialect", ["boss", "precomputed"])
def test_a_response_read_during_a_write_is_never_served_after_its_ack(
        dialect: str, tmp_path: Path, inproc: Callable[[RelayConfig], InProcessRelay]) -> None:
    """A read that begins while a write is under way (its generation taken after the write's
    first bump, its data read before the write reached the store) keeps its old bytes under
    that ETag; once the write is acknowledged, neither a plain GET (the kept response) nor a
    conditional GET with that ETag (304) may give them back."""
    url, data = _zarr_store(tmp_path, np.uint8)
    relay = inproc(_config(tmp_path / "relay", url))
    cached = relay.relay.catalog.remote(relay.relay.catalog.channel("c", "e", "img"))
    gate = WriteGate(cached.upstream)
    cached.upstream = gate
    old = data[CELL.slices()]
    expected = old.copy()
    expected[PART.slices()] = 11
    # the relay has looked at the channel's generation once (a first look drops its cells,
    # which would wait for the write's cell locks)
    _array(_get(relay.url, dialect, OTHER), dialect, OTHER)

    gate.hold_writes = True
    writer, out = _in_thread(lambda: _post(relay.url, PART, 11))
    try:
        assert gate.writing.wait(60), "the write never reached the upstream"
        during = _get(relay.url, dialect, CELL)
        # the store does not have the write yet: this read (begun before the ack) is old
        np.testing.assert_array_equal(_array(during, dialect, CELL), old)
        etag = during.headers["etag"]
        assert cached.response(etag) is not None  # its encoded bytes were kept
    finally:
        gate.release_write.set()
    _joined(writer, out)  # acknowledged (201)

    after = _get(relay.url, dialect, CELL)
    np.testing.assert_array_equal(_array(after, dialect, CELL), expected)
    assert after.headers["etag"] != etag
    revalidated = _get(relay.url, dialect, CELL, etag=etag)
    assert revalidated.status_code == 200, "a 304 for the ETag of a read made during the write"
    np.testing.assert_array_equal(_array(revalidated, dialect, CELL), expected)


# -- two relays sharing the write generations -----------------------------------------------------
def test_a_fetch_in_flight_when_another_relay_writes_is_not_joined_after_the_ack(
        tmp_path: Path, inproc: Callable[[RelayConfig], InProcessRelay]) -> None:
    """Relay B has an upstream fetch in flight (holding the old data) when relay A, sharing the
    upstream and the generations directory, writes; a read through B that begins after A
    acknowledged the write must fetch afresh, not join B's fetch in flight."""
    url, data = _zarr_store(tmp_path, np.uint8)
    gens = tmp_path / "generations"
    a = inproc(_config(tmp_path / "a", url, generations=gens))
    b = inproc(_config(tmp_path / "b", url, generations=gens))
    gate = b.gate("c", "e", "img")
    expected = data[CELL.slices()].copy()
    expected[PART.slices()] = 12
    check_read_your_writes(gate, lambda: _array(_get(b.url, "boss", CELL), "boss", CELL),
                           lambda: _post(a.url, PART, 12), expected)
    # and what B's old fetch read was not cached either
    np.testing.assert_array_equal(_array(_get(b.url, "boss", CELL), "boss", CELL), expected)


# -- the disk tier shared by worker processes -----------------------------------------------------
@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[Relay, Relay, np.ndarray]]:
    """Two relays as two worker processes of one ``voxgate serve --workers 2`` are: one state
    file (and the generations beside it) and one disk tier, a memory tier each."""
    url, data = _zarr_store(tmp_path, np.uint8)
    shared = dict(state=tmp_path / "state.json", disk=tmp_path / "cache", workers=2)
    a = Relay(_config(tmp_path / "a", url, **shared))  # type: ignore[arg-type]
    b = Relay(_config(tmp_path / "b", url, **shared))  # type: ignore[arg-type]
    assert isinstance(a.cache, SharedDiskCache) and isinstance(b.cache, SharedDiskCache)
    yield a, b, data
    for r in (a, b):
        r.cache.close()


def _channel(relay: Relay) -> tuple[Any, CachedRemote]:
    entry = relay.channel("c", "e", "img")
    return entry, relay.remote(entry)


def _read(relay: Relay, box: Box) -> np.ndarray:
    """A read as the routes make it: the generation looked at first, then the cells."""
    relay.catalog.refresh()  # (the middleware's: what other workers saved)
    entry, remote = _channel(relay)
    relay.generation(entry, remote)
    return remote.read(box)


def test_a_workers_fetch_landing_after_anothers_write_stays_out_of_the_shared_disk(
        workers: tuple[Relay, Relay, np.ndarray]) -> None:
    """Worker B's fetch read the old data and lands after worker A acknowledged a write of that
    cell: it must not enter the shared disk tier, where A's next read would find it."""
    a, b, data = workers
    np.testing.assert_array_equal(_read(a, OTHER), data[OTHER.slices()])  # A has looked
    _, rb = _channel(b)
    gate = GatedRemote(rb.upstream)
    rb.upstream = gate
    gate.arm()
    reader, out = _in_thread(lambda: _read(b, CELL))
    try:
        assert gate.entered.wait(60), "B's fetch never reached the upstream"
        _, ra = _channel(a)
        a.write(ra, PART, np.full(tuple(PART.shape), 13, np.uint8), 0)  # acknowledged
    finally:
        gate.release.set()
    np.testing.assert_array_equal(_joined(reader, out), data[CELL.slices()])  # begun before
    expected = data[CELL.slices()].copy()
    expected[PART.slices()] = 13
    np.testing.assert_array_equal(_read(a, CELL), expected)
    # (B kept the cell in its memory tier only)
    assert isinstance(b.cache, SharedDiskCache) and b.cache.not_shared >= 1


def test_a_workers_store_during_anothers_write_stays_out_of_the_shared_disk(
        workers: tuple[Relay, Relay, np.ndarray]) -> None:
    """Worker B starts while worker A's write is under way, so the generation it first sees
    (A's first bump) is current for B, and stores a cell it read before A's data reached the
    store: while a write is in progress in any worker nothing enters the shared disk tier, so
    A's read after its acknowledgement cannot find that cell there.

    (B's store is the call its fetch makes, ``cache.put``, made directly: in one process B's
    fetch would not store at all, since it shares A's cell locks, which worker processes do
    not share.)"""
    a, b, data = workers
    np.testing.assert_array_equal(_read(a, OTHER), data[OTHER.slices()])  # A has looked
    entry_a, ra = _channel(a)
    gate = WriteGate(ra.upstream)
    ra.upstream = gate
    gate.hold_writes = True
    writer, out = _in_thread(
        lambda: a.write(ra, PART, np.full(tuple(PART.shape), 14, np.uint8), 0))
    try:
        assert gate.writing.wait(60), "A's write never reached the upstream"
        a.generation(entry_a, ra)  # A looks meanwhile (its own bump): saved for every worker
        b.catalog.refresh()
        entry_b, rb = _channel(b)
        b.generation(entry_b, rb)  # B's first look: the generation A saved, current for B
        assert b._may_store(rb.tag), "B should take its reads as current here"
        idx, cell = next(iter(rb.cells(CELL, 0)))
        assert cell == CELL
        old = rb.upstream.read(CELL)  # what B's fetch reads: the store is not written yet
        np.testing.assert_array_equal(old, data[CELL.slices()])
        b.cache.put(rb._key(0, idx), old)
    finally:
        gate.release_write.set()
    _joined(writer, out)  # acknowledged
    expected = data[CELL.slices()].copy()
    expected[PART.slices()] = 14
    np.testing.assert_array_equal(_read(a, CELL), expected)
    # (B kept the cell in its memory tier only)
    assert isinstance(b.cache, SharedDiskCache) and b.cache.not_shared >= 1


# -- label statistics: a pass in flight when another relay writes --------------------------------
def test_a_label_stats_pass_in_flight_when_another_relay_writes_is_not_joined_after_the_ack(
        tmp_path: Path) -> None:
    """Relay B's whole-channel pass has read the old data when relay A (sharing the generations)
    writes; a request to B that begins after A acknowledged the write must not join that pass
    (nor be served its result)."""
    url, data = _zarr_store(tmp_path, np.uint8)
    gens = tmp_path / "generations"
    a = Relay(_config(tmp_path / "a", url, generations=gens))
    b = Relay(_config(tmp_path / "b", url, generations=gens))
    try:
        _, rb = _channel(b)
        gate = GatedRemote(rb.upstream)  # the pass reads the upstream itself
        rb.upstream = gate
        gate.arm()
        first, out1 = _in_thread(lambda: b.stats.ids(rb, 0))
        second: tuple[threading.Thread, dict[str, Any]] | None = None
        try:
            assert gate.entered.wait(60), "B's pass never reached the upstream"
            _, ra = _channel(a)
            new_id = 250  # no voxel of the data has it (values 1..199)
            a.write(ra, PART, np.full(tuple(PART.shape), new_id, np.uint8), 0)  # acknowledged
            second = _in_thread(lambda: b.stats.ids(rb, 0))
            # a correct relay runs a pass of its own (the gate lets it through); one that
            # joined the old pass waits for the gate
            second[0].join(FRESH_FETCH_WAIT)
        finally:
            gate.release.set()
        _joined(first, out1)  # begun before the write: old or new
        assert second is not None
        got = _joined(*second)
        expected = sorted(int(v) for v in np.unique(np.concatenate(
            [data.ravel(), [new_id]])) if v)
        assert new_id in got, "the ids read after the write miss it"
        assert got == expected
        assert b.stats.ids(rb, 0) == expected  # and the old pass's result is not kept
    finally:
        for r in (a, b):
            r.cache.close()




# -- the catalog: an upstream open in flight across a delete and create of its channel -----------
def test_a_channel_created_again_never_joins_the_deleted_ones_open_in_flight(
        tmp_path: Path, inproc: Callable[[RelayConfig], InProcessRelay],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A relay started on an existing channel opens its store on first use (slowly here: a
    gate after the real open); the channel is deleted and created again with another
    datatype meanwhile: the new channel must be served with its own store's metadata, never
    with the Remote the deleted channel's open in flight is making."""
    from voxgate.relay import catalog as catalog_module

    from .test_consistency import _delete_channel, _make_channel, _make_project

    def config() -> RelayConfig:
        return RelayConfig(state_path=tmp_path / "state.json", data_root=tmp_path / "data",
                           upstream_timeout=60.0, cache=CacheConfig(memory_bytes=2**26))

    with httpx.Client(base_url=inproc(config()).url, timeout=60) as http:
        _make_project(http)
        _make_channel(http, "uint8")
    relay = inproc(config())  # (as after a restart: the channel not opened yet)
    box = Box((0, 0, 0), (4, 16, 16))
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    cutout = f"{relay.url}/v1/cutout/lab/exp/ch/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"
    opened = threading.Event()
    release = threading.Event()
    armed = [True]
    real_open = catalog_module.open_remote

    def slow_open(url: str, **kw: Any) -> Any:
        remote = real_open(url, **kw)  # the store as it is now: the uint8 channel's
        if armed[0]:
            armed[0] = False
            opened.set()
            assert release.wait(60), "the test never released the open"
        return remote

    monkeypatch.setattr(catalog_module, "open_remote", slow_open)
    with httpx.Client(base_url=relay.url, timeout=60) as http:
        first, out1 = _in_thread(lambda: httpx.get(cutout, timeout=60))
        create: tuple[threading.Thread, dict[str, Any]] | None = None
        try:
            assert opened.wait(60), "the first request never opened the store"
            _delete_channel(http)  # acknowledged (204) ...
            # ... and created again (its answer describes the new channel: opened)
            create = _in_thread(lambda: http.post(
                "/v1/collection/lab/experiment/exp/channel/ch/",
                json={"type": "annotation", "datatype": "uint64"}))
            # a correct relay opens the new channel's store itself; one that joined the
            # deleted channel's open waits for the gate
            create[0].join(FRESH_FETCH_WAIT)
        finally:
            release.set()
        _joined(first, out1)  # begun before the delete: whatever it answered
        assert create is not None
        made = _joined(*create)
        assert made.status_code == 201, made.text
        assert made.json()["datatype"] == "uint64", made.json()
        described = http.get("/v1/collection/lab/experiment/exp/channel/ch/").json()
        assert described["datatype"] == "uint64", described
        res = http.get(cutout)
    assert res.status_code == 200, res.text
    raw = blosc.decompress(res.content)
    assert len(raw) == box.size * 8, f"{len(raw)} bytes: not the new channel's uint64 voxels"
    assert not np.frombuffer(raw, np.uint64).any()  # a new channel starts empty


# -- a write in flight when its channel is deleted ------------------------------------------------
def test_a_write_in_flight_never_lands_in_a_deleted_channels_path(
        tmp_path: Path, inproc: Callable[[RelayConfig], InProcessRelay]) -> None:
    """A write under way (its upstream write held) when its channel is deleted: the delete waits
    for it before moving the store aside, so nothing of the deleted channel lands in the path
    that a channel created again under the name uses.  A write that found the channel before
    the delete but begins after it is refused, and writes nothing."""
    from voxgate.relay.catalog import NotFound

    from .test_consistency import _make_channel, _make_project

    relay = inproc(RelayConfig(state_path=tmp_path / "state.json", data_root=tmp_path / "data",
                               upstream_timeout=60.0, cache=CacheConfig(memory_bytes=2**26)))
    with httpx.Client(base_url=relay.url, timeout=60) as http:
        _make_project(http)
        _make_channel(http, "uint8")
    r = relay.relay
    entry = r.catalog.channel("lab", "exp", "ch")
    remote = r.remote(entry)
    location = Path(entry.upstream_url.split("://", 1)[1])
    assert location.is_dir()
    gate = WriteGate(remote.upstream)
    remote.upstream = gate
    gate.hold_writes = True
    box = Box((0, 0, 0), (4, 16, 16))
    data = np.full(tuple(box.shape), 7, np.uint8)
    writer = _in_thread(lambda: r.write(remote, box, data, 0))
    assert gate.writing.wait(60), "the write never reached the upstream"
    deleter = _in_thread(lambda: r.delete_local_channel(entry))
    deleter[0].join(0.5)
    moved_during_the_write = not location.exists()
    gate.release_write.set()
    _joined(*writer)  # acknowledged: it began before the delete
    _joined(*deleter)
    assert not moved_during_the_write, "the store was moved aside under a write in progress"
    assert not location.exists(), (
        f"the deleted channel's write left {sorted(p.name for p in location.rglob('*'))}")
    gate.hold_writes = False
    with pytest.raises(NotFound, match="deleted before this write began"):
        r.write(remote, box, data, 0)
    assert not location.exists(), "a write refused after the delete still wrote"
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    with httpx.Client(base_url=relay.url, timeout=60) as http:
        _make_channel(http, "uint8")
        res = http.get(f"/v1/cutout/lab/exp/ch/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/")
    assert res.status_code == 200, res.text
    assert not np.frombuffer(blosc.decompress(res.content), np.uint8).any()


class ReadGate(GatedRemote):
    """Once armed, the next read says so (``entered``) and waits for ``release`` *before* it
    reads: it reaches the store only after whatever the test does meanwhile."""

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        with self._lock:
            first, self._armed = self._armed, False
        if first:
            self.entered.set()
            assert self.release.wait(60), "the test never released the read"
        return self.inner.read(box, scale)


@pytest.mark.parametrize("dialect", ["boss", "precomputed"])
def test_a_read_in_flight_when_its_channel_is_deleted_and_created_again_is_refused(
        dialect: str, tmp_path: Path, inproc: Callable[[RelayConfig], InProcessRelay]) -> None:
    """A read that found the channel before its delete but reaches the store after it reads the
    path the channel created again under the name uses, with the deleted channel's metadata:
    it must answer 404, not the new channel's bytes taken for the old dtype (or zeros)."""
    from .test_consistency import _delete_channel, _make_channel, _make_project

    relay = inproc(RelayConfig(state_path=tmp_path / "state.json", data_root=tmp_path / "data",
                               upstream_timeout=60.0, cache=CacheConfig(memory_bytes=2**26)))
    box = Box((0, 0, 0), (16, 200, 256))  # the channel's first precomputed chunk
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    cutout = f"/v1/cutout/lab/exp/ch/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"
    url = cutout if dialect == "boss" else \
        f"/precomputed/lab/exp/ch/s0/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}"
    with httpx.Client(base_url=relay.url, timeout=60) as http:
        _make_project(http)
        _make_channel(http, "uint8")
        old = np.full(tuple(box.shape), 3, np.uint8)  # (chunks that exist: read, not skipped)
        res = http.post(cutout, content=blosc.compress(old.tobytes(), typesize=1),
                        headers={"Content-Type": "application/blosc"})
        assert res.status_code == 201, res.text
        r = relay.relay
        remote = r.remote(r.catalog.channel("lab", "exp", "ch"))
        remote.cache.drop_tag(remote.tag)  # (nothing of it cached: the read goes upstream)
        gate = ReadGate(remote.upstream)
        remote.upstream = gate
        gate.arm()
        reader = _in_thread(lambda: http.get(url, headers={"Accept-Encoding": "identity"}))
        try:
            assert gate.entered.wait(60), "the read never reached the upstream"
            _delete_channel(http)
            _make_channel(http, "uint64")
            new = np.full(tuple(box.shape), 2**40 + 5, np.uint64)
            res = http.post(cutout, content=blosc.compress(new.tobytes(), typesize=8),
                            headers={"Content-Type": "application/blosc"})
            assert res.status_code == 201, res.text
        finally:
            gate.release.set()
        got = _joined(*reader)
        assert got.status_code == 404, (got.status_code, got.content[:200])
        assert "deleted while this read ran" in got.text
        again = http.get(cutout)  # the new channel, read by a new request: its own data
        assert again.status_code == 200, again.text
        np.testing.assert_array_equal(
            np.frombuffer(blosc.decompress(again.content), np.uint64).reshape(tuple(box.shape)),
            new)


# -- the upstream's metadata changed outside the relay, while a write is in flight ---------------
def test_a_metadata_refresh_waits_for_a_write_in_flight_and_serves_it(
        tmp_path: Path, inproc: Callable[[RelayConfig], InProcessRelay]) -> None:
    """Relay.upstream_meta_changed (the background metadata check found a change) while a
    write is at the upstream: the refresh waits for it (the channel's exclusive write lock),
    then the channel is opened again and its cells dropped; the acknowledged write is what
    every later read gets, under a new ETag, and the retired Remote caches nothing."""
    url, data = _zarr_store(tmp_path, np.uint8)
    config = _config(tmp_path / "relay", url)
    config.upstream_meta_seconds = 0  # (this test calls the refresh itself)
    relay = inproc(config)
    entry = relay.relay.catalog.channel("c", "e", "img")
    cached = relay.relay.catalog.remote(entry)
    gate = WriteGate(cached.upstream)
    cached.upstream = gate
    before = _get(relay.url, "boss", CELL)
    np.testing.assert_array_equal(_array(before, "boss", CELL), data[CELL.slices()])

    gate.hold_writes = True
    writer, out = _in_thread(lambda: _post(relay.url, CELL, 11))
    try:
        assert gate.writing.wait(60), "the write never reached the upstream"
        refresh, rout = _in_thread(lambda: relay.relay.upstream_meta_changed(entry))
        refresh.join(0.5)
        assert refresh.is_alive(), "the refresh did not wait for the write in flight"
        assert relay.relay.catalog.open_remotes(entry) == [cached]
    finally:
        gate.release_write.set()
    _joined(writer, out)  # acknowledged (201)
    _joined(refresh, rout)
    assert cached._closed and relay.relay.catalog.open_remotes(entry) == []
    after = _get(relay.url, "boss", CELL)
    np.testing.assert_array_equal(_array(after, "boss", CELL), np.full((32, 128, 256), 11))
    assert after.headers["etag"] != before.headers["etag"]
    (fresh,) = relay.relay.catalog.open_remotes(entry)
    assert fresh is not cached and fresh.meta == cached.meta
    cached.read(OTHER)  # a request still holding the retired Remote: served, not cached
    assert not [k for k in relay.relay.cache.memory._items if k.startswith(cached._prefix)
                and k.endswith("/0/0_1_0")]
