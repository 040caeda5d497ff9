"""The info file of a Neuroglancer precomputed layer: reading, checking and updating it.

``meta_from_info`` turns an info JSON object into a :class:`VolumeMeta` (raising
InvalidRequestError for one voxgate cannot read), ``read_layer_info`` reads and checks a
layer's info, ``write_layer_info`` stores one (never one that cannot be read back) and
``update_layer_info`` sets top-level keys (``mesh``, ``skeletons``, ...), keeping every other
key.  The precomputed Remote and the mesh and skeleton layer readers and writers share them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InvalidRequestError, ReadOnlyError, RemoteNotFoundError
from ..geometry import Vec, VoxelSize
from ..meta import Kind, Scale, VolumeMeta
from ..storage import (
    Directory,
    file_lock,
    is_local,
    join,
    json_object,
    local_path,
    read_json,
    write_json,
)
from ..storage.sharding import ShardingSpec

__all__ = [
    "ANCHOR_KEY",
    "CORE_KEYS",
    "DTYPES",
    "check_layer_info",
    "is_http",
    "meta_from_info",
    "normalize_location",
    "read_layer_info",
    "update_layer_info",
    "write_layer_info",
]

#: reads and conditional writes of a layer's info by update_layer_info before giving up
_INFO_ATTEMPTS = 20
#: data types of the info's ``data_type`` enum
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32")
#: a voxgate extension of the info (the relay's precomputed dialect writes it): "origin" when
#: the coarser scales' voxels lie on the grid through 0 (a WEBKNOSSOS, DVID or bossDB-made
#: channel), not on blocks from the first voxel; readers that do not know it ignore it
ANCHOR_KEY = "voxgate_pyramid_anchor"
#: info keys voxgate interprets; everything else (mesh, skeletons, ...) is kept as is
CORE_KEYS = frozenset({"@type", "type", "data_type", "num_channels", "scales"})


def normalize_location(location: str) -> str:
    """Local paths become absolute, so a spec reopens the same layer from another directory."""
    if "://" in location and "://" not in location.rstrip("/"):
        return location  # "https://" names no host: left for the storage layer to refuse
    location = location.rstrip("/") or "/"
    if "://" not in location:
        return os.path.abspath(os.path.expanduser(location))
    return location


def is_http(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def meta_from_info(info: Mapping[str, Any], where: str) -> VolumeMeta:
    """The VolumeMeta of a layer's info (checked first by :func:`check_layer_info`)."""
    check_layer_info(info, where)
    dtype = np.dtype(str(info["data_type"]).lower())
    scales = []
    for i, s in enumerate(info["scales"]):
        res = [float(v) for v in s["resolution"]]
        scales.append(
            Scale(
                i,
                Vec.from_xyz(s["size"], "size"),
                Vec.from_xyz(s["chunk_sizes"][0], "chunk_sizes"),
                VoxelSize(res[2], res[1], res[0]),
                Vec.from_xyz(s.get("voxel_offset", (0, 0, 0)), "voxel_offset"),
                str(s.get("encoding", "raw")),
                str(s["key"]),
            )
        )
    extra = {k: v for k, v in info.items() if k not in CORE_KEYS}
    kind: Kind = "segmentation" if info["type"] == "segmentation" else "image"
    return VolumeMeta(dtype, tuple(scales), kind, int(info["num_channels"]), 0, extra)


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


def check_layer_info(info: Mapping[str, Any], where: str) -> None:
    """Refuse an info tensorstore, Neuroglancer or CloudVolume could not use, with an
    InvalidRequestError naming the key that is wrong, before any chunk is touched (tensorstore
    refused these only at the first read, as an undecodable "chunk").  Keys voxgate does not
    interpret are not checked; ``meta_from_info`` calls it first."""
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


def read_layer_info(location: str, mode: str) -> tuple[str, dict[str, Any]]:
    """The normalized location of the layer at ``location`` and its info, checked for
    ``mode`` ('r' or 'r+'; HTTP layers are read-only).  RemoteNotFoundError without an info."""
    if mode not in ("r", "r+"):
        raise InvalidRequestError(f"mode must be 'r' or 'r+', got {mode!r}")
    location = normalize_location(location)
    if mode == "r+" and is_http(location):
        raise ReadOnlyError(f"{location} is served over HTTP, which voxgate can only read")
    try:
        info = read_json(location, "info")
    except RemoteNotFoundError:
        raise RemoteNotFoundError(
            f"no precomputed volume at {location!r}: it has no info file"
        ) from None
    if not isinstance(info, dict):
        raise InvalidRequestError(f"{join(location, 'info')} is not a JSON object")
    return location, info


def write_layer_info(location: str, info: dict[str, Any]) -> None:
    """Store ``info`` as the layer's info, after checking that it can be read back."""
    meta_from_info(info, join(location, "info"))  # never store an info we cannot read
    write_json(location, "info", info)


def update_layer_info(location: str, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Set top-level info keys (e.g. ``{"mesh": "mesh"}``), keeping every other key of the
    stored info; returns the info written.

    The keys that define the stored voxels (scales, data_type, num_channels) cannot be
    changed this way.  Concurrent updates keep each other's keys (a mesh and a skeleton
    writer of one layer both name their directory): the info is read and written back under
    its lock on local disks, and on object storage written only if nobody changed it since
    it was read, else read and changed again.  (It was read and written back with neither:
    the later writer dropped the other's key.)
    """
    fixed = sorted(set(changes) & {"scales", "data_type", "num_channels", "@type"})
    if fixed:
        raise InvalidRequestError(
            f"update_info cannot change {', '.join(fixed)}: they define the stored voxels"
        )
    if is_local(location):
        with file_lock(os.path.join(local_path(location), "info")):
            info = read_json(location, "info")
            info.update(changes)
            write_layer_info(location, info)
        return info
    where = join(location, "info")
    written: list[dict[str, Any]] = []

    def change(raw: bytes | None) -> bytes:
        if raw is None:
            raise RemoteNotFoundError(f"{where} does not exist")
        info = json_object(raw, where, InvalidRequestError)
        info.update(changes)
        meta_from_info(info, where)  # never store an info we cannot read
        written[:] = [info]
        return json.dumps(info, indent=2).encode()

    Directory(location).update("info", change, attempts=_INFO_ATTEMPTS,
                               advice="too many writers change this layer's info at once")
    return written[0]
