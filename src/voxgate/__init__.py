"""voxgate: one Python API over the storage systems of connectomics.

``voxgate.open(url)`` gives a lazy, numpy-like :class:`Volume` over zarr / OME-Zarr, N5, HDF5,
Neuroglancer precomputed, bossDB, DVID or in-memory data; ``voxgate.copy`` moves a volume
between any two; the Services (``mesh``, ``skeletonize``, ``downsample``,
``connected_components``, ``label_stats``, ``map_blocks``) run on data from any of them.
"""

from . import errors
from .api import create, open
from .errors import VoxgateError
from .geometry import Box, Vec, VoxelSize
from .meta import Scale, VolumeMeta
from .remotes.base import Capability, Remote, has_capability
from .services import (
    connected_components,
    downsample,
    label_stats,
    map_blocks,
    mesh,
    skeletonize,
    write_meshes,
)
from .transfer import CopyReport, copy
from .volume import Volume

__version__ = "0.1.0"

__all__ = [
    "Box",
    "Capability",
    "CopyReport",
    "Remote",
    "Scale",
    "Vec",
    "Volume",
    "VolumeMeta",
    "VoxelSize",
    "VoxgateError",
    "connected_components",
    "copy",
    "create",
    "downsample",
    "errors",
    "has_capability",
    "label_stats",
    "map_blocks",
    "mesh",
    "open",
    "skeletonize",
    "write_meshes",
]
