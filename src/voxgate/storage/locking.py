"""One writer at a time for a local file that is read, changed and written back.

A partial-chunk write reads the chunk, changes part of it and stores it again.  Two writers
of disjoint parts of one chunk (threads of one process, separately opened volumes, or other
processes) that both read before either stores lose one of the two parts.  ``file_lock``
makes the read-change-store of one file exclusive across all of them.

The lock is ``flock`` on a hidden file beside the one it guards (``.NAME.lock``), removed when
the lock is released.  A waiter that wakes up on a lock file its holder has removed since
opens the new one (as tensorstore's file kvstore does with its ``.__lock`` files), so two
writers never hold "the" lock at once.  Each ``file_lock`` opens the file anew, and ``flock``
locks belong to the open file, so threads of one process exclude each other too.  A lock file
left by a crash is taken and removed by the next writer.  ``flock`` needs a local disk (or NFS,
where Linux emulates it with ``fcntl`` locks).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

__all__ = ["file_lock", "lock_path"]


def lock_path(path: str) -> str:
    """The lock file guarding ``path``: a hidden name in the same folder (no listing of chunks
    or slices takes it for one)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.lock")


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Hold the exclusive lock of ``path`` (which need not exist; its folder must)."""
    lock = lock_path(path)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
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
