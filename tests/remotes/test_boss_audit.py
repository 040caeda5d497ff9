"""Audit of bossdb:// at the seams a user walks, against a voxgate relay and cross-checked with
the real intern client (PyPI) on the same server: project management, metadata, cutouts with
frame offsets at every level, object services, bad tokens and missing resources."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from intern.remote.boss import BossRemote
from requests import HTTPError

import voxgate
from voxgate.errors import (
    AuthenticationError,
    CapabilityNotSupportedError,
    InvalidRequestError,
    RemoteExistsError,
    RemoteNotFoundError,
)
from voxgate.geometry import Box, Vec
from voxgate.remotes.boss import BossProject

from ..relay.conftest import RO, RW, RelayProcess, start_token_relay


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    d = tmp_path_factory.mktemp("bossaudit")
    r = start_token_relay(d, "128 MiB")
    yield r
    r.stop()


def _intern(server: RelayProcess, token: str = RW) -> BossRemote:
    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{server.port}", "token": token})


def _name(tmp_path: Path) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in tmp_path.name)[-40:]


def test_existing_names_are_remote_exists_errors(server: RelayProcess, tmp_path: Path) -> None:
    c = _name(tmp_path)
    p = BossProject(server.url, token=RW)
    p.create_collection(c)
    p.create_coordinate_frame(f"{c}_f", Box((0, 0, 0), (16, 64, 64)), (40, 4, 4))
    p.create_experiment(c, "e", f"{c}_f")
    p.create_channel(c, "e", "ch")
    # bossDB (and intern, which sees it as HTTP 400) answers an existing name like a bad field
    with pytest.raises(HTTPError, match="400"):
        from intern.resource.boss.resource import CollectionResource
        _intern(server).create_project(CollectionResource(c))
    for make, what in ((lambda: p.create_collection(c), "collection"),
                       (lambda: p.create_coordinate_frame(f"{c}_f", Box((0, 0, 0), (1, 1, 1)),
                                                          (1, 1, 1)), "coordinate frame"),
                       (lambda: p.create_experiment(c, "e", f"{c}_f"), "experiment"),
                       (lambda: p.create_channel(c, "e", "ch"), "channel")):
        with pytest.raises(RemoteExistsError, match=f"{what}.*already exists"):
            make()
    # a 400 for a bad field on a new name stays an InvalidRequestError
    with pytest.raises(InvalidRequestError) as info:
        p.create_coordinate_frame(f"{c}_g", Box((5, 0, 0), (5, 1, 1)), (1, 1, 1))
    assert not isinstance(info.value, RemoteExistsError)
    with pytest.raises(InvalidRequestError, match="uint64"):  # annotation channels are uint64
        p.create_channel(c, "e", "seg8", type="annotation", datatype="uint8")
    # deleting a collection with experiments is refused and changes nothing
    with pytest.raises(InvalidRequestError, match="experiments"):
        p.delete_collection(c)
    assert c in p.list_collections() and p.list_channels(c, "e") == ["ch"]


def test_a_missing_part_is_named(server: RelayProcess) -> None:
    p = BossProject(server.url, token=RW)
    p.create_collection("dup")
    p.create_coordinate_frame("dup", Box((0, 0, 0), (16, 16, 16)), (1, 1, 1))
    p.create_experiment("dup", "exp", "dup")
    p.create_channel("dup", "exp", "dup")
    for path, part in (("dup/dup/dup", "experiment 'dup' in collection 'dup'"),
                       ("nope/dup/dup", "collection 'nope'"),
                       ("dup/exp/nope", "channel 'nope' in dup/exp")):
        with pytest.raises(RemoteNotFoundError, match=f"bossDB {part} does not exist"):
            voxgate.open(f"bossdb://{server.url}/{path}", token=RW)
    assert voxgate.open(f"bossdb://{server.url}/dup/exp/dup", token=RW).shape == (16, 16, 16)


def test_object_service_names_are_checked_before_any_request() -> None:
    p = BossProject("http://127.0.0.1:9", token=RW)  # nothing listens: a request would fail
    box = Box((0, 0, 0), (1, 1, 1))
    for call in (lambda: p.ids_in_region("c", "e/../x", "seg", box),
                 lambda: p.bounding_box("c", "e", "../seg", 1),
                 lambda: p.reserve_ids("c", "e", "a b", 1),
                 lambda: p.reserve_ids("c", "e", "seg", 0),
                 lambda: p.downsample_status("c/x", "e", "seg"),
                 lambda: p.create_experiment("c", "e", "frame/../x")):
        with pytest.raises(InvalidRequestError, match=r"not valid|at least one"):
            call()


@pytest.fixture(scope="module")
def offset_frames(server: RelayProcess) -> dict[str, np.ndarray]:
    """Two experiments whose frames do not start at 0 (anisotropic and isotropic, 3 levels),
    with uint8, uint16 and uint64 channels written and downsampled."""
    p = BossProject(server.url, token=RW)
    p.create_collection("off")
    p.create_coordinate_frame("off_aniso", Box((5, 100, 300), (45, 700, 900)), (40, 4, 4))
    p.create_coordinate_frame("off_iso", Box((3, 20, 40), (40, 620, 600)), (8, 8, 8))
    p.create_experiment("off", "aniso", "off_aniso", num_hierarchy_levels=3)
    p.create_experiment("off", "iso", "off_iso", num_hierarchy_levels=3,
                        hierarchy_method="isotropic")
    rng = np.random.default_rng(7)
    written = {}
    for e in ("aniso", "iso"):
        for ch, dt, kind in (("u8", "uint8", "image"), ("u16", "uint16", "image"),
                             ("seg", "uint64", "annotation")):
            p.create_channel("off", e, ch, type=kind, datatype=dt)
            v = voxgate.open(f"bossdb://{server.url}/off/{e}/{ch}", token=RW, mode="r+")
            data = rng.integers(0, 2**16 if dt == "uint16" else 256, v.shape).astype(dt)
            if dt == "uint64":
                data = (data // 32 + 2**62).astype(np.uint64)
            v[:] = data
            p.start_downsample("off", e, ch)
            written[f"{e}/{ch}"] = data
    for key in written:
        e, ch = key.split("/")
        for _ in range(600):
            if p.downsample_status("off", e, ch)["status"] == "DOWNSAMPLED":
                break
            time.sleep(0.05)
    return written


@pytest.mark.parametrize("exp", ["aniso", "iso"])
def test_cutouts_at_every_level_equal_intern(server: RelayProcess, exp: str,
                                             offset_frames: dict[str, np.ndarray]) -> None:
    rmt = _intern(server, RO)
    for ch in ("u8", "u16", "seg"):
        vol = voxgate.open(f"bossdb://{server.url}/off/{exp}/{ch}", token=RO)
        chan = rmt.get_channel(ch, "off", exp)
        np.testing.assert_array_equal(vol.read(), offset_frames[f"{exp}/{ch}"])
        for k, scale in enumerate(vol.scales):
            o, n = scale.offset, scale.shape
            # odd boxes, in frame coordinates, crossing the 512 x 512 x 16 cuboid grid
            lo = (o.z + 1, o.y + 3, o.x + 5)
            hi = (o.z + n.z - 1, o.y + n.y - 2, o.x + n.x - 7)
            ref = rmt.get_cutout(chan, k, [lo[2], hi[2]], [lo[1], hi[1]], [lo[0], hi[0]])
            got = vol.at_scale(k)[1:n.z - 1, 3:n.y - 2, 5:n.x - 7].read()
            assert got.dtype == ref.dtype == np.dtype(vol.dtype)
            np.testing.assert_array_equal(got, ref, err_msg=f"{exp}/{ch} level {k}")
            assert ref.any()


def test_metadata_on_each_level_agrees_with_intern(server: RelayProcess,
                                                   offset_frames: dict[str, np.ndarray]) -> None:
    from intern.resource.boss.resource import (
        ChannelResource,
        CollectionResource,
        ExperimentResource,
    )
    p = BossProject(server.url, token=RW)
    rmt = _intern(server)
    for parts, res in ((("off",), CollectionResource("off")),
                       (("off", "iso"), ExperimentResource("iso", "off")),
                       (("off", "iso", "u8"), ChannelResource("u8", "off", "iso"))):
        md = p.metadata(*parts)
        md["odd key"] = "a&b=c/d?e µm"
        md["n"] = 5  # type: ignore[assignment]
        md["n"] = "6"
        assert rmt.get_metadata(res, ["odd key", "n"]) == {"odd key": "a&b=c/d?e µm", "n": "6"}
        rmt.create_metadata(res, {"from_intern": "x"})
        assert dict(md) == {"odd key": "a&b=c/d?e µm", "n": "6", "from_intern": "x"}
        del md["from_intern"]
        with pytest.raises(KeyError):
            del md["from_intern"]
        assert sorted(rmt.list_metadata(res)) == ["n", "odd key"]


def test_object_services_agree_with_intern(server: RelayProcess,
                                           offset_frames: dict[str, np.ndarray]) -> None:
    rmt = _intern(server)
    seg = voxgate.open(f"bossdb://{server.url}/off/iso/seg", token=RW, mode="r+")
    o = seg.scales[0].offset
    labels = np.zeros((20, 600, 560), np.uint64)
    labels[3:9, 500:520, 7:530] = 2**63 + 5
    labels[15:20, 0:3, 550:560] = 7
    seg.remote.write(Box(tuple(o), tuple(o + Vec(20, 600, 560))), labels, 0)
    chan = rmt.get_channel("seg", "off", "iso")
    region = Box(tuple(o), tuple(o + Vec(20, 600, 560)))
    ids = seg.remote.ids_in(region)
    assert ids.dtype == np.uint64
    assert ids.tolist() == rmt.get_ids_in_region(chan, 0, [o.x, o.x + 560], [o.y, o.y + 600],
                                                 [o.z, o.z + 20])
    for tight in (True, False):
        box = seg.remote.bounding_box(2**63 + 5, tight=tight)
        ref = rmt.get_bounding_box(chan, 0, 2**63 + 5, "tight" if tight else "loose")
        assert box == Box((ref["z_range"][0], ref["y_range"][0], ref["x_range"][0]),
                          (ref["z_range"][1], ref["y_range"][1], ref["x_range"][1]))
    assert seg.remote.bounding_box(2**63 + 5) == Box(o + Vec(3, 500, 7), o + Vec(9, 520, 530))
    with pytest.raises(RemoteNotFoundError):
        seg.remote.bounding_box(12345)
    start = seg.remote.reserve_ids(3)
    assert rmt.reserve_ids(chan, 2) == start + 3
    img = voxgate.open(f"bossdb://{server.url}/off/iso/u8", token=RW, mode="r+").remote
    for call in (lambda: img.ids_in(region), lambda: img.bounding_box(1),  # type: ignore
                 lambda: img.reserve_ids(1)):  # type: ignore[attr-defined]
        with pytest.raises(CapabilityNotSupportedError, match="annotation channel"):
            call()


def test_bad_and_read_only_tokens(server: RelayProcess, caplog: pytest.LogCaptureFixture,
                                  offset_frames: dict[str, np.ndarray]) -> None:
    secret = "SECRET-never-shown-42"
    url = f"bossdb://{server.url}/off/aniso/u8"
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(AuthenticationError, match="401") as info:
            voxgate.open(url, token=secret)
        assert secret not in str(info.value)
        with pytest.raises(AuthenticationError, match="401"):
            BossProject(server.url, token=secret).list_collections()
        ro = voxgate.open(url, token=RO, mode="r+")
        before = ro[0:1, 0:2, 0:2].read()
        with pytest.raises(AuthenticationError, match="403"):
            ro[0:1, 0:2, 0:2] = before + 1
        with pytest.raises(AuthenticationError, match="403"):
            BossProject(server.url, token=RO).create_collection("not_allowed")
    assert secret not in caplog.text and RO not in caplog.text
    np.testing.assert_array_equal(ro[0:1, 0:2, 0:2].read(), before)  # the refused write
    assert "not_allowed" not in BossProject(server.url, token=RW).list_collections()
