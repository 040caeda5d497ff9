"""Follow-ups of the signed-ids audit, against real relays with the real intern 1.4.2: a signed
segmentation's ids and bounding boxes come from the relay's cached label statistics (which
refused negative ids, so each request scanned the channel) and still change when the channel
is written; ``reserve`` never hands out an id the channel's dtype cannot hold; and
voxgate.compat.intern's ``array(..., resolution=...)`` reads bossDB's resolution on a channel
based above 0, and a valid time sample other than the channel's is an HTTPError too."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import intern.remote.boss as real_boss
import intern.resource.boss.resource as real_res
import numpy as np
import pytest
import requests

import voxgate
from voxgate.compat import intern as compat
from voxgate.errors import InvalidRequestError

from ..compat.test_intern_compat_audit2 import _config, _raised, _wrapped_ids
from .conftest import RW, RelayProcess, free_port, start_relay, start_rw_relay

SHAPE = (20, 40, 50)  # z, y, x
I32_MAX = 2**31 - 1


def _tight(lab: np.ndarray, ident: int) -> dict[str, list[int]]:
    zs, ys, xs = np.nonzero(lab.astype(np.uint64) == np.uint64(ident))
    return {"x_range": [int(xs.min()), int(xs.max()) + 1],
            "y_range": [int(ys.min()), int(ys.max()) + 1],
            "z_range": [int(zs.min()), int(zs.max()) + 1], "t_range": [0, 1]}


class Signed:
    def __init__(self, relay: RelayProcess, labels: dict[str, np.ndarray]) -> None:
        self.relay = relay
        self.labels = labels

    def computations(self) -> int:
        with self.relay.client() as http:
            return int(http.get("/metrics").json()["label_stats"]["computations"])


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    """A relay over three segmentations: int64 and int32 with negative ids, and uint16."""
    d = tmp_path_factory.mktemp("signed_ids")
    s64 = np.zeros(SHAPE, np.int64)
    s64[:10, :20, :25] = -7
    s64[10:, 20:, 25:] = 5
    s64[3:5, 30:35, 5:9] = -(2**40)
    s64[15, 1, 1] = np.iinfo(np.int64).min
    s64[12:14, 2:6, 40:45] = 9
    s64[19, 39, 49] = 2**63 - 10  # nine ids left to reserve
    s32 = np.zeros(SHAPE, np.int32)
    s32[2:6, 3:9, 4:11] = -5
    s32[7:9, 30:33, 40:42] = 7
    s32[0, 0, 0] = I32_MAX - 9  # nine ids left to reserve
    u16 = np.zeros(SHAPE, np.uint16)
    u16[1:3, 1:3, 1:3] = 65530  # five ids left to reserve
    labels = {"s64": s64, "s32": s32, "u16": u16}
    channels = ""
    for name, lab in labels.items():
        seg = voxgate.create(f"zarr://{d}/{name}.zarr", shape=SHAPE, chunks=(8, 16, 16),
                             dtype=lab.dtype.name, voxel_size=(40, 8, 8), kind="segmentation")
        seg[:] = lab
        channels += f'[[channel]]\nname = "lab/em/{name}"\nupstream = "zarr://{d}/{name}.zarr"\n'
    cfg = d / "relay.toml"
    cfg.write_text(f'[server]\nhost = "127.0.0.1"\nstate_path = "{d / "state.json"}"\n'
                   f'[cache]\nmemory_bytes = "16 MiB"\n{channels}'
                   f'[auth]\npublic_read = false\ntokens = {{ "{RW}" = "read-write" }}\n')
    r = start_relay(cfg, free_port())
    yield Signed(r, labels)
    r.stop()


# -- 1. a signed channel's ids and bounding boxes come from the cached statistics ----------------

@pytest.mark.parametrize("name", ["s64", "s32"])
def test_signed_ids_and_boxes_are_computed_once(signed: Signed, name: str) -> None:
    lab = signed.labels[name]
    rmt = real_boss.BossRemote(_config(signed.relay))
    ch = rmt.get_channel(name, "lab", "em")
    whole = rmt.get_cutout(ch, 0, [0, 50], [0, 40], [0, 20])
    np.testing.assert_array_equal(whole, lab.astype(np.uint64))  # (-5 served as 2**64 - 5)
    expected = _wrapped_ids(lab)
    assert 2**64 - 5 in expected or 2**64 - 7 in expected
    before = signed.computations()
    for _ in range(2):
        assert rmt.get_ids_in_region(ch, 0, [0, 50], [0, 40], [0, 20]) == expected
    for ident in expected:
        assert rmt.get_bounding_box(ch, 0, ident, "tight") == _tight(lab, ident), ident
    # one pass answered them all (each request scanned the channel before)
    assert signed.computations() == before + 1
    # an id in neither half of the served range (2**31 .. 2**64 - 2**31 - 1 for int32) and a
    # negative id no voxel holds: bossDB's 404
    for ident in (2**40, 2**64 - 8):
        exc = _raised(lambda: rmt.get_bounding_box(ch, 0, ident, "tight"))  # noqa: B023
        assert isinstance(exc, requests.HTTPError) and exc.response.status_code == 404
    # a region's ids are wrapped the same way (not counted as a pass)
    part = whole[2:16, 0:36, 0:30]
    assert rmt.get_ids_in_region(ch, 0, [0, 30], [0, 36], [2, 16]) == _wrapped_ids(part)
    assert signed.computations() == before + 1


def test_signed_boxes_tight_extension(signed: Signed) -> None:
    # voxgate's ids?boxes=tight was not answered for a signed channel (ids alone)
    lab = signed.labels["s64"]
    with signed.relay.client() as http:
        body = http.get("/v1/ids/lab/em/s64/0/0:50/0:40/0:20/?boxes=tight").json()
    expected = _wrapped_ids(lab)
    assert body["ids"] == [str(i) for i in expected]
    assert "boxes" in body, sorted(body)
    for ident, box, count in zip(expected, body["boxes"], body["counts"], strict=True):
        t = _tight(lab, ident)
        assert box == [t["z_range"][0], t["y_range"][0], t["x_range"][0],
                       t["z_range"][1], t["y_range"][1], t["x_range"][1]], ident
        assert count == int(np.count_nonzero(lab.astype(np.uint64) == np.uint64(ident)))


def test_a_write_changes_signed_ids_and_boxes(signed: Signed) -> None:
    rmt = real_boss.BossRemote(_config(signed.relay))
    ch = rmt.get_channel("s32", "lab", "em")
    lab = signed.labels["s32"]
    ids = rmt.get_ids_in_region(ch, 0, [0, 50], [0, 40], [0, 20])  # (computed and kept)
    assert 2**64 - 3 not in ids
    assert rmt.get_bounding_box(ch, 0, 2**64 - 5, "tight") == _tight(lab, 2**64 - 5)
    kept = signed.computations()
    assert rmt.get_ids_in_region(ch, 0, [0, 50], [0, 40], [0, 20]) == ids
    assert signed.computations() == kept  # (answered from the kept statistics)
    # -3 written as intern writes it, uint64 2**64 - 3, over part of -5's region
    rmt.create_cutout(ch, 0, [4, 6], [3, 5], [2, 4], np.full((2, 2, 2), 2**64 - 3, np.uint64))
    after = lab.copy()
    after[2:4, 3:5, 4:6] = -3
    np.testing.assert_array_equal(rmt.get_cutout(ch, 0, [0, 50], [0, 40], [0, 20]),
                                  after.astype(np.uint64))
    assert rmt.get_ids_in_region(ch, 0, [0, 50], [0, 40], [0, 20]) == _wrapped_ids(after)
    assert rmt.get_bounding_box(ch, 0, 2**64 - 3, "tight") == _tight(after, 2**64 - 3)
    assert signed.computations() == kept + 1  # (the write made the kept ones stale)
    # and written away: -3 is gone from the ids and from the boxes
    rmt.create_cutout(ch, 0, [4, 6], [3, 5], [2, 4], np.full((2, 2, 2), 2**64 - 5, np.uint64))
    assert rmt.get_ids_in_region(ch, 0, [0, 50], [0, 40], [0, 20]) == _wrapped_ids(lab)
    exc = _raised(lambda: rmt.get_bounding_box(ch, 0, 2**64 - 3, "tight"))
    assert isinstance(exc, requests.HTTPError) and exc.response.status_code == 404


# -- 2. reserve stops at the channel's dtype -----------------------------------------------------

@pytest.mark.parametrize(("name", "top"), [("s32", I32_MAX), ("u16", 2**16 - 1),
                                           ("s64", 2**63 - 1)])
def test_reserve_stops_at_the_dtype_max(signed: Signed, name: str, top: int) -> None:
    rmt = real_boss.BossRemote(_config(signed.relay))
    ch = rmt.get_channel(name, "lab", "em")
    start = rmt.reserve_ids(ch, 2)  # above the largest id in the channel
    assert start == int(signed.labels[name].max()) + 1 and start + 1 < top
    left = top - (start + 2) + 1
    exc = _raised(lambda: rmt.reserve_ids(ch, left + 1))
    assert isinstance(exc, requests.HTTPError) and exc.response.status_code == 400
    with signed.relay.client() as http:
        res = http.get(f"/v1/reserve/lab/em/{name}/{left + 1}/")
    assert res.status_code == 400
    body = res.json()
    assert body["code"] == 1005 and str(top) in body["message"], body
    assert f"{left} ids are left" in body["message"], body
    # the refusals reserved nothing: the ids left are handed out, up to the top and no further
    assert rmt.reserve_ids(ch, left) == start + 2
    with signed.relay.client() as http:
        res = http.get(f"/v1/reserve/lab/em/{name}/1/")
    assert res.status_code == 400 and "no ids are left" in res.json()["message"]
    # ours too, as intern's HTTPError
    ours = compat.BossRemote(_config(signed.relay))
    exc = _raised(lambda: ours.reserve_ids(f"bossdb://lab/em/{name}", 1))
    assert isinstance(exc, requests.HTTPError) and exc.response.status_code == 400


# -- 3. compat.intern's array resolution and time samples ----------------------------------------

@pytest.fixture(scope="module")
def based(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayProcess, Path]]:
    """A relay holding c/e/s: an image channel of base_resolution 1 and three levels, each
    level written with its own values."""
    d = tmp_path_factory.mktemp("based")
    r = start_rw_relay(d)
    theirs = real_boss.BossRemote(_config(r))
    theirs.create_project(real_res.CollectionResource("c"))
    theirs.create_project(real_res.CoordinateFrameResource("f", "", 0, 64, 0, 64, 0, 8, 4, 4,
                                                           40))
    theirs.create_project(real_res.ExperimentResource("e", "c", "f", num_hierarchy_levels=3))
    theirs.create_project(real_res.ChannelResource("s", "c", "e", "image", datatype="uint8",
                                                   base_resolution=1))
    ch = theirs.get_channel("s", "c", "e")
    for res, side in ((1, 32), (2, 16)):
        theirs.create_cutout(ch, res, [0, side], [0, side], [0, 8],
                             np.full((8, side, side), 10 * res, np.uint8))
    yield r, d
    r.stop()


def test_array_resolution_is_bossdb_resolution(based: tuple[RelayProcess, Path]) -> None:
    r, _ = based
    cfg = _config(r)
    theirs = real_boss.BossRemote(cfg)
    ch = theirs.get_channel("s", "c", "e")
    first = theirs.get_cutout(ch, 1, [0, 32], [0, 32], [0, 8])
    second = theirs.get_cutout(ch, 2, [0, 16], [0, 16], [0, 8])
    assert (first == 10).all() and (second == 20).all()
    arr = compat.array("bossdb://c/e/s", resolution=1, boss_config=cfg)
    assert arr.shape == (8, 32, 32) and arr.resolution == 1
    np.testing.assert_array_equal(arr[:, :, :], first)  # (level 1, resolution 2, before)
    assert arr.available_resolutions == [1, 2, 3]
    arr2 = compat.array("bossdb://c/e/s/2", boss_config=cfg)  # (the URL's resolution)
    assert arr2.resolution == 2
    np.testing.assert_array_equal(arr2[:, :, :], second)
    arr3 = compat.array("bossdb://c/e/s", resolution=2, axis_order="XYZ", boss_config=cfg)
    np.testing.assert_array_equal(arr3[:, :, :], second.T)
    # below the base (bossDB's 400, as the remote methods answer), and past the top
    for res in (0, 4):
        exc = _raised(lambda: compat.array("bossdb://c/e/s", resolution=res,  # noqa: B023
                                           boss_config=cfg))
        assert isinstance(exc, requests.HTTPError) and isinstance(exc, InvalidRequestError)
        assert exc.response.status_code == 400, res


def test_another_valid_time_sample_is_an_http_error(based: tuple[RelayProcess, Path]) -> None:
    r, d = based
    # the relay stores one time sample per channel and refuses an experiment of more; its
    # state file, replaced whole as the relay's own saves replace it, gives e two samples
    state = d / "state.json"
    data = json.loads(state.read_text())
    data["experiments"]["c/e"]["num_time_samples"] = 2
    tmp = d / "state.json.new"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, state)
    with httpx.Client(base_url=r.url, headers={"Authorization": f"Token {RW}"}) as http:
        assert http.get("/v1/collection/c/experiment/e/").json()["num_time_samples"] == 2
    ours = compat.BossRemote(_config(r))
    got = ours.get_cutout("bossdb://c/e/s", 1, [0, 4], [0, 4], [0, 1], time_range=[0, 1])
    assert got.shape == (1, 1, 4, 4) and (got == 10).all()
    exc = _raised(lambda: ours.get_cutout("bossdb://c/e/s", 1, [0, 4], [0, 4], [0, 1],
                                          time_range=[1, 2]))
    assert isinstance(exc, InvalidRequestError) and isinstance(exc, requests.HTTPError)
    assert exc.response.status_code == 400 and "time=" in str(exc)
    # past the samples, as before
    exc = _raised(lambda: ours.get_cutout("bossdb://c/e/s", 1, [0, 4], [0, 4], [0, 1],
                                          time_range=[2, 3]))
    assert isinstance(exc, requests.HTTPError) and exc.response.status_code == 400
