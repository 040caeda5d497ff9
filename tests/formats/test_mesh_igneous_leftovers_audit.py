"""What Igneous leaves beside its unsharded multi-resolution meshes, after voxgate rewrites or
deletes a segment's mesh there.

Igneous' forge step writes legacy meshes (``<id>:0`` manifests naming ``<id>:0:<box>``
fragments) and its ``create_unsharded_multires_mesh_tasks`` builds ``<id>.index`` and ``<id>``
from every ``<id>:0:...`` fragment file it lists; ``create_sharded_multires_mesh_from_
unsharded_tasks`` takes the ids to convert from the ``<id>:0`` and ``<id>.index`` names.
voxgate replaced ``<id>.index`` / ``<id>`` (``write_meshes``, the edits' ``remesh=``) and
deleted a merged-away id's, but left the legacy files: re-running Igneous' multires step
brought back the rewritten ids' old geometry and the merged-away id's mesh, and converting the
directory to sharded failed on the id left with a ``<id>:0`` and no ``<id>.index``.  Now those
legacy files go with the id's multi-resolution mesh.

Igneous' ``.spatial`` index (CloudVolume's ``mesh.spatial_index``) kept the ids' old boxes
and the deleted id, so CloudVolume's ``mesh.get`` of the ids it listed failed; now the
written ids' entries are replaced and the deleted ids' removed.
Skipped without Igneous outside CI and failed in CI, as the files beside it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cloudvolume import CloudVolume

import voxgate
from voxgate.formats.mesh import Mesh, read_meshes, write_meshes
from voxgate.formats.mesh.precomputed import delete_meshes

from .test_mesh_transformed_dir_audit import (
    PEER,
    RES,
    _cv_mesh,
    _extent,
    _igneous,
    _labels,
    _layer,
    _nm_box,
    needs_igneous,
)

pytestmark = needs_igneous

_QUEUE = """
    import sys
    import igneous.task_creation as tc
    from taskqueue import LocalTaskQueue
    tq = LocalTaskQueue(parallel=1, progress=False)
"""
#: Igneous' multires step again over the directory (as after new forge output)
RERUN = _QUEUE + """
    tq.insert_all(tc.create_unsharded_multires_mesh_tasks(sys.argv[1], num_lod=1,
                                                          mesh_dir="mesh"))
"""
#: Igneous' conversion of the unsharded multires directory into a sharded one
CONVERT = _QUEUE + """
    tq.insert_all(tc.create_sharded_multires_mesh_from_unsharded_tasks(
        sys.argv[1], sys.argv[2], num_lod=1, mesh_dir="mesh", mip=0))
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert PEER, "CI must run these: scripts/test.sh sets VOXGATE_IGNEOUS_PYTHON"
    return subprocess.run([PEER, "-c", textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A layer whose segments 1, 2, 3 Igneous meshed: forge, manifests, unsharded multires."""
    path = tmp_path_factory.mktemp("igneous") / "seg"
    _layer(path)
    _igneous(path, sharded=False)
    return path


@pytest.fixture()
def layer(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    monkeypatch.setenv("VOXGATE_PROOFREAD_DIR", str(tmp_path / "histories"))
    path = tmp_path / "seg"
    shutil.copytree(base, path)
    return path, f"file://{path}"


def _legacy_files(path: Path, i: int) -> list[str]:
    return sorted(p.name for p in (path / "mesh").iterdir() if p.name.startswith(f"{i}:0"))


def _near(extent: np.ndarray, box: np.ndarray) -> bool:
    return bool((np.abs(extent - box) <= RES).all())


def _edit(url: str) -> np.ndarray:
    """Merge 3 into 1 (remeshed, 3's mesh deleted) and give 2 the shape of segment 4; the
    labels the meshes now stand for (2: as if it were 4)."""
    vol = voxgate.open(f"precomputed://{url}", mode="r+")
    voxgate.merge(vol, [1, 3], remesh=True)
    four = dict(voxgate.mesh(vol, ids=[4], prefer="local"))[4]
    write_meshes(url, {2: Mesh(four.vertices, four.faces, 2)}, format="multires")
    labels = _labels()
    labels[labels == 3] = 1
    labels[labels == 2] = 0
    labels[labels == 4] = 2
    return labels


def test_the_legacy_files_of_rewritten_and_deleted_ids_go(layer: tuple[Path, str]) -> None:
    path, url = layer
    assert _legacy_files(path, 1) and _legacy_files(path, 2) and _legacy_files(path, 3)
    _edit(url)
    for i in (1, 2, 3):
        assert _legacy_files(path, i) == [], i
    assert sorted(read_meshes(url, [1, 2, 3])) == [1, 2]


def test_an_igneous_multires_rerun_keeps_voxgate_s_meshes(layer: tuple[Path, str]) -> None:
    path, url = layer
    labels = _edit(url)
    run = _run(RERUN, url)
    assert run.returncode == 0, run.stderr[-3000:]
    # 3 stays deleted; 1 (merged) and 2 (rewritten) keep voxgate's geometry
    assert not (path / "mesh" / "3.index").exists()
    assert sorted(read_meshes(url, [1, 2, 3])) == [1, 2]
    for i in (1, 2):
        ext = _extent(_cv_mesh(url, i).vertices)
        assert _near(ext, _nm_box(labels, i)), (i, ext.tolist(), _nm_box(labels, i).tolist())


def test_igneous_converts_the_edited_directory_to_sharded(layer: tuple[Path, str],
                                                          tmp_path: Path) -> None:
    _, url = layer
    labels = _edit(url)
    dest = f"file://{tmp_path / 'sharded'}"
    run = _run(CONVERT, url, dest)
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads((tmp_path / "sharded" / "mesh" / "info").read_text())
    assert info["sharding"]["@type"] == "neuroglancer_uint64_sharded_v1"
    assert sorted(read_meshes(dest, [1, 2, 3])) == [1, 2]
    for i in (1, 2):
        ext = _extent(_cv_mesh(dest, i).vertices)
        assert _near(ext, _nm_box(labels, i)), (i, ext.tolist(), _nm_box(labels, i).tolist())


def test_delete_meshes_takes_only_the_id_s_own_legacy_fragments(
        layer: tuple[Path, str]) -> None:
    path, url = layer
    mesh = path / "mesh"
    # a fragment of another name the manifest lists too (may be shared: it stays)
    manifest = json.loads((mesh / "2:0").read_text())
    (mesh / "shared").write_bytes((mesh / f"{manifest['fragments'][0]}.gz").read_bytes())
    (mesh / "2:0").write_text(json.dumps({"fragments": [*manifest["fragments"], "shared"]}))
    others = _legacy_files(path, 1) + _legacy_files(path, 3)
    delete_meshes(url, [2])
    assert _legacy_files(path, 2) == []
    assert not (mesh / "2.index").exists() and not (mesh / "2").exists()
    assert (mesh / "shared").exists()
    assert _legacy_files(path, 1) + _legacy_files(path, 3) == others
    assert sorted(read_meshes(url, [1, 2, 3])) == [1, 3]


def _index_boxes(url: str) -> dict[int, np.ndarray]:
    """{id: its box} as CloudVolume's mesh spatial index answers (get_bbox over every file
    of the id the whole-volume query lists)."""
    cv = CloudVolume(url)
    index = cv.mesh.spatial_index
    out = {}
    for i in sorted(index.query(cv.bounds * cv.resolution)):
        box = index.get_bbox(i)
        out[int(i)] = np.array([box.minpt, box.maxpt], dtype=np.float64)
    return out


def test_cloudvolume_s_spatial_index_follows_the_edits(layer: tuple[Path, str]) -> None:
    """Igneous' ``.spatial`` files list each id with its box in nm: after the edits the
    merged id's box covers what it gained, the rewritten id's box is its new shape, the
    merged-away id is gone (CloudVolume's mesh get failed on it), and every id the index
    lists has a mesh."""
    path, url = layer
    labels = _edit(url)
    boxes = _index_boxes(url)
    assert sorted(boxes) == [1, 2]
    for i in (1, 2):
        assert _near(boxes[i], _nm_box(labels, i)), (i, boxes[i].tolist(),
                                                     _nm_box(labels, i).tolist())
    got = CloudVolume(url).mesh.get(sorted(boxes))
    assert sorted(int(i) for i in got) == [1, 2]
    assert [p.name for p in (path / "mesh").glob("*.spatial*")] == [
        "0.0-512.0_0.0-512.0_0.0-1280.0.spatial"]
    delete_meshes(url, [2])
    assert sorted(_index_boxes(url)) == [1]
