"""Warnings about attributes other writers put in a store that voxgate cannot use.

An attribute that only describes the data (a voxel size, an offset, a transform) and that voxgate
cannot read is ignored with a VoxgateWarning naming it, so the voxels stay readable; the stores
that read such attributes (N5, Zarr) warn through :func:`warn_ignored`, in one wording.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from ..errors import VoxgateWarning
from ..geometry import Vec

__all__ = ["nearest_voxel", "warn_ignored"]

#: how far from a whole voxel a position may lie and still be that voxel
WHOLE = 1e-6


def warn_ignored(what: str, why: str, *, stacklevel: int) -> None:
    """Warn ``"<what> is ignored: <why>"``; ``stacklevel`` as for :func:`warnings.warn` called
    where this is called (the frame this function adds is counted here)."""
    warnings.warn(VoxgateWarning(f"{what} is ignored: {why}"), stacklevel=stacklevel + 1)


def nearest_voxel(vox: Sequence[float], what: str, voxel_nm: tuple[float, ...], *,
                  kept: bool, stacklevel: int) -> Vec:
    """The whole voxel offset (z, y, x) nearest ``vox`` (an offset attribute, ``what``, in
    voxels of ``voxel_nm``), with a VoxgateWarning when ``vox`` is not within :data:`WHOLE` of
    it (dropping it, as voxgate once did, moved the data by up to the whole offset).  ``kept``:
    the caller keeps the exact position as the scale's translation, and the warning says so."""
    near = Vec(*(math.floor(x + 0.5) for x in vox))
    if not all(abs(x - n) < WHOLE for x, n in zip(vox, near, strict=True)):
        warnings.warn(VoxgateWarning(
            f"{what} is {tuple(round(x, 6) for x in vox)} (z, y, x) voxels of {voxel_nm} nm, "
            f"not a whole number of voxels; voxgate takes the nearest whole voxel, offset "
            f"{tuple(near)}" + (" (the exact position is kept as the scale's translation)"
                                if kept else "")), stacklevel=stacklevel + 1)
    return near
