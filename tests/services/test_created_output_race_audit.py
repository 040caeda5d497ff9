"""A Service's ``out=`` URL made by another process between "does it exist?" and the create.

connected_components and predict leave out the output chunks of only 0 where the output holds
nothing: all of a store the call creates.  They asked whether the URL named a store, then (in
``resolve_output``) asked again and created it, or opened it with ``overwrite=True``.  A store
made by another process between the two questions was opened as existing and still taken for
one this call created: its chunks of the other process's data where the result is 0 were left
as they were (the result read back wrong).  Now the create itself says whether the call made
the store (``resolve_created_output``): a store that appeared since the one check is refused by
the create (RemoteExistsError, naming it), never written sparsely over; one that exists at the
check is opened and written whole where it holds data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.errors import RemoteExistsError
from voxgate.remotes.zarr import ZarrRemote
from voxgate.services.predict import probability_to_uint8, to_unit_float

SHAPE = (12, 40, 36)
CHUNKS = (4, 8, 8)


def _seg(tmp_path: Path) -> tuple[voxgate.Volume, np.ndarray]:
    seg = np.zeros(SHAPE, np.uint64)
    seg[1:3, 2:9, 3:7] = 5  # one object in a corner: most output chunks are all 0
    seg[9:11, 30:38, 28:33] = 9
    vol = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=SHAPE, dtype="uint64",
                         chunks=CHUNKS, voxel_size=(8, 8, 8), kind="segmentation")
    vol[...] = seg
    return vol, seg


def _other_process_makes(monkeypatch: pytest.MonkeyPatch, location_end: str,
                         make: Callable[[], None]) -> list[bool]:
    """ZarrRemote.exists of the output answers False the first time, and the store is made
    (by "another process") just after that answer; later calls see it."""
    seen: list[bool] = []
    real = ZarrRemote.exists.__func__  # type: ignore[attr-defined]

    def exists(cls: type, location: str) -> bool:
        if not location.rstrip("/").endswith(location_end):
            return bool(real(cls, location))
        if not seen:
            seen.append(False)
            make()
            return False
        seen.append(True)
        return bool(real(cls, location))

    monkeypatch.setattr(ZarrRemote, "exists", classmethod(exists))
    return seen


def _foreign(url: str, dtype: str, value: int) -> None:
    """Another process's volume at ``url``, the same shape and chunks, every voxel ``value``."""
    vol = voxgate.create(url, shape=SHAPE, dtype=dtype, chunks=CHUNKS, voxel_size=(8, 8, 8))
    vol[...] = np.full(SHAPE, value, dtype)


def test_connected_components_refuses_an_output_made_since_its_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, _ = _seg(tmp_path)
    url = f"zarr://{tmp_path}/cc.zarr"
    seen = _other_process_makes(monkeypatch, "cc.zarr", lambda: _foreign(url, "uint64", 77))
    with pytest.raises(RemoteExistsError, match=r"cc\.zarr"):
        voxgate.connected_components(src, out=url, overwrite=True, block=(4, 16, 16),
                                     progress=False)
    assert seen[0] is False  # the other process's store appeared after the first answer
    # nothing of the other process's volume was changed
    np.testing.assert_array_equal(voxgate.open(url).read(), np.full(SHAPE, 77, np.uint64))


def test_connected_components_over_an_existing_output_writes_its_zeros(
        tmp_path: Path) -> None:
    import cc3d

    src, seg = _seg(tmp_path)
    url = f"zarr://{tmp_path}/cc.zarr"
    _foreign(url, "uint64", 77)
    out = voxgate.connected_components(src, out=url, overwrite=True, block=(4, 16, 16),
                                       progress=False)
    np.testing.assert_array_equal(voxgate.open(url).read(),
                                  cc3d.connected_components(seg, connectivity=26))
    assert out.url.endswith("cc.zarr")


def _image(tmp_path: Path) -> tuple[voxgate.Volume, np.ndarray]:
    img = np.zeros(SHAPE, np.uint8)
    img[0:3, 0:9, 0:8] = np.arange(3 * 9 * 8, dtype=np.uint8).reshape(3, 9, 8) + 1
    vol = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=SHAPE, dtype="uint8",
                         chunks=CHUNKS, voxel_size=(8, 8, 8))
    vol[...] = img
    return vol, img


def _sqrt(x: np.ndarray) -> np.ndarray:
    return np.sqrt(x)


def test_predict_refuses_an_output_made_since_its_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, _ = _image(tmp_path)
    url = f"zarr://{tmp_path}/pred.zarr"
    seen = _other_process_makes(monkeypatch, "pred.zarr", lambda: _foreign(url, "uint8", 200))
    with pytest.raises(RemoteExistsError, match=r"pred\.zarr"):
        voxgate.predict(_sqrt, src, url, overwrite=True, block=CHUNKS, progress=False)
    assert seen[0] is False
    np.testing.assert_array_equal(voxgate.open(url).read(), np.full(SHAPE, 200, np.uint8))


@pytest.mark.parametrize("made", ["before", "none"])
def test_predict_into_an_output_existing_or_not(tmp_path: Path, made: str) -> None:
    src, img = _image(tmp_path)
    url = f"zarr://{tmp_path}/pred.zarr"
    if made == "before":
        _foreign(url, "uint8", 200)
    kw: dict[str, Any] = {"overwrite": True} if made == "before" else {}
    voxgate.predict(_sqrt, src, url, block=CHUNKS, progress=False, **kw)
    want = probability_to_uint8(np.sqrt(to_unit_float(img)))
    np.testing.assert_array_equal(voxgate.open(url).read(), want)
