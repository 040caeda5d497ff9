"""Concurrent writers of one skeleton directory on object storage keep each other's entries in
its CloudVolume spatial index.

Each ``.spatial`` file is read, changed and written back.  On object storage that was done
with no lock and no condition: a writer whose skeletons landed in a file between another
writer's read and write of it was lost from the index (CloudVolume's queries and listing no
longer found its skeletons).  Now the write is conditional on the generation read
(tensorstore's ``If-Match`` / ``If-None-Match`` on S3) and redone on a fresh read.  The
layer's info, where the mesh and skeleton writers name their directories (``update_info``),
had the same race, on local disks too.

The race is forced: the loser's write of the file is held back (at the JSON encoding or the
info check, between its read and its write) until the other writer is done (or, on a local
disk, waits for the lock).
"""
from __future__ import annotations

import gzip
import json
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import tensorstore as ts
from botocore.exceptions import ClientError

import voxgate
from voxgate.formats import precomputed_info
from voxgate.formats.skeleton import Skeleton, read_skeletons, spatial_index, write_skeletons
from voxgate.formats.skeleton.precomputed import delete_skeletons

SKEL_DIR = "skeletons_mip_0"
# the layer: x 28..220, y 40..360, z 120..760 nm; index chunks 64 x 160 x 320 nm: 3 x 2 x 2
CHUNK = [64, 160, 320]
FIRST = "28-92_40-200_120-440.spatial"  # chunk (0, 0, 0), as CloudVolume names it


def _skel(points: list[list[float]]) -> Skeleton:
    v = np.asarray(points, np.float32)
    e = np.array([[i, i + 1] for i in range(len(v) - 1)], np.uint32).reshape(-1, 2)
    return Skeleton(v, e, np.ones(len(v), np.float32), np.zeros(len(v), np.uint8))


# all three in chunk (0, 0, 0)
ONE = _skel([[40, 60, 200], [80, 150, 400]])
TWO = _skel([[30, 50, 130], [60, 90, 300]])
THREE = _skel([[50, 100, 250], [90, 190, 430]])


def _box(s: Skeleton) -> list[int]:
    v = np.asarray(s.vertices, np.float64)
    return [int(x) for x in (*np.floor(v.min(0)), *(np.floor(v.max(0)) + 1))]


def _s3(server: str) -> Any:
    return boto3.client("s3", endpoint_url=server, region_name="us-east-1")


def _layer(bucket: str, server: str, index_file: bool) -> str:
    """An S3 layer with skeleton 1 and a skeleton info with a spatial_index; with
    ``index_file``, the index file of chunk (0, 0, 0) is stored (gzipped without a
    Content-Encoding, as a copy of Igneous' output can be) listing skeleton 1."""
    url = f"precomputed://s3://{bucket}/seg"
    voxgate.create(url, shape=(16, 40, 48), chunks=(16, 32, 32), dtype="uint64",
                   voxel_size=(40, 8, 4), kind="segmentation", offset=(3, 5, 7))
    write_skeletons(url, {1: ONE}, skel_dir=SKEL_DIR)
    s3 = _s3(server)
    key = f"seg/{SKEL_DIR}/info"
    info = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    info.update({"mip": 0, "spatial_index": {"resolution": [4, 8, 40], "chunk_size": CHUNK}})
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(info).encode())
    if index_file:
        s3.put_object(Bucket=bucket, Key=f"seg/{SKEL_DIR}/{FIRST}",
                      Body=gzip.compress(json.dumps({"1": _box(ONE)}).encode()))
    return url


def _index(bucket: str, server: str, name: str = FIRST) -> dict[str, Any]:
    raw = _s3(server).get_object(Bucket=bucket, Key=f"seg/{SKEL_DIR}/{name}")["Body"].read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    doc: dict[str, Any] = json.loads(raw)
    return doc


def _between_read_and_write(monkeypatch: pytest.MonkeyPatch,
                            other: Callable[[], None]) -> list[int]:
    """Run ``other`` (another writer, to its end) the first time an index file is encoded
    for writing: after this writer read the file and before it writes it.  Returns the
    list of encodings (one per index file written, plus one per retry)."""
    real = json.dumps
    done: list[int] = []

    def dumps(obj: Any, **kwargs: Any) -> str:
        if not done:
            done.append(0)
            other()
        else:
            done.append(len(done))
        return real(obj, **kwargs)

    monkeypatch.setattr(spatial_index, "json", types.SimpleNamespace(
        loads=json.loads, dumps=dumps))
    return done


def test_the_s3_server_refuses_stale_conditional_puts(s3_bucket: str, s3_server: str) -> None:
    """The premise of the tests below: the S3 server (moto) refuses a PUT whose If-Match
    names an ETag that is no longer current, and one with If-None-Match: * over an object
    (S3's conditional writes, which tensorstore sends for ``if_equal``); tensorstore then
    reports the write as not done (no generation)."""
    s3 = _s3(s3_server)
    first = s3.put_object(Bucket=s3_bucket, Key="k", Body=b"1")["ETag"]
    s3.put_object(Bucket=s3_bucket, Key="k", Body=b"2")
    for condition in ({"IfMatch": first}, {"IfNoneMatch": "*"}):
        with pytest.raises(ClientError, match="PreconditionFailed"):
            s3.put_object(Bucket=s3_bucket, Key="k", Body=b"3", **condition)
    assert s3.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"2"
    kv = ts.KvStore.open({"driver": "s3", "bucket": s3_bucket, "endpoint": s3_server,
                          "aws_region": "us-east-1"}).result()
    absent = kv.read("new").result().stamp.generation
    read = kv.read("k").result().stamp.generation
    kv.write("k", b"4").result()
    assert kv.write("k", b"5", if_equal=read).result().generation == b""
    assert kv.write("k", b"6", if_equal=absent).result().generation == b""
    assert bytes(kv.read("k").result().value) == b"4"


@pytest.mark.parametrize("index_file", [False, True], ids=["new-file", "stored-file"])
def test_two_writers_of_one_index_file_on_s3_keep_both_entries(
        s3_bucket: str, s3_server: str, monkeypatch: pytest.MonkeyPatch,
        index_file: bool) -> None:
    """Writer A reads the index file of chunk (0, 0, 0) (absent, or stored gzipped), writer
    B enters skeleton 3 there, then A writes skeleton 2's entry: B's entry survives (it was
    gone: A wrote back what it had read plus its own), and A's write was redone once."""
    url = _layer(s3_bucket, s3_server, index_file)
    encodings = _between_read_and_write(
        monkeypatch, lambda: write_skeletons(url, {3: THREE}))
    write_skeletons(url, {2: TWO})
    expected = {"2": _box(TWO), "3": _box(THREE)}
    if index_file:
        expected["1"] = _box(ONE)
    assert _index(s3_bucket, s3_server) == expected
    assert len(encodings) == 3  # A's first try, B's write, A's second try
    assert read_skeletons(url).keys() == {1, 2, 3}


def test_a_delete_racing_a_write_on_s3_keeps_the_written_entry(
        s3_bucket: str, s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """delete_skeletons reads every index file to drop the deleted id; a writer entering
    skeleton 3 in a file between that read and the delete's write of it kept its entry only
    by luck (it was overwritten by the file as read, without 1)."""
    url = _layer(s3_bucket, s3_server, index_file=True)
    _between_read_and_write(monkeypatch, lambda: write_skeletons(url, {3: THREE}))
    delete_skeletons(url, [1])
    assert _index(s3_bucket, s3_server) == {"3": _box(THREE)}
    assert read_skeletons(url).keys() == {3}


# -- the layer's info: update_info of a mesh writer and a skeleton writer -------------------------
def _hold_info_write(monkeypatch: pytest.MonkeyPatch, other: Callable[[], None]) -> None:
    """Run ``other`` the first time update_layer_info checks the info it is about to write
    (after its read, before its write)."""
    real = precomputed_info.meta_from_info
    done: list[bool] = []

    def check(info: Any, where: str) -> Any:
        if not done:
            done.append(True)
            other()
        return real(info, where)

    monkeypatch.setattr(precomputed_info, "meta_from_info", check)


def test_two_info_updates_on_s3_keep_both_keys(
        s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_meshes names its directory in the layer's info while write_skeletons names its
    own: the info update read between the other's read and write is no longer lost."""
    url = f"precomputed://s3://{s3_bucket}/seg"
    voxgate.create(url, shape=(16, 16, 16), chunks=(8, 8, 8), dtype="uint64",
                   voxel_size=(1, 1, 1), kind="segmentation")
    location = f"s3://{s3_bucket}/seg"
    _hold_info_write(monkeypatch, lambda: precomputed_info.update_layer_info(
        location, {"skeletons": "skeletons"}))
    got = precomputed_info.update_layer_info(location, {"mesh": "mesh"})
    stored = precomputed_info.read_layer_info(location, "r")[1]
    assert stored["mesh"] == "mesh" and stored["skeletons"] == "skeletons"
    assert got == stored
    assert voxgate.open(url).meta.kind == "segmentation"


def test_two_info_updates_on_a_local_disk_keep_both_keys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a local disk the update holds the info's lock: the other writer, started between
    this one's read and write, waits for it (it is let go on once it is waiting for the lock,
    or, without a lock, once it is done) and then changes the info as written."""
    url = f"precomputed://{tmp_path}/seg"
    voxgate.create(url, shape=(16, 16, 16), chunks=(8, 8, 8), dtype="uint64",
                   voxel_size=(1, 1, 1), kind="segmentation")
    location = str(tmp_path / "seg")
    waiting = threading.Event()
    errors: list[BaseException] = []
    real_lock = getattr(precomputed_info, "file_lock", None)  # (the code before had none)

    def lock(path: str, **kwargs: Any) -> Any:
        assert real_lock is not None
        if threading.current_thread() is not threading.main_thread():
            waiting.set()  # (the other writer, about to wait for the lock)
        return real_lock(path, **kwargs)

    def other() -> None:
        try:
            precomputed_info.update_layer_info(location, {"skeletons": "skeletons"})
        except BaseException as exc:  # (asserted below)
            errors.append(exc)
        finally:
            waiting.set()

    thread = threading.Thread(target=other)

    def start_other() -> None:
        thread.start()
        assert waiting.wait(timeout=60)

    monkeypatch.setattr(precomputed_info, "file_lock", lock, raising=False)
    _hold_info_write(monkeypatch, start_other)
    precomputed_info.update_layer_info(location, {"mesh": "mesh"})
    thread.join(timeout=60)
    assert not thread.is_alive() and not errors
    stored = json.loads((tmp_path / "seg" / "info").read_text())
    assert stored["mesh"] == "mesh" and stored["skeletons"] == "skeletons"
