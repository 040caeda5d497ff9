"""Transport compression of stored files: CloudFiles' compressed-suffix convention.

On local disks CloudVolume stores files as ``<name>.gz`` (also ``.br``, ``.zstd``, ``.xz``,
``.bz2``), and on object storage a gzip body may come without a Content-Encoding.
``SUFFIXES`` lists the suffixes in the order readers try them, ``GZIP_MAGIC`` the bytes a gzip
body starts with, and ``decompress`` removes one suffix's compression.
"""

from __future__ import annotations

import gzip

from ..errors import CapabilityNotSupportedError, CorruptChunkError

__all__ = ["GZIP_MAGIC", "SUFFIXES", "decompress"]

#: suffixes CloudFiles gives compressed files on local disks, in the order readers try them
SUFFIXES = (".gz", ".br", ".zstd", ".xz", ".bz2")
#: the first bytes of a gzip body
GZIP_MAGIC = b"\x1f\x8b"


def decompress(data: bytes, suffix: str, name: str) -> bytes:
    """``data`` with the compression that ``suffix`` (e.g. ``".gz"``) names removed; ``name``
    names the file in errors.  An unknown suffix returns ``data`` as it is."""
    try:
        if suffix == ".gz":
            return gzip.decompress(data)
        if suffix == ".br":
            import brotli

            return bytes(brotli.decompress(data))
        if suffix == ".zstd":
            import zstandard

            return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
        if suffix == ".xz":
            import lzma

            return lzma.decompress(data)
        if suffix == ".bz2":
            import bz2

            return bz2.decompress(data)
    except ImportError as exc:
        raise CapabilityNotSupportedError(
            f"{name} is {suffix}-compressed; install {exc.name} to read it"
        ) from None
    except Exception as exc:  # gzip, lzma, bz2, brotli and zstandard errors share no base
        raise CorruptChunkError(
            f"chunk {name} does not decompress ({suffix}): {exc}", chunk=name
        ) from None
    return data
