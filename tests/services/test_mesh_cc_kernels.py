"""mesh and connected_components against their kernels and independent oracles: zmesh called
directly, scipy.ndimage.label; the ids' dtype; the same result on a 2-worker dask cluster."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
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


def _zmesh(labels: np.ndarray, vs: tuple[float, float, float]) -> dict[int, Any]:
    m = zmesh.Mesher((vs[2], vs[1], vs[0]))
    m.mesh(labels.T)
    return {int(i): m.get(i, normals=False, voxel_centered=True) for i in m.ids()}


def _triangles(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """A mesh as the sorted set of its triangles' corner positions (order-free)."""
    t = vertices[faces].reshape(len(faces), 3, 3)
    t = t[np.arange(len(t))[:, None], np.lexsort(t.transpose(2, 0, 1)[::-1])]
    return np.unique(t.reshape(len(faces), 9), axis=0)


def test_mesh_equals_zmesh_called_directly(labels: np.ndarray) -> None:
    got = voxgate.mesh(labels, voxel_size=VS)
    ref = _zmesh(labels, VS)
    assert set(got) == set(ref) and len(ref) > 5
    for i, m in ref.items():
        np.testing.assert_array_equal(got[i].vertices, m.vertices)
        np.testing.assert_array_equal(got[i].faces, m.faces)
        assert got[i].id == i


def test_mesh_of_a_store_with_offset_is_zmesh_shifted(tmp_path: Path, labels: np.ndarray
                                                       ) -> None:
    vol = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=labels.shape, chunks=(8, 16, 16),
                         dtype="uint64", voxel_size=VS, kind="segmentation", offset=(3, 5, 7))
    vol[:] = labels
    got = voxgate.mesh(vol)
    shift = np.array([7 * VS[2], 5 * VS[1], 3 * VS[0]], dtype=np.float32)
    for i, m in _zmesh(labels, VS).items():
        np.testing.assert_array_equal(got[i].vertices, m.vertices + shift)
        np.testing.assert_array_equal(got[i].faces, m.faces)


def test_a_large_numpy_array_is_meshed_in_place(labels: np.ndarray,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mesh_module, "WHOLE_BYTES", 1)  # every array is "large"
    got = voxgate.mesh(labels, voxel_size=VS)
    assert got.provenance.details["blocks"] == 1  # not cut into copied blocks
    ref = _zmesh(labels, VS)
    assert all(np.array_equal(got[i].vertices, ref[i].vertices) for i in ref)


def test_stitched_blocks_have_zmesh_triangles_and_a_fixed_order(labels: np.ndarray) -> None:
    ref = _zmesh(labels, VS)
    a = voxgate.mesh(labels, voxel_size=VS, block=(4, 7, 10))
    b = voxgate.mesh(labels, voxel_size=VS, block=(4, 7, 10))
    assert a.provenance.details["blocks"] == 4 * 4 * 4
    for i, m in ref.items():
        # the same surface (every shared border vertex merged, no doubled triangle)
        assert len(a[i].vertices) == len(m.vertices) and len(a[i].faces) == len(m.faces)
        np.testing.assert_array_equal(_triangles(a[i].vertices, a[i].faces),
                                      _triangles(m.vertices, m.faces))
        assert a[i] == b[i]  # and the same arrays every run


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

@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as c, Client(c) as client:
        yield client


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
