"""label_stats: ids, voxel counts, bounding boxes and centroids of every label, as a DataFrame.

Locally it runs block by block (counts add, boxes take min/max, centroids are count-weighted
means), so any volume fits.  On a store that knows its ids and bounding boxes (bossDB), the
server path asks it instead: ids and bounding boxes only, counts and centroids missing.  It
costs one request per id, so "auto" times them as they go and leaves for the local path when
the ids left would take longer than reading and computing the whole volume here.  A voxgate
relay answers every column of the whole channel in one request (``ids?boxes=tight``), the
same frame as the local path's.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ..absence import StoredGroups, background_groups, chunk_blocks, holds_nothing, read_stored
from ..blockwise import (
    block_shape,
    blocks_at_once,
    check_block,
    check_client,
    check_for_cluster,
    count_blocks,
    iter_blocks,
    run_blocks,
    scheduler_name,
)
from ..errors import InvalidRequestError, check_flag, refuses_unknown_keywords
from ..geometry import Box
from ..remotes.base import Capability
from ._common import Prefer, Provenance, as_volume, choose_path, progress_bar

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COLUMNS", "label_stats", "label_stats_kernel", "merge_stats", "server_is_slower"]

BLOCK_BYTES = 64 * 2**20
COLUMNS = ["id", "voxel_count", "z0", "y0", "x0", "z1", "y1", "x1",
           "centroid_z", "centroid_y", "centroid_x"]


def label_stats_kernel(
    labels: np.ndarray, origin: Sequence[int] = (0, 0, 0)
) -> dict[str, np.ndarray]:
    """Per non-zero label of a C-order (z, y, x) array: counts, boxes, coordinate sums.

    Coordinates are ``origin`` + array index.  Returns arrays keyed id (ascending uint64),
    count (int64), lo (n, 3, int64), hi (n, 3, int64, exclusive), sum (n, 3, float64).
    Whole-array numpy steps only: the time per id is numpy's, never Python's (the per-id
    lists and slice tuples this once built were 3/4 of its time on a block of many ids).
    """
    import cc3d
    import fastremap

    labels = np.ascontiguousarray(labels)
    if labels.ndim != 3:
        raise InvalidRequestError(f"label_stats_kernel needs a 3-D (z, y, x) array, got "
                                  f"shape {labels.shape}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InvalidRequestError(
            f"label_stats found negative labels ({int(labels.min())}) in {labels.dtype.name} "
            "data; segment ids are uint64 (0 is background, ids 1..2**64-1)")
    if labels.size == 0:
        return merge_stats([])
    # dense labels 1..n (cc3d.statistics indexes its tables by label); the mapping holds 0
    # whether or not it occurs.  Measured on 256^3 uint64 with 100k ids: renumber 0.10 s,
    # fastremap.unique(return_inverse=True) 0.32 s, np.unique(return_inverse=True) 2.7 s
    dense, mapping = fastremap.renumber(labels, preserve_zero=True, in_place=False)
    old = np.fromiter(mapping.keys(), dtype=np.uint64, count=len(mapping))
    new = np.fromiter(mapping.values(), dtype=np.int64, count=len(mapping))
    order = np.argsort(old, kind="stable")
    order = order[new[order] != 0]
    ids, rows = old[order], new[order]
    # (bounding boxes as one array: [a0 min, a0 max, a1 min, ...], inclusive, array axes)
    stats = cc3d.statistics(dense, no_slice_conversion=True)
    counts = stats["voxel_counts"][rows].astype(np.int64)
    box = stats["bounding_boxes"][rows].astype(np.int64).reshape(-1, 3, 2)
    cent = np.asarray(stats["centroids"], dtype=np.float64)[rows].reshape(-1, 3)
    o = np.asarray(origin, dtype=np.int64)
    # a sum of integer coordinates is an integer: rounded, it is exact (below 2**50), so
    # merged sums do not depend on how the volume was cut into blocks, and the relay's
    # centroids equal the local path's to the last bit
    n = counts[:, None].astype(np.float64)
    return {"id": ids, "count": counts, "lo": box[:, :, 0] + o, "hi": box[:, :, 1] + 1 + o,
            "sum": np.rint(cent * n) + o.astype(np.float64) * n}


def merge_stats(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The kernel's results of several blocks (or merged ones) as one: counts and coordinate
    sums add, boxes take the min / max."""
    if not parts:
        z = np.zeros((0, 3), dtype=np.int64)
        return {"id": np.zeros(0, dtype=np.uint64), "count": np.zeros(0, dtype=np.int64),
                "lo": z, "hi": z, "sum": z.astype(np.float64)}
    ids = np.concatenate([p["id"] for p in parts])
    uniq, inverse = np.unique(ids, return_inverse=True)
    n = len(uniq)
    count = np.zeros(n, dtype=np.int64)
    np.add.at(count, inverse, np.concatenate([p["count"] for p in parts]))
    lo = np.full((n, 3), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(lo, inverse, np.concatenate([p["lo"] for p in parts]))
    hi = np.full((n, 3), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(hi, inverse, np.concatenate([p["hi"] for p in parts]))
    total = np.zeros((n, 3), dtype=np.float64)
    np.add.at(total, inverse, np.concatenate([p["sum"] for p in parts]))
    return {"id": uniq, "count": count, "lo": lo, "hi": hi, "sum": total}


def _frame(stats: dict[str, np.ndarray]) -> pd.DataFrame:
    import pandas as pd

    count = stats["count"]
    cent = stats["sum"] / np.maximum(count, 1)[:, None]
    data: dict[str, Any] = {"id": stats["id"].astype(np.uint64), "voxel_count": count}
    for j, ax in enumerate("zyx"):
        data[f"{ax}0"] = stats["lo"][:, j]
    for j, ax in enumerate("zyx"):
        data[f"{ax}1"] = stats["hi"][:, j]
    for j, ax in enumerate("zyx"):
        data[f"centroid_{ax}"] = cent[:, j]
    return pd.DataFrame(data, columns=COLUMNS)


@refuses_unknown_keywords
def label_stats(
    source: Any,
    *,
    prefer: Prefer = "auto",
    block: Sequence[int] | None = None,
    workers: int | None = None,
    progress: bool = False,
    as_labels: bool = False,
    client: Any = None,
) -> pd.DataFrame:
    """One row per non-zero label: id (uint64), voxel_count, the bounding box z0..x1
    (half-open, dataset voxel coordinates at the volume's scale) and the centroid.

    ``df.attrs["provenance"]`` says which path ran.  The server path (a store with
    server-side ids and bounding boxes, e.g. bossDB) fills id and the box; voxel_count and the
    centroid are missing (NaN / <NA>) there, except through a voxgate relay, which gives
    them all (the local path's frame).  With ``prefer="auto"`` the server path is left
    for the local one as soon as the measured time per bounding box, times the ids still to
    ask, would exceed the local path's time estimated from one block read and computed (see
    :func:`server_is_slower`).  ``progress`` draws a bar over the ids asked, or the blocks.

    An image (``kind='image'``) is refused: its intensities are not labels.  ``as_labels=True``
    counts its values anyway (labels kept in a store that calls them an image); a numpy array
    is taken as labels.

    The local path runs its blocks on ``workers`` threads, or on a ``dask.distributed``
    ``client``'s workers (which reopen the volume by URL; each block's statistics come back
    here and are merged).
    """
    t0 = time.perf_counter()
    as_labels = check_flag(as_labels, "as_labels")  # "no" would count an image's values
    progress = check_flag(progress, "progress")
    vol = as_volume(source, kind="segmentation" if isinstance(source, np.ndarray) else None)
    if vol.kind != "segmentation" and not as_labels:
        raise InvalidRequestError(
            f"label_stats needs a segmentation; {vol.url} is an image (kind='image'), whose "
            "intensities are not labels. Compute the statistics of its segmentation, or pass "
            "as_labels=True (voxgate stats --as-labels) if its values are labels")
    if vol.ndim != 3 or any(a.step != 1 for a in vol._axes):
        raise InvalidRequestError("label_stats needs a 3-D view with step 1")
    if vol.dtype.kind not in "ui":
        raise InvalidRequestError(f"label_stats needs integer labels, got {vol.dtype.name}")
    region = vol.bounds
    path = choose_path(prefer, vol.remote, Capability.SERVER_BOUNDING_BOXES,
                       "compute label statistics")
    if path == "server" and region != vol.scale_meta.bounds:
        # the server's bounding boxes describe whole objects; for part of the volume only the
        # local path gives the boxes of what lies inside it
        if prefer == "server":
            from ..errors import CapabilityNotSupportedError

            raise CapabilityNotSupportedError(
                f"{vol.url}'s server gives bounding boxes of whole objects; for the region "
                f"{region!r} use prefer='local' or 'auto'")
        path = "local"
    check_client(client, "label_stats")
    if client is not None:
        check_for_cluster(vol.url, "volume", "label_stats")
    local = _Local(vol, block, workers, client)
    details: dict[str, Any] = {}
    if path == "server":
        df, details = _server(vol, local, prefer, workers, progress)
        if df is not None:
            details["seconds"] = round(time.perf_counter() - t0, 3)
            df.attrs["provenance"] = Provenance("label_stats", "server", vol.url, details)
            return df
    df = _frame(local.run(progress))
    df.attrs["provenance"] = Provenance("label_stats", "local", vol.url, {
        **details, "blocks": local.count, "scheduler": scheduler_name(client),
        "seconds": round(time.perf_counter() - t0, 3)})
    return df


#: bounding-box requests in flight at once on the server path
SERVER_CONCURRENCY = 8
#: below this many estimated seconds left, the server path carries on without measuring the
#: local one (at most this much is lost when local would have been faster)
SERVER_CHECK_SECONDS = 2.0


def server_is_slower(seconds_per_id: float, ids_left: int, block_seconds: float,
                     blocks: int) -> bool:
    """The rule that leaves the server path: the ids still to ask at the measured seconds per
    bounding box (requests in flight together) take longer than the whole local path, one
    block's measured read-and-compute time times the number of blocks (no credit taken for
    the local path's parallelism, so a tie goes to the server, which moves no voxels)."""
    return seconds_per_id * ids_left > block_seconds * blocks


class _Local:
    """The local path: blocks of the view, computed block by block; one block may be computed
    ahead (to time it) and is then not computed again."""

    def __init__(self, vol: Any, block: Sequence[int] | None, workers: int | None,
                 client: Any = None) -> None:
        self.vol = vol
        region = vol.bounds
        given = check_block(block)
        base = given if given is not None else block_shape(
            vol.chunks, vol.dtype.itemsize, region.shape, budget=BLOCK_BYTES,
            at_once=blocks_at_once(workers, client))
        # on the store's chunk grid, so a block reads whole chunks; walked as the blocks are
        # sent, never listed (10^8 blocks of a petascale volume would be tens of GiB here)
        self.plan = (region, base, vol.scale_meta.bounds)
        self.count = count_blocks(*self.plan)
        self.workers = workers
        self.client = client
        self.ahead: dict[Box, dict[str, np.ndarray]] = {}

    @functools.cached_property
    def stored(self) -> StoredGroups | None:
        """Where the store holds chunks (None: read every block), asked once, when the local
        path first runs: a block of absent chunks reading as 0 has no label to count."""
        region, base, _ = self.plan
        # (a bit per chunk where the scale has few enough: a block reads only its stored ones)
        return background_groups(self.vol.remote, region, self.vol.scale,
                                 chunk_blocks(self.vol.remote, self.vol.scale, base))

    def one(self, b: Box) -> dict[str, np.ndarray]:
        return _block_stats(self.vol, self.stored, b)

    def time_one(self) -> float:
        """Compute the first block now; return the seconds it took (read and kernel)."""
        t = time.perf_counter()
        b = next(iter_blocks(*self.plan)).box
        self.ahead[b] = self.one(b)
        return time.perf_counter() - t

    def run(self, progress: bool) -> dict[str, np.ndarray]:
        parts = list(self.ahead.values())
        todo = (p.box for p in iter_blocks(*self.plan) if p.box not in self.ahead)
        region = self.plan[0].intersect(self.plan[2])
        left = region.size - sum(b.size for b in self.ahead)

        def done(_b: Box, out: object) -> None:  # here, in this thread: no lock
            parts.append(out)  # type: ignore[arg-type]
            if len(parts) >= 64:  # bounded memory with many blocks and ids
                parts[:] = [merge_stats(parts)]

        run_blocks(functools.partial(_block_stats, self.vol, self.stored), todo,
                   name="label stats",
                   client=self.client, workers=self.workers, progress=progress,
                   total=self.count - len(self.ahead),
                   total_bytes=left * self.vol.dtype.itemsize, on_done=done)
        return merge_stats(parts)


def _block_stats(vol: Any, stored: StoredGroups | None, b: Box) -> dict[str, np.ndarray]:
    """One block's statistics (on a cluster ``vol`` arrives as its spec, reopened by URL);
    a block that ``stored`` says holds no stored chunk is background only: no label, not
    read."""
    if holds_nothing(stored, b):
        return merge_stats([])
    # (what is stored of it: its groups of no stored chunk are background 0, unread)
    return label_stats_kernel(read_stored(vol.remote, b, vol.scale, stored), tuple(b.start))


def _server(vol: Any, local: _Local, prefer: str, workers: int | None, progress: bool
            ) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """Ids, then their boxes in growing batches of concurrent requests, each batch timed; with
    "auto", (None, why) as soon as :func:`server_is_slower` says the local path wins."""
    remote, scale, region = vol.remote, vol.scale, vol.bounds
    # a store that gives the boxes with the ids (a voxgate relay: one request for every id,
    # counts and coordinate sums too) is not asked one box at a time.  Not a Capability:
    # a relay and bossDB are both bossdb:// stores, and which one answers is known only from
    # the answer (bossDB ignores ?boxes=tight and sends the ids alone: None for the boxes)
    together = getattr(remote, "ids_and_boxes", None)
    ids, table = together(region, scale) if together is not None else \
        (remote.ids_in(region, scale), None)
    n = len(ids)
    if table is not None:
        with progress_bar(progress, n, "label stats (bounding boxes)") as bar:
            bar.advance(n)
        return _server_frame(table), {"ids": n, "requests": 1}
    rows: list[tuple[int, ...]] = []
    block_seconds: float | None = None
    conc = workers or SERVER_CONCURRENCY

    def box_of(i: np.uint64) -> tuple[int, ...]:
        b = remote.bounding_box(int(i), scale, tight=True).intersect(region)
        return (int(i), *b.start, *b.stop)

    with progress_bar(progress, n, "label stats (bounding boxes)") as bar, \
            ThreadPoolExecutor(conc, thread_name_prefix="voxgate-boxes") as pool:
        batch = 1  # the first request alone: its latency, before any concurrency
        while len(rows) < n:
            chunk = ids[len(rows):len(rows) + batch]
            t = time.perf_counter()
            rows.extend(pool.map(box_of, chunk))
            per_id = (time.perf_counter() - t) / len(chunk)
            bar.advance(len(chunk))
            left = n - len(rows)
            # the first box, asked alone, pays what is paid once (connections, a server's
            # first pass over the channel): the rule looks at the batches after it
            if prefer == "auto" and len(rows) > 1 and left \
                    and per_id * left > SERVER_CHECK_SECONDS:
                if block_seconds is None:
                    block_seconds = local.time_one()
                if server_is_slower(per_id, left, block_seconds, local.count):
                    return None, {"left_server_path": {
                        "ids": n, "boxes_asked": len(rows),
                        "seconds_per_id": round(per_id, 4),
                        "server_seconds_left": round(per_id * left, 1),
                        "local_seconds": round(block_seconds * local.count, 1)}}
            batch = min(batch * 4, 4 * conc)
    box = np.array([r[1:] for r in rows], dtype=np.int64).reshape(-1, 6)
    table = {"id": np.array([r[0] for r in rows], dtype=np.uint64), "lo": box[:, :3],
             "hi": box[:, 3:]}
    return _server_frame(table), {"ids": n, "requests": n + 1}


def _server_frame(table: dict[str, np.ndarray]) -> pd.DataFrame:
    """The server path's arrays (id, lo, hi; count and sum where the server gave them) as
    label_stats' frame: with every one of them, the local path's frame; without, voxel_count
    missing (<NA>) and the centroids too (NaN)."""
    import pandas as pd

    if "count" in table and "sum" in table:
        return _frame(table)
    n = len(table["id"])
    df = _frame({"id": table["id"], "count": np.zeros(n, dtype=np.int64), "lo": table["lo"],
                 "hi": table["hi"], "sum": np.full((n, 3), np.nan)})
    df["voxel_count"] = pd.array(table["count"] if "count" in table else [pd.NA] * n,
                                 dtype="Int64")
    return df
