"""Cutout writes at a resolution above 0, against what bossDB does with them.

bossDB (jhuapl-boss/boss, spdb): a POST at resolution r passes BossRequest's checks (r within
base_resolution .. base_resolution + num_hierarchy_levels - 1, the ranges within the *base*
frame), then spdb's ``SpatialDB.write_cuboid`` takes r = base and r = base + 1 only and stores
the cuboids whole (nothing clips them to the level's extent); after any write the view marks a
DOWNSAMPLED channel NOT_DOWNSAMPLED, whatever r was; a later downsample job writes level r
again from the level below (boss-tools ``resolution_hierarchy``), over the write.

The relay keeps every level of its upstream (docs/relay.md, "Cutout writes"): a level's frame
can be one voxel wider than the upstream's level (a pyramid anchored at an odd offset), where
reads give 0; a write there of zeros was refused (400) and is taken now, a non-zero voxel there
is refused writing nothing.  Every frame here starts and stops at odd coordinates.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from intern.remote.boss import BossRemote
from requests import HTTPError

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.geometry import Box
from voxgate.remotes.boss import BossProject

from ..services.numpy_reference import downsample_scales
from .conftest import RW, RelayProcess, free_port, start_relay, start_token_relay

#: z, y, x of a configured upstream: odd offset, even shape, so its level 1 (ceil(shape / 2)
#: voxels from floor(offset / 2)) is one voxel short of the frame's (floor / ceil of it) on
#: every axis
OFFSET = (3, 7, 45)
SHAPE = (8, 20, 30)
#: an experiment made through the project service (its levels lie on the grid through 0)
FRAME = Box((3, 7, 41), (12, 52, 92))


def _intern(relay: RelayProcess, token: str = RW) -> BossRemote:
    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": token})


def _ranges(box: Box) -> tuple[list[int], list[int], list[int]]:
    """intern's x, y, z ranges of ``box``."""
    return ([box.start.x, box.stop.x], [box.start.y, box.stop.y], [box.start.z, box.stop.z])


@dataclass
class Configured:
    relay: RelayProcess
    url: str  # the upstream store
    data: np.ndarray  # its level 0 as made


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Configured]:
    d = tmp_path_factory.mktemp("levels")
    url = f"zarr://{d}/img.ome.zarr"
    data = np.random.default_rng(3).integers(1, 256, SHAPE, dtype=np.uint8)
    vol = voxgate.create(url, shape=SHAPE, chunks=(4, 8, 8), dtype="uint8",
                         voxel_size=(8, 8, 8), kind="image", offset=OFFSET)
    vol[:] = data
    voxgate.downsample(url, 2)
    cfg = d / "relay.toml"
    cfg.write_text(f'[server]\nstate_path = "{d / "state.json"}"\n'
                   f'[auth]\ntokens = {{ "{RW}" = "read-write" }}\n'
                   f'[[channel]]\nname = "wl/e/img"\nupstream = "{url}"\n')
    relay = start_relay(cfg, free_port())
    yield Configured(relay, url, data)
    relay.stop()


def _level1(c: Configured) -> tuple[Box, Box]:
    """Level 1's frame as the relay serves it, and the upstream's level 1 inside it."""
    frame = voxgate.open(f"bossdb://{c.relay.url}/wl/e/img", token=RW).scales[1].bounds
    store = voxgate.open(c.url).scales[1].bounds
    # (the premise: one voxel short on every axis)
    assert tuple(frame.stop - store.stop) == (1, 1, 1) and frame.start == store.start
    return frame, store


def _with_zero_edge(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random non-zero voxels, 0 on the last plane of every axis (past the upstream)."""
    arr = np.random.default_rng(seed).integers(1, 256, shape, dtype=np.uint8)
    arr[-1], arr[:, -1], arr[:, :, -1] = 0, 0, 0
    return arr


def test_intern_writes_the_whole_level1_frame_at_an_odd_offset(configured: Configured) -> None:
    """Zeros past the upstream's level 1 were refused with 400; now the write is taken, reads
    back at level 1 through intern as numpy says, lands in the store, and leaves level 0
    alone (bossDB does not upsample a coarse write)."""
    c = configured
    frame, store = _level1(c)
    rmt = _intern(c.relay)
    chan = rmt.get_channel("img", "wl", "e")
    arr = _with_zero_edge(tuple(frame.shape), 1)
    rmt.create_cutout(chan, 1, *_ranges(frame), arr)
    np.testing.assert_array_equal(rmt.get_cutout(chan, 1, *_ranges(frame)), arr)
    np.testing.assert_array_equal(voxgate.open(c.url).at_scale(1).read(),
                                  arr[store.slices(frame.start)])
    level0 = Box(OFFSET, tuple(o + s for o, s in zip(OFFSET, SHAPE, strict=True)))
    np.testing.assert_array_equal(rmt.get_cutout(chan, 0, *_ranges(level0)), c.data)
    # a box at odd coordinates reaching past the upstream on x only
    part = Box((frame.start.z + 1, frame.start.y + 3, frame.stop.x - 5),
               (frame.stop.z - 1, frame.stop.y - 2, frame.stop.x))
    small = np.random.default_rng(2).integers(1, 256, tuple(part.shape), dtype=np.uint8)
    small[:, :, -1] = 0
    rmt.create_cutout(chan, 1, *_ranges(part), small)
    arr[part.slices(frame.start)] = small
    np.testing.assert_array_equal(rmt.get_cutout(chan, 1, *_ranges(frame)), arr)


def test_a_non_zero_voxel_past_the_upstream_is_refused_writing_nothing(
        configured: Configured) -> None:
    c = configured
    frame, _ = _level1(c)
    rmt = _intern(c.relay)
    chan = rmt.get_channel("img", "wl", "e")
    before = rmt.get_cutout(chan, 1, *_ranges(frame))
    arr = _with_zero_edge(tuple(frame.shape), 4)
    arr[2, -1, 3] = 9  # one voxel past the upstream's y
    with pytest.raises(HTTPError) as info:
        rmt.create_cutout(chan, 1, *_ranges(frame), arr)
    resp = info.value.response
    assert resp is not None and resp.status_code == 400
    body = resp.json()
    assert (body["status"], body["code"]) == (400, 1001)
    assert "1 non-zero voxels past it (nothing was written)" in body["message"]
    np.testing.assert_array_equal(rmt.get_cutout(chan, 1, *_ranges(frame)), before)
    # bossdb:// says the same, as InvalidRequestError
    vol = voxgate.open(f"bossdb://{c.relay.url}/wl/e/img", token=RW, mode="r+").at_scale(1)
    with pytest.raises(InvalidRequestError, match="non-zero voxels past it"):
        vol[:] = arr
    np.testing.assert_array_equal(vol.read(), before)


def test_bossdb_writes_the_whole_level1_frame_at_an_odd_offset(configured: Configured) -> None:
    c = configured
    frame, store = _level1(c)
    vol = voxgate.open(f"bossdb://{c.relay.url}/wl/e/img", token=RW, mode="r+").at_scale(1)
    arr = _with_zero_edge(tuple(frame.shape), 5)
    vol[:] = arr  # refused before (400: "this channel's data covers ...")
    np.testing.assert_array_equal(vol.read(), arr)
    np.testing.assert_array_equal(voxgate.open(c.url).at_scale(1).read(),
                                  arr[store.slices(frame.start)])


# -- a channel made through the project service: downsample status and jobs --------------------
@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    r = start_token_relay(tmp_path_factory.mktemp("made"), "64 MiB")
    p = BossProject(r.url, token=RW)
    p.create_collection("wm")
    p.create_coordinate_frame("wm_odd", FRAME, (8, 8, 8))
    p.create_experiment("wm", "two", "wm_odd", num_hierarchy_levels=2,
                        hierarchy_method="isotropic")
    p.create_experiment("wm", "three", "wm_odd", num_hierarchy_levels=3,
                        hierarchy_method="isotropic")
    yield r
    r.stop()


def _status(relay: RelayProcess, e: str, ch: str) -> str:
    return str(BossProject(relay.url, token=RW).downsample_status("wm", e, ch)["status"])


def _downsample(relay: RelayProcess, e: str, ch: str) -> None:
    BossProject(relay.url, token=RW).start_downsample("wm", e, ch)
    for _ in range(600):
        if _status(relay, e, ch) == "DOWNSAMPLED":
            return
        time.sleep(0.05)
    raise AssertionError(f"wm/{e}/{ch} was never downsampled")


def test_a_level1_write_marks_the_channel_not_downsampled_and_a_job_writes_over_it(
        made: RelayProcess) -> None:
    """bossDB's Cutout.post and CutoutToBlack.put make DOWNSAMPLED NOT_DOWNSAMPLED after a
    write at any resolution (the relay did so after level-0 writes only); the next job
    computes level 1 from level 0 again, over the write."""
    BossProject(made.url, token=RW).create_channel("wm", "two", "img", type="image",
                                                   datatype="uint8")
    rmt = _intern(made)
    chan = rmt.get_channel("img", "wm", "two")
    data = np.random.default_rng(6).integers(1, 256, tuple(FRAME.shape), dtype=np.uint8)
    rmt.create_cutout(chan, 0, *_ranges(FRAME), data)
    _downsample(made, "two", "img")
    (want1,) = downsample_scales(data, [(2, 2, 2)], "image", start=FRAME.start)
    frame1 = Box(tuple(a // 2 for a in FRAME.start), tuple(-(-b // 2) for b in FRAME.stop))
    assert tuple(frame1.shape) == want1.shape
    np.testing.assert_array_equal(rmt.get_cutout(chan, 1, *_ranges(frame1)), want1)

    box = Box((frame1.start.z + 1, frame1.start.y + 3, frame1.start.x + 5),
              (frame1.stop.z, frame1.stop.y - 4, frame1.stop.x - 2))  # odd starts, to the end
    patch = np.random.default_rng(7).integers(1, 256, tuple(box.shape), dtype=np.uint8)
    rmt.create_cutout(chan, 1, *_ranges(box), patch)
    assert _status(made, "two", "img") == "NOT_DOWNSAMPLED"
    expect = want1.copy()
    expect[box.slices(frame1.start)] = patch
    np.testing.assert_array_equal(rmt.get_cutout(chan, 1, *_ranges(frame1)), expect)
    np.testing.assert_array_equal(rmt.get_cutout(chan, 0, *_ranges(FRAME)), data)

    _downsample(made, "two", "img")  # level 1 from level 0 again: the write is gone
    np.testing.assert_array_equal(rmt.get_cutout(chan, 1, *_ranges(frame1)), want1)

    rmt.create_cutout_to_black(chan, 1, *_ranges(box))
    assert _status(made, "two", "img") == "NOT_DOWNSAMPLED"
    expect = want1.copy()
    expect[box.slices(frame1.start)] = 0
    np.testing.assert_array_equal(rmt.get_cutout(chan, 1, *_ranges(frame1)), expect)
    np.testing.assert_array_equal(rmt.get_cutout(chan, 0, *_ranges(FRAME)), data)


def test_bossdb_refuses_a_scale_bossdb_does_not_write(
        made: RelayProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against bossDB itself (a server that does not name its pyramid's anchor), bossdb://
    refuses a write at base_resolution + 2 or more before sending anything (spdb refuses it,
    400 / 9001), and writes base_resolution + 1; against a relay every level is written."""
    BossProject(made.url, token=RW).create_channel("wm", "three", "img", type="image",
                                                   datatype="uint8")
    url = f"bossdb://{made.url}/wm/three/img"
    real = BossProject.downsample_status

    def as_bossdb(self: BossProject, c: str, e: str, ch: str) -> dict[str, object]:
        status = real(self, c, e, ch)
        status.pop("pyramid_anchor")
        return status

    monkeypatch.setattr(BossProject, "downsample_status", as_bossdb)
    vol = voxgate.open(url, token=RW, mode="r+")
    two = vol.at_scale(2)
    with pytest.raises(InvalidRequestError, match=r"base resolution \(0\) and the one above "
                                                  r"it \(1\), not at scale 2"):
        two[:] = np.full(two.shape, 7, dtype=np.uint8)
    monkeypatch.undo()
    assert not voxgate.open(url, token=RW).at_scale(2).read().any()  # nothing was sent
    one = vol.at_scale(1)
    patch = np.random.default_rng(8).integers(1, 256, one.shape, dtype=np.uint8)
    one[:] = patch
    np.testing.assert_array_equal(voxgate.open(url, token=RW).at_scale(1).read(), patch)
    # the relay itself writes every level (docs/relay.md)
    relay_two = voxgate.open(url, token=RW, mode="r+").at_scale(2)
    relay_two[:] = np.full(relay_two.shape, 7, dtype=np.uint8)
    assert (voxgate.open(url, token=RW).at_scale(2).read() == 7).all()


def test_a_new_channel_is_not_downsampled_until_a_job_ran(made: RelayProcess) -> None:
    """bossDB's Channel model defaults downsample_status to NOT_DOWNSAMPLED; the relay read it
    from the new store's levels (more than one: DOWNSAMPLED, over empty coarser levels), so a
    client waiting for DOWNSAMPLED went on at once and a non-admin's first downsample was
    refused 409 "already downsampled".  Through intern: the channel resource and the
    downsample endpoint both say NOT_DOWNSAMPLED until a job ran."""
    from intern.resource.boss.resource import ChannelResource

    rmt = _intern(made)
    rmt.create_project(ChannelResource("fresh", "wm", "three", type="image",
                                       datatype="uint8"))
    assert rmt.get_channel("fresh", "wm", "three").downsample_status == "NOT_DOWNSAMPLED"
    assert _status(made, "three", "fresh") == "NOT_DOWNSAMPLED"
    chan = rmt.get_channel("fresh", "wm", "three")
    data = np.random.default_rng(8).integers(1, 256, tuple(FRAME.shape), dtype=np.uint8)
    rmt.create_cutout(chan, 0, *_ranges(FRAME), data)
    assert _status(made, "three", "fresh") == "NOT_DOWNSAMPLED"
    _downsample(made, "three", "fresh")
    assert rmt.get_channel("fresh", "wm", "three").downsample_status == "DOWNSAMPLED"
