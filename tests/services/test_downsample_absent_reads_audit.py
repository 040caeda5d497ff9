"""``voxgate.downsample`` reads only the stored chunks of the blocks it reads.

Before, a block was skipped only when it held no stored chunk at all (and only where the fill
value is 0); a block holding some was read whole, its absent chunks too.  Without ``block=``
a volume under the byte budget is one block, which holds the stored chunks, so every absent
chunk of it was read: on object storage one GET answered 404 per absent chunk.  Now the scale
a pass reads is asked where it stores chunks a bit per chunk (:func:`voxgate.absence.
background_groups` with ``any_fill``, which also gives the voxel absent chunks read as), and a
block is read in runs of stored chunks into an array of that voxel (fill values other than 0
too: NaN, -0.0, 7): the kernel gets the array a whole read gives, so every level is the same,
bit for bit.  Checked against the same downsample reading everything and brute-force numpy,
by the chunks each read of scale 0 touches (local stores) and by the GETs on S3 (moto).
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate import Box, Vec, absence
from voxgate.absence import StoredGroups

from ..chunk_reads import ChunkReads
from ..test_copy_sparse_skip_audit import _chunk_reads, _counting_proxy
from .numpy_reference import downsample_scales

#: the module (voxgate.services names the function alike)
ds = importlib.import_module("voxgate.services.downsample")

SHAPE = (37, 45, 53)
CHUNKS = (4, 6, 5)
OFFSET = (3, 5, 7)
#: objects at the lower corner, across chunk and block borders, at the far (partial) edges
BOXES = [((0, 0, 0), (3, 4, 3)), ((6, 10, 8), (11, 14, 13)),
         ((17, 20, 30), (23, 29, 33)), ((33, 40, 50), (37, 45, 53)),
         ((35, 0, 51), (37, 3, 53))]
#: one block of the pass grid (24 x 72 x 120) holds the whole volume
FACTORS = [(1, 2, 2), (3, 3, 3), (2, 2, 2)]
#: blocks of 8 x 24 x 40 (the least the pass grid allows): 20 blocks, cut at the far edges
SMALL_FACTORS = [(1, 2, 2), (2, 2, 2), (1, 1, 2)]
SUFFIX = {"zarr": ".zarr", "precomputed": "", "n5": ".n5"}
#: a store's scheme and its create options, by the name a case gives it
FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    "zarr": ("zarr", {}), "precomputed": ("precomputed", {}), "n5": ("n5", {}),
    "zarr2": ("zarr", {"zarr_format": 2}),
    "zarr3-sharded": ("zarr", {"shards": (8, 12, 10)}),
    # (shards of 2 x 2 x 4 chunks: several per volume)
    "precomputed-sharded": ("precomputed", {"sharded": {
        "@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 3, "hash": "identity",
        "minishard_bits": 1, "shard_bits": 6, "minishard_index_encoding": "gzip",
        "data_encoding": "raw"}}),
}


def _read_everything(m: pytest.MonkeyPatch) -> None:
    """The old path: downsample is told nothing of where chunks are stored."""
    m.setattr(ds, "background_groups", lambda *a, **k: None)


def _voxels(dtype: str, kind: str, fill: float) -> np.ndarray:
    """The fill value but inside BOXES: labels (a few, some 0 and some the fill) or random
    image values (floats with some -0.0, +0.0, the fill and an infinity among them)."""
    rng = np.random.default_rng(7)
    want = np.full(SHAPE, fill, dtype)
    for i, (a, b) in enumerate(BOXES):
        part = want[tuple(slice(x, y) for x, y in zip(a, b, strict=True))]
        if kind == "segmentation":
            part[...] = 10 + i
            part[rng.random(part.shape) < 0.3] = 2**40 + i if want.dtype.itemsize == 8 else 3
            part[rng.random(part.shape) < 0.1] = 0
        elif want.dtype.kind == "f":
            part[...] = rng.normal(0, 100, part.shape)
            part[rng.random(part.shape) < 0.1] = -0.0
            part[rng.random(part.shape) < 0.05] = 0.0
            part[rng.random(part.shape) < 0.05] = fill
        else:
            part[...] = rng.integers(0, np.iinfo(want.dtype).max, part.shape, endpoint=True)
    if want.dtype.kind == "f":
        want[7, 11, 9] = np.inf  # (in BOXES[1])
    return want


def _source(url: str, fmt: str, dtype: str, kind: str, fill: float = 0,
            options: dict[str, Any] | None = None,
            chunks: tuple[int, int, int] = CHUNKS) -> tuple[voxgate.Volume, np.ndarray]:
    """A volume of SHAPE at OFFSET (chunks of ``chunks``) whose chunks are stored where BOXES
    lie (grown to whole chunks: there the fill value is stored as voxels), absent elsewhere; a
    zarr fill value other than 0 set in its scale-0 array's metadata."""
    vol = voxgate.create(url, shape=SHAPE, dtype=dtype, chunks=chunks, voxel_size=(8, 8, 8),
                         offset=OFFSET, kind=kind, **(options or {}))
    if not (isinstance(fill, (int, float)) and fill == 0 and not np.signbit(fill)):
        assert fmt == "zarr"
        meta = Path(url.split("://", 1)[1]) / "0" / "zarr.json"
        doc = json.loads(meta.read_text())
        assert doc["zarr_format"] == 3
        doc["fill_value"] = "NaN" if np.isnan(fill) else fill
        meta.write_text(json.dumps(doc))
        vol = voxgate.open(url, mode="r+")
        assert _bits(np.asarray(vol.remote.meta.fill_value, dtype)) == _bits(
            np.asarray(fill, dtype))
    want = _voxels(dtype, kind, fill)
    sc = vol.scale_meta
    o = sc.bounds.start
    for a, b in BOXES:
        box = Box(Vec(*a), Vec(*b)).translate(o)
        lo = Vec(*(s + (x - s) // c * c for x, s, c in zip(box.start, o, sc.chunks, strict=True)))
        hi = Vec(*(s + -(-(x - s) // c) * c for x, s, c in zip(box.stop, o, sc.chunks,
                                                                strict=True)))
        whole = Box(lo, hi).intersect(sc.bounds)
        vol.remote.write(whole, want[whole.slices(o)], 0)
    got = vol.read()
    assert _bits(got) == _bits(want)  # (absent chunks read as the fill value, bit for bit)
    return vol, want


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def _levels(url: str) -> list[np.ndarray]:
    vol = voxgate.open(url)
    return [vol.at_scale(k).read() for k in range(len(vol.remote.meta.scales))]


def _total_and_stored(vol: voxgate.Volume) -> tuple[int, int]:
    sc = vol.scale_meta
    total = int(np.prod([-(-n // c) for n, c in zip(sc.shape, sc.chunks, strict=True)]))
    return total, total - len(vol.remote.absent_chunks(sc.bounds, 0))


# -- 1. local stores: the same levels, only the stored chunks read --------------------------------

CASES = [
    ("zarr", "uint8", "image", 0),
    ("zarr", "uint64", "segmentation", 0),
    ("precomputed", "uint8", "image", 0),
    ("precomputed", "uint64", "segmentation", 0),
    ("n5", "uint8", "image", 0),
    ("n5", "uint64", "segmentation", 0),
    ("zarr2", "uint64", "segmentation", 0),
    ("zarr3-sharded", "uint8", "image", 0),
    ("precomputed-sharded", "uint64", "segmentation", 0),
    # fill values other than 0 (zarr's fill_value): blocks of only absent chunks are read
    # as before (their levels are not known without the kernel), but none of their chunks
    ("zarr", "float32", "image", float("nan")),
    ("zarr", "float32", "image", -0.0),
    ("zarr", "float32", "image", 7.25),
    ("zarr", "uint8", "image", 7),
    ("zarr", "uint64", "segmentation", 5),
]


@pytest.mark.parametrize("block", [None, (8, 12, 10)], ids=["one-block", "block"])
@pytest.mark.parametrize(("fmt", "dtype", "kind", "fill"), CASES)
def test_every_level_as_read_whole_reading_only_stored_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, dtype: str, kind: str,
        fill: float, block: tuple[int, int, int] | None) -> None:
    """A 4-level pyramid of the odd, offset, mostly absent volume (zarr v3, sharded too, and
    v2; precomputed, sharded too; N5), as one block (no
    ``block=``: the volume is far under the byte budget) or in blocks of 8 x 12 x 10: every
    level bit for bit that of the same downsample reading everything, and brute-force
    numpy's; scale 0 read only at its stored chunks (and one absent chunk, read to learn the
    voxel absent chunks read as), where reading everything read every chunk (the old path
    read every chunk of a block holding a stored one: all of them as one block)."""
    factors = FACTORS if block is None else SMALL_FACTORS
    reads = ChunkReads(monkeypatch)
    scheme, options = FORMATS[fmt]
    urls = {tag: f"{scheme}://{tmp_path}/{tag}{SUFFIX[scheme]}" for tag in ("new", "old")}
    vols = {tag: _source(url, scheme, dtype, kind, fill, options) for tag, url in urls.items()}
    want = vols["new"][1]
    total, stored = _total_and_stored(vols["new"][0])
    assert 0 < stored < total / 5, (stored, total)
    counts: dict[str, Counter[int]] = {}
    for tag in ("new", "old"):
        with monkeypatch.context() as m:
            if tag == "old":
                _read_everything(m)
            done, _ = reads.count(lambda v=vols[tag][0]: voxgate.downsample(
                v, 4, factors=factors, block=block))
            counts[tag] = Counter(reads.by_scale)
            prov = ds.downsample_provenance(done)
            assert prov is not None
            if block is None or "sharded" not in fmt:  # (blocks are whole shards)
                assert prov.details["blocks"] == (1 if block is None else 20), prov
    vol = voxgate.open(urls["new"])
    assert vol.remote.pyramid_anchor == "offset"
    assert len(ds._passes(vol.remote, [Vec(*f) for f in factors],
                          np.dtype(dtype).itemsize)) == 1  # (every level from scale 0)
    reference = downsample_scales(want, factors, kind)
    new, old = _levels(urls["new"]), _levels(urls["old"])
    for k, (a, b) in enumerate(zip(new, old, strict=True)):
        assert a.dtype == b.dtype == np.dtype(dtype)
        assert _bits(a) == _bits(b), f"scale {k}: not bit for bit as read whole"
        np.testing.assert_array_equal(a, want if k == 0 else reference[k - 1],
                                      err_msg=f"scale {k}")
    print(fmt, dtype, fill, block, "chunks", total, "stored", stored, "reads of scale 0:",
          {tag: c[0] for tag, c in counts.items()})
    assert counts["old"][0] == total  # (every chunk, once)
    assert counts["new"][0] == stored + 1, counts
    assert counts["new"][0] < counts["old"][0]


def test_fewer_bits_than_chunks_still_reads_less(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the scale read has more chunks than :data:`voxgate.absence.CHUNK_BITS`, a bit
    stands for a group of chunks (dividing the blocks), so memory stays bounded: the levels
    are the same, and the groups holding no stored chunk are still not read."""
    monkeypatch.setattr(absence, "CHUNK_BITS", 60)
    reads = ChunkReads(monkeypatch)
    urls = {tag: f"zarr://{tmp_path}/{tag}.zarr" for tag in ("new", "old")}
    vols = {tag: _source(url, "zarr", "uint64", "segmentation") for tag, url in urls.items()}
    total, stored = _total_and_stored(vols["new"][0])
    counts = {}
    for tag in ("new", "old"):
        with monkeypatch.context() as m:
            if tag == "old":
                _read_everything(m)
            reads.count(lambda v=vols[tag][0]: voxgate.downsample(v, 4, factors=FACTORS))
            counts[tag] = reads.by_scale[0]
    vol = vols["new"][0]
    base = ds.block_shape(ds._pass_grid(vol.remote, 0, [Vec(*f) for f in FACTORS]), 8,
                          vol.scale_meta.shape, budget=ds.BLOCK_BYTES,
                          at_once=ds.blocks_at_once(None, None))
    fine = absence.chunk_blocks(vol.remote, 0, base)
    assert fine != Vec(*CHUNKS) and all(b % f == 0 for b, f in zip(base, fine, strict=True))
    for k, (a, b) in enumerate(zip(_levels(urls["new"]), _levels(urls["old"]), strict=True)):
        assert _bits(a) == _bits(b), f"scale {k}"
    print("groups of", fine, "reads", counts, "stored", stored, "of", total)
    assert stored + 1 < counts["new"] < counts["old"] == total


# -- 2. object storage: the GETs ------------------------------------------------------------------

#: chunks of the volume on S3: twice those of the local cases along each axis (120 chunks,
#: 12 stored, partial ones at every far edge, where CHUNKS make 880: every GET to moto costs,
#: and the local cases above count the reads of the finer grid)
S3_CHUNKS = (8, 12, 10)


@pytest.mark.parametrize("fmt", ["zarr", "precomputed"])
def test_one_block_on_s3_gets_only_the_stored_chunks(
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """The odd, offset, mostly absent uint64 segmentation on S3 (moto) downsampled without
    ``block=`` (one block): the chunk GETs of scale 0 are its stored chunks and one absent
    chunk (read to learn the voxel absent chunks read as), where reading everything GETs
    every chunk of it (each absent one answered 404); the same levels."""
    urls = {tag: f"{fmt}://s3://{s3_bucket}/{tag}{SUFFIX[fmt]}" for tag in ("new", "old")}
    vols = {tag: _source(url, fmt, "uint64", "segmentation", chunks=S3_CHUNKS)
            for tag, url in urls.items()}
    want = vols["new"][1]
    total, stored = _total_and_stored(vols["new"][0])
    assert 0 < stored < total / 5, (stored, total)
    proxy, log = _counting_proxy(os.environ["VOXGATE_S3_ENDPOINT"])
    gets = {}
    try:
        real = os.environ["VOXGATE_S3_ENDPOINT"]
        monkeypatch.setenv("VOXGATE_S3_ENDPOINT", proxy.url)
        for tag in ("new", "old"):
            with monkeypatch.context() as m:
                if tag == "old":
                    _read_everything(m)
                vol = voxgate.open(urls[tag], mode="r+")
                del log[:]
                voxgate.downsample(vol, 4, factors=FACTORS)
                # (of scale 0: the writes of the other scales' partial chunks at the far
                # edges GET them too, on either path)
                key = "0" if fmt == "zarr" else vol.remote._info["scales"][0]["key"]
                at = f"/{tag}{SUFFIX[fmt]}/{key}/"
                gets[tag] = _chunk_reads([(mth, p) for mth, p in log if at in p])
        monkeypatch.setenv("VOXGATE_S3_ENDPOINT", real)
    finally:
        proxy.close()
    reference = downsample_scales(want, FACTORS, "segmentation")
    new, old = _levels(urls["new"]), _levels(urls["old"])
    for k, (a, b) in enumerate(zip(new, old, strict=True)):
        assert _bits(a) == _bits(b), f"scale {k}"
        np.testing.assert_array_equal(a, want if k == 0 else reference[k - 1],
                                      err_msg=f"scale {k}")
    print(fmt, "chunks", total, "stored", stored, "chunk GETs", gets)
    assert gets["old"] == total
    assert gets["new"] == stored + 1, gets


# -- 3. the runs of stored groups ---------------------------------------------------------------

@pytest.mark.parametrize("seed", range(10))
def test_stored_runs_cover_exactly_the_stored_groups(seed: int) -> None:
    """:meth:`StoredGroups.stored_runs` of a box: disjoint boxes inside it covering exactly
    its voxels in groups that hold a stored chunk (against a voxel mask made chunk by
    chunk), and fewer boxes than such groups where neighbours are stored."""
    rng = np.random.default_rng(seed)
    chunks = Vec(*rng.integers(1, 5, 3))
    origin = Vec(*rng.integers(-5, 5, 3))
    nchunks = rng.integers(2, 10, 3)
    present = rng.random(tuple(nchunks)) < rng.choice([0.1, 0.4, 0.9])
    region = Box(origin, Vec(*(o + n * c - int(rng.integers(0, c))
                               for o, n, c in zip(origin, nchunks, chunks, strict=True))))
    group = Vec(*rng.integers(1, 3, 3))
    groups = StoredGroups(region, chunks, origin, group)
    groups.mark(region, [Vec(*map(int, idx)) for idx in np.argwhere(~present)])
    # a group's voxels are read where any chunk of it is stored
    held = np.zeros(tuple(-(-n // g) for n, g in zip(nchunks, group, strict=True)), bool)
    for idx in np.argwhere(present):
        held[tuple(i // g for i, g in zip(idx, group, strict=True))] = True
    for _ in range(8):
        a = Vec(*(int(rng.integers(s, e)) for s, e in zip(region.start, region.stop,
                                                          strict=True)))
        b = Vec(*(int(rng.integers(x + 1, e + 1)) for x, e in zip(a, region.stop,
                                                                  strict=True)))
        part = Box(a, b)
        mask = np.zeros(tuple(part.shape), bool)
        for z, y, x in itertools.product(*(range(n) for n in part.shape)):
            v = (part.start.z + z, part.start.y + y, part.start.x + x)
            gi = tuple((c - o) // ch // g for c, o, ch, g in zip(v, origin, chunks, group,
                                                                  strict=True))
            mask[z, y, x] = held[gi]
        got = np.zeros(tuple(part.shape), np.int32)
        runs = groups.stored_runs(part)
        for r in runs:
            assert part.contains(r) and not r.is_empty(), (r, part)
            got[r.slices(part.start)] += 1
        np.testing.assert_array_equal(got, mask.astype(np.int32), err_msg=str(part))
        # no more boxes than held groups the box touches (neighbours merged)
        g0 = [(a - o) // c // g for a, o, c, g in zip(part.start, origin, chunks, group,
                                                      strict=True)]
        g1 = [(a - 1 - o) // c // g + 1 for a, o, c, g in zip(part.stop, origin, chunks,
                                                              group, strict=True)]
        touched = held[tuple(slice(a, b) for a, b in zip(g0, g1, strict=True))]
        assert len(runs) <= int(touched.sum()) or touched.all()
        # what a block reads: the runs, or the box whole where every group it touches holds
        # a stored chunk, or the runs are several and the groups holding none fewer than half
        whole = touched.all() or (len(runs) > 1 and 2 * int(touched.sum()) > touched.size)
        assert groups.reads(part) == ([part] if whole else runs), part

