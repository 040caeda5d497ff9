"""voxgate.view's Neuroglancer state, checked against what Neuroglancer (its PyPI client in
headless Chromium) makes of it and against the relay's precomputed info that it reads.

- The global coordinate space is given in the state (the first volume's scale-0 voxels): left
  to Neuroglancer, it is taken from whichever layer's info arrives first, and the position,
  in the first volume's voxels, then lands outside the data.
- The position is the centre of the first volume's region: of a view (``vol[z0:z1, ...]``, at
  any scale), not of the whole volume.
- Layer names are the caller's as given (spaces, slashes, non-ASCII); only the relay channel
  behind each is made URL-safe, and ``segments`` is keyed by the names given.
- ``segments`` may be any iterable of ids, ids above 2**53 included.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import numpy as np
import pytest

import voxgate
from voxgate import VoxelSize
from voxgate.errors import InvalidRequestError
from voxgate.viewer import view

from .test_view import Page, page  # noqa: F401 - the headless Chromium fixture

BIG = 2**60 + 12345  # a segment id a float would round (2**60 + 12345 is not a double)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tmp_path_factory.mktemp("view-audit")


def _image(root: Any) -> voxgate.Volume:
    """Anisotropic (40 x 8 x 4 nm), a negative z and y offset, two scales."""
    url = f"zarr://{root}/em.zarr"
    vol = voxgate.create(url, shape=(20, 64, 64), dtype="uint8", chunks=(8, 32, 32),
                         voxel_size=VoxelSize(z=40, y=8, x=4), offset=(-5, -20, 100),
                         exist_ok=True)
    z, y, x = np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij")
    vol[:] = (x + 2 * y + 3 * z).astype(np.uint8)
    voxgate.downsample(url, 2)
    return voxgate.open(url)


def _labels(root: Any) -> voxgate.Volume:
    """Another voxel size, in micrometres, somewhere else, ids above 2**53."""
    vol = voxgate.create(f"precomputed://file://{root}/seg", shape=(10, 32, 32), dtype="uint64",
                         chunks=(8, 32, 32), voxel_size=VoxelSize(z=0.08, y=0.016, x=0.016,
                                                                  unit="um"),
                         offset=(50, 50, 50), kind="segmentation", exist_ok=True)
    labels = np.full(vol.shape, BIG, dtype=np.uint64)
    labels[:, :, 16:] = BIG + 1
    vol[:] = labels
    return voxgate.open(vol.url)


def _info(session: Any, name: str) -> dict[str, Any]:
    source = session.layers[name].removeprefix("precomputed://")
    got = httpx.get(f"{source}/info", timeout=30)
    assert got.status_code == 200, (source, got.status_code)
    return dict(got.json())


def _poll(tab: Any, js: str, *args: Any) -> Any:
    deadline = time.monotonic() + 30
    while True:
        got = tab.evaluate(js, *args)
        if got:
            return got
        assert time.monotonic() < deadline, js
        time.sleep(0.05)


_READY = "(name) => viewer.layerManager.managedLayers.find(m => m.name === name)?.isReady()"
_SOURCE = """(name) => {
  const ds = viewer.layerManager.managedLayers.find(m => m.name === name).layer.dataSources[0];
  const s = ds.loadState;
  if (s.error !== undefined) return {error: String(s.error.message || s.error)};
  const t = s.transform.value;
  return {names: t.outputSpace.names, scales: Array.from(t.outputSpace.scales),
          inputScales: Array.from(t.inputSpace.scales),
          lower: Array.from(t.inputSpace.bounds.lowerBounds),
          upper: Array.from(t.inputSpace.bounds.upperBounds),
          matrix: Array.from(t.transform)};
}"""


def test_position_lands_in_the_first_volume_whichever_info_arrives_first(
        root: Any, page: Page) -> None:  # noqa: F811
    em, seg = _image(root), _labels(root)
    with view(em, seg, names=["em", "seg"]) as session:
        held: list[Any] = []
        # the first layer's info answers only once the second layer has loaded
        page.page.route(session.layers["em"].removeprefix("precomputed://") + "/info",
                        lambda route: held.append(route))
        page.page.goto(session.url)
        _poll(page.page, _READY, "seg")
        assert len(held) == 1  # the order was forced
        held[0].continue_()
        _poll(page.page, "() => viewer.layerManager.managedLayers.every(m => m.isReady())")
        state = json.loads(page.page.evaluate("JSON.stringify(viewer.state.toJSON())"))
        em_src = page.page.evaluate(_SOURCE, "em")
        seg_src = page.page.evaluate(_SOURCE, "seg")
        assert "error" not in em_src and "error" not in seg_src, (em_src, seg_src)
    # the global space: the first volume's voxels, x 4 nm, y 8 nm, z 40 nm
    dims = state["dimensions"]
    assert [dims[a][1] for a in "xyz"] == ["m"] * 3
    assert [dims[a][0] for a in "xyz"] == pytest.approx([4e-9, 8e-9, 40e-9])
    # the position, in metres, at the centre of the first volume as Neuroglancer read it (its
    # bounds in its own voxels, of its own size, no translation at scale 0)
    assert em_src["names"] == ["x", "y", "z"]
    assert em_src["matrix"] == np.eye(4).ravel().tolist()  # homogeneous, no translation
    where = [p * dims[a][0] for p, a in zip(state["position"], "xyz", strict=True)]
    lower = [lo * s for lo, s in zip(em_src["lower"], em_src["inputScales"], strict=True)]
    upper = [hi * s for hi, s in zip(em_src["upper"], em_src["inputScales"], strict=True)]
    assert em_src["lower"] == [100, -20, -5] and em_src["upper"] == [164, 44, 15]
    assert where == pytest.approx([(lo + hi) / 2 for lo, hi in zip(lower, upper, strict=True)])
    # the segmentation, in micrometres, is read as 16 x 16 x 80 nm voxels
    assert seg_src["inputScales"] == pytest.approx([16e-9, 16e-9, 80e-9])


def test_multichannel_image_loads_with_its_channel_axis(root: Any, page: Page) -> None:  # noqa: F811
    rgb = voxgate.create(f"zarr://{root}/rgb.zarr", shape=(4, 16, 16), dtype="uint8",
                         chunks=(4, 16, 16), voxel_size=(40, 8, 8), num_channels=3,
                         exist_ok=True)
    rgb[:] = np.arange(3, dtype=np.uint8)[:, None, None, None] * 50
    with view(rgb) as session:
        page.page.goto(session.url)
        _poll(page.page, _READY, "rgb")
        got = page.page.evaluate(_SOURCE, "rgb")
        position = session.viewer.state.position
    assert "error" not in got, got
    # Neuroglancer's precomputed source: a channel dimension "c^" of 3 beside x, y, z, which
    # stays out of the global space (the position has 3 coordinates)
    assert got["names"] == ["x", "y", "z", "c^"] and got["upper"][3] - got["lower"][3] == 3
    assert list(position) == [8, 8, 2]


def test_position_is_the_centre_of_the_view_at_its_scale(root: Any) -> None:
    em = _image(root)
    region = em[2:6, 10:20, 40:60]  # z -3..1, y -10..0, x 140..160 of scale 0
    with view(region) as session:
        assert list(session.viewer.state.position) == [150, -5, -1]
    coarse = voxgate.open(em.url, scale=1)[:, 4:8, 2:10]
    with view(coarse) as session:
        info = _info(session, "em")
        position = list(session.viewer.state.position)
        dims = session.viewer.state.dimensions.to_json()
    # the reference: the relay's info, as Neuroglancer reads it (scale k's voxel i spans
    # i * res_k / res_0 to (i + 1) * res_k / res_0 of scale 0's voxels)
    s0, s1 = info["scales"][0], info["scales"][1]
    lo = np.add(s1["voxel_offset"], (2, 4, 0))  # x, y, z
    hi = np.add(s1["voxel_offset"], (10, 8, coarse.shape[0]))
    ratio = np.array(s1["resolution"]) / np.array(s0["resolution"])
    assert position == pytest.approx(list((lo + hi) / 2 * ratio))
    assert [dims[a][0] * 1e9 for a in "xyz"] == pytest.approx(s0["resolution"])


def test_layer_names_are_kept_and_segments_keyed_by_them(root: Any) -> None:
    seg = _labels(root)
    names = ["my cells", "my-cells", "sub/part é"]
    with view(seg, seg, seg, names=names, segments={"my cells": [BIG]}) as session:
        state = session.viewer.state.to_json()
        assert [layer["name"] for layer in state["layers"]] == names
        assert state["layers"][0]["segments"] == [str(BIG)]
        channels = [session.layers[n].rsplit("/", 1)[-1] for n in names]
        assert len(set(channels)) == 3
        for n in names:  # each layer's source is served
            assert _info(session, n)["type"] == "segmentation"


def test_segments_take_any_iterable_of_ids(root: Any) -> None:
    seg = _labels(root)
    ids = (i for i in [BIG + 1])  # consumed once, by the check
    with view(seg, segments={"seg": ids}) as session:
        state = session.viewer.state.to_json()
    assert state["layers"][0]["segments"] == [str(BIG + 1)]  # decimal, not through a float


@pytest.mark.parametrize("names, match", [
    ("cells", "must be a list of layer names"),
    ([1], "non-empty strings"),
    ([""], "non-empty strings"),
    (["a", "a"], "must differ"),
])
def test_bad_names_are_refused(root: Any, names: Any, match: str) -> None:
    seg = _labels(root)
    with pytest.raises(InvalidRequestError, match=match):
        view(seg, *([seg] * (len(names) - 1 if isinstance(names, list) else 0)), names=names)
