"""voxgate: one Python API over the storage systems of connectomics.

``voxgate.open(url)`` gives a lazy, numpy-like :class:`Volume` over zarr / OME-Zarr, N5, HDF5,
Neuroglancer precomputed, bossDB, DVID or in-memory data; ``voxgate.copy`` moves a volume
between any two; the Services (``mesh``, ``skeletonize``, ``downsample``,
``connected_components``, ``label_stats``, ``map_blocks``) run on data from any of them.

The names below are imported on first use (a module-level ``__getattr__``): ``import voxgate``
and the ``voxgate`` command start without loading tensorstore, the HTTP clients or the
Services' kernels; ``from voxgate import X`` works for every X in ``__all__``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# the Services come from their defining modules: "from .services import mesh" (also a
# submodule's name) made mypy report no-redef here whenever a module imported by these did
# "from . import <module>"
if TYPE_CHECKING:
    from . import errors
    from .api import create, open
    from .errors import VoxgateError
    from .formats.annotation import read_annotations, write_annotations
    from .geometry import Box, Vec, VoxelSize
    from .meta import Scale, VolumeMeta
    from .remotes.base import Capability, Remote, has_capability
    from .services.connected_components import connected_components
    from .services.downsample import downsample
    from .services.label_stats import label_stats
    from .services.map_blocks import map_blocks
    from .services.mesh import mesh, write_meshes
    from .services.predict import predict
    from .services.proofread import history, merge, relabel, split, undo
    from .services.skeletonize import skeletonize
    from .services.synapses import detect_synapses
    from .transfer import CopyReport, copy
    from .viewer import view
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
    "detect_synapses",
    "downsample",
    "errors",
    "has_capability",
    "history",
    "label_stats",
    "map_blocks",
    "merge",
    "mesh",
    "open",
    "predict",
    "read_annotations",
    "relabel",
    "skeletonize",
    "split",
    "undo",
    "view",
    "write_annotations",
    "write_meshes",
]

#: where each public name lives (the module is imported when the name is first asked for)
_LAZY = {
    "Box": ".geometry", "Vec": ".geometry", "VoxelSize": ".geometry",
    "Capability": ".remotes.base", "Remote": ".remotes.base", "has_capability": ".remotes.base",
    "CopyReport": ".transfer", "copy": ".transfer",
    "Scale": ".meta", "VolumeMeta": ".meta",
    "Volume": ".volume",
    "VoxgateError": ".errors",
    "create": ".api", "open": ".api",
    "connected_components": ".services", "downsample": ".services", "label_stats": ".services",
    "map_blocks": ".services", "mesh": ".services", "skeletonize": ".services",
    "write_meshes": ".services", "predict": ".services",
    "detect_synapses": ".services",
    "merge": ".services", "split": ".services", "relabel": ".services",
    "history": ".services", "undo": ".services",
    "view": ".viewer",
    "read_annotations": ".formats.annotation", "write_annotations": ".formats.annotation",
}


def __getattr__(name: str) -> Any:
    if name == "errors":
        value: Any = importlib.import_module(".errors", __name__)
    else:
        where = _LAZY.get(name)
        if where is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
