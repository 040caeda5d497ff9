"""Large cutouts at once: their working memory together stays within a per-process budget.

Found by this audit (2026-12-07), failing on the code before: a cutout may be up to
``max_cutout_bytes`` (520 MiB) and needs several times that while it is read, cached and
encoded, and nothing bounded the sum: 8 clients asking for 128 MiB cutouts at once took a relay
from 69 MiB to 1.7 GiB (8 x 512 MiB would be several GiB: an OOM kill of the relay and its
memory cache).  Now a large cutout (GET, POST, to_black) reserves 4 x its bytes of
``[server] max_inflight_bytes`` before it reads; one that does not fit waits its turn (FIFO),
then answers 503 with Retry-After; one larger than the whole budget runs alone; cutouts under
4 MiB never wait.  The budget is held here by POSTs whose bodies stop half way (a POST reserves
before it reads its body), so every wait is deterministic.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest

import voxgate
from voxgate.relay.config import SERVER_KEYS

from ..ports import free_port
from .conftest import RW, RelayProcess, start_relay

H = {"Authorization": f"Token {RW}"}
MiB = 2**20
SHAPE = (32, 512, 512)  # uint8: 8 MiB
BIG_Z = 20  # a cutout of 20 x 512 x 512 voxels: 5 MiB, reserving 4 x 5 = 20 MiB
BUDGETED = "max_inflight_bytes" in SERVER_KEYS  # (so the code before it starts these relays)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("budget-upstream")
    data = np.random.default_rng(11).integers(0, 255, SHAPE, dtype=np.uint8)
    vol = voxgate.create(f"zarr://{root}/img.zarr", shape=SHAPE, chunks=(8, 128, 128),
                         dtype="uint8", voxel_size=(40, 8, 8))
    vol[:] = data
    return root, data


def _relay(directory: Path, upstream: Path, budget: str | None, wait: float,
           monkeypatch: pytest.MonkeyPatch) -> RelayProcess:
    line = f'max_inflight_bytes = "{budget}"' if budget is not None and BUDGETED else ""
    cfg = directory / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
client_timeout = 30
state_path = "{directory / 'state.json'}"
{line}
[cache]
memory_bytes = "16 MiB"
[[channel]]
name = "lab/em/img"
upstream = "zarr://{upstream}/img.zarr"
[auth]
tokens = {{ "{RW}" = "read-write" }}
""")
    monkeypatch.setenv("VOXGATE_RELAY_INFLIGHT_WAIT_SECONDS", str(wait))
    return start_relay(cfg, free_port())


@pytest.fixture
def relays(tmp_path: Path, volume: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[Any]:
    started: list[RelayProcess] = []

    def make(budget: str | None, wait: float = 30.0) -> RelayProcess:
        d = tmp_path / f"relay{len(started)}"
        d.mkdir()
        r = _relay(d, volume[0], budget, wait, monkeypatch)
        started.append(r)
        return r

    yield make
    for s in _SOCKETS:
        s.close()
    _SOCKETS.clear()
    for r in started:
        r.stop()


def _path(z0: int, z1: int, y1: int = 512, x1: int = 512) -> str:
    return f"/v1/cutout/lab/em/img/0/0:{x1}/0:{y1}/{z0}:{z1}/"


#: the stalled POSTs' sockets, closed after each test (a relay stopping waits for them)
_SOCKETS: list[socket.socket] = []


class StalledPost:
    """A large POST (the data already there, so nothing changes) whose body stops half way:
    the relay has reserved its working memory and waits for the rest."""

    def __init__(self, relay: RelayProcess, data: np.ndarray, z0: int) -> None:
        box = data[z0:z0 + BIG_Z]
        self.body = blosc.compress(np.ascontiguousarray(box).tobytes(), typesize=1)
        head = (f"POST {_path(z0, z0 + BIG_Z)} HTTP/1.1\r\nHost: relay\r\n"
                f"Authorization: Token {RW}\r\nContent-Type: application/blosc\r\n"
                f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n").encode()
        self.sock = socket.create_connection(("127.0.0.1", relay.port), timeout=30)
        _SOCKETS.append(self.sock)
        self.sock.sendall(head + self.body[:1000])

    def finish(self) -> int:
        """Send the rest: the answer's status."""
        self.sock.sendall(self.body[1000:])
        answer = b""
        while b"\r\n" not in answer:
            got = self.sock.recv(4096)
            if not got:
                break
            answer += got
        self.sock.close()
        return int(answer.split()[1])


def _metrics(relay: RelayProcess, *, must: bool = True) -> dict[str, Any]:
    got = httpx.get(relay.url + "/metrics", headers=H, timeout=30).json()
    assert "inflight" in got or not must, "the relay reports no admission budget in /metrics"
    return dict(got.get("inflight", {}))


def _until(relay: RelayProcess, what: str, value: int, seconds: float = 20.0) -> None:
    """Wait until /metrics' inflight ``what`` is at least ``value`` (fail after ``seconds``);
    a relay with no budget in /metrics (the code before it) gets 1 s, so the assertions on
    what it does are reached."""
    deadline = time.monotonic() + seconds
    while (m := _metrics(relay, must=False)).get(what, value) < value:
        assert time.monotonic() < deadline, f"inflight {what} never reached {value}"
        time.sleep(0.05)
    if not m:
        time.sleep(1.0)


class Background:
    """GETs on threads of their own: their answers, once they have one."""

    def __init__(self, relay: RelayProcess, paths: list[str]) -> None:
        self.answers: dict[str, httpx.Response] = {}
        self.failures: list[BaseException] = []
        self.threads = [threading.Thread(target=self._get, args=(relay.url + p,), daemon=True)
                        for p in paths]
        for t in self.threads:
            t.start()

    def _get(self, url: str) -> None:
        try:
            self.answers[url] = httpx.get(url, headers=H, timeout=60)
        except httpx.HTTPError as exc:  # (the relay stopped: the test has failed already)
            self.failures.append(exc)

    def join(self) -> None:
        for t in self.threads:
            t.join(60)
        assert not any(t.is_alive() for t in self.threads)
        assert not self.failures, self.failures


def _check(got: httpx.Response, expected: np.ndarray) -> None:
    assert got.status_code == 200, got.text
    arr = np.frombuffer(blosc.decompress(got.content), np.uint8).reshape(expected.shape)
    np.testing.assert_array_equal(arr, expected)


def test_large_cutouts_wait_for_the_budget_and_then_all_succeed(
        relays: Any, volume: tuple[Path, np.ndarray]) -> None:
    """Fails on the old code: with the budget taken, large GETs were answered at once
    (nothing bounded the working memory of large cutouts together), and /metrics had no
    budget.  Now they wait, at most two at once (48 MiB of 20 MiB reservations), and all
    succeed with the right data once it is given back."""
    data = volume[1]
    r = relays("48 MiB")
    held = [StalledPost(r, data, 0), StalledPost(r, data, 12)]
    _until(r, "reserved_bytes", 40 * MiB)
    paths = [_path(z0, z0 + BIG_Z) for z0 in range(1, 7)]
    gets = Background(r, paths)
    _until(r, "waiting", 6)
    time.sleep(0.5)
    assert gets.answers == {}, "large cutouts were served past a budget that was taken"
    assert [p.finish() for p in held] == [201, 201]
    gets.join()
    for z0, p in zip(range(1, 7), paths, strict=True):
        _check(gets.answers[r.url + p], data[z0:z0 + BIG_Z])
    m = _metrics(r)
    assert m["budget_bytes"] == 48 * MiB
    assert 40 * MiB <= m["reserved_peak_bytes"] <= 48 * MiB
    assert m["admitted"] == 8 and m["waited"] == 6 and m["refused"] == 0
    assert m["reserved_bytes"] == 0 and m["waiting"] == 0


def test_a_cutout_past_the_wait_is_refused_with_503_and_retry_after(
        relays: Any, volume: tuple[Path, np.ndarray]) -> None:
    """Fails on the old code (the GET and the to_black were done at once): past the wait a
    large request answers 503 with Retry-After and a bossDB error naming the budget; the
    budget is whole again afterwards."""
    data = volume[1]
    r = relays("40 MiB", wait=1.0)
    held = [StalledPost(r, data, 0), StalledPost(r, data, 12)]
    _until(r, "reserved_bytes", 40 * MiB)
    with httpx.Client(base_url=r.url, headers=H, timeout=30) as c:
        got = c.get(_path(2, 2 + BIG_Z))
        black = c.put(f"/v1/cutout/to_black/lab/em/img/0/0:512/0:512/0:{BIG_Z}/")
    for answer in (got, black):
        assert answer.status_code == 503, answer.headers
        assert int(answer.headers["Retry-After"]) >= 1
        doc = answer.json()
        assert doc["status"] == 503 and doc["code"] == 5000
        assert "max_inflight_bytes" in doc["message"] and "busy" in doc["message"]
    assert [p.finish() for p in held] == [201, 201]
    m = _metrics(r)
    assert m["refused"] == 2 and m["reserved_bytes"] == 0 and m["waiting"] == 0
    _check(httpx.get(r.url + _path(2, 2 + BIG_Z), headers=H, timeout=30),
           data[2:2 + BIG_Z])


def test_a_cutout_larger_than_the_budget_is_served_alone(
        relays: Any, volume: tuple[Path, np.ndarray]) -> None:
    """Fails on the old code (no budget in /metrics; the GET did not wait): a cutout needing
    more than the whole budget (20 MiB of 8 MiB), within max_cutout_bytes, is still served,
    but only once nothing else holds the budget, and it holds all of it."""
    data = volume[1]
    r = relays("8 MiB")
    with httpx.Client(base_url=r.url, headers=H, timeout=30) as c:
        _check(c.get(_path(0, BIG_Z)), data[:BIG_Z])
    held = StalledPost(r, data, 12)
    _until(r, "reserved_bytes", 8 * MiB)
    gets = Background(r, [_path(3, 3 + BIG_Z), _path(4, 4 + BIG_Z)])
    _until(r, "waiting", 2)
    assert gets.answers == {}, "a cutout larger than the budget ran beside another"
    m = _metrics(r)
    assert m["reserved_peak_bytes"] == 8 * MiB and m["waited"] == 0
    assert held.finish() == 201
    gets.join()
    _check(gets.answers[r.url + _path(3, 3 + BIG_Z)], data[3:3 + BIG_Z])
    _check(gets.answers[r.url + _path(4, 4 + BIG_Z)], data[4:4 + BIG_Z])
    assert _metrics(r)["reserved_peak_bytes"] == 8 * MiB


def test_waiting_is_first_come_first_served(relays: Any,
                                            volume: tuple[Path, np.ndarray]) -> None:
    """Fails on the old code: a large cutout that would fit in what is left waits behind an
    earlier one that does not (else a stream of smaller large cutouts could keep a larger one
    waiting for good)."""
    data = volume[1]
    r = relays("48 MiB")
    held = StalledPost(r, data, 0)  # 20 MiB of 48: 28 left
    _until(r, "reserved_bytes", 20 * MiB)
    whole = Background(r, [_path(0, 32)])  # 8 MiB: 32 MiB reserved, does not fit
    _until(r, "waiting", 1)
    after = Background(r, [_path(5, 5 + BIG_Z)])  # 20 MiB: would fit, but came second
    _until(r, "waiting", 2)
    time.sleep(0.5)
    assert whole.answers == {} and after.answers == {}
    assert held.finish() == 201
    whole.join()
    after.join()
    _check(whole.answers[r.url + _path(0, 32)], data)
    _check(after.answers[r.url + _path(5, 5 + BIG_Z)], data[5:5 + BIG_Z])


def test_small_requests_do_not_wait_for_the_budget(relays: Any,
                                                   volume: tuple[Path, np.ndarray]) -> None:
    """Fails on the old code only because the large cutout was not held (small requests were
    served then too): with the budget taken and a large cutout waiting, cutouts under 4 MiB,
    precomputed chunks and the other routes are answered at once, with the right data."""
    data = volume[1]
    r = relays("40 MiB")
    held = [StalledPost(r, data, 0), StalledPost(r, data, 12)]
    _until(r, "reserved_bytes", 40 * MiB)
    big = Background(r, [_path(1, 1 + BIG_Z)])
    _until(r, "waiting", 1)
    with httpx.Client(base_url=r.url, headers=H, timeout=15) as c:
        for z0 in range(0, 30, 3):
            _check(c.get(_path(z0, z0 + 2, y1=256, x1=300)), data[z0:z0 + 2, :256, :300])
        # 3 MiB (12 x 512 x 512): under the 4 MiB below which cutouts never wait
        _check(c.get(_path(4, 16)), data[4:16])
        info = c.get("/precomputed/lab/em/img/info").json()
        key = info["scales"][0]["key"]
        cx, cy, cz = info["scales"][0]["chunk_sizes"][0]
        chunk = c.get(f"/precomputed/lab/em/img/{key}/0-{cx}_0-{cy}_0-{cz}",
                      headers={"Accept-Encoding": "identity"})
        assert chunk.status_code == 200, chunk.text
        assert chunk.content == data[:cz, :cy, :cx].tobytes()
        assert c.get("/ping/").status_code == 200
    assert big.answers == {} and _metrics(r)["waiting"] == 1
    assert [p.finish() for p in held] == [201, 201]
    big.join()
    _check(big.answers[r.url + _path(1, 1 + BIG_Z)], data[1:1 + BIG_Z])


def test_the_budget_setting(relays: Any, tmp_path: Path, volume: tuple[Path, np.ndarray],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails on the old code (no such setting): ``[server] max_inflight_bytes`` is a size like
    the others, at least 1 byte; unset it is 4 x max_cutout_bytes; each of several worker
    processes has it whole."""
    from voxgate.relay.config import load_config

    if not BUDGETED:
        pytest.fail("no [server] max_inflight_bytes setting")
    for bad in ('"0"', '"lots"', "-5", "true"):
        cfg = tmp_path / "bad.toml"
        cfg.write_text(f"[server]\nmax_inflight_bytes = {bad}\n")
        with pytest.raises(voxgate.errors.InvalidRequestError, match="max_inflight_bytes"):
            load_config(cfg)
    cfg = tmp_path / "ok.toml"
    cfg.write_text('[server]\nmax_inflight_bytes = "3 GiB"\n')
    assert load_config(cfg).max_inflight_bytes == 3 * 2**30
    assert _metrics(relays(None))["budget_bytes"] == 4 * 520 * MiB
    d = tmp_path / "two"
    d.mkdir()
    cfg = d / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
workers = 2
state_path = "{d / 'state.json'}"
max_inflight_bytes = "24 MiB"
[cache]
memory_bytes = "16 MiB"
[[channel]]
name = "lab/em/img"
upstream = "zarr://{volume[0]}/img.zarr"
[auth]
tokens = {{ "{RW}" = "read-write" }}
""")
    r = start_relay(cfg, free_port())
    try:
        seen: dict[int, int] = {}
        for _ in range(40):
            with httpx.Client(base_url=r.url, headers=H, timeout=30) as c:
                doc = c.get("/metrics").json()
            seen[doc["worker"]["pid"]] = doc["inflight"]["budget_bytes"]
            if len(seen) == 2:
                break
        assert set(seen.values()) == {24 * MiB}
    finally:
        r.stop()
