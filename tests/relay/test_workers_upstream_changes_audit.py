"""Upstream changes seen by a relay of two worker processes (docs/relay.md, "Changes made outside
the relay" and "Several worker processes").

A change one worker's periodic ``upstream_meta_seconds`` check sees is recorded in the state
file the workers share, so the other worker opens the channel again on its next request: a
client sending requests one after another (each on a fresh connection, so either worker may
answer: ``X-Voxgate-Worker`` says which) sees the old upstream, whole, then the new one, whole,
and never the old again once it saw the new one.  Checked for a DVID branch whose leaf moves
on (cutouts, ETags, precomputed chunks, the disk tier after a restart), a zarr volume made
again with another shape and dtype, writes through a branch channel racing the move (none
acknowledged is lost), and two writable channels over two time points of one timelapse.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import blosc
import httpx
import numpy as np
import zarr

import voxgate
from voxgate.formats.precomputed_chunks import decode_chunk
from voxgate.testing.dvid import DVIDServerProcess

from .conftest import RW, RelayProcess, free_port, start_relay, until_both_workers
from .conftest import rw_request as _get
from .test_dvid_moving_refs_audit import BS, SHAPE, Branch, _branch, _gens, _labels

HEADERS = {"Authorization": f"Token {RW}"}


def _config(d: Path, channels: dict[str, tuple[str, bool, str]]) -> Path:
    """Two workers, the check every second, a shared disk tier and state file; ``channels``:
    name -> (upstream URL, writable, extra TOML of the entry)."""
    text = f"""
[server]
host = "127.0.0.1"
workers = 2
upstream_timeout = 20
upstream_meta_seconds = 1
state_path = "{d / 'state.json'}"
[cache]
memory_bytes = "64 MiB"
disk_path = "{d / 'cache'}"
disk_bytes = "256 MiB"
[auth]
public_read = false
tokens = {{ "{RW}" = "read-write" }}
"""
    for name, (url, writable, extra) in channels.items():
        text += (f'[[channel]]\nname = "{name}"\nupstream = "{url}"\n'
                 f"writable = {str(writable).lower()}\n{extra}\n")
    cfg = d / "relay.toml"
    cfg.write_text(text)
    return cfg




def _cut_url(chan: str, zyx: tuple[tuple[int, int], ...]) -> str:
    (z0, z1), (y0, y1), (x0, x1) = zyx
    return f"/v1/cutout/{chan}/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/"


def _cutout(relay: RelayProcess, chan: str, zyx: tuple[tuple[int, int], ...],
            dtype: str) -> tuple[np.ndarray, str, str]:
    """The voxels of ``zyx`` through the bossDB dialect, the ETag and the worker."""
    res = _get(relay, _cut_url(chan, zyx), headers={**HEADERS, "Accept": "application/blosc"})
    assert res.status_code == 200, res.text
    shape = tuple(b - a for a, b in zyx)
    arr = np.frombuffer(blosc.decompress(res.content), dtype).reshape(shape)
    return arr, res.headers["etag"], res.headers["x-voxgate-worker"]


def _write(relay: RelayProcess, chan: str, zyx: tuple[tuple[int, int], ...],
           arr: np.ndarray) -> httpx.Response:
    return _get(relay, _cut_url(chan, zyx), method="POST",
                content=blosc.compress(arr.tobytes(), typesize=arr.dtype.itemsize),
                headers={**HEADERS, "Content-Type": "application/blosc"})


def _chunk(relay: RelayProcess, chan: str) -> tuple[np.ndarray, str, str]:
    """The channel's precomputed chunk at the origin, decoded, its ETag and the worker."""
    info = _get(relay, f"/precomputed/{chan}/info").json()
    scale = info["scales"][0]
    size = scale["chunk_sizes"][0]
    res = _get(relay, f"/precomputed/{chan}/{scale['key']}/" + "_".join(f"0-{c}" for c in size))
    assert res.status_code == 200, res.text
    block = scale.get("compressed_segmentation_block_size", [8, 8, 8])[::-1]
    arr = decode_chunk(res.content, scale["encoding"], (1, *size[::-1]),
                       np.dtype(info["data_type"]), block_size=block, name="origin")
    return arr[0], res.headers["etag"], res.headers["x-voxgate-worker"]


WHOLE = ((0, SHAPE[0]), (0, SHAPE[1]), (0, SHAPE[2]))


# -- 1. a DVID branch moving on ------------------------------------------------------------------
def test_two_workers_follow_a_moving_branch_whole_and_never_back(
        dvid: DVIDServerProcess, tmp_path: Path) -> None:
    b = _branch(dvid, "workers")
    cfg = _config(tmp_path, {"fly/em/seg": (b.ref(), False, "")})
    relay = start_relay(cfg, free_port())
    etags: dict[int, set[str]] = {1: set(), 2: set()}
    chunks: dict[int, set[str]] = {1: set(), 2: set()}
    try:
        def old() -> str:
            arr, etag, worker = _cutout(relay, "fly/em/seg", WHOLE, "uint64")
            np.testing.assert_array_equal(arr, _labels(1))
            etags[1].add(etag)
            data, cetag, w = _chunk(relay, "fly/em/seg")
            assert _gens(data) == {1}
            chunks[1].add(cetag)
            return worker if w == worker else ""

        until_both_workers(old)  # both workers hold the old leaf's cells (memory, and disk)
        assert len(etags[1]) == 1 and len(chunks[1]) == 1
        b.move(2)
        # one client's requests one after another: the old leaf whole, then the new one whole,
        # and never the old again once the new one was served (by either worker)
        seen: list[tuple[int, str, str]] = []  # (generation, worker, what)
        new_by: set[str] = set()
        end = time.monotonic() + 30
        while time.monotonic() < end and len(new_by) < 2:
            arr, etag, worker = _cutout(relay, "fly/em/seg", WHOLE, "uint64")
            gens = _gens(arr)
            assert gens in ({1}, {2}), f"a cutout mixing nodes: generations {gens}"
            gen = gens.pop()
            if gen == 2:
                np.testing.assert_array_equal(arr, _labels(2))
            etags[gen].add(etag)
            seen.append((gen, worker, "cutout"))
            data, etag, worker = _chunk(relay, "fly/em/seg")
            cgens = _gens(data)
            assert cgens in ({1}, {2}), f"a chunk mixing nodes: generations {cgens}"
            cgen = cgens.pop()
            chunks[cgen].add(etag)
            seen.append((cgen, worker, "chunk"))
            if gen == 2 and cgen == 2:
                new_by.add(worker)
            time.sleep(0.05)
        assert len(new_by) == 2, f"both workers never served the new leaf: {seen}"
        first_new = next(i for i, (g, _, _) in enumerate(seen) if g == 2)
        assert all(g == 2 for g, _, _ in seen[first_new:]), \
            f"the old leaf served again after the new one: {seen}"
        assert etags[1].isdisjoint(etags[2]) and len(etags[1]) == 1, etags
        assert len(chunks[2]) == 1 and chunks[1].isdisjoint(chunks[2])
        # a conditional GET with the old leaf's ETag is answered with the new bytes, never 304
        for _ in range(6):
            res = _get(relay, _cut_url("fly/em/seg", WHOLE),
                       headers={**HEADERS, "Accept": "application/blosc",
                                "If-None-Match": next(iter(etags[1]))})
            assert res.status_code == 200, res.status_code
    finally:
        relay.stop()
    # restarted over the same disk tier and state: both workers serve the new leaf, whole
    relay = start_relay(cfg, free_port())
    try:
        def new() -> str:
            arr, _, worker = _cutout(relay, "fly/em/seg", WHOLE, "uint64")
            np.testing.assert_array_equal(arr, _labels(2))
            return worker

        until_both_workers(new)
    finally:
        relay.stop()


def test_a_worker_opening_the_channel_after_the_move_makes_the_other_follow_at_once(
        dvid: DVIDServerProcess, tmp_path: Path) -> None:
    """Only one worker had the channel open when the branch moved: the other one opens it
    at the new leaf on its first request.  The first worker must not serve the old leaf to a
    request that begins after that (it did until its own check came round, up to
    ``upstream_meta_seconds`` later: a client saw the new leaf, then the old one again)."""
    b = _branch(dvid, "lazy")
    cfg = _config(tmp_path, {"fly/lazy/seg": (b.ref(), False, "")})
    relay = start_relay(cfg, free_port())
    block = ((0, BS), (0, BS), (0, BS))
    url = _cut_url("fly/lazy/seg", block)
    blosc_ = {"Accept": "application/blosc"}

    def value(res: httpx.Response) -> int:
        assert res.status_code == 200, res.text
        arr = np.unique(np.frombuffer(blosc.decompress(res.content), np.uint64))
        assert len(arr) == 1, arr
        return int(arr[0])

    try:
        # (the channel alone in its experiment: no other channel's frame opens it)
        with httpx.Client(base_url=relay.url, headers=HEADERS, timeout=60) as kept:
            for _ in range(20):  # one connection: one worker opens the channel
                res = kept.get(url, headers=blosc_)
                first = res.headers["x-voxgate-worker"]
                assert value(res) == 1000
            # the move, quickly (before the first worker's check comes round again): the
            # leaf committed, a new version, one block of it written
            leaf = b.repo.resolve(f"{b.repo.root}:proof")
            b.repo.commit(leaf, note="proofread")
            new = b.repo.new_version(leaf, note="next")
            voxgate.open(b.repo.url("seg", new), mode="r+")[:BS, :BS, :BS] = \
                np.full((BS, BS, BS), 2000, np.uint64)
            # the other worker's first request for the channel: the new leaf
            other = None
            for _ in range(400):
                res = _get(relay, url, headers={**HEADERS, **blosc_})
                got = value(res)
                if res.headers["x-voxgate-worker"] != first:
                    other = res.headers["x-voxgate-worker"]
                    break
                assert got in (1000, 2000)  # (the first worker, before or after its check)
            assert other is not None, "the other worker never answered"
            assert got == 2000
            # ... and from then on the first worker too (on the connection it kept)
            for _ in range(5):
                res = kept.get(url, headers=blosc_)
                assert res.headers["x-voxgate-worker"] == first
                assert value(res) == 2000, \
                    f"worker {first} served the old leaf after worker {other} served the new"
    finally:
        relay.stop()


# -- 2. a zarr volume made again under its URL ---------------------------------------------------
def test_two_workers_take_in_a_zarr_volume_made_again_and_never_go_back(tmp_path: Path) -> None:
    url = f"zarr://{tmp_path}/img.zarr"
    zyx = ((0, 16), (0, 64), (0, 64))
    voxgate.create(url, shape=(16, 64, 64), chunks=(16, 32, 32), dtype="uint8",
                   voxel_size=(8, 8, 8))[:] = np.uint8(7)
    relay = start_relay(_config(tmp_path, {"lab/em/img": (url, False, "")}), free_port())
    try:
        def size() -> tuple[list[int], str]:
            res = _get(relay, "/precomputed/lab/em/img/info")
            return res.json()["scales"][0]["size"], res.headers["x-voxgate-worker"]

        old_etag: set[str] = set()

        def old() -> str:
            arr, etag, worker = _cutout(relay, "lab/em/img", zyx, "uint8")
            assert (arr == 7).all()
            old_etag.add(etag)
            assert size()[0] == [64, 64, 16]
            return worker

        until_both_workers(old)
        shutil.rmtree(tmp_path / "img.zarr")
        voxgate.create(url, shape=(16, 64, 96), chunks=(16, 32, 32), dtype="uint16",
                       voxel_size=(8, 8, 8))[:] = np.uint16(300)
        seen: list[tuple[str, str]] = []  # ("old" | "new", worker)
        new_by: set[str] = set()
        end = time.monotonic() + 30
        while time.monotonic() < end and len(new_by) < 2:
            res = _get(relay, _cut_url("lab/em/img", zyx),
                       headers={**HEADERS, "Accept": "application/blosc"})
            assert res.status_code == 200, res.text
            raw = blosc.decompress(res.content)
            worker = res.headers["x-voxgate-worker"]
            if len(raw) == 16 * 64 * 64:
                assert (np.frombuffer(raw, np.uint8) == 7).all()
                assert res.headers["etag"] in old_etag
                seen.append(("old", worker))
            else:
                assert (np.frombuffer(raw, np.uint16) == 300).all()
                assert res.headers["etag"] not in old_etag
                seen.append(("new", worker))
                new_by.add(worker)
            shape, worker = size()
            seen.append(("old" if shape == [64, 64, 16] else "new", worker))
            assert shape in ([64, 64, 16], [96, 64, 16]), shape
            time.sleep(0.05)
        assert len(new_by) == 2, f"both workers never served the new volume: {seen}"
        first_new = [s for s, _ in seen].index("new")
        assert all(s == "new" for s, _ in seen[first_new:]), \
            f"the old volume served again after the new one: {seen}"
    finally:
        relay.stop()


# -- 3. writes through a branch channel racing the move ------------------------------------------
def test_no_acknowledged_write_through_a_branch_channel_is_lost_when_the_branch_moves(
        dvid: DVIDServerProcess, tmp_path: Path) -> None:
    b: Branch = _branch(dvid, "racing")
    relay = start_relay(_config(tmp_path, {"fly/em/seg": (b.ref(), True, "")}), free_port())
    nb = [s // BS for s in SHAPE]
    blocks = [(z, y, x) for z in range(nb[0]) for y in range(nb[1]) for x in range(nb[2])]
    acked: list[tuple[tuple[int, int, int], int]] = []
    refused: list[tuple[tuple[int, int, int], int, int]] = []
    stop = threading.Event()
    moved_on = threading.Event()  # (set once the branch moved)
    #: the workers that acknowledged a write sent after the move: one written to the new
    #: leaf (the committed one refuses writes), so a worker that follows it
    following: set[str] = set()
    errors: list[BaseException] = []

    def box(blk: tuple[int, int, int]) -> tuple[tuple[int, int], ...]:
        return tuple((k * BS, (k + 1) * BS) for k in blk)

    def writer() -> None:
        try:
            for i, blk in enumerate(blocks):
                if stop.is_set():
                    return
                value = 9_000_000 + i
                after = moved_on.is_set()
                res = _write(relay, "fly/em/seg", box(blk),
                             np.full((BS, BS, BS), value, np.uint64))
                if res.status_code == 201:
                    acked.append((blk, value))
                    if after:
                        following.add(res.headers["x-voxgate-worker"])
                else:
                    refused.append((blk, value, res.status_code))
                    assert res.status_code == 403, (res.status_code, res.text)
                time.sleep(0.02)
        except BaseException as exc:
            errors.append(exc)

    try:
        until_both_workers(lambda: _cutout(relay, "fly/em/seg", WHOLE, "uint64")[2])
        t = threading.Thread(target=writer)
        t.start()
        while len(acked) < 5 and t.is_alive():
            time.sleep(0.02)
        # the move: the leaf committed and a new version made (which inherits its data)
        leaf = b.repo.resolve(f"{b.repo.root}:proof")
        b.repo.commit(leaf, note="proofread")
        new = b.repo.new_version(leaf, note="next")
        moved = len(acked)
        moved_on.set()
        # writes go on past both workers' checks (they then write to the new leaf): until
        # both acknowledged one sent after the move, and more than 5 were (polled, with a
        # deadline generous for a loaded machine)
        end = time.monotonic() + 30
        while (len(following) < 2 or len(acked) <= moved + 5) and t.is_alive() \
                and time.monotonic() < end:
            time.sleep(0.1)
        assert len(acked) > moved + 5, (acked, refused)
        assert len(following) == 2, \
            f"only worker(s) {sorted(following)} wrote to the new leaf: {refused}"
        stop.set()
        t.join(60)
        assert not errors, errors
        # (both workers follow the new leaf, as their acknowledged writes show: nothing
        # more to wait for before reading it)
        on_leaf = np.asarray(voxgate.open(b.repo.url("seg", new))[...])
        expected = _labels(1)
        for blk, value in acked:
            expected[tuple(slice(s, e) for s, e in box(blk))] = value
        # every acknowledged write is on the new leaf (written there, or inherited from the
        # committed one it was written to); no refused one is
        np.testing.assert_array_equal(on_leaf, expected)

        def served() -> str:
            arr, _, worker = _cutout(relay, "fly/em/seg", WHOLE, "uint64")
            np.testing.assert_array_equal(arr, expected)
            return worker

        until_both_workers(served)
        assert refused, "no write reached the committed leaf: the race was not run"
        assert {code for _, _, code in refused} == {403}
    finally:
        stop.set()
        relay.stop()


# -- 4. two channels over two time points of one timelapse --------------------------------------
def test_two_time_points_of_one_timelapse_are_two_channels_on_both_workers(
        tmp_path: Path) -> None:
    path = tmp_path / "tl.zarr"
    data = np.stack([np.full((16, 32, 32), 10, np.uint8), np.full((16, 32, 32), 20, np.uint8)])
    arr = zarr.create_array(str(path), shape=data.shape, chunks=(1, 8, 16, 16), dtype="uint8",
                            dimension_names=["t", "z", "y", "x"], zarr_format=3)
    arr[...] = data
    url = f"zarr://{path}"
    relay = start_relay(_config(tmp_path, {
        "lab/tl/t0": (url, True, "options = { time = 0 }"),
        "lab/tl/t1": (url, True, "options = { time = 1 }")}), free_port())
    zyx = ((0, 16), (0, 32), (0, 32))
    try:
        expect = {"t0": data[0].copy(), "t1": data[1].copy()}

        def reads(chan: str) -> Callable[[], str]:
            def ask() -> str:
                got, _, worker = _cutout(relay, f"lab/tl/{chan}", zyx, "uint8")
                np.testing.assert_array_equal(got, expect[chan])
                return worker
            return ask

        for chan in ("t0", "t1"):
            until_both_workers(reads(chan))
        # the same request on the two channels: other bytes, so other ETags (cutouts, chunks)
        _, e0, _ = _cutout(relay, "lab/tl/t0", zyx, "uint8")
        _, e1, _ = _cutout(relay, "lab/tl/t1", zyx, "uint8")
        assert e0 != e1, "two time points' cutouts have one ETag"
        c0, ce0, _ = _chunk(relay, "lab/tl/t0")
        c1, ce1, _ = _chunk(relay, "lab/tl/t1")
        assert (c0 == 10).all() and (c1 == 20).all()
        assert ce0 != ce1, "two time points' chunks have one ETag"
        # a write through one channel (either worker) changes it alone, on both workers
        for i, (chan, other) in enumerate((("t0", "t1"), ("t1", "t0"), ("t0", "t1"))):
            part = ((2, 10), (4, 20), (6, 30))
            value = np.full((8, 16, 24), 100 + i, np.uint8)
            assert _write(relay, f"lab/tl/{chan}", part, value).status_code == 201
            expect[chan][2:10, 4:20, 6:30] = value
            until_both_workers(reads(other))
            until_both_workers(reads(chan))
        on_disk = zarr.open_array(str(path), mode="r")[...]
        np.testing.assert_array_equal(on_disk, np.stack([expect["t0"], expect["t1"]]))
    finally:
        relay.stop()
