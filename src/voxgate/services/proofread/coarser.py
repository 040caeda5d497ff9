"""The coarser scales of an edited volume: the blocks an edit rewrote are downsampled again into
every coarser scale the store keeps (as ``voxgate.downsample`` computes them), and the coarse
voxels they replace are saved in the edit's history, so ``undo`` restores every scale.

A store whose server computes the coarser scales (``Capability.SERVER_DOWNSAMPLE``: bossDB)
takes no client writes there: its coarser scales wait for ``voxgate.downsample(seg)``, and the
edit's provenance says so (``coarser_scales="stale"``).  A store that rebuilds them itself from
every scale-0 write (``Capability.DERIVED_SCALES``: a DVID labelmap with scales) has done so
when the edit's write returns: ``coarser_scales="derived"``, nothing written or saved here (an
undo's write of scale 0 makes the store rebuild them again)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ...geometry import Box, Vec, chunk_boxes
from ...remotes.base import Capability, has_capability
from ...volume import Volume
from ..proofread_history import History


def coarser_state(vol: Volume) -> str | None:
    """What an edit of ``vol`` does to the coarser scales: None (there are none), "updated"
    (recomputed here), "derived" (the store rebuilt them from the write itself) or "stale"
    (the server recomputes them on ``voxgate.downsample``)."""
    if vol.scale + 1 >= len(vol.remote.meta.scales):
        return None
    if has_capability(vol.remote, Capability.DERIVED_SCALES):
        return "derived"
    if has_capability(vol.remote, Capability.SERVER_DOWNSAMPLE):
        return "stale"
    return "updated"


def update_coarser(vol: Volume, hist: History, n: int, written: Sequence[Box]) -> int:
    """Downsample the ``written`` blocks of ``vol``'s scale into every coarser scale and save
    the coarse voxels replaced under edit ``n``.  Returns the coarse blocks written."""
    from ..downsample import _cumulative, _factors_between, coarse_levels, grid_anchor

    if not written or coarser_state(vol) != "updated":
        return 0
    remote = vol.remote
    meta = remote.meta
    s = vol.scale
    top = len(meta.scales) - 1
    steps = [_factors_between(meta.scale(k - 1), meta.scale(k)) for k in range(s + 1, top + 1)]
    cum = _cumulative(steps)
    fine = meta.scale(s)
    grid = remote.write_grid(s)
    # cells on downsample's block grid (grid_anchor), whole multiples of the coarsest factor:
    # each coarse voxel then comes from one cell only, computed exactly as a whole-volume
    # downsample does
    cell = Vec(*(c * max(1, math.ceil(g / c)) for g, c in zip(grid, cum, strict=True)))
    cells: dict[Vec, Box] = {}
    for b in written:
        for g, box in chunk_boxes(b, cell, grid_anchor(remote, s)):
            cells.setdefault(g, box.intersect(fine.bounds))
    # cell by cell (memory: one cell and its coarse voxels): the cells' coarse boxes are
    # disjoint, so each one's old voxels, saved before its write, are those before this edit
    count = 0
    for g in sorted(cells):
        for k, target, arr in coarse_levels(remote, cells[g], steps, s):
            if target.is_empty():
                continue
            new = np.ascontiguousarray(arr, dtype=meta.dtype)
            old = remote.read(target, k)
            if not np.array_equal(old, new):
                hist.save_block(n, target, old, scale=k, changed=new != old)
                remote.write(target, new, k)
                count += 1
    return count


def coarser_step(vol: Volume, hist: History, n: int, written: Sequence[Box],
                 label: str) -> dict[str, object]:
    """:func:`update_coarser` after an edit wrote ``written``; what it did, for the edit's
    provenance.  A failure there marks the edit partial (undo restores what was written)."""
    from ...errors import PartialWriteError

    state = coarser_state(vol)
    if state is None:
        return {}
    try:
        count = update_coarser(vol, hist, n, written)
    except Exception as exc:
        hist.update(n, status="partial", blocks=len(written))
        raise PartialWriteError(
            f"{label} of {vol.url}: scale {vol.scale} was edited ({len(written)} block(s)) but "
            f"updating its coarser scales failed ({exc}); voxgate.undo restores what was "
            "written, voxgate.downsample recomputes the coarser scales",
            written=list(written), failed=[]) from exc
    if count:
        _forget_coarser_stats(vol)
    return {"coarser_scales": state, "coarse_blocks": count}


def _forget_coarser_stats(vol: Volume) -> None:
    """The cached label stats of the coarser scales (an edit there finds its ids anew)."""
    from .core import _forget_stats

    _forget_stats(vol, range(vol.scale + 1, len(vol.remote.meta.scales)))
