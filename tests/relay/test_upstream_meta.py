"""The relay takes in metadata changed outside it: scales added to the upstream by a downsample
run on the store itself, a volume made again with another shape.  It reads each upstream's
metadata again every ``upstream_meta_seconds`` in the background (docs/relay.md)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import blosc
import httpx
import numpy as np
import pytest

import voxgate
from voxgate.api import open_remote
from voxgate.errors import InvalidRequestError
from voxgate.relay.config import load_config

from .conftest import RW, free_port, start_relay


def _config(d: Path, upstream: str, every: float) -> Path:
    cfg = d / "relay.toml"
    cfg.write_text(f"""
[server]
state_path = "{d / 'state.json'}"
upstream_meta_seconds = {every}
[cache]
memory_bytes = "64 MiB"
disk_path = "{d / 'cache'}"
[[channel]]
name = "lab/em/img"
upstream = "{upstream}"
[auth]
public_read = true
tokens = {{ "{RW}" = "read-write" }}
""")
    return cfg


def _cutout(http: httpx.Client, res: int, box: tuple[tuple[int, int], ...],
            dtype: str = "uint8") -> tuple[np.ndarray, str]:
    (x0, x1), (y0, y1), (z0, z1) = box
    res_ = http.get(f"/v1/cutout/lab/em/img/{res}/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/")
    assert res_.status_code == 200, res_.text
    arr = np.frombuffer(blosc.decompress(res_.content), dtype).reshape(z1 - z0, y1 - y0, x1 - x0)
    return arr, res_.headers["etag"]


def _until(what: str, check: object, seconds: float = 30.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"the relay never saw {what}")


def test_scales_added_upstream_are_served(tmp_path: Path) -> None:
    """A downsample run on the upstream itself: the relay's precomputed info and bossDB
    cutouts get the new scale (CloudVolume reads it through the relay), and every ETag
    changes."""
    url = f"precomputed://file://{tmp_path}/img"
    data = np.random.default_rng(0).integers(0, 255, (32, 64, 96), dtype=np.uint8)
    voxgate.create(url, shape=data.shape, chunks=(16, 32, 32), dtype="uint8",
                   voxel_size=(8, 8, 8))[:] = data
    relay = start_relay(_config(tmp_path, url, 0.2), free_port())
    box = ((3, 90), (1, 60), (2, 30))
    try:
        with relay.client(RW) as http:
            info = http.get("/precomputed/lab/em/img/info").json()
            assert len(info["scales"]) == 1
            got, etag = _cutout(http, 0, box)
            np.testing.assert_array_equal(got, data[2:30, 1:60, 3:90])
            assert http.get("/v1/cutout/lab/em/img/1/0:8/0:8/0:8/").status_code == 400
            voxgate.downsample(url, num_scales=2)
            scale1 = voxgate.open(url).at_scale(1).read()
            _until("the new scale", lambda: len(
                http.get("/precomputed/lab/em/img/info").json()["scales"]) == 2)
            got1, _ = _cutout(http, 1, ((0, 48), (0, 32), (0, 16)))
            np.testing.assert_array_equal(got1, scale1)
            from cloudvolume import CloudVolume  # the new level, as a peer reads it

            cv = CloudVolume(f"precomputed://{relay.url}/precomputed/lab/em/img", mip=1,
                             progress=False, fill_missing=False, bounded=True, cache=False)
            assert list(cv.volume_size) == [48, 32, 16]
            np.testing.assert_array_equal(
                np.asarray(cv[0:48, 0:32, 0:16])[..., 0].transpose(2, 1, 0), scale1)
            again, etag2 = _cutout(http, 0, box)
            np.testing.assert_array_equal(again, data[2:30, 1:60, 3:90])
            assert etag2 != etag  # (an HTTP cache in front revalidates to the new one)
            m = http.get("/metrics").json()["cache"]
            assert m["upstream_errors"] == 0, m
    finally:
        relay.stop()


def test_a_volume_made_again_with_another_shape_is_served_as_it_is_now(tmp_path: Path) -> None:
    """The upstream made again under its URL with another shape and other data: the relay
    serves the new shape and data, never cells of the old volume."""
    url = f"zarr://{tmp_path}/img.zarr"
    old = np.full((16, 64, 64), 7, np.uint8)
    voxgate.create(url, shape=old.shape, chunks=(16, 32, 32), dtype="uint8",
                   voxel_size=(8, 8, 8))[:] = old
    relay = start_relay(_config(tmp_path, url, 0.2), free_port())
    try:
        with relay.client(RW) as http:
            got, _ = _cutout(http, 0, ((0, 64), (0, 64), (0, 16)))
            assert (got == 7).all()
            new = np.random.default_rng(1).integers(0, 255, (24, 80, 72), dtype=np.uint8)
            shutil.rmtree(tmp_path / "img.zarr")
            voxgate.create(url, shape=new.shape, chunks=(8, 40, 36), dtype="uint8",
                           voxel_size=(8, 8, 8))[:] = new

            def served() -> bool:
                res = http.get("/precomputed/lab/em/img/info").json()
                return bool(res["scales"][0]["size"] == [72, 80, 24])

            _until("the new shape", served)
            got, _ = _cutout(http, 0, ((0, 72), (0, 80), (0, 24)))
            np.testing.assert_array_equal(got, new)
    finally:
        relay.stop()


def test_with_0_seconds_the_metadata_is_read_once(tmp_path: Path) -> None:
    url = f"precomputed://file://{tmp_path}/img"
    voxgate.create(url, shape=(16, 32, 32), chunks=(16, 32, 32), dtype="uint8",
                   voxel_size=(8, 8, 8))[:] = 1
    relay = start_relay(_config(tmp_path, url, 0), free_port())
    try:
        with relay.client(RW) as http:
            assert len(http.get("/precomputed/lab/em/img/info").json()["scales"]) == 1
            voxgate.downsample(url, num_scales=2)
            time.sleep(1.0)
            for _ in range(5):
                assert len(http.get("/precomputed/lab/em/img/info").json()["scales"]) == 1
    finally:
        relay.stop()


@pytest.mark.parametrize("value", [-1, "10", True, float("nan"), 1e12])
def test_upstream_meta_seconds_must_be_seconds(tmp_path: Path, value: object) -> None:
    cfg = tmp_path / "r.toml"
    text = repr(value) if not isinstance(value, bool) else "true"
    text = "nan" if isinstance(value, float) and value != value else text
    text = f'"{value}"' if isinstance(value, str) else text
    cfg.write_text(f"[server]\nupstream_meta_seconds = {text}\n")
    with pytest.raises(InvalidRequestError, match="upstream_meta_seconds must be a number"):
        load_config(cfg)


def test_a_store_opened_twice_has_equal_metadata(tmp_path: Path) -> None:
    """What the background check compares: every store kind the relay serves reads back the
    same metadata when nothing changed (else the relay would drop its cells every time)."""
    shape, chunks = (20, 40, 36), (8, 16, 16)
    urls = [f"precomputed://file://{tmp_path}/p", f"zarr://{tmp_path}/z.zarr",
            f"n5://{tmp_path}/n.n5", f"hdf5://{tmp_path}/h.h5#/v", "mem://meta-twice"]
    for url in urls:
        voxgate.create(url, shape=shape, chunks=chunks, dtype="uint16", voxel_size=(40, 8, 8),
                       offset=(1, 2, 3) if not url.startswith("hdf5") else (0, 0, 0),
                       num_scales=2)[:] = 5
        a, b = open_remote(url), open_remote(url)
        assert a.meta == b.meta, url


def test_a_change_seen_after_the_channel_was_deleted_touches_nothing(tmp_path: Path) -> None:
    """The background check of a channel deleted meanwhile (its store's path may be a new
    channel's) neither bumps a generation nor drops anything."""
    from voxgate.relay.cache import CachedRemote
    from voxgate.relay.config import CacheConfig, ChannelConfig, RelayConfig
    from voxgate.relay.state import Relay

    url = f"zarr://{tmp_path}/img.zarr"
    voxgate.create(url, shape=(8, 16, 16), chunks=(8, 16, 16), dtype="uint8",
                   voxel_size=(8, 8, 8))[:] = 3
    relay = Relay(RelayConfig(state_path=tmp_path / "state.json",
                              cache=CacheConfig(memory_bytes=2**24),
                              channels=[ChannelConfig("c", "e", "img", url)]))
    entry = relay.catalog.channel("c", "e", "img")
    remote = relay.remote(entry)
    remote.read(remote.meta.scale(0).bounds)
    tag = CachedRemote.tag_of(relay.catalog.cache_tag(entry))
    version = relay.generations.current(tag)
    relay.catalog.channels.pop(entry.key)  # (as a delete does)
    relay.upstream_meta_changed(entry)
    assert relay.generations.current(tag) == version
    assert relay.catalog.open_remotes(entry) == [remote] and len(relay.cache.memory) == 1
    relay.catalog.channels[entry.key] = entry  # and while it is the channel: all of it
    relay.upstream_meta_changed(entry)
    assert relay.generations.current(tag) != version
    assert relay.catalog.open_remotes(entry) == [] and len(relay.cache.memory) == 0
