"""Meshes: the Mesh type and its OBJ / PLY / legacy fragment codecs, and precomputed mesh
directories written by voxgate and read by CloudVolume (and the other way round)."""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path
from typing import Any

import DracoPy
import numpy as np
import pytest
import zmesh
from cloudvolume import CloudVolume
from cloudvolume import Mesh as CVMesh

import voxgate
from voxgate.errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    RemoteNotFoundError,
)
from voxgate.formats.mesh import (
    Mesh,
    concatenate,
    decode_multires,
    encode_multires,
    read_meshes,
    write_meshes,
)
from voxgate.formats.mesh.precomputed import delete_meshes
from voxgate.synthetic import synthetic_labels

#: (z, y, x): anisotropic voxels and a volume that does not start at 0
VOXEL = (40.0, 8.0, 4.0)
OFFSET = (3, 5, 7)
SHAPE = (24, 48, 40)


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return synthetic_labels(SHAPE, cell=(12, 24, 20), seed=3)


def world_meshes(labels: np.ndarray) -> dict[int, Mesh]:
    """zmesh meshes of every label in world nanometres: voxel (z, y, x) of the volume spans
    ``[(offset + i) * res, (offset + i + 1) * res)``, so a surface lies on voxel faces."""
    res_xyz = np.asarray(VOXEL[::-1])
    mesher = zmesh.Mesher(res_xyz)
    # C-order z, y, x is Fortran-order x, y, z: no copy.  close=True closes the labels that
    # touch the volume's border, padding it by one voxel
    mesher.mesh(labels.T, close=True)
    # zmesh puts (padded) voxel i at i * res and the surface half a voxel out
    shift = (np.asarray(OFFSET[::-1]) + 0.5 - 1) * res_xyz
    out = {}
    for i in mesher.ids():
        m = mesher.get(i, normals=False)
        out[int(i)] = Mesh(m.vertices + shift.astype(np.float32), m.faces, int(i))
    return out


@pytest.fixture(scope="module")
def meshes(labels: np.ndarray) -> dict[int, Mesh]:
    return world_meshes(labels)


def make_layer(path: Path, labels: np.ndarray | None = None) -> str:
    data = labels if labels is not None else np.zeros(SHAPE, np.uint64)
    vol = voxgate.create(f"precomputed://{path}", shape=data.shape, chunks=(16, 32, 32),
                         dtype="uint64", voxel_size=VOXEL, kind="segmentation", offset=OFFSET)
    vol[...] = data
    return f"precomputed://{path}"


def expected_box_nm(labels: np.ndarray, seg: int) -> tuple[np.ndarray, np.ndarray]:
    """The label's voxels as a nanometre box (x, y, z) in the world frame."""
    zyx = np.argwhere(labels == seg)
    lo = (zyx.min(axis=0) + OFFSET) * VOXEL
    hi = (zyx.max(axis=0) + 1 + OFFSET) * VOXEL
    return lo[::-1], hi[::-1]


def triangle_set(vertices: np.ndarray, faces: np.ndarray, decimals: int = 3) -> set[Any]:
    """Triangles as sets of rounded corner positions: equal for the same surface, whatever
    the vertex numbering."""
    tri = np.round(np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)], decimals)
    return {frozenset(map(tuple, t.tolist())) for t in tri}


def area(vertices: np.ndarray, faces: np.ndarray) -> float:
    t = np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)]
    return float(0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]),
                                      axis=1).sum())


def nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each point of ``a``, the distance to the nearest point of ``b``."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    try:
        from scipy.spatial import cKDTree
    except ImportError:  # brute force, fine for these small meshes
        pass
    else:
        return np.asarray(cKDTree(b).query(a)[0])
    out = np.empty(len(a))
    for s in range(0, len(a), 512):
        d = ((a[s:s + 512, None, :] - b[None, :, :]) ** 2).sum(axis=2)
        out[s:s + 512] = np.sqrt(d.min(axis=1))
    return out


def tetra(id: int | None = 5) -> Mesh:
    v = np.array([[0, 0, 0], [10, 0, 0], [0, 20, 0], [0, 0, 30]], np.float32)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.uint32)
    return Mesh(v, f, id)


# -- the Mesh type -------------------------------------------------------------------------------
def test_mesh_converts_and_counts() -> None:
    m = Mesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float64), [[0, 1, 2]],
             id=np.uint64(7))
    assert m.vertices.dtype == np.float32 and m.faces.dtype == np.uint32
    assert m.id == 7 and isinstance(m.id, int)
    assert len(m) == 3 and m.num_vertices == 3 and m.num_faces == 1
    lo, hi = m.bounds()
    assert lo.tolist() == [0, 0, 0] and hi.tolist() == [1, 1, 0]
    assert m == m.copy() and m != Mesh(m.vertices, m.faces, 8)
    assert "3 vertices" in repr(m)
    empty = Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64))
    assert empty.is_empty and len(empty) == 0
    with pytest.raises(InvalidRequestError, match="no vertices"):
        empty.bounds()


@pytest.mark.parametrize(
    ("vertices", "faces", "kwargs", "match"),
    [
        (np.array([["a", "b", "c"]]), [[0, 0, 0]], {}, "real numbers"),
        (np.zeros((3, 3), bool), [[0, 1, 2]], {}, "real numbers"),
        (np.zeros((3, 2)), [[0, 1, 2]], {}, r"shape \(n, 3\)"),
        (np.zeros((3, 3)), np.array([[0.0, 1.0, 2.0]]), {}, "integer vertex indices"),
        (np.zeros((3, 3)), [[0, 1, 2, 0]], {}, r"shape \(m, 3\)"),
        (np.zeros((3, 3)), [[0, 1, 3]], {}, r"faces\[0\] refers to vertex 3"),
        (np.zeros((3, 3)), [[0, -1, 2]], {}, "negative"),
        (np.array([[0, 0, np.nan], [0, 0, 0], [0, 0, 0]]), [[0, 1, 2]], {}, "NaN"),
        (np.array([[0, 0, 1e39], [0, 0, 0], [0, 0, 0]]), [[0, 1, 2]], {}, "too large"),
        (np.zeros((3, 3)), [[0, 1, 2]], {"normals": np.zeros((2, 3))}, "one per vertex"),
        (np.zeros((3, 3)), [[0, 1, 2]], {"id": -1}, "not a uint64"),
        (np.zeros((3, 3)), [[0, 1, 2]], {"id": "7"}, "integer segment id"),
    ],
)
def test_mesh_rejects_bad_input(vertices: Any, faces: Any, kwargs: dict[str, Any],
                                match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        Mesh(vertices, faces, **kwargs)


def test_concatenate_and_deduplicate_stitch_pieces(meshes: dict[int, Mesh]) -> None:
    whole = meshes[max(meshes, key=lambda i: meshes[i].num_faces)]
    # two overlapping pieces with their own copies of the shared vertices, as block-wise
    # meshing makes them: faces [0, 2/3) and [1/3, 1)
    n = whole.num_faces
    pieces = []
    for lo, hi in ((0, 2 * n // 3), (n // 3, n)):
        f = whole.faces[lo:hi]
        used, inv = np.unique(f, return_inverse=True)
        pieces.append(Mesh(whole.vertices[used], inv.reshape(-1, 3), whole.id))
    joined = concatenate(pieces)
    assert joined.id == whole.id
    assert joined.num_faces == 2 * n // 3 + (n - n // 3)
    stitched = joined.deduplicate()
    assert stitched.num_faces == n and stitched.num_vertices == whole.num_vertices
    assert triangle_set(stitched.vertices, stitched.faces) == triangle_set(whole.vertices,
                                                                           whole.faces)
    # the same surface in the same order, since pieces keep first-occurrence order
    assert np.array_equal(stitched.vertices, whole.vertices)


def test_deduplicate_rules() -> None:
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1e-5, 0, 0], [5, 5, 5]], np.float32)
    f = np.array([
        [0, 1, 2],
        [1, 2, 0],  # the same triangle, rotated: a repeat
        [0, 2, 1],  # opposite winding: a different surface, kept
        [3, 1, 2],  # vertex 3 merges into 0 at 3 decimals: a repeat of the first
        [0, 3, 1],  # degenerate once 3 merges into 0
    ], np.uint32)
    out = Mesh(v, f, normals=np.eye(5, 3, dtype=np.float32)).deduplicate(decimals=3)
    assert out.vertices.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]  # 4 unused: removed
    assert out.faces.tolist() == [[0, 1, 2], [0, 2, 1]]
    assert out.normals is not None and out.normals.shape == (3, 3)
    kept = Mesh(v, f).deduplicate(decimals=6)  # 1e-5 apart is apart at 6 decimals
    assert kept.num_vertices == 4 and kept.num_faces == 4
    with pytest.raises(InvalidRequestError, match="decimals"):
        Mesh(v, f).deduplicate(decimals=1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="Mesh objects"):
        Mesh.concatenate([Mesh(v, f), "mesh"])  # type: ignore[list-item]


# -- legacy fragment / .ngmesh -------------------------------------------------------------------
def test_precomputed_fragment_layout_and_round_trip(meshes: dict[int, Mesh]) -> None:
    m = next(iter(meshes.values()))
    data = m.to_precomputed()
    (n,) = struct.unpack_from("<I", data)
    assert n == m.num_vertices
    assert len(data) == 4 + 12 * n + 12 * m.num_faces
    assert np.array_equal(np.frombuffer(data, "<f4", 3 * n, 4).reshape(-1, 3), m.vertices)
    assert np.array_equal(np.frombuffer(data, "<u4", offset=4 + 12 * n).reshape(-1, 3), m.faces)
    # byte for byte what CloudVolume writes, and what CloudVolume reads
    assert data == bytes(CVMesh(m.vertices, m.faces, None).to_precomputed())
    cv = CVMesh.from_precomputed(data)
    assert np.array_equal(cv.vertices, m.vertices) and np.array_equal(cv.faces, m.faces)
    back = Mesh.from_precomputed(data, id=m.id)
    assert back == m
    assert m.to_ngmesh() == data and Mesh.from_ngmesh(data, id=m.id) == m


@pytest.mark.parametrize(
    ("cut", "match"),
    [
        (lambda d: d[:3], "4-byte vertex count"),
        (lambda d: d[:4 + 12 * 3 + 5], "declares 4 vertices"),
        (lambda d: d[:-1], "not whole triangles"),
        (lambda d: d[:-12] + struct.pack("<III", 0, 1, 9), "refers to vertex 9"),
        (lambda d: struct.pack("<I", 2**31) + d[4:], "declares 2147483648 vertices"),
    ],
)
def test_damaged_fragment_is_corrupt(cut: Any, match: str) -> None:
    with pytest.raises(CorruptChunkError, match=match) as info:
        Mesh.from_precomputed(cut(tetra().to_precomputed()), name="seg/mesh/5:0:x")
    assert info.value.chunk == "seg/mesh/5:0:x"


# -- OBJ and PLY ---------------------------------------------------------------------------------
def test_obj_round_trip_is_exact(meshes: dict[int, Mesh]) -> None:
    m = next(iter(meshes.values()))
    text = m.to_obj()
    assert text.startswith("# voxgate mesh")
    back = Mesh.from_obj(text, id=m.id)
    assert back == m
    # CloudVolume reads it as the same mesh
    cv = CVMesh.from_obj(text)
    assert np.array_equal(cv.vertices, m.vertices) and np.array_equal(cv.faces, m.faces)
    # a float32 that needs all 9 digits survives
    odd = Mesh(np.array([[0.1, 1 / 3, 12345.678], [1, 2, 3], [4, 5, 6]], np.float32),
               [[0, 1, 2]])
    assert Mesh.from_obj(odd.to_obj()) == odd


def test_obj_with_normals_and_other_writers_forms() -> None:
    m = tetra()
    m.normals = np.asarray(np.eye(4, 3), np.float32)
    back = Mesh.from_obj(m.to_obj().encode(), id=5)
    assert back == m
    text = """# from another tool
o thing
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
vt 0 0
vn 0 0 1
f 1/1/1 2/1/1 3/1/1 4/1/1
f -4 -2 -1
s off
"""
    q = Mesh.from_obj(text)
    assert q.faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 2, 3]]
    assert q.normals is None  # corners use one shared normal, not one per vertex
    for bad, match in [("v 1 2\n", "three numbers"), ("v 0 0 0\nf 1 2 3\n", "out of range"),
                       ("v 0 0 0\nf 1 x 1\n", "not a vertex index"),
                       ("v 0 0 0\nv 1 1 1\nf 1 2\n", "at least 3")]:
        with pytest.raises(InvalidRequestError, match=match):
            Mesh.from_obj(bad)


def read_ply_independently(data: bytes) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A minimal reader for the binary PLY voxgate writes, written from the PLY spec."""
    head, body = data.split(b"end_header\n", 1)
    lines = head.decode().splitlines()
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    nv = int(next(x for x in lines if x.startswith("element vertex")).split()[2])
    nf = int(next(x for x in lines if x.startswith("element face")).split()[2])
    props = [x.split()[2] for x in lines if x.startswith("property float")]
    assert "property list uchar uint vertex_indices" in lines
    verts = np.frombuffer(body, "<f4", nv * len(props)).reshape(nv, len(props))
    faces = np.frombuffer(body, np.dtype([("n", "u1"), ("v", "<u4", 3)]), nf,
                          offset=verts.nbytes)
    assert (faces["n"] == 3).all()
    assert len(body) == verts.nbytes + faces.nbytes
    return verts, faces["v"], props


def test_ply_is_binary_little_endian_and_reads_back(meshes: dict[int, Mesh]) -> None:
    m = next(iter(meshes.values()))
    data = m.to_ply()
    verts, faces, props = read_ply_independently(data)
    assert props == ["x", "y", "z"]
    assert np.array_equal(verts, m.vertices) and np.array_equal(faces, m.faces)
    assert Mesh.from_ply(data, id=m.id) == m
    n = tetra()
    n.normals = np.asarray(np.eye(4, 3), np.float32)
    verts, faces, props = read_ply_independently(n.to_ply())
    assert props == ["x", "y", "z", "nx", "ny", "nz"]
    assert Mesh.from_ply(n.to_ply(), id=5) == n
    # CloudVolume's PLY ("list int int") and an ascii PLY with a quad read too
    cv = bytes(CVMesh(m.vertices, m.faces, None).to_ply())
    assert Mesh.from_ply(cv, id=m.id) == m
    ascii_ply = b"""ply
format ascii 1.0
element vertex 4
property float x
property float y
property float z
element face 1
property list uchar int vertex_index
end_header
0 0 0
1 0 0
1 1 0
0 1 0
4 0 1 2 3
"""
    q = Mesh.from_ply(ascii_ply)
    assert q.faces.tolist() == [[0, 1, 2], [0, 2, 3]] and q.vertices[2].tolist() == [1, 1, 0]
    big = ascii_ply.split(b"end_header")[0].replace(b"ascii", b"binary_big_endian")
    big += b"end_header\n" + np.array([0, 0, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0], ">f4").tobytes()
    big += b"\x04" + np.array([0, 1, 2, 3], ">i4").tobytes()
    assert Mesh.from_ply(big) == q
    with pytest.raises(InvalidRequestError, match="PLY"):
        Mesh.from_ply(b"not a ply")


def test_ply_read_by_trimesh(meshes: dict[int, Mesh]) -> None:
    import io

    import trimesh  # in the test extra: a missing oracle is an error, not a skip

    m = next(iter(meshes.values()))
    t = trimesh.load(io.BytesIO(m.to_ply()), file_type="ply", process=False)
    assert np.array_equal(np.asarray(t.vertices, np.float32), m.vertices)
    assert np.array_equal(np.asarray(t.faces), m.faces)


# -- legacy mesh directories ---------------------------------------------------------------------
def test_legacy_write_read_by_cloudvolume(tmp_path: Path, labels: np.ndarray,
                                          meshes: dict[int, Mesh]) -> None:
    url = make_layer(tmp_path / "seg", labels)
    info_path = tmp_path / "seg" / "info"
    info = json.loads(info_path.read_text())
    info["custom"] = {"kept": True}
    info_path.write_text(json.dumps(info))

    write_meshes(url, meshes, format="legacy")

    info = json.loads(info_path.read_text())
    assert info["mesh"] == "mesh" and info["custom"] == {"kept": True}
    assert json.loads((tmp_path / "seg/mesh/info").read_text()) == {
        "@type": "neuroglancer_legacy_mesh"}
    seg = min(meshes)
    manifest = json.loads((tmp_path / f"seg/mesh/{seg}:0").read_text())
    (frag,) = manifest["fragments"]
    lo, hi = expected_box_nm(labels, seg)
    vlo = (lo / VOXEL[::-1]).astype(int)
    vhi = (hi / VOXEL[::-1]).astype(int)
    name, token = frag.rsplit(":", 1)   # (a new token at every write: no name comes back)
    assert name == f"{seg}:0:{vlo[0]}-{vhi[0]}_{vlo[1]}-{vhi[1]}_{vlo[2]}-{vhi[2]}"
    assert len(token) == 12

    cv = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False)
    got = cv.mesh.get(sorted(meshes), fuse=False)
    assert sorted(got) == sorted(meshes)
    for i, m in meshes.items():
        assert np.array_equal(got[i].vertices, m.vertices)
        assert np.array_equal(got[i].faces, m.faces)
        # the surface sits on the label's voxel faces, in world nanometres
        lo, hi = expected_box_nm(labels, i)
        assert np.allclose(got[i].vertices.min(axis=0), lo)
        assert np.allclose(got[i].vertices.max(axis=0), hi)

    back = read_meshes(url)
    assert back == meshes
    assert read_meshes(url, [seg]) == {seg: meshes[seg]}
    assert read_meshes(tmp_path / "seg", seg) == {seg: meshes[seg]}  # a bare path


def test_read_what_cloudvolume_writes(tmp_path: Path, meshes: dict[int, Mesh]) -> None:
    url = make_layer(tmp_path / "seg")
    cv = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False)
    ids = sorted(meshes)[:4]
    cv.mesh.put([CVMesh(meshes[i].vertices, meshes[i].faces, None, segid=i) for i in ids[:2]],
                compress="gzip")
    cv.mesh.put([CVMesh(meshes[i].vertices, meshes[i].faces, None, segid=i) for i in ids[2:]],
                compress=None)
    names = os.listdir(tmp_path / "seg" / "mesh")
    assert f"{ids[0]}:0:1.gz" in names and f"{ids[3]}:0:1" in names  # CloudFiles' suffix
    back = read_meshes(url)
    assert sorted(back) == ids
    for i in ids:
        assert back[i] == meshes[i]
    # a mesh voxgate rewrites is the one CloudVolume reads afterwards, whatever compressed
    # variants CloudVolume left
    replacement = Mesh(meshes[ids[1]].vertices, meshes[ids[1]].faces, ids[0])
    write_meshes(url, {ids[0]: replacement})
    again = cv.mesh.get([ids[0]], fuse=False)[ids[0]]
    assert np.array_equal(again.vertices, replacement.vertices)
    assert read_meshes(url, [ids[0]])[ids[0]] == replacement


def test_legacy_several_fragments_and_transform(tmp_path: Path) -> None:
    """A mesh split over fragments (Igneous' layout) and a mesh info with a transform."""
    url = make_layer(tmp_path / "seg")
    d = tmp_path / "seg" / "mesh"
    d.mkdir()
    a, b = tetra(), tetra()
    b.vertices += 100
    (d / "9:0").write_text(json.dumps({"fragments": ["9:0:a", "9:0:b"]}))
    (d / "9:0:a").write_bytes(a.to_precomputed())
    (d / "9:0:b.gz").write_bytes(gzip.compress(b.to_precomputed()))
    got = read_meshes(url, [9], mesh_dir="mesh")[9]
    assert got.num_faces == 8 and got == concatenate([a, b], id=9)
    (d / "info").write_text(json.dumps({"@type": "neuroglancer_legacy_mesh",
                                        "transform": [2, 0, 0, 1, 0, 2, 0, 0, 0, 0, 2, 0]}))
    moved = read_meshes(url, [9])[9]
    assert np.allclose(moved.vertices, got.vertices * 2 + [1, 0, 0])
    info = json.loads((tmp_path / "seg/info").read_text())
    (tmp_path / "seg/info").write_text(json.dumps({**info, "mesh": "mesh"}))  # for CloudVolume
    cv = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False)
    assert np.allclose(np.sort(cv.mesh.get([9], fuse=False)[9].vertices, axis=0),
                       np.sort(moved.vertices, axis=0))
    # a mesh added is stored through the inverse of the transform (nm read back)
    write_meshes(url, {10: tetra(10)})
    assert np.allclose(read_meshes(url, [10])[10].vertices, tetra(10).vertices)
    assert json.loads((d / "info").read_text())["transform"] == [2, 0, 0, 1, 0, 2, 0, 0, 0, 0,
                                                                2, 0]


def test_missing_meshes_and_damaged_files(tmp_path: Path) -> None:
    url = make_layer(tmp_path / "seg")
    write_meshes(url, {5: tetra(), 6: tetra(6)})
    assert read_meshes(url, [5, 7]) == {5: tetra()}
    with pytest.raises(RemoteNotFoundError, match="7"):
        read_meshes(url, [5, 7], strict=True)
    d = tmp_path / "seg" / "mesh"
    frag = json.loads((d / "6:0").read_text())["fragments"][0]
    (d / frag).write_bytes((d / frag).read_bytes()[:-5])
    with pytest.raises(CorruptChunkError, match="not whole triangles") as info:
        read_meshes(url, [6])
    assert info.value.chunk is not None and frag in info.value.chunk
    (d / frag).unlink()
    with pytest.raises(RemoteNotFoundError, match="does not exist"):
        read_meshes(url, [6])
    (d / "6:0").write_text("{not json")
    with pytest.raises(CorruptChunkError, match="legacy manifest"):
        read_meshes(url, [6])
    # a layer without meshes reads as no meshes
    empty = make_layer(tmp_path / "empty")
    assert read_meshes(empty) == {}


# -- multi-resolution meshes ---------------------------------------------------------------------
def parse_manifest(data: bytes) -> dict[str, Any]:
    """The .index layout of the Neuroglancer spec, parsed independently of voxgate."""
    chunk = np.frombuffer(data, "<f4", 3, 0)
    origin = np.frombuffer(data, "<f4", 3, 12)
    (lods,) = struct.unpack_from("<I", data, 24)
    at = 28
    scales = np.frombuffer(data, "<f4", lods, at)
    at += 4 * lods
    offsets = np.frombuffer(data, "<f4", 3 * lods, at).reshape(lods, 3)
    at += 12 * lods
    counts = np.frombuffer(data, "<u4", lods, at)
    at += 4 * lods
    positions, sizes = [], []
    for nf in counts:
        positions.append(np.frombuffer(data, "<u4", 3 * nf, at).reshape(3, nf).T)
        at += 12 * int(nf)
        sizes.append(np.frombuffer(data, "<u4", nf, at))
        at += 4 * int(nf)
    assert at == len(data)
    return {"chunk": chunk, "origin": origin, "lods": lods, "scales": scales,
            "offsets": offsets, "positions": positions, "sizes": sizes}


def zorder(p: np.ndarray) -> int:
    code = 0
    for bit in range(21):
        for axis in range(3):
            code |= ((int(p[axis]) >> bit) & 1) << (3 * bit + axis)
    return code


@pytest.mark.parametrize(("lods", "bits"), [(1, 16), (3, 16), (2, 10)])
def test_multires_write_read_by_cloudvolume(tmp_path: Path, labels: np.ndarray,
                                            meshes: dict[int, Mesh], lods: int,
                                            bits: int) -> None:
    url = make_layer(tmp_path / "seg", labels)
    write_meshes(url, meshes, format="multires", lods=lods, vertex_quantization_bits=bits)
    d = tmp_path / "seg" / "mesh"
    info = json.loads((d / "info").read_text())
    assert info == {"@type": "neuroglancer_multilod_draco", "vertex_quantization_bits": bits,
                    "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
                    "lod_scale_multiplier": 1.0}
    qmax = 2**bits - 1
    cv = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False)
    got = cv.mesh.get(sorted(meshes), lod=0)
    ours = read_meshes(url)
    assert sorted(got) == sorted(ours) == sorted(meshes)
    for i, m in meshes.items():
        man = parse_manifest((d / f"{i}.index").read_bytes())
        data = (d / str(i)).read_bytes()
        assert man["lods"] == lods and int(sum(s.sum() for s in man["sizes"])) == len(data)
        assert man["scales"].tolist() == [min(VOXEL) * 2**k for k in range(lods)]
        assert len(man["positions"][-1]) == 1  # one node covers the whole mesh
        node0 = man["chunk"].astype(np.float64)
        for lod in range(lods):
            pos = man["positions"][lod]
            codes = [zorder(p) for p in pos]
            assert codes == sorted(codes)  # Z-curve order
            if lod:  # every finer node has its parent
                parents = {tuple(p) for p in pos}
                assert all(tuple(p >> 1) in parents for p in man["positions"][lod - 1])
        # every fragment is Draco with int32 positions in [0, 2**bits): what Neuroglancer
        # reads without dequantizing
        at = 0
        for size in man["sizes"][0].tolist():
            if size:
                frag = DracoPy.decode(data[at:at + size])
                assert frag.attributes[0]["data_type"] == 5  # DT_INT32
                p = frag.points
                assert np.array_equal(p, np.round(p)) and p.min() >= 0 and p.max() <= qmax
            at += size
        # lod 0 is the mesh itself, cut at node borders and quantized: same surface, same
        # area, every vertex within half a quantization step of the original surface
        step = float((node0 / qmax).max())
        v = ours[i].vertices
        lo, hi = expected_box_nm(labels, i)
        assert np.all(v.min(axis=0) >= lo - step) and np.all(v.max(axis=0) <= hi + step)
        rel = 1e-4 if bits == 16 else 2e-3
        assert ours[i].surface_area() == pytest.approx(m.surface_area(), rel=rel)
        assert area(got[i].vertices, got[i].faces) == pytest.approx(m.surface_area(), rel=rel)
        if lods == 1:  # nothing is cut: the vertices are the originals, quantized
            assert nearest(v, m.vertices).max() <= step
            assert nearest(m.vertices, v).max() <= step
        # CloudVolume decodes the same mesh
        assert np.allclose(got[i].vertices, ours[i].vertices, atol=1e-3)
        assert len(got[i].faces) == ours[i].num_faces
    if lods > 1:  # coarser levels: fewer triangles, same place
        for lod in range(1, lods):
            coarse = read_meshes(url, lod=lod)
            cvc = cv.mesh.get(sorted(meshes), lod=lod)
            for i, m in meshes.items():
                assert coarse[i].num_faces == len(cvc[i].faces)
                assert np.allclose(coarse[i].vertices, cvc[i].vertices, atol=1e-3)
                assert coarse[i].surface_area() == pytest.approx(m.surface_area(), rel=0.35)
        with pytest.raises(InvalidRequestError, match="levels of detail"):
            read_meshes(url, lod=lods)


def test_multires_cuts_without_overhang() -> None:
    """A long thin mesh cut into many nodes: every fragment lies inside its node, and the
    fragments put together are the same surface (the cut points are shared exactly)."""
    mesher = zmesh.Mesher((4, 4, 40))
    vol = np.zeros((60, 10, 10), np.uint32)
    vol[3:57, 2:8, 3:7] = 1
    mesher.mesh(vol)
    zm = mesher.get(1)
    m = Mesh(zm.vertices, zm.faces, 1)
    manifest, data = encode_multires(m, lods=4)
    man = parse_manifest(manifest)
    assert len(man["positions"][0]) > 4
    back = decode_multires(manifest, data, vertex_quantization_bits=16)
    assert back.surface_area() == pytest.approx(m.surface_area(), rel=1e-5)
    welded = back.deduplicate(decimals=2)
    edges = np.sort(welded.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    original = np.sort(m.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, ocounts = np.unique(original, axis=0, return_counts=True)
    # as closed as the original: cutting adds no holes
    assert (counts == 1).sum() == (ocounts == 1).sum()


def test_read_igneous_style_multires(tmp_path: Path, meshes: dict[int, Mesh]) -> None:
    """Igneous writes vertices in voxels, a resolution transform and Draco-quantized
    fragments; voxgate reads them back into nanometres."""
    from cloudvolume.datasource.precomputed.mesh.multilod import (
        MultiLevelPrecomputedMeshManifest,
        to_stored_model_space,
    )

    url = make_layer(tmp_path / "seg")
    res = np.asarray(VOXEL[::-1])
    d = tmp_path / "seg" / "mesh"
    d.mkdir()
    (d / "info").write_text(json.dumps({
        "@type": "neuroglancer_multilod_draco", "vertex_quantization_bits": 16,
        "transform": [res[0], 0, 0, 0, 0, res[1], 0, 0, 0, 0, res[2], 0],
        "lod_scale_multiplier": 1.0, "mip": 0,
    }))
    seg = max(meshes, key=lambda i: meshes[i].num_faces)
    m = meshes[seg]
    vox = m.vertices / res
    origin = np.floor(vox.min(axis=0))
    shape = np.ceil(vox.max(axis=0) - origin) + 1
    manifest = MultiLevelPrecomputedMeshManifest(
        segment_id=seg, chunk_shape=shape, grid_origin=origin, num_lods=1, lod_scales=[1],
        vertex_offsets=[[0, 0, 0]], num_fragments_per_lod=[1],
        fragment_positions=[[[0, 0, 0]]], fragment_offsets=[])
    stored = to_stored_model_space(vox.copy(), manifest, lod=0, vertex_quantization_bits=16,
                                   frag=0)
    blob = DracoPy.encode(stored, m.faces, quantization_bits=16, compression_level=7,
                          quantization_range=float(np.max(stored.max(0) - stored.min(0))),
                          quantization_origin=stored.min(0))
    manifest.fragment_offsets = [len(blob)]
    (d / f"{seg}.index").write_bytes(manifest.to_binary())
    (d / str(seg)).write_bytes(blob)
    info = json.loads((tmp_path / "seg/info").read_text())
    (tmp_path / "seg/info").write_text(json.dumps({**info, "mesh": "mesh"}))
    ours = read_meshes(url)[seg]
    theirs = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False).mesh.get(seg)[seg]
    assert np.allclose(ours.vertices, theirs.vertices, atol=1e-2)
    tol = float((shape * res / 65535).max())
    assert nearest(ours.vertices, m.vertices).max() <= tol
    assert ours.surface_area() == pytest.approx(m.surface_area(), rel=1e-3)


def test_multires_damaged_files(tmp_path: Path) -> None:
    url = make_layer(tmp_path / "seg")
    write_meshes(url, {5: tetra(), 6: tetra(6), 7: tetra(7)}, format="multires")
    d = tmp_path / "seg" / "mesh"
    (d / "5.index").write_bytes((d / "5.index").read_bytes()[:-3])
    with pytest.raises(CorruptChunkError, match="must hold") as info:
        read_meshes(url, [5])
    assert info.value.chunk is not None and info.value.chunk.endswith("5.index")
    (d / "6").write_bytes((d / "6").read_bytes()[:-10])
    with pytest.raises(CorruptChunkError, match="holds"):
        read_meshes(url, [6])
    size = len((d / "7").read_bytes())
    (d / "7").write_bytes(b"DRACO" + bytes(size - 5))
    with pytest.raises(CorruptChunkError, match="Draco"):
        read_meshes(url, [7])
    (d / "7").unlink()
    with pytest.raises(RemoteNotFoundError, match="fragment file"):
        read_meshes(url, [7])


def test_small_meshes_get_fewer_levels_and_big_ids_survive(tmp_path: Path) -> None:
    url = make_layer(tmp_path / "seg")
    big = 2**60 + 1  # above 2**53: never through a float
    m = tetra(big)
    m.vertices *= 5  # 150 nm long: 3 levels keep level-0 nodes >= 8 voxels of 4 nm
    write_meshes(url, {big: m}, format="multires", lods=5)
    man = parse_manifest((tmp_path / f"seg/mesh/{big}.index").read_bytes())
    assert man["lods"] == 3 and man["chunk"].max() >= 32
    assert read_meshes(url, [big])[big].id == big
    write_meshes(url, {big: tetra(big)}, format="multires", mesh_dir="m2")
    assert sorted(read_meshes(url, mesh_dir="m2")) == [big]


def test_empty_meshes_round_trip(tmp_path: Path) -> None:
    empty = Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64), 4)
    for fmt in ("legacy", "multires"):
        url = make_layer(tmp_path / fmt)
        write_meshes(url, {4: empty, 5: tetra()}, format=fmt)
        back = read_meshes(url)
        assert back[4].is_empty and back[5].num_faces == 4


def test_write_refuses_bad_requests(tmp_path: Path, labels: np.ndarray) -> None:
    url = make_layer(tmp_path / "seg")
    m = {5: tetra()}
    with pytest.raises(InvalidRequestError, match="'legacy' or 'multires'"):
        write_meshes(url, m, format="draco")
    with pytest.raises(InvalidRequestError, match="multi-resolution meshes only"):
        write_meshes(url, m, sharded=True)  # legacy meshes have no sharded layout
    with pytest.raises(InvalidRequestError, match="10 or 16"):
        write_meshes(url, m, format="multires", vertex_quantization_bits=12)
    with pytest.raises(InvalidRequestError, match="lods"):
        write_meshes(url, m, format="multires", lods=0)
    with pytest.raises(InvalidRequestError, match="not a Mesh"):
        write_meshes(url, {5: "mesh"})  # type: ignore[dict-item]
    with pytest.raises(InvalidRequestError, match="mesh of segment 5"):
        write_meshes(url, {6: tetra(5)})
    with pytest.raises(InvalidRequestError, match="segment id"):
        write_meshes(url, {-1: tetra(None)})
    with pytest.raises(InvalidRequestError, match="mesh_dir"):
        write_meshes(url, m, mesh_dir="gs://elsewhere")
    with pytest.raises(InvalidRequestError, match="precomputed layers"):
        write_meshes(f"zarr://{tmp_path / 'x.zarr'}", m)
    with pytest.raises(RemoteNotFoundError):
        write_meshes(f"precomputed://{tmp_path / 'nothing'}", m)
    img = voxgate.create(f"precomputed://{tmp_path / 'img'}", shape=(8, 8, 8), chunks=(8, 8, 8),
                         dtype="uint8", voxel_size=(1, 1, 1))
    del img
    with pytest.raises(InvalidRequestError, match="image layer"):
        write_meshes(f"precomputed://{tmp_path / 'img'}", m)
    # one directory holds one format
    write_meshes(url, m, format="legacy")
    with pytest.raises(InvalidRequestError, match="already holds neuroglancer_legacy_mesh"):
        write_meshes(url, m, format="multires")
    write_meshes(url, m, format="multires", mesh_dir="mesh_multires")
    with pytest.raises(InvalidRequestError, match="vertex_quantization_bits=16"):
        write_meshes(url, m, format="multires", mesh_dir="mesh_multires",
                     vertex_quantization_bits=10)
    info = json.loads((tmp_path / "seg" / "info").read_text())
    assert info["mesh"] == "mesh_multires"  # the layer shows the last directory written
    assert read_meshes(url, mesh_dir="mesh") == {5: tetra()}
    (tmp_path / "seg/mesh/info").write_text(json.dumps({"@type": "neuroglancer_legacy_mesh",
                                                        "sharding": {"@type": "x"}}))
    with pytest.raises(CorruptChunkError, match="sharded neuroglancer_legacy_mesh"):
        read_meshes(url, mesh_dir="mesh")


def test_meshes_on_object_storage(s3_bucket: str) -> None:
    url = make_layer_at(f"s3://{s3_bucket}/seg")
    for fmt, d in (("legacy", "mesh"), ("multires", "mesh_mr")):
        write_meshes(url, {5: tetra(), 6: tetra(6)}, format=fmt, mesh_dir=d)
        back = read_meshes(url, mesh_dir=d)
        assert sorted(back) == [5, 6]
        assert np.allclose(back[5].vertices[np.lexsort(back[5].vertices.T)],
                           tetra().vertices[np.lexsort(tetra().vertices.T)], atol=1e-3)


def make_layer_at(location: str) -> str:
    voxgate.create(f"precomputed://{location}", shape=(8, 8, 8), chunks=(8, 8, 8),
                   dtype="uint64", voxel_size=VOXEL, kind="segmentation")
    return f"precomputed://{location}"


@pytest.fixture
def http_root(tmp_path: Path) -> Any:
    """A static HTTP server (what Neuroglancer reads from) over ``tmp_path``."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_read_meshes_over_http(tmp_path: Path, http_root: str) -> None:
    url = make_layer(tmp_path / "seg")
    write_meshes(url, {5: tetra(), 6: tetra(6)}, format="legacy")
    write_meshes(url, {5: tetra()}, format="multires", mesh_dir="multires")
    remote = f"precomputed://{http_root}/seg"
    assert read_meshes(remote, [5, 6, 7], mesh_dir="mesh") == {5: tetra(), 6: tetra(6)}
    got = read_meshes(remote, [5])[5]  # the layer info names the multires directory
    assert got.num_faces == 4
    assert got.surface_area() == pytest.approx(tetra().surface_area(), rel=1e-4)
    with pytest.raises(CapabilityNotSupportedError, match="pass the segment ids"):
        read_meshes(remote)


@pytest.mark.parametrize("fragments", ['"1:0:a"', '{"1:0:a": 1}'])
def test_a_malformed_legacy_manifest_deletes_no_file_it_seems_to_name(tmp_path: Path,
                                                                      fragments: str) -> None:
    """delete_meshes (proofreading's cleanup) reads manifests leniently: one whose fragments
    are not a list names none.  Old code: a string was taken letter by letter and a dict by
    its keys, so the files "1", "0", ":" and "a" (or "1:0:a") of the mesh directory went."""
    url = make_layer(tmp_path / "seg")
    write_meshes(url, {1: tetra(1), 2: tetra(2)}, format="legacy")
    d = tmp_path / "seg" / "mesh"
    (d / "1:0").write_text(f'{{"fragments": {fragments}}}')
    bystanders = ["1", "0", ":", "a", "1:0:a"]
    for name in bystanders:
        (d / name).write_bytes(b"kept")
    delete_meshes(url, [1])
    assert not (d / "1:0").exists()
    assert all((d / name).read_bytes() == b"kept" for name in bystanders)
    assert read_meshes(url, [2]) == {2: tetra(2)}
