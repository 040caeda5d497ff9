"""Which chunks of a zarr or N5 array are absent, found by listing the chunk keys.

``absent_chunks`` of zarr v2/v3 and N5 asked tensorstore's storage statistics over halves of
the box, one question after another, each a few requests: on moto S3 a 512-chunk array with 4
chunks stored took 275 requests, and 32,768 chunks with 1% stored took 54,290 requests and
almost 10 minutes.  Now the chunk keys are listed (sharded zarr v3: the shards, then each
listed shard's index) and the absent chunks are the grid minus what is listed.

The answers are checked against the truth (the chunks that the writes touched) on odd shapes
and offsets, for zarr v2 (both separators), zarr v3 (both key encodings, transposed and extra
axes), sharded zarr v3 (index at the start and at the end) and N5, on local disk and on S3,
with files that are not chunks lying among the chunk keys.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec

import voxgate
from voxgate import Box, Vec
from voxgate.absence import absent_in
from voxgate.geometry import chunk_boxes

from ..test_copy_sparse_skip_audit import _counting_proxy

SHAPE = (13, 29, 31)
OFFSET = Vec(2, 3, 4)
CHUNKS = (3, 5, 7)
#: boxes written (relative to the volume's start), odd, some across chunk borders and edges
WRITES = [((0, 0, 0), (2, 4, 3)), ((5, 9, 13), (8, 16, 15)), ((12, 28, 30), (13, 29, 31)),
          ((4, 27, 0), (5, 29, 1))]


def _touched(boxes: list[Box], chunks: Vec, bounds: Box) -> set[Vec]:
    return {g for b in boxes for g, _ in chunk_boxes(b, chunks, bounds)}


def _check(vol: voxgate.Volume, written: list[Box]) -> None:
    """absent_chunks of the whole volume and of a few boxes equals the grid minus the chunks
    the writes touched."""
    remote = vol.remote
    sc = remote.meta.scale(0)
    b = sc.bounds
    stored = _touched(written, sc.chunks, b)
    boxes = [b, Box(b.start + Vec(4, 6, 8), b.start + Vec(9, 20, 22)),
             Box(b.stop - Vec(1, 1, 1), b.stop), Box(b.start, b.start + Vec(1, 1, 1))]
    for box in boxes:
        want = sorted(g for g, _ in chunk_boxes(box, sc.chunks, b) if g not in stored)
        assert remote.absent_chunks(box, 0) == want, box
    _, total = absent_in(remote, b, 0)
    assert total == len(list(chunk_boxes(b, sc.chunks, b))) - len(stored)


def _write_boxes(vol: voxgate.Volume) -> list[Box]:
    start = vol.remote.meta.scale(0).bounds.start
    out = []
    for i, (a, e) in enumerate(WRITES):
        box = Box(start + Vec(*a), start + Vec(*e))
        vol.remote.write(box, np.full(tuple(box.shape), 10 + i, vol.dtype), 0)
        out.append(box)
    return out


CREATED: dict[str, tuple[str, dict[str, Any]]] = {
    "zarr3": ("zarr://{d}/v.zarr", {}),
    "zarr2": ("zarr://{d}/v.zarr", {"zarr_format": 2}),
    "zarr3-sharded": ("zarr://{d}/v.zarr", {"shards": (6, 10, 14)}),
    "n5": ("n5://{d}/v.n5", {}),
}


def _strays(root: str, put: Callable[[str], None]) -> None:
    """Keys that are not chunks, among the chunk keys (a lookalike with a leading zero, a
    sign, a letter, too few or too many indices)."""
    for name in ["c/01/0/0", "c/0/0", "c/0/0/0/0", "c/x/0/0", "0/0/0/0", "00.0.0", "-1.0.0",
                 "0.0", "c/0/0/0.tmp", "1.1.a", ".zattrs.bak", "1/1/1/attributes.json"]:
        put(f"{root}/{name}")


@pytest.mark.parametrize("kind", sorted(CREATED))
def test_absent_chunks_equal_the_truth_on_local_disk(tmp_path: Path, kind: str) -> None:
    template, options = CREATED[kind]
    url = template.format(d=tmp_path)
    vol = voxgate.create(url, shape=SHAPE, dtype="uint16", chunks=CHUNKS, voxel_size=(1, 1, 1),
                         offset=OFFSET, **options)
    written = _write_boxes(vol)
    root = str(tmp_path / ("v.n5/s0" if kind == "n5" else "v.zarr/0"))

    def put(path: str) -> None:
        try:  # (those a chunk file's name or folder is in the way of are left out)
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                Path(path).write_bytes(b"not a chunk")
        except OSError:
            pass

    _strays(root, put)
    _check(voxgate.open(url), written)


@pytest.mark.parametrize("kind", sorted(CREATED))
def test_absent_chunks_equal_the_truth_on_s3(s3_bucket: str, s3_server: str,
                                             kind: str) -> None:
    import boto3

    template, options = CREATED[kind]
    url = template.format(d=f"s3://{s3_bucket}")
    vol = voxgate.create(url, shape=SHAPE, dtype="uint16", chunks=CHUNKS, voxel_size=(1, 1, 1),
                         offset=OFFSET, **options)
    written = _write_boxes(vol)
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    _strays("v.n5/s0" if kind == "n5" else "v.zarr/0",
            lambda key: s3.put_object(Bucket=s3_bucket, Key=key, Body=b"not a chunk"))
    _check(voxgate.open(url), written)


@pytest.mark.parametrize("layout", ["v2-dot", "v2-slash", "v3-v2-encoding", "v3-dot",
                                    "v3-xyz", "v3-tczyx", "v3-sharded-start"])
def test_arrays_written_by_zarr_python(tmp_path: Path, layout: str) -> None:
    """Key layouts voxgate does not write itself: zarr v2 with "." keys, zarr v3 with the v2
    key encoding or a "." separator, dimensions x, y, z (transposed), t, c, z, y, x (a time
    axis indexed away, two channels chunked one by one: a chunk counts as stored when either
    channel is), a shard index at the start."""
    path = tmp_path / "f.zarr"
    zyx = SHAPE
    names: list[str] | None = None
    kw: dict[str, Any] = {}
    if layout.startswith("v2"):
        kw = {"zarr_format": 2, "chunks": CHUNKS,
              "dimension_separator": "." if layout == "v2-dot" else "/"}
        shape: tuple[int, ...] = zyx
    else:
        kw = {"zarr_format": 3, "chunks": CHUNKS}
        if layout == "v3-v2-encoding":
            kw["chunk_key_encoding"] = {"name": "v2", "separator": "."}
        if layout == "v3-dot":
            kw["chunk_key_encoding"] = {"name": "default", "separator": "."}
        shape = zyx
        names = ["z", "y", "x"]
        if layout == "v3-xyz":
            shape, kw["chunks"], names = zyx[::-1], CHUNKS[::-1], ["x", "y", "z"]
        if layout == "v3-tczyx":
            shape, kw["chunks"], names = (1, 2, *zyx), (1, 1, *CHUNKS), ["t", "c", "z", "y", "x"]
        if layout == "v3-sharded-start":
            del kw["chunks"]
            kw["chunks"] = (6, 10, 14)
            kw["codecs"] = [ShardingCodec(chunk_shape=CHUNKS, codecs=[BytesCodec(), ZstdCodec()],
                                          index_location="start")]
        kw["dimension_names"] = names
    z = zarr.create(store=str(path), shape=shape, dtype="uint8", fill_value=0, **kw)
    written = []
    for i, (a, e) in enumerate(WRITES):
        sl = tuple(slice(x, y) for x, y in zip(a, e, strict=True))
        if layout == "v3-xyz":
            z[sl[::-1]] = 5 + i
        elif layout == "v3-tczyx":
            z[(0, i % 2, *sl)] = 5 + i  # one channel of each
        else:
            z[sl] = 5 + i
        written.append(Box(Vec(*a), Vec(*e)))
    vol = voxgate.open(str(path))
    assert tuple(vol.chunks) == CHUNKS
    if layout == "v3-tczyx":
        assert vol.remote.meta.num_channels == 2
    _check(vol, written)


# -- requests on S3 --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["zarr", "zarr2", "zarr3-sharded", "n5"])
def test_a_sparse_scan_on_s3_lists_once(s3_bucket: str, fmt: str) -> None:
    """512 chunks, 4 stored: the scan of the whole volume (voxgate.copy's and the Services')
    takes one listing (sharded: one, plus one index read per stored shard), where halving
    took 275 requests (zarr v3 and v2), 601 (N5), 143 (sharded)."""
    scheme = "n5" if fmt == "n5" else "zarr"
    options: dict[str, Any] = {"zarr2": {"zarr_format": 2},
                               "zarr3-sharded": {"shards": (16, 32, 32)}}.get(fmt, {})
    url = f"{scheme}://s3://{s3_bucket}/seg"
    vol = voxgate.create(url, shape=(64, 128, 128), dtype="uint64", chunks=(8, 16, 16),
                         voxel_size=(8, 8, 8), kind="segmentation", **options)
    corners = [(0, 0, 0), (24, 48, 80), (56, 112, 112), (40, 0, 112)]
    for z, y, x in corners:
        vol[z:z + 8, y:y + 16, x:x + 16] = np.full((8, 16, 16), 3, np.uint64)
    proxy, log = _counting_proxy(os.environ["VOXGATE_S3_ENDPOINT"])
    try:
        os.environ["VOXGATE_S3_ENDPOINT"] = proxy.url  # (s3_bucket's monkeypatch restores it)
        src = voxgate.open(url)
        del log[:]
        found, total = absent_in(src.remote, src.remote.meta.scale(0).bounds, 0)
        asked = list(log)
    finally:
        proxy.close()
    stored = {Vec(z // 8, y // 16, x // 16) for z, y, x in corners}
    grid = [Vec(*g) for g in itertools.product(range(8), range(8), range(8))]
    assert found == [g for g in grid if g not in stored] and total == 508
    assert len(asked) <= (1 + 4 if fmt == "zarr3-sharded" else 1), asked
