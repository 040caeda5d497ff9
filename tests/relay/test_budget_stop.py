"""InflightBudget.stop (a relay told to stop): the requests waiting are refused at once, none
waits after, the ones admitted keep and give back their reservations; a waiter whose wait
ends as it is stopped is refused once, as stopping (counted once)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from voxgate.relay.budget import SMALL_BYTES, WORK_FACTOR, InflightBudget
from voxgate.relay.errors import BossHTTPError

NBYTES = 4 * SMALL_BYTES  # a large cutout
COST = WORK_FACTOR * NBYTES


async def _held_and_waiting(budget: InflightBudget, n: int,
                            ) -> tuple[int, list[asyncio.Future[int]]]:
    """All of the budget held, and ``n`` large requests waiting for it."""
    held = await budget.acquire(NBYTES)
    waiting = [asyncio.ensure_future(budget.acquire(NBYTES)) for _ in range(n)]
    while budget.metrics()["waiting"] < n:
        await asyncio.sleep(0.001)
    return held, waiting


def test_stop_refuses_the_waiting_at_once_and_later_ones() -> None:
    budget = InflightBudget(COST, wait=60)

    async def run() -> None:
        held, waiting = await _held_and_waiting(budget, 3)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        threading.Thread(target=budget.stop).start()  # (from another thread, as uvicorn may)
        for w in waiting:
            with pytest.raises(BossHTTPError, match="the relay is stopping") as err:
                await w
            assert err.value.status == 503
        assert loop.time() - t0 < 5  # (the wait limit is 60 s)
        with pytest.raises(BossHTTPError, match="stopping"):
            await budget.acquire(NBYTES)  # (would wait: refused at once)
        budget.release(held)
        assert await budget.acquire(NBYTES) == COST  # (fits: admitted, stopping or not)
        budget.release(COST)

    asyncio.run(run())
    m = budget.metrics()
    assert (m["waiting"], m["reserved_bytes"], m["refused"]) == (0, 0, 4)


def test_a_wait_ending_as_it_is_stopped_is_refused_once() -> None:
    budget = InflightBudget(COST, wait=0.05)

    async def run() -> None:
        held, [waiter] = await _held_and_waiting(budget, 1)
        await asyncio.sleep(0.049)
        budget.stop()  # (about as the wait times out)
        with pytest.raises(BossHTTPError) as err:
            await waiter
        assert err.value.status == 503
        budget.release(held)

    for _ in range(20):
        asyncio.run(run())
        budget.stopping = False
    assert budget.metrics()["refused"] == 20
    assert budget.metrics()["reserved_bytes"] == 0


def test_a_wait_cancelled_as_the_budget_stops_ends_cancelled() -> None:
    budget = InflightBudget(COST, wait=60)

    async def run() -> None:
        held, [waiter] = await _held_and_waiting(budget, 1)
        budget.stop()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert waiter.cancelled()
        budget.release(held)

    asyncio.run(run())
    m = budget.metrics()
    assert (m["waiting"], m["reserved_bytes"]) == (0, 0)
