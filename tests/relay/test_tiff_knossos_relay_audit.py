"""Audit: a scientist's TIFF stacks and KNOSSOS datasets served by ``voxgate serve`` and read by
the established clients, end to end.

Stores, all at odd extents (no axis a multiple of any tile, strip or cube), some at a voxel
offset, several with coarser scales:

- TIFF files made by voxgate (tiled, uncompressed and zlib, at an offset) and by tifffile itself
  (an OME-TIFF of strips, an ImageJ hyperstack of zlib tiles with a predictor, an OME-TIFF
  pyramid of SubIFDs);
- directories of TIFF slices made by voxgate and by tifffile (``s0.tif`` ... ``s10.tif``:
  natural order; ImageJ slices whose voxel size is in each slice's tags);
- KNOSSOS datasets made by voxgate (``.k.toml``, three scales, an offset) and by hand (a classic
  ``knossos.conf`` and raw 128^3 cubes, x fastest, in ``mag1``, ``mag2`` and ``mag4``).

One relay (no ``[auth]``: CloudVolume cannot send boss tokens) serves them all.  For each, the
real ``intern`` client (bossDB dialect) and CloudVolume (precomputed dialect) read the whole
volume and unaligned boxes at every scale, and must get the numpy array the test holds, voxel
for voxel, with the voxel sizes, offsets and extents the store has.  Writes through intern at
unaligned boxes that reach the far edges (at scale 0 and at a coarser scale) must be read back
at once through both dialects and through the store's own bytes (tifffile, raw cube files),
and must leave the store's geometry as it was (a relay started afterwards reports the same).
Bad input (boxes outside the volume, a resolution that does not exist, a body of the wrong
dtype or size) must get a 4xx and write nothing.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blosc
import httpx
import numpy as np
import pytest
import tifffile

import voxgate
from voxgate.remotes.tiff import natural_key

from ..remotes.test_knossos import cube_file, write_classic
from .conftest import RelayProcess, free_port, start_relay

TOKEN = "any"  # an open relay: any token reads and writes
SHAPE = (9, 45, 51)  # z, y, x


@dataclass
class Store:
    """One served store and the truth about it (z, y, x arrays, one per scale)."""

    name: str                      # the relay experiment (channel audit/NAME/ch)
    url: str
    truth: list[np.ndarray]
    offsets: list[tuple[int, int, int]]
    voxel_sizes: list[tuple[float, float, float]]  # z, y, x in nm
    direct: Callable[[int], np.ndarray]  # the scale as the store's own library reads it
    files: Path                    # everything on disk that belongs to the store
    write_scales: tuple[int, ...] = (0,)
    extra: dict[str, Any] = field(default_factory=dict)

    def bounds(self, scale: int) -> tuple[tuple[int, int], ...]:
        """(z0, z1), (y0, y1), (x0, x1) of the scale."""
        return tuple((o, o + n) for o, n in zip(self.offsets[scale], self.truth[scale].shape,
                                                strict=True))

    def box(self, scale: int, z: tuple[int, int], y: tuple[int, int],
            x: tuple[int, int]) -> np.ndarray:
        (oz, oy, ox) = self.offsets[scale]
        return self.truth[scale][z[0] - oz:z[1] - oz, y[0] - oy:y[1] - oy, x[0] - ox:x[1] - ox]


# -- the stores ------------------------------------------------------------------------------------
def _rand(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    hi = 255 if dtype == "uint8" else 65000
    return rng.integers(1, hi, shape, dtype=np.dtype(dtype))


def _tiff_direct(path: Path) -> Callable[[int], np.ndarray]:
    def read(scale: int) -> np.ndarray:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            level = series.levels[scale] if scale else series
            return np.asarray(level.asarray())
    return read


def _slices_direct(path: Path) -> Callable[[int], np.ndarray]:
    def read(scale: int) -> np.ndarray:
        assert scale == 0
        files = sorted(path.glob("*.tif"), key=lambda p: natural_key(p.name))
        return np.stack([tifffile.imread(f) for f in files])
    return read


def _knossos_direct(root: Path, name: str, mags: list[int], cube_zyx: tuple[int, int, int],
                    shapes: list[tuple[int, int, int]]) -> Callable[[int], np.ndarray]:
    """The scale assembled from its raw cube files, read as the format lays them out (x fastest,
    one file per cube, anchored at the dataset's origin), not through voxgate."""
    def read(scale: int) -> np.ndarray:
        cz, cy, cx = cube_zyx
        nz, ny, nx = shapes[scale]
        gz, gy, gx = -(-nz // cz), -(-ny // cy), -(-nx // cx)
        out = np.zeros((gz * cz, gy * cy, gx * cx), np.uint8)
        for z in range(gz):
            for y in range(gy):
                for x in range(gx):
                    f = cube_file(root, name, mags[scale], x, y, z)
                    if f.exists():
                        raw = f.read_bytes()
                        assert len(raw) == cz * cy * cx, f
                        out[z * cz:(z + 1) * cz, y * cy:(y + 1) * cy, x * cx:(x + 1) * cx] = \
                            np.frombuffer(raw, np.uint8).reshape(cx, cy, cz, order="F").T
        return out[:nz, :ny, :nx]
    return read


def make_stores(d: Path) -> dict[str, Store]:
    rng = np.random.default_rng(2024)
    stores: dict[str, Store] = {}

    # a TIFF file made by voxgate: tiled (16 x 16), uncompressed, at an offset
    off = (3, 5, 7)
    arr = _rand(rng, SHAPE, "uint16")
    vol = voxgate.create(f"tiff://{d}/vg.tif", shape=SHAPE, chunks=(4, 16, 16), dtype="uint16",
                         voxel_size=(40, 6, 5), offset=off)
    vol[:] = arr
    stores["tifvg"] = Store("tifvg", f"tiff://{d}/vg.tif", [arr], [off], [(40, 6, 5)],
                            _tiff_direct(d / "vg.tif"), d / "vg.tif")

    # the same made by voxgate with zlib tiles (a write appends the tile, moves its entry)
    arr = _rand(rng, SHAPE, "uint8")
    vol = voxgate.create(f"tiff://{d}/vgz.tif", shape=SHAPE, chunks=(9, 16, 32), dtype="uint8",
                         voxel_size=(30, 4, 4), compression="zlib")
    vol[:] = arr
    stores["tifvgz"] = Store("tifvgz", f"tiff://{d}/vgz.tif", [arr], [(0, 0, 0)], [(30, 4, 4)],
                             _tiff_direct(d / "vgz.tif"), d / "vgz.tif")

    # an OME-TIFF of uncompressed strips (7 rows each: the last holds 3) made by tifffile
    arr = _rand(rng, SHAPE, "uint16")
    tifffile.imwrite(d / "tf.ome.tif", arr, ome=True, rowsperstrip=7, photometric="minisblack",
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 0.05, "PhysicalSizeY": 0.008,
                               "PhysicalSizeX": 0.0075})
    stores["tiftf"] = Store("tiftf", f"tiff://{d}/tf.ome.tif", [arr], [(0, 0, 0)],
                            [(50, 8, 7.5)], _tiff_direct(d / "tf.ome.tif"), d / "tf.ome.tif")

    # an OME-TIFF pyramid (SubIFDs, tiles 16 x 16, zlib) made by tifffile: y and x halved twice
    l0 = _rand(rng, SHAPE, "uint8")
    levels = [l0, _rand(rng, (9, 23, 26), "uint8"), _rand(rng, (9, 12, 13), "uint8")]
    with tifffile.TiffWriter(d / "pyr.ome.tif", ome=True) as tw:
        tw.write(l0, subifds=2, tile=(16, 16), compression="zlib", photometric="minisblack",
                 metadata={"axes": "ZYX", "PhysicalSizeZ": 0.04, "PhysicalSizeY": 0.006,
                           "PhysicalSizeX": 0.005})
        for lv in levels[1:]:
            tw.write(lv, subfiletype=1, tile=(16, 16), compression="zlib",
                     photometric="minisblack")
    stores["tifpyr"] = Store("tifpyr", f"tiff://{d}/pyr.ome.tif", levels, [(0, 0, 0)] * 3,
                             [(40, 6, 5), (40, 12, 10), (40, 24, 20)],
                             _tiff_direct(d / "pyr.ome.tif"), d / "pyr.ome.tif",
                             write_scales=(0, 1))

    # an ImageJ hyperstack made by tifffile: zlib tiles with the horizontal-differencing
    # predictor (the usual way of saving compressed stacks), voxel size in ImageJ's tags
    arr = _rand(rng, SHAPE, "uint16")
    tifffile.imwrite(d / "ij.tif", arr, imagej=True, tile=(16, 16), compression="zlib",
                     predictor=True, resolution=(1 / 0.005, 1 / 0.006),
                     metadata={"axes": "ZYX", "unit": "um", "spacing": 0.04})
    stores["tifij"] = Store("tifij", f"tiff://{d}/ij.tif", [arr], [(0, 0, 0)], [(40, 6, 5)],
                            _tiff_direct(d / "ij.tif"), d / "ij.tif")

    # a directory of slices made by voxgate
    arr = _rand(rng, SHAPE, "uint8")
    vol = voxgate.create(f"tiff://{d}/vgslices", shape=SHAPE, chunks=(1, 16, 16), dtype="uint8",
                         voxel_size=(45, 9, 9), layout="slices")
    vol[:] = arr
    stores["slvg"] = Store("slvg", f"tiff://{d}/vgslices", [arr], [(0, 0, 0)], [(45, 9, 9)],
                           _slices_direct(d / "vgslices"), d / "vgslices")

    # a directory of slices made by tifffile: s0.tif ... s10.tif (s10 after s9), 16-bit
    arr = _rand(rng, (11, 45, 51), "uint16")
    (d / "tfslices").mkdir()
    for z in range(11):
        tifffile.imwrite(d / "tfslices" / f"s{z}.tif", arr[z], photometric="minisblack")
    (d / "tfslices" / "notes.txt").write_text("not a slice")
    stores["sltf"] = Store("sltf", f"tiff://{d}/tfslices", [arr], [(0, 0, 0)], [(1, 1, 1)],
                           _slices_direct(d / "tfslices"), d / "tfslices")

    # a directory of ImageJ slices made by tifffile (Fiji's "Image Sequence"): the voxel size
    # is in each slice's resolution tags and ImageJ description; zlib with a predictor
    arr = _rand(rng, SHAPE, "uint8")
    (d / "ijslices").mkdir()
    for z in range(SHAPE[0]):
        tifffile.imwrite(d / "ijslices" / f"em_{z:03d}.tif", arr[z], imagej=True,
                         compression="zlib", predictor=True, resolution=(1 / 0.005, 1 / 0.006),
                         metadata={"unit": "um", "spacing": 0.04})
    stores["slij"] = Store("slij", f"tiff://{d}/ijslices", [arr], [(0, 0, 0)], [(40, 6, 5)],
                           _slices_direct(d / "ijslices"), d / "ijslices")

    # a KNOSSOS dataset made by voxgate: .k.toml, 8 x 16 x 16 cubes, three scales, an offset
    off = (3, 5, 7)
    vol = voxgate.create(f"knossos://{d}/knvg", shape=SHAPE, chunks=(8, 16, 16), dtype="uint8",
                         voxel_size=(40, 6, 5), num_scales=3, offset=off)
    truth, offs, sizes, shapes = [], [], [], []
    for s in vol.scales:
        a = _rand(rng, tuple(s.shape), "uint8")
        vol.at_scale(s.index)[:] = a
        truth.append(a)
        offs.append(tuple(int(v) for v in s.offset))
        sizes.append(tuple(float(v) for v in s.voxel_size.zyx()))
        shapes.append(tuple(int(v) for v in s.shape))
    stores["knvg"] = Store("knvg", f"knossos://{d}/knvg", truth, offs, sizes,
                           _knossos_direct(d / "knvg", "knvg", [1, 2, 3], (8, 16, 16), shapes),
                           d / "knvg", write_scales=(0, 1))

    # a classic KNOSSOS dataset written by hand: knossos.conf, 128^3 raw cubes, mag1/2/4;
    # x crosses a cube boundary at mag 1
    ext_xyz = (133, 45, 9)
    mags = {m: _rand(rng, tuple(-(-n // m) for n in ext_xyz), "uint8") for m in (1, 2, 4)}
    write_classic(d / "knhand", "handexp", mags, (5.0, 6.0, 40.0))
    truth = [np.ascontiguousarray(mags[m].transpose(2, 1, 0)) for m in (1, 2, 4)]
    shapes = [t.shape for t in truth]
    stores["knhand"] = Store("knhand", f"knossos://{d}/knhand", truth, [(0, 0, 0)] * 3,
                             [(40, 6, 5), (80, 12, 10), (160, 24, 20)],
                             _knossos_direct(d / "knhand", "handexp", [1, 2, 4], (128,) * 3,
                                             shapes),
                             d / "knhand", write_scales=(0, 2))
    return stores


@dataclass
class Served:
    relay: RelayProcess
    stores: dict[str, Store]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    d = tmp_path_factory.mktemp("audit")
    data = d / "data"
    data.mkdir()
    stores = make_stores(data)
    channels = "".join(f'\n[[channel]]\nname = "audit/{s.name}/ch"\nupstream = "{s.url}"\n'
                       for s in stores.values())
    cfg = d / "relay.toml"
    cfg.write_text(f"""
[server]
host = "127.0.0.1"
state_path = "{d / 'state.json'}"
[cache]
memory_bytes = "32 MiB"
{channels}
""")
    r = start_relay(cfg, free_port())
    yield Served(r, stores)
    r.stop()


NAMES = ["tifvg", "tifvgz", "tiftf", "tifij", "tifpyr", "slvg", "sltf", "slij", "knvg",
         "knhand"]


# -- clients ---------------------------------------------------------------------------------------
def _intern(relay: RelayProcess) -> Any:
    from intern.remote.boss import BossRemote

    return BossRemote({"protocol": "http", "host": f"127.0.0.1:{relay.port}", "token": TOKEN})


def _intern_read(relay: RelayProcess, s: Store, scale: int, z: tuple[int, int],
                 y: tuple[int, int], x: tuple[int, int]) -> np.ndarray:
    rmt = _intern(relay)
    ch = rmt.get_channel("ch", "audit", s.name)
    return np.asarray(rmt.get_cutout(ch, scale, list(x), list(y), list(z)))


def _cv(relay: RelayProcess, s: Store, mip: int, **kw: Any) -> Any:
    from cloudvolume import CloudVolume

    opts = {"bounded": True, "fill_missing": False, **kw}
    return CloudVolume(f"precomputed://{relay.url}/precomputed/audit/{s.name}/ch", mip=mip,
                       progress=False, cache=False, **opts)


def _cv_read(cv: Any, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> np.ndarray:
    return np.asarray(cv[x[0]:x[1], y[0]:y[1], z[0]:z[1]])[..., 0].transpose(2, 1, 0)


def _boxes(s: Store, scale: int) -> list[tuple[tuple[int, int], ...]]:
    """The whole scale, and unaligned boxes: interior, at the far edges, one voxel."""
    (z0, z1), (y0, y1), (x0, x1) = s.bounds(scale)
    nz, ny, nx = z1 - z0, y1 - y0, x1 - x0
    out = [((z0, z1), (y0, y1), (x0, x1)),
           ((z0 + nz // 3, z1 - nz // 4), (y0 + 3, y1 - ny // 3), (x0 + 5, x1 - 2)),
           ((z1 - max(1, nz // 2), z1), (y1 - max(1, ny // 3), y1), (x1 - max(1, nx // 2) - 1,
                                                                      x1)),
           ((z1 - 1, z1), (y1 - 1, y1), (x1 - 1, x1))]
    return [b for b in out if all(a < b_ for a, b_ in b)]


# -- reads -----------------------------------------------------------------------------------------
def _check_geometry(relay: RelayProcess, s: Store) -> None:
    """The store (opened afresh), intern and CloudVolume report the extents, offsets and voxel
    sizes the store was made with, at every scale."""
    nscales = len(s.truth)
    opened = voxgate.open(s.url)
    assert [tuple(sc.shape) for sc in opened.scales] == [t.shape for t in s.truth]
    assert [tuple(sc.offset) for sc in opened.scales] == s.offsets
    for sc, want in zip(opened.scales, s.voxel_sizes, strict=True):
        assert sc.voxel_size.zyx() == pytest.approx(want)
    # intern: the channel's dtype, the experiment's levels, the frame at level 0
    rmt = _intern(relay)
    ch = rmt.get_channel("ch", "audit", s.name)
    assert ch.datatype == s.truth[0].dtype.name
    assert ch.type == "image"
    exp = rmt.get_experiment("audit", s.name)
    assert exp.num_hierarchy_levels == nscales
    frame = rmt.get_coordinate_frame(exp.coord_frame)
    (z0, z1), (y0, y1), (x0, x1) = s.bounds(0)
    assert (frame.x_start, frame.x_stop, frame.y_start, frame.y_stop, frame.z_start,
            frame.z_stop) == (x0, x1, y0, y1, z0, z1)
    assert (frame.z_voxel_size, frame.y_voxel_size, frame.x_voxel_size) == \
        pytest.approx(s.voxel_sizes[0])
    # every level's voxel size, as voxgate's bossdb:// reads them
    ds = httpx.get(f"{relay.url}/v1/downsample/audit/{s.name}/ch/",
                   headers={"Authorization": f"Token {TOKEN}"}).json()
    for k in range(nscales):
        assert ds["voxel_size"][str(k)][::-1] == pytest.approx(s.voxel_sizes[k]), k
    # CloudVolume: every mip's extent, offset and resolution
    for mip in range(nscales):
        cv = _cv(relay, s, mip)
        assert len(cv.available_mips) == nscales
        assert tuple(int(v) for v in cv.volume_size) == s.truth[mip].shape[::-1], mip
        assert tuple(int(v) for v in cv.voxel_offset) == s.offsets[mip][::-1], mip
        assert tuple(float(v) for v in cv.resolution) == pytest.approx(s.voxel_sizes[mip][::-1])
        assert cv.dtype == s.truth[0].dtype


@pytest.mark.parametrize("name", NAMES)
def test_the_clients_report_the_stores_geometry(served: Served, name: str) -> None:
    _check_geometry(served.relay, served.stores[name])


@pytest.mark.parametrize("name", NAMES)
def test_intern_and_cloudvolume_read_every_scale_voxel_for_voxel(served: Served,
                                                                 name: str) -> None:
    s = served.stores[name]
    for scale in range(len(s.truth)):
        cv = _cv(served.relay, s, scale)
        for z, y, x in _boxes(s, scale):
            want = s.box(scale, z, y, x)
            got = _intern_read(served.relay, s, scale, z, y, x)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want, err_msg=f"intern scale {scale} {z, y, x}")
            np.testing.assert_array_equal(_cv_read(cv, z, y, x), want,
                                          err_msg=f"CloudVolume mip {scale} {z, y, x}")


@pytest.mark.parametrize("name", NAMES)
def test_cloudvolume_unbounded_box_across_the_far_edge(served: Served, name: str) -> None:
    """A box that leaves the volume (CloudVolume ``bounded=False, fill_missing=True``): the
    relay serves the clipped edge chunks, the client fills the rest with zeros."""
    s = served.stores[name]
    scale = len(s.truth) - 1
    (z0, z1), (_, y1), (_, x1) = s.bounds(scale)
    cv = _cv(served.relay, s, scale, bounded=False, fill_missing=True)
    z, y, x = (z1 - 2 if z1 - z0 > 2 else z0, z1 + 3), (y1 - 5, y1 + 4), (x1 - 6, x1 + 7)
    got = _cv_read(cv, z, y, x)
    want = np.zeros(tuple(b - a for a, b in (z, y, x)), s.truth[0].dtype)
    inside = s.box(scale, (z[0], z1), (y[0], y1), (x[0], x1))
    want[:inside.shape[0], :inside.shape[1], :inside.shape[2]] = inside
    np.testing.assert_array_equal(got, want)


# -- writes ----------------------------------------------------------------------------------------
def _check_everywhere(served: Served, s: Store) -> None:
    """Every scale, as intern, CloudVolume and the store's own library read it, is the truth."""
    for scale in range(len(s.truth)):
        (z0, z1), (y0, y1), (x0, x1) = s.bounds(scale)
        np.testing.assert_array_equal(s.direct(scale), s.truth[scale],
                                      err_msg=f"the store's own bytes, scale {scale}")
        np.testing.assert_array_equal(
            _intern_read(served.relay, s, scale, (z0, z1), (y0, y1), (x0, x1)), s.truth[scale],
            err_msg=f"intern, scale {scale}")
        np.testing.assert_array_equal(
            _cv_read(_cv(served.relay, s, scale), (z0, z1), (y0, y1), (x0, x1)), s.truth[scale],
            err_msg=f"CloudVolume, scale {scale}")


@pytest.mark.parametrize("name", NAMES)
def test_intern_writes_are_read_back_by_every_reader(served: Served, name: str) -> None:
    s = served.stores[name]
    rmt = _intern(served.relay)
    ch = rmt.get_channel("ch", "audit", s.name)
    rng = np.random.default_rng(hash(name) % 2**32)
    # warm the relay's cache first, so a stale cell would show
    _check_everywhere(served, s)
    for scale in s.write_scales:
        (z0, z1), (y0, y1), (x0, x1) = s.bounds(scale)
        # unaligned, across tile / strip / cube boundaries, up to the far edges
        boxes = [((z0 + 1, z1), (y0 + 3, y1), (x0 + 5, x1)),
                 ((z0, z0 + 2), (y0 + 1, min(y1, y0 + 18)), (x0 + 2, min(x1, x0 + 20)))]
        for z, y, x in boxes:
            if not all(a < b for a, b in (z, y, x)):
                continue
            new = _rand(rng, tuple(b - a for a, b in (z, y, x)), s.truth[0].dtype.name)
            rmt.create_cutout(ch, scale, list(x), list(y), list(z), new)
            s.box(scale, z, y, x)[...] = new
            # read right after the acknowledged write, through both dialects
            np.testing.assert_array_equal(_intern_read(served.relay, s, scale, z, y, x), new)
            np.testing.assert_array_equal(_cv_read(_cv(served.relay, s, scale), z, y, x), new)
        _check_everywhere(served, s)
    # a write changes voxels only: the store, opened afresh, has the geometry it had
    for sc, shape, off, vs in zip(voxgate.open(s.url).scales, [t.shape for t in s.truth],
                                  s.offsets, s.voxel_sizes, strict=True):
        assert (tuple(sc.shape), tuple(sc.offset)) == (shape, off)
        assert sc.voxel_size.zyx() == pytest.approx(vs), f"scale {sc.index}'s voxel size"


def test_a_relay_started_after_the_writes_serves_the_same(served: Served) -> None:
    """A relay opening the written stores afresh (as one restarted, or one that read the
    upstreams' metadata again, does): the same geometry and voxels in both dialects."""
    again = start_relay(served.relay.config, free_port())
    try:
        for s in served.stores.values():
            _check_geometry(again, s)
            for scale in range(len(s.truth)):
                (z0, z1), (y0, y1), (x0, x1) = s.bounds(scale)
                np.testing.assert_array_equal(
                    _intern_read(again, s, scale, (z0, z1), (y0, y1), (x0, x1)),
                    s.truth[scale], err_msg=f"{s.name} scale {scale}")
    finally:
        again.stop()


# -- bad input -------------------------------------------------------------------------------------
def _digest(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _cutout_url(s: Store, res: int | str, z: tuple[int, int], y: tuple[int, int],
                x: tuple[int, int]) -> str:
    return f"/v1/cutout/audit/{s.name}/ch/{res}/{x[0]}:{x[1]}/{y[0]}:{y[1]}/{z[0]}:{z[1]}/"


def _npygz(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return zlib.compress(buf.getvalue())


@pytest.mark.parametrize("name", NAMES)
def test_bad_requests_answer_4xx_and_write_nothing(served: Served, name: str) -> None:
    s = served.stores[name]
    before = _digest(s.files)
    levels = len(s.truth)
    dtype = s.truth[0].dtype
    (z0, z1), (y0, y1), (x0, x1) = s.bounds(0)
    inside = ((z0, z0 + 2), (y0, y0 + 3), (x0, x0 + 4))
    out = [((z0, z1 + 1), (y0, y1), (x0, x1)),              # past the far z edge
           ((z0, z0 + 1), (y1 - 2, y1 + 2), (x0, x0 + 3)),  # past the far y edge
           ((z0, z0 + 1), (y0, y0 + 3), (x1 - 1, x1 + 9))]  # past the far x edge
    if any(s.offsets[0]):
        out.append(((z0 - 1, z0 + 1), (y0, y0 + 3), (x0, x0 + 3)))  # before the offset
    with httpx.Client(base_url=served.relay.url, timeout=60,
                      headers={"Authorization": f"Token {TOKEN}"}) as http:
        def post(url: str, arr: np.ndarray, kind: str = "blosc") -> httpx.Response:
            if kind == "blosc":
                body = blosc.compress(np.ascontiguousarray(arr).tobytes(),
                                      typesize=arr.dtype.itemsize)
            else:
                body = _npygz(arr)
            return http.post(url, content=body, headers={"Content-Type": f"application/{kind}"})

        for z, y, x in out:
            shape = tuple(b - a for a, b in (z, y, x))
            r = http.get(_cutout_url(s, 0, z, y, x))
            assert r.status_code == 400, (z, y, x, r.text)
            assert "leaves the coordinate frame" in r.json()["message"]
            r = post(_cutout_url(s, 0, z, y, x), np.full(shape, 7, dtype))
            assert r.status_code == 400, (z, y, x, r.text)
        # coarser scales: past the frame; and, where the frame has a voxel more than the
        # scale (an offset that is not a multiple of the factor), a write reaching into it
        ds = http.get(f"/v1/downsample/audit/{s.name}/ch/").json()
        for k in range(1, levels):
            (kz0, kz1), (ky0, ky1), (_, kx1) = s.bounds(k)
            box = ((kz0, kz0 + 1), (ky0, ky0 + 2), (kx1 - 1, kx1 + 5))
            r = http.get(_cutout_url(s, k, *box))
            assert r.status_code == 400, (k, r.text)
            r = post(_cutout_url(s, k, *box), np.full((1, 2, 6), 7, dtype))
            assert r.status_code == 400, (k, r.text)
            fx, fy, fz = ds["extent"][str(k)]
            if (fx, fy, fz) != (kx1, ky1, kz1):
                box = ((kz1 - 1, fz), (ky1 - 1, fy), (kx1 - 1, fx))
                r = post(_cutout_url(s, k, *box), np.full(tuple(b - a for a, b in box), 7,
                                                          dtype))
                assert r.status_code == 400, (k, box, r.text)
        # a resolution that does not exist
        shape = tuple(b - a for a, b in inside)
        for res in (levels, 9, "-1", "x"):
            r = http.get(_cutout_url(s, res, *inside))
            assert r.status_code == 400, (res, r.text)
            r = post(_cutout_url(s, res, *inside), np.full(shape, 7, dtype))
            assert r.status_code == 400, (res, r.text)
        # bodies of the wrong dtype: a .npy that says so, a blosc buffer of the wrong size
        wrong = np.dtype("uint16") if dtype == np.uint8 else np.dtype("uint8")
        for kind in ("npygz", "blosc"):
            r = post(_cutout_url(s, 0, *inside), np.full(shape, 7, wrong), kind)
            assert r.status_code == 400, (kind, r.text)
        r = post(_cutout_url(s, 0, *inside), np.full(shape, 7, np.float32), "npygz")
        assert r.status_code == 400, r.text
        # intern, handed an array of the wrong dtype, sends it as it is: refused too
        from requests import HTTPError

        rmt = _intern(served.relay)
        ch = rmt.get_channel("ch", "audit", s.name)
        with pytest.raises(HTTPError, match="400"):
            rmt.create_cutout(ch, 0, list(inside[2]), list(inside[1]), list(inside[0]),
                              np.full(shape, 7, wrong))
        # precomputed: a scale that does not exist, a chunk outside the volume
        r = http.get(f"/precomputed/audit/{s.name}/ch/s{levels}/0-1_0-1_0-1")
        assert r.status_code == 404, r.text
        r = http.get(f"/precomputed/audit/{s.name}/ch/s0/{x1}-{x1 + 1}_{y0}-{y0 + 1}_{z0}-{z0 + 1}")
        assert r.status_code == 404, r.text
    assert _digest(s.files) == before, "a refused request changed the store"
    np.testing.assert_array_equal(
        _intern_read(served.relay, s, 0, (z0, z1), (y0, y1), (x0, x1)), s.truth[0])
