"""Locations (``file.h5#/group/dataset``) and the process's one shared h5py handle per file,
with its lock and its users."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import h5py

try:
    import fcntl
except ImportError:  # (Windows)
    fcntl = None  # type: ignore[assignment]

from ...errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    ReadOnlyError,
    RemoteBusyError,
    RemoteNotFoundError,
    RemoteUnavailableError,
    VoxgateError,
)

#: HDF5's chunk cache per open dataset (its default, 1 MiB, holds no 64^3 uint64 chunk)
_CACHE_BYTES = 16 * 1024 * 1024
_CACHE_SLOTS = 10007  # a prime ~100x the number of chunks that fit, as HDF5 advises


# -- locations ------------------------------------------------------------------------------------
def _split(location: str, *, check: str | None = None) -> tuple[str, str | None]:
    """``"/a/f.h5#/g/ds"`` -> (absolute file path, "/g/ds"); no fragment -> None.

    ``check`` ("open" or "create") refuses a ``#`` that cannot start the object path
    (:func:`_check_fragment`)."""
    path, sep, fragment = location.partition("#")
    if "://" in path and not path.startswith("file://"):
        raise InvalidRequestError(
            f"hdf5:// opens local files only, got {location!r}; copy the file locally or store "
            "the volume as zarr, N5 or precomputed for object storage"
        )
    path = path.removeprefix("file://")
    if not path:
        raise InvalidRequestError(f"{location!r} names no HDF5 file")
    path = os.path.abspath(os.path.expanduser(path))
    if sep and check is not None:
        _check_fragment(location, path, fragment, creating=check == "create")
    name = "/" + fragment.strip("/") if sep and fragment.strip("/") else None
    return path, name


#: the extensions a new HDF5 file named before a '#' must have (detect_format's)
_EXTENSIONS = (".h5", ".hdf5", ".hdf")


def _check_fragment(location: str, path: str, fragment: str, *, creating: bool) -> None:
    """Refuse a ``#`` of ``location`` that is part of a directory's or file's name rather
    than the start of the object path: the part before it (``path``) is then no file, and
    either the whole location exists as written, or it is a directory, or a file would be
    created under a name without an HDF5 extension (``hdf5:///data/run #3/em.h5`` had
    written a file ``/data/run `` holding a dataset ``3/em.h5``)."""
    if os.path.isfile(path):
        return
    whole = os.path.abspath(os.path.expanduser(location.removeprefix("file://")))
    if os.path.exists(whole):
        why = f"{whole!r} exists as written"
    elif os.path.isdir(path):
        why = f"{path!r} is a directory, not an HDF5 file"
    elif creating and not path.lower().endswith(_EXTENSIONS):
        why = (f"a new HDF5 file is named .h5, .hdf5 or .hdf before the '#' (say "
               f"hdf5://{path}.h5#{fragment} to create the file {path + '.h5'!r})")
    else:
        return
    raise InvalidRequestError(
        f"in an hdf5:// URL '#' starts the object path inside the file, so {location!r} names "
        f"the file {path!r} and the object {fragment!r}; but {why}.  If the '#' is part of a "
        "directory's or file's name: hdf5:// URLs cannot name such a path; rename it, or reach "
        "it through a symbolic link whose name has no '#'")


# -- one shared handle per file -------------------------------------------------------------------
class _SharedFile:
    """The process's one h5py handle on a file, its lock, and the Remotes that use it.

    HDF5 refuses to open a file for writing in a process that holds it open read-only, so
    the handle is reopened read-write (under the lock) the first time a writer needs it.

    HDF5 also locks the file for as long as a handle has it open: a read-only handle lets
    other processes read it (not write), a read-write one keeps every other process out.  A
    Remote opened with ``hold_write=True`` (a *holder*) keeps the handle read-write until it
    is closed; the others take write access for a write and give it back after it
    (:meth:`give_back_write`), so the file is open read-only between their writes.

    A Remote opened with ``hold_open=False`` (not a *keeper*) keeps no handle between its
    reads and writes: each one opens the file under an inter-process lock and closes it again
    (:func:`_using`), so several processes can read and write the file in turn.  The handle
    stays open between operations only while some keeper uses the file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.file: h5py.File | None = None
        self.writable = False
        self.users = 0
        #: the users that hold write access from their open to their close
        self.holders = 0
        #: the users that keep the file open between their reads and writes
        self.keepers = 0
        self._datasets: dict[str, h5py.Dataset] = {}
        #: (device, inode) of the file the handle has open
        self.identity: tuple[int, int] | None = None
        #: (inode, size, modification time in ns, racy until) of the path as a read-only
        #: handle was opened: checked before each use, the handle is opened again when it
        #: changed or its racy time is up (see :data:`RACY_NS`)
        self.stamp: tuple[int, int, int, int] | None = None
        #: how many times the handle was opened: a Remote checks its datasets after a reopen
        self.opened = 0
        #: set in a forked child when the parent had the file open for writing
        self.forked_writer = False
        _all_shared.add(self)

    def forget_after_fork(self) -> None:
        """In a forked child: stop using a handle the parent had open for writing.

        The child's copy of it shares the parent's file descriptor (and so its file lock) and
        holds a copy of the parent's HDF5 state (metadata and chunk caches, end of file); HDF5
        also hands that same state to any new open of the path in the child.  Reading or
        writing through it, or closing it (which flushes), would interleave two processes'
        metadata in one file and corrupt it, so every use in the child is refused instead.
        Its objects stay referenced for the child's lifetime: garbage collection would close,
        and so flush, them.  A read-only handle is safe to keep using.
        """
        self.lock = threading.RLock()  # another thread may have held it at the fork
        if self.file is not None and self.writable:
            _inherited.append((self.file, self._datasets))
            self.forked_writer = True
            if self.identity is not None:
                _inherited_identities.add(self.identity)

    def replaced(self) -> bool:
        """Whether the path no longer names the file the handle has open (deleted, or made
        again under its name since): a new Remote then needs a handle of its own."""
        if self.file is None or self.identity is None:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self.identity

    def ensure_open(self, *, writable: bool, create: bool = False) -> h5py.File:
        """The handle, opened (read-write when asked) if it is not yet.  Call under the lock."""
        if self.forked_writer or _inherited_writer(self.path):
            raise RemoteUnavailableError(
                f"{self.path} was open for writing in the process this one was forked from; "
                "HDF5 cannot share an open file with a forked child (writes from both would "
                "corrupt it).  Close the volume (vol.remote.close()) before forking, or start "
                "workers with multiprocessing's 'spawn' or 'forkserver' method"
            )
        if self.file is not None and (self.writable or not writable):
            if self.writable or self._unchanged():
                return self.file
            # written since it was opened read-only (by a process with HDF5's file locking
            # off: h5py's locking=False, HDF5_USE_FILE_LOCKING=FALSE) or replaced: HDF5's
            # metadata and chunk caches hold the file as it was, so it is opened again
            self._close()
        if self.file is None and not create and not os.path.exists(self.path):
            raise RemoteNotFoundError(f"HDF5 file {self.path} does not exist")
        was_open = self.file is not None
        self._close()
        try:
            before = _stamp(self.path)  # (before: a write while it opens is seen next time)
            self.file = _h5open(self.path, "a" if create else ("r+" if writable else "r"))
            st = os.stat(self.path)
            self.identity = (st.st_dev, st.st_ino)
        except VoxgateError:
            if was_open:  # keep serving the readers that had it read-only
                self.file = _h5open(self.path, "r")
            raise
        self.writable = writable or create
        self.stamp = None if self.writable else before
        self.opened += 1
        return self.file

    def _unchanged(self) -> bool:
        """Whether the path is as it was when the read-only handle was opened (one stat)."""
        now = _stamp(self.path)
        if now is None:
            raise RemoteNotFoundError(
                f"HDF5 file {self.path} no longer exists (deleted since it was opened)")
        stamp = self.stamp
        return stamp is not None and stamp[:3] == now[:3] and (not stamp[3] or bool(now[3]))

    def give_back_write(self) -> None:
        """After a write: close a read-write handle no holder needs, so the file is no longer
        locked against other processes (the next use opens it read-only again).  The write
        was flushed, so a reader opening the file next sees it.  Call under the lock."""
        if self.writable and self.holders == 0 and not self.forked_writer:
            self._close()

    def put_down(self) -> None:
        """After a read or write of a user that keeps no handle: close the file unless a keeper
        uses it (and even then give back write access no holder needs).  Call under the lock."""
        if self.keepers == 0 and not self.forked_writer:
            self._close()
        else:
            self.give_back_write()

    def dataset(self, name: str) -> h5py.Dataset:
        """The open dataset ``name`` (kept open: its chunk cache lives as long as it does)."""
        ds = self._datasets.get(name)
        if ds is None:
            assert self.file is not None
            ds = self.file[name]
            self._datasets[name] = ds
        return ds

    def _close(self) -> None:
        if self.forked_writer:  # the parent's handle: never closed here (see forget_after_fork)
            self._datasets, self.file, self.writable = {}, None, False
            return
        self._datasets.clear()
        if self.file is not None:
            try:
                self.file.close()
            finally:
                self.file = None
                self.writable = False


#: A file's modification time comes from a coarse clock: a same-size write in place (a process
#: with HDF5's locking off) in the same tick as the write a read-only handle's stamp recorded
#: leaves the stamp as it was, and HDF5's caches served the file of before for good.  A stamp
#: taken less than this after the modification time is trusted only until then (by
#: :func:`_now_ns`): the first use after it opens the file again, once (the new stamp is
#: trusted for good).  A write in that tick is seen at most this late
RACY_NS = 2 * 10**9

#: the clock stamps are judged by (tests set it)
_now_ns = time.time_ns


def _stamp(path: str) -> tuple[int, int, int, int] | None:
    """(inode, size, modification time in ns, racy until: modification time + RACY_NS if that
    is still to come, else 0) of ``path``; None if there is none.  No device: one file has
    another device number on another host's NFS mount."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    until = st.st_mtime_ns + RACY_NS
    return (st.st_ino, st.st_size, st.st_mtime_ns, until if _now_ns() < until else 0)


_files: dict[str, _SharedFile] = {}
_files_lock = threading.RLock()
#: every _SharedFile of the process, for the fork handler below
_all_shared: weakref.WeakSet[_SharedFile] = weakref.WeakSet()
#: a forked child's copies of its parent's writable handles: never used, never closed
_inherited: list[Any] = []
#: (device, inode) of those files: HDF5 would hand a new open of one the inherited state
_inherited_identities: set[tuple[int, int]] = set()


def _inherited_writer(path: str) -> bool:
    if not _inherited_identities:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) in _inherited_identities


def _after_fork_in_child() -> None:
    global _files_lock
    _files_lock = threading.RLock()
    for shared in list(_all_shared):
        shared.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _acquire(path: str, *, writable: bool, create: bool = False,
             hold: bool = False, keep: bool = True) -> _SharedFile:
    """The shared handle on ``path``, open (read-write when ``writable``) for one more user;
    ``hold``: the user keeps write access until its :func:`_release`; ``keep=False``: the user
    keeps no handle between operations (the file is not opened here: each use opens it, see
    :func:`_using`)."""
    with _files_lock:
        shared = _files.get(path)
        if shared is not None and shared.replaced():
            # the Remotes still using it keep it (on the old file); this one opens the new
            shared = None
        if shared is None:
            shared = _files[path] = _SharedFile(path)
        shared.users += 1
        shared.holders += hold
        shared.keepers += keep
    if not keep:
        return shared
    try:
        with shared.lock:
            shared.ensure_open(writable=writable or hold, create=create)
    except BaseException:
        _release(shared, hold=hold)
        raise
    return shared


def _release(shared: _SharedFile, *, hold: bool = False, keep: bool = True) -> None:
    """One Remote is done with ``shared``; the last one closes the file (flushing it), the
    last holder gives write access back, the last keeper leaves it closed between the others'
    operations."""
    with _files_lock:
        shared.users -= 1
        shared.holders -= hold
        shared.keepers -= keep
        if shared.users > 0:
            if hold and shared.holders == 0:
                with shared.lock:
                    shared.give_back_write()
            if keep and shared.keepers == 0:
                with shared.lock:
                    shared.put_down()
            return
        if _files.get(shared.path) is shared:
            del _files[shared.path]
        # closed before another Remote can open the path anew: HDF5 would refuse to open it
        # read-write while this handle still held it read-only
        with shared.lock:
            shared._close()


@contextlib.contextmanager
def _using(shared: _SharedFile, *, writable: bool, keep: bool,
           hold: bool = False) -> Iterator[h5py.File]:
    """``shared``'s file, open (read-write when ``writable``) for one read or write of a user.

    A keeper's handle stays open after it (a write gives write access back unless the user is
    a holder).  For a user that keeps none (``hold_open=False``: the file is shared with other
    processes that write it too) the file is opened under the inter-process lock -- shared for
    a read, exclusive for a write -- and closed (so flushed) before the lock is let go: a
    reader never has the file open while a writer changes it, and opens it after the write
    with nothing cached from before it."""
    with shared.lock:
        if keep:
            f = shared.ensure_open(writable=writable)
            try:
                yield f
            finally:
                if writable and not hold:
                    shared.give_back_write()
            return
        with _process_lock(shared.path, exclusive=writable):
            try:
                yield shared.ensure_open(writable=writable)
            finally:
                shared.put_down()


@contextlib.contextmanager
def _process_lock(path: str, *, exclusive: bool) -> Iterator[None]:
    """Hold the inter-process lock of the file ``path``, shared (a read) or exclusive (a
    write), waiting for it: how processes using the file with ``hold_open=False`` take turns.

    POSIX (``fcntl``) locks on the file itself: no lock file to leave behind, and a reader needs
    no folder it may write.  Byte 0 is the lock; byte 1 a writer holds while it waits for the
    readers on byte 0 to finish, and a reader takes it (shared, for a moment) before byte 0, so
    a stream of reads cannot keep a write waiting for ever.  HDF5's own lock is ``flock``, which
    Linux keeps apart from ``fcntl`` locks (elsewhere the two may conflict, hence Linux only),
    and it still refuses at once a process that is not taking turns (a notebook's h5py handle).
    ``fcntl`` locks belong to the process, not to a descriptor, so HDF5 closing its own
    descriptor on the file lets go of these too: that happens as the operation ends (the file
    flushed and closed), never in the middle of it.  Threads of one process take turns on the
    handle's lock before they come here."""
    if fcntl is None or not sys.platform.startswith("linux"):
        raise CapabilityNotSupportedError(
            f"hdf5:// with hold_open=False takes turns on the file with fcntl locks, which voxgate "
            f"uses on Linux only (this is {sys.platform}); open the file the default way")
    if os.path.isdir(path):
        raise _h5open_error_for_directory(path)
    try:
        fd = os.open(path, (os.O_RDWR if exclusive else os.O_RDONLY) | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RemoteNotFoundError(f"HDF5 file {path} does not exist") from None
    except PermissionError as exc:
        raise ReadOnlyError(
            f"cannot open {path} {'for writing' if exclusive else 'to read'}: {exc.strerror}"
        ) from None
    try:
        if exclusive:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, 1)  # (new readers wait from here)
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)
        else:
            fcntl.lockf(fd, fcntl.LOCK_SH, 1, 1)
            fcntl.lockf(fd, fcntl.LOCK_SH, 1, 0)
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, 1)
        yield
    finally:
        os.close(fd)  # (lets go of the locks)


def _lock_holders(path: str) -> str:
    """``" (held by process 1234: python3)"``: the other processes /proc/locks shows holding
    ``path``'s file (Linux), or "" when none can be named."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in lines:
        parts = line.split()
        if "->" in parts:  # (a waiter, listed after the lock it waits for)
            continue
        if len(parts) >= 6 and parts[5] == inode and parts[4].isdigit():
            pid = int(parts[4])
            if pid != os.getpid() and pid not in pids:
                pids.append(pid)
    named = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                named.append(f"{pid}: {f.read().strip()}")
        except OSError:
            named.append(str(pid))
    if not named:
        return ""
    return f" (held by process{'es' if len(named) > 1 else ''} {', '.join(named)})"


def _h5open_error_for_directory(path: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{path} is a directory, not an HDF5 file (a zarr or N5 store? name it zarr:// or "
        "n5://)")


def _h5open(path: str, mode: str) -> h5py.File:
    if os.path.isdir(path):
        raise _h5open_error_for_directory(path)
    try:
        return h5py.File(path, mode, rdcc_nbytes=_CACHE_BYTES, rdcc_nslots=_CACHE_SLOTS)
    except FileNotFoundError:
        raise RemoteNotFoundError(f"HDF5 file {path} does not exist") from None
    except OSError as exc:
        text = str(exc)
        lowered = text.lower()
        if "already open for read-only" in lowered:
            raise ReadOnlyError(
                f"cannot open {path} for writing: this process holds it open read-only "
                "elsewhere (an h5py.File opened with 'r'?); close that handle first"
            ) from exc
        if isinstance(exc, BlockingIOError) or "unable to lock" in lowered:
            raise RemoteBusyError(
                f"{path} is locked by another process{_lock_holders(path)} (HDF5 allows one "
                f"writer or many readers at a time): {text}"
            ) from exc
        if "signature" in lowered or "not an hdf5" in lowered:
            raise InvalidRequestError(f"{path} is not an HDF5 file ({text})") from exc
        if "superblock" in lowered or "truncated file" in lowered:
            raise InvalidRequestError(
                f"{path} is a damaged or truncated HDF5 file ({text}); h5clear or h5repack "
                "may recover it"
            ) from exc
        if "permission" in lowered or "errno = 13" in lowered:
            raise ReadOnlyError(f"cannot open {path} with mode {mode!r}: {text}") from exc
        raise VoxgateError(f"cannot open HDF5 file {path}: {text}") from exc
