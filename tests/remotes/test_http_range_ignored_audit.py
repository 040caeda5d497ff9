"""Reading stores over an HTTP server that ignores Range (remotes/precomputed, storage/sharding).

A scientist serves a dataset directory with ``python -m http.server``, which answers every GET
with the whole file (200) whatever its Range, and opens ``precomputed://http://HOST/layer``.
tensorstore's HTTP kvstore refuses a whole-file answer to a ranged read
(``FAILED_PRECONDITION: ... was ignored by server``), and a sharded layer is read by ranges (the
shard index, the minishard indexes, each chunk, mesh and skeleton).  Before this audit:

- a cutout of a sharded image or segmentation scale raised CorruptChunkError ("a chunk could not
  be decoded": the data was fine); a read of every chunk of a shard worked (tensorstore then reads
  the shard whole);
- ``absent_chunks`` of a sharded scale, and so ``voxgate cp`` from the layer, raised the same;
- sharded meshes and skeletons (``remote.meshes`` / ``remote.skeletons``) raised VoxgateError;
- a sharded Zarr v3 array raised CorruptChunkError.

Now the sharded precomputed paths read whole shard files and cut the ranges themselves, and the
server is remembered, so later reads send no Range; a sharded Zarr v3 array (whose shards
tensorstore reads by range itself) raises CapabilityNotSupportedError saying that the server
ignores Range and what to serve with instead.  Unsharded layers (precomputed, zarr v2 and v3,
N5) read whole files and worked before as now (guards).

Peers against the same server (seen while writing this, not asserted): CloudVolume raises
``SpecViolation: ... shard index was an incorrect length`` for sharded chunks, meshes and
skeletons; tensorstore alone raises the FAILED_PRECONDITION for any read of part of a shard.

The layers are written with voxgate into a tmp directory served by Python's own
``http.server.SimpleHTTPRequestHandler`` on 127.0.0.1 (which ignores Range) and, as the oracle of
the same bytes read by range, by ``tests/static_http.RangeHandler`` (which serves ranges);
each server records the requests it answered.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import voxgate
from voxgate.cli import main
from voxgate.errors import CapabilityNotSupportedError, CorruptChunkError
from voxgate.formats.mesh import write_meshes
from voxgate.formats.skeleton.precomputed import write_skeletons
from voxgate.geometry import Box
from voxgate.storage import kvstore
from voxgate.synthetic import synthetic_labels

from ..static_http import RangeHandler

SHAPE = (40, 70, 60)  # z, y, x: not a multiple of the chunks, so edge chunks are clipped
CHUNKS = (16, 32, 32)
#: several shards and minishards, hashed: a lookup reads an index, a minishard index, a chunk
HASHED = {"hash": "murmurhash3_x86_128", "preshift_bits": 1, "minishard_bits": 2,
          "shard_bits": 2, "minishard_index_encoding": "gzip", "data_encoding": "gzip"}
CUTOUTS = [Box((0, 0, 0), (4, 4, 4)), Box((3, 5, 7), (29, 61, 50)),
           Box((33, 40, 31), (40, 70, 60)), Box((16, 32, 32), (32, 64, 60))]


@dataclass
class Data:
    root: Path
    labels: np.ndarray
    image: np.ndarray
    ids: list[int]
    partial: np.ndarray  # what the layer "partial" holds (chunks never written read as 0)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    root = tmp_path_factory.mktemp("served")
    labels = synthetic_labels(SHAPE, cell=(16, 32, 32), seed=5)
    image = (np.arange(np.prod(SHAPE), dtype=np.uint64) * 7 % 251).astype(np.uint8)
    image = image.reshape(SHAPE)
    common: dict[str, Any] = {"shape": SHAPE, "chunks": CHUNKS, "voxel_size": (40, 8, 8)}
    seg = voxgate.create(f"precomputed://file://{root}/seg", dtype="uint64",
                         kind="segmentation", sharded=HASHED, **common)
    seg[:] = labels
    ids = [int(i) for i in np.unique(labels) if i][:5]
    write_meshes(seg.url, voxgate.mesh(seg, ids=ids), format="multires", lods=2, sharded=True)
    write_skeletons(seg.url, voxgate.skeletonize(seg, ids=ids, dust_threshold=0), sharded=True)
    img = voxgate.create(f"precomputed://file://{root}/img", dtype="uint8", sharded=True,
                         **common)
    img[:] = image
    jpeg = voxgate.create(f"precomputed://file://{root}/jpeg", dtype="uint8", sharded=True,
                          encoding="jpeg", **common)
    jpeg[:] = image
    partial = voxgate.create(f"precomputed://file://{root}/partial", dtype="uint8",
                             sharded=HASHED, **common)
    partial[0:16, 0:32, 0:32] = image[0:16, 0:32, 0:32]
    partial[32:40, 32:64, 32:60] = image[32:40, 32:64, 32:60]
    held = np.zeros_like(image)
    held[0:16, 0:32, 0:32] = image[0:16, 0:32, 0:32]
    held[32:40, 32:64, 32:60] = image[32:40, 32:64, 32:60]
    plain = voxgate.create(f"precomputed://file://{root}/plain", dtype="uint8", **common)
    plain[:] = image
    for name, options in (("z2.zarr", {"zarr_format": 2}), ("z3.zarr", {}),
                          ("z3s.zarr", {"shards": (32, 64, 64)})):
        z = voxgate.create(f"zarr://file://{root}/{name}", dtype="uint8", **common, **options)
        z[:] = image
    n5 = voxgate.create(f"n5://file://{root}/v.n5", dtype="uint8", **common)
    n5[:] = image
    # 256 chunks, a quarter written: presence of more than 64 chunks lists the shard indexes
    many = voxgate.create(f"precomputed://file://{root}/many", shape=(64, 128, 128),
                          chunks=(16, 16, 16), dtype="uint8", voxel_size=(8, 8, 8), sharded=True)
    many[0:16] = 3
    return Data(root, labels, image, ids, held)


@dataclass
class Server:
    url: str
    #: (method, path, Range header or None) of each request answered
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)

    def ranged(self) -> list[str]:
        return [path for _, path, rng in self.requests if rng is not None]

    def whole_shard_gets(self) -> list[str]:
        return [path for method, path, rng in self.requests
                if method == "GET" and rng is None and path.endswith(".shard")]


def _serve(root: Path, base: type[http.server.SimpleHTTPRequestHandler]) -> Iterator[Server]:
    """Serve ``root`` with ``base`` (its GET and HEAD), recording each request."""
    server_record = Server("")

    class Handler(base):  # type: ignore[valid-type,misc]
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            server_record.requests.append(("GET", self.path, self.headers.get("Range")))
            super().do_GET()

        def do_HEAD(self) -> None:
            server_record.requests.append(("HEAD", self.path, self.headers.get("Range")))
            super().do_HEAD()

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    server_record.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield server_record
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture(autouse=True)
def _nothing_known_to_ignore_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts knowing no server that ignores Range (a port freed by one test's
    server may be another's later)."""
    monkeypatch.setattr(kvstore, "_ignoring", {}, raising=False)


@pytest.fixture
def ignoring(data: Data) -> Iterator[Server]:
    """Python's ``http.server`` over the data: every GET answered 200 with the whole file.  A
    new server (a new port) each test: voxgate has not yet learnt that it ignores Range."""
    yield from _serve(data.root, http.server.SimpleHTTPRequestHandler)


@pytest.fixture
def honouring(data: Data) -> Iterator[Server]:
    """A static server over the same data that answers ranges (206)."""
    yield from _serve(data.root, RangeHandler)


# -- sharded precomputed scales --------------------------------------------------------------------
@pytest.mark.parametrize("layer", ["seg", "img"])
def test_cutouts_of_a_sharded_scale_are_the_written_voxels(
        data: Data, ignoring: Server, layer: str) -> None:
    """Unaligned cutouts (one voxel's chunk, the middle, the clipped upper edge) and the whole
    volume, equal to what was written.  The old code raised CorruptChunkError for each cutout
    (tensorstore refused the whole shard its ranged read got)."""
    want = data.labels if layer == "seg" else data.image
    vol = voxgate.open(f"precomputed://{ignoring.url}/{layer}")
    for box in CUTOUTS:
        got = np.asarray(vol[box.slices()])
        assert got.dtype == want.dtype
        assert np.array_equal(got, want[box.slices()]), box
    assert np.array_equal(np.asarray(vol), want)


def test_jpeg_sharded_scale_equals_the_same_layer_read_by_range(
        data: Data, ignoring: Server, honouring: Server) -> None:
    """jpeg is lossy: the oracle is the same layer read by tensorstore from a server that serves
    ranges (the old code raised CorruptChunkError on the server that ignores them)."""
    ours = voxgate.open(f"precomputed://{ignoring.url}/jpeg")
    oracle = voxgate.open(f"precomputed://{honouring.url}/jpeg")
    for box in CUTOUTS:
        got = np.asarray(ours[box.slices()])
        assert np.array_equal(got, np.asarray(oracle[box.slices()])), box
    assert np.abs(np.asarray(ours).astype(int) - data.image.astype(int)).mean() < 16


def test_the_server_is_remembered_and_later_reads_send_no_range(
        data: Data, ignoring: Server) -> None:
    """The first cutout tries one range (refused) and then reads shards whole; later cutouts,
    of this handle, a new handle of another layer on the server, and meshes, send no Range at
    all.  The old code sent ranges every time (and failed each time)."""
    vol = voxgate.open(f"precomputed://{ignoring.url}/img")
    box = CUTOUTS[0]
    assert np.array_equal(np.asarray(vol[box.slices()]), data.image[box.slices()])
    assert len(ignoring.ranged()) == 1, ignoring.requests
    assert ignoring.whole_shard_gets(), ignoring.requests
    ignoring.requests.clear()
    for box in CUTOUTS[1:]:
        assert np.array_equal(np.asarray(vol[box.slices()]), data.image[box.slices()])
    seg = voxgate.open(f"precomputed://{ignoring.url}/seg")
    box = CUTOUTS[1]
    assert np.array_equal(np.asarray(seg[box.slices()]), data.labels[box.slices()])
    assert sorted(seg.remote.meshes(data.ids[:2])) == data.ids[:2]
    assert ignoring.ranged() == [], ignoring.requests
    assert ignoring.whole_shard_gets()


def test_a_server_that_serves_ranges_is_still_read_by_range(
        data: Data, honouring: Server) -> None:
    """Guard: with a server that serves ranges no shard is read whole for a cutout (the
    fallback is only for servers seen to ignore Range)."""
    vol = voxgate.open(f"precomputed://{honouring.url}/seg")
    box = CUTOUTS[0]
    assert np.array_equal(np.asarray(vol[box.slices()]), data.labels[box.slices()])
    assert honouring.ranged()
    assert honouring.whole_shard_gets() == [], honouring.requests


def test_a_truncated_shard_raises_and_is_never_read_as_zeros(
        data: Data, tmp_path: Path) -> None:
    """A shard file cut short on a server that ignores Range: its index points past its end,
    and the read raises CorruptChunkError naming it (never zeros or other voxels)."""
    import shutil

    shutil.copytree(data.root / "img", tmp_path / "img")
    shard = next((tmp_path / "img").glob("*/*.shard"))
    shard.write_bytes(shard.read_bytes()[:-100])
    for server in _serve(tmp_path, http.server.SimpleHTTPRequestHandler):
        vol = voxgate.open(f"precomputed://{server.url}/img")
        with pytest.raises(CorruptChunkError, match="shorter than its indexes say"):
            np.asarray(vol[CUTOUTS[2].slices()])


# -- chunk presence and the CLI --------------------------------------------------------------------
def test_absent_chunks_of_a_sharded_scale(data: Data, ignoring: Server) -> None:
    """Chunk presence reads the shard indexes: equal to the same layer's on disk (the old code
    raised CorruptChunkError looking up the first chunk)."""
    disk = voxgate.open(f"precomputed://file://{data.root}/partial")
    vol = voxgate.open(f"precomputed://{ignoring.url}/partial")
    whole = Box((0, 0, 0), SHAPE)
    want = disk.remote.absent_chunks(whole)
    assert 0 < len(want) < 24  # (some chunks written, some not)
    assert vol.remote.absent_chunks(whole) == want
    part = Box((10, 20, 20), (40, 50, 40))
    assert vol.remote.absent_chunks(part) == disk.remote.absent_chunks(part)
    assert np.array_equal(np.asarray(vol), data.partial)


def test_absent_chunks_of_many_chunks(data: Data, ignoring: Server) -> None:
    """Guard (worked before too): more than 64 chunks, whose presence lists the shards with
    tensorstore, which reads each shard whole for that."""
    disk = voxgate.open(f"precomputed://file://{data.root}/many")
    vol = voxgate.open(f"precomputed://{ignoring.url}/many")
    whole = Box((0, 0, 0), (64, 128, 128))
    want = disk.remote.absent_chunks(whole)
    assert len(want) == 192
    assert vol.remote.absent_chunks(whole) == want


@pytest.mark.parametrize("layer", ["seg", "partial"])
def test_voxgate_cp_and_info_from_the_server(
        data: Data, ignoring: Server, tmp_path: Path, layer: str) -> None:
    """``voxgate info`` (worked before too) and ``voxgate cp`` to a local zarr, whose voxels
    are the layer's (the old cp failed: it looks up which chunks are absent)."""
    url = f"precomputed://{ignoring.url}/{layer}"
    info = CliRunner().invoke(main, ["info", url])
    assert info.exit_code == 0, info.output
    out = f"zarr://{tmp_path}/out.zarr"
    res = CliRunner().invoke(main, ["cp", url, out])
    assert res.exit_code == 0, res.output
    want = data.labels if layer == "seg" else data.partial
    assert np.array_equal(np.asarray(voxgate.open(out)), want)


# -- sharded meshes and skeletons ------------------------------------------------------------------
def test_sharded_meshes_and_skeletons(data: Data, ignoring: Server) -> None:
    """By id and all of them (the listing reads every shard's indexes), equal to the same
    layer's read from disk.  The old code raised VoxgateError ("Requested byte range ... was
    ignored by server") for each."""
    disk = voxgate.open(f"precomputed://file://{data.root}/seg").remote
    vol = voxgate.open(f"precomputed://{ignoring.url}/seg").remote
    some = data.ids[1:4]
    for got, want in ((vol.skeletons(some), disk.skeletons(some)),
                      (vol.skeletons(), disk.skeletons())):
        assert sorted(got) == sorted(want) and set(some) <= set(got)
        for i in want:
            assert np.array_equal(got[i].vertices, want[i].vertices)
            assert np.array_equal(got[i].edges, want[i].edges)
    for got, want in ((vol.meshes(some), disk.meshes(some)), (vol.meshes(), disk.meshes())):
        assert sorted(got) == sorted(want) and set(some) <= set(got)
        for i in want:
            assert len(got[i].vertices) > 0
            assert np.array_equal(got[i].vertices, want[i].vertices)
            assert np.array_equal(got[i].faces, want[i].faces)


def test_skeletons_by_id_on_a_fresh_process_state(data: Data, ignoring: Server) -> None:
    """Skeletons by id are read through tensorstore's sharded kvstore first: its refusal (not
    only voxgate's own ranged reads) turns to whole shards.  Absent ids are absent."""
    disk = voxgate.open(f"precomputed://file://{data.root}/seg").remote
    vol = voxgate.open(f"precomputed://{ignoring.url}/seg").remote
    wanted = [data.ids[0], 2**40 + 3]
    got = vol.skeletons(wanted)
    want = disk.skeletons(wanted)
    assert sorted(got) == sorted(want) == [data.ids[0]]
    assert np.array_equal(got[data.ids[0]].vertices, want[data.ids[0]].vertices)


# -- other formats ---------------------------------------------------------------------------------
def test_sharded_zarr3_says_the_server_ignores_range(data: Data, ignoring: Server) -> None:
    """tensorstore reads a zarr v3 shard's index by range itself, so voxgate cannot read it
    whole: the error says so, names the server and what to serve with (the old one was
    CorruptChunkError, "a chunk could not be decoded")."""
    vol = voxgate.open(f"zarr://{ignoring.url}/z3s.zarr")
    # (a cutout of part of a shard: one that needs every inner chunk of its shards is read
    # whole by tensorstore, and works)
    with pytest.raises(CapabilityNotSupportedError) as err:
        np.asarray(vol[CUTOUTS[0].slices()])
    text = str(err.value)
    assert f"the server at {ignoring.url} ignores HTTP Range requests" in text
    assert "RangeHTTPServer" in text and "http.server" in text
    assert not isinstance(err.value, CorruptChunkError)


def test_sharded_zarr3_on_a_server_that_serves_ranges(data: Data, honouring: Server) -> None:
    """Guard: the same array from a server that serves ranges."""
    vol = voxgate.open(f"zarr://{honouring.url}/z3s.zarr")
    for box in CUTOUTS:
        assert np.array_equal(np.asarray(vol[box.slices()]), data.image[box.slices()]), box


@pytest.mark.parametrize("url", ["precomputed://{}/plain", "zarr://{}/z2.zarr",
                                 "zarr://{}/z3.zarr", "n5://{}/v.n5"])
def test_unsharded_stores_read_whole_files(data: Data, ignoring: Server, url: str) -> None:
    """Guard (worked before): unsharded chunks are whole files; no Range is sent."""
    vol = voxgate.open(url.format(ignoring.url))
    for box in CUTOUTS:
        assert np.array_equal(np.asarray(vol[box.slices()]), data.image[box.slices()]), box
    assert ignoring.ranged() == []
