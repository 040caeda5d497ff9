"""map_blocks: run any function over a volume block by block, with halos, on Dask.

Each block is read with its halo (outside the volume reads as fill), passed to ``fn``, cropped
back to the block and written to the output.  The local threaded scheduler runs it by default;
pass a ``dask.distributed`` Client to spread it over a cluster, whose workers reopen both
volumes from their URLs (so in-memory ``mem://`` volumes cannot go there).  The blocks run
through :mod:`voxgate.blockwise`: a block failing with a transient error (an unreachable store,
a worker that died) is run again; any other error stops the run and is raised naming the block,
so the output is never silently incomplete.

A run writing into its own source (``out`` is the source, no halo) cannot simply be run again:
the blocks it finished hold ``fn``'s output, and ``fn`` applied to them a second time gives
wrong data for any ``fn`` that is not idempotent (``lambda b: b + 1``).  So such a run keeps a
journal (:class:`_Journal`): each block's result is saved before it is written and the block is
recorded once written; a rerun of the same call skips the recorded blocks, writes the saved
result of a block cut off mid-write, and runs the rest.  The journal lives in the local state
directory, as ``voxgate.copy``'s does (``$VOXGATE_STATE_DIR/map_blocks/``, or in this process
for a ``mem://`` volume), keyed by the volume's URL and scale; it is deleted when the run
completes.  It is locked while a run writes (``storage.file_lock``, on every platform), and
:func:`list_journals` / :func:`forget_journals` (``voxgate cp --status`` /
``--forget-map-blocks URL``) list and delete the journals of runs that stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import threading
import time
import types
import weakref
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..blockwise import (
    block_shape,
    check_for_cluster,
    check_output_for_cluster,
    check_run,
    cluster_spec,
    count_blocks,
    iter_blocks,
    run_blocks,
    scheduler_name,
)
from ..errors import DtypeError, InvalidRequestError, redact
from ..geometry import Box, Vec
from ..remotes.base import same_volume
from ..remotes.memory import MemoryRemote
from ..storage import file_lock, is_locked, state_dir
from ..storage.locking import LOOK_PATIENCE
from ..storage.npyfiles import NPY_LOCK
from ..volume import Volume
from ._common import (
    Provenance,
    as_volume,
    check_output_options,
    finish_advice,
    region_meta,
    resolve_output,
    scratch_result,
)

__all__ = [
    "MapBlocksJournal", "forget_journals", "list_journals", "map_blocks", "run_block",
]


class _Results(Protocol):
    """Where a run writing into its source keeps each block's result until the block is done:
    a dict, or the run's :class:`_Journal`."""

    def __contains__(self, block: object, /) -> bool: ...

    def __getitem__(self, block: Box, /) -> np.ndarray: ...

    def __setitem__(self, block: Box, result: np.ndarray, /) -> None: ...


def run_block(fn: Callable[[np.ndarray], Any], src: Volume, out: Volume, block: Box,
              halo: Vec, results: _Results | None = None) -> Box:
    """One block: read with halo, apply ``fn``, crop, write.  Returns the block.

    ``results`` (a run writing into its source): each block's result is kept there until the
    block is done, and a block run again (a transient error after part of its write) writes
    it again instead of reading its source, which it may already have overwritten."""
    if results is not None and block in results:
        out.write(results[block], block)
        return block
    ext = Box(block.start - halo, block.stop + halo)
    data = src.with_bounds("fill").read(ext)
    result = np.asarray(fn(data))
    if result.shape == tuple(ext.shape):
        result = result[Box(ext.start + halo, ext.stop - halo).slices(ext.start)]
    elif result.shape != tuple(block.shape):
        raise InvalidRequestError(
            f"fn returned shape {result.shape} for block {block!r}; it must return the shape it "
            f"was given {tuple(ext.shape)} (the halo is cropped) or the block's "
            f"{tuple(block.shape)}")
    if result.dtype != out.dtype:
        if not np.can_cast(result.dtype, out.dtype, casting="safe"):
            raise DtypeError(
                f"fn returned {result.dtype.name} but the output is {out.dtype.name}; pass "
                f"dtype='{result.dtype.name}' to map_blocks or cast inside fn")
        result = result.astype(out.dtype)
    result = np.ascontiguousarray(result)
    if results is not None:
        results[block] = result
    out.write(result, block)
    return block


#: the journals of runs writing into a ``mem://`` volume: kept in this process, as its data are
_memory_journals: dict[tuple[str, int], _Journal] = {}
_memory_lock = threading.Lock()


def _fn_identity(fn: Callable[..., Any]) -> str:
    """A best-effort identity of ``fn``: its name and a digest of its code.  The same function
    defined again (a notebook cell run again) has the same identity, an edited one another;
    the values a closure or a ``functools.partial`` holds are not part of it."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    code = getattr(fn, "__code__", None)
    if code is None:  # a callable object: its class's __call__
        code = getattr(type(fn).__call__, "__code__", None)
    name = (getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
            or type(fn).__qualname__)
    module = getattr(fn, "__module__", None) or type(fn).__module__
    if not isinstance(code, types.CodeType):  # a builtin or a numpy ufunc: its name says it
        return f"{module}.{name}"
    digest = hashlib.sha256()
    _hash_code(code, digest)
    return f"{module}.{name}:{digest.hexdigest()[:16]}"


def _same_fn(a: str, b: str) -> bool:
    """Two :func:`_fn_identity` name the same function: the same code (under any name: a
    lambda moved into a named function is the same), or the same name when there is none."""
    code_a, code_b = a.rpartition(":")[2], b.rpartition(":")[2]
    return code_a == code_b if ":" in a and ":" in b else a == b


def _hash_code(code: types.CodeType, digest: Any) -> None:
    digest.update(code.co_code)
    digest.update(" ".join(code.co_names).encode())
    for const in code.co_consts:  # (a nested function's code: its repr holds an address)
        if isinstance(const, types.CodeType):
            _hash_code(const, digest)
        else:
            digest.update(repr(const).encode())


def _key(block: Box) -> str:
    return " ".join(str(int(v)) for v in (*block.start, *block.stop))


#: a journal line: a block's key (:func:`_key`) and the CRC-32 of what was written there
_RECORD = re.compile(r"(-?[0-9]+(?: -?[0-9]+){5}) ([0-9a-f]{8})")


def _records(lines: list[str]) -> dict[str, str]:
    """The blocks a journal's ``lines`` (split at "\\n") record, key: CRC-32.  The last one
    may be cut short by a kill (only complete lines count), and lines that are no record
    (garbage, bytes that are not UTF-8) are passed over: those blocks are done again."""
    found = (_RECORD.fullmatch(line) for line in lines[1:-1])
    return {m[1]: m[2] for m in found if m is not None}


def _key_box(key: str) -> Box:
    """The block a journal key names (:func:`_key`)."""
    v = [int(t) for t in key.split()]
    return Box(Vec(*v[:3]), Vec(*v[3:]))


def _crc(array: np.ndarray) -> str:
    return f"{zlib.crc32(np.ascontiguousarray(array).data.cast('B')):08x}"


def _check_done(journal: _Journal, target: Volume) -> None:
    """The blocks an unfinished earlier run recorded still hold what it wrote there (their
    CRC-32).  A volume deleted and made again under the same name, or restored from a copy,
    does not: its recorded blocks would be skipped and never get ``fn``.  Reads every recorded
    block once; not on a lossy encoding (jpeg), whose voxels read back are not those written."""
    if (target.remote.meta.scale(target.scale).encoding or "") in _LOSSY:
        return
    for key, crc in journal.done.items():
        v = [int(t) for t in key.split()]
        block = Box(tuple(v[:3]), tuple(v[3:]))
        if _crc(target.read(block)) != crc:
            raise InvalidRequestError(
                f"map_blocks into {journal.url} in place: an earlier run did not finish "
                f"({len(journal.done)} of {journal.plan['blocks']} blocks done, journal "
                f"{journal.where}), but block {block!r} no longer holds what that run wrote "
                "there: the volume was changed since (written, restored, or made again under "
                "the same name).  Nothing was written.  Pass resume=False to apply fn to "
                "every block as the volume is now")


#: encodings whose voxels read back are not the ones written
_LOSSY = ("jpeg",)


def _save(path: Path, result: np.ndarray) -> None:
    """``result`` saved whole or not at all (a temporary name, fsync'd, then renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, result, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Journal:
    """The record of a run writing into its source: the blocks it finished, and the result of
    each block being written, saved before its write, so that a block cut off mid-write (a
    kill, a transient error) is written again from it rather than computed again from voxels
    it may already have overwritten.  A block is recorded (fsync'd) before its saved result
    is dropped.  ``path`` None: kept in this process (a ``mem://`` volume)."""

    def __init__(self, path: Path | None, url: str, plan: dict[str, Any], fn: str) -> None:
        self.path, self.url, self.plan, self.fn = path, url, plan, fn
        #: the blocks finished (their keys), each with the CRC-32 of what was written there
        self.done: dict[str, str] = {}
        self.active = False
        #: a mem:// journal: the array it was written for (a volume deleted and created again
        #: under the same name is another volume)
        self.anchor: weakref.ref[np.ndarray] | None = None
        self._results: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._file: Any = None
        #: holds the journal's file_lock (another run into the same volume is refused)
        self._held = contextlib.ExitStack()

    @property
    def where(self) -> str:
        return "in this process" if self.path is None else f"at {self.path}"

    def _saved(self, key: str) -> Path:
        assert self.path is not None
        return self.path.with_suffix(".blocks") / (key.replace(" ", "_") + ".npy")

    def __contains__(self, block: object) -> bool:
        if not isinstance(block, Box):
            return False
        key = _key(block)
        with self._lock:
            if key in self._results:
                return True
        return self.path is not None and self._saved(key).exists()

    def __getitem__(self, block: Box) -> np.ndarray:
        key = _key(block)
        with self._lock:
            if key in self._results:
                return self._results[key]
        if self.path is None:
            raise KeyError(block)
        with NPY_LOCK:  # (storage.npyfiles: numpy parses the header with ast)
            return np.asarray(np.load(self._saved(key), allow_pickle=False))

    def __setitem__(self, block: Box, result: np.ndarray) -> None:
        key = _key(block)
        if self.path is not None:
            self._saved(key).parent.mkdir(parents=True, exist_ok=True)
            _save(self._saved(key), result)
        with self._lock:
            self._results[key] = result

    def start(self, f: Any) -> None:
        """A fresh journal in ``f`` (its header first)."""
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"url": self.url, "plan": self.plan, "fn": self.fn}) + "\n")
        f.flush()
        os.fsync(f.fileno())
        self._file = f

    def finish(self, block: Box) -> None:
        """``block`` is written: record it with the CRC-32 of what was written, durably, then
        drop its saved result."""
        key = _key(block)
        crc = _crc(self[block])
        with self._lock:
            self.done[key] = crc
            self._results.pop(key, None)
            if self._file is not None:
                self._file.write(f"{key} {crc}\n")
                self._file.flush()
                os.fsync(self._file.fileno())
        if self.path is not None:
            self._saved(key).unlink(missing_ok=True)

    def discard(self) -> None:
        """Forget every block and saved result (a new run starts over)."""
        self.done.clear()
        self._results.clear()
        if self.path is not None:
            shutil.rmtree(self.path.with_suffix(".blocks"), ignore_errors=True)

    def close(self, *, complete: bool) -> None:
        with self._lock:
            try:
                if self._file is not None:
                    self._file.close()  # (before its removal: Windows removes no open file)
                    self._file = None
                if complete:
                    self.discard()
                    if self.path is not None:
                        self.path.unlink(missing_ok=True)
            finally:
                self._held.close()  # the lock, last: no other run sees a half-removed journal
        if self.path is None:
            with _memory_lock:
                self.active = False
                if complete and _memory_journals.get((self.url, self.plan["scale"])) is self:
                    del _memory_journals[(self.url, self.plan["scale"])]


def _describe(plan: dict[str, Any]) -> str:
    return f"region {plan['region']}, block={tuple(plan['block'])}, dtype {plan['dtype']}"


def _may_resume(old: _Journal, plan: dict[str, Any], fn: str, resume: bool | None) -> bool:
    """Whether an unfinished run's journal ``old`` is resumed by this call (False: it is
    discarded, ``resume=False``); refused when its plan or its ``fn`` differ."""
    if resume is False:
        return False
    head = (f"map_blocks into {old.url} in place: an earlier run did not finish "
            f"({len(old.done)} of {old.plan['blocks']} blocks done, journal {old.where})")
    restored = ("or pass resume=False if the volume was restored to its state before that run "
                "(the journal is discarded and fn applied to every block)")
    if old.plan != plan:
        raise InvalidRequestError(
            f"{head} with another block plan: {_describe(old.plan)}; this call has "
            f"{_describe(plan)}.  Its finished blocks already hold fn's output, so this plan "
            "would apply fn to them twice: rerun the first call (its view, block= and dtype=) "
            f"to finish it, {restored}")
    if not _same_fn(old.fn, fn) and resume is not True:
        raise InvalidRequestError(
            f"{head} with another function ({old.fn}); this call's fn is {fn}.  Rerun with the "
            "first function to finish it; pass resume=True to finish it with this one (the "
            f"blocks done keep the first function's output), {restored}")
    return True


def _open_journal(url: str, plan: dict[str, Any], fn: str, resume: bool | None,
                  anchor: np.ndarray | None = None) -> _Journal:
    """The journal of a run writing into ``url`` (at ``plan['scale']``): an unfinished earlier
    run's, resumed, or a new one.  Refused while another run writes into the same volume.
    ``anchor``: a mem:// volume's array, which its journal must have been written for."""
    busy = (f"map_blocks into {url} in place: another run is writing into it now; wait for it "
            "to finish (two runs writing into their source at once would overwrite each "
            "other's input)")
    if url.startswith("mem://"):
        with _memory_lock:
            old = _memory_journals.get((url, plan["scale"]))
            if old is not None and old.active:
                raise InvalidRequestError(busy)
            if old is not None and old.anchor is not None and old.anchor() is not anchor:
                old = None  # the volume it was written for is gone
            if old is not None and _may_resume(old, plan, fn, resume):
                journal = old
                journal.fn = fn
            else:
                journal = _Journal(None, url, plan, fn)
                journal.anchor = None if anchor is None else weakref.ref(anchor)
                _memory_journals[(url, plan["scale"])] = journal
            journal.active = True
        return journal
    name = hashlib.sha256(json.dumps([url, plan["scale"]]).encode()).hexdigest()[:24]
    # (beside voxgate.copy's journals, in "transfers")
    path = state_dir("map_blocks") / f"{name}.journal"
    held = contextlib.ExitStack()  # (handed to the journal, which releases it on close)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # (a lock file beside it, on every platform: storage.locking; tried for a moment, as
        # a look by list_journals / --status holds it that long)
        try:
            held.enter_context(file_lock(str(path), blocking=False, patience=LOOK_PATIENCE))
        except BlockingIOError:
            raise InvalidRequestError(f"{busy} (its journal {path} is locked)") from None
        # (bytes that are not UTF-8 make a line that is no record: passed over)
        f = open(path, "a+", encoding="utf-8", errors="replace")  # (closed by the journal)
    except OSError as exc:
        held.close()
        exc.add_note(f"map_blocks into {url} in place keeps a journal of the blocks done in "
                     f"{path.parent}; set VOXGATE_STATE_DIR to a writable directory")
        raise
    except BaseException:
        held.close()
        raise
    try:
        f.seek(0)
        lines = f.read().split("\n")
        journal = _Journal(path, url, plan, fn)
        journal._held = held
        try:
            header = json.loads(lines[0])
            old = _Journal(path, str(header["url"]), dict(header["plan"]), str(header["fn"]))
        except (ValueError, KeyError, TypeError):
            old = None  # empty, or its header cut short by a kill: no block was written yet
        if old is not None:
            # the last line may be cut short by a kill: only complete lines count
            old.done = _records(lines)
            if _may_resume(old, plan, fn, resume):
                journal._file = f
                if lines[-1]:  # (a line cut short: what is appended starts a line of its own)
                    f.write("\n")
                if not _same_fn(old.fn, fn):  # resume=True: from now on this fn
                    journal.start(f)
                    f.writelines(f"{key} {crc}\n" for key, crc in old.done.items())
                    f.flush()
                    os.fsync(f.fileno())
                journal.done = old.done
                return journal
            old.discard()
        journal.start(f)
        return journal
    except BaseException:
        f.close()
        held.close()
        raise


@dataclasses.dataclass(frozen=True)
class MapBlocksJournal:
    """The journal of an in-place :func:`map_blocks` run that did not finish, as
    :func:`list_journals` finds it (``voxgate cp --status`` lists them with the copies')."""

    #: the journal file (None: a ``mem://`` volume's, kept in this process)
    path: Path | None
    #: the volume written into (credentials redacted), at ``scale``
    url: str
    scale: int
    #: the function's recorded identity (module.name:code digest)
    fn: str
    region: str
    blocks_done: int
    blocks_total: int
    #: seconds since the journal was last written
    age: float
    #: a run is writing into it now (its journal is locked): ``forget_journals`` leaves it
    running: bool = False

    def __str__(self) -> str:
        where = "in this process" if self.path is None else str(self.path)
        state = ", running now" if self.running else ""
        return (f"map_blocks in place {self.url} scale {self.scale} fn {self.fn}: "
                f"{self.blocks_done}/{self.blocks_total} blocks done, last written "
                f"{_age(self.age)} ago{state} ({where})")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _read_journal(path: Path, now: float) -> MapBlocksJournal | None:
    """The status of the journal file ``path`` (None: not one, or removed meanwhile)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
        mtime = path.stat().st_mtime
        header = json.loads(lines[0])
        plan = header["plan"]
        # (as _open_journal counts them: complete lines only)
        done = len(_records(lines))
        # (redacted again: a journal an older voxgate wrote may hold a token)
        return MapBlocksJournal(path, redact(str(header["url"])), int(plan["scale"]),
                                redact(str(header["fn"])), str(plan.get("region", "")), done,
                                int(plan["blocks"]), max(0.0, now - mtime),
                                running=is_locked(str(path)))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None  # (an empty journal: its run stopped before its header; nothing done)


def list_journals() -> list[MapBlocksJournal]:
    """The journals of in-place runs that did not finish (stopped, killed or failed), oldest
    first: those in ``$VOXGATE_STATE_DIR/map_blocks/`` and this process's ``mem://`` ones.
    Each is finished by running the same call again, or removed by :func:`forget_journals`."""
    now = time.time()
    found: list[MapBlocksJournal] = []
    folder = state_dir("map_blocks")
    if folder.is_dir():
        for p in folder.glob("*.journal"):
            j = _read_journal(p, now)
            if j is not None:
                found.append(j)
    with _memory_lock:
        for (url, scale), mj in _memory_journals.items():
            found.append(MapBlocksJournal(None, url, scale, mj.fn, str(mj.plan["region"]),
                                          len(mj.done), int(mj.plan["blocks"]), 0.0,
                                          mj.active))
    return sorted(found, key=lambda j: -j.age)


def _spellings(url: str) -> set[str]:
    """``url`` as given and as a journal records the volume it opens (absolute, redacted)."""
    names = {redact(url)}
    with contextlib.suppress(Exception):
        vol = as_volume(url)
        names.add(redact(vol.url))
        names.add(redact(json.loads(cluster_spec(vol.remote))["url"]))
    return names


def forget_journals(url: str | None = None) -> list[MapBlocksJournal]:
    """Delete the journals (and saved block results) of unfinished in-place runs into ``url``
    (every one when None); return those found, the ones deleted with ``running`` False.  A
    journal a run is writing now is left (``running`` True).  The volumes are left as they
    are: the same call run again after this applies ``fn`` to every block, the ones the
    stopped run finished included."""
    names = None if url is None else _spellings(url)
    out: list[MapBlocksJournal] = []
    for j in list_journals():
        if names is not None and j.url not in names:
            continue
        if j.path is None:
            with _memory_lock:
                mj = _memory_journals.get((j.url, j.scale))
                if mj is not None and not mj.active:
                    del _memory_journals[(j.url, j.scale)]
            out.append(j)
            continue
        try:
            with file_lock(str(j.path), blocking=False):
                j.path.unlink(missing_ok=True)
                shutil.rmtree(j.path.with_suffix(".blocks"), ignore_errors=True)
        except BlockingIOError:
            out.append(dataclasses.replace(j, running=True))
            continue
        out.append(dataclasses.replace(j, running=False))
    return out


_NOT_IN_PLACE = (
    "resume= is for a run writing into its own source (out= the source Volume): only such a "
    "run keeps a journal; a run into another volume is simply run again whole")


def map_blocks(
    fn: Callable[[np.ndarray], Any],
    source: Any,
    out: Any = None,
    *,
    block: Sequence[int] = (128, 256, 256),
    halo: Sequence[int] = (0, 0, 0),
    dtype: Any = None,
    kind: str | None = None,
    client: Any = None,
    workers: int | None = None,
    progress: bool = False,
    overwrite: bool = False,
    retries: int = 2,
    resume: bool | None = None,
    **create_options: Any,
) -> Any:
    """Apply ``fn`` to every ``block`` of ``source`` (with ``halo`` voxels of context).

    ``fn`` takes a C-order (z, y, x) array of the block plus its halo and returns an array of
    that shape (the halo is cropped) or of the block's shape.  ``out``: None returns a numpy
    array; a URL is created with the source's geometry (``dtype``, ``kind`` default to the
    source's; it must not exist unless ``overwrite``); a writable Volume is written in place.
    ``client``: a ``dask.distributed.Client``; without one the local threaded scheduler runs
    ``workers`` blocks at a time.  ``block`` is rounded up to whole chunks of the output.
    ``retries``: how many times a block failing with a transient error (an unreachable store,
    a dask worker that died) is run again; other errors are raised at once, naming the block.

    Writing into the source itself (``out`` is the source Volume, no halo; not with
    ``client=``): a run that stops (Ctrl-C, a kill, an error) leaves the blocks it finished
    holding ``fn``'s output, so the same call run again must not apply ``fn`` to them again.
    Such a run keeps a journal (in ``$VOXGATE_STATE_DIR/map_blocks/``; for a ``mem://`` volume,
    in this process) keyed by the volume and scale: each block's result is saved before it is
    written and the block recorded once written.  The same call run again skips the recorded
    blocks, writes the saved result of a block cut off mid-write and runs the rest, so ``fn``
    is applied exactly once to every voxel; the journal is deleted when a run completes.
    ``fn`` itself cannot be compared reliably: its name and code are recorded, and a rerun with
    another block plan (view, ``block=``, ``dtype=``) or another function is refused, and so
    is one whose recorded blocks no longer hold what the first run wrote there (their CRC-32,
    read back once: the volume was written, restored or made again since).
    ``resume``: None (default) resumes a matching journal; True also resumes one written by
    another function (e.g. one fixed after it stopped the run; the blocks done keep the first
    function's output); False discards the journal and applies ``fn`` to every block (only
    when the volume was restored to its state before the first run).
    """
    t0 = time.perf_counter()
    if not callable(fn):
        raise InvalidRequestError(
            f"map_blocks applies a function to each block; fn must be callable, got "
            f"{type(fn).__name__} {fn!r}")
    # refused before an out= URL is created
    check_output_options(map_blocks, out, create_options)
    workers, retries = check_run(workers, retries, client, "map_blocks")
    if resume is not None and not isinstance(resume, bool):
        raise InvalidRequestError(f"resume must be None, True or False, got {resume!r}")
    src = as_volume(source)
    if resume is not None and not ((isinstance(out, Volume)
                                    and same_volume(out.remote, src.remote))
                                   or (isinstance(out, (str, os.PathLike)) and overwrite)):
        raise InvalidRequestError(_NOT_IN_PLACE)
    if src.ndim != 3 or any(a.step != 1 for a in src._axes):
        raise InvalidRequestError("map_blocks needs a 3-D view with step 1")
    b = Vec.of(block, "block")
    h = Vec.of(halo, "halo")
    if any(v <= 0 for v in b):
        raise InvalidRequestError(f"block must be positive in every axis, got {tuple(b)}")
    if any(v < 0 for v in h):
        raise InvalidRequestError(f"halo must not be negative, got {tuple(h)}")
    if any(hv > bv for hv, bv in zip(h, b, strict=True)):
        raise InvalidRequestError(
            f"halo {tuple(h)} is larger than the block {tuple(b)}: each block would read more "
            "of its neighbours than of itself; use a larger block or a smaller halo")
    region = src.bounds
    try:
        dt = np.dtype(dtype) if dtype is not None else src.dtype
    except TypeError:
        raise InvalidRequestError(f"unknown dtype {dtype!r}; give a numpy dtype such as "
                                  "'uint8', 'uint64' or 'float32'") from None
    if client is not None:  # (before an out= URL is created)
        check_for_cluster(src.url, "source", "map_blocks")
        check_output_for_cluster(out, "map_blocks")

    def covers_region(vol: Volume) -> None:
        if not vol.bounds.contains(region):
            raise InvalidRequestError(f"out {vol.url} covers {vol.bounds!r}, not {region!r}")
        if any(h) and same_volume(vol.remote, src.remote):
            raise InvalidRequestError(
                f"out is the source {src.url}: with a halo each block reads its neighbours, "
                "which earlier blocks would already have overwritten; write to another volume")

    target = resolve_output(out, region_meta(src, region, dt, kind or src.kind),
                            overwrite=overwrite, options=create_options, check=covers_region,
                            scale_of=None if isinstance(source, np.ndarray) else src)
    # whole output chunks per block, on the output's chunk grid (anchored at its store's
    # origin, not at the start of a view given as out): two blocks never rewrite the same
    # chunk at once
    grid = target.remote.write_grid(target.scale)
    b = block_shape(grid, dt.itemsize, region.shape, block=b)
    # walked as the blocks are sent, never listed (it would grow with the volume)
    on_grid = target.remote.grid_bounds(target.scale)
    n_blocks = count_blocks(region, b, on_grid)
    in_place = same_volume(target.remote, src.remote) and target.scale == src.scale
    if client is not None:
        check_for_cluster(target.url, "output", "map_blocks", writes=True)
        if in_place:
            # dask runs a block again when its worker dies, on another worker, which would
            # read the block's voxels as the first run already wrote them (fn applied twice)
            raise InvalidRequestError(
                f"map_blocks with a dask.distributed client: out is the source {src.url}; a "
                "block whose worker dies is run again and would read what it already wrote "
                "(fn applied twice); write to another volume, or run it without client=")
    if resume is not None and not in_place:
        raise InvalidRequestError(_NOT_IN_PLACE)
    # in place, each block's result is kept until the block is done (see run_block), and the
    # blocks done are journalled for a rerun (see _Journal)
    journal = None
    if in_place:
        plan = {"scale": target.scale, "region": str(region), "block": list(b),
                "dtype": dt.str, "blocks": n_blocks}
        # (a relative path made absolute: the same name elsewhere is another volume)
        # (credentials redacted: the journal on disk never holds a token)
        url = (target.url if target.url.startswith("mem://")
               else redact(json.loads(cluster_spec(target.remote))["url"]))
        anchor = (target.remote.array(target.scale) if isinstance(target.remote, MemoryRemote)
                  else None)
        journal = _open_journal(url, plan, _fn_identity(fn), resume, anchor)
        try:
            _check_done(journal, target)
        except BaseException:
            journal.close(complete=False)
            raise
    todo = (p.box for p in iter_blocks(region, b, on_grid)
            if journal is None or _key(p.box) not in journal.done)
    # (the journal's blocks are this plan's: _open_journal checks the plan is the same)
    done_before = 0 if journal is None else len(journal.done)
    left = region.intersect(on_grid).size - (0 if journal is None else sum(
        _key_box(key).size for key in journal.done))

    written = [0]  # blocks written by this run (a failed run says how many)

    def done(bx: Box, _r: object) -> None:
        written[0] += 1
        if journal is not None:
            journal.finish(bx)

    complete = False
    try:
        run_blocks(functools.partial(run_block, fn, src, target, halo=h, results=journal), todo,
                   name="map_blocks", client=client, workers=workers, progress=progress,
                   retries=retries, total=n_blocks - done_before, total_bytes=left * dt.itemsize,
                   on_done=done)
        complete = True
    except BaseException as exc:
        if journal is not None:
            exc.add_note(
                f"map_blocks into {target.url} in place: {len(journal.done)} of {n_blocks} "
                f"blocks are done and recorded (journal {journal.where}); run the same call "
                "again to finish the rest (fn is not applied again to the blocks done)")
        elif out is not None:
            # (a store this call made, or overwrote, holds part of the result: said, as the
            # same call run again is refused until overwrite=True)
            exc.add_note(
                f"map_blocks into {target.url}: {written[0]} of {n_blocks} blocks were written "
                "before this error; the others hold what they held before (the fill value in a "
                f"store this call created).  {finish_advice(out, overwrite)}")
        raise
    finally:
        if journal is not None:
            journal.close(complete=complete)
    prov = Provenance("map_blocks", "local", src.url, {
        "blocks": n_blocks, "scheduler": scheduler_name(client),
        "seconds": round(time.perf_counter() - t0, 3)})
    if out is None:
        return scratch_result(target, prov)
    return target
