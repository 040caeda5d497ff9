"""bossdb:// against a real voxgate relay (the bossDB-dialect server), with faults injected."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

import voxgate
from voxgate.errors import (
    AuthenticationError,
    CorruptChunkError,
    InvalidRequestError,
    RemoteNotFoundError,
    RemoteUnavailableError,
)
from voxgate.geometry import Box
from voxgate.remotes.boss import BossProject, boss_settings
from voxgate.testing import RemoteTests, remote_state_machine

from ..relay.conftest import RO, RW, RelayProcess, free_port, token_relay_in_env
from .flaky_proxy import FlakyProxy, Rule, flaky_proxy


@pytest.fixture(scope="module")
def boss_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    d = tmp_path_factory.mktemp("boss")
    with token_relay_in_env(d, "256 MiB") as r:
        yield r


class TestBossDBRemote(RemoteTests):
    dtypes = ("uint8", "uint16", "uint64")
    has_chunk_files = False  # the server keeps the chunks; its faults are tested below
    keeps_chunks = False  # bossDB stores 512 x 512 x 16 cuboids whatever create asks for

    @pytest.fixture(autouse=True)
    def _server(self, boss_server: RelayProcess) -> None:
        self.base = boss_server.url

    def url(self, tmp_path: Path, name: str) -> str:
        exp = "".join(ch if ch.isalnum() else "_" for ch in tmp_path.name)
        return f"bossdb://{self.base}/conformance/{exp}/{name.replace('-', '_')}"


@pytest.fixture
def em(boss_server: RelayProcess, tmp_path: Path) -> tuple[voxgate.Volume, np.ndarray]:
    exp = "".join(ch if ch.isalnum() else "_" for ch in tmp_path.name)
    vol = voxgate.create(f"bossdb://{boss_server.url}/tests/{exp}/em", shape=(40, 1100, 700),
                         chunks=(16, 512, 512), dtype="uint8", voxel_size=(40, 8, 8))
    data = np.random.default_rng(0).integers(0, 255, vol.shape, dtype=np.uint8)
    vol[:] = data
    return vol, data


def test_big_cutouts_are_split_and_reassembled(boss_server: RelayProcess,
                                               em: tuple[voxgate.Volume, np.ndarray]) -> None:
    vol, data = em
    with flaky_proxy(boss_server.url) as proxy:
        url = vol.url.replace(boss_server.url, proxy.url)
        v = voxgate.open(url)
        np.testing.assert_array_equal(v[3:37, 100:1090, 5:700].read(), data[3:37, 100:1090, 5:700])
        n = proxy.count("GET /v1/cutout/")
        assert n > 1  # split into cuboid-aligned requests
        for line in proxy.requests:
            if line.startswith("GET /v1/cutout/"):
                x, y, z = line.split("/")[7:10]
                for axis, grid, (lo, hi) in ((x, 512, (5, 700)), (y, 512, (100, 1090)),
                                             (z, 16, (3, 37))):
                    a, b = (int(p) for p in axis.split(":"))
                    # on the cuboid grid, except where the box itself starts or stops
                    assert a % grid == 0 or a == lo, line
                    assert b % grid == 0 or b == hi, line


def test_writes_split_and_zeros_are_sent(em: tuple[voxgate.Volume, np.ndarray]) -> None:
    vol, data = em
    w = voxgate.open(vol.url, mode="r+")
    w[0:40, 0:1100, 0:700] = 0  # intern silently skipped all-zero blocks
    assert not voxgate.open(vol.url).read().any()
    w[5:35, 300:1000, 100:650] = data[5:35, 300:1000, 100:650]
    expected = np.zeros_like(data)
    expected[5:35, 300:1000, 100:650] = data[5:35, 300:1000, 100:650]
    np.testing.assert_array_equal(voxgate.open(vol.url).read(), expected)


def test_server_side_ids_bbox_reserve(boss_server: RelayProcess, tmp_path: Path) -> None:
    exp = "".join(ch if ch.isalnum() else "_" for ch in tmp_path.name)
    seg = voxgate.create(f"bossdb://{boss_server.url}/tests/{exp}/seg", shape=(20, 64, 64),
                         chunks=(16, 64, 64), dtype="uint64", voxel_size=(8, 8, 8),
                         kind="segmentation")
    seg[2:5, 10:20, 30:40] = 2**60 + 1
    seg[7:9, 0:5, 0:5] = 3
    remote = seg.remote
    assert voxgate.has_capability(remote, "server_ids")
    np.testing.assert_array_equal(remote.ids_in(Box((0, 0, 0), (20, 64, 64))),
                                  np.array([3, 2**60 + 1], dtype=np.uint64))
    assert remote.bounding_box(2**60 + 1) == Box((2, 10, 30), (5, 20, 40))
    start = remote.reserve_ids(10)
    assert start > 2**60 + 1 and remote.reserve_ids(1) == start + 10


def test_project_service(boss_server: RelayProcess, tmp_path: Path) -> None:
    p = BossProject(boss_server.url, token=RW)
    p.create_collection("proj", "a collection")
    assert "proj" in p.list_collections()
    assert p.get_collection("proj")["description"] == "a collection"
    p.update_collection("proj", description="changed")
    assert p.get_collection("proj")["description"] == "changed"
    p.create_coordinate_frame("projframe", Box((0, 0, 0), (10, 20, 30)), (40, 4, 4))
    frame = p.get_coordinate_frame("projframe")
    assert (frame["x_stop"], frame["y_stop"], frame["z_stop"]) == (30, 20, 10)
    p.create_experiment("proj", "e1", "projframe", num_hierarchy_levels=2)
    assert p.list_experiments("proj") == ["e1"]
    p.create_channel("proj", "e1", "img", datatype="uint16")
    assert p.get_channel("proj", "e1", "img")["datatype"] == "uint16"
    md = p.metadata("proj", "e1", "img")
    md["key"] = "value"
    md["key"] = "value2"
    assert dict(md) == {"key": "value2"}
    del md["key"]
    assert len(md) == 0
    with pytest.raises(KeyError):
        md["missing"]
    vol = voxgate.open(f"bossdb://{boss_server.url}/proj/e1/img")
    assert vol.shape == (10, 20, 30) and len(vol.scales) == 2 and vol.dtype == np.uint16
    p.delete_channel("proj", "e1", "img")
    p.delete_experiment("proj", "e1")
    p.delete_coordinate_frame("projframe")
    p.delete_collection("proj")
    assert "proj" not in p.list_collections()
    with pytest.raises(InvalidRequestError, match="hierarchy_method"):
        p.create_experiment("proj", "e2", "projframe", hierarchy_method="near_iso")


def test_names_are_checked_before_any_request() -> None:
    with pytest.raises(InvalidRequestError, match="not valid"):
        voxgate.open("bossdb://http://127.0.0.1:9/coll/exp/bad name")
    with pytest.raises(InvalidRequestError, match="collection/experiment/channel"):
        voxgate.open("bossdb://http://127.0.0.1:9/only/two")
    with pytest.raises(InvalidRequestError):
        voxgate.open("bossdb://c/e/ch", colour="red")


def test_configuration_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("VOXGATE_BOSS_URL", "VOXGATE_BOSS_TOKEN", "INTERN_HOST", "INTERN_TOKEN",
                "INTERN_PROTOCOL", "VOXGATE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    assert boss_settings().url == "https://api.bossdb.io" and boss_settings().token == "public"
    (tmp_path / ".intern").mkdir()
    (tmp_path / ".intern" / "intern.cfg").write_text(
        "[Default]\nprotocol = http\nhost = intern-host:5000\ntoken = intern-token\n")
    s = boss_settings()
    assert (s.url, s.token) == ("http://intern-host:5000", "intern-token")
    (tmp_path / ".config" / "voxgate").mkdir(parents=True)
    (tmp_path / ".config" / "voxgate" / "config.toml").write_text(
        '[bossdb]\nurl = "http://voxgate-host"\ntoken = "file-token"\n')
    s = boss_settings()
    assert (s.url, s.token) == ("http://voxgate-host", "file-token")
    monkeypatch.setenv("INTERN_HOST", "env-host")
    monkeypatch.setenv("INTERN_TOKEN", "env-token")
    s = boss_settings()
    assert (s.url, s.token) == ("https://env-host", "env-token")
    monkeypatch.setenv("VOXGATE_BOSS_URL", "http://vg-env")
    assert boss_settings().url == "http://vg-env"
    s = boss_settings("http://explicit", "explicit-token")
    assert (s.url, s.token) == ("http://explicit", "explicit-token")
    assert "explicit-token" not in repr(s)


def test_token_never_appears(boss_server: RelayProcess, em: tuple[voxgate.Volume, np.ndarray]
                             ) -> None:
    vol, _ = em
    secret = "not-the-real-token-xyz"
    with pytest.raises(AuthenticationError) as info:
        voxgate.open(vol.url, token=secret)
    assert secret not in str(info.value)
    ok = voxgate.open(vol.url, token=RO)
    for text in (repr(ok), repr(ok.remote), str(ok.remote.spec()), repr(ok.remote.client),
                 repr(ok.remote.project), repr(ok.remote.settings)):
        assert RO not in text


@pytest.fixture
def proxy(boss_server: RelayProcess) -> Iterator[FlakyProxy]:
    with flaky_proxy(boss_server.url) as p:
        yield p


def _via(proxy: FlakyProxy, vol: voxgate.Volume, **options: object) -> voxgate.Volume:
    return voxgate.open(vol.url.replace(proxy.target, proxy.url), **options)  # type: ignore[arg-type]


def test_retries_5xx_then_succeeds(proxy: FlakyProxy, em: tuple[voxgate.Volume, np.ndarray]
                                   ) -> None:
    vol, data = em
    v = _via(proxy, vol)
    proxy.add(Rule("GET /v1/cutout/", "status", times=2, status=503))
    np.testing.assert_array_equal(v[0:16, 0:512, 0:512].read(), data[0:16, 0:512, 0:512])
    assert proxy.count("GET /v1/cutout/") == 3


@pytest.mark.parametrize(("status", "error"), [(401, AuthenticationError),
                                               (403, AuthenticationError),
                                               (404, RemoteNotFoundError),
                                               (413, InvalidRequestError)])
def test_client_errors_are_not_retried(proxy: FlakyProxy, em: tuple[voxgate.Volume, np.ndarray],
                                       status: int, error: type[Exception]) -> None:
    vol, _ = em
    v = _via(proxy, vol)
    proxy.add(Rule("GET /v1/cutout/", "status", status=status))
    with pytest.raises(error, match=str(status)):
        v[0:16, 0:512, 0:512].read()
    assert proxy.count("GET /v1/cutout/") == 1


def test_down_server(em: tuple[voxgate.Volume, np.ndarray]) -> None:
    vol, _ = em
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(RemoteUnavailableError, match="attempts"):
        voxgate.open(vol.url.replace(vol.url.split("/tests/")[0].removeprefix("bossdb://"), dead))
    assert time.monotonic() - t0 < 60  # bounded retries (a generous ceiling, not a window)


def test_connection_closed_mid_body(proxy: FlakyProxy, em: tuple[voxgate.Volume, np.ndarray]
                                    ) -> None:
    vol, data = em
    v = _via(proxy, vol)
    proxy.add(Rule("GET /v1/cutout/", "truncate", times=1))
    np.testing.assert_array_equal(v[0:16, 0:512, 0:512].read(), data[0:16, 0:512, 0:512])
    proxy.add(Rule("GET /v1/cutout/", "close"))
    with pytest.raises(RemoteUnavailableError):
        v[0:16, 0:512, 0:512].read()


def test_wrong_body_length_and_garbage(proxy: FlakyProxy, em: tuple[voxgate.Volume, np.ndarray]
                                       ) -> None:
    vol, _ = em
    v = _via(proxy, vol)
    proxy.add(Rule("GET /v1/cutout/", "wrong_length", times=1))
    with pytest.raises(CorruptChunkError, match="bytes"):
        v[0:16, 0:512, 0:512].read()
    proxy.add(Rule("GET /v1/cutout/", "garbage", times=1))
    with pytest.raises(CorruptChunkError, match="blosc"):
        v[0:16, 0:512, 0:512].read()


def test_partial_failure_returns_nothing(proxy: FlakyProxy,
                                        em: tuple[voxgate.Volume, np.ndarray]) -> None:
    vol, _ = em
    v = _via(proxy, vol)
    proxy.add(Rule("/1024:1100/", "status", status=500))  # one row of blocks always fails
    with pytest.raises(RemoteUnavailableError) as info:
        v.read()
    assert any("no partial data" in n for n in getattr(info.value, "__notes__", []))


def test_slow_server_times_out(proxy: FlakyProxy, em: tuple[voxgate.Volume, np.ndarray]) -> None:
    vol, _ = em
    v = _via(proxy, vol, timeout=0.5)
    proxy.add(Rule("GET /v1/cutout/", "slow", delay=3.0))
    t0 = time.monotonic()
    with pytest.raises(RemoteUnavailableError, match="timed out"):
        v[0:16, 0:512, 0:512].read()
    assert time.monotonic() - t0 < 60  # gave up (a generous ceiling, not a window)


def test_cutout_leaving_the_frame(em: tuple[voxgate.Volume, np.ndarray]) -> None:
    vol, _ = em
    with pytest.raises(voxgate.errors.OutOfBoundsError):
        vol[0:41]
    raw = vol.remote
    with pytest.raises(InvalidRequestError, match="400"):
        raw.read(Box((0, 0, 0), (41, 4, 4)))


def _sm_url(name: str) -> str:
    base = os.environ["VOXGATE_TEST_BOSS_URL"]
    return f"bossdb://{base}/statemachine/{name.replace('-', '_')}/vol"


@pytest.fixture(autouse=True)
def _boss_url_for_state_machine(boss_server: RelayProcess,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGATE_TEST_BOSS_URL", boss_server.url)


TestBossStateMachine = remote_state_machine(_sm_url, dtype="uint16").TestCase
TestBossStateMachine.settings = settings(max_examples=5, stateful_step_count=8, deadline=None)


# -- connection errors name the server; a name that does not resolve is not retried ------------
@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts host name lookups of *.invalid and api.bossdb.io, which fail as an unknown name
    does (socket.gaierror) without asking any DNS server; other names resolve as usual."""
    import socket

    calls: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if isinstance(host, str) and (host.endswith(".invalid") or host == "api.bossdb.io"):
            calls.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def test_unresolvable_host_fails_at_once_and_names_it(lookups: list[str]) -> None:
    with pytest.raises(RemoteUnavailableError) as info:
        voxgate.open("bossdb://http://nonexistent.invalid:8080/lab/em/raw")
    assert lookups == ["nonexistent.invalid"]  # one attempt: not retried
    msg = str(info.value)
    assert "could not reach nonexistent.invalid:8080" in msg and "does not resolve" in msg
    with pytest.raises(RemoteUnavailableError, match=r"nonexistent\.invalid"):
        BossProject("https://nonexistent.invalid").list_collections()
    assert lookups == ["nonexistent.invalid"] * 2


def test_default_host_is_api_bossdb_io_and_named_when_unreachable(
        lookups: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("VOXGATE_BOSS_URL", "VOXGATE_BOSS_TOKEN", "INTERN_HOST", "INTERN_TOKEN",
                "INTERN_PROTOCOL", "VOXGATE_CONFIG", "INTERN_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    with pytest.raises(RemoteUnavailableError) as info:
        voxgate.open("bossdb://lab/em_2024/raw")  # no server in the URL: api.bossdb.io
    assert lookups == ["api.bossdb.io"]
    msg = str(info.value)
    assert "could not reach api.bossdb.io (the default bossDB host;" in msg
    assert "bossdb://https://HOST/collection/experiment/channel" in msg


def test_refused_connection_is_retried_and_names_the_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    port = free_port()  # nothing listens there
    attempts: list[object] = []
    real = socket.create_connection

    def create_connection(address: tuple[str, int], *args: object, **kwargs: object) -> object:
        if address[1] == port:
            attempts.append(address)
        return real(address, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "create_connection", create_connection)
    with pytest.raises(RemoteUnavailableError) as info:
        voxgate.open(f"bossdb://http://127.0.0.1:{port}/lab/em/raw")
    assert len(attempts) == 5  # a refused connection may be a restart: 4 retries
    msg = str(info.value)
    assert f"could not reach 127.0.0.1:{port} (the bossDB server named in the URL" in msg


def test_bulk_bodies_are_read_without_httpx_unless_a_proxy_applies(
        em: tuple[voxgate.Volume, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    """Cutout bodies are read through urllib3 straight into their buffer (httpx spent about 6x
    the CPU receiving them: most of a bossdb:// read's client time); a proxy the environment
    names for the server is httpx's to use, so those requests stay with httpx."""
    from voxgate.remotes import _http

    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    vol, data = em
    calls: list[str] = []
    real = _http.HTTPClient._bulk_into

    def spy(self, method, path, into, headers):  # type: ignore[no-untyped-def]
        calls.append(path)
        return real(self, method, path, into, headers)

    monkeypatch.setattr(_http.HTTPClient, "_bulk_into", spy)
    np.testing.assert_array_equal(vol.read(), data)
    assert calls and all("/cutout/" in p for p in calls)
    assert not _http._proxied(vol.url.split("://", 1)[1])
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    assert _http._proxied("http://data.example.org:8080")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert not _http._proxied("http://127.0.0.1:8080")
    # where a proxy applies, the same read streams through httpx, to the same result
    monkeypatch.setattr(_http, "_proxied", lambda url: True)
    calls.clear()
    np.testing.assert_array_equal(vol.read(), data)
    assert not calls


def test_create_exist_ok_checks_the_channel(boss_server: RelayProcess, tmp_path: Path) -> None:
    """create(..., exist_ok=True) on a channel that exists hands it back only when it holds
    what was asked for (it returned any channel there, a uint8 one for a uint16 request)."""
    from .test_create_existing import assert_exist_ok_checks

    exp = "".join(ch if ch.isalnum() else "_" for ch in tmp_path.name)
    assert_exist_ok_checks(f"bossdb://{boss_server.url}/tests/{exp}/img", (4, 40, 30),
                           (16, 512, 512))
    # an annotation channel is uint64 whatever was asked: the same request again is accepted
    seg = f"bossdb://{boss_server.url}/tests/{exp}/seg"
    geometry = {"shape": (4, 40, 30), "chunks": (16, 512, 512), "voxel_size": (40, 8, 8)}
    made = voxgate.create(seg, dtype="uint64", kind="segmentation", **geometry)
    again = voxgate.create(seg, dtype="uint64", kind="segmentation", exist_ok=True, **geometry)
    assert made.dtype == again.dtype == np.uint64
