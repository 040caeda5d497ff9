"""Small files under one directory of a storage location (mesh and skeleton directories).

Local disks and object storage (gs://, s3://, read-only http(s)://) look the same here:

- ``get`` returns a file's bytes or None.  On local disks CloudVolume stores files as
  ``<name>.gz`` (also ``.br``, ``.zstd``, ...), and on object storage a gzip body may come
  without a Content-Encoding; both are decompressed.  A body that merely starts with the gzip
  magic bytes but is valid as it stands (``plain`` says so) is left alone.
- ``put_many`` writes atomically on local disks (a temporary name, then a rename) and removes
  every compressed variant of the name, since CloudFiles reads whichever variant it finds first.
- ``list`` lists the directory's file names (compressed suffixes removed); ``names`` lists
  those under some name prefixes as stored (one listing per prefix on object storage).
- ``update`` reads, changes and writes back one file so that concurrent writers lose
  nothing: under the file's lock on local disks, conditionally on object storage.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import tensorstore as ts

from ..errors import CapabilityNotSupportedError, RemoteNotFoundError, VoxgateError
from .compression import GZIP_MAGIC, SUFFIXES, decompress
from .kvstore import (
    atomic_write,
    is_local,
    join,
    kvstore_spec,
    local_path,
    ts_context,
    ts_errors,
    update_conditionally,
)
from .locking import file_lock

__all__ = ["Directory"]


class Directory:
    """The files directly under ``location`` (a path, file://, gs://, s3:// or http(s)://)."""

    def __init__(self, location: str) -> None:
        self.location = location.rstrip("/")
        self.local = is_local(location)
        self._kv: ts.KvStore | None = None

    def __repr__(self) -> str:
        return f"Directory({self.location!r})"

    def _store(self) -> ts.KvStore:
        if self._kv is None:
            with ts_errors(f"opening {self.location}"):
                spec = kvstore_spec(self.location)
                self._kv = ts.KvStore.open(spec, context=ts_context()).result()
        return self._kv

    def path(self, name: str) -> str:
        return join(self.location, name)

    # -- reading --------------------------------------------------------------------------------
    def get(self, name: str, *, plain: Callable[[bytes], bool] | None = None) -> bytes | None:
        """The file's bytes with any transport compression removed, or None if it is absent.

        ``plain(data)`` tells whether bytes that start with the gzip magic are valid as they
        are (so they are not gzip); without it such bytes are always decompressed.
        """
        if self.local:
            base = os.path.join(local_path(self.location), name)
            for suffix in (*SUFFIXES, ""):
                try:
                    with open(base + suffix, "rb") as f:
                        data = f.read()
                except (FileNotFoundError, NotADirectoryError):  # (a file where a folder is
                    continue  # named: absent, as exists() says)
                except OSError as exc:
                    raise VoxgateError(f"cannot read {base + suffix}: {exc}") from exc
                if suffix:
                    return decompress(data, suffix, base + suffix)
                return self._sniff(data, name, plain)
            return None
        with ts_errors(f"reading {self.path(name)}"):
            result = self._store().read(name).result()
        if result.state != "value":
            return None
        return self._sniff(bytes(result.value), name, plain)

    def _sniff(self, data: bytes, name: str, plain: Callable[[bytes], bool] | None) -> bytes:
        if data[:2] == GZIP_MAGIC and not (plain is not None and plain(data)):
            return decompress(data, ".gz", self.path(name))
        return data

    def get_many(
        self, names: Iterable[str], *, plain: Callable[[bytes], bool] | None = None
    ) -> dict[str, bytes | None]:
        todo = list(dict.fromkeys(names))
        if len(todo) <= 2:
            return {n: self.get(n, plain=plain) for n in todo}
        with ThreadPoolExecutor(max_workers=min(16, len(todo))) as pool:
            got = list(pool.map(lambda n: self.get(n, plain=plain), todo))
        return dict(zip(todo, got, strict=True))

    def exists(self, name: str) -> bool:
        if self.local:
            base = os.path.join(local_path(self.location), name)
            return any(os.path.exists(base + s) for s in (*SUFFIXES, ""))
        return self.get(name) is not None

    def names(self, prefixes: Iterable[str] = ("",)) -> set[str]:
        """The names of the files directly in the directory that start with one of
        ``prefixes``, exactly as stored (compressed suffixes and temporary files included).

        On object storage each prefix is one listing, read to its last page (S3 and GCS
        answer 1000 keys a page) and all listings at once; an absent directory holds no
        files.  HTTP cannot list (CapabilityNotSupportedError)."""
        wanted = sorted(set(prefixes))
        if self.local:
            try:
                with os.scandir(local_path(self.location)) as entries:
                    found = [e.name for e in entries if e.is_file()]
            except (FileNotFoundError, NotADirectoryError):
                return set()
            return {n for n in found if n.startswith(tuple(wanted))}
        if self.location.startswith(("http://", "https://")):
            raise CapabilityNotSupportedError(
                f"{self.location} is served over HTTP, which cannot list files")
        with ts_errors(f"listing {self.location}"):
            store = self._store()
            futures = [store.list(_prefix_range(p)) for p in wanted]
            keys = [k for f in futures for k in f.result()]
        return {k.decode() for k in keys if b"/" not in k}

    def list(self) -> list[str]:
        """File names directly in the directory, compressed suffixes removed, sorted."""
        if self.local:
            directory = local_path(self.location)
            try:
                entries = [e.name for e in os.scandir(directory) if e.is_file()]
            except FileNotFoundError:
                raise RemoteNotFoundError(f"{directory} does not exist") from None
            names: Iterable[str] = entries
        else:
            if self.location.startswith(("http://", "https://")):
                raise CapabilityNotSupportedError(
                    f"{self.location} is served over HTTP, which cannot list files; pass the "
                    "segment ids to read"
                )
            names = self.names()
        out = set()
        for n in names:
            if n.startswith(".") or n.endswith(".tmp"):
                continue  # our own temporary files
            for s in SUFFIXES:
                if n.endswith(s):
                    n = n[: -len(s)]
                    break
            out.add(n)
        return sorted(out)

    # -- writing --------------------------------------------------------------------------------
    def put_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Write files (each atomically on local disks), a few at a time."""
        todo = list(items)
        if not todo:
            return
        if self.local:
            directory = local_path(self.location)
            os.makedirs(directory, exist_ok=True)
            if len(todo) <= 4:
                for name, data in todo:
                    self._put_local(directory, name, data)
                return
            with ThreadPoolExecutor(max_workers=8) as pool:
                for _ in pool.map(lambda item: self._put_local(directory, *item), todo):
                    pass
            return
        with ts_errors(f"writing under {self.location}"):
            store = self._store()
            futures = [store.write(name, data) for name, data in todo]
            for fut in futures:
                fut.result()

    def update(self, name: str, change: Callable[[bytes | None], bytes | None], *,
               attempts: int, advice: str,
               plain: Callable[[bytes], bool] | None = None) -> None:
        """Replace the file ``name`` by ``change(its bytes as get returns them, or None when
        it is absent)``; ``change`` returns None to leave the file as it is.  Concurrent
        writers of the file lose nothing: on local disks the read and the write hold the
        file's lock; on object storage the write is conditional on the generation read
        (tensorstore's ``if_equal``: object generations on GCS, ``If-Match`` /
        ``If-None-Match`` on S3) and ``change`` runs again on a fresh read when another
        writer got there first, up to ``attempts`` times (``advice`` ends the error then).
        ``change`` may thus run more than once: it must not keep state between runs."""
        if self.local:
            directory = local_path(self.location)
            os.makedirs(directory, exist_ok=True)
            with file_lock(os.path.join(directory, name)):
                data = change(self.get(name, plain=plain))
                if data is not None:
                    self._put_local(directory, name, data)
            return

        def conditional(current: bytes | None) -> bytes:
            data = change(None if current is None else self._sniff(current, name, plain))
            if data is None:
                raise _Unchanged
            return data

        with contextlib.suppress(_Unchanged):
            update_conditionally(self._store(), name, conditional, self.path(name),
                                 attempts=attempts, advice=advice)

    def delete_many(self, names: Iterable[str]) -> None:
        """Remove files (each with every compressed variant of its name); absent ones are
        no error."""
        todo = [n + s for n in dict.fromkeys(names) for s in ("", *SUFFIXES)]
        if not todo:
            return
        if self.local:
            directory = local_path(self.location)
            for name in todo:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
            return
        with ts_errors(f"deleting under {self.location}"):
            store = self._store()
            for fut in [store.write(name, None) for name in todo]:
                fut.result()

    @staticmethod
    def _put_local(directory: str, name: str, data: bytes) -> None:
        path = os.path.join(directory, name)
        atomic_write(path, data)
        for suffix in SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)


class _Unchanged(Exception):
    """Raised by an update whose change leaves the file as it is: nothing is written."""


def _prefix_range(prefix: str) -> ts.KvStore.KeyRange:
    """The keys that start with ``prefix`` (all keys for "")."""
    if not prefix:
        return ts.KvStore.KeyRange()
    raw = prefix.encode()
    end = raw.rstrip(b"\xff")
    if not end:
        return ts.KvStore.KeyRange(raw)
    return ts.KvStore.KeyRange(raw, end[:-1] + bytes([end[-1] + 1]))
