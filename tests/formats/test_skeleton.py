"""Skeletons: the Skeleton type, SWC and the precomputed skeleton binary, and precomputed
skeleton directories written by voxgate and read by CloudVolume (and the other way round)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import kimimaro
import numpy as np
import osteoid
import pytest
from cloudvolume import CloudVolume

import voxgate
from voxgate.errors import (
    CorruptChunkError,
    InvalidRequestError,
    RemoteNotFoundError,
)
from voxgate.formats.skeleton import Skeleton, read_skeletons, write_skeletons

VOXEL = (40.0, 8.0, 4.0)  # z, y, x nm
OFFSET = (3, 5, 7)  # z, y, x voxels


def make_layer(path: Path) -> str:
    voxgate.create(f"precomputed://{path}", shape=(16, 40, 48), chunks=(16, 32, 32),
                   dtype="uint64", voxel_size=VOXEL, kind="segmentation", offset=OFFSET)
    return f"precomputed://{path}"


def branched(id: int | None = 3) -> Skeleton:
    """A small tree: a trunk 0-1-2-3 with a branch 1-4-5, plus an isolated vertex 6."""
    v = np.array([[0, 0, 0], [10, 0, 0], [20, 0, 0], [30, 0, 0], [10, 10, 0], [10, 20, 5],
                  [99, 99, 99]], np.float32)
    e = np.array([[0, 1], [1, 2], [2, 3], [1, 4], [4, 5]], np.uint32)
    r = np.array([1, 2, 3, 4, 5, 6, 7], np.float32)
    t = np.array([1, 3, 3, 3, 2, 2, 0], np.uint8)
    return Skeleton(v, e, r, t, id)


def edge_set(s: Any) -> set[frozenset[tuple[float, ...]]]:
    """Edges as pairs of positions: equal for the same graph, whatever the numbering."""
    v = np.round(np.asarray(s.vertices, np.float64), 3)
    return {frozenset((tuple(v[a]), tuple(v[b]))) for a, b in np.asarray(s.edges).tolist()}


def by_position(s: Any, values: np.ndarray) -> dict[tuple[float, ...], Any]:
    v = np.round(np.asarray(s.vertices, np.float64), 3)
    return {tuple(p): x for p, x in zip(v.tolist(), np.asarray(values).tolist(), strict=True)}


@pytest.fixture(scope="module")
def kimimaro_skeletons() -> dict[int, Skeleton]:
    """kimimaro's skeletons of two labels, moved into the world frame (voxel offset)."""
    labels = np.zeros((16, 40, 48), np.uint32)  # z, y, x
    labels[4:12, 8:14, 4:44] = 7  # a bar along x
    labels[4:12, 8:36, 20:26] = 7  # crossed by a bar along y
    labels[2:14, 30:38, 30:46] = 9  # a block
    res_xyz = np.asarray(VOXEL[::-1])
    out = kimimaro.skeletonize(labels.T, anisotropy=tuple(res_xyz), dust_threshold=0,
                               progress=False, parallel=1, fix_branching=True,
                               teasar_params={"scale": 1.5, "const": 20})
    skels = {}
    for i, sk in out.items():
        s = Skeleton.from_kimimaro(sk)
        s.vertices = s.vertices + (np.asarray(OFFSET[::-1]) * res_xyz).astype(np.float32)
        skels[int(i)] = s
    assert sorted(skels) == [7, 9]
    return skels


# -- the Skeleton type ---------------------------------------------------------------------------
def test_skeleton_converts_and_compares() -> None:
    s = Skeleton(np.zeros((3, 3), np.float64), [[0, 1], [1, 2]], [1, 2, 3], [0, 1, 2],
                 np.uint64(4))
    assert s.vertices.dtype == np.float32 and s.edges.dtype == np.uint32
    assert s.radius is not None and s.radius.dtype == np.float32
    assert s.vertex_types is not None and s.vertex_types.dtype == np.uint8
    assert s.id == 4 and len(s) == 3 and s.num_edges == 2
    assert s == Skeleton(s.vertices, s.edges, s.radius, s.vertex_types, 4)
    assert s != Skeleton(s.vertices, s.edges, None, s.vertex_types, 4)
    assert branched().cable_length() == pytest.approx(30 + 10 + np.hypot(10, 5))
    assert "7 vertices" in repr(branched())


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((np.zeros((2, 2)), [[0, 1]]), {}, r"shape \(n, 3\)"),
        ((np.array([["a"] * 3] * 2), [[0, 1]]), {}, "real numbers"),
        ((np.zeros((2, 3)), [[0, 2]]), {}, "refers to vertex 2"),
        ((np.zeros((2, 3)), [[0.0, 1.0]]), {}, "integer vertex indices"),
        ((np.zeros((2, 3)), [[0, 1, 1]]), {}, r"shape \(m, 2\)"),
        ((np.zeros((2, 3)), [[0, 1]]), {"radius": [1.0]}, "one value per vertex"),
        ((np.zeros((2, 3)), [[0, 1]]), {"vertex_types": [1.5, 2]}, "integers"),
        ((np.zeros((2, 3)), [[0, 1]]), {"vertex_types": [1, 256]}, "uint8"),
        ((np.zeros((2, 3)), [[0, 1]]), {"id": -3}, "uint64"),
        ((np.zeros((2, 3)), [[0, 1]]), {"attributes": {"x": [1, 2, 3]}}, "one row per vertex"),
        ((np.zeros((2, 3)), [[0, 1]]), {"attributes": {"radius": [1, 2]}}, "field of Skeleton"),
    ],
)
def test_skeleton_rejects_bad_input(args: tuple[Any, ...], kwargs: dict[str, Any],
                                    match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        Skeleton(*args, **kwargs)


# -- precomputed binary --------------------------------------------------------------------------
def test_precomputed_layout_matches_cloudvolume() -> None:
    s = branched()
    data = s.to_precomputed()
    nv, ne = struct.unpack_from("<II", data)
    assert (nv, ne) == (7, 5)
    assert len(data) == 8 + 12 * 7 + 8 * 5 + 4 * 7 + 7
    assert np.array_equal(np.frombuffer(data, "<f4", 21, 8).reshape(7, 3), s.vertices)
    assert np.array_equal(np.frombuffer(data, "<u4", 10, 92).reshape(5, 2), s.edges)
    # byte for byte what osteoid (CloudVolume's Skeleton) writes, and reads
    theirs = osteoid.Skeleton(s.vertices, s.edges, s.radius, s.vertex_types, segid=3)
    assert data == theirs.to_precomputed()
    back = osteoid.Skeleton.from_precomputed(data)
    assert np.array_equal(back.radius, s.radius)
    assert np.array_equal(back.vertex_types, s.vertex_types)
    assert Skeleton.from_precomputed(data, id=3) == s
    # no radius or types: written as zeros
    bare = Skeleton(s.vertices, s.edges)
    got = Skeleton.from_precomputed(bare.to_precomputed())
    assert got.radius is not None and not got.radius.any()
    # a file with vertices and edges only is valid too
    plain = data[: 8 + 12 * 7 + 8 * 5]
    assert Skeleton.from_precomputed(plain).radius is None


def test_precomputed_attributes_follow_the_info() -> None:
    attrs = [{"id": "vertex_types", "data_type": "uint8", "num_components": 1},
             {"id": "color", "data_type": "uint8", "num_components": 3},
             {"id": "radius", "data_type": "float32", "num_components": 1}]
    s = branched()
    s.attributes = {"color": np.arange(21, dtype=np.uint8).reshape(7, 3)}
    data = s.to_precomputed(attrs)
    at = 8 + 12 * 7 + 8 * 5
    assert np.array_equal(np.frombuffer(data, "u1", 7, at), s.vertex_types)
    assert np.array_equal(np.frombuffer(data, "u1", 21, at + 7).reshape(7, 3),
                          s.attributes["color"])
    assert np.array_equal(np.frombuffer(data, "<f4", 7, at + 28), s.radius)
    back = Skeleton.from_precomputed(data, attrs, id=3)
    assert back == s
    with pytest.raises(InvalidRequestError, match="does not have"):
        branched().to_precomputed(attrs)
    with pytest.raises(InvalidRequestError, match="data_type"):
        s.to_precomputed([{"id": "q", "data_type": "float64", "num_components": 1}])
    with pytest.raises(InvalidRequestError, match="3 components"):
        s.to_precomputed([{"id": "color", "data_type": "uint8", "num_components": 2}])


@pytest.mark.parametrize(
    ("cut", "match"),
    [
        (lambda d: d[:7], "two 4-byte counts"),
        (lambda d: d[:-1], "must hold"),
        (lambda d: d + b"\0", "must hold"),
        (lambda d: d[:8 + 12 * 7] + struct.pack("<II", 0, 70) + d[8 + 12 * 7 + 8:],
         "refers to vertex 70"),
    ],
)
def test_damaged_skeleton_is_corrupt(cut: Any, match: str) -> None:
    with pytest.raises(CorruptChunkError, match=match) as info:
        Skeleton.from_precomputed(cut(branched().to_precomputed()), name="seg/skeletons/3")
    assert info.value.chunk == "seg/skeletons/3"


# -- SWC -----------------------------------------------------------------------------------------
def test_swc_round_trip_and_order() -> None:
    s = branched()
    text = s.to_swc()
    rows = [line.split() for line in text.splitlines() if not line.startswith("#")]
    assert len(rows) == 7 and all(len(r) == 7 for r in rows)
    seen = set()
    for r in rows:  # every parent is written before its children
        assert int(r[6]) == -1 or int(r[6]) in seen
        seen.add(int(r[0]))
    assert [int(r[0]) for r in rows] == list(range(1, 8))
    roots = [r for r in rows if r[6] == "-1"]
    assert len(roots) == 2  # the tree (from its soma) and the isolated vertex
    back = Skeleton.from_swc(text, id=3)
    assert edge_set(back) == edge_set(s)
    assert by_position(back, back.radius) == by_position(s, s.radius)  # type: ignore[arg-type]
    assert by_position(back, back.vertex_types) == by_position(s, s.vertex_types)  # type: ignore[arg-type]
    # SWC order is kept on read, so a second round trip is exact
    assert Skeleton.from_swc(back.to_swc(), id=3) == back


def test_swc_interoperates_with_osteoid() -> None:
    s = branched()
    theirs = osteoid.Skeleton.from_swc(s.to_swc())
    assert edge_set(theirs) == edge_set(s)
    assert by_position(theirs, theirs.radius) == by_position(s, s.radius)  # type: ignore[arg-type]
    back = Skeleton.from_swc(osteoid.Skeleton(s.vertices, s.edges, s.radius, s.vertex_types,
                                              segid=3).to_swc())
    assert edge_set(back) == edge_set(s)


def test_swc_cycles_forests_and_bad_text() -> None:
    ring = Skeleton(np.eye(3, dtype=np.float32) * 10, [[0, 1], [1, 2], [2, 0]])
    back = Skeleton.from_swc(ring.to_swc())
    assert back.num_edges == 2  # a tree cannot hold the edge that closes the cycle
    text = """# comment
  # indented comment

10 1 0 0 0 1.5 -1
20 3 1 0 0 NA 10
5 3 2 0 0 1 20   # trailing comment
7 2 9 9 9 1 -1
"""
    s = Skeleton.from_swc(text)
    assert s.vertices[:, 0].tolist() == [0, 1, 2, 9]
    assert s.edges.tolist() == [[0, 1], [1, 2]]
    assert s.radius is not None and s.radius.tolist() == [1.5, 0, 1, 1]
    for bad, match in [("1 1 0 0 0 1\n", "7 columns"), ("1 1 0 0 x 1 -1\n", "index type"),
                       ("1 1 0 0 0 1 -1\n1 1 0 0 0 1 -1\n", "defined twice"),
                       ("1 1 0 0 0 1 4\n", "parent 4")]:
        with pytest.raises(InvalidRequestError, match=match):
            Skeleton.from_swc(bad)


# -- osteoid / kimimaro --------------------------------------------------------------------------
def test_from_kimimaro(kimimaro_skeletons: dict[int, Skeleton]) -> None:
    s = kimimaro_skeletons[7]
    assert s.id == 7 and s.num_vertices > 10 and s.num_edges == s.num_vertices - 1
    assert s.radius is not None and (s.radius > 0).all()
    # physical nanometres in the world frame: inside the label's box
    res = np.asarray(VOXEL[::-1])
    lo = (np.array([4, 8, 4]) + OFFSET[::-1]) * res
    hi = (np.array([44, 36, 12]) + OFFSET[::-1]) * res
    assert (s.vertices >= lo).all() and (s.vertices <= hi).all()
    # a skeleton in voxel space moves through its transform
    vox = osteoid.Skeleton([[1, 2, 3], [4, 5, 6]], [[0, 1]], segid=2, space="voxel",
                           transform=[[4, 0, 0, 1], [0, 8, 0, 0], [0, 0, 40, 0]])
    got = Skeleton.from_osteoid(vox)
    assert got.vertices.tolist() == [[5, 16, 120], [17, 40, 240]] and got.id == 2
    there = s.to_osteoid()
    assert np.array_equal(there.vertices, s.vertices) and there.id == 7
    assert Skeleton.from_osteoid(there) == s
    with pytest.raises(InvalidRequestError, match="osteoid"):
        Skeleton.from_osteoid(object())


# -- skeleton directories ------------------------------------------------------------------------
def test_write_read_by_cloudvolume(tmp_path: Path,
                                   kimimaro_skeletons: dict[int, Skeleton]) -> None:
    url = make_layer(tmp_path / "seg")
    info_path = tmp_path / "seg" / "info"
    info = json.loads(info_path.read_text())
    info["mesh"] = "mesh"
    info_path.write_text(json.dumps(info))
    skels = {**kimimaro_skeletons, 3: branched()}
    write_skeletons(url, skels)

    info = json.loads(info_path.read_text())
    assert info["skeletons"] == "skeletons" and info["mesh"] == "mesh"
    assert json.loads((tmp_path / "seg/skeletons/info").read_text()) == {
        "@type": "neuroglancer_skeletons",
        "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
        "vertex_attributes": [
            {"id": "radius", "data_type": "float32", "num_components": 1},
            # float32: Neuroglancer draws no uint8 attribute
            {"id": "vertex_types", "data_type": "float32", "num_components": 1},
        ],
    }
    cv = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False)
    for i, s in skels.items():
        got = cv.skeleton.get(i)
        assert got.id == i
        assert np.array_equal(got.vertices, s.vertices)
        assert np.array_equal(got.edges, s.edges)
        assert np.array_equal(got.radius, s.radius)
        assert np.array_equal(got.vertex_types, s.vertex_types)
    assert read_skeletons(url) == skels
    assert read_skeletons(url, 3) == {3: skels[3]}
    assert read_skeletons(url, [3, 4]) == {3: skels[3]}
    with pytest.raises(RemoteNotFoundError, match="4"):
        read_skeletons(url, [3, 4], strict=True)
    assert read_skeletons(url, skel_dir="elsewhere") == {}


def test_read_what_cloudvolume_writes(tmp_path: Path,
                                      kimimaro_skeletons: dict[int, Skeleton]) -> None:
    make_layer(tmp_path / "seg")
    cv = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False)
    cv.info["skeletons"] = "skels"
    cv.commit_info()
    cv.skeleton.meta.commit_info()
    for s in kimimaro_skeletons.values():
        cv.skeleton.upload(s.to_osteoid())  # gzipped: skels/<id>.gz on a local disk
    assert (tmp_path / "seg/skels/7.gz").exists()
    back = read_skeletons(f"precomputed://{tmp_path / 'seg'}")
    assert back == kimimaro_skeletons


def test_transform_and_extra_attributes_of_an_existing_dir(tmp_path: Path) -> None:
    url = make_layer(tmp_path / "seg")
    d = tmp_path / "seg" / "skeletons"
    d.mkdir()
    attrs = [{"id": "radius", "data_type": "float32", "num_components": 1},
             {"id": "label", "data_type": "uint16", "num_components": 1}]
    (d / "info").write_text(json.dumps({
        "@type": "neuroglancer_skeletons", "mip": 0, "spatial_index": None,
        "transform": [4, 0, 0, 10, 0, 8, 0, 0, 0, 0, 40, 0], "vertex_attributes": attrs}))
    s = branched()
    with pytest.raises(InvalidRequestError, match="label"):
        write_skeletons(url, {3: s})
    s.attributes = {"label": np.arange(7, dtype=np.uint16)}
    write_skeletons(url, {3: s})
    info = json.loads((d / "info").read_text())
    assert info["mip"] == 0 and info["vertex_attributes"] == attrs  # kept
    stored = Skeleton.from_precomputed((d / "3").read_bytes(), attrs)
    assert np.allclose(stored.vertices, (s.vertices - [10, 0, 0]) / [4, 8, 40])
    back = read_skeletons(url)[3]
    assert np.allclose(back.vertices, s.vertices, atol=1e-4)
    assert np.array_equal(back.attributes["label"], s.attributes["label"])
    assert back.vertex_types is None  # this directory does not store types
    got = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False).skeleton.get(3)
    assert np.allclose(got.vertices, s.vertices, atol=1e-4)
    assert np.array_equal(got.label, s.attributes["label"])


def test_damaged_and_unsupported_dirs(tmp_path: Path) -> None:
    url = make_layer(tmp_path / "seg")
    write_skeletons(url, {3: branched(), 4: branched(4)})
    d = tmp_path / "seg" / "skeletons"
    (d / "4").write_bytes((d / "4").read_bytes()[:-2])
    with pytest.raises(CorruptChunkError, match="must hold") as info:
        read_skeletons(url, [4])
    assert info.value.chunk is not None and info.value.chunk.endswith("skeletons/4")
    info_doc = json.loads((d / "info").read_text())
    (d / "info").write_text(json.dumps({**info_doc, "sharding": {"@type": "x"}}))
    with pytest.raises(InvalidRequestError, match="bad sharding spec"):
        read_skeletons(url)
    with pytest.raises(InvalidRequestError, match="bad sharding spec"):
        write_skeletons(url, {3: branched()}, sharded=True)
    (d / "info").write_text("{broken")
    with pytest.raises(CorruptChunkError, match="JSON"):
        read_skeletons(url)


def test_write_refuses_bad_requests(tmp_path: Path) -> None:
    url = make_layer(tmp_path / "seg")
    with pytest.raises(InvalidRequestError, match="from_kimimaro"):
        write_skeletons(url, {3: osteoid.Skeleton([[0, 0, 0]], [], segid=3)})
    with pytest.raises(InvalidRequestError, match="skeleton of segment 3"):
        write_skeletons(url, {4: branched(3)})
    with pytest.raises(InvalidRequestError, match="mapping"):
        write_skeletons(url, [branched()])  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="skel_dir"):
        write_skeletons(url, {3: branched()}, skel_dir="/abs")
    with pytest.raises(InvalidRequestError, match="precomputed layers"):
        write_skeletons(f"n5://{tmp_path / 'x.n5'}", {3: branched()})
    voxgate.create(f"precomputed://{tmp_path / 'img'}", shape=(8, 8, 8), chunks=(8, 8, 8),
                   dtype="uint8", voxel_size=(1, 1, 1))
    with pytest.raises(InvalidRequestError, match="image layer"):
        write_skeletons(f"precomputed://{tmp_path / 'img'}", {3: branched()})


def test_skeletons_on_object_storage(s3_bucket: str) -> None:
    location = f"s3://{s3_bucket}/seg"
    voxgate.create(f"precomputed://{location}", shape=(8, 8, 8), chunks=(8, 8, 8),
                   dtype="uint64", voxel_size=VOXEL, kind="segmentation")
    write_skeletons(f"precomputed://{location}", {3: branched(), 4: branched(4)})
    assert read_skeletons(f"precomputed://{location}") == {3: branched(), 4: branched(4)}


def test_ids_above_2_53(tmp_path: Path) -> None:
    url = make_layer(tmp_path / "seg")
    big = 2**60 + 1
    write_skeletons(url, {big: branched(big)})
    assert (tmp_path / "seg" / "skeletons" / str(big)).exists()
    assert read_skeletons(url) == {big: branched(big)}
    got = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False).skeleton.get(big)
    assert got.id == big
