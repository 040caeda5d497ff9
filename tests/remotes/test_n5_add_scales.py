"""``voxgate.downsample`` adding scales to N5 multiscale groups (``N5Remote.add_scales``) that
voxgate did not write, or that an older voxgate wrote: every scale read back equals the numpy
reference, every list of the group and of each new sN is in the order its own ``axes`` give,
and tensorstore opens each new sN with the right shape, voxels and voxel size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts

import voxgate
from voxgate.errors import CapabilityNotSupportedError

from ..services.numpy_reference import downsample_scales
from .test_n5 import add_attrs
from .test_n5_audit import ts_dataset
from .test_n5_neuroglancer import _rank

RNG = np.random.default_rng(7)
SHAPE = (6, 13, 18)  # z, y, x: odd edges at every factor
VS0 = (40, 4, 5)  # z, y, x: anisotropic, no two axes alike
FACTORS = [(1, 2, 2), (2, 2, 2)]  # z, y, x, per new scale
VOXELS = [(40, 4, 5), (40, 8, 10), (80, 16, 20)]


def in_order(axes: list[str], zyx: Any, channel: Any) -> list[Any]:
    """A (z, y, x) value as a per-axis list in the order of ``axes``."""
    by_name = dict(zip("zyx", zyx, strict=True))
    return [by_name.get(a, channel) for a in axes]


def attrs_of(path: Path) -> dict[str, Any]:
    return json.loads((path / "attributes.json").read_text())


def strip_voxgate(root: Path) -> None:
    """Leave only what other tools read: remove voxgate's own attribute everywhere."""
    for f in [root / "attributes.json", *root.glob("s*/attributes.json")]:
        attrs = json.loads(f.read_text())
        attrs.pop("voxgate", None)
        f.write_text(json.dumps(attrs))


def ts_zyx(path: Path) -> tuple[np.ndarray, list[float]]:
    """A dataset read by tensorstore alone, as (c,) z, y, x, and its x, y, z voxel size in nm."""
    store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": f"{path}/"}}).result()
    labels = [n or d for n, d in zip(store.domain.labels, "xyzc", strict=False)]
    want = [n for n in ("c", "z", "y", "x") if n in labels]
    array = np.asarray(store.read().result()).transpose([labels.index(n) for n in want])
    units = {n: u for n, u in zip(labels, store.dimension_units, strict=True)}
    nm = [units[n].multiplier * {"nm": 1, "um": 1000}[units[n].base_unit] for n in "xyz"]
    return array, nm


LAYOUTS = {
    # (s0's axes (None: N5's default x, y, z), channels)
    "zyx": (["z", "y", "x"], 1),
    "default-xyz": (None, 1),
    "czyx": (["c", "z", "y", "x"], 2),
}


def as_older_voxgate_wrote_it(root: Path) -> None:
    """Rewrite a multi-channel N5 group's attributes as the older voxgate wrote them: no
    channel entries in the group's or its sN's lists, no group "axes"."""
    for f in [root / "attributes.json", *root.glob("s*/attributes.json")]:
        attrs = json.loads(f.read_text())
        for key in ("resolution", "units"):
            attrs[key] = attrs[key][:3]
        attrs["pixelResolution"]["dimensions"] = attrs["pixelResolution"]["dimensions"][:3]
        if f.parent == root:
            attrs.pop("axes")
            attrs["scales"] = attrs["downsamplingFactors"] = [
                s[:3] for s in attrs["downsamplingFactors"]]
        else:
            attrs["downsamplingFactors"] = attrs["downsamplingFactors"][:3]
        f.write_text(json.dumps(attrs))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_group_in_its_own_axis_order(tmp_path: Path, layout: str) -> None:
    """A Neuroglancer / tensorstore style group whose lists follow its "axes" (z, y, x; or
    c, z, y, x), and one in N5's default x, y, z: anisotropic factors land on the right axes,
    in the group's lists and in each new sN's dimensions, factors and resolution."""
    named, channels = LAYOUTS[layout]
    axes = named or ["x", "y", "z"]
    lead = (channels,) if channels > 1 else ()
    full = RNG.integers(0, 256, (*lead, *SHAPE), dtype=np.uint8)
    file_order = [("c", "z", "y", "x")[-full.ndim:].index(a) for a in axes]
    root = tmp_path / "g.n5"
    extra = {"axes": named} if named else {}
    ts_dataset(root / "s0", full.transpose(file_order).copy(),
               in_order(axes, (4, 8, 8), 1), **extra)
    add_attrs(root, n5="2.0.0", multiScale=True, resolution=in_order(axes, VS0, 1),
              units=in_order(axes, ["nm"] * 3, ""), downsamplingFactors=[[1] * len(axes)],
              **extra)

    voxgate.downsample(f"n5://{root}", num_scales=3, factors=FACTORS)

    expected = [full, *downsample_scales(full, FACTORS, "image")]
    vol = voxgate.open(f"n5://{root}")
    assert [s.voxel_size.zyx() for s in vol.scales] == VOXELS
    for i, level in enumerate(expected):
        np.testing.assert_array_equal(vol.at_scale(i).read(), level, err_msg=f"s{i}")

    group = attrs_of(root)
    assert _rank(group, "the group") == len(axes)
    assert group.get("axes", axes) == axes  # named when it was
    cumulative = [(1, 1, 1), (1, 2, 2), (2, 4, 4)]
    assert group["downsamplingFactors"] == [in_order(axes, f, 1) for f in cumulative]
    assert group["scales"] == group["downsamplingFactors"]
    assert group["resolution"] == in_order(axes, VS0, 1)
    for i in (1, 2):
        attrs = attrs_of(root / f"s{i}")
        assert attrs.get("axes") == named
        assert attrs["dimensions"] == in_order(axes, expected[i].shape[-3:], channels)
        assert attrs["downsamplingFactors"] == in_order(axes, cumulative[i], 1)
        assert attrs["resolution"] == in_order(axes, VOXELS[i], 1)
        assert _rank(attrs, f"s{i}") == len(axes)
        # tensorstore alone: the same voxels, at the voxel size of the scale
        array, nm = ts_zyx(root / f"s{i}")
        np.testing.assert_array_equal(array, expected[i], err_msg=f"tensorstore s{i}")
        assert nm == list(VOXELS[i][::-1])

    # what a reader without voxgate's own attribute sees is the same
    strip_voxgate(root)
    bare = voxgate.open(f"n5://{root}")
    assert [s.voxel_size.zyx() for s in bare.scales] == VOXELS
    assert [tuple(s.shape) for s in bare.scales] == [tuple(e.shape[-3:]) for e in expected]


def test_multichannel_group_an_older_voxgate_wrote(tmp_path: Path) -> None:
    """An older voxgate wrote x, y, z lists (3 entries) for x, y, z, c data; adding scales
    leaves every list of the group with the channel entry, not a mix of 3 and 4 entries."""
    root = tmp_path / "old.n5"
    full = RNG.integers(0, 2**16, (3, *SHAPE), dtype=np.uint16)
    vol = voxgate.create(f"n5://{root}", shape=SHAPE, chunks=(4, 8, 8), dtype="uint16",
                         voxel_size=VS0, num_channels=3)
    vol[:] = full
    voxgate.downsample(f"n5://{root}", num_scales=2, factors=FACTORS[:1])
    as_older_voxgate_wrote_it(root)
    assert [s.voxel_size.zyx() for s in voxgate.open(f"n5://{root}").scales] == VOXELS[:2]

    voxgate.downsample(f"n5://{root}", num_scales=3, factors=FACTORS)

    group = attrs_of(root)
    assert _rank(group, "the group") == 4
    assert group["axes"] == ["x", "y", "z", "c"]
    assert group["scales"] == [[1, 1, 1, 1], [2, 2, 1, 1], [4, 4, 2, 1]]
    assert group["resolution"] == [5, 4, 40, 1]
    assert group["units"] == ["nm", "nm", "nm", ""]
    assert _rank(attrs_of(root / "s2"), "s2") == 4
    again = voxgate.open(f"n5://{root}")
    assert [s.voxel_size.zyx() for s in again.scales] == VOXELS
    expected = [full, *downsample_scales(full, FACTORS, "image")]
    for i, level in enumerate(expected):
        np.testing.assert_array_equal(again.at_scale(i).read(), level, err_msg=f"s{i}")


def test_group_that_lists_no_factors(tmp_path: Path) -> None:
    """A group with a resolution and no factor list (factors inferred from the shapes): the
    list written for it starts with s0's factors, so s0 keeps its voxel size."""
    root = tmp_path / "bare.n5"
    full = RNG.integers(0, 256, SHAPE, dtype=np.uint8)
    ts_dataset(root / "s0", full.T.copy(), [8, 8, 4])
    add_attrs(root, multiScale=True, resolution=list(VS0[::-1]))
    voxgate.downsample(f"n5://{root}", num_scales=3, factors=FACTORS)
    assert attrs_of(root)["downsamplingFactors"] == [[1, 1, 1], [2, 2, 1], [4, 4, 2]]
    strip_voxgate(root)
    vol = voxgate.open(f"n5://{root}")
    assert [s.voxel_size.zyx() for s in vol.scales] == VOXELS
    for i, level in enumerate([full, *downsample_scales(full, FACTORS, "image")]):
        np.testing.assert_array_equal(vol.at_scale(i).read(), level, err_msg=f"s{i}")


def test_bigdataviewer_time_point_is_refused(tmp_path: Path) -> None:
    """BigDataViewer's setupN lists the scales of all its time points: voxgate does not add a
    scale to one of them (and says so) rather than write factors the setup does not list."""
    setup = tmp_path / "bdv.n5" / "setup0"
    add_attrs(tmp_path / "bdv.n5", n5="2.0.0")
    add_attrs(setup, downsamplingFactors=[[1, 1, 1]], dataType="uint8")
    ts_dataset(setup / "timepoint0" / "s0", RNG.integers(0, 256, SHAPE[::-1], dtype=np.uint8),
               [8, 8, 4])
    add_attrs(setup / "timepoint0", multiScale=True, resolution=list(VS0[::-1]))
    url = f"n5://{setup}/timepoint0"
    assert not voxgate.has_capability(voxgate.open(url, mode="r+").remote, "add_scales")
    with pytest.raises(CapabilityNotSupportedError, match="BigDataViewer time point"):
        voxgate.downsample(url, num_scales=2, factors=FACTORS[:1])
    assert not (setup / "timepoint0" / "s1").exists()
    assert attrs_of(setup)["downsamplingFactors"] == [[1, 1, 1]]


@pytest.mark.parametrize("form", ["cosem", "paintera"])
def test_positions_and_units_of_new_scales(tmp_path: Path, form: str) -> None:
    """s0 placed by a COSEM transform (in um, z, y, x) or a Paintera offset (x, y, z, with
    "units" um): each new sN gets its own transform or offset and its own voxel size, in units
    that say what they are (s0's were copied before: s0's voxel size, "um" beside nm values)."""
    root = tmp_path / "p.n5"
    full = RNG.integers(0, 256, SHAPE, dtype=np.uint8)
    offset0 = (2, 4, 8)  # z, y, x, voxels
    ts_dataset(root / "s0", full.T.copy(), [8, 8, 4])
    um = [v / 1000 for v in VS0]
    centre0 = [o * v for o, v in zip(offset0, um, strict=True)]
    if form == "cosem":
        tf = {"axes": ["z", "y", "x"], "scale": um, "translate": centre0,
              "units": ["um"] * 3, "ordering": "C"}
        add_attrs(root / "s0", transform=tf)
        add_attrs(root, multiScale=True, multiscales=[{"datasets": [
            {"path": "s0", "transform": tf}]}])
    else:
        add_attrs(root / "s0", resolution=um[::-1], units=["um"] * 3, offset=centre0[::-1])
        add_attrs(root, multiScale=True)
    offsets = [offset0, (2, 2, 4), (1, 1, 2)]
    vol = voxgate.open(f"n5://{root}")
    assert vol.scales[0].offset == offset0

    voxgate.downsample(f"n5://{root}", num_scales=3, factors=FACTORS)

    expected = [full, *downsample_scales(full, FACTORS, "image")]
    strip_voxgate(root)
    vol = voxgate.open(f"n5://{root}")
    assert [s.voxel_size.zyx() for s in vol.scales] == [pytest.approx(v) for v in VOXELS]
    assert [s.offset for s in vol.scales] == offsets
    for i, level in enumerate(expected):
        np.testing.assert_array_equal(vol.at_scale(i).read(), level, err_msg=f"s{i}")
    for i in (1, 2):
        array, nm = ts_zyx(root / f"s{i}")
        np.testing.assert_array_equal(array, expected[i], err_msg=f"tensorstore s{i}")
        assert nm == pytest.approx(VOXELS[i][::-1])
    if form == "cosem":
        listed = attrs_of(root)["multiscales"][0]["datasets"]
        assert [d["path"] for d in listed] == ["s0", "s1", "s2"]
        for i, d in enumerate(listed):
            assert d["transform"] == attrs_of(root / f"s{i}")["transform"]
            assert d["transform"]["scale"] == pytest.approx([v / 1000 for v in VOXELS[i]])
