"""Moving DVID references (``uuid:branch``, ``uuid:branch~N``) behind the relay and in Volumes.

A reference to a branch names the branch's current leaf, which moves on when proofreaders
commit it and make a new version.  The relay must never mix nodes: a channel on a branch
follows the leaf consistently (the node is part of the metadata identity: the periodic
``upstream_meta_seconds`` check sees a move as a metadata change, and cells read from one node,
in memory or on disk, are never served as another node's, even after a restart), and a
channel on a full UUID is pinned.  A Volume resolves the reference once: its pickles,
``to_dask()`` graphs and ``voxgate.copy`` read the node it resolved, whatever the branch does.

Every 16^3 block of the labels written at "generation" g holds g * 1000 + its block number, so
the generation of every voxel a read returns is ``value // 1000``: one read holding two
generations is a torn view (cells of two nodes).  The volume spans several relay cells.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import blosc
import httpx
import numpy as np

import voxgate
from voxgate.remotes.dvid import DVIDRepo
from voxgate.testing.dvid import DVIDServerProcess

from .conftest import RelayProcess, free_port, start_relay

BS = 16
SHAPE = (64, 128, 128)  # z, y, x: 8 MiB of uint64, several 1 MiB relay cells
HALF = 32  # the first read covers z < HALF only


def _labels(gen: int) -> np.ndarray:
    """Generation ``gen``: each block holds gen * 1000 + its block number (never 0)."""
    nb = [s // BS for s in SHAPE]
    blocks = np.arange(int(np.prod(nb)), dtype=np.uint64).reshape(nb) + np.uint64(gen * 1000)
    return np.ascontiguousarray(blocks.repeat(BS, 0).repeat(BS, 1).repeat(BS, 2))


def _gens(arr: np.ndarray) -> set[int]:
    return {int(g) for g in np.unique(arr // np.uint64(1000))}


@dataclass
class Branch:
    """A repo whose root holds generation 0 (committed) and whose branch "proof" has one node,
    ``first``, holding generation 1 (uncommitted)."""

    repo: DVIDRepo
    first: str

    def ref(self, tail: str = "proof") -> str:
        """``dvid://.../<root prefix>:<tail>/seg``."""
        return self.repo.url("seg", f"{self.repo.root[:8]}:{tail}")

    def move(self, gen: int) -> str:
        """What proofreaders do: commit the leaf, make a new version on the branch and write
        generation ``gen`` straight into it (not through the relay).  Returns the new leaf."""
        leaf = self.repo.resolve(f"{self.repo.root}:proof")
        self.repo.commit(leaf, note="proofread")
        new = self.repo.new_version(leaf, note="next")
        vol = voxgate.open(self.repo.url("seg", new), mode="r+")
        vol[...] = _labels(gen)
        return new


def _branch(dvid: DVIDServerProcess, alias: str) -> Branch:
    repo = DVIDRepo.create(dvid.url, alias=alias)
    vol = voxgate.create(repo.url("seg"), shape=SHAPE, chunks=(BS, BS, BS), dtype="uint64",
                         voxel_size=(8, 8, 8), kind="segmentation", num_scales=1)
    vol[...] = _labels(0)
    repo.commit(repo.root, note="imported")
    first = repo.branch(repo.root, "proof")
    voxgate.open(repo.url("seg", first), mode="r+")[...] = _labels(1)
    return Branch(repo, first)


def _config(d: Path, channels: dict[str, str], meta_seconds: float) -> Path:
    text = f"""
[server]
host = "127.0.0.1"
upstream_timeout = 20
upstream_meta_seconds = {meta_seconds}
state_path = "{d / 'state.json'}"
[cache]
memory_bytes = "64 MiB"
disk_path = "{d / 'cache'}"
disk_bytes = "256 MiB"
"""
    for name, url in channels.items():
        text += f'[[channel]]\nname = "{name}"\nupstream = "{url}"\nwritable = false\n'
    cfg = d / "relay.toml"
    cfg.write_text(text)
    return cfg


def _cutout(relay: RelayProcess, chan: str, z1: int = SHAPE[0]) -> tuple[np.ndarray, str]:
    """The channel's voxels at z < z1 through the bossDB dialect, and the response's ETag."""
    url = f"/v1/cutout/fly/em/{chan}/0/0:{SHAPE[2]}/0:{SHAPE[1]}/0:{z1}/"
    with httpx.Client(base_url=relay.url, timeout=60) as http:
        res = http.get(url, headers={"Accept": "application/blosc",
                                     "Authorization": "Token any"})
    assert res.status_code == 200, res.text
    arr = np.frombuffer(blosc.decompress(res.content), np.uint64).reshape(z1, *SHAPE[1:])
    return arr, res.headers["etag"]


def _precomputed_chunk(relay: RelayProcess, chan: str) -> bytes:
    """The channel's precomputed chunk covering the origin (the precomputed dialect)."""
    with httpx.Client(base_url=relay.url, timeout=60) as http:
        res = http.get(f"/precomputed/fly/em/{chan}/info")
        assert res.status_code == 200, res.text
        key = res.json()["scales"][0]["key"]
        size = res.json()["scales"][0]["chunk_sizes"][0]
        chunk = "_".join(f"0-{c}" for c in size)
        got = http.get(f"/precomputed/fly/em/{chan}/{key}/{chunk}")
    assert got.status_code == 200, got.text
    return got.content


def _wait_for(relay: RelayProcess, chan: str, gen: int, seconds: float) -> list[set[int]]:
    """Read the whole channel until it is all generation ``gen`` (or ``seconds`` passed);
    every read's generations, in order."""
    seen: list[set[int]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        arr, _ = _cutout(relay, chan)
        seen.append(_gens(arr))
        if seen[-1] == {gen}:
            break
        time.sleep(0.3)
    return seen


def test_a_branch_channel_follows_the_leaf_after_the_check_and_never_mixes_nodes(
        dvid: DVIDServerProcess, tmp_path: Path) -> None:
    b = _branch(dvid, "follow")
    relay = start_relay(_config(tmp_path, {"fly/em/seg": b.ref()}, meta_seconds=1),
                        free_port())
    try:
        half, _ = _cutout(relay, "seg", HALF)  # (some cells cached, in memory and on disk)
        assert _gens(half) == {1}
        whole, etag1 = _cutout(relay, "seg")
        np.testing.assert_array_equal(whole, _labels(1))
        chunk1 = _precomputed_chunk(relay, "seg")
        b.move(2)
        # until the check comes round the old leaf, whole; then the new leaf, whole: never a
        # read holding both
        seen = _wait_for(relay, "seg", 2, seconds=20)
        assert all(s in ({1}, {2}) for s in seen), seen
        assert seen[-1] == {2}, f"the relay never followed the branch's new leaf: {seen}"
        whole, etag2 = _cutout(relay, "seg")
        np.testing.assert_array_equal(whole, _labels(2))
        assert etag2 != etag1  # (an HTTP cache in front must not confirm the old bytes)
        assert _precomputed_chunk(relay, "seg") != chunk1  # the precomputed layer moved on too
    finally:
        relay.stop()
    # restarted (the disk tier kept): still the new leaf, whole
    relay = start_relay(relay.config, free_port())
    try:
        whole, _ = _cutout(relay, "seg")
        np.testing.assert_array_equal(whole, _labels(2))
    finally:
        relay.stop()


def test_a_relay_restarted_after_the_branch_moved_never_serves_the_old_nodes_disk_cells(
        dvid: DVIDServerProcess, tmp_path: Path) -> None:
    b = _branch(dvid, "restart")
    # (the check off: only the restart can see the move)
    relay = start_relay(_config(tmp_path, {"fly/em/seg": b.ref()}, meta_seconds=0),
                        free_port())
    try:
        half, _ = _cutout(relay, "seg", HALF)  # the cells of z < HALF, node 1's, on disk
        assert _gens(half) == {1}
    finally:
        relay.stop()
    assert any((tmp_path / "cache").rglob("*")), "the disk tier kept nothing"
    b.move(2)
    relay = start_relay(relay.config, free_port())
    try:
        whole, _ = _cutout(relay, "seg")
        assert _gens(whole) == {2}, f"a torn view after the restart: generations {_gens(whole)}"
        np.testing.assert_array_equal(whole, _labels(2))
    finally:
        relay.stop()


def test_a_full_uuid_is_pinned_and_a_tilde_reference_moves_with_its_branch(
        dvid: DVIDServerProcess, tmp_path: Path) -> None:
    b = _branch(dvid, "pinned")
    relay = start_relay(_config(tmp_path, {"fly/em/pin": b.repo.url("seg", b.first),
                                           "fly/em/back": b.ref("proof~1")}, meta_seconds=1),
                        free_port())
    try:
        pin, pin_etag = _cutout(relay, "pin")
        np.testing.assert_array_equal(pin, _labels(1))
        back, _ = _cutout(relay, "back")  # proof~1: the root, until the branch moves
        np.testing.assert_array_equal(back, _labels(0))
        b.move(2)  # proof~1 is now the first node
        seen = _wait_for(relay, "back", 1, seconds=20)
        assert all(s in ({0}, {1}) for s in seen), seen
        assert seen[-1] == {1}, f"proof~1 never followed the branch: {seen}"
        # the full UUID never moves: the same voxels and ETag after several checks (its
        # cells and the HTTP caches' copies stay good), and its check finds nothing
        time.sleep(1.5)
        for _ in range(3):
            pin, etag = _cutout(relay, "pin")
            np.testing.assert_array_equal(pin, _labels(1))
            assert etag == pin_etag
            time.sleep(0.5)
    finally:
        relay.stop()


def _read_pickled(blob: bytes) -> tuple[str, list[int]]:
    """In another process: the node a pickled Volume reads, and its generations."""
    vol = pickle.loads(blob)
    return vol.remote.uuid, sorted(_gens(np.asarray(vol[...])))


def test_a_branch_volume_keeps_its_node_in_pickles_dask_and_copy_after_the_branch_moved(
        dvid: DVIDServerProcess, tmp_path: Path) -> None:
    b = _branch(dvid, "volume")
    vol = voxgate.open(b.ref())
    assert vol.remote.uuid == b.first
    graph = vol.to_dask()  # (made before the move, computed after)
    blob = pickle.dumps(vol)
    b.move(2)
    fresh = voxgate.open(b.ref())
    assert fresh.remote.uuid != b.first
    np.testing.assert_array_equal(fresh[...], _labels(2))
    # the parent process's Volume, one unpickled here and one in a spawned process
    np.testing.assert_array_equal(vol[...], _labels(1))
    again = pickle.loads(pickle.dumps(vol))
    assert again.remote.uuid == b.first
    np.testing.assert_array_equal(again[...], _labels(1))
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        node, gens = pool.submit(_read_pickled, blob).result(timeout=120)
    assert (node, gens) == (b.first, [1])
    # dask blocks (threads, and the graph pickled as a distributed scheduler would)
    np.testing.assert_array_equal(graph.compute(scheduler="threads"), _labels(1))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(vol.to_dask())).compute(),
                                  _labels(1))
    # a copy of the Volume opened before the move: every block from its node
    report = voxgate.copy(vol, f"zarr://{tmp_path / 'out.zarr'}", workers=2, progress=False)
    assert report is not None
    np.testing.assert_array_equal(voxgate.open(f"zarr://{tmp_path / 'out.zarr'}")[...],
                                  _labels(1))
    # the copy's journal names the resolved node, not the branch: a rerun of the same copy
    # after another move is another copy (it never resumes with blocks of another node)
    b.move(3)
    voxgate.copy(b.ref(), f"zarr://{tmp_path / 'out.zarr'}", workers=2, progress=False)
    np.testing.assert_array_equal(voxgate.open(f"zarr://{tmp_path / 'out.zarr'}")[...],
                                  _labels(3))
