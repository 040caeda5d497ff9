"""Large writes to local zarr and precomputed stores are encoded from the caller's array (no copy
in tensorstore, remotes/_tensorstore.py): what is stored is what the array held when the write
returned, whatever the caller does with the array afterwards, for readers during and after the
write; tensorstore opened directly is the oracle."""

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
from voxgate.storage import ts_write_context

SHAPE = (64, 96, 128)  # uint64: 6 MiB, above REFERENCE_WRITE_BYTES


def _oracle(url: str, tmp_path: Path) -> np.ndarray:
    """The stored volume as tensorstore reads it, in voxgate's z, y, x order."""
    if url.startswith("precomputed://"):
        store = ts.open({"driver": "neuroglancer_precomputed",
                         "kvstore": f"file://{tmp_path}/vol/"}).result()
        return np.asarray(store[..., 0].read(order="F").result().T)
    store = ts.open({"driver": "zarr3", "kvstore": f"file://{tmp_path}/vol/0/"}).result()
    return np.asarray(store.read().result())


@pytest.fixture
def private_opens(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The specs of the handles opened for referencing writes (opened with a child context of
    their own; not the shared write handle, opened in ts_write_context)."""
    opened: list[dict[str, Any]] = []
    real_open = ts.open

    def spy(spec: Any, *args: Any, **kwargs: Any) -> Any:
        if (kwargs.get("write") and isinstance(spec, ts.Spec)
                and kwargs.get("context") is not ts_write_context()):
            opened.append(spec.to_json())
        return real_open(spec, *args, **kwargs)

    monkeypatch.setattr(_tensorstore.ts, "open", spy)
    return opened


@pytest.mark.parametrize("fmt", ["precomputed", "zarr"])
def test_stored_data_is_the_array_at_return(
    fmt: str, tmp_path: Path, private_opens: list[dict[str, Any]]
) -> None:
    url = (f"precomputed://file://{tmp_path}/vol" if fmt == "precomputed"
           else f"zarr://{tmp_path}/vol")
    vol = voxgate.create(url, shape=SHAPE, dtype="uint64", chunks=(32, 32, 32),
                         voxel_size=(8, 8, 8), kind="segmentation")
    data = np.random.default_rng(0).integers(0, 1000, SHAPE, dtype=np.uint64)
    kept = data.copy()
    vol[:] = data
    assert private_opens, "a whole-volume write above the threshold references the array"
    data[:] = 7  # the caller reuses its buffer
    assert np.array_equal(vol.read(), kept)
    assert np.array_equal(voxgate.open(url).read(), kept)
    assert np.array_equal(_oracle(url, tmp_path), kept)

    # unaligned: edge chunks are read, merged and rewritten; voxels around keep their values
    box = Box((3, 5, 7), (60, 90, 120))
    patch = np.random.default_rng(1).integers(0, 1000, tuple(box.shape), dtype=np.uint64)
    kept[box.slices()] = patch
    vol.write(patch, box)
    patch[:] = 0
    assert np.array_equal(_oracle(url, tmp_path), kept)

    # a scalar (a broadcast, read-only source) and a non-contiguous view
    vol[:] = 3
    assert (vol.read() == 3).all()
    flipped = kept[:, ::-1, :]
    vol[:] = flipped
    assert np.array_equal(_oracle(url, tmp_path), flipped)


def test_readers_during_the_write_see_old_or_new_chunks(tmp_path: Path) -> None:
    url = f"zarr://{tmp_path}/vol"
    vol = voxgate.create(url, shape=SHAPE, dtype="uint64", chunks=(32, 32, 32),
                         voxel_size=(8, 8, 8), kind="segmentation")
    vol[:] = 1
    stop = threading.Event()
    seen: list[set[int]] = []

    def reader() -> None:
        while not stop.is_set():
            seen.append({int(v) for v in np.unique(vol[:32, :32, :32].read())})

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for value in (2, 3, 4):
            buffer = np.full(SHAPE, value, dtype=np.uint64)
            vol[:] = buffer
            buffer[:] = 99  # never stored: no reader may see it
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert seen and all(s <= {1, 2, 3, 4} and len(s) == 1 for s in seen)
    assert (_oracle(url, tmp_path) == 4).all()


def test_small_writes_and_other_stores_copy(
    tmp_path: Path, private_opens: list[dict[str, Any]]
) -> None:
    vol = voxgate.create(f"zarr://{tmp_path}/vol", shape=SHAPE, dtype="uint64",
                         chunks=(32, 32, 32), voxel_size=(8, 8, 8), kind="segmentation")
    vol[:8, :8, :8] = 5  # 4 KiB: through the shared handle
    assert private_opens == []
    assert (vol[:8, :8, :8].read() == 5).all()
    # a store on tensorstore's in-memory kvstore: another handle would open another store
    store = ts.open({"driver": "zarr3", "kvstore": "memory://", "dtype": "uint64",
                     "metadata": {"shape": list(SHAPE)}}, create=True).result()
    arr = _tensorstore.TSArray(store, reversed_axes=False, channel=False, keep_channel=False,
                               name="memory", reference_writes=True)
    assert not arr.reference_writes
    data = np.ones(SHAPE, dtype=np.uint64)
    arr.write(Box((0, 0, 0), SHAPE), data)
    data[:] = 0
    assert (store.read().result() == 1).all()


LAYOUTS = {
    "precomputed": ("precomputed://file://{}/vol", {}),
    "precomputed-sharded": ("precomputed://file://{}/vol", {"sharded": True}),
    "zarr3": ("zarr://{}/vol", {}),
    "zarr3-sharded": ("zarr://{}/vol", {"shards": (32, 64, 64)}),
    "zarr2": ("zarr://{}/vol", {"zarr_format": 2}),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("channels", [1, 2])
def test_every_write_through_a_private_handle(
    layout: str, channels: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    private_opens: list[dict[str, Any]],
) -> None:
    """Scales, offsets, channels and shards as the shared handle writes them: with the
    threshold at 0 every write takes the private handle; a fresh open reads what was written
    and the caller's buffers are reused at once."""
    monkeypatch.setattr(_tensorstore, "REFERENCE_WRITE_BYTES", 0)
    template, options = LAYOUTS[layout]
    url = template.format(tmp_path)
    vol = voxgate.create(url, shape=(40, 72, 80), dtype="uint16", chunks=(16, 32, 32),
                         voxel_size=(8, 8, 8), offset=(5, 6, 7), num_scales=2,
                         num_channels=channels, **options)
    rng = np.random.default_rng(2)
    expected = []
    for k in (0, 1):
        level = vol.at_scale(k)
        data = rng.integers(0, 60000, level.shape, dtype=np.uint16)
        expected.append(data.copy())
        level[:] = data
        data[:] = 1
        box = Box((level.offset.z + 3, level.offset.y + 1, level.offset.x + 5),
                  (level.offset.z + 11, level.offset.y + 30, level.offset.x + 33))
        patch = rng.integers(0, 60000, (*level.shape[:-3], *box.shape), dtype=np.uint16)
        expected[k][(..., *box.slices(level.offset))] = patch
        level.write(patch, box)
        patch[:] = 2
    # multi-channel writes copy: tensorstore mis-stores referenced multi-channel sources
    assert len(private_opens) >= 4 if channels == 1 else private_opens == []
    fresh = voxgate.open(url)
    for k in (0, 1):
        assert np.array_equal(fresh.at_scale(k).read(), expected[k])


def test_private_handle_keeps_the_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_opens: list[dict[str, Any]]
) -> None:
    """A zarr array stored (t, x, y, z) is read as z, y, x with the t axis dropped; the private
    handle, opened from the view's spec, writes through the same transform."""
    monkeypatch.setattr(_tensorstore, "REFERENCE_WRITE_BYTES", 0)
    path = tmp_path / "arr"
    ts.open({"driver": "zarr3", "kvstore": f"file://{path}/", "metadata": {
        "shape": [1, 50, 40, 30], "data_type": "uint32", "fill_value": 0,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, 16, 16, 16]}},
        "chunk_key_encoding": {"name": "default"},
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "dimension_names": ["t", "x", "y", "z"]}}, create=True).result()
    vol = voxgate.open(f"zarr://{path}", mode="r+")
    assert vol.shape == (30, 40, 50)
    data = np.random.default_rng(3).integers(0, 1000, vol.shape, dtype=np.uint32)
    kept = data.copy()
    vol[:] = data
    data[:] = 0
    assert private_opens
    stored = ts.open({"driver": "zarr3", "kvstore": f"file://{path}/"}).result().read().result()
    assert np.array_equal(stored[0], kept.transpose(2, 1, 0))
