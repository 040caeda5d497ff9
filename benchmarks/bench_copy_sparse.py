"""A copy of a sparse volume (many chunks, nearly all absent): voxgate.copy vs tensorstore.

    python benchmarks/bench_copy_sparse.py [--size 2048] [--chunk 16] [--repeats 3]
                                           [--old-src PATH] [--without tensorstore]

The source is a zarr v3 of ``size``^3 uint8 in ``chunk``^3 chunks with two chunks written (the
first and the last), the rest never written (2048 / 16: 2,097,152 chunks), made once in a
temporary folder.  Each run copies it whole to a fresh zarr, in a fresh process (its peak RSS
above its own start, VmHWM, with glibc's mmap threshold fixed at 1 MiB as
tests/test_memory_bounds.py measures), one setup after the other in a new random order each
round:

- ``voxgate``: ``voxgate.copy(src, dst, workers=2)``;
- ``tensorstore``: tensorstore used directly, ``dst.write(src)`` of the whole array (scale 0,
  the zarr array at ``0/`` of voxgate's multiscale group, into a new zarr v3 with the same
  chunks, tensorstore's default context), which reads every chunk;
- ``voxgate-old`` (with ``--old-src``): voxgate.copy from another checkout's ``src`` folder
  (e.g. ``git archive c4d520a src | tar -x -C /tmp/old``), put first on ``PYTHONPATH``.

Prints the median seconds and peak MiB of each.  Linux only (VmHWM).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

_PEAK = """
def _peak():
    with open("/proc/self/status") as f:
        return int(next(ln for ln in f if ln.startswith("VmHWM:")).split()[1]) / 1024
"""

_VOXGATE = _PEAK + """
import sys, time, voxgate
base = _peak()
t = time.perf_counter()
voxgate.copy(f"zarr://{sys.argv[1]}", f"zarr://{sys.argv[2]}", progress=False, workers=2)
print(time.perf_counter() - t, _peak() - base)
"""

_TENSORSTORE = _PEAK + """
import sys, time, tensorstore as ts
base = _peak()
t = time.perf_counter()
src = ts.open({"driver": "zarr3",
               "kvstore": {"driver": "file", "path": sys.argv[1] + "/0"}}).result()
dst = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": sys.argv[2]}},
              create=True, dtype=src.dtype, shape=src.shape,
              chunk_layout=src.chunk_layout).result()
dst.write(src).result()
print(time.perf_counter() - t, _peak() - base)
"""


def _make(path: Path, size: int, chunk: int) -> None:
    import numpy as np

    import voxgate

    vol = voxgate.create(f"zarr://{path}", shape=(size,) * 3, dtype="uint8",
                         chunks=(chunk,) * 3, voxel_size=(8, 8, 8))
    vol[0:chunk, 0:chunk, 0:chunk] = np.full((chunk,) * 3, 1, np.uint8)
    end = size - chunk
    vol[end:size, end:size, end:size] = np.full((chunk,) * 3, 2, np.uint8)


def _run(code: str, src: Path, dst: Path, pythonpath: str | None) -> tuple[float, float]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(src), str(dst)],
                         capture_output=True, text=True, env=env, check=True, timeout=1800)
    seconds, peak = out.stdout.split()[-2:]
    return float(seconds), float(peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--old-src", type=Path, default=None,
                    help="another checkout's src folder, run as voxgate-old")
    ap.add_argument("--without", default="",
                    help="comma-separated setups to leave out (e.g. tensorstore: at --size 2048 "
                         "it writes 8 GiB)")
    args = ap.parse_args()
    setups: dict[str, tuple[str, str | None]] = {"voxgate": (_VOXGATE, None),
                                                 "tensorstore": (_TENSORSTORE, None)}
    if args.old_src is not None:
        setups["voxgate-old"] = (_VOXGATE, str(args.old_src))
    for name in filter(None, args.without.split(",")):
        setups.pop(name)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        src = Path(tmp) / "src.zarr"
        _make(src, args.size, args.chunk)
        n = (args.size // args.chunk) ** 3
        print(f"source: {args.size}^3 uint8, {args.chunk}^3 chunks ({n:,}), 2 written")
        got: dict[str, list[tuple[float, float]]] = {k: [] for k in setups}
        for r in range(args.repeats):
            order = list(setups)
            random.shuffle(order)
            for name in order:
                dst = Path(tmp) / f"dst-{name}-{r}.zarr"
                got[name].append(_run(setups[name][0], src, dst, setups[name][1]))
                subprocess.run(["rm", "-rf", str(dst)], check=True)
        for name, runs in got.items():
            secs = statistics.median(s for s, _ in runs)
            peak = statistics.median(p for _, p in runs)
            print(f"{name:12s} {secs:8.2f} s  peak {peak:7.0f} MiB  "
                  f"(runs: {', '.join(f'{s:.1f}' for s, _ in runs)})")


if __name__ == "__main__":
    main()
