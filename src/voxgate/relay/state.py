"""The relay's state and what every dialect's routes share: one :class:`Relay` per server.

It holds the configuration, the tiered cache, the catalog of what is served and the limit on
work done off the event loop, and it answers the questions every route asks: who is asking
and may they (authorization), which channel a URL names (lookup, as bossDB's 404s), and the
data operations behind the bossDB endpoints (writes, ids, bounding boxes, reserve, server-side
downsampling, channels created and deleted through the project service).  The route modules
(``boss``, ``precomputed``) import it; ``app`` only assembles them into the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import numpy as np
from starlette.requests import Request

from ..api import create_remote
from ..errors import redact, redacting_logger
from ..geometry import Box, Vec, VoxelSize, chunk_boxes
from ..meta import Scale, VolumeMeta
from ..remotes.base import Capability, has_capability
from ..storage import set_request_retries
from .budget import WORK_FACTOR, InflightBudget
from .cache import CachedRemote, TieredCache
from .catalog import (
    Catalog,
    ChannelEntry,
    NotFound,
    boss_unit_to_nm,
    local_store,
    request_token,
    store_key,
)
from .config import RelayConfig
from .errors import (
    INVALID_ARGUMENT,
    INVALID_CUTOUT_ARGS,
    INVALID_POST_ARGUMENT,
    MISSING_PERMISSION,
    REQUEST_TOO_LARGE,
    RESOURCE_EXISTS,
    BossHTTPError,
    bad_request,
    not_found,
)
from .generations import Generations, before_generation, only_own
from .jobs import finish_job, job_status, note_write, run_job, set_job_status
from .shared_cache import SharedDiskCache
from .stats import SCAN_BYTES, LabelStatsCache, region_ids

__all__ = ["CHANNEL_DATATYPES", "SCAN_BYTES", "Relay", "local_channel_meta"]

log = redacting_logger("voxgate.relay")
T = TypeVar("T")

#: an absolute path in a message: "/" not inside a word, a URL or a label, up to a space,
#: quote or bracket
_ABSOLUTE_PATH = re.compile(r"(?<![\w\]\)>:/.\-~])/[^\s'\"\[\]()<>,;]+")
_FILE_URL = re.compile(r"file://[^\s'\"\[\]()<>,;]*")
#: the relay's own routes, which messages may name
_ROUTES = ("/v1/", "/v0.", "/precomputed/", "/ping", "/metrics")


#: the datatypes of channels created through the project service (bossDB's)
CHANNEL_DATATYPES = ("uint8", "uint16", "uint32", "uint64")


#: bossDB's 401 challenge: its first authentication class (mozilla-django-oidc's
#: OIDCAuthentication, boss/settings/production.py) names the scheme
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="api"'}


class Relay:
    """Everything a request handler needs; one per server."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        # a dead upstream fails in about a second instead of being retried for minutes
        t = config.upstream_timeout
        set_request_retries(4, min(0.1, t / 40), min(1.0, t / 8))
        gen_dir = self._generations_dir(config)
        #: the write generations behind ETags, and the one this relay's cells are current for
        self.generations = Generations(gen_dir)
        if config.workers > 1 and config.cache.disk_path is not None and gen_dir is not None:
            # a worker of several: its own memory tier, the disk tier shared (shared_cache)
            self.cache: TieredCache = SharedDiskCache(
                config.cache.memory_bytes, config.cache.disk_path, config.cache.disk_bytes,
                self.generations, self._may_store)
        else:
            self.cache = TieredCache(config.cache.memory_bytes, config.cache.disk_path,
                                     config.cache.disk_bytes)
        self.catalog = Catalog(config, self.cache)
        self.limiter = anyio.CapacityLimiter(32)
        #: what the large cutouts in progress in this process reserve (relay.budget)
        self.inflight = InflightBudget(config.max_inflight_bytes
                                       or WORK_FACTOR * config.max_cutout_bytes)
        self._reserve_lock = threading.Lock()
        self._jobs_lock = threading.Lock()
        #: whole-channel ids and bounding boxes, one pass each, dropped by writes (and by
        #: writes through other workers or relays: the generation is looked at first)
        self.stats = LabelStatsCache(freshen=self.freshen, max_ids=config.stats_max_ids)
        self._seen: dict[str, str] = {}
        #: the generations this relay's own writes made, not yet seen by a read
        self._own: dict[str, set[str]] = {}
        self._seen_lock = threading.Lock()
        # a channel deleted by another worker process (or relay sharing the state): what this
        # one kept of its incarnation goes too
        self.catalog.on_forget = self.forget_generation
        # (writers' folders a relay stopped during a delete left behind)
        self.generations.prune_writers()

    # -- auth -----------------------------------------------------------------------------------
    @staticmethod
    def token(request: Request) -> str | None:
        header = request.headers.get("authorization")
        if not header:
            return None
        parts = header.split()
        if not parts or parts[0].lower() not in ("token", "bearer"):
            # another scheme (Basic, ...) is none of bossDB's authenticators' (DRF's
            # TokenAuthentication and the OIDC bearer class return None for it): anonymous
            return None
        if len(parts) != 2:
            # DRF TokenAuthentication's words (a keyword alone names no credentials)
            detail = "No credentials provided." if len(parts) == 1 else \
                "Token string should not contain spaces."
            raise BossHTTPError(401, 0, f"Invalid token header. {detail}", drf=True,
                                headers=_CHALLENGE)
        return None if parts[1] == "public" else parts[1]

    def authorize(self, request: Request, collection: str | None, *, write: bool) -> str | None:
        """Check the request's token for a read or a write; return the token (or None).

        The token is also the request's :data:`request_token` from here on (what a channel
        that forwards tokens opens its upstream with, where no token is passed)."""
        token = self.token(request)
        request_token.set(token)
        auth = self.config.auth
        if auth.open:
            return token
        if token is None:
            if write or not auth.public_read:
                raise BossHTTPError(401, 0, "Authentication credentials were not provided.",
                                    drf=True, headers=_CHALLENGE)
            return None
        grant = auth.tokens.get(token)
        if grant is None:
            raise BossHTTPError(401, 0, "Invalid token.", drf=True,
                                headers=_CHALLENGE)
        if not grant.allows(collection, write):
            what = "write to" if write else "read"
            raise BossHTTPError(403, MISSING_PERMISSION, f"This user does not have the required "
                                f"permissions: the token may not {what} "
                                f"{collection or 'this resource'}")
        return token

    def readable_collections(self, request: Request) -> list[str]:
        """The collections the request's token may read (bossDB lists only those)."""
        token = self.authorize(request, None, write=False)
        names = self.catalog.collection_names()
        grant = self.config.auth.tokens.get(token) if token is not None else None
        if grant is None or grant.collections is None:
            return names
        return [c for c in names if c in grant.collections]

    def scrub(self, message: str, request_path: str = "") -> str:
        """``message`` without the server's paths and upstream URLs: each becomes a label
        (``[data root]``, ``[upstream of c/e/ch]``), and any other absolute path that is not
        one of the relay's own routes ``[server path]``, so an error body never shows them."""
        cfg = self.config
        found: dict[str, str] = {}

        def add(text: str, label: str) -> None:
            variants = [text, redact(text)]  # (voxgate's own messages hold it redacted)
            rest = text
            while "://" in rest:  # precomputed://file:///x -> file:///x -> /x
                rest = rest.split("://", 1)[1]
                variants.append(rest)
            for v in list(variants):
                if v.startswith("/"):
                    variants.append(os.path.realpath(v))
            for v in variants:
                # URLs and paths only: "faultfake://corrupt" must not replace every "corrupt"
                if v.strip("/") and (v.startswith("/") or "://" in v):
                    found.setdefault(v.rstrip("/"), label)

        for entry in list(self.catalog.channels.values()):
            add(entry.upstream_url, f"[upstream of {'/'.join(entry.key)}]")
        for path, label in ((cfg.data_root, "[data root]"), (cfg.cache.disk_path, "[cache]"),
                            (cfg.state_path, "[state file]"),
                            (self.catalog.state_path, "[state file]")):
            if path is not None:
                add(str(path), label)
        for text in sorted(found, key=len, reverse=True):
            message = message.replace(text, found[text])

        def other_path(m: re.Match[str]) -> str:
            text = m.group(0)
            if text.startswith(_ROUTES) or (request_path and text.startswith(request_path)):
                return text
            return "[server path]"

        message = _FILE_URL.sub("[server path]", message)
        return _ABSOLUTE_PATH.sub(other_path, message)

    def user(self, request: Request) -> str:
        token = self.token(request)
        if token is None:
            return "anonymous"
        return "token-" + hashlib.sha256(token.encode()).hexdigest()[:8]

    # -- resources ------------------------------------------------------------------------------
    def known_collection(self, c: str) -> str:
        if c not in self.catalog.collection_names():
            raise not_found(f"Collection {c} not found")
        return c

    def known_experiment(self, c: str, e: str) -> tuple[str, str]:
        if e not in self.catalog.experiment_names(self.known_collection(c)):
            raise not_found(f"Experiment {e} not found")
        return c, e

    def channel(self, c: str, e: str, ch: str) -> ChannelEntry:
        try:
            return self.catalog.channel(c, e, ch)
        except NotFound as exc:
            raise not_found(str(exc)) from None

    def remote(self, entry: ChannelEntry, token: str | None = None) -> CachedRemote:
        remote = self.catalog.remote(entry, token)
        self.catalog.check_meta(entry, self.upstream_meta_changed)
        return remote

    def upstream_meta_changed(self, entry: ChannelEntry) -> None:
        """The upstream's metadata changed outside the relay (seen by Catalog.check_meta): the
        channel's Remotes are replaced (the next request opens it again, with the new
        metadata), its cells and label statistics dropped, and its write generation bumped,
        so every ETag changes and other worker processes and relays sharing the generations
        drop their cells too.  The change is also recorded in the state the worker processes
        share, so each of them opens the channel again on its next request to it (Catalog.remote)
        rather than serving the old metadata until its own check comes round."""
        if self.catalog.channels.get(entry.key) is not entry:
            return  # deleted meanwhile (its store may be another channel's now)
        tag = CachedRemote.tag_of(self.catalog.cache_tag(entry))
        log.info("the metadata of %s changed upstream: opening it again", "/".join(entry.key))
        with self.generations.exclusive(tag):  # (no write of the channel is in progress)
            self.catalog.refresh()
            if self.catalog.channels.get(entry.key) is not entry:
                return  # deleted meanwhile: its generation is gone, and is not made again
            # (recorded before the Remotes go: one opened meanwhile reads the new metadata and
            # is not opened once more)
            self.catalog.note_meta_change(entry)
            self.catalog.retire_remotes(entry)
            self.cache.drop_tag(tag)
            self.stats.drop(tag)
            self.generations.bump(tag)

    def base_resolution(self, entry: ChannelEntry) -> int:
        """The channel's bossDB ``base_resolution``: its level 0 is that resolution, and the
        resolutions of its URLs run from it (0 for channels from the configuration)."""
        if not entry.local:
            return 0
        stored = self.catalog.state["channels"].get("/".join(entry.key), {})
        return int(stored.get("base_resolution", 0))

    def frame_at(self, c: str, e: str, entry: ChannelEntry, res: int) -> Box:
        """The coordinate frame at the channel's level ``res`` (bossDB resolution
        ``base_resolution + res``), in that level's voxels."""
        frame = self.catalog.frame(c, e)
        meta = self.remote(entry).meta
        s0, sk = meta.scale(0), meta.scale(res)
        f = [max(1, round(b / a)) for a, b in zip(s0.voxel_size.zyx(), sk.voxel_size.zyx(),
                                                  strict=True)]
        if self.base_resolution(entry):
            # (the frame's voxel size is resolution 0's; level 0 is the base resolution's)
            unit = boss_unit_to_nm(frame.get("voxel_unit", "nanometers"))
            f = [k * max(1, round(v / (frame[f"{ax}_voxel_size"] * unit)))
                 for k, v, ax in zip(f, s0.voxel_size.zyx(), "zyx", strict=True)]
        start = [frame[f"{ax}_start"] // k for ax, k in zip("zyx", f, strict=True)]
        stop = [-(-frame[f"{ax}_stop"] // k) for ax, k in zip("zyx", f, strict=True)]
        return Box(start, stop)

    # -- data -----------------------------------------------------------------------------------
    async def read_body(self, request: Request, expected: int) -> bytes:
        """The request body, refused with 413 before reading when it cannot fit the region."""
        limit = self.check_length(request, expected)
        chunks = []
        size = 0
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise BossHTTPError(413, REQUEST_TOO_LARGE, "the body is larger than the region "
                                    f"it is for can be ({expected} bytes)")
            chunks.append(part)
        return b"".join(chunks)

    def check_length(self, request: Request, expected: int) -> int:
        """The most bytes a body for a region of ``expected`` bytes may have; a Content-Length
        above it refused (413) at once, before the request waits for anything (the budget)."""
        limit = min(self.config.max_cutout_bytes, expected) + 65536
        length = request.headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                raise bad_request(INVALID_POST_ARGUMENT, "bad Content-Length") from None
            if n > limit:
                raise BossHTTPError(413, REQUEST_TOO_LARGE, f"the body ({n} bytes) is larger "
                                    f"than the region it is for can be ({expected} bytes)")
        return limit

    def write(self, remote: CachedRemote, box: Box, data: np.ndarray, res: int) -> None:
        """Write ``data`` over ``box`` (within the level's frame) at level ``res``.

        A level's frame can reach past the upstream's data at that level (by one voxel for
        an upstream pyramid anchored at an odd offset; a frame spanning several channels
        spans the largest), where reads give the fill value 0.  bossDB stores whatever its
        frame holds; here only zeros can be kept there (they read back as written), so a
        write is taken when its voxels past the data are all 0, and refused, writing
        nothing, when any is not."""
        bounds = remote.meta.scale(res).bounds
        inside = box.intersect(bounds)
        if inside != box:
            outside = _outside_nonzero(data, box, inside)
            if outside is not None:
                raise bad_request(INVALID_CUTOUT_ARGS, f"this channel's upstream holds "
                                  f"{bounds} at resolution {res}, less than the coordinate "
                                  "frame there: voxels past it read as 0 and can only be "
                                  f"written as 0, and the write of {box} has {outside} "
                                  "non-zero voxels past it (nothing was written)")
        if not inside.is_empty():
            data = data[inside.slices(box.start)]
            with self.writing(remote):
                remote.write(inside, np.ascontiguousarray(data), res)
        if len(remote.meta.scales) > 1:
            # bossDB marks a DOWNSAMPLED channel NOT_DOWNSAMPLED after a write at any
            # resolution (bossspatialdb/views.py Cutout.post, CutoutToBlack.put): base data
            # leaves the coarser levels stale, a coarser level's write is no longer the
            # downsample of the base; and a job running now may have read the region, or may
            # write this level over it, before or after this write landed (jobs.py)
            note_write(self.catalog, remote.url)

    # -- HTTP caching: write generations and ETags (docs/relay.md, "Behind an HTTP cache") ------
    @staticmethod
    def _generations_dir(config: RelayConfig) -> Path | None:
        if config.generations_path is not None:
            return config.generations_path
        if config.state_path is not None:
            state: Path | None = config.state_path
        elif config.data_root is not None:
            state = config.data_root / ".voxgate-relay-state.json"
        elif config.cache.disk_path is not None:
            state = config.cache.disk_path / "relay-state.json"
        else:
            state = None  # (as Catalog's state path)
        return state.parent / ".voxgate-generations" if state is not None else None

    @contextlib.contextmanager
    def writing(self, remote: CachedRemote) -> Iterator[None]:
        """Wrap every write to ``remote``'s channel: its generation is bumped before the
        upstream write (a relay killed half way leaves a new one) and after it (a response
        computed during the write is never current after it), whether it wrote all, part or
        nothing; the channel's label statistics are dropped."""
        tag = remote.tag
        # (shared with other writers: no cell of the channel enters a disk tier shared by
        # worker processes meanwhile, see shared_cache)
        def admit() -> None:
            # (under the channel's gate: a delete removes the channel's generation under it,
            # so nothing of it is made again by a write that finds it deleted)
            if not self.catalog.live(remote):
                # deleted (by any worker) after this request found it: its store has been
                # moved aside, and its path may already be a new channel's
                raise NotFound("Channel not found: it was deleted before this write began")

        with self.generations.write_lock(tag, admit), self.stats.writing(remote):
            self._made(tag, self.generations.bump(tag))
            try:
                yield
            finally:
                self._made(tag, self.generations.bump(tag))

    def read_live(self, remote: CachedRemote, read: Callable[[], T]) -> T:
        """``read()`` (a read of ``remote``'s channel), refused as the write is (404) when the
        channel was deleted before it finished, in any worker process: a read that reached the
        store after the delete moved it aside read the path a channel created again under the
        name uses, with the deleted channel's metadata (zeros, a decoding error, or the new
        channel's bytes taken for the old dtype).  What it read is never cached: the delete
        closed its Remote."""
        try:
            out = read()
        except Exception:
            if not self.catalog.live(remote):
                raise NotFound("Channel not found: it was deleted while this read ran") from None
            raise
        if not self.catalog.live(remote):
            raise NotFound("Channel not found: it was deleted while this read ran")
        return out

    def _made(self, tag: str, version: str) -> None:
        with self._seen_lock:
            own = self._own.setdefault(tag, set())
            if len(own) >= 100_000:  # writes and no reads: forgotten (the next read drops
                own.clear()          # the channel's cells, which is always safe)
            own.add(version)

    def generation(self, entry: ChannelEntry, remote: CachedRemote) -> str:
        """The channel's write generation now.  When it moved by a bump this relay did not
        make (a write through another relay that shares the generations, or before this relay
        started), the channel's cached cells and label statistics are dropped first, so what
        is read next is at least as new as the generation returned.  (This relay's own writes
        keep its cells current themselves: see :mod:`.cache`.)"""
        return self._look(remote.tag, lambda: [remote, *self.catalog.open_remotes(entry)],
                          lambda: self.catalog.live(remote))

    def freshen(self, remote: CachedRemote) -> None:
        """Look at the generation of ``remote``'s channel before reading it some other way
        than a cutout or chunk (ids, reservations, label statistics, downsampling): a write
        through another worker or relay drops the cells and statistics it made old."""
        tag = remote.tag

        def remotes() -> list[CachedRemote]:
            found = {id(remote): remote}
            for e in list(self.catalog.channels.values()):
                for r in self.catalog.open_remotes(e):
                    if r.tag == tag:
                        found[id(r)] = r
            return list(found.values())

        self._look(tag, remotes, lambda: self.catalog.live(remote))

    def _may_store(self, tag: str) -> bool:
        """Whether the channel of ``tag`` is still at the generation this process last saw
        (give or take its own writes): then what it reads may go into a shared disk tier."""
        # (the gate may be held here: nothing is made, a missing file is a deleted channel's)
        version = self.generations.stored(tag)
        if version is None:
            return False
        with self._seen_lock:
            seen = self._seen.get(tag)
            own = set(self._own.get(tag, ()))
        return seen is not None and (seen == version or only_own(seen, version, own))

    def _look(self, tag: str, remotes: Callable[[], list[CachedRemote]],
              live: Callable[[], bool]) -> str:
        # (a channel deleted meanwhile gets a throwaway generation: its file is not made again,
        # nor is anything of it kept here; the read answers 404, see read_live)
        version = self.generations.current(tag, live)
        if version.startswith("gone-"):
            return version
        with self._seen_lock:
            seen = self._seen.get(tag)
            own = set(self._own.get(tag, ()))
        if seen == version:
            return version
        if seen is not None:
            fresh = only_own(seen, version, own)
        else:  # the first look in this process: kept in memory (no other relay writes), or
            # the disk tier's cells are current for it
            fresh = self.generations.directory is None or self.catalog.state.get(
                "generations_seen", {}).get(tag) == version
        if not fresh:
            for r in {id(r): r for r in remotes()}.values():
                r.invalidate()
            self.stats.drop(tag)
        with self._seen_lock:
            now = self._seen.get(tag)
            if now is None or not before_generation(version, now):  # never back to an older one
                self._seen[tag] = version
                mine = self._own.get(tag)
                if mine is not None:
                    mine -= {v for v in mine if not before_generation(version, v)}
        self._remember_seen(tag, version)
        return version

    def _remember_seen(self, tag: str, version: str) -> None:
        """Keep the generation the disk tier's cells are current for across restarts."""
        if self.generations.directory is None or self.cache.disk is None:
            return
        cat = self.catalog
        with cat.lock:
            seen = cat.state.setdefault("generations_seen", {})
            if seen.get(tag) != version:
                seen[tag] = version
                cat.save()

    @staticmethod
    def etag(remote: CachedRemote, version: str, *request: object) -> str:
        """A strong ETag: the channel, its generation, the metadata it is read with (and the
        options it is opened with) and the request's normalized region, scale and encoding
        (what the response's bytes are a function of).  (The metadata: a worker process
        still on the upstream's old metadata after another one saw it change, and bumped the
        generation, answers the same request with other bytes.)"""
        # (and the credential the upstream is read with, when there is one: a client whose
        # forwarded token the upstream refuses must not have another token's response
        # confirmed as current, 304, by an HTTP cache that keeps one copy per URL)
        # (and the channel's options when it has any: two channels of one store at two time
        # points answer one request with other bytes)
        head = [remote.tag, version, remote.meta_key] + (
            [remote.credential] if remote.credential else []) + (
            [remote.options_key] if remote.options_key else [])
        text = json.dumps([*head, *(str(p) for p in request)])
        return '"vg-' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'

    @staticmethod
    def not_modified(request: Request, etag: str) -> bool:
        """Whether the request's If-None-Match names ``etag`` (weak comparison, RFC 9110)."""
        header = request.headers.get("if-none-match")
        if not header:
            return False
        tags = [t.strip() for t in header.split(",")]
        return "*" in tags or etag in [t[2:] if t.startswith("W/") else t for t in tags]

    def cache_headers(self, entry: ChannelEntry, etag: str) -> dict[str, str]:
        """Headers of a cacheable response: any cache may store it but must ask again (with
        If-None-Match) before each use; nginx reads X-Accel-Expires (stored, already
        expired), since it takes ``no-cache`` for "do not store".  A read-only channel's
        responses may be reused for ``read_only_max_age`` seconds when that is set and no
        writable channel here has its upstream: no write goes through this relay to them."""
        age = self.config.read_only_max_age
        if age > 0 and not entry.writable and not any(
                e.writable and store_key(e.upstream_url) == store_key(entry.upstream_url)
                for e in list(self.catalog.channels.values())):
            return {"ETag": etag, "X-Accel-Expires": str(age),
                    "Cache-Control": f"public, max-age={age}"}
        return {"ETag": etag, "X-Accel-Expires": "@1", "Cache-Control": "public, no-cache"}

    # -- server-side downsampling (bossDB's /v1/downsample/) ------------------------------------
    # (the status is kept in the state file, so every worker process answers the same)
    def downsample_status(self, entry: ChannelEntry, remote: CachedRemote) -> str:
        state = job_status(self.catalog, remote.url)
        if state is not None:
            return state
        return "DOWNSAMPLED" if len(remote.meta.scales) > 1 else "NOT_DOWNSAMPLED"

    def start_downsample(self, entry: ChannelEntry, remote: CachedRemote) -> None:
        """Recompute every coarser level from level 0 in the background, through the cache
        (so cached cells of those levels are replaced as they are written); on an upstream
        that keeps its own (a DVID labelmap) nothing is written (jobs.run_job)."""
        with self._jobs_lock, self.catalog.lock:  # (one job per channel in every worker)
            if job_status(self.catalog, remote.url) in ("QUEUED", "IN_PROGRESS"):
                raise BossHTTPError(409, 2006, "a downsample of this channel is already running")
            job_id = uuid.uuid4().hex
            set_job_status(self.catalog, remote.url, "IN_PROGRESS", job=job_id)

        def job() -> None:
            try:
                self.freshen(remote)
                with self.writing(remote):
                    run_job(remote)  # (nothing to write on an upstream that keeps its scales)
            except Exception as exc:  # the job's outcome is its status; the log says why
                log.warning("downsample of %s failed: %s", redact(remote.url),
                            redact(str(exc)))
                finish_job(self.catalog, remote.url, ok=False, job=job_id)
            else:
                if finish_job(self.catalog, remote.url, ok=True, job=job_id) == "NOT_DOWNSAMPLED":
                    log.info("downsample of %s ended NOT_DOWNSAMPLED: level 0 was written "
                             "while it ran", redact(remote.url))

        threading.Thread(target=job, name="voxgate-downsample", daemon=True).start()

    def _blocks(self, remote: CachedRemote, box: Box, res: int) -> list[Box]:
        from ..geometry import grow_block

        grid = remote.grid(res)
        block = grow_block(grid, remote.meta.dtype.itemsize, box.shape, SCAN_BYTES)
        # (on the cells' grid: a block never splits a cell, nor an upstream block)
        return [cell.intersect(box) for _, cell in chunk_boxes(box, block,
                                                               remote.cell_bounds(res))]

    def ids_in(self, remote: CachedRemote, box: Box, res: int) -> list[int]:
        bounds = remote.meta.scale(res).bounds
        if box.contains(bounds):  # the whole channel: one pass, cached (bounding boxes too)
            return self.stats.ids(remote, res)
        self.freshen(remote)
        inside = box.intersect(bounds)
        if inside.is_empty():
            return []
        # (as arrays, capped like the whole channel's pass, a signed channel's ids as uint64
        # as its cutouts serve them: see relay/stats.py)
        found = region_ids(lambda b: remote.read(b, res), self._blocks(remote, inside, res),
                           remote.url, res, self.stats.max_ids)
        return [int(v) for v in found]

    def reserve(self, entry: ChannelEntry, count: int, token: str | None = None) -> int:
        key = "/".join(entry.key)
        cat = self.catalog
        remote = self.remote(entry, token)
        if has_capability(remote.upstream, Capability.RESERVE_IDS):
            # a store with an id counter of its own (a DVID labelmap's nextlabel, bossDB's or
            # another relay's reserve) hands the ids out: its other clients reserve from the
            # same counter, so a range kept here would collide with theirs
            return int(remote.upstream.reserve_ids(count))  # type: ignore[attr-defined]
        with self._reserve_lock:
            with cat.lock:
                known = key in cat.state["reserved"]
            top = 0
            if not known:
                # the first reservation starts above every id already in the volume (read
                # outside the state's lock: other workers' state changes go on meanwhile)
                self.freshen(remote)
                for block in self._blocks(remote, remote.meta.scale(0).bounds, 0):
                    top = max(top, int(remote.read(block, 0).max(initial=0)))
            # read, advanced and saved under the state file's lock: two workers reserving at
            # once get disjoint ranges
            with cat.lock:
                reserved = cat.state["reserved"]
                if key not in reserved:
                    reserved[key] = top + 1
                start = int(reserved[key])
                _check_reservable(remote.meta.dtype, start, count)  # (nothing saved if not)
                reserved[key] = start + count
                cat.save()
                return start

    def create_local_channel(self, c: str, e: str, ch: str, body: dict[str, Any],
                             user: str) -> ChannelEntry:
        root = self.config.data_root
        if root is None:
            raise bad_request(INVALID_POST_ARGUMENT, "this relay has no --data-root, so it cannot "
                              "create channels; start it with --data-root DIR")
        cat = self.catalog
        exp = cat.state["experiments"].get(f"{c}/{e}")
        if exp is None:
            raise bad_request(INVALID_POST_ARGUMENT, f"experiment {c}/{e} is derived from "
                              "upstream volumes; new channels go into experiments created "
                              "through the API")
        # a stored frame is read without opening every upstream (one dead upstream must not
        # stop channels being created elsewhere); a derived one needs its channels' metadata
        stored_frame = cat.state["coords"].get(exp["coord_frame"])
        frame = dict(stored_frame) if stored_frame is not None else \
            cat.coord_frames()[exp["coord_frame"]]
        meta = local_channel_meta(frame, exp, body)
        path = local_store(root, c, e, ch)
        url = f"zarr://{path}"
        # blosc-lz4, as bossDB keeps its cuboids in a fast blosc codec: blosc-zstd (zarr's
        # default) made every cutout POST spend about 3x as long compressing (measured)
        entry = ChannelEntry(c, e, ch, url, local=True)
        key = f"{c}/{e}/{ch}"
        # the check, the store's creation and the record under one lock, which every worker
        # process shares: the same name POSTed through two workers at once is created once
        with cat.lock:
            if ch in cat.channel_names(c, e):
                raise bad_request(RESOURCE_EXISTS, f"Channel {ch} already exists in {c}/{e}")
            if path.exists():
                raise bad_request(RESOURCE_EXISTS, f"{path.name} exists in the data root of "
                                  f"this relay but is not a channel (a volume put there while "
                                  f"it runs is served after a restart); remove it, or restart "
                                  f"the relay to serve it as channel {ch}")
            create_remote(url, meta, exist_ok=False, compression="blosc-lz4")
            undeleted = cat.state["deleted"].count(key)  # (put back if the save fails)
            jobs = cat.state.setdefault("downsample", {})
            was_job = jobs.get(url)
            try:
                cat.channels[(c, e, ch)] = entry
                # its incarnation from the start (every worker process reads it from the state)
                cat.state["local_channels"][key] = {"url": url,
                                                    "incarnation": uuid.uuid4().hex}
                cat.state["channels"][key] = {
                    "description": str(body.get("description", "")), "creator": user,
                    "sources": list(body.get("sources", [])),
                    "related": list(body.get("related", [])),
                    "public": bool(body.get("public", False)),
                    "base_resolution": int(body.get("base_resolution", 0)),
                }
                while key in cat.state["deleted"]:
                    cat.state["deleted"].remove(key)
                # NOT_DOWNSAMPLED, as a new bossDB channel (its coarser levels are empty; read
                # from the levels, it said DOWNSAMPLED, and a non-admin's first downsample
                # was refused 409 "already downsampled")
                jobs[url] = {"status": "NOT_DOWNSAMPLED"}
                cat.save()
            except BaseException:
                # the state could not be saved: the channel was not created, and its store goes
                if was_job is None:
                    jobs.pop(url, None)
                else:
                    jobs[url] = was_job
                cat.channels.pop((c, e, ch), None)
                cat.state["local_channels"].pop(key, None)
                cat.state["channels"].pop(key, None)
                cat.state["deleted"] += [key] * undeleted
                shutil.rmtree(path, ignore_errors=True)
                raise
        return entry

    def delete_local_channel(self, entry: ChannelEntry) -> None:
        cat = self.catalog
        key = "/".join(entry.key)
        tag = cat.cache_tag(entry)  # its incarnation's: taken while it still has one
        # no write to it is in progress in any worker process while its store is moved aside,
        # and a write that begins later finds it deleted (Relay.writing): none lands in the
        # store's path, which a channel created again under this name uses next.  (Taken
        # before the catalog's lock, as writers do: they hold the write lock, never wait for
        # the catalog's under it.)
        with self.generations.exclusive(CachedRemote.tag_of(tag)), cat.lock:
            cat.channels.pop(entry.key, None)
            cat.state["local_channels"].pop(key, None)
            cat.state["channels"].pop(key, None)
            cat.state["meta"].pop(key, None)
            cat.state["reserved"].pop(key, None)
            # what the workers kept of it (its metadata's digests and changes, the generation
            # its disk cells were current for): one entry per channel ever made, had they
            # stayed; its incarnation's tag is never used again
            cat.forget_meta(*entry.key)
            cat.state.get("generations_seen", {}).pop(CachedRemote.tag_of(tag), None)
            # and its write generation (file, writers' folder, memory): under its gate, with
            # no write in progress, before the delete is saved (a relay stopped in between
            # still serves the channel, with a new nonce); a write that begins later, and a
            # read that finds the file gone, find the channel deleted and make nothing again
            self.generations.forget(CachedRemote.tag_of(tag))
            location = entry.upstream_url.split("://", 1)[1]
            # the store is moved aside (a hidden name the data root's scan skips) and removed
            # after the lock; the move is saved with the delete, so a relay stopped before the
            # store is gone removes it when it starts instead of serving it as a channel again,
            # and a channel created meanwhile under this name has its own store
            hidden = str(Path(location).with_name(f".deleted-{uuid.uuid4().hex}"))
            cat.state.setdefault("removing", {})[hidden] = location
            cat.save()
            if Path(location).exists():
                os.replace(location, hidden)
        # its Remotes closed and its cells dropped from memory and disk; a channel created
        # later under this name is a new incarnation, with a cache identity of its own (and
        # no downsample status of the old one)
        for url in {r.url for r in cat.open_remotes(entry)} | {entry.upstream_url}:
            set_job_status(cat, url, None)
        cat.drop_channel(entry, tag)
        self.forget_generation(CachedRemote.tag_of(tag))
        cat.remove_moved(hidden)

    def forget_generation(self, tag: str) -> None:
        """What this process kept of a deleted incarnation's generation (``tag``: its cells'
        tag): the generation it last saw and its own writes' (the process that deleted it
        removed its files)."""
        with self._seen_lock:
            self._seen.pop(tag, None)
            self._own.pop(tag, None)
        self.generations.forget(tag, files=False)

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cache": self.cache.metrics.snapshot(),
               "memory_bytes_used": self.cache.memory.used,
               "memory_entries": len(self.cache.memory),
               # cells evicted to make room, the share never read (TieredCache.skim)
               "memory_evicted": self.cache.memory.evicted,
               "memory_evicted_unread": self.cache.memory.evicted_unread,
               "channels": len(self.catalog.channels),
               "label_stats": self.stats.metrics(),
               # the admission budget of large cutouts (relay.budget): this process's
               "inflight": self.inflight.metrics(),
               # the figures are this process's: with --workers N, the worker that answered
               "worker": {"pid": os.getpid(), "workers": self.config.workers}}
        if self.cache.disk is not None:
            out["disk_bytes_used"] = self.cache.disk.volume()
        if isinstance(self.cache, SharedDiskCache):
            out["worker"]["cells_not_shared"] = self.cache.not_shared
        return out


def local_channel_meta(frame: dict[str, Any], experiment: dict[str, Any],
                       body: dict[str, Any]) -> VolumeMeta:
    """The VolumeMeta of a channel created through the project service."""
    ctype = body.get("type", "image")
    if ctype not in ("image", "annotation"):
        raise bad_request(INVALID_POST_ARGUMENT, f"type must be image or annotation, got {ctype!r}")
    dtype = body.get("datatype", "uint64" if ctype == "annotation" else "uint8")
    if dtype not in CHANNEL_DATATYPES:
        raise bad_request(INVALID_POST_ARGUMENT,
                          f"datatype must be one of {CHANNEL_DATATYPES}, got {dtype!r}")
    if ctype == "annotation" and dtype != "uint64":
        raise bad_request(INVALID_POST_ARGUMENT, "annotation channels are uint64")
    # level k is bossDB resolution base + k: the frame (resolution 0) divided by 2^(base + k)
    # (spdb project/resource.py get_downsampled_voxel_dims, get_downsampled_extent_dims)
    base = int(body.get("base_resolution", 0))
    factor = boss_unit_to_nm(frame.get("voxel_unit", "nanometers"))
    start = Vec(frame["z_start"], frame["y_start"], frame["x_start"])
    stop = Vec(frame["z_stop"], frame["y_stop"], frame["x_stop"])
    vs = VoxelSize(frame["z_voxel_size"] * factor, frame["y_voxel_size"] * factor,
                   frame["x_voxel_size"] * factor)
    iso = experiment.get("hierarchy_method") == "isotropic"
    scales = []
    for k in range(int(experiment.get("num_hierarchy_levels", 1))):
        fz = 2**(base + k) if iso else 1
        fxy = 2**(base + k)
        f = Vec(fz, fxy, fxy)
        lo = Vec(*(a // g for a, g in zip(start, f, strict=True)))
        hi = Vec(*(-(-b // g) for b, g in zip(stop, f, strict=True)))
        scales.append(Scale(k, hi - lo, Vec(16, 256, 256),
                            VoxelSize(vs.z * fz, vs.y * fxy, vs.x * fxy), lo))
    return VolumeMeta(np.dtype(dtype), tuple(scales),
                      "segmentation" if ctype == "annotation" else "image")


def _check_reservable(dtype: np.dtype[Any], start: int, count: int) -> None:
    """Refuse (400 / INVALID_ARGUMENT) ids ``start`` .. ``start + count - 1`` when the channel's
    upstream dtype cannot hold the last of them: an int32 channel stores ids up to 2**31 - 1,
    and a reserved id is one a client means to write (the write would be refused, code 2001).
    bossDB's annotation channels are uint64 and its counter (spdb reserve_ids, a DynamoDB
    number) has no such check; the relay refuses the whole range, reserving none of it, in
    bossDB's error form, and names how many ids are left."""
    if not np.issubdtype(dtype, np.integer):
        return
    top = int(np.iinfo(dtype).max)
    if start + count - 1 <= top:
        return
    left = max(0, top - start + 1)
    raise bad_request(INVALID_ARGUMENT, (
        f"Cannot reserve {count} ids: this annotation channel's upstream holds {dtype.name}, "
        f"whose largest id is {top}, and the next free id is {start}; "
        + (f"{left} ids are left to reserve" if left else "no ids are left to reserve")))


def _outside_nonzero(data: np.ndarray, box: Box, inside: Box) -> int | None:
    """How many voxels of ``data`` (over ``box``) outside ``inside`` are not 0, or None when
    none is: the slabs around ``inside``, each axis in turn, without copying the array."""
    count = 0
    lo = [0, 0, 0]
    hi = list(box.shape)
    for axis in range(3):
        a = inside.start[axis] - box.start[axis] if not inside.is_empty() else hi[axis]
        b = inside.stop[axis] - box.start[axis] if not inside.is_empty() else hi[axis]
        for s0, s1 in ((lo[axis], a), (b, hi[axis])):
            if s1 > s0:
                sl = [slice(lo[i], hi[i]) for i in range(3)]
                sl[axis] = slice(s0, s1)
                count += int(np.count_nonzero(data[tuple(sl)]))
        lo[axis], hi[axis] = a, b
    return count or None
