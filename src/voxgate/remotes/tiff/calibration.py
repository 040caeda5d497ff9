"""The voxel size in TIFF's and ImageJ's standard places: the resolution tags (and ImageJ's
description) voxgate writes so that other readers (tifffile, Fiji/ImageJ, Bio-Formats, libtiff
tools) see its files calibrated, and the resolution tags of plain TIFFs read back as a size."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from typing import Any

import numpy as np

from ...errors import VoxgateWarning
from ...geometry import VoxelSize
from ...storage import length_unit_nm
from .pages import _tifffile

#: nanometres per TIFF ResolutionUnit: 2 inch (TIFF's default when the tag is absent), 3 cm;
#: 1 (none) is no physical unit
_RESOLUTION_UNIT_NM = {2: Fraction(25_400_000), 3: Fraction(10_000_000)}
_CENTIMETER, _NONE = 3, 1
_U32 = 2**32 - 1

#: dots per inch of screens, printers and document scanners: an inch resolution of these says
#: how to print an image, not how large its voxels are (72 is what most image software writes)
SCREEN_DPI = frozenset({72, 96, 100, 120, 144, 150, 200, 240, 300, 360, 400, 600, 720, 800,
                        1200, 2400, 4800, 9600})

#: dtypes an ImageJ file holds (tifffile's ImageJ writer takes these only; ImageJ has no
#: 64-bit integers, and reads 32-bit integers and doubles as floats)
IMAGEJ_DTYPES = frozenset({"uint8", "uint16", "int16", "float32"})


def _exact(value: float) -> Fraction:
    return Fraction(repr(float(value)))


def _rational(value: Fraction) -> tuple[int, int] | None:
    """``value`` as a TIFF RATIONAL (two 32-bit unsigned integers), None if it is none."""
    if value <= 0:
        return None
    if value.numerator > _U32 or value.denominator > _U32:
        value = value.limit_denominator(max(1, min(_U32, int(_U32 / value))))
    if value <= 0 or value.numerator > _U32:
        return None
    return value.numerator, value.denominator


def _sizes_nm(vs: VoxelSize) -> tuple[Fraction, Fraction, Fraction] | None:
    f = length_unit_nm(vs.unit)
    if f is None or not all(math.isfinite(v) and v > 0 for v in vs.zyx()):
        return None
    z, y, x = (_exact(v) * _exact(f) for v in vs.zyx())
    return z, y, x


def resolution_tags(vs: VoxelSize) -> dict[str, Any]:
    """tifffile's ``resolution=`` and ``resolutionunit=`` for pixels per centimetre (TIFF's
    only metric unit), or nothing for a unit voxgate does not know or a size TIFF's rationals
    cannot hold."""
    sizes = _sizes_nm(vs)
    if sizes is None:
        return {}
    _, y, x = sizes
    xres, yres = _rational(_RESOLUTION_UNIT_NM[3] / x), _rational(_RESOLUTION_UNIT_NM[3] / y)
    if xres is None or yres is None:
        return {}
    return {"resolution": (xres, yres), "resolutionunit": _CENTIMETER}


def slice_calibration(vs: VoxelSize, shape: tuple[int, int], dtype: np.dtype[Any]
                      ) -> dict[str, Any]:
    """What each slice of a directory carries (``_write_slice``'s ``keep``): for the dtypes
    ImageJ holds, ImageJ's own way, as Fiji writes it (an ImageJ description with
    ``unit=micron`` and the z ``spacing``, X/Y resolution in pixels per µm, ResolutionUnit
    none), which Fiji's "Image Sequence", Bio-Formats and tifffile read, z included; for the
    others pixels per centimetre (z has no standard place in a 2-D TIFF: voxgate's tag)."""
    sizes = _sizes_nm(vs)
    if sizes is None:
        return {}
    if np.dtype(dtype).name not in IMAGEJ_DTYPES:
        return resolution_tags(vs)
    z, y, x = (v / 1000 for v in sizes)  # µm
    xres, yres = _rational(1 / x), _rational(1 / y)
    if xres is None or yres is None:
        return resolution_tags(vs)
    description = _tifffile().imagej_description(shape, "YX", unit="micron", spacing=float(z))
    return {"description": description.encode("ascii"), "resolution": (xres, yres),
            "resolutionunit": _NONE}


def resolution_voxel_size(page: Any, path: str) -> tuple[float, float] | None:
    """(y, x) in nm from a plain TIFF's XResolution / YResolution, or None.

    ResolutionUnit centimetre is always a size.  Inch (also TIFF's default when the tag is
    absent) is one unless both values are a screen, printer or scanner resolution
    (:data:`SCREEN_DPI`: 72, 96, 300, 600 dpi, ...), which most image software writes whatever
    the image shows: those are ignored, with a :class:`VoxgateWarning`.  None (1) has no unit;
    a resolution of 1 per unit is the placeholder writers put when they know none."""
    tags = page.tags
    xres, yres = tags.get(282), tags.get(283)
    if xres is None or yres is None:
        return None
    unit_tag = tags.get(296)
    unit = int(unit_tag.value) if unit_tag is not None else 2
    per_unit = _RESOLUTION_UNIT_NM.get(unit)
    if per_unit is None:
        return None
    values = []
    for tag in (yres, xres):
        try:
            num, den = (int(v) for v in tag.value)
        except (TypeError, ValueError):
            return None
        if num <= 0 or den <= 0:
            return None
        values.append(Fraction(num, den))
    if all(v == 1 for v in values):
        return None
    if unit == 2 and all(v.denominator == 1 and v.numerator in SCREEN_DPI for v in values):
        warnings.warn(VoxgateWarning(
            f"{path}: its resolution tags say {values[1]} x {values[0]} dots per inch, a "
            "screen or print resolution rather than a microscope's; voxgate ignores them and "
            "reads 1 nm voxels (pass voxel_size= to voxgate.open to give the true size)"),
            stacklevel=2)
        return None
    y, x = (float(per_unit / v) for v in values)
    return y, x
