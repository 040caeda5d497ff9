"""A bossDB channel's ``base_resolution``, through the relay's project service.

bossDB (jhuapl-boss/boss, spdb): the channel record carries ``base_resolution`` (the
ChannelSerializer's field, any integer, no longer bounded by the experiment's levels); a
cutout names a resolution in ``range(base, base + num_hierarchy_levels)``, else 400 / 1002
"Invalid resolution r. The resolution has to be within base and base + levels"
(bosscore/request.py validate_resolution); the coordinate frame's voxel size is resolution 0's,
resolution r halves x and y r times (z too when isotropic) and spans floor(start / 2^r) ..
ceil(stop / 2^r) (spdb project/resource.py get_downsampled_voxel_dims / _extent_dims).

voxgate's ``bossdb://`` numbers its scales from the base: scale k is resolution base + k, with
that resolution's voxel size and extent.  Every frame here starts and stops at odd coordinates.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from intern.remote.boss import BossRemote
from requests import HTTPError

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.geometry import Box
from voxgate.remotes.boss import BossProject

from .conftest import RW, RelayProcess, start_token_relay

#: z, y, x voxels of resolution 0 (odd on every side), voxel size 40 x 4 x 4 nm
FRAME = Box((3, 5, 9), (12, 38, 70))
VOXEL = (40, 4, 4)


def _level(r: int, iso: bool) -> Box:
    """Resolution r's extent: the frame's floor / ceil by 2^r (z only when isotropic)."""
    f = (2**r if iso else 1, 2**r, 2**r)
    return Box(tuple(a // g for a, g in zip(FRAME.start, f, strict=True)),
               tuple(-(-b // g) for b, g in zip(FRAME.stop, f, strict=True)))


def _ranges(box: Box) -> tuple[list[int], list[int], list[int]]:
    """intern's x, y, z ranges of ``box``."""
    return ([box.start.x, box.stop.x], [box.start.y, box.stop.y], [box.start.z, box.stop.z])


def _intern(relay: RelayProcess) -> BossRemote:
    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": RW})


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    r = start_token_relay(tmp_path_factory.mktemp("base"), "32 MiB")
    p = BossProject(r.url, token=RW)
    p.create_collection("br")
    p.create_coordinate_frame("br_odd", FRAME, VOXEL)
    p.create_experiment("br", "ani", "br_odd", num_hierarchy_levels=3,
                        hierarchy_method="anisotropic")
    p.create_experiment("br", "iso", "br_odd", num_hierarchy_levels=2,
                        hierarchy_method="isotropic")
    p.create_channel("br", "ani", "img", type="image", datatype="uint8", base_resolution=2)
    p.create_channel("br", "iso", "seg", type="annotation", datatype="uint64",
                     base_resolution=1)
    yield r
    r.stop()


def test_the_channel_record_carries_its_base_resolution(relay: RelayProcess) -> None:
    p = BossProject(relay.url, token=RW)
    assert p.get_channel("br", "ani", "img")["base_resolution"] == 2
    assert _intern(relay).get_channel("seg", "br", "iso").base_resolution == 1
    # the base stays (its store holds levels from it); the same value is taken
    p.update_channel("br", "ani", "img", base_resolution=2)
    with pytest.raises(InvalidRequestError, match="base_resolution of channel img is 2"):
        p.update_channel("br", "ani", "img", base_resolution=0)
    with pytest.raises(InvalidRequestError, match="base_resolution must be from 0 to 9"):
        p.create_channel("br", "ani", "neg", base_resolution=-1)


@pytest.mark.parametrize(("e", "ch", "base", "iso"), [("ani", "img", 2, False),
                                                       ("iso", "seg", 1, True)])
def test_scale_k_has_the_voxel_size_and_extent_of_resolution_base_plus_k(
        relay: RelayProcess, e: str, ch: str, base: int, iso: bool) -> None:
    vol = voxgate.open(f"bossdb://{relay.url}/br/{e}/{ch}", token=RW)
    assert len(vol.scales) == (3 if e == "ani" else 2)
    status = BossProject(relay.url, token=RW).downsample_status("br", e, ch)
    for k, s in enumerate(vol.scales):
        r = base + k
        assert s.voxel_size.zyx() == (40 * (2**r if iso else 1), 4 * 2**r, 4 * 2**r)
        assert s.bounds == _level(r, iso)
        # the relay's downsample status keys each level by the resolution a cutout names
        assert status["voxel_size"][str(r)] == list(s.voxel_size.xyz())
        assert status["extent"][str(r)] == list(_level(r, iso).stop.xyz())


def test_bossdb_and_intern_read_and_write_the_same_resolution(relay: RelayProcess) -> None:
    vol = voxgate.open(f"bossdb://{relay.url}/br/ani/img", token=RW, mode="r+")
    rmt = _intern(relay)
    chan = rmt.get_channel("img", "br", "ani")
    rng = np.random.default_rng(7)
    b2, b3, b4 = _level(2, False), _level(3, False), _level(4, False)
    # scale 0 written through bossdb:// is resolution 2 to intern
    a2 = rng.integers(1, 256, tuple(b2.shape), dtype=np.uint8)
    vol.at_scale(0)[:] = a2
    np.testing.assert_array_equal(rmt.get_cutout(chan, 2, *_ranges(b2)), a2)
    # resolution 3 written through intern is scale 1 to bossdb://
    a3 = rng.integers(1, 256, tuple(b3.shape), dtype=np.uint8)
    rmt.create_cutout(chan, 3, *_ranges(b3), a3)
    np.testing.assert_array_equal(vol.at_scale(1).read(), a3)
    # a part of scale 2 (resolution 4) at odd coordinates, both ways
    part = Box((b4.start.z + 1, b4.start.y + 1, b4.start.x + 3), b4.stop)
    a4 = rng.integers(1, 256, tuple(part.shape), dtype=np.uint8)
    vol.at_scale(2).write(a4, part)
    np.testing.assert_array_equal(rmt.get_cutout(chan, 4, *_ranges(part)), a4)
    np.testing.assert_array_equal(vol.at_scale(2).read(part), a4)
    np.testing.assert_array_equal(vol.at_scale(0).read(), a2)  # no other level touched


@pytest.mark.parametrize("res", [0, 1, 5])
def test_a_resolution_outside_base_to_base_plus_levels_is_refused(relay: RelayProcess,
                                                                   res: int) -> None:
    rmt = _intern(relay)
    chan = rmt.get_channel("img", "br", "ani")
    box = _level(res, False)
    with pytest.raises(HTTPError) as info:
        rmt.get_cutout(chan, res, *_ranges(box))
    resp = info.value.response
    assert resp is not None and resp.status_code == 400
    assert resp.json() == {"status": 400, "code": 1002, "message": f"Invalid resolution {res}. "
                           "The resolution has to be within 2 and 5"}
    with pytest.raises(HTTPError) as info:  # (writes too)
        rmt.create_cutout(chan, res, *_ranges(box), np.ones(tuple(box.shape), np.uint8))
    assert info.value.response is not None and info.value.response.json()["code"] == 1002


def test_ids_and_bounding_boxes_of_a_base1_annotation_channel(relay: RelayProcess) -> None:
    vol = voxgate.open(f"bossdb://{relay.url}/br/iso/seg", token=RW, mode="r+")
    b1 = _level(1, True)
    labels = np.zeros(tuple(b1.shape), dtype=np.uint64)
    labels[1:3, 2:5, 4:9] = 7
    labels[-1, -2:, -3:] = 2**40 + 1
    vol.at_scale(0)[:] = labels
    rmt = _intern(relay)
    chan = rmt.get_channel("seg", "br", "iso")
    np.testing.assert_array_equal(rmt.get_cutout(chan, 1, *_ranges(b1)), labels)
    assert list(vol.remote.ids_in(b1, 0)) == [7, 2**40 + 1]
    where = np.argwhere(labels == 7)
    lo, hi = where.min(0) + tuple(b1.start), where.max(0) + 1 + tuple(b1.start)
    assert vol.remote.bounding_box(7, 0) == Box(tuple(lo), tuple(hi))
    box = rmt.get_bounding_box(chan, 1, 7, "tight")
    assert (box["z_range"], box["x_range"]) == ([lo[0], hi[0]], [lo[2], hi[2]])
