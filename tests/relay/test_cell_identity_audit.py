"""Two defects in what a relay's cache cells are (found by an audit of their identity).

1. Channels of one upstream configured with different tokens shared cells: the cache identity
   left the configured ``token`` option out (only a forwarded client's token was in it).  A
   channel whose token may read a dataset warmed the cache, and a channel whose token may not
   (another user's) was served those cells: a permission leak.  Now the credential's digest is
   part of every key (never the token itself: not in keys, logs or the disk tier's files),
   channels with the same token still share cells, and a write through any view of the
   upstream drops (and detaches the fetches of) every other view's cells of the region.
2. Over a DVID upstream whose offset is not a multiple of its 64^3 blocks, cells began at the
   offset while DVID's blocks lie on the grid through 0: every cell straddled up to 8 blocks,
   and a cold read made DVID read each block several times.  Cells now lie on the upstream's
   own grid (``Remote.grid_bounds``); the precomputed dialect still serves chunks from the
   ``voxel_offset``, as the format requires, each read from the cells it covers.

The upstream is the DVID test server behind a proxy on 127.0.0.1 that checks the token of
every request (one token may read metadata but no voxels) and counts the voxel requests and
the DVID blocks each one makes the server read.
"""

from __future__ import annotations

import http.server
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest

import voxgate
from voxgate.geometry import Box
from voxgate.relay.config import CacheConfig, ChannelConfig, RelayConfig
from voxgate.remotes.dvid import DVIDRepo
from voxgate.testing.dvid import DVIDServerProcess, start_server

from .conftest import RelayProcess, free_port, start_relay
from .test_consistency import InProcessRelay, check_read_your_writes

BLOCK = 64  # DVID's default block size
OFF = (3, 5, 7)  # z, y, x: on no block line
SHAPE = (70, 140, 150)  # over 2 x 3 x 3 blocks at OFF
#: the tokens (made up; searched for in the relay's log and disk tier afterwards)
ALPHA, BETA, DELTA = "tok-alpha-7f3e91", "tok-beta-22c5d0", "tok-delta-9ab4e1"
_RAW = re.compile(r"/raw/0_1_2/(\d+)_(\d+)_(\d+)/(-?\d+)_(-?\d+)_(-?\d+)")


# -- the upstream: DVID behind a proxy that checks tokens and counts ----------------------------
@dataclass
class Tally:
    requests: int = 0
    blocks: int = 0  # DVID blocks the voxel GETs touch (the server reads each)
    bytes: int = 0
    refused: int = 0  # voxel requests answered 403


@dataclass
class Gate:
    """The proxy's policy and counts: tokens in ``refused`` may read metadata but no voxels
    (403, as DVID behind an authorizing front answers); voxel GETs are counted per token."""

    refused: set[str] = field(default_factory=set)
    tallies: dict[str, Tally] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tally(self, token: str) -> Tally:
        with self.lock:
            return self.tallies.setdefault(token, Tally())

    def reset(self) -> None:
        with self.lock:
            self.tallies.clear()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    gate: Gate
    target: httpx.Client


class _Forward(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _relay(self) -> None:
        gate = self.server.gate
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        path = urllib.parse.urlsplit(self.path).path
        voxels = _RAW.search(path)
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if voxels and token in gate.refused:
            t = gate.tally(token)
            with gate.lock:
                t.refused += 1
            self._answer(403, b"permission denied: this token may not read voxels")
            return
        res = self.server.target.request(self.command, self.path, content=body or None,
                                         headers={"Authorization": auth} if auth else {})
        if voxels and self.command == "GET":
            sx, sy, sz, ox, oy, oz = (int(v) for v in voxels.groups())
            touched = 1
            for o, s in ((oz, sz), (oy, sy), (ox, sx)):
                touched *= (o + s - 1) // BLOCK - o // BLOCK + 1
            t = gate.tally(token)
            with gate.lock:
                t.requests += 1
                t.blocks += touched
                t.bytes += len(res.content)
        self._answer(res.status_code, res.content, res.headers.get("content-type"))

    def _answer(self, status: int, body: bytes, media: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media or "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_DELETE = do_PUT = _relay


@dataclass
class World:
    dvid: DVIDServerProcess
    proxy: _Server
    gate: Gate
    seg_url: str  # through the proxy
    gray_url: str
    seg: np.ndarray
    gray: np.ndarray
    tmp: Path

    @property
    def bounds(self) -> Box:
        return Box(OFF, tuple(o + s for o, s in zip(OFF, SHAPE, strict=True)))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = tmp_path_factory.mktemp("cell-identity")
    server = start_server(log=d / "dvid.log")
    proxy: _Server | None = None
    try:
        repo = DVIDRepo.create(server.url, alias="cell-identity")
        rng = np.random.default_rng(3)
        seg = rng.integers(1, 2**40, SHAPE, dtype=np.uint64)
        gray = rng.integers(1, 255, SHAPE, dtype=np.uint8)
        lm = voxgate.create(repo.url("seg"), shape=SHAPE, chunks=(BLOCK,) * 3, dtype="uint64",
                            voxel_size=(8, 8, 8), offset=OFF, kind="segmentation")
        lm[...] = seg
        img = voxgate.create(repo.url("gray"), shape=SHAPE, chunks=(BLOCK,) * 3,
                             dtype="uint8", voxel_size=(8, 8, 8), offset=OFF)
        img[...] = gray
        gate = Gate(refused={BETA})
        proxy = _Server(("127.0.0.1", free_port()), _Forward)
        proxy.gate = gate
        proxy.target = httpx.Client(base_url=server.url, timeout=60)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        front = f"http://127.0.0.1:{proxy.server_address[1]}"
        yield World(server, proxy, gate, f"dvid://{front}/{repo.root}/seg",
                    f"dvid://{front}/{repo.root}/gray", seg, gray, d)
    finally:
        if proxy is not None:
            proxy.shutdown()
            proxy.server_close()
            proxy.target.close()
        server.stop()


# -- clients ------------------------------------------------------------------------------------
def _said(res: httpx.Response) -> str:
    media = res.headers.get("content-type", "")
    return f"{res.status_code} {media}: " + (res.text[:300] if "json" in media or
                                             "text" in media else f"{len(res.content)} bytes")


def _cutout(url: str, chan: str, box: Box, dtype: Any = np.uint64, *,
            status: int = 200) -> np.ndarray | None:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    res = httpx.get(f"{url}/v1/cutout/fly/em/{chan}/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/",
                    headers={"Authorization": "Token any"}, timeout=120)
    assert res.status_code == status, _said(res)
    if status != 200:
        return None
    return np.frombuffer(blosc.decompress(res.content), dtype).reshape(tuple(box.shape))


def _post(url: str, chan: str, box: Box, arr: np.ndarray) -> None:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    res = httpx.post(f"{url}/v1/cutout/fly/em/{chan}/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/",
                     content=blosc.compress(np.ascontiguousarray(arr).tobytes(),
                                            typesize=arr.dtype.itemsize),
                     headers={"Authorization": "Token any",
                              "Content-Type": "application/blosc"}, timeout=120)
    assert res.status_code == 201, _said(res)


def _chunk(url: str, chan: str, box: Box, *, status: int = 200,
           etag: str | None = None) -> httpx.Response:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    headers = {"Authorization": "Token any", "Accept-Encoding": "identity"}
    if etag:
        headers["If-None-Match"] = etag
    res = httpx.get(f"{url}/precomputed/fly/em/{chan}/s0/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}",
                    headers=headers, timeout=120)
    assert res.status_code == status, _said(res)
    return res


def _toml_channels(channels: dict[str, tuple[str, str]]) -> str:
    return "".join(f'[[channel]]\nname = "fly/em/{name}"\nupstream = "{url}"\n'
                   f'options = {{ token = "{token}" }}\n'
                   for name, (url, token) in channels.items())


# -- 1. the configured credential is part of the cells' identity -------------------------------
def test_a_token_that_may_not_read_is_never_served_anothers_cells(world: World) -> None:
    d = world.tmp / "leak"
    d.mkdir()
    cfg = d / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
upstream_timeout = 20
upstream_meta_seconds = 0
state_path = "{d / 'state.json'}"
[cache]
memory_bytes = "64 MiB"
disk_path = "{d / 'disk'}"
disk_bytes = "1 GiB"
""" + _toml_channels({"alpha": (world.seg_url, ALPHA), "beta": (world.seg_url, BETA),
                      "alpha2": (world.seg_url, ALPHA), "delta": (world.seg_url, DELTA)}))
    relay: RelayProcess = start_relay(cfg, free_port())
    try:
        world.gate.reset()
        box = Box((10, 20, 30), (60, 120, 140))
        want = world.seg[box.slices(OFF)]
        np.testing.assert_array_equal(_cutout(relay.url, "alpha", box), want)  # warms
        chunk = Box(OFF, (OFF[0] + 64, OFF[1] + 64, OFF[2] + 64))
        warm = _chunk(relay.url, "alpha", chunk)
        assert world.gate.tally(ALPHA).requests > 0
        # the other token may not read voxels: refused, though alpha's cells hold them (they
        # were served to it, 200, before)
        _cutout(relay.url, "beta", box, status=403)
        _cutout(relay.url, "beta", Box((20, 30, 40), (30, 40, 50)), status=403)
        _chunk(relay.url, "beta", chunk, status=403)
        # nor is alpha's response confirmed current to it (a 304 lets an HTTP cache in front,
        # which keys by URL, hand it the body it holds)
        _chunk(relay.url, "beta", chunk, status=403, etag=warm.headers["etag"])
        assert world.gate.tally(BETA).refused >= 3  # each asked the upstream, and was refused
        # the same token through another channel shares alpha's cells: no voxel request
        before = world.gate.tally(ALPHA).requests
        np.testing.assert_array_equal(_cutout(relay.url, "alpha2", box), want)
        assert world.gate.tally(ALPHA).requests == before
        # another token that may read gets its own cells, from the upstream
        np.testing.assert_array_equal(_cutout(relay.url, "delta", box), want)
        assert world.gate.tally(DELTA).requests > 0

        # a write through alpha is read through alpha2 (same cells) and delta (its own cells,
        # read before the write: dropped by it)
        part = Box((30, 40, 50), (50, 100, 90))
        new = np.full(tuple(part.shape), 2**50 + 9, np.uint64)
        _post(relay.url, "alpha", part, new)
        want = want.copy()
        want[part.slices(box.start)] = new
        for chan in ("alpha2", "delta", "alpha"):
            np.testing.assert_array_equal(_cutout(relay.url, chan, box), want, err_msg=chan)
        _cutout(relay.url, "beta", box, status=403)
        world.seg[part.slices(OFF)] = new  # (what the upstream holds now)
    finally:
        relay.stop()
    # the tokens are nowhere in what the relay wrote: its log, state, disk tier (names, index,
    # entries)
    for path in [relay.log, *d.rglob("*")]:
        if path.is_file() and path != cfg:
            data = path.read_bytes()
            for token in (ALPHA, BETA, DELTA):
                assert token.encode() not in data, f"{token} in {path}"
                assert token not in path.name


def _in_process(world: World, tmp: Path, channels: dict[str, tuple[str, str]],
                *, disk: bool = False) -> InProcessRelay:
    tmp.mkdir(parents=True, exist_ok=True)
    return InProcessRelay(RelayConfig(
        upstream_timeout=120.0, upstream_meta_seconds=0, state_path=tmp / "state.json",
        cache=CacheConfig(memory_bytes=2**26, disk_path=tmp / "disk" if disk else None,
                          disk_bytes=2**30),
        channels=[ChannelConfig("fly", "em", name, url, {"token": token})
                  for name, (url, token) in channels.items()]))


@pytest.mark.parametrize("writer", ["alpha", "delta"])
@pytest.mark.parametrize("dialect", ["boss", "precomputed"])
def test_a_write_through_one_token_detaches_anothers_fetch_in_flight(
        world: World, tmp_path: Path, dialect: str, writer: str) -> None:
    """A read through delta's view is in flight upstream (holding the old voxels) when a write
    through alpha (another token: other cells) is acknowledged; a read through delta that
    begins afterwards must not join that fetch, nor find what it cached.  And the same with
    the write through delta itself, on its cells on DVID's block grid (below the offset)."""
    relay = _in_process(world, tmp_path, {"alpha": (world.gray_url, ALPHA),
                                          "delta": (world.gray_url, DELTA)},
                        disk=False)  # (memory only: the sibling rule alone keeps it fresh)
    try:
        relay.relay.catalog.remote(relay.relay.catalog.channel("fly", "em", "alpha"))
        gate = relay.gate("fly", "em", "delta")
        # a precomputed chunk (from the voxel_offset) and the cells it covers
        box = Box(OFF, (OFF[0] + 64, OFF[1] + 128, OFF[2] + 128))
        part = Box((20, 40, 60), (40, 100, 120))
        # a value of its own per case: the upstream is the module's, so a value an earlier
        # case wrote there would make a stale read look fresh
        value = {"alpha": 201, "delta": 211}[writer] + (0 if dialect == "boss" else 20)
        new = np.full(tuple(part.shape), value, np.uint8)
        assert (world.gray[part.slices(OFF)] != value).any()  # (a stale read would show)
        expected = world.gray[box.slices(OFF)].copy()
        expected[part.slices(box.start)] = new

        def read() -> np.ndarray:
            if dialect == "boss":
                out = _cutout(relay.url, "delta", box, np.uint8)
                assert out is not None
                return out
            body = _chunk(relay.url, "delta", box).content
            return np.frombuffer(body, np.uint8).reshape(tuple(box.shape))

        check_read_your_writes(gate, read, lambda: _post(relay.url, writer, part, new),
                               expected)
        np.testing.assert_array_equal(read(), expected)  # and what was cached is new
        world.gray[part.slices(OFF)] = new
    finally:
        relay.stop()


# -- 2. cells on the upstream's block grid ------------------------------------------------------
def _blocks_of(bounds: Box) -> int:
    n = 1
    for a, b in zip(bounds.start, bounds.stop, strict=True):
        n *= (b - 1) // BLOCK - a // BLOCK + 1
    return n


def _sweep(url: str, chan: str) -> list[Box]:
    """Every chunk of scale 0 the precomputed info announces, read as Neuroglancer reads them."""
    info = httpx.get(f"{url}/precomputed/fly/em/{chan}/info",
                     headers={"Authorization": "Token any"}, timeout=60).json()
    sc = info["scales"][0]
    (ox, oy, oz), (sx, sy, sz), (cx, cy, cz) = sc["voxel_offset"], sc["size"], \
        sc["chunk_sizes"][0]
    boxes = []
    for z in range(oz, oz + sz, cz):
        for y in range(oy, oy + sy, cy):
            for x in range(ox, ox + sx, cx):
                boxes.append(Box((z, y, x), (min(z + cz, oz + sz), min(y + cy, oy + sy),
                                             min(x + cx, ox + sx))))
    return boxes


@pytest.mark.parametrize("what", ["seg-chunks", "gray-chunks", "seg-cutout", "seg-small",
                                  "seg-stats"])
def test_cold_reads_read_each_dvid_block_once(world: World, tmp_path: Path, what: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A cold read of a DVID volume at an offset on no block line makes DVID read each block
    it needs once (cells from the offset straddled up to 8 blocks each, and DVID read each
    block once per cell touching it), and serves the same voxels; the precomputed chunks are
    still those of the format's grid from the voxel_offset."""
    chan, dtype, data = (("gray", np.uint8, world.gray) if what.startswith("gray")
                         else ("seg", np.uint64, world.seg))
    url = world.gray_url if chan == "gray" else world.seg_url
    relay = _in_process(world, tmp_path, {chan: (url, DELTA)})
    try:
        world.gate.reset()
        if what.endswith("chunks"):
            boxes = _sweep(relay.url, chan)
            assert boxes[0].start == OFF  # (the format's grid: from the voxel_offset)
            for box in boxes:
                body = _chunk(relay.url, chan, box).content
                if chan == "gray":
                    got = np.frombuffer(body, np.uint8).reshape(tuple(box.shape))
                    np.testing.assert_array_equal(got, data[box.slices(OFF)])
            need = _blocks_of(world.bounds)
        elif what == "seg-cutout":
            box = world.bounds
            np.testing.assert_array_equal(_cutout(relay.url, chan, box, dtype), data)
            need = _blocks_of(box)
        elif what == "seg-stats":
            # a bounding box: the label statistics' scan of the whole channel, read from the
            # upstream in blocks that lie on the cells (it planned them from the offset)
            import voxgate.relay.stats

            monkeypatch.setattr(voxgate.relay.stats, "SCAN_BYTES", 2**21)  # one cell a block
            some = int(data[data > 0][0])
            res = httpx.get(f"{relay.url}/v1/boundingbox/fly/em/{chan}/0/{some}/",
                            headers={"Authorization": "Token any"}, timeout=60)
            assert res.status_code == 200, res.text
            need = _blocks_of(world.bounds)
        else:
            box = Box((10, 20, 30), (42, 52, 62))  # inside one block
            np.testing.assert_array_equal(_cutout(relay.url, chan, box, dtype),
                                          data[box.slices(OFF)])
            need = _blocks_of(box)
        t = world.gate.tally(DELTA)
        print(f"\n{what}: {t.requests} voxel requests, {t.blocks} DVID blocks read "
              f"({need} needed), {t.bytes} bytes")
        assert t.blocks == need
        if what.endswith("chunks"):
            # the served grid is one tensorstore reads (it checks each chunk's bounds)
            import tensorstore as ts

            store = ts.open({"driver": "neuroglancer_precomputed", "scale_index": 0,
                             "kvstore": {"driver": "http", "base_url":
                                         f"{relay.url}/precomputed/fly/em/{chan}/"}},
                            read=True).result()
            assert list(store.domain.origin[:3]) == list(OFF[::-1])
            got = np.asarray(store.read().result())[..., 0].transpose(2, 1, 0)
            np.testing.assert_array_equal(got, data)
    finally:
        relay.stop()
