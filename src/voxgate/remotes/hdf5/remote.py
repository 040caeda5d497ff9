"""The HDF5 Remote: opening and creating volumes, adding scales, reads and writes under the
file's lock, chunk presence and locating damaged chunks."""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import h5py
import numpy as np

from ...errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    MissingChunkError,
    ReadOnlyError,
    RemoteExistsError,
    RemoteNotFoundError,
    VoxgateError,
)
from ...geometry import Box, Vec, VoxelSize, chunk_boxes
from ...meta import Kind, Scale, VolumeMeta, check_new_scales
from ..base import Capability, Remote, check_options, check_same_volume, format_chunks
from .create import (
    _create_dataset,
    _create_volume,
    _follow_base_attrs,
    _plain,
    _write_scale_attrs,
)
from .files import _acquire, _release, _SharedFile, _split, _using
from .layout import (
    DEFAULT_DATASET,
    _attr,
    _axis_names,
    _bdv_factors,
    _bdv_storage_dtype,
    _check_dtype,
    _guess_kind,
    _is_multiscale,
    _is_n5_hdf5,
    _is_volume_dataset,
    _listing,
    _n5_attrs,
    _n5_scale,
    _resolve_default,
    _scale_factors,
    _triple,
    _voxel_offset,
    _voxel_size,
)

__all__ = ["HDF5Remote"]

_COMPRESSIONS = ("gzip", "none")
#: chunk shape of contiguous datasets for voxgate's block splitting (HDF5 has none to offer)
_CONTIGUOUS_BLOCK = 64


class HDF5Remote(Remote):
    scheme = "hdf5"
    open_options = ("hold_write", "hold_open")
    create_options = ("compression", "compression_level", "checksum")

    def __init__(
        self,
        shared: _SharedFile,
        name: str,
        meta: VolumeMeta,
        datasets: list[str],
        channel_axis: bool,
        mode: str,
        storage_dtype: np.dtype[Any] | None = None,
        holds: bool = False,
        flat: bool = False,
        keeps: bool = True,
    ) -> None:
        self._shared = shared
        self.path = shared.path
        self.name = name
        self.meta = meta
        self._datasets = datasets
        # a 4-D dataset of one channel is read as 3-D: its channel axis is dropped / re-added
        self._channel_axis = channel_axis
        #: a 2-D dataset (y, x), or a 3-D one (c, y, x) whose axis names say so, read and
        #: written as a volume of one z plane
        self._flat = flat
        # the file's dtype where it differs from meta.dtype (BigDataViewer's uint16 as int16):
        # read and written by reinterpreting the bytes, never by HDF5's clipping conversion
        self._storage_dtype = storage_dtype
        self.mode = mode
        #: whether this Remote keeps the file open read-write from its open to its close
        self._holds = holds
        #: whether this Remote keeps the file open between its reads and writes
        self._keeps = keeps
        self.url = f"hdf5://{self.path}#{name}"
        #: each dataset's shape and dtype as opened, and the opening of the shared handle it
        #: was last checked against (the file may have been written by another process since)
        self._layout: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
        self._checked: dict[str, int] = {}
        self._finalizer = weakref.finalize(self, _release, shared, hold=holds, keep=keeps)

    def close(self) -> None:
        """Stop using the file; the last Remote on a file closes it (which flushes it)."""
        self._finalizer()

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str, *, mode: str = "r", hold_write: bool | None = None,
             hold_open: bool = True, **options: Any) -> HDF5Remote:
        """Open a volume of an HDF5 file.

        HDF5 locks the file while it is open: many readers or one writer.  With ``mode="r+"``
        the file is open read-write from here to :meth:`close` (no other process can open it,
        not even to read) unless ``hold_write=False``: the file is then open read-only, and
        each write (or :meth:`add_scales`) reopens it read-write, writes, flushes and closes
        it, so between writes other processes can read the file (and see what was written).
        A write while another process has the file open fails, saying it is locked.  The
        relay opens its HDF5 upstreams so.

        ``hold_open=False`` (for a file that several processes read and write at once: the
        relay's worker processes) keeps no handle between reads and writes: each one opens the
        file, under a lock those processes share (shared for a read, exclusive for a write),
        and closes it, so a write waits for the reads in progress and every read after it sees
        it.  ``hold_write`` is then false; asking for both is an error.
        """
        cls.check_open_options({**options, "hold_write": hold_write, "hold_open": hold_open})
        path, name = _split(location, check="open")
        holds = mode == "r+" and (hold_open if hold_write is None else hold_write)
        if mode == "r+" and not holds and os.path.exists(path) and not os.access(path, os.W_OK):
            # (said now, as opening it read-write would: the file is not taken for writing
            # until a write comes)
            raise ReadOnlyError(f"cannot open {path} with mode 'r+': no permission to write it")
        shared = _acquire(path, writable=holds, hold=holds, keep=hold_open)
        try:
            with _using(shared, writable=holds, keep=hold_open, hold=holds) as f:
                if name is None:
                    name = _resolve_default(f, path)
                return cls._from_object(shared, f, name, mode, holds, hold_open)
        except BaseException:
            _release(shared, hold=holds, keep=hold_open)
            raise

    @classmethod
    def check_open_options(cls, options: Mapping[str, Any]) -> None:
        """``hold_write`` (None: not given) and ``hold_open`` are true or false, and not
        ``hold_write=True`` with ``hold_open=False`` (see :meth:`open`)."""
        super().check_open_options(options)
        hold_write, hold_open = options.get("hold_write"), options.get("hold_open", True)
        if hold_write is not None and not isinstance(hold_write, bool):
            raise InvalidRequestError(f"hold_write must be true or false, got {hold_write!r}")
        if not isinstance(hold_open, bool):
            raise InvalidRequestError(f"hold_open must be true or false, got {hold_open!r}")
        if hold_write and not hold_open:
            raise InvalidRequestError(
                "hold_write=True keeps the file open read-write, hold_open=False keeps it closed "
                "between reads and writes: choose one")

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        if not self._keeps:
            out.setdefault("options", {})["hold_open"] = False
        elif self.mode == "r+" and not self._holds:
            out.setdefault("options", {})["hold_write"] = False
        return out

    @classmethod
    def _from_object(cls, shared: _SharedFile, f: h5py.File, name: str, mode: str,
                     holds: bool, keeps: bool) -> HDF5Remote:
        where = f"{shared.path}#{name}"
        obj = f.get(name)
        if obj is None:
            raise RemoteNotFoundError(f"{where} does not exist{_listing(f)}")
        flat = False
        if isinstance(obj, h5py.Dataset):
            # a 2-D dataset named in the URL is an image (y, x): a volume of one z plane (a 3-D
            # one whose axis names are c, y, x is one too, of several channels: below)
            flat = obj.ndim == 2
            if not (_is_volume_dataset(obj) or flat):
                raise InvalidRequestError(
                    f"{where} is a {obj.ndim}-D dataset of shape {obj.shape}; voxgate reads 2-D "
                    "(y, x: one z plane), 3-D (z, y, x) and 4-D (c, z, y, x) datasets and "
                    f"multiscale groups of 3-D and 4-D ones{_listing(f)}"
                )
            group_attrs = None
            datasets = [name]
        elif _is_multiscale(obj):
            group_attrs = obj.attrs
            datasets = []
            while _is_volume_dataset(obj.get(f"s{len(datasets)}")):
                datasets.append(f"{name.rstrip('/')}/s{len(datasets)}")
        else:
            raise RemoteNotFoundError(
                f"{where} is a group without a dataset s0, not a multiscale volume{_listing(f)}"
            )
        first = f[datasets[0]]
        storage = _bdv_storage_dtype(f, datasets[0], first)
        dtype = np.dtype("uint16") if storage is not None else _check_dtype(first.dtype, where)
        # a file of saalfeldlab's N5HDF5Writer lists every per-axis attribute x, y, z, as N5
        # does (its datasets' dimensions it reverses into HDF5's z, y, x)
        n5 = _is_n5_hdf5(f, first, obj if group_attrs is not None else None)
        named0 = _axis_names(first.attrs, first, f"{shared.path}#{datasets[0]}")
        if (named0 is not None and named0[1] == ["c", "y", "x"] and not n5
                and group_attrs is None):
            # a 3-D dataset named c, y, x (funlib.persistence's axis_names ["c^", "y", "x"]):
            # channels of one z plane, as the zarr store reads the same attributes
            flat = True
        channel_axis = first.ndim == 4 or (flat and first.ndim == 3)
        channels = int(first.shape[0]) if channel_axis else 1
        n5_group = _n5_attrs(group_attrs) if n5 else {}
        base_vs = _voxel_size(group_attrs, where) if group_attrs is not None and not n5 \
            else None
        group_factors = _attr(group_attrs, "scales") if group_attrs is not None else None
        scales = []
        for i, dname in enumerate(datasets):
            ds = f[dname]
            if _check_dtype(ds.dtype, dname) != (storage or dtype) or ds.ndim != first.ndim:
                raise InvalidRequestError(
                    f"{shared.path}#{dname} differs from s0 in dtype or number of dimensions"
                )
            if channel_axis and ds.shape[0] != channels:
                raise InvalidRequestError(f"{shared.path}#{dname} has another number of channels")
            if 0 in ds.shape:
                raise InvalidRequestError(
                    f"{shared.path}#{dname} is empty (shape {ds.shape}); a volume holds at "
                    "least one voxel"
                )
            named = named0 if i == 0 else _axis_names(ds.attrs, ds, f"{shared.path}#{dname}")
            if n5 and named is not None and named[0] == "axes":
                named = ("axes (N5's x, y, z order)", named[1][::-1])
            want = (["c", "y", "x"][3 - ds.ndim:] if flat
                    else ["c", "z", "y", "x"][4 - ds.ndim:])
            if (named is not None and not flat and ds.ndim == 3
                    and sorted(named[1]) == ["c", "x", "y"]):
                # channels of one z plane, not in the order (or the place) voxgate reads them
                source, axes = named
                raise InvalidRequestError(
                    f"{shared.path}#{dname} has axes {axes} (its {source} attribute): channels "
                    "of one z plane; voxgate reads such a dataset as ('c', 'y', 'x'), named in "
                    "the URL" + (": transpose it into that order (e.g. with h5py and numpy)"
                                 if group_attrs is None else ", not as a scale of a group")
                )
            if named is not None and named[1] != want:
                # (read as voxgate's order, they would be silently transposed; an ilastik
                # export's "zyxc" would have its z axis taken as the channels)
                source, axes = named
                raise InvalidRequestError(
                    f"{shared.path}#{dname} has axes {axes} (its {source} attribute); voxgate "
                    f"reads a {ds.ndim}-D dataset as {tuple(want)}: transpose it into that order "
                    "(e.g. with h5py and numpy) or copy it with the axes reordered"
                )
            shape = Vec(*_zyx(ds.shape, flat))
            vs = None if n5 else _voxel_size(ds.attrs, f"{shared.path}#{dname}", flat=flat)
            if n5:
                vs, offset = _n5_scale(ds.attrs, n5_group, i, tuple(shape),
                                       _zyx(first.shape, flat), f"{shared.path}#{dname}")
            elif vs is None:
                factors = _triple(_attr(ds.attrs, "downsamplingFactors")) or _bdv_factors(
                    f, dname)
                if factors is None and isinstance(group_factors, list) and i > 0:
                    factors = _scale_factors(group_factors, i)
                if factors is None:  # nothing written: infer from the shapes
                    factors = [float(max(1, round(a / b)))
                               for a, b in zip(_zyx(first.shape, flat), shape, strict=True)]
                base = base_vs or VoxelSize(1.0, 1.0, 1.0)
                vs = VoxelSize.of([b * k for b, k in zip(base.zyx(), factors, strict=True)],
                                  base.unit)
            if not n5:
                offset = _voxel_offset(ds.attrs, vs, f"{shared.path}#{dname}", flat=flat)
            chunks = Vec(*_zyx(ds.chunks, flat)) if ds.chunks else Vec(
                *(min(n, _CONTIGUOUS_BLOCK) for n in shape)
            )
            encoding = ds.compression or "raw"
            key = dname.rsplit("/", 1)[-1] if group_attrs is not None else None
            scales.append(Scale(i, shape, chunks, vs, offset, encoding, key))
        kind_attr = _attr(group_attrs if group_attrs is not None else first.attrs, "kind")
        kind: Kind = kind_attr if kind_attr in ("image", "segmentation") else _guess_kind(dtype)
        if kind == "segmentation" and channels != 1:
            kind = "image"
        fill = first.fillvalue
        fill_value = fill.item() if isinstance(fill, np.generic) else 0
        if not isinstance(fill_value, (int, float)):
            fill_value = 0
        meta = VolumeMeta(dtype, tuple(scales), kind, channels, fill_value)
        name = "/" + name.strip("/")
        remote = cls(shared, name, meta, datasets, channel_axis, mode, storage, holds, flat,
                     keeps)
        remote._layout = {d: (f[d].shape, f[d].dtype) for d in datasets}
        remote._checked = dict.fromkeys(datasets, shared.opened)
        return remote

    @classmethod
    def exists(cls, location: str) -> bool:
        path, name = _split(location)
        if not os.path.exists(path):
            return False
        shared = _acquire(path, writable=False)
        try:
            with shared.lock:
                assert shared.file is not None
                obj = shared.file.get(name or DEFAULT_DATASET)
                # (a 2-D dataset is a volume when the URL names it)
                return _is_volume_dataset(obj) or _is_multiscale(obj) or (
                    name is not None and isinstance(obj, h5py.Dataset) and obj.ndim == 2)
        finally:
            _release(shared)

    # -- creating -------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        location: str,
        meta: VolumeMeta,
        *,
        exist_ok: bool = False,
        compression: str = "gzip",
        compression_level: int = 4,
        checksum: bool = True,
        **options: Any,
    ) -> HDF5Remote:
        """Make ``location``: a dataset for one scale, a group of ``s0`` .. ``sN`` for several.

        ``compression`` is "gzip" (with byte shuffling for multi-byte types) or "none";
        ``checksum`` adds HDF5's Fletcher-32 filter so a damaged chunk is an error, never
        silently wrong data (uncompressed chunks have no other check).
        """
        check_options("hdf5://", options, cls.create_options, "create")
        if compression not in _COMPRESSIONS:
            raise InvalidRequestError(
                f"compression must be one of {', '.join(_COMPRESSIONS)}, got {compression!r}"
            )
        if isinstance(compression_level, bool) or compression_level not in range(10):
            raise InvalidRequestError(
                f"compression_level must be an integer 0..9, got {compression_level!r}"
            )
        path, name = _split(location, check="create")
        name = name or DEFAULT_DATASET
        if cls.exists(f"{path}#{name}"):
            if not exist_ok:
                raise RemoteExistsError(
                    f"{path}#{name} already holds a volume (pass exist_ok=True to open it)"
                )
            existing = cls.open(f"{path}#{name}", mode="r+")
            check_same_volume(existing.meta, meta, f"{path}#{name}")
            return existing
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shared = _acquire(path, writable=True, create=True)
        try:
            with shared.lock:
                f = shared.ensure_open(writable=True)
                if name in f:
                    raise RemoteExistsError(
                        f"{path}#{name} already exists and is not a volume voxgate can open; "
                        "choose another name"
                    )
                filters = {
                    "compression": "gzip" if compression == "gzip" else None,
                    "compression_opts": compression_level if compression == "gzip" else None,
                    "shuffle": compression == "gzip" and meta.dtype.itemsize > 1,
                    "fletcher32": bool(checksum),
                }
                try:
                    _create_volume(f, name, meta, filters)
                except BaseException:
                    if name in f:  # no half-made volume: it would open with missing scales
                        del f[name]
                    raise
                f.flush()
        finally:
            _release(shared)
        return cls.open(f"{path}#{name}", mode="r+")

    # -- data -----------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        if self.mode != "r+":
            return frozenset({Capability.CHUNK_PRESENCE})
        if self._flat:
            return frozenset({Capability.WRITE, Capability.CHUNK_PRESENCE})
        return frozenset({Capability.WRITE, Capability.ADD_SCALES, Capability.CHUNK_PRESENCE})

    def add_scales(self, scales: Sequence[Scale]) -> None:
        """New ``sN`` datasets with scale 0's chunking and filters.

        A single-dataset volume first becomes a group: its dataset moves to ``name/s0`` (a
        rename inside the file, no data is copied), so the URL keeps naming the volume.
        """
        self._check_writable()
        self._check_open()
        if self._flat:
            raise CapabilityNotSupportedError(
                f"{self.url} is a 2-D dataset (one z plane); voxgate adds scales to 3-D and 4-D "
                "HDF5 volumes only")
        check_new_scales(self.meta, scales)
        meta = self.meta
        with self._file(writable=True) as f:
            self._add_scales(f, meta, scales)
        fresh = HDF5Remote.open(f"{self.path}#{self.name}", mode="r+",
                                hold_write=self._holds, hold_open=self._keeps)
        self.meta, self._datasets = fresh.meta, fresh._datasets
        self._layout, self._checked = fresh._layout, fresh._checked
        fresh.close()

    def _add_scales(self, f: h5py.File, meta: VolumeMeta, scales: Sequence[Scale]) -> None:
        """:meth:`add_scales` in the file ``f``, open read-write (under the lock)."""
        first = f[self._datasets[0]]
        filters = {
            "compression": first.compression, "compression_opts": first.compression_opts,
            "shuffle": first.shuffle, "fletcher32": first.fletcher32,
        }
        if len(self._datasets) == 1 and self._datasets[0] == self.name:
            tmp = f"{self.name}__voxgate_s0"
            f.move(self.name, tmp)
            g = f.create_group(self.name)
            f.move(tmp, f"{self.name}/s0")
            g.attrs["multiScale"] = True
            g.attrs["kind"] = meta.kind
            g.attrs["voxel_size"] = list(meta.voxel_size.zyx())
            g.attrs["unit"] = meta.voxel_size.unit
            f[f"{self.name}/s0"].attrs["downsamplingFactors"] = [1.0, 1.0, 1.0]
        vs0 = meta.voxel_size
        # another tool's "scales" may be a flat list of 3 factors per scale
        stated = np.asarray(f[self.name].attrs.get("scales", [1.0, 1.0, 1.0]), dtype=float)
        factors = [list(g_) for g_ in stated.reshape(-1, 3)][: len(meta.scales)]
        if len(factors) < len(meta.scales) or stated.size % 3:
            factors = [[_plain(a / b) for a, b in zip(s.voxel_size.zyx(), vs0.zyx(),
                                                      strict=True)] for s in meta.scales]
        for sc in scales:
            ds = _create_dataset(f, f"{self.name}/s{sc.index}", meta, sc, filters)
            _write_scale_attrs(ds.attrs, meta, sc)
            _follow_base_attrs(ds.attrs, f[f"{self.name}/s0"].attrs, sc)
            fac = [_plain(a / b) for a, b in zip(sc.voxel_size.zyx(), vs0.zyx(), strict=True)]
            ds.attrs["downsamplingFactors"] = fac
            factors.append(fac)
        f[self.name].attrs["scales"] = np.asarray(factors, dtype=float)
        f.flush()

    def _selection(self, box: Box, scale: int) -> tuple[slice, ...]:
        origin = self.meta.scale(scale).offset
        zyx = box.slices(origin)
        space = zyx[1:] if self._flat else zyx  # (a flat box is within the one plane)
        return (slice(None), *space) if self._channel_axis else tuple(space)

    def _file(self, *, writable: bool) -> AbstractContextManager[h5py.File]:
        """The file, open for one read or write of this Remote (see :func:`.files._using`)."""
        return _using(self._shared, writable=writable, keep=self._keeps, hold=self._holds)

    def _dataset(self, dname: str) -> h5py.Dataset:
        """The open dataset ``dname`` (under the handle's lock), checked to be as this Remote
        opened it when the file was opened again since (changed by another process)."""
        shared = self._shared
        if self._checked.get(dname) == shared.opened:
            return shared.dataset(dname)
        try:
            ds = shared.dataset(dname)
        except KeyError:
            raise RemoteNotFoundError(
                f"{self.path}#{dname} no longer exists (changed since {self.url} was opened); "
                "open it again") from None
        want = self._layout.get(dname)
        if want is not None and (ds.shape, ds.dtype) != want:
            raise InvalidRequestError(
                f"{self.path}#{dname} changed since {self.url} was opened: it is now "
                f"{ds.shape} {ds.dtype}, it was {want[0]} {want[1]}; open it again "
                "(voxgate.open) to read it as it is now")
        self._checked[dname] = shared.opened
        return ds

    @property
    def _space(self) -> int:
        """How many of the dataset's dimensions are space (2 when flat: y, x)."""
        return 2 if self._flat else 3

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            raise InvalidRequestError(f"{self.url} was closed; open it again to use it")

    def absent_chunks(self, box: Box, scale: int = 0) -> list[Vec]:
        """Chunks HDF5 has not allocated (never written); a contiguous dataset is one chunk,
        allocated at its first write.  A file chunked per channel stores each channel's chunk
        apart: a cell is absent when none of them is stored (it reads as the fill value)."""
        return self._unallocated(box, scale, partly=False)

    def _check_present(self, box: Box, scale: int) -> None:
        """missing="error" also refuses a cell whose chunk of some channel is not stored."""
        absent = self._unallocated(box, scale, partly=True)
        if absent:
            raise MissingChunkError(
                f"{len(absent)} chunk(s) of {self.url} touched by {box!r} are absent (of some "
                f"channel) at scale {scale}: {format_chunks(absent)}; the volume was opened with "
                f"missing='error' (open it with missing='fill' to read absent chunks as the fill "
                f"value {self.meta.fill_value})",
                chunks=absent,
                scale=scale,
            )

    def _unallocated(self, box: Box, scale: int, partly: bool) -> list[Vec]:
        """The cells of ``box`` with no chunk allocated (``partly``: of some channel; else of
        every channel)."""
        self._check_open()
        sc = self.meta.scale(scale)
        cells = list(_cells(box, sc))
        with self._file(writable=False):
            ds = self._dataset(self._datasets[scale])
            if ds.chunks is None:
                return [g for g, _ in cells] if ds.id.get_storage_size() == 0 else []
            # a file chunked per channel (chunks (1, z, y, x)) stores each channel's chunk
            # apart: called absent when any was missing, a cell holding another channel's
            # stored voxels was copied as the fill value (and that read at one "absent" voxel,
            # stored in some channel, was taken for the fill value of every absent block)
            leads = (
                [(c,) for c in range(0, ds.shape[0], ds.chunks[0])] if self._channel_axis else [()]
            )
            which = any if partly else all
            absent = []
            for g, cell in cells:
                start = tuple(s.start for s in self._selection(cell, scale)[-self._space:])
                if which(ds.id.get_chunk_info_by_coord(lead + start).byte_offset is None
                         for lead in leads):
                    absent.append(g)
        return sorted(absent)

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        self._check_open()
        if self.missing == "error":
            self._check_present(box, scale)
        sel = self._selection(box, scale)
        lead = (self.meta.num_channels,) if self._channel_axis else ()
        # native byte order: HDF5 converts a big-endian file's values while reading
        out = np.empty(lead + tuple(box.shape), dtype=self.meta.dtype)
        dname = self._datasets[scale]
        with self._file(writable=False):
            ds = self._dataset(dname)
            try:
                if out.size:
                    dest = out if self._storage_dtype is None else out.view(self._storage_dtype)
                    # (a flat volume's one z plane is no dimension of the dataset)
                    ds.read_direct(_drop_z(dest) if self._flat else dest, source_sel=sel)
            except OSError as exc:
                raise self._locate_damage(ds, scale, box, exc) from exc
        if self._channel_axis and self.meta.num_channels == 1:
            out = out[0]
        return out

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._check_writable()
        self._check_open()
        sel = self._selection(box, scale)
        if self._channel_axis and self.meta.num_channels == 1:
            array = array[np.newaxis]
        data = np.ascontiguousarray(array)
        if self._storage_dtype is not None:
            data = np.ascontiguousarray(data, dtype=self.meta.dtype).view(self._storage_dtype)
        if self._flat:
            data = _drop_z(data)
        dname = self._datasets[scale]
        with self._file(writable=True) as f:
            ds = self._dataset(dname)
            try:
                if data.size:
                    ds.write_direct(data, dest_sel=sel)
                # HDF5 keeps written chunks in its cache; flushing makes a returned write
                # stored (copy's journal counts on that) and keeps the file's metadata
                # consistent (and seen by the next process to open the file)
                f.flush()
            except OSError as exc:
                raise self._locate_damage(ds, scale, box, exc, writing=True) from exc

    def _locate_damage(
        self, ds: h5py.Dataset, scale: int, box: Box, exc: OSError, *, writing: bool = False
    ) -> VoxgateError:
        """The error for a failed read (or read-modify-write): which chunk does not decode.

        HDF5 says only "filter returned failure"; reading chunk by chunk finds the culprit.
        """
        what = f"{'writing' if writing else 'reading'} {box!r} of {self.path}#{ds.name}"
        sc = self.meta.scale(scale)
        if ds.chunks is None:
            return CorruptChunkError(f"{what} failed: {exc}", chunk=f"{self.path}#{ds.name}")
        for index, cell in _cells(box, sc):
            sel = self._selection(cell, scale)
            try:
                ds[sel]
            except OSError as cell_exc:
                start = tuple(s.start for s in sel[-self._space:])
                coord = ((0,) if self._channel_axis else ()) + start
                where = ""
                try:
                    info = ds.id.get_chunk_info_by_coord(coord)
                    if info.byte_offset is not None:
                        where = f", {info.size} bytes at file offset {info.byte_offset}"
                except (OSError, ValueError, RuntimeError):
                    pass
                chunk = f"{self.path}#{ds.name} chunk {tuple(index)}"
                return CorruptChunkError(
                    f"{what}: {chunk} (voxels {cell}{where}) could not be decoded "
                    f"({cell_exc}); the file is damaged there",
                    chunk=chunk,
                )
        return VoxgateError(f"{what} failed: {exc}")


def _zyx(shape: Sequence[int], flat: bool = False) -> tuple[int, ...]:
    """The (z, y, x) of a dataset's shape or chunk shape; a 2-D one's (or, ``flat``, a
    (c, y, x) one's) z is 1."""
    return (1, *shape[-2:]) if flat or len(shape) == 2 else tuple(shape[-3:])


def _drop_z(array: np.ndarray) -> np.ndarray:
    """A (..., 1, y, x) array as (..., y, x): the same memory, without its one z plane."""
    return array.reshape(array.shape[:-3] + array.shape[-2:])


def _cells(box: Box, sc: Scale) -> Iterator[tuple[Vec, Box]]:
    return chunk_boxes(box, sc.chunks, sc.bounds)
