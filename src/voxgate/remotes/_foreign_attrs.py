"""Warnings about attributes other writers put in a store that voxgate cannot use.

An attribute that only describes the data (a voxel size, an offset, a transform) and that voxgate
cannot read is ignored with a VoxgateWarning naming it, so the voxels stay readable; the stores
that read such attributes (N5, Zarr) warn through :func:`warn_ignored`, in one wording.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidRequestError, VoxgateWarning
from ..geometry import Vec

__all__ = ["CHANNEL_NAMES", "funlib_names", "nearest_voxel", "warn_ignored"]

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


CHANNEL_NAMES = ("c", "channel", "ch")


def _funlib_list(attrs: dict[str, Any], key: str, rank: int, where: str) -> list[Any] | None:
    """A funlib.persistence per-axis attribute that names each dimension with a string (None
    when absent; one that does not is ignored with a VoxgateWarning)."""
    value = attrs.get(key)
    if value is None:
        return None
    if isinstance(value, list) and len(value) == rank and all(isinstance(v, str) for v in value):
        return value
    warn_ignored(f"{where}: attribute {key} = {str(value)[:80]!r}",
                 f"it does not give each of the array's {rank} dimensions a name", stacklevel=4)
    return None


def funlib_names(attrs: dict[str, Any], rank: int, where: str) -> list[str]:
    """Dimension names from funlib.persistence's ``axis_names`` (a channel axis ends in "^")
    and ``types`` ("channel" / "space" / "time"), with the channel axis named "c"; [] without
    either.  Its default names (``c0^``, ``d0``, ``d1``, ``d2``) name no z, y or x: its
    three space axes are then z, y, x in dimension order (C order, as daisy and gunpowder
    use them); more or fewer space axes without those names are refused."""
    axis_names = _funlib_list(attrs, "axis_names", rank, where)
    types = _funlib_list(attrs, "types", rank, where)
    if axis_names is None and types is None:
        return []
    if types is not None:
        channel = [t not in ("space", "time") for t in types]
    else:
        assert axis_names is not None
        channel = [n.endswith("^") for n in axis_names]
    bare = [n.rstrip("^").strip().lower() for n in axis_names or [""] * rank]
    space = [i for i in range(rank) if not channel[i]]
    names = list(bare)
    if not {"z", "y", "x"} <= {bare[i] for i in space}:
        if len(space) != 3:
            raise InvalidRequestError(
                f"{where} has axis_names {axis_names} and types {types} (funlib.persistence): "
                f"{len(space)} space axes, none named z, y or x; voxgate cannot tell which are "
                "z, y and x (name them in axis_names, e.g. ['c^', 'z', 'y', 'x'])"
            )
        for i, axis in zip(space, "zyx", strict=True):
            names[i] = axis
    lead = [i for i in range(rank) if channel[i]]
    for k, i in enumerate(lead):  # a first channel axis is voxgate's; others must be length 1
        names[i] = "c" if k == 0 else f"{bare[i] or 'c'}#{k}"
    if len(set(names)) != rank or (lead and any(names[i] in CHANNEL_NAMES for i in space)):
        raise InvalidRequestError(
            f"{where} has axis_names {axis_names} (funlib.persistence), which do not name each "
            "dimension once"
        )
    return names
