"""The relay's encoded-response cache (voxgate.relay.cache.responses): kept by ETag, never
stale after a write's acknowledgement, the same bytes as a fresh encoding, bounded in bytes."""

from __future__ import annotations

import io
import threading
import zlib
from pathlib import Path

import blosc
import httpx
import numpy as np

import voxgate
from voxgate.api import open_remote
from voxgate.geometry import Box
from voxgate.relay.cache import CachedRemote, TieredCache
from voxgate.relay.cache.responses import RESPONSE_SHARE, ResponseCache

from .conftest import RW, RelayProcess, free_port, start_relay

SHAPE = (32, 256, 256)  # uint8, (16, 64, 64) chunks: cache cells of (32, 128, 256)


def _relay(tmp_path: Path) -> RelayProcess:
    data = np.random.default_rng(3).integers(1, 200, SHAPE, dtype=np.uint8)
    vol = voxgate.create(f"zarr://{tmp_path}/up.zarr", shape=SHAPE, chunks=(16, 64, 64),
                         dtype="uint8", voxel_size=(40, 8, 8))
    vol[:] = data
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f"""
[server]
state_path = "{tmp_path / 'state.json'}"
[cache]
memory_bytes = "16 MiB"
[[channel]]
name = "d/t/img"
upstream = "zarr://{tmp_path}/up.zarr"
[auth]
tokens = {{ "{RW}" = "read-write" }}
""")
    return start_relay(cfg, free_port())


def _url(box: Box) -> str:
    x, y, z = (f"{a}:{b}" for a, b in zip(box.start.xyz(), box.stop.xyz(), strict=True))
    return f"/v1/cutout/d/t/img/0/{x}/{y}/{z}/"


def _decode(res: httpx.Response, box: Box) -> np.ndarray:
    assert res.status_code == 200, res.text
    return np.frombuffer(blosc.decompress(res.content), np.uint8).reshape(tuple(box.shape))


def _cache_metrics(http: httpx.Client) -> dict[str, int]:
    return dict(http.get("/metrics").json()["cache"])


def test_a_kept_response_is_the_fresh_bytes_per_encoding(tmp_path: Path) -> None:
    relay = _relay(tmp_path)
    box = Box((3, 10, 20), (29, 200, 120))  # two cells, unaligned (494 KB: kept)
    try:
        with relay.client(RW) as http:
            for accept in ("application/blosc", "application/npygz"):
                before = _cache_metrics(http)
                fresh = http.get(_url(box), headers={"Accept": accept})
                kept = http.get(_url(box), headers={"Accept": accept})
                after = _cache_metrics(http)
                assert fresh.status_code == kept.status_code == 200
                assert after["response_misses"] == before["response_misses"] + 1
                assert after["response_hits"] == before["response_hits"] + 1
                assert kept.content == fresh.content  # byte for byte
                assert kept.headers["etag"] == fresh.headers["etag"]
                assert kept.headers["content-type"] == fresh.headers["content-type"]
                if accept == "application/npygz":
                    arr = np.load(io.BytesIO(zlib.decompress(kept.content)))
                else:
                    arr = _decode(kept, box)
                expected = voxgate.open(f"zarr://{tmp_path}/up.zarr")[
                    3:29, 10:200, 20:120].read()
                np.testing.assert_array_equal(arr, expected)
            # precomputed chunks: each encoding its own response
            chunk = "/precomputed/d/t/img/s0/0-256_0-128_0-32"
            for encoding in ("gzip", "identity"):
                fresh = http.get(chunk, headers={"Accept-Encoding": encoding})
                kept = http.get(chunk, headers={"Accept-Encoding": encoding})
                assert fresh.status_code == kept.status_code == 200, fresh.text
                assert kept.content == fresh.content and kept.headers["etag"] == \
                    fresh.headers["etag"]
                raw = kept.content  # (httpx decodes gzip)
                np.testing.assert_array_equal(
                    np.frombuffer(raw, np.uint8).reshape(32, 128, 256),
                    voxgate.open(f"zarr://{tmp_path}/up.zarr")[0:32, 0:128, 0:256].read())
            assert _cache_metrics(http)["response_hits"] == 4
    finally:
        relay.stop()


def test_a_write_racing_repeated_reads_never_leaves_old_bytes_after_its_ack(
        tmp_path: Path) -> None:
    """Readers on threads read one region over and over (so responses are kept at every
    moment of each write) while writes fill it with 1, 2, 3, ...; a read that began after a
    write was acknowledged must see that write or a later one, never older bytes."""
    relay = _relay(tmp_path)
    box = Box((0, 0, 0), (32, 256, 256))  # every cell of the channel
    acked = [0]  # the value of the last acknowledged write
    lock = threading.Lock()
    stop = threading.Event()
    stale: list[tuple[int, int]] = []
    reads = [0]

    def reader() -> None:
        with relay.client(RW) as http:
            while not stop.is_set():
                with lock:
                    floor = acked[0]
                arr = _decode(http.get(_url(box)), box)
                low = int(arr.min())
                with lock:
                    reads[0] += 1
                    if floor and low < floor:
                        stale.append((floor, low))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        with relay.client(RW) as http:
            for value in range(1, 9):
                body = blosc.compress(np.full(SHAPE, value, np.uint8).tobytes(), typesize=1)
                res = http.post(_url(box), content=body,
                                headers={"Content-Type": "application/blosc"})
                assert res.status_code == 201, res.text
                with lock:
                    acked[0] = value
                # this thread's own read right after the acknowledgement, too
                assert (_decode(http.get(_url(box)), box) == value).all()
            hits = _cache_metrics(http)["response_hits"]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        relay.stop()
    assert not stale, f"reads after an acknowledged write saw older bytes: {stale[:5]}"
    assert reads[0] > 8 and hits > 0  # the readers did hit kept responses meanwhile


def test_responses_are_bounded_by_their_share_of_the_memory_budget() -> None:
    cache = ResponseCache(1000)
    assert cache.put("a", b"x" * 250, "m") and not cache.put("big", b"x" * 251, "m")
    for k in "bcd":
        cache.put(k, b"y" * 250, "m")
    assert cache.used == 1000 and len(cache) == 4
    cache.get("a")  # used: "b" is now the oldest
    cache.put("e", b"z" * 100, "m")
    assert cache.get("b") is None and cache.get("a") == (b"x" * 250, "m")
    assert cache.used <= 1000
    assert cache.used == 850 and cache.drop_prefix("a") == 1 and cache.used == 600

    # in the tiered cache: cells and responses share memory_bytes
    tiered = TieredCache(2**20)
    assert tiered.responses.capacity == int(2**20 * RESPONSE_SHARE)
    assert tiered.memory.capacity + tiered.responses.capacity == 2**20
    data = np.random.default_rng(1).integers(0, 255, (16, 128, 128), dtype=np.uint8)
    vol = voxgate.create("mem://responses-bounded", shape=data.shape, dtype="uint8",
                         chunks=(16, 64, 64), voxel_size=(40, 8, 8))
    vol[:] = data
    remote = CachedRemote(open_remote("mem://responses-bounded"), tiered, identity="bounded")
    for i in range(200):
        body = blosc.compress(data[:, : 1 + i % 20].tobytes(), typesize=1)  # to 40 KB
        remote.keep_response(f'"vg-{i}"', body, "application/blosc")
        remote.read(Box((0, 0, 0), (16, 128, 128)))
        assert tiered.responses.used <= tiered.responses.capacity
        assert tiered.memory.used + tiered.responses.used <= 2**20
    assert remote.response('"vg-199"') is not None and remote.response('"vg-0"') is None
    # a channel's responses go with its cells
    assert remote.invalidate() > 0 and len(tiered.responses) == 0
