"""A scientist's journey over a sparse (mostly absent) segmentation and image, across the paths
that skip absent chunks: ``voxgate.copy``, the block-wise Services, ``voxgate.downsample``
(absent blocks' levels left absent), ``bisect_absent`` and the relay's layer files.

1. A uint64 segmentation (odd shape, voxel offset, objects across chunk borders and one at the
   far corner) and a uint8 image, written sparsely as precomputed on S3 (moto on 127.0.0.1).
2. Downsampled to 3 levels; meshes and skeletons written into the layer (unsharded, then
   sharded); label_stats; connected_components into a new store.
3. Served by a relay (in this process) and read through its precomputed dialect by CloudVolume
   and its bossDB dialect by ``intern``: every level, aligned, unaligned, half-absent and wholly
   absent cutouts; meshes and skeletons; each against brute-force numpy / cc3d.
4. A write through the relay into an absent region, read back at level 0 through the relay
   and directly; a downsample through the relay's job; a copy to zarr on disk read by
   zarr-python.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate import Box
from voxgate.geometry import chunk_boxes

from .ports import free_port
from .relay.conftest import serve_in_thread
from .services.numpy_reference import downsample_scales

SHAPE = (37, 151, 139)  # z, y, x
OFFSET = (3, 5, 7)
CHUNKS = (8, 16, 16)
VOXEL = (16, 8, 8)
FACTORS = [(1, 2, 2), (2, 2, 2)]
#: objects (z, y, x boxes relative to the volume's first voxel): across chunk borders, at the
#: lower corner, at the far (partial) corner
OBJECTS = [((0, 0, 0), (3, 6, 5)), ((6, 13, 29), (11, 20, 36)),
           ((30, 140, 130), (37, 151, 139)), ((17, 40, 3), (19, 47, 11))]
#: a region of level 0 (dataset coordinates) whose chunks no object touches: absent until
#: step 4 writes into it (unaligned, across 2 x 1 x 2 chunks; nor do the coarser levels' chunks
#: over it)
HOLE = Box((8, 85, 87), (16, 99, 101))


def _voxels(dtype: str, kind: str) -> np.ndarray:
    rng = np.random.default_rng(5)
    want = np.zeros(SHAPE, dtype)
    for i, (a, b) in enumerate(OBJECTS):
        part = want[tuple(slice(x, y) for x, y in zip(a, b, strict=True))]
        if kind == "segmentation":
            part[...] = 2**40 + i
            part[rng.random(part.shape) < 0.2] = 100 + i
        else:
            part[...] = rng.integers(1, 256, part.shape)
    return want


def _write_sparse(url: str, want: np.ndarray, kind: str) -> voxgate.Volume:
    vol = voxgate.create(url, shape=SHAPE, dtype=want.dtype.name, chunks=CHUNKS,
                         voxel_size=VOXEL, offset=OFFSET, kind=kind)
    for a, b in OBJECTS:  # only the objects' own voxels: their chunks are stored, no others
        sl = tuple(slice(x, y) for x, y in zip(a, b, strict=True))
        start = [x + o for x, o in zip(a, OFFSET, strict=True)]
        stop = [x + o for x, o in zip(b, OFFSET, strict=True)]
        vol.remote.write(Box(start, stop), want[sl], 0)
    return voxgate.open(url, mode="r+")


class Relay:
    """A relay app on a thread of this process serving ``channels`` ({name: upstream URL})
    as c/e/<name>, open to every client."""

    def __init__(self, channels: dict[str, str], tmp: Path) -> None:
        from voxgate.relay.app import build_app
        from voxgate.relay.config import CacheConfig, ChannelConfig, RelayConfig

        config = RelayConfig(upstream_timeout=60.0, state_path=tmp / "state.json",
                             cache=CacheConfig(memory_bytes=2**24),
                             channels=[ChannelConfig("c", "e", n, u)
                                       for n, u in channels.items()])
        self.port = free_port()
        config.port = self.port
        self.app = build_app(config)
        self.server, self.thread = serve_in_thread(self.app, self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def cv(self, name: str, mip: int, **kw: Any) -> Any:
        from cloudvolume import CloudVolume

        return CloudVolume(f"precomputed://{self.url}/precomputed/c/e/{name}", mip=mip,
                           progress=False, cache=False, **kw)

    def intern(self) -> Any:
        from intern.remote.boss import BossRemote

        return BossRemote({"protocol": "http", "host": f"127.0.0.1:{self.port}",
                           "token": "any"})

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.app.state.relay.cache.close()


def _cv_cut(cv: Any, box: Box) -> np.ndarray:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return np.asarray(cv[x0:x1, y0:y1, z0:z1])[..., 0].transpose(2, 1, 0)


def _intern_cut(rmt: Any, name: str, level: int, box: Box) -> np.ndarray:
    ch = rmt.get_channel(name, "c", "e")
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return np.asarray(rmt.get_cutout(ch, level, [x0, x1], [y0, y1], [z0, z1]))


def _rows(v: np.ndarray) -> np.ndarray:
    """A mesh's vertices as a sorted set of rows (meshes built block-wise list them in
    another order)."""
    return np.unique(np.asarray(v, np.float32), axis=0)


def _levels(want: np.ndarray, kind: str) -> list[np.ndarray]:
    return [want, *downsample_scales(want, FACTORS, kind)]


def _cutouts(bounds: Box, chunks: Any, stored: Box, absent: Box) -> dict[str, Box]:
    """Aligned (one whole chunk at the start), unaligned, one across stored and absent chunks,
    one wholly absent, the whole level."""
    o = bounds.start
    aligned = Box(o, [a + c for a, c in zip(o, chunks, strict=True)]).intersect(bounds)
    unaligned = Box([a + 1 for a in o], [min(a + 2 * c - 3, b) for a, c, b in
                                         zip(o, chunks, bounds.stop, strict=True)])
    return {"aligned": aligned, "unaligned": unaligned, "mixed": stored, "absent": absent,
            "whole": bounds}


@pytest.fixture
def journey(s3_bucket: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    seg = _voxels("uint64", "segmentation")
    img = _voxels("uint8", "image")
    urls = {"seg": f"precomputed://s3://{s3_bucket}/seg",
            "img": f"precomputed://s3://{s3_bucket}/img"}
    _write_sparse(urls["seg"], seg, "segmentation")
    _write_sparse(urls["img"], img, "image")
    yield {"seg": seg, "img": img, "urls": urls, "bucket": s3_bucket}


def test_a_sparse_journey_on_s3_through_the_relay(journey: dict[str, Any], tmp_path: Path,
                                                   cloudvolume: Any) -> None:
    """Steps 1-4 of the module docstring on precomputed layers on S3, every read against
    brute force (numpy pyramid, cc3d, np.unique, the meshes and skeletons voxgate wrote)."""
    import cc3d
    import zarr

    from voxgate.formats.mesh.precomputed import write_meshes
    from voxgate.formats.skeleton.precomputed import write_skeletons

    seg, img, urls = journey["seg"], journey["img"], journey["urls"]
    kinds = {"seg": "segmentation", "img": "image"}
    wants = {"seg": seg, "img": img}
    # -- 2. the pyramid, meshes, skeletons, stats, components ----------------------------------
    for url in urls.values():
        voxgate.downsample(url, 3, factors=FACTORS, block=(8, 32, 32))
    levels = {n: _levels(wants[n], kinds[n]) for n in wants}
    vol = voxgate.open(urls["seg"])
    for k in range(3):  # the pyramid stays sparse: absent chunks at every level
        assert vol.remote.absent_chunks(vol.remote.meta.scale(k).bounds, k), k
    ids = np.unique(seg[seg != 0])
    stats = voxgate.label_stats(vol, block=(8, 32, 32))
    np.testing.assert_array_equal(stats["id"].to_numpy(), ids)
    np.testing.assert_array_equal(stats["voxel_count"].to_numpy(),
                                  [int((seg == i).sum()) for i in ids])
    cc_url = f"precomputed://s3://{journey['bucket']}/cc"
    voxgate.connected_components(vol, out=cc_url, block=(8, 32, 32))
    brute = cc3d.connected_components(seg, connectivity=26)
    np.testing.assert_array_equal(voxgate.open(cc_url).read(), brute)
    meshes = voxgate.mesh(vol, block=(8, 32, 32))
    skels = voxgate.skeletonize(vol, dust_threshold=0, block=(8, 32, 32))
    assert sorted(meshes) == ids.tolist()
    layer = urls["seg"]
    write_meshes(layer, meshes, format="legacy")
    write_skeletons(layer, skels)
    # a copy of it on S3 (voxgate.copy S3 -> S3), with sharded meshes and skeletons
    urls["segsh"] = f"precomputed://s3://{journey['bucket']}/segsh"
    voxgate.copy(layer, urls["segsh"], progress=False)
    copied = voxgate.open(urls["segsh"])
    for k in range(3):  # (copied block by block: a block holding a stored chunk is written)
        sc = vol.remote.meta.scale(k)
        assert set(copied.remote.absent_chunks(sc.bounds, k)) <= set(
            vol.remote.absent_chunks(sc.bounds, k)), k
        np.testing.assert_array_equal(copied.remote.read(sc.bounds, k), levels["seg"][k])
    write_meshes(urls["segsh"], meshes, format="multires", sharded=True)
    write_skeletons(urls["segsh"], skels, sharded=True)
    # CloudVolume straight on S3: absent chunks are an error unless fill_missing is set, at
    # level 0 as at the coarser levels downsample left absent where level 0 is
    from cloudvolume.exceptions import EmptyVolumeException

    for k in range(3):
        want = levels["seg"][k]
        cv = cloudvolume("seg", mip=k, fill_missing=True)
        bounds = vol.remote.meta.scale(k).bounds
        np.testing.assert_array_equal(_cv_cut(cv, bounds), want, err_msg=str(k))
        with pytest.raises(EmptyVolumeException):
            _cv_cut(cloudvolume("seg", mip=k), bounds)
    # -- 3. through the relay --------------------------------------------------------------------
    relay = Relay(urls, tmp_path)
    try:
        rmt = relay.intern()
        for name in ("seg", "img"):
            for k in range(3):
                sc = vol.remote.meta.scale(k)
                f = [1, 1, 1]
                for step in FACTORS[:k]:
                    f = [a * b for a, b in zip(f, step, strict=True)]
                # a stored object's box at this level, grown by a voxel and a chunk: stored and
                # absent chunks both
                a, b = OBJECTS[1]
                lo = [(x + o) // g - 1 for x, o, g in zip(a, OFFSET, f, strict=True)]
                hi = [-(-(x + o) // g) + c for x, o, g, c in zip(b, OFFSET, f, sc.chunks,
                                                                  strict=True)]
                mixed = Box(lo, hi).intersect(sc.bounds)
                absent = Box([(x) // g for x, g in zip(HOLE.start, f, strict=True)],
                             [-(-x // g) for x, g in zip(HOLE.stop, f, strict=True)])
                touched = len(list(chunk_boxes(absent, sc.chunks, sc.bounds)))
                assert len(vol.remote.absent_chunks(absent, k)) == touched, k
                assert 0 < len(vol.remote.absent_chunks(mixed, k)) < len(
                    list(chunk_boxes(mixed, sc.chunks, sc.bounds))), k
                want = levels[name][k]
                # (fill_missing=False: the relay serves absent chunks as the fill value)
                cv = relay.cv(name, k, fill_missing=False, bounded=True)
                for what, box in _cutouts(sc.bounds, sc.chunks, mixed, absent).items():
                    sl = box.slices(sc.bounds.start)
                    np.testing.assert_array_equal(_cv_cut(cv, box), want[sl],
                                                  err_msg=f"cv {name} {k} {what}")
                    np.testing.assert_array_equal(_intern_cut(rmt, name, k, box), want[sl],
                                                  err_msg=f"intern {name} {k} {what}")
        cv = relay.cv("seg", 0)
        sharded = relay.cv("segsh", 0)
        on_s3 = cloudvolume("segsh")
        for i in ids.tolist():
            m = cv.mesh.get(i, fuse=False)
            got = m[i] if isinstance(m, dict) else m
            np.testing.assert_array_equal(_rows(got.vertices), _rows(meshes[i].vertices),
                                          err_msg=str(i))
            sk = cv.skeleton.get(i)
            np.testing.assert_array_equal(sk.vertices, skels[i].vertices, err_msg=str(i))
            np.testing.assert_array_equal(sk.edges, skels[i].edges, err_msg=str(i))
            # sharded (multires Draco): through the relay as CloudVolume reads S3 itself, and
            # within a quantization step of the meshes written
            m = sharded.mesh.get(i)
            mine = m[i] if isinstance(m, dict) else m
            m = on_s3.mesh.get(i)
            theirs = m[i] if isinstance(m, dict) else m
            np.testing.assert_array_equal(_rows(mine.vertices), _rows(theirs.vertices))
            lo, hi = meshes[i].vertices.min(0), meshes[i].vertices.max(0)
            np.testing.assert_allclose(mine.vertices.min(0), lo, atol=1.0, err_msg=str(i))
            np.testing.assert_allclose(mine.vertices.max(0), hi, atol=1.0, err_msg=str(i))
            sk = sharded.skeleton.get(i)
            np.testing.assert_array_equal(sk.vertices, skels[i].vertices, err_msg=str(i))
            np.testing.assert_array_equal(sk.edges, skels[i].edges, err_msg=str(i))
        # -- 4. a write into the absent hole, through the relay ------------------------------------
        patch = np.random.default_rng(9).integers(1, 2**50, tuple(HOLE.shape), dtype=np.uint64)
        ch = rmt.get_channel("seg", "c", "e")
        (z0, y0, x0), (z1, y1, x1) = HOLE.start, HOLE.stop
        rmt.create_cutout(ch, 0, [x0, x1], [y0, y1], [z0, z1], patch)
        seg2 = seg.copy()
        seg2[HOLE.slices(OFFSET)] = patch
        np.testing.assert_array_equal(_intern_cut(rmt, "seg", 0, HOLE), patch)
        np.testing.assert_array_equal(_cv_cut(relay.cv("seg", 0), HOLE), patch)
        np.testing.assert_array_equal(voxgate.open(layer).remote.read(HOLE, 0), patch)
        voxgate.downsample(f"bossdb://{relay.url}/c/e/seg", 3)
        levels2 = _levels(seg2, "segmentation")
        direct = voxgate.open(layer)
        for k in range(3):
            sc = direct.remote.meta.scale(k)
            np.testing.assert_array_equal(_cv_cut(relay.cv("seg", k), sc.bounds), levels2[k],
                                          err_msg=str(k))
            np.testing.assert_array_equal(voxgate.open(layer, scale=k).read(), levels2[k],
                                          err_msg=str(k))
    finally:
        relay.stop()
    for k in (1, 2):  # the coarse chunks over the hole, absent before, are now stored
        sc = direct.remote.meta.scale(k)
        f = np.prod(FACTORS[:k], axis=0)
        hole = Box([x // g for x, g in zip(HOLE.start, f, strict=True)],
                   [-(-x // g) for x, g in zip(HOLE.stop, f, strict=True)])
        assert not direct.remote.absent_chunks(hole, k), k
    # -- the copy to zarr on disk, on a grid of its own, read by zarr-python ----------------------
    dest = tmp_path / "seg.zarr"
    report = voxgate.copy(layer, f"zarr://{dest}", progress=False)
    assert report.absent_counts, report
    group = zarr.open_group(str(dest), mode="r")
    attrs = group.attrs.asdict()
    datasets = attrs.get("ome", attrs)["multiscales"][0]["datasets"]
    assert len(datasets) == 3
    for k, d in enumerate(datasets):
        np.testing.assert_array_equal(np.asarray(group[d["path"]][...]), levels2[k],
                                      err_msg=f"scale {k}")
    # and level 0 into a zarr array on a grid of its own (chunks across the source's)
    other = tmp_path / "other.zarr"
    voxgate.create(f"zarr://{other}", shape=SHAPE, dtype="uint64", chunks=(5, 12, 20),
                   voxel_size=VOXEL, offset=OFFSET, kind="segmentation")
    voxgate.copy(layer, f"zarr://{other}", scales=[0], progress=False)
    group = zarr.open_group(str(other), mode="r")
    attrs = group.attrs.asdict()
    path = attrs.get("ome", attrs)["multiscales"][0]["datasets"][0]["path"]
    np.testing.assert_array_equal(np.asarray(group[path][...]), seg2)


def test_a_sparse_journey_on_zarr_on_disk(tmp_path: Path) -> None:
    """The same volumes as zarr (OME-Zarr) on disk: the pyramid stays sparse and reads, with
    zarr-python, as the numpy pyramid; label_stats, cc (into a new store), mesh and
    skeletonize block by block answer what numpy, cc3d and the whole-volume kernels say."""
    import cc3d
    import zarr

    from voxgate.services.mesh import mesh_kernel

    seg = _voxels("uint64", "segmentation")
    img = _voxels("uint8", "image")
    for name, want, kind in (("seg", seg, "segmentation"), ("img", img, "image")):
        url = f"zarr://{tmp_path / name}.zarr"
        _write_sparse(url, want, kind)
        voxgate.downsample(url, 3, factors=FACTORS, block=(8, 32, 32))
        vol = voxgate.open(url)
        group = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r")
        attrs = group.attrs.asdict()
        datasets = attrs.get("ome", attrs)["multiscales"][0]["datasets"]
        for k, (d, ref) in enumerate(zip(datasets, _levels(want, kind), strict=True)):
            np.testing.assert_array_equal(np.asarray(group[d["path"]][...]), ref,
                                          err_msg=f"{name} {k}")
            sc = vol.remote.meta.scale(k)
            f = np.prod(FACTORS[:k], axis=0) if k else (1, 1, 1)
            hole = Box([x // g for x, g in zip(HOLE.start, f, strict=True)],
                       [-(-x // g) for x, g in zip(HOLE.stop, f, strict=True)])
            touched = len(list(chunk_boxes(hole, sc.chunks, sc.bounds)))
            assert len(vol.remote.absent_chunks(hole, k)) == touched, (name, k)
    vol = voxgate.open(f"zarr://{tmp_path / 'seg'}.zarr")
    ids = np.unique(seg[seg != 0])
    stats = voxgate.label_stats(vol, block=(8, 32, 32))
    np.testing.assert_array_equal(stats["id"].to_numpy(), ids)
    np.testing.assert_array_equal(stats["voxel_count"].to_numpy(),
                                  [int((seg == i).sum()) for i in ids])
    out = f"zarr://{tmp_path / 'cc'}.zarr"
    voxgate.connected_components(vol, out=out, block=(8, 32, 32))
    group = zarr.open_group(str(tmp_path / "cc.zarr"), mode="r")
    attrs = group.attrs.asdict()
    path = attrs.get("ome", attrs)["multiscales"][0]["datasets"][0]["path"]
    np.testing.assert_array_equal(np.asarray(group[path][...]),
                                  cc3d.connected_components(seg, connectivity=26))
    meshes = voxgate.mesh(vol, block=(8, 32, 32))
    whole = mesh_kernel(seg, VOXEL, OFFSET, close=True)
    assert sorted(meshes) == sorted(whole) == ids.tolist()
    for i in ids.tolist():
        np.testing.assert_array_equal(_rows(meshes[i].vertices), _rows(whole[i].vertices))
    skels = voxgate.skeletonize(vol, dust_threshold=0, block=(8, 32, 32))
    assert sorted(skels) == ids.tolist()
