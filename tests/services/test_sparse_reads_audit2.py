"""Reads of only the stored chunks (``voxgate.absence``) against brute-force numpy references.

Cases the other sparse-read audits leave out: volumes whose bounds start off 0 (and below 0)
with extents that are not multiples of the chunks, sub-views (regions) of them, blocks that are
not multiples of the chunks, zarr v2 ("/" separator), N5, zarr v3 and precomputed sharded
stores, stored chunks on block corners, only in the last partial chunk, and a stored chunk of
only the fill value; uint64 ids at and above 2**63; non-zero and NaN / -0.0 fill values for
copy and downsample; the module's size knobs turned down (pieces of the absence scan, bits per
chunk, bytes per read) so that every path of ``read_stored`` / ``StoredGroups`` runs; and a
second write into a sparse volume followed by the Service again (each call scans again).

Every result is compared with a reference computed by numpy (or cc3d) on the dense array read
back whole, bit for bit where the result is voxels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate import Box, Vec, absence

from .numpy_reference import downsample_scales

SHAPE = (19, 23, 26)  # z, y, x: a partial chunk at every far face
CHUNKS = (4, 5, 6)
OFFSET = (3, 5, 7)
SHARDS = {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 3, "hash": "identity",
          "minishard_bits": 1, "shard_bits": 6, "minishard_index_encoding": "gzip",
          "data_encoding": "raw"}
#: name: (scheme, suffix, create options)
FORMATS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "zarr3": ("zarr", ".zarr", {}),
    "zarr2": ("zarr", ".zarr", {"zarr_format": 2}),
    "zarr3-sharded": ("zarr", ".zarr", {"shards": (8, 10, 12)}),
    "n5": ("n5", ".n5", {}),
    "precomputed": ("precomputed", "", {}),
    "precomputed-sharded": ("precomputed", "", {"sharded": SHARDS}),
}
BIG = 2**63
TOP = 2**64 - 1
#: (relative box, label): objects across a chunk corner (and the block corners of BLOCKS),
#: only in the last partial chunk, joined only through a corner voxel across chunk borders,
#: two labels side by side, a line through a row of chunks
OBJECTS: list[tuple[tuple[tuple[int, int, int], tuple[int, int, int]], int]] = [
    (((3, 4, 5), (5, 6, 7)), BIG + 5),
    (((16, 20, 24), (19, 23, 26)), TOP),
    (((7, 9, 11), (8, 10, 12)), 9),
    (((8, 10, 12), (9, 11, 13)), 9),
    (((12, 0, 0), (13, 2, 3)), BIG),
    (((12, 2, 0), (13, 3, 3)), 3),
    (((13, 15, 0), (14, 16, 26)), 1),
]
#: a chunk stored that holds only the fill value (0)
ZERO_CHUNK = ((8, 0, 12), (12, 5, 18))
#: objects written by the second write (into chunks absent until then)
LATER: list[tuple[tuple[tuple[int, int, int], tuple[int, int, int]], int]] = [
    (((0, 0, 0), (1, 1, 1)), BIG + 1),
    (((4, 5, 6), (6, 8, 9)), 9),  # joins the first object through a face, another label
    (((16, 0, 24), (19, 2, 26)), TOP - 1),
    (((9, 11, 13), (10, 12, 14)), 9),  # joins the corner chain to the objects above it
]
#: block shapes: none given, multiples of the chunks, and not
BLOCKS: list[tuple[int, int, int] | None] = [None, (8, 10, 12), (5, 7, 9)]
#: sub-views (relative slices): the whole volume and one starting off the chunk grid
VIEWS = {"whole": (slice(None),) * 3, "sub": (slice(2, 17), slice(3, 21), slice(1, 25))}


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view(f"u{a.dtype.itemsize}")


def _write(vol: voxgate.Volume, objects: list[Any], dense: np.ndarray) -> None:
    """Write each object's box (only that box: the chunks around it stay absent)."""
    o = vol.scale_meta.bounds.start
    for (a, b), label in objects:
        box = Box(o + a, o + b)
        dense[box.slices(o)] = label
        vol.remote.write(box, np.ascontiguousarray(dense[box.slices(o)]), 0)


def _seg(tmp_path: Path, fmt: str, offset: tuple[int, int, int] = OFFSET
         ) -> tuple[voxgate.Volume, np.ndarray]:
    scheme, ext, options = FORMATS[fmt]
    vol = voxgate.create(f"{scheme}://{tmp_path}/seg{ext}", shape=SHAPE, dtype="uint64",
                         chunks=CHUNKS, voxel_size=(8, 8, 8), offset=offset,
                         kind="segmentation", **options)
    dense = np.zeros(SHAPE, np.uint64)
    o = vol.scale_meta.bounds.start
    zero = Box(o + ZERO_CHUNK[0], o + ZERO_CHUNK[1])
    vol.remote.write(zero, np.zeros(tuple(zero.shape), np.uint64), 0)
    _write(vol, OBJECTS, dense)
    sc = vol.scale_meta
    total = int(np.prod([-(-n // c) for n, c in zip(sc.shape, sc.chunks, strict=True)]))
    absent = len(vol.remote.absent_chunks(sc.bounds, 0))
    assert 0 < absent < total - 5  # sparse, the chunk of zeros among the stored ones
    assert np.array_equal(vol.read(), dense)
    return vol, dense


@pytest.fixture(params=["default", "small-knobs"])
def knobs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The module's sizes as they are, or so small that the absence scan is cut in pieces of
    a few chunks, the stored groups grow past one chunk, and every read is cut by chunks."""
    if request.param == "small-knobs":
        monkeypatch.setattr(absence, "_ABSENT_PIECE", 3)
        monkeypatch.setattr(absence, "CHUNK_BITS", 9)
        monkeypatch.setattr(absence, "_READ_BYTES", 1)
    return str(request.param)


def _same_partition(got: np.ndarray, want: np.ndarray) -> None:
    """``got`` labels the components of ``want`` (a cc3d result), up to a relabelling."""
    assert got.shape == want.shape
    assert np.array_equal(got == 0, want == 0)
    pairs = np.unique(np.stack([got[want > 0].astype(np.uint64),
                                want[want > 0].astype(np.uint64)]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def _stats_reference(dense: np.ndarray, start: Vec) -> dict[int, tuple[Any, ...]]:
    out = {}
    for label in np.unique(dense):
        if label == 0:
            continue
        at = np.nonzero(dense == label)
        lo = tuple(int(a.min()) + s for a, s in zip(at, start, strict=True))
        hi = tuple(int(a.max()) + 1 + s for a, s in zip(at, start, strict=True))
        centroid = tuple(float(a.mean()) + s for a, s in zip(at, start, strict=True))
        out[int(label)] = (len(at[0]), lo, hi, centroid)
    return out


def _stats(df: Any) -> dict[int, tuple[Any, ...]]:
    out = {}
    for row in df.itertuples(index=False):
        out[int(row.id)] = (int(row.voxel_count), (int(row.z0), int(row.y0), int(row.x0)),
                            (int(row.z1), int(row.y1), int(row.x1)),
                            (float(row.centroid_z), float(row.centroid_y),
                             float(row.centroid_x)))
    return out


def _check_stats(df: Any, dense: np.ndarray, start: Vec) -> None:
    got, want = _stats(df), _stats_reference(dense, start)
    assert sorted(got) == sorted(want)
    assert df["id"].dtype == np.uint64
    for label, (n, lo, hi, c) in want.items():
        assert got[label][:3] == (n, lo, hi), label
        assert np.allclose(got[label][3], c, rtol=1e-12, atol=0), label


# -- connected_components and label_stats on sparse stores ----------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_connected_components_of_sparse_views_equal_cc3d(tmp_path: Path, fmt: str,
                                                         knobs: str) -> None:
    import cc3d

    vol, dense = _seg(tmp_path, fmt)
    for name, view in VIEWS.items():
        v = vol[view]
        want = cc3d.connected_components(dense[view], connectivity=26)
        for block in BLOCKS:
            got = voxgate.connected_components(v, block=block, workers=2)
            _same_partition(np.asarray(got), want)
        # into a store (blocks rounded up to its chunks)
        out = f"zarr://{tmp_path}/cc-{name}.zarr"
        voxgate.connected_components(v, out, block=(5, 7, 9), workers=2)
        _same_partition(voxgate.open(out).read(), want)


@pytest.mark.parametrize("fmt", ["zarr2", "precomputed-sharded", "n5"])
def test_label_stats_of_sparse_views_equal_numpy(tmp_path: Path, fmt: str, knobs: str) -> None:
    vol, dense = _seg(tmp_path, fmt)
    for view in VIEWS.values():
        v = vol[view]
        for block in BLOCKS:
            _check_stats(voxgate.label_stats(v, block=block, workers=2), dense[view],
                         v.bounds.start)


def test_below_zero_bounds(tmp_path: Path) -> None:
    """A volume whose bounds start below 0 on two axes (zarr translation, precomputed
    voxel_offset): the chunk grid and the stored groups lie at its first voxel."""
    import cc3d

    for fmt in ("zarr3", "precomputed"):
        vol, dense = _seg(tmp_path / fmt, fmt, offset=(-5, 2, -13))
        assert tuple(vol.bounds.start) == (-5, 2, -13)
        for view in VIEWS.values():
            v = vol[view]
            want = cc3d.connected_components(dense[view], connectivity=26)
            for block in BLOCKS:
                _same_partition(np.asarray(voxgate.connected_components(v, block=block)), want)
                _check_stats(voxgate.label_stats(v, block=block), dense[view], v.bounds.start)


@pytest.mark.parametrize("fmt", ["zarr3-sharded", "precomputed"])
def test_a_second_write_is_seen_by_the_next_call(tmp_path: Path, fmt: str) -> None:
    """Each call scans the store again: data written into chunks that were absent at the first
    call (and a stored object erased) is in the second call's answer."""
    import cc3d

    vol, dense = _seg(tmp_path, fmt)
    first_cc = voxgate.connected_components(vol, block=(8, 10, 12))
    _same_partition(np.asarray(first_cc), cc3d.connected_components(dense, connectivity=26))
    _check_stats(voxgate.label_stats(vol, block=(8, 10, 12)), dense, vol.bounds.start)
    out_url = f"zarr://{tmp_path}/cc.zarr"
    voxgate.connected_components(vol, out_url, block=(8, 10, 12))

    _write(vol, LATER, dense)
    o = vol.bounds.start
    erased = Box(o + Vec(16, 20, 24), o + Vec(19, 23, 26))  # the far corner's object, now 0
    vol.remote.write(erased, np.zeros(tuple(erased.shape), np.uint64), 0)
    dense[erased.slices(o)] = 0
    assert np.array_equal(vol.read(), dense)
    want = cc3d.connected_components(dense, connectivity=26)
    for block in BLOCKS:
        _same_partition(np.asarray(voxgate.connected_components(vol, block=block)), want)
        _check_stats(voxgate.label_stats(vol, block=block), dense, vol.bounds.start)
    # the earlier result written again in place: its stale labels are gone
    voxgate.connected_components(vol, voxgate.open(out_url, mode="r+"), block=(8, 10, 12))
    _same_partition(voxgate.open(out_url).read(), want)


# -- copy: non-zero, NaN and -0.0 fill values, a box off the chunk grid -------------------------


def _zarr_with_fill(url: str, dtype: str, fill: float, zarr_format: int = 3
                    ) -> voxgate.Volume:
    vol = voxgate.create(url, shape=SHAPE, dtype=dtype, chunks=CHUNKS, voxel_size=(8, 8, 8),
                         offset=OFFSET, zarr_format=zarr_format)
    meta = Path(url.split("://", 1)[1]) / "0" / ("zarr.json" if zarr_format == 3 else ".zarray")
    doc = json.loads(meta.read_text())
    doc["fill_value"] = "NaN" if np.isnan(fill) else fill
    meta.write_text(json.dumps(doc))
    vol = voxgate.open(url, mode="r+")
    assert _bits(np.asarray(vol.remote.meta.fill_value, dtype).reshape(1)).tolist() == _bits(
        np.asarray(fill, dtype).reshape(1)).tolist()
    return vol


def _image_objects(vol: voxgate.Volume, seed: int) -> None:
    """Random values (some of them the fill value, -0.0 and +0.0 for floats) in the boxes of
    OBJECTS and in ZERO_CHUNK a chunk of only the fill value."""
    rng = np.random.default_rng(seed)
    dt = vol.dtype
    o = vol.bounds.start
    fill = np.asarray(vol.remote.meta.fill_value).astype(dt)
    zero = Box(o + ZERO_CHUNK[0], o + ZERO_CHUNK[1])
    vol.remote.write(zero, np.full(tuple(zero.shape), fill, dt), 0)
    for (a, b), _ in OBJECTS:
        box = Box(o + a, o + b)
        data = (rng.random(tuple(box.shape)) * 200 + 1).astype(dt)
        data.reshape(-1)[::3] = fill
        if dt.kind == "f":
            data.reshape(-1)[1::5] = -0.0
            data.reshape(-1)[2::7] = 0.0
        vol.remote.write(box, data, 0)


COPY_CASES = [("float32", float("nan"), 3), ("float32", -0.0, 2), ("uint8", 7, 2),
              ("uint16", 513, 3)]


@pytest.mark.parametrize(("dtype", "fill", "zarr_format"), COPY_CASES)
def test_copy_of_a_sparse_volume_with_a_fill_is_bit_for_bit(
        tmp_path: Path, dtype: str, fill: float, zarr_format: int, knobs: str) -> None:
    src = _zarr_with_fill(f"zarr://{tmp_path}/src.zarr", dtype, fill, zarr_format)
    _image_objects(src, 3)
    want = src.read()
    o = src.bounds.start
    dests = {"zarr3": {}, "zarr2": {"zarr_format": 2}, "zarr3-sharded": {"shards": (8, 10, 12)},
             "hdf5": {}}
    for name, options in dests.items():
        ext = ".h5" if name == "hdf5" else ".zarr"
        scheme = "hdf5" if name == "hdf5" else "zarr"
        url = f"{scheme}://{tmp_path}/{name}{ext}"
        voxgate.copy(src, url, progress=False, workers=2, **options)
        got = voxgate.open(url).read()
        assert np.array_equal(_bits(got), _bits(want)), name
        # a box off the chunk grid, into a destination that exists (fill value 0)
        box = Box(o + Vec(2, 3, 1), o + Vec(17, 21, 25))
        into = f"zarr://{tmp_path}/{name}-box.zarr"
        dst = voxgate.create(into, shape=SHAPE, dtype=dtype, chunks=(5, 4, 7),
                             voxel_size=(8, 8, 8), offset=OFFSET)
        voxgate.copy(src, dst, box=box, progress=False, workers=2)
        got = voxgate.open(into).read()
        expect = np.zeros(SHAPE, dtype)
        expect[box.slices(o)] = want[box.slices(o)]
        assert np.array_equal(_bits(got), _bits(expect)), name


@pytest.mark.parametrize("fmt", ["n5", "precomputed-sharded", "zarr2"])
def test_copy_of_sparse_ids_with_a_box(tmp_path: Path, fmt: str, knobs: str) -> None:
    """uint64 ids (some >= 2**63), a box off the chunk grid, each store into zarr v3."""
    vol, dense = _seg(tmp_path, fmt)
    o = vol.bounds.start
    box = Box(o + Vec(2, 3, 1), o + Vec(17, 21, 25))
    url = f"zarr://{tmp_path}/copy.zarr"
    voxgate.copy(vol, url, box=box, progress=False, workers=2)
    got = voxgate.open(url).read()
    expect = np.zeros(SHAPE, np.uint64)
    expect[box.slices(o)] = dense[box.slices(o)]
    assert np.array_equal(got, expect)
    # then into the store: sparse again, then a second write, copied again (a new copy)
    _write(vol, LATER, dense)
    url2 = f"{FORMATS[fmt][0]}://{tmp_path}/again{FORMATS[fmt][1]}"
    voxgate.copy(voxgate.open(url, mode="r"), url2, progress=False, **FORMATS[fmt][2])
    assert np.array_equal(voxgate.open(url2).read(), expect)
    voxgate.copy(vol, f"zarr://{tmp_path}/copy2.zarr", progress=False)
    assert np.array_equal(voxgate.open(f"zarr://{tmp_path}/copy2.zarr").read(), dense)


# -- downsample: non-zero fill values, sparse labels >= 2**63 --------------------------------


FACTORS = [(1, 2, 2), (2, 2, 2)]


def _levels(url: str) -> list[np.ndarray]:
    vol = voxgate.open(url)
    return [vol.at_scale(k).read() for k in range(len(vol.remote.meta.scales))]


def _check_means(got: list[np.ndarray], dense: np.ndarray) -> None:
    """The levels equal numpy's means (as values: the reference's mean of only -0.0 is +0.0,
    voxgate's kernel keeps -0.0 whatever it reads) and, bit for bit, the levels voxgate makes
    of the dense array in memory (nothing left unread there)."""
    want = downsample_scales(dense, FACTORS, "image")
    whole = voxgate.downsample(dense, 3, factors=FACTORS)
    assert len(got) == 3
    for k, (g, w) in enumerate(zip(got[1:], want, strict=True), start=1):
        assert np.array_equal(g, w, equal_nan=True), k
        assert np.array_equal(_bits(g), _bits(whole.at_scale(k).read())), k


@pytest.mark.parametrize(("dtype", "fill", "zarr_format"), COPY_CASES)
def test_downsample_mean_with_a_fill_equals_numpy(tmp_path: Path, dtype: str, fill: float,
                                                  zarr_format: int) -> None:
    url = f"zarr://{tmp_path}/img.zarr"
    vol = _zarr_with_fill(url, dtype, fill, zarr_format)
    _image_objects(vol, 4)
    dense = vol.read()
    voxgate.downsample(url, 3, factors=FACTORS, workers=2)
    _check_means(_levels(url), dense)
    # a second write into absent chunks, then downsample again
    o = vol.bounds.start
    for (a, b), _ in LATER:
        box = Box(o + a, o + b)
        vol.remote.write(box, np.full(tuple(box.shape), 100, dtype), 0)
    dense = vol.read()
    voxgate.downsample(url, 3, factors=FACTORS, workers=2)
    _check_means(_levels(url), dense)


@pytest.mark.parametrize("fmt", ["zarr2", "n5", "precomputed-sharded"])
def test_downsample_mode_of_sparse_ids_equals_numpy(tmp_path: Path, fmt: str) -> None:
    vol, dense = _seg(tmp_path, fmt)
    voxgate.downsample(vol.url, 3, factors=FACTORS, workers=2)
    got = _levels(vol.url)
    want = downsample_scales(dense, FACTORS, "segmentation")
    for k, (g, w) in enumerate(zip(got[1:], want, strict=True), start=1):
        assert np.array_equal(g, w), k
    _write(vol, LATER, dense)
    voxgate.downsample(vol.url, 3, factors=FACTORS, workers=2)
    got = _levels(vol.url)
    want = downsample_scales(dense, FACTORS, "segmentation")
    for k, (g, w) in enumerate(zip(got[1:], want, strict=True), start=1):
        assert np.array_equal(g, w), k


# -- HDF5 and WEBKNOSSOS (chunks on the grid through 0, blocks "origin"-anchored) -----------


def test_hdf5_and_webknossos_sparse_ids(tmp_path: Path) -> None:
    """A WEBKNOSSOS layer's chunks lie on the grid through 0, not at its first voxel (3, 5, 7):
    chunks absent on voxgate's grid must hold no stored voxel.  Single voxels at random places
    (some on the native chunk borders), an HDF5 dataset the same; every Service against numpy."""
    import cc3d

    shape = (40, 45, 50)
    # (the layer's native chunks start at relative (29, 27, 25) - its grid lies through 0 -
    # and voxgate's at 32: a voxel past 29 (27, 25) is in native chunks that touch two of
    # voxgate's, which then both count as stored; so the voxels stay before, but one)
    spots = [(0, 0, 0), (28, 26, 24), (28, 27, 24), (33, 0, 5), (27, 25, 23)]
    for scheme, loc, options, chunks in (
            ("webknossos", "wk", {"layer": "segmentation"}, (32, 32, 32)),
            ("hdf5", "seg.h5", {}, (8, 10, 12))):
        url = f"{scheme}://{tmp_path}/{loc}"
        vol = voxgate.create(url, shape=shape, dtype="uint64", chunks=chunks,
                             voxel_size=(8, 8, 8), offset=OFFSET, kind="segmentation",
                             **options)
        o = vol.bounds.start
        dense = np.zeros(shape, np.uint64)
        for i, at in enumerate(spots):
            box = Box(o + at, o + at + (1, 1, 1))
            dense[at] = BIG + i if i % 2 else i + 1
            vol.remote.write(box, np.ascontiguousarray(dense[box.slices(o)]), 0)
        sc = vol.scale_meta
        absent = vol.remote.absent_chunks(sc.bounds, 0)
        assert absent  # sparse
        for c in absent:  # (what is called absent holds nothing)
            lo = Vec(*(i * n for i, n in zip(c, sc.chunks, strict=True)))
            box = Box(o + lo, o + lo + sc.chunks)
            assert not dense[box.intersect(sc.bounds).slices(o)].any(), (scheme, c)
        want = cc3d.connected_components(dense, connectivity=26)
        for block in (None, (16, 16, 16), (5, 7, 9)):
            _same_partition(np.asarray(voxgate.connected_components(vol, block=block)), want)
            _check_stats(voxgate.label_stats(vol, block=block), dense, o)
        sub = vol[5:37, 3:40, 20:49]
        _check_stats(voxgate.label_stats(sub, block=(5, 7, 9)), dense[5:37, 3:40, 20:49],
                     sub.bounds.start)
        voxgate.copy(vol, f"zarr://{tmp_path}/{loc}-copy.zarr", progress=False)
        assert np.array_equal(voxgate.open(f"zarr://{tmp_path}/{loc}-copy.zarr").read(), dense)
        factors = [(2, 2, 2), (2, 2, 2)]
        voxgate.downsample(url, 3, factors=factors)
        start = o if vol.remote.pyramid_anchor == "origin" else None
        got = _levels(url)
        for k, w in enumerate(downsample_scales(dense, factors, "segmentation", start), 1):
            assert np.array_equal(got[k], w), (scheme, k)


# -- chunks deleted from the store after a first run -------------------------------------


def test_chunks_deleted_after_a_first_run(tmp_path: Path) -> None:
    """Chunks of level 0 deleted (absent again) after downsample, connected_components into a
    store and a copy ran: run again, each result is the new volume's (stale coarse levels,
    labels and copied voxels where the chunks were are replaced by 0)."""
    import cc3d

    vol, dense = _seg(tmp_path, "zarr3")
    url = vol.url
    voxgate.downsample(url, 3, factors=FACTORS)
    out = f"zarr://{tmp_path}/cc.zarr"
    voxgate.connected_components(vol, out, block=(8, 10, 12))
    copy = f"zarr://{tmp_path}/copy.zarr"
    voxgate.copy(vol, copy, scales=[0], progress=False)
    levels = _levels(url)
    assert levels[1].any() and levels[2].any()
    # the chunks of the first and the last object go
    for c in ((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0),
              (1, 1, 1), (4, 4, 4)):
        chunk = tmp_path / "seg.zarr" / "0" / "c" / str(c[0]) / str(c[1]) / str(c[2])
        assert chunk.is_file(), c
        chunk.unlink()
    vol = voxgate.open(url, mode="r+")
    new = vol.read()
    assert not np.array_equal(new, dense) and new.any()
    want = cc3d.connected_components(new, connectivity=26)
    for block in BLOCKS:
        _same_partition(np.asarray(voxgate.connected_components(vol, block=block)), want)
        _check_stats(voxgate.label_stats(vol, block=block), new, vol.bounds.start)
    voxgate.connected_components(vol, voxgate.open(out, mode="r+"), block=(8, 10, 12))
    _same_partition(voxgate.open(out).read(), want)
    voxgate.copy(vol, voxgate.open(copy, mode="r+"), scales=[0], progress=False)
    assert np.array_equal(voxgate.open(copy).read(), new)
    voxgate.downsample(url, 3, factors=FACTORS)
    got = _levels(url)
    for k, w in enumerate(downsample_scales(new, FACTORS, "segmentation"), start=1):
        assert np.array_equal(got[k], w), k


# -- another handle's writes; coarser scales --------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_writes_through_another_handle_are_seen(tmp_path: Path, fmt: str) -> None:
    """A Volume used once, then written through another handle (as another process would):
    the next calls on the first Volume scan its chunks again and see the new ones."""
    import cc3d

    vol, dense = _seg(tmp_path, fmt)
    _check_stats(voxgate.label_stats(vol, block=(8, 10, 12)), dense, vol.bounds.start)
    voxgate.connected_components(vol, block=(8, 10, 12))
    other = voxgate.open(vol.url, mode="r+")
    _write(other, LATER, dense)
    assert np.array_equal(voxgate.open(vol.url).read(), dense)
    want = cc3d.connected_components(dense, connectivity=26)
    for block in BLOCKS:
        _same_partition(np.asarray(voxgate.connected_components(vol, block=block)), want)
        _check_stats(voxgate.label_stats(vol, block=block), dense, vol.bounds.start)
    voxgate.copy(vol, f"zarr://{tmp_path}/copy.zarr", progress=False)
    assert np.array_equal(voxgate.open(f"zarr://{tmp_path}/copy.zarr").read(), dense)


@pytest.mark.parametrize("fmt", ["precomputed", "zarr3", "n5"])
def test_sparse_coarser_scales(tmp_path: Path, fmt: str) -> None:
    """Each scale of a three-scale volume written sparsely on its own (its bounds start at
    (3, 5, 7) // 2**k): views of it labelled and counted, and a copy of a box."""
    import cc3d

    scheme, ext, options = FORMATS[fmt]
    url = f"{scheme}://{tmp_path}/m{ext}"
    vol = voxgate.create(url, shape=(38, 46, 52), dtype="uint64", chunks=CHUNKS,
                         voxel_size=(8, 8, 8), offset=OFFSET, kind="segmentation",
                         num_scales=3, **options)
    rng = np.random.default_rng(2)
    for k in range(3):
        sc = vol.at_scale(k).scale_meta
        o = sc.bounds.start
        for j in range(4):
            at = o + Vec(*(int(rng.integers(0, n - 1)) for n in sc.shape))
            box = Box(at, at + Vec(1, 2, 2)).intersect(sc.bounds)
            vol.remote.write(box, np.full(tuple(box.shape), BIG + j, np.uint64), k)
        level = vol.at_scale(k)
        dense = level.read()
        assert dense.any() and level.remote.absent_chunks(sc.bounds, k)
        n = sc.shape
        view = (slice(1, n[0] - 1), slice(2, n[1] - 1), slice(3, n[2] - 2))
        sub = level[view]
        want = cc3d.connected_components(dense[view], connectivity=26)
        for block in BLOCKS:
            _same_partition(np.asarray(voxgate.connected_components(sub, block=block)), want)
            _check_stats(voxgate.label_stats(sub, block=block), dense[view], sub.bounds.start)
    box = Box(vol.bounds.start + Vec(3, 5, 7), vol.bounds.start + Vec(30, 41, 47))
    voxgate.copy(vol, f"zarr://{tmp_path}/copy.zarr", box=box, progress=False)
    copied = voxgate.open(f"zarr://{tmp_path}/copy.zarr")
    o = vol.bounds.start
    expect = np.zeros(tuple(vol.scale_meta.shape), np.uint64)
    expect[box.slices(o)] = vol.read()[box.slices(o)]
    assert np.array_equal(copied.read(), expect)
    for k in (1, 2):  # (a box covering the region's voxels: at least its inner part)
        src, got = vol.at_scale(k).read(), copied.at_scale(k).read()
        assert np.array_equal(got[got != 0], src[got != 0])
        f = 2**k
        sk = vol.at_scale(k).scale_meta.bounds.start
        inner = Box(Vec(*(-(-a // f) for a in box.start)), Vec(*(b // f for b in box.stop)))
        sl = inner.slices(sk)
        assert np.array_equal(got[sl], src[sl]), k
