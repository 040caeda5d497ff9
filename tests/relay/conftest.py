"""Relay fixtures: real ``voxgate serve`` processes on 127.0.0.1 over upstream volumes on disk."""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import voxgate
from voxgate.synthetic import synthetic_em

from ..ports import free_port  # (held until the module ends: tests/ports.py)

ROOT = Path(__file__).resolve().parents[2]

RW, RO = "s3cret-rw", "s3cret-ro"


@dataclass
class RelayProcess:
    url: str
    port: int
    config: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int | None = None) -> None:
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self, token: str | None = RW) -> httpx.Client:
        headers = {"Authorization": f"Token {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def until_both_workers(ask: Callable[[], str]) -> set[str]:
    """``ask()`` (which checks its answer and returns the worker that gave it) until both
    workers of a two-worker relay answered: the kernel gives a connection to whichever worker
    accepts first, so on a loaded machine one may miss a handful in a row."""
    seen: set[str] = set()
    for _ in range(400):
        seen.add(ask())
        if len(seen) == 2:
            return seen
    raise AssertionError(f"only worker(s) {sorted(seen)} answered 400 requests")


def tls() -> ssl.SSLContext:
    """The SSL context httpx builds for ``verify=True``, built once: give it as ``verify=`` to
    a client made for one request (each client building its own loads the CA bundle again,
    ~40 ms)."""
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    if key not in _TLS:
        _TLS[key] = httpx.create_ssl_context()
    return _TLS[key]


_TLS: dict[tuple[str | None, str | None], ssl.SSLContext] = {}


def rw_request(r: RelayProcess, path: str, **kw: Any) -> httpx.Response:
    """A request with the RW token on a connection of its own (so either worker of a
    several-worker relay may answer it); ``headers`` are added to the token's."""
    headers = {"Authorization": f"Token {RW}", **kw.pop("headers", {})}
    with httpx.Client(base_url=r.url, headers=headers, timeout=60, verify=tls()) as http:
        return http.request(kw.pop("method", "GET"), path, **kw)


def answered_ok(res: httpx.Response) -> httpx.Response:
    assert res.status_code in (200, 201, 204), res.text
    return res


def shared_state_config(d: Path, state: Path, channels: dict[str, str] | None = None,
                        workers: int = 2) -> Path:
    """``d/relay.toml``: ``workers`` worker processes sharing the state file ``state`` and a
    disk tier under ``d``, the RW token only, and ``channels`` ({name: upstream URL})."""
    text = f"""
[server]
workers = {workers}
state_path = "{state}"
[cache]
memory_bytes = "16 MiB"
disk_path = "{d / 'cache'}"
disk_bytes = "64 MiB"
[auth]
public_read = false
tokens = {{ "{RW}" = "read-write" }}
"""
    for name, url in (channels or {}).items():
        text += f'[[channel]]\nname = "{name}"\nupstream = "{url}"\n'
    cfg = d / "relay.toml"
    cfg.write_text(text)
    return cfg


def start_relay(config: Path, port: int, *extra: str, cwd: Path | None = None) -> RelayProcess:
    exe = Path(sys.executable).with_name("voxgate")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "voxgate.cli"]
    log = config.with_suffix(f".{port}.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([*cmd, "serve", str(config), "--port", str(port), *extra],
                                stdout=out, stderr=subprocess.STDOUT, cwd=cwd or config.parent,
                                env=os.environ.copy())
    return wait_for_relay(proc, port, config, log)


def serve_in_thread(app: Any, port: int) -> tuple[Any, threading.Thread]:
    """Serve the ASGI ``app`` with uvicorn on 127.0.0.1:``port`` on a daemon thread of this
    process (no lifespan, no access log): the uvicorn Server and its thread, once it has
    started (stop it with ``server.should_exit = True`` and ``thread.join``)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
        lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-process relay did not start")
        time.sleep(0.02)
    return server, thread


def serve_refused(cmd: list[str], cwd: Path, port: int) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``, a relay that should refuse to start, in ``cwd``: once it has ended, its exit
    status, stdout and stderr (each kept in a file in ``cwd``).  Fails at once if it answers
    /ping/ on ``port`` instead (it started), or if it neither answers nor ends in 120 s; its
    exit status must not be 0."""
    out_log, err_log = cwd / f"refused.{port}.out", cwd / f"refused.{port}.err"

    def said() -> str:
        return (out_log.read_text(errors="replace") + "\n"
                + err_log.read_text(errors="replace"))

    with open(out_log, "wb") as out, open(err_log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/ping/", timeout=2)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            raise AssertionError("the relay started: " + said())
        assert proc.poll() is not None, "the relay neither started nor ended"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode != 0, said()
    return subprocess.CompletedProcess(cmd, proc.returncode, out_log.read_text(errors="replace"),
                                       err_log.read_text(errors="replace"))


def start_token_relay(directory: Path, memory: str) -> RelayProcess:
    """A real relay with no channel configured (its projects are made through the bossDB
    dialect, their data under ``directory/data``), answering the RW and RO tokens only."""
    cfg = directory / "relay.toml"
    cfg.write_text(f"""
[server]
state_path = "{directory / 'state.json'}"
[cache]
memory_bytes = "{memory}"
[auth]
public_read = false
tokens = {{ "{RW}" = "read-write", "{RO}" = "read" }}
""")
    return start_relay(cfg, free_port(), "--data-root", str(directory / "data"))


@contextlib.contextmanager
def token_relay_in_env(directory: Path, memory: str) -> Iterator[RelayProcess]:
    """:func:`start_token_relay`, with ``VOXGATE_BOSS_TOKEN`` set to RW while it runs (a
    Remote's spec() carries no token: workers and reopened Remotes find it there), stopped
    and the variable restored after."""
    r = start_token_relay(directory, memory)
    old = os.environ.get("VOXGATE_BOSS_TOKEN")
    os.environ["VOXGATE_BOSS_TOKEN"] = RW
    try:
        yield r
    finally:
        if old is None:
            os.environ.pop("VOXGATE_BOSS_TOKEN", None)
        else:
            os.environ["VOXGATE_BOSS_TOKEN"] = old
        r.stop()


def start_rw_relay(directory: Path) -> RelayProcess:
    """A real relay with no channel configured (projects made through the bossDB dialect, their
    data under ``directory/data``), the RW token read-write and the only one: with tokens
    configured ``public_read`` defaults to false, so a request without it is refused, reads
    included."""
    cfg = directory / "relay.toml"
    cfg.write_text(f'[server]\nstate_path = "{directory / "state.json"}"\n'
                   f'[auth]\ntokens = {{ "{RW}" = "read-write" }}\n')
    return start_relay(cfg, free_port(), "--data-root", str(directory / "data"))


def hdf5_volume(path: Path, shape: tuple[int, int, int] = (8, 64, 64)) -> np.ndarray:
    """An HDF5 file at ``path`` with a uint8 dataset ``/vol`` of random voxels, written by
    voxgate and closed; returns the voxels."""
    data = np.random.default_rng(3).integers(1, 250, shape, dtype=np.uint8)
    vol = voxgate.create(f"hdf5://{path}#/vol", shape=shape, chunks=(4, 32, 32), dtype="uint8",
                         voxel_size=(40, 8, 8))
    vol[...] = data
    vol.remote.close()
    return data


def start_two_worker_relay(directory: Path, channels: dict[str, str], *,
                           public_read: bool) -> RelayProcess:
    """A real relay with ``workers = 2`` serving ``channels`` (name -> upstream URL), the RW
    token read-write and the only one; its config and state under ``directory``."""
    cfg = directory / "relay.toml"
    listed = "".join(f'[[channel]]\nname = "{name}"\nupstream = "{upstream}"\n'
                     for name, upstream in channels.items())
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
workers = 2
state_path = "{directory / 'state.json'}"
[cache]
memory_bytes = "16 MiB"
[auth]
public_read = {str(public_read).lower()}
tokens = {{ "{RW}" = "read-write" }}
{listed}""")
    return start_relay(cfg, free_port())


def start_relay_with_scheme(config: Path, scheme: str, target: str) -> RelayProcess:
    """A real relay process with a test-only URL scheme registered (``target``: "module:Class",
    importable from the checkout's root) before the relay's own start-up."""
    code = ("import sys; from voxgate.registry import register; "
            f"register({scheme!r}, {target!r}); "
            "from voxgate.cli import main; sys.argv[0] = 'voxgate'; main()")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    log = config.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code, "serve", str(config), "--port",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=config.parent)
    return wait_for_relay(proc, port, config, log)


def _all_ready(log: Path) -> bool:
    """Whether a relay of several worker processes has every one serving (one answering
    /ping/ says only that one is: a worker killed while the others start stops the relay)."""
    text = log.read_text(errors="replace")
    return "worker processes" not in text or "workers ready" in text


def wait_for_relay(proc: subprocess.Popen[bytes], port: int, config: Path,
                   log: Path) -> RelayProcess:
    """Wait until a started relay answers /ping/ (or fail with its log)."""
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"relay exited: {log.read_text()}")
        try:
            if httpx.get(url + "/ping/", timeout=1).status_code == 200 and _all_ready(log):
                return RelayProcess(url, port, config, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"relay did not start: {log.read_text()}")


@dataclass
class Upstreams:
    root: Path
    image: np.ndarray        # uint8, 2 scales, precomputed
    image1: np.ndarray       # its scale 1
    labels: np.ndarray       # uint64, zarr
    image16: np.ndarray      # uint16, n5, offset frame


SHAPE = (40, 300, 260)  # z, y, x: not multiples of any chunk, so far edges are partial


def make_upstreams(root: Path) -> Upstreams:
    image, labels = synthetic_em(SHAPE, seed=5, cell=(8, 32, 32))
    labels = labels + np.uint64(2**53)  # ids above float precision: must survive every hop
    raw = voxgate.create(f"precomputed://file://{root}/raw", shape=SHAPE, chunks=(16, 64, 64),
                         dtype="uint8", voxel_size=(40, 8, 8), num_scales=2)
    raw[:] = image
    image1 = image[:, ::2, ::2].copy()
    raw.at_scale(1)[:] = image1
    seg = voxgate.create(f"zarr://{root}/seg.zarr", shape=SHAPE, chunks=(16, 64, 64),
                         dtype="uint64", voxel_size=(40, 8, 8), kind="segmentation")
    seg[:] = labels
    image16 = (image.astype(np.uint16) * 251)
    em16 = voxgate.create(f"n5://{root}/em16.n5", shape=SHAPE, chunks=(16, 64, 64),
                          dtype="uint16", voxel_size=(40, 8, 8))
    em16[:] = image16
    return Upstreams(root, image, image1, labels, image16)


def one_channel_config(directory: Path, upstream: str, name: str = "lab/em/seg") -> Path:
    """``directory/relay.toml``: one private channel on ``upstream``, the RW and RO tokens."""
    cfg = directory / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
state_path = "{directory / 'state.json'}"
[cache]
memory_bytes = "16 MiB"
[[channel]]
name = "{name}"
upstream = "{upstream}"
[auth]
public_read = false
tokens = {{ "{RW}" = "read-write", "{RO}" = "read" }}
""")
    return cfg


def write_config(path: Path, root: Path, *, extra: str = "", disk: bool = True,
                 auth: bool = True) -> Path:
    text = f"""
[server]
host = "127.0.0.1"
upstream_timeout = 5
state_path = "{path.parent / 'state.json'}"
[cache]
memory_bytes = "64 MiB"
{f'disk_path = "{path.parent / "cache"}"' if disk else ''}
disk_bytes = "1 GiB"
[[channel]]
name = "lab/em/raw"
upstream = "precomputed://file://{root}/raw"
[[channel]]
name = "lab/em/seg"
upstream = "zarr://{root}/seg.zarr"
[[channel]]
name = "lab/em/em16"
upstream = "n5://{root}/em16.n5"
{extra}
"""
    if auth:
        text += f"""
[auth]
public_read = false
tokens = {{ "{RW}" = "read-write", "{RO}" = "read" }}
"""
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Upstreams:
    return make_upstreams(tmp_path_factory.mktemp("upstreams"))


@pytest.fixture(scope="module")
def relay(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    d = tmp_path_factory.mktemp("relay")
    cfg = write_config(d / "relay.toml", upstreams.root)
    r = start_relay(cfg, free_port())
    yield r
    r.stop()


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    started: list[RelayProcess] = []

    def make(config: Path, *extra: str, port: int | None = None) -> RelayProcess:
        r = start_relay(config, port or free_port(), *extra)
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


@pytest.fixture
def own_relay(tmp_path: Path, relay_factory: Callable[..., RelayProcess]
              ) -> tuple[RelayProcess, Upstreams]:
    """A relay over upstreams of this test's own: writes to them touch nothing shared."""
    root = tmp_path / "upstreams"
    root.mkdir()
    ups = make_upstreams(root)
    return relay_factory(write_config(tmp_path / "relay.toml", ups.root)), ups


def relay_over_zarr(tmp_path: Path, labels: np.ndarray, chunks: tuple[int, int, int]
                    ) -> tuple[Any, Any]:
    """A Relay in this process serving ``labels`` (a uint64 segmentation written to a zarr
    array of ``chunks``) as channel c/e/seg, and the channel's CachedRemote: tests then put a
    counting or gated wrapper in front of its upstream."""
    from voxgate.relay.config import ChannelConfig, RelayConfig
    from voxgate.relay.state import Relay

    url = f"zarr://{tmp_path / 'seg.zarr'}"
    vol = voxgate.create(url, shape=labels.shape, chunks=chunks, dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation")
    vol[:] = labels
    cfg = RelayConfig()
    cfg.channels = [ChannelConfig("c", "e", "seg", url)]
    relay = Relay(cfg)
    return relay, relay.remote(relay.channel("c", "e", "seg"))


@pytest.fixture
def inproc() -> Iterator[Callable[[Any], Any]]:
    """Makes InProcessRelay's (tests/relay/test_consistency.py: a relay served on a thread of
    this process, so its upstream can be gated) and stops them after the test."""
    from .test_consistency import InProcessRelay

    started: list[InProcessRelay] = []

    def make(config: Any) -> InProcessRelay:
        r = InProcessRelay(config)
        started.append(r)
        return r

    yield make
    for r in reversed(started):
        r.stop()


@pytest.fixture(scope="module")
def dvid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A DVID test server (voxgate.testing.dvid) for a module's tests, its log in the
    module's temporary directory."""
    from voxgate.testing.dvid import start_server

    server = start_server(log=tmp_path_factory.mktemp("dvid") / "dvid.log")
    try:
        yield server
    finally:
        server.stop()
