"""history (the edits of a volume as a table) and undo."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    PartialWriteError,
    refuses_unknown_keywords,
)
from ...geometry import Box, whole_at_least
from ...parallel import run_blocks
from ...volume import Volume
from .._common import Provenance, as_volume, progress_bar
from ..proofread_history import History, current_user
from .core import EditResult, _forget_stats, _hist, _open, _recorded, one_edit_at_a_time
from .dvid import _adopt_log, _check_local_undo, _dvid_log, _dvid_undo, _log_entries
from .remeshing import _check_remesh, _remesh

if TYPE_CHECKING:
    import pandas as pd


def _restore(vol: Volume, saved: list[tuple[Box, int | None, Path]], label: str,
             progress: bool, workers: int | None) -> Any:
    """Write the saved voxels back, each block at its scale (the edited one, or a coarser one
    the edit downsampled into): the voxels the edit changed only, where the history says which
    (the block's other voxels keep what was written to them since).  Each block's voxels are
    loaded as it is written (a few blocks in memory at once): loaded all first, undoing an
    edit of a whole volume held all of it.  At most ``workers`` blocks are in flight (each is
    loaded by the thread that writes it, and a block queued by
    :func:`~voxgate.parallel.run_blocks` is a key until then), each at most two arrays of its
    size (the saved voxels, and the block as it is now with the saved ones copied into it in
    place), released when it is written."""
    files = {(vol.scale if k is None else k, b): f for b, k, f in saved}

    def put(key: tuple[int, Box]) -> None:
        scale, box = key
        old, changed = History.load_saved(files[key])
        if changed is not None and not changed.all():
            block = vol.remote.read(box, scale)
            differs = old != block
            differs &= changed
            if not differs.any():  # the edit's voxels are as they were already
                return
            del differs
            if not block.flags.writeable:
                block = block.copy()
            # the edit's voxels back, the others as written since: in place (np.where made a
            # third array of the block's size per thread)
            np.copyto(block, old, where=changed)
            old = block  # (the saved voxels released)
            del block
        del changed
        vol.remote.write(box, np.ascontiguousarray(old), scale)

    with progress_bar(progress, len(files), label) as bar:
        return run_blocks(put, list(files), workers=workers,
                          on_done=lambda _b, _o: bar.advance())


# -- history and undo -----------------------------------------------------------------------------
@refuses_unknown_keywords
def history(seg: Any, *, history_dir: Any = None) -> pd.DataFrame:
    """The edits of a volume, one row each: n, time, user, operation, path (local / server),
    params, ids, boxes, blocks, status (started, done, partial, undone) and for undo rows the
    edit they undid."""
    import pandas as pd

    vol = as_volume(seg) if not isinstance(seg, np.ndarray) else None
    if vol is None:
        raise InvalidRequestError("a numpy array has no history; give the volume's URL")
    hist = _hist(vol, history_dir)
    entries = hist.entries()
    if not entries and vol.remote.scheme == "dvid":
        entries = _log_entries(vol)
    cols = ["n", "time", "user", "operation", "path", "params", "ids", "boxes", "blocks",
            "status", "undoes", "seconds"]
    return pd.DataFrame([{c: e.get(c) for c in cols} for e in entries], columns=cols)


@refuses_unknown_keywords
@one_edit_at_a_time
def undo(seg: Any, n: int = 1, *, user: str | None = None, progress: bool = False,
         workers: int | None = None, history_dir: Any = None) -> list[EditResult]:
    """Undo the last ``n`` edits not yet undone, newest first: the voxels each changed are
    written back as they were (a DVID server edit restores the supervoxel -> body mapping)."""
    n = whole_at_least(n, 1, "n")
    vol = _open(seg)
    hist = _hist(vol, history_dir)
    _adopt_log(vol, hist)
    todo = [e for e in hist.entries()
            if e.get("operation") != "undo" and e.get("status") in ("done", "partial",
                                                                     "started")]
    if len(todo) < n:
        raise InvalidRequestError(
            f"{vol.url} has {len(todo)} edit(s) left to undo, not {n} (voxgate history URL)")
    # the local edits among them are refused before any is undone: checked edit by edit,
    # undo(n=2) undid a server edit and then refused the local one before it ("Nothing was
    # changed"), leaving the volume half undone
    local = [int(e["n"]) for e in todo[-n:] if e.get("path") != "server"
             and hist.saved_blocks(int(e["n"]))]
    if local:
        # a server edit undone before a local one posts mappings after the check: then the
        # node's whole mapping is checked, else only what the local undos rewrite
        oldest_local = min(local)
        narrow = not any(e.get("path") == "server" and int(e["n"]) > oldest_local
                         for e in todo[-n:])
        _check_local_undo(vol, f"undoing edit(s) {sorted(local)}", hist, local, narrow)
    out = []
    for e in reversed(todo[-n:]):
        t0 = time.perf_counter()
        k = int(e["n"])
        u = hist.start({"user": current_user(user), "operation": "undo", "undoes": k,
                        "path": e.get("path", "local"), **_recorded(vol),
                        "scale": vol.scale, "params": {}, "ids": e.get("ids", []),
                        "boxes": e.get("boxes", [])})
        if e.get("path") == "server":
            _dvid_undo(vol, e, [x for x in hist.entries() if int(x["n"]) > k
                                and x.get("operation") != "undo"])
            written = 0
        else:
            saved = hist.saved_blocks(k)
            if saved:
                res = _restore(vol, saved, f"undo {k}", progress, workers)
                if res.failed:
                    raise PartialWriteError(
                        f"undo of edit {k} failed at {res.failed[0][0][1]!r} (scale "
                        f"{res.failed[0][0][0]}: {res.failed[0][1]}); run undo again to finish "
                        "it", written=[b for _, b in res.done],
                        failed=[b for (_, b), _ in res.failed])
            written = len(saved)
        hist.update(k, status="undone")
        hist.update(u, status="done", blocks=written, seconds=round(time.perf_counter() - t0, 3))
        if e.get("path") == "server":
            _dvid_log(vol, {"n": k, "status": "undone"})
            _dvid_log(vol, hist.entry(u))
        out.append(EditResult(u, "undo", {}, (), written, (),
                              Provenance("undo", e.get("path", "local"), vol.url, {"undid": k})))
    _forget_stats(vol)
    _remesh_undone(vol, todo[-n:])
    return out


def _remesh_undone(vol: Volume, undone: list[dict[str, Any]]) -> None:
    """Mesh / skeletonize again the ids of the undone edits that did (``remesh=``), as the
    volume is now: the ids that are back get their meshes back, the ids the edits had made
    (a split's pieces) lose theirs.  A layer that no longer has the directory is left alone."""
    kinds = {e["remesh"] for e in undone if e.get("remesh")}
    if not kinds:
        return
    meshes = bool(kinds & {"meshes", "both"})
    skels = bool(kinds & {"skeletons", "both"})
    remesh = "both" if meshes and skels else "meshes" if meshes else "skeletons"
    try:
        _check_remesh(vol, remesh)
    except CapabilityNotSupportedError:
        return
    _remesh(vol, {int(i) for e in undone if e.get("remesh") for i in e.get("ids", [])}, remesh)
