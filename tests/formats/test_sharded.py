"""Sharded (``neuroglancer_uint64_sharded_v1``) meshes and skeletons.

The shard codec is checked against CloudVolume's (hash, shard location, igneous-style shard
files) and tensorstore's (its sharded kvstore reads our shards, we read its); voxgate's
sharded layers are read by CloudVolume; concurrent writers of one shard lose nothing; damaged
shards raise; HTTP readers work through byte ranges."""

from __future__ import annotations

import json
import multiprocessing
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
from cloudvolume import CloudVolume
from cloudvolume.datasource.precomputed import mmh3
from cloudvolume.datasource.precomputed.sharding import (
    ShardingSpecification,
    synthesize_shard_files,
)

import voxgate
from voxgate.errors import CorruptChunkError, InvalidRequestError
from voxgate.formats.mesh import Mesh, encode_multires, read_meshes, write_meshes
from voxgate.formats.skeleton import Skeleton, read_skeletons, write_skeletons
from voxgate.storage.sharding import (
    ShardedStore,
    ShardingSpec,
    decode_shard,
    encode_shard,
    murmurhash3_x86_128,
)
from voxgate.synthetic import synthetic_labels

from ..static_http import serve_directory

VOXEL = (40.0, 8.0, 8.0)


def make_layer(path: Path, labels: np.ndarray | None = None) -> str:
    shape = labels.shape if labels is not None else (8, 8, 8)
    seg = voxgate.create(f"precomputed://file://{path}", shape=shape, chunks=(16, 32, 32),
                         dtype="uint64", voxel_size=VOXEL, kind="segmentation")
    if labels is not None:
        seg[:] = labels
    return seg.url


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[int, Mesh]]:
    """A small segmentation layer and voxgate's meshes of its first eight segments."""
    labels = synthetic_labels((24, 64, 64), cell=(12, 32, 32), seed=5)
    url = make_layer(tmp_path_factory.mktemp("layer") / "seg", labels)
    ids = [int(i) for i in np.unique(labels) if i][:8]
    return url, dict(voxgate.mesh(url, ids=ids))


def tetra(shift: float) -> Mesh:
    v = np.array([[0, 0, 0], [10, 0, 0], [0, 20, 0], [0, 0, 30]], np.float32) + shift
    return Mesh(v, np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.uint32))


def stick(seed: int) -> Skeleton:
    rng = np.random.default_rng(seed)
    n = 3 + seed % 5
    return Skeleton(rng.uniform(0, 500, (n, 3)), np.array([[i, i + 1] for i in range(n - 1)]),
                    rng.uniform(1, 5, n), np.arange(n) % 4)


def same_mesh(a: Mesh, b: Mesh, tol: float = 1e-3) -> bool:
    """The same triangles up to vertex order (CloudVolume may order vertices otherwise)."""
    if a.num_vertices != b.num_vertices or a.num_faces != b.num_faces:
        return False
    ta = np.sort(np.sort(a.vertices[a.faces].reshape(-1, 9), axis=0), axis=0)
    tb = np.sort(np.sort(b.vertices[b.faces].reshape(-1, 9), axis=0), axis=0)
    return bool(np.abs(np.sort(a.vertices, 0) - np.sort(b.vertices, 0)).max() <= tol
                and np.abs(ta - tb).max() <= tol)


def sharded_info(dir_: Path, kind: str, spec: ShardingSpec, **extra: Any) -> None:
    dir_.mkdir(parents=True, exist_ok=True)
    info = {"@type": kind, "sharding": spec.to_json(), **extra}
    (dir_ / "info").write_text(json.dumps(info))


# -- the codec ------------------------------------------------------------------------------------
def test_hash_and_location_match_cloudvolume() -> None:
    rng = np.random.default_rng(0)
    keys = np.concatenate([rng.integers(0, 2**63, 500, dtype=np.uint64) * np.uint64(2),
                           np.arange(50, dtype=np.uint64), [np.uint64(2**64 - 1)]])
    ours = murmurhash3_x86_128(keys)
    theirs = [mmh3.hash64(k.tobytes(), x64arch=False)[0] % 2**64 for k in keys]
    assert ours.tolist() == theirs
    for hash_, pre, mini, shard in [("murmurhash3_x86_128", 0, 3, 2), ("identity", 2, 1, 3),
                                    ("murmurhash3_x86_128", 1, 0, 0), ("identity", 0, 6, 5)]:
        spec = ShardingSpec(pre, hash_, mini, shard)
        cv = ShardingSpecification("neuroglancer_uint64_sharded_v1", pre, hash_, mini, shard)
        s, m = spec.locate(keys)
        for k, si, mi in zip(keys[:100], s[:100], m[:100], strict=True):
            loc = cv.compute_shard_location(k)
            # CloudVolume's shard number is the file name's hex digits
            assert spec.shard_name(si) == f"{loc.shard_number}.shard"
            assert int(mi) == int(loc.minishard_number)
    assert ShardingSpec(shard_bits=5).shard_name(0x1F) == "1f.shard"
    assert ShardingSpec(shard_bits=0).shard_name(0) == "0.shard"
    assert ShardingSpec(shard_bits=9).shard_name(10) == "00a.shard"


@pytest.mark.parametrize("mini,index_enc,data_enc", [(0, "raw", "raw"), (3, "gzip", "raw"),
                                                     (2, "raw", "gzip")])
def test_shard_codec_agrees_with_tensorstore(tmp_path: Path, mini: int, index_enc: str,
                                             data_enc: str) -> None:
    spec = ShardingSpec(0, "murmurhash3_x86_128", mini, 2, index_enc, data_enc)
    rng = np.random.default_rng(mini)
    keys = [int(k) for k in rng.integers(1, 2**60, 60, dtype=np.uint64)] + [1, 2**64 - 1]
    entries = {k: (bytes(rng.integers(0, 255, k % 9, dtype=np.uint8)),
                   bytes(rng.integers(0, 255, 1 + k % 50, dtype=np.uint8))) for k in keys}
    shards, _ = spec.locate(np.asarray(keys, np.uint64))
    for s in np.unique(shards).tolist():
        mine = {k: entries[k] for k, sk in zip(keys, shards.tolist(), strict=True) if sk == s}
        data = encode_shard(spec, mine)
        (tmp_path / spec.shard_name(s)).write_bytes(data)
        assert decode_shard(spec, data, "x", lambda k, v: len(entries[k][0])) == mine
    kv = ts.KvStore.open({"driver": "neuroglancer_uint64_sharded",
                          "base": f"file://{tmp_path}/", "metadata": spec.to_json()}).result()
    listed = sorted(struct.unpack(">Q", bytes(k))[0] for k in kv.list().result())
    assert listed == sorted(keys)
    for k in keys[:20]:
        assert kv.read(struct.pack(">Q", k)).result().value == entries[k][1]
    store = ShardedStore(str(tmp_path), spec)
    assert store.keys() == sorted(keys)
    got = store.get_many([*keys[:10], 12345], lambda k, v: len(entries[k][0]))
    assert got[12345] is None
    assert all(got[k] == entries[k] for k in keys[:10])


def test_we_read_what_tensorstore_writes(tmp_path: Path) -> None:
    spec = ShardingSpec(1, "identity", 2, 2, "gzip", "gzip")
    kv = ts.KvStore.open({"driver": "neuroglancer_uint64_sharded",
                          "base": f"file://{tmp_path}/", "metadata": spec.to_json()}).result()
    values = {k: f"value {k}".encode() * (k % 5 + 1) for k in range(0, 400, 7)}
    txn = ts.Transaction()
    for k, v in values.items():
        kv.with_transaction(txn).write(struct.pack(">Q", k), v)
    txn.commit_async().result()
    store = ShardedStore(str(tmp_path), spec)
    assert store.keys() == sorted(values)
    assert store.get_values(list(values)) == values
    got = store.get_many(values)
    assert {k: v[1] for k, v in got.items() if v} == values


def test_spec_sizes_and_checks() -> None:
    assert ShardingSpec.for_count(10).to_json()["shard_bits"] == 0
    for n in (1, 100, 5000, 100_000, 3_000_000):
        spec = ShardingSpec.for_count(n)
        per_shard = n / 2 ** spec.shard_bits
        assert per_shard <= 4096
        assert per_shard / 2 ** spec.minishard_bits <= 128 or spec.minishard_bits == 8
    assert ShardingSpec.from_json(ShardingSpec(2, "identity", 1, 3).to_json(), "x") == \
        ShardingSpec(2, "identity", 1, 3)
    bad = {"@type": "neuroglancer_uint64_sharded_v1", "hash": "md5", "preshift_bits": 0,
           "minishard_bits": 40, "shard_bits": 40, "data_encoding": "zstd"}
    with pytest.raises(InvalidRequestError, match=r"hash must be.*<= 64.*data_encoding"):
        ShardingSpec.from_json(bad, "the info")


# -- meshes ---------------------------------------------------------------------------------------
def test_sharded_meshes_read_by_cloudvolume(tmp_path: Path,
                                            layer: tuple[str, dict[int, Mesh]]) -> None:
    _, meshes = layer
    url = make_layer(tmp_path / "seg")
    # a spec with several shards and minishards and gzip'd manifests, to exercise them all
    spec = ShardingSpec(0, "murmurhash3_x86_128", 1, 2, "raw", "gzip")
    sharded_info(tmp_path / "seg/mesh", "neuroglancer_multilod_draco", spec,
                 vertex_quantization_bits=16, lod_scale_multiplier=1.0,
                 transform=[1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0])
    write_meshes(url, meshes, format="multires", lods=2, sharded=True)
    write_meshes(url, meshes, format="multires", lods=2, mesh_dir="plain")
    files = sorted(p.name for p in (tmp_path / "seg/mesh").iterdir())
    assert files == sorted({spec.shard_name(s) for s in
                            spec.locate(np.asarray(list(meshes), np.uint64))[0].tolist()}
                           | {"info"})
    cv = CloudVolume(f"file://{tmp_path}/seg")
    for lod in (0, 1):
        ours = read_meshes(url, lod=lod)
        assert sorted(ours) == sorted(meshes)
        # the same meshes as the unsharded layout holds
        assert ours == read_meshes(url, lod=lod, mesh_dir="plain")
        theirs = cv.mesh.get(list(meshes), lod=lod)
        for seg, m in ours.items():
            t = theirs[seg]
            assert same_mesh(Mesh(t.vertices, t.faces), m), (seg, lod)
    # tensorstore finds each manifest under its segment id
    kv = ts.KvStore.open({"driver": "neuroglancer_uint64_sharded",
                          "base": f"file://{tmp_path}/seg/mesh/",
                          "metadata": spec.to_json()}).result()
    seg = next(iter(meshes))
    manifest, _ = encode_multires(meshes[seg], lods=2, vertex_quantization_bits=16,
                                  lod_scale=8.0)
    assert kv.read(struct.pack(">Q", seg)).result().value == manifest


def test_we_read_igneous_style_sharded_meshes(tmp_path: Path,
                                              layer: tuple[str, dict[int, Mesh]]) -> None:
    """Shards made the way Igneous makes them: CloudVolume's synthesize_shard_files over
    ``fragments + manifest`` per segment, the index pointing at the manifest."""
    _, meshes = layer
    url = make_layer(tmp_path / "seg")
    spec = ShardingSpecification("neuroglancer_uint64_sharded_v1", 0, "murmurhash3_x86_128",
                                 2, 1, "gzip", "gzip")
    data, offsets = {}, {}
    for seg, m in meshes.items():
        manifest, frags = encode_multires(m, lods=2, vertex_quantization_bits=10, lod_scale=8.0)
        data[seg], offsets[seg] = frags + manifest, len(manifest)
    sharded_info(tmp_path / "seg/mesh", "neuroglancer_multilod_draco",
                 ShardingSpec(0, "murmurhash3_x86_128", 2, 1, "gzip", "gzip"),
                 vertex_quantization_bits=10,
                 lod_scale_multiplier=1.0, transform=[1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0])
    for name, blob in synthesize_shard_files(spec, data, offsets).items():
        (tmp_path / "seg/mesh" / name).write_bytes(blob)
    write_meshes(url, meshes, format="multires", lods=2, vertex_quantization_bits=10,
                 mesh_dir="plain")
    ours = read_meshes(url)
    assert sorted(ours) == sorted(meshes)
    assert ours == read_meshes(url, mesh_dir="plain")
    cv = CloudVolume(f"file://{tmp_path}/seg")  # and it is what CloudVolume reads too
    seg = next(iter(meshes))
    theirs = cv.mesh.get([seg], lod=0)[seg]
    assert same_mesh(Mesh(theirs.vertices, theirs.faces), ours[seg])


def test_adding_replacing_and_refusing(tmp_path: Path) -> None:
    url = make_layer(tmp_path / "seg")
    write_meshes(url, {1: tetra(0), 2: tetra(5)}, format="multires", sharded=True)
    write_meshes(url, {3: tetra(9), 1: tetra(100)}, format="multires", sharded=True)
    got = read_meshes(url)
    assert sorted(got) == [1, 2, 3]
    assert got[1].bounds()[0].tolist() == pytest.approx([100, 100, 100], abs=0.1)
    assert got[2].bounds()[0].tolist() == pytest.approx([5, 5, 5], abs=0.1)
    assert read_meshes(url, [2, 99]).keys() == {2}
    with pytest.raises(InvalidRequestError, match="holds sharded meshes; pass sharded=True"):
        write_meshes(url, {4: tetra(0)}, format="multires")
    with pytest.raises(InvalidRequestError, match="multi-resolution meshes only"):
        write_meshes(url, {4: tetra(0)}, format="legacy", sharded=True, mesh_dir="legacy")
    write_meshes(url, {4: tetra(0)}, format="multires", mesh_dir="plain")
    with pytest.raises(InvalidRequestError, match="holds unsharded meshes"):
        write_meshes(url, {4: tetra(0)}, format="multires", mesh_dir="plain", sharded=True)
    with pytest.raises(InvalidRequestError, match="sharded must be True or False"):
        write_meshes(url, {4: tetra(0)}, format="multires", sharded="yes")  # type: ignore
    # a legacy directory that claims to be sharded is not one Neuroglancer can read
    sharded_info(tmp_path / "seg/odd", "neuroglancer_legacy_mesh", ShardingSpec())
    with pytest.raises(CorruptChunkError, match="shards neuroglancer_multilod_draco"):
        read_meshes(url, [1], mesh_dir="odd")


def test_damaged_shards_raise(tmp_path: Path) -> None:
    url = make_layer(tmp_path / "seg")
    write_meshes(url, {1: tetra(0), 2: tetra(5)}, format="multires", sharded=True)
    shard = tmp_path / "seg/mesh/0.shard"
    whole = shard.read_bytes()
    shard.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CorruptChunkError):
        read_meshes(url, [1, 2])
    # a minishard index that is not the gzip its spec declares
    index = np.frombuffer(whole[:16], "<u8")
    start, end = 16 + int(index[0]), 16 + int(index[1])
    shard.write_bytes(whole[:start] + b"\x00" * (end - start) + whole[end:])
    with pytest.raises(CorruptChunkError, match="not gzip"):
        read_meshes(url, [1])
    with pytest.raises(CorruptChunkError, match="not gzip"):
        read_meshes(url)  # listing reads the same index


# -- skeletons ------------------------------------------------------------------------------------
def test_sharded_skeletons_with_cloudvolume_both_ways(tmp_path: Path) -> None:
    url = make_layer(tmp_path / "seg")
    skels = {i: stick(i) for i in range(1, 30)}
    write_skeletons(url, skels, sharded=True)
    info = json.loads((tmp_path / "seg/skeletons/info").read_text())
    assert info["sharding"]["@type"] == "neuroglancer_uint64_sharded_v1"
    assert {a["data_type"] for a in info["vertex_attributes"]} == {"float32"}
    assert [p.name for p in (tmp_path / "seg/skeletons").iterdir() if p.name != "info"] \
        == ["0.shard"]
    back = read_skeletons(url)
    assert back == {i: Skeleton(s.vertices, s.edges, s.radius, s.vertex_types, i)
                    for i, s in skels.items()}
    cv = CloudVolume(f"file://{tmp_path}/seg")
    for t in cv.skeleton.get([3, 17]):
        mine = skels[int(t.id)]
        np.testing.assert_allclose(t.vertices, mine.vertices, rtol=1e-6)
        np.testing.assert_array_equal(t.edges, mine.edges)
        np.testing.assert_array_equal(np.asarray(t.vertex_types).ravel(), mine.vertex_types)
    # shards the way CloudVolume/Igneous make them (uint8 vertex types) read by voxgate
    spec = ShardingSpecification("neuroglancer_uint64_sharded_v1", 0, "murmurhash3_x86_128",
                                 1, 1, "gzip", "gzip")
    theirs = {i: s.to_precomputed() for i, s in skels.items()}  # radius f32 + types u8
    (tmp_path / "seg/cv").mkdir()
    (tmp_path / "seg/cv/info").write_text(json.dumps({
        "@type": "neuroglancer_skeletons", "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
        "vertex_attributes": [{"id": "radius", "data_type": "float32", "num_components": 1},
                              {"id": "vertex_types", "data_type": "uint8",
                               "num_components": 1}],
        "sharding": ShardingSpec(0, "murmurhash3_x86_128", 1, 1, "gzip", "gzip").to_json(),
        "spatial_index": None}))
    for name, blob in synthesize_shard_files(spec, theirs).items():
        (tmp_path / "seg/cv" / name).write_bytes(blob)
    assert read_skeletons(url, skel_dir="cv") == back
    with pytest.raises(InvalidRequestError, match="holds sharded skeletons"):
        write_skeletons(url, {1: stick(1)})


# -- concurrent writers ---------------------------------------------------------------------------
def _writer(url: str, ids: list[int], what: str) -> None:
    for i in ids:  # one id per call: every call rewrites the one shard
        if what == "mesh":
            write_meshes(url, {i: tetra(float(i))}, format="multires", sharded=True)
        else:
            write_skeletons(url, {i: stick(i)}, sharded=True)


@pytest.mark.parametrize("what", ["mesh", "skeleton"])
def test_two_processes_writing_one_shard_lose_nothing(tmp_path: Path, what: str) -> None:
    url = make_layer(tmp_path / "seg")
    # the directory exists first, with one shard for every id
    if what == "mesh":
        write_meshes(url, {1000: tetra(0)}, format="multires", sharded=True)
    else:
        write_skeletons(url, {1000: stick(0)}, sharded=True)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(url, list(range(start, 40, 2)), what))
             for start in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    if what == "mesh":
        meshes = read_meshes(url)
        assert sorted(meshes) == [*range(40), 1000]
        assert all(meshes[i].bounds()[0][0] == pytest.approx(i, abs=0.01) for i in range(40))
    else:
        skels = read_skeletons(url)
        assert sorted(skels) == [*range(40), 1000]
        assert all(skels[i].num_vertices == stick(i).num_vertices for i in range(40))


# -- over HTTP ------------------------------------------------------------------------------------
def test_sharded_layers_over_http(tmp_path: Path) -> None:
    url = make_layer(tmp_path / "seg")
    meshes = {i: tetra(float(i)) for i in range(1, 12)}
    write_meshes(url, meshes, format="multires", sharded=True)
    write_skeletons(url, {i: stick(i) for i in range(1, 12)}, sharded=True)
    with serve_directory(tmp_path) as base:
        remote = f"precomputed://{base}/seg"
        got = read_meshes(remote, [3, 5, 99])
        assert got.keys() == {3, 5}
        assert got[3] == read_meshes(url, [3])[3]
        assert sorted(read_meshes(remote)) == list(range(1, 12))  # the shards are probed
        assert sorted(read_skeletons(remote)) == list(range(1, 12))
        assert read_skeletons(remote, [4])[4] == read_skeletons(url, [4])[4]
