"""label_stats: ids, voxel counts, bounding boxes and centroids of every label, as a DataFrame.

Locally it runs block by block (counts add, boxes take min/max, centroids are count-weighted
means), so any volume fits.  On a store that knows its ids and bounding boxes (bossDB), the
server path asks it instead: ids and bounding boxes only, counts and centroids missing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidRequestError
from ..geometry import Box, Vec, grow_block
from ..parallel import run_blocks
from ..remotes.base import Capability
from ._common import Prefer, Provenance, as_volume, block_boxes, choose_path, progress_bar

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COLUMNS", "label_stats", "label_stats_kernel"]

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


def _merge(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
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
) -> pd.DataFrame:
    """One row per non-zero label: id (uint64), voxel_count, the bounding box z0..x1
    (half-open, dataset voxel coordinates at the volume's scale) and the centroid.

    ``df.attrs["provenance"]`` says which path ran.  The server path (a store with
    server-side ids and bounding boxes, e.g. bossDB) fills id and the box; voxel_count and the
    centroid are missing (NaN / <NA>) there.
    """
    t0 = time.perf_counter()
    vol = as_volume(source)
    if vol.ndim != 3 or any(a.step != 1 for a in vol._axes):
        raise InvalidRequestError("label_stats needs a 3-D view with step 1")
    if vol.dtype.kind not in "ui":
        raise InvalidRequestError(f"label_stats needs integer labels, got {vol.dtype.name}")
    region = vol.bounds
    remote = vol.remote
    path = choose_path(prefer, remote, Capability.SERVER_BOUNDING_BOXES,
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
    if path == "server":
        ids = remote.ids_in(region, vol.scale)  # type: ignore[attr-defined]
        rows = []
        for i in ids:
            b = remote.bounding_box(int(i), vol.scale, tight=True)  # type: ignore[attr-defined]
            b = b.intersect(region)
            rows.append((int(i), *b.start, *b.stop))
        import pandas as pd

        df = pd.DataFrame(rows, columns=["id", "z0", "y0", "x0", "z1", "y1", "x1"])
        df["id"] = df["id"].astype(np.uint64)
        df["voxel_count"] = pd.array([pd.NA] * len(df), dtype="Int64")
        for ax in "zyx":
            df[f"centroid_{ax}"] = np.nan
        df = df[COLUMNS]
        df.attrs["provenance"] = Provenance("label_stats", "server", vol.url,
                                            {"seconds": round(time.perf_counter() - t0, 3)})
        return df
    base = Vec.of(block) if block is not None else grow_block(
        vol.chunks, vol.dtype.itemsize, region.shape, BLOCK_BYTES)
    blocks = list(block_boxes(region, base))
    parts: list[dict[str, np.ndarray]] = []

    def one(b: Box) -> dict[str, np.ndarray]:
        return label_stats_kernel(remote.read(b, vol.scale), tuple(b.start))

    with progress_bar(progress, len(blocks), "label stats") as bar:
        def done(_b: Box, out: object) -> None:
            parts.append(out)  # type: ignore[arg-type]
            bar.advance()

        res = run_blocks(one, blocks, workers=workers, on_done=done)
    if res.failed:
        raise res.failed[0][1]
    df = _frame(_merge(parts))
    df.attrs["provenance"] = Provenance("label_stats", "local", vol.url, {
        "blocks": len(blocks), "seconds": round(time.perf_counter() - t0, 3)})
    return df
