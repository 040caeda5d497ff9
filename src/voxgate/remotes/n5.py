"""``n5://``: N5 datasets and n5-viewer / BigDataViewer multiscale groups, through tensorstore.

N5 lists every per-axis value (``dimensions``, ``blockSize``, resolutions, downsampling factors)
in the dataset's own dimension order, which for volumes is ``x, y, z[, c]``, and stores blocks
x-fastest.  Read in Fortran order and transposed (``TSArray(reversed_axes=True)``) that is the
C-order ``[c,] z, y, x`` array voxgate uses, with no copy.

A location is either

- a plain N5 dataset (its ``attributes.json`` has ``dimensions``): one scale;
- a multiscale group (the n5-viewer convention, also read by BigDataViewer, Paintera and
  Neuroglancer): datasets ``s0``, ``s1``, ... under a group whose attributes may carry
  ``"multiScale": true``, ``"scales"`` / ``"downsamplingFactors"`` (one xyz list per scale),
  ``"pixelResolution": {"unit": "nm", "dimensions": [x, y, z]}`` or ``"resolution": [x, y, z]``
  (with optional ``"units"``) for the resolution of ``s0``.  Each ``sN`` may carry its own
  ``"downsamplingFactors"`` and ``"pixelResolution"``; as in n5-viewer the voxel size of scale N
  is the (base) pixel resolution times its downsampling factors.  A BigDataViewer
  ``setupN/timepointN`` group takes the factors its ``setupN`` parent lists.

Where the data lies comes from COSEM / OpenOrganelle ``transform`` attributes (each dataset's
``{"axes", "scale", "translate", "units"}``, also listed in the group's ``multiscales``; its
``scale`` is that dataset's own voxel size) and Paintera's ``offset`` (physical, beside its
``resolution``, on a dataset or its group).  Both place the centre of the first voxel, a
downsampled scale's half a block in; a position that is not a whole number of voxels is taken
to the nearest with a VoxgateWarning (see ``_whole_offset`` and docs/remotes/n5.md).

Every per-axis list is in the dimension order of its own ``axes`` attribute (a group's lists in
the group's, else in s0's), as Neuroglancer and tensorstore read them.  The array metadata is
checked by voxgate and handed to tensorstore (``assume_metadata``), so writer-specific
compression members (n5-blosc's ``nthreads``) and N5 0.x ``compressionType`` are read too.

Paintera's label-multiset datasets (``"isLabelMultiset": true``) are refused when opened: their
blocks are not voxels of their ``dataType``.

``voxgate.create("n5://...")`` always writes a multiscale group (``s0`` .. ``sN``) with all of
the attributes above, plus a ``"voxgate"`` attribute holding what N5 has no standard place for:
the kind (image or segmentation), the offset and the exact voxel size of every scale.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, cast

import numpy as np
import tensorstore as ts

from ..errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    RemoteNotFoundError,
    VoxgateError,
    VoxgateWarning,
)
from ..geometry import Box, Vec, VoxelSize
from ..meta import (
    Kind,
    Scale,
    VolumeMeta,
    centre_translation,
    check_new_scales,
    offset_from_translation,
)
from ..storage import (
    check_bucket,
    is_local,
    join,
    kvstore_exists,
    kvstore_spec,
    length_unit_nm,
    local_path,
    read_json,
    ts_context,
    ts_errors,
    write_json,
)
from ._foreign_attrs import (
    CHANNEL_NAMES,
    corner_offset,
    flat_z_size,
    funlib_names,
    funlib_placement,
    warn_ignored,
)
from ._tensorstore import TSArray, at_time_point
from .base import Capability, Remote, check_options, check_time, open_existing

__all__ = ["N5Remote"]

#: compressions ``create`` accepts ("none" is an alias of N5's "raw")
_COMPRESSIONS = ("gzip", "blosc", "zstd", "raw", "none")


_N5_VERSION = "2.0.0"


def _container_root(location: str) -> str | None:
    """The N5 container ``location`` lies in or is: the nearest of it and its parents whose
    name ends with ``.n5``; None when no name does (then the container is not known)."""
    path = location.rstrip("/")
    while path:
        head, slash, name = path.rpartition("/")
        if name.lower().endswith(".n5"):
            return path
        if not slash or head.endswith(":/") or head.endswith(":"):  # not above a bucket
            return None
        path = head
    return None


#: the N5 data types of voxel data (N5's "object" and "string" datasets hold none)
_DATA_TYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
               "float32", "float64")

#: the compressions read (through tensorstore), each with the members tensorstore takes.  Java
#: writers add others that only tune their own coder (n5-blosc: "nthreads", "typesize";
#: n5-zstandard: "nbWorkers", ...), and tensorstore refuses a dataset that has them: they are
#: left out of the metadata voxgate hands it
_READ_COMPRESSIONS: dict[str, tuple[str, ...]] = {
    "raw": (),
    "gzip": ("level", "useZlib"),
    "bzip2": ("blockSize",),
    "xz": ("preset",),
    "blosc": ("cname", "clevel", "shuffle", "blocksize"),
    "zstd": ("level",),
}
#: what tensorstore needs for a blosc writer when a file leaves it out (blosc blocks describe
#: their own coding, so reading never depends on these)
_BLOSC_DEFAULTS = {"cname": "lz4", "clevel": 5, "shuffle": 1}


def _guess_kind(dtype: np.dtype[Any]) -> Kind:
    return "segmentation" if dtype.kind in "ui" and dtype.itemsize >= 4 else "image"


def _to_nm(unit: object) -> float:
    """Nanometres per ``unit``; an unknown or missing unit ("pixel", "") counts as nm."""
    return length_unit_nm(unit) or 1.0


#: the positions of x, y and z in a list written in N5's default dimension order
_XYZ = (0, 1, 2)


def _numbers(value: object, order: Sequence[int] = _XYZ, *, positive: bool = True
             ) -> list[float] | None:
    """The numbers at positions ``order`` (those of x, y, z in the list's dimension order) of
    ``value``: positive ones, or with ``positive=False`` finite ones of any sign; else None
    (attributes are foreign JSON: a malformed one is ignored rather than trusted)."""
    if not isinstance(value, (list, tuple)) or len(value) <= max(order):
        return None
    out = []
    for v in (value[i] for i in order):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                v > 0 if positive else math.isfinite(v)):
            return None
        out.append(float(v))
    return out


def _is_int(v: object, least: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def _dataset_metadata(attrs: dict[str, Any], where: str) -> dict[str, Any]:
    """The array metadata of a dataset's attributes.json, checked, as tensorstore takes it.

    A file tensorstore or voxgate cannot use is refused here with an error naming the key,
    before any block is read (tensorstore's own refusal came out as an undecodable "chunk").
    The legacy ``compressionType`` (N5 before 1.0) is read as the compression of that type.
    """
    bad = f"{where} is not a valid N5 dataset:"
    dims = attrs.get("dimensions")
    if not isinstance(dims, list) or not dims or not all(_is_int(d, 0) for d in dims):
        raise InvalidRequestError(
            f"{bad} 'dimensions' must be a non-empty list of integers >= 0 (x first), got "
            f"{dims!r}"
        )
    rank = len(dims)
    axes = attrs.get("axes")
    if axes is not None and (
        not isinstance(axes, list)
        or len(axes) != rank
        or not all(isinstance(a, str) for a in axes)
        or len(set(axes)) != rank
    ):
        raise InvalidRequestError(
            f"{bad} 'axes' must be {rank} distinct names, one per entry of 'dimensions' "
            f"{dims}, got {axes!r}"
        )
    if axes is None and rank not in (2, 3, 4):
        raise InvalidRequestError(
            f"{bad} 'dimensions' {dims} has {rank} entries and there is no 'axes' attribute "
            "naming them; voxgate reads 2-D (x, y: one z plane), 3-D (x, y, z) and 4-D "
            "(x, y, z, c) N5 datasets"
        )
    block = attrs.get("blockSize")
    if not isinstance(block, list) or len(block) != rank or not all(_is_int(b, 1) for b in block):
        raise InvalidRequestError(
            f"{bad} 'blockSize' must be {rank} integers >= 1 (one per entry of 'dimensions' "
            f"{dims}), got {block!r}"
        )
    dtype = attrs.get("dataType")
    if attrs.get("isLabelMultiset") is True:
        # its blocks hold Paintera's label-multiset encoding, not uint8 voxels; read as
        # "dataType" says, the absent blocks would be zeros and the whole volume an image
        raise CapabilityNotSupportedError(
            f"{where} is a Paintera label-multiset dataset ('isLabelMultiset': true), whose "
            "blocks hold lists of labels and counts per voxel, not voxels; voxgate does not "
            "decode them: export the labels from Paintera (or convert them with "
            "paintera-conversion-helper) to a plain uint64 dataset"
        )
    if dtype in ("object", "string"):
        raise CapabilityNotSupportedError(
            f"{where} is an N5 {dtype!r} dataset ('dataType'); voxgate reads voxel data: "
            f"{', '.join(_DATA_TYPES)}"
        )
    if dtype not in _DATA_TYPES:
        what = "has no 'dataType'" if dtype is None else f"has 'dataType' {dtype!r}"
        raise InvalidRequestError(f"{bad} it {what}; N5 data types are {', '.join(_DATA_TYPES)}")
    comp: Any = attrs.get("compression")
    if comp is None and isinstance(attrs.get("compressionType"), str):
        comp = {"type": attrs["compressionType"]}
    if comp is None:
        if "codecs" in attrs:
            raise CapabilityNotSupportedError(
                f"{where} describes its blocks with 'codecs' (N5 4 and later) and has no "
                "'compression'; voxgate reads datasets with a 'compression'"
            )
        raise InvalidRequestError(f"{bad} it has no 'compression'")
    if not isinstance(comp, dict) or not isinstance(comp.get("type"), str):
        raise InvalidRequestError(
            f"{bad} 'compression' must be an object with a 'type', got {comp!r}"
        )
    ctype = comp["type"]
    if ctype not in _READ_COMPRESSIONS:
        readable = ", ".join(_READ_COMPRESSIONS)
        if ctype == "lz4":
            raise CapabilityNotSupportedError(
                f"{where} is compressed with N5's 'lz4' ('compression.type'), which tensorstore "
                f"does not read; voxgate reads {readable}"
            )
        raise InvalidRequestError(
            f"{bad} unknown 'compression.type' {ctype!r}; voxgate reads {readable}"
        )
    members = {k: v for k, v in comp.items() if k in _READ_COMPRESSIONS[ctype]}
    if ctype == "blosc":
        members = {**_BLOSC_DEFAULTS, **members}
    metadata = {"dimensions": dims, "blockSize": block, "dataType": dtype,
                "compression": {"type": ctype, **members}}
    if axes is not None:
        metadata["axes"] = axes
    return metadata


def _is_flat(attrs: dict[str, Any]) -> bool:
    """Whether a dataset's attributes.json describes a 2-D image: two dimensions and no
    ``axes``, or ``axes`` naming x and y but no z."""
    axes = attrs.get("axes")
    if isinstance(axes, list):
        names = {a.lower() for a in axes if isinstance(a, str)}
        return "z" not in names and {"x", "y"} <= names
    dims = attrs.get("dimensions")
    return isinstance(dims, list) and len(dims) == 2


def _flat_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """A 2-D image's attributes (a dataset's or its multiscale group's) as those of a volume
    of one z plane, for reading only: every per-axis list voxgate reads gets a z entry at its
    end, where :func:`_as_zyx` puts the z dimension (a resolution or factor the larger of the
    others, as a 2-D OME-Zarr image's z is; offset 0; the unit of the first axis)."""
    def padded(value: object, how: str) -> object:
        if not isinstance(value, list) or not value:
            return value
        numbers = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if how == "number":
            return [*value, flat_z_size(numbers)] if len(numbers) == len(value) else value
        if how == "zero":
            return [*value, 0]
        if how == "unit":
            return [*value, next((u for u in value if isinstance(u, str) and u), "")]
        return [*value, "z"]

    out = dict(attrs)
    for key, how in (("resolution", "number"), ("downsamplingFactors", "number"),
                     ("offset", "zero"), ("units", "unit"), ("axes", "name")):
        if key in out:
            out[key] = padded(out[key], how)
    pr = out.get("pixelResolution")
    if isinstance(pr, dict):
        out["pixelResolution"] = {**pr, "dimensions": padded(pr.get("dimensions"), "number")}
    elif isinstance(pr, list):
        out["pixelResolution"] = padded(pr, "number")
    for key in ("scales", "downsamplingFactors"):  # a group's lists: one row per scale
        rows = out.get(key)
        if isinstance(rows, list) and rows and all(isinstance(r, list) for r in rows):
            out[key] = [padded(r, "number") for r in rows]
    return out


def _plain_number(v: float) -> int | float:
    """An integral float as an int: JSON ``2``, not ``2.0``, where readers want integers."""
    return int(v) if float(v).is_integer() else float(v)


def _per_axis(xyz: Sequence[Any], channels: int, channel_value: Any) -> list[Any]:
    """A per-axis attribute as voxgate writes it: x, y, z, then ``channel_value`` for the
    channel axis of a multi-channel dataset.

    Neuroglancer's N5 source takes the rank of a location from every per-axis list of its
    attributes and of its parents' (``resolution``, ``axes``, ``units``, ``downsamplingFactors``,
    ``scales``, ``pixelResolution.dimensions``, ``dimensions``) and refuses lists of unequal
    length ("Rank mismatch"), so each has an entry for the channel axis too (factor 1,
    resolution 1, unit "").  Readers of x, y, z only (n5-viewer, voxgate) read the first three.
    """
    return [*xyz, *([channel_value] if channels > 1 else [])]


def _resolution_xyz(attrs: dict[str, Any], order: Sequence[int] = _XYZ,
                    where: str | None = None) -> list[float] | None:
    """The resolution an attributes.json states, in nm, (x, y, z); None when it states none.

    ``pixelResolution`` (n5-viewer) is an object ``{"unit", "dimensions"}`` or, in older files,
    a bare list; ``resolution`` (Paintera, Neuroglancer, tensorstore) is a list with optional
    per-axis ``units``.  Every list is in the dimension order of ``axes`` (as Neuroglancer and
    tensorstore read them): ``order`` holds the positions of x, y and z in it.  With ``where``
    (the file), one that cannot be read, a unit voxgate does not know (taken as nm) and the two
    stating different sizes (``pixelResolution`` is used) are each named in a VoxgateWarning.
    """
    pr = attrs.get("pixelResolution")
    from_pr: list[float] | None = None
    if isinstance(pr, dict):
        dims = _numbers(pr.get("dimensions"), order)
        if dims is not None:
            f = _unit_nm(pr.get("unit"), where, "pixelResolution.unit")
            from_pr = [d * f for d in dims]
    else:
        from_pr = _numbers(pr, order)
    if pr is not None and from_pr is None and where is not None:
        warn_ignored(f"{where} 'pixelResolution' = {str(pr)[:80]!r}",
                     "its dimensions must be positive numbers for x, y and z", stacklevel=3)
    value = attrs.get("resolution")
    res = _numbers(value, order)
    from_res: list[float] | None = None
    if res is not None:
        units = attrs.get("units")
        if isinstance(units, list) and len(units) > max(order):
            unknown = [units[i] for i in order if units[i] not in (None, "")
                       and length_unit_nm(units[i]) is None]
            if unknown:  # (one warning for the list)
                _unit_nm(unknown[0], where, "units")
            from_res = [r * _to_nm(units[i]) for r, i in zip(res, order, strict=True)]
        else:
            from_res = res
    elif value is not None and where is not None:
        warn_ignored(f"{where} 'resolution' = {str(value)[:80]!r}",
                     "it must be positive numbers for x, y and z", stacklevel=3)
    if from_pr is None:
        return from_res
    if from_res is not None and where is not None:
        _check_agree(from_pr, from_res, where, "'pixelResolution'", "'resolution'")
    return from_pr


def _unit_nm(unit: object, where: str | None, key: str) -> float:
    """Nanometres per ``unit`` (``key`` of the file ``where``): none or "" is nm; one voxgate
    does not know is taken as nm, with a VoxgateWarning when ``where`` is given."""
    nm = length_unit_nm(unit)
    if nm is not None:
        return nm
    if where is not None and unit not in (None, ""):
        warnings.warn(VoxgateWarning(
            f"{where} '{key}' has unit {unit!r}, which is not a length unit voxgate knows "
            "(nm, um, ...); the voxel size is taken as nm"), stacklevel=4)
    return 1.0


def _check_agree(used: Sequence[float], other: Sequence[float], where: str, used_is: str,
                 other_is: str) -> None:
    """Warn when two attributes of ``where`` state different voxel sizes (nm, x, y, z): the one
    read (``used_is``) and the one that is not (``other_is``)."""
    if all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(used, other, strict=True)):
        return
    warnings.warn(VoxgateWarning(
        f"{where} states two voxel sizes: {used_is} gives {tuple(used)} nm and {other_is} "
        f"gives {tuple(other)} nm (x, y, z); voxgate uses {used_is} (n5-viewer's reading), "
        f"and {other_is} is ignored"), stacklevel=4)


def _xyz_order(axes: object) -> list[int] | None:
    """The positions of x, y and z in an ``axes`` attribute, or None when it names no x, y, z."""
    if not isinstance(axes, list):
        return None
    names = [a.lower() if isinstance(a, str) else "" for a in axes]
    if not {"x", "y", "z"} <= set(names):
        return None
    return [names.index(n) for n in ("x", "y", "z")]


def _dataset_axes(attrs: dict[str, Any]) -> list[str]:
    """A dataset's axis names in its dimension order: its ``axes``, else x, y, z[, c]."""
    axes = attrs.get("axes")
    if isinstance(axes, list) and all(isinstance(a, str) for a in axes):
        return list(axes)
    return ["x", "y", "z", "c"][: len(attrs.get("dimensions") or [])]


def _place(axes: Sequence[str], xyz: Sequence[Any], channel: Any, other: Any = None) -> list[Any]:
    """A per-axis list in the order of ``axes``: the x, y, z entries of ``xyz``, ``channel`` for
    a channel axis and ``other`` (else ``channel``) for any other axis (a length-1 time)."""
    out: list[Any] = []
    for name in (a.lower() for a in axes):
        if name in ("x", "y", "z"):
            out.append(xyz["xyz".index(name)])
        else:
            out.append(channel if name in CHANNEL_NAMES or other is None else other)
    return out


def _reorder_group(group: dict[str, Any], order: Sequence[int], axes: Sequence[str]) -> None:
    """Rewrite a group's per-axis lists (read at positions ``order``) in the order of ``axes``,
    one entry per axis, and name them with ``axes``.  A list voxgate cannot read is left."""

    def moved(value: object, fill: Any, positive: bool = True) -> list[Any] | None:
        xyz = _numbers(value, order, positive=positive)
        return None if xyz is None else _place(axes, [_plain_number(v) for v in xyz], fill)

    for key, fill, positive in (("resolution", 1, True), ("offset", 0, False),
                                ("pixelResolution", 1, True)):
        new = moved(group.get(key), fill, positive)
        if new is not None:
            group[key] = new
    pr = group.get("pixelResolution")
    if isinstance(pr, dict) and (new := moved(pr.get("dimensions"), 1)) is not None:
        group["pixelResolution"] = {**pr, "dimensions": new}
    units = group.get("units")
    if isinstance(units, list) and len(units) > max(order):
        group["units"] = _place(axes, [units[i] for i in order], "")
    group["axes"] = list(axes)


def _complete_lists(attrs: dict[str, Any]) -> bool:
    """Give a dataset's viewer lists (``resolution``, ``units``, ``offset``,
    ``downsamplingFactors``, ``pixelResolution.dimensions``) one entry per dimension, in the
    order of its axes, when one of them has another length (as an older voxgate wrote x, y, z
    lists for x, y, z, c data); whether anything changed."""
    rank = len(attrs.get("dimensions") or [])
    pr = attrs.get("pixelResolution")
    lists = [attrs.get(k) for k in ("resolution", "units", "offset", "downsamplingFactors")]
    lists.append(pr.get("dimensions") if isinstance(pr, dict) else pr)
    if not rank or all(not isinstance(v, list) or len(v) == rank for v in lists):
        return False
    order = _xyz_order(attrs.get("axes")) or _XYZ
    axes = _dataset_axes(attrs)
    factors = _numbers(attrs.get("downsamplingFactors"), order)
    _reorder_group(attrs, order, axes)
    if factors is not None:
        attrs["downsamplingFactors"] = _place(axes, [_plain_number(v) for v in factors], 1)
    return True


def _cosem_order(value: dict[str, Any], rank: int) -> list[int] | None:
    """The positions of x, y and z in the lists of a COSEM transform of ``rank`` entries."""
    axes = value.get("axes")
    ordering = value.get("order", value.get("ordering", "C"))
    order = _xyz_order(axes)
    if order is None and axes is None and ordering in ("C", "F"):
        order = [rank - 1, rank - 2, rank - 3] if ordering == "C" else [0, 1, 2]
    return order


def _moved_transform(value: object, voxel: Sequence[float], centre: Sequence[float],
                     unit: str) -> dict[str, Any] | None:
    """A COSEM ``transform`` like ``value`` (s0's) for a scale of ``voxel`` size whose first
    voxel's centre is at ``centre`` (both x, y, z, in ``unit``), in ``value``'s axes and units;
    None when ``value`` is no transform voxgate reads."""
    if not isinstance(value, dict):
        return None
    lists = [value[k] for k in ("scale", "translate") if k in value]
    if not lists or not all(isinstance(v, list) and len(v) >= 3 for v in lists):
        return None
    rank = len(lists[0])
    order = _cosem_order(value, rank)
    if order is None or any(len(v) != rank for v in lists):
        return None
    units = value.get("units")
    per = [_to_nm(unit) / (_to_nm(units[i]) if isinstance(units, list) and len(units) > i
                           else 1.0) for i in order]
    out = dict(value)
    for key, xyz, fill in (("scale", voxel, 1), ("translate", centre, 0)):
        new = list(value[key]) if key in value else [fill] * rank
        for i, v, f in zip(order, xyz, per, strict=True):
            new[i] = _plain_number(v * f)
        out[key] = new
    return out


def _add_cosem_entry(group: dict[str, Any], index: int, voxel: Sequence[float],
                     centre: Sequence[float], unit: str) -> None:
    """Add scale ``index`` to a COSEM group's ``multiscales[0].datasets``, modelled on s0's."""
    ms = group.get("multiscales")
    if not (isinstance(ms, list) and ms and isinstance(ms[0], dict)
            and isinstance(ms[0].get("datasets"), list)):
        return
    datasets = ms[0]["datasets"]

    def path(d: object) -> str | None:
        p = d.get("path") if isinstance(d, dict) else None
        return p.strip("/") if isinstance(p, str) else None

    first = next((d for d in datasets if path(d) == "s0"), None)
    if first is None:
        return
    entry = {k: v for k, v in first.items() if k != "transform"}
    entry["path"] = f"s{index}"
    tf = _moved_transform(first.get("transform"), voxel, centre, unit)
    if tf is not None:
        entry["transform"] = tf
    datasets[:] = [*(d for d in datasets if path(d) != f"s{index}"), entry]


def _as_zyx(store: ts.TensorStore, where: str, offset: Vec, time: int | None = None
            ) -> tuple[TSArray, int, list[int]]:
    """A TSArray reading ``store`` as C-order ``[c,] z, y, x`` starting at ``offset``, its
    channel count and the positions of x, y and z among the native dimensions (the length of
    its time axis: ``TSArray.time_points``).

    The native dimensions are ``x, y, z[, c]`` (named by ``axes`` when the file has them);
    other orders are transposed to that, a time axis ('t') indexed at the time point ``time``
    names (:func:`time_index`) and other extra axes of length 1 dropped.
    """
    names = [(n or "").lower() for n in store.domain.labels]
    if not any(names):
        if store.rank in (2, 3, 4):
            names = ["x", "y", "z", "c"][:store.rank]
        else:
            raise InvalidRequestError(
                f"{where} has {store.rank} dimensions and no 'axes' attribute naming them; "
                "voxgate reads 2-D (x, y), 3-D (x, y, z) and 4-D (x, y, z, c) N5 datasets"
            )
    view = store
    if "z" not in names and {"x", "y"} <= set(names):
        # a 2-D image: a volume of one z plane, its z dimension last (a view: reads and
        # writes reach the 2-D dataset, nothing is stored for it; _flat_attrs gives its
        # per-axis attributes a z entry at the same place)
        view = view[..., ts.newaxis][ts.d[store.rank].mark_bounds_implicit[False]]
        names = [*names, "z"]
    if not {"x", "y", "z"} <= set(names):
        raise InvalidRequestError(
            f"{where} has axes {names}; voxgate needs x, y and z (plus an optional channel c)"
        )
    xyz_order = [names.index(n) for n in ("x", "y", "z")]
    channel_names = [n for n in names if n in CHANNEL_NAMES]
    if len(channel_names) > 1:
        raise InvalidRequestError(f"{where} has more than one channel axis: {names}")
    view, current, points = at_time_point(view, names, ("x", "y", "z", *channel_names), time,
                                          where)
    order = [current.index(n) for n in ("x", "y", "z", *channel_names)]
    if order != list(range(len(current))):
        view = view[ts.d[order].transpose[:]]
    # dataset coordinates include the offset, whatever origin the file has (N5's is always 0)
    lead = (0,) if channel_names else ()
    view = view[ts.d[:].translate_to[(*offset.xyz(), *lead)]]
    channels = int(view.shape[3]) if channel_names else 1
    arr = TSArray(
        view, reversed_axes=True, channel=bool(channel_names), keep_channel=channels > 1,
        name=where, own_context=True,  # opened with ts_context() alone
    )
    arr.time_points = points
    return arr, channels, xyz_order


class N5Remote(Remote):
    scheme = "n5"
    #: ``time``: the time point of a dataset with a time axis ('t'), an index along it
    open_options = ("time",)
    create_options = ("compression",)
    #: the ``time`` option it was opened with (spec() passes it on)
    _time: int | None = None

    def __init__(
        self, location: str, meta: VolumeMeta, arrays: list[TSArray], paths: list[str], mode: str,
        flat: bool = False, funlib: bool = False,
    ) -> None:
        self.location = location
        #: a 2-D image (x, y), read and written as a volume of one z plane
        self._flat = flat
        #: a multiscale group whose scales funlib.persistence's attributes place
        self._funlib = funlib
        self.meta = meta
        self._arrays = arrays
        self._paths = paths
        self.mode = mode
        self.url = f"n5://{location}"

    @property
    def _time_points(self) -> int:
        """The length of its time axis (1 when it has none)."""
        return self._arrays[0].time_points

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str, *, mode: str = "r", time: int | None = None,
             **options: Any) -> N5Remote:
        cls.check_open_options({**options, "time": time})
        attrs = _optional_json(location, "attributes.json")
        opened: N5Remote | None = None
        if "dimensions" in attrs:
            opened = cls._open_single(location, attrs, mode, time)
        elif kvstore_exists(location, "s0/attributes.json"):
            opened = cls._open_multiscale(location, attrs, mode, time)
        if opened is not None:
            # (an int: a numpy integer given is no JSON value, and spec() must be one)
            opened._time = None if time is None else int(time)
            opened._time_points_are(opened._time_points)
            return opened
        members = _group_members(location)
        listed = ", ".join(f"n5://{join(location, m)}" for m in members[:_LISTED]) + (
            f" ... and {len(members) - _LISTED} more" if len(members) > _LISTED else "")
        if attrs or kvstore_exists(location, "attributes.json"):
            raise RemoteNotFoundError(
                f"{location!r} is an N5 group but neither a dataset (no 'dimensions' in its "
                "attributes.json) nor a multiscale group (no s0 dataset); open one of its "
                "datasets instead" + (f": {listed}" if members else "")
            )
        if members:  # a root without attributes.json of its own (tensorstore writes none)
            raise RemoteNotFoundError(
                f"{location!r} holds N5 datasets but is none itself; open one of them: {listed}")
        # a missing bucket reads as missing keys: name it rather than the dataset
        check_bucket(location, f"opening {location}")
        raise RemoteNotFoundError(f"no N5 dataset or multiscale group at {location!r}")

    @classmethod
    def _open_store(cls, path: str, mode: str, attrs: dict[str, Any]) -> ts.TensorStore:
        where = join(path, "attributes.json")
        spec = {
            "driver": "n5",
            "kvstore": kvstore_spec(path),
            # the metadata voxgate checked, not tensorstore's stricter reading of the file,
            # which refuses optional members it does not know (n5-blosc's "nthreads") and
            # viewer attributes ("units", "resolution") of another length than the rank
            "metadata": _dataset_metadata(attrs, where),
            # zeros are stored too: an absent block is one never written (or deleted)
            "store_data_equal_to_fill_value": True,
        }
        try:
            with ts_errors(f"opening N5 dataset {path}"):
                return ts.open(
                    spec,
                    open=True,
                    assume_metadata=True,
                    read=True,
                    write=mode == "r+",
                    context=ts_context(),
                ).result()
        except VoxgateError as exc:
            text = str(exc.__cause__ or "").split(" [tensorstore_spec", 1)[0]
            if 'member "metadata"' not in text:
                raise
            # a value tensorstore refuses, such as a gzip "level" of 42
            raise InvalidRequestError(f"{where} is not a valid N5 dataset: {text}") from exc

    @classmethod
    def check_open_options(cls, options: Mapping[str, Any]) -> None:
        """``time`` (None: not given) is a time point, an integer from 0."""
        super().check_open_options(options)
        check_time(options.get("time"))

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        if self._time is not None:  # (the time point read: a reopen reads the same one)
            out["options"] = {**out.get("options", {}), "time": self._time}
        return out

    @classmethod
    def _open_single(cls, location: str, attrs: dict[str, Any], mode: str,
                     time: int | None = None) -> N5Remote:
        attrs, funlib = _funlib_dataset(attrs, join(location, "attributes.json"))
        store = cls._open_store(location, mode, attrs)
        dtype = np.dtype(store.dtype.numpy_dtype)
        info = _info(attrs)
        flat = _is_flat(attrs)
        scale, arr, channels = cls._scale(0, location, store,
                                          _flat_attrs(attrs) if flat else attrs, info, _NO_GROUP,
                                          funlib=funlib, time=time)
        kind = _kind(info, dtype, join(location, "attributes.json"))
        meta = VolumeMeta(dtype, (scale,), kind, channels, 0)
        return cls(location, meta, [arr], [location], mode, flat)

    @classmethod
    def _open_multiscale(cls, location: str, group: dict[str, Any], mode: str,
                         time: int | None = None) -> N5Remote:
        # the scales are s0, s1, ... for as long as they exist (the group's lists may be stale)
        paths: list[str] = []
        while kvstore_exists(location, f"s{len(paths)}/attributes.json"):
            paths.append(join(location, f"s{len(paths)}"))
        all_attrs = [read_json(path, "attributes.json") for path in paths]
        funlibs: list[_Funlib | None] = []
        for i, (path, attrs) in enumerate(zip(paths, all_attrs, strict=True)):
            if not isinstance(attrs, dict):
                raise InvalidRequestError(
                    f"{join(path, 'attributes.json')} is not N5 metadata: a JSON object was "
                    f"expected, not {type(attrs).__name__ if attrs is not None else 'null'}")
            all_attrs[i], fl = _funlib_dataset(attrs, join(path, "attributes.json"))
            funlibs.append(fl)
        _check_funlib_scales(location, funlibs)
        flat = _is_flat(all_attrs[0])
        if flat:  # (read as a volume of one z plane, every list with a z entry)
            group = _flat_attrs(group)
        group_factors, factors_from = _group_factors(location, group)
        # the group's lists are in the order of its own "axes", else in that of s0's
        order = _xyz_order(group.get("axes")) or _xyz_order(all_attrs[0].get("axes")) or _XYZ
        base_res = _resolution_xyz(group, order, join(location, "attributes.json"))
        where = join(location, "attributes.json")
        ginfo = _info(group)
        cosem = _cosem_datasets(group, where)
        g_offset = _offset_xyz(group, order, where)
        scales: list[Scale] = []
        arrays: list[TSArray] = []
        dtype: np.dtype[Any] | None = None
        channels = 1
        shape0: Sequence[int] = ()
        for i, (path, attrs) in enumerate(zip(paths, all_attrs, strict=True)):
            store = cls._open_store(path, mode, attrs)
            if _is_flat(attrs) != flat:
                raise InvalidRequestError(
                    f"{path} has {'no ' if flat else ''}z axis but s0 of {location} has "
                    f"{'one' if flat else 'none'}; every scale of a multiscale group must")
            if flat:
                attrs = _flat_attrs(attrs)
            if dtype is None:
                dtype = np.dtype(store.dtype.numpy_dtype)
            elif np.dtype(store.dtype.numpy_dtype) != dtype:
                raise InvalidRequestError(
                    f"{path} holds {store.dtype.numpy_dtype} but s0 of {location} holds "
                    f"{dtype.name}; every scale of a multiscale group must have one dtype"
                )
            info = _info(attrs)
            factors = _numbers(group_factors[i], order) if i < len(group_factors) else None
            placed = _Group(base_res, factors, cosem.get(f"s{i}"), g_offset,
                            scales[0].voxel_size if scales else None, factors_from)
            scale, arr, ch = cls._scale(i, path, store, attrs, info, placed, shape0, key=f"s{i}",
                                        funlib=funlibs[i], flat=flat, time=time)
            if i == 0:
                shape0 = scale.shape.xyz()
                channels = ch
            elif ch != channels:
                raise InvalidRequestError(
                    f"{path} has {ch} channels but s0 of {location} has {channels}"
                )
            scales.append(scale)
            arrays.append(arr)
        assert dtype is not None
        kind = _kind(ginfo, dtype, where)
        meta = VolumeMeta(dtype, tuple(scales), kind, channels, 0)
        return cls(location, meta, arrays, paths, mode, flat, funlibs[0] is not None)

    @classmethod
    def _scale(
        cls,
        index: int,
        path: str,
        store: ts.TensorStore,
        attrs: dict[str, Any],
        info: dict[str, Any],
        group: _Group,
        shape0: Sequence[int] = (),
        key: str | None = None,
        funlib: _Funlib | None = None,
        flat: bool = False,
        time: int | None = None,
    ) -> tuple[Scale, TSArray, int]:
        """One scale's geometry from its attributes (see the module docstring for the rules);
        ``group``: what the multiscale group says of it; ``funlib``: the voxel size and position
        funlib.persistence's attributes state (:func:`_funlib_dataset`); ``flat``: a 2-D image
        read as one z plane."""
        where = join(path, "attributes.json")
        arr, channels, order = _as_zyx(store, path, Vec(0, 0, 0), time)
        xyz_shape = [int(n) for n in arr.store.shape[:3]]
        own_tf = _cosem(attrs.get("transform"), f"{where} 'transform'")
        tf = own_tf or group.transform
        own_factors = _numbers(attrs.get("downsamplingFactors"), order)
        stated = own_factors or group.factors  # (the factors a file states, not inferred)
        factors = stated
        if factors is None:
            factors = (
                [1.0, 1.0, 1.0]
                if index == 0
                # no factors written anywhere: infer them from the shapes
                else [_infer_factor(a, b) for a, b in zip(shape0, xyz_shape, strict=True)]
            )
        if "voxel_size" in info:
            vs = VoxelSize.of(info["voxel_size"], info.get("unit", "nm"))
        elif funlib is not None:
            vs = funlib.voxel
            if group.vs0 is not None and stated is not None:
                _check_funlib_factors(
                    key or path, f"{where} 'downsamplingFactors'" if own_factors
                    else group.factors_from, stated, vs, group.vs0, flat)
        else:
            cosem = tf is not None and tf.voxel is not None
            own_base = (
                _resolution_xyz({"pixelResolution": attrs["pixelResolution"]}, order,
                                None if cosem else where)
                if "pixelResolution" in attrs
                else None
            )
            own = _resolution_xyz({"resolution": attrs.get("resolution"),
                                   "units": attrs.get("units")}, order, None if cosem else where)
            if tf is not None and tf.voxel is not None:
                # COSEM: a dataset's transform "scale" is its own voxel size
                res_xyz = tf.voxel
            elif own_base is not None:
                # n5-viewer: a scale's pixelResolution is the base one, scaled by its factors
                res_xyz = [r * f for r, f in zip(own_base, factors, strict=True)]
                if own is not None:  # (tensorstore's resolution: this scale's own size)
                    _check_agree(res_xyz, own, where, "'pixelResolution' times the "
                                 "downsampling factors", "'resolution'")
            elif own is not None:
                # tensorstore: a dataset's own "resolution" is its voxel size
                res_xyz = own
            elif group.base_res is not None:
                res_xyz = [r * f for r, f in zip(group.base_res, factors, strict=True)]
            else:
                res_xyz = list(factors)
            vs = VoxelSize(res_xyz[2], res_xyz[1], res_xyz[0])
        translation: tuple[float, float, float] | None = None
        if "offset" in info:
            offset = Vec.of(info["offset"], "offset")
        elif funlib is not None:
            # funlib.persistence's offset (world units, z first), not Paintera's (x first)
            offset, translation = _funlib_offset(funlib, vs, group.vs0, where)
        else:
            vs0 = group.vs0 or vs
            nm, nm0 = _to_nm(vs.unit), _to_nm(vs0.unit)
            centre_xyz = (
                (own_tf.translate if own_tf is not None else None)
                or _offset_xyz(attrs, order, where)
                or (group.transform.translate if group.transform is not None else None)
            )
            if centre_xyz is None and group.offset is not None:
                # Paintera: the group's offset is s0's; a downsampled scale's first voxel
                # is the mean of a block starting there, its centre half a block further in
                centre_xyz = [o + (v * nm - v0 * nm0) / 2 for o, v, v0 in
                              zip(group.offset, vs.xyz(), vs0.xyz(), strict=True)]
            if centre_xyz is None:
                offset = Vec(0, 0, 0)
            else:
                translation = (centre_xyz[2] / nm, centre_xyz[1] / nm, centre_xyz[0] / nm)
                offset = _whole_offset(translation, vs.zyx(),
                                       tuple(v * nm0 / nm for v in vs0.zyx()), where)
        if offset != (0, 0, 0):
            arr = _as_zyx(store, path, offset, time)[0]
        layout = arr.store.chunk_layout.read_chunk.shape
        assert layout is not None  # an N5 dataset always has a block size
        chunks = Vec(*(int(n or 1) for n in layout[2::-1]))
        codec = store.codec
        comp = codec.to_json().get("compression", {}) if codec is not None else {}
        encoding = str(comp.get("type")) if isinstance(comp, dict) and comp.get("type") else None
        scale = Scale(index, Vec(xyz_shape[2], xyz_shape[1], xyz_shape[0]), chunks, vs, offset,
                      encoding, key, translation)
        return scale, arr, channels

    # -- creating -------------------------------------------------------------------------------
    @classmethod
    def exists(cls, location: str) -> bool:
        if kvstore_exists(location, "s0/attributes.json"):
            return True
        if not kvstore_exists(location, "attributes.json"):
            return False
        return "dimensions" in _optional_json(location, "attributes.json")

    @classmethod
    def create(
        cls,
        location: str,
        meta: VolumeMeta,
        *,
        exist_ok: bool = False,
        compression: str = "gzip",
        **options: Any,
    ) -> N5Remote:
        check_options("n5://", options, cls.create_options, "create")
        if compression not in _COMPRESSIONS:
            raise InvalidRequestError(
                f"compression must be one of {', '.join(_COMPRESSIONS)}, got {compression!r}"
            )
        if meta.fill_value != 0:
            raise InvalidRequestError(
                f"N5 has no fill value (absent blocks read as 0); cannot create a volume with "
                f"fill value {meta.fill_value!r}"
            )
        if cls.exists(location):
            return open_existing(cls, location, meta, exist_ok,
                                 "an N5 dataset or multiscale group")
        check_bucket(location, f"creating {location}")
        channels = meta.num_channels
        lead = [channels] if channels > 1 else []
        axes = ["x", "y", "z"] + (["c"] if channels > 1 else [])
        vs0 = meta.scales[0].voxel_size
        unit = vs0.unit
        base_xyz = [_plain_number(v) for v in vs0.xyz()]
        all_factors = []
        for sc in meta.scales:
            if sc.voxel_size.unit != unit:
                raise InvalidRequestError("every scale's voxel size must have the same unit")
            factors = [_plain_number(v / b) for v, b in zip(sc.voxel_size.xyz(), vs0.xyz(),
                                                              strict=True)]
            all_factors.append(_per_axis(factors, channels, 1))
            path = join(location, f"s{sc.index}")
            spec = {
                "driver": "n5",
                "kvstore": kvstore_spec(path),
                "metadata": {
                    "dimensions": [*sc.shape.xyz(), *lead],
                    "blockSize": [*sc.chunks.xyz(), *lead],
                    "dataType": meta.dtype.name,
                    "compression": _compression(compression, meta.dtype),
                    "axes": axes,
                },
            }
            with ts_errors(f"creating N5 dataset {path}"):
                ts.open(spec, create=True, context=ts_context()).result()
            # tensorstore wrote the array metadata; add the per-scale conventions beside it
            attrs = read_json(path, "attributes.json")
            attrs.update(
                {
                    # n5-viewer, Neuroglancer: base resolution x this scale's factors
                    "downsamplingFactors": _per_axis(factors, channels, 1),
                    "pixelResolution": {"unit": unit,
                                        "dimensions": _per_axis(base_xyz, channels, 1)},
                    # tensorstore (reads no factors): this scale's own voxel size
                    "resolution": _per_axis(
                        [_plain_number(v) for v in sc.voxel_size.xyz()], channels, 1),
                    "units": _per_axis([unit] * 3, channels, ""),
                    "voxgate": {
                        "kind": meta.kind,
                        "offset": list(sc.offset),
                        "voxel_size": list(sc.voxel_size.zyx()),
                        "unit": unit,
                    },
                }
            )
            write_json(path, "attributes.json", attrs)
        group = _optional_json(location, "attributes.json")
        parent = location.rstrip("/").rsplit("/", 1)[0] if "/" in location.rstrip("/") else ""
        root = _container_root(location)
        if root is not None and root != location.rstrip("/"):
            # inside a container (x.n5/raw): its root carries the N5 version, as n5-java's
            # N5FSWriter and zarr-python 2's N5Store write it; an existing one is not touched
            if not kvstore_exists(root, "attributes.json"):
                write_json(root, "attributes.json", {"n5": _N5_VERSION})
        elif not (parent and kvstore_exists(parent, "attributes.json")) and "n5" not in group:
            # the container root carries the N5 version; a group inside a container must not
            group["n5"] = _N5_VERSION
        group.update(
            {
                "multiScale": True,
                "scales": all_factors,
                "downsamplingFactors": all_factors,
                "pixelResolution": {"unit": unit, "dimensions": _per_axis(base_xyz, channels, 1)},
                "resolution": _per_axis(base_xyz, channels, 1),
                "units": _per_axis([unit] * 3, channels, ""),
                # Neuroglancer names a 4th axis "t" unless told
                "axes": axes,
                "voxgate": {"kind": meta.kind},
            }
        )
        # written last: a group whose creation was interrupted has no multiscale marker
        write_json(location, "attributes.json", group)
        return cls.open(location, mode="r+")

    @classmethod
    def delete(cls, location: str) -> None:
        """Remove a local N5 dataset or group (used by tests and ``copy --overwrite``)."""
        if not is_local(location):
            raise CapabilityNotSupportedError("only local N5 containers can be deleted")
        shutil.rmtree(local_path(location), ignore_errors=True)

    # -- data -----------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        if self.mode != "r+":
            return frozenset({Capability.CHUNK_PRESENCE})
        caps = {Capability.WRITE, Capability.CHUNK_PRESENCE}
        if (self._multiscale_group() and not self._bdv_timepoint() and not self._flat
                and not self._funlib):
            caps.add(Capability.ADD_SCALES)
        return frozenset(caps)

    def _multiscale_group(self) -> bool:
        return kvstore_exists(self.location, "s0/attributes.json") and bool(
            _optional_json(self.location, "attributes.json").get("multiScale")
        )

    def _bdv_timepoint(self) -> bool:
        """A BigDataViewer ``setupN/timepointN`` group: its ``setupN`` parent lists the factors
        of every time point's scales."""
        parent, _, name = self.location.rstrip("/").rpartition("/")
        return bool(parent and re.fullmatch(r"timepoint\d+", name) and isinstance(
            _optional_json(parent, "attributes.json").get("downsamplingFactors"), list))

    def add_scales(self, scales: Sequence[Scale]) -> None:
        """New ``sN`` datasets with s0's axes, block size and compression, added to the group's
        n5-viewer attributes.

        Every list is written in the dimension order its reader takes it in: an sN's in s0's
        ``axes``, the group's in the group's ``axes`` (else s0's).  The group's existing lists
        are rewritten in that order with an entry for every axis, so a group an older voxgate
        wrote with x, y, z lists for x, y, z, c data has lists of one length afterwards.
        """
        self._check_writable()
        if self._time_points > 1:
            raise CapabilityNotSupportedError(
                f"{self.url} has a time axis of {self._time_points} time points, opened at "
                f"time={self._time}; voxgate does not add scales to a time series (new "
                "scales would hold this time point only); nothing was written")
        if not self._multiscale_group():
            raise CapabilityNotSupportedError(
                f"{self.url} is a single N5 dataset; voxgate adds scales to multiscale groups "
                "(voxgate.create makes one)"
            )
        if self._bdv_timepoint():
            raise CapabilityNotSupportedError(
                f"{self.url} is a BigDataViewer time point: its setup lists the scales of every "
                "time point, which must all have the same ones; voxgate does not add scales to "
                "one time point"
            )
        if self._flat:
            raise CapabilityNotSupportedError(
                f"{self.url} is a 2-D image (one z plane); voxgate adds scales to 3-D and 4-D "
                "N5 multiscale groups only")
        if self._funlib:
            # s0's funlib voxel_size and offset would be copied to the new sN beside the
            # n5-viewer lists, and the group then mixes the two conventions
            raise CapabilityNotSupportedError(
                f"{self.url} is a multiscale group placed by funlib.persistence's attributes "
                "(voxel_size, offset); voxgate adds scales to n5-viewer groups only (funlib's "
                "own scale-pyramid scripts write new sN with prepare_ds)")
        check_new_scales(self.meta, scales)
        template = read_json(join(self.location, "s0"), "attributes.json")
        group = read_json(self.location, "attributes.json")
        base = self.meta.scales[0]
        vs0 = base.voxel_size
        unit = vs0.unit
        channels = self.meta.num_channels
        # the sN lists follow s0's axes; the group's follow its own, else s0's (as they are read)
        axes = _dataset_axes(template)
        read_order = _xyz_order(group.get("axes")) or _xyz_order(template.get("axes")) or _XYZ
        g_axes = group.get("axes")
        if not (isinstance(g_axes, list) and all(isinstance(a, str) for a in g_axes)
                and sorted(a.lower() for a in g_axes) == sorted(a.lower() for a in axes)):
            g_axes = axes
        _reorder_group(group, read_order, g_axes)
        old = group.get("downsamplingFactors") or group.get("scales")
        old = old if isinstance(old, list) else []
        factors_all = []
        for sc in [*self.meta.scales, *scales]:
            known = _numbers(old[sc.index], read_order) if sc.index < len(old) else None
            factors = [_plain_number(v) for v in known] if known is not None else [
                _plain_number(v / b) for v, b in zip(sc.voxel_size.xyz(), vs0.xyz(), strict=True)]
            factors_all.append(_place(g_axes, factors, 1))
            if sc.index < len(self.meta.scales):
                continue
            voxel = [_plain_number(v) for v in sc.voxel_size.xyz()]
            centre = [_plain_number(v) for v in
                      centre_translation(base, sc, self.pyramid_anchor)[::-1]]
            # s0's position attributes describe s0: each is rewritten for sN, or left out
            attrs = {k: v for k, v in template.items() if k not in ("transform", "offset")}
            attrs.update({
                "dimensions": _place(axes, list(sc.shape.xyz()), channels, 1),
                # n5-viewer, Neuroglancer: base resolution x this scale's factors
                "downsamplingFactors": _place(axes, [_plain_number(v / b) for v, b in zip(
                    sc.voxel_size.xyz(), vs0.xyz(), strict=True)], 1),
                "pixelResolution": {"unit": unit, "dimensions": _place(
                    axes, [_plain_number(v) for v in vs0.xyz()], 1)},
                # tensorstore (reads no factors): this scale's own voxel size, in voxgate's unit
                "resolution": _place(axes, voxel, 1),
                "units": _place(axes, [unit] * 3, ""),
                "voxgate": {**_info(template), "offset": list(sc.offset),
                            "voxel_size": list(sc.voxel_size.zyx()), "unit": unit},
            })
            if "offset" in template:  # Paintera: the centre of the first voxel, in "units"
                attrs["offset"] = _place(axes, centre, 0)
            tf = _moved_transform(template.get("transform"), voxel, centre, unit)
            if tf is not None:
                attrs["transform"] = tf
            write_json(join(self.location, f"s{sc.index}"), "attributes.json", attrs)
            _add_cosem_entry(group, sc.index, voxel, centre, unit)
        group["scales"] = factors_all
        group["downsamplingFactors"] = factors_all
        # the existing scales' lists get an entry per axis too: Neuroglancer reads an sN's
        # lists over the group's, and 3 entries beside 4 there are a "Rank mismatch"
        for sc in self.meta.scales:
            path = join(self.location, f"s{sc.index}")
            attrs = read_json(path, "attributes.json")
            if _complete_lists(attrs):
                write_json(path, "attributes.json", attrs)
        write_json(self.location, "attributes.json", group)
        fresh = N5Remote.open(self.location, mode="r+", time=self._time)
        self.meta, self._arrays, self._paths = fresh.meta, fresh._arrays, fresh._paths

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        if self.missing == "error":
            self._check_present(box, scale)
        with _block_modes():
            return self._arrays[scale].read(box)

    def absent_chunks(self, box: Box, scale: int = 0) -> list[Vec]:
        sc = self.meta.scale(scale)
        return self._arrays[scale].absent_chunks(box, sc.chunks, sc.bounds)

    def listing_order(self, scale: int = 0) -> tuple[int, ...]:
        return self._arrays[scale].listing_order()

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._check_writable()
        with _block_modes():
            self._arrays[scale].write(box, array)


#: what tensorstore says of a block in N5's varlength (1) or object (2) mode (any other mode
#: is a damaged block: the first two bytes of garbage)
_OTHER_MODES = re.compile(r"varlength chunks not supported|Unexpected N5 chunk mode: 2\b")


@contextlib.contextmanager
def _block_modes() -> Iterator[None]:
    """A block in N5's varlength or object mode (as Paintera's label multisets are stored) is a
    valid block voxgate cannot read, not a corrupt one."""
    try:
        yield
    except CorruptChunkError as exc:
        if not _OTHER_MODES.search(str(exc)):
            raise
        raise CapabilityNotSupportedError(
            f"N5 block {exc.chunk or 'of this dataset'} is stored in varlength or object mode (its "
            "header's mode is not 0); voxgate, through tensorstore, reads default-mode blocks "
            f"only ({exc})"
        ) from exc



# -- where a dataset lies: COSEM / OpenOrganelle transforms and Paintera offsets ----------------
class _Transform(NamedTuple):
    """A COSEM ``transform``: voxel size and the centre of the first voxel, nm, (x, y, z)."""

    voxel: list[float] | None
    translate: list[float] | None


class _Group(NamedTuple):
    """What a multiscale group says of one of its scales."""

    base_res: list[float] | None  # s0's resolution, nm, (x, y, z)
    factors: list[float] | None  # this scale's downsampling factors, (x, y, z)
    transform: _Transform | None  # this scale's entry of the group's COSEM "multiscales"
    offset: list[float] | None  # Paintera: the centre of s0's first voxel, nm, (x, y, z)
    vs0: VoxelSize | None  # s0's voxel size (None for s0 itself)
    factors_from: str = ""  # where ``factors`` are stated (a file and its key), for warnings


_NO_GROUP = _Group(None, None, None, None, None)

#: how far (in voxels) a stated position may be from a whole voxel and still be one
_WHOLE = 1e-6


def _cosem(value: object, what: str) -> _Transform | None:
    """A COSEM / OpenOrganelle ``transform`` (``{"axes", "scale", "translate", "units",
    "order"|"ordering"}``), or None when there is none.

    Each list follows ``axes`` (so ``"order": "C"``, z first, and ``"F"``, x first, are both
    read by name); without ``axes`` the lists are z, y, x (order "C", the default) or x, y, z
    (order "F").  A transform voxgate cannot read is ignored with a VoxgateWarning.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        warn_ignored(what, f"it must be an object, got {value!r}", stacklevel=4)
        return None
    scale, translate = value.get("scale"), value.get("translate")
    lists = [v for v in (scale, translate) if v is not None]
    if not lists or not all(isinstance(v, list) and len(v) >= 3 for v in lists):
        warn_ignored(what, "'scale' and 'translate' must be lists of at least 3 numbers, got "
                 f"{scale!r} and {translate!r}", stacklevel=4)
        return None
    rank = len(lists[0])
    axes = value.get("axes")
    order = _cosem_order(value, rank)
    if order is None:
        warn_ignored(what, f"its 'axes' {axes!r} do not name x, y and z", stacklevel=4)
        return None
    units = value.get("units")
    nm = [_to_nm(units[i]) if isinstance(units, list) and len(units) > i else 1.0
          for i in order]
    voxel = _numbers(scale, order) if scale is not None else None
    shift = _numbers(translate, order, positive=False) if translate is not None else None
    if (scale is not None and voxel is None) or (translate is not None and shift is None):
        warn_ignored(what, "'scale' must be positive and 'translate' finite numbers for x, y and "
                 f"z, got {scale!r} and {translate!r}", stacklevel=4)
        return None
    return _Transform(
        None if voxel is None else [v * f for v, f in zip(voxel, nm, strict=True)],
        None if shift is None else [t * f for t, f in zip(shift, nm, strict=True)],
    )


def _cosem_datasets(group: dict[str, Any], where: str) -> dict[str, _Transform]:
    """The transform of each dataset a COSEM group's ``multiscales`` lists, by path."""
    out: dict[str, _Transform] = {}
    ms = group.get("multiscales")
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        return out
    for i, entry in enumerate(ms[0].get("datasets") or []):
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            tf = _cosem(entry.get("transform"),
                        f"{where} 'multiscales[0].datasets[{i}].transform'")
            if tf is not None:
                out[entry["path"].strip("/")] = tf
    return out


class _Funlib(NamedTuple):
    """What funlib.persistence's attributes of a dataset state."""

    voxel: VoxelSize  # its voxel size (nm)
    corner: tuple[float, float, float] | None  # its first voxel's corner, nm, (z, y, x)
    what: str  # where its offset is stated, for warnings


def _funlib_dataset(attrs: dict[str, Any], where: str) -> tuple[dict[str, Any], _Funlib | None]:
    """A dataset funlib.persistence wrote through zarr-python v2's N5Store: its attributes (for
    reading; with ``axes`` naming its dimensions, x first, when it has none) and the geometry
    its ``voxel_size``, ``offset`` (world units) and ``units`` state.  N5Store reverses the
    shape into N5's x-first ``dimensions`` but stores funlib's per-axis lists as funlib gives
    them, in C order (z first), so they are read as the zarr store reads them.  None for a
    dataset without ``axis_names`` or ``types`` beside ``voxel_size``, and for one with N5's
    own ``resolution`` or ``pixelResolution``, which wins (``voxel_size`` is then ignored with a
    VoxgateWarning)."""
    if not ("axis_names" in attrs or "types" in attrs) or "voxel_size" not in attrs:
        return attrs, None
    dims = attrs.get("dimensions")
    if not isinstance(dims, list):  # refused in _dataset_metadata
        return attrs, None
    if "resolution" in attrs or "pixelResolution" in attrs:
        key = "resolution" if "resolution" in attrs else "pixelResolution"
        warn_ignored(f"{where}: attribute voxel_size = {str(attrs['voxel_size'])[:80]!r} "
                     "(funlib.persistence)", f"the dataset's N5 {key!r} states its voxel size "
                     "(and its 'offset' is read as Paintera's)", stacklevel=4)
        return attrs, None
    axes = attrs.get("axes")
    if isinstance(axes, list) and all(isinstance(a, str) for a in axes):
        names = [a.lower() for a in reversed(axes)]
    else:
        names = funlib_names(attrs, len(dims), where)
        if not names:
            return attrs, None
        attrs = {**attrs, "axes": names[::-1]}
    voxel, corner = funlib_placement(attrs, names, where)
    return attrs, _Funlib(voxel, corner, f"{where}: attribute offset = {attrs.get('offset')!r}")


def _funlib_offset(funlib: _Funlib, vs: VoxelSize, vs0: VoxelSize | None, where: str
                   ) -> tuple[Vec, tuple[float, float, float] | None]:
    """The offset (voxels) and translation of a dataset funlib.persistence placed: its
    ``offset`` (world units) is the corner of its first voxel, on every scale.  A single
    dataset or s0 (``vs0`` None) starts at that corner over its own voxel size (the nearest
    whole voxel, with the exact position as translation, when it is between voxels).  Scale
    N of a group (funlib's scale pyramids write each sN with prepare_ds, its offset snapped
    to its own voxel size) holds voxels whose corner is there: voxgate's translation is the
    centre of that first voxel, half a voxel of sN less one of s0 further in, as for the
    Paintera and COSEM scales."""
    corner = funlib.corner
    if vs0 is None:
        if corner is None:
            return Vec(0, 0, 0), None
        return corner_offset(vs, corner, funlib.what, stacklevel=4)
    c0, c1, c2 = (c + (v - v0) / 2 for c, v, v0 in
                  zip(corner or (0.0, 0.0, 0.0), vs.zyx(), vs0.zyx(), strict=True))
    return _whole_offset((c0, c1, c2), vs.zyx(), vs0.zyx(), where), (c0, c1, c2)


def _check_funlib_scales(location: str, funlibs: Sequence[_Funlib | None]) -> None:
    """A multiscale group's scales are all placed by funlib.persistence's attributes or none
    is: a scale of another convention beside them (no voxel size of its own, or N5's
    resolution and Paintera's offset) would be placed by rules that disagree, silently."""
    if all(f is None for f in funlibs) or all(f is not None for f in funlibs):
        return
    have = [f"s{i}" for i, f in enumerate(funlibs) if f is not None]
    lack = [f"s{i}" for i, f in enumerate(funlibs) if f is None]
    raise InvalidRequestError(
        f"n5://{location} is a multiscale group whose {', '.join(have)} carry funlib.persistence's "
        f"voxel_size with axis_names / types and whose {', '.join(lack)} do not (or carry N5's "
        "resolution / pixelResolution, which win over them); voxgate reads such a group when "
        "every sN is placed one way: give every scale funlib's voxel_size, offset and "
        "axis_names, or open each sN by its own URL")


def _offset_xyz(attrs: dict[str, Any], order: Sequence[int], where: str) -> list[float] | None:
    """Paintera's ``offset`` (the centre of the first voxel, physical units, in the dimension
    order of ``axes``), in nm, (x, y, z); None when there is none.  Its unit is that of the
    resolution beside it (``units``, else ``pixelResolution``'s ``unit``, else nm)."""
    value = attrs.get("offset")
    if value is None:
        return None
    out = _numbers(value, order, positive=False)
    if out is None:
        warn_ignored(f"{where} 'offset'", f"it must be a list of finite numbers (x, y, z), got "
                 f"{value!r}", stacklevel=4)
        return None
    units = attrs.get("units")
    if isinstance(units, list) and len(units) > max(order):
        nm = [_to_nm(units[i]) for i in order]
    else:
        pr = attrs.get("pixelResolution")
        nm = [_to_nm(pr.get("unit") if isinstance(pr, dict) else None)] * 3
    return [o * f for o, f in zip(out, nm, strict=True)]


def _whole_offset(centre: Sequence[float], voxel: Sequence[float], voxel0: Sequence[float],
                  where: str) -> Vec:
    """The voxel offset (z, y, x) of a scale whose first voxel's centre is at ``centre``.

    Centres, as COSEM (xarray-multiscale), Paintera and BigDataViewer place voxels: a
    downsampled scale's first voxel is the mean of a block of s0 voxels, its centre half a
    block in (:func:`voxgate.meta.offset_from_translation`).  A position within 1e-6 voxels of
    a whole s0 voxel is that voxel; any other is taken to the nearest one with a
    VoxgateWarning (the exact position stays the scale's ``translation``).
    """
    start0 = [(t - (v - v0) / 2) / v0 for t, v, v0 in zip(centre, voxel, voxel0, strict=True)]
    offset = offset_from_translation(centre, voxel, voxel0)
    if any(abs(s - round(s)) > _WHOLE for s in start0):
        warnings.warn(VoxgateWarning(
            f"{where} places the first voxel {tuple(round(s, 6) for s in start0)} (z, y, x) "
            "voxels of scale 0 from the origin, not a whole number of voxels; voxgate takes the "
            f"nearest whole voxel, offset {tuple(offset)} (the exact position is kept as the "
            "scale's translation)"
        ), stacklevel=4)
    return offset


def _group_factors(location: str, group: dict[str, Any]) -> tuple[list[Any], str]:
    """The per-scale downsampling factors a multiscale group lists (``downsamplingFactors``, or
    n5-viewer's ``scales``), and where (the file and key, for warnings).  A BigDataViewer
    ``setupN/timepointN`` group lists none: its ``setupN`` parent holds them for every time
    point."""
    for key in ("downsamplingFactors", "scales"):
        factors = group.get(key)
        if isinstance(factors, list) and factors:
            return factors, f"{join(location, 'attributes.json')} {key!r}"
    parent, _, name = location.rstrip("/").rpartition("/")
    if parent and re.fullmatch(r"timepoint\d+", name):
        factors = _optional_json(parent, "attributes.json").get("downsamplingFactors")
        if isinstance(factors, list):
            return factors, f"{join(parent, 'attributes.json')} 'downsamplingFactors'"
    return [], ""


def _check_funlib_factors(scale: str, stated: str, factors_xyz: Sequence[float],
                          vs: VoxelSize, vs0: VoxelSize, flat: bool) -> None:
    """Warn when the N5 downsampling factors of a scale funlib.persistence placed (``stated``:
    where they are written) contradict its ``voxel_size`` over scale 0's ``vs0``: each scale of
    such a group is placed by its own funlib attributes, and the factors are ignored.  The z of
    a 2-D image (``flat``: one z plane, its z voxel size made up) is not compared."""
    implied = [v0 * f for v0, f in zip(vs0.zyx(), factors_xyz[::-1], strict=True)]
    axes = (1, 2) if flat else (0, 1, 2)
    if all(math.isclose(implied[j], vs.zyx()[j], rel_tol=1e-6) for j in axes):
        return

    def shown(zyx: Sequence[float]) -> tuple[int | float, ...]:
        return tuple(_plain_number(zyx[j]) for j in axes)

    warnings.warn(VoxgateWarning(
        f"{scale}: {stated} gives it downsampling factors {shown(factors_xyz[::-1])} "
        f"{'(y, x' if flat else '(z, y, x'}; the file lists x first), a voxel size of "
        f"{shown(implied)} nm over s0's {shown(vs0.zyx())}, but its funlib.persistence "
        f"voxel_size is {shown(vs.zyx())} nm; "
        "voxgate uses voxel_size (each scale of a funlib.persistence group is placed by its "
        "own attributes) and ignores the factors"), stacklevel=5)


def _infer_factor(full: int, scaled: int) -> float:
    """The downsampling factor that made a ``scaled`` axis of a ``full`` one, when no file says:
    the smallest power of two that gives ``scaled`` by ceiling division (BigDataViewer,
    tensorstore, voxgate) or else by floor division (n5-spark); otherwise the rounded ratio."""
    for divide in (lambda a, p: -(-a // p), lambda a, p: a // p):
        for k in range(64):
            if divide(full, 2**k) == scaled:
                return float(2**k)
            if divide(full, 2**k) < scaled:
                break
    return float(max(1, round(full / max(scaled, 1))))


def _info(attrs: dict[str, Any]) -> dict[str, Any]:
    """The ``voxgate`` attribute: what voxgate wrote for itself (empty for foreign files)."""
    info = attrs.get("voxgate")
    return info if isinstance(info, dict) else {}


def _kind(info: dict[str, Any], dtype: np.dtype[Any], where: str) -> Kind:
    """The kind voxgate wrote in ``voxgate.kind``, else guessed from the dtype; any other
    value is refused naming the file."""
    kind = info.get("kind") or _guess_kind(dtype)
    if kind not in ("image", "segmentation"):
        raise InvalidRequestError(
            f"{where} gives the kind {kind!r} (voxgate.kind); it must be 'image' or "
            "'segmentation'")
    return cast(Kind, kind)


#: how many datasets a refusal to open a group lists
_LISTED = 20


def _group_members(location: str) -> list[str]:
    """Paths (under ``location``, local only) of the N5 datasets and multiscale groups in the
    group there, for the message refusing to open the group itself; [] when not local."""
    if not is_local(location):
        return []
    root = local_path(location)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if dirpath == root or "attributes.json" not in filenames:
            continue
        try:
            with open(os.path.join(dirpath, "attributes.json"), "rb") as f:
                attrs = json.load(f)
        except (OSError, ValueError):
            continue
        multiscale = os.path.isfile(os.path.join(dirpath, "s0", "attributes.json"))
        if multiscale or (isinstance(attrs, dict) and "dimensions" in attrs):
            found.append(os.path.relpath(dirpath, root).replace(os.sep, "/"))
            dirnames.clear()  # a dataset's block directories (or a group's scales) hold no more
        if len(found) > _LISTED:
            break
    return sorted(found)


def _optional_json(location: str, key: str) -> dict[str, Any]:
    try:
        value = read_json(location, key)
    except RemoteNotFoundError:
        return {}
    if not isinstance(value, dict):
        # (taken for {} before: a group written by another tool keeps its resolution and
        # downsamplingFactors here, so its scales silently got voxgate's defaults)
        raise CorruptChunkError(
            f"{location.rstrip('/')}/{key} is {type(value).__name__} {str(value)[:40]!r}, not "
            "the JSON object N5 keeps attributes in", chunk=key)
    return value


def _compression(name: str, dtype: np.dtype[Any]) -> dict[str, Any]:
    if name == "gzip":
        return {"type": "gzip", "level": 5}
    if name == "blosc":
        # byte shuffle groups the bytes of multi-byte values; bit shuffle suits 1-byte data
        return {"type": "blosc", "cname": "zstd", "clevel": 5,
                "shuffle": 1 if dtype.itemsize > 1 else 2, "blocksize": 0}
    if name == "zstd":
        return {"type": "zstd", "level": 3}
    return {"type": "raw"}
