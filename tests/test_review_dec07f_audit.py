"""Review of the 7 December changes (c3be794..): what the new code missed.

- ``remesh=`` on a precomputed layer whose mesh directory voxgate cannot add to (a
  multi-resolution directory under a transform that cannot be inverted; legacy meshes
  declared sharded; a mesh type voxgate does not know; a skeleton directory whose info
  describes something else) wrote the edit,
  recorded it done, then raised from the writer with nothing written: the check made
  before the edit read the directory's info only for valid JSON.  Now it is refused before
  anything is edited (CapabilityNotSupportedError), as a layer without the directory is.
  (The multi-resolution directory CloudVolume and Igneous make, under a transform scaling by
  the voxel size, was among them; voxgate now adds to it: tests/formats/
  test_mesh_transformed_dir_audit.py.)
- Guards: a directory without an info of its own is still remeshed (legacy); a DVID volume
  opened at a node's full UUID, at a prefix of it or at a branch whose leaf it is reads with
  the same relay cell fingerprint (one node, one set of cells), another node with another.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cloudvolume import CloudVolume

import voxgate
from voxgate.errors import CapabilityNotSupportedError

SHAPE = (16, 32, 32)
A, B = 10, 20


def _labels() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint32)
    lab[2:8, 4:12, 4:12] = A
    lab[2:8, 14:24, 14:24] = B
    return lab


def _layer(tmp_path: Path) -> str:
    """A precomputed segmentation whose info names a mesh directory (through CloudVolume)."""
    url = f"precomputed://file://{tmp_path}/seg"
    vol = voxgate.create(url, shape=SHAPE, chunks=(16, 16, 16), dtype="uint32",
                         kind="segmentation", voxel_size=(8, 8, 8))
    vol[...] = _labels()
    cv = CloudVolume(f"file://{tmp_path}/seg")
    cv.info["mesh"] = "mesh"
    cv.commit_info()
    return url


def _singular_multires(tmp_path: Path) -> None:
    """The mesh directory's info as CloudVolume (and Igneous's multires tasks) make it, its
    transform then made singular (z scaled by 0): no stored frame nm vertices can go to."""
    cv = CloudVolume(f"file://{tmp_path}/seg")
    cv.mesh.meta.mip = 0  # (the mip the meshes were made at, as Igneous sets it)
    cv.mesh.meta.to_multi_resolution(16)
    cv.mesh.meta.commit_info()
    path = tmp_path / "seg" / "mesh" / "info"
    info = json.loads(path.read_text())
    assert info["@type"] == "neuroglancer_multilod_draco"
    assert info["transform"][0] == 8  # (scaled by the voxel size)
    info["transform"][10] = 0
    path.write_text(json.dumps(info))


def _info(info: dict[str, Any]) -> Any:
    def make(tmp_path: Path) -> None:
        (tmp_path / "seg" / "mesh").mkdir(parents=True, exist_ok=True)
        (tmp_path / "seg" / "mesh" / "info").write_text(json.dumps(info))
    return make


SHARDING = {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 0, "hash": "identity",
            "minishard_bits": 0, "shard_bits": 0}
DIRS = {
    "singular-multires": _singular_multires,
    "legacy-declared-sharded": _info({"@type": "neuroglancer_legacy_mesh",
                                      "sharding": SHARDING}),
    "unknown-mesh-type": _info({"@type": "neuroglancer_mesh_v9"}),
}


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", list(DIRS))
@pytest.mark.parametrize("edit", ["merge", "split"])
def test_remesh_into_a_mesh_directory_voxgate_cannot_add_to_is_refused_before_the_edit(
        tmp_path: Path, kind: str, edit: str) -> None:
    url = _layer(tmp_path)
    DIRS[kind](tmp_path)
    before = _files(tmp_path / "seg")
    vol = voxgate.open(url, mode="r+")
    with pytest.raises(CapabilityNotSupportedError) as err:
        if edit == "merge":
            voxgate.merge(vol, [A, B], remesh=True)
        else:
            voxgate.split(vol, A, seeds={901: [(4, 5, 5)], 902: [(4, 10, 10)]}, remesh=True)
    said = str(err.value)
    assert "Nothing was edited" in said and "mesh" in said and "remesh" in said, said
    # the voxels, the mesh directory and the history as they were
    np.testing.assert_array_equal(voxgate.open(url).read(), _labels())
    after = _files(tmp_path / "seg")
    assert {k: v for k, v in after.items() if "history" not in k} == before
    assert len(voxgate.history(vol)) == 0
    # without remesh the edit goes through
    voxgate.merge(vol, [A, B])
    assert set(np.unique(voxgate.open(url).read()).tolist()) == {0, A}


def test_remesh_into_a_mesh_directory_without_an_info_still_writes_legacy_meshes(
        tmp_path: Path) -> None:
    """(A guard: the check must not refuse what the writer accepts.)"""
    from voxgate.formats.mesh import read_meshes

    url = _layer(tmp_path)
    vol = voxgate.open(url, mode="r+")
    voxgate.merge(vol, [A, B], remesh=True)
    got = read_meshes(url)
    assert set(got) == {A}
    info = json.loads((tmp_path / "seg" / "mesh" / "info").read_text())
    assert info["@type"] == "neuroglancer_legacy_mesh"
    cv = CloudVolume(f"file://{tmp_path}/seg")
    theirs = cv.mesh.get(A).vertices  # (CloudVolume reads the meshes written: nm, as ours)
    assert len(theirs) > 0
    np.testing.assert_allclose(theirs.max(axis=0), got[A].vertices.max(axis=0), atol=1e-3)


@pytest.fixture(scope="module")
def dvid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from voxgate.testing.dvid import start_server

    server = start_server(log=tmp_path_factory.mktemp("dvid") / "dvid.log")
    try:
        yield server
    finally:
        server.stop()


def test_dvid_cells_fingerprint_is_the_node_however_it_is_named(dvid: Any) -> None:
    """(A guard.)  One node named by its full UUID, a prefix or a branch whose leaf it is:
    one fingerprint (the relay's cells of it are shared); another node: another."""
    from voxgate.relay.cache.remote import meta_fingerprint, meta_version
    from voxgate.remotes.dvid import DVIDRepo

    repo = DVIDRepo.create(dvid.url, alias="review-fingerprint")
    voxgate.create(repo.url("seg"), shape=(16, 16, 16), chunks=(16, 16, 16), dtype="uint64",
                   kind="segmentation", voxel_size=(8, 8, 8), num_scales=1)
    repo.commit(repo.root, note="base")
    leaf = repo.branch(repo.root, "proof")
    names = [leaf, leaf[:6], f"{repo.root[:6]}:proof"]
    prints = {meta_fingerprint(voxgate.open(repo.url("seg", n)).remote.meta) for n in names}
    assert len(prints) == 1
    assert meta_version(voxgate.open(repo.url("seg", leaf[:6])).remote.meta) == leaf
    root = meta_fingerprint(voxgate.open(repo.url("seg", repo.root)).remote.meta)
    assert root not in prints


def test_remesh_skeletons_into_a_directory_of_something_else_is_refused_before_the_edit(
        tmp_path: Path) -> None:
    """The skeleton directory the info names holds another kind (here an annotation layer's
    info): refused before the edit, as the skeleton writer would refuse it after."""
    url = _layer(tmp_path)
    cv = CloudVolume(f"file://{tmp_path}/seg")
    cv.info["skeletons"] = "skel"
    cv.commit_info()
    (tmp_path / "seg" / "skel").mkdir()
    (tmp_path / "seg" / "skel" / "info").write_text(
        json.dumps({"@type": "neuroglancer_annotations_v1"}))
    vol = voxgate.open(url, mode="r+")
    with pytest.raises(CapabilityNotSupportedError, match="Nothing was edited"):
        voxgate.merge(vol, [A, B], remesh="skeletons")
    np.testing.assert_array_equal(voxgate.open(url).read(), _labels())
    assert len(voxgate.history(vol)) == 0
