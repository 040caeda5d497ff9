"""A write that races a read, on the caches and multi-read paths outside the relay's cutout
cells (tests/test_cache_races.py and tests/relay/*race* cover those).

Each race is forced at the exact interleaving point (a read wrapped so the write runs between
two of its steps), never by sleeps:

- a sharded multi-resolution mesh directory written again while a reader is between the shard
  index and the minishard index (or the entry) of the same shard: the reader mixed the old
  file's offsets with the new file's bytes (``ShardedStore.get_many`` / ``keys``);
- the relay's info of a precomputed upstream, and the mesh / annotation files it serves, after
  meshes or an annotation layer were written beside the layer: the relay kept what the layer's
  info named for up to ``INFO_TTL`` seconds (``LayerFiles``), so a client that looked before
  the write was told there were no meshes (and mesh files answered 404) after it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import voxgate
from voxgate.formats.mesh import Mesh, read_meshes, write_meshes
from voxgate.relay import layer_files
from voxgate.relay.config import CacheConfig, ChannelConfig, RelayConfig
from voxgate.storage import sharding

from .relay.conftest import RW
from .relay.test_consistency import InProcessRelay

VOXEL = (40, 8, 8)
IDS = [7, 8, 9, 10, 11]


def _cube(origin: tuple[float, float, float], size: float, copies: int = 1) -> Mesh:
    """``copies`` axis-aligned cubes side by side along x (more copies: more bytes)."""
    corners = np.array([[x, y, z] for z in (0, 1) for y in (0, 1) for x in (0, 1)], np.float32)
    faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]],
                     np.uint32)
    verts, tris = [], []
    for k in range(copies):
        verts.append(corners * size + np.array(origin, np.float32)
                     + np.array([k * 1.5 * size, 0, 0], np.float32))
        tris.append(faces + 8 * k)
    return Mesh(np.concatenate(verts), np.concatenate(tris))


def _layer(path: Path) -> str:
    seg = voxgate.create(f"precomputed://file://{path}", shape=(32, 64, 64), chunks=(32, 64, 64),
                         dtype="uint64", voxel_size=VOXEL, kind="segmentation")
    return seg.url


def _meshes(version: int) -> dict[int, Mesh]:
    # version 2 has more cubes per segment: every entry, and every offset after it, moves
    return {i: _cube((8.0 * i, 16.0, 40.0), 24.0 + 4 * version, copies=version)
            for i in IDS}


def _same(a: Mesh, b: Mesh) -> bool:
    return (a.vertices.shape == b.vertices.shape and np.array_equal(a.faces, b.faces)
            and np.allclose(a.vertices, b.vertices))


@pytest.fixture
def sharded_versions(tmp_path: Path) -> tuple[str, dict[int, Mesh], dict[int, Mesh]]:
    """A layer holding version 1 of sharded multires meshes, and what versions 1 and 2 read
    as when nothing races (version 2 read from a layer of its own)."""
    refs = []
    for v in (1, 2):
        url = _layer(tmp_path / f"ref{v}")
        write_meshes(url, _meshes(v), format="multires", sharded=True)
        refs.append(read_meshes(url, IDS))
        assert sorted(refs[-1]) == IDS
    url = _layer(tmp_path / "raced")
    write_meshes(url, _meshes(1), format="multires", sharded=True)
    return url, refs[0], refs[1]


def _write_after(monkeypatch: pytest.MonkeyPatch, url: str, *, after: str) -> list[int]:
    """Wrap ShardedStore._read so that, the first time a reader has read a shard's ``after``
    ("index": the shard index at the head of the file; "minishard": a minishard index too),
    version 2 of the meshes is written (whole shards, each replaced by a rename) before the
    reader goes on.  Returns a list that holds one item once the write ran."""
    real = sharding.ShardedStore._read
    fired: list[int] = []
    reads: list[tuple[str, int | None, int | None]] = []

    def read(self: Any, name: str, start: int | None = None, stop: int | None = None,
             *rest: Any) -> bytes | None:
        got = real(self, name, start, stop, *rest)
        if fired or not name.endswith(".shard"):
            return got
        reads.append((name, start, stop))
        head = start == 0 and stop == self.spec.index_bytes
        if (after == "index" and head) or (after == "minishard" and not head and len(reads) == 2):
            fired.append(1)
            write_meshes(url, _meshes(2), format="multires", sharded=True)
        return got

    monkeypatch.setattr(sharding.ShardedStore, "_read", read)
    return fired


@pytest.mark.parametrize("after", ["index", "minishard"])
def test_sharded_meshes_written_again_while_a_reader_is_inside_the_shard(
        sharded_versions: tuple[str, dict[int, Mesh], dict[int, Mesh]],
        monkeypatch: pytest.MonkeyPatch, after: str) -> None:
    """read_meshes of given ids while the shard is replaced between two of the reader's byte
    range reads: each mesh read is version 1 or version 2 whole (the old code read the old
    index's offsets in the new file: a CorruptChunkError, or a mesh of neither version)."""
    url, v1, v2 = sharded_versions
    fired = _write_after(monkeypatch, url, after=after)
    got = read_meshes(url, IDS)
    assert fired, "the write did not run inside the read"
    assert sorted(got) == IDS
    for i in IDS:
        assert _same(got[i], v1[i]) or _same(got[i], v2[i]), f"segment {i} is neither version"
    monkeypatch.undo()
    after_write = read_meshes(url, IDS)
    assert all(_same(after_write[i], v2[i]) for i in IDS)


def test_sharded_mesh_ids_listed_while_the_shard_is_written_again(
        sharded_versions: tuple[str, dict[int, Mesh], dict[int, Mesh]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """read_meshes of every stored id (the ids listed from the shard's minishard indexes) while
    the shard is replaced just after its index was read: the ids are the ids stored (the
    old code parsed the new file's bytes at the old index's offsets as minishard indexes)."""
    url, v1, v2 = sharded_versions
    fired = _write_after(monkeypatch, url, after="index")
    got = read_meshes(url)
    assert fired, "the write did not run inside the read"
    assert sorted(got) == IDS
    for i in IDS:
        assert _same(got[i], v1[i]) or _same(got[i], v2[i]), f"segment {i} is neither version"


# -- the relay's view of what a precomputed upstream layer names -------------------------------
class _FrozenClock:
    """``time`` for relay.layer_files with its clock stopped: every request of the test falls
    inside one ``INFO_TTL`` window, however slowly this machine runs it."""

    def __init__(self) -> None:
        import time

        self._now = time.monotonic()

    def monotonic(self) -> float:
        return self._now


@pytest.fixture
def relay_over_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                     ) -> Iterator[tuple[str, str]]:
    """(the relay's precomputed URL of the channel, the upstream layer's URL): a segmentation
    layer with no meshes yet, served by a relay on a thread of this process."""
    monkeypatch.setattr(layer_files, "time", _FrozenClock())
    url = _layer(tmp_path / "seg")
    config = RelayConfig(
        upstream_timeout=120.0, state_path=tmp_path / "state.json",
        cache=CacheConfig(memory_bytes=2**24, disk_path=None),
        channels=[ChannelConfig("c", "e", "seg", url)])
    relay = InProcessRelay(config)
    try:
        yield f"{relay.url}/precomputed/c/e/seg", url
    finally:
        relay.stop()


def _get(url: str) -> httpx.Response:
    return httpx.get(url, headers={"Authorization": f"Token {RW}"}, timeout=120)


def test_relay_info_names_meshes_written_after_a_client_looked(
        relay_over_layer: tuple[str, str]) -> None:
    """A viewer opens the layer through the relay (no meshes yet), meshes are written beside
    the layer, the viewer opens it again: the info names the mesh directory and the mesh
    files are served (the old relay answered from what it read before the write: no ``mesh``
    key and 404 for the files until INFO_TTL had passed)."""
    base, url = relay_over_layer
    before = _get(base + "/info")
    assert before.status_code == 200 and "mesh" not in before.json()
    assert _get(base + "/mesh/info").status_code == 404

    write_meshes(url, _meshes(1), format="multires")
    after = _get(base + "/info")
    assert after.status_code == 200
    assert after.json().get("mesh") == "mesh"
    res = _get(base + "/mesh/info")
    assert res.status_code == 200, res.text
    assert res.json()["@type"] == "neuroglancer_multilod_draco"
    assert _get(base + f"/mesh/{IDS[0]}.index").status_code == 200


def test_relay_serves_an_annotation_layer_made_after_a_client_asked_for_it(
        relay_over_layer: tuple[str, str], tmp_path: Path) -> None:
    """A client asks for an annotation layer inside the upstream layer before it exists
    (404), it is written, the client asks again: served (the old relay remembered "not an
    annotation layer" for INFO_TTL)."""
    base, _ = relay_over_layer
    assert _get(base + "/ann/info").status_code == 404
    ann = tmp_path / "seg" / "ann"
    ann.mkdir()
    doc = {"@type": "neuroglancer_annotations_v1", "annotation_type": "POINT",
           "properties": [], "relationships": [], "by_id": {"key": "by_id"},
           "dimensions": {"x": [8e-9, "m"], "y": [8e-9, "m"], "z": [40e-9, "m"]},
           "lower_bound": [0, 0, 0], "upper_bound": [64, 64, 32], "spatial": []}
    (ann / "info.tmp").write_text(json.dumps(doc))
    (ann / "info.tmp").replace(ann / "info")
    res = _get(base + "/ann/info")
    assert res.status_code == 200, res.text
    assert res.json()["@type"] == "neuroglancer_annotations_v1"


def test_relay_info_follows_the_mesh_key_changed_again(
        relay_over_layer: tuple[str, str]) -> None:
    """The layer's mesh directory renamed by a second write (``mesh_dir``): the relay's info
    names the new one and serves its files, not the old one's."""
    base, url = relay_over_layer
    write_meshes(url, _meshes(1), format="multires")
    assert _get(base + "/info").json().get("mesh") == "mesh"
    write_meshes(url, _meshes(2), format="multires", mesh_dir="mesh2")
    assert _get(base + "/info").json().get("mesh") == "mesh2"
    res = _get(base + "/mesh2/info")
    assert res.status_code == 200, res.text


def test_a_truncated_shard_is_still_corrupt_not_retried(
        sharded_versions: tuple[str, dict[int, Mesh], dict[int, Mesh]]) -> None:
    """Guard: a shard cut short in place (the same file, nobody replacing it) is reported as
    corrupt, not read again and again as if it were being replaced."""
    from voxgate.errors import CorruptChunkError
    from voxgate.storage import local_path

    url, _, _ = sharded_versions
    shards = sorted(Path(local_path(url.removeprefix("precomputed://"))).glob("mesh/*.shard"))
    assert shards
    for shard in shards:
        data = shard.read_bytes()
        with open(shard, "r+b") as f:  # in place: the file stays the same one
            f.truncate(len(data) - 40)
    with pytest.raises(CorruptChunkError):
        read_meshes(url, IDS)


def test_a_shard_replaced_on_every_read_gives_up_saying_so(
        sharded_versions: tuple[str, dict[int, Mesh], dict[int, Mesh]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard: a shard replaced after every index read makes the reader give up after a bounded
    number of tries, with an error that says the shard kept being replaced."""
    from voxgate.errors import RemoteUnavailableError

    url, _, _ = sharded_versions
    real = sharding.ShardedStore._read
    turns = [0]

    def read(self: Any, name: str, start: int | None = None, stop: int | None = None,
             *rest: Any) -> bytes | None:
        got = real(self, name, start, stop, *rest)
        if name.endswith(".shard") and start == 0 and stop == self.spec.index_bytes:
            turns[0] += 1
            write_meshes(url, _meshes(1 + turns[0] % 2), format="multires", sharded=True)
        return got

    monkeypatch.setattr(sharding.ShardedStore, "_read", read)
    with pytest.raises(RemoteUnavailableError, match="kept being replaced"):
        read_meshes(url, IDS)
    assert turns[0] == sharding._READ_ATTEMPTS


def test_relay_info_stamp_stats_two_names_while_the_folder_is_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # (each stamp tried .gz, .br, .zstd, .xz, .bz2 before the plain name: 6 stats per info,
    # up to 18 per served file; on a network file system each is a round trip)
    layer = tmp_path / "seg"
    layer.mkdir()
    (layer / "info").write_text('{"a": 1}')
    files = layer_files.LayerFiles()
    first = files._stamp(str(layer), "info")
    calls: list[str] = []
    real = layer_files.os.stat

    def counted(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(layer_files.os, "stat", counted)
    assert files._stamp(str(layer), "info") == first
    assert len(calls) == 2, calls
    # what the stamp is for still holds: an in-place rewrite, a variant that appears
    (layer / "info").write_text('{"a": 22}')
    second = files._stamp(str(layer), "info")
    assert second != first
    (layer / "info.gz").write_bytes(b"\x1f\x8b")
    third = files._stamp(str(layer), "info")
    assert third != second and ".gz" in third
    (layer / "info.gz").unlink()
    assert ".gz" not in files._stamp(str(layer), "info")
