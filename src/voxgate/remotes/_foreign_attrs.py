"""Warnings about attributes other writers put in a store that voxgate cannot use.

An attribute that only describes the data (a voxel size, an offset, a transform) and that voxgate
cannot read is ignored with a VoxgateWarning naming it, so the voxels stay readable; the stores
that read such attributes (N5, Zarr) warn through :func:`warn_ignored`, in one wording.
"""

from __future__ import annotations

import warnings

from ..errors import VoxgateWarning

__all__ = ["warn_ignored"]


def warn_ignored(what: str, why: str, *, stacklevel: int) -> None:
    """Warn ``"<what> is ignored: <why>"``; ``stacklevel`` as for :func:`warnings.warn` called
    where this is called (the frame this function adds is counted here)."""
    warnings.warn(VoxgateWarning(f"{what} is ignored: {why}"), stacklevel=stacklevel + 1)
