"""Proofreading: merge, split and relabel segments of any writable segmentation, with a
history beside the volume and undo.

Every edit reads and rewrites only the blocks (the store's write grid) that hold the ids it
changes: their boxes come from DVID's label index on a ``dvid://`` labelmap, else from
:func:`~voxgate.label_stats` (computed once per volume and process, then kept up to date by
the edits made here).  Before a block is written its old voxels are saved in the volume's
history (see :mod:`.proofread_history`), so :func:`undo` restores exactly what an edit
changed, also after an edit that failed half-way (which raises ``PartialWriteError`` naming
the blocks written).

New ids come from the store's id reservation where it has one (``Capability.RESERVE_IDS``:
bossDB ``reserve``, DVID ``nextlabel``), otherwise from the largest id in the volume + 1.

On a ``dvid://`` labelmap opened read-write, merges and splits run on DVID itself
(``Capability.SERVER_PROOFREAD``: ``POST merge``, ``POST split/<label>`` with the piece as a
sparse volume, ``POST renumber`` where a split piece is to get a chosen id); their undo
restores the supervoxel -> body mapping (``POST mappings``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    PartialWriteError,
    ReadOnlyError,
    RemoteNotFoundError,
)
from ..geometry import Box, Vec, chunk_boxes
from ..parallel import run_blocks
from ..remotes.base import Capability, has_capability
from ..volume import Volume
from ._common import Prefer, Provenance, as_volume, choose_path, progress_bar
from .proofread_history import History, current_user, history_location

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EditResult", "history", "merge", "relabel", "split", "split_kernel", "undo"]

#: ids given as floats are refused: a float holds integers exactly only up to 2^53
EXACT_FLOAT_IDS = 2**53
#: the DVID log line prefix of voxgate's edit records
DVID_LOG_PREFIX = "voxgate-proofread "


@dataclass(frozen=True)
class EditResult:
    """What one edit did: its number in the history, the ids it changed (old -> new, for a
    split the new ids of its pieces), the blocks it rewrote and which path ran."""

    n: int
    operation: str
    mapping: dict[int, int] = field(default_factory=dict)
    new_ids: tuple[int, ...] = ()
    blocks: int = 0
    boxes: tuple[Box, ...] = ()
    provenance: Provenance | None = None


# -- input checks ---------------------------------------------------------------------------------
def _label(v: Any, dtype: np.dtype[Any], what: str = "id") -> int:
    if isinstance(v, (float, np.floating)):
        raise InvalidRequestError(
            f"{what} {v!r} is a float; segment ids are integers up to 2^64-1 and a float holds "
            f"them exactly only up to 2^53 ({EXACT_FLOAT_IDS}): pass an int")
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidRequestError(f"{what} must be an integer, got {v!r}")
    v = int(v)
    top = int(np.iinfo(dtype).max)
    if v <= 0:
        raise InvalidRequestError(f"{what} {v} is not a segment id: 0 is background, ids are "
                                  f"1..{top}")
    if v > top:
        raise InvalidRequestError(f"{what} {v} does not fit this volume's {dtype.name} labels "
                                  f"(1..{top})")
    return v


def _open(seg: Any) -> Volume:
    if isinstance(seg, np.ndarray):
        raise InvalidRequestError(
            "proofreading edits a stored volume (a Volume or URL); for a numpy array, copy it "
            "into one first (voxgate.copy(arr, 'mem://name')) or use numpy directly")
    vol = as_volume(seg, mode="r+")
    if vol.remote.scheme == "dvid" and getattr(vol.remote, "locked", False):
        raise ReadOnlyError(
            f"{vol.url}: node {vol.meta.extra.get('dvid', {}).get('node')} is committed "
            "(locked) and DVID refuses edits to it; branch it (DVIDRepo.branch) and proofread "
            "the branch's node opened with mode='r+'")
    if vol.mode != "r+" or not has_capability(vol.remote, Capability.WRITE):
        raise ReadOnlyError(
            f"{vol.url} is opened read-only and proofreading writes to it; open it with "
            "voxgate.open(url, mode='r+') (a read-only token or file cannot be edited)")
    if vol.kind != "segmentation":
        raise InvalidRequestError(
            f"{vol.url} is an image (kind='image'); merge, split and relabel edit a "
            "segmentation's labels")
    if vol.dtype.kind not in "ui" or vol.ndim != 3 or any(a.step != 1 for a in vol._axes):
        raise InvalidRequestError(
            f"proofreading needs a 3-D integer segmentation view with step 1, got "
            f"{vol.dtype.name} with shape {vol.shape}")
    return vol


def _hist(vol: Volume, history_dir: Any) -> History:
    return History(history_location(_stable_url(vol), vol.scale, history_dir))


def _stable_url(vol: Volume) -> str:
    return str(vol.remote.spec()["url"])


# -- where ids are --------------------------------------------------------------------------------
_stats_lock = threading.Lock()
#: (volume URL, scale) -> {"boxes": {id: Box}, "max": largest id}: the label_stats of a volume,
#: computed once per process and kept up to date by the edits made here
_STATS: dict[tuple[str, int], dict[str, Any]] = {}


def _dvid_labels(vol: Volume) -> Any:
    return getattr(vol.remote, "labels", None) if has_capability(
        vol.remote, Capability.SERVER_PROOFREAD) else None


def _stats(vol: Volume) -> dict[str, Any]:
    key = (_stable_url(vol), vol.scale)
    with _stats_lock:
        got = _STATS.get(key)
    if got is not None:
        return got
    from .label_stats import label_stats

    df = label_stats(vol.at_scale(vol.scale))  # the whole volume: the cache serves any view
    boxes = {int(r.id): Box((int(r.z0), int(r.y0), int(r.x0)), (int(r.z1), int(r.y1), int(r.x1)))
             for r in df.itertuples()}
    out = {"boxes": boxes, "max": max(boxes, default=0)}
    with _stats_lock:
        _STATS[key] = out
    return out


def _forget_stats(vol: Volume) -> None:
    with _stats_lock:
        _STATS.pop((_stable_url(vol), vol.scale), None)


def _boxes(vol: Volume, ids: Iterable[int]) -> dict[int, Box]:
    """The box of each id inside the view; unknown ids are refused."""
    ids = list(ids)
    region = vol.bounds
    out: dict[int, Box] = {}
    labels = _dvid_labels(vol)
    if labels is not None and vol.scale == 0:
        sizes = labels.sizes(ids)
        for i, s in zip(ids, sizes.tolist(), strict=True):
            if s:
                out[i] = labels.sparsevol_size(i).box.intersect(region)
    elif has_capability(vol.remote, Capability.SERVER_BOUNDING_BOXES):
        out = _server_boxes(vol, ids)
        out = {i: b.intersect(region) for i, b in out.items()}
    else:
        boxes = _stats(vol)["boxes"]
        for i in ids:
            if i in boxes:
                out[i] = boxes[i].intersect(region)
    missing = [i for i in ids if i not in out or out[i].is_empty()]
    if missing:
        raise InvalidRequestError(
            f"id(s) {missing} have no voxels in {vol.url} inside {region!r}; merge, split and "
            "relabel edit existing segments (voxgate stats URL lists them)")
    return out


def _server_boxes(vol: Volume, ids: Iterable[int]) -> dict[int, Box]:
    """Tight boxes of ``ids`` asked of a store that knows them (bossDB ``boundingbox``), one
    request per id; ids the store does not know are left out."""
    remote: Any = vol.remote
    out = {}
    for i in ids:
        try:
            out[i] = remote.bounding_box(i, vol.scale, tight=True)
        except RemoteNotFoundError:
            continue
    return out


def _new_ids(vol: Volume, count: int) -> list[int]:
    """``count`` unused ids: reserved by the store where it can, else max + 1 onwards."""
    if count == 0:
        return []
    if has_capability(vol.remote, Capability.RESERVE_IDS):
        first = int(vol.remote.reserve_ids(count))  # type: ignore[attr-defined]
    else:
        st = _stats(vol)
        with _stats_lock:
            first = int(st["max"]) + 1
            st["max"] = first + count - 1
    top = int(np.iinfo(vol.dtype).max)
    if first + count - 1 > top:
        raise InvalidRequestError(f"{vol.url} has no free ids left in {vol.dtype.name}")
    return list(range(first, first + count))


def _note_boxes(vol: Volume, gone: Iterable[int], boxes: Mapping[int, Box]) -> None:
    """Keep the cached label boxes right after an edit: ``gone`` ids vanished, ``boxes``
    (new or grown ids) join their boxes."""
    key = (_stable_url(vol), vol.scale)
    with _stats_lock:
        st = _STATS.get(key)
        if st is None:
            return
        for i in gone:
            st["boxes"].pop(i, None)
        for i, b in boxes.items():
            old = st["boxes"].get(i)
            st["boxes"][i] = b if old is None else _union([old, b])
            st["max"] = max(st["max"], i)


def _union(boxes: Sequence[Box]) -> Box:
    return Box(tuple(min(b.start[d] for b in boxes) for d in range(3)),
               tuple(max(b.stop[d] for b in boxes) for d in range(3)))


def _blocks(vol: Volume, boxes: Iterable[Box]) -> list[Box]:
    """The write-grid blocks (clipped to the view) that touch any of ``boxes``."""
    grid = vol.remote.write_grid(vol.scale)
    bounds = vol.scale_meta.bounds
    region = vol.bounds
    seen: dict[Vec, Box] = {}
    for b in boxes:
        for g, cell in chunk_boxes(b, grid, bounds):
            if g not in seen:
                c = cell.intersect(region)
                if not c.is_empty():
                    seen[g] = c
    return [seen[g] for g in sorted(seen)]


# -- the block-wise edit --------------------------------------------------------------------------
def _edit_blocks(vol: Volume, hist: History, n: int, blocks: list[Box],
                 fn: Callable[[np.ndarray, Box], np.ndarray | None], *, label: str,
                 progress: bool, workers: int | None) -> list[Box]:
    """Rewrite ``blocks`` with ``fn(old voxels, box)`` (None: unchanged); each block's old
    voxels are saved to the history before it is written.  Returns the blocks written."""
    remote, scale = vol.remote, vol.scale
    written: list[Box] = []
    lock = threading.Lock()

    def one(b: Box) -> bool:
        old = remote.read(b, scale)
        new = fn(old, b)
        if new is None or np.array_equal(new, old):
            return False
        hist.save_block(n, b, old)
        remote.write(b, np.ascontiguousarray(new, dtype=vol.dtype), scale)
        with lock:
            written.append(b)
        return True

    with progress_bar(progress, len(blocks), label) as bar:
        res = run_blocks(one, blocks, workers=workers, on_done=lambda _b, _o: bar.advance())
    if res.failed:
        _forget_stats(vol)  # the ids' boxes may have moved part-way: find them again
        failed = [b for b, _ in res.failed]
        exc = res.failed[0][1]
        if not written:  # the store is as it was: the store's own error says why
            hist.update(n, status="failed", blocks=0)
            exc.add_note(f"{label} of {vol.url}: nothing was written; the volume is unchanged")
            raise exc
        hist.update(n, status="partial", blocks=len(written))
        raise PartialWriteError(
            f"{label} of {vol.url} failed at {failed[0]!r} ({exc}); {len(written)} block(s) were "
            f"written: {[tuple(map(tuple, (b.start, b.stop))) for b in written[:10]]}"
            f"{' ...' if len(written) > 10 else ''}. Their old voxels are saved in the history "
            f"(edit {n}): voxgate.undo restores them", written=written, failed=failed) from exc
    return written


def _start(hist: History, vol: Volume, operation: str, path: str, user: str | None,
           params: dict[str, Any], ids: Iterable[int], boxes: Iterable[Box]) -> int:
    return hist.start({
        "user": current_user(user), "operation": operation, "path": path,
        "url": _stable_url(vol), "scale": vol.scale, "params": params,
        "ids": [int(i) for i in ids],
        "boxes": [[*map(int, b.start), *map(int, b.stop)] for b in boxes]})


def _remap_fn(mapping: Mapping[int, int], dtype: np.dtype[Any]
              ) -> Callable[[np.ndarray, Box], np.ndarray | None]:
    keys = np.array(sorted(mapping), dtype=dtype)
    vals = np.array([mapping[int(k)] for k in keys], dtype=dtype)

    def fn(data: np.ndarray, _b: Box) -> np.ndarray | None:
        pos = np.searchsorted(keys, data)
        pos[pos >= len(keys)] = 0
        hit = keys[pos] == data
        if not hit.any():
            return None
        out = data.copy()
        out[hit] = vals[pos[hit]]
        return out

    return fn


#: what ``remesh=`` asks for: True / "meshes", "skeletons", or "both"
REMESH_CHOICES = (False, True, "meshes", "skeletons", "both")


def _remesh_kinds(remesh: Any) -> tuple[bool, bool]:
    """(meshes, skeletons) that ``remesh`` asks for."""
    if isinstance(remesh, np.bool_):
        remesh = bool(remesh)
    if remesh not in REMESH_CHOICES or (remesh is not True and remesh is not False
                                        and not isinstance(remesh, str)):
        raise InvalidRequestError(f"remesh must be True, False, 'meshes', 'skeletons' or 'both', "
                                  f"got {remesh!r}")
    return remesh in (True, "meshes", "both"), remesh in ("skeletons", "both")


def _layer_dir(vol: Volume, key: str) -> str | None:
    """A precomputed layer's ``mesh`` / ``skeletons`` directory named in its info."""
    from ..storage import read_json

    remote: Any = vol.remote
    if remote.scheme != "precomputed":
        return None
    name = read_json(remote.location, "info").get(key)
    return str(name) if name else None


def _check_remesh(vol: Volume, remesh: Any) -> None:
    """Refuse ``remesh`` before editing where there is nowhere to put the meshes / skeletons."""
    meshes, skels = _remesh_kinds(remesh)
    dvid = has_capability(vol.remote, Capability.SERVER_PROOFREAD)
    for wanted, key, kv, what, writer in (
            (meshes, "mesh", "_meshes", "meshes", "voxgate.write_meshes"),
            (skels, "skeletons", "_skeletons", "skeletons", "voxgate.formats.skeleton."
                                                            "write_skeletons")):
        if wanted and not dvid and _layer_dir(vol, key) is None:
            raise CapabilityNotSupportedError(
                f"remesh={remesh!r} writes {what} into a precomputed layer's {what} directory "
                f"(the {key!r} key of its info) or a DVID labelmap's <name>{kv} keyvalue; "
                f"{vol.url} has neither (write {what} with {writer} first, or edit without "
                "remesh)")


def _remesh(vol: Volume, ids: Iterable[int], remesh: Any, boxes: Iterable[Box] = ()) -> int:
    """Mesh (and / or skeletonize) ``ids`` again over their boxes and store the results where
    the layer keeps them: a precomputed layer's mesh / skeleton directory (format and layout
    kept), or a DVID labelmap's ``<name>_meshes`` / ``<name>_skeletons`` keyvalue.  Returns how
    many meshes and skeletons were written."""
    meshes_wanted, skels_wanted = _remesh_kinds(remesh)
    if not (meshes_wanted or skels_wanted):
        return 0
    wanted = sorted({int(i) for i in ids})
    full = vol.at_scale(vol.scale)
    region = full.bounds
    bl = list(boxes)
    if bl:  # one voxel more on every side: the surface closes where a segment meets the box
        u = _union(bl)
        region = Box(tuple(a - 1 for a in u.start), tuple(b + 1 for b in u.stop)).intersect(
            full.bounds)
    lo = region.start - full.bounds.start
    hi = region.stop - full.bounds.start
    view = full[lo.z:hi.z, lo.y:hi.y, lo.x:hi.x]
    remote: Any = vol.remote
    written = 0
    if meshes_wanted:
        from .mesh import mesh as mesh_service

        meshes = dict(mesh_service(view, ids=wanted, prefer="local"))
        mesh_dir = _layer_dir(vol, "mesh")
        if mesh_dir is not None:
            from ..formats.mesh import write_meshes
            from ..storage import join, read_json

            dinfo = read_json(join(remote.location, mesh_dir), "info")
            legacy = dinfo.get("@type") == "neuroglancer_legacy_mesh"
            opts: dict[str, Any] = {"format": "legacy" if legacy else "multires",
                                    "mesh_dir": mesh_dir}
            if not legacy:
                opts["sharded"] = bool(dinfo.get("sharding"))
                opts["vertex_quantization_bits"] = int(dinfo.get("vertex_quantization_bits", 16))
            write_meshes(remote.spec()["url"], meshes, **opts)
        else:
            for i, m in meshes.items():
                remote.put_mesh(i, m)
        written += len(meshes)
    if skels_wanted:
        from .skeletonize import skeletonize

        skels = dict(skeletonize(view, ids=wanted, prefer="local", dust_threshold=0))
        skel_dir = _layer_dir(vol, "skeletons")
        if skel_dir is not None:
            from ..formats.skeleton import write_skeletons
            from ..storage import join, read_json

            sinfo = read_json(join(remote.location, skel_dir), "info")
            write_skeletons(remote.spec()["url"], skels, skel_dir=skel_dir,
                            sharded=bool(sinfo.get("sharding")))
        else:
            for i, sk in skels.items():
                remote.put_skeleton(i, sk)
        written += len(skels)
    return written


# -- merge / relabel ------------------------------------------------------------------------------
def relabel(seg: Any, mapping: Mapping[Any, Any], *, user: str | None = None,
            progress: bool = False, workers: int | None = None, history_dir: Any = None,
            remesh: Any = False, _operation: str = "relabel",
            _params: dict[str, Any] | None = None) -> EditResult:
    """Give every voxel of each id in ``mapping`` its new id (``{old: new}``), in the blocks
    that hold the old ids only.  A new id may be an existing one (that is a merge)."""
    t0 = time.perf_counter()
    vol = _open(seg)
    _check_remesh(vol, remesh)
    if not isinstance(mapping, Mapping) or not mapping:
        raise InvalidRequestError(f"mapping must be a non-empty {{old id: new id}} dict, got "
                                  f"{mapping!r}")
    m = {_label(k, vol.dtype, "old id"): _label(v, vol.dtype, "new id")
         for k, v in mapping.items()}
    m = {k: v for k, v in m.items() if k != v}
    if not m:
        raise InvalidRequestError("the mapping changes nothing (every id maps to itself)")
    boxes = _boxes(vol, m)
    hist = _hist(vol, history_dir)
    params = _params if _params is not None else {"mapping": {str(k): v for k, v in m.items()}}
    n = _start(hist, vol, _operation, "local", user, params, sorted(set(m) | set(m.values())),
               boxes.values())
    blocks = _blocks(vol, boxes.values())
    written = _edit_blocks(vol, hist, n, blocks, _remap_fn(m, vol.dtype), label=_operation,
                           progress=progress, workers=workers)
    grown: dict[int, Box] = {}
    for k, v in m.items():
        grown[v] = _union([boxes[k]] + ([grown[v]] if v in grown else []))
    _note_boxes(vol, m, grown)
    hist.update(n, status="done", blocks=len(written), seconds=round(time.perf_counter() - t0, 3))
    _remesh(vol, set(m.values()), remesh, boxes.values())
    return EditResult(n, _operation, m, (), len(written), tuple(boxes.values()),
                      Provenance(_operation, "local", vol.url,
                                 {"blocks": len(written), "blocks_considered": len(blocks)}))


def merge(seg: Any, ids: Iterable[Any], into: Any = None, *, user: str | None = None,
          prefer: Prefer = "auto", progress: bool = False, workers: int | None = None,
          history_dir: Any = None, remesh: Any = False) -> EditResult:
    """Every voxel of ``ids`` gets ``into`` (default: the smallest of ``ids``).

    On a ``dvid://`` labelmap opened read-write DVID merges the bodies itself (``into`` must
    then be one of ``ids``); elsewhere the blocks holding ``ids`` are rewritten.
    """
    vol = _open(seg)
    _check_remesh(vol, remesh)
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise InvalidRequestError(f"ids must be a list of segment ids, got {ids!r}")
    labs = sorted({_label(i, vol.dtype) for i in ids})
    target = labs[0] if into is None else _label(into, vol.dtype, "into")
    if len(set(labs) | {target}) < 2:
        raise InvalidRequestError(f"a merge needs at least two ids, got {labs} into {target}")
    path = choose_path(prefer, vol.remote, Capability.SERVER_PROOFREAD, "merge")
    if path == "server" and target not in labs:
        if prefer == "server":
            raise CapabilityNotSupportedError(
                f"DVID merges into one of the merged bodies; {target} is not among {labs} "
                "(use prefer='local', or merge into one of them)")
        path = "local"
    if path == "server":
        return _dvid_merge(vol, labs, target, user, history_dir, remesh)
    return relabel(vol, {i: target for i in labs if i != target}, user=user, progress=progress,
                   workers=workers, history_dir=history_dir, remesh=remesh,
                   _operation="merge", _params={"into": target, "ids": labs})


# -- split ----------------------------------------------------------------------------------------
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
    for key, pts in zip(keys, groups, strict=True):
        pts = [pts] if len(pts) == 3 and all(isinstance(v, (int, np.integer)) for v in pts) \
            else pts
        if not pts:
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
        sbox = (box if isinstance(box, Box) else Box(*box)).intersect(vol.bounds)
        if sbox.is_empty():
            raise InvalidRequestError(f"box {box!r} lies outside {vol.url} ({vol.bounds!r})")
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
    new = _new_ids(vol, sum(1 for kk in keys if kk is None))
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
    _note_boxes(vol, [label], {})
    _note_boxes(vol, [], {**piece_boxes, **({label: sid_box} if label in piece_boxes else {})})
    hist.update(n, status="done", blocks=len(written), new_ids=[i for i in ids if i != label],
                seconds=round(time.perf_counter() - t0, 3))
    _remesh(vol, ids, remesh, [sbox])
    return EditResult(n, "split", {}, tuple(i for i in ids if i != label), len(written), (sbox,),
                      Provenance("split", "local", vol.url, {"blocks": len(written),
                                                             "pieces": len(ids)}))


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


# -- DVID's server path ---------------------------------------------------------------------------
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
    hist.update(n, status="done", mutation=mutation, seconds=round(time.perf_counter() - t0, 3))
    _dvid_log(vol, hist.entry(n))
    _remesh(vol, [target], remesh, boxes.values())
    return EditResult(n, "merge", {o: target for o in others}, (), 0, tuple(boxes.values()),
                      Provenance("merge", "server", vol.url, {"mutation": mutation}))


def _dvid_split(vol: Volume, label: int, keys: list[int | None], pieces: np.ndarray, sbox: Box,
                seeded: bool, user: str | None, history_dir: Any, remesh: Any,
                t0: float) -> EditResult:
    from ..formats.dvid_block import encode_rles, rles_from_mask

    labels = _dvid_labels(vol)
    hist = _hist(vol, history_dir)
    n = _start(hist, vol, "split", "server", user,
               {"id": label, "seeded": seeded, "box": [*map(int, sbox.start),
                                                       *map(int, sbox.stop)]},
               [label], [sbox])
    made: list[int] = []
    hist.update(n, new_bodies=made)
    keep = keys.index(label) + 1 if label in keys else None
    last = 0
    order = [k for k in range(1, len(keys) + 1) if k != keep]
    if keep is None:  # every piece gets a new id: the last one by renumbering what remains
        last = order.pop()
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
                seconds=round(time.perf_counter() - t0, 3))
    _dvid_log(vol, hist.entry(n))
    _remesh(vol, [label, *made], remesh, [sbox])
    return EditResult(n, "split", {}, tuple(made), 0, (sbox,),
                      Provenance("split", "server", vol.url, {"mutations": mutations}))


def _dvid_undo(vol: Volume, e: dict[str, Any]) -> None:
    labels = _dvid_labels(vol)
    if labels is None:
        raise CapabilityNotSupportedError(
            f"edit {e['n']} ran on DVID's server; undo it on the same dvid:// labelmap opened "
            "with mode='r+'")
    ops: list[tuple[int, list[int]]] = []
    if e["operation"] == "merge":
        ops = [(int(b), svs) for b, svs in e["params"]["undo_mappings"].items()]
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


def _restore(vol: Volume, data: dict[Box, np.ndarray], label: str, progress: bool,
             workers: int | None) -> Any:
    with progress_bar(progress, len(data), label) as bar:
        return run_blocks(lambda b: vol.remote.write(b, data[b], vol.scale), list(data),
                          workers=workers, on_done=lambda _b, _o: bar.advance())


# -- history and undo -----------------------------------------------------------------------------
def history(seg: Any, *, history_dir: Any = None) -> pd.DataFrame:
    """The edits of a volume, one row each: n, time, user, operation, path (local / server),
    params, ids, boxes, blocks, status (started, done, partial, undone) and for undo rows the
    edit they undid."""
    import pandas as pd

    vol = as_volume(seg) if not isinstance(seg, np.ndarray) else None
    if vol is None:
        raise InvalidRequestError("a numpy array has no history; give the volume's URL")
    hist = _hist(vol, history_dir)
    entries = hist.entries()
    if not entries and vol.remote.scheme == "dvid":
        entries = _log_entries(vol)
    cols = ["n", "time", "user", "operation", "path", "params", "ids", "boxes", "blocks",
            "status", "undoes", "seconds"]
    return pd.DataFrame([{c: e.get(c) for c in cols} for e in entries], columns=cols)


def undo(seg: Any, n: int = 1, *, user: str | None = None, progress: bool = False,
         workers: int | None = None, history_dir: Any = None) -> list[EditResult]:
    """Undo the last ``n`` edits not yet undone, newest first: the voxels each changed are
    written back as they were (a DVID server edit restores the supervoxel -> body mapping)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidRequestError(f"n must be a positive integer, got {n!r}")
    vol = _open(seg)
    hist = _hist(vol, history_dir)
    _adopt_log(vol, hist)
    todo = [e for e in hist.entries()
            if e.get("operation") != "undo" and e.get("status") in ("done", "partial",
                                                                     "started")]
    if len(todo) < n:
        raise InvalidRequestError(
            f"{vol.url} has {len(todo)} edit(s) left to undo, not {n} (voxgate history URL)")
    out = []
    for e in reversed(todo[-n:]):
        t0 = time.perf_counter()
        k = int(e["n"])
        u = hist.start({"user": current_user(user), "operation": "undo", "undoes": k,
                        "path": e.get("path", "local"), "url": _stable_url(vol),
                        "scale": vol.scale, "params": {}, "ids": e.get("ids", []),
                        "boxes": e.get("boxes", [])})
        if e.get("path") == "server":
            _dvid_undo(vol, e)
            written = 0
        else:
            saved = hist.blocks(k)
            if saved:
                res = _restore(vol, dict(saved), f"undo {k}", progress, workers)
                if res.failed:
                    raise PartialWriteError(
                        f"undo of edit {k} failed at {res.failed[0][0]!r} "
                        f"({res.failed[0][1]}); run undo again to finish it",
                        written=res.done, failed=[b for b, _ in res.failed])
            written = len(saved)
        hist.update(k, status="undone")
        hist.update(u, status="done", blocks=written, seconds=round(time.perf_counter() - t0, 3))
        if e.get("path") == "server":
            _dvid_log(vol, {"n": k, "status": "undone"})
            _dvid_log(vol, hist.entry(u))
        out.append(EditResult(u, "undo", {}, (), written, (),
                              Provenance("undo", e.get("path", "local"), vol.url, {"undid": k})))
    _forget_stats(vol)
    return out
