"""One writer at a time for a local file that is read, changed and written back.

A partial-chunk write reads the chunk, changes part of it and stores it again.  Two writers
of disjoint parts of one chunk (threads of one process, separately opened volumes, or other
processes) that both read before either stores lose one of the two parts.  ``file_lock``
makes the read-change-store of one file exclusive across all of them.

The lock is a hidden file beside the one it guards (``.NAME.lock``), removed when the lock is
released, held in one of two ways:

- where the platform has ``fcntl`` (Linux, macOS): ``flock`` on that file.  A waiter that wakes
  up on a lock file its holder has removed since opens the new one (as tensorstore's file
  kvstore does with its ``.__lock`` files), so two writers never hold "the" lock at once.  Each
  ``file_lock`` opens the file anew, and ``flock`` locks belong to the open file, so threads of
  one process exclude each other too.  A lock file left by a crash is taken and removed by the
  next writer.  ``flock`` needs a local disk (or NFS, where Linux emulates it with ``fcntl``
  locks).
- elsewhere (Windows): the lock file's existence is the lock.  It is made with ``O_EXCL`` (one
  creator wins, thread or process) and holds its holder's process id and host; a waiter polls.
  One left by a holder that died (its process is gone on this host) is removed by the next
  writer, under a second ``O_EXCL`` file (``.NAME.lock.break``) so that two waiters never
  remove a lock one of them has just taken.  A lock held on another host is waited for (its
  process cannot be asked); so is one whose dead holder's process id was given to a new
  process meanwhile (rare: remove the file by hand).  Tests force this branch on Linux
  (``_FLOCK = False``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator

try:
    import fcntl
except ImportError:  # (Windows)
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOOK_PATIENCE", "file_lock", "is_locked", "lock_path"]

#: hold locks with flock (False: with O_EXCL lock files, the branch of platforms without fcntl)
_FLOCK = fcntl is not None
#: a lock file with no holder written in it this many seconds after it was made: its creator
#: died between making it and writing it (a live one writes at once)
_UNWRITTEN_GRACE = 10.0
#: a break file this old: its maker died while removing a dead holder's lock (microseconds)
_BREAK_GRACE = 10.0


def lock_path(path: str) -> str:
    """The lock file guarding ``path``: a hidden name in the same folder (no listing of chunks
    or slices takes it for one)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.lock")


#: how long a holder that refuses rather than waits (``blocking=False``) tries first, when it
#: must not be refused for a look: :func:`is_locked` holds a lock that long at most
LOOK_PATIENCE = 0.5


@contextlib.contextmanager
def file_lock(path: str, *, blocking: bool = True, patience: float = 0.0) -> Iterator[None]:
    """Hold the exclusive lock of ``path`` (which need not exist; its folder must).

    ``blocking=False``: raise ``BlockingIOError`` when another (thread or process) holds it,
    instead of waiting: at once, or after trying for ``patience`` seconds."""
    hold = _flock if _FLOCK else _exclusive_file
    deadline = time.monotonic() + patience
    with contextlib.ExitStack() as held:
        while True:
            try:
                held.enter_context(hold(lock_path(path), blocking))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
        yield


def is_locked(path: str) -> bool:
    """Whether another (thread or process) holds the lock of ``path`` now: the lock is taken
    and let go at once to see (a holder starting meanwhile waits that moment, or is refused
    if it does not wait).  False where the lock cannot be taken for another reason (a folder
    that cannot be written: no holder can take it either)."""
    try:
        with file_lock(path, blocking=False):
            return False
    except BlockingIOError:
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _flock(lock: str, blocking: bool) -> Iterator[None]:
    assert fcntl is not None
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
            mine = os.fstat(fd)
            try:
                now = os.stat(lock)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)  # the holder before us removed this lock file: take the current one
    try:
        yield
    finally:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)  # before the unlock: a waiter then sees it is gone
        finally:
            os.close(fd)


@contextlib.contextmanager
def _exclusive_file(lock: str, blocking: bool) -> Iterator[None]:
    import uuid

    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                     "token": uuid.uuid4().hex}).encode()
    delay = 0.001
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o644)
        except FileExistsError:
            if _remove_if_dead(lock):
                continue
            if not blocking:
                raise BlockingIOError(errno.EAGAIN, f"{lock} is held by another writer",
                                      lock) from None
            time.sleep(delay)
            delay = min(2 * delay, 0.05)
            continue
        try:
            os.write(fd, me)
        finally:
            os.close(fd)
        break
    try:
        yield
    finally:
        # ours (a waiter removes a lock only when its holder's process is gone, not ours)
        _remove(lock)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _age(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def _remove_if_dead(lock: str) -> bool:
    """Remove ``lock`` when its holder is dead; True when it is gone (try again at once)."""
    holder = _read(lock)
    if holder is None:
        return True  # released meanwhile
    if not _dead(holder, lock):
        return False
    breaker = lock + ".break"
    try:
        os.close(os.open(breaker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        # another waiter is removing it now; a break file left by one that died meanwhile
        # is removed when old
        if _age(breaker) > _BREAK_GRACE:
            _remove(breaker)
        return False
    try:
        # still the dead holder's (not a lock taken since by a waiter that removed it first)
        if _read(lock) == holder:
            _remove(lock)
    finally:
        _remove(breaker)
    return True


def _remove(path: str) -> None:
    """Remove ``path`` (gone already is fine).  Windows refuses to remove a file another
    process has open, and waiters open a lock file for a moment to read its holder: retried
    for up to a second."""
    for _ in range(100):
        try:
            os.unlink(path)
            return
        except FileNotFoundError:
            return
        except PermissionError:
            time.sleep(0.01)
    os.unlink(path)


def _dead(holder: bytes, lock: str) -> bool:
    """Whether the holder written in a lock file is known to be gone."""
    try:
        info = json.loads(holder)
        pid, host = int(info["pid"]), str(info["host"])
    except (ValueError, KeyError, TypeError):
        # made but not written yet (its maker writes at once), or written by something else
        return _age(lock) > _UNWRITTEN_GRACE
    if host != socket.gethostname():
        return False  # another machine's process: it cannot be asked
    return not _alive(pid)


def _alive(pid: int) -> bool:
    if sys.platform == "win32":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        # (os.kill(pid, 0) would terminate the process on Windows)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return bool(kernel32.GetLastError() == 5)  # access denied: it exists
        try:
            code = ctypes.c_ulong()
            if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
                return True
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True
