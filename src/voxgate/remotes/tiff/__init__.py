"""``tiff://``: multipage TIFF, BigTIFF, OME-TIFF, or a directory of 2-D TIFF slices (tifffile).

A location is either

- one TIFF file (``.tif``, ``.tiff``, ``.btf``, ``.tf8``, ``.ome.tif``): its first series, whose
  pages are the z slices (an OME-TIFF or ImageJ hyperstack may also have a channel axis; other
  axes must have length 1).  OME ``PhysicalSizeX/Y/Z`` (with their units) or ImageJ ``spacing``
  and resolution tags give the voxel size;
- a directory of 2-D TIFF files, one per z slice, in natural order (``slice2.tif`` before
  ``slice10.tif``); every slice must have the first one's shape and dtype.

Reads are lazy and bounded: only the pages a box crosses are touched, and of each page only the
strips or tiles the box crosses.  Uncompressed segments are read by their byte ranges (only the
rows needed), compressed ones decoded one at a time with tifffile's codecs.  voxgate keeps its
own table of segment offsets (read from the pages once), so no page's data is ever loaded whole.

``voxgate.create("tiff://x.tif")`` writes a tiled BigTIFF with OME-XML metadata (physical sizes in
the voxel size's unit), X/Y resolution tags in pixels per cm, and a private tag (65000, JSON)
holding what OME has no place for (kind, offset); slices carry ImageJ's calibration or resolution
tags (:mod:`.calibration`).  ``compression="zlib"`` (or "lzma"; others when imagecodecs is
installed) compresses the tiles.  Writes go tile by tile: an uncompressed tile is rewritten in
place; a compressed one is appended at the end of the file and its offset and byte count entries
then updated in place (the file is locked while doing so), so a crash leaves the old tile in
force.  A location without a TIFF suffix is created as a directory of slices (``00000.tif``, ...),
each slice rewritten whole to a temporary name and renamed.

The package by concern: :mod:`.pages` (the file layer: page segment tables, pread, voxgate's
tag, compression names, block shapes, slice files), :mod:`.ifds` (the pages of a long stack read
in bulk), :mod:`.slices` (the slices of a directory read in bulk), :mod:`.opening` (files,
pyramid levels, slice directories, OME / ImageJ voxel sizes), :mod:`.calibration` (the voxel
size in the resolution tags and ImageJ's description, written and read), :mod:`.creating`
(``create``) and :mod:`.remote` (:class:`TiffRemote`: reads and writes).
"""

from __future__ import annotations

from .pages import TIFF_SUFFIXES, natural_key
from .pages import VOXGATE_TAG as VOXGATE_TAG
from .remote import TiffRemote

__all__ = ["TIFF_SUFFIXES", "TiffRemote", "natural_key"]
