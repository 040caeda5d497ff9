"""connected_components into an out= store when a first-pass write lands late.

On a dask cluster a worker the scheduler takes for dead (a missed heartbeat, a network
partition, a long GC pause) may still be running a task the scheduler has run again
elsewhere; the run moves on and the zombie's write lands whenever it lands.  Pass 1 writes a
block's *local* labels, pass 3 the final ones: a late pass-1 write into the output after pass 3
left local labels in the result, silently (old code: these tests fail on the block written
late).  Pass 1 now writes into a scratch volume beside the output, removed at the end.

The late write is made deterministic: the first run of one block's pass-1 task also starts a
thread on its worker that waits until the call has returned and then writes that block's
local labels again (the worker the scheduler gave up on); or, without a cluster, the run's own
pass-1 function is called again after the run, as such a worker would.  The result must
equal the whole-volume components (scipy.ndimage.label per value, numbered as the module
numbers them) and hold no local labels.
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.geometry import Box
from voxgate.synthetic import synthetic_labels

cc_module = importlib.import_module("voxgate.services.connected_components")

SHAPE = (32, 32, 64)
CHUNKS = (8, 16, 16)
#: the block written late: in the middle, so its local ids are not its final ones
MIDDLE = (16, 16, 32)
MIDDLE_BOX = Box(MIDDLE, tuple(m + c for m, c in zip(MIDDLE, CHUNKS, strict=True)))


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return synthetic_labels(SHAPE, cell=(8, 16, 16), seed=11)


def reference(labels: np.ndarray) -> np.ndarray:
    """The whole-volume 26-connected components: scipy per value, each value's components
    given ids of their own, then numbered by their first voxel in C order."""
    out = np.zeros(labels.shape, dtype=np.uint64)
    n = 0
    for v in np.unique(labels):
        if v == 0:
            continue
        lab, k = ndimage.label(labels == v, structure=np.ones((3, 3, 3), dtype=bool))
        out[lab > 0] = lab[lab > 0].astype(np.uint64) + np.uint64(n)
        n += k
    return cc_module.canonical_order(out)


def _local_labels(labels: np.ndarray) -> np.ndarray:
    """What pass 1 writes for the middle block: its components on their own."""
    return cc_module.connected_components_kernel(labels[MIDDLE_BOX.slices()])


def _store(url: str, data: np.ndarray) -> voxgate.Volume:
    vol = voxgate.create(url, shape=data.shape, dtype=data.dtype, chunks=CHUNKS,
                         voxel_size=(8, 8, 8), kind="segmentation")
    vol[:] = data
    return vol


def _check(got: np.ndarray, labels: np.ndarray) -> None:
    want = reference(labels)
    local = _local_labels(labels)
    # the test means something: the late block's local ids are not its final ones
    assert not np.array_equal(local, want[MIDDLE_BOX.slices()])
    assert not np.array_equal(got[MIDDLE_BOX.slices()], local), "local labels in the output"
    np.testing.assert_array_equal(got, want)


def _siblings(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


# -- on the workers -----------------------------------------------------------------------------

def _install_zombie(marks: str) -> None:
    """On a worker: the first pass-1 task of the middle block (on any worker) also starts a
    thread that waits for ``marks/go`` and then runs the block's pass 1 again (the worker the
    scheduler gave up on, writing late); it writes ``marks/done`` with "ok" or the error."""
    real = getattr(cc_module, "_real_label_block", cc_module._label_block)
    cc_module._real_label_block = real

    def late(job: Any, b: Any) -> None:
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(marks, "go")) and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            real(job, b)
            said = "ok"
        except Exception as exc:
            said = repr(exc)
        with open(os.path.join(marks, "done.tmp"), "w") as f:
            f.write(said)
        os.replace(os.path.join(marks, "done.tmp"), os.path.join(marks, "done"))

    def zombie(job: Any, b: Any) -> Any:
        if tuple(b.start) == MIDDLE:
            try:  # one worker, once
                os.close(os.open(os.path.join(marks, "claimed"),
                                 os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                threading.Thread(target=late, args=(job, b), daemon=True).start()
        return real(job, b)

    cc_module._label_block = zombie


def _remove_zombie() -> None:
    real = getattr(cc_module, "_real_label_block", None)
    if real is not None:
        cc_module._label_block = real


def _wait_for(path: Path, seconds: float = 120) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never came"
        time.sleep(0.02)
    return path.read_text()


# -- tests --------------------------------------------------------------------------------------

def test_late_pass1_write_on_a_cluster(cluster: Any, tmp_path: Path,
                                       labels: np.ndarray) -> None:
    """A worker writes a block's pass-1 labels after the call returned (old code: that block
    of the output held its local labels)."""
    data = tmp_path / "data"
    marks = tmp_path / "marks"
    data.mkdir()
    marks.mkdir()
    src = _store(f"zarr://{data}/seg.zarr", labels)
    cluster.wait_for_workers(2, timeout=120)
    cluster.run(_install_zombie, str(marks))
    try:
        out = voxgate.connected_components(src.url, f"zarr://{data}/cc.zarr", block=CHUNKS,
                                           client=cluster)
        assert (marks / "claimed").exists(), "no zombie: the test tested nothing"
        assert _siblings(data) == ["cc.zarr", "seg.zarr"]  # the scratch was removed
        (marks / "go").touch()
        assert _wait_for(marks / "done") == "ok"  # the late write did land (somewhere)
    finally:
        (marks / "go").touch()
        cluster.run(_remove_zombie)
    _check(voxgate.open(out.url).read(), labels)
    # where it landed: the removed scratch's name, made anew (the leak the docs describe)
    left = [n for n in _siblings(data) if n not in ("cc.zarr", "seg.zarr")]
    assert len(left) == 1 and left[0].startswith("cc.zarr" + cc_module.SCRATCH_SUFFIX)


def _capturing_runs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The functions the call hands to run_blocks, in order (pass 1's first)."""
    fns: list[Any] = []
    real = cc_module.run_blocks

    def run_blocks(fn: Any, items: Any, **kw: Any) -> Any:
        fns.append(fn)
        return real(fn, items, **kw)

    monkeypatch.setattr(cc_module, "run_blocks", run_blocks)
    return fns


@pytest.mark.parametrize("workers", [1, 2])
def test_pass1_run_again_after_the_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       labels: np.ndarray, workers: int) -> None:
    """The run's own pass-1 function called again on one block after the call returned, as a
    worker the scheduler gave up on would (old code: its local labels in the output)."""
    src = _store(f"zarr://{tmp_path}/seg.zarr", labels)
    fns = _capturing_runs(monkeypatch)
    out = voxgate.connected_components(src.url, f"zarr://{tmp_path}/cc.zarr", block=CHUNKS,
                                       workers=workers)
    label_pass = fns[0]
    assert isinstance(label_pass, functools.partial) and label_pass.func is cc_module._label_block
    assert _siblings(tmp_path) == ["cc.zarr", "seg.zarr"]
    label_pass(MIDDLE_BOX)  # the late write
    _check(voxgate.open(out.url).read(), labels)


def test_scratch_removed_when_the_run_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            labels: np.ndarray) -> None:
    src = _store(f"zarr://{tmp_path}/seg.zarr", labels)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("pass 2 broke")

    monkeypatch.setattr(cc_module, "_join_block", broken)
    with pytest.raises(ValueError, match="pass 2 broke"):
        voxgate.connected_components(src.url, f"zarr://{tmp_path}/cc.zarr", block=CHUNKS,
                                     workers=2)
    assert _siblings(tmp_path) == ["cc.zarr", "seg.zarr"]


def test_output_without_a_location_on_a_cluster(monkeypatch: pytest.MonkeyPatch, cluster: Any,
                                                tmp_path: Path, labels: np.ndarray) -> None:
    """An output with nowhere beside it for the scratch (DVID, bossDB): a temporary directory
    here when every worker runs on this machine, refused before out= is made otherwise."""
    src = _store(f"zarr://{tmp_path}/seg.zarr", labels)
    monkeypatch.setattr(cc_module, "_beside", lambda remote: None)
    monkeypatch.setattr(cc_module, "_will_be_beside", lambda out: False)
    made: list[str] = []
    real_tmp = cc_module.tempfile.TemporaryDirectory

    def tmpdir(**kw: Any) -> Any:
        t = real_tmp(**kw)
        made.append(t.name)
        return t

    monkeypatch.setattr(cc_module.tempfile, "TemporaryDirectory", tmpdir)
    out = voxgate.connected_components(src.url, f"zarr://{tmp_path}/cc.zarr", block=CHUNKS,
                                       client=cluster)
    assert len(made) == 1 and not os.path.exists(made[0])  # used, then removed
    _check(out.read(), labels)

    monkeypatch.setattr(cc_module, "hosts_elsewhere", lambda client: ["far-away"])
    with pytest.raises(InvalidRequestError, match="far-away"):
        voxgate.connected_components(src.url, f"zarr://{tmp_path}/cc2.zarr", block=CHUNKS,
                                     client=cluster)
    assert not (tmp_path / "cc2.zarr").exists()


def test_in_memory_output_is_unaffected(monkeypatch: pytest.MonkeyPatch,
                                        labels: np.ndarray) -> None:
    """out=None keeps the first pass's labels in the result array: no scratch volume."""

    def no_store(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a store was created for out=None")

    monkeypatch.setattr(cc_module, "create_remote", no_store, raising=False)
    for workers in (1, 2):
        got = voxgate.connected_components(labels, block=CHUNKS, workers=workers)
        np.testing.assert_array_equal(got, reference(labels))
        assert got.provenance.details["blocks"] == 32


def test_object_storage_output(monkeypatch: pytest.MonkeyPatch, s3_bucket: str, s3_server: str,
                               tmp_path: Path, labels: np.ndarray) -> None:
    """On S3 the scratch is a prefix beside the output's, every key of it deleted at the end;
    a late pass-1 write then makes chunk keys under it anew (no metadata), and the output is
    right."""
    import boto3

    def keys() -> list[str]:
        s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        return sorted(o["Key"] for p in pages for o in p.get("Contents", ()))

    src = _store(f"zarr://{tmp_path}/seg.zarr", labels)
    fns = _capturing_runs(monkeypatch)
    out = voxgate.connected_components(src.url, f"zarr://s3://{s3_bucket}/cc.zarr",
                                       block=CHUNKS, workers=2)
    assert all(k.startswith("cc.zarr/") for k in keys())
    fns[0](MIDDLE_BOX)  # the late write
    _check(voxgate.open(out.url).read(), labels)
    late = [k for k in keys() if not k.startswith("cc.zarr/")]
    assert late and all(k.startswith("cc.zarr" + cc_module.SCRATCH_SUFFIX) for k in late)
    assert not any(k.endswith(("zarr.json", ".zarray", ".zgroup")) for k in late)
