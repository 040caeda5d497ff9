"""voxgate.blockwise on a 2-process dask.distributed LocalCluster: the retry rule (a transient
error retried, another raised at once naming its block, a worker killed mid-run survived), and
the Services that had no cluster test of their own giving the same result with client= as
without (map_blocks, downsample, predict and skeletonize have theirs in their own modules)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import voxgate
from voxgate.blockwise import Block, plan_blocks, run_blocks
from voxgate.errors import InvalidRequestError, RemoteUnavailableError
from voxgate.geometry import Box, Vec
from voxgate.synthetic import synthetic_labels

BLOCKS = plan_blocks(Box(Vec(0, 0, 0), Vec(32, 32, 64)), (16, 16, 16))


def _once(marker_dir: str, how: str, b: Block) -> int:
    """On block (0, 1, 1): fail (RemoteUnavailableError), kill the worker, or raise ValueError,
    the first time only (a marker file remembers it across worker processes)."""
    marker = os.path.join(marker_dir, how)
    if tuple(b.index) == (0, 1, 1) and not os.path.exists(marker):
        open(marker, "w").close()
        if how == "unavailable":
            raise RemoteUnavailableError("the store did not answer (once)")
        if how == "kill":
            os._exit(1)
        raise ValueError("a block the kernel refuses")
    return b.box.size


@pytest.mark.parametrize("how", ["unavailable", "kill"])
def test_transient_failures_are_survived(cluster: Any, tmp_path: Path, how: str) -> None:
    sizes: list[object] = []
    res = run_blocks(functools.partial(_once, str(tmp_path), how), BLOCKS, client=cluster,
                     name="survive", on_done=lambda _b, n: sizes.append(n))
    assert (tmp_path / how).exists()  # it did fail once
    assert res.finished == len(BLOCKS) and not res.done and not res.failed
    assert sum(int(str(n)) for n in sizes) == 32 * 32 * 64


def test_another_error_is_raised_naming_the_block(cluster: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kernel refuses") as err:
        run_blocks(functools.partial(_once, str(tmp_path), "value"), BLOCKS, client=cluster,
                   name="refuse")
    assert "refuse: block (0, 1, 1)" in "".join(err.value.__notes__)
    assert err.value.block == next(b for b in BLOCKS  # type: ignore[attr-defined]
                                   if tuple(b.index) == (0, 1, 1))


NOT_DEFAULT = """
from distributed import Client, LocalCluster
from voxgate.blockwise import plan_blocks, run_blocks
from voxgate.geometry import Box, Vec

blocks = plan_blocks(Box(Vec(0, 0, 0), Vec(32, 32, 64)), (16, 16, 16))
with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                  dashboard_address=":0") as c, Client(c, set_as_default=False) as client:
    res = run_blocks(lambda b: b.box.size, blocks, client=client, name="nodefault")
    assert res.finished == len(blocks) and not res.failed, res
    print("ran", res.finished)
"""


def test_a_client_that_is_not_the_default_runs_the_blocks() -> None:
    """The blocks wait on the client given, not on dask's default client (there is none here:
    the only client is made with set_as_default=False)."""
    out = subprocess.run([sys.executable, "-c", NOT_DEFAULT], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ran 16" in out.stdout  # 2 x 2 x 4 blocks


def test_label_stats_with_a_client_equals_without(cluster: Any, tmp_path: Path) -> None:
    labels = synthetic_labels((32, 48, 64), cell=(8, 16, 16), seed=3)
    url = f"zarr://{tmp_path}/seg.zarr"
    seg = voxgate.create(url, shape=labels.shape, chunks=(16, 16, 32), dtype="uint64",
                         voxel_size=(40, 8, 8), kind="segmentation")
    seg[:] = labels
    local = voxgate.label_stats(url, block=(16, 16, 32))
    spread = voxgate.label_stats(url, block=(16, 16, 32), client=cluster)
    pd.testing.assert_frame_equal(spread, local)
    assert spread.attrs["provenance"].details["scheduler"] == "distributed"
    assert local.attrs["provenance"].details["scheduler"] == "threads"
    ids, counts = np.unique(labels[labels != 0], return_counts=True)
    np.testing.assert_array_equal(spread["id"], ids)
    np.testing.assert_array_equal(spread["voxel_count"], counts)
    with pytest.raises(InvalidRequestError, match="this process only"):
        voxgate.label_stats(labels, client=cluster)


def test_copy_and_downsample_with_a_client_equal_without(cluster: Any, tmp_path: Path) -> None:
    labels = synthetic_labels((32, 48, 64), cell=(8, 16, 16), seed=4)
    src = voxgate.create(f"zarr://{tmp_path}/src.zarr", shape=labels.shape, chunks=(16, 16, 16),
                         dtype="uint64", voxel_size=(8, 8, 8), kind="segmentation")
    src[:] = labels
    here, there = f"zarr://{tmp_path}/here.zarr", f"zarr://{tmp_path}/there.zarr"
    voxgate.copy(src.url, here, progress=False)
    voxgate.copy(src.url, there, progress=False, client=cluster)
    voxgate.downsample(here, 3, block=(16, 16, 16))
    voxgate.downsample(there, 3, block=(16, 16, 16), client=cluster)
    a, b = voxgate.open(here), voxgate.open(there)
    for k in range(3):
        np.testing.assert_array_equal(a.at_scale(k).read(), b.at_scale(k).read())
    np.testing.assert_array_equal(b.read(), labels)


def _ts_limit() -> int | None:
    from voxgate.storage import kvstore

    return kvstore._copy_limit


def test_each_worker_decodes_on_its_share_of_the_cores(cluster: Any) -> None:
    from voxgate.blockwise import worker_threads

    # both workers are there when the run begins (each run divides the cores among the workers
    # it finds): a worker killed by an earlier test may still be starting again (its nanny
    # restarts it), and the lone survivor then rightly takes both cores
    cluster.wait_for_workers(2, timeout=120)
    run_blocks(functools.partial(_once, "/nonexistent", "none"), BLOCKS[:2], client=cluster)
    cores = len(os.sched_getaffinity(0))
    # two one-thread workers on this machine: half its cores each (at least their one thread)
    assert set(cluster.run(_ts_limit).values()) == {worker_threads(1, cores, 2)}
    assert worker_threads(1, 2, 1) == 2  # a lone worker on 2 cores decodes on both
    assert worker_threads(1, 2, 2) == worker_threads(1, 2, 4) == 1
    assert worker_threads(4, 2, 1) == 4  # never fewer than its own task threads
