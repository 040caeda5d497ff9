"""How a bossDB level's voxels lie over the finer level's (``pyramid_anchor``).

bossDB downsamples cuboids in dataset coordinates: level k of a frame x0:x1 is
floor(x0 / 2^k):ceil(x1 / 2^k), and voxel i of a level covers the finer voxels [2i, 2i + 2), on
the grid through 0 ("origin").  ``bossdb://`` built its levels' extents that way but said
"offset", so ``voxgate.downsample(bossdb://..., prefer="local")`` on a frame starting at odd
coordinates was refused ("cannot fill it consistently").  A voxgate relay serves an upstream's
own pyramid and names its anchor in the downsample status (``pyramid_anchor``, a voxgate
extension; tests/relay/test_odd_pyramids.py checks it for stores of both anchors); a server that
does not name it (bossDB) is "origin".
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

import voxgate
from voxgate.geometry import Box
from voxgate.remotes.boss import BossProject

from ..services.numpy_reference import downsample_scales
from .conftest import RW, RelayProcess, start_token_relay

#: z, y, x: odd starts and stops, so every level's floor / ceil differs from the "offset" rule
FRAME = Box((3, 7, 41), (12, 52, 92))
LEVELS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    r = start_token_relay(tmp_path_factory.mktemp("anchor"), "64 MiB")
    p = BossProject(r.url, token=RW)
    p.create_collection("an")
    p.create_coordinate_frame("an_odd", FRAME, (8, 8, 8))
    p.create_experiment("an", "odd", "an_odd", num_hierarchy_levels=LEVELS,
                        hierarchy_method="isotropic")
    yield r
    r.stop()


def _channel(server: RelayProcess, name: str, kind: str) -> tuple[voxgate.Volume, np.ndarray]:
    p = BossProject(server.url, token=RW)
    seg = kind == "segmentation"
    p.create_channel("an", "odd", name, type="annotation" if seg else "image",
                     datatype="uint64" if seg else "uint8")
    vol = voxgate.open(f"bossdb://{server.url}/an/odd/{name}", token=RW, mode="r+")
    rng = np.random.default_rng(len(name))
    data = (rng.integers(1, 5, vol.shape) * 2**60 + rng.integers(0, 3, vol.shape)
            if seg else rng.integers(0, 256, vol.shape)).astype(vol.dtype)
    vol[:] = data
    return vol, data


def _wait_downsampled(server: RelayProcess, name: str) -> None:
    p = BossProject(server.url, token=RW)
    for _ in range(600):
        if p.downsample_status("an", "odd", name)["status"] == "DOWNSAMPLED":
            return
        time.sleep(0.05)
    raise AssertionError(f"an/odd/{name} was never downsampled")


@pytest.mark.parametrize("kind", ["image", "segmentation"])
def test_local_downsample_of_bossdb_levels_is_the_numpy_pyramid_on_the_grid_through_0(
        server: RelayProcess, kind: str) -> None:
    vol, data = _channel(server, f"local_{kind[:3]}", kind)
    assert vol.remote.pyramid_anchor == "origin"
    status = BossProject(server.url, token=RW).downsample_status("an", "odd", f"local_{kind[:3]}")
    assert status["pyramid_anchor"] == "origin"
    # bossDB's levels: floor(start / 2^k):ceil(stop / 2^k)
    for k in range(LEVELS):
        sc = vol.scales[k]
        assert tuple(sc.offset) == tuple(a // 2**k for a in FRAME.start), k
        assert tuple(sc.offset + sc.shape) == tuple(-(-b // 2**k) for b in FRAME.stop), k
    voxgate.downsample(vol, prefer="local")  # refused before: "cannot fill it consistently"
    want = downsample_scales(data, [(2, 2, 2)] * (LEVELS - 1), kind, start=FRAME.start)
    for k in range(1, LEVELS):
        got = vol.at_scale(k).read()
        assert got.shape == want[k - 1].shape, k
        assert np.array_equal(got, want[k - 1]), f"{kind}: level {k}"


def test_the_relays_job_and_the_local_path_give_the_same_levels(server: RelayProcess) -> None:
    """The server path (the relay's downsample job) and the local one, on the same data."""
    vol, data = _channel(server, "both_a", "segmentation")
    p = BossProject(server.url, token=RW)
    p.create_channel("an", "odd", "both_b", type="annotation", datatype="uint64")
    twin = voxgate.open(f"bossdb://{server.url}/an/odd/both_b", token=RW, mode="r+")
    twin[:] = data
    voxgate.downsample(vol, prefer="local")
    p.start_downsample("an", "odd", "both_b")
    _wait_downsampled(server, "both_b")
    for k in range(1, LEVELS):
        assert np.array_equal(vol.at_scale(k).read(), twin.at_scale(k).read()), k


def test_a_server_that_does_not_name_the_anchor_is_bossdb(
        server: RelayProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    vol, _ = _channel(server, "plain", "image")
    assert vol.remote.pyramid_anchor == "origin"
    real = BossProject.downsample_status

    def as_bossdb(self: BossProject, c: str, e: str, ch: str) -> dict[str, object]:
        status = real(self, c, e, ch)
        status.pop("pyramid_anchor")
        return status

    def says_offset(self: BossProject, c: str, e: str, ch: str) -> dict[str, object]:
        return {**real(self, c, e, ch), "pyramid_anchor": "offset"}

    monkeypatch.setattr(BossProject, "downsample_status", as_bossdb)
    assert voxgate.open(f"bossdb://{server.url}/an/odd/plain", token=RW).remote \
        .pyramid_anchor == "origin"
    monkeypatch.setattr(BossProject, "downsample_status", says_offset)
    assert voxgate.open(f"bossdb://{server.url}/an/odd/plain", token=RW).remote \
        .pyramid_anchor == "offset"


def test_writes_are_planned_on_bossdbs_cuboids(server: RelayProcess,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """bossDB stores 512x512x16 cuboids on the grid through 0: a large write to a frame
    starting at odd coordinates was cut into blocks from the frame's start, each straddling
    cuboids (a read-modify-write of several of them on the server, two blocks sharing one)."""
    from voxgate.remotes.boss.remote import CUBOID, BossDBRemote

    frame = Box((3, 7, 41), (40, 52, 92))  # z crosses the cuboid lines at 16 and 32
    p = BossProject(server.url, token=RW)
    p.create_coordinate_frame("an_grid", frame, (8, 8, 8))
    p.create_experiment("an", "grid", "an_grid", num_hierarchy_levels=1,
                        hierarchy_method="isotropic")
    p.create_channel("an", "grid", "img", type="image", datatype="uint8")
    vol = voxgate.open(f"bossdb://{server.url}/an/grid/img", token=RW, mode="r+")
    assert vol.remote.grid_bounds(0) == Box((0, 0, 0), frame.stop)
    data = np.random.default_rng(5).integers(0, 256, vol.shape).astype(np.uint8)
    seen: list[Box] = []
    real = BossDBRemote.write

    def recording(self: BossDBRemote, box: Box, array: np.ndarray, scale: int = 0) -> None:
        seen.append(box)
        real(self, box, array, scale)

    monkeypatch.setattr(BossDBRemote, "write", recording)
    monkeypatch.setattr("voxgate.volume.writing.WRITE_BLOCK_BYTES", 1)  # one cuboid per block
    again = (255 - data).astype(np.uint8)
    vol.write(again, workers=3)
    assert len(seen) > 1
    for b in seen:  # each block lies in one cuboid
        assert all(a // c == (e - 1) // c for a, e, c in zip(b.start, b.stop, CUBOID,
                                                              strict=True)), b
    assert np.array_equal(vol.read(), again)
