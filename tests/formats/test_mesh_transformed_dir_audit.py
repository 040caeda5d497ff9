"""Adding meshes to a mesh directory stored under a transform (Igneous / CloudVolume).

Igneous' multi-resolution meshes (and CloudVolume's ``to_multi_resolution``) store voxel
units under a ``transform`` that scales by the voxel size.  ``write_meshes`` (and so
``voxgate.mesh(out=...)`` and the proofreading edits' ``remesh=``) refused such a directory
("voxgate writes nanometre coordinates (the identity transform)"), so a lab with Igneous
meshes could neither add nor remesh a segment.  Now the nm vertices are moved into the
directory's stored frame through the inverse transform before they are encoded (multires:
before quantization, so grid origin, chunk shape and lod scales are in that frame too), the
directory's info stays as it was, and CloudVolume and voxgate read every mesh, old and new,
in nm where the segment is.  A transform that cannot be inverted stays refused.

Igneous runs in its own environment (``VOXGATE_IGNEOUS_PYTHON``, as in
tests/services/test_downsample_igneous.py); those cases are skipped when it is not set,
except in CI, where they fail.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cloudvolume import CloudVolume
from cloudvolume.mesh import Mesh as CVMesh

import voxgate
from voxgate.errors import CapabilityNotSupportedError, InvalidRequestError
from voxgate.formats.mesh import Mesh, read_meshes, write_meshes
from voxgate.formats.mesh.multires import _Manifest

PEER = os.environ.get("VOXGATE_IGNEOUS_PYTHON")
needs_igneous = pytest.mark.skipif(
    not PEER and not os.environ.get("CI"),
    reason="VOXGATE_IGNEOUS_PYTHON names no Python with the igneous-pipeline package",
)

RES = np.array([8.0, 8.0, 40.0])          # x, y, z nm: (40, 8, 8) nm zyx voxels
SHAPE = (32, 64, 64)                      # z, y, x
SCALE = [8, 0, 0, 0, 0, 8, 0, 0, 0, 0, 40, 0]
BOXES = {                                 # id: z, y, x slices
    1: np.s_[2:10, 4:20, 6:30],
    2: np.s_[12:28, 30:60, 10:40],
    3: np.s_[5:25, 8:28, 40:60],
    4: np.s_[20:30, 40:62, 44:62],
    5: np.s_[0:4, 50:60, 2:12],
}
OLD = [1, 2, 3]                           # the ids the peer meshed


def _labels() -> np.ndarray:
    zyx = np.zeros(SHAPE, np.uint64)
    for i, box in BOXES.items():
        zyx[box] = i
    return zyx


def _nm_box(labels: np.ndarray, i: int) -> np.ndarray:
    """[[x0, y0, z0], [x1, y1, z1]] of segment i's voxels, in nm."""
    z, y, x = np.nonzero(labels == i)
    return np.array([[x.min(), y.min(), z.min()], [x.max() + 1, y.max() + 1, z.max() + 1]]) * RES


def _layer(path: Path) -> str:
    url = f"file://{path}"
    info = CloudVolume.create_new_info(1, "segmentation", "uint64", "raw", RES.tolist(),
                                       [0, 0, 0], [64, 64, 32], chunk_size=[32, 32, 16])
    cv = CloudVolume(url, info=info)
    cv.commit_info()
    cv[:, :, :] = np.transpose(_labels(), (2, 1, 0))[..., None]
    return url


def _igneous(path: Path, sharded: bool) -> None:
    """Igneous meshes OLD: legacy fragments, then merged into multires (sharded or not)."""
    assert PEER, "CI must run these: scripts/test.sh sets VOXGATE_IGNEOUS_PYTHON"
    code = textwrap.dedent("""
        import sys
        import igneous.task_creation as tc
        from taskqueue import LocalTaskQueue
        url, sharded = sys.argv[1], sys.argv[2] == "1"
        tq = LocalTaskQueue(parallel=1, progress=False)
        tq.insert_all(tc.create_meshing_tasks(url, mip=0, shape=(64, 64, 32), mesh_dir="mesh",
                                              sharded=sharded, object_ids=[1, 2, 3]))
        if sharded:
            tq.insert_all(tc.create_sharded_multires_mesh_tasks(url, num_lod=1,
                                                                mesh_dir="mesh"))
        else:
            tq.insert_all(tc.create_mesh_manifest_tasks(url, mesh_dir="mesh"))
            tq.insert_all(tc.create_unsharded_multires_mesh_tasks(url, num_lod=1,
                                                                  mesh_dir="mesh"))
        """)
    run = subprocess.run([PEER, "-c", code, f"file://{path}", "1" if sharded else "0"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def _cloudvolume_legacy(path: Path) -> None:
    """Legacy meshes of OLD in voxel units under a scaling transform (CloudVolume's own
    Mesh encoder; CloudVolume applies a legacy info's transform too)."""
    mesh_dir = path / "mesh"
    mesh_dir.mkdir()
    labels = _labels()
    for i in OLD:
        lo, hi = _nm_box(labels, i) / RES
        # a closed box surface in voxel units
        corners = np.array([[x, y, z] for z in (lo[2], hi[2]) for y in (lo[1], hi[1])
                            for x in (lo[0], hi[0])], np.float32)
        faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                          [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]],
                         np.uint32)
        frag = f"{i}:0:{int(lo[0])}-{int(hi[0])}_{int(lo[1])}-{int(hi[1])}_" \
               f"{int(lo[2])}-{int(hi[2])}"
        (mesh_dir / f"{frag}.gz").write_bytes(
            gzip.compress(CVMesh(corners, faces, None, segid=i).to_precomputed()))
        (mesh_dir / f"{i}:0").write_text(json.dumps({"fragments": [frag]}))
    (mesh_dir / "info").write_text(json.dumps({"@type": "neuroglancer_legacy_mesh",
                                               "transform": SCALE}))
    info = json.loads((path / "info").read_text())
    info["mesh"] = "mesh"
    (path / "info").write_text(json.dumps(info))


KINDS = ["legacy", "multires", "multires-sharded"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One layer per kind, made once; each test works on a copy."""
    out: dict[str, Path] = {}
    for kind in KINDS:
        if kind != "legacy" and not PEER and not os.environ.get("CI"):
            continue
        path = tmp_path_factory.mktemp(kind) / "seg"
        _layer(path)
        if kind == "legacy":
            _cloudvolume_legacy(path)
        else:
            _igneous(path, sharded=kind.endswith("sharded"))
        out[kind] = path
    return out


def _copy(bases: dict[str, Path], kind: str, tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "seg"
    shutil.copytree(bases[kind], path)
    return path, f"file://{path}"


def _cv_mesh(url: str, i: int) -> Any:
    got = CloudVolume(url).mesh.get(i)
    return got[i] if isinstance(got, dict) else got


def _extent(vertices: np.ndarray) -> np.ndarray:
    v = np.asarray(vertices, np.float64)
    return np.array([v.min(axis=0), v.max(axis=0)])


def _check(url: str, labels: np.ndarray, ids: list[int]) -> dict[int, np.ndarray]:
    """Every id read by CloudVolume and voxgate, in nm, where its voxels are; the extents."""
    ours = read_meshes(url, ids, strict=True)
    extents = {}
    for i in ids:
        theirs = _cv_mesh(url, i)
        ext = _extent(theirs.vertices)
        want = _nm_box(labels, i)
        assert (np.abs(ext - want) <= RES).all(), (i, ext.tolist(), want.tolist())
        np.testing.assert_allclose(_extent(ours[i].vertices), ext, atol=1e-2)
        assert len(ours[i].faces) == len(theirs.faces), i
        extents[i] = ext
    return extents


def _kind_options(kind: str) -> dict[str, Any]:
    if kind == "legacy":
        return {"format": "legacy"}
    return {"format": "multires", "sharded": kind.endswith("sharded")}


def _param(kind: str) -> Any:
    return pytest.param(kind, marks=() if kind == "legacy" else needs_igneous)


@pytest.mark.parametrize("kind", [_param(k) for k in KINDS])
def test_write_meshes_adds_to_a_peer_directory_under_a_transform(
        bases: dict[str, Path], tmp_path: Path, kind: str) -> None:
    path, url = _copy(bases, kind, tmp_path)
    info_before = json.loads((path / "mesh" / "info").read_text())
    assert info_before["transform"] == SCALE
    labels = _labels()
    old = _check(url, labels, OLD)
    made = dict(voxgate.mesh(voxgate.open(f"precomputed://{url}"), ids=[2, 4, 5],
                             prefer="local"))
    lods = {"lods": 2} if kind == "multires" else {}
    write_meshes(url, made, **_kind_options(kind), **lods)  # 4, 5 new; 2 replaced
    assert json.loads((path / "mesh" / "info").read_text()) == info_before
    now = _check(url, labels, [1, 2, 3, 4, 5])
    for i in (1, 3):  # the peer's meshes as they were
        np.testing.assert_array_equal(now[i], old[i])
    for i in (2, 4, 5):  # voxgate's own meshes, where they were computed
        np.testing.assert_allclose(now[i], _extent(made[i].vertices), atol=0.05 * RES.max())
    if kind == "multires":
        # the octree is in the stored frame (voxels): lod scales of the finest voxel, 1 and 2
        m = _Manifest.from_bytes((path / "mesh" / "4.index").read_bytes(), "4.index")
        assert m.lod_scales.tolist() == [1.0, 2.0]
        assert (m.grid_origin == np.floor(m.grid_origin)).all()
        assert (m.grid_origin * RES <= now[4][0] + 1e-6).all()
    if kind == "legacy":
        raw = (path / "mesh" / json.loads((path / "mesh" / "4:0").read_text())["fragments"][0])
        stored = CVMesh.from_precomputed(raw.read_bytes()).vertices
        np.testing.assert_allclose(_extent(stored), _nm_box(labels, 4) / RES, atol=1.0)


@pytest.mark.parametrize("kind", [_param(k) for k in KINDS])
def test_proofread_remesh_into_a_peer_directory_under_a_transform(
        bases: dict[str, Path], tmp_path: Path, kind: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGATE_PROOFREAD_DIR", str(tmp_path / "histories"))
    path, url = _copy(bases, kind, tmp_path)
    info_before = json.loads((path / "mesh" / "info").read_text())
    vol = voxgate.open(f"precomputed://{url}", mode="r+")
    voxgate.merge(vol, [1, 3], remesh=True)      # 1 remeshed over both, 3 removed
    voxgate.merge(vol, [4, 5], remesh=True)      # 4 meshed anew (the peer made none)
    labels = _labels()
    labels[labels == 3] = 1
    labels[labels == 5] = 4
    np.testing.assert_array_equal(voxgate.open(f"precomputed://{url}").read(), labels)
    assert len(voxgate.history(vol)) == 2
    assert json.loads((path / "mesh" / "info").read_text()) == info_before
    _check(url, labels, [1, 2, 4])
    assert set(read_meshes(url, [1, 2, 3, 4, 5])) == {1, 2, 4}


def test_an_affine_transform_with_an_offset_and_axes_swapped(tmp_path: Path) -> None:
    """Any invertible affine: x and y swapped, scaled and shifted, the z axis sheared."""
    path = tmp_path / "seg"
    url = _layer(path)
    transform = [0, 8, 0, 100, 8, 0, 0, -50, 0, 4, 40, 20]
    (path / "mesh").mkdir()
    (path / "mesh" / "info").write_text(json.dumps({
        "@type": "neuroglancer_multilod_draco", "vertex_quantization_bits": 16,
        "transform": transform, "lod_scale_multiplier": 1.0}))
    made = dict(voxgate.mesh(voxgate.open(f"precomputed://{url}"), ids=[1, 4],
                             prefer="local"))
    write_meshes(url, made, format="multires")
    assert json.loads((path / "mesh" / "info").read_text())["transform"] == transform
    _check(url, _labels(), [1, 4])
    for i in (1, 4):
        np.testing.assert_allclose(_extent(read_meshes(url, [i])[i].vertices),
                                   _extent(made[i].vertices), atol=0.05 * RES.max())


#: a singular transform, and one singular but for rounding (its inverse's entries ~1e13: nm
#: vertices moved through it and back came out wrong, (100, 200, 300) as (0, 100, 300))
SINGULAR = {"singular": [8, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0],
            "near-singular": [1, 1, 0, 0, 1, 1 + 1e-13, 0, 0, 0, 0, 1, 0]}


@pytest.mark.parametrize("transform", list(SINGULAR))
@pytest.mark.parametrize("mesh_type", ["neuroglancer_multilod_draco", "neuroglancer_legacy_mesh"])
def test_a_transform_that_cannot_be_inverted_is_still_refused(
        tmp_path: Path, mesh_type: str, transform: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGATE_PROOFREAD_DIR", str(tmp_path / "histories"))
    path = tmp_path / "seg"
    url = _layer(path)
    (path / "mesh").mkdir()
    info: dict[str, Any] = {"@type": mesh_type, "transform": SINGULAR[transform]}
    if mesh_type.endswith("draco"):
        info.update(vertex_quantization_bits=16, lod_scale_multiplier=1.0)
    (path / "mesh" / "info").write_text(json.dumps(info))
    layer = json.loads((path / "info").read_text())
    layer["mesh"] = "mesh"
    (path / "info").write_text(json.dumps(layer))
    fmt = "multires" if mesh_type.endswith("draco") else "legacy"
    made = dict(voxgate.mesh(voxgate.open(f"precomputed://{url}"), ids=[1], prefer="local"))
    with pytest.raises(InvalidRequestError, match="cannot be inverted"):
        write_meshes(url, made, format=fmt)
    assert sorted(p.name for p in (path / "mesh").iterdir()) == ["info"]
    assert json.loads((path / "mesh" / "info").read_text()) == info
    vol = voxgate.open(f"precomputed://{url}", mode="r+")
    with pytest.raises(CapabilityNotSupportedError, match="cannot be inverted"):
        voxgate.merge(vol, [1, 3], remesh=True)
    np.testing.assert_array_equal(voxgate.open(f"precomputed://{url}").read(), _labels())
    assert len(voxgate.history(vol)) == 0


@pytest.mark.parametrize("fmt", ["legacy", "multires"])
def test_a_new_directory_keeps_the_identity_transform(tmp_path: Path, fmt: str) -> None:
    """(A guard.)"""
    path = tmp_path / "seg"
    url = _layer(path)
    made = dict(voxgate.mesh(voxgate.open(f"precomputed://{url}"), ids=[2, 3],
                             prefer="local"))
    write_meshes(url, made, format=fmt)
    info = json.loads((path / "mesh" / "info").read_text())
    if fmt == "multires":
        assert info["transform"] == [1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0, 0]
    else:
        assert "transform" not in info
    ext = _check(url, _labels(), [2, 3])
    for i in (2, 3):
        np.testing.assert_allclose(ext[i], _extent(made[i].vertices), atol=0.05 * RES.max())
    assert isinstance(made[2], Mesh)
