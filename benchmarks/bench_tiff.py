"""A TIFF stack into zarr: ``voxgate cp tiff://stack.tif zarr://...`` vs tifffile + zarr-python.

    python benchmarks/bench_tiff.py [--gib 2] [--dir /tmp] [--rounds 1]

Generates a multipage uint8 TIFF of ``--gib`` GiB (pages of 2048 x 1024, written page by page,
uncompressed as microscopes write them) on ``--dir``, then copies it to a zarr v3 array two
ways, each in a fresh process so that its peak resident memory (``ru_maxrss``) is its own:

- voxgate: the ``voxgate cp`` command (progress bar off), whatever it chooses;
- by hand: tifffile reads 64 pages at a time (``TiffFile.asarray(key=...)``) and zarr-python
  writes them to an array with the chunks and codecs voxgate chose (read from its zarr.json),
  the loop a user would write.

Prints the time, throughput (MiB/s of the stack) and peak RSS of each, checks that both arrays
equal the stack (sampled pages), and deletes everything it made.  Needs the test extra (zarr).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import tifffile

PAGE = (2048, 1024)
SLAB = 64


def page_data(z: int) -> np.ndarray:
    """A page of EM-like texture: smooth blobs plus noise, different for every z (cheap)."""
    rng = np.random.default_rng(z)
    base = np.add.outer(np.sin(np.arange(PAGE[0]) / 37.0 + z / 11.0),
                        np.cos(np.arange(PAGE[1]) / 23.0 - z / 7.0))
    noise = rng.integers(0, 40, PAGE, dtype=np.uint8)
    return (base * 50 + 128).astype(np.uint8) + noise


def make_stack(path: Path, pages: int) -> None:
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for z in range(pages):
            tw.write(page_data(z), photometric="minisblack", metadata=None, contiguous=False)


RUN = {
    "voxgate": """
        import json, resource, sys, time
        from voxgate.cli import main
        import voxgate.remotes.tiff, voxgate.remotes.zarr, voxgate.transfer  # imports untimed
        t0 = time.perf_counter()
        try:
            main(["cp", "--no-progress", "tiff://" + sys.argv[1], "zarr://" + sys.argv[2]])
        except SystemExit as exc:
            assert not exc.code, exc.code
        dt = time.perf_counter() - t0
        print(json.dumps({"seconds": dt,
                          "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """,
    "tifffile + zarr-python": """
        import json, resource, sys, time
        import tifffile, zarr
        from zarr.codecs import BloscCodec
        src, dst, ref = sys.argv[1:4]
        meta = json.load(open(ref + "/0/zarr.json"))
        chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
        blosc = next(c for c in meta["codecs"] if c["name"] == "blosc")["configuration"]
        t0 = time.perf_counter()
        with tifffile.TiffFile(src) as tf:
            n = len(tf.pages)
            y, x = tf.pages[0].shape
            arr = zarr.create_array(dst, shape=(n, y, x), chunks=chunks, dtype="uint8",
                                    compressors=BloscCodec(cname=blosc["cname"],
                                                           clevel=blosc["clevel"],
                                                           shuffle=blosc["shuffle"]),
                                    fill_value=0)
            step = chunks[0]
            for z0 in range(0, n, step):
                z1 = min(n, z0 + step)
                arr[z0:z1] = tf.asarray(key=range(z0, z1))
        dt = time.perf_counter() - t0
        print(json.dumps({"seconds": dt,
                          "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """,
}


def run(name: str, *args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(RUN[name]), *args],
                         check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    pages = int(args.gib * 2**30 // (PAGE[0] * PAGE[1]))
    work = Path(tempfile.mkdtemp(prefix="bench-tiff-", dir=args.dir))
    try:
        stack = work / "stack.tif"
        make_stack(stack, pages)
        size = stack.stat().st_size
        print(f"stack: {pages} pages of {PAGE[0]} x {PAGE[1]} uint8, {size / 2**30:.2f} GiB")
        import zarr

        import voxgate

        results: dict[str, list[dict[str, float]]] = {}
        for r in range(args.rounds):
            order = list(RUN) if r % 2 == 0 else list(RUN)[::-1]
            for name in order:
                v_dst = work / "voxgate.zarr"
                h_dst = work / "hand.zarr"
                if name == "voxgate":
                    shutil.rmtree(v_dst, ignore_errors=True)
                    res = run(name, str(stack), str(v_dst))
                else:
                    if not v_dst.exists():  # chunks and codecs are voxgate's: make them first
                        run("voxgate", str(stack), str(v_dst))
                    shutil.rmtree(h_dst, ignore_errors=True)
                    res = run(name, str(stack), str(h_dst), str(v_dst))
                results.setdefault(name, []).append(res)
        # both results equal the stack (a sample of pages, whole)
        vol = voxgate.open(f"zarr://{work}/voxgate.zarr")
        hand = zarr.open_array(str(work / "hand.zarr"), mode="r")
        print(f"voxgate's zarr chunks: {tuple(vol.chunks)}")
        for z in (0, pages // 3, pages - 1):
            want = page_data(z)
            assert (vol[z].read() == want).all(), z
            assert (hand[z] == want).all(), z
        print()
        print("| copy of the stack to zarr v3 | median time | throughput | peak RSS | runs |")
        print("|---|---|---|---|---|")
        for name, rs in results.items():
            t = float(np.median([r["seconds"] for r in rs]))
            rss = max(r["maxrss_mib"] for r in rs)
            runs = ", ".join(f"{r['seconds']:.1f}" for r in rs)
            print(f"| {name} | {t:.1f} s | {size / 2**20 / t:.0f} MiB/s | {rss:.0f} MiB | "
                  f"{runs} s |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
