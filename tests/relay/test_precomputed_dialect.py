"""Acceptance: the relay's Neuroglancer precomputed dialect, read by the real clients.

CloudVolume (PyPI) reads every channel through the relay and must get the upstream's voxels;
Neuroglancer (its PyPI client, in Debian's headless Chromium driven by Playwright) must draw
them.  Plain HTTP checks cover what the clients hide: gzip, CORS, the info JSON and the errors.

CloudVolume and a browser cannot send the relay's boss tokens, so they read from a relay with no
``[auth]`` section; the token checks run against the shared, authenticated ``relay`` fixture.
"""

from __future__ import annotations

import gzip
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import compressed_segmentation
import httpx
import numpy as np
import pytest
from cloudvolume import CloudVolume

import voxgate

from .browser import Browser, neuroglancer_browser
from .conftest import RO, RelayProcess, Upstreams, free_port, start_relay, write_config

XYZ = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


# -- fixtures -------------------------------------------------------------------------------------
@dataclass
class Extras:
    """Upstreams beyond the shared ones, for what the precomputed format makes awkward."""

    f64: np.ndarray   # float64: the format has no such type, the relay serves float32
    i64: np.ndarray   # int64 segmentation: served as uint64
    off: np.ndarray   # uint32 segmentation with a voxel offset (the chunk grid starts there)
    two: np.ndarray   # two channels (c, z, y, x)
    offset: tuple[int, int, int] = (5, 100, 37)  # z, y, x
    channels: dict[str, str] = field(default_factory=dict)  # name -> upstream URL


@pytest.fixture(scope="module")
def extras(tmp_path_factory: pytest.TempPathFactory) -> Extras:
    root = tmp_path_factory.mktemp("extras")
    rng = np.random.default_rng(11)
    ex = Extras(
        f64=rng.random((12, 30, 50)) * 1000,
        i64=rng.integers(-(2**40), 2**40, (12, 30, 50), dtype=np.int64),
        off=rng.integers(1, 2**32, (20, 90, 70), dtype=np.uint32),
        two=rng.integers(0, 256, (2, 12, 30, 50), dtype=np.uint8),
    )
    specs: list[tuple[str, str, np.ndarray, dict[str, Any]]] = [
        ("f64", f"zarr://{root}/f64.zarr", ex.f64, {}),
        ("i64", f"zarr://{root}/i64.zarr", ex.i64, {"kind": "segmentation"}),
        ("off", f"precomputed://file://{root}/off", ex.off,
         {"kind": "segmentation", "offset": ex.offset}),
        ("two", f"zarr://{root}/two.zarr", ex.two, {"num_channels": 2}),
    ]
    for name, url, arr, opts in specs:
        vol = voxgate.create(url, shape=arr.shape[-3:], dtype=arr.dtype.name, chunks=(8, 16, 32),
                             voxel_size=(40, 8, 8), **opts)
        vol[:] = arr
        ex.channels[name] = url
    return ex


@pytest.fixture(scope="module")
def open_relay(upstreams: Upstreams, extras: Extras,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A relay with no [auth] section: what CloudVolume and Neuroglancer can talk to."""
    d = tmp_path_factory.mktemp("open-relay")
    extra = "".join(f'\n[[channel]]\nname = "lab/extra/{name}"\nupstream = "{url}"\n'
                    for name, url in extras.channels.items())
    r = start_relay(write_config(d / "relay.toml", upstreams.root, auth=False, extra=extra),
                    free_port())
    yield r
    r.stop()


def reference(upstreams: Upstreams, name: str, mip: int = 0) -> np.ndarray:
    if mip == 1:
        assert name == "raw"
        return upstreams.image1
    return {"raw": upstreams.image, "seg": upstreams.labels, "em16": upstreams.image16}[name]


def layer_url(relay: RelayProcess, name: str, experiment: str = "em") -> str:
    return f"precomputed://{relay.url}/precomputed/lab/{experiment}/{name}"


def cloudvolume(relay: RelayProcess, name: str, mip: int = 0, experiment: str = "em") -> Any:
    return CloudVolume(layer_url(relay, name, experiment), mip=mip, progress=False,
                       fill_missing=False, bounded=True, cache=False)


def cv_read(cv: Any, box: XYZ) -> np.ndarray:
    """CloudVolume's (x, y, z, c) cutout as voxgate's (c, z, y, x)."""
    (x0, x1), (y0, y1), (z0, z1) = box
    return np.asarray(cv[x0:x1, y0:y1, z0:z1]).transpose(3, 2, 1, 0)


def zyx(ref: np.ndarray, box: XYZ) -> np.ndarray:
    (x0, x1), (y0, y1), (z0, z1) = box
    return ref[..., z0:z1, y0:y1, x0:x1]


# -- CloudVolume ----------------------------------------------------------------------------------
# (x0, x1), (y0, y1), (z0, z1) at scale 0 (260 x 300 x 40) and scale 1 (130 x 150 x 40);
# "aligned" is the first chunk of the grid the info announces, filled in per layer
BOXES: dict[int, dict[str, XYZ | None]] = {
    0: {
        "aligned": None,
        "unaligned": ((13, 201), (7, 233), (3, 37)),
        "far edge": ((200, 260), (250, 300), (30, 40)),
        "one voxel": ((259, 260), (299, 300), (39, 40)),
        "whole": ((0, 260), (0, 300), (0, 40)),
    },
    1: {
        "aligned": None,
        "unaligned": ((13, 101), (7, 133), (3, 37)),
        "far edge": ((100, 130), (120, 150), (30, 40)),
        "one voxel": ((129, 130), (149, 150), (39, 40)),
        "whole": ((0, 130), (0, 150), (0, 40)),
    },
}
CASES = [(name, 0, where) for name in ("raw", "seg", "em16") for where in BOXES[0]]
CASES += [("raw", 1, where) for where in BOXES[1]]


@pytest.mark.parametrize(("name", "mip", "where"), CASES)
def test_cloudvolume_reads_equal_the_upstream(open_relay: RelayProcess, upstreams: Upstreams,
                                              name: str, mip: int, where: str) -> None:
    cv = cloudvolume(open_relay, name, mip)
    box = BOXES[mip][where]
    if box is None:  # the first chunk, exactly: one cache cell, one request
        size, chunk = cv.scale["size"], cv.scale["chunk_sizes"][0]
        box = ((0, min(chunk[0], size[0])), (0, min(chunk[1], size[1])),
               (0, min(chunk[2], size[2])))
    ref = reference(upstreams, name, mip)
    got = cv_read(cv, box)[0]
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, zyx(ref, box))
    # CloudVolume asks for gzip (requests sends Accept-Encoding: gzip): this was the gzip path;
    # the second read is served from the relay's cache
    np.testing.assert_array_equal(cv_read(cv, box)[0], got)


def test_cloudvolume_sees_the_layer_geometry(open_relay: RelayProcess) -> None:
    cv = cloudvolume(open_relay, "raw")
    assert cv.layer_type == "image" and cv.dtype == np.uint8 and cv.num_channels == 1
    assert list(cv.available_mips) == [0, 1]
    assert tuple(cv.mip_volume_size(0)) == (260, 300, 40)
    assert tuple(cv.mip_volume_size(1)) == (130, 150, 40)
    assert tuple(cv.mip_resolution(1)) == (16, 16, 40)
    seg = cloudvolume(open_relay, "seg")
    assert seg.layer_type == "segmentation" and seg.dtype == np.uint64
    assert seg.scale["encoding"] == "compressed_segmentation"


def test_cloudvolume_reads_a_layer_with_a_voxel_offset(open_relay: RelayProcess,
                                                       extras: Extras) -> None:
    cv = cloudvolume(open_relay, "off", experiment="extra")
    z, y, x = extras.offset
    assert tuple(cv.voxel_offset) == (x, y, z)
    np.testing.assert_array_equal(cv_read(cv, ((x, x + 70), (y, y + 90), (z, z + 20)))[0],
                                  extras.off)
    # dataset coordinates include the offset; this box crosses grid cells that start at it
    box = ((x + 3, x + 61), (y + 17, y + 88), (z + 1, z + 19))
    np.testing.assert_array_equal(cv_read(cv, box)[0], extras.off[1:19, 17:88, 3:61])


def test_cloudvolume_reads_two_channels(open_relay: RelayProcess, extras: Extras) -> None:
    cv = cloudvolume(open_relay, "two", experiment="extra")
    assert cv.num_channels == 2
    np.testing.assert_array_equal(cv_read(cv, ((0, 50), (0, 30), (0, 12))), extras.two)
    np.testing.assert_array_equal(cv_read(cv, ((7, 41), (3, 29), (5, 12))),
                                  extras.two[:, 5:12, 3:29, 7:41])


def test_dtypes_the_format_lacks_are_converted(open_relay: RelayProcess,
                                               extras: Extras) -> None:
    # regression: the info said float32 while the chunks held float64 bytes (twice the size a
    # client expects), so every read failed; int64 is served as uint64, bit for bit
    f64 = cloudvolume(open_relay, "f64", experiment="extra")
    assert f64.dtype == np.float32
    np.testing.assert_array_equal(cv_read(f64, ((0, 50), (0, 30), (0, 12)))[0],
                                  extras.f64.astype(np.float32))
    i64 = cloudvolume(open_relay, "i64", experiment="extra")
    assert i64.dtype == np.uint64 and i64.layer_type == "segmentation"
    np.testing.assert_array_equal(cv_read(i64, ((3, 50), (0, 30), (2, 12)))[0],
                                  extras.i64[2:, :, 3:].view(np.uint64))


# -- plain HTTP: info, bytes, gzip, CORS ----------------------------------------------------------
def get_info(relay: RelayProcess, name: str) -> dict[str, Any]:
    res = httpx.get(f"{relay.url}/precomputed/lab/em/{name}/info")
    assert res.status_code == 200
    assert res.headers["content-type"] == "application/json"
    info: dict[str, Any] = res.json()
    return info


@pytest.mark.parametrize("name", ["raw", "seg", "em16"])
def test_info_is_valid(open_relay: RelayProcess, name: str) -> None:
    info = get_info(open_relay, name)
    assert info["@type"] == "neuroglancer_multiscale_volume"
    assert info["type"] == {"seg": "segmentation"}.get(name, "image")
    assert info["data_type"] == {"raw": "uint8", "seg": "uint64", "em16": "uint16"}[name]
    assert info["num_channels"] == 1
    scales = info["scales"]
    assert [s["key"] for s in scales] == (["s0", "s1"] if name == "raw" else ["s0"])
    for i, s in enumerate(scales):
        assert s["size"] == [260 // 2**i, 300 // 2**i, 40]  # x, y, z
        assert s["resolution"] == [8 * 2**i, 8 * 2**i, 40]
        assert s["voxel_offset"] == [0, 0, 0]
        assert len(s["chunk_sizes"]) == 1
        assert len(s["chunk_sizes"][0]) == 3
        assert all(type(v) is int and v > 0 for v in s["chunk_sizes"][0])
        if name == "seg":
            assert s["encoding"] == "compressed_segmentation"
            assert s["compressed_segmentation_block_size"] == [8, 8, 8]
        else:
            assert s["encoding"] == "raw"
            assert "compressed_segmentation_block_size" not in s


def chunk_box(info: dict[str, Any], key: str, which: str) -> XYZ:
    """The first or the last (clipped) chunk of a scale, as (x0, x1), (y0, y1), (z0, z1)."""
    scale = next(s for s in info["scales"] if s["key"] == key)
    out = []
    for size, chunk, off in zip(scale["size"], scale["chunk_sizes"][0], scale["voxel_offset"],
                                strict=True):
        start = 0 if which == "first" else (size - 1) // chunk * chunk
        out.append((off + start, off + min(start + chunk, size)))
    return out[0], out[1], out[2]


def chunk_name(box: XYZ) -> str:
    return "_".join(f"{a}-{b}" for a, b in box)


def raw_get(url: str, headers: dict[str, str]) -> tuple[httpx.Headers, bytes]:
    """The body as sent, not decoded by httpx (so Content-Encoding can be checked)."""
    with httpx.stream("GET", url, headers=headers) as res:
        assert res.status_code == 200, res.read()
        return res.headers, b"".join(res.iter_raw())


def decode(name: str, data: bytes, box: XYZ) -> np.ndarray:
    shape_xyz = tuple(b - a for a, b in box)
    if name == "seg":
        arr = compressed_segmentation.decompress(data, shape_xyz, np.uint64, (8, 8, 8), order="F")
        return np.asarray(arr).reshape(shape_xyz, order="F").T
    dtype = {"raw": "<u1", "em16": "<u2"}[name]
    # x-fastest bytes read as C-order (z, y, x): the same memory
    return np.frombuffer(data, dtype=dtype).reshape(shape_xyz[::-1])


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "identity"])
@pytest.mark.parametrize("which", ["first", "last"])
@pytest.mark.parametrize("name", ["raw", "seg", "em16"])
def test_chunk_bytes_with_and_without_gzip(open_relay: RelayProcess, upstreams: Upstreams,
                                           name: str, which: str, gz: bool) -> None:
    box = chunk_box(get_info(open_relay, name), "s0", which)
    url = f"{open_relay.url}/precomputed/lab/em/{name}/s0/{chunk_name(box)}"
    headers, body = raw_get(url, {"Accept-Encoding": "gzip" if gz else "identity"})
    assert headers["content-type"] == "application/octet-stream"
    if gz:
        assert headers["content-encoding"] == "gzip"
        data = gzip.decompress(body)
        assert len(body) < len(data)
    else:
        assert "content-encoding" not in headers
        data = body
    assert int(headers["content-length"]) == len(body)
    np.testing.assert_array_equal(decode(name, data, box), zyx(reference(upstreams, name), box))


@pytest.mark.parametrize(("accept", "gz"), [("gzip;q=0", False), ("gzip;q=0.5, br", True),
                                           ("*", True), ("br, identity", False),
                                           ("GZIP", True), ("gzip;q=x", False)])
def test_accept_encoding_q_values(open_relay: RelayProcess, upstreams: Upstreams, accept: str,
                                  gz: bool) -> None:
    box = chunk_box(get_info(open_relay, "raw"), "s0", "first")
    url = f"{open_relay.url}/precomputed/lab/em/raw/s0/{chunk_name(box)}"
    headers, body = raw_get(url, {"Accept-Encoding": accept})
    assert ("content-encoding" in headers) == gz
    assert "accept-encoding" in headers["vary"].lower()  # caches keep the two apart
    data = gzip.decompress(body) if gz else body
    np.testing.assert_array_equal(decode("raw", data, box), zyx(upstreams.image, box))


def test_scale_1_chunks(open_relay: RelayProcess, upstreams: Upstreams) -> None:
    box = chunk_box(get_info(open_relay, "raw"), "s1", "last")
    _, data = raw_get(f"{open_relay.url}/precomputed/lab/em/raw/s1/{chunk_name(box)}",
                      {"Accept-Encoding": "identity"})
    np.testing.assert_array_equal(decode("raw", data, box), zyx(upstreams.image1, box))


@pytest.mark.parametrize("path", ["info", "s0/0-256_0-128_0-32", "s9/0-1_0-1_0-1"])
def test_cors(open_relay: RelayProcess, path: str) -> None:
    # Neuroglancer runs on another origin: without these headers the browser hides every
    # response, errors included
    url = f"{open_relay.url}/precomputed/lab/em/raw/{path}"
    res = httpx.get(url, headers={"Origin": "http://neuroglancer.example"})
    assert res.headers["access-control-allow-origin"] == "*"
    pre = httpx.options(url, headers={"Origin": "http://neuroglancer.example",
                                      "Access-Control-Request-Method": "GET"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] in ("*", "http://neuroglancer.example")
    assert "GET" in pre.headers["access-control-allow-methods"]


# -- errors ---------------------------------------------------------------------------------------
BAD = [
    ("raw/s9/0-256_0-128_0-32", 404, "no scale 's9' in this layer; its scales are s0, s1"),
    ("raw/s01/0-256_0-128_0-32", 404, "no scale 's01'"),
    ("raw/x0/0-256_0-128_0-32", 404, "no scale 'x0'"),
    ("raw/s0/0-256_0-128", 400, "is not x0-x1_y0-y1_z0-z1"),
    ("raw/s0/a-b_c-d_e-f", 400, "is not x0-x1_y0-y1_z0-z1"),
    # negative bounds name chunks of layers with a negative voxel_offset: outside this one
    ("raw/s0/-5-0_0-128_0-32", 404, "is outside scale s0, whose bounds are 0-260_0-300_0-40"),
    ("raw/s0/--5-0_0-128_0-32", 400, "is not x0-x1_y0-y1_z0-z1"),
    ("raw/s0/0-256_0-128_0-32.gz", 400, "is not x0-x1_y0-y1_z0-z1"),
    ("raw/s0/256-0_0-128_0-32", 400, "is empty"),
    ("raw/s0/0-0_0-128_0-32", 400, "is empty"),
    ("raw/s0/256-512_0-128_0-32", 404, "is outside scale s0, whose bounds are 0-260_0-300_0-40"),
    ("raw/s1/0-256_0-128_0-32", 404, "is outside scale s1"),
    # regression: any box inside the bounds used to be served, so one request could pull the
    # whole dataset into memory; only cells of the announced grid are chunks
    ("raw/s0/0-260_0-300_0-40", 400, "the chunk holding its first voxel is 0-256_0-128_0-32"),
    ("raw/s0/1-2_1-2_1-2", 400, "is not a chunk of scale s0"),
    ("raw/s0/0-255_0-128_0-32", 400, "is not a chunk of scale s0"),
    ("nope/info", 404, "Channel nope not found"),
    ("nope/s0/0-256_0-128_0-32", 404, "Channel nope not found"),
    ("raw/s0/0-256_0-128_0-32/more", 404, "no such endpoint"),
]


@pytest.mark.parametrize(("path", "status", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_clear_json_errors(open_relay: RelayProcess, path: str, status: int,
                                            message: str) -> None:
    res = httpx.get(f"{open_relay.url}/precomputed/lab/em/{path}")
    assert res.status_code == status, res.text
    assert res.headers["content-type"] == "application/json"
    body = res.json()
    assert body["status"] == status
    assert message in body["message"]


def test_unknown_collection_and_experiment(open_relay: RelayProcess) -> None:
    for path in ("/precomputed/nolab/em/raw/info", "/precomputed/lab/noexp/raw/info"):
        res = httpx.get(open_relay.url + path)
        assert res.status_code == 404 and res.json()["status"] == 404


def test_tokens_apply(relay: RelayProcess, upstreams: Upstreams) -> None:
    # the shared fixture's relay has public_read = false
    base = f"{relay.url}/precomputed/lab/em/raw"
    chunk = "0-256_0-128_0-32"
    for path in ("/info", f"/s0/{chunk}"):
        res = httpx.get(base + path, headers={"Origin": "http://neuroglancer.example"})
        assert res.status_code == 401
        assert res.json() == {"detail": "Authentication credentials were not provided."}
        assert res.headers["access-control-allow-origin"] == "*"  # a browser can read why
        bad = httpx.get(base + path, headers={"Authorization": "Token not-a-token"})
        assert bad.status_code == 401 and bad.json() == {"detail": "Invalid token."}
    with relay.client(RO) as http:
        assert http.get("/precomputed/lab/em/raw/info").json()["data_type"] == "uint8"
        res = http.get(f"/precomputed/lab/em/raw/s0/{chunk}")
    assert res.status_code == 200
    np.testing.assert_array_equal(np.frombuffer(res.content, np.uint8).reshape(32, 128, 256),
                                  upstreams.image[:32, :128, :256])


# -- Neuroglancer in headless Chromium ------------------------------------------------------------
# The recipe in specs/neuroglancer-headless.md: the PyPI client only runs behind neuroglancer's
# Python server, Debian's Chromium renders WebGL2 in software (SwiftShader)
@pytest.fixture(scope="module")
def browser(open_relay: RelayProcess) -> Iterator[Browser]:
    with neuroglancer_browser() as b:
        yield b


@pytest.mark.parametrize("name", ["raw", "seg"])
def test_neuroglancer_draws_a_relay_layer(open_relay: RelayProcess, browser: Browser,
                                          name: str) -> None:
    import neuroglancer
    from PIL import Image

    layer_type = neuroglancer.SegmentationLayer if name == "seg" else neuroglancer.ImageLayer
    # the relay's responses only: the viewer's own server answers one 404 the recipe expects
    relay_prefix = f"{open_relay.url}/precomputed/lab/em/{name}/"
    before = len(browser.responses)
    with browser.viewer.txn() as s:
        s.layers.clear()
        s.layers[name] = layer_type(source=layer_url(open_relay, name))
        s.layout = "xy"
        s.position = [130, 150, 20]  # x, y, z: the middle of the volume
    t0 = time.monotonic()
    shot = browser.viewer.screenshot(size=[512, 512]).screenshot  # waits until all is drawn
    elapsed = time.monotonic() - t0
    img = np.asarray(Image.open(io.BytesIO(shot.image)).convert("RGB")).astype(int)
    assert img.shape == (512, 512, 3)
    # a blank or failed render is one colour; the default background is rgb(128, 128, 128)
    non_background = (np.abs(img - 128).sum(-1) > 15).mean()
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    assert non_background > 0.1, (non_background, elapsed)
    assert colours > 50, (colours, elapsed)
    # and it came from the relay: the info and data chunks, all answered 200.  Playwright's
    # sync API delivers page events only while one of its calls runs, so make one
    browser.page.evaluate("0")
    mine = [(u, st) for u, st in browser.responses[before:] if u.startswith(relay_prefix)]
    assert any(u.endswith("/info") for u, _ in mine)
    assert any("/s0/" in u or "/s1/" in u for u, _ in mine), mine
    assert all(st == 200 for _, st in mine), mine
    assert browser.errors == []



@pytest.fixture(scope="module")
def voxgate_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[int]]]:
    """A segmentation layer written by voxgate, with multi-resolution meshes written by
    voxgate.write_meshes, served as plain files (with CORS) the way a bucket would."""
    import http.server
    import threading

    from voxgate.synthetic import synthetic_labels

    root = tmp_path_factory.mktemp("files")
    labels = synthetic_labels((32, 96, 96), cell=(16, 32, 32), seed=3)
    seg = voxgate.create(f"precomputed://file://{root}/seg", shape=labels.shape,
                         chunks=(32, 64, 64), dtype="uint64", voxel_size=(40, 8, 8),
                         kind="segmentation", offset=(10, 20, 30))
    seg[:] = labels
    ids = [int(i) for i in np.unique(labels)[:6]]
    voxgate.write_meshes(seg.url, voxgate.mesh(seg, ids=ids), format="multires")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, directory=str(root), **k)

        def end_headers(self) -> None:
            self.send_header("Access-Control-Allow-Origin", "*")
            super().end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/seg", ids
    finally:
        server.shutdown()
        server.server_close()


def test_neuroglancer_draws_voxgate_written_files_and_meshes(
        browser: Browser, voxgate_files: tuple[str, list[int]]) -> None:
    """Neuroglancer reads what voxgate writes, unchanged: the layer and its Draco meshes."""
    import neuroglancer
    from PIL import Image

    url, ids = voxgate_files
    before = len(browser.responses)
    with browser.viewer.txn() as s:
        s.layers.clear()
        s.layers["seg"] = neuroglancer.SegmentationLayer(source=f"precomputed://{url}",
                                                         segments=ids)
        s.layout = "3d"
        s.position = [78, 68, 26]  # x, y, z voxels: the layer's centre (offset 30, 20, 10)
        s.projection_scale = 200  # the earlier tests' 2-D views leave another zoom behind
    shot = browser.viewer.screenshot(size=[512, 512]).screenshot
    img = np.asarray(Image.open(io.BytesIO(shot.image)).convert("RGB")).astype(int)
    import os

    if os.environ.get("VOXGATE_SAVE_SCREENSHOTS"):
        Image.open(io.BytesIO(shot.image)).save(os.environ["VOXGATE_SAVE_SCREENSHOTS"])
    # the 3-D view's background is black and the volume's outline yellow: the rest are meshes
    yellow = (img[..., 0] > 150) & (img[..., 1] > 150) & (img[..., 2] < 100)
    drawn = ((img.sum(-1) > 30) & ~yellow).mean()
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    browser.page.evaluate("0")
    mine = [(u, st) for u, st in browser.responses[before:] if u.startswith(url)]
    assert any(u.endswith("/mesh/info") for u, _ in mine), mine
    assert any(u.endswith(".index") for u, _ in mine), mine  # multi-resolution manifests
    fragments = [u for u, st in mine if "/mesh/" in u and u.rsplit("/", 1)[1].isdigit()]
    assert fragments and all(st in (200, 206) for u, st in mine if u in fragments), mine
    assert drawn > 0.1 and colours > 20, (drawn, colours, mine[:10])
    assert not browser.errors, browser.errors
