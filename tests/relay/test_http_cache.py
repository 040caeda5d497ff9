"""The relay behind a standard HTTP cache (issue 15, item 3): strong ETags and Cache-Control on
cutouts and precomputed chunks, conditional GETs answered 304 without reading data, every write
through the relay changing the ETags of the channel's responses (generations are whole-channel:
a write changes every ETag of its channel, overlapping or not), a deleted and recreated channel
never repeating an ETag, and Debian's nginx as a caching proxy in front of two relays that share
one upstream and one generations directory (docs/relay.md, "Behind an HTTP cache")."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blosc
import httpx
import numpy as np
import pytest

import voxgate
from voxgate.geometry import Box

from .conftest import RW, RelayProcess, free_port, start_relay

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SHAPE = (32, 192, 192)
CHUNKS = (16, 64, 64)
A = Box((0, 0, 0), (16, 64, 64))        # one region
NEAR = Box((8, 32, 32), (24, 96, 96))   # overlaps A
FAR = Box((16, 128, 128), (32, 192, 192))  # overlaps neither
CHUNK = Box((0, 0, 0), (32, 128, 192))  # the precomputed chunk (a 1 MiB cache cell) holding A


def _upstream(root: Path) -> tuple[str, np.ndarray]:
    data = np.random.default_rng(15).integers(1, 250, SHAPE, dtype=np.uint8)
    url = f"zarr://{root}/img.zarr"
    vol = voxgate.create(url, shape=SHAPE, chunks=CHUNKS, dtype="uint8", voxel_size=(40, 8, 8))
    vol[:] = data
    # the same data again, for the read-only channel (a writable channel of the same upstream
    # would make its responses revalidated on every use too)
    voxgate.create(url.replace("img.zarr", "ro.zarr"), shape=SHAPE, chunks=CHUNKS,
                   dtype="uint8", voxel_size=(40, 8, 8))[:] = data
    return url, data


def _config(d: Path, upstream: str, generations: Path | None = None) -> Path:
    """A relay of ``upstream`` as c/e/img (and c/e/img_ro, read-only), and of its copy as
    c/e/ro, read-only (reusable for an hour)."""
    d.mkdir(parents=True, exist_ok=True)
    gens = f'generations_path = "{generations}"' if generations is not None else ""
    gens += "\nread_only_max_age = 3600"
    cfg = d / "relay.toml"
    cfg.write_text(f"""
[server]
upstream_timeout = 30
state_path = "{d / 'state.json'}"
{gens}
[cache]
memory_bytes = "64 MiB"
disk_path = "{d / 'cache'}"
[[channel]]
name = "c/e/img"
upstream = "{upstream}"
[[channel]]
name = "c/e/ro"
upstream = "{upstream.replace('img.zarr', 'ro.zarr')}"
writable = false
[[channel]]
name = "c/e/img_ro"
upstream = "{upstream}"
writable = false
[auth]
public_read = false
tokens = {{ "{RW}" = "read-write" }}
""")
    return cfg


def _cutout_url(box: Box, path: str = "c/e/img") -> str:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return f"/v1/cutout/{path}/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"


def _chunk_url(box: Box) -> str:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return f"/precomputed/c/e/img/s0/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}"


def _decode(res: httpx.Response, box: Box) -> np.ndarray:
    assert res.status_code == 200, res.text
    return np.frombuffer(blosc.decompress(res.content), np.uint8).reshape(tuple(box.shape))


def _post(http: httpx.Client, box: Box, arr: np.ndarray, path: str = "c/e/img") -> None:
    res = http.post(_cutout_url(box, path), content=blosc.compress(arr.tobytes(), typesize=1),
                    headers={"Content-Type": "application/blosc"})
    assert res.status_code == 201, res.text


def _etag(res: httpx.Response) -> str:
    assert res.status_code == 200, res.text
    etag = res.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"'), etag  # strong: no W/ prefix
    return etag


@pytest.fixture
def one(tmp_path: Path) -> Iterator[tuple[RelayProcess, np.ndarray]]:
    url, data = _upstream(tmp_path)
    r = start_relay(_config(tmp_path / "r", url), free_port())
    yield r, data
    r.stop()


# -- one relay ----------------------------------------------------------------------------------
def test_cutouts_have_a_strong_etag_and_a_conditional_get_answers_304(one) -> None:  # type: ignore[no-untyped-def]
    relay, data = one
    with relay.client() as http:
        first = http.get(_cutout_url(A))
        etag = _etag(first)
        np.testing.assert_array_equal(_decode(first, A), data[A.slices()])
        # writable: revalidated on every use, whatever read_only_max_age says
        assert first.headers["cache-control"] == "public, no-cache"
        assert "accept" in first.headers["vary"].lower()
        again = http.get(_cutout_url(A))
        assert again.headers["etag"] == etag and again.content == first.content
        served = http.get("/metrics").json()["cache"]["bytes_served"]
        for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            res = http.get(_cutout_url(A), headers={"If-None-Match": tag})
            assert res.status_code == 304, (tag, res.status_code)
            assert res.content == b""
            assert res.headers["etag"] == etag
        # answered without reading a voxel
        assert http.get("/metrics").json()["cache"]["bytes_served"] == served
        # a stale or foreign ETag gets the data
        res = http.get(_cutout_url(A), headers={"If-None-Match": '"vg-old"'})
        assert res.status_code == 200 and res.content == first.content
        # another region, another encoding: other ETags
        assert _etag(http.get(_cutout_url(NEAR))) != etag
        npy = http.get(_cutout_url(A), headers={"Accept": "application/npygz"})
        assert _etag(npy) != etag


def test_precomputed_chunks_have_a_strong_etag_and_a_conditional_get_answers_304(one) -> None:  # type: ignore[no-untyped-def]
    relay, data = one
    with relay.client() as http:
        plain = http.get(_chunk_url(CHUNK), headers={"Accept-Encoding": "identity"})
        etag = _etag(plain)
        assert plain.content == data[CHUNK.slices()].tobytes()  # raw: x-fastest = C-order ZYX
        assert "no-cache" in plain.headers["cache-control"]
        gz = httpx.get(relay.url + _chunk_url(CHUNK), headers={"Authorization": f"Token {RW}",
                                                           "Accept-Encoding": "gzip"})
        gz_etag = _etag(gz)
        assert gz_etag != etag  # other bytes, another ETag
        # a strong ETag: the same bytes each time (gzip without a time stamp)
        gz2 = httpx.get(relay.url + _chunk_url(CHUNK), headers={"Authorization": f"Token {RW}",
                                                            "Accept-Encoding": "gzip"})
        assert gz2.headers["etag"] == gz_etag
        res = http.get(_chunk_url(CHUNK), headers={"Accept-Encoding": "identity",
                                               "If-None-Match": etag})
        assert res.status_code == 304 and res.content == b""
        res = http.get(_chunk_url(CHUNK), headers={"Accept-Encoding": "identity",
                                               "If-None-Match": gz_etag})
        assert res.status_code == 200  # the gzip variant's ETag is not this one's


def test_gzip_chunks_are_the_same_bytes_every_time(one) -> None:  # type: ignore[no-untyped-def]
    relay, _ = one
    bodies = set()
    for _ in range(2):
        with httpx.stream("GET", relay.url + _chunk_url(CHUNK),
                          headers={"Authorization": f"Token {RW}",
                                   "Accept-Encoding": "gzip"}) as res:
            assert res.headers["content-encoding"] == "gzip"
            bodies.add(b"".join(res.iter_raw()))
        time.sleep(1.1)  # gzip's header holds seconds: a time stamp would differ now
    assert len(bodies) == 1


def test_a_write_changes_the_etag_of_every_response_of_its_channel(one) -> None:  # type: ignore[no-untyped-def]
    relay, data = one
    with relay.client() as http:
        before = {name: _etag(http.get(url, headers={"Accept-Encoding": "identity"}))
                  for name, url in (("a", _cutout_url(A)), ("near", _cutout_url(NEAR)),
                                    ("far", _cutout_url(FAR)), ("chunk", _chunk_url(CHUNK)))}
        cells = http.get("/metrics").json()["cache"]["upstream_cells"]
        new = np.full(tuple(A.shape), 7, np.uint8)
        _post(http, A, new)
        # this relay's own write keeps its cached cells current: FAR still comes from them
        np.testing.assert_array_equal(_decode(http.get(_cutout_url(FAR)), FAR),
                                      data[FAR.slices()])
        assert http.get("/metrics").json()["cache"]["upstream_cells"] == cells
        after = {}
        for name, url in (("a", _cutout_url(A)), ("near", _cutout_url(NEAR)),
                          ("far", _cutout_url(FAR)), ("chunk", _chunk_url(CHUNK))):
            # revalidation with the old ETag gets the new data, never a 304
            res = http.get(url, headers={"If-None-Match": before[name],
                                         "Accept-Encoding": "identity"})
            after[name] = _etag(res)
            if name == "a":
                np.testing.assert_array_equal(_decode(res, A), new)
            if name == "chunk":
                expected = data[CHUNK.slices()].copy()
                expected[A.slices()] = 7
                assert res.content == expected.tobytes()
        # whole-channel generations: overlapping or not, every ETag changed
        assert all(after[k] != before[k] for k in before), (before, after)
        # and the new ones are stable until the next write
        res = http.get(_cutout_url(NEAR), headers={"If-None-Match": after["near"]})
        assert res.status_code == 304
        expected = data[NEAR.slices()].copy()
        expected[A.intersect(NEAR).slices(NEAR.start)] = 7
        np.testing.assert_array_equal(_decode(http.get(_cutout_url(NEAR)), NEAR), expected)
        # to_black is a write too
        (z0, y0, x0), (z1, y1, x1) = FAR.start, FAR.stop
        res = http.put(f"/v1/cutout/to_black/c/e/img/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/")
        assert res.status_code == 200, res.text
        assert _etag(http.get(_cutout_url(FAR))) != after["far"]


def test_generations_survive_a_restart_and_a_restart_without_them_never_repeats_an_etag(
        tmp_path: Path) -> None:
    url, _ = _upstream(tmp_path)
    kept = _config(tmp_path / "kept", url)
    r = start_relay(kept, free_port())
    try:
        with r.client() as http:
            etag = _etag(http.get(_cutout_url(A)))
    finally:
        r.stop()
    r = start_relay(kept, free_port())
    try:
        with r.client() as http:  # the same generation: caches keep their entries
            assert http.get(_cutout_url(A), headers={"If-None-Match": etag}).status_code == 304
    finally:
        r.stop()
    # no state path: generations in memory, with a nonce of the process's own
    mem = tmp_path / "mem" / "relay.toml"
    mem.parent.mkdir()
    mem.write_text(f'[[channel]]\nname = "c/e/img"\nupstream = "{url}"\n')
    tags = []
    for _ in range(2):
        r = start_relay(mem, free_port())
        try:
            tags.append(_etag(httpx.get(r.url + _cutout_url(A))))
        finally:
            r.stop()
    assert tags[0] != tags[1]


FRAME = {"x_start": 0, "x_stop": 192, "y_start": 0, "y_stop": 192, "z_start": 0, "z_stop": 16,
         "x_voxel_size": 8, "y_voxel_size": 8, "z_voxel_size": 40, "voxel_unit": "nanometers"}


def test_a_deleted_and_recreated_channel_never_repeats_an_etag(tmp_path: Path) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f"""
[server]
state_path = "{tmp_path / 'state.json'}"
[cache]
disk_path = "{tmp_path / 'cache'}"
[auth]
tokens = {{ "{RW}" = "read-write" }}
""")
    r = start_relay(cfg, free_port(), "--data-root", str(tmp_path / "data"))
    box = Box((0, 0, 0), (16, 64, 64))
    chan = "/v1/collection/lab/experiment/exp/channel/ch/"
    try:
        with r.client() as http:
            assert http.post("/v1/collection/lab/", json={"description": "x"}).status_code == 201
            assert http.post("/v1/coord/frame/", json=FRAME).status_code == 201
            assert http.post("/v1/collection/lab/experiment/exp/",
                             json={"coord_frame": "frame", "num_hierarchy_levels": 1}
                             ).status_code == 201
            assert http.post(chan, json={"type": "image", "datatype": "uint8"}).status_code == 201
            old = _etag(http.get(_cutout_url(box, "lab/exp/ch")))
            assert http.delete(chan).status_code == 204
            assert http.post(chan, json={"type": "image", "datatype": "uint8"}).status_code == 201
            res = http.get(_cutout_url(box, "lab/exp/ch"), headers={"If-None-Match": old})
            assert res.status_code == 200
            assert _etag(res) != old
    finally:
        r.stop()


# -- two relays, one upstream -------------------------------------------------------------------
@dataclass
class Pair:
    a: RelayProcess
    b: RelayProcess
    data: np.ndarray


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    url, data = _upstream(tmp_path)
    gens = tmp_path / "generations"  # shared by both relays
    a = start_relay(_config(tmp_path / "a", url, gens), free_port())
    try:
        b = start_relay(_config(tmp_path / "b", url, gens), free_port())
    except BaseException:
        a.stop()
        raise
    yield Pair(a, b, data)
    a.stop()
    b.stop()


def test_a_write_through_one_relay_is_seen_by_the_other_sharing_the_generations(pair) -> None:  # type: ignore[no-untyped-def]
    with pair.a.client() as ha, pair.b.client() as hb:
        # both cache the region (twice: the second read is a hit)
        for h in (ha, hb, ha, hb):
            np.testing.assert_array_equal(_decode(h.get(_cutout_url(A)), A),
                                          pair.data[A.slices()])
        etag_a = _etag(ha.get(_cutout_url(A)))
        assert _etag(hb.get(_cutout_url(A))) == etag_a  # the same response, the same ETag
        cached = hb.get("/metrics").json()["cache"]  # B holds it: cells, encoded response
        assert cached["memory_hits"] + cached["response_hits"] > 0
        new = np.full(tuple(A.shape), 99, np.uint8)
        _post(ha, A, new)
        res = hb.get(_cutout_url(A), headers={"If-None-Match": etag_a})
        np.testing.assert_array_equal(_decode(res, A), new)  # not B's cached cells
        assert _etag(res) != etag_a
        chunk = hb.get(_chunk_url(CHUNK), headers={"Accept-Encoding": "identity"})
        assert chunk.status_code == 200
        assert chunk.content[:64] == new.tobytes()[:64]  # its first row of x is A's


# -- nginx in front -----------------------------------------------------------------------------
NGINX_CONF = """\
worker_processes 1;
{user}
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy_temp;
    fastcgi_temp_path {tmp}/fastcgi_temp;
    uwsgi_temp_path {tmp}/uwsgi_temp;
    scgi_temp_path {tmp}/scgi_temp;
    proxy_cache_path {tmp}/cache levels=1:2 keys_zone=voxgate:10m max_size=1g inactive=1h
                     use_temp_path=off;
    upstream relays {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 600m;
        location / {{
            proxy_pass http://relays;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache voxgate;
            proxy_cache_key "$scheme$proxy_host$request_uri|$http_accept|$http_accept_encoding";
            proxy_cache_revalidate on;
            proxy_ignore_headers Cache-Control Expires;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    url: str
    proc: subprocess.Popen[bytes]
    tmp: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_nginx(tmp: Path, upstream_ports: list[int]) -> Nginx:
    """Debian's nginx as a caching proxy on 127.0.0.1, in the foreground, with every path of
    its own under ``tmp`` (config, cache, pid file, error log)."""
    if not os.path.exists(NGINX):
        pytest.fail(f"{NGINX} is missing: scripts/test.sh installs Debian's nginx "
                    "(apt-get install -y nginx)")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in upstream_ports)
    # a root master's workers would run as "nobody", who cannot write under a 0700 temp dir
    user = "user root root;" if os.geteuid() == 0 else ""
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, servers=servers, port=port, user=user))
    with open(tmp / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [NGINX, "-p", str(tmp), "-c", str(conf), "-g",
             f"daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;"],
            stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = tmp / "error.log"
            raise RuntimeError(f"nginx exited: {(tmp / 'stderr.log').read_text()}"
                               f"{log.read_text() if log.exists() else ''}")
        try:
            httpx.get(url + "/ping/", timeout=1)
            return Nginx(url, proc, tmp)
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not start")


@pytest.fixture
def nginx_pair(pair: Pair, tmp_path: Path) -> Iterator[tuple[Nginx, Pair]]:
    n = start_nginx(tmp_path / "nginx", [pair.a.port, pair.b.port])
    yield n, pair
    n.stop()


def _served(pair: Pair) -> int:
    total = 0
    for r in (pair.a, pair.b):
        with r.client() as http:
            total += http.get("/metrics").json()["cache"]["bytes_served"]
    return int(total)


def test_nginx_serves_repeated_reads_from_its_cache_and_never_a_stale_region_after_a_write(
        nginx_pair: tuple[Nginx, Pair]) -> None:
    proxy, pair = nginx_pair
    headers = {"Authorization": f"Token {RW}"}
    with httpx.Client(base_url=proxy.url, headers=headers, timeout=60) as http:
        first = http.get(_cutout_url(A))
        assert first.headers["x-cache-status"] == "MISS"
        np.testing.assert_array_equal(_decode(first, A), pair.data[A.slices()])
        chunk = http.get(_chunk_url(CHUNK), headers={"Accept-Encoding": "identity"})
        assert chunk.headers["x-cache-status"] == "MISS"
        served = _served(pair)
        for _ in range(4):  # both relays get some of these (round robin)
            res = http.get(_cutout_url(A))
            # from nginx's cache: each use revalidated with If-None-Match, answered 304
            assert res.headers["x-cache-status"] in ("HIT", "REVALIDATED"), res.headers
            assert res.content == first.content
            res = http.get(_chunk_url(CHUNK), headers={"Accept-Encoding": "identity"})
            assert res.headers["x-cache-status"] in ("HIT", "REVALIDATED"), res.headers
            assert res.content == chunk.content
        assert _served(pair) == served  # no relay read a voxel for them
        # what carries no ETag (info, project service records) is never stored
        for path in ("/precomputed/c/e/img/info", "/v1/collection/c/experiment/e/channel/img/"):
            assert http.get(path).headers["x-cache-status"] == "MISS"
            assert http.get(path).headers["x-cache-status"] == "MISS"
        # a client's own conditional GET is answered by nginx
        res = http.get(_cutout_url(A), headers={"If-None-Match": first.headers["etag"]})
        assert res.status_code == 304
        # the relays still decide who may read: nginx asks them every time
        res = httpx.get(proxy.url + _cutout_url(A))
        assert res.status_code == 401, res.status_code
        # a write through nginx (to either relay), then reads through nginx (from both)
        new = np.full(tuple(A.shape), 42, np.uint8)
        _post(http, A, new)
        for _ in range(4):
            res = http.get(_cutout_url(A))
            np.testing.assert_array_equal(_decode(res, A), new)
            res = http.get(_chunk_url(CHUNK), headers={"Accept-Encoding": "identity"})
            assert res.status_code == 200
            assert res.content[:64] == new.tobytes()[:64]  # its first row of x is A's
        # a read-only channel (read_only_max_age = 3600): reused without asking, a true HIT
        ro = http.get(_cutout_url(A, "c/e/ro"))
        assert ro.headers["x-cache-status"] == "MISS"
        assert "max-age=3600" in ro.headers["cache-control"]
        again = http.get(_cutout_url(A, "c/e/ro"))
        assert again.headers["x-cache-status"] == "HIT" and again.content == ro.content
        # but not one whose upstream a writable channel shares: that one is revalidated
        shared = http.get(_cutout_url(A, "c/e/img_ro"))
        assert shared.headers["cache-control"] == "public, no-cache"
        np.testing.assert_array_equal(_decode(shared, A), new)
        # and a second write: whichever relay takes it, the next reads see it
        newer = np.full(tuple(A.shape), 43, np.uint8)
        _post(http, A, newer)
        for _ in range(4):
            np.testing.assert_array_equal(_decode(http.get(_cutout_url(A)), A), newer)
        statuses = {http.get(_cutout_url(A)).headers["x-cache-status"] for _ in range(2)}
        assert statuses <= {"HIT", "REVALIDATED"}, statuses
        # writes and reads alternating over both relays (round robin): each read sees the write
        # before it, whichever relay took either
        for k in range(50, 60):
            value = np.full(tuple(NEAR.shape), k, np.uint8)
            _post(http, NEAR, value)
            np.testing.assert_array_equal(_decode(http.get(_cutout_url(NEAR)), NEAR), value)
            np.testing.assert_array_equal(_decode(http.get(_cutout_url(A)), A)[8:, 32:, 32:],
                                          value[:8, :32, :32])


# -- the generations store ----------------------------------------------------------------------
def test_generations_are_shared_through_their_directory_and_a_damaged_file_is_replaced(
        tmp_path: Path) -> None:
    from voxgate.relay.generations import Generations

    one, two = Generations(tmp_path / "g"), Generations(tmp_path / "g")
    start = one.current("chan")
    assert two.current("chan") == start  # made once, read by both
    bumped = two.bump("chan")
    assert bumped != start and one.current("chan") == bumped
    assert one.current("other") != bumped  # per channel
    for f in (tmp_path / "g").glob("*.json"):
        f.write_text("{not json")
    fresh = one.current("chan")
    assert fresh.split(".")[0] != bumped.split(".")[0]  # a new nonce: no ETag repeats
    assert two.current("chan") == fresh
    mem = Generations(None)
    assert mem.bump("chan") != Generations(None).bump("chan")  # nonce per process life


def test_generations_path_in_the_config_is_relative_to_the_file(tmp_path: Path) -> None:
    from voxgate.relay.config import load_config

    cfg = tmp_path / "relay.toml"
    cfg.write_text('[server]\ngenerations_path = "shared/gens"\n')
    assert load_config(cfg).generations_path == tmp_path / "shared" / "gens"
