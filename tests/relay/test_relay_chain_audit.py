"""Relay chains and caches under writes (an audit of the seam): a relay B whose upstream is a
relay A whose upstream is a store, and two channels of one relay over one upstream.

What is checked, each against the store read directly or a numpy reference:

- two channels of one relay over the same upstream (a writable one and a read-only one, the
  pair docs/relay.md's ``read_only_max_age`` paragraph describes; or a relay of a relay with
  a read token and a write token): they share cache cells, so a write through one detaches
  the upstream fetch in flight for those cells through the other (it was per channel: a read
  through the other channel that began after the write's acknowledgement joined the fetch
  holding the old data, which then stayed cached for both);
- a chain A <- B (B with two worker processes and a disk tier): writes through B with the
  ``intern`` client from PyPI read back through A and B, and through B's precomputed dialect
  by CloudVolume; readers racing the writer through both tiers never see a value older than
  an acknowledged write; B's ETags change with every write through B, a conditional GET with
  the current one is 304, with an old one 200 and the new data;
- a channel of A deleted and created again with another datatype: B, after its metadata
  check, serves the new channel's data under new ETags.

Relays whose upstream is gated run in this process (uvicorn on a thread, 127.0.0.1); the
others are ``voxgate serve`` processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest

import voxgate
from voxgate.geometry import Box
from voxgate.relay.config import CacheConfig, ChannelConfig, RelayConfig

from .conftest import RW, RelayProcess, free_port, start_relay, tls
from .test_consistency import (
    GatedRemote,
    InProcessRelay,
    check_read_your_writes,
)

#: a uint8 (32, 256, 512) store in (16, 64, 64) chunks: cache cells of (32, 128, 256)
SHAPE = (32, 256, 512)
CELL = Box((0, 0, 0), (32, 128, 256))  # the first cache cell
PART = Box((3, 10, 20), (9, 60, 90))  # part of it: a write of it cannot re-cache the cell


def _store(tmp: Path, seed: int = 3) -> tuple[str, np.ndarray]:
    data = np.random.default_rng(seed).integers(1, 200, SHAPE, dtype=np.uint8)
    url = f"zarr://{tmp}/store.zarr"
    vol = voxgate.create(url, shape=SHAPE, chunks=(16, 64, 64), dtype="uint8",
                         voxel_size=(40, 8, 8))
    vol[:] = data
    return url, data


def _cutout(box: Box, path: str) -> str:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return f"/v1/cutout/{path}/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"


def _get(base: str, box: Box, path: str, dtype: Any = np.uint8) -> np.ndarray:
    res = httpx.get(base + _cutout(box, path), headers={"Authorization": f"Token {RW}"},
                    timeout=120)
    assert res.status_code == 200, res.text
    return np.frombuffer(blosc.decompress(res.content), dtype).reshape(tuple(box.shape))


def _post(base: str, box: Box, arr: np.ndarray, path: str) -> None:
    arr = np.ascontiguousarray(arr)
    res = httpx.post(base + _cutout(box, path),
                     content=blosc.compress(arr.tobytes(), typesize=arr.dtype.itemsize),
                     headers={"Authorization": f"Token {RW}",
                              "Content-Type": "application/blosc"}, timeout=120)
    assert res.status_code == 201, res.text


# -- two channels of one relay over one upstream -------------------------------------------------
def _two_channel_config(d: Path, upstream: str, options: dict[str, Any] | None = None,
                        ro_options: dict[str, Any] | None = None) -> RelayConfig:
    d.mkdir(parents=True, exist_ok=True)
    return RelayConfig(
        upstream_timeout=120.0, state_path=d / "state.json",
        cache=CacheConfig(memory_bytes=2**26),
        channels=[ChannelConfig("c", "e", "img", upstream, dict(options or {})),
                  ChannelConfig("c", "e", "pub", upstream, dict(ro_options or options or {}),
                                writable=False)])


def _gate(relay: InProcessRelay, ch: str) -> GatedRemote:
    cat = relay.relay.catalog
    cached = cat.remote(cat.channel("c", "e", ch))
    gate = GatedRemote(cached.upstream)
    cached.upstream = gate
    return gate


def _check_write_detaches_the_other_channels_fetch(relay: InProcessRelay, gate: GatedRemote,
                                                   data: np.ndarray) -> None:
    """A read of CELL through c/e/pub in flight upstream (holding the old data); a write of
    PART through c/e/img acknowledged; then a read through c/e/pub must see the write, and
    the old fetch must leave nothing behind for either channel."""
    expected = data[CELL.slices()].copy()
    expected[PART.slices()] = 250
    check_read_your_writes(
        gate, lambda: _get(relay.url, CELL, "c/e/pub"),
        lambda: _post(relay.url, PART, np.full(PART.shape, 250, np.uint8), "c/e/img"), expected)
    # the old fetch finished last: what it read is not cached for either channel
    for ch in ("pub", "img"):
        np.testing.assert_array_equal(_get(relay.url, CELL, f"c/e/{ch}"), expected)


@pytest.mark.parametrize("upstream", ["store", "relay"])
def test_a_write_through_one_channel_detaches_the_fetch_of_another_over_its_upstream(
        upstream: str, tmp_path: Path, inproc: Callable[[RelayConfig], InProcessRelay]) -> None:
    url, data = _store(tmp_path)
    if upstream == "store":
        relay = inproc(_two_channel_config(tmp_path / "relay", url))
    else:  # a relay of a relay: one channel with a write token, one with a read token
        lab = inproc(RelayConfig(upstream_timeout=120.0, state_path=tmp_path / "lab.json",
                                 cache=CacheConfig(memory_bytes=2**26),
                                 channels=[ChannelConfig("c", "e", "img", url)]))
        relay = inproc(_two_channel_config(tmp_path / "relay", f"bossdb://{lab.url}/c/e/img",
                                           {"token": RW}, {"token": "read-token"}))
    _check_write_detaches_the_other_channels_fetch(relay, _gate(relay, "pub"), data)
    np.testing.assert_array_equal(voxgate.open(url)[PART.slices()].read(), 250)


# -- a chain of voxgate serve processes: A (a data root) <- B (two workers, a disk tier) ----------
FRAME = (32, 256, 256)  # z, y, x of the coordinate frame: A's channels, B's view of them


def _intern(r: RelayProcess) -> Any:
    from intern.remote.boss import BossRemote

    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{r.port}", "token": RW})


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayProcess, RelayProcess]]:
    """A: a relay whose channel c/e/ch (uint8, two levels) is created through its project
    service; B: a relay of two worker processes with a disk tier whose channel c/e/ch is A's,
    reading A's metadata again every second.  (One pair for the module: the tests below run
    in order, the last one deletes A's channel.)"""
    from intern.resource.boss.resource import (
        ChannelResource,
        CollectionResource,
        CoordinateFrameResource,
        ExperimentResource,
    )

    tmp_path = tmp_path_factory.mktemp("chain")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg_a = tmp_path / "a" / "relay.toml"
    cfg_a.write_text(f"""
[server]
state_path = "{tmp_path / 'a' / 'state.json'}"
upstream_timeout = 60
[cache]
memory_bytes = "32 MiB"
disk_path = "{tmp_path / 'a' / 'cache'}"
[auth]
tokens = {{ "{RW}" = "read-write" }}
""")
    a = start_relay(cfg_a, free_port(), "--data-root", str(tmp_path / "a" / "data"))
    b: RelayProcess | None = None
    try:
        boss = _intern(a)
        boss.create_project(CollectionResource("c"))
        boss.create_project(CoordinateFrameResource(
            "f", x_start=0, x_stop=FRAME[2], y_start=0, y_stop=FRAME[1], z_start=0,
            z_stop=FRAME[0], x_voxel_size=8, y_voxel_size=8, z_voxel_size=40))
        boss.create_project(ExperimentResource("e", "c", "f", num_hierarchy_levels=2))
        boss.create_project(ChannelResource("ch", "c", "e", datatype="uint8"))
        cfg_b = tmp_path / "b" / "relay.toml"
        cfg_b.write_text(f"""
[server]
state_path = "{tmp_path / 'b' / 'state.json'}"
upstream_timeout = 60
upstream_meta_seconds = 1
workers = 2
[cache]
memory_bytes = "32 MiB"
disk_path = "{tmp_path / 'b' / 'cache'}"
disk_bytes = "256 MiB"
[[channel]]
name = "c/e/ch"
upstream = "bossdb://{a.url}/c/e/ch"
options = {{ token = "{RW}" }}
""")
        b = start_relay(cfg_b, free_port())
        yield a, b
    finally:
        if b is not None:
            b.stop()
        a.stop()


def _fresh_get(r: RelayProcess, path: str, **headers: str) -> httpx.Response:
    # a connection of its own: the kernel hands it to either worker process
    with httpx.Client(base_url=r.url, timeout=60, verify=tls()) as http:
        return http.get(path, headers={"Authorization": f"Token {RW}", **headers})


def test_writes_through_a_chain_read_back_through_every_tier_and_dialect(
        chain: tuple[RelayProcess, RelayProcess]) -> None:
    from cloudvolume import CloudVolume

    a, b = chain
    via_a, via_b = _intern(a), _intern(b)
    ch_a, ch_b = via_a.get_channel("ch", "c", "e"), via_b.get_channel("ch", "c", "e")
    data = np.random.default_rng(8).integers(1, 255, FRAME, dtype=np.uint8)
    via_b.create_cutout(ch_b, 0, [0, FRAME[2]], [0, FRAME[1]], [0, FRAME[0]], data)
    box = Box((0, 0, 0), FRAME)
    res = _fresh_get(b, _cutout(box, "c/e/ch"))
    assert res.status_code == 200, res.text
    old_tag = res.headers["etag"]
    # a part, through B, overwriting cells both tiers now hold
    patch = np.full((5, 40, 70), 7, np.uint8)
    via_b.create_cutout(ch_b, 0, [30, 100], [200, 240], [20, 25], patch)
    want = data.copy()
    want[20:25, 200:240, 30:100] = 7
    for remote, ch in ((via_a, ch_a), (via_b, ch_b)):
        np.testing.assert_array_equal(
            remote.get_cutout(ch, 0, [0, FRAME[2]], [0, FRAME[1]], [0, FRAME[0]]), want)
    # B's precomputed dialect, read by CloudVolume (x, y, z; a trailing channel axis)
    cv = CloudVolume(f"{b.url}/precomputed/c/e/ch", mip=0, progress=False,
                     fill_missing=False, cache=False)
    np.testing.assert_array_equal(np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0), want)
    # ETags: the write moved B's; the old one is answered with the new data, the new one 304,
    # from either worker process
    for _ in range(4):
        res = _fresh_get(b, _cutout(box, "c/e/ch"), **{"If-None-Match": old_tag})
        assert res.status_code == 200, res.text
        np.testing.assert_array_equal(
            np.frombuffer(blosc.decompress(res.content), np.uint8).reshape(FRAME), want)
        new_tag = res.headers["etag"]
        assert new_tag != old_tag
        assert _fresh_get(b, _cutout(box, "c/e/ch"),
                          **{"If-None-Match": new_tag}).status_code == 304
    # and the store under A's data root has it
    store = voxgate.open(f"zarr://{a.config.parent / 'data' / 'c' / 'e' / 'ch.zarr'}")
    np.testing.assert_array_equal(store.read(), want)


def test_readers_racing_a_writer_through_a_chain_never_see_an_older_value(
        chain: tuple[RelayProcess, RelayProcess]) -> None:
    a, b = chain
    via_b = _intern(b)
    ch_b = via_b.get_channel("ch", "c", "e")
    box = Box((4, 16, 32), (12, 80, 120))  # part of one cell of each tier
    region = ([box.start.x, box.stop.x], [box.start.y, box.stop.y], [box.start.z, box.stop.z])
    chunk = Box((0, 0, 0), (16, FRAME[1], FRAME[2]))  # B's precomputed chunk holding it
    name = f"0-{FRAME[2]}_0-{FRAME[1]}_0-16"
    acked: list[tuple[float, int]] = [(0.0, 0)]
    reads: list[tuple[str, float, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(where: str) -> None:
        try:
            while not stop.is_set():
                t0 = time.monotonic()
                if where == "precomputed":
                    res = _fresh_get(b, f"/precomputed/c/e/ch/s0/{name}",
                                     **{"Accept-Encoding": "identity"})
                    assert res.status_code == 200, res.text
                    arr = np.frombuffer(res.content, np.uint8).reshape(tuple(chunk.shape))
                    arr = arr[box.slices()]
                else:
                    res = _fresh_get(a if where == "A" else b, _cutout(box, "c/e/ch"))
                    assert res.status_code == 200, res.text
                    arr = np.frombuffer(blosc.decompress(res.content), np.uint8)
                reads.append((where, t0, int(arr.min())))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(w,)) for w in ("A", "B", "precomputed")]
    for t in threads:
        t.start()
    try:
        for value in range(1, 13):
            via_b.create_cutout(ch_b, 0, *region, np.full(tuple(box.shape), value, np.uint8))
            acked.append((time.monotonic(), value))
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert {w for w, _, _ in reads} == {"A", "B", "precomputed"}
    for where, began, smallest in reads:
        floor = max(v for t, v in acked if t <= began)
        assert smallest >= floor, (where, began, smallest, floor)
    for r in (a, b, b):
        assert (_get(r.url, box, "c/e/ch") == 12).all()


def test_a_channel_made_again_upstream_with_another_datatype_is_served_anew(
        chain: tuple[RelayProcess, RelayProcess]) -> None:
    from intern.resource.boss.resource import ChannelResource

    a, b = chain
    via_a = _intern(a)
    box = Box((0, 0, 0), FRAME)
    before = _fresh_get(b, _cutout(box, "c/e/ch"))  # cached by B, with an ETag
    assert before.status_code == 200, before.text
    assert len(blosc.decompress(before.content)) == np.prod(FRAME)  # uint8
    via_a.delete_project(via_a.get_channel("ch", "c", "e"))
    made = via_a.create_project(ChannelResource("ch", "c", "e", datatype="uint16"))
    data = np.random.default_rng(9).integers(300, 60000, FRAME, dtype=np.uint16)
    via_a.create_cutout(made, 0, [0, FRAME[2]], [0, FRAME[1]], [0, FRAME[0]], data)
    # B reads A's metadata again every second (docs/relay.md, "Changes made outside the
    # relay"): its answers become the new channel's on both workers
    deadline = time.monotonic() + 60
    answered: set[str] = set()
    while len(answered) < 2:
        assert time.monotonic() < deadline, "B never served the new channel on both workers"
        res = _fresh_get(b, _cutout(box, "c/e/ch"), **{"If-None-Match": before.headers["etag"]})
        if res.status_code == 304:  # before that worker's check: the old metadata (documented)
            time.sleep(0.05)  # (polling a condition, bounded by the deadline)
            continue
        assert res.status_code == 200, res.text
        body = blosc.decompress(res.content)
        if len(body) == data.nbytes:
            np.testing.assert_array_equal(np.frombuffer(body, np.uint16).reshape(FRAME), data)
            assert res.headers["etag"] != before.headers["etag"]
            answered.add(res.headers["x-voxgate-worker"])
    np.testing.assert_array_equal(
        _intern(b).get_cutout(_intern(b).get_channel("ch", "c", "e"), 0, [0, FRAME[2]],
                              [0, FRAME[1]], [0, FRAME[0]]), data)
