"""Voxgate URLs as a format scheme and a storage location.

``"zarr:///a/b"`` names the format (zarr) and the location (``/a/b``); a bare path or a
storage URL (``file://``, ``gs://``, ``s3://``, ``http(s)://``) names a location only.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import InvalidRequestError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["STORAGE_SCHEMES", "split_url", "state_dir"]

#: storage locations (not formats) a URL may start with after the format scheme
STORAGE_SCHEMES = ("file", "gs", "s3", "http", "https")


def split_url(url: str | os.PathLike[str]) -> tuple[str | None, str]:
    """``"zarr:///a/b"`` -> ``("zarr", "/a/b")``; a bare path or storage URL -> ``(None, url)``."""
    if not isinstance(url, (str, os.PathLike)):
        raise InvalidRequestError(f"a volume URL must be a string or path, got {url!r}")
    url = os.fspath(url)
    if not url:
        raise InvalidRequestError("empty URL")
    head, sep, rest = url.partition("://")
    if not sep:
        return None, url
    scheme = head.lower()
    if scheme in STORAGE_SCHEMES:
        return None, url
    if not rest:
        raise InvalidRequestError(f"{url!r} names no location after {scheme}://")
    return scheme, rest


def state_dir(name: str) -> Path:
    """This machine's folder for voxgate's records of ``name`` (``"transfers"``: copy journals,
    ``"map_blocks"``: in-place map_blocks journals): ``$VOXGATE_STATE_DIR/name``, else
    ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/voxgate/name``."""
    from pathlib import Path  # (only journals need it, not every reader)

    base = os.environ.get("VOXGATE_STATE_DIR")
    if base:
        return Path(base) / name
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "voxgate" / name
