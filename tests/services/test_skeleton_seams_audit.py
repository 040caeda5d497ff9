"""Audit of skeletons end to end: voxgate.skeletonize, the precomputed skeleton binary and
skeleton directories (unsharded and sharded), against kimimaro called directly, CloudVolume's
reader and a decoder that follows Neuroglancer's ``decodeSkeletonChunk`` and
``parseSkeletonMetadata`` (src/datasource/precomputed/{backend,frontend}.ts) step by step.

The regressions this file keeps:

- an empty skeleton (what skeletonize returns for an asked id it finds no skeleton of) could
  not be written: ``to_precomputed`` raised a bare ValueError, so ``skeletonize(ids=...)``
  followed by ``write_skeletons`` failed;
- ``write_skeletons`` wrote into ``skeletons/`` and pointed the layer's info there even when
  the info named another directory (Igneous' ``skeletons_mip_0``), so the layer's existing
  skeletons vanished from CloudVolume and Neuroglancer;
- ``skeletonize(parallel=0)`` (kimimaro: one process per core) ran kimimaro in one process.
"""

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
from voxgate.formats.skeleton import Skeleton, read_skeletons, write_skeletons
from voxgate.geometry import VoxelSize

SHAPE = (13, 27, 35)  # z, y, x: no axis a multiple of the chunks
OFFSET = (3, 5, 7)  # z, y, x voxels
VS = (40.0, 8.0, 4.0)  # z, y, x nm
BIG = 2**63 + 9  # above int64 and float64 precision

#: Neuroglancer's DATA_TYPE_BYTES for the attribute types a skeleton info may declare
NG_TYPES = {"uint8": "<u1", "int8": "<i1", "uint16": "<u2", "int16": "<i2", "uint32": "<u4",
            "int32": "<i4", "float32": "<f4"}


def make_layer(path: Path, labels: np.ndarray | None = None) -> str:
    url = f"precomputed://{path}"
    vol = voxgate.create(url, shape=SHAPE, dtype="uint64", chunks=(8, 8, 8),
                         voxel_size=VoxelSize(z=VS[0], y=VS[1], x=VS[2]),
                         kind="segmentation", offset=OFFSET)
    if labels is not None:
        vol[:] = labels
    return url


def odd_labels() -> np.ndarray:
    """A cross (two bars), a block touching three faces, a small bar with an id >= 2**63 and
    a blob of 8 voxels in a corner (dust at threshold 10)."""
    lab = np.zeros(SHAPE, np.uint64)
    lab[2:10, 3:7, 1:34] = 7
    lab[4:12, 3:25, 14:19] = 7
    lab[0:13, 18:26, 22:33] = 2**40 + 5
    lab[5:8, 10:12, 2:8] = BIG
    lab[11:13, 0:2, 0:2] = 3
    return lab


def ng_parse_info(info: dict[str, Any]) -> tuple[np.ndarray, list[tuple[str, str, int]]]:
    """What Neuroglancer's parseSkeletonMetadata accepts: the transform (3x4, row-major: its
    12 numbers fill a column-major mat4 that is then transposed) and the attributes."""
    assert info["@type"] == "neuroglancer_skeletons"
    t = info.get("transform", [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0])
    assert len(t) == 12 and all(isinstance(x, (int, float)) and np.isfinite(x) for x in t)
    col_major = np.eye(4, dtype=np.float32).reshape(-1, order="F")
    col_major[:12] = t
    mat = col_major.reshape(4, 4, order="F").T  # mat4.transpose
    attrs = []
    for a in info.get("vertex_attributes", []):
        assert a["id"] and a["data_type"].lower() in NG_TYPES
        assert isinstance(a["num_components"], int) and a["num_components"] > 0
        attrs.append((a["id"], NG_TYPES[a["data_type"].lower()], a["num_components"]))
    assert len({a[0] for a in attrs}) == len(attrs)
    if info.get("sharding") is not None:
        sh = info["sharding"]
        assert sh["@type"] == "neuroglancer_uint64_sharded_v1"
        assert sh["hash"] in ("identity", "murmurhash3_x86_128")
        for k in ("preshift_bits", "shard_bits", "minishard_bits"):
            assert isinstance(sh[k], int)
        assert sh["minishard_index_encoding"] in ("raw", "gzip")
        assert sh["data_encoding"] in ("raw", "gzip")
    return mat[:3], attrs


def ng_decode(data: bytes, attrs: list[tuple[str, str, int]]) -> dict[str, np.ndarray]:
    """Neuroglancer's decodeSkeletonChunk: counts, positions, edges, then each attribute in
    the info's order (a Uint8Array over exactly its bytes: a short file throws)."""
    nv, ne = struct.unpack_from("<II", data, 0)
    out = {"vertices": np.frombuffer(data, "<f4", 3 * nv, 8).reshape(nv, 3),
           "edges": np.frombuffer(data, "<u4", 2 * ne, 8 + 12 * nv).reshape(ne, 2)}
    at = 8 + 12 * nv + 8 * ne
    for name, dt, comps in attrs:
        size = np.dtype(dt).itemsize * comps * nv
        assert at + size <= len(data), f"{name} runs past the end of the file"
        out[name] = np.frombuffer(data, dt, comps * nv, at).reshape(nv, comps)
        at += size
    assert at == len(data)  # nothing after the last attribute
    return out


def positions(v: np.ndarray) -> set[tuple[float, ...]]:
    return set(map(tuple, np.round(np.asarray(v, np.float64), 2).tolist()))


def edge_set(v: np.ndarray, e: np.ndarray) -> set[frozenset[tuple[float, ...]]]:
    p = np.round(np.asarray(v, np.float64), 2)
    return {frozenset((tuple(p[a]), tuple(p[b]))) for a, b in np.asarray(e).tolist()}


# -- skeletonize against kimimaro ---------------------------------------------------------------
@pytest.mark.parametrize("dust", [0, 10])
def test_skeletonize_equals_kimimaro_called_directly(tmp_path: Path, dust: int) -> None:
    """Same vertices (nm), edges and radii as kimimaro.skeletonize on the same labels with the
    same parameters, moved into the world frame ``(offset + index + 0.5) * voxel size``."""
    lab = odd_labels()
    vol = voxgate.open(make_layer(tmp_path / "seg", lab))
    got = voxgate.skeletonize(vol, dust_threshold=dust, prefer="local")
    want = kimimaro.skeletonize(lab.T.copy(), anisotropy=VS[::-1], dust_threshold=dust,
                                progress=False, parallel=1)
    assert sorted(got) == sorted(int(i) for i in want)
    assert (3 in got) == (dust < 8)
    shift = (np.asarray(OFFSET[::-1]) + 0.5) * np.asarray(VS[::-1])
    for i, ref in want.items():
        s = got[int(i)]
        ref_v = np.asarray(ref.vertices, np.float64) + shift
        assert positions(s.vertices) == positions(ref_v) and len(s.vertices) == len(ref_v)
        assert edge_set(s.vertices, s.edges) == edge_set(ref_v, ref.edges)
        by_pos = dict(zip(map(tuple, np.round(ref_v, 2).tolist()), ref.radius.tolist(),
                          strict=True))
        for p, r in zip(np.round(s.vertices.astype(np.float64), 2).tolist(), s.radius.tolist(),
                        strict=True):
            assert r == pytest.approx(by_pos[tuple(p)], rel=1e-6)
    # asking for ids: the same skeleton, and an id without one comes back empty
    some = voxgate.skeletonize(vol, ids=[BIG, 99], dust_threshold=dust, prefer="local")
    assert sorted(some) == sorted([BIG, 99]) and len(some[99].vertices) == 0
    assert some[BIG] == got[BIG]


def test_parallel_zero_reaches_kimimaro(monkeypatch: pytest.MonkeyPatch) -> None:
    """``parallel <= 0`` is kimimaro's "one process per core"; it was turned into 1."""
    seen: list[int] = []
    real = kimimaro.skeletonize

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["parallel"])
        return real(*args, **{**kwargs, "parallel": 1})  # do not fan out on a shared machine

    monkeypatch.setattr(kimimaro, "skeletonize", spy)
    lab = odd_labels()
    for parallel, workers, want in ((0, None, 0), (-1, 2, -1), (1, None, 1), (1, 2, 2),
                                    (3, None, 3)):
        out = voxgate.skeletonize(lab, voxel_size=VS, parallel=parallel, workers=workers,
                                  dust_threshold=10)
        assert seen[-1] == want and sorted(out) == [7, 2**40 + 5, BIG]


# -- empty skeletons ------------------------------------------------------------------------------
@pytest.mark.parametrize("sharded", [False, True])
def test_an_empty_skeleton_is_written_and_read_back(tmp_path: Path, sharded: bool) -> None:
    """skeletonize(ids=[..., an id it finds nothing for]) then write_skeletons: the empty one
    is stored as CloudVolume stores it (two zero counts) and every reader gets it back."""
    lab = odd_labels()
    url = make_layer(tmp_path / "seg", lab)
    skels = voxgate.skeletonize(voxgate.open(url), ids=[7, 3, 2**40 + 77], dust_threshold=10)
    assert len(skels[3].vertices) == 0 and len(skels[2**40 + 77].vertices) == 0  # dust, absent
    write_skeletons(url, skels, sharded=sharded)
    info = json.loads((tmp_path / "seg" / "skeletons" / "info").read_text())
    mat, attrs = ng_parse_info(info)
    assert np.array_equal(mat, np.eye(3, 4))
    if not sharded:
        for i in (3, 2**40 + 77):
            data = (tmp_path / "seg" / "skeletons" / str(i)).read_bytes()
            assert data == osteoid.Skeleton([], [], segid=i).to_precomputed()
            dec = ng_decode(data, attrs)
            assert dec["vertices"].shape == (0, 3) and dec["edges"].shape == (0, 2)
    back = read_skeletons(url)
    assert sorted(back) == sorted(skels)
    cv = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False)
    for i, s in skels.items():
        assert back[i].vertices.tobytes() == s.vertices.tobytes()
        assert np.array_equal(back[i].edges, s.edges)
        got = cv.skeleton.get(i)
        assert int(got.id) == i and np.array_equal(got.vertices, s.vertices)
        assert np.array_equal(got.edges, s.edges)
    # a skeleton of one vertex and no edge, beside them
    one = Skeleton([[1.5, 2.5, 3.5]], np.zeros((0, 2), np.uint32), [7.0], [1], id=5)
    write_skeletons(url, {5: one}, sharded=sharded)
    assert read_skeletons(url, 5)[5] == one
    # (a new CloudVolume: one keeps the shard indexes it has read)
    got = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False).skeleton.get(5)
    assert got.vertices.tolist() == [[1.5, 2.5, 3.5]] and got.radius.tolist() == [7.0]
    assert len(got.edges) == 0 and got.vertex_types.tolist() == [1]


# -- the directory a layer names ------------------------------------------------------------------
def test_write_goes_where_the_layer_info_points(tmp_path: Path) -> None:
    """A layer Igneous skeletonized names ``skeletons_mip_0``; skeletons added with the
    default skel_dir go beside those, and CloudVolume still reads the old ones."""
    url = make_layer(tmp_path / "seg")
    cv = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False)
    cv.info["skeletons"] = "skeletons_mip_0"
    cv.commit_info()
    cv.skeleton.meta.commit_info()
    old = osteoid.Skeleton([[10, 20, 30], [40, 50, 60]], [[0, 1]], radii=[1, 2], segid=11,
                           space="physical")
    cv.skeleton.upload(old)
    new = Skeleton([[1, 1, 1], [2, 2, 2], [3, 3, 3]], [[0, 1], [1, 2]], [4, 5, 6], id=2**60)
    write_skeletons(url, {2**60: new})
    assert json.loads((tmp_path / "seg" / "info").read_text())["skeletons"] == "skeletons_mip_0"
    assert not (tmp_path / "seg" / "skeletons").exists()
    # CloudVolume's info (uint8 vertex_types, null sharding) is kept, its layout followed
    info = json.loads((tmp_path / "seg" / "skeletons_mip_0" / "info").read_text())
    assert info["vertex_attributes"][1] == {"id": "vertex_types", "data_type": "uint8",
                                            "num_components": 1}
    cv = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False)
    assert cv.skeleton.get(11).vertices.tolist() == [[10, 20, 30], [40, 50, 60]]
    got = cv.skeleton.get(2**60)
    assert int(got.id) == 2**60 and np.array_equal(got.vertices, new.vertices)
    assert sorted(read_skeletons(url)) == [11, 2**60]
    # an explicit skel_dir still moves the layer's pointer, as documented
    write_skeletons(url, {2**60: new}, skel_dir="mine")
    assert json.loads((tmp_path / "seg" / "info").read_text())["skeletons"] == "mine"
    assert sorted(read_skeletons(url)) == [2**60]


# -- sharded directories --------------------------------------------------------------------------
@pytest.mark.parametrize("hash_", ["identity", "murmurhash3_x86_128"])
def test_sharded_ids_above_2_32_read_by_cloudvolume(tmp_path: Path, hash_: str) -> None:
    """Ids across 2**32, 2**53, 2**63 and 2**64 - 1 in a directory with preshift, minishard
    and shard bits; CloudVolume finds every one (its own hash and shard arithmetic) and the
    bytes decode as Neuroglancer decodes them."""
    url = make_layer(tmp_path / "seg")
    d = tmp_path / "seg" / "skels"
    d.mkdir()
    attrs = [{"id": "radius", "data_type": "float32", "num_components": 1},
             {"id": "vertex_types", "data_type": "float32", "num_components": 1},
             {"id": "color", "data_type": "uint16", "num_components": 2}]
    (d / "info").write_text(json.dumps({
        "@type": "neuroglancer_skeletons", "transform": [4, 0, 0, 28, 0, 8, 0, 40, 0, 0, 40, 120],
        "vertex_attributes": attrs, "spatial_index": None,
        "sharding": {"@type": "neuroglancer_uint64_sharded_v1", "hash": hash_,
                     "preshift_bits": 1, "minishard_bits": 3, "shard_bits": 2,
                     "minishard_index_encoding": "gzip", "data_encoding": "gzip"}}))
    rng = np.random.default_rng(5)
    ids = [1, 2**32 - 1, 2**32, 2**32 + 1, 2**53 + 1, 2**63, BIG, 2**64 - 1,
           *(int(i) for i in rng.integers(2, 2**62, 24))]
    skels = {}
    for k, i in enumerate(ids):
        n = k % 5  # 0 to 4 vertices
        skels[i] = Skeleton(
            (rng.integers(0, 400, (n, 3)) * np.array([4, 8, 40]) + [28, 40, 120]),
            np.array([[j, j + 1] for j in range(n - 1)], np.uint32).reshape(-1, 2),
            rng.random(n).astype(np.float32), rng.integers(0, 5, n), i,
            {"color": rng.integers(0, 2**16, (n, 2)).astype(np.uint16)})
    write_skeletons(url, skels, skel_dir="skels", sharded=True)
    assert len(list(d.glob("*.shard"))) > 1
    assert read_skeletons(url, skel_dir="skels") == skels
    info = json.loads((tmp_path / "seg" / "info").read_text())
    assert info["skeletons"] == "skels"
    mat, ng_attrs = ng_parse_info(json.loads((d / "info").read_text()))
    cv = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False)
    for i, s in skels.items():
        got = cv.skeleton.get(i)
        assert int(got.id) == i
        np.testing.assert_allclose(got.vertices, s.vertices, atol=1e-3)
        assert np.array_equal(got.edges, s.edges)
        assert np.array_equal(got.radius, s.radius)
        assert np.array_equal(got.vertex_types, s.vertex_types)
        if len(s.vertices):  # osteoid sets no extra attribute on an empty skeleton
            assert np.array_equal(got.color, s.attributes["color"])
        # the stored bytes (found by CloudVolume's shard reader), as Neuroglancer's decoder
        # takes them, through the info's transform
        raw = cv.skeleton.reader.get_data(i, cv.skeleton.meta.skeleton_path)
        dec = ng_decode(raw, ng_attrs)
        nm = dec["vertices"].astype(np.float64) @ mat[:, :3].T.astype(np.float64) + mat[:, 3]
        np.testing.assert_allclose(nm, s.vertices, atol=1e-3)
        assert np.array_equal(dec["edges"], s.edges)
        assert np.array_equal(dec["radius"][:, 0], s.radius)
        assert np.array_equal(dec["vertex_types"][:, 0], s.vertex_types.astype(np.float32))
        assert np.array_equal(dec["color"], s.attributes["color"])


def test_skeletonize_of_a_view_of_a_layer_with_stored_skeletons_skeletonizes_the_view(
        tmp_path: Path) -> None:
    """Stored skeletons are of whole segments: "auto" returned every stored skeleton for any
    view of a layer that stores them (as mesh did); a view is skeletonized over its region,
    and prefer="server" refuses it."""
    labels = np.zeros((12, 40, 40), np.uint64)
    labels[1:5, 5:35, 18:22] = 1    # in the view z 0..6
    labels[7:11, 5:35, 18:22] = 2   # outside it
    url = f"precomputed://file://{tmp_path}/seg"
    vol = voxgate.create(url, shape=labels.shape, chunks=(8, 16, 16), dtype="uint64",
                         voxel_size=VoxelSize(z=40, y=8, x=4), kind="segmentation")
    vol[:] = labels
    whole = voxgate.skeletonize(vol)
    assert set(whole) == {1, 2}
    write_skeletons(url, dict(whole))
    layer = voxgate.open(url)
    assert voxgate.skeletonize(layer).provenance.path == "server"
    view = layer[0:6]
    got = voxgate.skeletonize(view)
    assert set(got) == {1} and got.provenance.path == "local"
    assert got[1].vertices[:, 2].max() < 6 * 40  # z in nm, within the view
    with pytest.raises(voxgate.errors.CapabilityNotSupportedError, match="whole segments"):
        voxgate.skeletonize(view, prefer="server")
