"""Where the upstream metadata refresh meets the worker processes of ``voxgate serve --workers
N`` and their shared disk tier (docs/relay.md, "Changes made outside the relay" and "Several
worker processes").

Two relays built in this process with ``workers = 2`` and one state file, generations
directory and disk tier are two workers of one relay, each asked in turn (the kernel would
pick one at random): worker A sees the upstream's new metadata (its background check, run
here on the test's thread), worker B has not read it again yet."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import blosc
import httpx
import numpy as np
import pytest

import voxgate
from voxgate.geometry import Box
from voxgate.relay.config import CacheConfig, ChannelConfig, RelayConfig
from voxgate.relay.state import Relay

from .test_consistency import InProcessRelay

OLD = (16, 64, 64)
#: two cells wide in the new grid (cells of 16x64x1024), where the old volume was one cell
NEW = (16, 64, 1100)
CHUNKS = (16, 32, 32)


def _config(d: Path, url: str) -> RelayConfig:
    # (the metadata is read again only when the test runs worker A's check)
    return RelayConfig(upstream_timeout=60.0, state_path=d / "state.json", workers=2,
                       upstream_meta_seconds=3600.0,
                       cache=CacheConfig(memory_bytes=2**26, disk_path=d / "cache",
                                         disk_bytes=2**30),
                       channels=[ChannelConfig("c", "e", "img", url)])


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[InProcessRelay, InProcessRelay, str]]:
    url = f"zarr://{tmp_path}/img.zarr"
    voxgate.create(url, shape=OLD, chunks=CHUNKS, dtype="uint8", voxel_size=(8, 8, 8))[:] = 7
    a = InProcessRelay(_config(tmp_path, url))
    try:
        b = InProcessRelay(_config(tmp_path, url))
        try:
            yield a, b, url
        finally:
            b.stop()
    finally:
        a.stop()


def _cutout(r: InProcessRelay, box: Box) -> httpx.Response:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return httpx.get(f"{r.url}/v1/cutout/c/e/img/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/", timeout=60,
                     headers={"Accept": "application/blosc"})


def _array(res: httpx.Response, box: Box) -> np.ndarray:
    assert res.status_code == 200, res.text
    raw = blosc.decompress(res.content)
    assert len(raw) == box.size, f"{len(raw)} bytes for a region of {box.size} voxels"
    return np.frombuffer(raw, np.uint8).reshape(tuple(box.shape))


def _size(r: InProcessRelay) -> list[int]:
    res = httpx.get(f"{r.url}/precomputed/c/e/img/info", timeout=60)
    assert res.status_code == 200, res.text
    return list(res.json()["scales"][0]["size"])


def _remake(url: str, path: Path) -> np.ndarray:
    """The upstream made again under its URL, wider, with other data."""
    new = np.random.default_rng(3).integers(0, 255, NEW, dtype=np.uint8)
    shutil.rmtree(path)
    voxgate.create(url, shape=NEW, chunks=CHUNKS, dtype="uint8", voxel_size=(8, 8, 8))[:] = new
    return new


def _a_sees_the_change(a: InProcessRelay) -> None:
    """Worker A's background check of the channel's metadata, run to its end."""
    relay: Relay = a.relay
    entry = relay.catalog.channel("c", "e", "img")
    opened = relay.catalog.open_remotes(entry)[0]
    relay.catalog._check_meta(entry, opened, relay.upstream_meta_changed)
    assert relay.catalog.open_remotes(entry) == []  # (it did see it)


def test_a_metadata_change_one_worker_saw_is_served_by_every_worker(
        workers: tuple[InProcessRelay, InProcessRelay, str], tmp_path: Path) -> None:
    """Once worker A has seen the upstream's new metadata (and bumped the generation), worker
    B's precomputed info, cutouts and ETags are the new volume's too, not its own old view
    until its own check comes round (upstream_meta_seconds later)."""
    a, b, url = workers
    old_box = Box((0, 0, 0), OLD)
    for r in (a, b):
        assert _size(r) == [64, 64, 16]
        assert (_array(_cutout(r, old_box), old_box) == 7).all()
    etag_before = _cutout(b, old_box).headers["etag"]
    new = _remake(url, tmp_path / "img.zarr")
    _a_sees_the_change(a)

    assert _size(b) == [NEW[2], NEW[1], NEW[0]]
    whole = Box((0, 0, 0), NEW)
    for r in (b, a):
        np.testing.assert_array_equal(_array(_cutout(r, whole), whole), new)
    res = _cutout(b, old_box)
    np.testing.assert_array_equal(_array(res, old_box), new[old_box.slices()])
    assert res.headers["etag"] != etag_before


def test_a_cell_a_worker_read_under_the_old_metadata_is_never_served_under_the_new(
        workers: tuple[InProcessRelay, InProcessRelay, str], tmp_path: Path) -> None:
    """A request on worker B that took the channel's Remote before worker A saw the change
    reads with the old metadata (the old grid and bounds) after the change's generation bump,
    so it may store its cell in the shared disk tier; worker A, on the new metadata, must never
    take that cell for a cell of its own grid (a region of the wrong shape, or bytes of it
    served as another region), nor answer the same request under the same ETag."""
    a, b, url = workers
    old_box = Box((0, 0, 0), OLD)
    for r in (a, b):
        assert (_array(_cutout(r, old_box), old_box) == 7).all()
    rb: Relay = b.relay
    entry_b = rb.catalog.channel("c", "e", "img")
    in_flight = rb.remote(entry_b)  # (B's request began: its Remote is the old one)
    new = _remake(url, tmp_path / "img.zarr")
    _a_sees_the_change(a)
    far = Box((0, 0, 1024), NEW)  # A serves a request (of the second cell) after its change
    np.testing.assert_array_equal(_array(_cutout(a, far), far), new[far.slices()])

    # B's request goes on: the generation (it sees A's bump) and the read, then its cells go
    # to the disk tier behind it
    version = rb.generation(entry_b, in_flight)
    rb.read_live(in_flight, lambda: in_flight.read_shared(old_box, 0))
    rb.cache.flush()

    first = Box((0, 0, 0), (16, 64, 1024))  # the first cell of the new grid, and part of it
    for box in (first, Box((0, 0, 0), (16, 64, 128)), old_box):
        res = _cutout(a, box)
        np.testing.assert_array_equal(_array(res, box), new[box.slices()])
    ra: Relay = a.relay
    fresh = ra.remote(ra.catalog.channel("c", "e", "img"))
    request = ("cutout", 0, old_box, None, "application/blosc")
    assert Relay.etag(in_flight, version, *request) != Relay.etag(fresh, version, *request)


def test_a_restarted_relay_never_serves_disk_cells_of_the_volume_its_upstream_was_before(
        tmp_path: Path) -> None:
    """The disk tier outlives a restart; the upstream was made again meanwhile with another
    shape (the relay could not see it happen): the cells of the old grid, under the same
    upstream URL and keys, are not the new volume's."""
    url = f"zarr://{tmp_path}/img.zarr"
    voxgate.create(url, shape=OLD, chunks=CHUNKS, dtype="uint8", voxel_size=(8, 8, 8))[:] = 7
    config = _config(tmp_path, url)
    config.workers = 1
    old_box = Box((0, 0, 0), OLD)
    r = InProcessRelay(config)
    try:
        assert (_array(_cutout(r, old_box), old_box) == 7).all()
    finally:
        r.stop()
    new = _remake(url, tmp_path / "img.zarr")
    config = _config(tmp_path, url)
    config.workers = 1
    r = InProcessRelay(config)
    try:
        for box in (Box((0, 0, 0), (16, 64, 1024)), old_box):
            np.testing.assert_array_equal(_array(_cutout(r, box), box), new[box.slices()])
    finally:
        r.stop()


def test_a_channel_whose_upstream_is_gone_does_not_fail_its_siblings(tmp_path: Path) -> None:
    """The experiment's coordinate frame spans its channels; a channel whose upstream cannot
    be opened is left out of it (the healthy channel's cutouts, intern's included, failed
    with the broken one's 404), and still answers its own requests with its own error."""
    from intern.remote.boss import BossRemote

    url = f"zarr://{tmp_path}/img.zarr"
    data = np.arange(16 * 64 * 64, dtype=np.uint64).astype(np.uint8).reshape(16, 64, 64)
    voxgate.create(url, shape=(16, 64, 64), chunks=CHUNKS, dtype="uint8",
                   voxel_size=(8, 8, 8))[:] = data
    cfg = RelayConfig(upstream_timeout=60.0, state_path=tmp_path / "state.json",
                      channels=[ChannelConfig("c", "e", "img", url),
                                ChannelConfig("c", "e", "gone", f"zarr://{tmp_path}/no.zarr")])
    r = InProcessRelay(cfg)
    try:
        box = Box((0, 0, 0), (16, 64, 64))
        np.testing.assert_array_equal(_array(_cutout(r, box), box), data)
        rmt = BossRemote({"protocol": "http", "host": f"127.0.0.1:{r.port}", "token": "any"})
        got = rmt.get_cutout(rmt.get_channel("img", "c", "e"), 0, [0, 64], [0, 64], [0, 16])
        np.testing.assert_array_equal(got, data)
        gone = httpx.get(f"{r.url}/v1/cutout/c/e/gone/0/0:8/0:8/0:8/", timeout=60)
        assert gone.status_code == 404 and "upstream of c/e/gone" in gone.text, gone.text
    finally:
        r.stop()
