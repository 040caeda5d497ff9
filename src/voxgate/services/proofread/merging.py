"""relabel and merge: every voxel of some ids gets another id, in the blocks holding them only
(or, for a merge on a ``dvid://`` labelmap, DVID merges the bodies itself)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from ...errors import CapabilityNotSupportedError, InvalidRequestError, refuses_unknown_keywords
from ...geometry import Box
from ...remotes.base import Capability
from .._common import Prefer, Provenance, choose_path
from .coarser import coarser_step
from .core import (
    EditResult,
    _blocks,
    _boxes,
    _covers_scale,
    _edit_blocks,
    _forget_stats,
    _hist,
    _label,
    _note_boxes,
    _open,
    _remap_fn,
    _start,
    _union,
    one_edit_at_a_time,
)
from .dvid import _check_local_edit, _dvid_merge
from .remeshing import _check_remesh, _recorded_remesh, _remesh


@refuses_unknown_keywords
@one_edit_at_a_time
def relabel(seg: Any, mapping: Mapping[Any, Any], *, user: str | None = None,
            progress: bool = False, workers: int | None = None, history_dir: Any = None,
            remesh: Any = False, _operation: str = "relabel",
            _params: dict[str, Any] | None = None) -> EditResult:
    """Give every voxel of each id in ``mapping`` its new id (``{old: new}``), in the blocks
    that hold the old ids only.  A new id may be an existing one (that is a merge)."""
    t0 = time.perf_counter()
    vol = _open(seg)
    _check_remesh(vol, remesh)
    if not isinstance(mapping, Mapping) or not mapping:
        raise InvalidRequestError(f"mapping must be a non-empty {{old id: new id}} dict, got "
                                  f"{mapping!r}")
    m = {_label(k, vol.dtype, "old id"): _label(v, vol.dtype, "new id")
         for k, v in mapping.items()}
    m = {k: v for k, v in m.items() if k != v}
    if not m:
        raise InvalidRequestError("the mapping changes nothing (every id maps to itself)")
    boxes = _boxes(vol, m)
    blocks = _blocks(vol, boxes.values())
    # the blocks rewritten are those holding an old id; the ids written, the new ones
    _check_local_edit(vol, f"{_operation} of {sorted(m)}", blocks, bodies=m, writes=m.values())
    hist = _hist(vol, history_dir)
    params = _params if _params is not None else {"mapping": {str(k): v for k, v in m.items()}}
    n = _start(hist, vol, _operation, "local", user, params, sorted(set(m) | set(m.values())),
               boxes.values())
    written = _edit_blocks(vol, hist, n, blocks, _remap_fn(m, vol.dtype), label=_operation,
                           progress=progress, workers=workers)
    grown: dict[int, Box] = {}
    for k, v in m.items():
        grown[v] = _union([boxes[k]] + ([grown[v]] if v in grown else []))
    if _covers_scale(vol):
        _note_boxes(vol, m, grown)
    else:  # the old ids may go on outside the view (their boxes were cut to it)
        _forget_stats(vol)
    coarse = coarser_step(vol, hist, n, written, _operation)
    hist.update(n, status="done", blocks=len(written), seconds=round(time.perf_counter() - t0, 3),
                **_recorded_remesh(remesh))
    _remesh(vol, set(m) | set(m.values()), remesh)
    return EditResult(n, _operation, m, (), len(written), tuple(boxes.values()),
                      Provenance(_operation, "local", vol.url,
                                 {"blocks": len(written), "blocks_considered": len(blocks),
                                  **coarse}))


@refuses_unknown_keywords
@one_edit_at_a_time
def merge(seg: Any, ids: Iterable[Any], into: Any = None, *, user: str | None = None,
          prefer: Prefer = "auto", progress: bool = False, workers: int | None = None,
          history_dir: Any = None, remesh: Any = False) -> EditResult:
    """Every voxel of ``ids`` gets ``into`` (default: the smallest of ``ids``).

    On a ``dvid://`` labelmap opened read-write DVID merges the bodies itself (``into`` must
    then be one of ``ids``); elsewhere the blocks holding ``ids`` are rewritten.
    """
    vol = _open(seg)
    _check_remesh(vol, remesh)
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise InvalidRequestError(f"ids must be a list of segment ids, got {ids!r}")
    labs = sorted({_label(i, vol.dtype) for i in ids})
    if not labs:
        raise InvalidRequestError("a merge needs at least two ids, got none")
    target = labs[0] if into is None else _label(into, vol.dtype, "into")
    if len(set(labs) | {target}) < 2:
        raise InvalidRequestError(f"a merge needs at least two ids, got {labs} into {target}")
    path = choose_path(prefer, vol.remote, Capability.SERVER_PROOFREAD, "merge")
    if path == "server" and target not in labs:
        if prefer == "server":
            raise CapabilityNotSupportedError(
                f"DVID merges into one of the merged bodies; {target} is not among {labs} "
                "(use prefer='local', or merge into one of them)")
        path = "local"
    if path == "server":
        return _dvid_merge(vol, labs, target, user, history_dir, remesh)
    return relabel(vol, {i: target for i in labs if i != target}, user=user, progress=progress,
                   workers=workers, history_dir=history_dir, remesh=remesh,
                   _operation="merge", _params={"into": target, "ids": labs})
