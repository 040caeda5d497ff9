"""A scientist's journey through several parts at once, on one relay with two worker processes:
create a channel, write it with the real ``intern`` client, downsample it on the server, read
every level back with CloudVolume and tensorstore through the precomputed dialect, view it in
Neuroglancer, write again and downsample again.

Each step is checked against the data written and a brute-force numpy pyramid (odd y and x
extents, so the far edge of every level is a partial block), and the levels are read once
*before* anything is written: what the relay cached then (empty chunks, stored responses,
ETags) must never be served after a write or a downsample changed the data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.synthetic import synthetic_em, synthetic_labels

from ..services.numpy_reference import downsample_scales
from .browser import Browser, neuroglancer_browser
from .conftest import RelayProcess, free_port, start_relay

SHAPE = (18, 301, 270)  # z, y, x: 301 -> 151 -> 76 and 270 -> 135 -> 68
VOXEL = (40, 8, 8)  # anisotropic: each level halves y and x only
FACTORS = [(1, 2, 2), (1, 2, 2)]
TOKEN = "any"  # an open relay: every client may do everything


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    d = tmp_path_factory.mktemp("journey")
    cfg = d / "relay.toml"
    cfg.write_text(f'[server]\nstate_path = "{d / "state.json"}"\nworkers = 2\n')
    r = start_relay(cfg, free_port(), "--data-root", str(d / "data"))
    yield r
    r.stop()


def _cloudvolume(relay: RelayProcess, channel: str, mip: int) -> Any:
    from cloudvolume import CloudVolume

    return CloudVolume(f"precomputed://{relay.url}/precomputed/trip/e/{channel}", mip=mip,
                       progress=False, fill_missing=False, bounded=True, cache=False)


def _cv_whole(relay: RelayProcess, channel: str, mip: int) -> np.ndarray:
    """A whole level read by CloudVolume, as (z, y, x)."""
    cv = _cloudvolume(relay, channel, mip)
    x, y, z = (int(n) for n in cv.mip_volume_size(mip))
    return np.asarray(cv[0:x, 0:y, 0:z])[..., 0].transpose(2, 1, 0)


def _ts_whole(relay: RelayProcess, channel: str, mip: int) -> np.ndarray:
    """A whole level read by tensorstore's precomputed driver over HTTP, as (z, y, x)."""
    import tensorstore as ts

    store = ts.open({"driver": "neuroglancer_precomputed", "scale_index": mip,
                     "kvstore": {"driver": "http",
                                 "base_url": f"{relay.url}/precomputed/trip/e/{channel}/"}},
                    read=True).result()
    return np.asarray(store.read().result())[..., 0].transpose(2, 1, 0)


def _intern(relay: RelayProcess) -> Any:
    from intern.remote.boss import BossRemote

    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": TOKEN})


def _intern_write(relay: RelayProcess, channel: str, data: np.ndarray,
                  z0: int = 0, y0: int = 0, x0: int = 0) -> None:
    rmt = _intern(relay)
    ch = rmt.get_channel(channel, "trip", "e")
    z, y, x = data.shape
    rmt.create_cutout(ch, 0, [x0, x0 + x], [y0, y0 + y], [z0, z0 + z], np.ascontiguousarray(data))


def _check_pyramid(relay: RelayProcess, channel: str, data: np.ndarray, kind: str) -> None:
    expected = [data, *downsample_scales(data, FACTORS, kind)]
    for mip, ref in enumerate(expected):
        got = _cv_whole(relay, channel, mip)
        assert got.shape == ref.shape, (channel, mip)
        np.testing.assert_array_equal(got, ref, err_msg=f"CloudVolume, {channel} mip {mip}")
        np.testing.assert_array_equal(_ts_whole(relay, channel, mip), ref,
                                      err_msg=f"tensorstore, {channel} mip {mip}")


def _view(browser: Browser, relay: RelayProcess, channel: str) -> list[tuple[str, int]]:
    """Neuroglancer draws the channel zoomed out (so it asks for a coarser level); the relay's
    responses it received."""
    import neuroglancer

    layer = neuroglancer.SegmentationLayer if channel == "seg" else neuroglancer.ImageLayer
    before = len(browser.responses)
    with browser.viewer.txn() as s:
        s.layers.clear()
        s.layers[channel] = layer(source=f"precomputed://{relay.url}/precomputed/trip/e/"
                                         f"{channel}")
        s.layout = "xy"
        s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                                    scales=VOXEL[::-1])
        s.position = [SHAPE[2] / 2, SHAPE[1] / 2, SHAPE[0] / 2]  # x, y, z
        s.cross_section_scale = 2  # 2 voxels per screen pixel: scale 1 is drawn
    img = browser.screenshot(save_as=f"journey-{channel}.png")
    # the volume is 135 x 151 of the 512 x 512 pixels; a blank or failed render is one colour
    # (the default background is rgb(128, 128, 128))
    assert (np.abs(img - 128).sum(-1) > 15).mean() > 0.06, channel
    assert browser.errors == []
    return browser.responses_since(before, f"{relay.url}/precomputed/trip/e/{channel}/")


def test_write_downsample_serve_view_write_again(relay: RelayProcess) -> None:
    from voxgate.remotes.boss import BossProject
    from voxgate.services.downsample import downsample_provenance

    image = synthetic_em(SHAPE, seed=5, cell=(6, 24, 24))[0]
    labels = synthetic_labels(SHAPE, cell=(6, 40, 40), seed=6) + np.uint64(2**40)
    p = BossProject(relay.url, token=TOKEN)
    p.create_collection("trip")
    p.create_coordinate_frame("tripframe", voxgate.Box((0, 0, 0), SHAPE), VOXEL)
    p.create_experiment("trip", "e", "tripframe", num_hierarchy_levels=3)
    p.create_channel("trip", "e", "em", type="image", datatype="uint8")
    p.create_channel("trip", "e", "seg", type="annotation", datatype="uint64")
    channels = {"em": (image, "image"), "seg": (labels, "segmentation")}

    # read before anything is written: every level is empty (and now in the relay's caches)
    for channel in channels:
        for mip in range(3):
            assert not _cv_whole(relay, channel, mip).any(), (channel, mip)
            assert not _ts_whole(relay, channel, mip).any(), (channel, mip)

    # write with intern through the boss dialect; the precomputed dialect serves it at once
    for channel, (data, _) in channels.items():
        _intern_write(relay, channel, data)
        np.testing.assert_array_equal(_cv_whole(relay, channel, 0), data, err_msg=channel)
        assert p.downsample_status("trip", "e", channel)["status"] == "NOT_DOWNSAMPLED"

    # downsample on the server (voxgate.downsample takes the server path the store offers)
    for channel, (data, kind) in channels.items():
        vol = voxgate.open(f"bossdb://{relay.url}/trip/e/{channel}", mode="r+", token=TOKEN)
        out = voxgate.downsample(vol)
        assert downsample_provenance(out).path == "server"  # type: ignore[union-attr]
        assert p.downsample_status("trip", "e", channel)["status"] == "DOWNSAMPLED"
        _check_pyramid(relay, channel, data, kind)

    # view in Neuroglancer: it reads the coarser levels the job wrote, every response 200
    with neuroglancer_browser() as browser:
        for channel in channels:
            got = _view(browser, relay, channel)
            assert any(u.endswith("/info") for u, _ in got), got
            assert any("/s1/" in u or "/s2/" in u for u, _ in got), got
            assert all(status == 200 for _, status in got), got

    # write part of the volume again: level 0 changes at once, the coarser levels are stale
    # (bossDB's rule) until the next downsample, which makes the pyramid whole again
    for channel, (data, kind) in channels.items():
        patch = (data[3:14, 100:251, 37:270] // 2 + 1).astype(data.dtype)
        _intern_write(relay, channel, patch, 3, 100, 37)
        data[3:14, 100:251, 37:270] = patch
        np.testing.assert_array_equal(_cv_whole(relay, channel, 0), data, err_msg=channel)
        assert p.downsample_status("trip", "e", channel)["status"] == "NOT_DOWNSAMPLED"
        vol = voxgate.open(f"bossdb://{relay.url}/trip/e/{channel}", mode="r+", token=TOKEN)
        voxgate.downsample(vol)
        _check_pyramid(relay, channel, data, kind)
