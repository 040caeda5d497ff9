"""A pickled view unpickled in a process that cannot open its store (a path another machine
does not mount, a server it cannot reach, a store removed since): the error is voxgate's,
raised where the view is used, and a process that can open the store gets the view.

Before, unpickling raised.  A dask.distributed scheduler unpickles every task graph, so
``client.submit(f, view)`` failed with distributed's "Error during deserialization of the task
graph. This frequently occurs if the Scheduler and Client have different environments" (the
reason only in the scheduler's log); a spawned process pool given such a view failed the call
with a BrokenProcessPool-style error.  (``mem://`` views already came back as a placeholder,
tests/test_interop_audit.py; that placeholder could not be pickled again as the view.)
"""

from __future__ import annotations

import multiprocessing
import pickle
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.errors import RemoteNotFoundError

DATA = (np.arange(6 * 5 * 7) % 251).astype(np.uint8).reshape(6, 5, 7)


def _make(path: Path) -> voxgate.Volume:
    v = voxgate.create(f"zarr://{path}", shape=DATA.shape, dtype="uint8", chunks=(4, 4, 4),
                       voxel_size=(40, 8, 8))
    v[:] = DATA
    return v


def _read(v: voxgate.Volume) -> np.ndarray:
    return v.read()


def _shape(spec: dict[str, Any]) -> tuple[int, ...]:
    return voxgate.open(**spec).shape


def test_a_view_of_a_removed_store_unpickles_and_raises_at_its_first_use(tmp_path: Path) -> None:
    view = _make(tmp_path / "a.zarr")[1:4, :, 2:]
    blob = pickle.dumps(view)
    shutil.rmtree(tmp_path / "a.zarr")
    gone = pickle.loads(blob)  # (raised here)
    with pytest.raises(RemoteNotFoundError, match=r"no zarr array.*while reopening a pickled "
                       r"view of zarr://.*a\.zarr in process \d+"):
        gone.read()
    with pytest.raises(RemoteNotFoundError):
        gone[0]
    with pytest.raises(RemoteNotFoundError):
        np.asarray(gone)
    assert "unreachable Volume" in repr(gone)


def test_pickled_again_it_is_the_view_where_the_store_can_be_opened(tmp_path: Path) -> None:
    """A dask scheduler that cannot reach a store passes the view on to a worker that can:
    the placeholder pickles as the view itself, not as a placeholder."""
    view = _make(tmp_path / "a.zarr")[1:4, :, 2:]
    blob = pickle.dumps(view)
    shutil.move(tmp_path / "a.zarr", tmp_path / "away.zarr")
    gone = pickle.loads(blob)
    shutil.move(tmp_path / "away.zarr", tmp_path / "a.zarr")  # (the next process has it)
    back = pickle.loads(pickle.dumps(gone))
    assert isinstance(back, voxgate.Volume)
    np.testing.assert_array_equal(back.read(), DATA[1:4, :, 2:])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(pickle.loads(blob))).read(),
                                  DATA[1:4, :, 2:])


def test_a_spawned_process_given_a_view_it_cannot_open_fails_that_call_only(
        tmp_path: Path) -> None:
    view = _make(tmp_path / "a.zarr")[2:]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        np.testing.assert_array_equal(ex.submit(_read, view).result(timeout=120), DATA[2:])
        shutil.rmtree(tmp_path / "a.zarr")
        with pytest.raises(RemoteNotFoundError, match=r"while reopening a pickled view"):
            ex.submit(_read, view).result(timeout=120)
        assert ex.submit(_shape, {"url": "mem://nowhere"}).exception(
            timeout=120) is not None  # (the pool still answers)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as c, Client(c) as cl:
        yield cl


def test_a_task_given_a_view_the_cluster_cannot_open_fails_with_voxgates_error(
        client: Any, tmp_path: Path) -> None:
    view = _make(tmp_path / "a.zarr")[1:3]
    np.testing.assert_array_equal(client.submit(_read, view, pure=False).result(timeout=60),
                                  DATA[1:3])
    shutil.rmtree(tmp_path / "a.zarr")
    with pytest.raises(RemoteNotFoundError, match=r"no zarr array.*while reopening a pickled"):
        client.submit(_read, view, pure=False).result(timeout=60)
    # (a view made with to_dask() reopens at its first read; its error is voxgate's too)
    again = _make(tmp_path / "b.zarr")
    arr = again.to_dask()
    shutil.rmtree(tmp_path / "b.zarr")
    with pytest.raises(RemoteNotFoundError, match=r"no zarr array"):
        client.compute(arr.sum()).result(timeout=60)
