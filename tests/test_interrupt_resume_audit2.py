"""Long operations interrupted, then run again (black-box audit).

voxgate.copy between local zarr / precomputed / N5 stores, stopped by a KeyboardInterrupt
raised inside a destination write (or by a SIGINT that a worker thread's write sends, which
the main thread takes), then the same copy run again: the destination must equal the source
bit for bit, the rerun must say it resumed and skip exactly the blocks the interrupted run's
CopyInterrupted counted, and the journal must be gone.  With the source changed in between,
``verify=True`` must end with the new source.  ``voxgate cp`` in a subprocess stopped by
SIGINT, then run again.  voxgate.downsample and voxgate.connected_components stopped by a
KeyboardInterrupt inside a write, then run again, against numpy / cc3d references.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
import voxgate.errors
import voxgate.transfer
from voxgate.geometry import Box
from voxgate.remotes.n5 import N5Remote
from voxgate.remotes.precomputed.remote import PrecomputedRemote
from voxgate.remotes.zarr import ZarrRemote

from .services.numpy_reference import downsample_scales

SHAPE = (16, 32, 48)
CHUNKS = (8, 8, 8)  # 2 x 4 x 6 = 48 chunks


def _labels(seed: int = 3) -> np.ndarray:
    """uint64 ids with some chunks of only 0 (so blocks of only the fill value exist too)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(1, 2**40, SHAPE, dtype=np.uint64)
    arr[:8, :8, :] = 0  # whole chunks of 0
    arr[8:, 16:24, 8:16] = 0
    return arr


_CLASSES = {"zarr": ZarrRemote, "precomputed": PrecomputedRemote, "n5": N5Remote}


def _url(fmt: str, path: Path) -> str:
    return f"{fmt}://{'file://' if fmt == 'precomputed' else ''}{path}"


def _make(fmt: str, path: Path, data: np.ndarray) -> str:
    url = _url(fmt, path)
    vol = voxgate.create(url, shape=data.shape, dtype=data.dtype, chunks=CHUNKS,
                         voxel_size=(4, 4, 4), kind="segmentation")
    vol[...] = data
    return url


class _Tripwire:
    """Wraps ``cls.write``: after ``after`` writes have gone through, the next one calls
    ``action`` (before or after the real write, per ``when``), once.  Records the boxes
    written while ``record`` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type, after: int,
                 action: Callable[[], None], when: str = "before") -> None:
        self.calls = 0
        self.fired = False
        self.fired_at: tuple[int, Box] | None = None
        self.armed = True
        self.boxes: list[tuple[int, Box]] = []
        self._lock = threading.Lock()
        real = cls.write

        def write(remote: Any, box: Box, array: np.ndarray, scale: int = 0) -> None:
            with self._lock:
                self.calls += 1
                fire = self.armed and not self.fired and self.calls > after
                if fire:
                    self.fired, self.fired_at = True, (scale, box)
                if not self.armed:
                    self.boxes.append((scale, box))
            if fire and when == "before":
                action()
            real(remote, box, array, scale)
            if fire and when == "after":
                action()

        monkeypatch.setattr(cls, "write", write)

    def disarm(self) -> None:
        with self._lock:
            self.armed = False


def _raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def _sigint_to_process() -> None:
    signal.raise_signal(signal.SIGINT)  # the main thread takes it (Python's handler)
    time.sleep(0.05)  # the write goes on, as a write does when Ctrl-C is pressed


def _block_box(key: tuple[int, ...], block: tuple[int, int, int]) -> Box:
    _, z, y, x = key
    lo = (z * block[0], y * block[1], x * block[2])
    return Box(lo, tuple(a + b for a, b in zip(lo, block, strict=True)))


def _read_all(url: str) -> np.ndarray:
    vol = voxgate.open(url)
    return np.asarray(vol[...])


PAIRS = [("zarr", "precomputed"), ("precomputed", "n5"), ("n5", "zarr")]


@pytest.mark.parametrize(("sfmt", "dfmt"), PAIRS)
@pytest.mark.parametrize("how", ["raise_in_write", "sigint_from_worker"])
def test_copy_interrupted_then_rerun_resumes_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python_ctrl_c: None,
        sfmt: str, dfmt: str, how: str) -> None:
    data = _labels()
    src = _make(sfmt, tmp_path / "src", data)
    dst = _url(dfmt, tmp_path / "dst")
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)  # one block per chunk: 48
    action = _raise_keyboard_interrupt if how == "raise_in_write" else _sigint_to_process
    wire = _Tripwire(monkeypatch, _CLASSES[dfmt], after=5, action=action)
    with pytest.raises(voxgate.transfer.CopyInterrupted) as info:
        voxgate.copy(src, dst, workers=2, progress=False)
    stop = info.value
    assert wire.fired
    assert stop.blocks_total == 48
    assert 0 < stop.blocks_done < stop.blocks_total
    assert stop.journal.exists()
    done, created = voxgate.transfer._Journal.read_done(stop.journal)
    assert created and len(done) == stop.blocks_done
    status = voxgate.transfer.list_journals()
    assert [(s.path, s.blocks_done) for s in status] == [(stop.journal, stop.blocks_done)]

    wire.disarm()
    report = voxgate.copy(src, dst, workers=2, progress=False)
    assert report.resumed
    assert not report.created
    assert report.blocks_skipped == stop.blocks_done
    assert report.blocks_written == stop.blocks_total - stop.blocks_done
    assert report.blocks_changed == 0
    assert len(wire.boxes) >= report.blocks_written - report.blocks_empty > 0
    # none of the blocks the journal listed was written again
    for scale, box in wire.boxes:
        assert scale == 0
        for key in done:
            assert box.intersect(_block_box(key, CHUNKS)).is_empty(), (box, key)
    out = _read_all(dst)
    assert out.dtype == data.dtype
    np.testing.assert_array_equal(out, data)
    assert voxgate.transfer.list_journals() == []
    assert not stop.journal.exists()


@pytest.mark.parametrize(("sfmt", "dfmt"), PAIRS)
@pytest.mark.parametrize("when", ["before", "after"])
def test_copy_rerun_with_verify_after_the_source_changed_ends_equal_to_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfmt: str, dfmt: str,
        when: str) -> None:
    """The interrupt comes inside a block's write: before it wrote (nothing of the block is
    in the destination) or after (the block is there but not in the journal, as after a kill
    between the write and the journal's line).  The source then changes in blocks the journal
    lists, in the interrupted block (to all 0, the fill value) and in blocks not reached."""
    _verify_after_change(tmp_path, monkeypatch, sfmt, dfmt, when, None)


def test_copy_rerun_with_verify_on_a_cluster_after_the_source_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: Any) -> None:
    """The same, the rerun on a dask.distributed cluster: its workers check the interrupted
    block's chunks as the threads do (``_copy_block``)."""
    _verify_after_change(tmp_path, monkeypatch, "n5", "zarr", "after", cluster)


def _verify_after_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sfmt: str,
                         dfmt: str, when: str, client: Any) -> None:
    data = _labels()
    src = _make(sfmt, tmp_path / "src", data)
    dst = _url(dfmt, tmp_path / "dst")
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)  # one block per chunk: 48
    wire = _Tripwire(monkeypatch, _CLASSES[dfmt], after=12, action=_raise_keyboard_interrupt,
                     when=when)
    with pytest.raises(voxgate.transfer.CopyInterrupted) as info:
        voxgate.copy(src, dst, workers=2, progress=False)
    stop = info.value
    assert wire.fired_at is not None
    done, _ = voxgate.transfer._Journal.read_done(stop.journal)
    assert 0 < len(done) == stop.blocks_done < stop.blocks_total
    hit = wire.fired_at[1]
    new = data.copy()
    new[hit.slices()] = 0  # the interrupted block now holds only the fill value
    listed = [k for k in sorted(done)
              if _block_box(k, CHUNKS).intersect(hit).is_empty()
              and new[_block_box(k, CHUNKS).slices()].any()]
    assert len(listed) >= 2, sorted(done)
    new[_block_box(listed[0], CHUNKS).slices()] += np.uint64(7)  # a finished block changed
    new[_block_box(listed[-1], CHUNKS).slices()] = 0  # and one now all fill
    new[-8:, -8:, -8:] = 99  # a block not reached yet (or reached: then it changed too)
    voxgate.open(src, mode="r+")[...] = new
    changed = sum(not np.array_equal(new[b], data[b])
                  for b in (_block_box(k, CHUNKS).slices() for k in done))

    wire.disarm()
    report = voxgate.copy(src, dst, workers=2 if client is None else None, client=client,
                          progress=False, verify=True)
    assert report.resumed
    assert report.blocks_changed == changed >= 2
    assert report.blocks_skipped == stop.blocks_done - changed
    np.testing.assert_array_equal(_read_all(dst), new)
    if dfmt != "precomputed":  # (precomputed keeps chunks of 0 for CloudVolume)
        # a chunk of only 0 no run wrote stays absent: the copy stays sparse
        absent = {tuple(int(i) for i in c) for c in voxgate.open(dst).missing_chunks()}
        assert (1, 2, 1) in absent
    assert voxgate.transfer.list_journals() == []


# ``voxgate cp`` in a process of its own: the same CLI entry point, with blocks of one chunk
# (the copy's 8 MiB blocks would make a few-MB volume one block) and a pause in each
# destination write, so that a SIGINT reliably lands part way
_CLI = textwrap.dedent("""
    import os, sys, time
    import voxgate.transfer
    from voxgate.remotes.precomputed.remote import PrecomputedRemote

    voxgate.transfer.BLOCK_BYTES = 1
    real = PrecomputedRemote.write
    pause = float(os.environ["AUDIT_PAUSE"])

    def write(self, box, array, scale=0):
        time.sleep(pause)
        real(self, box, array, scale)

    PrecomputedRemote.write = write
    from voxgate.cli import main

    sys.argv[0] = "voxgate"
    main()
""")


def _journal_blocks(state: Path) -> int:
    n = 0
    for path in (state / "transfers").glob("*.journal"):
        lines = path.read_text(encoding="utf-8").split("\n")[1:-1]  # (whole lines only)
        n += sum(1 for ln in lines if ln and ln != "created")
    return n


def _cli_env(state: Path, pause: float) -> dict[str, str]:
    env = dict(os.environ)
    env.update(VOXGATE_STATE_DIR=str(state), AUDIT_PAUSE=str(pause), PYTHONUNBUFFERED="1")
    return env


def test_cli_cp_sigint_then_same_command_again_finishes(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    data = rng.integers(1, 255, (16, 64, 64), dtype=np.uint8)  # 2 x 8 x 8 = 128 chunks
    data[:, :8, :] = 0
    src = f"zarr://{tmp_path}/src.zarr"
    voxgate.create(src, shape=data.shape, dtype="uint8", chunks=(8, 8, 8),
                   voxel_size=(4, 4, 4), kind="image")[...] = data
    dst = f"precomputed://file://{tmp_path}/dst"
    state = tmp_path / "state"
    script = tmp_path / "cli.py"
    script.write_text(_CLI, encoding="utf-8")
    cmd = [sys.executable, str(script), "cp", src, dst, "--workers", "2", "--no-progress"]
    # SIGINT as a shell leaves it for a command it starts: a test runner started in the
    # background (CI's `... &`) ignores SIGINT, and a child inherits an ignored signal
    proc = subprocess.Popen(cmd, env=_cli_env(state, 0.02), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while _journal_blocks(state) < 10:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the copy wrote no blocks"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    journals = list((state / "transfers").glob("*.journal"))
    assert len(journals) == 1
    assert str(journals[0]) in err
    assert "run the same command again to resume" in err
    assert "Traceback" not in err
    done = _journal_blocks(state)
    assert f"interrupted after {done} of 128 blocks" in err
    assert 10 <= done < 128

    again = subprocess.run(cmd, env=_cli_env(state, 0.0), capture_output=True, text=True,
                           cwd=tmp_path, timeout=120)
    assert again.returncode == 0, (again.stdout, again.stderr)
    assert "resumed" in again.stdout
    assert not journals[0].exists()
    np.testing.assert_array_equal(np.asarray(voxgate.open(dst)[...]), data)
    status = subprocess.run([sys.executable, "-m", "voxgate", "cp", "--status"],
                            env=_cli_env(state, 0.0), capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0, status.stderr
    assert str(journals[0]) not in status.stdout


def _pyramid_source(fmt: str, path: Path, kind: str) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(5)
    if kind == "image":
        data = rng.integers(0, 255, SHAPE, dtype=np.uint8)
    else:  # few labels, so that the mode has ties to break
        data = rng.integers(1, 4, SHAPE).astype(np.uint64)
    data[:8, :8, :16] = 0  # chunks of only the fill value
    url = _url(fmt, path)
    vol = voxgate.create(url, shape=SHAPE, dtype=data.dtype, chunks=CHUNKS,
                         voxel_size=(4, 4, 4), kind=kind)
    vol[...] = data
    return url, data


FACTORS = [(2, 2, 2), (2, 2, 2)]


_ACTIONS = {"raise_in_write": _raise_keyboard_interrupt, "sigint_from_worker": _sigint_to_process}


@pytest.mark.parametrize("fmt", ["zarr", "precomputed", "n5"])
@pytest.mark.parametrize("kind", ["image", "segmentation"])
@pytest.mark.parametrize(("after", "how"), [(0, "raise_in_write"), (3, "raise_in_write"),
                                            (2, "sigint_from_worker")])
def test_downsample_interrupted_then_run_again_equals_numpy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python_ctrl_c: None, fmt: str,
        kind: str, after: int, how: str) -> None:
    url, data = _pyramid_source(fmt, tmp_path / "vol", kind)
    wire = _Tripwire(monkeypatch, _CLASSES[fmt], after=after, action=_ACTIONS[how])
    with pytest.raises(KeyboardInterrupt):
        voxgate.downsample(url, num_scales=3, factors=FACTORS, block=(8, 16, 16), workers=2)
    assert wire.fired
    # the store opens, with its scales added, whatever the interrupted run left
    vol = voxgate.open(url)
    assert len(vol.scales) == 3
    np.testing.assert_array_equal(np.asarray(vol[...]), data)

    wire.disarm()
    voxgate.downsample(url, num_scales=3, factors=FACTORS, block=(8, 16, 16), workers=2)
    vol = voxgate.open(url)
    assert len(vol.scales) == 3
    want = downsample_scales(data, FACTORS, kind)
    np.testing.assert_array_equal(np.asarray(vol[...]), data)
    for k, ref in enumerate(want, start=1):
        got = np.asarray(vol.at_scale(k)[...])
        assert got.dtype == data.dtype
        np.testing.assert_array_equal(got, ref, err_msg=f"scale {k}")


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` label the same voxels as background and group the others the
    same way (equal up to a relabelling)."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()], axis=1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


def _cc_source(fmt: str, path: Path) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(9)
    seg = (rng.random(SHAPE) < 0.3).astype(np.uint64) * rng.integers(1, 3, SHAPE)
    seg = seg.astype(np.uint64)
    seg[:, 20:22, :] = 5  # a sheet crossing every block border along x and z
    seg[:8, :8, :] = 0
    url = _url(fmt, path)
    voxgate.create(url, shape=SHAPE, dtype="uint64", chunks=CHUNKS, voxel_size=(4, 4, 4),
                   kind="segmentation")[...] = seg
    return url, seg


@pytest.mark.parametrize(("sfmt", "ofmt"), [("zarr", "zarr"), ("n5", "precomputed"),
                                            ("precomputed", "n5")])
@pytest.mark.parametrize(("after", "how"), [(1, "raise_in_write"), (5, "raise_in_write"),
                                            (3, "sigint_from_worker")])
def test_connected_components_interrupted_then_run_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python_ctrl_c: None, sfmt: str,
        ofmt: str, after: int, how: str) -> None:
    import cc3d

    url, seg = _cc_source(sfmt, tmp_path / "seg")
    out = _url(ofmt, tmp_path / "cc")
    expected = voxgate.connected_components(url, out=_url(ofmt, tmp_path / "whole"),
                                            block=(8, 16, 16), workers=2)
    expected = np.asarray(expected[...])
    ref = cc3d.connected_components(seg, connectivity=26)
    assert _same_partition(expected, ref)

    wire = _Tripwire(monkeypatch, _CLASSES[ofmt], after=after, action=_ACTIONS[how])
    with pytest.raises(KeyboardInterrupt):
        voxgate.connected_components(url, out=out, block=(8, 16, 16), workers=2)
    assert wire.fired
    # the scratch volume went with the interrupted call; the output opens
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cc", "seg", "whole"]
    assert voxgate.open(out).shape == SHAPE
    wire.disarm()
    # the same call again is refused (the output exists), saying how to write into it
    with pytest.raises(voxgate.errors.RemoteExistsError, match="overwrite=True"):
        voxgate.connected_components(url, out=out, block=(8, 16, 16), workers=2)
    result = voxgate.connected_components(url, out=out, block=(8, 16, 16), workers=2,
                                          overwrite=True)
    got = np.asarray(voxgate.open(out)[...])
    np.testing.assert_array_equal(np.asarray(result[...]), got)
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, expected)
    assert _same_partition(got, ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cc", "seg", "whole"]


@pytest.mark.parametrize(("dfmt", "options", "stops"), [
    ("precomputed", {"sharded": True}, (1, 0)),  # (a shard per scale: 3 blocks)
    ("zarr", {"zarr_format": 2}, (4, 3)),
    ("n5", {}, (4, 3)),
])
def test_copy_of_a_pyramid_interrupted_twice_then_finished(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dfmt: str,
        options: dict[str, Any], stops: tuple[int, int]) -> None:
    """Every scale, into a destination made with create options; the first run stopped, the
    second (one worker: the serial path) stopped too, the third finishes.  Each rerun skips
    what the journal held when the run before stopped."""
    url, data = _pyramid_source("zarr", tmp_path / "src", "segmentation")
    voxgate.downsample(url, num_scales=3, factors=FACTORS)
    src = voxgate.open(url)
    want = [np.asarray(src.at_scale(k)[...]) for k in range(3)]
    np.testing.assert_array_equal(want[0], data)
    dst = _url(dfmt, tmp_path / "dst")
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
    wire = _Tripwire(monkeypatch, _CLASSES[dfmt], after=stops[0],
                     action=_raise_keyboard_interrupt)
    with pytest.raises(voxgate.transfer.CopyInterrupted) as first:
        voxgate.copy(url, dst, workers=2, progress=False, **options)
    assert wire.fired
    wire2 = _Tripwire(monkeypatch, _CLASSES[dfmt], after=stops[1],
                      action=_raise_keyboard_interrupt)
    with pytest.raises(voxgate.transfer.CopyInterrupted) as second:
        voxgate.copy(url, dst, workers=1, progress=False, **options)
    assert wire2.fired
    assert second.value.journal == first.value.journal
    assert first.value.blocks_done <= second.value.blocks_done < second.value.blocks_total
    assert [s.blocks_done for s in voxgate.transfer.list_journals()] == [
        second.value.blocks_done]
    wire2.disarm()
    report = voxgate.copy(url, dst, workers=2, progress=False, **options)
    assert report.resumed and not report.created
    assert report.blocks_skipped == second.value.blocks_done
    assert report.blocks_written + report.blocks_skipped == report.blocks_total
    out = voxgate.open(dst)
    assert len(out.scales) == 3
    for k in range(3):
        np.testing.assert_array_equal(np.asarray(out.at_scale(k)[...]), want[k],
                                      err_msg=f"scale {k}")
    assert voxgate.transfer.list_journals() == []
