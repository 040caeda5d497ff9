"""The admission budget of large cutouts: ``[server] max_inflight_bytes`` per process.

A cutout may be up to ``max_cutout_bytes`` (520 MiB) and needs several times its bytes while
it is read, decoded, cached and encoded; the thread limit (32 requests at work) bounds how many
run at once, not what they hold together.  So a large cutout (a GET that is not answered from
an encoded response already kept, a POST, a to_black) first reserves its expected working
memory, :data:`WORK_FACTOR` x its uncompressed bytes, from the process's budget, on the event
loop and before it reads its body or any data; it gives it back once its response is sent.
One that does not fit waits, in the order of arrival (a large one is never overtaken by the
smaller ones behind it), until enough is given back; after :func:`wait_seconds` it is answered
503 with ``Retry-After``.  A request larger than the whole budget (but within
``max_cutout_bytes``) reserves the whole budget: it runs alone.  Cutouts under
:data:`SMALL_BYTES` never wait (their working memory is what the 32 threads allow:
docs/relay.md, "Memory").
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .errors import IO_ERROR, BossHTTPError

__all__ = ["SMALL_BYTES", "WORK_FACTOR", "InflightBudget", "wait_seconds"]

#: working memory of a cutout in progress, as a multiple of its uncompressed bytes: the array
#: read (its cells are cached as they arrive, so the cells themselves are a second copy while
#: the memory tier holds them), the encoded body (at most about 1x) and, for a POST, the body
#: received and the array decoded from it.  Measured (docs/relay.md, "Memory"): one GET of
#: 64 or 128 MiB peaked at 3.3-3.4x its bytes above the idle process, one POST at 2.6-3.4x
WORK_FACTOR = 4

#: cutouts under this many (uncompressed) bytes bypass the budget
SMALL_BYTES = 4 * 2**20

#: seconds a large cutout waits for the budget before its 503 (VOXGATE_RELAY_INFLIGHT_WAIT_SECONDS
#: in the relay's environment)
WAIT_SECONDS = 30.0

#: seconds the 503 asks clients to wait before they try again
RETRY_AFTER = 5


def wait_seconds() -> float:
    """How long a large cutout waits for the budget: VOXGATE_RELAY_INFLIGHT_WAIT_SECONDS in the
    environment (a number of seconds >= 0), else :data:`WAIT_SECONDS`."""
    text = os.environ.get("VOXGATE_RELAY_INFLIGHT_WAIT_SECONDS")
    if not text:
        return WAIT_SECONDS
    try:
        value = float(text)
    except ValueError:
        return WAIT_SECONDS
    return value if math.isfinite(value) and value >= 0 else WAIT_SECONDS


def _size(n: int) -> str:
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= k:
            return f"{n / k:.4g} {unit}"
    return f"{n} bytes"


@dataclass
class _Waiter:
    amount: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    granted: bool = field(default=False)
    stopped: bool = field(default=False)


class InflightBudget:
    """Bytes reserved by large cutouts in progress in this process, at most ``total``."""

    def __init__(self, total: int, wait: float | None = None) -> None:
        self.total = total
        self.wait = wait_seconds() if wait is None else wait
        self._lock = threading.Lock()
        self._queue: deque[_Waiter] = deque()
        self.reserved = 0
        #: the most reserved at once so far (never above ``total``)
        self.reserved_peak = 0
        self.admitted = 0   # large requests given their reservation
        self.waited = 0     # of them, the ones that had to wait
        self.refused = 0    # large requests answered 503 after the wait
        #: set once the server stops (:meth:`stop`): nothing waits any more
        self.stopping = False

    def cost(self, nbytes: int) -> int:
        """The reservation of a cutout of ``nbytes`` uncompressed bytes (0: it bypasses)."""
        if nbytes < SMALL_BYTES:
            return 0
        return min(self.total, WORK_FACTOR * nbytes)

    def try_acquire(self, nbytes: int) -> int | None:
        """Reserve at once, from any thread, what :meth:`acquire` would: the amount (0: it
        bypasses), or None when it would have to wait (then :meth:`acquire` on the loop).
        Lets a large cutout that fits start in the thread that found it needs reading, with
        no second hop."""
        amount = self.cost(nbytes)
        if amount == 0:
            return 0
        with self._lock:
            if not self._queue and self.reserved + amount <= self.total:
                self._take(amount)
                return amount
        return None

    async def acquire(self, nbytes: int) -> int:
        """Reserve the working memory of a cutout of ``nbytes``: the amount reserved (give it
        back with :meth:`release`), 0 when it bypasses the budget.  Raises the 503 after the
        wait."""
        amount = self.cost(nbytes)
        if amount == 0:
            return 0
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._queue and self.reserved + amount <= self.total:
                self._take(amount)
                return amount
            if self.stopping:
                self.refused += 1
                raise self._stopping_error()
            waiter = _Waiter(amount, loop, loop.create_future())
            self._queue.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.wait)
        except (TimeoutError, asyncio.CancelledError) as exc:
            with self._lock:
                if waiter.stopped:  # (refused by stop() as the wait ended: counted there)
                    if isinstance(exc, asyncio.CancelledError):
                        raise  # (a cancelled wait ends cancelled, not in a 503 for nobody)
                    raise self._stopping_error() from None
                if not waiter.granted:
                    self._queue.remove(waiter)
                    # (the one behind it may fit now)
                    self._grant()
                    if isinstance(exc, TimeoutError):
                        self.refused += 1
                        raise self._busy(nbytes, amount) from None
                    raise
            # granted as the wait ended: the reservation is this request's
            if isinstance(exc, asyncio.CancelledError):
                self.release(amount)
                raise
        with self._lock:
            self.waited += 1
        return amount

    def stop(self) -> None:
        """The server stops (uvicorn shuts its connections down: app.client_timeout_protocol's
        ``on_shutdown``): every request waiting is answered 503 now (it waited up to the
        wait limit, 30 s, holding the server's exit back that long), and none waits from now
        on.  Thread-safe; the requests admitted go on."""
        with self._lock:
            self.stopping = True
            waiters, self._queue = list(self._queue), deque()
            self.refused += len(waiters)
            for waiter in waiters:
                waiter.stopped = True
        for waiter in waiters:
            waiter.loop.call_soon_threadsafe(_fail, waiter.future, self._stopping_error())

    def _stopping_error(self) -> BossHTTPError:
        return BossHTTPError(
            503, IO_ERROR, "the relay is stopping: this cutout waited for its turn at the "
            "working memory of large cutouts; try again later (at another relay process)",
            headers={"Retry-After": str(RETRY_AFTER)})

    def release(self, amount: int) -> None:
        """Give back what :meth:`acquire` reserved (0: nothing)."""
        if amount == 0:
            return
        with self._lock:
            self.reserved -= amount
            self._grant()

    def _take(self, amount: int) -> None:
        self.reserved += amount
        self.admitted += 1
        self.reserved_peak = max(self.reserved_peak, self.reserved)

    def _grant(self) -> None:
        """Admit the waiters at the head of the queue that fit (under the lock)."""
        while self._queue and self.reserved + self._queue[0].amount <= self.total:
            waiter = self._queue.popleft()
            waiter.granted = True
            self._take(waiter.amount)
            waiter.loop.call_soon_threadsafe(_wake, waiter.future)

    def _busy(self, nbytes: int, amount: int) -> BossHTTPError:
        return BossHTTPError(
            503, IO_ERROR,
            f"the relay is busy: this cutout ({_size(nbytes)} uncompressed) needs about "
            f"{_size(amount)} of working memory, and the other large cutouts in progress hold "
            f"{_size(self.reserved)} of this process's [server] max_inflight_bytes "
            f"({_size(self.total)}); it waited {self.wait:g} s for its turn; try again later "
            "or ask for smaller cutouts",
            headers={"Retry-After": str(RETRY_AFTER)})

    def metrics(self) -> dict[str, Any]:
        with self._lock:
            return {"budget_bytes": self.total, "reserved_bytes": self.reserved,
                    "reserved_peak_bytes": self.reserved_peak, "waiting": len(self._queue),
                    "admitted": self.admitted, "waited": self.waited, "refused": self.refused,
                    "small_bytes": SMALL_BYTES, "work_factor": WORK_FACTOR}


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fail(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)

