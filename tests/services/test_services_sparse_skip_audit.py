"""The block-wise Services do not read what a store says is absent, when it reads as 0.

Before, connected_components, label_stats, mesh and skeletonize read every block of their
region: on object storage a mostly-absent segmentation cost one GET answered 404 per absent
chunk, and the kernels ran on zeros.  Now they ask the store which chunks it holds (the scan
``voxgate.copy`` makes, :mod:`voxgate.absence`: in pieces, a bit per group of chunks) and a
block (with the halo or the slab it reads) touching no stored chunk is known without a read:
no component, no label, no surface, no skeleton; cc still writes its zeros to an ``out=``
store.  Only where the fill value is 0 (every bit): otherwise, or with ``missing="error"``,
every block is read as before.  Results are the same as reading everything, and equal a
brute-force answer on the whole array.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
import voxgate.absence as absence
from voxgate import Box, Vec
from voxgate.errors import MissingChunkError
from voxgate.geometry import chunk_boxes
from voxgate.remotes.precomputed.remote import PrecomputedRemote
from voxgate.remotes.zarr import ZarrRemote
from voxgate.services.mesh import mesh_kernel

from ..test_copy_sparse_skip_audit import _chunk_reads, _counting_proxy
from .brute_reference import assert_stats_match, components

#: the modules (voxgate.services names the functions alike)
SERVICES = tuple(importlib.import_module(f"voxgate.services.{name}") for name in (
    "connected_components", "label_stats", "mesh", "skeletonize"))
_ONE = Vec(1, 1, 1)


class _Reads:
    """Counts the chunks that ``read`` calls of a Remote class on the volume at ``url`` touch
    (a chunk read twice counts twice): what a store on object storage is asked for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type, url: str) -> None:
        self.n = 0
        real = cls.read

        def read(remote: Any, box: Box, scale: int = 0) -> np.ndarray:
            if remote.url == url:
                sc = remote.meta.scale(scale)
                self.n += sum(1 for _ in chunk_boxes(box, sc.chunks, sc.bounds))
            return real(remote, box, scale)

        monkeypatch.setattr(cls, "read", read)


def _read_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    """The old path: no Service is told where chunks are stored."""
    for mod in SERVICES:
        monkeypatch.setattr(mod, "background_groups", lambda *a, **k: None, raising=False)


def _same_meshes(a: dict[int, Any], b: dict[int, Any]) -> None:
    assert sorted(a) == sorted(b)
    for i in a:
        np.testing.assert_array_equal(a[i].vertices, b[i].vertices, err_msg=str(i))
        np.testing.assert_array_equal(a[i].faces, b[i].faces, err_msg=str(i))


def _same_skeletons(a: dict[int, Any], b: dict[int, Any]) -> None:
    assert sorted(a) == sorted(b)
    for i in a:
        np.testing.assert_array_equal(a[i].vertices, b[i].vertices, err_msg=str(i))
        np.testing.assert_array_equal(a[i].edges, b[i].edges, err_msg=str(i))


# -- 1. requests on object storage ---------------------------------------------------------------

def _sparse_s3(url: str) -> np.ndarray:
    """A uint64 segmentation of 8 x 8 x 8 = 512 chunks (8, 16, 16) at ``url``, 4 of them
    stored (one at the far corner, one on the x edge); returns its voxels."""
    shape = (64, 128, 128)
    vol = voxgate.create(url, shape=shape, dtype="uint64", chunks=(8, 16, 16),
                         voxel_size=(8, 8, 8), kind="segmentation")
    want = np.zeros(shape, np.uint64)
    for i, (z, y, x) in enumerate([(0, 0, 0), (24, 48, 80), (56, 112, 112), (40, 0, 112)]):
        want[z + 1:z + 7, y + 2:y + 14, x + 2:x + 14] = 10 + i
        want[z + 3, y + 4, x + 4] = 2**63 + i  # (an id >= 2**63)
        vol[z:z + 8, y:y + 16, x:x + 16] = want[z:z + 8, y:y + 16, x:x + 16]
    return want


@pytest.mark.parametrize("fmt", ["precomputed", "zarr"])
def test_a_mostly_absent_segmentation_on_s3_is_read_where_it_is_stored(
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """cc (in one piece and block by block), label_stats and mesh read the 4 stored chunks
    (block-wise: the blocks and slabs touching them) where they read all 512 (the old code:
    512 GETs each, 3397 for cc block by block, 1331 for mesh block by block), and answer what
    cc3d and numpy say of the whole array."""
    import cc3d

    url = f"{fmt}://s3://{s3_bucket}/seg"
    want = _sparse_s3(url)
    block = (16, 32, 32)  # 2 x 2 x 2 chunks
    ids, counts = np.unique(want[want != 0], return_counts=True)
    brute_cc = cc3d.connected_components(want.view(np.int64), connectivity=26)
    proxy, log = _counting_proxy(os.environ["VOXGATE_S3_ENDPOINT"])
    gets: dict[str, int] = {}
    try:
        monkeypatch.setenv("VOXGATE_S3_ENDPOINT", proxy.url)
        vol = voxgate.open(url)
        for name, run in [
                ("cc", lambda: voxgate.connected_components(vol)),
                ("cc blocks", lambda: voxgate.connected_components(vol, block=block)),
                ("label_stats", lambda: voxgate.label_stats(vol, block=block)),
                ("mesh", lambda: voxgate.mesh(vol)),
                ("mesh blocks", lambda: voxgate.mesh(vol, block=block))]:
            del log[:]
            got = run()
            gets[name] = _chunk_reads(log)
            if name.startswith("cc"):
                np.testing.assert_array_equal(got, brute_cc, err_msg=name)
            elif name == "label_stats":
                np.testing.assert_array_equal(got["id"].to_numpy(), ids)
                np.testing.assert_array_equal(got["voxel_count"].to_numpy(), counts)
            else:
                assert sorted(got) == ids.tolist()
                if name == "mesh":
                    _same_meshes(got, mesh_kernel(want, (8, 8, 8), (0, 0, 0), close=True))
    finally:
        proxy.close()
    # one chunk's GET more: the fill value's voxel, read from an absent chunk
    assert gets["cc"] <= 4 + 1 and gets["mesh"] <= 4 + 1, gets
    assert gets["label_stats"] <= 4 * 8 + 1, gets  # (the 4 blocks holding them)
    assert gets["cc blocks"] <= 256 and gets["mesh blocks"] <= 128, gets


# -- 2. the same results on odd geometry ---------------------------------------------------------

OFFSET = (3, 5, 7)
CHUNKS = (4, 6, 5)


def _odd_source(tmp_path: Path, fmt: str = "precomputed") -> tuple[voxgate.Volume, np.ndarray]:
    """A uint64 segmentation of odd shape (37, 45, 53) at offset (3, 5, 7), chunks (4, 6, 5),
    with a few stored chunks: objects across chunk (and block) borders, at the lower corner
    and at the far edges (partial chunks); the rest absent."""
    url = f"{fmt}://{tmp_path}/seg" + (".zarr" if fmt == "zarr" else "")
    vol = voxgate.create(url, shape=(37, 45, 53), dtype="uint64", chunks=CHUNKS,
                         voxel_size=(8, 8, 8), offset=OFFSET, kind="segmentation")
    want = np.zeros((37, 45, 53), np.uint64)
    rng = np.random.default_rng(7)
    for a, b, label in [((0, 0, 0), (3, 4, 3), 5), ((6, 10, 8), (11, 14, 13), 7),
                        ((9, 13, 12), (10, 20, 19), 7),  # (touches the one before)
                        ((17, 20, 30), (23, 29, 33), 9), ((20, 22, 31), (22, 24, 32), 2**63),
                        ((33, 40, 50), (37, 45, 53), 11), ((35, 0, 51), (37, 3, 53), 12)]:
        sl = tuple(slice(x, y) for x, y in zip(a, b, strict=True))
        want[sl] = label
    # a few voxels of background inside the objects, and an object of several pieces
    want[rng.random(want.shape) < 0.03] = 0
    for a, b in [((0, 0, 0), (3, 4, 3)), ((6, 10, 8), (11, 20, 19)), ((17, 20, 30), (23, 29, 33)),
                 ((33, 40, 50), (37, 45, 53)), ((35, 0, 51), (37, 3, 53))]:
        box = Box(Vec(*a), Vec(*b)).translate(OFFSET)
        vol.remote.write(box, want[box.slices(Vec(*OFFSET))], 0)
    absent = vol.remote.absent_chunks(vol.bounds, 0)
    assert 0 < len(absent) < 10 * 8 * 11 and len(absent) > 700  # (mostly absent)
    return vol, want


BLOCK = (8, 12, 10)  # 2 x 2 x 2 chunks


def _run_all(vol: voxgate.Volume, tmp_path: Path, tag: str) -> dict[str, Any]:
    return {
        "cc": voxgate.connected_components(vol),
        "cc blocks": voxgate.connected_components(vol, block=BLOCK),
        "cc 6": voxgate.connected_components(vol, block=(4, 6, 5), connectivity=6),
        "cc out": voxgate.connected_components(vol, f"zarr://{tmp_path}/cc-{tag}.zarr",
                                               block=BLOCK).read(),
        "stats": voxgate.label_stats(vol, block=BLOCK),
        "stats whole": voxgate.label_stats(vol),
        "mesh": voxgate.mesh(vol),
        "mesh open": voxgate.mesh(vol, close=False),
        "mesh blocks": voxgate.mesh(vol, block=BLOCK),
        "mesh odd blocks": voxgate.mesh(vol, block=(7, 9, 11)),
        "skeletons": voxgate.skeletonize(vol, dust_threshold=0),
        "skeletons blocks": voxgate.skeletonize(vol, block=(9, 11, 13), dust_threshold=0),
    }


def _check_same(got: dict[str, Any], old: dict[str, Any]) -> None:
    for name in got:
        if name.startswith("cc"):
            np.testing.assert_array_equal(got[name], old[name], err_msg=name)
        elif name.startswith("stats"):
            assert got[name].equals(old[name]), name
        elif name.startswith("mesh"):
            _same_meshes(got[name], old[name])
        else:
            _same_skeletons(got[name], old[name])


@pytest.mark.parametrize("fmt", ["precomputed", "zarr"])
def test_every_service_answers_as_when_it_read_everything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """Each Service on the odd, mostly-absent volume: the same answer as with every block
    read, which is the brute-force one (flood fill, counts per label, marching cubes on the
    whole array); and far fewer reads of the store than with every block read."""
    vol, want = _odd_source(tmp_path, fmt)
    cls = PrecomputedRemote if fmt == "precomputed" else ZarrRemote
    reads = _Reads(monkeypatch, cls, vol.remote.url)
    got = _run_all(vol, tmp_path, "new")
    n_new, reads.n = reads.n, 0
    brute = components(want)
    for name in ("cc", "cc blocks", "cc out"):
        np.testing.assert_array_equal(got[name], brute, err_msg=name)
    np.testing.assert_array_equal(got["cc 6"], components(want, 6))
    assert_stats_match(got["stats"], want, OFFSET)
    assert_stats_match(got["stats whole"], want, OFFSET)
    _same_meshes(got["mesh"], mesh_kernel(want, (8, 8, 8), OFFSET, close=True))
    _same_meshes(got["mesh open"], mesh_kernel(want, (8, 8, 8), OFFSET, close=False))
    assert sorted(got["skeletons"]) == sorted(got["skeletons blocks"]) == [
        5, 7, 9, 11, 12, 2**63]
    with monkeypatch.context() as m:
        _read_everything(m)
        old = _run_all(vol, tmp_path, "old")
    n_old = reads.n
    _check_same(got, old)
    print("chunks read", n_new, "where every block was read", n_old)
    assert n_new * 3 < n_old, (n_new, n_old)


def test_cc_into_a_store_still_writes_zeros_over_absent_input(tmp_path: Path) -> None:
    """An out= store that holds other voxels (overwrite=True): every block of the result is
    written, those over absent input too (as zeros), so none of the old voxels is left."""
    vol, want = _odd_source(tmp_path)
    out = f"zarr://{tmp_path}/cc.zarr"
    first = voxgate.connected_components(vol, out, block=BLOCK)
    first.remote.write(first.bounds, np.full(tuple(first.bounds.shape), 99, np.uint64), 0)
    again = voxgate.connected_components(vol, out, block=BLOCK, overwrite=True)
    np.testing.assert_array_equal(again.read(), components(want))
    assert not again.remote.absent_chunks(again.bounds, 0)  # (dense, as before)


def test_a_mem_out_volume_with_old_voxels_is_cleared(tmp_path: Path) -> None:
    """An out= volume in memory (the local labels go into it, pass 3 labels again from the
    source): the blocks over absent input get their zeros there too."""
    vol, want = _odd_source(tmp_path)
    out = voxgate.create("mem://sparse-skip-cc-out", shape=(37, 45, 53), dtype="uint64",
                         chunks=CHUNKS, voxel_size=(8, 8, 8), offset=OFFSET,
                         kind="segmentation")
    try:
        out.remote.write(out.bounds, np.full((37, 45, 53), 3, np.uint64), 0)
        got = voxgate.connected_components(vol, out, block=BLOCK)
        np.testing.assert_array_equal(got.read(), components(want))
    finally:
        from voxgate.remotes.memory import delete

        delete("sparse-skip-cc-out")


# -- 3. where nothing is skipped -----------------------------------------------------------------

def test_a_fill_value_other_than_zero_is_read(tmp_path: Path) -> None:
    """A zarr of fill value 7: the absent chunks hold label 7, so every block is read and the
    answers count and connect the 7s."""
    import zarr

    path = tmp_path / "f7.zarr"
    a = zarr.create_array(str(path), shape=(10, 12, 14), chunks=(4, 4, 4), dtype="uint32",
                          fill_value=7)
    a[0:4, 0:4, 0:4] = np.arange(64, dtype=np.uint32).reshape(4, 4, 4)
    a[9, 11, 13] = 5
    want = a[...]
    vol = voxgate.open(f"zarr://{path}")
    assert absence.background_groups(vol.remote, vol.bounds, 0, (4, 4, 4)) is None
    np.testing.assert_array_equal(voxgate.connected_components(vol, block=(4, 4, 4)),
                                  components(want))
    assert_stats_match(voxgate.label_stats(vol, block=(4, 4, 4), as_labels=True), want)


def test_missing_error_still_raises(tmp_path: Path) -> None:
    """A volume opened with missing='error' reads as before, so its absent chunks raise."""
    vol, _ = _odd_source(tmp_path)
    strict = voxgate.open(vol.url, missing="error")
    for run in (lambda: voxgate.connected_components(strict),
                lambda: voxgate.connected_components(strict, block=BLOCK),
                lambda: voxgate.label_stats(strict, block=BLOCK),
                lambda: voxgate.mesh(strict, block=BLOCK)):
        with pytest.raises(MissingChunkError):
            run()


# -- 4. the groups' parts against brute force ----------------------------------------------------

@pytest.mark.parametrize("seed", range(12))
def test_stored_runs_cover_every_stored_chunk_and_no_empty_group(seed: int) -> None:
    """For random grids, regions and boxes: the runs of stored groups of
    :class:`StoredGroups` cover every stored chunk inside the box, lie inside it, and touch
    only groups holding a stored chunk (unless the box is read whole, when every group it
    touches holds one)."""
    rng = np.random.default_rng(seed)
    chunks = Vec(*rng.integers(1, 6, 3))
    origin = Vec(*rng.integers(-5, 5, 3))
    n = rng.integers(2, 10, 3)
    present = rng.random(tuple(n)) < rng.choice([0.05, 0.3])
    bounds = Box(origin, Vec(*(o + k * c - int(rng.integers(0, c))
                               for o, k, c in zip(origin, n, chunks, strict=True))))
    region = Box(Vec(*(s + int(rng.integers(0, 3)) for s in bounds.start)), bounds.stop)
    block, anchor = Vec(*rng.integers(1, 14, 3)), Vec(*(s - int(rng.integers(0, 5))
                                                        for s in region.start))
    groups = absence.StoredGroups(region, chunks, origin,
                                  absence.group_for(block, anchor, chunks, origin))
    for piece in absence.pieces(region, chunks, bounds, int(rng.integers(1, 30))):
        found = sorted(g for g, _ in chunk_boxes(piece, chunks, bounds)
                       if not present[tuple(g)])
        groups.mark(piece, found)
    size = Vec(*(g * c for g, c in zip(groups.group, chunks, strict=True)))
    for _, cell in chunk_boxes(region, block, Box(anchor, bounds.stop)):
        part = cell.intersect(region)
        parts = groups.stored_runs(part)
        stored = [c.intersect(part) for g, c in chunk_boxes(part, chunks, bounds)
                  if present[tuple(g)]]
        assert groups.stored_in(part) == bool(parts) and bool(stored) <= bool(parts)
        for s in stored:  # every stored voxel of the box is in a part
            covered = np.zeros(tuple(s.shape), bool)
            for p in parts:
                assert part.contains(p)
                q = p.intersect(s)
                if not q.is_empty():
                    covered[q.slices(s.start)] = True
            assert covered.all(), (part, s, parts)
        # each part (or, read whole, each group the box touches) holds a stored chunk
        for p in parts if parts != [part] else [Box(c.start, c.start + _ONE) for _, c in
                                                chunk_boxes(part, size, Box(origin,
                                                                            bounds.stop))]:
            at = Vec(*((a - o) // z * z + o for a, o, z in zip(p.start, origin, size,
                                                                strict=True)))
            group_box = Box(at, at + size).intersect(region)
            assert any(present[tuple(g)] for g, _ in chunk_boxes(group_box, chunks, bounds)), (
                part, p)
