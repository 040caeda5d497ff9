"""Which chunks of a region a store holds, asked without reading them, for ``voxgate.copy`` and
the block-wise Services.

A store that tells absent chunks from stored ones (``Capability.CHUNK_PRESENCE``: zarr, N5,
precomputed, on disk or object storage) is asked about a region in pieces of at most
:data:`_ABSENT_PIECE` chunks (:func:`pieces`, cut along x: a precomputed layer on object storage
lists its chunk names by their x prefix), each answer told as it comes (:func:`absent_in`), so
nothing held grows with the number of chunks but the first :data:`ABSENT_LISTED` absent ones.
The answers mark, one bit per group of chunks (:class:`StoredGroups`), where stored chunks
are: a box that touches no group with its bit set touches no stored chunk and reads as the
fill value everywhere, so it need not be read.  On object storage reading an absent chunk is
a request answered "not found", tens of ms each; the listing answers a thousand chunks at once.

:func:`background_groups` is the Services' question: the groups of a region whose blocks hold
only the background label 0 where none is marked, or None when every block is to be read (the
store cannot tell, lives in this process's memory, refuses absent chunks, stores them all, or
reads something other than 0 where a chunk is absent).

:func:`write_sparse` is the other side: a write of a block that leaves out the destination's
write units (chunks or shards) holding only its fill value where the destination holds
nothing, so that a sparse volume copied, labelled or downsampled stays sparse on disk rather
than gaining a chunk of zeros for every absent chunk of the blocks it wrote.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .blockwise import iter_blocks
from .errors import CapabilityNotSupportedError
from .geometry import Box, Vec, grid_range, grow_block
from .meta import VolumeMeta
from .remotes.base import Capability, Remote, has_capability
from .remotes.memory import MemoryRemote

__all__ = [
    "ABSENT_LISTED",
    "StoredGroups",
    "absent_fill",
    "absent_in",
    "background_groups",
    "chunk_blocks",
    "group_for",
    "holds_nothing",
    "only_fill",
    "pieces",
    "read_stored",
    "write_sparse",
]

#: :func:`absent_in` keeps at most this many of a region's absent chunks (the first, sorted)
#: besides their number: a copy's report lists these
ABSENT_LISTED = 10_000
#: the absent chunks are asked for in pieces of at most this many chunks, so that the list a
#: Remote answers with stays small however many chunks the region has
_ABSENT_PIECE = 2**16
#: :func:`read_stored` reads the blocks holding stored chunks in pieces of about this many bytes
_READ_BYTES = 16 * 2**20
#: runs of group indices (per axis ``[a, b)``) cut from a mask of groups, or None (whole)
_Cut = Callable[[np.ndarray], Sequence[tuple[tuple[int, int], ...]] | None]
#: :func:`chunk_blocks` keeps a bit per chunk of a scale up to this many chunks (128 KiB of
#: bits), a bit per group of chunks beyond
CHUNK_BITS = 2**20


def pieces(region: Box, chunks: Vec, bounds: Box, most: int,
           order: Sequence[int] = (2, 1, 0)) -> Iterator[Box]:
    """``region`` cut into boxes of whole chunks (of the grid anchored at ``bounds.start``) of
    at most ``most`` chunks each (at least one line along the innermost axis), cut along the
    axes of ``order`` (voxgate axes, outermost first: the store's
    :meth:`~voxgate.remotes.base.Remote.listing_order`): a precomputed layer on object storage
    names its chunks ``x0-x1_y0-y1_z0-z1`` and lists them by the prefix of their x range (then
    y), so pieces of a few x each list each name of the directory once in all (pieces of a few
    z each listed the whole directory every time); a zarr array names them ``c/z/y/x``, so
    there pieces of a few z do."""
    o = bounds.start
    lo, hi = grid_range(region, chunks, o)
    n = [b - a for a, b in zip(lo, hi, strict=True)]
    order = tuple(order)  # (outermost first: x, then y, then z by default)
    # the outermost axis whose inner axes fit whole: it is cut, the ones outside it step by one
    d = next(d for d in range(3) if math.prod(n[a] for a in order[d + 1:]) <= most or d == 2)
    step = max(1, most // math.prod(n[a] for a in order[d + 1:]))
    for outer in itertools.product(*(range(lo[a], hi[a]) for a in order[:d])):
        for i in range(lo[order[d]], hi[order[d]], step):
            a, b = list(lo), list(hi)
            for axis, x in zip(order[:d], outer, strict=True):
                a[axis], b[axis] = x, x + 1
            a[order[d]], b[order[d]] = i, min(i + step, hi[order[d]])
            start = Vec(*(s + x * c for s, x, c in zip(o, a, chunks, strict=True)))
            stop = Vec(*(s + x * c for s, x, c in zip(o, b, chunks, strict=True)))
            yield Box(start, stop).intersect(region)


def absent_in(remote: Remote, region: Box, scale: int,
              each: Callable[[Box, list[Vec]], None] | None = None) -> tuple[list[Vec], int]:
    """The chunks of ``remote``'s ``scale`` absent inside ``region``: the first
    :data:`ABSENT_LISTED` in grid order (z, y, x), and how many there are; asked for in pieces
    (:func:`pieces`), each piece's sorted list merged into the first ones found so far, so
    that what is held stays small however many chunks the region has.  ``each(piece, found)``
    is told every piece's answer as it comes."""
    sc = remote.meta.scale(scale)
    listed: list[Vec] = []
    total = 0
    order = remote.listing_order(scale)
    for piece in pieces(region, sc.chunks, sc.bounds, _ABSENT_PIECE, order):
        found = remote.absent_chunks(piece, scale)
        if each is not None:
            each(piece, found)
        total += len(found)
        listed = list(itertools.islice(heapq.merge(listed, found), ABSENT_LISTED))
    return listed, total


def absent_fill(remote: Remote, chunk: Sequence[int], scale: int, region: Box
                ) -> np.ndarray | None:
    """What ``remote``'s ``scale`` reads where its chunk ``chunk``, said to be absent, lies
    inside ``region``: one voxel (channels first, shape ``(..., 1, 1, 1)``); None when that
    chunk, read whole (one request, answered "not found" on object storage, as one voxel's
    is), does not read as one value everywhere, or not as the volume's fill value: then it is
    not absent, whatever the store said, and nothing may be skipped on that store's word (a
    chunk wrongly called absent would otherwise spread its value over every block of absent
    chunks).  Every comparison is bit for bit (-0.0 is not 0.0, a NaN fill is itself)."""
    sc = remote.meta.scale(scale)
    start = Vec(*(o + i * c for o, i, c in zip(sc.bounds.start, chunk, sc.chunks, strict=True)))
    data = np.ascontiguousarray(remote.read(
        Box(start, start + sc.chunks).intersect(region).intersect(sc.bounds), scale))
    unit = f"u{data.dtype.itemsize}"
    raw = data.reshape(-1).view(unit)
    fill = np.asarray(remote.meta.fill_value).astype(data.dtype).reshape(1).view(unit)[0]
    if not raw.size or not bool(np.all(raw == fill)):
        return None
    return data[..., :1, :1, :1].copy()


class StoredGroups:
    """Where a scale's chunks inside ``region`` are stored, as one bit per group of
    ``group`` chunks per axis (on the chunk grid of ``chunks`` anchored at ``origin``): set
    when the group holds a stored chunk.  Built from the pieces of a scan of absent chunks
    (:meth:`mark`, given to :func:`absent_in`), so it costs no request of its own; a box that
    touches no group with its bit set touches no stored chunk (:meth:`stored_in`), holds only
    the fill value and need not be read.  Groups the size of the blocks a run reads
    (:func:`group_for`) make one bit per block.  Small, and it pickles: a cluster's workers
    get it with the function they run."""

    def __init__(self, region: Box, chunks: Vec, origin: Vec, group: Vec) -> None:
        self.region, self.chunks, self.origin, self.group = region, chunks, origin, group
        first, stop = grid_range(region, chunks, origin)
        self.lo = tuple(f // g for f, g in zip(first, group, strict=True))
        self.shape = tuple((s - 1) // g - lo + 1
                           for s, g, lo in zip(stop, group, self.lo, strict=True))
        self.bits = np.zeros((math.prod(self.shape) + 7) // 8, np.uint8)
        #: what the scale reads where a chunk is absent, one voxel (shape (1, 1, 1)), when
        #: :func:`background_groups` was asked for it (``any_fill``), else None
        self.fill: np.ndarray | None = None

    def _set(self, idx: Sequence[np.ndarray]) -> None:
        """Set the bits of the groups whose indices (per axis, absolute) are ``idx``."""
        flat = np.unique(np.ravel_multi_index(
            tuple(np.asarray(i, np.int64) - lo for i, lo in zip(idx, self.lo, strict=True)),
            self.shape))
        np.bitwise_or.at(self.bits, flat >> 3, (1 << (flat & 7)).astype(np.uint8))

    def mark(self, piece: Box, found: list[Vec]) -> None:
        """Take a piece of the scan (whole chunks of ``region``) and its absent chunks."""
        lo, hi = grid_range(piece, self.chunks, self.origin)
        n = [b - a for a, b in zip(lo, hi, strict=True)]
        if len(found) >= math.prod(n):
            return  # nothing stored
        if not found:  # all stored: every group the piece touches
            axes = [np.arange(a // g, (b - 1) // g + 1)
                    for a, b, g in zip(lo, hi, self.group, strict=True)]
            self._set([m.reshape(-1) for m in np.meshgrid(*axes, indexing="ij")])
            return
        # a flag per chunk of the piece, then per group (the groups' runs of it or-ed)
        held = np.ones(n, bool)
        at = np.fromiter(itertools.chain.from_iterable(found), np.int64,
                         3 * len(found)).reshape(-1, 3) - np.asarray(lo, np.int64)
        held[at[:, 0], at[:, 1], at[:, 2]] = False
        first = []
        for axis, (a, b, g) in enumerate(zip(lo, hi, self.group, strict=True)):
            # where each group's run starts along the axis
            runs = np.unique(np.r_[0, np.arange(-(-a // g) * g, b, g) - a])
            held = np.logical_or.reduceat(held, runs, axis=axis)
            first.append(a // g)
        self._set([i + f for i, f in zip(np.nonzero(held), first, strict=True)])

    def _mask(self, part: Box) -> tuple[np.ndarray, list[int]]:
        """Whether each group ``part`` (inside ``region``) touches holds a stored chunk (a
        bool array, z, y, x), and the index (absolute) of its first group per axis."""
        lo, hi = grid_range(part, self.chunks, self.origin)
        first = [a // g for a, g in zip(lo, self.group, strict=True)]
        axes = [np.arange(f - base, (b - 1) // g - base + 1, dtype=np.int64)
                for f, b, g, base in zip(first, hi, self.group, self.lo, strict=True)]
        ny, nx = self.shape[1:]
        flat = (axes[0][:, None, None] * ny + axes[1][None, :, None]) * nx \
            + axes[2][None, None, :]
        return ((self.bits[flat >> 3] >> (flat & 7).astype(np.uint8)) & 1).astype(bool), first

    def stored_in(self, part: Box) -> bool:
        """Whether a group that ``part`` touches holds a stored chunk.  ``part`` may reach
        past ``region`` (a block with its halo): what lies outside the scanned region counts
        as stored (it was not asked about)."""
        if part.is_empty():
            return False
        if not self.region.contains(part):
            return True
        return bool(self._mask(part)[0].any())

    def all_stored(self, part: Box) -> bool:
        """Whether every group that ``part`` touches holds a stored chunk (so ``part`` is
        read whole)."""
        return not self.region.contains(part) or bool(self._mask(part)[0].all())

    def _boxes(self, part: Box, runs: Sequence[tuple[tuple[int, int], ...]],
               first: Sequence[int]) -> list[Box]:
        """The boxes of ``runs`` (per axis ``[a, b)`` in groups from ``first``), clipped to
        ``part``."""
        size = [g * c for g, c in zip(self.group, self.chunks, strict=True)]
        return [Box(Vec(*(o + (f + a) * s for o, f, (a, _), s in zip(
                        self.origin, first, run, size, strict=True))),
                    Vec(*(o + (f + b) * s for o, f, (_, b), s in zip(
                        self.origin, first, run, size, strict=True)))).intersect(part)
                for run in runs]

    def _pieces(self, part: Box, cut: _Cut) -> list[Box]:
        """``part`` as the boxes ``cut`` makes of the mask of the groups it touches holding a
        stored chunk (runs of group indices; None: ``part`` whole): ``[part]`` where every
        group holds one or ``part`` reaches past ``region`` (it was not asked about), none
        for an empty ``part``."""
        if part.is_empty():
            return []
        if not self.region.contains(part):
            return [part]
        held, first = self._mask(part)
        if held.all():
            return [part]
        runs = cut(held)
        return [part] if runs is None else self._boxes(part, runs, first)

    def stored_runs(self, part: Box) -> list[Box]:
        """Boxes (clipped to ``part``, inside ``region``) covering exactly the groups of
        ``part`` that hold a stored chunk, neighbours merged (:func:`_runs`): few reads, each
        of many chunks (a store reads a box's chunks concurrently), none of an absent group."""
        return self._pieces(part, _runs)

    def reads(self, part: Box) -> list[Box]:
        """The boxes to read of ``part``: its runs of stored groups (:meth:`stored_runs`)
        where they are one run, or where at least half the groups it touches hold no stored
        chunk; else ``part`` whole, its few absent chunks read too (on local disk a missing
        file costs less than another read; on object storage a few 404s among many GETs
        made at once cost no time)."""
        def cut(held: np.ndarray) -> list[tuple[tuple[int, int], ...]] | None:
            runs = _runs(held)
            few = len(runs) > 1 and 2 * int(np.count_nonzero(held)) > held.size
            return None if few else runs

        return self._pieces(part, cut)


def holds_nothing(groups: StoredGroups | None, box: Box) -> bool:
    """Whether ``groups`` say ``box`` touches no stored chunk, so that it reads as the fill
    value everywhere and need not be read: never when ``groups`` is None (not known: read it)
    or ``box`` reaches past their region (it was not asked about)."""
    return groups is not None and not groups.stored_in(box)


def chunk_blocks(remote: Remote, scale: int, base: Sequence[int]) -> Vec:
    """The blocks to give :func:`background_groups` for a run of blocks of ``base`` over
    ``remote``'s ``scale`` that reads those blocks through :func:`read_stored`: whole chunks
    (a bit per chunk, so that a block holding some stored chunks reads no absent one), grown
    toward ``base`` (which they divide) only while the scale has more than
    :data:`CHUNK_BITS` of them: the bits stay as few as the blocks' or fewer than that."""
    sc = remote.meta.scale(scale)
    base = [int(b) for b in base]
    fine = [c if b % c == 0 else b for c, b in zip(sc.chunks, base, strict=True)]

    def groups() -> int:
        return math.prod(-(-n // f) + 1 for n, f in zip(sc.shape, fine, strict=True))

    while groups() > CHUNK_BITS and fine != base:
        # the axis with the most groups that can still grow, by its least factor left
        axis = max((a for a in range(3) if fine[a] < base[a]),
                   key=lambda a: sc.shape[a] / fine[a])
        left = base[axis] // fine[axis]
        fine[axis] *= next(p for p in range(2, left + 1) if left % p == 0)
    return Vec(*fine)


def group_for(block: Sequence[int], anchor: Sequence[int], chunks: Vec,
              origin: Vec) -> Vec:
    """Groups of chunks (per axis, in chunks) whose lines fall on the lines of a grid of
    ``block`` anchored at ``anchor`` (the blocks a run reads), on the chunk grid of ``chunks``
    anchored at ``origin``: one bit of :class:`StoredGroups` per block where the blocks are
    whole chunks on the chunk grid, else groups as large as both grids allow (one chunk at
    least; a block then looks at the few groups it touches)."""
    out = []
    for b, a, c, o in zip(block, anchor, chunks, origin, strict=True):
        common = math.gcd(int(b), int(a) - int(o))  # (gcd(b, 0) is b)
        out.append(common // c if common % c == 0 else 1)
    return Vec(*out)


def background_groups(remote: Remote, region: Box, scale: int, block: Sequence[int],
                      anchor: Sequence[int] | None = None, *, any_fill: bool = False
                      ) -> StoredGroups | None:
    """Where ``remote``'s ``scale`` stores chunks inside ``region``, for a block-wise Service
    that runs blocks of ``block`` on a grid anchored at ``anchor`` (default the chunk grid's
    own origin): a box whose groups hold no stored chunk (``not groups.stored_in(box)``) holds
    only the background label 0, and its answer is known without reading it.

    None (read every block) when the store cannot tell absent chunks from stored ones, lives
    in this process's memory (reading it costs nothing to skip; a wrapped numpy array counts
    no chunk as written), refuses absent chunks (``missing="error"``: its reads must raise as
    before), has channels, stores every chunk of the region, or reads something other than 0
    (every byte zero) where a chunk is absent: the first absent chunk is read to know
    (:func:`absent_fill`: it must read as the fill value everywhere).  With ``any_fill`` a
    fill value other than 0 is taken too (a box touching no stored chunk then reads as it,
    not as 0): the groups' ``fill`` is that voxel, as the store reads it, bit for bit."""
    if (region.is_empty() or isinstance(remote, MemoryRemote) or remote.missing != "fill"
            or remote.meta.num_channels != 1
            or not has_capability(remote, Capability.CHUNK_PRESENCE)):
        return None
    sc = remote.meta.scale(scale)
    at = sc.bounds.start if anchor is None else Vec.of(anchor)
    groups = StoredGroups(region, sc.chunks, sc.bounds.start,
                          group_for(block, at, sc.chunks, sc.bounds.start))
    try:
        found, n_absent = absent_in(remote, region, scale, groups.mark)
    except CapabilityNotSupportedError:  # (a wrapper that declares the capability, not the call)
        return None
    if not n_absent:
        return None
    fill = absent_fill(remote, found[0], scale, region)
    # (-0.0 and NaN too: only a fill of all zero bits, unless any_fill)
    if fill is None or (not any_fill and any(fill.tobytes())):
        return None
    groups.fill = fill
    return groups


def read_stored(remote: Remote, region: Box, scale: int, groups: StoredGroups | None,
                out: np.ndarray | None = None, at: Sequence[int] | None = None) -> np.ndarray:
    """``region`` of ``remote``'s ``scale``, read in blocks of whole chunks of about
    :data:`_READ_BYTES` (one piece if no larger) into ``out`` (default a new array of the
    voxel absent chunks read as, ``groups.fill``, bit for bit; zeros without one) with its
    first voxel at ``at`` there (default 0), the groups holding no stored chunk (``groups``)
    left as they are: a given ``out`` must hold zeros there, the background they read as.  A
    piece whose groups do not all hold stored chunks is read in runs of stored groups where
    they are one run or the groups holding none are at least half
    (:meth:`StoredGroups.reads`: groups of one chunk, :func:`chunk_blocks`, then read no
    absent chunk at all), else whole.  Without ``out``, a region whose groups all hold stored
    chunks (or no ``groups``: :func:`background_groups` said to read everything) is one read,
    as before."""
    # (in this process's memory nothing is saved by skipping: one read, a slice)
    whole = groups is None or isinstance(remote, MemoryRemote) or groups.all_stored(region)
    sc = remote.meta.scale(scale)
    # a region of one piece is one read when StoredGroups.reads says so (a few absent chunks
    # among stored ones), not a read per block of the chunk grid it crosses: a block with its
    # halo, or a seam slab, touching one absent chunk was read in up to 8 pieces
    one = region.size * remote.meta.dtype.itemsize <= _READ_BYTES
    parts = None if whole or not one or groups is None else groups.reads(region)
    whole = whole or parts == [region]
    if out is None and whole:
        return remote.read(region, scale)
    if out is None:
        out = np.zeros(tuple(region.shape), remote.meta.dtype)
        if groups is not None and groups.fill is not None and any(groups.fill.tobytes()):
            np.copyto(out, groups.fill.reshape(1, 1, 1))  # (same dtype: its bits as stored)
    first = Vec(0, 0, 0) if at is None else Vec.of(at)
    todo: Iterable[Box]
    if one:
        todo = [region] if whole or parts is None else parts
    else:
        base = grow_block(sc.chunks, remote.meta.dtype.itemsize, region.shape, _READ_BYTES)
        todo = (part for b in iter_blocks(region, base, sc.bounds)
                for part in ([b.box] if whole or groups is None else groups.reads(b.box)))
    for part in todo:
        out[part.slices(region.start - first)] = remote.read(part, scale)
    return out


def _fill_bits(meta: VolumeMeta) -> tuple[np.dtype, int]:
    """The unsigned type of ``meta``'s voxels' width and its fill value's bits in it: voxels
    are compared by their bits (-0.0 is not +0.0, a NaN fill is itself, as stored)."""
    fill = np.asarray(meta.fill_value).astype(meta.dtype)
    unit = np.dtype(f"u{fill.dtype.itemsize}")
    return unit, int(fill.reshape(1).view(unit)[0])


def only_fill(data: np.ndarray, meta: VolumeMeta) -> bool:
    """Whether every voxel of ``data`` is, bit for bit, what ``meta``'s store reads where a
    chunk is absent: a block of -0.0 is not a block of +0.0 fill (``==`` says it is), and a
    block of the NaN fill is one (``==`` says it is not)."""
    if data.dtype != meta.dtype:
        return False
    unit, fill = _fill_bits(meta)
    raw = np.ascontiguousarray(data).reshape(-1).view(unit)
    return bool(np.all(raw == unit.type(fill)))


def _unit_edges(box: Box, grid: Vec, origin: Vec, bounds: Box
                ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per axis, the write units (cells of ``grid`` anchored at ``origin``) that ``box``
    touches: where each starts and stops inside ``box`` (relative to its start), and where
    the whole unit, clipped to ``bounds``, starts and stops (absolute)."""
    lo, hi = grid_range(box, grid, origin)
    out = []
    for a, b, o, g, s, e, bs, be in zip(lo, hi, origin, grid, box.start, box.stop,
                                         bounds.start, bounds.stop, strict=True):
        cells = o + np.arange(a, b, dtype=np.int64) * g
        out.append((np.maximum(cells, s) - s, np.minimum(cells + g, e) - s,
                    np.maximum(cells, bs), np.minimum(cells + g, be)))
    return out


def _fill_units(data: np.ndarray, edges: Sequence[tuple[np.ndarray, ...]], unit: np.dtype,
                fill: int) -> np.ndarray:
    """Which units of ``data`` (cut at ``edges``, over its last three axes, channels and all)
    hold only the fill value's bits ``fill``: a bool per unit.  Each unit's first voxel is
    looked at first, so a dense block (no unit starting with the fill value) costs next to
    nothing; only the units that do are looked at whole."""
    raw = data.view(unit) if data.dtype.itemsize == unit.itemsize else data
    at: tuple[Any, ...] = (Ellipsis, *np.ix_(*(e[0] for e in edges)))
    first = raw[at]
    held = first == unit.type(fill)
    if raw.ndim > 3:
        held = held.reshape((-1, *held.shape[-3:])).all(axis=0)
    out = np.zeros(held.shape, bool)
    for z, y, x in zip(*np.nonzero(held), strict=True):
        (za, zb), (ya, yb), (xa, xb) = ((int(e[0][i]), int(e[1][i]))
                                        for e, i in zip(edges, (z, y, x), strict=True))
        cell = raw[..., za:zb, ya:yb, xa:xb]
        # (its first plane before the rest: a unit that is not all fill is most often told
        # by it, at a fraction of the unit's voxels)
        out[z, y, x] = bool(np.all(cell[..., :1, :, :] == fill)) and bool(np.all(cell == fill))
    return out


def _runs(keep: np.ndarray) -> list[tuple[tuple[int, int], ...]]:
    """Boxes (per axis ``[a, b)``, in unit indices) covering exactly the set cells of
    ``keep``: runs along the last axis, merged along each axis before it where the rows
    beside each other have the same runs (a block missing a few units is written in a few
    writes, not one per unit)."""
    if keep.ndim == 1:
        at = np.flatnonzero(np.diff(np.r_[0, keep.astype(np.int8), 0]))
        return [((int(a), int(b)),) for a, b in zip(at[::2], at[1::2], strict=True)]
    out: list[tuple[tuple[int, int], ...]] = []
    prev: list[tuple[tuple[int, int], ...]] = []
    start = 0
    for i in range(keep.shape[0] + 1):
        cur = _runs(keep[i]) if i < keep.shape[0] else []
        if cur != prev:
            out += [((start, i), *r) for r in prev]
            prev, start = cur, i
    return out


def leaves_fill_absent(remote: Remote) -> bool:
    """Whether a write to ``remote`` may leave out chunks of only the fill value where it holds
    nothing: not where its peers' readers refuse absent chunks (``keeps_fill_chunks``:
    precomputed, for CloudVolume), which are written, fill value and all."""
    return not remote.keeps_fill_chunks


def write_sparse(remote: Remote, box: Box, data: np.ndarray, scale: int,
                 absent: bool | StoredGroups | None,
                 write: Callable[[Box, np.ndarray], None] | None = None) -> tuple[int, int]:
    """Write ``data`` (channels first, if any) at ``box`` of ``remote``'s ``scale``, leaving
    out the write units (cells of :meth:`~voxgate.remotes.base.Remote.write_grid` anchored
    at :meth:`~voxgate.remotes.base.Remote.grid_bounds`, clipped to the box and the scale's
    bounds) that hold only the store's fill value, bit for bit (:func:`only_fill`), where
    leaving one out is the same as writing it: the store holds nothing there, so it reads as
    the fill value already.  Returns how many units were left out and their bytes.

    ``absent`` says where the store holds nothing: None (or False) nowhere known, so ``data``
    is written whole, in one write, as a plain write; True everywhere the units touched
    reach, and nothing else writes them (a store this run created, where this write alone
    writes these units: a block whose units reach past ``box`` owns them up to the region's
    edge); or the store's :class:`StoredGroups`, asked before anything was written, of a
    run whose blocks own their units: a unit is left out where no group it touches holds a
    stored chunk (:func:`holds_nothing`), and never when it reaches past ``box`` (its other
    part may be another writer's, and a unit written in part is read whole and rewritten).
    A unit holding stale data is therefore always written, fill value and all.

    Where no unit is left out it is one write, as before; else one write per run of units
    (:func:`_runs`).  A store whose ``keeps_fill_chunks`` is set (precomputed: CloudVolume's
    readers refuse absent chunks) is always written whole.

    ``write(box, data)`` makes each write (default: ``remote.write`` at ``scale``; a Volume's
    own write, with its guards, hooks and partial-write report, for a caller writing through
    one); ``remote`` is asked only for its metadata and write grid."""
    if write is None:
        def write(part: Box, block: np.ndarray) -> None:
            remote.write(part, block, scale)
    if (absent is None or absent is False or box.is_empty() or data.dtype != remote.meta.dtype
            or not leaves_fill_absent(remote)):
        write(box, data)
        return 0, 0
    bounds = remote.meta.scale(scale).bounds
    anchor = remote.grid_bounds(scale)
    edges = _unit_edges(box, remote.write_grid(scale), anchor.start, bounds.intersect(anchor))
    unit, fill = _fill_bits(remote.meta)
    skip = _fill_units(data, edges, unit, fill)
    if isinstance(absent, StoredGroups):
        for z, y, x in zip(*np.nonzero(skip), strict=True):
            cell = Box(*(Vec(*(int(e[j][i]) for e, i in zip(edges, (z, y, x), strict=True)))
                         for j in (2, 3)))
            if not box.contains(cell) or absent.stored_in(cell):
                skip[z, y, x] = False
    if not skip.any():
        write(box, data)
        return 0, 0
    for run in _runs(~skip):
        part = Box(Vec(*(box.start[axis] + int(edges[axis][0][a]) for axis, (a, _) in
                         enumerate(run))),
                   Vec(*(box.start[axis] + int(edges[axis][1][b - 1]) for axis, (_, b) in
                         enumerate(run))))
        write(part, np.ascontiguousarray(data[(..., *part.slices(box.start))]))
    left = 0
    for z, y, x in zip(*np.nonzero(skip), strict=True):
        sizes = [int(e[1][i] - e[0][i]) for e, i in zip(edges, (z, y, x), strict=True)]
        left += math.prod(sizes)
    per_voxel = data.dtype.itemsize * math.prod(data.shape[:-3])
    return int(skip.sum()), left * per_voxel
