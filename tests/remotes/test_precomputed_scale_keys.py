"""Keys and resolutions of the scales voxgate adds to precomputed layers, as CloudVolume makes
them: ``add_scale`` (``cloudvolume/datasource/precomputed/metadata.py``) keys a scale by
``"_".join(map(str, resolution))``, the resolution being scale 0's times the whole factor, as
ints when scale 0's resolution has no fractional digits (``lib.getprecision``) and as floats
otherwise.  So large resolutions stay whole (``2000000_2000000_40``, not ``2e+06_2e+06_40``),
fractional ones keep ``.0`` (``9.0_12.0_40.0``) and float noise is kept, never rounded away
(``0.6000000000000001_...``).  The expected keys come from CloudVolume's own ``add_scale`` run
on the same info; CloudVolume and tensorstore read every new scale as voxgate does."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cloudvolume import CloudVolume
from cloudvolume.datasource.precomputed.metadata import PrecomputedMetadata

import voxgate

from .test_precomputed_add_scales import ts_read
from .test_precomputed_cloudvolume_audit import cv_read

pytestmark = pytest.mark.filterwarnings("ignore")

SIZE = (12, 12, 2)  # x, y, z

# resolution (x, y, z nm), factors (z, y, x) of the scales added one after another
CASES: dict[str, tuple[list[float], list[tuple[int, int, int]]]] = {
    "large-int": ([1000000, 1000000, 40], [(1, 2, 2), (1, 2, 2)]),
    "large-float": ([500000.5, 500000.5, 40], [(1, 2, 2), (1, 2, 2)]),
    "huge-int": ([10**16, 10**16, 40], [(1, 2, 2)]),
    "fractional": ([4.5, 6, 40], [(1, 2, 2), (2, 2, 2)]),
    "float-noise": ([0.1 + 0.2, 0.1 + 0.2, 4], [(1, 2, 2)]),
    # chained factors of 3: 0.1 * 3 * 3 is 0.9000000000000001, CloudVolume's 0.1 * 9 is 0.9
    "noise-chained": ([0.1, 0.1, 1], [(1, 3, 3), (1, 3, 3)]),
}


def cv_layer(path: Path, res: list[float]) -> np.ndarray:
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="image", data_type="uint8", encoding="raw",
        resolution=res, voxel_offset=[0, 0, 0], volume_size=list(SIZE), chunk_size=[4, 4, 2])
    cv = CloudVolume(f"file://{path}", info=info, progress=False, compress=False)
    cv.commit_info()
    data = np.random.default_rng(3).integers(0, 256, SIZE[::-1], dtype=np.uint8)
    cv[:, :, :] = np.asfortranarray(data.transpose(2, 1, 0))[..., None]
    return data


def cv_scales(info: dict[str, Any], factors: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """The scales CloudVolume's own add_scale adds to ``info`` for ``factors`` (z, y, x, each
    applied to the scale before), each with its factor from scale 0, as Igneous calls it."""
    info = copy.deepcopy(info)
    total = np.ones(3, dtype=int)
    out = []
    for f in factors:
        total = total * np.array(f[::-1])
        out.append(PrecomputedMetadata.add_scale(None, total, info=info))  # type: ignore[arg-type]
    return out


def check_reads(path: Path, count: int) -> None:
    for k in range(count):
        ours = voxgate.open(f"precomputed://{path}", scale=k).read()
        np.testing.assert_array_equal(cv_read(path, k), ours)
        np.testing.assert_array_equal(ts_read(path, k), ours)


@pytest.mark.parametrize("name", list(CASES))
def test_added_scale_keys_are_cloudvolumes(tmp_path: Path, name: str) -> None:
    res, factors = CASES[name]
    path = tmp_path / "layer"
    cv_layer(path, res)
    before = json.loads((path / "info").read_text())
    want = cv_scales(before, factors)
    voxgate.downsample(f"precomputed://{path}", num_scales=len(factors) + 1, factors=factors)
    info = json.loads((path / "info").read_text())
    got = info["scales"][1:]
    assert [s["key"] for s in got] == [s["key"] for s in want]
    # the same numbers (voxgate writes whole ones as ints, CloudVolume as floats when scale 0
    # is fractional: equal in JSON's number space)
    assert [s["resolution"] for s in got] == [s["resolution"] for s in want]
    assert all("e+" not in s["key"] for s in got)
    for s in got:
        assert (path / s["key"]).is_dir(), s["key"]
    check_reads(path, len(factors) + 1)
    # CloudVolume's own add_resolution finds the scales voxgate made (it replaces a scale
    # of the same resolution instead of appending one)
    cv = CloudVolume(f"file://{path}", progress=False)
    n = len(cv.info["scales"])
    cv.meta.add_resolution(got[-1]["resolution"])
    assert len(cv.info["scales"]) == n


def test_voxgate_created_layer_keys_are_cloudvolumes(tmp_path: Path) -> None:
    """A layer voxgate creates: scale 0 keyed as CloudVolume's create_info keys it, added
    scales as its add_scale does on voxgate's info."""
    path = tmp_path / "layer"
    data = np.arange(2 * 12 * 12, dtype=np.uint8).reshape(2, 12, 12)
    vol = voxgate.create(f"precomputed://{path}", shape=data.shape, chunks=(2, 4, 4),
                         dtype="uint8", voxel_size=(40, 6, 4.5))
    vol[:] = data
    info = json.loads((path / "info").read_text())
    made = CloudVolume.create_new_info(
        num_channels=1, layer_type="image", data_type="uint8", encoding="raw",
        resolution=[4.5, 6, 40], voxel_offset=[0, 0, 0], volume_size=[12, 12, 2],
        chunk_size=[4, 4, 2])
    assert info["scales"][0]["key"] == made["scales"][0]["key"] == "4.5_6.0_40.0"
    want = cv_scales(info, [(1, 2, 2)])
    voxgate.downsample(f"precomputed://{path}", num_scales=2, factors=[(1, 2, 2)])
    info = json.loads((path / "info").read_text())
    assert info["scales"][1]["key"] == want[0]["key"] == "9.0_12.0_40.0"
    check_reads(path, 2)


def test_key_taken_by_another_scale(tmp_path: Path) -> None:
    """Scale 0 keyed with the name the new scale would take: the new one gets another."""
    path = tmp_path / "layer"
    cv_layer(path, [4.5, 6, 40])
    info = json.loads((path / "info").read_text())
    info["scales"][0]["key"] = "9.0_12.0_40.0"
    (path / "4.5_6.0_40.0").rename(path / "9.0_12.0_40.0")
    (path / "info").write_text(json.dumps(info))
    voxgate.downsample(f"precomputed://{path}", num_scales=2, factors=[(1, 2, 2)])
    keys = [s["key"] for s in json.loads((path / "info").read_text())["scales"]]
    assert keys == ["9.0_12.0_40.0", "9.0_12.0_40.0_1"]
    check_reads(path, 2)
