"""The relay behind nginx's proxy cache (issue 15, item 3): hit ratio and latency of repeated
warm cutouts through nginx in front of two relays, against the same cutouts from one relay
directly.

    python benchmarks/bench_http_cache.py [--repeats 20] [--clients 8]

Upstream: a 16 x 2048 x 2048 uint8 zarr image (16 x 256 x 256 chunks) on local disk; two relays
sharing it and one generations directory; Debian's nginx (/usr/sbin/nginx) with the
configuration of docs/relay.md ("Behind an HTTP cache") on 127.0.0.1.  Cutouts: 16 distinct
512 x 512 x 16 regions, each read once to warm every tier, then ``--repeats`` rounds of all of
them, one client (p50 / p99 per request) and then ``--clients`` concurrent clients
(throughput); then the same through nginx of a read-only copy (``read_only_max_age = 3600``:
reused without revalidation).  The hit ratio counts responses whose X-Cache-Status (nginx's
``$upstream_cache_status``) is HIT or REVALIDATED, i.e. whose body came from nginx's cache.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import blosc
import httpx
import numpy as np

import voxgate
from voxgate.geometry import Box

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.relay.conftest import RW, free_port, start_relay
from tests.relay.test_http_cache import _config, start_nginx

SHAPE = (16, 2048, 2048)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


CHANNEL = {"chan": "img"}


def url_of(box: Box) -> str:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return f"/v1/cutout/c/e/{CHANNEL['chan']}/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"


def one_client(base: str, boxes: list[Box], repeats: int,
               conditional: bool = False) -> tuple[list[float], Counter[str]]:
    """Per-request seconds and X-Cache-Status counts; ``conditional``: each GET sends the
    region's current ETag (the request a cache makes to revalidate), answered 304."""
    times: list[float] = []
    statuses: Counter[str] = Counter()
    with httpx.Client(base_url=base, headers={"Authorization": f"Token {RW}"},
                      timeout=60) as http:
        etags = {}
        for b in boxes:  # warm
            res = http.get(url_of(b))
            assert res.status_code == 200
            etags[b] = res.headers["etag"]
        for _ in range(repeats):
            for b in boxes:
                t0 = time.perf_counter()
                if conditional:
                    res = http.get(url_of(b), headers={"If-None-Match": etags[b]})
                    times.append(time.perf_counter() - t0)
                    assert res.status_code == 304
                    statuses["304"] += 1
                    continue
                res = http.get(url_of(b))
                arr = np.frombuffer(blosc.decompress(res.content), np.uint8)
                times.append(time.perf_counter() - t0)
                assert res.status_code == 200 and arr.size == b.size
                statuses[res.headers.get("x-cache-status", "-")] += 1
    return times, statuses


def many_clients(base: str, boxes: list[Box], repeats: int, clients: int) -> float:
    """MiB/s of decoded cutouts with ``clients`` threads, each reading every box ``repeats``
    times in its own order."""
    total = [0]
    lock = threading.Lock()

    def worker(seed: int) -> None:
        order = [boxes[i] for i in np.random.default_rng(seed).permutation(len(boxes))]
        n = 0
        with httpx.Client(base_url=base, headers={"Authorization": f"Token {RW}"},
                          timeout=60) as http:
            for _ in range(repeats):
                for b in order:
                    res = http.get(url_of(b))
                    assert res.status_code == 200
                    n += len(blosc.decompress(res.content))
        with lock:
            total[0] += n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total[0] / 2**20 / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes of each of the two relays (voxgate serve --workers)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = np.random.default_rng(0).integers(0, 255, SHAPE, dtype=np.uint8)
        url = f"zarr://{tmp}/img.zarr"
        for u in (url, url.replace("img.zarr", "ro.zarr")):  # (ro: the read-only channel's)
            voxgate.create(u, shape=SHAPE, chunks=(16, 256, 256), dtype="uint8",
                           voxel_size=(40, 8, 8))[:] = data
        gens = tmp / "generations"
        configs = [_config(tmp / name, url, gens) for name in ("a", "b")]
        for cfg in configs:
            cfg.write_text(cfg.read_text().replace("[server]\n",
                                                   f"[server]\nworkers = {args.workers}\n", 1))
        a = start_relay(configs[0], free_port())
        b = start_relay(configs[1], free_port())
        nginx = start_nginx(tmp / "nginx", [a.port, b.port])
        try:
            boxes = [Box((0, y, x), (16, y + 512, x + 512))
                     for y in range(0, 2048, 512) for x in range(0, 2048, 512)]
            print(f"{len(boxes)} regions of 512 x 512 x 16 uint8, {args.repeats} warm rounds, "
                  f"{args.workers} worker process(es) per relay")
            print("| path | p50 ms | p99 ms | X-Cache-Status | hit ratio | "
                  f"{args.clients} clients MiB/s |")
            print("|---|---|---|---|---|---|")
            for label, base in (("relay directly", a.url), ("nginx -> 2 relays", nginx.url),
                                ("relay directly, If-None-Match", a.url),
                                ("nginx, read-only channel, max-age=3600", nginx.url)):
                conditional = label.endswith("Match")
                CHANNEL["chan"] = "ro" if "read-only" in label else "img"
                times, statuses = one_client(base, boxes, args.repeats, conditional)
                hits = statuses["HIT"] + statuses["REVALIDATED"]
                ratio = f"{hits / sum(statuses.values()):.3f}" if hits else "-"
                shown = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
                mibs = "-" if conditional else \
                    f"{many_clients(base, boxes, max(1, args.repeats // 4), args.clients):.0f}"
                print(f"| {label} | {pct(times, 0.5) * 1e3:.2f} | {pct(times, 0.99) * 1e3:.2f} "
                      f"| {shown} | {ratio} | {mibs} |")
        finally:
            nginx.stop()
            a.stop()
            b.stop()


if __name__ == "__main__":
    main()
