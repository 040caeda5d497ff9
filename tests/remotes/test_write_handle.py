"""Writes to local files go through a second tensorstore handle over the same chunks, in
``ts_write_context`` (more files written at once than read, remotes/_tensorstore.py), while reads
keep tensorstore's default file concurrency.  What a write stores is read back at once through
the reading handle, by every format that has the two handles, and a read racing writes sees each
chunk old or new, never older than a read before it; tensorstore opened directly is the
oracle."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts

import voxgate
from voxgate.geometry import Box
from voxgate.remotes import _tensorstore
from voxgate.storage import WRITE_FILE_IO_CONCURRENCY, ts_context, ts_write_context

URLS = {
    "zarr3": "zarr://{}/vol",
    "zarr2": "zarr://{}/vol",
    "precomputed": "precomputed://file://{}/vol",
    "precomputed-sharded": "precomputed://file://{}/vol",
    "n5": "n5://{}/vol",
    "webknossos": "webknossos://{}/dataset",
}
OPTIONS: dict[str, dict[str, Any]] = {
    "zarr2": {"zarr_format": 2},
    "precomputed-sharded": {"sharded": True},
}


def _arrays(vol: voxgate.Volume) -> list[_tensorstore.TSArray]:
    """The per-scale tensorstore arrays of ``vol``'s Remote."""
    remote: Any = vol.remote
    if hasattr(remote, "_arrays"):
        arrays = list(remote._arrays)
    else:  # precomputed: one handle per scale, opened at first use
        arrays = [remote._scale_io(k) for k in range(len(vol.scales))]
    assert all(isinstance(a, _tensorstore.TSArray) for a in arrays)
    return arrays


def _file_io_limit(store: ts.TensorStore) -> Any:
    return store.spec(retain_context=True).to_json()["context"]["file_io_concurrency"]


@pytest.fixture
def write_opens(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The specs of the handles opened in ts_write_context."""
    opened: list[dict[str, Any]] = []
    real_open = ts.open

    def spy(spec: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("context") is ts_write_context():
            opened.append(spec.to_json())
        return real_open(spec, *args, **kwargs)

    monkeypatch.setattr(_tensorstore.ts, "open", spy)
    return opened


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("fmt", sorted(URLS))
def test_writes_through_the_write_handle_are_read_back_at_once(
    fmt: str, channels: int, tmp_path: Path, write_opens: list[dict[str, Any]]
) -> None:
    url = URLS[fmt].format(tmp_path)
    vol = voxgate.create(url, shape=(37, 45, 51), dtype="uint16", chunks=(16, 16, 16),
                         voxel_size=(8, 8, 8), offset=(3, 5, 7), num_scales=2,
                         num_channels=channels, **OPTIONS.get(fmt, {}))
    rng = np.random.default_rng(5)
    model = [np.zeros(vol.at_scale(k).shape, np.uint16) for k in (0, 1)]
    for step in range(6):
        k = step % 2
        level = vol.at_scale(k)
        lo = [int(rng.integers(0, s - 2)) for s in level.shape[-3:]]
        hi = [int(rng.integers(a + 1, s + 1)) for a, s in zip(lo, level.shape[-3:], strict=True)]
        box = Box(tuple(o + a for o, a in zip(level.offset, lo, strict=True)),
                  tuple(o + b for o, b in zip(level.offset, hi, strict=True)))
        patch = rng.integers(1, 60000, (*level.shape[:-3], *box.shape), dtype=np.uint16)
        level.write(patch, box)
        model[k][(..., *box.slices(level.offset))] = patch
        # read back at once, through the reading handle
        assert np.array_equal(level.read(), model[k]), (fmt, step)
    arrays = _arrays(vol)
    for arr in arrays:
        assert arr._writer is not None
        assert _file_io_limit(arr._writer) == {"limit": WRITE_FILE_IO_CONCURRENCY}
        assert _file_io_limit(arr.store) == {}  # tensorstore's default: max(4, cores)
    assert len(write_opens) == len(arrays)  # one write handle per scale, opened once
    fresh = voxgate.open(url)
    for k in (0, 1):
        assert np.array_equal(fresh.at_scale(k).read(), model[k])


def test_reads_keep_tensorstores_default_file_concurrency() -> None:
    spec = ts_context().spec
    assert spec is not None
    assert "file_io_concurrency" not in spec.to_json()
    child = ts_write_context()
    assert ts_write_context() is child  # one per process
    assert child.parent is ts_context()


def test_tensorstore_reads_what_the_write_handle_stored(tmp_path: Path) -> None:
    vol = voxgate.create(f"zarr://{tmp_path}/vol", shape=(20, 30, 40), dtype="uint32",
                         chunks=(8, 8, 8), voxel_size=(4, 4, 4))
    data = np.random.default_rng(1).integers(0, 2**32, vol.shape, dtype=np.uint32)
    vol[:] = data
    vol[2:5, 3:9, 10:31] = 7
    data[2:5, 3:9, 10:31] = 7
    stored = ts.open({"driver": "zarr3", "kvstore": f"file://{tmp_path}/vol/0/"}).result()
    assert np.array_equal(stored.read().result(), data)


def test_memory_kvstore_writes_through_its_own_handle() -> None:
    """A ``memory://`` kvstore belongs to its context: another handle would open another, empty
    store, so writes stay on the reading handle."""
    store = ts.open({"driver": "zarr3", "kvstore": "memory://", "dtype": "uint8",
                     "metadata": {"shape": [8, 8, 8]}}, create=True,
                    context=ts_context()).result()
    arr = _tensorstore.TSArray(store, reversed_axes=False, channel=False, keep_channel=False,
                               name="memory", own_context=True)
    arr.write(Box((0, 0, 0), (4, 8, 8)), np.full((4, 8, 8), 9, np.uint8))
    assert arr._writer is None
    assert (arr.read(Box((0, 0, 0), (4, 8, 8))) == 9).all()


@pytest.mark.parametrize("fmt", ["zarr3", "precomputed", "n5"])
def test_a_read_racing_writes_sees_each_chunk_old_or_new(fmt: str, tmp_path: Path) -> None:
    """One thread writes 1, 2, ... over a box of 8 chunks; another reads it meanwhile.  Each
    chunk a read sees is whole (one value), and never older than what an earlier read of it saw;
    after each write returns, the writer's own read sees it everywhere."""
    url = URLS[fmt].format(tmp_path)
    vol = voxgate.create(url, shape=(32, 32, 32), dtype="uint32", chunks=(16, 16, 16),
                         voxel_size=(8, 8, 8))
    rounds = 40
    stop = threading.Event()
    problems: list[str] = []
    seen = np.zeros((2, 2, 2), np.int64)

    def reader() -> None:
        while not stop.is_set():
            got = vol[:].read()
            for z, y, x in np.ndindex(2, 2, 2):
                chunk = got[z * 16:(z + 1) * 16, y * 16:(y + 1) * 16, x * 16:(x + 1) * 16]
                lo, hi = int(chunk.min()), int(chunk.max())
                if lo != hi:
                    problems.append(f"chunk {(z, y, x)} torn: {lo}..{hi}")
                if lo < seen[z, y, x]:
                    problems.append(f"chunk {(z, y, x)} went back from {seen[z, y, x]} to {lo}")
                seen[z, y, x] = max(seen[z, y, x], lo)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for value in range(1, rounds + 1):
            vol[:] = np.full(vol.shape, value, np.uint32)
            if not (vol[:].read() == value).all():
                problems.append(f"write {value} not read back at once")
    finally:
        stop.set()
        t.join()
    assert not problems, problems[:5]
    assert (seen <= rounds).all()
