"""voxgate.copy(..., client=...): the block plan on a 2-process dask.distributed LocalCluster,
a worker killed mid-copy, a stopped run resumed from the journal, mem:// refused."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
import voxgate.transfer
from voxgate.errors import InvalidRequestError, PartialWriteError
from voxgate.synthetic import synthetic_em
from voxgate.transfer import CopyInterrupted

SHAPE = (24, 40, 56)
#: shards of 2 x 2 x 2 chunks (so a small volume has several)
SHARDING = {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 3, "hash": "identity",
            "minishard_bits": 0, "shard_bits": 6, "minishard_index_encoding": "gzip",
            "data_encoding": "gzip"}


@pytest.fixture(scope="module")
def em() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_em(SHAPE, seed=5, cell=(8, 16, 16))


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # one block per destination write-grid cell: many tasks from a small volume
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)


def _source(url: str, data: np.ndarray, kind: str, **options: Any) -> voxgate.Volume:
    vol = voxgate.create(url, shape=data.shape, dtype=data.dtype, chunks=(8, 16, 16),
                         voxel_size=(40, 8, 8), kind=kind, num_scales=2, offset=(0, 8, 16),
                         **options)
    vol[:] = data
    vol.at_scale(1)[:] = data[:, ::2, ::2][: vol.at_scale(1).shape[0]]
    return vol


def _assert_same(src: voxgate.Volume, dst_url: str) -> None:
    out = voxgate.open(dst_url)
    for k in range(2):
        np.testing.assert_array_equal(out.at_scale(k).read(), src.at_scale(k).read())


def test_zarr_to_sharded_precomputed_and_back(cluster: Any, tmp_path: Path, small_blocks: None,
                                              em: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = em
    src = _source(f"zarr://{tmp_path}/src.zarr", labels, "segmentation")
    sharded = f"precomputed://file://{tmp_path}/sharded"
    report = voxgate.copy(src.url, sharded, client=cluster, progress=False,
                          sharded=SHARDING)
    assert report.created and report.scales == [0, 1]
    assert report.blocks_written == report.blocks_total > 2
    assert not report.resumed
    _assert_same(src, sharded)
    # the destination's write unit is a whole shard: every block is one or more whole shards
    d = voxgate.open(sharded).remote
    assert d.write_grid(0) != d.meta.scale(0).chunks
    # and back, to a fresh zarr, an image this time
    img = _source(f"precomputed://file://{tmp_path}/img", image, "image")
    back = f"zarr://{tmp_path}/back.zarr"
    report = voxgate.copy(img.url, back, client=cluster, progress=False)
    assert report.blocks_written == report.blocks_total > 2
    _assert_same(img, back)
    # the journal is gone once the copy completes
    assert not voxgate.transfer.list_journals()


def _install_killer(marker: str, start: tuple[int, ...]) -> None:
    """On a worker: the block starting at ``start`` kills its worker process the first time
    any worker reaches it (the nanny restarts the worker, without this patch)."""
    import voxgate.transfer as t

    real = getattr(t, "_real_copy_part", t._copy_part)
    t._real_copy_part = real  # type: ignore[attr-defined]

    def copy_part(s: Any, d: Any, scale: int, part: Any, skip_fill: bool) -> tuple[int, bool]:
        if scale == 0 and tuple(part.start) == start and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return real(s, d, scale, part, skip_fill)

    t._copy_part = copy_part


def _remove_killer() -> None:
    import voxgate.transfer as t

    real = getattr(t, "_real_copy_part", None)
    if real is not None:
        t._copy_part = real


def test_a_worker_killed_mid_copy(cluster: Any, tmp_path: Path, small_blocks: None,
                                  em: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = em
    src = _source(f"zarr://{tmp_path}/src.zarr", labels, "segmentation")
    dst = f"zarr://{tmp_path}/dst.zarr"
    marker = tmp_path / "died"
    start = (8, 24, 32)  # a block in the middle of scale 0 (offset (0, 8, 16), chunks 8x16x16)
    cluster.run(_install_killer, str(marker), start)
    try:
        report = voxgate.copy(src.url, dst, client=cluster, progress=False)
    finally:
        cluster.run(_remove_killer)
    assert marker.exists()  # a worker did die, at that block
    assert report.blocks_written == report.blocks_total
    _assert_same(src, dst)
    assert not voxgate.transfer.list_journals()


def test_a_stopped_run_resumes_from_the_journal(cluster: Any, tmp_path: Path, small_blocks: None,
                                                em: tuple[np.ndarray, np.ndarray],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    image, _ = em
    src = _source(f"zarr://{tmp_path}/src.zarr", image, "image")
    dst = f"precomputed://file://{tmp_path}/dst"
    stop_after = 5
    real_record = voxgate.transfer._Journal.record
    recorded = []

    def record(self: Any, key: tuple[int, ...]) -> None:
        real_record(self, key)
        recorded.append(key)
        if len(recorded) == stop_after:
            raise KeyboardInterrupt  # Ctrl-C on the client after 5 blocks are recorded

    monkeypatch.setattr(voxgate.transfer._Journal, "record", record)
    with pytest.raises(CopyInterrupted) as stopped:
        voxgate.copy(src.url, dst, client=cluster, progress=False)
    assert stopped.value.blocks_done == stop_after
    total = stopped.value.blocks_total
    assert total > stop_after
    [status] = voxgate.transfer.list_journals()
    assert status.blocks_done == stop_after
    monkeypatch.setattr(voxgate.transfer._Journal, "record", real_record)
    report = voxgate.copy(src.url, dst, client=cluster, progress=False)
    assert report.resumed
    assert report.blocks_skipped == stop_after
    assert report.blocks_written == total - stop_after
    _assert_same(src, dst)
    assert not voxgate.transfer.list_journals()


def test_progress_on_the_client(cluster: Any, tmp_path: Path, small_blocks: None,
                                em: tuple[np.ndarray, np.ndarray],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    image, _ = em
    src = _source(f"zarr://{tmp_path}/src.zarr", image, "image")
    advanced: list[int] = []
    real = voxgate.transfer.progress_bar

    def spy(*args: Any, **kwargs: Any) -> Any:
        cm = real(*args, **kwargs)

        class Wrapped:
            def __enter__(self) -> Any:
                bar = cm.__enter__()
                inner = bar.advance

                def advance(n: int = 1) -> None:
                    advanced.append(n)
                    inner(n)

                bar.advance = advance  # type: ignore[method-assign]
                return bar

            def __exit__(self, *exc: Any) -> Any:
                return cm.__exit__(*exc)

        return Wrapped()

    monkeypatch.setattr(voxgate.transfer, "progress_bar", spy)
    report = voxgate.copy(src.url, f"zarr://{tmp_path}/dst.zarr", client=cluster)
    assert len(advanced) == report.blocks_written
    assert sum(advanced) == image.nbytes + src.at_scale(1).read().nbytes


def test_volumes_workers_cannot_open_are_refused(cluster: Any, tmp_path: Path,
                                                 em: tuple[np.ndarray, np.ndarray]) -> None:
    image, _ = em
    mem = _source("mem://distributed-src", image, "image")
    dst = f"zarr://{tmp_path}/dst.zarr"
    with pytest.raises(InvalidRequestError, match="lives in this process only"):
        voxgate.copy(mem.url, dst, client=cluster, progress=False)
    with pytest.raises(InvalidRequestError, match="lives in this process only"):
        voxgate.copy(mem, dst, client=cluster, progress=False)
    assert not os.path.exists(tmp_path / "dst.zarr")  # refused before anything was created
    src = _source(f"zarr://{tmp_path}/src.zarr", image, "image")
    with pytest.raises(InvalidRequestError, match="lives in this process only"):
        voxgate.copy(src.url, "mem://distributed-dst", client=cluster, progress=False)
    with pytest.raises(InvalidRequestError, match="several worker processes"):
        voxgate.copy(src.url, f"hdf5://{tmp_path}/dst.h5#/volume", client=cluster,
                     progress=False)
    with pytest.raises(InvalidRequestError, match="retries"):
        voxgate.copy(src.url, dst, client=cluster, progress=False, retries=-1)


def test_cli_cp_scheduler(cluster: Any, tmp_path: Path, small_blocks: None,
                          em: tuple[np.ndarray, np.ndarray]) -> None:
    from click.testing import CliRunner

    from voxgate.cli import main

    _, labels = em
    src = _source(f"n5://{tmp_path}/src.n5", labels, "segmentation")
    dst = f"zarr://{tmp_path}/dst.zarr"
    address = cluster.scheduler.address
    assert address.startswith("tcp://127.0.0.1:")
    res = CliRunner().invoke(main, ["cp", src.url, dst, "--scheduler", address, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "created and copied" in res.output
    _assert_same(src, dst)
    res = CliRunner().invoke(main, ["cp", src.url, dst, "--scheduler", address, "--workers", "2"])
    assert res.exit_code != 0 and "--workers" in res.output
    res = CliRunner().invoke(main, ["cp", "mem://nowhere", f"zarr://{tmp_path}/x.zarr",
                                    "--scheduler", address])
    assert res.exit_code != 0 and "lives in this process only" in res.output


def test_relative_paths_reach_workers_in_another_directory(
        cluster: Any, tmp_path: Path, em: tuple[np.ndarray, np.ndarray],
        monkeypatch: pytest.MonkeyPatch) -> None:
    image, _ = em
    monkeypatch.chdir(tmp_path)
    src = _source("zarr://rel-src.zarr", image, "image")
    before = cluster.run(os.getcwd)
    cluster.run(os.chdir, "/")  # as on a real cluster, the workers run elsewhere
    try:
        voxgate.copy("zarr://rel-src.zarr", "zarr://rel-dst.zarr", client=cluster,
                     progress=False)
    finally:
        for worker, cwd in before.items():
            cluster.run(os.chdir, cwd, workers=[worker])
    assert not os.path.exists("/rel-dst.zarr")
    _assert_same(src, str(tmp_path / "rel-dst.zarr"))


class _CountingClient:
    """The cluster's client, counting the copy's tasks submitted and not yet finished."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.submitted: list[Any] = []
        self.most_in_flight = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        fut = self.client.submit(*args, **kwargs)
        self.submitted.append(fut)
        in_flight = sum(1 for f in self.submitted if not f.done())
        self.most_in_flight = max(self.most_in_flight, in_flight)
        return fut

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_window_of_tasks_is_in_flight(cluster: Any, tmp_path: Path, small_blocks: None,
                                        em: tuple[np.ndarray, np.ndarray]) -> None:
    image, _ = em
    src = _source(f"zarr://{tmp_path}/src.zarr", image, "image")
    counting = _CountingClient(cluster)
    report = voxgate.copy(src.url, f"zarr://{tmp_path}/dst.zarr", client=counting,
                          progress=False)
    threads = sum(cluster.nthreads().values())
    window = max(8, voxgate.transfer.TASKS_PER_THREAD * threads)
    assert len(counting.submitted) == report.blocks_total > window  # one task per block
    assert counting.most_in_flight <= window
    _assert_same(src, f"zarr://{tmp_path}/dst.zarr")


def test_a_block_that_keeps_failing_stops_the_copy_and_a_rerun_resumes(
        cluster: Any, tmp_path: Path, small_blocks: None,
        em: tuple[np.ndarray, np.ndarray]) -> None:
    image, _ = em
    src = _source(f"zarr://{tmp_path}/src.zarr", image, "image")
    chunks = sorted(p for p in (tmp_path / "src.zarr").rglob("*")
                    if p.is_file() and "c" in p.relative_to(tmp_path / "src.zarr").parts)
    bad = chunks[len(chunks) // 2]
    good = bad.read_bytes()
    bad.write_bytes(b"not a blosc chunk")
    dst = f"zarr://{tmp_path}/dst.zarr"
    with pytest.raises(PartialWriteError, match="rerun the same copy to resume") as failed:
        voxgate.copy(src.url, dst, client=cluster, progress=False, retries=1)
    assert len(failed.value.failed) == 1
    [status] = voxgate.transfer.list_journals()
    assert 0 < status.blocks_done < status.blocks_total
    bad.write_bytes(good)
    report = voxgate.copy(src.url, dst, client=cluster, progress=False)
    assert report.resumed and report.blocks_skipped == status.blocks_done
    assert report.blocks_skipped + report.blocks_written == report.blocks_total
    _assert_same(src, dst)
