"""connected_components: label the connected regions of a label (or binary) volume.

cc3d labels each block; the labels of touching blocks are joined with a union-find over the
voxel pairs that meet across block faces, edges and corners (as the connectivity says), and a
last pass relabels every block.  Components are numbered 1, 2, ... in the order of their first
voxel in a C-order (z, y, x) scan, in the block-wise and the whole-volume path alike, so the
result equals the whole-volume answer exactly whatever the block size.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidRequestError
from ..geometry import Box, Vec, grow_block
from ..parallel import run_blocks
from ..volume import Volume
from ._common import (
    ArrayResult,
    Provenance,
    as_volume,
    block_boxes,
    progress_bar,
    region_meta,
    resolve_output,
)

__all__ = [
    "canonical_order",
    "connected_components",
    "connected_components_kernel",
    "connected_components_provenance",
]

#: blocks grow toward this many bytes of input
BLOCK_BYTES = 64 * 2**20
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


def connected_components_kernel(labels: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """cc3d on one in-memory array, canonically numbered (uint64)."""
    if connectivity not in _CONNECTIVITY:
        raise InvalidRequestError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    return canonical_order(_cc3d(labels, connectivity))


def _cc3d(labels: np.ndarray, connectivity: int) -> np.ndarray:
    import cc3d

    # cc3d's own narrow output then one cast is 2x faster than asking it for uint64 (measured
    # at 512^3); ids stay uint64 end to end
    out = cc3d.connected_components(  # type: ignore[call-overload]
        np.ascontiguousarray(labels), connectivity=connectivity)
    return np.asarray(out).astype(np.uint64, copy=False)


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
    block: Sequence[int] | None = None,
    workers: int | None = None,
    progress: bool = False,
    prefer: str = "auto",
    overwrite: bool = False,
    **create_options: Any,
) -> Any:
    """Label connected regions of ``source`` (any non-zero value; equal values connect).

    ``out``: None returns a numpy array; a URL creates that volume (uint64 segmentation with
    the source's scale-0 geometry; it must not exist unless ``overwrite``); a writable Volume
    is written in place.  Runs block by block (``block`` in voxels) with labels joined across
    block borders, so the result equals the whole-volume answer.
    """
    t0 = time.perf_counter()
    if connectivity not in _CONNECTIVITY:
        raise InvalidRequestError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    src = as_volume(source)
    _no_server_path(prefer)
    region = src.bounds if src.ndim == 3 else None
    if region is None or any(a.step != 1 for a in src._axes):
        raise InvalidRequestError("connected_components needs a 3-D view with step 1")
    scale = src.scale
    grid = src.chunks
    base = Vec.of(block) if block is not None else grow_block(
        grid, max(8, src.dtype.itemsize), region.shape, BLOCK_BYTES)
    blocks = list(block_boxes(region, base))
    if len(blocks) == 1 and out is None and not create_options:
        # one block in memory: cc3d's own numbering is already the canonical one
        data = source if isinstance(source, np.ndarray) else src.remote.read(region, scale)
        cc = _cc3d(data, connectivity)
        return ArrayResult(cc, Provenance("connected_components", "local", src.url, {
            "connectivity": connectivity, "blocks": 1, "components": int(cc.max(initial=0)),
            "seconds": round(time.perf_counter() - t0, 3)}))

    def uint64_covering_region(vol: Volume) -> None:
        if vol.dtype != np.uint64 or vol.scale_meta.bounds != region or vol.scale != 0:
            raise InvalidRequestError(
                f"out must be a uint64 volume covering {region!r} at scale 0; {vol.url} is "
                f"{vol.dtype.name} covering {vol.scale_meta.bounds!r}")

    written = resolve_output(out, region_meta(src, region, np.uint64, "segmentation"),
                             overwrite=overwrite, options=create_options,
                             check=uint64_covering_region)
    target = written.remote
    result_volume = None if out is None else written
    shape = tuple(region.shape)
    reader = src.remote

    # pass 1: label each block on its own
    counts: dict[Box, int] = {}
    firsts: dict[Box, np.ndarray] = {}

    def label(b: Box) -> None:
        cc = _cc3d(reader.read(b, scale), connectivity)
        n = int(cc.max(initial=0))
        fi = np.zeros(n + 1, dtype=np.int64)
        if n:
            # cc3d numbers components by their first voxel in memory (C) order, so label j
            # first appears where the running maximum first reaches j: O(n), no sort
            run = np.maximum.accumulate(cc.ravel())
            pos = np.searchsorted(run, np.arange(1, n + 1, dtype=run.dtype))
            local = np.stack(np.unravel_index(pos, cc.shape), axis=1) + np.asarray(
                tuple(b.start - region.start))
            fi[1:] = np.ravel_multi_index(local.T, shape)
        counts[b], firsts[b] = n, fi
        target.write(b, cc, 0)

    with progress_bar(progress, 3 * len(blocks), "connected components") as bar:
        _run(label, blocks, workers, bar)
        offsets: dict[Box, int] = {}
        total = 0
        for b in blocks:
            offsets[b] = total
            total += counts[b]
        first_index = np.full(total + 1, np.iinfo(np.int64).max, dtype=np.int64)
        for b in blocks:
            n = counts[b]
            first_index[offsets[b] + 1: offsets[b] + n + 1] = firsts[b][1:]

        def owner_offset(start: Vec) -> int:
            return offsets[_block_at(start, region, base)]

        # pass 2: voxel pairs across block borders that must join
        pairs: list[np.ndarray] = []

        def global_labels(box: Box) -> np.ndarray:
            lab = np.zeros(tuple(box.shape), dtype=np.uint64)
            for nb in _touching(box, region, base):
                part = nb.intersect(box)
                local = target.read(part, 0)
                off = np.uint64(owner_offset(nb.start))
                lab[part.slices(box.start)] = np.where(local > 0, local + off, 0)
            return lab

        def join(b: Box) -> None:
            # only voxel pairs across this block's upper faces: every border between two
            # blocks is the upper face of one of them
            found = []
            for axis in range(3):
                if b.stop[axis] >= region.stop[axis]:
                    continue
                lo = list(b.start - _ONE)
                hi = list(b.stop + _ONE)
                lo[axis], hi[axis] = b.stop[axis] - 1, b.stop[axis] + 1
                slab = Box(lo, hi).intersect(region)
                inp = reader.read(slab, scale)
                lab = global_labels(slab)
                inner = [slice(a - s0, e - s0) for a, e, s0 in zip(b.start, b.stop, slab.start,
                                                                    strict=True)]
                inner[axis] = slice(0, 1)
                for d in _neighbours(connectivity, axis):
                    a_sl, b_sl = _shifted(tuple(inner), d, lab.shape)
                    if a_sl is None or b_sl is None:
                        continue
                    la, lb = lab[a_sl], lab[b_sl]
                    m = (la != lb) & (la > 0) & (lb > 0) & (inp[a_sl] == inp[b_sl])
                    if m.any():
                        found.append(np.stack([la[m], lb[m]], axis=1))
            if found:
                pairs.append(np.unique(np.concatenate(found), axis=0))

        _run(join, blocks, workers, bar)
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
        rank = np.zeros(total + 1, dtype=np.uint64)
        rank_of_root = np.zeros(total + 1, dtype=np.uint64)
        rank_of_root[order] = np.arange(1, len(order) + 1, dtype=np.uint64)
        rank[1:] = rank_of_root[roots[1:]]

        # pass 3: rewrite every block with the final numbers
        def relabel(b: Box) -> None:
            n = counts[b]
            table = np.zeros(n + 1, dtype=np.uint64)
            table[1:] = rank[offsets[b] + 1: offsets[b] + n + 1]
            target.write(b, table[target.read(b, 0)], 0)

        _run(relabel, blocks, workers, bar)
    prov = Provenance("connected_components", "local", src.url, {
        "connectivity": connectivity, "blocks": len(blocks), "components": len(order),
        "seconds": round(time.perf_counter() - t0, 3)})
    if result_volume is None:
        arr = target.read(Box(region.start, region.stop), 0)
        return ArrayResult(arr, prov)
    _PROVENANCE[result_volume.url] = prov
    return result_volume


_PROVENANCE: dict[str, Provenance] = {}


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


def _run(fn: Any, blocks: list[Box], workers: int | None, bar: progress_bar) -> None:
    res = run_blocks(fn, blocks, workers=workers, on_done=lambda _b, _o: bar.advance())
    if res.failed:
        raise res.failed[0][1]


def _block_at(start: Vec, region: Box, base: Vec) -> Box:
    g = [(s - r) // b for s, r, b in zip(start, region.start, base, strict=True)]
    s = Vec(*(r + i * b for r, i, b in zip(region.start, g, base, strict=True)))
    return Box(s, s + base).intersect(region)


def _touching(ext: Box, region: Box, base: Vec) -> list[Box]:
    lo = [(a - r) // b for a, r, b in zip(ext.start, region.start, base, strict=True)]
    hi = [(e - 1 - r) // b for e, r, b in zip(ext.stop, region.start, base, strict=True)]
    out = []
    for idx in itertools.product(*(range(a, b + 1) for a, b in zip(lo, hi, strict=True))):
        s = Vec(*(r + i * b for r, i, b in zip(region.start, idx, base, strict=True)))
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
