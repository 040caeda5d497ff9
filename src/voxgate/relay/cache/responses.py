"""Encoded responses kept for repeated requests: cutout bodies (blosc, npygz) and precomputed
chunk bodies, by the response's ETag, in an LRU bounded by bytes (a share of the memory
tier's budget), per process.

The key is the ETag (:meth:`voxgate.relay.state.Relay.etag`: the channel's cache tag, its
write generation, the metadata's digest and the request's normalized region, scale and
encoding) behind the CachedRemote's identity prefix (which holds the channel's tag, so a
channel's entries are dropped with its cells, and the fingerprint of a forwarded token, so one
client's response is never another's).  A write through any relay sharing the generations
moves the generation, so the ETag of every response it may change is a new key and what was
stored under the old one is never found again; it ages out of the LRU.

The one rule a caller keeps: the generation in the key is taken *before* the data is read.
A read racing a write then stores its (possibly old) bytes under the generation from before
the write's last bump, which no read that begins after the write's acknowledgement asks for.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["RESPONSE_OVERHEAD", "RESPONSE_SHARE", "ResponseCache"]

#: the share of the memory tier's budget that holds encoded responses (the cells get the rest)
RESPONSE_SHARE = 0.25
#: what one kept response costs in memory beside its body's and its key's characters: the
#: bytes and str object headers, the (body, media type) tuple, the OrderedDict's node and its
#: table slots.  Measured with tracemalloc (CPython 3.11, 64-bit): 229-238 bytes an entry at
#: 100 to 44,000 entries; rounded up for the tables' slack after churn.  Charged for every
#: entry, so many tiny bodies (a 24-byte one-voxel cutout, a tiny precomputed chunk) stay
#: within the share in real memory: charged by their bodies alone, 43,000 of them fitted in a
#: 1 MiB share and held 13.5 MiB (tests/relay/test_bounded_tables_audit.py)
RESPONSE_OVERHEAD = 320


class ResponseCache:
    """An LRU of encoded bodies (bytes and their media type) bounded by the memory they take:
    each entry is charged its body, its key and ``overhead`` (:data:`RESPONSE_OVERHEAD` in the
    relay's :class:`~.tiers.TieredCache`; 0, bodies only, by default)."""

    def __init__(self, capacity: int, overhead: int = 0) -> None:
        self.capacity = max(0, int(capacity))
        #: what an entry costs beside its body and key (see :data:`RESPONSE_OVERHEAD`)
        self.overhead = max(0, int(overhead))
        #: one body may take at most this much (a huge cutout is not worth evicting all else)
        self.largest = self.capacity // 4
        #: the bodies' bytes, and what the entries are charged in all (held to the capacity)
        self.used = 0
        self.charged = 0
        self._items: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[bytes, str] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, body: bytes, media_type: str) -> bool:
        """Keep ``body`` under ``key``; return whether it was kept (not when too large)."""
        if not isinstance(body, bytes):
            return False
        if len(body) > self.largest:
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._count(key, old[0], -1)
            self._items[key] = (body, media_type)
            self._count(key, body, 1)
            while self.charged > self.capacity and self._items:
                k, (gone, _) = self._items.popitem(last=False)
                self._count(k, gone, -1)
        return True

    def _count(self, key: str, body: bytes, sign: int) -> None:
        # (under self._lock) an entry in (1) or out (-1): charged its body, plus (with an
        # overhead) its key and objects
        self.used += sign * len(body)
        self.charged += sign * (len(body) + (len(key) + self.overhead if self.overhead else 0))

    def drop_prefix(self, prefix: str) -> int:
        """Drop every entry whose key starts with ``prefix``; return how many."""
        with self._lock:
            gone = [k for k in self._items if k.startswith(prefix)]
            for k in gone:
                self._count(k, self._items.pop(k)[0], -1)
        return len(gone)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = self.charged = 0

    def __len__(self) -> int:
        return len(self._items)
