"""Validators of the files the relay serves beside a precomputed layer (issue 15, item 3).

Meshes, skeletons and the other files beside a layer (relay/layer_files.py) carried
``Cache-Control: no-cache`` and no validator, so an HTTP cache in front of the relay fetched
every byte again on each read.  They now carry a strong ETag, the same for the whole file and
every range of one stored version, answer If-None-Match with 304 and If-Range with the whole
file when it names another version, and tell nginx to store them (``X-Accel-Expires: @1``).

A relay served on a thread of this process (its requests counted by status) over a layer
written by voxgate: sharded multi-resolution meshes and sharded skeletons on local disk, and
on S3 (moto on 127.0.0.1); Debian's nginx in front for the revalidation.  Local files modified
less than 2 s before a request get no ETag (``RACY_NS``), so the tests that need one move the
relay's clock 10 s on (``later``) rather than wait.

A remote file's ETag names its storage generation (``"vgf-<generation hex>-<variant>-<digest>"``),
so a revalidation is answered 304 after one conditional request to the store, with none of the
file's bytes read (it read the whole file, a shard perhaps gigabytes, just to answer 304): the
bytes moto sends are counted by a proxy between the relay and it (tests/garbage_proxy.py).
Replies with an ETag say ``Cache-Control: public, no-cache``, as cutouts.
"""

from __future__ import annotations

import gzip
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import voxgate
from tests.garbage_proxy import GarbageProxy
from voxgate.formats.mesh import write_meshes
from voxgate.formats.skeleton import write_skeletons
from voxgate.relay import layer_files
from voxgate.relay.app import build_app
from voxgate.relay.config import CacheConfig, ChannelConfig, RelayConfig
from voxgate.synthetic import synthetic_labels

from ..static_http import FileStore
from .conftest import free_port, serve_in_thread
from .test_http_cache import start_nginx

SHAPE = (16, 48, 48)
SHARD = "mesh/0.shard"
SKELETONS = "skeletons/0.shard"


def _layer(url: str) -> tuple[Any, list[int], dict[int, Any]]:
    """A segmentation at ``url`` with sharded multi-resolution meshes and sharded skeletons of
    4 segments (one shard each: shard_bits 0)."""
    labels = synthetic_labels(SHAPE, cell=(8, 16, 16), seed=3)
    ids = [int(i) for i in np.unique(labels) if i][:4]
    seg = voxgate.create(url, shape=SHAPE, chunks=SHAPE, dtype="uint64", voxel_size=(40, 8, 8),
                         kind="segmentation")
    seg[:] = labels
    meshes = voxgate.mesh(seg, ids=ids)
    write_meshes(seg.url, meshes, format="multires", lods=2, sharded=True)
    write_skeletons(seg.url, voxgate.skeletonize(seg, ids=ids, dust_threshold=0), sharded=True)
    return seg, ids, meshes


class Served:
    """The relay app on a thread of this process, counting the statuses of its file replies."""

    def __init__(self, upstream: str, tmp: Path) -> None:
        config = RelayConfig(upstream_timeout=30.0, state_path=tmp / "state.json",
                             upstream_meta_seconds=0,
                             cache=CacheConfig(memory_bytes=2**24),
                             channels=[ChannelConfig("c", "e", "seg", upstream)])
        self.port = free_port()
        config.port = self.port
        app = build_app(config)
        self.relay = app.state.relay
        self.statuses: Counter[int] = Counter()

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            async def sending(message: Any) -> None:
                if message["type"] == "http.response.start" and scope["path"].startswith(
                        "/precomputed/c/e/seg/") and not scope["path"].endswith("/seg/info"):
                    self.statuses[message["status"]] += 1
                await send(message)

            await app(scope, receive, sending)

        self.server, self.thread = serve_in_thread(counted, self.port)
        self.url = f"http://127.0.0.1:{self.port}/precomputed/c/e/seg"

    def get(self, name: str, method: str = "GET", base: str | None = None,
            **headers: str) -> httpx.Response:
        return httpx.request(method, f"{base or self.url}/{name}",
                             headers={k.replace("_", "-"): v for k, v in headers.items()},
                             timeout=60)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.relay.cache.close()


@dataclass
class Local:
    served: Served
    root: Path
    seg: Any
    ids: list[int]
    meshes: dict[int, Any]


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay's clock 10 s on: every file written is past its racily clean time (set even
    where the module has no such clock, so these tests fail on code without validators by
    what they check)."""
    monkeypatch.setattr(layer_files, "_now_ns", lambda: time.time_ns() + 10 * 10**9,
                        raising=False)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    root = tmp_path / "seg"
    seg, ids, meshes = _layer(f"precomputed://file://{root}")
    served = Served(f"precomputed://file://{root}", tmp_path)
    yield Local(served, root, seg, ids, meshes)
    served.stop()


def _strong(res: httpx.Response) -> str:
    assert res.status_code in (200, 206), (res.status_code, res.text)
    etag = res.headers.get("etag")
    assert etag is not None, f"no ETag: {dict(res.headers)}"
    assert etag.startswith('"') and etag.endswith('"'), etag  # strong: no W/ prefix
    return etag


# -- one stored version, one ETag -----------------------------------------------------------------
def test_the_whole_shard_and_its_ranges_share_one_strong_etag_and_a_match_is_304(
        local: Local, later: None) -> None:
    s = local.served
    stored = (local.root / SHARD).read_bytes()
    whole = s.get(SHARD)
    etag = _strong(whole)
    assert whole.content == stored
    assert whole.headers["cache-control"] == "public, no-cache"  # revalidated on every use
    assert whole.headers["x-accel-expires"] == "@1"      # nginx: stored, already expired
    for rng, part in (("bytes=0-99", stored[:100]), ("bytes=100-299", stored[100:300]),
                      ("bytes=-40", stored[-40:]), (f"bytes={len(stored) - 7}-",
                                                    stored[-7:])):
        res = s.get(SHARD, Range=rng)
        assert res.status_code == 206 and res.content == part, rng
        assert _strong(res) == etag, rng
    assert s.get(SHARD, "HEAD").headers["etag"] == etag
    assert s.get(SHARD, "HEAD", Range="bytes=0-9").headers["etag"] == etag
    # another file, another ETag
    assert _strong(s.get(SKELETONS)) not in (etag, None)
    assert _strong(s.get("mesh/info")) != etag

    for tag in (etag, f"W/{etag}", f'"vgf-other", {etag}', "*"):
        for method, rng in (("GET", None), ("GET", "bytes=0-99"), ("HEAD", None)):
            extra = {"Range": rng} if rng else {}
            res = s.get(SHARD, method, If_None_Match=tag, **extra)
            assert res.status_code == 304, (tag, method, rng, res.status_code)
            assert res.content == b"" and res.headers["etag"] == etag
    res = s.get(SHARD, If_None_Match='"vgf-other"')
    assert res.status_code == 200 and res.content == stored


def test_a_rewrite_changes_the_etag_and_if_range_with_the_old_one_sends_the_whole_new_file(
        local: Local, later: None) -> None:
    s = local.served
    old = _strong(s.get(SHARD))
    old_skeletons = _strong(s.get(SKELETONS))
    first = local.ids[0]
    write_meshes(local.seg.url, {first: local.meshes[first]}, format="multires", lods=1,
                 sharded=True)
    new_bytes = (local.root / SHARD).read_bytes()
    res = s.get(SHARD, If_None_Match=old)
    assert res.status_code == 200 and res.content == new_bytes
    new = _strong(res)
    assert new != old
    # If-Range with the old version: the Range is ignored, the whole new file sent
    res = s.get(SHARD, Range="bytes=0-99", If_Range=old)
    assert res.status_code == 200 and res.content == new_bytes and _strong(res) == new
    assert "content-range" not in res.headers
    # with the current one: the range
    res = s.get(SHARD, Range="bytes=0-99", If_Range=new)
    assert res.status_code == 206 and res.content == new_bytes[:100]
    # a date (there is no Last-Modified to match) or a weak tag (If-Range compares strongly)
    for other in ("Wed, 21 Oct 2015 07:28:00 GMT", f"W/{new}"):
        res = s.get(SHARD, Range="bytes=0-99", If_Range=other)
        assert res.status_code == 200 and res.content == new_bytes, other
    assert s.get(SHARD, If_None_Match=new).status_code == 304

    # a skeleton write replaces its shard too
    ids = local.ids[:2]
    write_skeletons(local.seg.url, voxgate.skeletonize(local.seg, ids=ids, dust_threshold=0),
                    sharded=True)
    res = s.get(SKELETONS, If_None_Match=old_skeletons)
    assert res.status_code == 200 and res.content == (local.root / SKELETONS).read_bytes()
    assert _strong(res) != old_skeletons


def test_a_compressed_file_decoded_and_as_stored_have_different_etags(
        local: Local, later: None) -> None:
    s = local.served
    text = b'{"sources": [], "owners": ["x"], "processing": [' + b'{"a": 1}, ' * 50 + b'{}]}'
    stored = gzip.compress(text, mtime=0)
    (local.root / "provenance.gz").write_bytes(stored)  # as CloudFiles stores it
    as_stored = s.get("provenance", Accept_Encoding="gzip")
    assert as_stored.headers["content-encoding"] == "gzip"
    assert as_stored.content == text  # (httpx decodes it)
    decoded = s.get("provenance", Accept_Encoding="identity")
    assert "content-encoding" not in decoded.headers and decoded.content == text
    gz, plain = _strong(as_stored), _strong(decoded)
    assert gz != plain
    # ranges are of the decoded bytes: the decoded representation's ETag
    res = s.get("provenance", Accept_Encoding="gzip", Range="bytes=0-9")
    assert res.status_code == 206 and res.content == text[:10] and _strong(res) == plain
    # a cache holding one representation is not told the other is the same
    assert s.get("provenance", Accept_Encoding="identity", If_None_Match=gz).status_code == 200
    assert s.get("provenance", Accept_Encoding="gzip", If_None_Match=plain).status_code == 200
    assert s.get("provenance", Accept_Encoding="gzip", If_None_Match=gz).status_code == 304


def test_a_same_size_rewrite_in_the_same_clock_tick_is_never_confirmed_by_a_304(
        local: Local, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file modified within 2 s of a request gets no ETag: a same-size write in place in
    the same tick as the last one (made here by restoring the modification time) leaves
    (inode, size, mtime) as they were, and an ETag from them would be confirmed for bytes no
    longer there."""
    s = local.served
    path = local.root / "mesh" / "fragment"  # (any file under mesh/ is served)
    path.write_bytes(b"A" * 1000)
    before = os.stat(path)
    first = s.get("mesh/fragment")
    assert first.status_code == 200 and first.content == b"A" * 1000
    with open(path, "r+b") as f:  # in place, the same size
        f.write(b"B" * 1000)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)
    old = first.headers.get("etag")
    res = s.get("mesh/fragment", **({"If_None_Match": old} if old else {}))
    assert res.status_code == 200 and res.content == b"B" * 1000
    if old is not None:  # (never, with the rule: but if one was sent, it must not hold)
        res = s.get("mesh/fragment", Range="bytes=0-9", If_Range=old)
        assert res.status_code == 200 and res.content == b"B" * 1000
    assert first.headers.get("x-accel-expires") is None  # nothing for nginx to revalidate
    # 2 s on, the file has its ETag
    monkeypatch.setattr(layer_files, "_now_ns", lambda: time.time_ns() + 10 * 10**9,
                        raising=False)
    etag = _strong(s.get("mesh/fragment"))
    assert s.get("mesh/fragment", If_None_Match=etag).status_code == 304


def test_a_rewrite_that_restores_the_modification_time_gets_another_etag(
        local: Local, later: None) -> None:
    """``cp -p`` or ``rsync -a`` onto a file of the same size sets its modification time back
    to the source's: the change time, which no program can set back, still moves, and the
    ETag with it (long after the racily clean window)."""
    s = local.served
    path = local.root / "mesh" / "fragment"
    path.write_bytes(b"A" * 1000)
    before = os.stat(path)
    old = _strong(s.get("mesh/fragment"))
    time.sleep(0.05)  # (past the coarse clock's tick, so the change time moves)
    with open(path, "r+b") as f:
        f.write(b"B" * 1000)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    res = s.get("mesh/fragment", If_None_Match=old)
    assert res.status_code == 200 and res.content == b"B" * 1000
    assert _strong(res) != old


def test_a_write_between_the_stat_and_the_read_is_not_labelled_with_the_old_etag(
        local: Local, later: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ETag comes from the stat of the open file; a write in place after it and before
    the bytes are read (here: made by a hook at that point, once) is seen by a second stat
    after the read, and the file read again: the bytes sent are those the ETag names."""
    s = local.served
    path = local.root / SHARD
    stored = path.read_bytes()
    old = _strong(s.get(SHARD))
    changed = bytes(255 - b for b in stored)
    read = layer_files._reply_from_file
    writes = []

    def write_first(*args: Any) -> Any:
        if not writes:
            st = os.stat(path)
            with open(path, "r+b") as f:  # in place: the open file the relay stat-ed
                f.write(changed)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
            writes.append(1)
        return read(*args)

    monkeypatch.setattr(layer_files, "_reply_from_file", write_first)
    res = s.get(SHARD)
    assert writes and res.status_code == 200 and res.content == changed
    etag = _strong(res)
    assert etag != old
    assert etag == _strong(s.get(SHARD))  # the ETag of the bytes it sent
    assert s.get(SHARD, If_None_Match=old).content == changed


# -- nginx in front -------------------------------------------------------------------------------
def test_nginx_revalidates_repeated_reads_with_304_and_gets_new_bytes_after_a_rewrite(
        local: Local, later: None, tmp_path: Path) -> None:
    s = local.served
    proxy = start_nginx(tmp_path / "nginx", [s.port])
    try:
        via = proxy.url + "/precomputed/c/e/seg"
        stored = (local.root / SHARD).read_bytes()
        cache_status = []
        for _ in range(4):
            res = s.get(SHARD, base=via)
            assert res.status_code == 200 and res.content == stored
            cache_status.append(res.headers["x-cache-status"])
        assert cache_status == ["MISS", "REVALIDATED", "REVALIDATED", "REVALIDATED"]
        assert s.statuses == {200: 1, 304: 3}  # the bytes went over once

        # a range through nginx: nginx asks the relay for the whole file (it drops Range and
        # If-Range when it caches), revalidated like the rest, and cuts the range itself
        res = s.get(SHARD, base=via, Range="bytes=100-199")
        assert res.status_code == 206 and res.content == stored[100:200]
        assert res.headers["x-cache-status"] == "REVALIDATED"
        assert s.statuses == {200: 1, 304: 4}

        first = local.ids[0]
        write_meshes(local.seg.url, {first: local.meshes[first]}, format="multires", lods=1,
                     sharded=True)
        new_bytes = (local.root / SHARD).read_bytes()
        assert new_bytes != stored
        res = s.get(SHARD, base=via)
        assert res.status_code == 200 and res.content == new_bytes
        assert res.headers["x-cache-status"] == "EXPIRED"  # revalidated, answered with 200
        res = s.get(SHARD, base=via, Range="bytes=0-99")
        assert res.status_code == 206 and res.content == new_bytes[:100]
        assert s.statuses == {200: 2, 304: 5}
    finally:
        proxy.stop()


# -- a layer on S3 --------------------------------------------------------------------------------
def test_files_of_a_layer_on_s3_carry_the_etag_of_their_storage_generation(
        s3_bucket: str, tmp_path: Path) -> None:
    url = f"precomputed://s3://{s3_bucket}/seg"
    seg, ids, meshes = _layer(url)
    s = Served(url, tmp_path)
    try:
        whole = s.get(SHARD)
        etag = _strong(whole)
        stored = whole.content
        for rng, part in (("bytes=0-99", stored[:100]), ("bytes=-40", stored[-40:]),
                          ("bytes=50-", stored[50:])):
            res = s.get(SHARD, Range=rng)
            assert res.status_code == 206 and res.content == part, rng
            assert _strong(res) == etag, rng
        assert s.get(SHARD, If_None_Match=etag).status_code == 304
        assert s.get(SHARD, Range="bytes=0-99", If_None_Match=etag).status_code == 304

        write_meshes(seg.url, {ids[0]: meshes[ids[0]]}, format="multires", lods=1,
                     sharded=True)
        res = s.get(SHARD, If_None_Match=etag)
        assert res.status_code == 200 and res.content != stored
        new = _strong(res)
        assert new != etag
        again = s.get(SHARD, Range="bytes=0-99", If_Range=etag)
        assert again.status_code == 200 and again.content == res.content
        again = s.get(SHARD, Range="bytes=0-99", If_Range=new)
        assert again.status_code == 206 and again.content == res.content[:100]

        # an object stored gzip (as CloudFiles stores it): as stored with Content-Encoding,
        # and decoded, are two representations with two ETags
        import boto3

        text = b'{"sources": [], "processing": [' + b'{"a": 1}, ' * 50 + b'{}]}'
        boto3.client("s3", endpoint_url=os.environ["VOXGATE_S3_ENDPOINT"],
                     region_name="us-east-1").put_object(
            Bucket=s3_bucket, Key="seg/provenance", Body=gzip.compress(text, mtime=0))
        as_stored = s.get("provenance", Accept_Encoding="gzip")
        decoded = s.get("provenance", Accept_Encoding="identity")
        assert as_stored.headers["content-encoding"] == "gzip"
        assert as_stored.content == decoded.content == text
        gz, plain = _strong(as_stored), _strong(decoded)
        assert gz != plain
        assert s.get("provenance", Accept_Encoding="identity",
                     If_None_Match=gz).status_code == 200
        assert s.get("provenance", Accept_Encoding="gzip", If_None_Match=gz).status_code == 304
    finally:
        s.stop()



# -- revalidating a file on S3 without reading it -------------------------------------------------
@dataclass
class OnS3:
    """A layer on S3 (moto), the relay reading it through a proxy that counts what moto sends."""

    served: Served
    seg: Any
    ids: list[int]
    meshes: dict[int, Any]
    bucket: str
    proxy: GarbageProxy

    def sent(self, key: str) -> list[tuple[int, int]]:
        """From now on, (status, body bytes) of each 2xx answer moto sends the relay for the
        object ``key`` of the layer (a 304 sends no body and is not listed)."""
        answers: list[tuple[int, int]] = []

        def count(status: int, headers: dict[str, str], body: bytes
                  ) -> tuple[int, dict[str, str], bytes]:
            answers.append((status, len(body)))
            return status, headers, body

        self.proxy.rule = (re.compile("/seg/" + re.escape(key) + r"(\?|$)"), count)
        return answers

    def put(self, key: str, body: bytes) -> None:
        import boto3

        boto3.client("s3", endpoint_url=os.environ["VOXGATE_S3_ENDPOINT"],
                     region_name="us-east-1").put_object(Bucket=self.bucket, Key=f"seg/{key}",
                                                         Body=body)

    def s3_etag(self, key: str) -> str:
        import boto3

        return str(boto3.client("s3", endpoint_url=os.environ["VOXGATE_S3_ENDPOINT"],
                                region_name="us-east-1").head_object(
            Bucket=self.bucket, Key=f"seg/{key}")["ETag"])


@pytest.fixture
def on_s3(s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OnS3]:
    url = f"precomputed://s3://{s3_bucket}/seg"
    seg, ids, meshes = _layer(url)
    proxy = GarbageProxy(os.environ["VOXGATE_S3_ENDPOINT"])
    with monkeypatch.context() as m:  # the relay's store goes through the proxy
        m.setenv("VOXGATE_S3_ENDPOINT", proxy.url)
        served = Served(url, tmp_path)
        assert served.get("mesh/info").status_code == 200  # (its stores are open)
    try:
        yield OnS3(served, seg, ids, meshes, s3_bucket, proxy)
    finally:
        served.stop()
        proxy.close()


def _no_body_read(answers: list[tuple[int, int]]) -> None:
    """No answer of the store carried more than the 2 bytes a revalidation may read."""
    assert all(size <= 2 for _, size in answers), answers


def test_a_revalidation_of_a_shard_on_s3_is_a_304_with_none_of_its_bytes_read(
        on_s3: OnS3) -> None:
    s = on_s3.served
    whole = s.get(SHARD)
    etag = _strong(whole)
    stored = whole.content
    assert whole.headers["cache-control"] == "public, no-cache"
    # the ETag names the object's storage generation (its S3 ETag)
    assert on_s3.s3_etag(SHARD).encode().hex() in etag

    answers = on_s3.sent(SHARD)
    for tag in (etag, f"W/{etag}", f'"vgf-other", {etag}'):
        for method, rng in (("GET", None), ("HEAD", None), ("GET", "bytes=0-99"),
                            ("GET", "bytes=-40"), ("HEAD", "bytes=100-")):
            extra = {"Range": rng} if rng else {}
            res = s.get(SHARD, method, If_None_Match=tag, **extra)
            assert res.status_code == 304, (tag, method, rng, res.status_code)
            assert res.content == b"" and res.headers["etag"] == etag
            assert res.headers["cache-control"] == "public, no-cache"
    _no_body_read(answers)
    assert s.statuses[304] == 15

    # the object changes: the old tag gets the new bytes (read once) and a new tag
    write_meshes(on_s3.seg.url, {on_s3.ids[0]: on_s3.meshes[on_s3.ids[0]]}, format="multires",
                 lods=1, sharded=True)
    answers = on_s3.sent(SHARD)
    res = s.get(SHARD, If_None_Match=etag)
    assert res.status_code == 200 and res.content != stored
    new = _strong(res)
    assert new != etag and on_s3.s3_etag(SHARD).encode().hex() in new
    assert [size for _, size in answers if size > 2] == [len(res.content)]
    answers = on_s3.sent(SHARD)
    res = s.get(SHARD, Range="bytes=0-99", If_None_Match=etag)
    assert res.status_code == 206 and res.content == (s.get(SHARD).content)[:100]
    answers = on_s3.sent(SHARD)
    assert s.get(SHARD, If_None_Match=new).status_code == 304
    assert s.get(SHARD, Range="bytes=0-99", If_None_Match=new).status_code == 304
    _no_body_read(answers)
    # files too short for the two bytes read: revalidated by the normal reply
    for body in (b"", b"x"):
        on_s3.put("mesh/tiny", body)
        res = s.get("mesh/tiny")
        assert res.status_code == 200 and res.content == body
        assert s.get("mesh/tiny", If_None_Match=_strong(res)).status_code == 304


def test_a_tampered_or_another_files_tag_is_not_honoured(on_s3: OnS3) -> None:
    s = on_s3.served
    etag = _strong(s.get(SHARD))
    m = re.fullmatch(r'"vgf-([0-9a-f]+)-(raw)-([0-9a-f]+)"', etag)
    assert m is not None, etag  # (its generation, representation and digest)
    generation, digest = m.group(1), m.group(3)
    assert bytes.fromhex(generation).endswith(on_s3.s3_etag(SHARD).encode())
    stored = s.get(SHARD).content
    flipped = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    other = bytes.fromhex(generation)[:-2] + b'0"'  # another generation of the same form
    made = layer_files._remote_digest  # (a tag made with the digest: anyone can)
    location = f"s3://{on_s3.bucket}/seg"
    for tag in (
        f'"vgf-{generation}-raw-{flipped}"',                        # digest altered
        f'"vgf-{other.hex()}-raw-{digest}"',                        # generation altered
        f'"vgf-{generation}-identity-{digest}"',                    # representation altered
        f'"vgf-{other.hex()}-raw-{made(location, SHARD, other.hex(), "raw")}"',  # not current
        f'"vgf-0561-raw-{made(location, SHARD, "0561", "raw")}"',   # no generation S3 makes
        f'"vgf-{generation}-raw-{made(location, SKELETONS, generation, "raw")}"',  # another file
    ):
        for rng in (None, "bytes=0-99"):
            extra = {"Range": rng} if rng else {}
            res = s.get(SHARD, If_None_Match=tag, **extra)
            assert res.status_code == (206 if rng else 200), (tag, rng, res.status_code)
            assert res.content == (stored[:100] if rng else stored), tag
            assert res.headers["etag"] == etag
    # the same bytes under another name: the same S3 ETag, another file, another tag
    on_s3.put("mesh/copy.shard", stored)
    res = s.get("mesh/copy.shard", If_None_Match=etag)
    assert res.status_code == 200 and res.content == stored
    copy = _strong(res)
    assert copy != etag and copy.split("-")[1] == etag.split("-")[1]  # (one generation)
    assert s.get("mesh/copy.shard", If_None_Match=copy).status_code == 304


def test_a_gzip_stored_object_is_revalidated_per_representation_without_reading_it(
        on_s3: OnS3) -> None:
    """As stored (gzip) and decoded are two representations: each tag is answered 304 for
    its own, unread, and 200 for the other; the tag of a range (of the stored bytes) is not
    the whole file's, which is decoded or sent with Content-Encoding."""
    s = on_s3.served
    text = b'{"sources": [], "processing": [' + b'{"a": 1}, ' * 50 + b'{}]}'
    on_s3.put("provenance", gzip.compress(text, mtime=0))
    gz = _strong(s.get("provenance", Accept_Encoding="gzip"))
    plain = _strong(s.get("provenance", Accept_Encoding="identity"))
    ranged = _strong(s.get("provenance", Range="bytes=0-9"))
    assert len({gz, plain, ranged}) == 3
    answers = on_s3.sent("provenance")
    assert s.get("provenance", Accept_Encoding="gzip", If_None_Match=gz).status_code == 304
    assert s.get("provenance", Accept_Encoding="identity",
                 If_None_Match=plain).status_code == 304
    assert s.get("provenance", Range="bytes=-5", If_None_Match=plain).status_code == 304
    assert s.get("provenance", Range="bytes=0-9", If_None_Match=ranged).status_code == 304
    _no_body_read(answers)
    for encoding, tag in (("gzip", plain), ("identity", gz), ("gzip", ranged),
                          ("identity", ranged)):
        res = s.get("provenance", Accept_Encoding=encoding, If_None_Match=tag)
        assert res.status_code == 200 and res.content == text, (encoding, tag)
        assert res.headers["etag"] == (gz if encoding == "gzip" else plain)


def test_files_with_an_etag_are_public_no_cache_as_cutouts(local: Local,
                                                           later: None) -> None:
    """A shared cache may store them for requests with an Authorization header too (each use
    is revalidated with the requester's own); a file with no ETag stays plain no-cache."""
    s = local.served
    for name in (SHARD, "mesh/info", SKELETONS):
        res = s.get(name)
        etag = _strong(res)
        assert res.headers["cache-control"] == "public, no-cache", name
        res = s.get(name, Range="bytes=0-9")
        assert res.status_code == 206 and res.headers["cache-control"] == "public, no-cache"
        res = s.get(name, If_None_Match=etag)
        assert res.status_code == 304 and res.headers["cache-control"] == "public, no-cache"
    layer_files._now_ns = time.time_ns  # (undone by ``later``'s monkeypatch)
    (local.root / "mesh" / "fresh").write_bytes(b"x" * 100)  # racily clean: no ETag
    res = s.get("mesh/fresh")
    assert res.status_code == 200 and "etag" not in res.headers
    assert res.headers["cache-control"] == "no-cache"


# -- a revalidation probe that fails leaves the decision to the normal reply ---------------------
@pytest.mark.parametrize(("ranges", "head"), [(False, True), (True, False)],
                         ids=["ignores-range", "refuses-head"])
def test_a_store_that_cannot_answer_the_probe_is_read_as_before_never_a_500(
        tmp_path: Path, ranges: bool, head: bool) -> None:
    """The cheap revalidation of a remote file asks the store a 2-byte range or a HEAD with
    If-None-Match; an HTTP upstream that ignores Range ("Requested byte range [0, 2) was
    ignored by server") or refuses HEAD (405) made it raise, and the relay answered 500 to
    every revalidation (behind nginx: every read after the first).  The normal reply decides
    then: 304 for a current tag (found by reading the file), the bytes for another."""
    root = tmp_path / "seg"
    _layer(f"precomputed://file://{root}")
    stored = (root / SHARD).read_bytes()
    upstream = FileStore(root, ranges=ranges, head=head)
    served = Served(f"precomputed://{upstream.url}", tmp_path)
    try:
        first = served.get(SHARD)
        tag = _strong(first)
        assert first.content == stored
        again = served.get(SHARD, If_None_Match=tag)
        assert again.status_code == 304 and again.headers["etag"] == tag, again.text
        assert served.get(SHARD, If_None_Match='"vgf-other"').content == stored
        if ranges:  # (a store that ignores Range cannot serve one: that is not this test)
            part = served.get(SHARD, Range="bytes=0-9")
            assert part.status_code == 206 and part.content == stored[:10]
            res = served.get(SHARD, Range="bytes=0-9", If_None_Match=_strong(part))
            assert res.status_code == 304, res.text
    finally:
        served.stop()
        upstream.stop()


# -- a large file is streamed under its own version's ETag only ------------------------------------
def _stream(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    """A reply of ``path`` (a file in a folder beside a layer) read through LayerFiles,
    streamed from 10 bytes on: its ETag and its body (blocks, read when iterated)."""
    monkeypatch.setattr(layer_files, "STREAM_BYTES", 10)
    reply = layer_files.LayerFiles().read(f"file://{path.parent.parent}",
                                          f"{path.parent.name}/{path.name}", range_header=None,
                                          gzip_ok=False, head=False)
    assert reply is not None and not isinstance(reply.body, bytes)
    return reply.headers["ETag"], reply.body


def test_a_write_before_the_stream_starts_breaks_it_off(
        tmp_path: Path, later: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ETag comes from the stat of the open file; a write in place after it and before the
    body is streamed was compared with a second stat taken after the write, so the new bytes
    went out under the old version's ETag.  Now the stream checks the ETag's own stat and
    breaks off."""
    path = tmp_path / "mesh" / "fragment"
    path.parent.mkdir()
    path.write_bytes(b"A" * 100)
    _, body = _stream(path, monkeypatch)
    etag_a = _stream(path, monkeypatch)[0]
    assert b"".join(body) == b"A" * 100
    build = layer_files._reply_from_file

    def write_first(f: Any, name: str, *args: Any) -> Any:
        with open(name, "r+b") as g:  # in place, the same size
            g.write(b"B" * 100)
        return build(f, name, *args)

    monkeypatch.setattr(layer_files, "_reply_from_file", write_first)
    etag, body = _stream(path, monkeypatch)
    assert etag == etag_a  # (the headers were made from the stat before the write)
    with pytest.raises(OSError, match="replaced after the reply's headers were made"):
        b"".join(body)


def test_a_write_during_the_stream_breaks_it_off(
        tmp_path: Path, later: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write in place while the blocks are sent is seen after the last one: the response
    breaks off (no cache keeps a body cut short) rather than end with a mix of two versions
    under one ETag."""
    path = tmp_path / "mesh" / "fragment"
    path.parent.mkdir()
    path.write_bytes(b"A" * 100)
    monkeypatch.setattr(layer_files, "_BLOCK", 40)
    _, body = _stream(path, monkeypatch)
    got = [next(body)]
    with open(path, "r+b") as g:
        g.write(b"B" * 100)
    os.utime(path, ns=(0, time.time_ns() + 5 * 10**9))  # (a later mtime, whatever the tick)
    with pytest.raises(OSError, match="written while it was streamed"):
        got.extend(body)
