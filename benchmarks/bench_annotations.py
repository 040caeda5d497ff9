"""Writing precomputed annotation layers: voxgate.write_annotations vs Neuroglancer's
AnnotationWriter on the same points, time and peak memory.

    python benchmarks/bench_annotations.py [--n 1000000] [--small 100000] [--limit 10000]

The points come as a stream of DataFrame chunks of 100,000 rows generated from a seed (synapse
like: z, y, x in a 512 x 8192 x 8192 voxel volume, a float32 score, a uint8 class, pre_id and
post_id segment ids out of 20,000), so no writer is handed the whole table at once: voxgate
takes the chunks as they come; Neuroglancer's AnnotationWriter is fed them point by point
(add_point) and writes at the end, all in memory, one spatial cell, unsharded.  Each run is
a fresh process; its peak RSS (ru_maxrss) is reported above what the process held after its
imports.  Each layer is read back with voxgate.read_annotations over its whole bounds (the
spatial index) and the count checked.  ``--n`` points for Neuroglancer's writer and voxgate
sharded, ``--small`` points for those two and voxgate unsharded (one by-id file per point
makes unsharded writes slow for everyone).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHUNK = 100_000
VOXEL = (40, 8, 8)


def chunks(n: int, seed: int = 0) -> Iterator[Any]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    for at in range(0, n, CHUNK):
        k = min(CHUNK, n - at)
        yield pd.DataFrame({
            "z": rng.uniform(0, 512, k).astype(np.float32),
            "y": rng.uniform(0, 8192, k).astype(np.float32),
            "x": rng.uniform(0, 8192, k).astype(np.float32),
            "score": rng.random(k).astype(np.float32),
            "cls": rng.integers(0, 4, k).astype(np.uint8),
            "pre_id": rng.integers(1, 20_000, k).astype(np.uint64),
            "post_id": rng.integers(1, 20_000, k).astype(np.uint64),
        })


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_one(method: str, n: int, out: str, limit: int) -> dict[str, float]:
    """In a fresh process: write n points with one method; seconds and peak RSS."""
    import numpy as np

    import voxgate
    from voxgate.formats.annotation import write_annotations

    if method == "neuroglancer":
        import neuroglancer
        from neuroglancer.write_annotations import AnnotationWriter
    base = rss_mib()
    t0 = time.perf_counter()
    if method == "neuroglancer":
        space = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                             scales=list(VOXEL[::-1]))
        writer = AnnotationWriter(
            space, "point", relationships=["pre_id", "post_id"],
            properties=[neuroglancer.AnnotationPropertySpec(id="score", type="float32"),
                        neuroglancer.AnnotationPropertySpec(id="cls", type="uint8")])
        i = 0
        for df in chunks(n):
            for x, y, z, s, c, a, b in zip(df.x.tolist(), df.y.tolist(), df.z.tolist(),
                                           df.score.tolist(), df.cls.tolist(),
                                           df.pre_id.tolist(), df.post_id.tolist(),
                                           strict=True):
                i += 1
                writer.add_point([x, y, z], id=i, score=s, cls=c, pre_id=a, post_id=b)
        writer.write(out)
    else:
        write_annotations(out, chunks(n), voxel_size=VOXEL, sharded=method == "sharded",
                          limit=limit)
    seconds = time.perf_counter() - t0
    peak = rss_mib() - base
    t1 = time.perf_counter()
    info = json.loads(Path(out, "info").read_text())
    lo = np.floor(info["lower_bound"][::-1]).astype(int)
    hi = np.ceil(info["upper_bound"][::-1]).astype(int) + 1
    count = len(voxgate.read_annotations(out, box=voxgate.Box(lo.tolist(), hi.tolist())))
    files = sum(len(names) for _, _, names in os.walk(out))
    return {"seconds": seconds, "peak_mib": peak, "count": count, "files": files,
            "read_seconds": time.perf_counter() - t1, "levels": len(info["spatial"])}


def measure(method: str, n: int, limit: int) -> dict[str, float]:
    out = tempfile.mkdtemp(prefix=f"bench-annotations-{method}-")
    try:
        res = subprocess.run(
            [sys.executable, __file__, "--one", method, "--n", str(n), "--out", out,
             "--limit", str(limit)], check=True, capture_output=True, text=True)
        result: dict[str, float] = json.loads(res.stdout.strip().splitlines()[-1])
        assert result["count"] == n, (method, result)
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--small", type=int, default=100_000)
    p.add_argument("--limit", type=int, default=10_000)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.n, args.out, args.limit)))
        return
    print("| points | writer | write s | peak RSS MiB | files | spatial levels | read back "
          "(count ok) s |")
    print("|---|---|---|---|---|---|---|")
    runs = [(args.small, m) for m in ("neuroglancer", "unsharded", "sharded")]
    runs += [(args.n, m) for m in ("neuroglancer", "sharded")]
    names = {"neuroglancer": "Neuroglancer AnnotationWriter",
             "unsharded": "voxgate unsharded", "sharded": "voxgate sharded"}
    for n, method in runs:
        r = measure(method, n, args.limit)
        print(f"| {n:,} | {names[method]} | {r['seconds']:.1f} | {r['peak_mib']:.0f} | "
              f"{int(r['files']):,} | {int(r['levels'])} | {r['read_seconds']:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
