from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from voxgate.remotes.memory import MemoryRemote


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Copy journals go to a temporary folder, and mem:// volumes do not leak between tests."""
    state = tmp_path_factory.mktemp("state")
    old = os.environ.get("VOXGATE_STATE_DIR")
    os.environ["VOXGATE_STATE_DIR"] = str(state)
    yield
    MemoryRemote.clear()
    if old is None:
        os.environ.pop("VOXGATE_STATE_DIR", None)
    else:
        os.environ["VOXGATE_STATE_DIR"] = old


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path
