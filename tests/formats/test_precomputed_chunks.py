"""voxgate's precomputed chunk codecs, with the compressed_segmentation package, tensorstore and
simplejpeg as oracles."""

from __future__ import annotations

import json
from pathlib import Path

import compressed_segmentation as cseg
import numpy as np
import pytest
import tensorstore as ts

from voxgate.errors import CapabilityNotSupportedError, CorruptChunkError
from voxgate.formats.precomputed_chunks import decode_chunk, encode_chunk


def _labels(shape: tuple[int, ...], dtype: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, np.iinfo(dtype).max, size=n, dtype=dtype, endpoint=True)
    return ids[rng.integers(0, n, size=shape)]


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize("shape", [(1, 8, 8, 8), (1, 6, 12, 10), (1, 17, 5, 9), (1, 1, 1, 1)])
@pytest.mark.parametrize("distinct", [1, 2, 3, 17, 300, 5000])
def test_compressed_segmentation_matches_the_package(
    dtype: str, shape: tuple[int, ...], distinct: int
) -> None:
    data = _labels(shape, dtype, distinct)
    ours = encode_chunk(data, "compressed_segmentation", block_size=(8, 8, 8))
    theirs = cseg.compress(np.ascontiguousarray(data[0]).T, block_size=(8, 8, 8), order="F")
    assert ours == theirs
    back = decode_chunk(theirs, "compressed_segmentation", shape, np.dtype(dtype),
                        block_size=(8, 8, 8), name="c")
    np.testing.assert_array_equal(back, data)


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
def test_compressed_segmentation_channels_and_blocks(tmp_path: Path, dtype: str) -> None:
    data = _labels((2, 9, 11, 13), dtype, 40, seed=1)
    block_zyx = (2, 3, 4)
    encoded = encode_chunk(data, "compressed_segmentation", block_size=block_zyx)
    np.testing.assert_array_equal(
        decode_chunk(encoded, "compressed_segmentation", data.shape, np.dtype(dtype),
                     block_size=block_zyx, name="c"),
        data,
    )
    # tensorstore decodes the same bytes as the same voxels (a 2-channel image layer)
    info = {"@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": dtype,
            "num_channels": 2, "scales": [{
                "key": "s", "size": [13, 11, 9], "resolution": [1, 1, 1],
                "voxel_offset": [0, 0, 0], "chunk_sizes": [[13, 11, 9]],
                "encoding": "compressed_segmentation",
                "compressed_segmentation_block_size": list(block_zyx[::-1])}]}
    (tmp_path / "s").mkdir()
    (tmp_path / "info").write_text(json.dumps(info))
    (tmp_path / "s" / "0-13_0-11_0-9").write_bytes(encoded)
    store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{tmp_path}/"})
    np.testing.assert_array_equal(store.result().read(order="F").result().T, data)


class Malformed(Exception):
    """The bytes do not follow the compressed_segmentation format."""


def cseg_reference(data: bytes, shape: tuple[int, int, int, int], width: int,
                   block: tuple[int, int, int]) -> np.ndarray:
    """compressed_segmentation decoded voxel by voxel, straight from the Neuroglancer spec
    (``width``: 1 word per value for uint32, 2 for uint64; ``block`` in z, y, x).

    What a chunk must satisfy (else :class:`Malformed`): whole 32-bit words; each channel's
    offset inside the chunk; every block header inside it; a bit width of 0, 1, 2, 4, 8, 16
    or 32; each block's encoded values (all of the block's positions, the ones past the
    volume's edge included: a stored block is whole) and every table entry they index
    inside the chunk.  Anything else decodes to what the format says, whether or not it is
    what was written: the format has no checksum.
    """
    if len(data) % 4:
        raise Malformed("length")
    words = [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]
    c, nz, ny, nx = shape
    bz, by, bx = block
    gz, gy, gx = -(-nz // bz), -(-ny // by), -(-nx // bx)
    out = np.zeros(shape, dtype=np.uint64 if width == 2 else np.uint32)

    def word(i: int) -> int:
        if not 0 <= i < len(words):
            raise Malformed(f"word {i}")
        return words[i]

    for ch in range(c):
        base = word(ch)
        if base < c:
            raise Malformed("channel offset inside the channel table")
        for kz in range(gz):
            for ky in range(gy):
                for kx in range(gx):
                    h = base + 2 * (kx + gx * (ky + gy * kz))
                    table, bits, values = word(h) & 0xFFFFFF, word(h) >> 24, word(h + 1)
                    if bits not in (0, 1, 2, 4, 8, 16, 32):
                        raise Malformed(f"{bits} bits")
                    for z in range(bz):
                        for y in range(by):
                            for x in range(bx):
                                i = x + bx * (y + by * z)
                                if bits:
                                    w = word(base + values + (i * bits) // 32)
                                    index = (w >> ((i * bits) % 32)) & ((1 << bits) - 1)
                                else:
                                    index = 0
                                at = base + table + index * width
                                value = word(at) | (word(at + 1) << 32 if width == 2 else 0)
                                vz, vy, vx = kz * bz + z, ky * by + y, kx * bx + x
                                if vz < nz and vy < ny and vx < nx:
                                    out[ch, vz, vy, vx] = value
                    if bits:  # the block's encoded values end inside the chunk
                        word(base + values + (bx * by * bz * bits + 31) // 32 - 1)
    return out


def test_damaged_compressed_segmentation_is_always_an_error() -> None:
    data = _labels((1, 6, 12, 10), "uint64", 300, seed=2)
    good = encode_chunk(data, "compressed_segmentation", block_size=(8, 8, 8))

    def ours(raw: bytes) -> np.ndarray:
        return decode_chunk(raw, "compressed_segmentation", data.shape, np.dtype("uint64"),
                            block_size=(8, 8, 8), name="c")

    # the reference is right about the undamaged chunk, and so is voxgate
    np.testing.assert_array_equal(cseg_reference(good, data.shape, 2, (8, 8, 8)), data)
    np.testing.assert_array_equal(ours(good), data)
    # every truncation, including the empty chunk that crashes the package's decompressor
    for cut in range(len(good)):
        with pytest.raises(CorruptChunkError, match="chunk c"):
            ours(good[:cut])
    # random damage (4 bytes replaced): voxgate raises CorruptChunkError exactly when the
    # bytes break the format, and otherwise returns exactly what the format says they hold
    rng = np.random.default_rng(3)
    outcomes = {"malformed": 0, "unchanged": 0, "other values": 0}
    for _ in range(300):
        bad = bytearray(good)
        for pos in rng.integers(0, len(good), 4):
            bad[pos] = int(rng.integers(0, 256))
        try:
            expected = cseg_reference(bytes(bad), data.shape, 2, (8, 8, 8))
        except Malformed:
            with pytest.raises(CorruptChunkError, match="chunk c"):
                ours(bytes(bad))
            outcomes["malformed"] += 1
            continue
        got = ours(bytes(bad))
        assert got.dtype == np.uint64 and got.shape == data.shape
        np.testing.assert_array_equal(got, expected)
        if bytes(bad) == good:
            np.testing.assert_array_equal(got, data)
        outcomes["unchanged" if np.array_equal(got, data) else "other values"] += 1
    # the loop exercised both kinds of damage
    assert outcomes["malformed"] > 10 and outcomes["other values"] > 10, outcomes


def test_raw_is_fortran_xyzc_bytes() -> None:
    data = np.arange(2 * 3 * 4 * 5, dtype="<u2").reshape(2, 3, 4, 5)  # (c, z, y, x)
    encoded = encode_chunk(data, "raw")
    xyzc = np.frombuffer(encoded, "<u2").reshape((5, 4, 3, 2), order="F")
    np.testing.assert_array_equal(xyzc, data.transpose(3, 2, 1, 0))
    np.testing.assert_array_equal(
        decode_chunk(encoded, "raw", data.shape, np.dtype("uint16"), name="r"), data
    )
    with pytest.raises(CorruptChunkError, match="holds 239 bytes"):
        decode_chunk(encoded[:-1], "raw", data.shape, np.dtype("uint16"), name="r")


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg(channels: int) -> None:
    grid = np.indices((5, 7, 9)).sum(axis=0)
    data = np.stack([(grid * 5 + 40 * c) % 200 + 20 for c in range(channels)]).astype(np.uint8)
    encoded = encode_chunk(data, "jpeg", jpeg_quality=95)
    back = decode_chunk(encoded, "jpeg", data.shape, np.dtype("uint8"), name="j")
    assert np.abs(back.astype(int) - data).mean() < 3
    with pytest.raises(CorruptChunkError, match="9x35 image"):
        decode_chunk(encoded, "jpeg", (channels, 5, 7, 8), np.dtype("uint8"), name="j")
    with pytest.raises(CorruptChunkError, match="does not decode"):
        decode_chunk(encoded[:20], "jpeg", data.shape, np.dtype("uint8"), name="j")


def test_unknown_encoding() -> None:
    with pytest.raises(CapabilityNotSupportedError, match="compresso"):
        decode_chunk(b"", "compresso", (1, 1, 1, 1), np.dtype("uint8"), name="x")
