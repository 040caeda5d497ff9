"""Journeys on object storage: an S3 API server on 127.0.0.1 (moto), checked against numpy and
against the peer libraries reading the same bucket (tensorstore's s3 kvstore, CloudVolume
through a CloudFiles alias for the endpoint, intern through the relay)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest
import tensorstore as ts

import voxgate
import voxgate.transfer
from voxgate.errors import (
    AuthenticationError,
    CorruptChunkError,
    MissingChunkError,
    PartialWriteError,
)
from voxgate.geometry import Box
from voxgate.services.downsample import downsample_kernel

SHAPE, CHUNKS, OFFSET = (37, 70, 53), (16, 32, 32), (3, 5, 7)
#: (voxgate URL scheme, create options, tensorstore driver, dataset path under the volume)
LAYOUTS: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "zarr2": ("zarr", {"zarr_format": 2}, "zarr", "0"),
    "zarr3": ("zarr", {"zarr_format": 3}, "zarr3", "0"),
    "n5": ("n5", {}, "n5", "s0"),
    "precomputed-raw": ("precomputed", {"encoding": "raw"}, "neuroglancer_precomputed", ""),
    "precomputed-cseg": ("precomputed", {}, "neuroglancer_precomputed", ""),
    "precomputed-sharded": ("precomputed", {"sharded": True}, "neuroglancer_precomputed", ""),
}


def _labels(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 2**40, shape, dtype=np.uint64) * (rng.random(shape) < 0.9)


def _s3(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def _ts_read(bucket: str, path: str, endpoint: str, driver: str, dataset: str) -> np.ndarray:
    """The volume as tensorstore reads it straight from the bucket, C-order z, y, x."""
    spec: dict[str, Any] = {"driver": driver, "kvstore": {
        "driver": "s3", "bucket": bucket, "path": path + "/", "endpoint": endpoint,
        "aws_region": "us-east-1"}}
    if dataset:
        spec["path"] = dataset
    arr = np.asarray(ts.open(spec).result().read().result())
    if driver == "neuroglancer_precomputed":
        return arr[..., 0].T  # x, y, z, channel
    return arr.T if driver == "n5" else arr


# -- create and write odd shapes, read by the peers -----------------------------------------------
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_odd_volume_with_partial_writes(layout: str, s3_bucket: str, s3_server: str,
                                        cloudvolume: Any) -> None:
    scheme, options, driver, dataset = LAYOUTS[layout]
    url = f"{scheme}://s3://{s3_bucket}/vol"
    vol = voxgate.create(url, shape=SHAPE, chunks=CHUNKS, dtype="uint64", kind="segmentation",
                         voxel_size=(40, 8, 8), offset=OFFSET, **options)
    data = _labels()
    vol[:] = data
    # unaligned writes into chunks already stored, and into edge chunks
    vol[10:13, 40:45, 9:50] = 7
    data[10:13, 40:45, 9:50] = 7
    vol[30:37, 60:70, 1:2] = 2**64 - 1
    data[30:37, 60:70, 1:2] = 2**64 - 1
    again = voxgate.open(url)
    assert again.bounds == Box(OFFSET, tuple(o + s for o, s in zip(OFFSET, SHAPE, strict=True)))
    np.testing.assert_array_equal(again.read(), data)
    np.testing.assert_array_equal(again[5:20, 33:66, 31:34].read(), data[5:20, 33:66, 31:34])
    np.testing.assert_array_equal(_ts_read(s3_bucket, "vol", s3_server, driver, dataset), data)
    if scheme == "precomputed":
        cv = cloudvolume("vol")
        assert list(cv.bounds.minpt) == list(OFFSET[::-1])
        np.testing.assert_array_equal(cv[:, :, :][..., 0].T, data)


# -- copy: local <-> s3, a box, every scale, interrupted and resumed ------------------------------
def test_copy_to_s3_interrupted_resumed_and_back(tmp_path: Path, s3_bucket: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from voxgate.remotes.zarr import ZarrRemote

    src = voxgate.create(f"precomputed://{tmp_path}/src", shape=SHAPE, chunks=CHUNKS,
                         dtype="uint64", kind="segmentation", voxel_size=(40, 8, 8),
                         offset=OFFSET, num_scales=2)
    labels = _labels()
    src[:] = labels
    voxgate.downsample(src.url, 2)
    coarse = src.at_scale(1).read()
    dst = f"zarr://s3://{s3_bucket}/copy.zarr"
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)  # a block per chunk

    real_write, calls = ZarrRemote.write, []

    def failing_write(self: ZarrRemote, box: Box, array: np.ndarray, scale: int = 0) -> None:
        calls.append(box)
        if len(calls) > 5:
            raise RuntimeError("disk on fire")  # not transient: the copy stops
        real_write(self, box, array, scale)

    monkeypatch.setattr(ZarrRemote, "write", failing_write)
    with pytest.raises(PartialWriteError):
        voxgate.copy(src.url, dst, workers=1, progress=False)
    monkeypatch.setattr(ZarrRemote, "write", real_write)
    report = voxgate.copy(src.url, dst, workers=3, progress=False)
    assert report.resumed and report.blocks_skipped == 5
    assert report.blocks_skipped + report.blocks_written == report.blocks_total
    out = voxgate.open(dst)
    np.testing.assert_array_equal(out.read(), labels)
    np.testing.assert_array_equal(out.at_scale(1).read(), coarse)

    # and back: a box of both scales, into precomputed on disk, read by CloudVolume
    box = Box((10, 20, 15), (30, 60, 50))
    back = f"precomputed://{tmp_path}/back"
    voxgate.copy(dst, back, box=box, progress=False)
    expect = np.zeros_like(labels)
    inner = box.slices(OFFSET)
    expect[inner] = labels[inner]
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"file://{tmp_path}/back", progress=False, fill_missing=True)
    np.testing.assert_array_equal(cv[:, :, :][..., 0].T, expect)
    got1 = voxgate.open(back).at_scale(1).read()
    covered = got1 != 0
    assert covered.any()
    np.testing.assert_array_equal(got1[covered], coarse[covered])


# -- downsample in place on s3 -------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["precomputed-sharded", "zarr3", "n5"])
def test_downsample_in_place(layout: str, s3_bucket: str, cloudvolume: Any) -> None:
    scheme, options, _, _ = LAYOUTS[layout]
    url = f"{scheme}://s3://{s3_bucket}/ds"
    rng = np.random.default_rng(3)
    shape = (19, 36, 27)
    data = rng.integers(0, 4, shape).astype(np.uint64)
    vol = voxgate.create(url, shape=shape, chunks=(8, 8, 8), dtype="uint64",
                         kind="segmentation", voxel_size=(8, 8, 8), offset=OFFSET, **options)
    vol[:] = data
    # small blocks on several threads: coarse chunks are shared by blocks unless the planner
    # keeps every writer on whole chunks (or whole shards) of every scale
    voxgate.downsample(url, 3, block=(8, 8, 8), workers=4)
    expect = downsample_kernel(data, [(2, 2, 2), (2, 2, 2)], "segmentation")
    again = voxgate.open(url)
    for k in (1, 2):
        np.testing.assert_array_equal(again.at_scale(k).read(), expect[k - 1])
    if scheme == "precomputed":
        np.testing.assert_array_equal(cloudvolume("ds", mip=2)[:, :, :][..., 0].T, expect[1])


# -- meshes, skeletons and annotations in an s3 layer --------------------------------------------
@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_meshes_skeletons_annotations(sharded: bool, s3_bucket: str, cloudvolume: Any) -> None:
    from voxgate.formats.annotation import read_annotations, write_annotations
    from voxgate.formats.mesh import read_meshes, write_meshes
    from voxgate.formats.skeleton import Skeleton, read_skeletons, write_skeletons

    big = 2**40 + 3
    seg = np.zeros((24, 40, 40), np.uint64)
    seg[4:16, 5:30, 6:33] = 7
    seg[10:20, 20:35, 20:38] = big
    url = f"precomputed://s3://{s3_bucket}/seg"
    voxgate.create(url, shape=seg.shape, chunks=(8, 16, 16), dtype="uint64",
                   kind="segmentation", voxel_size=(40, 8, 8), offset=(1, 2, 3))[:] = seg
    meshes = dict(voxgate.mesh(url, ids=[7, big]))
    write_meshes(url, meshes, format="multires" if sharded else "legacy", sharded=sharded)
    back = read_meshes(url)
    assert sorted(back) == [7, big]
    cv = cloudvolume("seg")
    for seg_id in (7, big):
        ours = meshes[seg_id].vertices
        theirs = cv.mesh.get(seg_id)
        theirs = theirs[seg_id] if isinstance(theirs, dict) else theirs
        # multires fragments are cut per octree cell and quantized: same surface, new vertices
        for read in (back[seg_id].vertices, theirs.vertices):
            np.testing.assert_allclose(read.min(axis=0), ours.min(axis=0), atol=1)
            np.testing.assert_allclose(read.max(axis=0), ours.max(axis=0), atol=1)
        np.testing.assert_allclose(np.sort(theirs.vertices, axis=0),
                                   np.sort(back[seg_id].vertices, axis=0), atol=1e-3)

    skeletons = {
        7: Skeleton(np.array([[0, 0, 0], [80, 80, 400], [160, 80, 400]], np.float32),
                    np.array([[0, 1], [1, 2]], np.uint32), radius=np.ones(3, np.float32)),
        big: Skeleton(np.array([[8, 8, 40], [16, 16, 80]], np.float32),
                      np.array([[0, 1]], np.uint32)),
    }
    write_skeletons(url, skeletons, sharded=sharded)
    got = read_skeletons(url)
    cv = cloudvolume("seg")
    for seg_id, sk in skeletons.items():
        np.testing.assert_array_equal(got[seg_id].vertices, sk.vertices)
        theirs = cv.skeleton.get(seg_id)
        np.testing.assert_array_equal(theirs.vertices, sk.vertices)
        np.testing.assert_array_equal(theirs.edges, sk.edges)

    table = pd.DataFrame({"z": [1.5, 5.5, 9.5], "y": [2.5, 3.0, 30.0], "x": [4.0, 5.0, 6.0],
                          "score": np.float32([0.1, 0.2, 0.3]),
                          "pre_id": np.uint64([7, 0, big])})
    ann = f"precomputed://s3://{s3_bucket}/synapses"
    write_annotations(ann, table, voxel_size=(40, 8, 8), kind="point", sharded=sharded)
    every = read_annotations(ann)
    assert list(every["pre_id"]) == [7, 0, big]
    np.testing.assert_allclose(every[["z", "y", "x"]].to_numpy(),
                               table[["z", "y", "x"]].to_numpy())
    near = read_annotations(ann, box=voxgate.Box((0, 0, 0), (6, 6, 6)))
    assert sorted(near["id"]) == [1, 2]


# -- the relay in front of s3 upstreams ----------------------------------------------------------
def test_relay_over_s3_upstreams(tmp_path: Path, s3_bucket: str, s3_server: str) -> None:
    from cloudvolume import CloudVolume
    from intern.remote.boss import BossRemote

    from tests.relay.conftest import free_port, start_relay

    seg = _labels()
    img = np.random.default_rng(1).integers(0, 255, SHAPE, dtype=np.uint8)
    voxgate.create(f"precomputed://s3://{s3_bucket}/seg", shape=SHAPE, chunks=CHUNKS,
                   dtype="uint64", kind="segmentation", voxel_size=(40, 8, 8),
                   offset=OFFSET)[:] = seg
    voxgate.create(f"zarr://s3://{s3_bucket}/img.zarr", shape=SHAPE, chunks=CHUNKS,
                   dtype="uint8", voxel_size=(40, 8, 8), offset=OFFSET)[:] = img
    # a damaged upstream object, before anything could be cached
    s3 = _s3(s3_server)
    key = sorted(o["Key"] for o in s3.list_objects_v2(
        Bucket=s3_bucket, Prefix="img.zarr/0/c/")["Contents"])[-1]
    s3.put_object(Bucket=s3_bucket, Key=key, Body=b"not a chunk")
    config = tmp_path / "relay.toml"
    config.write_text(textwrap.dedent(f"""
        [[channel]]
        name = "lab/em/seg"
        upstream = "precomputed://s3://{s3_bucket}/seg"
        [[channel]]
        name = "lab/img/raw"
        upstream = "zarr://s3://{s3_bucket}/img.zarr"
    """))
    relay = start_relay(config, free_port())
    try:
        cv = CloudVolume(f"precomputed://{relay.url}/precomputed/lab/em/seg", progress=False)
        assert list(cv.bounds.minpt) == list(OFFSET[::-1])
        np.testing.assert_array_equal(cv[:, :, :][..., 0].T, seg)
        rmt = BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": "x"})
        x, y, z = ([o, o + s] for o, s in zip(OFFSET[::-1], SHAPE[::-1], strict=True))
        cut = rmt.get_cutout(rmt.get_channel("seg", "lab", "em"), 0, x, y, z)
        np.testing.assert_array_equal(cut, seg)
        # the damaged chunk is an error upstream, never zeros
        with relay.client() as http:
            first = http.get("/precomputed/lab/img/raw/info").json()["scales"][0]
            name = "_".join(f"{o}-{o + s}" for o, s in zip(first["voxel_offset"], first["size"],
                                                           strict=True))
            answer = http.get(f"/precomputed/lab/img/raw/{first['key']}/{name}")
        assert answer.status_code == 502
        assert key in answer.text
    finally:
        relay.stop()


# -- error paths -----------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_damaged_and_missing_objects(layout: str, s3_bucket: str, s3_server: str) -> None:
    scheme, options, _, _ = LAYOUTS[layout]
    url = f"{scheme}://s3://{s3_bucket}/vol"
    vol = voxgate.create(url, shape=(20, 40, 40), chunks=(10, 20, 20), dtype="uint64",
                         kind="segmentation", voxel_size=(1, 1, 1), **options)
    data = _labels((20, 40, 40), seed=5)
    vol[:] = data
    s3 = _s3(s3_server)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="vol/")["Contents"]]
    markers = ("info", ".json", ".zarray", ".zattrs", ".zgroup")
    key = sorted(k for k in keys if not k.endswith(markers))[0]
    body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    for damaged in (b"not a chunk at all", body[: len(body) // 2]):
        s3.put_object(Bucket=s3_bucket, Key=key, Body=damaged)
        with pytest.raises(CorruptChunkError, match=key.rsplit("/", 1)[-1]):
            voxgate.open(url).read()
    s3.delete_object(Bucket=s3_bucket, Key=key)
    with pytest.raises(MissingChunkError, match="absent"):
        voxgate.open(url, missing="error").read()
    absent = voxgate.open(url).read()  # absent reads as 0, the rest as stored
    changed = absent != data
    assert changed.any() and not absent[changed].any()
    s3.put_object(Bucket=s3_bucket, Key=key, Body=body)
    np.testing.assert_array_equal(voxgate.open(url).read(), data)


_MISSING_BUCKET_CHILD = textwrap.dedent("""
    import json, os, sys
    import voxgate
    out = {}
    for scheme, options in json.loads(sys.argv[1]):
        url = f"{scheme}://s3://vg-no-such-bucket/vol"
        if scheme == "tensorstore":  # a spec whose kvstore names the bucket (and endpoint)
            kv = {"driver": "s3", "bucket": "vg-no-such-bucket", "path": "vol/",
                  "endpoint": os.environ["VOXGATE_S3_ENDPOINT"]}
            url = "tensorstore://" + json.dumps({"driver": "zarr3", "kvstore": kv})
        try:
            voxgate.create(url, shape=(8, 8, 8), chunks=(8, 8, 8), dtype="uint8",
                           voxel_size=(1, 1, 1), **options)
            out[url + repr(options)] = ["created", ""]
        except Exception as exc:
            out[url + repr(options)] = [type(exc).__name__, str(exc)]
    print(json.dumps(out), flush=True)
""")


def test_create_in_a_missing_bucket_says_so(s3_bucket: str, tmp_path: Path) -> None:
    """Creating in a bucket that does not exist is a RemoteNotFoundError naming the bucket
    (tensorstore's conditional metadata write used to retry the 404 forever: zarr, N5 and
    tensorstore:// spec creates hung).  In a child process, so a hang fails the test instead
    of stalling it."""
    script = tmp_path / "child.py"
    script.write_text(_MISSING_BUCKET_CHILD)
    cases = [[s, o] for s, o, _, _ in LAYOUTS.values() if "sharded" not in o][:4]
    cases.append(["tensorstore", {}])
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(cases)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=os.environ.copy())
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("voxgate.create in a missing bucket did not return (retried forever)")
    results = json.loads(out.decode().strip().splitlines()[-1])
    assert len(results) == 5
    for where, (error, message) in results.items():
        assert error == "RemoteNotFoundError", (where, error, message)
        assert "bucket 'vg-no-such-bucket' does not exist" in message, message


@pytest.fixture(scope="module")
def auth_s3_server() -> Iterator[str]:
    """A second S3 API server (moto) that checks credentials after its first 3 requests."""
    from tests.conftest import start_moto

    proc, url = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    # the three requests it lets through: a bucket and a one-chunk precomputed layer
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                      aws_access_key_id="any", aws_secret_access_key="any")
    s3.create_bucket(Bucket="private")
    scale = {"key": "s0", "size": [4, 4, 4], "voxel_offset": [0, 0, 0],
             "chunk_sizes": [[4, 4, 4]], "resolution": [1, 1, 1], "encoding": "raw"}
    info = {"@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": "uint8",
            "num_channels": 1, "scales": [scale]}
    s3.put_object(Bucket="private", Key="img/info", Body=json.dumps(info).encode())
    s3.put_object(Bucket="private", Key="img/s0/0-4_0-4_0-4", Body=bytes(range(64)))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_bad_credentials_are_refused(auth_s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "wrong",
                       "AWS_DEFAULT_REGION": "us-east-1",
                       "VOXGATE_S3_ENDPOINT": auth_s3_server}.items():
        monkeypatch.setenv(key, value)
    for url in ("precomputed://s3://private/img", "zarr://s3://private/img"):
        with pytest.raises(AuthenticationError, match="access refused"):
            voxgate.open(url)
    with pytest.raises(AuthenticationError, match="access refused"):
        voxgate.create("zarr://s3://private/new.zarr", shape=(4, 4, 4), chunks=(4, 4, 4),
                       dtype="uint8", voxel_size=(1, 1, 1))
