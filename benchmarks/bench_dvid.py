"""dvid:// against the DVID-dialect test server on loopback: 256^3 labelmap and uint8 boxes.

    python benchmarks/bench_dvid.py [--repeats 5] [--size 256]

Reads and writes a 256^3 uint64 labelmap box (64^3 blocks, lz4 vs uncompressed transfer) and
a 256^3 uint8 box (uint8blk, 32^3 blocks; DVID sends images uncompressed) through voxgate,
reporting the median wall time and throughput.  Then it splits one read into where the time
goes: the server's own work (the same request handled in-process, no HTTP), the transfer (one
plain HTTP GET of the same box minus the server's work), the client codec (lz4 decode of the
same payload) and assembly (copying request results into the output array).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import lz4.block
import numpy as np

import voxgate
from voxgate.remotes.dvid import DVIDRepo
from voxgate.synthetic import synthetic_em, synthetic_labels
from voxgate.testing.dvid import DVIDState, start_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    n, reps = args.size, args.repeats
    shape = (n, n, n)
    labels = synthetic_labels(shape, cell=(32, 32, 32)).astype(np.uint64)
    image, _ = synthetic_em(shape, seed=1)
    server = start_server()
    rows: list[tuple[str, str, float, float]] = []
    try:
        repo = DVIDRepo.create(server.url, alias="bench")
        voxgate.create(repo.url("seg"), shape=shape, chunks=(64, 64, 64), dtype="uint64",
                       voxel_size=(8, 8, 8), kind="segmentation")
        img = voxgate.create(repo.url("img"), shape=shape, chunks=(32, 32, 32), dtype="uint8",
                             voxel_size=(8, 8, 8))
        mib_l, mib_i = labels.nbytes / 2**20, image.nbytes / 2**20
        for comp in ("lz4", "none"):
            w = voxgate.open(repo.url("seg"), mode="r+", compression=comp)
            t = median_time(lambda w=w: w.write(labels), reps)
            rows.append((f"labelmap {n}^3 write", comp, t, mib_l / t))
            r = voxgate.open(repo.url("seg"), compression=comp)
            out = r.read()
            assert np.array_equal(out, labels)
            t = median_time(r.read, reps)
            rows.append((f"labelmap {n}^3 read", comp, t, mib_l / t))
        t = median_time(lambda: img.write(image), reps)
        rows.append((f"uint8blk {n}^3 write", "raw", t, mib_i / t))
        ri = voxgate.open(repo.url("img"))
        assert np.array_equal(ri.read(), image)
        t = median_time(ri.read, reps)
        rows.append((f"uint8blk {n}^3 read", "raw", t, mib_i / t))

        print(f"\nDVID test server on 127.0.0.1, {reps} repeats, median "
              "(voxgate splits into ~8 MiB block-aligned requests, 8 concurrent)")
        print(f"{'operation':24} {'transfer':9} {'median s':>9} {'MiB/s':>8}")
        for op, comp, t, rate in rows:
            print(f"{op:24} {comp:9} {t:9.3f} {rate:8.1f}")

        # where one labelmap read goes (single request of the whole box, lz4)
        uuid = repo.root
        path = f"/api/node/{uuid}/seg/raw/0_1_2/{n}_{n}_{n}/0_0_0"
        client = httpx.Client(base_url=server.url, timeout=300)
        print("\nwhere the time of one whole-box labelmap read goes (one request, no split):")
        state = DVIDState()  # the same data in this process: the server's work without HTTP
        _mirror(state, server.url, uuid)
        for comp in ("lz4", ""):
            q = f"?compression={comp}" if comp else ""
            t_http = median_time(lambda q=q: client.get(path + q).content, reps)
            payload = client.get(path + q).content
            query = {"compression": comp} if comp else {}
            t_srv = median_time(lambda query=query: state.handle("GET", path, query, b"", {}),
                                reps)
            if comp:
                t_codec = median_time(lambda p=payload: lz4.block.decompress(
                    p, uncompressed_size=labels.nbytes), reps)
            else:
                t_codec = 0.0
            t_asm = median_time(lambda: _assemble(labels), reps)
            name = comp or "none"
            print(f"  {name:5} payload {len(payload) / 2**20:7.1f} MiB: HTTP GET {t_http:.3f} s "
                  f"= server {t_srv:.3f} s + transfer {max(t_http - t_srv, 0):.3f} s; client "
                  f"codec {t_codec:.3f} s, assembly {t_asm:.3f} s")
        client.close()
    finally:
        server.stop()


def _assemble(labels: np.ndarray) -> np.ndarray:
    """What the Remote does with the decoded pieces: copy 64^3-aligned parts into one array."""
    out = np.empty_like(labels)
    n = labels.shape[0]
    step = 64
    for z in range(0, n, step):
        out[z:z + step] = labels[z:z + step]
    return out


def _mirror(state: DVIDState, url: str, uuid: str) -> None:
    """Load the benchmark's labelmap into an in-process server state (for server timings)."""
    import json

    c = httpx.Client(base_url=url, timeout=300)
    info = c.get(f"/api/repo/{uuid}/info").json()
    body = json.dumps({"root": uuid}).encode()
    state.handle("POST", "/api/repos", {}, body, {})
    ext = info["DataInstances"]["seg"]["Extended"]
    cfg = {"typename": "labelmap", "dataname": "seg",
           "BlockSize": ",".join(map(str, ext["BlockSize"]))}
    state.handle("POST", f"/api/repo/{uuid}/instance", {}, json.dumps(cfg).encode(), {})
    mx = ext["MaxPoint"]
    size = f"{mx[0] + 1}_{mx[1] + 1}_{mx[2] + 1}"
    raw = c.get(f"/api/node/{uuid}/seg/raw/0_1_2/{size}/0_0_0?supervoxels=true").content
    state.handle("POST", f"/api/node/{uuid}/seg/raw/0_1_2/{size}/0_0_0", {}, raw, {})
    c.close()


if __name__ == "__main__":
    main()
