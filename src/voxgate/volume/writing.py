"""Writes into a Volume's view: the value checked and broadcast, then cut on the store's write
grid into blocks of about ``WRITE_BLOCK_BYTES`` written in parallel (``Volume.write``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import (
    DtypeError,
    InvalidRequestError,
    MissingChunkError,
    OutOfBoundsError,
    PartialWriteError,
    ReadOnlyError,
)
from ..geometry import Box, chunk_boxes, grow_block
from ..parallel import run_blocks
from ..remotes.base import notify_written, writes_guarded
from .axes import _lattice

if TYPE_CHECKING:
    from .core import Volume

__all__ = ["WRITE_BLOCK_BYTES", "coerce", "write_blocks", "write_view"]

#: large writes are cut into blocks of whole chunks (or shards) of about this size, written in
#: parallel; a failure reports which blocks were stored
WRITE_BLOCK_BYTES = 8 * 2**20


def write_view(vol: Volume, value: Any, workers: int | None) -> None:
    """The body of ``Volume.write`` for the view itself (no ``box``)."""
    if vol.mode != "r+":
        raise ReadOnlyError(f"{vol.url} is opened read-only; open it with mode='r+' to write")
    if _streams_from(vol, value):
        _write_from_volume(vol, value, workers)
        return
    arr = coerce(vol, value)
    if any(a.length == 0 for a in vol._axes):
        return
    need = _target_box(vol)
    # put dropped axes back so the array has the enclosing box's shape
    full = arr.reshape(tuple(a.length for a in vol._axes))
    if any(a.step != 1 for a in vol._spatial):
        _write_strided(vol, need, full, workers)
        return
    data = full
    # a broadcast scalar, another dtype or an array not in C order is made a C-order array of
    # the volume's dtype block by block as the blocks are written (a few blocks in memory at
    # once), not whole first: filling a 1 GiB volume with 0 no longer allocates 1 GiB
    convert = data.dtype != vol.dtype or not data.flags.c_contiguous
    write_blocks(vol, need, data, workers, convert=convert)


def _streams_from(vol: Volume, value: Any) -> bool:
    """Whether ``value`` is a Volume to be read block by block as ``vol`` is written
    (``dst[...] = src``): of the view's very shape (a Volume broadcast is read whole), into
    a view without steps, and not overlapping ``vol`` in the same store (a block written
    before another is read would change what that one reads: numpy copies then, and so is
    the source read whole first)."""
    from .core import Volume

    if not isinstance(value, Volume) or value.shape != vol.shape:
        return False
    if any(a.step != 1 for a in vol._spatial) or any(a.length == 0 for a in vol._axes):
        return False
    same_store = value.url == vol.url and value._scale == vol._scale
    return not (same_store and not value._box().intersect(vol._box()).is_empty())


def _write_from_volume(vol: Volume, src: Volume, workers: int | None) -> None:
    """``vol[...] = src`` for another Volume of the same shape: each block written is read
    from ``src`` just before (a few blocks in memory at once; the whole source was read
    first)."""
    dt = vol.dtype
    _check_cast(src.dtype, dt)
    need = _target_box(vol)
    lead = (slice(None),) * (len(vol._axes) - 3)

    def part(b: Box) -> np.ndarray:
        index = (*lead, *b.slices(need.start))
        key = tuple(s for s, a in zip(index, vol._axes, strict=True) if a.keep)
        data = src[key].read() if key else src.read()
        shape = tuple(a.length for a in vol._axes[:-3]) + tuple(b.shape)
        return np.ascontiguousarray(data.reshape(shape), dtype=dt)

    _write_parts(vol, need, part, workers)


def _target_box(vol: Volume) -> Box:
    """The box a write into the view covers, refused outside the volume's bounds or when it
    leaves out channels of a multi-channel volume."""
    sc = vol.scale_meta
    need = vol._box()
    if not sc.bounds.contains(need):
        raise OutOfBoundsError(
            f"cannot write {need!r}: it is outside the volume's bounds {sc.bounds!r}"
        )
    if len(vol._axes) == 4 and (
        vol._axes[0].length != vol.meta.num_channels or not vol._axes[0].keep
    ):
        raise InvalidRequestError("writes must cover every channel of a multi-channel volume")
    return need


def _check_cast(dtype: np.dtype[Any], dt: np.dtype[Any]) -> None:
    if not np.can_cast(dtype, dt, casting="safe"):
        raise DtypeError(
            f"cannot write {dtype.name} data into a {dt.name} volume without losing "
            f"values; convert it first (e.g. arr.astype('{dt.name}'))"
        )


def _write_strided(vol: Volume, need: Box, full: np.ndarray, workers: int | None) -> None:
    """A view with steps: each block of its enclosing box holding voxels of the view is read,
    given the view's voxels and written back, so memory is a few blocks (the whole enclosing
    box was read first: ``vol[::2, ::2, ::2] = 0`` on a 1 GiB volume read 1 GiB)."""
    spatial = vol._spatial
    offset = vol.scale_meta.offset

    def part(b: Box) -> np.ndarray | None:
        hit = _lattice(spatial, offset, b)
        if hit is None:
            return None  # no voxel of the view here: left as it is
        index, sub = hit
        data = vol._remote.read(b, vol._scale)
        if not data.flags.writeable:
            data = data.copy()
        steps = tuple(slice(s0 - b0, e0 - b0, a.step)
                      for s0, e0, b0, a in zip(sub.start, sub.stop, b.start, spatial,
                                               strict=True))
        into: tuple[Any, ...] = (..., *steps)
        take: tuple[Any, ...] = (..., *index)
        data[into] = full[take]
        return data

    _write_parts(vol, need, part, workers)


def coerce(vol: Volume, value: Any) -> np.ndarray:
    """``value`` checked against the volume's dtype and broadcast to the view's shape."""
    from .core import Volume

    dt = vol.dtype
    if isinstance(value, Volume):
        value = value.read()
    if isinstance(value, (bool, int, float, np.generic)) and not isinstance(value, np.ndarray):
        _check_scalar(value, dt)
        return np.broadcast_to(np.asarray(value, dtype=dt), vol.shape)
    arr = np.asarray(value)
    if isinstance(value, (list, tuple)) and arr.dtype.kind in "iuf" and arr.size:
        # Python numbers, checked by value as a scalar is (numpy made them int64 / float64,
        # which a uint16 volume refused: "cannot write int64 data"), and a value that does
        # not fit is named ("300 does not fit in uint8"; the dtype's message advised astype,
        # which would wrap it)
        for v in (arr.min().item(), arr.max().item()):
            _check_scalar(v, dt)
        arr = arr.astype(dt)
    if arr.dtype == object:
        raise DtypeError(f"cannot write an object array into a {dt.name} volume")
    _check_cast(arr.dtype, dt)
    try:
        return np.broadcast_to(arr, vol.shape)
    except ValueError:
        raise InvalidRequestError(
            f"cannot write an array of shape {arr.shape} into a region of shape {vol.shape}"
        ) from None


def write_blocks(
    vol: Volume, box: Box, data: np.ndarray, workers: int | None, *, convert: bool = False
) -> None:
    """Write ``data`` (the shape of ``box``) in blocks; with ``convert`` each block is made a
    C-order array of the volume's dtype just before it is written (Remotes get those)."""

    def part(b: Box) -> np.ndarray:
        a = data if b == box else data[(..., *b.slices(box.start))]
        return np.ascontiguousarray(a, dtype=vol.dtype) if convert else a

    _write_parts(vol, box, part, workers)


def _write_parts(vol: Volume, box: Box, part: Callable[[Box], np.ndarray | None],
                 workers: int | None) -> None:
    """:func:`_write_blocks` under the volume's write guards (an edit of the volume in progress
    in this process is waited for), then the volume's write hooks told (also after a failed
    write: it may have stored some blocks)."""
    try:
        with writes_guarded(vol._remote, vol._scale):
            _write_blocks(vol, box, part, workers)
    finally:
        notify_written(vol._remote, vol._scale)


def _write_blocks(vol: Volume, box: Box, part: Callable[[Box], np.ndarray | None],
                  workers: int | None) -> None:
    grid = vol._remote.write_grid(vol._scale)
    itemsize = vol.dtype.itemsize * vol.meta.num_channels
    block = grow_block(grid, itemsize, box.shape, WRITE_BLOCK_BYTES)
    blocks = [
        cell.intersect(box)
        for _, cell in chunk_boxes(box, block, vol._remote.grid_bounds(vol._scale))
    ]
    #: what a block that failed was to hold, to tell afterwards which of its chunks it stored
    meant: dict[Box, np.ndarray] = {}

    def put(b: Box) -> None:
        data = part(b)  # (None: nothing to write there)
        if data is not None:
            try:
                vol._remote.write(b, data, vol._scale)
            except Exception:
                meant[b] = data
                raise

    if len(blocks) == 1:
        try:
            put(box)
        except Exception as exc:
            if box not in meant:
                raise
            stored, unknown = _stored_chunks(vol, box, meant[box], exc)
            if unknown:
                exc.add_note(f"some chunks of {box!r} may have been stored before the write "
                             "failed (they could not be read back to tell)")
            if not stored:
                raise
            kept = [c for c in _cells(vol, box) if c not in stored]
            raise PartialWriteError(
                f"writing {box!r} to {vol.url} failed ({exc}) after {len(stored)} of "
                f"{len(stored) + len(kept)} chunks were stored; {_unstored(kept, unknown)}",
                written=stored,
                failed=kept,
            ) from exc
        return

    res = run_blocks(put, blocks, workers=workers)
    if res.failed:
        first = res.failed[0][1]
        if not res.done and all(isinstance(e, ReadOnlyError) for _, e in res.failed):
            # the store refused every block it was asked (a committed DVID node, a read-only
            # bucket): nothing was written, and the refusal itself says why
            raise first
        written: list[Box] = list(res.done)
        failed: list[Box] = []
        unknown = False
        for b, e in res.failed:
            if b not in meant:
                failed.append(b)
                continue
            stored, unsure = _stored_chunks(vol, b, meant[b], e)
            written += stored
            failed += [c for c in _cells(vol, b) if c not in stored] if stored else [b]
            unknown = unknown or unsure
        tried = set(res.done) | {b for b, _ in res.failed}
        untouched = [b for b in blocks if b not in tried]
        failed += untouched
        raise PartialWriteError(
            f"writing {box!r} to {vol.url} failed in {len(res.failed)} of {len(blocks)} blocks "
            f"({first}); {len(res.done)} blocks were written, {len(untouched)} not attempted; "
            f"{len(written)} regions (in .written) now hold the new data, "
            f"{_unstored(failed, unknown)}",
            written=written,
            failed=failed,
        ) from first


def _cells(vol: Volume, b: Box) -> list[Box]:
    """The parts of ``b`` in each cell of the store's write grid (a chunk, or a shard): what
    the store writes whole or not at all."""
    grid = vol._remote.write_grid(vol._scale)
    return [c.intersect(b) for _, c in chunk_boxes(b, grid, vol._remote.grid_bounds(vol._scale))]


def _stored_chunks(vol: Volume, b: Box, data: np.ndarray, exc: BaseException
                   ) -> tuple[list[Box], bool]:
    """Which chunks of the block ``b``, whose write (of ``data``) raised ``exc``, hold the new
    data now: each chunk is written whole or not at all, so a block of several that failed
    half-way left some written and the rest as they were.  Read back and compared; (no chunk,
    whether the comparison could not be made) where the store refused the block before
    writing anything or could not be read."""
    if isinstance(exc, (ReadOnlyError, DtypeError, InvalidRequestError, OutOfBoundsError)):
        return [], False  # refused before anything was sent
    cells = _cells(vol, b)
    if len(cells) < 2:
        return [], False
    nan = bool(np.issubdtype(data.dtype, np.inexact))
    stored: list[Box] = []
    for c in cells:
        want = data[(..., *c.slices(b.start))]
        try:
            have = vol._remote.read(c, vol._scale)
        except MissingChunkError:  # (opened with missing="error": absent reads as fill)
            have = np.full(want.shape, vol.meta.fill_value, dtype=want.dtype)
        except Exception:  # (any: this only adds detail to the error being raised)
            return [], True
        if np.array_equal(have.reshape(want.shape), want, equal_nan=nan):
            stored.append(c)
    return stored, False


def _unstored(boxes: list[Box], unknown: bool) -> str:
    if unknown:
        return (f"{len(boxes)} (in .failed) were not written whole and could not be read back: "
                "they may hold some new chunks")
    return f"{len(boxes)} (in .failed) hold what they held before"


def _check_scalar(value: Any, dt: np.dtype[Any]) -> None:
    if isinstance(value, np.generic):
        if not np.can_cast(value.dtype, dt, casting="safe") and not (
            np.issubdtype(value.dtype, np.integer)
            and np.issubdtype(dt, np.integer)
            and np.iinfo(dt).min <= int(value) <= np.iinfo(dt).max
        ):
            raise DtypeError(f"cannot store {value!r} ({value.dtype.name}) in a {dt.name} volume")
        return
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            if not info.min <= value <= info.max:
                raise DtypeError(
                    f"{value} does not fit in {dt.name} (range {info.min}..{info.max})"
                )
            return
    elif isinstance(value, float) and not np.issubdtype(dt, np.floating):
        raise DtypeError(f"cannot store the float {value!r} in a {dt.name} volume")
    if np.issubdtype(dt, np.floating) and (isinstance(value, int) or math.isfinite(value)) \
            and abs(value) > float(np.finfo(dt).max):  # (stored, it would be inf)
        raise DtypeError(f"{value!r} does not fit in {dt.name} (largest {np.finfo(dt).max})")
