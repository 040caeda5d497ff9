"""The precomputed layer that mesh and skeleton directories belong to.

The helpers the mesh and skeleton readers and writers share: resolving a layer URL
(:func:`open_layer`, a :class:`Layer` with the layer's metadata and a way to set top-level
info keys), checking a directory name, reading a directory's info.  The files themselves are
read and written through :class:`voxgate.storage.Directory`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from ..errors import CorruptChunkError, InvalidRequestError, ReadOnlyError
from ..storage import Directory, join, split_url
from .precomputed_info import meta_from_info, read_layer_info, update_layer_info

__all__ = ["Layer", "check_dir_name", "layer_location", "open_layer", "read_info"]


def layer_location(url: str | os.PathLike[str]) -> str:
    """The storage location of a precomputed layer named by a voxgate URL or a bare location."""
    scheme, location = split_url(url)  # refuses a non-path url
    if scheme not in (None, "precomputed"):
        raise InvalidRequestError(
            f"meshes and skeletons live in Neuroglancer precomputed layers; {url!r} names a "
            f"{scheme}:// volume (use precomputed://<location> or a bare path)"
        )
    return location


class Layer:
    """The precomputed layer meshes or skeletons go with: its location, info and metadata."""

    def __init__(self, location: str, info: dict[str, Any], mode: str) -> None:
        self.location = location
        self.mode = mode
        self.url = f"precomputed://{location}"
        self.meta = meta_from_info(info, join(location, "info"))

    def __repr__(self) -> str:
        return f"Layer({self.url!r}, mode={self.mode!r})"

    def update_info(self, changes: Mapping[str, Any]) -> None:
        """Set top-level info keys (e.g. ``{"mesh": "mesh"}``), keeping every other key."""
        if self.mode != "r+":
            raise ReadOnlyError(f"{self.url} is opened read-only; open it with mode='r+' to write")
        self.meta = meta_from_info(update_layer_info(self.location, changes),
                                   join(self.location, "info"))


def open_layer(url: str | os.PathLike[str], mode: str) -> Layer:
    """The precomputed layer meshes or skeletons go with (RemoteNotFoundError if absent)."""
    return Layer(*read_layer_info(layer_location(url), mode), mode)


def open_segmentation_layer(url: str | os.PathLike[str], what: str) -> Layer:
    """The segmentation layer ``what`` (meshes, skeletons) are written into, opened "r+"; an
    image layer is refused."""
    layer = open_layer(url, "r+")
    if layer.meta.kind != "segmentation":
        raise InvalidRequestError(
            f"{layer.url} is an image layer; {what} belong to segmentation layers"
        )
    return layer


def check_dir_name(value: object, what: str) -> str:
    """A mesh or skeleton directory named relative to its layer.  A name that leaves the layer
    or is the layer itself ('..', '.', 'a/../..') is refused: a write there put files and an
    info outside the layer (or over its own info) and named that place in the layer's info."""
    parts = value.strip("/").split("/") if isinstance(value, str) else []
    if not isinstance(value, str) or not value.strip("/") or "://" in value \
            or value.startswith("/") or "\\" in value \
            or any(p in ("", ".", "..") for p in parts):
        raise InvalidRequestError(
            f"{what} must be a directory name inside the layer, like 'mesh', got {value!r}"
            " ('.', '..' and empty parts are refused)"
        )
    return value.strip("/")


def read_info(directory: Directory) -> dict[str, Any] | None:
    """A directory's ``info`` JSON object, or None when it has none."""
    raw = directory.get("info", plain=lambda d: False)
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except ValueError as exc:
        raise CorruptChunkError(f"{directory.path('info')} is not valid JSON: {exc}",
                                chunk=directory.path("info")) from None
    if not isinstance(info, dict):
        raise CorruptChunkError(f"{directory.path('info')} is not a JSON object",
                                chunk=directory.path("info"))
    return info
