"""Count the chunks the reads of file-backed Remotes touch (the block-read audits' counter)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pytest

from voxgate.geometry import Box, chunk_boxes
from voxgate.remotes.n5 import N5Remote
from voxgate.remotes.precomputed.remote import PrecomputedRemote
from voxgate.remotes.zarr import ZarrRemote

R = TypeVar("R")


class ChunkReads:
    """The chunks each ``read`` of a zarr, precomputed or N5 Remote touches (per the scale's
    chunk grid), per scale in ``by_scale`` and in all in ``n``: of every such Remote, or of
    the one at ``url`` only; counted while ``on`` (blocks run on threads: under a lock)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, url: str | None = None, *,
                 on: bool = False) -> None:
        self.url, self.on = url, on
        self.by_scale: Counter[int] = Counter()
        self.lock = threading.Lock()
        for cls in (ZarrRemote, PrecomputedRemote, N5Remote):
            monkeypatch.setattr(cls, "read", self._wrap(cls.read))

    @property
    def n(self) -> int:
        return sum(self.by_scale.values())

    def reset(self) -> None:
        with self.lock:
            self.by_scale.clear()

    def count(self, run: Callable[[], R]) -> tuple[R, int]:
        """``run()``'s result and the chunks it read (counting only meanwhile)."""
        self.reset()
        self.on = True
        try:
            return run(), self.n
        finally:
            self.on = False

    def _wrap(self, real: Any) -> Any:
        def read(remote: Any, box: Box, scale: int = 0) -> np.ndarray:
            if self.on and (self.url is None or remote.url == self.url):
                sc = remote.meta.scale(scale)
                k = sum(1 for _ in chunk_boxes(box, sc.chunks, sc.bounds))
                with self.lock:
                    self.by_scale[scale] += k
            return real(remote, box, scale)
        return read
