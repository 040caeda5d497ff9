"""Neuroglancer's legacy single-resolution mesh fragment (what ``<seg>_meshes`` holds)."""

from __future__ import annotations

import struct

import numpy as np

from ...errors import (
    CorruptChunkError,
    InvalidRequestError,
)


def encode_ngmesh(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """``u32 nverts, f32[nverts*3] (x, y, z), u32[ntri*3]`` (what ``<seg>_meshes`` holds)."""
    v = np.ascontiguousarray(vertices, dtype="<f4").reshape(-1, 3)
    f = np.ascontiguousarray(faces, dtype="<u4").reshape(-1, 3)
    if len(f) and int(f.max()) >= len(v):
        raise InvalidRequestError(f"a face refers to vertex {int(f.max())}; there are {len(v)}")
    return struct.pack("<I", len(v)) + v.tobytes() + f.tobytes()


def decode_ngmesh(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Legacy Neuroglancer mesh bytes -> (vertices (n, 3) float32 x, y, z; faces (m, 3) uint32)."""
    if len(data) < 4:
        raise CorruptChunkError("a mesh fragment needs at least its 4-byte vertex count")
    (n,) = struct.unpack_from("<I", data, 0)
    rest = len(data) - 4 - 12 * n
    if rest < 0 or rest % 12:
        raise CorruptChunkError(f"a mesh fragment of {n} vertices cannot be {len(data)} bytes")
    v = np.frombuffer(data, "<f4", 3 * n, 4).reshape(n, 3).copy()
    f = np.frombuffer(data, "<u4", rest // 4, 4 + 12 * n).reshape(-1, 3).copy()
    return v, f
