"""A DVID server as the relay's upstream: a uint8blk image (two scales: the sibling instance
``gray_1``) and a labelmap (three scales DVID computes itself) in one repo, at an odd extent
and an unaligned, non-zero offset, walked the way a user walks it.

The real ``intern`` client reads and writes through the bossDB dialect, CloudVolume reads the
precomputed dialect, and every answer is compared with what DVID holds: read directly with
``dvid://``, with raw DVID HTTP (the bytes parsed here), with the independent client dvidtools
(labels), and with a numpy reference of DVID's own downsampling.  A write at scale 0 of a
labelmap makes DVID rebuild its coarser scales; the relay must not keep serving those scales
from its cache.  Writes to a committed (locked) node answer 403 and change nothing, and a DVID
server that stops answers 502/504 quickly and is served again when it is back.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
from requests import HTTPError

import voxgate
from voxgate.geometry import Box
from voxgate.remotes.dvid import DVIDRepo
from voxgate.testing.dvid import DVIDServerProcess, start_server

from ..services.numpy_reference import dvid_mode2
from .conftest import RelayProcess, free_port, start_relay

BS = 16
OFF = (5, 19, 37)  # z, y, x: odd, so DVID's coarse labelmap scales hold one voxel more
SHAPE = (36, 70, 83)  # not a multiple of the block size anywhere
TOKEN = "any"  # an open relay


def _labelmap_scales(labels: np.ndarray, levels: int) -> list[np.ndarray]:
    """Scales 0..levels of ``labels`` (at OFF) as DVID computes them, on its block grid through
    the origin; each cut to the scale's extent ceil((off + n) / 2^k) - floor(off / 2^k)."""
    g = 2**levels * BS
    lo = [o // g * g for o in OFF]
    hi = [-(-(o + s) // g) * g for o, s in zip(OFF, SHAPE, strict=True)]
    frame = np.zeros([h - a for a, h in zip(lo, hi, strict=True)], np.uint64)
    frame[tuple(slice(o - a, o - a + s) for o, a, s in zip(OFF, lo, SHAPE, strict=True))] = labels
    out = [labels]
    for k in range(1, levels + 1):
        frame = dvid_mode2(frame)
        f = 2**k
        sl = tuple(slice(o // f - a // f, -(-(o + s) // f) - a // f)
                   for o, a, s in zip(OFF, lo, SHAPE, strict=True))
        out.append(frame[sl])
    return out


def _blocky_labels(rng: np.random.Generator) -> np.ndarray:
    """Labels in 6-voxel cubes (so the coarse scales have structure), ids above 2**32 and one
    above 2**63."""
    small = rng.integers(1, 9, [-(-s // 6) for s in SHAPE]).astype(np.uint64)
    ids = np.array([0, 3, 2**32 + 1, 2**40 + 17, 2**40 + 18, 5, 2**33 + 9, 2**63 + 5, 11],
                   np.uint64)
    big = ids[small].repeat(6, 0).repeat(6, 1).repeat(6, 2)
    return np.ascontiguousarray(big[:SHAPE[0], :SHAPE[1], :SHAPE[2]])


@dataclass
class World:
    dvid: DVIDServerProcess
    repo: DVIDRepo
    work: str    # the writable node (a branch of the committed root)
    late: str    # another branch, committed while a relay serves it
    relay: RelayProcess
    gray: np.ndarray
    gray1: np.ndarray
    seg: np.ndarray

    def url(self, instance: str, node: str | None = None) -> str:
        return self.repo.url(instance, node or self.work)


def _config(path: Path, channels: dict[str, str], timeout: float = 10) -> Path:
    text = f"""
[server]
host = "127.0.0.1"
upstream_timeout = {timeout}
upstream_meta_seconds = 0
state_path = "{path.parent / 'state.json'}"
[cache]
memory_bytes = "32 MiB"
"""
    for name, url in channels.items():
        text += f'[[channel]]\nname = "{name}"\nupstream = "{url}"\n'
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = tmp_path_factory.mktemp("dvid-relay")
    server = start_server(log=d / "dvid.log")
    try:
        repo = DVIDRepo.create(server.url, alias="relay-journey")
        rng = np.random.default_rng(23)
        gray = rng.integers(1, 255, SHAPE, dtype=np.uint8)
        img = voxgate.create(repo.url("gray"), shape=SHAPE, chunks=(BS, BS, BS), dtype="uint8",
                             voxel_size=(8, 8, 8), offset=OFF, num_scales=2)
        img[...] = gray
        img1 = img.at_scale(1)
        gray1 = rng.integers(1, 255, img1.shape, dtype=np.uint8)
        img1[...] = gray1
        seg = _blocky_labels(rng)
        lm = voxgate.create(repo.url("seg"), shape=SHAPE, chunks=(BS, BS, BS), dtype="uint64",
                            voxel_size=(8, 8, 8), offset=OFF, kind="segmentation",
                            num_scales=3)
        lm[...] = seg
        repo.commit(repo.root, note="imported")
        work = repo.branch(repo.root, "work")
        late = repo.branch(repo.root, "late")
        cfg = _config(d / "relay.toml", {
            "fly/em/gray": repo.url("gray", work),
            "fly/em/seg": repo.url("seg", work),
            "fly/locked/gray": repo.url("gray"),
            "fly/locked/seg": repo.url("seg"),
            "fly/late/seg": repo.url("seg", late),
        })
        relay = start_relay(cfg, free_port())
        try:
            yield World(server, repo, work, late, relay, gray, gray1, seg)
        finally:
            relay.stop()
    finally:
        server.stop()


def _intern(relay: RelayProcess) -> Any:
    from intern.remote.boss import BossRemote

    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": TOKEN})


def _cutout(relay: RelayProcess, coll: str, exp: str, chan: str, res: int,
            box: Box) -> np.ndarray:
    rmt = _intern(relay)
    ch = rmt.get_channel(chan, coll, exp)
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return np.asarray(rmt.get_cutout(ch, res, [int(x0), int(x1)], [int(y0), int(y1)],
                                     [int(z0), int(z1)]))


def _cv(relay: RelayProcess, path: str, mip: int) -> Any:
    from cloudvolume import CloudVolume

    return CloudVolume(f"precomputed://{relay.url}/precomputed/{path}", mip=mip, progress=False,
                       fill_missing=False, bounded=True, cache=False)


def _cv_read(relay: RelayProcess, path: str, mip: int, box: Box) -> np.ndarray:
    cv = _cv(relay, path, mip)
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return np.asarray(cv[x0:x1, y0:y1, z0:z1])[..., 0].transpose(2, 1, 0)


def _dvid_raw(world: World, instance: str, box: Box, dtype: str, node: str,
              scale: int | None = None) -> np.ndarray:
    """A box read with DVID's raw endpoint, the bytes parsed here (x fastest)."""
    (z0, y0, x0), (nz, ny, nx) = box.start, box.shape
    q = f"?scale={scale}" if scale is not None else ""
    r = httpx.get(f"{world.dvid.url}/api/node/{node}/{instance}/raw/0_1_2/{nx}_{ny}_{nz}/"
                  f"{x0}_{y0}_{z0}{q}", timeout=30)
    r.raise_for_status()
    return np.frombuffer(r.content, dtype).reshape(tuple(box.shape))


def _at(off: tuple[int, ...], start: tuple[int, ...], stop: tuple[int, ...]) -> Box:
    return Box(tuple(o + a for o, a in zip(off, start, strict=True)),
               tuple(o + b for o, b in zip(off, stop, strict=True)))


def _ref(arr: np.ndarray, off: tuple[int, ...], box: Box) -> np.ndarray:
    return arr[tuple(slice(int(a) - o, int(b) - o)
                     for a, b, o in zip(box.start, box.stop, off, strict=True))]


# -- reads ----------------------------------------------------------------------------------------
def test_intern_and_cloudvolume_read_both_channels_at_every_scale(world: World) -> None:
    relay = world.relay
    seg_scales = _labelmap_scales(world.seg, 2)
    direct_seg = voxgate.open(world.url("seg"))
    direct_gray = voxgate.open(world.url("gray"))
    # the frame: the volume's extent at its offset; the channels' kinds
    rmt = _intern(relay)
    exp = rmt.get_experiment("fly", "em")
    frame = rmt.get_coordinate_frame(exp.coord_frame)
    assert (frame.z_start, frame.y_start, frame.x_start) == OFF
    assert (frame.z_stop, frame.y_stop, frame.x_stop) == tuple(
        o + s for o, s in zip(OFF, SHAPE, strict=True))
    seg_ch, gray_ch = rmt.get_channel("seg", "fly", "em"), rmt.get_channel("gray", "fly", "em")
    assert (seg_ch.type, seg_ch.datatype) == ("annotation", "uint64")
    assert (gray_ch.type, gray_ch.datatype) == ("image", "uint8")

    for scale in range(3):
        ds = direct_seg.at_scale(scale)
        off = tuple(int(v) for v in ds.offset)
        # DVID's own scale k, and the reference of its downsampling
        np.testing.assert_array_equal(ds.read(), seg_scales[scale], err_msg=f"dvid s{scale}")
        # odd boxes across blocks, and one up to the far corner
        n = ds.shape
        for start, stop in (((1, 3, 2), (n[0] - 2, n[1] - 1, n[2] - 3)),
                            ((n[0] // 3, n[1] // 2, n[2] // 4), n)):
            box = _at(off, start, stop)
            want = _ref(seg_scales[scale], off, box)
            got = _cutout(relay, "fly", "em", "seg", scale, box)
            assert got.dtype == np.uint64
            np.testing.assert_array_equal(got, want, err_msg=f"intern seg s{scale} {box}")
            np.testing.assert_array_equal(_cv_read(relay, "fly/em/seg", scale, box), want,
                                          err_msg=f"CloudVolume seg s{scale} {box}")
    for scale, ref in ((0, world.gray), (1, world.gray1)):
        dg = direct_gray.at_scale(scale)
        off = tuple(int(v) for v in dg.offset)
        np.testing.assert_array_equal(dg.read(), ref)
        n = dg.shape
        box = _at(off, (1, 2, 3), (n[0] - 1, n[1] - 3, n[2] - 2))
        np.testing.assert_array_equal(_cutout(relay, "fly", "em", "gray", scale, box),
                                      _ref(ref, off, box), err_msg=f"intern gray s{scale}")
        np.testing.assert_array_equal(_cv_read(relay, "fly/em/gray", scale, box),
                                      _ref(ref, off, box), err_msg=f"CloudVolume gray s{scale}")


def test_cloudvolume_info_matches_dvid_geometry(world: World) -> None:
    for chan, levels in (("seg", 3), ("gray", 2)):
        direct = voxgate.open(world.url(chan))
        info = httpx.get(f"{world.relay.url}/precomputed/fly/em/{chan}/info", timeout=30).json()
        assert info["data_type"] == ("uint64" if chan == "seg" else "uint8")
        assert info["type"] == ("segmentation" if chan == "seg" else "image")
        assert len(info["scales"]) == levels
        cv = _cv(world.relay, f"fly/em/{chan}", 0)
        for k in range(levels):
            sc = direct.at_scale(k)
            s = info["scales"][k]
            assert s["size"] == list(sc.shape)[::-1], (chan, k)
            assert s["voxel_offset"] == [int(v) for v in sc.offset][::-1], (chan, k)
            assert s["resolution"] == [8 * 2**k] * 3, (chan, k)
            assert list(cv.mip_volume_size(k)) == list(sc.shape)[::-1]
            assert list(cv.mip_voxel_offset(k)) == [int(v) for v in sc.offset][::-1]
            # every voxel of the scale, through CloudVolume
            np.testing.assert_array_equal(_cv_read(world.relay, f"fly/em/{chan}", k,
                                                   sc.bounds), sc.read(), err_msg=f"{chan} {k}")


# -- writes ---------------------------------------------------------------------------------------
def test_intern_writes_land_in_dvid_and_every_scale_reads_them_back(world: World) -> None:
    relay = world.relay
    rmt = _intern(relay)
    seg_ch = rmt.get_channel("seg", "fly", "em")
    direct = voxgate.open(world.url("seg"))
    boxes = {k: direct.at_scale(k).bounds for k in range(3)}
    # the whole volume through both dialects at every scale first: the relay caches it
    for k, b in boxes.items():
        _cutout(relay, "fly", "em", "seg", k, b)
        _cv_read(relay, "fly/em/seg", k, b)
    # a box crossing blocks on every axis, with ids above 2**32 (and one above 2**63)
    wbox = _at(OFF, (3, 10, 7), (29, 51, 70))
    new = np.full(tuple(wbox.shape), 2**40 + 999, np.uint64)
    new[:, :, ::5] = 2**33 + 1
    new[5:9, 5:9, 5:9] = 2**63 + 77
    (z0, y0, x0), (z1, y1, x1) = wbox.start, wbox.stop
    rmt.create_cutout(seg_ch, 0, [x0, x1], [y0, y1], [z0, z1], new)
    model = world.seg.copy()
    model[3:29, 10:51, 7:70] = new
    scales = _labelmap_scales(model, 2)

    # in DVID: voxgate's dvid://, DVID's raw endpoint, and dvidtools
    np.testing.assert_array_equal(direct.read(), model)
    np.testing.assert_array_equal(
        _dvid_raw(world, "seg", direct.bounds, "<u8", world.work), model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import dvid  # dvidtools' import name
    old = dvid.config.segmentation
    dvid.config.segmentation = "seg"
    try:
        zyx = np.argwhere(model < 2**63)[::37]  # (dvidtools reads ids as int64)
        xyz = (zyx + np.array(OFF))[:, ::-1].tolist()
        theirs = np.asarray(dvid.locs_to_ids(xyz, progress=False, server=world.dvid.url,
                                             node=world.work)).astype(np.uint64)
        np.testing.assert_array_equal(theirs, model[tuple(zyx.T)])
        assert (theirs == 2**40 + 999).any() and (theirs == 2**33 + 1).any()
    finally:
        dvid.config.segmentation = old
    # the committed root still holds the old labels
    np.testing.assert_array_equal(voxgate.open(world.repo.url("seg")).read(), world.seg)

    # DVID rebuilt its coarser scales; the relay serves them, not its cached cells
    for k, b in boxes.items():
        np.testing.assert_array_equal(direct.at_scale(k).read(), scales[k], err_msg=f"dvid {k}")
        np.testing.assert_array_equal(_cutout(relay, "fly", "em", "seg", k, b), scales[k],
                                      err_msg=f"intern after the write, scale {k}")
        np.testing.assert_array_equal(_cv_read(relay, "fly/em/seg", k, b), scales[k],
                                      err_msg=f"CloudVolume after the write, scale {k}")

    # the image channel: written at scale 0 (DVID keeps gray_1 as it was)
    gray_ch = rmt.get_channel("gray", "fly", "em")
    gbox = _at(OFF, (2, 13, 15), (35, 40, 81))
    _cutout(relay, "fly", "em", "gray", 0, gbox)  # cached first
    patch = np.random.default_rng(5).integers(1, 255, tuple(gbox.shape), dtype=np.uint8)
    (z0, y0, x0), (z1, y1, x1) = gbox.start, gbox.stop
    rmt.create_cutout(gray_ch, 0, [x0, x1], [y0, y1], [z0, z1], patch)
    gmodel = world.gray.copy()
    gmodel[2:35, 13:40, 15:81] = patch
    gdirect = voxgate.open(world.url("gray"))
    np.testing.assert_array_equal(gdirect.read(), gmodel)
    np.testing.assert_array_equal(_dvid_raw(world, "gray", gdirect.bounds, "u1", world.work),
                                  gmodel)
    np.testing.assert_array_equal(_cutout(relay, "fly", "em", "gray", 0, gdirect.bounds), gmodel)
    np.testing.assert_array_equal(_cv_read(relay, "fly/em/gray", 0, gdirect.bounds), gmodel)
    g1 = gdirect.at_scale(1)
    np.testing.assert_array_equal(_cutout(relay, "fly", "em", "gray", 1, g1.bounds),
                                  world.gray1)


# -- ids reserved through the relay are DVID's ----------------------------------------------------
def test_ids_reserved_through_the_relay_are_reserved_in_dvid(world: World) -> None:
    """intern's reserve on a DVID labelmap channel takes DVID's own counter (``nextlabel``),
    which every other DVID client (voxgate's proofreading, NeuTu, neuclease) reserves from: the
    ranges never overlap, and neither meets an id already in the labelmap."""
    rmt = _intern(world.relay)
    ch = rmt.get_channel("seg", "fly", "em")
    labels = world.repo.labels("seg", world.work)
    theirs_before = labels.reserve_ids(4)
    ours = rmt.reserve_ids(ch, 10)
    theirs_after = labels.reserve_ids(4)
    again = rmt.reserve_ids(ch, 3)
    ranges = sorted([(theirs_before, 4), (ours, 10), (theirs_after, 4), (again, 3)])
    for (a, n), (b, _) in itertools.pairwise(ranges):
        assert a + n <= b, ranges
    assert theirs_before < ours < theirs_after < again, ranges
    top = int(voxgate.open(world.url("seg")).read().max())
    assert min(a for a, _ in ranges) > top


# -- a committed node -----------------------------------------------------------------------------
def test_writes_to_a_committed_node_answer_403_and_change_nothing(world: World) -> None:
    relay = world.relay
    rmt = _intern(relay)
    box = _at(OFF, (1, 2, 3), (9, 20, 30))
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    for chan, data in (("seg", np.full(tuple(box.shape), 2**40 + 5, np.uint64)),
                       ("gray", np.full(tuple(box.shape), 7, np.uint8))):
        ch = rmt.get_channel(chan, "fly", "locked")
        with pytest.raises(HTTPError) as refused:
            rmt.create_cutout(ch, 0, [x0, x1], [y0, y1], [z0, z1], data)
        res = refused.value.response
        assert res is not None and res.status_code == 403, refused.value
        assert res.json()["code"] == 3001, res.text
        ref = world.seg if chan == "seg" else world.gray
        np.testing.assert_array_equal(voxgate.open(world.repo.url(chan)).read(), ref)
        np.testing.assert_array_equal(_cutout(relay, "fly", "locked", chan, 0, box),
                                      _ref(ref, OFF, box))

    # a node committed while the relay serves it (opened writable): DVID refuses the POST
    ch = rmt.get_channel("seg", "fly", "late")
    before = _cutout(relay, "fly", "late", "seg", 0, box)
    np.testing.assert_array_equal(before, _ref(world.seg, OFF, box))
    world.repo.commit(world.late, note="frozen")
    with httpx.Client(timeout=30) as http:
        body = np.full(tuple(box.shape), 2**40 + 6, np.uint64)
        r = http.post(f"{relay.url}/v1/cutout/fly/late/seg/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/",
                      content=blosc.compress(body.tobytes(), typesize=8),
                      headers={"Content-Type": "application/blosc",
                               "Authorization": f"Token {TOKEN}"})
    assert r.status_code == 403, r.text
    assert "locked" in r.text or "committed" in r.text or "read-only" in r.text, r.text
    np.testing.assert_array_equal(voxgate.open(world.repo.url("seg", world.late)).read(),
                                  world.seg)
    np.testing.assert_array_equal(_cutout(relay, "fly", "late", "seg", 0, box), before)


# -- a DVID server that stops ---------------------------------------------------------------------
def test_a_dvid_server_that_stops_answers_5xx_quickly_and_is_served_again(
        tmp_path: Path) -> None:
    data = tmp_path / "dvid-data"
    port = free_port()
    server = start_server(port=port, data=data, log=tmp_path / "dvid.log")
    relay: RelayProcess | None = None
    shape, off = (20, 300, 400), (3, 0, 11)  # several cache cells
    try:
        repo = DVIDRepo.create(server.url, alias="stops")
        vol = voxgate.create(repo.url("gray"), shape=shape, chunks=(BS, BS, BS), dtype="uint8",
                             voxel_size=(8, 8, 8), offset=off)
        ref = np.random.default_rng(3).integers(1, 255, shape, dtype=np.uint8)
        vol[...] = ref
        relay = start_relay(_config(tmp_path / "relay.toml", {"fly/em/gray": repo.url("gray")},
                                    timeout=5), free_port())
        info = httpx.get(f"{relay.url}/precomputed/fly/em/gray/info", timeout=30).json()
        cx, cy, cz = info["scales"][0]["chunk_sizes"][0]
        near = _at(off, (0, 0, 0), (10, 12, 14))
        far = _at(off, (shape[0] - 3, shape[1] - 5, shape[2] - 7), shape)
        assert far.start[2] - off[2] >= cx or far.start[1] - off[1] >= cy, "one cell"
        np.testing.assert_array_equal(_cutout(relay, "fly", "em", "gray", 0, near),
                                      _ref(ref, off, near))
        server.stop()
        # what the relay holds still serves; the rest is a 502/504 with a JSON body, fast
        np.testing.assert_array_equal(_cutout(relay, "fly", "em", "gray", 0, near),
                                      _ref(ref, off, near))
        (z0, y0, x0), (z1, y1, x1) = far.start, far.stop
        t0 = time.monotonic()
        r = httpx.get(f"{relay.url}/v1/cutout/fly/em/gray/0/{x0}:{x1}/{y0}:{y1}/{z0}:{z1}/",
                      headers={"Authorization": f"Token {TOKEN}"}, timeout=60)
        took = time.monotonic() - t0
        assert r.status_code in (502, 503, 504), (r.status_code, r.text)
        assert took < 15, took
        doc = r.json()
        assert doc["status"] == r.status_code and "upstream" in doc["message"], doc
        assert str(data) not in r.text
        # the precomputed dialect: the last chunk of the grid, as CloudVolume names it
        ox, oy, oz = info["scales"][0]["voxel_offset"]
        sx, sy, sz = info["scales"][0]["size"]
        lo = [o + (s - 1) // c * c for o, s, c in ((ox, sx, cx), (oy, sy, cy), (oz, sz, cz))]
        hi = [o + s for o, s in ((ox, sx), (oy, sy), (oz, sz))]
        chunk = "_".join(f"{a}-{b}" for a, b in zip(lo, hi, strict=True))
        t0 = time.monotonic()
        pr = httpx.get(f"{relay.url}/precomputed/fly/em/gray/s0/{chunk}", timeout=60)
        assert pr.status_code in (502, 503, 504), (pr.status_code, pr.text)
        assert time.monotonic() - t0 < 15
        # back on the same port with the same data: served again, no restart of the relay
        server = start_server(port=port, data=data, log=tmp_path / "dvid2.log")
        np.testing.assert_array_equal(_cutout(relay, "fly", "em", "gray", 0, far),
                                      _ref(ref, off, far))
        pr = httpx.get(f"{relay.url}/precomputed/fly/em/gray/s0/{chunk}", timeout=60)
        assert pr.status_code == 200
    finally:
        if relay is not None:
            relay.stop()
        server.stop()
