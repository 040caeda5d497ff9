"""Writing all meshes of the benchmark segmentation: sharded vs unsharded, time and files.

    python benchmarks/bench_mesh_write.py [--size 512] [--repeats 3] [--data benchmarks/data]

Meshes every label of bench_io.py's segmentation once (voxgate.mesh), then writes them into a
fresh precomputed layer on local disk in each layout, ``--repeats`` times each (median):
legacy (two files per segment), multires unsharded (two files per segment), multires sharded
(voxgate's shard codec), and CloudVolume's own legacy writer as the established reference.
Also reads every mesh back (voxgate.read_meshes, all ids).  Reports seconds, files and MiB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import voxgate
from voxgate.formats.mesh import read_meshes, write_meshes


def files_and_mib(path: Path) -> tuple[int, float]:
    n, size = 0, 0
    for root, _, names in os.walk(path):
        for name in names:
            n += 1
            size += os.path.getsize(os.path.join(root, name))
    return n, size / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    args = p.parse_args()
    from bench_io import prepare

    seg = prepare(args.data, args.size)["seg"]
    vs = (8, 8, 8)
    t0 = time.perf_counter()
    meshes = dict(voxgate.mesh(seg, voxel_size=vs))
    print(f"{len(meshes)} meshes of a {args.size}^3 segmentation in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)

    def layer(root: Path) -> str:
        return voxgate.create(f"precomputed://file://{root}/seg", shape=seg.shape,
                              chunks=(64, 64, 64), dtype="uint64", voxel_size=vs,
                              kind="segmentation").url

    def cloudvolume_legacy(root: Path, url: str) -> None:
        from cloudvolume import CloudVolume
        from cloudvolume import Mesh as CVMesh

        cv = CloudVolume(f"file://{root}/seg", progress=False)
        cv.info["mesh"] = "mesh"
        cv.commit_info()
        cv.mesh.meta.commit_info()
        cv.mesh.put([CVMesh(m.vertices, m.faces, None, segid=i) for i, m in meshes.items()],
                    compress=False)

    layouts: dict[str, Callable[[Path, str], None]] = {
        "legacy, unsharded (voxgate)": lambda root, url: write_meshes(url, meshes),
        "legacy, unsharded (CloudVolume mesh.put)": cloudvolume_legacy,
        "multires, unsharded (voxgate)": lambda root, url: write_meshes(
            url, meshes, format="multires"),
        "multires, sharded (voxgate)": lambda root, url: write_meshes(
            url, meshes, format="multires", sharded=True),
    }
    rows = []
    for name, write in layouts.items():
        times, reads = [], []
        files, mib = 0, 0.0
        for _ in range(args.repeats):
            root = Path(tempfile.mkdtemp(prefix="meshbench-"))
            try:
                url = layer(root)
                t0 = time.perf_counter()
                write(root, url)
                times.append(time.perf_counter() - t0)
                files, mib = files_and_mib(root / "seg/mesh")
                t0 = time.perf_counter()
                back = read_meshes(url)
                reads.append(time.perf_counter() - t0)
                assert len(back) == len(meshes), (name, len(back))
            finally:
                shutil.rmtree(root, ignore_errors=True)
        rows.append((name, statistics.median(times), statistics.median(reads), files, mib))
        print(f"  {name:42s} write {rows[-1][1]:7.2f} s  read all {rows[-1][2]:7.2f} s  "
              f"{files:6d} files  {mib:7.1f} MiB", flush=True)
    print("\n| layout | write s (median) | read all s (median) | files | MiB |")
    print("|---|---|---|---|---|")
    for name, w, r, files, mib in rows:
        print(f"| {name} | {w:.2f} | {r:.2f} | {files} | {mib:.1f} |")



if __name__ == "__main__":
    main()
