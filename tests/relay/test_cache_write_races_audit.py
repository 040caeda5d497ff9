"""A write racing a read on the caches and single flights the other race tests do not pin down
(the inventory is in the session's report; the cells, the disk tier, encoded responses, ETags,
label statistics and the catalog's open are test_consistency's, test_cache's, test_responses'
and test_write_races' own):

- the relay's state file, as each worker process keeps it in memory (:mod:`voxgate.relay.
  statefile`): a change another worker saved must be seen by every request that begins after
  the save, even while another thread of this worker is still taking that change in (it
  was not: the new file counted as read before its contents were merged, so a second request
  skipped the refresh and read the state of before, e.g. took a deleted channel as live and
  wrote into the path a channel created again under the name uses);
- the write generations' memo of the file last read (:class:`voxgate.relay.generations.
  Generations`): a look that read the old file and lands after a newer look never hides the
  newer generation;
- what a local precomputed layer's info names, remembered by the relay (:class:`voxgate.relay.
  layer_files.LayerFiles`): a read of the old info landing after the info was rewritten, and
  read again, never brings the old one back;
- a channel deleted and created again while a fetch of the old one, holding its old bytes, is
  in flight: through one relay, and through two workers sharing the state file and disk tier
  (the delete and create through one, the fetch in the other);
- two workers sharing the disk tier: a disk hit read in one across a write acknowledged by
  the other is not served by a read that begins after the acknowledgement;
- two channels over one local store whose URLs spell its path differently: a write through
  one was never seen by the other, whose cells (and ETags) were taken for another upstream's.

Every interleaving is forced with events at the point named (a gate in front of the upstream,
a wrapped step of the code under test); where a correct build goes on without the test's
help and a broken one would wait, the wait is bounded by ``FRESH_FETCH_WAIT`` and the outcome
never depends on it (only how long a failing run takes).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest

import voxgate
from voxgate.geometry import Box
from voxgate.relay import statefile as statefile_module
from voxgate.relay.catalog import NotFound
from voxgate.relay.config import CacheConfig, RelayConfig
from voxgate.relay.generations import Generations
from voxgate.relay.layer_files import LayerFiles
from voxgate.relay.shared_cache import SharedDiskCache
from voxgate.relay.statefile import StateFile

from .conftest import RW
from .test_consistency import (
    CUT,
    FRESH_FETCH_WAIT,
    GatedRemote,
    InProcessRelay,
    _delete_channel,
    _make_channel,
    _make_project,
)
from .test_write_races import CELL, PART, _channel, _in_thread, _joined, _read
from .test_write_races import workers as _workers

#: two relays as two worker processes of one ``voxgate serve --workers 2`` (test_write_races'
#: fixture: one state file and disk tier, a memory tier each; (A, B, the upstream's voxels))
two_workers = _workers


# -- the state file: a refresh under way in another thread ----------------------------------------
class _SignallingLock:
    """Wraps a StateFile's mutex: ``waiting`` is set when a thread other than the first to take
    it (``owner``, the refresh held in its merge) asks for it: the refresh of a second
    request, which a correct state file makes wait."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.owner: int | None = None
        self.waiting = threading.Event()

    def __enter__(self) -> _SignallingLock:
        me = threading.get_ident()
        if self.owner is None:
            self.owner = me
        elif me != self.owner:
            self.waiting.set()
        self.inner.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


def _hold_first_merge(monkeypatch: pytest.MonkeyPatch, lock: _SignallingLock
                      ) -> threading.Event:
    """Make the next refresh stop inside its merge (the new file read, not yet taken in) until
    another thread asks for the state file's mutex; return the event set when it stopped."""
    merging = threading.Event()
    real = statefile_module.merge_into
    armed = [True]

    def merge(ours: dict[str, Any], base: dict[str, Any], theirs: dict[str, Any],
              top: bool = True) -> None:
        if armed[0] and top:
            armed[0] = False
            assert lock.owner == threading.get_ident()
            merging.set()
            # a correct state file makes the other request wait for this merge (on the
            # mutex: that sets ``waiting``); a broken one lets it read the old state at once
            lock.waiting.wait(FRESH_FETCH_WAIT)
        real(ours, base, theirs, top)

    monkeypatch.setattr(statefile_module, "merge_into", merge)
    return merging


def test_a_state_change_saved_by_another_worker_is_seen_while_a_refresh_takes_it_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker A saves a change; in worker B one request's refresh has read the new file and is
    merging it when a second request begins: the second must see the change (it read the
    state of before: the file counted as read before it was taken in)."""
    path = tmp_path / "state.json"
    a = StateFile(path, {"metadata": {}})
    b = StateFile(path, {"metadata": {}})
    with a.transaction() as doc:
        doc["metadata"]["key"] = "old"
        a.save()
    b.refresh()
    assert b.data["metadata"]["key"] == "old"
    with a.transaction() as doc:
        doc["metadata"]["key"] = "new"
        a.save()  # acknowledged
    lock = _SignallingLock(b._mutex)
    b._mutex = lock  # type: ignore[assignment]
    merging = _hold_first_merge(monkeypatch, lock)
    first = _in_thread(b.refresh)
    assert merging.wait(60), "the first refresh never read the new file"

    def second() -> str:
        b.refresh()  # a request that begins after the save
        return str(b.data["metadata"]["key"])

    got = _joined(*_in_thread(second))
    _joined(*first)
    assert got == "new", "a request after the save read the state from before it"


def test_a_write_after_another_workers_delete_is_refused_while_a_refresh_takes_it_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        inproc: Callable[[RelayConfig], InProcessRelay]) -> None:
    """Worker A deletes a channel (acknowledged); in worker B one request's refresh is taking the
    delete in when a write through B, with the Remote its request found before the delete,
    begins: the write must be refused and write nothing (it found the channel live in the
    state of before, and wrote chunks into the path a channel created again will use)."""
    def config() -> RelayConfig:
        return RelayConfig(state_path=tmp_path / "state.json", data_root=tmp_path / "data",
                           upstream_timeout=60.0, workers=2,
                           cache=CacheConfig(memory_bytes=2**26))

    a = inproc(config())
    with httpx.Client(base_url=a.url, timeout=60,
                      headers={"Authorization": f"Token {RW}"}) as http:
        _make_project(http)
        _make_channel(http, "uint8")
    b = inproc(config()).relay
    b.catalog.refresh()
    entry = b.catalog.channel("lab", "exp", "ch")
    remote = b.remote(entry)
    location = Path(entry.upstream_url.split("://", 1)[1])
    assert location.is_dir()
    with httpx.Client(base_url=a.url, timeout=60,
                      headers={"Authorization": f"Token {RW}"}) as http:
        _delete_channel(http)  # acknowledged (204): the store moved aside
    assert not location.exists()

    lock = _SignallingLock(b.catalog._file._mutex)
    b.catalog._file._mutex = lock  # type: ignore[assignment]
    merging = _hold_first_merge(monkeypatch, lock)
    first = _in_thread(b.catalog.refresh)  # (the middleware's, of another request)
    assert merging.wait(60), "the first refresh never read the new state file"
    box = Box((0, 0, 0), (4, 16, 16))
    writer = _in_thread(lambda: b.write(remote, box, np.full((4, 16, 16), 7, np.uint8), 0))
    try:
        with pytest.raises(NotFound, match="deleted before this write began"):
            _joined(*writer)
    finally:
        _joined(*first)
    assert not location.exists(), (
        f"a write after the delete left {sorted(p.name for p in location.rglob('*'))}")


# -- the write generations' memo of the file last read -------------------------------------------
def test_a_generation_read_before_a_bump_and_kept_after_a_newer_look_never_hides_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relay B looks at a channel's generation and has read the old file when relay A (sharing
    the directory) bumps it and another look of B reads the new one; B's first look then lands
    (keeping the old file as the last read): a look that begins after A's bump must still see
    it."""
    gens = tmp_path / "generations"
    a, b = Generations(gens), Generations(gens)
    old = a.bump("tag")
    inside = threading.Event()
    release = threading.Event()
    real = Generations._parse
    armed = [True]

    def parse(data: bytes) -> str | None:
        version = real(data)
        if armed[0]:
            armed[0] = False
            inside.set()
            assert release.wait(60), "the test never released the look"
        return version

    monkeypatch.setattr(Generations, "_parse", staticmethod(parse))
    first = _in_thread(lambda: b.current("tag"))
    try:
        assert inside.wait(60), "B's look never read the file"
        new = a.bump("tag")  # acknowledged
        assert b.current("tag") == new  # a look after it
    finally:
        release.set()
    assert _joined(*first) == old  # (it read before the bump)
    assert b.current("tag") == new, "the old look, landing last, hid the newer generation"


# -- what a local precomputed layer's info names --------------------------------------------------
def test_a_layer_info_read_before_a_rewrite_and_landing_after_it_is_not_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay reads a local layer's info (no ``mesh`` key) and, before it keeps it, the info
    is rewritten with a ``mesh`` key and read again by another request; the first read then
    lands: a request after the rewrite must see the ``mesh`` key."""
    layer = tmp_path / "seg"
    url = voxgate.create(f"precomputed://file://{layer}", shape=(8, 16, 16), chunks=(8, 16, 16),
                         dtype="uint64", voxel_size=(40, 8, 8), kind="segmentation").url
    location = "file://" + str(layer)
    assert url.endswith(str(layer))
    files = LayerFiles()
    inside = threading.Event()
    release = threading.Event()
    real = LayerFiles._read_info
    armed = [True]

    def read_info(self: LayerFiles, where: str, name: str = "info") -> dict[str, Any] | None:
        info = real(self, where, name)
        if armed[0] and name == "info":
            armed[0] = False
            inside.set()
            assert release.wait(60), "the test never released the read"
        return info

    monkeypatch.setattr(LayerFiles, "_read_info", read_info)
    first = _in_thread(lambda: files.layer_info(location))
    try:
        assert inside.wait(60), "the first read never read the info"
        doc = json.loads((layer / "info").read_text())
        doc["mesh"] = "mesh"
        (layer / "info.tmp").write_text(json.dumps(doc))
        os.replace(layer / "info.tmp", layer / "info")  # written (as CloudVolume does)
        assert files.layer_info(location).get("mesh") == "mesh"
    finally:
        release.set()
    assert "mesh" not in _joined(*first)  # (it read before the rewrite)
    assert files.layer_info(location).get("mesh") == "mesh", (
        "the read from before the rewrite, landing last, brought the old info back")


# -- a channel deleted and created again while a fetch of the old one is in flight ----------------
def _data_root_config(tmp_path: Path, workers: int) -> RelayConfig:
    return RelayConfig(state_path=tmp_path / "state.json", data_root=tmp_path / "data",
                       upstream_timeout=60.0, workers=workers,
                       cache=CacheConfig(memory_bytes=2**26, disk_path=tmp_path / "cache",
                                         disk_bytes=2**30))


def _cutout_url(box: Box) -> str:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return f"/v1/cutout/lab/exp/ch/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"


def _post(http: httpx.Client, box: Box, arr: np.ndarray) -> None:
    res = http.post(_cutout_url(box), content=blosc.compress(arr.tobytes(),
                                                             typesize=arr.dtype.itemsize),
                    headers={"Content-Type": "application/blosc"})
    assert res.status_code == 201, res.text


def _got(res: httpx.Response, dtype: Any, box: Box) -> np.ndarray:
    assert res.status_code == 200, (res.status_code, res.text[:300])
    return np.frombuffer(blosc.decompress(res.content), dtype).reshape(tuple(box.shape))


@pytest.mark.parametrize("where", ["one-relay", "two-workers"])
def test_a_fetch_of_a_deleted_channel_holding_its_old_bytes_is_never_served_after_a_recreate(
        where: str, tmp_path: Path, inproc: Callable[[RelayConfig], InProcessRelay]) -> None:
    """A read's upstream fetch has read the channel's old bytes (and waits) when the channel is
    deleted, created again under its name with another datatype and written (each
    acknowledged; through the same relay, or through the other worker): that read answers 404,
    and every read after the recreate, through either worker, gets the new channel's bytes,
    never the old ones (nor do they sit in the shared disk tier for the new channel)."""
    two = where == "two-workers"
    reader = inproc(_data_root_config(tmp_path, 2 if two else 1))
    writer = inproc(_data_root_config(tmp_path, 2)) if two else reader
    old = np.random.default_rng(7).integers(1, 255, tuple(CUT.shape), dtype=np.uint8)
    with httpx.Client(base_url=writer.url, timeout=60,
                      headers={"Authorization": f"Token {RW}"}) as http:
        _make_project(http)
        _make_channel(http, "uint8")
        _post(http, CUT, old)
    r = reader.relay
    r.catalog.refresh()
    remote = r.remote(r.catalog.channel("lab", "exp", "ch"))
    remote.cache.drop_tag(remote.tag)  # (nothing of it cached: the read goes upstream)
    gate = GatedRemote(remote.upstream)
    remote.upstream = gate
    gate.arm()
    new = np.full(tuple(CUT.shape), 2**40 + 3, np.uint64)
    with httpx.Client(base_url=reader.url, timeout=60,
                      headers={"Authorization": f"Token {RW}"}) as rhttp, \
            httpx.Client(base_url=writer.url, timeout=60,
                         headers={"Authorization": f"Token {RW}"}) as whttp:
        first = _in_thread(lambda: rhttp.get(_cutout_url(CUT)))
        try:
            assert gate.entered.wait(60), "the read never reached the upstream"
            _delete_channel(whttp)
            _make_channel(whttp, "uint64")
            _post(whttp, CUT, new)  # acknowledged
        finally:
            gate.release.set()
        during = _joined(*first)
        assert during.status_code == 404, (during.status_code, during.content[:200])
        for _ in range(2):  # (the second from whatever the first cached)
            for http in (rhttp, whttp):
                np.testing.assert_array_equal(_got(http.get(_cutout_url(CUT)), np.uint64, CUT),
                                              new)
        inner = Box((4, 40, 60), (8, 80, 120))  # a region of one cell, read alone
        np.testing.assert_array_equal(
            _got(rhttp.get(_cutout_url(inner)), np.uint64, inner),
            new[inner.slices(CUT.start)])


# -- two workers sharing the disk tier: a disk hit across the other's write ----------------------
def test_a_workers_disk_hit_read_across_anothers_write_is_not_served_after_the_ack(
        two_workers: tuple[Any, Any, np.ndarray]) -> None:
    """Worker B finds a cell in the shared disk tier (written there by A's read) and has read
    its old bytes, not yet put them in its memory tier, when worker A writes that cell
    (acknowledged): a read through B that begins after the acknowledgement must see the
    write, and so must the next (the old bytes never stay in B's memory tier)."""
    a, b, data = two_workers
    np.testing.assert_array_equal(_read(a, CELL), data[CELL.slices()])  # in the disk tier
    assert isinstance(a.cache, SharedDiskCache) and a.cache.disk is not None
    a.cache.flush()
    _, ra = _channel(a)
    np.testing.assert_array_equal(_read(b, Box((0, 128, 256), (32, 256, 512))),
                                  data[0:32, 128:256, 256:512])  # (B has looked)
    assert b.cache.disk is not None
    disk = b.cache.disk
    inside = threading.Event()
    release = threading.Event()
    real = disk.get
    armed = [True]

    def get(key: str) -> np.ndarray | None:
        arr = real(key)
        if armed[0] and arr is not None:
            armed[0] = False
            inside.set()
            assert release.wait(60), "the test never released the disk read"
        return arr

    disk.get = get  # type: ignore[method-assign]
    first = _in_thread(lambda: _read(b, CELL))
    expected = data[CELL.slices()].copy()
    expected[PART.slices()] = 21
    try:
        assert inside.wait(60), "B's read never found the cell on disk"
        a.write(ra, PART, np.full(tuple(PART.shape), 21, np.uint8), 0)  # acknowledged
        after = _in_thread(lambda: _read(b, CELL))
        # a correct worker reads afresh (the disk gate lets later reads through); one that
        # waited for the old read would wait for the gate
        after[0].join(FRESH_FETCH_WAIT)
    finally:
        release.set()
    np.testing.assert_array_equal(_joined(*first), data[CELL.slices()])  # begun before
    np.testing.assert_array_equal(_joined(*after), expected)
    np.testing.assert_array_equal(_read(b, CELL), expected)
    np.testing.assert_array_equal(_read(a, CELL), expected)


# -- two channels over one store, its path spelled two ways ---------------------------------------
def test_a_write_through_one_spelling_of_a_store_is_read_through_another(
        tmp_path: Path, inproc: Callable[[RelayConfig], InProcessRelay]) -> None:
    """Two channels over one local store, their upstream URLs spelling its path differently
    (``./`` inside, a trailing slash): a write through one (acknowledged) must be read through
    the other, which had the region cached (its cells kept the old voxels: a write drops the
    cells of the views of its upstream, and these were taken for another upstream), and the
    other's ETag must change (its write generation did not move)."""
    from voxgate.relay.config import ChannelConfig

    from .test_consistency import _zarr_store

    url, data = _zarr_store(tmp_path, np.uint8)
    other = url.replace("/store.zarr", "/./store.zarr/")
    assert other != url
    relay = inproc(RelayConfig(
        upstream_timeout=60.0, state_path=tmp_path / "state.json",
        cache=CacheConfig(memory_bytes=2**26, disk_path=tmp_path / "cache", disk_bytes=2**30),
        channels=[ChannelConfig("c", "e", "img", url), ChannelConfig("c", "e", "alias", other)]))
    (z0, y0, x0), (z1, y1, x1) = CELL.start, CELL.stop
    alias = f"{relay.url}/v1/cutout/c/e/alias/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"
    headers = {"Authorization": f"Token {RW}"}
    before = httpx.get(alias, headers=headers, timeout=60)
    np.testing.assert_array_equal(_got(before, np.uint8, CELL), data[CELL.slices()])
    again = httpx.get(alias, headers=headers, timeout=60)  # (now from the cache)
    np.testing.assert_array_equal(_got(again, np.uint8, CELL), data[CELL.slices()])
    (pz0, py0, px0), (pz1, py1, px1) = PART.start, PART.stop
    res = httpx.post(
        f"{relay.url}/v1/cutout/c/e/img/0/{px0}:{px1}/{py0}:{py1}/{pz0}:{pz1}/",
        content=blosc.compress(np.full(tuple(PART.shape), 31, np.uint8).tobytes(), typesize=1),
        headers={**headers, "Content-Type": "application/blosc"}, timeout=60)
    assert res.status_code == 201, res.text  # acknowledged
    expected = data[CELL.slices()].copy()
    expected[PART.slices()] = 31
    after = httpx.get(alias, headers=headers, timeout=60)
    np.testing.assert_array_equal(_got(after, np.uint8, CELL), expected)
    assert after.headers["etag"] != before.headers["etag"]
    revalidated = httpx.get(alias, headers={**headers, "If-None-Match": before.headers["etag"]},
                            timeout=60)
    assert revalidated.status_code == 200, "a 304 for the alias's ETag from before the write"


def test_a_read_only_spelling_of_a_store_written_through_another_is_not_reused_unasked(
        tmp_path: Path, inproc: Callable[[RelayConfig], InProcessRelay]) -> None:
    """``read_only_max_age`` lets an HTTP cache reuse a read-only channel's responses unasked
    only when no writable channel here has its upstream: a writable channel spelling the same
    store's path otherwise (``./`` inside, a trailing slash) has it, so the read-only one's
    responses must be revalidated (a cache reusing them would serve them stale after a
    write through the writable one)."""
    from voxgate.relay.config import ChannelConfig

    from .test_consistency import _zarr_store

    url, data = _zarr_store(tmp_path, np.uint8)
    other = url.replace("/store.zarr", "/./store.zarr/")
    relay = inproc(RelayConfig(
        upstream_timeout=60.0, state_path=tmp_path / "state.json", read_only_max_age=3600,
        cache=CacheConfig(memory_bytes=2**26),
        channels=[ChannelConfig("c", "e", "img", url),
                  ChannelConfig("c", "e", "alias", other, writable=False),
                  ChannelConfig("c", "e", "lone", url.replace("store.zarr", "lone.zarr"),
                                writable=False)]))
    (z0, y0, x0), (z1, y1, x1) = CELL.start, CELL.stop
    headers = {"Authorization": f"Token {RW}"}
    got = httpx.get(f"{relay.url}/v1/cutout/c/e/alias/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/",
                    headers=headers, timeout=60)
    np.testing.assert_array_equal(_got(got, np.uint8, CELL), data[CELL.slices()])
    assert got.headers["cache-control"] == "public, no-cache", got.headers
    # (the check can fail: a read-only channel whose store no writable one has is reusable)
    lone = relay.relay.catalog.channels[("c", "e", "lone")]
    assert relay.relay.cache_headers(lone, '"x"')["Cache-Control"] == "public, max-age=3600"
