"""What an HDF5 file holds: its volumes (3-D/4-D datasets and multiscale groups), the one a
URL without a fragment means, and the attributes that describe them (voxel size, offset,
kind, scale factors)."""

from __future__ import annotations

import contextlib
import json
import math
import re
import warnings
from typing import Any

import h5py
import numpy as np

from ...errors import InvalidRequestError, RemoteNotFoundError, VoxgateWarning
from ...geometry import Vec, VoxelSize
from ...meta import SUPPORTED_DTYPES, Kind
from ...storage.units import UNITS_NM, length_unit_nm
from .._foreign_attrs import funlib_names, nearest_voxel, warn_ignored
from .._foreign_attrs import triple as _triple
from .._foreign_attrs import zyx_numbers as _zyx_numbers

DEFAULT_DATASET = "/volume"


def _guess_kind(dtype: np.dtype[Any]) -> Kind:
    return "segmentation" if dtype.kind in "ui" and dtype.itemsize >= 4 else "image"


# -- attributes -----------------------------------------------------------------------------------
def _attr(attrs: h5py.AttributeManager, key: str) -> Any:
    """An attribute as plain Python (str, float, list), or None when absent or unreadable."""
    try:
        if key not in attrs:
            return None
        value = attrs[key]
    except (OSError, TypeError, ValueError):  # an attribute of a type h5py cannot read
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [
            v.decode("utf-8", "replace") if isinstance(v, bytes)
            else v.item() if isinstance(v, np.generic) else v
            for v in value.ravel()
        ]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _ignored(where: str, key: str, value: Any, fallback: str, flat: bool = False) -> None:
    numbers = "two (y, x) or three (z, y, x) numbers" if flat else "three numbers, z, y, x"
    warn_ignored(f"{where}: attribute {key}={value!r}",
                 f"it is not what voxgate reads there ({numbers}"
                 f"{'' if key.endswith('offset') else ', all positive'}); {fallback}",
                 stacklevel=4)


def _units_unit(attrs: h5py.AttributeManager, where: str, warn: bool) -> str | None:
    """The one length unit of funlib.persistence's per-axis ``units`` list (its spatial axes;
    a channel axis has ""), or None when there is none or they differ."""
    units = _attr(attrs, "units")
    if isinstance(units, str):
        units = [units]
    if not isinstance(units, list):
        return None
    named = {u.strip() for u in units if isinstance(u, str) and u.strip()}
    if len(named) == 1:
        return named.pop()
    if len(named) > 1 and warn:
        warn_ignored(f"{where}: attribute units={units!r}",
                     "voxgate reads one length unit for z, y and x; the voxel size is taken "
                     "as nanometres", stacklevel=5)
    return None


def _unit_nm(attrs: h5py.AttributeManager, where: str = "", *, warn: bool = False) -> float:
    """Nanometres per the object's ``unit``, else its funlib.persistence ``units`` list (nm
    when absent or unknown)."""
    unit = _attr(attrs, "unit")
    if not isinstance(unit, str) or not unit.strip():
        unit = _units_unit(attrs, where, warn)
    if not isinstance(unit, str) or not unit.strip():
        return 1.0
    known = length_unit_nm(unit)
    if known is None and warn:
        warnings.warn(
            VoxgateWarning(
                f"{where}: unit {unit!r} is not a length unit voxgate knows "
                f"({', '.join(UNITS_NM)}, ...); the voxel size is taken as nanometres"
            ),
            stacklevel=4,
        )
    return known or 1.0


def _voxel_size(attrs: h5py.AttributeManager, where: str = "", *,
                flat: bool = False) -> VoxelSize | None:
    """The voxel size (z, y, x) an object's attributes state, or None.

    On a 2-D dataset (``flat``: one z plane) two numbers are (y, x), the z size being the
    larger of them, as for a 2-D image in every store (:func:`.._foreign_attrs.flat_z_size`).
    A voxel-size attribute that is present but not three (or so two) positive numbers, or a
    ``unit`` voxgate does not know, is ignored with a :class:`VoxgateWarning` (the data stays
    readable; the warning says why the voxel size is not the file's)."""
    factor = _unit_nm(attrs, where, warn=True)
    for key, scale in (("voxel_size", factor), ("resolution", factor), ("element_size_um", 1e3)):
        raw = _attr(attrs, key)
        if raw is None:
            continue
        v = _zyx_numbers(raw, flat, offset=False)
        if v is not None and all(math.isfinite(x) and x > 0 for x in v):
            return VoxelSize.of([x * scale for x in v])
        _ignored(where, key, raw, "the voxel size comes from the next attribute or is 1 nm",
                 flat)
    return None


def _voxel_offset(attrs: h5py.AttributeManager, vs: VoxelSize | None, where: str = "", *,
                  flat: bool = False) -> Vec:
    """The offset in voxels: voxgate's ``voxel_offset``, else a CREMI/gunpowder ``offset`` in
    physical units when it is a whole number of voxels.  On a 2-D dataset (``flat``) two
    numbers are (y, x), the z offset 0."""
    raw = _attr(attrs, "voxel_offset")
    v = _zyx_numbers(raw, flat, offset=True)
    if v is not None and all(x.is_integer() for x in v):
        return Vec(*(int(x) for x in v))
    if raw is not None:
        _ignored(where, "voxel_offset", raw, "the offset comes from 'offset' or is 0", flat)
    raw = _attr(attrs, "offset")
    w = _zyx_numbers(raw, flat, offset=True)
    if raw is not None and (w is None or not all(math.isfinite(x) for x in w)):
        _ignored(where, "offset", raw, "the offset is 0", flat)
    elif w is not None and vs is not None:
        # "offset" is in the file's unit, the voxel size here in nm
        unit = _unit_nm(attrs)
        vox = [x * unit / s for x, s in zip(w, vs.zyx(), strict=True)]
        return nearest_voxel(vox, f"{where}: attribute offset = {raw!r}", vs.zyx(), kept=False,
                             stacklevel=4)
    return Vec(0, 0, 0)


def _is_volume_dataset(obj: Any) -> bool:
    return isinstance(obj, h5py.Dataset) and len(obj.shape) in (3, 4)


def _is_multiscale(obj: Any) -> bool:
    return isinstance(obj, h5py.Group) and _is_volume_dataset(obj.get("s0"))


def _volumes(f: h5py.File) -> list[str]:
    """Paths of every volume in the file: 3-D/4-D datasets and multiscale groups (whose sN
    datasets are not listed again)."""
    found: list[str] = []
    if _is_multiscale(f):
        return ["/"]

    def visit(name: str, obj: Any) -> None:
        if any(name == p or name.startswith(p + "/") for p in found):
            return
        if _is_multiscale(obj) or _is_volume_dataset(obj):
            found.append(name)

    f.visititems(visit)
    return ["/" + n for n in found]


def _planes(f: h5py.File) -> list[str]:
    """Paths of the file's 2-D datasets (images, each a volume of one z plane)."""
    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim == 2:
            found.append("/" + name)

    f.visititems(visit)
    return found


def _resolve_default(f: h5py.File, path: str) -> str:
    """The volume a fragment-less URL means: /volume, else the file's only volume, else (none
    being 3-D or 4-D) its only 2-D dataset."""
    default = f.get(DEFAULT_DATASET)
    if _is_volume_dataset(default) or _is_multiscale(default):
        return DEFAULT_DATASET
    volumes = _volumes(f)
    if len(volumes) == 1:
        return volumes[0]
    if not volumes:
        planes = _planes(f)
        if len(planes) == 1:  # the file's only image: one z plane
            return planes[0]
        raise RemoteNotFoundError(
            f"{path} holds no 3-D (z, y, x) or 4-D (c, z, y, x) dataset or multiscale group"
            + (f"; its 2-D datasets ({', '.join(planes[:20])}) open as one z plane when the "
               f"URL names one, e.g. hdf5://{path}#{planes[0]}" if planes else "")
        )
    raise InvalidRequestError(
        f"{path} holds several volumes ({', '.join(volumes)}); name one in the URL, e.g. "
        f"hdf5://{path}#{volumes[0]}"
    )


def _listing(f: h5py.File) -> str:
    names = _volumes(f)
    return f"; it holds {', '.join(names)}" if names else "; it holds no volume"


def _check_dtype(dtype: np.dtype[Any], where: str) -> np.dtype[Any]:
    native = dtype.newbyteorder("=") if dtype.kind in "uif" else dtype
    if native.name not in SUPPORTED_DTYPES:
        raise InvalidRequestError(
            f"{where} holds {dtype}; voxgate reads {', '.join(SUPPORTED_DTYPES)}"
        )
    return native


def _axis_names(attrs: h5py.AttributeManager, ds: h5py.Dataset, where: str
                ) -> tuple[str, list[str]] | None:
    """The names a dataset's writer gave its axes, in its dimension order, and where they come
    from: voxgate's ``axes``, funlib.persistence's ``axis_names`` and ``types`` (read by
    :func:`funlib_names`, as the zarr store reads them),
    ilastik / vigra's ``axistags`` JSON, else HDF5 dimension-scale labels; None if none."""
    axes = _attr(attrs, "axes")
    if isinstance(axes, list):
        return "axes", [str(a).lower() for a in axes]
    funlib = {k: _attr(attrs, k) for k in ("axis_names", "types")}
    if any(v is not None for v in funlib.values()):
        # as the zarr store reads them: "c0^", "d0", "d1", "d2" (its defaults) are c, z, y, x
        names = funlib_names(funlib, ds.ndim, where)
        if names:
            return "axis_names", names
    tags = _attr(attrs, "axistags")
    if isinstance(tags, str):
        try:
            parsed = json.loads(tags)
            keys = [str(a["key"]).lower() for a in parsed["axes"]]
        except (ValueError, KeyError, TypeError):
            keys = None
        if keys:
            return "axistags", keys
    try:
        labels = [str(d.label).lower() for d in ds.dims]
    except (OSError, RuntimeError, ValueError):  # pragma: no cover - unreadable dimension labels
        labels = []
    if labels and all(labels):
        return "dimension-scale label", labels
    return None


def _scale_factors(group_factors: list[Any], i: int) -> list[float] | None:
    """Factors of scale ``i`` from a group's flattened ``scales`` attribute (h5py reads an
    (n, 3) array attribute back as one list)."""
    if len(group_factors) % 3 or (i + 1) * 3 > len(group_factors):
        return None
    return _triple(group_factors[i * 3 : i * 3 + 3])


# -- BigDataViewer HDF5 ---------------------------------------------------------------------------
_BDV_CELLS = re.compile(r"/?(?:.*/)?t\d+/s(\d+)/(\d+)/cells")


def _bdv_level(f: h5py.File, name: str) -> tuple[h5py.Dataset, int] | None:
    """A BigDataViewer ``tT/sS/L/cells`` dataset's setup's ``sS/resolutions`` and its level L,
    or None when ``name`` is no such dataset."""
    name = "/" + name.lstrip("/")
    m = _BDV_CELLS.fullmatch(name)
    if m is None:
        return None
    prefix = name[: m.start(1) - 1].rsplit("/", 2)[0]  # what precedes "tT/"
    res = f.get(f"{prefix}/s{m.group(1)}/resolutions")
    if not isinstance(res, h5py.Dataset) or res.ndim != 2 or res.shape[1] != 3:
        return None
    return res, int(m.group(2))


def _bdv_storage_dtype(f: h5py.File, name: str, ds: h5py.Dataset) -> np.dtype[Any] | None:
    """int16 for a BigDataViewer ``cells`` dataset: BDV writes its unsigned 16-bit voxels as
    HDF5 int16 (Java has no unsigned types) and reads them back as uint16, as voxgate must (read
    as int16, every voxel above 32767 would be negative).  None for any other dataset."""
    if ds.dtype.kind == "i" and ds.dtype.itemsize == 2 and _bdv_level(f, name) is not None:
        return np.dtype("int16")
    return None


def _bdv_factors(f: h5py.File, name: str) -> list[float] | None:
    """The downsampling factors (z, y, x) of a BigDataViewer level (its setup's ``resolutions``
    row, which BDV writes x, y, z), or None."""
    found = _bdv_level(f, name)
    if found is None:
        return None
    res, level = found
    if level >= res.shape[0]:
        return None
    row = _triple([float(v) for v in res[level]])
    if row is None or not all(math.isfinite(v) and v > 0 for v in row):
        return None
    return row[::-1]


# -- n5-hdf5 (saalfeldlab's N5HDF5Writer: n5-viewer, BigStitcher, Paintera on .h5) ---------------
#: where N5HDF5Writer keeps the attributes that are no HDF5 type (objects: pixelResolution)
N5_JSON_ROOT = "N5_JSON_ROOT"


def _is_n5_hdf5(f: h5py.File, *objs: Any) -> bool:
    """Whether the volume made of ``objs`` was written through N5HDF5Writer: the writer sets the
    root's ``n5`` attribute (the N5 version) on every file it opens, and voxgate's own
    ``voxel_size`` (z, y, x) is on none of them."""
    return isinstance(_attr(f["/"].attrs, "n5"), str) and not any(
        o is not None and "voxel_size" in o.attrs for o in objs)


def _n5_attrs(attrs: h5py.AttributeManager | None) -> dict[str, Any]:
    """An object's N5 attributes as N5HDF5Reader gives them: its HDF5 attributes, else the
    members of its ``N5_JSON_ROOT`` JSON."""
    if attrs is None:
        return {}
    out: dict[str, Any] = {}
    root = _attr(attrs, N5_JSON_ROOT)
    if isinstance(root, str):
        with contextlib.suppress(ValueError):
            parsed = json.loads(root)
            if isinstance(parsed, dict):
                out.update(parsed)
    for key in attrs:
        if key != N5_JSON_ROOT:
            out[key] = _attr(attrs, key)
    return out


def _zyx_of_xyz(value: Any, positive: bool = True) -> list[float] | None:
    """Three numbers written x, y, z (N5's order), as z, y, x; None if they are not."""
    v = _triple(value)
    if v is None or not all(math.isfinite(x) and (x > 0 or not positive) for x in v):
        return None
    return v[::-1]


def _n5_factors(ds: dict[str, Any], group: dict[str, Any], i: int) -> list[float] | None:
    """Scale ``i``'s downsampling factors (z, y, x): its own ``downsamplingFactors``, else
    row ``i`` of the group's ``scales`` (both x, y, z)."""
    own = _zyx_of_xyz(ds.get("downsamplingFactors"))
    if own is not None:
        return own
    rows = group.get("scales")
    if isinstance(rows, list) and rows and isinstance(rows[0], list):
        rows = [v for row in rows for v in row]  # (JSON: a list of rows)
    if isinstance(rows, list) and len(rows) % 3 == 0 and 3 * i + 3 <= len(rows):
        return _zyx_of_xyz(rows[3 * i: 3 * i + 3])
    return None


def _n5_resolution(attrs: dict[str, Any]) -> tuple[list[float] | None, list[float] | None]:
    """(pixelResolution, resolution) of N5 attributes, z, y, x in nm: n5-viewer's
    ``pixelResolution`` ``{"unit", "dimensions"}`` (or a bare list) is the base voxel size,
    which a scale's factors multiply; ``resolution`` (Paintera, tensorstore), with per-axis
    ``units``, is the object's own voxel size."""
    base = None
    pr = attrs.get("pixelResolution")
    if isinstance(pr, dict):
        dims = _zyx_of_xyz(pr.get("dimensions"))
        unit = pr.get("unit")
        f = (length_unit_nm(unit) if isinstance(unit, str) else None) or 1.0
        base = [d * f for d in dims] if dims is not None else None
    else:
        base = _zyx_of_xyz(pr)
    own = _zyx_of_xyz(attrs.get("resolution"))
    units = attrs.get("units")
    if own is not None and isinstance(units, list) and len(units) == 3:
        own = [r * ((length_unit_nm(u) if isinstance(u, str) else None) or 1.0)
               for r, u in zip(own, units[::-1], strict=True)]
    return base, own


def _n5_scale(ds_attrs: h5py.AttributeManager, group: dict[str, Any], i: int,
              shape: tuple[int, ...], shape0: tuple[int, ...], where: str
              ) -> tuple[VoxelSize, Vec]:
    """Voxel size and offset (z, y, x) of scale ``i`` of an n5-hdf5 volume, read as the n5://
    store reads the same attributes in an N5 container (every list x, y, z): its own
    ``pixelResolution`` times its factors, else its own ``resolution``, else the group's
    resolution times its factors, else the factors alone (in nm); ``offset`` (Paintera,
    physical, x, y, z) in the resolution's unit."""
    d = _n5_attrs(ds_attrs)
    factors = _n5_factors(d, group, i) or (
        [1.0, 1.0, 1.0] if i == 0
        else [float(max(1, round(a / b))) for a, b in zip(shape0, shape, strict=True)])
    base, own = _n5_resolution(d)
    g_base, g_own = _n5_resolution(group)
    if base is None and own is None:
        base = g_base or g_own
    zyx = own if base is None and own is not None else [
        b * k for b, k in zip(base or [1.0, 1.0, 1.0], factors, strict=True)]
    vs = VoxelSize.of(zyx, "nm")
    raw = d.get("offset")
    off = _zyx_of_xyz(raw, positive=False)
    if off is None:
        if raw is not None:
            _ignored(where, "offset", raw, "the offset is 0")
        return vs, Vec(0, 0, 0)
    # the offset is in the unit the resolution was written in
    pr = d.get("pixelResolution", group.get("pixelResolution"))
    unit = pr.get("unit") if isinstance(pr, dict) else None
    units = d.get("units", group.get("units"))
    per = ([u for u in units[::-1]] if isinstance(units, list) and len(units) == 3
           else [unit] * 3)
    nm = [(length_unit_nm(u) if isinstance(u, str) else None) or 1.0 for u in per]
    vox = [o * n / v for o, n, v in zip(off, nm, vs.zyx(), strict=True)]
    return vs, nearest_voxel(vox, f"{where}: attribute offset = {raw!r} (x, y, z)", vs.zyx(),
                             kept=False, stacklevel=4)
