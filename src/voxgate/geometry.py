"""Geometry values: named (z, y, x) vectors, half-open boxes and chunk-grid arithmetic.

Everything is in voxels at one scale, axis order Z, Y, X, boxes half-open ``[start, stop)``.
Values are frozen: every operation returns a new one.
"""

from __future__ import annotations

import itertools
import math
import numbers
import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .errors import InvalidRequestError

__all__ = ["Box", "Vec", "VoxelSize", "chunk_boxes", "grid_range", "grid_shape", "grow_block",
           "origin_grid_bounds", "whole",
           "whole_at_least"]


def whole(value: object) -> int | None:
    """``value`` as a Python int when it is a whole number (an int or a numpy integer, never a
    bool), else None: the check of a count or an index given by a user, who may well hold a
    numpy integer."""
    if type(value) is int:
        return value
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        return None
    try:
        return operator.index(value)
    except TypeError:  # numpy's bool has __index__ and refuses it
        return None


def whole_at_least(value: object, minimum: int, what: str) -> int:
    """``value`` as a Python int (:func:`whole`) of at least ``minimum``, else
    InvalidRequestError naming ``what``."""
    n = whole(value)
    if n is None or n < minimum:
        raise InvalidRequestError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return n


def _as_int(value: object, what: str) -> int:
    n = whole(value)
    if n is None:
        raise InvalidRequestError(f"{what} must be an integer, got {value!r}")
    return n


class Vec(NamedTuple):
    """An integer (z, y, x) triple: a position, a shape or a chunk size in voxels."""

    z: int
    y: int
    x: int

    @classmethod
    def of(cls, value: Iterable[object] | Vec, what: str = "value") -> Vec:
        """Make a Vec from any 3-sequence of integers, checking length and types."""
        if isinstance(value, Vec):
            return value
        if type(value) is tuple and len(value) == 3 and all(type(v) is int for v in value):
            return cls(*value)  # type: ignore[arg-type]  # hot path: plain int triples need no further checks
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise InvalidRequestError(f"{what} must be a (z, y, x) sequence, got {value!r}")
        items = list(value)
        if len(items) != 3:
            raise InvalidRequestError(
                f"{what} must have 3 entries in (z, y, x) order, got {len(items)}: {items!r}"
            )
        return cls(*(_as_int(v, what) for v in items))

    def xyz(self) -> tuple[int, int, int]:
        """The same values in (x, y, z) order, as precomputed and bossDB URLs want them."""
        return (self.x, self.y, self.z)

    @classmethod
    def from_xyz(cls, value: Sequence[object], what: str = "value") -> Vec:
        v = Vec.of(value, what)
        return cls(v.x, v.y, v.z)

    def __add__(self, other: object) -> Vec:
        o = Vec.of(other)  # type: ignore[arg-type]
        return Vec(self.z + o.z, self.y + o.y, self.x + o.x)

    def __sub__(self, other: object) -> Vec:
        o = Vec.of(other)  # type: ignore[arg-type]
        return Vec(self.z - o.z, self.y - o.y, self.x - o.x)

    def prod(self) -> int:
        return self.z * self.y * self.x


class VoxelSize(NamedTuple):
    """The physical size of one voxel, named axes, with its unit (nanometres by default)."""

    z: float
    y: float
    x: float
    unit: str = "nm"

    @classmethod
    def of(cls, value: object, unit: str = "nm") -> VoxelSize:
        if isinstance(value, VoxelSize):
            return value
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise InvalidRequestError(f"voxel_size must be a (z, y, x) sequence, got {value!r}")
        items = list(value)
        if len(items) != 3:
            raise InvalidRequestError(
                f"voxel_size must have 3 entries in (z, y, x) order, got {items!r}"
            )
        out = []
        for v in items:
            # (numbers.Real: numpy's integer and float scalars too, not numpy's bool)
            if (isinstance(v, bool) or not isinstance(v, numbers.Real)
                    or not math.isfinite(float(v)) or not float(v) > 0):
                raise InvalidRequestError(
                    f"voxel sizes must be positive finite numbers, got {items!r}")
            out.append(float(v))
        return cls(out[0], out[1], out[2], unit)

    def zyx(self) -> tuple[float, float, float]:
        return (self.z, self.y, self.x)

    def xyz(self) -> tuple[float, float, float]:
        return (self.x, self.y, self.z)

    def __repr__(self) -> str:
        return f"VoxelSize(z={self.z:g}, y={self.y:g}, x={self.x:g}, unit={self.unit!r})"


@dataclass(frozen=True)
class Box:
    """A half-open box ``[start, stop)`` of voxels, (z, y, x)."""

    start: Vec
    stop: Vec

    def __init__(self, start: Iterable[object], stop: Iterable[object]) -> None:
        s, e = Vec.of(start, "box start"), Vec.of(stop, "box stop")
        for a, b in zip(s, e, strict=True):
            if b < a:
                raise InvalidRequestError(f"box stop {tuple(e)} is before its start {tuple(s)}")
        object.__setattr__(self, "start", s)
        object.__setattr__(self, "stop", e)

    @classmethod
    def _trusted(cls, start: Vec, stop: Vec) -> Box:
        """A Box from Vecs already known valid (stop >= start): no checks, for hot paths."""
        box = object.__new__(cls)
        object.__setattr__(box, "start", start)
        object.__setattr__(box, "stop", stop)
        return box

    @classmethod
    def from_shape(cls, shape: Iterable[object], offset: Iterable[object] = (0, 0, 0)) -> Box:
        o, sh = Vec.of(offset, "offset"), Vec.of(shape, "shape")
        return cls(o, o + sh)

    @classmethod
    def parse(cls, text: str) -> Box:
        """Parse ``"z0:z1,y0:y1,x0:x1"`` (the command-line form)."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 3:
            raise InvalidRequestError(f"a box is 'z0:z1,y0:y1,x0:x1', got {text!r}")
        starts, stops = [], []
        for p in parts:
            a, sep, b = p.partition(":")
            try:
                starts.append(int(a))
                stops.append(int(b))
            except ValueError:
                raise InvalidRequestError(f"a box is 'z0:z1,y0:y1,x0:x1', got {text!r}") from None
            if not sep:
                raise InvalidRequestError(f"a box is 'z0:z1,y0:y1,x0:x1', got {text!r}")
        return cls(starts, stops)

    @property
    def shape(self) -> Vec:
        e, s = self.stop, self.start
        return Vec(e.z - s.z, e.y - s.y, e.x - s.x)

    @property
    def size(self) -> int:
        return self.shape.prod()

    def is_empty(self) -> bool:
        return any(a >= b for a, b in zip(self.start, self.stop, strict=True))

    def intersect(self, other: Box) -> Box:
        s, o = self.start, other.start
        start = Vec(max(s.z, o.z), max(s.y, o.y), max(s.x, o.x))
        e, f = self.stop, other.stop
        stop = Vec(
            max(start.z, min(e.z, f.z)), max(start.y, min(e.y, f.y)), max(start.x, min(e.x, f.x))
        )
        return Box._trusted(start, stop)

    def contains(self, other: Box) -> bool:
        s, t, e, f = self.start, other.start, self.stop, other.stop
        return (s.z <= t.z and s.y <= t.y and s.x <= t.x
                and e.z >= f.z and e.y >= f.y and e.x >= f.x)

    def translate(self, delta: Iterable[object]) -> Box:
        d = Vec.of(delta)
        return Box(self.start + d, self.stop + d)

    def slices(self, origin: Iterable[object] = (0, 0, 0)) -> tuple[slice, slice, slice]:
        """numpy slices of this box inside an array whose first voxel is ``origin``."""
        o = Vec.of(origin)
        return tuple(  # type: ignore[return-value]
            slice(a - c, b - c) for a, b, c in zip(self.start, self.stop, o, strict=True)
        )

    def __repr__(self) -> str:
        r = ", ".join(f"{a}:{b}" for a, b in zip(self.start, self.stop, strict=True))
        return f"Box[{r}]"

    def __str__(self) -> str:
        return ",".join(f"{a}:{b}" for a, b in zip(self.start, self.stop, strict=True))


def grid_shape(bounds: Box, chunks: Vec) -> Vec:
    """Number of chunks along each axis of a grid anchored at ``bounds.start``."""
    return Vec(*(math.ceil(s / c) for s, c in zip(bounds.shape, chunks, strict=True)))


def grid_range(box: Box, cells: Sequence[int], origin: Sequence[int]) -> tuple[Vec, Vec]:
    """The grid indices ``[lo, hi)`` per axis of the cells (of shape ``cells``, on the grid
    whose lines pass through ``origin``) that ``box`` touches: ``(start - origin) // cells``
    and the ceiling of ``(stop - origin) / cells``.  (An axis of no voxels that falls inside a
    cell still gives that cell: callers refuse empty boxes first.)"""
    return (Vec(*((a - o) // c for a, o, c in zip(box.start, origin, cells, strict=True))),
            Vec(*(-(-(b - o) // c) for b, o, c in zip(box.stop, origin, cells, strict=True))))


def chunk_boxes(region: Box, chunks: Vec, bounds: Box) -> Iterator[tuple[Vec, Box]]:
    """Chunk grid cells touching ``region``, as (grid index, cell box clipped to ``bounds``).

    The grid is anchored at ``bounds.start`` (a precomputed ``voxel_offset``, a boss frame
    start) and cells at the upper edge are truncated, as every chunked format stores them.
    """
    region = region.intersect(bounds)
    if region.is_empty():
        return
    lo, hi = grid_range(region, chunks, bounds.start)
    for idx in itertools.product(*(range(a, b) for a, b in zip(lo, hi, strict=True))):
        g = Vec(*idx)
        start = Vec(*(o + i * c for o, i, c in zip(bounds.start, g, chunks, strict=True)))
        cell = Box(start, start + chunks).intersect(bounds)
        yield g, cell


def origin_grid_bounds(bounds: Box, grid: Vec) -> Box:
    """``bounds`` widened down to the lines of ``grid`` through 0 at or below its start: what
    ``chunk_boxes`` takes to lay a grid through 0 over ``bounds`` (DVID blocks, bossDB
    cuboids) rather than one from its first voxel."""
    start = Vec(*(a // g * g for a, g in zip(bounds.start, grid, strict=True)))
    return Box(start, bounds.stop)


def grow_block(grid: Vec, itemsize: int, limit: Vec, target_bytes: int) -> Vec:
    """Double ``grid`` (x first, then y, then z) toward ``target_bytes``, not past ``limit``.

    The result is a multiple of ``grid``, so blocks of it stay aligned to the chunks (or shards)
    they are made of; copies and large writes use it to cut per-call overhead without giving up
    bounded memory.
    """
    shape = list(grid)
    grew = True
    while grew:
        grew = False
        for ax in (2, 1, 0):
            if shape[ax] < limit[ax] and math.prod(shape) * 2 * itemsize <= target_bytes:
                shape[ax] *= 2
                grew = True
    return Vec(*shape)
