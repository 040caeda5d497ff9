"""The files a precomputed layer keeps beside its chunks, served by the precomputed dialect.

A channel whose upstream is a precomputed layer (``precomputed://<location>``) also serves
what the layer's info names: its ``mesh`` directory (legacy and multi-resolution meshes,
sharded or not), ``skeletons``, ``segment_properties`` (and a non-standard ``annotations``
key), and annotation layers kept in a sub-directory of the layer (a directory whose own info
says ``neuroglancer_annotations_v1``), the segment properties directory a mesh or skeleton
info names (relative to its own directory, as Neuroglancer resolves it, if it stays inside the
layer), and the layer's ``provenance`` file (CloudVolume's ``cv.provenance``).  A request names
a file relative to the layer, e.g.
``mesh/info``, ``mesh/12.index`` or ``skeletons/4``; nothing else under the layer's location is
served (no path traversal: ``.``, ``..``, empty parts, backslashes and encoded slashes are
refused).

Files are read from the upstream on each request (they are not cached: meshes are written
beside a layer by other programs, and the relay could not tell a stale one).  What the infos
name (the directories served) is remembered for at most ``INFO_TTL`` seconds, and for a local
layer only while its info files are unchanged (a ``stat`` per request: meshes written beside
it are served by the next request).  Single byte
ranges are served (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``; 206 with Content-Range, 416
when none of it is in the file), as Neuroglancer and CloudVolume read multi-resolution
fragment files and ``.shard`` files by range; a local file is read only where the range is.
The empty range ``[a, a)`` that CloudFiles sends as ``bytes=a-(a-1)`` (``bytes=0--1`` for
``a = 0``; an empty level of detail or fragment) answers 204 with no body, as the file
itself reads (see :func:`parse_range`).
Files that CloudFiles stored compressed (``<name>.gz``, ``.br``, ...) are served decoded, or a
gzip body as stored with ``Content-Encoding: gzip`` when the client accepts gzip and asked for
the whole file.

Replies carry a strong ETag (one for the whole file and every range of one stored version and
representation), ``Cache-Control: public, no-cache`` and ``X-Accel-Expires: @1`` (any cache
may store them and must revalidate each use, as cutouts), and answer ``If-None-Match`` (304)
and ``If-Range``: see :func:`_file_tag`, :func:`_remote_tag` and :class:`Conditions`.  A remote
file's ETag names its storage generation, so a revalidation with it costs the store one
conditional request and no bytes of the file (:meth:`LayerFiles._current_tag`), and
``If-None-Match: *`` one request of at most two bytes (:meth:`LayerFiles._any_tag`).

A remote shard file (``*.shard``: the files of a sharded layer, up to gigabytes each) asked
for whole (no Range, or an If-Range naming another version; nginx's ``proxy_cache`` asks so) is
read in one request when it is smaller than ``REMOTE_STREAM_BYTES`` (found by asking for its
byte at that offset: none there), and otherwise streamed in ranged reads of
``_REMOTE_BLOCK`` bytes, each checked to be of the storage generation of the first (so a shard
is never held whole, and an object rewritten during the stream breaks it off rather than splice
two versions: :meth:`LayerFiles._remote_blocks`).  The store does not tell the size without reading
the object, so such a reply, and its HEAD, has no Content-Length (the body is chunked).
Objects that start as gzip does, and those of a store that gives no generation (an HTTP server
without ETags: nothing could pin the reads to one version), are read whole as before.  A suffix
or open-ended range (``bytes=-n``, ``bytes=a-``) of a shard file that large needs the file's
size for its Content-Range: it is found by ranged reads of one byte (twice as far each time
until one is past the end, then halving the span the end is in) and a read of the last bytes,
all pinned to one generation, and the rest of the range is streamed as a whole file is
(:meth:`LayerFiles._large_range`).  A store seen to ignore Range (it answered a ranged read
with the whole object, which tensorstore drops: an HTTP server such as Python's
``http.server``) is read whole without those probes for ``IGNORED_RANGE_TTL`` seconds: each
would transfer the whole object once more.  A range of a file on such a store is cut from a
whole read of it (the first one, which learns that the store ignores Range, costs the store two
transfers of the file; later ones one): the same bytes, status, Content-Range (with the size,
known from the read), Content-Length and ETag as on a store that serves ranges.  The whole file
is then held in memory for the reply, large shard files too: the store sends all of it for any
range, and tensorstore gives no way to read an object as a stream and keep only some of it.
Other files (an unsharded layer's fragments, manifests, skeletons, annotations: one object's
each, a few MiB at most in practice) are read whole in one request, without that probe (one
more round trip to the store for each of thousands of small files).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import re
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import tensorstore as ts

from ..errors import RemoteNotFoundError, VoxgateError
from ..storage import (
    GZIP_MAGIC,
    SUFFIXES,
    decompress,
    is_local,
    kvstore_spec,
    local_path,
    split_url,
    ts_context,
    ts_errors,
)
from .cache import UpstreamError
from .errors import RESOURCE_NOT_FOUND, BossHTTPError

__all__ = [
    "ANNOTATION_TYPE",
    "DIR_KEYS",
    "Conditions",
    "FileReply",
    "LayerFiles",
    "check_file_path",
    "not_served",
    "is_empty",
    "parse_range",
    "upstream_layer",
]

#: info keys naming a sub-directory of files; the relay's info keeps them as they are
DIR_KEYS = ("mesh", "skeletons", "segment_properties", "annotations")
#: sub-directories whose own info may name a segment properties directory, relative to them
#: (Neuroglancer reads ``segment_properties`` from a mesh or skeleton source's info)
PROPERTY_DIRS = ("mesh", "skeletons")
#: files at the top of a layer served besides its info (CloudVolume reads ``provenance``)
TOP_FILES = ("provenance",)
#: the ``@type`` of an annotation layer's info
ANNOTATION_TYPE = "neuroglancer_annotations_v1"
#: how long a remote upstream's info (and what a sub-directory is) is trusted before it is read
#: again (a local one's is read again as soon as its file changes)
INFO_TTL = 5.0
#: local files larger than this are streamed in blocks instead of read whole
STREAM_BYTES = 16 * 2**20
_BLOCK = 2**20
#: remote files asked for whole of at least this size are streamed in ranged reads, not read
#: in one request (:meth:`LayerFiles._large_reply`)
REMOTE_STREAM_BYTES = 8 * 2**20
#: the size of each ranged read of a streamed remote file (at most ``REMOTE_STREAM_BYTES``)
_REMOTE_BLOCK = 4 * 2**20
#: a large remote file's size is found to within this many bytes before its last ones are read,
#: for a suffix range (:meth:`LayerFiles._measure`)
_TAIL = 2**16
#: how long a store found to ignore Range is read whole without a ranged probe first
#: (:meth:`LayerFiles._ignores_ranges`)
IGNORED_RANGE_TTL = 600.0
_RANGE = re.compile(r"bytes=([0-9]{0,18})-(-1|[0-9]{0,18})")
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|00)", re.IGNORECASE)
_MAX_MEMO = 4096
#: A local file's ETag comes from its (inode, size, modification and change times; the change
#: time, which no program can set back, catches a write whose modification time was restored,
#: as ``cp -p`` and ``rsync -a`` do), and those times from a coarse clock: a same-size write in
#: place in the same tick as the one they record leaves them all as they were.  A file modified
#: or changed less than this before a request gets no ETag, so no cache is ever told 304 for
#: bytes such a write replaced (as remotes/tiff and remotes/hdf5 judge their stamps)
RACY_NS = 2 * 10**9
#: the clock that judges it (tests set it)
_now_ns = time.time_ns
#: a remote file's ETag: ``"vgf-<generation hex>-<variant>-<digest>"`` (see :func:`_remote_tag`)
_REMOTE_TAG = re.compile(r'"vgf-((?:[0-9a-f]{2}){2,128})-(raw|identity|gzip)-([0-9a-f]{24})"')
#: storage generations longer than this (an HTTP server's ETag can be anything) are hashed into
#: the ETag, not written out: a revalidation with it then reads the file (as a local one's)
_MAX_GENERATION = 128


def upstream_layer(url: str) -> str | None:
    """The storage location of a channel's upstream when it is a precomputed layer, else None."""
    scheme, location = split_url(url)
    return location if scheme == "precomputed" else None


def check_file_path(path: str, raw_path: str = "") -> list[str]:
    """The parts of a file path relative to a layer; 400 for one that could leave it."""
    if _ENCODED_SEPARATOR.search(raw_path):
        raise BossHTTPError(400, 1000, "file paths may not contain encoded slashes, backslashes "
                            "or NUL bytes (%2F, %5C, %00); name the file as it is stored, "
                            "e.g. mesh/12:0")
    parts = path.split("/")
    bad = [p for p in parts if p in ("", ".", "..") or "\\" in p or "\x00" in p]
    if bad or path.startswith("/"):
        raise BossHTTPError(400, 1000, f"file path {path!r} is not a path inside the layer: "
                            "'.', '..', empty parts and backslashes are refused; name the file "
                            "as it is stored, e.g. mesh/info or skeletons/12")
    return parts


def parse_range(header: str | None) -> tuple[int | None, int | None] | None:
    """A single byte range ``(first, last)`` (``(None, n)``: the last n bytes), or None when
    there is no Range header or it is not in bytes (then the whole file is served).

    ``(a, a - 1)`` is the empty range ``[a, a)``: CloudFiles (so CloudVolume) turns the
    half-open ``[start, end)`` of an empty level of detail or fragment into
    ``bytes=a-(a-1)``, and into ``bytes=0--1`` when ``a = 0``.  RFC 9110 calls such a range
    invalid and lets a server ignore it (S3: 200 with the whole object) or reject it (nginx:
    416); CloudFiles slices neither, so the first hands CloudVolume the whole file (a whole
    shard, perhaps) and the second makes it retry and raise.  Its only meaning is "no bytes
    at ``a``", what CloudFiles reads from a local file, so :func:`is_empty` ranges answer 204
    with no body.  Other reversed ranges (``bytes=5-2``) stay refused with 416.
    """
    if header is None:
        return None
    text = header.strip()
    if not text.lower().startswith("bytes="):
        return None  # another unit: ignored, as RFC 9110 allows
    text = "bytes=" + text[6:].replace(" ", "")
    m = _RANGE.fullmatch(text)
    if m is None or (not m.group(1) and not m.group(2)):
        raise _unsatisfiable(f"Range {header!r} is not one byte range; send bytes=FIRST-LAST, "
                             "bytes=FIRST- or bytes=-SUFFIX (multiple ranges are not served)")
    first = int(m.group(1)) if m.group(1) else None
    last = int(m.group(2)) if m.group(2) else None
    if last == -1 and first != 0:
        raise _unsatisfiable(f"Range {header!r} is not one byte range; send bytes=FIRST-LAST, "
                             "bytes=FIRST- or bytes=-SUFFIX")
    if first is not None and last is not None and last < first - 1:
        raise _unsatisfiable(f"Range {header!r} ends before it starts")
    return first, last


def is_empty(rng: tuple[int | None, int | None] | None) -> bool:
    """Whether a parsed range is the empty range ``bytes=a-(a-1)`` (see :func:`parse_range`)."""
    return rng is not None and rng[0] is not None and rng[1] == rng[0] - 1


def _unsatisfiable(message: str, size: int | None = None) -> BossHTTPError:
    headers = {"Content-Range": f"bytes */{size}"} if size is not None else {}
    return BossHTTPError(416, 1001, message, headers=headers)


def _span(rng: tuple[int | None, int | None], size: int, header: str) -> tuple[int, int]:
    """``[start, stop)`` of a parsed range in a file of ``size`` bytes (416 if none of it)."""
    first, last = rng
    if first is None:
        assert last is not None
        if last == 0 or size == 0:
            raise _unsatisfiable(f"Range {header!r} asks for no bytes of a {size}-byte file",
                                 size)
        return max(0, size - last), size
    if first >= size:
        raise _unsatisfiable(f"Range {header!r} starts at or after the end of the file "
                             f"({size} bytes)", size)
    return first, size if last is None else min(last + 1, size)


@dataclass(frozen=True)
class Conditions:
    """A request's conditional headers that file replies answer (RFC 9110, section 13)."""

    if_none_match: str | None = None
    if_range: str | None = None

    def not_modified(self, etag: str | None) -> bool:
        """Whether If-None-Match names ``etag`` (weak comparison; ``*``: the file exists)."""
        if not self.if_none_match:
            return False
        tags = [t.strip() for t in self.if_none_match.split(",")]
        return "*" in tags or (etag is not None and etag in [
            t[2:] if t.startswith("W/") else t for t in tags])

    def range_holds(self, etag: str | None) -> bool:
        """Whether a Range stands: no If-Range, or one naming ``etag`` (strong comparison).
        A date never does (there is no Last-Modified), nor a weak tag, nor any tag when the
        reply has none: then the whole file is sent."""
        if self.if_range is None:
            return True
        return etag is not None and self.if_range.strip() == etag


def _file_tag(*identity: object) -> str:
    """A strong ETag of a file reply: a digest of what its bytes are a function of (the
    layer, the file, its stored version: a local file's inode, size and modification time,
    a remote one's storage generation; and the representation served: ``raw`` the stored
    bytes (a range of them too), ``identity`` a compressed variant decoded, ``gzip`` a gzip
    variant as stored with Content-Encoding)."""
    text = json.dumps([str(p) for p in identity])
    return '"vgf-' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


def _validated(headers: dict[str, str], etag: str | None) -> dict[str, str]:
    """``headers`` with ``etag`` (none: the file may be changing, and the reply keeps
    ``no-cache``): any cache may store the reply and must revalidate it on each use, as a
    cutout (nginx reads X-Accel-Expires, an already expired time; it takes ``no-cache`` for "do
    not store").  ``public``: a shared cache may also store the reply to a request that carried
    an Authorization header; each use is revalidated with the requester's own, which the relay
    checks before it answers (files are read with the relay's credentials, never a client's
    token: the same bytes for every client allowed to read the channel)."""
    if etag is not None:
        headers.update({"ETag": etag, "X-Accel-Expires": "@1",
                        "Cache-Control": "public, no-cache"})
    return headers


def _not_modified(headers: dict[str, str], etag: str | None) -> FileReply:
    kept = {k: v for k, v in headers.items() if k in ("Cache-Control", "Vary")}
    return FileReply(304, b"", _validated(kept, etag))


@dataclass
class FileReply:
    """What a file request answers: status, headers and the body (bytes or blocks)."""

    status: int
    body: bytes | Iterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)


def _is_gzip(data: bytes) -> bool:
    """Whether ``data`` is a whole gzip stream (not just bytes that start like one)."""
    if data[:2] != GZIP_MAGIC:
        return False
    try:
        d = zlib.decompressobj(wbits=31)
        d.decompress(data, 0)
        return d.eof
    except zlib.error:
        return False


class LayerFiles:
    """Reads the files of upstream precomputed layers for the routes (one per relay)."""

    def __init__(self, ttl: float = INFO_TTL) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        #: (when, the stat of the file it was read from (local layers), value)
        self._memo: dict[tuple[str, str], tuple[float, tuple[Any, ...], Any]] = {}
        self._stores: dict[str, ts.KvStore] = {}
        #: per local file: (its directory's stat, the variant's suffix found, None for none)
        self._variants: dict[str, tuple[tuple[int, int, int], str | None]] = {}
        #: per remote location: when its store last ignored a Range (answered a ranged read
        #: with the whole object)
        self._no_ranges: dict[str, float] = {}

    # -- what a layer declares ------------------------------------------------------------------
    def _remember(self, key: tuple[str, str], name: str, make: Any) -> Any:
        """``make()``, remembered under ``key``: it is read from the file ``name`` of the layer
        at ``key[0]``, and read again after ``ttl`` seconds, and for a local layer also as
        soon as the file is not the same (its stat: a write beside the layer is seen by the
        next request; on a remote one a request per file and request would be too many)."""
        location = key[0]
        stamp = self._stamp(location, name) if is_local(location) else ()  # (before the read)
        now = time.monotonic()
        with self._lock:
            hit = self._memo.get(key)
            if hit is not None and hit[1] == stamp and now - hit[0] < self.ttl:
                return hit[2]
        value = make()
        with self._lock:
            if len(self._memo) >= _MAX_MEMO:
                self._memo.clear()
            self._memo[key] = (now, stamp, value)
        return value

    def _stamp(self, location: str, name: str) -> tuple[Any, ...]:
        """What identifies the local file ``name`` as it is now (any of its compressed
        variants, in the order they are read): a file written again (by rename or in place)
        or one that appeared or went away has another.

        Two stats when its directory is as it was (a variant appearing, going away or renamed
        over changes the directory's mtime): the directory and the variant found last time;
        all the variants only when the directory changed (on a network file system each stat
        is a round trip, and a request looks at up to three infos)."""
        base = os.path.join(local_path(location), *name.split("/"))
        try:
            d = os.stat(os.path.dirname(base))
        except OSError:
            return ()
        folder = (d.st_ino, d.st_mtime_ns, d.st_ctime_ns)
        known = self._variants.get(base)
        suffixes: tuple[str, ...] = (*SUFFIXES, "")
        if known is not None and known[0] == folder:
            if known[1] is None:
                return (folder,)  # (none of them, and none appeared)
            suffixes = (known[1],)
        for suffix in suffixes:
            try:
                st = os.stat(base + suffix)
            except OSError:
                continue
            if len(self._variants) >= _MAX_MEMO:
                self._variants.clear()
            self._variants[base] = (folder, suffix)
            return (folder, suffix, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        self._variants[base] = (folder, None)
        return (folder,)  # (none of them: it appearing changes the stamp too)

    def _read_info(self, location: str, name: str = "info") -> dict[str, Any] | None:
        data = self._get_whole(location, name)
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def layer_info(self, location: str) -> dict[str, Any]:
        """The upstream layer's info as stored now (read again after ``ttl`` seconds, and on a
        local layer as soon as the file changed)."""
        info = self._remember((location, "info"), "info", lambda: self._read_info(location))
        if info is None:
            raise RemoteNotFoundError("the upstream layer has no readable info file")
        return dict(info)

    def kept_keys(self, location: str, fallback: Mapping[str, Any]) -> dict[str, Any]:
        """The info keys naming file directories, to add to the relay's info of the layer.

        Read from the upstream's info as it is now (so meshes written while the relay runs
        show up); ``fallback`` (the keys the upstream had when it was opened) when that cannot
        be read, so an upstream that is down still gets the info it had.
        """
        try:
            info = self.layer_info(location)
        except VoxgateError:
            info = dict(fallback)
        return {k: info[k] for k in DIR_KEYS if isinstance(info.get(k), str)}

    def directories(self, location: str) -> list[str]:
        """The sub-directories the layer's info names (``mesh``, ``skeletons``, ...), and the
        segment properties directories the infos of its mesh and skeleton directories name."""
        kept = self.kept_keys(location, {})
        out: list[str] = []
        for value in kept.values():
            name = _inside_layer("", value)
            if name is not None and name not in out:
                out.append(name)
        for key in PROPERTY_DIRS:
            base = _inside_layer("", kept[key]) if key in kept else None
            if base is None:
                continue
            value = self._sub_info_key(location, base, "segment_properties")
            name = _inside_layer(base, value) if value is not None else None
            if name is not None and name not in out:
                out.append(name)
        return out

    def _sub_info_key(self, location: str, directory: str, key: str) -> str | None:
        """A string key of ``directory/info`` (None when absent or unreadable)."""
        def look() -> str | None:
            try:
                info = self._read_info(location, f"{directory}/info")
            except VoxgateError:
                return None
            value = info.get(key) if info is not None else None
            return value if isinstance(value, str) else None

        found: str | None = self._remember((location, f"key:{directory}:{key}"),
                                           f"{directory}/info", look)
        return found

    def is_annotation_dir(self, location: str, name: str) -> bool:
        """Whether ``location/name`` is an annotation layer (its info says so)."""
        def look() -> bool:
            info = self._read_info(location, f"{name}/info")  # one kvstore per layer
            return info is not None and info.get("@type") == ANNOTATION_TYPE

        return bool(self._remember((location, "ann:" + name), f"{name}/info", look))

    def served_dir(self, location: str, parts: list[str]) -> str | None:
        """The directory a file path lies in, if the layer serves it, else None (``""`` for
        the files served at the top of the layer, :data:`TOP_FILES`)."""
        if len(parts) == 1 and parts[0] in TOP_FILES:
            return ""
        for d in self.directories(location):
            dparts = d.split("/")
            if len(parts) > len(dparts) and parts[: len(dparts)] == dparts:
                return d
        if len(parts) >= 2 and self.is_annotation_dir(location, parts[0]):
            return parts[0]
        return None

    # -- reading files --------------------------------------------------------------------------
    def _store(self, location: str) -> ts.KvStore:
        with self._lock:
            kv = self._stores.get(location)
        if kv is None:
            with ts_errors("opening the upstream layer"):
                kv = ts.KvStore.open(kvstore_spec(location), context=ts_context()).result()
            with self._lock:
                self._stores.setdefault(location, kv)
        return kv

    def _get_whole(self, location: str, name: str) -> bytes | None:
        """A file's stored bytes, decoded (local compressed variants, gzip bodies), or None."""
        if is_local(location):
            found = self._local(location, name)
            if found is None:
                return None
            path, suffix = found
            data = _read_local(path, 0, None)
            return decompress(data, suffix, name) if suffix else data
        got = self._remote_read(location, name, None)
        if got is None:
            return None
        return gzip.decompress(got) if _is_gzip(got) else got

    @staticmethod
    def _local(location: str, name: str) -> tuple[str, str] | None:
        """(path, compression suffix) of a local file, CloudFiles' compressed variants first."""
        base = os.path.join(local_path(location), *name.split("/"))
        for suffix in (*SUFFIXES, ""):
            if os.path.isfile(base + suffix):
                return base + suffix, suffix
        return None

    def _remote_read(self, location: str, name: str, byte_range: slice | None) -> bytes | None:
        got = self._remote_get(location, name, byte_range)
        return None if got is None else got[0]

    def _remote_get(self, location: str, name: str,
                    byte_range: slice | None) -> tuple[bytes, bytes | None] | None:
        """(the bytes, the storage generation they are of: None when the store gives none,
        e.g. an HTTP server without a strong ETag), or None when the file is absent."""
        try:
            with ts_errors(f"reading {name} of the upstream layer"):
                kv = self._store(location)
                result = (kv.read(name) if byte_range is None
                          else kv.read(name, byte_range=byte_range)).result()
        except VoxgateError as exc:
            self._note_ignored(location, exc)
            raise
        if result.state != "value":
            return None
        generation = bytes(result.stamp.generation)
        # (tensorstore's first byte is a flag: nothing after it is no generation)
        return bytes(result.value), generation if len(generation) > 1 else None

    def _note_ignored(self, location: str, exc: Exception) -> None:
        """Remember that ``location``'s store ignored a Range, when ``exc`` says so (tensorstore
        received the whole object for a ranged read, and dropped it)."""
        if _ignored(exc):
            with self._lock:
                self._no_ranges[location] = time.monotonic()

    def _ignores_ranges(self, location: str) -> bool:
        """Whether ``location``'s store ignored a Range in the last ``IGNORED_RANGE_TTL``
        seconds: a ranged probe of it (the size probe of a shard file asked for whole, a
        two-byte one) would transfer the whole object, and the file is read whole after it."""
        when = self._no_ranges.get(location)
        return when is not None and time.monotonic() - when < IGNORED_RANGE_TTL

    def read(self, location: str, name: str, *, range_header: str | None, gzip_ok: bool,
             head: bool, conditions: Conditions | None = None) -> FileReply | None:
        """The reply for ``name`` (a checked path relative to the layer), None if absent."""
        rng = parse_range(range_header)
        cond = conditions or Conditions()
        headers = {"Accept-Ranges": "bytes", "Vary": "Accept-Encoding",
                   "Cache-Control": "no-cache",
                   "Content-Type": "application/json"
                   if name.rsplit("/", 1)[-1] == "info" or name in TOP_FILES
                   else "application/octet-stream"}
        try:
            if is_empty(rng):
                return self._empty_reply(location, name, rng, headers)
            if is_local(location):
                return self._read_local_file(location, name, rng, range_header or "", gzip_ok,
                                             head, headers, cond)
            return self._read_remote_file(location, name, rng, range_header or "", gzip_ok,
                                          head, headers, cond)
        except OSError as exc:
            raise UpstreamError(f"reading {name} of the upstream layer failed: "
                                f"{exc.strerror or exc}") from exc

    def _empty_reply(self, location: str, name: str, rng: tuple[int | None, int | None] | None,
                     headers: dict[str, str]) -> FileReply | None:
        """204 with no body for the empty range of a file that exists (None if it does not):
        no Content-Range can name zero bytes, and no-store keeps caches from taking the empty
        answer for the file (nor does it carry an ETag or answer conditions)."""
        if is_local(location):
            if self._local(location, name) is None:
                return None
        else:
            assert rng is not None and rng[0] is not None
            try:
                if self._remote_read(location, name, slice(rng[0], rng[0])) is None:
                    return None
            except VoxgateError as exc:  # starts past the end: the file is there
                if "OUT_OF_RANGE" not in str(exc):
                    raise
        headers["Cache-Control"] = "no-store"
        return FileReply(204, b"", headers)

    def _read_local_file(self, location: str, name: str, rng: tuple[int | None, int | None] | None,
                         header: str, gzip_ok: bool, head: bool, headers: dict[str, str],
                         cond: Conditions) -> FileReply | None:
        """The reply of a local file: its ETag from the stat of the file it reads (the same
        open file), checked again after the read; a file changed during the read is read
        again, once."""
        for final in (False, True):
            found = self._local(location, name)
            if found is None:
                return None
            path, suffix = found
            reply = self._local_reply(location, name, path, suffix, rng, header, gzip_ok, head,
                                      dict(headers), cond, final)
            if reply is not None:
                return reply
        raise AssertionError("unreachable")

    def _local_reply(self, location: str, name: str, path: str, suffix: str,
                     rng: tuple[int | None, int | None] | None, header: str, gzip_ok: bool,
                     head: bool, headers: dict[str, str], cond: Conditions,
                     final: bool) -> FileReply | None:
        """One try of :meth:`_read_local_file`; None when the file changed while it was read
        (and this is not the ``final`` try: then it is served without an ETag)."""
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            version = _version(st)

            def tag(variant: str) -> str | None:
                if _now_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS:
                    return None  # (racily clean: see RACY_NS)
                return _file_tag("file", location, name, *version, suffix, variant)

            decoded = "identity" if suffix else "raw"  # what ranges are of
            if rng is not None and cond.if_range is not None and not cond.range_holds(
                    tag(decoded)):
                rng = None  # If-Range names another version: the whole file
            variant = "gzip" if suffix == ".gz" and gzip_ok and rng is None else decoded
            etag = tag(variant)
            if cond.not_modified(etag):
                return _not_modified(headers, etag)
            if variant == "gzip":  # as stored: the client decodes it
                data = f.read()
                reply = FileReply(200, b"" if head else data,
                                  {**headers, "Content-Encoding": "gzip",
                                   "Content-Length": str(len(data))})
            elif suffix:
                reply = _reply_from_bytes(decompress(f.read(), suffix, name), rng, header, head,
                                          headers)
            else:
                reply = _reply_from_file(f, path, st, rng, header, head, headers)
            if etag is None or head or not isinstance(reply.body, bytes):
                # (a streamed body is read after the headers are sent: a write during it can
                # only be seen by the next revalidation, whose ETag then differs)
                return FileReply(reply.status, reply.body, _validated(reply.headers, etag))
            after = _version(os.fstat(f.fileno()))
        if after == version:
            return FileReply(reply.status, reply.body, _validated(reply.headers, etag))
        if not final:
            return None
        if reply.status == 206 and cond.if_range is not None:
            raise UpstreamError(f"{name} of the upstream layer was written while it was read, "
                                "twice; ask again")
        return reply  # (what was read, labelled with no version)

    def _read_remote_file(self, location: str, name: str,
                          rng: tuple[int | None, int | None] | None, header: str, gzip_ok: bool,
                          head: bool, headers: dict[str, str],
                          cond: Conditions) -> FileReply | None:
        """The reply of a remote file: its ETag from the storage generation the store read it
        at (no ETag when it gives none).  If-None-Match with a tag of the file still current
        is answered 304 without reading the file (:meth:`_current_tag`; ``*``:
        :meth:`_any_tag`); a large file asked for whole is streamed (:meth:`_large_reply`)."""
        if cond.if_none_match:
            # (with If-Range too: the tag found current is that of the reply when no Range
            # was sent, or when If-Range names it, so the Range stands)
            current = self._current_tag(location, name, rng, gzip_ok, cond.if_none_match)
            if current is None and "*" in [t.strip() for t in cond.if_none_match.split(",")]:
                found = self._any_tag(location, name, rng)
                if found is not None and (rng is None or cond.range_holds(found[0])):
                    return _not_modified(headers, found[0])
            if current is not None and (rng is None or cond.range_holds(current)):
                return _not_modified(headers, current)
        if rng is not None and None in rng and name.endswith(".shard"):
            large = self._large_range(location, name, rng, header, head, headers, cond)
            if large is not None:
                return large
        got: tuple[bytes, int | None, bytes | None] | None = None
        if rng is not None and rng[0] is not None and not self._ignores_ranges(location):
            try:
                got = self._remote_range(location, name, rng, header)
            except VoxgateError as exc:
                if not _ignored(exc):
                    raise
                # (the store sent the whole object, which tensorstore dropped: it is read
                # whole below and the range cut from it, and later ones go there at once)
            else:
                if got is None:
                    return None
        if got is not None:
            assert rng is not None and rng[0] is not None
            data, total, generation = got
            etag = _remote_tag(location, name, generation, "raw")
            if cond.range_holds(etag):
                if cond.not_modified(etag):
                    return _not_modified(headers, etag)
                shown = "*" if total is None else str(total)
                headers.update({"Content-Range": f"bytes {rng[0]}-{rng[0] + len(data) - 1}/"
                                f"{shown}", "Content-Length": str(len(data))})
                return FileReply(206, b"" if head else data, _validated(headers, etag))
            rng = None  # If-Range names another version: the whole file
        if rng is None and name.endswith(".shard"):
            large = self._large_reply(location, name, head, headers, cond)
            if large is not None:
                return large
        whole = self._remote_get(location, name, None)
        if whole is None:
            return None
        data, generation = whole
        if rng is not None and rng[0] is not None:
            # a store that ignores Range: the range from a first byte cut from the whole file,
            # of the stored bytes (``raw``) as the ranged reads of other stores are, and with
            # the file's size in Content-Range (416 says ``bytes */size``)
            etag = _remote_tag(location, name, generation, "raw")
            if cond.range_holds(etag):
                if cond.not_modified(etag):
                    return _not_modified(headers, etag)
                return _reply_from_bytes(data, rng, header, head, _validated(headers, etag))
            rng = None  # If-Range names another version: the whole file
        stored_gzip = _is_gzip(data)
        variant = "identity" if stored_gzip else "raw"  # what ranges are of
        if rng is not None and not cond.range_holds(
                _remote_tag(location, name, generation, variant)):
            rng = None
        if stored_gzip and gzip_ok and rng is None:
            variant = "gzip"
        etag = _remote_tag(location, name, generation, variant)
        if cond.not_modified(etag):
            return _not_modified(headers, etag)
        if variant == "gzip":
            return FileReply(200, b"" if head else data,
                             _validated({**headers, "Content-Encoding": "gzip",
                                         "Content-Length": str(len(data))}, etag))
        if stored_gzip:
            data = gzip.decompress(data)
        return _reply_from_bytes(data, rng, header, head, _validated(headers, etag))

    def _large_reply(self, location: str, name: str, head: bool, headers: dict[str, str],
                     cond: Conditions) -> FileReply | None:
        """The reply of a whole remote file of ``REMOTE_STREAM_BYTES`` or more: streamed in
        blocks pinned to the generation of the first (:meth:`_remote_blocks`), with no
        Content-Length (the store does not tell the size without reading the object).  None
        (the caller reads the file whole, as it did) for a smaller file, one that is absent,
        one whose store gives no generation, one stored gzip (whether the whole is a gzip
        stream, and so the reply's representation, is known only by reading it all), or when
        the probe fails (a store that ignores Range, an error the whole read then reports).

        One request of one byte tells whether the file is that large (OUT_OF_RANGE: it is
        not); then the first block is read (two bytes for a HEAD, whose reply carries the
        ETag and no Content-Length)."""
        if self._large_generation(location, name) is None:
            return None
        try:
            got = self._remote_get(location, name, slice(0, 2 if head else _REMOTE_BLOCK))
        except VoxgateError:
            return None
        if got is None or got[0][:2] == GZIP_MAGIC:
            return None
        first, generation = got
        if generation is None:
            return None
        etag = _remote_tag(location, name, generation, "raw")
        if cond.not_modified(etag):
            return _not_modified(headers, etag)
        _validated(headers, etag)
        if head:  # (a body of blocks: a Response of b"" would say Content-Length: 0)
            return FileReply(200, iter(()), headers)
        return FileReply(200, self._remote_blocks(location, name, generation, first), headers)

    def _large_generation(self, location: str, name: str) -> bytes | None:
        """The storage generation of a remote file of ``REMOTE_STREAM_BYTES`` or more, from one
        request of its byte at that offset; None when there is none (OUT_OF_RANGE: it is
        smaller), the file is absent, its store gives no generation, or the probe fails.  No
        request on a store that ignores Range (:meth:`_ignores_ranges`): the probe would
        transfer the whole file, which is then read again."""
        if self._ignores_ranges(location):
            return None
        stream = REMOTE_STREAM_BYTES
        try:
            probe = self._remote_get(location, name, slice(stream - 1, stream))
        except VoxgateError:
            return None
        return None if probe is None else probe[1]

    def _large_range(self, location: str, name: str, rng: tuple[int | None, int | None],
                     header: str, head: bool, headers: dict[str, str],
                     cond: Conditions) -> FileReply | None:
        """The reply of a suffix or open-ended range (``bytes=-n``, ``bytes=a-``) of a remote
        file of ``REMOTE_STREAM_BYTES`` or more, whose Content-Range needs the file's size: the
        store does not tell it without reading the object, so it is found by ranged reads of
        one byte, and the last bytes read (:meth:`_measure`); the rest of the range is streamed
        in ranged reads (:meth:`_span_blocks`), all of the storage generation of the first.
        None (the caller serves it as before: the whole file read, or all from ``a``) for a
        smaller file, one absent, one whose store gives no generation, a suffix of an object
        that starts as gzip does (ranges of the whole are of the decoded bytes), or when a
        read fails before the reply is made."""
        generation = self._large_generation(location, name)
        if generation is None:
            return None
        etag = _remote_tag(location, name, generation, "raw")
        if not cond.range_holds(etag):
            return self._large_reply(location, name, head, headers, cond)
        if cond.not_modified(etag):
            return _not_modified(headers, etag)
        suffix = rng[0] is None
        try:
            if suffix and self._pinned(location, name, slice(0, 2),
                                              generation) == GZIP_MAGIC:
                return None
            size, tail = self._measure(location, name, generation, REMOTE_STREAM_BYTES,
                                       _TAIL if suffix else _REMOTE_BLOCK)
        except VoxgateError:
            return None
        start, stop = _span(rng, size, header)  # (416 when it starts at or after the end)
        headers.update({"Content-Range": f"bytes {start}-{stop - 1}/{size}",
                        "Content-Length": str(stop - start)})
        _validated(headers, etag)
        at = size - len(tail)  # (where the last bytes read start)
        if head:
            return FileReply(206, b"", headers)
        if start >= at:
            return FileReply(206, tail[start - at:], headers)
        return FileReply(206, self._span_blocks(location, name, generation, start, at, tail),
                         headers)

    def _measure(self, location: str, name: str, generation: bytes, known: int,
                 window: int) -> tuple[int, bytes]:
        """(the size of the remote file at ``generation``, known to be at least ``known``; its
        last bytes, fewer than ``window``): reads of one byte at offsets ever further past
        ``known`` until one is past the end, then halving the span the end is in down to
        ``window`` bytes (OUT_OF_RANGE: past the end; each byte read must be of
        ``generation``), then one read of the rest from the last offset found in the file.
        UpstreamError when the file is no longer at ``generation``."""
        low, high, step = known, 0, _REMOTE_BLOCK
        while not high:  # (the file holds its byte at low - 1, and none at high - 1)
            if self._pinned(location, name, slice(low + step - 1, low + step),
                            generation) is None:
                high = low + step
            else:
                low, step = low + step, 2 * step
        while high - low > window:
            middle = (low + high) // 2
            if self._pinned(location, name, slice(middle - 1, middle), generation) is None:
                high = middle
            else:
                low = middle
        tail = self._pinned(location, name, slice(low, None), generation)
        if tail is None:  # (none from low on: the file ends there, if it is still that version)
            if not self._still_at(location, name, generation, False):
                raise UpstreamError(f"{name} of the upstream layer was written while it was "
                                    "read")
            tail = b""
        return low + len(tail), tail

    def _span_blocks(self, location: str, name: str, generation: bytes, start: int, stop: int,
                     tail: bytes) -> Iterator[bytes]:
        """Bytes ``[start, stop)`` of the remote file in ranged reads of ``_REMOTE_BLOCK``
        bytes, each of ``generation``, then ``tail`` (its bytes from ``stop`` to the end, read
        at ``generation``): a read of another version, or one past the end (the file was
        rewritten shorter), raises, so the response breaks off (as :meth:`_remote_blocks`)."""
        while start < stop:
            block = self._pinned(location, name, slice(start, min(start + _REMOTE_BLOCK, stop)),
                                 generation)
            if block is None:
                raise UpstreamError(f"{name} of the upstream layer was written while it was "
                                    "streamed; the reply was broken off")
            start += len(block)
            yield block
            del block
        if tail:
            yield tail

    def _remote_blocks(self, location: str, name: str, generation: bytes,
                       first: bytes) -> Iterator[bytes]:
        """The remote file from ``first`` (its first block, read at ``generation``) on, in
        ranged reads of ``_REMOTE_BLOCK`` bytes, each of ``generation``: a read of another
        (the object was rewritten or deleted during the stream) raises, so the response
        breaks off (no cache keeps a body cut short) rather than splice two versions under
        one ETag.  A read past the end (OUT_OF_RANGE) is followed by one of the rest; the end
        itself (the rest is empty) is confirmed by a conditional request that the file is
        still at ``generation``."""
        start = len(first)
        yield first
        del first
        while True:
            block = self._pinned(location, name, slice(start, start + _REMOTE_BLOCK),
                                 generation)
            if block is None:
                break
            start += len(block)
            yield block
            del block
        rest = self._pinned(location, name, slice(start, None), generation)
        if rest is None:
            if not self._still_at(location, name, generation, False):
                raise UpstreamError(f"{name} of the upstream layer was written while it was "
                                    "streamed; the reply was broken off")
            return
        if rest:
            yield rest

    def _pinned(self, location: str, name: str, byte_range: slice,
                generation: bytes) -> bytes | None:
        """The bytes of ``byte_range`` of a remote file at ``generation``; None when the range
        is not all in the file (OUT_OF_RANGE); UpstreamError when the file is no longer at
        ``generation`` (absent, or the bytes read are of another)."""
        try:
            got = self._remote_get(location, name, byte_range)
        except VoxgateError as exc:
            if "OUT_OF_RANGE" not in str(exc):
                raise
            return None
        if got is None or got[1] != generation:
            raise UpstreamError(f"{name} of the upstream layer was written while it was "
                                "streamed; the reply was broken off")
        return got[0]

    def _any_tag(self, location: str, name: str,
                 rng: tuple[int | None, int | None] | None) -> tuple[str | None] | None:
        """``If-None-Match: *`` (any current representation): the reply's ETag (None when the
        store gives no generation) in a 1-tuple when the file exists and its reply's
        representation is known from one request of at most two bytes; None to let the normal
        reply decide (the file is absent, under two bytes, starts as gzip does, or the read
        failed).  A range from a first byte is of the stored bytes (``raw``: zero bytes are
        read); the whole file or its end is ``raw`` when it does not start as gzip does."""
        ranged = rng is not None and rng[0] is not None
        generation = self._plain_at(location, name, not ranged, "checking")
        if generation is None:
            return None
        return (_remote_tag(location, name, generation if len(generation) > 1 else None,
                            "raw"),)

    def _plain_at(self, location: str, name: str, not_gzip: bool, doing: str) -> bytes | None:
        """The storage generation a remote file is at (as tensorstore gives it: one byte when
        the store gives none), from one request of two bytes (``not_gzip``: and those bytes do
        not start as gzip does, so its whole reply is the stored bytes, ``raw``) or of none;
        None when it is absent, or starts as gzip does, or the read fails (a file under two
        bytes, a store that ignores Range, a passing upstream error: the probe only saves a
        read, and the normal reply, which reads the file, decides and reports its own
        errors).  On a store known to ignore Range (:meth:`_ignores_ranges`) a two-byte probe
        would transfer the whole file: None without a request."""
        if not_gzip and self._ignores_ranges(location):
            return None
        try:
            with ts_errors(f"{doing} {name} of the upstream layer"):
                got = self._store(location).read(
                    name, byte_range=slice(0, 2 if not_gzip else 0)).result()
        except (ValueError, VoxgateError) as exc:
            self._note_ignored(location, exc)
            return None
        if got.state != "value" or (not_gzip and bytes(got.value) == GZIP_MAGIC):
            return None
        return bytes(got.stamp.generation)

    def _current_tag(self, location: str, name: str, rng: tuple[int | None, int | None] | None,
                     gzip_ok: bool, if_none_match: str) -> str | None:
        """The tag of If-None-Match that this reply would carry, when one names the storage
        generation the file is still at (then the reply is 304 and no byte of the file is
        read, where the normal reply reads all of it: nginx revalidates a whole shard on each
        use); None when none does or it cannot be told this way (the normal reply then
        decides).  One request to the store, for the first tag this relay made for this file
        and the representation asked for (:func:`_remote_tag`; the digest in it is checked,
        so a tag of another file, or one altered, is never taken for a generation):

        - a range from a first byte (of the stored bytes, ``raw``), or a ``gzip`` / ``identity``
          tag (a gzip-stored object as stored / decoded): tensorstore's conditional read
          (``if_not_equal``; on S3 a HEAD with If-None-Match, answered 304);
        - a ``raw`` tag on a request for the whole file or its end: the same tag is that of a
          range of a gzip-stored object, whose whole is another representation, so the first
          two bytes are read, with the generation they are of: 304 when they are of that
          generation and do not start a gzip stream (so the whole is served as stored, ``raw``).
        """
        ranged = rng is not None and rng[0] is not None
        whole = rng is None
        for text in if_none_match.split(","):
            tag = text.strip()
            issued = _issued(tag[2:] if tag.startswith("W/") else tag, location, name)
            if issued is None:
                continue
            generation, variant = issued
            if (ranged and variant != "raw") or (not ranged and (
                    (variant == "gzip" and not (gzip_ok and whole))
                    or (variant == "identity" and gzip_ok and whole))):
                continue  # (of another representation than this reply's)
            check = variant == "raw" and not ranged
            if self._still_at(location, name, generation, check):
                return _remote_tag(location, name, generation, variant)
            return None
        return None

    def _still_at(self, location: str, name: str, generation: bytes, not_gzip: bool) -> bool:
        """Whether the remote file is still at ``generation`` (and, with ``not_gzip``, its
        stored bytes do not start as gzip does: :meth:`_plain_at`), read without transferring
        the file."""
        if not_gzip:
            return self._plain_at(location, name, True, "revalidating") == generation
        kv = self._store(location)
        with ts_errors(f"revalidating {name} of the upstream layer"):
            try:
                result = kv.read(name, if_not_equal=generation,
                                 byte_range=slice(0, 0)).result()
            except (ValueError, VoxgateError):
                # (as :meth:`_plain_at`: a failed probe leaves the decision to the normal reply)
                return False
        return result.state == "unspecified"  # (the generation still matches)

    def _remote_range(self, location: str, name: str, rng: tuple[int | None, int | None],
                      header: str) -> tuple[bytes, int | None, bytes | None] | None:
        """(the bytes, the file's size when the range ran to its end, the generation) of a
        range of a remote file: only those bytes are read (a shard may be large).  The store
        does not say the file's size, so Content-Range says "*" unless the range ran to the
        end (ranges of gzip-stored objects are of the stored bytes: shards and fragment files
        are stored uncompressed)"""
        first, last = rng
        assert first is not None
        total: int | None = None
        got = None
        if last is not None:
            try:
                got = self._remote_get(location, name, slice(first, last + 1))
            except VoxgateError as exc:
                if "OUT_OF_RANGE" not in str(exc):
                    raise
        if got is None:
            try:
                got = self._remote_get(location, name, slice(first, None))
            except VoxgateError as exc:
                if "OUT_OF_RANGE" not in str(exc):
                    raise
                raise _unsatisfiable(f"Range {header!r} starts after the end of the "
                                     "file") from None
            if got is None:
                return None
            total = first + len(got[0])
            if not got[0]:
                raise _unsatisfiable(f"Range {header!r} starts at the end of the file", total)
            if last is not None:
                got = (got[0][: last + 1 - first], got[1])
        return got[0], total, got[1]


def _ignored(exc: Exception) -> bool:
    """Whether a failed read says the store ignored its Range: it answered with the whole
    object, which tensorstore received and dropped."""
    return "was ignored by server" in str(exc)


def _remote_tag(location: str, name: str, generation: bytes | None, variant: str) -> str | None:
    """A remote file's ETag: ``"vgf-<generation>-<variant>-<digest>"``, the storage generation
    in hex (so a revalidation can ask the store whether it is still current without reading the
    file: :meth:`LayerFiles._current_tag`), the representation, and a digest of the layer, the
    file, the generation and the representation (a tag of another file, or one altered, does
    not verify: :func:`_issued`).  None without a generation; the hash-only form of
    :func:`_file_tag` for one too long to write out."""
    if generation is None:
        return None
    if len(generation) > _MAX_GENERATION:
        return _file_tag("store", location, name, generation.hex(), variant)
    return (f'"vgf-{generation.hex()}-{variant}-'
            f'{_remote_digest(location, name, generation.hex(), variant)}"')


def _remote_digest(location: str, name: str, generation: str, variant: str) -> str:
    text = json.dumps(["store", location, name, generation, variant])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _issued(tag: str, location: str, name: str) -> tuple[bytes, str] | None:
    """(the storage generation, the representation) of a tag :func:`_remote_tag` made for this
    file; None for any other tag (a local file's, another file's, an altered one).  The digest
    is not secret (the tags must be the same in every worker and after a restart): anyone can
    make the tag of a generation, and a made-up one is answered 304 only when the file is at
    that generation, to its sender (a cache revalidates with the tags of replies it stored)."""
    m = _REMOTE_TAG.fullmatch(tag)
    if m is None:
        return None
    generation, variant, digest = m.groups()
    if digest != _remote_digest(location, name, generation, variant):
        return None
    return bytes.fromhex(generation), variant


def _reply_from_file(f: Any, path: str, st: os.stat_result,
                     rng: tuple[int | None, int | None] | None, header: str, head: bool,
                     headers: dict[str, str]) -> FileReply:
    """The reply of a stored (not compressed) local file open as ``f``, whose stat (the one
    its ETag was made from) is ``st``: only the range read, and streamed in blocks when
    large (the stream checks the file is still that version: :func:`_blocks`)."""
    size = st.st_size
    if rng is None:
        start, stop, status = 0, size, 200
    else:
        start, stop = _span(rng, size, header)
        status = 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(stop - start)
    if head:
        return FileReply(status, b"", headers)
    if stop - start > STREAM_BYTES:
        return FileReply(status, _blocks(path, start, stop, _version(st)), headers)
    f.seek(start)
    return FileReply(status, f.read(stop - start), headers)


def _reply_from_bytes(data: bytes, rng: tuple[int | None, int | None] | None, header: str,
                      head: bool, headers: dict[str, str]) -> FileReply:
    if rng is None:
        headers["Content-Length"] = str(len(data))
        return FileReply(200, b"" if head else data, headers)
    start, stop = _span(rng, len(data), header)
    headers.update({"Content-Range": f"bytes {start}-{stop - 1}/{len(data)}",
                    "Content-Length": str(stop - start)})
    return FileReply(206, b"" if head else data[start:stop], headers)


def _read_local(path: str, start: int, stop: int | None) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read() if stop is None else f.read(stop - start)


def _version(st: os.stat_result) -> tuple[int, int, int, int]:
    """A local file's version as its ETag names it: inode, size, modification and change
    times."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _blocks(path: str, start: int, stop: int,
            version: tuple[int, int, int, int] | None = None) -> Iterator[bytes]:
    """The bytes ``[start, stop)`` of ``path`` in blocks.  With ``version`` (:func:`_version`
    of the stat the reply's headers and ETag were made from), none of them if the file is no
    longer that version when the stream starts, and an error after the last block if it
    changed during the stream: the response then breaks off (no cache keeps a body cut short)
    rather than deliver other bytes, or a mix of two versions, under its ETag."""
    with open(path, "rb") as f:
        if version is not None and _version(os.fstat(f.fileno())) != version:
            raise OSError(f"{path} was replaced after the reply's headers were made")
        f.seek(start)
        left = stop - start
        while left > 0:
            block = f.read(min(_BLOCK, left))
            if not block:
                break
            left -= len(block)
            if left == 0 and version is not None and _version(os.fstat(f.fileno())) != version:
                raise OSError(f"{path} was written while it was streamed")
            yield block


def _inside_layer(base: str, value: str) -> str | None:
    """``value`` (a path an info names, relative to ``base``) as a path relative to the layer,
    or None when it is absolute, a URL, or leaves the layer (``..`` past its top)."""
    if "://" in value or value.startswith("/") or "\\" in value:
        return None
    name = posixpath.normpath(posixpath.join(base, value)) if value.strip("/") else ""
    if name in ("", ".") or name == ".." or name.startswith("../"):
        return None
    try:
        check_file_path(name)
    except BossHTTPError:
        return None
    return name


def not_served(path: str, dirs: list[str], what: str) -> BossHTTPError:
    """The 404 of a path the layer does not serve, saying what it serves."""
    if dirs:
        serves = "files only under " + ", ".join(f"{d}/" for d in dirs)
    else:
        serves = "no mesh, skeleton or annotation files (its info names none)"
    return BossHTTPError(404, RESOURCE_NOT_FOUND, f"no such endpoint: {path}: {what} serves "
                         f"chunks under its scale keys and {serves}")
