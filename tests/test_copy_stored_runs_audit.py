"""voxgate.copy reads only the stored chunks of a block some of whose chunks are absent.

A copy already skipped the blocks whose source chunks are all absent; a block holding one
stored chunk was read whole, its absent chunks too (on object storage a GET answered 404
each).  Now the source's scan keeps a bit per chunk (``voxgate.absence.chunk_blocks``) and a
block is read in its runs of stored chunks (where they are one run or the absent ones at
least half), the rest the voxel the source reads where a chunk is absent (channels, NaN and
non-zero fills bit for bit).  The copies are read back by zarr-python / CloudVolume and equal
the source read whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import voxgate
import voxgate.transfer as transfer
from voxgate import Box
from voxgate.geometry import chunk_boxes

from .chunk_reads import ChunkReads

SHAPE = (19, 29, 31)
CHUNKS = (4, 5, 6)
OFFSET = (2, 3, 1)
#: stored boxes (relative): one chunk's corner, across a chunk corner, the far corner
STORED = [((0, 0, 0), (2, 3, 3)), ((7, 9, 11), (10, 12, 14)), ((17, 27, 29), (19, 29, 31))]


def _source(tmp_path: Path, dtype: str, channels: int = 1,
            fill: float | None = None) -> tuple[voxgate.Volume, np.ndarray]:
    url = f"zarr://{tmp_path}/src.zarr"
    vol = voxgate.create(url, shape=SHAPE, dtype=dtype, chunks=CHUNKS, voxel_size=(8, 8, 8),
                         offset=OFFSET, **({"num_channels": channels} if channels > 1 else {}))
    if fill is not None:  # (voxgate.create has no fill_value: set it in the array's metadata)
        meta_path = tmp_path / "src.zarr" / "0" / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["fill_value"] = "NaN" if np.isnan(fill) else fill
        meta_path.write_text(json.dumps(meta))
        vol = voxgate.open(url, mode="r+")
    rng = np.random.default_rng(5)
    for a, b in STORED:
        box = Box(vol.bounds.start + a, vol.bounds.start + b)
        shape = ((channels,) if channels > 1 else ()) + tuple(box.shape)
        vol.remote.write(box, (rng.random(shape) * 200 + 1).astype(dtype), 0)
    return vol, vol.remote.read(vol.bounds, 0)


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view(f"u{a.dtype.itemsize}")


def _stored_chunks(vol: voxgate.Volume) -> int:
    sc = vol.scale_meta
    return sum(1 for _ in chunk_boxes(sc.bounds, sc.chunks, sc.bounds)) - len(
        vol.remote.absent_chunks(sc.bounds, 0))


@pytest.mark.parametrize(("dtype", "channels", "fill"), [
    ("uint64", 1, None), ("uint8", 2, None), ("float32", 1, float("nan")),
    ("float32", 1, -0.0), ("uint16", 1, 7)])
def test_a_copy_reads_only_the_stored_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             dtype: str, channels: int,
                                             fill: float | None) -> None:
    import zarr

    src, want = _source(tmp_path, dtype, channels, fill)
    stored = _stored_chunks(src)
    reads = ChunkReads(monkeypatch, src.url, on=True)
    block = 8 * 10 * 12 * np.dtype(dtype).itemsize * channels  # blocks of 2 x 2 x 2 chunks
    monkeypatch.setattr(transfer, "BLOCK_BYTES", block)
    voxgate.copy(src.url, f"zarr://{tmp_path}/new.zarr", progress=False, workers=2)
    new = reads.n
    reads.reset()
    with monkeypatch.context() as m:  # the groups a bit per block, as before
        m.setattr(transfer, "chunk_blocks", lambda remote, scale, base: base)
        voxgate.copy(src.url, f"zarr://{tmp_path}/old.zarr", progress=False, workers=2)
    old = reads.n
    for name in ("new", "old"):
        got = np.asarray(zarr.open_array(str(tmp_path / f"{name}.zarr" / "0"), mode="r")[...])
        np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=name)
    # the stored chunks, and the one absent chunk read to learn what absent ones read as
    assert new == stored + 1 < old, (new, old, stored)


def test_a_copy_into_precomputed_is_dense_where_the_source_is_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Into precomputed (CloudVolume refuses absent chunks), a block read in runs is still
    written whole: CloudVolume without fill_missing reads every block holding a stored chunk."""
    from cloudvolume import CloudVolume

    src, want = _source(tmp_path, "uint64")
    monkeypatch.setattr(transfer, "BLOCK_BYTES", 8 * 10 * 12 * 8)
    reads = ChunkReads(monkeypatch, src.url, on=True)
    voxgate.copy(src.url, f"precomputed://{tmp_path}/pc", progress=False, workers=2)
    assert reads.n == _stored_chunks(src) + 1
    cv = CloudVolume(f"file://{tmp_path}/pc", mip=0, fill_missing=False, progress=False)
    o = src.bounds.start
    for a, _ in STORED:  # the blocks holding data are whole, zeros and all
        lo = [(x // (2 * c)) * 2 * c for x, c in zip(a, CHUNKS, strict=True)]
        hi = [min(x + 2 * c, s) for x, c, s in zip(lo, CHUNKS, SHAPE, strict=True)]
        got = np.asarray(cv[o[2] + lo[2]:o[2] + hi[2], o[1] + lo[1]:o[1] + hi[1],
                            o[0] + lo[0]:o[0] + hi[0]])[..., 0].transpose(2, 1, 0)
        np.testing.assert_array_equal(got, want[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    np.testing.assert_array_equal(voxgate.open(f"precomputed://{tmp_path}/pc").read(), want)
