"""Compatibility layers for code written against earlier libraries (``voxgate.compat.intern``)."""
