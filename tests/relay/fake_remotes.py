"""Remotes for relay tests, importable in a relay subprocess as ``tests.relay.fake_remotes``.

``TokenRemote`` (scheme ``tokenfake://``) stands in for an upstream that needs per-user
credentials: it takes a ``token`` option and every user sees different data, so a cache that
mixed users up would show it.  Reads without a token are refused, as a private bossDB refuses
anonymous reads.
"""

from __future__ import annotations

import threading
import zlib
from typing import Any, ClassVar

import numpy as np

from voxgate.errors import AuthenticationError
from voxgate.geometry import Box
from voxgate.meta import VolumeMeta
from voxgate.remotes.base import Remote, check_options

__all__ = ["TOKEN_SHAPE", "TokenRemote", "token_id"]

TOKEN_SHAPE = (16, 64, 96)


def token_id(token: str) -> int:
    """The segment id that fills ``token``'s view of the volume (above float precision)."""
    return 2**53 + zlib.crc32(token.encode()) % 1000 + 1


class TokenRemote(Remote):
    scheme = "tokenfake"
    open_options = ("token", "layers")
    #: every (location, token, options) opened in this process, in order
    opened: ClassVar[list[tuple[str, str | None, dict[str, Any]]]] = []
    reads: ClassVar[list[tuple[str | None, Box]]] = []
    _lock = threading.Lock()

    def __init__(self, location: str, mode: str, token: str | None,
                 options: dict[str, Any]) -> None:
        self.location = location
        self.mode = mode
        self.token = token
        self.options = options
        self.url = f"tokenfake://{location}"
        self.meta = VolumeMeta.build(shape=TOKEN_SHAPE, dtype="uint64", chunks=(8, 32, 32),
                                     voxel_size=(40, 8, 8), kind="segmentation")

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> TokenRemote:
        check_options("tokenfake://", options, cls.open_options)
        token = options.pop("token", None)
        with cls._lock:
            cls.opened.append((location, token, dict(options)))
        return cls(location, mode, token, options)

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        if self.token is None:
            raise AuthenticationError("tokenfake:// needs a token to read")
        with self._lock:
            self.reads.append((self.token, box))
        return np.full(tuple(box.shape), token_id(self.token), dtype=np.uint64)
