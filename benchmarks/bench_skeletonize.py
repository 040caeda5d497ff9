"""skeletonize every label of a 128 x 512 x 512 segmentation: whole-volume vs block-wise on 1 and
2 worker processes; time and peak memory.

    python benchmarks/bench_skeletonize.py [--repeats 3] [--data benchmarks/data] [--z 128]

The segmentation is the first ``--z`` planes of bench_io.py's 512^3 synthetic segmentation
(``benchmarks/data/seg.zarr``, 64^3 chunks, 8 nm voxels; made here with the same generator
when absent).  Every run is a fresh Python process (so no run inherits another's heap); the
parent samples the resident memory of that process and all its children every 50 ms (psutil)
and reports the peak of their sum, and the child reports ``getrusage`` maxima (its own and its
largest worker's) and the CPU seconds of the process and its workers.  Medians of
``--repeats`` runs, modes interleaved; the load average at each start is printed, since on a
shared machine two processes only help when two cores are free.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODES: dict[str, dict[str, Any]] = {
    "whole": {"whole": True},
    "blocks-1": {"workers": None},
    "blocks-2": {"workers": 2},
}
LABELS = {"whole": "whole volume", "blocks-1": "blocks, 1 process",
          "blocks-2": "blocks, 2 processes"}


def ensure_data(root: Path) -> str:
    url = f"zarr://{root}/seg.zarr"
    if not (root / "ready-512").exists():
        import voxgate
        from voxgate.synthetic import synthetic_labels

        print("generating the 512^3 synthetic segmentation (once) ...", flush=True)
        root.mkdir(parents=True, exist_ok=True)
        labels = synthetic_labels((512,) * 3, cell=(42,) * 3, seed=0, progress=True)
        seg = voxgate.create(url, shape=labels.shape, dtype="uint64", chunks=(64, 64, 64),
                             voxel_size=(8, 8, 8), kind="segmentation", exist_ok=True)
        seg[:] = labels
    return url


def one_run(url: str, z: int, mode: str) -> dict[str, Any]:
    """In the child: skeletonize and report."""
    import importlib

    import voxgate

    skmod = importlib.import_module("voxgate.services.skeletonize")
    opts = dict(MODES[mode])
    if opts.pop("whole", False):
        setattr(skmod, "WHOLE_BYTES", 2**62)  # noqa: B010  # force the one-piece path
    view = voxgate.open(url)[:z]
    t0 = time.perf_counter()
    result = skmod.skeletonize(view, **opts)
    seconds = time.perf_counter() - t0
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return {"seconds": seconds, "cpu_seconds": cpu, "self_mib": me.ru_maxrss / 1024,
            "worker_mib": kids.ru_maxrss / 1024, "ids": len(result),
            "cable_mm": sum(s.cable_length() for s in result.values()) / 1e6,
            "blocks": result.provenance.details.get("blocks")}


def measure(url: str, z: int, mode: str) -> dict[str, Any]:
    """In the parent: one fresh process, its tree's summed RSS sampled every 50 ms."""
    import psutil

    load = os.getloadavg()[0]
    proc = subprocess.Popen([sys.executable, __file__, "--child", mode, "--url", url,
                             "--z", str(z)], stdout=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        total = 0
        try:
            for p in [ps, *ps.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.05)
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{mode}: the child failed ({proc.returncode})")
    doc = json.loads(out.strip().splitlines()[-1])
    doc["tree_peak_mib"] = peak / 2**20
    doc["load"] = load
    return doc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    ap.add_argument("--z", type=int, default=128)
    ap.add_argument("--child", default=None)
    ap.add_argument("--url", default=None)
    ap.add_argument("--modes", default=",".join(MODES),
                    help="Comma-separated subset of: " + ",".join(MODES))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one_run(args.url, args.z, args.child)))
        return
    url = ensure_data(args.data)
    modes = [m.strip() for m in args.modes.split(",")]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in modes:
            doc = measure(url, args.z, mode)
            runs[mode].append(doc)
            print(f"round {r + 1} {mode}: {json.dumps(doc)}", flush=True)
    print(f"\n{args.z}x512x512 uint64, {os.cpu_count()} cores, median of {args.repeats}\n")
    print("| mode | blocks | s | CPU s | peak RSS, process tree MiB | main process MiB | "
          "largest worker MiB | skeletons | cable mm | load at start |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, docs in runs.items():
        def med(k: str, docs: list[dict[str, Any]] = docs) -> float:
            return statistics.median(float(d[k]) for d in docs)

        worker = med("worker_mib") if MODES[mode].get("workers") else float("nan")
        print(f"| {LABELS[mode]} | {docs[0]['blocks']} | {med('seconds'):.1f} | "
              f"{med('cpu_seconds'):.1f} | "
              f"{med('tree_peak_mib'):.0f} | {med('self_mib'):.0f} | "
              f"{'-' if worker != worker else f'{worker:.0f}'} | {docs[0]['ids']} | "
              f"{float(docs[0]['cable_mm']):.3f} | {med('load'):.1f} |")


if __name__ == "__main__":
    main()
