"""The axes of a Volume's view: one ``_Axis`` per dimension (start, step, length, kept or
dropped), integer index checks and slice formatting for messages."""

from __future__ import annotations

import functools
import operator
from typing import Any, NamedTuple

import numpy as np

from ..errors import IndexingError


class _Axis(NamedTuple):
    """One axis of a view, in 0-based index coordinates of the scale (before the offset).

    A NamedTuple (immutable, and made in a third of a frozen dataclass's time: every
    ``vol[...]`` makes one per axis)."""

    start: int
    step: int
    length: int
    keep: bool = True

    @property
    def stop(self) -> int:
        """One past the last index touched (not numpy's stop: exact for any step)."""
        return self.start + (self.length - 1) * self.step + 1 if self.length else self.start


#: ``_new_axis((start, step, length, keep))``: an _Axis made without the Python-level
#: ``__new__`` of a NamedTuple (no checks: for values already checked)
_new_axis = functools.partial(tuple.__new__, _Axis)


def _index_int(value: Any, what: str) -> int:
    if type(value) is int:  # the usual case (a bool is not one: its type is bool)
        return value
    if isinstance(value, (bool, np.bool_)):
        raise IndexingError(
            f"{what} must be an integer, a slice or '...', got the boolean {value!r}: a boolean "
            "index is not taken as 0 or 1 (numpy would read it as a mask); use an integer"
        )
    try:
        return operator.index(value)
    except TypeError:
        allowed = "an integer or None" if what.startswith("a slice") else \
            "an integer, a slice or '...'"
        hint = "; round it to an integer first (int(...))" if isinstance(
            value, (float, np.floating)) and np.isfinite(value) else ""
        raise IndexingError(
            f"{what} must be {allowed}, got {type(value).__name__} {value!r}{hint}"
        ) from None


def _fmt_slice(s: slice) -> str:
    a = "" if s.start is None else s.start
    b = "" if s.stop is None else s.stop
    return f"{a}:{b}" + ("" if s.step is None else f":{s.step}")


def _lattice(axes: tuple[_Axis, _Axis, _Axis], offset: Any, part: Any
             ) -> tuple[tuple[slice, ...], Any] | None:
    """The voxels of a (strided) view's spatial ``axes`` that lie in the Box ``part`` (dataset
    coordinates; ``offset`` is the scale's): the view's index range on each axis, and the
    smallest Box holding them (read it and step through it to get them), or None when ``part``
    holds none of them."""
    from ..geometry import Box, Vec

    index: list[slice] = []
    lo: list[int] = []
    hi: list[int] = []
    for a, o, p0, p1 in zip(axes, offset, part.start, part.stop, strict=True):
        first = o + a.start
        i0 = max(0, -(-(p0 - first) // a.step))
        i1 = min(a.length, -(-(p1 - first) // a.step))
        if i1 <= i0:
            return None
        index.append(slice(i0, i1))
        lo.append(first + i0 * a.step)
        hi.append(first + (i1 - 1) * a.step + 1)
    return tuple(index), Box(Vec(*lo), Vec(*hi))
