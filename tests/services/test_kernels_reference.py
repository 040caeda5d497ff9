"""The Services' kernels against brute-force references (tests/services/brute_reference.py),
never against their own output or the library they call: connected components (whole and
stitched block by block), label statistics (per block and merged), relabelling and
canonical numbering, the proofreading split, synapse post-processing and predict's tiling.

Shapes are odd on purpose: extents that no block or chunk divides, last blocks one voxel
thick, a flat (1-voxel) axis, stores with an offset on every axis, anisotropic voxels.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.services.connected_components import canonical_order, connected_components_kernel
from voxgate.services.label_stats import label_stats_kernel, merge_stats
from voxgate.services.proofread import split_kernel
from voxgate.synthetic import synthetic_labels

from .brute_reference import (
    components,
    label_stats,
    relabel,
    split_pieces,
    synapse_table,
    windowed_mean,
)

proofread_core = importlib.import_module("voxgate.services.proofread.core")

BIG = 2**64 - 40  # ids near the top of uint64: nothing may pass them through a float


def random_labels(shape: Sequence[int], seed: int, values: int = 2, density: float = 0.5,
                  base: int = 0, dtype: str = "uint64") -> np.ndarray:
    rng = np.random.default_rng(seed)
    fg = rng.random(tuple(shape)) < density
    ids = rng.integers(1, values + 1, tuple(shape)).astype(np.uint64)
    if base:
        ids = ids + np.uint64(base)
    return np.where(fg, ids, 0).astype(dtype)


def zarr_store(tmp: Path, name: str, data: np.ndarray, chunks: Sequence[int],
               offset: Sequence[int] = (0, 0, 0), kind: str = "segmentation",
               voxel_size: Sequence[float] = (40, 8, 8)) -> voxgate.Volume:
    vol = voxgate.create(f"zarr://{tmp}/{name}.zarr", shape=data.shape, chunks=tuple(chunks),
                         dtype=data.dtype, voxel_size=tuple(voxel_size), kind=kind,
                         offset=tuple(offset))
    vol[:] = data
    return voxgate.open(vol.url, mode="r+")


# -- the references themselves, by hand ---------------------------------------------------------

def test_references_by_hand() -> None:
    diag = np.zeros((2, 2, 2), np.uint8)
    diag[0, 0, 0] = diag[1, 1, 1] = 1  # corners only
    edge = np.zeros((1, 2, 2), np.uint8)
    edge[0, 0, 0] = edge[0, 1, 1] = 1  # an edge apart
    assert components(diag, 26).max() == 1 and components(diag, 18).max() == 2
    assert components(edge, 18).max() == 1 and components(edge, 6).max() == 2
    two = np.array([[[3, 3, 5, 5, 0, 3]]], np.uint16)  # equal values connect, others do not
    assert components(two, 26).tolist() == [[[1, 1, 2, 2, 0, 3]]]
    s = label_stats(np.array([[[0, 7], [7, 0]], [[0, 0], [0, 7]]]), origin=(10, 20, 30))
    assert s == {7: {"count": 3, "lo": (10, 20, 30), "hi": (12, 22, 32),
                     "centroid": (10 + 1 / 3, 20 + 2 / 3, 30 + 2 / 3)}}
    assert relabel(np.array([1, 2, 3]), {1: 2, 2: 3}).tolist() == [2, 3, 3]  # all at once
    pieces, k = split_pieces(np.array([[[4, 0, 4, 4, 0, 4, 4]]]), 4)
    assert k == 3 and pieces.tolist() == [[[3, 0, 1, 1, 0, 2, 2]]]  # size, then scan order
    grey = np.zeros((1, 3, 5), np.uint8)
    grey[0, 1, 1:4] = [200, 255, 200]
    (row,) = synapse_table(grey, threshold=0.5, min_size=2, voxel_size=(1, 1, 1))
    assert (row["z"], row["y"], row["x"], row["size"]) == (0, 1, 2, 3)
    assert row["score"] == np.float32((200 + 255 + 200) / 3 / 255)


# -- connected components -----------------------------------------------------------------------

# last blocks one voxel thick on every axis; a flat axis; a one-voxel-wide volume
CC_CASES = [((11, 13, 9), (5, 6, 4)), ((1, 17, 10), (1, 4, 3)), ((7, 1, 1), (2, 1, 1)),
            ((9, 10, 7), (2, 3, 2))]


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize(("shape", "block"), CC_CASES)
def test_connected_components_whole_and_stitched(connectivity: int, shape: tuple[int, ...],
                                                 block: tuple[int, ...]) -> None:
    for seed, values, density in ((1, 1, 0.4), (2, 3, 0.6)):
        lab = random_labels(shape, seed + connectivity, values, density, base=BIG)
        want = components(lab, connectivity)
        got = connected_components_kernel(lab, connectivity)
        np.testing.assert_array_equal(got, want)
        blocked = voxgate.connected_components(lab, connectivity=connectivity, block=block)
        assert blocked.provenance.details["blocks"] > 1
        np.testing.assert_array_equal(blocked, want)
        small = voxgate.connected_components(lab, connectivity=connectivity, block=block,
                                             dtype=np.uint32, workers=2)
        assert small.dtype == np.uint32
        np.testing.assert_array_equal(small, want)


def test_connected_components_store_with_offset(tmp_path: Path) -> None:
    """A store with an offset on every axis and odd chunks: blocks round up to whole chunks,
    the last ones partial."""
    lab = random_labels((10, 13, 11), 7, 2, 0.5, dtype="uint32")
    src = zarr_store(tmp_path, "in", lab, (3, 4, 5), offset=(3, 5, 7))
    want = components(lab, 26)
    for name, block in (("a", (3, 4, 5)), ("b", (1, 1, 1)), ("c", (6, 8, 5))):
        out = voxgate.connected_components(src, out=f"zarr://{tmp_path}/{name}.zarr",
                                           block=block)
        assert tuple(out.offset) == (3, 5, 7)
        np.testing.assert_array_equal(out.read(), want)
    part = voxgate.connected_components(src[2:9, 1:12, 3:10])  # a view: its own components
    np.testing.assert_array_equal(part, components(lab[2:9, 1:12, 3:10], 26))


def test_canonical_order() -> None:
    lab = random_labels((5, 6, 7), 3, 9, 0.7, base=BIG - 100)
    seen: dict[int, int] = {0: 0}
    for v in lab.ravel().tolist():
        seen.setdefault(int(v), len(seen))
    got = canonical_order(lab)
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, relabel(lab, seen).astype(np.uint64))


# -- label statistics ---------------------------------------------------------------------------

def assert_stats(df_or_parts: object, want: dict[int, dict]) -> None:
    if isinstance(df_or_parts, dict):  # the kernel's (or merge_stats') arrays
        p = df_or_parts
        ids = [int(i) for i in p["id"]]
        got = {i: {"count": int(p["count"][j]), "lo": tuple(int(v) for v in p["lo"][j]),
                   "hi": tuple(int(v) for v in p["hi"][j]),
                   "centroid": tuple(p["sum"][j] / p["count"][j])}
               for j, i in enumerate(ids)}
    else:
        df = df_or_parts
        assert df["id"].dtype == np.uint64  # type: ignore[index]
        ids = [int(i) for i in df["id"]]  # type: ignore[index]
        got = {int(r.id): {"count": int(r.voxel_count), "lo": (r.z0, r.y0, r.x0),
                           "hi": (r.z1, r.y1, r.x1),
                           "centroid": (r.centroid_z, r.centroid_y, r.centroid_x)}
               for r in df.itertuples()}  # type: ignore[attr-defined]
    if isinstance(df_or_parts, dict):
        assert sorted(ids) == sorted(want) and len(ids) == len(want), "ids"  # any order
    else:
        assert ids == sorted(want), "ids (ascending)"
    for i, w in want.items():
        g = got[i]
        assert (g["count"], tuple(g["lo"]), tuple(g["hi"])) == (
            w["count"], w["lo"], w["hi"]), i
        np.testing.assert_allclose(g["centroid"], w["centroid"], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "uint32", "int64", "uint64"])
@pytest.mark.parametrize("shape", [(7, 9, 11), (7, 13, 5), (1, 1, 13), (5, 1, 1), (2, 3, 1),
                                   (1, 1, 1)])
def test_label_stats_kernel(dtype: str, shape: tuple[int, ...]) -> None:
    # ids past 2**53 (where a float64 stops holding every integer) in the 64-bit dtypes
    base = {"uint64": BIG, "int64": 2**62 + 2**53 + 1}.get(dtype, 0)
    lab = random_labels(shape, 11, 5, 0.7, base=base, dtype=dtype)
    origin = (100, -3, 2**40)
    assert_stats(label_stats_kernel(lab, origin), label_stats(lab, origin))
    # merged from pieces cut along every axis (one-voxel slabs included)
    parts = []
    for z0, z1 in ((0, 1), (1, shape[0])):
        for y0, y1 in ((0, shape[1] // 2), (shape[1] // 2, shape[1])):
            piece = lab[z0:z1, y0:y1]
            if piece.size:
                parts.append(label_stats_kernel(piece, (origin[0] + z0, origin[1] + y0,
                                                        origin[2])))
    assert_stats(merge_stats(parts), label_stats(lab, origin))


def check_kernel_arrays(got: dict[str, np.ndarray], n: int) -> None:
    """The kernel's output contract: ids ascending uint64, int64 counts and boxes, float64
    coordinate sums, every table n rows (also n = 0)."""
    assert sorted(got) == ["count", "hi", "id", "lo", "sum"]
    want = {"id": (np.uint64, (n,)), "count": (np.int64, (n,)), "lo": (np.int64, (n, 3)),
            "hi": (np.int64, (n, 3)), "sum": (np.float64, (n, 3))}
    for key, (dtype, shape) in want.items():
        assert (got[key].dtype, got[key].shape) == (dtype, shape), key
    assert (np.diff(got["id"].astype(object)) > 0).all()


@pytest.mark.parametrize("dtype", ["uint8", "uint32", "int64", "uint64"])
def test_label_stats_kernel_edge_cases(dtype: str) -> None:
    """All background, one voxel, one id filling the block, ids at the top of the dtype and
    past 2**53, scattered ids in first-seen order unlike their sort order, and an empty
    block: against the brute-force reference, with a non-zero origin."""
    top = int(np.iinfo(dtype).max)
    origin = (-7, 2**40, 3)
    cases = [np.zeros((3, 4, 5), dtype), np.full((1, 1, 1), top, dtype),
             np.full((2, 3, 4), top - 1, dtype), np.zeros((1, 1, 1), dtype)]
    scattered = np.zeros((4, 5, 6), dtype)
    scattered[3, 4, 5], scattered[0, 0, 0], scattered[2, 1, 3] = 1, top, top // 2
    scattered[0, 4, 0] = top  # first seen: top, top // 2, 1
    cases.append(scattered)
    for lab in cases:
        want = label_stats(lab, origin)
        got = label_stats_kernel(lab, origin)
        check_kernel_arrays(got, len(want))
        assert [int(i) for i in got["id"]] == sorted(want)  # ascending, exact past 2**53
        assert_stats(got, want)
    check_kernel_arrays(label_stats_kernel(np.zeros((0, 4, 5), dtype), origin), 0)


def test_label_stats_kernel_many_ids() -> None:
    """More ids than a small dtype holds, each a run along x, against numpy's own counts
    and per-axis extremes (np.nonzero per id, on a few of them)."""
    rng = np.random.default_rng(3)
    lab = np.repeat(rng.integers(0, 2**64 - 1, (9, 11, 10), dtype=np.uint64), 3, axis=2)
    lab[lab % np.uint64(7) == 0] = 0
    got = label_stats_kernel(lab, (1, 2, 3))
    ids, counts = np.unique(lab[lab != 0], return_counts=True)
    check_kernel_arrays(got, len(ids))
    np.testing.assert_array_equal(got["id"], ids)
    np.testing.assert_array_equal(got["count"], counts)
    for j in rng.choice(len(ids), 20, replace=False):
        where = np.array(np.nonzero(lab == ids[j])).T + np.array([1, 2, 3])
        np.testing.assert_array_equal(got["lo"][j], where.min(axis=0))
        np.testing.assert_array_equal(got["hi"][j], where.max(axis=0) + 1)
        np.testing.assert_array_equal(got["sum"][j], where.sum(axis=0))


def test_label_stats_kernel_sums_are_exact_however_the_blocks_fall() -> None:
    """Coordinate sums are integers and come out exact, so the sums merged from any cut into
    blocks are the same to the last bit (the relay's pass and the local path cut a volume
    differently, and their centroids must agree).  They were cc3d's centroid times the count,
    off by ~1e-10 on an object of a few thousand voxels."""
    rng = np.random.default_rng(4)
    lab = np.repeat(rng.integers(1, 4, (3, 4, 5), dtype=np.uint64), 7, axis=0)
    lab = np.repeat(np.repeat(lab, 9, axis=1), 11, axis=2)  # 21 x 36 x 55, big objects
    origin = (5, -3, 2**20 + 1)
    idx = np.indices(lab.shape).reshape(3, -1).T + np.array(origin)
    whole = label_stats_kernel(lab, origin)
    for j, i in enumerate(whole["id"]):
        exact = idx[lab.reshape(-1) == i].sum(axis=0)  # int64, exact
        assert whole["sum"][j].tolist() == exact.tolist(), i
    for cut in ((5, 7, 9), (21, 1, 55), (2, 36, 13)):
        parts = [label_stats_kernel(lab[z:z + cut[0], y:y + cut[1], x:x + cut[2]],
                                    (origin[0] + z, origin[1] + y, origin[2] + x))
                 for z in range(0, 21, cut[0]) for y in range(0, 36, cut[1])
                 for x in range(0, 55, cut[2])]
        merged = merge_stats(parts)
        np.testing.assert_array_equal(merged["sum"], whole["sum"], err_msg=str(cut))


def test_label_stats_store_blockwise(tmp_path: Path) -> None:
    lab = random_labels((10, 13, 11), 12, 6, 0.8, base=BIG)
    src = zarr_store(tmp_path, "seg", lab, (3, 4, 5), offset=(3, 5, 7))
    want = label_stats(lab, (3, 5, 7))
    for block in (None, (3, 4, 5), (1, 1, 1), (6, 4, 10)):
        df = voxgate.label_stats(src, block=block, workers=2)
        assert_stats(df, want)
    view = src[2:9, 1:12, 3:10]  # view indices count from the store's first voxel
    assert_stats(voxgate.label_stats(view, block=(2, 3, 4)),
                 label_stats(lab[2:9, 1:12, 3:10], (5, 6, 10)))


def test_label_stats_refuses_negative_labels() -> None:
    """Segment ids are uint64: a negative label has none, so it is refused by name (it raised
    numpy's OverflowError before)."""
    ok = np.array([[[0, 3, 5], [3, 0, 0]]], dtype=np.int16)
    assert_stats(voxgate.label_stats(ok), label_stats(ok))
    with pytest.raises(InvalidRequestError, match="negative"):
        voxgate.label_stats(-ok)
    with pytest.raises(InvalidRequestError, match="negative"):
        label_stats_kernel(-ok)


# -- relabel ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
def test_remap_kernel(dtype: str) -> None:
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(5)
    alphabet = np.array([0, 1, 2, 3, 7, top - 2, top - 1, top], dtype=dtype)
    lab = alphabet[rng.integers(0, len(alphabet), (6, 7, 5))]
    for mapping in ({1: 2, 2: 3}, {top: 1, 1: top}, {7: top - 2, 5: 9},
                    {int(v): int(alphabet[(i + 3) % 7 + 1]) for i, v in enumerate(alphabet[1:])}):
        fn = proofread_core._remap_fn(mapping, np.dtype(dtype))
        got = fn(lab, None)
        want = relabel(lab, mapping)
        if np.array_equal(want, lab):
            assert got is None
        else:
            np.testing.assert_array_equal(got, want)


def test_relabel_and_merge_on_a_store(tmp_path: Path) -> None:
    lab = random_labels((9, 14, 12), 21, 6, 0.8, base=BIG - 10)
    vol = zarr_store(tmp_path, "seg", lab, (4, 5, 7), offset=(1, 2, 3))
    ids = sorted(int(v) for v in np.unique(lab) if v)
    chain = {ids[0]: ids[1], ids[1]: ids[2], ids[3]: 17}  # at once, not one after the other
    voxgate.relabel(vol, chain, workers=2)
    want = relabel(lab, chain)
    np.testing.assert_array_equal(vol.read(), want)
    voxgate.merge(vol, [ids[4], 17, ids[5]])  # into the smallest: 17
    want = relabel(want, {ids[4]: 17, ids[5]: 17})
    np.testing.assert_array_equal(vol.read(), want)


# -- the proofreading split ---------------------------------------------------------------------

def pieces_labels(shape: Sequence[int], seed: int) -> np.ndarray:
    """Label 9 in several pieces (some of equal size, some touching only at corners), 4 and 0
    around them."""
    rng = np.random.default_rng(seed)
    lab = np.where(rng.random(tuple(shape)) < 0.5, 4, 0).astype(np.uint64)
    lab[rng.random(tuple(shape)) < 0.2] = 9
    lab[0, 0, 0] = lab[-1, -1, -1] = 9  # single voxels at both corners: ties by scan order
    if min(shape) > 2:
        lab[1, 1, 1] = 9
    return lab


@pytest.mark.parametrize("shape", [(6, 7, 9), (1, 5, 11), (3, 1, 4)])
def test_split_kernel_connected_pieces(shape: tuple[int, ...]) -> None:
    for seed in range(3):
        lab = pieces_labels(shape, seed)
        want, k = split_pieces(lab, 9)
        got, n = split_kernel(lab, 9, None)
        assert n == k and got.dtype == np.int32
        np.testing.assert_array_equal(got, want)


def test_split_on_a_store_gives_the_pieces_new_ids(tmp_path: Path) -> None:
    lab = pieces_labels((7, 9, 11), 4)
    vol = zarr_store(tmp_path, "seg", lab, (3, 4, 5), offset=(2, 4, 6))
    pieces, k = split_pieces(lab, 9)
    assert k >= 3
    r = voxgate.split(vol, 9, workers=2)
    # the largest piece keeps 9, the others take max + 1, max + 2, ... in piece order
    assert r.new_ids == tuple(range(10, 10 + k - 1))
    want = lab.copy()
    for p in range(2, k + 1):
        want[pieces == p] = 9 + p - 1
    np.testing.assert_array_equal(vol.read(), want)


def _no_skimage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``from skimage.segmentation import watershed`` fail, as on an install without
    scikit-image (it is not a voxgate dependency): the kernel's scipy path then runs."""
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)


@pytest.mark.parametrize("engine", ["skimage", "scipy"])
def test_seeded_split_follows_a_wall_and_keeps_its_rules(engine: str,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Seeded watershed: no brute-force answer for its ties, so the rules the docs give are
    checked voxel by voxel: every voxel of the segment and none outside gets a piece, the seeds
    get their own, each piece reached from its seeds inside the segment; and where an image
    puts a wall between two basins, the cut is the wall (flood fill from each seed that never
    crosses it)."""
    if engine == "scipy":
        _no_skimage(monkeypatch)
    shape = (5, 9, 17)
    lab = np.zeros(shape, np.uint64)
    lab[:, 1:8, 1:16] = 6
    lab[2, 4, 16] = 0
    image = np.zeros(shape, np.uint8)
    image[:, :, 9] = 250  # the wall: x = 9
    image[:, :, :9] = 10
    image[:, :, 10:] = 20
    seeds = [[(2, 4, 2)], [(1, 6, 14), (3, 2, 12)]]
    got, k = split_kernel(lab, 6, seeds, image)
    assert k == 2
    mask = lab == 6
    assert ((got > 0) == mask).all()
    np.testing.assert_array_equal(got[mask & (np.arange(17) < 9)], 1)
    np.testing.assert_array_equal(got[mask & (np.arange(17) > 9)], 2)
    # the distance-to-boundary elevation: the rules, on a segment with an island no seed
    # reaches (it goes to piece 1, as the kernel's docstring says)
    lab2 = pieces_labels((6, 7, 9), 1)
    lab2[:, 3, :] = 9
    lab2[:, :, 4] = 9  # one big connected cross, plus the random islands
    seeds2 = [[(0, 3, 0)], [(5, 3, 8)], [(2, 6, 4)]]
    ws, k = split_kernel(lab2, 9, seeds2)
    mask2 = lab2 == 9
    assert k == 3 and ((ws > 0) == mask2).all() and ws.dtype == np.int32
    for i, pts in enumerate(seeds2, start=1):
        assert all(ws[p] == i for p in pts)
    # each piece: the voxels reached from its seeds through the piece itself (6-connected,
    # the watershed's own connectivity), except piece 1, which also takes the islands
    islands = components(mask2.astype(np.uint8), 6)
    seeded = {int(islands[p]) for pts in seeds2 for p in pts}
    unreached = mask2 & ~np.isin(islands, list(seeded))
    assert (ws[unreached] == 1).all(), "voxels no seed reaches belong to piece 1"
    for i, pts in enumerate(seeds2, start=1):
        own = components((ws == i).astype(np.uint8), 6)
        reached = np.isin(own, [int(own[p]) for p in pts])
        rest = (ws == i) & ~reached
        assert not (rest & ~unreached).any(), f"piece {i} has voxels cut off from its seeds"


# -- synapse post-processing --------------------------------------------------------------------

def blob_image(shape: Sequence[int], seed: int) -> np.ndarray:
    """Grey levels: blobs of varied levels (some touching only at corners, some cut by every
    block face), single bright voxels, a faint background."""
    rng = np.random.default_rng(seed)
    img = (rng.random(tuple(shape)) < 0.3) * rng.integers(1, 60, tuple(shape))
    for _ in range(9):
        c = [int(rng.integers(0, s)) for s in shape]
        r = [int(rng.integers(1, 4)) for _ in range(3)]
        sl = tuple(slice(max(0, a - b), a + b) for a, b in zip(c, r, strict=True))
        img[sl] = rng.integers(100, 256, img[sl].shape)
    for _ in range(6):
        img[tuple(int(rng.integers(0, s)) for s in shape)] = 255
    img[3, 3, 3] = img[4, 4, 4] = img[5, 5, 5] = 128  # a diagonal chain
    return img.astype(np.uint8)


def identity(x: np.ndarray) -> np.ndarray:
    """A 'model' whose probabilities are the image: its grey levels come back unchanged."""
    return x


def assert_table(df: object, want: list[dict]) -> None:
    got = df.to_dict("records")  # type: ignore[attr-defined]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w)
        for key, value in w.items():
            if key == "score":
                assert g[key] == pytest.approx(float(value), rel=1e-6), (w["id"], key)
            else:
                assert g[key] == value, (w["id"], key, g[key], value)


SHAPE_S = (9, 23, 25)
VS_S = (30.0, 7.0, 5.0)


@pytest.mark.parametrize("threshold", [0.5, 100 / 255, (100 + 1e-7) / 255, 1e-9, 1.0])
def test_synapse_table_numpy(threshold: float) -> None:
    img = blob_image(SHAPE_S, 3)
    seg = synthetic_labels(SHAPE_S, cell=(4, 8, 9), seed=2)
    seg[:, :, 20:] = 0  # some detections with no segment around
    probs = voxgate.predict(identity, img, dtype="uint8", progress=False)
    np.testing.assert_array_equal(probs, img)  # the precondition: probabilities = image
    want = synapse_table(img, threshold=threshold, min_size=3, voxel_size=VS_S,
                         segmentation=seg, shell=50.0)
    for block in (None, (4, 7, 6)):
        got = voxgate.detect_synapses(img, model=identity, threshold=threshold, min_size=3,
                                      segmentation=seg, voxel_size=VS_S, shell=50.0,
                                      block=block, progress=False)
        assert_table(got, want)
    if threshold == 0.5:
        assert len(want) >= 4


def test_synapse_table_stores_with_offset(tmp_path: Path) -> None:
    img = blob_image(SHAPE_S, 8)
    seg = synthetic_labels(SHAPE_S, cell=(3, 9, 7), seed=5)
    src = zarr_store(tmp_path, "img", img, (4, 8, 8), offset=(2, 3, 4), kind="image",
                     voxel_size=VS_S)
    cells = zarr_store(tmp_path, "cells", seg, (5, 6, 7), offset=(2, 3, 4), voxel_size=VS_S)
    want = synapse_table(img, threshold=0.45, min_size=2, voxel_size=VS_S, origin=(2, 3, 4),
                         segmentation=seg, shell=100.0)
    got = voxgate.detect_synapses(src, model=identity, threshold=0.45, min_size=2,
                                  segmentation=cells, block=(3, 5, 7), workers=2,
                                  progress=False)
    assert len(want) >= 4
    assert_table(got, want)


def test_model_evaluation_detect() -> None:
    from voxgate.models.evaluate import detect

    grey = blob_image((7, 19, 21), 4)
    prob = grey.astype(np.float32) / 255
    rows = synapse_table(grey, threshold=0.5, min_size=4, voxel_size=(1, 1, 1))
    centroids, sizes = detect(prob, threshold=0.5, min_size=4, voxel_size=(40, 8, 8))
    assert sizes.tolist() == [r["size"] for r in rows]
    comp = components((prob >= 0.5).astype(np.uint8), 26)
    want = [np.argwhere(comp == i).mean(axis=0) * (40, 8, 8) for i in range(1, comp.max() + 1)
            if np.count_nonzero(comp == i) >= 4]
    np.testing.assert_allclose(centroids, np.asarray(want).reshape(-1, 3), rtol=1e-12)


# -- predict's tiling ---------------------------------------------------------------------------

RADIUS = (1, 2, 3)


def weight(dz: int, dy: int, dx: int) -> float:
    return 2.0 + 0.5 * dz + 0.25 * dy + 0.125 * dx  # lopsided: a flip or a shift shows


def window_model(x: np.ndarray) -> np.ndarray:
    """The 'model': weighted mean over a (3, 5, 7) window clipped to its input, vectorised
    (the code under test is predict's tiling; the brute-force reference is windowed_mean)."""
    rz, ry, rx = RADIUS
    pad = np.pad(x.astype(np.float64), [(rz, rz), (ry, ry), (rx, rx)])
    inside = np.pad(np.ones(x.shape), [(rz, rz), (ry, ry), (rx, rx)])
    total = np.zeros(x.shape)
    norm = np.zeros(x.shape)
    nz, ny, nx = x.shape
    for dz in range(-rz, rz + 1):
        for dy in range(-ry, ry + 1):
            for dx in range(-rx, rx + 1):
                sl = (slice(rz + dz, rz + dz + nz), slice(ry + dy, ry + dy + ny),
                      slice(rx + dx, rx + dx + nx))
                w = weight(dz, dy, dx)
                total += w * pad[sl]
                norm += w * inside[sl]
    return (total / norm).astype(np.float32)


def test_predict_tiles_equal_the_whole_volume_voxel_by_voxel(tmp_path: Path) -> None:
    # (9, 17, 33) in blocks of (4, 8, 16): the last block is one voxel thick on every axis
    rng = np.random.default_rng(9)
    img = rng.integers(0, 256, (9, 17, 33), dtype=np.uint8)
    want = windowed_mean(img.astype(np.float64) / 255, RADIUS, weight)
    got = voxgate.predict(window_model, img, block=(4, 8, 16), halo=RADIUS, dtype="float32",
                          progress=False)
    assert got.provenance.details["blocks"] == 3 * 3 * 3
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    src = zarr_store(tmp_path, "img", img, (4, 8, 16), offset=(5, 6, 7), kind="image")
    stored = voxgate.predict(window_model, src, f"zarr://{tmp_path}/p.zarr", block=(4, 8, 16),
                             halo=RADIUS, dtype="float32", workers=2, progress=False)
    assert tuple(stored.offset) == (5, 6, 7)
    np.testing.assert_allclose(stored.read(), want, rtol=0, atol=2e-6)
    # a view: its own faces are the faces the model sees
    view = voxgate.predict(window_model, src[1:8, 2:16, 3:30], block=(3, 5, 9), halo=RADIUS,
                           dtype="float32", progress=False)
    np.testing.assert_allclose(
        view, windowed_mean(img[1:8, 2:16, 3:30].astype(np.float64) / 255, RADIUS, weight),
        rtol=0, atol=2e-6)
    # uint8: round(p * 255), half to even
    u8 = voxgate.predict(window_model, img, block=(4, 8, 16), halo=RADIUS, progress=False)
    diff = np.abs(u8.astype(int) - np.rint(want * 255).astype(int))
    assert diff.max() <= 1 and np.mean(diff) < 0.01  # float32 vs float64 rounding only
