"""downsample against brute-force numpy (tests/services/numpy_reference.py), never against itself.

Every factor sequence ((1, 2, 2), (2, 2, 2), mixed, others), odd and even extents, every dtype,
1-4 scales, with and without a channel axis; the kernel, and the public ``voxgate.downsample``
on numpy input and on a stored zarr volume, whole and block by block.  (tinybrain's
single-level 2x2 averaging returned garbage at odd extents and voxgate passed it on: issue 9.)
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import voxgate
from voxgate.services.downsample import downsample_kernel, downsample_provenance

from .numpy_reference import downsample_mean, downsample_mode, downsample_scales

IMAGE_DTYPES = ["uint8", "uint16", "uint32", "uint64", "int16", "float32", "float64"]
SEG_DTYPES = ["uint8", "uint16", "uint32", "uint64"]
FACTORS = [(1, 2, 2), (2, 2, 2), (1, 1, 2), (2, 1, 1), (1, 3, 3), (2, 2, 1), (3, 2, 1),
           (1, 1, 1)]


def make(kind: str, dtype: str, shape: Sequence[int], seed: int) -> np.ndarray:
    """Images over the dtype's whole range (sums overflow narrow types); labels from a small
    alphabet so that blocks have ties, and large uint64 ids (they must survive exactly)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if kind == "segmentation":
        alphabet = np.array([0, 1, 2, 3], dtype=np.uint64)
        if dt == np.uint64:
            alphabet = alphabet + np.uint64(2**63 - 5)
        return alphabet[rng.integers(0, len(alphabet), shape)].astype(dt)
    if dt.kind == "f":
        return (rng.standard_normal(shape) * 1000).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, want {want.dtype}"
    if want.dtype.kind == "f":
        # both are float64 means cast to the dtype; only the order of the additions differs
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, err_msg=what)
    else:
        bad = int(np.count_nonzero(got != want))
        assert bad == 0, f"{what}: {bad} of {want.size} voxels differ"


def check_kernel(data: np.ndarray, factors: Sequence[Sequence[int]], kind: str,
                 start: Sequence[int] | None = None) -> None:
    got = downsample_kernel(data, factors, kind, start=start)
    want = downsample_scales(data, factors, kind, start)
    assert len(got) == len(want) == len(factors)
    for k, (g, w) in enumerate(zip(got, want, strict=True), start=1):
        assert_same(g, w, f"{kind} {data.dtype} {data.shape} {list(factors)} start {start} "
                    f"scale {k}")


# -- the reference itself: a few hand-computed answers ----------------------------------------

def test_reference_by_hand() -> None:
    a = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10
    # z=0: [[0 10 20] [30 40 50] [60 70 80]]: blocks (0 10 30 40) (20 50) (60 70) (80)
    np.testing.assert_array_equal(downsample_mean(a, (1, 2, 2))[0], [[20, 35], [65, 80]])
    np.testing.assert_array_equal(downsample_mean(np.array([[[1, 2, 2]]], np.uint8), (1, 1, 3)),
                                  [[[1]]])  # 5 / 3 floors to 1
    np.testing.assert_array_equal(
        downsample_mean(np.array([[[-3, 0]]], np.int16), (1, 1, 2)), [[[-2]]])  # floor(-1.5)
    np.testing.assert_allclose(downsample_mean(np.array([[[1, 2]]], np.float32), (1, 1, 2)),
                               [[[1.5]]])
    # mode: a b / c d blocks, ties to the first in C order
    tie = np.array([[[5, 7], [7, 5]]], np.uint64)  # a == d, b == c
    assert downsample_mode(tie, (1, 2, 2))[0, 0, 0] == 5
    distinct = np.array([[[9, 3], [4, 1]]], np.uint64)
    assert downsample_mode(distinct, (1, 2, 2))[0, 0, 0] == 9
    later = np.array([[[9, 3], [4, 3]]], np.uint64)  # 3 is the only label seen twice
    assert downsample_mode(later, (1, 2, 2))[0, 0, 0] == 3
    # a partial edge block counts only what it covers: (1, 1, 2) over [4 4 6] -> [4, 6]
    np.testing.assert_array_equal(downsample_mode(np.array([[[4, 4, 6]]], np.uint8), (1, 1, 2)),
                                  [[[4, 6]]])


def test_reference_on_the_grid_through_zero_by_hand() -> None:
    # x coordinates 7..11 with factor 2: blocks {7} {8 9} {10 11} (coordinates 3, 4, 5)
    row = np.array([[[10, 20, 31, 40, 50]]], np.uint8)
    np.testing.assert_array_equal(downsample_mean(row, (1, 1, 2), start=(0, 0, 7)),
                                  [[[10, 25, 45]]])
    np.testing.assert_array_equal(downsample_mean(row, (1, 1, 2)), [[[15, 35, 50]]])
    # factor 3 from x=5: blocks {5} {6 7 8} {9 10 11}; mode of a cut block
    labels = np.array([[[4, 6, 6, 4, 9, 9, 4]]], np.uint8)
    np.testing.assert_array_equal(downsample_mode(labels, (1, 1, 3), start=(0, 0, 5)),
                                  [[[4, 6, 9]]])
    # two levels: the second starts at 7 // 2 = 3, so its blocks are {3} {4 5}
    got = downsample_scales(row, [(1, 1, 2), (1, 1, 2)], "image", start=(0, 0, 7))
    np.testing.assert_array_equal(got[1], [[[10, 35]]])


# -- the issue's reproduction, end to end ---------------------------------------------------

def test_issue_9_odd_extent_image(tmp_path: Path) -> None:
    a = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10
    url = f"zarr://{tmp_path}/odd.zarr"
    vol = voxgate.create(url, shape=a.shape, chunks=(2, 3, 3), dtype="uint8",
                         voxel_size=(40, 8, 8))
    vol[:] = a
    voxgate.downsample(url, num_scales=2)
    s1 = voxgate.open(url).at_scale(1).read()
    np.testing.assert_array_equal(s1, [[[20, 35], [65, 80]], [[110, 125], [155, 170]]])


# -- the kernel: every combination the issue names, then hypothesis over the rest -----------

SEQUENCES = {"(1,2,2)": [(1, 2, 2)], "(2,2,2)": [(2, 2, 2)],
             "mixed": [(1, 2, 2), (2, 2, 2), (1, 2, 2), (2, 1, 1)]}
SHAPES = {"even": (8, 16, 16), "odd": (7, 13, 11), "mixed-odd": (6, 9, 16)}


@pytest.mark.parametrize("seq", list(SEQUENCES))
@pytest.mark.parametrize(("kind", "dtype"), [("image", d) for d in IMAGE_DTYPES]
                         + [("segmentation", d) for d in SEG_DTYPES])
def test_kernel_grid(kind: str, dtype: str, seq: str) -> None:
    for shape_name, shape in SHAPES.items():
        for n in range(1, 5):
            factors = (SEQUENCES[seq] * 4)[:n] if seq == "mixed" else SEQUENCES[seq] * n
            seed = zlib.crc32(repr((kind, dtype, seq, shape_name, n)).encode())  # stable
            check_kernel(make(kind, dtype, shape, seed), factors, kind)


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(["image", "segmentation"]),
       dtype_index=st.integers(0, 100),
       shape=st.tuples(st.integers(1, 10), st.integers(1, 10), st.integers(1, 10)),
       factors=st.lists(st.sampled_from(FACTORS), min_size=1, max_size=4),
       channels=st.sampled_from([0, 0, 2]),
       seed=st.integers(0, 2**32 - 1))
def test_kernel_property(kind: str, dtype_index: int, shape: tuple[int, int, int],
                         factors: list[tuple[int, int, int]], channels: int, seed: int) -> None:
    dtypes = IMAGE_DTYPES if kind == "image" else SEG_DTYPES
    dtype = dtypes[dtype_index % len(dtypes)]
    data = make(kind, dtype, ((channels,) if channels else ()) + shape, seed)
    check_kernel(data, factors, kind)


@pytest.mark.parametrize(("kind", "dtype"), [("image", "uint8"), ("image", "int16"),
                                             ("image", "float32"), ("image", "uint64"),
                                             ("segmentation", "uint8"),
                                             ("segmentation", "uint64")])
def test_kernel_on_the_grid_through_zero(kind: str, dtype: str) -> None:
    """``start``: the blocks lie on the grid through coordinate 0 (WEBKNOSSOS mags), every
    lead before the array's first voxel and odd extents, 1-3 levels."""
    for shape in [(7, 13, 11), (1, 5, 4), (8, 16, 16)]:
        for start in [(0, 0, 0), (1, 7, 45), (3, 1, 2), (5, 6, 3)]:
            for factors in [[(2, 2, 2)], [(1, 2, 2), (2, 2, 2), (1, 3, 3)], [(3, 2, 1)]]:
                seed = zlib.crc32(repr((kind, dtype, shape, start, factors)).encode())
                check_kernel(make(kind, dtype, shape, seed), factors, kind, start)


@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from(["image", "segmentation"]),
       shape=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
       start=st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 20)),
       factors=st.lists(st.sampled_from(FACTORS), min_size=1, max_size=3),
       channels=st.sampled_from([0, 0, 2]),
       seed=st.integers(0, 2**32 - 1))
def test_kernel_on_the_grid_through_zero_property(kind: str, shape: tuple[int, int, int],
                                                  start: tuple[int, int, int],
                                                  factors: list[tuple[int, int, int]],
                                                  channels: int, seed: int) -> None:
    dtype = "uint16" if kind == "image" else "uint32"
    data = make(kind, dtype, ((channels,) if channels else ()) + shape, seed)
    check_kernel(data, factors, kind, start)


def test_mode_ties_and_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks built to tie, in every position of 2x2 and 2x2x2 blocks, whole and partial."""
    import importlib

    # tiny slabs, so the (1, 2, 2) tie correction runs over several of them
    monkeypatch.setattr(importlib.import_module("voxgate.services.downsample"), "_SLAB_VOXELS",
                        3)
    rng = np.random.default_rng(7)
    for shape in [(2, 2, 2), (3, 3, 3), (4, 6, 6), (5, 7, 3)]:
        for _ in range(40):
            labels = rng.integers(0, 2, shape).astype(np.uint64) * np.uint64(2**64 - 2)
            check_kernel(labels, [(2, 2, 2)], "segmentation")
            check_kernel(labels, [(1, 2, 2)], "segmentation")
            check_kernel(rng.integers(0, 4, shape).astype(np.uint32), [(1, 2, 2)],
                         "segmentation")


@pytest.mark.parametrize("gather_below", [0, 12, 10**9])
def test_mode_2x2_ties_sparse_and_dense(monkeypatch: pytest.MonkeyPatch,
                                        gather_below: int) -> None:
    """The (1, 2, 2) tie correction checks a slab's blocks one by one (gathered) when few
    need it, else with a mask over the whole slab: both ways (forced with ``_GATHER_BELOW``
    0 and huge, and the default choosing per slab) against the brute-force reference, on
    cells with a few blocks of every tie pattern planted in them, and on noise."""
    import importlib

    mod = importlib.import_module("voxgate.services.downsample")
    monkeypatch.setattr(mod, "_GATHER_BELOW", gather_below)
    monkeypatch.setattr(mod, "_SLAB_VOXELS", 40)
    rng = np.random.default_rng(11)
    patterns = [(1, 2, 3, 4), (1, 2, 2, 1), (1, 2, 3, 1), (1, 2, 1, 3), (1, 1, 2, 2),
                (1, 2, 2, 3), (1, 2, 3, 3), (1, 2, 3, 2), (1, 2, 1, 2), (5, 5, 5, 5)]
    for shape in [(3, 10, 12), (4, 9, 13), (1, 16, 16)]:
        for _ in range(6):
            labels = np.repeat(rng.integers(1, 4, (shape[0], 1, 1)), shape[1], 1)
            labels = np.repeat(labels, shape[2], 2).astype(np.uint64) * np.uint64(7)
            for _ in range(int(rng.integers(1, 4))):
                z = int(rng.integers(0, shape[0]))
                y = 2 * int(rng.integers(0, shape[1] // 2))
                x = 2 * int(rng.integers(0, shape[2] // 2))
                p = patterns[int(rng.integers(0, len(patterns)))]
                base = np.uint64(2**64 - 10) if rng.random() < 0.5 else np.uint64(100)
                labels[z, y: y + 2, x: x + 2] = np.array(p, np.uint64).reshape(2, 2) + base
            check_kernel(labels, [(1, 2, 2)], "segmentation")
            check_kernel(labels, [(1, 2, 2), (1, 2, 2)], "segmentation")
        noise = rng.integers(0, 5, shape).astype(np.uint32)
        check_kernel(noise, [(1, 2, 2)], "segmentation")


def test_wide_integer_sums_do_not_overflow() -> None:
    top = np.full((2, 3, 3), 2**64 - 1, dtype=np.uint64)
    assert (downsample_kernel(top, [(2, 2, 2)], "image")[0] == 2**64 - 1).all()
    low = np.full((2, 3, 3), -(2**63), dtype=np.int64)
    assert (downsample_kernel(low, [(1, 2, 2)], "image")[0] == -(2**63)).all()
    u32 = np.full((2, 4, 4), 2**32 - 1, dtype=np.uint32)
    assert (downsample_kernel(u32, [(2, 2, 2)], "image")[0] == 2**32 - 1).all()


# -- the public function: numpy input, stored input whole and block by block ------------------

CASES = [
    ("image", "uint8", (7, 27, 21), [(1, 2, 2), (1, 2, 2), (2, 2, 2)]),
    ("image", "uint16", (9, 20, 15), [(2, 2, 2), (1, 2, 2)]),
    ("image", "float32", (5, 19, 26), [(1, 2, 2), (2, 2, 2), (1, 2, 2)]),
    ("segmentation", "uint64", (7, 27, 21), [(1, 2, 2), (2, 2, 2), (1, 2, 2)]),
    ("segmentation", "uint32", (9, 18, 17), [(2, 2, 2), (2, 2, 2)]),
]


@pytest.mark.parametrize(("kind", "dtype", "shape", "factors"), CASES)
def test_public_numpy_input(kind: str, dtype: str, shape: tuple[int, int, int],
                            factors: list[tuple[int, int, int]]) -> None:
    data = make(kind, dtype, shape, 11)
    want = downsample_scales(data, factors, kind)
    # numpy input: uint32 / uint64 are taken as segmentations, narrower types as images
    vol = voxgate.downsample(data, len(factors) + 1, factors=factors)
    assert vol.meta.kind == kind
    for k, w in enumerate(want, start=1):
        assert_same(vol.at_scale(k).read(), w, f"numpy input, scale {k}")


@pytest.mark.parametrize(("kind", "dtype", "shape", "factors"), CASES)
def test_public_stored_whole_and_blockwise(tmp_path: Path, kind: str, dtype: str,
                                           shape: tuple[int, int, int],
                                           factors: list[tuple[int, int, int]]) -> None:
    data = make(kind, dtype, shape, 12)
    want = downsample_scales(data, factors, kind)
    runs = {
        "whole": {},  # one block: the default grows blocks to 64 MiB
        # the smallest blocks (rounded up to whole chunks at every scale): several, and
        # partial ones at the far edges
        "blocks": {"block": (1, 1, 1), "workers": 1},
        "blocks-threads": {"block": (1, 1, 1), "workers": 2},
    }
    for name, opts in runs.items():
        url = f"zarr://{tmp_path}/{name}.zarr"
        vol = voxgate.create(url, shape=shape, chunks=(2, 2, 2), dtype=dtype,
                             voxel_size=(40, 8, 8), kind=kind)
        vol[:] = data
        out = voxgate.downsample(url, len(factors) + 1, factors=factors, **opts)
        blocks = downsample_provenance(out).details["blocks"]  # type: ignore[union-attr]
        assert (blocks == 1) == (name == "whole"), (name, blocks)
        again = voxgate.open(url)
        for k, w in enumerate(want, start=1):
            assert_same(again.at_scale(k).read(), w, f"{name}, scale {k}")


#: level 0 in shards of 2 x 2 x 2 chunks (hash "identity" on the compressed Morton code, 3 bits
#: preshifted)
SMALL_SHARDS = {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 3, "hash": "identity",
                "minishard_bits": 0, "shard_bits": 6, "minishard_index_encoding": "gzip",
                "data_encoding": "gzip"}


@pytest.mark.parametrize(("kind", "dtype", "encoding"), [
    ("image", "uint8", "raw"),
    ("segmentation", "uint64", "compressed_segmentation"),
])
def test_sharded_precomputed_with_an_offset_read_by_its_peers(tmp_path: Path, kind: str,
                                                              dtype: str, encoding: str) -> None:
    """A sharded precomputed layer with odd extents and an odd voxel offset, downsampled: every
    level (each sharded: the coarser ones get a sharding of their own, here one shard each),
    read by CloudVolume and by tensorstore (not by voxgate), equals the numpy pyramid.  Levels
    group voxels from the layer's first voxel; their offsets round down and their shapes up
    (voxgate.meta.next_scales)."""
    import tensorstore as ts
    from cloudvolume import CloudVolume

    shape, offset = (19, 45, 37), (3, 7, 5)  # z, y, x
    data = make(kind, dtype, shape, 21)
    path = tmp_path / "layer"
    opts = {"encoding": encoding} if encoding != "raw" else {}
    vol = voxgate.create(f"precomputed://file://{path}", shape=shape, chunks=(4, 8, 8),
                         dtype=dtype, voxel_size=(8, 8, 8), kind=kind, offset=offset,
                         sharded=SMALL_SHARDS, **opts)
    vol[:] = data
    voxgate.downsample(vol.url, 3)
    want = [data, *downsample_scales(data, [(2, 2, 2), (2, 2, 2)], kind)]
    for mip, w in enumerate(want):
        cv = CloudVolume(f"file://{path}", mip=mip, progress=False, fill_missing=False,
                         bounded=True)
        assert "sharding" in cv.scale, mip
        assert tuple(cv.voxel_offset) == tuple(o // 2**mip for o in offset[::-1]), mip
        assert_same(np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0), w,
                    f"CloudVolume, mip {mip}")
        store = ts.open({"driver": "neuroglancer_precomputed", "scale_index": mip,
                         "kvstore": f"file://{path}/"}).result()
        assert_same(np.asarray(store.read().result())[..., 0].transpose(2, 1, 0), w,
                    f"tensorstore, mip {mip}")


@pytest.mark.parametrize("store", ["n5", "hdf5", "precomputed", "webknossos", "knossos",
                                   "zarr2"])
@pytest.mark.parametrize("kind", ["image", "segmentation"])
def test_every_store_that_adds_scales_holds_the_numpy_pyramid(tmp_path: Path, store: str,
                                                               kind: str) -> None:
    """downsample on each store that can add scales (odd extents, an odd scale-0 shape at
    every level), read back: the numpy pyramid.  (zarr v3 above; TIFF adds no scales.)"""
    url = {"n5": f"n5://{tmp_path}/a.n5", "hdf5": f"hdf5://{tmp_path}/a.h5",
           "precomputed": f"precomputed://file://{tmp_path}/pre",
           "webknossos": f"webknossos://{tmp_path}/wk", "knossos": f"knossos://{tmp_path}/kn",
           "zarr2": f"zarr://{tmp_path}/a.zarr"}[store]
    # (precomputed ids are 32 or 64 bits; KNOSSOS cubes hold uint8 only)
    dtype = "uint8" if kind == "image" or store == "knossos" else "uint32"
    data = make(kind, dtype, (9, 30, 23), 31)
    opts = {"zarr_format": 2} if store == "zarr2" else {}
    vol = voxgate.create(url, shape=data.shape, chunks=(4, 8, 8), dtype=dtype,
                         voxel_size=(8, 8, 8), kind=kind, **opts)
    vol[:] = data
    voxgate.downsample(url, 3)
    again = voxgate.open(url)
    assert len(again.scales) == 3
    for k, w in enumerate(downsample_scales(data, [(2, 2, 2), (2, 2, 2)], kind), start=1):
        assert_same(again.at_scale(k).read(), w, f"{store} {kind}, scale {k}")
