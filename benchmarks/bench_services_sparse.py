"""The Services and downsample on a sparse segmentation on S3 (moto): requests and seconds.

    python benchmarks/bench_services_sparse.py [--format precomputed|zarr] [--scale 1]
                                               [--repeats 3] [--old-src PATH]
                                               [--without tensorstore]

The volume is a uint64 segmentation of (64, 128, 128) * ``scale`` voxels in (8, 16, 16) chunks
(512 chunks at scale 1, 4096 at scale 2) on a moto S3 server started on 127.0.0.1, with four
objects each inside one chunk (6 x 12 x 12 voxels) and every other chunk never written; made
once per format (precomputed or zarr, i.e. OME-Zarr on Zarr v3) by this checkout's voxgate.
Each run is a fresh process whose requests go through a counting proxy (tests/garbage_proxy.py)
in front of moto; the rows:

- ``cc``: ``connected_components(vol)`` in one piece; ``cc (block)``: with block (16, 32, 32);
  ``cc (block) -> out``: the same written to ``out=`` a new store of the source's format on the
  same S3 (a zarr result leaves its chunks of only 0 absent; precomputed keeps them, as
  CloudVolume reads it);
- ``label_stats (block)``: ``label_stats(vol, block=(16, 32, 32))``;
- ``mesh``: ``mesh(vol)`` in one piece; ``mesh (block)``: with block (16, 32, 32);
- ``downsample (block)``: ``downsample(vol, num_scales=3, block=(16, 32, 32))`` (two new
  levels) and ``downsample``: the same without ``block`` (the whole 8 MiB volume is one block),
  each of a fresh copy of the volume written by the run itself before the proxy and the clock
  start (not timed, not counted);
- ``tensorstore+cc3d`` (the peer: what a user would do without voxgate): tensorstore opens the
  same volume on S3 (precomputed scale 0, or the zarr3 array ``0`` of the multiscale group),
  reads it whole, then ``cc3d.connected_components`` (26-connected) on the array.

Per row: chunk GETs (GETs of a chunk's key), chunk PUTs (PUTs of a chunk's key: what the row
wrote), LISTs (GETs with ``list-type``), all requests the proxy saw (any method), each as
lo-hi where the runs differ, and the median seconds of ``--repeats`` runs (one setup and row
after the other in a new random order each round). With
``--old-src`` (another checkout's ``src``, e.g. ``git archive 56764ac src | tar -x -C
/tmp/old56``, then ``--old-src /tmp/old56/src``) the voxgate rows also run with that folder
first on ``PYTHONPATH`` (``voxgate-old``); a row that fails there (an API it lacks) prints n/a.
Needs moto_server, tensorstore and cc3d.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the rows of voxgate, in table order; the peer's row comes last
ROWS = ["cc", "cc (block)", "cc (block) -> out", "label_stats (block)", "mesh", "mesh (block)",
        "downsample (block)", "downsample"]
PEER = "tensorstore+cc3d"

_CHILD = r'''
import json, os, re, sys, time, uuid
sys.path.insert(1, sys.argv[1])  # the repository root, for tests.garbage_proxy
import numpy as np

root, what, url, endpoint, scale = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], \
    int(sys.argv[5])
os.environ["VOXGATE_S3_ENDPOINT"] = endpoint
CHUNK_PATH = re.compile(r"(/\d+-\d+_\d+-\d+_\d+-\d+|/c/\d+/\d+/\d+|/\d+\.\d+\.\d+)$")
BLOCK = (16, 32, 32)


def make(url):
    import voxgate
    shape = (64 * scale, 128 * scale, 128 * scale)
    vol = voxgate.create(url, shape=shape, dtype="uint64", chunks=(8, 16, 16),
                         voxel_size=(8, 8, 8), kind="segmentation")
    for i, (z, y, x) in enumerate([(0, 0, 0), (24, 48, 80), (56, 112, 112), (40, 0, 112)]):
        z, y, x = z * scale, y * scale, x * scale
        block = np.zeros((8, 16, 16), np.uint64)
        block[1:7, 2:14, 2:14] = 10 + i
        vol[z:z + 8, y:y + 16, x:x + 16] = block


def counting_proxy(backend):
    from tests.garbage_proxy import GarbageProxy
    proxy = GarbageProxy(backend)
    log = []
    handler = proxy.server.RequestHandlerClass
    forward = handler.do_GET

    def logged(self):
        log.append((self.command, self.path))
        forward(self)

    handler.do_GET = handler.do_HEAD = handler.do_PUT = handler.do_POST = logged
    handler.do_DELETE = logged
    return proxy, log


def peer(url, proxy_url):
    import cc3d
    import tensorstore as ts
    fmt, rest = url.split("://s3://", 1)
    bucket, path = rest.split("/", 1)
    kv = {"driver": "s3", "bucket": bucket, "path": path + "/", "endpoint": proxy_url,
          "aws_region": "us-east-1"}
    if fmt == "precomputed":
        spec = {"driver": "neuroglancer_precomputed", "kvstore": kv, "scale_index": 0}
    else:
        spec = {"driver": "zarr3", "kvstore": {**kv, "path": path + "/0/"}}
    arr = ts.open(spec, read=True).result().read().result()
    return cc3d.connected_components(np.asarray(arr).squeeze(), connectivity=26)


if what == "make":
    make(url)
    sys.exit(0)
if what.startswith("downsample"):
    url = url + "-ds-" + uuid.uuid4().hex[:8]
    make(url)
if what != "tensorstore+cc3d":
    import voxgate
    from voxgate import connected_components, downsample, label_stats, mesh
    print("voxgate from", voxgate.__file__, file=sys.stderr)
    run = {"cc": lambda v: connected_components(v),
           "cc (block)": lambda v: connected_components(v, block=BLOCK),
           "cc (block) -> out": lambda v: connected_components(
               v, block=BLOCK, out=url + "-cc-" + uuid.uuid4().hex[:8], progress=False),
           "label_stats (block)": lambda v: label_stats(v, block=BLOCK),
           "mesh": lambda v: mesh(v),
           "mesh (block)": lambda v: mesh(v, block=BLOCK),
           "downsample (block)": lambda v: downsample(v, num_scales=3, block=BLOCK),
           "downsample": lambda v: downsample(v, num_scales=3)}[what]
proxy, log = counting_proxy(endpoint)
os.environ["VOXGATE_S3_ENDPOINT"] = proxy.url
try:
    t = time.perf_counter()
    if what == "tensorstore+cc3d":
        peer(url, proxy.url)
    else:
        # the open is in the clock and the count: a user's first request is the open's
        run(url if what.startswith("downsample") else voxgate.open(url))
    seconds = time.perf_counter() - t
finally:
    proxy.close()
gets = sum(1 for m, p in log if m == "GET" and CHUNK_PATH.search(p.split("?")[0]))
lists = sum(1 for m, p in log if m == "GET" and "list-type" in p)
puts = sum(1 for m, p in log if m == "PUT" and CHUNK_PATH.search(p.split("?")[0]))
print(json.dumps({"gets": gets, "puts": puts, "lists": lists, "requests": len(log),
                  "seconds": seconds}))
'''


def _env(pythonpath: str | None) -> dict[str, str]:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _child(what: str, url: str, endpoint: str, scale: int,
           pythonpath: str | None) -> dict[str, float] | None:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_CHILD), str(ROOT), what, url,
                          endpoint, str(scale)],
                         capture_output=True, text=True, env=_env(pythonpath), timeout=1800)
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or ["?"]
        print(f"  {what} ({pythonpath or 'this checkout'}) failed: {tail[0]}", file=sys.stderr)
        return None
    if what == "make":
        return {}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--format", choices=["precomputed", "zarr"], action="append",
                    help="precomputed, zarr, or both (repeat the option; default both)")
    ap.add_argument("--scale", type=int, default=1,
                    help="multiplies each axis: 1 is 512 chunks, 2 is 4096")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--old-src", type=Path, default=None,
                    help="another checkout's src folder, run as voxgate-old")
    ap.add_argument("--without", default="",
                    help="comma-separated setups to leave out (voxgate, voxgate-old, "
                         "tensorstore)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.conftest import start_moto

    setups: dict[str, str | None] = {"voxgate": None}
    if args.old_src is not None:
        setups["voxgate-old"] = str(args.old_src.resolve())
    left_out = set(filter(None, args.without.split(",")))
    for name in left_out & set(setups):
        setups.pop(name)
    jobs = [(s, row) for s in setups for row in ROWS]
    if "tensorstore" not in left_out:
        jobs.append(("tensorstore", PEER))
    proc, endpoint = start_moto()
    try:
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        for fmt in args.format or ["precomputed", "zarr"]:
            bucket = f"vg-{uuid.uuid4().hex[:12]}"
            s3.create_bucket(Bucket=bucket)
            url = f"{fmt}://s3://{bucket}/seg"
            if _child("make", url, endpoint, args.scale, None) is None:
                raise SystemExit(f"could not make {url}")
            n = 512 * args.scale ** 3
            print(f"\n{fmt}: uint64 {64 * args.scale}x{128 * args.scale}x{128 * args.scale}, "
                  f"8x16x16 chunks ({n:,}), 4 written; median of {args.repeats}")
            got: dict[tuple[str, str], list[dict[str, float] | None]] = {j: [] for j in jobs}
            for _ in range(args.repeats):
                order = list(jobs)
                random.shuffle(order)
                for setup, row in order:
                    got[setup, row].append(
                        _child(row, url, endpoint, args.scale, setups.get(setup)))
            print(f"{'row':22s} {'setup':12s} {'chunk GETs':>10s} {'chunk PUTs':>10s} "
                  f"{'LISTs':>6s} {'requests':>9s} {'seconds':>8s}")
            for setup, row in jobs:
                runs = got[setup, row]
                if any(r is None for r in runs):
                    print(f"{row:22s} {setup:12s} {'n/a':>10s} {'n/a':>10s} {'n/a':>6s} "
                          f"{'n/a':>9s} {'n/a':>8s}")
                    continue
                ok = [r for r in runs if r is not None]
                # a median; "lo-hi" where the runs differ (the block-wise cc's do)
                counts = [f"{statistics.median(v):.0f}" if min(v) == max(v)
                          else f"{min(v):.0f}-{max(v):.0f}"
                          for v in ([r.get(k, 0) for r in ok]
                                    for k in ("gets", "puts", "lists", "requests"))]
                secs = statistics.median(r["seconds"] for r in ok)
                each = ", ".join(f"{r['seconds']:.2f}" for r in ok)
                print(f"{row:22s} {setup:12s} {counts[0]:>10s} {counts[1]:>10s} "
                      f"{counts[2]:>6s} {counts[3]:>9s} {secs:8.2f}  "
                      f"(runs: {each})")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
