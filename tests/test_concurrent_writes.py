"""Concurrent writers of one chunk (or one shard, or one TIFF tile or slice) in every
file-backed store voxgate writes, and mem://.

A partial-chunk write reads the chunk, changes part of it and stores it again.  Writers of
disjoint parts of one chunk, whether threads sharing a Volume, threads with Volumes of their
own or other processes, must each find their part afterwards (checked with numpy, then read
back by the store's peer library), and a read racing writes must never see a chunk half
written nor fail to decode one.  Races are started together with barriers and repeated with
new values many times; nothing sleeps.

Before the fixes KNOSSOS cubes, CloudVolume-style (.gz) precomputed chunks, TIFF slices and
TIFF tiles rewritten from another volume or process lost all parts but one (thousands of
voxels per run), and a read of an uncompressed TIFF tile rewritten in place came back half
old, half new.
"""

from __future__ import annotations

import gzip
import multiprocessing as mp
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate

SHAPE = (2, 16, 16)
#: disjoint boxes (z, y0) of shape (1, 4, 16): four writers per chunk, tile or slice
BOXES = [(z, y) for z in range(2) for y in range(0, 16, 4)]
ITERATIONS = 10
#: processes line up less tightly than threads: more rounds
PROCESS_ITERATIONS = 30

STORES = [
    "zarr2", "zarr3", "zarr3-sharded", "n5", "hdf5", "precomputed-raw", "precomputed-cseg",
    "precomputed-sharded", "precomputed-cloudvolume-gz", "tiff", "tiff-zlib", "tiff-slices",
    "knossos", "mem",
]
#: one writer process at a time is HDF5's rule (documented; tested below); mem:// is per process
PROCESS_STORES = [s for s in STORES if s not in ("hdf5", "mem")]


def _create(kind: str, root: str) -> str:
    seg = kind == "precomputed-cseg"
    common: dict[str, Any] = {"shape": SHAPE, "dtype": "uint64" if seg else "uint8",
                              "chunks": SHAPE, "voxel_size": (1, 1, 1)}
    small = {**common, "chunks": (1, 8, 8)}
    url = {
        "zarr2": f"zarr://{root}/v.zarr", "zarr3": f"zarr://{root}/v.zarr",
        "zarr3-sharded": f"zarr://{root}/v.zarr", "n5": f"n5://{root}/v.n5",
        "hdf5": f"hdf5://{root}/v.h5", "tiff": f"tiff://{root}/v.tif",
        "tiff-zlib": f"tiff://{root}/v.tif", "tiff-slices": f"tiff://{root}/slices",
        "knossos": f"knossos://{root}/kn", "mem": f"mem://concurrent-{os.path.basename(root)}",
    }.get(kind, f"precomputed://{root}/pc")
    options: dict[str, Any] = {
        "zarr2": {"zarr_format": 2}, "zarr3-sharded": {**small, "shards": SHAPE},
        "precomputed-cseg": {"kind": "segmentation", "encoding": "compressed_segmentation"},
        "precomputed-sharded": {**small, "sharded": True},
        "tiff-zlib": {"compression": "zlib"}, "tiff-slices": {"layout": "slices"},
    }.get(kind, {})
    vol = voxgate.create(url, **{**common, **options})
    if kind == "precomputed-cloudvolume-gz":
        # a .gz file in the scale directory: CloudVolume's layout, written by voxgate's own codecs
        scale_dir = Path(root, "pc", vol.scales[0].key or "")
        scale_dir.mkdir(parents=True, exist_ok=True)
        (scale_dir / "written-by-cloudvolume.gz").write_bytes(gzip.compress(b""))
    return url


def _value(it: int, i: int) -> int:
    return (it * len(BOXES) + i) % 250 + 1


def _write_box(vol: voxgate.Volume, it: int, i: int) -> None:
    z, y = BOXES[i]
    vol[z:z + 1, y:y + 4, :] = np.full((1, 4, 16), _value(it, i), vol.dtype)


def _expected(it: int, dtype: Any) -> np.ndarray:
    out = np.zeros(SHAPE, dtype)
    for i, (z, y) in enumerate(BOXES):
        out[z, y:y + 4, :] = _value(it, i)
    return out


def _lost(url: str, it: int) -> int:
    got = voxgate.open(url).read()
    return int((got != _expected(it, got.dtype)).sum())


def _peer_read(kind: str, root: str) -> np.ndarray:
    """The volume as the store's established library reads it."""
    if kind.startswith("zarr"):
        import zarr

        return np.asarray(zarr.open_group(f"{root}/v.zarr", mode="r")["0"][...])
    if kind == "n5":
        import tensorstore as ts

        store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": f"{root}/v.n5/s0"}}
                        ).result()
        return np.asarray(store.read(order="F").result().T)
    if kind == "hdf5":
        import h5py

        with h5py.File(f"{root}/v.h5", "r") as f:
            return np.asarray(f["volume"][...])
    if kind.startswith("precomputed"):
        from cloudvolume import CloudVolume

        cv = CloudVolume(f"file://{root}/pc", mip=0, progress=False)
        return np.asarray(cv[:, :, :][..., 0]).T
    if kind in ("tiff", "tiff-zlib"):
        import tifffile

        return np.asarray(tifffile.imread(f"{root}/v.tif"))
    if kind == "tiff-slices":
        import tifffile

        names = sorted(n for n in os.listdir(f"{root}/slices") if n.endswith(".tif"))
        return np.stack([tifffile.imread(f"{root}/slices/{n}") for n in names])
    if kind == "knossos":  # no peer library on PyPI: the cube's bytes, x fastest
        cube = Path(root, "kn", "mag1", "x0000", "y0000", "z0000", "kn_mag1_x0000_y0000_z0000.raw")
        return np.frombuffer(cube.read_bytes(), np.uint8).reshape(SHAPE)
    raise AssertionError(kind)


def _no_lock_files(root: str) -> None:
    left = [os.path.join(d, n) for d, _, names in os.walk(root) for n in names
            if n.endswith(".lock") or n.endswith(".tmp")]
    assert not left, left


# -- threads of one process ----------------------------------------------------------------------
@pytest.mark.parametrize("volumes", ["one volume", "a volume per thread"])
@pytest.mark.parametrize("kind", STORES)
def test_threads_writing_one_chunk_keep_every_part(kind: str, volumes: str,
                                                   tmp_path: Path) -> None:
    root = str(tmp_path)
    url = _create(kind, root)
    shared = voxgate.open(url, mode="r+")
    own = [voxgate.open(url, mode="r+") for _ in BOXES] if volumes != "one volume" else []
    lost = 0
    for it in range(ITERATIONS):
        start = threading.Barrier(len(BOXES))
        errors: list[BaseException] = []

        def work(i: int, it: int = it, start: threading.Barrier = start,
                 errors: list[BaseException] = errors) -> None:
            vol = own[i] if own else shared
            start.wait()
            try:
                _write_box(vol, it, i)
            except BaseException as exc:  # reported below, with the store's name
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(BOXES))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, (kind, errors)
        lost += _lost(url, it)
    assert lost == 0, f"{kind}, {volumes}: {lost} voxels lost over {ITERATIONS} races"
    if kind != "mem":
        np.testing.assert_array_equal(_peer_read(kind, root), _expected(ITERATIONS - 1, "u8"))
        _no_lock_files(root)
        _modes_follow_the_umask(root)


def _modes_follow_the_umask(root: str) -> None:
    """Every file written (chunks, cubes, slices, metadata) is readable as open() would make
    it (0666 less the umask), not 0600 as a temporary file is made."""
    umask = os.umask(0o022)
    os.umask(umask)
    want = 0o666 & ~umask
    modes = {str(p): p.stat().st_mode & 0o777 for p in Path(root).rglob("*") if p.is_file()}
    assert modes and all(m == want for m in modes.values()), \
        {k: oct(m) for k, m in modes.items() if m != want}


# -- processes -----------------------------------------------------------------------------------
PROCESSES = 3


def _worker(me: int, tasks: Any, done: Any, start: Any) -> None:
    """Writes its share of the boxes of each (url, iteration) it is sent, all processes
    starting together; keeps each volume open across iterations (so a stale table of what is
    where in a file would show)."""
    opened: dict[str, voxgate.Volume] = {}
    while True:
        task = tasks.get()
        if task is None:
            return
        kind, url, it = task
        try:
            if kind == "hdf5-open":  # another process has the file open for writing
                try:
                    voxgate.open(url, mode="r+")
                except voxgate.errors.RemoteUnavailableError as exc:
                    done.put((me, f"refused: {exc}"))
                else:
                    done.put((me, "opened"))
                continue
            if url not in opened:
                opened[url] = voxgate.open(url, mode="r+")
            vol = opened[url]
            start.wait()
            for i in range(me, len(BOXES), PROCESSES):
                _write_box(vol, it, i)
            done.put((me, None))
        except BaseException as exc:  # sent back to the test
            done.put((me, repr(exc)))


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[list[Any], Any]]:
    ctx = mp.get_context("spawn")
    tasks = [ctx.Queue() for _ in range(PROCESSES)]
    done = ctx.Queue()
    start = ctx.Barrier(PROCESSES)
    procs = [ctx.Process(target=_worker, args=(i, tasks[i], done, start), daemon=True)
             for i in range(PROCESSES)]
    for p in procs:
        p.start()
    yield tasks, done
    for q in tasks:
        q.put(None)
    for p in procs:
        p.join(timeout=30)


def _results(done: Any, n: int) -> list[Any]:
    out = []
    for _ in range(n):
        try:
            out.append(done.get(timeout=120))
        except queue.Empty:  # pragma: no cover - a worker died
            pytest.fail("a worker process did not answer")
    return out


@pytest.mark.parametrize("kind", PROCESS_STORES)
def test_processes_writing_one_chunk_keep_every_part(
    kind: str, tmp_path: Path, workers: tuple[list[Any], Any]
) -> None:
    tasks, done = workers
    root = str(tmp_path)
    url = _create(kind, root)
    lost = 0
    for it in range(PROCESS_ITERATIONS):
        for q in tasks:
            q.put((kind, url, it))
        errors = [r for _, r in _results(done, PROCESSES) if r is not None]
        assert not errors, (kind, errors)
        lost += _lost(url, it)
    assert lost == 0, f"{kind}: {lost} voxels lost over {PROCESS_ITERATIONS} races of processes"
    np.testing.assert_array_equal(_peer_read(kind, root),
                                  _expected(PROCESS_ITERATIONS - 1, "u8"))
    _no_lock_files(root)


def test_hdf5_second_writer_process_is_refused(tmp_path: Path,
                                               workers: tuple[list[Any], Any]) -> None:
    """docs/remotes/hdf5.md: one process writes an HDF5 file at a time; another process
    opening it for writing meanwhile gets RemoteUnavailableError, not a shared file."""
    tasks, done = workers
    url = _create("hdf5", str(tmp_path))
    vol = voxgate.open(url, mode="r+")
    vol[0:1, 0:4, :] = 7
    tasks[0].put(("hdf5-open", url, 0))
    (_, answer), = _results(done, 1)
    assert answer.startswith("refused") and "locked by another process" in answer, answer
    vol.remote.close()


# -- reads racing writes -------------------------------------------------------------------------
def _chunk_cells(kind: str) -> list[tuple[slice, ...]]:
    """The chunks (or TIFF tiles) of SHAPE: each must read as one write's value."""
    if kind in ("zarr3-sharded", "precomputed-sharded"):
        return [(slice(z, z + 1), slice(y, y + 8), slice(x, x + 8))
                for z in range(2) for y in (0, 8) for x in (0, 8)]
    if kind.startswith("tiff"):
        return [(slice(z, z + 1), slice(None), slice(None)) for z in range(2)]
    return [(slice(None),) * 3]


@pytest.mark.parametrize("kind", STORES)
def test_reads_racing_writes_see_whole_chunks(kind: str, tmp_path: Path) -> None:
    url = _create(kind, str(tmp_path))
    writer = voxgate.open(url, mode="r+")
    readers = [writer, voxgate.open(url)]
    stop = threading.Event()
    start = threading.Barrier(1 + len(readers))
    bad: list[str] = []
    cells = _chunk_cells(kind)

    def write() -> None:
        start.wait()
        try:
            for it in range(60):
                writer[...] = np.full(SHAPE, it % 250 + 1, writer.dtype)
        finally:
            stop.set()

    def read(vol: voxgate.Volume) -> None:
        start.wait()
        while not stop.is_set():
            try:
                got = vol.read()
            except Exception as exc:  # a decode error, a closed file: collected
                bad.append(repr(exc))
                continue
            bad.extend(f"torn chunk {c}: {np.unique(got[c])}" for c in cells
                       if len(np.unique(got[c])) > 1)

    threads = [threading.Thread(target=write)] + [
        threading.Thread(target=read, args=(v,)) for v in readers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad, f"{kind}: {len(bad)} bad reads, e.g. {bad[:3]}"


@pytest.mark.parametrize("compression", ["none", "zlib"])
def test_tiff_tile_rewritten_while_read_is_never_half_old(compression: str,
                                                          tmp_path: Path) -> None:
    """A tile large enough that rewriting it in place takes many pages of the file: a read of
    it in this process waits for the rewrite (before, a quarter of the reads came back half
    old, half new); compressed tiles of changing size never mix one tile's offset with
    another's byte count."""
    side = 1024
    shape = (1, side, side)
    url = f"tiff://{tmp_path}/big.tif"
    vol = voxgate.create(url, shape=shape, chunks=shape, dtype="uint8", voxel_size=(1, 1, 1),
                         compression=compression)
    rng = np.random.default_rng(0)
    patterns = [np.full(shape, 7, np.uint8), rng.integers(0, 255, shape, dtype=np.uint8),
                np.full(shape, 9, np.uint8)]
    vol[...] = patterns[0]
    stop = threading.Event()
    start = threading.Barrier(3)
    bad: list[str] = []

    def write() -> None:
        start.wait()
        try:
            for it in range(60):
                vol[...] = patterns[it % 3]
        finally:
            stop.set()

    def read() -> None:
        start.wait()
        while not stop.is_set():
            try:
                got = vol.read()
            except Exception as exc:  # collected
                bad.append(repr(exc))
                continue
            if not any(np.array_equal(got, p) for p in patterns):
                bad.append("a tile half old, half new")

    threads = [threading.Thread(target=write), threading.Thread(target=read),
               threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad, f"{len(bad)} bad reads, e.g. {bad[:3]}"
