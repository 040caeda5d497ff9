"""Seams of webknossos:// found by an audit: each test failed before its fix.

The tests that run the ``webknossos`` package follow tests/remotes/test_webknossos_peer.py: it
lives in another environment (``VOXGATE_WEBKNOSSOS_PYTHON``, which scripts/test.sh sets), runs
as a subprocess and exchanges arrays as .npy files.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError, RemoteExistsError

from .test_webknossos_peer import peer
from .test_webknossos_peer import pytestmark as needs_peer  # (the peer tests' own rule)


def props(path: Path) -> dict:
    return json.loads((path / "datasource-properties.json").read_text())


def layer_props(path: Path, name: str) -> dict:
    return next(la for la in props(path)["dataLayers"] if la["name"] == name)


# -- multi-channel layers: elementClass names the whole voxel -----------------------------------

def test_multichannel_element_class_names_the_whole_voxel(tmp_path: Path) -> None:
    """WEBKNOSSOS' elementClass is the type of all channels of a voxel together (2 x uint16 is
    "uint32"); voxgate wrote the channel's type and read "uint32" of 2 channels as uint32."""
    ds = tmp_path / "ds"
    data = np.arange(2 * 6 * 7 * 9, dtype=np.uint16).reshape(2, 6, 7, 9) * 50
    two = voxgate.create(f"webknossos://{ds}", layer="two", shape=(6, 7, 9), num_channels=2,
                         chunks=(8, 8, 8), dtype="uint16", voxel_size=(1, 1, 1))
    two[:] = data
    rgb = voxgate.create(f"webknossos://{ds}/rgb", shape=(6, 7, 9), num_channels=3,
                         chunks=(8, 8, 8), dtype="uint8", voxel_size=(1, 1, 1))
    flt = voxgate.create(f"webknossos://{ds}/flt", shape=(6, 7, 9), num_channels=2,
                         chunks=(8, 8, 8), dtype="float32", voxel_size=(1, 1, 1))
    assert (layer_props(ds, "two")["elementClass"], layer_props(ds, "two")["numChannels"]) \
        == ("uint32", 2)
    assert layer_props(ds, "rgb")["elementClass"] == "uint24"
    assert layer_props(ds, "flt")["elementClass"] == "double"  # as webknossos writes it
    again = voxgate.open(f"webknossos://{ds}/two")
    assert again.dtype == np.uint16 and again.shape == (2, 6, 7, 9)
    assert again.read().dtype == np.uint16  # the dtype the Volume says is the one it reads
    np.testing.assert_array_equal(again.read(), data)
    assert voxgate.open(f"webknossos://{ds}/rgb").dtype == np.uint8
    assert voxgate.open(f"webknossos://{ds}/flt").dtype == np.float32
    assert rgb.dtype == np.uint8 and flt.dtype == np.float32

    # a layer an older voxgate described with the channel's type still opens as it was written
    p = props(ds)
    p["dataLayers"][0]["elementClass"] = "uint16"
    (ds / "datasource-properties.json").write_text(json.dumps(p))
    np.testing.assert_array_equal(voxgate.open(f"webknossos://{ds}/two").read(), data)
    # properties that fit the array neither way say so, instead of a Volume of the wrong dtype
    p["dataLayers"][0]["elementClass"] = "uint64"
    (ds / "datasource-properties.json").write_text(json.dumps(p))
    with pytest.raises(InvalidRequestError, match="holds uint16"):
        voxgate.open(f"webknossos://{ds}/two")


@needs_peer
def test_multichannel_layers_and_largest_segment_id_with_webknossos(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 60000, (2, 10, 12, 14), dtype=np.uint16)  # c, z, y, x
    np.save(tmp_path / "wk-in.npy", np.ascontiguousarray(data.transpose(0, 3, 2, 1)))
    # voxgate writes one layer directly and one through voxgate.copy from a zarr volume
    vg = voxgate.create(f"webknossos://{tmp_path}/vg", layer="direct", shape=(10, 12, 14),
                        num_channels=2, chunks=(8, 8, 8), dtype="uint16",
                        voxel_size=(20, 10, 10), offset=(1, 2, 3))
    vg[:] = data
    src = voxgate.create(f"zarr://{tmp_path}/src.zarr", shape=(10, 12, 14), num_channels=2,
                         chunks=(8, 8, 8), dtype="uint16", voxel_size=(20, 10, 10))
    src[:] = data
    voxgate.copy(src, f"webknossos://{tmp_path}/vg/copied", progress=False)
    # and a segmentation whose largestSegmentId its writes raised (past 2**53: an envelope)
    seg = voxgate.create(f"webknossos://{tmp_path}/vg/seg", shape=(10, 12, 14), chunks=(8, 8, 8),
                         dtype="uint64", voxel_size=(20, 10, 10), offset=(1, 2, 3),
                         kind="segmentation")
    seg[0:2] = 5000
    seg[5:6, 0:1, 0:1] = 2**60 + 1
    out = peer("""
        import sys, numpy as np, webknossos as wk
        root = sys.argv[1]
        ds = wk.Dataset.open(root + "/vg")
        for name in ("direct", "copied"):
            layer = ds.get_layer(name)
            print(name, layer.dtype_per_channel, layer.num_channels)
            np.save(f"{root}/{name}.npy", layer.get_mag(1).read())
        print("largest", ds.get_layer("seg").largest_segment_id)
        w = wk.Dataset(root + "/wk", voxel_size=(10, 10, 20))
        c = w.add_layer("two", wk.COLOR_CATEGORY, dtype="uint16", num_channels=2,
                        data_format="zarr3")
        # small shards: the default 1024^3 ones take webknossos half a minute to write here
        c.add_mag(1, chunk_shape=32, shard_shape=64).write(
            np.load(root + "/wk-in.npy"), absolute_offset=(3, 2, 1),
            allow_resize=True)
    """, str(tmp_path))
    assert "direct uint16 2" in out and "copied uint16 2" in out, out
    assert f"largest {2**60 + 1}" in out, out
    for name in ("direct", "copied"):
        got = np.load(tmp_path / f"{name}.npy")
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got.transpose(0, 3, 2, 1), data)
    theirs = voxgate.open(f"webknossos://{tmp_path}/wk/two")
    assert theirs.dtype == np.uint16 and theirs.shape == (2, 10, 12, 14)
    np.testing.assert_array_equal(theirs.read(), data)


# -- largestSegmentId ---------------------------------------------------------------------------

def test_writes_keep_largest_segment_id_an_upper_bound(tmp_path: Path) -> None:
    """WEBKNOSSOS gives new segments the ids above largestSegmentId: voxgate left it unset on
    layers it made and unchanged by its writes, so new segments could take written ids."""
    ds = tmp_path / "ds"
    seg = voxgate.create(f"webknossos://{ds}", layer="seg", shape=(16, 16, 16), chunks=(8, 8, 8),
                         dtype="uint64", voxel_size=(1, 1, 1), kind="segmentation")
    assert layer_props(ds, "seg")["largestSegmentId"] == 0
    seg[0:8] = 500
    assert layer_props(ds, "seg")["largestSegmentId"] == 500
    seg[8:16] = 3  # smaller ids leave it
    assert layer_props(ds, "seg")["largestSegmentId"] == 500
    # another writer, separately opened, raises it from what the file says
    other = voxgate.open(f"webknossos://{ds}/seg", mode="r+")
    other[0:1, 0:1, 0:1] = 2**53 + 1  # past JavaScript's integers: WEBKNOSSOS' envelope
    assert layer_props(ds, "seg")["largestSegmentId"] == {"customJsonEncoding": "bigint",
                                                         "value": str(2**53 + 1)}
    seg[0:1, 1:2, 0:1] = 600  # this handle's own knowledge is stale; the file's is larger
    assert layer_props(ds, "seg")["largestSegmentId"]["value"] == str(2**53 + 1)

    # threads writing disjoint blocks of ids: the largest of them all is kept
    par = voxgate.create(f"webknossos://{ds}/par", shape=(16, 16, 64), chunks=(8, 8, 8),
                         dtype="uint32", voxel_size=(1, 1, 1), kind="segmentation")
    vols = [voxgate.open(f"webknossos://{ds}/par", mode="r+") for _ in range(8)]
    barrier = threading.Barrier(len(vols))

    def put(i: int) -> None:
        barrier.wait()
        vols[i][:, :, i * 8:(i + 1) * 8] = 1000 + i

    threads = [threading.Thread(target=put, args=(i,)) for i in range(len(vols))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert layer_props(ds, "par")["largestSegmentId"] == 1007
    assert par.read().max() == 1007


# -- the properties file: one writer at a time --------------------------------------------------

def test_layers_and_mags_added_at_once_are_all_listed(tmp_path: Path) -> None:
    """Creating layers (or adding mags to layers) of one dataset from several threads read and
    wrote datasource-properties.json unguarded: layers went missing from it."""
    ds = tmp_path / "ds"
    voxgate.create(f"webknossos://{ds}", layer="base", shape=(8, 8, 8), chunks=(8, 8, 8),
                   dtype="uint8", voxel_size=(1, 1, 1))
    names = [f"l{i}" for i in range(6)]
    barrier = threading.Barrier(len(names))
    errors: list[BaseException] = []

    def run(fn: Callable[..., object], *args: object) -> None:
        try:
            barrier.wait()
            fn(*args)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def make(name: str) -> None:
        voxgate.create(f"webknossos://{ds}/{name}", shape=(8, 8, 8), chunks=(8, 8, 8),
                       dtype="uint8", voxel_size=(1, 1, 1))

    threads = [threading.Thread(target=run, args=(make, n)) for n in names]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    assert sorted(la["name"] for la in props(ds)["dataLayers"]) == ["base", *names]

    def more(name: str) -> None:
        voxgate.downsample(voxgate.open(f"webknossos://{ds}/{name}", mode="r+"), num_scales=2)

    threads = [threading.Thread(target=run, args=(more, n)) for n in names]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    for n in names:
        assert [m["mag"] for m in layer_props(ds, n)["mags"]] == [[1, 1, 1], [2, 2, 2]], n
        assert len(voxgate.open(f"webknossos://{ds}/{n}").scales) == 2


# -- geometry and units -------------------------------------------------------------------------

def test_negative_offset_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """WEBKNOSSOS stores no voxels at negative coordinates: voxgate made such a layer, and
    every read and write of it then failed with tensorstore's raw IndexError."""
    with pytest.raises(InvalidRequestError, match="negative"):
        voxgate.create(f"webknossos://{tmp_path}/ds", layer="color", shape=(4, 4, 4),
                       chunks=(4, 4, 4), dtype="uint8", voxel_size=(1, 1, 1),
                       offset=(0, -2, 0))
    assert not (tmp_path / "ds" / "datasource-properties.json").exists()


@pytest.mark.parametrize(("unit", "nm"), [("centimeter", 1e7), ("µm", 1e3), ("inch", 2.54e7)])
def test_every_webknossos_unit_gives_its_voxel_size(tmp_path: Path, unit: str,
                                                    nm: float) -> None:
    """Units beyond nm, µm, mm, Å, pm and m were read as nanometres, silently."""
    ds = tmp_path / "ds"
    voxgate.create(f"webknossos://{ds}", layer="color", shape=(4, 4, 4), chunks=(4, 4, 4),
                   dtype="uint8", voxel_size=(1, 1, 1))
    p = props(ds)
    p["scale"] = {"factor": [1.5, 1.5, 4.0], "unit": unit}
    (ds / "datasource-properties.json").write_text(json.dumps(p))
    vs = voxgate.open(f"webknossos://{ds}/color").voxel_size
    assert [math.isclose(a, b) for a, b in zip(vs.zyx(), (4.0 * nm, 1.5 * nm, 1.5 * nm),
                                               strict=True)] == [True] * 3
    p["scale"]["unit"] = "furlong"
    (ds / "datasource-properties.json").write_text(json.dumps(p))
    with pytest.raises(InvalidRequestError, match="unknown scale unit 'furlong'"):
        voxgate.open(f"webknossos://{ds}/color")


# -- memory -------------------------------------------------------------------------------------

def test_created_shards_bound_the_block_a_write_holds(tmp_path: Path) -> None:
    """A shard is written whole, so writes and copies cut blocks of whole shards: voxgate made
    shards of up to 1024 voxels a side (4 GiB of a 512 x 1024 x 1024 uint64 segmentation), so
    a copy into a new layer held gigabytes per block."""
    seg = voxgate.create(f"webknossos://{tmp_path}/ds", layer="seg", shape=(512, 1024, 1024),
                         chunks=(64, 64, 64), dtype="uint64", voxel_size=(1, 1, 1),
                         kind="segmentation", num_scales=2)
    for k in range(2):
        grid = seg.remote.write_grid(k)
        assert math.prod(grid) * 8 <= 32 * 2**20, grid
        assert all(g % 64 == 0 for g in grid)
    seg[500:512, 1000:1024, 1000:1024] = 9  # an edge block, partly over the shards' end
    np.testing.assert_array_equal(seg[496:512, 992:1024, 992:1024].read()[4:, 8:, 8:], 9)


# -- creating again after an interrupted creation -----------------------------------------------

def test_unlisted_arrays_are_refused_clearly_and_left_alone(tmp_path: Path) -> None:
    """A creation interrupted after its arrays but before the properties listed the layer left
    a directory that made the next create fail with tensorstore's ALREADY_EXISTS and its whole
    spec, as a bare VoxgateError."""
    ds = tmp_path / "ds"
    voxgate.create(f"webknossos://{ds}", layer="base", shape=(8, 8, 8), chunks=(8, 8, 8),
                   dtype="uint8", voxel_size=(1, 1, 1))
    (ds / "color" / "1").mkdir(parents=True)
    (ds / "color" / "1" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array"}')
    before = props(ds)
    with pytest.raises(RemoteExistsError, match=r"color/1 holds an array already"):
        voxgate.create(f"webknossos://{ds}/color", shape=(8, 8, 8), chunks=(8, 8, 8),
                       dtype="uint16", voxel_size=(1, 1, 1))
    assert props(ds) == before
    assert (ds / "color" / "1" / "zarr.json").read_text().startswith('{"zarr_format": 3')
    # the same for a mag that downsample would add
    (ds / "base" / "2").mkdir()
    (ds / "base" / "2" / "zarr.json").write_text("{}")
    with pytest.raises(RemoteExistsError, match=r"base/2 holds an array already"):
        voxgate.downsample(voxgate.open(f"webknossos://{ds}/base", mode="r+"), num_scales=2)
    assert props(ds) == before


# -- mags on the grid through 0 -------------------------------------------------------------------
# WEBKNOSSOS (and the webknossos library's downsample) puts voxel i of mag m over mag 1's
# [i * m, (i + 1) * m), whatever the layer's topLeft.  voxgate anchored downsample's blocks at
# the layer's first voxel (as for precomputed, after Igneous): at a topLeft that is not a
# multiple of the mag, every coarse voxel was made of the wrong mag-1 voxels and the last one
# of each row was never written (the mag's extent counts one block more).

OFFSET = (3, 7, 45)  # z, y, x: x and y not multiples of 2 or 4


def _reference_mags(data: np.ndarray, factors: list[tuple[int, int, int]], kind: str
                    ) -> list[np.ndarray]:
    from tests.services.numpy_reference import downsample_scales

    return downsample_scales(data, factors, kind, start=OFFSET)


def _layer_at_offset(root: Path, name: str, data: np.ndarray, kind: str,
                     **downsample: Any) -> str:
    """A layer ``name`` of dataset root/ds at OFFSET holding ``data``, with 3 scales made by
    voxgate.downsample (given ``downsample``'s options); its URL."""
    url = f"webknossos://{root}/ds/{name}"
    voxgate.create(f"webknossos://{root}/ds", layer=name, shape=data.shape, chunks=(4, 8, 8),
                   dtype=data.dtype.name, voxel_size=(40, 8, 8), offset=OFFSET,
                   kind=kind)[:] = data
    voxgate.downsample(url, 3, **downsample)
    return url


@pytest.mark.parametrize("kind", ["image", "segmentation"])
@pytest.mark.parametrize("block", [None, (2, 8, 8)])
def test_downsampled_mags_lie_on_the_grid_through_zero(tmp_path: Path, kind: str,
                                                       block: tuple[int, int, int] | None
                                                       ) -> None:
    rng = np.random.default_rng(5)
    dtype = "uint8" if kind == "image" else "uint32"
    data = (rng.integers(0, 250, (5, 23, 30)) if kind == "image"
            else rng.integers(1, 5, (5, 23, 30))).astype(dtype)
    url = _layer_at_offset(tmp_path, kind, data, kind, block=block, workers=3)
    factors = [(1, 2, 2), (1, 2, 2)]
    got = voxgate.open(url)
    mags = [m["mag"] for m in layer_props(tmp_path / "ds", kind)["mags"]]
    assert mags == [[1, 1, 1], [2, 2, 1], [4, 4, 1]]
    for k, want in enumerate(_reference_mags(data, factors, kind), start=1):
        sc = got.scales[k]
        f = 2**k
        assert tuple(sc.offset) == (3, 7 // f, 45 // f), k
        # every block of the grid the layer touches: one more than ceil(23 / f) in y here
        assert tuple(sc.shape) == (5, -(-(7 + 23) // f) - 7 // f, -(-(45 + 30) // f) - 45 // f)
        np.testing.assert_array_equal(got.at_scale(k).read(), want, err_msg=f"mag {f}")
    # computing the existing mags again is allowed (their extent was refused as inconsistent)
    voxgate.open(url, mode="r+")[:] = data[::-1].copy()
    voxgate.downsample(url)
    for k, want in enumerate(_reference_mags(data[::-1], factors, kind), start=1):
        np.testing.assert_array_equal(voxgate.open(url).at_scale(k).read(), want)


def test_proofreading_updates_the_mags_on_the_grid_through_zero(tmp_path: Path) -> None:
    """A merge rewrites the coarser mags as downsample computes them (the same grid)."""
    rng = np.random.default_rng(6)
    data = rng.integers(1, 6, (4, 21, 26)).astype(np.uint32)
    url = _layer_at_offset(tmp_path, "seg", data, "segmentation")
    voxgate.merge(voxgate.open(url, mode="r+"), [2, 3], history_dir=tmp_path / "hist")
    merged = np.where(data == 3, 2, data).astype(np.uint32)
    now = voxgate.open(url)
    np.testing.assert_array_equal(now.read(), merged)
    for k, want in enumerate(_reference_mags(merged, [(1, 2, 2), (1, 2, 2)], "segmentation"),
                             start=1):
        np.testing.assert_array_equal(now.at_scale(k).read(), want, err_msg=f"mag {2**k}")


@needs_peer
def test_webknossos_downsample_agrees_with_voxgate_at_an_unaligned_top_left(tmp_path: Path
                                                                             ) -> None:
    """The webknossos library downsamples the same mag 1: voxgate's mags 2 and 4 hold what
    the library's do, except where the library mirrors data into blocks cut by the layer's
    edges (voxgate counts only the voxels there).  The labels are constant over the 4 x 4
    blocks of the grid through 0 (so no mode there has a tie) and drawn from three values (so
    a block of the grid through the layer's first voxel has a majority of another label)."""
    z, y, x = np.meshgrid(np.arange(4) + OFFSET[0], np.arange(22) + OFFSET[1],
                          np.arange(27) + OFFSET[2], indexing="ij")
    table = np.random.default_rng(7).integers(1, 4, (z.max() + 1, 10, 20))
    labels = table[z, y // 4, x // 4].astype(np.uint32)
    url = _layer_at_offset(tmp_path, "seg", labels, "segmentation")
    np.save(tmp_path / "labels.npy", labels.transpose(2, 1, 0))  # x, y, z
    peer("""
        import sys, numpy as np, webknossos as wk
        root, out, top = sys.argv[1], sys.argv[2], [int(v) for v in sys.argv[3].split(",")]
        ds = wk.Dataset(root, voxel_size=(8, 8, 40))
        s = ds.add_layer("seg", wk.SEGMENTATION_CATEGORY, dtype="uint32",
                         data_format="zarr3", largest_segment_id=10**6)
        s.add_mag(1, chunk_shape=32, shard_shape=64).write(
            np.load(out + "/labels.npy"), absolute_offset=top,
            allow_resize=True)
        s.downsample(coarsest_mag=wk.Mag((4, 4, 1)), chunk_shape=32, shard_shape=64)
        for name in ("2-2-1", "4-4-1"):
            m = s.get_mag(name)
            np.save(f"{out}/wk-{name}.npy", m.read()[0])
            np.save(f"{out}/wk-{name}-top.npy", np.array(m.bounding_box.topleft))
    """, str(tmp_path / "wkds"), str(tmp_path), ",".join(map(str, OFFSET[::-1])))
    ours = voxgate.open(url)
    for k, name in [(1, "2-2-1"), (2, "4-4-1")]:
        f = 2**k
        theirs = np.load(tmp_path / f"wk-{name}.npy").transpose(2, 1, 0)
        mine = ours.at_scale(k).read()
        assert mine.shape == theirs.shape, name
        # the blocks wholly inside the layer: all but the first and last in y and x
        inner = (slice(None), slice(1, -1), slice(1, -1))
        assert mine[inner].size > 0
        np.testing.assert_array_equal(mine[inner], theirs[inner], err_msg=f"mag {name}")
        assert len(np.unique(mine[inner])) == 3 and f == 2**k


def test_copy_of_a_pyramid_from_the_first_voxel_is_refused_before_creating(tmp_path: Path
                                                                           ) -> None:
    """A precomputed pyramid made from the volume's first voxel (voxgate or Igneous) at an
    offset that is not a multiple of the factors cannot be a WEBKNOSSOS layer's mags: the copy
    is refused before anything is made (it used to create an empty layer, then refuse), and
    the route its message gives (scale 0, then downsample) makes the mags."""
    rng = np.random.default_rng(8)
    data = rng.integers(0, 250, (5, 23, 30)).astype(np.uint8)
    pre = f"precomputed://file://{tmp_path}/pre"
    voxgate.create(pre, shape=data.shape, chunks=(4, 8, 8), dtype="uint8",
                   voxel_size=(40, 8, 8), offset=OFFSET)[:] = data
    voxgate.downsample(pre, 3)
    with pytest.raises(InvalidRequestError, match=r"grid through 0.*scale 1 would cover "
                       r"Box\[3:8, 3:15, 22:38\].*Nothing was created.*scales=\[0\]"):
        voxgate.copy(pre, f"webknossos://{tmp_path}/wk")
    assert not (tmp_path / "wk").exists()
    voxgate.copy(pre, f"webknossos://{tmp_path}/wk", scales=[0])
    voxgate.downsample(f"webknossos://{tmp_path}/wk", 3)
    got = voxgate.open(f"webknossos://{tmp_path}/wk")
    for k, want in enumerate(_reference_mags(data, [(1, 2, 2), (1, 2, 2)], "image"), start=1):
        np.testing.assert_array_equal(got.at_scale(k).read(), want)
    # where the offset is a multiple of every factor the two grids are one: copied whole
    aligned = f"precomputed://file://{tmp_path}/aligned"
    voxgate.create(aligned, shape=data.shape, chunks=(4, 8, 8), dtype="uint8",
                   voxel_size=(40, 8, 8), offset=(3, 8, 44))[:] = data
    voxgate.downsample(aligned, 3)
    voxgate.copy(aligned, f"webknossos://{tmp_path}/wk2")
    src, dst = voxgate.open(aligned), voxgate.open(f"webknossos://{tmp_path}/wk2")
    assert len(dst.scales) == 3
    for k in range(3):
        np.testing.assert_array_equal(dst.at_scale(k).read(), src.at_scale(k).read())


def test_mags_copied_to_ome_zarr_state_where_their_voxels_lie(tmp_path: Path) -> None:
    """OME-Zarr states each scale's position (the centre of its first voxel).  A copy of
    WEBKNOSSOS mags wrote the first-voxel rule's positions (scale 0's plus half a block), so
    a viewer placed a mag up to offset mod F scale-0 voxels off where WEBKNOSSOS shows it.
    Voxel i of mag F covers [i * F, (i + 1) * F): its centre is the mean of those scale-0
    centres."""
    rng = np.random.default_rng(9)
    data = rng.integers(0, 250, (5, 23, 30)).astype(np.uint8)
    url = _layer_at_offset(tmp_path, "color", data, "image")
    voxgate.copy(url, f"zarr://{tmp_path}/c.ome.zarr")
    meta = json.loads((tmp_path / "c.ome.zarr" / "zarr.json").read_text())
    datasets = meta["attributes"]["ome"]["multiscales"][0]["datasets"]
    v0 = np.array([40.0, 8.0, 8.0])
    for k, ds in enumerate(datasets):
        f = np.array([1, 2**k, 2**k])
        first = np.array(OFFSET) // f * f  # the first block's first scale-0 voxel
        want = (first + (f - 1) / 2) * v0  # the mean of the block's scale-0 centres
        got = [t for t in ds["coordinateTransformations"] if t["type"] == "translation"]
        np.testing.assert_allclose(got[0]["translation"], want, err_msg=f"scale {k}")
    again = voxgate.open(f"zarr://{tmp_path}/c.ome.zarr")
    source = voxgate.open(url)
    for k in range(3):
        assert again.scales[k].offset == source.scales[k].offset
        np.testing.assert_array_equal(again.at_scale(k).read(), source.at_scale(k).read())
