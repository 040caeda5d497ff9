"""label_stats: ids, voxel counts, bounding boxes and centroids of every label, as a DataFrame.

Locally it runs block by block (counts add, boxes take min/max, centroids are count-weighted
means), so any volume fits.  On a store that knows its ids and bounding boxes (bossDB), the
server path asks it instead: ids and bounding boxes only, counts and centroids missing.  It
costs one request per id, so "auto" times them as they go and leaves for the local path when
the ids left would take longer than reading and computing the whole volume here.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ..blockwise import (
    block_shape,
    check_block,
    check_client,
    check_for_cluster,
    plan_blocks,
    run_blocks,
    scheduler_name,
)
from ..errors import InvalidRequestError
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

    Coordinates are ``origin`` + array index.  Returns arrays keyed id, count, lo (n, 3),
    hi (n, 3, exclusive), sum (n, 3).
    """
    import cc3d
    import fastremap

    labels = np.ascontiguousarray(labels)
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InvalidRequestError(
            f"label_stats found negative labels ({int(labels.min())}) in {labels.dtype.name} "
            "data; segment ids are uint64 (0 is background, ids 1..2**64-1)")
    dense, mapping = fastremap.renumber(labels, preserve_zero=True, in_place=False)
    stats = cc3d.statistics(dense)
    inv = {v: k for k, v in mapping.items()}
    n = len(stats["voxel_counts"])
    keep = [i for i in range(1, n) if stats["voxel_counts"][i] > 0]
    ids = np.array([inv[i] for i in keep], dtype=np.uint64)
    counts = np.asarray(stats["voxel_counts"], dtype=np.int64)[keep]
    lo = np.array([[sl.start for sl in stats["bounding_boxes"][i]] for i in keep],
                  dtype=np.int64).reshape(-1, 3)
    hi = np.array([[sl.stop for sl in stats["bounding_boxes"][i]] for i in keep],
                  dtype=np.int64).reshape(-1, 3)
    cent = np.asarray(stats["centroids"], dtype=np.float64)[keep].reshape(-1, 3)
    o = np.asarray(origin, dtype=np.int64)
    return {"id": ids, "count": counts, "lo": lo + o, "hi": hi + o,
            "sum": (cent + o) * counts[:, None]}


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
    centroid are missing (NaN / <NA>) there.  With ``prefer="auto"`` the server path is left
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
    if not isinstance(as_labels, (bool, np.bool_)):  # "no" would count an image's values
        raise InvalidRequestError(f"as_labels must be True or False, got {as_labels!r}")
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
        **details, "blocks": len(local.blocks), "scheduler": scheduler_name(client),
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
            vol.chunks, vol.dtype.itemsize, region.shape, budget=BLOCK_BYTES)
        # on the store's chunk grid, so a block reads whole chunks
        self.blocks = [p.box for p in plan_blocks(region, base, vol.scale_meta.bounds)]
        self.workers = workers
        self.client = client
        self.ahead: dict[Box, dict[str, np.ndarray]] = {}

    def one(self, b: Box) -> dict[str, np.ndarray]:
        return _block_stats(self.vol, b)

    def time_one(self) -> float:
        """Compute the first block now; return the seconds it took (read and kernel)."""
        t = time.perf_counter()
        b = self.blocks[0]
        self.ahead[b] = self.one(b)
        return time.perf_counter() - t

    def run(self, progress: bool) -> dict[str, np.ndarray]:
        parts = list(self.ahead.values())
        todo = [b for b in self.blocks if b not in self.ahead]
        itemsize = self.vol.dtype.itemsize

        def done(_b: Box, out: object) -> None:  # here, in this thread: no lock
            parts.append(out)  # type: ignore[arg-type]
            if len(parts) >= 64:  # bounded memory with many blocks and ids
                parts[:] = [merge_stats(parts)]

        run_blocks(functools.partial(_block_stats, self.vol), todo, name="label stats",
                   client=self.client, workers=self.workers, progress=progress,
                   nbytes=lambda b: b.size * itemsize, on_done=done)
        return merge_stats(parts)


def _block_stats(vol: Any, b: Box) -> dict[str, np.ndarray]:
    """One block's statistics (on a cluster ``vol`` arrives as its spec, reopened by URL)."""
    return label_stats_kernel(vol.remote.read(b, vol.scale), tuple(b.start))


def _server(vol: Any, local: _Local, prefer: str, workers: int | None, progress: bool
            ) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """Ids, then their boxes in growing batches of concurrent requests, each batch timed; with
    "auto", (None, why) as soon as :func:`server_is_slower` says the local path wins."""
    import pandas as pd

    remote, scale, region = vol.remote, vol.scale, vol.bounds
    # a store that gives the boxes with the ids (a voxgate relay: one request for every id)
    # is not asked one box at a time; others (bossDB) answer None for the boxes
    together = getattr(remote, "ids_and_boxes", None)
    ids, boxes, counts = together(region, scale) if together is not None else \
        (remote.ids_in(region, scale), None, None)
    n = len(ids)
    if boxes is not None and all(int(i) in boxes for i in ids):
        with progress_bar(progress, n, "label stats (bounding boxes)") as bar:
            found = [(int(i), *boxes[int(i)].start, *boxes[int(i)].stop) for i in ids]
            bar.advance(n)
        df = _server_frame(found)
        if counts is not None and all(int(i) in counts for i in ids):  # (a relay's, too)
            df["voxel_count"] = pd.array([counts[int(i)] for i in ids], dtype="Int64")
        return df, {"ids": n, "requests": 1}
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
                if server_is_slower(per_id, left, block_seconds, len(local.blocks)):
                    return None, {"left_server_path": {
                        "ids": n, "boxes_asked": len(rows),
                        "seconds_per_id": round(per_id, 4),
                        "server_seconds_left": round(per_id * left, 1),
                        "local_seconds": round(block_seconds * len(local.blocks), 1)}}
            batch = min(batch * 4, 4 * conc)
    return _server_frame(rows), {"ids": n, "requests": n + 1}


def _server_frame(rows: list[tuple[int, ...]]) -> pd.DataFrame:
    """The server path's rows (id and box) as label_stats' frame: no counts, no centroids."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=["id", "z0", "y0", "x0", "z1", "y1", "x1"])
    df["id"] = df["id"].astype(np.uint64)
    df["voxel_count"] = pd.array([pd.NA] * len(df), dtype="Int64")
    for ax in "zyx":
        df[f"centroid_{ax}"] = np.nan
    return df[COLUMNS]
