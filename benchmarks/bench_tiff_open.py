"""Opening a long multipage TIFF stack, and a 16-slice cutout of it: voxgate vs tifffile.

    python benchmarks/bench_tiff_open.py [--pages 10000 30000 70000] [--rounds 3] [--dir /tmp]
                                         [--slices 1000 5000 10000] [--no-before]

For each page count, writes a BigTIFF of that many uncompressed 64 x 64 uint8 pages (one z slice
per page, no metadata: a plain stack, as most EM acquisition software writes them) with
tifffile, then times, interleaved round by round (medians):

- ``voxgate.open``: the stack read in bulk (``remotes/tiff/ifds.py``);
- ``voxgate.open, page by page``: the open as it was before that change (every page parsed
  whole by tifffile, then checked), reproduced by switching the bulk read off in this process
  (``--no-before`` skips it: 25-35 s a round at 70,000 pages);
- ``tifffile TiffFile + series``: what tifffile itself needs to know the stack's pages;
- a 16-slice cutout from the middle: voxgate's ``read`` on the open volume, tifffile's
  ``TiffFile.asarray(key=range)`` on an open file, and ``tifffile.imread(key=range)`` (open
  included), all checked equal.

``--slices N ...`` also times, for each N, a directory of N one-page 64 x 64 uint8 slice files
(``00000.tif`` ...), interleaved round by round (medians):

- ``voxgate.open``: the first slice parsed by tifffile, the others read raw and compared with
  it (``remotes/tiff/slices.py``);
- ``voxgate.open, file by file``: the open as it was before that change (every slice parsed by
  tifffile), reproduced by switching the raw read off in this process;
- ``tifffile TiffFile per file``: what tifffile itself needs to know every slice's shape and
  dtype (each file opened, its first page parsed);
- ``tifffile TiffSequence``: tifffile's own sequence over the glob (file names only; it
  opens no file until read);
- a 16-slice cutout from the middle: voxgate's ``read`` on the open volume and
  ``tifffile.imread`` of the 16 files, checked equal; and the whole directory read by
  ``tifffile.imread`` of the glob (every slice's voxels, open included).

``--pages`` with no number skips the stacks.  Deletes everything it wrote.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tifffile

import voxgate
import voxgate.remotes.tiff.opening as opening

SHAPE = (64, 64)


def make_stack(path: str, pages: int) -> None:
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for z in range(pages):
            tw.write(np.full(SHAPE, z % 251, np.uint8), photometric="minisblack",
                     metadata=None, contiguous=False)


@contextlib.contextmanager
def page_by_page() -> Iterator[None]:
    """The open as it was: no bulk read, ``TiffFile.series`` and every page parsed whole."""
    saved = opening.plain_series, opening.scan_pages
    opening.plain_series = lambda tf: None  # type: ignore[assignment]
    opening.scan_pages = lambda tf, path, ifds, numbers, whole: (  # type: ignore[assignment]
        [None] * len(ifds), [None] * len(ifds))
    try:
        yield
    finally:
        opening.plain_series, opening.scan_pages = saved


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def tifffile_series(path: str) -> int:
    with tifffile.TiffFile(path) as tf:
        return len(tf.series[0].pages)


def bench_stack(path: str, n: int, rounds: int, before: bool) -> dict[str, list[float]]:
    z0 = n // 2
    key = range(z0, z0 + 16)
    expect = np.stack([np.full(SHAPE, z % 251, np.uint8) for z in key])
    times: dict[str, list[float]] = {}
    rng = np.random.default_rng(n)
    for _ in range(rounds):
        rows = ["voxgate", "tifffile", *(["before"] if before else [])]
        for row in rng.permutation(rows):
            if row == "voxgate":
                dt, vol = timed(lambda: voxgate.open("tiff://" + path))
                times.setdefault("open: voxgate.open", []).append(dt)
                dt, got = timed(lambda: vol[z0:z0 + 16].read())  # noqa: B023
                assert (got == expect).all()
                times.setdefault("cutout: voxgate read (volume open)", []).append(dt)
            elif row == "before":
                with page_by_page():
                    dt, vol = timed(lambda: voxgate.open("tiff://" + path))
                times.setdefault("open: voxgate.open, page by page (before)", []).append(dt)
            else:
                dt, count = timed(lambda: tifffile_series(path))
                assert count == n
                times.setdefault("open: tifffile TiffFile + series", []).append(dt)
                with tifffile.TiffFile(path) as tf:
                    dt, got = timed(lambda: tf.asarray(key=key))
                assert (got == expect).all()
                times.setdefault("cutout: tifffile TiffFile.asarray(key) (file open)",
                                 []).append(dt)
                dt, got = timed(lambda: tifffile.imread(path, key=key))
                assert (got == expect).all()
                times.setdefault("cutout: tifffile.imread(key) (open included)", []).append(dt)
    return times


@contextlib.contextmanager
def file_by_file() -> Iterator[None]:
    """The slice directory's open as it was: every slice parsed by tifffile."""
    saved = opening.SliceTemplate.of
    opening.SliceTemplate.of = classmethod(  # type: ignore[method-assign,assignment]
        lambda cls, path, rep, page: None)
    try:
        yield
    finally:
        opening.SliceTemplate.of = saved  # type: ignore[method-assign]


def make_slices(d: str, n: int) -> list[str]:
    os.makedirs(d)
    files = [os.path.join(d, f"{z:05d}.tif") for z in range(n)]
    for z, f in enumerate(files):
        tifffile.imwrite(f, np.full(SHAPE, z % 251, np.uint8), photometric="minisblack",
                         metadata=None)
    return files


def tifffile_per_file(files: list[str]) -> int:
    """Every slice's shape and dtype as tifffile reads them (what an open must know)."""
    seen = set()
    for f in files:
        with tifffile.TiffFile(f) as tf:
            page = tf.pages.first
            seen.add((page.shape, str(page.dtype), len(tf.pages)))
    return len(seen)


def bench_slices(root: str, n: int, rounds: int, before: bool) -> dict[str, list[float]]:
    d = os.path.join(root, f"slices{n}")
    files = make_slices(d, n)
    z0 = n // 2
    expect = np.stack([np.full(SHAPE, z % 251, np.uint8) for z in range(z0, z0 + 16)])
    times: dict[str, list[float]] = {}
    rng = np.random.default_rng(n)
    for _ in range(rounds):
        rows = ["voxgate", "per file", "sequence", "imread", *(["before"] if before else [])]
        for row in rng.permutation(rows):
            if row == "voxgate":
                dt, vol = timed(lambda: voxgate.open("tiff://" + d))
                assert vol.shape == (n, *SHAPE)
                times.setdefault("open: voxgate.open", []).append(dt)
                dt, got = timed(lambda: vol[z0:z0 + 16].read())  # noqa: B023
                assert (got == expect).all()
                times.setdefault("cutout: voxgate read (volume open)", []).append(dt)
            elif row == "before":
                with file_by_file():
                    dt, vol = timed(lambda: voxgate.open("tiff://" + d))
                assert vol.shape == (n, *SHAPE)
                times.setdefault("open: voxgate.open, file by file (before)", []).append(dt)
            elif row == "per file":
                dt, kinds = timed(lambda: tifffile_per_file(files))
                assert kinds == 1
                times.setdefault("open: tifffile TiffFile per file", []).append(dt)
            elif row == "sequence":
                dt, seq = timed(lambda: tifffile.TiffSequence(os.path.join(d, "*.tif")))
                assert seq.shape == (n,)
                times.setdefault("open: tifffile TiffSequence (names only)", []).append(dt)
                dt, got = timed(lambda: tifffile.imread(files[z0:z0 + 16]))
                assert (got == expect).all()
                times.setdefault("cutout: tifffile.imread(16 files)", []).append(dt)
            else:
                dt, got = timed(lambda: tifffile.imread(os.path.join(d, "*.tif")))
                assert got.shape == (n, *SHAPE)
                times.setdefault("whole: tifffile.imread(glob), every voxel", []).append(dt)
    shutil.rmtree(d)
    order = ["open: voxgate.open", "open: voxgate.open, file by file (before)",
             "open: tifffile TiffFile per file", "open: tifffile TiffSequence (names only)",
             "cutout: voxgate read (volume open)", "cutout: tifffile.imread(16 files)",
             "whole: tifffile.imread(glob), every voxel"]
    return dict(sorted(times.items(), key=lambda kv: order.index(kv[0])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, nargs="*", default=[10000, 30000, 70000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--no-before", action="store_true")
    ap.add_argument("--slices", type=int, nargs="*", default=[])
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="bench-tiff-open-", dir=args.dir)
    try:
        voxgate.open("tiff://" + _warm(root))  # imports and first-call costs, untimed
        for n in args.pages:
            path = os.path.join(root, f"stack{n}.tif")
            dt, _ = timed(lambda: make_stack(path, n))  # noqa: B023
            mib = os.path.getsize(path) / 2**20
            print(f"\n{n} pages of {SHAPE[0]}x{SHAPE[1]} uint8, BigTIFF, {mib:.0f} MiB "
                  f"(written in {dt:.0f} s); medians of {args.rounds}")
            for name, ts in bench_stack(path, n, args.rounds, not args.no_before).items():
                print(f"  {name:58s} {statistics.median(ts) * 1000:10.1f} ms")
            os.remove(path)
        for n in args.slices:
            print(f"\ndirectory of {n} slices of {SHAPE[0]}x{SHAPE[1]} uint8, one file each; "
                  f"medians of {args.rounds}")
            for name, ts in bench_slices(root, n, args.rounds, not args.no_before).items():
                print(f"  {name:58s} {statistics.median(ts) * 1000:10.1f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _warm(root: str) -> str:
    path = os.path.join(root, "warm.tif")
    make_stack(path, 8)
    return path


if __name__ == "__main__":
    main()
