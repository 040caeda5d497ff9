"""Meshes end to end, against zmesh and CloudVolume: the coarse levels of detail of a
multi-resolution mesh decode to the simplified mesh (no vertex clamped to its octree node),
and block-wise simplification works at any voxel offset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zmesh
from cloudvolume import CloudVolume
from scipy.spatial import cKDTree

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.formats.mesh import Mesh, write_meshes
from voxgate.synthetic import synthetic_labels

#: (z, y, x) nm
VOXEL = (40.0, 8.0, 4.0)


def test_coarse_levels_decode_to_the_simplified_mesh(tmp_path: Path) -> None:
    """Each coarser level is the finer one simplified by zmesh's fqmr to a quarter of its
    triangles (as documented).  fqmr puts a collapsed edge's vertex where the quadric error
    is least, which can be outside the mesh's original bounds; the octree grid must cover
    those vertices too, or they are clamped onto their node's side when quantized.
    CloudVolume decodes every level; every vertex of zmesh's simplified mesh must come back
    within one quantization step."""
    labels = synthetic_labels((40, 64, 64), cell=(16, 24, 24), seed=5).astype(np.uint64)
    res = np.asarray(VOXEL[::-1])
    mesher = zmesh.Mesher(res)
    mesher.mesh(labels.T, close=True)
    meshes = {}
    for i in mesher.ids():
        zm = mesher.get(i, normals=False, voxel_centered=True)
        meshes[int(i)] = Mesh(zm.vertices - res.astype(np.float32), zm.faces, int(i))
    url = f"precomputed://{tmp_path / 'seg'}"
    voxgate.create(url, shape=labels.shape, chunks=(16, 32, 32), dtype="uint64",
                   voxel_size=VOXEL, kind="segmentation")
    lods = 3
    write_meshes(url, meshes, format="multires", lods=lods, vertex_quantization_bits=16)
    info = json.loads((tmp_path / "seg/info").read_text())
    assert info["mesh"] == "mesh"
    cv = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False)
    worst = 0.0
    for i, m in meshes.items():
        index = (tmp_path / f"seg/mesh/{i}.index").read_bytes()
        chunk = np.frombuffer(index, "<f4", count=3).astype(np.float64)
        assert np.frombuffer(index, "<u4", count=1, offset=24)[0] == lods
        ref = [(m.vertices, m.faces)]
        for _ in range(1, lods):  # zmesh, called directly
            v, f = ref[-1]
            out = zmesh.simplify_fqmr(zmesh.Mesh(v, f, None), max(len(f) // 4, 4))
            ref.append((out.vertices, out.faces))
        for lod in range(lods):
            got = cv.mesh.get(i, lod=lod)[i]
            step = float((chunk * 2**lod / (2**16 - 1)).max())
            dist = cKDTree(np.asarray(got.vertices, np.float64)).query(
                np.asarray(ref[lod][0], np.float64))[0]
            worst = max(worst, float(dist.max() / step))
            assert dist.max() <= step, (i, lod, float(dist.max()), step)
    assert worst > 0  # quantization is there, and within a step


def test_blockwise_simplification_at_a_large_voxel_offset(tmp_path: Path) -> None:
    """Simplification of a stitched mesh works wherever the volume lies: at 600000 voxels
    along x the result is the one at offset 0, moved (zmesh's simplifier packs positions in
    half voxels up to 2**20 from the smallest coordinate of any axis)."""
    labels = synthetic_labels((16, 32, 48), cell=(8, 16, 16), seed=2).astype(np.uint64)
    got = {}
    for x0 in (0, 600_000):
        url = f"precomputed://{tmp_path / f'seg{x0}'}"
        vol = voxgate.create(url, shape=labels.shape, chunks=(8, 16, 16), dtype="uint64",
                             voxel_size=VOXEL, kind="segmentation", offset=(0, 0, x0))
        vol[...] = labels
        got[x0] = voxgate.mesh(url, simplify=4, block=(8, 16, 16))
        assert got[x0].provenance.details["blocks"] == 12
    near, far = got[0], got[600_000]
    assert sorted(near) == sorted(far) == sorted(int(i) for i in np.unique(labels) if i)
    move = np.array([600_000 * VOXEL[2], 0, 0])
    for i, m in near.items():
        assert 0 < m.num_faces < voxgate.mesh(labels, ids=[i], voxel_size=VOXEL)[i].num_faces
        assert np.array_equal(far[i].faces, m.faces)
        assert np.allclose(far[i].vertices.astype(np.float64),
                           m.vertices.astype(np.float64) + move, atol=0.3)
        # every vertex lies within the segment's voxels' box
        zyx = np.argwhere(labels == i)
        lo = (zyx.min(axis=0) * VOXEL)[::-1] + move
        hi = ((zyx.max(axis=0) + 1) * VOXEL)[::-1] + move
        assert np.all(far[i].vertices >= lo - 0.3) and np.all(far[i].vertices <= hi + 0.3)


@pytest.mark.parametrize("simplify", [None, (4, 40.0)])
def test_odd_volume_with_offset_equals_zmesh(tmp_path: Path, simplify: object) -> None:
    """An odd-shaped volume with a voxel offset and anisotropic voxels: voxgate's meshes are
    zmesh's (the same simplification settings), moved to the dataset's frame."""
    labels = synthetic_labels((13, 29, 37), cell=(6, 11, 13), seed=9).astype(np.uint64)
    labels[labels > 0] += np.uint64(2**40)  # ids past 2**32
    offset = (3, 17, 5)
    url = f"precomputed://{tmp_path / 'seg'}"
    vol = voxgate.create(url, shape=labels.shape, chunks=(8, 16, 16), dtype="uint64",
                         voxel_size=VOXEL, kind="segmentation", offset=offset)
    vol[...] = labels
    ours = voxgate.mesh(url, simplify=simplify)
    res = np.asarray(VOXEL[::-1])
    mesher = zmesh.Mesher(res)
    # the labels with a layer of background around them, x fastest: simplification depends
    # on the order marching cubes meets the triangles in, so the same memory as voxgate's
    mesher.mesh(np.pad(labels, 1).T)
    shift = (np.asarray(offset[::-1]) - 1) * res
    kwargs = {} if simplify is None else {"reduction_factor": 4, "max_error": 40.0}
    assert sorted(ours) == sorted(int(i) for i in mesher.ids())
    for i in mesher.ids():
        ref = mesher.get(i, normals=False, voxel_centered=True, **kwargs)
        m = ours[int(i)]
        assert m.num_faces == len(ref.faces)
        a = np.unique(np.round(m.vertices.astype(np.float64), 2), axis=0)
        b = np.unique(np.round(ref.vertices.astype(np.float64) + shift, 2), axis=0)
        assert a.shape == b.shape and np.abs(a - b).max() <= 0.02


@pytest.mark.parametrize("voxel_size", [(40, 8, 4), (8, 8, 8), (30, 3.6, 3.6)])
@pytest.mark.parametrize("simplify", [(20, 4), (20, 40)])
def test_block_wise_simplification_keeps_the_whole_volume_error_bound(
        voxel_size: tuple[float, float, float], simplify: tuple[int, int]) -> None:
    """The same ``simplify=`` simplifies as much block by block (any volume over 512 MiB) as
    in one piece.  The block path used zmesh's ``Mesher.simplify``, which measures positions
    in half voxels and floors max_error / voxel diagonal (40 nm on 40x8x4 nm voxels: 0): it
    kept 3-5x the whole-volume path's triangles (2766 vs 584 here)."""
    zz, yy, xx = np.mgrid[:24, :80, :96]
    labels = np.zeros((24, 80, 96), np.uint64)
    labels[((zz - 12) * 10) ** 2 + ((yy - 40) * 2) ** 2 + (xx - 48) ** 2 < 38 ** 2] = 7
    labels[((zz - 8) * 10) ** 2 + ((yy - 20) * 2) ** 2 + (xx - 20) ** 2 < 15 ** 2] = 2**40 + 9
    whole = voxgate.mesh(labels, voxel_size=voxel_size, simplify=simplify)
    blocks = voxgate.mesh(labels, voxel_size=voxel_size, simplify=simplify, block=(8, 32, 32))
    full = voxgate.mesh(labels, voxel_size=voxel_size)
    for i, m in whole.items():
        assert m.num_faces < full[i].num_faces / 2
        assert abs(blocks[i].num_faces - m.num_faces) <= 0.1 * m.num_faces, (
            i, m.num_faces, blocks[i].num_faces)
        # every simplified vertex stays near the surface (the unsimplified mesh's vertices)
        tree = cKDTree(full[i].vertices)
        assert tree.query(blocks[i].vertices)[0].max() <= 2 * max(voxel_size)


def test_a_fractional_reduction_factor_is_refused() -> None:
    """zmesh takes a whole reduction factor (2.5 was silently 2); 4.0 is 4."""
    labels = np.zeros((8, 8, 8), np.uint64)
    labels[2:6, 2:6, 2:6] = 1
    with pytest.raises(InvalidRequestError, match="whole number"):
        voxgate.mesh(labels, voxel_size=(1, 1, 1), simplify=2.5)
    assert voxgate.mesh(labels, voxel_size=(1, 1, 1), simplify=4.0)[1].num_faces > 0
