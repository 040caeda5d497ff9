"""``voxgate.create(url, ..., exist_ok=True)`` over a volume that exists: every store hands it
back when the geometry matches, and refuses (RemoteExistsError, data untouched) another dtype,
shape or channel count (``voxgate.remotes.base.check_same_volume``)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.errors import CapabilityNotSupportedError, RemoteExistsError

SHAPE = (4, 20, 24)
GEOMETRY: dict[str, Any] = {"shape": SHAPE, "chunks": (2, 10, 12), "dtype": "uint8",
                            "voxel_size": (40, 8, 8)}


def _tensorstore(root: Path) -> str:
    return "tensorstore://" + json.dumps({"driver": "zarr3", "kvstore": f"file://{root}/ts/"})


# name: (URL of the volume in a tmp folder, whether the store holds several channels)
STORES: dict[str, tuple[Callable[[Path], str], bool]] = {
    "zarr": (lambda root: f"zarr://{root}/vol.zarr", True),
    "n5": (lambda root: f"n5://{root}/vol.n5", True),
    "precomputed": (lambda root: f"precomputed://file://{root}/vol", True),
    "hdf5": (lambda root: f"hdf5://{root}/vol.h5#/volume", True),
    "tiff-file": (lambda root: f"tiff://{root}/vol.tif", True),
    "tiff-slices": (lambda root: f"tiff://{root}/slices", False),
    "knossos": (lambda root: f"knossos://{root}/vol", False),
    "webknossos": (lambda root: f"webknossos://{root}/dataset", True),
    "tensorstore": (_tensorstore, True),
    "mem": (lambda root: f"mem://{root.name}", True),
}


def _data() -> np.ndarray:
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 250 + 1).astype(np.uint8)


@pytest.fixture(params=list(STORES))
def made(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, np.ndarray]:
    """(store name, URL, the data written) of a new uint8 volume holding that data."""
    url = STORES[request.param][0](tmp_path)
    vol = voxgate.create(url, **GEOMETRY)
    data = _data()
    vol[:] = data
    assert np.array_equal(voxgate.open(url).read(), data)
    return request.param, url, data


def _unchanged(url: str, data: np.ndarray) -> None:
    assert np.array_equal(voxgate.open(url).read(), data), f"a refused create changed {url}"


def test_same_geometry_returns_the_existing_volume(made: tuple[str, str, np.ndarray]) -> None:
    _, url, data = made
    again = voxgate.create(url, **GEOMETRY, exist_ok=True)
    assert again.shape == SHAPE and again.dtype == np.uint8
    assert np.array_equal(again.read(), data)
    with pytest.raises(RemoteExistsError):
        voxgate.create(url, **GEOMETRY)
    _unchanged(url, data)


def test_another_dtype_is_refused(made: tuple[str, str, np.ndarray]) -> None:
    store, url, data = made
    if store == "knossos":  # KNOSSOS creates uint8 only: another dtype is refused before that
        with pytest.raises(CapabilityNotSupportedError, match="uint8"):
            voxgate.create(url, **{**GEOMETRY, "dtype": "uint16"}, exist_ok=True)
    else:
        with pytest.raises(RemoteExistsError, match="already holds a uint8 volume") as info:
            voxgate.create(url, **{**GEOMETRY, "dtype": "uint16"}, exist_ok=True)
        assert "uint16" in str(info.value)
    _unchanged(url, data)


def test_another_shape_is_refused(made: tuple[str, str, np.ndarray]) -> None:
    _, url, data = made
    with pytest.raises(RemoteExistsError, match="already holds a uint8 volume") as info:
        voxgate.create(url, **{**GEOMETRY, "shape": (4, 20, 36)}, exist_ok=True)
    message = str(info.value)
    assert str(SHAPE) in message and "(4, 20, 36)" in message
    _unchanged(url, data)


def test_another_channel_count_is_refused(made: tuple[str, str, np.ndarray]) -> None:
    store, url, data = made
    if not STORES[store][1]:  # the store holds one channel: asking for more is refused anyway
        with pytest.raises(CapabilityNotSupportedError):
            voxgate.create(url, **GEOMETRY, num_channels=3, exist_ok=True)
    else:
        with pytest.raises(RemoteExistsError, match=r"with 1 channel\(s\)") as info:
            voxgate.create(url, **GEOMETRY, num_channels=3, exist_ok=True)
        assert "with 3 asked for" in str(info.value)
    _unchanged(url, data)


def assert_exist_ok_checks(url: str, shape: tuple[int, int, int],
                           chunks: tuple[int, int, int]) -> None:
    """For stores with a server (bossdb://, dvid://): a new uint8 volume at ``url`` is handed
    back by create(..., exist_ok=True) with the same geometry, and refused (data unchanged)
    with another dtype or shape."""
    geometry = {"shape": shape, "chunks": chunks, "voxel_size": (40, 8, 8)}
    data = np.random.default_rng(3).integers(1, 255, shape, dtype=np.uint8)
    voxgate.create(url, dtype="uint8", **geometry)[:] = data
    np.testing.assert_array_equal(voxgate.create(url, dtype="uint8", exist_ok=True,
                                                 **geometry).read(), data)
    with pytest.raises(RemoteExistsError, match=r"already holds a uint8 volume.*uint16"):
        voxgate.create(url, dtype="uint16", exist_ok=True, **geometry)
    other = (*shape[:2], shape[2] + 1)
    with pytest.raises(RemoteExistsError,
                       match=re.escape(f"{shape}") + ".*" + re.escape(f"{other}")):
        voxgate.create(url, dtype="uint8", exist_ok=True, **{**geometry, "shape": other})
    np.testing.assert_array_equal(voxgate.open(url).read(), data)
