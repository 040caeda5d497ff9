"""Checking project-service records (collections, experiments, coordinate frames, channels):
the whole request is checked before anything changes."""

from __future__ import annotations

import hashlib
import math
from typing import Any

from ...errors import InvalidRequestError
from ..config import check_name
from ..errors import INVALID_POST_ARGUMENT, BossHTTPError, bad_request

_HIERARCHY = ("anisotropic", "isotropic")


def _name(name: str, what: str) -> str:
    try:
        return check_name(name, what)
    except InvalidRequestError as exc:
        raise bad_request(INVALID_POST_ARGUMENT, str(exc)) from None



_MAX_DESCRIPTION = 4096  # bossDB's CharField(max_length=4096)
_MAX_EXTENT = 2**31 - 1  # bossDB keeps frame extents in 32-bit IntegerFields
_MAX_VOXEL_SIZE = 1e12
_MAX_LEVELS = 16
_STORED_NAME_MAX = 250  # a stored channel is the file NAME.zarr, and file names stop at 255
_TIME_UNITS = ("nanoseconds", "microseconds", "milliseconds", "seconds")
_VOXEL_UNITS = ("nanometers", "micrometers", "millimeters", "centimeters")
_FRAME_FIELDS = ("name", "description", "x_start", "x_stop", "y_start", "y_stop", "z_start",
                 "z_stop", "x_voxel_size", "y_voxel_size", "z_voxel_size", "voxel_unit")


def _invalid(message: str) -> BossHTTPError:
    return bad_request(INVALID_POST_ARGUMENT, message)


def _kind(value: Any) -> str:
    """A JSON value's type, as a message names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    return "an array" if isinstance(value, list) else "an object"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    readonly = set(body) - allowed
    if readonly:
        shown = sorted(_short(k) for k in readonly)[:10]
        raise _invalid(f"Cannot update the following readonly fields: {', '.join(shown)} "
                       f"(updatable: {', '.join(sorted(allowed))})")


def _same_name(body: dict[str, Any], name: str, what: str) -> None:
    if "name" in body and body["name"] != name:
        raise _invalid(f"renaming a {what} is not supported (name {_short(body['name'])} in the "
                       f"body, {name!r} in the URL)")


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _invalid(f"{key} must be a string, got {_kind(value)}")
    if len(value) > _MAX_DESCRIPTION:
        raise _invalid(f"{key} is {len(value)} characters long; at most {_MAX_DESCRIPTION}")
    return value


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise _invalid(f"{key} must be true or false, got {_kind(value)}")
    return value


def _integer(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int:
    value = body.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{key} must be an integer, got {_kind(value)}")
    if not lo <= value <= hi:
        allowed = f"must be {lo}" if lo == hi else f"must be from {lo} to {hi}"
        raise _invalid(f"{key} {allowed}, got {value}")
    return value


def _choice(body: dict[str, Any], key: str, default: str | None,
            choices: tuple[str, ...]) -> str | None:
    value = body.get(key, default)
    if value is None and default is None:
        return None
    if not isinstance(value, str) or value not in choices:
        raise _invalid(f"{key} must be one of {', '.join(choices)}, got {_kind(value)}")
    return value


def _names(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(f"{key} must be a list of channel names, got {_kind(value)}")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise _invalid(f"{key} must be a list of channel names; it holds {_kind(item)}")
        if item not in out:
            out.append(_name(item, f"{key} entry"))
    return out


def _experiment_fields(body: dict[str, Any], *, defaults: bool) -> dict[str, Any]:
    """The experiment fields of a POST (every one, with bossDB's defaults) or a PUT (the ones
    present), each checked."""
    out: dict[str, Any] = {}

    def has(k: str) -> bool:
        return defaults or k in body

    if has("description"):
        out["description"] = _text(body, "description")
    if has("public"):
        out["public"] = _flag(body, "public", False)
    if has("num_hierarchy_levels"):
        out["num_hierarchy_levels"] = _integer(body, "num_hierarchy_levels", 1, 1, _MAX_LEVELS)
    if has("hierarchy_method"):
        out["hierarchy_method"] = _choice(body, "hierarchy_method", "anisotropic", _HIERARCHY)
    if has("num_time_samples"):
        out["num_time_samples"] = _integer(body, "num_time_samples", 1, 1, _MAX_EXTENT)
    if has("time_step"):
        step = body.get("time_step")
        out["time_step"] = None if step is None else _integer(body, "time_step", None, 0,
                                                              _MAX_EXTENT)
    if has("time_step_unit"):
        out["time_step_unit"] = _choice(body, "time_step_unit", None, _TIME_UNITS)
    return out


def _frame_record(name: str, body: dict[str, Any]) -> dict[str, Any]:
    """A new coordinate frame's record, every field checked (extents 32-bit integers as in
    bossDB, voxel sizes finite and positive)."""
    rec: dict[str, Any] = {"name": name, "description": _text(body, "description")}
    for ax in "xyz":
        for end in ("start", "stop"):
            if f"{ax}_{end}" not in body:
                raise _invalid(f"invalid coordinate frame: {ax}_{end} is required")
        a = _integer(body, f"{ax}_start", None, 0, _MAX_EXTENT - 1)
        b = _integer(body, f"{ax}_stop", None, 1, _MAX_EXTENT)
        if not a < b:
            raise _invalid(f"invalid coordinate frame: {ax}_start ({a}) must be below {ax}_stop "
                           f"({b})")
        rec[f"{ax}_start"], rec[f"{ax}_stop"] = a, b
    for ax in "xyz":
        v = body.get(f"{ax}_voxel_size", 1.0)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _invalid(f"invalid coordinate frame: {ax}_voxel_size must be a number, got "
                           f"{_kind(v)}")
        if not (math.isfinite(v) and 0 < v <= _MAX_VOXEL_SIZE):
            raise _invalid(f"invalid coordinate frame: {ax}_voxel_size must be a finite number "
                           f"above 0 and at most {_MAX_VOXEL_SIZE:g}, got {v!r}")
        rec[f"{ax}_voxel_size"] = float(v)
    rec["voxel_unit"] = _choice(body, "voxel_unit", "nanometers", _VOXEL_UNITS)
    return rec


def _frame_json(rec: dict[str, Any]) -> dict[str, Any]:
    """A frame as bossDB shows it (the relay's own bookkeeping left out)."""
    return {k: rec[k] for k in _FRAME_FIELDS if k in rec}


def _owner(token: str | None) -> str:
    """Who created a frame, for its authorization: a digest of the token, never the token."""
    if token is None:
        return "anonymous"
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:32]


def _undelete(state: dict[str, Any], *parts: str) -> None:
    key = "/".join(parts)
    while key in state["deleted"]:
        state["deleted"].remove(key)
