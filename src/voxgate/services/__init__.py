"""Services: operations that run on data from any Remote (or a numpy array).

Each takes ``prefer="auto" | "server" | "local"``: the store's own operation where it offers
one, the local kernel otherwise, with the same call and the same result; the result records
which path ran.
"""

from .connected_components import connected_components
from .downsample import downsample
from .label_stats import label_stats
from .map_blocks import map_blocks
from .mesh import MeshResult, mesh, write_meshes
from .predict import predict
from .proofread import EditResult, history, merge, relabel, split, undo
from .skeletonize import SkeletonResult, skeletonize
from .synapses import detect_synapses

__all__ = [
    "EditResult",
    "MeshResult",
    "SkeletonResult",
    "connected_components",
    "detect_synapses",
    "downsample",
    "history",
    "label_stats",
    "map_blocks",
    "merge",
    "mesh",
    "predict",
    "relabel",
    "skeletonize",
    "split",
    "undo",
    "write_meshes",
]
