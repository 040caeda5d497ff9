"""Undo streams its saved blocks: however slowly they are written back, at most ``workers`` of
them are held at once, each released once written (tests/test_memory_bounds.py measures the
memory of a large undo; this counts the blocks, so it does not depend on the allocator or on
how busy the machine is)."""

from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.remotes.zarr import ZarrRemote
from voxgate.services.proofread_history import History

SHAPE = (32, 64, 64)
CHUNKS = (16, 16, 16)


class _Live:
    """How many arrays handed out are still alive, and the most at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = 0

    def track(self, a: np.ndarray) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        weakref.finalize(a, self._gone)

    def _gone(self) -> None:
        with self.lock:
            self.now -= 1


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_undo_holds_at_most_one_saved_block_per_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    url = f"zarr://{tmp_path}/seg.zarr"
    seg = voxgate.create(url, shape=SHAPE, dtype="uint64", chunks=CHUNKS, voxel_size=(8, 8, 8),
                         kind="segmentation")
    a = np.zeros(SHAPE, np.uint64)
    a[1::16, 1::16, 1::16], a[2::16, 2::16, 2::16] = 5, 9   # both ids in every chunk
    seg[...] = a
    hist = tmp_path / "history"
    assert voxgate.merge(url, [5, 9], history_dir=hist).blocks == 32

    saved, read = _Live(), _Live()
    load_saved = History.load_saved
    remote_read, remote_write = ZarrRemote.read, ZarrRemote.write

    def loading(f: Path) -> tuple[np.ndarray, np.ndarray | None]:
        data, changed = load_saved(f)
        saved.track(data)
        return data, changed

    def reading(self: ZarrRemote, *args: Any, **kw: Any) -> np.ndarray:
        out = remote_read(self, *args, **kw)
        read.track(out)
        return out

    def slow_writing(self: ZarrRemote, *args: Any, **kw: Any) -> None:
        time.sleep(0.02)  # writes drain slower than blocks could be loaded
        remote_write(self, *args, **kw)

    monkeypatch.setattr(History, "load_saved", staticmethod(loading))
    monkeypatch.setattr(ZarrRemote, "read", reading)
    monkeypatch.setattr(ZarrRemote, "write", slow_writing)
    (done,) = voxgate.undo(url, history_dir=hist, workers=workers)
    monkeypatch.undo()

    assert done.blocks == 32
    assert saved.most <= workers, f"{saved.most} saved blocks held at once by {workers} worker(s)"
    assert read.most <= workers, f"{read.most} blocks read at once by {workers} worker(s)"
    assert saved.now == 0 and read.now == 0, "blocks still held after the undo"
    np.testing.assert_array_equal(voxgate.open(url).read(), a)


def test_undo_restores_the_edited_voxels_only_in_place(tmp_path: Path) -> None:
    """The saved voxels are copied into the block as read now: the edit's voxels as they were,
    the block's other voxels as written since; a block whose edited voxels are already as they
    were is not written."""
    url = f"zarr://{tmp_path}/seg.zarr"
    seg = voxgate.create(url, shape=SHAPE, dtype="uint64", chunks=CHUNKS, voxel_size=(8, 8, 8),
                         kind="segmentation")
    a = np.zeros(SHAPE, np.uint64)
    a[0:4, 0:4, 0:4], a[0:4, 0:4, 4:8] = 5, 9
    a[20:24, 40:44, 40:44] = 9
    seg[...] = a
    voxgate.merge(url, [5, 9])
    vol = voxgate.open(url, mode="r+")
    vol[10, 10, 10] = 3          # written since, in a block the merge changed
    vol[20:24, 40:44, 40:44] = 9  # the edited voxels of another block put back by hand
    writes: list[Any] = []
    remote_write = ZarrRemote.write

    def counting(self: ZarrRemote, box: Any, *args: Any, **kw: Any) -> None:
        writes.append(box)
        remote_write(self, box, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ZarrRemote, "write", counting)
        (done,) = voxgate.undo(url, workers=2)
    want = a.copy()
    want[10, 10, 10] = 3
    np.testing.assert_array_equal(voxgate.open(url).read(), want)
    assert done.blocks == 2 and len(writes) == 1, writes
