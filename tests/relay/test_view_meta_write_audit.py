"""A write through one view of an upstream reaches the relay's other views of it whose metadata
differs (found by an audit of the cache's sibling rule).

A write through a channel drops the cells of the region from every other view of the same
upstream URL (another channel of it, another token's).  It skipped views read with other
metadata (``other.meta_key != self.meta_key``): channels of one upstream opened with options
that change its geometry or metadata.  One OME-Zarr group whose ``multiscales`` list the same
arrays with other coordinate transformations (``multiscale=`` chooses one) is such a case: a
view with other voxel sizes on the same voxel grid, and a view whose translation moves it (its
offset).  Such a view kept serving the cells it had read before an acknowledged write through
another channel (100% of the written voxels stale) until a generation change dropped them.
Now a view on the writer's voxel grid has the written cells dropped (the box is the same box
there), and any other view has all its cells dropped and its fetches in flight detached.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest

import voxgate
from voxgate.geometry import Box
from voxgate.relay.config import CacheConfig, ChannelConfig, RelayConfig

from .test_consistency import InProcessRelay, check_read_your_writes

SHAPE = (64, 256, 256)  # z, y, x; chunks (16, 32, 32): cache cells of (64, 128, 128)
SHIFT = (0, 20, 10)  # view "c": its translation, in voxels
#: the region written (in the array's voxels: view "a"'s and "b"'s), in its second cell
PART = Box((4, 140, 130), (20, 160, 150))
#: the channels: "a" reads the group's first multiscale, "b" the same array with other
#: voxel sizes (the same voxel grid), "c" the same array moved by SHIFT (another offset)
VIEWS = {"a": {}, "b": {"multiscale": "b"}, "c": {"multiscale": "c"}}


@dataclass
class Group:
    url: str
    data: np.ndarray  # what the array holds now


def _group(tmp: Path) -> Group:
    path = tmp / "g.zarr"
    data = np.random.default_rng(5).integers(1, 100, SHAPE, dtype=np.uint8)
    vol = voxgate.create(f"zarr://{path}", shape=SHAPE, chunks=(16, 32, 32), dtype="uint8",
                         voxel_size=(40, 8, 8))
    vol[...] = data
    doc = json.loads((path / "zarr.json").read_text())
    ms = doc["attributes"]["ome"]["multiscales"]
    first = ms[0]

    def view(name: str, scale: list[float], translation: list[float]) -> dict[str, Any]:
        return {**first, "name": name, "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": scale},
            {"type": "translation", "translation": translation}]}]}

    ms.append(view("b", [80.0, 16.0, 16.0], [0.0, 0.0, 0.0]))
    ms.append(view("c", [40.0, 8.0, 8.0], [0.0, 8.0 * SHIFT[1], 8.0 * SHIFT[2]]))
    (path / "zarr.json").write_text(json.dumps(doc))
    # (the views are what the test says they are)
    metas = {k: voxgate.open(f"zarr://{path}", **o).remote.meta for k, o in VIEWS.items()}
    assert metas["b"].scale(0).voxel_size.zyx() == (80.0, 16.0, 16.0)
    assert metas["b"].scale(0).bounds == metas["a"].scale(0).bounds
    assert tuple(metas["c"].scale(0).offset) == SHIFT
    return Group(f"zarr://{path}", data)


def _relay(tmp: Path, group: Group, *, disk: bool) -> InProcessRelay:
    return InProcessRelay(RelayConfig(
        upstream_timeout=120.0, upstream_meta_seconds=0, state_path=tmp / "state.json",
        cache=CacheConfig(memory_bytes=2**26, disk_path=tmp / "disk" if disk else None,
                          disk_bytes=2**30),
        channels=[ChannelConfig("lab", "em", name, group.url, dict(options))
                  for name, options in VIEWS.items()]))


def _moved(box: Box, view: str) -> Box:
    """``box`` of view "a" in the coordinates of ``view``."""
    shift = SHIFT if view == "c" else (0, 0, 0)
    return Box(tuple(a + s for a, s in zip(box.start, shift, strict=True)),
               tuple(b + s for b, s in zip(box.stop, shift, strict=True)))


def _cutout(url: str, chan: str, box: Box) -> np.ndarray:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    res = httpx.get(f"{url}/v1/cutout/lab/em/{chan}/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/",
                    timeout=120)
    assert res.status_code == 200, res.text[:300]
    return np.frombuffer(blosc.decompress(res.content), np.uint8).reshape(tuple(box.shape))


def _chunk(url: str, chan: str, box: Box) -> np.ndarray:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    res = httpx.get(f"{url}/precomputed/lab/em/{chan}/s0/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}",
                    headers={"Accept-Encoding": "identity"}, timeout=120)
    assert res.status_code == 200, res.text[:300]
    return np.frombuffer(res.content, np.uint8).reshape(tuple(box.shape))


def _post(url: str, chan: str, box: Box, arr: np.ndarray) -> None:
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    res = httpx.post(f"{url}/v1/cutout/lab/em/{chan}/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/",
                     content=blosc.compress(np.ascontiguousarray(arr).tobytes(), typesize=1),
                     headers={"Content-Type": "application/blosc"}, timeout=120)
    assert res.status_code == 201, res.text[:300]


def _reader(url: str, view: str, dialect: str) -> tuple[Box, Callable[[], np.ndarray]]:
    """The chunk of ``view``'s precomputed grid (one cache cell: both start at the voxel
    offset) that holds :data:`PART` (in the view's coordinates), and a read of that box
    through ``dialect`` (one upstream fetch when it is not cached)."""
    info = httpx.get(f"{url}/precomputed/lab/em/{view}/info", timeout=60).json()["scales"][0]
    # (x, y, z) there
    offset, chunk, size = info["voxel_offset"][::-1], info["chunk_sizes"][0][::-1], \
        info["size"][::-1]
    first = _moved(PART, view).start
    start = [o + (p - o) // c * c for p, o, c in zip(first, offset, chunk, strict=True)]
    stop = [min(a + c, o + n) for a, c, o, n in zip(start, chunk, offset, size, strict=True)]
    box = Box(start, stop)
    assert box.contains(_moved(PART, view)), box  # (the chunk holds all of it)
    if dialect == "boss":
        return box, lambda: _cutout(url, view, box)
    return box, lambda: _chunk(url, view, box)


# -- 1. read through one view, write through another, read again ------------------------------
@pytest.mark.parametrize("disk", [False, True], ids=["memory", "disk"])
@pytest.mark.parametrize("dialect", ["boss", "precomputed"])
@pytest.mark.parametrize("reader,writer", [("b", "a"), ("c", "a"), ("a", "c"), ("b", "c")])
def test_a_write_is_read_through_a_view_with_other_metadata(
        tmp_path: Path, reader: str, writer: str, dialect: str, disk: bool) -> None:
    """``reader`` reads (and caches) a region, ``writer`` writes part of it (an acknowledged
    write), ``reader`` reads it again: the write must be there ("b": same grid, other voxel
    sizes; "c": moved by SHIFT)."""
    group = _group(tmp_path)
    relay = _relay(tmp_path, group, disk=disk)
    try:
        box, read = _reader(relay.url, reader, dialect)
        origin = _moved(Box((0, 0, 0), SHAPE), reader).start  # the array's voxel 0 there
        np.testing.assert_array_equal(read(), group.data[box.slices(origin)])  # cached now
        part = PART
        written = _moved(part, writer)  # (in the writer's coordinates)
        new = np.full(tuple(part.shape), 200, np.uint8)  # (the array holds 1..99)
        _post(relay.url, writer, written, new)
        group.data[part.slices()] = new
        got = read()
        want = group.data[box.slices(origin)]
        assert np.count_nonzero(want == 200) == part.size  # (the read covers the write)
        stale = int(np.count_nonzero(got != want))
        assert stale == 0, f"{stale} voxels read through {reader} after the write are stale"
    finally:
        relay.stop()


# -- 2. a fetch through the other view in flight while the write is acknowledged --------------
@pytest.mark.parametrize("disk", [False, True], ids=["memory", "disk"])
@pytest.mark.parametrize("dialect", ["boss", "precomputed"])
@pytest.mark.parametrize("reader", ["b", "c"])
def test_a_fetch_of_a_view_with_other_metadata_in_flight_during_a_write_is_not_kept(
        tmp_path: Path, reader: str, dialect: str, disk: bool) -> None:
    """A read through ``reader`` is in flight upstream (holding the old voxels) when a write
    through "a" is acknowledged: a read through ``reader`` that begins afterwards must not
    join that fetch, nor find what it cached, in memory or (after a restart) on disk."""
    group = _group(tmp_path)
    relay = _relay(tmp_path, group, disk=disk)
    try:
        cat = relay.relay.catalog
        cat.remote(cat.channel("lab", "em", "a"))  # (open: a sibling of the reader)
        gate = relay.gate("lab", "em", reader)
        box, read = _reader(relay.url, reader, dialect)
        origin = _moved(Box((0, 0, 0), SHAPE), reader).start
        part = PART
        new = np.full(tuple(part.shape), 201, np.uint8)
        group.data[part.slices()] = new
        expected = group.data[box.slices(origin)]
        assert np.count_nonzero(expected == 201) == part.size  # (the read covers the write)
        check_read_your_writes(gate, read, lambda: _post(relay.url, "a", part, new), expected)
        np.testing.assert_array_equal(read(), expected)  # and what was cached is new
    finally:
        relay.stop()
    if disk:  # what reached the disk tier is new too
        again = _relay(tmp_path, group, disk=True)
        try:
            _, read = _reader(again.url, reader, dialect)
            np.testing.assert_array_equal(read(), expected)
            assert again.relay.cache.metrics.disk_hits > 0  # (read from there)
        finally:
            again.stop()


# -- 3. a view on the writer's voxel grid keeps the cells the write did not touch --------------
def test_a_view_on_the_same_voxel_grid_loses_only_the_cells_written(tmp_path: Path) -> None:
    """A write through "a" costs "b" (other voxel sizes, same grid) the one cell written, not
    its other three: the box is mapped, not every cell dropped."""
    group = _group(tmp_path)
    relay = _relay(tmp_path, group, disk=False)
    try:
        whole = Box((0, 0, 0), SHAPE)
        np.testing.assert_array_equal(_cutout(relay.url, "b", whole), group.data)  # cached
        metrics = relay.relay.cache.metrics
        part = PART  # (in one of b's cells)
        new = np.full(tuple(part.shape), 202, np.uint8)
        _post(relay.url, "a", part, new)
        group.data[part.slices()] = new
        fetched = metrics.upstream_cells
        np.testing.assert_array_equal(_cutout(relay.url, "b", whole), group.data)
        b = relay.relay.catalog.remote(relay.relay.catalog.channel("lab", "em", "b"))
        cells = len(list(b.cells(whole, 0)))
        touched = len(list(b.cells(part, 0)))
        assert (touched, cells) == (1, 4)
        assert metrics.upstream_cells - fetched == touched
    finally:
        relay.stop()
