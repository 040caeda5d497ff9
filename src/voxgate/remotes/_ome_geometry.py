"""The geometry of an OME-Zarr multiscale image as the NGFF versions and their writers give it.

- Axes: NGFF 0.4 / 0.5 objects, 0.3's bare names, and none at all in 0.1 / 0.2, whose arrays
  are 5-D ``t, c, z, y, x`` (a 3-D array without axes is read as ``z, y, x``, as voxgate always
  did).  Names are matched without case.  A 2-D image (space axes y and x, no z: NGFF allows
  2 or 3 space axes) is a volume of one z plane, whose z voxel size is the coarser of the
  level's y and x voxel sizes (so downsampling toward isotropy halves y and x, never the one
  plane) and whose z translation is 0; other space axes without z, y and x are refused.
- ``coordinateTransformations`` are composed in the order listed (NGFF 0.4 requires scale then
  translation, but a second scale or a translation first would otherwise be misread); a
  transformation stored in a separate array (``"path"``) is refused.
- A dataset without a scale (NGFF 0.1 - 0.3 had no transformations) is scaled from scale 0 by
  its shape: the factor whose downsampling makes that shape (a power of two first).
- A downsampled dataset whose translation equals scale 0's (a scale-only pyramid, as
  bioformats2raw and ome-zarr-py before 0.9 write it) starts where scale 0 does: its offset is
  scale 0's divided by the factor, never a voxel before it.

:func:`place` gives one dataset's voxel size and translation from the multiscale's
:class:`Frame` and the datasets' transformations alone (a dataset's shape is read only when
it states no scale), so a single level opened on its own is placed as the group places it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import CapabilityNotSupportedError, InvalidRequestError
from ..geometry import Vec
from ..meta import offset_from_translation
from ._foreign_attrs import flat_z_size

__all__ = ["Frame", "axis_names", "compose", "level_offset", "place", "shape_factors"]

#: the axes NGFF 0.1 and 0.2 imply, by rank (5-D is theirs; 3-D is what voxgate always read)
_DEFAULT_AXES = {5: ["t", "c", "z", "y", "x"], 3: ["z", "y", "x"]}


def axis_names(ms: dict[str, Any], rank: int, where: str) -> list[str]:
    """The lower-case axis names of the multiscale ``ms`` whose arrays have ``rank`` dimensions;
    refused, naming ``where``, when they do not name one per dimension with z, y and x."""
    axes = ms.get("axes")
    if not axes:
        if rank not in _DEFAULT_AXES:
            raise InvalidRequestError(
                f"{where}: a {rank}-D OME-Zarr multiscale without 'axes'; NGFF 0.1 / 0.2 images "
                "are 5-D (t, c, z, y, x), and voxgate reads 3-D ones as z, y, x"
            )
        return list(_DEFAULT_AXES[rank])
    if not isinstance(axes, list):
        raise InvalidRequestError(f"{where}: 'axes' must be a list, got {axes!r}")
    names = []
    for a in axes:
        name = a if isinstance(a, str) else a.get("name") if isinstance(a, dict) else None
        if not isinstance(name, str):
            raise InvalidRequestError(f"{where}: an axis without a name in {axes!r}")
        names.append(name.lower())
    if len(names) != rank or len(set(names)) != rank:
        raise InvalidRequestError(
            f"{where}: 'axes' {names} must name each of the arrays' {rank} dimensions once"
        )
    if not {"y", "x"} <= set(names):
        space = [n for n, a in zip(names, axes, strict=True)
                 if isinstance(a, dict) and a.get("type") == "space"]
        raise CapabilityNotSupportedError(
            f"{where} has axes {names} (space axes {space or 'not marked'}); voxgate reads "
            "images whose space axes are z, y and x, or y and x (a 2-D image, read as one z "
            "plane), plus c and t (one time point at a time: time=); not space axes of other names"
        )
    return names


def compose(transforms: object, rank: int, where: str) -> tuple[list[float], list[float], bool]:
    """(scale, translation, whether a scale was given) of ``coordinateTransformations`` applied
    in the order listed: ``x -> s * x + t``."""
    scale, shift, scaled = [1.0] * rank, [0.0] * rank, False
    if transforms is None:
        return scale, shift, scaled
    if not isinstance(transforms, list):
        raise InvalidRequestError(
            f"{where}: coordinateTransformations must be a list, got {transforms!r}")
    for t in transforms:
        kind = t.get("type") if isinstance(t, dict) else None
        if kind == "identity":
            continue
        if kind not in ("scale", "translation"):
            raise CapabilityNotSupportedError(
                f"{where}: coordinate transformation {t!r} is not one voxgate reads (scale, "
                "translation, identity)"
            )
        assert isinstance(t, dict)
        if kind not in t:
            raise CapabilityNotSupportedError(
                f"{where}: a {kind} transformation without {kind!r} values ({t!r}: stored in "
                "an array, which voxgate does not read)"
            )
        values = t[kind]
        if (not isinstance(values, list) or len(values) != rank
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and math.isfinite(v) for v in values)):
            raise InvalidRequestError(
                f"{where}: {kind} must be {rank} finite numbers (one per axis), got {values!r}"
            )
        if kind == "scale":
            scale = [a * float(b) for a, b in zip(scale, values, strict=True)]
            shift = [a * float(b) for a, b in zip(shift, values, strict=True)]
            scaled = True
        else:
            shift = [a + float(b) for a, b in zip(shift, values, strict=True)]
    return scale, shift, scaled


def shape_factors(shape0: Sequence[int], shape: Sequence[int], where: str) -> list[float]:
    """The downsampling factor of each axis from scale 0's ``shape0`` to ``shape``, for a
    dataset that gives no scale: one whose downsampling (rounding up or down) makes ``n_k``
    from ``n_0``, a power of two when one does (17 -> 5 is 4, not 3), else the nearest to
    ``n_0 / n_k``; refused when none does."""
    out = []
    for n0, n in zip(shape0, shape, strict=True):
        # only f in [n0 / (n + 1), n0 / (n - 1)] can make n
        candidates = range(max(1, n0 // (n + 1)), n0 // max(n - 1, 1) + 2)
        fits = [f for f in candidates if n in (n0 // f, -(-n0 // f))]
        if not fits:
            raise InvalidRequestError(
                f"{where} gives no scale, and its shape {tuple(shape)} is no downsampling of "
                f"scale 0's {tuple(shape0)}; give the datasets coordinateTransformations"
            )
        twos = [f for f in fits if f & (f - 1) == 0]
        out.append(float(min(twos or fits, key=lambda f: abs(f - n0 / n))))
    return out


def level_offset(translation: Sequence[float], voxel: Sequence[float],
                 translation0: Sequence[float], voxel0: Sequence[float]) -> Vec:
    """The integer offset (z, y, x) of a dataset with ``translation`` and ``voxel`` size, scale
    0 having ``translation0`` and ``voxel0`` (all in nm).  An axis whose translation is scale
    0's although its voxels are larger was written without the pixel-centre half block (a
    scale-only pyramid): its first voxel starts where scale 0's does, so the half block is
    added before :func:`offset_from_translation` (which otherwise put a factor-4 level of such
    a pyramid one voxel before scale 0, and a factor-2 one not)."""
    centred = [
        t + (v - v0) / 2 if v > v0 * (1 + 1e-9) and abs(t - t0) <= 1e-6 * v0 else t
        for t, v, t0, v0 in zip(translation, voxel, translation0, voxel0, strict=True)
    ]
    return offset_from_translation(centred, voxel, voxel0)


@dataclass(frozen=True)
class Frame:
    """What a multiscale says of all its datasets: their axis ``names`` (lower case), the
    positions of z, y and x among them (``spatial``; y and x only for a 2-D image, ``flat``),
    nanometres per unit of each of z, y, x (``nm``; a 2-D image's z takes y's unit), and the
    multiscale's own ``scale`` and ``translation``, which apply after each dataset's (NGFF)."""

    names: list[str]
    spatial: list[int]
    nm: list[float]
    scale: list[float]
    translation: list[float]

    @property
    def flat(self) -> bool:
        """A 2-D image (no z axis), read as a volume of one z plane."""
        return "z" not in self.names


def place(frame: Frame, datasets: Sequence[dict[str, Any]], i: int,
          shape_of: Callable[[int], Sequence[int]], where: str
          ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(voxel size, translation), z y x in nm, of dataset ``i`` of ``datasets`` (well-formed
    entries of a multiscale with ``frame``): its transformations composed, then the
    multiscale's.  A dataset other than the first that states no scale (NGFF 0.1 - 0.3) is
    scaled from the first by its shape; ``shape_of(j)`` is dataset j's (full) shape, asked for
    only then.  ``where`` names dataset ``i`` in errors."""
    rank = len(frame.names)
    own_scale, own_tr, scaled = compose(datasets[i].get("coordinateTransformations"), rank,
                                        where)
    if i > 0 and not scaled:
        scale0 = compose(datasets[0].get("coordinateTransformations"), rank, where)[0]
        spatial = frame.spatial
        factors = shape_factors([shape_of(0)[j] for j in spatial],
                                [shape_of(i)[j] for j in spatial], where)
        own_scale = list(scale0)
        for j, f in zip(spatial, factors, strict=True):
            own_scale[j] *= f
    sc = [a * b for a, b in zip(own_scale, frame.scale, strict=True)]
    if not all(sc[j] > 0 for j in frame.spatial):
        # (a zero or negative scale: refused here, naming the dataset and the attribute)
        raise InvalidRequestError(
            f"{where}: the scale of its coordinateTransformations (the dataset's times the "
            f"multiscale's) is {sc} for axes {frame.names}; it must be positive on each space "
            "axis")
    tr = [t * g + gt for t, g, gt in zip(own_tr, frame.scale, frame.translation, strict=True)]
    if frame.flat:
        # one z plane as thick as the coarser in-plane voxel of this level: a pyramid made
        # toward isotropy then halves y and x (a 1-unit plane would be halved alone), and
        # each level reopens with the z size that pyramid gave it
        (y, x), (ty, tx) = ([v[j] * u for j, u in zip(frame.spatial, frame.nm[1:], strict=True)]
                            for v in (sc, tr))
        return (flat_z_size((y, x)), y, x), (0.0, ty, tx)
    z, y, x = (sc[j] * u for j, u in zip(frame.spatial, frame.nm, strict=True))
    tz, ty, tx = (tr[j] * u for j, u in zip(frame.spatial, frame.nm, strict=True))
    return (z, y, x), (tz, ty, tx)
