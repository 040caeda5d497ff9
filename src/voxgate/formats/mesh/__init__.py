"""Triangle meshes and the files they are stored in.

:class:`Mesh` holds float32 vertices in nanometres (x, y, z, the order every mesh format uses)
and uint32 triangles, and converts to and from:

- Wavefront OBJ (text) and binary little-endian PLY;
- the Neuroglancer precomputed *legacy* fragment (``u32 n; f32 xyz[n]; u32 faces[]``), which
  is also DVID's ``.ngmesh`` keyvalue value;
- Neuroglancer precomputed mesh directories (:func:`write_meshes`, :func:`read_meshes`), in
  the legacy format (a ``<id>:0`` JSON manifest naming fragment files) and the
  multi-resolution format (``neuroglancer_multilod_draco``: an ``<id>.index`` octree
  manifest and an ``<id>`` file of Draco-encoded fragments).

Everything that decodes stored bytes checks lengths and indices before following them: a
damaged file raises :class:`CorruptChunkError` naming it.
"""

from __future__ import annotations

from .core import Mesh, concatenate
from .multires import decode_multires as decode_multires
from .multires import encode_multires as encode_multires
from .precomputed import LEGACY_MESH_TYPE, MULTIRES_MESH_TYPE, read_meshes, write_meshes

__all__ = [
    "LEGACY_MESH_TYPE",
    "MULTIRES_MESH_TYPE",
    "Mesh",
    "concatenate",
    "read_meshes",
    "write_meshes",
]
