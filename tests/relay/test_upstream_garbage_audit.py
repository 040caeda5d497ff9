"""Upstreams that answer garbage, seen through a relay and through tensorstore:// specs.

tests/test_server_garbage_audit.py put a proxy that answers garbage in front of the servers
``bossdb://``, ``dvid://`` and precomputed / zarr / N5 over http read from.  Here the proxy
stands between a relay (``voxgate serve``) and its upstreams: a bossDB server (a voxgate relay
over a zarr volume), the DVID test server, and a static file server holding a precomputed
layer.  Whatever garbage the upstream answers, for the channel's metadata (the relay opening
it) or for its voxels (a cutout, a chunk file):

- the relay answers its client 502 with its JSON error naming the relay's channel (a bossDB
  or DVID upstream's own words name only its own resources), not a 500 "internal error";
- nothing of it is cached: once the upstream answers well again, the next read is right;
- intern (the bossDB dialect) and CloudVolume (the precomputed dialect) raise, never read zeros.

A ``tensorstore://`` spec with an http kvstore (zarr3, N5, neuroglancer_precomputed) that
answers garbage is a CorruptChunkError naming the URL, its credentials redacted.

bossDB's downsample status (``GET /v1/downsample/c/e/ch/``), which says each level's voxel
size and, from a voxgate relay, its pyramid's anchor, was asked with every failure ignored: a
status that was garbage (or not answered) silently gave bossDB's halving rule and the "origin"
anchor, so a relay channel whose levels halve otherwise opened with wrong shapes and voxel
sizes.  A malformed status is now a CorruptChunkError naming its URL; only a server without
one (404) falls back to the rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest

import voxgate
from tests.garbage_proxy import JSON_GARBAGE, GarbageProxy, garbage, refused
from tests.static_http import serve_directory
from tests.test_server_garbage_audit import DATA, SHAPE
from voxgate.errors import CorruptChunkError, VoxgateError

from .conftest import RelayProcess, free_port, start_relay

#: the tensorstore:// cases' garbage, a few of each family (tensorstore parses every kind the
#: same way; the full lists run against voxgate's own parsers in tests/test_server_garbage_audit.py)
TS_JSON = ["html", "truncated", "list", "nulls"]
TS_CHUNK = ["html", "truncated"]
#: the relay's cases likewise (each a channel of its own, opened cold)
RELAY_JSON = ["html", "empty", "truncated", "list", "null", "strings", "nulls"]
RELAY_CHUNK = ["html", "truncated", "huge"]

UPSTREAMS = ("boss", "dvid", "pc")
#: the answers a relay reads opening a channel of each upstream
META = {"boss": r"/v1/collection/lab/experiment/em/channel/r\d+$",
        "dvid": r"/api/repo/[0-9a-f]+/info$",
        "pc": r"/raw\d+/info$"}
#: the answers holding its voxels
CHUNK = {"boss": r"/v1/cutout/lab/em/r\d+/", "dvid": r"/gray\d+/raw/", "pc": r"/raw\d+/8_8_40/"}
#: channels made per upstream (one per test case: each has an experiment of its own, so opening
#: one does not open the others, and an upstream URL of its own, so no cached cell is shared)
CASES = 24


@dataclass
class World:
    relay: RelayProcess  # the relay under test, over the three upstreams behind proxies
    proxies: dict[str, GarbageProxy]
    files: GarbageProxy  # the static file server behind its proxy (for tensorstore:// too)
    taken: dict[str, int] = field(default_factory=dict)

    def channel(self, upstream: str) -> str:
        """A channel of ``upstream`` no other test has touched: c/e/ch."""
        i = self.taken.get(upstream, 0)
        assert i < CASES, "make more channels"
        self.taken[upstream] = i + 1
        return f"g/{upstream}{i}/c"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from voxgate.remotes.dvid import DVIDRepo
    from voxgate.testing.dvid import start_server

    root = tmp_path_factory.mktemp("upstream_garbage")
    started: list[Callable[[], None]] = []
    try:
        # bossDB: a voxgate relay over one zarr volume, as CASES channels
        voxgate.create(f"zarr://{root}/a.zarr", shape=SHAPE, chunks=(16, 16, 16),
                       dtype="uint8", voxel_size=(40, 8, 8))[:] = DATA
        cfg = root / "boss.toml"
        cfg.write_text(f'[server]\nhost = "127.0.0.1"\nstate_path = "{root / "boss.json"}"\n'
                       + "".join(f'[[channel]]\nname = "lab/em/r{i}"\n'
                                 f'upstream = "zarr://{root}/a.zarr"\n' for i in range(CASES)))
        boss = start_relay(cfg, free_port())
        started.append(boss.stop)
        # DVID: CASES uint8blk instances
        srv = start_server()
        started.append(srv.stop)
        repo = DVIDRepo.create(srv.url, alias="garbage")
        for i in range(CASES):
            repo.create_instance(f"gray{i}", "uint8blk")
            voxgate.open(f"dvid://{srv.url}/{repo.root}/gray{i}", mode="r+")[:20, :30, :40] = DATA
        # precomputed over http: one layer, under CASES names
        files = root / "files"
        voxgate.create(f"precomputed://file://{files}/raw", shape=SHAPE, chunks=(16, 16, 16),
                       dtype="uint8", voxel_size=(40, 8, 8))[:] = DATA
        for i in range(CASES):
            (files / f"raw{i}").symlink_to(files / "raw", target_is_directory=True)
        serving = serve_directory(files)
        base = serving.__enter__()
        started.append(lambda: serving.__exit__(None, None, None))
        proxies = {"boss": GarbageProxy(boss.url), "dvid": GarbageProxy(srv.url),
                   "pc": GarbageProxy(base)}
        for p in proxies.values():
            started.append(p.close)
        upstream = {"boss": lambda i: f"bossdb://{proxies['boss'].url}/lab/em/r{i}",
                    "dvid": lambda i: f"dvid://{proxies['dvid'].url}/{repo.root[:8]}/gray{i}",
                    "pc": lambda i: f"precomputed://{proxies['pc'].url}/raw{i}"}
        cfg = root / "relay.toml"
        cfg.write_text(
            f'[server]\nhost = "127.0.0.1"\nupstream_timeout = 30\nupstream_meta_seconds = 0\n'
            f'state_path = "{root / "relay.json"}"\n'
            f'[cache]\nmemory_bytes = "16 MiB"\ndisk_path = "{root / "cache"}"\n'
            f'disk_bytes = "64 MiB"\n'
            + "".join(f'[[channel]]\nname = "g/{u}{i}/c"\nupstream = "{upstream[u](i)}"\n'
                      for u in UPSTREAMS for i in range(CASES)))
        relay = start_relay(cfg, free_port())
        started.append(relay.stop)
        yield World(relay, proxies, proxies["pc"])
    finally:
        for stop in reversed(started):
            stop()


# -- what the relay answers ---------------------------------------------------------------------
def _cutout(world: World, channel: str) -> httpx.Response:
    return httpx.get(f"{world.relay.url}/v1/cutout/{channel}/0/0:40/0:30/0:20/",
                     headers={"Accept": "application/blosc"}, timeout=120)


def _cutout_data(res: httpx.Response) -> np.ndarray:
    assert res.status_code == 200, res.text
    return np.frombuffer(blosc.decompress(res.content), np.uint8).reshape(SHAPE)


def _info(world: World, channel: str) -> httpx.Response:
    return httpx.get(f"{world.relay.url}/precomputed/{channel}/info", timeout=120)


def _first_chunk(world: World, channel: str) -> tuple[str, tuple[slice, ...]]:
    """The precomputed dialect's first chunk of scale 0: its URL and where it lies (z, y, x)."""
    info = _info(world, channel)
    assert info.status_code == 200, info.text
    scale = info.json()["scales"][0]
    (cx, cy, cz), (sx, sy, sz) = scale["chunk_sizes"][0], scale["size"]
    x, y, z = min(cx, sx), min(cy, sy), min(cz, sz)
    assert scale["voxel_offset"] == [0, 0, 0]
    return (f"{world.relay.url}/precomputed/{channel}/{scale['key']}/0-{x}_0-{y}_0-{z}",
            (slice(0, z), slice(0, y), slice(0, x)))


def _bad_gateway(res: httpx.Response, channel: str) -> str:
    """The relay's answer is its 502 JSON error naming ``channel``; its message."""
    assert res.status_code == 502, (res.status_code, res.text[:500])
    doc = res.json()
    assert doc["status"] == 502 and doc["code"] == 5000, doc
    message = str(doc["message"])
    assert "internal error" not in message, message
    assert channel in message, f"the relay's error does not name {channel}: {message}"
    return message


@pytest.mark.parametrize("kind", RELAY_JSON)
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_metadata_garbage_is_a_502_naming_the_channel_and_not_kept(world: World, upstream: str,
                                                                   kind: str) -> None:
    # (before: a bossDB or DVID upstream's garbage was a 502 whose message named the
    # upstream's own channel or repo, "channel lab/em/r3: http://.../v1/collection/..." or
    # "repo info of 6c1f0e2a: ...", and not the relay's channel the client asked for)
    channel = world.channel(upstream)
    with world.proxies[upstream].answering(META[upstream], garbage(kind)):
        _bad_gateway(_cutout(world, channel), channel)       # the bossDB dialect
        _bad_gateway(_info(world, channel), channel)         # the precomputed dialect
    # the upstream answers well again: the channel opens and reads right (the failed open
    # was not kept)
    np.testing.assert_array_equal(_cutout_data(_cutout(world, channel)), DATA)
    info = _info(world, channel)  # (DVID's extents are whole blocks: 64 x 32 x 32)
    assert info.status_code == 200 and info.json()["scales"][0]["size"] >= [40, 30, 20], info.text


@pytest.mark.parametrize("kind", RELAY_CHUNK)
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_chunk_garbage_is_a_502_naming_the_channel_and_not_cached(world: World, upstream: str,
                                                                  kind: str) -> None:
    channel = world.channel(upstream)
    chunk, where = _first_chunk(world, channel)  # (the channel is open; no voxel read yet)
    with world.proxies[upstream].answering(CHUNK[upstream], garbage(kind)):
        for res in (_cutout(world, channel), httpx.get(chunk, timeout=120)):
            message = _bad_gateway(res, channel)
            assert res.headers.get("x-voxgate-error") == "corrupt-data", message
    # nothing of it was cached, in memory or on disk: the next reads are the upstream's data
    np.testing.assert_array_equal(_cutout_data(_cutout(world, channel)), DATA)
    res = httpx.get(chunk, timeout=120)
    assert res.status_code == 200, res.text
    want = np.zeros(tuple(s.stop for s in where), np.uint8)  # (a DVID chunk passes DATA's end)
    want[: SHAPE[0], : SHAPE[1], : SHAPE[2]] = DATA[where]
    np.testing.assert_array_equal(np.frombuffer(res.content, np.uint8).reshape(want.shape), want)


# -- the relay's own clients: an error, never zeros ---------------------------------------------
def _intern_read(world: World, channel: str) -> np.ndarray:
    from intern.remote.boss import BossRemote

    c, e, ch = channel.split("/")
    rmt = BossRemote({"protocol": "http", "host": world.relay.url.split("://")[1],
                      "token": "public"})
    return np.asarray(rmt.get_cutout(rmt.get_channel(ch, c, e), 0, [0, 40], [0, 30], [0, 20]))


def _cloudvolume_read(world: World, channel: str) -> np.ndarray:
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"precomputed://{world.relay.url}/precomputed/{channel}", mip=0,
                     progress=False, fill_missing=False, bounded=True, cache=False)
    return np.asarray(cv[0:40, 0:30, 0:20])[..., 0].transpose(2, 1, 0)


#: intern with each upstream; CloudVolume (which retries a 502 with backoff for ~15 s: what the
#: relay answers does not depend on the upstream) with two
#: (CloudVolume retries a 502 with backoff for ~20 s: one case of it)
CLIENT_CASES = [(u, "intern", w) for u in UPSTREAMS for w in ("metadata", "chunk")] + [
    ("pc", "cloudvolume", "chunk")]


@pytest.mark.parametrize(("upstream", "client", "what"), CLIENT_CASES)
def test_clients_of_the_relay_see_an_error_not_zeros(world: World, upstream: str, client: str,
                                                     what: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from requests import HTTPError

    read = _intern_read if client == "intern" else _cloudvolume_read
    if client == "cloudvolume":
        # CloudFiles retries each failed GET 7 times, waiting 0.5 * 2^n s at random between
        # tries (~15-20 s in all): the same 7 tries here, without the waits (each one is a
        # request to the relay, which answers 502 to every one)
        import tenacity
        from cloudfiles.interfaces import HttpInterface

        monkeypatch.setattr(HttpInterface.get_file.retry, "wait", tenacity.wait_none())
    channel = world.channel(upstream)
    pattern, kind = (META[upstream], "html") if what == "metadata" else (CHUNK[upstream],
                                                                         "truncated")
    if what == "chunk":
        assert _info(world, channel).status_code == 200  # opened: only the voxels are garbage
    with world.proxies[upstream].answering(pattern, garbage(kind)):
        with pytest.raises(Exception) as info:
            got = read(world, channel)
            pytest.fail(f"{client} read {np.count_nonzero(got)} nonzero voxels of {got.size}")
    if client == "intern":
        assert isinstance(info.value, HTTPError), repr(info.value)
        assert "502" in str(info.value), str(info.value)
    else:
        assert "502" in str(info.value) or "Bad Gateway" in str(info.value), repr(info.value)
    np.testing.assert_array_equal(read(world, channel), DATA)


# -- tensorstore:// specs over an http kvstore --------------------------------------------------
@pytest.fixture(scope="module")
def ts_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GarbageProxy]:
    """A zarr v3 array, an N5 dataset and a precomputed layer behind the proxy."""
    root = tmp_path_factory.mktemp("ts_garbage")
    for url in (f"zarr://{root}/a.zarr", f"n5://{root}/a.n5",
                f"precomputed://file://{root}/raw"):
        voxgate.create(url, shape=SHAPE, chunks=(16, 16, 16), dtype="uint8",
                       voxel_size=(40, 8, 8))[:] = DATA
    with serve_directory(root) as base:
        proxy = GarbageProxy(base)
        yield proxy
        proxy.close()


#: driver: (kvstore path, its metadata file, its first chunk)
TS = {"zarr3": ("a.zarr/0/", "/a.zarr/0/zarr.json", "/a.zarr/0/c/0/0/0"),
      "n5": ("a.n5/s0/", "/a.n5/s0/attributes.json", "/a.n5/s0/0/0/0"),
      "neuroglancer_precomputed": ("raw/", "/raw/info", "/raw/8_8_40/0-16_0-16_0-16")}
SECRET = "s3cr3t-h12-token"


def _spec(proxy: GarbageProxy, driver: str, credential: str) -> dict[str, Any]:
    path = TS[driver][0]
    kvstore: dict[str, Any] = {"driver": "http", "base_url": f"{proxy.url}/{path}"}
    if credential == "header":
        kvstore["headers"] = [f"Authorization: Bearer {SECRET}"]
    elif credential == "query":
        kvstore["base_url"] += f"?token={SECRET}"
    return {"driver": driver, "kvstore": kvstore}


def _ts_refused(proxy: GarbageProxy, spec: dict[str, Any], pattern: str,
                kind: str) -> VoxgateError:
    with proxy.answering(re.escape(pattern) + r"(\?.*)?$", garbage(kind)):
        with pytest.raises(VoxgateError) as info:
            voxgate.open(spec).read()
    exc = info.value
    assert isinstance(exc, CorruptChunkError), repr(exc)
    assert proxy.address in str(exc), f"the message does not name the server: {exc}"
    assert SECRET not in str(exc) and SECRET not in repr(exc.__cause__), str(exc)
    return exc


@pytest.mark.parametrize("kind", TS_JSON)
@pytest.mark.parametrize("driver", sorted(TS))
def test_tensorstore_spec_metadata_garbage_names_the_url(ts_files: GarbageProxy, driver: str,
                                                         kind: str) -> None:
    credential = {"html": "header", "truncated": "query"}.get(kind, "none")
    exc = _ts_refused(ts_files, _spec(ts_files, driver, credential), TS[driver][1], kind)
    assert TS[driver][1] in str(exc), str(exc)  # the file that was garbage


@pytest.mark.parametrize("kind", TS_CHUNK)
@pytest.mark.parametrize("driver", sorted(TS))
def test_tensorstore_spec_chunk_garbage_names_the_url(ts_files: GarbageProxy, driver: str,
                                                      kind: str) -> None:
    credential = {"html": "header", "truncated": "query"}.get(kind, "none")
    _ts_refused(ts_files, _spec(ts_files, driver, credential), TS[driver][2], kind)
    # and the same spec reads the data once the server answers well
    np.testing.assert_array_equal(voxgate.open(_spec(ts_files, driver, credential)).read(), DATA)


# -- bossDB's downsample status -----------------------------------------------------------------
#: z, y, x: a relay channel over a zarr pyramid at an odd offset whose level 1 halves y and x and
#: level 2 all three axes (voxgate's default for these voxels), named "offset" by the relay:
#: bossDB's rule for its experiment ("anisotropic": x and y halve) gives level 2 a z of 16 nm
ODD_SHAPE, ODD_OFFSET, ODD_VOXEL = (21, 45, 51), (3, 7, 41), (16, 8, 8)
STATUS = r"/v1/downsample/lab/em/odd/?$"


@dataclass
class Pyramid:
    proxy: GarbageProxy
    url: str  # bossdb:// through the proxy
    levels: list[tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]]  # the zarr's


def _levels(vol: voxgate.Volume) -> list[tuple[tuple[int, ...], tuple[int, ...],
                                              tuple[float, ...]]]:
    return [(tuple(int(v) for v in s.offset), tuple(int(v) for v in s.shape),
             tuple(float(v) for v in s.voxel_size.zyx())) for s in vol.scales]


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pyramid]:
    root = tmp_path_factory.mktemp("odd_pyramid")
    vol = voxgate.create(f"zarr://{root}/odd.zarr", shape=ODD_SHAPE, chunks=(8, 16, 16),
                         dtype="uint8", voxel_size=ODD_VOXEL, offset=ODD_OFFSET, num_scales=3)
    vol[:] = (np.arange(np.prod(ODD_SHAPE)) % 251).astype(np.uint8).reshape(ODD_SHAPE)
    voxgate.downsample(vol)
    cfg = root / "relay.toml"
    cfg.write_text(f'[server]\nhost = "127.0.0.1"\nstate_path = "{root / "state.json"}"\n'
                   f'[[channel]]\nname = "lab/em/odd"\nupstream = "zarr://{root}/odd.zarr"\n')
    relay = start_relay(cfg, free_port())
    proxy = GarbageProxy(relay.url)
    try:
        yield Pyramid(proxy, f"bossdb://{proxy.url}/lab/em/odd", _levels(vol))
    finally:
        proxy.close()
        relay.stop()


def test_the_status_gives_the_relays_own_levels(pyramid: Pyramid) -> None:
    vol = voxgate.open(pyramid.url)
    assert _levels(vol) == pyramid.levels
    assert pyramid.levels[2][2] == (32.0, 32.0, 32.0)  # (what the rule would not give)
    assert vol.remote.pyramid_anchor == "offset"


@pytest.mark.parametrize("kind", JSON_GARBAGE)
def test_a_garbage_downsample_status_is_an_error_naming_it(pyramid: Pyramid, kind: str) -> None:
    # (before: opened without a word, with bossDB's rule: level 2 of 21 x 12 x 13 voxels of
    # 16 x 32 x 32 nm where the relay serves 11 x 12 x 13 of 32 nm, anchored at "origin")
    with pyramid.proxy.answering(STATUS, garbage(kind)):
        with pytest.raises(CorruptChunkError) as info:
            voxgate.open(pyramid.url)
    message = str(info.value)
    assert f"{pyramid.proxy.url}/v1/downsample/lab/em/odd/" in message, message


def test_a_status_without_voxel_sizes_or_with_an_unknown_anchor_is_refused(
        pyramid: Pyramid) -> None:
    def anchor(status: int, headers: dict[str, str], body: bytes
               ) -> tuple[int, dict[str, str], bytes]:
        return status, headers, body.replace(b'"offset"', b'"middle"')

    with pyramid.proxy.answering(STATUS, anchor):
        with pytest.raises(CorruptChunkError, match="pyramid_anchor is 'middle'"):
            voxgate.open(pyramid.url)


@pytest.mark.parametrize("status", [404, 403])
def test_a_server_without_a_downsample_status_follows_bossdbs_rule(pyramid: Pyramid,
                                                                   status: int) -> None:
    # a bossDB server that does not answer it: bossDB's hierarchy rule, on the grid through 0
    with pyramid.proxy.answering(STATUS, refused(status)):
        vol = voxgate.open(pyramid.url)
    z0, y0, x0 = ODD_OFFSET
    z1, y1, x1 = (a + n for a, n in zip(ODD_OFFSET, ODD_SHAPE, strict=True))
    rule = [((z0, y0 // 2**k, x0 // 2**k),
             (z1 - z0, -(-y1 // 2**k) - y0 // 2**k, -(-x1 // 2**k) - x0 // 2**k),
             (16.0, 8.0 * 2**k, 8.0 * 2**k)) for k in range(3)]
    assert _levels(vol) == rule
    assert vol.remote.pyramid_anchor == "origin"


def test_a_relay_over_a_bossdb_upstream_with_a_garbage_status_answers_502(
        pyramid: Pyramid, tmp_path: Path) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f'[server]\nhost = "127.0.0.1"\nupstream_meta_seconds = 0\n'
                   f'state_path = "{tmp_path / "state.json"}"\n'
                   f'[[channel]]\nname = "o/p/q"\nupstream = "{pyramid.url}"\n')
    relay = start_relay(cfg, free_port())
    try:
        # (the relay opens its channel for the status it serves, as for a cutout)
        url = f"{relay.url}/v1/downsample/o/p/q/"
        with pyramid.proxy.answering(STATUS, garbage("html")):
            message = _bad_gateway(httpx.get(url, timeout=120), "o/p/q")
        assert "/v1/downsample/lab/em/odd/" in message, message
        res = httpx.get(url, timeout=120)  # the failed open was not kept
        assert res.status_code == 200, res.text
        assert res.json()["voxel_size"]["2"] == [32.0, 32.0, 32.0]
    finally:
        relay.stop()
