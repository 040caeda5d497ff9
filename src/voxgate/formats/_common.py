"""Checks shared by the mesh and skeleton types: segment ids and array fields."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidRequestError

__all__ = ["float_rows", "index_rows", "segment_id"]

_MAX_ID = 2**64 - 1


def segment_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidRequestError(f"{what} must be an integer segment id, got {value!r}")
    out = int(value)
    if not 0 <= out <= _MAX_ID:
        raise InvalidRequestError(f"{what} {out} is not a uint64 segment id")
    return out


def float_rows(value: object, name: str, width: int) -> np.ndarray:
    """``value`` as a C-contiguous float32 (n, width) array of finite numbers."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"{name} is not an array: {exc}") from None
    if arr.dtype.kind not in "fiu":
        raise InvalidRequestError(
            f"{name} must hold real numbers (float32), not {arr.dtype.name} values"
        )
    if arr.size == 0:
        arr = arr.reshape(0, width)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise InvalidRequestError(f"{name} must have shape (n, {width}), got {arr.shape}")
    with np.errstate(over="ignore", invalid="ignore"):  # reported just below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InvalidRequestError(f"{name} holds NaN or infinite values (or values too large "
                                  "for float32)")
    return out


def index_rows(value: object, name: str, width: int, limit: int, what: str) -> np.ndarray:
    """``value`` as a C-contiguous uint32 (m, width) array of indices below ``limit``."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"{name} is not an array: {exc}") from None
    if arr.size == 0:
        arr = arr.reshape(0, width)
    if arr.dtype.kind not in "iu":
        raise InvalidRequestError(
            f"{name} must hold integer vertex indices (uint32), not {arr.dtype.name} values"
        )
    if arr.ndim != 2 or arr.shape[1] != width:
        raise InvalidRequestError(f"{name} must have shape (m, {width}), got {arr.shape}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0:
            raise InvalidRequestError(f"{name} holds a negative vertex index ({lo})")
        if hi >= limit:
            row = int(np.argwhere(arr == hi)[0][0])
            raise InvalidRequestError(
                f"{name}[{row}] refers to vertex {hi}, but there are only {limit} {what} "
                f"(indices 0..{limit - 1})"
            )
    return np.ascontiguousarray(arr, dtype=np.uint32)
