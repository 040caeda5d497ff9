"""What the relay serves: collections, experiments, coordinate frames and channels.

Channels come from three places: ``[[channel]]`` entries of the config (any upstream URL),
volumes found under ``--data-root DIR`` at ``DIR/collection/experiment/channel[.zarr|...]``,
and channels created through the bossDB project service (zarr volumes written under the data
root).  Experiments and coordinate frames of config and data-root channels are derived from
the volumes' metadata: the frame spans every channel of the experiment, one resolution level
per upstream scale.  What clients create or change (descriptions, metadata, reserved ids,
local projects) is kept in a small JSON state file written atomically.

A channel created through the project service has an *incarnation* (a random id kept in the
state file with it): the cache identity of its cells includes it, so a channel deleted and
created again under the same name never meets the old one's cells, even on a disk tier that
outlived a restart.  Deleting a channel also drops its cells from both tiers (by tag).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api import open_remote
from ..errors import (
    AuthenticationError,
    InvalidRequestError,
    ReadOnlyError,
    RemoteNotFoundError,
    VoxgateError,
    redact,
    redacting_logger,
)
from ..geometry import Vec
from ..lru import make_newest
from ..registry import resolve
from ..remotes.base import Remote
from ..storage import is_local, length_unit_nm, local_path, split_url
from .cache import CachedRemote, TieredCache, UpstreamError, UpstreamTimeoutError
from .cache.remote import meta_version
from .config import ChannelConfig, RelayConfig, check_name
from .statefile import StateFile, TransactionLock

#: the token of the request being answered (set by Relay.authorize, in the request's context,
#: which its worker threads inherit): a channel that forwards each client's token opens its
#: upstream with it when the caller names no token (its metadata, its coordinate frame, the
#: experiment's levels), where it was opened with none and refused by an upstream that
#: wants one
request_token: ContextVar[str | None] = ContextVar("voxgate_request_token", default=None)

__all__ = ["Catalog", "ChannelEntry", "NotFound", "ResourceExists", "data_root_volumes",
           "local_store", "store_key"]


def _empty_state() -> dict[str, Any]:
    return {"collections": {}, "experiments": {}, "coords": {}, "channels": {},
            "local_channels": {}, "meta": {}, "reserved": {}, "deleted": [], "downsample": {},
            # stores of deleted channels being removed: {hidden path: the store's path}, saved
            # with the delete, cleared once it is gone (a relay stopped in between finishes it)
            "removing": {}}


class NotFound(VoxgateError, LookupError):
    """A collection, experiment, frame, channel or key that does not exist."""


class ResourceExists(VoxgateError):
    """A create of something that exists (bossDB answers 400 code 4003 / 6002)."""


_BOSS_TO_NM = {"nanometers": 1.0, "micrometers": 1e3, "millimeters": 1e6, "centimeters": 1e7}


def _boss_voxel_size(vs: Any) -> dict[str, Any]:
    """A coordinate frame's voxel size and ``voxel_unit`` (bossDB knows nanometers,
    micrometers, millimeters and centimeters) for a voxel size in any unit spelling voxgate
    reads (``μm``, ``micron``, ``Å``...; one it does not know counts as nm): in its own unit
    where bossDB has it, else in nanometres (it was announced as nm, ``μm`` sizes 1000x too
    small)."""
    nm = length_unit_nm(vs.unit) or 1.0
    unit = next((name for name, f in _BOSS_TO_NM.items() if f == nm), None)
    scale = 1.0 if unit is not None else nm
    return {"x_voxel_size": vs.x * scale, "y_voxel_size": vs.y * scale,
            "z_voxel_size": vs.z * scale, "voxel_unit": unit or "nanometers"}


_VOLUME_SUFFIXES = (".ome.zarr", ".zarr", ".n5", ".h5", ".hdf5", ".precomputed")
_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
#: names given to volumes less than three directories deep under the data root
DEFAULT_COLLECTION, DEFAULT_EXPERIMENT = "data", "default"
#: how deep under the data root volumes are looked for
MAX_DEPTH = 8
#: the ``@type`` of a precomputed volume's info (meshes, skeletons, annotations have others)
VOLUME_TYPE = "neuroglancer_multiscale_volume"
_open_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="voxgate-open")
log = redacting_logger("voxgate.relay")
#: the views (a CachedRemote and its opened upstream, one per credential) a channel keeps
#: at most, least recently used first out: a channel that forwards each client's token opens
#: one per distinct token, and with tokens that rotate (OIDC bearer tokens, new every hour)
#: it kept every one for the relay's whole run.  32 is as many requests as a relay process
#: works on at once (Relay.limiter), so the views of the requests in progress are all kept,
#: while each view held costs an upstream client and its thread pool.  A view let go is
#: retired (a request still on it finishes, caching nothing) and its upstream closed when
#: the last request on it lets it go
MAX_VIEWS = 32


@dataclass
class ChannelEntry:
    collection: str
    experiment: str
    name: str
    upstream_url: str
    options: dict[str, Any] = field(default_factory=dict)
    forward_token: bool = False
    writable: bool = True
    local: bool = False  # created through the project service under the data root
    #: the views opened so far, by credential fingerprint, least recently used first (at
    #: most MAX_VIEWS)
    _remotes: OrderedDict[str, CachedRemote] = field(default_factory=OrderedDict, repr=False)
    #: made anew whenever a view of the channel is let go (Catalog._open): in the identity of
    #: every view opened afterwards, so a token's view opened again never meets the cells
    #: its earlier view left, which writes through the other views no longer dropped
    _views_epoch: str = field(default="", repr=False)
    #: when the upstream's metadata was last read again (Catalog.check_meta), and whether a
    #: read of it is in flight
    _meta_checked: float = field(default=0.0, repr=False)
    _meta_checking: bool = field(default=False, repr=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.collection, self.experiment, self.name)


def _serving_options(url: str, options: dict[str, Any], workers: int = 1) -> dict[str, Any]:
    """``options`` for opening ``url`` as a relay's upstream, kept open for the relay's run.

    A store that locks its files while they are open for writing (HDF5: one writer or many
    readers, across processes) is opened so it takes write access for each write only
    (``hold_write=False``): held from the start, it kept every other process (a notebook
    reading the file) out for the relay's whole run, and a notebook that had the file open
    made the relay answer 502.  With several worker processes it keeps no handle open at all
    between reads and writes (``hold_open=False``): each worker holding the file open
    read-only refused every other worker's write ("locked by another process"); the workers
    now take turns on it with a lock of their own.  A channel's own ``hold_write`` or
    ``hold_open`` option wins."""
    try:
        cls, _ = resolve(url)
    except VoxgateError:  # (open_remote says what is wrong with the URL)
        return options
    if "hold_write" in cls.open_options and "hold_write" not in options:
        options = {**options, "hold_write": False}
    if (workers > 1 and "hold_open" in cls.open_options and "hold_open" not in options
            and options.get("hold_write") is False):
        options = {**options, "hold_open": False}
    return options


def credential_fingerprint(options: dict[str, Any]) -> str:
    """A short digest of the ``token`` option an upstream is opened with ("" for none): part
    of the cache identity of the cells read with it, so a token's cells are never served to
    another.  The token itself is never kept in a key, a log or a file name."""
    token = options.get("token")
    if not token:
        return ""
    return hashlib.sha256(f"voxgate-credential|{token}".encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1024)
def store_key(url: str) -> str:
    """``url`` with a local store's path spelled one way (absolute, ``.`` and ``..`` and
    repeated or trailing slashes gone, symlinks resolved): channels whose upstream URLs name
    one directory in other words (``zarr:///d/v.zarr`` and ``zarr:///d/./v.zarr/``) are views
    of one upstream, whose cells a write through either must drop.  (A URL that only looks
    like a path, e.g. ``mem://name``, may be taken for one: that can only make two channels
    share a cache tag, so more is dropped, never less.)  Other URLs as they are.  (Memoised:
    a symlink repointed while the relay runs is not followed.)"""
    scheme, location = split_url(url)
    if scheme is None or not is_local(location):
        return url
    try:
        return f"{scheme}://{os.path.realpath(local_path(location))}"
    except (OSError, ValueError):
        return url


def _let_go(remote: CachedRemote) -> None:
    """Retire a view the catalog no longer keeps and close its upstream once nobody uses it:
    a request still reading or writing through it holds it, and finishes on it (never on a
    closed upstream)."""
    weakref.finalize(remote, _close_upstream, remote.upstream)
    remote.evict()


def _retired(remote: CachedRemote) -> None:
    """Retire a view replaced by one opened again (its upstream's metadata changed): reads in
    progress finish on it and cache nothing; its upstream closes once nobody uses it (it was
    left open for good).  Its cells are not dropped here: the new view may share their keys,
    and the caller drops the channel's cells by its tag."""
    weakref.finalize(remote, _close_upstream, remote.upstream)
    remote.retire()


def _close_upstream(upstream: Remote) -> None:
    try:
        upstream.close()
    except Exception as exc:  # (a finalizer: nobody to raise to; the type only, no token)
        log.warning("closing an upstream let go failed: %s", type(exc).__name__)


class Catalog:
    def __init__(self, config: RelayConfig, cache: TieredCache) -> None:
        self.config = config
        self.cache = cache
        #: guards the in-memory bookkeeping of opened Remotes
        self._mutex = threading.RLock()
        self.channels: dict[tuple[str, str, str], ChannelEntry] = {}
        #: opens in flight, by (the entry, its token's fingerprint): by the entry object, not
        #: its name, so a channel deleted and created again never joins the old one's open
        self._opening: dict[tuple[int, str], Future[CachedRemote]] = {}
        #: told the cells' tag of every channel incarnation another process deleted (or
        #: replaced), so what the relay keeps of its write generation goes with it
        self.on_forget: Callable[[str], None] | None = None
        self.state_path = self._state_path()
        self._file = StateFile(self.state_path, _empty_state(), on_change=self._state_changed,
                               watch="local_channels")
        #: held by whoever changes ``state`` or ``channels`` (and saves): a transaction on the
        #: state file, so also across the processes of ``voxgate serve --workers N``
        self.lock = TransactionLock(self._file)
        for ch in config.channels:
            self._add_config_channel(ch)
        if config.data_root is not None:
            self.finish_removals()
            self.rebase_local_channels(config.data_root)
            self.scan_data_root()
        for key, spec in self.state.get("local_channels", {}).items():
            c, e, n = key.split("/")
            if (c, e, n) not in self.channels:
                self.channels[(c, e, n)] = ChannelEntry(c, e, n, spec["url"], local=True)
        self.prune_bookkeeping()

    # -- state ----------------------------------------------------------------------------------
    @property
    def state(self) -> dict[str, Any]:
        """The state (what clients created or changed); change it only holding :attr:`lock`."""
        return self._file.data

    def _state_path(self) -> Path | None:
        if self.config.state_path is not None:
            return self.config.state_path
        if self.config.data_root is not None:
            return self.config.data_root / ".voxgate-relay-state.json"
        if self.config.cache.disk_path is not None:
            return self.config.cache.disk_path / "relay-state.json"
        return None  # a relay with neither keeps its state in memory

    def refresh(self) -> None:
        """Take in what other worker processes saved (one ``stat`` when nothing was)."""
        self._file.refresh()

    def save(self) -> None:
        self._file.save()

    def _state_changed(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """Another process created or deleted channels (``local_channels`` went from ``old``
        to ``new``): follow it.  A channel deleted, or deleted and created again (a new
        incarnation), is a new entry here; the old entry's Remotes are closed and its cells
        dropped, in the background."""
        old, new = old or {}, new or {}
        if old == new:
            return
        channels = dict(self.channels)  # replaced whole: readers iterating keep the old one
        gone: list[ChannelEntry] = []
        dead: list[str] = []  # the tags of the incarnations gone
        for key in old.keys() | new.keys():
            b, a = old.get(key), new.get(key)
            parts = key.split("/")
            if a == b or len(parts) != 3:
                continue
            k = (parts[0], parts[1], parts[2])
            entry = channels.get(k)
            if b is not None and b.get("incarnation") and (
                    a is None or a.get("incarnation") != b.get("incarnation")
                    or a.get("url") != b.get("url")):
                dead.append(CachedRemote.tag_of(json.dumps(
                    [store_key(str(b.get("url"))), str(b["incarnation"])])))
            if a is None:
                if entry is not None and entry.local:
                    del channels[k]
                    gone.append(entry)
                continue
            same = (entry is not None and entry.local and b is not None
                    and entry.upstream_url == a.get("url")
                    and (not b.get("incarnation") or b.get("incarnation") == a.get("incarnation")))
            if not same:
                channels[k] = ChannelEntry(k[0], k[1], k[2], a["url"], local=True)
                if entry is not None:
                    gone.append(entry)
        self.channels = channels
        if gone or dead:
            threading.Thread(target=self._forget, args=(gone, dead), name="voxgate-forget",
                             daemon=True).start()

    def _forget(self, entries: list[ChannelEntry], dead: list[str]) -> None:
        for entry in entries:
            tags = {r.tag for r in self.open_remotes(entry)}
            self.forget_remotes(entry)
            for tag in tags:
                self.cache.drop_tag(tag)
        for tag in dead:
            if self.on_forget is not None:
                self.on_forget(tag)

    # -- channels -------------------------------------------------------------------------------
    def _add_config_channel(self, ch: ChannelConfig) -> None:
        self.channels[(ch.collection, ch.experiment, ch.channel)] = ChannelEntry(
            ch.collection, ch.experiment, ch.channel, ch.upstream, ch.options, ch.forward_token,
            ch.writable,
        )

    def finish_removals(self) -> None:
        """Remove the stores of deleted channels that a stopped relay left (before the data
        root is scanned: else such a store would come back as a channel, with the deleted
        channel's data)."""
        with self.lock:
            removing = dict(self.state.get("removing", {}))
            for hidden, location in removing.items():
                if Path(location).exists():  # stopped before the store was moved aside
                    os.replace(location, hidden)
        for hidden in removing:
            self.remove_moved(hidden)

    def remove_moved(self, hidden: str) -> None:
        """Remove a deleted channel's store, moved aside to ``hidden`` (outside the lock: it
        may be large), and its entry in ``removing`` once it is gone."""
        shutil.rmtree(hidden, ignore_errors=True)
        if not Path(hidden).exists():
            with self.lock:
                if self.state.setdefault("removing", {}).pop(hidden, None) is not None:
                    self.save()

    def rebase_local_channels(self, root: Path) -> None:
        """Record the channels created through the API at their stores under ``root``, the
        data root as this relay names it.  A channel's store is always ``C/E/CH.zarr`` under
        the data root, but its URL is saved whole: one saved by a relay given a relative
        ``--data-root``, or before the data root moved, named another path than the scan
        finds, and the channel answered every read with 404 ("deleted while this read
        ran").  Only stores that are there are rebased."""
        with self.lock:
            moved = False
            for key, spec in self.state["local_channels"].items():
                c, e, name = key.split("/")
                path = local_store(root, c, e, name)
                url = f"zarr://{path}"
                if spec.get("url") != url and path.is_dir():
                    spec["url"] = url
                    moved = True
            if moved:
                self.save()

    def scan_data_root(self) -> None:
        """Add every volume under the data root as a channel (see :func:`data_root_volumes`)."""
        root = self.config.data_root
        if root is None or not root.exists():
            return
        for (c, e, name), url in data_root_volumes(root):
            key = (c, e, name)
            if key not in self.channels:
                self.channels[key] = ChannelEntry(
                    c, e, name, url, local=f"{c}/{e}/{name}" in self.state["local_channels"],
                )

    def prune_bookkeeping(self) -> None:
        """Drop what the state file keeps per channel for channels this relay no longer
        serves (dropped from the config, their volume gone from the data root, or deleted by
        a relay that kept it): the metadata digests and changes (``meta_seen``,
        ``meta_changes``) and the generations the disk tier's cells were current for
        (``generations_seen``); and the ``deleted`` names.  Each held one entry per channel
        name (or incarnation) ever served, so the file grew for good.  Dropping them is
        safe: a change is numbered from a clock that never goes back
        (:meth:`note_meta_change`), a generation not remembered only drops the channel's disk
        cells once, and a deleted name hid nothing the state still makes (see
        :meth:`deleted`)."""
        def stale() -> tuple[set[str], set[str]]:
            names = {"/".join(k) for k in self.channels}
            tags = {CachedRemote.tag_of(self._tag_now(entry)) for entry in self.channels.values()}
            keys = {k for t in ("meta_changes", "meta_seen") for k in self.state.get(t) or {}}
            return keys - names, set(self.state.get("generations_seen") or {}) - tags

        if stale() == (set(), set()) and not self.state.get("deleted"):
            return  # (the common case: the state file is not even locked)
        try:
            with self.lock:  # (decided again on the state as it is under the lock)
                names, tags = stale()
                dropped = self.forget_meta(keep={k for t in ("meta_changes", "meta_seen")
                                                 for k in self.state.get(t) or {}} - names)
                # the names of deleted collections and experiments, which relays before
                # 2026-12-08 kept for good: they hid nothing the state still made (a delete
                # is refused while the name holds anything), only what came later under the
                # name from the config or the data root, which is served
                if self.state.get("deleted"):
                    self.state["deleted"] = []
                    dropped = True
                seen = self.state.get("generations_seen") or {}
                for tag in tags:
                    dropped = seen.pop(tag, None) is not None or dropped
                if dropped:
                    self.save()
        except OSError as exc:  # (only tidying: the relay serves as well without it)
            log.warning("could not drop the entries of channels no longer served from the "
                        "relay state %s: %s", self.state_path, exc)

    def _tag_now(self, entry: ChannelEntry) -> str:
        """The channel's :meth:`cache_tag` as the state has it now (none made)."""
        spec = self.state["local_channels"].get("/".join(entry.key)) if entry.local else None
        incarnation = str(spec.get("incarnation") or "") if spec else ""
        return json.dumps([store_key(entry.upstream_url), incarnation])

    def forget_meta(self, *parts: str, keep: set[str] | None = None) -> bool:
        """Drop the metadata bookkeeping (``meta_seen``, ``meta_changes``) of the channel
        ``parts`` names, or of every channel under the collection or experiment it names, or
        (``keep``) of every channel not in ``keep``; call it holding :attr:`lock` and save.
        Returns whether anything was dropped.  The clock the changes are numbered from keeps
        the highest number dropped: a channel made again under the name counts on from it,
        so a Remote opened before the delete never passes for current (:meth:`remote`)."""
        prefix = "/".join(parts)

        def gone(key: str) -> bool:
            if keep is not None:
                return key not in keep
            return key == prefix or (len(parts) < 3 and key.startswith(prefix + "/"))

        dropped = False
        for table in ("meta_changes", "meta_seen"):
            rows = self.state.get(table) or {}
            for key in [k for k in rows if gone(k)]:
                value = rows.pop(key)
                if table == "meta_changes":
                    self.state["meta_clock"] = max(self._meta_clock(), int(value))
                dropped = True
        return dropped

    def _meta_clock(self) -> int:
        """The highest change number given out (a state file from before the clock: the
        highest of its counts)."""
        return max([int(self.state.get("meta_clock", 0)),
                    *(int(v) for v in self.state.get("meta_changes", {}).values())])

    def deleted(self, *parts: str) -> bool:
        """Whether the name is hidden by a ``deleted`` entry (none is made any more: a deleted
        collection or experiment holds nothing, so it is gone once its record is, and a
        channel added later under its name, to the config or the data root, is served; the
        entries an older relay made are dropped when a relay starts)."""
        return "/".join(parts) in self.state["deleted"]

    def channel(self, c: str, e: str, ch: str) -> ChannelEntry:
        entry = self.channels.get((c, e, ch))
        if entry is None or self.deleted(c, e, ch):
            self.experiment_names(c)  # raises for an unknown collection first
            if e not in self.experiment_names(c):
                raise NotFound(f"Experiment {e} not found")
            raise NotFound(f"Channel {ch} not found")
        return entry

    def remote(self, entry: ChannelEntry, token: str | None = None) -> CachedRemote:
        """The cached Remote of a channel (one per client token when it forwards tokens).

        The upstream is opened on first use, outside the catalog's lock (a slow or dead
        upstream must not hold up the other channels), once however many requests want it,
        and waited for at most ``upstream_timeout`` (then 504; the open carries on and is
        kept if it succeeds).
        """
        options = dict(entry.options)
        if entry.forward_token:
            if token is None:
                token = request_token.get()
            if token:
                options["token"] = token
        # the credential the upstream is opened with (configured, or the client's): one view,
        # with cells of its own, per credential (see _open)
        fingerprint = credential_fingerprint(options)
        deadline = time.monotonic() + self.config.upstream_timeout
        for _ in range(3):  # (an open that began before a change was recorded: once more)
            stale: CachedRemote | None = None
            epoch = self.meta_epoch(entry)
            with self._mutex:
                cached = entry._remotes.get(fingerprint)
                if cached is not None and cached.meta_epoch >= epoch:
                    entry._remotes.move_to_end(fingerprint)  # (the least recently used go)
                    return cached
                if cached is not None:
                    # the upstream's metadata changed since it was opened, as another worker
                    # process saw (Relay.upstream_meta_changed): opened again, with the new
                    stale = entry._remotes.pop(fingerprint)
                slot = (id(entry), fingerprint)  # (alive while its open is in flight)
                fut = self._opening.get(slot)
                if fut is None:
                    fut = Future()
                    self._opening[slot] = fut
                    _open_pool.submit(self._open, entry, fingerprint, options, fut,
                                      entry._views_epoch)
            if stale is not None:
                _retired(stale)  # (reads in progress finish on it; it caches nothing more)
            try:
                opened = fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                raise UpstreamTimeoutError(
                    f"upstream {entry.upstream_url} did not answer within "
                    f"{self.config.upstream_timeout:g} s (opening it)"
                ) from None
            if opened.meta_epoch >= epoch:
                return opened
        return opened

    def meta_epoch(self, entry: ChannelEntry) -> int:
        """How many changes of the channel's upstream metadata a worker process recorded
        (:meth:`note_meta_change`): a Remote opened before the last of them reads with old
        metadata.  (The state is taken in afresh at the start of every request.)"""
        return int(self.state.get("meta_changes", {}).get("/".join(entry.key), 0))

    def note_meta_change(self, entry: ChannelEntry) -> None:
        """Record, in the state every worker process shares, that the channel's upstream
        metadata changed: each one's next request to it opens it again (:meth:`remote`),
        instead of serving the old shape, scales and bytes until its own check comes round."""
        key = "/".join(entry.key)
        with self.lock:
            if self.channels.get(entry.key) is not entry:
                return  # deleted meanwhile (in any worker): nothing left to open again
            self._count_change(key)
            # (the metadata the next open reads is the one recorded: see _note_opened)
            self.state.get("meta_seen", {}).pop(key, None)
            self.save()

    def _count_change(self, key: str) -> int:
        """Number a change of channel ``key``'s metadata (holding :attr:`lock`): one above
        every number given out before, to any channel, so the numbers of a channel deleted
        and made again under its name (its entries dropped: :meth:`forget_meta`) still only
        go up."""
        number = self._meta_clock() + 1
        self.state["meta_clock"] = self.state.setdefault("meta_changes", {})[key] = number
        return number

    def _note_opened(self, entry: ChannelEntry, remote: CachedRemote, epoch: int) -> int:
        """With several worker processes: record the digest of the metadata ``remote`` was
        opened with (``epoch``: :meth:`meta_epoch` before it was read) in the state they
        share, and when another digest was recorded there, record a change too
        (:meth:`note_meta_change`), so the workers that opened the channel before it changed
        open it again on their next request.  A worker opening a channel for the first time
        after the upstream changed (a DVID branch moved on) reads the new metadata at once:
        without this the others served the old until their own checks came round, and a
        client saw the new volume, then the old one again.  Returns the epoch ``remote`` is
        current for."""
        if self.config.workers <= 1 or entry.forward_token:
            return epoch  # (each forwarded token's view may have metadata of its own)
        key = "/".join(entry.key)
        if self.state.get("meta_seen", {}).get(key) == remote.meta_key \
                and self.meta_epoch(entry) == epoch:
            return epoch
        with self.lock:
            if self.meta_epoch(entry) != epoch:
                # a change was recorded while this one was opened: it may have read the old
                # metadata; the next request opens the channel again
                return epoch
            if self.channels.get(entry.key) is not entry:
                # deleted while it was opened (in any worker): its digest is not recorded,
                # the entries of a deleted channel are gone for good (forget_meta)
                return epoch
            seen = self.state.setdefault("meta_seen", {})
            known = seen.get(key)
            if known == remote.meta_key:
                return epoch
            seen[key] = remote.meta_key
            if known is not None:
                epoch = self._count_change(key)
                log.info("the metadata of %s changed upstream (seen opening it): the other "
                         "worker processes open it again", key)
            self.save()
        return epoch

    def _open(self, entry: ChannelEntry, fingerprint: str, options: dict[str, Any],
              fut: Future[CachedRemote], views_epoch: str = "") -> None:
        try:
            epoch = self.meta_epoch(entry)  # (before the metadata is read)
            mode = "r+" if entry.writable else "r"
            try:
                upstream: Remote = open_remote(entry.upstream_url, mode=mode,
                                               **_serving_options(entry.upstream_url, options,
                                                                  self.config.workers))
            except ReadOnlyError:
                if mode == "r":
                    raise
                # a store that cannot be written (precomputed over HTTP) still serves reads;
                # writes to it answer 403
                upstream = open_remote(entry.upstream_url, mode="r", **options)
            safe = sorted((k, v) for k, v in options.items() if k != "token")
            incarnation = self.incarnation(entry)
            # the credential's fingerprint, never the token: channels of one upstream opened
            # with other tokens (configured or forwarded) may be allowed to read other data,
            # so each credential's view keeps cells (and encoded responses) of its own;
            # channels with the same token share theirs
            # (and, once a view of the channel was let go, the epoch of views the open began
            # in: a credential's view opened again is a new one, see ChannelEntry)
            identity = json.dumps([entry.upstream_url, safe, fingerprint]
                                  + ([incarnation] if incarnation else [])
                                  + ([f"views {views_epoch}"] if views_epoch else []),
                                  default=str)
            cached = CachedRemote(upstream, self.cache, identity=identity,
                                  timeout=self.config.upstream_timeout,
                                  tag=self.cache_tag(entry))
            cached.credential = fingerprint
            # a write through one view drops every other view's cells of it too: the other
            # tokens' views of this channel and of every other channel of the same upstream
            # (the tag, not the Remote, in the closure: no cycle keeps a Remote let go alive)
            tag = cached.tag
            cached.siblings = lambda: self.views(tag)
            cached.origin = (entry.upstream_url, incarnation)
            # (options such as a time point choose what the upstream's bytes are: two
            # channels of one store with other options answer one request with other bytes)
            cached.options_key = json.dumps(safe, default=str) if safe else ""
            cached.meta_epoch = self._note_opened(entry, cached, epoch)
            if entry.local:
                # a channel created through the project service has bossDB's levels: level k
                # of a frame x0:x1 is floor(x0 / 2^k):ceil(x1 / 2^k) (local_channel_meta), so
                # its coarser voxels lie on the grid through 0, and the downsample job fills
                # them on that grid (a frame starting at odd coordinates failed the job: its
                # level 1 is a voxel wider than the "offset" rule's ceil(size / 2))
                cached.pyramid_anchor = "origin"
        except BaseException as exc:
            err: BaseException = exc
            if not isinstance(exc, (RemoteNotFoundError, AuthenticationError, UpstreamError)):
                # unreachable, or answering what cannot be read: the upstream's fault (502)
                err = UpstreamError(f"upstream {entry.upstream_url} could not be opened: {exc}")
                err.__cause__ = exc
            with self._mutex:
                self._opening.pop((id(entry), fingerprint), None)
            fut.set_exception(err)
            return
        with self._mutex:
            kept = entry._remotes.setdefault(fingerprint, cached)
            self._opening.pop((id(entry), fingerprint), None)
            evicted = make_newest(entry._remotes, fingerprint, limit=MAX_VIEWS)
            if evicted:  # views opened from now on have identities of their own (ChannelEntry)
                entry._views_epoch = uuid.uuid4().hex
        fut.set_result(kept)
        for gone in evicted:  # (after the result: the request that opened it need not wait)
            _let_go(gone)

    def check_meta(self, entry: ChannelEntry, changed: Callable[[ChannelEntry], None]) -> None:
        """Read the upstream's metadata again, in the background, when the last read is
        ``upstream_meta_seconds`` old, and call ``changed(entry)`` (there) when it differs
        from what the channel's Remotes were opened with: a change made outside the relay
        (scales added by a downsample, a volume made again with another shape).  Channels that
        forward each client's token are not read again (the relay has no token of its own)."""
        every = self.config.upstream_meta_seconds
        if not every or entry.forward_token:
            return
        now = time.monotonic()
        with self._mutex:
            opened = next(iter(entry._remotes.values()), None)
            if opened is None or entry._meta_checking:
                return
            if not entry._meta_checked:
                entry._meta_checked = now  # (opened just now)
            if now - entry._meta_checked < every:
                return
            entry._meta_checking = True
        _open_pool.submit(self._check_meta, entry, opened, changed)

    def _check_meta(self, entry: ChannelEntry, opened: CachedRemote,
                    changed: Callable[[ChannelEntry], None]) -> None:
        try:
            fresh = open_remote(entry.upstream_url, mode="r", **entry.options)
            try:
                # (and the version a versioned upstream resolves to: a DVID branch whose leaf
                # moved on reads the new leaf from now on, consistently, never a mix of nodes)
                differs = fresh.meta != opened.meta \
                    or meta_version(fresh.meta) != meta_version(opened.meta)
            finally:
                fresh.close()
            if differs:
                changed(entry)
        except Exception as exc:  # unreachable now: the next request's read says so
            log.warning("could not read the metadata of %s again: %s", redact(entry.upstream_url),
                        type(exc).__name__)
        finally:
            with self._mutex:
                entry._meta_checking = False
                entry._meta_checked = time.monotonic()

    def retire_remotes(self, entry: ChannelEntry) -> None:
        """Forget the channel's Remotes (the next request opens the upstream again), leaving
        their upstreams open for the reads in progress (closed when the last lets go); what
        those read is not cached."""
        with self._mutex:
            remotes = list(entry._remotes.values())
            entry._remotes.clear()
        for r in remotes:
            _retired(r)

    def open_remotes(self, entry: ChannelEntry) -> list[CachedRemote]:
        """The channel's Remotes opened and kept (one per forwarded token, at most
        :data:`MAX_VIEWS`)."""
        with self._mutex:
            return list(entry._remotes.values())

    def views(self, tag: str) -> list[CachedRemote]:
        """Every Remote opened so far, of any channel, whose cells carry ``tag`` (the views
        of one upstream: one per channel and credential)."""
        with self._mutex:
            return [r for e in list(self.channels.values()) for r in e._remotes.values()
                    if r.tag == tag]

    def forget_remotes(self, entry: ChannelEntry) -> None:
        with self._mutex:
            remotes = list(entry._remotes.values())
            entry._remotes.clear()
        for r in remotes:  # outside the lock: a close waits for writes in progress
            r.close()

    def incarnation(self, entry: ChannelEntry) -> str:
        """The incarnation of a channel created through the project service ("" for the
        others, whose identity is their upstream URL).  Made on first use and saved with the
        channel; a channel that is no longer the catalog's (deleted meanwhile) gets a
        throwaway one, so nothing it caches can be met by a later channel of that name."""
        if not entry.local:
            return ""
        with self.lock:
            spec = self.state["local_channels"].get("/".join(entry.key))
            if self.channels.get(entry.key) is not entry or spec is None \
                    or spec.get("url") != entry.upstream_url:
                return "gone-" + uuid.uuid4().hex
            if not spec.get("incarnation"):
                spec["incarnation"] = uuid.uuid4().hex
                self.save()
            return str(spec["incarnation"])

    def live(self, remote: CachedRemote) -> bool:
        """Whether ``remote`` still serves its channel: false once the channel it was opened
        for was deleted (in any worker process: the state file is read again if it changed),
        even if one of the same name was created since.  Channels of the config or the data
        root scan, which the API cannot delete, are always live."""
        url, incarnation = remote.origin
        if not incarnation:
            return True
        self._file.refresh()
        return any(spec.get("url") == url and spec.get("incarnation") == incarnation
                   for spec in self.state["local_channels"].values())

    def cache_tag(self, entry: ChannelEntry) -> str:
        """What every cached cell of the channel is tagged with (all tokens' views of it, and
        every channel over the same store however its URL spells a local path: a write
        through one drops the others' cells, and moves their write generation)."""
        return json.dumps([store_key(entry.upstream_url), self.incarnation(entry)])

    def drop_channel(self, entry: ChannelEntry, tag: str) -> int:
        """Forget a deleted channel's Remotes and drop its cells (``tag``: its
        :meth:`cache_tag`, taken before the delete) from both cache tiers; return how many."""
        self.forget_remotes(entry)  # closed first: fetches in flight cache nothing more
        return self.cache.drop_tag(CachedRemote.tag_of(tag))

    # -- names ----------------------------------------------------------------------------------
    def collection_names(self) -> list[str]:
        names = {c for (c, _, _) in self.channels} | set(self.state["collections"])
        names |= {k.split("/")[0] for k in self.state["experiments"]}
        return sorted(n for n in names if not self.deleted(n))

    def experiment_names(self, c: str) -> list[str]:
        if c not in self.collection_names():
            raise NotFound(f"Collection {c} not found")
        names = {e for (cc, e, _) in self.channels if cc == c}
        names |= {k.split("/")[1] for k in self.state["experiments"] if k.split("/")[0] == c}
        return sorted(n for n in names if not self.deleted(c, n))

    def channel_names(self, c: str, e: str) -> list[str]:
        if e not in self.experiment_names(c):
            raise NotFound(f"Experiment {e} not found")
        return sorted(n for (cc, ee, n) in self.channels
                      if (cc, ee) == (c, e) and not self.deleted(c, e, n))

    def experiment_channels(self, c: str, e: str) -> list[ChannelEntry]:
        return [self.channels[(c, e, n)] for n in self.channel_names(c, e)]

    # -- derived project-service records -------------------------------------------------------
    def frame_name(self, c: str, e: str) -> str:
        stored = self.state["experiments"].get(f"{c}/{e}")
        if stored is not None:
            return str(stored["coord_frame"])
        return f"{c}_{e}_frame"

    def derived_frame(self, c: str, e: str) -> dict[str, Any]:
        """A coordinate frame spanning every channel of an experiment (scale-0 voxels).

        A channel whose upstream cannot be opened now (gone, refused, unreachable) is left
        out, with a warning in the log: it must not make its healthy siblings' cutouts fail
        (their frame is this one); it says what is wrong when it is itself asked for.  With no
        channel opened, the first one's error is raised."""
        starts: list[Vec] = []
        stops: list[Vec] = []
        vs = None
        first: BaseException | None = None
        for entry in self.experiment_channels(c, e):
            try:
                meta = self.remote(entry).meta
            except (RemoteNotFoundError, AuthenticationError, UpstreamError) as exc:
                log.warning("the frame of %s/%s leaves out channel %s: %s", c, e,
                            "/".join(entry.key), exc)
                first = first or exc
                continue
            sc = meta.scale(0)
            starts.append(sc.offset)
            stops.append(sc.offset + sc.shape)
            vs = vs or sc.voxel_size
        if not starts or vs is None:
            if first is not None:
                raise first
            raise NotFound(f"Experiment {e} has no channels to derive a coordinate frame from")
        lo = Vec(*(min(v[i] for v in starts) for i in range(3)))
        hi = Vec(*(max(v[i] for v in stops) for i in range(3)))
        return {
            "name": self.frame_name(c, e),
            "description": f"derived by the relay from the channels of {c}/{e}",
            "x_start": lo.x, "x_stop": hi.x, "y_start": lo.y, "y_stop": hi.y,
            "z_start": lo.z, "z_stop": hi.z,
            **_boss_voxel_size(vs),
        }

    def frame(self, c: str, e: str) -> dict[str, Any]:
        """The coordinate frame of one experiment (opens only that experiment's channels)."""
        name = self.frame_name(c, e)
        stored = self.state["coords"].get(name)
        if stored is not None and not self.deleted("coord", name):
            return dict(stored)
        return self.derived_frame(c, e)

    def coord_frames(self) -> dict[str, dict[str, Any]]:
        frames = dict(self.state["coords"])
        for c in self.collection_names():
            for e in self.experiment_names(c):
                name = self.frame_name(c, e)
                if name not in frames and self.experiment_channels(c, e):
                    frames[name] = self.derived_frame(c, e)
        return {k: v for k, v in frames.items() if not self.deleted("coord", k)}


def _volume_scheme(path: Path) -> str | None:
    """The format scheme of a volume at ``path``; None for a directory that is not one (a
    precomputed directory whose info is not a volume's: meshes, skeletons, annotations)."""
    from ..registry import detect_format

    try:
        scheme = detect_format(str(path))
    except VoxgateError:
        return None
    if scheme == "precomputed":
        try:
            info = json.loads((path / "info").read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or \
                info.get("@type", "neuroglancer_multiscale_volume") != VOLUME_TYPE:
            return None
    return scheme


def _channel_name(parts: list[str]) -> tuple[str, str, str]:
    """collection/experiment/channel of a volume at ``parts`` below the data root."""
    name = parts[-1]
    for suffix in _VOLUME_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if len(parts) == 1:
        return DEFAULT_COLLECTION, DEFAULT_EXPERIMENT, name
    if len(parts) == 2:
        return DEFAULT_COLLECTION, parts[0], name
    return parts[0], "_".join(parts[1:-1]), name


def local_store(root: Path, c: str, e: str, ch: str) -> Path:
    """Where a channel created through the project API keeps its data: a zarr volume
    ``C/E/CH.zarr`` under the data root."""
    return root / c / e / f"{ch}.zarr"


def data_root_volumes(root: Path, max_depth: int = MAX_DEPTH) -> list[tuple[tuple[str, str, str],
                                                                             str]]:
    """The volumes under a data root, at any depth (up to ``max_depth`` directories), as
    ((collection, experiment, channel), URL), sorted by path.

    ``DIR/c/e/ch[.zarr|.n5|...]`` is channel c/e/ch; ``DIR/ch`` is ``data/default/ch``,
    ``DIR/e/ch`` is ``data/e/ch`` and ``DIR/c/a/b/ch`` is ``c/a_b/ch``.  The search does not
    enter a volume (so a layer's ``mesh/`` and ``skeletons/`` are never channels), nor hidden
    directories, and skips directories whose info is not a volume's (mesh, skeleton and
    annotation directories) and volumes whose names are not valid channel names (or repeat
    one found earlier).
    """
    found: list[tuple[tuple[str, str, str], str]] = []
    seen: set[tuple[str, str, str]] = set()

    def visit(path: Path, parts: list[str]) -> None:
        try:
            children = sorted(p for p in path.iterdir() if not p.name.startswith(".") and (
                p.is_dir() or p.name.lower().endswith(_HDF5_SUFFIXES)))
        except OSError:
            return
        for child in children:
            here = [*parts, child.name]
            scheme = _volume_scheme(child)
            if scheme is not None:
                key = _channel_name(here)
                try:
                    for part, what in zip(key, ("collection", "experiment", "channel"),
                                          strict=True):
                        check_name(part, what)
                except VoxgateError:
                    continue  # not a name a channel can have: skipped, not an error
                if key not in seen:
                    seen.add(key)
                    found.append((key, f"{scheme}://{child}"))
            elif (child / "info").is_file():
                continue  # a precomputed directory of something else: meshes, annotations
            elif len(here) < max_depth and child.is_dir():
                visit(child, here)

    visit(root, [])
    return found


def boss_unit_to_nm(unit: str) -> float:
    try:
        return _BOSS_TO_NM[unit]
    except KeyError:
        raise InvalidRequestError(
            f"voxel_unit must be one of {sorted(_BOSS_TO_NM)}, got {unit!r}"
        ) from None
