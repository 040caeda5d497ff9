"""Which chunks of a sharded zarr v3 array served over plain HTTP (no listing) are absent,
asked shard by shard.

HTTP cannot list keys, so ``absent_chunks`` (``missing_chunks``, ``voxgate.copy``, the
block-wise Services) asked tensorstore about each inner chunk apart: a request per inner chunk
(a HEAD of an absent shard for each of its inner chunks), where one read of each shard's index
tells every inner chunk of that shard (a shard not found: all absent).  Now each shard the box
touches has its index read once (one ranged GET), checked with its crc32c as on listable
stores.

Checked against the truth computed from the local files by tensorstore (each inner chunk asked
alone) and by voxgate's scan of the local files (which lists them), on arrays written by
tensorstore (index at the end), zarr-python (index at the start) and voxgate (at an offset),
of an odd shape with partial edge shards, shards fully absent, shards partly and wholly
stored, and boxes not aligned to shards.  The requests the HTTP server answers are counted:
at most the shards touched plus a small constant, and fewer than the inner chunks.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
import zarr
from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec

import voxgate
from voxgate import Box, Vec
from voxgate.errors import CorruptChunkError
from voxgate.remotes import _tensorstore

from ..static_http import RangeHandler, Server

SHAPE = (14, 21, 24)  # (a multiple of neither the inner chunks nor the shards)
CHUNKS = (3, 4, 5)
#: 2 x 2 x 2 inner chunks a shard; 3 x 3 x 3 shards, the last of each axis partial (in z and
#: x of one inner chunk, itself partial; in y of two, the second partial)
SHARDS = (6, 8, 10)
OFFSET = Vec(2, 3, 4)  # (voxgate's array only)
#: boxes written (relative to the first voxel), all non-zero values: shard (0, 0, 0) one inner
#: chunk; shard (1, 1, 1) whole; of the far corner shard (2, 2, 2: 2 inner chunks) the one at
#: the array's edge; one row across the x border of shards (0, 1, 0) and (0, 1, 1); the rest
#: of the 27 shards never written
WRITES = [((0, 0, 0), (1, 1, 1)), ((6, 8, 10), (12, 16, 20)), ((13, 20, 22), (14, 21, 24)),
          ((3, 9, 0), (4, 10, 12))]
#: boxes asked (relative to the first voxel): the whole array; one crossing shard borders on
#: all axes, aligned to neither shards nor chunks; one inside the partly stored shard
#: (0, 0, 0); one over absent shards only; the far edge (partial shards)
BOXES = [((0, 0, 0), SHAPE), ((4, 5, 7), (13, 19, 23)), ((0, 0, 0), (6, 8, 10)),
         ((12, 0, 0), (14, 8, 20)), ((11, 15, 19), (14, 21, 24))]
#: requests allowed beyond one per shard touched
SLACK = 2


# -- the arrays ------------------------------------------------------------------------------

def _by_tensorstore(root: Path) -> tuple[str, Path]:
    """Written by tensorstore: index at the end, with a crc32c."""
    path = root / "t.zarr"
    t = ts.open({"driver": "zarr3", "kvstore": f"file://{path}", "create": True,
                 "metadata": {"shape": list(SHAPE), "data_type": "uint16",
                              "dimension_names": ["z", "y", "x"],
                              "chunk_grid": {"name": "regular",
                                             "configuration": {"chunk_shape": list(SHARDS)}},
                              "codecs": [{"name": "sharding_indexed", "configuration": {
                                  "chunk_shape": list(CHUNKS),
                                  "codecs": [{"name": "bytes"}, {"name": "zstd"}],
                                  "index_codecs": [{"name": "bytes"}, {"name": "crc32c"}],
                                  "index_location": "end"}}]}}).result()
    for i, (a, e) in enumerate(WRITES):
        t[tuple(slice(x, y) for x, y in zip(a, e, strict=True))] = 10 + i
    return "t.zarr", path


def _by_zarr_python(root: Path) -> tuple[str, Path]:
    """Written by zarr-python: index at the start (with a crc32c, its default)."""
    path = root / "z.zarr"
    z = zarr.create(store=str(path), shape=SHAPE, dtype="uint16", fill_value=0, zarr_format=3,
                    chunks=SHARDS, dimension_names=["z", "y", "x"],
                    codecs=[ShardingCodec(chunk_shape=CHUNKS, codecs=[BytesCodec(), ZstdCodec()],
                                          index_location="start")])
    for i, (a, e) in enumerate(WRITES):
        z[tuple(slice(x, y) for x, y in zip(a, e, strict=True))] = 10 + i
    return "z.zarr", path


def _by_voxgate(root: Path) -> tuple[str, Path]:
    """Written by voxgate, at an offset (its scale 0 array is ``v.zarr/0``)."""
    vol = voxgate.create(f"zarr://{root}/v.zarr", shape=SHAPE, dtype="uint16", chunks=CHUNKS,
                         voxel_size=(1, 1, 1), offset=OFFSET, shards=SHARDS)
    for i, (a, e) in enumerate(WRITES):
        box = Box(OFFSET + Vec(*a), OFFSET + Vec(*e))
        vol.remote.write(box, np.full(tuple(box.shape), 10 + i, "uint16"), 0)
    return "v.zarr", root / "v.zarr" / "0"


WRITERS = {"tensorstore": _by_tensorstore, "zarr-python": _by_zarr_python,
           "voxgate": _by_voxgate}


# -- the truth -------------------------------------------------------------------------------

def _grid() -> list[tuple[int, ...]]:
    """Every inner chunk's grid index."""
    return list(itertools.product(*(range(-(-s // c)) for s, c in zip(SHAPE, CHUNKS,
                                                                      strict=True))))


def _brute_absent(array: Path) -> set[tuple[int, ...]]:
    """The inner chunks that tensorstore, asking each inner chunk alone of the local files,
    finds not stored."""
    t = ts.open({"driver": "zarr3", "kvstore": f"file://{array}"}, read=True).result()
    asked = {g: t[tuple(slice(i * c, min(s, (i + 1) * c))
                        for i, c, s in zip(g, CHUNKS, SHAPE, strict=True))]
             .storage_statistics(query_not_stored=True) for g in _grid()}
    return {g for g, fut in asked.items() if fut.result().not_stored}


def _touched() -> set[tuple[int, ...]]:
    """The inner chunks the writes touched (all with non-zero values: stored)."""
    return {g for g in _grid() for a, e in WRITES
            if all(i * c < y and (i + 1) * c > x
                   for i, c, x, y in zip(g, CHUNKS, a, e, strict=True))}


def _in(box: tuple[tuple[int, ...], tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The inner chunks a box (relative to the first voxel) touches, in grid order."""
    a, e = box
    return [g for g in _grid() if all(i * c < y and (i + 1) * c > x
                                      for i, c, x, y in zip(g, CHUNKS, a, e, strict=True))]


def _shards_in(box: tuple[tuple[int, ...], tuple[int, ...]]) -> set[tuple[int, ...]]:
    return {tuple(i * c // s for i, c, s in zip(g, CHUNKS, SHARDS, strict=True))
            for g in _in(box)}


# -- the server ------------------------------------------------------------------------------

class _Log:
    """The requests a server answered (method, path, Range) and the most it answered at
    once."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None]] = []
        self.busy = 0
        self.most = 0
        self.lock = threading.Lock()

    def clear(self) -> None:
        # (a request answered before may not have left answering() yet: its client has the
        # response, its handler is still returning; counted, it made 'most' one too many)
        deadline = time.monotonic() + 10
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.005)
        with self.lock:
            self.requests.clear()
            self.most = 0

    @contextmanager
    def answering(self, method: str, path: str, rng: str | None
                  ) -> Iterator[Callable[[], None]]:
        """Counts the request busy until the callable it gives is called (when its headers
        are sent: the client cannot have the whole answer before, and may ask again as soon
        as it has it, while this handler is still writing or returning), or at the end."""
        with self.lock:
            self.requests.append((method, path, rng))
            self.busy += 1
            self.most = max(self.most, self.busy)
        left = [False]

        def answered() -> None:
            with self.lock:
                if not left[0]:
                    left[0] = True
                    self.busy -= 1

        try:
            yield answered
        finally:
            answered()


@contextmanager
def _serve(root: Path, delay: float = 0.0) -> Iterator[tuple[str, _Log]]:
    """Serve ``root`` (tests/static_http's server: byte ranges, a backlog for tensorstore's
    concurrent requests), counting requests; each answer waits ``delay`` seconds first."""
    log = _Log()
    done = threading.Event()

    class Handler(RangeHandler):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, directory=str(root), **k)

        def do_GET(self) -> None:
            with log.answering("GET", self.path, self.headers.get("Range")) as answered:
                self.answered = answered
                done.wait(delay)
                super().do_GET()

        def do_HEAD(self) -> None:
            with log.answering("HEAD", self.path, self.headers.get("Range")) as answered:
                self.answered = answered
                done.wait(delay)
                super().do_HEAD()

        def end_headers(self) -> None:
            answered = getattr(self, "answered", None)
            if answered is not None:
                answered()  # (the body follows: see _Log.answering)
            super().end_headers()

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        done.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(params=sorted(WRITERS))
def served(request: pytest.FixtureRequest,
           tmp_path: Path) -> Iterator[tuple[voxgate.Volume, Path, set[tuple[int, ...]], _Log]]:
    """An array of each writer, over HTTP: the Volume, its local array folder, the truth (the
    inner chunks absent) and the server's request log (cleared after opening)."""
    name, array = WRITERS[request.param](tmp_path)
    absent = _brute_absent(array)
    assert absent == set(_grid()) - _touched()  # (the oracle agrees with the writes)
    with _serve(tmp_path) as (base, log):
        vol = voxgate.open(f"zarr://{base}/{name}")
        assert tuple(vol.remote.meta.scale(0).chunks) == CHUNKS
        log.clear()
        yield vol, array, absent, log


def _voxgate_box(vol: voxgate.Volume, box: tuple[tuple[int, ...], tuple[int, ...]]) -> Box:
    start = vol.remote.meta.scale(0).bounds.start
    return Box(start + Vec(*box[0]), start + Vec(*box[1]))


# -- the tests -------------------------------------------------------------------------------

def test_the_arrays_have_what_the_cases_need() -> None:
    """Partial edge shards, shards wholly absent, shards partly and wholly stored."""
    absent = set(_grid()) - _touched()
    per_shard = int(np.prod([s // c for s, c in zip(SHARDS, CHUNKS, strict=True)]))
    shards: dict[tuple[int, ...], list[bool]] = {}
    for g in _grid():
        shard = tuple(i * c // s for i, c, s in zip(g, CHUNKS, SHARDS, strict=True))
        shards.setdefault(shard, []).append(g in absent)
    assert any(len(v) < per_shard for v in shards.values())  # (partial at the edges)
    kinds = {(all(v), any(v)) for v in shards.values()}
    assert kinds == {(True, True), (False, True), (False, False)}
    edge = shards[(2, 2, 2)]  # (absent: True)
    assert len(edge) < per_shard and any(edge) and not all(edge)


@pytest.mark.parametrize("box", BOXES, ids=["whole", "unaligned", "one-shard", "absent-shards",
                                             "far-edge"])
def test_absent_chunks_read_each_shard_index_once(
        served: tuple[voxgate.Volume, Path, set[tuple[int, ...]], _Log],
        box: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    vol, array, absent, log = served
    chunks = _in(box)
    want = [Vec(*g) for g in chunks if g in absent]
    got = vol.remote.absent_chunks(_voxgate_box(vol, box), 0)
    assert got == want
    n_shards = len(_shards_in(box))
    assert len(log.requests) <= n_shards + SLACK, log.requests
    assert len(log.requests) < len(chunks)
    # (the same answer as voxgate's scan of the local files, which lists them)
    local = voxgate.open(f"zarr://{array.parent}" if array.name == "0" else f"zarr://{array}")
    assert local.remote.absent_chunks(_voxgate_box(local, box), 0) == want


def test_missing_chunks_of_the_whole_array(
        served: tuple[voxgate.Volume, Path, set[tuple[int, ...]], _Log]) -> None:
    vol, _, absent, log = served
    assert vol.missing_chunks() == sorted(Vec(*g) for g in absent)
    shards = _shards_in(((0, 0, 0), SHAPE))
    assert len(shards) == 27
    assert len(log.requests) <= len(shards) + SLACK
    assert len(log.requests) < len(_grid())
    # one ranged GET of a shard index per shard, none of the chunks themselves
    keys = [p for m, p, r in log.requests
            if m == "GET" and r is not None and re.search(r"/c/\d+/\d+/\d+$", p)]
    assert len(keys) == len(set(keys)) == len(log.requests)


def test_shard_indexes_are_read_a_bounded_number_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shard indexes are read a bounded number at a time (``_ONE_BY_ONE``, here 4)."""
    monkeypatch.setattr(_tensorstore, "_ONE_BY_ONE", 4)
    name, array = _by_tensorstore(tmp_path)
    absent = _brute_absent(array)
    with _serve(tmp_path, delay=0.02) as (base, log):
        vol = voxgate.open(f"zarr://{base}/{name}")
        log.clear()
        assert vol.missing_chunks() == sorted(Vec(*g) for g in absent)
        assert 1 <= log.most <= 4
        assert len(log.requests) <= 27 + SLACK


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_copy_of_the_http_sharded_array(tmp_path: Path, writer: str) -> None:
    name, array = WRITERS[writer](tmp_path / "src")
    source = np.asarray(zarr.open_array(str(array), mode="r")[...])
    absent = _brute_absent(array)
    with _serve(tmp_path / "src") as (base, _):
        vol = voxgate.open(f"zarr://{base}/{name}")
        report = voxgate.copy(vol, f"zarr://{tmp_path}/copy.zarr", progress=False)
    assert report.absent_counts == {0: len(absent)}
    copied = ts.open({"driver": "zarr3", "kvstore": f"file://{tmp_path}/copy.zarr/0"},
                     read=True).result().read().result()
    np.testing.assert_array_equal(copied, source)
    assert source.any()


def _damage_crc(path: Path, at_end: bool) -> None:
    raw = bytearray(path.read_bytes())
    n = int(np.prod([s // c for s, c in zip(SHARDS, CHUNKS, strict=True)])) * 16 + 4
    raw[(len(raw) - 2) if at_end else (n - 2)] ^= 0x80  # (a byte of the checksum)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["checksum", "truncated"])
@pytest.mark.parametrize("writer", ["tensorstore", "zarr-python"])
def test_a_damaged_shard_index_over_http_is_an_error(tmp_path: Path, writer: str,
                                                     how: str) -> None:
    name, array = WRITERS[writer](tmp_path)
    shard = array / "c/1/1/1"  # (wholly stored)
    if how == "checksum":
        _damage_crc(shard, at_end=writer == "tensorstore")
    else:
        shard.write_bytes(shard.read_bytes()[:20])
    with _serve(tmp_path) as (base, _):
        vol = voxgate.open(f"zarr://{base}/{name}")
        with pytest.raises(CorruptChunkError, match=re.escape("c/1/1/1")):
            vol.missing_chunks()
        with pytest.raises(CorruptChunkError, match=re.escape("c/1/1/1")):
            vol.remote.absent_chunks(_voxgate_box(vol, BOXES[1]), 0)
        # a box of other shards does not read it
        box = ((0, 0, 0), (6, 8, 10))
        assert vol.remote.absent_chunks(_voxgate_box(vol, box), 0) == [
            Vec(*g) for g in _in(box) if g not in _touched()]


def test_unsharded_arrays_are_still_asked_chunk_by_chunk(tmp_path: Path) -> None:
    vol = voxgate.create(f"zarr://{tmp_path}/u.zarr", shape=SHAPE, dtype="uint16",
                         chunks=CHUNKS, voxel_size=(1, 1, 1))
    for i, (a, e) in enumerate(WRITES):
        box = Box(Vec(*a), Vec(*e))
        vol.remote.write(box, np.full(tuple(box.shape), 10 + i, "uint16"), 0)
    absent = set(_grid()) - _touched()
    with _serve(tmp_path) as (base, log):
        http = voxgate.open(f"zarr://{base}/u.zarr")
        log.clear()
        assert http.missing_chunks() == sorted(Vec(*g) for g in absent)
        assert len(log.requests) >= len(_grid())
