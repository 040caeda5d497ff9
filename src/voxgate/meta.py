"""VolumeMeta: everything about a volume except its voxels."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

import numpy as np

from .errors import InvalidRequestError
from .geometry import Box, Vec, VoxelSize, whole, whole_at_least

__all__ = [
    "MAX_CHUNK_BYTES",
    "MAX_COORDINATE",
    "SUPPORTED_DTYPES",
    "Kind",
    "Scale",
    "VolumeMeta",
    "centre_translation",
    "check_dtype",
    "check_ids",
    "check_new_scales",
    "default_factors",
    "next_scales",
    "offset_from_translation",
]

Kind = Literal["image", "segmentation"]

#: dtypes every chunked format here can hold; a Remote may accept fewer and says so.
SUPPORTED_DTYPES = (
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64",
)


#: the largest voxel coordinate (of a shape, an offset or their sum) a volume may have:
#: tensorstore's finite index range, 2**62 - 2
MAX_COORDINATE = 2**62 - 2
#: the most bytes one chunk may hold, every channel included (blosc's limit; create refuses more)
MAX_CHUNK_BYTES = 2**31 - 1

#: the largest segment id (ids are uint64 end to end)
_MAX_ID = 2**64 - 1


def check_ids(ids: object, what: str = "ids") -> list[int] | None:
    """``ids`` (None, or an iterable of segment ids) as a list of Python ints.

    Refuses a string (its characters are not ids), a bare number, floats (1.5 is not read as
    1), booleans and values outside the uint64 range 0..2**64-1, naming the bad entry."""
    if ids is None:
        return None
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise InvalidRequestError(
            f"{what} must be a list of segment ids (integers 0..2**64-1), got {ids!r}")
    out = []
    for v in ids:
        n = whole(v)
        if n is None:
            raise InvalidRequestError(
                f"{what} must hold integers (uint64 segment ids), got {v!r} of type "
                f"{type(v).__name__}; a float or a boolean is not taken as an id")
        if not 0 <= n <= _MAX_ID:
            raise InvalidRequestError(
                f"{what}: {n} is not a uint64 segment id (ids are 0..{_MAX_ID})")
        out.append(n)
    return out


def check_dtype(dtype: object) -> np.dtype[Any]:
    if dtype is None:  # np.dtype(None) is float64: never a silent default
        raise InvalidRequestError(
            f"dtype is required; use one of {', '.join(SUPPORTED_DTYPES)}")
    try:
        dt = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidRequestError(
            f"unknown dtype {dtype!r}; use one of {', '.join(SUPPORTED_DTYPES)}"
        ) from None
    if dt.name not in SUPPORTED_DTYPES:
        raise InvalidRequestError(
            f"dtype {dt.name} is not supported; use one of {', '.join(SUPPORTED_DTYPES)}"
        )
    return dt.newbyteorder("=")


@dataclass(frozen=True)
class Scale:
    """One resolution level of a volume.  ``index`` 0 is full resolution."""

    index: int
    shape: Vec
    chunks: Vec
    voxel_size: VoxelSize
    offset: Vec = Vec(0, 0, 0)  # noqa: RUF009 - Vec is an immutable NamedTuple
    encoding: str | None = None
    key: str | None = None
    #: where the centre of the array's first voxel lies, (z, y, x) in the voxel-size unit, as
    #: the store states it (OME-Zarr's ``translation``), sub-voxel parts included; None when
    #: the store states nothing beyond ``offset``.  See :func:`centre_translation`.
    translation: tuple[float, float, float] | None = field(default=None, compare=False)

    @cached_property
    def bounds(self) -> Box:
        """The voxels this scale holds, in its own dataset coordinates (made once: every read
        of a Volume intersects its box with it)."""
        return Box.from_shape(self.shape, self.offset)

    def __repr__(self) -> str:
        return (
            f"Scale({self.index}, shape={tuple(self.shape)}, chunks={tuple(self.chunks)}, "
            f"voxel_size={tuple(self.voxel_size.zyx())} {self.voxel_size.unit}, "
            f"offset={tuple(self.offset)})"
        )


@dataclass(frozen=True)
class VolumeMeta:
    """The metadata of one Resource: dtype, kind, channels and its scales (finest first)."""

    dtype: np.dtype[Any]
    scales: tuple[Scale, ...]
    kind: Kind = "image"
    num_channels: int = 1
    fill_value: int | float = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("image", "segmentation"):
            raise InvalidRequestError(f"kind must be 'image' or 'segmentation', got {self.kind!r}")
        if not self.scales:
            raise InvalidRequestError("a volume needs at least one scale")
        if self.num_channels < 1:
            raise InvalidRequestError(f"num_channels must be >= 1, got {self.num_channels}")
        if self.kind == "segmentation" and self.num_channels != 1:
            raise InvalidRequestError("a segmentation has exactly one channel")

    def scale(self, index: int) -> Scale:
        n = whole(index)
        if n is None:
            raise InvalidRequestError(f"scale must be an integer, got {index!r}")
        if not 0 <= n < len(self.scales):
            raise InvalidRequestError(
                f"scale {n} does not exist; this volume has scales 0..{len(self.scales) - 1}"
            )
        return self.scales[n]

    @property
    def shape(self) -> Vec:
        return self.scales[0].shape

    @property
    def chunks(self) -> Vec:
        return self.scales[0].chunks

    @property
    def voxel_size(self) -> VoxelSize:
        return self.scales[0].voxel_size

    @property
    def offset(self) -> Vec:
        return self.scales[0].offset

    def with_scales(self, scales: Sequence[Scale]) -> VolumeMeta:
        return replace(self, scales=tuple(scales))

    @classmethod
    def build(
        cls,
        *,
        shape: object,
        dtype: object,
        chunks: object,
        voxel_size: object,
        kind: str = "image",
        encoding: str | None = None,
        offset: object = (0, 0, 0),
        num_scales: int = 1,
        num_channels: int = 1,
        unit: str = "nm",
    ) -> VolumeMeta:
        """Metadata from ``create``'s arguments, with ``num_scales`` levels of 2x downsampling."""
        sh = Vec.of(shape, "shape")  # type: ignore[arg-type]
        ch = Vec.of(chunks, "chunks")  # type: ignore[arg-type]
        off = Vec.of(offset, "offset")  # type: ignore[arg-type]
        vs = VoxelSize.of(voxel_size, unit)
        if any(s <= 0 for s in sh):
            raise InvalidRequestError(f"shape must be positive in every axis, got {tuple(sh)}")
        if any(c <= 0 for c in ch):
            raise InvalidRequestError(f"chunks must be positive in every axis, got {tuple(ch)}")
        for what, value in (("shape", sh), ("offset", off), ("offset + shape", off + sh)):
            if any(abs(v) > MAX_COORDINATE for v in value):
                raise InvalidRequestError(
                    f"{what} {tuple(value)} is out of range: voxel coordinates must stay within "
                    f"+-{MAX_COORDINATE} (2**62 - 2)")
        num_scales = whole_at_least(num_scales, 1, "num_scales")
        num_channels = whole_at_least(num_channels, 1, "num_channels")
        if kind not in ("image", "segmentation"):
            raise InvalidRequestError(f"kind must be 'image' or 'segmentation', got {kind!r}")
        dt = check_dtype(dtype)
        # (a chunk larger than the volume holds only the volume)
        nbytes = math.prod(min(c, s) for c, s in zip(ch, sh, strict=True)) * num_channels
        nbytes *= dt.itemsize
        if nbytes > MAX_CHUNK_BYTES:
            raise InvalidRequestError(
                f"a chunk of {tuple(ch)} voxels x {num_channels} channel(s) of {dt} is "
                f"{nbytes} bytes; a chunk is at most {MAX_CHUNK_BYTES} (2**31 - 1: blosc's limit, "
                "and more than any reader should have to hold at once): give smaller chunks")
        base = cls(dt, (Scale(0, sh, ch, vs, off, encoding),), kind,  # type: ignore[arg-type]
                   num_channels)
        return base.with_scales([*base.scales, *next_scales(base, num_scales - 1)])


def _scaled(vs: VoxelSize, factors: Vec) -> VoxelSize:
    return VoxelSize(vs.z * factors.z, vs.y * factors.y, vs.x * factors.x, vs.unit)


def default_factors(voxel_size: VoxelSize) -> Vec:
    """Downsampling factors toward isotropy: halve only the finer axes of an anisotropic volume.

    (40, 8, 8) nm gives (1, 2, 2) until x and y reach z; an isotropic volume gives (2, 2, 2).
    """
    vs = voxel_size.zyx()
    coarsest = max(vs)
    f = tuple(2 if v * 2 <= coarsest else 1 for v in vs)
    if f == (1, 1, 1):
        f = (2, 2, 2)
    return Vec(*f)


#: how a coarser scale's voxels lie over the finer scale's (``Remote.pyramid_anchor``):
#: "offset" — blocks of the factor start at the scale's first voxel, as Igneous and CloudVolume
#: make precomputed pyramids; "origin" — voxel i covers the finer voxels [i * f, (i + 1) * f),
#: on the grid through coordinate 0, as WEBKNOSSOS mags do
PyramidAnchor = Literal["offset", "origin"]


def coarser_extent(offset: Sequence[int], shape: Sequence[int], factor: Sequence[int],
                   anchor: PyramidAnchor = "offset") -> tuple[Vec, Vec]:
    """The (offset, shape) of the scale one ``factor`` coarser than a scale at ``offset`` of
    ``shape``.  The offset rounds down either way; anchored at the offset the shape is
    ``ceil(shape / factor)``, anchored at the origin it is every grid block the scale touches,
    ``ceil((offset + shape) / factor) - floor(offset / factor)`` (one more where a block is cut
    at both ends)."""
    lo = Vec(*(o // k for o, k in zip(offset, factor, strict=True)))
    if anchor == "origin":
        hi = Vec(*(-(-(o + s) // k) for o, s, k in zip(offset, shape, factor, strict=True)))
        return lo, Vec(*(h - low for h, low in zip(hi, lo, strict=True)))
    return lo, Vec(*(math.ceil(s / k) for s, k in zip(shape, factor, strict=True)))


def next_scales(meta: VolumeMeta, count: int, factors: Sequence[Vec] | None = None,
                anchor: PyramidAnchor = "offset") -> list[Scale]:
    """``count`` scales after the coarsest one, each downsampled by its factor (z, y, x).

    Factors default to :func:`default_factors` of the previous scale's voxel size.  Shapes round
    up and offsets round down, as precomputed and OME-Zarr pyramids do; see
    :func:`coarser_extent` for ``anchor``.
    """
    out: list[Scale] = []
    prev = meta.scales[-1]
    for i in range(count):
        f = Vec.of(factors[i]) if factors is not None else default_factors(prev.voxel_size)
        if any(v < 1 for v in f):
            raise InvalidRequestError(f"downsampling factors must be >= 1, got {tuple(f)}")
        if prev.shape == (1, 1, 1) and f != (1, 1, 1):
            # a scale of one voxel cannot be downsampled further (and asking for 2**70 scales
            # would loop for ever)
            raise InvalidRequestError(
                f"{count} more scale(s) asked for, but scale {prev.index} is already one voxel: "
                f"this volume has at most {prev.index + 1} scales")
        offset, shape = coarser_extent(prev.offset, prev.shape, f, anchor)
        prev = Scale(prev.index + 1, shape, prev.chunks, _scaled(prev.voxel_size, f), offset,
                     prev.encoding)
        out.append(prev)
    return out


def centre_translation(base: Scale, sc: Scale,
                       anchor: PyramidAnchor = "offset") -> tuple[float, float, float]:
    """The physical position (z, y, x, voxel-size unit) of the centre of ``sc``'s first voxel.

    Pixel-centre convention (OME-NGFF, ome-zarr-py): a voxel of a downsampled scale covers a
    block of scale-0 voxels starting at the same place as scale 0's first voxel, so its centre
    lies half a block in: ``t_k = t_0 + (factor - 1) / 2 * voxel_0 = t_0 + (voxel_k -
    voxel_0) / 2``, with ``t_0`` scale 0's translation (``offset * voxel size`` unless the
    store gave another).  On the grid through 0 (``anchor`` "origin": WEBKNOSSOS mags, DVID
    labelmaps) the block of ``sc``'s first voxel starts at ``offset_k * voxel_k`` instead of
    scale 0's first voxel, up to ``offset mod factor`` scale-0 voxels before it.
    ``sc.translation``, when the store gave one, wins.
    """
    if sc.translation is not None:
        return sc.translation
    v0, vk = base.voxel_size.zyx(), sc.voxel_size.zyx()
    t0 = base.translation if base.translation is not None else tuple(
        float(o * v) for o, v in zip(base.offset, v0, strict=True))
    if sc.index == base.index:
        return (t0[0], t0[1], t0[2])
    shift = [0.0, 0.0, 0.0] if anchor == "offset" else [
        float(ok * k - o0 * v) for ok, k, o0, v in zip(sc.offset, vk, base.offset, v0,
                                                       strict=True)]
    z, y, x = (t + d + (k - v) / 2 for t, d, k, v in zip(t0, shift, vk, v0, strict=True))
    return (z, y, x)


def offset_from_translation(translation: Sequence[float], voxel: Sequence[float],
                            voxel0: Sequence[float]) -> Vec:
    """The integer voxel offset of a scale stored with a pixel-centre ``translation``.

    The half-block shift (:func:`centre_translation`) is taken off, the start is rounded to a
    whole scale-0 voxel (what is left of sub-voxel translations, e.g. ome-zarr-py's, which are
    not multiplied by the pixel size), and divided by the factor rounding down, as
    :func:`next_scales` makes offsets.  Exact translations give exact offsets back.
    """
    out = []
    for t, v, v0 in zip(translation, voxel, voxel0, strict=True):
        start0 = round((t - (v - v0) / 2) / v0)  # in scale-0 voxels
        factor = v / v0
        near = round(factor)
        if abs(factor - near) < 1e-9 * max(1.0, factor):
            out.append(start0 // near)
        else:
            out.append(math.floor(start0 / factor + 1e-9))
    return Vec(*out)


def check_new_scales(meta: VolumeMeta, scales: Sequence[Scale]) -> None:
    """New scales must continue the existing indices and keep the voxel-size unit."""
    for i, sc in enumerate(scales):
        if sc.index != len(meta.scales) + i:
            raise InvalidRequestError(
                f"new scale {sc.index} must have index {len(meta.scales) + i} (scales are "
                "appended after the coarsest existing one)"
            )
        if sc.voxel_size.unit != meta.voxel_size.unit:
            raise InvalidRequestError("new scales must use the volume's voxel-size unit")
