"""voxgate.view's image contrast and starting segments (the audit that found them).

- Image layers of any type but uint8 get ``shaderControls.normalized.range`` (the invlerp of
  Neuroglancer's default image shader) from a bounded sample: left to Neuroglancer, uint16 is
  mapped from [0, 65535] and float32 from [0, 1], and most images draw black.
- The segments selected at the start come from the view's region (its middle slice), not from
  the middle slice of the whole volume.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import voxgate
from voxgate import VoxelSize
from voxgate.viewer import view

from .test_view import Page, page, screenshot  # noqa: F401 - the headless Chromium fixture


# -- viewer: image contrast ----------------------------------------------------------------------
def _image(root: Path, name: str, values: np.ndarray) -> voxgate.Volume:
    vol = voxgate.create(f"zarr://{root}/{name}.zarr", shape=values.shape, dtype=values.dtype,
                         chunks=(8, 32, 32), voxel_size=VoxelSize(z=40, y=8, x=8))
    vol[:] = values
    return voxgate.open(vol.url)


def _gradient(shape: tuple[int, int, int], lo: float, hi: float) -> np.ndarray:
    x = np.linspace(lo, hi, shape[2])
    return np.broadcast_to(x, shape).copy()


def _layer(session: Any, name: str) -> dict[str, Any]:
    layers = session.viewer.state.to_json()["layers"]
    return dict(next(layer for layer in layers if layer["name"] == name))


def test_uint16_image_gets_the_range_of_its_values(tmp_path: Path) -> None:
    em = _image(tmp_path, "em", _gradient((10, 64, 64), 1000, 1200).astype(np.uint16))
    with view(em) as session:
        layer = _layer(session, "em")
    lo, hi = layer["shaderControls"]["normalized"]["range"]
    assert isinstance(lo, int) and isinstance(hi, int)  # Neuroglancer parses ints for uint16
    assert 1000 <= lo <= 1005 and 1195 <= hi <= 1200, (lo, hi)


def test_float_image_gets_the_range_of_its_values(tmp_path: Path) -> None:
    values = _gradient((10, 64, 64), 0.2, 0.3).astype(np.float32)
    values[0] = np.nan  # (not in the middle slice; a NaN there would be left out too)
    values[5, :, :4] = np.nan
    em = _image(tmp_path, "em", values)
    with view(em) as session:
        lo, hi = _layer(session, "em")["shaderControls"]["normalized"]["range"]
    # (the NaN columns x < 4 are left out: the lowest value is x = 4's, 0.2063)
    assert 0.206 <= lo < 0.208 and 0.299 < hi <= 0.3001, (lo, hi)


def test_uint8_image_keeps_neuroglancers_default(tmp_path: Path) -> None:
    em = _image(tmp_path, "em", _gradient((10, 64, 64), 10, 200).astype(np.uint8))
    with view(em) as session:
        assert "shaderControls" not in _layer(session, "em")


def test_uint16_image_is_drawn_in_grey_not_black(tmp_path: Path, page: Page) -> None:  # noqa: F811
    em = _image(tmp_path, "em", _gradient((10, 64, 64), 1000, 1200).astype(np.uint16))
    with view(em) as session:
        page.page.goto(session.url)
        shot = screenshot(session, "view-uint16.png")
    # the gradient is drawn from black to white; mapped from [0, 65535] it is all black (below
    # 5).  Light grey pixels, not the panels' mid-grey background (128) or the coloured frames
    light = (np.ptp(shot, axis=-1) <= 3) & (shot.mean(-1) > 160)
    assert light.mean() > 0.05, light.mean()


# -- viewer: segments of the view's region -------------------------------------------------------
def _labels(root: Path) -> str:
    """Ids 1..4 by x quarter below the middle z, 11..14 above it; two scales."""
    url = f"precomputed://file://{root}/seg"
    vol = voxgate.create(url, shape=(20, 64, 64), dtype="uint64", chunks=(8, 32, 32),
                         voxel_size=(40, 8, 8), kind="segmentation")
    z, _, x = np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij")
    vol[:] = (1 + x // 16 + 10 * (z >= 10)).astype(np.uint64)
    voxgate.downsample(url, 2)
    return url


def test_segments_come_from_the_views_region(tmp_path: Path) -> None:
    url = _labels(tmp_path)
    whole = voxgate.open(url)
    assert len(whole.scales) == 2
    with view(whole) as session:  # the whole volume: its middle slice, z = 10
        assert sorted(int(i) for i in _layer(session, "seg")["segments"]) == [11, 12, 13, 14]
    region = whole[0:6, :, 40:64]  # z 0..6, x 40..64: ids 3 (x 40..48) and 4 (x 48..64)
    with view(region) as session:
        assert [int(i) for i in _layer(session, "seg")["segments"]] == [4, 3]  # largest first
    coarse = voxgate.open(url, scale=1)[0:2, :, 20:32]  # the same place at scale 1
    with view(coarse) as session:
        assert sorted(int(i) for i in _layer(session, "seg")["segments"]) == [3, 4]


def test_image_range_comes_from_the_views_region(tmp_path: Path) -> None:
    values = np.full((10, 64, 64), 30000, np.uint16)
    values[:, :, 32:] = _gradient((10, 64, 32), 1000, 1200).astype(np.uint16)
    em = _image(tmp_path, "em", values)
    with view(em[:, :, 32:]) as session:
        lo, hi = _layer(session, "em")["shaderControls"]["normalized"]["range"]
    assert 1000 <= lo and hi <= 1200, (lo, hi)
