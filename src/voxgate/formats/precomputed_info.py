"""The info file of a Neuroglancer precomputed layer: reading, checking and updating it.

``meta_from_info`` turns an info JSON object into a :class:`VolumeMeta` (raising
InvalidRequestError for one voxgate cannot read), ``read_layer_info`` reads and checks a
layer's info, ``write_layer_info`` stores one (never one that cannot be read back) and
``update_layer_info`` sets top-level keys (``mesh``, ``skeletons``, ...), keeping every other
key.  The precomputed Remote and the mesh and skeleton layer readers and writers share them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InvalidRequestError, ReadOnlyError, RemoteNotFoundError
from ..geometry import Vec, VoxelSize
from ..meta import Kind, Scale, VolumeMeta
from ..storage import join, read_json, write_json

__all__ = [
    "CORE_KEYS",
    "DTYPES",
    "is_http",
    "meta_from_info",
    "normalize_location",
    "read_layer_info",
    "update_layer_info",
    "write_layer_info",
]

#: data types of the info's ``data_type`` enum
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32")
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


def meta_from_info(info: dict[str, Any], where: str) -> VolumeMeta:
    kind_type = info.get("@type", "neuroglancer_multiscale_volume")
    if kind_type != "neuroglancer_multiscale_volume":
        raise InvalidRequestError(
            f"{where} describes a {kind_type}, not an image or segmentation volume"
        )
    try:
        layer_type = info["type"]
        if layer_type not in ("image", "segmentation"):
            raise InvalidRequestError(f"type is {layer_type!r}, not 'image' or 'segmentation'")
        dtype = np.dtype(str(info["data_type"]).lower())
        if dtype.name not in DTYPES:
            raise InvalidRequestError(f"data_type {info['data_type']!r} is not supported")
        channels = int(info.get("num_channels", 1))
        scales = []
        for i, s in enumerate(info["scales"]):
            res = [float(v) for v in s["resolution"]]
            if len(res) != 3:
                raise InvalidRequestError(f"scale {i} resolution {res} is not [x, y, z]")
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
        kind: Kind = "segmentation" if layer_type == "segmentation" else "image"
        return VolumeMeta(dtype, tuple(scales), kind, channels, 0, extra)
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise InvalidRequestError(
            f"{where} is not a valid Neuroglancer precomputed info: {exc}"
        ) from None


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
    changed this way.
    """
    fixed = sorted(set(changes) & {"scales", "data_type", "num_channels", "@type"})
    if fixed:
        raise InvalidRequestError(
            f"update_info cannot change {', '.join(fixed)}: they define the stored voxels"
        )
    info = read_json(location, "info")
    info.update(changes)
    write_layer_info(location, info)
    return info
