"""mesh and skeletonize: every id, world coordinates, block-wise equality, formats, both paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cloudvolume import CloudVolume

import voxgate
from voxgate.errors import CapabilityNotSupportedError, InvalidRequestError, RemoteNotFoundError
from voxgate.formats.mesh import Mesh
from voxgate.synthetic import synthetic_labels


def _canon(m: Mesh) -> np.ndarray:
    """A mesh's triangles as a sorted set of vertex-coordinate triples (order-free)."""
    tris = np.round(m.vertices[m.faces], 3).reshape(len(m.faces), 3, 3)
    tris = np.sort(tris.view([("x", "f4"), ("y", "f4"), ("z", "f4")]).reshape(-1, 3), axis=1)
    return np.unique(tris.view(np.float32).reshape(len(m.faces), 9), axis=0)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return synthetic_labels((32, 60, 72), cell=(8, 20, 20), seed=2)


@pytest.fixture
def seg(tmp_path: Path, labels: np.ndarray) -> voxgate.Volume:
    vol = voxgate.create(f"precomputed://file://{tmp_path}/seg", shape=labels.shape,
                         chunks=(16, 32, 32), dtype="uint64", voxel_size=(40, 8, 4),
                         kind="segmentation", offset=(10, 20, 30))
    vol[:] = labels
    return vol


def test_every_id_comes_back(labels: np.ndarray) -> None:
    result = voxgate.mesh(labels, voxel_size=(40, 8, 4))
    expected = {int(i) for i in np.unique(labels) if i}
    assert set(result) == expected  # intern's MeshService returned only the last one
    assert all(len(m.faces) > 0 for m in result.values())
    assert result.provenance.path == "local"
    some = [*sorted(expected)[:3], 10**12]
    picked = voxgate.mesh(labels, ids=some, voxel_size=(40, 8, 4))
    assert set(picked) == set(some)
    assert len(picked[10**12].faces) == 0  # absent id: empty, not an error
    with pytest.raises(RemoteNotFoundError):
        voxgate.mesh(labels, ids=[10**12], voxel_size=(40, 8, 4), strict=True)


def test_world_coordinates_anisotropic_with_offset(tmp_path: Path) -> None:
    lab = np.zeros((10, 20, 30), dtype=np.uint64)
    lab[2:5, 4:9, 6:16] = 7  # a box of voxels z 2..5, y 4..9, x 6..16
    vol = voxgate.create(f"zarr://{tmp_path}/box.zarr", shape=lab.shape, chunks=lab.shape,
                         dtype="uint64", voxel_size=(40, 8, 4), kind="segmentation",
                         offset=(100, 200, 300))
    vol[:] = lab
    m = voxgate.mesh(vol)[7]
    lo, hi = m.bounds()
    # the surface wraps the voxels: dataset coordinates (offset + index) times voxel size,
    # in (x, y, z); marching cubes puts the surface half a voxel outside the voxel centres
    expect_lo = np.array([(300 + 6) * 4, (200 + 4) * 8, (100 + 2) * 40], dtype=float)
    expect_hi = np.array([(300 + 16) * 4, (200 + 9) * 8, (100 + 5) * 40], dtype=float)
    tol = 0.51 * np.array([4, 8, 40])
    assert (np.abs(lo - expect_lo) <= tol).all(), (lo, expect_lo)
    assert (np.abs(hi - expect_hi) <= tol).all(), (hi, expect_hi)
    # a view meshes its region only, in the same world frame
    part = voxgate.mesh(vol[0:10, 0:20, 0:11])[7]
    assert part.bounds()[1][0] <= (300 + 11) * 4 + 2


def test_block_wise_equals_whole(labels: np.ndarray) -> None:
    whole = voxgate.mesh(labels, voxel_size=(40, 8, 4))
    blocked = voxgate.mesh(labels, voxel_size=(40, 8, 4), block=(11, 17, 23))
    assert blocked.provenance.details["blocks"] > 20
    assert set(whole) == set(blocked)
    for i in whole:
        a, b = _canon(whole[i]), _canon(blocked[i])
        np.testing.assert_array_equal(a, b)  # no cracks, no duplicate faces at block borders
        assert len(np.unique(blocked[i].faces, axis=0)) == len(blocked[i].faces)


def test_simplification(labels: np.ndarray) -> None:
    big = int(np.bincount(labels.ravel().astype(np.int64)).argmax())
    full = voxgate.mesh(labels, ids=[big], voxel_size=(40, 8, 4))[big]
    simple = voxgate.mesh(labels, ids=[big], voxel_size=(40, 8, 4), simplify=(10, 100))[big]
    assert 0 < len(simple.faces) < len(full.faces) / 3
    np.testing.assert_allclose(simple.bounds()[0], full.bounds()[0], atol=100)
    blocked = voxgate.mesh(labels, ids=[big], voxel_size=(40, 8, 4), simplify=(10, 100),
                           block=(16, 30, 36))[big]
    assert 0 < len(blocked.faces) < len(full.faces) / 3
    with pytest.raises(InvalidRequestError):
        voxgate.mesh(labels, voxel_size=(1, 1, 1), simplify=(0.5, 10))
    with pytest.raises(InvalidRequestError):
        voxgate.mesh(labels, voxel_size=(1, 1, 1), simplify="lots")


def test_image_is_refused(tmp_path: Path) -> None:
    img = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=(4, 4, 4), chunks=(4, 4, 4),
                         dtype="uint8", voxel_size=(1, 1, 1), kind="image")
    with pytest.raises(InvalidRequestError, match="segmentation"):
        voxgate.mesh(img)
    with pytest.raises(InvalidRequestError, match="segmentation"):
        voxgate.skeletonize(img)
    with pytest.raises(CapabilityNotSupportedError):
        voxgate.mesh(np.ones((4, 4, 4), dtype=np.uint32), prefer="server")


@pytest.mark.parametrize("fmt", ["multires", "legacy"])
def test_written_meshes_open_in_cloudvolume_and_serve_the_server_path(
        seg: voxgate.Volume, fmt: str) -> None:
    local = voxgate.mesh(seg)
    voxgate.write_meshes(seg.url, local, format=fmt)
    cv = CloudVolume(seg.url.replace("precomputed://", ""), progress=False)
    some = sorted(local)[:4]
    for i in some:
        cvm = cv.mesh.get(i)
        cvm = cvm[i] if isinstance(cvm, dict) else cvm  # legacy fuses; multires maps ids
        lo = np.asarray(cvm.vertices).min(0)
        np.testing.assert_allclose(lo, local[i].bounds()[0], atol=2.0 if fmt == "multires" else
                                   1e-3)
    reopened = voxgate.open(seg.url)
    assert voxgate.has_capability(reopened.remote, "server_mesh")
    served = voxgate.mesh(reopened, ids=some)
    assert served.provenance.path == "server"
    for i in some:
        assert len(served[i].faces) > 0
        np.testing.assert_allclose(served[i].bounds()[0], local[i].bounds()[0],
                                   atol=2.0 if fmt == "multires" else 1e-3)
    forced = voxgate.mesh(reopened, ids=some, prefer="local")
    assert forced.provenance.path == "local"
    for i in some:  # parity: the same result either way
        np.testing.assert_array_equal(_canon(forced[i]), _canon(local[i]))


def test_obj_and_ply(labels: np.ndarray) -> None:
    m = next(iter(voxgate.mesh(labels, voxel_size=(1, 1, 1)).values()))
    obj = m.to_obj()
    assert obj.count("\nv ") + obj.startswith("v ") == len(m.vertices)
    back = Mesh.from_obj(obj)
    np.testing.assert_allclose(back.vertices, m.vertices, atol=1e-3)
    np.testing.assert_array_equal(back.faces, m.faces)
    ply = m.to_ply()
    assert ply.startswith(b"ply\nformat binary_little_endian")


def _segments(vertices: np.ndarray, edges: np.ndarray) -> set[tuple[float, ...]]:
    """A skeleton's edges as an order-free set of rounded coordinate pairs."""
    v = np.round(np.asarray(vertices, dtype=np.float64), 2)
    out = set()
    for a, b in np.asarray(edges):
        p, q = tuple(v[a]), tuple(v[b])
        out.add(p + q if p <= q else q + p)
    return out


def _cable(vertices: np.ndarray, edges: np.ndarray) -> float:
    v = np.asarray(vertices, dtype=np.float64)
    e = np.asarray(edges)
    return float(np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1).sum())


def test_skeletonize_local_and_stored(seg: voxgate.Volume, labels: np.ndarray) -> None:
    import kimimaro

    big = [int(i) for i in np.argsort(np.bincount(labels.ravel().astype(np.int64)))[-3:]]
    sk = voxgate.skeletonize(seg, ids=big, dust_threshold=10)
    assert set(sk) == set(big) and sk.provenance.path == "local"
    # the oracle: kimimaro itself on the same voxels in its own (x, y, z) layout, with the
    # same parameters; its vertices are voxel index * anisotropy, so voxgate's world frame
    # (offset (30, 20, 10) x/y/z, voxel centres) is that plus (offset + 0.5) * voxel size
    xyz = np.asfortranarray(np.transpose(labels, (2, 1, 0)))
    oracle = kimimaro.skeletonize(xyz, anisotropy=(4, 8, 40), dust_threshold=10,
                                  object_ids=big, fix_branching=True, fix_borders=True,
                                  progress=False, parallel=1)
    shift = (np.array([30, 20, 10]) + 0.5) * np.array([4, 8, 40])
    for i in big:
        s = sk[i]
        assert len(s.vertices) > 1 and len(s.edges) > 0
        ref_v = np.asarray(oracle[i].vertices, dtype=np.float64) + shift
        ref_e = np.asarray(oracle[i].edges)
        # kimimaro is deterministic: the same vertices, the same edges, the same cable
        assert len(s.vertices) == len(ref_v) and len(s.edges) == len(ref_e)
        np.testing.assert_allclose(np.unique(np.round(s.vertices, 2), axis=0),
                                   np.unique(np.round(ref_v, 2), axis=0), atol=1e-2)
        assert _segments(s.vertices, s.edges) == _segments(ref_v, ref_e)
        assert _cable(s.vertices, s.edges) == pytest.approx(_cable(ref_v, ref_e), rel=1e-5)
        # vertices lie inside the segment's world bounding box (offset, anisotropic)
        w = np.nonzero(labels == i)
        lo = np.array([(30 + w[2].min()) * 4, (20 + w[1].min()) * 8, (10 + w[0].min()) * 40])
        hi = np.array([(31 + w[2].max()) * 4, (21 + w[1].max()) * 8, (11 + w[0].max()) * 40])
        assert (s.vertices >= lo - 1e-3).all() and (s.vertices <= hi + 1e-3).all()
        swc = s.to_swc()
        assert len([ln for ln in swc.splitlines() if ln and not ln.startswith("#")]) == \
            len(s.vertices)
    from voxgate.formats.skeleton import write_skeletons

    write_skeletons(seg.url, sk)
    cv = CloudVolume(seg.url.replace("precomputed://", ""), progress=False)
    cvs = cv.skeleton.get(big[0])
    np.testing.assert_allclose(np.asarray(cvs.vertices), sk[big[0]].vertices, atol=1e-3)
    stored = voxgate.skeletonize(voxgate.open(seg.url), ids=big)
    assert stored.provenance.path == "server"
    np.testing.assert_allclose(stored[big[0]].vertices, sk[big[0]].vertices, atol=1e-3)
    missing = voxgate.skeletonize(seg, ids=[10**12], prefer="local")
    assert len(missing[10**12].vertices) == 0


@pytest.mark.parametrize("block", [None, (8, 20, 24)])
def test_every_skeleton_stays_inside_its_voxels(tmp_path: Path, block: tuple[int, ...] | None
                                                ) -> None:
    """Checked with numpy and scipy against the voxels alone (no kimimaro): on an odd volume
    with an offset and anisotropic voxels, whole and block by block, every vertex is the
    centre of a voxel of its own segment, every edge joins neighbouring voxels (26-connected),
    and a skeleton has one connected piece per 26-connected piece of its segment."""
    import scipy.ndimage
    import scipy.sparse
    import scipy.sparse.csgraph

    lab = synthetic_labels((21, 47, 53), cell=(7, 16, 16), seed=5)
    vs, off = np.array([40, 8, 4]), np.array([3, 5, 7])  # z, y, x
    vol = voxgate.create(f"zarr://{tmp_path}/s.zarr", shape=lab.shape, chunks=(8, 16, 16),
                         dtype="uint64", voxel_size=tuple(vs), kind="segmentation",
                         offset=tuple(off))
    vol[:] = lab
    sk = voxgate.skeletonize(vol, block=block, dust_threshold=0)
    ids = [int(i) for i in np.unique(lab) if i]
    assert sorted(sk) == ids
    for i in ids:
        s = sk[i]
        v = np.asarray(s.vertices, np.float64)[:, ::-1]  # z, y, x nm
        at = v / vs - off - 0.5  # voxel indices, exactly, for a voxel centre
        idx = np.rint(at).astype(np.int64)
        assert len(v) and np.abs(at - idx).max() < 1e-3, i
        assert ((idx >= 0) & (idx < lab.shape)).all(), i
        assert (lab[tuple(idx.T)] == i).all(), f"id {i}: a vertex outside its voxels"
        e = np.asarray(s.edges, np.int64)
        steps = np.abs(idx[e[:, 0]] - idx[e[:, 1]]) if len(e) else np.zeros((0, 3))
        assert (steps <= 1).all() and (steps.sum(axis=1) > 0).all(), i
        n = len(v)
        graph = scipy.sparse.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
        pieces = scipy.sparse.csgraph.connected_components(graph, directed=False)[0]
        _, parts = scipy.ndimage.label(lab == i, structure=np.ones((3, 3, 3)))
        assert pieces == parts, (i, pieces, parts)
