"""Meshes rewritten in mesh directories Igneous made: concurrent writers of one id, and the
cost of keeping CloudVolume's spatial index up to date.

An unsharded multi-resolution mesh is two files, ``<id>`` (fragments) and ``<id>.index``
(the manifest that gives their sizes), plus, in a directory Igneous made, the legacy
``<id>:0`` files its forge step left.  ``write_meshes`` wrote the two files and deleted the
leftovers with no lock: a writer paused between its fragment file and its manifest ended with
the manifest of its mesh over the fragments of another writer of the id (a mesh that failed
to decode, or the wrong geometry), and a ``delete_meshes`` (a remesh of a merge deleting a
merged-away id) in that pause left a manifest whose fragment file was gone.  Now the files of
one id are written (and deleted) under the lock of its manifest.

The spatial index update read every ``.spatial`` file of the grid for ids that had a mesh
before (64 files here, one per forge task); now it reads the files where the replaced mesh
was (its manifest's octree, the boxes in the leftover fragment names) and those of the new
one, and every file only when that is unknown.

The interleavings are forced: the first writer is held right after it stored the id's
fragment file until the other call is done (or, once the lock is held, for a second).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cloudvolume import CloudVolume

import voxgate
from voxgate.formats.mesh import Mesh, read_meshes, write_meshes
from voxgate.formats.mesh.precomputed import delete_meshes
from voxgate.storage import Directory

from .test_mesh_transformed_dir_audit import (
    PEER,
    RES,
    _cv_mesh,
    _extent,
    _labels,
    _layer,
    _nm_box,
    needs_igneous,
)

pytestmark = needs_igneous

#: Igneous' forge tasks (and so its .spatial files): 16 x 16 x 8 voxels, 4 x 4 x 4 of them
TASK = (16, 16, 8)
FILES = 64
_QUEUE = """
    import sys
    import igneous.task_creation as tc
    from taskqueue import LocalTaskQueue
    tq = LocalTaskQueue(parallel=1, progress=False)
"""
#: Igneous' legacy meshes (forge, then a manifest per id) and spatial index
FORGE = _QUEUE + """
    tq.insert_all(tc.create_meshing_tasks(sys.argv[1], mip=0, shape=(16, 16, 8),
                                          mesh_dir="mesh", object_ids=[1, 2, 3]))
    tq.insert_all(tc.create_mesh_manifest_tasks(sys.argv[1], mesh_dir="mesh"))
"""
#: then its unsharded multi-resolution meshes (the legacy files stay)
MULTIRES = _QUEUE + """
    tq.insert_all(tc.create_unsharded_multires_mesh_tasks(sys.argv[1], num_lod=1,
                                                          mesh_dir="mesh"))
"""


def _igneous(code: str, path: Path) -> None:
    assert PEER, "CI must run these: scripts/test.sh sets VOXGATE_IGNEOUS_PYTHON"
    run = subprocess.run([PEER, "-c", textwrap.dedent(code), f"file://{path}"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[int, Mesh]]:
    """Layers whose segments 1, 2, 3 Igneous meshed in 64 tasks: legacy (forge, manifests),
    and that made unsharded multires; and the meshes of segments 4 and 5 (the shapes
    written over them)."""
    legacy = tmp_path_factory.mktemp("igneous") / "legacy"
    _layer(legacy)
    _igneous(FORGE, legacy)
    multires = legacy.parent / "multires"
    shutil.copytree(legacy, multires)
    _igneous(MULTIRES, multires)
    vol = voxgate.open(f"precomputed://file://{legacy}")
    shapes = dict(voxgate.mesh(vol, ids=[4, 5], prefer="local"))
    return legacy, multires, shapes


def _copy(base: Path, meshes: dict[int, Mesh], tmp_path: Path
          ) -> tuple[Path, str, dict[int, Mesh]]:
    path = tmp_path / "seg"
    shutil.copytree(base, path)
    return path, f"file://{path}", meshes


@pytest.fixture()
def layer(bases: tuple[Path, Path, dict[int, Mesh]], tmp_path: Path
          ) -> tuple[Path, str, dict[int, Mesh]]:
    """A copy of Igneous' unsharded multi-resolution layer."""
    return _copy(bases[1], bases[2], tmp_path)


@pytest.fixture()
def legacy_layer(bases: tuple[Path, Path, dict[int, Mesh]], tmp_path: Path
                 ) -> tuple[Path, str, dict[int, Mesh]]:
    """A copy of Igneous' legacy layer."""
    return _copy(bases[0], bases[2], tmp_path)


def _as(mesh: Mesh, i: int) -> Mesh:
    return Mesh(mesh.vertices, mesh.faces, i)


def _near(extent: np.ndarray, box: np.ndarray) -> bool:
    return bool((np.abs(extent - box) <= RES).all())


def _files(path: Path, i: int) -> list[str]:
    """The mesh files of segment i (its multires pair and Igneous' legacy leftovers)."""
    return sorted(p.name for p in (path / "mesh").iterdir()
                  if p.name in (str(i), f"{i}.index") or p.name.startswith(f"{i}:0"))


@pytest.fixture()
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """(stored, done): the first store of segment 2's fragment file ``2`` sets ``stored``
    and then waits for ``done`` (at most a second: a writer that holds the id's lock keeps
    the other call waiting)."""
    stored, done = threading.Event(), threading.Event()
    original = Directory.put_many
    first = threading.Lock()

    def put_many(self: Directory, items: Any) -> None:
        todo = list(items)
        original(self, todo)
        if any(name == "2" for name, _ in todo) and first.acquire(blocking=False):
            stored.set()
            done.wait(1.0)

    monkeypatch.setattr(Directory, "put_many", put_many)
    yield stored, done


def _race(first: Callable[[], None], second: Callable[[], None],
          held: tuple[threading.Event, threading.Event]) -> None:
    stored, done = held
    errors: list[BaseException] = []

    def run(call: Callable[[], None], after: threading.Event | None) -> None:
        try:
            if after is not None:
                assert after.wait(30)
            call()
        except BaseException as exc:  # (re-raised below, in the test's thread)
            errors.append(exc)
        finally:
            if after is not None:
                done.set()

    threads = [threading.Thread(target=run, args=(first, None)),
               threading.Thread(target=run, args=(second, stored))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_two_rewrites_of_one_id_end_with_one_writer_s_mesh(
        layer: tuple[Path, str, dict[int, Mesh]],
        held: tuple[threading.Event, threading.Event]) -> None:
    """Two edits remesh segment 2 at once (one gives it segment 4's shape, the other 5's):
    the end state is one writer's mesh, manifest and fragments alike, as voxgate and
    CloudVolume read it, with none of Igneous' legacy files of the id left."""
    path, url, shapes = layer
    labels = _labels()
    assert [n for n in _files(path, 2) if ":" in n]  # Igneous' leftovers are there
    _race(lambda: write_meshes(url, {2: _as(shapes[4], 2)}, format="multires"),
          lambda: write_meshes(url, {2: _as(shapes[5], 2)}, format="multires"), held)
    ours = _extent(read_meshes(url, [2], strict=True)[2].vertices)
    theirs = _extent(_cv_mesh(url, 2).vertices)
    assert any(_near(ours, _nm_box(labels, i)) for i in (4, 5)), ours.tolist()
    assert np.allclose(ours, theirs, atol=1e-3)
    assert _files(path, 2) == ["2", "2.index"]


def _to_s3(path: Path, bucket: str, server: str) -> str:
    """The layer at ``path`` copied to S3 (files gzipped on disk stored as they are, without
    a Content-Encoding, as a copy of Igneous' output can be); its URL."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=server, region_name="us-east-1")
    for f in path.rglob("*"):
        if f.is_file():
            key = str(f.relative_to(path)).removesuffix(".gz")
            s3.put_object(Bucket=bucket, Key=f"seg/{key}", Body=f.read_bytes())
    return f"s3://{bucket}/seg"


def _s3_files(bucket: str, server: str, i: int) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=server, region_name="us-east-1")
    keys = [o["Key"].rsplit("/", 1)[1]
            for o in s3.list_objects_v2(Bucket=bucket, Prefix="seg/mesh/").get("Contents", [])]
    return sorted(k for k in keys if k in (str(i), f"{i}.index") or k.startswith(f"{i}:0"))


@pytest.mark.parametrize("second", ["rewrite", "delete"])
def test_the_races_on_object_storage(layer: tuple[Path, str, dict[int, Mesh]],
                                     held: tuple[threading.Event, threading.Event],
                                     s3_bucket: str, s3_server: str, second: str) -> None:
    """On S3 (no lock) the manifest is written conditionally on the one read before the
    fragment file: the writer held between the two finds the manifest changed, writes its
    fragment file again and then its manifest, so the end state is one writer's whole mesh
    (or none, the delete last), never a manifest over the other writer's fragments."""
    path, _, shapes = layer
    url = _to_s3(path, s3_bucket, s3_server)
    labels = _labels()
    other = (lambda: write_meshes(url, {2: _as(shapes[5], 2)}, format="multires")) \
        if second == "rewrite" else (lambda: delete_meshes(url, [2]))
    _race(lambda: write_meshes(url, {2: _as(shapes[4], 2)}, format="multires"), other, held)
    got = read_meshes(url, [2])
    files = _s3_files(s3_bucket, s3_server, 2)
    if got:
        ext = _extent(got[2].vertices)
        assert any(_near(ext, _nm_box(labels, i)) for i in (4, 5)), ext.tolist()
        assert files == ["2", "2.index"]
    else:
        assert "2.index" not in files
    assert not [n for n in files if ":" in n]


def test_a_delete_racing_a_rewrite_never_leaves_a_manifest_without_fragments(
        layer: tuple[Path, str, dict[int, Mesh]],
        held: tuple[threading.Event, threading.Event]) -> None:
    """A remesh of segment 2 and a delete of segment 2 (a merge made it vanish) at once:
    the delete waits for the rewrite and removes the id whole (before, it went between the
    rewrite's two files and left ``2.index`` without ``2``: every read of 2 failed)."""
    path, url, shapes = layer
    _race(lambda: write_meshes(url, {2: _as(shapes[4], 2)}, format="multires"),
          lambda: delete_meshes(url, [2]), held)
    assert read_meshes(url, [2]) == {}
    assert _files(path, 2) == []
    assert sorted(read_meshes(url, [1, 2, 3])) == [1, 3]


@pytest.fixture()
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The .spatial files voxgate reads (each one read, changed and written back)."""
    got: list[str] = []
    original = Directory.get

    def get(self: Directory, name: str, **kwargs: Any) -> bytes | None:
        if name.endswith(".spatial"):
            got.append(name)
        return original(self, name, **kwargs)

    monkeypatch.setattr(Directory, "get", get)
    return got


def _index(url: str) -> tuple[Any, Any]:
    cv = CloudVolume(url)
    return cv, cv.mesh.spatial_index


def _listed(url: str, lo: np.ndarray, hi: np.ndarray) -> list[int]:
    """The ids CloudVolume's mesh spatial index lists in the nm box lo..hi."""
    from cloudvolume.lib import Bbox

    _, index = _index(url)
    return sorted(int(i) for i in index.query(Bbox(lo, hi)))


def _box_of(url: str, i: int) -> np.ndarray:
    _, index = _index(url)
    box = index.get_bbox(i)
    return np.array([box.minpt, box.maxpt], dtype=np.float64)


def _task_files(*ids: int) -> set[str]:
    """The .spatial files of the forge tasks where the voxels of ``ids`` are (a task
    box holds x, y, z voxels [16 i, 16 (i + 1)), ...; its file is named by it in nm)."""
    labels = _labels()
    out = set()
    for i in ids:
        z, y, x = np.nonzero(labels == i)
        cells = np.unique(np.stack([x, y, z], axis=1) // TASK, axis=0)
        for cell in cells:
            lo = cell * TASK * RES
            out.add("_".join(f"{float(a)}-{float(b)}"
                             for a, b in zip(lo, lo + TASK * RES, strict=True)) + ".spatial")
    return out


def _whole(url: str) -> list[int]:
    cv, index = _index(url)
    return sorted(int(i) for i in index.query(cv.bounds * cv.resolution))


def test_a_rewrite_reads_only_the_index_files_of_the_old_and_new_boxes(
        layer: tuple[Path, str, dict[int, Mesh]], reads: list[str]) -> None:
    """Segment 1 (x 6-30, y 4-20, z 2-10 voxels: 2 x 2 x 2 of the 64 task boxes) gets
    segment 5's shape (x 2-12, y 50-60, z 0-4: 1 x 2 x 1 boxes), twice: the first rewrite
    knows the old box from the manifest and Igneous' fragment names, the second from
    voxgate's own manifest.  Each reads the files of those boxes (9, then 1), not all 64,
    and
    CloudVolume's index then lists 1 where it is now and nowhere it was."""
    path, url, shapes = layer
    labels = _labels()
    old = _nm_box(labels, 1)
    assert len(list((path / "mesh").glob("*.spatial*"))) == FILES
    assert 1 in _listed(url, old[0], old[1])
    for rewrite in range(2):
        reads.clear()
        write_meshes(url, {1: _as(shapes[5], 1)}, format="multires")
        # the files of 1's old and new boxes: 2 x 2 x 2 and 1 of the 64
        assert set(reads) == _task_files(1 if rewrite == 0 else 5, 5), (rewrite, reads)
        assert len(reads) == len(set(reads))
        new = _nm_box(labels, 5)
        assert _near(_box_of(url, 1), new), _box_of(url, 1).tolist()
        # where 1 was (the part of its old box that the new one does not meet): gone
        assert 1 not in _listed(url, np.array([100, 30, 80]), old[1])
        assert 1 in _listed(url, new[0], new[1])
        assert _whole(url) == [1, 2, 3]
        got = CloudVolume(url).mesh.get([1, 2, 3])
        assert sorted(int(i) for i in got) == [1, 2, 3]
        assert _near(_extent(_cv_mesh(url, 1).vertices), new)


def test_a_legacy_rewrite_reads_only_the_index_files_of_the_old_and_new_boxes(
        legacy_layer: tuple[Path, str, dict[int, Mesh]], reads: list[str]) -> None:
    """The same in Igneous' legacy directory: the old box is in the names of the fragments
    the replaced manifest lists (Igneous' task boxes, then voxgate's mesh boxes)."""
    path, url, shapes = legacy_layer
    info = json.loads((path / "mesh" / "info").read_text())
    assert info.get("@type", "neuroglancer_legacy_mesh") == "neuroglancer_legacy_mesh"
    assert "spatial_index" in info
    labels = _labels()
    for rewrite in range(2):
        reads.clear()
        write_meshes(url, {1: _as(shapes[5], 1)})
        assert set(reads) == _task_files(1 if rewrite == 0 else 5, 5), (rewrite, reads)
        new = _nm_box(labels, 5)
        assert _near(_box_of(url, 1), new), _box_of(url, 1).tolist()
        assert _whole(url) == [1, 2, 3]
        assert _near(_extent(_cv_mesh(url, 1).vertices), new)
    reads.clear()
    delete_meshes(url, [1])
    assert set(reads) == _task_files(5)
    assert _whole(url) == [2, 3]


def test_a_delete_reads_only_the_index_files_of_the_old_box(
        layer: tuple[Path, str, dict[int, Mesh]], reads: list[str]) -> None:
    """Deleting segment 1 reads the files of its old box (8 of 64), and the index lists it
    nowhere afterwards."""
    _, url, _ = layer
    delete_meshes(url, [1])
    assert set(reads) == _task_files(1), reads
    assert len(reads) == 8
    assert _whole(url) == [2, 3]
    assert sorted(int(i) for i in CloudVolume(url).mesh.get([2, 3])) == [2, 3]


def test_an_id_without_a_mesh_before_still_has_every_file_read(
        layer: tuple[Path, str, dict[int, Mesh]], reads: list[str]) -> None:
    """Guard: an id with no manifest (here one the index lists by a stale entry, as another
    tool can leave) gives no box, so every file is read and the stale entry goes."""
    path, url, shapes = layer
    far = next(p for p in (path / "mesh").glob("*.spatial*")
               if p.name.startswith("0.0-128.0_0.0-128.0_960.0-1280.0"))
    raw = far.read_bytes()
    import gzip

    doc = json.loads(gzip.decompress(raw) if far.suffix == ".gz" else raw)
    doc["4"] = [10, 10, 1000, 20, 20, 1100]
    far.write_bytes(gzip.compress(json.dumps(doc).encode()) if far.suffix == ".gz"
                    else json.dumps(doc).encode())
    assert 4 in _listed(url, np.array([10, 10, 1000]), np.array([20, 20, 1100]))
    write_meshes(url, {4: shapes[4]}, format="multires")
    assert len(set(reads)) == FILES
    assert _near(_box_of(url, 4), _nm_box(_labels(), 4))
    assert 4 not in _listed(url, np.array([10, 10, 1000]), np.array([20, 20, 1100]))
