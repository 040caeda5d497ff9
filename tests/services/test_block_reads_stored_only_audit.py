"""The block-wise Services read only the stored chunks of the blocks they read.

connected_components, label_stats and mesh run block by block; a block that touches no stored
chunk was already skipped, but one that touches a stored chunk was read whole, its absent
chunks too (on object storage one GET answered 404 each): the stored groups were a bit per
block.  Now the scan keeps a bit per chunk (``voxgate.absence.chunk_blocks``, up to
``CHUNK_BITS`` chunks of the scale) and each block is read through ``read_stored``: runs of
stored chunks only, the rest the background 0 they read as; connected_components' own
block-local labels likewise.  Every result equals the brute-force one (cc3d / numpy /
whole-volume mesh) and the chunk reads are the stored chunks touched, plus the one absent chunk
read to learn what absent chunks read as.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate import Box, absence
from voxgate.geometry import chunk_boxes
from voxgate.remotes.zarr import ZarrRemote

from ..chunk_reads import ChunkReads

SHAPE = (37, 45, 53)  # z, y, x: partial chunks at every far face
OFFSET = (3, 5, 7)
CHUNKS = (4, 6, 5)
#: objects (relative boxes): inside one chunk, across a chunk corner, at the far corner
OBJECTS = [((1, 1, 1), (3, 4, 4)), ((10, 16, 18), (14, 21, 23)), ((35, 43, 50), (37, 45, 53))]
#: blocks of 2 x 2 x 2 chunks: a block holding an object reads 8 chunks without the bits
BLOCK = (8, 12, 10)
FORMATS = {"zarr": ("zarr", ".zarr"), "precomputed": ("precomputed", ""), "n5": ("n5", ".n5")}


def _seg() -> np.ndarray:
    seg = np.zeros(SHAPE, np.uint64)
    for i, (a, b) in enumerate(OBJECTS):
        seg[tuple(slice(x, y) for x, y in zip(a, b, strict=True))] = 7 + i
    return seg


def _source(tmp_path: Path, fmt: str) -> tuple[voxgate.Volume, np.ndarray]:
    scheme, ext = FORMATS[fmt]
    vol = voxgate.create(f"{scheme}://{tmp_path}/seg{ext}", shape=SHAPE, dtype="uint64",
                         chunks=CHUNKS, voxel_size=(8, 6, 4), offset=OFFSET,
                         kind="segmentation")
    seg = _seg()
    o = vol.bounds.start
    for a, b in OBJECTS:  # only the objects' boxes: every other chunk stays absent
        box = Box(o + a, o + b)
        vol.remote.write(box, seg[box.slices(o)], 0)
    return vol, seg


def _stored_chunks(vol: voxgate.Volume) -> int:
    sc = vol.scale_meta
    return sum(1 for _ in chunk_boxes(sc.bounds, sc.chunks, sc.bounds)) - len(
        vol.remote.absent_chunks(sc.bounds, 0))


def _per_block_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The old groups: a bit per block (the block shape given to background_groups)."""
    for name in ("connected_components", "label_stats", "mesh"):
        module = __import__(f"voxgate.services.{name}", fromlist=["chunk_blocks"])
        monkeypatch.setattr(module, "chunk_blocks", lambda remote, scale, base: base)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_connected_components_in_blocks_reads_only_stored_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    import cc3d

    src, seg = _source(tmp_path, fmt)
    want = cc3d.connected_components(seg, connectivity=26)
    stored = _stored_chunks(src)
    reads = ChunkReads(monkeypatch, src.url)
    got, n = reads.count(lambda: voxgate.connected_components(src, block=BLOCK,
                                                                progress=False))
    np.testing.assert_array_equal(np.asarray(got), want)
    with monkeypatch.context() as m:
        _per_block_bits(m)
        old, n_old = reads.count(lambda: voxgate.connected_components(src, block=BLOCK,
                                                                        progress=False))
    np.testing.assert_array_equal(np.asarray(old), want)
    # pass 1 reads each stored chunk once; pass 2's seam slabs (one voxel each side of a
    # block's upper face, one voxel past its other faces) read the stored chunks they cross:
    # a chunk by up to 3 faces of each of the 4 blocks around an edge; then the one absent
    # chunk background_groups reads to learn the fill
    assert n <= 13 * stored + 1 and 2 * n < n_old, (n, n_old, stored)


@pytest.mark.parametrize("fmt", ["zarr", "n5"])
def test_connected_components_into_a_store_reads_only_stored_label_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """With ``out=`` a store, pass 1's block-local labels go to a scratch store read back by
    passes 2 and 3: those reads too are of its stored chunks only (0 elsewhere)."""
    import cc3d

    src, seg = _source(tmp_path, fmt)
    scheme, ext = FORMATS[fmt]
    reads: Counter[str] = Counter()
    lock = threading.Lock()
    real = ZarrRemote.read

    def read(remote: Any, box: Box, scale: int = 0) -> np.ndarray:
        if ".voxgate-cc-" in remote.url:
            sc = remote.meta.scale(scale)
            with lock:
                reads["labels"] += sum(1 for _ in chunk_boxes(box, sc.chunks, sc.bounds))
        return real(remote, box, scale)

    monkeypatch.setattr(ZarrRemote, "read", read)
    out = voxgate.connected_components(src, out=f"{scheme}://{tmp_path}/cc{ext}", block=BLOCK,
                                       progress=False)
    np.testing.assert_array_equal(out.read(), cc3d.connected_components(seg, connectivity=26))
    new = reads["labels"]
    reads.clear()
    with monkeypatch.context() as m:
        _per_block_bits(m)
        voxgate.connected_components(src, out=f"{scheme}://{tmp_path}/cc2{ext}", block=BLOCK,
                                     progress=False)
    assert 0 < new < reads["labels"], (new, reads["labels"])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_label_stats_in_blocks_reads_only_stored_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    src, seg = _source(tmp_path, fmt)
    stored = _stored_chunks(src)
    reads = ChunkReads(monkeypatch, src.url)
    got, n = reads.count(lambda: voxgate.label_stats(src, block=BLOCK, prefer="local",
                                                     progress=False))
    ids, counts = np.unique(seg[seg > 0], return_counts=True)
    table = got.set_index("id") if "id" in got.columns else got
    assert sorted(int(i) for i in table.index) == [int(i) for i in ids]
    for i, c in zip(ids, counts, strict=True):
        assert int(table.loc[int(i), "voxel_count"]) == int(c)
        where = np.argwhere(seg == i)
        lo = where.min(axis=0) + np.asarray(OFFSET)
        assert tuple(int(v) for v in table.loc[int(i), ["z0", "y0", "x0"]]) == tuple(lo)
    with monkeypatch.context() as m:
        _per_block_bits(m)
        _, n_old = reads.count(lambda: voxgate.label_stats(src, block=BLOCK, prefer="local",
                                                           progress=False))
    assert n == stored + 1 < n_old, (n, n_old, stored)


@pytest.mark.parametrize("fmt", ["zarr", "precomputed"])
def test_mesh_in_blocks_reads_only_stored_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    src, _ = _source(tmp_path, fmt)
    stored = _stored_chunks(src)
    whole = voxgate.mesh(src, progress=False)
    reads = ChunkReads(monkeypatch, src.url)
    got, n = reads.count(lambda: voxgate.mesh(src, block=BLOCK, progress=False))
    assert sorted(got) == sorted(whole) == [7, 8, 9]
    for i in got:
        a, b = got[i], whole[i]
        np.testing.assert_allclose(np.sort(a.vertices, axis=0), np.sort(b.vertices, axis=0))
    with monkeypatch.context() as m:
        _per_block_bits(m)
        _, n_old = reads.count(lambda: voxgate.mesh(src, block=BLOCK, progress=False))
    # each block with its one-voxel overlap: a stored chunk may be read by its neighbours too
    assert n <= 4 * stored + 1 < n_old, (n, n_old, stored)


def test_chunk_bits_stay_bounded(tmp_path: Path) -> None:
    """Past CHUNK_BITS chunks the groups grow by the blocks' factors: no more bits than
    chunks / the cap allows, and still dividing the blocks."""
    vol = voxgate.create(f"zarr://{tmp_path}/big.zarr", shape=(4096, 4096, 4096),
                         dtype="uint8", chunks=(16, 16, 16), voxel_size=(1, 1, 1))
    base = (64, 128, 128)
    fine = absence.chunk_blocks(vol.remote, 0, base)
    assert all(b % f == 0 and f % 16 == 0 for b, f in zip(base, fine, strict=True))
    groups = np.prod([-(-4096 // f) + 1 for f in fine])
    assert groups <= absence.CHUNK_BITS
    assert tuple(absence.chunk_blocks(vol.remote, 0, (16, 16, 32))) == (16, 16, 32)
    small = voxgate.create(f"zarr://{tmp_path}/small.zarr", shape=SHAPE, dtype="uint8",
                           chunks=CHUNKS, voxel_size=(1, 1, 1))
    assert tuple(absence.chunk_blocks(small.remote, 0, BLOCK)) == CHUNKS


@pytest.mark.parametrize("seed", range(6))
def test_reads_are_runs_where_most_groups_are_absent_else_the_box_whole(seed: int) -> None:
    """StoredGroups.reads: the box whole where every group, or more than half of them, hold a
    stored chunk and the stored ones are not one run; else runs covering exactly the stored
    groups (checked against a brute-force mask of the chunks)."""
    from voxgate import Vec
    from voxgate.absence import StoredGroups

    rng = np.random.default_rng(seed)
    region = Box(Vec(*OFFSET), Vec(*OFFSET) + Vec(*SHAPE))
    groups = StoredGroups(region, Vec(*CHUNKS), Vec(*OFFSET), Vec(1, 1, 1))
    n = [-(-s // c) for s, c in zip(SHAPE, CHUNKS, strict=True)]
    stored = rng.random(n) < rng.choice([0.1, 0.5, 0.9])
    idx = np.argwhere(stored)
    groups.mark(region, [Vec(*map(int, i)) for i in np.argwhere(~stored)])
    assert len(idx) and (~stored).any()
    for _ in range(30):
        a = [int(rng.integers(0, s)) for s in SHAPE]
        b = [int(rng.integers(x + 1, s + 1)) for x, s in zip(a, SHAPE, strict=True)]
        part = Box(Vec(*OFFSET) + Vec(*a), Vec(*OFFSET) + Vec(*b))
        lo = [x // c for x, c in zip(a, CHUNKS, strict=True)]
        hi = [-(-x // c) for x, c in zip(b, CHUNKS, strict=True)]
        touched = stored[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        got = groups.reads(part)
        if touched.all() or (2 * touched.sum() > touched.size and got == [part]):
            assert got == [part]
            continue
        # runs: inside the part, disjoint, covering every stored chunk's voxels and no
        # absent chunk's
        cover = np.zeros(SHAPE, int)
        for r in got:
            assert part.contains(r)
            cover[r.slices(Vec(*OFFSET))] += 1
        want = np.zeros(SHAPE, int)
        for i in idx:
            s = [int(v) * c for v, c in zip(i, CHUNKS, strict=True)]
            want[s[0]:s[0] + CHUNKS[0], s[1]:s[1] + CHUNKS[1], s[2]:s[2] + CHUNKS[2]] = 1
        np.testing.assert_array_equal(cover[part.slices(Vec(*OFFSET))],
                                      want[part.slices(Vec(*OFFSET))])
        assert 2 * touched.sum() <= touched.size or len(got) == 1


def _sqrt(x: np.ndarray) -> np.ndarray:
    return np.sqrt(x)


@pytest.mark.parametrize("fmt", ["zarr", "precomputed"])
def test_predict_windows_read_only_stored_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """A block's input window (the block and its halo) that touches a stored chunk reads only
    the stored chunks in it; the output equals the model on the whole image."""
    from voxgate.services.predict import probability_to_uint8, to_unit_float

    scheme, ext = FORMATS[fmt]
    src = voxgate.create(f"{scheme}://{tmp_path}/img{ext}", shape=SHAPE, dtype="uint8",
                         chunks=CHUNKS, voxel_size=(8, 6, 4), offset=OFFSET)
    img = np.zeros(SHAPE, np.uint8)
    o = src.bounds.start
    rng = np.random.default_rng(3)
    for a, b in OBJECTS:
        box = Box(o + a, o + b)
        img[box.slices(o)] = rng.integers(1, 256, tuple(box.shape), dtype=np.uint8)
        src.remote.write(box, img[box.slices(o)], 0)
    want = probability_to_uint8(np.sqrt(to_unit_float(img)))  # (pointwise: exact)
    stored = _stored_chunks(src)
    reads = ChunkReads(monkeypatch, src.url)
    halo = (2, 3, 3)
    got, n = reads.count(lambda: np.asarray(voxgate.predict(
      _sqrt, src, block=BLOCK, halo=halo, progress=False)))
    np.testing.assert_array_equal(got, want)
    predict_module = __import__("voxgate.services.predict", fromlist=["chunk_blocks"])
    with monkeypatch.context() as m:
        m.setattr(predict_module, "chunk_blocks", lambda remote, scale, base: base)
        old, n_old = reads.count(lambda: np.asarray(voxgate.predict(
          _sqrt, src, block=BLOCK, halo=halo, progress=False)))
    np.testing.assert_array_equal(old, want)
    # each window reads the stored chunks it touches (a chunk by up to 8 windows around a
    # corner, with the halo), plus the one absent chunk read to learn the fill
    assert n <= 8 * stored + 1 and 2 * n < n_old, (n, n_old, stored)
