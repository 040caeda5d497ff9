"""Opening a ``tiff://`` location: one TIFF file (its first series, pyramid levels as scales)
or a directory of 2-D slices, and the voxel size (and an OME-TIFF's channel names) read from
OME-XML or ImageJ metadata."""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    RemoteNotFoundError,
)
from ...geometry import Vec, VoxelSize
from ...meta import Scale
from ...storage import length_unit_nm
from .ifds import plain_series, scan_pages
from .pages import (
    _chunks,
    _compression_name,
    _own_tag,
    _Page,
    _page_info,
    _page_span,
    _parsing,
    _tifffile,
)
from .slices import SliceTemplate

if TYPE_CHECKING:
    from .remote import TiffRemote

_Z_AXES = "ZQIT"  # axes that can hold the z slices (T/I/Q: unlabelled image sequences)


def _unit_nm(unit: object, default: float | None) -> float | None:
    """Nanometres per ``unit`` (any spelling voxgate knows: "Å", "cm", "micron", ...);
    ``default`` when no unit is given, None when it names no length voxgate knows (a size
    in an unknown unit is no size: taking it as µm made 40 Å voxels 40 µm)."""
    if not isinstance(unit, str) or not unit.strip():
        return default
    return length_unit_nm(unit.strip().replace("\\u00B5", "µ"))


def _first_pixels(xml: str) -> Any:
    """The first Pixels element of OME-XML (None when there is none or the XML is broken)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    return next((el for el in root.iter() if el.tag.endswith("Pixels")), None)


def _ome_voxel_size(xml: str) -> tuple[float, float, float] | None:
    """(z, y, x) in nm from the first Pixels element of OME-XML (a size without a unit is in
    µm, OME's default); a missing size takes the last one given, and a unit voxgate does not
    know ("pixel", "reference frame") leaves the voxel size unknown (None)."""
    pixels = _first_pixels(xml)
    if pixels is None:
        return None
    out: list[float | None] = []
    found = False
    for ax in "ZYX":
        v = pixels.get(f"PhysicalSize{ax}")
        if v is None:
            out.append(None)
            continue
        found = True
        f = _unit_nm(pixels.get(f"PhysicalSize{ax}Unit"), 1000.0)
        if f is None:
            return None
        out.append(float(v) * f)
    if not found:
        return None
    known = [v for v in out if v is not None]
    z, y, x = (v if v is not None else known[-1] for v in out)
    return z, y, x


def _ome_channel_names(xml: str, channels: int) -> list[str] | None:
    """The channels' names (``<Channel Name=...>``) of the first Pixels element of OME-XML,
    one per channel, ``channel_i`` for a channel without one (as ome-zarr-py names them);
    None when no channel is named, or when the channels listed are not the volume's
    ``channels`` (an RGB page is one OME channel of three samples)."""
    pixels = _first_pixels(xml)
    if pixels is None:
        return None
    listed = [el for el in pixels if el.tag.rpartition("}")[2] == "Channel"]
    names = [el.get("Name") for el in listed]
    if len(listed) != channels or not any(names):
        return None
    return [n if n else f"channel_{i}" for i, n in enumerate(names)]


def _imagej_voxel_size(tf: Any, page: Any) -> tuple[float, float, float] | None:
    ij = tf.imagej_metadata
    if not ij:
        return None
    # no unit (or "pixel"): an uncalibrated image, its sizes in voxels, as a plain TIFF's
    unit = ij.get("unit")
    f = 1.0 if str(unit).strip().lower() in ("pixel", "pixels") else _unit_nm(unit, 1.0)
    if f is None:
        return None
    sizes = []
    for tag in ("YResolution", "XResolution"):
        t = page.tags.get(tag)
        if t is None:
            return None
        num, den = t.value
        sizes.append(den / num * f if num else 1.0)
    z = float(ij.get("spacing", 1.0)) * f
    return z, sizes[0], sizes[1]


def open_file(
    cls: type[TiffRemote], location: str, path: str, mode: str, options: dict[str, Any]
) -> TiffRemote:
    """The first series of one TIFF file (``TiffRemote._open_file``)."""
    tifffile = _tifffile()
    with _parsing(path), tifffile.TiffFile(path) as tf:
        plain = plain_series(tf)
        series = [plain] if plain is not None else tf.series
        if not series:
            raise InvalidRequestError(f"{path} holds no image")
        s0 = series[0]
        if len(series) > 1 and not (tf.is_ome or tf.is_imagej):
            shapes = ", ".join(
                f"pages {_page_span(tf, s)} of shape {tuple(s.shape[-2:])}"
                for s in series[:4]
            )
            raise InvalidRequestError(
                f"{path} has pages of different shapes or dtypes ({shapes}); a volume "
                "needs every page to have the first one's shape and dtype (split the "
                "file, or open the pages as separate volumes)"
            )
        axes = s0.axes.upper()
        shape = tuple(int(n) for n in s0.shape)
        samples = 1
        if axes.endswith("S"):
            samples = shape[-1]
            axes, shape = axes[:-1], shape[:-1]
        if not axes.endswith("YX"):
            raise CapabilityNotSupportedError(
                f"{path} has axes {s0.axes!r}; voxgate reads series of 2-D (Y, X) pages"
            )
        lead_axes, lead_shape = axes[:-2], shape[:-2]
        z_axis = c_axis = None
        for i, (a, n) in enumerate(zip(lead_axes, lead_shape, strict=True)):
            if n == 1:
                continue
            if a == "C" and c_axis is None:
                c_axis = i
            elif a in _Z_AXES and z_axis is None:
                z_axis = i
            else:
                raise CapabilityNotSupportedError(
                    f"{path} has axes {s0.axes!r} of shape {s0.shape}: besides one z axis "
                    "(Z, or an unlabelled page sequence) and one channel axis C, every axis "
                    "must have length 1"
                )
        if samples > 1 and c_axis is not None:
            raise CapabilityNotSupportedError(
                f"{path} has both a channel axis and {samples} samples per pixel"
            )
        nc = lead_shape[c_axis] if c_axis is not None else samples
        decoders: dict[tuple[str, tuple[int, int]], Any] = {}
        levels: list[list[list[_Page]]] = []
        level_shapes: list[tuple[int, int, int]] = []
        first = None
        for k, level in enumerate(s0.levels or [s0]):
            lshape = tuple(int(n) for n in level.shape)
            if samples > 1:
                lshape = lshape[:-1]
            lead = lshape[:-2]
            if len(lead) != len(lead_shape):
                raise CapabilityNotSupportedError(
                    f"pyramid level {k} of {path} has shape {level.shape}, level 0 "
                    f"{s0.shape}: voxgate reads levels that keep level 0's axes"
                )
            frames = list(level.pages)
            if len(frames) != int(np.prod(lead, dtype=np.int64)):
                raise CorruptChunkError(
                    f"{path} announces {int(np.prod(lead))} pages at level {k} but holds "
                    f"{len(frames)}", chunk=path
                )
            nz = lead[z_axis] if z_axis is not None else 1
            # the flat page index of each (channel, z), channel by channel
            wanted = [0]
            if lead:
                grid = [np.zeros(1, dtype=np.int64)] * len(lead)
                cz = np.indices((1 if samples > 1 else nc, nz)).reshape(2, -1)
                if z_axis is not None:
                    grid[z_axis] = cz[1]
                if c_axis is not None:
                    grid[c_axis] = cz[0]
                wanted = np.ravel_multi_index(np.broadcast_arrays(*grid), lead).tolist()
            page_lists, level_first = _level_pages(tf, path, k, frames, wanted, nz, decoders)
            if first is None:
                first = level_first
            levels.append(page_lists)
            level_shapes.append((nz, int(lshape[-2]), int(lshape[-1])))
        assert first is not None
        own = _own_tag(first)
        vs = cls._voxel_size(tf, first, own, options)
        dtype = np.dtype(first.dtype)
        chunks = _chunks(own, level_shapes[0], levels[0][0][0])
        encoding = _compression_name(int(first.compression))
        names = _ome_channel_names(tf.ome_metadata, nc) if tf.is_ome and tf.ome_metadata \
            else None
    meta = cls._meta(dtype, level_shapes[0], chunks, vs, own, options, nc, encoding)
    scales = [meta.scales[0]]
    for k, f in enumerate(_level_factors(level_shapes)[1:], start=1):
        scales.append(Scale(
            k, Vec(*level_shapes[k]), _chunks({}, level_shapes[k], levels[k][0][0]),
            VoxelSize(vs.z * f[0], vs.y * f[1], vs.x * f[2], vs.unit),
            Vec(*(o // fi for o, fi in zip(meta.scales[0].offset, f, strict=True))),
            encoding, f"level {k}"))
    meta = replace(meta, scales=tuple(scales),
                   extra={"channel_names": names} if names is not None else {})
    return cls(location, meta, levels, mode, slices=False, decoders=decoders)


def _level_pages(tf: Any, path: str, k: int, frames: list[Any], wanted: list[int], nz: int,
                 decoders: dict[tuple[str, tuple[int, int]], Any]
                 ) -> tuple[list[list[_Page]], Any]:
    """The pages ``wanted`` (flat indices into the level's ``frames``, channel by channel, ``nz``
    per channel) of pyramid level ``k``, each checked against the level's first (the same
    shape and dtype, bit depth, layout, segment sizes) and its decoder put in ``decoders``.

    The pages are read in bulk (:func:`.ifds.scan_pages`: a page written like the one before
    it costs no tifffile parse); any frame without a directory of its own (a virtual frame) is
    parsed whole by tifffile, as every page used to be."""
    for flat in wanted:
        if frames[flat] is None:
            raise CorruptChunkError(f"page {flat} of level {k} of {path} is missing",
                                    chunk=path)
    level_first = frames[wanted[0]].aspage()  # the whole page: tags and their offsets

    def whole(flat: int, page: Any) -> _Page:
        if page.shape != level_first.shape or page.dtype != level_first.dtype:
            raise InvalidRequestError(
                f"page {page.index} of {path} has shape {page.shape} and dtype "
                f"{page.dtype}, page {level_first.index} has "
                f"{level_first.shape} and {level_first.dtype}; every page of a "
                "volume must have the same shape and dtype"
            )
        return _page_info(tf, page, path, page.index, (k, flat))

    ifds = [0] * len(frames)
    numbers: list[Any] = [0] * len(frames)
    for flat in wanted:
        frame = frames[flat]
        if not getattr(frame, "is_virtual", False):
            ifds[flat] = int(getattr(frame, "offset", 0) or 0)
        numbers[flat] = frame.index
    scanned, sources = scan_pages(tf, path, ifds, numbers, whole)
    page_lists: list[list[_Page]] = []
    for start in range(0, len(wanted), nz):
        row = []
        for flat in wanted[start:start + nz]:
            info, source = scanned[flat], sources[flat]
            if info is None:  # no directory of its own: parsed whole, as before
                source = frames[flat].aspage()
                info = whole(flat, source)
            decoders[(path, (k, flat))] = source.decode
            row.append(info)
        page_lists.append(row)
    return page_lists, level_first


def _level_factors(shapes: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """The cumulative (z, y, x) downsampling factor of each pyramid level from the shapes alone.

    A TIFF pyramid states no factors, and the ratio of a coarse level's extent to level 0's
    drifts from the factor at odd extents (53 halved four times, rounding up, is 4: 53 / 4 is
    13, not 16).  So each level's factor is inferred from the level before it: an axis that
    keeps its extent was not downsampled (1); one that shrank takes, of the steps ``f`` that
    give its extent rounding up or down, the one it took at the level before (pyramids keep
    their step), else the one nearest the ratio of the level's longest shrinking axis (the
    least blurred by rounding); the steps multiply.
    """
    out = [(1, 1, 1)]
    last = (1, 1, 1)
    for prev, cur in itertools.pairwise(shapes):
        shrunk = [(p, n) for p, n in zip(prev, cur, strict=True) if 0 < n < p]
        longest = max(shrunk, default=(1, 1))
        ref = max(1, round(longest[0] / longest[1]))
        step = []
        for p, n, before in zip(prev, cur, last, strict=True):
            if n <= 0 or n >= p:
                step.append(1)
                continue
            # the f with floor(p / f) <= n <= ceil(p / f)
            hi = p if n == 1 else (p - 1) // (n - 1)
            fits = [f for f in range(max(2, p // (n + 1) + 1), hi + 1)
                    if p // f <= n <= -(-p // f)]
            if before in fits:
                step.append(before)
            elif fits:
                step.append(min(fits, key=lambda f: (abs(f - ref), f)))
            else:
                step.append(max(1, round(p / n)))
        last = (step[0], step[1], step[2])
        z, y, x = (a * b for a, b in zip(out[-1], last, strict=True))
        out.append((z, y, x))
    return out


def numbering_gaps(names: list[str]) -> str | None:
    """The names a directory's slices lack in their numbering (``"s0007.tif, s0008.tif"``,
    up to a few), or None: names alike but for one number (``s0001.tif``, ``s0002.tif``, ...)
    counting by their smallest step (1, or 10 for every tenth slice) must run without a hole.
    Names not alike in that way (no number, or several numbers varying) are not checked."""
    if len(names) < 3:
        return None
    parts = [re.split(r"(\d+)", n) for n in names]
    if len({len(p) for p in parts}) != 1 or len(parts[0]) < 2:
        return None
    varying = [i for i in range(1, len(parts[0]), 2) if len({p[i] for p in parts}) > 1]
    fixed = [i for i in range(0, len(parts[0])) if i not in varying]
    if len(varying) != 1 or any(len({p[i].lower() for p in parts}) != 1 for i in fixed
                                if i % 2 == 0):
        return None
    at = varying[0]
    numbers = sorted(int(p[at]) for p in parts)
    steps = [b - a for a, b in itertools.pairwise(numbers)]
    step = min(steps)
    if step <= 0 or any(s % step for s in steps) or max(steps) == step:
        return None
    have = set(numbers)
    lacking = [k for k in range(numbers[0], numbers[-1], step) if k not in have]
    width = len(parts[0][at]) if all(len(p[at]) == len(parts[0][at]) for p in parts) else 0
    template = parts[0]
    shown = ["".join(template[:at]) + f"{k:0{width}d}" + "".join(template[at + 1:])
             for k in lacking[:5]]
    return ", ".join(shown) + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else "")


def open_slices(
    cls: type[TiffRemote], location: str, path: str, mode: str, options: dict[str, Any]
) -> TiffRemote:
    """A directory of 2-D TIFF slices (``TiffRemote._open_slices``).

    The first slice is parsed whole by tifffile; every other slice written like it is read raw
    and compared with it (:class:`.slices.SliceTemplate`), and any other is parsed whole and
    checked here, as every slice used to be."""
    tifffile = _tifffile()
    files = cls._slice_files(path)
    if not files:
        raise RemoteNotFoundError(f"{location!r} is a directory without .tif/.tiff slices")
    gaps = options.get("gaps")
    if gaps not in (None, "refuse", "close"):
        raise InvalidRequestError(
            f"gaps must be 'refuse' (a number missing from the slices' names is an error) or "
            f"'close' (the files are the slices, in order), got {gaps!r}")
    if gaps != "close":
        missing = numbering_gaps([os.path.basename(f) for f in files])
        if missing:
            raise InvalidRequestError(
                f"the slices of {location!r} are numbered with gaps: {missing} missing. Each "
                "file is one z slice, so every slice after a gap would sit one z too low; add "
                "the missing slices, or open with gaps='close' to take the files as they are")
    pages: list[_Page] = []
    decoders: dict[tuple[str, tuple[int, int]], Any] = {}
    first_shape = first_dtype = None
    own: dict[str, Any] = {}
    vs_first = None
    samples = 1
    template: SliceTemplate | None = None
    for f in files:
        if template is not None:
            info = template.scan(f)
            if info is not None:
                pages.append(info)
                decoders[(f, (0, 0))] = template.decode
                continue
        with _parsing(f), tifffile.TiffFile(f) as tf:
            page = tf.pages.first
            if len(tf.pages) != 1:
                raise InvalidRequestError(
                    f"{f} holds {len(tf.pages)} pages; a directory of slices needs one "
                    "2-D page per file (open a multipage file on its own)"
                )
            if first_shape is None:
                first_shape, first_dtype = page.shape, page.dtype
                own = _own_tag(page)
                vs_first = cls._voxel_size(tf, page, own, options)
                samples = int(page.samplesperpixel)
            elif page.shape != first_shape or page.dtype != first_dtype:
                raise InvalidRequestError(
                    f"slice {os.path.basename(f)} of {path} has shape {page.shape} and "
                    f"dtype {page.dtype} but {os.path.basename(files[0])} has "
                    f"{first_shape} and {first_dtype}; every slice must have the same "
                    "shape and dtype"
                )
            pages.append(_page_info(tf, page, f, 0))
            decoders[(f, (0, 0))] = page.decode
            if len(pages) == 1:
                template = SliceTemplate.of(f, pages[0], page)
    assert first_shape is not None and vs_first is not None
    dtype = np.dtype(first_dtype)
    shape = (len(files), int(first_shape[0]), int(first_shape[1]))
    chunks = _chunks(own, shape, pages[0])
    meta = cls._meta(dtype, shape, chunks, vs_first, own, options, samples,
                     _compression_name(pages[0].compression))
    return cls(location, meta, [[pages]], mode, slices=True, decoders=decoders)
