"""Brute-force references for DVID's label Block and sparse-volume runs, from DVID's format
as voxgate.formats.dvid_block's docstring and tests/formats/test_dvid_golden.py cite it
(``datatype/common/labels/compressed.go``): Python integers and bit strings, one voxel at a
time, nothing shared with voxgate's encoder or decoder.

Block: ``u32 gx, gy, gz, u32 N, u64 labels[N]``; when N > 1: ``u16 Ns[gx*gy*gz]`` (sub-blocks
x fastest, then y, then z), ``u32 indices[sum(Ns)]`` into labels, then per sub-block with
Ns > 1 its 512 voxels (x fastest, then y, then z) as indices into its own list, each
``bit_length(Ns - 1)`` bits, most significant bit first; Ns == 0 reads as label 0.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

import numpy as np

__all__ = ["dvid_decode", "dvid_encode", "rles_from_mask", "rles_to_coordinates"]

SUB = 8


def _sub_voxels(arr: list, sz: int, sy: int, sx: int) -> list[int]:
    return [int(arr[8 * sz + z][8 * sy + y][8 * sx + x])
            for z in range(SUB) for y in range(SUB) for x in range(SUB)]


def dvid_encode(block: np.ndarray, *, canonical: bool = True, seed: int = 0) -> bytes:
    """``canonical``: labels ascending, each sub-block's list ascending (voxgate's choice);
    otherwise as DVID itself may write: block labels in a shuffled (Go map) order, each
    sub-block's list in order of first appearance."""
    a = np.asarray(block)
    nz, ny, nx = a.shape
    gz, gy, gx = nz // SUB, ny // SUB, nx // SUB
    arr = a.tolist()
    values = sorted({int(v) for v in a.ravel().tolist()})
    if not canonical:
        random.Random(seed).shuffle(values)
    head = struct.pack("<4I", gx, gy, gz, len(values))
    head += b"".join(struct.pack("<Q", v) for v in values)
    if len(values) == 1:
        return head
    counts, indices, bits_text = [], [], []
    for sz in range(gz):
        for sy in range(gy):
            for sx in range(gx):
                vox = _sub_voxels(arr, sz, sy, sx)
                own: list[int] = []
                for v in vox:
                    if v not in own:
                        own.append(v)
                if canonical:
                    own.sort()
                counts.append(len(own))
                indices += [values.index(v) for v in own]
                width = (len(own) - 1).bit_length()
                if width:
                    text = "".join(format(own.index(v), f"0{width}b") for v in vox)
                    bits_text.append(text + "0" * (-len(text) % 8))
    body = b"".join(struct.pack("<H", n) for n in counts)
    body += b"".join(struct.pack("<I", i) for i in indices)
    body += b"".join(int(t, 2).to_bytes(len(t) // 8, "big") for t in bits_text)
    return head + body


def dvid_decode(data: bytes) -> np.ndarray:
    gx, gy, gz, n = struct.unpack_from("<4I", data, 0)
    pos = 16
    labels = [struct.unpack_from("<Q", data, pos + 8 * i)[0] for i in range(n)]
    pos += 8 * n
    out = np.zeros((gz * SUB, gy * SUB, gx * SUB), dtype=np.uint64)
    if n == 1:
        out[:] = labels[0]
        return out
    nsb = gx * gy * gz
    counts = [struct.unpack_from("<H", data, pos + 2 * i)[0] for i in range(nsb)]
    pos += 2 * nsb
    indices = [struct.unpack_from("<I", data, pos + 4 * i)[0] for i in range(sum(counts))]
    pos += 4 * sum(counts)
    bits = "".join(format(b, "08b") for b in data[pos:])
    at_index = at_bit = 0
    for s in range(nsb):
        sx, sy, sz = s % gx, (s // gx) % gy, s // (gx * gy)
        own = [labels[i] for i in indices[at_index:at_index + counts[s]]]
        at_index += counts[s]
        width = (len(own) - 1).bit_length() if own else 0
        for v in range(SUB**3):
            x, y, z = v % SUB, (v // SUB) % SUB, v // (SUB * SUB)
            if not own:
                label = 0
            elif width == 0:
                label = own[0]
            else:
                label = own[int(bits[at_bit:at_bit + width], 2)]
                at_bit += width
            out[8 * sz + z, 8 * sy + y, 8 * sx + x] = label
        at_bit += -at_bit % 8  # byte-padded per sub-block
    return out


def rles_from_mask(mask: np.ndarray, origin: Sequence[int] = (0, 0, 0)) -> list[list[int]]:
    """Runs ``[x, y, z, length]`` along x, in (z, y, x) order of their first voxel."""
    m = np.asarray(mask, dtype=bool).tolist()
    runs = []
    for z, plane in enumerate(m):
        for y, row in enumerate(plane):
            x = 0
            while x < len(row):
                if row[x]:
                    start = x
                    while x < len(row) and row[x]:
                        x += 1
                    runs.append([start + origin[2], y + origin[1], z + origin[0], x - start])
                else:
                    x += 1
    return runs


def rles_to_coordinates(runs: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    return sorted((z, y, x + i) for x, y, z, n in runs for i in range(n))
