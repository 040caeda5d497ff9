"""``hdf5://``: datasets and multiscale groups in local HDF5 files, through h5py.

URL: ``hdf5:///path/file.h5#/group/dataset`` (or a bare ``/path/file.h5#/group/dataset``; the
registry recognises ``.h5``, ``.hdf5`` and ``.hdf``).  The fragment names an HDF5 object:

- a 3-D ``(z, y, x)`` or 4-D ``(c, z, y, x)`` dataset: one scale;
- a group holding datasets ``s0``, ``s1``, ...: one scale each (the N5 / n5-viewer layout).

Without a fragment, ``/volume`` is used when it exists (it is what ``create`` makes), else the
file's only volume (3-D/4-D dataset or multiscale group); a file with several asks for one.

Metadata lives in HDF5 attributes.  Every per-axis list follows the dataset's own axis order,
z, y, x (as N5's follow x, y, z): ``voxel_size`` + ``unit``, ``voxel_offset`` (voxels),
``kind``, and for other tools ``resolution`` and ``offset`` (z, y, x in the unit: the CREMI /
gunpowder convention).  Multiscale groups carry ``multiScale``, ``scales`` (per-scale factors)
and ``kind``, and each ``sN`` its own ``downsamplingFactors`` and voxel attributes.  Files
without voxgate's attributes are read with ``resolution`` or ``element_size_um`` (ilastik,
Fiji) as the voxel size when present, else 1 nm.

Threads: HDF5 serialises every call in a process anyway, and h5py objects must not be used
from two threads at once, so each file has one h5py handle shared by every Remote on it and
one lock around every use.  Durability: HDF5 cannot replace a chunk atomically; see
docs/remotes/hdf5.md for what a crash while writing can do.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import h5py
import numpy as np

from ..errors import (
    CorruptChunkError,
    InvalidRequestError,
    ReadOnlyError,
    RemoteExistsError,
    RemoteNotFoundError,
    RemoteUnavailableError,
    VoxgateError,
)
from ..geometry import Box, Vec, VoxelSize, chunk_boxes
from ..meta import SUPPORTED_DTYPES, Kind, Scale, VolumeMeta, check_new_scales
from .base import Capability, Remote, check_options

__all__ = ["HDF5Remote"]

DEFAULT_DATASET = "/volume"
_COMPRESSIONS = ("gzip", "none")
#: HDF5's chunk cache per open dataset (its default, 1 MiB, holds no 64^3 uint64 chunk)
_CACHE_BYTES = 16 * 1024 * 1024
_CACHE_SLOTS = 10007  # a prime ~100x the number of chunks that fit, as HDF5 advises
#: chunk shape of contiguous datasets for voxgate's block splitting (HDF5 has none to offer)
_CONTIGUOUS_BLOCK = 64


def _guess_kind(dtype: np.dtype[Any]) -> Kind:
    return "segmentation" if dtype.kind in "ui" and dtype.itemsize >= 4 else "image"


# -- locations ------------------------------------------------------------------------------------
def _split(location: str) -> tuple[str, str | None]:
    """``"/a/f.h5#/g/ds"`` -> (absolute file path, "/g/ds"); no fragment -> None."""
    path, sep, fragment = location.partition("#")
    if "://" in path and not path.startswith("file://"):
        raise InvalidRequestError(
            f"hdf5:// opens local files only, got {location!r}; copy the file locally or store "
            "the volume as zarr, N5 or precomputed for object storage"
        )
    path = path.removeprefix("file://")
    if not path:
        raise InvalidRequestError(f"{location!r} names no HDF5 file")
    path = os.path.abspath(os.path.expanduser(path))
    name = "/" + fragment.strip("/") if sep and fragment.strip("/") else None
    return path, name


# -- one shared handle per file -------------------------------------------------------------------
class _SharedFile:
    """The process's one h5py handle on a file, its lock, and the Remotes that use it.

    HDF5 refuses to open a file for writing in a process that holds it open read-only, so
    the handle is reopened read-write (under the lock) the first time a writer needs it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.file: h5py.File | None = None
        self.writable = False
        self.users = 0
        self._datasets: dict[str, h5py.Dataset] = {}

    def ensure_open(self, *, writable: bool, create: bool = False) -> h5py.File:
        """The handle, opened (read-write when asked) if it is not yet.  Call under the lock."""
        if self.file is not None and (self.writable or not writable):
            return self.file
        if self.file is None and not create and not os.path.exists(self.path):
            raise RemoteNotFoundError(f"HDF5 file {self.path} does not exist")
        was_open = self.file is not None
        self._close()
        try:
            self.file = _h5open(self.path, "a" if create else ("r+" if writable else "r"))
        except VoxgateError:
            if was_open:  # keep serving the readers that had it read-only
                self.file = _h5open(self.path, "r")
            raise
        self.writable = writable or create
        return self.file

    def dataset(self, name: str) -> h5py.Dataset:
        """The open dataset ``name`` (kept open: its chunk cache lives as long as it does)."""
        ds = self._datasets.get(name)
        if ds is None:
            assert self.file is not None
            ds = self.file[name]
            self._datasets[name] = ds
        return ds

    def _close(self) -> None:
        self._datasets.clear()
        if self.file is not None:
            try:
                self.file.close()
            finally:
                self.file = None
                self.writable = False


_files: dict[str, _SharedFile] = {}
_files_lock = threading.RLock()


def _acquire(path: str, *, writable: bool, create: bool = False) -> _SharedFile:
    with _files_lock:
        shared = _files.get(path)
        if shared is None:
            shared = _files[path] = _SharedFile(path)
        shared.users += 1
    try:
        with shared.lock:
            shared.ensure_open(writable=writable, create=create)
    except BaseException:
        _release(shared)
        raise
    return shared


def _release(shared: _SharedFile) -> None:
    """One Remote is done with ``shared``; the last one closes the file (flushing it)."""
    with _files_lock:
        shared.users -= 1
        if shared.users > 0:
            return
        if _files.get(shared.path) is shared:
            del _files[shared.path]
        # closed before another Remote can open the path anew: HDF5 would refuse to open it
        # read-write while this handle still held it read-only
        with shared.lock:
            shared._close()


def _h5open(path: str, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode, rdcc_nbytes=_CACHE_BYTES, rdcc_nslots=_CACHE_SLOTS)
    except FileNotFoundError:
        raise RemoteNotFoundError(f"HDF5 file {path} does not exist") from None
    except OSError as exc:
        text = str(exc)
        lowered = text.lower()
        if "already open for read-only" in lowered:
            raise ReadOnlyError(
                f"cannot open {path} for writing: this process holds it open read-only "
                "elsewhere (an h5py.File opened with 'r'?); close that handle first"
            ) from exc
        if "lock" in lowered:
            raise RemoteUnavailableError(
                f"{path} is locked by another process (HDF5 allows one writer or many readers "
                f"at a time): {text}"
            ) from exc
        if "signature" in lowered or "not an hdf5" in lowered:
            raise InvalidRequestError(f"{path} is not an HDF5 file ({text})") from exc
        if "permission" in lowered or "errno = 13" in lowered:
            raise ReadOnlyError(f"cannot open {path} with mode {mode!r}: {text}") from exc
        raise VoxgateError(f"cannot open HDF5 file {path}: {text}") from exc


# -- attributes -----------------------------------------------------------------------------------
def _attr(attrs: h5py.AttributeManager, key: str) -> Any:
    """An attribute as plain Python (str, float, list), or None when absent or unreadable."""
    try:
        if key not in attrs:
            return None
        value = attrs[key]
    except (OSError, TypeError, ValueError):  # an attribute of a type h5py cannot read
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [
            v.decode("utf-8", "replace") if isinstance(v, bytes)
            else v.item() if isinstance(v, np.generic) else v
            for v in value.ravel()
        ]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _triple(value: Any) -> list[float] | None:
    if not isinstance(value, list) or len(value) != 3:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    return [float(v) for v in value]


_UNITS_NM = {"nm": 1.0, "nanometer": 1.0, "um": 1e3, "µm": 1e3, "micrometer": 1e3,
             "mm": 1e6, "millimeter": 1e6}


def _voxel_size(attrs: h5py.AttributeManager) -> VoxelSize | None:
    """The voxel size (z, y, x) an object's attributes state, or None."""
    unit = _attr(attrs, "unit")
    factor = _UNITS_NM.get(unit, 1.0) if isinstance(unit, str) else 1.0
    for key in ("voxel_size", "resolution"):
        v = _triple(_attr(attrs, key))
        if v is not None and all(x > 0 for x in v):
            return VoxelSize.of([x * factor for x in v])
    v = _triple(_attr(attrs, "element_size_um"))
    if v is not None and all(x > 0 for x in v):
        return VoxelSize.of([x * 1e3 for x in v])
    return None


def _voxel_offset(attrs: h5py.AttributeManager, vs: VoxelSize | None) -> Vec:
    """The offset in voxels: voxgate's ``voxel_offset``, else a CREMI/gunpowder ``offset`` in
    physical units when it is a whole number of voxels."""
    v = _triple(_attr(attrs, "voxel_offset"))
    if v is not None and all(x.is_integer() for x in v):
        return Vec(*(int(x) for x in v))
    w = _triple(_attr(attrs, "offset"))
    if w is not None and vs is not None:
        vox = [x / s for x, s in zip(w, vs.zyx(), strict=True)]
        if all(abs(x - round(x)) < 1e-6 for x in vox):
            return Vec(*(round(x) for x in vox))
    return Vec(0, 0, 0)


def _is_volume_dataset(obj: Any) -> bool:
    return isinstance(obj, h5py.Dataset) and len(obj.shape) in (3, 4)


def _is_multiscale(obj: Any) -> bool:
    return isinstance(obj, h5py.Group) and _is_volume_dataset(obj.get("s0"))


def _volumes(f: h5py.File) -> list[str]:
    """Paths of every volume in the file: 3-D/4-D datasets and multiscale groups (whose sN
    datasets are not listed again)."""
    found: list[str] = []
    if _is_multiscale(f):
        return ["/"]

    def visit(name: str, obj: Any) -> None:
        if any(name == p or name.startswith(p + "/") for p in found):
            return
        if _is_multiscale(obj) or _is_volume_dataset(obj):
            found.append(name)

    f.visititems(visit)
    return ["/" + n for n in found]


def _resolve_default(f: h5py.File, path: str) -> str:
    """The volume a fragment-less URL means: /volume, else the file's only volume."""
    default = f.get(DEFAULT_DATASET)
    if _is_volume_dataset(default) or _is_multiscale(default):
        return DEFAULT_DATASET
    volumes = _volumes(f)
    if len(volumes) == 1:
        return volumes[0]
    if not volumes:
        raise RemoteNotFoundError(
            f"{path} holds no 3-D (z, y, x) or 4-D (c, z, y, x) dataset or multiscale group"
        )
    raise InvalidRequestError(
        f"{path} holds several volumes ({', '.join(volumes)}); name one in the URL, e.g. "
        f"hdf5://{path}#{volumes[0]}"
    )


def _listing(f: h5py.File) -> str:
    names = _volumes(f)
    return f"; it holds {', '.join(names)}" if names else "; it holds no volume"


# -- the Remote -----------------------------------------------------------------------------------
class HDF5Remote(Remote):
    scheme = "hdf5"
    create_options = ("compression", "compression_level", "checksum")

    def __init__(
        self,
        shared: _SharedFile,
        name: str,
        meta: VolumeMeta,
        datasets: list[str],
        channel_axis: bool,
        mode: str,
    ) -> None:
        self._shared = shared
        self.path = shared.path
        self.name = name
        self.meta = meta
        self._datasets = datasets
        # a 4-D dataset of one channel is read as 3-D: its channel axis is dropped / re-added
        self._channel_axis = channel_axis
        self.mode = mode
        self.url = f"hdf5://{self.path}#{name}"
        self._finalizer = weakref.finalize(self, _release, shared)

    def close(self) -> None:
        """Stop using the file; the last Remote on a file closes it (which flushes it)."""
        self._finalizer()

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> HDF5Remote:
        check_options("hdf5://", options, cls.open_options)
        path, name = _split(location)
        shared = _acquire(path, writable=mode == "r+")
        try:
            with shared.lock:
                f = shared.ensure_open(writable=mode == "r+")
                if name is None:
                    name = _resolve_default(f, path)
                return cls._from_object(shared, f, name, mode)
        except BaseException:
            _release(shared)
            raise

    @classmethod
    def _from_object(cls, shared: _SharedFile, f: h5py.File, name: str, mode: str) -> HDF5Remote:
        where = f"{shared.path}#{name}"
        obj = f.get(name)
        if obj is None:
            raise RemoteNotFoundError(f"{where} does not exist{_listing(f)}")
        if isinstance(obj, h5py.Dataset):
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
        dtype = _check_dtype(first.dtype, where)
        channel_axis = first.ndim == 4
        channels = int(first.shape[0]) if channel_axis else 1
        base_vs = _voxel_size(group_attrs) if group_attrs is not None else None
        group_factors = _attr(group_attrs, "scales") if group_attrs is not None else None
        scales = []
        for i, dname in enumerate(datasets):
            ds = f[dname]
            if _check_dtype(ds.dtype, dname) != dtype or ds.ndim != first.ndim:
                raise InvalidRequestError(
                    f"{shared.path}#{dname} differs from s0 in dtype or number of dimensions"
                )
            if channel_axis and ds.shape[0] != channels:
                raise InvalidRequestError(f"{shared.path}#{dname} has another number of channels")
            shape = Vec(*ds.shape[-3:])
            vs = _voxel_size(ds.attrs)
            if vs is None:
                factors = _triple(_attr(ds.attrs, "downsamplingFactors"))
                if factors is None and isinstance(group_factors, list) and i > 0:
                    factors = _scale_factors(group_factors, i)
                if factors is None:  # nothing written: infer from the shapes
                    factors = [float(max(1, round(a / b)))
                               for a, b in zip(first.shape[-3:], shape, strict=True)]
                base = base_vs or VoxelSize(1.0, 1.0, 1.0)
                vs = VoxelSize.of([b * k for b, k in zip(base.zyx(), factors, strict=True)],
                                  base.unit)
            offset = _voxel_offset(ds.attrs, vs)
            chunks = Vec(*ds.chunks[-3:]) if ds.chunks else Vec(
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
        return cls(shared, name, meta, datasets, channel_axis, mode)

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
                return _is_volume_dataset(obj) or _is_multiscale(obj)
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
        check_options("hdf5://", options, cls.create_options)
        if compression not in _COMPRESSIONS:
            raise InvalidRequestError(
                f"compression must be one of {', '.join(_COMPRESSIONS)}, got {compression!r}"
            )
        if isinstance(compression_level, bool) or compression_level not in range(10):
            raise InvalidRequestError(
                f"compression_level must be an integer 0..9, got {compression_level!r}"
            )
        path, name = _split(location)
        name = name or DEFAULT_DATASET
        if cls.exists(f"{path}#{name}"):
            if not exist_ok:
                raise RemoteExistsError(
                    f"{path}#{name} already holds a volume (pass exist_ok=True to open it)"
                )
            existing = cls.open(f"{path}#{name}", mode="r+")
            _check_compatible(existing.meta, meta, f"{path}#{name}")
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
        return frozenset({Capability.WRITE, Capability.ADD_SCALES, Capability.CHUNK_PRESENCE})

    def add_scales(self, scales: Sequence[Scale]) -> None:
        """New ``sN`` datasets with scale 0's chunking and filters.

        A single-dataset volume first becomes a group: its dataset moves to ``name/s0`` (a
        rename inside the file, no data is copied), so the URL keeps naming the volume.
        """
        self._check_writable()
        self._check_open()
        check_new_scales(self.meta, scales)
        meta = self.meta
        with self._shared.lock:
            f = self._shared.ensure_open(writable=True)
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
            factors = [list(g_) for g_ in f[self.name].attrs.get("scales", [[1.0, 1.0, 1.0]])]
            for sc in scales:
                ds = _create_dataset(f, f"{self.name}/s{sc.index}", meta, sc, filters)
                _write_scale_attrs(ds.attrs, meta, sc)
                fac = [_plain(a / b) for a, b in zip(sc.voxel_size.zyx(), vs0.zyx(), strict=True)]
                ds.attrs["downsamplingFactors"] = fac
                factors.append(fac)
            f[self.name].attrs["scales"] = np.asarray(factors, dtype=float)
            f.flush()
        fresh = HDF5Remote.open(f"{self.path}#{self.name}", mode="r+")
        self.meta, self._datasets = fresh.meta, fresh._datasets
        fresh.close()

    def _selection(self, box: Box, scale: int) -> tuple[slice, ...]:
        origin = self.meta.scale(scale).offset
        zyx = box.slices(origin)
        return (slice(None), *zyx) if self._channel_axis else zyx

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            raise InvalidRequestError(f"{self.url} was closed; open it again to use it")

    def absent_chunks(self, box: Box, scale: int = 0) -> list[Vec]:
        """Chunks HDF5 has not allocated (never written); a contiguous dataset is one chunk,
        allocated at its first write."""
        self._check_open()
        sc = self.meta.scale(scale)
        cells = list(_cells(box, sc))
        with self._shared.lock:
            self._shared.ensure_open(writable=False)
            ds = self._shared.dataset(self._datasets[scale])
            if ds.chunks is None:
                return [g for g, _ in cells] if ds.id.get_storage_size() == 0 else []
            absent = []
            for g, cell in cells:
                start = tuple(s.start for s in self._selection(cell, scale)[-3:])
                coord = ((0,) if self._channel_axis else ()) + start
                if ds.id.get_chunk_info_by_coord(coord).byte_offset is None:
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
        with self._shared.lock:
            self._shared.ensure_open(writable=False)
            ds = self._shared.dataset(dname)
            try:
                if out.size:
                    ds.read_direct(out, source_sel=sel)
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
        dname = self._datasets[scale]
        with self._shared.lock:
            f = self._shared.ensure_open(writable=True)
            ds = self._shared.dataset(dname)
            try:
                if data.size:
                    ds.write_direct(data, dest_sel=sel)
                # HDF5 keeps written chunks in its cache; flushing makes a returned write stored
                # (copy's journal counts on that) and keeps the file's metadata consistent
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
                start = tuple(s.start for s in sel[-3:])
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


def _cells(box: Box, sc: Scale) -> Iterator[tuple[Vec, Box]]:
    return chunk_boxes(box, sc.chunks, sc.bounds)


def _check_dtype(dtype: np.dtype[Any], where: str) -> np.dtype[Any]:
    native = dtype.newbyteorder("=") if dtype.kind in "uif" else dtype
    if native.name not in SUPPORTED_DTYPES:
        raise InvalidRequestError(
            f"{where} holds {dtype}; voxgate reads {', '.join(SUPPORTED_DTYPES)}"
        )
    return native


def _plain(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


def _scale_factors(group_factors: list[Any], i: int) -> list[float] | None:
    """Factors of scale ``i`` from a group's flattened ``scales`` attribute (h5py reads an
    (n, 3) array attribute back as one list)."""
    if len(group_factors) % 3 or (i + 1) * 3 > len(group_factors):
        return None
    return _triple(group_factors[i * 3 : i * 3 + 3])


def _create_volume(f: h5py.File, name: str, meta: VolumeMeta, filters: dict[str, Any]) -> None:
    multi = len(meta.scales) > 1
    vs0 = meta.scales[0].voxel_size
    all_factors = []
    for sc in meta.scales:
        dname = f"{name}/s{sc.index}" if multi else name
        factors = [_plain(a / b) for a, b in zip(sc.voxel_size.zyx(), vs0.zyx(), strict=True)]
        all_factors.append(factors)
        ds = _create_dataset(f, dname, meta, sc, filters)
        _write_scale_attrs(ds.attrs, meta, sc)
        if multi:
            ds.attrs["downsamplingFactors"] = factors
    if multi:
        g = f[name]
        g.attrs["multiScale"] = True
        g.attrs["scales"] = np.asarray(all_factors, dtype=float)
        g.attrs["kind"] = meta.kind
        g.attrs["voxel_size"] = list(vs0.zyx())
        g.attrs["unit"] = vs0.unit


def _create_dataset(
    f: h5py.File, name: str, meta: VolumeMeta, sc: Scale, filters: dict[str, Any]
) -> h5py.Dataset:
    lead = (meta.num_channels,) if meta.num_channels > 1 else ()
    # HDF5 refuses chunks larger than a fixed-size dataset: clip them (coarse scales are small)
    chunks = tuple(min(c, n) for c, n in zip(sc.chunks, sc.shape, strict=True))
    try:
        return f.create_dataset(
            name,
            shape=lead + tuple(sc.shape),
            dtype=meta.dtype,
            chunks=lead + chunks,
            fillvalue=meta.fill_value,
            **filters,
        )
    except (TypeError, ValueError) as exc:  # h5py's words for "a dataset is in the way"
        raise InvalidRequestError(f"cannot create {f.filename}#{name}: {exc}") from exc
    except OSError as exc:
        raise VoxgateError(f"cannot create {f.filename}#{name}: {exc}") from exc


def _write_scale_attrs(attrs: h5py.AttributeManager, meta: VolumeMeta, sc: Scale) -> None:
    vs = sc.voxel_size
    attrs["kind"] = meta.kind
    attrs["voxel_size"] = list(vs.zyx())
    attrs["unit"] = vs.unit
    attrs["voxel_offset"] = np.asarray(list(sc.offset), dtype=np.int64)
    # CREMI / gunpowder: "resolution" and a physical "offset", z, y, x
    attrs["resolution"] = list(vs.zyx())
    attrs["offset"] = [o * v for o, v in zip(sc.offset, vs.zyx(), strict=True)]
    axes = ["c", "z", "y", "x"] if meta.num_channels > 1 else ["z", "y", "x"]
    attrs["axes"] = np.asarray(axes, dtype=h5py.string_dtype())


def _check_compatible(existing: VolumeMeta, wanted: VolumeMeta, where: str) -> None:
    if existing.dtype != wanted.dtype or existing.shape != wanted.shape:
        raise RemoteExistsError(
            f"{where} already holds a {existing.dtype.name} volume of shape "
            f"{tuple(existing.shape)}, not the {wanted.dtype.name} {tuple(wanted.shape)} asked for"
        )
