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
from typing import Generic, TypeVar

__all__ = ["BlockResults", "default_workers", "interrupts_held", "run_blocks"]

T = TypeVar("T")


def default_workers() -> int:
    return max(2, min(8, 2 * (os.cpu_count() or 2)))


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the ``with`` until its end, then deliver it
    to the handler that was installed: for bookkeeping that must not stop half-way (a block
    counted as done but not yet in its journal).  Only the main thread takes Python's signal
    handlers: elsewhere, or where the handler was not installed from Python, nothing is held."""
    previous = signal.getsignal(signal.SIGINT)
    held: list[int] = []
    installed = False
    if threading.current_thread() is threading.main_thread() and previous is not None:
        with contextlib.suppress(ValueError, OSError):  # (not the main interpreter)
            signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
            installed = True
    if not installed:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)  # (to ``previous``, at the next bytecode)


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
            with interrupts_held():
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
                        with interrupts_held():
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
