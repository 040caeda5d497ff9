"""``voxgate serve --workers 2`` over HDF5 upstreams: writes through either worker land, and
every next read from either worker sees them (docs/relay.md, "Several worker processes").

The relay opened an HDF5 upstream read-only and took write access for each write only
(``hold_write=False``).  Each worker process is a process of its own to HDF5's file lock, so
once the other worker had served a read of the channel (and so held the file open
read-only), every write answered 502 "locked by another process"; writes landed only while
no other worker had the file open.  With several workers the relay now opens HDF5 upstreams
with ``hold_open=False``: no handle is kept between reads and writes, each read opens the file
under a shared lock, each write under an exclusive one (``fcntl``, on the file itself), and
closes it before letting go.

Which worker answers is the kernel's choice, so every request goes on a fresh connection and
the tests check (``X-Voxgate-Worker``) that both workers served.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import blosc
import h5py
import httpx
import numpy as np
import pytest
from intern.remote.boss import BossRemote
from intern.resource.boss.resource import ChannelResource

import voxgate
from voxgate.errors import InvalidRequestError, RemoteUnavailableError
from voxgate.geometry import Box
from voxgate.relay.catalog import _serving_options

from .conftest import RW, RelayProcess, start_two_worker_relay, tls

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="hold_open=False takes fcntl locks on Linux only")

SHAPE = (8, 64, 64)
CHUNKS = (4, 32, 32)
HEADERS = {"Authorization": f"Token {RW}"}
#: one channel (and one file) per test: a test's writes never meet another's
CHANNELS = ("rw", "race", "nb")


def _h5(path: Path, seed: int) -> np.ndarray:
    data = np.random.default_rng(seed).integers(1, 250, SHAPE, dtype=np.uint8)
    vol = voxgate.create(f"hdf5://{path}#/vol", shape=SHAPE, chunks=CHUNKS, dtype="uint8",
                         voxel_size=(40, 8, 8))
    vol[...] = data
    vol.remote.close()  # (this process is done with it: the relay opens it next)
    return data


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayProcess, Path]]:
    d = tmp_path_factory.mktemp("workers_hdf5")
    channels = {}
    for i, name in enumerate(CHANNELS):
        _h5(d / f"{name}.h5", seed=i)
        channels[f"c/e/{name}"] = f"hdf5://{d / name}.h5#/vol"
    r = start_two_worker_relay(d, channels, public_read=False)
    yield r, d
    r.stop()


def _url(box: Box, channel: str) -> str:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return f"/v1/cutout/c/e/{channel}/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"


def _request(r: RelayProcess, method: str, path: str, **kw: object) -> httpx.Response:
    """A request on a connection of its own (so either worker may answer it)."""
    with httpx.Client(base_url=r.url, headers=HEADERS, timeout=60, verify=tls()) as http:
        return http.request(method, path, **kw)  # type: ignore[arg-type]


def _read(r: RelayProcess, box: Box, channel: str) -> tuple[np.ndarray, str]:
    res = _request(r, "GET", _url(box, channel),
                   headers={**HEADERS, "Accept": "application/blosc"})
    assert res.status_code == 200, res.text
    got = np.frombuffer(blosc.decompress(res.content), np.uint8).reshape(tuple(box.shape))
    return got, res.headers["x-voxgate-worker"]


def _post(r: RelayProcess, box: Box, arr: np.ndarray, channel: str) -> httpx.Response:
    return _request(r, "POST", _url(box, channel),
                    content=blosc.compress(arr.tobytes(), typesize=1),
                    headers={**HEADERS, "Content-Type": "application/blosc"})


def _from_every_worker(read: Callable[[], tuple[np.ndarray, str]],
                       check: Callable[[np.ndarray], None]) -> set[str]:
    """``read()`` until both workers have answered, each answer checked."""
    seen: set[str] = set()
    for _ in range(400):
        got, worker = read()
        check(got)
        seen.add(worker)
        if len(seen) == 2:
            return seen
    raise AssertionError(f"only worker(s) {sorted(seen)} answered 400 requests")


def _every_worker_reads(r: RelayProcess, box: Box, channel: str, want: np.ndarray) -> None:
    _from_every_worker(lambda: _read(r, box, channel),
                       lambda got: np.testing.assert_array_equal(got, want))


def _intern(r: RelayProcess) -> BossRemote:
    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{r.port}", "token": RW})


def test_writes_through_either_worker_are_read_by_both(
        relay: tuple[RelayProcess, Path]) -> None:
    r, d = relay
    whole = Box((0, 0, 0), SHAPE)
    with h5py.File(d / "rw.h5", "r") as f:
        expected = f["vol"][...]
    # both workers open the channel (the old code: each then held the file read-only, and
    # every write answered 502 "locked by another process")
    _every_worker_reads(r, whole, "rw", expected)
    rng = np.random.default_rng(11)
    resource = ChannelResource("rw", "c", "e", datatype="uint8")
    writers: set[str] = set()
    for i in range(8):
        box = Box((i % 3, 5 + i, 7), (i % 3 + 4, 40 + i, 60))  # across chunks
        patch = rng.integers(0, 255, tuple(box.shape), dtype=np.uint8)
        if i % 4 == 3:  # intern, on its own connection
            _intern(r).create_cutout(resource, 0, [box.start.x, box.stop.x],
                                     [box.start.y, box.stop.y], [box.start.z, box.stop.z],
                                     patch)
        else:
            res = _post(r, box, patch, "rw")
            assert res.status_code == 201, res.text
            writers.add(res.headers["x-voxgate-worker"])
        expected[box.slices()] = patch
        _every_worker_reads(r, whole, "rw", expected)  # read-your-writes, on both workers
        got = _intern(r).get_cutout(resource, 0, [0, SHAPE[2]], [0, SHAPE[1]], [0, SHAPE[0]])
        np.testing.assert_array_equal(got, expected)
    # the writes were in the file, whole, for any other process
    with h5py.File(d / "rw.h5", "r") as f:
        np.testing.assert_array_equal(f["vol"][...], expected)
    assert writers, "no write was acknowledged"


def test_a_write_racing_reads_on_the_other_worker(relay: tuple[RelayProcess, Path]) -> None:
    """Readers on fresh connections (so on both workers) while writes go in: every read is
    answered 200 with a version of the block that was written whole, never an error or a mix."""
    r, d = relay
    box = Box((0, 0, 0), CHUNKS)  # one chunk: one cache cell, written whole by each write
    with h5py.File(d / "race.h5", "r") as f:
        versions = [f["vol"][box.slices()]]
    rng = np.random.default_rng(12)
    stop = threading.Event()
    failures: list[str] = []
    readers_seen: set[str] = set()
    reads = [0]

    def reader() -> None:
        try:
            while not stop.is_set():
                res = _request(r, "GET", _url(box, "race"),
                               headers={**HEADERS, "Accept": "application/blosc"})
                if res.status_code != 200:
                    failures.append(f"{res.status_code}: {res.text[:300]}")
                    return
                got = np.frombuffer(blosc.decompress(res.content), np.uint8).reshape(CHUNKS)
                # (versions only grows: a read sees one written before it was answered)
                if not any(np.array_equal(got, v) for v in list(versions)):
                    failures.append("a read matched no version written")
                    return
                readers_seen.add(res.headers["x-voxgate-worker"])
                reads[0] += 1
        except Exception as exc:  # (reported by the main thread)
            failures.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        writers: set[str] = set()
        for _ in range(12):
            patch = rng.integers(0, 255, CHUNKS, dtype=np.uint8)
            versions.append(patch)  # (before the POST: a read may see it once it lands)
            res = _post(r, box, patch, "race")
            assert res.status_code == 201, res.text
            writers.add(res.headers["x-voxgate-worker"])
            # what was acknowledged is what the next read sees, on both workers
            _every_worker_reads(r, box, "race", patch)
            if failures:
                break
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert not failures, failures[:3]
    assert len(readers_seen) == 2 and reads[0] > 0
    with h5py.File(d / "race.h5", "r") as f:
        np.testing.assert_array_equal(f["vol"][box.slices()], versions[-1])


def test_a_notebook_holding_the_file_open_read_only(relay: tuple[RelayProcess, Path]) -> None:
    """Another process (this one, as a notebook would) holding the file open with h5py's
    defaults: both workers go on reading; a write is refused at once (503, Retry-After: the
    lock is temporary) naming the process that holds the file, and leaves the file as it was;
    once the notebook is done, writes land and both workers read them."""
    r, d = relay
    whole = Box((0, 0, 0), SHAPE)
    box = Box((1, 3, 5), (6, 40, 50))
    patch = np.full(tuple(box.shape), 7, np.uint8)
    with h5py.File(d / "nb.h5", "r") as notebook:  # (file locking on: h5py's default)
        data = notebook["vol"][...]
        _every_worker_reads(r, whole, "nb", data)
        for _ in range(2):
            refused = _post(r, box, patch, "nb")
            assert refused.status_code == 503, refused.text  # busy for now, not failed
            assert refused.headers["retry-after"].isdigit(), refused.headers
            assert "locked by another process" in refused.text, refused.text
            assert f"held by process {os.getpid()}" in refused.text, refused.text
        np.testing.assert_array_equal(notebook["vol"][...], data)
        _every_worker_reads(r, whole, "nb", data)
    res = _post(r, box, patch, "nb")
    assert res.status_code == 201, res.text
    data[box.slices()] = patch
    _every_worker_reads(r, whole, "nb", data)
    with h5py.File(d / "nb.h5", "r") as f:
        np.testing.assert_array_equal(f["vol"][...], data)


# -- the Remote option the relay uses -------------------------------------------------------------
def test_the_relay_opens_hdf5_with_hold_open_false_only_with_several_workers(
        tmp_path: Path) -> None:
    url = f"hdf5://{tmp_path / 'v.h5'}#/vol"
    assert _serving_options(url, {}) == {"hold_write": False}
    assert _serving_options(url, {}, workers=2) == {"hold_write": False, "hold_open": False}
    # a channel's own choice wins
    assert _serving_options(url, {"hold_write": True}, workers=2) == {"hold_write": True}
    assert _serving_options(url, {"hold_open": True}, workers=2) == {
        "hold_open": True, "hold_write": False}
    assert _serving_options(f"zarr://{tmp_path / 'v.zarr'}", {}, workers=2) == {}


def test_hold_open_false_keeps_no_handle_between_reads_and_writes(tmp_path: Path) -> None:
    path = tmp_path / "v.h5"
    data = _h5(path, seed=5)
    url = f"hdf5://{path}#/vol"
    for bad in ("no", 0, None):
        with pytest.raises(InvalidRequestError, match="hold_open must be true or false"):
            voxgate.open(url, mode="r+", hold_open=bad)
    with pytest.raises(InvalidRequestError, match="choose one"):
        voxgate.open(url, mode="r+", hold_open=False, hold_write=True)
    vol = voxgate.open(url, mode="r+", hold_open=False)
    assert vol.remote.spec()["options"] == {"hold_open": False}
    np.testing.assert_array_equal(vol.read(), data)
    # between its reads the file is closed: another handle may even write it
    with h5py.File(path, "r+") as other:
        other["vol"][0, 0, 0:3] = 9
    data[0, 0, 0:3] = 9
    np.testing.assert_array_equal(vol.read(), data)  # (opened anew: nothing stale)
    vol[1, 2, 3:5] = 4
    data[1, 2, 3:5] = 4
    with h5py.File(path, "r+") as other:  # (a write too gives the file back)
        np.testing.assert_array_equal(other["vol"][...], data)
    again = voxgate.open(vol.remote.spec()["url"], mode="r+", **vol.remote.spec()["options"])
    np.testing.assert_array_equal(again.read(), data)
    # another process holding the file: the write is refused at once, naming it, and reads
    # go on
    code = (f"import h5py, sys\nf = h5py.File({str(path)!r}, 'r')\nprint('open', flush=True)\n"
            "sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(RemoteUnavailableError,
                           match=f"locked by another process \\(held by process {holder.pid}"):
            vol[0, 0, 0] = 1
        np.testing.assert_array_equal(vol.read(), data)
    finally:
        holder.communicate("", timeout=60)
    vol[0, 0, 0] = 1
    data[0, 0, 0] = 1
    np.testing.assert_array_equal(again.read(), data)
    vol.remote.close()
    again.remote.close()
