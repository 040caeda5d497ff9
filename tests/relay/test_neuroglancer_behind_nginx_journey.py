"""Neuroglancer through an HTTP cache: nginx (``proxy_cache``, revalidating with If-None-Match,
the configuration of test_http_cache.py) in front of two relays that share one upstream and one
generations directory, and Neuroglancer in headless Chromium pointed at nginx, never at a relay.

One journey, its browser and its HTTP cache kept from step to step (pages reloaded, nothing
cleared): an image channel and a uint64 segmentation channel (precomputed upstream layers written
by voxgate, with sharded multi-resolution meshes and sharded skeletons beside the segmentation)
are drawn, then drawn again after a reload, which nginx answers from its cache (the relays say
304 and send no body); a cutout POST through nginx changes a region of both channels, and the
reloaded viewer draws the new voxels; one segment's mesh is rewritten in the upstream layer, and
the reloaded viewer draws the new mesh, at once (the relay gives a file written in the last 2 s
no ETag) and after 2 s (nginx revalidates its old copy with the old ETag); CloudVolume reads it
all back through nginx, equal to the numpy reference.  nginx's access log (its cache status for
each request) says what came from where.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
from cloudvolume import CloudVolume

import voxgate
from voxgate.formats.mesh import Mesh, read_meshes, write_meshes
from voxgate.formats.skeleton import read_skeletons, write_skeletons

from . import test_http_cache
from .browser import Browser, neuroglancer_browser
from .conftest import RW, RelayProcess, free_port, start_relay
from .test_http_cache import Nginx, start_nginx

SHAPE = (16, 128, 128)  # z, y, x
VOXEL = (40, 8, 8)
Z = 8  # the section drawn
A, B = 2**40 + 7, 2**40 + 9  # two boxes of 12 x 40 x 40 voxels, in the top left and bottom right
#: the region the cutout POST writes (z, y, x): the bottom left quarter of every section
WRITTEN = (slice(0, 16), slice(64, 128), slice(0, 64))
SHIFT = 56  # voxels along x the rewritten mesh of A is moved by: into the empty top right
#: nginx's access log: its cache status, the status and body size it sent, the relay's status
LOG = ('log_format journey "$upstream_cache_status $status $body_bytes_sent $request_method '
       '$request_uri $upstream_status";\n    access_log {tmp}/access.log journey;')


@dataclass
class Entry:
    """One line of nginx's access log."""

    cache: str  # MISS, HIT, REVALIDATED, EXPIRED, ... ("-": not cacheable, e.g. a POST)
    status: int  # what nginx answered
    size: int  # the body it sent
    method: str
    path: str
    upstream: str  # the relay's status ("-": no relay was asked)


@dataclass
class Stack:
    root: Path
    image: np.ndarray
    labels: np.ndarray
    relays: list[RelayProcess]
    nginx: Nginx

    def url(self, channel: str) -> str:
        return f"{self.nginx.url}/precomputed/c/e/{channel}"

    def log(self) -> list[Entry]:
        path = self.nginx.tmp / "access.log"
        out = []
        for line in (path.read_text().splitlines() if path.exists() else []):
            cache, status, size, method, uri, upstream = line.split(" ", 5)
            out.append(Entry(cache, int(status), int(size), method, uri, upstream))
        return out


def _write_layers(root: Path) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(11).integers(20, 200, SHAPE, dtype=np.uint8)
    labels = np.zeros(SHAPE, np.uint64)
    labels[2:14, 16:56, 16:56] = A
    labels[2:14, 72:112, 72:112] = B
    img = voxgate.create(f"precomputed://file://{root}/img", shape=SHAPE, chunks=(8, 64, 64),
                         dtype="uint8", voxel_size=VOXEL)
    img[:] = image
    seg = voxgate.create(f"precomputed://file://{root}/seg", shape=SHAPE, chunks=(8, 64, 64),
                         dtype="uint64", voxel_size=VOXEL, kind="segmentation")
    seg[:] = labels
    write_meshes(seg.url, voxgate.mesh(seg, ids=[A, B]), format="multires", lods=2,
                 sharded=True)
    write_skeletons(seg.url, voxgate.skeletonize(seg, ids=[A, B], dust_threshold=0),
                    sharded=True)
    return image, labels


def _relay_config(d: Path, root: Path) -> Path:
    """Both channels writable, anonymous reads (Neuroglancer sends no token), writes with RW;
    the generations directory shared by both relays."""
    d.mkdir()
    cfg = d / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
upstream_timeout = 30
state_path = "{d / 'state.json'}"
generations_path = "{root / 'generations'}"
[cache]
memory_bytes = "32 MiB"
[[channel]]
name = "c/e/img"
upstream = "precomputed://file://{root}/img"
[[channel]]
name = "c/e/seg"
upstream = "precomputed://file://{root}/seg"
[auth]
public_read = true
tokens = {{ "{RW}" = "read-write" }}
""")
    return cfg


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    root = tmp_path / "layers"
    image, labels = _write_layers(root)
    relays: list[RelayProcess] = []
    try:
        for name in ("a", "b"):
            relays.append(start_relay(_relay_config(tmp_path / name, root), free_port()))
        # test_http_cache's nginx, with an access log
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(test_http_cache, "NGINX_CONF",
                       test_http_cache.NGINX_CONF.replace("access_log off;", LOG))
            nginx = start_nginx(tmp_path / "nginx", [r.port for r in relays])
        try:
            yield Stack(root, image, labels, relays, nginx)
        finally:
            nginx.stop()
    finally:
        for r in relays:
            r.stop()


def _settle(root: Path) -> None:
    """Wait until every file under ``root`` was last changed more than 2 s ago: the relay gives
    a file changed more recently no ETag (layer_files.RACY_NS), and nginx does not store it."""
    newest = max(p.stat().st_ctime_ns for p in root.rglob("*") if p.is_file())
    while time.time_ns() - newest < 2.2e9:
        time.sleep(0.1)


# -- what Neuroglancer draws ----------------------------------------------------------------------
@dataclass
class Look:
    section: np.ndarray  # the image channel's section Z, one value per voxel, from the screen
    segment: np.ndarray  # where segment A is drawn in section Z, one bool per voxel
    mesh: np.ndarray  # the 3-D view: where A's mesh is drawn, one bool per screen pixel
    skeleton: np.ndarray  # the 3-D view of A's skeleton alone: where it is drawn
    paths: list[str]  # what the page received from nginx (paths)


def _view(browser: Browser, layer: Any, layout: str, name: str) -> np.ndarray:
    import neuroglancer

    with browser.viewer.txn() as s:
        s.layers.clear()
        s.layers["layer"] = layer
        s.layout = layout
        s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                                    scales=list(VOXEL[::-1]))
        s.position = [SHAPE[2] / 2, SHAPE[1] / 2, Z]  # x, y, z
        s.cross_section_scale = 0.5  # 2 screen pixels per voxel: the section is 256 x 256
        s.projection_scale = 300
    return browser.screenshot(save_as=f"behind-nginx-{name}.png")


def _voxels(img: np.ndarray) -> np.ndarray:
    """The section's pixels, one per voxel: the 512 x 512 screenshot shows voxel (y, x) at
    pixels 128 + 2y, 128 + 2x (and their neighbours)."""
    return img[128:384:2, 128:384:2]


def _orange(img: np.ndarray) -> np.ndarray:
    """Where segment A's colour is in a 3-D view (the volume's outline is yellow, the axes
    pure red, green and blue)."""
    return (img[..., 0] > 150) & (img[..., 1] > 40) & (img[..., 1] < 150) & (img[..., 2] < 120)


def _alone(stack: Stack, subsource: str, **options: Any) -> Any:
    """Segment A's layer with its voxels and one other subsource ("mesh", "skeletons")."""
    import neuroglancer

    return neuroglancer.SegmentationLayer(source=neuroglancer.LayerDataSource(
        url=f"precomputed://{stack.url('seg')}", enable_default_subsources=False,
        subsources={"default": True, subsource: True}), segments=[A], **options)


def _mesh(browser: Browser, stack: Stack, name: str) -> np.ndarray:
    """Where A's mesh is drawn in the 3-D view."""
    return _orange(_view(browser, _alone(stack, "mesh"), "3d", f"{name}-mesh"))


def _look(browser: Browser, stack: Stack, name: str) -> Look:
    import neuroglancer

    start = len(browser.responses)
    section = _view(browser, neuroglancer.ImageLayer(source=f"precomputed://{stack.url('img')}"),
                    "xy", f"{name}-image")
    seg = _view(browser, neuroglancer.SegmentationLayer(
        source=f"precomputed://{stack.url('seg')}", segments=[A]), "xy", f"{name}-segment")
    mesh = _mesh(browser, stack, name)
    skeleton = _view(browser, _alone(stack, "skeletons", skeleton_rendering=neuroglancer.
                                     SkeletonRenderingOptions(line_width3d=6)),
                     "3d", f"{name}-skeleton")
    paths = [u[len(stack.nginx.url):]
             for u, _ in browser.responses_since(start, stack.nginx.url + "/")]
    assert not browser.errors, browser.errors
    painted = np.abs(seg - 128).sum(-1) > 15  # the background is rgb(128, 128, 128)
    return Look(_voxels(section[..., 0]), _voxels(painted), mesh, _orange(skeleton), paths)


def _entries(stack: Stack, start: int, paths: list[str]) -> list[Entry]:
    """nginx's log entries after the first ``start``, once there is one for each of ``paths``
    (nginx writes its line once the response is sent: a moment after the page has it)."""
    deadline = time.monotonic() + 30
    while True:
        got = stack.log()[start:]
        if set(paths) <= {e.path for e in got} or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def _files(entries: list[Entry]) -> list[Entry]:
    """The entries of chunks, meshes and skeletons (the infos carry no ETag: never stored)."""
    return [e for e in entries if "/s0/" in e.path or "/mesh/" in e.path
            or "/skeletons/" in e.path]


def _quarters(mask: np.ndarray) -> tuple[int, int]:
    """Pixels of ``mask`` in the top left and the top right quarter of the 3-D view's volume."""
    return int(mask[140:250, 140:250].sum()), int(mask[140:250, 262:372].sum())


def _check_drawn(look: Look, image: np.ndarray, labels: np.ndarray, mesh_at: str) -> None:
    # the section, voxel for voxel (but for the axis lines and the outline)
    match = (look.section == image[Z]).mean()
    assert match > 0.95, match
    segment = labels[Z] == A
    assert (look.segment == segment).mean() > 0.97, (look.segment.sum(), segment.sum())
    left, right = _quarters(look.mesh)
    assert (left > 3000 and right < 50) if mesh_at == "left" else (right > 3000 and left < 50), \
        (mesh_at, left, right)
    left, right = _quarters(look.skeleton)
    assert left > 30 and right == 0, (left, right)  # the skeleton stays where A's voxels are


def _cloudvolume(stack: Stack, channel: str) -> np.ndarray:
    """The whole channel read by CloudVolume through nginx, as (z, y, x)."""
    cv = CloudVolume(f"precomputed://{stack.url(channel)}", progress=False, cache=False,
                     fill_missing=False, bounded=True)
    return np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0)


def _post(stack: Stack, channel: str, data: np.ndarray) -> None:
    z, y, x = WRITTEN
    url = (f"{stack.nginx.url}/v1/cutout/c/e/{channel}/0/{x.start}:{x.stop}/{y.start}:{y.stop}/"
           f"{z.start}:{z.stop}/")
    res = httpx.post(url, content=blosc.compress(data.tobytes(), typesize=data.itemsize),
                     headers={"Authorization": f"Token {RW}",
                              "Content-Type": "application/blosc"}, timeout=60)
    assert res.status_code == 201, res.text


def test_neuroglancer_through_nginx_draws_every_write_and_reloads_the_rest_from_the_caches(
        stack: Stack) -> None:
    image, labels = stack.image.copy(), stack.labels.copy()
    _settle(stack.root)  # files with ETags: nginx stores them
    with neuroglancer_browser() as browser:
        # 1. both channels, the mesh and the skeleton drawn through nginx ...
        start = len(stack.log())
        first = _look(browser, stack, "first")
        _check_drawn(first, image, labels, "left")
        entries = _files(_entries(stack, start, first.paths))
        assert {e.path.split("/")[5] for e in entries} == {"s0", "mesh", "skeletons"}, entries
        assert any(e.path.endswith(".shard") and e.status == 206 for e in entries), \
            entries  # read by range, from nginx's whole copy
        # CloudVolume through nginx too (another variant of each chunk in nginx's cache)
        np.testing.assert_array_equal(_cloudvolume(stack, "img"), image)
        np.testing.assert_array_equal(_cloudvolume(stack, "seg"), labels)

        # ... and again in a reloaded page: the browser's cache and nginx's answer for every
        # chunk and file, each use revalidated with a relay, which sends no body (304)
        browser.page.reload()
        start = len(stack.log())
        again = _look(browser, stack, "again")
        _check_drawn(again, image, labels, "left")
        entries = _files(_entries(stack, start, again.paths))
        assert entries
        for e in entries:
            assert e.cache in ("HIT", "REVALIDATED") and e.upstream in ("-", "304"), e
            if "/s0/" in e.path:  # the browser's own copy, revalidated through nginx
                assert e.status == 304 and e.size == 0, e

        # 2. a cutout POST through nginx (to either relay) writes a region of both channels
        image[WRITTEN] = np.random.default_rng(12).integers(200, 256, image[WRITTEN].shape,
                                                            dtype=np.uint8)
        labels[WRITTEN] = A
        _post(stack, "img", image[WRITTEN])
        _post(stack, "seg", labels[WRITTEN])
        browser.page.reload()
        start = len(stack.log())
        written = _look(browser, stack, "written")
        _check_drawn(written, image, labels, "left")  # the new voxels, the old mesh
        entries = _files(_entries(stack, start, written.paths))
        chunks = [e for e in entries if "/s0/" in e.path]
        assert chunks and all(e.status == 200 and e.size > 0 and e.upstream == "200"
                              for e in chunks), chunks  # fetched again from a relay

        # 3. A's mesh rewritten in the upstream layer, moved into the empty top right
        seg_url = f"precomputed://file://{stack.root}/seg"
        old = read_meshes(seg_url, [A])[A]
        moved = Mesh(old.vertices + np.array([SHIFT * VOXEL[2], 0, 0], np.float32), old.faces,
                     id=A)
        (shard,) = (stack.root / "seg" / "mesh").glob("*.shard")  # two meshes: one shard
        before = shard.read_bytes()
        write_meshes(seg_url, {A: moved}, format="multires", lods=2, sharded=True)
        assert shard.read_bytes() != before
        # at once: the relay gives the shard no ETag for 2 s, and nginx does not store it (if
        # the page asks that soon; the checks below hold either way) ...
        rewrote = len(stack.log())
        browser.page.reload()
        left, right = _quarters(_mesh(browser, stack, "rewritten-at-once"))
        assert right > 3000 and left < 50, (left, right)
        # ... and once the new shard has its ETag, nginx revalidates its copy with it
        _settle(stack.root)
        browser.page.reload()
        start = len(stack.log())
        rewritten = _look(browser, stack, "rewritten")
        _check_drawn(rewritten, image, labels, "right")
        entries = _files(_entries(stack, start, rewritten.paths))
        meshes = [e for e in entries if e.path.endswith(f"/mesh/{shard.name}")]
        assert meshes and all(e.upstream in ("200", "304") for e in meshes), meshes
        # nginx had the old shard: it fetched the new one from a relay (whole, once per
        # relay's answer), and cut the ranges the page asked for from it
        since = [e for e in stack.log()[rewrote:] if e.path.endswith(f"/mesh/{shard.name}")]
        assert any(e.upstream == "200" for e in since), since
        # the bytes nginx keeps for it now (another client's variant: stored, then reused)
        for status in ("MISS", "REVALIDATED"):
            res = httpx.get(f"{stack.url('seg')}/mesh/{shard.name}", timeout=60)
            assert res.headers["x-cache-status"] == status, res.headers
            assert res.content == shard.read_bytes()

    # 4. CloudVolume reads it all back through nginx
    np.testing.assert_array_equal(_cloudvolume(stack, "img"), image)
    np.testing.assert_array_equal(_cloudvolume(stack, "seg"), labels)
    cv = CloudVolume(f"precomputed://{stack.url('seg')}", progress=False, cache=False)
    got = cv.mesh.get([A, B])
    files = read_meshes(seg_url, [A, B])
    for i in (A, B):
        assert np.allclose(np.sort(np.asarray(got[i].vertices), axis=0),
                           np.sort(files[i].vertices, axis=0), atol=1e-3), i
    # the moved mesh, not the one nginx had: right of where that one ended
    assert np.asarray(got[A].vertices)[:, 0].min() > old.vertices[:, 0].max()
    skeletons = read_skeletons(seg_url, [A, B])
    for i, sk in skeletons.items():
        assert np.array_equal(np.asarray(cv.skeleton.get(i).vertices), sk.vertices), i
