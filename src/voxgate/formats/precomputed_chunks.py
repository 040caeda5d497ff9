"""Neuroglancer precomputed chunk codecs: ``raw``, ``jpeg`` and ``compressed_segmentation``.

tensorstore decodes precomputed chunks for voxgate wherever it can reach them.  These codecs
serve the chunks it cannot: CloudVolume's ``<chunk>.gz`` files on local disks, gzip bodies
stored without a Content-Encoding, and layers whose info names an encoding tensorstore refuses.

Arrays are C-order ``(c, z, y, x)``: the same memory as precomputed's Fortran-order
``(x, y, z, c)``, so no transpose is paid.  The decoders check every length and offset before
following it, so a damaged or truncated chunk raises :class:`CorruptChunkError` naming the
chunk.  (The ``compressed_segmentation`` package's own decompressor trusts its input: it
returns garbage for a truncated chunk and crashes the process on an empty one.  It is used here
for encoding only.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import CapabilityNotSupportedError, CorruptChunkError, InvalidRequestError

__all__ = ["decode_chunk", "encode_chunk"]

#: bit widths compressed_segmentation allows for a block's encoded values
_CSEG_BITS = (0, 1, 2, 4, 8, 16, 32)


def decode_chunk(
    data: bytes,
    encoding: str,
    shape: Sequence[int],
    dtype: np.dtype[Any],
    *,
    block_size: Sequence[int] | None = None,
    name: str,
) -> np.ndarray:
    """Decode one chunk of ``shape`` (c, z, y, x); ``block_size`` is (z, y, x) for cseg."""
    c, z, y, x = (int(v) for v in shape)
    if encoding == "raw":
        expected = c * z * y * x * dtype.itemsize
        if len(data) != expected:
            raise CorruptChunkError(
                f"raw chunk {name} holds {len(data)} bytes; a {x}x{y}x{z}x{c} (x,y,z,c) "
                f"{dtype.name} chunk needs {expected}",
                chunk=name,
            )
        arr = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(c, z, y, x)
        return arr.astype(dtype, copy=False)
    if encoding == "jpeg":
        return _decode_jpeg(data, (c, z, y, x), dtype, name)
    if encoding == "compressed_segmentation":
        if block_size is None:
            raise InvalidRequestError("compressed_segmentation needs a block size")
        return _decode_cseg(data, (c, z, y, x), dtype, tuple(block_size), name)
    raise CapabilityNotSupportedError(
        f"chunk {name} is {encoding!r}-encoded; voxgate's own codecs handle raw, jpeg and "
        "compressed_segmentation (tensorstore handles png where it can reach the chunks)"
    )


def encode_chunk(
    array: np.ndarray,
    encoding: str,
    *,
    block_size: Sequence[int] | None = None,
    jpeg_quality: int = 85,
) -> bytes:
    """Encode a C-order (c, z, y, x) chunk."""
    if encoding == "raw":
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    if encoding == "jpeg":
        return _encode_jpeg(array, jpeg_quality)
    if encoding == "compressed_segmentation":
        if block_size is None:
            raise InvalidRequestError("compressed_segmentation needs a block size")
        return _encode_cseg(array, tuple(block_size))
    raise CapabilityNotSupportedError(
        f"voxgate cannot encode {encoding!r} chunks itself; use raw, jpeg or "
        "compressed_segmentation"
    )


# -- jpeg -----------------------------------------------------------------------------------------
def _colorspace(channels: int) -> str:
    if channels == 1:
        return "GRAY"
    if channels == 3:
        return "RGB"
    raise CapabilityNotSupportedError(f"jpeg chunks hold 1 or 3 channels, not {channels}")


def _decode_jpeg(
    data: bytes, shape: tuple[int, int, int, int], dtype: np.dtype[Any], name: str
) -> np.ndarray:
    import simplejpeg

    c, z, y, x = shape
    try:
        img = simplejpeg.decode_jpeg(data, colorspace=_colorspace(c))
    except ValueError as exc:
        raise CorruptChunkError(f"jpeg chunk {name} does not decode: {exc}", chunk=name) from None
    if img.size != c * z * y * x:
        raise CorruptChunkError(
            f"jpeg chunk {name} is a {img.shape[1]}x{img.shape[0]} image; a {x}x{y}x{z} chunk "
            f"needs {x * y * z} pixels",
            chunk=name,
        )
    # rows of the image, read in order, are the x-fastest flattened chunk; channels interleave
    return np.ascontiguousarray(img.reshape(z, y, x, c).transpose(3, 0, 1, 2), dtype=dtype)


def _encode_jpeg(array: np.ndarray, quality: int) -> bytes:
    import simplejpeg

    c, z, y, x = array.shape
    if array.dtype != np.uint8:
        raise InvalidRequestError(f"jpeg holds uint8 data, not {array.dtype.name}")
    img = np.ascontiguousarray(array.transpose(1, 2, 3, 0).reshape(z * y, x, c))
    return bytes(simplejpeg.encode_jpeg(img, quality=quality, colorspace=_colorspace(c)))


# -- compressed_segmentation ---------------------------------------------------------------------
def _encode_cseg(array: np.ndarray, block_zyx: tuple[int, ...]) -> bytes:
    import compressed_segmentation as cseg

    if array.dtype not in (np.uint32, np.uint64):
        raise InvalidRequestError(
            f"compressed_segmentation holds uint32 or uint64 data, not {array.dtype.name}"
        )
    block_xyz = block_zyx[::-1]
    # the package's 4-D path crashes; encode each channel (its output starts with the one-word
    # channel table [1]) and write the multi-channel table here
    parts = []
    for ch in array:
        # the package takes writable buffers only: a read-only chunk (a contiguous piece of a
        # broadcast or frozen array, as a volume write passes on) is copied
        ch = np.ascontiguousarray(ch)
        if not ch.flags.writeable:
            ch = ch.copy()
        fortran_xyz = ch.T  # (x, y, z) Fortran order, no copy
        parts.append(cseg.compress(fortran_xyz, block_size=block_xyz, order="F")[4:])
    offsets, at = [], len(parts)
    for p in parts:
        offsets.append(at)
        at += len(p) // 4
    return np.asarray(offsets, dtype="<u4").tobytes() + b"".join(parts)


def _decode_cseg(
    data: bytes,
    shape: tuple[int, int, int, int],
    dtype: np.dtype[Any],
    block_zyx: tuple[int, ...],
    name: str,
) -> np.ndarray:
    def corrupt(why: str) -> CorruptChunkError:
        return CorruptChunkError(f"compressed_segmentation chunk {name} is damaged: {why}",
                                 chunk=name)

    if dtype not in (np.uint32, np.uint64):
        raise InvalidRequestError(
            f"compressed_segmentation holds uint32 or uint64 data, not {dtype.name}"
        )
    if len(data) % 4:
        raise corrupt(f"its length {len(data)} is not a multiple of 4")
    words = np.frombuffer(data, dtype="<u4")
    c = shape[0]
    if len(words) < c:
        raise corrupt("the channel table is truncated")
    out = np.empty(shape, dtype=dtype)
    for ch in range(c):
        start = int(words[ch])
        if not c <= start < len(words):
            raise corrupt(f"channel {ch} starts at word {start}, outside the chunk")
        out[ch] = _decode_cseg_channel(words[start:], shape[1:], dtype, block_zyx, corrupt)
    return out


def _decode_cseg_channel(
    words: np.ndarray,
    zyx: tuple[int, ...],
    dtype: np.dtype[Any],
    block_zyx: tuple[int, ...],
    corrupt: Any,
) -> np.ndarray:
    """One channel, vectorised over blocks; offsets are in 32-bit words from the channel start."""
    bz, by, bx = block_zyx
    nz, ny, nx = zyx
    gz, gy, gx = -(-nz // bz), -(-ny // by), -(-nx // bx)
    nblocks, per_block = gz * gy * gx, bz * by * bx
    if len(words) < 2 * nblocks:
        raise corrupt(f"the block headers need {2 * nblocks} words, the channel has {len(words)}")
    header = words[: 2 * nblocks].reshape(nblocks, 2).astype(np.int64)
    table = header[:, 0] & 0xFFFFFF
    bits = header[:, 0] >> 24
    values_at = header[:, 1]
    index = np.zeros((nblocks, per_block), dtype=np.int64)
    for b in np.unique(bits).tolist():
        if b not in _CSEG_BITS:
            raise corrupt(f"a block header says {b} bits per value")
        if b == 0:
            continue  # every voxel of the block is the table's first entry
        sel = np.flatnonzero(bits == b)
        nwords = (per_block * b + 31) // 32
        if int(values_at[sel].max()) + nwords > len(words):
            raise corrupt("encoded values run past the end of the chunk")
        packed = words[values_at[sel, None] + np.arange(nwords)].astype(np.uint64)
        pos = np.arange(per_block, dtype=np.int64) * b
        shift = (pos % 32).astype(np.uint64)
        index[sel] = ((packed[:, pos // 32] >> shift) & np.uint64((1 << b) - 1)).astype(np.int64)
    width = dtype.itemsize // 4  # table entries are 1 (uint32) or 2 (uint64) words
    entry = table[:, None] + index * width
    if nblocks and int(entry.max()) + width > len(words):
        raise corrupt("a lookup table index points past the end of the chunk")
    if width == 1:
        values = words[entry].astype(dtype)
    else:
        values = words[entry].astype(np.uint64) | (words[entry + 1].astype(np.uint64) << 32)
    blocks = values.reshape(gz, gy, gx, bz, by, bx).transpose(0, 3, 1, 4, 2, 5)
    return blocks.reshape(gz * bz, gy * by, gx * bx)[:nz, :ny, :nx]
