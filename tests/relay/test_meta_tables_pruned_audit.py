"""The per-channel bookkeeping the worker processes share in the relay's state file is dropped
with the channel (docs/relay.md, "Several worker processes").

With several workers the state file keeps, per channel name, the digest of the metadata each
worker opened it with (``meta_seen``) and the number of the last change of its upstream's
metadata (``meta_changes``), and per cache tag the generation the disk tier's cells were
current for (``generations_seen``, one tag per incarnation of a channel created through the
project service).  Found by this audit (2026-12-08), the marked cases failing on the code before:

- none of them was ever dropped: one entry per channel name (and one per incarnation) ever
  served, so a relay whose clients create and delete channels (a pipeline's scratch
  channels) had its state file, read again whole by every worker after every change, grow
  for good.  They now go with the channel: its DELETE (and a collection's or experiment's),
  and, when a relay starts, every channel it no longer serves (dropped from the config);
- a change seen by the background check of a channel being deleted meanwhile, or an open of
  it that finished after the delete, wrote the deleted channel's entries back.

Dropping them must not reopen "a recreated channel serves old bytes": change numbers come
from a clock that never goes back, so a Remote opened before a channel's entries were dropped
never passes for current after a later change, and a name deleted and made again (with
another dtype) is served with its new data and metadata by every worker.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blosc
import numpy as np
import pytest

import voxgate
from voxgate.relay import catalog as catalog_module
from voxgate.relay.cache import TieredCache
from voxgate.relay.catalog import Catalog
from voxgate.relay.config import CacheConfig, ChannelConfig, RelayConfig
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
    rw_request as _get,
)

HEADERS = {"Authorization": f"Token {RW}"}
TABLES = ("meta_seen", "meta_changes")
SHAPE = (16, 64, 64)  # z, y, x


def _state(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _keys(state: dict[str, Any]) -> set[str]:
    """The channel names the metadata bookkeeping has entries for."""
    return {k for t in TABLES for k in state.get(t) or {}}






def _cut(chan: str) -> str:
    return f"/v1/cutout/{chan}/0/0:{SHAPE[2]}/0:{SHAPE[1]}/0:{SHAPE[0]}/"


def _reads(r: RelayProcess, chan: str, want: np.ndarray) -> Callable[[], str]:
    def ask() -> str:
        res = _ok(_get(r, _cut(chan), headers={**HEADERS, "Accept": "application/blosc"}))
        got = np.frombuffer(blosc.decompress(res.content), want.dtype).reshape(want.shape)
        np.testing.assert_array_equal(got, want)
        return str(res.headers["x-voxgate-worker"])
    return ask




# -- 1. a channel deleted through the bossDB dialect ---------------------------------------------
def test_deleted_channels_leave_no_entries_and_a_name_made_again_serves_its_new_data(
        tmp_path: Path) -> None:
    """Fails on the code before: every deleted channel's ``meta_seen`` entry (and each
    incarnation's ``generations_seen`` one) stayed in the state file for good."""
    root = tmp_path / "data"
    root.mkdir()
    state_path = tmp_path / "state.json"
    cfg = shared_state_config(tmp_path, state_path, {})
    relay = start_relay(cfg, free_port(), "--data-root", str(root))
    try:
        _ok(_get(relay, "/v1/collection/lab/", method="POST", json={"description": ""}))
        _ok(_get(relay, "/v1/coord/f1/", method="POST", json={
            "x_start": 0, "x_stop": SHAPE[2], "y_start": 0, "y_stop": SHAPE[1], "z_start": 0,
            "z_stop": SHAPE[0], "x_voxel_size": 4, "y_voxel_size": 4, "z_voxel_size": 40,
            "voxel_unit": "nanometers"}))
        _ok(_get(relay, "/v1/collection/lab/experiment/ex/", method="POST",
                 json={"coord_frame": "f1", "num_hierarchy_levels": 1}))
        made = 0
        for round_, (name, dtype) in enumerate([("ch", "uint8"), ("tmp1", "uint8"),
                                                ("ch", "uint16"), ("tmp2", "uint16"),
                                                ("ch", "uint8")]):
            chan = f"lab/ex/{name}"
            path = f"/v1/collection/lab/experiment/ex/channel/{name}/"
            _ok(_get(relay, path, method="POST", json={"type": "image", "datatype": dtype}))
            made += 1
            # a new channel: zeros of its own dtype on both workers, never the last one's data
            until_both_workers(_reads(relay, chan, np.zeros(SHAPE, dtype)))
            data = np.full(SHAPE, 10 + round_, dtype)
            _ok(_get(relay, _cut(chan), method="POST",
                     content=blosc.compress(data.tobytes(), typesize=data.dtype.itemsize),
                     headers={**HEADERS, "Content-Type": "application/blosc"}))
            until_both_workers(_reads(relay, chan, data))
            info = _ok(_get(relay, f"/precomputed/{chan}/info")).json()
            assert info["data_type"] == dtype
            state = _state(state_path)
            # (what is checked below was made: the workers' bookkeeping of the channel)
            assert chan in state.get("meta_seen", {}), state
            assert len(state.get("generations_seen", {})) == 1, state
            _ok(_get(relay, path, method="DELETE"))
            state = _state(state_path)
            assert chan not in _keys(state), \
                f"round {round_}: the deleted channel's entries stayed: {state}"
            assert state.get("generations_seen", {}) == {}, \
                f"after {made} channels made and deleted: {state.get('generations_seen')}"

            def gone(chan: str = chan) -> str:
                res = _get(relay, _cut(chan))
                assert res.status_code == 404, res.text
                return str(res.headers["x-voxgate-worker"])

            until_both_workers(gone)
            assert chan not in _keys(_state(state_path)), "a worker wrote the entries back"
        _ok(_get(relay, "/v1/collection/lab/experiment/ex/", method="DELETE"))
        _ok(_get(relay, "/v1/collection/lab/", method="DELETE"))
        state = _state(state_path)
        assert not any(k.startswith("lab/") for k in _keys(state)), state
    finally:
        relay.stop()


# -- 2. channels dropped from the config -----------------------------------------------------------
def test_channels_dropped_from_the_config_leave_no_entries_after_a_restart(
        tmp_path: Path) -> None:
    """Fails on the code before: a relay started again without a channel kept its entries."""
    urls = {}
    for name, value in (("a", 3), ("b", 4)):
        url = f"zarr://{tmp_path}/{name}.zarr"
        voxgate.create(url, shape=SHAPE, chunks=(16, 32, 32), dtype="uint8",
                       voxel_size=(8, 8, 8))[:] = np.uint8(value)
        urls[f"lab/em/{name}"] = url
    state_path = tmp_path / "state.json"
    relay = start_relay(shared_state_config(tmp_path, state_path, urls), free_port())
    try:
        until_both_workers(_reads(relay, "lab/em/a", np.full(SHAPE, 3, np.uint8)))
        until_both_workers(_reads(relay, "lab/em/b", np.full(SHAPE, 4, np.uint8)))
    finally:
        relay.stop()
    state = _state(state_path)
    assert _keys(state) >= {"lab/em/a", "lab/em/b"}, state
    assert len(state.get("generations_seen", {})) == 2, state
    relay = start_relay(shared_state_config(tmp_path, state_path, {"lab/em/a": urls["lab/em/a"]}),
                        free_port())
    try:
        state = _state(state_path)
        assert "lab/em/b" not in _keys(state), state
        assert "lab/em/a" in state.get("meta_seen", {}), "a served channel's entry was dropped"
        assert len(state.get("generations_seen", {})) == 1, state
        until_both_workers(_reads(relay, "lab/em/a", np.full(SHAPE, 3, np.uint8)))
        assert _get(relay, _cut("lab/em/b")).status_code == 404
    finally:
        relay.stop()


# -- 3. change numbers never go back ---------------------------------------------------------------
def _catalog(tmp_path: Path, channels: list[ChannelConfig]) -> Catalog:
    cfg = RelayConfig(state_path=tmp_path / "state.json", workers=2, channels=channels,
                      upstream_timeout=30.0)
    return Catalog(cfg, TieredCache(2**24, None, 0))


def test_a_remote_opened_before_the_entries_were_dropped_is_opened_again_after_a_change(
        tmp_path: Path) -> None:
    """Two relays sharing one state file with other configs (or workers of a rolling
    restart): one starts without channel K and drops K's entries while the other serves K.
    A change of K's metadata recorded after that must still make the other open K again:
    with counts per name (the code before, had it dropped them) K's next change was number 1,
    below the 2 its Remote was opened at, and the stale Remote passed for current.  Fails
    on the code before at the first check (nothing was dropped)."""
    url = f"zarr://{tmp_path}/k.zarr"
    voxgate.create(url, shape=SHAPE, chunks=(16, 32, 32), dtype="uint8", voxel_size=(8, 8, 8))
    serving = _catalog(tmp_path, [ChannelConfig("lab", "em", "k", url)])
    entry = serving.channel("lab", "em", "k")
    first = serving.remote(entry)
    serving.note_meta_change(entry)
    serving.note_meta_change(entry)
    second = serving.remote(entry)
    assert second is not first and second.meta_epoch == serving.meta_epoch(entry) >= 2
    other = _catalog(tmp_path, [])  # starts, serving no channel K
    assert "lab/em/k" not in _keys(other.state), other.state
    serving.refresh()
    assert serving.meta_epoch(entry) == 0
    assert serving.remote(entry) is second  # (nothing changed: kept)
    serving.note_meta_change(entry)
    assert serving.meta_epoch(entry) > second.meta_epoch
    third = serving.remote(entry)
    assert third is not second, "a Remote opened before the change passed for current"
    serving.forget_remotes(entry)


# -- 4. a deleted channel's entries are not written back -------------------------------------------
def _local_relay(tmp_path: Path) -> Relay:
    root = tmp_path / "data"
    root.mkdir()
    relay = Relay(RelayConfig(state_path=tmp_path / "state.json", data_root=root, workers=2,
                              cache=CacheConfig(memory_bytes=2**24)))
    cat = relay.catalog
    with cat.lock:
        cat.state["collections"]["lab"] = {"description": "", "creator": "t"}
        cat.state["coords"]["f1"] = {
            "name": "f1", "x_start": 0, "x_stop": SHAPE[2], "y_start": 0, "y_stop": SHAPE[1],
            "z_start": 0, "z_stop": SHAPE[0], "x_voxel_size": 4.0, "y_voxel_size": 4.0,
            "z_voxel_size": 40.0, "voxel_unit": "nanometers"}
        cat.state["experiments"]["lab/ex"] = {"coord_frame": "f1", "num_hierarchy_levels": 1,
                                              "hierarchy_method": "anisotropic"}
        cat.save()
    return relay


def test_a_change_seen_by_a_check_of_a_channel_deleted_meanwhile_is_not_recorded(
        tmp_path: Path) -> None:
    """The background check saw the channel's metadata change, then the channel was deleted
    before the change was recorded.  Fails on the code before: the deleted channel's
    ``meta_changes`` entry was written back, for good."""
    relay = _local_relay(tmp_path)
    cat = relay.catalog
    entry = relay.create_local_channel("lab", "ex", "ch", {"datatype": "uint8"}, "t")
    relay.remote(entry)
    assert "lab/ex/ch" in cat.state["meta_seen"]
    relay.delete_local_channel(entry)
    assert "lab/ex/ch" not in _keys(cat.state)
    cat.note_meta_change(entry)  # (what upstream_meta_changed does once past its own check)
    assert "lab/ex/ch" not in _keys(_state(tmp_path / "state.json"))
    # made again: its first open records its digest; a change numbers above any before
    again = relay.create_local_channel("lab", "ex", "ch", {"datatype": "uint16"}, "t")
    assert relay.remote(again).meta.dtype == np.uint16
    assert "lab/ex/ch" in cat.state["meta_seen"]
    relay.upstream_meta_changed(again)
    assert cat.meta_epoch(again) >= 1
    assert relay.remote(again).meta_epoch == cat.meta_epoch(again)
    relay.delete_local_channel(again)
    assert _keys(_state(tmp_path / "state.json")) == set()
    assert _state(tmp_path / "state.json").get("generations_seen", {}) == {}


def test_an_open_that_finishes_after_its_channel_was_deleted_records_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An open of a channel in flight (a slow upstream) while the channel is deleted through
    another request.  Fails on the code before: the open, finishing after the delete,
    recorded the deleted channel's ``meta_seen`` entry, for good."""
    relay = _local_relay(tmp_path)
    cat = relay.catalog
    entry = relay.create_local_channel("lab", "ex", "ch", {"datatype": "uint8"}, "t")
    opened, go = threading.Event(), threading.Event()
    real = catalog_module.open_remote

    def slow_open(url: str, **kw: Any) -> Any:
        remote = real(url, **kw)
        opened.set()
        assert go.wait(30)
        return remote

    monkeypatch.setattr(catalog_module, "open_remote", slow_open)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(cat.remote(entry)))
    t.start()
    assert opened.wait(30)
    relay.delete_local_channel(entry)
    go.set()
    t.join(30)
    assert result, "the open did not finish"
    assert not relay.catalog.live(result[0])  # (it serves nothing: the channel is gone)
    assert "lab/ex/ch" not in _keys(_state(tmp_path / "state.json")), \
        "the deleted channel's digest was written back"
    result[0].close()
