"""Audit: writes of disjoint boxes that share a stored chunk (or shard, HDF5 chunk, TIFF tile,
KNOSSOS cube, webKnossos shard, DVID block), from threads of one process (one Volume, or a
Volume each), from processes, and a write racing a read.  Each such write reads the chunk,
changes its part and stores it again: two that interleave must not undo each other (a lost
update), and a read must see each box old or new, never a mix (docs/index.md, "Writing").

Every box is 5 x 7 x 3 voxels of a value of its own, 160 boxes in the middle of a 64^3 volume
of 32^3 chunks: all of them cross chunk boundaries, so each of the 8 central chunks is
rewritten by every writer many times."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import voxgate
from voxgate.errors import RemoteBusyError

from .ports import free_port
from .relay.conftest import RelayProcess, start_relay

SHAPE = (64, 64, 64)
CHUNKS = (32, 32, 32)
BOX = (5, 7, 3)
#: writers at once (threads or processes)
WRITERS = 4
SHARDING = {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 3, "hash": "identity",
            "minishard_bits": 0, "shard_bits": 0, "minishard_index_encoding": "gzip",
            "data_encoding": "gzip"}


def _boxes() -> list[tuple[int, int, int]]:
    """The boxes' starts (z, y, x): 160 disjoint boxes around the volume's centre."""
    return [(16 + z, 16 + y, 16 + x)
            for z in range(0, 30, 6) for y in range(0, 32, 8) for x in range(0, 32, 4)]


def _reference(dtype: str, boxes: list[int] | None = None) -> np.ndarray:
    """What the volume holds once the boxes (those numbered in ``boxes``; all by default) are
    written, box k holding k + 1 and the rest the fill value 0."""
    ref = np.zeros(SHAPE, dtype)
    for k, (z, y, x) in enumerate(_boxes()):
        if boxes is None or k in boxes:
            ref[z:z + BOX[0], y:y + BOX[1], x:x + BOX[2]] = k + 1
    return ref


def _lost(got: np.ndarray, ref: np.ndarray, boxes: list[int] | None = None) -> list[int]:
    """The boxes (of those numbered in ``boxes``; all by default) whose value ``got`` does not
    hold, and -1 when voxels outside them changed."""
    lost = [k for k, (z, y, x) in enumerate(_boxes()) if (boxes is None or k in boxes)
            and not (got[z:z + BOX[0], y:y + BOX[1], x:x + BOX[2]] == k + 1).all()]
    outside = ref == 0
    return lost + ([-1] if (got[outside] != 0).any() else [])


#: local stores: name -> (URL under a folder, create options)
LOCAL: dict[str, tuple[str, dict[str, Any]]] = {
    "mem": ("mem://{name}", {}),
    "zarr2": ("zarr://{d}/v2.zarr", {"zarr_format": 2}),
    "zarr3": ("zarr://{d}/v3.zarr", {"zarr_format": 3}),
    "zarr3-sharded": ("zarr://{d}/sharded.zarr", {"shards": (64, 64, 64)}),
    "zarr2-plain": ("zarr://{d}/plain.zarr", {}),  # a bare array made by zarr-python
    "n5": ("n5://{d}/v.n5", {}),
    "precomputed-raw": ("precomputed://file://{d}/raw", {}),
    "precomputed-cseg": ("precomputed://file://{d}/cseg",
                         {"encoding": "compressed_segmentation", "kind": "segmentation",
                          "dtype": "uint32"}),
    "precomputed-sharded": ("precomputed://file://{d}/sharded", {"sharded": SHARDING}),
    "hdf5": ("hdf5://{d}/v.h5#/v", {}),
    "tiff": ("tiff://{d}/v.tif", {}),
    "knossos": ("knossos://{d}/knossos", {"dtype": "uint8"}),
    "webknossos": ("webknossos://{d}/wk", {}),
}
#: on object storage (moto): the writers whose read-change-store differ
S3: dict[str, tuple[str, dict[str, Any]]] = {
    "s3-zarr3-sharded": ("zarr://s3://{bucket}/sharded.zarr", {"shards": (64, 64, 64)}),
    "s3-n5": ("n5://s3://{bucket}/v.n5", {}),
    "s3-precomputed-cseg": ("precomputed://s3://{bucket}/cseg",
                            {"encoding": "compressed_segmentation", "kind": "segmentation",
                             "dtype": "uint32"}),
    "s3-precomputed-sharded": ("precomputed://s3://{bucket}/sharded", {"sharded": SHARDING}),
}
#: through servers: DVID (its test server) and bossDB (a relay)
SERVED: dict[str, dict[str, Any]] = {
    "dvid-uint8": {"dtype": "uint8"},
    "dvid-labelmap": {"dtype": "uint64", "kind": "segmentation"},
    "bossdb-uint8": {"dtype": "uint8"},  # (the relay's cutout write is the same for uint64)
}


def _make(url: str, options: dict[str, Any]) -> tuple[voxgate.Volume, str]:
    """Create the volume; returns it and its dtype."""
    options = dict(options)
    dtype = options.pop("dtype", "uint16")
    if url.startswith("zarr://") and url.endswith("/plain.zarr"):
        zarr.create_array(store=url.removeprefix("zarr://"), shape=SHAPE, chunks=CHUNKS,
                          dtype=dtype, zarr_format=2, fill_value=0)
        return voxgate.open(url, mode="r+"), dtype
    vol = voxgate.create(url, shape=SHAPE, chunks=CHUNKS, dtype=dtype, voxel_size=(8, 8, 8),
                         **options)
    return vol, dtype


def _close(vol: voxgate.Volume) -> None:
    vol.remote.close()  # (an HDF5 file is let go: another process may open it then)


@pytest.fixture(scope="module")
def dvid_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from voxgate.remotes.dvid import DVIDRepo
    from voxgate.testing.dvid import start_server

    server = start_server(log=tmp_path_factory.mktemp("dvid") / "dvid.log")
    try:
        yield DVIDRepo.create(server.url, alias="shared-chunks", description="audit")
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def boss_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A relay with no channel (projects made through the bossDB dialect), as
    tests/relay/test_data_root_paths.py starts one."""
    d = tmp_path_factory.mktemp("relay")
    config = d / "relay.toml"
    config.write_text("")
    relay = start_relay(config, free_port(), "--data-root", str(d / "data"))
    try:
        yield relay
    finally:
        relay.stop()


_made = iter(range(10**6))


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """(URL, create options) of a new volume of the store named by the test's parameter."""
    kind: str = request.param
    n = next(_made)
    if kind in LOCAL:
        url, options = LOCAL[kind]
        return url.format(d=tmp_path, name=f"shared-{n}"), options
    if kind in S3:
        url, options = S3[kind]
        return url.format(bucket=request.getfixturevalue("s3_bucket")), options
    if kind.startswith("dvid"):
        return request.getfixturevalue("dvid_repo").url(f"v{n}"), SERVED[kind]
    relay: RelayProcess = request.getfixturevalue("boss_relay")
    return f"bossdb://{relay.url}/shared/e{n}/c", SERVED[kind]


def _in_threads(url: str, vol: voxgate.Volume, own: bool) -> None:
    """WRITERS threads write the boxes, box k by thread k % WRITERS: through ``vol``, or each
    through a Volume of its own."""
    boxes = _boxes()
    start = threading.Barrier(WRITERS)

    def work(i: int) -> None:
        v = voxgate.open(url, mode="r+") if own else vol
        start.wait()
        for k in range(i, len(boxes), WRITERS):
            z, y, x = boxes[k]
            v[z:z + BOX[0], y:y + BOX[1], x:x + BOX[2]] = k + 1

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(work, range(WRITERS)))


ALL = [*LOCAL, *S3, *SERVED]


@pytest.mark.parametrize("own", [False, True], ids=["one-volume", "volume-each"])
@pytest.mark.parametrize("store", ALL, indirect=True)
def test_threads_writing_boxes_of_shared_chunks_keep_every_box(
        store: tuple[str, dict[str, Any]], own: bool) -> None:
    """Threads of one process writing disjoint boxes of the same chunks, through one Volume
    or a Volume each (opened from the URL): afterwards every box holds its value and nothing
    else changed.  (dvid:// with a Volume each lost about a third of the boxes: each Volume
    had a lock of its own around the read-patch-write of the blocks an unaligned write
    touches.)"""
    url, options = store
    vol, dtype = _make(url, options)
    _in_threads(url, vol, own)
    got = voxgate.open(url).read()
    ref = _reference(dtype)
    assert _lost(got, ref) == []
    np.testing.assert_array_equal(got, ref)


# -- processes ----------------------------------------------------------------------------------
_CHILD = r"""
import json, os, sys, time
import voxgate

stores, me, n, sync = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]


def wait_all(step):
    # a barrier of files: every writer at this step before any goes on
    open(os.path.join(sync, f"{step}.{me}"), "w").close()
    deadline = time.monotonic() + 60
    while sum(os.path.exists(os.path.join(sync, f"{step}.{i}")) for i in range(n)) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"the other writers never reached {step}")
        time.sleep(0.002)


boxes = [(16 + z, 16 + y, 16 + x)
         for z in range(0, 30, 6) for y in range(0, 32, 8) for x in range(0, 32, 4)]
said = {}
for name, url, options in stores:
    vol = None
    try:
        vol = voxgate.open(url, mode="r+", **options)
    except voxgate.errors.VoxgateError as exc:
        said[name] = f"open: {type(exc).__name__}: {exc}"
    wait_all(name)
    if vol is not None:
        try:
            for k in range(me, len(boxes), n):
                z, y, x = boxes[k]
                vol[z:z + 5, y:y + 7, x:x + 3] = k + 1
            said[name] = "ok"
        except voxgate.errors.VoxgateError as exc:
            said[name] = f"write: {type(exc).__name__}: {exc}"
        vol.remote.close()
    wait_all(name + ".done")
print(json.dumps(said))
"""

#: the local stores written by several processes at once (mem:// is one process's own), and
#: how the processes open them: an HDF5 file the default way (one writing process at a time)
#: and with hold_open=False (docs/remotes/hdf5.md: every write takes the file's lock)
PROCESS_STORES = [(k, {}) for k in LOCAL if k != "mem"] + [("hdf5", {"hold_open": False})]


def test_processes_writing_boxes_of_shared_chunks(tmp_path: Path) -> None:
    """WRITERS processes each write their boxes into every local store, store by store, all
    starting each store together.  Every store but HDF5 keeps every box (each chunk's
    read-change-store is under a file lock, or tensorstore's conditional write); HDF5 allows
    one writing process at a time when opened the default way: the others are refused with
    RemoteBusyError (never a silent loss), and the boxes of the writer that got the file are
    all there; opened with hold_open=False every process writes, and every box is kept."""
    stores = []
    dtypes = {}
    for name, opening in PROCESS_STORES:
        url, options = LOCAL[name]
        if opening:
            name = f"{name}-{'-'.join(f'{k}={v}' for k, v in opening.items())}"
            url = url.replace("/v.h5", "/shared.h5")
        url = url.format(d=tmp_path)
        vol, dtypes[name] = _make(url, options)
        _close(vol)
        stores.append((name, url, opening))
    sync = tmp_path / "sync"
    sync.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(stores), str(i),
                               str(WRITERS), str(sync)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i in range(WRITERS)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * WRITERS, [e for _, e in outs]
    said = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    for name, url, _ in stores:
        ok = [i for i in range(WRITERS) if said[i][name] == "ok"]
        got = voxgate.open(url).read()
        if name == "hdf5":
            refused = [said[i][name] for i in range(WRITERS) if i not in ok]
            assert len(ok) >= 1 and refused, said
            assert all(RemoteBusyError.__name__ in r and "another process" in r
                       for r in refused), refused
            ours = {k for k in range(len(_boxes())) if k % WRITERS in ok}
            _close(voxgate.open(url))
        else:
            assert ok == list(range(WRITERS)), (name, said)
            ours = None
        written = None if ours is None else sorted(ours)
        ref = _reference(dtypes[name], written)
        assert _lost(got, ref, written) == [], name
        np.testing.assert_array_equal(got, ref, err_msg=name)


# -- a write racing a read ----------------------------------------------------------------------
#: the box read while it is rewritten (inside chunk (0, 0, 0)), and a neighbour in that chunk
READ_BOX = (slice(3, 8), slice(4, 11), slice(5, 8))
NEIGHBOUR = (slice(20, 25), slice(20, 27), slice(20, 23))
#: a whole chunk, written aligned
WHOLE = (slice(32, 64), slice(32, 64), slice(0, 32))
ROUNDS = 12
TORN_STORES = [*LOCAL, "dvid-uint8", "bossdb-uint8"]


@pytest.mark.parametrize("store", TORN_STORES, indirect=True)
def test_a_read_racing_writes_of_its_chunk_sees_old_or_new(
        store: tuple[str, dict[str, Any]]) -> None:
    """One thread rewrites a box (part of a chunk) and a whole chunk with value after value,
    another rewrites a neighbouring box of the same chunk; a third reads the box and the
    chunk meanwhile through a Volume of its own: each read holds one value throughout each
    cell of the store's write grid (a chunk, or a TIFF page's tile: what is stored whole), one
    of those written; a reader never sees half of a cell's write."""
    url, options = store
    vol, _ = _make(url, options)
    reader = voxgate.open(url)
    grid = tuple(vol.remote.write_grid(0))  # (a TIFF's is one page's tile: (1, 32, 32))
    done = threading.Event()
    seen: list[tuple[str, set[int]]] = []

    def cells(key: tuple[slice, ...], data: np.ndarray) -> Iterator[np.ndarray]:
        """``data`` (read at ``key``) cut on the store's write grid: what a write stores whole."""
        cuts = [sorted({k.start, k.stop, *range(-(-k.start // g) * g, k.stop, g)})
                for k, g in zip(key, grid, strict=True)]
        for z0, z1 in zip(cuts[0], cuts[0][1:], strict=False):
            for y0, y1 in zip(cuts[1], cuts[1][1:], strict=False):
                for x0, x1 in zip(cuts[2], cuts[2][1:], strict=False):
                    yield data[z0 - key[0].start:z1 - key[0].start,
                               y0 - key[1].start:y1 - key[1].start,
                               x0 - key[2].start:x1 - key[2].start]

    def write(key: tuple[slice, ...], values: Callable[[int], int]) -> None:
        for r in range(ROUNDS):
            vol[key] = values(r)

    def read() -> None:
        while not done.is_set():
            for what, key in (("box", READ_BOX), ("chunk", WHOLE)):
                data = reader[key].read()
                seen.extend((what, set(np.unique(c).tolist())) for c in cells(key, data))

    with ThreadPoolExecutor(4) as pool:
        looking = pool.submit(read)
        writers = [pool.submit(write, READ_BOX, lambda r: 1 + r),
                   pool.submit(write, WHOLE, lambda r: 100 + r),
                   pool.submit(write, NEIGHBOUR, lambda r: 50 + r)]
        for w in writers:
            w.result()
        time.sleep(0.05)
        done.set()
        looking.result()
    mixed = [(what, values) for what, values in seen if len(values) != 1]
    assert mixed == []
    box_values = {v for what, values in seen if what == "box" for v in values}
    chunk_values = {v for what, values in seen if what == "chunk" for v in values}
    assert box_values <= {0, *range(1, 1 + ROUNDS)}
    assert chunk_values <= {0, *range(100, 100 + ROUNDS)}
    assert ROUNDS in box_values and 99 + ROUNDS in chunk_values  # (read after the last write)
    got = reader.read()
    assert (got[READ_BOX] == ROUNDS).all() and (got[WHOLE] == 99 + ROUNDS).all()
    assert (got[NEIGHBOUR] == 49 + ROUNDS).all()
