"""connected_components: label the connected regions of a label (or binary) volume.

cc3d labels each block; the labels of touching blocks are joined with a union-find over the
voxel pairs that meet across block faces, edges and corners (as the connectivity says), and a
last pass relabels every block.  Components are numbered 1, 2, ... in the order of their first
voxel in a C-order (z, y, x) scan, in the block-wise and the whole-volume path alike, so the
result equals the whole-volume answer exactly whatever the block size.

Into an ``out=`` store the first pass writes its block-local labels into a scratch volume
beside the output (removed at the end), never into the output: on a cluster a worker the
scheduler gave up on may still be running a first-pass task, and its late write would
otherwise land after the last pass and leave local labels in the result (see
:func:`_scratch_home`).

An ``out=`` store stays as sparse as the components: a block of background and, of a block with
components, the store's chunks (or shards) holding only 0 are not written where the store
holds nothing (it was created by this call, or, given, its chunks there are absent); where it
holds chunks, of an earlier result, their zeros are written (:func:`voxgate.absence.
write_sparse`).
"""

from __future__ import annotations

import functools
import itertools
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from ..absence import (
    StoredGroups,
    background_groups,
    chunk_blocks,
    holds_nothing,
    read_stored,
    write_sparse,
)
from ..blockwise import (
    block_shape,
    blocks_at_once,
    check_block,
    check_client,
    check_for_cluster,
    check_output_for_cluster,
    hosts_elsewhere,
    plan_blocks,
    run_blocks,
    scheduler_name,
)
from ..errors import InvalidRequestError, VoxgateError, check_flag
from ..geometry import Box, Vec, grid_range, whole, whole_at_least
from ..meta import Scale, VolumeMeta
from ..registry import create_remote, resolve_for_create
from ..remotes.base import Remote, same_volume
from ..remotes.memory import MemoryRemote
from ..remotes.tensorstore_spec import spec_url
from ..storage import is_local, local_path, split_url
from ..volume import Volume
from ._common import (
    ArrayResult,
    Provenance,
    ProvenanceLog,
    as_volume,
    check_output_options,
    noting_partial_output,
    region_meta,
    remove_scratch,
    resolve_created_output,
)

__all__ = [
    "canonical_order",
    "connected_components",
    "connected_components_kernel",
    "connected_components_provenance",
]

#: blocks grow toward this many bytes of input
BLOCK_BYTES = 64 * 2**20
#: a store's volume up to this many bytes (at 8 bytes a voxel) is labelled in one piece
WHOLE_BYTES = 512 * 2**20
_ID_DTYPES = (np.dtype(np.uint32), np.dtype(np.uint64))
_U32_MAX = 2**32 - 1
_CONNECTIVITY = (6, 18, 26)
_ONE = Vec(1, 1, 1)


def _neighbours(connectivity: int, axis: int) -> list[tuple[int, int, int]]:
    """Neighbour offsets one step up along ``axis`` (any step along the others)."""
    out = []
    for d in itertools.product((-1, 0, 1), repeat=3):
        n = sum(1 for v in d if v)
        if d[axis] != 1 or (connectivity == 6 and n > 1) or (connectivity == 18 and n > 2):
            continue
        out.append((d[0], d[1], d[2]))
    return out


def canonical_order(labels: np.ndarray) -> np.ndarray:
    """Relabel components 1, 2, ... by the C-order position of their first voxel (0 stays)."""
    flat = labels.ravel()
    uniq, first = np.unique(flat, return_index=True)
    keep = uniq != 0
    uniq, first = uniq[keep], first[keep]
    order = np.argsort(first, kind="stable")
    mapping = {int(u): i + 1 for i, u in enumerate(uniq[order])}
    import fastremap

    mapping[0] = 0
    return np.asarray(fastremap.remap(labels, mapping, preserve_missing_labels=True),
                      dtype=np.uint64)


def connected_components_kernel(labels: np.ndarray, connectivity: int = 26,
                                dtype: Any = np.uint64) -> np.ndarray:
    """cc3d on one in-memory array, canonically numbered (cc3d's own numbering already is:
    components in the order of their first voxel in a C-order scan), as ``dtype``; 0 and
    NaN are background (see :func:`connected_components`)."""
    if connectivity not in _CONNECTIVITY:
        raise InvalidRequestError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    return _cc3d(labels, connectivity, _id_dtype(dtype))[0]


def _id_dtype(dtype: Any) -> np.dtype | None:
    """The output dtype asked for: uint32 or uint64, None for "auto"."""
    if isinstance(dtype, str) and dtype == "auto":
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt not in _ID_DTYPES:
        raise InvalidRequestError(
            f"dtype must be uint64 (the default: segment ids are uint64 everywhere), uint32 or "
            f"'auto' (uint32 when the components fit, else uint64), got {dtype!r}")
    return dt


def _fits(n: int, dt: np.dtype | None) -> np.dtype:
    """``dt`` (or for "auto" the narrowest id dtype) holding labels up to ``n``."""
    if dt is None:
        return np.dtype(np.uint32) if n <= _U32_MAX else np.dtype(np.uint64)
    if n > np.iinfo(dt).max:
        raise InvalidRequestError(
            f"{n} components do not fit in {dt.name} ids; use dtype=np.uint64 (or 'auto')")
    return dt


def _cc3d(labels: np.ndarray, connectivity: int, dt: np.dtype | None) -> tuple[np.ndarray, int]:
    """cc3d's labels as ``dt`` (None: uint32 when they fit, else uint64) and their count.

    cc3d writes the asked dtype itself: at 512^3 its uint64 output costs 0.38 s of CPU against
    0.36 s for its uint32 output plus a cast, and it allocates 1 GiB instead of 1.5 GiB (on a
    machine whose free memory is fragmented, each fresh GiB can stall for seconds in the
    kernel; docs/services/connected_components.md)."""
    import cc3d

    labels = np.ascontiguousarray(labels)
    if labels.dtype.kind == "f" and labels.dtype.itemsize in (2, 4, 8):
        # labelled by their bits, as integers, with NaN and -0.0 made 0 (a copy): NaN is no
        # value ("no data"), background as 0 is, where cc3d (comparing with ==) made every
        # NaN voxel a component of its own; and cc3d 4.1 raises OverflowError on a float
        # array holding only 0 and +-inf (a block often does).  Other floats are equal
        # exactly when their bits are, so the components are the same
        labels = np.where(np.isnan(labels) | (labels == 0), labels.dtype.type(0), labels).view(
            f"i{labels.dtype.itemsize}")
    if labels.dtype == np.uint64:
        # cc3d 4.1 raises OverflowError on some small or thin arrays (a block at the volume's
        # edge) holding ids >= 2**63; as int64 (a view: no copy) the same ids stay distinct and
        # 0 stays 0, so the components are the same
        labels = labels.view(np.int64)
    if dt is not None:
        try:
            out, n = cc3d.connected_components(  # type: ignore[call-overload]
                labels, connectivity=connectivity, return_N=True, out_dtype=dt)
            return out, int(n)
        except ValueError:
            pass  # cc3d's worst-case estimate exceeds dt: its own choice, then a checked cast
    out, n = cc3d.connected_components(  # type: ignore[call-overload]
        labels, connectivity=connectivity, return_N=True)
    return out.astype(_fits(int(n), dt), copy=False), int(n)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n + 1, dtype=np.int64)

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = int(p[root])
        while p[a] != root:
            p[a], a = root, int(p[a])
        return root

    def roots(self) -> np.ndarray:
        """Every element's root, by pointer jumping over the whole array at once."""
        p = self.parent
        while True:
            nxt = p[p]
            if np.array_equal(nxt, p):
                return p
            p = nxt

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb


def connected_components(
    source: Any,
    out: Any = None,
    *,
    connectivity: int = 26,
    dtype: Any = None,
    block: Sequence[int] | None = None,
    workers: int | None = None,
    client: Any = None,
    progress: bool = False,
    prefer: str = "auto",
    overwrite: bool = False,
    **create_options: Any,
) -> Any:
    """Label connected regions of ``source`` (any non-zero value; equal values connect).

    Background, labelled 0, is every voxel equal to 0 (the fill value; for a float image -0.0
    too) and, for a float image, every NaN: NaN is no value (missing data), so it neither
    forms a component nor connects anything.  Other float values connect where they are
    exactly equal (+inf with +inf); threshold a continuous image first to get regions.

    ``out``: None returns a numpy array; a URL creates that volume (a segmentation with the
    source's scale-0 geometry; it must not exist unless ``overwrite``); a writable Volume is
    written in place.  ``dtype``: the ids' type, uint64 by default (segment ids are uint64
    everywhere), ``np.uint32`` (half the memory; an error if the components do not fit) or
    ``"auto"`` (uint32 when they fit, else uint64; a new ``out`` store is uint64, its type being
    fixed before the count is known); with a given ``out`` Volume, its type (uint32 or uint64).
    Runs block by block (``block`` in voxels, rounded up to whole chunks of a store ``out``) with
    labels joined across block borders, so the result equals the whole-volume answer; on
    ``workers`` threads, or on a ``dask.distributed`` ``client`` (the source and ``out`` must
    then be stores its workers can open by URL).
    """
    t0 = time.perf_counter()
    check_output_options(connected_components, out, create_options)
    if whole(connectivity) not in _CONNECTIVITY:  # 26.0 or True are not connectivities
        raise InvalidRequestError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    progress = check_flag(progress, "progress")
    overwrite = check_flag(overwrite, "overwrite")
    want = np.dtype(np.uint64) if dtype is None else _id_dtype(dtype)
    # refused before an out= URL is created
    if workers is not None:
        workers = whole_at_least(workers, 1, "workers")
    check_client(client, "connected_components")
    block = check_block(block)
    if out is None and create_options:
        raise InvalidRequestError(f"options {sorted(create_options)} need an out= URL")
    src = as_volume(source)
    _no_server_path(prefer)
    region = src.bounds if src.ndim == 3 else None
    if region is None or any(a.step != 1 for a in src._axes):
        raise InvalidRequestError("connected_components needs a 3-D view with step 1")
    scale = src.scale
    if client is not None:
        check_for_cluster(src.url, "source", "connected_components")
        check_output_for_cluster(out, "connected_components")
        _check_scratch_reachable(out, client)  # before an out= URL is created
    if isinstance(out, Volume) and dtype is None:
        want = out.dtype if out.dtype in _ID_DTYPES else np.dtype(np.uint64)

    def details(n_blocks: int, n: int, dt: np.dtype) -> dict[str, Any]:
        return {"connectivity": connectivity, "blocks": n_blocks, "components": n,
                "dtype": dt.name, "scheduler": scheduler_name(client),
                "seconds": round(time.perf_counter() - t0, 3)}

    if out is None and not create_options and (block is None or all(
            b >= s for b, s in zip(block, region.shape, strict=True))) and (
            region.size * max(8, src.dtype.itemsize) <= WHOLE_BYTES
            or isinstance(source, np.ndarray)):
        # in memory in one piece: cc3d's own numbering is already the canonical one (of a
        # store, the chunks it holds are read; the rest is the background 0 they read as)
        data = source if isinstance(source, np.ndarray) else read_stored(
            src.remote, region, scale,
            background_groups(src.remote, region, scale, src.scale_meta.chunks))
        cc, n = _cc3d(data, connectivity, want)
        return ArrayResult(cc, Provenance("connected_components", "local", src.url,
                                          details(1, n, cc.dtype)))

    def id_type_covering_region(vol: Volume) -> None:
        if same_volume(vol.remote, src.remote):
            raise InvalidRequestError(
                f"out is the source {src.url}: blocks are joined by reading the source across "
                "their borders, after earlier blocks were overwritten; write to another volume")
        if (vol.dtype not in _ID_DTYPES or vol.scale_meta.bounds != region or vol.scale != 0
                or (want is not None and vol.dtype != want)):
            wanted = "uint32 or uint64" if want is None else want.name
            raise InvalidRequestError(
                f"out must be a {wanted} volume covering {region!r} at scale 0; {vol.url} is "
                f"{vol.dtype.name} covering {vol.scale_meta.bounds!r}")

    if out is None:
        # the result itself holds the first pass's block labels (uint32 for "auto": a block's
        # labels always fit), relabelled in place: no scratch copy, no final copy
        local_dt = np.dtype(np.uint32) if want is None else want
        arr = np.zeros(tuple(region.shape), dtype=local_dt)
        target = Volume(MemoryRemote.wrap(
            "connected-components", region_meta(src, region, local_dt, "segmentation"),
            [arr], mode="r+"))
        grid = _ONE  # in memory: any block shape, writes are whole-array slices under a lock
        fresh = False
    else:
        # (fresh: a store made by this call, which holds nothing until its blocks are written)
        target, fresh = resolve_created_output(
            out, region_meta(src, region, want or np.uint64, "segmentation"),
            overwrite=overwrite, options=create_options, check=id_type_covering_region,
            scale_of=None if isinstance(source, np.ndarray) else src)
        if client is not None:
            check_for_cluster(target.url, "output", "connected_components", writes=True)
        grid = target.remote.write_grid(0)
    if block is None:
        # whole chunks of the source (and of a store output, made with the same chunks)
        base = block_shape(src.chunks if out is None else grid, max(8, src.dtype.itemsize),
                           region.shape, budget=BLOCK_BYTES,
                           at_once=blocks_at_once(workers, client))
    else:
        base = block_shape(grid, 1, region.shape, block=block)
    # on the output's write grid (a DVID labelmap's blocks lie on the grid through 0, not at
    # its first voxel): no two blocks write one of the store's blocks at once
    anchor = target.remote.grid_bounds(target.scale)
    blocks = [p.box for p in plan_blocks(region, base, anchor, order="row")]
    labels, scratch_at, tmp = _scratch_home(target, client, region, anchor.start, base, src)
    # blocks of only absent chunks reading as 0 are not read: they hold no component
    # (a bit per chunk where the scale has few enough: a block reads only its stored chunks)
    stored = background_groups(src.remote, region, scale, chunk_blocks(src.remote, scale, base),
                               anchor.start)
    # where the output holds nothing, so that its chunks of only 0 need not be written: all
    # of a store this call created; of a given one, where its chunks are absent now (asked
    # before anything is written; None: every block written whole, as an in-memory result)
    held: bool | StoredGroups | None = None
    if out is not None:
        # (a bit per chunk where it has few enough: a unit of only 0 is left out where its
        # own chunks are absent, whatever its block's others hold)
        held = True if fresh else background_groups(
            target.remote, region, 0, chunk_blocks(target.remote, 0, base), anchor.start)
    # pass 1's local labels: a scratch volume made just now holds nothing (each block owns
    # its chunks), the output written in place what the output holds
    local_held = None if out is None else held if labels is target else True
    job = _Job(src, target, region, base, connectivity, anchor.start, labels, stored,
               held, local_held)
    try:
        with noting_partial_output("connected_components", target, out, overwrite):
            return _run(job, blocks, out, client, workers, progress, want, details)
    finally:
        remove_scratch(tmp, scratch_at, "connected_components could not remove its scratch "
                       "volume")


def _run(job: _Job, blocks: list[Box], out: Any, client: Any, workers: int | None,
         progress: bool, want: np.dtype | None,
         details: Callable[[int, int, np.dtype], dict[str, Any]]) -> Any:
    """The three passes over ``blocks``: the result (an ArrayResult for ``out=None``, else
    the target Volume)."""
    src, target, region = job.src, job.target, job.region
    # pass 1: label each block on its own (into job.labels)
    counts: dict[Box, int] = {}
    firsts: dict[Box, np.ndarray] = {}

    def got_labels(b: Box, r: object) -> None:
        counts[b], firsts[b] = r  # type: ignore[misc]

    run = functools.partial(run_blocks, client=client, workers=workers, progress=progress)
    run(functools.partial(_label_block, job), blocks, name="connected components: label",
        on_done=got_labels)
    offsets: dict[Box, int] = {}
    total = 0
    for b in blocks:
        offsets[b] = total
        total += counts[b]
    first_index = np.full(total + 1, np.iinfo(np.int64).max, dtype=np.int64)
    for b in blocks:
        n = counts[b]
        first_index[offsets[b] + 1: offsets[b] + n + 1] = firsts[b][1:]
    starts = {tuple(b.start): o for b, o in offsets.items()}

    # pass 2: voxel pairs across block borders that must join
    pairs: list[np.ndarray] = []
    run(functools.partial(_join_block, job, starts), blocks, name="connected components: join",
        on_done=lambda _b, r: pairs.append(r) if r is not None else None)  # type: ignore[arg-type]
    uf = _UnionFind(total)
    if pairs:
        for a, b2 in np.unique(np.concatenate(pairs), axis=0):
            uf.union(int(a), int(b2))
    roots = uf.roots()
    # canonical numbering: components by the first voxel of any of their parts
    best = np.full(total + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, roots, first_index)
    comp_roots = np.unique(roots[1:]) if total else np.zeros(0, dtype=np.int64)
    order = comp_roots[np.argsort(best[comp_roots], kind="stable")]
    final_dt = _fits(len(order), want)
    rank = np.zeros(total + 1, dtype=final_dt)
    rank_of_root = np.zeros(total + 1, dtype=final_dt)
    rank_of_root[order] = np.arange(1, len(order) + 1, dtype=final_dt)
    rank[1:] = rank_of_root[roots[1:]]

    # pass 3: rewrite every block with the final numbers (for "auto" past uint32: into a
    # uint64 array)
    dest = target
    if out is None and final_dt != target.dtype:
        arr = np.zeros(tuple(region.shape), dtype=final_dt)
        dest = Volume(MemoryRemote.wrap(
            "connected-components", region_meta(src, region, final_dt, "segmentation"),
            [arr], mode="r+"))
    tables = {tuple(b.start): rank[offsets[b]: offsets[b] + counts[b] + 1] for b in blocks}
    # the local labels again: read back from the scratch volume (or the in-memory result),
    # or, where they were written into the out= store itself, labelled again from the source
    again = out is not None and job.labels is target
    run(functools.partial(_relabel_block, job, dest, tables, again=again), blocks,
        name="connected components: relabel")
    prov = Provenance("connected_components", "local", src.url,
                      details(len(blocks), len(order), final_dt))
    if out is None:
        return ArrayResult(cast(MemoryRemote, dest.remote).array(0), prov)
    _PROVENANCE[target.url] = prov
    return target


@dataclass(frozen=True)
class _Job:
    """What every block of one run needs (pickles small: Volumes travel as their specs)."""

    src: Volume
    target: Volume
    region: Box
    base: Vec
    connectivity: int
    #: where the block grid is anchored (see Remote.grid_bounds)
    anchor: Vec
    #: where pass 1 writes each block's local labels and pass 2 reads them: a scratch volume
    #: for an out= store (see _scratch_home), else the target itself
    labels: Volume
    #: where the source stores chunks (None: read every block): a block that touches none
    #: holds only background, is not read, and its labels are neither written in pass 1 nor
    #: read in pass 2 (they are all 0); pass 3 writes its zeros (see :meth:`empty`)
    stored: StoredGroups | None = None
    #: where the target holds nothing (see :func:`voxgate.absence.write_sparse`): True (a
    #: store this call created), its stored chunks before the run, or None (written whole)
    held: bool | StoredGroups | None = None
    #: the same of ``labels``, which pass 1 writes
    local_held: bool | StoredGroups | None = None

    def empty(self, box: Box) -> bool:
        """Whether ``box`` of the source holds only background 0 without being read."""
        return holds_nothing(self.stored, box)


def _label_block(job: _Job, b: Box) -> tuple[int, np.ndarray]:
    """Pass 1: cc3d on one block, written to ``job.labels``; its count and each label's first
    voxel (a flat index in the region)."""
    target = job.labels.remote
    if job.empty(b):
        return 0, np.zeros(1, dtype=np.int64)
    # (what is stored of it: the groups holding no stored chunk are background 0 unread)
    cc, n = _cc3d(read_stored(job.src.remote, b, job.src.scale, job.stored), job.connectivity,
                  target.meta.dtype)
    fi = np.zeros(n + 1, dtype=np.int64)
    if n:
        # cc3d numbers components by their first voxel in memory (C) order, so label j
        # first appears where the running maximum first reaches j: O(n), no sort
        run = np.maximum.accumulate(cc.ravel())
        pos = np.searchsorted(run, np.arange(1, n + 1, dtype=run.dtype))
        local = np.stack(np.unravel_index(pos, cc.shape), axis=1) + np.asarray(
            tuple(b.start - job.region.start))
        fi[1:] = np.ravel_multi_index(local.T, tuple(job.region.shape))
    write_sparse(target, b, cc, 0, job.local_held)
    return n, fi


def _join_block(job: _Job, offsets: dict[tuple[int, ...], int], b: Box) -> np.ndarray | None:
    """Pass 2: the (global label, global label) pairs that touch across this block's upper
    faces (every border between two blocks is the upper face of one of them)."""
    region, base = job.region, job.base
    target = job.labels.remote

    def global_labels(box: Box) -> np.ndarray:
        lab = np.zeros(tuple(box.shape), dtype=np.uint64)
        for nb in _touching(box, region, base, job.anchor):
            if job.empty(nb):  # (its labels are all 0, and were never written)
                continue
            part = nb.intersect(box)
            # (a part of no stored source chunk is background, so its labels are 0: unread)
            local = read_stored(target, part, 0, job.stored).astype(np.uint64, copy=False)
            at = _block_at(nb.start, region, base, job.anchor)
            off = np.uint64(offsets[tuple(at.start)])
            lab[part.slices(box.start)] = np.where(local > 0, local + off, 0)
        return lab

    found = []
    for axis in range(3):
        if b.stop[axis] >= region.stop[axis]:
            continue
        lo = list(b.start - _ONE)
        hi = list(b.stop + _ONE)
        lo[axis], hi[axis] = b.stop[axis] - 1, b.stop[axis] + 1
        slab = Box(lo, hi).intersect(region)
        if job.empty(slab):  # background on both sides: nothing joins
            continue
        inp = read_stored(job.src.remote, slab, job.src.scale, job.stored)
        lab = global_labels(slab)
        inner = [slice(a - s0, e - s0) for a, e, s0 in zip(b.start, b.stop, slab.start,
                                                            strict=True)]
        inner[axis] = slice(0, 1)
        for d in _neighbours(job.connectivity, axis):
            a_sl, b_sl = _shifted(tuple(inner), d, lab.shape)
            if a_sl is None or b_sl is None:
                continue
            la, lb = lab[a_sl], lab[b_sl]
            m = (la != lb) & (la > 0) & (lb > 0) & (inp[a_sl] == inp[b_sl])
            if m.any():
                found.append(np.stack([la[m], lb[m]], axis=1))
    return np.unique(np.concatenate(found), axis=0) if found else None


def _relabel_block(job: _Job, dest: Volume, tables: dict[tuple[int, ...], np.ndarray],
                   b: Box, *, again: bool = False) -> None:
    """Pass 3: one block's local labels replaced by their final numbers.

    The local labels are read back from ``job.labels`` (a scratch volume, or the in-memory
    result, which this pass overwrites in place on this process's threads only).  With
    ``again`` (an ``out=`` store that pass 1 filled with the local labels itself, see
    :func:`_scratch_home`) they are labelled again from the source instead (cc3d numbers a
    block the same way every time): a block run twice (its worker died after the write, or a
    transient error struck after part of it) would otherwise read its final numbers and map
    them through the table a second time."""
    held = job.held  # (None for an in-memory result: dest is then not the target)
    if job.empty(b):  # all 0: written only where the target holds chunks (of an old result)
        if held is True or (isinstance(held, StoredGroups) and holds_nothing(held, b)):
            return
        write_sparse(dest.remote, b, np.zeros(tuple(b.shape), dest.remote.meta.dtype), 0, held)
        return
    table = tables[tuple(b.start)].copy()
    table[0] = 0
    labels = job.labels.remote
    if again:
        local, _ = _cc3d(read_stored(job.src.remote, b, job.src.scale, job.stored),
                         job.connectivity, labels.meta.dtype)
    else:
        # (pass 1 wrote this block's labels whole: 0 wherever its source chunks are absent)
        local = read_stored(labels, b, 0, job.stored)
    out = table[local]
    if held is not None and out.dtype != dest.remote.meta.dtype:  # ("auto": uint32 ids)
        out = out.astype(dest.remote.meta.dtype)
    write_sparse(dest.remote, b, out, 0, held)


#: schemes whose out= store lies at a storage location (a directory, or a prefix on object
#: storage) that a scratch volume can be made beside
_BESIDE_SCHEMES = ("zarr", "n5", "precomputed")
#: what a scratch volume's name adds to its output's (``.../cc.zarr.voxgate-cc-<run>``)
SCRATCH_SUFFIX = ".voxgate-cc-"


def _beside(remote: Remote) -> str | None:
    """The storage location a scratch volume for the out= store ``remote`` gets: a sibling
    of the store's own location (the same file system or bucket, so every worker reaching the
    output reaches it), named after it with a fresh run id; None when the store has no such
    location (DVID, bossDB, a TensorStore spec, memory)."""
    location = getattr(remote, "location", None)
    if getattr(remote, "scheme", None) not in _BESIDE_SCHEMES or not isinstance(
            location, str) or location.startswith(("http://", "https://")):
        return None
    if is_local(location):
        location = os.path.abspath(local_path(location))  # (a worker's cwd is not ours)
    return f"{location.rstrip('/')}{SCRATCH_SUFFIX}{uuid.uuid4().hex[:12]}"


def _will_be_beside(out: Any) -> bool:
    """Whether the ``out=`` given (before it is created) is a store :func:`_beside` places a
    scratch volume next to."""
    if isinstance(out, Volume):
        return _beside(out.remote) is not None
    if isinstance(out, dict):
        out = spec_url(out)
    if not isinstance(out, (str, os.PathLike)):
        return False
    scheme, location = split_url(os.fspath(out))
    if scheme is None:
        try:
            scheme = resolve_for_create(os.fspath(out))[0].scheme
        except (VoxgateError, ImportError):
            return True  # (creating it says what is wrong with it)
    return scheme in _BESIDE_SCHEMES and not location.startswith(("http://", "https://"))


def _check_scratch_reachable(out: Any, client: Any) -> None:
    """Refuse, before ``out`` is created, a cluster run whose scratch volume would have to be
    a temporary directory on this machine (the output has no location to put it beside) while
    some worker runs on another machine."""
    if out is None or _will_be_beside(out):
        return
    elsewhere = hosts_elsewhere(client)
    if elsewhere:
        raise InvalidRequestError(
            "connected_components on a cluster writes its block-local labels into a scratch "
            f"volume beside out=, and {getattr(out, 'url', out)} has no location to put one "
            f"beside; a temporary directory here cannot be reached from the workers on "
            f"{', '.join(elsewhere)}: write to a zarr://, n5:// or precomputed:// output on "
            "storage they share (then copy it where it belongs), or run it without client=")


_TempDir = tempfile.TemporaryDirectory[str]


def _scratch_home(target: Volume, client: Any, region: Box, anchor: Vec, base: Vec,
                  src: Volume) -> tuple[Volume, str | None, _TempDir | None]:
    """Where pass 1 writes the block-local labels: (the volume, the location to remove at the
    end or None, a temporary directory to clean up or None).

    Never into an ``out=`` store itself.  On a cluster a worker the scheduler took for dead
    (a missed heartbeat, a network partition, a long pause) may still be running a pass-1
    task that the scheduler ran again elsewhere; its write can land at any time, even after
    the call returned.  Pass 3's writes are the same bytes however often they run, pass 1's
    are not: written into the output, a late one would leave local labels in the result.  So
    pass 1 writes a uint32 zarr scratch volume beside the output (:func:`_beside`: reachable
    by every worker that reaches the output, removed at the end), whose chunks hold each
    block whole.  A late pass-1 write then lands there: before the end it writes the same
    bytes again; after the removal it makes the scratch's chunk files anew, with no metadata
    (docs/services/connected_components.md: remove ``*.voxgate-cc-*`` siblings when nothing
    runs).  An output with no such location gets a temporary directory here on a cluster
    (refused with workers on other machines, :func:`_check_scratch_reachable`), and is
    written in place without one (only this process's threads then write, all done before
    the next pass starts).  The in-memory result (``out=None``) holds them itself."""
    if isinstance(target.remote, MemoryRemote):
        return target, None, None
    at = _beside(target.remote)
    tmp = None
    if at is None:
        if client is None:
            return target, None, None
        tmp = tempfile.TemporaryDirectory(prefix="voxgate-cc-")
        at = os.path.join(tmp.name, "labels")
    # on the block grid (anchored at ``anchor``, at or before the region's start): every block
    # writes whole scratch chunks, and pass 2's one-voxel slabs read few voxels besides theirs
    box = Box(Vec(*(min(a, r) for a, r in zip(anchor, region.start, strict=True))), region.stop)
    chunks = Vec(*(int(np.gcd(b, c)) for b, c in zip(base, target.chunks, strict=True)))
    dt = np.uint32 if base.prod() <= _U32_MAX else np.uint64
    meta = VolumeMeta(np.dtype(dt), (Scale(0, box.shape, chunks, src.voxel_size, box.start),),
                      "segmentation")
    try:
        labels = Volume(create_remote(f"zarr://{at}", meta, compression="blosc-lz4"))
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return labels, (None if tmp is not None else at), tmp


_PROVENANCE = ProvenanceLog()  # (the last ProvenanceLog.KEPT volumes written)


def connected_components_provenance(vol: Volume) -> Provenance | None:
    """How the last ``connected_components`` into this volume's URL in this process ran
    (its details include the number of ``components``)."""
    return _PROVENANCE.get(vol.url)


def _no_server_path(prefer: str) -> None:
    if prefer not in ("auto", "server", "local"):
        raise InvalidRequestError(f"prefer must be 'auto', 'server' or 'local', got {prefer!r}")
    if prefer == "server":
        from ..errors import CapabilityNotSupportedError

        raise CapabilityNotSupportedError(
            "no store runs connected components on its server; use prefer='local' or 'auto'")


def _block_at(start: Vec, region: Box, base: Vec, anchor: Vec) -> Box:
    """The block (clipped to ``region``) of the grid anchored at ``anchor`` holding ``start``."""
    g = [(s - r) // b for s, r, b in zip(start, anchor, base, strict=True)]
    s = Vec(*(r + i * b for r, i, b in zip(anchor, g, base, strict=True)))
    return Box(s, s + base).intersect(region)


def _touching(ext: Box, region: Box, base: Vec, anchor: Vec) -> list[Box]:
    """The blocks (clipped to ``region``) of the grid anchored at ``anchor`` meeting ``ext``
    (which lies in ``region``)."""
    lo, hi = grid_range(ext, base, anchor)
    out = []
    for idx in itertools.product(*(range(a, b) for a, b in zip(lo, hi, strict=True))):
        s = Vec(*(r + i * b for r, i, b in zip(anchor, idx, base, strict=True)))
        out.append(Box(s, s + base).intersect(region))
    return out


def _shifted(inner: tuple[slice, ...], d: tuple[int, int, int],
             shape: tuple[int, ...]) -> tuple[Any, Any]:
    """Slices a (inside ``inner``) and b = a + d (inside the array) of equal shape."""
    a_sl, b_sl = [], []
    for s, dd, n in zip(inner, d, shape, strict=True):
        lo, hi = s.start, s.stop
        lo2, hi2 = max(lo, -dd), min(hi, n - dd)
        if lo2 >= hi2:
            return None, None
        a_sl.append(slice(lo2, hi2))
        b_sl.append(slice(lo2 + dd, hi2 + dd))
    return tuple(a_sl), tuple(b_sl)
