"""A remote file beside a precomputed layer is never held whole in memory (relay/layer_files.py).

A whole-file GET of a file on S3 (no Range, or an If-Range naming another version) read the
whole object in one request and replied with its bytes: a mesh or skeleton shard of hundreds
of MiB, once per client.  A HEAD read it all too (for Content-Length), and so did
``If-None-Match: *`` and If-None-Match with If-Range, to answer 304.  Now a file of
``REMOTE_STREAM_BYTES`` or more is streamed in ranged reads of ``_REMOTE_BLOCK`` bytes, each
checked to be of one storage generation (an object rewritten during the stream breaks it off,
never a splice of two versions); a HEAD reads a byte and two; ``If-None-Match: *`` reads at most
two bytes.

A relay served on a thread of this process over a layer on S3 (moto on 127.0.0.1), reading it
through a proxy that counts the bytes of each answer moto sends (tests/garbage_proxy.py); the
memory of an in-process read is measured with tracemalloc.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import voxgate
from tests.garbage_proxy import GarbageProxy
from voxgate.relay import layer_files
from voxgate.relay.cache import UpstreamError
from voxgate.relay.layer_files import LayerFiles

from ..static_http import FileStore
from .test_layer_file_validators_audit import Served

BIG = "mesh/big.shard"


def _block() -> int:
    """The size of each ranged read of a streamed file (4 MiB where the module has none, so
    the tests fail on code without streaming by what they check)."""
    return int(getattr(layer_files, "_REMOTE_BLOCK", 4 * 2**20))

#: bigger than REMOTE_STREAM_BYTES (8 MiB), not a multiple of the 4 MiB block
SIZE = 20 * 2**20 + 12345


def _s3() -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["VOXGATE_S3_ENDPOINT"],
                        region_name="us-east-1")


def _random(size: int, seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert data[:2] != b"\x1f\x8b"  # (not taken for a gzip stream)
    return data


@dataclass
class Layer:
    """A layer on S3 whose info names a mesh directory; the relay reads it through a proxy."""

    served: Served
    bucket: str
    location: str
    proxy: GarbageProxy

    def put(self, key: str, body: bytes) -> None:
        _s3().put_object(Bucket=self.bucket, Key=f"seg/{key}", Body=body)

    def sent(self, key: str) -> list[int]:
        """From now on, the body bytes of each 2xx answer moto sends the relay for ``key``."""
        sizes: list[int] = []

        def count(status: int, headers: dict[str, str], body: bytes
                  ) -> tuple[int, dict[str, str], bytes]:
            sizes.append(len(body))
            return status, headers, body

        self.proxy.rule = (re.compile("/seg/" + re.escape(key) + r"(\?|$)"), count)
        return sizes


@contextmanager
def proxied_layer(s3_bucket: str, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Layer]:
    """A layer on S3 whose info names a mesh directory, served by a relay that reads it
    through a counting proxy (stopped on exit)."""
    url = f"precomputed://s3://{s3_bucket}/seg"
    voxgate.create(url, shape=(8, 8, 8), chunks=(8, 8, 8), dtype="uint64",
                   voxel_size=(8, 8, 8), kind="segmentation")
    s3 = _s3()
    info = json.loads(s3.get_object(Bucket=s3_bucket, Key="seg/info")["Body"].read())
    info["mesh"] = "mesh"
    s3.put_object(Bucket=s3_bucket, Key="seg/info", Body=json.dumps(info).encode())
    s3.put_object(Bucket=s3_bucket, Key="seg/mesh/info",
                  Body=b'{"@type": "neuroglancer_legacy_mesh"}')
    proxy = GarbageProxy(os.environ["VOXGATE_S3_ENDPOINT"])
    with monkeypatch.context() as m:  # the relay's store goes through the proxy
        m.setenv("VOXGATE_S3_ENDPOINT", proxy.url)
        served = Served(url, tmp_path)
        assert served.get("mesh/info").status_code == 200  # (its stores are open)
    try:
        yield Layer(served, s3_bucket, f"s3://{s3_bucket}/seg", proxy)
    finally:
        served.stop()
        proxy.close()


@pytest.fixture
def layer(s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Layer]:
    with proxied_layer(s3_bucket, tmp_path, monkeypatch) as found:
        yield found


def _bounded(sizes: list[int], limit: int) -> None:
    assert sizes, "the store was not read"
    assert max(sizes) <= limit, f"an answer of {max(sizes)} bytes (limit {limit}): {sizes}"


# -- a whole GET is streamed -----------------------------------------------------------------------
@pytest.mark.parametrize("size", [SIZE, 16 * 2**20], ids=["partial-last-block", "whole-blocks"])
def test_a_whole_get_of_a_large_remote_file_is_streamed_in_bounded_ranged_reads(
        layer: Layer, size: int) -> None:
    data = _random(size, 1)
    layer.put(BIG, data)
    sizes = layer.sent(BIG)
    res = layer.served.get(BIG)
    assert res.status_code == 200 and res.content == data
    _bounded(sizes, _block())
    assert "content-length" not in res.headers  # (chunked: the store does not tell the size)
    assert sum(sizes) < size + _block()  # (read about once)
    etag = res.headers["etag"]
    part = layer.served.get(BIG, Range="bytes=0-99")  # ranges and the whole share one ETag
    assert part.status_code == 206 and part.content == data[:100]
    assert part.headers["etag"] == etag
    assert res.headers["cache-control"] == "public, no-cache"

    # If-Range naming another version: the whole file, streamed the same way
    sizes = layer.sent(BIG)
    res = layer.served.get(BIG, Range="bytes=0-99", If_Range='"vgf-other"')
    assert res.status_code == 200 and res.content == data and res.headers["etag"] == etag
    _bounded(sizes, _block())
    # a revalidation with its ETag reads none of it (as before)
    sizes = layer.sent(BIG)
    assert layer.served.get(BIG, If_None_Match=etag).status_code == 304
    assert all(n <= 2 for n in sizes), sizes


def test_a_file_of_an_unsharded_layer_is_read_in_one_request(layer: Layer) -> None:
    """Only shard files (``*.shard``) are probed for their size and streamed: an unsharded
    layer's files (one object's fragment, manifest or skeleton each) are read whole in one
    request, as before, without a probe before each of thousands of small files."""
    name = "mesh/7"  # (a multiresolution mesh's fragment data, unsharded)
    data = _random(8 * 2**20 + 5, 4)  # (larger than a shard that would be streamed)
    layer.put(name, data)
    probes: list[str] = []
    real = LayerFiles._remote_get

    def spy(self: LayerFiles, location: str, key: str, byte_range: Any) -> Any:
        probes.append(repr(byte_range))
        return real(self, location, key, byte_range)

    sizes = layer.sent(name)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(LayerFiles, "_remote_get", spy)
        res = layer.served.get(name)
    assert res.status_code == 200 and res.content == data
    assert res.headers["content-length"] == str(len(data))
    assert sizes == [len(data)] and probes == ["None"], (sizes, probes)


def test_the_memory_a_large_remote_read_holds_is_a_few_blocks(
        s3_bucket: str) -> None:
    """In process, with tracemalloc: the reply's body is blocks of at most ``_REMOTE_BLOCK``
    bytes, read as it is iterated, and the peak of memory allocated while it is made and
    consumed is a few blocks, not the object."""
    data = _random(SIZE, 2)
    _s3().put_object(Bucket=s3_bucket, Key=f"seg/{BIG}", Body=data)
    files = LayerFiles()
    location = f"s3://{s3_bucket}/seg"
    files.read(location, "mesh/none", range_header=None, gzip_ok=False, head=False)  # (opens)
    sizes = []
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        reply = files.read(location, BIG, range_header=None, gzip_ok=False, head=False)
        assert reply is not None and reply.status == 200
        streamed = not isinstance(reply.body, bytes)
        for block in (reply.body if not isinstance(reply.body, bytes) else [reply.body]):
            sizes.append(len(block))
            digest.update(block)
            del block
        del reply
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest.digest() == hashlib.sha256(data).digest()
    assert peak < 3 * _block(), f"{peak} bytes at the peak for a {SIZE}-byte file"
    assert streamed and max(sizes) <= _block()
    assert len(sizes) == -(-SIZE // _block())


# -- a rewrite during the stream breaks it off -----------------------------------------------------
def _rewrite_after(monkeypatch: pytest.MonkeyPatch, layer_or_bucket: str, key: str,
                   new: bytes | None, when: Any) -> list[Any]:
    """Rewrite (``new``; None: delete) the object ``key`` once, after a ranged read of the
    relay's (at its own function boundary, LayerFiles._remote_get) for which ``when(range)``
    holds, by a real write to S3; returns the ranges read so far."""
    read = LayerFiles._remote_get
    seen: list[Any] = []

    def spied(self: LayerFiles, location: str, name: str, byte_range: slice | None) -> Any:
        try:
            return read(self, location, name, byte_range)
        finally:  # (also after a read that raised: one past the end)
            if name == key:
                seen.append(byte_range)
                if when(byte_range) and "written" not in seen:
                    if new is None:
                        _s3().delete_object(Bucket=layer_or_bucket, Key=f"seg/{key}")
                    else:
                        _s3().put_object(Bucket=layer_or_bucket, Key=f"seg/{key}", Body=new)
                    seen.append("written")

    monkeypatch.setattr(LayerFiles, "_remote_get", spied)
    return seen


def test_an_object_rewritten_between_two_blocks_breaks_the_stream_off(
        layer: Layer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client (over HTTP) gets a body cut short, all of it bytes of the old version, and
    an error; never the old version's start followed by the new one's rest."""
    old = _random(SIZE, 3)
    new = bytes(255 - b for b in old)  # (the same size; no byte as it was)
    layer.put(BIG, old)
    block = _block()
    seen = _rewrite_after(monkeypatch, layer.bucket, BIG, new,
                          lambda r: r is not None and r.start == block)
    got = bytearray()
    with pytest.raises(httpx.TransportError):
        with httpx.stream("GET", f"{layer.served.url}/{BIG}", timeout=60) as res:
            assert res.status_code == 200
            etag = res.headers["etag"]
            for chunk in res.iter_raw():
                got.extend(chunk)
    assert "written" in seen, seen
    assert 0 < len(got) < SIZE and bytes(got) == old[: len(got)]
    # the next read is of the new version, whole, under another ETag
    monkeypatch.undo()
    res = layer.served.get(BIG)
    assert res.status_code == 200 and res.content == new and res.headers["etag"] != etag


@pytest.mark.parametrize("change", ["rewritten", "deleted"])
def test_a_change_at_the_end_of_the_stream_breaks_it_off(
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """A file a whole number of blocks long: its end is a read past it (OUT_OF_RANGE), whose
    generation cannot be seen; it is confirmed with a conditional request, and a change there
    (the same size, or the object gone) breaks the stream off too."""
    size = 3 * _block()
    old = _random(size, 4)
    _s3().put_object(Bucket=s3_bucket, Key=f"seg/{BIG}", Body=old)
    seen = _rewrite_after(monkeypatch, s3_bucket, BIG,
                          bytes(255 - b for b in old) if change == "rewritten" else None,
                          lambda r: r is not None and r.start == size and r.stop is None)
    reply = LayerFiles().read(f"s3://{s3_bucket}/seg", BIG, range_header=None, gzip_ok=False,
                              head=False)
    assert reply is not None and not isinstance(reply.body, bytes)
    got = []
    with pytest.raises(UpstreamError, match="written while it was streamed"):
        for block in reply.body:
            got.append(block)
    assert "written" in seen
    assert b"".join(got) == old  # (every byte sent was of the old version; no end was sent)


# -- HEAD ------------------------------------------------------------------------------------------
def test_a_head_of_a_large_remote_file_reads_three_bytes(layer: Layer) -> None:
    data = _random(SIZE, 5)
    layer.put(BIG, data)
    sizes = layer.sent(BIG)
    res = layer.served.get(BIG, "HEAD")
    assert res.status_code == 200 and res.content == b""
    assert sum(sizes) <= 3, sizes  # one byte (is it that large?) and two (does it start as gzip?)
    assert "content-length" not in res.headers, dict(res.headers)  # (not 0: it is unknown)
    etag = res.headers["etag"]
    assert layer.served.get(BIG, Range="bytes=0-9").headers["etag"] == etag
    # a small file's HEAD still says its length (it is read whole, as before)
    layer.put("mesh/small", b"x" * 1000)
    res = layer.served.get("mesh/small", "HEAD")
    assert res.status_code == 200 and res.headers["content-length"] == "1000"


# -- If-None-Match: * and If-None-Match with If-Range ----------------------------------------------
def test_if_none_match_star_is_answered_without_reading_the_object(layer: Layer) -> None:
    """``*`` matches any current representation (RFC 9110 13.1.2): 304 with the reply's ETag,
    after a read of at most two bytes; a missing file is still 404."""
    data = _random(SIZE, 6)
    layer.put(BIG, data)
    etag = layer.served.get(BIG, Range="bytes=0-9").headers["etag"]
    sizes = layer.sent(BIG)
    for method, extra in (("GET", {}), ("HEAD", {}), ("GET", {"Range": "bytes=0-99"}),
                          ("GET", {"Range": "bytes=5000000-"}),
                          ("GET", {"Range": "bytes=0-99", "If_Range": etag}),
                          ("GET", {"If_Range": '"vgf-other"'})):  # (no Range: ignored)
        res = layer.served.get(BIG, method, If_None_Match="*", **extra)
        assert res.status_code == 304, (method, extra, res.status_code)
        assert res.content == b"" and res.headers["etag"] == etag, (method, extra)
    assert all(n <= 2 for n in sizes), sizes
    assert layer.served.get("mesh/absent", If_None_Match="*").status_code == 404


def test_if_none_match_with_if_range_is_revalidated_without_reading_the_object(
        layer: Layer) -> None:
    """A cache revalidating a range it holds sends If-None-Match and If-Range with the same
    ETag: when it is current the Range stands and the reply is 304, from one conditional
    request to the store.  If-Range with another tag leaves it to the normal reply."""
    data = _random(SIZE, 7)
    layer.put(BIG, data)
    etag = layer.served.get(BIG, Range="bytes=0-9").headers["etag"]
    sizes = layer.sent(BIG)
    for rng in ("bytes=0-99", "bytes=100-"):
        res = layer.served.get(BIG, Range=rng, If_None_Match=etag, If_Range=etag)
        assert res.status_code == 304 and res.headers["etag"] == etag, rng
    res = layer.served.get(BIG, If_None_Match=etag, If_Range=etag)  # (no Range)
    assert res.status_code == 304
    assert all(n <= 2 for n in sizes), sizes
    # If-Range naming another version: the whole file, and If-None-Match then holds for it
    res = layer.served.get(BIG, Range="bytes=0-99", If_None_Match=etag, If_Range='"vgf-x"')
    assert res.status_code == 304 and res.headers["etag"] == etag
    # a stale tag: the bytes
    old = etag
    layer.put(BIG, data[::-1])
    res = layer.served.get(BIG, Range="bytes=0-99", If_None_Match=old, If_Range=old)
    assert res.status_code == 200 and res.content == data[::-1] and res.headers["etag"] != old


# -- what stays in memory --------------------------------------------------------------------------
def test_a_large_gzip_stored_object_is_still_served_as_before(
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An object that starts as gzip does is read whole (whether all of it is one gzip stream,
    and so which representation the reply is, is known only then): decoded, or as stored,
    under two ETags, whatever its size (a guard: this passes on the code before streaming)."""
    import gzip

    monkeypatch.setattr(layer_files, "REMOTE_STREAM_BYTES", 1000, raising=False)
    monkeypatch.setattr(layer_files, "_REMOTE_BLOCK", 500, raising=False)
    text = json.dumps({"ids": list(range(3000))}).encode()
    stored = gzip.compress(text, mtime=0)
    assert len(stored) > 1000
    _s3().put_object(Bucket=s3_bucket, Key="seg/mesh/props", Body=stored)
    files = LayerFiles()
    location = f"s3://{s3_bucket}/seg"
    plain = files.read(location, "mesh/props", range_header=None, gzip_ok=False, head=False)
    assert plain is not None and plain.body == text
    assert "Content-Encoding" not in plain.headers
    as_stored = files.read(location, "mesh/props", range_header=None, gzip_ok=True, head=False)
    assert as_stored is not None and as_stored.body == stored
    assert as_stored.headers["Content-Encoding"] == "gzip"
    assert as_stored.headers["ETag"] != plain.headers["ETag"]


@pytest.mark.parametrize("ranges", [True, False], ids=["serves-ranges", "ignores-range"])
def test_a_large_file_on_an_http_upstream_is_streamed_where_it_serves_ranges(
        tmp_path: Path, ranges: bool) -> None:
    """Through tensorstore's http kvstore (an HTTP server with strong ETags): streamed in
    blocks; a server that ignores Range (the probe fails) is read whole, as before (a guard:
    that case passes on the code before streaming)."""
    (tmp_path / "mesh").mkdir()
    data = _random(10 * 2**20 + 7, 9)
    (tmp_path / "mesh" / "big.shard").write_bytes(data)
    server = FileStore(tmp_path, ranges=ranges)
    try:
        reply = LayerFiles().read(server.url, "mesh/big.shard", range_header=None, gzip_ok=False,
                                  head=False)
        assert reply is not None and reply.status == 200 and "ETag" in reply.headers
        if ranges:
            assert not isinstance(reply.body, bytes)
            blocks = list(reply.body)
            assert max(map(len, blocks)) <= _block() and b"".join(blocks) == data
        else:
            assert reply.body == data and reply.headers["Content-Length"] == str(len(data))
    finally:
        server.stop()
