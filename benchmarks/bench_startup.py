"""A new process's first read, and a relay's start, against tensorstore and CloudVolume.

    python benchmarks/bench_startup.py [--repeats 7]

Every CLI call, relay worker, Dask worker and notebook kernel pays its imports once.  This
times, in fresh processes and interleaved (each command once per round, in a new random order),
the wall time of:

- ``import voxgate`` alone, and ``voxgate.open`` plus one 64^3 read of a local zarr v3 array;
- the same read with tensorstore and with CloudVolume (of a precomputed copy), each in a fresh
  process: the floor every library sharing these imports pays;
- ``import ml_dtypes`` (tensorstore imports it: ml_dtypes 0.7.0 took 1.1 s to import beside
  numpy 2.4, 0.6.0 7 ms, which is why pyproject.toml excludes 0.7.0);
- ``voxgate serve`` from its start until it answers ``/ping/``.

It prints medians and the installed versions of numpy, ml_dtypes and tensorstore.
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

import voxgate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def _relay(config: Path) -> float:
    port = _free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "voxgate", "serve", str(config), "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the relay exited before it answered")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping/", timeout=1).status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = np.random.default_rng(0).integers(0, 255, (128, 128, 128), dtype=np.uint8)
        zarr_url = f"zarr://{root}/em.zarr"
        voxgate.create(zarr_url, shape=data.shape, dtype="uint8", chunks=(64, 64, 64),
                       voxel_size=(8, 8, 8))[...] = data
        pre_url = f"precomputed://file://{root}/em"
        voxgate.copy(zarr_url, pre_url, progress=False)
        config = root / "relay.toml"
        config.write_text(f'[server]\nhost = "127.0.0.1"\n[[channel]]\nname = "lab/em/raw"\n'
                          f'upstream = "{zarr_url}"\n')
        commands = {
            "import voxgate": "import voxgate",
            "voxgate open + 64^3 read": (f"import voxgate; voxgate.open({zarr_url!r})"
                                         "[:64, :64, :64].read()"),
            "tensorstore open + 64^3 read": (
                "import tensorstore as ts; ts.open({'driver': 'zarr3', 'kvstore': "
                f"'file://{root}/em.zarr/0/'}}).result()[:64, :64, :64].read().result()"),
            "CloudVolume open + 64^3 read": (
                f"from cloudvolume import CloudVolume; CloudVolume('file://{root}/em', "
                "progress=False)[:64, :64, :64]"),
            "import ml_dtypes (after numpy)": "import numpy, ml_dtypes",
        }
        times: dict[str, list[float]] = {name: [] for name in [*commands, "voxgate serve"]}
        for _ in range(args.repeats):
            order = list(times)
            random.shuffle(order)
            for name in order:
                times[name].append(_relay(config) if name == "voxgate serve"
                                   else _run(commands[name]))
    from importlib.metadata import version

    print(f"numpy {version('numpy')}, ml_dtypes {version('ml_dtypes')}, tensorstore "
          f"{version('tensorstore')}; median of {args.repeats} fresh processes")
    for name, values in times.items():
        print(f"{name:34s} {statistics.median(values) * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
