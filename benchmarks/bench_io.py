"""voxgate I/O against tensorstore, CloudVolume and zarr-python on the same files, in one run.

    python benchmarks/bench_io.py [--size 512] [--repeats 5] [--data benchmarks/data]
                                  [--only WORDS] [--tensorstore-only] [--fixed-cost]

On 512^3 volumes (uint8 image, uint64 segmentation, 64^3 chunks) it times unaligned 128^3
cutouts (20 places, each read by every library in turn), a full read, a full write and a
zarr -> precomputed copy, and prints medians and each library's time relative to voxgate's.
Runs are interleaved (every library once per round, in a new random order each round) so drift
in the machine's load hits all of them alike.  Beside the wall time it reports the process's
CPU time (all threads) per call, which the load of other processes on a shared machine moves
much less.  ``--only "cutout,zarr"`` runs the rows whose label holds one of the words;
``--tensorstore-only`` leaves CloudVolume and zarr-python out (they take most of the run).
``--fixed-cost`` measures only what voxgate adds to each 128^3 raw precomputed cutout over
tensorstore's own read (:func:`fixed_cost`).  Needs the test extra (cloud-volume, zarr).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import shutil
import statistics
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorstore as ts
import zarr
from cloudvolume import CloudVolume

import voxgate
from voxgate.synthetic import synthetic_em

CUTOUT = 128
N_CUTOUTS = 20
#: (label, library, median wall seconds, wall / voxgate's, median CPU seconds, CPU / voxgate's)
Row = tuple[str, str, float, float, float, float]
#: set by main: which rows run, and whether the other libraries run beside tensorstore
ONLY: list[str] = []
OTHERS = True


def wanted(label: str) -> bool:
    return not ONLY or any(word in label for word in ONLY)


def others(fns: dict[str, Callable[..., object]]) -> dict[str, Callable[..., object]]:
    """``fns`` without CloudVolume and zarr-python when --tensorstore-only is given."""
    keep = ("voxgate", "tensorstore")
    return fns if OTHERS else {k: v for k, v in fns.items() if k in keep}


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and process CPU time (every thread) of one call."""
    gc.collect()
    c0 = time.process_time()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def boxes(size: int, seed: int = 7) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.integers(1, size - CUTOUT - 1, 3)) for _ in range(N_CUTOUTS)]


def prepare(root: Path, size: int) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    marker = root / f"ready-{size}"
    shape = (size, size, size)
    if marker.exists():
        image = voxgate.open(f"zarr://{root}/img.zarr").read()
        labels = voxgate.open(f"zarr://{root}/seg.zarr").read()
        return {"image": image, "seg": labels}
    print(f"generating {size}^3 synthetic EM (once; cached in {root}) ...", flush=True)
    cell = (max(8, size // 12),) * 3  # about 2000 cells at 512^3
    image, labels = synthetic_em(shape, seed=0, cell=cell)
    for name, data, kind in (("img", image, "image"), ("seg", labels, "segmentation")):
        for fmt in ("zarr", "pre"):
            shutil.rmtree(root / f"{name}.{fmt}", ignore_errors=True)
        z = voxgate.create(f"zarr://{root}/{name}.zarr", shape=shape, dtype=data.dtype,
                           chunks=(64, 64, 64), voxel_size=(8, 8, 8), kind=kind)
        z[:] = data
        voxgate.copy(z.url, f"precomputed://file://{root}/{name}.pre", progress=False)
    marker.touch()
    print(f"{len(np.unique(labels))} labels", flush=True)
    return {"image": image, "seg": labels}


def bench(root: Path, size: int, repeats: int) -> list[Row]:
    data = prepare(root, size)
    cut = boxes(size)
    rows: list[Row] = []

    for name, fmt_label in (("img", "uint8 raw precomputed"),
                            ("seg", "uint64 compressed_segmentation precomputed")):
        pre = root / f"{name}.pre"
        vg = voxgate.open(pre)
        tstore = ts.open({"driver": "neuroglancer_precomputed",
                          "kvstore": {"driver": "file", "path": str(pre)}}).result()
        cv = CloudVolume(f"file://{pre}", mip=0, progress=False, fill_missing=False)
        expected = data["image" if name == "img" else "seg"]

        def vg_cut(z: int, y: int, x: int, v: voxgate.Volume = vg) -> None:
            v[z:z + CUTOUT, y:y + CUTOUT, x:x + CUTOUT].read()

        def ts_cut(z: int, y: int, x: int, s: ts.TensorStore = tstore) -> None:
            s[x:x + CUTOUT, y:y + CUTOUT, z:z + CUTOUT, 0].read(order="F").result()

        def cv_cut(z: int, y: int, x: int, c: CloudVolume = cv) -> None:
            c[x:x + CUTOUT, y:y + CUTOUT, z:z + CUTOUT]

        cut_label = f"{CUTOUT}^3 unaligned cutout, {fmt_label}"
        read_label = f"full read {size}^3, {fmt_label}"
        if not (wanted(cut_label) or wanted(read_label)):
            continue
        # correctness first: the three agree
        z, y, x = cut[0]
        a = vg[z:z + CUTOUT, y:y + CUTOUT, x:x + CUTOUT].read()
        b = tstore[x:x + CUTOUT, y:y + CUTOUT, z:z + CUTOUT, 0].read(order="F").result().T
        c = np.asarray(cv[x:x + CUTOUT, y:y + CUTOUT, z:z + CUTOUT])[..., 0].T
        assert np.array_equal(a, b) and np.array_equal(a, c)
        assert np.array_equal(a, expected[z:z + CUTOUT, y:y + CUTOUT, x:x + CUTOUT])
        if wanted(cut_label):
            rows += run_cutouts(cut_label, others(
                {"voxgate": vg_cut, "tensorstore": ts_cut, "CloudVolume": cv_cut}), cut, repeats)
        if wanted(read_label):
            rows += run_round(read_label, others({
                "voxgate": lambda v=vg: v.read(),
                "tensorstore": lambda s=tstore: s[..., 0].read(order="F").result(),
                "CloudVolume": lambda c=cv: c[:, :, :],
            }), repeats)

    # zarr v3 blosc-zstd, uint8: voxgate vs tensorstore vs zarr-python
    zpath = root / "img.zarr" / "0"
    vgz = voxgate.open(f"zarr://{root}/img.zarr")
    tsz = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(zpath)}}).result()
    zz = zarr.open_array(str(zpath), mode="r")

    def vgz_cut(z: int, y: int, x: int) -> None:
        vgz[z:z + CUTOUT, y:y + CUTOUT, x:x + CUTOUT].read()

    def tsz_cut(z: int, y: int, x: int) -> None:
        tsz[z:z + CUTOUT, y:y + CUTOUT, x:x + CUTOUT].read().result()

    def zz_cut(z: int, y: int, x: int) -> None:
        zz[z:z + CUTOUT, y:y + CUTOUT, x:x + CUTOUT]

    label = f"{CUTOUT}^3 unaligned cutout, uint8 zarr v3 blosc-zstd"
    if wanted(label):
        rows += run_cutouts(label, others(
            {"voxgate": vgz_cut, "tensorstore": tsz_cut, "zarr-python": zz_cut}), cut, repeats)
    label = f"full read {size}^3, uint8 zarr v3 blosc-zstd"
    if wanted(label):
        rows += run_round(label, others({
            "voxgate": lambda: vgz.read(),
            "tensorstore": lambda: tsz.read().result(),
            "zarr-python": lambda: zz[:],
        }), repeats)

    # full writes of the segmentation: precomputed compressed_segmentation and zarr
    seg = data["seg"]
    out = root / "out"

    def fresh() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()

    def vg_write_pre() -> None:
        v = voxgate.create(f"precomputed://file://{out}/vg", shape=seg.shape, dtype="uint64",
                           chunks=(64, 64, 64), voxel_size=(8, 8, 8), kind="segmentation")
        v[:] = seg

    def cv_write_pre() -> None:
        info = CloudVolume.create_new_info(
            num_channels=1, layer_type="segmentation", data_type="uint64",
            encoding="compressed_segmentation", resolution=[8, 8, 8], voxel_offset=[0, 0, 0],
            chunk_size=[64, 64, 64], volume_size=list(seg.shape[::-1]))
        c = CloudVolume(f"file://{out}/cv", info=info, progress=False, compress=False)
        c.commit_info()
        c[:, :, :] = seg.T

    def ts_write_pre() -> None:
        s = ts.open({"driver": "neuroglancer_precomputed",
                     "kvstore": {"driver": "file", "path": str(out / "ts")},
                     "multiscale_metadata": {"type": "segmentation", "data_type": "uint64",
                                             "num_channels": 1},
                     "scale_metadata": {"size": list(seg.shape[::-1]),
                                        "encoding": "compressed_segmentation",
                                        "compressed_segmentation_block_size": [8, 8, 8],
                                        "chunk_size": [64, 64, 64], "resolution": [8, 8, 8]}},
                    create=True).result()
        s[..., 0].write(seg.T).result()

    label = f"full write {size}^3 uint64 seg, precomputed compressed_segmentation"
    if wanted(label):
        rows += run_round(label, others({
            "voxgate": vg_write_pre, "tensorstore": ts_write_pre, "CloudVolume": cv_write_pre,
        }), max(2, repeats // 2), setup=fresh)

    def vg_copy() -> None:
        voxgate.copy(f"zarr://{root}/seg.zarr", f"precomputed://file://{out}/copy",
                     progress=False)

    label = f"copy {size}^3 uint64 seg zarr -> precomputed (CloudVolume: write only)"
    if wanted(label) and OTHERS:
        rows += run_round(label, {
            "voxgate": vg_copy, "CloudVolume": cv_write_pre,
        }, max(2, repeats // 2), setup=fresh)
    shutil.rmtree(out, ignore_errors=True)
    return rows


def run_cutouts(
    label: str,
    fns: dict[str, Callable[[int, int, int], object]],
    cuts: list[tuple[int, int, int]],
    repeats: int,
) -> list[Row]:
    """Median time of one cutout; every cutout is read by every library in a shuffled order
    before the next, so the libraries see the same machine state."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    rng = np.random.default_rng(1)
    for fn in fns.values():
        fn(*cuts[0])
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for c in cuts:
                rng.shuffle(order)  # type: ignore[arg-type]
                for name, fn in order:
                    c0 = time.process_time()
                    t0 = time.perf_counter()
                    fn(*c)
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
    finally:
        gc.enable()
    return _report(label, times, cpu)


def _report(label: str, times: dict[str, list[float]], cpu: dict[str, list[float]]) -> list[Row]:
    base = statistics.median(times["voxgate"])
    cpu_base = statistics.median(cpu["voxgate"])
    rows = []
    for name, ts_ in times.items():
        med = statistics.median(ts_)
        cmed = statistics.median(cpu[name])
        rows.append((label, name, med, med / base, cmed, cmed / cpu_base))
    print(f"\n{label}")
    for _, name, med, ratio, cmed, cratio in rows:
        print(f"  {name:12s} {med * 1000:10.2f} ms   {ratio:5.2f}x voxgate's time   "
              f"CPU {cmed * 1000:10.2f} ms   {cratio:5.2f}x voxgate's")
    return rows


def run_round(
    label: str,
    fns: dict[str, Callable[[], object]],
    repeats: int,
    per: int = 1,
    setup: Callable[[], None] | None = None,
) -> list[Row]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up: imports, page cache, thread pools
        if setup:
            setup()
        fn()
    order = list(fns.items())
    rng = np.random.default_rng(0)
    for _ in range(repeats):
        # a new order every round: whoever runs right after a warm-up or a big allocation
        # changes, so no library keeps the same neighbour
        rng.shuffle(order)  # type: ignore[arg-type]
        for name, fn in order:
            if setup:
                setup()
            wall, used = timed(fn)
            times[name].append(wall / per)
            cpu[name].append(used / per)
    return _report(label, times, cpu)


def fixed_cost(root: Path, repeats: int) -> None:
    """voxgate's fixed cost per 128^3 raw precomputed cutout over tensorstore's read of the same
    box, three ways: the Python calls per read and the time of voxgate's path with tensorstore's
    read replaced by one that returns a ready array at once (deterministic: all of that time is
    voxgate's Python), then real reads, voxgate and tensorstore in a shuffled order at each of
    20 places, ``repeats`` rounds: the median over pairs of voxgate's time minus tensorstore's,
    wall and the calling thread's CPU (the Python runs there; the decoding threads do not)."""
    pre = root / "img.pre"
    vg = voxgate.open(pre)
    tstore = ts.open({"driver": "neuroglancer_precomputed",
                      "kvstore": {"driver": "file", "path": str(pre)}}).result()
    io = vg.remote._scale_io(0)  # type: ignore[attr-defined]  # the handle voxgate reads through
    ready = np.zeros((CUTOUT,) * 3 + (1,), np.uint8, order="F")

    class Instant:  # a tensorstore handle whose reads are done at once
        def __getitem__(self, key: tuple[object, ...]) -> Instant:
            self.out = ready if isinstance(key[-1], slice) else ready[..., 0]
            return self

        def read(self, order: str) -> Instant:
            return self

        def result(self) -> np.ndarray:
            return self.out

    def vg_cut(z: int, y: int, x: int) -> None:
        vg[z:z + CUTOUT, y:y + CUTOUT, x:x + CUTOUT].read()

    def ts_cut(z: int, y: int, x: int, s: object = tstore) -> None:
        s[x:x + CUTOUT, y:y + CUTOUT, z:z + CUTOUT, 0].read(order="F").result()  # type: ignore[index]

    cut = boxes(512)
    real, io.store = io.store, Instant()
    try:
        prof = cProfile.Profile()
        prof.runcall(lambda: [vg_cut(*cut[0]) for _ in range(100)])
        calls = pstats.Stats(prof).total_calls / 100 - 1  # (the list comprehension's own call)
        n = 20000
        ours = min(timeit.repeat(lambda: vg_cut(*cut[0]), number=n, repeat=7)) / n
        bare = min(timeit.repeat(lambda: ts_cut(*cut[0], s=Instant()), number=n, repeat=7)) / n
    finally:
        io.store = real
    print(f"reads done at once: {calls:.0f} Python calls per read; voxgate's path "
          f"{ours * 1e6:.1f} us, tensorstore's call {bare * 1e6:.1f} us")
    fns = {"voxgate": vg_cut, "tensorstore": ts_cut}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for c in cut:
        vg_cut(*c)
        ts_cut(*c)
    order = list(fns.items())
    rng = np.random.default_rng(1)
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for c in cut:
                rng.shuffle(order)  # type: ignore[arg-type]
                for name, fn in order:
                    c0 = time.thread_time()
                    t0 = time.perf_counter()
                    fn(*c)
                    wall[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.thread_time() - c0)
    finally:
        gc.enable()
    med = statistics.median
    dw = med(a - b for a, b in zip(wall["voxgate"], wall["tensorstore"], strict=True))
    dc = med(a - b for a, b in zip(cpu["voxgate"], cpu["tensorstore"], strict=True))
    print(f"real reads, {len(wall['voxgate'])} each: voxgate {med(wall['voxgate']) * 1e3:.2f} ms, "
          f"tensorstore {med(wall['tensorstore']) * 1e3:.2f} ms (tensorstore / voxgate "
          f"{med(wall['tensorstore']) / med(wall['voxgate']):.2f}); voxgate minus tensorstore, "
          f"median of pairs: wall {dw * 1e6:.0f} us, calling thread's CPU {dc * 1e6:.0f} us")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    p.add_argument("--only", default="",
                   help="comma-separated words: run only the rows whose label holds one "
                        "(e.g. 'cutout,zarr', 'write')")
    p.add_argument("--tensorstore-only", action="store_true",
                   help="compare with tensorstore alone (no CloudVolume, no zarr-python)")
    p.add_argument("--fixed-cost", action="store_true",
                   help="only voxgate's fixed cost per 128^3 raw precomputed cutout over "
                        "tensorstore's read")
    args = p.parse_args()
    if args.fixed_cost:
        prepare(args.data, args.size)
        fixed_cost(args.data, args.repeats)
        return
    global OTHERS
    ONLY[:] = [w.strip() for w in args.only.split(",") if w.strip()]
    OTHERS = not args.tensorstore_only
    rows = bench(args.data, args.size, args.repeats)
    print("\n| operation | library | median | time relative to voxgate "
          "| CPU time relative to voxgate |")
    print("|---|---|---|---|---|")
    for label, name, med, ratio, _, cratio in rows:
        unit = f"{med * 1000:.2f} ms" if med < 1 else f"{med:.3f} s"
        print(f"| {label} | {name} | {unit} | {ratio:.2f} | {cratio:.2f} |")


if __name__ == "__main__":
    main()
