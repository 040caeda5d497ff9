"""intern 1.4.2's ``BossRemote.get_neuroglancer_link`` and ``array.voxel_unit`` in
voxgate.compat.intern, against real intern on the same relay."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import intern.remote.boss as real_boss
import intern.resource.boss.resource as real_res
import numpy as np
import pytest
from intern.convenience.array import _BossDBVolumeProvider
from intern.convenience.array import array as real_array

from voxgate.compat import intern as compat

from ..relay.conftest import RO, RelayProcess, Upstreams, relay, upstreams  # noqa: F401


def _config(relay: RelayProcess) -> dict[str, str]:  # noqa: F811
    return {"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": RO}


def _intern_state(link: str) -> dict[str, Any]:
    """intern's legacy state (single quotes, '_' for ',') as JSON."""
    fragment = link.split("#!", 1)[1]
    return dict(json.loads(fragment.replace("'", '"').replace("_", ",")))


def _our_state(link: str) -> dict[str, Any]:
    assert link.startswith(compat.NEUROGLANCER + "#!")
    return dict(json.loads(unquote(link.split("#!", 1)[1])))


def test_get_neuroglancer_link_names_what_intern_names(relay: RelayProcess) -> None:  # noqa: F811
    theirs_rmt = real_boss.BossRemote(_config(relay))
    ours_rmt = compat.BossRemote(_config(relay))
    for name, intern_type, our_type in (("raw", "image", "image"),
                                        ("seg", "annotation", "segmentation")):
        theirs = theirs_rmt.get_neuroglancer_link(theirs_rmt.get_channel(name, "lab", "em"), 0,
                                                  [10, 120], [20, 90], [3, 9])
        ours = ours_rmt.get_neuroglancer_link(ours_rmt.get_channel(name, "lab", "em"), 0,
                                              [10, 120], [20, 90], [3, 9])
        assert isinstance(ours, str)
        t_state, o_state = _intern_state(theirs), _our_state(ours)
        t_layer = t_state["layers"][name]
        assert t_layer["type"] == intern_type
        assert o_state["layers"] == [{"type": our_type, "name": name,
                                      "source": t_layer["source"]}]
        assert t_layer["source"] == f"boss://http://127.0.0.1:{relay.port}/lab/em/{name}"
        assert o_state["position"] == t_state["navigation"]["pose"]["position"][
            "voxelCoordinates"] == [10, 20, 3]
    # a bossdb:// string works too; a coarser resolution's start is given in base voxels
    # (raw's level 1 halves x and y), which intern left unconverted
    link = ours_rmt.get_neuroglancer_link("bossdb://lab/em/raw", 1, [10, 20], [5, 9], [3, 4])
    assert _our_state(link)["position"] == [20, 10, 3]


def test_array_voxel_unit_matches_intern(relay: RelayProcess,  # noqa: F811
                                         upstreams: Upstreams) -> None:  # noqa: F811
    cfg = _config(relay)
    # intern's array with its provider given: it contacts only this relay
    theirs = real_array("bossdb://lab/em/raw",
                        volume_provider=_BossDBVolumeProvider(real_boss.BossRemote(cfg)))
    ours = compat.array("bossdb://lab/em/raw", boss_config=cfg)
    assert ours.voxel_unit == theirs.voxel_unit == "nanometers"
    # the unit is of the same sizes; intern gave them x, y, z even in its default ZYX order
    assert tuple(ours.voxel_size) == tuple(float(v) for v in theirs.voxel_size)[::-1]
    assert compat.array("bossdb://lab/em/raw", boss_config=cfg,
                        axis_order="XYZ").voxel_unit == "nanometers"
    np.testing.assert_array_equal(ours[0:2, 0:3, 0:4], upstreams.image[0:2, 0:3, 0:4])


@pytest.mark.parametrize(("unit", "expected"), [("nm", "nanometers"), ("um", "micrometers"),
                                                ("mm", "millimeters"), ("angstrom", "angstrom")])
def test_array_voxel_unit_of_other_stores(unit: str, expected: str) -> None:
    import voxgate
    from voxgate.geometry import VoxelSize

    vol = voxgate.create(f"mem://voxel-unit-{unit}", shape=(2, 2, 2), chunks=(2, 2, 2),
                         dtype="uint8", voxel_size=VoxelSize(4, 4, 40, unit))
    arr = compat.array(vol.url)
    assert arr.voxel_unit == expected and arr.voxel_size == (4, 4, 40)


def test_get_neuroglancer_link_refuses_bad_input(relay: RelayProcess) -> None:  # noqa: F811
    rmt = compat.BossRemote(_config(relay))
    with pytest.raises(compat.InvalidRequestError, match="x_range"):
        rmt.get_neuroglancer_link("bossdb://lab/em/raw", 0, [1], [0, 1], [0, 1])
    with pytest.raises(compat.InvalidRequestError, match="collection/experiment/channel"):
        rmt.get_neuroglancer_link("bossdb://lab/raw", 0, [0, 1], [0, 1], [0, 1])
    assert real_res.ChannelResource  # the same resource classes intern scripts import
