"""``precomputed://``: Neuroglancer precomputed image and segmentation layers.

Read and written through tensorstore's ``neuroglancer_precomputed`` driver (several scales;
raw, jpeg, png and compressed_segmentation chunks; unsharded and
``neuroglancer_uint64_sharded_v1`` sharded scales; local, gs://, s3:// and read-only
http(s):// storage).  Precomputed's native order is x, y, z, channel in Fortran order, which
is the same memory as voxgate's C-order (c,) z, y, x: reads pay no transpose.

Two kinds of chunk tensorstore cannot read are decoded by voxgate's own codecs
(:mod:`voxgate.formats.precomputed_chunks`):

- CloudVolume's local-disk convention of storing chunks as ``<name>.gz`` (also ``.br``,
  ``.zstd``, ``.xz``, ``.bz2``).  A local scale directory holding any such file is read and
  written chunk by chunk here; writes keep the convention (gzip for raw and
  compressed_segmentation, plain for jpeg) and remove every other variant of the chunk, since
  CloudFiles reads whichever variant it tries first.
- gzip bodies on object storage that came without a Content-Encoding: when tensorstore finds
  a chunk of an unsharded remote scale undecodable, the read is retried with gzip sniffing.

A layer whose info names an encoding tensorstore refuses (e.g. compresso) makes tensorstore
refuse every scale of it, so such layers are read with voxgate's codecs throughout.

The package by concern: :mod:`.info` (the info entries written for a VolumeMeta, and their
checks), :mod:`.sharding` (sharding specs, shard shapes, chunk presence in shards),
:mod:`.chunks` (chunks voxgate reads and writes with its own codecs) and :mod:`.remote` (the
Remote).
"""

from __future__ import annotations

from .remote import PrecomputedRemote

__all__ = ["PrecomputedRemote"]
