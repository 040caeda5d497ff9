"""One planning layer for everything that runs block by block (the Services, ``voxgate.copy``).

**Plan**: :func:`block_shape` picks a block from the output's write unit (a chunk, or a whole
shard) and a memory budget, cut to a share of :data:`INFLIGHT_BYTES` when many blocks run at
once (:func:`blocks_at_once`); :func:`plan_blocks` cuts a region into blocks of that shape on a grid
anchored at the output's origin, so every block writes whole chunks or shards and no two blocks
share one, in Morton (z-) order, so neighbouring blocks run close together; :func:`iter_blocks`
makes the same blocks one at a time and :func:`count_blocks` counts them, so a plan of any size
is never held.

**Run**: :func:`run_blocks` calls one function on every block on this process's threads, on
spawned processes (for kernels that hold the GIL), or on a ``dask.distributed`` ``client``, with
at most a window of blocks in flight whatever their number (taken from an iterator as they are
sent; the blocks done are counted, not kept); one progress bar (the Service's
name, its bytes, the blocks done); one retry rule (:func:`is_transient`: an unreachable store,
a dask worker that died, retried :data:`RETRIES` times with backoff; any other error raised at
once, naming the block); Ctrl-C cancels what is in flight.  The function and what it holds are
sent to each worker once (scattered on a cluster, installed once per process), the blocks one
by one; a Volume travels as its spec and the worker reopens it by URL.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import json
import math
import os
import pickle
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import FIRST_COMPLETED, CancelledError, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from .errors import InvalidRequestError, RemoteUnavailableError, VoxgateError, redact
from .geometry import Box, Vec, grid_range, grow_block, whole_at_least
from .parallel import BlockResults, default_workers, interrupts_deferrable
from .progress import format_bytes, progress_bar
from .registry import open_remote, resolve_for_create
from .remotes.base import Remote
from .storage import set_copy_concurrency, split_url

__all__ = [
    "BLOCK_BYTES",
    "INFLIGHT_BYTES",
    "RETRIES",
    "TASKS_PER_THREAD",
    "Block",
    "BlockResults",
    "Scheduler",
    "block_shape",
    "blocks_at_once",
    "check_client",
    "check_for_cluster",
    "check_output_for_cluster",
    "choosing_options",
    "count_blocks",
    "hosts_elsewhere",
    "cluster_spec",
    "is_transient",
    "iter_blocks",
    "plan_blocks",
    "run_blocks",
    "scheduler_name",
    "worker_remote",
    "worker_threads",
]

T = TypeVar("T")
Scheduler = Literal["threads", "processes", "distributed"]

#: blocks grow from the write unit toward this many bytes (bounded memory, little overhead)
BLOCK_BYTES = 8 * 2**20
#: the voxels of the blocks one process runs at once (its threads, or a dask worker's), all
#: together: a block's budget is cut to its share of this (``INFLIGHT_BYTES // at_once``, at
#: least one write unit), so more workers run smaller blocks and a process holds about the same
#: (with the kernels' working copies, about twice this) whatever its number of workers
INFLIGHT_BYTES = 256 * 2**20
#: on a cluster, at most this many tasks per worker thread are submitted ahead of the finished
TASKS_PER_THREAD = 4
#: a block failing with a transient error (:func:`is_transient`) is run again this many times
RETRIES = 2
#: seconds before the first retry of a block; doubled for each further one
BACKOFF = 0.5
#: times the function is scattered to a cluster again before its failure stops the run
SCATTER_ATTEMPTS = 4


# -- plan -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """One block of a plan: its index on the block grid and its box (clipped to the region)."""

    index: Vec
    box: Box

    def __repr__(self) -> str:
        return f"block {tuple(self.index)} {self.box!r}"


def check_block(block: Any) -> Vec | None:
    """A user's ``block=`` (None, or three positive whole numbers (z, y, x)) as a Vec."""
    if block is None:
        return None
    try:
        want = Vec.of(block, "block")
    except Exception:
        want = None
    if want is None or any(b < 1 for b in want):
        raise InvalidRequestError(
            f"block must be three positive integers (z, y, x), got {block!r}")
    return want


def block_shape(grid: Sequence[int], itemsize: int, region_shape: Sequence[int], *,
                budget: int = BLOCK_BYTES, block: Sequence[int] | None = None,
                at_least: Sequence[int] | None = None, at_once: int = 1) -> Vec:
    """A block shape made of whole write units ``grid`` (chunks or shards).

    Without ``block``: ``grid`` doubled (x, then y, then z) toward ``budget`` bytes of
    ``itemsize``-byte voxels, or toward ``INFLIGHT_BYTES // at_once`` when that is less
    (``at_once`` blocks run at once in one process: :func:`blocks_at_once`), not past
    ``region_shape``.  With ``block`` (a user's wish): each axis rounded up to a multiple of
    ``grid``.  ``at_least`` raises each axis to at least that many voxels (rounded up to whole
    units)."""
    g = Vec.of(grid)
    if block is not None:
        want = check_block(block)
        assert want is not None
        out = Vec(*(max(u, math.ceil(b / u) * u) for b, u in zip(want, g, strict=True)))
    else:
        share = INFLIGHT_BYTES // max(1, int(at_once))
        out = grow_block(g, max(1, int(itemsize)), Vec.of(region_shape),
                         min(int(budget), share))
    if at_least is not None:
        out = Vec(*(max(o, math.ceil(a / u) * u) for o, a, u in zip(out, at_least, g,
                                                                      strict=True)))
    return out


def blocks_at_once(workers: int | None, client: Any = None) -> int:
    """How many blocks of a run one process runs at once: on a ``dask.distributed``
    ``client``'s cluster the most threads any of its worker processes has (each thread runs a
    block; default :func:`parallel.default_workers` while it has none), else ``workers``
    (default :func:`parallel.default_workers`)."""
    if client is not None:
        return max((int(n) for n in client.nthreads().values()), default=default_workers())
    return default_workers() if workers is None else whole_at_least(workers, 1, "workers")


def _morton(index: Sequence[int]) -> int:
    """Interleave the bits of a grid index (z, y, x): near cells get near numbers."""
    code = 0
    for bit in range(21):
        for ax, v in enumerate(index):
            code |= ((v >> bit) & 1) << (3 * bit + (2 - ax))
    return code


def plan_blocks(region: Box, block: Sequence[int], bounds: Box | None = None, *,
                order: Literal["morton", "row"] = "morton") -> list[Block]:
    """``region`` cut into blocks of shape ``block`` on a grid anchored at ``bounds.start``
    (the output's origin; default the region's), each clipped to ``region``, in Morton order
    (``order="row"``: z, then y, then x).  A list: :func:`iter_blocks` gives the same blocks
    one at a time, and :func:`count_blocks` their number, without holding the plan."""
    return list(iter_blocks(region, block, bounds, order=order))


def _grid_range(region: Box, block: Sequence[int], bounds: Box | None
                ) -> tuple[Box, Vec, Box, list[int], list[int]] | None:
    """The region within ``bounds``, the block, the bounds and the block grid's index range
    [lo, hi) per axis (as :func:`~voxgate.geometry.chunk_boxes` cuts it); None when empty."""
    bounds = region if bounds is None else bounds
    b = Vec.of(block)
    inside = region.intersect(bounds)
    if inside.is_empty():
        return None
    lo, hi = grid_range(inside, b, bounds.start)
    return region, b, bounds, list(lo), list(hi)


def count_blocks(region: Box, block: Sequence[int], bounds: Box | None = None) -> int:
    """How many blocks :func:`plan_blocks` cuts ``region`` into (arithmetic on the grid: no
    block is made)."""
    grid = _grid_range(region, block, bounds)
    return 0 if grid is None else math.prod(h - lo for lo, h in zip(grid[3], grid[4],
                                                                    strict=True))


def iter_blocks(region: Box, block: Sequence[int], bounds: Box | None = None, *,
                order: Literal["morton", "row"] = "morton") -> Iterator[Block]:
    """The blocks of :func:`plan_blocks`, in its order, made one at a time as they are asked
    for: a plan of 10^8 blocks is never held (as a list it is tens of GiB).  Morton order
    walks the octree of the grid, skipping the cells outside it, rather than sorting."""
    grid = _grid_range(region, block, bounds)
    if grid is None:
        return
    region, b, bounds, lo, hi = grid

    def make(idx: tuple[int, ...]) -> Block:
        start = Vec(*(o + i * c for o, i, c in zip(bounds.start, idx, b, strict=True)))
        return Block(Vec(*idx), Box(start, start + b).intersect(bounds).intersect(region))

    if order == "row":
        for idx in itertools.product(*(range(a, e) for a, e in zip(lo, hi, strict=True))):
            yield make(idx)
        return
    # each octree cell: its level (side 2**level) and its first index; its eight children in
    # the order of their Morton codes (z bit, then y, then x: see _morton)
    top = max((h - 1).bit_length() for h in hi)
    stack: list[tuple[int, int, int, int]] = [(top, 0, 0, 0)]
    while stack:
        level, z, y, x = stack.pop()
        side = 1 << level
        if (z + side <= lo[0] or z >= hi[0] or y + side <= lo[1] or y >= hi[1]
                or x + side <= lo[2] or x >= hi[2]):
            continue
        if level == 0:
            yield make((z, y, x))
            continue
        half = side >> 1
        for octant in range(7, -1, -1):  # pushed last to first: popped first to last
            stack.append((level - 1, z + (octant >> 2 & 1) * half,
                          y + (octant >> 1 & 1) * half, x + (octant & 1) * half))


# -- stores on workers ----------------------------------------------------------------------------

#: schemes whose URL is a local path after ``scheme://`` (unless it holds another ``://``)
_PATH_SCHEMES = ("zarr", "n5", "hdf5", "tiff", "precomputed")


def cluster_spec(remote: Remote, mode: str | None = None) -> str:
    """The Remote's spec as JSON for a worker (:func:`worker_remote`), a relative local path
    made absolute (a worker's working directory is not ours)."""
    spec = dict(remote.spec())
    if mode is not None:
        spec["mode"] = mode
    scheme, sep, rest = str(spec["url"]).partition("://")
    if sep and scheme in _PATH_SCHEMES and "://" not in rest and not os.path.isabs(rest):
        spec["url"] = f"{scheme}://{os.path.abspath(rest)}"
    return json.dumps(spec, sort_keys=True)


#: options that say how a volume's voxels are fetched or described, never which voxels or
#: where they are: not choosing (a DVID node read with timeout=30 and with timeout=60 is one
#: volume)
_NOT_CHOOSING = frozenset({"missing", "mode", "timeout", "concurrency", "compression",
                           "voxel_size", "kind", "meshes", "skeletons"})


def choosing_options(remote: Remote) -> dict[str, Any]:
    """The open options of ``remote`` that choose what its URL holds (an OME-Zarr
    ``multiscale=``, a WEBKNOSSOS ``layer=``, DVID ``supervoxels=True``): its
    :meth:`~voxgate.remotes.base.Remote.spec` options as JSON values, less how it is read or
    described (:data:`_NOT_CHOOSING`), credentials (the same volume whatever token reaches
    the store) and an option given its default value (which chooses what the URL alone
    does).  Part of the keys of what belongs to one volume rather than to its URL: a copy's
    journal, a proofreading history."""
    defaults: dict[str, Any] = {}
    for fn in (type(remote).__init__, type(remote).open):
        with contextlib.suppress(TypeError, ValueError):  # (no signature to read)
            for p in inspect.signature(fn).parameters.values():
                if p.default is not inspect.Parameter.empty:
                    defaults.setdefault(p.name, p.default)
    options = json.loads(cluster_spec(remote)).get("options", {})
    chosen = {}
    for key, value in sorted(options.items()):
        text = json.dumps({key: value}, sort_keys=True)
        if key in _NOT_CHOOSING or redact(text) != text:
            continue
        if key in defaults and defaults[key] == value:
            continue
        if key == "time" and value is not None and value == remote.url_time:
            # (the time point the URL opens alone: the key it had before time= was kept,
            # so a copy or a history of a bossDB channel of several samples started then
            # is found again, and time=0 on an array of one time point is that array)
            continue
        chosen[key] = value
    return chosen


@functools.lru_cache(maxsize=16)
def worker_remote(spec: str, run: str = "") -> Remote:
    """A Remote reopened from :func:`cluster_spec` on a worker, once per process and ``run``
    (give each run a fresh id, e.g. ``uuid4().hex``, so a recreated store is never stale)."""
    given = json.loads(spec)
    return open_remote(given["url"], mode=given.get("mode", "r"), **given.get("options", {}))


def check_client(client: Any, what: str) -> None:
    """Refuse a ``client=`` that is not a ``dask.distributed`` Client (None is fine)."""
    if client is None:
        return
    if not all(callable(getattr(client, name, None)) for name in ("submit", "scatter", "run")):
        raise InvalidRequestError(
            f"{what}: client must be a dask.distributed Client (or None to run here), got "
            f"{type(client).__name__} {client!r}"
        )


def check_run(workers: Any, retries: Any, client: Any, what: str) -> tuple[int | None, int]:
    """``workers`` (None, or a whole number >= 1), ``retries`` (>= 0) and ``client`` checked
    before a run creates anything; returns the two numbers as ints."""
    n = None if workers is None else whole_at_least(workers, 1, "workers")
    r = whole_at_least(retries, 0, "retries")
    check_client(client, what)
    return n, r


def check_for_cluster(url: str, role: str, what: str, *, writes: bool = False) -> None:
    """Refuse a volume a cluster's (or spawned processes') workers cannot reopen by URL, or,
    with ``writes``, one that is one file several processes cannot write at once."""
    if url.startswith("mem://"):
        raise InvalidRequestError(
            f"{what} with a dask.distributed client: the {role} {url} lives in this process "
            "only; a cluster's workers open volumes by URL (zarr://, n5://, precomputed://, ...), "
            "so run it without client= or write it to a store first")
    if writes and url.startswith(("hdf5://", "tiff://")):
        raise InvalidRequestError(
            f"{what} with a dask.distributed client: the {role} {url} is one file that several "
            "worker processes cannot write at once; use zarr://, n5:// or precomputed:// on the "
            "cluster, or run it without client=")


def check_output_for_cluster(out: Any, what: str) -> None:
    """Refuse, before a Service creates it, an ``out=`` a cluster's workers cannot write (see
    :func:`check_for_cluster`): None (the result as a numpy array here), a ``mem://`` URL or
    Volume, one file (HDF5, TIFF).  Created first and refused after, such an output was left
    behind (with a callable model's first block written in it), and the same call run
    without ``client=`` then stopped at it: "exists; pass overwrite=True"."""
    if out is None:
        raise InvalidRequestError(
            f"{what} with a dask.distributed client: out=None returns a numpy array, which "
            "lives in this process only, where a cluster's workers cannot write it; give out= "
            "a URL they can open (zarr://, n5://, precomputed://), or run it without client=")
    url = getattr(out, "url", None)
    if isinstance(out, (str, os.PathLike)):
        url = os.fspath(out)
        scheme, location = split_url(url)
        if scheme is None:  # a bare path: the format its name says (out.h5 is HDF5)
            try:
                made = resolve_for_create(url)[0]
                one_file = {s: resolve_for_create(f"{s}://x")[0] for s in ("hdf5", "tiff")}
            except (VoxgateError, ImportError):
                return  # (creating it says what is wrong with it)
            scheme = next((s for s, cls in one_file.items() if cls is made), None)
            url = url if scheme is None else f"{scheme}://{location}"
    if isinstance(url, str):
        check_for_cluster(url, "output", what, writes=True)


def hosts_elsewhere(client: Any) -> list[str]:
    """The host names of ``client``'s workers that run on another machine than this process
    (what a temporary directory on this machine cannot be shared with)."""
    import socket

    here = socket.gethostname()
    return sorted({str(h) for h in client.run(socket.gethostname).values()} - {here})


# -- run ------------------------------------------------------------------------------------------

class WorkersLostError(VoxgateError):
    """A cluster cancelled a block's task because every worker holding what the task needed
    (the function sent once per run) died at once; the block is run again."""


class NoWorkersError(VoxgateError, TimeoutError):
    """The cluster has no worker to run the blocks: every one died (or none was started) and
    none joined within the client's timeout.  Not transient: the run stops."""


def is_transient(exc: BaseException) -> bool:
    """Worth running the block again: the store was unreachable (RemoteUnavailableError), or a
    dask worker died under it (distributed's KilledWorker, CommClosedError, or every worker at
    once: WorkersLostError)."""
    if isinstance(exc, (RemoteUnavailableError, WorkersLostError)):
        return True
    try:
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker
    except ImportError:
        return False
    return isinstance(exc, (KilledWorker, CommClosedError))


def scheduler_name(client: Any = None, processes: bool = False) -> Scheduler:
    """What a Service's provenance says ran it."""
    return "distributed" if client is not None else "processes" if processes else "threads"


def _name_block(exc: BaseException, name: str, item: object, attempts: int) -> BaseException:
    """``exc`` with a note naming the block it came from (the traceback shows it)."""
    with_retries = f" after {attempts} attempts" if attempts > 1 else ""
    note = f"{name}: {item!r} failed{with_retries}"
    if note not in getattr(exc, "__notes__", ()):
        exc.add_note(note)
    try:
        exc.block = item  # type: ignore[attr-defined]
    except AttributeError:
        pass
    return exc


def _broken_pool(exc: BaseException, name: str, item: object) -> BaseException:
    """A spawned process that died says why it may have (the pool's own error does not)."""
    from concurrent.futures.process import BrokenProcessPool

    if not isinstance(exc, BrokenProcessPool):
        return exc
    err = VoxgateError(
        f"{name}: a worker process running {item!r} died: out of memory (pass a smaller "
        "block= or fewer workers=), or the main script lacks the `if __name__ == "
        "\"__main__\":` guard that spawned processes need (or was read from stdin); "
        "workers=None or 1 runs the blocks in this process")
    err.__cause__ = exc
    return err


#: glibc's mallopt parameters, and what a worker process sets them to (see _tune_malloc)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 128 * 2**20
_tuned = False


def _tune_malloc() -> None:
    """Once per worker process: undo what ``MALLOC_TRIM_THRESHOLD_`` does to block-wise work.

    dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins
    glibc's mmap threshold at 128 KiB: every chunk buffer is then mapped and unmapped again,
    and a downsample worker spent twice as long in page faults as in computing (990k faults
    per GiB instead of 280k).  With it set (and only then), the mmap threshold is raised to
    :data:`MMAP_THRESHOLD` and the trim threshold to :data:`TRIM_THRESHOLD`, so a worker keeps
    at most that much freed memory for the next block.  ``VOXGATE_MALLOC_TUNE=0`` leaves
    malloc alone."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or os.environ.get("VOXGATE_MALLOC_TUNE") == "0":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):  # not glibc: nothing to undo
        pass


_INSTALLED: dict[str, Any] = {}


def _install(key: str, payload: bytes) -> None:
    """Process-pool initializer: the function, unpickled once per process."""
    _tune_malloc()
    _INSTALLED[key] = pickle.loads(payload)  # our own pickle, from the parent process


def _call_installed(key: str, item: Any) -> Any:
    return _INSTALLED[key](item)


_set_up = False
_ts_threads: int | None = None


def _host(address: str) -> str:
    from urllib.parse import urlparse

    return urlparse(str(address)).hostname or str(address)


def _workers_per_host(client: Any) -> dict[str, int]:
    """How many dask workers each host runs (for :func:`_setup_worker`'s share of cores)."""
    counts: dict[str, int] = {}
    for address in client.nthreads():
        counts[_host(address)] = counts.get(_host(address), 0) + 1
    return counts


def worker_threads(nthreads: int, cores: int, workers_on_host: int) -> int:
    """tensorstore threads for one dask worker: its share of its host's cores
    (``cores // workers_on_host``), and never fewer than its own task threads."""
    return max(1, int(nthreads), int(cores) // max(1, int(workers_on_host)))


def _setup_worker(dask_worker: Any = None, per_host: dict[str, int] | None = None) -> None:
    """Before a run's blocks, on each dask worker process: malloc as in :func:`_tune_malloc`
    (once), and tensorstore's decode / encode / copy threads set to the worker's share of its
    host's cores (:func:`worker_threads`; ``per_host`` counts the workers on each host).

    Without a limit every worker process would use one thread per core of the machine: two
    one-thread workers on two cores made 4 busy threads, and 2 workers ran a block-wise
    downsample only 1.28x faster than 1.  With only its own thread count as the limit, a lone
    one-thread worker would decode on one core while the other idles (a handicapped
    baseline).  ``VOXGATE_WORKER_TS_THREADS=0`` keeps tensorstore's default; another number
    sets that many threads."""
    global _set_up, _ts_threads
    if not _set_up:
        _set_up = True
        _tune_malloc()
    wish = os.environ.get("VOXGATE_WORKER_TS_THREADS")
    if wish == "0":
        return
    if dask_worker is None:
        try:
            from distributed import get_worker

            dask_worker = get_worker()
        except (ImportError, ValueError):
            return
    nthreads = getattr(getattr(dask_worker, "state", dask_worker), "nthreads", None)
    if not isinstance(nthreads, int) or nthreads < 1:
        return
    if wish is not None and wish.isdigit():
        limit = int(wish)
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        # a worker that joined after the run began (per_host unknown): its own threads only
        here = (per_host or {}).get(_host(getattr(dask_worker, "address", "")), cores)
        limit = worker_threads(nthreads, cores, here)
    if limit != _ts_threads:
        _ts_threads = limit
        set_copy_concurrency(limit)


def _running_tasks(prefix: str, dask_worker: Any = None) -> int:
    """On a dask worker: how many tasks whose key starts with ``prefix`` (one run's) it is
    still executing, cancelled ones included (a cancelled task runs to its end there)."""
    state = getattr(dask_worker, "state", None)
    if state is None:
        return 0
    busy = [*getattr(state, "executing", ()), *getattr(state, "long_running", ())]
    return sum(1 for ts in busy if str(getattr(ts, "key", "")).startswith(prefix))


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    """A block on a dask worker."""
    if not _set_up:  # a worker that joined the cluster after the run began
        _setup_worker()
    return fn(item)


class _Pool:
    """Submit / cancel / window over threads, spawned processes or a dask client."""

    def __init__(self, fn: Callable[[Any], Any], kind: Scheduler, workers: int, client: Any,
                 name: str, prepare: Callable[[Any], Any] | None = None) -> None:
        self.kind, self.client, self.name = kind, client, name
        self.prepare = prepare
        self.workers = workers
        self._asked = 0.0
        self._window = 1
        if kind == "distributed":
            # the workers set up before the function arrives (its Volumes reopen as it does);
            # the function (and what it holds: a model, Volumes as specs) goes to every worker
            # once; tasks then carry only their block
            client.run(_setup_worker, per_host=_workers_per_host(client))
            self._plain = fn
            self._fn = self._scatter()
            self._run = uuid.uuid4().hex[:8]
            #: every task key of this run starts with it (see _drain)
            self._prefix = f"{name.replace(' ', '_')}-{self._run}-"
            # results straight from the worker holding them when it is reachable: the client's
            # own setting, else when the scheduler is on this machine (a LocalCluster, whose
            # scheduler would otherwise relay every byte through this process)
            direct = client.direct_to_workers
            if direct is None:
                from urllib.parse import urlparse

                host = urlparse(str(client.scheduler.address)).hostname
                direct = host in ("127.0.0.1", "localhost", "::1")
            self._direct = bool(direct)
        elif kind == "processes":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            key = uuid.uuid4().hex
            self._key = key
            self._pool: Any = ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_install, initargs=(key, pickle.dumps(fn)))
        else:
            self._fn = fn
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="voxgate")

    def window(self) -> int:
        if self.kind == "distributed":
            now = time.monotonic()
            if now - self._asked > 5:  # asked again as the run goes: adaptive clusters change
                self._window = max(8, TASKS_PER_THREAD * sum(self.client.nthreads().values()))
                self._asked = now
            return self._window
        return self.workers + 1 if self.kind == "processes" else 2 * self.workers

    def submit(self, item: Any, n: int, attempt: int) -> Any:
        if self.prepare is not None:
            item = self.prepare(item)
        if self.kind == "distributed":
            if self._fn.status != "finished":
                # every worker holding the function died at once (the scheduler forgot it and
                # cancelled the blocks needing it): send it again; scatter waits for a worker
                self._fn = self._scatter_again()
            key = f"{self._prefix}{n}-{attempt}"
            return self.client.submit(_call, self._fn, item, pure=False, key=key)
        if self.kind == "processes":
            return self._pool.submit(_call_installed, self._key, item)
        return self._pool.submit(self._fn, item)

    def _scatter_again(self) -> Any:
        """The function scattered to the workers again.  While the nannies are starting new
        workers the scheduler may drop the scatter's connection (CommClosedError, seen under
        load right after every worker died): asked again a few times, with a pause."""
        for attempt in range(SCATTER_ATTEMPTS):
            try:
                return self._scatter()
            except NoWorkersError:  # (a TimeoutError, so an OSError: not asked again)
                raise
            except OSError:  # (CommClosedError is one)
                if attempt == SCATTER_ATTEMPTS - 1:
                    raise
                time.sleep(BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    def _scatter(self) -> Any:
        """The function sent to every worker.  dask's scatter waits for a worker up to the
        client's timeout, then raises a bare ``TimeoutError: No valid workers found``: that
        is said as what it means here (asking again would only wait as long once more)."""
        try:
            return self.client.scatter(self._plain, broadcast=True, hash=False)
        except TimeoutError as exc:
            if isinstance(exc, NoWorkersError) or "no valid workers" not in str(exc).lower():
                raise
            raise NoWorkersError(
                f"{self.name}: the cluster has no workers to run the blocks: every worker died "
                "(or none was started) and none joined within the client's timeout "
                "(Client(timeout=...), distributed.comm.timeouts.connect: 30 s by default); "
                "start workers and run it again") from exc

    def result(self, fut: Any) -> Any:
        if self.kind == "distributed":
            if fut.cancelled():  # not by us: those never come back here (see _pooled)
                raise WorkersLostError(
                    f"{self.name}: the cluster forgot a block's task ({fut.key}): every "
                    "worker holding what it needed died")
            try:
                return self.client.gather(fut, direct=self._direct)
            except CancelledError as exc:
                # the block had finished, but every worker holding its result died before it
                # was gathered, and with them what it needs to run again (the function sent
                # once per run), so the cluster cancelled it: run it again like the others
                raise WorkersLostError(
                    f"{self.name}: the cluster lost a finished block's result ({fut.key}) with "
                    "the workers holding it") from exc
        return fut.result()

    def wait(self, pending: Iterable[Any], timeout: float | None) -> list[Any]:
        pending = list(pending)
        if self.kind == "distributed":
            from distributed import client as dclient
            from distributed import wait as dwait

            # raised by distributed.wait (2024.12 and later) when a future it waits on is
            # cancelled; older versions return those as done
            cancelled = getattr(dclient, "FuturesCancelledError", ())
            try:
                # on *this* client (distributed.wait takes the default one: a client made with
                # set_as_default=False, or another default client, would fail or be asked)
                with self.client.as_current():
                    done, _ = dwait(pending, timeout=timeout, return_when="FIRST_COMPLETED")
            except TimeoutError:
                return []
            except cancelled:  # result() tells these apart from blocks that ran
                return [f for f in pending if f.status != "pending"]
            return list(done)
        done, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def cancel(self, pending: Sequence[Any], *, finish: bool) -> None:
        if self.kind == "distributed":
            if pending:
                self.client.cancel(list(pending))
            if finish:
                self._drain()
            return
        for fut in pending:
            fut.cancel()
        if finish:  # blocks already running finish, so none is left half-written by us
            wait(pending)

    def _drain(self) -> None:
        """Wait until no worker runs a task of this run any more.  Cancelling a task does not
        stop it on the worker that runs it: without this wait a stopped run returned while
        its blocks went on writing (into a detect_synapses scratch directory already
        removed, or into an output the same call run again was writing).  Stops waiting
        when the cluster cannot be asked (it is gone: so are its tasks); a second Ctrl-C
        stops it too."""
        pause = 0.01
        while True:
            try:
                busy = self.client.run(_running_tasks, self._prefix, on_error="ignore")
            except Exception:  # (the scheduler is unreachable)
                return
            if not any(busy.values()):
                return
            time.sleep(pause)
            pause = min(0.25, 2 * pause)

    def close(self) -> None:
        if self.kind == "distributed":
            self.client.cancel([self._fn])
        else:
            self._pool.shutdown(wait=self.kind == "threads", cancel_futures=True)


def run_blocks(
    fn: Callable[[T], object],
    items: Iterable[T],
    *,
    name: str = "blocks",
    client: Any = None,
    workers: int | None = None,
    processes: bool = False,
    progress: bool = False,
    total: int | None = None,
    nbytes: Callable[[T], int] | None = None,
    total_bytes: int | None = None,
    on_done: Callable[[T, object], None] | None = None,
    retries: int = RETRIES,
    collect: bool = False,
    keep_done: bool = False,
    prepare: Callable[[T], Any] | None = None,
) -> BlockResults[T]:
    """Call ``fn(item)`` for every item (blocks, usually :class:`Block` or :class:`Box`).

    Where: a ``dask.distributed`` ``client``'s cluster; else ``workers`` spawned processes
    when ``processes`` (``fn`` and the items must pickle: a module-level function or a
    ``functools.partial`` of one); else ``workers`` threads of this process (default
    :func:`parallel.default_workers`; 1 runs them here, one by one).  On a cluster or in
    processes ``fn`` is sent once per worker, not per block.

    ``items`` are taken one at a time as blocks are sent (at most a window of them in
    flight), so a generator (:func:`iter_blocks`) is never held whole: nothing this call
    keeps grows with the number of blocks.  ``BlockResults.finished`` counts the blocks
    done; ``keep_done`` also lists them in ``BlockResults.done`` (which then grows with them).

    ``prepare(item)``, when given, runs here just before a block is sent, and ``fn`` gets what
    it returns (e.g. the block's data read from an in-memory volume, which a spawned process
    cannot open); ``on_done`` still gets the item.  ``on_done(item, result)`` runs here, in
    the calling thread, as each block finishes (any order).  ``progress`` draws one bar
    over the blocks (done / ``total``: default ``len(items)`` when they have one, else the
    bar has no total), labelled with ``name`` and the blocks' bytes: ``total_bytes``, or,
    for items with a length, the sum of ``nbytes(item)``.

    A block raising a transient error (:func:`is_transient`) is run again, up to ``retries``
    times, after :data:`BACKOFF` seconds (doubled each time).  Any other error, or one still
    failing after its retries, stops the run: no new block starts, the ones running finish
    (and reach ``on_done``; on a cluster they are cancelled, and the call returns once the
    workers have finished the ones they were running, so nothing of it writes afterwards),
    and the error is raised with a note naming the block (``exc.block``); with ``collect`` it
    is returned in ``BlockResults.failed`` instead.  KeyboardInterrupt cancels the blocks not
    started (threads and a cluster's workers finish the ones running first) and re-raises;
    one arriving while a finished block is counted and given to ``on_done`` waits until
    ``on_done`` returns (:func:`parallel.interrupts_deferrable`).
    A cluster left without workers for the client's timeout raises :class:`NoWorkersError`.
    """
    workers, retries = check_run(workers, retries, client, name)
    sized = isinstance(items, Sized)
    if total is None and sized:
        total = len(items)  # type: ignore[arg-type]
    if total_bytes is None and nbytes is not None and sized:
        total_bytes = sum(nbytes(i) for i in items)
    results: BlockResults[T] = BlockResults()
    kind = scheduler_name(client, processes)
    nworkers = workers or default_workers()
    label = f"{name} ({format_bytes(total_bytes)})" if total_bytes is not None else name
    bar = progress_bar(progress, total, label)

    def finished(item: T, out: object) -> None:
        # (a Ctrl-C is held until the block is counted and ``on_done`` has recorded it: a
        # copy's journal never lacks a block its CopyInterrupted counts)
        with held:
            results.finished += 1
            if keep_done:
                results.done.append(item)
            if on_done is not None:
                on_done(item, out)
        bar.advance()

    def give_up(item: T, exc: BaseException, attempts: int) -> None:
        results.failed.append((item, _name_block(exc, name, item, attempts)))

    with bar, interrupts_deferrable() as held:
        todo = iter(items)
        if kind == "threads" and nworkers == 1:
            _serial(fn, todo, retries, finished, give_up, prepare)
        else:
            first = next(todo, _NOTHING)
            if first is not _NOTHING:  # (no pool, no cluster set up, for no blocks)
                _pooled(_Pool(fn, kind, nworkers, client, name, prepare),
                        itertools.chain((first,), todo), retries, finished, give_up, held)
    if results.failed and not collect:
        raise results.failed[0][1]
    return results


#: what ``next`` gives for an empty plan
_NOTHING: Any = object()


def _serial(fn: Callable[[T], object], todo: Iterator[T], retries: int,
            finished: Callable[[T, object], None],
            give_up: Callable[[T, BaseException, int], None],
            prepare: Callable[[T], Any] | None) -> None:
    for item in todo:
        attempt = 0
        while True:
            try:
                out = fn(prepare(item) if prepare is not None else item)
            except Exception as exc:
                if is_transient(exc) and attempt < retries:
                    time.sleep(BACKOFF * 2**attempt)
                    attempt += 1
                    continue
                give_up(item, exc, attempt + 1)
                return
            finished(item, out)
            break


def _pooled(pool: _Pool, todo: Iterator[T], retries: int, finished: Callable[[T, object], None],
            give_up: Callable[[T, BaseException, int], None],
            held: contextlib.AbstractContextManager[Any]) -> None:
    queue = iter(enumerate(todo))
    again: list[tuple[float, int, T, int]] = []  # (due, n, item, attempt): retries waiting
    pending: dict[Any, tuple[int, T, int]] = {}
    failed = False
    try:
        while True:
            now = time.monotonic()
            while not failed and len(pending) < pool.window():
                if again and again[0][0] <= now:
                    _, n, item, attempt = again.pop(0)
                else:
                    nxt = next(queue, None)
                    if nxt is None:
                        break
                    (n, item), attempt = nxt, 0
                try:
                    fut = pool.submit(item, n, attempt)
                except Exception as exc:  # (prepare failed; no worker to send a block to)
                    give_up(item, exc, attempt + 1)
                    failed = True
                    break
                pending[fut] = (n, item, attempt)
            if not pending:
                if failed or not again:
                    return
                time.sleep(max(0.0, again[0][0] - time.monotonic()))
                continue
            timeout = max(0.01, again[0][0] - now) if again and not failed else None
            for fut in pool.wait(pending, timeout):
                n, item, attempt = pending[fut]
                try:
                    out = pool.result(fut)
                except Exception as exc:
                    del pending[fut]
                    if is_transient(exc) and attempt < retries and not failed:
                        again.append((time.monotonic() + BACKOFF * 2**attempt, n, item,
                                      attempt + 1))
                        again.sort(key=lambda a: a[0])
                        continue
                    give_up(item, _broken_pool(exc, pool.name, item), attempt + 1)
                    failed = True
                    continue
                # (out of the blocks in flight and counted in one step: a Ctrl-C between the
                # two lost a block already written; until then the except below finishes it)
                with held:
                    del pending[fut]
                    finished(item, out)
            if failed and pool.kind == "distributed" and pending:
                # the blocks a worker is running go on there: waited for, so that nothing of
                # a run that raised is still writing once it has returned
                pool.cancel(list(pending), finish=True)
                pending.clear()
    except BaseException as exc:  # Ctrl-C, or on_done raising
        with contextlib.suppress(Exception):  # (never in place of the error raised)
            pool.cancel(list(pending), finish=pool.kind in ("threads", "distributed"))
        if pool.kind == "threads" and isinstance(exc, KeyboardInterrupt):
            # the blocks that were running finished: they count
            for fut, (_, item, _) in list(pending.items()):
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    finished(item, fut.result())
        raise
    finally:
        pool.close()
