"""The relay serves the files of precomputed layers: meshes, skeletons, annotation layers.

Layers written by voxgate under a ``--data-root``: a segmentation with legacy meshes and
skeletons, one with multi-resolution meshes (and a ``.shard``-named file), a zarr
segmentation (no files), and layers at other depths.  CloudVolume reads the meshes and
skeletons through the relay and must get what voxgate reads from the files; Neuroglancer
draws the meshes through the relay in a 3-D panel; plain HTTP checks byte ranges, path
traversal, tokens and the channel listing.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cloudvolume import CloudVolume

import voxgate
from voxgate.formats.mesh import read_meshes, write_meshes
from voxgate.formats.skeleton import read_skeletons, write_skeletons
from voxgate.relay.catalog import data_root_volumes
from voxgate.synthetic import synthetic_labels

from .browser import Browser, neuroglancer_browser
from .conftest import RO, RW, RelayProcess, free_port, start_relay

SHAPE = (32, 96, 96)  # z, y, x
OFFSET = (10, 20, 30)
VOXEL = (40, 8, 8)


@dataclass
class Layers:
    root: Path
    ids: list[int]
    legacy: Path  # legacy meshes (one fragment stored .gz), an annotation layer beside them
    skel: Path  # skeletons
    multires: Path  # multi-resolution meshes (2 levels of detail) and a .shard file
    shard: bytes  # the .shard file's bytes


def _segmentation(path: Path, labels: np.ndarray) -> Any:
    seg = voxgate.create(f"precomputed://file://{path}", shape=labels.shape, chunks=(32, 64, 64),
                         dtype="uint64", voxel_size=VOXEL, kind="segmentation", offset=OFFSET)
    seg[:] = labels
    return seg


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> Layers:
    root = tmp_path_factory.mktemp("data")
    labels = synthetic_labels(SHAPE, cell=(16, 32, 32), seed=3)
    ids = [int(i) for i in np.unique(labels) if i][:6]

    legacy = root / "lab" / "em" / "legacy"
    seg = _segmentation(legacy, labels)
    meshes = voxgate.mesh(seg, ids=ids)  # world nm, the layer's offset included
    write_meshes(seg.url, meshes, format="legacy")
    skel = _segmentation(root / "lab" / "em" / "skel", labels)
    write_skeletons(skel.url, voxgate.skeletonize(skel, ids=ids, dust_threshold=0))
    # one fragment stored the way CloudFiles compresses it: <name>.gz
    manifest = json.loads((legacy / "mesh" / f"{ids[1]}:0").read_text())
    frag = legacy / "mesh" / manifest["fragments"][0]
    frag.with_name(frag.name + ".gz").write_bytes(gzip.compress(frag.read_bytes()))
    frag.unlink()
    # an annotation layer inside the layer, and files the layer's info does not name
    ann = legacy / "ann"
    (ann / "spatial0").mkdir(parents=True)
    (ann / "info").write_text(json.dumps({
        "@type": "neuroglancer_annotations_v1", "annotation_type": "POINT", "properties": [],
        "dimensions": {"x": [8e-9, "m"], "y": [8e-9, "m"], "z": [40e-9, "m"]},
        "lower_bound": [30, 20, 10], "upper_bound": [126, 116, 42], "relationships": [],
        "by_id": {"key": "by_id"},
        "spatial": [{"key": "spatial0", "grid_shape": [1, 1, 1], "chunk_size": [96, 96, 32],
                     "limit": 10}]}))
    points = np.array([[60, 50, 20], [90, 80, 30]], dtype="<f4")
    (ann / "spatial0" / "0_0_0").write_bytes(
        np.uint64(2).tobytes() + points.tobytes() + np.array([1, 2], "<u8").tobytes())
    (legacy / "secret").mkdir()
    (legacy / "secret" / "file").write_text("not declared")
    (legacy / "notes.txt").write_text("not declared")

    multires = root / "lab" / "em" / "multires"
    seg2 = _segmentation(multires, labels)
    write_meshes(seg2.url, meshes, format="multires", lods=2)
    shard = np.random.default_rng(7).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    (multires / "mesh" / "a1.shard").write_bytes(shard)

    # sharded multi-resolution meshes and sharded skeletons (neuroglancer_uint64_sharded_v1)
    sharded = _segmentation(root / "lab" / "em" / "sharded", labels)
    write_meshes(sharded.url, meshes, format="multires", lods=2, sharded=True)
    write_skeletons(sharded.url, voxgate.skeletonize(sharded, ids=ids, dust_threshold=0),
                    sharded=True)

    # a zarr segmentation: no mesh files; layers at other depths
    zseg = voxgate.create(f"zarr://{root}/lab/em/zseg.zarr", shape=SHAPE, chunks=(16, 64, 64),
                          dtype="uint64", voxel_size=VOXEL, kind="segmentation")
    zseg[:] = labels
    _segmentation(root / "flat", labels[:8, :16, :16])
    _segmentation(root / "lab" / "deep" / "er" / "seg2", labels[:8, :16, :16])
    return Layers(root, ids, legacy, root / "lab" / "em" / "skel", multires, shard)


def _config(path: Path, *, auth: bool) -> Path:
    text = f"""
[server]
host = "127.0.0.1"
upstream_timeout = 10
state_path = "{path.parent / 'state.json'}"
[cache]
memory_bytes = "32 MiB"
"""
    if auth:
        text += f"""
[auth]
public_read = false
tokens = {{ "{RW}" = "read-write", "{RO}" = "read" }}
"""
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def relay(layers: Layers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """An open relay (CloudVolume and Neuroglancer cannot send tokens) on the data root."""
    d = tmp_path_factory.mktemp("mesh-relay")
    r = start_relay(_config(d / "relay.toml", auth=False), free_port(), "--data-root",
                    str(layers.root))
    yield r
    r.stop()


@pytest.fixture(scope="module")
def private_relay(layers: Layers,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    d = tmp_path_factory.mktemp("mesh-relay-auth")
    r = start_relay(_config(d / "relay.toml", auth=True), free_port(), "--data-root",
                    str(layers.root))
    yield r
    r.stop()


def layer_url(relay: RelayProcess, name: str, where: str = "lab/em") -> str:
    return f"{relay.url}/precomputed/{where}/{name}"


def raw_request(relay: RelayProcess, path: str, method: str = "GET",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A request with the path sent exactly as given (httpx would normalize ``..``)."""
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        res = conn.getresponse()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
    finally:
        conn.close()


# -- the info -------------------------------------------------------------------------------------
def test_info_keeps_the_file_directories(relay: RelayProcess) -> None:
    info = httpx.get(layer_url(relay, "legacy") + "/info").json()
    assert info["mesh"] == "mesh" and "skeletons" not in info
    assert httpx.get(layer_url(relay, "skel") + "/info").json()["skeletons"] == "skeletons"
    assert info["@type"] == "neuroglancer_multiscale_volume" and info["type"] == "segmentation"
    assert httpx.get(layer_url(relay, "multires") + "/info").json()["mesh"] == "mesh"
    # not a precomputed upstream: no mesh key, and the mesh routes say why they 404
    zinfo = httpx.get(layer_url(relay, "zseg") + "/info").json()
    assert "mesh" not in zinfo and "skeletons" not in zinfo
    for path in ("mesh/info", "mesh/1:0", "skeletons/sub/1"):
        res = httpx.get(layer_url(relay, "zseg") + "/" + path)
        assert res.status_code == 404, (path, res.text)
        assert "not a precomputed layer" in res.json()["message"], res.text


def test_mesh_directory_info_is_served(relay: RelayProcess, layers: Layers) -> None:
    for name in ("legacy", "multires"):
        res = httpx.get(layer_url(relay, name) + "/mesh/info")
        assert res.status_code == 200
        assert res.headers["content-type"] == "application/json"
        assert res.json() == json.loads((layers.root / "lab/em" / name / "mesh/info").read_text())


# -- CloudVolume ----------------------------------------------------------------------------------
def cloudvolume(relay: RelayProcess, name: str, where: str = "lab/em") -> Any:
    return CloudVolume(f"precomputed://{layer_url(relay, name, where)}", progress=False,
                       cache=False)


@pytest.mark.parametrize("name", ["legacy", "multires", "sharded"])
def test_cloudvolume_meshes_through_the_relay_equal_the_files(relay: RelayProcess,
                                                              layers: Layers, name: str) -> None:
    files = read_meshes(f"precomputed://file://{layers.root}/lab/em/{name}", layers.ids)
    assert sorted(files) == layers.ids
    cv = cloudvolume(relay, name)
    got = cv.mesh.get(layers.ids, **({"fuse": False} if name == "legacy" else {}))
    assert sorted(got) == layers.ids
    for i in layers.ids:
        assert np.allclose(np.asarray(got[i].vertices), files[i].vertices, atol=1e-3), i
        assert np.array_equal(np.asarray(got[i].faces), files[i].faces), i


def test_cloudvolume_reads_a_gzip_stored_fragment(relay: RelayProcess, layers: Layers) -> None:
    # ids[1]'s fragment is stored as <name>.gz: served gzip-encoded to a client that accepts
    # it, decoded to one that does not, and CloudVolume reads the same mesh
    manifest = json.loads((layers.legacy / "mesh" / f"{layers.ids[1]}:0").read_text())
    url = layer_url(relay, "legacy") + "/mesh/" + manifest["fragments"][0]
    stored = (layers.legacy / "mesh" / (manifest["fragments"][0] + ".gz")).read_bytes()
    with httpx.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as res:
        assert res.status_code == 200 and res.headers["content-encoding"] == "gzip"
        assert b"".join(res.iter_raw()) == stored
    plain = httpx.get(url, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.content == gzip.decompress(stored)
    # a range of it is a range of the decoded bytes
    part = httpx.get(url, headers={"Range": "bytes=4-11", "Accept-Encoding": "gzip"})
    assert part.status_code == 206 and part.content == gzip.decompress(stored)[4:12]


@pytest.mark.parametrize("name", ["skel", "sharded"])
def test_cloudvolume_skeletons_through_the_relay_equal_the_files(relay: RelayProcess,
                                                                 layers: Layers,
                                                                 name: str) -> None:
    files = read_skeletons(f"precomputed://file://{layers.root}/lab/em/{name}", layers.ids)
    assert files and set(files) <= set(layers.ids)
    cv = cloudvolume(relay, name)
    for i, sk in files.items():
        got = cv.skeleton.get(i)
        assert got.id == i
        assert np.allclose(np.asarray(got.vertices), sk.vertices, atol=1e-4)
        assert np.array_equal(np.asarray(got.edges), sk.edges)


# -- byte ranges ----------------------------------------------------------------------------------
def _ranges(size: int) -> list[tuple[str, int, int]]:
    """(Range header, start, stop) of the cases every file is read with."""
    return [("bytes=0-0", 0, 1), ("bytes=10-99", 10, 100), (f"bytes={size - 5}-", size - 5, size),
            ("bytes=-7", size - 7, size), (f"bytes=3-{size + 1000}", 3, size),
            (f"bytes=-{size + 50}", 0, size), ("bytes= 2 - 5", 2, 6)]


@pytest.mark.parametrize("which", ["multires fragment file", "shard file"])
def test_byte_ranges_are_exact(relay: RelayProcess, layers: Layers, which: str) -> None:
    if which == "shard file":
        rel, data = "mesh/a1.shard", layers.shard
    else:
        rel = f"mesh/{layers.ids[0]}"
        data = (layers.multires / rel).read_bytes()
    size = len(data)
    assert size > 200
    url = layer_url(relay, "multires") + "/" + rel
    whole = httpx.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["accept-ranges"] == "bytes"
    for header, start, stop in _ranges(size):
        res = httpx.get(url, headers={"Range": header})
        assert res.status_code == 206, (header, res.text)
        assert res.content == data[start:stop], header
        assert res.headers["content-range"] == f"bytes {start}-{stop - 1}/{size}", header
        assert int(res.headers["content-length"]) == stop - start
    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        res = httpx.get(url, headers={"Range": header})
        assert res.status_code == 416, (header, res.text)
        assert res.headers["content-range"] == f"bytes */{size}"
        assert res.json()["status"] == 416
    for header in ("bytes=5-2", "bytes=0-1,4-5", "bytes=x-y"):
        res = httpx.get(url, headers={"Range": header})
        assert res.status_code == 416 and "Range" in res.json()["message"], header
    # another unit is ignored: the whole file
    assert httpx.get(url, headers={"Range": "items=0-1"}).content == data
    # HEAD: the same headers, no body
    status, headers, body = raw_request(relay, f"/precomputed/lab/em/multires/{rel}", "HEAD")
    assert status == 200 and int(headers["content-length"]) == size and body == b""
    status, headers, body = raw_request(relay, f"/precomputed/lab/em/multires/{rel}", "HEAD",
                                        {"Range": "bytes=5-9"})
    assert status == 206 and headers["content-range"] == f"bytes 5-9/{size}" and body == b""


def test_large_files_are_streamed_whole_and_by_range(relay: RelayProcess,
                                                    layers: Layers) -> None:
    # above 16 MiB a file (or a range of it) is sent in blocks instead of read whole
    data = np.random.default_rng(5).integers(0, 256, 17 * 2**20 + 3, dtype=np.uint8).tobytes()
    (layers.multires / "mesh" / "big.shard").write_bytes(data)
    url = layer_url(relay, "multires") + "/mesh/big.shard"
    whole = httpx.get(url)
    assert whole.status_code == 200 and int(whole.headers["content-length"]) == len(data)
    assert whole.content == data
    part = httpx.get(url, headers={"Range": f"bytes=5-{len(data) - 2}"})
    assert part.status_code == 206 and part.content == data[5:-1]
    assert part.headers["content-range"] == f"bytes 5-{len(data) - 2}/{len(data)}"


def test_annotation_layer_beside_the_segmentation(relay: RelayProcess, layers: Layers) -> None:
    base = layer_url(relay, "legacy") + "/ann"
    info = httpx.get(base + "/info")
    assert info.status_code == 200 and info.json()["@type"] == "neuroglancer_annotations_v1"
    spatial = httpx.get(base + "/spatial0/0_0_0")
    assert spatial.content == (layers.legacy / "ann/spatial0/0_0_0").read_bytes()
    assert httpx.get(base + "/spatial0/1_0_0").status_code == 404


# -- what is not served ---------------------------------------------------------------------------
TRAVERSAL = [
    "mesh/../info", "mesh/../../multires/info", "mesh/..%2F..%2Fmultires%2Finfo",
    "mesh/%2e%2e/secret/file", "mesh//info", "mesh/./info", "ann/spatial0/../../notes.txt",
    "mesh/..\\secret", "mesh/%5c..%5csecret",
]


@pytest.mark.parametrize("path", TRAVERSAL)
def test_path_traversal_is_refused(relay: RelayProcess, path: str) -> None:
    status, _, body = raw_request(relay, f"/precomputed/lab/em/legacy/{path}")
    assert status in (400, 404), (status, body)
    doc = json.loads(body)
    assert doc["status"] == status
    assert b"not declared" not in body and b"neuroglancer" not in body


NOT_DECLARED = ["secret/file", "notes.txt", "sharding/x", "mesh", "s0", "ann"]


@pytest.mark.parametrize("path", NOT_DECLARED)
def test_files_the_info_does_not_name_are_not_served(relay: RelayProcess, path: str) -> None:
    res = httpx.get(layer_url(relay, "legacy") + "/" + path)
    assert res.status_code == 404, res.text
    assert "not declared" not in res.text
    assert res.json()["status"] == 404


def test_trailing_slashes(relay: RelayProcess) -> None:
    # a trailing slash redirects to the path without it, as the router does elsewhere
    res = httpx.get(layer_url(relay, "legacy") + "/mesh/info/")
    assert res.status_code == 307 and res.headers["location"].endswith("/legacy/mesh/info")
    assert httpx.get(layer_url(relay, "legacy") + "/info/", follow_redirects=True).json()[
        "mesh"] == "mesh"
    res = httpx.get(layer_url(relay, "legacy") + "/")
    assert res.status_code == 404 and "no such endpoint" in res.json()["message"]


def test_an_absent_file_is_a_404_naming_it(relay: RelayProcess) -> None:
    res = httpx.get(layer_url(relay, "legacy") + "/mesh/999999:0")
    assert res.status_code == 404 and "no file mesh/999999:0" in res.json()["message"]
    res = httpx.get(layer_url(relay, "legacy") + "/secret/sub/file")
    assert res.status_code == 404
    assert "files only under mesh/" in res.json()["message"]
    # the unknown-scale message of the chunk route now says where the files are
    res = httpx.get(layer_url(relay, "legacy") + "/x0/0-64_0-64_0-32")
    assert res.status_code == 404
    assert "its files are under mesh/" in res.json()["message"]
    # no server path in any message
    for r in (res, httpx.get(layer_url(relay, "legacy") + "/mesh/nope")):
        assert str(os.sep + "tmp") not in r.text and "pytest" not in r.text


def test_tokens_apply_to_files(private_relay: RelayProcess, layers: Layers) -> None:
    base = layer_url(private_relay, "legacy")
    for path in ("/mesh/info", f"/mesh/{layers.ids[0]}:0", "/ann/info",
                 "/ann/spatial0/0_0_0"):
        res = httpx.get(base + path)
        assert res.status_code == 401, path
        assert res.json() == {"detail": "Authentication credentials were not provided."}
        bad = httpx.get(base + path, headers={"Authorization": "Token not-a-token"})
        assert bad.status_code == 401 and bad.json() == {"detail": "Invalid token."}
        ok = httpx.get(base + path, headers={"Authorization": f"Token {RO}"})
        assert ok.status_code == 200, path
    assert httpx.get(base + "/info", headers={"Authorization": f"Token {RO}"}).json()["mesh"] \
        == "mesh"
    assert httpx.get(base + "/mesh/info").status_code == 401


# -- --data-root ----------------------------------------------------------------------------------
def test_data_root_finds_layers_at_any_depth(layers: Layers) -> None:
    found = {key: url for key, url in data_root_volumes(layers.root)}
    assert set(found) == {("lab", "em", "legacy"), ("lab", "em", "multires"), ("lab", "em", "skel"),
                          ("lab", "em", "sharded"),
                          ("lab", "em", "zseg"), ("data", "default", "flat"),
                          ("lab", "deep_er", "seg2")}
    assert found[("lab", "em", "zseg")].startswith("zarr://")
    assert found[("lab", "deep_er", "seg2")] == f"precomputed://{layers.root}/lab/deep/er/seg2"


def test_data_root_skips_mesh_skeleton_and_annotation_directories(tmp_path: Path,
                                                                  layers: Layers) -> None:
    # directories of meshes, skeletons and annotations standing alone (not inside a layer)
    for name, kind in (("mesh", "neuroglancer_legacy_mesh"),
                       ("skeletons", "neuroglancer_skeletons"),
                       ("ann", "neuroglancer_annotations_v1")):
        d = tmp_path / "c" / "e" / name
        d.mkdir(parents=True)
        (d / "info").write_text(json.dumps({"@type": kind}))
        (d / "sub").mkdir()
        (d / "sub" / "info").write_text(json.dumps({"@type": kind}))
    _segmentation(tmp_path / "c" / "e" / "seg", np.ones((4, 8, 8), np.uint64))
    assert [key for key, _ in data_root_volumes(tmp_path)] == [("c", "e", "seg")]


def test_the_relay_lists_layers_not_their_directories(relay: RelayProcess) -> None:
    with relay.client(None) as http:
        colls = http.get("/v1/collection/").json()["collections"]
        assert sorted(colls) == ["data", "lab"]
        chans = http.get("/v1/collection/lab/experiment/em/channel/").json()["channels"]
        assert sorted(chans) == ["legacy", "multires", "sharded", "skel", "zseg"]
        assert http.get("/v1/collection/lab/experiment/deep_er/channel/").json()["channels"] \
            == ["seg2"]
    for name in ("mesh", "skeletons", "ann"):
        assert httpx.get(layer_url(relay, name) + "/info").status_code == 404
    flat = httpx.get(layer_url(relay, "flat", "data/default") + "/info")
    assert flat.status_code == 200 and flat.json()["scales"][0]["size"] == [16, 16, 8]


# -- Neuroglancer ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(relay: RelayProcess) -> Iterator[Browser]:
    with neuroglancer_browser() as b:
        yield b


@pytest.mark.parametrize("name", ["multires", "legacy", "sharded"])
def test_neuroglancer_draws_meshes_through_the_relay(relay: RelayProcess, layers: Layers,
                                                     browser: Browser, name: str) -> None:
    import neuroglancer

    prefix = layer_url(relay, name) + "/"
    before = len(browser.responses)
    with browser.viewer.txn() as s:
        s.layers.clear()
        s.layers["seg"] = neuroglancer.SegmentationLayer(source=f"precomputed://{prefix[:-1]}",
                                                         segments=layers.ids)
        s.layout = "3d"
        # a fresh viewer has no dimensions until the info arrives, and drops a position given
        # before: name them
        s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                                    scales=list(VOXEL[::-1]))
        s.position = [78, 68, 26]  # x, y, z voxels: the layer's centre (offset 30, 20, 10)
        s.projection_scale = 200
    img = browser.screenshot(save_as=f"relay-meshes-{name}.png")
    # the 3-D view's background is black and the volume's outline yellow: the rest are meshes
    yellow = (img[..., 0] > 150) & (img[..., 1] > 150) & (img[..., 2] < 100)
    drawn = ((img.sum(-1) > 30) & ~yellow).mean()
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    mine = browser.responses_since(before, prefix)
    assert any(u.endswith("/mesh/info") for u, _ in mine), mine
    if name == "sharded":  # manifests and fragments are read from shard files by range
        assert any(u.endswith(".shard") and st == 206 for u, st in mine), mine
    elif name == "multires":
        assert any(u.endswith(".index") for u, _ in mine), mine  # the manifests
        fragments = [(u, st) for u, st in mine if u.rsplit("/", 1)[1].isdigit()]
        assert fragments and all(st in (200, 206) for _, st in fragments), mine
    else:
        assert any(u.endswith(":0") for u, _ in mine), mine
    assert all(st in (200, 206) for _, st in mine), mine
    assert drawn > 0.05 and colours > 20, (drawn, colours, mine[:10])
    assert not browser.errors, browser.errors


def test_neuroglancer_draws_skeletons_through_the_relay(relay: RelayProcess, layers: Layers,
                                                       browser: Browser) -> None:
    import neuroglancer

    prefix = layer_url(relay, "skel") + "/"

    def draw(segments: list[int], name: str) -> np.ndarray:
        with browser.viewer.txn() as s:
            s.layers.clear()
            s.layers["seg"] = neuroglancer.SegmentationLayer(
                source=f"precomputed://{prefix[:-1]}", segments=segments)
            s.layout = "3d"
            s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                                        scales=list(VOXEL[::-1]))
            s.position = [78, 68, 26]
            s.projection_scale = 200
        img = browser.screenshot(save_as=name)
        yellow = (img[..., 0] > 150) & (img[..., 1] > 150) & (img[..., 2] < 100)
        return (img.sum(-1) > 30) & ~yellow  # not background, not the volume's outline

    # the same view without segments: the axes and the outline's anti-aliased edges
    empty = draw([], "relay-skeletons-none.png")
    before = len(browser.responses)
    drawn = draw(layers.ids, "relay-skeletons.png")
    mine = browser.responses_since(before, prefix)
    skeletons = [(u, st) for u, st in mine if "/skeletons/" in u]
    assert len([u for u, _ in skeletons if u.rsplit("/", 1)[1].isdigit()]) >= 2, mine
    assert all(st == 200 for _, st in mine), mine
    # skeletons are lines: few pixels, where the same view without them has none
    assert (drawn & ~empty).sum() > 200, ((drawn & ~empty).sum(), drawn.sum(), empty.sum())
    assert not browser.errors, browser.errors


# -- an upstream over HTTP: a relay in front of this relay ---------------------------------------
@pytest.fixture(scope="module")
def chained(relay: RelayProcess, tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[RelayProcess]:
    """A second relay whose upstreams are the first relay's precomputed layers over HTTP (the
    files are read through tensorstore's http kvstore: ranges, gzip bodies, absent files)."""
    d = tmp_path_factory.mktemp("mesh-relay-chained")
    cfg = _config(d / "relay.toml", auth=False)
    with open(cfg, "a") as f:
        for name in ("legacy", "multires", "skel", "sharded"):
            f.write(f'\n[[channel]]\nname = "far/em/{name}"\n'
                    f'upstream = "precomputed://{layer_url(relay, name)}"\n')
    r = start_relay(cfg, free_port())
    yield r
    r.stop()


def test_a_relay_of_a_relay_serves_the_same_files(chained: RelayProcess, layers: Layers) -> None:
    for name in ("legacy", "multires", "sharded"):
        files = read_meshes(f"precomputed://file://{layers.root}/lab/em/{name}", layers.ids)
        cv = cloudvolume(chained, name, "far/em")
        got = cv.mesh.get(layers.ids, **({"fuse": False} if name == "legacy" else {}))
        for i in layers.ids:
            assert np.allclose(np.asarray(got[i].vertices), files[i].vertices, atol=1e-3)
            assert np.array_equal(np.asarray(got[i].faces), files[i].faces)
    for name in ("skel", "sharded"):
        skels = read_skeletons(f"precomputed://file://{layers.root}/lab/em/{name}", layers.ids)
        cv = cloudvolume(chained, name, "far/em")
        for i, sk in skels.items():
            assert np.array_equal(np.asarray(cv.skeleton.get(i).edges), sk.edges)


def test_ranges_of_a_file_over_http(chained: RelayProcess, layers: Layers) -> None:
    data, size = layers.shard, len(layers.shard)
    url = layer_url(chained, "multires", "far/em") + "/mesh/a1.shard"
    assert httpx.get(url).content == data
    for header, start, stop in _ranges(size):
        res = httpx.get(url, headers={"Range": header})
        assert res.status_code == 206, (header, res.text)
        assert res.content == data[start:stop], header
        # the size is known when the range ran to the end; "*" otherwise
        total = res.headers["content-range"].rsplit("/", 1)[1]
        assert res.headers["content-range"].startswith(f"bytes {start}-{stop - 1}/"), header
        assert total in ("*", str(size)), header
    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}"):
        res = httpx.get(url, headers={"Range": header})
        assert res.status_code == 416, (header, res.text)
    assert httpx.get(layer_url(chained, "multires", "far/em") + "/mesh/nope").status_code == 404


def test_an_annotation_layer_over_http(chained: RelayProcess, layers: Layers) -> None:
    base = layer_url(chained, "legacy", "far/em")
    assert httpx.get(base + "/ann/info").json()["@type"] == "neuroglancer_annotations_v1"
    assert httpx.get(base + "/ann/spatial0/0_0_0").content == \
        (layers.legacy / "ann/spatial0/0_0_0").read_bytes()
    for path in ("/nothing/info", "/secret/file", "/nothing/a/b"):
        assert httpx.get(base + path).status_code == 404, path


CYAN_POINTS = "void main() { setColor(vec3(0.0, 1.0, 1.0)); setPointMarkerSize(20.0); }"


def test_neuroglancer_draws_an_annotation_layer_through_the_relay(
        relay: RelayProcess, browser: Browser) -> None:
    import neuroglancer

    source = layer_url(relay, "legacy") + "/ann"

    def draw(with_layer: bool, name: str) -> np.ndarray:
        with browser.viewer.txn() as s:
            s.layers.clear()
            if with_layer:
                s.layers["ann"] = neuroglancer.AnnotationLayer(
                    source=f"precomputed://{source}", shader=CYAN_POINTS)
            s.layout = "3d"
            s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                                        scales=list(VOXEL[::-1]))
            s.position = [78, 68, 26]
            s.projection_scale = 200
        img = browser.screenshot(save_as=name)
        return (img[..., 1] > 150) & (img[..., 2] > 150) & (img[..., 0] < 100)  # cyan

    empty = draw(False, "relay-annotations-none.png")
    before = len(browser.responses)
    drawn = draw(True, "relay-annotations.png")
    mine = browser.responses_since(before, source + "/")
    assert any(u.endswith("/ann/info") for u, _ in mine), mine
    assert any("/ann/spatial0/" in u for u, _ in mine), mine
    assert all(st == 200 for _, st in mine), mine
    # the two points of the annotation layer's spatial index, as cyan discs
    assert (drawn & ~empty).sum() > 50, ((drawn & ~empty).sum(), empty.sum())
    assert not browser.errors, browser.errors
