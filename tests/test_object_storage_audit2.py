"""Object storage, second audit: chunk presence of unsharded precomputed scales by listing
(not one lookup per chunk), and a missing S3 bucket named when a volume is opened.

S3 is a moto server on 127.0.0.1, seen through a small proxy that counts the requests it
forwards.  (gs:// is not here: tensorstore's GCS driver lists a missing bucket as an empty one,
so voxgate cannot tell a missing bucket from a missing volume there.)
"""

from __future__ import annotations

import http.client
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
import numpy as np
import pytest

import voxgate
from voxgate.geometry import Box, Vec
from voxgate.remotes.precomputed import chunks as precomputed_chunks


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # (5: tensorstore's many connections at once wait for SYN retries)
    daemon_threads = True


class CountingProxy:
    """Forwards HTTP requests to ``upstream`` and records (method, query) of each."""

    def __init__(self, upstream: str) -> None:
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        target = urlparse(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def _forward(self) -> None:
                proxy.requests.append((self.command, parse_qs(urlparse(self.path).query)))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length",
                                         "server", "date"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def lookups(self) -> int:
        """Requests for one object (HEAD, or GET that is not a listing)."""
        return sum(1 for m, q in self.requests if m in ("HEAD", "GET") and "list-type" not in q)

    def listings(self) -> list[str]:
        """The prefix of each listing request."""
        return [q.get("prefix", [""])[0] for m, q in self.requests
                if m == "GET" and "list-type" in q]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxied_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch
                   ) -> Iterator[tuple[str, CountingProxy]]:
    """A fresh bucket, with voxgate reaching the S3 server through a CountingProxy."""
    proxy = CountingProxy(s3_server)
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1", "VOXGATE_S3_ENDPOINT": proxy.url
                       }.items():
        monkeypatch.setenv(key, value)
    name = f"vg-{uuid.uuid4().hex[:12]}"
    _s3(s3_server).create_bucket(Bucket=name)
    yield name, proxy
    proxy.close()


def _s3(server: str) -> Any:
    return boto3.client("s3", endpoint_url=server, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


# -- chunk presence of an unsharded precomputed scale on S3 --------------------------------------
SHAPE, CHUNKS, OFFSET = (3, 10, 14), (1, 4, 4), (-3, -5, 2)  # ragged edges, negative corner


def _layer(bucket: str, server: str) -> tuple[str, list[str], Box]:
    """A raw layer of 3 x 3 x 4 chunks with 6 of them deleted; (url, keys deleted, bounds)."""
    url = f"precomputed://s3://{bucket}/deep/layer"
    vol = voxgate.create(url, shape=SHAPE, chunks=CHUNKS, dtype="uint8", voxel_size=(1, 1, 1),
                         offset=OFFSET, encoding="raw")
    vol[:] = 1
    s3 = _s3(server)
    keys = sorted(o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="deep/layer/1_1_1/") for o in page.get("Contents", []))
    assert len(keys) == 36
    gone = keys[::7]
    for key in gone:
        s3.delete_object(Bucket=bucket, Key=key)
    return url, gone, vol.meta.scale(0).bounds


def _grid_of(key: str) -> Vec:
    """The grid index of a chunk key ``.../x0-x1_y0-y1_z0-z1`` (coordinates may be negative)."""
    starts = []
    for part in key.rsplit("/", 1)[1].split("_"):
        starts.append(int(part[:part.index("-", 1)]))  # "-3-1": the dash after the first char
    x0, y0, z0 = starts
    return Vec((z0 - OFFSET[0]) // CHUNKS[0], (y0 - OFFSET[1]) // CHUNKS[1],
               (x0 - OFFSET[2]) // CHUNKS[2])


def _expected(gone: list[str], box: Box) -> list[Vec]:
    lo = [(a - o) // c for a, o, c in zip(box.start, OFFSET, CHUNKS, strict=True)]
    hi = [-(-(b - o) // c) for b, o, c in zip(box.stop, OFFSET, CHUNKS, strict=True)]
    return sorted(g for g in map(_grid_of, gone)
                  if all(a <= v < b for v, a, b in zip(g, lo, hi, strict=True)))


def test_absent_chunks_of_a_scale_are_listed_not_looked_up_one_by_one(
        proxied_bucket: tuple[str, CountingProxy], s3_server: str) -> None:
    bucket, proxy = proxied_bucket
    url, gone, bounds = _layer(bucket, s3_server)
    vol = voxgate.open(url)
    proxy.requests.clear()
    found = vol.missing_chunks()
    assert found == _expected(gone, bounds) and len(found) == 6
    # one listing of the scale's directory (36 keys: one page), no lookup per chunk (there
    # were 36 HEADs)
    assert proxy.lookups() == 0
    assert proxy.listings() == ["deep/layer/1_1_1/"]
    # missing="error" asks the same question before reading
    proxy.requests.clear()
    with pytest.raises(voxgate.errors.MissingChunkError):
        voxgate.open(url, missing="error").read()
    assert len(proxy.listings()) == 1
    # the chunks said absent are the ones that read as zeros
    data = vol.read()
    assert int(data.sum()) == np.prod(SHAPE) - sum(_cell(g, bounds).shape.prod() for g in found)


def _cell(g: Vec, bounds: Box) -> Box:
    start = Vec(*(o + i * c for o, i, c in zip(OFFSET, g, CHUNKS, strict=True)))
    return Box(start, start + Vec(*CHUNKS)).intersect(bounds)


def test_absent_chunks_by_prefix_listings_and_lookups_agree(
        proxied_bucket: tuple[str, CountingProxy], s3_server: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With pages of 4 keys, boxes of one x range (or one x and y range) of chunks list only
    those name prefixes, and a single chunk is looked up; every way gives the same chunks."""
    bucket, proxy = proxied_bucket
    url, gone, bounds = _layer(bucket, s3_server)
    monkeypatch.setattr(precomputed_chunks, "_LIST_PAGE_KEYS", 4)
    monkeypatch.setattr(precomputed_chunks, "_LIST_PAGE_COST", 1)
    vol = voxgate.open(url)
    s = bounds.start
    cases = [
        # (box, axis ranges in each listing's prefix, listings; no listings: one lookup)
        (bounds, 0, 1),
        (Box(s, Vec(s.z + 3, s.y + 10, s.x + 3)), 1, 1),  # one x range: its 9 chunks
        (Box(s + Vec(0, 8, 12), bounds.stop), 2, 1),  # the ragged corner column in z
        (Box(s + Vec(0, 5, 4), s + Vec(3, 6, 12)), 2, 2),  # two x ranges, one y range
        (Box(s + Vec(2, 9, 13), s + Vec(3, 10, 14)), 0, 0),  # one chunk at the far edge
    ]
    for box, depth, listings in cases:
        proxy.requests.clear()
        got = vol.missing_chunks(box)
        assert got == _expected(gone, box), box
        assert len(proxy.listings()) == listings, (box, proxy.requests)
        assert proxy.lookups() == (0 if listings else 1), (box, proxy.requests)
        for prefix in proxy.listings():
            head, _, tail = prefix.rpartition("/")
            assert head == "deep/layer/1_1_1" and tail.count("_") == depth, (box, prefix)
    # the chunks of the far x range looked up one by one agree with the listings
    monkeypatch.setattr(precomputed_chunks, "_LIST_PAGE_COST", 10**9)
    proxy.requests.clear()
    box = Box(s + Vec(0, 0, 12), bounds.stop)
    assert vol.missing_chunks(box) == _expected(gone, box)
    assert proxy.listings() == [] and proxy.lookups() == 9


# -- a missing bucket is named --------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["zarr", "n5", "precomputed"])
def test_opening_on_a_missing_s3_bucket_names_the_bucket(scheme: str, s3_bucket: str) -> None:
    missing = f"vg-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(voxgate.errors.RemoteNotFoundError) as err:
        voxgate.open(f"{scheme}://s3://{missing}/x")
    assert f"the bucket {missing!r} does not exist" in str(err.value)
    # an existing bucket without the volume still says the volume is missing
    with pytest.raises(voxgate.errors.RemoteNotFoundError) as err:
        voxgate.open(f"{scheme}://s3://{s3_bucket}/x")
    assert "bucket" not in str(err.value)
