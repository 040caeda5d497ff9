"""A deleted channel's write generation, and the names of deleted collections and experiments,
go with them (docs/relay.md, "Behind an HTTP cache" and "Several worker processes").

Found by this audit (2026-12-08), the marked cases failing on the code before:

- every channel incarnation created through the bossDB project service left its generation
  file and its writers' folder in the generations directory for good (and its entry in the
  in-memory generations, and in the other workers' memory of the generations they saw and
  made): a pipeline creating and deleting scratch channels grew them without limit.  They
  now go with the channel's DELETE, under its gate once no write is in progress; a write or
  a read that reaches the deleted channel afterwards makes none of them again;
- ``state["deleted"]`` kept the name of every collection and experiment ever deleted, and
  such a name hid a channel added later to the config under it: the relay answered 404 for
  a channel its config serves.  No name is kept any more (a collection or experiment can only
  be deleted empty), and the names older relays kept are dropped when a relay starts.

Dropping a generation must not let an ETag repeat: a channel made again under the name has
another incarnation (another tag, another file, another nonce), so no ETag the deleted one
gave is ever confirmed (304) for it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import blosc
import numpy as np
import pytest

import voxgate
from voxgate.geometry import Box
from voxgate.relay.cache import TieredCache
from voxgate.relay.catalog import Catalog, NotFound
from voxgate.relay.config import CacheConfig, ChannelConfig, RelayConfig
from voxgate.relay.generations import Generations
from voxgate.relay.state import Relay

from .conftest import (
    RW,
    RelayProcess,
    free_port,
    shared_state_config,
    start_relay,
    until_both_workers,
)
from .conftest import (
    answered_ok as _ok,
)
from .conftest import (
    rw_request as _ask,
)

HEADERS = {"Authorization": f"Token {RW}"}
SHAPE = (16, 32, 32)  # z, y, x
FRAME = {"x_start": 0, "x_stop": SHAPE[2], "y_start": 0, "y_stop": SHAPE[1], "z_start": 0,
         "z_stop": SHAPE[0], "x_voxel_size": 4, "y_voxel_size": 4, "z_voxel_size": 40,
         "voxel_unit": "nanometers"}






def _cut(chan: str) -> str:
    return f"/v1/cutout/{chan}/0/0:{SHAPE[2]}/0:{SHAPE[1]}/0:{SHAPE[0]}/"


def _left(gens: Path) -> list[str]:
    """What the generations directory keeps per channel: generation files, writers' folders
    (lock files are removed when let go)."""
    return sorted(p.name for p in gens.iterdir()
                  if p.name.endswith(".json") or p.name.endswith(".writers"))




def _project(relay: RelayProcess, c: str, e: str, frame: str) -> None:
    _ok(_ask(relay, f"/v1/collection/{c}/", method="POST", json={"description": ""}))
    _ok(_ask(relay, f"/v1/coord/{frame}/", method="POST", json=FRAME))
    _ok(_ask(relay, f"/v1/collection/{c}/experiment/{e}/", method="POST",
             json={"coord_frame": frame, "num_hierarchy_levels": 1}))


# -- 1. scratch channels through a two-worker relay ----------------------------------------------
def test_scratch_channels_leave_no_generations_and_a_name_made_again_never_repeats_an_etag(
        tmp_path: Path) -> None:
    """Fails on the code before: each deleted incarnation's generation file and writers'
    folder stayed in the generations directory."""
    root = tmp_path / "data"
    root.mkdir()
    state = tmp_path / "state.json"
    gens = tmp_path / ".voxgate-generations"
    cfg = shared_state_config(tmp_path, state)
    relay = start_relay(cfg, free_port(), "--data-root", str(root))
    try:
        _project(relay, "lab", "ex", "f1")
        etags: list[str] = []
        for round_, name in enumerate(["ch", "tmp1", "ch"]):
            chan = f"lab/ex/{name}"
            path = f"/v1/collection/lab/experiment/ex/channel/{name}/"
            _ok(_ask(relay, path, method="POST", json={"type": "image", "datatype": "uint8"}))
            data = np.full(SHAPE, 7, np.uint8)  # (the same bytes every round)
            _ok(_ask(relay, _cut(chan), method="POST", content=blosc.compress(data.tobytes()),
                     headers={"Content-Type": "application/blosc"}))
            tags: set[str] = set()

            def read(chan: str = chan, data: np.ndarray = data, tags: set[str] = tags) -> str:
                res = _ok(_ask(relay, _cut(chan), headers={"Accept": "application/blosc"}))
                got = np.frombuffer(blosc.decompress(res.content), np.uint8)
                np.testing.assert_array_equal(got.reshape(SHAPE), data)
                tags.add(res.headers["etag"])
                return str(res.headers["x-voxgate-worker"])

            until_both_workers(read)
            assert len(tags) == 1, f"the workers gave other ETags: {tags}"
            etags.append(tags.pop())
            assert _left(gens), "nothing was made to check (the generation files' names?)"
            if round_ == 2:
                # the name made again: no ETag the deleted incarnation gave is confirmed
                assert etags[2] != etags[0]
                res = _ask(relay, _cut(chan), headers={"Accept": "application/blosc",
                                                       "If-None-Match": etags[0]})
                assert res.status_code == 200, res.status_code
            _ok(_ask(relay, path, method="DELETE"))
            assert _left(gens) == [], f"round {round_}: the deleted channel's generation " \
                f"stayed: {_left(gens)}"

            def gone(chan: str = chan) -> str:
                res = _ask(relay, _cut(chan))
                assert res.status_code == 404, res.text
                return str(res.headers["x-voxgate-worker"])

            until_both_workers(gone)
            assert _left(gens) == [], "a read of the deleted channel made its file again"
    finally:
        relay.stop()


# -- 2. in process: the other worker, and a write or read that comes after the delete ----------
def _local_relay(tmp_path: Path) -> Relay:
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    relay = Relay(RelayConfig(state_path=tmp_path / "state.json", data_root=root, workers=2,
                              cache=CacheConfig(memory_bytes=2**24)))
    cat = relay.catalog
    with cat.lock:
        cat.state["collections"].setdefault("lab", {"description": "", "creator": "t"})
        cat.state["coords"]["f1"] = {"name": "f1", **FRAME}
        cat.state["experiments"]["lab/ex"] = {"coord_frame": "f1", "num_hierarchy_levels": 1,
                                              "hierarchy_method": "anisotropic"}
        cat.save()
    return relay


def test_the_other_worker_forgets_what_it_kept_of_a_deleted_incarnation(
        tmp_path: Path) -> None:
    """Two workers (two Relays sharing the state file and the generations): one writes and
    reads a channel, the other deletes it.  Fails on the code before: the first kept the
    generation it saw and its own writes' (``_seen``, ``_own``) and the generation file open,
    for good."""
    a, b = _local_relay(tmp_path), _local_relay(tmp_path)
    a.create_local_channel("lab", "ex", "ch", {"datatype": "uint8"}, "t")
    b.catalog.refresh()
    b_entry = b.channel("lab", "ex", "ch")
    remote = b.remote(b_entry)
    b.write(remote, Box((0, 0, 0), SHAPE), np.ones(SHAPE, np.uint8), 0)
    b.generation(b_entry, remote)
    tag = remote.tag
    assert tag in b._seen and tag in b._own
    assert Generations._name(tag) in b.generations._seen_files
    a.catalog.refresh()
    a.delete_local_channel(a.channel("lab", "ex", "ch"))
    b.catalog.refresh()  # (what every request does first)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (tag in b._seen or tag in b._own):
        time.sleep(0.02)
    assert tag not in b._seen and tag not in b._own, "the other worker kept the dead tag"
    assert Generations._name(tag) not in b.generations._seen_files
    assert _left(tmp_path / ".voxgate-generations") == []


def test_a_write_or_read_reaching_a_deleted_channel_makes_no_generation_again(
        tmp_path: Path) -> None:
    """A request that found the channel before its delete writes (then reads) after it.
    Fails on the code before: the write made the channel's writers' folder again (before it
    found the channel deleted), and the read its generation file, for good."""
    relay = _local_relay(tmp_path)
    gens = tmp_path / ".voxgate-generations"
    entry = relay.create_local_channel("lab", "ex", "ch", {"datatype": "uint8"}, "t")
    remote = relay.remote(entry)
    relay.write(remote, Box((0, 0, 0), SHAPE), np.ones(SHAPE, np.uint8), 0)
    before = relay.generation(entry, remote)
    assert len(_left(gens)) == 2, _left(gens)  # (its file and writers' folder)
    relay.delete_local_channel(entry)
    assert _left(gens) == []
    with pytest.raises(NotFound, match="deleted before this write began"):
        relay.write(remote, Box((0, 0, 0), SHAPE), np.ones(SHAPE, np.uint8), 0)
    assert _left(gens) == [], "the refused write made the writers' folder again"
    after = relay.generation(entry, remote)
    assert after != before
    assert _left(gens) == [], "a read of the deleted channel made its generation file again"
    assert remote.tag not in relay._seen and remote.tag not in relay._own
    saved = json.loads((tmp_path / "state.json").read_text())
    assert remote.tag not in saved.get("generations_seen", {})
    # a channel made again under the name: its own generation, never one given before
    again = relay.create_local_channel("lab", "ex", "ch", {"datatype": "uint8"}, "t")
    fresh = relay.remote(again)
    assert fresh.tag != remote.tag
    assert relay.generation(again, fresh) not in (before, after)
    relay.delete_local_channel(again)
    assert _left(gens) == []


def test_forget_and_the_start_up_pass_over_writers_folders(tmp_path: Path) -> None:
    """In memory, a deleted tag's counter goes; in a directory, a writers' folder left behind
    (a relay stopped during a delete) is removed when a relay starts, never one whose write
    is in progress.  Fails on the code before (neither existed)."""
    mem = Generations(None)
    mem.bump("t1")
    mem.forget("t1")
    assert "t1" not in mem._memory
    gens = Generations(tmp_path / "g")
    held, go = threading.Event(), threading.Event()

    def write() -> None:
        with gens.write_lock("t2"):
            gens.bump("t2")
            held.set()
            assert go.wait(30)

    t = threading.Thread(target=write)
    t.start()
    assert held.wait(30)
    gens.bump("t3")
    with gens.write_lock("t3"):
        pass
    assert len(_left(tmp_path / "g")) == 4
    assert gens.prune_writers() == 1  # t3's (t2's write is in progress)
    assert [n for n in _left(tmp_path / "g") if n.endswith(".writers")] == \
        [gens._writers("t2").name]
    go.set()
    t.join(30)
    assert gens.prune_writers() == 1
    assert all(n.endswith(".json") for n in _left(tmp_path / "g"))
    # (the generation files stay: the channels are live; a write makes the folder again)
    v = gens.current("t3")
    with gens.write_lock("t3"):
        assert gens.bump("t3") != v


# -- 3. deleted names hide nothing added later ---------------------------------------------------
def test_a_deleted_collection_or_experiment_does_not_hide_a_config_channel_added_later(
        tmp_path: Path) -> None:
    """A user deletes an (empty) experiment and collection, then adds channels under those
    names to the config and restarts the relay.  Fails on the code before: the names stayed
    in ``state["deleted"]`` for good and the config's channels answered 404."""
    root = tmp_path / "data"
    root.mkdir()
    state = tmp_path / "state.json"
    relay = start_relay(shared_state_config(tmp_path, state, workers=1), free_port(),
                        "--data-root", str(root))
    try:
        _project(relay, "lab", "ex", "f1")
        _ok(_ask(relay, "/v1/collection/lab/experiment/ex/", method="DELETE"))
        _ok(_ask(relay, "/v1/collection/tmp/", method="POST", json={"description": ""}))
        _ok(_ask(relay, "/v1/collection/tmp/", method="DELETE"))
        assert _ask(relay, "/v1/collection/tmp/").status_code == 404
        assert _ask(relay, "/v1/collection/lab/experiment/ex/").status_code == 404
    finally:
        relay.stop()
    assert json.loads(state.read_text()).get("deleted") == [], "deleted names were kept"
    urls = {}
    for chan, value in (("lab/ex/img", 3), ("tmp/em/img", 4)):
        url = f"zarr://{tmp_path}/{chan.replace('/', '_')}.zarr"
        voxgate.create(url, shape=SHAPE, chunks=SHAPE, dtype="uint8",
                       voxel_size=(40, 4, 4))[:] = np.uint8(value)
        urls[chan] = url
    relay = start_relay(shared_state_config(tmp_path, state, workers=1, channels=urls), free_port(),
                        "--data-root", str(root))
    try:
        for chan, value in (("lab/ex/img", 3), ("tmp/em/img", 4)):
            res = _ask(relay, _cut(chan), headers={"Accept": "application/blosc"})
            assert res.status_code == 200, f"{chan}: {res.status_code} {res.text}"
            got = np.frombuffer(blosc.decompress(res.content), np.uint8)
            assert (got == value).all()
    finally:
        relay.stop()


def test_names_an_older_relay_kept_as_deleted_are_dropped_when_a_relay_starts(
        tmp_path: Path) -> None:
    """A state file written by an older relay, with ``deleted`` names, one of which a config
    channel now uses.  Fails on the code before: the channel was hidden (404), the names
    kept for good."""
    url = f"zarr://{tmp_path}/v.zarr"
    voxgate.create(url, shape=SHAPE, chunks=SHAPE, dtype="uint8", voxel_size=(40, 4, 4))
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"deleted": ["lab/ex", "old", "old/gone"]}))
    cfg = RelayConfig(state_path=state, channels=[ChannelConfig("lab", "ex", "img", url)],
                      upstream_timeout=30.0)
    cat = Catalog(cfg, TieredCache(2**24, None, 0))
    assert cat.channel("lab", "ex", "img").upstream_url == url
    assert json.loads(state.read_text())["deleted"] == []
