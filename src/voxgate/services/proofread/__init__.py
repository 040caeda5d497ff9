"""Proofreading: merge, split and relabel segments of any writable segmentation, with a
history beside the volume and undo.

Every edit reads and rewrites only the blocks (the store's write grid) that hold the ids it
changes: their boxes come from DVID's label index on a ``dvid://`` labelmap, else from
:func:`~voxgate.label_stats` (computed once per volume and process, then kept up to date by
the edits made here).  Before a block is written its old voxels are saved in the volume's
history (see :mod:`..proofread_history`), so :func:`undo` restores exactly what an edit
changed, also after an edit that failed half-way (which raises ``PartialWriteError`` naming
the blocks written).

A volume with coarser scales (a precomputed / OME-Zarr / N5 pyramid, DVID downres levels
written by the client) has the rewritten blocks downsampled again into each of them, as
``voxgate.downsample`` computes them, their old voxels saved for undo too (:mod:`.coarser`); a
store whose server computes its coarser scales (bossDB) keeps them stale until
``voxgate.downsample(seg)``, and the edit's provenance says ``coarser_scales="stale"``.

New ids come from the store's id reservation where it has one (``Capability.RESERVE_IDS``:
bossDB ``reserve``, DVID ``nextlabel``), otherwise from the largest id in the volume + 1.

On a ``dvid://`` labelmap opened read-write, merges and splits run on DVID itself
(``Capability.SERVER_PROOFREAD``: ``POST merge``, ``POST split/<label>`` with the piece as a
sparse volume, ``POST renumber`` where a split piece is to get a chosen id); their undo
restores the supervoxel -> body mapping (``POST mappings``).

The package by concern: :mod:`.core` (:class:`EditResult`, the checks, where ids are, the
block-wise edit), :mod:`.merging` (relabel, merge), :mod:`.splitting` (split and its kernel),
:mod:`.dvid` (DVID's server path), :mod:`.coarser` (the coarser scales), :mod:`.remeshing`
(``remesh=``) and :mod:`.undoing` (history, undo).
"""

from __future__ import annotations

from .core import _STATS as _STATS
from .core import EXACT_FLOAT_IDS as EXACT_FLOAT_IDS
from .core import EditResult
from .dvid import DVID_LOG_PREFIX as DVID_LOG_PREFIX
from .merging import merge, relabel
from .remeshing import REMESH_CHOICES as REMESH_CHOICES
from .splitting import split, split_kernel
from .undoing import history, undo

__all__ = ["EditResult", "history", "merge", "relabel", "split", "split_kernel", "undo"]
