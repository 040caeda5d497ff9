"""``webknossos://``: WEBKNOSSOS datasets (a directory described by ``datasource-properties.json``).

A dataset holds layers (``dataLayers``: color or segmentation, each with its bounding box, dtype
``elementClass``, ``numChannels`` and magnifications ``mags``); each layer is one Volume:

    webknossos:///data/ds/color          the layer "color" of the dataset /data/ds
    webknossos:///data/ds                the dataset's only layer (or layer="color")

``elementClass`` names a whole voxel, all channels together (2 x uint16 is "uint32", 3 x uint8
"uint24"), as the ``webknossos`` package reads and writes it.  Scale k is the k-th mag of the
layer; its voxel size is the dataset's ``scale.factor`` times the mag (which may be
anisotropic, ``[2, 2, 1]``), its bounds the layer's mag-1 bounding box divided by the mag
(rounded outward).  Dataset coordinates are WEBKNOSSOS' absolute coordinates: the
bounding box's ``topLeft`` is the volume's offset.

- ``zarr3`` and ``zarr`` layers: each mag is a Zarr array with axes ``c, x, y, z`` (the mag's
  ``axisOrder``) read and written through tensorstore, transposed to voxgate's ``[c,] z, y, x``
  (the same plumbing as zarr://).
- ``wkw`` layers: read through the ``wkw`` package (``pip install wkw``), never written.
- A mag's ``channelIndex`` (a layer holding some channels of its mags' arrays): the layer's
  ``numChannels`` channels from that index are read and written, as the ``webknossos`` package
  reads them; such a layer gets no new mags (``add_scales`` refuses it).

``voxgate.create("webknossos:///data/ds/NAME", ...)`` adds a zarr3 layer NAME to the dataset
(creating the dataset when there is none; without a layer name the layer is "color" for images
and "segmentation" for segmentations), laid out as the ``webknossos`` Python package lays out
its own: sharded arrays with ``c, x, y, z`` dimensions, a transpose codec and zstd, mag
directories ``1``, ``2``, ``2-2-1`` (shards of at most ``_SHARD_BYTES``). The layer's
``zarr.json`` holds OME-Zarr 0.5 multiscales listing each mag under its array's path in the
layer directory (``mags[].path``, not the mag's default name).  Changes to
``datasource-properties.json`` (a new layer, new mags, a raised ``largestSegmentId``) are made
one writer at a time (``file_lock`` on local disks).
"""

from __future__ import annotations

import contextlib
import math
import os
import posixpath
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorstore as ts

from ..errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    MissingDependencyError,
    RemoteExistsError,
    RemoteNotFoundError,
)
from ..geometry import Box, Vec, VoxelSize, grow_block
from ..meta import Kind, Scale, VolumeMeta, check_new_scales
from ..storage import (
    file_lock,
    is_local,
    join,
    kvstore_exists,
    kvstore_spec,
    length_unit_nm,
    local_path,
    read_json,
    ts_context,
    ts_errors,
    write_json,
)
from ._tensorstore import TSArray
from .base import Capability, Remote, check_options, check_same_volume

__all__ = ["PROPERTIES", "WebknossosRemote", "layer_names"]

PROPERTIES = "datasource-properties.json"
_ELEMENT_CLASSES = {"float": "float32", "double": "float64"}
_DEFAULT_AXES = {"c": 0, "x": 1, "y": 2, "z": 3}
#: a created mag's shards (the block every write and copy holds whole) grow from its chunks
#: toward this many bytes; the webknossos package's 1024^3-voxel shards are 8 GiB of uint64
_SHARD_BYTES = 32 * 2**20
#: WEBKNOSSOS keeps larger segment ids as {"customJsonEncoding": "bigint", "value": "..."}:
#: JavaScript numbers lose integers past 2**53 - 1
_JS_MAX_SAFE_INTEGER = 2**53 - 1
#: in-process half of the properties lock (file_lock covers other processes, on local disks)
_PROPS_LOCK = threading.RLock()


def _unit_nm(scale: dict[str, Any], where: str) -> float:
    unit = str(scale.get("unit", "nanometer"))
    nm = length_unit_nm(unit)
    if nm is None:
        raise InvalidRequestError(
            f"{where}: unknown scale unit {unit!r}; WEBKNOSSOS units are SI lengths and their "
            "symbols (nanometer, nm, micrometer, µm, ...), angstrom, inch, foot, yard, mile "
            "and parsec"
        )
    return nm


def _segment_id(value: object) -> int | None:
    """A largestSegmentId as stored: a number, WEBKNOSSOS' bigint envelope, or null."""
    if value is None:
        return None
    if isinstance(value, dict) and value.get("customJsonEncoding") == "bigint":
        value = value.get("value")
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _segment_id_json(value: int) -> Any:
    if value > _JS_MAX_SAFE_INTEGER:
        return {"customJsonEncoding": "bigint", "value": str(value)}
    return value


@contextlib.contextmanager
def _properties_lock(dataset: str) -> Iterator[None]:
    """One writer at a time of the dataset's properties file: creating a layer, adding mags and
    raising largestSegmentId read it, change it and write it back (across processes on local
    disks; object stores have no lock, so there only threads of one process are kept apart)."""
    with _PROPS_LOCK:
        if not is_local(dataset):
            yield
            return
        path = local_path(dataset)
        os.makedirs(path, exist_ok=True)
        with file_lock(os.path.join(path, PROPERTIES)):
            yield


def _split(location: str) -> tuple[str, str]:
    loc = location.rstrip("/")
    if "/" not in loc:
        return "", loc
    parent, _, name = loc.rpartition("/")
    return parent, name


def _props(location: str) -> dict[str, Any] | None:
    if not location or not kvstore_exists(location, PROPERTIES):
        return None
    value = read_json(location, PROPERTIES)
    if not isinstance(value, dict) or not isinstance(value.get("dataLayers"), list):
        raise InvalidRequestError(
            f"{join(location, PROPERTIES)} is not a WEBKNOSSOS datasource description (it has "
            "no dataLayers list)"
        )
    return value


def layer_names(location: str) -> list[str]:
    """The names of the layers of the dataset at ``location``."""
    props = _props(location)
    if props is None:
        raise RemoteNotFoundError(f"no {PROPERTIES} at {location!r}")
    return [str(layer.get("name")) for layer in props["dataLayers"] if isinstance(layer, dict)]


def _mag(value: object, where: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * 3
    if isinstance(value, str):
        parts = value.split("-")
        value = [int(p) for p in parts] if all(p.isdigit() for p in parts) else value
        if isinstance(value, list) and len(value) == 1:
            value = value * 3
    if isinstance(value, list) and len(value) == 3 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        return list(value)
    raise InvalidRequestError(f"{where}: a mag must be a positive integer or [x, y, z], got "
                              f"{value!r}")


def _axis_order(entry: dict[str, Any], array: Any) -> dict[str, int]:
    """A mag's ``axisOrder`` as ``_open_zarr`` reads it: the entry's, else the default of the
    array's rank (c, x, y, z; x, y, z for a 3-D array)."""
    axes = entry.get("axisOrder")
    if isinstance(axes, dict) and axes:
        return {str(k): int(v) for k, v in axes.items() if v is not None}
    rank = array.store.rank if isinstance(array, TSArray) else 4
    return dict(_DEFAULT_AXES) if rank == 4 else {"x": 0, "y": 1, "z": 2}


def _layer_relative(layer_dir: str, path: str) -> str | None:
    """``path`` relative to the layer directory ``layer_dir`` (``"1"``, ``"mags/full"``), or
    None when it lies outside it."""
    if is_local(layer_dir) and is_local(path):
        layer_dir, path = (os.path.normpath(local_path(p)) for p in (layer_dir, path))
    prefix = layer_dir.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    rel = posixpath.normpath(path[len(prefix):])
    return None if rel == "." or rel.startswith("..") else rel


def _mag_name(mag: Sequence[int]) -> str:
    return str(mag[0]) if len(set(mag)) == 1 else "-".join(str(m) for m in mag)


def _element_class(dtype: np.dtype[Any], channels: int) -> str:
    """The elementClass of a layer of ``channels`` channels of ``dtype``: WEBKNOSSOS names the
    type of a whole voxel, all channels together (2 x uint16 is "uint32", 3 x uint8 "uint24"),
    as the webknossos package writes it."""
    name = re.sub(r"\d+", lambda m: str(int(m.group()) * channels), np.dtype(dtype).name)
    return {"float32": "float", "float64": "double"}.get(name, name)


def _dtypes(layer: dict[str, Any], where: str) -> tuple[list[np.dtype[Any]], int]:
    """(the dtypes one channel may have, best first; the number of channels) of a layer.

    elementClass is the type of a whole voxel: one channel has its bits divided by
    numChannels.  An older voxgate wrote the channel's own type there, and "uint24" without
    numChannels is RGB: those follow, for the data on disk to decide between."""
    ec = str(layer.get("elementClass", "uint8"))
    try:
        channels = int(layer.get("numChannels") or 1)
    except (TypeError, ValueError):
        channels = 0
    if channels < 1:
        raise InvalidRequestError(f"{where}: numChannels must be a positive integer, got "
                                  f"{layer.get('numChannels')!r}")
    if ec == "uint24" and channels in (1, 3):  # RGB color layers
        return [np.dtype("uint8")], 3
    whole = _ELEMENT_CLASSES.get(ec, ec)
    out: list[np.dtype[Any]] = []
    m = re.fullmatch(r"([a-z]+)(\d+)", whole)
    if m and int(m[2]) % channels == 0:
        with contextlib.suppress(TypeError):
            out.append(np.dtype(f"{m[1]}{int(m[2]) // channels}"))
    if channels > 1:
        with contextlib.suppress(TypeError):
            out.append(np.dtype(whole))
    if not out:
        raise InvalidRequestError(
            f"{where}: unknown elementClass {ec!r} for {channels} channel(s)")
    return out, channels


def _channel_index(value: object, where: str) -> int:
    """A mag's ``channelIndex``: the first channel of the mag's array the layer holds (its
    ``numChannels`` channels from there), as the webknossos package reads it (the c axis of
    the layer's bounding box starts there)."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise InvalidRequestError(f"{where}: channelIndex must be a non-negative integer, got "
                              f"{value!r}")


def _number(value: object) -> float | None:
    """A JSON number (not a bool), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def _dtype_window(dtype: np.dtype[Any]) -> tuple[float, float, float, float]:
    """(min, max, start, end) of the window over ``dtype``'s range, as an OME-Zarr image voxgate
    creates states it (0 to 1 for floats, whose range says nothing of the data)."""
    if dtype.kind == "f":
        info = np.finfo(dtype)
        return float(info.min), float(info.max), 0.0, 1.0
    iinfo = np.iinfo(dtype)
    return int(iinfo.min), int(iinfo.max), int(iinfo.min), int(iinfo.max)


def _view_extra(layer: dict[str, Any], dtype: np.dtype[Any], kind: str,
                channels: int) -> dict[str, Any]:
    """What a single-channel color layer's ``defaultViewConfiguration`` says of its display,
    for ``VolumeMeta.extra``, as the OME ``omero`` block voxgate carries between stores: its
    ``color`` ([r, g, b], white when none) as the channel's colour, ``intensityRange`` as the
    window's start and end, ``min`` / ``max`` as its bounds (else the dtype's range),
    ``isDisabled`` as not ``active`` and ``isInverted`` as ``inverted``.  Empty for
    segmentation and multi-channel layers (one configuration for several channels is no
    channel's) and for a layer that configures none of these (``alpha`` and ``mapping`` have
    no place in ``omero``)."""
    view = layer.get("defaultViewConfiguration")
    if kind != "image" or channels != 1 or not isinstance(view, dict):
        return {}
    lo, hi, start, end = _dtype_window(dtype)
    said = False
    colour = "FFFFFF"
    rgb = view.get("color")
    if isinstance(rgb, list) and len(rgb) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in rgb):
        colour, said = "".join(f"{v:02X}" for v in rgb), True
    span = view.get("intensityRange")
    if isinstance(span, list) and len(span) == 2:
        a, b = (_number(v) for v in span)
        if a is not None and b is not None:
            start, end, said = a, b, True
    given_lo, given_hi = _number(view.get("min")), _number(view.get("max"))
    said = said or given_lo is not None or given_hi is not None
    channel: dict[str, Any] = {"color": colour, "window": {
        "min": min(given_lo if given_lo is not None else lo, start),
        "max": max(given_hi if given_hi is not None else hi, end),
        "start": start, "end": end}, "active": True}
    if isinstance(view.get("isDisabled"), bool):
        channel["active"], said = not view["isDisabled"], True
    if isinstance(view.get("isInverted"), bool):
        channel["inverted"], said = view["isInverted"], True
    if not said:
        return {}
    return {"omero": {"channels": [channel], "rdefs": {"model": "color"}}}


def _view_configuration(meta: VolumeMeta) -> dict[str, Any] | None:
    """The ``defaultViewConfiguration`` of a layer created for ``meta``: its one channel's
    colour, window, visibility and inversion from ``meta.extra["omero"]`` (a copy's source's;
    the inverse of :func:`_view_extra`), for single-channel images only; None when it says
    none of them.  A colour under ``rdefs.model`` "greyscale" is shown white (as ome-zarr-py
    and napari show it), so it is written white."""
    omero = meta.extra.get("omero")
    listed = omero.get("channels") if isinstance(omero, dict) else None
    if meta.kind != "image" or meta.num_channels != 1 or not (
            isinstance(listed, list) and len(listed) == 1 and isinstance(listed[0], dict)):
        return None
    assert isinstance(omero, dict)
    channel = listed[0]
    out: dict[str, Any] = {}
    colour = channel.get("color")
    if isinstance(colour, str) and re.fullmatch(r"[0-9A-Fa-f]{6}", colour):
        rdefs = omero.get("rdefs")
        grey = isinstance(rdefs, dict) and rdefs.get("model") == "greyscale"
        out["color"] = [255] * 3 if grey else [int(colour[i:i + 2], 16) for i in (0, 2, 4)]
    window = channel.get("window")
    if isinstance(window, dict):
        start, end = _number(window.get("start")), _number(window.get("end"))
        if start is not None and end is not None:
            out["intensityRange"] = [start, end]
        for key in ("min", "max"):
            if _number(window.get(key)) is not None:
                out[key] = window[key]
    if isinstance(channel.get("active"), bool):
        out["isDisabled"] = not channel["active"]
    if isinstance(channel.get("inverted"), bool):
        out["isInverted"] = channel["inverted"]
    return out or None


class _WKWArray:
    """A wkw mag read through the ``wkw`` package (channel-first x, y, z, Fortran order)."""

    def __init__(self, path: str, channels: int, channel_index: int = 0) -> None:
        try:
            import wkw
        except ImportError as exc:
            raise MissingDependencyError(
                f"the WKW layer at {path} needs the wkw package (pip install wkw); voxgate "
                "reads WKW layers through it and writes zarr3 layers only"
            ) from exc
        if not os.path.exists(os.path.join(path, "header.wkw")):
            raise RemoteNotFoundError(f"the WKW mag {path} has no header.wkw")
        self.path = path
        self.channels = channels
        self.ds = wkw.Dataset.open(path)
        self.block = int(self.ds.header.block_len)
        self.first = channel_index
        have = int(self.ds.header.num_channels)
        if channel_index + channels > have:
            raise InvalidRequestError(
                f"the WKW mag {path} holds {have} channel(s); the layer asks for {channels} "
                f"from channelIndex {channel_index}"
            )

    def read(self, box: Box) -> np.ndarray:
        off = list(box.start.xyz())
        size = [b - a for a, b in zip(box.start.xyz(), box.stop.xyz(), strict=True)]
        try:
            arr = self.ds.read(off, size)  # (c, x, y, z)
        except Exception as exc:
            raise CorruptChunkError(f"reading {box!r} of the WKW mag {self.path} failed: {exc}",
                                    chunk=self.path) from exc
        arr = np.asarray(arr)[self.first:self.first + self.channels]
        out = np.ascontiguousarray(arr.transpose(0, 3, 2, 1))
        return out if self.channels > 1 else out[0]


class WebknossosRemote(Remote):
    scheme = "webknossos"
    open_options = ("layer",)
    create_options = ("layer",)
    # mag m's voxel i covers mag 1's [i * m, (i + 1) * m): WEBKNOSSOS and the webknossos
    # library's downsample place mags on the grid through 0, whatever the layer's topLeft
    pyramid_anchor = "origin"
    carried_extra = ("omero",)

    @classmethod
    def carries_extra(cls, meta: VolumeMeta) -> tuple[str, ...]:
        # a layer's defaultViewConfiguration (colour, window, visibility) describes one
        # channel: only a single-channel image's omero block has a place there
        return cls.carried_extra if meta.kind == "image" and meta.num_channels == 1 else ()

    def __init__(
        self,
        dataset: str,
        layer: str,
        meta: VolumeMeta,
        arrays: list[Any],
        mags: list[list[int]],
        data_format: str,
        mode: str,
        largest_segment_id: int | None = None,
        channel_index: int = 0,
    ) -> None:
        self.dataset = dataset
        self.layer = layer
        self.meta = meta
        self._arrays = arrays
        self._mags = mags
        self.data_format = data_format
        self.mode = mode
        self.url = f"webknossos://{join(dataset, layer)}"
        #: the layer's largestSegmentId as last read or written here (None: not kept); writes
        #: of larger ids raise it in the properties file
        self._largest = largest_segment_id
        #: the layer's channelIndex (the largest of its mags': 0 when each starts at channel 0)
        self.channel_index = channel_index

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def _locate(cls, location: str, layer: str | None) -> tuple[str, str | None, dict[str, Any]]:
        props = _props(location)
        if props is not None:
            return location, layer, props
        parent, name = _split(location)
        props = _props(parent)
        if props is not None:
            if layer is not None and layer != name:
                raise InvalidRequestError(f"{location!r} names layer {name!r}, layer={layer!r}")
            return parent, name, props
        raise RemoteNotFoundError(
            f"no WEBKNOSSOS dataset at {location!r}: neither it nor its parent holds {PROPERTIES}"
        )

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> WebknossosRemote:
        check_options("webknossos://", options, cls.open_options)
        dataset, layer, props = cls._locate(location, options.get("layer"))
        layers = [la for la in props["dataLayers"] if isinstance(la, dict)]
        names = [str(la.get("name")) for la in layers]
        if layer is None:
            if len(layers) != 1:
                raise InvalidRequestError(
                    f"the WEBKNOSSOS dataset {dataset!r} has layers {names}; name one: "
                    + ", ".join(f"webknossos://{join(dataset, n)}" for n in names)
                )
            layer = names[0]
        if layer not in names:
            raise RemoteNotFoundError(
                f"the WEBKNOSSOS dataset {dataset!r} has no layer {layer!r}; its layers are "
                f"{names}"
            )
        return cls._open_layer(dataset, layers[names.index(layer)], props, mode)

    @classmethod
    def _open_layer(
        cls, dataset: str, layer: dict[str, Any], props: dict[str, Any], mode: str
    ) -> WebknossosRemote:
        name = str(layer["name"])
        where = f"layer {name!r} of {join(dataset, PROPERTIES)}"
        fmt = str(layer.get("dataFormat", "wkw"))
        dtypes, channels = _dtypes(layer, where)
        dtype = dtypes[0]
        kind: Kind = "segmentation" if layer.get("category") == "segmentation" else "image"
        bb = layer.get("boundingBox")
        if not isinstance(bb, dict):
            raise InvalidRequestError(f"{where} has no boundingBox")
        top = [int(v) for v in bb.get("topLeft", [0, 0, 0])]
        size = [int(bb.get("width", 0)), int(bb.get("height", 0)), int(bb.get("depth", 0))]
        scale = props.get("scale", {})
        if isinstance(scale, dict):
            factor = scale.get("factor", [1, 1, 1])
            unit = _unit_nm(scale, join(dataset, PROPERTIES))
        else:  # older files: "scale": [x, y, z] in nm
            factor, unit = scale, 1.0
        base = [float(v) * unit for v in factor]
        entries = layer.get("mags")
        if entries is None:  # older files
            entries = [{"mag": r.get("resolution"), "cubeLength": r.get("cubeLength")}
                       for r in layer.get("wkwResolutions", [])]
        if not entries:
            raise InvalidRequestError(f"{where} lists no mags")
        # the webknossos package takes the first listed mag's channelIndex for the layer;
        # WEBKNOSSOS reads each mag's own
        first = entries[0].get("channelIndex", bb.get("channelIndex")) \
            if isinstance(entries[0], dict) else None
        entries = sorted(entries, key=lambda e: _mag(e.get("mag"), where))
        scales, arrays, mags, indices = [], [], [], []
        for i, entry in enumerate(entries):
            mag = _mag(entry.get("mag"), where)
            path = cls._mag_path(dataset, name, entry, mag)
            channel_index = _channel_index(entry.get("channelIndex", first), where)
            indices.append(channel_index)
            lo = [t // m for t, m in zip(top, mag, strict=True)]
            hi = [math.ceil((t + s) / m) for t, s, m in zip(top, size, mag, strict=True)]
            offset = Vec(lo[2], lo[1], lo[0])
            shape = Vec(*[h - low for h, low in zip(hi, lo, strict=True)][::-1])
            arr: TSArray | _WKWArray
            if fmt in ("zarr3", "zarr"):
                arr, chunks = cls._open_zarr(path, fmt, entry, channels, hi, mode, where,
                                             channel_index)
                stored = np.dtype(arr.store.dtype.numpy_dtype)
                if i == 0 and stored != dtype and stored in dtypes:
                    dtype = stored  # a multi-channel layer an older voxgate described
                if stored != dtype:
                    raise InvalidRequestError(
                        f"{where} says elementClass {layer.get('elementClass')!r} with "
                        f"{channels} channel(s) ({dtype.name} each), but the array at {path} "
                        f"holds {stored.name}: the properties file and the data disagree"
                    )
            elif fmt == "wkw":
                if mode == "r+":
                    raise CapabilityNotSupportedError(
                        f"{where} is a WKW layer; voxgate reads WKW (through the wkw package) "
                        "but writes zarr3 layers only: open it with mode='r'"
                    )
                if not is_local(path):
                    raise CapabilityNotSupportedError(
                        f"{where} is a WKW layer on {path.split('://')[0]}://; the wkw package "
                        "reads WKW files from a local disk only: download the dataset, or "
                        "convert the layer to zarr3 (webknossos convert, or voxgate cp from a "
                        "local copy)"
                    )
                wkw_arr = _WKWArray(local_path(path) if is_local(path) else path, channels,
                                    channel_index)
                chunks = Vec(wkw_arr.block, wkw_arr.block, wkw_arr.block)
                arr = wkw_arr
            else:
                raise CapabilityNotSupportedError(
                    f"{where} has dataFormat {fmt!r}; voxgate reads zarr3, zarr and wkw layers"
                )
            vs = VoxelSize(base[2] * mag[2], base[1] * mag[1], base[0] * mag[0])
            scales.append(Scale(i, shape, chunks, vs, offset, fmt, _mag_name(mag)))
            arrays.append(arr)
            mags.append(mag)
        meta = VolumeMeta(dtype, tuple(scales), kind, channels, 0,
                          extra=_view_extra(layer, dtype, kind, channels))
        largest = (_segment_id(layer.get("largestSegmentId")) if kind == "segmentation"
                   else None)
        return cls(dataset, name, meta, arrays, mags, fmt, mode, largest, max(indices))

    @staticmethod
    def _mag_path(dataset: str, layer: str, entry: dict[str, Any], mag: list[int]) -> str:
        path = entry.get("path")
        if isinstance(path, str) and path:
            if "://" in path or path.startswith("/"):
                return path
            return join(dataset, path.removeprefix("./"))
        for cand in (_mag_name(mag), "-".join(str(m) for m in mag)):
            if kvstore_exists(join(dataset, layer, cand), "zarr.json") or kvstore_exists(
                join(dataset, layer, cand), "header.wkw"
            ) or kvstore_exists(join(dataset, layer, cand), ".zarray"):
                return join(dataset, layer, cand)
        return join(dataset, layer, _mag_name(mag))

    @staticmethod
    def _open_zarr(
        path: str, fmt: str, entry: dict[str, Any], channels: int, hi: list[int], mode: str,
        where: str, channel_index: int = 0,
    ) -> tuple[TSArray, Vec]:
        marker = "zarr.json" if fmt == "zarr3" else ".zarray"
        if not kvstore_exists(path, marker):
            raise RemoteNotFoundError(
                f"{where} names the mag {path}, which holds no Zarr array (no {marker}): the "
                "properties file and the data on disk disagree"
            )
        with ts_errors(f"opening the WEBKNOSSOS mag {path}"):
            store = ts.open(
                {"driver": fmt, "kvstore": kvstore_spec(path)},
                read=True, write=mode == "r+", context=ts_context(),
            ).result()
        axes = entry.get("axisOrder") or (_DEFAULT_AXES if store.rank == 4 else
                                          {"x": 0, "y": 1, "z": 2})
        try:
            order = [int(axes[a]) for a in ("z", "y", "x")]
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequestError(f"{where}: axisOrder {axes!r} lacks x, y or z") from exc
        has_c = "c" in axes and axes["c"] is not None
        if has_c:
            order = [int(axes["c"]), *order]
        if sorted(order) != list(range(store.rank)):
            raise InvalidRequestError(
                f"{where}: axisOrder {axes!r} does not match the {store.rank}-D array at {path}"
            )
        view = store[ts.d[order].transpose[:]]
        if has_c:
            # the layer's channels of the array: numChannels from channelIndex, renumbered
            # from 0 (the webknossos package reads them so; WEBKNOSSOS selects channelIndex)
            have = int(view.shape[0])
            if channel_index + channels > have:
                raise InvalidRequestError(
                    f"{where}: the array at {path} has {have} channel(s), but the layer holds "
                    f"{channels} from channelIndex {channel_index}: the properties file and "
                    "the data disagree"
                )
            lo = int(view.domain[0].inclusive_min) + channel_index
            view = view[ts.d[0][lo:lo + channels].translate_to[0]]
        elif channel_index:
            raise InvalidRequestError(
                f"{where}: channelIndex {channel_index} selects a channel, but the array at "
                f"{path} has no channel axis (axisOrder {axes!r})"
            )
        spatial = view.shape[-3:]
        need = hi[::-1]
        if any(s < n for s, n in zip(spatial, need, strict=True)):
            raise CorruptChunkError(
                f"the array at {path} has shape {tuple(spatial)} (z, y, x) but {where} needs "
                f"{tuple(need)}", chunk=path
            )
        layout = view.chunk_layout.read_chunk.shape
        chunks = Vec(*(int(n or 1) for n in (layout or (1, 1, 1))[-3:]))
        arr = TSArray(view, reversed_axes=False, channel=has_c, keep_channel=channels > 1,
                      name=path, own_context=True)  # opened with ts_context() alone
        return arr, chunks

    # -- creating -------------------------------------------------------------------------------
    @staticmethod
    def _create_parts(location: str, layer: str | None) -> tuple[str, str | None]:
        """(dataset, layer name; None: the default) that creating at ``location`` with
        ``layer=`` makes, the one rule ``create`` and ``create_location`` (copy's destination)
        both follow: a location holding a dataset is that dataset (``layer=`` names the layer);
        one whose parent holds a dataset is that dataset's layer of the location's last name
        (a ``layer=`` naming another is refused, as opening it is); else a new dataset at
        ``location``."""
        if _props(location) is not None:
            return location, layer
        parent, name = _split(location)
        if _props(parent) is not None:
            if layer is not None and layer != name:
                raise InvalidRequestError(
                    f"{location!r} names layer {name!r} of the dataset {parent!r}, but "
                    f"layer={layer!r}: give the layer once, in the URL ({join(parent, name)!r}) "
                    f"or as layer= on the dataset's URL ({parent!r})"
                )
            return parent, name
        return location, layer

    @classmethod
    def _target(cls, location: str, layer: str | None, kind: str) -> tuple[str, str]:
        """(dataset, layer name) that ``create`` writes for ``location``."""
        dataset, name = cls._create_parts(location, layer)
        return dataset, name or ("segmentation" if kind == "segmentation" else "color")

    @classmethod
    def create_location(cls, location: str, options: Mapping[str, Any], kind: str = "image"
                        ) -> tuple[str, dict[str, Any]]:
        """Where ``create`` puts the layer, by :meth:`_create_parts`: ``layer=NAME`` on an
        existing dataset is its layer NAME, ``dataset/NAME``, and without ``layer=`` the layer
        create adds there for ``kind`` ("color" or "segmentation": a copy wrote over the
        dataset's only layer, which opening the dataset reads); on a location naming a layer of
        a dataset it is that layer (dropped when the same name, refused when another); a new
        dataset keeps the option (it is created at ``location`` with that layer, which
        ``location`` then opens)."""
        rest = dict(options)
        layer = rest.get("layer")
        if not (layer is None or (isinstance(layer, str) and layer and "/" not in layer)):
            return location, rest  # (create refuses it, saying why)
        dataset, name = cls._create_parts(location, layer)
        if dataset != location:  # the location names the layer itself
            rest.pop("layer", None)
            return location, rest
        if _props(location) is not None:  # a dataset: layer= or create's default for kind
            rest.pop("layer", None)
            return join(location, cls._target(location, name, kind)[1]), rest
        return location, rest

    @classmethod
    def exists(cls, location: str) -> bool:
        try:
            _dataset, layer, props = cls._locate(location, None)
        except RemoteNotFoundError:
            return False
        names = [str(la.get("name")) for la in props["dataLayers"] if isinstance(la, dict)]
        return layer in names if layer is not None else bool(names)

    @classmethod
    def create(
        cls,
        location: str,
        meta: VolumeMeta,
        *,
        exist_ok: bool = False,
        layer: str | None = None,
        **options: Any,
    ) -> WebknossosRemote:
        check_options("webknossos://", options, cls.create_options)
        dataset, name = cls._target(location, layer, meta.kind)
        if meta.fill_value != 0:
            raise InvalidRequestError("WEBKNOSSOS layers read absent data as 0: fill value 0")
        if not isinstance(name, str) or not name or "/" in name or "\\" in name \
                or name in (".", ".."):
            # ('..' created the layer's files in the folder above the dataset)
            raise InvalidRequestError(f"a layer name must be a plain name, got {name!r}")
        s0 = meta.scales[0]
        if any(o < 0 for o in s0.offset):
            raise InvalidRequestError(
                f"offset {tuple(s0.offset)} (z, y, x) is negative: WEBKNOSSOS stores voxels at "
                "non-negative coordinates only (a layer's topLeft is >= 0); shift the volume"
            )
        vs0 = s0.voxel_size
        unit_nm = length_unit_nm(vs0.unit)
        if unit_nm is None:
            raise InvalidRequestError(f"unknown voxel size unit {vs0.unit!r}")
        base_xyz = [v * unit_nm for v in vs0.xyz()]
        mags = [cls._scale_mag(sc, vs0) for sc in meta.scales]
        # the properties are read, checked and written back by one creator at a time: two
        # layers created at once (threads, processes) are both listed
        with _properties_lock(dataset):
            props = _props(dataset)
            names = [str(la.get("name")) for la in (props or {}).get("dataLayers", [])
                     if isinstance(la, dict)]
            if name in names:
                if not exist_ok:
                    raise RemoteExistsError(
                        f"the WEBKNOSSOS dataset {dataset!r} has a layer {name!r} already "
                        "(pass exist_ok=True to open it)"
                    )
                existing = cls.open(join(dataset, name), mode="r+")
                check_same_volume(existing.meta, meta, f"layer {name!r} of {dataset!r}")
                return existing
            if props is None:
                props = {"id": {"name": _split(dataset)[1] or "dataset", "team": ""},
                         "scale": {"factor": base_xyz, "unit": "nanometer"},
                         "dataLayers": [], "version": 1}
                write_json(dataset, "zarr.json", {"zarr_format": 3, "node_type": "group"})
            else:
                have = props.get("scale", {})
                have_f = have.get("factor") if isinstance(have, dict) else have
                unit = _unit_nm(have, join(dataset, PROPERTIES)) if isinstance(have, dict) \
                    else 1.0
                have_nm = [float(v) * unit for v in have_f or []]
                if len(have_nm) != 3 or any(abs(a - b) > 1e-6 * max(1.0, b)
                                            for a, b in zip(have_nm, base_xyz, strict=True)):
                    raise InvalidRequestError(
                        f"the dataset {dataset!r} has voxel size {have_nm} nm (x, y, z); a new "
                        f"layer's scale 0 must have it too, not {base_xyz}"
                    )
            cls._check_unused([join(dataset, name, _mag_name(m)) for m in mags], name)
            entries = []
            for sc, mag in zip(meta.scales, mags, strict=True):
                path = join(dataset, name, _mag_name(mag))
                cls._create_array(path, meta, sc, s0, mag)
                entries.append({"mag": mag, "path": f"./{name}/{_mag_name(mag)}",
                                "axisOrder": dict(_DEFAULT_AXES)})
            top = list(s0.offset.xyz())
            size = list(s0.shape.xyz())
            entry: dict[str, Any] = {
                "name": name,
                "category": "segmentation" if meta.kind == "segmentation" else "color",
                "boundingBox": {"topLeft": top, "width": size[0], "height": size[1],
                                "depth": size[2]},
                "dataFormat": "zarr3",
                "mags": entries,
                "numChannels": meta.num_channels,
                "elementClass": _element_class(meta.dtype, meta.num_channels),
            }
            view = _view_configuration(meta)
            if view is not None:  # (a copy's source's display: colour, window, visibility)
                entry["defaultViewConfiguration"] = view
            if meta.kind == "segmentation":
                # nothing written yet; voxgate's writes raise it (WEBKNOSSOS hands out new
                # segment ids above it)
                entry["largestSegmentId"] = 0
            cls._write_layer_group(dataset, name, mags, base_xyz)
            props["dataLayers"] = [*props["dataLayers"], entry]
            # written last: a layer whose creation was interrupted is not listed
            write_json(dataset, PROPERTIES, props)
        return cls.open(join(dataset, name), mode="r+")

    @staticmethod
    def _check_unused(paths: list[str], layer: str) -> None:
        """Refuse, before anything is made, mags whose directory holds an array already that
        the properties do not list (a creation interrupted before its properties were
        written, or data someone unlisted): voxgate does not overwrite what it did not list."""
        for path in paths:
            if kvstore_exists(path, "zarr.json") or kvstore_exists(path, ".zarray") or \
                    kvstore_exists(path, "header.wkw"):
                raise RemoteExistsError(
                    f"{path} holds an array already, which {PROPERTIES} does not list for "
                    f"layer {layer!r} (left by a creation that was interrupted?); remove it, "
                    "or create the layer under another name"
                )

    @staticmethod
    def _scale_mag(sc: Scale, vs0: VoxelSize) -> list[int]:
        mag = [v / b for v, b in zip(sc.voxel_size.xyz(), vs0.xyz(), strict=True)]
        if any(abs(m - round(m)) > 1e-6 or round(m) < 1 for m in mag):
            raise InvalidRequestError(
                f"scale {sc.index} has voxel size {sc.voxel_size.zyx()}, not a whole multiple "
                f"of scale 0's {vs0.zyx()}: WEBKNOSSOS mags are integer factors"
            )
        return [round(m) for m in mag]

    @staticmethod
    def _create_array(path: str, meta: VolumeMeta, sc: Scale, s0: Scale, mag: list[int],
                      dims: Sequence[str] = ("c", "x", "y", "z")) -> None:
        """A mag's sharded zarr3 array with dimensions ``dims`` (its ``axisOrder``: c, x, y, z
        as the webknossos package writes; a layer's added mags take its first mag's)."""
        nc = meta.num_channels
        # the mag's extent as WEBKNOSSOS derives it: the mag-1 box's end divided, rounded up
        end = [math.ceil((o + s) / m) for o, s, m in zip(s0.offset.xyz(), s0.shape.xyz(), mag,
                                                          strict=True)]
        chunk = list(sc.chunks.xyz())
        # shards of whole chunks covering the extent, but of at most _SHARD_BYTES: a shard is
        # written whole, so it is the least a write or a copy block holds in memory
        shard = list(grow_block(sc.chunks, meta.dtype.itemsize * nc, Vec(*end[::-1]),
                                _SHARD_BYTES).xyz())

        def order(c: int, xyz: list[int]) -> list[int]:
            return [c if d == "c" else xyz["xyz".index(d)] for d in dims]

        rank = len(dims)
        spec = {
            "driver": "zarr3",
            "kvstore": kvstore_spec(path),
            "metadata": {
                "shape": order(nc, end),
                "chunk_grid": {"name": "regular",
                               "configuration": {"chunk_shape": order(nc, shard)}},
                "chunk_key_encoding": {"name": "default"},
                "data_type": meta.dtype.name,
                "fill_value": 0,
                "dimension_names": list(dims),
                "codecs": [{
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": order(nc, chunk),
                        "codecs": [
                            # first dimension fastest, as the webknossos package stores
                            {"name": "transpose",
                             "configuration": {"order": list(range(rank))[::-1]}},
                            {"name": "bytes", "configuration": {"endian": "little"}},
                            {"name": "zstd", "configuration": {"level": 5, "checksum": True}},
                        ],
                        "index_codecs": [
                            {"name": "bytes", "configuration": {"endian": "little"}},
                            {"name": "crc32c"},
                        ],
                        "index_location": "end",
                    },
                }],
            },
        }
        with ts_errors(f"creating the WEBKNOSSOS mag {path}"):
            ts.open(spec, create=True, context=ts_context()).result()

    @staticmethod
    def _write_layer_group(dataset: str, name: str, mags: list[list[int]],
                           base_xyz: list[float], dims: Sequence[str] = ("c", "x", "y", "z"),
                           paths: Sequence[str | None] | None = None) -> None:
        """The layer's zarr.json: an OME-Zarr 0.5 multiscale group, as webknossos writes
        (``webknossos/dataset/ome_metadata.py``), with the mags' dimensions ``dims``, each mag
        listed under its array's path in the layer directory (``paths``; default the mags'
        default names).  A mag outside the layer directory (a mag another dataset holds) has
        no path an OME-Zarr reader could follow from the layer group: then the layer is a
        plain group, with no multiscales naming wrong arrays."""
        rels = list(paths) if paths is not None else [_mag_name(m) for m in mags]
        node: dict[str, Any] = {"zarr_format": 3, "node_type": "group"}
        if all(r is not None for r in rels):
            axes = [{"name": "c", "type": "channel"} if d == "c" else
                    {"name": d, "type": "space", "unit": "nanometer"} for d in dims]
            datasets = [{"path": rel, "coordinateTransformations": [
                {"type": "scale", "scale": [1.0 if d == "c" else base_xyz["xyz".index(d)]
                                            * m["xyz".index(d)] for d in dims]}]}
                for m, rel in zip(mags, rels, strict=True)]
            node["attributes"] = {"ome": {"version": "0.5", "multiscales": [
                {"axes": axes, "datasets": datasets}]}}
        write_json(join(dataset, name), "zarr.json", node)

    # -- data -----------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        if self.data_format == "wkw":
            return frozenset()
        caps = {Capability.CHUNK_PRESENCE}
        if self.mode == "r+":
            caps.add(Capability.WRITE)
            if not self.channel_index:
                caps.add(Capability.ADD_SCALES)
        return frozenset(caps)

    def write_grid(self, scale: int = 0) -> Vec:
        arr = self._arrays[scale]
        if isinstance(arr, TSArray):
            shape = arr.store.chunk_layout.write_chunk.shape
            if shape:
                return Vec(*(int(n or 1) for n in shape[-3:]))
        return self.meta.scale(scale).chunks

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        if self.missing == "error":
            self._check_present(box, scale)
        return np.asarray(self._arrays[scale].read(box))

    def absent_chunks(self, box: Box, scale: int = 0) -> list[Vec]:
        arr = self._arrays[scale]
        if not isinstance(arr, TSArray):
            return super().absent_chunks(box, scale)
        sc = self.meta.scale(scale)
        return arr.absent_chunks(box, sc.chunks, sc.bounds)

    def listing_order(self, scale: int = 0) -> tuple[int, ...]:
        arr = self._arrays[scale]
        return arr.listing_order() if isinstance(arr, TSArray) else super().listing_order(scale)

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._check_writable()
        arr = self._arrays[scale]
        if not isinstance(arr, TSArray):
            raise CapabilityNotSupportedError(f"{self.url} is a WKW layer: read only")
        arr.write(box, array)
        if self._largest is not None and array.size:
            top = int(array.max())
            if top > self._largest:
                self._raise_largest_segment_id(top)

    def _raise_largest_segment_id(self, top: int) -> None:
        """Raise the layer's largestSegmentId to ``top`` (WEBKNOSSOS gives new segments the
        ids above it: left lower, an annotator's new segment would merge with written ones)."""
        with _properties_lock(self.dataset):
            props = read_json(self.dataset, PROPERTIES)
            layers = [la for la in props.get("dataLayers", [])
                      if isinstance(la, dict) and la.get("name") == self.layer]
            if not layers:
                raise RemoteNotFoundError(f"{self.layer!r} is gone from {self.dataset}")
            have = _segment_id(layers[0].get("largestSegmentId"))
            if have is None:  # someone made it unknown since: leave it so
                self._largest = None
                return
            if top > have:
                layers[0]["largestSegmentId"] = _segment_id_json(top)
                write_json(self.dataset, PROPERTIES, props)
            self._largest = max(top, have)

    def add_scales(self, scales: Sequence[Scale]) -> None:
        self._check_writable()
        if self.data_format != "zarr3":
            raise CapabilityNotSupportedError(f"{self.url}: scales are added to zarr3 layers")
        if self.channel_index:
            # a new mag would need the channels before channelIndex too (the webknossos
            # package applies the first mag's channelIndex to every mag), or a channelIndex of
            # its own (which the webknossos package does not read)
            raise CapabilityNotSupportedError(
                f"{self.url} holds channel(s) {self.channel_index}.."
                f"{self.channel_index + self.meta.num_channels - 1} of its mags' arrays "
                f"(channelIndex {self.channel_index}); voxgate adds mags to layers that start at "
                "channel 0 only: copy the layer to a layer of its own (voxgate cp) and "
                "downsample that"
            )
        check_new_scales(self.meta, scales)
        vs0 = self.meta.scales[0].voxel_size
        base_xyz = [v * (length_unit_nm(vs0.unit) or 1.0) for v in vs0.xyz()]
        # read, changed and written back by one writer at a time: mags added to two layers at
        # once (two downsamples) are both listed
        with _properties_lock(self.dataset):
            props = read_json(self.dataset, PROPERTIES)
            layers = [la for la in props["dataLayers"] if la.get("name") == self.layer]
            if not layers:
                raise RemoteNotFoundError(f"{self.layer!r} is gone from {self.dataset}")
            self._check_unused([join(self.dataset, self.layer, _mag_name(self._scale_mag(
                sc, vs0))) for sc in scales], self.layer)
            # the layer's axis order (WEBKNOSSOS and the webknossos package take it from the
            # first mag and refuse a layer whose mags differ; a 3-D mag has no c)
            axis_order = _axis_order(layers[0]["mags"][0], self._arrays[0])
            dims = sorted(axis_order, key=axis_order.__getitem__)
            for sc in scales:
                mag = self._scale_mag(sc, vs0)
                self._create_array(join(self.dataset, self.layer, _mag_name(mag)), self.meta,
                                   sc, self.meta.scales[0], mag, dims)
                layers[0]["mags"].append({"mag": mag,
                                          "path": f"./{self.layer}/{_mag_name(mag)}",
                                          "axisOrder": dict(axis_order)})
            entries = sorted(layers[0]["mags"], key=lambda e: _mag(e.get("mag"), self.url))
            mags = [_mag(e["mag"], self.url) for e in entries]
            paths = [_layer_relative(join(self.dataset, self.layer),
                                     self._mag_path(self.dataset, self.layer, e, m))
                     for e, m in zip(entries, mags, strict=True)]
            self._write_layer_group(self.dataset, self.layer, mags, base_xyz, dims, paths)
            write_json(self.dataset, PROPERTIES, props)
        fresh = WebknossosRemote.open(join(self.dataset, self.layer), mode="r+")
        self.meta, self._arrays, self._mags = fresh.meta, fresh._arrays, fresh._mags
        self._largest = fresh._largest
