"""voxgate's own codecs against brute-force references (tests/formats/codec_reference.py and
test_precomputed_chunks.cseg_reference), never against themselves: DVID label Blocks on
sub-block grids that differ on every axis, DVID sparse-volume runs, compressed_segmentation on
odd chunk and block shapes with several channels, and the jpeg chunk layout read and written
by Pillow."""

from __future__ import annotations

import io
import itertools

import compressed_segmentation as cseg
import numpy as np
import pytest
from PIL import Image

from voxgate.formats.dvid_block import (
    decode_label_block,
    encode_label_block,
    rles_from_mask,
    rles_to_coordinates,
)
from voxgate.formats.precomputed_chunks import decode_chunk, encode_chunk

from . import codec_reference as ref
from .test_precomputed_chunks import cseg_reference

BIG = 2**64 - 1000


# -- DVID label blocks --------------------------------------------------------------------------

def dvid_block(grid: tuple[int, int, int], seed: int) -> np.ndarray:
    """(gz, gy, gx) sub-blocks, each with its own number of labels (1 to 512: 0 to 9 bits a
    voxel), labels shared between sub-blocks, ids near 2**64."""
    rng = np.random.default_rng(seed)
    gz, gy, gx = grid
    out = np.zeros((8 * gz, 8 * gy, 8 * gx), np.uint64)
    sizes = itertools.cycle([1, 2, 3, 5, 512, 4, 17, 257, 256, 9])
    for i, (sz, sy, sx) in enumerate(itertools.product(range(gz), range(gy), range(gx))):
        n = next(sizes)
        pool = np.uint64(BIG) + rng.choice(2000, n, replace=False).astype(np.uint64)
        if n == 512:
            sub = rng.permutation(pool)  # every voxel its own label
        else:
            sub = pool[rng.integers(0, n, 512)]
            sub[:n] = pool  # every label of the pool used
        if i % 4 == 3:
            sub[:] = 0  # a sub-block of background
        out[8 * sz:8 * sz + 8, 8 * sy:8 * sy + 8, 8 * sx:8 * sx + 8] = sub.reshape(8, 8, 8)
    return out


GRIDS = [(1, 2, 3), (3, 1, 2), (2, 3, 1), (1, 1, 1), (2, 2, 2)]


def test_dvid_reference_by_hand() -> None:
    a = np.full((8, 8, 16), 5, np.uint64)
    a[0, 0, 1] = 9  # sub-block 0: 5 then 9, one bit a voxel: 0100 0000 then zeros
    data = ref.dvid_encode(a)
    assert data[:16] == bytes([2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0])
    assert data[32:36] == bytes([2, 0, 1, 0])  # Ns: 2 and 1
    assert data[36:48] == bytes([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])  # indices [0, 1], [0]
    assert data[48] == 0b01000000 and len(data) == 48 + 64
    np.testing.assert_array_equal(ref.dvid_decode(data), a)


@pytest.mark.parametrize("grid", GRIDS)
def test_dvid_label_block(grid: tuple[int, int, int]) -> None:
    for seed in range(2):
        block = dvid_block(grid, seed)
        ours = encode_label_block(block)
        assert ours == ref.dvid_encode(block)  # canonical bytes, byte for byte
        np.testing.assert_array_equal(ref.dvid_decode(ours), block)
        dvid = ref.dvid_encode(block, canonical=False, seed=seed)  # DVID's own orders
        np.testing.assert_array_equal(ref.dvid_decode(dvid), block)
        np.testing.assert_array_equal(decode_label_block(dvid, block.shape), block)
    solid = np.full((8 * grid[0], 8 * grid[1], 8 * grid[2]), BIG, np.uint64)
    assert encode_label_block(solid) == ref.dvid_encode(solid)
    np.testing.assert_array_equal(decode_label_block(ref.dvid_encode(solid)), solid)


@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 1, 9), (4, 1, 1), (2, 6, 1)])
def test_dvid_sparse_volume_runs(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for density in (0.2, 0.6, 1.0):
        mask = rng.random(shape) < density
        origin = (-3, 7, 2**20)
        runs = rles_from_mask(mask, origin)
        want = ref.rles_from_mask(mask, origin)
        assert runs.dtype == np.int32 and runs.tolist() == want
        coords = rles_to_coordinates(runs)
        assert [tuple(int(v) for v in c) for c in coords] == ref.rles_to_coordinates(want)
        # runs in any order expand to the same sorted voxels
        shuffled = np.asarray(want, np.int32).reshape(-1, 4)[::-1]
        assert [tuple(int(v) for v in c) for c in rles_to_coordinates(shuffled)] == \
            ref.rles_to_coordinates(want)


# -- compressed_segmentation --------------------------------------------------------------------

CSEG_SHAPES = [(1, 1, 1, 1), (2, 5, 1, 17), (3, 9, 11, 13), (1, 16, 3, 2)]
CSEG_BLOCKS = [(8, 8, 8), (2, 3, 4), (1, 1, 5), (3, 5, 1)]


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize("shape", CSEG_SHAPES)
def test_compressed_segmentation_odd_chunks_and_blocks(dtype: str,
                                                       shape: tuple[int, int, int, int]) -> None:
    rng = np.random.default_rng(len(shape) + sum(shape))
    top = np.iinfo(dtype).max
    width = 2 if dtype == "uint64" else 1
    for block, distinct in zip(CSEG_BLOCKS, (300, 3, 17, 2), strict=True):
        pool = np.asarray(top, dtype) - rng.choice(100000, distinct, replace=False).astype(dtype)
        data = pool[rng.integers(0, distinct, shape)]
        data[..., :1] = pool[0]  # some uniform blocks too (0 bits a voxel)
        encoded = encode_chunk(data, "compressed_segmentation", block_size=block)
        np.testing.assert_array_equal(cseg_reference(encoded, shape, width, block), data)
        np.testing.assert_array_equal(
            decode_chunk(encoded, "compressed_segmentation", shape, np.dtype(dtype),
                         block_size=block, name="c"), data)
        # what the package writes for one channel (x, y, z blocks), decoded by voxgate
        one = cseg.compress(np.ascontiguousarray(data[0]).T, block_size=block[::-1], order="F")
        np.testing.assert_array_equal(
            decode_chunk(one, "compressed_segmentation", (1, *shape[1:]), np.dtype(dtype),
                         block_size=block, name="c"), data[:1])


# -- jpeg chunks --------------------------------------------------------------------------------

def image_of(chunk: np.ndarray) -> np.ndarray:
    """The chunk as precomputed's jpeg image: one row per (z, y), x along the row, channels
    interleaved; built voxel by voxel."""
    c, nz, ny, nx = chunk.shape
    img = np.zeros((nz * ny, nx, c), np.uint8)
    for ch, z, y, x in itertools.product(range(c), range(nz), range(ny), range(nx)):
        img[z * ny + y, x, ch] = chunk[ch, z, y, x]
    return img


def close(got: np.ndarray, want: np.ndarray) -> None:
    """JPEG is lossy: a few grey levels off on average at quality 100 (a misplaced voxel is
    about 85 off on this data)."""
    assert got.shape == want.shape
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() < 3 and diff.max() <= 40, (diff.mean(), diff.max())


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (3, 2, 1, 9), (1, 1, 1, 1), (3, 4, 6, 1),
                                   (1, 7, 1, 3)])
def test_jpeg_layout_read_and_written_by_pillow(shape: tuple[int, int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    data = rng.integers(0, 256, shape, dtype=np.uint8)
    want = image_of(data)
    # voxgate writes, Pillow reads
    encoded = encode_chunk(data, "jpeg", jpeg_quality=100)
    with Image.open(io.BytesIO(encoded)) as im:
        assert im.size == (shape[3], shape[1] * shape[2])
        got = np.asarray(im.convert("L" if shape[0] == 1 else "RGB"))
    close(got.reshape(want.shape), want)
    # Pillow writes, voxgate reads
    buf = io.BytesIO()
    pil = Image.fromarray(want[..., 0] if shape[0] == 1 else want)
    pil.save(buf, format="JPEG", quality=100, subsampling=0)
    back = decode_chunk(buf.getvalue(), "jpeg", shape, np.dtype("uint8"), name="j")
    close(back, data)
