"""The label bookkeeping under the DVID test server's labelmap/labelarray endpoints: the
supervoxel -> body mapping, label indexes (supervoxel -> blocks), sparse-volume runs, labels at
points, new labels and the parsing of label arguments."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from ...formats.dvid_block import rles_from_mask
from .grid import _scale, _Vol
from .model import DVIDError, _Ctx


def _note_labels(ctx: _Ctx, top: int) -> None:
    inst = ctx.inst
    v = str(ctx.version)
    if top > inst.max_label.get(v, 0):
        inst.max_label[v] = top
    inst.max_repo_label = max(inst.max_repo_label, top)


# -- label bookkeeping --------------------------------------------------------------------------
def _mapping(ctx: _Ctx) -> dict[int, int]:
    """supervoxel -> body at this version (labelarray: no mapping)."""
    if ctx.inst.typename != "labelmap":
        return {}
    key = ("mapping", ctx.version, ctx.inst.mutations)  # a read racing a write keeps no stale copy
    cached = ctx.inst.caches.get(key)
    if cached is not None:
        return dict(cached)
    store = ctx.store("mapping")
    out: dict[int, int] = {}
    for k in store.keys(ctx.ancestry):
        v = store.get(k, ctx.ancestry)
        if isinstance(v, bytes):
            out[int(k)] = struct.unpack("<Q", v)[0]
    ctx.inst.caches[key] = out
    return dict(out)


def _apply_mapping(ctx: _Ctx, data: np.ndarray) -> np.ndarray:
    m = _mapping(ctx)
    if not m:
        return data
    keys = np.array(sorted(m), dtype=np.uint64)
    vals = np.array([m[int(k)] for k in keys], dtype=np.uint64)
    pos = np.searchsorted(keys, data)
    pos[pos >= len(keys)] = 0
    hit = keys[pos] == data
    out = data.copy()
    out[hit] = vals[pos[hit]]
    return out


def _index(ctx: _Ctx, scale: int = 0) -> dict[int, dict[tuple[int, int, int], int]]:
    """supervoxel -> {block (z, y, x): voxel count} at this version and scale.

    Scale 0 is DVID's label index, kept as DVID keeps it (labelidx.go ChangeLabelIndex): by
    deltas on each write, so a raw POST that overwrites labels without ``?mutate=true`` adds
    the new counts and leaves the old ones (write.go putChunk, handleBlockIndexing).  Coarser
    scales are not indexed by DVID; their block lists come from the blocks themselves."""
    key = ("index", ctx.version, scale, ctx.inst.mutations)
    cached = ctx.inst.caches.get(key)
    if cached is not None:
        return dict(cached)
    out: dict[int, dict[tuple[int, int, int], int]] = {}
    if scale == 0:
        store = ctx.store("labelindex")
        for k in store.keys(ctx.ancestry):
            rows = store.get(k, ctx.ancestry)
            if isinstance(rows, np.ndarray) and len(rows):
                out[int(k)] = {(int(z), int(y), int(x)): int(c) for z, y, x, c in rows.tolist()}
    else:
        vol = _Vol(ctx, scale)
        for bk in vol.block_keys():
            blk = vol.block(*bk)
            if blk is None:
                continue
            for lab, c in _counts(blk).items():
                out.setdefault(lab, {})[bk] = c
    ctx.inst.caches[key] = out
    return dict(out)


def _counts(blk: np.ndarray | None) -> dict[int, int]:
    if blk is None:
        return {}
    labels, counts = np.unique(blk, return_counts=True)
    return {lab: c for lab, c in zip(labels.tolist(), counts.tolist(), strict=True) if lab}


def _put_blocks(ctx: _Ctx, blocks: dict[tuple[int, int, int], np.ndarray], *, mutate: bool,
                index: bool = True, downres: bool = True) -> None:
    """Store scale-0 blocks (z, y, x block coordinates) as DVID's labelmap does on a raw POST
    (write.go PutLabels/putChunk): the label index gets each block's counts as a delta against
    the previous block only when ``mutate`` (else as an ingest, added to what is there), the
    max label follows the new labels, and the coarser scales are recomputed before the request
    returns (downres.Mutation.Execute)."""
    vol = _Vol(ctx, 0)
    bz, by, bx = vol.bs
    if any(b % 8 or b < 16 for b in vol.bs):
        # a labelarray of a BlockSize the label codec cannot hold (labels/compressed.go
        # setSubvolume: "must be multiple of 8", "Blocks must be at least 16x16x16"):
        # write.go putChunk logs the error and returns for every block, so the request
        # succeeds and stores nothing; PutLabels had adjusted the extents first
        for z, y, x in blocks:
            _extend(ctx, (x * bx, y * by, z * bz), (x * bx + bx - 1, y * by + by - 1,
                                                     z * bz + bz - 1))
        return
    deltas: dict[int, dict[tuple[int, int, int], int]] = {}
    for bk, blk in blocks.items():
        if index:
            new = _counts(blk)
            old = _counts(vol.block(*bk)) if mutate else {}
            for sv in set(new) | set(old):
                d = new.get(sv, 0) - old.get(sv, 0)
                if d:
                    deltas.setdefault(sv, {})[bk] = d
        vol.write((bk[0] * bz, bk[1] * by, bk[2] * bx), blk)
        if blk.size:
            _note_labels(ctx, int(blk.max()))
    if deltas:
        _change_index(ctx, deltas)
    if downres and blocks:
        try:
            _downres(ctx, set(blocks))
        except DVIDError:
            # a panic in the downres (negative odd blocks): scale 0 is stored all the same
            with ctx.state.lock:
                ctx.mutated()
                ctx.state.save()
            raise


def _extend(ctx: _Ctx, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> None:
    """Grow the instance's extents (x, y, z voxel points, inclusive) over ``lo``..``hi``."""
    inst = ctx.inst
    inst.min_point = list(lo) if inst.min_point is None else [
        min(a, b) for a, b in zip(inst.min_point, lo, strict=True)]
    inst.max_point = list(hi) if inst.max_point is None else [
        max(a, b) for a, b in zip(inst.max_point, hi, strict=True)]


def _change_index(ctx: _Ctx, deltas: dict[int, dict[tuple[int, int, int], int]]) -> None:
    """labels.Index.ModifyBlocks: add per-block deltas; a count that reaches 0 goes away."""
    store = ctx.store("labelindex")
    for sv, changes in deltas.items():
        cur = store.get(str(sv), ctx.ancestry)
        blocks: dict[tuple[int, int, int], int] = {}
        if isinstance(cur, np.ndarray):
            blocks = {(int(z), int(y), int(x)): int(c) for z, y, x, c in cur.tolist()}
        for bk, d in changes.items():
            n = blocks.get(bk, 0) + d
            if n > 0:
                blocks[bk] = n
            else:
                blocks.pop(bk, None)
        if blocks:
            rows = np.array([[*bk, c] for bk, c in sorted(blocks.items())], dtype=np.int64)
            store.put(str(sv), ctx.version, rows)
        else:
            store.delete(str(sv), ctx.version, ctx.ancestry)


def _mode2(blk: np.ndarray) -> np.ndarray:
    """2x down-sampling of a label block as DVID does it (labels/compressed.go downresArray):
    each output voxel is the most frequent non-zero label of its 2x2x2 cell, the smaller label
    on a tie, and 0 when all eight are 0."""
    nz, ny, nx = blk.shape
    cells = (blk.reshape(nz // 2, 2, ny // 2, 2, nx // 2, 2).transpose(0, 2, 4, 1, 3, 5)
             .reshape(-1, 8))
    votes = (cells[:, :, None] == cells[:, None, :]).sum(axis=2)
    votes[cells == 0] = 0
    best = votes.max(axis=1)
    cand = np.where((votes == best[:, None]) & (cells != 0), cells,
                    np.uint64(np.iinfo(np.uint64).max))
    out = cand.min(axis=1)
    out[best == 0] = 0
    return out.reshape(nz // 2, ny // 2, nx // 2).astype(blk.dtype)


def _go_mod2(v: int) -> int:
    """Go's ``v % 2`` on an int32: truncated, so -1 for a negative odd ``v``."""
    return -(-v % 2) if v < 0 else v % 2


def _downres(ctx: _Ctx, changed: set[tuple[int, int, int]]) -> None:
    """labelmap downres.go StoreDownres, scale by scale up to MaxDownresLevel: every coarser
    block over a changed block is recomputed from its changed octants; the octants that did
    not change keep what the coarser block held (all eight changed: it starts from 0).

    getHiresChanges files each changed block under octant
    ``((z % 2) << 2) + ((y % 2) << 1) + (x % 2)`` of its parent with Go's ``%``, negative for
    a negative odd coordinate: a negative index panics (server/web.go recoverHandler: 500)
    before that scale is stored, the scales below it staying stored; an index that lands in
    range is another octant's, and the block is downsampled into that place (two blocks on
    one index: one of them, whichever Go's map order gives last)."""
    for scale in range(ctx.inst.max_downres):
        hi, lo = _Vol(ctx, scale), _Vol(ctx, scale + 1)
        bz, by, bx = hi.bs
        parents: dict[tuple[int, int, int], dict[int, tuple[int, int, int]]] = {}
        for bk in sorted(changed):
            idx = (_go_mod2(bk[0]) << 2) + (_go_mod2(bk[1]) << 1) + _go_mod2(bk[2])
            if idx < 0:
                uuid = ctx.repo.nodes[ctx.version].uuid
                raise DVIDError(
                    "Panic detected on request voxgate-test/1:\nruntime error: index out of "
                    f"range [{idx}]\nIP: 127.0.0.1, URL: /api/node/{uuid}/{ctx.inst.name}",
                    500, raw=True)
            parents.setdefault((bk[0] >> 1, bk[1] >> 1, bk[2] >> 1), {})[idx] = bk
        for pk, octants in parents.items():
            solid = _solid_over(hi, octants)
            if solid is not None:
                lo.store.put(lo.key(*pk), ctx.version, np.full(lo.bs, solid, dtype=lo.dtype))
                continue
            base = lo.block(*pk) if len(octants) < 8 else None
            out = np.zeros(lo.bs, dtype=lo.dtype) if base is None else base.copy()
            for i, (z, y, x) in octants.items():
                blk = hi.block(z, y, x)
                sub = _mode2(blk) if blk is not None else np.zeros(
                    (bz // 2, by // 2, bx // 2), dtype=lo.dtype)
                # labels/compressed.go DownresSlow places octant i by its bits
                oz, oy, ox = (i >> 2) * bz // 2, ((i >> 1) & 1) * by // 2, (i & 1) * bx // 2
                out[oz:oz + bz // 2, oy:oy + by // 2, ox:ox + bx // 2] = sub
            lo.store.put(lo.key(*pk), ctx.version, out)
        changed = set(parents)


def _solid_over(hi: _Vol, octants: dict[int, tuple[int, int, int]]) -> int | None:
    """labels/compressed.go Block.setBlank, which Block.Downres tries first: an octant that
    did not change counts as a solid block of label 0, so when every changed octant is one
    solid label L, and L is 0 or all eight changed, the coarser block becomes solid L, the
    unchanged octants' part of it included (a write of all-0 blocks clears their coarse
    block).  None: the octants are recomputed one by one."""
    label: int | None = None
    for i in range(8):
        if i not in octants:
            lbl = 0
        else:
            blk = hi.block(*octants[i])
            if blk is None:
                return None
            lbl = int(blk.flat[0])
            if not (blk == blk.flat[0]).all():
                return None
        if label is None:
            label = lbl
        elif lbl != label:
            return None
    return label


def _supervoxels_of(ctx: _Ctx, label: int, supervoxels: bool) -> set[int]:
    idx = _index(ctx)
    if supervoxels:
        return {label} if label in idx else set()
    m = _mapping(ctx)
    return {sv for sv in idx if m.get(sv, sv) == label}


#: handlers.go: the text after "Label 0 is protected background value and cannot be " in each
#: endpoint's refusal of label 0 (handleSize, handleSupervoxels, handleLabelmod: "queried as
#: body"; handleCleave: "used as cleave target"; the sparsevol family: "used as sparse volume")
_LABEL0 = {"size": "queried as body", "supervoxels": "queried as body",
           "supervoxel-sizes": "queried as body", "lastmod": "queried as body",
           "cleave": "used as cleave target"}


def _label_arg(parts: list[str], what: str) -> int:
    if len(parts) < 2:
        raise DVIDError(f"DVID requires label to follow '{what}' command")
    label = _uint(parts[1])
    if label == 0:
        raise DVIDError("Label 0 is protected background value and cannot be "
                        f"{_LABEL0.get(what, 'used as sparse volume')}.")
    return label


def _body_list(body: bytes, what: str) -> list[Any]:
    """A JSON list body as Go's json.Unmarshal into a slice takes it: ``null`` is an empty
    (nil) slice, not an error (handleMapping, handleSizes, handleLabels, handleRenumber)."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise DVIDError(f"Bad {what} request JSON: {exc}") from None
    if data is None and what != "cleave":
        return []
    if not isinstance(data, list):
        raise DVIDError(f"Bad {what} request JSON: expected a list")
    return data


def _coords(body: bytes) -> list[tuple[int, int, int]]:
    """``GET labels``' body as handlers.go handleLabels decodes it: json.Unmarshal into
    ``[]dvid.Point3d``, a Go ``[3]int32`` each: a shorter list is padded with 0, a longer one
    cut to three, ``null`` is (0, 0, 0); anything but integers in int32 is refused (400)."""
    out = []
    for c in _body_list(body, "labels"):
        if c is None:
            c = []
        if not isinstance(c, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and -2**31 <= v < 2**31
                for v in c[:3]):
            raise DVIDError(f"Bad labels request JSON: json: cannot unmarshal {c!r} into Go "
                            "value of type dvid.Point3d")
        x, y, z = ([*c[:3], 0, 0, 0])[:3]
        out.append((x, y, z))
    return out


def _bounds(ctx: _Ctx) -> tuple[list[int], list[int]]:
    """Optional minx..maxz query bounds as inclusive (z, y, x) lists."""
    lo, hi = [-(2**62)] * 3, [2**62] * 3
    for i, axis in enumerate("zyx"):
        for name, target in ((f"min{axis}", lo), (f"max{axis}", hi)):
            if name in ctx.q:
                try:
                    target[i] = int(ctx.q[name])
                except ValueError:
                    raise DVIDError(f"error parsing bounds from query string: {name}="
                                    f"{ctx.q[name]!r}") from None
    return lo, hi


def _runs(ctx: _Ctx, svs: set[int], scale: int, lo: list[int], hi: list[int]) -> np.ndarray:
    vol = _Vol(ctx, scale)
    idx = _index(ctx, scale)
    blocks = sorted({b for sv in svs for b in idx.get(sv, {})})
    wanted = np.array(sorted(svs), dtype=np.uint64)
    parts = []
    for bz, by, bx in blocks:
        blk = vol.block(bz, by, bx)
        if blk is None:
            continue
        o = (bz * vol.bs[0], by * vol.bs[1], bx * vol.bs[2])
        a = [max(lo_i - o_i, 0) for lo_i, o_i in zip(lo, o, strict=True)]
        e = [min(hi_i - o_i + 1, b) for hi_i, o_i, b in zip(hi, o, vol.bs, strict=True)]
        if any(x >= y for x, y in zip(a, e, strict=True)):
            continue
        sub = blk[a[0]:e[0], a[1]:e[1], a[2]:e[2]]
        mask = np.isin(sub, wanted)
        parts.append(rles_from_mask(mask, (o[0] + a[0], o[1] + a[1], o[2] + a[2])))
    if not parts:
        return np.zeros((0, 4), dtype=np.int32)
    runs = np.concatenate(parts).astype(np.int64)
    runs = runs[np.lexsort((runs[:, 0], runs[:, 1], runs[:, 2]))]
    # join runs that continue across block boundaries along x
    merged: list[list[int]] = []
    for x, y, z, n in runs.tolist():
        if merged and merged[-1][1] == y and merged[-1][2] == z and \
                merged[-1][0] + merged[-1][3] == x:
            merged[-1][3] += n
        else:
            merged.append([x, y, z, n])
    return np.array(merged, dtype=np.int32)



def _uint(text: str) -> int:
    """strconv.ParseUint(text, 10, 64): ASCII digits only (``isdigit`` alone lets "²" through
    to ``int``, a 500), and "value out of range" past 2^64 - 1."""
    if not (text.isascii() and text.isdigit()):
        raise DVIDError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    if int(text) >= 2**64:
        raise DVIDError(f'strconv.ParseUint: parsing "{text}": value out of range')
    return int(text)


def _as_label(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**64:
        raise DVIDError(f"labels must be unsigned 64-bit integers, got {v!r}")
    return v


def _new_labels(ctx: _Ctx, count: int) -> tuple[int, int]:
    inst = ctx.inst
    if inst.next_label:
        start, end = inst.next_label + 1, inst.next_label + count
        inst.next_label = end
        return start, end
    start, end = inst.max_repo_label + 1, inst.max_repo_label + count
    inst.max_repo_label = end
    inst.max_label[str(ctx.version)] = end
    return start, end


def _points(ctx: _Ctx, pts: list[tuple[int, int, int]]) -> list[int]:
    vol = _Vol(ctx, _scale(ctx))
    out = []
    for x, y, z in pts:
        out.append(int(vol.read((z, y, x), (1, 1, 1))[0, 0, 0]))
    if ctx.flag("supervoxels"):
        return out
    m = _mapping(ctx)
    return [m.get(v, v) for v in out]

