"""The proofreading journey as peers see it: a precomputed segmentation with three scales,
meshes and skeletons, served by a real relay (``voxgate serve``), read by CloudVolume through
the relay and from the files, edited (merge, split, undo; with ``remesh="both"``) directly on
the store and through the relay's bossDB dialect.

After each edit every scale is checked against numpy (the edit applied to the original
array, then downsampled 2x2x2 with the first most frequent label, the mode
``voxgate.downsample`` uses for segmentations), the meshes and skeletons against the extents
of the segments, the label statistics against numpy's boxes and counts.  Bad input on these
entry points is refused before anything (voxels, meshes, skeletons, history) changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cloudvolume import CloudVolume

import voxgate
from voxgate.errors import (
    AuthenticationError,
    CapabilityNotSupportedError,
    InvalidRequestError,
    ReadOnlyError,
)
from voxgate.formats.mesh import read_meshes, write_meshes
from voxgate.formats.skeleton import read_skeletons, write_skeletons

from ..ports import free_port
from ..relay.conftest import RO, RW, RelayProcess, start_relay

SHAPE = (64, 64, 64)       # z, y, x
VOXEL = 8.0                # nm, every axis
SCALES = 3
A, B, C = 5, 9, 7          # A and B are merged; C is split
BOX_A = (slice(4, 30), slice(4, 30), slice(4, 30))
BOX_B = (slice(4, 30), slice(4, 30), slice(34, 60))
BOX_C = (slice(34, 60), slice(8, 56), slice(8, 56))
SEED_KEEP, SEED_NEW = (36, 10, 10), (58, 54, 54)
NEW = 7001
CHANNEL = "lab/em/seg"


def _labels() -> np.ndarray:
    a = np.zeros(SHAPE, np.uint64)
    a[BOX_A] = A
    a[BOX_B] = B
    a[BOX_C] = C
    return a


# -- numpy references -----------------------------------------------------------------------------
def _mode2(a: np.ndarray) -> np.ndarray:
    """2x2x2 mode of ``a`` (even shape): per block the most frequent label, the first of them
    in C order on a tie (zeros count as a label)."""
    z, y, x = (n // 2 for n in a.shape)
    blocks = a.reshape(z, 2, y, 2, x, 2).transpose(0, 2, 4, 1, 3, 5).reshape(-1, 8)
    counts = (blocks[:, :, None] == blocks[:, None, :]).sum(axis=2)
    first = np.argmax(counts, axis=1)     # argmax: the first of the largest counts
    return blocks[np.arange(len(blocks)), first].reshape(z, y, x)


def _pyramid(a: np.ndarray) -> list[np.ndarray]:
    out = [a]
    for _ in range(SCALES - 1):
        out.append(_mode2(out[-1]))
    return out


def _stats_of(a: np.ndarray) -> dict[int, tuple[int, tuple[int, ...]]]:
    """id -> (voxel count, tight box z0 y0 x0 z1 y1 x1), by numpy."""
    out = {}
    for i in np.unique(a):
        if i == 0:
            continue
        where = np.nonzero(a == i)
        out[int(i)] = (int(where[0].size), tuple([int(w.min()) for w in where]
                                                 + [int(w.max()) + 1 for w in where]))
    return out


def _stats_table(df: Any) -> dict[int, tuple[int, tuple[int, ...]]]:
    return {int(r.id): (int(r.voxel_count), (int(r.z0), int(r.y0), int(r.x0), int(r.z1),
                                             int(r.y1), int(r.x1))) for r in df.itertuples()}


# -- the layer, its relay, its peers --------------------------------------------------------------
@dataclass
class Journey:
    root: Path
    layer: Path
    url: str
    relay: RelayProcess
    labels: np.ndarray
    meshes: dict[int, np.ndarray]   # id -> vertex extent (2, 3) in nm (x, y, z), as stored
    skels: dict[int, np.ndarray]
    counts: dict[int, int]          # id -> its mesh's vertex count, as first stored

    def cv(self, mip: int = 0, *, relay: bool = True) -> Any:
        where = (f"precomputed://{self.relay.url}/precomputed/{CHANNEL}" if relay
                 else f"file://{self.layer}")
        return CloudVolume(where, mip=mip, progress=False, cache=False, fill_missing=False)

    def boss(self, token: str = RW, mode: str = "r+") -> Any:
        return voxgate.open(f"bossdb://{self.relay.url}/{CHANNEL}", token=token, mode=mode)


def _extent(vertices: np.ndarray) -> np.ndarray:
    v = np.asarray(vertices, np.float64)
    return np.stack([v.min(axis=0), v.max(axis=0)])


def _make(root: Path, layout: str) -> tuple[Path, str, np.ndarray]:
    layer = root / "lab" / "em" / "seg"
    url = f"precomputed://file://{layer}"
    labels = _labels()
    seg = voxgate.create(url, shape=SHAPE, chunks=(16, 16, 16), dtype="uint64",
                         voxel_size=(VOXEL,) * 3, kind="segmentation", num_scales=SCALES)
    seg[:] = labels
    voxgate.downsample(seg)
    meshes = dict(voxgate.mesh(seg, prefer="local"))
    skels = dict(voxgate.skeletonize(seg, prefer="local", dust_threshold=0))
    if layout == "legacy":
        write_meshes(url, meshes, format="legacy")
        write_skeletons(url, skels)
    else:
        write_meshes(url, meshes, format="multires", sharded=True)
        write_skeletons(url, skels, sharded=True)
    return layer, url, labels


def _relay_config(root: Path, upstream: str) -> Path:
    cfg = root / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
state_path = "{root / 'state.json'}"
[cache]
memory_bytes = "16 MiB"
[[channel]]
name = "{CHANNEL}"
upstream = "{upstream}"
[auth]
public_read = true
tokens = {{ "{RW}" = "read-write", "{RO}" = "read" }}
""")
    return cfg


@pytest.fixture(params=["legacy", "sharded"])
def journey(request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Journey]:
    monkeypatch.setenv("VOXGATE_PROOFREAD_DIR", str(tmp_path / "histories"))
    layer, url, labels = _make(tmp_path, request.param)
    j = Journey(tmp_path, layer, url, start_relay(_relay_config(tmp_path, url), free_port()),
                labels, {}, {}, {})
    try:
        cv = j.cv()
        for i in (A, B, C):      # the peers' view before any edit, through the relay
            mesh = _cv_mesh(cv, i)
            j.meshes[i] = _extent(mesh.vertices)
            j.counts[i] = len(mesh.vertices)
            j.skels[i] = _extent(cv.skeleton.get(i).vertices)
        yield j
    finally:
        j.relay.stop()     # (the one started last: a test may start it again)


def _cv_mesh(cv: Any, i: int) -> Any:
    got = cv.mesh.get([i])
    return got[i] if isinstance(got, dict) else got


def _mesh_gone(cv: Any, i: int) -> bool:
    """Whether CloudVolume finds no mesh of ``i`` (an error saying so, or an empty one)."""
    try:
        m = _cv_mesh(cv, i)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        assert "missing" in str(exc) or str(i) in str(exc), exc
        return True
    return m is None or len(m.vertices) == 0


def _skeleton_gone(cv: Any, i: int) -> bool:
    from cloudvolume.exceptions import EmptyFileException
    from osteoid.exceptions import SkeletonDecodeError

    try:
        sk = cv.skeleton.get(i)
    except (SkeletonDecodeError, EmptyFileException, FileNotFoundError, KeyError) as exc:
        assert str(i) in str(exc), exc
        return True
    return len(sk.vertices) == 0


# -- the peers' checks ----------------------------------------------------------------------------
def _scales_from_store(url: str) -> list[np.ndarray]:
    vol = voxgate.open(url)
    return [vol.at_scale(k).read() for k in range(len(vol.remote.meta.scales))]


def _cv_scales(j: Journey, *, relay: bool) -> list[np.ndarray]:
    return [np.asarray(j.cv(k, relay=relay)[:])[..., 0].T for k in range(SCALES)]


def _check_voxels(got: list[np.ndarray], want: np.ndarray, where: str) -> None:
    for k, (g, w) in enumerate(zip(got, _pyramid(want), strict=True)):
        assert g.shape == w.shape, (where, k)
        bad = np.count_nonzero(g != w)
        assert bad == 0, f"{where}: scale {k} differs from numpy's at {bad} voxels"


def _box_nm(now: np.ndarray, i: int) -> np.ndarray:
    """The box of ``i``'s voxels in nm, as (2, 3) x, y, z: what its mesh must span."""
    where = np.nonzero(now == i)
    return np.array([[w.min() for w in where[::-1]], [w.max() + 1 for w in where[::-1]]],
                    np.float64) * VOXEL


def _check_objects(j: Journey, now: np.ndarray, *, merged: bool, split: bool,
                   where: str) -> None:
    """Meshes and skeletons, by CloudVolume through the relay and from the files and by
    voxgate's readers, after a merge of B into A (or not) and a split of C (or not): every
    segment's mesh spans its voxels' box (within a voxel), its skeleton lies inside it; the
    ids an edit removed have none; the ids an edit did not touch keep theirs."""
    for cv in (j.cv(), j.cv(relay=False)):
        for i, gone in ((A, False), (B, merged), (C, False), (NEW, not split)):
            if gone:
                assert _mesh_gone(cv, i), f"{where}: a mesh of {i} is still served"
                assert _skeleton_gone(cv, i), f"{where}: a skeleton of {i} is still served"
                continue
            box = _box_nm(now, i)
            mesh = _cv_mesh(cv, i)
            ext = _extent(mesh.vertices)
            assert np.abs(ext - box).max() <= VOXEL, (where, i, ext, box)
            skel = _extent(cv.skeleton.get(i).vertices)
            assert (skel[0] >= box[0] - VOXEL).all() and (skel[1] <= box[1] + VOXEL).all(), (
                where, i, skel, box)
            if i == A and merged:     # the skeleton reaches into both old pieces
                assert skel[0][0] < BOX_A[2].stop * VOXEL, (where, skel)
                assert skel[1][0] > BOX_B[2].start * VOXEL, (where, skel)
            if i == C:                # C's mesh is redone after a split, back after its undo
                assert (len(mesh.vertices) == j.counts[C]) == (not split), (where, i)
    ids = {A, C} | ({NEW} if split else set()) | (set() if merged else {B})
    assert set(read_meshes(j.url)) == ids, where
    assert set(read_skeletons(j.url)) == ids, where


def _now(j: Journey) -> np.ndarray:
    return voxgate.open(j.url).read()


# -- 1. edits made directly on the store while the relay serves it --------------------------------
def test_direct_edits_seen_by_every_peer_at_every_scale(journey: Journey) -> None:
    j = journey
    orig = j.labels
    _check_voxels(_cv_scales(j, relay=True), orig, "relay before")  # (the relay caches them)
    seg = voxgate.open(j.url, mode="r+")

    r = voxgate.merge(seg, [A, B], remesh="both")
    assert r.provenance is not None and r.provenance.details["coarser_scales"] == "updated"
    merged = np.where(orig == B, np.uint64(A), orig)
    _check_voxels(_scales_from_store(j.url), merged, "store after merge")
    _check_voxels(_cv_scales(j, relay=False), merged, "CloudVolume on the files after merge")
    _check_objects(j, merged, merged=True, split=False, where="after merge")
    assert _stats_table(voxgate.label_stats(j.url)) == _stats_of(merged)

    s = voxgate.split(seg, C, seeds={C: [SEED_KEEP], NEW: [SEED_NEW]}, remesh="both")
    assert s.new_ids == (NEW,)
    now = _now(j)
    assert set(np.unique(now[orig == C]).tolist()) == {C, NEW}
    assert now[SEED_KEEP] == C and now[SEED_NEW] == NEW
    assert (now[orig != C] == merged[orig != C]).all(), "the split changed another segment"
    _check_voxels(_scales_from_store(j.url), now, "store after split")
    _check_voxels(_cv_scales(j, relay=False), now, "CloudVolume on the files after split")
    _check_objects(j, now, merged=True, split=True, where="after split")
    assert _stats_table(voxgate.label_stats(j.url)) == _stats_of(now)

    voxgate.undo(seg)                                  # the split
    _check_voxels(_scales_from_store(j.url), merged, "store after undo")
    _check_objects(j, merged, merged=True, split=False,
                   where="after undo of the split")
    voxgate.undo(seg)                                  # the merge
    _check_voxels(_scales_from_store(j.url), orig, "store after undoing both")
    _check_voxels(_cv_scales(j, relay=False), orig, "CloudVolume on the files, both undone")
    _check_objects(j, orig, merged=False, split=False, where="after undoing both")
    assert _stats_table(voxgate.label_stats(j.url)) == _stats_of(orig)

    # the relay's cells of the voxels, read before the edits, are not seen to change (docs/
    # relay.md, "Changes made outside the relay"): once it is started again it serves the
    # store's voxels at every scale, and its label statistics are the store's
    voxgate.merge(seg, [A, B])
    j.relay.stop()
    j.relay = start_relay(j.relay.config, free_port())
    _check_voxels(_cv_scales(j, relay=True), merged, "relay started again after the merge")
    assert _stats_table(voxgate.label_stats(j.boss(mode="r"))) == {
        i: (n, box) for i, (n, box) in _stats_of(merged).items()}


# -- 2. edits through the relay (its bossDB dialect) ----------------------------------------------
def test_edits_through_the_relay_and_what_they_leave_stale(journey: Journey) -> None:
    j = journey
    orig = j.labels
    boss = j.boss()
    before = _objects_state(j.layer)
    with pytest.raises(CapabilityNotSupportedError,
                       match=r"on the upstream layer.s own precomputed:// URL"):
        voxgate.merge(boss, [A, B], remesh=True)        # no mesh directory on bossdb://
    assert (_now(j) == orig).all() and _objects_state(j.layer) == before

    r = voxgate.merge(boss, [A, B])
    assert r.provenance is not None and r.provenance.details["coarser_scales"] == "stale"
    merged = np.where(orig == B, np.uint64(A), orig)
    got = _cv_scales(j, relay=True)
    assert (got[0] == merged).all(), "the relay serves scale 0 as written through it"
    assert (_scales_from_store(j.url)[0] == merged).all()
    # the coarser scales wait for voxgate.downsample (docs/services/proofread.md), and so do
    # the meshes and skeletons, which bossdb:// cannot rewrite: all as before the edit
    for k in range(1, SCALES):
        assert (got[k] == _pyramid(orig)[k]).all(), k
    assert _objects_state(j.layer) == before
    assert _stats_table(voxgate.label_stats(boss)) == _stats_of(merged)

    voxgate.split(boss, C, seeds={C: [SEED_KEEP], NEW: [SEED_NEW]})
    now = _now(j)
    assert set(np.unique(now[orig == C]).tolist()) == {C, NEW}
    assert (_cv_scales(j, relay=True)[0] == now).all()
    voxgate.undo(boss)
    assert (_cv_scales(j, relay=True)[0] == merged).all()
    assert (_now(j) == merged).all()

    voxgate.downsample(boss)                           # the relay's job: every scale again
    _check_voxels(_cv_scales(j, relay=True), merged, "relay after its downsample")
    _check_voxels(_scales_from_store(j.url), merged, "store after the relay's downsample")
    assert _stats_table(voxgate.label_stats(boss)) == _stats_of(merged)


# -- 3. bad input on the journey's entry points: refused, nothing changed -------------------------
def _objects_state(layer: Path) -> dict[str, str]:
    """The layer's info and every file of its mesh and skeleton directories, by digest."""
    out = {"info": hashlib.sha256((layer / "info").read_bytes()).hexdigest()}
    for dirpath, _dirnames, files in [*os.walk(layer / "mesh"), *os.walk(layer / "skeletons")]:
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(layer))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


BAD: list[tuple[str, Callable[[Journey], Any], type[Exception], str]] = [
    ("merge into itself", lambda j: voxgate.merge(j.url, [A, A], into=A, remesh="both"),
     InvalidRequestError, "at least two"),
    ("merge of an absent id", lambda j: voxgate.merge(j.url, [A, 4242], remesh="both"),
     InvalidRequestError, r"\[4242\]"),
    ("split with a seed in another segment", lambda j: voxgate.split(
        j.url, C, seeds={C: [SEED_KEEP], NEW: [(10, 10, 10)]}, remesh="both"),
     InvalidRequestError, "outside"),
    ("split of an absent id", lambda j: voxgate.split(j.url, 4242, remesh="both"),
     InvalidRequestError, "no voxels"),
    # the store's own error, the volume unchanged; the history keeps the attempt as "failed",
    # which undo passes over (the undo cases below come after it)
    ("through the relay: a read-only token", lambda j: voxgate.merge(j.boss(RO), [A, B]),
     AuthenticationError, "may not write.*\n.*nothing was written"),
    ("undo with no history", lambda j: voxgate.undo(j.url), InvalidRequestError, "0 edit"),
    ("read-only volume", lambda j: voxgate.merge(voxgate.open(j.url), [A, B], remesh="both"),
     ReadOnlyError, "mode='r\\+'"),
    ("through the relay: merge into itself", lambda j: voxgate.merge(j.boss(), [A, A]),
     InvalidRequestError, "at least two"),
    ("through the relay: an absent id", lambda j: voxgate.merge(j.boss(), [A, 4242]),
     InvalidRequestError, r"\[4242\]"),
    ("through the relay: seed in another segment", lambda j: voxgate.split(
        j.boss(), C, seeds={C: [SEED_KEEP], NEW: [(10, 10, 10)]}),
     InvalidRequestError, "outside"),
    ("through the relay: undo with no history", lambda j: voxgate.undo(j.boss()),
     InvalidRequestError, "0 edit"),
]


def test_bad_input_on_the_journey_changes_nothing(journey: Journey) -> None:
    j = journey
    for case, call, error, match in BAD:
        before = (_now(j).tobytes(), [a.tobytes() for a in _scales_from_store(j.url)],
                  _objects_state(j.layer))
        with pytest.raises(error, match=match):
            call(j)
        after = (_now(j).tobytes(), [a.tobytes() for a in _scales_from_store(j.url)],
                 _objects_state(j.layer))
        assert after == before, case
        assert voxgate.history(j.url).empty, case
        assert set(voxgate.history(j.boss(mode="r"))["status"]) <= {"failed"}, case
    _check_objects(j, j.labels, merged=False, split=False, where="after the refusals")


def test_remesh_on_layers_without_a_usable_directory(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer with no mesh key is refused before the edit; a layer whose info names a mesh
    (skeleton) directory that has no ``info`` yet (CloudVolume's ``create_new_info(mesh=...)``
    makes such a layer) gets legacy meshes (unsharded skeletons), as Neuroglancer and
    CloudVolume read such a directory.  Before, the merge was written, then remeshing raised
    RemoteNotFoundError ("mesh/info does not exist"): the edit stood with no mesh written."""
    monkeypatch.setenv("VOXGATE_PROOFREAD_DIR", str(tmp_path / "histories"))
    url = f"precomputed://file://{tmp_path / 'seg'}"
    seg = voxgate.create(url, shape=SHAPE, chunks=(16, 16, 16), dtype="uint64",
                         voxel_size=(VOXEL,) * 3, kind="segmentation", num_scales=2)
    orig = _labels()
    seg[:] = orig
    voxgate.downsample(seg)
    before = [a.tobytes() for a in _scales_from_store(url)]
    for remesh in (True, "skeletons", "both"):
        with pytest.raises(CapabilityNotSupportedError, match="directory"):
            voxgate.merge(url, [A, B], remesh=remesh)
        assert [a.tobytes() for a in _scales_from_store(url)] == before
    assert voxgate.history(url).empty

    info_path = tmp_path / "seg" / "info"
    info = json.loads(info_path.read_text())
    info.update(mesh="mesh", skeletons="skeletons")
    info_path.write_text(json.dumps(info))
    voxgate.merge(url, [A, B], remesh="both")
    merged = np.where(orig == B, np.uint64(A), orig)
    assert (_now_url(url) == merged).all()
    cv = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False, cache=False)
    assert json.loads((tmp_path / "seg" / "mesh" / "info").read_text())["@type"] == \
        "neuroglancer_legacy_mesh"
    ext = _extent(_cv_mesh(cv, A).vertices)
    lo = np.array([4, 4, 4]) * VOXEL       # x, y, z: A and B together
    hi = np.array([60, 30, 30]) * VOXEL
    assert (np.abs(ext[0] - lo) <= VOXEL).all() and (np.abs(ext[1] - hi) <= VOXEL).all(), ext
    sk = _extent(cv.skeleton.get(A).vertices)
    assert sk[0][0] < 30 * VOXEL < 34 * VOXEL < sk[1][0], sk     # spans both old pieces
    voxgate.undo(url)
    assert (_now_url(url) == orig).all()
    assert set(read_meshes(url)) == set(read_skeletons(url)) == {A, B}
    for i, box in ((A, BOX_A), (B, BOX_B)):     # each back as it was: its own box only
        ext = _extent(_cv_mesh(cv, i).vertices)
        want = np.array([[s.start for s in box[::-1]], [s.stop for s in box[::-1]]]) * VOXEL
        assert np.abs(ext - want).max() <= VOXEL, (i, ext)


def _now_url(url: str) -> np.ndarray:
    return voxgate.open(url).read()


def test_a_corrupt_mesh_directory_info_is_refused_before_the_edit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the merge was written, then reading the mesh directory's info failed."""
    from voxgate.errors import CorruptChunkError

    monkeypatch.setenv("VOXGATE_PROOFREAD_DIR", str(tmp_path / "histories"))
    url = f"precomputed://file://{tmp_path / 'seg'}"
    seg = voxgate.create(url, shape=SHAPE, chunks=(16, 16, 16), dtype="uint64",
                         voxel_size=(VOXEL,) * 3, kind="segmentation")
    seg[:] = _labels()
    write_meshes(url, dict(voxgate.mesh(seg, prefer="local")))
    (tmp_path / "seg" / "mesh" / "info").write_text("{not json")
    before = _objects_state(tmp_path / "seg")
    with pytest.raises(CorruptChunkError, match="mesh/info"):
        voxgate.merge(url, [A, B], remesh=True)
    assert (_now_url(url) == _labels()).all()
    assert voxgate.history(url).empty
    assert _objects_state(tmp_path / "seg") == before
