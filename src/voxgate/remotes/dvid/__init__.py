"""``dvid://``: DVID, the versioned connectomics store (repos, nodes, branches).

```
dvid://127.0.0.1:8000/3f8a/segmentation              http, a unique UUID prefix
dvid://https://dvid.example.org/3f8a:proofread/grayscale   https, the leaf of a branch
dvid://http://host:8000/3f8a2b.../segmentation       any server URL, full UUID
```

The node (``UUID``, a unique prefix, ``prefix:branch`` for the branch's current leaf, or
``prefix:branch~N`` for its Nth ancestor) is resolved once when the volume opens and pinned:
``spec()`` names the full UUID, so every worker reads the same version.

Voxel types: ``uint8blk``, ``uint16blk``, ``uint32blk``, ``uint64blk``, ``float32blk`` (images)
and ``labelmap`` / ``labelarray`` (uint64 segmentations; ``labelblk`` reads).  Reads of any
box are split into block-aligned requests run concurrently over one pooled client and decoded
straight into one output array; labels travel lz4-compressed by default (``compression=``
``"lz4"``, ``"gzip"`` or ``"none"``).  Writes of any box work: DVID only accepts
block-aligned POSTs, so whole blocks are written directly and partly covered edge blocks are
read (as supervoxels), patched and written back.  labelmap scales are the Volume's scales
(``?scale=k``, each halving every axis); an image volume's scales are sibling instances
``<name>_1``, ``<name>_2``, ... (made by ``voxgate.create`` with ``num_scales > 1``).
Reads of a labelmap return body ids (the supervoxel -> body mapping applied); open with
``supervoxels=True`` to read the stored supervoxel ids.  Writes always store supervoxels.

:class:`DVIDRepo` handles the versioning (create, commit, branch, new version, log, the DAG),
keyvalue instances (:class:`DVIDKeyValue`) and label queries (:class:`DVIDLabels`).

The package by concern: :mod:`.client` (server URLs, the pooled clients, DVID's errors),
:mod:`.repo` (versioning), :mod:`.keyvalue`, :mod:`.labels`, :mod:`.ngmesh` (legacy mesh
fragments) and :mod:`.remote` (the Remote: volumes, meshes, skeletons).
"""

from __future__ import annotations

from .client import LabelNotFoundError
from .client import client_for as client_for
from .client import normalize_server as normalize_server
from .client import parse_location as parse_location
from .keyvalue import DVIDKeyValue
from .labels import DVIDLabels, SparsevolSize
from .ngmesh import decode_ngmesh, encode_ngmesh
from .remote import IMAGE_TYPES as IMAGE_TYPES
from .remote import LABEL_TYPES as LABEL_TYPES
from .remote import REQUEST_BYTES as REQUEST_BYTES
from .remote import UNBOUNDED as UNBOUNDED
from .remote import DVIDRemote
from .repo import DVIDNode, DVIDRepo

__all__ = [
    "DVIDKeyValue",
    "DVIDLabels",
    "DVIDNode",
    "DVIDRemote",
    "DVIDRepo",
    "LabelNotFoundError",
    "SparsevolSize",
    "decode_ngmesh",
    "encode_ngmesh",
]
