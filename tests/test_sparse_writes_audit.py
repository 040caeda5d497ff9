"""Writes leave out the destination's chunks (or shards) that hold only its fill value, where
the destination holds nothing there (:func:`voxgate.absence.write_sparse`).

Before, the block-wise writers knew absence one bit per block: a block holding any stored
chunk was read and written whole, so a sparse volume's copy, connected components or pyramid
gained a chunk of zeros for every absent chunk sharing a block with a stored one (a copy into
a destination it created wrote the 7 absent chunks of each mixed block of 8; ``out=`` of
connected_components was "dense on disk", every block's zeros included).  Now those units are
left out where leaving them out is the same as writing them: a destination this run created,
or, of an existing one, where its chunks are absent; units holding stale data are written,
zeros and all.

Every result is checked against brute force (the source's own voxels, cc3d, the numpy
pyramid), and the chunk files (or shard files) on disk are counted against the write units
that hold other than the fill value, counted from the numpy data.

Precomputed is the exception (``Remote.keeps_fill_chunks``): CloudVolume's readers refuse an
absent chunk unless ``fill_missing`` is set, so chunks of 0 are written there inside the blocks
written, as before, and a copy writes the blocks of only 0 that the source stores: what
CloudVolume reads of the source without ``fill_missing``, it reads of the result (the last
test); only where the source's chunks are absent is the result's absent too.
"""

from __future__ import annotations

import importlib
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
import voxgate.transfer as transfer
from voxgate import Box, Vec
from voxgate.absence import StoredGroups
from voxgate.remotes.base import Remote

from .services.numpy_reference import downsample_scales

ds = importlib.import_module("voxgate.services.downsample")

#: files of a store's metadata (the rest are chunks or shards)
_META = {".zarray", ".zattrs", ".zgroup", "zarr.json", "attributes.json", "info",
         "provenance"}
SHAPE, CHUNKS, OFFSET = (37, 45, 53), (4, 6, 5), (3, 5, 7)
#: stored objects: at the lower corner, across chunk and block borders, at the far edges
BOXES = [((0, 0, 0), (3, 4, 2)), ((9, 13, 17), (14, 20, 24)), ((33, 40, 50), (37, 45, 53))]
#: a region written with zeros (its chunks stored, holding only the fill value)
ZEROS = ((20, 24, 30), (28, 36, 40))

#: destinations: (URL suffix, scheme, create options); SPARSE: those left sparse (zarr and N5
#: readers take an absent chunk as the fill value)
FORMATS = {
    "zarr2": ("zarr", ".zarr", {"zarr_format": 2}),
    "zarr3": ("zarr", ".zarr", {}),
    "zarr3-sharded": ("zarr", ".zarr", {"shards": (8, 12, 10)}),
    "n5": ("n5", ".n5", {}),
    "precomputed": ("precomputed", "", {}),
    # (shards of 2 x 2 x 4 chunks: several per volume)
    "precomputed-sharded": ("precomputed", "", {"sharded": {
        "@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 3, "hash": "identity",
        "minishard_bits": 1, "shard_bits": 6, "minishard_index_encoding": "gzip",
        "data_encoding": "raw"}}),
}
SPARSE = [f for f in FORMATS if not f.startswith("precomputed")]


def _files(path: Path) -> int:
    """The chunk (or shard) files under ``path``."""
    return sum(1 for p in path.rglob("*") if p.is_file() and p.name not in _META)


def _units_held(remote: Remote, k: int, data: np.ndarray, region: Box | None = None) -> int:
    """How many write units of ``remote``'s scale ``k`` hold voxels other than its fill value
    (bit for bit), ``data`` being the whole scale's voxels (or ``region``'s, the rest fill),
    counted with numpy."""
    sc = remote.meta.scale(k)
    grid, o = remote.write_grid(k), remote.grid_bounds(k).start
    fill = np.asarray(remote.meta.fill_value).astype(remote.meta.dtype)
    raw = np.ascontiguousarray(data).view(f"u{data.dtype.itemsize}")
    other = raw != fill.reshape(1).view(raw.dtype)[0]
    at = sc.bounds.start if region is None else region.start
    n = 0
    for idx in itertools.product(*(range((a - oo) // g, -(-(b - oo) // g)) for a, b, oo, g in
                                   zip(sc.bounds.start, sc.bounds.stop, o, grid,
                                       strict=True))):
        start = Vec(*(oo + i * g for oo, i, g in zip(o, idx, grid, strict=True)))
        cell = Box(start, start + grid).intersect(sc.bounds)
        if region is not None:
            cell = cell.intersect(region)
        if not cell.is_empty() and other[cell.slices(at)].any():
            n += 1
    return n


def _source(path: Path, dtype: str = "uint16", kind: str = "image") -> tuple[
        voxgate.Volume, list[np.ndarray]]:
    """A 2-scale precomputed volume of odd shape at an odd offset with a few stored objects,
    a region of stored zeros, the rest absent; and each scale's voxels."""
    vol = voxgate.create(f"precomputed://{path}", shape=SHAPE, dtype=dtype, chunks=CHUNKS,
                         voxel_size=(8, 8, 8), offset=OFFSET, num_scales=2, encoding="raw",
                         kind=kind)
    rng = np.random.default_rng(7)
    o = Vec(*OFFSET)
    for a, b in [*BOXES, ZEROS]:
        box = Box(Vec(*a), Vec(*b)).translate(o)
        data = (np.zeros if (a, b) == ZEROS else
                lambda s, d: rng.integers(1, 9, s, dtype=d))(tuple(box.shape), np.dtype(dtype))
        if (a, b) != ZEROS:
            data[rng.random(data.shape) < 0.2] = 0  # (zeros inside the objects too)
        vol.remote.write(box, data, 0)
    b1 = vol.at_scale(1).bounds
    vol.remote.write(Box(b1.start, b1.start + Vec(2, 3, 4)), np.full((2, 3, 4), 9, dtype), 1)
    return vol, [vol.remote.read(vol.at_scale(k).bounds, k) for k in (0, 1)]


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # copy blocks of 2 x 2 x 2 source chunks: most blocks holding data hold absent chunks too
    monkeypatch.setattr(transfer, "BLOCK_BYTES", 4 * 6 * 5 * 2 * 8)


# -- copy ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", SPARSE)
def test_a_copy_into_a_created_destination_is_as_sparse_as_its_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: None, fmt: str) -> None:
    """Every format: the copy equals the source and its chunk (shard) files are exactly the
    units holding data; the old copy wrote every unit of each mixed block (and the stored
    zeros of the source).  A sharded destination's blocks are whole shards: there the copy
    runs in one block (the default size), of shards with and without data."""
    if "sharded" in fmt:
        monkeypatch.setattr(transfer, "BLOCK_BYTES", 8 * 2**20)
    src, want = _source(tmp_path / "src")
    scheme, ext, options = FORMATS[fmt]
    url = f"{scheme}://{tmp_path}/dst{ext}"
    report = voxgate.copy(src.url, url, progress=False, workers=2, **options)
    dst = voxgate.open(url)
    expect = 0
    for k in (0, 1):
        np.testing.assert_array_equal(dst.remote.read(dst.at_scale(k).bounds, k), want[k])
        expect += _units_held(dst.remote, k, want[k])
    assert _files(tmp_path / f"dst{ext}") == expect
    total = sum(math.prod(-(-n // g) for n, g in zip(dst.at_scale(k).bounds.shape,
                                                      dst.remote.write_grid(k), strict=True))
                for k in (0, 1))
    # (counts: the cells written are the files, the rest left absent or in empty blocks)
    assert report.chunks_written == expect
    assert report.chunks_written + report.chunks_empty == total


def test_a_copy_of_a_box_and_a_resumed_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            small_blocks: None) -> None:
    """A box cutting chunks (units reaching past it, at a chunk grid offset), and the same
    copy into another destination interrupted after 5 blocks and resumed: equal to the
    source, and only the units holding data are files."""
    src, want = _source(tmp_path / "src")
    box = Box(Vec(5, 9, 10), Vec(31, 40, 59))
    url = f"zarr://{tmp_path}/box.zarr"
    voxgate.copy(src.url, url, box=box, scales=[0], progress=False)
    got = voxgate.open(url)
    region = box.intersect(got.bounds)
    inside = np.zeros_like(want[0])
    inside[region.slices(got.bounds.start)] = want[0][region.slices(got.bounds.start)]
    np.testing.assert_array_equal(got.remote.read(got.bounds, 0), inside)
    assert _files(tmp_path / "box.zarr") == _units_held(got.remote, 0, inside)

    real, calls = transfer._copy_part, [0]

    def stop_after_5(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] > 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(transfer, "_copy_part", stop_after_5)
    url = f"n5://{tmp_path}/resumed.n5"
    with pytest.raises(transfer.CopyInterrupted):
        voxgate.copy(src.url, url, progress=False, workers=1)
    monkeypatch.setattr(transfer, "_copy_part", real)
    report = voxgate.copy(src.url, url, progress=False, workers=2)
    assert report.resumed
    dst = voxgate.open(url)
    expect = 0
    for k in (0, 1):
        np.testing.assert_array_equal(dst.remote.read(dst.at_scale(k).bounds, k), want[k])
        expect += _units_held(dst.remote, k, want[k])
    assert _files(tmp_path / "resumed.n5") == expect


def test_an_existing_destination_is_overwritten_zeros_and_all(
        tmp_path: Path, small_blocks: None) -> None:
    """A destination that exists holding other voxels everywhere: every unit is written, the
    fill value's included (never left stale)."""
    src, want = _source(tmp_path / "src")
    url = f"zarr://{tmp_path}/old.zarr"
    old = voxgate.create(url, shape=SHAPE, dtype="uint16", chunks=CHUNKS, voxel_size=(8, 8, 8),
                         offset=OFFSET, num_scales=2)
    for k in (0, 1):
        b = old.at_scale(k).bounds
        old.remote.write(b, np.full(tuple(b.shape), 4321, np.uint16), k)
    voxgate.copy(src.url, url, progress=False)
    for k in (0, 1):
        np.testing.assert_array_equal(old.remote.read(old.at_scale(k).bounds, k), want[k])


@pytest.mark.parametrize("fill", [float("nan"), 0.0])
def test_floats_are_told_by_their_bits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       fill: float) -> None:
    """A float32 zarr of fill NaN or 0, one block of chunks of -0.0, +0.0, NaN, values and
    absent ones: left absent exactly those that are the fill value bit for bit (-0.0 is not
    a +0.0 fill; a NaN chunk is a NaN fill), and each reads back bit for bit."""
    import zarr

    a = zarr.create_array(str(tmp_path / "f.zarr"), shape=(8, 8, 12), chunks=(4, 4, 4),
                          dtype="float32", fill_value=fill)
    a[0:4, 0:4, 0:4] = -0.0
    a[0:4, 0:4, 4:8] = 0.0
    a[0:4, 4:8, 0:4] = np.nan
    a[4:8, 4:8, 4:8] = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    a[4:8, 0:4, 8:12] = np.where(np.arange(64).reshape(4, 4, 4) % 2, np.nan, -0.0)
    want = a[...]
    monkeypatch.setattr(transfer, "BLOCK_BYTES", 2**20)  # one block: the whole volume
    voxgate.copy(f"zarr://{tmp_path}/f.zarr", f"zarr://{tmp_path}/g.zarr", progress=False)
    got = voxgate.open(f"zarr://{tmp_path}/g.zarr")
    back = got.read()
    np.testing.assert_array_equal(back.view(np.uint32), want.view(np.uint32))
    # -0.0, the values, the mixed chunk; and +0.0 where the fill is NaN, NaN where it is 0
    assert _files(tmp_path / "g.zarr") == _units_held(got.remote, 0, want) == 4


# -- connected components --------------------------------------------------------------------------

def _seg(path: Path) -> tuple[voxgate.Volume, np.ndarray]:
    vol, want = _source(path, "uint64", "segmentation")
    return vol, want[0]


@pytest.mark.parametrize(("fmt", "block"), [
    ("zarr3", (8, 12, 10)), ("zarr2", (3, 3, 3)), ("n5", None), ("zarr3-sharded", None)])
def test_connected_components_out_url_holds_only_its_components(
        tmp_path: Path, fmt: str, block: tuple[int, int, int] | None) -> None:
    """out= a URL it creates, blocks smaller and larger than chunks: cc3d's answer, and a
    chunk (shard) file for each unit holding a component only (it wrote every block, zeros
    included)."""
    import cc3d

    src, seg = _seg(tmp_path / "seg")
    scheme, ext, options = FORMATS[fmt]
    url = f"{scheme}://{tmp_path}/cc{ext}"
    out = voxgate.connected_components(src, out=url, block=block, **options)
    brute = cc3d.connected_components(seg, connectivity=26)
    got = out.remote.read(out.bounds, 0)
    np.testing.assert_array_equal(got, brute)
    assert _files(tmp_path / f"cc{ext}") == _units_held(out.remote, 0, brute) > 0


@pytest.mark.parametrize("how", ["volume", "overwrite"])
@pytest.mark.parametrize("block", [(4, 6, 5), (8, 12, 10)])
def test_connected_components_into_an_existing_out_overwrites_its_old_labels(
        tmp_path: Path, how: str, block: tuple[int, int, int]) -> None:
    """An out that exists with old labels in some chunks (where the new result is 0, and
    where it holds components): those are written (zeros included, never left stale), and
    the chunks absent before and 0 now stay absent, in the blocks that held an old chunk too
    (the old code wrote every chunk; then every chunk of such a block)."""
    import cc3d

    src, seg = _seg(tmp_path / "seg")
    url = f"zarr://{tmp_path}/old.zarr"
    old = voxgate.create(url, shape=SHAPE, dtype="uint64", chunks=CHUNKS, voxel_size=(8, 8, 8),
                         offset=OFFSET, kind="segmentation")
    o = Vec(*OFFSET)
    stale = [Box(Vec(0, 0, 0), Vec(4, 6, 5)), Box(Vec(32, 36, 50), Vec(36, 42, 53)),
             Box(Vec(12, 12, 15), Vec(16, 18, 20)), Box(Vec(20, 24, 30), Vec(24, 30, 35))]
    for b in stale:
        old.remote.write(b.translate(o), np.full(tuple(b.shape), 77, np.uint64), 0)
    out = voxgate.connected_components(
        src, out=old if how == "volume" else url, block=block,
        **({} if how == "volume" else {"overwrite": True}))
    brute = cc3d.connected_components(seg, connectivity=26)
    np.testing.assert_array_equal(out.remote.read(out.bounds, 0), brute)
    # the units written: those holding components, and every unit that held an old chunk
    # (the store is asked where its chunks are a bit per chunk: the other units of 0 of a
    # block holding an old chunk stay absent)
    held = np.zeros(SHAPE, bool)
    for b in stale:
        lo = [a // c * c for a, c in zip(b.start, CHUNKS, strict=True)]
        hi = [min(-(-e // c) * c, n) for e, c, n in zip(b.stop, CHUNKS, SHAPE, strict=True)]
        held[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    mark = np.where(held | (brute != 0), 1, 0).astype(np.uint64)
    assert _files(tmp_path / "old.zarr") == _units_held(out.remote, 0, mark)
    assert _units_held(out.remote, 0, mark) < math.prod(
        -(-n // c) for n, c in zip(SHAPE, CHUNKS, strict=True))


# -- downsample --------------------------------------------------------------------------------

FACTORS = [(1, 2, 2), (2, 2, 2)]


@pytest.mark.parametrize(("fmt", "dtype", "kind"), [
    ("zarr3", "uint64", "segmentation"), ("n5", "uint8", "image")])
@pytest.mark.parametrize("dense", [False, True])
def test_a_pyramid_holds_only_the_chunks_of_its_data(
        tmp_path: Path, fmt: str, dtype: str, kind: str, dense: bool) -> None:
    """A sparse scale 0 (``dense``: every chunk stored, zeros included, so no block is left
    unread): the levels are numpy's, and their chunks are files exactly where they hold other
    than 0 (the old code wrote every chunk of a block that was read)."""
    scheme, ext, _ = FORMATS[fmt]
    url = f"{scheme}://{tmp_path}/v{ext}"
    vol = voxgate.create(url, shape=SHAPE, dtype=dtype, chunks=CHUNKS, voxel_size=(8, 8, 8),
                         offset=OFFSET, kind=kind)
    rng = np.random.default_rng(3)
    want = np.zeros(SHAPE, dtype)
    for a, b in BOXES:
        sl = tuple(slice(x, y) for x, y in zip(a, b, strict=True))
        want[sl] = rng.integers(1, 200, want[sl].shape)
    if dense:
        vol.remote.write(vol.bounds, want, 0)
    else:
        for a, b in BOXES:
            box = Box(Vec(*a), Vec(*b)).translate(Vec(*OFFSET))
            vol.remote.write(box, want[box.slices(OFFSET)], 0)
    before = _files(tmp_path / f"v{ext}")
    assert before == _units_held(vol.remote, 0, want) + (
        math.prod(-(-n // c) for n, c in zip(SHAPE, CHUNKS, strict=True))
        - _units_held(vol.remote, 0, want) if dense else 0)
    out = voxgate.downsample(url, 3, factors=FACTORS, block=(8, 24, 20))
    levels = downsample_scales(want, FACTORS, kind)
    expect = before
    for k, ref in enumerate(levels, start=1):
        np.testing.assert_array_equal(out.remote.read(out.at_scale(k).bounds, k), ref)
        expect += _units_held(out.remote, k, ref)
    assert _files(tmp_path / f"v{ext}") == expect


def test_a_pyramid_computed_again_overwrites_its_old_levels(tmp_path: Path) -> None:
    """The data-loss trap: a pyramid computed, then an object of scale 0 overwritten with
    zeros (its chunks stored) beside one that stays, in the same block: computed again, the
    levels that held the object hold 0, not its old voxels."""
    url = f"zarr://{tmp_path}/p.zarr"
    vol = voxgate.create(url, shape=SHAPE, dtype="uint64", chunks=CHUNKS, voxel_size=(8, 8, 8),
                         offset=OFFSET, kind="segmentation")
    want = np.zeros(SHAPE, np.uint64)
    want[0:3, 0:4, 0:2] = 5
    want[5:8, 8:12, 6:9] = 6
    vol.remote.write(vol.bounds, want, 0)
    voxgate.downsample(url, 3, factors=FACTORS, block=(8, 24, 20))
    want[5:8, 8:12, 6:9] = 0
    box = Box(Vec(5, 8, 6), Vec(8, 12, 9)).translate(Vec(*OFFSET))
    vol.remote.write(box, np.zeros(tuple(box.shape), np.uint64), 0)
    out = voxgate.downsample(url, 3, factors=FACTORS, block=(8, 24, 20))
    for k, ref in enumerate(downsample_scales(want, FACTORS, "segmentation"), start=1):
        np.testing.assert_array_equal(out.remote.read(out.at_scale(k).bounds, k), ref)


# -- the helper itself ---------------------------------------------------------------------------

class _Writes:
    """The boxes ``remote.write`` was called with."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, remote: Remote) -> None:
        self.boxes: list[Box] = []
        real = remote.write

        def write(box: Box, array: np.ndarray, scale: int = 0) -> None:
            self.boxes.append(box)
            real(box, array, scale)

        monkeypatch.setattr(remote, "write", write)


def test_write_sparse_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dense data is one write; units all fill are left out only where the store holds
    nothing, never a unit reaching past the box on a store's word (StoredGroups), and runs
    of units are merged into few writes."""
    from voxgate.absence import write_sparse

    vol = voxgate.create(f"zarr://{tmp_path}/w.zarr", shape=(12, 12, 20), dtype="uint8",
                         chunks=(4, 4, 4), voxel_size=(1, 1, 1), offset=(1, 2, 3))
    remote = vol.remote
    writes = _Writes(monkeypatch, remote)
    b = vol.bounds
    dense = np.ones(tuple(b.shape), np.uint8)
    assert write_sparse(remote, b, dense, 0, True) == (0, 0)
    assert writes.boxes == [b]
    # half the units all 0: x runs 1-2 of 5 are data
    half = np.zeros(tuple(b.shape), np.uint8)
    half[:, :, 4:12] = 3
    writes.boxes.clear()
    other = voxgate.create(f"zarr://{tmp_path}/w2.zarr", shape=(12, 12, 20), dtype="uint8",
                           chunks=(4, 4, 4), voxel_size=(1, 1, 1), offset=(1, 2, 3))
    w2 = _Writes(monkeypatch, other.remote)
    left = write_sparse(other.remote, b, half, 0, True)
    assert left == (3 * 3 * 3, 3 * 3 * 3 * 64)
    assert w2.boxes == [Box(Vec(1, 2, 7), Vec(13, 14, 15))]  # one merged write
    np.testing.assert_array_equal(other.read(), half)
    assert _files(tmp_path / "w2.zarr") == 3 * 3 * 2
    # a box cutting units: with the store's groups (nothing stored), the cut units are
    # written, the whole ones inside left out
    groups = StoredGroups(b, Vec(4, 4, 4), b.start, Vec(1, 1, 1))
    cut = Box(Vec(3, 4, 5), Vec(13, 14, 23))
    writes.boxes.clear()
    third = voxgate.create(f"zarr://{tmp_path}/w3.zarr", shape=(12, 12, 20), dtype="uint8",
                           chunks=(4, 4, 4), voxel_size=(1, 1, 1), offset=(1, 2, 3))
    n_left, _ = write_sparse(third.remote, cut, np.zeros(tuple(cut.shape), np.uint8), 0,
                             groups)
    assert n_left == 2 * 2 * 4  # (the units wholly inside the box)
    assert _files(tmp_path / "w3.zarr") == 3 * 3 * 5 - 2 * 2 * 4
    # a stored chunk said so by the groups: its unit is written
    groups.mark(b, [Vec(*i) for i in itertools.product(range(3), range(3), range(5))
                    if i != (2, 2, 4)])
    fourth = voxgate.create(f"zarr://{tmp_path}/w4.zarr", shape=(12, 12, 20), dtype="uint8",
                            chunks=(4, 4, 4), voxel_size=(1, 1, 1), offset=(1, 2, 3))
    n_left, _ = write_sparse(fourth.remote, b, np.zeros(tuple(b.shape), np.uint8), 0, groups)
    assert n_left == 3 * 3 * 5 - 1 and _files(tmp_path / "w4.zarr") == 1
    # None: one write, whatever the data
    assert write_sparse(fourth.remote, b, half, 0, None) == (0, 0)
    np.testing.assert_array_equal(fourth.read(), half)


# -- precomputed: what CloudVolume reads without fill_missing ---------------------------------

@pytest.mark.parametrize("fmt", ["precomputed", "precomputed-sharded"])
def test_precomputed_results_of_a_dense_source_are_read_by_cloudvolume_as_they_are(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: None, fmt: str) -> None:
    """A precomputed segmentation that stores every chunk, mostly 0 (as CloudVolume writes
    one): its copy into a new precomputed layer, its connected components into a new one and
    its pyramid are read by CloudVolume with ``fill_missing=False`` at every scale, equal to
    brute force (a copy left its blocks of only 0 absent, and then its chunks of 0 in blocks
    holding data; components and levels their chunks of 0: EmptyVolumeException).  A block
    whose source chunks are all absent stays absent (a sparse source: the last check)."""
    import cc3d
    from cloudvolume import CloudVolume

    if "sharded" in fmt:
        monkeypatch.setattr(transfer, "BLOCK_BYTES", 8 * 2**20)
    _, ext, options = FORMATS[fmt]
    src_path = tmp_path / "dense"
    src = voxgate.create(f"precomputed://{src_path}", shape=SHAPE, dtype="uint64",
                         chunks=CHUNKS, voxel_size=(8, 8, 8), offset=OFFSET,
                         kind="segmentation", encoding="raw")
    seg = np.zeros(SHAPE, np.uint64)
    for i, (a, b) in enumerate(BOXES, start=1):
        seg[tuple(slice(x, y) for x, y in zip(a, b, strict=True))] = 100 + i
    src.remote.write(src.bounds, seg, 0)  # every chunk stored, zeros included

    def cloudvolume(path: Path, mip: int = 0) -> np.ndarray:
        cv = CloudVolume(f"file://{path}", mip=mip, fill_missing=False, progress=False)
        return np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0)

    np.testing.assert_array_equal(cloudvolume(src_path), seg)
    copied = tmp_path / "copy"
    voxgate.copy(src.url, f"precomputed://{copied}", progress=False, workers=2, **options)
    np.testing.assert_array_equal(cloudvolume(copied), seg)
    labelled = tmp_path / "cc"
    voxgate.connected_components(src, out=f"precomputed://{labelled}", block=(8, 12, 10),
                                 **options)
    np.testing.assert_array_equal(cloudvolume(labelled),
                                  cc3d.connected_components(seg, connectivity=26))
    voxgate.downsample(f"precomputed://{copied}", 3, factors=FACTORS, block=(8, 24, 20))
    for k, ref in enumerate(downsample_scales(seg, FACTORS, "segmentation"), start=1):
        np.testing.assert_array_equal(cloudvolume(copied, k), ref)
    # absent in the source, absent in the copy: a sparse source's empty blocks are not written
    sparse = tmp_path / "sparse"
    part = voxgate.create(f"precomputed://{sparse}", shape=SHAPE, dtype="uint64",
                          chunks=CHUNKS, voxel_size=(8, 8, 8), offset=OFFSET,
                          kind="segmentation", encoding="raw")
    a, b = BOXES[1]
    box = Box(Vec(*a), Vec(*b)).translate(Vec(*OFFSET))
    part.remote.write(box, seg[box.slices(OFFSET)], 0)
    again = tmp_path / f"again{ext}"
    voxgate.copy(part.url, f"precomputed://{again}", progress=False, workers=2, **options)
    whole = math.prod(-(-n // g) for n, g in zip(SHAPE, voxgate.open(
        f"precomputed://{again}").remote.write_grid(0), strict=True))
    assert 0 < _files(again) < whole
