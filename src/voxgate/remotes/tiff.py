"""``tiff://``: multipage TIFF, BigTIFF, OME-TIFF, or a directory of 2-D TIFF slices (tifffile).

A location is either

- one TIFF file (``.tif``, ``.tiff``, ``.btf``, ``.tf8``, ``.ome.tif``): its first series, whose
  pages are the z slices (an OME-TIFF or ImageJ hyperstack may also have a channel axis; other
  axes must have length 1).  OME ``PhysicalSizeX/Y/Z`` (with their units) or ImageJ ``spacing``
  and resolution tags give the voxel size;
- a directory of 2-D TIFF files, one per z slice, in natural order (``slice2.tif`` before
  ``slice10.tif``); every slice must have the first one's shape and dtype.

Reads are lazy and bounded: only the pages a box crosses are touched, and of each page only the
strips or tiles the box crosses.  Uncompressed segments are read by their byte ranges (only the
rows needed), compressed ones decoded one at a time with tifffile's codecs.  voxgate keeps its
own table of segment offsets (read from the pages once), so no page's data is ever loaded whole.

``voxgate.create("tiff://x.tif")`` writes a tiled BigTIFF with OME-XML metadata (physical sizes in
the voxel size's unit) and a private tag (65000, JSON) holding what OME has no place for (kind,
offset).  ``compression="zlib"`` (or "lzma"; others when imagecodecs is installed) compresses
the tiles.  Writes go tile by tile: an uncompressed tile is rewritten in place; a compressed one
is appended at the end of the file and its offset and byte count entries then updated in place
(the file is locked while doing so), so a crash leaves the old tile in force.  A location
without a TIFF suffix is created as a directory of slices (``00000.tif``, ...), each slice
rewritten whole to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    MissingDependencyError,
    RemoteExistsError,
    RemoteNotFoundError,
)
from ..geometry import Box, Vec, VoxelSize
from ..meta import Kind, Scale, VolumeMeta
from ..storage import UNITS_NM, is_local, local_path
from .base import Capability, Remote, check_options

__all__ = ["TIFF_SUFFIXES", "TiffRemote", "natural_key"]

#: suffixes of single TIFF files (anything else is a directory of slices)
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
#: the private tag voxgate writes its own metadata to (JSON: kind, offset, voxel size, unit)
VOXGATE_TAG = 65000
#: compressions ``create`` accepts without imagecodecs (tifffile's own zlib and lzma codecs)
_COMPRESSIONS = ("none", "zlib", "lzma", "zstd", "lzw", "deflate")
_SEGMENT_LOCKS = [threading.Lock() for _ in range(64)]
_Z_AXES = "ZQIT"  # axes that can hold the z slices (T/I/Q: unlabelled image sequences)


def _tifffile() -> Any:
    try:
        import tifffile
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise MissingDependencyError(
            "tiff:// needs the tifffile package: pip install tifffile"
        ) from exc
    return tifffile


def natural_key(name: str) -> list[Any]:
    """Sort key that puts ``s2.tif`` before ``s10.tif``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _guess_kind(dtype: np.dtype[Any]) -> Kind:
    return "segmentation" if dtype.kind in "ui" and dtype.itemsize >= 4 else "image"


@dataclass
class _Page:
    """One 2-D page of one file: where its segments (strips or tiles) are, how to decode them."""

    path: str
    index: int  # page index inside its file (of its pyramid level's pages)
    key: tuple[int, int]  # (pyramid level, position in the level's pages): finds its decoder
    offsets: np.ndarray  # uint64, one per segment
    bytecounts: np.ndarray
    seg_shape: tuple[int, int]  # rows, columns of one segment (strip: rowsperstrip x width)
    grid_x: int  # segments per row of segments
    tiled: bool
    compression: int
    predictor: int
    raw_dtype: np.dtype[Any]  # dtype with the file's byte order
    samples: int
    offsets_at: int  # file offset of the offsets entries (for in-place updates), -1 if unknown
    bytecounts_at: int
    offset_fmt: np.dtype[Any]
    bytecount_fmt: np.dtype[Any]


class _File:
    """An open file (one descriptor, pread from many threads)."""

    def __init__(self, path: str, writable: bool) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        self.lock = threading.Lock()

    def pread(self, n: int, at: int, what: str) -> bytes:
        data = os.pread(self.fd, n, at)
        if len(data) != n:
            raise CorruptChunkError(
                f"{what} of {self.path} is truncated: {n} bytes expected at offset {at}, "
                f"{len(data)} there (the file ends early)",
                chunk=what + f" of {self.path}",
            )
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _page_info(tf: Any, page: Any, path: str, index: int,
               key: tuple[int, int] = (0, 0)) -> _Page:
    if page.bitspersample not in (8, 16, 32, 64) or page.dtype is None:
        raise CapabilityNotSupportedError(
            f"page {index} of {path} has {page.bitspersample}-bit samples; voxgate reads TIFFs "
            "of 8, 16, 32 or 64-bit samples"
        )
    if page.samplesperpixel > 1 and page.planarconfig != 1:
        raise CapabilityNotSupportedError(
            f"page {index} of {path} stores its {page.samplesperpixel} samples in separate "
            "planes; voxgate reads interleaved (contiguous) samples"
        )
    if page.is_tiled:
        if page.tiledepth > 1:
            raise CapabilityNotSupportedError(f"page {index} of {path} has 3-D tiles")
        seg = (int(page.tilelength), int(page.tilewidth))
        grid_x = -(-int(page.imagewidth) // seg[1])
        off_tag, cnt_tag = page.tags.get("TileOffsets"), page.tags.get("TileByteCounts")
    else:
        seg = (int(min(page.rowsperstrip, page.imagelength)), int(page.imagewidth))
        grid_x = 1
        off_tag, cnt_tag = page.tags.get("StripOffsets"), page.tags.get("StripByteCounts")
    fmt = {3: "H", 4: "I", 16: "Q"}
    order = tf.byteorder
    return _Page(
        path=path,
        index=index,
        key=key,
        offsets=np.array(page.dataoffsets, dtype=np.uint64),
        bytecounts=np.array(page.databytecounts, dtype=np.uint64),
        seg_shape=seg,
        grid_x=grid_x,
        tiled=bool(page.is_tiled),
        compression=int(page.compression),
        predictor=int(page.predictor),
        raw_dtype=np.dtype(page.dtype).newbyteorder(order),
        samples=int(page.samplesperpixel),
        offsets_at=int(off_tag.valueoffset) if off_tag is not None else -1,
        bytecounts_at=int(cnt_tag.valueoffset) if cnt_tag is not None else -1,
        offset_fmt=np.dtype(order + fmt.get(int(off_tag.dtype), "Q")) if off_tag else
        np.dtype("Q"),
        bytecount_fmt=np.dtype(order + fmt.get(int(cnt_tag.dtype), "Q")) if cnt_tag else
        np.dtype("Q"),
    )


def _unit_nm(unit: object, default: float = 1000.0) -> float:
    if not isinstance(unit, str) or not unit.strip():
        return default
    u = unit.strip().replace("\\u00B5", "µ")
    return float(UNITS_NM.get(u, UNITS_NM.get(u.lower(), default)))


def _ome_voxel_size(xml: str) -> tuple[float, float, float] | None:
    """(z, y, x) in nm from the first Pixels element of OME-XML; missing sizes count as 1 µm
    (OME's default unit) only when another one is given."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
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
        out.append(float(v) * _unit_nm(pixels.get(f"PhysicalSize{ax}Unit"), 1000.0))
    if not found:
        return None
    known = [v for v in out if v is not None]
    z, y, x = (v if v is not None else known[-1] for v in out)
    return z, y, x


def _imagej_voxel_size(tf: Any, page: Any) -> tuple[float, float, float] | None:
    ij = tf.imagej_metadata
    if not ij:
        return None
    f = _unit_nm(ij.get("unit"), 1000.0)
    sizes = []
    for tag in ("YResolution", "XResolution"):
        t = page.tags.get(tag)
        if t is None:
            return None
        num, den = t.value
        sizes.append(den / num * f if num else 1.0)
    z = float(ij.get("spacing", 1.0)) * f
    return z, sizes[0], sizes[1]


class TiffRemote(Remote):
    scheme = "tiff"
    open_options = ("voxel_size", "kind")
    create_options = ("compression", "layout")

    def __init__(
        self,
        location: str,
        meta: VolumeMeta,
        pages: list[list[list[_Page]]],  # [scale][channel][z]
        mode: str,
        slices: bool,
        decoders: dict[tuple[str, tuple[int, int]], Any] | None = None,
    ) -> None:
        self.location = location
        self.meta = meta
        self.mode = mode
        self.url = f"tiff://{location}"
        self._pages = pages
        self._slices = slices
        self._decoders = decoders if decoders is not None else {}
        self._files: dict[str, _File] = {}
        self._files_lock = threading.Lock()
        self._slice_locks: dict[int, threading.Lock] = {}

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def _path(cls, location: str) -> str:
        if not is_local(location):
            raise CapabilityNotSupportedError(
                f"tiff:// reads local files only, not {location!r}; copy the file to a local "
                "disk first"
            )
        return local_path(location)

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> TiffRemote:
        check_options("tiff://", options, cls.open_options)
        path = cls._path(location)
        if os.path.isdir(path):
            return cls._open_slices(location, path, mode, options)
        if not os.path.isfile(path):
            raise RemoteNotFoundError(f"no TIFF file or directory of TIFF slices at {location!r}")
        return cls._open_file(location, path, mode, options)

    @staticmethod
    def _slice_files(path: str) -> list[str]:
        names = [n for n in os.listdir(path) if n.lower().endswith(TIFF_SUFFIXES)
                 and not n.startswith(".")]
        return [os.path.join(path, n) for n in sorted(names, key=natural_key)]

    @classmethod
    def _open_file(
        cls, location: str, path: str, mode: str, options: dict[str, Any]
    ) -> TiffRemote:
        tifffile = _tifffile()
        try:
            tf = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, ValueError, OSError) as exc:
            raise CorruptChunkError(f"{path} is not a readable TIFF file: {exc}",
                                    chunk=path) from exc
        with tf:
            series = tf.series
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
                page_lists: list[list[_Page]] = []
                level_first = None
                for c in range(1 if samples > 1 else nc):
                    row = []
                    for z in range(nz):
                        idx = [0] * len(lead)
                        if z_axis is not None:
                            idx[z_axis] = z
                        if c_axis is not None:
                            idx[c_axis] = c
                        flat = int(np.ravel_multi_index(idx, lead)) if lead else 0
                        frame = frames[flat]
                        if frame is None:
                            raise CorruptChunkError(f"page {flat} of level {k} of {path} is "
                                                    "missing", chunk=path)
                        page = frame.aspage()  # the whole page: tags and their offsets
                        if level_first is None:
                            level_first = page
                        elif page.shape != level_first.shape or page.dtype != level_first.dtype:
                            raise InvalidRequestError(
                                f"page {page.index} of {path} has shape {page.shape} and dtype "
                                f"{page.dtype}, page {level_first.index} has "
                                f"{level_first.shape} and {level_first.dtype}; every page of a "
                                "volume must have the same shape and dtype"
                            )
                        decoders[(path, (k, flat))] = page.decode
                        row.append(_page_info(tf, page, path, page.index, (k, flat)))
                    page_lists.append(row)
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
        meta = cls._meta(dtype, level_shapes[0], chunks, vs, own, options, nc, encoding)
        scales = [meta.scales[0]]
        for k in range(1, len(levels)):
            f = [max(1, round(a / b))
                 for a, b in zip(level_shapes[0], level_shapes[k], strict=True)]
            scales.append(Scale(
                k, Vec(*level_shapes[k]), _chunks({}, level_shapes[k], levels[k][0][0]),
                VoxelSize(vs.z * f[0], vs.y * f[1], vs.x * f[2], vs.unit),
                Vec(*(o // fi for o, fi in zip(meta.scales[0].offset, f, strict=True))),
                encoding, f"level {k}"))
        meta = replace(meta, scales=tuple(scales))
        return cls(location, meta, levels, mode, slices=False, decoders=decoders)

    @classmethod
    def _open_slices(
        cls, location: str, path: str, mode: str, options: dict[str, Any]
    ) -> TiffRemote:
        tifffile = _tifffile()
        files = cls._slice_files(path)
        if not files:
            raise RemoteNotFoundError(f"{location!r} is a directory without .tif/.tiff slices")
        pages: list[_Page] = []
        decoders: dict[tuple[str, tuple[int, int]], Any] = {}
        first_shape = first_dtype = None
        own: dict[str, Any] = {}
        vs_first = None
        samples = 1
        for f in files:
            try:
                with tifffile.TiffFile(f) as tf:
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
            except (tifffile.TiffFileError, ValueError, OSError) as exc:
                if isinstance(exc, InvalidRequestError):
                    raise
                raise CorruptChunkError(f"{f} is not a readable TIFF file: {exc}",
                                        chunk=f) from exc
        assert first_shape is not None and vs_first is not None
        dtype = np.dtype(first_dtype)
        shape = (len(files), int(first_shape[0]), int(first_shape[1]))
        chunks = _chunks(own, shape, pages[0])
        meta = cls._meta(dtype, shape, chunks, vs_first, own, options, samples,
                         _compression_name(pages[0].compression))
        return cls(location, meta, [[pages]], mode, slices=True, decoders=decoders)

    @staticmethod
    def _voxel_size(tf: Any, page: Any, own: dict[str, Any], options: dict[str, Any]) -> VoxelSize:
        if options.get("voxel_size") is not None:
            return VoxelSize.of(options["voxel_size"])
        if "voxel_size" in own:
            return VoxelSize.of(own["voxel_size"], own.get("unit", "nm"))
        found = None
        if tf.is_ome and tf.ome_metadata:
            found = _ome_voxel_size(tf.ome_metadata)
        if found is None and tf.is_imagej:
            found = _imagej_voxel_size(tf, page)
        if found is None:
            return VoxelSize(1.0, 1.0, 1.0)
        z, y, x = (round(v, 6) for v in found)
        return VoxelSize(z, y, x)

    @staticmethod
    def _meta(
        dtype: np.dtype[Any],
        shape: tuple[int, int, int],
        chunks: Vec,
        vs: VoxelSize,
        own: dict[str, Any],
        options: dict[str, Any],
        channels: int,
        encoding: str | None,
    ) -> VolumeMeta:
        kind = options.get("kind") or own.get("kind") or _guess_kind(dtype)
        if kind not in ("image", "segmentation"):
            raise InvalidRequestError(f"kind must be 'image' or 'segmentation', got {kind!r}")
        offset = Vec.of(own.get("offset", (0, 0, 0)), "offset")
        scale = Scale(0, Vec(*shape), chunks, vs, offset, encoding)
        return VolumeMeta(dtype, (scale,), kind, channels, 0)

    # -- creating -------------------------------------------------------------------------------
    @classmethod
    def exists(cls, location: str) -> bool:
        path = cls._path(location)
        return os.path.isfile(path) or (os.path.isdir(path) and bool(cls._slice_files(path)))

    @classmethod
    def create(
        cls,
        location: str,
        meta: VolumeMeta,
        *,
        exist_ok: bool = False,
        compression: str = "none",
        layout: str | None = None,
        **options: Any,
    ) -> TiffRemote:
        check_options("tiff://", options, cls.create_options)
        tifffile = _tifffile()
        path = cls._path(location)
        if layout is None:
            layout = "file" if path.lower().endswith(TIFF_SUFFIXES) else "slices"
        if layout not in ("file", "slices"):
            raise InvalidRequestError(
                f"layout must be 'file' (one BigTIFF) or 'slices' (a directory of 2-D TIFFs), "
                f"got {layout!r}"
            )
        comp = None if compression in ("none", None) else compression
        if comp is not None and comp not in _COMPRESSIONS:
            raise InvalidRequestError(
                f"compression must be one of {', '.join(_COMPRESSIONS)}, got {compression!r}"
            )
        if len(meta.scales) > 1:
            raise CapabilityNotSupportedError(
                "tiff:// holds one scale; create it with num_scales=1, or copy one scale into "
                "it (voxgate.copy(..., scales=[0]), voxgate cp --scales 0)"
            )
        if meta.fill_value != 0:
            raise InvalidRequestError(
                f"TIFF has no fill value; cannot create a volume with fill value "
                f"{meta.fill_value!r}"
            )
        if cls.exists(location):
            if not exist_ok:
                raise RemoteExistsError(
                    f"a TIFF already exists at {location!r} (pass exist_ok=True to open it)"
                )
            existing = cls.open(location, mode="r+")
            if existing.meta.dtype != meta.dtype or existing.meta.shape != meta.shape:
                raise RemoteExistsError(
                    f"{location!r} already holds a {existing.meta.dtype.name} volume of shape "
                    f"{tuple(existing.meta.shape)}, not the {meta.dtype.name} "
                    f"{tuple(meta.shape)} asked for"
                )
            return existing
        sc = meta.scales[0]
        own = {
            "kind": meta.kind,
            "offset": list(sc.offset),
            "voxel_size": list(sc.voxel_size.zyx()),
            "unit": sc.voxel_size.unit,
            "chunks": list(sc.chunks),
        }
        tile = tuple(max(16, -(-int(n) // 16) * 16) for n in sc.chunks[1:])
        nz, ny, nx = (int(n) for n in sc.shape)
        channels = meta.num_channels
        extratags = [(VOXGATE_TAG, "s", 0, json.dumps(own), True)]
        if layout == "file":
            tmp = path + ".voxgate-tmp"
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
            nt = -(-ny // tile[0]) * -(-nx // tile[1])
            unit = sc.voxel_size.unit
            ome_unit = "µm" if unit in ("um", "µm", "micrometer") else unit
            md: dict[str, Any] = {
                "axes": "CZYX" if channels > 1 else "ZYX",
                "PhysicalSizeX": sc.voxel_size.x, "PhysicalSizeXUnit": ome_unit,
                "PhysicalSizeY": sc.voxel_size.y, "PhysicalSizeYUnit": ome_unit,
                "PhysicalSizeZ": sc.voxel_size.z, "PhysicalSizeZUnit": ome_unit,
            }
            shape = (channels, nz, ny, nx) if channels > 1 else (nz, ny, nx)
            # OME has no 64-bit integers: those files carry the voxel size in voxgate's tag only
            ome = meta.dtype.name not in ("uint64", "int64")
            if not ome:
                md = {"axes": md["axes"]}
            with tifffile.TiffWriter(tmp, bigtiff=True, ome=ome) as tw:
                tw.write(
                    _zero_tiles(nt * nz * channels, tile, meta.dtype),
                    shape=shape, dtype=meta.dtype, tile=tile, compression=comp,
                    photometric="minisblack", metadata=md, extratags=extratags,
                )
            os.replace(tmp, path)
        else:
            os.makedirs(path, exist_ok=True)
            if channels > 1:
                raise CapabilityNotSupportedError(
                    "a directory of slices holds one channel; create a single .tif file for "
                    f"{channels} channels"
                )
            width = max(5, len(str(nz - 1)))
            zero = np.zeros((ny, nx), dtype=meta.dtype)
            for z in range(nz):
                name = os.path.join(path, f"{z:0{width}d}.tif")
                _write_slice(name, zero, tile, comp, extratags)
        return cls.open(location, mode="r+")

    # -- data -----------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.WRITE}) if self.mode == "r+" else frozenset()

    def write_grid(self, scale: int = 0) -> Vec:
        if self._slices:
            sc = self.meta.scale(0)
            return Vec(1, sc.shape[1], sc.shape[2])
        return Vec(1, *self._pages[scale][0][0].seg_shape)

    def _file(self, path: str) -> _File:
        with self._files_lock:
            f = self._files.get(path)
            if f is None:
                f = self._files[path] = _File(path, self.mode == "r+")
            return f

    def close(self) -> None:
        with self._files_lock:
            for f in self._files.values():
                f.close()
            self._files.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"] = {}
        state["_files_lock"] = None
        state["_slice_locks"] = {}
        state["_decoders"] = {}  # closures over tifffile pages: rebuilt after unpickling
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._files_lock = threading.Lock()

    def _segments(self, page: _Page, y0: int, y1: int, x0: int, x1: int
                  ) -> Iterator[tuple[int, int, int]]:
        """(segment index, segment row start, segment column start) of segments touching the
        rows [y0, y1) and columns [x0, x1) of ``page``."""
        sh, sw = page.seg_shape
        for gy in range(y0 // sh, -(-y1 // sh)):
            for gx in range(x0 // sw, -(-x1 // sw)):
                yield gy * page.grid_x + gx, gy * sh, gx * sw

    def _decode(self, page: _Page, seg: int, rows: tuple[int, int]) -> np.ndarray:
        """Rows ``rows`` (segment-relative) of segment ``seg``, shape (rows, width, samples)."""
        f = self._file(page.path)
        what = f"segment {seg} of page {page.index}"
        sw = page.seg_shape[1]
        off, n = int(page.offsets[seg]), int(page.bytecounts[seg])
        rb = sw * page.samples * page.raw_dtype.itemsize
        if off == 0 or n == 0:
            return np.zeros((rows[1] - rows[0], sw, page.samples), page.raw_dtype.newbyteorder("="))
        if page.compression == 1:
            data = f.pread((rows[1] - rows[0]) * rb, off + rows[0] * rb, what)
            arr = np.frombuffer(data, page.raw_dtype).reshape(rows[1] - rows[0], sw, page.samples)
            return arr.astype(page.raw_dtype.newbyteorder("="), copy=False)
        data = f.pread(n, off, what)
        try:
            decoded = self._decoder(page)(data, seg)[0]
        except Exception as exc:
            raise CorruptChunkError(
                f"{what} of {page.path} does not decode ({_compression_name(page.compression)}):"
                f" {exc}", chunk=f"{what} of {page.path}"
            ) from exc
        if decoded is None:
            raise CorruptChunkError(f"{what} of {page.path} does not decode",
                                    chunk=f"{what} of {page.path}")
        arr = np.asarray(decoded).reshape(-1, sw, page.samples)[rows[0]:rows[1]]
        return arr.astype(page.raw_dtype.newbyteorder("="), copy=False)

    def _decoder(self, page: _Page) -> Any:
        """tifffile's decode function of the page (made at open, or again after unpickling)."""
        fn = self._decoders.get((page.path, page.key))
        if fn is None:
            tifffile = _tifffile()
            with tifffile.TiffFile(page.path) as tf:
                if self._slices:
                    self._decoders[(page.path, (0, 0))] = tf.pages.first.decode
                else:
                    for k, level in enumerate(tf.series[0].levels or [tf.series[0]]):
                        for i, frame in enumerate(level.pages):
                            if frame is not None:
                                self._decoders[(page.path, (k, i))] = frame.aspage().decode
            fn = self._decoders[(page.path, page.key)]
        return fn

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        sc = self.meta.scale(scale)
        local = box.translate([-o for o in sc.offset])
        (z0, y0, x0), (z1, y1, x1) = local.start, local.stop
        nc = self.meta.num_channels
        per_page_channels = len(self._pages[scale]) == 1 and nc > 1  # samples per pixel
        out = np.empty((nc, z1 - z0, y1 - y0, x1 - x0), dtype=self.meta.dtype)
        for c, row in enumerate(self._pages[scale]):
            for z in range(z0, z1):
                page = row[z]
                for seg, ry, rx in self._segments(page, y0, y1, x0, x1):
                    sh, sw = page.seg_shape
                    a, b = max(y0, ry), min(y1, ry + sh)
                    arr = self._decode(page, seg, (a - ry, b - ry))
                    cx0, cx1 = max(x0, rx), min(x1, rx + sw)
                    part = arr[:, cx0 - rx: cx1 - rx]
                    if per_page_channels:
                        out[:, z - z0, a - y0: b - y0, cx0 - x0: cx1 - x0] = np.moveaxis(
                            part, -1, 0)
                    else:
                        out[c, z - z0, a - y0: b - y0, cx0 - x0: cx1 - x0] = part[..., 0]
        return out if nc > 1 else out[0]

    # -- writes ---------------------------------------------------------------------------------
    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._check_writable()
        sc = self.meta.scale(scale)
        start = [a - o for a, o in zip(box.start, sc.offset, strict=True)]
        stop = [b - o for b, o in zip(box.stop, sc.offset, strict=True)]
        arr = array if self.meta.num_channels > 1 else array[np.newaxis]
        if self._slices:
            self._write_slices(start, stop, arr[0])
            return
        (z0, y0, x0), (z1, y1, x1) = start, stop
        for c, row in enumerate(self._pages[scale]):
            for z in range(z0, z1):
                page = row[z]
                for seg, ry, rx in self._segments(page, y0, y1, x0, x1):
                    self._write_segment(page, seg, ry, rx, arr[c, z - z0], y0, y1, x0, x1,
                                        scale)

    def _write_segment(self, page: _Page, seg: int, ry: int, rx: int, plane: np.ndarray,
                       y0: int, y1: int, x0: int, x1: int, scale: int = 0) -> None:
        sh, sw = page.seg_shape
        if page.predictor != 1 or page.samples != 1:
            raise CapabilityNotSupportedError(
                f"{page.path} uses a predictor or several samples per pixel; voxgate writes "
                "TIFFs without predictor, one sample per pixel (copy it to a new tiff:// first)"
            )
        sc = self.meta.scale(scale)
        ny, nx = int(sc.shape[1]), int(sc.shape[2])
        a, b = max(y0, ry), min(y1, ry + sh)
        cx0, cx1 = max(x0, rx), min(x1, rx + sw)
        covers = a == ry and (b == ry + sh or b == ny) and cx0 == rx and (
            cx1 == rx + sw or cx1 == nx)
        # writes of one tile from several threads (unaligned boxes) take turns
        with _SEGMENT_LOCKS[hash((page.path, page.key, seg)) % len(_SEGMENT_LOCKS)]:
            if covers:
                tile = np.zeros((sh, sw), dtype=self.meta.dtype)
            else:
                tile = self._decode(page, seg, (0, sh))[..., 0].copy()
            tile[a - ry: b - ry, cx0 - rx: cx1 - rx] = plane[a - y0: b - y0, cx0 - x0: cx1 - x0]
            self._store_segment(page, seg, tile)

    def _store_segment(self, page: _Page, seg: int, tile: np.ndarray) -> None:
        f = self._file(page.path)
        raw = tile.astype(page.raw_dtype, copy=False)
        if page.compression == 1:
            os.pwrite(f.fd, raw.tobytes(), int(page.offsets[seg]))
            return
        tifffile = _tifffile()
        encode = tifffile.TIFF.COMPRESSORS[page.compression]
        data = bytes(encode(raw))
        if len(data) >= 1 << (8 * page.bytecount_fmt.itemsize):
            raise CapabilityNotSupportedError(
                f"{page.path}: the new tile does not fit the file's byte count entries"
            )
        with f.lock:
            fcntl.flock(f.fd, fcntl.LOCK_EX)
            try:
                end = os.lseek(f.fd, 0, os.SEEK_END)
                end += (-end) % 2  # TIFF data starts on a word boundary
                os.pwrite(f.fd, data, end)
                os.fsync(f.fd)
                os.pwrite(f.fd, np.array([len(data)], page.bytecount_fmt).tobytes(),
                          page.bytecounts_at + seg * page.bytecount_fmt.itemsize)
                os.pwrite(f.fd, np.array([end], page.offset_fmt).tobytes(),
                          page.offsets_at + seg * page.offset_fmt.itemsize)
            finally:
                fcntl.flock(f.fd, fcntl.LOCK_UN)
            page.offsets[seg] = end
            page.bytecounts[seg] = len(data)

    def _write_slices(self, start: Sequence[int], stop: Sequence[int], arr: np.ndarray) -> None:
        (z0, y0, x0), (z1, y1, x1) = start, stop
        sc = self.meta.scale(0)
        whole = (y0, x0) == (0, 0) and (y1, x1) == (int(sc.shape[1]), int(sc.shape[2]))
        tifffile = _tifffile()
        for z in range(z0, z1):
            page = self._pages[0][0][z]
            with self._files_lock:
                lock = self._slice_locks.setdefault(z, threading.Lock())
            with lock:
                if whole:
                    plane = arr[z - z0]
                else:
                    plane = self.read(Box(Vec(z, 0, 0) + sc.offset,
                                          Vec(z + 1, *sc.shape[1:]) + sc.offset))[0]
                    plane[y0:y1, x0:x1] = arr[z - z0]
                with tifffile.TiffFile(page.path) as tf:
                    p = tf.pages.first
                    own = _own_tag(p)
                    tile = (p.tilelength, p.tilewidth) if p.is_tiled else None
                    comp = None if p.compression == 1 else _compression_name(int(p.compression))
                extratags = [(VOXGATE_TAG, "s", 0, json.dumps(own), True)] if own else []
                _write_slice(page.path, np.ascontiguousarray(plane), tile, comp, extratags)
                with self._files_lock:
                    old = self._files.pop(page.path, None)
                if old is not None:
                    old.close()
                self._decoders.pop((page.path, (0, 0)), None)
                with tifffile.TiffFile(page.path) as tf:
                    self._pages[0][0][z] = _page_info(tf, tf.pages.first, page.path, 0)
                    self._decoders[(page.path, (0, 0))] = tf.pages.first.decode


def _chunks(own: dict[str, Any], shape: Sequence[int], page: _Page) -> Vec:
    """The block shape reads and copies should use: the chunks voxgate was created with, else
    up to 64 pages of whole segments (strips or tiles), about 256 x 256 voxels across."""
    given = own.get("chunks")
    if isinstance(given, list) and len(given) == 3 and all(
        isinstance(n, int) and n > 0 for n in given
    ):
        return Vec(*given)
    sh, sw = page.seg_shape
    if page.tiled or sw < 256:  # tiles (or narrow strips): a whole number of segments
        ny, nx = sh * max(1, 256 // sh), sw * max(1, 256 // sw)
    elif page.compression == 1:  # uncompressed strips are read by rows: any block will do
        ny, nx = min(sh * 256, 256), 256
    else:  # compressed strips decode whole: whole strips, about 256 rows
        ny, nx = sh * max(1, 256 // sh), sw
    return Vec(max(1, min(shape[0], 64)), min(ny, shape[1]), min(nx, shape[2]))


def _zero_tiles(n: int, tile: tuple[int, ...], dtype: np.dtype[Any]) -> Iterator[np.ndarray]:
    zero = np.zeros(tile, dtype=dtype)
    for _ in range(n):
        yield zero


def _write_slice(path: str, plane: np.ndarray, tile: tuple[int, ...] | None, comp: str | None,
                 extratags: list[Any]) -> None:
    tifffile = _tifffile()
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    if tile is not None and (plane.shape[0] < tile[0] or plane.shape[1] < tile[1]):
        tile = None if comp is None else tile
    tifffile.imwrite(tmp, plane, tile=tile, compression=comp, photometric="minisblack",
                     metadata=None, extratags=extratags)
    os.replace(tmp, path)


def _own_tag(page: Any) -> dict[str, Any]:
    tag = page.tags.get(VOXGATE_TAG)
    if tag is None:
        return {}
    try:
        value = json.loads(tag.value)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _compression_name(code: int) -> str | None:
    if code == 1:
        return None
    tifffile = _tifffile()
    try:
        return str(tifffile.COMPRESSION(code).name.lower())
    except ValueError:
        return str(code)


def _page_span(tf: Any, series: Any) -> str:
    pages = [p.index for p in series.pages if p is not None]
    if not pages:
        return "?"
    return f"{pages[0]}-{pages[-1]}" if len(pages) > 1 else str(pages[0])
