"""The lazy, numpy-like Volume.

A Volume is a Remote, a scale and a view (per axis: start, stop, step, kept or dropped).
Indexing composes views without I/O; ``read()``, ``np.asarray(vol)`` and writes do I/O.

Two coordinate systems, never mixed:

- indexing (``vol[...]``) is numpy's: 0 is the first voxel of the view, negative indices count
  from the end;
- :class:`Box` arguments (``vol.read(box)``, ``vol.write(array, box)``, ``vol.bounds``) are dataset
  voxel coordinates at the volume's scale, which include the volume's ``offset`` (a precomputed
  ``voxel_offset``, a bossDB frame start).

Bounds modes: "error" refuses any index or box outside the volume; "clip" is numpy's slicing;
"fill" reads voxels outside the volume as the fill value (writes outside are still refused).
With "fill", numpy's rule for negative indices is applied first: ``-k`` means ``n - k`` on an
axis of length ``n``, so ``vol[-3:]`` is the last three voxels, never voxels before the first.
Only a position still outside ``[0, n)`` after that rule reads as fill: on an axis of length
10, ``vol[-12:3]`` covers -2..2 (two fill voxels, then voxels 0, 1, 2) and ``vol[8:12]``
covers voxels 8, 9 and two fill voxels.  To name a region before the first voxel without that
rule, read a :class:`Box` (dataset coordinates, never counted from the end):
``vol.read(Box((-2, 0, 0), (3, 4, 4)))``.

Indices are integers, slices with positive steps and ``...``; booleans (``vol[True]``, masks)
are refused with an IndexingError rather than taken as 0 or 1.  A view with every axis dropped
(``vol[1, 2, 3]``) reads as a 0-d array.
"""

from .core import Bounds, Volume

__all__ = ["Bounds", "Volume"]
