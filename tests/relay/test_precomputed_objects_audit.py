"""What the precomputed dialect serves besides image chunks, read back by CloudVolume.

Tiny layers at odd offsets and shapes, written by CloudVolume (legacy meshes and skeletons with
vertex attributes, stored ``.gz`` as CloudFiles stores them; segment properties; provenance)
and by tensorstore (a sharded image scale beside an unsharded one), served by one real relay
on ``--data-root``.  CloudVolume through the relay must read what CloudVolume reads from the
files; plain HTTP checks what Neuroglancer relies on (types, gzip, ranges, 404s).
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
from cloudvolume import CloudVolume, Mesh, Skeleton

from .conftest import RW, RelayProcess, free_port, start_relay

SIZE = (45, 37, 13)  # x, y, z: no axis a multiple of the 16x16x8 chunks
OFFSET = (3, 11, 7)
RES = (6, 7, 30)
IDS = (77, 2**60 + 5)  # one id above float precision
SHARDING = {"@type": "neuroglancer_uint64_sharded_v1", "hash": "murmurhash3_x86_128",
            "preshift_bits": 1, "minishard_bits": 1, "shard_bits": 1,
            "minishard_index_encoding": "gzip", "data_encoding": "gzip"}
PROPS = {"@type": "neuroglancer_segment_properties", "inline": {
    "ids": [str(i) for i in IDS],
    "properties": [{"id": "label", "type": "label", "values": ["a", "b"]},
                   {"id": "n", "type": "number", "data_type": "uint32", "values": [1, 2]}]}}


@dataclass
class Layers:
    root: Path
    seg: Path  # CloudVolume-written segmentation with meshes, skeletons, properties
    img: Path  # sharded scale 0, unsharded scale 1


def _cv_segmentation(path: Path, labels: np.ndarray) -> Any:
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="segmentation", data_type="uint64",
        encoding="compressed_segmentation", resolution=list(RES), voxel_offset=list(OFFSET),
        volume_size=list(SIZE), chunk_size=[16, 16, 8], mesh="mesh")
    info["skeletons"] = "skeletons"
    info["segment_properties"] = "props"
    cv = CloudVolume(f"file://{path}", info=info, progress=False)
    cv.add_scale([2, 2, 1], chunk_size=[16, 16, 8])
    cv.commit_info()
    cv[:] = labels
    half = CloudVolume(f"file://{path}", mip=1, progress=False)
    half[:] = labels[::2, ::2]
    return CloudVolume(f"file://{path}", progress=False)


def _sharded_image(path: Path, image: np.ndarray) -> None:
    import tensorstore as ts

    for scale, data, offset, sharding in ((0, image, OFFSET, SHARDING),
                                          (1, image[::2, ::2], (1, 5, 7), None)):
        meta: dict[str, Any] = {
            "resolution": [RES[0] * 2**scale, RES[1] * 2**scale, RES[2]], "size": data.shape,
            "voxel_offset": offset, "chunk_size": [16, 16, 8], "encoding": "raw"}
        if sharding:
            meta["sharding"] = sharding
        t = ts.open({"driver": "neuroglancer_precomputed",
                     "kvstore": {"driver": "file", "path": str(path)}, "scale_metadata": meta,
                     "multiscale_metadata": {"type": "image", "data_type": "uint8",
                                             "num_channels": 1},
                     "create": True}).result()
        t[..., 0].write(data).result()


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> Layers:
    root = tmp_path_factory.mktemp("objects")
    labels = np.zeros(SIZE, np.uint64)  # x, y, z (CloudVolume's order)
    labels[5:20, 4:30, 2:10] = IDS[1]
    labels[22:40, 10:33, 3:12] = IDS[0]
    seg_path = root / "lab" / "em" / "seg"
    seg = _cv_segmentation(seg_path, labels)
    verts = np.array([[10, 20, 300], [60, 20, 300], [10, 90, 330], [70, 95, 400]], np.float32)
    faces = np.array([[0, 1, 2], [1, 2, 3]], np.uint32)
    seg.mesh.put([Mesh(verts, faces, segid=IDS[0]), Mesh(verts + 5, faces, segid=IDS[1])])
    attrs = [{"id": "radius", "data_type": "float32", "num_components": 1},
             {"id": "vertex_types", "data_type": "uint8", "num_components": 1},
             {"id": "color", "data_type": "uint16", "num_components": 3}]
    seg.skeleton.meta.info["vertex_attributes"] = attrs
    seg.skeleton.meta.commit_info()
    sk = Skeleton(verts, [[0, 1], [1, 2], [2, 3]], radii=np.arange(1, 5, dtype=np.float32),
                  vertex_types=np.arange(1, 5, dtype=np.uint8), segid=IDS[0],
                  extra_attributes=attrs)
    sk.color = np.arange(12, dtype=np.uint16).reshape(4, 3)
    seg.skeleton.upload(sk)
    # segment properties: named by the volume info, by the mesh info and by the skeleton
    # info (each relative to its own directory, as Neuroglancer resolves them)
    for name in ("props", "mesh_props", "skel_props"):
        (seg_path / name).mkdir()
        (seg_path / name / "info").write_text(json.dumps(PROPS))
    (seg_path / "mesh" / "info").write_text(json.dumps(
        {"@type": "neuroglancer_legacy_mesh", "segment_properties": "../mesh_props"}))
    skel_info = json.loads((seg_path / "skeletons" / "info").read_text())
    skel_info["segment_properties"] = "../skel_props"
    (seg_path / "skeletons" / "info").write_text(json.dumps(skel_info))
    seg.provenance.description = "audit layer"
    seg.provenance.owners = ["someone@example.org"]
    seg.commit_provenance()
    # a sibling with a properties path leaving the layer: never served
    shutil.copytree(seg_path, root / "lab" / "em" / "leaky")
    (root / "lab" / "em" / "leaky" / "mesh" / "info").write_text(json.dumps(
        {"@type": "neuroglancer_legacy_mesh", "segment_properties": "../../em/seg/props"}))

    img_path = root / "lab" / "em" / "img"
    image = np.random.default_rng(1).integers(0, 255, SIZE, dtype=np.uint8)
    _sharded_image(img_path, image)
    return Layers(root, seg_path, img_path)


@pytest.fixture(scope="module")
def relay(layers: Layers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    d = tmp_path_factory.mktemp("objects-relay")
    cfg = d / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
state_path = "{d / 'state.json'}"
[cache]
memory_bytes = "16 MiB"
[auth]
public_read = true
tokens = {{ "{RW}" = "read-write" }}
""")
    r = start_relay(cfg, free_port(), "--data-root", str(layers.root))
    yield r
    r.stop()


def _url(relay: RelayProcess, name: str) -> str:
    return f"{relay.url}/precomputed/lab/em/{name}"


def _both(relay: RelayProcess, path: Path, mip: int = 0) -> tuple[Any, Any]:
    files = CloudVolume(f"file://{path}", mip=mip, progress=False, cache=False)
    served = CloudVolume(f"precomputed://{_url(relay, path.name)}", mip=mip, progress=False,
                         cache=False)
    return files, served


def test_cloudvolume_reads_what_the_files_hold(relay: RelayProcess, layers: Layers) -> None:
    for path in (layers.seg, layers.img):  # every scale, the sharded one included
        for mip in (0, 1):
            files, served = _both(relay, path, mip)
            assert served.bounds == files.bounds, (path.name, mip)
            want = files[files.bounds]
            assert want.any()
            assert np.array_equal(served[files.bounds], want), (path.name, mip)
    files, served = _both(relay, layers.seg)
    want, got = files.mesh.get(list(IDS), fuse=False), served.mesh.get(list(IDS), fuse=False)
    for i in IDS:
        assert np.array_equal(got[i].vertices, want[i].vertices), i
        assert np.array_equal(got[i].faces, want[i].faces), i
    want_sk, got_sk = files.skeleton.get(IDS[0]), served.skeleton.get(IDS[0])
    assert [a["id"] for a in got_sk.extra_attributes] == ["radius", "vertex_types", "color"]
    assert np.array_equal(got_sk.vertices, want_sk.vertices)
    assert np.array_equal(got_sk.edges, want_sk.edges)
    assert np.array_equal(got_sk.radius, want_sk.radius)
    assert np.array_equal(got_sk.color, want_sk.color)


def test_http_details_neuroglancer_relies_on(relay: RelayProcess, layers: Layers) -> None:
    base = _url(relay, "seg")
    for path in ("info", "skeletons/info", "props/info", "mesh/info"):
        res = httpx.get(f"{base}/{path}")
        assert res.status_code == 200, path
        assert res.headers["content-type"] == "application/json", path
    # a fragment CloudFiles stored as .gz: as stored to a gzip client, decoded otherwise
    frag = json.loads((layers.seg / "mesh" / f"{IDS[0]}:0").read_text())["fragments"][0]
    stored = (layers.seg / "mesh" / (frag + ".gz")).read_bytes()
    with httpx.stream("GET", f"{base}/mesh/{frag}", headers={"Accept-Encoding": "gzip"}) as res:
        assert res.headers["content-encoding"] == "gzip"
        assert b"".join(res.iter_raw()) == stored
    plain = httpx.get(f"{base}/mesh/{frag}", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.content == gzip.decompress(stored)
    # absent fragments, skeletons and manifests: 404, not an empty 200 or a 500
    for path in (f"mesh/{frag}x", "mesh/5:0", "skeletons/5"):
        assert httpx.get(f"{base}/{path}").status_code == 404, path
    # ranges (of the decoded bytes): exact, 416 past the end
    whole = gzip.decompress(stored)
    part = httpx.get(f"{base}/mesh/{frag}", headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == whole[4:12]
    assert part.headers["content-range"] == f"bytes 4-11/{len(whole)}"
    past = httpx.get(f"{base}/mesh/{frag}", headers={"Range": f"bytes={len(whole)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(whole)}"
    # the relay serves its own scales (s0, s1), never the upstream's shard files
    shard = next((layers.img / "6_7_30").glob("*.shard"))
    assert httpx.get(f"{_url(relay, 'img')}/6_7_30/{shard.name}").status_code == 404


def test_segment_properties_named_by_mesh_and_skeleton_infos(relay: RelayProcess,
                                                              layers: Layers) -> None:
    base = _url(relay, "seg")
    # Neuroglancer resolves a mesh or skeleton info's segment_properties against that
    # directory: ../mesh_props is the layer's mesh_props/
    for name in ("props", "mesh_props", "skel_props"):
        res = httpx.get(f"{base}/{name}/info")
        assert res.status_code == 200, (name, res.text)
        assert res.headers["content-type"] == "application/json"
        assert res.json() == json.loads((layers.seg / name / "info").read_text())
        assert res.json()["inline"]["ids"][1] == str(2**60 + 5)
    # a path that leaves the layer is not followed
    res = httpx.get(f"{_url(relay, 'leaky')}/em/seg/props/info")
    assert res.status_code == 404


def test_provenance_through_the_relay(relay: RelayProcess, layers: Layers) -> None:
    files, served = _both(relay, layers.seg)
    assert files.provenance.description == "audit layer"
    assert served.provenance.description == files.provenance.description
    assert served.provenance.owners == files.provenance.owners
    res = httpx.get(f"{_url(relay, 'seg')}/provenance")
    assert res.headers["content-type"] == "application/json"
    # a layer without one: 404, as on storage (CloudVolume then makes a blank one)
    assert httpx.get(f"{_url(relay, 'img')}/provenance").status_code == 404


def test_a_bossdb_write_is_read_back_through_the_precomputed_dialect(
        relay: RelayProcess, layers: Layers) -> None:
    _, served = _both(relay, layers.img)
    before = served[served.bounds][..., 0]
    x0, x1, y0, y1, z0, z1 = 10, 30, 15, 40, 8, 12
    patch = np.full((z1 - z0, y1 - y0, x1 - x0), 201, np.uint8)
    res = httpx.post(f"{relay.url}/v1/cutout/lab/em/img/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/",
                     content=blosc.compress(patch.tobytes(), typesize=1),
                     headers={"Authorization": f"Token {RW}",
                              "Content-Type": "application/blosc"})
    assert res.status_code == 201, res.text
    after = served[served.bounds][..., 0]
    files = CloudVolume(f"file://{layers.img}", progress=False, cache=False)
    assert np.array_equal(after, files[files.bounds][..., 0])
    region = after[x0 - OFFSET[0]:x1 - OFFSET[0], y0 - OFFSET[1]:y1 - OFFSET[1],
                   z0 - OFFSET[2]:z1 - OFFSET[2]]
    assert (region == 201).all() and not np.array_equal(before, after)
