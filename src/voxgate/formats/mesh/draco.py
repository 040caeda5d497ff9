"""Draco encoding and decoding of single mesh fragments (DracoPy, imported when used)."""

from __future__ import annotations

import numpy as np

from ...errors import CorruptChunkError, VoxgateError

#: Draco compression effort for multi-resolution fragments (0 fastest .. 10 smallest)
_DRACO_LEVEL = 7


def _decode_draco(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    import DracoPy

    try:
        decoded = DracoPy.decode(data)
    except Exception as exc:  # DracoPy raises ValueError, FileTypeException, RuntimeError
        raise CorruptChunkError(f"{name} is not a valid Draco mesh: {exc}", chunk=name) from None
    faces = getattr(decoded, "faces", None)
    if faces is None:
        raise CorruptChunkError(f"{name} is a Draco point cloud, not a mesh", chunk=name)
    try:
        points = np.asarray(decoded.points, dtype=np.float64)
        tris = np.asarray(faces, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise CorruptChunkError(f"{name} holds unreadable Draco attributes: {exc}",
                                chunk=name) from None
    if points.size == 0:
        points = points.reshape(0, 3)
    if points.ndim != 2 or points.shape[1] != 3:
        raise CorruptChunkError(
            f"{name} holds positions of shape {points.shape}; a mesh needs (n, 3) x, y, z",
            chunk=name)
    if tris.size % 3:
        raise CorruptChunkError(
            f"{name} holds {tris.size} face indices, not whole triangles", chunk=name)
    return points, tris.reshape(-1, 3)


def _encode_fragment(q: np.ndarray, faces: np.ndarray, name: str) -> bytes:
    import DracoPy

    try:
        # quantization off: the integer positions are stored as they are (as int32, the
        # integer type Neuroglancer's decoder accepts)
        return bytes(DracoPy.encode(q.astype(np.int32), faces.astype(np.uint32),
                                    quantization_bits=0, compression_level=_DRACO_LEVEL))
    except DracoPy.EncodingFailedException:
        # every triangle collapsed when quantized: nothing visible to store
        return b""
    except Exception as exc:
        raise VoxgateError(f"Draco could not encode {name}: {exc}") from exc
