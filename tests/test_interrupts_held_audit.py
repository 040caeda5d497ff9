"""A Ctrl-C never splits the bookkeeping of a finished block.

voxgate.copy's ``on_done`` adds a block to its journal's in-memory set, then appends its line;
CopyInterrupted reports the set's size.  SIGINT raises KeyboardInterrupt in the main thread
between any two bytecodes, so one arriving between the two left the report one block ahead of
the journal file (seen once in a clean-clone CI run).  Now run_blocks holds the interrupt
while a finished block is counted and recorded, and delivers it once ``on_done`` returns.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
import voxgate.transfer
from voxgate.blockwise import run_blocks as blockwise_run_blocks
from voxgate.parallel import interrupts_deferrable
from voxgate.parallel import run_blocks as parallel_run_blocks


def _interrupt_inside_append(monkeypatch: pytest.MonkeyPatch, at: int) -> list[int]:
    """Ctrl-C the ``at``-th time a journal line is about to be appended: after the block is in
    the journal's in-memory set, before its line is written."""
    real = voxgate.transfer._Journal._append
    calls = [0]

    def append(self: voxgate.transfer._Journal, line: str) -> None:
        calls[0] += 1
        if calls[0] == at:
            signal.raise_signal(signal.SIGINT)  # (KeyboardInterrupt at the next bytecode)
        real(self, line)

    monkeypatch.setattr(voxgate.transfer._Journal, "_append", append)
    return calls


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", ["data", "fill"])
def test_copy_interrupted_while_recording_a_block_reports_what_the_journal_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python_ctrl_c: None,
        workers: int, kind: str) -> None:
    rng = np.random.default_rng(7)
    img = (rng.integers(1, 255, (24, 40, 40)) if kind == "data"
           else np.zeros((24, 40, 40))).astype(np.uint8)
    src = f"zarr://{tmp_path}/src.zarr"
    voxgate.create(src, shape=img.shape, dtype="uint8", chunks=(8, 16, 16), voxel_size=(1, 1, 1))
    voxgate.open(src, mode="r+")[...] = img
    dst = f"precomputed://file://{tmp_path}/dst"
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)  # one block per chunk
    real_append = voxgate.transfer._Journal._append
    calls = _interrupt_inside_append(monkeypatch, at=3)
    with pytest.raises(voxgate.transfer.CopyInterrupted) as info:
        voxgate.copy(src, dst, workers=workers, progress=False)
    stop = info.value
    assert calls[0] >= 3
    lines = stop.journal.read_text().splitlines()
    blocks = [ln for ln in lines[1:] if ln != "created"]
    assert len(blocks) >= 3
    assert all(ln.endswith(" fill") == (kind == "fill") for ln in blocks)
    # the block whose line was being written when Ctrl-C came is in the file, and the report
    # counts exactly the file's blocks
    assert stop.blocks_done == len(blocks) < stop.blocks_total
    status = [s for s in voxgate.transfer.list_journals() if s.path == stop.journal]
    assert [s.blocks_done for s in status] == [stop.blocks_done]

    # resumed, the copy skips the recorded blocks and ends equal to the source
    monkeypatch.setattr(voxgate.transfer._Journal, "_append", real_append)
    report = voxgate.copy(src, dst, workers=workers, progress=False)
    assert report.resumed and report.blocks_skipped == stop.blocks_done
    np.testing.assert_array_equal(voxgate.open(dst).read(), img)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """One held step: a run's handler (interrupts_deferrable) held for its whole length."""
    with interrupts_deferrable() as held, held:
        yield


def test_a_ctrl_c_inside_is_delivered_at_the_end(python_ctrl_c: None) -> None:
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
            steps.append("after the signal")
            steps.append("still inside")
        steps.append("after the with")  # never: the interrupt is delivered at the end
    assert steps == ["after the signal", "still inside"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nothing_held_is_nothing_delivered(python_ctrl_c: None) -> None:
    with interrupts_held():
        x = 1
    assert x == 1 and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_interrupt_goes_to_the_handler_that_was_installed() -> None:
    got: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
            assert got == []  # held
        for _ in range(3):  # (delivered at a bytecode boundary after the with)
            pass
        assert got == [signal.SIGINT]
        with interrupts_held():
            pass
        assert got == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_ignored_ctrl_c_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_held():
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_error_inside_still_restores_the_handler(python_ctrl_c: None) -> None:
    with pytest.raises(ValueError, match="inside"):
        with interrupts_held():
            raise ValueError("inside")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_off_the_main_thread_nothing_changes(python_ctrl_c: None) -> None:
    seen: list[object] = []

    def run() -> None:
        with interrupts_held():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == [signal.default_int_handler]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("runner", ["blockwise", "parallel"])
def test_run_blocks_lets_on_done_finish_before_the_interrupt(
        python_ctrl_c: None, workers: int, runner: str) -> None:
    recorded: list[tuple[int, str]] = []

    def on_done(item: int, out: object) -> None:
        recorded.append((item, "begun"))
        if item == 2:
            signal.raise_signal(signal.SIGINT)
        recorded.append((item, "ended"))

    run = blockwise_run_blocks if runner == "blockwise" else parallel_run_blocks
    with pytest.raises(KeyboardInterrupt):
        run(lambda i: i, range(2, 50), workers=workers, on_done=on_done)
    assert (2, "begun") in recorded and (2, "ended") in recorded
    # every block begun was ended: none was cut in half
    begun = [i for i, s in recorded if s == "begun"]
    ended = [i for i, s in recorded if s == "ended"]
    assert begun == ended


@pytest.mark.parametrize("at", [1, 3])
def test_a_ctrl_c_as_a_finished_block_is_taken_loses_no_block(
        python_ctrl_c: None, monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """A Ctrl-C right after a finished block's result is taken from the pool (before it is
    counted): the block was run, so it is counted and given to ``on_done`` like every other
    block that ran; it was dropped from the blocks in flight first and then lost."""
    import voxgate.blockwise as blockwise

    real = blockwise._Pool.result
    calls = [0]

    def result(self: Any, fut: Any) -> Any:
        out = real(self, fut)
        calls[0] += 1
        if calls[0] == at:
            signal.raise_signal(signal.SIGINT)  # (KeyboardInterrupt at the next bytecode)
        return out

    monkeypatch.setattr(blockwise._Pool, "result", result)
    ran: list[int] = []
    lock = threading.Lock()

    def fn(i: int) -> int:
        with lock:
            ran.append(i)
        return i

    done: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        blockwise.run_blocks(fn, range(40), workers=2, on_done=lambda i, out: done.append(i))
    assert calls[0] >= at and ran
    assert sorted(done) == sorted(ran)  # every block that ran was counted, once


def test_nested_runs_deliver_one_interrupt_when_the_outermost_hold_ends(
        python_ctrl_c: None) -> None:
    """A run inside a held step of another (both in the main thread): a Ctrl-C in the inner
    run goes to the outer run's handler, which holds it until its step ends."""
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferrable() as outer:
            with outer:
                with interrupts_deferrable():
                    signal.raise_signal(signal.SIGINT)
                    steps.append("the inner run goes on")
                steps.append("the inner run ended")
                assert signal.getsignal(signal.SIGINT) is outer
            steps.append("never: delivered as the outer step ends")
    assert steps == ["the inner run goes on", "the inner run ended"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("workers", [1, 2])
def test_the_handler_is_swapped_once_per_run_not_per_block(
        python_ctrl_c: None, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """Holding a Ctrl-C costs a block a counter, not two system calls: the SIGINT handler is
    set when the run starts and restored when it ends."""
    real = signal.signal
    calls: list[object] = []

    def counting(signum: int, handler: Any) -> Any:
        calls.append(handler)
        return real(signum, handler)

    monkeypatch.setattr(signal, "signal", counting)
    done: list[int] = []
    blockwise_run_blocks(lambda i: i, range(200), workers=workers,
                         on_done=lambda i, out: done.append(i))
    assert sorted(done) == list(range(200))
    assert len(calls) == 2 and calls[-1] is signal.default_int_handler
