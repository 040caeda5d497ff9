"""Each Service's server path against its local path on the same data, at two sizes.

    python benchmarks/bench_server_paths.py [--sizes 64,128] [--repeats 2] [--cell 16]
                                            [--only label_stats,downsample,...]

A voxgate relay (the bossDB dialect, a data root) and the DVID test server are started on
127.0.0.1; the same segmentation (Voronoi cells of about ``--cell``^3 voxels, so the ids grow
with the volume) is written to a ``bossdb://`` channel through the relay, a ``dvid://``
labelmap and a local zarr array.  For each Service that has a server path:

- server: the call with ``prefer="server"`` on the store that offers it;
- local (same store): ``prefer="local"`` on that store (every voxel over HTTP);
- local (zarr): the same call on the zarr copy (no HTTP).

Each row gives the median seconds of ``--repeats`` runs, the HTTP requests one run made (every
request of voxgate's HTTP client, counted in this process) and whether the results agree.
The ratio columns are server / local: above 1 the server path is slower.  The growth column
is the server path's time at the larger size over the smaller, beside the voxel ratio.
"""

from __future__ import annotations

import argparse
import collections
import gc
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.relay.conftest import RW, start_token_relay

import voxgate
from voxgate.remotes import _http
from voxgate.remotes.dvid import DVIDRepo
from voxgate.synthetic import synthetic_labels
from voxgate.testing.dvid import start_server

OPS = ("label_stats", "downsample", "mesh", "skeletonize", "merge", "split")


class Requests:
    """Every request voxgate's HTTP client sends from this process, by method and route."""

    def __init__(self) -> None:
        self.by_route: collections.Counter[str] = collections.Counter()
        self._orig = _http.HTTPClient.request

    def install(self) -> None:
        orig, counter = self._orig, self.by_route

        def counting(client: Any, method: str, path: str, **kw: Any) -> Any:
            parts = [p for p in path.split("?")[0].split("/") if p]
            # bossDB: v1/<service>; DVID: api/node/<uuid>/<instance>/<endpoint>
            key = parts[4] if parts[:2] == ["api", "node"] and len(parts) > 4 else \
                "/".join(parts[:2])
            counter[f"{method} {key}"] += 1
            return orig(client, method, path, **kw)

        _http.HTTPClient.request = counting  # type: ignore[method-assign]

    @contextmanager
    def count(self) -> Iterator[collections.Counter[str]]:
        before = collections.Counter(self.by_route)
        got: collections.Counter[str] = collections.Counter()
        try:
            yield got
        finally:
            got.update(self.by_route - before)


REQ = Requests()


def timed(fn: Callable[[], Any], repeats: int, before: Callable[[], Any] | None = None
          ) -> tuple[float, int, collections.Counter[str], Any]:
    """Median seconds of ``repeats`` runs, the requests of the last run, its routes, result."""
    times, out, last = [], None, collections.Counter[str]()
    for _ in range(repeats):
        if before is not None:
            before()
        gc.collect()
        with REQ.count() as got:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        last = got
    return statistics.median(times), sum(last.values()), last, out


ROWS: list[dict[str, Any]] = []


def row(size: int, op: str, store: str, path: str, t: tuple[float, int, Any, Any],
        same: str = "") -> None:
    sec, n, routes, _ = t
    ROWS.append({"size": size, "op": op, "store": store, "path": path, "s": sec, "req": n,
                 "same": same})
    top = ", ".join(f"{k} x{v}" for k, v in routes.most_common(3))
    print(f"  {size}^3 {op:<12} {store:<7} {path:<14} {sec:8.3f} s {n:6d} req  {same}  [{top}]",
          flush=True)


def same_frames(a: Any, b: Any) -> str:
    cols = ["id", "z0", "y0", "x0", "z1", "y1", "x1"]
    ok = len(a) == len(b) and all((a[c].to_numpy() == b[c].to_numpy()).all() for c in cols)
    return "equal (ids, boxes)" if ok else "DIFFER"


def same_meshes(a: Any, b: Any) -> str:
    if sorted(a) != sorted(b):
        return "DIFFER (ids)"
    for i in a:
        if not (np.array_equal(a[i].vertices, b[i].vertices)
                and np.array_equal(a[i].faces, b[i].faces)):
            return f"DIFFER (id {i})"
    return "equal"


def same_skeletons(a: Any, b: Any) -> str:
    if sorted(a) != sorted(b):
        return "DIFFER (ids)"
    for i in a:  # SWC is parent-first: the vertices as sets, 2 decimals (SWC text)
        va = np.unique(np.round(a[i].vertices, 2), axis=0)
        vb = np.unique(np.round(b[i].vertices, 2), axis=0)
        if va.shape != vb.shape or not np.allclose(va, vb, atol=1e-2) \
                or len(a[i].edges) != len(b[i].edges):
            return f"DIFFER (id {i})"
    return "equal (as SWC)"


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to the names of new ids: one-to-one pairs of labels."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def bench_size(n: int, args: argparse.Namespace, work: Path) -> None:
    only = set(args.only.split(",")) if args.only else set(OPS)
    shape = (n, n, n)
    labels = synthetic_labels(shape, cell=(args.cell,) * 3, seed=3)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    print(f"{n}^3 uint64, {len(ids)} ids", flush=True)
    opts = dict(shape=shape, dtype="uint64", voxel_size=(8, 8, 8), kind="segmentation",
                num_scales=3)
    zurl = f"zarr://{work}/seg{n}.zarr"
    z = voxgate.create(zurl, chunks=(64, 64, 64), **opts)
    z[:] = labels
    relay = start_token_relay(_mk(work / f"relay{n}"), "1GiB")
    dvid = start_server(log=work / f"dvid{n}.log")
    try:
        burl = f"bossdb://{relay.url}/bench{n}/e/seg"
        b = voxgate.create(burl, chunks=(16, 512, 512), token=RW, **opts)
        b[:] = labels
        repo = DVIDRepo.create(dvid.url, alias=f"bench{n}")
        durl = repo.url("seg")
        d = voxgate.create(durl, chunks=(64, 64, 64), **opts)
        d[:] = labels

        def bvol() -> voxgate.Volume:
            return voxgate.open(burl, mode="r+", token=RW)

        def dvol() -> voxgate.Volume:
            return voxgate.open(durl, mode="r+")

        def zvol() -> voxgate.Volume:
            return voxgate.open(zurl, mode="r+")

        r = args.repeats
        if "label_stats" in only:
            srv = timed(lambda: voxgate.label_stats(bvol(), prefer="server"), r)
            loc = timed(lambda: voxgate.label_stats(bvol(), prefer="local"), r)
            zl = timed(lambda: voxgate.label_stats(zvol()), r)
            row(n, "label_stats", "bossdb", "server", srv, same_frames(srv[3], zl[3]))
            row(n, "label_stats", "bossdb", "local", loc, same_frames(loc[3], zl[3]))
            row(n, "label_stats", "zarr", "local", zl)
        if "downsample" in only:
            def touch() -> None:  # a write: the channel is NOT_DOWNSAMPLED again
                v = bvol()
                v[0:1, 0:1, 0:1] = labels[0:1, 0:1, 0:1]

            zl = timed(lambda: voxgate.downsample(zvol(), prefer="local"), r)
            want = [zvol().at_scale(k).read() for k in (1, 2)]

            def check(vol: voxgate.Volume) -> str:
                bad = [k for k, w in zip((1, 2), want, strict=True)
                       if not np.array_equal(vol.at_scale(k).read(), w)]
                return "equal (scales 1, 2)" if not bad else f"DIFFER (scales {bad})"

            srv = timed(lambda: voxgate.downsample(bvol(), prefer="server"), r, before=touch)
            s_same = check(voxgate.open(burl, token=RW))
            loc = timed(lambda: voxgate.downsample(bvol(), prefer="local"), r)
            row(n, "downsample", "bossdb", "server", srv, s_same)
            row(n, "downsample", "bossdb", "local", loc, check(voxgate.open(burl, token=RW)))
            row(n, "downsample", "zarr", "local", zl)
            # DVID derives its scales in every scale-0 write: the call itself does nothing;
            # the store's rule differs from voxgate's (docs/remotes/dvid.md)
            ds = timed(lambda: voxgate.downsample(dvol()), r)
            diff = [int((dvol().at_scale(k).read() != w).sum()) for k, w in
                    zip((1, 2), want, strict=True)]
            row(n, "downsample", "dvid", "server(derived)", ds,
                "equal" if not any(diff) else f"DVID's rule: {diff} voxels differ")
        if "mesh" in only or "skeletonize" in only:
            many = [int(i) for i in ids]
            few = [int(i) for i in ids[np.argsort(counts)[-8:]]]
        if "mesh" in only:
            zl = timed(lambda: voxgate.mesh(zvol(), ids=many), r)
            src = dvol()
            for i, m in zl[3].items():
                src.remote.put_mesh(i, m)  # type: ignore[attr-defined]
            srv = timed(lambda: voxgate.mesh(dvol(), ids=many, prefer="server"), r)
            loc = timed(lambda: voxgate.mesh(dvol(), ids=many, prefer="local"), r)
            row(n, "mesh", "dvid", "server", srv, same_meshes(srv[3], zl[3]))
            row(n, "mesh", "dvid", "local", loc, same_meshes(loc[3], zl[3]))
            row(n, "mesh", "zarr", "local", zl)
        if "skeletonize" in only:
            zl = timed(lambda: voxgate.skeletonize(zvol(), ids=few), r)
            src = dvol()
            for i, s in zl[3].items():
                src.remote.put_skeleton(i, s)  # type: ignore[attr-defined]
            srv = timed(lambda: voxgate.skeletonize(dvol(), ids=few, prefer="server"), r)
            loc = timed(lambda: voxgate.skeletonize(dvol(), ids=few, prefer="local"), r)
            row(n, "skeletonize", "dvid", "server", srv, same_skeletons(srv[3], zl[3]))
            row(n, "skeletonize", "dvid", "local", loc, same_skeletons(loc[3], zl[3]))
            row(n, "skeletonize", "zarr", "local", zl)
        a, bb = (int(v) for v in ids[np.argsort(counts)[-2:]])
        hist = work / f"history{n}"
        if "merge" in only:
            want_m = labels.copy()
            want_m[want_m == bb] = a
            for store, opener, prefers in (("dvid", dvol, ("server", "local")),
                                           ("bossdb", bvol, ("local",)),
                                           ("zarr", zvol, ("local",))):
                for prefer in prefers:
                    got: dict[str, Any] = {}

                    def edit(opener: Any = opener, prefer: str = prefer,
                             got: dict[str, Any] = got) -> Any:
                        v = opener()
                        res = voxgate.merge(v, [a, bb], into=a, prefer=prefer,
                                            history_dir=hist)
                        got["after"] = v.read()
                        voxgate.undo(v, history_dir=hist)
                        got["undone"] = v.read()
                        return res

                    t = timed(edit, r)
                    ok = np.array_equal(got["after"], want_m) and \
                        np.array_equal(got["undone"], labels)
                    label = f"{t[3].provenance.path}" + (
                        " (server boxes)" if store == "bossdb" else "")
                    row(n, "merge+undo", store, label, t,
                        "equal (and undone)" if ok else "DIFFER")
        if "split" in only:
            where = np.argwhere(labels == a)
            seeds = [[tuple(int(c) for c in where[0])], [tuple(int(c) for c in where[-1])]]
            results: dict[str, np.ndarray] = {}
            # (the local path first: after DVID's own split the old supervoxel maps to 0, so
            # local edits of that labelmap are refused: DVIDRemote.check_local_edit)
            for store, opener, prefers in (("dvid", dvol, ("local", "server")),
                                           ("zarr", zvol, ("local",))):
                for prefer in prefers:
                    got = {}

                    def edit(opener: Any = opener, prefer: str = prefer,
                             got: dict[str, Any] = got) -> Any:
                        v = opener()
                        res = voxgate.split(v, a, seeds=seeds, prefer=prefer, history_dir=hist)
                        got["after"] = v.read()
                        voxgate.undo(v, history_dir=hist)
                        got["undone"] = v.read()
                        return res

                    t = timed(edit, r)
                    results[f"{store} {prefer}"] = got["after"]
                    why = [w for w, bad in (
                        ("partition", not same_partition(got["after"],
                                                         next(iter(results.values())))),
                        ("undo", not np.array_equal(got["undone"], labels)),
                        ("no change", np.array_equal(got["after"], labels))) if bad]
                    row(n, "split+undo", store, t[3].provenance.path, t,
                        "equal (and undone)" if not why else f"DIFFER {why}")
    finally:
        relay.stop()
        dvid.stop()


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def table(sizes: list[int]) -> None:
    print("\n| size | Service | store | path | median s | requests | server / local same "
          "store | server / local zarr | result |")
    print("|---|---|---|---|---|---|---|---|---|")
    for x in ROWS:
        ratio_same = ratio_zarr = ""
        if x["path"].startswith("server"):
            ref = [y for y in ROWS if y["size"] == x["size"] and y["op"] == x["op"]]
            same = [y for y in ref if y["store"] == x["store"] and y["path"] == "local"]
            zl = [y for y in ref if y["store"] == "zarr"]
            if same:
                ratio_same = f"{x['s'] / same[0]['s']:.2f}"
            if zl:
                ratio_zarr = f"{x['s'] / zl[0]['s']:.2f}"
        print(f"| {x['size']}^3 | {x['op']} | {x['store']} | {x['path']} | {x['s']:.3f} | "
              f"{x['req']} | {ratio_same} | {ratio_zarr} | {x['same']} |")
    if len(sizes) == 2:
        lo, hi = sizes
        print(f"\nGrowth {lo}^3 -> {hi}^3 (voxels x{(hi / lo) ** 3:.0f}): time, requests")
        for x in ROWS:
            if x["size"] != hi:
                continue
            small = [y for y in ROWS if y["size"] == lo and (y["op"], y["store"], y["path"])
                     == (x["op"], x["store"], x["path"])]
            if small:
                s = small[0]
                print(f"  {x['op']:<12} {x['store']:<7} {x['path']:<22} "
                      f"x{x['s'] / max(s['s'], 1e-9):.1f}  requests {s['req']} -> {x['req']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="64,128")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cell", type=int, default=16)
    p.add_argument("--only", default="")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-server-paths-"))
    REQ.install()
    warnings.simplefilter("default")
    try:
        for n in sizes:
            bench_size(n, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table(sizes)


if __name__ == "__main__":
    main()
