"""Journeys audit 3: a scientist's walk through several parts, checked at every seam against a
brute-force numpy reference computed on the original array (tests/services/numpy_reference.py).

Odd shapes (11 x 37 x 45 voxels, z y x), an offset that is a multiple of no chunk (3, 5, 7),
anisotropic voxels (40 x 8 x 8 nm: voxgate halves y and x), one relay process for all:

1. HDF5 (uint16 image, uint64 labels with ids above 2**53 and 2**63), N5 (float32 image, uint32
   labels up to 2**32 - 1) and WEBKNOSSOS (uint16 image, mags on the grid through 0) made and
   downsampled by voxgate (average and mode), served by the relay's precomputed dialect, read by
   CloudVolume and tensorstore at levels 0 and 1;
2. intern (the PyPI client) makes a project on a frame starting at odd coordinates and writes
   uint64 labels at an offset inside it through the bossDB dialect; the relay's downsample job
   runs; CloudVolume and tensorstore read levels 1 and 2 through the precomputed dialect; label
   statistics (voxgate's server path and intern's ids and tight boxes) and a mesh of one
   segment through the relay agree with numpy;
3. a copy from the relay's precomputed dialect into OME-Zarr, with progress, interrupted and
   resumed, read back by zarr-python and ome-zarr-py;
4. that channel of journey 2 copied through each of the relay's two dialects: the copies must
   place the coarse scales where the voxels lie.  Through the precomputed dialect voxgate took
   the blocks from the first voxel (the format says nothing else), so an OME-Zarr copy put
   levels 1 and 2 half a coarse voxel away from the bossDB dialect's copy (x 60 nm instead of
   52 at level 1), and a WEBKNOSSOS copy was refused; the relay's info now names the anchor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from tests.relay.conftest import RW, RelayProcess, free_port, start_relay
from tests.services.numpy_reference import downsample_scales

SHAPE = (11, 37, 45)           # z, y, x
OFFSET = (3, 5, 7)             # a multiple of no chunk
VOXEL = (40.0, 8.0, 8.0)       # nm, z y x
FACTORS = [(1, 2, 2), (1, 2, 2)]  # voxgate's default for 40 x 8 x 8 nm, 3 scales
CHUNKS = (4, 16, 16)

#: journey 1's stores: (URL under the test's directory, kind, pyramid on the grid through 0)
SOURCES = {
    "h5img": ("hdf5://{d}/a.h5#/img", "image", False),
    "h5seg": ("hdf5://{d}/a.h5#/seg", "segmentation", False),
    "n5img": ("n5://{d}/b.n5/img", "image", False),
    "n5seg": ("n5://{d}/b.n5/seg", "segmentation", False),
    "wkimg": ("webknossos://{d}/wk/img", "image", True),
}

#: journey 2's project: its frame (z, y, x) and the box intern writes inside it
FRAME_START, FRAME_SHAPE = (3, 5, 7), (11, 37, 45)
WRITE_BOX = ((4, 13), (6, 40), (9, 50))
BIG = 2**63 + 5                # the id journey 2 meshes


def _level0(name: str, rng: np.random.Generator) -> np.ndarray:
    if name == "h5img" or name == "wkimg":
        return rng.integers(0, 65536, SHAPE, dtype=np.uint16)
    if name == "n5img":
        return (rng.random(SHAPE, dtype=np.float32) * 100).astype(np.float32)
    if name == "h5seg":  # a small alphabet: ties in many mode blocks
        return np.array([0, 3, 2**53 + 1, 2**63 + 7], np.uint64)[rng.integers(0, 4, SHAPE)]
    return np.array([0, 3, 2**32 - 1, 5], np.uint32)[rng.integers(0, 4, SHAPE)]


@dataclass
class World:
    d: Path
    relay: RelayProcess
    pyramids: dict[str, list[np.ndarray]]   # journey 1: each store's numpy pyramid
    frame: list[np.ndarray]                 # journey 2: the frame's numpy pyramid


def _intern(relay: RelayProcess) -> Any:
    from intern.remote.boss import BossRemote

    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": RW})


def _make_project(relay: RelayProcess) -> np.ndarray:
    """Journey 2's first steps through intern; returns the frame's level 0 as numpy has it."""
    from intern.resource.boss.resource import (
        ChannelResource,
        CollectionResource,
        CoordinateFrameResource,
        ExperimentResource,
    )

    rmt = _intern(relay)
    (z0, y0, x0), (nz, ny, nx) = FRAME_START, FRAME_SHAPE
    rmt.create_project(CollectionResource("trip"))
    rmt.create_project(CoordinateFrameResource(
        "oddframe", x_start=x0, x_stop=x0 + nx, y_start=y0, y_stop=y0 + ny, z_start=z0,
        z_stop=z0 + nz, x_voxel_size=8, y_voxel_size=8, z_voxel_size=40,
        voxel_unit="nanometers"))
    rmt.create_project(ExperimentResource("e", "trip", coord_frame="oddframe",
                                          num_hierarchy_levels=3,
                                          hierarchy_method="anisotropic"))
    ch = rmt.create_project(ChannelResource("seg", "trip", "e", type="annotation",
                                            datatype="uint64"))
    rng = np.random.default_rng(3)
    ids = np.array([0, 9, 2**53 + 1, BIG, 12], np.uint64)
    block = ids[rng.integers(0, 5, tuple(b - a for a, b in WRITE_BOX))]
    block[:, :5, :7] = BIG  # one segment of some size at the box's near corner
    (bz, by, bx) = WRITE_BOX
    rmt.create_cutout(ch, 0, list(bx), list(by), list(bz), block)
    frame = np.zeros(FRAME_SHAPE, np.uint64)
    frame[tuple(slice(a - o, b - o) for (a, b), o in zip(WRITE_BOX, FRAME_START,
                                                          strict=True))] = block
    return frame


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = tmp_path_factory.mktemp("journeys3")
    rng = np.random.default_rng(20240917)
    pyramids: dict[str, list[np.ndarray]] = {}
    channels = ""
    for name, (pattern, kind, origin) in SOURCES.items():
        url = pattern.format(d=d)
        data = _level0(name, rng)
        vol = voxgate.create(url, shape=SHAPE, chunks=CHUNKS, dtype=data.dtype.name,
                             voxel_size=VOXEL, offset=OFFSET, kind=kind)
        vol[:] = data
        voxgate.downsample(url, num_scales=3)
        if url.startswith("hdf5://"):
            vol.remote.close()  # HDF5 lets one process write a file: the relay opens it next
        del vol
        pyramids[name] = [data, *downsample_scales(data, FACTORS, kind,
                                                   start=OFFSET if origin else None)]
        # (HDF5 channels writable too: the relay takes write access per write, so the file
        # stays readable by other processes, this one included)
        channels += (f'[[channel]]\nname = "j/{name}/ch"\nupstream = "{url}"\n'
                     "writable = true\n")
    cfg = d / "relay.toml"
    # reads open to all (CloudVolume and tensorstore send no boss token), writes need RW
    cfg.write_text(f'[server]\nhost = "127.0.0.1"\nstate_path = "{d / "state.json"}"\n'
                   f'[cache]\nmemory_bytes = "32 MiB"\n{channels}'
                   f'[auth]\npublic_read = true\ntokens = {{ "{RW}" = "read-write" }}\n')
    relay = start_relay(cfg, free_port(), "--data-root", str(d / "data"))
    try:
        frame = _make_project(relay)
        vol = voxgate.open(f"bossdb://{relay.url}/trip/e/seg", mode="r+", token=RW)
        voxgate.downsample(vol)  # the relay's job (the server path a bossDB store offers)
        from voxgate.services.downsample import downsample_provenance

        prov = downsample_provenance(vol)
        assert prov is not None and prov.path == "server"
        levels = [frame, *downsample_scales(frame, FACTORS, "segmentation",
                                            start=FRAME_START)]
        yield World(d, relay, pyramids, levels)
    finally:
        relay.stop()


# -- readers ---------------------------------------------------------------------------------------
def _layer(w: World, path: str) -> str:
    return f"{w.relay.url}/precomputed/{path}"


def _cv(w: World, path: str, mip: int) -> Any:
    from cloudvolume import CloudVolume

    return CloudVolume(f"precomputed://{_layer(w, path)}", mip=mip, bounded=True,
                       fill_missing=False, progress=False, cache=False)


def _cv_box(cv: Any, box: tuple[tuple[int, int], ...]) -> np.ndarray:
    (z0, z1), (y0, y1), (x0, x1) = box
    return np.asarray(cv[x0:x1, y0:y1, z0:z1])[..., 0].transpose(2, 1, 0)


def _ts_whole(w: World, path: str, mip: int) -> np.ndarray:
    import tensorstore as ts

    store = ts.open({"driver": "neuroglancer_precomputed", "scale_index": mip,
                     "kvstore": f"{_layer(w, path)}/"}).result()
    return np.asarray(store.read().result())[..., 0].transpose(2, 1, 0)


def _offsets(offset: tuple[int, ...], n: int) -> list[tuple[int, ...]]:
    """Each level's offset, floor(offset / cumulative factor) on either anchor."""
    out, cum = [tuple(offset)], (1, 1, 1)
    for f in FACTORS[:n - 1]:
        cum = tuple(c * k for c, k in zip(cum, f, strict=True))
        out.append(tuple(o // c for o, c in zip(offset, cum, strict=True)))
    return out


def _same(got: np.ndarray, want: np.ndarray, who: str) -> None:
    assert got.shape == want.shape, f"{who}: shape {got.shape}, want {want.shape}"
    assert got.dtype == want.dtype, f"{who}: dtype {got.dtype}, want {want.dtype}"
    if want.dtype.kind == "f":  # the mean of float32 voxels, to float32's precision
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=who)
    else:
        np.testing.assert_array_equal(got, want, err_msg=who)


# -- journey 1 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SOURCES))
def test_stores_downsampled_and_served_read_by_cloudvolume_and_tensorstore(world: World,
                                                                           name: str) -> None:
    pyramid = world.pyramids[name]
    offsets = _offsets(OFFSET, len(pyramid))
    for mip in (0, 1):
        want, off = pyramid[mip], offsets[mip]
        cv = _cv(world, f"j/{name}/ch", mip)
        assert tuple(int(v) for v in cv.voxel_offset) == off[::-1], (name, mip)
        assert tuple(int(v) for v in cv.volume_size) == want.shape[::-1], (name, mip)
        whole = tuple((o, o + n) for o, n in zip(off, want.shape, strict=True))
        _same(_cv_box(cv, whole), want, f"CloudVolume {name} mip {mip}")
        # an unaligned box reaching the far corner
        box = tuple((o + n // 3, o + n) for o, n in zip(off, want.shape, strict=True))
        _same(_cv_box(cv, box), want[tuple(slice(n // 3, n) for n in want.shape)],
              f"CloudVolume {name} mip {mip} {box}")
        _same(_ts_whole(world, f"j/{name}/ch", mip), want, f"tensorstore {name} mip {mip}")


# -- journey 2 -------------------------------------------------------------------------------------
def test_intern_write_relay_job_then_cloudvolume_label_stats_and_mesh(world: World) -> None:
    offsets = _offsets(FRAME_START, 3)
    for mip in (1, 2):
        want = world.frame[mip]
        cv = _cv(world, "trip/e/seg", mip)
        assert tuple(int(v) for v in cv.voxel_offset) == offsets[mip][::-1]
        whole = tuple((o, o + n) for o, n in zip(offsets[mip], want.shape, strict=True))
        _same(_cv_box(cv, whole), want, f"CloudVolume level {mip}")
        _same(_ts_whole(world, "trip/e/seg", mip), want, f"tensorstore level {mip}")

    vol = voxgate.open(f"bossdb://{world.relay.url}/trip/e/seg", token=RW)
    for mip in (0, 1):
        labels, off = world.frame[mip], np.array(offsets[mip])
        df = voxgate.label_stats(vol.at_scale(mip))
        assert df.attrs["provenance"].path == "server"
        assert sorted(int(i) for i in df["id"]) == [int(i) for i in np.unique(labels) if i]
        for row in df.itertuples():
            zyx = np.argwhere(labels == np.uint64(row.id)) + off
            assert row.voxel_count == len(zyx), row.id
            assert (row.z0, row.y0, row.x0) == tuple(int(v) for v in zyx.min(0)), row.id
            assert (row.z1, row.y1, row.x1) == tuple(int(v) for v in zyx.max(0) + 1), row.id
            np.testing.assert_allclose((row.centroid_z, row.centroid_y, row.centroid_x),
                                       zyx.mean(0), rtol=1e-12)

    rmt = _intern(world.relay)
    ch = rmt.get_channel("seg", "trip", "e")
    (z0, y0, x0), (nz, ny, nx) = FRAME_START, FRAME_SHAPE
    got_ids = rmt.get_ids_in_region(ch, 0, [x0, x0 + nx], [y0, y0 + ny], [z0, z0 + nz])
    assert sorted(int(i) for i in got_ids) == [int(i) for i in np.unique(world.frame[0]) if i]
    zyx = np.argwhere(world.frame[0] == np.uint64(BIG)) + np.array(FRAME_START)
    lo, hi = zyx.min(0), zyx.max(0) + 1
    assert rmt.get_bounding_box(ch, 0, BIG, "tight") == {
        "x_range": [int(lo[2]), int(hi[2])], "y_range": [int(lo[1]), int(hi[1])],
        "z_range": [int(lo[0]), int(hi[0])], "t_range": [0, 1]}

    # a mesh of the segment through the relay: its vertices span the segment's voxel box
    meshes = voxgate.mesh(vol, ids=[BIG])
    verts = np.asarray(meshes[BIG].vertices)
    res = np.array(VOXEL[::-1])
    np.testing.assert_allclose(verts.min(0), lo[::-1] * res)
    np.testing.assert_allclose(verts.max(0), hi[::-1] * res)


# -- journey 3 -------------------------------------------------------------------------------------
def test_copy_from_the_precomputed_dialect_to_ome_zarr_interrupted_and_resumed(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from voxgate import transfer
    from voxgate.errors import PartialWriteError
    from voxgate.remotes.zarr import ZarrRemote

    src = f"precomputed://{_layer(world, 'j/h5seg/ch')}"
    path = world.d / "copy.ome.zarr"
    dst = f"zarr://{path}"
    # made beforehand with small chunks, so the copy has many blocks to be interrupted in
    voxgate.create(dst, shape=SHAPE, chunks=CHUNKS, dtype="uint64", voxel_size=VOXEL,
                   offset=OFFSET, kind="segmentation", num_scales=3)
    monkeypatch.setattr(transfer, "BLOCK_BYTES", 1)  # a block per chunk
    real_write, calls = ZarrRemote.write, []

    def failing_write(self: ZarrRemote, box: Any, array: np.ndarray, scale: int = 0) -> None:
        calls.append(box)
        if len(calls) > 7:
            raise RuntimeError("disk on fire")  # not transient: the copy stops
        real_write(self, box, array, scale)

    monkeypatch.setattr(ZarrRemote, "write", failing_write)
    with pytest.raises(PartialWriteError):
        voxgate.copy(src, dst, workers=1, progress=True)
    monkeypatch.setattr(ZarrRemote, "write", real_write)
    report = voxgate.copy(src, dst, workers=2, progress=True)
    assert report.resumed and report.blocks_skipped == 7
    assert report.blocks_skipped + report.blocks_written == report.blocks_total

    pyramid = world.pyramids["h5seg"]
    group = zarr.open_group(str(path), mode="r")
    attrs = group.attrs.asdict()
    multiscale = (attrs.get("multiscales") or attrs["ome"]["multiscales"])[0]
    for k, ds in enumerate(multiscale["datasets"]):
        _same(np.asarray(group[ds["path"]][...]), pyramid[k], f"zarr-python level {k}")
    nodes = list(Reader(parse_url(str(path)))())
    assert len(nodes[0].data) == 3
    for k, arr in enumerate(nodes[0].data):
        _same(np.asarray(arr), pyramid[k], f"ome-zarr-py level {k}")


# -- journey 4 -------------------------------------------------------------------------------------
def _translations(path: Path) -> list[list[float]]:
    import zarr

    attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    multiscale = (attrs.get("multiscales") or attrs["ome"]["multiscales"])[0]
    return [next(t["translation"] for t in ds["coordinateTransformations"]
                 if t["type"] == "translation") for ds in multiscale["datasets"]]


def test_copies_through_either_dialect_place_the_coarse_scales_alike(world: World) -> None:
    """Level k of the frame lies on the grid through 0 (bossDB's rule): its voxel 0 covers
    level 0's ``[o_k * F, (o_k + 1) * F)``, whose centre (OME-NGFF's pixel centre) is at
    ``(o_k * F + (F - 1) / 2) * voxel_0``."""
    import httpx

    bossdb = voxgate.open(f"bossdb://{world.relay.url}/trip/e/seg", token=RW)
    precomputed = f"precomputed://{_layer(world, 'trip/e/seg')}"
    offsets = _offsets(FRAME_START, 3)
    want = []
    for k in range(3):
        cum = np.prod(FACTORS[:k], axis=0) if k else np.ones(3, int)
        want.append([float((o * f + (f - 1) / 2) * v)
                     for o, f, v in zip(offsets[k], cum, VOXEL, strict=True)])
    sources: list[tuple[str, Any]] = [("bossdb", bossdb), ("precomputed", precomputed)]
    for via, src in sources:
        path = world.d / f"via-{via}.ome.zarr"
        voxgate.copy(src, f"zarr://{path}", progress=False)
        assert _translations(path) == want, via
        copied = voxgate.open(f"zarr://{path}")
        for k in range(3):
            _same(copied.at_scale(k).read(), world.frame[k], f"{via} copy level {k}")
    # a WEBKNOSSOS dataset keeps its mags on the grid through 0 too: the precomputed dialect's
    # pyramid fits it as it is (it was refused as one made from the first voxel)
    wk = f"webknossos://{world.d}/wkcopy/seg"
    voxgate.copy(precomputed, wk, progress=False)
    out = voxgate.open(wk)
    for k in range(3):
        assert tuple(out.meta.scale(k).offset) == offsets[k]
        _same(out.at_scale(k).read(), world.frame[k], f"WEBKNOSSOS copy level {k}")
    # what says so: a voxgate key in the info, which CloudVolume and tensorstore (journey 2)
    # and Neuroglancer ignore
    info = json.loads(httpx.get(f"{_layer(world, 'trip/e/seg')}/info", timeout=60).text)
    assert info["voxgate_pyramid_anchor"] == "origin"
    assert "voxgate_pyramid_anchor" not in json.loads(
        httpx.get(f"{_layer(world, 'j/h5seg/ch')}/info", timeout=60).text)
