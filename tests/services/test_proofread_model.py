"""A model-based test of proofreading as a proofreader uses it over a session (hypothesis
stateful testing): a numpy model of the segmentation, and rules that merge, split, relabel and
undo through voxgate; after every step every scale is read back and compared with the model,
and the history's statuses with the model's.

The model: scale 0 is a numpy array edited with ``np.where``; the coarser scales are derived
from it by the store's rule: voxgate's mode downsample (tests/services/numpy_reference.py) for
a precomputed / OME-Zarr pyramid, DVID's own rule (the most frequent non-zero label of each
2x2x2 cell, the smaller on a tie, on DVID's block grid through 0) for a DVID labelmap with
scales.  DVID downsamples its supervoxels, and a body reads as the body of that supervoxel:
the body view of a coarser scale is the scale-0 mapping (supervoxel -> body, which must be a
function) applied to DVID's downsampling of the scale-0 supervoxels.

Stores: a precomputed pyramid (compressed_segmentation), an OME-Zarr (3 scales, odd offset and
shape), and a DVID labelmap with 3 scales through the shipped test server, edited on DVID's
server path (``prefer="auto"``) or on voxgate's local path where allowed: once DVID has merged
or split supervoxels, a local edit is refused (InvalidRequestError "as supervoxels") when a
block it rewrites holds a supervoxel that reads as another body or an id it writes is not its
own body in DVID's mapping, and a local edit's undo likewise (outright when a server edit is
undone before it in the same call); the model then
expects that refusal and an unchanged volume (and elsewhere the edit, checked as any other).

Checks: every acknowledged edit is reflected exactly at every scale; every undo restores
exactly the state before the edit it undoes; the new ids of a split are above every id in the
volume and unique; ids above 2^53 stay exact.  The sequences it found are kept below as plain
regression tests.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.remotes.dvid import DVIDRepo
from voxgate.testing.dvid import DVIDServerProcess, start_server

from .brute_reference import split_pieces
from .numpy_reference import downsample_scales, dvid_mode2

BIG = (2**53 + 1, 2**60 + 3, 2**63 + 5)     # ids a float cannot hold
FRESH = (7, 2**53 + 7, 2**62 + 11)          # ids for merges into / relabels to unused ids
SHAPE = (9, 13, 15)                          # odd on every axis
OFFSET = (3, 5, 7)                           # on no chunk or factor grid
CHUNKS = (4, 8, 8)
DVID_SHAPE = (19, 21, 23)
DVID_OFFSET = (5, 3, 17)                     # non-negative (DVID's downres), on no block grid
BS = 16


def initial(shape: tuple[int, ...]) -> np.ndarray:
    """Boxes of a few ids (small and above 2^53), some in two pieces, over background."""
    a = np.zeros(shape, np.uint64)
    z, y, x = shape
    a[0:z // 2, 0:y // 2, 0:x // 2] = 1
    a[z // 2 + 1:, 0:y // 2, 0:x // 3] = 1                # 1: two pieces
    a[0:z // 2, y // 2 + 1:, 0:x // 2] = BIG[0]
    a[:, y // 2 + 1:, x // 2 + 1:] = 2
    a[z // 2 + 1:, 0:y // 3, x // 2 + 1:] = BIG[1]
    a[0:2, 0:2, x - 3:] = BIG[1]                          # BIG[1]: two pieces
    a[z - 2:, y - 3:, 0:3] = BIG[2]
    a[z // 2, :, :] = 3                                   # a plane through the middle
    return a


# -- the stores -----------------------------------------------------------------------------------
def _make_file(kind: str, tmp: Path) -> str:
    url, opts = {
        "precomputed": (f"precomputed://file://{tmp}/seg",
                        {"encoding": "compressed_segmentation"}),
        "zarr": (f"zarr://{tmp}/seg.zarr", {}),
    }[kind]
    v = voxgate.create(url, shape=SHAPE, chunks=CHUNKS, dtype="uint64", voxel_size=(40, 8, 8),
                       kind="segmentation", offset=OFFSET, **opts)
    v[:] = initial(SHAPE)
    voxgate.downsample(url, 3)
    return url


def _make_dvid(dvid: DVIDServerProcess, name: str) -> str:
    repo = DVIDRepo.create(dvid.url, alias=name)
    url = repo.url("seg")
    v = voxgate.create(url, shape=DVID_SHAPE, chunks=(BS, BS, BS), dtype="uint64",
                       voxel_size=(8, 8, 8), kind="segmentation", offset=DVID_OFFSET,
                       num_scales=3)
    v[:] = initial(DVID_SHAPE)
    return url


def _dvid_scales(sv0: np.ndarray, off: tuple[int, ...], n: int) -> list[np.ndarray]:
    """DVID's coarser scales of the scale-0 supervoxels ``sv0`` (at ``off``), on its block
    grid through 0."""
    g = 2**(n - 1) * BS
    lo = [o // g * g for o in off]
    hi = [-(-(o + s) // g) * g for o, s in zip(off, sv0.shape, strict=True)]
    frame = np.zeros([h - a for a, h in zip(lo, hi, strict=True)], np.uint64)
    frame[tuple(slice(o - a, o - a + s) for o, a, s in zip(off, lo, sv0.shape,
                                                           strict=True))] = sv0
    out = []
    for k in range(1, n):
        frame = dvid_mode2(frame)
        f = 2**k
        start = [o // f for o in off]
        stop = [-(-(o + s) // f) for o, s in zip(off, sv0.shape, strict=True)]
        out.append(frame[tuple(slice(a - b // f, c - b // f)
                               for a, c, b in zip(start, stop, lo, strict=True))])
    return out


def _factors(vol: voxgate.Volume) -> list[tuple[int, ...]]:
    meta = vol.meta
    return [tuple(round(b / a) for a, b in zip(meta.scale(k - 1).voxel_size.zyx(),
                                                meta.scale(k).voxel_size.zyx(), strict=True))
            for k in range(1, len(meta.scales))]


def check_scales(url: str, want0: np.ndarray, what: str) -> None:
    """Every scale of ``url`` (a fresh handle) against the model's scale 0 and the store's
    rule for the coarser ones."""
    vol = voxgate.open(url)
    n = len(vol.meta.scales)
    assert n == 3, n
    got = [vol.at_scale(k).read() for k in range(n)]
    assert got[0].dtype == np.uint64
    bad = int(np.count_nonzero(got[0] != want0))
    assert bad == 0, f"{what}: scale 0: {bad} voxels differ from the model"
    if url.startswith("dvid://"):
        sv = voxgate.open(url, supervoxels=True)
        sv0 = sv.read()
        body: dict[int, int] = {}
        for s, b in zip(sv0.ravel().tolist(), got[0].ravel().tolist(), strict=True):
            assert body.setdefault(s, b) == b, f"{what}: supervoxel {s} reads as two bodies"
        off = tuple(vol.meta.scales[0].offset)
        for k, ref in enumerate(_dvid_scales(sv0, off, n), start=1):
            assert np.array_equal(sv.at_scale(k).read(), ref), f"{what}: supervoxels {k}"
            keys = np.array(sorted(body), np.uint64)
            vals = np.array([body[int(i)] for i in keys], np.uint64)
            pos = np.clip(np.searchsorted(keys, ref), 0, max(len(keys) - 1, 0))
            assert (keys[pos] == ref).all(), f"{what}: scale {k} holds a supervoxel not in 0"
            want = vals[pos]
            bad = int(np.count_nonzero(got[k] != want))
            assert bad == 0, f"{what}: scale {k}: {bad} voxels differ from DVID's rule"
        return
    start = OFFSET if vol.remote.pyramid_anchor == "origin" else None
    for k, w in enumerate(downsample_scales(want0, _factors(vol), "segmentation", start=start),
                          start=1):
        assert got[k].shape == w.shape, (what, k)
        bad = int(np.count_nonzero(got[k] != w))
        assert bad == 0, f"{what}: scale {k}: {bad} voxels differ from voxgate's downsample"


# -- the machine ----------------------------------------------------------------------------------
class ProofreadSession(RuleBasedStateMachine):
    """One proofreading session on a fresh store (``kind``)."""

    kind = "zarr"
    make: Any = None            # () -> url

    def __init__(self) -> None:
        super().__init__()
        self.url = ""
        self.model = np.zeros(0, np.uint64)
        self.done: list[tuple[int, np.ndarray, str]] = []  # (n, before, path) not undone
        self.rows: list[dict[str, Any]] = []               # the history the model expects
        self.server_merges: list[int] = []                 # server merges not undone
        self.server_split = False                          # DVID split supervoxels once

    @initialize()
    def start(self) -> None:
        self.url = type(self).make()
        self.seg = voxgate.open(self.url, mode="r+")
        self.model = self.seg.read()
        self.offset = np.array(self.seg.offset)
        check_scales(self.url, self.model, "the start")

    # -- helpers --------------------------------------------------------------------------------
    @property
    def dvid(self) -> bool:
        return self.kind.startswith("dvid")

    def ids(self) -> list[int]:
        return [int(i) for i in np.unique(self.model) if i]

    def agglomerated(self) -> bool:
        return self.dvid and (self.server_split or bool(self.server_merges))

    def prefer(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(["auto", "local"])) if self.kind == "dvid-mixed" \
            else "auto"

    def refused_locally(self, fn: Any, changed: np.ndarray, writes: list[int]) -> bool:
        """Run a local-path edit that DVID's agglomeration makes voxgate refuse: expect the
        refusal, and nothing changed.  The edit (``changed``: the voxels it changes,
        ``writes``: the ids it gives them) is refused when a block it rewrites (voxgate's, on
        the write grid from the volume's first voxel) holds a supervoxel that reads as another
        body, or an id it writes is not its own body in DVID's mapping
        (``mapping?nolookup=true``: a supervoxel DVID retired reads as 0); elsewhere it runs,
        and the model checks it."""
        if not self.agglomerated() or not self.must_refuse(changed, writes):
            return False
        event("refused locally")
        with pytest.raises(InvalidRequestError, match="as supervoxels"):
            fn()
        return True

    def must_refuse(self, changed: np.ndarray, writes: list[int]) -> bool:
        sv = voxgate.open(self.url, supervoxels=True).read()
        foreign = (sv != self.model) & (sv != 0)  # voxels whose supervoxel reads as another
        # voxgate's blocks: its write grid (DVID's block size) from the volume's first voxel
        cell = np.indices(self.model.shape).transpose(1, 2, 3, 0) // BS
        keys = cell[..., 0] * 2**20 + cell[..., 1] * 2**10 + cell[..., 2]
        if np.isin(keys[changed], keys[foreign]).any():
            event("refused: a rewritten block holds a merged or split supervoxel")
            return True
        remote: Any = self.seg.remote
        got = httpx.request(
            "GET", f"{remote.client.base_url}/api/node/{remote.uuid}/{remote.instance}"
            "/mapping?nolookup=true", content=json.dumps(writes)).json()
        if got != writes:
            event("refused: a written id is not its own body")
            return True
        event("allowed locally although DVID agglomerates")
        return False

    def edited(self, r: Any, before: np.ndarray, operation: str) -> None:
        path = r.provenance.path if r.provenance is not None else "local"
        event(f"{operation} {path}")
        self.done.append((r.n, before, path))
        self.rows.append({"n": r.n, "operation": operation, "status": "done", "undoes": None})
        assert r.n == len(self.rows), (r.n, len(self.rows))
        if self.dvid and path == "server":
            if operation == "merge":
                self.server_merges.append(r.n)
            else:
                self.server_split = True

    def check(self, what: str) -> None:
        check_scales(self.url, self.model, what)
        h = voxgate.history(self.url)
        got = [{"n": int(r.n), "operation": r.operation, "status": r.status,
                "undoes": None if r.undoes is None or r.undoes != r.undoes else int(r.undoes)}
               for r in h.itertuples()]
        assert got == self.rows, (what, got, self.rows)

    # -- rules ----------------------------------------------------------------------------------
    @rule(data=st.data())
    def merge(self, data: st.DataObject) -> None:
        ids = self.ids()
        if len(ids) < 2:
            return
        pick = sorted(data.draw(st.lists(st.sampled_from(ids), min_size=2, max_size=3,
                                         unique=True)))
        how = data.draw(st.sampled_from(["default", "member", "other"]))
        into = None
        target = pick[0]
        if how == "member":
            target = into = data.draw(st.sampled_from(pick))
        elif how == "other":
            target = into = data.draw(st.sampled_from(
                [i for i in ids if i not in pick] + [f for f in FRESH if f not in ids]))
        prefer = self.prefer(data)
        local = prefer == "local" or not self.dvid or target not in pick

        def run() -> Any:
            return voxgate.merge(self.seg, pick, into=into, prefer=prefer)  # type: ignore

        changed = np.isin(self.model, np.array(pick, np.uint64)) & (self.model != target)
        if local and self.refused_locally(run, changed, [target]):
            self.check(f"refused merge {pick} into {target}")
            return
        before = self.model.copy()
        r = run()
        self.model = np.where(np.isin(before, np.array(pick, np.uint64)), np.uint64(target),
                              before)
        self.edited(r, before, "merge")
        self.check(f"merge {pick} into {target} ({prefer})")

    @rule(data=st.data())
    def relabel(self, data: st.DataObject) -> None:
        ids = self.ids()
        old = data.draw(st.sampled_from(ids))
        new = data.draw(st.sampled_from([i for i in ids if i != old]
                                        + [f for f in FRESH if f not in ids]))
        mapping = {old: new}
        if new in ids and data.draw(st.booleans()):
            mapping[new] = old                              # a swap
        run = lambda: voxgate.relabel(self.seg, mapping)  # noqa: E731
        changed = np.isin(self.model, np.array(list(mapping), np.uint64))
        if self.refused_locally(run, changed, sorted(set(mapping.values()))):
            self.check(f"refused relabel {mapping}")
            return
        before = self.model.copy()
        r = run()
        out = before.copy()
        for a, b in mapping.items():
            out[before == np.uint64(a)] = np.uint64(b)
        self.model = out
        self.edited(r, before, "relabel")
        self.check(f"relabel {mapping}")

    def _split(self, label: int, seeds: Any, want: np.ndarray, asked: list[int | None],
               prefer: str, what: str) -> None:
        """Split ``label``; ``want``: int32 pieces 1..k (0 elsewhere), ``asked``: the id each
        piece asks for (None: a new one)."""
        local = prefer == "local" or not self.dvid

        def run() -> Any:
            return voxgate.split(self.seg, label, seeds=seeds, prefer=prefer)  # type: ignore

        moved = np.isin(want, [k for k, a in enumerate(asked, start=1) if a != label])
        if local and self.refused_locally(run, moved, sorted({a for a in asked
                                                              if a is not None and a != label})):
            self.check(f"refused {what}")
            return
        before = self.model.copy()
        top = int(before.max())
        r = run()
        fresh = [i for i in r.new_ids if i not in asked]
        assert len(set(r.new_ids)) == len(r.new_ids), r.new_ids
        assert all(i > top for i in fresh), (what, r.new_ids, top)
        it = iter(fresh)
        ids = [a if a is not None else next(it) for a in asked]
        assert sorted(r.new_ids) == sorted(i for i in ids if i != label), (r.new_ids, ids)
        out = before.copy()
        for k, i in enumerate(ids, start=1):
            out[want == k] = np.uint64(i)
        self.model = out
        self.edited(r, before, "split")
        self.check(f"{what} -> {r.new_ids}")

    @rule(data=st.data())
    def split_pieces(self, data: st.DataObject) -> None:
        multi = [i for i in self.ids() if split_pieces(self.model, i)[1] > 1]
        if not multi:
            return
        label = data.draw(st.sampled_from(multi))
        pieces, k = split_pieces(self.model, label)
        self._split(label, None, pieces, [label] + [None] * (k - 1), self.prefer(data),
                    f"split {label} into {k} pieces")

    @rule(data=st.data())
    def split_seeded(self, data: st.DataObject) -> None:
        ids = [i for i in self.ids() if (self.model == i).sum() >= 2]
        if not ids:
            return
        label = data.draw(st.sampled_from(ids))
        pts = np.argwhere(self.model == label)
        axis = data.draw(st.integers(0, 2))
        vals = np.unique(pts[:, axis])
        if len(vals) < 2:
            return
        cut = data.draw(st.sampled_from(vals[1:].tolist()))
        a, b = pts[pts[:, axis] < cut], pts[pts[:, axis] >= cut]
        form = data.draw(st.sampled_from(["list", "keep", "both new"]))
        used = set(self.ids())
        free = [f for f in FRESH if f not in used]
        if form == "list" or len(free) < (2 if form == "both new" else 1):
            seeds: Any = [a + self.offset, b + self.offset]
            asked: list[int | None] = [label, None]
        elif form == "keep":
            seeds = {label: a + self.offset, free[0]: b + self.offset}
            asked = [label, free[0]]
        else:
            seeds = {free[0]: a + self.offset, free[1]: b + self.offset}
            asked = [free[0], free[1]]
        want = np.zeros(self.model.shape, np.int32)
        want[tuple(a.T)] = 1
        want[tuple(b.T)] = 2
        self._split(label, seeds, want, asked, self.prefer(data),
                    f"seeded split of {label} ({form}) at {'zyx'[axis]} {cut}")

    @precondition(lambda self: bool(self.done))
    @rule(data=st.data())
    def undo(self, data: st.DataObject) -> None:
        k = data.draw(st.integers(1, min(3, len(self.done))))
        todo = self.done[-k:]
        if k > 1 and data.draw(st.booleans()):  # all in one call
            if self.undo_refused(todo):  # refused before anything changes
                event("undo of several refused")
                with pytest.raises(InvalidRequestError, match="as supervoxels"):
                    voxgate.undo(self.seg, n=k)
                self.check(f"refused undo of {[n for n, _, _ in todo]} at once")
                return
            event("undo of several")
            voxgate.undo(self.seg, n=k)
            for n, _, _ in reversed(todo):
                self.undone(n)
            self.model = todo[0][1]
            self.check(f"undo of {[n for n, _, _ in todo]} at once")
            return
        # edit by edit, newest first: the edits undone before a refused one stay undone
        for n, before, path in reversed(todo):
            if self.undo_refused([(n, before, path)]):
                with pytest.raises(InvalidRequestError, match="as supervoxels"):
                    voxgate.undo(self.seg)
                self.check(f"refused undo of {n}")
                return
            voxgate.undo(self.seg)
            self.undone(n)
            self.model = before
            self.check(f"undo of {n}")

    def undo_refused(self, todo: list[tuple[int, np.ndarray, str]]) -> bool:
        """Whether voxgate refuses to undo ``todo`` (oldest first) in one call.  Where DVID
        agglomerates, the local edits' undos are checked as a local edit is: their blocks
        (those each edit changed) and the ids they write back (:meth:`must_refuse`); when a
        server edit among them is undone before a local one, it posts mappings after the
        check, so any agglomeration of the node refuses."""
        local = [i for i, (_, _, p) in enumerate(todo) if p == "local"]
        if not self.agglomerated() or not local:
            return False
        if any(p == "server" for _, _, p in todo[local[0] + 1:]):
            event("undo refused: a server edit undone before a local one")
            return True
        changed = np.zeros(self.model.shape, dtype=bool)
        writes: set[int] = set()
        for i in local:
            before = todo[i][1]
            after = todo[i + 1][1] if i + 1 < len(todo) else self.model
            moved = after != before
            changed |= moved
            writes |= {int(v) for v in np.unique(before[moved]) if v}
        return self.must_refuse(changed, sorted(writes))

    def undone(self, n: int) -> None:
        assert self.done[-1][0] == n
        self.done.pop()
        self.rows[n - 1]["status"] = "undone"
        self.rows.append({"n": len(self.rows) + 1, "operation": "undo", "status": "done",
                          "undoes": n})
        if n in self.server_merges:
            self.server_merges.remove(n)


# -- the runs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dvid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DVIDServerProcess]:
    server = start_server(log=tmp_path_factory.mktemp("dvid-model") / "server.log")
    yield server
    server.stop()


#: small and derandomized by default; PROOFREAD_MODEL_EXAMPLES / _STEPS / _RANDOM explore more
SETTINGS = settings(max_examples=int(os.environ.get("PROOFREAD_MODEL_EXAMPLES", 8)),
                    stateful_step_count=int(os.environ.get("PROOFREAD_MODEL_STEPS", 12)),
                    deadline=None, derandomize=not os.environ.get("PROOFREAD_MODEL_RANDOM"),
                    database=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("kind", ["precomputed", "zarr", "dvid-auto", "dvid-mixed"])
def test_proofreading_session(kind: str, tmp_path: Path, request: pytest.FixtureRequest,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(tmp_path / "state"))
    counter = itertools.count()
    if kind.startswith("dvid"):
        server = request.getfixturevalue("dvid")

        def make() -> str:
            return _make_dvid(server, f"model-{kind}-{next(counter)}")
    else:
        def make() -> str:
            return _make_file(kind, tmp_path / f"s{next(counter)}")

    machine = type(f"Session_{kind.replace('-', '_')}", (ProofreadSession,),
                   {"kind": kind, "make": staticmethod(make)})
    run_state_machine_as_test(machine, settings=SETTINGS)


# -- the sequences found, kept as plain tests -----------------------------------------------------
def test_undo_of_several_refused_on_dvid_changes_nothing(dvid: DVIDServerProcess,
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the machine (dvid-mixed): a local relabel, a split on DVID's server, then
    ``undo(n=2)``.  The split's undo ran, then the relabel's was refused (DVID had split
    supervoxels) with "Nothing was changed": the volume was left half undone."""
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(tmp_path / "state"))
    url = _make_dvid(dvid, "found-undo-several")
    seg = voxgate.open(url, mode="r+")
    orig = seg.read()
    voxgate.relabel(seg, {2: 3})                      # local (DVID's mappings are identity)
    relabelled = np.where(orig == 2, np.uint64(3), orig)
    s = voxgate.split(seg, 1)                         # 1 is in two pieces: DVID splits it
    assert s.provenance is not None and s.provenance.path == "server"
    after = seg.read()
    with pytest.raises(InvalidRequestError, match="as supervoxels"):
        voxgate.undo(seg, n=2)
    check_scales(url, after, "after the refused undo of both")
    assert list(voxgate.history(url)["status"]) == ["done", "done"]
    voxgate.undo(seg)                                 # the split alone: DVID's own undo
    check_scales(url, relabelled, "after undoing the split")
