"""``mem://name``: volumes held in numpy arrays in this process.

The reference every other Remote is tested against: a dense array per scale and nothing else.
Named volumes live in a process-wide table until :func:`delete` (or ``MemoryRemote.clear()``).

Like a chunked store, it records which chunks were written: a chunk no write has touched is
absent (``absent_chunks``, ``missing="error"``), and :meth:`MemoryRemote.delete_chunk` drops
one as deleting a chunk file would.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidRequestError, RemoteExistsError, RemoteNotFoundError
from ..geometry import Box, Vec, chunk_boxes
from ..meta import Scale, VolumeMeta
from ..meta import check_new_scales as _check_new_scales
from .base import Capability, Remote, check_options, check_same_volume

__all__ = ["MemoryRemote", "delete"]


@dataclass
class _Stored:
    meta: VolumeMeta
    arrays: list[np.ndarray]
    lock: threading.Lock
    #: per scale, the grid indices of chunks some write touched
    written: list[set[Vec]] = field(default_factory=list)

    def written_at(self, scale: int) -> set[Vec]:
        """The written set of ``scale`` (call with ``lock`` held)."""
        while len(self.written) <= scale:
            self.written.append(set())
        return self.written[scale]


_volumes: dict[str, _Stored] = {}
_table_lock = threading.Lock()


def _name(location: str) -> str:
    name = location.strip("/")
    if not name:
        raise InvalidRequestError("mem:// needs a name, e.g. mem://scratch")
    return name


def delete(name: str) -> None:
    """Forget the in-memory volume ``name``."""
    with _table_lock:
        _volumes.pop(_name(name), None)


class MemoryRemote(Remote):
    scheme = "mem"
    carried_extra = ("channel_names", "omero")  # (the metadata as given)

    def __init__(self, name: str, stored: _Stored, mode: str) -> None:
        self.name = name
        self._stored = stored
        self.meta = stored.meta
        self.mode = mode
        self.url = f"mem://{name}"

    @classmethod
    def wrap(cls, name: str, meta: VolumeMeta, arrays: list[np.ndarray], *,
             mode: str = "r", stored: bool = True) -> MemoryRemote:
        """A Remote over ``arrays`` (one per scale of ``meta``, used without a copy) that is
        registered under no mem:// name, so it is freed with its last reference: how Services
        hold numpy inputs and in-memory results.  ``url`` is ``mem://name`` but ``open`` does
        not find it.  Every chunk counts as written (``absent_chunks`` finds none: the arrays
        hold data), or, with ``stored=False`` (arrays of the fill value a Service writes its
        result into), none until a write touches it.  (Until 2026-12 none ever did: a copy of
        a wrapped numpy array took each block for absent and wrote the fill value.)"""
        if mode not in ("r", "r+"):
            raise InvalidRequestError(f"mode must be 'r' or 'r+', got {mode!r}")
        if len(arrays) != len(meta.scales):
            raise InvalidRequestError(
                f"{len(arrays)} arrays given for the {len(meta.scales)} scales of {name!r}"
            )
        held = _Stored(meta, list(arrays), threading.Lock())
        if stored:
            for k, sc in enumerate(meta.scales):
                held.written_at(k).update(g for g, _ in chunk_boxes(sc.bounds, sc.chunks,
                                                                    sc.bounds))
        return cls(name, held, mode)

    @classmethod
    def clear(cls) -> None:
        with _table_lock:
            _volumes.clear()

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> MemoryRemote:
        check_options("mem://", options, cls.open_options, "open")
        name = _name(location)
        with _table_lock:
            stored = _volumes.get(name)
        if stored is None:
            raise RemoteNotFoundError(f"no in-memory volume named {name!r} (create it first)")
        return cls(name, stored, mode)

    @classmethod
    def exists(cls, location: str) -> bool:
        with _table_lock:
            return _name(location) in _volumes

    @classmethod
    def create(
        cls, location: str, meta: VolumeMeta, *, exist_ok: bool = False, **options: Any
    ) -> MemoryRemote:
        check_options("mem://", options, cls.create_options, "create")
        name = _name(location)
        lead = (meta.num_channels,) if meta.num_channels > 1 else ()
        with _table_lock:
            if name in _volumes and not exist_ok:
                raise RemoteExistsError(f"mem://{name} already exists (pass exist_ok=True)")
            if name in _volumes:
                check_same_volume(_volumes[name].meta, meta, f"mem://{name}")
            if name not in _volumes:
                try:
                    arrays = [
                        np.full(lead + tuple(s.shape), meta.fill_value, dtype=meta.dtype)
                        for s in meta.scales
                    ]
                except (MemoryError, ValueError):
                    nbytes = sum(int(np.prod(lead + tuple(s.shape), dtype=object))
                                 for s in meta.scales) * meta.dtype.itemsize
                    raise InvalidRequestError(
                        f"mem://{name} would hold {nbytes} bytes in this process's memory, more "
                        "than can be allocated; use a store on disk (zarr://, n5://, ...) for "
                        "a volume this large"
                    ) from None
                _volumes[name] = _Stored(meta, arrays, threading.Lock(),
                                         [set() for _ in meta.scales])
            stored = _volumes[name]
        return cls(name, stored, "r+")

    @property
    def capabilities(self) -> frozenset[Capability]:
        if self.mode != "r+":
            return frozenset({Capability.CHUNK_PRESENCE})
        return frozenset({Capability.WRITE, Capability.ADD_SCALES, Capability.CHUNK_PRESENCE})

    def add_scales(self, scales: Sequence[Scale]) -> None:
        self._check_writable()
        meta = self._stored.meta
        _check_new_scales(meta, scales)
        lead = (meta.num_channels,) if meta.num_channels > 1 else ()
        with self._stored.lock:
            for sc in scales:
                self._stored.arrays.append(
                    np.full(lead + tuple(sc.shape), meta.fill_value, dtype=meta.dtype)
                )
                self._stored.written_at(len(self._stored.arrays) - 1)
            self._stored.meta = meta.with_scales([*meta.scales, *scales])
        self.meta = self._stored.meta

    def _slices(self, box: Box, scale: int) -> tuple[Any, ...]:
        origin = self.meta.scale(scale).offset
        return (Ellipsis, *box.slices(origin))

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        if self.missing == "error":
            self._check_present(box, scale)
        arr = self._stored.arrays[scale]
        with self._stored.lock:
            return np.array(arr[self._slices(box, scale)], copy=True)

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._check_writable()
        sc = self.meta.scale(scale)
        with self._stored.lock:
            self._stored.arrays[scale][self._slices(box, scale)] = array
            self._stored.written_at(scale).update(g for g, _ in chunk_boxes(box, sc.chunks,
                                                                             sc.bounds))

    def array(self, scale: int = 0) -> np.ndarray:
        """The array holding ``scale`` itself, not a copy (a Service hands over its in-memory
        result this way: a read would hold it twice)."""
        self.meta.scale(scale)  # (an unknown scale is refused as everywhere)
        return self._stored.arrays[scale]

    def absent_chunks(self, box: Box, scale: int = 0) -> list[Vec]:
        sc = self.meta.scale(scale)
        with self._stored.lock:
            written = self._stored.written_at(scale)
            return sorted(g for g, _ in chunk_boxes(box, sc.chunks, sc.bounds) if g not in written)

    def delete_chunk(self, index: Vec | tuple[int, int, int], scale: int = 0) -> None:
        """Drop one chunk (grid index z, y, x), as deleting its file would: its voxels become
        the fill value and it is absent until written again."""
        self._check_writable()
        sc = self.meta.scale(scale)
        g = Vec(*index)
        start = Vec(*(o + i * c for o, i, c in zip(sc.offset, g, sc.chunks, strict=True)))
        cell = Box(start, start + sc.chunks).intersect(sc.bounds)
        if cell.is_empty():
            raise InvalidRequestError(f"chunk {tuple(g)} is outside scale {scale} of {self.url}")
        with self._stored.lock:
            self._stored.arrays[scale][self._slices(cell, scale)] = self.meta.fill_value
            self._stored.written_at(scale).discard(g)
