"""A user's journey through ``voxgate serve`` with ``workers = 2`` over one HDF5 file holding a
uint8 image and a uint64 segmentation (two channels, one file, ``hold_open=False``).

Written through the bossDB dialect (the real ``intern`` client, and voxgate's ``bossdb://``),
read back through the precomputed dialect (CloudVolume, voxgate's ``precomputed://http``) and
the bossDB dialect, many times so both workers answer: every read sees the writes.  Then the
relay's bossDB downsample job, whose coarse level read through the precomputed dialect equals
``voxgate.downsample`` of the written data computed locally; the file, opened in h5py at the
end, holds exactly what was written and nothing else.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import pytest
from intern.remote.boss import BossRemote
from intern.resource.boss.resource import ChannelResource

import voxgate
from voxgate.geometry import Box

from .conftest import RW, RelayProcess, start_two_worker_relay

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="hold_open=False takes fcntl locks on Linux only")

SHAPE = (8, 64, 64)
CHUNKS = (4, 32, 32)
DTYPES = {"img": np.dtype(np.uint8), "seg": np.dtype(np.uint64)}
KINDS = {"img": "image", "seg": "segmentation"}
READS = 12  # reads per check, each on a fresh client (so on either worker)


def _initial(name: str) -> np.ndarray:
    rng = np.random.default_rng(1 if name == "img" else 2)
    if name == "img":
        return rng.integers(1, 250, SHAPE, dtype=np.uint8)
    return rng.integers(1, 5, SHAPE).astype(np.uint64) * np.uint64(2**40 + 7)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayProcess, Path]]:
    d = tmp_path_factory.mktemp("workers_hdf5_journey")
    h5 = d / "vols.h5"
    channels = {}
    for name, dtype in DTYPES.items():
        vol = voxgate.create(f"hdf5://{h5}#/{name}", shape=SHAPE, chunks=CHUNKS, dtype=dtype,
                             voxel_size=(40, 8, 8), kind=KINDS[name], num_scales=2)
        vol[...] = _initial(name)
        vol.remote.close()
        channels[f"c/e/{name}"] = f"hdf5://{h5}#/{name}"
    r = start_two_worker_relay(d, channels, public_read=True)
    yield r, h5
    r.stop()


def _intern(r: RelayProcess) -> BossRemote:
    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{r.port}", "token": RW})


def _cv(r: RelayProcess, name: str, mip: int) -> Any:
    from cloudvolume import CloudVolume

    return CloudVolume(f"precomputed://{r.url}/precomputed/c/e/{name}", mip=mip,
                       progress=False, fill_missing=False, bounded=True, cache=False)


def _cv_read(r: RelayProcess, name: str, mip: int) -> np.ndarray:
    cv = _cv(r, name, mip)
    got = np.asarray(cv[:, :, :])[..., 0]  # x, y, z
    return np.ascontiguousarray(got.transpose(2, 1, 0))


def _workers_answering(r: RelayProcess, name: str, mip: int, want: np.ndarray) -> set[str]:
    """Reads of the first precomputed chunk over fresh connections, each checked against
    ``want``, until both workers answered."""
    from cloudvolume import chunks

    cv = _cv(r, name, mip)
    cx, cy, cz = (min(int(c), int(s)) for c, s in zip(cv.chunk_size, cv.volume_size,
                                                       strict=True))
    key = f"/precomputed/c/e/{name}/{cv.key}/0-{cx}_0-{cy}_0-{cz}"
    seen: set[str] = set()
    for _ in range(400):
        with httpx.Client(base_url=r.url, timeout=60) as http:
            res = http.get(key, headers={"Accept-Encoding": "identity"})
        assert res.status_code == 200, res.text
        got = chunks.decode(res.content, cv.encoding, shape=(cx, cy, cz, 1), dtype=want.dtype,
                            block_size=cv.compressed_segmentation_block_size)
        got = np.asarray(got)[..., 0].transpose(2, 1, 0)
        np.testing.assert_array_equal(got, want[:cz, :cy, :cx])
        seen.add(res.headers["x-voxgate-worker"])
        if len(seen) == 2:
            return seen
    raise AssertionError(f"only worker(s) {sorted(seen)} answered")


def _every_client_reads(r: RelayProcess, name: str, want: np.ndarray) -> None:
    """CloudVolume, voxgate's precomputed://http and bossdb://, and intern: each READS times on
    fresh connections, all ``want``."""
    resource = ChannelResource(name, "c", "e", datatype=DTYPES[name].name)
    for i in range(READS):
        np.testing.assert_array_equal(_cv_read(r, name, 0), want, err_msg=f"CloudVolume #{i}")
        pre = voxgate.open(f"precomputed://{r.url}/precomputed/c/e/{name}")
        np.testing.assert_array_equal(pre.read(), want, err_msg=f"precomputed:// #{i}")
        boss = voxgate.open(f"bossdb://{r.url}/c/e/{name}", token=RW)
        np.testing.assert_array_equal(boss.read(), want, err_msg=f"bossdb:// #{i}")
        got = _intern(r).get_cutout(resource, 0, [0, SHAPE[2]], [0, SHAPE[1]], [0, SHAPE[0]])
        np.testing.assert_array_equal(got, want, err_msg=f"intern #{i}")
    _workers_answering(r, name, 0, want)


@pytest.mark.parametrize("name", ["img", "seg"])
def test_writes_through_bossdb_are_read_by_every_client_on_both_workers(
        served: tuple[RelayProcess, Path], name: str) -> None:
    r, h5 = served
    expected = _initial(name)
    _every_client_reads(r, name, expected)  # (both workers have read the file: cached)
    dtype = DTYPES[name]
    rng = np.random.default_rng(20 + len(name))
    resource = ChannelResource(name, "c", "e", datatype=dtype.name)
    for i in range(3):
        box = Box((i, 5 + 3 * i, 7), (i + 5, 40 + i, 61))  # across chunks
        patch = rng.integers(1, 200, tuple(box.shape)).astype(dtype)
        if name == "seg":
            patch *= np.uint64(2**33 + 1)  # (labels past 2**32)
        if i == 1:  # voxgate's own bossdb://
            vol = voxgate.open(f"bossdb://{r.url}/c/e/{name}", token=RW, mode="r+")
            vol.write(patch, box)
        else:
            _intern(r).create_cutout(resource, 0, [box.start.x, box.stop.x],
                                     [box.start.y, box.stop.y], [box.start.z, box.stop.z],
                                     patch)
        expected[box.slices()] = patch
        _every_client_reads(r, name, expected)  # read-your-writes across processes, dialects
    with h5py.File(h5, "r") as f:
        np.testing.assert_array_equal(f[name]["s0"][...], expected)


def _downsample(r: RelayProcess, name: str) -> None:
    with httpx.Client(base_url=r.url, headers={"Authorization": f"Token {RW}"},
                      timeout=60) as http:
        res = http.post(f"/v1/downsample/c/e/{name}/")
        assert res.status_code in (200, 201, 202), res.text
        for _ in range(600):
            status = http.get(f"/v1/downsample/c/e/{name}/").json()["status"]
            if status not in ("QUEUED", "IN_PROGRESS"):
                break
            time.sleep(0.1)
        assert status == "DOWNSAMPLED", status


@pytest.mark.parametrize("name", ["img", "seg"])
def test_the_relay_downsample_is_read_through_precomputed_on_both_workers(
        served: tuple[RelayProcess, Path], tmp_path: Path, name: str) -> None:
    r, h5 = served
    with h5py.File(h5, "r") as f:
        level0 = f[name]["s0"][...]
        before = f[name]["s1"][...]
    # both workers read (and cache) the coarse level before the job
    for _ in range(READS):
        np.testing.assert_array_equal(_cv_read(r, name, 1), before)
    _workers_answering(r, name, 1, before)
    _downsample(r, name)
    # the same downsample, computed locally from the same voxels
    local = f"zarr://{tmp_path / 'local.zarr'}"
    vol = voxgate.create(local, shape=SHAPE, chunks=CHUNKS, dtype=DTYPES[name],
                         voxel_size=(40, 8, 8), kind=KINDS[name], num_scales=2)
    vol[...] = level0
    want = voxgate.downsample(local, 2, prefer="local").at_scale(1).read()
    for i in range(READS):
        np.testing.assert_array_equal(_cv_read(r, name, 1), want, err_msg=f"CloudVolume #{i}")
        pre = voxgate.open(f"precomputed://{r.url}/precomputed/c/e/{name}").at_scale(1)
        np.testing.assert_array_equal(pre.read(), want, err_msg=f"precomputed:// #{i}")
    _workers_answering(r, name, 1, want)
    with h5py.File(h5, "r") as f:
        np.testing.assert_array_equal(f[name]["s1"][...], want)


def test_the_file_after_the_journey_holds_what_was_written_and_nothing_else(
        served: tuple[RelayProcess, Path]) -> None:
    r, h5 = served
    with h5py.File(h5, "r") as f:
        names: list[str] = []
        f.visit(names.append)
        assert sorted(names) == ["img", "img/s0", "img/s1", "seg", "seg/s0", "seg/s1"]
        for name, dtype in DTYPES.items():
            assert f[name]["s0"].dtype == dtype and f[name]["s0"].shape == SHAPE
            assert f[name]["s1"].dtype == dtype
    # every client agrees with the file, on both workers
    with h5py.File(h5, "r") as f:
        data = {name: f[name]["s0"][...] for name in DTYPES}
    for name in DTYPES:
        _every_client_reads(r, name, data[name])
