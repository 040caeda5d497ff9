"""Storage + downsampling journeys on odd shapes, each level read back by the store's own peer.

A volume with odd extents, chunks that divide none of them, a nonzero voxel offset and an
anisotropic voxel size is written (uint8 image; uint64 segmentation with ids above 2**32),
downsampled in place block by block on two threads, and every level is read by voxgate and by
the established library of its store (tensorstore, h5py, zarr-python, ome-zarr-py, CloudVolume,
tifffile; KNOSSOS cubes straight from their documented file layout) and compared with the
brute-force numpy pyramid of tests/services/numpy_reference.py.  What each peer sees of the
metadata (shape, voxel size, offset or translation, factors per level) is checked too.
"""

from __future__ import annotations

import functools
import json
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.services.downsample import downsample_provenance

from .services.numpy_reference import downsample_scales

SHAPE = (19, 37, 29)  # z, y, x
CHUNKS = (4, 8, 8)
OFFSET = (3, 5, 7)
VOXEL = (40.0, 8.0, 8.0)
#: default factors for 40 x 8 x 8 nm: halve y and x until isotropic, then all three
FACTORS = [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
#: per level: shape (ceil), offset (floor), voxel size and cumulative factor, all (z, y, x)
SHAPES = [SHAPE, (19, 19, 15), (19, 10, 8), (10, 5, 4)]
OFFSETS = [OFFSET, (3, 2, 3), (3, 1, 1), (1, 0, 0)]
CUMULATIVE = [(1, 1, 1), (1, 2, 2), (1, 4, 4), (2, 8, 8)]
VOXELS = [tuple(v * f for v, f in zip(VOXEL, c, strict=True)) for c in CUMULATIVE]


@functools.cache
def pyramid(kind: str) -> list[np.ndarray]:
    """Level 0 and the numpy reference levels (computed once per kind)."""
    rng = np.random.default_rng(42)
    if kind == "image":
        data = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    else:  # a small alphabet (ties in most blocks) of ids above 2**32
        ids = np.array([0, 1, 2, 3], dtype=np.uint64) + np.uint64(2**40 + 7)
        data = ids[rng.integers(0, 4, SHAPE)]
    return [data, *downsample_scales(data, FACTORS, kind)]


def assert_level(got: np.ndarray, k: int, kind: str, who: str,
                 want: np.ndarray | None = None) -> None:
    want = pyramid(kind)[k] if want is None else want
    assert got.shape == want.shape, f"{who}, level {k}: shape {got.shape}, want {want.shape}"
    assert got.dtype == want.dtype, f"{who}, level {k}: dtype {got.dtype}, want {want.dtype}"
    bad = int(np.count_nonzero(got != want))
    assert bad == 0, f"{who}, level {k}: {bad} of {want.size} voxels differ"


def build(url: str, kind: str, **options: object) -> None:
    """Create, write level 0, downsample in place block by block, check voxgate's view."""
    data = pyramid(kind)[0]
    vol = voxgate.create(url, shape=SHAPE, chunks=CHUNKS, dtype=data.dtype, voxel_size=VOXEL,
                         kind=kind, offset=OFFSET, **options)
    vol[:] = data
    out = voxgate.downsample(url, 4, block=(1, 1, 1), workers=2)
    details = downsample_provenance(out).details  # type: ignore[union-attr]
    assert details["factors"] == FACTORS
    # several blocks, each whole chunks at every level (a level-0 shard of 2 x 2 x 2 chunks
    # times the factors is the whole volume here)
    assert details["blocks"] > 1 or "sharded" in options
    again = voxgate.open(url)
    assert len(again.scales) == 4
    for k, sc in enumerate(again.scales):
        assert tuple(sc.shape) == SHAPES[k], k
        assert tuple(sc.offset) == OFFSETS[k], k
        assert sc.voxel_size.zyx() == VOXELS[k], k
        assert_level(again.at_scale(k).read(), k, kind, "voxgate")


# -- the stores --------------------------------------------------------------------------------

def check_n5(path: Path, kind: str) -> None:
    import tensorstore as ts

    group = json.loads((path / "attributes.json").read_text())
    assert group["downsamplingFactors"] == [list(c[::-1]) for c in CUMULATIVE]
    assert group["pixelResolution"]["dimensions"] == list(VOXEL[::-1])
    for k in range(4):
        attrs = json.loads((path / f"s{k}" / "attributes.json").read_text())
        assert attrs["dimensions"] == list(SHAPES[k][::-1]), k
        assert attrs["resolution"] == list(VOXELS[k][::-1]), k
        assert attrs["voxgate"]["offset"] == list(OFFSETS[k]), k
        store = ts.open({"driver": "n5", "kvstore": f"file://{path}/s{k}"}).result()
        assert_level(np.asarray(store.read().result()).T, k, kind, "tensorstore n5")


def check_hdf5(path: Path, kind: str) -> None:
    import h5py

    with h5py.File(path, "r") as f:
        for k in range(4):
            ds = f[f"volume/s{k}"]
            assert tuple(ds.attrs["voxel_offset"]) == OFFSETS[k], k
            assert tuple(ds.attrs["resolution"]) == VOXELS[k], k
            assert tuple(ds.attrs["downsamplingFactors"]) == CUMULATIVE[k], k
            assert_level(ds[...], k, kind, "h5py")


def check_ome_zarr(path: Path, kind: str) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ome_zarr.writer's Scaler()
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Reader

    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    datasets = attrs.get("ome", attrs)["multiscales"][0]["datasets"]
    t0 = [o * v for o, v in zip(OFFSET, VOXEL, strict=True)]
    for k, ds in enumerate(datasets):
        # NGFF pixel centres: scale k's first voxel covers level 0's first block
        want = [{"type": "scale", "scale": list(VOXELS[k])},
                {"type": "translation", "translation": [
                    t + (vk - v) / 2 for t, vk, v in zip(t0, VOXELS[k], VOXEL, strict=True)]}]
        assert ds["coordinateTransformations"] == want, k
        assert_level(np.asarray(zarr.open_array(str(path / ds["path"]), mode="r")[...]), k,
                     kind, "zarr-python")
    node = next(iter(Reader(parse_url(str(path)))()))
    assert len(node.data) == 4
    for k, arr in enumerate(node.data):
        assert_level(np.asarray(arr), k, kind, "ome-zarr-py")


def check_precomputed(path: Path, kind: str) -> None:
    import tensorstore as ts
    from cloudvolume import CloudVolume

    info = json.loads((path / "info").read_text())
    for k, sc in enumerate(info["scales"]):
        assert sc["size"] == list(SHAPES[k][::-1]), k
        assert sc["voxel_offset"] == list(OFFSETS[k][::-1]), k
        assert sc["resolution"] == list(VOXELS[k][::-1]), k
        cv = CloudVolume(f"file://{path}", mip=k, progress=False, fill_missing=False,
                         bounded=True)
        assert_level(np.asarray(cv[:, :, :])[..., 0].T, k, kind, "CloudVolume")
        store = ts.open({"driver": "neuroglancer_precomputed", "scale_index": k,
                         "kvstore": f"file://{path}/"}).result()
        assert_level(np.asarray(store.read().result())[..., 0].T, k, kind, "tensorstore")


def check_knossos(path: Path, kind: str) -> None:
    """The .k.toml and the raw cubes, read by the documented layout alone:
    ``magN/xXXXX/yYYYY/zZZZZ/NAME_magN_xXXXX_yYYYY_zZZZZ.raw``, x-fastest uint8 cubes anchored
    at the dataset's first voxel (an absent cube is 0)."""
    name = path.name
    layer = tomllib.loads((path / f"{name}.k.toml").read_text())["Layer"][0]
    assert layer["Extent_px"] == list(SHAPE[::-1])
    assert layer["VoxelSize_nm"] == [list(v[::-1]) for v in VOXELS]
    assert layer["CubeShape_px"] == list(CHUNKS[::-1])
    cz, cy, cx = CHUNKS
    for k in range(4):
        mag = f"mag{k + 1}"
        grid = [-(-n // c) for n, c in zip(SHAPES[k], CHUNKS, strict=True)]
        full = np.zeros([g * c for g, c in zip(grid, CHUNKS, strict=True)], np.uint8)
        for z, y, x in np.ndindex(*grid):
            cube = (path / mag / f"x{x:04d}" / f"y{y:04d}" / f"z{z:04d}"
                    / f"{name}_{mag}_x{x:04d}_y{y:04d}_z{z:04d}.raw")
            if cube.exists():
                full[z * cz:(z + 1) * cz, y * cy:(y + 1) * cy, x * cx:(x + 1) * cx] = \
                    np.frombuffer(cube.read_bytes(), np.uint8).reshape(CHUNKS)
        nz, ny, nx = SHAPES[k]
        assert_level(full[:nz, :ny, :nx], k, kind, "raw cubes")


#: identity-hashed shards of 2 x 2 x 2 chunks at level 0
SHARDS = {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 3, "hash": "identity",
          "minishard_bits": 0, "shard_bits": 6, "minishard_index_encoding": "gzip",
          "data_encoding": "gzip"}

STORES = {
    # name: (URL, peer check, create options)
    "n5": ("n5://{}/v.n5", check_n5, {}),
    "hdf5": ("hdf5://{}/v.h5", check_hdf5, {}),
    "ome-zarr-v2": ("zarr://{}/v.zarr", check_ome_zarr, {"zarr_format": 2}),
    "ome-zarr-v3": ("zarr://{}/v.zarr", check_ome_zarr, {}),
    "precomputed": ("precomputed://file://{}/layer", check_precomputed, {}),
    "precomputed-sharded": ("precomputed://file://{}/layer", check_precomputed,
                            {"sharded": SHARDS}),
    "knossos": ("knossos://{}/kn", check_knossos, {}),
}
CASES = [(s, k) for s in STORES for k in ("image", "segmentation")
         if not (s == "knossos" and k == "segmentation")]  # KNOSSOS raw cubes are uint8


@pytest.mark.parametrize(("store", "kind"), CASES)
def test_odd_pyramid_read_by_the_store_peer(tmp_path: Path, store: str, kind: str) -> None:
    """Segmentations go to precomputed as compressed_segmentation (the default), sharded too."""
    url, check, options = STORES[store]
    build(url.format(tmp_path), kind, **options)
    check(Path(url.format(tmp_path).split("://")[-1]), kind)


# -- TIFF: pyramids written by tifffile, filled in place -------------------------------------

@pytest.mark.parametrize(("shape", "levels"), [((3, 65, 53), 6), ((2, 70, 53), 6)])
def test_tiff_pyramid_of_odd_extents_keeps_its_factors(tmp_path: Path,
                                                       shape: tuple[int, int, int],
                                                       levels: int) -> None:
    """An OME-TIFF pyramid (SubIFDs) whose levels halve y and x rounding up, as tifffile's own
    examples make them: deep levels of odd extents are not level 0's extent over a power of two
    (53 -> 27 -> 14 -> 7 -> 4: 53 / 4 is 13, not 16).  voxgate took the factor of level k as
    round(extent_0 / extent_k), so level 4 of 65 x 53 read as 104 x 104 nm instead of 128 x 128
    and level 6 as 256 x 424; downsample then derived a factor of 1 in x for the last level and
    refused the file.  Every level's voxel size is level 0's times 2**k in y and x; downsample
    fills the levels in place and tifffile reads the numpy pyramid back."""
    import tifffile

    data = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    want = [data, *downsample_scales(data, [(1, 2, 2)] * levels, "image")]
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(np.zeros(shape, np.uint8), subifds=levels, tile=(16, 16),
                 photometric="minisblack",
                 metadata={"axes": "ZYX", "PhysicalSizeX": 0.008, "PhysicalSizeY": 0.008,
                           "PhysicalSizeZ": 0.04})
        for w in want[1:]:
            tw.write(np.zeros(w.shape, np.uint8), subfiletype=1, tile=(16, 16),
                     photometric="minisblack")
    vol = voxgate.open(f"tiff://{path}", mode="r+")
    assert [tuple(s.shape) for s in vol.scales] == [w.shape for w in want]
    assert [s.voxel_size.zyx() for s in vol.scales] == [
        (40.0, 8.0 * 2**k, 8.0 * 2**k) for k in range(levels + 1)]
    vol[:] = data
    voxgate.downsample(vol.url)
    for k in range(levels + 1):
        assert_level(tifffile.imread(path, level=k), k, "image", "tifffile", want[k])
        assert_level(voxgate.open(f"tiff://{path}").at_scale(k).read(), k, "image", "voxgate",
                     want[k])
