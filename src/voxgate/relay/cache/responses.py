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

__all__ = ["RESPONSE_SHARE", "ResponseCache"]

#: the share of the memory tier's budget that holds encoded responses (the cells get the rest)
RESPONSE_SHARE = 0.25


class ResponseCache:
    """An LRU of encoded bodies (bytes and their media type) bounded by their total bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        #: one body may take at most this much (a huge cutout is not worth evicting all else)
        self.largest = self.capacity // 4
        self.used = 0
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
        size = len(body)
        if size > self.largest or not isinstance(body, bytes):
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= len(old[0])
            self._items[key] = (body, media_type)
            self.used += size
            while self.used > self.capacity and self._items:
                _, (gone, _) = self._items.popitem(last=False)
                self.used -= len(gone)
        return True

    def drop_prefix(self, prefix: str) -> int:
        """Drop every entry whose key starts with ``prefix``; return how many."""
        with self._lock:
            gone = [k for k in self._items if k.startswith(prefix)]
            for k in gone:
                self.used -= len(self._items.pop(k)[0])
        return len(gone)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = 0

    def __len__(self) -> int:
        return len(self._items)
