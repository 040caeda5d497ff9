"""One journey, checked at its seams against brute force: a volume of odd shape at an offset
that is a multiple of no chunk is written into a store (OME-Zarr, precomputed on files,
WEBKNOSSOS), downsampled by ``voxgate.downsample`` (3 scales), served by a relay, and every
scale is read back through both of the relay's dialects by the clients people use: CloudVolume
(precomputed over HTTP, and every chunk the ``info`` names fetched and decoded by hand), the
real ``intern`` and voxgate's ``bossdb://`` (bossDB REST).  Each read is compared voxel for
voxel with ``voxgate.open(store).at_scale(k).read()`` and with the numpy pyramid of
tests/services/numpy_reference.py (``start=offset`` for WEBKNOSSOS, whose mags lie on the grid
through 0: docs/services/downsample.md, ``pyramid_anchor``).

Then writes: through the relay's bossDB dialect (intern and ``bossdb://``) at scale 0, a
downsample, and CloudVolume through the relay must show the new coarse voxels: a downsample
of the upstream that adds its scales (the relay takes in the changed metadata,
docs/relay.md "Changes made outside the relay"), and the relay's own downsample job over a
pyramid it had cached.  (A downsample run on the upstream itself over scales that exist
changes no metadata, so the relay's cached coarse cells stay until evicted: documented there,
not checked here.)
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cloudvolume import CloudVolume
from intern.remote.boss import BossRemote
from requests import HTTPError

import voxgate
from voxgate.formats.precomputed_chunks import decode_chunk

from ..services.numpy_reference import downsample_scales
from .conftest import RelayProcess, free_port, start_relay

SHAPE = (9, 45, 51)  # z, y, x: odd everywhere
#: a multiple of no chunk; x = 46 is odd at scale 1 (23), so at scale 2 a pyramid on the grid
#: through 0 (WEBKNOSSOS) is one voxel wider (14) than one anchored at the offset (13)
OFFSET = (3, 7, 46)
CHUNKS = (4, 16, 16)
VOXEL = (8, 8, 8)
FACTORS = [(2, 2, 2), (2, 2, 2)]
#: uint64 segmentations are larger: several relay cells (1 MiB) at scale 0, the far ones partial
BIG = (9, 150, 151)
TOKEN = "any"  # the relays here are open

STORES = ("zarr", "precomputed", "webknossos")
KINDS = {"img8": ("image", "uint8", SHAPE), "seg32": ("segmentation", "uint32", SHAPE),
         "seg64": ("segmentation", "uint64", BIG)}
#: per scale, (z, y, x): offsets (floor) and shapes, anchored at the offset / at the origin
OFFSETS = [OFFSET, (1, 3, 23), (0, 1, 11)]
SHAPES = {"offset": [SHAPE, (5, 23, 26), (3, 12, 13)],
          "origin": [SHAPE, (5, 23, 26), (3, 12, 14)]}


def store_url(root: Path, store: str, name: str) -> str:
    return {"zarr": f"zarr://{root}/{name}.ome.zarr",
            "precomputed": f"precomputed://file://{root}/{name}",
            "webknossos": f"webknossos://{root}/wk/{name}"}[store]


def anchor(store: str) -> str:
    return "origin" if store == "webknossos" else "offset"


@functools.cache
def level0(kind: str, dtype: str, shape: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "image":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    top = 2**32 - 5 if dtype == "uint32" else 2**40 + 3  # ids far from small
    ids = np.array([0, 5, 7, top], dtype=dtype)  # a small alphabet: ties in many blocks
    return ids[rng.integers(0, 4, shape)]


def reference(data: np.ndarray, kind: str, store: str) -> list[np.ndarray]:
    """Level 0 and the numpy pyramid of it, on the store's pyramid anchor."""
    start = OFFSET if anchor(store) == "origin" else None
    return [data, *downsample_scales(data, FACTORS, kind, start=start)]


@functools.cache
def cached_reference(key: str, store_anchor: str) -> list[np.ndarray]:
    """The numpy pyramid of ``level0(*KINDS[key])`` (once per anchor)."""
    kind, dtype, shape = KINDS[key]
    start = OFFSET if store_anchor == "origin" else None
    data = level0(kind, dtype, shape)
    return [data, *downsample_scales(data, FACTORS, kind, start=start)]


def make_volume(url: str, data: np.ndarray, kind: str, num_scales: int = 3) -> None:
    vol = voxgate.create(url, shape=data.shape, chunks=CHUNKS, dtype=data.dtype.name,
                         voxel_size=VOXEL, kind=kind, offset=OFFSET)
    vol[:] = data
    if num_scales > 1:
        voxgate.downsample(url, num_scales)


def relay_config(d: Path, channels: dict[str, str], meta_seconds: float = 10) -> Path:
    cfg = d / "relay.toml"
    cfg.write_text(f"""
[server]
state_path = "{d / 'state.json'}"
upstream_meta_seconds = {meta_seconds}
[cache]
memory_bytes = "64 MiB"
""" + "".join(f'[[channel]]\nname = "{name}"\nupstream = "{url}"\n'
              for name, url in channels.items()))
    return cfg


def assert_same(got: np.ndarray, want: np.ndarray, who: str) -> None:
    assert got.shape == want.shape, f"{who}: shape {got.shape}, want {want.shape}"
    bad = int(np.count_nonzero(got != want))
    assert bad == 0, f"{who}: {bad} of {want.size} voxels differ"


def cv_layer(relay: RelayProcess, name: str, mip: int) -> Any:
    return CloudVolume(f"precomputed://{relay.url}/precomputed/{name}", mip=mip,
                       progress=False, fill_missing=False, bounded=True, cache=False)


def cv_whole(relay: RelayProcess, name: str, mip: int) -> np.ndarray:
    """The whole scale as CloudVolume reads it, (z, y, x)."""
    cv = cv_layer(relay, name, mip)
    return np.asarray(cv[cv.bounds])[..., 0].transpose(2, 1, 0)


def intern_remote(relay: RelayProcess) -> BossRemote:
    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": TOKEN})


def upstream_box(url: str, k: int) -> tuple[list[int], list[int], list[int]]:
    """Scale k's extent in the store, as intern's x, y, z ranges."""
    sc = voxgate.open(url).scales[k]
    o, s = sc.offset, sc.shape
    return [o.x, o.x + s.x], [o.y, o.y + s.y], [o.z, o.z + s.z]


def until(what: str, check: Callable[[], bool], seconds: float = 30.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"the relay never showed {what}")


# -- the served pyramids (read only) -------------------------------------------------------------

@dataclass
class Channel:
    name: str          # c/e/ch on the relay
    url: str           # the upstream
    store: str
    kind: str
    dtype: str
    refs: list[np.ndarray]


@dataclass
class Served:
    relay: RelayProcess
    channels: dict[str, Channel]
    aniso: Channel     # (16, 8, 8) nm: voxgate's default factors (1, 2, 2), then (2, 2, 2)


ANISO_VOXEL = (16, 8, 8)
ANISO_FACTORS = [(1, 2, 2), (2, 2, 2)]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("odd-pyramids")
    channels: dict[str, Channel] = {}
    for store, (key, (kind, dtype, shape)) in itertools.product(STORES, KINDS.items()):
        url = store_url(root, store, key)
        make_volume(url, level0(kind, dtype, shape), kind)
        channels[f"{store}-{key}"] = Channel(f"odd/{store}-{key}/vol", url, store, kind, dtype,
                                             cached_reference(key, anchor(store)))
    aniso_url = f"zarr://{root}/aniso.ome.zarr"
    data = level0("image", "uint8", SHAPE)
    vol = voxgate.create(aniso_url, shape=SHAPE, chunks=CHUNKS, dtype="uint8",
                         voxel_size=ANISO_VOXEL, offset=OFFSET)
    vol[:] = data
    voxgate.downsample(aniso_url, 3)  # default factors toward isotropy
    aniso = Channel("odd/aniso/vol", aniso_url, "zarr", "image", "uint8",
                    [data, *downsample_scales(data, ANISO_FACTORS, "image")])
    cfg = relay_config(root, {c.name: c.url for c in [*channels.values(), aniso]})
    relay = start_relay(cfg, free_port())
    yield Served(relay, channels, aniso)
    relay.stop()


CASES = [f"{s}-{k}" for s, k in itertools.product(STORES, KINDS)]


@pytest.mark.parametrize("case", CASES)
def test_the_store_holds_the_numpy_pyramid(served: Served, case: str) -> None:
    ch = served.channels[case]
    vol = voxgate.open(ch.url)
    shapes = SHAPES[anchor(ch.store)] if ch.refs[0].shape == SHAPE else None
    for k, want in enumerate(ch.refs):
        sc = vol.scales[k]
        assert tuple(sc.offset) == OFFSETS[k], (case, k)
        if shapes is not None:
            assert tuple(sc.shape) == shapes[k], (case, k)
        assert_same(vol.at_scale(k).read(), want, f"{case}: voxgate, scale {k}")


@pytest.mark.parametrize("case", CASES)
def test_the_info_agrees_with_the_upstream_scales(served: Served, case: str) -> None:
    ch = served.channels[case]
    info = httpx.get(f"{served.relay.url}/precomputed/{ch.name}/info").json()
    assert info["type"] == ch.kind
    assert info["data_type"] == ch.dtype
    scales = voxgate.open(ch.url).scales
    assert [s["key"] for s in info["scales"]] == ["s0", "s1", "s2"]
    for sc, entry in zip(scales, info["scales"], strict=True):
        assert entry["voxel_offset"] == list(sc.offset.xyz()), (case, sc.index)
        assert entry["size"] == list(sc.shape.xyz()), (case, sc.index)
        assert entry["resolution"] == [float(v) * 2**sc.index for v in VOXEL[::-1]]
        (chunk,) = entry["chunk_sizes"]
        # whole upstream chunks (the relay's cells are grown from them)
        assert all(c % u == 0 for c, u in zip(chunk, sc.chunks.xyz(), strict=True)), chunk
        assert entry["encoding"] == ("raw" if ch.kind == "image" else "compressed_segmentation")


@pytest.mark.parametrize("case", CASES)
def test_cloudvolume_reads_every_scale_through_the_relay(served: Served, case: str) -> None:
    ch = served.channels[case]
    vol = voxgate.open(ch.url)
    for k, want in enumerate(ch.refs):
        got = cv_whole(served.relay, ch.name, k)
        assert_same(got, want, f"{case}: CloudVolume, scale {k}")
        assert_same(got, vol.at_scale(k).read(), f"{case}: CloudVolume vs the store, scale {k}")
    # a box from the first voxel into the middle, and one from the middle to the far corner
    cv = cv_layer(served.relay, ch.name, 1)
    (x0, y0, z0), (x1, y1, z1) = ([int(v) for v in cv.bounds.minpt],
                                 [int(v) for v in cv.bounds.maxpt])
    ref = ch.refs[1]
    near = np.asarray(cv[x0:x0 + 5, y0:y0 + 3, z0:z0 + 2])[..., 0].transpose(2, 1, 0)
    assert_same(near, ref[:2, :3, :5], f"{case}: CloudVolume near corner")
    far = np.asarray(cv[x1 - 7:x1, y1 - 4:y1, z1 - 1:z1])[..., 0].transpose(2, 1, 0)
    assert_same(far, ref[-1:, -4:, -7:], f"{case}: CloudVolume far corner")


@pytest.mark.parametrize("case", CASES)
def test_every_chunk_the_info_names_is_served_with_its_shape(served: Served, case: str) -> None:
    """Each chunk of each scale's grid (from voxel_offset, clipped at the far edges), fetched and
    decoded by hand: its bytes hold exactly that chunk's shape and voxels."""
    ch = served.channels[case]
    base = f"{served.relay.url}/precomputed/{ch.name}"
    info = httpx.get(f"{base}/info").json()
    with httpx.Client(timeout=30) as http:
        for k, entry in enumerate(info["scales"]):
            off, size, (chunk,) = entry["voxel_offset"], entry["size"], entry["chunk_sizes"]
            block = entry.get("compressed_segmentation_block_size")
            starts = [range(o, o + s, c) for o, s, c in zip(off, size, chunk, strict=True)]
            count = 0
            for xyz in itertools.product(*starts):
                stop = [min(a + c, o + s) for a, c, o, s in zip(xyz, chunk, off, size,
                                                                 strict=True)]
                name = "_".join(f"{a}-{b}" for a, b in zip(xyz, stop, strict=True))
                res = http.get(f"{base}/s{k}/{name}")
                assert res.status_code == 200, (name, res.text)
                shape = tuple(b - a for a, b in zip(xyz, stop, strict=True))[::-1]  # z, y, x
                arr = decode_chunk(res.content, entry["encoding"], (1, *shape),
                                   np.dtype(info["data_type"]),
                                   block_size=block[::-1] if block else None, name=name)
                rel = [a - o for a, o in zip(xyz, off, strict=True)][::-1]
                want = ch.refs[k][tuple(slice(r, r + n) for r, n in zip(rel, shape,
                                                                         strict=True))]
                assert_same(arr[0], want, f"{case}: chunk s{k}/{name}")
                count += 1
            if ch.dtype == "uint64" and k == 0:
                assert count > 1, "the big segmentation should span several chunks"
            # a box one voxel off the grid is no chunk: refused, naming the chunk it starts in
            x, y, z = off[0] + 1, off[1], off[2]
            res = http.get(f"{base}/s{k}/{x}-{x + 1}_{y}-{y + 1}_{z}-{z + 1}")
            assert res.status_code == 400, res.text
            first = "_".join(f"{o}-{min(o + c, o + n)}" for o, c, n in zip(off, chunk, size,
                                                                          strict=True))
            assert first in res.text, res.text


@pytest.mark.parametrize("case", CASES)
def test_intern_reads_every_scale_through_the_relay(served: Served, case: str) -> None:
    ch = served.channels[case]
    rmt = intern_remote(served.relay)
    _, e, c = ch.name.split("/")
    chan = rmt.get_channel(c, "odd", e)
    # bossDB's annotation channels are uint64 whatever the store holds (docs/relay.md)
    assert (chan.type, chan.datatype) == (("image", ch.dtype) if ch.kind == "image"
                                          else ("annotation", "uint64"))
    for k, want in enumerate(ch.refs):
        xs, ys, zs = upstream_box(ch.url, k)
        got = rmt.get_cutout(chan, k, xs, ys, zs)
        assert got.dtype == np.dtype(chan.datatype)
        assert_same(got, want, f"{case}: intern, scale {k}")
        # one voxel at the near corner (inside the upstream's first, partial chunk) and a box
        # at the far corner
        one = rmt.get_cutout(chan, k, [xs[0], xs[0] + 1], [ys[0], ys[0] + 1], [zs[0], zs[0] + 1])
        assert_same(one, want[:1, :1, :1], f"{case}: intern near voxel, scale {k}")
        far = rmt.get_cutout(chan, k, [xs[1] - 3, xs[1]], [ys[1] - 2, ys[1]], [zs[1] - 1, zs[1]])
        assert_same(far, want[-1:, -2:, -3:], f"{case}: intern far corner, scale {k}")


@pytest.mark.parametrize("case", CASES)
def test_bossdb_client_reads_every_scale_through_the_relay(served: Served, case: str) -> None:
    """voxgate's bossdb:// sees bossDB's levels: level k of the frame x0:x1 is
    floor(x0 / 2^k):ceil(x1 / 2^k).  Where the store's pyramid is anchored at an odd offset
    that is one voxel more than the store's scale, and it reads as the fill value
    (docs/relay.md)."""
    ch = served.channels[case]
    vol = voxgate.open(f"bossdb://{served.relay.url}/{ch.name}", token=TOKEN)
    assert vol.dtype == (np.uint64 if ch.kind == "segmentation" else np.dtype(ch.dtype))
    # the relay names the upstream's anchor (bossDB's own levels are "origin")
    assert vol.remote.pyramid_anchor == anchor(ch.store), case
    scales = voxgate.open(ch.url).scales
    for k, want in enumerate(ch.refs):
        up, sc = scales[k], vol.scales[k]
        assert sc.offset == up.offset, (case, k)
        frame_stop = [-(-(o + s) // 2**k) for o, s in zip(OFFSET, ch.refs[0].shape,
                                                          strict=True)]
        assert list(sc.offset + sc.shape) == frame_stop, (case, k)
        got = vol.at_scale(k).read()
        inside = got[tuple(slice(0, n) for n in want.shape)]
        assert_same(inside, want.astype(got.dtype), f"{case}: bossdb://, scale {k}")
        extra = got.copy()
        extra[tuple(slice(0, n) for n in want.shape)] = 0
        assert not extra.any(), f"{case}: bossdb://, scale {k}: beyond the store's scale"


def test_a_pyramid_of_mixed_factors_reads_at_every_level_through_bossdb(served: Served) -> None:
    """(16, 8, 8) nm: voxgate.downsample halves y and x, then all three axes.  bossDB's
    experiment says one rule for every level (its hierarchy_method), so voxgate's bossdb://
    takes each level's voxel size from the downsample status the relay serves."""
    ch = served.aniso
    up = voxgate.open(ch.url).scales
    assert [tuple(s.voxel_size.zyx()) for s in up] == [(16, 8, 8), (16, 16, 16), (32, 32, 32)]
    vol = voxgate.open(f"bossdb://{served.relay.url}/{ch.name}", token=TOKEN)
    rmt = intern_remote(served.relay)
    chan = rmt.get_channel("vol", "odd", "aniso")
    for k, want in enumerate(ch.refs):
        sc = vol.scales[k]
        assert sc.voxel_size.zyx() == up[k].voxel_size.zyx(), k
        assert sc.offset == up[k].offset, k
        got = vol.at_scale(k).read()
        assert_same(got[tuple(slice(0, n) for n in want.shape)], want, f"bossdb://, level {k}")
        xs, ys, zs = upstream_box(ch.url, k)
        assert_same(rmt.get_cutout(chan, k, xs, ys, zs), want, f"intern, level {k}")
        assert_same(cv_whole(served.relay, ch.name, k), want, f"CloudVolume, level {k}")


# -- writes through the relay, then a downsample ---------------------------------------------

def write_both_clients(relay: RelayProcess, name: str, data: np.ndarray) -> np.ndarray:
    """Write a box at the near corner with intern (inside the upstream's first, partial
    chunks) and one at the far corner with bossdb://, at scale 0; return level 0 now."""
    _, e, c = name.split("/")
    rmt = intern_remote(relay)
    chan = rmt.get_channel(c, "odd", e)
    wire = np.dtype(chan.datatype)
    new = data.copy()
    near = (np.arange(4 * 20 * 30).reshape(4, 20, 30) % 200 + 1).astype(wire)
    z0, y0, x0 = OFFSET
    rmt.create_cutout(chan, 0, [x0, x0 + 30], [y0, y0 + 20], [z0, z0 + 4], near)
    new[:4, :20, :30] = near
    vol = voxgate.open(f"bossdb://{relay.url}/{name}", mode="r+", token=TOKEN)
    far = np.full((5, 25, 21), 9, dtype=vol.dtype)
    vol[-5:, -25:, -21:] = far
    new[-5:, -25:, -21:] = 9
    return new


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("key", ["img8", "seg32"])
def test_a_relay_write_then_a_downsample_of_the_upstream_is_served(
        tmp_path: Path, relay_factory: Callable[..., RelayProcess], store: str,
        key: str) -> None:
    """Level 0 alone upstream; writes through the relay; ``voxgate.downsample`` on the upstream
    adds its scales, the relay takes in the new metadata, and CloudVolume through the relay
    reads the numpy pyramid of the written data at every scale."""
    kind, dtype, shape = KINDS[key]
    data = level0(kind, dtype, shape)
    url = store_url(tmp_path, store, key)
    make_volume(url, data, kind, num_scales=1)
    name = "odd/e/vol"
    relay = relay_factory(relay_config(tmp_path, {name: url}, meta_seconds=0.2))
    assert_same(cv_whole(relay, name, 0), data, "CloudVolume before the writes")  # (cached)
    new = write_both_clients(relay, name, data)
    assert_same(voxgate.open(url).read(), new, "the upstream after the writes")
    assert_same(cv_whole(relay, name, 0), new, "CloudVolume after the writes")
    voxgate.downsample(url, 3)
    refs = reference(new, kind, store)
    info = f"{relay.url}/precomputed/{name}/info"
    until("the new scales", lambda: len(httpx.get(info).json()["scales"]) == 3)
    chan = intern_remote(relay).get_channel("vol", "odd", "e")
    for k, want in enumerate(refs):
        assert_same(voxgate.open(url).at_scale(k).read(), want, f"the store, scale {k}")
        assert_same(cv_whole(relay, name, k), want, f"CloudVolume, scale {k}")
        xs, ys, zs = upstream_box(url, k)
        assert_same(intern_remote(relay).get_cutout(chan, k, xs, ys, zs), want,
                    f"intern, scale {k}")


def test_a_uint32_segmentation_refuses_ids_it_cannot_hold(
        tmp_path: Path, relay_factory: Callable[..., RelayProcess]) -> None:
    """Served as a uint64 annotation channel: an id above 2**32 - 1 cannot be stored in the
    upstream, so its write is refused (400) and changes nothing; to_black zeroes."""
    kind, dtype, shape = KINDS["seg32"]
    data = level0(kind, dtype, shape)
    url = store_url(tmp_path, "zarr", "seg32")
    make_volume(url, data, kind, num_scales=1)
    relay = relay_factory(relay_config(tmp_path, {"odd/e/vol": url}))
    rmt = intern_remote(relay)
    chan = rmt.get_channel("vol", "odd", "e")
    z0, y0, x0 = OFFSET
    big = np.full((1, 2, 3), 2**32, np.uint64)
    with pytest.raises(HTTPError) as err:
        rmt.create_cutout(chan, 0, [x0, x0 + 3], [y0, y0 + 2], [z0, z0 + 1], big)
    assert "400" in str(err.value)
    assert_same(voxgate.open(url).read(), data, "the upstream after a refused write")
    top = np.full((1, 2, 3), 2**32 - 1, np.uint64)
    rmt.create_cutout(chan, 0, [x0, x0 + 3], [y0, y0 + 2], [z0, z0 + 1], top)
    stored = voxgate.open(url)
    assert stored.dtype == np.uint32
    assert (stored.read()[:1, :2, :3] == 2**32 - 1).all()
    with relay.client(None) as http:
        res = http.put(f"/v1/cutout/to_black/odd/e/vol/0/{x0}:{x0 + 3}/{y0}:{y0 + 2}/"
                       f"{z0}:{z0 + 1}/")
        assert res.status_code == 200, res.text
    assert not voxgate.open(url).read()[:1, :2, :3].any()


@pytest.mark.parametrize("store", STORES)
def test_the_relay_job_replaces_the_coarse_voxels_it_had_cached(
        tmp_path: Path, relay_factory: Callable[..., RelayProcess], store: str) -> None:
    """A pyramid upstream, every scale read (and cached) through the relay, writes through
    the relay, then its downsample job (``voxgate.downsample`` of the bossdb:// volume): the
    coarse scales CloudVolume reads are the new ones."""
    kind, dtype, _ = KINDS["seg64"]
    data = level0(kind, dtype, SHAPE)  # (the small shape: one relay cell per scale)
    url = store_url(tmp_path, store, "seg64")
    make_volume(url, data, kind)
    name = "odd/e/vol"
    relay = relay_factory(relay_config(tmp_path, {name: url}))
    old = reference(data, kind, store)
    for k, want in enumerate(old):
        assert_same(cv_whole(relay, name, k), want, f"CloudVolume before, scale {k}")
    new = write_both_clients(relay, name, data)
    voxgate.downsample(voxgate.open(f"bossdb://{relay.url}/{name}", mode="r+", token=TOKEN))
    refs = reference(new, kind, store)
    assert any((a != b).any() for a, b in zip(old[1:], refs[1:], strict=True))
    for k, want in enumerate(refs):
        assert_same(voxgate.open(url).at_scale(k).read(), want, f"the store, scale {k}")
        assert_same(cv_whole(relay, name, k), want, f"CloudVolume, scale {k}")
