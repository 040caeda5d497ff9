"""Chained relays: laptop relay -> lab relay -> the store, through the bossdb:// Remote."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from intern.remote.boss import BossRemote

import voxgate

from .conftest import RO, RW, RelayProcess, make_upstreams, write_config


def _metrics(r: RelayProcess, token: str = RW) -> dict:  # type: ignore[type-arg]
    # /metrics needs a token where reads do (public_read = false)
    return httpx.get(r.url + "/metrics", headers={"Authorization": f"Token {token}"},
                     timeout=10).json()["cache"]


def test_three_tier_chain(tmp_path: Path, relay_factory: Callable[..., RelayProcess]) -> None:
    (tmp_path / "up").mkdir()
    upstreams = make_upstreams(tmp_path / "up")  # this test's own: it writes to them
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    lab = relay_factory(write_config(lab_dir / "relay.toml", upstreams.root))
    laptop_dir = tmp_path / "laptop"
    laptop_dir.mkdir()
    cfg = laptop_dir / "relay.toml"
    cfg.write_text(f"""
[server]
state_path = "{laptop_dir / 'state.json'}"
[cache]
memory_bytes = "64 MiB"
[[channel]]
name = "mine/em/raw"
upstream = "bossdb://{lab.url}/lab/em/raw"
options = {{ token = "{RO}" }}
[[channel]]
name = "mine/em/seg"
upstream = "bossdb://{lab.url}/lab/em/seg"
options = {{ token = "{RW}" }}
[auth]
tokens = {{ "laptop-token" = "read-write" }}
""")
    laptop = relay_factory(cfg)
    client = BossRemote({"protocol": "http", "host": f"127.0.0.1:{laptop.port}",
                         "token": "laptop-token"})
    raw = client.get_channel("raw", "mine", "em")
    assert client.get_experiment("mine", "em").num_hierarchy_levels == 2

    before_lab = _metrics(lab)
    first = client.get_cutout(raw, 0, [13, 201], [7, 233], [3, 37])
    np.testing.assert_array_equal(first, upstreams.image[3:37, 7:233, 13:201])
    after_first_lab = _metrics(lab)
    after_first_laptop = _metrics(laptop, "laptop-token")
    assert after_first_laptop["misses"] > 0
    assert after_first_lab["bytes_served"] > before_lab["bytes_served"]

    second = client.get_cutout(raw, 0, [13, 201], [7, 233], [3, 37])
    np.testing.assert_array_equal(second, first)
    after_second_lab = _metrics(lab)
    after_second_laptop = _metrics(laptop, "laptop-token")
    # the nearest tier served it: the laptop hit its cache (the repeated cutout: its kept
    # encoded response), the lab relay saw nothing new
    assert after_second_laptop["response_hits"] > after_first_laptop["response_hits"]
    assert after_second_laptop["misses"] == after_first_laptop["misses"]
    assert after_second_lab["bytes_served"] == after_first_lab["bytes_served"]
    assert after_second_lab["memory_hits"] == after_first_lab["memory_hits"]

    # resolution 1 through both tiers
    np.testing.assert_array_equal(client.get_cutout(raw, 1, [0, 130], [0, 150], [0, 40]),
                                  upstreams.image1)

    # a write at the laptop goes through the lab relay to the store
    seg = client.get_channel("seg", "mine", "em")
    patch = np.full((2, 3, 4), 2**62 + 5, dtype=np.uint64)
    client.create_cutout(seg, 0, [100, 104], [50, 53], [20, 22], patch)
    store = voxgate.open(f"zarr://{upstreams.root}/seg.zarr")
    np.testing.assert_array_equal(store[20:22, 50:53, 100:104].read(), patch)
    # and the laptop serves it back (read-your-writes through both tiers)
    np.testing.assert_array_equal(client.get_cutout(seg, 0, [100, 104], [50, 53], [20, 22]), patch)
    lab_client = BossRemote({"protocol": "http", "host": f"127.0.0.1:{lab.port}", "token": RO})
    np.testing.assert_array_equal(
        lab_client.get_cutout(lab_client.get_channel("seg", "lab", "em"), 0, [100, 104],
                              [50, 53], [20, 22]), patch)
