"""skeletonize: TEASAR skeletons of segments (kimimaro), or the ones the store already has.

Vertices are float32 nanometres (x, y, z) in the dataset's world frame at voxel centres:
(voxel offset + index + 0.5) * voxel size, the frame :func:`voxgate.mesh` uses, so a skeleton
sits inside its mesh.

A region up to :data:`WHOLE_BYTES` of labels is skeletonized in one piece.  A larger one (or
any, with ``block=``) is skeletonized block by block, the way Igneous' SkeletonTask and
SkeletonMergeTask do it: each block is read with one extra voxel on its upper faces and
skeletonized by kimimaro with ``fix_borders=True``, which ends every skeleton that touches a
block face at the centre of its cross-section there.  Neighbouring blocks read the same face
plane, so both place that end point on the same voxel, and the pieces of a segment are
joined by merging the vertices they share.  Then, per segment:

- dust is decided on the joined result, as the whole-volume call decides it on whole
  connected components: each piece carries the voxel count of the connected component it
  was traced in (counted in its block without the overlap), and a joined component with
  ``dust_threshold`` voxels or fewer is dropped;
- loops that joining can close on block faces are cut (a minimum spanning forest by edge
  length: each loop loses its longest edge), so every skeleton is a forest as kimimaro's are;
- short spurs that block faces cause are pruned (:func:`_prune_face_ticks`).

Memory is a few blocks per worker, never the whole volume.  Blocks run (through
:mod:`voxgate.blockwise`) one after another, on ``workers`` spawned processes (kimimaro holds
the GIL, so threads would not help), or on a ``dask.distributed`` Client.
"""

from __future__ import annotations

import functools
import math
import numbers
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

import numpy as np

from ..absence import StoredGroups, background_groups, holds_nothing, read_stored
from ..blockwise import (
    check_block,
    check_client,
    cluster_spec,
    count_blocks,
    run_blocks,
    worker_remote,
)
from ..errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    RemoteNotFoundError,
    refuses_unknown_keywords,
)
from ..formats.skeleton import Skeleton
from ..geometry import Box, Vec, grow_block, whole, whole_at_least
from ..meta import check_ids
from ..remotes.base import Capability
from ._common import (
    Prefer,
    Provenance,
    as_volume,
    block_boxes,
    choose_path,
    progress_bar,
    refuse_negative_labels,
    whole_segment_path,
)

__all__ = ["BLOCK_BYTES", "WHOLE_BYTES", "SkeletonResult", "skeletonize", "skeletonize_kernel"]

#: a region up to this many bytes of labels is skeletonized in one piece (kimimaro needs about
#: four times that in memory)
WHOLE_BYTES = 128 * 2**20
#: block-wise, a block holds about this many bytes of labels (unless ``block=`` says otherwise)
BLOCK_BYTES = 32 * 2**20
_ONE = Vec(1, 1, 1)
#: kimimaro's TEASAR defaults for the two that decide how far a path invalidates its
#: surroundings (``scale * radius + const`` nm); teasar_params overrides them
_TEASAR_DEFAULTS = {"scale": 1.5, "const": 300.0}
#: the TEASAR parameters kimimaro passes on to its tracer (``teasar_params`` keys)
_TEASAR_KEYS = ("scale", "const", "pdrf_scale", "pdrf_exponent", "soma_detection_threshold",
               "soma_acceptance_threshold", "soma_invalidation_scale",
               "soma_invalidation_const", "max_paths")


def _check_teasar(params: object) -> dict[str, Any] | None:
    """``teasar_params`` as a dict of known keys and real numbers (max_paths: None too)."""
    if params is None:
        return None
    if not isinstance(params, Mapping):
        raise InvalidRequestError(
            f"teasar_params must be a dict of TEASAR parameters ({', '.join(_TEASAR_KEYS)}), "
            f"got {params!r}")
    unknown = sorted(str(k) for k in params if k not in _TEASAR_KEYS)
    if unknown:
        raise InvalidRequestError(
            f"teasar_params has unknown key(s) {unknown}; kimimaro takes {', '.join(_TEASAR_KEYS)}")
    for k, v in params.items():
        if k == "max_paths" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise InvalidRequestError(f"teasar_params[{k!r}] must be a finite number, got {v!r}")
    return dict(params)


#: one piece of a segment's skeleton from one block: voxel (z, y, x) dataset coordinates
#: int64 (n, 3), edges uint32 (m, 2), radius float32 (n,; -1 marks a weight-only vertex,
#: see :func:`_singletons`), SWC types uint8 (n,), and the core voxel counts of the
#: connected components, each on one vertex of its piece (n,)
_Piece = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class SkeletonResult(dict[int, Skeleton]):
    """``{id: Skeleton}`` plus ``provenance``."""

    provenance: Provenance


def _fix_borders(shape: Sequence[int]) -> bool:
    """kimimaro's ``fix_borders``, except for an array one voxel thick on two axes or more (a
    line, or a single voxel: a volume's last block in a corner), on which kimimaro 4 raises
    IndexError.  Such an array needs no border targets: every path in it runs voxel by voxel
    along the line, through the voxel that every face plane holds."""
    return sum(1 for n in shape if n > 1) >= 2


def skeletonize_kernel(labels: np.ndarray, voxel_size: Any, origin: Any,
                       ids: list[int] | None = None, *, dust_threshold: int = 100,
                       teasar_params: Mapping[str, Any] | None = None,
                       parallel: int = 1, progress: bool = False) -> dict[int, Skeleton]:
    """kimimaro on a C-order (z, y, x) array; ``origin`` and ``voxel_size`` are (z, y, x)."""
    import kimimaro

    refuse_negative_labels(labels, "skeletonize")
    vz, vy, vx = (float(v) for v in voxel_size)
    kwargs: dict[str, Any] = {
        "anisotropy": (vx, vy, vz), "dust_threshold": dust_threshold, "progress": progress,
        "parallel": parallel, "fix_branching": True, "fix_borders": _fix_borders(labels.shape),
    }
    if teasar_params is not None:
        kwargs["teasar_params"] = dict(teasar_params)
    if ids is not None:
        kwargs["object_ids"] = list(ids)
    skels = kimimaro.skeletonize(np.ascontiguousarray(labels).T, **kwargs)
    shift = np.array([(origin[2] + 0.5) * vx, (origin[1] + 0.5) * vy, (origin[0] + 0.5) * vz],
                     dtype=np.float32)
    out: dict[int, Skeleton] = {}
    for i, sk in skels.items():
        s = Skeleton.from_osteoid(sk, id=int(i))
        s.vertices = (s.vertices + shift).astype(np.float32)
        out[int(i)] = s
    return out


@refuses_unknown_keywords
def skeletonize(
    source: Any,
    ids: Iterable[int] | None = None,
    *,
    prefer: Prefer = "auto",
    dust_threshold: int = 100,
    teasar_params: Mapping[str, Any] | None = None,
    strict: bool = False,
    parallel: int = 1,
    block: Sequence[int] | None = None,
    workers: int | None = None,
    client: Any = None,
    progress: bool = False,
    voxel_size: Any = None,
) -> SkeletonResult:
    """Skeletons of ``ids`` (when None, every id with a connected component of more than
    ``dust_threshold`` voxels, and of more than one: kimimaro traces no single voxel).

    ``prefer``: "server" reads skeletons the store holds (precomputed skeleton directory,
    DVID ``_skeletons`` keyvalue; with ids=None, every stored one), "local" runs kimimaro,
    "auto" the first when offered.  Missing ids give empty skeletons, or RemoteNotFoundError
    with ``strict``.

    Locally, a region larger than :data:`WHOLE_BYTES` of labels, or any region when ``block``
    (z, y, x voxels) is given, runs block by block (see the module docstring): one block after
    another, on ``workers`` processes, or on the ``dask.distributed`` ``client``'s workers (a
    volume they can open by URL).  ``parallel`` is kimimaro's own process count for a region
    skeletonized in one piece (``workers`` counts there too).  ``progress`` draws a bar over
    the blocks (and kimimaro's over the segments of a region done in one piece).
    """
    t0 = time.perf_counter()
    vol = as_volume(source, voxel_size=voxel_size,
                    kind="segmentation" if isinstance(source, np.ndarray) else None)
    if vol.kind != "segmentation":
        raise InvalidRequestError(f"skeletonize needs a segmentation; {vol.url} is an image")
    if vol.ndim != 3 or any(a.step != 1 for a in vol._axes):
        raise InvalidRequestError("skeletonize needs a 3-D view with step 1")
    if workers is not None:
        workers = whole_at_least(workers, 1, "workers")
    dust_threshold = whole_at_least(dust_threshold, 0, "dust_threshold (voxels)")
    teasar_params = _check_teasar(teasar_params)
    if whole(parallel) is None:
        raise InvalidRequestError(
            f"parallel must be an integer (kimimaro's processes; <= 0: one per core), got "
            f"{parallel!r}")
    base = None if block is None else _block_shape(block)
    id_list = check_ids(ids)
    path = choose_path(prefer, vol.remote, Capability.SERVER_SKELETON, "skeletonize")
    path = whole_segment_path(path, prefer, vol, "skeletons", "skeletonize")
    one_piece = base is None and vol.bounds.size * vol.dtype.itemsize <= WHOLE_BYTES
    if client is not None:  # refused, not ignored, where the region runs in one piece too
        if path == "local" and not one_piece and vol.url.startswith("mem://"):
            _blockwise_cluster_refusal(vol.url)
        check_client(client, "skeletonize")
    result = SkeletonResult()
    details: dict[str, Any] = {}
    if path == "server":
        try:
            result.update(vol.remote.skeletons(id_list))  # type: ignore[attr-defined]
        except CapabilityNotSupportedError:
            # the stored ids cannot be listed (a layer over HTTP, with ids=None): "auto"
            # skeletonizes the labels instead, as it does wherever no skeletons are stored
            if prefer == "server" or id_list is not None:
                raise
            path = "local"
    if path == "server":
        pass
    elif one_piece:
        if isinstance(source, np.ndarray):
            labels = source
        else:  # (of a store that tells which chunks it holds, only those are read)
            stored = background_groups(vol.remote, vol.bounds, vol.scale, vol.chunks)
            labels = vol.read() if stored is None else read_stored(
                vol.remote, vol.bounds, vol.scale, stored)
        result.update(skeletonize_kernel(labels, vol.scale_meta.voxel_size.zyx(),
                                         tuple(vol.bounds.start), id_list,
                                         dust_threshold=dust_threshold,
                                         teasar_params=teasar_params,
                                         parallel=_processes(parallel, workers),
                                         progress=progress))
        details = {"blocks": 1}
    else:
        if base is None:
            base = _default_block(vol.chunks, vol.dtype.itemsize, vol.bounds.shape)
        result.update(_blockwise(vol, base, id_list, dust_threshold, teasar_params, workers,
                                 client, progress, details))
    missing = [] if id_list is None else [i for i in id_list if i not in result]
    if missing and strict:
        raise RemoteNotFoundError(f"no skeleton for ids {missing[:10]}")
    for i in missing:
        result[i] = Skeleton(np.zeros((0, 3), np.float32), np.zeros((0, 2), np.uint32), id=i)
    result.provenance = Provenance("skeletonize", path, vol.url, {
        **details, "ids": len(result), "seconds": round(time.perf_counter() - t0, 3)})
    return result


def _processes(parallel: int, workers: int | None) -> int:
    """kimimaro's ``parallel`` for a region done in one piece: ``parallel`` <= 0 (one process
    per core) as it is, else the larger of it and ``workers``."""
    return int(parallel) if parallel <= 0 else max(int(parallel), workers or 1)


def _block_shape(block: Sequence[int]) -> Vec:
    base = check_block(block)
    assert base is not None
    return base


def _default_block(chunks: Vec, itemsize: int, shape: Vec) -> Vec:
    """Chunks grown toward BLOCK_BYTES, or halved (longest axis first) when one chunk is more
    than that (a numpy array is one chunk)."""
    grid = [min(c, s) for c, s in zip(chunks, shape, strict=True)]
    while int(np.prod(grid)) * itemsize > BLOCK_BYTES and max(grid) > 1:
        ax = int(np.argmax(grid))
        grid[ax] = -(-grid[ax] // 2)
    return grow_block(Vec(*grid), itemsize, shape, BLOCK_BYTES)


# -- block-wise -----------------------------------------------------------------------------------
def _blockwise(vol: Any, base: Vec, ids: list[int] | None, dust_threshold: int,
               teasar_params: Mapping[str, Any] | None, workers: int | None, client: Any,
               progress: bool, details: dict[str, Any]) -> dict[int, Skeleton]:
    region: Box = vol.bounds
    vs = tuple(float(v) for v in vol.scale_meta.voxel_size.zyx())
    teasar = None if teasar_params is None else dict(teasar_params)
    # the blocks are walked as they are sent, never listed (that would grow with the volume)
    n_blocks = count_blocks(region, base)
    pieces: dict[int, list[tuple[int, _Piece]]] = {}

    def collect(at: int, found: dict[int, _Piece]) -> None:
        for i, piece in found.items():
            pieces.setdefault(i, []).append((at, piece))

    portable = not vol.url.startswith("mem://")
    scheduler = "distributed" if client is not None else (
        "processes" if workers is not None and workers > 1 and n_blocks > 1 else "serial")
    source: Any = vol.remote
    prepare = None
    if client is not None:
        if not portable:
            _blockwise_cluster_refusal(vol.url)
        source = cluster_spec(vol.remote, "r")
    elif scheduler == "processes":
        if portable:  # each process reopens the store and reads its own blocks
            source = cluster_spec(vol.remote, "r")
        else:  # an in-memory volume: its blocks are read here and sent over
            source = None

            def prepare(job: tuple[int, Box, Box]) -> tuple[int, Box, Box, np.ndarray]:
                return (*job, vol.remote.read(job[1], vol.scale))

    itemsize = vol.dtype.itemsize
    # blocks of absent chunks reading as 0 are background only: no piece, not read
    stored = background_groups(vol.remote, region, vol.scale, base, region.start)
    run_blocks(functools.partial(_block_job, source, vol.scale, ids=ids, voxel_size=vs,
                                 teasar_params=teasar, run=uuid.uuid4().hex, stored=stored),
               ((at, Box(b.start, b.stop + _ONE).intersect(region), b)
                for at, b in enumerate(block_boxes(region, base))), name="skeletonize",
               client=client, workers=workers if scheduler == "processes" else 1,
               processes=scheduler == "processes", progress=progress, prepare=prepare,
               total=n_blocks, total_bytes=region.size * itemsize,
               on_done=lambda job, found: collect(job[0], found))  # type: ignore[arg-type]
    faces = tuple(np.arange(r0 + b, r1, b, dtype=np.int64)
                  for r0, r1, b in zip(region.start, region.stop, base, strict=True))
    params = {**_TEASAR_DEFAULTS, **(teasar or {})}
    reach = (float(params["scale"]), float(params["const"]))
    out: dict[int, Skeleton] = {}
    with progress_bar(progress and len(pieces) > 1000, len(pieces), "join pieces") as bar:
        for i in sorted(pieces):
            parts = [p for _, p in sorted(pieces.pop(i), key=lambda ap: ap[0])]
            sk = _join(parts, vs, dust_threshold, i, faces, reach)
            if sk is not None:
                out[i] = sk
            bar.advance()
    details.update(blocks=n_blocks, block=tuple(base), scheduler=scheduler,
                   workers=(workers or 1) if client is None else None)
    return out


def _blockwise_cluster_refusal(url: str) -> NoReturn:
    raise InvalidRequestError(
        f"{url} lives in this process only; a dask.distributed cluster needs "
        "a volume its workers can open by URL")


def _block_job(source: Any, scale: int, job: tuple[Any, ...], ids: list[int] | None,
               voxel_size: Sequence[float], teasar_params: Mapping[str, Any] | None,
               run: str = "", stored: StoredGroups | None = None) -> dict[int, _Piece]:
    """One block's pieces.  ``job``: (number, ext, core[, labels]); the labels of ``ext`` (the
    block ``core`` plus one voxel on its upper faces) are given, or read from ``source``: a
    Remote, or its spec reopened here, in a worker process, once per ``run``
    (:func:`blockwise.worker_remote`: a store recreated since an earlier run is opened anew)."""
    _, ext, core, *given = job
    if holds_nothing(stored, ext):
        return {}  # background only (``stored``: where the store holds chunks)
    if given:
        labels = given[0]
    else:
        remote = worker_remote(source, run) if isinstance(source, str) else source
        labels = read_stored(remote, ext, scale, stored)  # (what is stored of it)
    return block_pieces(labels, tuple(ext.start), core, voxel_size, ids,
                        teasar_params=teasar_params)


def block_pieces(labels: np.ndarray, origin: Sequence[int], core: Box,
                 voxel_size: Sequence[float], ids: list[int] | None = None, *,
                 teasar_params: Mapping[str, Any] | None = None) -> dict[int, _Piece]:
    """kimimaro on one block (``labels`` C-order (z, y, x), its first voxel at ``origin``),
    every connected component however small, with ``fix_borders``; each skeleton as a
    :data:`_Piece` in dataset voxel coordinates.  ``core`` is the block without its overlap:
    the voxel counts are taken there, so each voxel of the volume is counted once."""
    import cc3d
    import fastremap
    import kimimaro

    if ids is not None:
        labels = fastremap.mask_except(np.ascontiguousarray(labels), list(ids), in_place=False)
    labels = np.ascontiguousarray(labels)
    vz, vy, vx = (float(v) for v in voxel_size)
    # cc3d 4.1 raises OverflowError on small or thin arrays holding ids >= 2**63 (a block at
    # the volume's edge); as int64 (a view) the ids stay distinct and 0 stays 0
    cc = cc3d.connected_components(labels.view(np.int64) if labels.dtype == np.uint64
                                   else labels, connectivity=26)
    inner = tuple(slice(c0 - o, c1 - o) for c0, c1, o in
                  zip(core.start, core.stop, origin, strict=True))
    counts = np.bincount(cc[inner].ravel(), minlength=int(cc.max()) + 1)
    kwargs: dict[str, Any] = {
        "anisotropy": (vx, vy, vz), "dust_threshold": 0, "progress": False, "parallel": 1,
        "fix_branching": True, "fix_borders": _fix_borders(labels.shape),
    }
    if teasar_params is not None:
        kwargs["teasar_params"] = dict(teasar_params)
    skels = kimimaro.skeletonize(labels.T, **kwargs)
    anis = np.array([vx, vy, vz])
    shift = np.asarray(origin, dtype=np.int64)
    out: dict[int, _Piece] = {}
    traced = np.zeros(len(counts), dtype=bool)
    for i, sk in skels.items():
        verts = np.asarray(sk.vertices, dtype=np.float64).reshape(-1, 3)
        if not len(verts):
            continue
        local = np.rint(verts / anis).astype(np.int64)[:, ::-1]  # (z, y, x) in the block
        comp = cc[local[:, 0], local[:, 1], local[:, 2]]
        traced[comp] = True
        _, first = np.unique(comp, return_index=True)
        weight = np.zeros(len(verts), np.int64)
        weight[first] = counts[comp[first]]
        n = len(verts)
        radius = getattr(sk, "radius", None)
        types = getattr(sk, "vertex_types", None)
        out[int(i)] = (
            local + shift,
            np.asarray(sk.edges, dtype=np.uint32).reshape(-1, 2),
            np.zeros(n, np.float32) if radius is None else np.asarray(radius, np.float32),
            np.zeros(n, np.uint8) if types is None else np.asarray(types, np.uint8),
            weight,
        )
    for i, piece in _singletons(labels, cc, counts, traced, core, origin).items():
        out[i] = piece if i not in out else _concat(out[i], piece)
    return out


def _singletons(labels: np.ndarray, cc: np.ndarray, counts: np.ndarray, traced: np.ndarray,
                core: Box, origin: Sequence[int]) -> dict[int, _Piece]:
    """The core voxels kimimaro leaves untraced, as weight-only vertices (no edges, radius
    -1: see :func:`_join`).

    kimimaro skeletonizes no connected component of one voxel.  A block's component that is
    one voxel on a lower face of the block is often the end of a segment that goes on in the
    blocks below, whose runs read that voxel in their overlap and (``fix_borders``) end their
    skeleton on it: the voxel is joined there, and its count must come along, or the dust
    rule would see the segment one voxel short of the whole-volume call's count."""
    full = np.bincount(cc.ravel(), minlength=len(counts))
    lone = (counts == 1) & (full == 1) & ~traced
    lone[0] = False
    if not lone.any():
        return {}
    at = np.argwhere(lone[cc])
    lo = np.asarray(core.start, dtype=np.int64) - np.asarray(origin, dtype=np.int64)
    at = at[(at == lo).any(axis=1)]  # a voxel inside the block touches nothing beyond it
    out: dict[int, _Piece] = {}
    for v in at:
        i = int(labels[tuple(v)])
        vox = (v + np.asarray(origin, dtype=np.int64))[None]
        piece = (vox, np.zeros((0, 2), np.uint32), np.full(1, -1, np.float32),
                 np.zeros(1, np.uint8), np.ones(1, np.int64))
        out[i] = piece if i not in out else _concat(out[i], piece)
    return out


def _concat(a: _Piece, b: _Piece) -> _Piece:
    """Two pieces of one segment as one (``b``'s edges renumbered after ``a``'s vertices)."""
    return (np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1] + len(a[0])]),
            np.concatenate([a[2], b[2]]), np.concatenate([a[3], b[3]]),
            np.concatenate([a[4], b[4]]))


def _join(parts: list[_Piece], voxel_size: Sequence[float], dust_threshold: int,
          ident: int, faces: tuple[np.ndarray, ...] = ((), (), ()),  # type: ignore[assignment]
          reach: tuple[float, float] = (1.5, 300.0)) -> Skeleton | None:
    """One segment's pieces joined: vertices on the same voxel merged (block faces), edges
    deduplicated, components of ``dust_threshold`` voxels or fewer dropped, loops cut, and
    the short spurs block faces cause pruned (:func:`_prune_face_ticks`)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    vox = np.concatenate([p[0] for p in parts])
    if not len(vox):
        return None
    offsets = np.cumsum([0] + [len(p[0]) for p in parts[:-1]])
    edges = np.concatenate([p[1].astype(np.int64) + o for p, o in zip(parts, offsets,
                                                                      strict=True)])
    q = vox - vox.min(axis=0)
    span = q.max(axis=0) + 1
    keys = (q[:, 0] * span[1] + q[:, 1]) * span[2] + q[:, 2]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    n = len(first)
    inverse = inverse.reshape(-1)
    e = np.sort(inverse[edges], axis=1) if len(edges) else np.zeros((0, 2), np.int64)
    e = np.unique(e[e[:, 0] != e[:, 1]], axis=0)
    radius_in = np.concatenate([p[2] for p in parts])
    radius = np.zeros(n, np.float32)
    np.maximum.at(radius, inverse, radius_in)
    types = np.zeros(n, np.uint8)
    np.maximum.at(types, inverse, np.concatenate([p[3] for p in parts]))
    weight = np.bincount(inverse, weights=np.concatenate([p[4] for p in parts]), minlength=n)
    # weight-only vertices (radius -1, :func:`_singletons`) count where they meet a traced
    # vertex on their voxel; alone they are dropped, as kimimaro drops a lone voxel
    real = np.bincount(inverse, weights=radius_in >= 0, minlength=n) > 0
    if not real.any():
        return None
    if not real.all():
        index = np.cumsum(real) - 1
        e, first, radius, types, weight = (index[e], first[real], radius[real], types[real],
                                           weight[real])
        n = len(first)
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    ncomp, comp = connected_components(graph, directed=False)
    keep = np.bincount(comp, weights=weight, minlength=ncomp)[comp] > dust_threshold
    if not keep.any():
        return None
    new_index = np.cumsum(keep) - 1
    e = new_index[e[keep[e[:, 0]]]]
    vz, vy, vx = (float(v) for v in voxel_size)
    xyz = (vox[first][keep][:, ::-1] + 0.5) * np.array([vx, vy, vz])
    kept_components = len(np.unique(comp[keep]))
    if len(e) > int(keep.sum()) - kept_components:  # more edges than a forest has: loops
        e = _spanning_forest(xyz, e)
    radius, types = radius[keep], types[keep]
    alive = _prune_face_ticks(vox[first][keep], xyz, e, radius, faces,
                              np.array([vz, vy, vx]), reach)
    if not alive.all():
        new_index = np.cumsum(alive) - 1
        e = new_index[e[alive[e[:, 0]] & alive[e[:, 1]]]]
        xyz, radius, types = xyz[alive], radius[alive], types[alive]
    return Skeleton(xyz.astype(np.float32), e.astype(np.uint32), radius, types, id=ident)


def _prune_face_ticks(vox: np.ndarray, xyz: np.ndarray, edges: np.ndarray, radius: np.ndarray,
                      faces: tuple[np.ndarray, ...], voxel_size: np.ndarray,
                      reach: tuple[float, float]) -> np.ndarray:
    """Which vertices stay once the spurs block faces cause are cut (a bool mask).

    A block sees only part of a segment near its faces, so its TEASAR run traces short side
    paths there that the whole-volume run would not: their tips lie inside the invalidation
    ball (``scale * radius + const`` nm) of the path they leave.  A terminal branch (tip to
    the first branch point) is cut when it is shorter than that ball at its branch point and
    its tip lies within the same distance of a face between blocks; terminal branches near
    the outer faces, and every branch a whole-volume run could trace, stay."""
    n = len(xyz)
    alive = np.ones(n, dtype=bool)
    if n < 3 or not len(edges) or not any(len(f) for f in faces):
        return alive
    scale, const = reach
    # per vertex, the distance in nm to the nearest face between blocks (along any axis)
    near = np.full(n, np.inf)
    for ax in range(3):
        if len(faces[ax]):
            f = faces[ax].astype(np.float64) - 0.5  # the plane between voxel f-1 and f
            at = np.clip(np.searchsorted(f, vox[:, ax]), 1, len(f)) - 1
            d = np.minimum(np.abs(vox[:, ax] - f[at]),
                           np.abs(vox[:, ax] - f[np.minimum(at + 1, len(f) - 1)]))
            near = np.minimum(near, d * voxel_size[ax])
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges.tolist():
        neighbours[a].append(b)
        neighbours[b].append(a)
    degree = np.array([len(x) for x in neighbours])

    def branch(tip: int) -> tuple[list[int], int, float]:
        """The terminal branch from ``tip``: its vertices, the vertex it ends on, its length."""
        path, prev, cur, length = [tip], -1, tip, 0.0
        while degree[cur] <= 2:
            nxt = [v for v in neighbours[cur] if v != prev and alive[v]]
            if not nxt:
                break
            length += float(np.linalg.norm(xyz[nxt[0]] - xyz[cur]))
            prev, cur = cur, nxt[0]
            if degree[cur] <= 2:
                path.append(cur)
        return path, cur, length

    changed = True
    while changed:
        changed = False
        tips = np.flatnonzero((degree == 1) & alive & (near < np.inf)).tolist()
        # shortest first, as kimimaro removes ticks: a spur never shortens a real branch
        for _, tip in sorted((branch(t)[2], t) for t in tips):
            if degree[tip] != 1:
                continue
            path, end, length = branch(tip)
            if degree[end] < 3:
                continue  # a whole component without branch points: not a spur
            ball = scale * float(radius[end]) + const
            if length < ball and near[tip] < ball:
                alive[path] = False
                degree[path] = 0
                degree[end] -= 1
                changed = True
    return alive


def _spanning_forest(xyz: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The edges of a minimum spanning forest (by edge length): every loop loses its longest
    edge, connectivity stays.  (kimimaro.post.remove_loops disconnects pieces here.)"""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    n = len(xyz)
    length = np.linalg.norm(xyz[edges[:, 0]] - xyz[edges[:, 1]], axis=1)
    tree = minimum_spanning_tree(coo_matrix((length, (edges[:, 0], edges[:, 1])),
                                            shape=(n, n))).tocoo()
    out = np.sort(np.stack([tree.row, tree.col], axis=1).astype(np.int64), axis=1)
    return out[np.lexsort((out[:, 1], out[:, 0]))]
