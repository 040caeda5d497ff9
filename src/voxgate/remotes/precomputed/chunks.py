"""Chunks voxgate reads and writes with its own codecs, where tensorstore cannot: CloudVolume's
compressed-suffix chunk files on local disk, and gzip bodies on object storage that came
without a Content-Encoding."""

from __future__ import annotations

import contextlib
import gzip
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import numpy as np
import tensorstore as ts

from ...errors import VoxgateError
from ...formats.precomputed_chunks import decode_chunk, encode_chunk
from ...geometry import Box, Vec, chunk_boxes
from ...meta import Scale
from ...storage import (
    GZIP_MAGIC,
    SUFFIXES,
    Directory,
    atomic_write,
    decompress,
    file_lock,
    join,
    kvstore_spec,
    ts_context,
    ts_errors,
    update_conditionally,
)

#: conditional writes of one chunk tried before giving up (object storage)
_MODIFY_ATTEMPTS = 12
#: encodings voxgate's own codecs handle (for chunks tensorstore cannot reach)
_OWN_ENCODINGS = frozenset({"raw", "jpeg", "compressed_segmentation"})


class _ScaleIO(Protocol):
    def read(self, box: Box) -> np.ndarray: ...

    def write(self, box: Box, array: np.ndarray) -> None: ...


# -- chunks voxgate decodes itself --------------------------------------------------------------
class _ChunkStore(Protocol):
    where: str

    def get(self, name: str) -> tuple[bytes, str] | None:
        """The chunk's bytes (transport compression removed) and its full name, or None."""

    def put(self, name: str, data: bytes, *, compress: bool = True) -> None:
        """Store a chunk; ``compress`` False for encodings that are compressed already."""

    def modify(self, name: str, change: Callable[[tuple[bytes, str] | None], bytes], *,
               compress: bool = True, whole: bool = False) -> None:
        """Store ``change(the chunk as get gives it)`` so that no other writer changed the
        chunk in between: two writers of disjoint parts of it each keep theirs.  ``whole``:
        ``change`` replaces the chunk whatever it held (it need not be read)."""


class _LocalChunks:
    """Chunk files in one local scale directory, in CloudFiles' compressed-suffix convention."""

    def __init__(self, directory: str, *, gzip_writes: bool) -> None:
        self.directory = directory
        self.where = directory
        self.gzip_writes = gzip_writes

    def modify(self, name: str, change: Callable[[tuple[bytes, str] | None], bytes], *,
               compress: bool = True, whole: bool = False) -> None:
        # every variant of the chunk (name, name.gz, ...) under one lock file (a whole chunk
        # too: written between another writer's read and write, it would be overwritten)
        os.makedirs(self.directory, exist_ok=True)
        with file_lock(os.path.join(self.directory, name)):
            self.put(name, change(None if whole else self.get(name)), compress=compress)

    def get(self, name: str) -> tuple[bytes, str] | None:
        base = os.path.join(self.directory, name)
        for suffix in (*SUFFIXES, ""):
            path = base + suffix
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise VoxgateError(f"cannot read chunk {path}: {exc}") from exc
            return decompress(data, suffix, path), path
        return None

    def put(self, name: str, data: bytes, *, compress: bool = True) -> None:
        os.makedirs(self.directory, exist_ok=True)
        # CloudVolume gzips raw and compressed_segmentation chunks and leaves jpeg plain
        suffix = ".gz" if self.gzip_writes and compress else ""
        if suffix:
            data = gzip.compress(data, compresslevel=6)
        path = os.path.join(self.directory, name + suffix)
        # a temporary name then a rename: a crash never leaves a half-written chunk
        atomic_write(path, data)
        # CloudFiles reads whichever variant it tries first (its order adapts at run time),
        # so no other variant of this chunk may survive
        for other in (*SUFFIXES, ""):
            if other != suffix:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.directory, name + other))


class _KvChunks:
    """Chunks under one scale key on any tensorstore kvstore (object storage, HTTP)."""

    def __init__(self, location: str) -> None:
        self.where = location
        self._spec = kvstore_spec(location)
        self._kv: ts.KvStore | None = None

    def modify(self, name: str, change: Callable[[tuple[bytes, str] | None], bytes], *,
               compress: bool = True, whole: bool = False) -> None:
        if whole:
            # (unconditional: another writer's read-modify-write in between sees its
            # conditional write fail, and changes this chunk instead)
            self.put(name, change(None), compress=compress)
            return
        # object storage has no lock: the chunk is written only if it is still the one read
        # (tensorstore's conditional write: generations on GCS, If-Match on S3), else read
        # and changed again.  (It was read and written back unconditionally: two processes
        # writing disjoint parts of one chunk lost one of them.)
        full = join(self.where, name)
        update_conditionally(
            self._store(), name, lambda current: change(None if current is None
                                                        else (current, full)),
            f"chunk {full}", attempts=_MODIFY_ATTEMPTS,
            advice="too many writers share this chunk: give each writer whole chunks")

    def _store(self) -> ts.KvStore:
        if self._kv is None:
            with ts_errors(f"opening {self.where}"):
                self._kv = ts.KvStore.open(self._spec, context=ts_context()).result()
        return self._kv

    def get(self, name: str) -> tuple[bytes, str] | None:
        full = join(self.where, name)
        with ts_errors(f"reading chunk {full}"):
            result = self._store().read(name).result()
        if result.state != "value":
            return None
        return bytes(result.value), full

    def stored(self, names: Iterable[str]) -> set[str]:
        """Which of the chunks ``names`` are stored, without fetching them: zero-length reads
        (a HEAD over HTTP, object metadata on gs/s3), all under way at once."""
        todo = list(dict.fromkeys(names))
        store = self._store()
        futures = [store.read(n, byte_range=slice(0, 0)) for n in todo]
        out = set()
        for name, future in zip(todo, futures, strict=True):
            with ts_errors(f"looking up chunk {join(self.where, name)}"):
                if future.result().state == "value":
                    out.add(name)
        return out

    def put(self, name: str, data: bytes, *, compress: bool = True) -> None:
        with ts_errors(f"writing chunk {join(self.where, name)}"):
            self._store().write(name, data).result()


#: keys one listing request answers (a page of S3's ListObjectsV2 or of GCS's objects.list)
_LIST_PAGE_KEYS = 1000
#: lookups one listing request is worth: its pages come one after another, and each is a
#: larger answer than a lookup's
_LIST_PAGE_COST = 4


def _stored_remote(where: str, names: Iterable[str], grid: Sequence[int]) -> set[str]:
    """Which of the chunk ``names`` (``x0-x1_y0-y1_z0-z1``) are stored in the unsharded scale
    directory ``where`` on object storage or HTTP, asked with few requests.

    ``grid`` is the scale's chunks per axis (x, y, z).  The names are listed by prefix, one
    listing for the whole directory or one per x (or per x and y) range of the names, or
    looked up one by one, whichever takes fewest requests: a listing holds up to 1000 keys a
    page, and one lookup per chunk (1100 on S3 took seconds) is cheaper only for a few.
    HTTP cannot list, so it always looks up.  Names only count when stored as they are, as
    reads find them (no compressed-suffix variants on object storage).
    """
    todo = list(dict.fromkeys(names))
    kv = _KvChunks(where)
    if where.startswith(("http://", "https://")) or not todo:
        return kv.stored(todo)
    gx, gy, gz = (int(n) for n in grid)
    per_prefix = (gx * gy * gz, gy * gz, gz)  # keys under one prefix of 0, 1, 2 axis ranges
    best, best_cost = None, len(todo)  # looking every chunk up
    for depth, keys in enumerate(per_prefix):
        prefixes = {"".join(f"{part}_" for part in n.split("_")[:depth]) for n in todo}
        cost = len(prefixes) * -(-max(keys, 1) // _LIST_PAGE_KEYS) * _LIST_PAGE_COST
        if cost < best_cost:
            best, best_cost = prefixes, cost
    if best is None:
        return kv.stored(todo)
    listed = Directory(where).names(best)
    return {n for n in todo if n in listed}


class _ChunkScale:
    """One unsharded scale read and written chunk by chunk with voxgate's codecs."""

    def __init__(
        self,
        store: _ChunkStore,
        scale: Scale,
        dtype: np.dtype[Any],
        channels: int,
        encoding: str,
        block: Vec | None,
    ) -> None:
        self.store = store
        self.scale = scale
        self.dtype = dtype
        self.channels = channels
        self.encoding = encoding
        self.block = block

    def _cells(self, box: Box) -> list[Box]:
        return [cell for _, cell in chunk_boxes(box, self.scale.chunks, self.scale.bounds)]

    def _load(self, cell: Box) -> np.ndarray | None:
        got = self.store.get(_chunk_name(cell))
        if got is None:
            return None  # an absent chunk is all zeros
        return self._decode(got, cell)

    def _decode(self, got: tuple[bytes, str], cell: Box) -> np.ndarray:
        data, name = got
        shape = (self.channels, *cell.shape)
        if data[:2] == GZIP_MAGIC and not (
            self.encoding == "raw" and len(data) == math.prod(shape) * self.dtype.itemsize
        ):
            # gzip stored without a Content-Encoding (or a .gz name) to say so; no other
            # encoding starts with these bytes, and a raw chunk that does has the exact length
            data = decompress(data, ".gz", name)
        return decode_chunk(data, self.encoding, shape, self.dtype, block_size=self.block,
                            name=name)

    def read(self, box: Box) -> np.ndarray:
        out = np.zeros((self.channels, *box.shape), dtype=self.dtype)

        def load(cell: Box) -> None:
            chunk = self._load(cell)
            if chunk is not None:
                part = cell.intersect(box)
                out[(slice(None), *part.slices(box.start))] = chunk[
                    (slice(None), *part.slices(cell.start))
                ]

        _each(load, self._cells(box))
        return out if self.channels > 1 else out[0]

    def write(self, box: Box, array: np.ndarray) -> None:
        data = array if self.channels > 1 else array[np.newaxis]

        def store(cell: Box) -> None:
            part = cell.intersect(box)
            new = data[(slice(None), *part.slices(box.start))]
            name = _chunk_name(cell)
            if part == cell:
                self.store.modify(name, lambda _: self._encode(new),
                                  compress=self.encoding != "jpeg", whole=True)
                return

            def change(got: tuple[bytes, str] | None) -> bytes:
                # a partial chunk: read, modify, write, with no other writer in between (two
                # writers of disjoint parts of it that both read it first lost one part)
                old = None if got is None else self._decode(got, cell)
                chunk = (
                    np.zeros((self.channels, *cell.shape), self.dtype) if old is None
                    else old.copy()
                )
                chunk[(slice(None), *part.slices(cell.start))] = new
                return self._encode(chunk)

            self.store.modify(name, change, compress=self.encoding != "jpeg")

        _each(store, self._cells(box))

    def _encode(self, chunk: np.ndarray) -> bytes:
        return encode_chunk(
            np.ascontiguousarray(chunk, dtype=self.dtype), self.encoding, block_size=self.block,
        )


_T = TypeVar("_T")


def _each(fn: Callable[[_T], object], items: Iterable[_T]) -> None:
    """Run ``fn`` over ``items`` on a few threads (zlib and numpy copies release the GIL)."""
    todo = list(items)
    if len(todo) <= 2:
        for item in todo:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
        for _ in pool.map(fn, todo):
            pass


def _chunk_name(cell: Box) -> str:
    """``x0-x1_y0-y1_z0-z1``: absolute voxel coordinates, exclusive ends."""
    (z0, y0, x0), (z1, y1, x1) = cell.start, cell.stop
    return f"{x0}-{x1}_{y0}-{y1}_{z0}-{z1}"


def _find_suffixed(directory: str) -> str | None:
    """A compressed-suffix chunk file in ``directory``, if there is one (stops at the first)."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(SUFFIXES):
                    return entry.path
    except (FileNotFoundError, NotADirectoryError):
        pass
    return None
