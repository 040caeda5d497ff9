"""Run one function over many blocks on a bounded thread pool, recording what succeeded.

Threads, not processes: tensorstore, h5py's decompression and numpy copies release the GIL, and
no data is pickled.  At most ``workers`` tasks are in flight, so memory stays bounded by a few
blocks per worker whatever the number of blocks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["BlockResults", "default_workers", "interrupts_deferrable", "run_blocks"]

T = TypeVar("T")


def default_workers() -> int:
    return max(2, min(8, 2 * (os.cpu_count() or 2)))


class _Deferred:
    """The SIGINT handler of a run (:func:`interrupts_deferrable`): a Ctrl-C goes on at once to
    the handler it replaced, except while a ``with`` of this object is open, when it waits
    until the outermost one closes.  Entering costs a counter, not a system call."""

    def __init__(self, previous: Callable[[int, Any], Any] | int) -> None:
        self.previous = previous
        self.depth = 0
        self.pending = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.depth:
            self.pending = True
        else:
            self._deliver(frame)

    def _deliver(self, frame: Any) -> None:
        previous = self.previous
        if callable(previous):
            previous(signal.SIGINT, frame)  # (Python's own raises KeyboardInterrupt here)
        elif previous == signal.SIG_DFL:  # the default action: the process ends, as it would
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.raise_signal(signal.SIGINT)

    def __enter__(self) -> None:
        self.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if not self.depth and self.pending:
            self.pending = False
            self._deliver(None)


@contextlib.contextmanager
def interrupts_deferrable() -> Iterator[contextlib.AbstractContextManager[Any]]:
    """For the length of a run: a context manager (``held``) inside which a Ctrl-C (SIGINT)
    waits until it closes, then goes to the handler that was installed: for bookkeeping that
    must not stop half-way (a block counted as done but not yet in its journal).  The handler
    is swapped once per run, not per block.  Only the main thread takes Python's signal
    handlers: elsewhere, where SIGINT is ignored or its handler was not installed from Python,
    ``held`` holds nothing."""
    previous = signal.getsignal(signal.SIGINT)
    guard: _Deferred | None = None
    if (threading.current_thread() is threading.main_thread() and previous is not None
            and previous != signal.SIG_IGN):
        guard = _Deferred(previous)
        try:
            signal.signal(signal.SIGINT, guard)
        except ValueError:  # (not the main interpreter)
            guard = None
    if guard is None:
        yield contextlib.nullcontext()
        return
    try:
        yield guard
    finally:
        try:
            signal.signal(signal.SIGINT, previous)
        except KeyboardInterrupt:  # (one arriving just now, delivered by that call instead)
            signal.signal(signal.SIGINT, previous)
            raise


@dataclass
class BlockResults(Generic[T]):
    #: the items finished (:func:`voxgate.blockwise.run_blocks` lists them only when asked:
    #: ``keep_done``)
    done: list[T] = field(default_factory=list)
    failed: list[tuple[T, BaseException]] = field(default_factory=list)
    #: how many items finished
    finished: int = 0


def run_blocks(
    fn: Callable[[T], object],
    items: Iterable[T],
    *,
    workers: int | None = None,
    on_done: Callable[[T, object], None] | None = None,
    stop_on_error: bool = True,
) -> BlockResults[T]:
    """Call ``fn(item)`` for every item; return which ones finished and which raised.

    With ``stop_on_error`` no new item starts after the first failure (the ones in flight
    finish and are recorded).  KeyboardInterrupt stops submitting, waits for the blocks in
    flight (so none is left half-done by us) and re-raises.
    """
    with interrupts_deferrable() as held:
        return _run_blocks(fn, items, workers, on_done, stop_on_error, held)


def _run_blocks(fn: Callable[[T], object], items: Iterable[T], workers: int | None,
                on_done: Callable[[T, object], None] | None, stop_on_error: bool,
                held: contextlib.AbstractContextManager[Any]) -> BlockResults[T]:
    workers = workers or default_workers()
    results: BlockResults[T] = BlockResults()
    iterator = iter(items)
    if workers == 1:
        for item in iterator:
            try:
                out = fn(item)
            except Exception as exc:
                results.failed.append((item, exc))
                if stop_on_error:
                    break
                continue
            with held:
                results.done.append(item)
                results.finished += 1
                if on_done is not None:
                    on_done(item, out)
        return results

    pending: dict[Future[object], T] = {}
    exhausted = False
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="voxgate") as pool:
        try:
            while True:
                while not exhausted and len(pending) < 2 * workers:
                    if stop_on_error and results.failed:
                        exhausted = True
                        break
                    try:
                        item = next(iterator)
                    except StopIteration:
                        exhausted = True
                        break
                    pending[pool.submit(fn, item)] = item
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    item = pending.pop(fut)
                    error = fut.exception()
                    if error is not None:
                        results.failed.append((item, error))
                    else:
                        with held:
                            results.done.append(item)
                            results.finished += 1
                            if on_done is not None:
                                on_done(item, fut.result())
        except KeyboardInterrupt:
            for fut in pending:
                fut.cancel()
            wait(pending)
            raise
    return results
