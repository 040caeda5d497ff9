"""N5 multiscale groups whose scales funlib.persistence placed.

funlib's scale-pyramid scripts (daisy / lsd ``scale_pyramid.py``) write ``raw/s0``, ``raw/s1``,
... each with ``prepare_ds``: through zarr-python v2's N5Store, so each sN has x-first
``dimensions`` and funlib's own attributes in C order (``axis_names``, ``types``, ``units``,
``voxel_size`` of that scale, ``offset`` in world units: the corner of its first voxel,
snapped to that scale's voxel size), and the group carries no N5 ``scales`` /
``downsamplingFactors`` / ``resolution`` of its own.  voxgate opened such a group with s0 at
1 nm voxels, the coarser scales' voxel sizes inferred from the shapes (1, 2, 2 nm ...), and
each ``offset`` read as Paintera's x-first physical offset: the data silently in the wrong
place at the wrong size (only a warning about offsets between voxels, on some scales).  Now
every sN's voxel size and offset are funlib's; a group that mixes funlib's scales with scales
of another convention is refused, and voxgate adds no scales to such a group.

funlib.persistence and zarr-python 2 (N5Store) are not installed in the test environment:
each sN is written with tensorstore's N5 driver (x-first, as N5Store writes it) and funlib's
attributes are then added to its attributes.json as N5Store stores them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts

import voxgate
from voxgate.errors import CapabilityNotSupportedError, InvalidRequestError, VoxgateWarning
from voxgate.geometry import Box, Vec, VoxelSize
from voxgate.meta import Scale


def _write_scale(path: Path, data: np.ndarray, attrs: dict[str, Any]) -> None:
    """``data`` (C order) as an N5 dataset at ``path`` as N5Store writes it, with ``attrs``."""
    store = ts.open({
        "driver": "n5", "kvstore": {"driver": "file", "path": str(path)},
        "metadata": {"dimensions": list(data.shape[::-1]),
                     "blockSize": [min(4, n) for n in data.shape[::-1]],
                     "dataType": str(data.dtype), "compression": {"type": "raw"}},
        "create": True}).result()
    store.write(data.T).result()
    meta = json.loads((path / "attributes.json").read_text())
    meta.update(attrs)
    (path / "attributes.json").write_text(json.dumps(meta))


def _funlib(names: list[str], vs: list[float], offset: list[float]) -> dict[str, Any]:
    """funlib.persistence's attributes (prepare_ds): the space axes' lists in C order."""
    space = [n for n in names if not n.endswith("^")]
    return {"axis_names": names, "units": ["nm"] * len(space), "voxel_size": vs,
            "offset": offset,
            "types": ["channel" if n.endswith("^") else "space" for n in names]}


def _pyramid(tmp_path: Path, scales: list[tuple[np.ndarray, list[float], list[float]]],
             names: list[str], group: dict[str, Any] | None = None) -> str:
    """A container f.n5 with a group raw of scales (data, voxel_size, offset) written by
    funlib; ``group``: the group's attributes.json (none when None)."""
    root = tmp_path / "f.n5"
    for i, (data, vs, offset) in enumerate(scales):
        _write_scale(root / "raw" / f"s{i}", data, _funlib(names, vs, offset))
    (root / "attributes.json").write_text(json.dumps({"n5": "2.0.0"}))
    if group is not None:
        (root / "raw" / "attributes.json").write_text(json.dumps(group))
    return f"n5://{root / 'raw'}"


def _data(shape: tuple[int, ...], k: int) -> np.ndarray:
    return (np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape) + 1000 * k)


#: funlib's scale pyramid: (40, 8, 4) nm halved in y and x, then in all three; every offset
#: (world units, z first) a multiple of its own scale's voxel size
_SCALES = [((4, 16, 24), [40, 8, 4], [160, 64, 64]),
           ((4, 8, 12), [40, 16, 8], [160, 64, 64]),
           ((2, 4, 6), [80, 32, 16], [160, 64, 64])]


@pytest.mark.parametrize("group", [None, {}, {"multiScale": True},
                                   {"multiScale": True,
                                    "downsamplingFactors": [[1, 1, 1], [2, 2, 1], [4, 4, 2]]}],
                         ids=["no-group-attrs", "empty", "multiScale", "n5-factors"])
def test_funlib_pyramid_scales(tmp_path: Path, group: dict[str, Any] | None) -> None:
    # was: s0 1 nm voxels at offset (64, 64, 160), s1 (1, 2, 2) nm, s2 (2, 4, 4) nm, the
    # offsets funlib's z-first world offsets read as Paintera's x-first ones
    datas = [_data(shape, k) for k, (shape, _, _) in enumerate(_SCALES)]
    url = _pyramid(tmp_path, [(d, vs, off) for d, (_, vs, off) in zip(datas, _SCALES,
                                                                       strict=True)],
                   ["z", "y", "x"], group)
    vol = voxgate.open(url)
    got = [(sc.voxel_size.zyx(), tuple(sc.offset)) for sc in vol.meta.scales]
    assert got == [((40.0, 8.0, 4.0), (4, 8, 16)),   # 160/40, 64/8, 64/4
                   ((40.0, 16.0, 8.0), (4, 4, 8)),
                   ((80.0, 32.0, 16.0), (2, 2, 4))]
    # every scale starts at the same world corner (160, 64, 64) nm
    for sc in vol.meta.scales:
        assert [o * v for o, v in zip(sc.offset, sc.voxel_size.zyx(), strict=True)] == [
            160, 64, 64]
    for k, d in enumerate(datas):
        sc = vol.meta.scales[k]
        np.testing.assert_array_equal(vol.remote.read(sc.bounds, k), d)
    # the centre of s1's first voxel: its corner plus half an s1 voxel less half an s0 one
    assert vol.meta.scales[1].translation == pytest.approx((160.0, 68.0, 66.0))


def test_funlib_pyramid_scale_snapped_before_s0(tmp_path: Path) -> None:
    # funlib snaps each scale's ROI to its own voxel size ("grow"): s0 at x = 40 nm (10 voxels
    # of 4 nm), s2 of 16 nm voxels at x = 32 nm (2 voxels), half an s2 voxel before s0
    scales = [(_data((2, 8, 12), 0), [40, 8, 4], [0, 0, 40]),
              (_data((2, 4, 6), 1), [40, 16, 8], [0, 0, 40]),
              (_data((2, 2, 4), 2), [40, 32, 16], [0, 0, 32])]
    vol = voxgate.open(_pyramid(tmp_path, scales, ["z", "y", "x"]))
    s0, _, s2 = vol.meta.scales
    assert tuple(s0.offset) == (0, 0, 10)
    assert s2.voxel_size.zyx() == (40.0, 32.0, 16.0)
    assert tuple(s2.offset) == (0, 0, 2)
    # its first voxel covers x 32 .. 48 nm: centre 40, i.e. 32 + (16 - 4) / 2 in s0's frame
    assert s2.translation == pytest.approx((0.0, 12.0, 38.0))


def test_funlib_pyramid_with_a_channel_axis(tmp_path: Path) -> None:
    scales = [(_data((2, 4, 8, 12), 0), [40, 8, 4], [80, 16, 40]),
              (_data((2, 4, 4, 6), 1), [40, 16, 8], [80, 16, 40])]
    vol = voxgate.open(_pyramid(tmp_path, scales, ["c^", "z", "y", "x"]))
    assert vol.meta.num_channels == 2
    assert [sc.voxel_size.zyx() for sc in vol.meta.scales] == [(40.0, 8.0, 4.0),
                                                              (40.0, 16.0, 8.0)]
    assert [tuple(sc.offset) for sc in vol.meta.scales] == [(2, 2, 10), (2, 1, 5)]
    np.testing.assert_array_equal(vol.read(), scales[0][0])
    s1 = vol.meta.scales[1]
    np.testing.assert_array_equal(vol.remote.read(s1.bounds, 1), scales[1][0])


def test_2d_funlib_pyramid(tmp_path: Path) -> None:
    # a (y, x) pyramid opens as one z plane per scale, z as for a single 2-D funlib dataset
    scales = [(_data((8, 12), 0), [8, 4], [16, 40]), (_data((4, 6), 1), [16, 8], [16, 40])]
    vol = voxgate.open(_pyramid(tmp_path, scales, ["y", "x"]))
    assert vol.shape == (1, 8, 12)
    assert [sc.voxel_size.zyx()[1:] for sc in vol.meta.scales] == [(8.0, 4.0), (16.0, 8.0)]
    assert [tuple(sc.offset) for sc in vol.meta.scales] == [(0, 2, 10), (0, 1, 5)]
    np.testing.assert_array_equal(vol.read(), scales[0][0][None])


def test_mixed_funlib_and_plain_scales_are_refused(tmp_path: Path) -> None:
    # s1 without funlib's attributes would get s0's geometry by another rule (inferred
    # factors on 1 nm, an x-first offset): refused rather than placed wrongly
    url = _pyramid(tmp_path, [(_data((4, 16, 24), 0), [40, 8, 4], [160, 64, 64])],
                   ["z", "y", "x"])
    _write_scale(tmp_path / "f.n5" / "raw" / "s1", _data((4, 8, 12), 1), {})
    with pytest.raises(InvalidRequestError, match=r"s0 carry funlib.*s1 do not"):
        voxgate.open(url)
    # and so is a scale whose N5 resolution wins over its funlib voxel_size
    _write_scale(tmp_path / "g.n5" / "raw" / "s1", _data((4, 8, 12), 1),
                 {**_funlib(["z", "y", "x"], [40, 16, 8], [160, 64, 64]),
                  "resolution": [8, 16, 40]})
    _write_scale(tmp_path / "g.n5" / "raw" / "s0", _data((4, 16, 24), 0),
                 _funlib(["z", "y", "x"], [40, 8, 4], [160, 64, 64]))
    with pytest.warns(VoxgateWarning, match="voxel_size .* is ignored"), \
            pytest.raises(InvalidRequestError, match=r"s0 carry funlib.*s1 do not"):
        voxgate.open(f"n5://{tmp_path / 'g.n5' / 'raw'}")


def test_no_scales_added_to_a_funlib_pyramid(tmp_path: Path) -> None:
    # a new sN would copy s0's funlib voxel_size and offset beside n5-viewer lists
    url = _pyramid(tmp_path, [(_data((4, 16, 24), 0), [40, 8, 4], [160, 64, 64]),
                              (_data((4, 8, 12), 1), [40, 16, 8], [160, 64, 64])],
                   ["z", "y", "x"], {"multiScale": True})
    vol = voxgate.open(url, mode="r+")
    assert voxgate.Capability.ADD_SCALES not in vol.remote.capabilities
    new = Scale(2, Vec(2, 4, 6), Vec(2, 4, 6), VoxelSize(80, 32, 16), Vec(2, 2, 4))
    with pytest.raises(CapabilityNotSupportedError, match="funlib"):
        vol.remote.add_scales([new])
    assert not (tmp_path / "f.n5" / "raw" / "s2").exists()
    # writes reach the datasets and leave funlib's attributes alone
    before = (tmp_path / "f.n5" / "raw" / "s0" / "attributes.json").read_bytes()
    vol.write(np.full((1, 2, 2), 7, np.uint16), Box((4, 8, 16), (5, 10, 18)))
    assert (tmp_path / "f.n5" / "raw" / "s0" / "attributes.json").read_bytes() == before
    assert (voxgate.open(url).read(Box((4, 8, 16), (5, 10, 18))) == 7).all()
