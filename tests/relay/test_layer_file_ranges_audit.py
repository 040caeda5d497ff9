"""Suffix and open-ended ranges of a large remote shard file, a store that ignores Range, and
build_app's channel checks (relay/layer_files.py, relay/app.py).

- A suffix range (``bytes=-n``) of a remote file was served by reading the whole file in one
  request (its Content-Range needs the size, which the store does not tell); an open-ended one
  (``bytes=a-``) by reading all from ``a`` in one request.  A shard of hundreds of MiB was held
  whole in memory for a 100-byte range.  Now, for a ``*.shard`` file of
  ``REMOTE_STREAM_BYTES`` or more, the size is found by ranged reads of one byte and a read of
  the last bytes, all of one storage generation, and the rest of the range is streamed in
  bounded ranged reads.
- A store that ignores Range (an HTTP server that answers every GET with the whole file, 200)
  was sent the size probe of a large shard asked for whole, which transferred the whole file
  (tensorstore drops it and fails), and then the whole read: twice per request, and three
  times with ``If-None-Match: *`` (its two-byte probe too).  tensorstore does not hand over the
  answer it dropped, so the first request still costs two; the store is then known to ignore
  Range and later requests read it once.
- ``build_app(config)`` did not check the channels of a RelayConfig made in code as ``serve``
  does (``voxgate.view`` and tests build apps directly).

A relay served on a thread of this process over a layer on S3 (moto on 127.0.0.1), read through
a proxy that counts the bytes of each answer moto sends (tests/garbage_proxy.py), as in
test_layer_file_remote_stream_audit.py; the module's thresholds are made small so the files are
a few MiB.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voxgate.errors import InvalidRequestError
from voxgate.relay import layer_files
from voxgate.relay.app import build_app
from voxgate.relay.cache import UpstreamError
from voxgate.relay.config import ChannelConfig, RelayConfig, check_channels
from voxgate.relay.layer_files import LayerFiles

from ..static_http import FileStore
from .test_layer_file_remote_stream_audit import Layer, _random, _s3, proxied_layer

BIG = "mesh/big.shard"
STREAM = 2**20  # REMOTE_STREAM_BYTES here
BLOCK = 2**18  # _REMOTE_BLOCK here
TAIL = 2**14  # _TAIL here
SIZE = 3 * 2**20 + 12345  # (not a multiple of any of them)


@pytest.fixture
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layer_files, "REMOTE_STREAM_BYTES", STREAM)
    monkeypatch.setattr(layer_files, "_REMOTE_BLOCK", BLOCK)
    monkeypatch.setattr(layer_files, "_TAIL", TAIL, raising=False)


@pytest.fixture
def layer(s3_bucket: str, tmp_path: Path, small_thresholds: None,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Layer]:
    """A layer on S3 whose info names a mesh directory, served by a relay that reads it
    through a counting proxy, with ``BIG`` (SIZE random bytes) in it."""
    with proxied_layer(s3_bucket, tmp_path, monkeypatch) as found:
        found.put(BIG, _random(SIZE, 11))
        yield found


def _data() -> bytes:
    return _random(SIZE, 11)


# -- suffix ranges ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 100, TAIL - 1, TAIL + 1, 5 * BLOCK + 7],
                         ids=["1", "100", "under-tail", "over-tail", "blocks"])
def test_a_suffix_range_of_a_large_remote_shard_reads_about_its_bytes(
        layer: Layer, n: int) -> None:
    """Byte-exact, with ``Content-Range: bytes (size-n)-(size-1)/size`` and Content-Length;
    no answer from the store larger than a block, and all of them together far less than the
    file (the old relay read it whole, once, for any n)."""
    data = _data()
    whole_tag = layer.served.get(BIG, Range="bytes=0-9").headers["etag"]
    sizes = layer.sent(BIG)
    res = layer.served.get(BIG, Range=f"bytes=-{n}")
    assert res.status_code == 206, res.text
    assert res.content == data[-n:]
    assert res.headers["content-range"] == f"bytes {SIZE - n}-{SIZE - 1}/{SIZE}"
    assert res.headers["content-length"] == str(n)
    assert res.headers["etag"] == whole_tag  # (the stored bytes' tag, as every range's)
    assert max(sizes) <= BLOCK, sizes
    assert sum(sizes) < n + TAIL + BLOCK and sum(sizes) < SIZE // 2, (n, sizes)


def test_a_suffix_longer_than_the_file_is_the_whole_file(layer: Layer) -> None:
    data = _data()
    sizes = layer.sent(BIG)
    res = layer.served.get(BIG, Range=f"bytes=-{SIZE + 1000}")
    assert res.status_code == 206 and res.content == data
    assert res.headers["content-range"] == f"bytes 0-{SIZE - 1}/{SIZE}"
    assert max(sizes) <= BLOCK, sizes  # (streamed, not read whole)


# -- open-ended ranges -----------------------------------------------------------------------------
@pytest.mark.parametrize("start", [0, 1000, SIZE - BLOCK - 3, SIZE - 100, SIZE - 1])
def test_an_open_ended_range_of_a_large_remote_shard_is_streamed(
        layer: Layer, start: int) -> None:
    """Byte-exact from ``start`` to the end with a Content-Range naming the size, in answers of
    at most a block each, about once (the old relay read all of it in one request)."""
    data = _data()
    sizes = layer.sent(BIG)
    res = layer.served.get(BIG, Range=f"bytes={start}-")
    assert res.status_code == 206, res.text
    assert res.content == data[start:]
    assert res.headers["content-range"] == f"bytes {start}-{SIZE - 1}/{SIZE}"
    assert res.headers["content-length"] == str(SIZE - start)
    assert max(sizes) <= BLOCK, sizes
    assert sum(sizes) < SIZE - start + BLOCK + 64, sizes  # (each byte about once)


def test_an_open_ended_range_from_the_end_is_416_naming_the_size(layer: Layer) -> None:
    """RFC 9110: a 416 for a byte range says the size (``Content-Range: bytes */size``), which
    the old relay did not know (it said nothing)."""
    for start in (SIZE, SIZE + 5000):
        res = layer.served.get(BIG, Range=f"bytes={start}-")
        assert res.status_code == 416, res.text
        assert res.headers["content-range"] == f"bytes */{SIZE}"


def test_a_head_of_a_suffix_range_says_its_length_and_reads_little(layer: Layer) -> None:
    sizes = layer.sent(BIG)
    res = layer.served.get(BIG, "HEAD", Range="bytes=-100")
    assert res.status_code == 206 and res.content == b""
    assert res.headers["content-length"] == "100"
    assert res.headers["content-range"] == f"bytes {SIZE - 100}-{SIZE - 1}/{SIZE}"
    assert sum(sizes) < TAIL + 100, sizes


def test_a_small_shard_and_other_files_are_served_as_before(layer: Layer) -> None:
    """Under ``REMOTE_STREAM_BYTES``, or not a shard file: read in one request (a guard:
    passes on the old code too)."""
    small = _random(STREAM - 1, 12)
    layer.put("mesh/small.shard", small)
    layer.put("mesh/5", small)
    for name in ("mesh/small.shard", "mesh/5"):
        for rng, part in (("bytes=-100", small[-100:]), ("bytes=700-", small[700:])):
            res = layer.served.get(name, Range=rng)
            assert res.status_code == 206 and res.content == part, (name, rng)
            first = len(small) - len(part)
            assert res.headers["content-range"] == f"bytes {first}-{len(small) - 1}/{len(small)}"


def test_a_rewrite_during_a_suffix_stream_breaks_it_off(
        s3_bucket: str, small_thresholds: None) -> None:
    """In process: the reply's headers are made (the size found at one generation), then the
    object is rewritten at the same size before the body is read; the body raises rather than
    send the new version's bytes under the old one's Content-Range and ETag."""
    old = _random(SIZE, 13)
    _s3().put_object(Bucket=s3_bucket, Key=f"seg/{BIG}", Body=old)
    files = LayerFiles()
    reply = files.read(f"s3://{s3_bucket}/seg", BIG, range_header=f"bytes=-{3 * BLOCK}",
                       gzip_ok=False, head=False)
    assert reply is not None and reply.status == 206
    assert not isinstance(reply.body, bytes)  # (streamed: the stream checks each block)
    _s3().put_object(Bucket=s3_bucket, Key=f"seg/{BIG}", Body=bytes(255 - b for b in old))
    got = []
    with pytest.raises(UpstreamError, match="written while it was streamed"):
        for block in reply.body:
            got.append(block)
    assert old[SIZE - 3 * BLOCK:].startswith(b"".join(got))  # (never a byte of the new one)


# -- a store that ignores Range --------------------------------------------------------------------
def test_a_store_that_ignores_range_sends_a_large_shard_once_per_request(
        tmp_path: Path, small_thresholds: None) -> None:
    """The first whole GET learns that the store ignores Range (its size probe got the whole
    file); from then on a whole GET, and one with ``If-None-Match: *``, transfer the file once
    (the old relay: twice, and three times)."""
    (tmp_path / "mesh").mkdir()
    data = _random(STREAM + 12345, 14)
    (tmp_path / "mesh" / "big.shard").write_bytes(data)
    server = FileStore(tmp_path, ranges=False)
    files = LayerFiles()
    try:
        def get(**kw: Any) -> Any:
            reply = files.read(server.url, "mesh/big.shard", range_header=None, gzip_ok=False,
                               head=False, **kw)
            assert reply is not None
            return reply

        first = get()
        assert first.status == 200 and first.body == data and "ETag" in first.headers
        assert len(server.sent) <= 2  # (tensorstore drops the answer to the probe)
        for _ in range(2):
            server.sent.clear()
            again = get()
            assert again.status == 200 and again.body == data
            assert again.headers["ETag"] == first.headers["ETag"]
            assert server.sizes() == [len(data)], server.sent
        server.sent.clear()
        star = get(conditions=layer_files.Conditions(if_none_match="*"))
        assert star.status == 304 and star.headers["ETag"] == first.headers["ETag"]
        assert server.sizes() == [len(data)], server.sent
    finally:
        server.stop()


def test_a_store_that_serves_ranges_is_still_probed(
        s3_bucket: str, small_thresholds: None) -> None:
    """A failed read of another kind (here: the object absent, then present) marks nothing:
    the shard is streamed as before (a guard)."""
    files = LayerFiles()
    location = f"s3://{s3_bucket}/seg"
    assert files.read(location, BIG, range_header=None, gzip_ok=False, head=False) is None
    data = _random(SIZE, 15)
    _s3().put_object(Bucket=s3_bucket, Key=f"seg/{BIG}", Body=data)
    reply = files.read(location, BIG, range_header=None, gzip_ok=False, head=False)
    assert reply is not None and not isinstance(reply.body, bytes)
    assert b"".join(reply.body) == data


# -- build_app checks its channels -----------------------------------------------------------------
def _bad_channels() -> dict[str, tuple[dict[str, Any], str]]:
    from tests.test_leftovers_dec06b_audit import BAD_CHANNELS

    return BAD_CHANNELS


@pytest.mark.parametrize("case", sorted(_bad_channels()))
def test_build_app_refuses_a_bad_channel_as_serve_does(tmp_path: Path, case: str) -> None:
    """The same InvalidRequestError, word for word, that ``serve`` raises for the same
    configuration (serve checks with check_channels before anything starts)."""
    channel, said = _bad_channels()[case]
    args = {"collection": "lab", "experiment": "em", "channel": "seg", **channel}

    def config() -> RelayConfig:
        return RelayConfig(host="127.0.0.1", port=0, state_path=tmp_path / "state.json",
                           channels=[ChannelConfig(**args)])

    with pytest.raises(InvalidRequestError) as served:
        check_channels(config())
    app = None
    try:
        with pytest.raises(InvalidRequestError) as built:
            app = build_app(config())
    finally:
        if app is not None:  # (the old build_app made one: its cache is closed)
            app.state.relay.cache.close()
    assert str(built.value) == str(served.value)
    assert re.search(said, str(built.value)), str(built.value)
