"""New volumes in an HDF5 file: a dataset per scale, a multiscale group for several, and the
attributes voxgate and other tools read back."""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from ...errors import InvalidRequestError, VoxgateError
from ...meta import Scale, VolumeMeta
from ...storage.units import length_unit_nm
from .layout import _attr, _triple


def _plain(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


def _create_volume(f: h5py.File, name: str, meta: VolumeMeta, filters: dict[str, Any]) -> None:
    multi = len(meta.scales) > 1
    vs0 = meta.scales[0].voxel_size
    all_factors = []
    for sc in meta.scales:
        dname = f"{name}/s{sc.index}" if multi else name
        factors = [_plain(a / b) for a, b in zip(sc.voxel_size.zyx(), vs0.zyx(), strict=True)]
        all_factors.append(factors)
        ds = _create_dataset(f, dname, meta, sc, filters)
        _write_scale_attrs(ds.attrs, meta, sc)
        if multi:
            ds.attrs["downsamplingFactors"] = factors
    if multi:
        g = f[name]
        g.attrs["multiScale"] = True
        g.attrs["scales"] = np.asarray(all_factors, dtype=float)
        g.attrs["kind"] = meta.kind
        g.attrs["voxel_size"] = list(vs0.zyx())
        g.attrs["unit"] = vs0.unit


def _create_dataset(
    f: h5py.File, name: str, meta: VolumeMeta, sc: Scale, filters: dict[str, Any]
) -> h5py.Dataset:
    lead = (meta.num_channels,) if meta.num_channels > 1 else ()
    # HDF5 refuses chunks larger than a fixed-size dataset: clip them (coarse scales are small)
    chunks = tuple(min(c, n) for c, n in zip(sc.chunks, sc.shape, strict=True))
    try:
        return f.create_dataset(
            name,
            shape=lead + tuple(sc.shape),
            dtype=meta.dtype,
            chunks=lead + chunks,
            fillvalue=meta.fill_value,
            **filters,
        )
    except (TypeError, ValueError) as exc:  # h5py's words for "a dataset is in the way"
        raise InvalidRequestError(f"cannot create {f.filename}#{name}: {exc}") from exc
    except OSError as exc:
        raise VoxgateError(f"cannot create {f.filename}#{name}: {exc}") from exc


def _write_scale_attrs(attrs: h5py.AttributeManager, meta: VolumeMeta, sc: Scale) -> None:
    vs = sc.voxel_size
    attrs["kind"] = meta.kind
    attrs["voxel_size"] = list(vs.zyx())
    attrs["unit"] = vs.unit
    attrs["voxel_offset"] = np.asarray(list(sc.offset), dtype=np.int64)
    # CREMI / gunpowder: "resolution" and a physical "offset", z, y, x
    attrs["resolution"] = list(vs.zyx())
    attrs["offset"] = [o * v for o, v in zip(sc.offset, vs.zyx(), strict=True)]
    axes = ["c", "z", "y", "x"] if meta.num_channels > 1 else ["z", "y", "x"]
    attrs["axes"] = np.asarray(axes, dtype=h5py.string_dtype())


def _follow_base_attrs(attrs: h5py.AttributeManager, base: h5py.AttributeManager,
                       sc: Scale) -> None:
    """A new level's attributes in the conventions of the file's own ``s0`` (after
    :func:`_write_scale_attrs`): ``element_size_um`` (ilastik, Fiji) when s0 states its voxel
    size so, and voxel size, resolution and offset in s0's ``unit`` (gunpowder and other
    readers of ``resolution`` / ``offset`` do not read ``unit``)."""
    vs = sc.voxel_size
    nm = length_unit_nm(vs.unit) or 1.0
    if _triple(_attr(base, "element_size_um")) is not None:
        attrs["element_size_um"] = [v * nm / 1e3 for v in vs.zyx()]
    unit = _attr(base, "unit")
    per = length_unit_nm(unit) if isinstance(unit, str) else None
    if per is None or per == nm:
        return
    size = [v * nm / per for v in vs.zyx()]
    attrs["unit"] = unit
    attrs["voxel_size"] = size
    attrs["resolution"] = size
    attrs["offset"] = [o * v for o, v in zip(sc.offset, size, strict=True)]
