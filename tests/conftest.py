from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from voxgate.remotes.memory import MemoryRemote

from .ports import free_port, release_ports


@pytest.fixture(scope="session", autouse=True)
def _process_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """VOXGATE_STATE_DIR of this process between tests: module- and session-scoped fixtures
    are set up before _isolated_state, so without it what they run (and the relays, DVID
    servers and dask workers they start, which inherit the environment) would keep copy,
    map_blocks and proofreading records in ~/.cache/voxgate or ~/.local/share/voxgate, the same
    folders for both xdist processes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOXGATE_STATE_DIR", str(tmp_path_factory.mktemp("process-state")))
        yield


@pytest.fixture(scope="session", autouse=True)
def _httpx_one_ssl_context() -> Iterator[None]:
    """``httpx.get`` / ``post`` / ... (the tests' one-off requests) with one SSL context for
    the session.  Each such call builds a client, and each client an SSL context, loading the
    CA bundle again (~40 ms a call: 400 one-voxel cutouts from a relay took 19 s, most of it
    that).  The context is the one httpx builds for ``verify=True`` (from SSL_CERT_FILE /
    SSL_CERT_DIR when set, certifi's bundle otherwise), built once for each value of those;
    calls giving ``verify`` or ``trust_env`` themselves are as they were.  (httpx.Client and
    the code under test are untouched.)"""
    import functools
    import ssl

    import httpx

    contexts: dict[tuple[str | None, str | None], ssl.SSLContext] = {}

    def shared(call: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(call)
        def with_context(*args: Any, **kwargs: Any) -> Any:
            if "verify" not in kwargs and "trust_env" not in kwargs:
                key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
                if key not in contexts:
                    contexts[key] = httpx.create_ssl_context()
                kwargs["verify"] = contexts[key]
            return call(*args, **kwargs)

        return with_context

    with pytest.MonkeyPatch.context() as mp:
        for name in ("request", "stream", "get", "options", "head", "post", "put", "patch",
                     "delete"):
            mp.setattr(httpx, name, shared(getattr(httpx, name)))
        yield


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Copy journals go to a temporary folder, and mem:// volumes do not leak between tests,
    nor does the retry policy a relay started in this process sets for every store opened
    after it (a later test of an unreachable server would see the relay's retries)."""
    from voxgate.storage import kvstore

    retries = kvstore._retries
    state = tmp_path_factory.mktemp("state")
    old = os.environ.get("VOXGATE_STATE_DIR")
    os.environ["VOXGATE_STATE_DIR"] = str(state)
    yield
    MemoryRemote.clear()
    if kvstore._retries != retries:
        with kvstore._context_lock:
            kvstore._retries = retries
            kvstore._context = None
    if old is None:
        os.environ.pop("VOXGATE_STATE_DIR", None)
    else:
        os.environ["VOXGATE_STATE_DIR"] = old


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session", autouse=True)
def _slow_worker_restarts_are_not_lost() -> Iterator[None]:
    """A LocalCluster closes the nanny of a worker that died and has not registered again
    within dask's ``distributed.deploy.lost-worker-timeout`` (15 s): on a loaded 2-core CI
    machine a killed worker's restart (importing voxgate, onnxruntime, ...) took longer, and
    the cluster kept 1 worker for good (its log: the worker registered again, then "Nanny
    asking worker to close. Reason: nanny-close").  The tests that kill workers want them back."""
    import dask

    with dask.config.set({"distributed.deploy.lost-worker-timeout": "600s"}):
        yield


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A dask.distributed Client of a LocalCluster of 2 worker processes on 127.0.0.1, one per
    test module (a module that wants another cluster defines its own ``cluster``)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as c, Client(c) as client:
        yield client


_free_port = free_port  # (the name tests import from here)


@pytest.fixture(scope="module", autouse=True)
def _ports_held_per_module() -> Iterator[None]:
    """The ports free_port handed out in a module are held until its end (tests/ports.py),
    after its module-scoped servers stopped (an autouse fixture is set up before them)."""
    yield
    release_ports()


@pytest.fixture(scope="session", autouse=True)
def _dvid_test_servers_take_held_ports() -> Iterator[None]:
    """voxgate.testing.dvid's start_server picks a port (when given none) by binding port 0 and
    closing the socket before its server process binds it: the other xdist process could take
    it meanwhile.  Here it takes a held one (tests/ports.py)."""
    from voxgate.testing.dvid import server

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(server, "_free_port", free_port)
        yield


def start_moto(env: dict[str, str] | None = None) -> tuple[Any, str]:
    """A moto S3 server (offline) started on 127.0.0.1 with ``env`` added to its environment;
    returns (its process, its endpoint URL) once it answers."""
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("moto_server did not start")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """An S3 API server (moto, offline) on 127.0.0.1; yields its endpoint URL."""
    proc, url = start_moto()
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the local S3 server, with the environment pointing voxgate at it."""
    import uuid

    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1", "VOXGATE_S3_ENDPOINT": s3_server}.items():
        monkeypatch.setenv(key, value)
    name = f"vg-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def put_s3_keys(s3_bucket: str, s3_server: str) -> Callable[[Iterable[str], bytes], None]:
    """``put_s3_keys(keys, body)`` stores ``body`` under each of ``keys`` in ``s3_bucket``."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")

    def put(keys: Iterable[str], body: bytes) -> None:
        for key in keys:
            s3.put_object(Bucket=s3_bucket, Key=key, Body=body)

    return put


@pytest.fixture
def cloudvolume(s3_bucket: str, s3_server: str,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """CloudVolume reaching the S3 server: ``cloudvolume(path)`` opens s3://bucket/path."""
    import cloudfiles.paths
    from cloudvolume import CloudVolume

    monkeypatch.setenv("AWS_SESSION_TOKEN", "")  # CloudFiles reads it with the key pair
    cloudfiles.paths.add_alias("vgmoto", f"s3://{s3_server}/")

    def open_(path: str, **kw: Any) -> Any:
        return CloudVolume(f"vgmoto://{s3_bucket}/{path}", progress=False, **kw)

    yield open_
    cloudfiles.paths.remove_alias("vgmoto")


@pytest.fixture
def python_ctrl_c() -> Iterator[None]:
    """Python's own Ctrl-C handler, whatever an earlier test or library left installed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
