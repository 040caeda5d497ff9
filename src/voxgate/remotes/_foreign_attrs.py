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
from ..geometry import Vec, VoxelSize
from ..storage import UNITS_NM, length_unit_nm

__all__ = ["CHANNEL_NAMES", "corner_offset", "flat_z_size", "funlib_geometry", "funlib_names",
           "funlib_placement", "nearest_voxel", "triple", "warn_ignored", "zyx_numbers"]

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


def triple(value: Any) -> list[float] | None:
    """``value`` as three floats when it is a list of three numbers, else None."""
    if not isinstance(value, list) or len(value) != 3:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    return [float(v) for v in value]


def flat_z_size(in_plane: Sequence[float]) -> float:
    """The z voxel size of a 2-D image (one z plane) whose in-plane voxel sizes are
    ``in_plane`` (in one unit): the larger of them, in every store (N5, OME-Zarr, HDF5,
    funlib.persistence arrays), so that :func:`voxgate.downsample`, which halves the finer axes
    first, halves y and x and never the one plane.  Its z offset is 0."""
    return max(in_plane)


def zyx_numbers(value: Any, flat: bool, *, offset: bool) -> list[float] | None:
    """A per-axis attribute as (z, y, x): three numbers, or on a 2-D array (``flat``: one z
    plane) also two, (y, x), with z put in front: for a voxel size (``offset`` False) the
    larger of the two (:func:`flat_z_size`), for an offset 0.  The HDF5 store and the zarr
    store's funlib.persistence attributes read 2-D arrays by this one rule."""
    if flat and isinstance(value, list) and len(value) == 2:
        yx = triple([0.0, *value])
        if yx is None:
            return None
        return [0.0 if offset else flat_z_size(yx[1:]), *yx[1:]]
    return triple(value)


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
    use them), two space axes y, x (a 2-D array, opened as one z plane); two named otherwise
    than y and x (e.g. z and x), and more or fewer space axes without those names, are
    refused."""
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
    named = [bare[i] for i in space]
    if len(space) == 2 and sorted(named) != ["x", "y"]:
        # a 2-D array (one z plane): y and x, or two axes naming none of z, y, x taken as
        # y, x in dimension order; anything else is refused rather than guessed
        if {"z", "y", "x"} & set(named):
            raise InvalidRequestError(
                f"{where} has axis_names {axis_names} and types {types} (funlib.persistence): "
                f"2 space axes named {named}; voxgate reads a 2-D array as y and x (one z "
                "plane) and cannot tell which of these is y and which x (name them "
                "['y', 'x'], or leave funlib's defaults ['d0', 'd1'], read as y, x)"
            )
        for i, axis in zip(space, "yx", strict=True):
            names[i] = axis
    elif len(space) != 2 and not {"z", "y", "x"} <= set(named):
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


def funlib_axes(value: object, key: str, physical: list[int], names: list[str],
                 where: str, numbers: bool = True) -> list[Any] | None:
    """The (z, y, x) entries of funlib.persistence's per-axis ``key`` (voxel_size, offset,
    units), which lists the space (and time) axes in dimension order, or every axis; None
    when absent.  One of another length or type is ignored with a VoxgateWarning.  On a 2-D
    array (``names`` without z) the (y, x) entries."""
    if value is None:
        return None
    if numbers:
        ok = isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value)
    else:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    spatial = [names.index(a) for a in ("zyx" if "z" in names else "yx")]
    if ok and isinstance(value, list):
        if len(value) == len(physical) and set(spatial) <= set(physical):
            return [value[physical.index(i)] for i in spatial]
        if len(value) == len(names):
            return [value[i] for i in spatial]
    fallback = {"offset": "offset 0 is taken",
                "units": "the voxel size is taken as nanometres"}.get(key, "1 nm voxels are taken")
    warn_ignored(f"{where}: attribute {key} = {str(value)[:80]!r}",
                 f"it is not one {'number' if numbers else 'unit'} for each space axis in "
                 f"dimension order ({', '.join(names[i] for i in physical)}); {fallback}",
                 stacklevel=4)
    return None


def funlib_geometry(attrs: dict[str, Any], names: list[str], where: str
                     ) -> tuple[VoxelSize, Vec, tuple[float, float, float] | None]:
    """Voxel size (nm), offset (voxels) and, for an offset between voxels, the exact position
    (nm) of a plain array from funlib.persistence's attributes (daisy, gunpowder and older
    funlib wrote ``resolution`` for ``voxel_size``): the voxel size, the offset in world units
    and a ``units`` list, each per space axis in dimension order.  1 nm at 0 without them.

    An offset that is not a whole number of voxels is taken to the nearest whole voxel with a
    VoxgateWarning (as the HDF5 and N5 stores do), its exact position kept as the translation.
    """
    vs, corner = funlib_placement(attrs, names, where)
    if corner is None:
        return vs, Vec(0, 0, 0), None
    return (vs, *corner_offset(vs, corner, f"{where}: attribute offset = {attrs['offset']!r}",
                               stacklevel=2))


def corner_offset(vs: VoxelSize, corner: tuple[float, float, float], what: str, *,
                  stacklevel: int) -> tuple[Vec, tuple[float, float, float] | None]:
    """The offset (voxels of ``vs``) of an array whose first voxel's corner lies at ``corner``
    (nm, z, y, x; stated by ``what``) and, when that is between voxels (the nearest whole voxel
    is taken, with a VoxgateWarning), the exact position, kept as the translation."""
    vox = [e / v for e, v in zip(corner, vs.zyx(), strict=True)]
    offset = nearest_voxel(vox, what, vs.zyx(), kept=True, stacklevel=stacklevel + 1)
    if all(abs(x - n) < WHOLE for x, n in zip(vox, offset, strict=True)):
        return offset, None
    return offset, corner


def funlib_placement(attrs: dict[str, Any], names: list[str], where: str
                     ) -> tuple[VoxelSize, tuple[float, float, float] | None]:
    """The voxel size (nm) and the position (nm, z, y, x) of the first voxel's corner that
    funlib.persistence's attributes state (see :func:`funlib_geometry`); None for the
    position when there is no usable ``offset``."""
    rank = len(names)
    # a 2-D array (y, x: one z plane) states (y, x) values: its z voxel size is the larger in
    # nm (flat_z_size), its z offset 0
    flat = "z" not in names and {"y", "x"} <= set(names)
    if not flat and not {"z", "y", "x"} <= set(names):  # refused in _as_czyx
        return VoxelSize.of((1, 1, 1)), None
    physical: list[int]
    types, axis_names = attrs.get("types"), attrs.get("axis_names")
    if isinstance(types, list) and len(types) == rank:
        physical = [i for i, t in enumerate(types) if t in ("space", "time")]
    elif (isinstance(axis_names, list) and len(axis_names) == rank
          and all(isinstance(n, str) for n in axis_names)):
        physical = [i for i, n in enumerate(axis_names) if not n.endswith("^")]
    else:
        physical = [i for i, n in enumerate(names) if n not in CHANNEL_NAMES]
    key = "voxel_size" if "voxel_size" in attrs else "resolution"
    raw = funlib_axes(attrs.get(key), key, physical, names, where)
    if raw is not None and flat:
        raw = zyx_numbers(raw, flat, offset=False)
    if raw is not None and not all(v > 0 for v in raw):
        warn_ignored(f"{where}: attribute {key} = {attrs[key]!r}",
                     "voxel sizes must be positive; 1 nm voxels are taken", stacklevel=3)
        raw = None
    units = attrs.get("units")
    if isinstance(units, str):
        units = [units] * len(physical)
    unit_zyx = funlib_axes(units, "units", physical, names, where, numbers=False)
    if unit_zyx is not None and flat:  # the one z plane is measured in y's unit
        unit_zyx = [unit_zyx[0], *unit_zyx]
    factor = [1.0, 1.0, 1.0]
    for j, unit in enumerate(unit_zyx or ()):
        if not unit.strip():  # funlib.persistence's default: no unit, read as nm
            continue
        nm = length_unit_nm(unit)
        if nm is None:
            warn_ignored(f"{where}: attribute units = {units!r}",
                         f"{unit!r} is not a length unit voxgate knows ({', '.join(UNITS_NM)}, "
                         f"...); the {'zyx'[j]} voxel size is taken as nanometres", stacklevel=3)
        else:
            factor[j] = nm
    voxel = [v * f for v, f in zip(raw or (1.0, 1.0, 1.0), factor, strict=True)]
    if flat:  # (after the units: y and x may be stated in different ones)
        voxel[0] = flat_z_size(voxel[1:])
    vs = VoxelSize.of(voxel)
    world = funlib_axes(attrs.get("offset"), "offset", physical, names, where)
    if world is not None and flat:
        world = zyx_numbers(world, flat, offset=True)
    if world is None:
        return vs, None
    exact = [w * f for w, f in zip(world, factor, strict=True)]
    return vs, (exact[0], exact[1], exact[2])
