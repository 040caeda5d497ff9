"""A relay channel that forwards each client's token (``forward_token = true``) in front of an
upstream that wants one (here a second relay with [auth]), read and written by the real
``intern`` client with two tokens.

Two defects: the channel's metadata, coordinate frame and experiment were read with no token
(the upstream answered 401, so ``get_channel`` failed for every client); and each token's view
keeps cells of its own, but a write through one token dropped only its own view's cells, so
another token that had read the region read the old voxels again until they were evicted.  Now
the request's token opens the upstream for its metadata and a write drops every open view's
cells of the region.  (A view opened after a restart does not serve its disk cells of an
earlier life once a write went through: the write generations already see to that, and the
last part of the test keeps it so.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from intern.remote.boss import BossRemote

from .conftest import RO, RW, RelayProcess, make_upstreams, write_config


def _front(tmp_path: Path, lab: RelayProcess) -> Path:
    front_dir = tmp_path / "front"
    front_dir.mkdir(exist_ok=True)
    cfg = front_dir / "relay.toml"
    cfg.write_text(f"""
[server]
state_path = "{front_dir / 'state.json'}"
[cache]
memory_bytes = "64 MiB"
disk_path = "{front_dir / 'disk'}"
disk_bytes = "1 GiB"
[[channel]]
name = "mine/em/seg"
upstream = "bossdb://{lab.url}/lab/em/seg"
forward_token = true
[auth]
tokens = {{ "{RW}" = "read-write", "{RO}" = "read" }}
""")
    return cfg


def _clients(front: RelayProcess) -> tuple[BossRemote, BossRemote]:
    writer, reader = (BossRemote({"protocol": "http", "host": f"127.0.0.1:{front.port}",
                                  "token": t}) for t in (RW, RO))
    return writer, reader


def test_a_write_by_one_token_is_read_by_another(
        tmp_path: Path, relay_factory: Callable[..., RelayProcess]) -> None:
    (tmp_path / "up").mkdir()
    upstreams = make_upstreams(tmp_path / "up")
    (tmp_path / "lab").mkdir()
    lab = relay_factory(write_config(tmp_path / "lab" / "relay.toml", upstreams.root))
    cfg = _front(tmp_path, lab)
    front = relay_factory(cfg)
    writer, reader = _clients(front)
    seg_r = reader.get_channel("seg", "mine", "em")  # (was 403: metadata read with no token)
    seg_w = writer.get_channel("seg", "mine", "em")
    assert seg_r.datatype == "uint64" and reader.get_experiment("mine", "em").name == "em"
    x, y, z = [100, 132], [50, 82], [20, 24]
    before = reader.get_cutout(seg_r, 0, x, y, z)
    np.testing.assert_array_equal(before, upstreams.labels[20:24, 50:82, 100:132])
    writer.get_cutout(seg_w, 0, x, y, z)  # (the writer's own view cached too)
    patch = np.full((4, 32, 32), 2**62 + 5, dtype=np.uint64)
    writer.create_cutout(seg_w, 0, x, y, z, patch)
    np.testing.assert_array_equal(writer.get_cutout(seg_w, 0, x, y, z), patch)
    # the other token read the region before the write: its view's cells were the old voxels
    np.testing.assert_array_equal(reader.get_cutout(seg_r, 0, x, y, z), patch)
    np.testing.assert_array_equal(reader.get_cutout(seg_r, 0, [96, 140], y, z)[:, :, 4:36],
                                  patch)

    # a restarted relay: the reader's cells of the region are on disk from the last life;
    # the writer writes before the reader's view is opened again
    writer.get_cutout(seg_w, 0, x, y, z)
    after_first = reader.get_cutout(seg_r, 0, x, y, z)  # (its cells: on disk, behind)
    np.testing.assert_array_equal(after_first, patch)
    front.stop()
    front = relay_factory(cfg, port=front.port)
    writer, reader = _clients(front)
    second = np.full((4, 32, 32), 77, dtype=np.uint64)
    writer.create_cutout(writer.get_channel("seg", "mine", "em"), 0, x, y, z, second)
    np.testing.assert_array_equal(
        reader.get_cutout(reader.get_channel("seg", "mine", "em"), 0, x, y, z), second)
