"""DVID's server path: merges and splits run by DVID itself (``POST merge``, ``POST
split/<label>``, ``POST renumber``), recorded in the node's log, and their undo (``POST
mappings``)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ...errors import CapabilityNotSupportedError, RemoteNotFoundError
from ...geometry import Box, Vec, chunk_boxes
from ...volume import Volume
from .._common import Provenance
from ..proofread_history import History
from .core import EditResult, _blocks, _boxes, _dvid_labels, _hist, _start
from .remeshing import _recorded_remesh, _remesh

#: the DVID log line prefix of voxgate's edit records
DVID_LOG_PREFIX = "voxgate-proofread "


def _dvid_log(vol: Volume, record: dict[str, Any]) -> None:
    import json

    remote: Any = vol.remote
    remote.repo.add_log(remote.uuid, DVID_LOG_PREFIX + json.dumps(record, sort_keys=True))


def _log_entries(vol: Volume) -> list[dict[str, Any]]:
    """The edits recorded in a DVID node's log (``voxgate-proofread`` lines), folded by n."""
    import json

    remote: Any = vol.remote
    by_n: dict[int, dict[str, Any]] = {}
    for line in remote.repo.log(remote.uuid):
        _, sep, text = line.partition(DVID_LOG_PREFIX)
        if not sep:
            continue
        try:
            rec = json.loads(text)
        except ValueError:
            continue  # not ours after all
        by_n.setdefault(int(rec["n"]), {}).update(rec)
    return [by_n[k] for k in sorted(by_n)]


def _adopt_log(vol: Volume, hist: History) -> None:
    """A DVID node edited elsewhere: its log's records become this machine's history."""
    if vol.remote.scheme != "dvid" or hist.entries():
        return
    for rec in _log_entries(vol):
        hist.append(rec)


def _dvid_merge(vol: Volume, ids: list[int], target: int, user: str | None, history_dir: Any,
                remesh: Any) -> EditResult:
    t0 = time.perf_counter()
    labels = _dvid_labels(vol)
    others = [i for i in ids if i != target]
    boxes = _boxes(vol, ids)
    before = {str(o): [int(s) for s in labels.supervoxels(o)] for o in others}
    hist = _hist(vol, history_dir)
    n = _start(hist, vol, "merge", "server", user, {"into": target, "ids": ids,
                                                      "undo_mappings": before},
               ids, boxes.values())
    try:
        mutation = labels.merge(target, others)
    except Exception:
        hist.update(n, status="failed")  # DVID refused it: nothing changed
        raise
    hist.update(n, status="done", mutation=mutation, seconds=round(time.perf_counter() - t0, 3),
                **_recorded_remesh(remesh))
    _dvid_log(vol, hist.entry(n))
    _remesh(vol, ids, remesh)
    return EditResult(n, "merge", {o: target for o in others}, (), 0, tuple(boxes.values()),
                      Provenance("merge", "server", vol.url, {"mutation": mutation}))


def _dvid_split(vol: Volume, label: int, keys: list[int | None], pieces: np.ndarray, sbox: Box,
                seeded: bool, user: str | None, history_dir: Any, remesh: Any,
                t0: float) -> EditResult:
    from ...formats.dvid_block import encode_rles, rles_from_mask

    labels = _dvid_labels(vol)
    body_box = labels.sparsevol_size(label).box  # every supervoxel of the body lies inside
    svs_before = _supervoxels_in(vol, body_box)
    keep = keys.index(label) + 1 if label in keys else None
    last = 0
    order = [k for k in range(1, len(keys) + 1) if k != keep]
    if keep is None:  # every piece gets a new id: the last one by renumbering what remains
        last = order.pop()
    # (a renumber rewrites no block: only the POSTed pieces reach DVID's downres)
    remote: Any = vol.remote
    remote.check_downres_blocks(
        _split_blocks(vol, np.isin(pieces, order), sbox, body_box, svs_before),
        f"splitting segment {label}", "Nothing was split")
    hist = _hist(vol, history_dir)
    n = _start(hist, vol, "split", "server", user,
               {"id": label, "seeded": seeded, "box": [*map(int, sbox.start),
                                                       *map(int, sbox.stop)]},
               [label], [sbox])
    made: list[int] = []
    hist.update(n, new_bodies=made)
    mutations = []
    for k in order:
        runs = rles_from_mask(pieces == k, (sbox.start.z, sbox.start.y, sbox.start.x))
        try:
            new, mut = labels.split(label, encode_rles(runs))
        except Exception:
            if not made:  # DVID refused the first piece: nothing changed
                hist.update(n, status="failed")
            raise
        mutations.append(mut)
        want = keys[k - 1]
        if want is not None and want != new:
            labels.renumber({want: new})
            new = want
        made.append(int(new))
        hist.update(n, new_bodies=made)
    if keep is None:
        want = keys[last - 1]
        if want is None:
            want = int(labels.reserve_ids(1))
        labels.renumber({want: label})
        made.append(int(want))
        hist.update(n, new_bodies=made, renumbered_all=True)
    hist.update(n, status="done", new_ids=made, ids=sorted({label, *made}), mutations=mutations,
                sv_splits=_lineage(svs_before, _supervoxels_in(vol, body_box)),
                seconds=round(time.perf_counter() - t0, 3), **_recorded_remesh(remesh))
    _dvid_log(vol, hist.entry(n))
    _remesh(vol, [label, *made], remesh)
    return EditResult(n, "split", {}, tuple(made), 0, (sbox,),
                      Provenance("split", "server", vol.url, {"mutations": mutations}))


def _check_local_edit(vol: Volume, what: str, blocks: Sequence[Box] | None = None, *,
                      bodies: Iterable[int] | None = None, writes: Iterable[int] = ()
                      ) -> None:
    """An edit on voxgate's local path of a dvid:// labelmap's body view: refused where DVID
    agglomerates supervoxels (DVIDRemote.check_local_edit says why).  ``blocks``: the blocks
    (of ``vol``'s scale) the edit may rewrite, ``bodies``: the ids whose blocks it rewrites
    (None: every block of ``blocks``), ``writes``: the ids it writes; then only the
    supervoxels of those blocks and the written ids are asked about.  Without ``blocks``: any
    agglomeration of the node refuses."""
    from ...remotes.dvid import DVIDRemote

    if isinstance(vol.remote, DVIDRemote):
        vol.remote.check_local_edit(what, blocks, bodies=bodies, writes=writes,
                                    scale=vol.scale)


def _check_local_undo(vol: Volume, what: str, hist: Any, edits: Sequence[int],
                      narrow: bool) -> None:
    """:func:`_check_local_edit` of undoing the local ``edits``: the blocks they saved, and the
    ids those blocks get back (the saved voxels the edits changed).  ``narrow`` False (a server
    edit undone before a local one in the same call posts new mappings after this check), or
    a block saved at another scale: any agglomeration of the node refuses."""
    from ...remotes.dvid import DVIDRemote

    if not isinstance(vol.remote, DVIDRemote):
        return
    saved = [b for k in edits for b in hist.saved_blocks(k)]
    if not narrow or any(scale not in (None, vol.scale) for _, scale, _ in saved):
        _check_local_edit(vol, what)
        return
    writes: set[int] = set()
    for _, _, f in saved:  # (one block's voxels at a time)
        old, changed = hist.load_saved(f)
        writes.update(np.unique(old if changed is None else old[changed]).tolist())
    _check_local_edit(vol, what, [box for box, _, _ in saved], writes=writes)


def _check_local_change(vol: Volume, what: str, mask: np.ndarray, box: Box,
                        writes: Iterable[int]) -> None:
    """:func:`_check_local_edit` of an edit that gives the voxels ``mask`` (over ``box``) the
    ids ``writes``: it rewrites the blocks (:func:`core._blocks`) holding one of them."""
    from ...remotes.dvid import DVIDRemote

    if isinstance(vol.remote, DVIDRemote):
        blocks = [b for b in _blocks(vol, [box]) if not b.intersect(box).is_empty()
                  and mask[b.intersect(box).slices(box.start)].any()]
        _check_local_edit(vol, what, blocks, writes=writes)


def _check_local_split(vol: Volume, mask: np.ndarray, sbox: Box, label: int) -> None:
    """A split written by voxgate (the local path) on a dvid:// labelmap with coarser scales:
    refused before any id is reserved or block written when one of the scale-0 blocks it
    writes (those holding a voxel of ``mask``, over ``sbox``) is one DVID's downres cannot
    take (``DVIDRemote.write`` would refuse that block, maybe after others were written)."""
    from ...remotes.dvid import DVIDRemote

    remote = vol.remote
    if vol.scale != 0 or not isinstance(remote, DVIDRemote) or not remote.derives_scales:
        return
    grid = remote.meta.scale(0).chunks
    where = np.nonzero(mask)
    if not len(where[0]):
        return
    coords = np.stack([(w + s) // g for w, s, g in zip(where, sbox.start, grid, strict=True)],
                      axis=1)
    remote.check_downres_blocks(np.unique(coords, axis=0).tolist(),
                                f"splitting segment {label}", "Nothing was split")


def _split_blocks(vol: Volume, sent: np.ndarray, sbox: Box, body_box: Box,
                  svs: np.ndarray) -> list[tuple[int, int, int]]:
    """The scale-0 blocks (z, y, x) DVID rewrites when the voxels ``sent`` (a mask over
    ``sbox``) are split off: labelmap mutate.go SplitLabels gives every supervoxel they touch
    two new ids, in every block that holds it (getAffectedBlocks), and hands each of those
    blocks to the downres.  ``svs``: the supervoxels over ``body_box``, which holds them all."""
    grid = vol.remote.meta.scale(0).chunks
    where = np.nonzero(sent)
    at = tuple(w + (s - b) for w, s, b in zip(where, sbox.start, body_box.start, strict=True))
    cut = np.unique(svs[at])
    hold = np.nonzero(np.isin(svs, cut[cut != 0]))
    if not len(hold[0]):
        return []
    coords = np.stack([(h + b) // g for h, b, g in zip(hold, body_box.start, grid,
                                                        strict=True)], axis=1)
    return [(int(z), int(y), int(x)) for z, y, x in np.unique(coords, axis=0).tolist()]


def _supervoxels_in(vol: Volume, box: Box) -> np.ndarray:
    """The supervoxel ids (not the bodies) of ``box`` at scale 0."""
    remote: Any = vol.remote
    out = np.empty(tuple(box.shape), dtype=np.uint64)
    for _, b in chunk_boxes(box, Vec(64, 64, 64), box):  # requests of a bounded size
        out[b.slices(box.start)] = remote._get(b, 0, supervoxels=True)
    return out


def _lineage(before: np.ndarray, after: np.ndarray) -> dict[str, list[int]]:
    """``{old supervoxel: [the supervoxels its voxels hold now]}`` for the supervoxels a split
    replaced (DVID gives each split supervoxel two new ids: the split part and the rest)."""
    changed = before != after
    pairs = np.unique(np.stack([before[changed], after[changed]]), axis=1)
    out: dict[str, list[int]] = {}
    for old, new in pairs.T.tolist():
        out.setdefault(str(int(old)), []).append(int(new))
    return out


def _descendants(svs: list[int], later: list[dict[str, Any]]) -> list[int]:
    """``svs`` as they are now: each supervoxel a later split replaced gives way to the ones
    that hold its voxels since (in the order the splits ran)."""
    current = [int(s) for s in svs]
    for e in later:
        lin = e.get("sv_splits") or {}
        if not lin:
            continue
        nxt: list[int] = []
        for s in current:
            nxt += [int(v) for v in lin.get(str(s), [s])]
        current = nxt
    return sorted(set(current))


def _dvid_undo(vol: Volume, e: dict[str, Any], later: Sequence[dict[str, Any]] = ()) -> None:
    """Undo server edit ``e``; ``later``: the edits made after it (their supervoxel splits
    moved the voxels of ``e``'s supervoxels to new ones)."""
    labels = _dvid_labels(vol)
    if labels is None:
        raise CapabilityNotSupportedError(
            f"edit {e['n']} ran on DVID's server; undo it on the same dvid:// labelmap opened "
            "with mode='r+'")
    ops: list[tuple[int, list[int]]] = []
    if e["operation"] == "merge":
        ops = [(int(b), _descendants(svs, list(later)))
               for b, svs in e["params"]["undo_mappings"].items()]
    else:
        label = int(e["params"]["id"])
        for b in e.get("new_bodies", []):
            if b == label:
                continue
            try:
                ops.append((label, [int(s) for s in labels.supervoxels(int(b))]))
            except RemoteNotFoundError:  # a body the edit never finished making
                continue
    labels.post_mappings(ops)
