"""``zarr://``: Zarr v2 and v3 arrays and OME-Zarr (NGFF 0.4 / 0.5) multiscale groups.

Read and written through tensorstore.  ``voxgate.create("zarr://...")`` writes an OME-Zarr
multiscale group (NGFF 0.5 on Zarr v3 by default, NGFF 0.4 with ``zarr_format=2``) whose
datasets are ``0``, ``1``, ...; a plain array (no ``multiscales``) opens as a single scale, with
voxel size, offset and kind read from a ``voxgate`` attribute when voxgate wrote it.  One level
of an image opened by its own URL (``img.zarr/2``) opens as the group gives that level.  A
bioformats2raw root of one series opens as that image; of several, a labels group or an HCS
plate is refused with the URLs of its images (``_ome_collections``).  Of several
``multiscales`` the first is read unless ``multiscale=`` names another; 2-D images (y, x) open
as one z plane; ``omero`` is read into ``meta.extra`` and written for the images voxgate
creates (docs/remotes/zarr.md).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, overload

import numpy as np
import tensorstore as ts

from ..errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    RemoteNotFoundError,
    VoxgateError,
    VoxgateWarning,
)
from ..geometry import Box, Vec, VoxelSize
from ..meta import (
    SUPPORTED_DTYPES,
    Kind,
    Scale,
    VolumeMeta,
    centre_translation,
    check_new_scales,
)
from ..storage import (
    UNITS_NM,
    check_bucket,
    is_local,
    join,
    kvstore_exists,
    kvstore_spec,
    length_unit_nm,
    local_path,
    read_json,
    split_query,
    ts_context,
    ts_errors,
    write_json,
)
from ._foreign_attrs import (
    funlib_geometry,
    funlib_names,
    warn_ignored,
)
from ._ome_collections import collection
from ._ome_geometry import Frame, axis_names, compose, level_offset, place
from ._tensorstore import TSArray, at_time_point
from .base import Capability, Remote, check_options, check_time, open_existing

__all__ = ["ZarrRemote"]

_COMPRESSIONS = ("blosc-zstd", "blosc-lz4", "zstd", "gzip", "none")


def _unit_factor(unit: str | None, where: str = "") -> float:
    """Nanometres per axis unit: the OME-Zarr names, and the short ones some writers use
    ("um", "µm", "mm": read as nm they made lengths 1000x too small).  No unit is nm; a unit
    voxgate does not know (a non-NGFF "pixel") is taken as nm with a VoxgateWarning that says
    so (it was taken as nm silently; refusing it would leave the voxels unreadable, as the
    HDF5 and N5 backends would not)."""
    if unit is None:
        return 1.0
    factor = length_unit_nm(unit)
    if factor is None:
        warnings.warn(VoxgateWarning(
            f"{where or 'an OME-Zarr axis'} has unit {unit!r}, which is not a length unit "
            "voxgate knows (OME-Zarr space axes use NGFF's names: nanometer, micrometer, "
            "angstrom, millimeter, ...); its voxel size is taken as nm"), stacklevel=3)
        return 1.0
    return factor


def _guess_kind(dtype: np.dtype[Any]) -> str:
    return "segmentation" if dtype.kind in "ui" and dtype.itemsize >= 4 else "image"


def _kind(value: object) -> Kind:
    if value not in ("image", "segmentation"):
        raise InvalidRequestError(f"kind must be 'image' or 'segmentation', got {value!r}")
    return value


class ZarrRemote(Remote):
    scheme = "zarr"
    open_options = ("multiscale", "time")
    create_options = ("zarr_format", "compression", "shards")
    carried_extra = ("channel_names", "omero")  # (OME-Zarr's omero block holds all of it)

    def __init__(
        self,
        location: str,
        meta: VolumeMeta,
        arrays: list[TSArray],
        mode: str,
        shard_shape: Vec | None = None,
        group_format: int | None = None,
    ) -> None:
        self.location = location
        self.meta = meta
        self._arrays = arrays
        self.mode = mode
        self.url = f"zarr://{location}"
        self._shard_shape = shard_shape
        self._group_format = group_format  # 2 or 3 for an OME-Zarr group, None for an array
        #: the ``multiscale`` option it was opened with (spec() passes it on), and the index in
        #: ``multiscales`` of the multiscale it reads (0 by default, as NGFF says)
        self._multiscale: int | str | None = None
        self._ms_index = 0
        #: the ``time`` option it was opened with (spec() passes it on: every reopen reads the
        #: same time point)
        self._time: int | None = None

    @property
    def _time_points(self) -> int:
        """The length of its 't' axis (1 when it has none)."""
        return self._arrays[0].time_points

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str, *, mode: str = "r", multiscale: int | str | None = None,
             time: int | None = None, **options: Any) -> ZarrRemote:
        """``multiscale``: which of an OME-Zarr group's ``multiscales`` to read, by name or
        index (NGFF: "the user can choose by name, using the first multiscale as a
        fallback"); the first when None.  ``time``: the time point of a timelapse (an index
        along its 't' axis, 0..T-1) read and written; required when that axis is longer than
        1, refused (but for 0) on an array without one."""
        cls.check_open_options({**options, "multiscale": multiscale, "time": time})
        remote = cls._open(location, mode, multiscale, time)
        # (an int: a numpy integer given is no JSON value, and spec() must be one)
        remote._time = None if time is None else int(time)
        remote._time_points_are(remote._time_points)
        return remote

    @classmethod
    def _open(cls, location: str, mode: str, multiscale: int | str | None,
              time: int | None) -> ZarrRemote:
        # each document is read once, here; an array's is handed on to tensorstore
        node = _metadata(location, "zarr.json", optional=True)
        if node is not None:
            attrs = node.get("attributes")
            attrs = attrs if isinstance(attrs, dict) else {}
            if node.get("node_type") == "group":
                ome = attrs.get("ome", attrs)
                return cls._open_multiscale(location, ome, attrs, 3, mode, multiscale, time)
            _no_choice(location, multiscale)
            level = cls._open_level(location, "zarr3", attrs, mode, node, time)
            if level is not None:
                return level
            return cls._open_plain(location, "zarr3", attrs, mode, node, time)
        array = _metadata(location, ".zarray", optional=True)
        if array is not None:
            _no_choice(location, multiscale)
            attrs = _optional_json(location, ".zattrs")
            level = cls._open_level(location, "zarr", attrs, mode, array, time)
            if level is not None:
                return level
            return cls._open_plain(location, "zarr", attrs, mode, array, time)
        if kvstore_exists(location, ".zgroup"):
            attrs = _optional_json(location, ".zattrs")
            return cls._open_multiscale(location, attrs, attrs, 2, mode, multiscale, time)
        # a missing bucket reads as missing keys: name it rather than the array
        check_bucket(location, f"opening {location}")
        raise RemoteNotFoundError(
            f"no zarr array or group at {location!r} (looked for zarr.json, .zarray, .zgroup)"
        )

    @classmethod
    def check_open_options(cls, options: Mapping[str, Any]) -> None:
        """``multiscale`` (None: not given) is a name or an index; ``time`` (None: not
        given) a time point, an integer from 0."""
        super().check_open_options(options)
        _check_choice(options.get("multiscale"))
        check_time(options.get("time"))

    @classmethod
    def _open_store(cls, location: str, driver: str, mode: str,
                    doc: dict[str, Any] | None = None) -> ts.TensorStore:
        """The array at ``location``, opened with its metadata document ``doc`` (read here when
        not given), which voxgate checks and tensorstore then takes as it is instead of
        reading it again (one request less per array on object storage)."""
        key = join(location, "zarr.json" if driver == "zarr3" else ".zarray")
        if doc is None:
            doc = _metadata(location, os.path.basename(key))
        _check_array_doc(doc, key)
        # every chunk written is stored, zeros too: an absent chunk is one never written (or
        # deleted), which missing="error" and absent_chunks report
        spec: dict[str, Any] = {"driver": driver, "kvstore": kvstore_spec(location),
                                "store_data_equal_to_fill_value": True}
        handed = _handed_on(doc, driver)
        if handed is not None:
            spec["metadata"] = handed
        with ts_errors(f"opening zarr array {location}"):
            try:
                store = ts.open(
                    spec,
                    open=True,
                    assume_metadata=handed is not None or None,
                    read=True,
                    write=mode == "r+",
                    context=ts_context(),
                ).result()
            except ValueError as exc:
                refusal = _metadata_refusal(str(exc), key)
                if refusal is None:
                    raise
                raise refusal from exc
        dtype = np.dtype(store.dtype.numpy_dtype)
        if dtype.name not in SUPPORTED_DTYPES:
            raise _dtype_refusal(key, dtype.name)
        return store

    @classmethod
    def _open_plain(
        cls, location: str, driver: str, attrs: dict[str, Any], mode: str, doc: dict[str, Any],
        time: int | None = None,
    ) -> ZarrRemote:
        store = cls._open_store(location, driver, mode, doc)
        names = list(store.domain.labels)
        if driver == "zarr" and not any(names):
            # Zarr v2 has no dimension names; xarray (and what follows its convention) writes
            # them as this attribute: an (x, y, z) array read as (z, y, x) would be transposed
            names = _array_dimensions(attrs, store.rank, join(location, ".zattrs"))
        if not any(names):
            # funlib.persistence (daisy, gunpowder) names them in its own attributes
            names = funlib_names(attrs, store.rank, location)
        if not any(names):
            if store.rank not in (2, 3, 4):
                raise InvalidRequestError(
                    f"{location} is a {store.rank}-D zarr array of shape {tuple(store.shape)} "
                    "without dimension names; voxgate reads 2-D (y, x), 3-D (z, y, x) and 4-D "
                    "(c, z, y, x) arrays, and others whose dimension_names (Zarr v3; "
                    "_ARRAY_DIMENSIONS on v2) name z, y and x (or y and x), plus c and "
                    "length-1 others"
                )
            names = {2: ["y", "x"], 3: ["z", "y", "x"], 4: ["c", "z", "y", "x"]}[store.rank]
        names = [n.lower() if n else "" for n in names]
        # a 2-D array (y, x; no z) opens as one z plane, as a 2-D OME-Zarr image does
        flat = "z" not in names and {"y", "x"} <= set(names)
        own_vs, own_offset, kind = _plain_attrs(attrs.get("voxgate"), location)
        # voxgate's own attribute first, then funlib.persistence's world-unit ones
        vs, offset, translation = funlib_geometry(attrs, names, location)
        if own_vs is not None:
            vs = own_vs
        if own_offset is not None or own_vs is not None:
            # (a world offset means nothing against a voxel size voxgate states otherwise)
            offset, translation = own_offset or Vec(0, 0, 0), None
        arr, channels = _as_czyx(store, names, location, offset, flat, time)
        dtype = np.dtype(store.dtype.numpy_dtype)
        shape = Vec(*arr.store.shape[-3:])
        chunks, shard = _chunk_shapes(arr.store)
        scale = Scale(0, shape, chunks, vs, offset, _encoding(store), None, translation)
        meta = VolumeMeta(
            dtype,
            (scale,),
            # a guess of segmentation for several channels (uint32 ones) is an image, as
            # the HDF5 store takes it: a segmentation has one channel
            _kind(kind or (_guess_kind(dtype) if channels == 1 else "image")),
            channels,
            _fill(store),
        )
        remote = cls(location, meta, [arr], mode, shard)
        return remote

    @classmethod
    def _open_multiscale(
        cls, location: str, ome: dict[str, Any], attrs: dict[str, Any], fmt: int, mode: str,
        multiscale: int | str | None = None, time: int | None = None,
    ) -> ZarrRemote:
        multiscales = ome.get("multiscales")
        if not multiscales:
            images = collection(location, ome, fmt)
            if images is not None and images.kind == "bioformats2raw" and len(images.paths) == 1:
                # one series: the file was one image, which opens under its own URL
                return cls.open(join(location, images.paths[0]), mode=mode,
                                multiscale=multiscale, time=time)
            if images is not None:
                raise images.refusal(location)
            members = _group_arrays(location, fmt)
            listed = ", ".join(f"zarr://{join(location, a)}" for a in members[:_LISTED])
            more = len(members) - _LISTED
            raise RemoteNotFoundError(
                f"{location!r} is a zarr group without OME-Zarr 'multiscales' metadata; open one "
                "of its arrays instead" + (
                    f": {listed}" + (f" ... and {more} more" if more > 0 else "") if members
                    else " (none was found in it: give the array's path after the group's, "
                    f"e.g. zarr://{join(location, '0')})")
            )
        if not isinstance(multiscales, list):
            raise InvalidRequestError(
                f"{location!r}: 'multiscales' must be a list of multiscale objects, got "
                f"{str(multiscales)[:80]}")
        k = _choose(multiscales, multiscale, location)
        ms = multiscales[k]
        # with several, errors name the one read, so another can be chosen
        where = location if len(multiscales) == 1 else (
            f"{location} (multiscale {_describe(multiscales, k)}; "
            f"multiscales {_describe(multiscales)})")
        datasets = _datasets(ms, where)
        info = attrs.get("voxgate", {}) if isinstance(attrs, dict) else {}
        driver = "zarr3" if fmt == 3 else "zarr"
        scales, arrays, stores = [], [], []
        dtype: np.dtype[Any] | None = None
        channels, shard0 = 1, None
        fill: int | float = 0
        frame: Frame | None = None
        for i, ds in enumerate(datasets):
            path = join(location, ds["path"])
            store = cls._open_store(path, driver, mode)
            stores.append(store)
            dtype = np.dtype(store.dtype.numpy_dtype)
            fill = _fill(store)
            if frame is None:
                frame = _frame(ms, store.rank, where)
            _check_rank(store, frame, path)
            voxel, translation = place(frame, datasets, i, lambda j: stores[j].shape, path)
            vs = VoxelSize.of(voxel)
            if i == 0:
                vs0, translation0 = vs, translation
            elif any(v < v0 * (1 - 1e-9) for v, v0 in zip(vs.zyx(), vs0.zyx(), strict=True)):
                raise InvalidRequestError(
                    f"{where!r}: dataset {ds['path']!r} has smaller voxels {vs.zyx()} nm "
                    f"than the first, {datasets[0]['path']!r} ({vs0.zyx()} nm); NGFF lists "
                    "datasets from the finest; open one level: "
                    + ", ".join(f"zarr://{join(location, d['path'])}" for d in datasets[:_LISTED])
                )
            # translations are pixel centres (NGFF): a downsampled scale's is half a block in
            # from scale 0's; the integer offset is what is left once that is taken off, and
            # the exact translation (sub-voxel parts included) is kept beside it
            offset = level_offset(translation, vs.zyx(), translation0, vs0.zyx())
            arr, channels = _as_czyx(store, frame.names, path, offset, frame.flat, time)
            chunks, shard = _chunk_shapes(arr.store)
            if i == 0:
                shard0 = shard
            scales.append(
                Scale(i, Vec(*arr.store.shape[-3:]), chunks, vs, offset, _encoding(store),
                      ds["path"], translation)
            )
            arrays.append(arr)
        assert dtype is not None
        meta = VolumeMeta(dtype, tuple(scales), _group_kind(info, ome, dtype, location),
                          channels, fill,
                          _ome_extra(ome, multiscales, k, channels, location))
        remote = cls(location, meta, arrays, mode, shard0, fmt)
        remote._multiscale, remote._ms_index = multiscale, k
        return remote

    @classmethod
    def _open_level(
        cls, location: str, driver: str, attrs: dict[str, Any], mode: str, doc: dict[str, Any],
        time: int | None = None,
    ) -> ZarrRemote | None:
        """The array at ``location`` as the level of an OME-Zarr image it is, when the
        multiscale of its parent group (or grandparent: a dataset path of two parts) lists
        it: axes, voxel size, offset and kind as the group gives that level, a single scale
        (so ``zarr://img.zarr/2`` is ``voxgate.open("zarr://img.zarr", scale=2)``); the
        array's own ``voxgate`` attribute wins where it states something.  None when no
        multiscale lists it (a plain array)."""
        fmt = 3 if driver == "zarr3" else 2
        found = _listing_multiscale(location, fmt)
        if found is None:
            return None
        group, group_attrs, ome, ms, k = found
        datasets = _datasets(ms, group)
        store = cls._open_store(location, driver, mode, doc)
        frame = _frame(ms, store.rank, group)
        _check_rank(store, frame, location)
        key = "zarr.json" if fmt == 3 else ".zarray"

        def shape_of(j: int) -> Sequence[int]:  # (the first dataset's read only if asked)
            if j == k:
                return list(store.shape)
            first = join(group, datasets[j]["path"])
            shape = _metadata(first, key).get("shape")
            if not isinstance(shape, list) or len(shape) != store.rank:
                raise InvalidRequestError(
                    f"{join(first, key)}: 'shape' must list the array's {store.rank} "
                    f"extents, got {shape!r}")
            return [int(n) for n in shape]

        voxel, translation = place(frame, datasets, k, shape_of, location)
        vs = VoxelSize.of(voxel)
        voxel0, translation0 = place(frame, datasets, 0, shape_of, join(
            group, datasets[0]["path"])) if k else (voxel, translation)
        if any(v < v0 * (1 - 1e-9) for v, v0 in zip(voxel, voxel0, strict=True)):
            # listed before a finer level (the group refuses that): this level stands alone
            voxel0, translation0 = voxel, translation
        offset = level_offset(translation, voxel, translation0, voxel0)
        own_vs, own_offset, own_kind = _plain_attrs(attrs.get("voxgate"), location)
        exact: tuple[float, float, float] | None = translation
        if own_vs is not None or own_offset is not None:
            # what the array states of itself wins; the group's translation no longer fits
            vs = own_vs if own_vs is not None else vs
            offset, exact = own_offset if own_offset is not None else offset, None
        arr, channels = _as_czyx(store, frame.names, location, offset, frame.flat,
                                         time)
        chunks, shard = _chunk_shapes(arr.store)
        dtype = np.dtype(store.dtype.numpy_dtype)
        info = group_attrs.get("voxgate", {})
        scale = Scale(0, Vec(*arr.store.shape[-3:]), chunks, vs, offset, _encoding(store),
                      None, exact)
        kind = own_kind or _group_kind(info, ome, dtype, location)
        multiscales = ome["multiscales"]
        index = next(i for i, m in enumerate(multiscales) if m is ms)
        meta = VolumeMeta(dtype, (scale,), _kind(kind), channels, _fill(store),
                          _ome_extra(ome, multiscales, index, channels, group))
        remote = cls(location, meta, [arr], mode, shard)
        return remote

    # -- creating -------------------------------------------------------------------------------
    @classmethod
    def exists(cls, location: str) -> bool:
        return any(kvstore_exists(location, m) for m in ("zarr.json", ".zarray", ".zgroup"))

    @classmethod
    def create(
        cls,
        location: str,
        meta: VolumeMeta,
        *,
        exist_ok: bool = False,
        zarr_format: int = 3,
        compression: str = "blosc-zstd",
        shards: Any = None,
        **options: Any,
    ) -> ZarrRemote:
        check_options("zarr://", options, cls.create_options, "create")
        _nm_per(meta.voxel_size.unit)  # an unknown unit is refused before anything is written
        if zarr_format not in (2, 3):
            raise InvalidRequestError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
        if compression not in _COMPRESSIONS:
            raise InvalidRequestError(
                f"compression must be one of {', '.join(_COMPRESSIONS)}, got {compression!r}"
            )
        if shards is not None and zarr_format != 3:
            raise InvalidRequestError("shards need zarr_format=3 (Zarr v2 has no sharding)")
        if shards is not None:
            # checked for every scale before any array is created
            shape = Vec.of(shards, "shards")
            for sc in meta.scales:
                if any(s < 1 or s % c for s, c in zip(shape, sc.chunks, strict=True)):
                    raise InvalidRequestError(
                        f"shards {tuple(shape)} must be positive multiples of the chunks "
                        f"{tuple(sc.chunks)} (z, y, x)"
                    )
        if cls.exists(location):
            return open_existing(cls, location, meta, exist_ok, "a zarr array or group")
        check_bucket(location, f"creating {location}")
        channels = meta.num_channels
        lead = [channels] if channels > 1 else []
        names = (["c"] if channels > 1 else []) + ["z", "y", "x"]
        datasets = []
        for sc in meta.scales:
            path = join(location, str(sc.index))
            chunk = lead + list(sc.chunks)
            shard = None
            if shards is not None:
                shard = lead + list(Vec.of(shards, "shards"))
                if any(s % c for s, c in zip(shard, chunk, strict=True)):
                    raise InvalidRequestError(
                        f"shards {tuple(shard)} must be a multiple of chunks {tuple(chunk)}"
                    )
            spec = _array_spec(
                path, zarr_format, lead + list(sc.shape), chunk, meta.dtype, compression,
                names, meta.fill_value, shard,
            )
            with ts_errors(f"creating zarr array {path}"):
                ts.open(spec, create=True, context=ts_context()).result()
            datasets.append({"path": str(sc.index),
                             "coordinateTransformations": _transforms(meta.scales[0], sc, lead)})
        axes = ([{"name": "c", "type": "channel"}] if channels > 1 else []) + [
            {"name": n, "type": "space", "unit": "nanometer"} for n in ("z", "y", "x")
        ]
        multiscale = {
            "name": location.rstrip("/").rsplit("/", 1)[-1],
            "axes": axes,
            "datasets": datasets,
            "type": "mean" if meta.kind == "image" else "mode",
        }
        voxgate_attrs = {"kind": meta.kind}
        ome: dict[str, Any] = {"multiscales": [multiscale]}
        if meta.kind == "image":
            # rendering settings napari and ome-zarr-py read (without them a viewer guesses)
            ome["omero"] = meta.extra.get("omero") or _omero_block(meta)  # (a copy: the source's)
        if zarr_format == 3:
            group = {
                "zarr_format": 3,
                "node_type": "group",
                "attributes": {
                    "ome": {"version": "0.5", **ome},
                    "voxgate": voxgate_attrs,
                },
            }
            write_json(location, "zarr.json", group)
        else:
            multiscale["version"] = "0.4"
            write_json(location, ".zgroup", {"zarr_format": 2})
            write_json(location, ".zattrs", {**ome, "voxgate": voxgate_attrs})
        return cls.open(location, mode="r+")

    @classmethod
    def delete(cls, location: str) -> None:
        """Remove a local zarr array or group (used by tests and ``copy --overwrite``)."""
        if not is_local(location):
            raise CapabilityNotSupportedError("only local zarr stores can be deleted")
        import shutil

        shutil.rmtree(local_path(location), ignore_errors=True)

    # -- data -----------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        if self.mode != "r+":
            return frozenset({Capability.CHUNK_PRESENCE})
        caps = {Capability.WRITE, Capability.CHUNK_PRESENCE}
        if self._group_format is not None:
            caps.add(Capability.ADD_SCALES)
        return frozenset(caps)

    def add_scales(self, scales: Sequence[Scale]) -> None:
        """New datasets beside the others, listed in ``multiscales``: each a copy of scale 0's
        array document (codecs, chunks, dimension order and names) with the new shape, and
        transformations in the group's own axis order and units, before its multiscale-level
        transformations (a ``t, c, z, y, x`` or ``x, y, z`` image keeps that order; s0's
        array attributes describe s0 and are not copied)."""
        self._check_writable()
        if self._group_format is None:
            raise CapabilityNotSupportedError(
                f"{self.url} is a plain zarr array; voxgate adds scales to OME-Zarr multiscale "
                "groups (voxgate.create makes one)"
            )
        if self._time_points > 1:
            # (new levels would hold this time point only, the others empty: an image whose
            # coarse levels show nothing at most times, which viewers would read as data)
            raise CapabilityNotSupportedError(
                f"{self.url} is a timelapse of {self._time_points} time points (a 't' axis) "
                f"opened at time={self._time}; voxgate does not add scales to a timelapse "
                "(new levels would hold this time point only); nothing was written.  Add the "
                "levels for every time point with another tool (ome-zarr-py), then "
                "voxgate.downsample each time point into them")
        check_new_scales(self.meta, scales)
        v3 = self._group_format == 3
        group_key = "zarr.json" if v3 else ".zattrs"
        group = read_json(self.location, group_key)
        attrs = group["attributes"] if v3 else group
        ome = attrs.get("ome", attrs) if v3 else attrs
        multiscales = ome["multiscales"]
        ms = multiscales[self._ms_index]
        first = ms["datasets"][0]
        array_key = "zarr.json" if v3 else ".zarray"
        template = read_json(join(self.location, first["path"]), array_key)
        # NGFF 0.1 / 0.2 list no axes: theirs by rank (a 5-D image is t, c, z, y, x), as read
        axes = ms.get("axes") or [{"name": n} for n in axis_names(
            ms, len(template["shape"]), repr(self.location))]
        axes = [a if isinstance(a, dict) else {"name": a} for a in axes]
        names = [a["name"] for a in axes]
        lowered = [str(n).lower() for n in names]
        rank = len(names)
        # opening checked they are there (z but for a 2-D image, whose new levels stay 2-D)
        flat = "z" not in lowered
        spatial = [lowered.index(n) for n in ("z", "y", "x") if n in lowered]
        if flat and any(sc.shape.z != 1 for sc in scales):
            raise InvalidRequestError(
                f"{self.url} is a 2-D image (one z plane); its new scales must have one "
                f"plane too, got shapes {[tuple(sc.shape) for sc in scales]}")
        # the multiscale's own transformations apply after each dataset's (as on reading)
        outer = ms.get("coordinateTransformations", [])
        outer_scale, outer_tr = _scale_transform(outer, rank), _translation(outer, rank)
        axis_nm = [_unit_factor(axes[j].get("unit"), f"{self.url} axis {names[j]!r}")
                   for j in spatial]
        if flat:
            axis_nm.insert(0, axis_nm[0])
        first_tf = first.get("coordinateTransformations", [])
        # the other axes (c, t, ...) keep scale 0's extent, scale and translation
        base_scale, base_tr = _scale_transform(first_tf, rank), _translation(first_tf, rank)
        dims = _array_dimensions(_optional_json(join(self.location, first["path"]), ".zattrs"),
                                 rank, first["path"]) if not v3 else []
        # paths of every multiscale's datasets are taken (several may share a group); a new
        # one goes beside the multiscale's first ("2d/0" gets "2d/3")
        taken = {_dataset_path(d["path"]) for m in multiscales if isinstance(m, dict)
                 for d in m.get("datasets") or () if isinstance(d, dict) and "path" in d}
        folder = _dataset_path(first["path"]).rpartition("/")[0]
        for sc in scales:
            path = join(folder, str(sc.index)) if folder else str(sc.index)
            if path in taken:
                path = join(folder, f"s{sc.index}") if folder else f"s{sc.index}"
            doc = {k: v for k, v in template.items() if k != "attributes"}
            if v3:
                doc["attributes"] = {}
            shape, scale, shift = list(template["shape"]), list(base_scale), list(base_tr)
            size, shift_zyx = _world_transforms(self.meta.scales[0], sc, axis_nm)
            zyx = list(zip(sc.shape, size, shift_zyx, strict=True))[1 if flat else 0:]
            for j, (n, s, t) in zip(spatial, zyx, strict=True):
                shape[j] = n
                scale[j] = s / outer_scale[j]
                shift[j] = (t - outer_tr[j]) / outer_scale[j]
            doc["shape"] = shape
            write_json(join(self.location, path), array_key, doc)
            if dims:  # xarray's dimension names, as scale 0 has them
                write_json(join(self.location, path), ".zattrs", {"_ARRAY_DIMENSIONS": dims})
            ms["datasets"].append({"path": path, "coordinateTransformations": [
                {"type": "scale", "scale": scale},
                {"type": "translation", "translation": shift}]})
        write_json(self.location, group_key, group)
        fresh = ZarrRemote.open(self.location, mode="r+", multiscale=self._ms_index,
                                time=self._time)
        self.meta, self._arrays = fresh.meta, fresh._arrays

    def spec(self) -> dict[str, Any]:
        # the multiscale chosen travels with the volume: a worker or the relay reopened the
        # group's first one
        out = super().spec()
        if self._multiscale is not None:
            out["options"] = {**out.get("options", {}), "multiscale": self._multiscale}
        if self._time is not None:  # (the time point read: a reopen reads the same one)
            out["options"] = {**out.get("options", {}), "time": self._time}
        return out

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        if self.missing == "error":
            self._check_present(box, scale)
        return self._arrays[scale].read(box)

    def absent_chunks(self, box: Box, scale: int = 0) -> list[Vec]:
        sc = self.meta.scale(scale)
        return self._arrays[scale].absent_chunks(box, sc.chunks, sc.bounds)

    def listing_order(self, scale: int = 0) -> tuple[int, ...]:
        return self._arrays[scale].listing_order()

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._check_writable()
        self._arrays[scale].write(box, array)

    def write_grid(self, scale: int = 0) -> Vec:
        if self._shard_shape is not None and scale == 0:
            return self._shard_shape
        _, shard = _chunk_shapes(self._arrays[scale].store)
        return shard or self.meta.scale(scale).chunks


#: arrays named in the refusal of a group that is not an image, before "... and N more"
_LISTED = 20


def _datasets(ms: object, location: str) -> list[dict[str, Any]]:
    """The ``datasets`` of the multiscale ``ms``, each a dict with a path; refused otherwise."""
    datasets = ms.get("datasets") if isinstance(ms, dict) else None
    if not isinstance(datasets, list) or not datasets or not all(
            isinstance(d, dict) and isinstance(d.get("path"), str) for d in datasets):
        raise InvalidRequestError(
            f"{location!r}: the multiscale's 'datasets' must list the paths of its "
            f"arrays, got {datasets!r}"
        )
    return datasets


def _check_choice(choice: object) -> None:
    """Refuse a ``multiscale`` option that is neither a name nor an index."""
    if choice is not None and (isinstance(choice, bool) or not isinstance(choice, (int, str))):
        raise InvalidRequestError(
            f"multiscale must be the name (a string) or the index (an integer) of one of an "
            f"OME-Zarr image's multiscales, got {choice!r}")


def _no_choice(location: str, choice: object) -> None:
    """Refuse the ``multiscale`` option for an array, where there is nothing to choose."""
    if choice is not None:
        raise InvalidRequestError(
            f"{location!r} is a zarr array, not an OME-Zarr group; multiscale={choice!r} "
            "chooses among the multiscales of a group: open the group with it, or the array "
            "without it")


def _names(multiscales: list[Any]) -> list[str | None]:
    """The ``name`` of each multiscale (None where it has none)."""
    return [m.get("name") if isinstance(m, dict) and isinstance(m.get("name"), str) else None
            for m in multiscales]


def _describe(multiscales: list[Any], k: int | None = None) -> str:
    """``0 ('3D'), 1 ('2D'), 2 (unnamed)``, or that of multiscale ``k`` alone."""
    names = _names(multiscales)
    return ", ".join(f"{i} ({'unnamed' if n is None else repr(n)})"
                     for i, n in enumerate(names) if k is None or i == k)


def _choose(multiscales: list[Any], choice: int | str | None, location: str) -> int:
    """The index of the multiscale ``choice`` names (a name, or an index): the first when
    None; refused, listing them all, when it names none."""
    if choice is None:
        return 0
    if isinstance(choice, int):
        if 0 <= choice < len(multiscales):
            return choice
    else:
        names = _names(multiscales)
        if choice in names:
            return names.index(choice)
    raise InvalidRequestError(
        f"{location!r} has no multiscale {choice!r}; its multiscales are "
        f"{_describe(multiscales)}: pass multiscale= one of those names or indices")


#: the colours voxgate gives the channels of an image it creates (``omero``), in turn
_CHANNEL_COLOURS = ("FF0000", "00FF00", "0000FF", "FF00FF", "00FFFF", "FFFF00")


def _ome_extra(ome: dict[str, Any], multiscales: list[Any], k: int, channels: int,
               where: str) -> dict[str, Any]:
    """What an OME-Zarr image says beyond its voxels, for ``VolumeMeta.extra``: the index of
    the multiscale read (``multiscale``) and the names of all (``multiscales``); its
    ``omero`` block as stored, and the channels' labels from it (``channel_names``, one per
    channel; ``channel_i`` where a channel has none, as ome-zarr-py names them)."""
    extra: dict[str, Any] = {"multiscale": k, "multiscales": _names(multiscales)}
    omero = ome.get("omero")
    if omero is None:
        return extra
    listed = omero.get("channels") if isinstance(omero, dict) else None
    if not isinstance(listed, list) or not all(isinstance(c, dict) for c in listed):
        warn_ignored(f"{where}: attribute omero = {str(omero)[:80]!r}",
                     "it does not list its channels (NGFF: 'channels', an object each); the "
                     "image is read without it", stacklevel=5)
        return extra
    extra["omero"] = omero
    if len(listed) != channels:
        warn_ignored(f"{where}: the channel labels of attribute omero",
                     f"it lists {len(listed)} channels and the image has {channels}",
                     stacklevel=5)
        return extra
    extra["channel_names"] = [c["label"] if isinstance(c.get("label"), str) else f"channel_{i}"
                              for i, c in enumerate(listed)]
    return extra


def _omero_block(meta: VolumeMeta) -> dict[str, Any]:
    """The ``omero`` block ``create`` writes for an image (NGFF's transitional rendering
    settings, which napari and ome-zarr-py read): one channel each, labelled ``channel_i``
    (or as ``meta.extra["channel_names"]`` says), white for a single channel and otherwise
    coloured in turn, with the dtype's range as ``min``/``max`` and the window over it
    (0 to 1 for floats, whose range says nothing of the data)."""
    dtype = meta.dtype
    lo: int | float
    hi: int | float
    if dtype.kind == "f":
        info = np.finfo(dtype)
        lo, hi, start, end = float(info.min), float(info.max), 0.0, 1.0
    else:
        iinfo = np.iinfo(dtype)
        lo, hi = int(iinfo.min), int(iinfo.max)
        start, end = lo, hi
    names = meta.extra.get("channel_names")
    if not (isinstance(names, list) and len(names) == meta.num_channels
            and all(isinstance(n, str) for n in names)):
        names = [f"channel_{i}" for i in range(meta.num_channels)]
    n = meta.num_channels
    return {"channels": [
        {"label": name, "active": True,
         "color": "FFFFFF" if n == 1 else _CHANNEL_COLOURS[i % len(_CHANNEL_COLOURS)],
         "window": {"min": lo, "max": hi, "start": start, "end": end}}
        for i, name in enumerate(names)
    ], "rdefs": {"model": "greyscale" if n == 1 else "color"}}


def _frame(ms: dict[str, Any], rank: int, location: str) -> Frame:
    """The :class:`Frame` of the multiscale ``ms`` of the group at ``location``, whose arrays
    have ``rank`` dimensions: axis names, units in nm, its own transformations."""
    names = axis_names(ms, rank, repr(location))
    axes = [a if isinstance(a, dict) else {} for a in ms.get("axes") or names]
    spatial = [names.index(n) for n in ("z", "y", "x") if n in names]
    units = [_unit_factor(axes[j].get("unit"), f"{location!r} axis {names[j]!r}")
             for j in spatial]
    if len(units) == 2:  # a 2-D image: its one z plane is measured in y's unit
        units.insert(0, units[0])
    # the multiscale's own transformations apply after each dataset's (NGFF)
    scale, translation, _ = compose(ms.get("coordinateTransformations"), rank, repr(location))
    return Frame(names, spatial, units, scale, translation)


def _check_rank(store: ts.TensorStore, frame: Frame, path: str) -> None:
    if store.rank != len(frame.names):
        raise InvalidRequestError(
            f"{path} is {store.rank}-D; the multiscale's axes are {frame.names}")


def _group_kind(info: object, ome: dict[str, Any], dtype: np.dtype[Any], where: str) -> Kind:
    """An OME-Zarr image's kind: the group's ``voxgate`` attribute's, else segmentation for a
    label image (``image-label``), else a guess from the dtype.  A stated kind voxgate cannot
    read is ignored with a VoxgateWarning naming the group (``where``), as a plain array's is:
    it made the whole group unreadable, with an error naming no file."""
    stated = info.get("kind") if isinstance(info, dict) else None
    if stated is not None and stated not in ("image", "segmentation"):
        warn_ignored(*_unreadable(where, "voxgate.kind", stated, "a kind guessed from the "
                                  "dtype (segmentation for a label image)"), stacklevel=3)
        stated = None
    return _kind(stated or ("segmentation" if "image-label" in ome else _guess_kind(dtype)))


#: how many groups up from an array a multiscale that lists it is looked for (a dataset path
#: of one part is in the parent, of two parts in the grandparent)
_LEVEL_DEPTH = 2


def _listing_multiscale(
    location: str, fmt: int
) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], int] | None:
    """(group location, its attributes, its OME attributes, the multiscale, the dataset's
    index) of the OME-Zarr multiscale whose ``datasets`` list the array at ``location``, in
    its parent group or, when the parent holds no multiscale, its grandparent; None when
    none does (a parent multiscale that does not list the array ends the search)."""
    here, rel = location, ""
    for _ in range(_LEVEL_DEPTH):
        up = _parent(here)
        if up is None:
            return None
        here, name = up
        rel = f"{name}/{rel}" if rel else name
        attrs = _group_attributes(here, fmt)
        ome = attrs.get("ome", attrs) if fmt == 3 else attrs
        multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
        if not isinstance(multiscales, list) or not multiscales:
            continue
        for ms in multiscales:
            datasets = ms.get("datasets") if isinstance(ms, dict) else None
            for k, ds in enumerate(datasets if isinstance(datasets, list) else []):
                path = ds.get("path") if isinstance(ds, dict) else None
                if isinstance(path, str) and _dataset_path(path) == rel:
                    assert isinstance(ome, dict) and isinstance(ms, dict)
                    return here, attrs, ome, ms, k
        return None
    return None


def _dataset_path(path: str) -> str:
    path = path.strip("/")
    while path.startswith("./"):
        path = path[2:]
    return path


def _parent(location: str) -> tuple[str, str] | None:
    """(parent location, last path part) of ``location``; None at a filesystem root, a
    bucket or a host.  An http(s) location's query (a token) stays on the parent."""
    location, query = split_query(location)
    loc = location.rstrip("/")
    head = 0
    if "://" in loc:
        head = loc.index("://") + 3
        if not loc.startswith("file://"):
            # a bucket (gs://bucket/...) or host may be the group; nothing lies above it
            head = loc.find("/", head)
            if head < 0:
                return None
            head -= 1
    cut = loc.rfind("/")
    if cut <= head:
        return None
    return loc[:cut] + query, loc[cut + 1:]


def _group_attributes(location: str, fmt: int) -> dict[str, Any]:
    """The attributes of the group at ``location`` ({} when there is none, or it cannot be
    read for want of permission: object stores refuse absent keys so)."""
    try:
        if fmt == 3:
            doc = read_json(location, "zarr.json")
            if not isinstance(doc, dict) or doc.get("node_type") != "group":
                return {}
            attrs = doc.get("attributes")
        else:
            attrs = read_json(location, ".zattrs")
    except (RemoteNotFoundError, PermissionError):
        return {}
    return attrs if isinstance(attrs, dict) else {}


#: the members of an array's metadata document tensorstore requires, by driver: one without
#: them all is not handed on (tensorstore would take defaults for what is missing) but left
#: for tensorstore to read, and refuse
_REQUIRED = {
    "zarr": ("zarr_format", "shape", "chunks", "dtype", "compressor", "fill_value", "order",
             "filters"),
    "zarr3": ("zarr_format", "node_type", "shape", "data_type", "chunk_grid",
              "chunk_key_encoding", "fill_value", "codecs"),
}
#: the members of a Zarr v2 .zarray tensorstore takes in a spec (it ignores others in a file
#: and refuses them in a spec; Zarr v3 has must_understand for that, read alike in both)
_ZARR2_MEMBERS = (*_REQUIRED["zarr"], "dimension_separator")


def _handed_on(doc: dict[str, Any], driver: str) -> dict[str, Any] | None:
    """The metadata document ``doc`` as tensorstore takes it in a spec (``assume_metadata``:
    it then reads no metadata itself), or None when it lacks a member tensorstore requires."""
    if not all(k in doc for k in _REQUIRED[driver]):
        return None
    if driver == "zarr":
        return {k: doc[k] for k in _ZARR2_MEMBERS if k in doc}
    return doc


@overload
def _metadata(location: str, key: str) -> dict[str, Any]: ...
@overload
def _metadata(location: str, key: str, *, optional: bool) -> dict[str, Any] | None: ...
def _metadata(location: str, key: str, *, optional: bool = False) -> dict[str, Any] | None:
    """A zarr metadata document: a JSON object (read_json refuses text that is not JSON);
    with ``optional``, None when there is none (one read, where a check then a read are two
    requests on object storage)."""
    try:
        doc = read_json(location, key)
    except RemoteNotFoundError:
        if optional:
            return None
        raise
    if not isinstance(doc, dict):
        raise InvalidRequestError(
            f"{join(location, key)} is not zarr metadata: a JSON object was expected, got "
            f"{type(doc).__name__} {str(doc)[:60]}"
        )
    return doc


def _dtype_refusal(where: str, dtype: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{where} holds {dtype} voxels; voxgate reads {', '.join(SUPPORTED_DTYPES)} (read "
        "this array with zarr-python or tensorstore, or store a converted copy)"
    )


def _check_array_doc(doc: dict[str, Any], where: str) -> None:
    """Refuse, naming ``where``, what tensorstore would refuse with an error about parsing
    (or read as something voxgate cannot hold): a dtype voxgate has no place for (strings,
    objects, structured records, datetimes; bool, float16 and complex, which no other store
    voxgate writes holds) and Zarr v2 ``filters``, which tensorstore does not apply."""
    v3 = doc.get("zarr_format") == 3 or "data_type" in doc
    dtype = doc.get("data_type") if v3 else doc.get("dtype")
    if not isinstance(dtype, str):  # a structured (v2) or extension (v3) type
        raise _dtype_refusal(where, json.dumps(dtype)[:80])
    try:
        name = np.dtype(dtype).newbyteorder("=").name
    except TypeError:
        name = dtype
    if name not in SUPPORTED_DTYPES:
        raise _dtype_refusal(where, repr(dtype) + ("" if name == dtype else f" ({name})"))
    filters = [] if v3 else doc.get("filters")
    if filters:
        ids = [f.get("id") if isinstance(f, dict) else f for f in filters]
        raise CapabilityNotSupportedError(
            f"{where} has Zarr v2 filters {ids}, which voxgate's zarr reader (tensorstore) "
            "does not apply; read it with zarr-python, or store a copy without filters"
        )


_SPEC_TAIL = re.compile(r"\s*\[tensorstore_spec=.*$", re.S)
_READ_PREFIX = re.compile(r"^.*?Error reading [^:]*\"[^\"]*\":\s*", re.S)


def _metadata_refusal(text: str, where: str) -> VoxgateError | None:
    """tensorstore's refusal of the metadata at ``where`` (a codec it does not know, a
    dtype it cannot hold, fields that do not agree) as an error of voxgate's that names the
    file, or None when the failure was not about the metadata."""
    if "Error parsing" not in text and "Invalid JSON" not in text:
        return None
    detail = _READ_PREFIX.sub("", _SPEC_TAIL.sub("", text)).strip()
    codec = re.search(r'"([^"]+)" is not registered', detail)
    if codec:
        return CapabilityNotSupportedError(
            f"{where} uses the codec {codec.group(1)!r}, which voxgate's zarr reader "
            f"(tensorstore) does not have ({detail})"
        )
    if "dtype" in detail or "data_type" in detail:
        return InvalidRequestError(
            f"{where}: a data type voxgate cannot read ({detail}); voxgate reads "
            f"{', '.join(SUPPORTED_DTYPES)}"
        )
    return InvalidRequestError(f"{where} is not valid zarr array metadata: {detail}")


def _array_dimensions(attrs: dict[str, Any], rank: int, where: str) -> list[str]:
    """The dimension names of a Zarr v2 array from xarray's ``_ARRAY_DIMENSIONS`` attribute
    ([] without one); one that does not name each dimension once is refused."""
    names = attrs.get("_ARRAY_DIMENSIONS")
    if names is None:
        return []
    if (not isinstance(names, list) or len(names) != rank
            or not all(isinstance(n, str) for n in names) or len(set(names)) != rank):
        raise InvalidRequestError(
            f"{where}: _ARRAY_DIMENSIONS must name each of the array's {rank} dimensions "
            f"once, got {names!r}"
        )
    return list(names)


def _plain_attrs(info: object, where: str) -> tuple[VoxelSize | None, Vec | None, Kind | None]:
    """Voxel size, offset and kind of a plain array from its ``voxgate`` attribute (None for
    each it does not state).  A malformed entry is ignored with a VoxgateWarning naming the
    array and the fallback, as the HDF5 and N5 stores do, so the voxels stay readable."""
    vs: VoxelSize | None = None
    offset: Vec | None = None
    kind: Kind | None = None
    if info is None:
        return vs, offset, kind
    if not isinstance(info, dict):
        warn_ignored(*_unreadable(where, "voxgate", info, _FALLBACK), stacklevel=3)
        return vs, offset, kind
    if "voxel_size" in info or "unit" in info:
        try:
            vs = VoxelSize.of(info.get("voxel_size", (1, 1, 1)), info.get("unit", "nm"))
        except (InvalidRequestError, TypeError, ValueError):
            warn_ignored(*_unreadable(where, "voxgate.voxel_size", info.get("voxel_size"),
                                      "the voxel size other attributes state, else 1 nm"),
                         stacklevel=3)
    if "offset" in info:
        try:
            offset = Vec.of(info["offset"], "offset")
        except (InvalidRequestError, TypeError, ValueError):
            warn_ignored(*_unreadable(where, "voxgate.offset", info["offset"],
                                      "the offset other attributes state, else 0"), stacklevel=3)
    if "kind" in info:
        if info["kind"] in ("image", "segmentation"):
            kind = info["kind"]
        else:
            warn_ignored(*_unreadable(where, "voxgate.kind", info["kind"],
                                      "a kind guessed from the dtype"), stacklevel=3)
    return vs, offset, kind


_FALLBACK = "the voxel size and offset other attributes state, else 1 nm voxels at offset 0"


def _unreadable(where: str, key: str, value: object, fallback: str) -> tuple[str, str]:
    """What :func:`warn_ignored` says of a ``voxgate`` attribute entry voxgate cannot read."""
    return (f"{where}: attribute {key} = {str(value)[:80]!r}",
            f"it is not one voxgate can read; voxgate uses {fallback}")


def _group_arrays(location: str, fmt: int) -> list[str]:
    """Paths of the arrays in the group at ``location``: from its consolidated metadata
    (``.zmetadata``, or ``consolidated_metadata`` in zarr.json), else from the directory when
    local; [] when neither tells."""
    try:
        if fmt == 3:
            doc = _metadata(location, "zarr.json").get("consolidated_metadata") or {}
            nodes = doc.get("metadata") if isinstance(doc, dict) else None
            if isinstance(nodes, dict):
                return sorted(k for k, v in nodes.items()
                              if isinstance(v, dict) and v.get("node_type") == "array")
        elif kvstore_exists(location, ".zmetadata"):
            nodes = _metadata(location, ".zmetadata").get("metadata")
            if isinstance(nodes, dict):
                return sorted(k[: -len("/.zarray")] for k in nodes if k.endswith("/.zarray"))
    except VoxgateError:
        pass  # a damaged listing only costs the names in a refusal
    if not is_local(location):
        return []
    root = local_path(location)
    key = "zarr.json" if fmt == 3 else ".zarray"
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if dirpath != root and key in filenames:
            rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
            if fmt == 2 or _is_array_node(dirpath):
                found.append(rel)
                dirnames.clear()  # an array's chunk directories hold no arrays
        if len(found) > _LISTED:
            break
    return sorted(found)


def _is_array_node(directory: str) -> bool:
    try:
        with open(os.path.join(directory, "zarr.json"), "rb") as f:
            return bool(json.load(f).get("node_type") == "array")
    except (OSError, ValueError, AttributeError):
        return False


def _optional_json(location: str, key: str) -> dict[str, Any]:
    try:
        value = read_json(location, key)
    except RemoteNotFoundError:
        return {}
    return value if isinstance(value, dict) else {}


def _as_czyx(
    store: ts.TensorStore, names: list[str], where: str, offset: Vec | None = None,
    flat: bool = False, time: int | None = None,
) -> tuple[TSArray, int]:
    """A TSArray over ``store``, dimensions reordered to ([c,] z, y, x), x y z from ``offset``,
    and its channel count (the length of its time axis: ``TSArray.time_points``).
    ``flat``: a 2-D image or plain array (y and x, no z), given a z dimension of length 1 (a
    view: reads and writes reach the 2-D array, nothing is stored for it).  ``time``: the
    time point of a 't' axis the view is at (:func:`time_index`)."""
    names = [n.lower() if n else "" for n in names]
    view = store
    if flat and "z" not in names and {"y", "x"} <= set(names):
        view = view[ts.newaxis][ts.d[0].mark_bounds_implicit[False]]
        names = ["z", *names]
    if not {"z", "y", "x"} <= set(names):
        raise InvalidRequestError(
            f"{where} has axes {names}; voxgate needs z, y and x (plus optional c and t)"
        )
    channel_names = [n for n in names if n in ("c", "channel", "ch")]
    if len(channel_names) > 1:
        # (as n5:// and tensorstore:// refuse it: the second was neither read nor dropped)
        raise InvalidRequestError(f"{where} has more than one channel axis: {names}")
    # the time axis is indexed at the time point asked for; another axis of size 1 is
    # dropped, a longer one refused
    view, current, points = at_time_point(view, names, ("z", "y", "x", *channel_names), time,
                                          where)
    order = [current.index(n) for n in (*channel_names[:1], "z", "y", "x")]
    if order != list(range(len(current))):
        view = view[ts.d[order].transpose[:]]
    # dataset coordinates: the offset, whatever the stored origin
    lead = (0,) if channel_names else ()
    view = view[ts.d[:].translate_to[(*lead, *(offset or (0, 0, 0)))]]
    channels = view.shape[0] if channel_names else 1
    arr = TSArray(
        view, reversed_axes=False, channel=bool(channel_names), keep_channel=channels > 1,
        name=where, reference_writes=True,  # opened with ts_context() alone
    )
    arr.time_points = points
    return arr, channels


def _chunk_shapes(store: ts.TensorStore) -> tuple[Vec, Vec | None]:
    layout = store.chunk_layout
    # (a 2-D image's added z dimension has no chunk size: its chunks are one plane)
    read = [int(v or 1) for v in layout.read_chunk.shape or ()]
    write = [int(v or 1) for v in layout.write_chunk.shape or ()]
    chunks = Vec(*read[-3:])
    shard = Vec(*write[-3:]) if write != read else None
    return chunks, shard


def _encoding(store: ts.TensorStore) -> str | None:
    """The compression as create's ``compression`` names it ("blosc-zstd", "gzip", ...)."""
    codec = store.codec
    spec = codec.to_json() if codec is not None else {}
    if "compressor" in spec:  # zarr v2
        comp = spec["compressor"]
        if not comp:
            return "none"
        return f"blosc-{comp['cname']}" if comp.get("id") == "blosc" else str(comp.get("id"))
    codecs = list(spec.get("codecs", []))
    while codecs and codecs[0].get("name") == "sharding_indexed":
        codecs = codecs[0].get("configuration", {}).get("codecs", [])
    for c in codecs:
        name = c.get("name")
        if name == "blosc":
            return f"blosc-{c.get('configuration', {}).get('cname', 'lz4')}"
        if name in ("gzip", "zstd"):
            return str(name)
    return "none"


def _fill(store: ts.TensorStore) -> int | float:
    fv = store.fill_value
    if fv is None:
        return 0
    value = np.asarray(fv).item()
    return value if isinstance(value, (int, float)) else 0


def _transforms(base: Scale, sc: Scale, lead: list[int]) -> list[dict[str, Any]]:
    """A dataset's ``coordinateTransformations`` as ``create`` writes them (nanometre axes,
    ``lead`` channel axes first): its voxel size, then the pixel-centre translation."""
    scale, shift = _world_transforms(base, sc)
    return [
        {"type": "scale", "scale": [1.0] * len(lead) + scale},
        {"type": "translation", "translation": [0.0] * len(lead) + shift},
    ]


def _world_transforms(base: Scale, sc: Scale, axis_nm: Sequence[float] = (1.0, 1.0, 1.0)
                      ) -> tuple[list[float], list[float]]:
    """(voxel size, pixel-centre translation) of ``sc``, z y x, in units of ``axis_nm``
    nanometres (the axes' units; nm by default): the translation is half a block in from
    scale 0's for a downsampled scale, as NGFF and ome-zarr-py place it, and exactly the
    store's own when the scale was read with one."""
    nm = _nm_per(sc.voxel_size.unit)
    scale = [v * nm / a for v, a in zip(sc.voxel_size.zyx(), axis_nm, strict=True)]
    shift = [v * nm / a for v, a in zip(centre_translation(base, sc), axis_nm, strict=True)]
    return scale, shift


def _nm_per(unit: str) -> float:
    """Nanometres per ``unit`` of a VoxelSize: the axes voxgate writes are in nanometres, so
    a voxel size in another unit is converted, never written as if it were nm."""
    factor = length_unit_nm(unit)
    if factor is None:
        raise InvalidRequestError(
            f"voxel size unit {unit!r} is not a length unit voxgate knows; use one of "
            f"{', '.join(UNITS_NM)}"
        )
    return factor


def _scale_transform(transforms: list[dict[str, Any]], rank: int) -> list[float]:
    """The scale of ``transforms`` composed in order (as on reading)."""
    return compose(transforms, rank, "coordinateTransformations")[0]


def _translation(transforms: list[dict[str, Any]], rank: int) -> list[float]:
    """The translation of ``transforms`` composed in order (as on reading)."""
    return compose(transforms, rank, "coordinateTransformations")[1]


def _blosc_typesize(dtype: np.dtype[Any]) -> int:
    return int(dtype.itemsize)


def _array_spec(
    location: str,
    zarr_format: int,
    shape: list[int],
    chunks: list[int],
    dtype: np.dtype[Any],
    compression: str,
    names: list[str],
    fill_value: int | float,
    shard: list[int] | None,
) -> dict[str, Any]:
    if zarr_format == 2:
        compressor: dict[str, Any] | None
        if compression.startswith("blosc"):
            compressor = {
                "id": "blosc",
                "cname": compression.split("-")[1],
                "clevel": 5,
                "shuffle": 1 if dtype.itemsize > 1 else 2,
                "blocksize": 0,
            }
        elif compression == "gzip":
            compressor = {"id": "gzip", "level": 5}
        elif compression == "zstd":
            compressor = {"id": "zstd", "level": 3}
        else:
            compressor = None
        return {
            "driver": "zarr",
            "kvstore": kvstore_spec(location),
            "metadata": {
                "shape": shape,
                "chunks": chunks,
                "dtype": dtype.str,
                "compressor": compressor,
                "fill_value": fill_value,
                "order": "C",
                "dimension_separator": "/",
            },
        }
    codecs: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if compression.startswith("blosc"):
        codecs.append(
            {
                "name": "blosc",
                "configuration": {
                    "cname": compression.split("-")[1],
                    "clevel": 5,
                    "shuffle": "shuffle" if dtype.itemsize > 1 else "bitshuffle",
                    "typesize": _blosc_typesize(dtype),
                    "blocksize": 0,
                },
            }
        )
    elif compression == "gzip":
        codecs.append({"name": "gzip", "configuration": {"level": 5}})
    elif compression == "zstd":
        codecs.append({"name": "zstd", "configuration": {"level": 3, "checksum": False}})
    grid = chunks
    if shard is not None:
        # a checksum per inner chunk: a damaged byte in a shard is an error, never silent garbage
        codecs = [*codecs, {"name": "crc32c"}]
        codecs = [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": chunks,
                    "codecs": codecs,
                    "index_codecs": [
                        {"name": "bytes", "configuration": {"endian": "little"}},
                        {"name": "crc32c"},
                    ],
                    "index_location": "end",
                },
            }
        ]
        grid = shard
    return {
        "driver": "zarr3",
        "kvstore": kvstore_spec(location),
        "metadata": {
            "shape": shape,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": grid}},
            "chunk_key_encoding": {"name": "default"},
            "data_type": dtype.name,
            "fill_value": fill_value,
            "codecs": codecs,
            "dimension_names": names,
        },
    }

