"""Errors from inside the relay and from its upstreams: connections survive them, corrupt data is
said to be corrupt (and not retried), and no server path reaches the client."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import blosc
import httpx
import numpy as np
import pytest

import voxgate
from voxgate.errors import CapabilityNotSupportedError, CorruptChunkError, InvalidRequestError

from .conftest import RW, RelayProcess, start_relay_with_scheme
from .fault_remotes import SECRET

SHAPE = (32, 128, 128)


def start_fault_relay(cfg: Path) -> RelayProcess:
    return start_relay_with_scheme(cfg, 'faultfake', 'tests.relay.fault_remotes:FaultRemote')


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayProcess, Path]]:
    """Fault channels, and a precomputed upstream whose first chunk file is damaged."""
    d = tmp_path_factory.mktemp("upstream-errors")
    data = np.random.default_rng(2).integers(1, 255, SHAPE, dtype=np.uint8)
    vol = voxgate.create(f"precomputed://file://{d}/bad", shape=SHAPE, chunks=(16, 64, 64),
                         dtype="uint8", voxel_size=(40, 8, 8))
    vol[:] = data
    chunk = next((d / "bad").glob("*/0-64_0-64_0-16"))
    chunk.write_bytes(b"not the 65536 bytes of a raw chunk")
    multi = voxgate.create(f"zarr://{d}/multi.zarr", shape=(5, 9, 11), chunks=(4, 8, 8),
                           dtype="uint16", voxel_size=(40, 8, 8), num_channels=2)
    multi[:] = np.arange(2 * 5 * 9 * 11, dtype=np.uint16).reshape(2, 5, 9, 11)
    cfg = d / "relay.toml"
    cfg.write_text(f"""
[server]
upstream_timeout = 10
state_path = "{d / 'state.json'}"
[cache]
memory_bytes = "64 MiB"
[[channel]]
name = "f/e/bug"
upstream = "faultfake://bug"
[[channel]]
name = "f/e/partial"
upstream = "faultfake://partial"
[[channel]]
name = "f/e/corrupt"
upstream = "faultfake://corrupt"
[[channel]]
name = "f/e/unsupported"
upstream = "faultfake://unsupported"
[[channel]]
name = "f/e/nodep"
upstream = "faultfake://nodep"
[[channel]]
name = "f/e/disk"
upstream = "precomputed://file://{d}/bad"
[[channel]]
name = "f/e/multi"
upstream = "zarr://{d}/multi.zarr"
[auth]
tokens = {{ "{RW}" = "read-write" }}
public_read = true
""")
    r = start_fault_relay(cfg)
    yield r, d
    r.stop()


def no_paths(text: str, d: Path) -> None:
    for secret in (SECRET, str(d), os.path.realpath(d), "/tmp"):
        assert secret not in text, text


def cutout(ch: str, shape: tuple[int, int, int] = (4, 16, 16)) -> str:
    z, y, x = shape
    return f"/v1/cutout/f/e/{ch}/0/0:{x}/0:{y}/0:{z}/"


def body(shape: tuple[int, int, int] = (4, 16, 16)) -> bytes:
    return bytes(blosc.compress(np.ones(shape, np.uint8).tobytes(), typesize=1))


def client_port(res: httpx.Response) -> int:
    """The local port of the connection a response came on."""
    return int(res.extensions["network_stream"].get_extra_info("client_addr")[1])


def test_errors_leave_the_connection_usable(relay: tuple[RelayProcess, Path]) -> None:
    r, d = relay
    headers = {"Authorization": f"Token {RW}", "Content-Type": "application/blosc"}
    with httpx.Client(base_url=r.url, headers=headers, timeout=30) as http:
        first = http.get("/ping/")
        assert first.status_code == 200
        port = client_port(first)
        for method, url, status, code in (
            ("POST", cutout("bug"), 500, 9002),       # a bug in a Remote (a RuntimeError)
            ("POST", cutout("partial"), 500, 9002),   # a VoxgateError the relay cannot map
            # what the store cannot do, or not without a package: 501 (were 500 9002)
            ("POST", cutout("unsupported"), 501, 9000),
            ("POST", cutout("nodep"), 501, 9000),
            ("GET", cutout("corrupt"), 502, 5000),    # corrupt upstream data
            ("GET", cutout("disk"), 502, 5000),
            ("GET", "/v1/cutout/f/e/bug/0/0:1/0:1/0:99/", 400, 1001),
        ):
            res = http.request(method, url, content=body() if method == "POST" else None)
            assert res.status_code == status, (url, res.text)
            doc = res.json()
            assert doc["status"] == status and doc["code"] == code, doc
            no_paths(res.text, d)
            assert res.headers.get("connection", "").lower() != "close"
            again = http.get("/ping/")
            assert again.status_code == 200
            # the same connection, not a new one opened after the server closed the old
            assert client_port(again) == port, (url, "the connection was closed")
        # the data of a channel whose write failed still reads
        got = np.frombuffer(blosc.decompress(http.get(cutout("bug")).content), np.uint8)
        assert (got == 7).all()


def test_what_the_store_cannot_write_is_501_and_not_retried(
        relay: tuple[RelayProcess, Path]) -> None:
    """A write the upstream store refuses as unsupported (CapabilityNotSupportedError) or
    needing a package (MissingDependencyError) answered 500 "UNHANDLED_EXCEPTION": it is
    501 with the store's reason, and voxgate's bossdb:// client raises
    CapabilityNotSupportedError from it at once (500s are retried)."""
    r, d = relay
    with httpx.Client(base_url=r.url, timeout=30,
                      headers={"Authorization": f"Token {RW}",
                               "Content-Type": "application/blosc"}) as http:
        for ch, words in (("unsupported", "samples per pixel"), ("nodep", "imagecodecs")):
            res = http.post(cutout(ch), content=body())
            assert res.status_code == 501, res.text
            assert words in res.json()["message"]
            no_paths(res.text, d)
    vol = voxgate.open(f"bossdb://{r.url}/f/e/unsupported", token=RW, mode="r+")
    with pytest.raises(CapabilityNotSupportedError, match="samples per pixel"):
        vol[0:4, 0:16, 0:16] = np.ones((4, 16, 16), np.uint8)


def test_a_multichannel_upstream_is_refused_in_the_bossdb_dialect(
        relay: tuple[RelayProcess, Path]) -> None:
    """A bossDB channel holds one value per voxel.  A cutout of a 2-channel upstream answered
    200 with 2 x z x y x x voxels, which intern failed to reshape ("cannot reshape array");
    it is a 400 naming the precomputed dialect, which serves it (CloudVolume reads both
    channels)."""
    from cloudvolume import CloudVolume
    from intern.remote.boss import BossRemote
    from requests import HTTPError

    r, d = relay
    rmt = BossRemote({"protocol": "http", "host": f"127.0.0.1:{r.port}", "token": RW})
    chan = rmt.get_channel("multi", "f", "e")
    with pytest.raises(HTTPError, match="holds 2 values per voxel") as info:
        rmt.get_cutout(chan, 0, [0, 11], [0, 9], [0, 5])
    assert "precomputed/f/e/multi" in str(info.value)
    with pytest.raises(HTTPError, match="holds 2 values per voxel"):
        rmt.create_cutout(chan, 0, [0, 11], [0, 9], [0, 5], np.ones((5, 9, 11), np.uint16))
    vol = voxgate.open(f"bossdb://{r.url}/f/e/multi", token=RW)
    with pytest.raises(InvalidRequestError, match="holds 2 values per voxel"):
        vol.read()
    cv = CloudVolume(f"precomputed://{r.url}/precomputed/f/e/multi", progress=False)
    want = np.arange(2 * 5 * 9 * 11, dtype=np.uint16).reshape(2, 5, 9, 11)
    np.testing.assert_array_equal(np.asarray(cv[:, :, :]).transpose(3, 2, 1, 0), want)
    assert (d / "multi.zarr").exists()


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response (head, body) read off a socket by its Content-Length."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, "the server closed the connection"
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        data = sock.recv(65536)
        assert data, "the server closed the connection mid-body"
        rest += data
    return head, rest[:length]


def test_a_500_keeps_the_socket_open(relay: tuple[RelayProcess, Path]) -> None:
    """The same, checked on the socket: after the 500 the server still answers on it."""
    r, d = relay
    payload = body()
    post = (f"POST {cutout('bug')} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {RW}\r\n"
            f"Content-Type: application/blosc\r\nContent-Length: {len(payload)}\r\n\r\n"
            ).encode() + payload
    ping = b"GET /ping/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", r.port), timeout=30) as sock:
        sock.sendall(post)
        head, text = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 500 "), head
        assert json.loads(text)["code"] == 9002
        no_paths(text.decode(), d)
        sock.sendall(ping)
        head, text = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200 "), head


def upstream_errors(r: RelayProcess) -> int:
    res = httpx.get(r.url + "/metrics", headers={"Authorization": f"Token {RW}"})
    return int(res.json()["cache"]["upstream_errors"])


@pytest.mark.parametrize("ch", ["disk", "corrupt"])
def test_corrupt_upstream_data_is_said_to_be_corrupt(relay: tuple[RelayProcess, Path],
                                                      ch: str) -> None:
    r, d = relay
    with r.client(RW) as http:
        res = http.get(cutout(ch))
        assert res.status_code == 502, res.text
        assert res.headers["x-voxgate-error"] == "corrupt-data"
        doc = res.json()
        assert set(doc) == {"status", "code", "message"} and doc["code"] == 5000
        assert "corrupt" in doc["message"] and "not transient" in doc["message"]
        no_paths(res.text, d)
        if ch == "disk":  # names the chunk, relative to the upstream
            assert "f/e/disk" in doc["message"] and "0-64_0-64_0-16" in doc["message"]
        # the precomputed dialect answers the same
        info = http.get(f"/precomputed/f/e/{ch}/info").json()
        cx, cy, cz = info["scales"][0]["chunk_sizes"][0]
        sx, sy, sz = info["scales"][0]["size"]
        res = http.get(f"/precomputed/f/e/{ch}/s0/0-{min(cx, sx)}_0-{min(cy, sy)}_0-"
                       f"{min(cz, sz)}")
        assert res.status_code == 502 and res.headers["x-voxgate-error"] == "corrupt-data"
        assert "corrupt" in res.json()["message"]
        no_paths(res.text, d)


@pytest.mark.parametrize("ch", ["disk", "corrupt"])
def test_the_bossdb_client_raises_corrupt_chunk_without_retrying(
        relay: tuple[RelayProcess, Path], ch: str) -> None:
    r, d = relay
    vol = voxgate.open(f"bossdb://{r.url}/f/e/{ch}", token=RW)
    before = upstream_errors(r)
    with pytest.raises(CorruptChunkError) as info:
        vol[0:4, 0:16, 0:16].read()
    assert "corrupt" in str(info.value)
    no_paths(str(info.value), d)
    # one request reached the relay, which read the upstream once: no retries of either
    assert upstream_errors(r) - before == 1
