"""Skeletons (stick figures of segments) and the files they are stored in.

:class:`Skeleton` (:mod:`.core`) holds float32 vertices in nanometres (x, y, z), uint32 edges
and optional per-vertex radius and SWC vertex types, and converts to and from SWC text, the
Neuroglancer precomputed skeleton binary and osteoid / kimimaro / CloudVolume objects.
:func:`write_skeletons` and :func:`read_skeletons` (:mod:`.precomputed`) store them in the
skeleton directory of a precomputed segmentation layer.
"""

from __future__ import annotations

from .core import DEFAULT_VERTEX_ATTRIBUTES, DIRECTORY_VERTEX_ATTRIBUTES, SKELETON_TYPE, Skeleton
from .precomputed import read_skeletons, write_skeletons

__all__ = [
    "DEFAULT_VERTEX_ATTRIBUTES",
    "DIRECTORY_VERTEX_ATTRIBUTES",
    "SKELETON_TYPE",
    "Skeleton",
    "read_skeletons",
    "write_skeletons",
]
