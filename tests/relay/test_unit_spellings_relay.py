"""The relay's bossDB coordinate frame of a channel whose voxel size is in ``μm`` (Greek mu):
announced as nanometers with sizes 1000x too small (see tests/test_unit_spellings.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import voxgate
from voxgate.geometry import VoxelSize

from .conftest import RW, RelayProcess


def test_relay_coordinate_frame_of_a_micrometre_channel(
        tmp_path: Path, relay_factory: Callable[..., RelayProcess]) -> None:
    vol = voxgate.create(f"n5://{tmp_path}/em.n5", shape=(4, 8, 8), chunks=(4, 8, 8),
                         dtype="uint8", voxel_size=VoxelSize.of((0.04, 0.008, 0.008), "μm"))
    vol[:] = 1
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f"""
[server]
state_path = "{tmp_path / 'state.json'}"
[[channel]]
name = "c/e/em"
upstream = "n5://{tmp_path}/em.n5"
[auth]
tokens = {{ "{RW}" = "read-write" }}
""")
    relay = relay_factory(cfg)
    with httpx.Client(base_url=relay.url, headers={"Authorization": f"Token {RW}"},
                      timeout=10) as http:
        frame_name = http.get("/v1/collection/c/experiment/e/").json()["coord_frame"]
        frame = http.get(f"/v1/coord/{frame_name}/").json()
    # in bossDB's micrometers (it was "nanometers" with 0.008)
    assert frame["voxel_unit"] == "micrometers"
    assert (frame["x_voxel_size"], frame["z_voxel_size"]) == pytest.approx((0.008, 0.04))
