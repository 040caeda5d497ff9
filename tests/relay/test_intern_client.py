"""Acceptance: the real intern package (PyPI) against a voxgate relay, unchanged.

The module's shared relay (and its upstreams) are only read; a test that writes gets a relay
and upstreams of its own, so every test passes alone and in any order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from intern.remote.boss import BossRemote
from intern.resource.boss.resource import (
    ChannelResource,
    CollectionResource,
    CoordinateFrameResource,
    ExperimentResource,
)
from intern.service.boss.httperrorlist import HTTPErrorList
from requests import HTTPError

import voxgate

from .conftest import RO, RW, SHAPE, RelayProcess, Upstreams, write_config


def remote(relay: RelayProcess, token: str = RW) -> BossRemote:
    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": token})


def test_lists_and_gets_every_resource(relay: RelayProcess) -> None:
    rmt = remote(relay)
    assert rmt.list_collections() == ["lab"]
    assert rmt.list_experiments("lab") == ["em"]
    assert sorted(rmt.list_channels("lab", "em")) == ["em16", "raw", "seg"]
    coll = rmt.get_project(CollectionResource("lab"))
    assert coll.name == "lab"
    exp = rmt.get_experiment("lab", "em")
    assert exp.num_hierarchy_levels == 2
    assert exp.hierarchy_method == "anisotropic"
    frame = rmt.get_coordinate_frame(exp.coord_frame)
    assert (frame.x_start, frame.x_stop, frame.y_stop, frame.z_stop) == (0, 260, 300, 40)
    assert (frame.x_voxel_size, frame.z_voxel_size, frame.voxel_unit) == (8, 40, "nanometers")
    assert exp.coord_frame in rmt.list_coordinate_frames()
    kinds = {n: rmt.get_channel(n, "lab", "em") for n in ("raw", "seg", "em16")}
    assert (kinds["raw"].type, kinds["raw"].datatype) == ("image", "uint8")
    assert (kinds["seg"].type, kinds["seg"].datatype) == ("annotation", "uint64")
    assert (kinds["em16"].type, kinds["em16"].datatype) == ("image", "uint16")
    assert kinds["raw"].raw["storage_type"] == "spdb"


BOXES = {
    "aligned": ((0, 128), (64, 192), (0, 16)),
    "unaligned": ((13, 201), (7, 233), (3, 37)),
    "far edge": ((200, 260), (250, 300), (30, 40)),
    "one voxel": ((259, 260), (299, 300), (39, 40)),
    "whole": ((0, 260), (0, 300), (0, 40)),
}


@pytest.mark.parametrize("name", ["raw", "seg", "em16"])
@pytest.mark.parametrize("where", list(BOXES))
def test_cutouts_equal_the_upstream(relay: RelayProcess, upstreams: Upstreams, name: str,
                                    where: str) -> None:
    rmt = remote(relay, RO)
    chan = rmt.get_channel(name, "lab", "em")
    (x0, x1), (y0, y1), (z0, z1) = BOXES[where]
    got = rmt.get_cutout(chan, 0, [x0, x1], [y0, y1], [z0, z1])
    ref = {"raw": upstreams.image, "seg": upstreams.labels, "em16": upstreams.image16}[name]
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref[z0:z1, y0:y1, x0:x1])
    again = rmt.get_cutout(chan, 0, [x0, x1], [y0, y1], [z0, z1])  # warm: from the cache
    np.testing.assert_array_equal(again, got)


def test_cutouts_at_every_resolution(relay: RelayProcess, upstreams: Upstreams) -> None:
    rmt = remote(relay, RO)
    chan = rmt.get_channel("raw", "lab", "em")
    got = rmt.get_cutout(chan, 1, [0, 130], [0, 150], [0, 40])
    np.testing.assert_array_equal(got, upstreams.image1)
    got = rmt.get_cutout(chan, 1, [101, 130], [77, 150], [17, 40])
    np.testing.assert_array_equal(got, upstreams.image1[17:40, 77:150, 101:130])
    with pytest.raises(HTTPError, match="400"):
        rmt.get_cutout(chan, 2, [0, 10], [0, 10], [0, 1])
    with pytest.raises(HTTPError, match="400"):  # outside the frame at resolution 1
        rmt.get_cutout(chan, 1, [0, 140], [0, 10], [0, 1])


def test_time_axis_cutout(relay: RelayProcess, upstreams: Upstreams) -> None:
    rmt = remote(relay, RO)
    chan = rmt.get_channel("raw", "lab", "em")
    got = rmt.get_cutout(chan, 0, [5, 25], [6, 26], [7, 9], time_range=[0, 1])
    assert got.shape == (1, 2, 20, 20)
    np.testing.assert_array_equal(got[0], upstreams.image[7:9, 6:26, 5:25])


def test_write_cutouts_and_read_back(own_relay: tuple[RelayProcess, Upstreams]) -> None:
    relay, upstreams = own_relay
    rmt = remote(relay)
    seg = rmt.get_channel("seg", "lab", "em")
    new = np.arange(1, 4 * 30 * 50 + 1, dtype=np.uint64).reshape(4, 30, 50) + np.uint64(2**60)
    rmt.create_cutout(seg, 0, [210, 260], [270, 300], [36, 40], new)  # up to the far edges
    np.testing.assert_array_equal(rmt.get_cutout(seg, 0, [210, 260], [270, 300], [36, 40]), new)
    direct = voxgate.open(f"zarr://{upstreams.root}/seg.zarr")
    np.testing.assert_array_equal(direct[36:40, 270:300, 210:260].read(), new)
    # zeros are written like any other value (intern itself skips an all-zero upload, so send
    # a block with a single non-zero voxel and check the zeros landed)
    zeros = np.zeros((4, 30, 50), dtype=np.uint64)
    zeros[0, 0, 0] = 7
    rmt.create_cutout(seg, 0, [210, 260], [270, 300], [36, 40], zeros)
    np.testing.assert_array_equal(direct[36:40, 270:300, 210:260].read(), zeros)
    np.testing.assert_array_equal(rmt.get_cutout(seg, 0, [210, 260], [270, 300], [36, 40]),
                                  zeros)
    # image channels, unaligned, uint16
    em16 = rmt.get_channel("em16", "lab", "em")
    patch = np.full((3, 11, 17), 65535, dtype=np.uint16)
    rmt.create_cutout(em16, 0, [3, 20], [5, 16], [2, 5], patch)
    got = rmt.get_cutout(em16, 0, [0, 25], [0, 20], [0, 6])
    expected = upstreams.image16[0:6, 0:20, 0:25].copy()
    expected[2:5, 5:16, 3:20] = 65535
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(voxgate.open(f"n5://{upstreams.root}/em16.n5")[0:6, 0:20, 0:25]
                                  .read(), expected)


def test_ids_bounding_boxes_reserve(relay: RelayProcess, upstreams: Upstreams) -> None:
    rmt = remote(relay)
    seg = rmt.get_channel("seg", "lab", "em")
    ids = rmt.get_ids_in_region(seg, 0, [10, 90], [20, 70], [0, 12])
    expected = sorted(int(i) for i in np.unique(upstreams.labels[0:12, 20:70, 10:90]) if i)
    assert ids == expected
    assert all(i > 2**53 for i in ids)
    target = expected[0]
    where = np.nonzero(upstreams.labels == target)
    tight = rmt.get_bounding_box(seg, 0, target, "tight")
    assert tight["x_range"] == [int(where[2].min()), int(where[2].max()) + 1]
    assert tight["y_range"] == [int(where[1].min()), int(where[1].max()) + 1]
    assert tight["z_range"] == [int(where[0].min()), int(where[0].max()) + 1]
    loose = rmt.get_bounding_box(seg, 0, target, "loose")
    assert loose["x_range"][0] % 512 == 0 and loose["z_range"][0] % 16 == 0
    assert loose["x_range"][0] <= tight["x_range"][0] and loose["x_range"][1] >= tight["x_range"][1]
    with pytest.raises(HTTPError, match="404"):
        rmt.get_bounding_box(seg, 0, 12345, "tight")
    first = rmt.reserve_ids(seg, 10)
    assert first > int(upstreams.labels.max())
    assert rmt.reserve_ids(seg, 5) == first + 10
    # ids only exist on annotation channels (intern checks this itself; the relay too)
    with relay.client() as http:
        res = http.get("/v1/ids/lab/em/raw/0/0:8/0:8/0:1/")
    assert res.status_code == 400 and res.json()["code"] == 2003


def test_metadata_round_trip(relay: RelayProcess) -> None:
    rmt = remote(relay)
    for res in (CollectionResource("lab"), ExperimentResource("em", "lab"),
                ChannelResource("raw", "lab", "em")):
        rmt.create_metadata(res, {"species": "mouse", "n": 3})
        assert rmt.get_metadata(res, ["species", "n"]) == {"species": "mouse", "n": "3"}
        assert sorted(rmt.list_metadata(res)) == ["n", "species"]
        rmt.update_metadata(res, {"species": "fly"})
        assert rmt.get_metadata(res, ["species"]) == {"species": "fly"}
        rmt.delete_metadata(res, ["species", "n"])
        assert rmt.list_metadata(res) == []
        with pytest.raises(HTTPErrorList) as info:
            rmt.get_metadata(res, ["species"])
        assert "(400)" in str(info.value.http_errors[0])


def test_project_service_creates_a_local_channel(
        upstreams: Upstreams, tmp_path: Path, relay_factory: Callable[..., RelayProcess]) -> None:
    cfg = write_config(tmp_path / "relay.toml", upstreams.root)
    data_root = tmp_path / "data"
    r = relay_factory(cfg, "--data-root", str(data_root))
    rmt = remote(r)
    rmt.create_project(CollectionResource("newlab", description="made by intern"))
    frame = rmt.create_project(CoordinateFrameResource(
        "newframe", x_start=0, x_stop=300, y_start=0, y_stop=200, z_start=0, z_stop=20,
        x_voxel_size=4, y_voxel_size=4, z_voxel_size=30, voxel_unit="nanometers"))
    assert frame.x_stop == 300
    exp = rmt.create_project(ExperimentResource("exp1", "newlab", coord_frame="newframe",
                                                num_hierarchy_levels=2))
    assert exp.coord_frame == "newframe"
    chan = rmt.create_project(ChannelResource("ann", "newlab", "exp1", type="annotation",
                                              datatype="uint64"))
    assert chan.datatype == "uint64"
    data = np.random.default_rng(3).integers(1, 2**63, (5, 60, 70), dtype=np.uint64)
    rmt.create_cutout(chan, 0, [230, 300], [140, 200], [15, 20], data)
    np.testing.assert_array_equal(rmt.get_cutout(chan, 0, [230, 300], [140, 200], [15, 20]), data)
    vol = voxgate.open(data_root / "newlab" / "exp1" / "ann.zarr")
    assert vol.shape == (20, 200, 300)
    assert vol.voxel_size.zyx() == (30.0, 4.0, 4.0)
    assert len(vol.scales) == 2
    np.testing.assert_array_equal(vol[15:20, 140:200, 230:300].read(), data)
    assert rmt.list_channels("newlab", "exp1") == ["ann"]
    with pytest.raises(HTTPError, match="400"):  # it has channels
        rmt.delete_project(ExperimentResource("exp1", "newlab"))
    rmt.delete_project(chan)
    assert rmt.list_channels("newlab", "exp1") == []
    assert not (data_root / "newlab" / "exp1" / "ann.zarr").exists()
    # restart: the created projects persist, the data root is rescanned
    r.stop()
    r2 = relay_factory(cfg, "--data-root", str(data_root))
    assert "newlab" in remote(r2).list_collections()
    assert remote(r2).get_experiment("newlab", "exp1").num_hierarchy_levels == 2


def test_read_only_token_cannot_write(relay: RelayProcess) -> None:
    ro = remote(relay, RO)
    seg = ro.get_channel("seg", "lab", "em")
    with pytest.raises(HTTPError, match="403"):
        ro.create_cutout(seg, 0, [0, 4], [0, 4], [0, 1], np.ones((1, 4, 4), dtype=np.uint64))
    with pytest.raises(HTTPError, match="401"):
        remote(relay, "not-a-token").list_collections()


def test_intern_shape_convention(relay: RelayProcess) -> None:
    # a sanity check of the fixture: the frame is the upstream's (z, y, x) shape
    rmt = remote(relay, RO)
    frame = rmt.get_coordinate_frame(rmt.get_experiment("lab", "em").coord_frame)
    assert (frame.z_stop, frame.y_stop, frame.x_stop) == SHAPE
