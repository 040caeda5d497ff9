"""downsample on odd geometry: negative and odd offsets, odd extents (19 x 23 x 37, no factor
divides them), factors (2, 2, 2) and (1, 2, 2), whole and block by block on several threads;
every written level against the brute-force numpy pyramid (tests/services/numpy_reference.py),
read back by voxgate and by each store's own library, its offset and size against the peer's
rule.

The defect this audit found: on stores whose pyramids lie on the grid through 0
(``pyramid_anchor`` "origin": DVID labelmaps, bossDB-style relay channels) the block grid was
anchored at the box from coordinate 0 to the bounds' end (``grid_anchor``), so voxels at negative
coordinates were never downsampled.  A volume straddling 0 silently kept the fill value over
the negative part of every coarser scale (and coarse voxels cut by 0 were computed from half
their block); a DVID labelmap wholly below 0 could not be downsampled locally at all ("box stop
is before its start"), and proofreading's coarser-scale updates, on the same grid, left the
coarse voxels there stale.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.remotes.dvid import DVIDRepo
from voxgate.testing.dvid import DVIDServerProcess, start_server

from .numpy_reference import downsample_scales

SHAPE = (19, 23, 37)           # z, y, x: odd, and no factor divides them
NEG_OFFSET = (3, -13, -7)      # z, y, x (precomputed voxel_offset (-7, -13, 3))
FACTORS = [(2, 2, 2), (1, 2, 2)]
CHUNKS = (4, 8, 8)


def _data(kind: str, dtype: str, shape: Sequence[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "image":
        return rng.integers(0, 256, shape).astype(dtype)
    # few labels: blocks have ties (the first in C order wins) and clear modes
    return (rng.integers(0, 3, shape) + (2**40 if dtype == "uint64" else 1)).astype(dtype)


def _same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    bad = int(np.count_nonzero(got != want))
    assert bad == 0, f"{what}: {bad} of {want.size} voxels differ"


def _floor_ceil(offset: Sequence[int], shape: Sequence[int], cum: Sequence[int]
                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The offset-anchored level geometry (Igneous, CloudVolume add_scale): offset rounded
    down, size rounded up, both from scale 0 by the cumulative factor."""
    return (tuple(int(np.floor(o / c)) for o, c in zip(offset, cum, strict=True)),
            tuple(int(np.ceil(s / c)) for s, c in zip(shape, cum, strict=True)))


# -- the defect: the grid through 0 below 0 --------------------------------------------------

@pytest.mark.parametrize("kind", ["image", "segmentation"])
@pytest.mark.parametrize("block", [None, (4, 8, 8)])
def test_origin_anchored_pyramid_across_zero(kind: str, block: tuple[int, ...] | None) -> None:
    """A volume from z -5, x -7 (y from +6) on the grid through 0, as a relay makes a bossDB
    channel's (``pyramid_anchor`` set on the instance, as relay/catalog.py does): every coarse
    voxel, those over negative coordinates included, is the numpy one on that grid."""
    offset = (-5, 6, -7)
    data = _data(kind, "uint8", SHAPE, 2)
    vol = voxgate.create(f"mem://odd-origin-{uuid.uuid4().hex}", shape=SHAPE, offset=offset,
                         chunks=CHUNKS, dtype="uint8", voxel_size=(8, 8, 8), kind=kind)
    vol.write(data)
    vol.remote.pyramid_anchor = "origin"
    out = voxgate.downsample(vol, 3, factors=FACTORS, block=block, workers=2)
    want = downsample_scales(data, FACTORS, kind, start=offset)
    # the grid through 0: level 1 starts at floor(-5 / 2) = -3, and is a voxel longer in z
    # than ceil(19 / 2) (the block at -6 holds one voxel of the volume)
    assert tuple(out.scales[1].offset) == (-3, 3, -4)
    assert tuple(out.scales[1].shape) == (10, 12, 19)
    for k, w in enumerate(want, start=1):
        _same(out.at_scale(k).read(), w, f"{kind} block={block} scale {k}")



def test_proofreading_updates_coarser_scales_across_zero() -> None:
    """A merge on that volume rewrites its coarser scales on downsample's grid (``grid_anchor``,
    services/proofread/coarser.py): over negative coordinates too, they are the numpy pyramid
    of the merged labels (they kept the old labels there before)."""
    offset = (-5, 6, -7)
    data = _data("segmentation", "uint32", SHAPE, 7)
    vol = voxgate.create(f"mem://odd-merge-{uuid.uuid4().hex}", shape=SHAPE, offset=offset,
                         chunks=CHUNKS, dtype="uint32", voxel_size=(8, 8, 8),
                         kind="segmentation")
    vol.write(data)
    vol.remote.pyramid_anchor = "origin"
    out = voxgate.downsample(vol, 3, factors=[(2, 2, 2), (2, 2, 2)])
    voxgate.merge(out, [1, 2], into=2, prefer="local")
    merged = np.where(data == 1, 2, data).astype(np.uint32)
    _same(out.read(), merged, "scale 0 after the merge")
    want = downsample_scales(merged, [(2, 2, 2), (2, 2, 2)], "segmentation", start=offset)
    for k, w in enumerate(want, start=1):
        _same(out.at_scale(k).read(), w, f"scale {k} after the merge")

@pytest.fixture(scope="module")
def dvid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DVIDServerProcess]:
    srv = start_server(log=tmp_path_factory.mktemp("dvid") / "server.log")
    yield srv
    srv.stop()


def test_dvid_labelmap_below_zero_downsampled_locally(dvid: DVIDServerProcess) -> None:
    """A DVID labelmap with a coarser scale, at negative z and x (within DVID block -2, which
    its downres handles), downsampled by voxgate's rule (``prefer="local"``): its scale 1 is
    the numpy mode on DVID's grid through 0.  It raised before."""
    repo = DVIDRepo.create(dvid.url, alias=f"odd-{uuid.uuid4().hex[:6]}")
    shape, offset = (13, 23, 11), (-29, 3, -27)
    data = _data("segmentation", "uint64", shape, 3)
    url = repo.url(f"seg_{uuid.uuid4().hex[:8]}")
    vol = voxgate.create(url, shape=shape, offset=offset, chunks=(16, 16, 16), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation", num_scales=2)
    vol.write(data)
    voxgate.downsample(url, prefer="local", block=(16, 16, 16), workers=2)
    again = voxgate.open(url)
    assert tuple(again.scales[1].offset) == (-15, 1, -14)
    (want,) = downsample_scales(data, [(2, 2, 2)], "segmentation", start=offset)
    _same(again.at_scale(1).read(), want, "DVID labelmap scale 1")


# -- offset-anchored stores at a negative offset, read by their own libraries -----------------

def _store_url(store: str, base: Path) -> str:
    return {"precomputed": f"precomputed://file://{base}/pre",
            "zarr3": f"zarr://{base}/a.zarr", "zarr2": f"zarr://{base}/b.zarr",
            "n5": f"n5://{base}/a.n5", "hdf5": f"hdf5://{base}/a.h5",
            "knossos": f"knossos://{base}/kn"}[store]


def _peer_level(store: str, base: Path, k: int) -> np.ndarray:
    """Level k as the store's own library reads it, (z, y, x)."""
    import tensorstore as ts

    if store == "precomputed":
        from cloudvolume import CloudVolume

        cv = CloudVolume(f"file://{base}/pre", mip=k, progress=False, fill_missing=False,
                         bounded=True)
        by_cv = np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0)
        t = ts.open({"driver": "neuroglancer_precomputed", "scale_index": k,
                     "kvstore": f"file://{base}/pre/"}).result()
        _same(np.asarray(t.read().result())[..., 0].transpose(2, 1, 0), by_cv,
              f"tensorstore against CloudVolume, scale {k}")
        return by_cv
    if store in ("zarr3", "zarr2"):
        name = "a.zarr" if store == "zarr3" else "b.zarr"
        driver = "zarr3" if store == "zarr3" else "zarr"
        return np.asarray(ts.open({"driver": driver, "kvstore": f"file://{base}/{name}/{k}"})
                          .result().read().result())
    if store == "n5":
        return np.asarray(ts.open({"driver": "n5", "kvstore": f"file://{base}/a.n5/s{k}"})
                          .result().read().result()).transpose(2, 1, 0)
    if store == "hdf5":
        import h5py

        with h5py.File(base / "a.h5", "r") as f:
            return np.asarray(f[f"volume/s{k}"])
    return voxgate.open(_store_url(store, base)).at_scale(k).read()


@pytest.mark.parametrize("store", ["precomputed", "zarr3", "zarr2", "n5", "hdf5", "knossos"])
@pytest.mark.parametrize("kind", ["image", "segmentation"])
def test_negative_offset_pyramid_every_store(tmp_path: Path, store: str, kind: str) -> None:
    """Scale 0 at (3, -13, -7), downsampled block by block on two threads: each level's offset
    is floor(offset / factor), its shape ceil(shape / factor), and its voxels (read by voxgate
    and by the store's library) are the numpy pyramid grouped from the first voxel."""
    dtype = "uint8" if kind == "image" or store == "knossos" else "uint32"
    data = _data(kind, dtype, SHAPE, 5)
    url = _store_url(store, tmp_path)
    opts = {"zarr_format": 2} if store == "zarr2" else {}
    vol = voxgate.create(url, shape=SHAPE, chunks=CHUNKS, dtype=dtype, voxel_size=(8, 8, 8),
                         kind=kind, offset=NEG_OFFSET, **opts)
    vol[...] = data
    voxgate.downsample(url, 3, factors=FACTORS, block=(4, 8, 8), workers=2)
    again = voxgate.open(url)
    cum = (1, 1, 1)
    for k, (f, want) in enumerate(zip(FACTORS, downsample_scales(data, FACTORS, kind),
                                      strict=True), start=1):
        cum = tuple(c * v for c, v in zip(cum, f, strict=True))
        assert (tuple(again.scales[k].offset), tuple(again.scales[k].shape)) == \
            _floor_ceil(NEG_OFFSET, SHAPE, cum), (store, k)
        _same(again.at_scale(k).read(), want, f"{store} {kind} scale {k}, voxgate")
        _same(_peer_level(store, tmp_path, k), want, f"{store} {kind} scale {k}, peer")


def test_negative_offset_ome_translation_places_levels(tmp_path: Path) -> None:
    """An OME-Zarr written by zarr-python (not voxgate) with a negative translation: the levels
    downsample adds carry translations (NGFF pixel centres) under which each level voxel is the
    floor of the mean of exactly the finer voxels whose centres lie in its extent."""
    import zarr

    data = _data("image", "uint8", SHAPE, 4)
    vs, tr = [40.0, 8.0, 8.0], [3 * 40.0, -13 * 8.0, -7 * 8.0]
    root = zarr.open_group(tmp_path / "ext.zarr", mode="w", zarr_format=2)
    root.create_array("0", shape=SHAPE, chunks=CHUNKS, dtype="uint8")[...] = data
    root.attrs["multiscales"] = [{
        "version": "0.4", "name": "ext",
        "axes": [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": vs}, {"type": "translation", "translation": tr}]}]}]
    voxgate.downsample(f"zarr://{tmp_path}/ext.zarr", 3, factors=FACTORS, block=(4, 8, 8),
                       workers=2)
    root = zarr.open_group(tmp_path / "ext.zarr", mode="r")
    datasets = root.attrs["multiscales"][0]["datasets"]
    assert len(datasets) == 3
    prev, prev_tf = data, {"scale": vs, "translation": tr}
    for ds in datasets[1:]:
        tf = {t["type"]: t[t["type"]] for t in ds["coordinateTransformations"]}
        level = np.asarray(root[ds["path"]])
        members = []
        for ax in range(3):
            fine = prev_tf["translation"][ax] + np.arange(prev.shape[ax]) * prev_tf["scale"][ax]
            centre = tf["translation"][ax] + np.arange(level.shape[ax]) * tf["scale"][ax]
            lo, hi = centre - tf["scale"][ax] / 2, centre + tf["scale"][ax] / 2
            members.append([np.nonzero((fine >= a) & (fine < b))[0] for a, b in zip(lo, hi,
                                                                                    strict=True)])
        want = np.zeros_like(level)
        for z, y, x in np.ndindex(*level.shape):
            block = prev[np.ix_(members[0][z], members[1][y], members[2][x])]
            assert block.size, (ds["path"], z, y, x)
            want[z, y, x] = int(block.astype(np.int64).sum()) // block.size
        _same(level, want, f"OME-Zarr level {ds['path']}")
        prev, prev_tf = level, tf


# -- Igneous on the same negative-offset layer ----------------------------------------------

IGNEOUS = os.environ.get("VOXGATE_IGNEOUS_PYTHON")


@pytest.mark.skipif(  # (as tests/services/test_downsample_igneous.py: CI always runs it)
    not IGNEOUS and not os.environ.get("CI"),
    reason="VOXGATE_IGNEOUS_PYTHON names no Python with the igneous-pipeline package")
def test_negative_offset_matches_igneous_and_cloudvolume(tmp_path: Path) -> None:
    """A precomputed layer at voxel_offset (-7, -13, 3) (x, y, z), odd extents, downsampled by
    Igneous's own tasks and by voxgate: the same info geometry (also what CloudVolume's
    ``add_scale`` gives) and the same scale 1, voxel for voxel.  (Igneous runs two mips, as
    tests/services/test_downsample_igneous.py does: asked for one, its tasks of this layer
    leave mip 1's last x column, odd offset or not, unwritten.)"""
    assert IGNEOUS, ("VOXGATE_IGNEOUS_PYTHON must name the Python of the igneous environment "
                     "(scripts/test.sh makes .venv-igneous and sets it)")
    from cloudvolume import CloudVolume

    shape_xyz, offset_xyz = (45, 37, 9), (-7, -13, 3)
    data_xyz = _data("image", "uint8", shape_xyz, 6)
    urls = {}
    for who in ("igneous", "voxgate"):
        url = f"file://{tmp_path}/{who}"
        info = CloudVolume.create_new_info(1, "image", "uint8", "raw", [4, 4, 40],
                                           list(offset_xyz), list(shape_xyz),
                                           chunk_size=[16, 16, 8])
        cv = CloudVolume(url, info=info, progress=False)
        cv.commit_info()
        cv[:, :, :] = data_xyz[..., None]
        urls[who] = url
    peer = CloudVolume(urls["voxgate"], progress=False)
    peer_scale = peer.add_scale((2, 2, 1))  # in memory: CloudVolume's own rule
    code = textwrap.dedent("""
        import sys
        import igneous.task_creation as tc
        from taskqueue import LocalTaskQueue
        tasks = tc.create_downsampling_tasks(sys.argv[1], mip=0, num_mips=2)
        LocalTaskQueue(parallel=1, progress=False).insert_all(tasks)
        """)
    run = subprocess.run([IGNEOUS, "-c", code, urls["igneous"]], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    voxgate.downsample(f"precomputed://{urls['voxgate']}", num_scales=3, block=(8, 16, 16),
                       workers=2)
    ign = CloudVolume(urls["igneous"], mip=1, progress=False, fill_missing=False, bounded=True)
    vox = CloudVolume(urls["voxgate"], mip=1, progress=False, fill_missing=False, bounded=True)
    for key in ("voxel_offset", "size", "resolution"):
        for mip in (1, 2):
            assert list(vox.info["scales"][mip][key]) == list(ign.info["scales"][mip][key]), \
                (key, mip)
        assert list(vox.info["scales"][1][key]) == list(peer_scale[key]), key
    assert list(vox.info["scales"][2]["voxel_offset"]) == [-2, -4, 3]
    assert list(vox.info["scales"][1]["voxel_offset"]) == [-4, -7, 3]
    got, want = np.asarray(vox[:, :, :]), np.asarray(ign[:, :, :])
    _same(got, want, "voxgate against Igneous, scale 1")
    zyx = np.ascontiguousarray(data_xyz.transpose(2, 1, 0))
    _same(got[..., 0].transpose(2, 1, 0), downsample_scales(zyx, [(1, 2, 2)], "image")[0],
          "scale 1 against numpy")
