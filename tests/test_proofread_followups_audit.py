"""Follow-ups of the proofreading / annotation audit.

- ``detect_synapses(out=...)`` wrote each point at its voxel's integer index; Neuroglancer
  draws voxel ``i`` over ``[i, i + 1)`` (its "snap to voxel" puts a position at
  ``floor(x) + 0.5``), so the points showed on the voxels' corners, half a voxel off the
  meshes and skeletons voxgate writes (``(index + 0.5) * voxel size``).  Now the layer holds
  the voxels' centres and the table's ``x_nm, y_nm, z_nm`` are the centres in nm.
- ``ShardedStore.remove`` of an id whose shard did not exist wrote an empty shard file (and
  rewrote a shard that did not hold the id).
- Rewriting a legacy precomputed mesh left the old fragment file (its name holds the mesh's
  bounding box) on disk, named by no manifest.
- Undo of a DVID merge made with ``remesh=True``: the meshes in ``<name>_meshes`` come back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.formats.mesh import Mesh, read_meshes, write_meshes
from voxgate.formats.mesh.precomputed import delete_meshes
from voxgate.storage.sharding import ShardedStore, ShardingSpec, decode_shard
from voxgate.testing.dvid import DVIDServerProcess, start_server

VOXEL = (40.0, 8.0, 8.0)


# -- (1) synapse points at voxel centres ----------------------------------------------------------
def _probability_model(image: np.ndarray) -> np.ndarray:
    """A "model" whose probability is the image itself (given as floats 0..1)."""
    return np.asarray(image, np.float32)


def _synapse_image() -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
    """An image with three bright blobs of odd shapes, a segmentation holding them, and each
    blob's expected position (the voxel nearest its centroid, in nm: ties to the first in C
    order), relative to the volume's first voxel."""
    img = np.zeros((12, 40, 36), np.uint8)
    seg = np.zeros(img.shape, np.uint64)
    seg[:, :20] = 7
    seg[:, 20:] = 9
    blobs = [(slice(2, 5), slice(3, 8), slice(4, 11)),
             (slice(6, 9), slice(24, 27), slice(20, 31)),
             (slice(9, 12), slice(12, 17), slice(28, 33))]
    for b in blobs:
        img[b] = 220
    expect = []
    for b in blobs:
        vox = np.argwhere(img[b] > 0) + [s.start for s in b]
        centre = vox.mean(axis=0)
        d2 = (((vox - centre) * VOXEL) ** 2).sum(axis=1)
        expect.append(tuple(int(v) for v in vox[int(np.argmin(d2))]))
    return img, seg, expect


@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_synapse_points_are_written_at_voxel_centres(tmp_path: Path, sharded: bool) -> None:
    """Before: the layer held (x, y, z) = the voxel's index, and x_nm = index * voxel size."""
    from neuroglancer.read_precomputed_annotations import AnnotationReader

    from voxgate.formats.annotation import read_annotations

    img, seg, expect = _synapse_image()
    offset = (3, 101, 50)  # odd, so an index and a centre never agree by accident
    src = voxgate.create(f"zarr://{tmp_path}/em.zarr", shape=img.shape, chunks=(6, 20, 18),
                         dtype="uint8", voxel_size=VOXEL, offset=offset)
    src[:] = img
    cells = voxgate.create(f"zarr://{tmp_path}/cells.zarr", shape=img.shape,
                           chunks=(6, 20, 18), dtype="uint64", voxel_size=VOXEL,
                           offset=offset, kind="segmentation")
    cells[:] = seg
    out = f"precomputed://file://{tmp_path}/synapses"
    table = voxgate.detect_synapses(src, model=_probability_model, segmentation=cells,
                                    min_size=5, out=out, sharded=sharded, progress=False)
    assert len(table) == 3
    index = table[["z", "y", "x"]].to_numpy(np.int64)
    np.testing.assert_array_equal(index, np.asarray(expect) + offset)  # the table: indices
    np.testing.assert_array_equal(table["post_id"].to_numpy(), np.uint64([7, 9, 7]))
    # the table's nm: each voxel's centre, the frame of voxgate.mesh / skeletonize
    centre_nm = (index + 0.5) * np.asarray(VOXEL)
    np.testing.assert_array_equal(table[["z_nm", "y_nm", "x_nm"]].to_numpy(), centre_nm)

    # the stored bytes, read by Neuroglancer's own reader: x, y, z = index + 0.5
    reader = AnnotationReader(f"file://{tmp_path}/synapses/")
    for row, idx in zip(table.itertuples(), index, strict=True):
        got = np.asarray(reader.by_id[int(row.id)].point, np.float64)
        np.testing.assert_array_equal(got, idx[::-1] + 0.5)
    scales = [d[0] for d in json.loads((tmp_path / "synapses/info").read_text())[
        "dimensions"].values()]
    np.testing.assert_allclose(  # layer coordinates times the layer's scales: x_nm, y_nm, z_nm
        (index[:, ::-1] + 0.5) * np.asarray(scales) * 1e9,
        table[["x_nm", "y_nm", "z_nm"]].to_numpy())
    ng_cells = sorted(int(a.id) for a in reader.get_within_spatial_bounds())
    assert ng_cells == [1, 2, 3]

    # voxgate's reader gives the centres back; their floor is the table's voxel
    back = read_annotations(out).sort_values("id").reset_index(drop=True)
    np.testing.assert_array_equal(back[["z", "y", "x"]].to_numpy(np.float64), index + 0.5)
    np.testing.assert_array_equal(np.floor(back[["z", "y", "x"]].to_numpy()).astype(np.int64),
                                  index)
    # a box of voxels finds the synapses whose voxel it holds, and no others
    for idx, sid in zip(index, table["id"], strict=True):
        one = voxgate.Box(tuple(int(v) for v in idx), tuple(int(v) + 1 for v in idx))
        assert read_annotations(out, box=one)["id"].tolist() == [sid]
        nxt = idx + np.array([0, 0, 1])  # the next voxel along x
        beside = voxgate.Box(tuple(int(v) for v in nxt), tuple(int(v) + 1 for v in nxt))
        assert read_annotations(out, box=beside).empty


# -- (2) removing from a shard that does not exist ------------------------------------------------
def test_removing_from_a_missing_shard_writes_nothing(tmp_path: Path) -> None:
    """Before: remove() merged "nothing" into the missing shard and wrote an empty shard."""
    spec = ShardingSpec(0, "murmurhash3_x86_128", 1, 2, "gzip", "raw")
    store = ShardedStore(str(tmp_path), spec)
    store.remove([5, 6, 2**40 + 1])
    assert os.listdir(tmp_path) == []

    # a shard that exists but holds none of the ids is left as it is, not rewritten
    shards, _ = spec.locate(np.arange(1, 200, dtype=np.uint64))
    keys = [k for k, s in zip(range(1, 200), shards.tolist(), strict=True) if s == 0][:3]
    store.update({k: (b"", f"value {k}".encode()) for k in keys})
    name = spec.shard_name(0)
    before = (tmp_path / name).read_bytes()
    inode = os.stat(tmp_path / name).st_ino
    absent = next(k for k, s in zip(range(1, 200), shards.tolist(), strict=True)
                  if s == 0 and k not in keys)
    store.remove([absent])
    assert (tmp_path / name).read_bytes() == before
    assert os.stat(tmp_path / name).st_ino == inode  # (written ones are renamed into place)
    assert sorted(os.listdir(tmp_path)) == [name]

    # a present id is still removed, the others kept
    store.remove([keys[0], absent])
    left = decode_shard(spec, (tmp_path / name).read_bytes(), name)
    assert sorted(left) == sorted(keys[1:])
    assert store.keys() == sorted(keys[1:])


def _tetra(seg: int, shift: float, size: float = 80.0) -> Mesh:
    v = np.array([[0, 0, 0], [size, 0, 0], [0, size, 0], [0, 0, size]], np.float32) + shift
    f = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]], np.uint32)
    return Mesh(v, f, seg)


def test_deleting_meshes_of_ids_without_one_writes_no_shard(tmp_path: Path) -> None:
    """The public path: proofreading removes the meshes of ids an edit made vanish; one
    whose shard held nothing got an empty shard file."""
    url = f"precomputed://file://{tmp_path}/seg"
    voxgate.create(url, shape=(8, 16, 16), chunks=(8, 16, 16), dtype="uint64",
                   voxel_size=VOXEL, kind="segmentation")
    write_meshes(url, {3: _tetra(3, 8.0)}, format="multires", sharded=True)
    mesh_dir = tmp_path / "seg/mesh"
    spec = ShardingSpec.from_json(json.loads((mesh_dir / "info").read_text())["sharding"], "x")
    files = sorted(os.listdir(mesh_dir))
    # the store's spec for one mesh has one shard: build ids of other shards with a spec of
    # more shards over the same directory
    wider = ShardingSpec(spec.preshift_bits, spec.hash, spec.minishard_bits, 3,
                         spec.minishard_index_encoding, spec.data_encoding)
    ShardedStore(str(mesh_dir), wider).remove([11, 12, 13, 14, 15])
    delete_meshes(url, [4, 5, 6])   # no meshes: nothing to remove (one shard: it holds 3)
    assert sorted(os.listdir(mesh_dir)) == files
    assert sorted(read_meshes(url)) == [3]


# -- (3) rewriting a legacy mesh ------------------------------------------------------------------
def test_rewriting_a_legacy_mesh_removes_the_fragment_no_manifest_names(tmp_path: Path) -> None:
    """Before: the first mesh's fragment ``3:0:<its box>`` stayed beside the second's."""
    from cloudvolume import CloudVolume

    url = f"precomputed://file://{tmp_path}/seg"
    voxgate.create(url, shape=(16, 64, 64), chunks=(8, 32, 32), dtype="uint64",
                   voxel_size=VOXEL, kind="segmentation")
    mesh_dir = tmp_path / "seg/mesh"
    write_meshes(url, {3: _tetra(3, 8.0), 4: _tetra(4, 16.0)})
    first = set(os.listdir(mesh_dir))
    # a fragment another writer named outside the <id>: convention: not ours to remove
    (mesh_dir / "shared-fragment").write_bytes(_tetra(3, 8.0).to_precomputed())
    (mesh_dir / "3:0").write_text(json.dumps(
        {"fragments": [*json.loads((mesh_dir / "3:0").read_text())["fragments"],
                       "shared-fragment"]}))

    second = _tetra(3, 160.0, size=120.0)     # elsewhere: its fragment gets another name
    write_meshes(url, {3: second})
    names = set(os.listdir(mesh_dir))
    manifests = {n for n in names if n.endswith(":0")}
    named = {f for m in manifests for key in ("fragments", "voxgate_superseded")
             for f in json.loads((mesh_dir / m).read_text()).get(key, [])}
    assert named == {n for n in names if n not in manifests and n != "info"} - {
        "shared-fragment"}, "a fragment file is named by no manifest"
    assert "shared-fragment" in names
    old = {n for n in first if n.startswith("3:0:")}
    assert old and old <= names   # kept for readers of the old manifest until the next rewrite
    write_meshes(url, {3: second})
    names = set(os.listdir(mesh_dir))
    assert not old & names
    assert {n for n in first if n.startswith("4:0")} <= names  # the other id untouched

    cv = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False)
    got = cv.mesh.get([3], fuse=False)[3]
    np.testing.assert_array_equal(got.vertices, second.vertices)
    np.testing.assert_array_equal(got.faces, second.faces)
    assert np.array_equal(read_meshes(url)[3].vertices, second.vertices)

    # the same mesh again: a new name (names never come back); the one before is kept for
    # one rewrite, no more
    write_meshes(url, {3: second})
    assert len({n for n in os.listdir(mesh_dir) if n.startswith("3:0:")}) == 2


# -- (4) undo of a remeshed merge on DVID ---------------------------------------------------------
SHAPE = (24, 40, 40)


def _labels() -> np.ndarray:
    a = np.zeros(SHAPE, dtype=np.uint64)
    a[:, 38:40, :] = 5
    a[1:7, 1:15, 1:15] = 10
    a[12:20, 12:26, 26:38] = 20
    a[3:9, 27:35, 2:9] = 30
    return a


@pytest.fixture(scope="module")
def dvid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DVIDServerProcess]:
    server = start_server(log=tmp_path_factory.mktemp("dvid") / "server.log")
    yield server
    server.stop()


def _triangles(verts: np.ndarray, faces: np.ndarray) -> list[tuple[float, ...]]:
    """A mesh as its sorted triangles (each its corners sorted): the same surface whatever
    the order of vertices and faces."""
    corners = np.asarray(verts, np.float64)[np.asarray(faces, np.int64)]
    tris = [tuple(np.round(np.asarray(sorted(map(tuple, t))), 3).ravel().tolist())
            for t in corners]
    return sorted(tris)


def test_undo_of_a_remeshed_dvid_merge_brings_the_meshes_back(dvid: DVIDServerProcess
                                                              ) -> None:
    from voxgate.remotes.dvid import DVIDRepo

    repo = DVIDRepo.create(dvid.url, alias="followups-undo-remesh")
    url = repo.url("seg")
    v = voxgate.create(url, shape=SHAPE, chunks=(16, 16, 16), dtype="uint64",
                       voxel_size=(8, 8, 8), kind="segmentation")
    v[:] = _labels()
    vol = voxgate.open(url, mode="r+")
    remote = vol.remote
    reference = voxgate.mesh(_labels(), voxel_size=(8, 8, 8))
    for i in (10, 20, 30):
        remote.put_mesh(i, reference[i])  # type: ignore[attr-defined]
    kept = remote.get_mesh(30)  # type: ignore[attr-defined]

    voxgate.merge(vol, [10, 20], remesh=True)
    assert not remote.has_mesh(20)  # type: ignore[attr-defined]
    merged_labels = np.where(_labels() == 20, np.uint64(10), _labels())
    merged = voxgate.mesh(merged_labels, voxel_size=(8, 8, 8))[10]
    assert _triangles(*remote.get_mesh_arrays(10)) == _triangles(  # type: ignore[attr-defined]
        merged.vertices, merged.faces)

    voxgate.undo(vol)
    assert vol.read().tobytes() == _labels().tobytes()
    for i in (10, 20):  # both back, each its own surface again
        assert remote.has_mesh(i), i  # type: ignore[attr-defined]
        got = remote.get_mesh_arrays(i)  # type: ignore[attr-defined]
        assert _triangles(*got) == _triangles(reference[i].vertices, reference[i].faces), i
    assert remote.get_mesh(30) == kept  # type: ignore[attr-defined]
    assert remote.mesh_ids() == [10, 20, 30]  # type: ignore[attr-defined]
