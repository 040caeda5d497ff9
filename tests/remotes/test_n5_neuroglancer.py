"""What voxgate writes to N5 as Neuroglancer's N5 data source reads it.

The rules below are those of google/neuroglancer src/datasource/n5/frontend.ts (read, not
copied): a location's attributes are those of every attributes.json from the container root
down to it, a deeper one overriding (``getAttributes``); ``resolution``, ``axes``, ``units``,
``downsamplingFactors`` (one list or one per scale), ``pixelResolution.dimensions``, ``scales``
(one list per scale) and ``dimensions`` must all have one length, the rank ("Rank mismatch"
otherwise, ``verifyRank``); ``pixelResolution.dimensions`` replaces ``resolution``; a dataset
opened directly is shown at its resolution times its own ``downsamplingFactors``, a group's
scale ``i`` at the group's resolution times its ``i``-th factors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts

import voxgate
from voxgate.testing import RemoteTests

_PER_AXIS = ("resolution", "axes", "units", "dimensions")


def _merged(root: Path, location: Path) -> dict[str, Any]:
    """The attributes Neuroglancer sees at ``location``: root's, then each deeper one's."""
    out: dict[str, Any] = {}
    parts = location.relative_to(root).parts
    for depth in range(len(parts) + 1):
        f = root.joinpath(*parts[:depth]) / "attributes.json"
        if f.exists():
            out.update(json.loads(f.read_text()))
    return out


def _rank(attrs: dict[str, Any], where: str) -> int:
    """The rank Neuroglancer gives ``attrs``, failing as it does when two lists disagree."""
    lengths: dict[str, int] = {k: len(attrs[k]) for k in _PER_AXIS if k in attrs}
    factors = attrs.get("downsamplingFactors")
    if isinstance(factors, list) and factors:
        if isinstance(factors[0], list):
            for i, f in enumerate(factors):
                lengths[f"downsamplingFactors[{i}]"] = len(f)
        else:
            lengths["downsamplingFactors"] = len(factors)
    for i, f in enumerate(attrs.get("scales") or []):
        lengths[f"scales[{i}]"] = len(f)
    if isinstance(attrs.get("pixelResolution"), dict):
        lengths["pixelResolution.dimensions"] = len(attrs["pixelResolution"]["dimensions"])
    assert len(set(lengths.values())) == 1, f"Neuroglancer: rank mismatch at {where}: {lengths}"
    return next(iter(lengths.values()))


def _voxel_sizes(attrs: dict[str, Any]) -> list[list[float]]:
    """Each scale's voxel size (Neuroglancer's dimension order) as Neuroglancer shows it."""
    base = attrs.get("resolution")
    if isinstance(attrs.get("pixelResolution"), dict):
        base = attrs["pixelResolution"]["dimensions"]
    factors = attrs.get("downsamplingFactors") or attrs.get("scales")
    if "dimensions" in attrs:
        factors = [factors or [1] * len(attrs["dimensions"])]
    return [[r * f for r, f in zip(base, fs, strict=True)] for fs in factors]


@pytest.mark.parametrize("channels", [1, 3])
def test_group_and_each_scale_open_in_neuroglancer(tmp_path: Path, channels: int) -> None:
    """Multi-channel: every per-axis list has the channel entry (4 entries), in the group and
    in each sN, so neither the group nor an sN opened directly is a rank mismatch."""
    root = tmp_path / "v.n5"
    vol = voxgate.create(f"n5://{root}", shape=(12, 40, 50), chunks=(4, 16, 16),
                         dtype="uint16", voxel_size=(40, 8, 8), num_scales=2,
                         num_channels=channels)
    lead = (channels,) if channels > 1 else ()
    data = RemoteTests.random((*lead, 12, 40, 50), "uint16")
    vol[:] = data
    # a third scale added to the existing group (N5Remote.add_scales)
    voxgate.downsample(voxgate.open(f"n5://{root}", mode="r+"), num_scales=3,
                       factors=[(1, 2, 2), (1, 2, 2)])
    rank = 3 + (channels > 1)
    expected = [[8, 8, 40], [16, 16, 40], [32, 32, 40]]
    if channels > 1:
        expected = [[*e, 1] for e in expected]

    group = _merged(tmp_path, root)
    assert _rank(group, "the group") == rank
    # named by "axes", else Neuroglancer's defaults x, y, z, t: a channel must be named
    assert group.get("axes", ["x", "y", "z", "t"])[:rank] == ["x", "y", "z", "c"][:rank]
    assert _voxel_sizes(group) == expected
    for i in range(3):
        attrs = _merged(tmp_path, root / f"s{i}")
        assert _rank(attrs, f"s{i}") == rank
        assert _voxel_sizes(attrs) == [expected[i]]

        # tensorstore reads each sN with its own voxel size, channel axis unitless
        store = ts.open({"driver": "n5", "kvstore": {
            "driver": "file", "path": f"{root}/s{i}/"}}).result()
        assert store.domain.labels == ("x", "y", "z", "c")[:rank]
        units = [(u.multiplier, u.base_unit) if u is not None else None
                 for u in store.dimension_units]
        assert units[:3] == [(v, "nm") for v in expected[i][:3]]
        if channels > 1:
            assert units[3] in (None, (1, ""))
        if i == 0:
            np.testing.assert_array_equal(
                store.read().result().transpose(*range(rank - 1, -1, -1)), data)

    again = voxgate.open(f"n5://{root}")
    assert [tuple(s.voxel_size.zyx()) for s in again.scales] == [
        (40, 8, 8), (40, 16, 16), (40, 32, 32)]
    assert again.shape == (*lead, 12, 40, 50)
    np.testing.assert_array_equal(again.read(), data)
    # and sN alone, as a plain dataset, has its own voxel size in voxgate too
    s2 = voxgate.open(f"n5://{root}/s2")
    assert tuple(s2.scales[0].voxel_size.zyx()) == (40, 32, 32)
