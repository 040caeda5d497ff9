"""Info files of a precomputed layer read, changed and written back by two writers at once.

- ``add_scales`` (``downsample``) read the layer's info, appended its scales and wrote it back
  unconditionally: a ``mesh`` key another writer set in between (``update_info`` of
  write_meshes) was dropped, and so was a scale another downsample appended.  Now it goes
  through ``Directory.update`` (the info's lock on local disks, a conditional write on object
  storage) and appends again to the fresh info; a scale another writer added at an index
  planned here is taken as added when it is the same scale and refused when it is not.
- ``write_skeletons`` and ``write_meshes`` creating a new sharded directory each picked a
  sharding spec for their own item count and wrote the directory's info unconditionally: the
  later info won, and the shard the other writer had written under its own spec could not be
  decoded under it (the later writer's own merge into it failed with CorruptChunkError, and
  voxgate and CloudVolume could no longer read the other writer's ids).  Now the info is
  created only if absent, and a writer that finds it created writes its shards with the
  stored spec.
- ``create`` checked that the layer had no info and then wrote one: two creators of one layer
  (dask workers creating their output) both wrote.  Now the info is created only if absent.

The races are forced: the first writer is held between its read of the info and its write
(at the scale planning, the sharding spec pick, create's check for an info) while the other runs
(to its end, or, on a local disk, until it waits for the info's lock).  No sleeps.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError, RemoteExistsError
from voxgate.formats import precomputed_info
from voxgate.formats.mesh import Mesh, read_meshes, write_meshes
from voxgate.formats.skeleton import Skeleton, read_skeletons, write_skeletons
from voxgate.meta import next_scales
from voxgate.remotes.precomputed import remote as precomputed_remote
from voxgate.storage import directory as directory_module
from voxgate.storage.sharding import ShardingSpec


def _seg(url: str) -> None:
    voxgate.create(url, shape=(16, 32, 32), chunks=(8, 16, 16), dtype="uint64",
                   voxel_size=(40, 8, 8), kind="segmentation")


def _first_call(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str,
                other: Callable[[], None], *, static: bool = False) -> list[int]:
    """Run ``other`` at the first call of ``owner.name`` (before that call goes on); returns
    the list of calls made."""
    real = getattr(owner, name)
    calls: list[int] = []

    def hooked(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(calls))
        if len(calls) == 1:
            other()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, staticmethod(hooked) if static else hooked)
    return calls


def _in_thread_until_locked(monkeypatch: pytest.MonkeyPatch, module: Any,
                            other: Callable[[], None]) -> tuple[Callable[[], None],
                                                                Callable[[], None]]:
    """(start, finish) for running ``other`` on another thread from within this writer's
    read-modify-write on a local disk: ``start`` returns once the other writer waits for a
    lock taken through ``module.file_lock`` (or, when it takes none, once it is done);
    ``finish`` joins it and re-raises what it raised."""
    waiting = threading.Event()
    errors: list[BaseException] = []
    real_lock = module.file_lock

    def lock(path: str, **kwargs: Any) -> Any:
        if threading.current_thread() is thread:
            waiting.set()  # (the other writer, about to wait for the lock)
        return real_lock(path, **kwargs)

    def run() -> None:
        try:
            other()
        except BaseException as exc:  # (re-raised by finish)
            errors.append(exc)
        finally:
            waiting.set()

    thread = threading.Thread(target=run)
    monkeypatch.setattr(module, "file_lock", lock)

    def start() -> None:
        thread.start()
        assert waiting.wait(timeout=120)

    def finish() -> None:
        thread.join(timeout=120)
        assert not thread.is_alive()
        if errors:
            raise errors[0]

    return start, finish


# -- add_scales --------------------------------------------------------------------------------
def test_add_scales_racing_update_info_on_s3_keeps_the_mesh_key(
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_meshes names its directory in the info (update_info) between add_scales' read
    and write of it: both the mesh key and the new scale are kept (the key was dropped)."""
    url = f"precomputed://s3://{s3_bucket}/seg"
    _seg(url)
    remote = voxgate.open(url, mode="r+").remote
    location = f"s3://{s3_bucket}/seg"
    _first_call(monkeypatch, precomputed_remote, "_scale_info",
                lambda: precomputed_info.update_layer_info(location, {"mesh": "mesh"}))
    remote.add_scales(next_scales(remote.meta, 1))
    stored = precomputed_info.read_layer_info(location, "r")[1]
    assert stored.get("mesh") == "mesh"
    assert len(stored["scales"]) == 2
    assert remote.meta.extra.get("mesh") == "mesh" and len(remote.meta.scales) == 2


def test_add_scales_racing_update_info_on_a_local_disk_keeps_the_mesh_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same on a local disk: the update_info waits for the info's lock that add_scales
    holds (there was none) and then sets its key in the info with the new scale."""
    url = f"precomputed://{tmp_path}/seg"
    _seg(url)
    remote = voxgate.open(url, mode="r+").remote
    location = str(tmp_path / "seg")
    start, finish = _in_thread_until_locked(
        monkeypatch, precomputed_info,
        lambda: precomputed_info.update_layer_info(location, {"mesh": "mesh"}))
    _first_call(monkeypatch, precomputed_remote, "_scale_info", start)
    remote.add_scales(next_scales(remote.meta, 1))
    finish()
    stored = json.loads((tmp_path / "seg" / "info").read_text())
    assert stored.get("mesh") == "mesh"
    assert len(stored["scales"]) == 2


def test_two_downsamples_planning_one_pyramid_on_s3_keep_every_scale(
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers opened the one-scale layer; B adds scales 1 and 2 between A's read and
    write of the info, A adds scale 1 (the same scale): A takes it as added and B's scale 2
    stays (A wrote back its read info plus scale 1: scale 2 was gone while B wrote into
    it)."""
    url = f"precomputed://s3://{s3_bucket}/seg"
    _seg(url)
    a = voxgate.open(url, mode="r+").remote
    b = voxgate.open(url, mode="r+").remote
    _first_call(monkeypatch, precomputed_remote, "_scale_info",
                lambda: b.add_scales(next_scales(b.meta, 2)))
    a.add_scales(next_scales(a.meta, 1))
    reopened = voxgate.open(url).remote
    assert len(reopened.meta.scales) == 3
    assert reopened.meta.scales == b.meta.scales == a.meta.scales
    keys = [s["key"] for s in precomputed_info.read_layer_info(f"s3://{s3_bucket}/seg",
                                                               "r")[1]["scales"]]
    assert len(set(keys)) == 3


def test_another_scale_at_the_index_planned_is_refused_on_s3(
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """B adds a scale 1 halved in x and y only between A's read and write, A adds a scale 1
    halved in z too: A is refused, naming both, and B's scale stays (A's replaced it, and
    B's remote went on writing a scale the info no longer had)."""
    url = f"precomputed://s3://{s3_bucket}/seg"
    _seg(url)
    a = voxgate.open(url, mode="r+").remote
    b = voxgate.open(url, mode="r+").remote
    theirs = next_scales(b.meta, 1, [(1, 2, 2)])
    _first_call(monkeypatch, precomputed_remote, "_scale_info", lambda: b.add_scales(theirs))
    with pytest.raises(InvalidRequestError, match="another writer added scale 1"):
        a.add_scales(next_scales(a.meta, 1, [(2, 2, 2)]))
    stored = voxgate.open(url).remote.meta.scales[1]
    assert (stored.shape, stored.voxel_size) == (theirs[0].shape, theirs[0].voxel_size)
    assert len(a.meta.scales) == 1  # (A's view is unchanged: it reopens to see the scale)


@pytest.mark.parametrize("exist_ok", [False, True])
def test_two_creators_of_one_layer_on_s3(s3_bucket: str, monkeypatch: pytest.MonkeyPatch,
                                         exist_ok: bool) -> None:
    """B creates the layer (and names a mesh directory in its info) between A's check that
    the layer has no info and A's write of one: A no longer replaces B's info; it reports
    that the layer exists, or with exist_ok=True opens B's layer."""
    url = f"precomputed://s3://{s3_bucket}/seg"
    location = f"s3://{s3_bucket}/seg"

    def other() -> None:
        _seg(url)
        precomputed_info.update_layer_info(location, {"mesh": "mesh"})

    real_exists = precomputed_remote.kvstore_exists
    checks: list[bool] = []

    def exists(where: str, key: str) -> bool:
        found = bool(real_exists(where, key))
        checks.append(found)
        if len(checks) == 1:  # (A's check: absent; B's own check runs in other)
            other()
        return found

    monkeypatch.setattr(precomputed_remote, "kvstore_exists", exists)
    if exist_ok:
        vol = voxgate.create(url, shape=(16, 32, 32), chunks=(8, 16, 16), dtype="uint64",
                             voxel_size=(40, 8, 8), kind="segmentation", exist_ok=True)
        assert vol.remote.meta.extra.get("mesh") == "mesh"
    else:
        with pytest.raises(RemoteExistsError):
            _seg(url)
    assert checks[0] is False
    assert precomputed_info.read_layer_info(location, "r")[1].get("mesh") == "mesh"


# -- new sharded skeleton and mesh directories -------------------------------------------------
def _skeleton(seg: int) -> Skeleton:
    v = np.array([[8 * (seg % 30), 16, 40], [8 * (seg % 30) + 4, 60, 200]], np.float32)
    return Skeleton(v, np.array([[0, 1]], np.uint32), np.ones(2, np.float32),
                    np.zeros(2, np.uint8))


def _mesh(seg: int) -> Mesh:
    v = np.array([[0, 0, 0], [64, 0, 0], [0, 64, 0], [0, 0, 64]], np.float64) + seg % 30
    return Mesh(v, [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])


#: writer A's ids (1: a spec of one minishard) and writer B's (100: two minishards)
A_IDS = [7]
B_IDS = list(range(1000, 1100))


def test_the_two_writers_pick_different_specs() -> None:
    """The premise: the two writers' counts give specs that lay out shards differently."""
    assert ShardingSpec.for_count(len(A_IDS)) != ShardingSpec.for_count(len(B_IDS))


def test_two_writers_creating_one_sharded_skeleton_directory_on_s3(
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch, cloudvolume: Any) -> None:
    """Writer A finds no directory info and picks its spec; B creates the directory with
    its own spec and writes 100 skeletons; A writes one.  Every id reads back by voxgate and
    by CloudVolume (A's info replaced B's, and A's merge into B's shard under A's spec failed:
    CorruptChunkError, "Error decoding existing minishard index")."""
    url = f"precomputed://s3://{s3_bucket}/seg"
    _seg(url)
    calls = _first_call(monkeypatch, ShardingSpec, "for_count", lambda: write_skeletons(
        url, {i: _skeleton(i) for i in B_IDS}, sharded=True), static=True)
    write_skeletons(url, {i: _skeleton(i) for i in A_IDS}, sharded=True)
    assert len(calls) == 2
    got = read_skeletons(url)
    assert sorted(got) == sorted(A_IDS + B_IDS)
    for i in (A_IDS[0], B_IDS[0], B_IDS[-1]):
        np.testing.assert_array_equal(got[i].vertices, _skeleton(i).vertices)
    cv = cloudvolume("seg")
    for i in (A_IDS[0], B_IDS[0], B_IDS[-1]):
        np.testing.assert_array_equal(cv.skeleton.get(i).vertices, _skeleton(i).vertices)


def test_two_writers_creating_one_sharded_skeleton_directory_on_a_local_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same on a local disk: B waits for the directory info's lock A holds while it
    creates the info (there was none), then adds its skeletons under A's spec."""
    from cloudvolume import CloudVolume

    url = f"precomputed://{tmp_path}/seg"
    _seg(url)
    start, finish = _in_thread_until_locked(monkeypatch, directory_module, lambda: (
        write_skeletons(url, {i: _skeleton(i) for i in B_IDS}, sharded=True)))
    _first_call(monkeypatch, ShardingSpec, "for_count", start, static=True)
    write_skeletons(url, {i: _skeleton(i) for i in A_IDS}, sharded=True)
    finish()
    got = read_skeletons(url)
    assert sorted(got) == sorted(A_IDS + B_IDS)
    cv = CloudVolume(f"file://{tmp_path}/seg", progress=False)
    for i in (A_IDS[0], B_IDS[0], B_IDS[-1]):
        np.testing.assert_array_equal(cv.skeleton.get(i).vertices, _skeleton(i).vertices)


def test_two_writers_creating_one_sharded_mesh_directory_on_s3(
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch, cloudvolume: Any) -> None:
    """The same for sharded multi-resolution meshes: every id reads back by voxgate and by
    CloudVolume (A's info replaced B's, and B's shard was "not gzip data" under A's spec)."""
    url = f"precomputed://s3://{s3_bucket}/seg"
    _seg(url)
    calls = _first_call(monkeypatch, ShardingSpec, "for_count", lambda: write_meshes(
        url, {i: _mesh(i) for i in B_IDS}, format="multires", sharded=True), static=True)
    write_meshes(url, {i: _mesh(i) for i in A_IDS}, format="multires", sharded=True)
    assert len(calls) == 2
    got = read_meshes(url)
    assert sorted(got) == sorted(A_IDS + B_IDS)
    cv = cloudvolume("seg")
    for i in (A_IDS[0], B_IDS[0], B_IDS[-1]):
        peer = cv.mesh.get(i)
        peer = peer[i] if isinstance(peer, dict) else peer
        for vertices in (got[i].vertices, peer.vertices):  # (Draco fragments repeat some)
            np.testing.assert_allclose(np.unique(np.round(vertices), axis=0),
                                       np.unique(_mesh(i).vertices, axis=0), atol=0.5)


def test_a_writer_finding_the_other_layout_is_refused_on_s3(
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """B creates an unsharded skeleton directory between sharded A's read of the (absent)
    info and A's write: A is refused as it is when the directory was there before (A's
    sharded info replaced B's, and B's skeleton files were no longer read)."""
    url = f"precomputed://s3://{s3_bucket}/seg"
    _seg(url)
    _first_call(monkeypatch, ShardingSpec, "for_count", lambda: write_skeletons(
        url, {i: _skeleton(i) for i in B_IDS[:3]}), static=True)
    with pytest.raises(InvalidRequestError, match="holds unsharded skeletons"):
        write_skeletons(url, {i: _skeleton(i) for i in A_IDS}, sharded=True)
    assert sorted(read_skeletons(url)) == B_IDS[:3]
