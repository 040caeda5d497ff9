"""The cache of one worker of ``voxgate serve --workers N``: its own memory tier in front of the
disk tier every worker shares (docs/relay.md, "Several worker processes").

One worker's reads must never leave a cell in the shared disk tier that is older than a write
another worker acknowledged.  A worker's own writes keep its own tiers right (the cache drops
the cells a write touches before the upstream write, and fetches in flight for them store
nothing), and a worker that sees a generation it did not make drops its cells and marks its
fetches in flight; what is left is a fetch that read the old data in worker B while worker A
wrote, and that lands in the shared tier after A dropped the cell.  So a cell goes into the
disk tier only

- while no write to its channel is in progress in any process (writers hold the channel's
  write lock, shared among them, from their first generation bump to their last;
  :meth:`~voxgate.relay.generations.Generations.store_lock` takes it exclusively without
  waiting, and a write cannot begin until the store is done), and
- when the channel's generation is still the one this worker last saw before it read (its
  fetches began after that look; had a write ended since, the generation would have moved).

Otherwise the cell goes into this worker's memory tier only, which its own next look at the
generation clears if need be.  Every cell in the disk tier is therefore at least as new as
every write acknowledged before it was stored, and the writers' own drops remove the ones a
later write makes old.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .cache import TieredCache
from .cache.tiers import _TAG_END
from .generations import Generations

__all__ = ["SharedDiskCache"]


class SharedDiskCache(TieredCache):
    """A :class:`TieredCache` whose disk tier other processes share (module docstring)."""

    def __init__(self, memory_bytes: int, disk_path: Path | None, disk_bytes: int,
                 generations: Generations, may_store: Callable[[str], bool]) -> None:
        super().__init__(memory_bytes, disk_path, disk_bytes)
        self._generations = generations
        #: whether the channel of a tag is at the generation this worker last saw
        self._may_store = may_store
        #: cells kept in memory only, since a write was in progress or had ended unseen
        self.not_shared = 0

    def put(self, key: str, arr: np.ndarray) -> None:
        if self.disk is None or _TAG_END not in key:
            super().put(key, arr)
            return
        tag = key.split(_TAG_END, 1)[0]
        with self._generations.store_lock(tag) as free:
            if free and self._may_store(tag):
                super().put(key, arr)
                return
        self.not_shared += 1
        self.memory.put(key, arr)
