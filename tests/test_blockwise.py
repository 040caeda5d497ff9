"""voxgate.blockwise on this machine: the plan (write-unit aligned, Morton order, budget), the run
on threads and spawned processes, the retry rule, errors naming their block, progress."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.blockwise import (
    Block,
    block_shape,
    is_transient,
    plan_blocks,
    run_blocks,
    scheduler_name,
)
from voxgate.errors import InvalidRequestError, RemoteUnavailableError
from voxgate.geometry import Box, Vec


def test_block_shape_is_whole_write_units() -> None:
    # grown toward the budget from the grid, never past the region
    assert block_shape((8, 16, 16), 1, (64, 64, 64), budget=8 * 32 * 32) == (8, 32, 32)
    assert block_shape((8, 16, 16), 8, (8, 16, 16), budget=2**30) == (8, 16, 16)
    # a wish is rounded up to whole units
    assert block_shape((8, 16, 16), 1, (64, 64, 64), block=(10, 16, 3)) == (16, 16, 16)
    assert block_shape((8, 16, 16), 1, (64, 64, 64), block=(8, 16, 16),
                       at_least=(9, 1, 1)) == (16, 16, 16)
    with pytest.raises(InvalidRequestError, match="three positive integers"):
        block_shape((8, 16, 16), 1, (64, 64, 64), block=(0, 16, 16))


def test_plan_covers_the_region_once_on_the_output_grid_neighbours_together() -> None:
    bounds = Box(Vec(0, 0, 0), Vec(40, 64, 64))
    region = Box(Vec(5, 10, 0), Vec(37, 64, 50))
    blocks = plan_blocks(region, (16, 32, 32), bounds)
    cover = np.zeros(tuple(bounds.shape), np.uint8)
    for b in blocks:
        assert region.contains(b.box)
        # each block lies inside one cell of the output's grid (anchored at its origin)
        cell = Box(Vec(*(i * s for i, s in zip(b.index, (16, 32, 32), strict=True))),
                   Vec(*((i + 1) * s for i, s in zip(b.index, (16, 32, 32), strict=True))))
        assert cell.contains(b.box)
        cover[b.box.slices()] += 1
    np.testing.assert_array_equal(cover[region.slices()], 1)
    assert cover.sum() == region.size
    # Morton order: the first 8 blocks of a 2x2x2-or-more grid are one 2x2x2 group
    big = plan_blocks(Box(Vec(0, 0, 0), Vec(64, 64, 64)), (16, 16, 16))
    first = {tuple(b.index) for b in big[:8]}
    assert first == {(z, y, x) for z in (0, 1) for y in (0, 1) for x in (0, 1)}
    assert [tuple(b.index) for b in plan_blocks(Box(Vec(0, 0, 0), Vec(64, 64, 64)), (16, 16, 16),
                                                order="row")][:3] == [(0, 0, 0), (0, 0, 1),
                                                                      (0, 0, 2)]


def _flaky(marker_dir: str, b: Block) -> int:
    """Fails with RemoteUnavailableError the first time it meets block (0, 0, 1)."""
    marker = os.path.join(marker_dir, "failed-once")
    if tuple(b.index) == (0, 0, 1) and not os.path.exists(marker):
        open(marker, "w").close()
        raise RemoteUnavailableError("the store did not answer (once)")
    return b.box.size


@pytest.mark.parametrize("workers", [1, 3])
def test_a_transient_error_is_retried(tmp_path: Path, workers: int,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("voxgate.blockwise.BACKOFF", 0.01)
    blocks = plan_blocks(Box(Vec(0, 0, 0), Vec(16, 32, 64)), (16, 16, 16))
    sizes: dict[Vec, object] = {}
    res = run_blocks(functools.partial(_flaky, str(tmp_path)), blocks, workers=workers,
                     on_done=lambda b, n: sizes.__setitem__(b.index, n), keep_done=True)
    assert (tmp_path / "failed-once").exists()
    assert sorted(res.done, key=lambda b: tuple(b.index)) == sorted(blocks,
                                                                  key=lambda b: tuple(b.index))
    assert sum(int(str(n)) for n in sizes.values()) == 16 * 32 * 64 and not res.failed
    # retries=0: the transient error is raised, naming its block
    (tmp_path / "failed-once").unlink()
    with pytest.raises(RemoteUnavailableError) as err:
        run_blocks(functools.partial(_flaky, str(tmp_path)), blocks, workers=workers, retries=0,
                   name="flaky")
    assert tuple(err.value.block.index) == (0, 0, 1)  # type: ignore[attr-defined]


def test_another_error_stops_the_run_and_names_the_block() -> None:
    blocks = plan_blocks(Box(Vec(0, 0, 0), Vec(16, 16, 160)), (16, 16, 16), order="row")
    ran: list[Block] = []

    def fn(b: Block) -> None:
        ran.append(b)
        if tuple(b.index) == (0, 0, 2):
            raise ValueError("not a valid block")

    with pytest.raises(ValueError, match="not a valid block") as err:
        run_blocks(fn, blocks, workers=1, name="checker")
    assert len(ran) == 3  # raised at once: no block after it ran
    note = "".join(err.value.__notes__)
    assert "checker" in note and "(0, 0, 2)" in note and repr(blocks[2].box) in note
    # collect: the failure is returned instead
    res = run_blocks(fn, blocks, workers=2, collect=True)
    assert [tuple(b.index) for b, _ in res.failed] == [(0, 0, 2)]
    assert isinstance(res.failed[0][1], ValueError)
    with pytest.raises(InvalidRequestError, match="workers"):
        run_blocks(fn, blocks, workers=0)


def test_is_transient() -> None:
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    assert is_transient(RemoteUnavailableError("down"))
    assert is_transient(KilledWorker("task", "worker", 3))  # type: ignore[arg-type]
    assert is_transient(CommClosedError("closed"))
    assert not is_transient(ValueError("bad"))
    assert not is_transient(ConnectionRefusedError("a socket, not a store"))
    assert scheduler_name() == "threads" and scheduler_name(processes=True) == "processes"
    assert scheduler_name(object()) == "distributed"


def _square_sum(scale: int, b: Block) -> int:
    return int(scale * b.box.size)


def test_spawned_processes_get_the_function_once() -> None:
    blocks = plan_blocks(Box(Vec(0, 0, 0), Vec(32, 32, 32)), (16, 16, 16))
    got: list[object] = []
    res = run_blocks(functools.partial(_square_sum, 3), blocks, workers=2, processes=True,
                     on_done=lambda _b, n: got.append(n))
    assert res.finished == 8 and got.count(3 * 16**3) == 8


def test_progress_names_the_service_blocks_and_bytes(capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    labels = np.zeros((32, 32, 64), np.uint64)
    labels[4:20, 3:9, 10:60] = 7
    df = voxgate.label_stats(labels, block=(16, 16, 16), progress=True, workers=2)
    assert df["voxel_count"].tolist() == [16 * 6 * 50]
    out = capsys.readouterr()
    text = out.err  # (on stderr: stdout is the commands' output)
    assert "label stats" in text and "16/16" in text and "512.0 KiB" in text
    assert "label stats" not in out.out
    voxgate.label_stats(labels, block=(16, 16, 16))
    quiet = capsys.readouterr()
    assert "label stats" not in quiet.out + quiet.err


def test_scattering_the_function_again_survives_a_dropped_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After every worker died, the function is scattered again; a scheduler that drops that
    connection while the nannies start new workers (CommClosedError, seen once under load)
    is asked again, and only SCATTER_ATTEMPTS failures in a row stop the run."""
    from distributed import Client, LocalCluster
    from distributed.comm.core import CommClosedError

    import voxgate.blockwise as bw

    monkeypatch.setattr(bw, "BACKOFF", 0.01)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        pool = bw._Pool(_square_sum, "distributed", 1, client, "t", None)
        real = client.scatter
        calls = {"n": 0, "fail": 2}

        def flaky(*args: object, **kwargs: object) -> object:
            calls["n"] += 1
            if calls["n"] <= calls["fail"]:
                raise CommClosedError("in <TCP ConnectionPool.scatter>: Stream is closed")
            return real(*args, **kwargs)

        monkeypatch.setattr(client, "scatter", flaky)
        fut = pool._scatter_again()
        assert calls["n"] == 3 and fut.result() is _square_sum
        calls.update(n=0, fail=bw.SCATTER_ATTEMPTS)
        with pytest.raises(CommClosedError):
            pool._scatter_again()
        assert calls["n"] == bw.SCATTER_ATTEMPTS
        pool.close()
