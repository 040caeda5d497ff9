"""The lazy, numpy-like Volume (the package docstring describes the coordinate systems,
bounds modes and indices)."""

from __future__ import annotations

import math
import operator
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from ..errors import (
    AuthenticationError,
    IndexingError,
    InvalidRequestError,
    MissingDependencyError,
    OutOfBoundsError,
    RemoteNotFoundError,
    RemoteUnavailableError,
    VoxgateError,
    redact,
    refuses_unknown_keywords,
    unknown_keyword,
)
from ..geometry import Box, Vec, VoxelSize, chunk_boxes, grow_block, whole_at_least
from ..meta import Kind, Scale, VolumeMeta
from ..notebook import NoArithmetic, check_array_caller, repr_html
from ..notebook import preview as _preview
from ..notebook import to_xarray as _to_xarray
from ..registry import open_remote
from .axes import _Axis, _fmt_slice, _index_int, _lattice, _new_axis

if TYPE_CHECKING:
    import dask.array
    import xarray

    from ..remotes.base import Remote

__all__ = ["Bounds", "Volume"]

Bounds = Literal["error", "clip", "fill"]
#: a view with steps whose enclosing box is larger than this is read in blocks of about this
#: many bytes (each stepped through into the result), not whole
STRIDED_READ_BYTES = 8 * 2**20
_BOUNDS = ("error", "clip", "fill")


class Volume(NoArithmetic):
    """A lazy, numpy-like view of one Resource at one scale.

    It does no arithmetic (``vol + 1``, ``np.sqrt(vol)``, comparisons raise
    :class:`LazyOperationError`): that would read all of it.  ``vol.to_dask()`` does
    arithmetic lazily, block by block.
    """

    __slots__ = ("_axes", "_bounds_mode", "_remote", "_scale")

    def __init__(
        self,
        remote: Remote,
        scale: int = 0,
        *,
        bounds: Bounds = "error",
        _axes: tuple[_Axis, ...] | None = None,
    ) -> None:
        if not isinstance(getattr(remote, "meta", None), VolumeMeta):
            # Volume("em.zarr") failed with a bare AttributeError on str
            raise InvalidRequestError(
                f"Volume() takes an opened Remote, not {type(remote).__name__} "
                f"{redact(repr(remote))[:120]}: open a URL or path with voxgate.open(...)")
        if bounds not in _BOUNDS:
            raise InvalidRequestError(f"bounds must be one of {_BOUNDS}, got {bounds!r}")
        sc = remote.meta.scale(scale)
        self._remote = remote
        self._scale = operator.index(scale)  # (a plain int, also for a numpy integer)
        self._bounds_mode: Bounds = bounds
        if _axes is None:
            lead = (
                (_Axis(0, 1, remote.meta.num_channels),) if remote.meta.num_channels > 1 else ()
            )
            _axes = lead + tuple(_Axis(0, 1, n) for n in sc.shape)
        self._axes = _axes

    # -- description ----------------------------------------------------------------------------
    @property
    def remote(self) -> Remote:
        return self._remote

    @property
    def meta(self) -> VolumeMeta:
        return self._remote.meta

    @property
    def url(self) -> str:
        """Where the volume is, for people: credentials in it redacted (``spec()`` and the
        Remote keep them, to reopen it)."""
        return redact(self._remote.url)

    @property
    def mode(self) -> str:
        return self._remote.mode

    @property
    def bounds_mode(self) -> Bounds:
        return self._bounds_mode

    @property
    def scale(self) -> int:
        return self._scale

    @property
    def scale_meta(self) -> Scale:
        return self._remote.meta.scale(self._scale)

    @property
    def scales(self) -> tuple[Scale, ...]:
        return self._remote.meta.scales

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._remote.meta.dtype

    @property
    def kind(self) -> Kind:
        return self._remote.meta.kind

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.length for a in self._axes if a.keep)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dims(self) -> tuple[str, ...]:
        """Names of the view's axes: ("z", "y", "x"), or ("c", "z", "y", "x") with several
        channels; dropped axes (``vol[5]``) are left out."""
        names = ("c", "z", "y", "x") if len(self._axes) == 4 else ("z", "y", "x")
        return tuple(n for n, a in zip(names, self._axes, strict=True) if a.keep)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d volume")
        return self.shape[0]

    def __iter__(self) -> Iterator[Volume]:
        """The views ``vol[0]``, ``vol[1]`` ... of the first axis, as numpy iterates (Python's
        fallback, ``vol[i]`` until IndexError, never ended on a bounds="fill" view, whose
        ``vol[i]`` past the end is fill, and gave nothing for a 0-d view)."""
        if not self.shape:
            raise TypeError("iteration over a 0-d volume")
        return (self[i] for i in range(self.shape[0]))

    # a 0-d view (one voxel, ``vol[z, y, x]``) converts to a Python number as numpy's 0-d
    # arrays do, reading the voxel; ``bool()`` of one gave a TypeError from len()
    def __bool__(self) -> bool:
        """The voxel's truth for a view of one voxel (read), as numpy's; any other view's is
        ambiguous, as numpy's is (ValueError): it was ``len(vol) != 0``, so ``all(vol)``,
        ``any(vol)`` and ``if vol[mask_region]:`` answered True whatever the voxels."""
        if self.size == 1:
            return bool(self.read().item())
        raise InvalidRequestError(
            f"the truth value of a view of {self.size} voxels (shape {tuple(self.shape)}) of "
            f"{self.url} is ambiguous, as numpy's is: read what you mean, "
            f"vol.read().any() or vol.read().all() (nothing was read); "
            f"test a Volume's presence with 'is not None'")

    def __int__(self) -> int:
        return int(self._voxel("int()"))

    def __float__(self) -> float:
        return float(self._voxel("float()"))

    def __format__(self, spec: str) -> str:
        # (f"{seg[z, y, x]:d}" formats the voxel, as for numpy's 0-d arrays; it raised
        # "unsupported format string passed to Volume.__format__")
        if not spec:
            return str(self)
        return format(self._voxel(f"a format spec ({spec!r})"), spec)

    def __str__(self) -> str:
        # (``print(seg[z, y, x])`` shows the voxel, as numpy's 0-d arrays print theirs; it
        # showed the view's repr.  A larger view prints its repr: printing never reads more
        # than one voxel.)
        if self.shape:
            return repr(self)
        return str(self._voxel("str()"))

    def __round__(self, ndigits: int | None = None) -> Any:
        return round(self._voxel("round()"), ndigits)

    def __index__(self) -> int:
        # (a 0-d view of integers indexes a list or a range, as numpy's 0-d arrays do)
        if self.dtype.kind not in "iu":
            raise TypeError(f"only a view of integer voxels can be used as an index; this view "
                            f"of {self.url} holds {self.dtype}: int() it first")
        return int(self._voxel("operator.index()"))

    def _voxel(self, what: str) -> Any:
        if self.shape:
            raise TypeError(
                f"{what} takes one voxel (a 0-d view: vol[z, y, x]); this view of {self.url} "
                f"has shape {tuple(self.shape)}: read it first (vol.read()) for a numpy array")
        return self.read().item()

    @property
    def _spatial(self) -> tuple[_Axis, _Axis, _Axis]:
        return self._axes[-3], self._axes[-2], self._axes[-1]

    @property
    def chunks(self) -> Vec:
        """The storage chunk shape of this scale, (z, y, x)."""
        return self.scale_meta.chunks

    @property
    def voxel_size(self) -> VoxelSize:
        """Physical size of one voxel of this view (the scale's, times any slice step)."""
        vs = self.scale_meta.voxel_size
        z, y, x = (a.step for a in self._spatial)
        return VoxelSize(vs.z * z, vs.y * y, vs.x * x, vs.unit)

    @property
    def offset(self) -> Vec:
        """Dataset voxel coordinate of this view's first voxel, (z, y, x)."""
        o = self.scale_meta.offset
        return Vec(*(oo + a.start for oo, a in zip(o, self._spatial, strict=True)))

    @property
    def bounds(self) -> Box:
        """The voxels this view covers, as a Box in dataset coordinates (step 1 views only)."""
        return self._box()

    def _box(self, sc: Scale | None = None) -> Box:
        o = (self.scale_meta if sc is None else sc).offset
        z, y, x = self._axes[-3], self._axes[-2], self._axes[-1]
        return Box._trusted(
            Vec(o.z + z.start, o.y + y.start, o.x + x.start),
            Vec(o.z + z.stop, o.y + y.stop, o.x + x.stop),
        )

    @property
    def missing(self) -> str:
        """What reads do with chunks absent from the store: "fill" (default) or "error"."""
        return self._remote.missing

    @refuses_unknown_keywords
    def missing_chunks(self, box: Box | None = None) -> list[Vec]:
        """Grid indices (z, y, x) of this scale's chunks that are absent from the store.

        Only chunks inside the scale's bounds are considered, touching ``box`` (dataset
        coordinates) or, without it, this view's region (the whole scale for ``voxgate.open``'s
        volume).  Absent chunks read as the fill value unless the volume was opened with
        ``missing="error"``.  Sorted; empty when every chunk is stored.  Raises
        CapabilityNotSupportedError for stores with no visible chunks (bossdb://, dvid://).
        """
        if box is not None and not isinstance(box, Box):
            raise InvalidRequestError(f"expected a voxgate.Box, got {type(box).__name__}")
        region = (self._box() if box is None else box).intersect(self.scale_meta.bounds)
        if region.is_empty():
            return []
        return self._remote.absent_chunks(region, self._scale)

    @refuses_unknown_keywords
    def at_scale(self, k: int) -> Volume:
        """The whole volume at scale ``k``, same mode and bounds handling."""
        return Volume(self._remote, k, bounds=self._bounds_mode)

    @refuses_unknown_keywords
    def with_bounds(self, bounds: Bounds) -> Volume:
        """This view with another bounds mode ("error", "clip" or "fill")."""
        return Volume(self._remote, self._scale, bounds=bounds, _axes=self._axes)

    def spec(self) -> dict[str, Any]:
        """Arguments of ``voxgate.open`` that reopen this volume (without the view)."""
        return {**self._remote.spec(), "scale": self._scale, "bounds": self._bounds_mode}

    def __repr__(self) -> str:
        vs = self.voxel_size
        return (
            f"<Volume {self.url} scale={self._scale} shape={self.shape} dtype={self.dtype.name} "
            f"kind={self.kind} voxel_size=({vs.z:g}, {vs.y:g}, {vs.x:g}) {vs.unit} "
            f"mode={self.mode!r}>"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle, (self._remote.spec(), self._scale, self._bounds_mode, self._axes))

    # -- indexing -------------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Volume:
        if not isinstance(key, tuple):
            key = (key,)
        # (the hot path of every cutout, ``vol[z0:z1, y0:y1, x0:x1].read()``: plain loops,
        # no helper per step, each of which costs more than its work when the CPU's caches
        # come back cold from the read before)
        axes = list(self._axes)
        kept = []
        for i, a in enumerate(axes):
            if a.keep:
                kept.append(i)
        # one slice per kept axis needs no expanding and holds nothing _full_key refuses
        simple = len(key) == len(kept)
        if simple:
            for k in key:
                if type(k) is not slice:
                    simple = False
                    break
        if not simple:
            key = self._full_key(key, kept)
        for pos, k in zip(kept, key, strict=True):
            axis = axes[pos]
            if type(k) is slice and k.step is None:
                start, stop = k.start, k.stop
                # the usual slice: int ends inside the axis, no step, which every bounds mode
                # takes as it is (anything else: _index_axis, which checks and says why)
                if type(start) is int and type(stop) is int and 0 <= start <= stop <= axis.length:
                    axes[pos] = _new_axis((axis.start + start * axis.step, axis.step,
                                           stop - start, True))
                    continue
            axes[pos] = self._index_axis(axis, k, pos)
        # a view of the same remote, scale and bounds mode: __init__'s checks and defaults
        # hold already
        view = object.__new__(Volume)
        view._remote = self._remote
        view._scale = self._scale
        view._bounds_mode = self._bounds_mode
        view._axes = tuple(axes)
        return view

    def _full_key(self, key: tuple[Any, ...], kept: list[int]) -> tuple[Any, ...]:
        """``key`` checked and expanded to one entry per kept axis (``...`` and missing
        trailing entries become whole slices)."""
        n_ell = sum(1 for k in key if k is Ellipsis)
        if n_ell > 1:
            raise IndexingError("an index can only have a single ellipsis ('...')")
        for k in key:
            if k is None:
                raise IndexingError("np.newaxis / None is not supported in a Volume index")
            if isinstance(k, (bool, np.bool_)) or (
                isinstance(k, (list, np.ndarray)) and np.asarray(k).dtype == np.bool_
            ):
                raise IndexingError(
                    f"boolean indices (masks) are not supported in a Volume index, got {k!r}; "
                    "a boolean is not taken as 0 or 1: read the box, then mask the array"
                )
            if isinstance(k, (list, np.ndarray)) and not isinstance(k, np.generic):
                raise IndexingError(
                    "fancy (array) indexing is not supported; read the box, then index the array"
                )
        n_real = len(key) - n_ell
        if n_real > len(kept):
            raise IndexingError(
                f"too many indices: this volume has {len(kept)} dimensions {self.shape}, "
                f"{n_real} were given"
            )
        if n_ell:
            i = key.index(Ellipsis)
            return key[:i] + (slice(None),) * (len(kept) - n_real) + key[i + 1 :]
        return key + (slice(None),) * (len(kept) - n_real)

    def _index_axis(self, axis: _Axis, k: Any, pos: int) -> _Axis:
        n = axis.length
        mode = self._bounds_mode
        is_channel = pos == 0 and len(self._axes) == 4
        if isinstance(k, slice):
            step = k.step
            if step is None:
                step = 1
            else:
                step = _index_int(step, "a slice step")
                if step <= 0:
                    raise InvalidRequestError(
                        f"slice step must be a positive integer, got {step} " + (
                            "(reverse the array after reading instead)" if step < 0 else
                            "(1 takes every voxel, 2 every second one)")
                    )
            if mode == "clip" or is_channel:
                start, stop = k.start, k.stop
                if start is not None and type(start) is not int:
                    start = _index_int(start, "a slice start")
                if stop is not None and type(stop) is not int:
                    stop = _index_int(stop, "a slice stop")
                start, stop, _ = slice(start, stop, step).indices(n)
            else:
                start, stop = k.start, k.stop
                # (ints, the usual case, need no check)
                if type(start) is not int:
                    start = 0 if start is None else _index_int(start, "a slice start")
                if type(stop) is not int:
                    stop = n if stop is None else _index_int(stop, "a slice stop")
                if start < 0:
                    start += n
                if stop < 0:
                    stop += n
                if mode == "error" and (start < 0 or stop > n or start > n):
                    raise OutOfBoundsError(
                        f"slice {_fmt_slice(k)} on axis {self._axis_name(pos)} is outside 0:{n} "
                        "(open with bounds='clip' or 'fill' to allow it)"
                    )
                if stop < start:
                    # numpy selects nothing: as silent as a slice clipped at the end
                    given, ends = _fmt_slice(k), f"{start}:{stop}"
                    raise IndexingError(
                        f"slice {given} on axis {self._axis_name(pos)} ends before it starts, "
                        "so it selects nothing" + (
                            f"; put the start first ({stop}:{start})" if given.startswith(ends)
                            else f" (counted from the end it is {ends})")
                        + "; to reverse an axis, reverse the array after reading; "
                        "bounds='clip' gives numpy's empty selection")
            length = max(0, -(-(stop - start) // step))
            return _Axis(axis.start + start * axis.step, axis.step * step, length)
        i = _index_int(k, "an index")
        if i < 0:
            i += n
        if not 0 <= i < n and (mode != "fill" or is_channel):
            raise OutOfBoundsError(
                f"index {k} is out of bounds for axis {self._axis_name(pos)} of size {n}"
            )
        return _Axis(axis.start + i * axis.step, 1, 1, keep=False)

    def _axis_name(self, pos: int) -> str:
        names = ("c", "z", "y", "x") if len(self._axes) == 4 else ("z", "y", "x")
        return names[pos]

    # -- reading --------------------------------------------------------------------------------
    @refuses_unknown_keywords
    def read(self, box: Box | None = None) -> np.ndarray:
        """Read this view (or ``box``, in dataset coordinates) into a new numpy array."""
        if box is not None:
            return _read(self._box_view(box))  # (read, not checked again)
        axes = self._axes
        for a in axes:
            if a.length == 0:
                return np.empty(self.shape, dtype=self.dtype)
        # (inline, as in __getitem__: this runs on every read)
        remote = self._remote
        meta = remote.meta
        k = self._scale
        sc = meta.scales[k] if 0 <= k < len(meta.scales) else meta.scale(k)
        z, y, x = axes[-3], axes[-2], axes[-1]
        if z.step == 1 and y.step == 1 and x.step == 1:
            stepped = False
            o = sc.offset
            z0, y0, x0 = o.z + z.start, o.y + y.start, o.x + x.start
            need = Box._trusted(Vec(z0, y0, x0), Vec(z0 + z.length, y0 + y.length,
                                                     x0 + x.length))
        else:
            stepped = True
            need = self._box(sc)
            if need.size * self.dtype.itemsize * meta.num_channels > STRIDED_READ_BYTES:
                return self._read_strided(need.intersect(sc.bounds))
        # (need has voxels on every axis, so it lies in the bounds exactly when its
        # intersection with them is itself)
        if sc.bounds.contains(need):
            data = remote.read(need, k)
            # _plain, inline: every axis kept, step 1, all channels
            if not stepped and z.keep and y.keep and x.keep and (
                    len(axes) == 3 or (axes[0].keep and axes[0].step == 1
                                       and axes[0].length == meta.num_channels)):
                return data
        else:
            inside = need.intersect(sc.bounds)
            lead = (self.meta.num_channels,) if self.meta.num_channels > 1 else ()
            try:
                data = np.full(lead + tuple(need.shape), self.meta.fill_value, dtype=self.dtype)
            except (MemoryError, ValueError):
                nbytes = math.prod(lead + tuple(need.shape)) * self.dtype.itemsize
                raise InvalidRequestError(
                    f"reading {need!r} (bounds='{self._bounds_mode}') needs an array of "
                    f"{nbytes} bytes, more than can be allocated; read a smaller region, or "
                    "use to_dask() to work on it block by block"
                ) from None
            if not inside.is_empty():
                data[(..., *inside.slices(need.start))] = self._remote.read(inside, self._scale)
        return self._finish(data)

    def _read_strided(self, inside: Box) -> np.ndarray:
        """A view with steps, read block by block: each block of the enclosing box (whole
        chunks, about :data:`STRIDED_READ_BYTES`) is read and stepped through into the result,
        so memory is the result and one block, not the whole enclosing box
        (``vol[::8, ::8, ::8]`` of a 1 GiB volume read 1 GiB for a 2 MiB result)."""
        sc = self.scale_meta
        spatial = self._spatial
        chan: tuple[Any, ...] = ()
        lead: tuple[int, ...] = ()
        if len(self._axes) == 4:
            c = self._axes[0]
            chan = (slice(c.start, c.stop, c.step) if c.keep else c.start,)
            lead = (c.length,) if c.keep else ()
        shape = lead + tuple(a.length for a in spatial)
        try:
            out = np.full(shape, self.meta.fill_value, dtype=self.dtype)
        except (MemoryError, ValueError):
            raise InvalidRequestError(
                f"reading this view needs an array of {math.prod(shape) * self.dtype.itemsize} "
                "bytes, more than can be allocated; read a smaller region, or use to_dask() to "
                "work on it block by block"
            ) from None
        if not inside.is_empty():
            itemsize = self.dtype.itemsize * self.meta.num_channels
            block = grow_block(sc.chunks, itemsize, inside.shape, STRIDED_READ_BYTES)
            steps = tuple(slice(None, None, a.step) for a in spatial)
            for _, cell in chunk_boxes(inside, block, sc.bounds):
                hit = _lattice(spatial, sc.offset, cell.intersect(inside))
                if hit is None:
                    continue
                index, sub = hit
                into: tuple[Any, ...] = (..., *index)
                take: tuple[Any, ...] = (*chan, *steps)
                out[into] = self._remote.read(sub, self._scale)[take]
        return self._finish_strided(out)

    def _finish_strided(self, out: np.ndarray) -> np.ndarray:
        """Drop the spatial axes an integer index dropped from :meth:`_read_strided`'s array."""
        res = np.asarray(out[(..., *(slice(None) if a.keep else 0 for a in self._spatial))])
        return res if res.flags.c_contiguous else np.ascontiguousarray(res)

    @property
    def _plain(self) -> bool:
        """Whether the view is its whole enclosing box: every axis kept, step 1, all channels."""
        axes = self._axes
        for a in axes:
            if not a.keep or a.step != 1:
                return False
        return len(axes) == 3 or axes[0].length == self._remote.meta.num_channels

    def _finish(self, data: np.ndarray) -> np.ndarray:
        """Apply steps, channel selection and dropped axes to the enclosing box's data."""
        # np.asarray: a view with every axis dropped gives a numpy scalar, and numpy 2 needs
        # an ndarray (0-d here) from __array__
        out = np.asarray(data[self._select(drop=True)])
        if not out.flags.c_contiguous:
            out = np.ascontiguousarray(out)
        return out

    def _select(self, *, drop: bool) -> tuple[Any, ...]:
        """The index of this view inside its enclosing box's array (all channels included)."""
        index: list[Any] = []
        spatial0 = len(self._axes) - 3
        for pos, a in enumerate(self._axes):
            first = a.start if pos < spatial0 else 0
            if a.keep or not drop:
                index.append(slice(first, first + (a.length - 1) * a.step + 1, a.step))
            else:
                index.append(first)
        return tuple(index)

    def _box_view(self, box: Box) -> Volume:
        if not isinstance(box, Box):
            raise InvalidRequestError(f"expected a voxgate.Box, got {type(box).__name__}")
        o = self.scale_meta.offset
        base = self.at_scale(self._scale)
        lead = base._axes[:-3]
        spatial = tuple(_Axis(a - oo, 1, b - a) for a, b, oo in zip(box.start, box.stop, o,
                                                                       strict=True))
        view = Volume(self._remote, self._scale, bounds=self._bounds_mode, _axes=lead + spatial)
        if self._bounds_mode == "error" and not self.scale_meta.bounds.contains(box):
            raise OutOfBoundsError(
                f"{box!r} is outside the volume's bounds {self.scale_meta.bounds!r}"
            )
        if self._bounds_mode == "clip":
            clipped = box.intersect(self.scale_meta.bounds)
            return view._box_view(clipped) if clipped != box else view
        return view

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        # (not @refuses_unknown_keywords: numpy passes only dtype and copy, and a wrapper frame
        # would hide xarray from check_array_caller)
        check_array_caller(self)  # xr.DataArray(vol) would read it all: to_xarray
        if copy is False:  # numpy 2's protocol: refuse when a copy cannot be avoided
            raise InvalidRequestError(
                f"copy=False cannot be met for {self.url}: a Volume is lazy, every read of it "
                "makes a new array (there is no array in memory to share); use np.asarray(vol) "
                "or vol.read()")
        arr = self.read()  # always an ndarray (0-d when every axis is dropped: _finish)
        if dtype is not None:
            arr = arr.astype(dtype, copy=False)
        return arr

    @refuses_unknown_keywords
    def to_dask(self, chunks: Any = "auto") -> dask.array.Array:
        """This view as a dask array whose blocks read through this Volume, aligned to storage.

        Each call makes a dask array of its own name (its blocks are read when computed): two
        of one view, with other chunks or before and after a write, never share a task key."""
        import uuid

        import dask.array as da

        storage = tuple(
            max(1, c // a.step) for c, a in zip(self.chunks, self._spatial, strict=True)
        )
        lead = (self.meta.num_channels,) if len(self._axes) == 4 else ()
        previous = tuple(
            p for p, a in zip(lead + storage, self._axes, strict=True) if a.keep
        )
        try:
            # a string grows from the storage chunks so no dask block splits a stored chunk
            chunks = da.core.normalize_chunks(
                chunks, self.shape, dtype=self.dtype,
                previous_chunks=previous if isinstance(chunks, str) else None,
            )
        except (ValueError, TypeError, ZeroDivisionError) as exc:
            raise InvalidRequestError(
                f"to_dask chunks {chunks!r} not understood for shape {self.shape} ({exc}); give "
                "'auto', a byte size such as '64MiB', or one positive block length per axis "
                f"({self.ndim} of them; -1 for a whole axis)"
            ) from None
        if any(c < 1 for axis, n in zip(chunks, self.shape, strict=True) if n for c in axis):
            raise InvalidRequestError(
                f"to_dask chunks {chunks!r} holds a block length below 1; give positive lengths "
                "(-1 for a whole axis)"
            )
        return da.from_array(
            _DaskSource(self),
            chunks=chunks,
            asarray=False,
            fancy=False,
            lock=False,
            # (named by the view alone, as it was, two arrays of other chunks shared task keys:
            # one graph holding both mixed their blocks up)
            name=f"voxgate-{uuid.uuid4().hex}",
            meta=np.empty((0,) * self.ndim, dtype=self.dtype),
        )

    # -- notebooks (voxgate.notebook) -----------------------------------------------------------
    def _repr_html_(self) -> str:
        """Metadata and a thumbnail of the middle slice; reads only the thumbnail, never raises."""
        return repr_html(self)

    def preview(self, z: int | None = None, ax: Any = None, **options: Any) -> Any:
        """Draw slice ``z`` (default: the middle one) with matplotlib; returns the Axes.

        ``labels=seg_volume`` draws a segmentation over an image; see
        :func:`voxgate.notebook.preview` for ``channel``, ``alpha`` and ``max_px``.
        """
        _check_options(Volume.preview, _preview, options, skip=("vol",))
        return _preview(self, z, ax, **options)

    @refuses_unknown_keywords
    def to_xarray(self, chunks: Any = "auto", name: str | None = None) -> xarray.DataArray:
        """A lazy xarray DataArray over :meth:`to_dask`, coordinates the voxel centres in nm."""
        return _to_xarray(self, chunks, name)

    def view(self, **options: Any) -> Any:
        """Show this volume in Neuroglancer through an in-process relay:
        ``voxgate.view(self, **options)`` (a :class:`voxgate.viewer.ViewerSession`)."""
        import importlib

        # the viewer sits above the relay, far above the Volume: it is reached by name at
        # call time, as the registry reaches Remote classes (docs/architecture.md)
        view = importlib.import_module("voxgate.viewer").view
        _check_options(Volume.view, view, options)
        return view(self, **options)

    # -- writing --------------------------------------------------------------------------------
    def __setitem__(self, key: Any, value: Any) -> None:
        self[key].write(value)

    @refuses_unknown_keywords
    def write(self, value: Any, box: Box | None = None, *, workers: int | None = None) -> None:
        """Store ``value`` (an array or a scalar, numpy broadcasting) into this view or ``box``.

        The write is split on the store's chunk (or shard) grid and run in parallel; if any
        block fails, :class:`PartialWriteError` lists the boxes that were stored and those
        that were not.
        """
        if workers is not None:
            workers = whole_at_least(workers, 1, "workers")
        if box is not None:
            self._box_view(box).write(value, workers=workers)
            return
        from .writing import write_view  # (and voxgate.parallel: a read-only process needs neither)

        write_view(self, value, workers)






#: Volume.read without its keyword check, for its own call on a box's view
_read: Callable[[Volume], np.ndarray] = Volume.read.__wrapped__  # type: ignore[attr-defined]


def _check_options(method: Any, target: Any, options: dict[str, Any],
                   skip: tuple[str, ...] = ()) -> None:
    """Refuse a keyword of ``options`` (what ``method`` passes on to ``target``) that
    ``target`` does not take with UnknownKeywordError naming ``method`` (``Volume.preview()``
    rather than the function it calls) and all the two take (not ``skip``, the parameters
    ``method`` fills itself)."""
    if not options:
        return
    import inspect

    def named(func: Any) -> list[str]:
        return [p.name for p in inspect.signature(func).parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    takes = [n for n in named(inspect.unwrap(target)) if n not in skip]
    wrong = [k for k in options if k not in takes]
    if wrong:
        own = [n for n in named(method) if n != "self"]
        raise unknown_keyword(method, wrong, own + [n for n in takes if n not in own])


class _DaskSource:
    """The duck array dask reads from: slicing returns numpy arrays.

    Pickled (to a dask.distributed worker), it reopens its view at its first read, not when
    unpickled: a view the worker cannot open (``mem://``) then fails the tasks with voxgate's
    error, which ``compute()`` raises.  Failing to unpickle killed the workers instead, one
    after another, and ``compute()`` hung.  (A pickled Volume reopens when unpickled, or
    becomes :class:`_Unreachable`; this one also spares the scheduler, which unpickles every
    graph, opening the store at all.)"""

    def __init__(self, vol: Volume | None, reopen: tuple[Any, ...] = ()) -> None:
        self._vol = vol
        self._reopen_args = reopen
        src = vol if vol is not None else reopen[-1]
        self.shape = src.shape
        self.dtype = src.dtype
        self.ndim = len(self.shape)

    @property
    def vol(self) -> Volume:
        if self._vol is None:
            self._vol = _reopen(*self._reopen_args[:-1])
        return self._vol

    def __reduce__(self) -> tuple[Any, ...]:
        args = self._reopen_args or (*self.vol.__reduce__()[1],
                                     _Described(self.shape, self.dtype))
        return (_DaskSource, (None, args))

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.vol[key].read()


class _Described(NamedTuple):
    """The shape and dtype of a pickled :class:`_DaskSource`'s view (known before it is
    reopened)."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]


def _unpickle(spec: dict[str, Any], scale: int, bounds: Bounds, axes: Sequence[_Axis]
              ) -> Volume | _Unreachable:
    """A pickled view reopened (:func:`_reopen`).  One this process cannot open (a ``mem://``
    volume of another process; a path, server, token or package a dask scheduler, a worker
    or a spawned process here does not have) comes back as :class:`_Unreachable`, which
    raises that error at its first use and is pickled again as the view itself (the next
    process may open it).  Unpickling raised: that killed a dask.distributed worker given it
    (one after another: the task's result never came), broke a process pool, and failed the
    whole graph on the scheduler (which unpickles task graphs) with "Error during
    deserialization of the task graph", the reason only in the scheduler's log."""
    try:
        return _reopen(spec, scale, bounds, axes)
    except _CANNOT_REOPEN as exc:
        kind = next(k for k in _CANNOT_REOPEN if isinstance(exc, k))
        message = str(exc)
        if not str(spec["url"]).startswith("mem://"):
            message = (f"{message} (while reopening a pickled view of {redact(spec['url'])} in "
                       f"process {os.getpid()} on {socket.gethostname()}: every process given "
                       "it must reach the same store)")
        return _Unreachable(message, kind, (spec, scale, bounds, axes))


#: what a view unpickled where its store cannot be opened raises at its first use (not when
#: unpickled)
_CANNOT_REOPEN: tuple[type[VoxgateError], ...] = (
    RemoteNotFoundError, RemoteUnavailableError, AuthenticationError, MissingDependencyError)


class _Unreachable:
    """A view unpickled in a process that cannot open its store: any use raises the error
    opening it raised (so a task given it fails with that error); pickled, it is the view
    again."""

    def __init__(self, message: str, kind: type[VoxgateError] = RemoteNotFoundError,
                 reopen: tuple[Any, ...] | None = None) -> None:
        self._message = message
        self._kind = kind
        self._reopen_args = reopen

    def _fail(self, *_: Any, **__: Any) -> Any:
        raise self._kind(self._message)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # (protocols probed by copy, pickle, repr: not found)
            raise AttributeError(name)
        self._fail()

    __getitem__ = __setitem__ = __array__ = __len__ = __iter__ = _fail

    def __repr__(self) -> str:
        return f"<unreachable Volume: {self._message}>"

    def __reduce__(self) -> tuple[Any, ...]:
        if self._reopen_args is None:
            return (_Unreachable, (self._message, self._kind))
        return (_unpickle, self._reopen_args)


def _reopen(spec: dict[str, Any], scale: int, bounds: Bounds, axes: Sequence[_Axis]) -> Volume:
    try:
        remote = open_remote(spec["url"], mode=spec.get("mode", "r"), **spec.get("options", {}))
    except RemoteNotFoundError as exc:
        if not str(spec["url"]).startswith("mem://"):
            raise
        raise RemoteNotFoundError(
            f"{exc}: a mem:// volume lives only in the process that created it, so another "
            "process (a dask.distributed worker, a spawned process) cannot open it; write it to "
            "a store they can open (zarr://, n5://, precomputed://), or compute with threads "
            "(dask's default scheduler)") from None
    return Volume(remote, scale, bounds=bounds, _axes=tuple(_Axis(*a) for a in axes))
