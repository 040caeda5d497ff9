"""VolumeMeta: everything about a volume except its voxels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from .errors import InvalidRequestError
from .geometry import Box, Vec, VoxelSize

__all__ = [
    "SUPPORTED_DTYPES",
    "Kind",
    "Scale",
    "VolumeMeta",
    "check_dtype",
    "check_new_scales",
    "default_factors",
    "next_scales",
]

Kind = Literal["image", "segmentation"]

#: dtypes every chunked format here can hold; a Remote may accept fewer and says so.
SUPPORTED_DTYPES = (
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64",
)


def check_dtype(dtype: object) -> np.dtype[Any]:
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

    @property
    def bounds(self) -> Box:
        """The voxels this scale holds, in its own dataset coordinates."""
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
        if isinstance(index, bool) or not isinstance(index, int):
            raise InvalidRequestError(f"scale must be an integer, got {index!r}")
        if not 0 <= index < len(self.scales):
            raise InvalidRequestError(
                f"scale {index} does not exist; this volume has scales 0..{len(self.scales) - 1}"
            )
        return self.scales[index]

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
        if isinstance(num_scales, bool) or not isinstance(num_scales, int) or num_scales < 1:
            raise InvalidRequestError(f"num_scales must be a positive integer, got {num_scales!r}")
        if kind not in ("image", "segmentation"):
            raise InvalidRequestError(f"kind must be 'image' or 'segmentation', got {kind!r}")
        dt = check_dtype(dtype)
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


def next_scales(meta: VolumeMeta, count: int, factors: Sequence[Vec] | None = None) -> list[Scale]:
    """``count`` scales after the coarsest one, each downsampled by its factor (z, y, x).

    Factors default to :func:`default_factors` of the previous scale's voxel size.  Shapes round
    up and offsets round down, as precomputed and OME-Zarr pyramids do.
    """
    out: list[Scale] = []
    prev = meta.scales[-1]
    for i in range(count):
        f = Vec.of(factors[i]) if factors is not None else default_factors(prev.voxel_size)
        if any(v < 1 for v in f):
            raise InvalidRequestError(f"downsampling factors must be >= 1, got {tuple(f)}")
        prev = Scale(
            prev.index + 1,
            Vec(*(math.ceil(s / k) for s, k in zip(prev.shape, f, strict=True))),
            prev.chunks,
            _scaled(prev.voxel_size, f),
            Vec(*(o // k for o, k in zip(prev.offset, f, strict=True))),
            prev.encoding,
        )
        out.append(prev)
    return out


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
