"""``voxgate.open`` and ``voxgate.create``."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from .errors import InvalidRequestError, VoxelOrderWarning, VoxgateError
from .geometry import VoxelSize
from .meta import VolumeMeta, next_scales
from .registry import create_remote, open_remote, resolve, resolve_for_create
from .remotes.base import COMMON_OPTIONS, check_keywords, check_missing
from .volume import Bounds, Volume

#: ``open_remote`` and ``create_remote`` live in the registry (below Volume); re-exported here
__all__ = ["create", "create_remote", "open", "open_remote"]


def _spec_url(url: Any) -> Any:
    """A TensorStore spec given as a dict, as its ``tensorstore://`` URL."""
    if isinstance(url, dict):
        import json

        return "tensorstore://" + json.dumps(url, sort_keys=True, separators=(",", ":"))
    return url


def open(
    url: str | os.PathLike[str] | Volume | dict[str, Any],
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

    ``url`` may also be a TensorStore spec (a dict with a ``driver``): any array TensorStore
    opens, with ``voxel_size=`` and ``kind=`` for what the spec does not say (see
    docs/remotes/tensorstore.md).
    """
    url = _spec_url(url)
    if isinstance(url, Volume):
        missing = check_missing(options.pop("missing", url.remote.missing))
        if options:
            raise InvalidRequestError(
                "options cannot be given when reopening a Volume (only mode, scale, bounds "
                "and missing)"
            )
        remote = url.remote
        if url.mode != mode or missing != remote.missing:
            remote = open_remote(url.remote.url, mode=mode, missing=missing)
        return Volume(remote, scale, bounds=bounds)
    if not isinstance(url, (str, os.PathLike)):
        raise InvalidRequestError(
            f"a volume URL must be a string, a path or a Volume, got {type(url).__name__}"
            + ("" if isinstance(url, np.ndarray) else f" {repr(url)[:80]}")
            + (" (the Services take numpy arrays as they are; voxgate.create('mem://NAME', "
               "...) makes a volume in memory)" if isinstance(url, np.ndarray) else "")
        )
    check_keywords(open, options, lambda: _store_options(os.fspath(url), "open"))
    remote = open_remote(os.fspath(url), mode=mode, **options)
    return Volume(remote, scale, bounds=bounds)


def _store_options(url: str, action: str) -> tuple[str, ...]:
    """The options the store at ``url`` takes to ``action`` ("open" or "create"); none when
    the URL names no store (opening or creating it then says why)."""
    try:
        cls = resolve(url)[0] if action == "open" else resolve_for_create(url)[0]
    except VoxgateError:
        return ()
    own = cls.open_options if action == "open" else cls.create_options
    return (*own, *COMMON_OPTIONS[action])


class _Required:
    """The default of a parameter :func:`create` needs (so that a misspelt name given in its
    place is named, rather than only the parameter missing)."""

    def __repr__(self) -> str:
        return "<required>"


_REQUIRED: Any = _Required()


def _format_created_at(url: str) -> str | None:
    """The scheme of the format :func:`create` makes at ``url`` (None: it cannot tell, and
    says so itself)."""
    try:
        return str(resolve_for_create(url)[0].scheme)
    except VoxgateError:
        return None


def create(
    url: str | os.PathLike[str] | dict[str, Any],
    *,
    shape: Any,
    dtype: Any,
    chunks: Any = _REQUIRED,
    voxel_size: Any = _REQUIRED,
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

    A bare ``voxel_size`` triple that reads like CloudVolume's (x, y, z) order, e.g.
    ``(8, 8, 40)``, gives a :class:`~voxgate.errors.VoxelOrderWarning`; a
    ``VoxelSize(z=40, y=8, x=8)`` never does.
    """
    url = _spec_url(url)
    if not isinstance(url, (str, os.PathLike)):
        raise InvalidRequestError(
            f"a volume URL must be a string, a path or a TensorStore spec dict, got "
            f"{type(url).__name__} {url!r}"
        )
    check_keywords(create, options, lambda: _store_options(os.fspath(url), "create"))
    missing = [n for n, v in (("chunks", chunks), ("voxel_size", voxel_size)) if v is _REQUIRED]
    if missing:  # (Python's own words for a required argument left out)
        raise TypeError(f"create() missing {len(missing)} required keyword-only argument"
                        f"{'s' if len(missing) > 1 else ''}: {' and '.join(map(repr, missing))}")
    if encoding is not None and _format_created_at(os.fspath(url)) not in (None, "precomputed"):
        raise InvalidRequestError(
            f"encoding={encoding!r} applies to precomputed:// volumes only (raw, jpeg, png, "
            "compressed_segmentation); zarr:// takes compression=, other stores their own "
            "options"
        )
    _check_voxel_order(voxel_size)
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
    if len(meta.scales) > 1:
        # the coarser scales laid out on the grid the store's pyramids use (meta.coarser_extent)
        try:
            cls, _ = resolve_for_create(os.fspath(url))
        except VoxgateError:
            cls = None  # (create_remote says what is wrong with the URL)
        anchor = cls.create_anchor(meta, options) if cls is not None else "offset"
        if anchor != "offset":
            base = meta.with_scales(meta.scales[:1])
            meta = base.with_scales([*base.scales, *next_scales(
                base, len(meta.scales) - 1, anchor=anchor)])
    remote = create_remote(os.fspath(url), meta, exist_ok=exist_ok, **options)
    return Volume(remote, 0)


def _check_voxel_order(voxel_size: Any, stacklevel: int = 3) -> None:
    """Warn (VoxelOrderWarning) when a bare ``voxel_size`` triple looks like (x, y, z).

    The sign is the pattern of anisotropic data written in CloudVolume's order: the first two
    sizes equal and the last larger, ``(8, 8, 40)``.  Read (z, y, x) that is a voxel longer
    along x than along y, which microscopes rarely make; read backwards it is the common
    8 x 8 nm in-plane, 40 nm sections.  Isotropic sizes, a z larger than x and y, and a
    :class:`VoxelSize` (named axes) never warn.
    """
    if isinstance(voxel_size, VoxelSize) or isinstance(voxel_size, (str, bytes)):
        return
    try:
        z, y, x = (float(v) for v in voxel_size)
    except (TypeError, ValueError):
        return  # VoxelSize.of says what is wrong
    if z == y < x:
        warnings.warn(
            f"voxel_size={tuple(voxel_size)!r} is read (z, y, x) = ({z:g}, {y:g}, {x:g}) nm, "
            f"a voxel longer along x than along y; if you meant (x, y, z) as CloudVolume and "
            f"Neuroglancer write it, pass voxel_size=({x:g}, {y:g}, {z:g}). voxgate takes "
            f"(z, y, x); pass VoxelSize(z={z:g}, y={y:g}, x={x:g}) to keep these sizes without "
            "this warning",
            VoxelOrderWarning, stacklevel=stacklevel,
        )
