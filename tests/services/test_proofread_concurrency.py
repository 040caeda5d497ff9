"""Two edits of one volume at once: in threads of one process, and in two processes.

Every edit reads the blocks it rewrites and writes them whole, so two edits whose blocks meet
must not run at the same time: the later write would put back what the other one changed.
Before edits were serialized, two merges started together lost one of them in 9 runs of 10.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

import voxgate
from voxgate.services.proofread.core import _one_edit


def _interleaved(path: Path) -> str:
    """ids 2 and 4 in alternate columns of every block, 1 and 3 one voxel each."""
    lab = np.zeros((8, 48, 48), np.uint64)
    lab[:, :, ::2] = 2
    lab[:, :, 1::2] = 4
    lab[0, 0, 0], lab[0, 0, 1] = 1, 3
    url = f"zarr://{path}"
    v = voxgate.create(url, shape=lab.shape, chunks=(8, 16, 16), dtype="uint64",
                       voxel_size=(40, 8, 8), kind="segmentation")
    v[:] = lab
    return url


def test_two_merges_at_once_in_threads_both_land(tmp_path: Path) -> None:
    for trial in range(4):
        url = _interleaved(tmp_path / f"s{trial}.zarr")
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def merge(ids: list[int], url: str = url, start: threading.Barrier = start,
                  errors: list[BaseException] = errors) -> None:
            try:
                start.wait()
                voxgate.merge(url, ids)
            except BaseException as exc:  # handed to the test
                errors.append(exc)

        threads = [threading.Thread(target=merge, args=(ids,)) for ids in ([1, 2], [3, 4])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        left = set(np.unique(voxgate.open(url).read()).tolist())
        assert left == {1, 3}, f"trial {trial}: ids left {left}: an edit was lost"
        hist = voxgate.history(url)
        assert sorted(hist["n"]) == [1, 2] and set(hist["status"]) == {"done"}, hist


def test_an_edit_in_another_process_waits_for_the_one_in_progress(tmp_path: Path) -> None:
    url = _interleaved(tmp_path / "s.zarr")
    code = textwrap.dedent("""
        import sys, voxgate
        voxgate.merge(sys.argv[1], [3, 4])
        print("merged")
        """)
    vol = voxgate.open(url, mode="r+")
    with _one_edit(vol, None):  # an edit of this process, in progress
        other = subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        time.sleep(3.0)  # (far longer than the other process needs to merge)
        waited = other.poll() is None
        voxgate.merge(url, [1, 2])  # nested inside this process's own lock: no deadlock
    out, err = other.communicate(timeout=120)
    assert other.returncode == 0, err[-2000:]
    assert waited, f"the other process's merge did not wait: {out!r}"
    assert set(np.unique(voxgate.open(url).read()).tolist()) == {1, 3}
    assert sorted(voxgate.history(url)["n"]) == [1, 2]
