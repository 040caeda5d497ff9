"""Channels created through a relay's project API stay reachable whoever starts the relay next
and however the data root is spelt: given relative on the command line, then absolute or from
another directory, or after the data root was moved.  Each of these answered every read of the
channel with 404 "Channel not found: it was deleted while this read ran" (the channel's store
URL was saved as it was spelt then, and the relay took the data root scan's other spelling for
another channel)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import voxgate

from .conftest import RelayProcess, free_port, start_relay

SHAPE = (16, 40, 56)


def _data() -> np.ndarray:
    return np.random.default_rng(5).integers(1, 250, SHAPE, dtype=np.uint8)


def _serve(tmp_path: Path, data_root: str, cwd: Path) -> RelayProcess:
    config = tmp_path / "conf" / "relay.toml"
    config.parent.mkdir(exist_ok=True)
    config.write_text("")
    return start_relay(config, free_port(), "--data-root", data_root, cwd=cwd)


def _create(relay: RelayProcess) -> None:
    vol = voxgate.create(f"bossdb://{relay.url}/lab/em/raw", shape=SHAPE, chunks=(16, 32, 32),
                         dtype="uint8", voxel_size=(40, 8, 8))
    vol[:] = _data()


def _read(relay: RelayProcess) -> np.ndarray:
    return voxgate.open(f"bossdb://{relay.url}/lab/em/raw").read()


@pytest.mark.parametrize("later", ["absolute", "from another directory"])
def test_a_relative_data_root_keeps_its_channels(tmp_path: Path, later: str) -> None:
    (tmp_path / "work" / "store").mkdir(parents=True)
    first = _serve(tmp_path, "store", cwd=tmp_path / "work")
    try:
        _create(first)
    finally:
        first.stop()
    if later == "absolute":
        again = _serve(tmp_path, str(tmp_path / "work" / "store"), cwd=tmp_path)
    else:
        (tmp_path / "elsewhere").mkdir()
        again = _serve(tmp_path, "../work/store", cwd=tmp_path / "elsewhere")
    try:
        np.testing.assert_array_equal(_read(again), _data())
        # and it is still a channel of the API: written to, read back
        voxgate.open(f"bossdb://{again.url}/lab/em/raw", mode="r+")[0:2, 0:3, 0:4] = 9
        assert (_read(again)[0:2, 0:3, 0:4] == 9).all()
    finally:
        again.stop()


def test_a_moved_data_root_keeps_its_channels(tmp_path: Path) -> None:
    (tmp_path / "old" / "store").mkdir(parents=True)
    first = _serve(tmp_path, str(tmp_path / "old" / "store"), cwd=tmp_path)
    try:
        _create(first)
    finally:
        first.stop()
    shutil.move(tmp_path / "old", tmp_path / "new")
    again = _serve(tmp_path, str(tmp_path / "new" / "store"), cwd=tmp_path)
    try:
        np.testing.assert_array_equal(_read(again), _data())
        # deleted through the API, it is gone (the rebased record is the channel's own)
        with again.client() as http:
            assert http.delete("/v1/collection/lab/experiment/em/channel/raw/").status_code \
                == 204
        with pytest.raises(voxgate.errors.RemoteNotFoundError):
            _read(again)
    finally:
        again.stop()
