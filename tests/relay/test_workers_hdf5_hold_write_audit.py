"""``voxgate serve --workers 2`` with a writable HDF5 channel configured ``hold_write = true``
(or ``hold_open = true``) is refused at startup, naming the channel and what to do instead
(docs/relay.md, "HDF5 upstreams").

The relay used to start and fail for its whole run.  ``hold_write = true``: the worker that
opened the channel first held the file open read-write, and HDF5 refused the file to the
other worker, so every request that worker answered for the channel -- reads and writes --
was 503 "locked by another process (held by process PID)" with ``Retry-After: 5``, which no
retry cured (the holder never lets go).  ``hold_open = true``: each worker kept the file open
read-only, so once both had read the channel every write was 503 "locked".  Neither can work
with several processes (HDF5: one writer, or readers only), and the relay's own default for
several workers (``hold_open=False``: the workers take turns on the file) already serves such
a channel correctly, so the option is refused rather than quietly replaced.
"""

from __future__ import annotations

import sys
from pathlib import Path

import blosc
import httpx
import numpy as np
import pytest

from voxgate.errors import InvalidRequestError
from voxgate.relay.config import ChannelConfig, RelayConfig, load_config

from .conftest import RW, free_port, hdf5_volume, serve_refused, start_relay

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="several HDF5 workers take fcntl locks on Linux only")

SHAPE = (8, 64, 64)
HEADERS = {"Authorization": f"Token {RW}"}


def _config(d: Path, options: str, *, workers: int | None, writable: bool = True) -> Path:
    cfg = d / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
{f'workers = {workers}' if workers is not None else ''}
state_path = "{d / 'state.json'}"
[cache]
memory_bytes = "16 MiB"
[auth]
public_read = false
tokens = {{ "{RW}" = "read-write" }}
[[channel]]
name = "c/e/held"
upstream = "hdf5://{d / 'v.h5'}#/vol"
writable = {str(writable).lower()}
options = {{ {options} }}
""")
    return cfg


def _refused(cmd: list[str], cwd: Path, port: int) -> str:
    """Run a relay that should refuse to start: its output once it has ended."""
    res = serve_refused(cmd, cwd, port)
    return res.stdout + res.stderr


def _cli(cfg: Path, port: int, *extra: str) -> list[str]:
    exe = Path(sys.executable).with_name("voxgate")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "voxgate.cli"]
    return [*cmd, "serve", str(cfg), "--port", str(port), *extra]


def test_hold_write_with_two_workers_is_refused_at_startup(tmp_path: Path) -> None:
    hdf5_volume(tmp_path / "v.h5")
    cfg = _config(tmp_path, "hold_write = true", workers=None)
    port = free_port()
    out = _refused(_cli(cfg, port, "--workers", "2"), tmp_path, port)
    assert "channel c/e/held" in out, out
    assert "hold_write = true keeps the file open for writing" in out, out
    assert "with workers = 2 leave the option out" in out, out
    assert "workers = 1" in out and "writable = false" in out, out
    assert "listening on" not in out, out  # (refused before it says it serves)


def test_hold_open_with_two_workers_is_refused_at_startup(tmp_path: Path) -> None:
    hdf5_volume(tmp_path / "v.h5")
    cfg = _config(tmp_path, "hold_open = true", workers=2)
    port = free_port()
    out = _refused(_cli(cfg, port), tmp_path, port)
    assert "channel c/e/held" in out, out
    assert "hold_open = true keeps the file open in every worker process" in out, out
    assert "listening on" not in out, out


def test_load_config_refuses_the_combination_however_workers_is_given(tmp_path: Path) -> None:
    hdf5_volume(tmp_path / "v.h5")
    for options, workers, override in (("hold_write = true", 2, None),
                                       ("hold_write = true", None, 2),
                                       ("hold_write = true", None, "2"),
                                       ("hold_open = true", 3, None)):
        cfg = _config(tmp_path, options, workers=workers)
        with pytest.raises(InvalidRequestError, match="channel c/e/held: options hold_"):
            load_config(cfg, workers=override)
    # what stays allowed: one worker, a read-only channel, the options false, other stores
    assert load_config(_config(tmp_path, "hold_write = true", workers=1)).workers == 1
    assert load_config(_config(tmp_path, "hold_write = true", workers=2, writable=False))
    assert load_config(_config(tmp_path, "hold_open = true", workers=2, writable=False))
    assert load_config(_config(tmp_path, "hold_write = false", workers=2))
    assert load_config(_config(tmp_path, "hold_open = false", workers=2))


def test_a_relay_config_made_in_code_is_refused_by_serve(tmp_path: Path) -> None:
    """``voxgate.relay.serve(RelayConfig(...))`` (no TOML file) refuses it before it binds."""
    hdf5_volume(tmp_path / "v.h5")
    port = free_port()
    code = (
        "from voxgate.relay import serve\n"
        "from voxgate.relay.config import ChannelConfig, RelayConfig\n"
        f"cfg = RelayConfig(port={port}, workers=2, state_path={str(tmp_path / 's.json')!r},\n"
        f"    channels=[ChannelConfig('c', 'e', 'held', {'hdf5://' + str(tmp_path / 'v.h5')!r}"
        " + '#/vol',\n"
        "                            options={'hold_write': True})])\n"
        "serve(cfg)\n")
    out = _refused([sys.executable, "-c", code], tmp_path, port)
    assert "InvalidRequestError" in out and "channel c/e/held" in out, out
    # (the same object, checked in this process: nothing is started)
    cfg = RelayConfig(workers=2, channels=[ChannelConfig(
        "c", "e", "held", f"hdf5://{tmp_path / 'v.h5'}#/vol", {"hold_write": True})])
    from voxgate.relay.workers import run_workers
    with pytest.raises(InvalidRequestError, match="hold_write = true"):
        run_workers(cfg)


def test_hold_write_with_one_worker_still_serves_writes_and_reads(tmp_path: Path) -> None:
    """Guard: the refusal is for several workers only; one worker holding the file writes
    and reads it back."""
    data = hdf5_volume(tmp_path / "v.h5")
    r = start_relay(_config(tmp_path, "hold_write = true", workers=1), free_port())
    try:
        patch = np.full((2, 8, 8), 7, np.uint8)
        with httpx.Client(base_url=r.url, headers=HEADERS, timeout=60) as http:
            res = http.post("/v1/cutout/c/e/held/0/0:8/0:8/0:2/",
                            content=blosc.compress(patch.tobytes(), typesize=1),
                            headers={"Content-Type": "application/blosc"})
            assert res.status_code == 201, res.text
            data[0:2, 0:8, 0:8] = 7
            res = http.get("/v1/cutout/c/e/held/0/0:64/0:64/0:8/",
                           headers={"Accept": "application/blosc"})
            assert res.status_code == 200, res.text
            got = np.frombuffer(blosc.decompress(res.content), np.uint8).reshape(SHAPE)
            np.testing.assert_array_equal(got, data)
    finally:
        r.stop()


def test_hold_write_on_a_read_only_channel_with_two_workers_serves_both(tmp_path: Path) -> None:
    """Guard: a channel that is not writable opens its file read-only whatever hold_write
    says, so both workers read it."""
    data = hdf5_volume(tmp_path / "v.h5")
    r = start_relay(_config(tmp_path, "hold_write = true", workers=2, writable=False),
                    free_port())
    try:
        seen: set[str] = set()
        for _ in range(400):
            with httpx.Client(base_url=r.url, headers=HEADERS, timeout=60) as http:
                res = http.get("/v1/cutout/c/e/held/0/0:64/0:64/0:8/",
                               headers={"Accept": "application/blosc"})
            assert res.status_code == 200, res.text
            got = np.frombuffer(blosc.decompress(res.content), np.uint8).reshape(SHAPE)
            np.testing.assert_array_equal(got, data)
            seen.add(res.headers["x-voxgate-worker"])
            if len(seen) == 2:
                break
        assert len(seen) == 2, seen
    finally:
        r.stop()
