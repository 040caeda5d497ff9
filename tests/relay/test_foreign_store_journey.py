"""User journeys over stores voxgate did NOT write, checked at every seam against brute force.

Each store is written by hand with the library that owns its format, at an odd shape and an
offset that is a multiple of no chunk:

- OME-Zarr uint8 images written with zarr-python (micrometres, anisotropic, a translation):
  NGFF 0.4 on Zarr v2 with axes t, c, z, y, x (t = 1, c = 1), and NGFF 0.5 on Zarr v3 with
  axes z, y, x;
- an N5 multiscale group of uint64 labels (axes z, y, x, Paintera's ``offset``) written with
  tensorstore;
- a precomputed uint32 compressed_segmentation layer (block size 4 x 4 x 2, not the default
  8 x 8 x 8) written with CloudVolume;
- an OME-Zarr uint16 image of two channels (t, c, z, y, x, c = 2): no bossDB cutouts, so it is
  read through the precomputed dialect and its coarser levels redone by the relay's job.

It is served by a real relay process, boxes are written through the relay's bossDB dialect
(intern at the near corner, voxgate's ``bossdb://`` at the far corner), the coarser scales are
made by ``voxgate.downsample`` on the upstream (``add_scales`` on the foreign layout, the relay
takes in the new metadata) and/or by the relay's own job (``POST /v1/downsample/...``), and every
scale is read back through the relay by CloudVolume (precomputed dialect), intern and
``bossdb://`` (bossDB dialect), and from the upstream directly by its own library (zarr-python
and ome-zarr-py, tensorstore, CloudVolume), each compared voxel for voxel with the numpy pyramid
of tests/services/numpy_reference.py (anchored at the offset: ``start=None``).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tensorstore as ts
import zarr
from cloudvolume import CloudVolume
from requests import HTTPError

import voxgate

from ..services.numpy_reference import downsample_scales
from .conftest import RelayProcess
from .test_odd_pyramids import (
    TOKEN,
    assert_same,
    cv_layer,
    cv_whole,
    intern_remote,
    relay_config,
    until,
    upstream_box,
)

with warnings.catch_warnings():
    # ome_zarr.writer builds a default deprecated Scaler() at import time (ome-zarr 0.14+)
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

Triple = tuple[int, int, int]
NAME = "foreign/e/vol"  # collection / experiment / channel on the relay


# -- the brute-force side -------------------------------------------------------------------------

def pyramid(data: np.ndarray, factors: list[Triple], kind: str) -> list[np.ndarray]:
    """Level 0 and its numpy pyramid, anchored at the offset (OME-Zarr, N5, precomputed)."""
    return [data, *downsample_scales(data, factors, kind)]


def offsets(offset: Triple, factors: list[Triple]) -> list[Triple]:
    """Each scale's offset (z, y, x): the offset divided by the cumulative factor, floored."""
    out, cur = [offset], offset
    for f in factors:
        cur = (cur[0] // f[0], cur[1] // f[1], cur[2] // f[2])
        out.append(cur)
    return out


def voxel_sizes(base: Triple, factors: list[Triple]) -> list[Triple]:
    """Each scale's voxel size (z, y, x): the base times the cumulative factor."""
    out, cur = [base], base
    for f in factors:
        cur = (cur[0] * f[0], cur[1] * f[1], cur[2] * f[2])
        out.append(cur)
    return out


def wait_for_job(relay: RelayProcess, seconds: float = 30.0) -> str:
    """Poll the relay's downsample status until the job ends; return its final status."""
    url = f"{relay.url}/v1/downsample/{NAME}/"
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status = str(httpx.get(url, timeout=30).json()["status"])
        if status not in ("QUEUED", "IN_PROGRESS"):
            return status
        time.sleep(0.05)
    raise AssertionError("the relay's downsample job never ended")


def start_job(relay: RelayProcess) -> None:
    res = httpx.post(f"{relay.url}/v1/downsample/{NAME}/", timeout=30)
    assert res.status_code == 201, res.text
    assert wait_for_job(relay) == "DOWNSAMPLED"


def write_corners(relay: RelayProcess, data: np.ndarray, offset: Triple, big_id: int
                  ) -> np.ndarray:
    """Write a box at the near corner with intern (inside the upstream's first, partial chunks
    and across their edges) and one at the far corner with ``bossdb://``, at scale 0; return
    level 0 as it must be now."""
    c, e, ch = NAME.split("/")
    rmt = intern_remote(relay)
    chan = rmt.get_channel(ch, c, e)
    wire = np.dtype(chan.datatype)
    new = data.copy()
    n = (3, 19, 23)
    near = (np.arange(int(np.prod(n))).reshape(n) % 200 + 1).astype(wire)
    z0, y0, x0 = offset
    rmt.create_cutout(chan, 0, [x0, x0 + n[2]], [y0, y0 + n[1]], [z0, z0 + n[0]], near)
    new[:n[0], :n[1], :n[2]] = near
    vol = voxgate.open(f"bossdb://{relay.url}/{NAME}", mode="r+", token=TOKEN)
    assert vol.shape == data.shape  # level 0's frame is the store's extent
    vol[-4:, -17:, -21:] = np.full((4, 17, 21), big_id, dtype=vol.dtype)
    new[-4:, -17:, -21:] = big_id
    return new


def write_middle(relay: RelayProcess, data: np.ndarray, offset: Triple) -> np.ndarray:
    """Write a box across the middle with intern (its edges on no chunk of any scale); return
    level 0 as it must be now."""
    c, e, ch = NAME.split("/")
    rmt = intern_remote(relay)
    chan = rmt.get_channel(ch, c, e)
    z0, y0, x0 = offset
    box = np.full((4, 9, 11), 201, np.dtype(chan.datatype))
    rmt.create_cutout(chan, 0, [x0 + 20, x0 + 31], [y0 + 7, y0 + 16], [z0 + 2, z0 + 6], box)
    new = data.copy()
    new[2:6, 7:16, 20:31] = 201
    return new


def check_through_relay(relay: RelayProcess, url: str, refs: list[np.ndarray],
                        offs: list[Triple], voxels: list[Triple], who: str) -> None:
    """Every scale through the relay: its info (offsets, sizes, nm voxel sizes), CloudVolume,
    intern and ``bossdb://``, each against the brute-force pyramid."""
    info = httpx.get(f"{relay.url}/precomputed/{NAME}/info", timeout=30).json()
    assert len(info["scales"]) == len(refs), f"{who}: {len(info['scales'])} scales served"
    c, e, ch = NAME.split("/")
    rmt = intern_remote(relay)
    chan = rmt.get_channel(ch, c, e)
    boss = voxgate.open(f"bossdb://{relay.url}/{NAME}", token=TOKEN)
    if len(refs) > 1:  # (of one level the server is not asked: bossDB's "origin")
        assert boss.remote.pyramid_anchor == "offset", who
    for k, want in enumerate(refs):
        entry = info["scales"][k]
        assert entry["voxel_offset"] == list(offs[k][::-1]), (who, k, entry)
        assert entry["size"] == list(want.shape[::-1]), (who, k, entry)
        assert entry["resolution"] == pytest.approx(voxels[k][::-1], rel=1e-12), (who, k)
        assert_same(cv_whole(relay, NAME, k), want, f"{who}: CloudVolume via relay, scale {k}")
        xs, ys, zs = upstream_box(url, k)
        assert (zs[0], ys[0], xs[0]) == offs[k], (who, k)
        got = rmt.get_cutout(chan, k, xs, ys, zs)
        assert_same(got, want.astype(got.dtype), f"{who}: intern, scale {k}")
        sc = boss.scales[k]
        assert tuple(sc.offset) == offs[k], (who, k)
        assert sc.voxel_size.zyx() == pytest.approx(voxels[k], rel=1e-12), (who, k)
        whole = boss.at_scale(k).read()
        inside = tuple(slice(0, s) for s in want.shape)
        assert_same(whole[inside], want.astype(whole.dtype), f"{who}: bossdb://, scale {k}")
        beyond = whole.copy()
        beyond[inside] = 0  # bossDB's frame may be one voxel wider: the fill value there
        assert not beyond.any(), f"{who}: bossdb://, scale {k}: data beyond the store's scale"


# -- OME-Zarr by zarr-python ----------------------------------------------------------------------

ZARR_SHAPE = (7, 37, 41)         # z, y, x
ZARR_OFFSET = (3, 5, 9)          # voxels, a multiple of no chunk
ZARR_CHUNKS = (4, 16, 16)
ZARR_VOXEL_UM = (0.04, 0.008, 0.008)
ZARR_FACTORS: list[Triple] = [(1, 2, 2), (2, 2, 2)]
ZARR_NM = voxel_sizes((40, 8, 8), ZARR_FACTORS)


def write_ome_zarr(path: Path, data: np.ndarray, names: str = "tczyx", fmt: int = 2) -> None:
    """One level of an OME-Zarr image with axes ``names`` ("tczyx", "czyx" or "zyx"; NGFF 0.4
    on Zarr v2, 0.5 on Zarr v3), by zarr-python alone; ``data`` is (c, z, y, x)."""
    lead = len(names) - 3
    full = data[None].reshape((1, *data.shape)[-len(names):])  # (t = 1, c = 1 dropped)
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    array = group.create_array("0", shape=full.shape, dtype=data.dtype, fill_value=0,
                               chunks=(*[1] * lead, *ZARR_CHUNKS),
                               **({"dimension_names": list(names)} if fmt == 3 else {}))
    array[...] = full
    ms = {
        "name": "hand",
        "axes": [{"name": n, "type": {"t": "time", "c": "channel"}.get(n, "space"),
                  **({"unit": "micrometer"} if n in "zyx" else {})} for n in names],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [*[1.0] * lead, *ZARR_VOXEL_UM]},
            {"type": "translation", "translation": [*[0.0] * lead, *(
                o * v for o, v in zip(ZARR_OFFSET, ZARR_VOXEL_UM, strict=True))]},
        ]}],
    }
    if fmt == 2:
        group.attrs["multiscales"] = [{**ms, "version": "0.4"}]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}


def image(channels: int, dtype: str, top: int) -> np.ndarray:
    rng = np.random.default_rng(17 + channels)
    return rng.integers(0, top, (channels, *ZARR_SHAPE)).astype(dtype)


def check_ome_zarr_directly(path: Path, refs: list[np.ndarray], names: str = "tczyx",
                            channels: int = 1) -> None:
    """zarr-python and ome-zarr-py read the group as it is now: every level's voxels, and the
    new levels' transformations (micrometres, the centre of the first voxel)."""
    lead = len(names) - 3
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    ms = dict(attrs.get("ome", attrs))["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == list(names)
    assert [d["path"] for d in ms["datasets"]] == [str(k) for k in range(len(refs))]
    voxel = list(ZARR_VOXEL_UM)
    for k, want in enumerate(refs):
        if k:
            voxel = [v * f for v, f in zip(voxel, ZARR_FACTORS[k - 1], strict=True)]
        array = group[ms["datasets"][k]["path"]]
        assert isinstance(array, zarr.Array)
        got = np.asarray(array[...])
        assert got.shape == (1, channels, *want.shape[-3:])[-len(names):], (k, got.shape)
        assert_same(got.reshape(want.shape), want, f"zarr-python, level {k}")
        tr = {t["type"]: t[t["type"]] for t in ms["datasets"][k]["coordinateTransformations"]}
        assert tr["scale"] == pytest.approx([*[1.0] * lead, *voxel]), k
        assert tr["translation"] == pytest.approx([*[0.0] * lead, *(
            o * v0 + (v - v0) / 2 for o, v0, v in zip(ZARR_OFFSET, ZARR_VOXEL_UM, voxel,
                                                       strict=True))]), k
    node = next(iter(Reader(parse_url(str(path)))()))
    assert len(node.data) == len(refs)
    for k, (level, want) in enumerate(zip(node.data, refs, strict=True)):
        assert_same(np.asarray(level).reshape(want.shape), want, f"ome-zarr-py, level {k}")


@pytest.mark.parametrize(("names", "fmt"), [("tczyx", 2), ("zyx", 3)],
                         ids=["tczyx-ngff0.4-zarr2", "zyx-ngff0.5-zarr3"])
def test_ome_zarr_written_through_the_relay_then_downsampled(
        tmp_path: Path, relay_factory: Callable[..., RelayProcess], names: str,
        fmt: int) -> None:
    """zarr-python's image (t = 1, c = 1; or z, y, x): writes through the relay,
    ``voxgate.downsample`` on the upstream adds two levels (1, 2, 2) and (2, 2, 2), the relay
    serves them; a second write and the relay's job (writing the levels through its cache)
    make the new pyramid."""
    path = tmp_path / "img.ome.zarr"
    data = image(1, "uint8", 256)
    write_ome_zarr(path, data, names, fmt)
    url = f"zarr://{path}"
    data = data[0]
    relay = relay_factory(relay_config(tmp_path, {NAME: url}, meta_seconds=0.2))
    # seam 1: the foreign store as the relay serves it (and caches it)
    check_through_relay(relay, url, [data], [ZARR_OFFSET], ZARR_NM, "before")
    # seam 2: writes through the bossDB dialect land in the upstream, read by zarr-python
    new = write_corners(relay, data, ZARR_OFFSET, 250)
    direct = np.asarray(zarr.open_group(str(path), mode="r")["0"][...])
    assert_same(direct.reshape(new.shape), new, "zarr-python after the writes")
    assert_same(cv_whole(relay, NAME, 0), new, "CloudVolume via relay after the writes")
    # seam 3: the upstream's new levels, through the relay and directly
    voxgate.downsample(url, 3, factors=ZARR_FACTORS)
    refs = pyramid(new, ZARR_FACTORS, "image")
    info = f"{relay.url}/precomputed/{NAME}/info"
    until("the new scales", lambda: len(httpx.get(info).json()["scales"]) == 3)
    offs = offsets(ZARR_OFFSET, ZARR_FACTORS)
    check_through_relay(relay, url, refs, offs, ZARR_NM, "ome-zarr")
    check_ome_zarr_directly(path, refs, names)
    # seam 4: a write across the middle, then the relay's job over the pyramid it has cached
    newer = write_middle(relay, new, ZARR_OFFSET)
    start_job(relay)
    refs2 = pyramid(newer, ZARR_FACTORS, "image")
    assert all((a != b).any() for a, b in zip(refs[1:], refs2[1:], strict=True))
    check_through_relay(relay, url, refs2, offs, ZARR_NM, "ome-zarr after the job")
    check_ome_zarr_directly(path, refs2, names)


def test_ome_zarr_of_two_channels_is_served_by_the_precomputed_dialect(
        tmp_path: Path, relay_factory: Callable[..., RelayProcess]) -> None:
    """zarr-python's (t=1, c=2) uint16 image, downsampled upstream: CloudVolume through the
    relay reads both channels at every level; the bossDB dialect refuses its cutouts (400,
    naming the precomputed URL), as docs/relay.md says; the relay's job recomputes both
    channels of the coarser levels (zeroed in the store beforehand by zarr-python)."""
    path = tmp_path / "two.ome.zarr"
    data = image(2, "uint16", 60000)
    write_ome_zarr(path, data)
    url = f"zarr://{path}"
    voxgate.downsample(url, 3, factors=ZARR_FACTORS)
    refs = [data, *downsample_scales(data, ZARR_FACTORS, "image")]  # (c, z, y, x)
    check_ome_zarr_directly(path, refs, "tczyx", 2)
    relay = relay_factory(relay_config(tmp_path, {NAME: url}))
    offs = offsets(ZARR_OFFSET, ZARR_FACTORS)
    for k, want in enumerate(refs):
        cv = cv_layer(relay, NAME, k)
        assert cv.num_channels == 2
        assert list(cv.bounds.minpt) == list(offs[k][::-1]), k
        assert list(cv.resolution) == pytest.approx(ZARR_NM[k][::-1], rel=1e-12), k
        got = np.asarray(cv[cv.bounds]).transpose(3, 2, 1, 0)  # x y z c -> c z y x
        assert_same(got, want, f"CloudVolume via relay, two channels, scale {k}")
    c, e, ch = NAME.split("/")
    rmt = intern_remote(relay)
    chan = rmt.get_channel(ch, c, e)
    z0, y0, x0 = ZARR_OFFSET
    with pytest.raises(HTTPError) as err:
        rmt.get_cutout(chan, 0, [x0, x0 + 2], [y0, y0 + 2], [z0, z0 + 1])
    assert "400" in str(err.value)
    group = zarr.open_group(str(path), mode="r+")
    for k in (1, 2):
        level = group[str(k)]
        assert isinstance(level, zarr.Array)
        level[...] = 0
    start_job(relay)  # (an open relay: every client may downsample a DOWNSAMPLED channel)
    check_ome_zarr_directly(path, refs, "tczyx", 2)
    for k, want in enumerate(refs):
        got = np.asarray(cv_layer(relay, NAME, k)[:, :, :]).transpose(3, 2, 1, 0)
        assert_same(got, want, f"CloudVolume via relay after the job, scale {k}")


# -- N5 by tensorstore ----------------------------------------------------------------------------

N5_SHAPE = (9, 150, 101)         # uint64: more than one relay cell at scale 0
N5_OFFSET = (2, 11, 5)
N5_BLOCK = (4, 16, 16)
N5_VOXEL = (8, 8, 8)
N5_FACTORS: list[Triple] = [(2, 2, 2), (2, 2, 2)]
N5_NM = voxel_sizes(N5_VOXEL, N5_FACTORS)
#: ids far apart, above float precision: none may pass through a float on any hop
N5_IDS = np.array([0, 5, 2**53 + 1, 2**63 + 7], dtype=np.uint64)


def n5_attrs(path: Path, **attrs: Any) -> None:
    f = path / "attributes.json"
    current = json.loads(f.read_text()) if f.exists() else {}
    f.write_text(json.dumps({**current, **attrs}))


def write_n5(root: Path, data: np.ndarray) -> None:
    """An N5 multiscale group with s0 only, axes z, y, x, by tensorstore alone; the offset is
    Paintera's (physical units, the centre of the first voxel, in ``axes`` order)."""
    store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": f"{root}/s0/"},
                     "metadata": {"dimensions": list(data.shape), "blockSize": list(N5_BLOCK),
                                  "dataType": "uint64", "axes": ["z", "y", "x"],
                                  "compression": {"type": "gzip"}}},
                    create=True).result()
    store.write(data).result()
    n5_attrs(root / "s0", resolution=list(N5_VOXEL), units=["nm"] * 3,
             offset=[o * v for o, v in zip(N5_OFFSET, N5_VOXEL, strict=True)])
    n5_attrs(root, n5="2.0.0", multiScale=True, axes=["z", "y", "x"],
             resolution=list(N5_VOXEL), units=["nm"] * 3, downsamplingFactors=[[1, 1, 1]])


def ts_n5(root: Path, k: int) -> np.ndarray:
    """sN as tensorstore alone reads it (z, y, x by its ``axes``), at its own voxel size."""
    store = ts.open({"driver": "n5", "kvstore": {"driver": "file",
                                                 "path": f"{root}/s{k}/"}}).result()
    assert list(store.domain.labels) == ["z", "y", "x"], k
    assert [(u.multiplier, u.base_unit) for u in store.dimension_units] == [
        (float(v), "nm") for v in N5_NM[k]], k
    return np.asarray(store.read().result())


def test_n5_labels_downsampled_upstream_then_written_and_redone_by_the_relay_job(
        tmp_path: Path, relay_factory: Callable[..., RelayProcess]) -> None:
    """tensorstore's z, y, x uint64 group: ``voxgate.downsample`` adds s1, s2; the relay serves
    the pyramid; writes through it; its downsample job (POST /v1/downsample/) recomputes the
    coarser levels, in the upstream and in what it serves."""
    root = tmp_path / "labels.n5"
    data = N5_IDS[np.random.default_rng(23).integers(0, len(N5_IDS), N5_SHAPE)]
    write_n5(root, data)
    url = f"n5://{root}"
    vol = voxgate.open(url)
    assert (vol.kind, tuple(vol.scales[0].offset)) == ("segmentation", N5_OFFSET)
    voxgate.downsample(url, 3, factors=N5_FACTORS)
    old = pyramid(data, N5_FACTORS, "segmentation")
    offs = offsets(N5_OFFSET, N5_FACTORS)
    # seam 1: the new sN as tensorstore reads them, their offsets as voxgate reads them, and
    # Paintera's offset of each (the centre of its first voxel, in the z, y, x of its axes)
    for k, want in enumerate(old):
        assert_same(ts_n5(root, k), want, f"tensorstore s{k} after voxgate.downsample")
        assert tuple(voxgate.open(url).scales[k].offset) == offs[k], k
        attrs = json.loads((root / f"s{k}" / "attributes.json").read_text())
        assert attrs["axes"] == ["z", "y", "x"], k
        assert attrs["offset"] == pytest.approx([o * v0 + (v - v0) / 2 for o, v0, v in zip(
            N5_OFFSET, N5_VOXEL, N5_NM[k], strict=True)]), k
    relay = relay_factory(relay_config(tmp_path, {NAME: url}))
    check_through_relay(relay, url, old, offs, N5_NM, "n5 before the writes")  # (all cached now)
    job = f"{relay.url}/v1/downsample/{NAME}/"
    assert httpx.get(job).json()["status"] == "DOWNSAMPLED"
    new = write_corners(relay, data, N5_OFFSET, 2**64 - 3)
    assert httpx.get(job).json()["status"] == "NOT_DOWNSAMPLED"
    assert_same(ts_n5(root, 0), new, "tensorstore s0 after the writes")
    start_job(relay)
    refs = pyramid(new, N5_FACTORS, "segmentation")
    assert all((a != b).any() for a, b in zip(old[1:], refs[1:], strict=True))
    check_through_relay(relay, url, refs, offs, N5_NM, "n5 after the job")
    for k, want in enumerate(refs):
        assert_same(ts_n5(root, k), want, f"tensorstore s{k} after the job")


# -- precomputed by CloudVolume -------------------------------------------------------------------

PC_SIZE = (45, 38, 9)            # x, y, z
PC_OFFSET_XYZ = (13, 6, 3)
PC_CHUNK = (16, 16, 4)
PC_BLOCK = (4, 4, 2)             # compressed_segmentation block size, not 8 x 8 x 8
PC_RES = (8, 8, 40)
PC_FACTORS: list[Triple] = [(1, 2, 2), (1, 2, 2)]  # z, y, x
PC_NM = voxel_sizes(PC_RES[::-1], PC_FACTORS)
PC_IDS = np.array([0, 3, 70000, 2**32 - 1], dtype=np.uint32)


def write_precomputed(path: Path) -> np.ndarray:
    """A one-scale uint32 compressed_segmentation layer made by CloudVolume; returns z, y, x."""
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="segmentation", data_type="uint32",
        encoding="compressed_segmentation", resolution=list(PC_RES),
        voxel_offset=list(PC_OFFSET_XYZ), volume_size=list(PC_SIZE), chunk_size=list(PC_CHUNK),
        compressed_segmentation_block_size=list(PC_BLOCK))
    cv = CloudVolume(f"file://{path}", info=info, progress=False)
    cv.commit_info()
    data = PC_IDS[np.random.default_rng(29).integers(0, len(PC_IDS), PC_SIZE[::-1])]
    cv[cv.bounds] = np.asfortranarray(data.transpose(2, 1, 0))[..., None]
    return data


def cv_direct(path: Path, mip: int) -> np.ndarray:
    cv = CloudVolume(f"file://{path}", mip=mip, progress=False, fill_missing=False,
                     bounded=True, cache=False)
    return np.asarray(cv[cv.bounds])[..., 0].transpose(2, 1, 0)


def test_precomputed_cseg_written_through_the_relay_downsampled_upstream_and_by_the_job(
        tmp_path: Path, relay_factory: Callable[..., RelayProcess]) -> None:
    """CloudVolume's layer: writes through the relay, ``voxgate.downsample`` on the upstream
    adds two scales (CloudVolume's rules: scale 0's encoding and block size), the relay serves
    them; a second write and the relay's job make the pyramid of the new data."""
    path = tmp_path / "seg"
    data = write_precomputed(path)
    url = f"precomputed://file://{path}"
    offset = PC_OFFSET_XYZ[::-1]
    relay = relay_factory(relay_config(tmp_path, {NAME: url}, meta_seconds=0.2))
    check_through_relay(relay, url, [data], [offset], PC_NM, "precomputed before")
    new = write_corners(relay, data, offset, 2**32 - 2)
    assert_same(cv_direct(path, 0), new, "CloudVolume directly after the writes")
    voxgate.downsample(url, 3, factors=PC_FACTORS)
    refs = pyramid(new, PC_FACTORS, "segmentation")
    offs = offsets(offset, PC_FACTORS)
    info = f"{relay.url}/precomputed/{NAME}/info"
    until("the new scales", lambda: len(httpx.get(info).json()["scales"]) == 3)
    check_through_relay(relay, url, refs, offs, PC_NM, "precomputed after voxgate.downsample")
    stored = json.loads((path / "info").read_text())
    for k, want in enumerate(refs):
        s = stored["scales"][k]
        assert s["encoding"] == "compressed_segmentation", k
        assert s["compressed_segmentation_block_size"] == list(PC_BLOCK), k
        assert s["voxel_offset"] == list(offs[k][::-1]), k
        assert s["size"] == list(want.shape[::-1]), k
        assert_same(cv_direct(path, k), want, f"CloudVolume directly, scale {k}")
    # a second write, then the relay's job over the pyramid it has cached
    newer = write_middle(relay, new, offset)
    start_job(relay)
    refs2 = pyramid(newer, PC_FACTORS, "segmentation")
    assert all((a != b).any() for a, b in zip(refs[1:], refs2[1:], strict=True))
    check_through_relay(relay, url, refs2, offs, PC_NM, "precomputed after the job")
    for k, want in enumerate(refs2):
        assert_same(cv_direct(path, k), want, f"CloudVolume directly after the job, scale {k}")
