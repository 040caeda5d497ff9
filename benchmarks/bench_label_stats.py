"""label_stats of one segmentation through the relay's bossDB dialect vs locally (issue 11,
item 6).

    python benchmarks/bench_label_stats.py [--shape 256,1024,1024] [--cell 16,64,64]
                                           [--repeats 3] [--work DIR]

A relay is started on 127.0.0.1 with a data root; the segmentation (Voronoi cells of about
``--cell`` voxels: 4096 ids at the default shape) is written through it as a bossDB channel
(a zarr volume under the data root).  Rows, medians of ``--repeats`` interleaved rounds:

- local through the relay: ``label_stats(bossdb://..., prefer="local")``: every voxel over HTTP
  (blosc cutouts), the kernel here;
- server, cold: the relay's label statistics dropped first (a one-voxel write through the
  relay), then ``prefer="server"``: one ids request (the relay's one pass) and one
  bounding-box request per id;
- server, warm: the same again, the relay's pass kept;
- auto, cold: what the rule picks after a write, and its time;
- local on the zarr volume itself (no HTTP), for reference;
- before (per id): the relay's former route, one whole-channel scan per boundingbox request,
  timed for one id on the zarr volume (the scan the relay ran, without HTTP) and multiplied
  by the ids.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.relay.conftest import RW, free_port, start_relay

import voxgate
from voxgate.geometry import chunk_boxes, grow_block
from voxgate.synthetic import synthetic_labels


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def old_scan_one_id(url: str, ident: int) -> float:
    """The removed Relay.bounding_box: blocks of 64 MiB, ``== id`` and nonzero in each."""
    vol = voxgate.open(url)
    remote, bounds = vol.remote, vol.scale_meta.bounds
    block = grow_block(vol.chunks, 8, bounds.shape, 64 * 2**20)
    t0 = time.perf_counter()
    value = np.uint64(ident)
    lo = None
    for _, b in chunk_boxes(bounds, block, bounds):
        where = np.nonzero(remote.read(b, 0) == value)
        if where[0].size and lo is None:
            lo = [int(w.min()) for w in where]
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", default="256,1024,1024")
    p.add_argument("--cell", default="16,64,64")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    cell = tuple(int(s) for s in args.cell.split(","))
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-label-stats-"))
    work.mkdir(parents=True, exist_ok=True)

    t, labels = timed(lambda: synthetic_labels(shape, cell=cell, seed=11))  # type: ignore
    assert isinstance(labels, np.ndarray)
    n_ids = len(np.unique(labels))
    print(f"segmentation {shape} uint64 ({labels.nbytes / 2**30:.2f} GiB), {n_ids} ids "
          f"(made in {t:.0f} s)", flush=True)

    cfg = work / "relay.toml"
    cfg.write_text(f'[server]\nstate_path = "{work / "state.json"}"\n'
                   f'[cache]\nmemory_bytes = "1 GiB"\n'
                   f'[auth]\ntokens = {{ "{RW}" = "read-write" }}\n')
    relay = start_relay(cfg, free_port(), "--data-root", str(work / "data"))
    try:
        url = f"bossdb://{relay.url}/bench/e/seg"
        seg = voxgate.create(url, shape=shape, chunks=(16, 512, 512), dtype="uint64",
                             voxel_size=(8, 8, 8), kind="segmentation", token=RW)
        t0 = time.perf_counter()
        seg[:] = labels
        t = time.perf_counter() - t0
        print(f"written through the relay in {t:.1f} s", flush=True)
        zarr_url = f"zarr://{work / 'data' / 'bench' / 'e' / 'seg.zarr'}"
        one = voxgate.open(url, mode="r+", token=RW)
        voxel = one[0:1, 0:1, 0:1].read()
        del labels
        gc.collect()

        def drop_relay_stats() -> None:  # any write through the relay does
            one[0:1, 0:1, 0:1] = voxel

        http = httpx.Client(base_url=relay.url, headers={"Authorization": f"Token {RW}"},
                            timeout=600)

        def passes() -> int:
            return int(http.get("/metrics").json()["label_stats"]["computations"])

        rows: dict[str, list[float]] = {}
        picked: list[str] = []
        frames: dict[str, object] = {}

        def local_relay() -> object:
            return voxgate.label_stats(voxgate.open(url, token=RW), prefer="local")

        def server() -> object:
            return voxgate.label_stats(voxgate.open(url, token=RW), prefer="server")

        def auto() -> object:
            return voxgate.label_stats(voxgate.open(url, token=RW))

        def local_zarr() -> object:
            return voxgate.label_stats(zarr_url, prefer="local")

        plan: list[tuple[str, Callable[[], object], bool]] = [
            ("local through the relay", local_relay, False),
            ("server, cold (one pass on the relay + a request per id)", server, True),
            ("server, warm (the relay's pass kept)", server, False),
            ("auto, cold", auto, True),
            ("local on the zarr volume (no HTTP)", local_zarr, False),
        ]
        rng = np.random.default_rng(0)
        for r in range(args.repeats):
            order = [plan[i] for i in rng.permutation(len(plan))]
            for name, fn, cold in order:
                if cold:
                    drop_relay_stats()
                elif name.startswith("server, warm"):  # the relay's pass made and kept
                    z, y, x = shape
                    http.get(f"/v1/ids/bench/e/seg/0/0:{x}/0:{y}/0:{z}/").raise_for_status()
                before = passes()
                secs, df = timed(fn)
                rows.setdefault(name, []).append(secs)
                frames[name] = df
                prov = df.attrs["provenance"]  # type: ignore[attr-defined]
                if name.startswith("auto"):
                    picked.append(prov.path)
                print(f"  round {r + 1}: {name}: {secs:.2f} s ({prov.path}; relay passes "
                      f"+{passes() - before})", flush=True)
        a = frames["local through the relay"]
        b = frames["server, warm (the relay's pass kept)"]
        for col in ("id", "z0", "y0", "x0", "z1", "y1", "x1"):
            assert (a[col].to_numpy() == b[col].to_numpy()).all(), col  # type: ignore[index]
        ids = frames["local on the zarr volume (no HTTP)"]["id"]  # type: ignore[index]
        scan = old_scan_one_id(zarr_url, int(ids.iloc[len(ids) // 2]))
        warm = statistics.median(rows["server, warm (the relay's pass kept)"])
        local = statistics.median(rows["local through the relay"])
        print(f"\n{shape[0]}x{shape[1]}x{shape[2]} uint64, {n_ids} ids; medians of "
              f"{args.repeats}\n")
        print("| path | median s | relative to local through the relay |")
        print("|---|---|---|")
        for name, ts in rows.items():
            med = statistics.median(ts)
            extra = f" (picked: {', '.join(sorted(set(picked)))})" if name.startswith("auto") \
                else ""
            print(f"| {name}{extra} | {med:.2f} | {med / local:.2f} |")
        print(f"| before: a whole-channel scan per id ({scan:.2f} s measured for one id, x "
              f"{n_ids}) | {scan * n_ids:.0f} | {scan * n_ids / local:.0f} |")
        print(f"\nwarm: {warm / n_ids * 1000:.2f} ms per id (one ids request + {n_ids} "
              f"boundingbox requests, 8 in flight)")
        http.close()
    finally:
        relay.stop()


if __name__ == "__main__":
    main()
