"""Review of the session's changes (3f4a1de..): one case per bug found, each failing on the
code before its fix.

- InflightBudget.acquire cancelled as stop() refused it ended in a 503, not cancelled (the
  cancellation swallowed);
- a downsample record an earlier voxgate wrote (no job id, no start time) whose pid a process
  of the upgraded relay has again (a container's PID 1) read IN_PROGRESS for ever;
- voxgate.create of a tensorstore zarr v2 spec returned a Volume of 1 nm voxels, whatever
  voxel_size it was created with (zarr v2 keeps no dimension_units);
- the notebook text display: IPython's display raising killed the redraw thread with a
  traceback and made the with-block's end raise it;
- NoArithmetic.__getattr__ describing a view looked up ``nbytes`` and ``shape`` (numpy names
  too) through itself: a view without its state gave RecursionError, even from hasattr().
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from voxgate.relay.budget import SMALL_BYTES, WORK_FACTOR, InflightBudget

NBYTES = 4 * SMALL_BYTES
COST = WORK_FACTOR * NBYTES


def test_a_wait_cancelled_as_the_budget_stops_ends_cancelled() -> None:
    budget = InflightBudget(COST, wait=60)

    async def run() -> None:
        held = await budget.acquire(NBYTES)
        waiter = asyncio.ensure_future(budget.acquire(NBYTES))
        while budget.metrics()["waiting"] < 1:
            await asyncio.sleep(0.001)
        budget.stop()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert waiter.cancelled()
        budget.release(held)

    asyncio.run(run())
    m = budget.metrics()
    assert (m["waiting"], m["reserved_bytes"]) == (0, 0)


class _Catalog:
    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.lock = threading.RLock()

    def save(self) -> None:
        pass

    def refresh(self) -> None:
        pass


def test_an_earlier_voxgates_in_progress_record_with_a_live_pid_is_failed() -> None:
    """Written before job ids and start times (an older voxgate killed mid-job); the upgraded
    relay runs with the same pid (here: this process's, alive)."""
    from voxgate.relay import jobs

    cat: Any = _Catalog()
    url = "zarr:///data/c/e/ch"
    cat.state["downsample"] = {url: {"status": "IN_PROGRESS", "pid": os.getpid()}}
    assert jobs.job_status(cat, url) == "FAILED"
    # a job of this voxgate, running in this process, is still IN_PROGRESS
    jobs.set_job_status(cat, url, "IN_PROGRESS", job="j")
    assert jobs.job_status(cat, url) == "IN_PROGRESS"


def test_a_zarr_v2_tensorstore_array_created_keeps_its_voxel_size(tmp_path: Path) -> None:
    import voxgate

    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(tmp_path / "z2")}}
    kw: dict[str, Any] = {"shape": (4, 8, 8), "dtype": "uint8", "chunks": (4, 8, 8),
                          "voxel_size": (30, 4, 4)}
    vol = voxgate.create(spec, **kw)
    assert vol.voxel_size.zyx() == (30.0, 4.0, 4.0)
    again = voxgate.create(spec, exist_ok=True, **kw)
    assert again.voxel_size.zyx() == (30.0, 4.0, 4.0)
    # (it travels with the Volume: a worker reopens the same geometry)
    s = vol.remote.spec()
    assert voxgate.open(s["url"], **s["options"]).voxel_size.zyx() == (30.0, 4.0, 4.0)


class _FailingHandle:
    def __init__(self) -> None:
        self.updates = 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.updates += 1
        if self.updates > 1:
            raise RuntimeError("the kernel's display channel is closed")


def test_a_notebook_display_that_raises_stops_drawing_not_the_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from voxgate import progress

    handle = _FailingHandle()
    monkeypatch.setattr(progress, "_in_notebook_without_widgets", lambda console: True)
    monkeypatch.setattr(progress, "_notebook_handle", lambda: handle)
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    with progress.progress_bar(True, 10, "copy") as bar:
        time.sleep(1.2)  # (the redraw thread draws every 0.5 s)
        bar.advance(3)
    assert died == []
    assert progress._DISPLAY is None
    assert handle.updates >= 2


def test_a_view_without_its_state_is_an_attribute_error_not_a_recursion() -> None:
    from voxgate.volume import Volume

    bare = Volume.__new__(Volume)
    assert not hasattr(bare, "shape")
    with pytest.raises(AttributeError, match="lazy view"):
        bare.max  # noqa: B018
