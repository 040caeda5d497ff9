"""DVID's binary label formats: the compressed label Block, sparse-volume RLEs, block records.

All integers are little-endian.  Arrays are C-order ZYX (x fastest), DVID's wire order.

**Label Block** (DVID ``datatype/common/labels/compressed.go``; what ``GET .../blocks`` sends
for ``compression=blocks`` after gunzip, and what ``POST .../blocks`` takes)::

    u32 gx, gy, gz            sub-blocks (8x8x8 voxels) along x, y, z
    u32 N                     block-level label table size
    u64 labels[N]
    -- only when N > 1:
    u16 Ns[gx*gy*gz]          labels used by each sub-block (sub-block order x fastest)
    u32 indices[sum(Ns)]      per sub-block, indices into labels[]
    bytes values              per sub-block with Ns > 1: 512 indices into its own list, each
                              ceil(log2(Ns)) bits, MSB first, voxel order x fastest

A sub-block of ``512 * bits`` bits is always a whole number of bytes, so the per-sub-block
byte padding DVID specifies never adds anything.

**Sparse volume** (``GET sparsevol``, ``format=rles``): a 12-byte header ``u8 payload (0),
u8 ndims (3), u8 rundim (0), u8 reserved, u32 nvoxels (0), u32 nspans`` then ``nspans`` runs
``i32 x, y, z, length`` along x.  ``srles`` is the runs alone.

**Block records** (``GET/POST blocks``, ``specificblocks``): ``i32 bx, by, bz, i32 nbytes,
payload`` repeated, block coordinates on the block grid.

Decoders check every length and raise :class:`DVIDFormatError` naming what was wrong; they
never read past the buffer.  It is a :class:`~voxgate.errors.CorruptChunkError` (so a
:class:`~voxgate.errors.VoxgateError`) and, as before, a ``ValueError``.  Encoders given an
array they cannot encode raise :class:`~voxgate.errors.InvalidRequestError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

from ..errors import CorruptChunkError, InvalidRequestError

__all__ = [
    "DVIDFormatError",
    "decode_label_block",
    "decode_rles",
    "encode_label_block",
    "encode_rles",
    "pack_block_records",
    "rles_from_mask",
    "rles_to_coordinates",
    "unpack_block_records",
]

SUB = 8  # sub-block edge
_SUBVOX = SUB**3
#: DVID's MaxSubBlockSize: a block is at most 1024 voxels (128 sub-blocks) along each axis
_MAX_SUB_PER_AXIS = 128


class DVIDFormatError(CorruptChunkError, ValueError):
    """Bytes that are not a valid DVID label block, RLE stream or block-record stream."""


def _bits_for(n: np.ndarray) -> np.ndarray:
    """DVID's ``bitsFor``: bits needed for indices 0..n-1 (0 for n <= 1)."""
    n = n.astype(np.int64)
    out = np.zeros(n.shape, dtype=np.int64)
    m = n > 1
    out[m] = np.ceil(np.log2(n[m].astype(np.float64))).astype(np.int64)
    # guard float rounding at exact powers of two
    out[m] += (1 << out[m]) < n[m]
    return out


def _to_subblocks(arr: np.ndarray) -> np.ndarray:
    nz, ny, nx = arr.shape
    gz, gy, gx = nz // SUB, ny // SUB, nx // SUB
    return (arr.reshape(gz, SUB, gy, SUB, gx, SUB).transpose(0, 2, 4, 1, 3, 5)
            .reshape(gz * gy * gx, _SUBVOX))


def _from_subblocks(sb: np.ndarray, gz: int, gy: int, gx: int) -> np.ndarray:
    return (sb.reshape(gz, gy, gx, SUB, SUB, SUB).transpose(0, 3, 1, 4, 2, 5)
            .reshape(gz * SUB, gy * SUB, gx * SUB))


def encode_label_block(block: np.ndarray) -> bytes:
    """Serialize a uint64 (z, y, x) block, each side a multiple of 8, as a DVID label Block."""
    arr = np.asarray(block)
    if arr.ndim != 3 or any(s % SUB or s == 0 for s in arr.shape):
        raise InvalidRequestError(
            f"a DVID label block must be 3-D with every side a positive multiple of 8, "
            f"got shape {arr.shape}"
        )
    arr = np.ascontiguousarray(arr, dtype="<u8")
    nz, ny, nx = arr.shape
    gz, gy, gx = nz // SUB, ny // SUB, nx // SUB
    head = struct.pack("<4I", gx, gy, gz, 0)
    first = arr.flat[0]
    if not (arr != first).any():
        return head[:12] + struct.pack("<I", 1) + np.array([first], "<u8").tobytes()
    labels, inverse = np.unique(arr.reshape(-1), return_inverse=True)
    nlab = len(labels)
    idx = _to_subblocks(inverse.reshape(arr.shape).astype(np.int64))
    nsb = idx.shape[0]
    srt = np.sort(idx, axis=1)
    first_mask = np.ones(srt.shape, dtype=bool)
    first_mask[:, 1:] = srt[:, 1:] != srt[:, :-1]
    counts = first_mask.sum(axis=1)
    sb_indices = srt[first_mask]  # row-major: each sub-block's sorted distinct indices
    # position of each voxel's index within its sub-block's list
    row = np.arange(nsb, dtype=np.int64)[:, None]
    keys = row * nlab + idx
    uniq_keys = (row * nlab + srt)[first_mask]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    local = np.searchsorted(uniq_keys, keys) - starts[:, None]
    bits = _bits_for(counts)
    nbytes = bits * (_SUBVOX // 8)
    offsets = np.concatenate(([0], np.cumsum(nbytes)))
    values = np.zeros(int(offsets[-1]), dtype=np.uint8)
    for b in np.unique(bits):
        if b == 0:
            continue
        rows = np.nonzero(bits == b)[0]
        shifts = np.arange(b - 1, -1, -1, dtype=np.int64)
        bitarr = ((local[rows][:, :, None] >> shifts) & 1).astype(np.uint8)
        packed = np.packbits(bitarr.reshape(len(rows), _SUBVOX * b), axis=1)
        dest = offsets[rows][:, None] + np.arange(_SUBVOX // 8 * b)
        values[dest] = packed
    return b"".join((
        struct.pack("<4I", gx, gy, gz, nlab),
        labels.astype("<u8").tobytes(),
        counts.astype("<u2").tobytes(),
        sb_indices.astype("<u4").tobytes(),
        values.tobytes(),
    ))


def decode_label_block(data: bytes | memoryview, shape: tuple[int, int, int] | None = None
                       ) -> np.ndarray:
    """A DVID label Block back to a uint64 (z, y, x) array.

    ``shape``, when given, is the block shape the caller expects; a block of another shape is
    an error rather than a silent misplacement.
    """
    buf = memoryview(data).cast("B")
    if len(buf) < 16:
        raise DVIDFormatError(f"a DVID label block has a 16-byte header, got {len(buf)} bytes")
    gx, gy, gz, nlab = struct.unpack_from("<4I", buf, 0)
    if min(gx, gy, gz) == 0 or max(gx, gy, gz) > _MAX_SUB_PER_AXIS or gx * gy * gz > 2**20:
        raise DVIDFormatError(
            f"implausible sub-block grid {gx}x{gy}x{gz} in a DVID label block (DVID allows 1 to "
            f"{_MAX_SUB_PER_AXIS} sub-blocks of 8 voxels per axis)"
        )
    if nlab == 0:
        raise DVIDFormatError("the label block declares 0 labels; DVID requires at least one")
    out_shape = (gz * SUB, gy * SUB, gx * SUB)
    if shape is not None and tuple(shape) != out_shape:
        raise DVIDFormatError(
            f"the label block holds {out_shape[::-1]} voxels (x, y, z), expected "
            f"{tuple(shape)[::-1]}"
        )
    pos = 16
    if len(buf) < pos + 8 * nlab:
        raise DVIDFormatError(
            f"the label block declares {nlab} labels but has only {len(buf) - 16} bytes after "
            "its header"
        )
    labels = np.frombuffer(buf, "<u8", nlab, pos).astype(np.uint64)
    pos += 8 * nlab
    if nlab == 1:
        return np.full(out_shape, labels[0], dtype=np.uint64)
    nsb = gx * gy * gz
    if len(buf) < pos + 2 * nsb:
        raise DVIDFormatError("the label block ends inside its sub-block label counts")
    counts = np.frombuffer(buf, "<u2", nsb, pos).astype(np.int64)
    pos += 2 * nsb
    total = int(counts.sum())
    if len(buf) < pos + 4 * total:
        raise DVIDFormatError("the label block ends inside its sub-block label indices")
    sb_indices = np.frombuffer(buf, "<u4", total, pos).astype(np.int64)
    pos += 4 * total
    if total and sb_indices.max() >= nlab:
        raise DVIDFormatError(
            f"a sub-block index points past the block's {nlab} labels (max {sb_indices.max()})"
        )
    if (counts > _SUBVOX).any():
        raise DVIDFormatError("a sub-block claims more than 512 labels")
    bits = _bits_for(counts)
    nbytes = bits * (_SUBVOX // 8)
    need = int(nbytes.sum())
    if len(buf) - pos < need:
        raise DVIDFormatError(
            f"the label block's voxel values need {need} bytes, {len(buf) - pos} are left"
        )
    values = np.frombuffer(buf, np.uint8, need, pos)
    offsets = np.concatenate(([0], np.cumsum(nbytes)[:-1]))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    gidx = np.zeros((nsb, _SUBVOX), dtype=np.int64)  # index into labels[], -1 = label 0
    one = counts == 1
    gidx[one] = sb_indices[starts[one]][:, None]
    gidx[counts == 0] = -1
    for b in np.unique(bits):
        if b == 0:
            continue
        rows = np.nonzero(bits == b)[0]
        src = offsets[rows][:, None] + np.arange(_SUBVOX // 8 * b)
        unpacked = np.unpackbits(values[src], axis=1).reshape(len(rows), _SUBVOX, b)
        weights = (1 << np.arange(b - 1, -1, -1, dtype=np.int64))
        local = unpacked.astype(np.int64) @ weights
        if (local >= counts[rows][:, None]).any():
            raise DVIDFormatError("a voxel value points past its sub-block's label list")
        gidx[rows] = sb_indices[starts[rows][:, None] + local]
    table = np.concatenate((labels, np.zeros(1, np.uint64)))
    return _from_subblocks(table[gidx], gz, gy, gx)


# -- sparse volumes -----------------------------------------------------------------------------
_RLE_HEADER = struct.Struct("<BBBBII")


def encode_rles(runs: np.ndarray, *, header: bool = True) -> bytes:
    """``runs`` as (n, 4) int32 ``x, y, z, length`` -> DVID ``rles`` (or ``srles``) bytes."""
    r = np.ascontiguousarray(runs, dtype="<i4").reshape(-1, 4)
    body = r.tobytes()
    if not header:
        return body
    return _RLE_HEADER.pack(0, 3, 0, 0, 0, len(r)) + body


def decode_rles(data: bytes | memoryview, *, header: bool = True) -> np.ndarray:
    """DVID ``rles`` (or headerless ``srles``) bytes -> (n, 4) int32 ``x, y, z, length``."""
    buf = memoryview(data).cast("B")
    if header:
        if len(buf) < 12:
            raise DVIDFormatError(f"a sparse volume has a 12-byte header, got {len(buf)} bytes")
        payload, ndims, rundim, _, _, nspans = _RLE_HEADER.unpack_from(buf, 0)
        if payload != 0 or ndims != 3 or rundim != 0:
            raise DVIDFormatError(
                f"unsupported sparse volume: payload {payload}, {ndims} dims, runs along "
                f"axis {rundim} (expected a binary 3-D volume with runs along x)"
            )
        if len(buf) != 12 + 16 * nspans:
            raise DVIDFormatError(
                f"the sparse volume declares {nspans} runs ({12 + 16 * nspans} bytes), "
                f"got {len(buf)} bytes"
            )
        body = buf[12:]
    else:
        if len(buf) % 16:
            raise DVIDFormatError(f"streaming RLEs come in 16-byte runs, got {len(buf)} bytes")
        body = buf
    runs = np.frombuffer(body, "<i4").reshape(-1, 4).astype(np.int32)
    if (runs[:, 3] <= 0).any():
        raise DVIDFormatError("a sparse volume run has a length <= 0")
    return runs


def rles_to_coordinates(runs: np.ndarray) -> np.ndarray:
    """Expand runs to one (z, y, x) int64 row per voxel, sorted (z, y, x)."""
    r = np.asarray(runs, dtype=np.int64).reshape(-1, 4)
    if not len(r):
        return np.zeros((0, 3), dtype=np.int64)
    lengths = r[:, 3]
    rep = np.repeat(np.arange(len(r)), lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out = np.stack((r[rep, 2], r[rep, 1], r[rep, 0] + within), axis=1)
    order = np.lexsort((out[:, 2], out[:, 1], out[:, 0]))
    return out[order]


def rles_from_mask(mask: np.ndarray, origin: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Runs along x of a boolean (z, y, x) mask whose first voxel is at ``origin`` (z, y, x)."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return np.zeros((0, 4), dtype=np.int32)
    nz, ny, nx = m.shape
    padded = np.zeros((nz, ny, nx + 2), dtype=np.int8)
    padded[:, :, 1:-1] = m
    d = np.diff(padded, axis=2)
    sz, sy, sx = np.nonzero(d == 1)
    _, _, ex = np.nonzero(d == -1)
    oz, oy, ox = origin
    runs = np.stack((sx + ox, sy + oy, sz + oz, ex - sx), axis=1)
    return runs.astype(np.int32)


# -- block records ------------------------------------------------------------------------------
_REC = struct.Struct("<4i")


def pack_block_records(records: list[tuple[tuple[int, int, int], bytes]]) -> bytes:
    """``[((bx, by, bz), payload), ...]`` -> DVID block-record stream."""
    parts: list[bytes] = []
    for (bx, by, bz), payload in records:
        parts.append(_REC.pack(bx, by, bz, len(payload)))
        parts.append(payload)
    return b"".join(parts)


def unpack_block_records(data: bytes | memoryview) -> Iterator[tuple[tuple[int, int, int],
                                                                    memoryview]]:
    """Yield ``((bx, by, bz), payload)`` from a DVID block-record stream."""
    buf = memoryview(data).cast("B")
    pos = 0
    while pos < len(buf):
        if len(buf) - pos < 16:
            raise DVIDFormatError(f"a block record header is cut short at byte {pos}")
        bx, by, bz, n = _REC.unpack_from(buf, pos)
        pos += 16
        if n < 0 or len(buf) - pos < n:
            raise DVIDFormatError(
                f"block ({bx}, {by}, {bz}) declares {n} bytes, {len(buf) - pos} are left"
            )
        yield (bx, by, bz), buf[pos:pos + n]
        pos += n

