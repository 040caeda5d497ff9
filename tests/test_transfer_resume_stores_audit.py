"""voxgate.copy resumed into every kind of destination after a real kill -9 in the middle of a
block (half of it written, not recorded), and resumed after the destination was deleted and made
again with the journal of the interrupted copy left behind.  Destinations are compared with the
source's numpy arrays voxel for voxel through voxgate and through the store's own library
(zarr-python, tensorstore, CloudVolume, h5py, KNOSSOS cube files and DVID's raw endpoint read by
hand)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
import voxgate.transfer
from voxgate.errors import PartialWriteError

from .test_copy_audit import _FailingWrites

SHAPE = (32, 48, 64)
VOXEL = (40, 8, 8)  # scale 1 halves y and x only
#: the write the child is killed in: block 1, a chunk of fill, is not written into a destination
#: the copy created, so blocks 1..7 are finished and recorded and block 8 is half written (where
#: a block is a shard, the first holds more than fill: blocks 1..6, and 7 is half written)
FAIL_AT = 7

#: a precomputed sharding of 8 chunks (2 x 2 x 2) per shard, so the volume has several shards
SHARDING = {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 3, "hash": "identity",
            "minishard_bits": 0, "shard_bits": 3, "minishard_index_encoding": "gzip",
            "data_encoding": "gzip"}

_CHILD = """
import json, sys, threading
import voxgate, voxgate.transfer
from voxgate.registry import resolve_for_create

src, dst, fail_at, options = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
voxgate.transfer.BLOCK_BYTES = 1  # one block per chunk (or shard)
cls, _ = resolve_for_create(dst)
real = cls.write
calls = [0]

def write(self, box, array, scale=0):
    calls[0] += 1
    if calls[0] == fail_at:  # write the first half of the block, then wait for the kill
        half = box.start[0] + (box.stop[0] - box.start[0] + 1) // 2
        real(self, voxgate.Box(box.start, (half, *box.stop[1:])), array[: half - box.start[0]],
             scale)
        print("half", flush=True)
        threading.Event().wait()
    real(self, box, array, scale)

cls.write = write
voxgate.copy(src, dst, workers=1, progress=False, **options)
print("finished", flush=True)
"""


def _levels() -> list[np.ndarray]:
    data = np.random.default_rng(5).integers(1, 256, SHAPE, dtype=np.uint8)
    data[:8, :16, :16] = 0  # one chunk of fill
    return [data, data[:, ::2, ::2].copy()]


def _source(root: Path, name: str, levels: list[np.ndarray]) -> voxgate.Volume:
    vol = voxgate.create(f"zarr://{root}/{name}.zarr", shape=SHAPE, dtype="uint8",
                         chunks=(8, 16, 16), voxel_size=VOXEL, num_scales=2)
    vol[:] = levels[0]
    vol.at_scale(1)[:] = levels[1]
    return vol


def _tensorstore(spec: dict[str, Any]) -> np.ndarray:
    import tensorstore as ts

    return np.asarray(ts.open(spec, open=True, read=True).result().read().result())


def _zarr_multiscale(path: Path, k: int) -> np.ndarray:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    ms = group.attrs["ome"]["multiscales"] if "ome" in group.attrs else group.attrs["multiscales"]
    return np.asarray(zarr.open_array(str(path / ms[0]["datasets"][k]["path"]), mode="r")[:])


def _cloudvolume(path: Path, k: int) -> np.ndarray:
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"file://{path}", mip=k, progress=False, fill_missing=True)  # (fill chunk)
    return np.asarray(cv[:, :, :])[..., 0].T


def _h5(path: Path, k: int) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return np.asarray(f[f"v/s{k}"])


def _knossos(path: Path, k: int) -> np.ndarray:
    """A KNOSSOS mag assembled from its raw cube files by hand (x fastest in a cube)."""
    [conf] = path.glob("*.k.toml")
    cz, cy, cx = (int(v) for v in reversed(
        conf.read_text().split("CubeShape_px = [")[1].split("]")[0].split(",")))
    shape = (SHAPE[0], SHAPE[1] >> k, SHAPE[2] >> k)
    grid = [-(-n // c) for n, c in zip(shape, (cz, cy, cx), strict=True)]
    out = np.zeros([g * c for g, c in zip(grid, (cz, cy, cx), strict=True)], np.uint8)
    for f in (path / f"mag{2 ** k}").glob("x*/y*/z*/*.raw"):
        x, y, z = (int(p[1:]) for p in f.stem.split("_")[-3:])
        out[z * cz:(z + 1) * cz, y * cy:(y + 1) * cy, x * cx:(x + 1) * cx] = np.frombuffer(
            f.read_bytes(), np.uint8).reshape(cz, cy, cx)
    return out[: shape[0], : shape[1], : shape[2]]


def _dvid_raw(url: str, k: int) -> np.ndarray:
    """Scale 0 through DVID's own HTTP API (x fastest bytes), not through voxgate."""
    assert k == 0
    server, uuid, name = url.removeprefix("dvid://").rsplit("/", 2)
    nz, ny, nx = SHAPE
    with urllib.request.urlopen(
            f"{server}/api/node/{uuid}/{name}/raw/0_1_2/{nx}_{ny}_{nz}/0_0_0") as r:
        return np.frombuffer(r.read(), np.uint8).reshape(SHAPE)


#: destination kind: (URL, create options, reader by the store's own library, scales copied)
Dest = tuple[str, dict[str, Any], Callable[[int], np.ndarray], int]


def _destination(kind: str, root: Path, dvid_url: str | None) -> Dest:
    d = root / "dst"
    if kind == "zarr2":
        return f"zarr://{d}.zarr", {"zarr_format": 2}, \
            lambda k: _zarr_multiscale(Path(f"{d}.zarr"), k), 2
    if kind == "zarr3-sharded":
        return f"zarr://{d}.zarr", {"shards": [16, 32, 32]}, lambda k: _tensorstore(
            {"driver": "zarr3", "kvstore": f"file://{d}.zarr/{k}"}), 2
    if kind == "ome-zarr":
        return f"zarr://{d}.zarr", {}, lambda k: _zarr_multiscale(Path(f"{d}.zarr"), k), 2
    if kind == "precomputed-sharded":
        return f"precomputed://file://{d}", {"sharded": SHARDING}, \
            lambda k: _cloudvolume(d, k), 2
    if kind == "n5":
        return f"n5://{d}.n5", {}, lambda k: _tensorstore(
            {"driver": "n5", "kvstore": f"file://{d}.n5/s{k}"}).T, 2
    if kind == "hdf5":
        return f"hdf5://{d}.h5#/v", {}, lambda k: _h5(Path(f"{d}.h5"), k), 2
    if kind == "knossos":
        return f"knossos://{d}", {}, lambda k: _knossos(d, k), 2
    assert kind == "dvid" and dvid_url is not None
    return dvid_url, {}, lambda k: _dvid_raw(dvid_url, k), 1


def _journal() -> Path:
    [journal] = (Path(os.environ["VOXGATE_STATE_DIR"]) / "transfers").glob("*.journal")
    return journal


def _recorded() -> int:
    found = list((Path(os.environ["VOXGATE_STATE_DIR"]) / "transfers").glob("*.journal"))
    return len(voxgate.transfer._Journal.read_done(found[0])[0]) if found else -1


@pytest.mark.parametrize("kind", ["zarr2", "zarr3-sharded", "ome-zarr", "precomputed-sharded",
                                  "n5", "hdf5", "knossos", "dvid"])
def test_a_copy_killed_in_the_middle_of_a_block_resumes(
        tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 while a block (a chunk, or a whole shard of a sharded store) is half written:
    the rerun skips exactly the recorded blocks, writes the rest (the half-written one
    included) and the destination holds the source, as its own library reads it."""
    levels = _levels()
    src = _source(tmp_path, "src", levels)
    server = None
    dvid_url = None
    if kind == "dvid":
        from voxgate.remotes.dvid import DVIDRepo
        from voxgate.testing.dvid import start_server

        server = start_server(log=tmp_path / "dvid.log")
        dvid_url = DVIDRepo.create(server.url, alias="resume", description="audit").url("img")
    try:
        url, options, native, n_scales = _destination(kind, tmp_path, dvid_url)
        scales = list(range(n_scales))
        recorded = FAIL_AT - 1 if kind.endswith("sharded") else FAIL_AT
        script = tmp_path / "child.py"
        script.write_text(_CHILD)
        copy_options = {**options, "scales": scales}
        proc = subprocess.Popen([sys.executable, str(script), src.url, url, str(FAIL_AT),
                                 json.dumps(copy_options)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=os.environ.copy())
        assert proc.stdout is not None
        watchdog = threading.Timer(120, proc.kill)  # a hung child fails instead of hanging
        watchdog.start()
        try:
            line = proc.stdout.readline()
        finally:
            watchdog.cancel()
        if line != b"half\n":
            out, err = proc.communicate(timeout=60)
            pytest.fail(f"child did not stop mid-block: {line!r} {out!r} {err.decode()[-2000:]}")
        # the record of the block before is written by the copy's thread, maybe a moment after
        # the next block's write began: wait for it (and never for more)
        deadline = time.monotonic() + 60
        while _recorded() < recorded and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert _recorded() == recorded

        monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
        report = voxgate.copy(src.url, url, workers=2, progress=False, **copy_options)
        assert report.resumed and not report.created
        assert report.blocks_skipped == recorded
        assert report.blocks_skipped + report.blocks_written == report.blocks_total
        assert report.blocks_changed == 0
        assert f"resumed: {report.chunks_skipped} chunks already done" in str(report)
        assert not voxgate.transfer.list_journals()
        out = voxgate.open(url)
        for k in scales:
            np.testing.assert_array_equal(out.at_scale(k).read(), levels[k], err_msg=f"scale {k}")
            np.testing.assert_array_equal(native(k), levels[k], err_msg=f"native scale {k}")
    finally:
        if server is not None:
            server.stop()


def _zarr3(root: Path, name: str, k: int) -> np.ndarray:
    return _tensorstore({"driver": "zarr3", "kvstore": f"file://{root}/{name}.zarr/{k}"})


@pytest.mark.parametrize("chunks", [(8, 16, 16), (16, 16, 8)])
def test_a_destination_made_again_with_the_old_journal_left_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunks: tuple[int, int, int]) -> None:
    """An interrupted copy; the destination is deleted and made again by hand (same geometry,
    the same chunks or others giving as many blocks); the same copy run again must not skip
    the blocks its journal lists, which are no longer there (it did: they read as 0)."""
    from voxgate.remotes.zarr import ZarrRemote

    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
    levels = _levels()
    src = _source(tmp_path, "src", levels)
    dst = f"zarr://{tmp_path}/dst.zarr"
    _FailingWrites(monkeypatch, ZarrRemote, FAIL_AT)
    with pytest.raises(PartialWriteError):
        voxgate.copy(src, dst, workers=1, progress=False)
    assert _recorded() == FAIL_AT
    shutil.rmtree(tmp_path / "dst.zarr")
    voxgate.create(dst, shape=SHAPE, dtype="uint8", chunks=chunks, voxel_size=VOXEL,
                   num_scales=2)
    _FailingWrites(monkeypatch, ZarrRemote, 0)
    report = voxgate.copy(src, dst, workers=2, progress=False)
    for k in (0, 1):
        np.testing.assert_array_equal(_zarr3(tmp_path, "dst", k), levels[k], err_msg=f"{k}")
    if chunks == (8, 16, 16):  # the same grid: the journal's written blocks are found gone
        assert report.resumed
        assert report.blocks_changed == FAIL_AT - 1
        assert report.blocks_skipped == 1  # the block of fill, which a new store holds
        assert not voxgate.transfer.list_journals()
    else:  # another grid: another copy, which starts over (the old journal is not used)
        assert not report.resumed and report.blocks_skipped == 0
        [old] = voxgate.transfer.list_journals()
        assert old.blocks_done == FAIL_AT
    assert report.blocks_written + report.blocks_skipped == report.blocks_total


def test_a_destination_made_again_by_another_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted copy from A; the destination is deleted and another copy (from B)
    makes it again; the copy from A run again must copy every block of A (it kept the
    journal's blocks, now B's voxels: a mix of two sources)."""
    from voxgate.remotes.zarr import ZarrRemote

    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
    levels = _levels()
    a = _source(tmp_path, "a", levels)
    b = _source(tmp_path, "b", [255 - lv for lv in levels])
    dst = f"zarr://{tmp_path}/dst.zarr"
    _FailingWrites(monkeypatch, ZarrRemote, FAIL_AT)
    with pytest.raises(PartialWriteError):
        voxgate.copy(a, dst, workers=1, progress=False)
    shutil.rmtree(tmp_path / "dst.zarr")
    _FailingWrites(monkeypatch, ZarrRemote, 0)
    assert voxgate.copy(b, dst, workers=2, progress=False).created
    assert not voxgate.transfer.list_journals()  # a's journal went with the old destination
    report = voxgate.copy(a, dst, workers=2, progress=False)
    assert not report.resumed and report.blocks_skipped == 0
    for k in (0, 1):
        np.testing.assert_array_equal(_zarr3(tmp_path, "dst", k), levels[k], err_msg=f"{k}")


def test_the_journal_marks_fill_blocks_and_a_resume_keeps_them_absent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block of fill in a destination the copy created is recorded as fill and left absent;
    the resume's presence check does not count it as gone (nothing is written again)."""
    from voxgate.remotes.n5 import N5Remote

    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
    levels = _levels()
    src = _source(tmp_path, "src", levels)
    dst = f"n5://{tmp_path}/dst.n5"
    _FailingWrites(monkeypatch, N5Remote, FAIL_AT - 1)  # block 1 is fill: no write
    with pytest.raises(PartialWriteError):
        voxgate.copy(src, dst, scales=[0], workers=1, progress=False)
    lines = _journal().read_text().splitlines()
    assert lines[1:3] == ["created", "0 0 0 0 fill"]
    assert len(lines) == 2 + FAIL_AT - 1
    writes = _FailingWrites(monkeypatch, N5Remote, 0)
    report = voxgate.copy(src, dst, scales=[0], workers=2, progress=False)
    assert report.blocks_skipped == FAIL_AT - 1 and report.blocks_changed == 0
    assert writes.calls == report.blocks_written == report.blocks_total - (FAIL_AT - 1)
    assert voxgate.open(dst).missing_chunks() == [voxgate.Vec(0, 0, 0)]
    got = _tensorstore({"driver": "n5", "kvstore": f"file://{tmp_path}/dst.n5/s0"}).T
    np.testing.assert_array_equal(got, levels[0])
