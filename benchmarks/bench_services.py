"""Services against the kernels called directly, in one run, on a 512^3 segmentation.

    python benchmarks/bench_services.py [--size 512] [--repeats 3] [--data benchmarks/data]
                                        [--only mesh,downsample,cc,cluster]

Uses the volumes bench_io.py generates (about 2000 labels at 512^3).  Rows:

- mesh every label: voxgate.mesh (in memory) vs zmesh called directly (the same options; both
  open and closed at the volume's edges)
  vs intern's MeshService;
- downsample 3 scales by (2,2,2) and by (1,2,2): voxgate.downsample's kernel path vs tinybrain
  directly (in memory; tinybrain's own output is not exact at odd extents, see
  docs/services/downsample.md, but at 512^3 its speed is the reference);
- connected components: voxgate vs cc3d directly (in memory), with uint64 ids and with
  uint32 ids;
- block-wise mesh and downsample from the zarr store on a dask.distributed LocalCluster with 1
  and with 2 worker processes.

Targets (issue 15, item 5): within 1.1x of the kernel on in-memory data; 2 workers at least
1.7x faster than 1 on this 2-core machine (both rows warmed up alike, median of --repeats).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import voxgate
import voxgate.registry


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rows_for(label: str, fns: dict[str, Callable[[], object]], repeats: int,
             setup: Callable[[], None] | None = None) -> list[tuple[str, str, float, float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    rng = np.random.default_rng(0)
    for _ in range(repeats):
        rng.shuffle(order)  # type: ignore[arg-type]
        for name, fn in order:
            if setup:
                setup()
            times[name].append(timed(fn))
    base = statistics.median(times["voxgate"]) if "voxgate" in times else None
    # (the fastest run too: a row whose runs swing with the machine's page faults, as a fresh
    # 1 GiB output does, shows the kernels' own speed there)
    fastest = min(times["voxgate"]) if "voxgate" in times else None
    out = []
    print(f"\n{label}")
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = med / base if base else float("nan")
        out.append((label, name, med, ratio))
        best = f"{min(ts) / fastest:5.2f}x" if fastest else "  nan"
        print(f"  {name:28s} {med:8.3f} s   {ratio:5.2f}x voxgate's time   fastest "
              f"{min(ts):8.3f} s ({best} voxgate's fastest)", flush=True)
    return out


def _ts_threads() -> int:
    """On a worker: the decode / encode threads tensorstore may use there."""
    from voxgate.storage import kvstore

    return kvstore._copy_limit or 0


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (Linux /proc/stat; nan elsewhere)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return float("nan")
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_seconds(procs: list[Any]) -> float:
    """CPU seconds of this process and its cluster's processes."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except Exception:  # a process that ended
            continue
        total += t.user + t.system
    return total


def cluster_rows(store: str, block: tuple[int, int, int], only: set[str], repeats: int
                 ) -> list[tuple[str, str, float, float]]:
    """Block-wise mesh and downsample from the zarr store on a LocalCluster of 1 and one of 2
    worker processes, timed alike: both clusters up at once, the same store and blocks, one
    task thread per worker, one untimed run of each first (workers import zmesh and tinybrain,
    set their threads, the page cache is warm), then ``repeats`` rounds alternating which
    cluster goes first; medians.  tensorstore's threads per worker are its share of the
    machine's cores (voxgate.blockwise.worker_threads): the lone worker decodes on all of them,
    each of 2 workers on half; the rows say how many.  Each row also says how many cores the
    rest of the machine used meanwhile (from /proc/stat, less our processes' CPU): this
    machine is shared, and a busy neighbour slows the 2-worker runs most."""
    import psutil
    from distributed import Client, LocalCluster

    ops: dict[str, Callable[[Any], object]] = {}
    if "cluster-mesh" in only:
        ops["mesh"] = lambda c: voxgate.mesh(store, block=block, client=c)
    if "cluster-downsample" in only:
        ops["downsample 3 scales"] = lambda c: voxgate.downsample(store, 3, block=block,
                                                                  client=c)
    out: list[tuple[str, str, float, float]] = []
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as one, Client(one) as c1, \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=None) as two, Client(two) as c2:
        clients = {1: c1, 2: c2}
        me = psutil.Process()
        for op, fn in ops.items():
            for c in clients.values():
                fn(c)  # the warm-up
            threads = {n: "+".join(map(str, sorted(c.run(_ts_threads).values())))
                       for n, c in clients.items()}
            procs = [me, *me.children(recursive=True)]
            times: dict[int, list[float]] = {1: [], 2: []}
            other: dict[int, list[float]] = {1: [], 2: []}
            used: dict[int, list[float]] = {1: [], 2: []}  # cores our processes used
            for r in range(repeats):
                for n in (1, 2) if r % 2 == 0 else (2, 1):
                    gc.collect()
                    b0, o0 = _busy_seconds(), _own_seconds(procs)
                    t0 = time.perf_counter()
                    fn(clients[n])
                    wall = time.perf_counter() - t0
                    own = _own_seconds(procs) - o0
                    foreign = (_busy_seconds() - b0) - own
                    times[n].append(wall)
                    other[n].append(max(0.0, foreign) / wall)
                    used[n].append(own / wall)
            print(f"\nblock-wise {op} from zarr (1 task thread per worker)")
            med = {n: statistics.median(ts) for n, ts in times.items()}
            for n in (1, 2):
                label = (f"block-wise from zarr, {n} worker process(es) ({threads[n]} "
                         "tensorstore threads)")
                note = (f"{op}, {n} workers (used {statistics.median(used[n]):.2f} cores, "
                        f"others {statistics.median(other[n]):.2f})")
                print(f"  {note:58s} {med[n]:8.3f} s   runs "
                      + " ".join(f"{t:.2f}" for t in times[n]), flush=True)
                out.append((label, note, med[n], float("nan")))
            # (the lone worker's decoding threads already use part of the second core)
            print(f"  speed-up with 2 workers, {op}: {med[1] / med[2]:.2f}x (1 worker used "
                  f"{statistics.median(used[1]):.2f} of {os.cpu_count()} cores)")
            out.insert(0, (f"speed-up 2 vs 1 workers, {op}", "", med[1] / med[2], 0.0))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    p.add_argument("--only", default="mesh,downsample,cc,cluster",
                   help="comma-separated groups of rows to run (cluster-mesh and "
                   "cluster-downsample: one of the cluster's two rows)")
    args = p.parse_args()
    only = set(args.only.split(","))
    if not only <= {"mesh", "downsample", "cc", "cluster", "cluster-mesh", "cluster-downsample"}:
        p.error(f"--only takes mesh, downsample, cc, cluster (cluster-mesh, "
                f"cluster-downsample); got {args.only!r}")
    if "cluster" in only:
        only |= {"cluster-mesh", "cluster-downsample"}
    if only & {"cluster-mesh", "cluster-downsample"}:
        only.add("cluster")
    from bench_io import prepare

    data = prepare(args.data, args.size)
    seg, image = data["seg"], data["image"]
    vs = (8, 8, 8)
    print(f"{len(np.unique(seg)) - 1} labels in a {args.size}^3 segmentation")
    rows = []

    import zmesh

    def zmesh_direct(close: bool = False) -> dict[int, object]:
        # the options voxgate uses: vertices on voxel centres, no normals
        m = zmesh.Mesher(vs)
        m.mesh(seg.T, close=close)
        out = {}
        for i in m.ids():
            out[i] = m.get(i, normals=False, voxel_centered=True)
            m.erase(i)
        return out

    def intern_mesh() -> object:
        from intern.service.mesh import MeshService

        return MeshService().create(seg.T, [0, args.size], [0, args.size], [0, args.size],
                                    voxel_size=list(vs), simp_fact=0)

    if "mesh" in only:
        # "voxgate" is the same call as "zmesh direct" (meshes open at the volume's edges);
        # voxgate's default closes them there, on a padded copy, as zmesh's close=True does
        rows += rows_for(f"mesh all labels, {args.size}^3 in memory, no simplification", {
            "voxgate": lambda: voxgate.mesh(seg, voxel_size=vs, close=False),
            "zmesh direct": zmesh_direct,
            "voxgate closed (default)": lambda: voxgate.mesh(seg, voxel_size=vs),
            "zmesh direct, close=True": lambda: zmesh_direct(close=True),
            "intern MeshService": intern_mesh,
        }, args.repeats)

    import tinybrain

    from voxgate.services.downsample import downsample_kernel

    for zyx in ((2, 2, 2), (1, 2, 2)) if "downsample" in only else ():
        xyz = zyx[::-1]

        def tb_seg(xyz: tuple[int, ...] = xyz) -> object:
            return tinybrain.downsample_segmentation(seg.T, xyz, num_mips=3)

        def tb_img(xyz: tuple[int, ...] = xyz) -> object:
            return tinybrain.downsample_with_averaging(image.T, xyz, num_mips=3)

        name = "x".join(map(str, zyx))
        rows += rows_for(f"downsample 3 scales by {name}, segmentation (mode), in memory", {
            "voxgate": lambda z=zyx: downsample_kernel(seg, [z] * 3, "segmentation"),
            "tinybrain direct": tb_seg,
        }, args.repeats)
        rows += rows_for(f"downsample 3 scales by {name}, image (mean), in memory", {
            "voxgate": lambda z=zyx: downsample_kernel(image, [z] * 3, "image"),
            "tinybrain direct": tb_img,
        }, args.repeats)

    import cc3d

    if "cc" in only:
        # like for like, row by row: the same array, connectivity and output dtype
        rows += rows_for("connected components (26), in memory, uint64 ids", {
            "voxgate": lambda: voxgate.connected_components(seg),
            "cc3d direct, out_dtype=uint64": lambda: cc3d.connected_components(
                seg, connectivity=26, out_dtype=np.uint64),
        }, args.repeats)
        rows += rows_for("connected components (26), in memory, uint32 ids", {
            "voxgate": lambda: voxgate.connected_components(seg, dtype=np.uint32),
            "cc3d direct (its default: uint32 here)": lambda: cc3d.connected_components(
                seg, connectivity=26),
        }, args.repeats)


    store = f"zarr://{args.data}/svc-seg.zarr"  # a copy: downsampling adds scales to it
    if "cluster" in only and not voxgate.registry.resolve(store)[0].exists(
            str(args.data / "svc-seg.zarr")):
        voxgate.copy(f"zarr://{args.data}/seg.zarr", store, progress=False)
    block = (128, 256, 256)
    if "cluster" in only:
        rows += cluster_rows(store, block, only, args.repeats)
    print("\n| operation | implementation | median s | time relative to voxgate |")
    print("|---|---|---|---|")
    for label, name, med, ratio in rows:
        rel = f"{ratio:.2f}" if ratio == ratio and ratio else ""
        print(f"| {label} | {name} | {med:.3f} | {rel} |")


if __name__ == "__main__":
    main()
