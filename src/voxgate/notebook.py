"""Looking at a Volume in a notebook: the HTML repr with a thumbnail, matplotlib previews, and
lazy xarray DataArrays with coordinates in nanometres.

``Volume._repr_html_``, ``Volume.preview`` and ``Volume.to_xarray`` are thin methods over the
functions here, which take the Volume as an argument (this module sits below ``volume`` in the
layers, so it knows a Volume only by its public attributes).

Every read here is bounded: a thumbnail or a preview reads one plane (the middle z-slice unless
told otherwise), every ``stride``-th voxel of it, tile by tile, so at most about one chunk row of
the plane is in memory at a time and the volume is never read whole.  For the thumbnail of a
whole scale, the coarsest scale whose plane is still at least :data:`THUMBNAIL_PX` wide is read
instead.

Coordinates (``to_xarray``, the axes of ``preview``) are voxel *centres* in nanometres, the
OME-NGFF pixel-centre convention that :func:`voxgate.meta.centre_translation` uses for OME-Zarr
``translation``: scale 0's voxel ``i`` of an axis is centred at ``(offset + i) * voxel_size``,
and a downsampled scale's first voxel half a block further in.

matplotlib and xarray are optional (the ``notebook`` extra); the PNG thumbnails are encoded
here with zlib, so ``_repr_html_`` needs neither.
"""

from __future__ import annotations

import base64
import functools
import importlib
import math
import numbers
import struct
import sys
import threading
import zlib
from typing import Any

import numpy as np

from .errors import InvalidRequestError, LazyOperationError, MissingDependencyError
from .geometry import whole_at_least
from .meta import centre_translation
from .storage.units import length_unit_nm

__all__ = [
    "PREVIEW_PX",
    "NoArithmetic",
    "THUMBNAIL_PX",
    "XARRAY_BLOCK_BYTES",
    "axis_coords",
    "check_array_caller",
    "gray_image",
    "label_rgb",
    "plane_view",
    "png_bytes",
    "preview",
    "read_plane",
    "refuse_arithmetic",
    "repr_html",
    "thumbnail",
    "to_xarray",
]

#: the long side of a thumbnail, in pixels (at most)
THUMBNAIL_PX = 256
#: the long side of a preview, in pixels (at most), unless ``max_px`` says otherwise
PREVIEW_PX = 1024
#: ``to_xarray``'s dask blocks hold at most about this many bytes (whole storage chunks), so a
#: slice of the DataArray reads little more than the chunks it touches
XARRAY_BLOCK_BYTES = 16 * 2**20
_SPATIAL = ("z", "y", "x")


def _require(module: str, feature: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"{feature} needs {module.split('.')[0]}, which is not installed; install the "
            "notebook extra: pip install 'voxgate[notebook]'"
        ) from None


# -- coordinates --------------------------------------------------------------------------------
def _nm_per_unit(unit: str) -> float | None:
    return length_unit_nm(unit)


def axis_coords(vol: Any) -> dict[str, tuple[float, float, int | None]]:
    """Per spatial axis of ``vol``: (centre of its first voxel, spacing, length or None when the
    axis is dropped), in nanometres (in the volume's own unit when it is not a length unit
    voxgate knows)."""
    sc = vol.scale_meta
    unit = sc.voxel_size.unit
    factor = _nm_per_unit(unit) or 1.0
    first = centre_translation(vol.scales[0], sc, vol.remote.pyramid_anchor)
    vk = sc.voxel_size.zyx()
    step = vol.voxel_size.zyx()
    kept = set(vol.dims)
    lengths = dict(zip(vol.dims, vol.shape, strict=True))
    out: dict[str, tuple[float, float, int | None]] = {}
    for i, name in enumerate(_SPATIAL):
        c0 = first[i] + (vol.offset[i] - sc.offset[i]) * vk[i]
        out[name] = (c0 * factor, step[i] * factor, lengths[name] if name in kept else None)
    return out


def _coord_unit(vol: Any) -> str:
    unit = vol.scale_meta.voxel_size.unit
    return "nm" if _nm_per_unit(unit) is not None else unit


# -- reading a plane ----------------------------------------------------------------------------
def plane_view(vol: Any, z: int | None = None, channel: int = 0) -> Any:
    """The 2-D view of ``vol`` to draw: slice ``z`` (default: the middle one) of channel
    ``channel``; a view that is already a plane (an axis dropped) is drawn as it is."""
    dims = vol.dims
    spatial = [d for d in dims if d != "c"]
    if len(spatial) < 2:
        raise InvalidRequestError(
            f"cannot draw a view with {len(spatial)} spatial axes ({dims}); a preview needs a "
            "plane: index at most one spatial axis"
        )
    key: list[Any] = []
    for d, n in zip(dims, vol.shape, strict=True):
        if d == "c":
            if not -n <= channel < n:
                raise InvalidRequestError(f"channel {channel} does not exist; the view has {n}")
            key.append(channel)
        elif d == "z" and len(spatial) == 3:
            if z is None:
                key.append(n // 2)
            elif not -n <= z < n:
                raise InvalidRequestError(f"z={z} is outside the view's 0:{n} slices")
            else:
                key.append(z)
        else:
            key.append(slice(None))
    if z is not None and len(spatial) == 2:
        raise InvalidRequestError(
            f"this view is already a plane ({dims}): leave z out, or index the volume instead"
        )
    return vol[tuple(key)]


def read_plane(plane: Any, max_px: int) -> tuple[np.ndarray, int]:
    """Every ``stride``-th voxel of a 2-D view, with the stride that keeps the long side at most
    ``max_px``.  Read in tiles of about one storage chunk each, so memory stays bounded and
    only the plane's chunks are touched."""
    h, w = plane.shape
    stride = max(1, math.ceil(max(h, w) / max_px))
    oh, ow = -(-h // stride), -(-w // stride)
    out = np.empty((oh, ow), dtype=plane.dtype)
    tile = max(1, -(-max(plane.chunks) // stride))  # output pixels per tile side
    for i0 in range(0, oh, tile):
        i1 = min(oh, i0 + tile)
        for j0 in range(0, ow, tile):
            j1 = min(ow, j0 + tile)
            part = plane[i0 * stride:(i1 - 1) * stride + 1:stride,
                         j0 * stride:(j1 - 1) * stride + 1:stride]
            out[i0:i1, j0:j1] = part.read()
    return out, stride


def _whole_scale(vol: Any) -> bool:
    sc = vol.scale_meta
    full = vol.at_scale(vol.scale)
    return bool(
        vol.shape == full.shape and vol.bounds == sc.bounds
        and vol.voxel_size == sc.voxel_size
    )


def _thumbnail_source(vol: Any) -> Any:
    """The volume itself, or for a whole scale the coarsest scale whose (y, x) plane is still
    at least THUMBNAIL_PX on its long side (a smaller read for the same picture)."""
    if not _whole_scale(vol):
        return vol
    best = vol
    for sc in vol.scales[vol.scale + 1:]:
        if max(sc.shape.y, sc.shape.x) >= THUMBNAIL_PX:
            best = vol.at_scale(sc.index)
    return best


# -- colours ------------------------------------------------------------------------------------
def gray_image(a: np.ndarray) -> np.ndarray:
    """An image plane as uint8 grey: uint8 as it is, other types stretched between their 0.5th
    and 99.5th percentiles (NaNs black)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    f = a.astype(np.float64)
    finite = np.isfinite(f)
    if not finite.any():
        return np.zeros(a.shape, dtype=np.uint8)
    lo, hi = np.percentile(f[finite], [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    scaled = np.where(finite, (f - lo) / (hi - lo) * 255.0, 0.0)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def label_rgb(ids: np.ndarray) -> np.ndarray:
    """An RGB colour (uint8, ``ids.shape + (3,)``) for every label: a hash of the id, never
    dark, so the same id has the same colour in every plane and notebook; 0 is black."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    if np.issubdtype(uniq.dtype, np.integer):
        h = uniq.astype(np.uint64)  # negative ids wrap, which is fine for a hash
    else:
        h = np.arange(1, len(uniq) + 1, dtype=np.uint64)
    # splitmix64's finaliser: neighbouring ids get unrelated colours
    h = h + np.uint64(0x9E3779B97F4A7C15)
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    h = h ^ (h >> np.uint64(31))
    rgb = np.stack([(h >> np.uint64(s)) & np.uint64(0xFF) for s in (0, 8, 16)], axis=-1)
    colours = (rgb * np.uint64(191) // np.uint64(255) + np.uint64(64)).astype(np.uint8)
    colours[uniq == 0] = 0
    return colours[inverse.reshape(ids.shape)]


def _label_rgba(ids: np.ndarray, alpha: float) -> np.ndarray:
    rgb = label_rgb(ids)
    a = np.where(ids == 0, 0, round(alpha * 255)).astype(np.uint8)
    return np.concatenate([rgb, a[..., None]], axis=-1)


# -- PNG ----------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG file of a uint8 image: (h, w) grey, (h, w, 3) RGB or (h, w, 4) RGBA."""
    a = np.ascontiguousarray(pixels, dtype=np.uint8)
    colour = {2: 0, 3: 2, 4: 6}
    channels = 1 if a.ndim == 2 else a.shape[-1]
    if a.ndim not in (2, 3) or (a.ndim == 3 and channels not in (3, 4)) or 0 in a.shape[:2]:
        raise InvalidRequestError(
            f"a PNG needs a non-empty (h, w), (h, w, 3) or (h, w, 4) array, got {a.shape}")
    h, w = a.shape[:2]
    ctype = colour[a.ndim] if a.ndim == 2 else colour[channels]
    rows = a.reshape(h, w * channels)
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), rows], axis=1).tobytes()
    return b"".join([
        b"\x89PNG\r\n\x1a\n",
        _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0)),
        _chunk(b"IDAT", zlib.compress(raw, 6)),
        _chunk(b"IEND", b""),
    ])


# -- the HTML repr ------------------------------------------------------------------------------
def thumbnail(vol: Any) -> tuple[np.ndarray, str]:
    """The thumbnail pixels of ``vol`` (grey for images, label colours for segmentation) and a
    caption.  Reads one plane of the view (or of a coarser scale), strided to THUMBNAIL_PX."""
    src = _thumbnail_source(vol)
    plane = plane_view(src)
    data, stride = read_plane(plane, THUMBNAIL_PX)
    pixels = label_rgb(data) if vol.kind == "segmentation" else gray_image(data)
    where = []
    if "z" in src.dims and len([d for d in src.dims if d != "c"]) == 3:
        where.append(f"z = {src.shape[src.dims.index('z')] // 2} (middle)")
    if "c" in src.dims:
        where.append("channel 0")
    if src.scale != vol.scale:
        where.append(f"scale {src.scale}")
    if stride > 1:
        where.append(f"one voxel in {stride} along {' and '.join(plane.dims)}")
    return pixels, ", ".join(where) or "the whole plane"


def _fmt_vs(vs: Any) -> str:
    return f"({vs.z:g}, {vs.y:g}, {vs.x:g}) {vs.unit}"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _metadata_rows(vol: Any) -> list[tuple[str, str]]:
    sc = vol.scale_meta
    rows = [
        ("url", vol.url),
        ("shape", f"{tuple(vol.shape)} ({', '.join(vol.dims)})"),
        ("dtype", f"{vol.dtype.name}, {vol.kind}"),
        ("voxel size", _fmt_vs(vol.voxel_size)),
        ("offset", f"{tuple(vol.offset)} voxels (z, y, x)"),
        ("chunks", str(tuple(sc.chunks))),
        ("size", _fmt_bytes(vol.nbytes)),
        ("mode", vol.mode),
    ]
    scales = "<br>".join(
        f"{'<b>' if s.index == vol.scale else ''}{s.index}: {tuple(s.shape)} at "
        f"{_fmt_vs(s.voxel_size)}{'</b>' if s.index == vol.scale else ''}"
        for s in vol.scales
    )
    rows.append(("scales", scales))
    return rows


def repr_html(vol: Any) -> str:
    """The HTML of ``vol`` in a notebook: its metadata and a thumbnail of the middle slice.

    Never raises: a failed read shows the metadata and a one-line note instead of the picture.
    """
    import html  # (here, not at import: a process that only reads never draws a repr)

    try:
        rows = _metadata_rows(vol)
    except Exception as exc:  # a broken volume still gets a repr
        return f"<pre>{html.escape(object.__repr__(vol))}: {html.escape(_one_line(exc))}</pre>"
    cells = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{v if k == 'scales' else html.escape(v)}</td></tr>"
        for k, v in rows
    )
    try:
        picture = _thumbnail_html(vol)
    except Exception as exc:
        picture = (f"<p style='color:#a00'>no thumbnail: {html.escape(_one_line(exc))}</p>")
    return (
        "<div class='voxgate-volume' style='display:flex;gap:1.5em;align-items:flex-start'>"
        f"<table>{cells}</table><div>{picture}</div></div>"
    )


def _thumbnail_html(vol: Any) -> str:
    spatial = [d for d in vol.dims if d != "c"]
    if len(spatial) < 2:
        return "<p>no thumbnail: the view has fewer than two spatial axes</p>"
    if vol.size == 0:
        return "<p>no thumbnail: the view is empty</p>"
    pixels, caption = thumbnail(vol)
    h, w = pixels.shape[:2]
    # show voxels at their physical aspect ratio, the long side THUMBNAIL_PX wide
    plane = plane_view(vol)
    coords = axis_coords(plane)
    vy, vx = (coords[d][1] for d in [d for d in plane.dims if d != "c"])
    ph, pw = plane.shape[0] * vy, plane.shape[1] * vx
    k = THUMBNAIL_PX / max(ph, pw)
    css_w, css_h = max(1, round(pw * k)), max(1, round(ph * k))
    data = base64.b64encode(png_bytes(pixels)).decode("ascii")
    import html

    return (
        f"<img src='data:image/png;base64,{data}' width='{css_w}' height='{css_h}' "
        f"style='image-rendering:pixelated' alt='{w}x{h} thumbnail'>"
        f"<div style='font-size:smaller'>{html.escape(caption)}</div>"
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# -- matplotlib ---------------------------------------------------------------------------------
def preview(
    vol: Any,
    z: int | None = None,
    ax: Any = None,
    *,
    labels: Any = None,
    channel: int = 0,
    alpha: float = 0.4,
    max_px: int = PREVIEW_PX,
) -> Any:
    """Draw slice ``z`` (default: the middle one) of ``vol`` on a matplotlib Axes and return it.

    An image is drawn in grey, a segmentation in label colours; ``labels``, a segmentation
    Volume of the same shape, is drawn over an image with ``alpha`` (0 transparent).  Axes are
    in nanometres (voxel centres); the plane is read strided to at most ``max_px`` pixels on
    its long side.  ``ax`` defaults to a new figure's Axes.
    """
    max_px = whole_at_least(max_px, 1, "max_px")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidRequestError(f"alpha must be between 0 and 1, got {alpha!r}")
    _require("matplotlib", "Volume.preview")
    plane = plane_view(vol, z, channel)
    overlay = None
    if labels is not None:
        if labels.kind != "segmentation":
            raise InvalidRequestError(
                f"labels must be a segmentation volume, got a {labels.kind} ({labels.url})")
        lplane = plane_view(labels, z)
        if lplane.shape != plane.shape:
            raise InvalidRequestError(
                f"labels' plane {lplane.shape} does not match the image's {plane.shape}; give "
                "labels of the same shape (index both volumes alike)")
        overlay, _ = read_plane(lplane, max_px)
    data, _ = read_plane(plane, max_px)
    if ax is None:
        plt = _require("matplotlib.pyplot", "Volume.preview")
        _, ax = plt.subplots()
    coords = axis_coords(plane)
    rows, cols = (d for d in plane.dims if d != "c")
    (r0, dr, nr), (c0, dc, nc) = coords[rows], coords[cols]
    extent = (c0 - dc / 2, c0 + (nc or 1) * dc - dc / 2, r0 + (nr or 1) * dr - dr / 2, r0 - dr / 2)
    if vol.kind == "segmentation":
        ax.imshow(label_rgb(data), extent=extent, interpolation="nearest")
    else:
        ax.imshow(gray_image(data), cmap="gray", vmin=0, vmax=255, extent=extent,
                  interpolation="nearest")
    if overlay is not None:
        ax.imshow(_label_rgba(overlay, alpha), extent=extent, interpolation="nearest")
    unit = _coord_unit(vol)
    ax.set_xlabel(f"{cols} ({unit})")
    ax.set_ylabel(f"{rows} ({unit})")
    fixed = [f"{d} = {plane.offset[i]} ({coords[d][0]:g} {unit})"
             for i, d in enumerate(_SPATIAL) if coords[d][2] is None]
    ax.set_title(", ".join([f"{_short_name(vol)} scale {vol.scale}", *fixed]), fontsize="small")
    return ax


# -- xarray -------------------------------------------------------------------------------------
def to_xarray(vol: Any, chunks: Any = "auto", name: str | None = None) -> Any:
    """``vol`` as a lazy xarray DataArray over ``vol.to_dask(chunks)``: dims ("z", "y", "x")
    (("c", "z", "y", "x") with several channels, dropped axes as scalar coordinates), spatial
    coordinates the voxel centres in nanometres.  ``chunks="auto"`` makes blocks of whole
    storage chunks of at most XARRAY_BLOCK_BYTES; ``name`` defaults to the last part of the
    URL."""
    xr = _require("xarray", "Volume.to_xarray")
    unit = _coord_unit(vol)
    coords: dict[str, Any] = {}
    for d, (first, step, n) in axis_coords(vol).items():
        if n is None:
            coords[d] = ((), float(first), {"units": unit})
        else:
            coords[d] = ((d,), first + step * np.arange(n, dtype=np.float64), {"units": unit})
    vs = vol.voxel_size
    factor = _nm_per_unit(vs.unit) or 1.0
    attrs = {
        "url": vol.url,
        "scale": vol.scale,
        "kind": vol.kind,
        "voxel_size": tuple(v * factor for v in vs.zyx()),
        "units": unit,
        "coordinates": "voxel centres",
    }
    return xr.DataArray(vol.to_dask(_xarray_chunks(vol, chunks)), dims=vol.dims, coords=coords,
                        name=_short_name(vol) if name is None else name, attrs=attrs)


def _xarray_chunks(vol: Any, chunks: Any) -> Any:
    """``chunks`` as given, or for "auto" whole storage chunks up to XARRAY_BLOCK_BYTES."""
    if not (isinstance(chunks, str) and chunks == "auto") or vol.size == 0:
        return chunks
    import dask.array as da

    sc = vol.scale_meta
    steps = [max(1, round(a / b)) for a, b in zip(vol.voxel_size.zyx(), sc.voxel_size.zyx(),
                                                   strict=True)]
    storage = {d: max(1, c // k) for d, c, k in zip(_SPATIAL, sc.chunks, steps, strict=True)}
    previous = tuple(n if d == "c" else storage[d] for d, n in zip(vol.dims, vol.shape,
                                                                   strict=True))
    return da.core.normalize_chunks("auto", vol.shape, limit=XARRAY_BLOCK_BYTES, dtype=vol.dtype,
                                    previous_chunks=previous)


def _short_name(vol: Any) -> str:
    """The last part of the volume's URL (its layer, array or channel name)."""
    path = vol.url.split("://", 1)[-1].rstrip("/")
    return path.rsplit("/", 1)[-1] or vol.url


# -- what would read everything behind the caller's back ---------------------------------------
#: numpy's modules of the ndarray reductions np.mean, np.std and np.var fall back on for an
#: object without such methods (numpy 2, numpy 1)
_NUMPY_METHODS = ("numpy._core._methods", "numpy.core._methods")


def check_array_caller(vol: Any) -> None:
    """Refuse ``np.asarray(vol)`` when xarray calls it (``xr.DataArray(vol)``), which would read
    the whole view silently, and when np.mean, np.std or np.var do (reductions, refused as
    np.sum is); a caller's own ``np.asarray(vol)`` goes ahead."""
    try:
        frame = sys._getframe(2)  # 0: here, 1: Volume.__array__, 2: whoever asked numpy
    except ValueError:  # called with nothing above: not from xarray
        return
    if frame.f_globals.get("__name__", "") in _NUMPY_METHODS:
        # np.mean / np.std / np.var: numpy's reductions, as np.sum and np.max (ufuncs, which
        # refuse) are; they read the whole view through np.asarray without a word
        name = frame.f_code.co_name
        raise refuse_arithmetic(vol, "np.mean" if name == "_mean" else "np.std / np.var")
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "numpy":
        frame = frame.f_back  # type: ignore[assignment]
    caller = "" if frame is None else frame.f_globals.get("__name__", "")
    if caller.split(".")[0] == "xarray":
        raise LazyOperationError(
            f"xarray would read all of {vol.url} ({tuple(vol.shape)}, "
            f"{_fmt_bytes(vol.nbytes)}) into memory; use vol.to_xarray() for a lazy DataArray "
            "(dask-backed, coordinates in nm), or xr.DataArray(vol.read()) to load it on purpose"
        )


class NoArithmetic:
    """A mixin for lazy views: numpy ufuncs and Python's arithmetic, comparison and unary
    operators raise :func:`refuse_arithmetic`'s error instead of reading everything
    (in-place forms fall back to these).  ``==`` and ``!=`` keep their identity meaning
    between views and other objects, but refuse a number or an array (``seg == 5`` was
    False, and ``np.count_nonzero(seg == 5)`` 0), and ``x in vol`` refuses too (it was
    False)."""

    __slots__ = ()
    __hash__ = object.__hash__  # (an __eq__ of the class's own would unset it)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        name = getattr(ufunc, "__name__", str(ufunc))
        raise refuse_arithmetic(self, f"np.{name}" + ("" if method == "__call__" else
                                                      f".{method}"))

    def __eq__(self, other: object) -> bool:
        if _is_data(other):
            raise refuse_arithmetic(self, "==")
        return self is other

    def __ne__(self, other: object) -> bool:
        if _is_data(other):
            raise refuse_arithmetic(self, "!=")
        return self is not other

    def __contains__(self, item: object) -> bool:
        raise refuse_arithmetic(self, "in")

    def __getattr__(self, name: str) -> Any:
        # (only for names not found otherwise.)  ``vol.max()``, ``vol.astype(...)``, ``vol.T``:
        # numpy's array methods are not a lazy view's, and the bare "no attribute 'max'" left
        # a scientist guessing; the error stays an AttributeError, so hasattr() still says
        # False to dask, xarray and numpy's own np.max(vol) (which then refuses as a ufunc)
        busy = _DESCRIBING.ids
        if not name.startswith("_") and name in _numpy_names() and id(self) not in busy:
            # (``nbytes`` and ``shape`` are numpy names too: a view without its state, or
            # whose property's own lookup failed, came back here for ever while describing
            # itself (RecursionError, even from hasattr()); within, the bare error)
            busy.add(id(self))
            try:
                vol: Any = self
                what = (f"(vol.read().{name}, which reads {_fmt_bytes(vol.nbytes)}), or use "
                        f"vol.to_dask().{name} for a lazy, block-wise one ({vol.url} "
                        f"{tuple(vol.shape)})")
            except AttributeError:
                what = f"(vol.read().{name}), or use vol.to_dask().{name} for a lazy one"
            finally:
                busy.discard(id(self))
            raise AttributeError(
                f"a {type(self).__name__} is a lazy view, not a numpy array, and has no "
                f"{name!r}: read the view for a numpy array {what}", name=name, obj=self)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}",
                             name=name, obj=self)


class _Describing(threading.local):
    """The views this thread's NoArithmetic.__getattr__ is describing (``ids``: each thread
    starts with an empty set of its own)."""

    def __init__(self) -> None:
        self.ids: set[int] = set()


_DESCRIBING = _Describing()


@functools.cache
def _numpy_names() -> frozenset[str]:
    """The public attribute names of numpy's arrays (``max``, ``astype``, ``T`` ...)."""
    return frozenset(n for n in dir(np.ndarray) if not n.startswith("_"))


def _is_data(x: object) -> bool:
    """Whether ``x`` is what an elementwise comparison compares with: a number (numpy's,
    Fraction, Decimal too), a list (numpy takes one for an array) or an array (numpy's,
    dask's: anything with ``__array__`` but a lazy view)."""
    return isinstance(x, (numbers.Number, np.generic, list)) or (
        hasattr(x, "__array__") and not isinstance(x, NoArithmetic))


def _refusing(op: str) -> Any:
    def refuse(self: Any, *_: Any) -> Any:
        raise refuse_arithmetic(self, op)

    return refuse


#: the operators a Volume refuses, by dunder name (binary ones also reflected: __radd__ ...)
_BINARY = {"add": "+", "sub": "-", "mul": "*", "matmul": "@", "truediv": "/",
           "floordiv": "//", "mod": "%", "pow": "**", "and": "&", "or": "|", "xor": "^",
           "lshift": "<<", "rshift": ">>", "divmod": "divmod()"}
_OTHER = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "neg": "unary -", "pos": "unary +",
          "abs": "abs()", "invert": "~"}
for _name, _op in _BINARY.items():
    setattr(NoArithmetic, f"__{_name}__", _refusing(_op))
    setattr(NoArithmetic, f"__r{_name}__", _refusing(_op))
for _name, _op in _OTHER.items():
    setattr(NoArithmetic, f"__{_name}__", _refusing(_op))


def refuse_arithmetic(vol: Any, op: str) -> LazyOperationError:
    """The error for ``vol + 1`` and friends: a Volume is lazy and does no arithmetic."""
    return LazyOperationError(
        f"a Volume is a lazy view and does no arithmetic ({op}), which would read all of it: "
        "use vol.to_dask() for lazy, block-wise arithmetic (vol.to_dask() + 1, "
        "np.sqrt(vol.to_dask())), or read what you need first (vol.read(), vol[z0:z1].read()) "
        f"for a numpy array; {vol.url} {tuple(vol.shape)} is {_fmt_bytes(vol.nbytes)}"
    )
