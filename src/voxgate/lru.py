"""The one step of every bounded table of voxgate: make an entry the newest, drop the oldest.

Module-level caches, a relay's per-token views and the like must stay bounded in a process that
runs for days or loops over ever more volumes; each keeps an ``OrderedDict`` (least recently
used first) and calls :func:`make_newest` after storing or using an entry.  Locking is the
caller's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

__all__ = ["make_newest"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def make_newest(table: OrderedDict[K, V], key: K, *, limit: int | None = None,
                weight: Callable[[V], int] | None = None, max_weight: int = 0) -> list[V]:
    """Move ``table[key]`` to the newest end, then drop the oldest entries while there are
    more than ``limit`` of them or (with ``weight``) their weights sum to more than
    ``max_weight``; the newest entry is never dropped for its weight.  Returns the values
    dropped, oldest first (for the caller to close or retire outside its lock)."""
    table.move_to_end(key)
    dropped: list[V] = []
    held = sum(weight(v) for v in table.values()) if weight is not None else 0
    while table and ((limit is not None and len(table) > limit)
                     or (weight is not None and held > max_weight and len(table) > 1)):
        _, old = table.popitem(last=False)
        dropped.append(old)
        if weight is not None:
            held -= weight(old)
    return dropped
