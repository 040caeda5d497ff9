"""``voxgate serve`` with several worker processes on one port (issue 15, item 4): every worker
answers, and what one worker acknowledged is what the next request sees on any worker: cutouts
(memory tiers, the shared disk tier), reserved ids, created / deleted / recreated channels,
label statistics; SIGTERM and SIGINT stop every process (docs/relay.md, "Several worker
processes").

Which worker answers is the kernel's choice, so every request here goes on a fresh connection,
and the tests check (``X-Voxgate-Worker``) that both workers served."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
from intern.remote.boss import BossRemote
from intern.resource.boss.resource import ChannelResource

import voxgate
from voxgate.geometry import Box

from .conftest import RW, RelayProcess, free_port, start_relay, tls

SHAPE = (32, 256, 256)
CHUNKS = (16, 64, 64)
HEADERS = {"Authorization": f"Token {RW}"}


def _config(d: Path, workers: int = 2, disk: bool = True, channel: str = "") -> Path:
    cfg = d / "relay.toml"
    cfg.write_text(f"""
[server]
workers = {workers}
[cache]
memory_bytes = "32 MiB"
{f'disk_path = "{d / "cache"}"' if disk else ""}
disk_bytes = "64 MiB"
[auth]
public_read = false
tokens = {{ "{RW}" = "read-write" }}
{f'[[channel]]{chr(10)}name = "c/e/img"{chr(10)}upstream = "{channel}"' if channel else ""}
""")
    return cfg


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    d = tmp_path_factory.mktemp("workers")
    root = d / "data"
    rng = np.random.default_rng(4)
    img = voxgate.create(f"zarr://{root}/c/e/img.zarr", shape=SHAPE, chunks=CHUNKS,
                         dtype="uint8", voxel_size=(40, 8, 8))
    img[:] = rng.integers(1, 250, SHAPE, dtype=np.uint8)
    seg = voxgate.create(f"zarr://{root}/c/e/seg.zarr", shape=SHAPE, chunks=CHUNKS,
                         dtype="uint64", voxel_size=(40, 8, 8), kind="segmentation")
    seg[:] = np.uint64(5)
    multi = voxgate.create(f"precomputed://file://{root}/c/e/multi", shape=SHAPE,
                           chunks=CHUNKS, dtype="uint8", voxel_size=(40, 8, 8), num_scales=2)
    multi[:] = np.uint8(1)
    r = start_relay(_config(d), free_port(), "--data-root", str(root))
    yield r
    r.stop()


def _get(r: RelayProcess, path: str, **kw: object) -> httpx.Response:
    """A request on a connection of its own (so either worker may answer it)."""
    with httpx.Client(base_url=r.url, headers=HEADERS, timeout=60, verify=tls()) as http:
        return http.request(kw.pop("method", "GET"), path, **kw)  # type: ignore[arg-type]


def _url(box: Box, path: str) -> str:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return f"/v1/cutout/{path}/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"


def _read(r: RelayProcess, box: Box, path: str, dtype: str, seen: set[str]) -> np.ndarray:
    res = _get(r, _url(box, path), headers={**HEADERS, "Accept": "application/blosc"})
    assert res.status_code == 200, res.text
    seen.add(res.headers["x-voxgate-worker"])
    return np.frombuffer(blosc.decompress(res.content), dtype).reshape(tuple(box.shape))


def _every_worker_reads(r: RelayProcess, box: Box, path: str, want: np.ndarray) -> None:
    """Read ``box`` until both workers have answered, each answer ``want``."""
    def ask() -> httpx.Response:
        return _get(r, _url(box, path), headers={**HEADERS, "Accept": "application/blosc"})

    def check(res: httpx.Response) -> None:
        assert res.status_code == 200, res.text
        got = np.frombuffer(blosc.decompress(res.content), want.dtype)
        np.testing.assert_array_equal(got.reshape(want.shape), want)

    _from_every_worker(ask, check)


def _write(r: RelayProcess, box: Box, arr: np.ndarray, path: str) -> str:
    res = _get(r, _url(box, path), method="POST",
               content=blosc.compress(arr.tobytes(), typesize=arr.dtype.itemsize),
               headers={**HEADERS, "Content-Type": "application/blosc"})
    assert res.status_code == 201, res.text
    return res.headers["x-voxgate-worker"]


def _worker_pids(r: RelayProcess) -> set[int]:
    return {int(p) for p in Path(f"/proc/{r.proc.pid}/task/{r.proc.pid}/children")
            .read_text().split()}


def _wait_answered_by(r: RelayProcess, pids: set[int], holding: str | None = None) -> None:
    """Ask until every one of ``pids`` has answered (each answer listing collection
    ``holding``, when given)."""
    answered: set[int] = set()
    deadline = time.monotonic() + 60
    while answered != pids and time.monotonic() < deadline:
        res = _get(r, "/v1/collection/")
        if holding is not None:
            assert holding in res.json()["collections"]
        answered.add(int(res.headers["x-voxgate-worker"]))
    assert answered == pids, \
        f"workers {sorted(pids - answered)} never answered: {r.log.read_text()}"


#: rounds of a concurrent test run until both workers have answered some of its requests
_ROUNDS = 4


def _from_every_worker(ask: Callable[[], httpx.Response],
                       check: Callable[[httpx.Response], None]) -> set[str]:
    """``ask()`` until both workers have answered (each answer checked): the kernel gives a
    connection to whichever worker accepts first, so on a loaded machine a busy worker may
    miss a handful of them in a row."""
    seen: set[str] = set()
    for _ in range(400):
        res = ask()
        check(res)
        seen.add(res.headers["x-voxgate-worker"])
        if len(seen) == 2:
            return seen
    raise AssertionError(f"only worker(s) {sorted(seen)} answered 400 requests")


def test_every_worker_answers_on_one_port(relay: RelayProcess) -> None:
    def ok(res: httpx.Response) -> None:
        assert res.status_code == 200, res.text

    seen = _from_every_worker(lambda: _get(relay, "/ping/"), ok)
    assert {int(p) for p in seen} == _worker_pids(relay)
    metrics = _get(relay, "/metrics").json()
    assert metrics["worker"]["workers"] == 2 and str(metrics["worker"]["pid"]) in seen


def test_a_write_through_one_worker_is_read_by_every_next_request(relay: RelayProcess) -> None:
    box = Box((4, 30, 40), (20, 100, 150))  # across cache cells
    seen: set[str] = set()
    rng = np.random.default_rng(7)
    writers = set()
    for i in range(12):
        for _ in range(3):  # both workers hold the region in their memory tiers (and disk)
            _read(relay, box, "c/e/img", "uint8", seen)
        data = rng.integers(0, 255, tuple(box.shape), dtype=np.uint8)
        if i % 3 == 2:  # intern, on its own connection
            BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": RW}
                       ).create_cutout(ChannelResource("img", "c", "e", datatype="uint8"), 0,
                                       [box.start.x, box.stop.x], [box.start.y, box.stop.y],
                                       [box.start.z, box.stop.z], data)
        else:
            writers.add(_write(relay, box, data, "c/e/img"))
        for _ in range(6):
            np.testing.assert_array_equal(_read(relay, box, "c/e/img", "uint8", seen), data)
        got = BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": RW}
                         ).get_cutout(ChannelResource("img", "c", "e", datatype="uint8"), 0,
                                      [box.start.x, box.stop.x], [box.start.y, box.stop.y],
                                      [box.start.z, box.stop.z])
        np.testing.assert_array_equal(got, data)
    assert writers <= seen
    _every_worker_reads(relay, box, "c/e/img", data)  # the last write, on both workers


def test_a_write_through_the_boss_dialect_changes_every_workers_precomputed_chunk(
        relay: RelayProcess) -> None:
    """The precomputed dialect's chunks (ETag, encoded-response cache) follow a write made
    through the other dialect and either worker: the next GET from every worker has the new
    bytes, and a conditional GET with the old ETag is answered 200 with them, never 304."""
    info = _get(relay, "/precomputed/c/e/img/info").json()
    scale = info["scales"][0]
    assert scale["encoding"] == "raw"
    cz, cy, cx = scale["chunk_sizes"][0][::-1]
    box = Box((0, 0, 0), (min(cz, SHAPE[0]), min(cy, SHAPE[1]), min(cx, SHAPE[2])))
    path = f"/precomputed/c/e/img/{scale['key']}/" + "_".join(
        f"{a}-{b}" for a, b in zip(box.start.xyz(), box.stop.xyz(), strict=True))

    def chunk(headers: dict[str, str] | None = None) -> httpx.Response:
        res = _get(relay, path, headers={**HEADERS, **(headers or {})})
        assert res.status_code in (200, 304), res.text
        return res

    def voxels(res: httpx.Response) -> np.ndarray:
        return np.frombuffer(res.content, np.uint8).reshape(tuple(box.shape))

    before, old_tags = {}, set()
    for _ in range(400):  # every worker serves it (and keeps its encoded response)
        res = chunk()
        before[res.headers["x-voxgate-worker"]] = voxels(res)
        old_tags.add(res.headers["etag"])
        if len(before) == 2:
            break
    assert len(before) == 2 and len(old_tags) == 1
    data = (255 - next(iter(before.values()))).astype(np.uint8)
    BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": RW}
               ).create_cutout(ChannelResource("img", "c", "e", datatype="uint8"), 0,
                               [box.start.x, box.stop.x], [box.start.y, box.stop.y],
                               [box.start.z, box.stop.z], data)
    new_tags = set()

    def changed(res: httpx.Response) -> None:
        assert res.status_code == 200
        np.testing.assert_array_equal(voxels(res), data)
        new_tags.add(res.headers["etag"])

    _from_every_worker(lambda: chunk({"If-None-Match": next(iter(old_tags))}), changed)
    assert not new_tags & old_tags
    for _ in range(6):  # the new ETag is current: 304 from either worker
        assert chunk({"If-None-Match": next(iter(new_tags))}).status_code == 304


def test_reads_racing_a_writer_never_see_a_value_older_than_an_acknowledged_write(
        relay: RelayProcess) -> None:
    box = Box((0, 128, 128), (16, 192, 256))
    acked: list[tuple[float, int]] = [(0.0, 0)]  # (when acknowledged, value)
    _write(relay, box, np.zeros(tuple(box.shape), np.uint8), "c/e/img")
    stop = threading.Event()
    reads: list[tuple[float, int]] = []  # (when the read began, smallest value it saw)
    seen: set[str] = set()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                t0 = time.monotonic()
                arr = _read(relay, box, "c/e/img", "uint8", seen)
                reads.append((t0, int(arr.min())))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for value in range(1, 16):
            _write(relay, box, np.full(tuple(box.shape), value, np.uint8), "c/e/img")
            acked.append((time.monotonic(), value))
            time.sleep(0.03)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert len(reads) > 30
    for began, smallest in reads:
        floor = max(v for t, v in acked if t <= began)
        assert smallest >= floor, (began, smallest, floor)
    _every_worker_reads(relay, box, "c/e/img", np.full(tuple(box.shape), 15, np.uint8))


def test_ids_reserved_through_both_workers_at_once_never_overlap(relay: RelayProcess) -> None:
    ranges: list[tuple[int, int]] = []
    seen: set[str] = set()
    lock = threading.Lock()

    def reserve() -> None:
        for _ in range(25):
            res = _get(relay, "/v1/reserve/c/e/seg/7/")
            assert res.status_code == 200, res.text
            with lock:
                ranges.append((res.json()["start_id"], 7))
                seen.add(res.headers["x-voxgate-worker"])

    rounds = 0
    while len(seen) < 2 and rounds < _ROUNDS:  # until both workers took part
        rounds += 1
        threads = [threading.Thread(target=reserve) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(seen) == 2, f"one worker answered all of {rounds} rounds"
    ids = [start + k for start, n in ranges for k in range(n)]
    assert len(ids) == rounds * 200 * 7 == len(set(ids))
    assert min(ids) == 6  # above the volume's largest id (5), reserved once for both workers
    assert max(ids) == 6 + rounds * 200 * 7 - 1  # and nothing skipped


def test_a_name_created_through_both_workers_at_once_is_created_once(
        relay: RelayProcess) -> None:
    """Each name POSTed by 8 threads at once (through both workers): one 201, the rest 400."""
    seen: set[str] = set()
    lock = threading.Lock()
    frame = {"x_start": 0, "x_stop": 64, "y_start": 0, "y_stop": 64, "z_start": 0,
             "z_stop": 8, "x_voxel_size": 4.0, "y_voxel_size": 4.0, "z_voxel_size": 40.0,
             "voxel_unit": "nanometers"}

    def run(paths: dict[str, str], body: dict[str, object]) -> None:
        statuses: dict[str, list[int]] = {n: [] for n in paths}

        def create(path: str, key: str) -> None:
            res = _get(relay, path, method="POST", json=body)
            with lock:
                statuses[key].append(res.status_code)
                seen.add(res.headers["x-voxgate-worker"])

        threads = [threading.Thread(target=create, args=(p, n))
                   for n, p in paths.items() for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(sorted(v) == [201] + [400] * 7 for v in statuses.values()), statuses

    rounds = 0
    while len(seen) < 2 and rounds < _ROUNDS:  # until both workers took part
        names = [f"race{rounds}x{k}" for k in range(6)]
        rounds += 1
        run({n: f"/v1/collection/{n}/" for n in names}, {"description": "x"})
        run({n: f"/v1/coord/{n}/" for n in names}, frame)
        run({n: f"/v1/collection/{names[0]}/experiment/{n}/" for n in names},
            {"coord_frame": names[1]})
        run({n: f"/v1/collection/{names[0]}/experiment/{names[2]}/channel/{n}/"
             for n in names}, {"type": "image", "datatype": "uint8"})
        listed = _get(relay, "/v1/collection/").json()["collections"]
        assert all(listed.count(n) == 1 for n in names)
    assert len(seen) == 2, f"one worker answered all of {rounds} rounds"


def test_label_stats_after_a_write_through_the_other_worker(relay: RelayProcess) -> None:
    seen: set[str] = set()

    def bbox() -> dict[str, list[int]]:
        res = _get(relay, "/v1/boundingbox/c/e/seg/0/9001/?type=tight")
        seen.add(res.headers["x-voxgate-worker"])
        return res.json() if res.status_code == 200 else {}

    first = Box((0, 0, 0), (4, 8, 8))
    _write(relay, first, np.full(tuple(first.shape), 9001, np.uint64), "c/e/seg")
    for _ in range(8):  # computed (and kept) in both workers
        assert bbox()["x_range"] == [0, 8]
    for step in range(1, 4):
        more = Box((8, 40 * step, 50 * step), (12, 40 * step + 8, 50 * step + 8))
        _write(relay, more, np.full(tuple(more.shape), 9001, np.uint64), "c/e/seg")
        for _ in range(6):
            got = bbox()
            assert got["x_range"] == [0, 50 * step + 8] and got["z_range"] == [0, 12], got
            ids = _get(relay, "/v1/ids/c/e/seg/0/0:256/0:256/0:32/").json()["ids"]
            assert "9001" in ids

    def last(res: httpx.Response) -> None:
        assert res.status_code == 200 and res.json()["x_range"] == [0, 158], res.text

    _from_every_worker(lambda: _get(relay, "/v1/boundingbox/c/e/seg/0/9001/?type=tight"), last)


def test_downsample_status_is_the_same_on_every_worker(relay: RelayProcess) -> None:
    box = Box((0, 0, 0), (16, 64, 64))
    _write(relay, box, np.full(tuple(box.shape), 7, np.uint8), "c/e/multi")

    def status_is(*allowed: str) -> Callable[[httpx.Response], None]:
        def check(res: httpx.Response) -> None:
            assert res.json()["status"] in allowed, res.json()
        return check

    def status() -> httpx.Response:
        return _get(relay, "/v1/downsample/c/e/multi/")

    # new base data: the coarser level is stale, says every worker
    _from_every_worker(status, status_is("NOT_DOWNSAMPLED"))
    assert _get(relay, "/v1/downsample/c/e/multi/", method="POST").status_code == 201
    deadline = time.monotonic() + 60
    done = 0
    while done < 6:  # running, then done; never back to not downsampled
        res = status()
        status_is("IN_PROGRESS", "DOWNSAMPLED")(res)
        done = done + 1 if res.json()["status"] == "DOWNSAMPLED" else 0
        assert time.monotonic() < deadline
    _from_every_worker(status, status_is("DOWNSAMPLED"))  # done, on every worker

    def coarse() -> httpx.Response:  # what the written box became at level 1
        return _get(relay, "/v1/cutout/c/e/multi/1/0:32/0:32/0:16/",
                    headers={**HEADERS, "Accept": "application/blosc"})

    def all_7(res: httpx.Response) -> None:
        arr = np.frombuffer(blosc.decompress(res.content), np.uint8)
        assert arr.size == 16 * 32 * 32 and (arr == 7).all()

    _from_every_worker(coarse, all_7)


def _project(r: RelayProcess, path: str, body: dict[str, object] | None = None,
             method: str = "POST") -> None:
    res = _get(r, f"/v1/{path}", method=method, json=body)
    assert res.status_code in (200, 201, 204), res.text


def test_a_channel_deleted_and_created_again_through_either_worker_never_serves_old_bytes(
        relay: RelayProcess) -> None:
    _project(relay, "collection/lab/", {"description": ""})
    _project(relay, "coord/frame1/", {"x_start": 0, "x_stop": 128, "y_start": 0, "y_stop": 128,
                                      "z_start": 0, "z_stop": 16, "x_voxel_size": 4,
                                      "y_voxel_size": 4, "z_voxel_size": 40,
                                      "voxel_unit": "nanometers"})
    _project(relay, "collection/lab/experiment/ex/", {"coord_frame": "frame1",
                                                      "num_hierarchy_levels": 1})
    box = Box((0, 0, 0), (16, 128, 128))
    seen: set[str] = set()
    for round_ in range(4):
        _project(relay, "collection/lab/experiment/ex/channel/ch/",
                 {"type": "image", "datatype": "uint8"})
        for _ in range(4):  # a new channel: zeros on every worker, never the last one's data
            got = _read(relay, box, "lab/ex/ch", "uint8", seen)
            assert not got.any(), f"round {round_}: old bytes served"
        data = np.full(tuple(box.shape), 100 + round_, np.uint8)
        _write(relay, box, data, "lab/ex/ch")
        for _ in range(6):
            np.testing.assert_array_equal(_read(relay, box, "lab/ex/ch", "uint8", seen), data)
        _project(relay, "collection/lab/experiment/ex/channel/ch/", method="DELETE")
        for _ in range(4):
            assert _get(relay, _url(box, "lab/ex/ch")).status_code == 404

    def gone(res: httpx.Response) -> None:
        assert res.status_code == 404, res.text

    _from_every_worker(lambda: _get(relay, _url(box, "lab/ex/ch")), gone)
    # what every worker created is in the one state: listed by every worker
    for _ in range(6):
        assert _get(relay, "/v1/collection/").json()["collections"].count("lab") == 1
        assert _get(relay, "/v1/collection/lab/experiment/").json()["experiments"] == ["ex"]


def test_metadata_set_through_one_worker_is_read_through_the_other(relay: RelayProcess) -> None:
    for i in range(6):
        res = _get(relay, f"/v1/meta/c/e/img/?key=k{i}&value=v{i}", method="POST")
        assert res.status_code == 201, res.text
        for _ in range(4):
            keys = _get(relay, "/v1/meta/c/e/img/").json()["keys"]
            assert [f"k{j}" for j in range(i + 1)] == sorted(keys)


def test_one_metadata_key_posted_at_once_through_both_workers_is_created_once(
        relay: RelayProcess) -> None:
    # bossDB's POST /meta/ refuses a key that exists; two workers that each checked their own
    # copy of the state before either saved would both answer 201, the second value silently
    # replacing the first
    lock = threading.Lock()
    statuses: dict[str, list[int]] = {}
    seen: set[str] = set()
    keys: list[str] = []

    def post(key: str, n: int) -> None:
        res = _get(relay, f"/v1/meta/c/e/seg/?key={key}&value=v{n}", method="POST")
        with lock:
            statuses.setdefault(key, []).append(res.status_code)
            seen.add(res.headers["x-voxgate-worker"])

    rounds = 0
    while len(seen) < 2 and rounds < _ROUNDS:  # until both workers took part
        now = [f"race{rounds}x{i}" for i in range(24)]
        rounds += 1
        keys += now
        threads = [threading.Thread(target=post, args=(k, n)) for k in now for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(sorted(v) == [201] + [400] * 5 for v in statuses.values()), statuses
    assert len(seen) == 2, f"one worker answered all of {rounds} rounds"
    assert set(keys) <= set(_get(relay, "/v1/meta/c/e/seg/").json()["keys"])
    for key in keys:  # and the one that was created is the value every worker reads
        values = {_get(relay, f"/v1/meta/c/e/seg/?key={key}").json()["value"] for _ in range(2)}
        assert len(values) == 1, (key, values)
        deleted = [_get(relay, f"/v1/meta/c/e/seg/?key={key}", method="DELETE").status_code
                   for _ in range(2)]
        assert deleted == [204, 400]


def test_the_shared_disk_tier_stays_under_its_cap(relay: RelayProcess) -> None:
    seen: set[str] = set()
    for z in (0, 16):
        for y in range(0, 256, 64):
            _read(relay, Box((z, y, 0), (z + 16, y + 64, 256)), "c/e/seg", "uint64", seen)
    used = {int(_get(relay, "/metrics").json()["disk_bytes_used"]) for _ in range(6)}
    assert max(used) <= 64 * 2**20


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_every_process(tmp_path: Path, sig: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"zarr://{tmp_path}/img.zarr"
    voxgate.create(url, shape=(16, 64, 64), chunks=(16, 64, 64), dtype="uint8",
                   voxel_size=(1, 1, 1))
    # no state file, data root or disk cache: the state and the generations go to a
    # temporary directory of the parent's, removed when it exits
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    r = start_relay(_config(tmp_path, disk=False, channel=url), free_port())
    try:
        pids = _worker_pids(r)
        assert len(pids) == 2
        made = list(scratch.glob("voxgate-relay-*"))
        assert len(made) == 1 and (made[0] / ".voxgate-generations").is_dir()
        _project(r, "collection/kept/", {"description": ""})
        assert "kept" in _get(r, "/v1/collection/").json()["collections"]
        if sig == signal.SIGTERM:  # a worker that dies is started again
            victim = min(pids)
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while (victim in _worker_pids(r) or len(_worker_pids(r)) < 2) \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
            pids = _worker_pids(r)
            assert victim not in pids and len(pids) == 2
            # the new worker answers once it has started (imports take a moment): both do, and
            # every answer holds the state saved before the kill
            _wait_answered_by(r, pids, holding="kept")
        r.proc.send_signal(sig)
        assert r.proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if Path(f"/proc/{p}").exists()]
        assert "Traceback" not in r.log.read_text()
    finally:
        r.stop()  # (a no-op when it stopped; else not left running past a failure)
    assert not list(scratch.iterdir())


# -- the shared state file, two processes' views of it in one (flock is per open file) ----------
def test_state_files_merge_what_each_view_changed_and_reserve_atomically(tmp_path: Path) -> None:
    from voxgate.relay.statefile import StateFile

    empty: dict[str, Any] = {"collections": {}, "meta": {}, "reserved": {}, "deleted": []}
    one, two = StateFile(tmp_path / "s.json", empty), StateFile(tmp_path / "s.json", empty)
    with one.transaction() as st:
        st["collections"]["a"] = {"description": "1"}
        st["deleted"].append("old")
        one.save()
    two.refresh()
    assert two.data["collections"] == {"a": {"description": "1"}}
    store = two.data["meta"].setdefault("a", {})  # changed outside a transaction, as handlers do
    store["k"] = "v"
    with one.transaction() as st:  # meanwhile the other view saves other changes
        st["collections"]["b"] = {}
        st["deleted"].remove("old")
        st["deleted"].append("gone")
        one.save()
    two.refresh()  # takes them in, keeping its own unsaved change (and the dict it holds)
    assert two.data["meta"]["a"] is store and store == {"k": "v"}
    assert set(two.data["collections"]) == {"a", "b"} and two.data["deleted"] == ["gone"]
    two.save()
    one.refresh()
    assert one.data["meta"] == {"a": {"k": "v"}} and set(one.data["collections"]) == {"a", "b"}

    starts: list[int] = []
    errors: list[BaseException] = []

    def reserve(view: StateFile) -> None:
        try:
            for _ in range(200):
                with view.transaction() as st:
                    start = st["reserved"].get("x", 1)
                    st["reserved"]["x"] = start + 3
                    view.save()
                starts.append(start)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reserve, args=(v,)) for v in (one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    doubled = sorted({s for s in starts if starts.count(s) > 1})
    assert sorted(starts) == list(range(1, 1 + 3 * 400, 3)), (len(starts), doubled[:10])


def test_workers_in_the_config_and_the_configuration_handed_to_each_worker(
        tmp_path: Path) -> None:
    from voxgate.errors import InvalidRequestError
    from voxgate.relay.config import config_from_json, config_to_json, load_config

    cfg = tmp_path / "relay.toml"
    cfg.write_text(f"""
[server]
workers = "auto"
state_path = "state.json"
[cache]
disk_path = "cache"
[[channel]]
name = "c/e/img"
upstream = "zarr://{tmp_path}/img.zarr"
options = {{ missing = "error" }}
[auth]
tokens = {{ "t1" = "read", "t2" = {{ role = "read-write", collections = ["c"] }} }}
""")
    loaded = load_config(cfg)
    assert loaded.workers == len(os.sched_getaffinity(0))
    assert load_config(cfg, workers="3").workers == 3
    assert config_from_json(config_to_json(loaded)) == loaded  # tokens, paths, channels
    for bad in ("0", "two", "-1"):
        with pytest.raises(InvalidRequestError, match="workers must be a whole number"):
            load_config(cfg, workers=bad)


def test_a_worker_that_cannot_start_stops_the_relay_with_its_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    voxgate.create(f"zarr://{tmp_path}/data/c/e/img.zarr", shape=(16, 64, 64),
                   chunks=(16, 64, 64), dtype="uint8", voxel_size=(1, 1, 1))
    (tmp_path / "data" / ".voxgate-relay-state.json").write_text("{damaged")
    exe = Path(sys.executable).with_name("voxgate")
    done = subprocess.run([str(exe), "serve", "--data-root", str(tmp_path / "data"),
                           "--workers", "2", "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "is damaged" in done.stderr and "did not start" in done.stderr, done.stderr
    assert "workers ready" not in done.stderr
    assert "Fatal Python error" not in done.stderr and "Traceback" not in done.stderr
