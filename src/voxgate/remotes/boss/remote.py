"""The bossDB Remote: cutouts split on the server's cuboids and run concurrently, blosc bodies
decoded into one output array, server-side ids, bounding boxes and id reservation."""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import blosc
import numpy as np

from ...errors import (
    AuthenticationError,
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    PartialWriteError,
    RemoteExistsError,
    RemoteNotFoundError,
    VoxgateError,
    redact,
)
from ...geometry import Box, Vec, VoxelSize, origin_grid_bounds
from ...meta import PyramidAnchor, Scale, VolumeMeta
from .._http import RequestTooLargeError, json_of, server_answer
from ..base import Capability, Remote, check_options, check_same_volume, check_time
from .client import BossSettings, _client, _parse_location, boss_settings
from .project import _DTYPES, _UNIT_NM, BossProject, _range_box

__all__ = ["BossDBRemote"]

#: the bossDB cuboid, (z, y, x); requests align to it so the server reads whole cuboids
CUBOID = Vec(16, 512, 512)
#: a request reads at most this many uncompressed bytes (the server's limit is 500 MiB)
REQUEST_BYTES = 8 * 2**20
#: an ids request covers at most this many bytes, counted as bossDB counts a cutout (uint64 a
#: quarter; its CUTOUT_MAX_SIZE); a bigger region is asked in z slabs and the ids joined
IDS_REQUEST_BYTES = 520 * 2**20


def _cuboid_blocks(box: Box, block: Vec) -> Iterator[Box]:
    """``box`` cut on a grid of ``block`` anchored at the origin (bossDB's cuboids are)."""
    lo = [a // b for a, b in zip(box.start, block, strict=True)]
    hi = [-(-e // b) for e, b in zip(box.stop, block, strict=True)]
    for z in range(lo[0], hi[0]):
        for y in range(lo[1], hi[1]):
            for x in range(lo[2], hi[2]):
                s = Vec(z * block.z, y * block.y, x * block.x)
                yield Box(s, s + block).intersect(box)


#: bossDB's refusal of ids and reserve on an image channel (bosscore/request.py)
_RESERVE_REFUSAL = "Can only reserve IDs for annotation channels"

#: the blosc header's flag of a buffer stored without compression (its bytes follow the header)
_MEMCPYED = 0x02

_scratch_local = threading.local()


def _body_buffer() -> bytearray:
    """This thread's response-body buffer (reused: bodies are read into it, not allocated)."""
    buf: bytearray | None = getattr(_scratch_local, "body", None)
    if buf is None:
        buf = bytearray()
        _scratch_local.body = buf
    return buf


def _scratch(nbytes: int) -> np.ndarray:
    """This thread's decompression buffer, at least ``nbytes`` long."""
    buf: np.ndarray | None = getattr(_scratch_local, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(max(nbytes, REQUEST_BYTES), dtype=np.uint8)
        _scratch_local.buf = buf
    return buf


#: a sample of this many bytes tells incompressible data (random voxels) before a request
#: body is compressed: then blosc stores it as it is (level 0, a copy) instead of trying
#: every block and giving up
_SAMPLE = 2**18


def _incompressible(part: np.ndarray) -> bool:
    """Whether a sample of ``part`` (C-contiguous) does not shrink under blosc-lz4 (random
    voxels): then a body is sent stored as it is, not compressed."""
    if part.nbytes <= 2 * _SAMPLE:
        return False
    typesize = part.dtype.itemsize
    flat = part.reshape(-1).view(np.uint8)
    for start in (0, (flat.size // 2) // typesize * typesize):
        sample = flat[start:start + _SAMPLE]
        packed = blosc.compress_ptr(sample.ctypes.data, sample.size // typesize, typesize,
                                    clevel=5, shuffle=blosc.SHUFFLE, cname="lz4")
        if len(packed) < 0.9 * sample.size:
            return False
    return True


#: a stored (uncompressed) body goes to the socket in pieces of this size, views of the array
_PIECE = 2**20


def _stored_header(part: np.ndarray) -> bytes:
    """The 16-byte header of ``part`` stored by blosc without compression (clevel 0): blosc's
    own header for a prefix of it, with the sizes of the whole (what ``blosc.decompress`` and
    the relay check of a stored buffer: total = data + 16)."""
    typesize = part.dtype.itemsize
    flat = part.reshape(-1).view(np.uint8)
    prefix = flat[:min(flat.size, _SAMPLE) // typesize * typesize]
    head = bytearray(blosc.compress_ptr(prefix.ctypes.data, prefix.size // typesize, typesize,
                                        clevel=0, shuffle=blosc.SHUFFLE, cname="lz4")[:16])
    if not head[2] & _MEMCPYED:  # (blosc always stores at clevel 0; checked, not assumed)
        raise VoxgateError("blosc did not store a clevel-0 buffer as it is (an unexpected "
                           "python-blosc); writes need it to")
    struct.pack_into("<I", head, 4, part.nbytes)
    struct.pack_into("<I", head, 12, part.nbytes + 16)
    return bytes(head)


def _pack(part: np.ndarray) -> tuple[list[Any], int]:
    """A request body for ``part`` (C-contiguous) as pieces to send and their total length:
    blosc-lz4 at level 5 from the array's own memory, or, when a sample of it does not shrink,
    a stored blosc buffer (clevel 0: its header, then the array's bytes as they are) sent from
    views of the array, without copying it into a body first."""
    typesize = part.dtype.itemsize
    if _incompressible(part):
        view = part.reshape(-1).view(np.uint8).data
        pieces: list[Any] = [_stored_header(part)]
        pieces += [view[i:i + _PIECE] for i in range(0, len(view), _PIECE)]
        return pieces, part.nbytes + 16
    body = blosc.compress_ptr(part.ctypes.data, part.size, typesize, clevel=5,
                              shuffle=blosc.SHUFFLE, cname="lz4")
    return [body], len(body)


def _request_block(itemsize: int) -> Vec:
    """Cuboid-aligned request shape near REQUEST_BYTES (more z slabs for small dtypes)."""
    per_cuboid = CUBOID.prod() * itemsize
    k = max(1, REQUEST_BYTES // per_cuboid)
    # grow along x, then y, then z in cuboid units
    shape = [CUBOID.z, CUBOID.y, CUBOID.x]
    axis = 2
    while k > 1:
        shape[axis] *= 2
        k //= 2
        axis = (axis - 1) % 3 if axis else 2
    return Vec(*shape)


#: how a copy (which keeps the source's dtype) gets a volume of another dtype into bossDB
_WIDEN = ("A copy keeps the source's dtype: write a cast one instead, e.g. "
          "voxgate.map_blocks(lambda a: a.astype('{dtype}'), src, out='bossdb://...', "
          "dtype='{dtype}')")


class BossDBRemote(Remote):
    scheme = "bossdb"
    #: bossDB downsamples cuboids in dataset coordinates (level k of a frame x0:x1 is
    #: floor(x0 / 2^k):ceil(x1 / 2^k)): voxel i of a level covers the finer voxels
    #: [2i, 2i + 2), on the grid through 0.  A voxgate relay says otherwise where it serves
    #: an upstream pyramid anchored at its first voxel (``_levels``).
    pyramid_anchor: PyramidAnchor = "origin"
    #: the channel's bossDB base_resolution (set from its metadata when opened)
    base_resolution: int = 0
    open_options = ("server", "token", "timeout", "concurrency", "time")

    def __init__(self, settings: BossSettings, c: str, e: str, ch: str, mode: str, *,
                 timeout: float = 60.0, concurrency: int = 8, time: int | None = None) -> None:
        check_time(time)
        self.settings = settings
        self.collection, self.experiment, self.channel = c, e, ch
        self.mode = mode
        self.url = f"bossdb://{settings.url}/{c}/{e}/{ch}"
        self.timeout = timeout
        self.concurrency = concurrency
        self.client = _client(settings, timeout, concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self.project = BossProject(settings.url, settings.token, timeout=timeout)
        try:
            chan = self.project.get_channel(c, e, ch)
        except RemoteNotFoundError as exc:
            raise self._not_found(exc) from None
        exp = self.project.get_experiment(c, e)
        # (what the server answered, read member by member: a member missing or of another
        # type is a CorruptChunkError naming this URL, not a KeyError or TypeError)
        answered = server_answer(f"{self.url}: the channel, experiment and coordinate frame "
                                 "records the server answered do not describe a volume")
        with answered:
            frame_name = exp["coord_frame"]
            if not isinstance(frame_name, str):
                raise TypeError(f"the experiment's coord_frame is {frame_name!r}, not a name")
        try:
            frame = self.project.get_coordinate_frame(frame_name)
        except RemoteNotFoundError as exc:
            raise RemoteNotFoundError(
                f"{self.url}: the experiment's coordinate frame {frame_name!r} does not exist "
                f"({exc})") from None
        self.channel_record, self.experiment_record, self.frame_record = chan, exp, frame
        with answered:
            samples = int(exp.get("num_time_samples") or 1)
            default_time = int(chan.get("default_time_sample") or 0)
            base_resolution = int(chan.get("base_resolution") or 0)
        self.time = default_time if time is None else int(time)
        if not 0 <= self.time < samples:
            raise InvalidRequestError(f"time {self.time} is outside 0..{samples - 1}")
        self._samples = samples
        self.url_time = default_time  # (what the URL alone reads: see Remote.url_time)
        #: the channel's base_resolution: scale k is bossDB resolution base + k, the
        #: resolutions a cutout may name running from it (bosscore/request.py
        #: validate_resolution: range(base, base + num_hierarchy_levels))
        self.base_resolution = base_resolution
        if not 0 <= self.base_resolution <= 9:
            # (bossDB's cutout URLs take a one-digit resolution: bossspatialdb/urls.py)
            raise CapabilityNotSupportedError(
                f"{self.url}: the channel's base_resolution is {self.base_resolution}; a bossDB "
                "cutout URL names a resolution from 0 to 9")
        sizes, anchor = self._levels(exp)
        with answered:
            self.meta = _meta(chan, exp, frame, sizes, self.url)
        #: the scales a write may go to: bossDB's spdb writes a channel's base resolution and
        #: the one above it only (SpatialDB.write_cuboid, "Resolution Mismatch"), scales 0
        #: and 1 here; a voxgate relay (which names its pyramid's anchor) writes every level
        #: its upstream has
        self._write_scales: tuple[int, ...] | None = (0, 1)
        if anchor is not None:
            self.pyramid_anchor = anchor
            self._write_scales = None

    def __repr__(self) -> str:
        return redact(f"<BossDBRemote {self.url} mode={self.mode!r}>")

    def _not_found(self, exc: RemoteNotFoundError) -> RemoteNotFoundError:
        """Which of collection, experiment and channel is missing (bossDB's 404 says only
        "NAME does not exist.", ambiguous when two of the names are the same)."""
        c, e, ch = self.collection, self.experiment, self.channel
        checks = ((lambda: self.project.get_collection(c), f"collection {c!r}"),
                  (lambda: self.project.get_experiment(c, e),
                   f"experiment {e!r} in collection {c!r}"))
        missing = f"channel {ch!r} in {c}/{e}"
        for get, what in checks:
            try:
                get()
            except RemoteNotFoundError:
                missing = what
                break
        return RemoteNotFoundError(f"{self.url}: bossDB {missing} does not exist ({exc})")

    def _segmentation_only(self, what: str, refusal: str) -> None:
        """Refused without a request on an image channel, in the words bossDB's answer
        (400 / 2003) would use (bosscore/request.py validate_ids_service,
        validate_reserve_service, validate_bounding_box)."""
        if self.meta.kind != "segmentation":
            raise CapabilityNotSupportedError(
                f"{self.url}: The channel in request has type "
                f"{self.channel_record.get('type', 'image')}. {refusal} ({what} needs an "
                "annotation channel)")

    def _levels(self, exp: dict[str, Any]) -> tuple[Any, PyramidAnchor | None]:
        """Each level's voxel size as the server's downsample status gives it, and the
        pyramid's anchor where the server names it (None: one level, or a server that does not
        say).  A voxgate relay serves pyramids whose levels follow no single hierarchy_method
        (voxgate's default halves y and x of an anisotropic volume, then all three axes), and
        names its upstream's anchor (``pyramid_anchor``, a voxgate extension: an upstream made
        by Igneous lies on blocks from its first voxel); bossDB's status follows its
        hierarchy_method, and its levels lie on the grid through 0.

        A server without the status (it answers 404, 401/403, 400/405 or 501 to it) follows
        bossDB's hierarchy rule.  A status that is no JSON object, or whose ``voxel_size`` or
        ``pyramid_anchor`` is malformed, is a CorruptChunkError naming its URL, and a server
        that does not answer it fails the open: either way the levels' geometry is not known,
        and guessing it gave wrong shapes and voxel sizes (a relay's pyramid that halves
        differently) or the wrong anchor, silently."""
        if int(exp.get("num_hierarchy_levels") or 1) < 2:
            return None, None
        try:
            status = self.project.downsample_status(self.collection, self.experiment,
                                                    self.channel)
        except (RemoteNotFoundError, AuthenticationError, InvalidRequestError,
                CapabilityNotSupportedError):
            return None, None  # (no status here: bossDB's rule)
        where = (f"{self.url}: the downsample status {self.settings.url}/v1/downsample/"
                 f"{self.collection}/{self.experiment}/{self.channel}/ answered")
        with server_answer(where):
            sizes = status["voxel_size"]
            if not isinstance(sizes, dict):
                raise TypeError(f"its voxel_size is {_short(sizes)}, not an object of levels")
            for key, size in sizes.items():
                if not (isinstance(size, list) and len(size) == 3 and all(
                        isinstance(v, int | float) and not isinstance(v, bool) and v > 0
                        for v in size)):
                    raise ValueError(f"its voxel_size of level {_short(key)} is "
                                     f"{_short(size)}, not three positive numbers (x, y, z)")
            anchor = status.get("pyramid_anchor")
            if anchor is not None and anchor not in ("offset", "origin"):
                raise ValueError(f"its pyramid_anchor is {_short(anchor)}, not 'offset' or "
                                 "'origin'")
        return sizes, anchor

    @classmethod
    def open(cls, location: str, *, mode: str = "r", **options: Any) -> BossDBRemote:
        check_options("bossdb://", options, cls.open_options, "open")
        server, c, e, ch = _parse_location(location)
        settings = boss_settings(options.pop("server", None) or server,
                                 options.pop("token", None))
        return cls(settings, c, e, ch, mode, **options)

    @classmethod
    def create(cls, location: str, meta: VolumeMeta, *, exist_ok: bool = False,
               **options: Any) -> BossDBRemote:
        """Make the collection, frame, experiment and channel for ``meta`` (as needed)."""
        check_options("bossdb://", options, cls.open_options, "create")
        server, c, e, ch = _parse_location(location)
        if meta.num_channels > 1:
            # (refused before anything is made: a channel created for it would hold one value
            # per voxel and say so, and the volume's other channels would have nowhere to go)
            raise InvalidRequestError(
                f"a bossDB channel holds one value per voxel; {meta.num_channels} channels "
                f"were asked for bossdb channel {c}/{e}/{ch}: create one channel per image "
                "channel")
        # (refused before anything is made: the collection, frame and experiment were made
        # before bossDB refused the channel, and a narrower segmentation became a uint64
        # annotation channel without a word, its writes widened)
        seg = meta.kind == "segmentation"
        if seg and meta.dtype != np.uint64:
            raise InvalidRequestError(
                f"a bossDB segmentation is an annotation channel, which holds uint64 ids; "
                f"{meta.dtype.name} was asked for bossdb channel {c}/{e}/{ch}: ask for "
                "dtype='uint64' (the ids are kept, widened), or kind='image' for an image "
                f"channel.  {_WIDEN.format(dtype='uint64')}")
        if meta.dtype.name not in _DTYPES:
            raise InvalidRequestError(
                f"a bossDB image channel holds {', '.join(_DTYPES)}, not {meta.dtype.name} "
                f"(asked for bossdb channel {c}/{e}/{ch}); cast the data to one of them, or "
                "store it in zarr://, n5:// or precomputed://.  "
                + _WIDEN.format(dtype="uint16"))
        settings = boss_settings(options.get("server") or server, options.get("token"))
        project = BossProject(settings.url, settings.token)
        if c not in project.list_collections():
            project.create_collection(c)
        if e not in project.list_experiments(c):
            frame = f"{c}_{e}"
            s0 = meta.scale(0)
            if frame not in project.list_coordinate_frames():
                project.create_coordinate_frame(frame, s0.bounds, s0.voxel_size)
            iso = len(meta.scales) > 1 and meta.scales[1].voxel_size.z > s0.voxel_size.z * 1.5
            project.create_experiment(c, e, frame, num_hierarchy_levels=len(meta.scales),
                                      hierarchy_method="isotropic" if iso else "anisotropic")
        opts = {k: v for k, v in options.items() if k not in ("server", "token")}
        if ch in project.list_channels(c, e):
            if not exist_ok:
                raise RemoteExistsError(f"bossdb channel {c}/{e}/{ch} already exists")
            found = cls(settings, c, e, ch, "r+", **opts)
            check_same_volume(found.meta, meta, f"bossdb channel {c}/{e}/{ch}")
            return found
        else:
            project.create_channel(c, e, ch, type="annotation" if seg else "image",
                                   datatype=meta.dtype.name)
        return cls(settings, c, e, ch, "r+", **opts)

    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = {Capability.SERVER_IDS, Capability.SERVER_BOUNDING_BOXES,
                Capability.SERVER_DOWNSAMPLE, Capability.BATCH_READ}
        if self.mode == "r+":
            caps.add(Capability.WRITE)
            caps.add(Capability.RESERVE_IDS)
        if self.meta.kind != "segmentation":
            caps -= {Capability.SERVER_IDS, Capability.SERVER_BOUNDING_BOXES,
                     Capability.RESERVE_IDS}
        return frozenset(caps)

    def spec(self) -> dict[str, Any]:
        # the token is not part of the spec: the reopening process resolves its own.  The time
        # sample read travels with it (a worker, a copy or an unpickled volume reads the same
        # one, not the channel's default_time_sample); left out of a one-sample channel's
        options: dict[str, Any] = {"timeout": self.timeout, "concurrency": self.concurrency}
        if self._samples > 1 or self.time:
            options["time"] = self.time
        return {"url": self.url, "mode": self.mode, "options": options}

    def write_grid(self, scale: int = 0) -> Vec:
        return CUBOID

    def grid_bounds(self, scale: int = 0) -> Box:
        # bossDB stores cuboids on the grid through 0, whatever the frame's start
        return origin_grid_bounds(self.meta.scale(scale).bounds, CUBOID)

    # -- data -----------------------------------------------------------------------------------
    def resolution(self, scale: int) -> int:
        """The bossDB resolution of ``scale``: the channel's base_resolution + scale."""
        if not 0 <= scale < len(self.meta.scales):
            raise InvalidRequestError(f"{self.url} has scales 0..{len(self.meta.scales) - 1} "
                                      f"(bossDB resolutions {self.base_resolution}.."
                                      f"{self.base_resolution + len(self.meta.scales) - 1}), "
                                      f"not {scale}")
        return self.base_resolution + scale

    def _path(self, kind: str, box: Box, scale: int) -> str:
        x, y, z = (f"{a}:{b}" for a, b in zip(box.start.xyz(), box.stop.xyz(), strict=True))
        t = f"{self.time}:{self.time + 1}/" if self._samples > 1 else ""
        return (f"/v1/{kind}/{self.collection}/{self.experiment}/{self.channel}/"
                f"{self.resolution(scale)}/{x}/{y}/{z}/{t}")

    def _map(self, fn: Any, blocks: list[Box]) -> list[tuple[Box, BaseException | None]]:
        if len(blocks) == 1:
            try:
                fn(blocks[0])
            except BaseException as exc:
                return [(blocks[0], exc)]
            return [(blocks[0], None)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="voxgate-boss")
        futures = [(b, self._pool.submit(fn, b)) for b in blocks]
        out: list[tuple[Box, BaseException | None]] = []
        for b, f in futures:
            out.append((b, f.exception()))
        return out

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        dtype = self.meta.dtype
        out = np.empty(tuple(box.shape), dtype=dtype)
        blocks = list(_cuboid_blocks(box, _request_block(dtype.itemsize)))

        def fetch(b: Box) -> None:
            body = _body_buffer()
            self.client.request(
                "GET", self._path("cutout", b, scale) + "?access-mode=no-cache",
                headers={"Accept": "application/blosc"}, what=f"reading {b!r} of {self.url}",
                into=body,
            )
            expected = b.size * dtype.itemsize
            # the blosc header says how much it holds: checked before anything is inflated
            if len(body) < 16 or not body[0] or struct.unpack_from("<I", body, 4)[0] != expected:
                held = struct.unpack_from("<I", body, 4)[0] if len(body) >= 16 else None
                what = "is not a blosc buffer" if held is None or not body[0] else \
                    f"holds {held} bytes, expected {expected}"
                raise CorruptChunkError(f"{self.url}: the server's answer for {b!r} {what}",
                                        chunk=f"{self.url} {b}")
            if body[2] & _MEMCPYED and len(body) == 16 + expected and \
                    struct.unpack_from("<I", body, 12)[0] == len(body):
                # stored as is (incompressible voxels: the relay sends them so): the bytes
                # after the header go straight into the output, without a decompression copy
                raw = np.frombuffer(body, np.uint8, expected, 16)
                out[b.slices(box.start)] = raw.view(dtype).reshape(tuple(b.shape))
                return
            # decompressed into one buffer per thread, reused: memory stays at the output
            # array plus a request or two per thread in flight
            scratch = _scratch(expected)
            try:
                blosc.decompress_ptr(body, scratch.ctypes.data)
            except Exception as exc:
                raise CorruptChunkError(
                    f"{self.url}: the server's answer for {b!r} is not a blosc buffer ({exc})",
                    chunk=f"{self.url} {b}",
                ) from None
            out[b.slices(box.start)] = scratch[:expected].view(dtype).reshape(tuple(b.shape))

        failures = [(b, e) for b, e in self._map(fetch, blocks) if e is not None]
        if failures:
            b, exc = failures[0]
            if len(blocks) > 1:
                exc.add_note(f"{len(failures)} of {len(blocks)} requests of the read of {box!r} "
                             f"failed, the first at {b!r}; no partial data is returned")
            raise exc
        return out

    def write(self, box: Box, array: np.ndarray, scale: int = 0) -> None:
        self._check_writable()
        if self._write_scales is not None and scale not in self._write_scales:
            # (refused before any request: bossDB would answer each block 400, code 9001)
            base = self.base_resolution
            raise InvalidRequestError(
                f"{self.url}: bossDB writes a channel only at its base resolution ({base}) and "
                f"the one above it ({base + 1}), not at scale {scale} (resolution "
                f"{base + scale}; scales 0 and 1 are those; spdb SpatialDB.write_cuboid: "
                "\"Resolution Mismatch\"); nothing was written.  Write scale 0 and let the server "
                "downsample it: voxgate.downsample(volume) (its /v1/downsample/ job)")
        dtype = self.meta.dtype
        blocks = list(_cuboid_blocks(box, _request_block(dtype.itemsize)))

        def send(b: Box) -> None:
            part = np.ascontiguousarray(array[b.slices(box.start)], dtype=dtype)
            pieces, length = _pack(part)
            # a list of pieces (not a generator): sent again as it is when a request is retried
            self.client.request("POST", self._path("cutout", b, scale), content=pieces,
                                headers={"Content-Type": "application/blosc",
                                         "Content-Length": str(length)}, expect=201,
                                what=f"writing {b!r} of {self.url}", idempotent=True)

        results = self._map(send, blocks)
        failed = [b for b, e in results if e is not None]
        if failed:
            first = next(e for _, e in results if e is not None)
            assert first is not None
            if len(blocks) == 1:
                raise first
            raise PartialWriteError(
                f"writing {box!r} to {self.url}: {len(failed)} of {len(blocks)} blocks failed "
                f"({first}); the others were written",
                written=[b for b, e in results if e is None], failed=failed,
            ) from first

    # -- server-side operations ------------------------------------------------------------------
    def ids_in(self, box: Box, scale: int = 0) -> np.ndarray:
        """The non-zero ids in ``box`` (server-side), as sorted uint64: one request when the
        region is within the server's cutout limit (a relay answers a whole channel's from
        its cached label statistics), else one per slab of cuboid-aligned z planes."""
        # (bossDB's words for ids, copied from its reserve check)
        self._segmentation_only("ids_in", _RESERVE_REFUSAL)
        itemsize = self.meta.dtype.itemsize
        counted = box.size * itemsize // (4 if itemsize == 8 else 1)
        slabs = [box]
        if counted > IDS_REQUEST_BYTES:
            plane = box.shape.y * box.shape.x * itemsize // (4 if itemsize == 8 else 1)
            depth = max(CUBOID.z, IDS_REQUEST_BYTES // max(plane, 1) // CUBOID.z * CUBOID.z)
            slabs = [Box((z, box.start.y, box.start.x),
                         (min(z + depth, box.stop.z), box.stop.y, box.stop.x))
                     for z in range(box.start.z, box.stop.z, depth)]
        found: set[int] = set()
        for slab in slabs:
            resp = self.client.request("GET", self._path("ids", slab, scale),
                                       what=f"ids in {slab!r} of {self.url}")
            doc = json_of(resp, f"ids in {slab!r} of {self.url}", dict)
            with server_answer(f"ids in {slab!r} of {self.url}: {resp.request.url} answered"):
                found.update(int(i) for i in doc["ids"])
        return np.array(sorted(found), dtype=np.uint64)

    def ids_and_boxes(self, box: Box, scale: int = 0
                      ) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
        """The non-zero ids in ``box`` (sorted uint64) and, where the server gives them with
        the ids in the same one request (``ids/...?boxes=tight``: a voxgate relay, for the
        whole channel), their statistics as arrays in the ids' order, keyed as the
        label_stats kernel's: ``id``, ``lo`` and ``hi`` (n x 3, tight boxes of whole objects)
        and, where given, ``count`` and ``sum`` (coordinate sums).  None for the statistics
        when the server does not give them (bossDB ignores the query and answers the ids
        alone: then ask :meth:`bounding_box` per id)."""
        self._segmentation_only("ids_in", _RESERVE_REFUSAL)
        if box != self.meta.scale(scale).bounds:
            return self.ids_in(box, scale), None
        try:
            resp = self.client.request("GET", self._path("ids", box, scale) + "?boxes=tight",
                                       what=f"ids in {box!r} of {self.url}")
        except RequestTooLargeError:  # (bossDB's cutout limit: its ids come in slabs)
            return self.ids_in(box, scale), None
        d = json_of(resp, f"ids in {box!r} of {self.url}", dict)
        answered = server_answer(f"ids in {box!r} of {self.url}: {resp.request.url} answered")
        with answered:
            ids = np.array([int(i) for i in d["ids"]], dtype=np.uint64)
        if "boxes" not in d:
            return np.unique(ids), None
        n = len(ids)
        given = {"boxes": (6, np.int64), "counts": (None, np.int64), "sums": (3, np.float64)}
        arrays: dict[str, np.ndarray] = {}
        for key, (width, dtype) in given.items():
            if key not in d:
                continue
            shape = (n,) if width is None else (n, width)
            with answered:
                a = np.asarray(d[key], dtype=dtype)
            if a.shape != shape and not (a.size == n == 0):
                raise VoxgateError(f"{self.url} answered {n} ids with {key} of shape "
                                   f"{a.shape}; expected one per id")
            arrays[key] = a.reshape(shape)
        order = np.argsort(ids, kind="stable")  # (a relay answers them sorted: not assumed)
        ids = ids[order]
        if n > 1 and not (ids[1:] > ids[:-1]).all():
            raise VoxgateError(f"{self.url} answered an id twice with its bounding boxes")
        table = {"id": ids, "lo": arrays["boxes"][order, :3], "hi": arrays["boxes"][order, 3:]}
        if "counts" in arrays:
            table["count"] = arrays["counts"][order]
        if "sums" in arrays:
            table["sum"] = arrays["sums"][order]
        return ids, table

    def bounding_box(self, ident: int, scale: int = 0, *, tight: bool = True) -> Box:
        self._segmentation_only("bounding_box", "Can only perform bounding box operations on "
                                "annotation channels")
        kind = "tight" if tight else "loose"
        resp = self.client.request(
            "GET", f"/v1/boundingbox/{self.collection}/{self.experiment}/{self.channel}/"
                   f"{self.resolution(scale)}/{int(ident)}/?type={kind}",
            what=f"bounding box of {ident} in {self.url}")
        d = json_of(resp, f"bounding box of {ident} in {self.url}", dict)
        with server_answer(f"bounding box of {ident} in {self.url}: {resp.request.url} "
                           "answered"):
            return _range_box(d)

    def reserve_ids(self, count: int) -> int:
        """Reserve ``count`` new ids; returns the first."""
        self._segmentation_only("reserve_ids", _RESERVE_REFUSAL)  # (bossDB's order)
        if count < 1:
            raise InvalidRequestError(f"reserve at least one id, not {count}")
        resp = self.client.request(
            "GET", f"/v1/reserve/{self.collection}/{self.experiment}/{self.channel}/{int(count)}",
            what=f"reserving ids in {self.url}")
        doc = json_of(resp, f"reserving ids in {self.url}", dict)
        with server_answer(f"reserving ids in {self.url}: {resp.request.url} answered"):
            return int(doc["start_id"])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def _short(value: Any, n: int = 60) -> str:
    """``repr(value)`` cut to ``n`` characters, for a message about a server's answer."""
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def _factors(levels: Any, k: int, iso: bool) -> Vec:
    """Resolution k's cumulative factor (z, y, x) over resolution 0 (the coordinate frame's
    voxels): from the levels' voxel sizes (x, y, z, by resolution as a string) when they give
    whole factors, else bossDB's hierarchy rule (spdb project/resource.py
    get_downsampled_voxel_dims: x and y halve at every resolution, z too when isotropic)."""
    rule = Vec(2**k if iso else 1, 2**k, 2**k)
    try:
        base, here = levels["0"], levels[str(k)]
        ratios = [float(here[i]) / float(base[i]) for i in (2, 1, 0)]
    except (TypeError, KeyError, IndexError, ValueError, ZeroDivisionError):
        return rule
    if not all(r >= 1 and abs(r - round(r)) < 1e-6 for r in ratios):
        return rule
    return Vec(*(round(r) for r in ratios))


def _meta(chan: dict[str, Any], exp: dict[str, Any], frame: dict[str, Any],
          levels: Any = None, url: str = "") -> VolumeMeta:
    dtype = chan.get("datatype")
    if not isinstance(dtype, str):
        raise TypeError(f"the channel's datatype is {dtype!r}")
    if dtype not in _DTYPES:
        raise CapabilityNotSupportedError(
            f"{url}: bossDB datatype {dtype!r} is not supported (voxgate reads "
            f"{', '.join(_DTYPES)})")
    unit = _UNIT_NM.get(frame.get("voxel_unit", "nanometers"), 1.0)
    start = Vec(int(frame["z_start"]), int(frame["y_start"]), int(frame["x_start"]))
    stop = Vec(int(frame["z_stop"]), int(frame["y_stop"]), int(frame["x_stop"]))
    vs = VoxelSize(float(frame["z_voxel_size"]) * unit, float(frame["y_voxel_size"]) * unit,
                   float(frame["x_voxel_size"]) * unit)
    iso = exp.get("hierarchy_method") == "isotropic"
    base = int(chan.get("base_resolution") or 0)
    scales = []
    # scale k is resolution base + k: its voxel size and extent are that resolution's (the
    # frame's voxel size is resolution 0's; level r spans floor(start / 2^r):ceil(stop / 2^r))
    for k in range(int(exp.get("num_hierarchy_levels") or 1)):
        f = _factors(levels, base + k, iso)
        lo = Vec(*(a // g for a, g in zip(start, f, strict=True)))
        hi = Vec(*(-(-b // g) for b, g in zip(stop, f, strict=True)))
        scales.append(Scale(k, hi - lo, CUBOID, VoxelSize(vs.z * f.z, vs.y * f.y, vs.x * f.x),
                            lo, "blosc"))
    kind = "segmentation" if chan.get("type") == "annotation" else "image"
    return VolumeMeta(np.dtype(dtype), tuple(scales), kind)  # type: ignore[arg-type]
