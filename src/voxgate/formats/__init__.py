"""Byte-level codecs voxgate owns (chunk, mesh and skeleton encodings)."""
