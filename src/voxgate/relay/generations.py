"""Write generations: what the relay's ETags are made of (docs/relay.md, "Behind an HTTP cache").

Every channel incarnation has a *generation*: a random nonce and a counter that every write
through the relay bumps twice, once before its upstream write and once after it.  A response's
ETag is a hash of the channel's cache tag, its generation and the request's normalized region,
scale and encoding, so it can be computed, and a conditional GET answered 304, without reading
any data; and it changes whenever a write through the relay may have changed the response.

Kept in memory (with a nonce made at start-up, so a restarted relay never repeats an ETag of
its previous life), or in a directory: one small file per channel, replaced atomically under a
lock file, so relays that share the directory (and the upstream) share the generations: a
write through one relay changes the ETags the others give, and they drop their own cached
cells of the channel when they see a generation they did not make.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import uuid
from pathlib import Path

__all__ = ["Generations"]


class Generations:
    """Per-channel (nonce, counter) pairs, in memory or in a shared directory."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._memory: dict[str, int] = {}
        self._nonce = uuid.uuid4().hex  # the in-memory generations' (one per process life)
        #: file name -> ((inode, mtime, size), version) of the last read
        self._seen_files: dict[str, tuple[tuple[int, int, int], str]] = {}
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _name(tag: str) -> str:
        return hashlib.sha256(tag.encode()).hexdigest()[:32] + ".json"

    def current(self, tag: str) -> str:
        """The channel's generation as text (``nonce.counter``); a channel never written
        through any relay sharing the directory gets a nonce of its own on first use."""
        if self.directory is None:
            with self._lock:
                return f"{self._nonce}.{self._memory.get(tag, 0)}"
        name = self._name(tag)
        path = self.directory / name
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return self._update(tag, 0)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            known = self._seen_files.get(name)
        if known is not None and known[0] == stamp:
            return known[1]
        version = self._read(path)
        if version is None:  # replaced between the stat and the read, or damaged: ask again
            return self._update(tag, 0)
        with self._lock:
            self._seen_files[name] = (stamp, version)
        return version

    def bump(self, tag: str) -> str:
        """Count a write (or its end) of the channel; return the new generation."""
        if self.directory is None:
            with self._lock:
                self._memory[tag] = self._memory.get(tag, 0) + 1
                return f"{self._nonce}.{self._memory[tag]}"
        return self._update(tag, 1)

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            doc = json.loads(path.read_bytes())
            return f"{doc['nonce']}.{int(doc['generation'])}"
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _update(self, tag: str, step: int) -> str:
        """Add ``step`` to the channel's counter under the directory's lock file (made with a
        new nonce when missing or unreadable) and return the generation."""
        assert self.directory is not None
        path = self.directory / self._name(tag)
        with open(self.directory / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    doc = json.loads(path.read_bytes())
                    nonce, counter, fresh = str(doc["nonce"]), int(doc["generation"]), False
                except (OSError, ValueError, KeyError, TypeError):
                    nonce, counter, fresh = uuid.uuid4().hex, 0, True
                if fresh or step:
                    counter = 0 if fresh else counter + step
                    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
                    tmp.write_text(json.dumps({"channel": tag, "nonce": nonce,
                                               "generation": counter}))
                    os.replace(tmp, path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return f"{nonce}.{counter}"
