"""``TiffRemote.create``: a tiled BigTIFF with OME-XML metadata (physical sizes, and the
channels' names when ``meta.extra["channel_names"]`` gives them), or a directory of slices."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    MissingDependencyError,
)
from ...geometry import VoxelSize
from ...meta import VolumeMeta
from ...storage import length_unit_nm
from ..base import check_options, open_existing
from .calibration import resolution_tags, slice_calibration
from .pages import TIFF_SUFFIXES, VOXGATE_TAG, _tifffile, _write_slice

if TYPE_CHECKING:
    from .remote import TiffRemote

#: compressions ``create`` accepts without imagecodecs (tifffile's own zlib and lzma codecs)
_COMPRESSIONS = ("none", "zlib", "lzma", "zstd", "lzw", "deflate")


def create_tiff(
    cls: type[TiffRemote],
    location: str,
    meta: VolumeMeta,
    *,
    exist_ok: bool = False,
    compression: str = "none",
    layout: str | None = None,
    **options: Any,
) -> TiffRemote:
    check_options("tiff://", options, cls.create_options)
    tifffile = _tifffile()
    path = cls._path(location)
    if layout is None:
        layout = "file" if path.lower().endswith(TIFF_SUFFIXES) else "slices"
    if layout not in ("file", "slices"):
        raise InvalidRequestError(
            f"layout must be 'file' (one BigTIFF) or 'slices' (a directory of 2-D TIFFs), "
            f"got {layout!r}"
        )
    comp = None if compression in ("none", None) else compression
    if comp is not None and comp not in _COMPRESSIONS:
        raise InvalidRequestError(
            f"compression must be one of {', '.join(_COMPRESSIONS)}, got {compression!r}"
        )
    if comp is not None:
        _check_codec(tifffile, comp, meta.dtype)
    if layout == "slices" and meta.num_channels > 1:
        raise CapabilityNotSupportedError(
            "a directory of slices holds one channel; create a single .tif file for "
            f"{meta.num_channels} channels"
        )
    if len(meta.scales) > 1:
        raise CapabilityNotSupportedError(
            "tiff:// holds one scale; create it with num_scales=1, or copy one scale into "
            "it (voxgate.copy(..., scales=[0]), voxgate cp --scales 0)"
        )
    if meta.fill_value != 0:
        raise InvalidRequestError(
            f"TIFF has no fill value; cannot create a volume with fill value "
            f"{meta.fill_value!r}"
        )
    if cls.exists(location):
        return open_existing(cls, location, meta, exist_ok, "a TIFF")
    sc = meta.scales[0]
    own = {
        "kind": meta.kind,
        "offset": list(sc.offset),
        "voxel_size": list(sc.voxel_size.zyx()),
        "unit": sc.voxel_size.unit,
        "chunks": list(sc.chunks),
    }
    tile = tuple(max(16, -(-int(n) // 16) * 16) for n in sc.chunks[1:])
    nz, ny, nx = (int(n) for n in sc.shape)
    channels = meta.num_channels
    extratags = [(VOXGATE_TAG, "s", 0, json.dumps(own), True)]
    if layout == "file":
        tmp = path + ".voxgate-tmp"
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        nt = -(-ny // tile[0]) * -(-nx // tile[1])
        (vz, vy, vx), ome_unit = _ome_sizes(sc.voxel_size)
        md: dict[str, Any] = {
            "axes": "CZYX" if channels > 1 else "ZYX",
            "PhysicalSizeX": vx, "PhysicalSizeXUnit": ome_unit,
            "PhysicalSizeY": vy, "PhysicalSizeYUnit": ome_unit,
            "PhysicalSizeZ": vz, "PhysicalSizeZUnit": ome_unit,
        }
        shape = (channels, nz, ny, nx) if channels > 1 else (nz, ny, nx)
        # OME has no 64-bit integers: those files carry the voxel size in voxgate's tag only
        ome = meta.dtype.name not in ("uint64", "int64")
        names = _channel_names(meta)
        if names is not None:
            md["Channel"] = {"Name": names}  # <Channel Name=...>, one per channel
        if not ome:
            md = {"axes": md["axes"]}
        try:
            with tifffile.TiffWriter(tmp, bigtiff=True, ome=ome) as tw:
                tw.write(
                    _zero_tiles(nt * nz * channels, tile, meta.dtype),
                    shape=shape, dtype=meta.dtype, tile=tile, compression=comp,
                    photometric="minisblack", metadata=md, extratags=extratags,
                    **resolution_tags(sc.voxel_size),
                )
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
    else:
        os.makedirs(path, exist_ok=True)
        width = max(5, len(str(nz - 1)))
        zero = np.zeros((ny, nx), dtype=meta.dtype)
        calibration = slice_calibration(sc.voxel_size, (ny, nx), meta.dtype)
        for z in range(nz):
            name = os.path.join(path, f"{z:0{width}d}.tif")
            _write_slice(name, zero, tile, comp, extratags, calibration)
    return cls.open(location, mode="r+")


def _channel_names(meta: VolumeMeta) -> list[str] | None:
    """The channels' names ``meta.extra`` gives (a copy's source's), one string per channel,
    for the OME-XML; None when it gives none, or not one per channel."""
    names = meta.extra.get("channel_names")
    if isinstance(names, list) and len(names) == meta.num_channels and all(
            isinstance(n, str) for n in names):
        return list(names)
    return None


#: OME's UnitsLength symbols voxgate writes, by nanometres per unit
_OME_UNITS = {1e-3: "pm", 0.1: "Å", 1.0: "nm", 1e3: "µm", 1e6: "mm", 1e7: "cm", 1e9: "m"}


def _ome_sizes(vs: VoxelSize) -> tuple[tuple[float, float, float], str]:
    """The voxel size as OME PhysicalSizes: in its own unit under OME's symbol for it, else in
    nm.  A unit written as spelled ("nanometer", "angstrom") is none of OME's UnitsLength, and
    OME readers (Bio-Formats, Fiji, tifffile) then take or refuse the sizes at their will."""
    f = length_unit_nm(vs.unit)
    if f is None:  # (a unit voxgate does not know: as given, voxgate's own tag has it too)
        return vs.zyx(), vs.unit
    if f in _OME_UNITS:
        return vs.zyx(), _OME_UNITS[f]
    z, y, x = (v * f for v in vs.zyx())
    return (z, y, x), "nm"


def _check_codec(tifffile: Any, comp: str, dtype: np.dtype[Any]) -> None:
    """Refuse, before anything is written, a compression whose codec is not installed
    (tifffile has zlib and lzma of its own; zstd, LZW, ... come with imagecodecs)."""
    try:
        tifffile.imwrite(io.BytesIO(), np.zeros((16, 16), dtype), tile=(16, 16),
                         compression=comp, photometric="minisblack")
    except (ImportError, KeyError) as exc:
        raise MissingDependencyError(
            f"TIFF compression {comp!r} needs the imagecodecs package (pip install "
            f"imagecodecs), or use compression='zlib' or 'lzma' ({type(exc).__name__}: {exc})"
        ) from exc


def _zero_tiles(n: int, tile: tuple[int, ...], dtype: np.dtype[Any]) -> Iterator[np.ndarray]:
    zero = np.zeros(tile, dtype=dtype)
    for _ in range(n):
        yield zero
