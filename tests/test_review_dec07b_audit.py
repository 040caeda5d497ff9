"""Review of the "a bit per chunk" change (f47e9d4..db9aae9): block-wise readers read only the
stored chunks of a block (``voxgate.absence.chunk_blocks``, ``StoredGroups.reads``,
``read_stored``), voxgate.copy reads runs of stored chunks.

Found: on a DENSE volume with a few absent chunks, a box that ``StoredGroups.reads`` says to
read whole (most of its chunks stored) but that crosses the lines of ``read_stored``'s 16 MiB
grid (a seam slab of connected_components' pass 2, a predict window with its halo, a mesh
block with its one-voxel overlap) was read in up to 8 pieces, one read each, where the bit per
block read it in one: block-wise cc of a dense zarr made 2x the source reads and ran ~25%
slower.  Now a box of one piece is one read when ``reads`` says whole.  Results equal cc3d and
the model on the whole image, as before.

Also kept, cheap: ``read_stored`` against a brute-force read (random stores, fills, boxes).
"""

from __future__ import annotations

import importlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate import Box, absence
from voxgate.geometry import Vec, chunk_boxes
from voxgate.remotes.zarr import ZarrRemote

SHAPE = (24, 30, 36)
CHUNKS = (4, 5, 6)
OFFSET = (2, -3, 5)
#: blocks of 2 x 2 x 2 chunks
BLOCK = (8, 10, 12)
#: the chunks (grid indices) left absent of an otherwise dense volume
ABSENT = [(1, 1, 1), (3, 2, 4), (4, 4, 2)]


def _dense(tmp_path: Path, kind: str) -> tuple[voxgate.Volume, np.ndarray]:
    """A zarr volume every chunk of which is stored but :data:`ABSENT`."""
    url = f"zarr://{tmp_path}/{kind}.zarr"
    dtype = "uint32" if kind == "segmentation" else "uint8"
    vol = voxgate.create(url, shape=SHAPE, dtype=dtype, chunks=CHUNKS, voxel_size=(4, 4, 4),
                         offset=OFFSET, kind=kind)
    rng = np.random.default_rng(11)
    if kind == "segmentation":  # blobs of a few labels, touching across block borders
        small = rng.integers(0, 4, (6, 6, 6)).astype(np.uint32)
        data = np.kron(small, np.ones((4, 5, 6), np.uint32))[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    else:
        data = rng.integers(1, 256, SHAPE, dtype=np.uint8)
    sc = vol.scale_meta
    for idx, cell in chunk_boxes(sc.bounds, sc.chunks, sc.bounds):
        if tuple(idx) in ABSENT:
            data[cell.slices(sc.bounds.start)] = 0
        else:
            vol.remote.write(cell, np.ascontiguousarray(data[cell.slices(sc.bounds.start)]), 0)
    vol = voxgate.open(url)
    assert sorted(tuple(v) for v in vol.remote.absent_chunks(sc.bounds, 0)) == sorted(ABSENT)
    return vol, data


class _Reads:
    """The reads of the source (by URL) while ``on``: calls (blocks run on threads)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
        self.url, self.calls, self.on = url, 0, False
        self.lock = threading.Lock()
        real = ZarrRemote.read

        def read(remote: Any, box: Box, scale: int = 0) -> np.ndarray:
            if self.on and remote.url == self.url:
                with self.lock:
                    self.calls += 1
            return real(remote, box, scale)

        monkeypatch.setattr(ZarrRemote, "read", read)

    def count(self, run: Any) -> tuple[Any, int]:
        self.calls, self.on = 0, True
        try:
            return run(), self.calls
        finally:
            self.on = False


def _old_groups(m: pytest.MonkeyPatch, name: str) -> None:
    """The groups a bit per block, as before the change."""
    m.setattr(importlib.import_module(f"voxgate.services.{name}"), "chunk_blocks",
              lambda remote, scale, base: base)


def test_cc_of_a_dense_volume_reads_no_more_than_with_a_bit_per_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pass 2's seam slabs (one voxel each side of a block face, crossing chunk lines) that
    touch one absent chunk among stored ones are one read each, as with a bit per block (they
    were split on read_stored's grid: 2x the source reads)."""
    import cc3d

    src, data = _dense(tmp_path, "segmentation")
    want = cc3d.connected_components(data, connectivity=26)
    reads = _Reads(monkeypatch, src.url)
    got, n = reads.count(lambda: np.asarray(voxgate.connected_components(
        src, block=BLOCK, progress=False, workers=2)))
    np.testing.assert_array_equal(got, want)
    with monkeypatch.context() as m:
        _old_groups(m, "connected_components")
        old, n_old = reads.count(lambda: np.asarray(voxgate.connected_components(
            src, block=BLOCK, progress=False, workers=2)))
    np.testing.assert_array_equal(old, want)
    assert n <= n_old, (n, n_old)


def _sqrt(x: np.ndarray) -> np.ndarray:
    return np.sqrt(x)[None]


def test_predict_windows_of_a_dense_volume_are_one_read_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A window (block and halo) touching one absent chunk among stored ones is one read."""
    from voxgate.services.predict import probability_to_uint8, to_unit_float

    src, img = _dense(tmp_path, "image")
    want = probability_to_uint8(np.sqrt(to_unit_float(img)))  # (pointwise: exact)
    reads = _Reads(monkeypatch, src.url)
    run = lambda: np.asarray(voxgate.predict(  # noqa: E731
        _sqrt, src, block=BLOCK, halo=(2, 3, 3), progress=False, workers=1))
    got, n = reads.count(run)
    np.testing.assert_array_equal(got, want)
    with monkeypatch.context() as m:
        _old_groups(m, "predict")
        old, n_old = reads.count(run)
    np.testing.assert_array_equal(old, want)
    blocks = 3 * 3 * 3  # (one window per block; plus the absent chunk read to learn the fill)
    assert n <= n_old and n <= blocks + 1, (n, n_old)


def test_mesh_blocks_of_a_dense_volume_are_one_read_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mesh block with its one-voxel overlap, touching one absent chunk, is one read."""
    src, _ = _dense(tmp_path, "segmentation")
    reads = _Reads(monkeypatch, src.url)
    got, n = reads.count(lambda: voxgate.mesh(src, block=BLOCK, progress=False))
    whole = voxgate.mesh(src, progress=False)  # (one piece)
    assert sorted(got) == sorted(whole) and len(whole) == 3
    for i in whole:  # (the same surface, stitched from the blocks)
        np.testing.assert_allclose(np.sort(got[i].vertices, axis=0),
                                   np.sort(whole[i].vertices, axis=0))
    with monkeypatch.context() as m:
        _old_groups(m, "mesh")
        _, n_old = reads.count(lambda: voxgate.mesh(src, block=BLOCK, progress=False))
    assert n <= n_old, (n, n_old)


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view(f"u{a.dtype.itemsize}")


@pytest.mark.parametrize("seed", range(3))
def test_read_stored_equals_a_read_of_the_box(tmp_path: Path, seed: int) -> None:
    """Random sparse zarr arrays (v2, v3, sharded; offsets; fills 0, 7, NaN, -0.0) and boxes
    (odd, across chunk and shard lines): read_stored with a bit per chunk and the fill voxel
    equals the store's own read bit for bit, into a new array and into a given one."""
    rng = np.random.default_rng(seed)
    for trial in range(6):
        shape = tuple(int(x) for x in rng.integers(6, 26, 3))
        chunks = tuple(int(x) for x in rng.integers(2, 7, 3))
        offset = tuple(int(x) for x in rng.integers(-4, 6, 3))
        dtype = str(rng.choice(["uint8", "float32", "uint64"]))
        opts: dict[str, Any] = [{"zarr_format": 2}, {}, {"shards": tuple(
            c * 2 for c in chunks)}][trial % 3]
        name = f"a{seed}_{trial}.zarr"
        vol = voxgate.create(f"zarr://{tmp_path}/{name}", shape=shape, dtype=dtype,
                             chunks=chunks, voxel_size=(1, 1, 1), offset=offset, **opts)
        fill: float = float(rng.choice([0, 7, np.nan, -0.0])) if dtype == "float32" else (
            int(rng.choice([0, 7])))
        for meta_file in ("zarr.json", ".zarray"):
            for path in (tmp_path / name).rglob(meta_file):
                meta = json.loads(path.read_text())
                if meta.get("node_type", "array") == "array" and "fill_value" in meta:
                    meta["fill_value"] = "NaN" if np.isnan(fill) else fill
                    path.write_text(json.dumps(meta))
        vol = voxgate.open(f"zarr://{tmp_path}/{name}", mode="r+")
        bounds = vol.bounds
        for _ in range(3):
            a = Vec(*(int(rng.integers(s, e)) for s, e in zip(bounds.start, bounds.stop,
                                                                strict=True)))
            box = Box(a, Vec(*(min(e, x + int(rng.integers(1, 9)))
                               for x, e in zip(a, bounds.stop, strict=True))))
            vol.remote.write(box, (rng.random(tuple(box.shape)) * 100 + 1).astype(dtype), 0)
        remote = vol.remote
        groups = absence.background_groups(remote, bounds, 0, remote.meta.scale(0).chunks,
                                           any_fill=True)
        assert groups is not None and groups.group == Vec(1, 1, 1)
        for _ in range(8):
            lo = [int(rng.integers(s, e)) for s, e in zip(bounds.start, bounds.stop,
                                                          strict=True)]
            hi = [int(rng.integers(x + 1, e + 1)) for x, e in zip(lo, bounds.stop,
                                                                  strict=True)]
            box = Box(Vec(*lo), Vec(*hi))
            want = remote.read(box, 0)
            what = f"{name} {shape} {chunks} {offset} {opts} {dtype} fill {fill} {box!r}"
            got = absence.read_stored(remote, box, 0, groups)
            np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=what)
            if not any(groups.fill.tobytes()):  # (a given out= holds the background 0)
                into = np.zeros(tuple(n + 2 for n in box.shape), want.dtype)
                absence.read_stored(remote, box, 0, groups, into, (1, 1, 1))
                np.testing.assert_array_equal(_bits(into[1:-1, 1:-1, 1:-1]), _bits(want),
                                              err_msg=what)


@pytest.mark.parametrize("out_scheme", ["hdf5", "zarr"])
def test_cc_labels_read_back_with_the_sources_groups_over_stale_output(
        tmp_path: Path, out_scheme: str) -> None:
    """The block-local labels are read back (pass 2, and pass 3 from a scratch volume)
    through read_stored with the SOURCE's groups: 0 where the source's chunks are absent,
    which they are, since pass 1 labelled what read_stored gave it.  Into an existing output
    holding stale ids everywhere (hdf5: the labels written into it in place; zarr: a scratch
    volume beside it), of a view at an offset, blocks off the source's chunks: cc3d's."""
    import cc3d

    url = f"zarr://{tmp_path}/src.zarr"
    src = voxgate.create(url, shape=SHAPE, dtype="uint32", chunks=CHUNKS, voxel_size=(4, 4, 4),
                         offset=OFFSET, kind="segmentation")
    rng = np.random.default_rng(2)
    o = src.bounds.start
    objects = [((1, 2, 3), (9, 11, 13)), ((12, 14, 16), (20, 26, 30)), ((3, 20, 25), (6, 30, 36))]
    for a, b in objects:
        box = Box(o + Vec(*a), o + Vec(*b))
        src.remote.write(box, (rng.random(tuple(box.shape)) < 0.6).astype(np.uint32) * 5, 0)
    view = voxgate.open(url)[2:23, 1:29, 4:35]
    want = cc3d.connected_components(view.read(), connectivity=26)
    region = view.bounds
    target = f"hdf5://{tmp_path}/cc.h5#/vol" if out_scheme == "hdf5" else (
        f"zarr://{tmp_path}/cc.zarr")
    out = voxgate.create(target, shape=tuple(region.shape), dtype="uint64", chunks=(3, 7, 4),
                         voxel_size=(4, 4, 4), offset=tuple(region.start), kind="segmentation")
    out.write(np.full(tuple(region.shape), 77, np.uint64))
    got = voxgate.connected_components(view, voxgate.open(target, mode="r+"), block=(6, 7, 8),
                                       progress=False)
    np.testing.assert_array_equal(np.asarray(got.read()), want)
