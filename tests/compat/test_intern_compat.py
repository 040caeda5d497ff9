"""voxgate.compat.intern: an intern script runs by changing its import, and gets intern's
mistakes fixed (specs/intern-pitfalls.md)."""

from __future__ import annotations

from pathlib import Path

import intern.remote.boss as real_boss
import intern.resource.boss.resource as real_res
import numpy as np
import pytest

import voxgate
from voxgate.compat import intern as compat
from voxgate.errors import InvalidRequestError

from ..relay.conftest import RO, RW, RelayProcess, Upstreams, relay, upstreams  # noqa: F401


def _script(BossRemote, ChannelResource, port: int) -> dict:  # type: ignore[no-untyped-def]
    """A typical intern script; the same code runs on both libraries."""
    rmt = BossRemote({"protocol": "http", "host": f"127.0.0.1:{port}", "token": RW})
    out: dict = {}  # type: ignore[type-arg]
    out["collections"] = rmt.list_collections()
    out["experiments"] = rmt.list_experiments("lab")
    out["channels"] = sorted(rmt.list_channels("lab", "em"))
    chan = rmt.get_channel("raw", "lab", "em")
    out["datatype"] = chan.datatype
    exp = rmt.get_experiment("lab", "em")
    out["levels"] = exp.num_hierarchy_levels
    frame = rmt.get_coordinate_frame(exp.coord_frame)
    out["frame"] = (frame.x_stop, frame.y_stop, frame.z_stop)
    out["cutout"] = rmt.get_cutout(chan, 0, [10, 120], [20, 90], [3, 9])
    out["cutout_res1"] = rmt.get_cutout(chan, 1, [0, 60], [0, 40], [0, 4])
    seg = rmt.get_channel("seg", "lab", "em")
    out["ids"] = rmt.get_ids_in_region(seg, 0, [0, 50], [0, 50], [0, 5])
    out["bbox"] = rmt.get_bounding_box(seg, 0, out["ids"][0], "tight")
    coll = ChannelResource("raw", "lab", "em")
    rmt.create_metadata(coll, {"who": "script"})
    out["meta"] = rmt.get_metadata(coll, ["who"])
    rmt.delete_metadata(coll, ["who"])
    return out


def test_same_script_same_answers(relay: RelayProcess) -> None:  # noqa: F811
    theirs = _script(real_boss.BossRemote, real_res.ChannelResource, relay.port)
    ours = _script(compat.BossRemote, compat.ChannelResource, relay.port)
    assert theirs.keys() == ours.keys()
    for key in theirs:
        if isinstance(theirs[key], np.ndarray):
            assert theirs[key].dtype == ours[key].dtype
            np.testing.assert_array_equal(theirs[key], ours[key])
        else:
            assert theirs[key] == ours[key], key


def test_writes_are_never_dropped(relay: RelayProcess, upstreams: Upstreams) -> None:  # noqa: F811
    rmt = compat.BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": RW})
    seg = rmt.get_channel("seg", "lab", "em")
    zeros = np.zeros((2, 8, 8), dtype=np.uint64)
    rmt.create_cutout(seg, 0, [0, 8], [0, 8], [0, 2], zeros)  # intern returned early here
    np.testing.assert_array_equal(rmt.get_cutout(seg, 0, [0, 8], [0, 8], [0, 2]), zeros)
    with pytest.raises(InvalidRequestError, match="does not fit"):
        rmt.create_cutout(seg, 0, [0, 8], [0, 8], [0, 2], np.zeros((2, 8, 9), dtype=np.uint64))
    non_contiguous = np.asfortranarray(upstreams.labels[0:2, 0:8, 0:8])
    rmt.create_cutout(seg, 0, [0, 8], [0, 8], [0, 2], non_contiguous)
    np.testing.assert_array_equal(rmt.get_cutout(seg, 0, [0, 8], [0, 8], [0, 2]),
                                  upstreams.labels[0:2, 0:8, 0:8])
    # a bossdb:// string is accepted where intern's docs said it was
    got = rmt.get_cutout("bossdb://lab/em/seg", 0, [0, 8], [0, 8], [0, 2])
    np.testing.assert_array_equal(got, upstreams.labels[0:2, 0:8, 0:8])


def test_array_indexing_is_numpy(relay: RelayProcess, upstreams: Upstreams) -> None:  # noqa: F811
    cfg = {"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": RO}
    arr = compat.array("bossdb://lab/em/raw", boss_config=cfg)  # honoured, no public probe
    ref = upstreams.image
    assert arr.shape == ref.shape and arr.dtype == np.uint8
    assert arr[0:2, :, :].shape == (2, 300, 260)  # intern: (2, 20, 10) on a (10, 20, 30) volume
    np.testing.assert_array_equal(arr[:, 0:5, 0:6], ref[:, 0:5, 0:6])
    np.testing.assert_array_equal(arr[np.int64(3)], ref[3])  # numpy ints (intern: AttributeError)
    np.testing.assert_array_equal(arr[-1, -5:, -3:], ref[-1, -5:, -3:])  # negative indices
    np.testing.assert_array_equal(arr[0:10:3, ::50, ::40], ref[0:10:3, ::50, ::40])  # steps
    np.testing.assert_array_equal(arr[..., 7], ref[..., 7])  # ellipsis
    np.testing.assert_array_equal(arr[5], ref[5])  # fewer than three indices
    assert arr[0:1, 0:1, 0:1].shape == (1, 1, 1)  # length-1 axes kept
    assert arr.voxel_size == (40.0, 8.0, 8.0)
    xyz = compat.array("bossdb://lab/em/raw", boss_config=cfg, axis_order="XYZ")
    assert xyz.shape == (260, 300, 40) and xyz.voxel_size == (8.0, 8.0, 40.0)
    np.testing.assert_array_equal(xyz[10:20, 5:9, 3], ref[3, 5:9, 10:20].T)
    res1 = compat.array("bossdb://lab/em/raw", 1, boss_config=cfg)
    assert res1.shape == upstreams.image1.shape and res1.voxel_size == (40.0, 16.0, 16.0)


def test_array_writes_to_any_store(tmp_path: Path) -> None:
    # intern silently dropped writes to CloudVolume-backed arrays
    vol = voxgate.create(f"precomputed://file://{tmp_path}/layer", shape=(4, 8, 8),
                         chunks=(4, 8, 8), dtype="uint8", voxel_size=(1, 1, 1))
    arr = compat.array(vol.url)
    arr[1:3, 2:4, 2:4] = np.full((2, 2, 2), 9, dtype=np.uint8)
    assert voxgate.open(vol.url).read().sum() == 9 * 8
    ro = compat.array(vol.url, mode="r")
    with pytest.raises(PermissionError):
        ro[0, 0, 0] = 1
