"""The info entries written for a VolumeMeta (``scales``), and the checks of a VolumeMeta
before it becomes a precomputed layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import InvalidRequestError
from ...formats.precomputed_info import DTYPES
from ...meta import Scale, VolumeMeta
from ...storage import UNITS_NM, length_unit_nm
from .sharding import _check_sharding, _grid_bits, _pick_sharding

#: encodings tensorstore's driver parses; any other one in an info makes it refuse the layer
_TS_ENCODINGS = frozenset({"raw", "jpeg", "png", "compressed_segmentation"})
_CSEG_BLOCK = (8, 8, 8)


def _check_meta(meta: VolumeMeta) -> None:
    if meta.dtype.name not in DTYPES:
        raise InvalidRequestError(
            f"precomputed volumes hold {', '.join(DTYPES)}, not {meta.dtype.name}"
        )
    if meta.kind == "segmentation" and meta.dtype.name not in ("uint32", "uint64"):
        raise InvalidRequestError(
            f"a precomputed segmentation holds uint32 or uint64 ids, not {meta.dtype.name} "
            "(use kind='image' for other data)"
        )
    if meta.fill_value != 0:
        raise InvalidRequestError(
            f"precomputed volumes have no fill value (absent chunks read as 0); this volume "
            f"asks for {meta.fill_value}"
        )


def _nm(value: float, unit: str) -> float:
    factor = length_unit_nm(unit)
    if factor is None:
        raise InvalidRequestError(
            f"voxel size unit {unit!r} is unknown; use one of {', '.join(UNITS_NM)}"
        )
    nm = value * factor
    return int(nm) if float(nm).is_integer() else nm


def _whole(value: float) -> float:
    return int(value) if float(value).is_integer() else value


def _cv_precision(value: object) -> int:
    """CloudVolume's ``lib.getprecision``: the digits after the point of ``str(value)`` (so
    ``6.0`` has 1, ``6`` and ``1e+16`` none)."""
    parts = str(value).split(".")
    return len(parts[1]) if len(parts) > 1 else 0


def _resolution(res: list[float], base: Sequence[float]) -> list[float]:
    """A coarser scale's resolution as CloudVolume's ``add_scale`` computes it: scale 0's
    stored resolution times the whole factor (not the previous scale's times its own, whose
    float noise differs: 0.1 * 3 * 3 is 0.9000000000000001, 0.1 * 9 is 0.9).  A resolution
    that is no whole multiple of scale 0's stays as it is."""
    factors = [r / b if b else 0.0 for r, b in zip(res, base, strict=True)]
    if any(f < 0.5 or abs(f - round(f)) > 1e-9 * f for f in factors):
        return res
    return [_whole(b * round(f)) for b, f in zip(base, factors, strict=True)]


def _scale_key(res: Sequence[float], base: Sequence[float]) -> str:
    """A scale's key as CloudVolume names it (``create_info`` and ``add_scale``, which key a
    scale by its resolution, ``"_".join(map(str, resolution))``): the resolution as ints
    (``1000000_1000000_40``) when scale 0's has no fractional digits, else as floats
    (``9.0_12.0_40.0``, ``0.6000000000000001_...``: ``str`` of the float, never rounded).
    A fractional resolution of an integral scale 0 (no CloudVolume scale) is written as
    floats too, where CloudVolume's int() would cut it."""
    floats = any(_cv_precision(v) > 0 for v in base) or any(
        not float(v).is_integer() for v in res)
    return "_".join(str(float(v)) if floats else str(int(v)) for v in res)


def _scale_info(
    meta: VolumeMeta, sc: Scale, sharded: bool | Mapping[str, Any], taken: set[str],
    block: Any = None, base: Sequence[float] | None = None,
) -> dict[str, Any]:
    """One entry of the info's ``scales``; ``taken`` holds keys already used, ``block`` the
    compressed_segmentation block size ([x, y, z]; default 8x8x8), ``base`` scale 0's
    resolution as the info stores it (default: ``meta``'s scale 0's)."""
    dtype, channels = meta.dtype, meta.num_channels
    if any(c <= 0 for c in sc.chunks) or any(s <= 0 for s in sc.shape):
        raise InvalidRequestError(f"scale {sc.index}: shape and chunks must be positive")
    encoding = sc.encoding or (
        "compressed_segmentation" if meta.kind == "segmentation" else "raw"
    )
    if encoding == "compressed_segmentation" and dtype.name not in ("uint32", "uint64"):
        raise InvalidRequestError(
            f"compressed_segmentation holds uint32 or uint64 data, not {dtype.name}"
        )
    if encoding == "jpeg" and (dtype.name != "uint8" or channels not in (1, 3)):
        raise InvalidRequestError(
            f"jpeg holds uint8 data with 1 or 3 channels, not {dtype.name} with {channels}"
        )
    if encoding == "jpeg" and meta.kind == "segmentation":
        raise InvalidRequestError("jpeg is lossy and would change segment ids; use "
                                  "compressed_segmentation or raw")
    if encoding == "png" and (dtype.name not in ("uint8", "uint16") or channels > 4):
        raise InvalidRequestError(
            f"png holds uint8 or uint16 data with 1 to 4 channels, not {dtype.name} with "
            f"{channels}"
        )
    if encoding not in _TS_ENCODINGS:
        raise InvalidRequestError(
            f"voxgate writes precomputed encodings {', '.join(sorted(_TS_ENCODINGS))}, "
            f"not {encoding!r}"
        )
    res = [_nm(v, sc.voxel_size.unit) for v in sc.voxel_size.xyz()]
    if base is None:
        s0 = meta.scales[0].voxel_size
        base = [_nm(v, s0.unit) for v in s0.xyz()]
    if sc.index > 0:
        res = _resolution(res, base)
    key = sc.key or _scale_key(res, base)
    if key in taken:
        key = f"{key}_{sc.index}"
    if key in taken:
        raise InvalidRequestError(f"scale key {key!r} is used twice")
    out: dict[str, Any] = {
        "key": key,
        "size": list(sc.shape.xyz()),
        "resolution": res,
        "voxel_offset": list(sc.offset.xyz()),
        "chunk_sizes": [list(sc.chunks.xyz())],
        "encoding": encoding,
    }
    if encoding == "compressed_segmentation":
        out["compressed_segmentation_block_size"] = list(block or _CSEG_BLOCK)
    if isinstance(sharded, Mapping):
        out["sharding"] = _check_sharding(sharded)
    elif sharded:
        out["sharding"] = _pick_sharding(sc, dtype.itemsize * channels, encoding)
    if "sharding" in out and _grid_bits(sc) > 64:
        raise InvalidRequestError(
            f"scale {sc.index} has too many chunks to shard (their ids need more than 64 "
            "bits); use bigger chunks"
        )
    return out


