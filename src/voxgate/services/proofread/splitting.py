"""split: cut a segment into its connected pieces or by a seeded watershed, and the kernel that
does it on a numpy array."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...errors import InvalidRequestError, refuses_unknown_keywords
from ...geometry import Box, Vec
from ...remotes.base import Capability, has_capability
from ...volume import Volume
from .._common import Prefer, Provenance, as_volume, choose_path
from .coarser import coarser_step
from .core import (
    EditResult,
    _blocks,
    _boxes,
    _covers_scale,
    _dvid_labels,
    _edit_blocks,
    _forget_stats,
    _hist,
    _label,
    _new_ids,
    _note_boxes,
    _open,
    _server_boxes,
    _start,
    _stats,
    one_edit_at_a_time,
)
from .dvid import _check_local_change, _check_local_edit, _check_local_split, _dvid_split
from .remeshing import _check_remesh, _recorded_remesh, _remesh


def split_kernel(labels: np.ndarray, label: int, seeds: Sequence[Sequence[Sequence[int]]] | None,
                 image: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The pieces of ``label`` in a C-order (z, y, x) array: an int32 array, 0 outside the
    segment, 1..k inside, and k.

    With ``seeds`` (one list of (z, y, x) array indices per piece) a seeded watershed inside
    the segment, on ``image`` when given, else on the negated distance to the segment's
    boundary; voxels no seed reaches (pieces not connected to any seed) get piece 1.  Without
    seeds the connected pieces (26-connected), largest first (ties in scan order).
    """
    mask = labels == label
    if seeds is None:
        import cc3d

        cc, k = cc3d.connected_components(mask, connectivity=26, return_N=True)
        cc = cc.astype(np.int32, copy=False)
        if k <= 1:
            return cc, int(k)
        counts = np.bincount(cc.ravel(), minlength=k + 1)[1:]
        order = sorted(range(k), key=lambda i: (-counts[i], i))
        lut = np.zeros(k + 1, dtype=np.int32)
        for rank, i in enumerate(order, start=1):
            lut[i + 1] = rank
        return lut[cc], int(k)
    markers = np.zeros(labels.shape, dtype=np.int32)
    for k, pts in enumerate(seeds, start=1):
        for p in pts:
            markers[tuple(p)] = k
    if image is not None:
        elevation = np.asarray(image, dtype=np.float64)
    else:
        from scipy import ndimage

        elevation = -ndimage.distance_transform_edt(mask)
    try:
        from skimage.segmentation import watershed

        ws = watershed(elevation, markers, mask=mask).astype(np.int32, copy=False)
    except ImportError:  # scipy's image-foresting transform on uint16 levels
        from scipy import ndimage

        lo, hi = float(elevation[mask].min()), float(elevation[mask].max())
        lev = np.zeros(labels.shape, dtype=np.uint16)
        lev[mask] = ((elevation[mask] - lo) / max(hi - lo, 1e-12) * 65000).astype(np.uint16)
        lev[~mask] = 65535
        ws = ndimage.watershed_ift(lev, markers).astype(np.int32)
        ws[~mask] = 0
        # watershed_ift floods through the voxels outside the segment too: parts of the
        # segment no seed reaches inside it go to piece 1, as scikit-image's path gives them
        parts, _ = ndimage.label(mask)  # 6-connected, the flooding's own connectivity
        ws[mask & ~np.isin(parts, parts[markers > 0])] = 0
    ws[mask & (ws == 0)] = 1
    return ws, len(seeds)


def _seed_groups(vol: Volume, label: int, seeds: Any, sbox: Box, labels: np.ndarray
                 ) -> tuple[list[int | None], list[list[tuple[int, int, int]]]]:
    """(the id each seed group asks for, None for a new one; its points as array indices)."""
    if isinstance(seeds, Mapping):
        items = [(_label(k, vol.dtype, "seed id"), v) for k, v in seeds.items()]
        keys: list[int | None] = [k for k, _ in items]
        groups = [v for _, v in items]
    elif isinstance(seeds, Sequence) and not isinstance(seeds, (str, bytes)):
        groups = list(seeds)
        keys = [label] + [None] * (len(groups) - 1)
    else:
        raise InvalidRequestError(f"seeds must be {{id: [(z, y, x), ...]}} or a list of point "
                                  f"lists, got {seeds!r}")
    if len(groups) < 2:
        raise InvalidRequestError(f"a seeded split needs at least two seed groups, got "
                                  f"{len(groups)} (one piece is a relabel: voxgate.relabel)")
    out = []
    seen: dict[tuple[int, int, int], int | None] = {}
    for key, pts in zip(keys, groups, strict=True):
        if isinstance(pts, (str, bytes)) or not isinstance(pts, (Sequence, np.ndarray)):
            raise InvalidRequestError(f"seed group {key} must be a list of (z, y, x) points, "
                                      f"got {pts!r}")
        pts = [pts] if len(pts) == 3 and all(isinstance(v, (int, np.integer)) for v in pts) \
            else pts
        if len(pts) == 0:  # (len: a (k, 3) numpy array of points has no truth value)
            raise InvalidRequestError(f"seed group {key} has no points")
        local = []
        for p in pts:
            v = Vec.of(p, "seed")
            if not sbox.contains(Box(v, v + Vec(1, 1, 1))):
                raise InvalidRequestError(
                    f"seed {tuple(v)} (z, y, x) lies outside segment {label}'s box {sbox!r}")
            idx = (v.z - sbox.start.z, v.y - sbox.start.y, v.x - sbox.start.x)
            got = int(labels[idx])
            if got != label:
                raise InvalidRequestError(
                    f"seed {tuple(v)} (z, y, x) lies outside segment {label} (it holds "
                    f"{got}); seeds are voxels of the segment being split")
            if idx in seen and seen[idx] != key:
                raise InvalidRequestError(
                    f"seed {tuple(v)} (z, y, x) is in two seed groups ({seen[idx]} and {key}); "
                    "a voxel can start one piece only")
            seen[idx] = key
            local.append(idx)
        out.append(local)
    fixed = [k for k in keys if k is not None]
    if len(set(fixed)) != len(fixed):
        raise InvalidRequestError(f"seed ids repeat: {fixed}")
    others = [k for k in fixed if k != label]
    if others:
        st_boxes = _existing(vol, others)
        if st_boxes:
            raise InvalidRequestError(
                f"seed id(s) {sorted(st_boxes)} already label other voxels of {vol.url}; a "
                "split gives its pieces unused ids (merge afterwards to join them)")
    return keys, out


def _existing(vol: Volume, ids: list[int]) -> list[int]:
    labels = _dvid_labels(vol)
    if labels is not None:
        return [i for i, s in zip(ids, labels.sizes(ids).tolist(), strict=True) if s]
    if has_capability(vol.remote, Capability.SERVER_BOUNDING_BOXES):
        return sorted(_server_boxes(vol, ids))
    boxes = _stats(vol)["boxes"]
    return [i for i in ids if i in boxes]


@refuses_unknown_keywords
@one_edit_at_a_time
def split(seg: Any, id: Any, *, seeds: Any = None, image: Any = None,
          box: Any = None, user: str | None = None, prefer: Prefer = "auto",
          progress: bool = False, workers: int | None = None, history_dir: Any = None,
          remesh: Any = False) -> EditResult:
    """Split segment ``id`` into pieces.

    ``seeds``: ``{piece id: [(z, y, x), ...]}`` in dataset voxels (a piece id equal to ``id``
    keeps it; the others must be unused), or a list of point lists (the first piece keeps
    ``id``, the others get new ids); a seeded watershed inside the segment assigns every voxel
    to a seed, on ``image`` (any Volume / URL covering the same voxels) when given, else on the
    distance to the segment's boundary.  Without seeds the segment's connected pieces are
    split apart: the largest keeps ``id``, the others get new ids.  ``box`` limits the split
    to that region (default: the segment's bounding box), which is read into memory.
    """
    t0 = time.perf_counter()
    vol = _open(seg)
    _check_remesh(vol, remesh)
    label = _label(id, vol.dtype)
    sid_box = _boxes(vol, [label])[label]
    if box is not None:
        if not isinstance(box, Box) and (isinstance(box, (str, bytes)) or not isinstance(
                box, Sequence) or len(box) != 2):
            raise InvalidRequestError(
                f"box must be a voxgate.Box or a (start, stop) pair of (z, y, x), got {box!r}")
        given = box if isinstance(box, Box) else Box(*box)
        if given.is_empty():
            raise InvalidRequestError(f"box {given!r} is empty")
        if not vol.bounds.contains(given):
            # (it was clipped to the volume without a word)
            raise InvalidRequestError(f"box {given!r} reaches outside {vol.url} "
                                      f"({vol.bounds!r})")
        sbox = given
    else:
        sbox = sid_box
    labels = vol.remote.read(sbox, vol.scale)
    if not (labels == label).any():
        raise InvalidRequestError(f"segment {label} has no voxels inside {sbox!r}")
    img = None
    if image is not None:
        ivol = as_volume(image)
        if ivol.ndim != 3 or not ivol.scale_meta.bounds.contains(sbox):
            raise InvalidRequestError(
                f"image {ivol.url} ({ivol.scale_meta.bounds!r}) does not cover the split region "
                f"{sbox!r}; give an image of the same voxels")
        img = ivol.remote.read(sbox, ivol.scale)
    keys: list[int | None]
    if seeds is None:
        pieces, k = split_kernel(labels, label, None)
        if k <= 1:
            raise InvalidRequestError(
                f"segment {label} is one connected piece inside {sbox!r}; give seeds "
                "(seeds={new_id: [(z, y, x)], ...}) to cut it")
        keys = [label] + [None] * (k - 1)
    else:
        keys, groups = _seed_groups(vol, label, seeds, sbox, labels)
        pieces, k = split_kernel(labels, label, groups, img)
    path = choose_path(prefer, vol.remote, Capability.SERVER_PROOFREAD, "split")
    if path == "server":
        return _dvid_split(vol, label, keys, pieces, sbox, seeds is not None, user, history_dir,
                           remesh, t0)
    # the blocks rewritten are those holding a voxel of a piece that gets another id; the ids
    # written, those pieces' ids (the new ones, reserved next, are asked about once known)
    what = f"splitting segment {label}"
    moved = np.isin(pieces, [k for k, kk in enumerate(keys, start=1) if kk != label])
    _check_local_change(vol, what, moved, sbox,
                        [kk for kk in keys if kk is not None and kk != label])
    _check_local_split(vol, pieces > 0, sbox, label)
    new = _new_ids(vol, sum(1 for kk in keys if kk is None))
    if new:
        _check_local_edit(vol, what, [], writes=new)
    it = iter(new)
    ids = [kk if kk is not None else next(it) for kk in keys]
    lut = np.array([0, *ids], dtype=vol.dtype)
    relab = lut[pieces]
    mask = pieces > 0

    def fn(data: np.ndarray, b: Box) -> np.ndarray | None:
        inner = b.intersect(sbox)
        sl = inner.slices(sbox.start)
        m = mask[sl]
        if not m.any():
            return None
        out = data.copy()
        part = out[inner.slices(b.start)]
        part[m] = relab[sl][m]
        return out

    hist = _hist(vol, history_dir)
    params = {"id": label, "seeded": seeds is not None,
              "seeds": None if seeds is None else _seeds_json(keys, ids, seeds),
              "image": None if image is None else as_volume(image).url,
              "box": [*map(int, sbox.start), *map(int, sbox.stop)]}
    n = _start(hist, vol, "split", "local", user, params, sorted({label, *ids}), [sbox])
    blocks = _blocks(vol, [sbox])
    written = _edit_blocks(vol, hist, n, blocks, fn, label="split", progress=progress,
                           workers=workers)
    piece_boxes = _piece_boxes(pieces, sbox, ids)
    if _covers_scale(vol) and (label in piece_boxes or sbox.contains(sid_box)):
        _note_boxes(vol, [label], {})
        _note_boxes(vol, [], {**piece_boxes, **({label: sid_box} if label in piece_boxes
                                                else {})})
    else:  # the segment may go on outside the view or the box (its box was cut to them)
        _forget_stats(vol)
    coarse = coarser_step(vol, hist, n, written, "split")
    hist.update(n, status="done", blocks=len(written), new_ids=[i for i in ids if i != label],
                seconds=round(time.perf_counter() - t0, 3), **_recorded_remesh(remesh))
    _remesh(vol, {label, *ids}, remesh)
    return EditResult(n, "split", {}, tuple(i for i in ids if i != label), len(written), (sbox,),
                      Provenance("split", "local", vol.url, {"blocks": len(written),
                                                             "pieces": len(ids), **coarse}))


def _seeds_json(keys: list[int | None], ids: list[int], seeds: Any) -> list[Any]:
    groups = list(seeds.values()) if isinstance(seeds, Mapping) else list(seeds)
    return [{"id": int(i), "asked": k, "points": [list(map(int, p)) for p in
                                                  ([g] if len(g) == 3 and
                                                   isinstance(g[0], (int, np.integer))
                                                   else g)]}
            for k, i, g in zip(keys, ids, groups, strict=True)]


def _piece_boxes(pieces: np.ndarray, sbox: Box, ids: list[int]) -> dict[int, Box]:
    out = {}
    for k, i in enumerate(ids, start=1):
        where = np.nonzero(pieces == k)
        if len(where[0]):
            lo = tuple(int(w.min()) + s for w, s in zip(where, sbox.start, strict=True))
            hi = tuple(int(w.max()) + 1 + s for w, s in zip(where, sbox.start, strict=True))
            out[i] = Box(lo, hi)
    return out
