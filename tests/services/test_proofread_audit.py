"""An audit of proofreading at its seams, against brute-force numpy (the expected volumes are
written here with np.where / indexing, the coarser scales by tests/services/numpy_reference.py;
never by voxgate's own code).

1. Every store that holds several scales and can be written (OME-Zarr v3 and v2, N5,
   precomputed raw and compressed_segmentation, HDF5, WEBKNOSSOS, mem://), with odd shapes, an
   offset on no grid, chunks that do not divide the shape and 3 scales made by
   ``voxgate.downsample``: merge, seeded split, split into connected pieces, relabel, then undo
   each; every scale is checked after every step, and the history says what happened.
2. Races: readers and a writer of a disjoint region while an edit runs; two merges at once.
3. Bad input: each refused with the right error, nothing changed (data and history).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError, ReadOnlyError

from .numpy_reference import downsample_scales

SHAPE = (7, 45, 51)              # odd on every axis
OFFSET = (3, 7, 45)              # on no chunk or factor grid
CHUNKS = (4, 16, 16)             # divides none of the extents
BIG = 2**40 + 3                  # an id above 2^32 (uint64 stays exact)

# segment 20: two pieces apart (the larger keeps 20 when split without seeds)
P20_SMALL = (slice(1, 4), slice(25, 31), slice(3, 10))      # 126 voxels
P20_LARGE = (slice(4, 7), slice(36, 44), slice(30, 49))     # 456 voxels
# segment 30: two pieces apart, split with a seed in each
P30_A = (slice(0, 3), slice(22, 30), slice(30, 40))
P30_B = (slice(0, 2), slice(2, 9), slice(40, 50))
SLAB40 = (slice(2, 6), slice(10, 40), slice(26, 29))        # crosses chunk borders
CORNER_BIG = (slice(5, 7), slice(0, 5), slice(46, 51))      # in the partial corner chunk


def labels() -> np.ndarray:
    rng = np.random.default_rng(1234)
    a = np.zeros(SHAPE, dtype=np.uint64)
    # noise of 11 / 12 / 13 (ties at the coarse scales), across several chunks
    a[:, 0:20, 0:26] = rng.choice(np.array([11, 12, 13], np.uint64), (7, 20, 26))
    a[:, 40:45, 0:20] = rng.choice(np.array([11, 12, 13], np.uint64), (7, 5, 20))
    a[P20_SMALL] = 20
    a[P20_LARGE] = 20
    a[P30_A] = 30
    a[P30_B] = 30
    a[SLAB40] = 40
    a[CORNER_BIG] = BIG
    a[:, 44, 50] = 5                # a one-voxel-wide bystander at the far edge
    return a


def _point(sl: tuple[slice, ...]) -> tuple[int, int, int]:
    """The first voxel of a box as dataset coordinates (array index + offset)."""
    return tuple(int(s.start) + o for s, o in zip(sl, OFFSET, strict=True))  # type: ignore


# -- stores ---------------------------------------------------------------------------------------
STORES = ["zarr3", "zarr2", "n5", "precomputed-raw", "precomputed-cseg", "hdf5", "webknossos",
          "mem"]


def _make(store: str, tmp: Path, data: np.ndarray | None = None) -> str:
    """A 3-scale segmentation of ``data`` (default: :func:`labels`), the coarser scales made by
    voxgate.downsample; returns its URL."""
    data = labels() if data is None else data
    url, opts = {
        "zarr3": (f"zarr://{tmp}/seg.zarr", {}),
        "zarr2": (f"zarr://{tmp}/seg.zarr", {"zarr_format": 2}),
        "n5": (f"n5://{tmp}/seg.n5", {}),
        "precomputed-raw": (f"precomputed://file://{tmp}/seg", {"encoding": "raw"}),
        "precomputed-cseg": (f"precomputed://file://{tmp}/seg",
                             {"encoding": "compressed_segmentation"}),
        "hdf5": (f"hdf5://{tmp}/seg.h5#seg", {}),
        "webknossos": (f"webknossos://{tmp}/ds", {"layer": "seg"}),
        "mem": (f"mem://audit-{tmp.name}", {}),
    }[store]
    v = voxgate.create(url, shape=data.shape, chunks=CHUNKS, dtype=data.dtype,
                       voxel_size=(40, 8, 8), kind="segmentation", offset=OFFSET, **opts)
    v[:] = data
    if store == "webknossos":
        url = f"{url}/seg"
    voxgate.downsample(url, 3)
    return url


def _factors(vol: voxgate.Volume) -> list[tuple[int, ...]]:
    meta = vol.meta
    return [tuple(round(b / a) for a, b in zip(meta.scale(k - 1).voxel_size.zyx(),
                                                meta.scale(k).voxel_size.zyx(), strict=True))
            for k in range(1, len(meta.scales))]


def _pyramid(vol: voxgate.Volume, scale0: np.ndarray) -> list[np.ndarray]:
    start = OFFSET if vol.remote.pyramid_anchor == "origin" else None
    return [scale0, *downsample_scales(scale0, _factors(vol), "segmentation", start=start)]


def _scales(url: str) -> list[np.ndarray]:
    v = voxgate.open(url)  # a fresh handle: what is stored, not what a cache holds
    return [v.at_scale(k).read() for k in range(len(v.meta.scales))]


def _check(url: str, want0: np.ndarray, what: str) -> None:
    vol = voxgate.open(url)
    got = _scales(url)
    want = _pyramid(vol, want0)
    assert len(got) == 3
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape and g.dtype == w.dtype, (what, k, g.shape, w.shape)
        bad = int(np.count_nonzero(g != w))
        assert bad == 0, f"{what}: scale {k}: {bad} of {w.size} voxels differ"


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(tmp_path / "state"))


# -- 1. every store, every edit, every scale ------------------------------------------------------
@pytest.mark.parametrize("store", STORES)
def test_edits_and_undo_on_every_pyramid_store(tmp_path: Path, store: str) -> None:
    orig = labels()
    url = _make(store, tmp_path)
    seg = voxgate.open(url, mode="r+")
    assert tuple(seg.meta.scales[0].offset) == OFFSET and seg.shape == SHAPE
    original_bytes = [a.tobytes() for a in _scales(url)]
    _check(url, orig, "before any edit")

    # merge 13 and BIG into 11 (the smallest)
    m = voxgate.merge(seg, [13, BIG, 11])
    assert m.mapping == {13: 11, BIG: 11}
    merged = np.where((orig == 13) | (orig == BIG), np.uint64(11), orig)
    _check(url, merged, "after merge")
    assert m.provenance is not None
    assert m.provenance.details["coarser_scales"] == "updated"

    # seeded split of 30 (dataset coordinates: the offset is added), explicit piece ids
    s1 = voxgate.split(seg, 30, seeds={30: [_point(P30_A)], 3001: [_point(P30_B)]})
    assert s1.new_ids == (3001,)
    split1 = merged.copy()
    split1[P30_B] = 3001
    _check(url, split1, "after seeded split")

    # split 20 into its connected pieces: the larger keeps 20, the smaller a new, unused id
    s2 = voxgate.split(seg, 20)
    assert len(s2.new_ids) == 1
    new = s2.new_ids[0]
    assert new not in set(np.unique(orig).tolist()) | {3001}
    assert new > int(split1.max())
    split2 = split1.copy()
    split2[P20_SMALL] = new
    _check(url, split2, "after split into pieces")

    # relabel: 40 to an unused id, 12 to an existing one (a merge)
    r = voxgate.relabel(seg, {40: 700, 12: 20})
    relabelled = np.where(split2 == 40, np.uint64(700), split2)
    relabelled = np.where(split2 == 12, np.uint64(20), relabelled)
    _check(url, relabelled, "after relabel")

    hist = voxgate.history(seg)
    assert list(hist["n"]) == [1, 2, 3, 4]
    assert list(hist["operation"]) == ["merge", "split", "split", "relabel"]
    assert list(hist["status"]) == ["done"] * 4
    assert sorted(hist["ids"][0]) == [11, 13, BIG]
    assert sorted(hist["ids"][1]) == [30, 3001]
    assert sorted(hist["ids"][2]) == [20, new]
    assert sorted(hist["ids"][3]) == [12, 20, 40, 700]
    assert hist["params"][0] == {"into": 11, "ids": [11, 13, BIG]}
    assert hist["params"][3]["mapping"] == {"40": 700, "12": 20}
    assert [int(b) for b in hist["blocks"]] == [m.blocks, s1.blocks, s2.blocks, r.blocks]

    # undo each, newest first: every scale as it was before that edit
    for want, what in [(split2, "relabel"), (split1, "split 2"), (merged, "split 1")]:
        (u,) = voxgate.undo(seg)
        _check(url, want, f"after undoing {what}")
        assert u.operation == "undo"
    voxgate.undo(seg)
    assert [a.tobytes() for a in _scales(url)] == original_bytes, "undo left other bytes"

    hist = voxgate.history(seg)
    assert list(hist["operation"]) == ["merge", "split", "split", "relabel"] + ["undo"] * 4
    assert list(hist["status"]) == ["undone"] * 4 + ["done"] * 4
    assert [int(u) for u in hist["undoes"][4:]] == [4, 3, 2, 1]
    with pytest.raises(InvalidRequestError, match="0 edit"):
        voxgate.undo(seg)
    assert [a.tobytes() for a in _scales(url)] == original_bytes


@pytest.mark.parametrize("store", ["zarr3", "precomputed-cseg", "hdf5", "webknossos"])
def test_undo_keeps_later_writes_of_voxels_the_edit_did_not_change(tmp_path: Path,
                                                                   store: str) -> None:
    """Documented: "voxgate.undo writes back exactly the voxels an edit changed".  A plain
    write after a merge, of other voxels of a block the merge rewrote, must survive its undo
    (undo wrote the whole saved block back, and the write was gone)."""
    orig = labels()
    url = _make(store, tmp_path)
    seg = voxgate.open(url, mode="r+")
    before = _scales(url)
    voxgate.merge(seg, [11, 13])
    painted = (slice(0, 2), slice(36, 40), slice(20, 26))   # background of a merged block
    assert (orig[painted] == 0).all()
    assert (orig[0:4, 32:45, 16:32] == 13).any()              # (the block holds 13)
    seg[painted] = np.full((2, 4, 6), 4242, np.uint64)
    voxgate.undo(seg)
    want = orig.copy()
    want[painted] = 4242
    got = _scales(url)
    assert int(np.count_nonzero(got[0] != want)) == 0, "undo reverted a later write"
    for k in (1, 2):  # (the plain write does not touch the coarser scales: as before)
        assert got[k].tobytes() == before[k].tobytes(), k


def test_undo_of_an_older_history_without_the_changed_voxels_restores_whole_blocks(
        tmp_path: Path) -> None:
    """Blocks saved before the history recorded which voxels changed hold ``data`` only: undo
    writes those blocks back whole, as it did then."""
    import io

    orig = labels()
    url = _make("zarr3", tmp_path)
    seg = voxgate.open(url, mode="r+")
    voxgate.merge(seg, [11, 13])
    files = sorted((tmp_path / "seg.zarr" / ".voxgate" / "undo" / "1").glob("*.npz"))
    assert files
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            assert "changed" in z.files
            kept = {k: z[k] for k in z.files if k != "changed"}
        buf = io.BytesIO()
        np.savez_compressed(buf, **kept)
        f.write_bytes(buf.getvalue())
    painted = (slice(0, 2), slice(36, 40), slice(20, 26))
    seg[painted] = np.full((2, 4, 6), 4242, np.uint64)
    voxgate.undo(seg)
    _check(url, orig, "after undoing from blocks without their changed voxels")


def test_an_edit_of_a_coarser_scale_updates_the_scales_below_it(tmp_path: Path) -> None:
    """Editing scale 1 rewrites scale 2 from it (scale 0 is left as it is)."""
    for store in ("zarr3", "webknossos"):
        url = _make(store, tmp_path / store)
        before = _scales(url)
        s1 = voxgate.open(url, mode="r+").at_scale(1)
        ids = sorted(set(np.unique(before[1]).tolist()) - {0})
        a, b = ids[1], ids[-1]
        voxgate.merge(s1, [a, b])
        got = _scales(url)
        want1 = np.where(before[1] == b, np.uint64(a), before[1])
        vol = voxgate.open(url)
        start = (tuple(vol.meta.scales[1].offset) if vol.remote.pyramid_anchor == "origin"
                 else None)
        (want2,) = downsample_scales(want1, _factors(vol)[1:], "segmentation", start=start)
        assert got[0].tobytes() == before[0].tobytes(), store
        assert np.array_equal(got[1], want1), store
        assert np.array_equal(got[2], want2), store
        assert list(voxgate.history(s1)["operation"]) == ["merge"]
        assert voxgate.history(url).empty  # scale 0's history is its own
        voxgate.undo(s1)
        assert [a.tobytes() for a in _scales(url)] == [a.tobytes() for a in before], store


def test_relabel_swaps_and_chains_all_at_once(tmp_path: Path) -> None:
    """{a: b, b: a} swaps, {a: b, b: c} sends a to b and b to c (not a to c); the cached
    boxes follow, so the next edits find every voxel."""
    orig = labels()
    url = _make("zarr3", tmp_path)
    seg = voxgate.open(url, mode="r+")
    voxgate.relabel(seg, {11: 12, 12: 11})
    swapped = np.where(orig == 11, np.uint64(12), np.where(orig == 12, np.uint64(11), orig))
    _check(url, swapped, "after a swap")
    voxgate.relabel(seg, {20: 40, 40: 30})
    chained = np.where(swapped == 20, np.uint64(40),
                       np.where(swapped == 40, np.uint64(30), swapped))
    _check(url, chained, "after a chain")
    voxgate.merge(seg, [40, 5])  # 40 now lies where 20 was: every voxel of it is found
    merged = np.where(chained == 40, np.uint64(5), chained)
    _check(url, merged, "after merging the moved id")
    voxgate.undo(seg, n=3)
    _check(url, orig, "after undoing all three")


def test_seeds_given_as_numpy_point_arrays(tmp_path: Path) -> None:
    """seeds={id: np.argwhere(...) + offset} (a (k, 3) array per piece, as the docs' example
    finds points) split as the same points in lists do (was: numpy's "truth value of an array
    is ambiguous" ValueError)."""
    orig = labels()
    url = _make("mem", tmp_path)
    seg = voxgate.open(url, mode="r+")
    a = np.zeros(SHAPE, bool)
    a[P30_A] = True
    b = np.zeros(SHAPE, bool)
    b[P30_B] = True
    off = np.array(OFFSET)
    s = voxgate.split(seg, 30, seeds={30: np.argwhere(a)[:3] + off,
                                      3001: np.argwhere(b)[-2:] + off})
    assert s.new_ids == (3001,)
    want = orig.copy()
    want[P30_B] = 3001
    _check(url, want, "after a split with numpy seeds")
    voxgate.undo(seg)
    s = voxgate.split(seg, 30, seeds=[np.argwhere(a)[:1] + off, np.argwhere(b)[:2] + off])
    want[P30_B] = s.new_ids[0]
    _check(url, want, "after a split with a list of numpy seeds")
    with pytest.raises(InvalidRequestError, match="no points"):
        voxgate.split(seg, 20, seeds={20: np.zeros((0, 3), int), 2001: [_point(P20_SMALL)]})


# -- views and split boxes: the edit covers part of an id; the rest must stay findable ----------
def test_an_edit_through_a_view_changes_the_view_only_and_later_edits_find_the_rest(
        tmp_path: Path) -> None:
    """A step-1 view limits the edit to its voxels (core._boxes / _blocks: "inside the view").
    The ids it changed still lie outside it: a merge of the whole volume afterwards must find
    every voxel of them (the cached boxes kept only the view's part, or dropped the id)."""
    orig = labels()
    url = _make("zarr3", tmp_path)
    seg = voxgate.open(url, mode="r+")
    view = seg[0:7, 0:10, 0:51]
    inside = np.zeros(SHAPE, bool)
    inside[0:7, 0:10, 0:51] = True
    voxgate.merge(view, [11, 13])                      # 13 -> 11 inside the view only
    step1 = np.where(inside & (orig == 13), np.uint64(11), orig)
    _check(url, step1, "after a merge through a view")
    assert ((step1 == 13) & ~inside).any()             # 13 is still there outside the view
    voxgate.merge(seg, [12, 13])                       # was: "[13] have no voxels"
    step2 = np.where(step1 == 13, np.uint64(12), step1)
    _check(url, step2, "after merging the rest of 13")


def test_a_split_through_a_view_leaves_the_rest_of_the_segment_findable(tmp_path: Path
                                                                        ) -> None:
    """20's larger piece lies outside the view.  Seeds on every voxel of its small piece (the
    watershed then has nothing to decide): x < 6 keeps 20, the rest becomes 2001.  A merge of
    20 afterwards must reach its piece outside the view (the cached box of 20 had been cut
    to the view: the merge left that piece as 20, silently)."""
    orig = labels()
    url = _make("zarr3", tmp_path)
    seg = voxgate.open(url, mode="r+")
    v20 = seg[0:4, 20:35, 0:51]
    with pytest.raises(InvalidRequestError, match="one connected piece"):
        voxgate.split(v20, 20)
    small = np.zeros(SHAPE, bool)
    small[P20_SMALL] = True
    left = small.copy()
    left[:, :, 6:] = False
    right = small & ~left
    off = np.array(OFFSET)
    voxgate.split(v20, 20, seeds={20: np.argwhere(left) + off,
                                  2001: np.argwhere(right) + off})
    split = np.where(right, np.uint64(2001), orig)
    _check(url, split, "after a split through a view")
    voxgate.merge(seg, [20, 5])   # every voxel of 20, in the view's box and outside it
    merged = np.where(split == 20, np.uint64(5), split)
    _check(url, merged, "after merging 20 (split through a view before)")


def test_a_split_limited_by_a_box_keeps_the_rest_of_the_segment_findable(tmp_path: Path
                                                                         ) -> None:
    """split(box=) with seeds that all ask for new ids: the segment keeps its voxels outside
    the box, so a later merge must still find it (the cached boxes dropped it)."""
    orig = labels()
    url = _make("zarr3", tmp_path)
    seg = voxgate.open(url, mode="r+")
    box = voxgate.Box(_point(P30_B), tuple(s.stop + o for s, o in zip(P30_B, OFFSET,
                                                                         strict=True)))
    piece = np.zeros(SHAPE, bool)
    piece[P30_B] = True
    near = piece.copy()
    near[:, :, 45:] = False
    off = np.array(OFFSET)
    # seeds on every voxel of the piece: the watershed has nothing to decide
    s = voxgate.split(seg, 30, seeds={3001: np.argwhere(near) + off,
                                      3002: np.argwhere(piece & ~near) + off}, box=box)
    assert s.new_ids == (3001, 3002)
    want = np.where(near, np.uint64(3001), np.where(piece & ~near, np.uint64(3002), orig))
    _check(url, want, "after a split limited to a box")
    assert (want[P30_A] == 30).all()                   # outside the box: still 30
    voxgate.merge(seg, [30, 5])                        # was: "[30] have no voxels"
    want = np.where(want == 30, np.uint64(5), want)
    _check(url, want, "after merging the rest of 30")


# -- 3. bad input: refused with the right error, nothing changed ----------------------------------
def _state_of(url: str, history_dir: Any = None) -> tuple[list[bytes], list[dict[str, Any]]]:
    hist = voxgate.history(url, history_dir=history_dir)
    return [a.tobytes() for a in _scales(url)], hist.to_dict("records")


REFUSED: list[tuple[str, Callable[[Any], Any], type[Exception], str]] = [
    ("unknown id", lambda s: voxgate.merge(s, [11, 999]), InvalidRequestError, r"\[999\]"),
    ("unknown ids only", lambda s: voxgate.merge(s, [998, 999]), InvalidRequestError,
     "no voxels"),
    ("relabel of an unknown id", lambda s: voxgate.relabel(s, {999: 5}), InvalidRequestError,
     "no voxels"),
    ("split of an unknown id", lambda s: voxgate.split(s, 999), InvalidRequestError,
     "no voxels"),
    ("float id", lambda s: voxgate.merge(s, [11, 12.0]), InvalidRequestError, "float"),
    ("numpy float id", lambda s: voxgate.merge(s, [11, np.float32(12)]), InvalidRequestError,
     "float"),
    ("float into", lambda s: voxgate.merge(s, [11, 12], into=11.0), InvalidRequestError,
     "float"),
    ("str id", lambda s: voxgate.merge(s, [11, "12"]), InvalidRequestError, "integer"),
    ("str ids", lambda s: voxgate.merge(s, "11 12"), InvalidRequestError, "list"),
    ("bool id", lambda s: voxgate.merge(s, [11, True]), InvalidRequestError, "integer"),
    ("None id", lambda s: voxgate.merge(s, [11, None]), InvalidRequestError, "integer"),
    ("negative id", lambda s: voxgate.merge(s, [11, -12]), InvalidRequestError, "-12"),
    ("negative numpy id", lambda s: voxgate.merge(s, [11, np.int64(-12)]),
     InvalidRequestError, "-12"),
    ("id 0", lambda s: voxgate.merge(s, [11, 0]), InvalidRequestError, "background"),
    ("id above uint64", lambda s: voxgate.merge(s, [11, 2**64 + 12]), InvalidRequestError,
     "does not fit"),
    ("new id above uint64", lambda s: voxgate.relabel(s, {11: 2**64}), InvalidRequestError,
     "does not fit"),
    ("negative new id", lambda s: voxgate.relabel(s, {11: -1}), InvalidRequestError, "-1"),
    ("str new id", lambda s: voxgate.relabel(s, {11: "12"}), InvalidRequestError, "integer"),
    ("float split id", lambda s: voxgate.split(s, 20.0), InvalidRequestError, "float"),
    ("float seed id", lambda s: voxgate.split(s, 30, seeds={30: [_point(P30_A)],
                                                             3001.0: [_point(P30_B)]}),
     InvalidRequestError, "float"),
    ("seed id above uint64", lambda s: voxgate.split(s, 30, seeds={
        30: [_point(P30_A)], 2**64: [_point(P30_B)]}), InvalidRequestError, "does not fit"),
    ("seed of another segment", lambda s: voxgate.split(s, 30, seeds={
        30: [_point(P30_A)], 3001: [_point(P20_SMALL)]}), InvalidRequestError, "outside"),
    ("seed given without the offset", lambda s: voxgate.split(s, 30, seeds={
        30: [(0, 22, 30)], 3001: [(0, 2, 40)]}), InvalidRequestError, "outside"),
    ("seed with two coordinates", lambda s: voxgate.split(s, 30, seeds={
        30: [_point(P30_A)], 3001: [(3, 9)]}), InvalidRequestError, "3 entries"),
    ("float seed coordinates", lambda s: voxgate.split(s, 30, seeds={
        30: [_point(P30_A)], 3001: [(3.5, 9.0, 85.0)]}), InvalidRequestError, "integer"),
    ("a seed group that is no list of points", lambda s: voxgate.split(s, 30, seeds={
        30: [_point(P30_A)], 3001: 5}), InvalidRequestError, "points"),
    ("seeds that are a string", lambda s: voxgate.split(s, 30, seeds="3,9,85"),
     InvalidRequestError, "seeds must be"),
    ("one seed group", lambda s: voxgate.split(s, 30, seeds={30: [_point(P30_A)]}),
     InvalidRequestError, "two seed groups"),
    ("seed id in use", lambda s: voxgate.split(s, 30, seeds={30: [_point(P30_A)],
                                                              40: [_point(P30_B)]}),
     InvalidRequestError, "already label"),
    ("one id", lambda s: voxgate.merge(s, [11]), InvalidRequestError, "at least two"),
    ("one id twice", lambda s: voxgate.merge(s, [11, 11]), InvalidRequestError, "at least two"),
    ("into itself", lambda s: voxgate.merge(s, [11], into=11), InvalidRequestError,
     "at least two"),
    ("no ids", lambda s: voxgate.merge(s, []), InvalidRequestError, "at least two"),
    ("empty mapping", lambda s: voxgate.relabel(s, {}), InvalidRequestError, "non-empty"),
    ("mapping not a dict", lambda s: voxgate.relabel(s, [(11, 12)]), InvalidRequestError,
     "dict"),
    ("identity mapping", lambda s: voxgate.relabel(s, {11: 11}), InvalidRequestError,
     "changes nothing"),
    ("nothing to undo", lambda s: voxgate.undo(s), InvalidRequestError, "0 edit"),
    ("undo n=0", lambda s: voxgate.undo(s, n=0), InvalidRequestError, "n must be"),
    ("undo n=-1", lambda s: voxgate.undo(s, n=-1), InvalidRequestError, "n must be"),
    ("undo n=1.5", lambda s: voxgate.undo(s, n=1.5), InvalidRequestError, "n must be"),
    ("undo n='1'", lambda s: voxgate.undo(s, n="1"), InvalidRequestError, "n must be"),
    ("strided view", lambda s: voxgate.merge(s[:, ::2, :], [11, 12]), InvalidRequestError,
     "step 1"),
    ("2-D view", lambda s: voxgate.merge(s[3], [11, 12]), InvalidRequestError, "3-D"),
    ("a numpy array", lambda s: voxgate.merge(s.read(), [11, 12]), InvalidRequestError,
     "numpy"),
    ("remesh on a store without meshes", lambda s: voxgate.merge(s, [11, 12], remesh=True),
     voxgate.errors.CapabilityNotSupportedError, "mesh"),
]


@pytest.mark.parametrize(("case", "call", "error", "match"), REFUSED,
                         ids=[c[0] for c in REFUSED])
def test_bad_input_is_refused_and_changes_nothing(tmp_path: Path, case: str,
                                                  call: Callable[[Any], Any],
                                                  error: type[Exception], match: str) -> None:
    url = _make("zarr3", tmp_path)
    seg = voxgate.open(url, mode="r+")
    before = _state_of(url)
    with pytest.raises(error, match=match):
        call(seg)
    assert _state_of(url) == before, case


def test_bad_input_after_edits_changes_neither_data_nor_history(tmp_path: Path) -> None:
    """With edits in the history: undo of more edits than there are undoes none of them,
    a read-only volume refuses every edit and undo, and nothing moves."""
    url = _make("precomputed-cseg", tmp_path)
    seg = voxgate.open(url, mode="r+")
    voxgate.merge(seg, [11, 12])
    voxgate.split(seg, 20)
    before = _state_of(url)
    with pytest.raises(InvalidRequestError, match="2 edit"):
        voxgate.undo(seg, n=3)
    assert _state_of(url) == before
    ro = voxgate.open(url)                             # mode "r"
    for call in (lambda: voxgate.merge(ro, [11, 13]), lambda: voxgate.split(ro, 30),
                 lambda: voxgate.relabel(ro, {11: 99}), lambda: voxgate.undo(ro),
                 lambda: voxgate.merge(voxgate.open(url, mode="r")[0:3], [11, 13])):
        with pytest.raises(ReadOnlyError, match="mode='r\\+'"):
            call()
        assert _state_of(url) == before
    assert list(voxgate.history(ro)["status"]) == ["done", "done"]  # (reading it is fine)


def test_narrow_ids_are_checked_against_the_volumes_dtype(tmp_path: Path) -> None:
    """On uint16 labels an id above 65535 would wrap (70000 -> 4464) if it were written."""
    data = np.zeros((5, 9, 11), np.uint16)
    data[1:3, 2:5, 2:6] = 1
    data[3:5, 5:9, 6:11] = 2
    data[0, 0, 0] = 4464
    url = f"zarr://{tmp_path}/u16.zarr"
    voxgate.create(url, shape=data.shape, chunks=(2, 4, 4), dtype="uint16",
                   voxel_size=(8, 8, 8), kind="segmentation")[:] = data
    seg = voxgate.open(url, mode="r+")
    for call in (lambda: voxgate.merge(seg, [1, 70000]),
                 lambda: voxgate.merge(seg, [1, 2], into=70000),
                 lambda: voxgate.relabel(seg, {1: 65536}),
                 lambda: voxgate.relabel(seg, {65537: 1}),
                 lambda: voxgate.split(seg, 2, seeds={2: [(3, 5, 6)], 70000: [(4, 8, 10)]})):
        with pytest.raises(InvalidRequestError, match="does not fit"):
            call()
    assert voxgate.open(url).read().tobytes() == data.tobytes()
    assert voxgate.history(url).empty
    voxgate.relabel(seg, {1: 65535})                   # the largest id that fits
    assert np.array_equal(voxgate.open(url).read(), np.where(data == 1, 65535, data))


def test_merge_into_an_id_not_in_the_list(tmp_path: Path) -> None:
    """Documented (proofread.md): every voxel of ids gets ``into``; an unused id is a new id
    (a relabel), an existing one merges it too ("an existing new id makes it a merge")."""
    orig = labels()
    url = _make("mem", tmp_path)
    seg = voxgate.open(url, mode="r+")
    voxgate.merge(seg, [11, 13], into=777)
    step1 = np.where((orig == 11) | (orig == 13), np.uint64(777), orig)
    _check(url, step1, "merge into an unused id")
    voxgate.merge(seg, [30, 40], into=5)
    step2 = np.where((step1 == 30) | (step1 == 40), np.uint64(5), step1)
    _check(url, step2, "merge into an existing id not in the list")
    assert [h["into"] for h in voxgate.history(seg)["params"]] == [777, 5]
    voxgate.undo(seg, n=2)
    _check(url, orig, "after undoing both")


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_a_history_dir_that_is_a_file_is_refused(tmp_path: Path, where: str) -> None:
    url = _make("zarr3", tmp_path)
    seg = voxgate.open(url, mode="r+")
    note = tmp_path / "notes.txt"
    note.write_text("not a folder\n")
    hd = note if where == "file" else note / "history"
    before = _state_of(url)
    for call in (lambda: voxgate.merge(seg, [11, 12], history_dir=hd),
                 lambda: voxgate.split(seg, 20, history_dir=hd),
                 lambda: voxgate.relabel(seg, {11: 99}, history_dir=hd),
                 lambda: voxgate.undo(seg, history_dir=hd),
                 lambda: voxgate.history(seg, history_dir=hd)):
        with pytest.raises(InvalidRequestError, match="history_dir"):
            call()
    assert _state_of(url) == before
    assert note.read_text() == "not a folder\n"


# -- 2. races --------------------------------------------------------------------------------------
RACE_SHAPE = (7, 45, 51)
HOLE = (slice(0, 3), slice(0, 6), slice(0, 7))   # background inside the first block


def _columns() -> np.ndarray:
    """2 and 4 in alternate columns of every block (a merge rewrites all of them), with a
    background hole in the first block that the edits never change."""
    a = np.zeros(RACE_SHAPE, np.uint64)
    a[:, :, ::2] = 2
    a[:, :, 1::2] = 4
    a[HOLE] = 0
    return a


def _race_store(store: str, tmp: Path) -> str:
    data = _columns()
    url, opts = {
        "zarr3": (f"zarr://{tmp}/r.zarr", {}),
        "n5": (f"n5://{tmp}/r.n5", {}),
        "precomputed-cseg": (f"precomputed://file://{tmp}/r",
                             {"encoding": "compressed_segmentation"}),
        "hdf5": (f"hdf5://{tmp}/r.h5#seg", {}),
        "mem": (f"mem://race-{tmp.name}", {}),
    }[store]
    voxgate.create(url, shape=RACE_SHAPE, chunks=CHUNKS, dtype="uint64", voxel_size=(8, 8, 8),
                   kind="segmentation", offset=OFFSET, **opts)[:] = data
    return url


def _slowed(seg: voxgate.Volume, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The edits through ``seg`` write each block a little later (readers meet them)."""
    import time

    write = seg.remote.write

    def slow(box: Any, array: np.ndarray, scale: int = 0) -> None:
        time.sleep(seconds)
        write(box, array, scale)

    monkeypatch.setattr(seg.remote, "write", slow)


def _grid_blocks(shape: tuple[int, ...], grid: tuple[int, ...]) -> list[tuple[slice, ...]]:
    import itertools

    return [tuple(slice(i * g, min((i + 1) * g, n)) for i, g, n in zip(idx, grid, shape,
                                                                     strict=True))
            for idx in itertools.product(*(range(-(-n // g)) for n, g in zip(shape, grid,
                                                                             strict=True)))]


RACE_STORES = ["zarr3", "n5", "precomputed-cseg", "hdf5", "mem"]


@pytest.mark.parametrize("store", RACE_STORES)
def test_a_reader_sees_every_block_before_or_after_an_edit(
        tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What is promised: an edit rewrites whole blocks of the write grid, and each block write
    is atomic (a temporary file renamed; HDF5 and mem:// under a lock), so a reader sees each
    block as it was before the edit or after it, never a mix inside one block.  (Not promised:
    a whole-volume read taken during an edit may hold some blocks edited and others not.)"""
    url = _race_store(store, tmp_path)
    seg = voxgate.open(url, mode="r+")
    _slowed(seg, monkeypatch, 0.005)
    orig = _columns()
    merged = np.where(orig == 4, np.uint64(2), orig)
    relabelled = np.where(orig == 2, np.uint64(9), orig)
    assert seg.remote.write_grid(0) == CHUNKS
    blocks = _grid_blocks(RACE_SHAPE, CHUNKS)
    done = threading.Event()
    seen: list[np.ndarray] = []
    problems: list[str] = []

    def reader() -> None:
        while not done.is_set():
            got = voxgate.open(url).read()
            seen.append(got)
            for b in blocks:
                if not any(np.array_equal(got[b], s[b]) for s in (orig, merged, relabelled)):
                    problems.append(f"block {b}: neither before nor after")

    t = threading.Thread(target=reader)
    t.start()
    try:
        voxgate.merge(seg, [2, 4])
        voxgate.undo(seg)
        voxgate.relabel(seg, {2: 9})
        voxgate.undo(seg)
    finally:
        done.set()
        t.join(60)
    assert not problems, problems[:5]
    assert len(seen) >= 2
    assert voxgate.open(url).read().tobytes() == orig.tobytes()


@pytest.mark.parametrize("store", ["zarr3", "precomputed-cseg", "hdf5", "mem"])
def test_a_write_of_other_voxels_of_an_edited_block_is_not_lost(
        tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A merge has read a block and is about to write it back (gate); meanwhile another
    thread writes background voxels of that block that the merge does not change
    (``vol[...] = x``, through its own Volume).  The write must survive the merge: before the
    fix the merge wrote back the whole block as it had read it, and the write was lost."""
    url = _race_store(store, tmp_path)
    seg = voxgate.open(url, mode="r+")
    held, release = threading.Event(), threading.Event()
    armed = [True]
    write = seg.remote.write

    def gated(box: Any, array: np.ndarray, scale: int = 0) -> None:
        if armed[0] and box.start == voxgate.Box(OFFSET, OFFSET).start:  # the first block
            armed[0] = False
            held.set()
            assert release.wait(60)
        write(box, array, scale)

    monkeypatch.setattr(seg.remote, "write", gated)
    errors: list[BaseException] = []

    def run(fn: Callable[[], Any]) -> threading.Thread:
        def target() -> None:
            try:
                fn()
            except BaseException as exc:  # handed to the test
                errors.append(exc)
        th = threading.Thread(target=target)
        th.start()
        return th

    edit = run(lambda: voxgate.merge(seg, [2, 4], workers=1))
    assert held.wait(60), "the merge never wrote its first block"
    other = voxgate.open(url, mode="r+")
    paint = np.full((3, 6, 7), 77, np.uint64)
    writer = run(lambda: other.__setitem__(HOLE, paint))
    writer.join(0.5)
    release.set()
    edit.join(60)
    writer.join(60)
    assert not errors, errors
    want = np.where(_columns() == 4, np.uint64(2), _columns())
    want[HOLE] = 77
    got = voxgate.open(url).read()
    assert int(np.count_nonzero(got[HOLE] != 77)) == 0, "the other write was lost"
    assert np.array_equal(got, want)


def test_plain_writes_of_one_volume_do_not_wait_for_each_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard that keeps plain writes out of an edit lets writes run together: one write
    held inside the store does not hold up another write of the same volume (with a plain
    lock per volume every write of it in this process ran one at a time)."""
    import voxgate.services.proofread.core  # (the write guard is set up with it)

    url = _race_store("mem", tmp_path)
    first = voxgate.open(url, mode="r+")
    held, release = threading.Event(), threading.Event()
    write = first.remote.write

    def gated(box: Any, array: np.ndarray, scale: int = 0) -> None:
        held.set()
        assert release.wait(60)
        write(box, array, scale)

    monkeypatch.setattr(first.remote, "write", gated)
    t = threading.Thread(target=lambda: first.__setitem__(HOLE, np.full((3, 6, 7), 5,
                                                                        np.uint64)))
    t.start()
    try:
        assert held.wait(60)
        done = threading.Event()
        other = threading.Thread(target=lambda: (voxgate.open(url, mode="r+").__setitem__(
            (slice(4, 7), slice(30, 40), slice(40, 50)), np.full((3, 10, 10), 6, np.uint64)),
            done.set()))
        other.start()
        assert done.wait(10), "a write waited for another write of the volume"
        other.join(10)
    finally:
        release.set()
        t.join(60)
    got = voxgate.open(url).read()
    assert (got[HOLE] == 5).all() and (got[4:7, 30:40, 40:50] == 6).all()


@pytest.mark.parametrize("store", ["zarr3", "mem"])
def test_writes_of_a_disjoint_region_racing_edits_all_land(tmp_path: Path, store: str) -> None:
    """Free-running: a thread paints the voxels of the background hole (in a block the edits
    rewrite) one by one, each with its own value, while merges and undos run; every value
    painted is there at the end, and the edits are complete outside the hole."""
    url = _race_store(store, tmp_path)
    seg = voxgate.open(url, mode="r+")
    other = voxgate.open(url, mode="r+")
    hole = np.zeros(RACE_SHAPE, bool)
    hole[HOLE] = True
    spots = [tuple(map(int, p)) for p in np.argwhere(hole)][::3]   # 42 of them
    painted = threading.Event()
    errors: list[BaseException] = []

    def painter() -> None:
        try:
            for i, (z, y, x) in enumerate(spots):
                other[z, y, x] = np.uint64(100 + i)
        except BaseException as exc:  # handed to the test
            errors.append(exc)
        finally:
            painted.set()

    t = threading.Thread(target=painter)
    t.start()
    edits = 0
    try:
        while not painted.is_set() or edits == 0:
            voxgate.merge(seg, [2, 4])
            voxgate.undo(seg)
            edits += 1
    finally:
        t.join(60)
    assert not errors, errors
    want = _columns()
    for i, p in enumerate(spots):
        want[p] = 100 + i
    got = voxgate.open(url).read()
    lost = int(np.count_nonzero(got[hole] != want[hole]))
    assert lost == 0, f"{lost} of {len(spots)} painted voxels were lost ({edits} edits)"
    assert np.array_equal(got, want)


@pytest.mark.parametrize("store", ["zarr3", "hdf5", "mem"])
def test_two_merges_of_different_ids_at_once_both_land_at_every_scale(tmp_path: Path,
                                                                      store: str) -> None:
    orig = labels()
    url = _make(store, tmp_path)
    for trial in range(2):
        seg = voxgate.open(url, mode="r+")
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def merge(ids: list[int], seg: voxgate.Volume = seg,
                  start: threading.Barrier = start,
                  errors: list[BaseException] = errors) -> None:
            try:
                start.wait()
                voxgate.merge(seg, ids)
            except BaseException as exc:  # handed to the test
                errors.append(exc)

        threads = [threading.Thread(target=merge, args=(ids,))
                   for ids in ([11, 12], [13, 20, 40])]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert not errors, errors
        want = np.where(orig == 12, np.uint64(11), orig)
        want = np.where((orig == 20) | (orig == 40), np.uint64(13), want)
        _check(url, want, f"trial {trial}: both merges")
        hist = voxgate.history(url)
        assert list(hist["status"][-2:]) == ["done", "done"]
        assert sorted(map(tuple, hist["ids"][-2:])) == [(11, 12), (13, 20, 40)]
        voxgate.undo(seg, n=2)
        _check(url, orig, f"trial {trial}: both undone")
