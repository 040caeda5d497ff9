"""``hdf5://``: datasets and multiscale groups in local HDF5 files, through h5py.

URL: ``hdf5:///path/file.h5#/group/dataset`` (or a bare ``/path/file.h5#/group/dataset``; the
registry recognises ``.h5``, ``.hdf5`` and ``.hdf``).  The fragment names an HDF5 object:

- a 3-D ``(z, y, x)`` or 4-D ``(c, z, y, x)`` dataset: one scale;
- a group holding datasets ``s0``, ``s1``, ...: one scale each (the N5 / n5-viewer layout).

Without a fragment, ``/volume`` is used when it exists (it is what ``create`` makes), else the
file's only volume (3-D/4-D dataset or multiscale group); a file with several asks for one.

Metadata lives in HDF5 attributes.  Every per-axis list follows the dataset's own axis order,
z, y, x (as N5's follow x, y, z): ``voxel_size`` + ``unit``, ``voxel_offset`` (voxels),
``kind``, and for other tools ``resolution`` and ``offset`` (z, y, x in the unit: the CREMI /
gunpowder convention).  Multiscale groups carry ``multiScale``, ``scales`` (per-scale factors)
and ``kind``, and each ``sN`` its own ``downsamplingFactors`` and voxel attributes.  Files
without voxgate's attributes are read with ``resolution`` or ``element_size_um`` (ilastik,
Fiji) as the voxel size when present, else 1 nm; funlib.persistence's per-axis ``units`` list
is read as the unit when there is no ``unit``.  A dataset whose axis names (``axes``,
funlib.persistence's ``axis_names``, ilastik's ``axistags`` JSON or HDF5 dimension-scale
labels) give another order than (z, y, x) or (c, z, y, x), such as ilastik's channel-last
(z, y, x, c), is refused rather than read transposed.  A physical ``offset`` that is not a whole
number of voxels is taken to the nearest whole voxel with a VoxgateWarning.  BigDataViewer's
``tT/sS/L/cells`` datasets, uint16 voxels stored as HDF5 int16, are read and written as uint16,
level L's voxel size being its setup's ``sS/resolutions`` row (x, y, z) in voxels of level 0.
A file written through saalfeldlab's N5HDF5Writer (root attribute ``n5``) keeps N5's x, y, z
attributes (``downsamplingFactors``, ``scales``, ``resolution``, ``offset``, ``axes``, and
``pixelResolution`` in its ``N5_JSON_ROOT`` JSON): its volumes without voxgate's own
``voxel_size`` are read as n5:// reads those attributes, reversed into z, y, x.

Threads: HDF5 serialises every call in a process anyway, and h5py objects must not be used
from two threads at once, so each file has one h5py handle shared by every Remote on it and
one lock around every use; a forked child of a process writing a file is refused that file.
Processes: HDF5 lets a file be written only while no other process has it open; a Remote
opened with ``hold_open=False`` (the relay's, with several worker processes) keeps no handle
between reads and writes, and opens the file for each under an ``fcntl`` lock such processes
share (see :func:`.files._using`).
Durability: HDF5 cannot replace a chunk atomically; see docs/remotes/hdf5.md.

The package by concern: :mod:`.files` (locations, the one shared h5py handle per file),
:mod:`.layout` (what a file holds: volumes and the attributes that describe them),
:mod:`.create` (new datasets and groups and their attributes) and :mod:`.remote` (the Remote).
"""

from __future__ import annotations

from .layout import DEFAULT_DATASET as DEFAULT_DATASET
from .remote import HDF5Remote

__all__ = ["HDF5Remote"]
