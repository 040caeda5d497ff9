"""An in-place map_blocks run that is running now: ``list_journals`` / ``voxgate cp --status``
said nothing of it (``running`` was only set by forget), and a look at its journal's lock (by
``--status`` or forget, which test the lock for a moment) as a run started made that run refuse
at once ("is locked").  Now the listing says "running now", and a starting run waits that
moment out."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import voxgate
from voxgate.cli import main
from voxgate.storage import file_lock

mb = importlib.import_module("voxgate.services.map_blocks")
SHAPE, CHUNKS = (16, 32, 32), (8, 16, 16)  # 8 blocks of one chunk each
DEADLINE = 30.0


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(tmp_path / "state"))
    u = f"zarr://{tmp_path}/img.zarr"
    v = voxgate.create(u, shape=SHAPE, dtype="uint8", chunks=CHUNKS, voxel_size=(8, 8, 8))
    v[:] = (np.arange(np.prod(SHAPE)) % 200).astype(np.uint8).reshape(SHAPE)
    return u


def _in_place(url: str, fn: object) -> object:
    return voxgate.map_blocks(fn, url, voxgate.open(url, mode="r+"), block=CHUNKS,
                              workers=1)  # type: ignore[arg-type]


def test_a_running_in_place_run_is_listed_as_running(url: str) -> None:
    before = voxgate.open(url).read()
    started, go = threading.Event(), threading.Event()

    def add_one(a: np.ndarray) -> np.ndarray:
        if not started.is_set():
            started.set()
            assert go.wait(DEADLINE)
        return a + 1

    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["result"] = _in_place(url, add_one)
        except BaseException as exc:  # (reported below)
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert started.wait(DEADLINE)
        [j] = [j for j in mb.list_journals() if j.path is not None]
        assert j.running is True and "running now" in str(j)
        res = CliRunner().invoke(main, ["cp", "--status"])
        assert res.exit_code == 0 and "running now" in res.output, res.output
    finally:
        go.set()
        thread.join(DEADLINE)
    assert "error" not in out, out
    np.testing.assert_array_equal(voxgate.open(url).read(), before + 1)
    assert [j for j in mb.list_journals() if j.path is not None] == []


def test_a_look_at_the_lock_as_a_run_starts_does_not_refuse_it(url: str) -> None:
    """A stopped run's journal, looked at (its lock held 0.1 s, as --status holds it for a
    moment) just as the same call starts again: the run waits and finishes the blocks left."""
    before = voxgate.open(url).read()
    calls = [0]

    def add_one_stopping(a: np.ndarray) -> np.ndarray:
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt
        return a + 1

    with pytest.raises(KeyboardInterrupt):
        _in_place(url, add_one_stopping)
    [j] = [j for j in mb.list_journals() if j.path is not None]
    assert j.running is False and j.blocks_done == 3
    looked, release = threading.Event(), threading.Event()

    def look() -> None:
        with file_lock(str(j.path), blocking=False):
            looked.set()
            release.wait(0.1)

    t = threading.Thread(target=look)
    t.start()
    assert looked.wait(DEADLINE)
    _in_place(url, add_one_stopping)  # (calls on: no stop again)
    t.join(DEADLINE)
    np.testing.assert_array_equal(voxgate.open(url).read(), before + 1)
