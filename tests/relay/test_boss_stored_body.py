"""bossdb:// writes of incompressible data: the client sends a stored blosc buffer (clevel 0,
its header then the array's bytes, from views of the array); the relay accepts it, and what it
wrote reads back exactly through intern, through voxgate and from the upstream directly.  A
write racing reads of one cell gives each read the old or the new data, never a mix, and the
first read after the write returns sees it."""

from __future__ import annotations

import struct
import threading

import blosc
import numpy as np
from intern.remote.boss import BossRemote

import voxgate
from voxgate.remotes.boss.remote import _pack

from .conftest import RW, SHAPE, RelayProcess, Upstreams


def test_stored_body_is_a_blosc_buffer_bossdb_reads() -> None:
    part = np.random.default_rng(1).integers(1, 200, (16, 300, 260)).astype(np.uint8)
    pieces, length = _pack(part)
    body = b"".join(bytes(p) for p in pieces)
    assert len(body) == length == part.nbytes + 16
    assert body[2] & 0x02  # stored as it is (blosc's MEMCPYED flag)
    assert struct.unpack_from("<I", body, 4)[0] == part.nbytes
    assert struct.unpack_from("<I", body, 12)[0] == len(body)
    # python-blosc (what bossDB decodes a POST with) reads it back exactly
    np.testing.assert_array_equal(np.frombuffer(blosc.decompress(body), np.uint8), part.ravel())
    # compressible data is still compressed
    smooth = np.zeros((16, 300, 260), np.uint64)
    pieces, length = _pack(smooth)
    assert len(pieces) == 1 and length < smooth.nbytes // 10


def test_incompressible_write_reads_back_everywhere(
        own_relay: tuple[RelayProcess, Upstreams]) -> None:
    relay, ups = own_relay
    url = f"bossdb://http://127.0.0.1:{relay.port}/lab/em/raw"
    vol = voxgate.open(url, mode="r+", token=RW)
    new = np.random.default_rng(2).integers(1, 200, SHAPE).astype(np.uint8)
    vol[:] = new  # blocks of 16 z planes: each well over the sample size, sent stored
    np.testing.assert_array_equal(vol.read(), new)
    rmt = BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": RW})
    chan = rmt.get_channel("raw", "lab", "em")
    z, y, x = SHAPE
    np.testing.assert_array_equal(rmt.get_cutout(chan, 0, [0, x], [0, y], [0, z]), new)
    direct = voxgate.open(f"precomputed://file://{ups.root}/raw")
    np.testing.assert_array_equal(direct.read(), new)
    # and intern's own upload (blosc, its typesize) of the same channel is still accepted
    back = new[::-1].copy()
    rmt.create_cutout(chan, 0, [0, x], [0, y], [0, z], back)
    np.testing.assert_array_equal(vol.read(), back)


def test_write_racing_reads_is_old_or_new_never_mixed(
        own_relay: tuple[RelayProcess, Upstreams]) -> None:
    relay, _ = own_relay
    url = f"bossdb://http://127.0.0.1:{relay.port}/lab/em/raw"
    vol = voxgate.open(url, mode="r+", token=RW)
    rng = np.random.default_rng(3)
    versions = [rng.integers(1, 200, SHAPE).astype(np.uint8) for _ in range(2)]
    vol[:] = versions[0]
    cell = (slice(0, 8), slice(0, 32), slice(0, 32))  # inside one upstream chunk and cell
    wanted = [v[cell] for v in versions]
    reader = voxgate.open(url, token=RW)
    done = threading.Event()
    seen: list[np.ndarray] = []

    def read() -> None:
        while not done.is_set():
            seen.append(reader[0:8, 0:32, 0:32].read())

    threads = [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for k in (1, 0, 1):
            vol[:] = versions[k]
            # the first read after the write returns sees it
            np.testing.assert_array_equal(reader[0:8, 0:32, 0:32].read(), wanted[k])
    finally:
        done.set()
        for t in threads:
            t.join()
    assert seen
    for got in seen:
        assert any(np.array_equal(got, w) for w in wanted), "a read mixed old and new data"
