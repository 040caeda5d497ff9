"""The relay's state file, shared by every process that serves it (``voxgate serve --workers
N``): what clients created or changed through the project service, reserved ids, metadata,
downsample status.

Each process keeps the state in memory (:attr:`StateFile.data`) and

- *refreshes* it whenever the file was replaced by another process (checked with one
  ``stat`` per request: the file is only ever replaced whole, and the process keeps the last
  file it read open, so its inode cannot be reused by a later file and "same inode" means
  "same content");
- changes it in *transactions*: the file's exclusive lock
  (:func:`~voxgate.storage.locking.file_lock`: ``.NAME.lock`` beside it, held with ``flock``,
  or made with ``O_EXCL`` where there is no ``fcntl``), a refresh, the change, and a save
  (write a new file, rename it over the old one) before the lock is let go.  A
  read-modify-write such as reserving ids is therefore atomic across processes: two workers
  reserving at once get disjoint ranges.

A refresh is a three-way merge: the changes another process saved (the file now against the
file last read) are applied to the memory copy in place, except where this process changed
the same value and has not saved it yet (then its value is kept, and saved next: the last
writer wins).  Dictionaries are merged key by key (and keep their identity, so a handler
holding one of them keeps working on the live state); the top-level ``deleted`` list is
merged as a set; any other value is replaced whole.  A process's own changes are never lost
to another's save, and a change saved by one process is seen by every request that any
process begins after the save returned.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import InvalidRequestError, redacting_logger
from ..storage.locking import file_lock

__all__ = ["StateFile", "merge_into"]

log = redacting_logger("voxgate.relay")

_MISSING: Any = object()
#: top-level lists merged as sets (items added and removed on each side)
_SET_LISTS = frozenset({"deleted"})


def merge_into(ours: dict[str, Any], base: dict[str, Any], theirs: dict[str, Any],
               top: bool = True) -> None:
    """Apply the changes from ``base`` to ``theirs`` to ``ours``, in place, wherever ``ours``
    still holds the ``base`` value (see the module docstring)."""
    for key in list(base.keys() | theirs.keys()):
        b, t = base.get(key, _MISSING), theirs.get(key, _MISSING)
        if t == b:
            continue  # they did not change it
        o = ours.get(key, _MISSING)
        if isinstance(o, dict) and isinstance(t, dict) and (b is _MISSING or isinstance(b, dict)):
            merge_into(o, {} if b is _MISSING else b, t, top=False)  # key by key, in place
        elif top and key in _SET_LISTS and isinstance(o, list) and isinstance(t, list):
            old = b if isinstance(b, list) else []
            removed = [x for x in old if x not in o]
            added = [x for x in o if x not in old and x not in t]
            o[:] = [x for x in t if x not in removed] + added
        elif o == b:  # we did not change it: theirs
            if t is _MISSING:
                ours.pop(key, None)
            else:
                ours[key] = copy.deepcopy(t)
        # else both changed the same value: ours is kept, and saved next


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """What tells files apart: the inode (never reused while the last file read is held
    open), and size and time stamp for a file changed in place by something else."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class StateFile:
    """A JSON document in a file that several processes read and change (module docstring);
    in memory only when ``path`` is None."""

    def __init__(self, path: Path | None, empty: dict[str, Any],
                 on_change: Callable[[Any, Any], None] | None = None,
                 watch: str = "") -> None:
        self.path = path
        self._empty = empty
        #: called (under the lock) with the value of ``watch`` before and after a refresh
        #: that changed it
        self.on_change = on_change
        self._watch = watch
        self._mutex = threading.RLock()
        self._depth = 0  # transactions entered by the thread holding _mutex
        self._file_lock: contextlib.ExitStack | None = None  # the file's lock, while held
        self._held: int | None = None  # the file last read or written, kept open
        self._held_id: tuple[int, ...] | None = None
        self.base: dict[str, Any] = copy.deepcopy(empty)
        self.data: dict[str, Any] = copy.deepcopy(empty)
        if path is not None:
            found = self._read_current()
            if found is not None:
                loaded, fd, ident = found
                self._hold(fd, ident)
                self.base = {**copy.deepcopy(empty), **loaded}
                self.data = copy.deepcopy(self.base)

    # -- reading ----------------------------------------------------------------------------------
    def _file_id(self) -> tuple[int, ...] | None:
        assert self.path is not None
        try:
            return _identity(os.stat(self.path))
        except FileNotFoundError:
            return None

    def _read_current(self) -> tuple[dict[str, Any], int, tuple[int, ...]] | None:
        """Read the file now at ``path``: (its document, the file kept open, its identity;
        the caller holds them with :meth:`_hold`), or None when there is none."""
        assert self.path is not None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            with os.fdopen(os.dup(fd), "rb") as f:
                text = f.read()
            doc = json.loads(text)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            os.close(fd)
            raise InvalidRequestError(f"relay state {self.path} is damaged: {exc}; restore it "
                                      "from a backup or move it away to start empty") from None
        return doc, fd, _identity(st)

    def _hold(self, fd: int, ident: tuple[int, ...]) -> None:
        if self._held is not None:
            os.close(self._held)
        self._held, self._held_id = fd, ident

    def refresh(self) -> None:
        """Take in what other processes saved since this one last read or wrote the file."""
        if self.path is None or self._file_id() == self._held_id:
            return  # (the common case: one stat)
        with self._mutex:
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        if self.path is None or self._file_id() == self._held_id:
            return
        try:
            found = self._read_current()
        except InvalidRequestError as exc:  # replaced by something else: keep what we have
            log.warning("%s", exc)
            return
        if found is None:
            return
        loaded, fd, ident = found
        try:
            theirs = {**copy.deepcopy(self._empty), **loaded}
            watched = self.on_change is not None and theirs.get(self._watch) != self.base.get(
                self._watch)
            before = copy.deepcopy(self.data.get(self._watch)) if watched else None
            merge_into(self.data, self.base, theirs)
            self.base = theirs
            if watched and self.on_change is not None and before != self.data.get(self._watch):
                self.on_change(before, self.data.get(self._watch))
        except BaseException:
            os.close(fd)
            raise
        # held (so refresh's one-stat check takes the file as read) only now that it is taken
        # in: another thread's refresh meanwhile waits for this one on the mutex, instead of
        # finding the new file already held and reading the state from before it
        self._hold(fd, ident)

    # -- changing ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Hold the state for a read-modify-write (reentrant): the process's lock and the
        file's, then a refresh; changes made inside are saved by :meth:`save`."""
        with self._mutex:
            self._depth += 1
            try:
                if self._depth == 1 and self.path is not None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    held = contextlib.ExitStack()
                    held.enter_context(file_lock(str(self.path)))
                    self._file_lock = held
                    self._refresh_locked()
                yield self.data
            finally:
                if self._depth == 1 and self._file_lock is not None:
                    held, self._file_lock = self._file_lock, None
                    held.close()
                self._depth -= 1

    def save(self) -> None:
        """Write the memory copy (merged with whatever another process saved first)."""
        with self.transaction():
            if self.path is None:
                return
            tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                with os.fdopen(os.dup(fd), "w") as f:
                    f.write(json.dumps(self.data, indent=1, sort_keys=True))
                os.replace(tmp, self.path)
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            self._hold(fd, _identity(st))
            self.base = copy.deepcopy(self.data)


class TransactionLock:
    """``with catalog.lock:`` as before, now a :meth:`StateFile.transaction`."""

    def __init__(self, state: StateFile) -> None:
        self._state = state
        self._local = threading.local()

    def __enter__(self) -> TransactionLock:
        cm = self._state.transaction()
        cm.__enter__()
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        stack.append(cm)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._local.stack.pop().__exit__(kind, exc, tb)
