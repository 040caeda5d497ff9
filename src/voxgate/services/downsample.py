"""downsample: build a volume's coarser scales (mean for images, mode for segmentations).

Every output voxel is computed from the voxels of the scale before it that it covers, partial
blocks at odd edges included: the floor of their mean for integer images, their mean for float
images, and for segmentations the first (in C order within the block) of their most frequent
labels.  tests/services/numpy_reference.py states the same rules as brute-force numpy, and the
property tests hold this kernel to it.

The kernel uses tinybrain only where it was shown to give exactly that: single-level 2x2 and
2x2x2 means over whole blocks (uint8/16/32, float32/64), single-channel 2x2x2 modes (odd edges
included) and 2x2 modes over whole blocks, with its other tie rule corrected; the rest (partial
edge blocks, other factors and dtypes) is vectorised numpy.  tinybrain works
on Fortran-order (x, y, z) arrays: a C-order (z, y, x) array's ``.T`` is exactly that, with no
copy, and its results' ``.T`` are C-order (z, y, x) again.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

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
    cluster_spec,
    count_blocks,
    iter_blocks,
    run_blocks,
    scheduler_name,
    worker_remote,
)
from ..errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    VoxgateError,
    VoxgateWarning,
    refuses_unknown_keywords,
)
from ..geometry import Box, Vec, whole_at_least
from ..meta import Scale, VolumeMeta, coarser_extent, next_scales
from ..remotes.base import Capability, has_capability, notify_written
from ..volume import Volume
from ._common import (
    Prefer,
    Provenance,
    ProvenanceLog,
    as_volume,
    choose_path,
    scratch_remote,
)

__all__ = ["downsample", "downsample_kernel"]

#: blocks grow toward this many bytes of scale-0 data
BLOCK_BYTES = 64 * 2**20


def downsample_kernel(data: np.ndarray, factors: Sequence[Sequence[int]],
                      kind: str, *, start: Sequence[int] | None = None) -> list[np.ndarray]:
    """Downsample a C-order ([c,] z, y, x) array by each (z, y, x) factor in turn.

    Returns one C-order array per factor (the coarser scales, in order): scale k is computed
    from scale k-1, and its shape is ``ceil(shape / factor)``.  ``kind`` "image" gives the floor
    of the mean of the voxels each output voxel covers (the plain mean for floats);
    "segmentation" gives a most frequent label of them, ties going to the label that comes
    first in the block in C order (x fastest).  Partial blocks at odd edges count only the
    voxels they cover.

    ``start`` (z, y, x), the coordinate of ``data``'s first voxel, puts the blocks on the grid
    through coordinate 0 instead (``pyramid_anchor`` "origin"): output voxel i of a level covers
    the input voxels [i * f, (i + 1) * f) of that grid, starting at ``start // f``; a block
    cut by the array's start counts only the voxels it covers, as one cut by its end does, and
    a level's shape is ``ceil((start + shape) / f) - start // f``.
    """
    if kind not in ("image", "segmentation"):
        raise InvalidRequestError(f"kind must be 'image' or 'segmentation', got {kind!r}")
    data = np.asarray(data)
    if data.ndim not in (3, 4):
        raise InvalidRequestError(
            f"downsample_kernel takes a (z, y, x) or (c, z, y, x) array, got shape {data.shape}")
    steps: list[tuple[int, int, int]] = []
    for f in factors:
        t = tuple(int(v) for v in f)
        if len(t) != 3 or any(v < 1 for v in t):
            raise InvalidRequestError(
                f"each factor must be three integers >= 1 (z, y, x), got {tuple(f)!r}")
        steps.append((t[0], t[1], t[2]))
    level = _mean if kind == "image" else _mode
    at: list[int] | None = None
    if start is not None:
        at = [int(v) for v in start]
        if len(at) != 3:
            raise InvalidRequestError(f"start must be (z, y, x), got {tuple(start)!r}")
    out: list[np.ndarray] = []
    current = np.ascontiguousarray(data)
    for f in steps:
        if at is None:
            current = level(current, f)
        else:
            current = _cut_at_start(level, current, f, [a % k for a, k in zip(at, f,
                                                                            strict=True)])
            at = [a // k for a, k in zip(at, f, strict=True)]
        out.append(current)
    return out


def _cut_at_start(level: Any, arr: np.ndarray, f: tuple[int, int, int],
                  lead: Sequence[int]) -> np.ndarray:
    """``level`` on a grid of blocks ``f`` that starts ``lead`` voxels (per axis, < f) before
    ``arr``: along an axis with a lead the first block holds only the first ``f - lead`` voxels.
    That block and the rest are computed apart (no block spans the cut) and put together."""
    if not any(lead):
        return level(arr, f)
    parts: list[list[tuple[slice, slice]]] = []
    for n, k, a in zip(arr.shape[-3:], f, lead, strict=True):
        if a == 0:
            parts.append([(slice(None), slice(None))])
            continue
        head = min(k - a, n)
        parts.append([(slice(0, head), slice(0, 1))]
                     + ([(slice(head, None), slice(1, None))] if n > head else []))
    shape = tuple(arr.shape[:-3]) + tuple(-(-(n + a) // k) for n, k, a in zip(
        arr.shape[-3:], f, lead, strict=True))
    out = np.empty(shape, dtype=arr.dtype)
    for combo in itertools.product(*parts):
        src: tuple[Any, ...] = (Ellipsis, *(c[0] for c in combo))
        dst: tuple[Any, ...] = (Ellipsis, *(c[1] for c in combo))
        out[dst] = level(np.ascontiguousarray(arr[src]), f)
    return out


# tinybrain's single-level 2x2 and 2x2x2 average pooling is exact (the floor of the mean) on
# blocks wholly inside the array, for these dtypes; at odd edges it is wrong (garbage for 2x2),
# its multi-level mode accumulates differently and refuses small extents, and it sums 64-bit
# integers in 64 bits (overflow).  So it gets the whole blocks only and numpy does the rest.
_TINYBRAIN_MEAN_DTYPES = frozenset(np.dtype(t) for t in (
    np.uint8, np.uint16, np.uint32, np.float32, np.float64))
# tinybrain's 2x2x2 mode pooling picks, per block, the first (in C order) of the most frequent
# labels, odd edges included; its 2x2 mode pooling breaks ties by another rule and takes one
# voxel at odd edges, so (1, 2, 2) runs in numpy.  Its multi-channel 2x2x2 path writes out of
# bounds, so channels go one at a time.
_TINYBRAIN_MODE_DTYPES = frozenset(np.dtype(t) for t in (
    np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64))
_TINYBRAIN_MEAN_FACTORS = {(1, 2, 2): (2, 2, 1), (2, 2, 2): (2, 2, 2)}


def _edge_parts(shape: Sequence[int], f: Sequence[int]
                ) -> tuple[tuple[int, ...], list[tuple[slice, ...]]]:
    """The whole-block output extent, and the output regions of the partial blocks.

    Returns the number of whole blocks per axis and, for each axis whose extent is not a
    multiple of its factor, the output slab (as slices over the last three axes) of that axis's
    last, partial block (slabs may overlap at corners; each is computed alike).
    """
    whole = tuple(s // k for s, k in zip(shape, f, strict=True))
    slabs: list[tuple[slice, ...]] = []
    for ax, (s, k) in enumerate(zip(shape, f, strict=True)):
        if s % k:
            slabs.append(tuple(slice(whole[ax], whole[ax] + 1) if a == ax else slice(None)
                               for a in range(3)))
    return whole, slabs


def _input_region(out_region: Sequence[slice], f: Sequence[int]) -> tuple[slice, ...]:
    """The input voxels an output region (over the last three axes) covers."""
    return tuple(slice(None) if r.start is None else slice(r.start * k, r.stop * k)
                 for r, k in zip(out_region, f, strict=True))


def _out_shape(shape: Sequence[int], f: Sequence[int]) -> tuple[int, ...]:
    return tuple(shape[:-3]) + tuple(-(-n // k) for n, k in zip(shape[-3:], f, strict=True))


def _combine(arr: np.ndarray, f: tuple[int, int, int], whole_fn: Any, edge_fn: Any
             ) -> np.ndarray:
    """Whole blocks by ``whole_fn`` (per channel, on a C-order (z, y, x) array whose extents
    are multiples of ``f``), the partial blocks at the far edges by ``edge_fn``."""
    whole, slabs = _edge_parts(arr.shape[-3:], f)
    if min(whole) == 0:
        return edge_fn(arr, f)
    inner: tuple[slice, ...] = tuple(slice(0, w * k) for w, k in zip(whole, f, strict=True))
    if arr.ndim == 3 and not slabs:
        return whole_fn(arr)  # the common case: no copy of the result
    out = np.empty(_out_shape(arr.shape, f), dtype=arr.dtype)
    for c in np.ndindex(*arr.shape[:-3]):
        out[c][: whole[0], : whole[1], : whole[2]] = whole_fn(arr[c][inner])
    for region in slabs:
        source: tuple[Any, ...] = (Ellipsis, *_input_region(region, f))
        target: tuple[Any, ...] = (Ellipsis, *region)
        out[target] = edge_fn(arr[source], f)
    return out


def _mean(arr: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    if f == (1, 1, 1):
        return arr.copy()
    xyz = _TINYBRAIN_MEAN_FACTORS.get(f)
    if xyz is None or arr.dtype not in _TINYBRAIN_MEAN_DTYPES:
        return _mean_numpy(arr, f)

    def whole(a: np.ndarray) -> np.ndarray:
        import tinybrain

        # a C-order (z, y, x) array's .T is tinybrain's Fortran-order (x, y, z): the same
        # memory (a copy only when the partial edge blocks were trimmed off)
        res = tinybrain.downsample_with_averaging(np.asfortranarray(a.T), xyz, num_mips=1)[0]
        return np.asarray(res).T

    return _combine(arr, f, whole, _mean_numpy)


def _block_counts(shape: Sequence[int], f: Sequence[int]) -> np.ndarray:
    """How many input voxels each output voxel covers (partial blocks at the far edges)."""
    per_axis = [np.minimum(k, s - np.arange(0, s, k)) for s, k in zip(shape, f, strict=True)]
    return per_axis[0][:, None, None] * per_axis[1][None, :, None] * per_axis[2][None, None, :]


def _block_sums(arr: np.ndarray, f: Sequence[int]) -> np.ndarray:
    """Sums over each (partial) block of the last three axes; ``arr`` holds the sum dtype."""
    for ax, k in zip((-3, -2, -1), f, strict=True):
        if k > 1:
            arr = np.add.reduceat(arr, np.arange(0, arr.shape[ax], k), axis=ax)
    return arr


def _mean_numpy(arr: np.ndarray, f: Sequence[int]) -> np.ndarray:
    """Floor of the block means (mean for floats), vectorised, exact for every integer width."""
    counts = _block_counts(arr.shape[-3:], f)
    if arr.dtype.kind == "f":
        # +inf and -inf in one block average to NaN, as tinybrain's whole blocks do, without
        # numpy's RuntimeWarning (an error under -W error) for an edge block that does
        with np.errstate(invalid="ignore", over="ignore"):
            return (_block_sums(arr.astype(np.float64), f) / counts).astype(arr.dtype)
    if arr.dtype.kind == "b":
        return _mean_numpy(arr.astype(np.uint8), f).astype(arr.dtype)
    if arr.dtype.itemsize < 8:
        wide = np.int64 if arr.dtype.kind == "i" else np.uint64
        return (_block_sums(arr.astype(wide), f) // counts).astype(arr.dtype)
    # 64-bit integers: a sum of even two values can overflow, so sum the high and low 32 bits
    # apart and put the floor of the mean together from them.  Signed values are shifted into
    # unsigned order first (v + 2**63 as uint64); the mean shifts with them.
    sign = np.uint64(1 << 63)
    u = arr.view(np.uint64) ^ sign if arr.dtype.kind == "i" else arr.astype(np.uint64,
                                                                                 copy=False)
    n = counts.astype(np.uint64)
    hi = _block_sums(u >> np.uint64(32), f)
    lo = _block_sums(u & np.uint64(0xFFFFFFFF), f)
    mean = ((hi // n) << np.uint64(32)) + (((hi % n) << np.uint64(32)) + lo) // n
    if arr.dtype.kind == "i":
        return (mean ^ sign).view(np.int64).astype(arr.dtype, copy=False)
    return mean.astype(arr.dtype, copy=False)


def _mode(arr: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    if f == (1, 1, 1):
        return arr.copy()
    if arr.dtype not in _TINYBRAIN_MODE_DTYPES:
        return _combine(arr, f, lambda a: _first_most_frequent(_block_members(a, f)),
                        _mode_partial)
    if f == (2, 2, 2):
        # tinybrain's 2x2x2 rule is this kernel's, odd edges included: the whole array goes
        def whole(a: np.ndarray) -> np.ndarray:
            return _tinybrain_mode(a, (2, 2, 2))

        if arr.ndim == 3:
            return whole(arr)
        out = np.empty(_out_shape(arr.shape, f), dtype=arr.dtype)
        for c in np.ndindex(*arr.shape[:-3]):
            out[c] = whole(arr[c])
        return out
    if f == (1, 2, 2):
        return _combine(arr, f, _mode_2x2, _mode_partial)
    return _combine(arr, f, lambda a: _first_most_frequent(_block_members(a, f)),
                    _mode_partial)


def _tinybrain_mode(a: np.ndarray, xyz: tuple[int, int, int]) -> np.ndarray:
    """tinybrain's mode pooling of one channel (C-order (z, y, x) in and out)."""
    import tinybrain

    # its kernels read raw memory: they must get a Fortran-contiguous (x, y, z) array
    return np.asarray(tinybrain.downsample_segmentation(np.asfortranarray(a.T), xyz)[0]).T


#: _mode_2x2 checks tinybrain's result in slabs of about this many output voxels (cache-sized)
_SLAB_VOXELS = 1 << 16
#: a slab with fewer than 1 in this many blocks to check checks them one by one (gathered),
#: else all of its blocks at once (a whole-slab mask): the one-by-one check costs about this
#: many times more per block (measured on 2 cores: equal at 8-9% of blocks)
_GATHER_BELOW = 12


def _mode_2x2(a: np.ndarray) -> np.ndarray:
    """(1, 2, 2) mode of the whole 2 x 2 blocks (a b / c d) of one channel, first-most-frequent.

    tinybrain's 2x2 kernel (COUNTLESS) returns a if a == b or a == c, else b if b == c, else d:
    always a most frequent label, and the first one in block order except in two cases where a
    is the first most frequent label but it returns another: all four labels differ, or
    a == d with b == c.  Only blocks whose result is not a can be those; they are checked a
    cache-sized slab at a time and set to a.  A segmentation's slabs hold few such blocks
    (about 1% of them: cell boundaries), which are gathered and checked alone; a slab with
    many (noise) is checked whole.
    """
    out = _tinybrain_mode(a, (2, 2, 1))
    z, oy, ox = out.shape
    step = max(1, _SLAB_VOXELS // max(1, oy * ox))
    for z0 in range(0, z, step):
        part = a[z0: z0 + step]
        first = part[:, 0::2, 0::2]
        res = out[z0: z0 + step]
        candidates = res != first
        n = np.count_nonzero(candidates)
        if not n:
            continue
        if n * _GATHER_BELOW < candidates.size:
            at = np.nonzero(candidates)
            zz, y2, x2 = at[0], 2 * at[1], 2 * at[2]
            fa = first[at]
            b, c, d = part[zz, y2, x2 + 1], part[zz, y2 + 1, x2], part[zz, y2 + 1, x2 + 1]
            fix = (b != c) & (b != d) & (c != d)  # with a unique here: all four differ
            fix |= fa == d
            res[tuple(i[fix] for i in at)] = fa[fix]
            continue
        b, c, d = part[:, 0::2, 1::2], part[:, 1::2, 0::2], part[:, 1::2, 1::2]
        fix = (b != c) & (b != d) & (c != d)
        fix |= first == d
        fix &= candidates
        np.copyto(res, first, where=fix)
    return out


def _block_members(arr: np.ndarray, f: Sequence[int]) -> list[np.ndarray]:
    """One strided view per position in the block, in C order: member i of every block."""
    fz, fy, fx = f
    return [arr[..., dz::fz, dy::fy, dx::fx]
            for dz in range(fz) for dy in range(fy) for dx in range(fx)]


def _first_most_frequent(members: Sequence[np.ndarray],
                         valid: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Per block, the first member (in order) whose label is among the most frequent.

    ``valid`` marks members that exist (partial blocks); absent members neither count nor win.
    """
    k = len(members)
    counts = [np.ones(members[0].shape, dtype=np.int16) for _ in range(k)]
    for i in range(k):
        for j in range(i + 1, k):
            eq = members[i] == members[j]
            if valid is not None:
                counts[i] += eq & valid[j]
                counts[j] += eq & valid[i]
            else:
                counts[i] += eq
                counts[j] += eq
    if valid is not None:
        counts = [np.where(v, c, -1).astype(np.int16) for c, v in zip(counts, valid,
                                                                        strict=True)]
    best = members[0].copy()
    best_count = counts[0]
    for i in range(1, k):
        better = counts[i] > best_count  # strictly more: an earlier member keeps a tie
        best[better] = members[i][better]
        best_count = np.maximum(best_count, counts[i])
    return best


def _mode_partial(arr: np.ndarray, f: Sequence[int]) -> np.ndarray:
    """Mode of blocks that may be partial at the far edges (a small slab of the volume)."""
    padded_shape = tuple(-(-s // k) * k for s, k in zip(arr.shape[-3:], f, strict=True))
    pad = [(0, 0)] * (arr.ndim - 3) + [(0, p - s) for p, s in zip(padded_shape, arr.shape[-3:],
                                                                   strict=True)]
    padded = np.pad(arr, pad, mode="edge")
    present = np.zeros(padded_shape, dtype=bool)
    present[: arr.shape[-3], : arr.shape[-2], : arr.shape[-1]] = True
    return _first_most_frequent(_block_members(padded, f), _block_members(present, f))


def _factors_between(a: Scale, b: Scale) -> Vec:
    f = [round(vb / va) for va, vb in zip(a.voxel_size.zyx(), b.voxel_size.zyx(), strict=True)]
    if any(v < 1 for v in f):
        raise InvalidRequestError(f"scale {b.index} is finer than scale {a.index}")
    return Vec(*f)


def _default_num_scales(meta: VolumeMeta) -> int:
    """Enough scales that the coarsest fits in one chunk in y and x (at least 2)."""
    current = meta.with_scales(meta.scales[:1])
    while len(current.scales) < 16:
        sc = current.scales[-1]
        if sc.shape.y <= sc.chunks.y and sc.shape.x <= sc.chunks.x:
            break
        current = current.with_scales([*current.scales, *next_scales(current, 1)])
    return max(2, len(current.scales))


@refuses_unknown_keywords
def downsample(
    source: Any,
    num_scales: int | None = None,
    *,
    factors: Sequence[Sequence[int]] | None = None,
    prefer: Prefer = "auto",
    block: Sequence[int] | None = None,
    workers: int | None = None,
    client: Any = None,
    progress: bool = False,
) -> Volume:
    """Compute scales 1 .. num_scales-1 of ``source`` from scale 0 and store them.

    ``source`` is a URL, a Volume or a numpy array (then the result lives in memory).  Missing
    scales are added to the store's metadata (precomputed info, OME-Zarr multiscales, N5 and
    HDF5 groups) with voxel sizes multiplied by ``factors`` ((z, y, x) per new scale; by
    default halving toward isotropy); scales that exist are recomputed.  Images are averaged,
    segmentations take the mode.  Big volumes run block by block (``block``, scale-0 voxels,
    rounded to whole chunks and factors), on ``workers`` threads or on a ``dask.distributed``
    ``client``'s workers, which reopen the store by URL.  A store that rebuilds its coarser
    scales itself on every write (a DVID labelmap with scales) has nothing to compute: they are
    left as the store made them, unless ``prefer="local"`` asks for voxgate's own rule.  Of a
    store that tells absent chunks from stored ones and reads 0 where one is absent, a block
    holding only absent chunks is not read (its levels are 0), and its levels are written only
    where that scale already stores a chunk (or reads other than 0 where absent): a sparse
    volume's pyramid stays sparse; of a block read (a volume under the budget is one), the
    absent chunks are not read, whatever the fill value: they are its voxel, as the store
    reads it.  Returns the volume opened read-write; its
    ``downsample_provenance`` attribute is not set — call ``downsample_provenance(vol)``.
    """
    t0 = time.perf_counter()
    # what would be refused after new scales are added to the metadata is refused here
    if workers is not None:
        workers = whole_at_least(workers, 1, "workers")
    check_client(client, "downsample")
    check_block(block)
    if factors is not None and (isinstance(factors, (str, bytes))
                                or not isinstance(factors, Sequence)):
        raise InvalidRequestError(
            f"factors must be a list of (z, y, x) factors, one per new scale, got {factors!r}")
    vol = as_volume(source, mode="r+")
    if isinstance(vol, Volume) and not isinstance(source, np.ndarray) and (
            not vol._plain or vol.bounds != vol.scale_meta.bounds):
        raise InvalidRequestError(
            f"downsample computes whole scales of a volume; {vol.url} was given as a view "
            f"{vol.shape} of it: pass the volume itself (voxgate.open(url, mode='r+'))")
    if isinstance(source, np.ndarray):
        # an array: compute into a writable in-memory copy (the caller's array is not changed)
        copy = scratch_remote(vol.meta.with_scales(vol.meta.scales[:1]))
        copy.write(vol.scale_meta.bounds, vol.read())
        vol = Volume(copy)
    if vol.mode != "r+":
        from ..errors import ReadOnlyError

        raise ReadOnlyError(f"{vol.url} is opened read-only; downsample writes its scales")
    remote = vol.remote
    meta = remote.meta
    if (has_capability(remote, Capability.DERIVED_SCALES) and prefer in ("auto", "server")
            and factors is None and (num_scales is None or num_scales == len(meta.scales))):
        # the store rebuilt every coarser scale from each scale-0 write before it returned
        # (a DVID labelmap): they are current already, by the store's own rule
        done = Volume(remote, 0)
        _PROVENANCE[done.url] = Provenance("downsample", "server", done.url, {
            "derived_by_store": True, "seconds": round(time.perf_counter() - t0, 3)})
        return done
    path = choose_path(prefer, remote, Capability.SERVER_DOWNSAMPLE, "downsample")
    if path == "server" and (factors is not None or num_scales not in (None, len(meta.scales))):
        # the server's job computes the channel's own levels by its own factors: asked for
        # other levels or factors, "auto" runs the local path (which adds, checks or refuses
        # them as on any store) rather than answer with levels that were not asked for
        if prefer == "server":
            raise CapabilityNotSupportedError(
                f"the server's downsample of {remote.url} computes its {len(meta.scales)} "
                "levels by its own factors; num_scales or factors other than those need "
                "prefer='local' or 'auto'")
        path = "local"
    if path == "server":
        _server_downsample(remote)
        done = Volume(remote, 0)
        _PROVENANCE[done.url] = Provenance("downsample", "server", done.url, {
            "seconds": round(time.perf_counter() - t0, 3)})
        return done
    if num_scales is None:
        num_scales = len(meta.scales) if len(meta.scales) > 1 else _default_num_scales(meta)
    num_scales = whole_at_least(num_scales, 2, "num_scales")
    existing = len(meta.scales)
    if factors is not None and len(factors) != num_scales - 1:
        raise InvalidRequestError(
            f"give one (z, y, x) factor per new scale: {num_scales - 1}, got {len(factors)}")
    steps: list[Vec] = []
    for k in range(1, min(existing, num_scales)):
        f = _factors_between(meta.scale(k - 1), meta.scale(k))
        if factors is not None and tuple(f) != tuple(factors[k - 1]):
            raise InvalidRequestError(
                f"scale {k} exists with factors {tuple(f)}, not {tuple(factors[k - 1])}")
        prev = meta.scale(k - 1)
        _, expect = coarser_extent(prev.offset, prev.shape, f, remote.pyramid_anchor)
        if expect != meta.scale(k).shape:
            raise InvalidRequestError(
                f"scale {k}'s shape {tuple(meta.scale(k).shape)} is not scale {k - 1}'s "
                f"divided by {tuple(f)}; voxgate cannot fill it consistently")
        steps.append(f)
    if num_scales > existing:
        new_factors = None if factors is None else [Vec.of(f) for f in factors[existing - 1:]]
        new = next_scales(meta, num_scales - existing, new_factors, remote.pyramid_anchor)
        remote.add_scales(new)
        meta = remote.meta
        steps += [_factors_between(meta.scale(k - 1), meta.scale(k))
                  for k in range(existing, num_scales)]
    itemsize = meta.dtype.itemsize * meta.num_channels
    n_blocks = 0
    written: set[int] = set()
    try:
        # the scales in passes (see _passes): each pass reads its first scale block by block
        # (scale 0, or the last scale of the pass before, as stored) and writes the others
        for first, last in _passes(remote, steps, itemsize):
            pass_steps = steps[first:last]
            sb = meta.scale(first)
            grid = _pass_grid(remote, first, pass_steps)
            # a user's block is in scale-0 voxels: in this pass's first scale's voxels here
            cum0 = _cumulative(steps[:first])
            want = None if block is None else Vec(*(
                max(1, -(-int(b) // c)) for b, c in zip(block, cum0, strict=True)))
            base = block_shape(grid, itemsize, sb.shape, budget=BLOCK_BYTES, block=want,
                               at_once=blocks_at_once(workers, client))
            # walked as the blocks are sent, never listed (it would grow with the volume)
            anchor = grid_anchor(remote, first, grid)
            count = count_blocks(sb.bounds, base, anchor)
            blocks = (p.box for p in iter_blocks(sb.bounds, base, anchor))
            n_blocks += count
            # asked of the scale this pass reads as it is now (the pass before wrote it, or
            # left absent what it knew to be all 0), and of the scales it writes before it
            # writes them
            skip = _absent_blocks(remote, first, pass_steps, base, anchor)
            if client is not None:
                check_for_cluster(remote.url, "volume", "downsample", writes=True)
                fn: Any = functools.partial(_downsample_block, cluster_spec(remote, "r+"),
                                            uuid.uuid4().hex, steps=tuple(pass_steps),
                                            first=first, skip=skip)
            else:
                fn = functools.partial(_block, remote, steps=pass_steps, first=first,
                                       skip=skip)
            written.update(range(first + 1, last + 1))
            try:
                run_blocks(fn, blocks, name="downsample", client=client, workers=workers,
                           progress=progress, total=count,
                           total_bytes=sb.bounds.intersect(anchor).size * itemsize)
            finally:  # (the pass's scales changed, all or in part: the next pass reads one)
                for k in range(first + 1, last + 1):
                    notify_written(remote, k)
    finally:
        # (every coarser scale is announced, as before, whether or not its pass ran)
        for k in range(1, len(steps) + 1):
            if k not in written:
                notify_written(remote, k)
    out = Volume(remote, 0)
    _PROVENANCE[out.url] = Provenance("downsample", "local", out.url, {
        "scales": num_scales, "factors": [tuple(f) for f in steps], "blocks": n_blocks,
        "scheduler": scheduler_name(client),
        "seconds": round(time.perf_counter() - t0, 3)})
    return out


def _cumulative(steps: Sequence[Vec]) -> Vec:
    cum = Vec(1, 1, 1)
    for f in steps:
        cum = Vec(*(c * v for c, v in zip(cum, f, strict=True)))
    return cum


def _pass_grid(remote: Any, first: int, steps: Sequence[Vec]) -> Vec:
    """The block grid of a pass reading scale ``first`` and writing the next ``len(steps)``.

    Blocks are whole multiples of every written scale's write grid (chunk or shard) times its
    factor from scale ``first`` (and of scale ``first``'s own grid): each block then writes
    whole chunks at every scale (no two blocks share a chunk, so threads and workers never
    race on one), and its partial blocks can only lie at the dataset's far edges, where the
    whole-volume result has them too."""
    cum = Vec(1, 1, 1)
    grid = remote.write_grid(first)
    for k, f in enumerate(steps, start=first + 1):
        cum = Vec(*(c * v for c, v in zip(cum, f, strict=True)))
        wg = remote.write_grid(k)
        grid = Vec(*(math.lcm(g, w * c) for g, w, c in zip(grid, wg, cum, strict=True)))
    return grid


def _passes(remote: Any, steps: Sequence[Vec], itemsize: int) -> list[tuple[int, int]]:
    """The scales grouped into passes (first, last): a pass reads scale ``first`` and writes
    scales first+1 .. last.  A pass takes the next scale while one block of its grid (clipped
    to scale ``first``) stays within :data:`BLOCK_BYTES`, and always at least one scale.

    Every level is computed from the one before it, so a pass that starts from a stored scale
    gives the voxels one pass would.  One pass over a deep pyramid needed blocks of the
    coarsest chunk times its whole factor: for 64^3 chunks and 5 scales, 1024^3 voxels of
    scale 0, the whole of a 1 GiB volume in memory at once."""
    meta = remote.meta
    out: list[tuple[int, int]] = []
    first = 0
    while first < len(steps):
        shape = meta.scale(first).shape
        last = first + 1
        while last < len(steps):
            grid = _pass_grid(remote, first, steps[first:last + 1])
            if math.prod(min(g, n) for g, n in zip(grid, shape, strict=True)) * itemsize \
                    > BLOCK_BYTES:
                break
            last += 1
        out.append((first, last))
        first = last
    return out


def grid_anchor(remote: Any, scale: int, grid: Sequence[int] | None = None) -> Box:
    """The box whose start anchors the block grids of a downsample reading ``scale`` (give it
    to ``plan_blocks`` / ``chunk_boxes`` as their bounds): the scale's bounds, or, for stores
    whose pyramids lie on the grid through 0 (``pyramid_anchor`` "origin"), the bounds
    widened down to a line of that grid: to 0, or, along an axis where the bounds start below
    0, to the multiple of ``grid`` at or below the start (give the block grid's unit; the
    default, the lcm of ``scale``'s write grid and every coarser scale's write grid times its
    factor from ``scale``, is a multiple of every coarser factor).
    Blocks on it that are whole multiples of every coarser factor each give whole coarse
    voxels, and the coarse voxels of two blocks never overlap.  (The box from 0 alone cut
    off, or for a volume wholly below 0 refused, the voxels at negative coordinates.)"""
    bounds = remote.meta.scale(scale).bounds
    if remote.pyramid_anchor != "origin":
        return bounds
    if grid is None:
        steps = [_factors_between(remote.meta.scale(k - 1), remote.meta.scale(k))
                 for k in range(scale + 1, len(remote.meta.scales))]
        grid = _pass_grid(remote, scale, steps)
    start = Vec(*(min(0, a // int(g) * int(g)) for a, g in zip(bounds.start, grid,
                                                                  strict=True)))
    return Box(start, bounds.stop)


def coarse_levels(remote: Any, b: Box, steps: Sequence[Vec], first: int = 0,
                  stored: StoredGroups | None = None) -> Iterator[tuple[int, Box, np.ndarray]]:
    """Downsample box ``b`` of scale ``first`` (a block of :func:`grid_anchor`'s grid) into the
    next ``len(steps)`` scales: (scale, the box of that scale it gives, clipped to the scale's
    bounds, and its voxels), on the store's ``pyramid_anchor``.  ``stored`` (where scale
    ``first`` stores chunks, with its ``fill``) leaves its absent chunks unread
    (:func:`voxgate.absence.read_stored`)."""
    meta = remote.meta
    s0 = meta.scale(first)
    origin = remote.pyramid_anchor == "origin"
    levels = downsample_kernel(read_stored(remote, b, first, stored), steps, meta.kind,
                               start=b.start if origin else None)
    cum = Vec(1, 1, 1)
    for k, arr in enumerate(levels, start=first + 1):
        cum = Vec(*(c * f for c, f in zip(cum, steps[k - first - 1], strict=True)))
        sk = meta.scale(k)
        if origin:  # (floor divisions compose: the kernel's start at this level)
            start = Vec(*(a // c for a, c in zip(b.start, cum, strict=True)))
        else:
            start = Vec(*(o + (a - o0) // c for o, a, o0, c in zip(
                sk.offset, b.start, s0.offset, cum, strict=True)))
        target = Box(start, start + Vec(*arr.shape[-3:])).intersect(sk.bounds)
        yield k, target, arr[(..., *target.slices(start))]


def _targets(remote: Any, b: Box, steps: Sequence[Vec], first: int = 0
             ) -> Iterator[tuple[int, Box]]:
    """The boxes :func:`coarse_levels` gives of box ``b`` of scale ``first`` (the scale, and
    the box of it, clipped to its bounds), without reading or computing them: a level's shape
    is the kernel's (``ceil(shape / f)``, or on the grid through 0
    ``ceil((start + shape) / f) - start // f``)."""
    meta = remote.meta
    s0 = meta.scale(first)
    origin = remote.pyramid_anchor == "origin"
    at, shape = b.start, b.shape
    cum = Vec(1, 1, 1)
    for k, f in enumerate(steps, start=first + 1):
        cum = Vec(*(c * v for c, v in zip(cum, f, strict=True)))
        if origin:
            shape = Vec(*(-(-(a + n) // v) - a // v for a, n, v in zip(at, shape, f,
                                                                      strict=True)))
            at = Vec(*(a // v for a, v in zip(at, f, strict=True)))
            start = at
        else:
            shape = Vec(*(-(-n // v) for n, v in zip(shape, f, strict=True)))
            start = Vec(*(o + (a - o0) // c for o, a, o0, c in zip(
                meta.scale(k).offset, b.start, s0.offset, cum, strict=True)))
        yield k, Box(start, start + shape).intersect(meta.scale(k).bounds)


@dataclasses.dataclass(frozen=True)
class _Absent:
    """Where a pass's scales store chunks, for blocks of its first scale that hold none.

    ``read``: the stored chunks of the scale the pass reads, a bit per chunk where the scale
    has few enough (:func:`voxgate.absence.chunk_blocks`), with the voxel absent chunks read
    as (its ``fill``): a block is read but for its groups holding no stored chunk
    (:func:`voxgate.absence.read_stored`); or None (every block is read whole).  ``skips``: a
    block touching no stored chunk reads as 0 everywhere (the fill is 0, every bit) and every
    level of it, a mean or a mode of zeros, is 0, so it is not read at all.  ``written``: per
    scale the pass writes, where it stores chunks, or None (write every block's zeros: its
    fill is not 0, or it stores all its chunks): a skipped block's level whose chunks there
    are all absent (reading 0 already) is not written; one touching a stored chunk (of an
    earlier pyramid) is written with its zeros, as before.  Of a block read, a level's chunks (or
    shards) of only 0 are likewise left out of its write where the scale stores none
    (:func:`voxgate.absence.write_sparse`)."""

    read: StoredGroups | None
    skips: bool
    written: tuple[StoredGroups | None, ...]


def _absent_blocks(remote: Any, first: int, steps: Sequence[Vec], base: Vec, anchor: Box
                   ) -> _Absent | None:
    """What :func:`_block` needs to leave the absent chunks of the blocks it reads unread
    (and the blocks of only absent chunks, of a fill of 0, unread at all), and the chunks of
    only 0 it computes unwritten where the scale stores none, or None (every block read and
    written whole): the store cannot tell (see :func:`voxgate.absence.background_groups`).
    Blocks are read whole (``read`` None) where the scale read stores every chunk; blocks
    of only absent chunks are read (``skips`` False) where the fill is not 0 or the kernel
    makes something else than 0 of zeros (asked of it, on one block of zeros of the pass's
    whole factor)."""
    meta = remote.meta
    read = background_groups(remote, meta.scale(first).bounds, first,
                             chunk_blocks(remote, first, base), anchor.start, any_fill=True)
    cum = _cumulative(steps)
    skips = read is not None and read.fill is not None and not any(read.fill.tobytes()) \
        and not any(np.any(level) for level in downsample_kernel(
            np.zeros(tuple(cum), meta.dtype), steps, meta.kind))
    written: list[StoredGroups | None] = []
    cum = Vec(1, 1, 1)
    for k, f in enumerate(steps, start=first + 1):
        cum = Vec(*(c * v for c, v in zip(cum, f, strict=True)))
        # the blocks of scale k a block of scale first writes: ``base`` divided by the factor
        # (a whole multiple of it), on the grid through the anchor's image there
        at = meta.scale(k).offset if remote.pyramid_anchor != "origin" else Vec(
            *(a // c for a, c in zip(anchor.start, cum, strict=True)))
        # (a bit per chunk where the scale has few enough: see chunk_blocks)
        written.append(background_groups(remote, meta.scale(k).bounds, k, chunk_blocks(
            remote, k, Vec(*(max(1, b // c) for b, c in zip(base, cum, strict=True)))), at))
    if read is None and all(w is None for w in written):
        return None
    return _Absent(read, skips, tuple(written))


def _block(remote: Any, b: Box, steps: Sequence[Vec], first: int = 0,
           skip: _Absent | None = None) -> None:
    """Downsample one block of scale ``first`` into the next ``len(steps)`` scales.  A block
    that ``skip`` says holds only absent chunks (reading 0) is not read: its levels are 0,
    written only where the scale stores chunks there (see :class:`_Absent`).  Of a block
    read, the chunks ``skip`` says are absent are not (they read as the fill value), and a
    level's chunks of only the fill value are left out where that scale stores no chunk
    (blocks own whole chunks of every level: see :func:`_pass_grid`)."""
    if skip is not None and skip.skips and holds_nothing(skip.read, b):
        for k, target in _targets(remote, b, steps, first):
            held = skip.written[k - first - 1]
            if not target.is_empty() and not holds_nothing(held, target):
                remote.write(target, np.zeros(tuple(target.shape), remote.meta.dtype), k)
        return
    for k, target, arr in coarse_levels(remote, b, steps, first,
                                        None if skip is None else skip.read):
        if not target.is_empty():
            write_sparse(remote, target, arr, k,
                         None if skip is None else skip.written[k - first - 1])


def _downsample_block(spec: str, run: str, b: Box, steps: Sequence[Vec],
                      first: int = 0, skip: _Absent | None = None) -> Box:
    """A block on a dask.distributed worker: the store reopened from its spec once per worker
    process and run."""
    _block(worker_remote(spec, run), b, steps, first, skip)
    return b


_PROVENANCE = ProvenanceLog()  # (the last ProvenanceLog.KEPT volumes written)


def downsample_provenance(vol: Volume) -> Provenance | None:
    """How the last ``downsample`` of this volume's URL in this process ran."""
    return _PROVENANCE.get(vol.url)


#: how many times the server's job is started when level 0 keeps changing while it runs
SERVER_ATTEMPTS = 3


def _server_downsample(remote: Any, timeout: float = 3600.0) -> None:
    """Ask a bossDB-dialect server to downsample and wait for it.

    The job sets the status IN_PROGRESS before the POST is answered, so NOT_DOWNSAMPLED seen
    afterwards means level 0 was written while it ran or since it ended (a voxgate relay ends
    such a job NOT_DOWNSAMPLED): the coarser levels may lack that write, and the job is
    started again, up to :data:`SERVER_ATTEMPTS` times."""
    project = remote.project
    c, e, ch = remote.collection, remote.experiment, remote.channel
    deadline = time.monotonic() + timeout
    for _ in range(SERVER_ATTEMPTS):
        try:
            project.start_downsample(c, e, ch)
        except InvalidRequestError as exc:
            # bossDB runs a DOWNSAMPLED channel again for an admin only (409, "Channel is
            # already downsampled"); its status is not reset by later writes (a voxgate relay
            # resets it), so say that writes since the last run may be missing
            if "HTTP 409" in str(exc) and "already downsampled" in str(exc).lower() and \
                    project.downsample_status(c, e, ch)["status"] == "DOWNSAMPLED":
                warnings.warn(VoxgateWarning(
                    f"the server says {remote.url} is already downsampled and runs it again "
                    "for an admin token only: its coarser levels are the server's last run "
                    "(on bossDB, writes made since are not in them)"), stacklevel=3)
                return
            raise
        # (polled soon, then less often: a small job is not waited on for seconds longer than
        # it ran, a long one is polled every few seconds at most, at most half its time late)
        delay = 0.05
        while time.monotonic() < deadline:
            status = project.downsample_status(c, e, ch)["status"]
            if status == "DOWNSAMPLED":
                return
            if status == "FAILED":
                raise InvalidRequestError(f"the server's downsample of {remote.url} failed")
            if status == "NOT_DOWNSAMPLED":
                break  # written meanwhile: again
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        else:
            raise TimeoutError(f"the server's downsample of {remote.url} did not finish in "
                               f"{timeout} s")
    raise VoxgateError(
        f"the server's downsample of {remote.url} ran {SERVER_ATTEMPTS} times and each time "
        "level 0 was written while it ran, so the coarser levels may lack those writes: "
        "downsample once the writes are over")
