"""Legacy (``<id>:0`` manifest + fragment files) mesh rewrites against their readers and
against each other.

``write_meshes(format="legacy")`` writes a segment's new fragment, then its manifest, then
deletes what the replaced manifest named; a changed mesh gets a new fragment name (its
bounding box is in the name).  Every reader fetches ``<id>:0`` first and then each fragment
it names: Neuroglancer (``PrecomputedMeshSource.download`` then ``downloadFragment``, both
``throwIfMissing``: the fragment chunk fails and the mesh is not drawn until the manifest is
fetched again), CloudVolume (``_get_manifests`` then ``_get_mesh_fragments``: a missing
fragment's content is None and ``Mesh.from_precomputed(None)`` raises), voxgate's
``read_meshes`` (RemoteNotFoundError for the whole call) and the relay (serves the files as
they are: 404).

(1) A reader that fetched the manifest just before a rewrite then asked for a fragment the
rewrite had already deleted.  (2) Two writers of one segment (two proofreading edits of one
id, an edit and its undo, a remesh and a write_meshes, delete_meshes and a write) deleted a
fragment the other's newer manifest names: the manifest pointed at a missing file for good.

Each interleaving is forced by a hook between two steps of a writer or a reader (no sleeps),
on a local disk and on S3 (moto) where it matters.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.errors import RemoteNotFoundError
from voxgate.formats.mesh import Mesh, precomputed, read_meshes, write_meshes
from voxgate.formats.mesh.precomputed import delete_meshes
from voxgate.storage import Directory

VOXEL = (40.0, 8.0, 8.0)
SEG = 5


def _tetra(shift: float, size: float = 80.0) -> Mesh:
    """A mesh of SEG; its box (so its fragment's name) moves with ``shift``."""
    v = np.array([[0, 0, 0], [size, 0, 0], [0, size, 0], [0, 0, size]], np.float32) + shift
    f = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]], np.uint32)
    return Mesh(v, f, SEG)


A, B, C = _tetra(8.0), _tetra(160.0, 120.0), _tetra(320.0, 40.0)


@pytest.fixture(params=["file", "s3"])
def layer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Directory]]:
    """A segmentation layer (local disk or S3) whose mesh directory holds A as SEG's mesh."""
    if request.param == "s3":
        location = f"s3://{request.getfixturevalue('s3_bucket')}/seg"
    else:
        location = f"file://{tmp_path}/seg"
    url = f"precomputed://{location}"
    voxgate.create(url, shape=(16, 64, 64), chunks=(8, 32, 32), dtype="uint64",
                   voxel_size=VOXEL, kind="segmentation")
    write_meshes(url, {SEG: A})
    yield url, Directory(f"{location}/mesh")


@pytest.fixture
def patch() -> Iterator[pytest.MonkeyPatch]:
    """The hooks of one test, undone early by ``patch.undo()`` (pytest's own monkeypatch
    also holds the S3 fixture's environment)."""
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _manifest(directory: Directory) -> dict[str, Any]:
    raw = directory.get(f"{SEG}:0")
    assert raw is not None
    out: dict[str, Any] = json.loads(raw)
    return out


def _fragment_files(directory: Directory) -> set[str]:
    return {n for n in directory.list() if n.startswith(f"{SEG}:0:")}


def _same(got: Mesh, want: Mesh) -> bool:
    return bool(np.array_equal(got.vertices, want.vertices)
                and np.array_equal(got.faces, want.faces))


def _assert_served(url: str, directory: Directory, want: Mesh) -> None:
    """Every fragment the manifest names exists, and the mesh read is ``want``."""
    named = _manifest(directory)["fragments"]
    missing = [n for n in named if directory.get(n) is None]
    assert not missing, f"the manifest names missing fragments {missing}"
    assert _same(read_meshes(url, [SEG])[SEG], want)


def _assert_tidy(directory: Directory) -> None:
    """Every fragment file of SEG is named by its manifest, as a fragment or as one kept
    for the readers of the manifest it replaced: none is left behind for good."""
    manifest = _manifest(directory)
    kept = set(manifest["fragments"]) | set(manifest.get("voxgate_superseded", []))
    assert _fragment_files(directory) <= kept, "a fragment file no manifest will delete"


class _Once:
    """Arms ``action`` for the first call of a patched step that ``when`` accepts."""

    def __init__(self, action: Callable[[], None]) -> None:
        self.action: Callable[[], None] | None = action
        self.fired = False

    def __call__(self) -> None:
        action, self.action = self.action, None
        if action is not None:
            self.fired = True
            action()


def _before_delete(patch: pytest.MonkeyPatch, hook: _Once, nth: int = 1) -> None:
    """Run ``hook`` at the ``nth`` call of Directory.delete_many on the mesh directory."""
    real = Directory.delete_many
    calls = [0]

    def delete_many(self: Directory, names: Any) -> None:
        names = list(names)
        if self.location.endswith("/mesh") and hook.action is not None:
            calls[0] += 1
            if calls[0] == nth:
                hook()
        real(self, names)

    patch.setattr(Directory, "delete_many", delete_many)


# -- (1) a reader between the manifest and the fragments ---------------------------------------
def _after_a_reader_read_manifests(patch: pytest.MonkeyPatch, writes: Callable[[], Any]
                                   ) -> _Once:
    """``writes()`` run once, right after a reader (``read_meshes``: the strict read) has read
    the manifests and before it reads their fragments."""
    real = precomputed._legacy_manifests
    hook = _Once(writes)

    def manifests(d: Directory, ids: list[int], *, strict: bool) -> dict[int, list[str]]:
        out = real(d, ids, strict=strict)
        if strict:
            hook()
        return out

    patch.setattr(precomputed, "_legacy_manifests", manifests)
    return hook


def test_read_meshes_between_the_manifest_and_its_fragments(
        layer: tuple[str, Directory], patch: pytest.MonkeyPatch) -> None:
    """Before: RemoteNotFoundError ('names fragment ..., which does not exist'): the rewrite
    deleted A's fragment right after writing B's manifest.  Now A's fragment stays until the
    next rewrite, and the reader gets the mesh of the manifest it read."""
    url, directory = layer
    hook = _after_a_reader_read_manifests(patch, lambda: write_meshes(url, {SEG: B}))
    got = read_meshes(url, [SEG])[SEG]
    assert hook.fired
    assert _same(got, A)
    patch.undo()
    _assert_served(url, directory, B)


def test_read_meshes_two_rewrites_behind(layer: tuple[str, Directory],
                                         patch: pytest.MonkeyPatch) -> None:
    """Two rewrites between the reader's manifest and its fragments: A's fragment is gone
    even with one rewrite of grace.  Before: RemoteNotFoundError.  Now the reader reads the
    manifest again when a fragment is missing and gets the newest mesh."""
    url, _ = layer
    hook = _after_a_reader_read_manifests(
        patch, lambda: (write_meshes(url, {SEG: B}), write_meshes(url, {SEG: C}))[0])
    got = read_meshes(url, [SEG])[SEG]
    assert hook.fired
    assert _same(got, C)


def test_read_meshes_of_a_fragment_missing_for_good_still_raises(tmp_path: Path) -> None:
    """Guard: a manifest that names a missing fragment (and keeps naming it) is an error,
    not a retry loop and not a missing mesh."""
    url = f"precomputed://file://{tmp_path}/seg"
    voxgate.create(url, shape=(16, 64, 64), chunks=(8, 32, 32), dtype="uint64",
                   voxel_size=VOXEL, kind="segmentation")
    write_meshes(url, {SEG: A})
    d = tmp_path / "seg" / "mesh"
    (d / f"{SEG}:0").write_text(json.dumps({"fragments": [f"{SEG}:0:gone"]}))
    with pytest.raises(RemoteNotFoundError, match="does not exist"):
        read_meshes(url, [SEG])


def test_cloudvolume_between_the_manifest_and_its_fragments(
        tmp_path: Path, patch: pytest.MonkeyPatch) -> None:
    """CloudVolume reads the manifests, then the fragments.  Before: the fragment's content
    was None and Mesh.from_precomputed raised (TypeError).  Now it gets A."""
    from cloudvolume import CloudVolume
    from cloudvolume.datasource.precomputed.mesh.unsharded import (
        UnshardedLegacyPrecomputedMeshSource as Source,
    )

    url = f"precomputed://file://{tmp_path}/seg"
    voxgate.create(url, shape=(16, 64, 64), chunks=(8, 32, 32), dtype="uint64",
                   voxel_size=VOXEL, kind="segmentation")
    write_meshes(url, {SEG: A})
    real = Source._get_manifests
    hook = _Once(lambda: write_meshes(url, {SEG: B}))

    def get_manifests(self: Any, segids: Any, allow_missing: bool = False) -> Any:
        out = real(self, segids, allow_missing=allow_missing)
        hook()
        return out

    patch.setattr(Source, "_get_manifests", get_manifests)
    cv = CloudVolume(f"file://{tmp_path / 'seg'}", progress=False)
    got = cv.mesh.get([SEG], fuse=False)[SEG]
    assert hook.fired
    np.testing.assert_array_equal(got.vertices, A.vertices)
    np.testing.assert_array_equal(got.faces, A.faces)
    patch.undo()
    got = cv.mesh.get([SEG], fuse=False)[SEG]
    np.testing.assert_array_equal(got.vertices, B.vertices)


def test_neuroglancer_rules_between_the_manifest_and_its_fragments(
        layer: tuple[str, Directory]) -> None:
    """Neuroglancer's legacy source (src/datasource/precomputed/backend.ts): read
    ``<id>:0`` (throwIfMissing), take its ``fragments`` (a string array; other keys are not
    read), then read each fragment (throwIfMissing) and decode it.  Before: the fragment
    read after a rewrite was missing (the mesh is not drawn until reload)."""
    url, directory = layer
    manifest = json.loads(directory.get(f"{SEG}:0") or b"")
    fragment_ids = manifest["fragments"]
    assert isinstance(fragment_ids, list) and all(isinstance(x, str) for x in fragment_ids)
    write_meshes(url, {SEG: B})   # between the manifest chunk and the fragment chunks
    parts = []
    for fragment_id in fragment_ids:
        data = directory.get(fragment_id)
        assert data is not None, f"fragment {fragment_id} 404: the mesh is not drawn"
        parts.append(Mesh.from_precomputed(data))
    assert _same(Mesh.concatenate(parts, id=SEG), A)
    # a fresh fetch of the manifest gets B, and its fragments are there
    fresh = json.loads(directory.get(f"{SEG}:0") or b"")["fragments"]
    got = Mesh.concatenate([Mesh.from_precomputed(directory.get(n) or b"") for n in fresh],
                           id=SEG)
    assert _same(got, B)


# -- (2) two writers of one segment ----------------------------------------------------------
def test_writer_deleting_after_a_newer_manifest_names_the_same_fragment(
        layer: tuple[str, Directory], patch: pytest.MonkeyPatch) -> None:
    """Writer 1 (B) has written its manifest and is about to delete A's fragment; writer 2
    (an undo: A again, the same box, so the same name) writes its fragment and manifest.
    Before: writer 1 then deleted the fragment writer 2's manifest names, for good."""
    url, directory = layer
    hook = _Once(lambda: write_meshes(url, {SEG: A}))
    _before_delete(patch, hook)
    write_meshes(url, {SEG: B})
    assert hook.fired
    patch.undo()
    _assert_served(url, directory, A)


def test_writer_finishing_inside_another_writers_fragment_write(
        layer: tuple[str, Directory], patch: pytest.MonkeyPatch) -> None:
    """Writer 2 (A again, the same fragment name as the stored one) has written its fragment
    when writer 1 (B) writes its manifest and deletes A's old fragment; then writer 2 writes
    its manifest.  Before: writer 2's manifest named the fragment writer 1 deleted."""
    url, directory = layer
    real = Directory.put_many
    hook = _Once(lambda: write_meshes(url, {SEG: B}))

    def put_many(self: Directory, items: Any) -> None:
        items = list(items)
        real(self, items)
        if any(n.startswith(f"{SEG}:0:") for n, _ in items):
            hook()

    patch.setattr(Directory, "put_many", put_many)
    write_meshes(url, {SEG: A})
    assert hook.fired
    patch.undo()
    _assert_served(url, directory, A)


def test_writer_reusing_a_name_another_writer_is_about_to_delete(
        layer: tuple[str, Directory], patch: pytest.MonkeyPatch) -> None:
    """A -> B -> C, and while C's writer is about to delete what the rewrite before it
    superseded (A's fragment), another writer writes A again (A's box, so A's name unless
    every write names its fragment anew).  Guard of the deferred deletion: without a name of
    its own per write, C's writer deletes the fragment the newest manifest names."""
    url, directory = layer
    write_meshes(url, {SEG: B})
    hook = _Once(lambda: write_meshes(url, {SEG: A}))
    _before_delete(patch, hook)
    write_meshes(url, {SEG: C})
    assert hook.fired
    patch.undo()
    _assert_served(url, directory, A)
    _assert_tidy(directory)


def test_delete_meshes_racing_a_rewrite_of_the_same_box(
        layer: tuple[str, Directory], patch: pytest.MonkeyPatch) -> None:
    """delete_meshes (an edit merged SEG away) has removed the manifest and is about to
    remove the fragments it named when a rewrite (the undo: A again, same box) writes its
    fragment and manifest.  Before: delete_meshes then removed the fragment the new manifest
    names."""
    url, directory = layer
    hook = _Once(lambda: write_meshes(url, {SEG: A}))
    _before_delete(patch, hook, nth=2)   # (1: the manifests, 2: the fragments)
    delete_meshes(url, [SEG])
    assert hook.fired
    patch.undo()
    _assert_served(url, directory, A)


def test_concurrent_manifest_writes_leave_no_fragment_behind(
        layer: tuple[str, Directory], patch: pytest.MonkeyPatch) -> None:
    """Writer 2 (C) writes its fragment and manifest between writer 1's (B's) read of the
    manifest and its write.  Before: writer 1's manifest replaced writer 2's unread, and C's
    fragment was named by no manifest and deleted by no later rewrite (left for good).  Now
    the manifest write is conditional (a lock on local disks, If-Match on S3), so writer 1
    replaces C's manifest, and C's fragment is deleted by the next rewrite."""
    url, directory = layer
    threads: list[threading.Thread] = []
    via = [""]

    def other_writer() -> None:
        if directory.local and via[0] == "update":
            # writer 1 holds the manifest's lock: writer 2 waits for it (joined below)
            t = threading.Thread(target=write_meshes, args=(url, {SEG: C}))
            t.start()
            threads.append(t)
        else:
            write_meshes(url, {SEG: C})

    hook = _Once(other_writer)
    real_put, real_update = Directory.put_many, Directory.update

    def put_many(self: Directory, items: Any) -> None:   # the old code's manifest write
        items = list(items)
        if any(n == f"{SEG}:0" for n, _ in items):
            via[0] = "put"
            hook()
        real_put(self, items)

    def update(self: Directory, name: str, change: Callable[[bytes | None], bytes | None],
               **kw: Any) -> None:
        def hooked(raw: bytes | None) -> bytes | None:
            if name == f"{SEG}:0":
                via[0] = via[0] or "update"
                hook()   # after this writer's read, before its write
            return change(raw)
        real_update(self, name, hooked, **kw)

    patch.setattr(Directory, "put_many", put_many)
    patch.setattr(Directory, "update", update)
    write_meshes(url, {SEG: B})
    for t in threads:
        t.join()
    assert hook.fired
    patch.undo()
    final = C if threads else B
    _assert_served(url, directory, final)
    _assert_tidy(directory)
    write_meshes(url, {SEG: A})   # one more rewrite: only A's and the one before remain
    _assert_tidy(directory)
    assert len(_fragment_files(directory)) == 2
    _assert_served(url, directory, A)


# -- what a rewrite leaves, and delete_meshes ---------------------------------------------------
def test_a_rewrite_keeps_the_superseded_fragment_until_the_next(
        layer: tuple[str, Directory]) -> None:
    """One rewrite of grace: after A -> B, A's fragment stays, listed under
    ``voxgate_superseded`` (readers take ``fragments`` only); after B -> C it is gone, B's
    stays; delete_meshes removes every one of them."""
    url, directory = layer
    first = set(_manifest(directory)["fragments"])
    write_meshes(url, {SEG: B})
    second = _manifest(directory)
    assert set(second.get("voxgate_superseded", [])) == first
    assert _fragment_files(directory) == first | set(second["fragments"])
    _assert_served(url, directory, B)
    write_meshes(url, {SEG: C})
    third = _manifest(directory)
    assert _fragment_files(directory) == set(second["fragments"]) | set(third["fragments"])
    _assert_served(url, directory, C)
    delete_meshes(url, [SEG])
    assert not {n for n in directory.list() if n.startswith(f"{SEG}:")}
    assert read_meshes(url, [SEG]) == {}


def test_a_failed_manifest_update_still_deletes_the_others_leftovers(
        layer: tuple[str, Directory], patch: pytest.MonkeyPatch) -> None:
    # (the fragments the other manifests of the batch had doomed were dropped with the error:
    # those manifests no longer named them, so no later write would delete them)
    url, directory = layer
    other = SEG + 1

    def of(mesh: Mesh, seg: int) -> Mesh:
        return Mesh(mesh.vertices, mesh.faces, seg)

    write_meshes(url, {other: of(A, other)})
    write_meshes(url, {SEG: B, other: of(B, other)})  # A's fragments superseded, kept
    doomed = json.loads(directory.get(f"{other}:0") or b"{}")["voxgate_superseded"]
    assert doomed and all(directory.get(n) is not None for n in doomed)
    real = Directory.update

    def failing(self: Directory, name: str, *args: Any, **kwargs: Any) -> Any:
        if name == f"{SEG}:0":
            raise voxgate.errors.RemoteUnavailableError("the store refused this one")
        return real(self, name, *args, **kwargs)

    patch.setattr(Directory, "update", failing)
    with pytest.raises(voxgate.errors.RemoteUnavailableError, match="refused this one"):
        write_meshes(url, {SEG: C, other: of(C, other)})
    patch.undo()
    assert all(directory.get(n) is None for n in doomed)  # other's A fragment: deleted
    assert read_meshes(url, [other])[other].vertices.shape == C.vertices.shape
