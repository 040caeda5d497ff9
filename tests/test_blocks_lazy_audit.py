"""The block-wise runner and the Services' plans do not grow with the number of blocks.

``voxgate.blockwise.run_blocks`` listed every item it was given (``list(items)``) and kept every
block done in ``BlockResults.done``; the Services listed their plans before the first block
ran (``[p.box for p in plan_blocks(...)]``, about 0.5 KiB a block at its peak): for a petascale
volume (10^8 blocks) tens of GiB held here before any block ran.  Now ``run_blocks`` takes its
items from an iterator as it sends them (at most its window of blocks in flight, on threads,
processes and a cluster alike), counts the blocks done (``BlockResults.finished``; listed only
with ``keep_done``), takes the progress bar's total from ``total=`` or ``len(items)``, and
``blockwise.iter_blocks`` / ``count_blocks`` give a plan's blocks one by one and their number
by arithmetic.  label_stats, downsample, map_blocks, predict, skeletonize and detect_synapses
walk their plans so.

The old code fails here: a generator is drained before the first block finishes, a run over
30,000 small items held what listing them holds (8.7 MiB traced, now 0.04), and label_stats of
45,056 blocks of one 16^3 chunk grew its peak RSS by ~27 MiB over a run of 4,096 (now ~3).
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.blockwise import Block, plan_blocks, run_blocks
from voxgate.errors import RemoteUnavailableError
from voxgate.geometry import Box, Vec, chunk_boxes


class _Counted:
    """A generator of ``n`` one-voxel-thick boxes that counts how many were taken."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.taken = 0

    def __iter__(self) -> Iterator[Box]:
        for i in range(self.n):
            self.taken += 1
            yield Box(Vec(i, 0, 0), Vec(i + 1, 4, 4))


def _size(b: Box) -> int:
    return b.size


@pytest.mark.parametrize("how", ["serial", "threads", "processes"])
def test_a_generator_is_taken_as_the_blocks_are_sent(how: str) -> None:
    """At most the run's window of items is taken ahead of those finished (threads: twice the
    workers; spawned processes: the workers and one); the old code took every item first."""
    n = 40 if how == "processes" else 400
    gen = _Counted(n)
    ahead: list[int] = []
    finished = 0

    def done(_b: Box, out: object) -> None:
        nonlocal finished
        finished += 1
        assert out == 16
        ahead.append(gen.taken - finished)

    workers = 1 if how == "serial" else 2
    res = run_blocks(_size, iter(gen), workers=workers, processes=how == "processes",
                     on_done=done)
    window = {"serial": 0, "threads": 2 * workers, "processes": workers + 1}[how]
    assert max(ahead) <= window, f"{max(ahead)} items taken ahead of those finished"
    assert finished == n and res.finished == n and not res.failed
    assert res.done == []  # not listed unless asked (keep_done)


def test_a_generator_on_a_cluster_is_taken_as_the_blocks_are_sent(cluster: Any) -> None:
    """On a dask cluster (2 one-thread workers): at most its window (8) ahead."""
    gen = _Counted(60)
    ahead: list[int] = []
    done = [0]

    def on_done(_b: Box, _out: object) -> None:
        done[0] += 1
        ahead.append(gen.taken - done[0])

    res = run_blocks(_size, iter(gen), client=cluster, name="lazy", on_done=on_done)
    assert max(ahead) <= 8, f"{max(ahead)} items taken ahead of those finished"
    assert res.finished == 60 and done[0] == 60 and not res.failed


@pytest.mark.parametrize("workers", [1, 2])
def test_the_run_holds_no_list_of_its_items(workers: int) -> None:
    """tracemalloc: a run over a generator of many small items peaks far below what listing
    them takes (the old code listed them, and listed them again as done)."""
    n = 60_000 if workers == 1 else 30_000
    tracemalloc.start()
    try:
        items = list(_Counted(n))
        _, listed = tracemalloc.get_traced_memory()
        del items
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        total = [0]
        res = run_blocks(_size, iter(_Counted(n)), workers=workers,
                         on_done=lambda _b, s: total.__setitem__(0, total[0] + int(str(s))))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < listed / 20, (
        f"run_blocks over {n} items peaked at {(peak - base) / 2**20:.1f} MiB traced; "
        f"listing them takes {listed / 2**20:.1f} MiB")
    assert res.finished == n and total[0] == 16 * n


def test_keep_done_lists_the_blocks_done() -> None:
    blocks = plan_blocks(Box(Vec(0, 0, 0), Vec(16, 32, 48)), (16, 16, 16))
    for workers in (1, 3):
        res = run_blocks(lambda b: b.box.size, iter(blocks), workers=workers, keep_done=True)
        assert sorted(res.done, key=lambda b: tuple(b.index)) == sorted(
            blocks, key=lambda b: tuple(b.index))
        assert res.finished == len(blocks) == 6


def _flaky(marker: str, b: Block) -> int:
    """RemoteUnavailableError the first time it meets block (0, 0, 1)."""
    if tuple(b.index) == (0, 0, 1) and not os.path.exists(marker):
        open(marker, "w").close()
        raise RemoteUnavailableError("the store did not answer (once)")
    return b.box.size


@pytest.mark.parametrize("workers", [1, 3])
def test_retries_and_errors_are_unchanged_with_a_generator(
        tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("voxgate.blockwise.BACKOFF", 0.01)
    region = Box(Vec(0, 0, 0), Vec(16, 32, 64))
    blocks = plan_blocks(region, (16, 16, 16))
    marker = str(tmp_path / "once")
    sizes: list[object] = []
    res = run_blocks(functools.partial(_flaky, marker), (b for b in blocks), workers=workers,
                     on_done=lambda _b, s: sizes.append(s))
    assert os.path.exists(marker) and not res.failed and len(sizes) == len(blocks) == 8
    assert sum(int(str(s)) for s in sizes) == region.size
    # retries=0: raised, naming its block
    os.unlink(marker)
    with pytest.raises(RemoteUnavailableError) as err:
        run_blocks(functools.partial(_flaky, marker), (b for b in blocks), workers=workers,
                   retries=0, name="flaky")
    assert tuple(err.value.block.index) == (0, 0, 1)  # type: ignore[attr-defined]
    assert "flaky: block (0, 0, 1)" in "".join(err.value.__notes__)
    # collect: returned instead
    os.unlink(marker)
    res = run_blocks(functools.partial(_flaky, marker), (b for b in blocks), workers=workers,
                     retries=0, collect=True)
    assert [tuple(b.index) for b, _ in res.failed] == [(0, 0, 1)]
    assert isinstance(res.failed[0][1], RemoteUnavailableError)


def test_a_failure_stops_taking_items() -> None:
    """One by one, a block that fails stops the run: no item after it is even taken."""
    gen = _Counted(1000)

    def fn(b: Box) -> int:
        if b.start.z == 2:
            raise ValueError("not a valid block")
        return b.size

    with pytest.raises(ValueError, match="not a valid block") as err:
        run_blocks(fn, iter(gen), workers=1, name="checker")
    assert gen.taken == 3
    assert "checker" in "".join(err.value.__notes__)
    # on threads, at most the window is taken past it
    gen = _Counted(1000)
    with pytest.raises(ValueError):
        run_blocks(fn, iter(gen), workers=2)
    assert gen.taken <= 3 + 2 * 2


def test_an_empty_generator_runs_nothing() -> None:
    ran: list[object] = []
    for workers in (1, 2):
        res = run_blocks(_size, iter(()), workers=workers, progress=True,
                         on_done=lambda b, _s: ran.append(b))
        assert not ran and not res.failed and res.done == []


def test_progress_takes_its_total_from_total_or_len(capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    run_blocks(_size, iter(_Counted(5)), workers=2, progress=True, name="counted",
               total=5, total_bytes=5 * 16 * 8)
    text = capsys.readouterr().err
    assert "counted" in text and "5/5" in text and "640 B" in text
    run_blocks(_size, list(_Counted(7)), workers=2, progress=True, name="listed",
               nbytes=lambda b: b.size)
    text = capsys.readouterr().err
    assert "listed" in text and "7/7" in text and "112 B" in text
    # a generator without a total: a bar counting the blocks, no total
    run_blocks(_size, iter(_Counted(6)), workers=2, progress=True, name="uncounted")
    text = capsys.readouterr().err
    assert "uncounted" in text and "6/?" in text


def _oracle(region: Box, block: Vec, bounds: Box | None, order: str) -> list[Block]:
    """The plan as plan_blocks made it before: every grid cell listed, sorted by Morton code."""
    from voxgate.blockwise import _morton

    bounds = region if bounds is None else bounds
    out = [Block(idx, cell.intersect(region)) for idx, cell in chunk_boxes(region, block, bounds)]
    out = [b for b in out if not b.box.is_empty()]
    if order == "morton":
        out.sort(key=lambda b: _morton(b.index))
    return out


def test_count_and_iter_blocks_match_the_plan_on_odd_shapes() -> None:
    from voxgate.blockwise import count_blocks, iter_blocks

    rng = random.Random(7)
    cases = [
        (Box(Vec(0, 0, 0), Vec(1, 1, 1)), Vec(16, 16, 16), None),
        (Box(Vec(5, 10, 0), Vec(37, 64, 50)), Vec(16, 32, 32), Box(Vec(0, 0, 0), Vec(40, 64, 64))),
        (Box(Vec(-7, 3, 100), Vec(9, 70, 101)), Vec(3, 5, 7), Box(Vec(-20, -3, 90),
                                                                  Vec(40, 60, 300))),
        (Box(Vec(0, 0, 0), Vec(1, 1, 1000)), Vec(1, 1, 3), None),  # one long row
        (Box(Vec(0, 0, 0), Vec(10, 10, 10)), Vec(4, 4, 4), Box(Vec(20, 20, 20), Vec(30, 30, 30))),
    ]
    for _ in range(150):
        bs = Vec(*(rng.randint(-20, 20) for _ in range(3)))
        bounds = Box(bs, bs + Vec(*(rng.randint(1, 90) for _ in range(3))))
        rs = Vec(*(rng.randint(-30, 60) for _ in range(3)))
        region = Box(rs, rs + Vec(*(rng.randint(1, 90) for _ in range(3))))
        cases.append((region, Vec(*(rng.randint(1, 17) for _ in range(3))),
                      bounds if rng.random() < 0.8 else None))
    for region, block, bounds in cases:
        n = count_blocks(region, block, bounds)
        assert n == len(plan_blocks(region, block, bounds)), (region, block, bounds)
        for order in ("morton", "row"):
            want = _oracle(region, block, bounds, order)
            assert len(want) == n
            got = iter_blocks(region, block, bounds, order=order)  # type: ignore[arg-type]
            assert not isinstance(got, list)
            assert list(got) == want, (region, block, bounds, order)
            assert plan_blocks(region, block, bounds, order=order) == want  # type: ignore[arg-type]


def test_iter_blocks_is_lazy() -> None:
    """The first blocks of a plan of 2^30 come at once, without the rest."""
    from voxgate.blockwise import count_blocks, iter_blocks

    region = Box(Vec(0, 0, 0), Vec(1024 * 16, 1024 * 16, 1024 * 16))
    assert count_blocks(region, (16, 16, 16)) == 2**30
    first = list(itertools.islice(iter_blocks(region, (16, 16, 16)), 9))
    assert [tuple(b.index) for b in first] == [
        (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1),
        (0, 0, 2)]


_RSS = """
import gc, sys
import numpy as np, pandas, tensorstore
import voxgate
import voxgate.services.label_stats
def peak_mib():
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
v = voxgate.open("zarr://{path}")
# a run of 4,096 blocks first: its imports, threads and caches are what any run holds
small = voxgate.label_stats(v[0:16, :, :], block=(16, 16, 16), workers=2, prefer="local")
gc.collect()
base = peak_mib()
big = voxgate.label_stats(v[0:176, :, :], block=(16, 16, 16), workers=2, prefer="local")
print("SMALL", small.to_dict("records"))
print("BIG", big.to_dict("records"), big.attrs["provenance"].details["blocks"])
print(f"GROWTH_MIB {{peak_mib() - base:.1f}}")
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(),
                    reason="peak RSS is read from /proc/self/status (Linux)")
def test_label_stats_does_not_list_its_plan(tmp_path: Path) -> None:
    """label_stats over 45,056 blocks of one 16^3 chunk each (a mostly absent zarr) peaks no
    higher than over 4,096, give or take a few MiB: the old code listed the plan (~27 MiB more;
    0.5 KiB a block), and run_blocks listed it twice more."""
    path = tmp_path / "seg.zarr"
    vol = voxgate.create(f"zarr://{path}", shape=(176, 1024, 1024), dtype="uint32",
                         chunks=(16, 16, 16), voxel_size=(8, 8, 8), kind="segmentation")
    a = np.zeros((16, 16, 16), np.uint32)
    a[2:5, 3:9, 1:4] = 7
    vol[0:16, 0:16, 0:16] = a
    b = np.zeros((16, 16, 16), np.uint32)
    b[10:16, 0:2, 15:16] = 9
    vol[160:176, 1008:1024, 1008:1024] = b
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_RSS.format(path=path))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in proc.stdout.splitlines()}
    seven = {"id": 7, "voxel_count": 54, "z0": 2, "y0": 3, "x0": 1, "z1": 5, "y1": 9, "x1": 4,
             "centroid_z": 3.0, "centroid_y": 5.5, "centroid_x": 2.0}
    nine = {"id": 9, "voxel_count": 12, "z0": 170, "y0": 1008, "x0": 1023, "z1": 176,
            "y1": 1010, "x1": 1024, "centroid_z": 172.5, "centroid_y": 1008.5,
            "centroid_x": 1023.0}
    assert lines["SMALL"] == repr([seven])
    assert lines["BIG"] == f"{[seven, nine]!r} {11 * 64 * 64}"
    growth = float(lines["GROWTH_MIB"])
    assert growth < 10, f"label_stats of 45,056 blocks peaked {growth} MiB above 4,096 blocks"
