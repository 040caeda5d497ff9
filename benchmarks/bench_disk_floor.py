"""How fast this machine's disk takes a durable 256 MiB write: the floor under a relay write.

    python benchmarks/bench_disk_floor.py [--repeats 5] [--dir DIR]

A bossdb:// write through the relay is acknowledged only once its voxels are in the upstream
store and fsynced (docs/relay.md, "Cutout writes"), so no relay write of 256 MiB can take less
than the disk needs to make 256 MiB durable.  This measures, in the same run:

* ``file + fsync``: one 256 MiB file written in 8 MiB pieces and fsynced (what ``dd
  conv=fsync`` does);
* ``tensorstore zarr, fsync``: the upstream write the relay makes for bench_boss's uint8 box
  (64 x 2048 x 2048, 16 x 512 x 512 chunks, blosc lz4), with tensorstore's ``file_io_sync``
  on, its default and the relay's;
* ``tensorstore zarr, no fsync``: the same with ``file_io_sync`` off (not durable: for
  comparison only).

Each row is the median of ``--repeats`` runs, wall and CPU seconds, with the page cache
flushed (``os.sync``) before each.  Item 4 of issue 15 asks a bossdb:// write to be 3x
faster than intern's through the same relay; compare the first row with a third of intern's
write time in bench_boss.py.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorstore as ts

SHAPE = (64, 2048, 2048)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def file_fsync(root: Path, data: np.ndarray) -> None:
    path = root / "plain.bin"
    flat = data.reshape(-1)
    piece = 8 * 2**20
    with open(path, "wb") as f:
        for i in range(0, flat.size, piece):
            f.write(memoryview(flat[i:i + piece]))
        f.flush()
        os.fsync(f.fileno())
    path.unlink()


def zarr_write(root: Path, data: np.ndarray, sync: bool) -> None:
    path = root / "vol.zarr"
    spec = {
        "driver": "zarr",
        "kvstore": {"driver": "file", "path": str(path)},
        "metadata": {"shape": list(SHAPE), "chunks": [16, 512, 512], "dtype": "|u1",
                     "compressor": {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1}},
    }
    store = ts.open(spec, create=True, context=ts.Context({"file_io_sync": sync})).result()
    store.write(data).result()
    del store
    shutil.rmtree(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dir", type=Path, default=None,
                   help="where to write (default: a temporary directory)")
    args = p.parse_args()
    # bench_boss.py's write data: values 1..199, which blosc-lz4 barely compresses
    data = np.random.default_rng(1).integers(1, 200, SHAPE).astype(np.uint8)
    cases = {
        "file + fsync": lambda root: file_fsync(root, data),
        "tensorstore zarr, fsync": lambda root: zarr_write(root, data, True),
        "tensorstore zarr, no fsync": lambda root: zarr_write(root, data, False),
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, fn in cases.items():
                os.sync()
                c0, t0 = cpu(), time.perf_counter()
                fn(root)
                times[name].append((time.perf_counter() - t0, cpu() - c0))
    mib = data.nbytes / 2**20
    print(f"| write of {mib:.0f} MiB | wall s | CPU s | MiB/s |")
    print("|---|---|---|---|")
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        used = statistics.median(c for _, c in runs)
        print(f"| {name} | {wall:.3f} | {used:.3f} | {mib / wall:.0f} |")


if __name__ == "__main__":
    main()
