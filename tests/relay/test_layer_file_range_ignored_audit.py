"""Ranges of layer files on an upstream store that ignores Range (relay/layer_files.py).

An HTTP server that answers every GET with the whole file (200), as Python's ``http.server``
and many simple static servers do, made every ranged request for a file beside a layer fail
through the relay: tensorstore receives the whole object for a ranged read and refuses it
(``FAILED_PRECONDITION: ... was ignored by server``), so the relay answered 500, and CloudVolume,
which reads a sharded layer's shard index and minishards by range, could read none of its
sharded skeletons or meshes.  Now a range of such a store's file is cut from a whole read of it,
with the status, Content-Range (the size known from the read), Content-Length and ETag a store
that serves ranges gets; the store is then known to ignore Range and later requests read the
file once, not a failing ranged read first.

A sharded segmentation layer written by voxgate (sharded chunks, sharded multi-resolution meshes,
sharded skeletons) is served by an HTTP server on 127.0.0.1 that counts the body bytes it sends
and serves ranges or not (static_http.FileStore, ``ranges``); a relay on a thread of this
process (test_layer_file_validators_audit.Served) reads it; CloudVolume reads the same layer
from disk as the oracle.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cloudvolume import CloudVolume

import voxgate
from voxgate.errors import VoxgateError
from voxgate.formats.mesh import write_meshes
from voxgate.formats.skeleton.precomputed import write_skeletons
from voxgate.relay import layer_files
from voxgate.relay.errors import BossHTTPError
from voxgate.relay.layer_files import Conditions, LayerFiles
from voxgate.synthetic import synthetic_labels

from ..static_http import FileStore
from .test_layer_file_remote_stream_audit import _random
from .test_layer_file_validators_audit import Served

SHAPE = (32, 64, 64)  # z, y, x
BIG = "mesh/big.shard"
STREAM = 2**20  # REMOTE_STREAM_BYTES here
BLOCK = 2**18  # _REMOTE_BLOCK here
BIG_SIZE = 2 * 2**20 + 4321


@dataclass
class Layer:
    root: Path  # the directory served; the layer is root/seg
    ids: list[int]
    labels: np.ndarray


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Layer:
    root = tmp_path_factory.mktemp("store")
    labels = synthetic_labels(SHAPE, cell=(16, 32, 32), seed=3)
    seg = voxgate.create(f"precomputed://file://{root}/seg", shape=SHAPE, chunks=(16, 32, 32),
                         dtype="uint64", voxel_size=(40, 8, 8), kind="segmentation",
                         sharded=True)
    seg[:] = labels
    ids = [int(i) for i in np.unique(labels) if i][:4]
    write_meshes(seg.url, voxgate.mesh(seg, ids=ids), format="multires", lods=2, sharded=True)
    write_skeletons(seg.url, voxgate.skeletonize(seg, ids=ids, dust_threshold=0), sharded=True)
    mesh = root / "seg" / "mesh"
    assert json.loads((mesh / "info").read_text()).get("sharding")  # (sharded, as meant)
    (mesh / "big.shard").write_bytes(_random(BIG_SIZE, 21))
    # an object stored gzip-compressed (as CloudFiles writes <name> with Content-Encoding)
    (mesh / "gz").write_bytes(gzip.compress(_random(5000, 22), mtime=0))
    return Layer(root, ids, labels)


@dataclass
class Relay:
    store: FileStore
    served: Served


@pytest.fixture
def relay(layer: Layer, tmp_path: Path) -> Iterator[Relay]:
    """A relay over the layer on a store that ignores Range (a new relay each test: it has not
    yet learnt that the store does)."""
    store = FileStore(layer.root, ranges=False)
    served = Served(f"precomputed://{store.url}/seg", tmp_path)
    try:
        yield Relay(store, served)
    finally:
        served.stop()
        store.stop()


@pytest.fixture
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layer_files, "REMOTE_STREAM_BYTES", STREAM)
    monkeypatch.setattr(layer_files, "_REMOTE_BLOCK", BLOCK)


def _shard(layer: Layer, directory: str) -> tuple[str, bytes]:
    found = sorted((layer.root / "seg" / directory).glob("*.shard"))
    assert found
    return f"{directory}/{found[0].name}", found[0].read_bytes()


# -- CloudVolume -----------------------------------------------------------------------------------
def test_cloudvolume_reads_sharded_skeletons_and_meshes_through_the_relay(
        layer: Layer, relay: Relay) -> None:
    """CloudVolume reads each shard's index and minishards by range: the old relay answered
    every such request 500 (CloudVolume raised).  Skeletons and meshes equal CloudVolume's own
    reading of the layer on disk; the cutout (chunks the relay serves itself) is a guard."""
    cv = CloudVolume(f"precomputed://{relay.served.url}", progress=False, cache=False)
    disk = CloudVolume(f"precomputed://file://{layer.root}/seg", progress=False, cache=False)
    cut = np.asarray(cv[:, :, :])[..., 0]
    assert np.array_equal(cut.transpose(2, 1, 0), layer.labels)
    for i in layer.ids:
        got, want = cv.skeleton.get(i), disk.skeleton.get(i)
        assert got.id == i and len(got.vertices) > 0
        assert np.array_equal(got.vertices, want.vertices)
        assert np.array_equal(got.edges, want.edges)
    got_meshes, want_meshes = cv.mesh.get(layer.ids), disk.mesh.get(layer.ids)
    assert sorted(got_meshes) == sorted(want_meshes) == layer.ids
    for i in layer.ids:
        assert len(got_meshes[i].vertices) > 0
        assert np.array_equal(got_meshes[i].vertices, want_meshes[i].vertices)
        assert np.array_equal(got_meshes[i].faces, want_meshes[i].faces)
    assert 500 not in relay.served.statuses
    assert relay.served.statuses[206] > 0  # (CloudVolume did read by range)


# -- direct ranged requests ------------------------------------------------------------------------
def _cases(size: int) -> list[tuple[str, int, int]]:
    """(Range header, start, stop) of the ranges every file is read with."""
    return [("bytes=0-15", 0, 16), ("bytes=10-99", 10, 100), (f"bytes={size - 5}-", size - 5, size),
            ("bytes=7-", 7, size), ("bytes=-7", size - 7, size),
            (f"bytes=3-{size + 1000}", 3, size), (f"bytes=-{size + 50}", 0, size),
            (f"bytes={size - 1}-{size - 1}", size - 1, size)]


@pytest.mark.parametrize("which", ["skeletons", "mesh", "big"])
def test_ranges_are_the_exact_bytes_with_their_headers(
        layer: Layer, relay: Relay, small_thresholds: None, which: str) -> None:
    """206, the bytes, ``Content-Range: bytes a-b/size``, Content-Length and one ETag for every
    range of the file, as the relay's whole-file reply (the old relay: 500 for every range from
    a first byte).  ``big``: a shard file of REMOTE_STREAM_BYTES or more (its suffix and
    open-ended ranges take the large-file path on a store that serves ranges)."""
    name, data = (BIG, _random(BIG_SIZE, 21)) if which == "big" else _shard(layer, which)
    size = len(data)
    whole = relay.served.get(name)
    assert whole.status_code == 200 and whole.content == data
    for header, start, stop in _cases(size):
        res = relay.served.get(name, Range=header)
        assert res.status_code == 206, (header, res.text)
        assert res.content == data[start:stop], header
        assert res.headers["content-range"] == f"bytes {start}-{stop - 1}/{size}", header
        assert res.headers["content-length"] == str(stop - start), header
        assert res.headers["etag"] == whole.headers["etag"], header
        assert res.headers["cache-control"] == "public, no-cache"
        head = relay.served.get(name, "HEAD", Range=header)
        assert head.status_code == 206 and head.content == b"", header
        assert head.headers["content-range"] == res.headers["content-range"]
        assert head.headers["content-length"] == res.headers["content-length"]


@pytest.mark.parametrize("which", ["skeletons", "big"])
def test_a_range_past_the_end_is_416_naming_the_size(
        layer: Layer, relay: Relay, small_thresholds: None, which: str) -> None:
    """``bytes */size`` (the old relay: 500, from the refused ranged read)."""
    name, data = (BIG, _random(BIG_SIZE, 21)) if which == "big" else _shard(layer, which)
    size = len(data)
    for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 10}", f"bytes={size}-{size}"):
        res = relay.served.get(name, Range=header)
        assert res.status_code == 416, (header, res.text)
        assert res.headers["content-range"] == f"bytes */{size}", header


def test_later_ranges_of_a_file_cost_one_transfer_each(layer: Layer, relay: Relay) -> None:
    """The first range learns that the store ignores Range (tensorstore drops the whole file
    its ranged read got, so the whole read after it is a second transfer); every later range,
    of that file or another of the store, is one transfer of the file, and a revalidation of a
    range with its ETag none (a conditional request the store answers 304)."""
    name, data = _shard(layer, "skeletons")
    other, other_data = _shard(layer, "mesh")
    sent = relay.store.sent
    first = relay.served.get(name, Range="bytes=0-15")
    assert first.status_code == 206 and first.content == data[:16], first.text
    assert relay.store.sizes(f"seg/{name}") == [len(data)] * 2, sent
    for header, start, stop in _cases(len(data)):
        sent.clear()
        res = relay.served.get(name, Range=header)
        assert res.status_code == 206 and res.content == data[start:stop], header
        assert relay.store.sizes(f"seg/{name}") == [len(data)], (header, sent)
    sent.clear()
    res = relay.served.get(other, Range="bytes=16-31")
    assert res.status_code == 206 and res.content == other_data[16:32]
    assert relay.store.sizes(f"seg/{other}") == [len(other_data)], sent
    sent.clear()
    again = relay.served.get(name, Range="bytes=0-15", If_None_Match=first.headers["etag"])
    assert again.status_code == 304 and again.headers["etag"] == first.headers["etag"]
    assert relay.store.sizes(f"seg/{name}") == [], sent


def test_if_range_holds_for_the_files_tag_and_not_for_another(
        layer: Layer, relay: Relay) -> None:
    name, data = _shard(layer, "skeletons")
    tag = relay.served.get(name, Range="bytes=0-15").headers["etag"]
    held = relay.served.get(name, Range="bytes=4-9", If_Range=tag)
    assert held.status_code == 206 and held.content == data[4:10]
    other = relay.served.get(name, Range="bytes=4-9", If_Range='"vgf-0102-raw-x"')
    assert other.status_code == 200 and other.content == data
    assert "content-range" not in other.headers


# -- the same replies as on a store that serves ranges ---------------------------------------------
@pytest.mark.parametrize("name", ["skeletons", "mesh/gz", BIG])
def test_the_replies_equal_those_of_the_store_serving_ranges(
        layer: Layer, small_thresholds: None, name: str) -> None:
    """In process, the same location: each range's status, bytes, Content-Range (but where the
    ranged read cannot know the size: ``*``), Content-Length and ETag, from a store that serves
    ranges and then from the same store ignoring them (a 416 then says the size, which
    a ranged read did not know).  ``mesh/gz`` is stored gzip: a range
    from a first byte is of its stored bytes (``raw``) on both."""
    if name == "skeletons":
        name = _shard(layer, "skeletons")[0]
    size = (layer.root / "seg" / name).stat().st_size
    store = FileStore(layer.root, ranges=False)
    location = f"{store.url}/seg"
    try:
        def replies(files: LayerFiles) -> list[tuple[Any, ...]]:
            out = []
            for header, _, _ in [*_cases(size), (f"bytes={size}-", 0, 0)]:
                try:
                    reply = files.read(location, name, range_header=header, gzip_ok=False,
                                       head=False)
                except (BossHTTPError, VoxgateError) as exc:  # (the 416; the old code's error)
                    out.append((header, type(exc).__name__, getattr(exc, "status", None),
                                getattr(exc, "headers", None)))
                    continue
                assert reply is not None
                body = reply.body if isinstance(reply.body, bytes) else b"".join(reply.body)
                out.append((header, reply.status, body, dict(reply.headers)))
            return out

        store.ranges = True
        honoured = replies(LayerFiles())
        store.ranges = False
        ignored = replies(LayerFiles())
    finally:
        store.stop()
    for (header, *got), (_, *want) in zip(ignored, honoured, strict=True):
        # (where a ranged read could not know the size, a whole read says it)
        if want[0] == 206 and want[2]["Content-Range"].endswith("/*"):
            want[2]["Content-Range"] = want[2]["Content-Range"][:-1] + str(size)
        if want[0] == "BossHTTPError" and not want[2]:
            want[2] = {"Content-Range": f"bytes */{size}"}
        assert got == want, header
    assert ignored[0][1] == 206 and "ETag" in ignored[0][3]


def test_a_store_that_serves_ranges_still_reads_only_the_range(
        layer: Layer, small_thresholds: None) -> None:
    """A guard (passes on the old code too): on a store that honours Range nothing is read
    whole for a range; a large shard's suffix is read in small pieces."""
    store = FileStore(layer.root, ranges=True)
    files = LayerFiles()
    try:
        reply = files.read(f"{store.url}/seg", BIG, range_header="bytes=100-199", gzip_ok=False,
                           head=False)
        assert reply is not None and reply.status == 206
        assert reply.body == _random(BIG_SIZE, 21)[100:200]
        assert store.sizes(f"seg/{BIG}") == [100]
        store.sent.clear()
        reply = files.read(f"{store.url}/seg", BIG, range_header="bytes=-100", gzip_ok=False,
                           head=False, conditions=Conditions())
        assert reply is not None and reply.status == 206
        body = reply.body if isinstance(reply.body, bytes) else b"".join(reply.body)
        assert body == _random(BIG_SIZE, 21)[-100:]
        sizes = store.sizes(f"seg/{BIG}")
        assert max(sizes) <= BLOCK and sum(sizes) < BIG_SIZE // 2, sizes
    finally:
        store.stop()
