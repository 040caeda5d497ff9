"""The memory the block-wise Services hold at once does not grow with their workers, and
detect_synapses' in-memory path keeps its components narrow.

Each worker runs one block at a time and holds it about twice (the block read and its
relabelled or cast copy, and the kernel's own arrays): with 64 MiB blocks of uint64,
``connected_components`` into a store of a 1 GiB volume peaked at 121 MiB above its baseline
with one worker and 788 with eight, ``label_stats`` at 142 and 862 (a 64-core node with the
default workers: ~6 GiB).  ``block_shape`` now cuts a block's budget to its share of
``blockwise.INFLIGHT_BYTES`` (256 MiB of voxels) when ``at_once`` blocks run at once in one
process (``blocks_at_once``: the workers, or on a dask cluster the most threads of one worker
process), at least one write unit: eight workers run 32 MiB blocks, and peaked at 409 and
458 MiB (four workers: 404 and 462; 32 workers: 392 and 179).  A user's ``block=`` is kept.

``detect_synapses`` on its in-memory path (up to 2**26 voxels) held its components as uint64
and read them back whole for its statistics: a 64 MiB uint8 image peaked at 845 MiB.  They are
now cc3d's narrowest dtype (uint16 there): 596 MiB, which was predict's peak (a numpy image
was one chunk, so predict ran it as one block of float32 in and out); predict now runs a numpy
image larger than a block block by block: 383 MiB.

Peak RSS is measured as in tests/test_memory_bounds_services_audit.py (a subprocess, VmHWM
above the baseline after its imports, glibc's mmap threshold fixed).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import voxgate
from voxgate import blockwise
from voxgate.errors import InvalidRequestError
from voxgate.geometry import Vec
from voxgate.parallel import default_workers
from voxgate.services.connected_components import connected_components_provenance

from ..test_memory_bounds_services_audit import (
    _BALL,
    _identity_model,
    _peak_delta,
    check_components,
    check_stats,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="peak RSS is read from /proc/self/status (Linux)")

#: eight workers holding two 64 MiB blocks each reached 788 (cc) and 862 MiB (label_stats)
EIGHT_WORKERS_MIB = 600


@pytest.fixture(scope="module")
def seg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 GiB uint64 segmentation (512^3, 64^3 chunks), the rest absent (0): a 20^3 cube of
    id 5 at the origin, a ball of id 9 at the far corner, a box of id 12 across chunk and
    block borders."""
    path = tmp_path_factory.mktemp("budgetseg") / "seg.zarr"
    vol = voxgate.create(f"zarr://{path}", shape=(512, 512, 512), dtype="uint64",
                         chunks=(64, 64, 64), voxel_size=(8, 8, 8), kind="segmentation")
    vol[0:20, 0:20, 0:20] = 5
    vol[478:502, 478:502, 478:502] = np.where(_BALL, 9, 0).astype(np.uint64)
    vol[250:270, 120:140, 60:70] = 12
    return path


def test_connected_components_with_eight_workers_holds_the_budget(seg: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "cc.zarr"
    peak = _peak_delta(f"""
        from voxgate.services.connected_components import connected_components_provenance
        got = voxgate.connected_components("zarr://{seg}", "zarr://{out}", workers=8)
        prov = connected_components_provenance(got)
        assert prov.details["components"] == 3, prov
        open("blocks.txt", "w").write(str(prov.details["blocks"]))
    """, tmp_path)
    assert peak < EIGHT_WORKERS_MIB, f"connected components on 8 workers peaked at {peak} MiB"
    assert (tmp_path / "blocks.txt").read_text() == "32"  # of 32 MiB (64 MiB on one worker)
    check_components(f"zarr://{out}")


def test_label_stats_with_eight_workers_holds_the_budget(seg: Path, tmp_path: Path) -> None:
    peak = _peak_delta(f"""
        df = voxgate.label_stats("zarr://{seg}", workers=8)
        df.to_pickle("stats.pkl")
    """, tmp_path)
    assert peak < EIGHT_WORKERS_MIB, f"label_stats on 8 workers peaked at {peak} MiB"
    df = pd.read_pickle(tmp_path / "stats.pkl")
    assert df.attrs["provenance"].details["blocks"] == 32
    check_stats(df)


def test_block_shape_takes_its_share_of_the_budget() -> None:
    mib = 2**20
    whole = (512, 512, 512)

    def nbytes(at_once: int, **kw: Any) -> int:
        shape = blockwise.block_shape((64, 64, 64), 8, whole, budget=64 * mib,
                                      at_once=at_once, **kw)
        assert all(s % 64 == 0 for s in shape)
        return math.prod(shape) * 8

    assert nbytes(1) == nbytes(4) == 64 * mib  # the Service's own budget is less
    assert nbytes(8) == 32 * mib
    assert nbytes(64) == 4 * mib
    assert nbytes(10**6) == 2 * mib  # never less than one write unit
    # a user's block is kept whatever the workers
    assert blockwise.block_shape((64, 64, 64), 8, whole, block=(100, 64, 64),
                                 at_once=10**6) == Vec(128, 64, 64)
    assert blockwise.blocks_at_once(None) == default_workers()
    assert blockwise.blocks_at_once(3) == 3
    with pytest.raises(InvalidRequestError, match="workers"):
        blockwise.blocks_at_once(0)


def _labels() -> np.ndarray:
    """Blobs of a few ids (touching across every block border), some 26-connected only at
    corners, on a 40 x 48 x 56 volume."""
    rng = np.random.default_rng(7)
    lab = np.where(rng.random((40, 48, 56)) < 0.3,
                   rng.choice(np.array([3, 9, 2**40 + 1], np.uint64), (40, 48, 56)), 0)
    for k in range(30):
        lab[5 + k, 40 - k, 3 + k] = 77
    return lab.astype(np.uint64)


@pytest.fixture
def small(tmp_path: Path) -> Iterator[tuple[np.ndarray, str]]:
    lab = _labels()
    url = f"zarr://{tmp_path}/small.zarr"
    vol = voxgate.create(url, shape=lab.shape, dtype="uint64", chunks=(8, 16, 16),
                         voxel_size=(8, 8, 8), kind="segmentation")
    vol[...] = lab
    yield lab, url


def _stats(lab: np.ndarray) -> list[list[int]]:
    """Brute force: per id its voxel count and box."""
    rows = []
    for i in np.unique(lab[lab > 0]):
        at = np.argwhere(lab == i)
        rows.append([int(i), len(at), *at.min(0).tolist(), *(at.max(0) + 1).tolist()])
    return rows


def test_more_workers_run_smaller_blocks_with_the_same_results(
        small: tuple[np.ndarray, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a budget of four chunks, one worker runs blocks of four chunks and four workers
    blocks of one; both give cc3d's and numpy's answers, and a given block= is kept."""
    import cc3d

    lab, url = small
    monkeypatch.setattr(blockwise, "INFLIGHT_BYTES", 4 * 8 * 16 * 16 * 8)
    want = cc3d.connected_components(lab.view(np.int64), connectivity=26)
    blocks = {}
    for workers in (1, 4):
        out = f"zarr://{tmp_path}/cc{workers}.zarr"
        got = voxgate.connected_components(url, out, workers=workers)
        blocks[workers] = connected_components_provenance(got).details["blocks"]
        assert np.array_equal(voxgate.open(out).read(), want)
        df = voxgate.label_stats(url, workers=workers)
        assert df.attrs["provenance"].details["blocks"] == blocks[workers]
        assert df[["id", "voxel_count", "z0", "y0", "x0", "z1", "y1", "x1"]].to_numpy(
            ).tolist() == _stats(lab)
    n_chunks = 5 * 3 * 4
    assert blocks == {1: 5 * 2 * 2, 4: n_chunks}  # (8, 32, 32) and (8, 16, 16)
    given = [voxgate.label_stats(url, workers=w, block=(8, 16, 16)).attrs["provenance"]
             .details["blocks"] for w in (1, 4)]
    assert given == [n_chunks, n_chunks]
    given = [voxgate.label_stats(url, workers=w, block=(40, 48, 56)).attrs["provenance"]
             .details["blocks"] for w in (1, 4)]
    assert given == [1, 1]


def test_a_cluster_plans_for_the_threads_of_one_worker_process(
        small: tuple[np.ndarray, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a cluster each worker process runs a block per thread: the share is the budget over
    the most threads one process has (here 4), whatever ``workers`` says."""
    from distributed import Client, LocalCluster

    lab, url = small
    monkeypatch.setattr(blockwise, "INFLIGHT_BYTES", 4 * 8 * 16 * 16 * 8)
    local = voxgate.label_stats(url, workers=4)
    with LocalCluster(n_workers=1, threads_per_worker=4, processes=False,
                      dashboard_address=":0") as c, Client(c, set_as_default=False) as client:
        assert blockwise.blocks_at_once(1, client) == 4
        got = voxgate.label_stats(url, client=client)
    assert got.attrs["provenance"].details["blocks"] == 5 * 3 * 4  # one chunk each
    pd.testing.assert_frame_equal(got, local)
    assert got[["id", "voxel_count", "z0", "y0", "x0", "z1", "y1", "x1"]].to_numpy(
        ).tolist() == _stats(lab)


def test_detect_synapses_in_memory_keeps_narrow_components(tmp_path: Path) -> None:
    """A 64 MiB uint8 image (2**26 voxels, the in-memory path): 845 MiB with uint64
    components, read back whole for the statistics; 596 with narrow ones; 383 with predict
    running the numpy image block by block."""
    import cc3d

    model = _identity_model(tmp_path / "identity.onnx")
    peak = _peak_delta(f"""
        img = np.zeros((256, 512, 512), np.uint8)
        img[:64, :64, :64] = np.random.default_rng(0).integers(0, 255, (64, 64, 64),
                                                               dtype=np.uint8)
        t = voxgate.detect_synapses(img, model="{model}", threshold=0.9, workers=2,
                                    voxel_size=(8, 8, 8), progress=False)
        t.to_pickle("synapses.pkl")
    """, tmp_path)
    assert peak < 520, f"detect_synapses in memory over 2**26 voxels peaked at {peak} MiB"
    table = pd.read_pickle(tmp_path / "synapses.pkl")
    chunk = np.random.default_rng(0).integers(0, 255, (64, 64, 64), dtype=np.uint8)
    cc, n = cc3d.connected_components(chunk >= 230, connectivity=26, return_N=True)
    sizes = np.bincount(cc.ravel())[1:]
    assert n > 100
    assert sorted(table["size"].tolist()) == sorted(s for s in sizes.tolist() if s >= 10)
    assert (table[["z", "y", "x"]].to_numpy() < 64).all()


def test_detect_synapses_in_memory_equals_its_store_path(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-memory path (cc3d's narrow components) and the store path (voxgate's
    block-wise connected_components into a temporary uint64 zarr volume) give one table."""
    import voxgate.services.synapses as synapses

    model = _identity_model(tmp_path / "identity.onnx")
    rng = np.random.default_rng(3)
    img = np.where(rng.random((32, 64, 72)) < 0.06, rng.integers(200, 255, (32, 64, 72)),
                   0).astype(np.uint8)
    seg = np.zeros(img.shape, np.uint64)
    seg[:, :32] = 4
    seg[:, 32:] = 2**50 + 3
    kw: dict[str, Any] = {"model": str(model), "threshold": 0.8, "min_size": 2,
                          "voxel_size": (40, 8, 8), "segmentation": seg, "progress": False}
    memory = synapses.detect_synapses(img, **kw)
    assert memory.attrs["provenance"].details["components_scheduler"] == "threads"
    monkeypatch.setattr(synapses, "IN_MEMORY_VOXELS", 0)
    store = synapses.detect_synapses(img, block=(16, 32, 32), **kw)
    assert len(memory) > 50 and set(memory["post_id"]) | set(memory["pre_id"]) > {0}
    pd.testing.assert_frame_equal(memory, store)
