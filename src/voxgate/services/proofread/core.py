"""What every proofreading edit shares: :class:`EditResult`, the checks of the volume and ids,
where ids are (DVID's label index, a store's bounding boxes or the cached label stats) and the
block-wise edit that saves each block's old voxels to the history before writing it."""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ...errors import (
    InvalidRequestError,
    PartialWriteError,
    ReadOnlyError,
    RemoteNotFoundError,
    VoxgateError,
    check_flag,
)
from ...geometry import Box, Vec, chunk_boxes, whole_at_least
from ...lru import make_newest
from ...parallel import run_blocks
from ...remotes.base import Capability, Remote, guard_writes, has_capability, on_written
from ...storage.locking import file_lock
from ...volume import Volume
from .._common import Provenance, as_volume, progress_bar
from ..proofread_history import History, current_user, history_location, history_options

#: ids given as floats are refused: a float holds integers exactly only up to 2^53
EXACT_FLOAT_IDS = 2**53


@dataclass(frozen=True)
class EditResult:
    """What one edit did: its number in the history, the ids it changed (old -> new, for a
    split the new ids of its pieces), the blocks it rewrote and which path ran."""

    n: int
    operation: str
    mapping: dict[int, int] = field(default_factory=dict)
    new_ids: tuple[int, ...] = ()
    blocks: int = 0
    boxes: tuple[Box, ...] = ()
    provenance: Provenance | None = None


# -- input checks ---------------------------------------------------------------------------------
def _label(v: Any, dtype: np.dtype[Any], what: str = "id") -> int:
    if isinstance(v, (float, np.floating)):
        raise InvalidRequestError(
            f"{what} {v!r} is a float; segment ids are integers up to 2^64-1 and a float holds "
            f"them exactly only up to 2^53 ({EXACT_FLOAT_IDS}): pass an int")
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidRequestError(f"{what} must be an integer, got {v!r}")
    v = int(v)
    top = int(np.iinfo(dtype).max)
    if v <= 0:
        raise InvalidRequestError(f"{what} {v} is not a segment id: 0 is background, ids are "
                                  f"1..{top}")
    if v > top:
        raise InvalidRequestError(f"{what} {v} does not fit this volume's {dtype.name} labels "
                                  f"(1..{top})")
    return v


def _open(seg: Any) -> Volume:
    if isinstance(seg, np.ndarray):
        raise InvalidRequestError(
            "proofreading edits a stored volume (a Volume or URL); for a numpy array, copy it "
            "into one first (voxgate.copy(arr, 'mem://name')) or use numpy directly")
    vol = as_volume(seg, mode="r+")
    if vol.remote.scheme == "dvid" and getattr(vol.remote, "locked", False):
        raise ReadOnlyError(
            f"{vol.url}: node {vol.meta.extra.get('dvid', {}).get('node')} is committed "
            "(locked) and DVID refuses edits to it; branch it (DVIDRepo.branch) and proofread "
            "the branch's node opened with mode='r+'")
    if vol.mode != "r+" or not has_capability(vol.remote, Capability.WRITE):
        raise ReadOnlyError(
            f"{vol.url} is opened read-only and proofreading writes to it; open it with "
            "voxgate.open(url, mode='r+') (a read-only token or file cannot be edited)")
    if vol.kind != "segmentation":
        raise InvalidRequestError(
            f"{vol.url} is an image (kind='image'); merge, split and relabel edit a "
            "segmentation's labels")
    if vol.dtype.kind not in "ui" or vol.ndim != 3 or any(a.step != 1 for a in vol._axes):
        raise InvalidRequestError(
            f"proofreading needs a 3-D integer segmentation view with step 1, got "
            f"{vol.dtype.name} with shape {vol.shape}")
    return vol


class _Gate:
    """The edits of one volume in this process against its plain writes (``vol[...] = x``):
    an edit runs alone (other edits and new writes wait; it waits for the writes in flight),
    writes run together.  Re-entrant for the thread running the edit: an edit may run another
    edit, or write through a Volume, of its volume."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._owner: int | None = None  # the thread running an edit
        self._depth = 0
        self._writes = 0  # writes in flight
        self._waiting = 0  # edits waiting (new writes let them go first)

    @contextlib.contextmanager
    def edit(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            self._waiting += 1
            try:
                while self._owner not in (None, me) or (self._owner is None and self._writes):
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._owner = me
            self._depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            if self._owner == threading.get_ident():
                counted = False
            else:
                while self._owner is not None or self._waiting:
                    self._cond.wait()
                self._writes += 1
                counted = True
        try:
            yield
        finally:
            if counted:
                with self._cond:
                    self._writes -= 1
                    if self._writes == 0:
                        self._cond.notify_all()


#: volume (:func:`_volume_key`) -> the gate its edits and writes pass in this process, while
#: an edit or a write holds it (weak: a script writing ever more volumes keeps none of theirs)
_VOLUME_LOCKS: weakref.WeakValueDictionary[str, _Gate] = weakref.WeakValueDictionary()
#: lock folder (:func:`_lock_root`) -> the lock its edits take in this process (while an edit
#: holds it, as above), and its file lock held (and how deep the holding thread is in nested
#: edits: merge runs relabel)
_EDIT_LOCKS: weakref.WeakValueDictionary[str, threading.RLock] = weakref.WeakValueDictionary()
_EDIT_FILES: dict[str, tuple[contextlib.ExitStack, list[int]]] = {}
_edit_guard = threading.Lock()
_F = TypeVar("_F", bound=Callable[..., Any])


def _volume_key(vol: Volume) -> str:
    """One name per store URL, whatever its view, scale, ``history_dir``, URL spelling or open
    options: the folder its history is kept in by default when opened without options
    (beside the data of a file store, so ``zarr://a.zarr``, ``zarr:///abs/a.zarr`` and
    ``a.zarr`` name one volume; for other stores a folder named after the URL).  Its scales
    share one name: they share meshes.  The volumes its open options choose (two multiscales
    of one group) share it too: what is keyed by it (the gate of edits against writes, the
    forgetting of label statistics) is only ever stricter for that, and two spellings of one
    choice (``multiscale=0`` and none) must meet there."""
    return _remote_key(vol.remote)


def _remote_key(remote: Remote) -> str:
    """:func:`_volume_key` of the volume ``remote`` holds."""
    return str(history_location(str(remote.spec()["url"]), 0, None))


def _chosen_key(remote: Remote) -> str:
    """One name per volume that ``remote``'s URL and the open options that choose what it
    holds name (:func:`~voxgate.services.proofread_history.history_options`): two multiscales
    of one OME-Zarr group have two, whose label statistics are not each other's."""
    return str(history_location(str(remote.spec()["url"]), 0, None, history_options(remote)))


@contextlib.contextmanager
def _one_edit(vol: Volume, history_dir: Any) -> Iterator[None]:
    """Held for a whole edit of ``vol`` (its reads, its new ids, its writes, its history).
    Each edit reads the blocks it rewrites, so two at once lost one another's changes where
    their blocks met.

    In this process two edits of one volume run one after the other, whatever their
    ``history_dir``: the first lock is the volume's (:func:`_volume_key`).  Between processes
    the lock is a file lock (:func:`~voxgate.storage.locking.file_lock`, ``.edit.lock``) in the
    history folder of the volume opened without options (:func:`_lock_root`), so edits of other
    processes wait only when they keep their history in the same folder (the default one does,
    for every process of this machine).  The locks are always taken in this order (volume,
    then history folder), and both are re-entrant: an edit may run another edit of its
    volume."""
    root = _history_root(vol, history_dir)  # (refused first when it cannot be made)
    lock_root = _lock_root(vol, history_dir)
    key = str(lock_root)
    with _edit_guard:
        gate = _VOLUME_LOCKS.setdefault(_volume_key(vol), _Gate())
        lock = _EDIT_LOCKS.setdefault(key, threading.RLock())
    with gate.edit(), lock:
        held = _EDIT_FILES.get(key)
        if held is None:
            root.mkdir(parents=True, exist_ok=True)
            stack = contextlib.ExitStack()
            stack.enter_context(file_lock(str(lock_root / "edit")))
            held = _EDIT_FILES[key] = (stack, [0])
        held[1][0] += 1
        try:
            yield
        finally:
            held[1][0] -= 1
            if held[1][0] == 0:
                del _EDIT_FILES[key]
                held[0].close()  # (lets the file lock go)


def _edit_excludes_writes(remote: Remote, _scale: int) -> contextlib.AbstractContextManager[Any]:
    """A :func:`guard_writes` hook: a write through a Volume (``vol[...] = x``) of a volume
    that an edit of this process is rewriting waits for the edit.  The edit read the blocks it
    rewrites: a write of other voxels of one of them, landing between its read and its write,
    was overwritten with what the edit had read (lost)."""
    if remote.mode != "r+":
        return contextlib.nullcontext()
    try:
        key = _remote_key(remote)
    except (VoxgateError, OSError, ValueError):  # (no history folder: nothing edits it)
        return contextlib.nullcontext()
    with _edit_guard:
        return _VOLUME_LOCKS.setdefault(key, _Gate()).write()


guard_writes(_edit_excludes_writes)


def one_edit_at_a_time(fn: _F) -> _F:
    """Run the edit ``fn(seg, ...)`` under :func:`_one_edit` of its volume."""

    @functools.wraps(fn)
    def run(seg: Any, *args: Any, history_dir: Any = None, **kw: Any) -> Any:
        # checked before anything: a bad workers= raised ThreadPoolExecutor's bare ValueError /
        # TypeError after the edit was logged as started
        if kw.get("workers") is not None:
            kw["workers"] = whole_at_least(kw["workers"], 1, "workers")
        if "progress" in kw:
            check_flag(kw["progress"], "progress")
        vol = _open(seg)
        with _one_edit(vol, history_dir):
            return fn(vol, *args, history_dir=history_dir, **kw)

    return run  # type: ignore[return-value]


def _hist(vol: Volume, history_dir: Any) -> History:
    return History(_history_root(vol, history_dir))


def _history_root(vol: Volume, history_dir: Any) -> Path:
    """The folder of ``vol``'s history (its URL's, and a folder further down for the open
    options that choose what the URL holds: an undo of multiscale "a" never restores the
    voxels saved from multiscale "b"); refused when a file stands where it or a folder above
    it would be (it could not be made: mkdir raised a bare FileExistsError)."""
    root = history_location(_stable_url(vol), vol.scale, history_dir,
                            history_options(vol.remote))
    for p in (root, *root.parents):
        if p.exists():
            if not p.is_dir():
                raise InvalidRequestError(
                    f"the history of {vol.url} goes in the folder {root}, but {p} is a file; "
                    "pass history_dir= a folder (or move the file)")
            break
    return root


def _lock_root(vol: Volume, history_dir: Any) -> Path:
    """The folder of the file lock of ``vol``'s edits: its history's without the open options
    (:func:`_history_root` is in it or is it), so the edits of every choice of one URL take
    turns between processes, and two spellings of one choice (``multiscale=0`` and none)
    exclude each other."""
    return history_location(_stable_url(vol), vol.scale, history_dir)


def _stable_url(vol: Volume) -> str:
    return str(vol.remote.spec()["url"])


def _recorded(vol: Volume) -> dict[str, Any]:
    """What an edit's record says of the volume: its URL and the open options that chose it
    (left out when none, as in the records made before)."""
    options = history_options(vol.remote)
    return {"url": _stable_url(vol), **({"options": options} if options else {})}


# -- where ids are --------------------------------------------------------------------------------
_stats_lock = threading.Lock()
#: (volume, scale) -> {"boxes": {id: Box}, "max": largest id, "store": its store URL's
#: name}: the label_stats of a volume, computed once per process and kept up to date by the
#: edits made here (the volume named by :func:`_chosen_key`, so every URL spelling and view of
#: it shares them, and two multiscales of one group do not).  An edit or write of any volume
#: of a store URL (:func:`_volume_key`) drops those of its other volumes at that scale: two
#: spellings of one choice (``multiscale=0`` and none) are one volume with two names
#: Kept for the volumes used last: past :data:`_STATS_KEPT` volumes or :data:`_STATS_IDS` ids
#: in all (about 200 bytes each), the oldest are dropped (computed again if used again); the
#: newest is always kept.  Unbounded, a script proofreading one volume after another kept the
#: id table of every one of them.
_STATS: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
_STATS_KEPT = 16
_STATS_IDS = 1 << 21


def _keep_stats(key: tuple[str, int], out: dict[str, Any]) -> dict[str, Any]:
    """(Under _stats_lock) ``_STATS[key]`` (``out`` unless it is there), now the newest; the
    oldest beyond the caps dropped."""
    got = _STATS.setdefault(key, out)
    make_newest(_STATS, key, limit=_STATS_KEPT, weight=lambda st: len(st["boxes"]),
                max_weight=_STATS_IDS)
    return got


class _Pass:
    """A label_stats pass in flight; ``stale`` once an edit or write of its store's scale is
    noted while it reads (it may have read the old voxels: it is not kept)."""

    __slots__ = ("stale",)

    def __init__(self) -> None:
        self.stale = False


#: (store URL's name, scale) -> the passes of its volumes in flight.  Every pass and edit of
#: the library runs under its volume's edit lock (:func:`_one_edit`), so none overlap; this
#: check stays for a lock name that moved under a running edit (its default history folder:
#: a changed ``$VOXGATE_STATE_DIR`` or working directory).  Only passes in flight are here:
#: writes to ever more volumes leave nothing behind (a count per store did)
_PASSES: dict[tuple[str, int], set[_Pass]] = {}


def _stats_key(vol: Volume) -> tuple[str, int]:
    # by the volume's one name (not its URL as typed: two spellings of one store share it)
    return _chosen_key(vol.remote), vol.scale


def _store_key(vol: Volume) -> tuple[str, int]:
    return _volume_key(vol), vol.scale


def _dvid_labels(vol: Volume) -> Any:
    return getattr(vol.remote, "labels", None) if has_capability(
        vol.remote, Capability.SERVER_PROOFREAD) else None


def _stats(vol: Volume) -> dict[str, Any]:
    key, store = _stats_key(vol), _store_key(vol)
    from ..label_stats import label_stats

    while True:
        mine = _Pass()
        with _stats_lock:
            got = _STATS.get(key)
            if got is not None:
                _STATS.move_to_end(key)
                return got
            _PASSES.setdefault(store, set()).add(mine)
        try:
            # the whole volume: the cache serves any view
            df = label_stats(vol.at_scale(vol.scale))
            boxes = {int(r.id): Box((int(r.z0), int(r.y0), int(r.x0)),
                                    (int(r.z1), int(r.y1), int(r.x1))) for r in df.itertuples()}
            out = {"boxes": boxes, "max": max(boxes, default=0), "store": store[0]}
        except BaseException:
            with _stats_lock:
                _pass_ended(store, mine)
            raise
        with _stats_lock:
            _pass_ended(store, mine)
            if not mine.stale:  # no edit was noted while the pass read
                return _keep_stats(key, out)
        # else an edit landed meanwhile: the statistics it kept, or another pass


def _pass_ended(store: tuple[str, int], mine: _Pass) -> None:
    """(Under _stats_lock) ``mine`` no longer reads ``store``."""
    passes = _PASSES.get(store)
    if passes is not None:
        passes.discard(mine)
        if not passes:
            del _PASSES[store]


def _written_elsewhere(remote: Remote, scale: int) -> None:
    """An :func:`on_written` hook: a write made in this process outside the edits (``vol[...]
    = x``, a copy, a downsample) may add ids (a larger max: a new id would collide with one)
    or move them, so the volume's statistics are computed again when next needed."""
    with _stats_lock:
        _edited((_remote_key(remote), scale))  # (a pass reading meanwhile is not kept either)


on_written(_written_elsewhere)


def _edited(store: tuple[str, int], keep: tuple[str, int] | None = None) -> None:
    """(Under _stats_lock) note an edit or write of the store URL's volumes at a scale
    (:func:`_store_key`): a pass running now may have read what it changed, and the
    statistics of its volumes but ``keep`` are forgotten."""
    for running in _PASSES.get(store, ()):
        running.stale = True
    for k in [k for k, st in _STATS.items()
              if k != keep and k[1] == store[1] and st.get("store") == store[0]]:
        del _STATS[k]


def _forget_stats(vol: Volume, scales: Iterable[int] | None = None) -> None:
    """Forget the label statistics of ``vol``'s store at its scale (or at ``scales``)."""
    name = _volume_key(vol)
    with _stats_lock:
        for k in [vol.scale] if scales is None else scales:
            _edited((name, k))


def _boxes(vol: Volume, ids: Iterable[int]) -> dict[int, Box]:
    """The box of each id inside the view; unknown ids are refused."""
    ids = list(ids)
    region = vol.bounds
    out = _find_boxes(vol, ids, region)
    missing = [i for i in ids if i not in out or out[i].is_empty()]
    if missing:
        raise InvalidRequestError(
            f"id(s) {missing} have no voxels in {vol.url} inside {region!r}; merge, split and "
            "relabel edit existing segments (voxgate stats URL lists them)")
    return out


def _find_boxes(vol: Volume, ids: Iterable[int], region: Box) -> dict[int, Box]:
    """The box of each id inside ``region`` (a box of ``vol``'s scale); ids without voxels
    there are left out."""
    ids = list(ids)
    out: dict[int, Box] = {}
    labels = _dvid_labels(vol)
    if labels is not None and vol.scale == 0:
        sizes = labels.sizes(ids)
        for i, s in zip(ids, sizes.tolist(), strict=True):
            if s:
                out[i] = labels.sparsevol_size(i).box.intersect(region)
    elif has_capability(vol.remote, Capability.SERVER_BOUNDING_BOXES):
        out = _server_boxes(vol, ids)
        out = {i: b.intersect(region) for i, b in out.items()}
    else:
        boxes = _stats(vol)["boxes"]
        for i in ids:
            if i in boxes:
                out[i] = boxes[i].intersect(region)
    return {i: b for i, b in out.items() if not b.is_empty()}


def _server_boxes(vol: Volume, ids: Iterable[int]) -> dict[int, Box]:
    """Tight boxes of ``ids`` asked of a store that knows them (bossDB ``boundingbox``), one
    request per id; ids the store does not know are left out."""
    remote: Any = vol.remote
    out = {}
    for i in ids:
        try:
            out[i] = remote.bounding_box(i, vol.scale, tight=True)
        except RemoteNotFoundError:
            continue
    return out


def _new_ids(vol: Volume, count: int) -> list[int]:
    """``count`` unused ids: reserved by the store where it can, else max + 1 onwards."""
    if count == 0:
        return []
    if has_capability(vol.remote, Capability.RESERVE_IDS):
        first = int(vol.remote.reserve_ids(count))  # type: ignore[attr-defined]
    else:
        st = _stats(vol)
        with _stats_lock:
            first = int(st["max"]) + 1
            st["max"] = first + count - 1
    top = int(np.iinfo(vol.dtype).max)
    if first + count - 1 > top:
        raise InvalidRequestError(f"{vol.url} has no free ids left in {vol.dtype.name}")
    return list(range(first, first + count))


def _covers_scale(vol: Volume) -> bool:
    """Whether the view ``vol`` holds its whole scale.  An edit through a smaller view (or a
    split inside a ``box``) changes the ids there only: they may go on outside it, where the
    cached boxes must still find them (:func:`_forget_stats` then, not :func:`_note_boxes`)."""
    return vol.bounds.contains(vol.scale_meta.bounds)


def _note_boxes(vol: Volume, gone: Iterable[int], boxes: Mapping[int, Box]) -> None:
    """Keep the cached label boxes right after an edit: ``gone`` ids vanished, ``boxes``
    (new or grown ids) join their boxes."""
    key = _stats_key(vol)
    with _stats_lock:
        _edited(_store_key(vol), keep=key)
        st = _STATS.get(key)
        if st is None:
            return
        for i in gone:
            st["boxes"].pop(i, None)
        for i, b in boxes.items():
            old = st["boxes"].get(i)
            st["boxes"][i] = b if old is None else _union([old, b])
            st["max"] = max(st["max"], i)


def _union(boxes: Sequence[Box]) -> Box:
    return Box(tuple(min(b.start[d] for b in boxes) for d in range(3)),
               tuple(max(b.stop[d] for b in boxes) for d in range(3)))


def _blocks(vol: Volume, boxes: Iterable[Box]) -> list[Box]:
    """The write-grid blocks (clipped to the view) that touch any of ``boxes``."""
    grid = vol.remote.write_grid(vol.scale)
    bounds = vol.remote.grid_bounds(vol.scale)  # (DVID: the grid through 0)
    region = vol.bounds
    seen: dict[Vec, Box] = {}
    for b in boxes:
        for g, cell in chunk_boxes(b, grid, bounds):
            if g not in seen:
                c = cell.intersect(region)
                if not c.is_empty():
                    seen[g] = c
    return [seen[g] for g in sorted(seen)]


# -- the block-wise edit --------------------------------------------------------------------------
def _edit_blocks(vol: Volume, hist: History, n: int, blocks: list[Box],
                 fn: Callable[[np.ndarray, Box], np.ndarray | None], *, label: str,
                 progress: bool, workers: int | None) -> list[Box]:
    """Rewrite ``blocks`` with ``fn(old voxels, box)`` (None: unchanged); each block's old
    voxels are saved to the history before it is written.  Returns the blocks written."""
    remote, scale = vol.remote, vol.scale
    written: list[Box] = []
    lock = threading.Lock()

    def one(b: Box) -> bool:
        old = remote.read(b, scale)
        new = fn(old, b)
        if new is None or np.array_equal(new, old):
            return False
        hist.save_block(n, b, old, changed=new != old)
        remote.write(b, np.ascontiguousarray(new, dtype=vol.dtype), scale)
        with lock:
            written.append(b)
        return True

    with progress_bar(progress, len(blocks), label) as bar:
        res = run_blocks(one, blocks, workers=workers, on_done=lambda _b, _o: bar.advance())
    if res.failed:
        _forget_stats(vol)  # the ids' boxes may have moved part-way: find them again
        failed = [b for b, _ in res.failed]
        exc = res.failed[0][1]
        if not written:  # the store is as it was: the store's own error says why
            hist.update(n, status="failed", blocks=0)
            exc.add_note(f"{label} of {vol.url}: nothing was written; the volume is unchanged")
            raise exc
        hist.update(n, status="partial", blocks=len(written))
        raise PartialWriteError(
            f"{label} of {vol.url} failed at {failed[0]!r} ({exc}); {len(written)} block(s) were "
            f"written: {[tuple(map(tuple, (b.start, b.stop))) for b in written[:10]]}"
            f"{' ...' if len(written) > 10 else ''}. Their old voxels are saved in the history "
            f"(edit {n}): voxgate.undo restores them", written=written, failed=failed) from exc
    return written


def _start(hist: History, vol: Volume, operation: str, path: str, user: str | None,
           params: dict[str, Any], ids: Iterable[int], boxes: Iterable[Box]) -> int:
    return hist.start({
        "user": current_user(user), "operation": operation, "path": path,
        **_recorded(vol), "scale": vol.scale, "params": params,
        "ids": [int(i) for i in ids],
        "boxes": [[*map(int, b.start), *map(int, b.stop)] for b in boxes]})


def _remap_fn(mapping: Mapping[int, int], dtype: np.dtype[Any]
              ) -> Callable[[np.ndarray, Box], np.ndarray | None]:
    keys = np.array(sorted(mapping), dtype=dtype)
    vals = np.array([mapping[int(k)] for k in keys], dtype=dtype)

    def fn(data: np.ndarray, _b: Box) -> np.ndarray | None:
        pos = np.searchsorted(keys, data)
        pos[pos >= len(keys)] = 0
        hit = keys[pos] == data
        if not hit.any():
            return None
        out = data.copy()
        out[hit] = vals[pos[hit]]
        return out

    return fn
