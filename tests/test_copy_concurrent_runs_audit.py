"""Two runs of one copy at once, and two copies into one destination at once (audit).

A SLURM job relaunched while the first still runs, or ``voxgate cp A B`` typed in two
terminals: the second run of the same copy is refused at once (the first holds its journal's
lock), naming the journal; ``--status`` says the journal's copy is running, ``--forget-all``
leaves it.  Two copies that both find the destination missing do not both create it: the
second waits for the first to create it, then (the same copy) is refused, or (another region)
copies into it.  A killed run's lock does not stand in the way of the rerun, which resumes
(flock, and the O_EXCL lock files of platforms without fcntl).

The runs are ``voxgate cp`` processes started through a small wrapper that makes one block
per chunk (``BLOCK_BYTES = 1``) and can hold a run inside its destination's creation or
inside its n-th chunk write until the test touches a file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
import voxgate.transfer
from voxgate.errors import InvalidRequestError, VoxgateWarning
from voxgate.remotes.zarr import ZarrRemote

SHAPE = (16, 64, 64)
CHUNKS = (8, 16, 16)  # 2 x 4 x 4 = 32 chunks, one block each
DEADLINE = 40.0  # seconds any wait of a test (or of a held run) gives up after

_WRAPPER = r'''
import os, sys, time

def _wait_for(path):
    end = time.monotonic() + float(os.environ["VG_DEADLINE"])
    while not os.path.exists(path):
        if time.monotonic() > end:
            os._exit(3)
        time.sleep(0.005)

import voxgate.storage.locking as locking
import voxgate.transfer
from voxgate.remotes.zarr import ZarrRemote

voxgate.transfer.BLOCK_BYTES = 1  # one block per chunk
if os.environ.get("VG_NO_FLOCK"):
    locking._FLOCK = False  # the lock files of platforms without fcntl
hold = os.environ.get("VG_HOLD")  # a folder: hold the VG_HOLD_AT-th write until HOLD/go
hold_at = int(os.environ.get("VG_HOLD_AT", "1"))
writes = [0]
real_write = ZarrRemote.write

def write(self, box, array, scale=0):
    writes[0] += 1
    if hold and writes[0] == hold_at:
        open(os.path.join(hold, "started"), "w").close()
        _wait_for(os.path.join(hold, "go"))
    time.sleep(0.002)
    return real_write(self, box, array, scale)

ZarrRemote.write = write
hold_create = os.environ.get("VG_HOLD_CREATE")  # a folder: hold the create until go_create
ready = os.environ.get("VG_READY")  # a file touched when the run reaches the creation
real_create = ZarrRemote.create.__func__

def create(cls, *args, **kwargs):
    if ready:
        open(ready, "w").close()
    if hold_create:
        open(os.path.join(hold_create, "at_create"), "w").close()
        _wait_for(os.path.join(hold_create, "go_create"))
    return real_create(cls, *args, **kwargs)

ZarrRemote.create = classmethod(create)
real_flock = locking._flock

def flock(lock, blocking):
    # (a run waiting for the destination's lock has reached the creation too)
    if ready and lock.endswith(".destination.lock"):
        open(ready, "w").close()
    return real_flock(lock, blocking)

locking._flock = flock
from voxgate.cli import main

sys.argv = ["voxgate", *sys.argv[1:]]
main()
'''


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(folder))
    return folder


def _source(tmp_path: Path) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(7)
    data = rng.integers(1, 2**31, SHAPE, dtype=np.uint32)
    data[:8, :16] = 0  # chunks of only the fill value too
    url = f"zarr://{tmp_path / 'src.zarr'}"
    vol = voxgate.create(url, shape=SHAPE, dtype=data.dtype, chunks=CHUNKS,
                         voxel_size=(4, 4, 4))
    vol[...] = data
    return url, data


class _Run:
    """A ``voxgate cp`` process through the wrapper (``env``: VG_* settings)."""

    def __init__(self, tmp_path: Path, state: Path, args: list[str], **env: str) -> None:
        script = tmp_path / "wrapper.py"
        if not script.exists():
            script.write_text(_WRAPPER)
        full = {**os.environ, "VOXGATE_STATE_DIR": str(state), "VG_DEADLINE": str(DEADLINE),
                **env}
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args], env=full, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.out = self.err = ""

    def finish(self) -> int:
        self.out, self.err = self.proc.communicate(timeout=DEADLINE)
        return self.proc.returncode


def _wait(path: Path, *runs: _Run) -> None:
    """Until ``path`` exists; fails when a run ends first (it will never touch it)."""
    end = time.monotonic() + DEADLINE
    while not path.exists():
        for r in runs:
            if r.proc.poll() is not None:
                r.finish()
                pytest.fail(f"the run ended (status {r.proc.returncode}) before {path.name} "
                            f"appeared: {r.out} {r.err}")
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.005)


def _cp(src: str, dst: str, *extra: str) -> list[str]:
    return ["cp", "--no-progress", "--workers", "1", *extra, src, dst]


def _journals(state: Path) -> list[Path]:
    return sorted((state / "transfers").glob("*.journal"))


def _read(url: str) -> np.ndarray:
    return np.asarray(voxgate.open(url)[...])


def test_second_run_of_the_same_copy_is_refused_and_status_says_running(
        tmp_path: Path, state: Path) -> None:
    src, data = _source(tmp_path)
    dst = f"zarr://{tmp_path / 'dst.zarr'}"
    hold = tmp_path / "hold"
    hold.mkdir()
    first = _Run(tmp_path, state, _cp(src, dst), VG_HOLD=str(hold), VG_HOLD_AT="3")
    try:
        _wait(hold / "started", first)
        [journal] = _journals(state)
        recorded = journal.read_text().splitlines()

        second = _Run(tmp_path, state, _cp(src, dst))
        assert second.finish() == 1, second.out + second.err
        assert "InvalidRequestError: another run of this copy" in second.err
        assert f"journal {journal} is locked" in second.err
        assert second.out == ""
        # the refused run neither read the journal into its own nor wrote a line
        assert journal.read_text().splitlines()[:len(recorded)] == recorded

        status = _Run(tmp_path, state, ["cp", "--status"])
        assert status.finish() == 0, status.err
        assert ", running now (" in status.out and str(journal) in status.out

        forget = _Run(tmp_path, state, ["cp", "--forget-all"])
        assert forget.finish() == 0, forget.err
        assert journal.exists(), "--forget-all deleted the journal of a copy running now"
        assert "a run of it is copying now" in forget.out and str(journal) in forget.out
        assert "nothing to forget" not in forget.out
    finally:
        (hold / "go").touch()
    assert first.finish() == 0, first.err
    assert first.out.startswith("created and copied")
    np.testing.assert_array_equal(_read(dst), data)
    # the journal is gone, and so are the locks' files
    assert sorted(os.listdir(state / "transfers")) == []


@pytest.mark.parametrize("second_box", [None, "8:16,0:64,0:64"],
                         ids=["same-copy", "other-region"])
def test_two_copies_finding_the_destination_missing(tmp_path: Path, state: Path,
                                                    second_box: str | None) -> None:
    """Both find it missing: the first creates it; the second waits, finds it, and is refused
    (the same copy) or copies its region into it (another region)."""
    src, data = _source(tmp_path)
    dst = f"zarr://{tmp_path / 'dst.zarr'}"
    hold = tmp_path / "hold"
    hold.mkdir()
    first_box = None if second_box is None else "0:8,0:64,0:64"
    first = _Run(tmp_path, state, _cp(src, dst, *(["--box", first_box] if first_box else [])),
                 VG_HOLD=str(hold), VG_HOLD_CREATE=str(hold))
    try:
        _wait(hold / "at_create", first)  # (the destination is not there yet)
        assert not (tmp_path / "dst.zarr").exists()
        ready = tmp_path / "second-ready"
        second = _Run(tmp_path, state,
                      _cp(src, dst, *(["--box", second_box] if second_box else [])),
                      VG_READY=str(ready))
        _wait(ready, second)  # it has reached the creation too
        (hold / "go_create").touch()
        _wait(hold / "started", first)  # the first created it and copies
        status = second.finish()
    finally:
        (hold / "go").touch()
        (hold / "go_create").touch()
    assert first.finish() == 0, first.out + first.err
    assert first.out.startswith("created and copied"), first.out
    if second_box is None:
        assert status == 1, second.out + second.err
        assert "InvalidRequestError: another run of this copy" in second.err
        assert "exists" not in second.err
        np.testing.assert_array_equal(_read(dst), data)
    else:
        assert status == 0, second.out + second.err
        assert second.out.startswith("copied "), second.out  # (not created again)
        np.testing.assert_array_equal(_read(dst), data)  # both regions
    assert _journals(state) == []


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "lock-files"])
def test_a_killed_run_does_not_block_the_rerun(tmp_path: Path, state: Path,
                                               flock: bool) -> None:
    src, data = _source(tmp_path)
    dst = f"zarr://{tmp_path / 'dst.zarr'}"
    hold = tmp_path / "hold"
    hold.mkdir()
    mode = {} if flock else {"VG_NO_FLOCK": "1"}
    first = _Run(tmp_path, state, _cp(src, dst), VG_HOLD=str(hold), VG_HOLD_AT="6", **mode)
    try:
        _wait(hold / "started", first)
        [journal] = _journals(state)
        end = time.monotonic() + DEADLINE
        while not re.search(r"^0 \d+ \d+ \d+( fill)?$", journal.read_text(), re.M):
            assert time.monotonic() < end, "no block recorded"
            time.sleep(0.005)
        locks = [p.name for p in (state / "transfers").iterdir() if p.name.endswith(".lock")]
        assert locks == [f".{journal.name}.lock"]
        first.proc.kill()
        first.finish()  # (reaped: a lock file's holder is then gone)
    finally:
        (hold / "go").touch()
    assert first.proc.returncode == -signal.SIGKILL
    assert (state / "transfers" / f".{journal.name}.lock").exists()  # (left by the kill)
    rerun = _Run(tmp_path, state, _cp(src, dst), **mode)
    assert rerun.finish() == 0, rerun.out + rerun.err
    m = re.search(r"resumed: (\d+) chunks already done", rerun.out)
    assert m is not None and int(m[1]) >= 1, rerun.out
    np.testing.assert_array_equal(_read(dst), data)
    assert sorted(os.listdir(state / "transfers")) == []


def test_running_copy_in_this_process(tmp_path: Path, state: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy running in a thread: list_journals says so, forget_journals leaves its journal
    (warning), the same copy started meanwhile is refused; once it ends all is as usual."""
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
    src, data = _source(tmp_path)
    dst = f"zarr://{tmp_path / 'dst.zarr'}"
    started, go = threading.Event(), threading.Event()
    real = ZarrRemote.write

    def write(self: Any, box: Any, array: np.ndarray, scale: int = 0) -> None:
        if not started.is_set():
            started.set()
            assert go.wait(DEADLINE)
        real(self, box, array, scale)

    monkeypatch.setattr(ZarrRemote, "write", write)
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["report"] = voxgate.copy(src, dst, progress=False, workers=1)
        except BaseException as exc:  # (reported by the assertions below)
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert started.wait(DEADLINE)
        [status] = voxgate.transfer.list_journals()
        assert status.running is True and "running now" in str(status)
        with pytest.warns(VoxgateWarning, match="a run of it is copying now"):
            assert voxgate.transfer.forget_journals() == []
        assert status.path.exists()
        with pytest.raises(InvalidRequestError, match="another run of this copy") as exc:
            voxgate.copy(src, dst, progress=False, workers=1)
        assert str(status.path) in str(exc.value)
    finally:
        go.set()
        thread.join(DEADLINE)
    assert "error" not in out, out
    assert out["report"].created and out["report"].blocks_written == 32
    np.testing.assert_array_equal(_read(dst), data)
    assert voxgate.transfer.list_journals() == []
    # the same copy again, now that none runs, is not refused
    report = voxgate.copy(src, dst, progress=False, workers=1)
    assert report.blocks_written == 32 and not report.created


def test_the_cli_says_which_journals_it_left_running(tmp_path: Path, state: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``voxgate cp --forget-all`` / ``--forget SRC DST`` beside a running copy printed only
    the warning, then "no unfinished copies; nothing to forget"; now they say which journal
    they left and why (its lock is held here as a running copy holds it)."""
    from click.testing import CliRunner

    from voxgate.cli import main
    from voxgate.storage import file_lock
    from voxgate.transfer import CopyInterrupted

    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
    src, _ = _source(tmp_path)
    dst = f"zarr://{tmp_path / 'dst.zarr'}"
    real, n = ZarrRemote.write, [0]

    def write(self: Any, box: Any, array: np.ndarray, scale: int = 0) -> None:
        n[0] += 1
        if n[0] > 3:
            raise KeyboardInterrupt
        real(self, box, array, scale)

    monkeypatch.setattr(ZarrRemote, "write", write)
    with pytest.raises(CopyInterrupted) as stop:
        voxgate.copy(src, dst, progress=False, workers=1)
    monkeypatch.setattr(ZarrRemote, "write", real)
    with file_lock(str(stop.value.journal), blocking=False):
        res = CliRunner().invoke(main, ["cp", "--status"])
        assert res.exit_code == 0 and "running now" in res.output, res.output
        for args in (["--forget-all"], ["--forget", src, dst]):
            res = CliRunner().invoke(main, ["cp", *args])
            assert res.exit_code == 0, res.output
            assert f"left the journal {stop.value.journal}" in res.output, res.output
            assert "copying now" in res.output and "nothing to forget" not in res.output
            assert stop.value.journal.exists()
    res = CliRunner().invoke(main, ["cp", "--forget", src, dst])
    assert res.exit_code == 0 and "forgot" in res.output and "/32 blocks" in res.output
    assert not stop.value.journal.exists()
