"""``voxgate.downsample`` of a mostly-absent volume does not read, nor write, what is absent.

Before, downsample read every block of the scale a pass reads and wrote every chunk of the
scales it writes: on object storage a pyramid of a sparse segmentation or image cost one GET
answered 404 per absent chunk of every level read, and one PUT of the fill value per chunk of
every level written (dense output of a sparse input).  Now each pass asks the store which
chunks of the scale it reads are stored (:func:`voxgate.absence.background_groups`, asked of
that scale as the pass before left it) and which of the scales it writes are; a block touching
no stored chunk, where absent reads as 0 (every bit) and the mean or mode of zeros is 0, is not
read, and its levels are written only where the scale already stores a chunk (an earlier
pyramid's voxels, or a fill value other than 0: then its zeros, as before).  Results are the
same as reading everything, and equal brute-force numpy read back by an independent reader.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate import Box, Vec
from voxgate.errors import MissingChunkError

from .numpy_reference import downsample_scales

#: the module (voxgate.services names the function alike)
ds = importlib.import_module("voxgate.services.downsample")

#: the path of a chunk of a precomputed layer (x0-x1_y0-y1_z0-z1) or of a zarr array
#: (v3 "c/z/y/x", v2 "z.y.x")
CHUNK_PATH = re.compile(r"(/\d+-\d+_\d+-\d+_\d+-\d+|/c/\d+/\d+/\d+|/\d+\.\d+\.\d+)$")

OFFSET = (3, 5, 7)


def _read_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    """The old path: downsample is told nothing of where chunks are stored."""
    monkeypatch.setattr(ds, "background_groups", lambda *a, **k: None, raising=False)


def _logging_proxy(backend: str) -> tuple[Any, list[tuple[str, str]]]:
    """A GarbageProxy in front of ``backend`` that logs every request (method, path) it
    forwards, whatever the answer."""
    from tests.garbage_proxy import GarbageProxy

    proxy = GarbageProxy(backend)
    log: list[tuple[str, str]] = []
    handler = proxy.server.RequestHandlerClass
    forward = handler.do_GET

    def logged(self: Any) -> None:
        log.append((self.command, self.path))
        forward(self)

    for name in ("do_GET", "do_HEAD", "do_PUT", "do_POST", "do_DELETE"):
        setattr(handler, name, logged)
    return proxy, log


def _chunk_requests(log: list[tuple[str, str]], method: str) -> int:
    return sum(1 for m, path in log
               if m == method and CHUNK_PATH.search(path.split("?")[0]))


def _sparse_voxels(shape: tuple[int, int, int], dtype: str, kind: str,
                   boxes: list[tuple[tuple[int, int, int], tuple[int, int, int]]],
                   seed: int = 3) -> np.ndarray:
    """Zeros but inside ``boxes``: labels (a few, with some 0 voxels) or random image values."""
    rng = np.random.default_rng(seed)
    want = np.zeros(shape, dtype)
    for i, (a, b) in enumerate(boxes):
        sl = tuple(slice(x, y) for x, y in zip(a, b, strict=True))
        part = want[sl]
        if kind == "segmentation":
            part[...] = 10 + i
            part[rng.random(part.shape) < 0.3] = 2**40 + i if want.dtype.itemsize == 8 else 3
            part[rng.random(part.shape) < 0.1] = 0
        elif want.dtype.kind == "f":
            part[...] = rng.normal(0, 100, part.shape)
        else:
            part[...] = rng.integers(1, np.iinfo(want.dtype).max, part.shape, endpoint=True)
    return want


def _write_stored(vol: voxgate.Volume, want: np.ndarray,
                  boxes: list[tuple[tuple[int, int, int], tuple[int, int, int]]]) -> None:
    """Writes ``want`` where ``boxes`` lie, grown to whole chunks (the rest stays absent)."""
    sc = vol.scale_meta
    o = sc.bounds.start
    for a, b in boxes:
        box = Box(Vec(*a), Vec(*b)).translate(o)
        lo = Vec(*(s + (x - s) // c * c for x, s, c in zip(box.start, o, sc.chunks, strict=True)))
        hi = Vec(*(s + -(-(x - s) // c) * c for x, s, c in zip(box.stop, o, sc.chunks,
                                                                strict=True)))
        whole = Box(lo, hi).intersect(sc.bounds)
        vol.remote.write(whole, want[whole.slices(o)], 0)


# -- 1. requests on object storage ---------------------------------------------------------------

#: 10 x 5 x 5 = 250 chunks (every GET and PUT to moto costs: the old path's requests grow
#: with them, the new path's with the stored ones)
S3_SHAPE = (37, 37, 35)
S3_CHUNKS = (4, 8, 8)
#: objects across chunk and block borders, at the lower corner and at the far (partial) edges
S3_BOXES = [((0, 0, 0), (3, 5, 4)), ((6, 12, 14), (10, 20, 19)),
            ((34, 32, 30), (37, 37, 35)), ((35, 0, 31), (37, 7, 35))]
S3_FACTORS = [(1, 2, 2), (3, 3, 3), (2, 2, 2)]


def _s3_source(url: str) -> tuple[voxgate.Volume, np.ndarray]:
    vol = voxgate.create(url, shape=S3_SHAPE, dtype="uint64", chunks=S3_CHUNKS,
                         voxel_size=(8, 8, 8), offset=OFFSET, kind="segmentation")
    want = _sparse_voxels(S3_SHAPE, "uint64", "segmentation", S3_BOXES)
    _write_stored(vol, want, S3_BOXES)
    return vol, want


def _reader_levels(fmt: str, s3_bucket: str, name: str, cloudvolume: Any,
                   tmp_path: Path, n: int) -> list[np.ndarray]:
    """Every scale, read by CloudVolume (precomputed) or zarr-python (zarr, the bucket's
    objects copied to a directory first), in (z, y, x)."""
    if fmt == "precomputed":
        out = []
        for k in range(n):
            cv = cloudvolume(name, mip=k, fill_missing=True)
            out.append(np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0))
        return out
    import boto3
    import zarr

    s3 = boto3.client("s3", endpoint_url=os.environ["VOXGATE_S3_ENDPOINT"],
                      region_name="us-east-1")
    root = tmp_path / f"copy-{name}"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket,
                                                              Prefix=name + "/"):
        for item in page.get("Contents", []):
            dest = root / item["Key"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(s3_bucket, item["Key"], str(dest))
    group = zarr.open_group(str(root / name), mode="r")
    attrs = group.attrs.asdict()
    ms = attrs.get("ome", attrs)["multiscales"][0]
    return [np.asarray(group[d["path"]][...]) for d in ms["datasets"]]


@pytest.mark.parametrize("fmt", ["precomputed", "zarr"])
def test_a_sparse_pyramid_on_s3_reads_and_writes_what_is_stored(
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch, cloudvolume: Any, tmp_path: Path,
        fmt: str) -> None:
    """A 3-level pyramid ((1, 2, 2), 3, 2) of an odd, offset uint64 segmentation on S3 of
    10 x 5 x 5 = 250 chunks, a few stored, built in three passes (one per level: the blocks
    are kept small): the old path GETs every chunk of every level it reads and PUTs every chunk
    of every level it writes; now only the blocks holding stored chunks and their levels.
    Both read back (CloudVolume / zarr-python) as the brute-force numpy pyramid."""
    monkeypatch.setattr(ds, "BLOCK_BYTES", 4 * 32 * 32 * 8)  # (a pass per level)
    suffix = ".zarr" if fmt == "zarr" else ""
    sources = {tag: _s3_source(f"{fmt}://s3://{s3_bucket}/{tag}{suffix}")
               for tag in ("old", "new")}
    want = sources["new"][1]
    reference = downsample_scales(want, S3_FACTORS, "segmentation")
    stored0 = 250 - len(sources["new"][0].remote.absent_chunks(sources["new"][0].bounds, 0))
    proxy, log = _logging_proxy(os.environ["VOXGATE_S3_ENDPOINT"])
    figures: dict[str, dict[str, Any]] = {}
    try:
        real = os.environ["VOXGATE_S3_ENDPOINT"]
        monkeypatch.setenv("VOXGATE_S3_ENDPOINT", proxy.url)
        for tag in ("old", "new"):
            with monkeypatch.context() as m:
                if tag == "old":
                    _read_everything(m)
                vol = voxgate.open(f"{fmt}://s3://{s3_bucket}/{tag}{suffix}", mode="r+")
                del log[:]
                t0 = time.perf_counter()
                voxgate.downsample(vol, 4, factors=S3_FACTORS, block=(4, 16, 16))
                seconds = time.perf_counter() - t0
                figures[tag] = {"GET": _chunk_requests(log, "GET"),
                                "PUT": _chunk_requests(log, "PUT"),
                                "requests": len(log), "seconds": round(seconds, 2)}
                assert len(ds._passes(vol.remote, [Vec(*f) for f in S3_FACTORS], 8)) == 3
        monkeypatch.setenv("VOXGATE_S3_ENDPOINT", real)
        for tag in ("old", "new"):
            got = _reader_levels(fmt, s3_bucket, tag + suffix, cloudvolume, tmp_path, 4)
            np.testing.assert_array_equal(got[0], want, err_msg=tag)
            for k, ref in enumerate(reference, start=1):
                np.testing.assert_array_equal(got[k], ref, err_msg=f"{tag} scale {k}")
    finally:
        proxy.close()
    vol = voxgate.open(f"{fmt}://s3://{s3_bucket}/new{suffix}")
    chunks = [math_prod_chunks(vol, k) for k in range(4)]
    print(fmt, "chunks per scale", chunks, "stored at 0:", stored0, figures)
    # the old path: every chunk of scales 0, 1, 2 read, every chunk of scales 1, 2, 3 written
    assert figures["old"]["GET"] >= sum(chunks[:3]), figures
    assert figures["old"]["PUT"] >= sum(chunks[1:]), figures
    # now: the stored chunks (a block's worth each), the fill value's voxel once per scale
    assert figures["new"]["GET"] * 3 < figures["old"]["GET"], figures
    assert figures["new"]["PUT"] * 3 < figures["old"]["PUT"], figures
    for k in (1, 2):  # sparse output: the levels of absent blocks stay absent (scale 3: 1 block)
        assert vol.remote.absent_chunks(vol.at_scale(k).bounds, k), k


def math_prod_chunks(vol: voxgate.Volume, k: int) -> int:
    sc = vol.at_scale(k).scale_meta
    return int(np.prod([-(-n // c) for n, c in zip(sc.shape, sc.chunks, strict=True)]))


# -- 2. the same voxels on odd geometry ----------------------------------------------------------

ODD_SHAPE = (37, 45, 53)
ODD_CHUNKS = (4, 6, 5)
ODD_BOXES = [((0, 0, 0), (3, 4, 3)), ((6, 10, 8), (11, 14, 13)),
             ((17, 20, 30), (23, 29, 33)), ((33, 40, 50), (37, 45, 53)),
             ((35, 0, 51), (37, 3, 53))]


def _odd_source(tmp_path: Path, fmt: str, dtype: str, kind: str, tag: str
                ) -> tuple[voxgate.Volume, np.ndarray]:
    url = f"{fmt}://{tmp_path}/{tag}" + (".zarr" if fmt == "zarr" else "")
    vol = voxgate.create(url, shape=ODD_SHAPE, dtype=dtype, chunks=ODD_CHUNKS,
                         voxel_size=(8, 8, 8), offset=OFFSET, kind=kind)
    want = _sparse_voxels(ODD_SHAPE, dtype, kind, ODD_BOXES)
    _write_stored(vol, want, ODD_BOXES)
    assert len(vol.remote.absent_chunks(vol.bounds, 0)) > 0.9 * 10 * 8 * 11  # mostly absent
    return vol, want


def _levels(vol: voxgate.Volume) -> list[np.ndarray]:
    return [vol.at_scale(k).read() for k in range(len(vol.remote.meta.scales))]


def _absent_counts(vol: voxgate.Volume) -> list[int]:
    return [len(vol.remote.absent_chunks(vol.at_scale(k).bounds, k))
            for k in range(len(vol.remote.meta.scales))]


@pytest.mark.parametrize(("fmt", "dtype", "kind", "factors", "block_bytes"), [
    # one pass: its blocks (whole chunks of every level: 24 x 72 x 60) each hold stored
    # chunks, so every one is read and written
    ("precomputed", "uint64", "segmentation", [(1, 2, 2), (3, 3, 3), (2, 2, 2)], None),
    # one pass of blocks 8 x 24 x 40
    ("zarr", "uint64", "segmentation", [(1, 2, 2), (2, 2, 2), (1, 1, 2)], None),
    # several passes (a level left absent by one is read as 0 by the next)
    ("precomputed", "uint64", "segmentation", [(1, 2, 2), (3, 3, 3), (2, 2, 2)], 4096),
    ("zarr", "uint8", "segmentation", [(2, 2, 2), (1, 3, 3), (3, 1, 2)], 2048),
    ("precomputed", "uint16", "image", [(1, 2, 2), (2, 2, 2), (3, 3, 3)], 2048),
    ("zarr", "float32", "image", [(3, 3, 3), (1, 2, 2), (2, 2, 2)], 4096),
])
def test_the_pyramid_is_the_one_of_every_block_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, dtype: str, kind: str,
        factors: list[tuple[int, int, int]], block_bytes: int | None) -> None:
    """On the odd, offset, mostly-absent volume (stored chunks at the edges and across block
    borders), several levels in one pass or in several (small ``BLOCK_BYTES``: a level left
    absent is read as 0 by the next pass): the same voxels as with every block read, which
    are brute-force numpy's (read back by tensorstore or zarr-python); the levels of absent
    blocks are not written (the old path wrote every chunk of every level), but where one
    block holds the whole volume."""
    import tensorstore as ts

    if block_bytes is not None:
        monkeypatch.setattr(ds, "BLOCK_BYTES", block_bytes)
    new, want = _odd_source(tmp_path, fmt, dtype, kind, "new")
    old, _ = _odd_source(tmp_path, fmt, dtype, kind, "old")
    voxgate.downsample(new, 4, factors=factors, block=(8, 12, 10))
    with monkeypatch.context() as m:
        _read_everything(m)
        voxgate.downsample(old, 4, factors=factors, block=(8, 12, 10))
    passes = ds._passes(new.remote, [Vec(*f) for f in factors], np.dtype(dtype).itemsize)
    if block_bytes is not None:
        assert len(passes) >= 2, passes
    reference = downsample_scales(want, factors, kind)
    for k, (a, b) in enumerate(zip(_levels(new), _levels(old), strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"scale {k}")
        np.testing.assert_array_equal(a, want if k == 0 else reference[k - 1],
                                      err_msg=f"scale {k}")
    # an independent reader of the new pyramid
    for k, ref in enumerate(reference, start=1):
        if fmt == "precomputed":
            spec: dict[str, Any] = {"driver": "neuroglancer_precomputed",
                                    "kvstore": f"file://{tmp_path}/new", "scale_index": k}
            got = ts.open(spec, read=True).result().read().result()
            got = np.asarray(got)[..., 0].transpose(2, 1, 0)
        else:
            import zarr

            group = zarr.open_group(str(tmp_path / "new.zarr"), mode="r")
            attrs = group.attrs.asdict()
            ms = attrs.get("ome", attrs)["multiscales"][0]
            got = np.asarray(group[ms["datasets"][k]["path"]][...])
        np.testing.assert_array_equal(got, ref, err_msg=f"reader, scale {k}")
    new_absent, old_absent = _absent_counts(new), _absent_counts(old)
    print("absent chunks per scale", new_absent, "every block read:", old_absent)
    assert new_absent[0] == old_absent[0]
    assert old_absent[1:] == [0, 0, 0]  # (the old path: dense output)
    if len(passes) == 1 and ds._pass_grid(new.remote, 0, [Vec(*f) for f in factors]).z == 24:
        assert new_absent[1:] == [0, 0, 0]  # (the 2 blocks, both holding stored chunks)
    else:
        assert all(n > 0 for n in new_absent[1:3]), new_absent


@pytest.mark.parametrize("kind", ["image", "segmentation"])
def test_a_pyramid_on_the_grid_through_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            kind: str) -> None:
    """A WEBKNOSSOS layer (zarr3 chunks) at an offset off the factors' grid, whose pyramid
    lies on the grid through 0 (``pyramid_anchor`` "origin"): the blocks skipped are those of
    that grid (far fewer chunks read than with every block read), and the voxels are the
    brute-force ones on it (read back by tensorstore), and those of every block read.
    (tensorstore does not store a chunk of only the fill value here, so the old path's levels
    were sparse too.)"""
    import tensorstore as ts

    from voxgate.geometry import chunk_boxes
    from voxgate.remotes.webknossos import WebknossosRemote

    monkeypatch.setattr(ds, "BLOCK_BYTES", 2048)  # (several passes)
    # shards (every write holds one whole: the least block) of a few chunks, not 32 MiB
    monkeypatch.setattr(importlib.import_module("voxgate.remotes.webknossos"), "_SHARD_BYTES",
                        1024)
    reads = {"new": 0, "old": 0}
    counting: list[str] = []
    real = WebknossosRemote.read

    def read(remote: Any, box: Box, scale: int = 0) -> np.ndarray:
        sc = remote.meta.scale(scale)
        for tag in counting:
            reads[tag] += sum(1 for _ in chunk_boxes(box, sc.chunks, sc.bounds))
        return real(remote, box, scale)

    monkeypatch.setattr(WebknossosRemote, "read", read)
    # (chunk-aligned; at an offset off the chunk grid a chunk is partly stored:
    # tests/remotes/test_absent_partial_chunk_audit.py)
    offset = (4, 8, 12)
    factors = [(2, 2, 2), (1, 3, 3), (3, 2, 2)]
    dtype = "uint16" if kind == "image" else "uint32"
    levels = []
    for tag in ("new", "old"):
        vol = voxgate.create(f"webknossos://{tmp_path}/{tag}", layer="layer", shape=ODD_SHAPE,
                             dtype=dtype, chunks=(4, 4, 4), voxel_size=(8, 8, 8),
                             offset=offset, kind=kind)
        assert vol.remote.pyramid_anchor == "origin"
        want = _sparse_voxels(ODD_SHAPE, dtype, kind, ODD_BOXES)
        _write_stored(vol, want, ODD_BOXES)
        with monkeypatch.context() as m:
            if tag == "old":
                _read_everything(m)
            counting.append(tag)  # (the reads of the downsample only)
            voxgate.downsample(vol, 4, factors=factors, block=(4, 6, 5))
            counting.clear()
        vol = voxgate.open(f"webknossos://{tmp_path}/{tag}/layer")
        levels.append(_levels(vol))
        if tag == "new":
            absent = _absent_counts(vol)
    reference = downsample_scales(want, factors, kind, start=offset)
    for k, (a, b) in enumerate(zip(*levels, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"scale {k}")
        np.testing.assert_array_equal(a, want if k == 0 else reference[k - 1],
                                      err_msg=f"scale {k}")
    # tensorstore reads each mag's zarr3 array (c, x, y, z, from coordinate 0; its path from
    # datasource-properties.json) at the voxels the grid through 0 gives the level: from the
    # offset's floor by the factors so far
    props = json.loads((tmp_path / "new" / "datasource-properties.json").read_text())
    mags = props["dataLayers"][0]["mags"]
    at = offset
    for k, (ref, f) in enumerate(zip(reference, factors, strict=True), start=1):
        at = tuple(a // v for a, v in zip(at, f, strict=True))
        path = tmp_path / "new" / mags[k]["path"]
        arr = ts.open({"driver": "zarr3", "kvstore": f"file://{path.resolve()}"},
                      read=True).result()
        z, y, x = (slice(a, a + n) for a, n in zip(at, ref.shape, strict=True))
        got = np.asarray(arr[0, x, y, z].read().result()).transpose(2, 1, 0)
        np.testing.assert_array_equal(got, ref, err_msg=f"tensorstore, scale {k}")
    print("absent chunks per scale", absent, "chunks read", reads)
    assert absent[1] > 0 and absent[2] > 0, absent
    assert reads["new"] * 3 < reads["old"], reads


def test_a_cluster_skips_alike(cluster: Any, tmp_path: Path) -> None:
    """On a dask.distributed client's workers (the skip's groups go to them with the
    function): the brute-force pyramid, the levels of absent blocks left absent."""
    vol, want = _odd_source(tmp_path, "zarr", "uint64", "segmentation", "dask")
    factors = [(1, 2, 2), (2, 2, 2), (1, 1, 2)]
    voxgate.downsample(vol, 4, factors=factors, block=(8, 12, 10), client=cluster)
    vol = voxgate.open(vol.url)
    for k, ref in enumerate(downsample_scales(want, factors, "segmentation"), start=1):
        np.testing.assert_array_equal(vol.at_scale(k).read(), ref, err_msg=f"scale {k}")
    assert all(n > 0 for n in _absent_counts(vol)[1:]), _absent_counts(vol)


# -- 3. where the destination holds voxels, or reads other than 0 -------------------------------

@pytest.mark.parametrize("fmt", ["precomputed", "zarr"])
def test_an_existing_pyramid_is_overwritten_where_the_input_is_absent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """A sparse pyramid built once, then other voxels (99) written into every other chunk of
    its coarser scales that the first run left absent (the levels of absent blocks), and
    into every chunk of scale 3: a second downsample writes the zeros of the absent blocks
    where those chunks are now stored, so no 99 is left, and leaves absent the rest."""
    monkeypatch.setattr(ds, "BLOCK_BYTES", 4096)  # (several passes)
    vol, want = _odd_source(tmp_path, fmt, "uint64", "segmentation", "seg")
    factors = [(1, 2, 2), (3, 3, 3), (2, 2, 2)]
    voxgate.downsample(vol, 4, factors=factors, block=(8, 12, 10))
    stale = 0
    for k in (1, 2):
        sc = vol.at_scale(k).scale_meta
        for n, g in enumerate(vol.remote.absent_chunks(sc.bounds, k)):
            if n % 2 == 0:
                start = sc.bounds.start + Vec(*(i * c for i, c in zip(g, sc.chunks,
                                                                        strict=True)))
                box = Box(start, start + sc.chunks).intersect(sc.bounds)
                vol.remote.write(box, np.full(tuple(box.shape), 99, np.uint64), k)
                stale += 1
    s3 = vol.at_scale(3).bounds
    vol.remote.write(s3, np.full(tuple(s3.shape), 99, np.uint64), 3)
    assert stale > 10
    voxgate.downsample(vol, 4, factors=factors, block=(8, 12, 10))
    reference = downsample_scales(want, factors, "segmentation")
    for k, ref in enumerate(reference, start=1):
        np.testing.assert_array_equal(vol.at_scale(k).read(), ref, err_msg=f"scale {k}")
    assert vol.remote.absent_chunks(vol.at_scale(1).bounds, 1)  # (still sparse)


def _set_fill(path: Path, dataset: str, fill: int) -> None:
    """Rewrites the fill value of one dataset of a zarr v3 or v2 group written by voxgate."""
    for name in ("zarr.json", ".zarray"):
        doc = path / dataset / name
        if doc.exists():
            meta = json.loads(doc.read_text())
            meta["fill_value"] = fill
            doc.write_text(json.dumps(meta))
            return
    raise AssertionError(f"no array document in {path / dataset}")


def test_a_scale_whose_fill_is_not_zero_gets_its_zeros_written(tmp_path: Path) -> None:
    """An OME-Zarr pyramid whose scale 1 reads 5 where a chunk is absent (scale 0 reads 0):
    the levels of absent blocks are written at scale 1 (as zeros, as before), left absent at
    the scales that read 0."""
    import zarr

    vol, want = _odd_source(tmp_path, "zarr", "uint8", "segmentation", "f5")
    factors = [(2, 2, 2), (1, 3, 3)]
    voxgate.downsample(vol, 3, factors=factors, block=(8, 12, 10))
    group = zarr.open_group(str(tmp_path / "f5.zarr"), mode="r")
    attrs = group.attrs.asdict()
    paths = [d["path"] for d in attrs.get("ome", attrs)["multiscales"][0]["datasets"]]
    # every chunk of scale 1 removed, then its fill set to 5: it reads 5 everywhere
    for child in (tmp_path / "f5.zarr" / paths[1]).iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        elif child.name not in ("zarr.json", ".zarray", ".zattrs"):
            child.unlink()
    _set_fill(tmp_path / "f5.zarr", paths[1], 5)
    again = voxgate.open(f"zarr://{tmp_path}/f5.zarr", mode="r+")
    assert int(again.at_scale(1).read().min()) == 5
    voxgate.downsample(again, 3, factors=factors, block=(8, 12, 10))
    reference = downsample_scales(want, factors, "segmentation")
    for k, ref in enumerate(reference, start=1):
        np.testing.assert_array_equal(again.at_scale(k).read(), ref, err_msg=f"scale {k}")
    assert not again.remote.absent_chunks(again.at_scale(1).bounds, 1)  # (written whole)
    assert again.remote.absent_chunks(again.at_scale(2).bounds, 2)  # (reads 0: left absent)


def test_a_source_whose_fill_is_not_zero_is_read(tmp_path: Path) -> None:
    """A zarr image of fill value 7 at scale 0: every block is read (the absent chunks are
    7s, and so are their means) and the pyramid is brute force's."""
    vol, want = _odd_source(tmp_path, "zarr", "uint8", "image", "f7")
    import zarr

    group = zarr.open_group(str(tmp_path / "f7.zarr"), mode="r")
    attrs = group.attrs.asdict()
    path0 = attrs.get("ome", attrs)["multiscales"][0]["datasets"][0]["path"]
    _set_fill(tmp_path / "f7.zarr", path0, 7)
    vol = voxgate.open(f"zarr://{tmp_path}/f7.zarr", mode="r+")
    want = vol.read()
    assert (want == 7).mean() > 0.8
    factors = [(1, 2, 2), (3, 3, 3)]
    voxgate.downsample(vol, 3, factors=factors, block=(8, 12, 10))
    for k, ref in enumerate(downsample_scales(want, factors, "image"), start=1):
        np.testing.assert_array_equal(vol.at_scale(k).read(), ref, err_msg=f"scale {k}")


def test_missing_error_still_raises(tmp_path: Path) -> None:
    """A volume opened with missing='error' is read as before: its absent chunks raise."""
    vol, _ = _odd_source(tmp_path, "precomputed", "uint64", "segmentation", "strict")
    strict = voxgate.open(vol.url, mode="r+", missing="error")
    with pytest.raises(MissingChunkError):
        voxgate.downsample(strict, 3, block=(8, 12, 10))
