"""``voxgate.open`` and ``voxgate.create``."""

from __future__ import annotations

import os
from typing import Any

from .errors import InvalidRequestError
from .meta import VolumeMeta
from .registry import create_remote, open_remote
from .remotes.base import check_missing
from .volume import Bounds, Volume

#: ``open_remote`` and ``create_remote`` live in the registry (below Volume); re-exported here
__all__ = ["create", "create_remote", "open", "open_remote"]


def open(
    url: str | os.PathLike[str] | Volume,
    *,
    scale: int = 0,
    mode: str = "r",
    bounds: Bounds = "error",
    **options: Any,
) -> Volume:
    """Open a volume by URL as a lazy, numpy-like :class:`Volume`.

    ``url`` is ``SCHEME://LOCATION`` (``zarr://``, ``n5://``, ``precomputed://``, ``hdf5://``,
    ``mem://`` or any registered scheme), or a bare path or storage URL whose format is
    detected from its marker file.  ``mode`` is "r" or "r+"; ``bounds`` is "error", "clip" or
    "fill"; other keyword options go to the Remote, which rejects ones it does not know.

    ``missing`` says what a read does with a chunk absent from the store (never written, or
    deleted): "fill" (the default) reads it as the fill value, as sparse stores need;
    "error" raises :class:`~voxgate.errors.MissingChunkError` naming the chunks' grid
    indices.  "error" needs a store whose chunks voxgate can see (zarr, N5, precomputed, HDF5
    chunked datasets, mem://); bossdb:// and dvid:// refuse it with
    CapabilityNotSupportedError.  :meth:`Volume.missing_chunks` lists absent chunks.
    """
    if isinstance(url, Volume):
        missing = check_missing(options.pop("missing", url.remote.missing))
        if options:
            raise InvalidRequestError(
                "options cannot be given when reopening a Volume (only mode, scale, bounds "
                "and missing)"
            )
        remote = url.remote
        if url.mode != mode or missing != remote.missing:
            remote = open_remote(url.url, mode=mode, missing=missing)
        return Volume(remote, scale, bounds=bounds)
    if not isinstance(url, (str, os.PathLike)):
        raise InvalidRequestError(
            f"a volume URL must be a string, a path or a Volume, got {type(url).__name__} {url!r}"
        )
    remote = open_remote(os.fspath(url), mode=mode, **options)
    return Volume(remote, scale, bounds=bounds)


def create(
    url: str | os.PathLike[str],
    *,
    shape: Any,
    dtype: Any,
    chunks: Any,
    voxel_size: Any,
    kind: str = "image",
    encoding: str | None = None,
    offset: Any = (0, 0, 0),
    num_scales: int = 1,
    num_channels: int = 1,
    exist_ok: bool = False,
    **options: Any,
) -> Volume:
    """Create a new volume and return it opened read-write ("r+").

    ``shape``, ``chunks``, ``voxel_size`` (nm) and ``offset`` are (z, y, x).  ``kind`` is
    "image" or "segmentation".  ``num_scales`` > 1 lays out that many levels of 2x
    downsampling (toward isotropy) in the store's metadata; their voxels start as the fill
    value until written or computed with ``voxgate.downsample``.
    """
    meta = VolumeMeta.build(
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        voxel_size=voxel_size,
        kind=kind,
        encoding=encoding,
        offset=offset,
        num_scales=num_scales,
        num_channels=num_channels,
    )
    remote = create_remote(os.fspath(url), meta, exist_ok=exist_ok, **options)
    return Volume(remote, 0)
