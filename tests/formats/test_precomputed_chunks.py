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


def test_damaged_compressed_segmentation_is_always_an_error() -> None:
    data = _labels((1, 6, 12, 10), "uint64", 300, seed=2)
    good = encode_chunk(data, "compressed_segmentation", block_size=(8, 8, 8))
    # every truncation, including the empty chunk that crashes the package's decompressor
    for cut in range(len(good)):
        with pytest.raises(CorruptChunkError, match="chunk c"):
            decode_chunk(good[:cut], "compressed_segmentation", data.shape, np.dtype("uint64"),
                         block_size=(8, 8, 8), name="c")
    rng = np.random.default_rng(3)
    for _ in range(300):  # random damage decodes to something or raises; it never crashes
        bad = bytearray(good)
        for pos in rng.integers(0, len(good), 4):
            bad[pos] = int(rng.integers(0, 256))
        try:
            decode_chunk(bytes(bad), "compressed_segmentation", data.shape,
                         np.dtype("uint64"), block_size=(8, 8, 8), name="c")
        except CorruptChunkError:
            pass


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
