"""Write generations: what the relay's ETags are made of (docs/relay.md, "Behind an HTTP cache").

Every channel incarnation has a *generation*: a random nonce and a counter that every write
through the relay bumps twice, once before its upstream write and once after it.  A response's
ETag is a hash of the channel's cache tag, its generation, a digest of the metadata it is read
with and the request's normalized region, scale and encoding, so it can be computed, and a
conditional GET answered 304, without reading any data; and it changes whenever a write through
the relay may have changed the response.

Kept in memory (with a nonce made at start-up, so a restarted relay never repeats an ETag of
its previous life), or in a directory: one small file per channel, replaced atomically under a
lock file, so relays that share the directory (and the upstream) share the generations: a
write through one relay changes the ETags the others give, and they drop their own cached
cells of the channel when they see a generation they did not make.

Every lock here is an exclusive :func:`~voxgate.storage.locking.file_lock` (``flock`` where
there is ``fcntl``, an ``O_EXCL`` lock file elsewhere).  The channel's write lock, which many
writers hold at once, is built of them: a writer takes the channel's gate for a moment and,
under it, a lock of its own (``<channel>.writers/w-<random>``) that it holds until its write
ends; "no write in progress" is "no such lock is held" (each is tried without waiting: one
whose holder died is taken and removed, so it never stops the channel), and whoever needs
that to stay true (a delete, a store into the shared disk tier) keeps the gate until it is
done, so no write can begin meanwhile.

A deleted channel's incarnation takes its generation with it (:meth:`Generations.forget`,
under its gate, once no write is in progress): its file and writers' folder are removed, as
its entry in memory, so scratch channels created and deleted by a pipeline leave nothing
behind.  Nothing makes them again: a write is admitted under the gate only while the channel
is live (:meth:`Generations.write_lock`), and a read that finds no file makes one only while
the channel is live, asked under the gate too (:meth:`Generations.current`); a read of a
deleted channel gets a throwaway generation (its ETag is never another's: the tag of a
channel made again under the name is another, and so is the nonce).  Writers' folders left
by a relay stopped half way through a delete are removed when a relay starts
(:meth:`Generations.prune_writers`): an empty one is always safe to remove under its gate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from ..storage.locking import file_lock

__all__ = ["Generations", "before_generation", "only_own"]

#: generation files kept open at once (beyond: the least recently used one is closed, and read
#: again the next time)
_KEEP_OPEN = 256


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class Generations:
    """Per-channel (nonce, counter) pairs, in memory or in a shared directory."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._memory: dict[str, int] = {}
        self._nonce = uuid.uuid4().hex  # the in-memory generations' (one per process life)
        #: file name -> (the file last read, kept open so its inode is never reused; its
        #: (device, inode, size, mtime); its version), the most recently used last
        self._seen_files: OrderedDict[str, tuple[int, tuple[int, ...], str]] = OrderedDict()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _name(tag: str) -> str:
        return hashlib.sha256(tag.encode()).hexdigest()[:32] + ".json"

    def current(self, tag: str, live: Callable[[], bool] | None = None) -> str:
        """The channel's generation as text (``nonce.counter``); a channel never written
        through any relay sharing the directory gets a nonce of its own on first use.

        ``live``: asked, under the channel's gate, before a missing file is made: when it says
        the channel is gone (deleted, its file removed by :meth:`forget`), nothing is made and
        a throwaway generation is returned (one never given before, so no ETag made of it
        ever matches another).

        One ``stat`` when it did not change: files are only ever replaced whole, and the
        last one read stays open, so a file with its inode is that very file (a replaced
        file's inode could otherwise be reused by a later one, and a time stamp's
        granularity is coarser than two writes); size and time stamp catch a file changed
        in place by something else."""
        if self.directory is None:
            with self._lock:
                return f"{self._nonce}.{self._memory.get(tag, 0)}"
        known = self._known(tag)
        return known if known is not None else self._make(tag, live)

    def _known(self, tag: str) -> str | None:
        """The generation in the channel's file (None when there is none, or it is damaged)."""
        assert self.directory is not None
        name = self._name(tag)
        path = self.directory / name
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        with self._lock:
            known = self._seen_files.get(name)
            if known is not None and known[1] == _identity(st):
                self._seen_files.move_to_end(name)
                return known[2]
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        st = os.fstat(fd)
        with os.fdopen(os.dup(fd), "rb") as f:
            version = self._parse(f.read())
        if version is None:  # damaged: made again (by the caller)
            os.close(fd)
            return None
        with self._lock:
            old = self._seen_files.pop(name, None)
            self._seen_files[name] = (fd, _identity(st), version)
            closing = [old[0]] if old is not None else []
            while len(self._seen_files) > _KEEP_OPEN:
                closing.append(self._seen_files.popitem(last=False)[1][0])
        for held in closing:
            os.close(held)
        return version

    def _make(self, tag: str, live: Callable[[], bool] | None) -> str:
        """The generation of a channel whose file is missing or damaged: made (a new nonce),
        unless ``live`` says, under the channel's gate (which a delete holds while it removes
        the file), that the channel is gone.  (Never called holding the gate.)"""
        if live is None:
            return self._update(tag, 0)
        with file_lock(str(self._lock_path(tag, ".g"))):
            if not live():
                return f"gone-{uuid.uuid4().hex}.0"
            return self._update(tag, 0)

    def stored(self, tag: str) -> str | None:
        """The channel's generation when it has one (None when its file is missing: never
        written or read, or deleted); nothing is made, no lock is taken."""
        if self.directory is None:
            return self.current(tag)
        return self._known(tag)

    def forget(self, tag: str, files: bool = True) -> None:
        """Forget the generation of a deleted channel incarnation (``tag`` is never used
        again): its entry in memory and the file kept open, and (``files``) its file and its
        writers' folder.  Removing the files is for the process that deletes the channel,
        holding :meth:`exclusive` (no write in progress, none begins) after the channel is
        gone for every later writer (they are admitted under the gate only while it is live,
        see :meth:`write_lock`); the other processes only forget what they kept."""
        name = self._name(tag)
        with self._lock:
            self._memory.pop(tag, None)
            kept = self._seen_files.pop(name, None)
        if kept is not None:
            os.close(kept[0])
        if not files or self.directory is None:
            return
        # the writers' folder holds lock files of writers that are gone, at most
        shutil.rmtree(self._writers(tag), ignore_errors=True)
        with file_lock(str(self.directory / "generations")), \
                contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / name)

    def prune_writers(self) -> int:
        """Remove the writers' folders with no write in progress and nothing else in them (a
        relay stopped half way through a channel's delete left its folder for good): each
        under its channel's gate, not waited for (a folder whose gate is held is left).  A
        live channel's folder is made again by its next write.  Returns how many went."""
        if self.directory is None:
            return 0
        removed = 0
        for folder in self.directory.glob("*.writers"):
            stem = folder.name[:-len(".writers")]
            try:
                with file_lock(str(self.directory / f"{stem}.g"), blocking=False):
                    if self._held(folder):
                        continue
                    os.rmdir(folder)
                    removed += 1
            except (BlockingIOError, OSError):
                continue  # (in use, or not empty: left)
        return removed

    # -- the write protocol of a shared disk tier (voxgate serve --workers N) --------------------
    def _lock_path(self, tag: str, kind: str) -> Path:
        assert self.directory is not None
        return self.directory / (self._name(tag)[:-5] + kind)

    def _writers(self, tag: str) -> Path:
        """The folder of the locks of the channel's writes in progress (one each)."""
        # (not ".w": the lock file of the channel's writers before, a file in directories
        # written by older relays)
        return self._lock_path(tag, ".writers")

    def _writing(self, tag: str) -> bool:
        """Whether a write to the channel is in progress in any process (under its gate, so
        that no write begins meanwhile): one of the writers' locks is held.  One whose holder
        died is taken and removed here (:func:`file_lock` does), so it is no write."""
        return self._held(self._writers(tag))

    @staticmethod
    def _held(folder: Path) -> bool:
        """Whether a writer's lock in ``folder`` is held (those whose holders died are taken
        and removed)."""
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return False
        for name in names:
            if not (name.startswith(".w-") and name.endswith(".lock")):
                continue  # (a lock file's break file, or something else)
            try:
                with file_lock(str(folder / name[1:-len(".lock")]), blocking=False):
                    pass
            except BlockingIOError:
                return True
        return False

    @contextlib.contextmanager
    def write_lock(self, tag: str, admit: Callable[[], None] | None = None) -> Iterator[None]:
        """Held (shared with other writers) for the whole of a write to the channel, from the
        bump before it to the bump after it: no cell of the channel is stored in a shared
        disk tier meanwhile (see :meth:`store_lock`).  Taken under the channel's gate (so not
        while :meth:`exclusive` or a store holds it), then held as a lock of its own.

        ``admit()`` is called under the gate before anything is made, and raises when the
        write may not begin (its channel was deleted: a delete holds the gate while it removes
        the channel's files, see :meth:`forget`, so none of them is made again)."""
        if self.directory is None:
            if admit is not None:
                admit()
            yield
            return
        mine = self._writers(tag) / f"w-{uuid.uuid4().hex}"
        with contextlib.ExitStack() as held:
            with file_lock(str(self._lock_path(tag, ".g"))):
                if admit is not None:
                    admit()
                mine.parent.mkdir(exist_ok=True)
                held.enter_context(file_lock(str(mine)))
            yield

    @contextlib.contextmanager
    def exclusive(self, tag: str) -> Iterator[None]:
        """Held alone: waits until no write to the channel is in progress in any process (they
        hold :meth:`write_lock`), and no write begins until it is let go.  A channel's delete
        holds it while its store is moved aside, so no write in flight lands in the path a
        channel created again under the name will use."""
        if self.directory is None:
            yield
            return
        with file_lock(str(self._lock_path(tag, ".g"))):  # (no write begins)
            delay = 0.001
            while self._writing(tag):  # (the writes in flight end)
                time.sleep(delay)
                delay = min(2 * delay, 0.05)
            yield

    @contextlib.contextmanager
    def store_lock(self, tag: str) -> Iterator[bool]:
        """Yield whether a cell of the channel may be stored in a disk tier shared by several
        processes now: True only while no write to the channel is in progress in any process
        (they hold :meth:`write_lock`); then no write can begin until this is let go.  The
        caller also checks that the generation is still the one its data was read under."""
        if self.directory is None:
            yield True
            return
        with file_lock(str(self._lock_path(tag, ".p"))), \
                contextlib.ExitStack() as gate:  # one storer at a time (quick)
            try:
                # (not waited for: a write is beginning, or the channel is held alone)
                gate.enter_context(file_lock(str(self._lock_path(tag, ".g")), blocking=False))
                free = not self._writing(tag)
            except BlockingIOError:
                free = False
            if not free:  # what was read may be old
                gate.close()
            yield free  # (when free, no write can begin until the gate is let go)

    def bump(self, tag: str) -> str:
        """Count a write (or its end) of the channel; return the new generation."""
        if self.directory is None:
            with self._lock:
                self._memory[tag] = self._memory.get(tag, 0) + 1
                return f"{self._nonce}.{self._memory[tag]}"
        return self._update(tag, 1)

    @staticmethod
    def _parse(data: bytes) -> str | None:
        try:
            doc = json.loads(data)
            return f"{doc['nonce']}.{int(doc['generation'])}"
        except (ValueError, KeyError, TypeError):
            return None

    def _update(self, tag: str, step: int) -> str:
        """Add ``step`` to the channel's counter under the directory's lock file (made with a
        new nonce when missing or unreadable) and return the generation."""
        assert self.directory is not None
        path = self.directory / self._name(tag)
        with file_lock(str(self.directory / "generations")):  # (.generations.lock)
            try:
                doc = json.loads(path.read_bytes())
                nonce, counter, fresh = str(doc["nonce"]), int(doc["generation"]), False
            except (OSError, ValueError, KeyError, TypeError):
                nonce, counter, fresh = uuid.uuid4().hex, 0, True
            if fresh or step:
                counter = 0 if fresh else counter + step
                tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
                tmp.write_text(json.dumps({"channel": tag, "nonce": nonce,
                                           "generation": counter}))
                os.replace(tmp, path)
        return f"{nonce}.{counter}"


def _split(version: str) -> tuple[str, int]:
    nonce, _, counter = version.rpartition(".")
    return nonce, int(counter)


def before_generation(a: str, b: str) -> bool:
    """Whether generation ``a`` comes before ``b`` (the same nonce, a smaller counter)."""
    (na, ca), (nb, cb) = _split(a), _split(b)
    return na == nb and ca < cb


def only_own(seen: str, version: str, own: set[str]) -> bool:
    """Whether every bump from ``seen`` up to ``version`` is one of ``own``."""
    (ns, cs), (nv, cv) = _split(seen), _split(version)
    return ns == nv and cs < cv and all(f"{nv}.{k}" in own for k in range(cs + 1, cv + 1))
