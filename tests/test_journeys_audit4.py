"""Journeys across proofreading, meshes, skeletons, annotations and the relay, each step held
to a brute-force numpy reference and read by a reader that is not voxgate.

Odd shapes (43 x 37 x 21 voxels, x y z), offsets that are no multiple of any chunk,
anisotropic voxels (30 x 6 x 6 nm, z y x), ids above 2**40:

a. a sharded precomputed segmentation with sharded multi-resolution meshes written by
   ``voxgate.mesh`` / ``write_meshes`` -> merge two segments, split one (its two pieces apart,
   no seeds) and split another inside a box that leaves part of it outside (all
   ``remesh=True``) -> the relay serves the layer -> CloudVolume reads the labels and the
   meshes (the edits are written straight to the layer, which a relay's cache does not see:
   docs/relay.md, "Changes made outside the relay"; this relay caches nothing, so it serves
   the layer as it is now): each served mesh is the mesh of its segment's voxels as they are
   now (the merged id's covers both old segments, the kept id of the boxed split keeps its
   part outside the box), the mesh of the id merged away is no longer served -> undo all
   three -> labels and meshes as before, the split pieces' meshes gone;
b. ``detect_synapses`` (built-in model) on an image and its cells at an offset -> annotation
   layers inside the cells' layer, unsharded and sharded, and the same table with one
   annotation per spatial cell (several levels) -> the relay -> Neuroglancer's own reader
   (``neuroglancer.read_precomputed_annotations``) over HTTP: the table against a brute-force
   table from the kept probabilities (cc3d, centroid voxel, mean score, majority segment), each
   annotation by id, each segment's relationship lists, every spatial cell's contents and a
   box query at odd bounds against filtering the table;
c. ``voxgate.skeletonize`` of tubes (ids above 2**53 that differ below float precision) ->
   ``write_skeletons`` unsharded and sharded -> the relay -> CloudVolume's ``skeleton.get``:
   the vertices, edges and radii voxgate computed, every vertex on or next to a voxel of its
   segment, reaching its segment's ends.

One relay serves every journey; it caches nothing (journey a edits its layer in place).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import pandas as pd
import pytest

import voxgate
from tests.relay.conftest import RelayProcess, free_port, start_relay

SHAPE = (21, 37, 43)          # z, y, x
OFFSET = (5, 11, 3)           # no multiple of the (8, 16, 16) chunks
VOXEL = (30.0, 6.0, 6.0)      # nm, z y x
A, B, C, D = 2**40 + 7, 2**40 + 9, 2**40 + 11, 2**40 + 13


def _labels() -> np.ndarray:
    """A and B far apart (disjoint boxes), C two blobs not 26-connected, D three blobs of
    which the third lies outside the box the boxed split gets."""
    lab = np.zeros(SHAPE, np.uint64)
    lab[0:9, 0:14, 0:19] = A
    lab[4:21, 21:37, 26:43] = B
    lab[11:21, 2:12, 4:14] = C                 # the larger piece of C
    lab[13:19, 15:19, 4:9] = C                 # a smaller one, 3 voxels away in y
    lab[0:4, 16:20, 21:25] = D                 # D: in the box
    lab[0:4, 24:31, 21:25] = D                 # in the box, larger
    lab[0:3, 33:37, 1:6] = D                   # outside the box
    return lab


SPLIT_BOX = ((OFFSET[0] + 0, OFFSET[1] + 14, OFFSET[2] + 19),
             (OFFSET[0] + 6, OFFSET[1] + 33, OFFSET[2] + 27))


SYN_SHAPE = (18, 120, 110)
SYN_OFFSET = (3, 13, 29)
SYN_VOXEL = (40.0, 8.0, 8.0)  # the built-in model's


SK_SHAPE = (23, 41, 57)
SK_OFFSET = (7, 2, 13)
E, F, G = 2**53 + 1, 2**53 + 2, 5           # E and F differ below float precision


def _tubes() -> np.ndarray:
    """c: a straight tube along x, an L-shaped one and a three-armed one, near the faces."""
    lab = np.zeros(SK_SHAPE, np.uint64)
    lab[2:6, 3:8, 1:56] = E
    lab[9:13, 10:38, 4:9] = F
    lab[9:13, 33:38, 4:30] = F
    lab[15:23, 20:25, 20:50] = G
    lab[17:21, 5:40, 33:38] = G
    return lab


@dataclass
class World:
    d: Path
    relay: RelayProcess
    seg_url: str
    em: np.ndarray                # b: the image, its cells, the detections and probabilities
    cells: np.ndarray
    found: pd.DataFrame
    prob: np.ndarray
    skeletons: Any                # c: voxgate.skeletonize's result


def _skeleton_layers(d: Path) -> Any:
    """c: the tubes in two layers, skeletonized once, the skeletons written unsharded into
    one and sharded into the other."""
    from voxgate.formats.skeleton import write_skeletons

    skels = None
    for name in ("sk_flat", "sk_sharded"):
        url = f"precomputed://file://{d}/{name}"
        v = voxgate.create(url, shape=SK_SHAPE, chunks=(8, 16, 16), dtype="uint64",
                           voxel_size=VOXEL, offset=SK_OFFSET, kind="segmentation")
        v[:] = _tubes()
        if skels is None:
            # (kimimaro's default invalidation radius, 10 x the distance to the boundary +
            # 10 nm, drops the arms of G: 30 nm wide tubes in 30 nm sections)
            skels = voxgate.skeletonize(voxgate.open(url), dust_threshold=0,
                                        teasar_params={"scale": 1.5, "const": 30})
        write_skeletons(url, dict(skels), sharded=name == "sk_sharded")
    return skels


def _synapse_layers(d: Path) -> dict[str, Any]:
    """b: the image and its cells at an offset, ``detect_synapses`` into annotation layers
    inside the cells' layer (unsharded, sharded) and the same table written with a limit of
    one annotation per cell (several spatial levels)."""
    from voxgate.formats.annotation import write_annotations
    from voxgate.synthetic import synapses

    g = synapses(SYN_SHAPE, seed=5, voxel_size=SYN_VOXEL, density=30.0)
    for name, arr, kind in (("em", g.image, "image"), ("cells", g.labels, "segmentation")):
        v = voxgate.create(f"precomputed://file://{d}/{name}", shape=SYN_SHAPE,
                           chunks=(8, 32, 32), dtype=arr.dtype, voxel_size=SYN_VOXEL,
                           offset=SYN_OFFSET, kind=kind)
        v[:] = arr
    found = None
    for name, sharded in (("ann_flat", False), ("ann_sharded", True)):
        got = voxgate.detect_synapses(
            f"precomputed://file://{d}/em", segmentation=f"precomputed://file://{d}/cells",
            out=f"precomputed://file://{d}/cells/{name}", sharded=sharded, block=(8, 48, 48),
            probabilities=f"precomputed://file://{d}/prob_{name}", progress=False)
        if found is not None:
            pd.testing.assert_frame_equal(got, found)
        found = got
    assert found is not None
    # the points at the voxels' centres, where detect_synapses puts them
    centres = found.assign(**{c: found[c] + 0.5 for c in ("z", "y", "x")})
    write_annotations(f"precomputed://file://{d}/cells/ann_levels", centres,
                      voxel_size=SYN_VOXEL, kind="point", properties=["size", "score"],
                      relationships=["pre_id", "post_id"], sharded=True, limit=1,
                      bounds=voxgate.Box(SYN_OFFSET, tuple(
                          o + n for o, n in zip(SYN_OFFSET, SYN_SHAPE, strict=True))))
    prob = voxgate.open(f"precomputed://file://{d}/prob_ann_flat").read()
    return {"em": g.image, "cells": g.labels, "found": found, "prob": prob}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = tmp_path_factory.mktemp("journeys4")
    seg_url = f"precomputed://file://{d}/seg"
    seg = voxgate.create(seg_url, shape=SHAPE, chunks=(8, 16, 16), dtype="uint64",
                         voxel_size=VOXEL, offset=OFFSET, kind="segmentation", sharded=True)
    seg[:] = _labels()
    voxgate.write_meshes(seg_url, voxgate.mesh(voxgate.open(seg_url)), format="multires",
                         sharded=True)
    built = _synapse_layers(d)
    built["skeletons"] = _skeleton_layers(d)
    cfg = d / "relay.toml"
    cfg.write_text(f'[server]\nhost = "127.0.0.1"\nstate_path = "{d / "state.json"}"\n'
                   f'[cache]\nmemory_bytes = "0"\n'
                   f'[[channel]]\nname = "j/seg/ch"\nupstream = "{seg_url}"\n'
                   f'[[channel]]\nname = "j/syn/ch"\nupstream = "precomputed://file://'
                   f'{d}/cells"\n'
                   + "".join(f'[[channel]]\nname = "j/{n}/ch"\nupstream = "precomputed://file://'
                             f'{d}/{n}"\n' for n in ("sk_flat", "sk_sharded")))
    relay = start_relay(cfg, free_port())
    try:
        yield World(d, relay, seg_url, **built)
    finally:
        relay.stop()


def _cv(w: World, exp: str) -> Any:
    from cloudvolume import CloudVolume

    return CloudVolume(f"precomputed://{w.relay.url}/precomputed/j/{exp}/ch", bounded=True,
                       fill_missing=False, progress=False, cache=False)


def _cv_labels(w: World) -> np.ndarray:
    return np.asarray(_cv(w, "seg")[:, :, :])[..., 0].transpose(2, 1, 0)


def _reference_meshes(lab: np.ndarray) -> dict[int, np.ndarray]:
    """Each segment's vertices (x, y, z nm, rows sorted), meshed by voxgate's kernel on the
    numpy labels of the whole volume."""
    ref = voxgate.mesh(lab, voxel_size=VOXEL)
    shift = np.array(OFFSET[::-1]) * np.array(VOXEL[::-1])
    return {int(i): np.sort(m.vertices + shift, axis=0) for i, m in ref.items()}


def _check_served_meshes(w: World, lab: np.ndarray, gone: list[int]) -> None:
    """Every segment's served mesh is the mesh of its voxels now; ``gone`` ids have none."""
    from cloudvolume.exceptions import MeshMissingError

    ref = _reference_meshes(lab)
    got = _cv(w, "seg").mesh.get(sorted(ref))
    res, off = np.array(VOXEL[::-1]), np.array(OFFSET[::-1])
    tol = 0.02 * min(VOXEL)          # Draco quantization: a small fraction of a voxel
    for i, want in ref.items():
        verts = np.asarray(got[i].vertices)
        vox = np.argwhere(lab == i)[:, ::-1]                  # x, y, z
        lo, hi = (vox.min(0) + off) * res, (vox.max(0) + 1 + off) * res
        np.testing.assert_allclose(verts.min(0), lo, atol=tol, err_msg=f"segment {i} low")
        np.testing.assert_allclose(verts.max(0), hi, atol=tol, err_msg=f"segment {i} high")
        assert len(verts) == len(want), (i, len(verts), len(want))
        np.testing.assert_allclose(np.sort(verts, axis=0), want, atol=tol,
                                   err_msg=f"segment {i}")
    for i in gone:
        with pytest.raises(MeshMissingError):
            _cv(w, "seg").mesh.get([i])


# -- a: proofreading with remesh, served, undone --------------------------------------------------
def test_edits_with_remesh_are_served_and_undone_meshes_included(world: World) -> None:
    original = _labels()
    hist = world.d / "seg-history"
    np.testing.assert_array_equal(_cv_labels(world), original)
    _check_served_meshes(world, original, [])

    vol = voxgate.open(world.seg_url, mode="r+")
    voxgate.merge(vol, [A, B], remesh=True, history_dir=hist)
    now = original.copy()
    now[now == B] = A
    np.testing.assert_array_equal(_cv_labels(world), now)
    _check_served_meshes(world, now, [B])

    # C's two pieces apart: the larger keeps C (brute force: cc3d on C's voxels)
    s = voxgate.split(vol, C, remesh=True, history_dir=hist)
    (new_c,) = s.new_ids
    pieces = cc3d.connected_components(now == C, connectivity=26)
    sizes = np.bincount(pieces.ravel())[1:]
    assert len(sizes) == 2
    small = int(np.argmin(sizes)) + 1
    now[pieces == small] = new_c
    np.testing.assert_array_equal(_cv_labels(world), now)

    # D inside a box that leaves its third blob outside: the mesh of D keeps that blob
    t = voxgate.split(vol, D, box=SPLIT_BOX, remesh=True, history_dir=hist)
    (new_d,) = t.new_ids
    inbox = np.zeros(SHAPE, bool)
    inbox[tuple(slice(a - o, b - o) for a, b, o in zip(*SPLIT_BOX, OFFSET, strict=True))] = True
    dp = cc3d.connected_components((now == D) & inbox, connectivity=26)
    dsizes = np.bincount(dp.ravel())[1:]
    assert len(dsizes) == 2
    now[dp == int(np.argmin(dsizes)) + 1] = new_d
    np.testing.assert_array_equal(_cv_labels(world), now)
    _check_served_meshes(world, now, [B])

    voxgate.undo(vol, n=3, history_dir=hist)
    np.testing.assert_array_equal(_cv_labels(world), original)
    _check_served_meshes(world, original, [int(new_c), int(new_d)])


# -- b: detect_synapses -> annotation layers -> relay -> Neuroglancer's reader ---------------------
def _brute_detections(prob: np.ndarray, cells: np.ndarray, min_size: int) -> pd.DataFrame:
    """The table docs/services/synapses.md describes, from the probabilities by brute force
    (pre_id, whose shell rule tests/services/test_synapses_audit.py holds, left out)."""
    mask = prob.astype(np.float64) / 255 >= 0.5
    comp = cc3d.connected_components(mask, connectivity=26)
    rows = []
    firsts = []
    for k in range(1, int(comp.max()) + 1):
        where = np.argwhere(comp == k)                   # C order: the first is the first voxel
        if len(where) < min_size:
            continue
        firsts.append(np.ravel_multi_index(tuple(where[0]), comp.shape))
        nm = where * np.array(SYN_VOXEL)
        d2 = ((nm - nm.mean(0)) ** 2).sum(1)
        z, y, x = where[int(np.argmin(d2))] + np.array(SYN_OFFSET)   # ties: first in C order
        segs = cells[comp == k]
        segs = segs[segs != 0]
        post = 0
        if len(segs):
            ids, counts = np.unique(segs, return_counts=True)
            post = int(ids[np.argmax(counts)])            # ties: the smaller id (sorted)
        rows.append({"z": int(z), "y": int(y), "x": int(x), "size": len(where),
                     "score": float(prob[comp == k].astype(np.float64).mean() / 255),
                     "post_id": post})
    order = np.argsort(firsts, kind="stable")
    out = pd.DataFrame([rows[i] for i in order])
    out.insert(0, "id", np.arange(1, len(out) + 1, dtype=np.uint64))
    return out


def _reader(w: World, name: str) -> Any:
    from neuroglancer.read_precomputed_annotations import AnnotationReader

    return AnnotationReader(f"{w.relay.url}/precomputed/j/syn/ch/{name}/")


@pytest.mark.parametrize("name", ["ann_flat", "ann_sharded", "ann_levels"])
def test_detected_synapses_read_through_the_relay_by_neuroglancers_reader(world: World,
                                                                          name: str) -> None:
    t = world.found
    want = _brute_detections(world.prob, world.cells,
                             int(t.attrs["provenance"].details["min_size"]))
    assert len(want) >= 2, "the journey needs a few detections"
    for c in ("id", "z", "y", "x", "size", "post_id"):
        np.testing.assert_array_equal(t[c].to_numpy(np.int64), want[c].to_numpy(np.int64), c)
    np.testing.assert_allclose(t["score"], want["score"], rtol=1e-6)
    # the pre side is another segment, and every detection lies on its post segment
    for r in t.itertuples():
        assert r.pre_id != r.post_id or r.pre_id == 0
        here = world.cells[r.z - SYN_OFFSET[0], r.y - SYN_OFFSET[1], r.x - SYN_OFFSET[2]]
        assert world.prob[r.z - SYN_OFFSET[0], r.y - SYN_OFFSET[1], r.x - SYN_OFFSET[2]] >= 128
        assert r.post_id == 0 or here in (r.post_id, r.pre_id, 0)

    reader = _reader(world, name)
    assert reader.annotation_type == "point"
    assert [p.id for p in reader.properties] == ["size", "score"]
    lo = np.array(SYN_OFFSET[::-1], float)
    hi = lo + np.array(SYN_SHAPE[::-1])
    np.testing.assert_array_equal(reader.lower_bound, lo)
    np.testing.assert_array_equal(reader.upper_bound, hi)
    # by id: the point (x, y, z voxels: the voxel's centre), the properties and both
    # relationships
    for r in t.itertuples():
        a = reader.by_id[int(r.id)]
        np.testing.assert_array_equal(np.asarray(a.point, np.float32),
                                      np.float32([r.x + 0.5, r.y + 0.5, r.z + 0.5]))
        size, score = a.props
        assert int(size) == r.size and np.float32(score) == np.float32(r.score)
        assert [[int(v) for v in s] for s in a.segments] == \
            [[int(r.pre_id)] if r.pre_id else [], [int(r.post_id)] if r.post_id else []]
    # relationships: each segment's detections, against grouping the table
    for rel in ("pre_id", "post_id"):
        for seg in np.unique(world.cells):
            got = sorted(int(a.id) for a in reader.relationships[rel].get(int(seg)).result()
                         or []) if int(seg) in reader.relationships[rel] else []
            assert got == sorted(int(i) for i in t["id"][t[rel] == seg]), (rel, int(seg))
    # the spatial index: every level's cells hold annotations inside the cell, the levels
    # together every annotation once
    seen: list[int] = []
    for level in reader.spatial:
        size = np.asarray(level.metadata["chunk_size"], float)
        for cell in np.ndindex(*level.metadata["grid_shape"]):
            if cell not in level:
                continue
            for a in level[cell]:
                p = np.asarray(a.point, float)
                c0 = lo + np.asarray(cell) * size
                assert ((p >= c0) & (p <= c0 + size)).all(), (name, cell, p)
                seen.append(int(a.id))
    assert sorted(seen) == sorted(int(i) for i in t["id"])
    if name == "ann_levels":
        assert len(reader.spatial) > 1
    # a box at odd bounds: what the reader finds there is what lies there
    # (the points sit at .5: bounds at .25 are never on one)
    box_lo, box_hi = lo + np.array([7.25, 21, 2]), hi - np.array([31, 9.25, 5])
    got = sorted(int(a.id) for a in reader.get_within_spatial_bounds(lower_bound=box_lo,
                                                                       upper_bound=box_hi))
    points = t[["x", "y", "z"]].to_numpy(float) + 0.5
    inside = ((points >= box_lo) & (points <= box_hi)).all(1)
    assert got == sorted(int(i) for i in t["id"][inside])


# -- c: skeletonize -> precomputed skeletons -> relay -> CloudVolume -------------------------------
@pytest.mark.parametrize("name", ["sk_flat", "sk_sharded"])
def test_skeletons_served_are_voxgates_and_lie_on_their_segments(world: World, name: str
                                                                 ) -> None:
    lab = _tubes()
    ids = [E, F, G]
    assert sorted(world.skeletons) == sorted(ids)
    cv = _cv(world, name)
    assert cv.info.get("skeletons")
    got = cv.skeleton.get(ids)
    got = {int(s.id): s for s in (got if isinstance(got, list) else [got])}
    assert sorted(got) == sorted(ids)           # E and F apart: ids above 2**53 stay exact
    res, off = np.array(VOXEL[::-1]), np.array(SK_OFFSET[::-1])
    for i in ids:
        mine, theirs = world.skeletons[i], got[i]
        np.testing.assert_array_equal(np.asarray(theirs.vertices, np.float32), mine.vertices)
        np.testing.assert_array_equal(np.sort(np.sort(np.asarray(theirs.edges), 1), 0),
                                      np.sort(np.sort(mine.edges.astype(np.int64), 1), 0))
        np.testing.assert_array_equal(np.asarray(theirs.radius, np.float32), mine.radius)
        # every vertex on a voxel of its segment or next to one (voxel centres: + 0.5)
        vox = np.round(mine.vertices / res - off - 0.5).astype(np.int64)[:, ::-1]   # z, y, x
        seg = lab == i
        near = np.zeros_like(seg)
        pad = np.pad(seg, 1)
        for dz, dy, dx in np.ndindex(3, 3, 3):
            near |= pad[dz:dz + seg.shape[0], dy:dy + seg.shape[1], dx:dx + seg.shape[2]]
        inside = (vox >= 0).all(1) & (vox < np.array(SK_SHAPE)).all(1)
        assert inside.all(), (i, vox[~inside][:5])
        assert near[tuple(vox.T)].all(), (i, vox[~near[tuple(vox.T)]][:5])
        # and it spans its segment, arm to arm
        zyx = np.argwhere(seg)
        span = mine.vertices / res - off - 0.5
        assert (np.abs(span.min(0) - zyx.min(0)[::-1]) <= 1).all(), i
        assert (np.abs(span.max(0) - zyx.max(0)[::-1]) <= 1).all(), i


def _one_mesh(cv: Any, i: int) -> Any:
    got = cv.mesh.get(i)                       # (legacy: the Mesh, fused)
    return got[i] if isinstance(got, dict) else got


def test_remesh_both_on_legacy_meshes_and_skeletons_then_undo(tmp_path: Path) -> None:
    """Journey a on the other layouts (legacy meshes, unsharded skeletons), read by
    CloudVolume from the files: the id merged away loses its mesh and skeleton, the merged
    id's cover both; undo brings back what was there."""
    from cloudvolume import CloudVolume
    from osteoid.exceptions import SkeletonDecodeError

    from voxgate.formats.skeleton import write_skeletons

    url = f"precomputed://file://{tmp_path}/layer"
    v = voxgate.create(url, shape=SK_SHAPE, chunks=(8, 16, 16), dtype="uint64",
                       voxel_size=VOXEL, offset=SK_OFFSET, kind="segmentation")
    lab = _tubes()
    v[:] = lab
    voxgate.write_meshes(url, voxgate.mesh(voxgate.open(url)), format="legacy")
    write_skeletons(url, dict(voxgate.skeletonize(voxgate.open(url), dust_threshold=0)))

    def cv() -> Any:
        return CloudVolume(f"file://{tmp_path}/layer", progress=False, cache=False)

    before_m = {i: np.sort(_one_mesh(cv(), i).vertices, 0) for i in (E, F)}
    before_s = {i: cv().skeleton.get(i).vertices for i in (E, F)}
    vol = voxgate.open(url, mode="r+")
    voxgate.merge(vol, [E, F], remesh="both", history_dir=tmp_path / "h")
    res, off = np.array(VOXEL[::-1]), np.array(SK_OFFSET[::-1])
    both = np.argwhere((lab == E) | (lab == F))[:, ::-1]
    m = _one_mesh(cv(), E).vertices
    np.testing.assert_allclose(m.min(0), (both.min(0) + off) * res, atol=1e-3)
    np.testing.assert_allclose(m.max(0), (both.max(0) + 1 + off) * res, atol=1e-3)
    sk = cv().skeleton.get(E).vertices / res - off - 0.5
    assert (np.abs(sk.min(0) - both.min(0)) <= 1).all() and \
        (np.abs(sk.max(0) - both.max(0)) <= 1).all()
    with pytest.raises(ValueError, match="missing corresponding mesh manifests"):
        cv().mesh.get(F)
    with pytest.raises(SkeletonDecodeError, match="do not exist"):
        cv().skeleton.get(F)
    voxgate.undo(vol, history_dir=tmp_path / "h")
    assert (voxgate.open(url).read() == lab).all()
    for i in (E, F):
        np.testing.assert_allclose(np.sort(_one_mesh(cv(), i).vertices, 0), before_m[i],
                                   atol=1e-3)
        np.testing.assert_allclose(cv().skeleton.get(i).vertices, before_s[i], atol=1e-3)
