"""Proofreading (issue 13): merging two large segments of the 512^3 segmentation touches only
their blocks — against rewriting the whole volume.

    python benchmarks/bench_proofread.py [--size 512] [--rounds 3] [--data benchmarks/data]

Works on a copy (zarr and precomputed compressed_segmentation, 64^3 chunks) of bench_io.py's
synthetic segmentation (made once and cached in --data).  Per store it times, as medians of
interleaved rounds: the one label_stats pass that finds the ids' boxes (once per volume and
process), ``voxgate.merge`` of the two largest segments (undo blocks saved, history written),
``voxgate.undo`` of it, and the whole-volume rewrite the edit avoids (read everything, relabel
with numpy, write everything); and counts the blocks the merge rewrote against the volume's.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import voxgate
from voxgate.services import proofread

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import prepare


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rewrite(vol: voxgate.Volume, a: int, b: int) -> None:
    """What an edit without block selection costs: every voxel read, relabelled, written."""
    data = vol.read()
    data[data == b] = a
    vol.remote.write(vol.bounds, data, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    args = ap.parse_args()
    labels = prepare(args.data, args.size)["seg"]
    work = Path(tempfile.mkdtemp(prefix="voxgate-bench-proofread-"))
    try:
        urls = {"zarr": f"zarr://{work}/seg.zarr",
                "precomputed cseg": f"precomputed://file://{work}/seg.pre"}
        voxgate.copy(f"zarr://{args.data}/seg.zarr", urls["zarr"], progress=False)
        pre = voxgate.create(urls["precomputed cseg"], shape=labels.shape, dtype="uint64",
                             chunks=(64, 64, 64), voxel_size=(8, 8, 8), kind="segmentation",
                             encoding="compressed_segmentation")
        pre[:] = labels
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        a, b = (int(v) for v in ids[np.argsort(counts)[-2:]])
        print(f"{args.size}^3 uint64, {len(ids)} labels; merging {a} and {b} "
              f"({counts[ids == a][0]} + {counts[ids == b][0]} voxels)", flush=True)
        times: dict[tuple[str, str], list[float]] = {}
        blocks: dict[str, tuple[int, int, int]] = {}
        for _ in range(args.rounds):
            for name, url in urls.items():
                vol = voxgate.open(url, mode="r+")
                proofread._forget_stats(vol)
                times.setdefault((name, "label_stats (once)"), []).append(
                    timed(lambda: proofread._stats(vol)))  # noqa: B023
                out: dict[str, object] = {}
                times.setdefault((name, "merge"), []).append(
                    timed(lambda: out.update(r=voxgate.merge(vol, [a, b]))))  # noqa: B023
                r = out["r"]
                grid = vol.remote.write_grid(0)
                total = int(np.prod([-(-n // c) for n, c in zip(vol.shape, grid, strict=True)]))
                considered = r.provenance.details["blocks_considered"]  # type: ignore[attr-defined]
                blocks[name] = (r.blocks, total, considered)  # type: ignore[attr-defined]
                times.setdefault((name, "undo"), []).append(timed(lambda: voxgate.undo(vol)))  # noqa: B023
                times.setdefault((name, "whole-volume rewrite"), []).append(
                    timed(lambda: rewrite(vol, a, b)))  # noqa: B023
                vol.remote.write(vol.bounds, labels, 0)  # back to the original for the next round
        print("\n| store | operation | median s | blocks rewritten |")
        print("|---|---|---|---|")
        for (name, op), ts in times.items():
            done, total, read = blocks[name]
            extra = f"{done} of {total} (read: {read})" if op == "merge" else \
                (f"{total} of {total}" if op.startswith("whole") else "")
            print(f"| {name} | {op} | {statistics.median(ts):.3f} | {extra} |")
        for name in urls:
            m = statistics.median(times[(name, "merge")])
            w = statistics.median(times[(name, "whole-volume rewrite")])
            print(f"{name}: merge {w / m:.1f}x faster than the whole-volume rewrite")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
