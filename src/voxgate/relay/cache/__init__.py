"""The relay's chunk cache: memory (LRU by bytes) then disk (size-capped LRU), in front of a Remote.

:class:`CachedRemote` is itself a Remote.  It cuts every read on a grid aligned to the upstream's
chunks (edge cells clipped to the dataset), serves the cells it holds and fetches the rest from the
upstream, concurrently, with one upstream fetch per missing cell however many requests want it at
once.  While the memory tier is too small for what is read (it evicts mostly cells nobody read, and
no disk tier keeps them), a read that misses cells reads its box alone from the upstream and caches
nothing, except one read in eight, which still fetches whole cells (:meth:`TieredCache.skim`).
Writes go through to the upstream before they return; the cells they touch are dropped from both
tiers *before* the upstream write, so a relay killed half way never serves stale data after a
restart, and the cells the write covers completely are cached again afterwards.  The cells of
every coarser scale over the written box are dropped too (never cached from the write): an
upstream may derive them from what was written, as a DVID labelmap rebuilds its coarser scales
on every write, and the next read takes them from the upstream.  Nothing written
can be lost to eviction: the upstream has it before the client is told it was stored.

Read-your-writes: every read that begins after a write was acknowledged sees it.  Before the
write returns (still holding its cells' locks) it *detaches* every upstream fetch in flight for
its cells: a detached fetch still answers the reads that joined it (they began before the
acknowledgment), but no later read can join it, and it caches nothing (it may hold the old
data).  The fetches in flight are the cache's, not one CachedRemote's: two CachedRemotes with
the same keys (two channels of one upstream read with the same credential) hold the same cells,
so a write through either detaches the other's fetches; a write also drops, and detaches the
fetches of, the cells of the upstream's other views (``siblings``: other credentials, other
channels); of a view whose metadata places the voxels elsewhere (another offset or other
scales, chosen by its channel's options) it drops every cell, in memory, and every cell of the
channel's tag on disk, which indexes entries by tag only.  A fetch removes only its own
in-flight entry, never a newer one.  A disk hit is promoted to memory only when no cell was
dropped meanwhile.

Every entry carries a tag (the channel's, which includes its incarnation), so a deleted
channel's cells are dropped from both tiers at once without scanning the disk tier.

Values never pass through pickle: cells are stored as a small binary header, blosc-packed
bytes and a CRC-32 of both, so a damaged disk entry (a flipped bit, a torn or truncated file)

The package by concern: :mod:`.tiers` (the memory and disk tiers, their metrics and the
pickle-free cell encoding), :mod:`.remote` (:class:`CachedRemote`: cells, coalesced upstream
fetches, write-through, read-your-writes) and :mod:`.heap` (handing freed memory back to the
system in a server process).
"""

from __future__ import annotations

from .heap import TRIM_ABOVE as TRIM_ABOVE
from .heap import TRIM_SECONDS as TRIM_SECONDS
from .heap import limit_heap_growth as limit_heap_growth
from .remote import CELL_BYTES as CELL_BYTES
from .remote import CachedRemote, UpstreamError, UpstreamTimeoutError
from .tiers import CacheMetrics, DiskTier, MemoryTier, TieredCache
from .tiers import decode_cell as decode_cell
from .tiers import encode_cell as encode_cell

__all__ = [
    "CachedRemote",
    "CacheMetrics",
    "DiskTier",
    "MemoryTier",
    "TieredCache",
    "UpstreamError",
    "UpstreamTimeoutError",
]
