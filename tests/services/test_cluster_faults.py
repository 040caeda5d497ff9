"""The block-wise Services when a block runs twice: its worker killed after the block's work
(dask runs it again on the other worker of a 2-process LocalCluster) or a transient error
after its write (voxgate's retry rule runs it again).  Each result must equal the run without
a cluster and the numpy reference: a block's outputs are idempotent and counted once."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import voxgate
import voxgate.blockwise
from voxgate.errors import InvalidRequestError, RemoteUnavailableError
from voxgate.services.connected_components import connected_components_kernel
from voxgate.synthetic import synthetic_labels

# (the package's names are the Service functions: the modules by their full names)
cc_module = importlib.import_module("voxgate.services.connected_components")
mb_module = importlib.import_module("voxgate.services.map_blocks")

SHAPE = (32, 32, 64)
CHUNKS = (8, 16, 16)
#: a block in the middle of the volume (not the first: its final ids are not its local ones)
MIDDLE = (16, 16, 32)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return synthetic_labels(SHAPE, cell=(8, 16, 16), seed=11)


def _store(url: str, data: np.ndarray) -> voxgate.Volume:
    vol = voxgate.create(url, shape=data.shape, dtype=data.dtype, chunks=CHUNKS,
                         voxel_size=(8, 8, 8), kind="segmentation" if data.dtype.itemsize >= 4
                         else "image")
    vol[:] = data
    return vol


def _install_killer(module: str, name: str, marker: str) -> None:
    """On a worker: after ``module.name`` finishes a block (its last positional argument, a Box
    or a Block) that is not the first (at 0, 0, 0), the worker process dies, the first time any
    worker gets there; the scheduler then runs that block again on the other worker."""
    mod = importlib.import_module(module)
    real = getattr(mod, f"_real_{name}", getattr(mod, name))
    setattr(mod, f"_real_{name}", real)

    def killer(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        box = getattr(args[-1], "box", args[-1])
        if any(box.start):
            try:  # one worker only, even when both get there at once
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return out
            os._exit(1)
        return out

    setattr(mod, name, killer)


def _remove_killer(module: str, name: str) -> None:
    mod = importlib.import_module(module)
    real = getattr(mod, f"_real_{name}", None)
    if real is not None:
        setattr(mod, name, real)


def _killing(cluster: Any, tmp_path: Path, module: str, name: str,
             run: Callable[[], Any]) -> Any:
    """``run()`` with the worker running ``module.name`` killed after one block (not the first);
    asserts a worker did die there."""
    cluster.wait_for_workers(2, timeout=120)  # (one killed by a test before may be restarting)
    marker = tmp_path / f"died-{name}"
    cluster.run(_install_killer, module, name, str(marker))
    try:
        out = run()
    finally:
        cluster.run(_remove_killer, module, name)
    assert marker.exists(), "no worker died: the test did not test a block run twice"
    return out


def test_cc_relabel_block_run_twice_on_a_cluster(cluster: Any, tmp_path: Path,
                                                 labels: np.ndarray) -> None:
    """Pass 3 rewrites the out= store in place: a block run again read its final numbers and
    mapped them a second time (an IndexError, or wrong ids, on the old code)."""
    src = _store(f"zarr://{tmp_path}/seg.zarr", labels)
    out = f"zarr://{tmp_path}/cc.zarr"
    got = _killing(cluster, tmp_path, "voxgate.services.connected_components",
                   "_relabel_block",
                   lambda: voxgate.connected_components(src.url, out, block=CHUNKS,
                                                        client=cluster))
    want = connected_components_kernel(labels)
    np.testing.assert_array_equal(got.read(), want)
    np.testing.assert_array_equal(voxgate.connected_components(labels), want)


def _fail_once_after(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[Any]:
    """``module.name`` raises a transient error once, on block :data:`MIDDLE`, after doing its
    work (a store that failed after part of a block's chunks were written)."""
    real = getattr(module, name)
    failed: list[Any] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        box = getattr(args[-1], "box", args[-1])
        if tuple(box.start) == MIDDLE and not failed:
            failed.append(box)
            raise RemoteUnavailableError("the store did not answer (once)")
        return out

    monkeypatch.setattr(module, name, flaky)
    monkeypatch.setattr(voxgate.blockwise, "BACKOFF", 0.01)
    return failed


@pytest.mark.parametrize("workers", [1, 2])
def test_cc_relabel_block_retried_after_its_write(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path, labels: np.ndarray,
                                                  workers: int) -> None:
    src = _store(f"zarr://{tmp_path}/seg.zarr", labels)
    failed = _fail_once_after(monkeypatch, cc_module, "_relabel_block")
    got = voxgate.connected_components(src.url, f"zarr://{tmp_path}/cc.zarr", block=CHUNKS,
                                       workers=workers)
    assert failed  # the block was run twice
    np.testing.assert_array_equal(got.read(), connected_components_kernel(labels))


def test_map_blocks_in_place_block_retried_after_its_write(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path,
                                                           labels: np.ndarray) -> None:
    """Written into its source, a block run again read what it had written: fn applied twice
    (old code: +2 on that block)."""
    data = (labels % 200).astype(np.uint8)
    vol = _store(f"zarr://{tmp_path}/img.zarr", data)
    failed = _fail_once_after(monkeypatch, mb_module, "run_block")
    voxgate.map_blocks(lambda a: a + 1, vol.url, voxgate.open(vol.url, mode="r+"),
                       block=CHUNKS, workers=2)
    assert failed
    np.testing.assert_array_equal(voxgate.open(vol.url).read(), data + 1)


def test_map_blocks_in_place_on_a_cluster_is_refused(cluster: Any, tmp_path: Path,
                                                     labels: np.ndarray) -> None:
    data = (labels % 200).astype(np.uint8)
    vol = _store(f"zarr://{tmp_path}/img.zarr", data)
    with pytest.raises(InvalidRequestError, match=r"out is the source .* run again"):
        voxgate.map_blocks(lambda a: a + 1, vol.url, voxgate.open(vol.url, mode="r+"),
                           block=CHUNKS, client=cluster)
    np.testing.assert_array_equal(voxgate.open(vol.url).read(), data)  # nothing written


def test_label_stats_block_run_twice_is_counted_once(cluster: Any, tmp_path: Path,
                                                     labels: np.ndarray) -> None:
    src = _store(f"zarr://{tmp_path}/seg.zarr", labels)
    got = _killing(cluster, tmp_path, "voxgate.services.label_stats", "_block_stats",
                   lambda: voxgate.label_stats(src.url, block=CHUNKS, client=cluster))
    pd.testing.assert_frame_equal(got, voxgate.label_stats(src.url, block=CHUNKS))
    ids, counts = np.unique(labels[labels != 0], return_counts=True)
    np.testing.assert_array_equal(got["id"], ids)
    np.testing.assert_array_equal(got["voxel_count"], counts)


def test_downsample_block_run_twice(cluster: Any, tmp_path: Path, labels: np.ndarray) -> None:
    here = _store(f"zarr://{tmp_path}/here.zarr", labels)
    there = _store(f"zarr://{tmp_path}/there.zarr", labels)
    # two scales: blocks of two scale-1 chunks' worth of scale 0 (several in this volume)
    voxgate.downsample(here.url, 2, block=CHUNKS)
    _killing(cluster, tmp_path, "voxgate.services.downsample", "_downsample_block",
             lambda: voxgate.downsample(there.url, 2, block=CHUNKS, client=cluster))
    a, b = voxgate.open(here.url), voxgate.open(there.url)
    for k in range(2):
        np.testing.assert_array_equal(b.at_scale(k).read(), a.at_scale(k).read())
    # mode of each 2x2x2 cell at scale 1 where the cell is one label (no tie to break)
    cells = labels.reshape(16, 2, 16, 2, 32, 2).transpose(0, 2, 4, 1, 3, 5).reshape(
        16, 16, 32, 8)
    whole = (cells == cells[..., :1]).all(axis=-1)
    np.testing.assert_array_equal(b.at_scale(1).read()[whole], cells[..., 0][whole])


def test_mesh_block_run_twice(cluster: Any, tmp_path: Path, labels: np.ndarray) -> None:
    src = _store(f"zarr://{tmp_path}/seg.zarr", labels)
    ids = [int(i) for i in np.unique(labels)[1:6]]
    got = _killing(cluster, tmp_path, "voxgate.services.mesh", "_block_pieces",
                   lambda: voxgate.mesh(src.url, ids, block=CHUNKS, client=cluster))
    want = voxgate.mesh(src.url, ids, block=CHUNKS)
    assert sorted(got) == sorted(want) == ids
    for i in ids:
        assert len(got[i].faces) == len(want[i].faces) > 0
        np.testing.assert_array_equal(np.sort(got[i].vertices, axis=0),
                                      np.sort(want[i].vertices, axis=0))

