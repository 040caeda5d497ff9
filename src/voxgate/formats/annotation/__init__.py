"""Neuroglancer precomputed annotation layers (``neuroglancer_annotations_v1``): points,
lines, axis-aligned boxes and ellipsoids with typed properties, relationship indexes and a
multi-level spatial index, sharded or not, written from tables streamed chunk by chunk."""

from __future__ import annotations

from .encoding import ANNOTATION_INFO_TYPE, compressed_morton_code
from .reader import read_annotations, read_related
from .writer import write_annotations

__all__ = [
    "ANNOTATION_INFO_TYPE",
    "compressed_morton_code",
    "read_annotations",
    "read_related",
    "write_annotations",
]
