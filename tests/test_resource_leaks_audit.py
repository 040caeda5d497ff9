"""Resource leaks on the client side: what a long-running script hits when it opens, reads,
writes and drops many volumes in a loop, or runs Services many times in one process.

Each test runs a warm-up (pools, caches and the engine's own threads reach their working
size), takes the process's open file descriptors, threads (the OS's count, native threads of
tensorstore and onnxruntime included) and the sizes of voxgate's module-level tables, runs the
loop many more times and asserts that none of them grew with the number of iterations: a
small fixed slack is allowed, far below one unit per iteration.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Sized
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
import voxgate.services  # registers the proofreading Service's write hooks, as a script does
from voxgate.testing.dvid import DVIDServerProcess, start_server

from .relay.conftest import RW, RelayProcess, start_token_relay
from .static_http import serve_directory

proofread_core = importlib.import_module("voxgate.services.proofread.core")
predict_module = importlib.import_module("voxgate.services.predict")
downsample_module = importlib.import_module("voxgate.services.downsample")
services_common = importlib.import_module("voxgate.services._common")

#: more than any fixed overhead, far less than one per iteration of the loops below
FD_SLACK = 4
THREAD_SLACK = 8
ROUNDS = 40

_IMG = (np.arange(16 * 32 * 32) % 251).astype(np.uint8).reshape(16, 32, 32)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _os_threads() -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("Threads:"))


def _tables() -> dict[str, int]:
    """Sizes of the module-level containers of every voxgate module loaded (the memo tables,
    caches and registries a leak would grow)."""
    out: dict[str, int] = {}
    for name, mod in list(sys.modules.items()):
        if not name.startswith("voxgate") or not isinstance(mod, types.ModuleType):
            continue
        for attr, value in list(vars(mod).items()):
            if isinstance(value, (str, bytes, type, types.ModuleType)) or \
                    not isinstance(value, Sized):
                continue
            try:
                out[f"{name}.{attr}"] = len(value)
            except TypeError:
                continue
    return out


def _voxgate_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate()
            if t is not threading.current_thread() and t.name.startswith("voxgate")}


def _state(quiet: float = 0.5, deadline: float = 5.0) -> tuple[int, int, int, dict[str, int]]:
    gc.collect()
    # the worker threads of a dropped Remote's pool are told to stop and end on their own: let
    # them, until none has ended for ``quiet`` seconds (at most ``deadline``).  Those of a pool
    # still alive (this test's, or one an earlier test in this process keeps) never end: they
    # are counted.  (Joining each with the deadline waited the whole 5 s whenever one was
    # alive, as in a process that ran other tests first: 30 s per loop checked.)
    end = time.monotonic() + deadline
    alive = _voxgate_threads()
    settled = time.monotonic() + quiet
    while alive and time.monotonic() < min(end, settled):
        time.sleep(0.02)
        now = _voxgate_threads()
        if now != alive:
            alive, settled = now, time.monotonic() + quiet
    return _fds(), _os_threads(), threading.active_count(), _tables()


def _check_flat(step: Callable[[int], None], *, warm: int = 8, rounds: int = ROUNDS,
                tables_allowed: tuple[str, ...] = ()) -> None:
    """Run ``step(i)`` ``warm`` times, then ``rounds`` times more, and assert fds, threads and
    voxgate's tables (but ``tables_allowed``) stayed where the warm-up left them."""
    for i in range(warm):
        step(i)
    fds0, thr0, py0, tab0 = _state()
    peak_fds = fds0
    for i in range(warm, warm + rounds):
        step(i)
        peak_fds = max(peak_fds, _fds())
    fds1, thr1, py1, tab1 = _state()
    assert fds1 <= fds0 + FD_SLACK, f"open files grew {fds0} -> {fds1} over {rounds} rounds"
    # without gc.collect(): dropped volumes release their files by reference counting alone
    assert peak_fds <= fds0 + FD_SLACK, f"open files peaked at {peak_fds} (from {fds0})"
    assert py1 <= py0 + 1, \
        f"Python threads grew {py0} -> {py1} over {rounds} rounds: {threading.enumerate()}"
    assert thr1 <= thr0 + THREAD_SLACK, f"threads grew {thr0} -> {thr1} over {rounds} rounds"
    grown = {k: (tab0.get(k, 0), n) for k, n in tab1.items()
             if n > tab0.get(k, 0) + 2 and k not in tables_allowed}
    assert not grown, f"module-level tables grew over {rounds} rounds: {grown}"


# -- opening, reading, writing and dropping volumes -------------------------------------------

_LOCAL = {
    "zarr": "zarr://{}.zarr", "n5": "n5://{}.n5", "precomputed": "precomputed://{}",
    "hdf5": "hdf5://{}.h5", "tiff": "tiff://{}.tif", "knossos": "knossos://{}",
    "webknossos": "webknossos://{}",
}


def _make(url: str) -> None:
    v = voxgate.create(url, shape=_IMG.shape, chunks=(16, 16, 16), dtype="uint8",
                       voxel_size=(8, 8, 8))
    v[:] = _IMG


@pytest.mark.parametrize("fmt", sorted(_LOCAL))
def test_local_volumes_opened_written_and_dropped_hold_nothing(fmt: str,
                                                               tmp_path: Path) -> None:
    # a new volume each round (created, written, reopened, read, written, dropped), then the
    # same one opened again and again, then with Remote.close(): nothing is left behind
    spelled = _LOCAL[fmt]
    same = spelled.format(tmp_path / "same")
    _make(same)

    def distinct(i: int) -> None:
        url = spelled.format(tmp_path / f"v{i}")
        _make(url)
        v = voxgate.open(url, mode="r+")
        np.testing.assert_array_equal(v[0:4, 0:16, 0:16].read(), _IMG[0:4, 0:16, 0:16])
        v[4:8, 0:16, 0:16] = _IMG[0:4, 0:16, 0:16]

    def again(i: int) -> None:
        v = voxgate.open(same, mode="r+")
        np.testing.assert_array_equal(v[0:4, 0:8, 0:8].read(), _IMG[0:4, 0:8, 0:8])
        v[0:4, 0:8, 0:8] = _IMG[0:4, 0:8, 0:8]

    def closed(i: int) -> None:
        v = voxgate.open(same)
        v[0:4, 0:8, 0:8].read()
        v.remote.close()

    _check_flat(distinct, rounds=25)
    _check_flat(again)
    _check_flat(closed)


@pytest.mark.parametrize("fmt", ["zarr", "n5", "precomputed"])
def test_http_volumes_opened_and_dropped_hold_nothing(fmt: str, tmp_path: Path) -> None:
    ext = {"zarr": ".zarr", "n5": ".n5"}.get(fmt, "")
    for i in range(8 + ROUNDS):
        _make(f"{fmt}://{tmp_path}/v{i}{ext}")
    with serve_directory(tmp_path) as base:

        def step(i: int) -> None:
            v = voxgate.open(f"{fmt}://{base}/v{i}{ext}")
            np.testing.assert_array_equal(v[0:4, 0:8, 0:8].read(), _IMG[0:4, 0:8, 0:8])

        _check_flat(step)


def test_mem_volumes_are_kept_until_deleted() -> None:
    # mem:// is a store: its volumes live until deleted (voxgate.remotes.memory.delete), and
    # then nothing of them is left
    memory = importlib.import_module("voxgate.remotes.memory")

    def step(i: int) -> None:
        _make(f"mem://leak-audit-{i}")
        v = voxgate.open(f"mem://leak-audit-{i}", mode="r+")
        v[0:4, 0:8, 0:8] = _IMG[0:4, 0:8, 0:8]
        memory.delete(f"leak-audit-{i}")

    _check_flat(step)


@pytest.fixture(scope="module")
def dvid_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DVIDServerProcess]:
    srv = start_server(log=tmp_path_factory.mktemp("dvid") / "server.log")
    yield srv
    srv.stop()


def test_dvid_volumes_opened_and_dropped_hold_no_threads(dvid_server: DVIDServerProcess,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # small requests: each read and write runs on the Remote's thread pool, which must go with
    # the dropped Remote (or its close())
    from voxgate.remotes.dvid import DVIDRepo

    monkeypatch.setattr(importlib.import_module("voxgate.remotes.dvid.remote"),
                        "REQUEST_BYTES", 32**3)
    repo = DVIDRepo.create(dvid_server.url, alias="leak-audit")
    data = np.tile(_IMG, (1, 2, 2))
    urls = []
    for i in range(8 + ROUNDS):
        urls.append(repo.url(f"img{i}"))
        v = voxgate.create(urls[-1], shape=(16, 64, 64), chunks=(32, 32, 32), dtype="uint8",
                           voxel_size=(8, 8, 8))
        v[:] = data
    del v  # (its pool is alive while it is)

    def step(i: int) -> None:
        v = voxgate.open(urls[i], mode="r+")
        np.testing.assert_array_equal(v[0:4].read(), data[0:4])
        v[4:8] = data[0:4]
        if i % 2:
            v.remote.close()

    _check_flat(step)


@pytest.fixture(scope="module")
def boss_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    r = start_token_relay(tmp_path_factory.mktemp("boss"), "64 MiB")
    yield r
    r.stop()


def test_bossdb_volumes_opened_and_dropped_hold_no_threads(
        boss_server: RelayProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    # reads and writes across two cuboids run on the Remote's thread pool
    monkeypatch.setenv("VOXGATE_BOSS_TOKEN", RW)
    data = np.concatenate([_IMG, _IMG])
    urls = []
    for i in range(8 + ROUNDS):
        urls.append(f"bossdb://{boss_server.url}/leakaudit/exp/ch{i}")
        v = voxgate.create(urls[-1], shape=data.shape, chunks=(16, 512, 512), dtype="uint8",
                           voxel_size=(8, 8, 8))
        v[:] = data
    del v  # (its pool is alive while it is)

    def step(i: int) -> None:
        v = voxgate.open(urls[i], mode="r+")
        np.testing.assert_array_equal(v[12:20].read(), data[12:20])
        v[12:20] = data[0:8]

    _check_flat(step)


# -- Services ---------------------------------------------------------------------------------

@pytest.fixture
def seg_url(tmp_path: Path) -> str:
    seg = np.random.default_rng(0).integers(0, 4, (4, 4, 4)).astype(np.uint64)
    seg = np.kron(seg, np.ones((8, 8, 8), np.uint64))
    url = f"zarr://{tmp_path}/seg.zarr"
    v = voxgate.create(url, shape=seg.shape, chunks=(16, 16, 16), dtype="uint64",
                       voxel_size=(8, 8, 8), kind="segmentation")
    v[:] = seg
    return url


def test_services_run_many_times_hold_nothing(seg_url: str, tmp_path: Path) -> None:
    from voxgate.services import connected_components, label_stats, map_blocks, mesh

    def step(i: int) -> None:
        mesh(seg_url, block=(16, 16, 16))
        connected_components(seg_url, workers=2, block=(16, 16, 16))
        label_stats(seg_url, workers=2, block=(16, 16, 16))
        map_blocks(lambda a: a + 1, seg_url, block=(16, 16, 16), workers=2)

    _check_flat(step, warm=4, rounds=20)


def test_writes_to_many_volumes_keep_no_per_volume_state(tmp_path: Path) -> None:
    # copies, downsamples and writes into ever new volumes: the proofreading Service's write
    # hooks kept a gate and an edit count for every volume ever written (forever)
    src = f"zarr://{tmp_path}/src.zarr"
    _make(src)

    def step(i: int) -> None:
        voxgate.copy(src, f"zarr://{tmp_path}/copy{i}.zarr", workers=2, progress=False)
        ds = f"precomputed://{tmp_path}/ds{i}"
        _make(ds)
        out = voxgate.services.downsample(ds, 2, workers=2)
        out[0:4, 0:8, 0:8] = _IMG[0:4, 0:8, 0:8]
        voxgate.services.map_blocks(lambda a: a, src, f"zarr://{tmp_path}/mb{i}.zarr",
                                    block=(16, 16, 16), workers=2)

    _check_flat(step, rounds=25, tables_allowed=("voxgate.services.downsample._PROVENANCE",))


def test_service_provenance_tables_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # downsampling arrays in a loop makes a new in-memory result (a new URL) every time: its
    # provenance is kept for the last few volumes, not for every one ever made
    log = getattr(services_common, "ProvenanceLog", None)
    if log is not None:
        monkeypatch.setattr(log, "KEPT", 16)
    image = _IMG[:8, :16, :16].copy()
    last = None
    for _ in range(40):
        last = voxgate.services.downsample(image, 2)
    assert last is not None
    assert len(downsample_module._PROVENANCE) <= 16
    assert downsample_module.downsample_provenance(last) is not None  # the latest is kept


def test_predict_with_many_models_keeps_a_few_sessions(tmp_path: Path) -> None:
    # a script predicting with one checkpoint after another: every model's onnxruntime
    # session (weights, memory arena, its intra-op threads) was kept in the calling thread
    from .services.onnx_models import conv_model

    image = (np.arange(8 * 16 * 16) % 251).astype(np.uint8).reshape(8, 16, 16)

    def step(i: int) -> None:
        path = conv_model(tmp_path / f"m{i}.onnx", layers=1, seed=i)
        voxgate.services.predict(path, image, workers=1, progress=False)
        path.unlink()

    _check_flat(step, warm=10, rounds=16)
    sessions: Any = getattr(predict_module._SESSIONS, "sessions", {})
    assert len(sessions) <= 4, f"{len(sessions)} onnxruntime sessions kept by this thread"
