"""voxgate: one Python API over the storage systems of connectomics.

``voxgate.open(url)`` gives a lazy, numpy-like :class:`Volume` over zarr / OME-Zarr, N5, HDF5,
Neuroglancer precomputed or in-memory data; ``voxgate.copy`` moves a volume between any two.
"""

from . import errors
from .api import create, open
from .errors import VoxgateError
from .geometry import Box, Vec, VoxelSize
from .meta import Scale, VolumeMeta
from .remotes.base import Capability, Remote, has_capability
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
    "copy",
    "create",
    "errors",
    "has_capability",
    "open",
]
