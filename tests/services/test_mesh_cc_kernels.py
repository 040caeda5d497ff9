"""mesh and connected_components against their kernels and independent oracles: zmesh called
directly (closed meshes: zmesh on the padded array), a numpy check of every mesh's surface
(closed, outward, enclosing its voxels), scipy.ndimage.label; the ids' dtype; the same result
on a 2-worker dask cluster."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.ndimage
import zmesh

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.services.connected_components import canonical_order
from voxgate.synthetic import synthetic_labels

mesh_module = importlib.import_module("voxgate.services.mesh")
cc_module = importlib.import_module("voxgate.services.connected_components")

VS = (40, 8, 4)  # z, y, x nm: anisotropic


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    # odd extents; ids past 2**32 so nothing narrows them on the way
    lab = synthetic_labels((13, 22, 31), cell=(5, 9, 11), seed=7)
    return np.where(lab > 0, lab + np.uint64(2**33), 0).astype(np.uint64)


def _zmesh(labels: np.ndarray, vs: tuple[float, float, float], closed: bool = False
           ) -> dict[int, Any]:
    """zmesh on the array; ``closed``: on the array padded with one voxel of background on
    every side, its vertices moved back by that voxel (what voxgate's default must equal)."""
    m = zmesh.Mesher((vs[2], vs[1], vs[0]))
    m.mesh((np.pad(labels, 1) if closed else labels).T)
    out = {int(i): m.get(i, normals=False, voxel_centered=True) for i in m.ids()}
    if closed:
        for mesh in out.values():
            mesh.vertices -= np.array([vs[2], vs[1], vs[0]], dtype=np.float32)
    return out


def _triangles(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """A mesh as the sorted set of its triangles' corner positions (order-free)."""
    t = vertices[faces].reshape(len(faces), 3, 3)
    t = t[np.arange(len(t))[:, None], np.lexsort(t.transpose(2, 0, 1)[::-1])]
    return np.unique(t.reshape(len(faces), 9), axis=0)


@pytest.mark.parametrize("close", [True, False])
def test_mesh_equals_zmesh_called_directly(labels: np.ndarray, close: bool) -> None:
    got = voxgate.mesh(labels, voxel_size=VS, close=close)
    ref = _zmesh(labels, VS, closed=close)
    assert set(got) == set(ref) and len(ref) > 5
    for i, m in ref.items():
        np.testing.assert_array_equal(got[i].vertices, m.vertices)
        np.testing.assert_array_equal(got[i].faces, m.faces)
        assert got[i].id == i
    assert got.provenance.details["closed"] is close


def test_mesh_of_a_store_with_offset_is_zmesh_shifted(tmp_path: Path, labels: np.ndarray
                                                       ) -> None:
    vol = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=labels.shape, chunks=(8, 16, 16),
                         dtype="uint64", voxel_size=VS, kind="segmentation", offset=(3, 5, 7))
    vol[:] = labels
    got = voxgate.mesh(vol)
    shift = np.array([7 * VS[2], 5 * VS[1], 3 * VS[0]], dtype=np.float32)
    for i, m in _zmesh(labels, VS, closed=True).items():
        np.testing.assert_array_equal(got[i].vertices, m.vertices + shift)
        np.testing.assert_array_equal(got[i].faces, m.faces)


def test_a_large_numpy_array_is_meshed_in_place(labels: np.ndarray,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mesh_module, "WHOLE_BYTES", 1)  # every array is "large"
    for close in (False, True):  # (closed: one padded copy, still not blocks)
        got = voxgate.mesh(labels, voxel_size=VS, close=close)
        assert got.provenance.details["blocks"] == 1  # not cut into copied blocks
        ref = _zmesh(labels, VS, closed=close)
        assert all(np.array_equal(got[i].vertices, ref[i].vertices) for i in ref)


@pytest.mark.parametrize("close", [True, False])
def test_stitched_blocks_have_zmesh_triangles_and_a_fixed_order(labels: np.ndarray,
                                                                close: bool) -> None:
    # closed: only the blocks' sides on the volume's edges are closed, never inner ones
    ref = _zmesh(labels, VS, closed=close)
    a = voxgate.mesh(labels, voxel_size=VS, block=(4, 7, 10), close=close)
    b = voxgate.mesh(labels, voxel_size=VS, block=(4, 7, 10), close=close)
    assert a.provenance.details["blocks"] == 4 * 4 * 4
    for i, m in ref.items():
        # the same surface (every shared border vertex merged, no doubled triangle)
        assert len(a[i].vertices) == len(m.vertices) and len(a[i].faces) == len(m.faces)
        np.testing.assert_array_equal(_triangles(a[i].vertices, a[i].faces),
                                      _triangles(m.vertices, m.faces))
        assert a[i] == b[i]  # and the same arrays every run


def _exposed_faces(mask: np.ndarray) -> int:
    """The voxel faces between ``mask`` and the rest (the volume's outside included)."""
    p = np.pad(mask, 1).astype(np.int8)
    return sum(int(np.count_nonzero(np.diff(p, axis=ax))) for ax in range(3))


# (5, 5, 7): the last blocks along y and x are one voxel wide
@pytest.mark.parametrize("block", [None, (5, 5, 7)])
def test_every_mesh_is_a_closed_outward_surface_around_its_voxels(block: Any) -> None:
    """Checked with numpy against the voxels alone (no mesher): every edge of every mesh
    has exactly two faces (closed, also where a segment meets the volume's edge), the enclosed
    volume is positive (faces wound outward) and within a fraction of a voxel per exposed
    voxel face of the voxel count (marching cubes cuts corners), and the vertices span the
    segment's voxel bounding box to within half a voxel."""
    lab = synthetic_labels((15, 26, 29), cell=(6, 10, 12), seed=11)
    got = voxgate.mesh(lab, block=block, voxel_size=(1, 1, 1))
    ids = [int(i) for i in np.unique(lab) if i]
    assert sorted(got) == ids
    at_edge = 0
    for i in ids:
        m, mask = got[i], lab == i
        f = m.faces.astype(np.int64)
        edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        _, count = np.unique(edges, axis=0, return_counts=True)
        assert (count == 2).all(), f"id {i}: {int((count != 2).sum())} open edges"
        v = m.vertices.astype(np.float64)
        volume = np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6
        n, exposed = int(mask.sum()), _exposed_faces(mask)
        assert volume > 0 and abs(volume - n) <= 0.15 * exposed, (i, volume, n, exposed)
        where = np.nonzero(mask)  # z, y, x; vertices are x, y, z on voxel faces
        lo = np.array([w.min() for w in where][::-1], float)
        hi = np.array([w.max() + 1 for w in where][::-1], float)
        assert (np.abs(v.min(axis=0) - lo) <= 0.5).all() and (np.abs(v.max(axis=0) - hi)
                                                              <= 0.5).all(), i
        at_edge += bool(mask[0].any() or mask[-1].any() or mask[:, 0].any()
                        or mask[:, -1].any() or mask[:, :, 0].any() or mask[:, :, -1].any())
    assert at_edge > len(ids) // 2  # most segments are cut by the volume's edge
    opened = voxgate.mesh(lab, block=block, voxel_size=(1, 1, 1), close=False)
    assert any(len(opened[i].faces) < len(got[i].faces) for i in ids)


def test_close_must_be_a_bool(labels: np.ndarray) -> None:
    with pytest.raises(InvalidRequestError, match="close"):
        voxgate.mesh(labels, voxel_size=VS, close="yes")  # type: ignore[arg-type]


# -- connected components -------------------------------------------------------------------

_STRUCTURE = {6: 1, 18: 2, 26: 3}


def scipy_components(lab: np.ndarray, connectivity: int) -> np.ndarray:
    """An independent oracle: scipy.ndimage.label per value (equal values connect), numbered
    canonically (by first voxel in C order)."""
    structure = scipy.ndimage.generate_binary_structure(3, _STRUCTURE[connectivity])
    out = np.zeros(lab.shape, dtype=np.uint64)
    total = 0
    for v in np.unique(lab):
        if v == 0:
            continue
        comp, n = scipy.ndimage.label(lab == v, structure=structure)
        out[comp > 0] = comp[comp > 0].astype(np.uint64) + np.uint64(total)
        total += n
    return canonical_order(out)


def _random_labels(shape: tuple[int, int, int], seed: int, values: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fg = rng.random(shape) > 0.5
    return (fg * rng.integers(1, values + 1, shape)).astype(np.uint16)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("shape", [(17, 23, 29), (1, 40, 7), (9, 1, 13)])
def test_connected_components_equal_scipy(connectivity: int, shape: tuple[int, int, int]
                                          ) -> None:
    for values, seed in ((1, 1), (3, 2)):  # binary, and several values side by side
        lab = _random_labels(shape, seed + connectivity, values)
        oracle = scipy_components(lab, connectivity)
        whole = voxgate.connected_components(lab, connectivity=connectivity)
        assert whole.dtype == np.uint64 and whole.provenance.details["blocks"] == 1
        np.testing.assert_array_equal(whole, oracle)
        blocked = voxgate.connected_components(lab, connectivity=connectivity, block=(5, 7, 6))
        assert blocked.provenance.details["blocks"] > 1
        np.testing.assert_array_equal(blocked, oracle)


def test_connected_components_dtype() -> None:
    lab = _random_labels((15, 21, 26), 5, 2)
    ref = voxgate.connected_components(lab)
    for dtype in (np.uint32, "uint32", "auto"):
        for block in (None, (6, 8, 9)):
            got = voxgate.connected_components(lab, dtype=dtype, block=block)
            assert got.dtype == np.uint32, (dtype, block)
            assert got.provenance.details["dtype"] == "uint32"
            np.testing.assert_array_equal(got, ref)
    for bad in (np.int64, np.float32, "uint16", "small"):
        with pytest.raises(InvalidRequestError, match="uint64"):
            voxgate.connected_components(lab, dtype=bad)


def test_auto_dtype_past_uint32_gives_uint64(monkeypatch: pytest.MonkeyPatch) -> None:
    lab = _random_labels((10, 12, 14), 6, 2)
    ref = voxgate.connected_components(lab)
    monkeypatch.setattr(cc_module, "_U32_MAX", 3)  # pretend uint32 holds ids up to 3
    for block in (None, (5, 6, 7)):
        got = voxgate.connected_components(lab, dtype="auto", block=block)
        assert got.dtype == np.uint64
        np.testing.assert_array_equal(got, ref)


def test_connected_components_uint32_store(tmp_path: Path) -> None:
    lab = _random_labels((12, 20, 24), 8, 2)
    src = voxgate.create(f"zarr://{tmp_path}/in.zarr", shape=lab.shape, chunks=(4, 8, 8),
                         dtype="uint16", voxel_size=VS, kind="segmentation")
    src[:] = lab
    out = voxgate.connected_components(src, out=f"zarr://{tmp_path}/cc.zarr", dtype=np.uint32,
                                       block=(4, 8, 8))
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out.read(), scipy_components(lab, 26))
    # a given volume sets the dtype; asking for another one is refused
    again = voxgate.connected_components(src, out=voxgate.open(out.url, mode="r+"))
    assert again.dtype == np.uint32
    with pytest.raises(InvalidRequestError, match="uint64 volume"):
        voxgate.connected_components(src, out=voxgate.open(out.url, mode="r+"),
                                     dtype=np.uint64)


# -- on a dask.distributed cluster ----------------------------------------------------------

def test_mesh_and_cc_on_a_cluster_equal_local(cluster: Any, tmp_path: Path,
                                              labels: np.ndarray) -> None:
    vol = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=labels.shape, chunks=(4, 8, 8),
                         dtype="uint64", voxel_size=VS, kind="segmentation", offset=(2, 0, 1))
    vol[:] = labels
    local = voxgate.mesh(vol, block=(4, 8, 16))
    remote = voxgate.mesh(vol.url, block=(4, 8, 16), client=cluster)
    assert remote.provenance.details["scheduler"] == "distributed"
    assert remote.provenance.details["blocks"] == local.provenance.details["blocks"] > 8
    assert set(local) == set(remote)
    assert all(local[i] == remote[i] for i in local)  # exactly: the same arrays

    cc_local = voxgate.connected_components(vol, out=f"zarr://{tmp_path}/a.zarr",
                                            block=(4, 8, 8))
    cc_remote = voxgate.connected_components(vol.url, out=f"zarr://{tmp_path}/b.zarr",
                                             block=(4, 8, 8), client=cluster)
    np.testing.assert_array_equal(cc_remote.read(), cc_local.read())
    np.testing.assert_array_equal(cc_remote.read(), scipy_components(labels, 26))
    prov = cc_module.connected_components_provenance(cc_remote)
    assert prov is not None and prov.details["scheduler"] == "distributed"
    with pytest.raises(InvalidRequestError, match="this process only"):
        voxgate.connected_components(labels, client=cluster)
    with pytest.raises(InvalidRequestError, match="this process only"):
        voxgate.mesh(labels, voxel_size=VS, block=(4, 8, 8), client=cluster)
