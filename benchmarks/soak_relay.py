"""A bounded soak of one relay: N clients of mixed reads and writes for M minutes, then every
acknowledged write checked through the relay and in the backing store; or, with ``--kill``, a
kill -9 of the relay in the middle of a write stream, a restart, and the same check.

    python benchmarks/soak_relay.py [--clients 32] [--minutes 10] [--memory "64 MiB"]
    python benchmarks/soak_relay.py --kill [--clients 8] [--kill-at 0.5]

Loopback only; it stops by itself.  The relay is ``voxgate serve`` in its own process, with a
temporary data root holding two zarr channels (uint8 64 x 1024 x 1024 and uint64 64 x 512 x 512,
16 x 64 x 64 chunks, all absent at the start = zeros) and a disk tier.  Client ``i`` owns the
z slabs [2i, 2i + 2) of both channels (so every client shares every cache cell with every
other) and knows exactly what they hold; each operation is a bossDB cutout over HTTP (blosc):
a write of a random box of its slab with fresh values, or a read of a random box compared
voxel by voxel with what it last wrote there (a mismatch is a *stale read*).  At the end every
slab is read back whole through the relay and from the store directly (a mismatch is a *lost
write*).  Printed: operations, errors, timeouts, stale reads, lost writes, p50/p99 latency,
and the relay's RSS at start, peak and end (sampled every second, a timeline every minute).

``--kill``: clients write boxes of whole storage chunks, each box once, with values only that
write uses; once ``--kill-at`` of them are acknowledged the relay gets SIGKILL with writes in
flight (every client streams without pause), is
restarted on the same data and disk tier, and every acknowledged write must be there in full,
every unacknowledged one chunk by chunk either wholly there or wholly absent (writes are
atomic per chunk), through the relay and in the store.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import blosc
import httpx
import numpy as np

import voxgate
from voxgate.geometry import Box

TOKEN = "soak-token"
CHANNELS = {  # name: (dtype, shape)
    "img": (np.dtype(np.uint8), (64, 1024, 1024)),
    "seg": (np.dtype(np.uint64), (64, 512, 512)),
}
CHUNKS = (16, 64, 64)
SLAB = 2  # z planes per client


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the relay --------------------------------------------------------------------------------
@dataclass
class Relay:
    root: Path
    memory: str
    env: dict[str, str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cfg = self.root / "relay.toml"
        cfg.write_text(f"""
[server]
host = "127.0.0.1"
upstream_timeout = 60
state_path = "{self.root / 'state.json'}"
[cache]
memory_bytes = "{self.memory}"
disk_path = "{self.root / 'cache'}"
disk_bytes = "1 GiB"
[auth]
tokens = {{ "{TOKEN}" = "read-write" }}
""")
        exe = Path(sys.executable).with_name("voxgate")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "voxgate.cli"]
        self.port = free_port()
        log = self.root / f"relay.{self.port}.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [*cmd, "serve", str(cfg), "--port", str(self.port), "--data-root",
                 str(self.root / "data")], stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **self.env})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited: {log.read_text()}")
            try:
                if httpx.get(self.url + "/ping/", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the relay did not start in 2 minutes")

    def rss(self) -> float:
        """The relay's resident set, MiB."""
        assert self.proc is not None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_store(root: Path) -> None:
    for name, (dtype, shape) in CHANNELS.items():
        voxgate.create(f"zarr://{root}/data/soak/em/{name}.zarr", shape=shape, chunks=CHUNKS,
                       dtype=dtype, voxel_size=(40, 8, 8),
                       kind="segmentation" if dtype == np.uint64 else "image")


# -- the wire ---------------------------------------------------------------------------------
def _path(name: str, box: Box) -> str:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return f"/v1/cutout/soak/em/{name}/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"


def get(http: httpx.Client, name: str, box: Box) -> np.ndarray:
    res = http.get(_path(name, box))
    if res.status_code != 200:
        raise RuntimeError(f"GET {res.status_code}: {res.text[:200]}")
    return np.frombuffer(blosc.decompress(res.content), CHANNELS[name][0]).reshape(
        tuple(box.shape))


def post(http: httpx.Client, name: str, box: Box, arr: np.ndarray) -> None:
    res = http.post(_path(name, box), content=blosc.compress(
        np.ascontiguousarray(arr).tobytes(), typesize=arr.dtype.itemsize),
        headers={"Content-Type": "application/blosc"})
    if res.status_code != 201:
        raise RuntimeError(f"POST {res.status_code}: {res.text[:200]}")


def client(relay: Relay, timeout: float = 120.0) -> httpx.Client:
    return httpx.Client(base_url=relay.url, headers={"Authorization": f"Token {TOKEN}"},
                        timeout=timeout)


@dataclass
class Tally:
    ops: int = 0
    reads: int = 0
    writes: int = 0
    errors: int = 0
    timeouts: int = 0
    stale_reads: int = 0
    stale_voxels: int = 0
    latencies: list[float] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **kw: float) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


class RssMonitor(threading.Thread):
    def __init__(self, relay: Relay) -> None:
        super().__init__(daemon=True)
        self.relay = relay
        self.start_mib = relay.rss()
        self.peak = self.start_mib
        self.last = self.start_mib
        self.timeline: list[tuple[float, float]] = []
        self.stop_event = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        next_mark = 60.0
        while not self.stop_event.wait(1.0):
            self.last = self.relay.rss()
            self.peak = max(self.peak, self.last)
            t = time.monotonic() - self.t0
            if t >= next_mark:
                self.timeline.append((t, self.last))
                next_mark += 60.0


# -- the soak ---------------------------------------------------------------------------------
def random_box(rng: random.Random, slab: Box, max_yx: int) -> Box:
    z0 = rng.randrange(slab.start[0], slab.stop[0])
    z1 = rng.randrange(z0 + 1, slab.stop[0] + 1)
    h = rng.randrange(1, max_yx + 1)
    w = rng.randrange(1, max_yx + 1)
    y0 = rng.randrange(0, slab.stop[1] - h + 1)
    x0 = rng.randrange(0, slab.stop[2] - w + 1)
    return Box((z0, y0, x0), (z1, y0 + h, x0 + w))


def soak(args: argparse.Namespace, root: Path) -> int:
    relay = Relay(root, args.memory, dict(e.split("=", 1) for e in args.relay_env))
    make_store(root)
    relay.start()
    # every client's slabs, as it knows them (all zeros at the start)
    models = [{name: np.zeros((SLAB, *shape[1:]), dtype) for name, (dtype, shape)
               in CHANNELS.items()} for _ in range(args.clients)]
    if args.clients * SLAB > min(s[0] for _, s in CHANNELS.values()):
        raise SystemExit(f"at most {64 // SLAB} clients (one {SLAB}-plane slab each)")
    tally = Tally()
    monitor = RssMonitor(relay)
    monitor.start()
    stop_at = time.monotonic() + 60 * args.minutes
    barrier = threading.Barrier(args.clients)

    def run(i: int) -> None:
        rng = random.Random(args.seed * 1000 + i)
        nrng = np.random.default_rng(args.seed * 1000 + i)
        with client(relay, args.timeout) as http:
            barrier.wait()
            serial = 0
            while time.monotonic() < stop_at:
                name = rng.choice(list(CHANNELS))
                dtype, shape = CHANNELS[name]
                slab = Box((SLAB * i, 0, 0), (SLAB * i + SLAB, shape[1], shape[2]))
                box = random_box(rng, slab, args.max_yx)
                local = box.slices(slab.start)
                write = rng.random() < args.write_fraction
                t0 = time.perf_counter()
                try:
                    if write:
                        serial += 1
                        hi = 250 if dtype == np.uint8 else 2**62
                        lo = 1 if dtype == np.uint8 else 2**53  # ids above float precision
                        arr = nrng.integers(lo, hi, tuple(box.shape), dtype=dtype)
                        post(http, name, box, arr)
                        models[i][name][local] = arr  # acknowledged
                        tally.add(writes=1)
                    else:
                        got = get(http, name, box)
                        bad = int(np.count_nonzero(got != models[i][name][local]))
                        tally.add(reads=1)
                        if bad:
                            tally.add(stale_reads=1, stale_voxels=bad)
                except httpx.TimeoutException:
                    tally.add(timeouts=1, errors=1)
                    if write:  # its outcome is unknown: learn it (this slab is only ours)
                        models[i][name] = get(http, name, slab)
                    continue
                except Exception as exc:  # counted, and the first few shown
                    tally.add(errors=1)
                    if tally.errors <= 5:
                        print(f"client {i}: {type(exc).__name__}: {exc}", flush=True)
                    if write:
                        models[i][name] = get(http, name, slab)
                    continue
                dt = time.perf_counter() - t0
                with tally.lock:
                    tally.ops += 1
                    tally.latencies.append(dt)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(args.clients)]
    t_start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t_start
    # every slab, whole, through the relay and in the store
    lost_relay = lost_store = 0
    with client(relay) as http:
        for i in range(args.clients):
            for name, (_, shape) in CHANNELS.items():
                slab = Box((SLAB * i, 0, 0), (SLAB * i + SLAB, shape[1], shape[2]))
                lost_relay += int(np.count_nonzero(get(http, name, slab) != models[i][name]))
                store = voxgate.open(f"zarr://{root}/data/soak/em/{name}.zarr")
                lost_store += int(np.count_nonzero(store[slab.slices()].read()
                                                   != models[i][name]))
    monitor.stop_event.set()
    monitor.join()
    with client(relay) as http:
        metrics = http.get("/metrics").json()
    end_rss = relay.rss()
    relay.stop()
    print(f"clients {args.clients}, {elapsed / 60:.1f} min, memory_bytes {args.memory}, "
          f"relay env {args.relay_env or '-'}")
    print(f"operations {tally.ops} ({tally.reads} reads, {tally.writes} writes, "
          f"{tally.ops / elapsed:.1f}/s)")
    print(f"errors {tally.errors}, timeouts {tally.timeouts}")
    print(f"stale reads {tally.stale_reads} ({tally.stale_voxels} voxels)")
    print(f"lost writes: {lost_relay} voxels through the relay, {lost_store} in the store")
    print(f"latency p50 {1000 * pct(tally.latencies, 0.5):.1f} ms, "
          f"p99 {1000 * pct(tally.latencies, 0.99):.1f} ms")
    print(f"relay RSS MiB: start {monitor.start_mib:.0f}, peak {monitor.peak:.0f}, "
          f"end {end_rss:.0f}")
    print("RSS by minute: " + ", ".join(f"{t / 60:.0f}:{m:.0f}" for t, m in monitor.timeline))
    cache = metrics.get("cache", {})
    print(f"cache: memory {metrics.get('memory_bytes_used', 0) / 2**20:.1f} MiB in "
          f"{metrics.get('memory_entries')} cells, hit ratio {cache.get('hit_ratio')}, "
          f"upstream fetches {cache.get('upstream_fetches')}, coalesced {cache.get('coalesced')}")
    ok = not (tally.errors or tally.stale_reads or lost_relay or lost_store)
    print("RESULT", "PASS" if ok else "FAIL")
    return 0 if ok else 1


# -- kill -9 ----------------------------------------------------------------------------------
def kill_run(args: argparse.Namespace, root: Path) -> int:
    relay = Relay(root, args.memory, dict(e.split("=", 1) for e in args.relay_env))
    make_store(root)
    relay.start()
    name = "seg"
    dtype, shape = CHANNELS[name]
    # the volume's rows of chunks (z band, y band) are dealt out to the clients; each row is
    # written as boxes of 1-4 whole chunks, each box once
    acked: list[tuple[Box, int]] = []
    unacked: list[tuple[Box, int]] = []
    lock = threading.Lock()
    killed = threading.Event()
    started = threading.Barrier(args.clients + 1)

    rows = [(z, y) for z in range(0, shape[0], CHUNKS[0]) for y in range(0, shape[1], CHUNKS[1])]

    def boxes(i: int) -> list[Box]:
        out = []
        rng = random.Random(i)
        for z0, y0 in rows[i::args.clients]:
            x = 0
            while x < shape[2]:
                n = min(rng.randint(1, 4), (shape[2] - x) // CHUNKS[2])
                out.append(Box((z0, y0, x), (z0 + CHUNKS[0], y0 + CHUNKS[1],
                                             x + n * CHUNKS[2])))
                x += n * CHUNKS[2]
        return out

    planned = sum(len(boxes(i)) for i in range(args.clients))

    def run(i: int) -> None:
        todo = boxes(i)
        with client(relay, 60) as http:
            started.wait()
            for k, box in enumerate(todo):
                value = 2**53 + i * 10_000 + k + 1
                try:
                    post(http, name, box, np.full(tuple(box.shape), value, dtype))
                except Exception:
                    with lock:
                        unacked.append((box, value))
                    return
                with lock:
                    acked.append((box, value))
                if killed.is_set():
                    return

    if args.clients > len(rows):
        raise SystemExit(f"at most {len(rows)} clients for the kill run")
    threads = [threading.Thread(target=run, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    started.wait()
    # the stream runs until that share of the planned writes is acknowledged: then every
    # client has a write in flight
    while len(acked) < args.kill_at * planned and any(t.is_alive() for t in threads):
        time.sleep(0.005)
    relay.stop(signal.SIGKILL)
    killed.set()
    for t in threads:
        t.join()
    relay.start()  # same data root, state and disk tier
    missing = 0
    chunks = {"relay": [0, 0, 0], "store": [0, 0, 0]}  # wholly present, wholly absent, torn
    store = voxgate.open(f"zarr://{root}/data/soak/em/{name}.zarr")
    with client(relay) as http:
        for box, value in acked:
            for got in (get(http, name, box), store[box.slices()].read()):
                missing += int(np.count_nonzero(got != value))
        for box, value in unacked:
            for where, got in (("relay", get(http, name, box)),
                               ("store", store[box.slices()].read())):
                for x in range(box.start[2], box.stop[2], CHUNKS[2]):
                    part = got[..., x - box.start[2]: x - box.start[2] + CHUNKS[2]]
                    kind = 0 if (part == value).all() else 1 if not part.any() else 2
                    chunks[where][kind] += 1
    relay.stop()
    print(f"kill -9 after {args.kill_at:.0%} of {planned} planned writes by {args.clients} "
          f"writers (each of 1-4 whole 16x64x64 uint64 chunks)")
    print(f"acknowledged writes {len(acked)}: {missing} voxels missing (relay + store)")
    print(f"unacknowledged writes {len(unacked)}, {sum(chunks['store'])} chunks: "
          + "; ".join(f"{where}: wholly present {p}, wholly absent {a}, torn {t}"
                      for where, (p, a, t) in chunks.items()))
    torn = chunks["relay"][2] + chunks["store"][2]
    ok = missing == 0 and torn == 0 and len(acked) > 0 and len(unacked) > 0
    if not unacked:
        print("(no write was in flight at the kill: run again with more clients)")
    print("RESULT", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=None)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--memory", default="64 MiB", help="the relay's memory_bytes")
    ap.add_argument("--write-fraction", type=float, default=0.4)
    ap.add_argument("--max-yx", type=int, default=256, help="largest box edge in y and x")
    ap.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--relay-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for the relay process (for measurements)")
    ap.add_argument("--kill", action="store_true", help="the kill -9 run instead of the soak")
    ap.add_argument("--kill-at", type=float, default=0.5,
                    help="kill when this share of the planned writes is acknowledged")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    args = ap.parse_args()
    if args.clients is None:
        args.clients = 8 if args.kill else 32
    with tempfile.TemporaryDirectory(prefix="voxgate-soak-", dir=args.workdir) as tmp:
        return (kill_run if args.kill else soak)(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
