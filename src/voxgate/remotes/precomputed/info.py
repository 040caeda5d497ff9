"""The info entries written for a VolumeMeta (``scales``), and the checks of a VolumeMeta
before it becomes a precomputed layer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ...errors import InvalidRequestError
from ...formats.precomputed_info import DTYPES
from ...meta import Scale, VolumeMeta
from ...storage import UNITS_NM
from ...storage.sharding import ShardingSpec
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
    factor = UNITS_NM.get(unit)
    if factor is None:
        raise InvalidRequestError(
            f"voxel size unit {unit!r} is unknown; use one of {', '.join(UNITS_NM)}"
        )
    nm = value * factor
    return int(nm) if float(nm).is_integer() else nm


def _scale_info(
    meta: VolumeMeta, sc: Scale, sharded: bool | Mapping[str, Any], taken: set[str]
) -> dict[str, Any]:
    """One entry of the info's ``scales``; ``taken`` holds keys already used."""
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
    key = sc.key or "_".join(f"{v:g}" for v in res)
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
        out["compressed_segmentation_block_size"] = list(_CSEG_BLOCK)
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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _triple(value: object, *, positive: bool, integer: bool = True) -> bool:
    """Whether ``value`` is an ``[x, y, z]`` list of integers (or finite numbers), > 0 if
    ``positive``."""
    if not isinstance(value, list) or len(value) != 3:
        return False
    for v in value:
        if integer and not _is_int(v):
            return False
        if not integer and (
            isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        ):
            return False
        if positive and v <= 0:
            return False
    return True


def _check_layer_info(info: Mapping[str, Any], where: str) -> None:
    """Refuse an info tensorstore, Neuroglancer or CloudVolume could not use, with an
    InvalidRequestError naming the key that is wrong, before any chunk is touched (tensorstore
    refused these only at the first read, as an undecodable "chunk").  Keys voxgate does not
    interpret are not checked; ``meta_from_info`` checks what it reads on top of this."""
    kind_type = info.get("@type", "neuroglancer_multiscale_volume")
    if kind_type != "neuroglancer_multiscale_volume":  # a mesh, skeleton or annotation info
        raise InvalidRequestError(
            f"{where} describes a {kind_type}, not an image or segmentation volume"
        )
    bad = f"{where} is not a valid Neuroglancer precomputed info:"
    if info.get("type") not in ("image", "segmentation"):
        raise InvalidRequestError(
            f"{bad} type must be 'image' or 'segmentation', got {info.get('type')!r}"
        )
    data_type = info.get("data_type")
    if not isinstance(data_type, str) or data_type.lower() not in DTYPES:
        raise InvalidRequestError(
            f"{bad} data_type must be one of {', '.join(DTYPES)}, got {data_type!r}"
        )
    scales = info.get("scales")
    if not isinstance(scales, list) or not scales:
        raise InvalidRequestError(f"{bad} scales must be a non-empty list, got {scales!r}")
    channels: Any = info.get("num_channels")
    if not _is_int(channels) or channels < 1:
        raise InvalidRequestError(
            f"{bad} num_channels must be an integer >= 1, got {channels!r}"
        )
    dtype = data_type.lower()
    for i, s in enumerate(scales):
        if not isinstance(s, Mapping):
            raise InvalidRequestError(f"{bad} scale {i} must be a JSON object, got {s!r}")
        key = s.get("key")
        if not isinstance(key, str) or not key.strip("/"):
            raise InvalidRequestError(
                f"{bad} scale {i} key must be a non-empty string (the scale's directory), "
                f"got {key!r}"
            )
        name = f"scale {i} ({key!r})"
        if not _triple(s.get("size"), positive=True):
            raise InvalidRequestError(
                f"{bad} {name} size must be three integers >= 1 [x, y, z], got {s.get('size')!r}"
            )
        if not _triple(s.get("resolution"), positive=True, integer=False):
            raise InvalidRequestError(
                f"{bad} {name} resolution must be three numbers > 0 [x, y, z] (nm), got "
                f"{s.get('resolution')!r}"
            )
        if "voxel_offset" in s and not _triple(s["voxel_offset"], positive=False):
            raise InvalidRequestError(
                f"{bad} {name} voxel_offset must be three integers [x, y, z], got "
                f"{s['voxel_offset']!r}"
            )
        chunk_sizes = s.get("chunk_sizes")
        if (
            not isinstance(chunk_sizes, list)
            or not chunk_sizes
            or not all(_triple(c, positive=True) for c in chunk_sizes)
        ):
            raise InvalidRequestError(
                f"{bad} {name} chunk_sizes must be a non-empty list of [x, y, z] lists of "
                f"integers >= 1, got {chunk_sizes!r}"
            )
        encoding = s.get("encoding", "raw")
        if not isinstance(encoding, str):
            raise InvalidRequestError(f"{bad} {name} encoding must be a string, got {encoding!r}")
        if encoding == "compressed_segmentation":
            if dtype not in ("uint32", "uint64"):
                raise InvalidRequestError(
                    f"{bad} {name} is compressed_segmentation, which holds uint32 or uint64, "
                    f"not {info.get('data_type')!r}"
                )
            block = s.get("compressed_segmentation_block_size")
            if not _triple(block, positive=True):
                raise InvalidRequestError(
                    f"{bad} {name} is compressed_segmentation and needs "
                    "compressed_segmentation_block_size, three integers >= 1 [x, y, z] (e.g. "
                    f"[8, 8, 8]), got {block!r}"
                )
        if encoding == "jpeg" and (dtype != "uint8" or channels not in (1, 3)):
            raise InvalidRequestError(
                f"{bad} {name} is jpeg, which holds uint8 with 1 or 3 channels, not "
                f"{info.get('data_type')!r} with {channels}"
            )
        if encoding == "png" and (dtype not in ("uint8", "uint16") or channels > 4):
            raise InvalidRequestError(
                f"{bad} {name} is png, which holds uint8 or uint16 with 1 to 4 channels, not "
                f"{info.get('data_type')!r} with {channels}"
            )
        # "sharding": null is unsharded, as tensorstore and CloudVolume read it
        if s.get("sharding") is not None:
            ShardingSpec.from_json(s["sharding"], f"{where} {name}")
            if len(chunk_sizes) != 1:
                raise InvalidRequestError(
                    f"{bad} {name} is sharded, and a sharded scale has exactly one entry in "
                    f"chunk_sizes, not {len(chunk_sizes)}"
                )
