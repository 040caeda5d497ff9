"""Services' ``out=`` on every store voxgate creates (helper audit): the output keeps the dtype,
kind, voxel size, offset and shape the call asked for or the source had; a store that cannot
hold them refuses before anything is made; a second run and a failed run behave as
docs/services/map_blocks.md says."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    RemoteExistsError,
)
from voxgate.remotes.boss import BossProject
from voxgate.remotes.dvid import DVIDRepo

from ..relay.conftest import RW, RelayProcess, token_relay_in_env
from ..relay.conftest import dvid as dvid  # (the module's DVID test server fixture)

SHAPE, CHUNKS, VS, OFFSET = (16, 32, 48), (16, 16, 16), (30.0, 4.0, 5.0), (3, 5, 7)
DATA = np.random.default_rng(0).integers(0, 4, SHAPE, dtype=np.uint8)


@pytest.fixture(scope="module")
def boss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    d = tmp_path_factory.mktemp("boss")
    with token_relay_in_env(d, "64 MiB") as r:
        yield r


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> voxgate.Volume:
    root = tmp_path_factory.mktemp("src")
    vol = voxgate.create(f"zarr://{root}/src.zarr", shape=SHAPE, chunks=CHUNKS, dtype="uint8",
                         voxel_size=VS, offset=OFFSET)
    vol[:] = DATA
    return vol


def _store(name: str, root: Path, tag: str, dvid_url: Callable[[str], str]
           ) -> tuple[str, dict[str, Any]]:
    return {
        "zarr2": (f"zarr://{root}/{tag}.zarr", {"zarr_format": 2}),
        "zarr3": (f"zarr://{root}/{tag}.zarr", {}),
        "n5": (f"n5://{root}/{tag}.n5", {}),
        "hdf5": (f"hdf5://{root}/{tag}.h5", {}),
        "precomputed": (f"precomputed://file://{root}/{tag}", {}),
        "tiff": (f"tiff://{root}/{tag}.tif", {}),
        "webknossos": (f"webknossos://{root}/{tag}_wk", {}),
        "dvid": (dvid_url(tag), {}),
    }[name]


STORES = ("zarr2", "zarr3", "n5", "hdf5", "precomputed", "tiff", "webknossos", "dvid")


def _geometry(vol: voxgate.Volume, dtype: str, kind: str) -> None:
    again = voxgate.open(vol.url)
    assert again.dtype == np.dtype(dtype), vol.url
    assert again.kind == kind, vol.url
    assert again.voxel_size.zyx() == VS, vol.url
    assert tuple(again.bounds.start) == OFFSET and again.shape == SHAPE, vol.url


@pytest.mark.parametrize("store", STORES)
def test_outputs_keep_what_was_asked_on_every_store(store: str, src: voxgate.Volume,
                                                    tmp_path: Path, dvid: Any) -> None:
    """Guard: map_blocks (a uint32 segmentation asked for), connected_components, predict and
    copy into a store they create keep dtype, kind, voxel size, offset, shape and voxels."""
    repo = DVIDRepo.create(dvid.url, alias=tmp_path.name)
    mk = lambda tag: _store(store, tmp_path, tag, repo.url)  # noqa: E731
    url, opts = mk("mb")
    voxgate.map_blocks(lambda a: a.astype(np.uint32) * 7, src, out=url, dtype="uint32",
                       kind="segmentation", block=(16, 16, 16), **opts)
    _geometry(voxgate.open(url), "uint32", "segmentation")
    np.testing.assert_array_equal(voxgate.open(url).read(), DATA.astype(np.uint32) * 7)

    url, opts = mk("cc")
    if store == "dvid":  # (a labelmap's blocks are multiples of 16: the source's chunks are)
        opts = {"block_size": (16, 16, 16)}
    voxgate.connected_components(src, out=url, **opts)
    _geometry(voxgate.open(url), "uint64", "segmentation")
    np.testing.assert_array_equal(voxgate.open(url).read(), voxgate.connected_components(DATA))

    url, opts = mk("pr")
    voxgate.predict(lambda a: a, src, out=url, progress=False, **opts)
    _geometry(voxgate.open(url), "uint8", "image")

    url, opts = mk("cp")
    voxgate.copy(src, url, progress=False, **opts)
    _geometry(voxgate.open(url), "uint8", "image")
    np.testing.assert_array_equal(voxgate.open(url).read(), DATA)
    voxgate.copy(src, url, progress=False)  # the same copy again: nothing left to do


def _collections(boss: RelayProcess) -> list[str]:
    return list(BossProject(boss.url, RW).list_collections())


def test_bossdb_narrow_segmentation_refused_before_anything_is_made(
        boss: RelayProcess, src: voxgate.Volume, tmp_path: Path) -> None:
    """map_blocks(dtype='uint8', kind='segmentation') into bossdb:// made a uint64 annotation
    channel without a word; a copy of a uint32 segmentation made the collection, experiment
    and channel, then refused (the channel is uint64).  Both are refused now, naming uint64,
    before anything is made on the server."""
    seg32 = voxgate.create(f"zarr://{tmp_path}/seg32.zarr", shape=SHAPE, chunks=CHUNKS,
                           dtype="uint32", kind="segmentation", voxel_size=VS, offset=OFFSET)
    seg32[:] = DATA
    calls = [
        ("mb", lambda u: voxgate.map_blocks(lambda a: a, src, out=u, dtype="uint8",
                                            kind="segmentation")),
        ("cc", lambda u: voxgate.connected_components(src, out=u, dtype=np.uint32)),
        ("cp", lambda u: voxgate.copy(seg32, u, progress=False)),
    ]
    for tag, call in calls:
        coll = f"narrow{tag}"
        with pytest.raises(InvalidRequestError, match=r"uint64 ids.*dtype='uint64'"):
            call(f"bossdb://{boss.url}/{coll}/exp/ch")
        assert coll not in _collections(boss), tag


def test_bossdb_unsupported_image_dtype_refused_before_anything_is_made(
        boss: RelayProcess, src: voxgate.Volume) -> None:
    """A float32 map_blocks output into bossdb:// made the collection, frame and experiment
    before bossDB refused the channel; now refused first, saying which types it holds."""
    with pytest.raises(InvalidRequestError, match=r"image channel holds uint8.*not float32"):
        voxgate.map_blocks(lambda a: a.astype(np.float32), src,
                           out=f"bossdb://{boss.url}/floaty/exp/ch", dtype="float32")
    assert "floaty" not in _collections(boss)


def test_bossdb_outputs_keep_what_was_asked(boss: RelayProcess, src: voxgate.Volume) -> None:
    """Guard: uint64 segmentations, uint16 images and copies into bossdb:// keep their dtype,
    kind, voxel size, offset, shape and voxels."""
    url = f"bossdb://{boss.url}/fine/mb/ch"
    voxgate.map_blocks(lambda a: a.astype(np.uint16) * 300, src, out=url, dtype="uint16")
    _geometry(voxgate.open(url), "uint16", "image")
    np.testing.assert_array_equal(voxgate.open(url).read(), DATA.astype(np.uint16) * 300)
    url = f"bossdb://{boss.url}/fine/cc/ch"
    voxgate.connected_components(src, out=url)
    _geometry(voxgate.open(url), "uint64", "segmentation")
    np.testing.assert_array_equal(voxgate.open(url).read(), voxgate.connected_components(DATA))
    url = f"bossdb://{boss.url}/fine/cp/ch"
    voxgate.copy(src, url, progress=False)
    voxgate.copy(src, url, progress=False)
    _geometry(voxgate.open(url), "uint8", "image")


def test_knossos_refuses_wide_outputs_before_anything_is_made(src: voxgate.Volume,
                                                              tmp_path: Path) -> None:
    """Guard: KNOSSOS cubes hold uint8; a uint16 output is refused with nothing made."""
    with pytest.raises(CapabilityNotSupportedError, match="uint8 voxels, not uint16"):
        voxgate.map_blocks(lambda a: a.astype(np.uint16), src, out=f"knossos://{tmp_path}/k",
                           dtype="uint16")
    assert not (tmp_path / "k").exists()


def _fails_at_third() -> Callable[[np.ndarray], np.ndarray]:
    calls = [0]

    def fn(a: np.ndarray) -> np.ndarray:
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("out of memory")
        return a + 1

    return fn


@pytest.mark.parametrize("store", ["zarr3", "hdf5", "precomputed", "tiff", "dvid"])
def test_failed_run_says_what_was_written_and_how_to_finish(
        store: str, src: voxgate.Volume, tmp_path: Path, dvid: Any) -> None:
    """A map_blocks run into an out= URL it created that fails at its third block said only
    which block failed: the store it made is there, part written, and the same call is then
    refused (it exists).  The error now says how many blocks were written and to run again with
    overwrite=True, which completes it."""
    repo = DVIDRepo.create(dvid.url, alias=tmp_path.name)
    url, opts = _store(store, tmp_path, "fail", repo.url)
    with pytest.raises(RuntimeError, match="out of memory") as info:
        voxgate.map_blocks(_fails_at_third(), src, out=url, block=(16, 16, 16), workers=1,
                           **opts)
    note = (info.value.__notes__ or [""])[-1]
    # (6 blocks, 24 on DVID, whose 16-voxel grid runs through 0, not through the offset)
    assert re.search(r"\b2 of (6|24) blocks were written", note), note
    assert "overwrite=True" in note, note
    with pytest.raises(RemoteExistsError, match="overwrite=True"):
        voxgate.map_blocks(lambda a: a + 1, src, out=url, block=(16, 16, 16))
    done = voxgate.map_blocks(lambda a: a + 1, src, out=url, block=(16, 16, 16),
                              overwrite=True)
    np.testing.assert_array_equal(done.read(), DATA + 1)
    # into a given Volume, the same call again writes every block (no overwrite= needed)
    with pytest.raises(RuntimeError) as info:
        voxgate.map_blocks(_fails_at_third(), src, out=done, block=(16, 16, 16), workers=1)
    assert "Run the same call again" in info.value.__notes__[-1]


def test_failed_predict_and_connected_components_say_how_to_finish(
        src: voxgate.Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """predict and connected_components into an out= URL they created that stop part-way said
    nothing of the store left behind (the same call then refused as existing); they now say it
    may hold part of the result and to run again with overwrite=True, which completes it."""
    url = f"zarr://{tmp_path / 'p.zarr'}"
    with pytest.raises(RuntimeError, match="out of memory") as info:
        voxgate.predict(_fails_at_third(), src, out=url, block=(16, 16, 16), workers=1,
                        progress=False)
    note = info.value.__notes__[-1]
    assert f"predict into {url}" in note and "overwrite=True" in note, note
    done = voxgate.predict(lambda a: a + 1, src, out=url, block=(16, 16, 16), overwrite=True,
                           progress=False)
    whole = voxgate.predict(lambda a: a + 1, src, block=(16, 16, 16), progress=False)
    np.testing.assert_array_equal(done.read(), np.asarray(whole))

    cc_module = importlib.import_module("voxgate.services.connected_components")
    real, calls = cc_module._label_block, [0]

    def label_block(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(cc_module, "_label_block", label_block)
    url = f"zarr://{tmp_path / 'cc.zarr'}"
    with pytest.raises(RuntimeError, match="out of memory") as info:
        voxgate.connected_components(src, out=url, block=(16, 16, 16), workers=1,
                                     progress=False)
    note = info.value.__notes__[-1]
    assert f"connected_components into {url}" in note and "overwrite=True" in note, note
    monkeypatch.setattr(cc_module, "_label_block", real)
    labels = voxgate.connected_components(src, out=url, overwrite=True, progress=False)
    want = voxgate.connected_components(src, progress=False)
    np.testing.assert_array_equal(labels.read(), np.asarray(want))
