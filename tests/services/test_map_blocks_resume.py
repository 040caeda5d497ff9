"""map_blocks writing into its own source, stopped and run again: ``fn`` is applied exactly once
to every voxel (a journal records the blocks done), a rerun that would apply it twice is refused,
and the journal is gone once a run completes."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.remotes.memory import delete as delete_mem

mb_module = importlib.import_module("voxgate.services.map_blocks")

SHAPE = (16, 32, 32)
CHUNKS = (8, 16, 16)  # 8 blocks of one chunk each
BLOCKS = 8


class Boom(RuntimeError):
    """fn's failure on one block the first time (not transient: it stops the run)."""


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def data() -> np.ndarray:
    return (np.arange(np.prod(SHAPE)) % 200).astype(np.uint8).reshape(SHAPE)


@pytest.fixture(params=["zarr", "mem"])
def vol(request: pytest.FixtureRequest, tmp_path: Path, data: np.ndarray) -> Iterator[str]:
    url = f"zarr://{tmp_path}/img.zarr" if request.param == "zarr" else "mem://resume-test"
    v = voxgate.create(url, shape=SHAPE, dtype="uint8", chunks=CHUNKS, voxel_size=(8, 8, 8))
    v[:] = data
    yield url
    if request.param == "mem":
        delete_mem("resume-test")


def stops_after(k: int, exc: BaseException) -> tuple[Callable[[np.ndarray], np.ndarray],
                                                     list[int]]:
    """``a + 1``, raising ``exc`` on its (k+1)-th call, the first time only; and its calls."""
    calls = [0]

    def add_one(a: np.ndarray) -> np.ndarray:
        calls[0] += 1
        if calls[0] == k + 1:
            raise exc
        return a + 1

    return add_one, calls


def leftovers(state: Path) -> list[Path]:
    folder = state / "map_blocks"
    return sorted(folder.rglob("*")) if folder.exists() else []


def run(url: str, fn: Callable[[np.ndarray], np.ndarray], **kw: object) -> voxgate.Volume:
    return voxgate.map_blocks(fn, url, voxgate.open(url, mode="r+"), block=CHUNKS, **kw)


@pytest.mark.parametrize("stop", [Boom("block failed"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
def test_a_rerun_applies_fn_once(state: Path, vol: str, data: np.ndarray,
                                 stop: BaseException) -> None:
    """Old code: the rerun applied fn again to the 3 blocks done (+2 there)."""
    fn, calls = stops_after(3, stop)
    with pytest.raises(type(stop)) as info:
        run(vol, fn, workers=1)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "3 of 8 blocks are done and recorded" in notes
    assert "run the same call again" in notes
    got = voxgate.open(vol).read()
    assert (got == data + 1).sum() == 3 * np.prod(CHUNKS)  # 3 blocks done, the rest untouched
    if vol.startswith("zarr"):
        assert leftovers(state)  # the journal of the unfinished run
    calls[0] = 100  # (fn raises no more)
    run(vol, fn, workers=1)
    assert calls[0] == 100 + BLOCKS - 3  # the blocks done were not run again
    np.testing.assert_array_equal(voxgate.open(vol).read(), data + 1)
    assert leftovers(state) == []  # the journal is gone once the run completes
    assert not mb_module._memory_journals
    run(vol, lambda a: a + 1, workers=2)  # a new run after a complete one applies fn again
    np.testing.assert_array_equal(voxgate.open(vol).read(), data + 2)


def test_a_rerun_with_threads(state: Path, vol: str, data: np.ndarray) -> None:
    """Several blocks in flight when one fails: those finish and are recorded too."""
    fn, _ = stops_after(4, Boom("block failed"))
    with pytest.raises(Boom):
        run(vol, fn, workers=2)
    run(vol, fn, workers=2)
    np.testing.assert_array_equal(voxgate.open(vol).read(), data + 1)
    assert leftovers(state) == []


def test_another_block_plan_is_refused(state: Path, vol: str, data: np.ndarray) -> None:
    """Old code: the rerun with other blocks ran (fn twice on the blocks done)."""
    fn, _ = stops_after(2, Boom("block failed"))
    with pytest.raises(Boom):
        run(vol, fn, workers=1)
    half = voxgate.open(vol).read()
    with pytest.raises(InvalidRequestError, match=r"an earlier run did not finish \(2 of 8 "
                       r"blocks done.*another block plan.*block=\(8, 16, 16\).*"
                       r"block=\(16, 32, 32\).*apply fn to them twice.*resume=False"):
        voxgate.map_blocks(fn, vol, voxgate.open(vol, mode="r+"), block=(16, 32, 32))
    with pytest.raises(InvalidRequestError, match="another block plan"):  # another view
        voxgate.map_blocks(fn, voxgate.open(vol)[:8], voxgate.open(vol, mode="r+")[:8],
                           block=CHUNKS)
    np.testing.assert_array_equal(voxgate.open(vol).read(), half)  # refused: nothing written
    # the volume restored to its state before the first run: resume=False starts over
    voxgate.open(vol, mode="r+")[:] = data
    voxgate.map_blocks(fn, vol, voxgate.open(vol, mode="r+"), block=(16, 32, 32), resume=False)
    np.testing.assert_array_equal(voxgate.open(vol).read(), data + 1)
    assert leftovers(state) == []


def test_another_function_is_refused_unless_resume(state: Path, vol: str,
                                                   data: np.ndarray) -> None:
    fn, _ = stops_after(2, Boom("block failed"))
    with pytest.raises(Boom):
        run(vol, fn, workers=1)
    with pytest.raises(InvalidRequestError, match=r"another function .*add_one.*this call's fn "
                       r"is .*<lambda>.*resume=True"):
        run(vol, lambda a: a + 1)
    run(vol, lambda a: a + 1, resume=True)  # e.g. fn fixed after it stopped the run
    np.testing.assert_array_equal(voxgate.open(vol).read(), data + 1)
    assert leftovers(state) == []


def test_resume_needs_a_run_into_its_source(state: Path, vol: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="resume= is for a run writing into its own"):
        voxgate.map_blocks(lambda a: a, vol, resume=True)
    with pytest.raises(InvalidRequestError, match="resume= is for a run writing into its own"):
        voxgate.map_blocks(lambda a: a, vol, f"zarr://{tmp_path}/o.zarr", resume=False)
    assert not os.path.exists(tmp_path / "o.zarr")
    with pytest.raises(InvalidRequestError, match="resume must be None, True or False"):
        run(vol, lambda a: a, resume="yes")


def test_two_runs_into_one_source_at_once_are_refused(state: Path, vol: str,
                                                      data: np.ndarray) -> None:
    refused: list[Exception] = []

    def nested(a: np.ndarray) -> np.ndarray:
        if not refused:
            try:
                run(vol, lambda b: b + 7)
            except InvalidRequestError as exc:
                refused.append(exc)
        return a + 1

    run(vol, nested, workers=1)
    assert refused and "another run is writing into it now" in str(refused[0])
    np.testing.assert_array_equal(voxgate.open(vol).read(), data + 1)


KILLED_MID_WRITE = """
import os, sys
import numpy as np
import voxgate
from voxgate.volume import Volume

url, kill_at = sys.argv[1], int(sys.argv[2])
real_write, writes = Volume.write, [0]

def write(self, data, box=None, **kw):
    if box is None:  # (the view's own write)
        return real_write(self, data, **kw)
    writes[0] += 1
    if writes[0] == kill_at:  # half of this block's chunks written, then the process dies
        half = box.start.z + box.shape[0] // 2
        real_write(self, np.ascontiguousarray(data[: half - box.start.z]),
                   voxgate.Box(box.start, (half, box.stop.y, box.stop.x)))
        os._exit(9)
    return real_write(self, data, box, **kw)

Volume.write = write
voxgate.map_blocks(lambda a: a + 1, url, voxgate.open(url, mode="r+"), block=(8, 32, 32),
                   workers=1)
"""


def test_a_process_killed_mid_block(state: Path, tmp_path: Path, data: np.ndarray) -> None:
    """Killed (os._exit) with half a block written: the rerun writes that block's saved result
    instead of applying fn to its half-overwritten voxels (old code: +2 on the blocks done
    and on the written half)."""
    url = f"zarr://{tmp_path}/img.zarr"
    voxgate.create(url, shape=SHAPE, dtype="uint8", chunks=CHUNKS, voxel_size=(8, 8, 8))[:] = data
    env = {**os.environ, "VOXGATE_STATE_DIR": str(state)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_MID_WRITE), url, "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr
    got = voxgate.open(url).read()
    assert (got[:8] == data[:8] + 1).all()  # the first block (of two) done
    assert (got[8:12] == data[8:12] + 1).all() and (got[12:] == data[12:]).all()  # half
    voxgate.map_blocks(lambda a: a + 1, url, voxgate.open(url, mode="r+"), block=(8, 32, 32))
    np.testing.assert_array_equal(voxgate.open(url).read(), data + 1)
    assert leftovers(state) == []


def test_the_journal_is_the_volumes_not_its_relative_name(state: Path, tmp_path: Path,
                                                          data: np.ndarray,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``zarr://img.zarr`` in two directories are two volumes: the second runs every block,
    and the first, run again, finishes its own (old code: +2 on the first's blocks done)."""
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
        monkeypatch.chdir(tmp_path / d)
        voxgate.create("zarr://img.zarr", shape=SHAPE, dtype="uint8", chunks=CHUNKS,
                       voxel_size=(8, 8, 8))[:] = data
    monkeypatch.chdir(tmp_path / "one")
    fn, calls = stops_after(3, Boom("block failed"))
    with pytest.raises(Boom):
        run("zarr://img.zarr", fn, workers=1)
    monkeypatch.chdir(tmp_path / "two")
    calls[0] = 100
    run("zarr://img.zarr", fn, workers=1)
    assert calls[0] == 100 + BLOCKS
    np.testing.assert_array_equal(voxgate.open("zarr://img.zarr").read(), data + 1)
    monkeypatch.chdir(tmp_path / "one")
    run("zarr://img.zarr", fn, workers=1)
    np.testing.assert_array_equal(voxgate.open("zarr://img.zarr").read(), data + 1)
    assert leftovers(state) == []


def test_a_mem_volume_created_again_is_another_volume(state: Path, data: np.ndarray) -> None:
    """An unfinished run's journal on ``mem://x`` is not resumed on a new ``mem://x`` (which
    then stops and resumes from its own; old code: +2 on the blocks done)."""
    def make() -> None:
        voxgate.create("mem://again", shape=SHAPE, dtype="uint8", chunks=CHUNKS,
                       voxel_size=(8, 8, 8))[:] = data
    make()
    try:
        fn, calls = stops_after(3, Boom("block failed"))
        with pytest.raises(Boom):
            run("mem://again", fn, workers=1)
        delete_mem("again")
        make()
        fn, calls = stops_after(5, Boom("block failed"))
        with pytest.raises(Boom) as info:  # every block runs: none is done in this volume
            run("mem://again", fn, workers=1)
        assert "5 of 8 blocks are done" in "\n".join(info.value.__notes__)
        calls[0] = 100
        run("mem://again", fn, workers=1)  # and it resumes from its own journal
        assert calls[0] == 100 + BLOCKS - 5
        np.testing.assert_array_equal(voxgate.open("mem://again").read(), data + 1)
        assert not mb_module._memory_journals
    finally:
        delete_mem("again")


def test_no_journal_no_run(tmp_path: Path, data: np.ndarray,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A journal that cannot be kept (the state directory not writable) stops the run before
    any block is written (as voxgate.copy does), saying what to set."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(blocked))
    url = f"zarr://{tmp_path}/img.zarr"
    voxgate.create(url, shape=SHAPE, dtype="uint8", chunks=CHUNKS, voxel_size=(8, 8, 8))[:] = data
    with pytest.raises(OSError) as info:
        run(url, lambda a: a + 1)
    assert "set VOXGATE_STATE_DIR to a writable directory" in "\n".join(info.value.__notes__)
    np.testing.assert_array_equal(voxgate.open(url).read(), data)


def zarr_of(tmp_path: Path, data: np.ndarray) -> str:
    """``tmp_path/img.zarr`` holding ``data``; its URL."""
    url = f"zarr://{tmp_path}/img.zarr"
    voxgate.create(url, shape=SHAPE, dtype="uint8", chunks=CHUNKS, voxel_size=(8, 8, 8))[:] = data
    return url


def test_a_volume_made_again_under_the_same_name_is_not_skipped(
        state: Path, tmp_path: Path, data: np.ndarray) -> None:
    """Stopped after 3 blocks; the volume is then deleted and written again from the raw data
    under the same name (a user starting over).  The journal's blocks no longer hold what the
    run wrote, so the rerun is refused before writing anything, instead of skipping 3 blocks
    that would never get fn (the old journal, keyed by name, skipped them silently); resume=False
    then applies fn to every block."""
    import shutil

    url = zarr_of(tmp_path, data)
    fn, calls = stops_after(3, Boom("block failed"))
    with pytest.raises(Boom):
        run(url, fn, workers=1)
    shutil.rmtree(tmp_path / "img.zarr")
    zarr_of(tmp_path, data)
    calls[0] = 100
    with pytest.raises(InvalidRequestError, match="no longer holds what that run wrote"):
        run(url, fn, workers=1)
    assert calls[0] == 100  # refused before any block ran
    np.testing.assert_array_equal(voxgate.open(url).read(), data)
    run(url, fn, workers=1, resume=False)
    np.testing.assert_array_equal(voxgate.open(url).read(), data + 1)
    assert leftovers(state) == []


def test_the_check_of_the_blocks_done_reads_each_once(
        state: Path, tmp_path: Path, data: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun after an interruption reads the recorded blocks once to check them, and they
    pass: the result is fn applied once."""
    url = zarr_of(tmp_path, data)
    fn, calls = stops_after(5, Boom("block failed"))
    with pytest.raises(Boom):
        run(url, fn, workers=1)
    checked: list[object] = []
    real = mb_module._crc
    monkeypatch.setattr(mb_module, "_crc", lambda a: checked.append(a.shape) or real(a))
    calls[0] = 100
    run(url, fn, workers=1)
    # 5 blocks checked, 3 blocks recorded as they finish
    assert len(checked) == 5 + 3
    np.testing.assert_array_equal(voxgate.open(url).read(), data + 1)
