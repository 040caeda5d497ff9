"""voxgate.copy at its seams, against brute force.

Sources are made with voxgate.create + voxgate.downsample at an odd shape (9, 45, 51) and an
offset (3, 7, 45) that is not a multiple of the factors ((1, 2, 2) then (2, 2, 2)), on chunks
(4, 16, 20) that divide nothing.  The numpy arrays written, and their pyramids computed by
tests/services/numpy_reference.py (from the first voxel, or on the grid through 0 for
webknossos://), are the truth: every scale of a destination is compared with them as voxgate
reads it and as the store's own library (zarr-python, tensorstore, cloud-volume, h5py,
tifffile; KNOSSOS cubes and WEBKNOSSOS mags by hand) reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
import voxgate.transfer
from voxgate.errors import (
    CapabilityNotSupportedError,
    CorruptChunkError,
    InvalidRequestError,
    PartialWriteError,
    RemoteNotFoundError,
    UnknownSchemeError,
    VoxgateError,
)
from voxgate.remotes.memory import MemoryRemote
from voxgate.remotes.webknossos import WebknossosRemote

from .services.numpy_reference import downsample_scales

SHAPE = (9, 45, 51)
OFFSET = (3, 7, 45)
CHUNKS = (4, 16, 20)
VOXEL = (16, 8, 8)
FACTORS = [(1, 2, 2), (2, 2, 2)]
BIG = 2**53 + 1  # uint64 ids above 2**53: a float on the way would change them


# -- stores: URL, creation options, and a reader that is not voxgate ----------------------------

URLS: dict[str, Callable[[Path, str], str]] = {
    "zarr3": lambda root, name: f"zarr://{root}/{name}.zarr",
    "zarr2": lambda root, name: f"zarr://{root}/{name}.zarr",
    "n5": lambda root, name: f"n5://{root}/{name}.n5",
    "pre_raw": lambda root, name: f"precomputed://file://{root}/{name}",
    "pre_cseg": lambda root, name: f"precomputed://file://{root}/{name}",
    "hdf5": lambda root, name: f"hdf5://{root}/{name}.h5#/v",
    "tiff": lambda root, name: f"tiff://{root}/{name}.tif",
    "knossos": lambda root, name: f"knossos://{root}/{name}",
    "wk": lambda root, name: f"webknossos://{root}/{name}",
    "mem": lambda root, name: f"mem://{root.name}-{name}",
}
CREATE: dict[str, dict[str, Any]] = {
    "zarr2": {"zarr_format": 2},
    "pre_raw": {"encoding": "raw"},
    "pre_cseg": {"encoding": "compressed_segmentation"},
}
#: where a store keeps its files (None: in memory)
PATHS: dict[str, Callable[[Path, str], Path | None]] = {
    "zarr3": lambda root, name: root / f"{name}.zarr",
    "zarr2": lambda root, name: root / f"{name}.zarr",
    "n5": lambda root, name: root / f"{name}.n5",
    "pre_raw": lambda root, name: root / name,
    "pre_cseg": lambda root, name: root / name,
    "hdf5": lambda root, name: root / f"{name}.h5",
    "tiff": lambda root, name: root / f"{name}.tif",
    "knossos": lambda root, name: root / name,
    "wk": lambda root, name: root / name,
    "mem": lambda root, name: None,
}


def _tensorstore(spec: dict[str, Any]) -> np.ndarray:
    import tensorstore as ts

    return np.asarray(ts.open(spec, open=True, read=True).result().read().result())


def _knossos_cubes(path: Path, scale: int, shape: tuple[int, ...]) -> np.ndarray:
    """A KNOSSOS scale assembled from its raw cube files by hand (cube grid from the first
    voxel, x fastest in a cube)."""
    [conf] = path.glob("*.k.toml")
    cz, cy, cx = (int(v) for v in reversed(
        conf.read_text().split("CubeShape_px = [")[1].split("]")[0].split(",")))
    grid = [-(-n // c) for n, c in zip(shape, (cz, cy, cx), strict=True)]
    out = np.zeros([g * c for g, c in zip(grid, (cz, cy, cx), strict=True)], np.uint8)
    for f in (path / f"mag{scale + 1}").glob("x*/y*/z*/*.raw"):
        x, y, z = (int(p[1:]) for p in f.stem.split("_")[-3:])
        out[z * cz:(z + 1) * cz, y * cy:(y + 1) * cy, x * cx:(x + 1) * cx] = np.frombuffer(
            f.read_bytes(), np.uint8).reshape(cz, cy, cx)
    return out[: shape[0], : shape[1], : shape[2]]


def _wk_mag(path: Path, scale: int, offset: tuple[int, ...], shape: tuple[int, ...]
            ) -> np.ndarray:
    """A WEBKNOSSOS mag read with zarr-python: its array spans [0, end) in x, y, z (c first)."""
    import zarr

    if (path / "datasource-properties.json").exists():  # a dataset of one layer
        props = json.loads((path / "datasource-properties.json").read_text())
        [layer] = props["dataLayers"]
    else:  # a layer of a dataset: dataset/NAME
        props = json.loads((path.parent / "datasource-properties.json").read_text())
        [layer] = [la for la in props["dataLayers"] if la["name"] == path.name]
        path = path.parent
    mag_path = path / layer["mags"][scale]["path"].removeprefix("./")
    arr = zarr.open_array(str(mag_path), mode="r")
    (z0, y0, x0), (z1, y1, x1) = offset, [o + s for o, s in zip(offset, shape, strict=True)]
    return np.asarray(arr[0, x0:x1, y0:y1, z0:z1]).transpose(2, 1, 0)


def native(store: str, root: Path, name: str, scale: int, offset: tuple[int, ...],
           shape: tuple[int, ...]) -> np.ndarray | None:
    """Scale ``scale`` of a store as its own library (or a reader by hand) reads it, ZYX;
    None for mem://."""
    path = PATHS[store](root, name)
    if store in ("zarr3", "zarr2"):
        import zarr

        assert path is not None
        group = zarr.open_group(str(path), mode="r")
        ms = group.attrs["ome"]["multiscales"] if "ome" in group.attrs else \
            group.attrs["multiscales"]
        return np.asarray(zarr.open_array(str(path / ms[0]["datasets"][scale]["path"]),
                                          mode="r")[:])
    if store == "n5":
        return _tensorstore({"driver": "n5", "kvstore": f"file://{path}/s{scale}"}).T
    if store.startswith("pre"):
        from cloudvolume import CloudVolume

        cv = CloudVolume(f"file://{path}", mip=scale, progress=False, fill_missing=True)
        return np.asarray(cv[:, :, :])[..., 0].T
    if store == "hdf5":
        import h5py

        with h5py.File(str(path), "r") as f:
            node = f["v"]
            return np.asarray(node if isinstance(node, h5py.Dataset) else node[f"s{scale}"])
    if store == "tiff":
        import tifffile

        assert scale == 0
        return np.asarray(tifffile.imread(str(path)))
    if store == "knossos":
        assert path is not None
        return _knossos_cubes(path, scale, shape)
    if store == "wk":
        assert path is not None
        return _wk_mag(path, scale, offset, shape)
    return None


# -- sources ------------------------------------------------------------------------------------

#: the sources: store, dtype; every dtype and store appears
SOURCES: dict[str, tuple[str, str]] = {
    "zarr3-u8": ("zarr3", "uint8"),
    "zarr2-u64": ("zarr2", "uint64"),
    "n5-u16": ("n5", "uint16"),
    "pre_raw-u32": ("pre_raw", "uint32"),
    "pre_cseg-u64": ("pre_cseg", "uint64"),
    "hdf5-u32": ("hdf5", "uint32"),
    "tiff-u16": ("tiff", "uint16"),
    "knossos-u8": ("knossos", "uint8"),
    "wk-u32": ("wk", "uint32"),
    "mem-u8": ("mem", "uint8"),
}


def _kind(dtype: str) -> str:
    return "segmentation" if np.dtype(dtype).itemsize >= 4 else "image"


def _data(dtype: str, seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if _kind(dtype) == "image":
        return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True, dtype=dtype)
    base = BIG if dtype == "uint64" else 1
    out = (rng.integers(0, 5, size=shape) + base).astype(dtype)
    out[..., : shape[-1] // 4] = 0  # background, as segmentations have
    out[:, 5:9, 20:40] = np.iinfo(dtype).max  # the largest id
    return out


def levels(data: np.ndarray, kind: str, origin: bool, count: int = 3,
           offset: tuple[int, ...] = OFFSET) -> list[np.ndarray]:
    """Scale 0 and its pyramid by brute force: from the first voxel, or on the grid through
    0 (``origin``, WEBKNOSSOS)."""
    return [data, *downsample_scales(data, FACTORS[: count - 1], kind,
                                     start=offset if origin else None)]


def make_source(store: str, dtype: str, root: Path, name: str, seed: int = 1,
                shape: tuple[int, ...] = SHAPE) -> tuple[str, list[np.ndarray]]:
    """A source at OFFSET, its scales made by voxgate.downsample (tiff: one scale); its URL and
    the brute-force scales it must hold (checked here)."""
    url = URLS[store](root, name)
    kind = _kind(dtype)
    data = _data(dtype, seed, shape)
    vol = voxgate.create(url, shape=shape, dtype=dtype, chunks=CHUNKS, voxel_size=VOXEL,
                         kind=kind, offset=OFFSET, **CREATE.get(store, {}))
    vol[:] = data
    count = 1 if store == "tiff" else 3
    if count > 1:
        voxgate.downsample(url, count)
    want = levels(data, kind, store == "wk", count)
    got = voxgate.open(url)
    assert len(got.scales) == count
    for k, w in enumerate(want):
        np.testing.assert_array_equal(got.at_scale(k).read(), w, err_msg=f"{name} scale {k}")
    return url, want


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, list[np.ndarray]]]:
    root = tmp_path_factory.mktemp("sources")
    return {key: make_source(store, dtype, root, key, seed=i)
            for i, (key, (store, dtype)) in enumerate(SOURCES.items()) if store != "mem"}


def _source(sources: dict[str, tuple[str, list[np.ndarray]]], key: str, root: Path
            ) -> tuple[str, list[np.ndarray]]:
    if SOURCES[key][0] == "mem":  # (mem:// volumes are cleared after every test)
        return make_source("mem", SOURCES[key][1], root, key, seed=9)
    return sources[key]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def assert_holds(url: str, store: str, root: Path, name: str, want: list[np.ndarray],
                 src_url: str, scales: list[int] | None = None) -> None:
    """Every scale of the destination has the source's offset, shape and voxel size, and
    holds ``want`` as voxgate and as the store's own library read it."""
    src, dst = voxgate.open(src_url), voxgate.open(url)
    assert dst.dtype == src.dtype and dst.kind == src.kind
    for k in range(len(want)) if scales is None else scales:
        s, d = src.scales[k], dst.scales[k]
        assert (tuple(d.offset), tuple(d.shape)) == (tuple(s.offset), tuple(s.shape)), k
        assert d.voxel_size.zyx() == pytest.approx(s.voxel_size.zyx()), k
        np.testing.assert_array_equal(dst.at_scale(k).read(), want[k],
                                      err_msg=f"{name} scale {k} (voxgate)")
        theirs = native(store, root, name, k, tuple(d.offset), tuple(d.shape))
        if theirs is not None:
            np.testing.assert_array_equal(theirs, want[k], err_msg=f"{name} scale {k} (native)")


# -- 1. every pair ------------------------------------------------------------------------------

@pytest.mark.parametrize("dst", list(URLS))
def test_every_source_into(tmp_path: Path, dst: str,
                           sources: dict[str, tuple[str, list[np.ndarray]]]) -> None:
    """Each source into a fresh ``dst``: every scale equal voxel for voxel with the same
    offset, shape and voxel size, or refused before anything is created, saying what to do."""
    for key, (store, dtype) in SOURCES.items():
        src_url, want = _source(sources, key, tmp_path)
        name = f"{key}-to-{dst}"
        url = URLS[dst](tmp_path, name)
        path = PATHS[dst](tmp_path, name)
        options = {"zarr_format": 2} if dst == "zarr2" else {}
        kind = _kind(dtype)
        if dst == "pre_cseg" and kind == "image":
            continue  # compressed_segmentation holds segmentations
        if (dst == "pre_raw" and kind == "segmentation") or (
                dst == "pre_cseg" and store == "wk"):
            # a precomputed destination with another encoding than the natural one is made
            # first (copy's options do not choose it); from the first voxel, as precomputed is
            voxgate.create(url, shape=SHAPE, dtype=dtype, chunks=CHUNKS, voxel_size=VOXEL,
                           kind=kind, offset=OFFSET, num_scales=len(want),
                           encoding="raw" if dst == "pre_raw" else "compressed_segmentation")
        if dst == "knossos" and dtype != "uint8":
            with pytest.raises(CapabilityNotSupportedError, match="uint8"):
                voxgate.copy(src_url, url, progress=False)
            assert path is not None and not path.exists()
            continue
        scales = None
        if dst == "tiff" and len(want) > 1:
            with pytest.raises(CapabilityNotSupportedError, match=r"scales=\[0\]"):
                voxgate.copy(src_url, url, progress=False)
            assert path is not None and not path.exists()
            scales = [0]
        if dst == "wk" and len(want) > 1 and store != "wk":
            # a pyramid from the first voxel at an offset that is not a multiple of the
            # factors is not one WEBKNOSSOS can show: refused (its extents agree here)
            with pytest.raises(InvalidRequestError,
                               match=r"grid through 0.*Nothing was created.*scales=\[0\]"):
                voxgate.copy(src_url, url, progress=False)
            assert path is not None and not path.exists()
            # the route the message gives
            voxgate.copy(src_url, url, scales=[0], progress=False)
            voxgate.downsample(url, len(want))
            want = levels(want[0], kind, True, len(want))
        else:
            report = voxgate.copy(src_url, url, scales=scales, progress=False, **options)
            assert report.scales == (scales or list(range(len(want))))
        assert_holds(url, dst, tmp_path, name, want, src_url, scales)
        if scales is None:
            assert len(voxgate.open(url).scales) == len(want)


# -- the grid through 0, both ways --------------------------------------------------------------

def test_a_first_voxel_pyramid_is_refused_by_an_existing_webknossos_layer(tmp_path: Path
                                                                          ) -> None:
    """The layer exists with the same extents (they agree at this shape): its mags lie on the
    grid through 0, the source's are shifted from it, so the copy is refused and the layer is
    left as it was; scale 0 alone is copied and downsample makes the mags."""
    src_url, want = make_source("zarr3", "uint8", tmp_path, "src")
    url = f"webknossos://{tmp_path}/wk"
    voxgate.create(url, shape=SHAPE, dtype="uint8", chunks=CHUNKS, voxel_size=VOXEL,
                   offset=OFFSET, num_scales=3)
    before = snapshot(tmp_path / "wk")
    with pytest.raises(InvalidRequestError, match=r"grid through 0.*scales=\[0\]"):
        voxgate.copy(src_url, url, progress=False)
    assert snapshot(tmp_path / "wk") == before
    voxgate.copy(src_url, url, scales=[0], progress=False)
    voxgate.downsample(url)
    assert_holds(url, "wk", tmp_path, "wk", levels(want[0], "image", True), src_url)
    # one scale only, or offsets that are multiples of the factors: the grids are one
    aligned_url, aligned = make_source("zarr3", "uint8", tmp_path, "aligned", seed=3)
    voxgate.copy(aligned_url, f"webknossos://{tmp_path}/wk1", scales=[0], progress=False)
    even = f"zarr://{tmp_path}/even.zarr"
    voxgate.create(even, shape=SHAPE, dtype="uint8", chunks=CHUNKS, voxel_size=VOXEL,
                   offset=(4, 8, 44))[:] = aligned[0]
    voxgate.downsample(even, 3)
    voxgate.copy(even, f"webknossos://{tmp_path}/wk2", progress=False)
    got = voxgate.open(f"webknossos://{tmp_path}/wk2")
    for k, w in enumerate(levels(aligned[0], "image", True, offset=(4, 8, 44))):
        np.testing.assert_array_equal(got.at_scale(k).read(), w)


@pytest.mark.parametrize("shape", [SHAPE, (10, 44, 51)])
def test_a_webknossos_pyramid_copied_out(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """Mags on the grid through 0 at an odd offset into precomputed, zarr and n5: copied as
    they are (the same offsets, shapes and voxels).  voxgate.downsample on the copy then
    follows the destination's own rule (documented, docs/services/downsample.md): it refuses
    extents that are not the first-voxel ones ((10, 44, 51): one more voxel in y), and where
    they agree it computes the scales again from the first voxel."""
    src_url, want = make_source("wk", "uint32", tmp_path, "wk", shape=shape)
    first_voxel = levels(want[0], "segmentation", False)
    for store in ("pre_cseg", "zarr3", "n5"):
        url = URLS[store](tmp_path, store)
        voxgate.copy(src_url, url, progress=False)
        assert_holds(url, store, tmp_path, store, want, src_url)
        if shape == SHAPE:
            voxgate.downsample(url)
            got = voxgate.open(url)
            for k in (1, 2):
                np.testing.assert_array_equal(got.at_scale(k).read(), first_voxel[k])
        else:
            with pytest.raises(InvalidRequestError, match="cannot fill it consistently"):
                voxgate.downsample(url)
            assert_holds(url, store, tmp_path, store, want, src_url)


def test_a_webknossos_pyramid_into_knossos_is_refused_before_creating(tmp_path: Path) -> None:
    """KNOSSOS derives a scale's shape from the extent (rounded up from the first voxel):
    mags on the grid through 0 with one more voxel cannot be its scales.  The dataset was
    created, then the copy refused it as "must match", leaving an empty dataset behind."""
    src_url, want = make_source("wk", "uint8", tmp_path, "wk", shape=(10, 44, 51))
    with pytest.raises(InvalidRequestError, match=r"scale 1.*scales=\[0\]"):
        voxgate.copy(src_url, f"knossos://{tmp_path}/kn", progress=False)
    assert not (tmp_path / "kn").exists()
    voxgate.copy(src_url, f"knossos://{tmp_path}/kn", scales=[0], progress=False)
    assert_holds(f"knossos://{tmp_path}/kn", "knossos", tmp_path, "kn", want[:1], src_url)


# -- 2. options ---------------------------------------------------------------------------------

def _covered(box: voxgate.Box, sc: Any, factor: list[int], origin: bool) -> tuple[slice, ...]:
    """The voxels (local to the scale) of a coarser scale whose block meets the scale-0
    ``box``, by brute force over the blocks."""
    out = []
    for a, b, f, o, ok, n in zip(box.start, box.stop, factor, OFFSET, sc.offset, sc.shape,
                                 strict=True):
        hits = [j for j in range(n)
                if max(a, (ok + j) * f if origin else o + j * f)
                < min(b, (ok + j + 1) * f if origin else o + (j + 1) * f)]
        out.append(slice(hits[0], hits[-1] + 1))
    return tuple(out)


@pytest.mark.parametrize("store", ["zarr3", "wk"])
def test_a_box_and_a_view_copy_every_coarse_voxel_they_cover(tmp_path: Path,
                                                             store: str) -> None:
    """A box (and a view of a coarser scale) at unaligned coordinates: every coarse voxel
    whose block meets it is copied, on the source's own grid (through 0 for WEBKNOSSOS,
    where the first-voxel arithmetic left the last one of a row out and shifted the scale-0
    region of a coarse view by a voxel)."""
    src_url, want = make_source(store, "uint8", tmp_path, "src")
    src = voxgate.open(src_url)
    box = voxgate.Box((4, 10, 50), (11, 49, 90))
    url = f"zarr://{tmp_path}/box.zarr"
    voxgate.copy(src_url, url, box=box, progress=False)
    dst = voxgate.open(url)
    factor = [1, 1, 1]
    for k in range(3):
        if k:
            factor = [a * b for a, b in zip(factor, FACTORS[k - 1], strict=True)]
        sl = _covered(box, src.scales[k], factor, store == "wk")
        got = dst.at_scale(k).read()
        np.testing.assert_array_equal(got[sl], want[k][sl], err_msg=f"scale {k}")
        outside = np.ones(got.shape, bool)
        outside[sl] = False
        assert not got[outside].any(), f"scale {k}: voxels outside the box copied"
    # a view of scale 1 copies the scale-0 voxels its voxels cover
    view = src.at_scale(1)[2:6, 4:15, 5:20]
    url = f"zarr://{tmp_path}/view.zarr"
    voxgate.copy(view, url, progress=False)
    s0 = voxgate.open(url).read()
    s1 = src.scales[1]
    lo = [o + i for o, i in zip(s1.offset, (2, 4, 5), strict=True)]
    hi = [o + i for o, i in zip(s1.offset, (6, 15, 20), strict=True)]
    if store == "wk":  # scale-1 voxel i covers scale 0's [i * f, (i + 1) * f)
        start = [a * f for a, f in zip(lo, FACTORS[0], strict=True)]
        stop = [b * f for b, f in zip(hi, FACTORS[0], strict=True)]
    else:  # ... [offset + (i - offset_1) * f, ...)
        start = [o + (a - ok) * f for a, o, ok, f in zip(lo, OFFSET, s1.offset, FACTORS[0],
                                                          strict=True)]
        stop = [o + (b - ok) * f for b, o, ok, f in zip(hi, OFFSET, s1.offset, FACTORS[0],
                                                         strict=True)]
    sl = tuple(slice(a - o, b - o) for a, b, o in zip(start, stop, OFFSET, strict=True))
    expect = np.zeros_like(want[0])
    expect[sl] = want[0][sl]
    np.testing.assert_array_equal(s0, expect)


def test_scales_subsets(tmp_path: Path, sources: dict[str, tuple[str, list[np.ndarray]]]
                        ) -> None:
    """scales=[1, 2] into a fresh destination: those scales, scale 0 left as fill; scales=[2]
    into the existing one afterwards changes nothing else."""
    src_url, want = sources["pre_cseg-u64"]
    url = f"n5://{tmp_path}/sub.n5"
    report = voxgate.copy(src_url, url, scales=[2, 1], progress=False)
    assert report.scales == [2, 1]
    dst = voxgate.open(url)
    assert not dst.read().any()
    for k in (1, 2):
        np.testing.assert_array_equal(dst.at_scale(k).read(), want[k])
        np.testing.assert_array_equal(native("n5", tmp_path, "sub", k, (), ()), want[k])
    voxgate.copy(src_url, url, scales=[0], progress=False)
    assert_holds(url, "n5", tmp_path, "sub", want, src_url)


EXISTING = ["zarr2", "n5", "pre_cseg", "hdf5", "tiff", "wk", "mem"]


@pytest.mark.parametrize("store", EXISTING)
def test_into_an_existing_destination(tmp_path: Path, store: str) -> None:
    """Same geometry: everything in the region overwritten (zeros included), other chunks
    untouched.  Another shape, offset or dtype: refused, the destination unchanged."""
    count = 1 if store == "tiff" else 3
    origin = store == "wk"
    src_store = "wk" if origin else "zarr3"
    src_url, want = make_source(src_store, "uint32", tmp_path, "src")
    want = want[:count]
    url = URLS[store](tmp_path, "dst")
    old = np.full(SHAPE, 7, np.uint32)
    vol = voxgate.create(url, shape=SHAPE, dtype="uint32", chunks=(5, 9, 11), voxel_size=VOXEL,
                         kind="segmentation", offset=OFFSET, num_scales=count,
                         **CREATE.get(store, {}))
    vol[:] = old
    if count > 1:
        voxgate.downsample(url)
    box = voxgate.Box((4, 10, 50), (11, 49, 90))
    voxgate.copy(src_url, url, box=box, scales=[0], progress=False)
    expect = old.copy()
    sl = tuple(slice(a - o, b - o) for a, b, o in zip(box.start, box.stop, OFFSET, strict=True))
    expect[sl] = want[0][sl]
    np.testing.assert_array_equal(voxgate.open(url).read(), expect)
    report = voxgate.copy(src_url, url, scales=list(range(count)), progress=False)
    assert not report.created
    assert_holds(url, store, tmp_path, "dst", want, src_url)

    before = None if store == "mem" else snapshot(tmp_path)
    bad: list[tuple[str, str]] = [
        (make_source(src_store, "uint32", tmp_path, "short", shape=(9, 45, 50))[0],
         "must match"),
        (make_source(src_store, "uint64", tmp_path, "wide")[0],
         "dtype uint32 differs from the source.s uint64"),
    ]
    if before is not None:
        before = {k: v for k, v in before.items() if k.startswith("dst")}
    for other, words in bad:
        with pytest.raises(InvalidRequestError, match=words):
            voxgate.copy(other, url, scales=list(range(count)), progress=False)
        if before is not None:
            assert {k: v for k, v in snapshot(tmp_path).items() if k.startswith("dst")} \
                == before
        assert_holds(url, store, tmp_path, "dst", want, src_url)


class _FailingWrites:
    """Patches a Remote class's write to raise at its ``fail_at``-th call (0: never)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: Any, fail_at: int) -> None:
        self.calls, real = 0, cls.write

        def write(remote: Any, *args: Any, **kwargs: Any) -> None:
            self.calls += 1
            if self.calls == fail_at:
                raise RuntimeError("disk on fire")
            real(remote, *args, **kwargs)

        monkeypatch.setattr(cls, "write", write)


def _n5_block(root: Path, rel: str) -> tuple[bytes, np.ndarray, np.ndarray]:
    """An N5 block file of a voxgate-made dataset (gzip): its header, the whole decoded block
    (x fastest) and the part of it inside the dataset."""
    scale_dir, *idx = rel.split("/")
    attrs = json.loads((root / scale_dir / "attributes.json").read_text())
    assert attrs["compression"]["type"] == "gzip", attrs["compression"]
    raw = (root / rel).read_bytes()
    mode, ndim = struct.unpack(">HH", raw[:4])
    size = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    header = raw[:4 + 4 * ndim + (4 if mode == 1 else 0)]  # (mode 1: + the element count)
    block = np.frombuffer(zlib.decompress(raw[len(header):], 47),
                          dtype=np.dtype(attrs["dataType"]).newbyteorder(">"))
    block = block.reshape(size[::-1])
    inside = tuple(slice(0, min(b, d - int(i) * b)) for b, d, i in
                   zip(attrs["blockSize"], attrs["dimensions"], idx, strict=True))[::-1]
    return header, block, block[inside]


def _same_n5_blocks(a: Path, b: Path, rel: str) -> str | None:
    """Why two N5 block files with other bytes still hold the same block, or None when they
    do not: the same header and the same voxels inside the dataset, the difference being in
    the padding of an edge block outside it (written by tensorstore, read by no one) or in
    the compressed stream alone."""
    header_a, block_a, inside_a = _n5_block(a, rel)
    header_b, block_b, inside_b = _n5_block(b, rel)
    if header_a != header_b or not np.array_equal(inside_a, inside_b):
        return None
    if np.array_equal(block_a, block_b):
        return f"{rel}: same block, other gzip stream"
    return f"{rel}: same voxels, other padding outside the dataset"


def test_n5_block_comparison_tells_padding_from_voxels(tmp_path: Path) -> None:
    """The check above: an edge block rewritten with other padding is the same block; one with
    another voxel inside the dataset, or another header, is not."""
    url = f"n5://{tmp_path}/a.n5"
    vol = voxgate.create(url, shape=(5, 7, 9), dtype="uint16", chunks=(4, 4, 4),
                         voxel_size=(1, 1, 1))
    vol[:] = np.arange(5 * 7 * 9, dtype=np.uint16).reshape(5, 7, 9) + 1
    rel = "s0/2/1/1"  # x 8..9, y 4..7, z 4..5 of blocks of 4: an edge block on every axis
    (tmp_path / "b.n5" / "s0").mkdir(parents=True)
    for sub in ("", "s0"):
        (tmp_path / "b.n5" / sub / "attributes.json").write_bytes(
            (tmp_path / "a.n5" / sub / "attributes.json").read_bytes())

    def rewrite(change: Callable[[np.ndarray], None], header: bytes | None = None) -> None:
        raw = (tmp_path / "a.n5" / rel).read_bytes()
        block = np.frombuffer(zlib.decompress(raw[16:], 47), dtype=">u2").reshape(4, 4, 4).copy()
        change(block)
        out = tmp_path / "b.n5" / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes((header or raw[:16]) + zlib.compress(block.tobytes(), 1))

    rewrite(lambda b: None)  # another gzip stream of the same block
    assert "other gzip stream" in str(_same_n5_blocks(tmp_path / "a.n5", tmp_path / "b.n5", rel))
    rewrite(lambda b: b.__setitem__((slice(None), slice(None), slice(1, None)), 77))
    assert "other padding" in str(_same_n5_blocks(tmp_path / "a.n5", tmp_path / "b.n5", rel))
    rewrite(lambda b: b.__setitem__((0, 0, 0), 77))  # inside the dataset
    assert _same_n5_blocks(tmp_path / "a.n5", tmp_path / "b.n5", rel) is None
    rewrite(lambda b: None, header=struct.pack(">HHIIII", 1, 3, 4, 4, 4, 64))  # varlength
    assert _same_n5_blocks(tmp_path / "a.n5", tmp_path / "b.n5", rel) is None


def _tree_digest(path: Path) -> dict[str, str]:
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def _assert_same_bytes(store: str, a: dict[str, str], b: dict[str, str], root_a: Path,
                       root_b: Path) -> None:
    """Two copies' trees (``_tree_digest``) hold the same files with the same bytes.

    N5 blocks alone may differ where voxgate writes nothing: seen once in ~10 runs of the
    suite, never reproduced in several hundred copies, an N5 block whose bytes differed while
    both copies read back as the source.  tensorstore, not voxgate, lays out an N5 block (it
    pads an edge block to the whole block size and compresses it), so such a block must still
    have the same header and every voxel inside the dataset the same; attributes.json and
    every other file stay byte for byte."""
    assert a.keys() == b.keys()
    differ = [rel for rel in a if a[rel] != b[rel]]
    if store == "n5":
        blocks = [rel for rel in differ if not rel.endswith(".json")]
        why = [_same_n5_blocks(root_a / "dst.n5", root_b / "dst.n5", rel) for rel in blocks]
        assert None not in why, [rel for rel, w in zip(blocks, why, strict=True) if w is None]
        if why:
            print(f"N5 blocks with other bytes, same block: {why}")  # (shown with -rP)
        differ = [rel for rel in differ if rel not in blocks]
    assert not differ, differ


#: stores whose files are a function of their voxels (HDF5 and compressed TIFF place chunks
#: in the order they were written, and TIFF stamps the time: compared by their voxels)
SAME_BYTES = ("zarr3", "zarr2", "n5", "pre_raw", "pre_cseg", "knossos", "wk")


@pytest.mark.parametrize("store", ["zarr3", "zarr2", "n5", "pre_cseg", "hdf5", "tiff",
                                   "knossos", "mem"])
def test_interrupted_and_resumed_equals_uninterrupted(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch,
    sources: dict[str, tuple[str, list[np.ndarray]]],
) -> None:
    """A copy that fails at its 4th write and is run again (more workers) finishes with the
    bytes an uninterrupted copy (one worker) writes; the journal is gone."""
    from voxgate.registry import resolve_for_create

    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)  # one block per chunk
    key = "knossos-u8" if store == "knossos" else "zarr2-u64" if store == "pre_cseg" \
        else "hdf5-u32"
    src_url, want = sources[key]
    scales = [0] if store == "tiff" else None
    runs = {}
    for run in ("whole", "resumed"):
        (tmp_path / run).mkdir()
        url = URLS[store](tmp_path / run, "dst")
        options = {"zarr_format": 2} if store == "zarr2" else {}
        if run == "resumed":
            cls, _ = resolve_for_create(url)
            failing = _FailingWrites(monkeypatch, cls, 4)
            with pytest.raises(PartialWriteError, match="rerun the same copy"):
                voxgate.copy(src_url, url, scales=scales, workers=1, progress=False, **options)
            assert failing.calls == 4
            monkeypatch.undo()
            monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
            report = voxgate.copy(src_url, url, scales=scales, workers=3, progress=False,
                                  **options)
            assert report.resumed and report.blocks_skipped >= 3
        else:
            voxgate.copy(src_url, url, scales=scales, workers=1, progress=False, **options)
        assert not voxgate.transfer.list_journals()
        assert_holds(url, store, tmp_path / run, "dst", want[:1] if scales else want,
                     src_url)
        path = PATHS[store](tmp_path / run, "dst")
        runs[run] = None if path is None else _tree_digest(path)
    if store in SAME_BYTES:
        whole, resumed = runs["whole"], runs["resumed"]
        assert whole is not None and resumed is not None
        _assert_same_bytes(store, whole, resumed, tmp_path / "whole", tmp_path / "resumed")


@pytest.mark.parametrize("store", ["zarr3", "n5", "pre_cseg", "knossos", "wk"])
def test_one_worker_or_several_write_the_same_bytes(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch,
    sources: dict[str, tuple[str, list[np.ndarray]]],
) -> None:
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
    key = {"knossos": "knossos-u8", "wk": "wk-u32"}.get(store, "zarr2-u64")
    src_url, want = sources[key]
    digests = []
    for workers in (1, 4):
        (tmp_path / str(workers)).mkdir()
        url = URLS[store](tmp_path / str(workers), "dst")
        voxgate.copy(src_url, url, workers=workers, progress=False)
        assert_holds(url, store, tmp_path / str(workers), "dst", want, src_url)
        path = PATHS[store](tmp_path / str(workers), "dst")
        assert path is not None
        digests.append(_tree_digest(path))
    _assert_same_bytes(store, digests[0], digests[1], tmp_path / "1", tmp_path / "4")


def test_progress_without_a_terminal(tmp_path: Path,
                                     sources: dict[str, tuple[str, list[np.ndarray]]]) -> None:
    """progress=True (the default) and `voxgate cp` with their output a pipe and no stdin."""
    src_url, want = sources["pre_cseg-u64"]
    script = textwrap.dedent("""
        import sys, voxgate
        report = voxgate.copy(sys.argv[1], sys.argv[2], progress=True)
        print("done", report.blocks_total)
    """)
    dst = f"zarr://{tmp_path}/p.zarr"
    env = {**os.environ, "TERM": "dumb"}
    env.pop("COLUMNS", None)
    out = subprocess.run([sys.executable, "-c", script, src_url, dst], capture_output=True,
                         stdin=subprocess.DEVNULL, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert b"done" in out.stdout
    assert_holds(dst, "zarr3", tmp_path, "p", want, src_url)
    dst2 = f"n5://{tmp_path}/cli.n5"
    out = subprocess.run([sys.executable, "-m", "voxgate", "cp", src_url, dst2],
                         capture_output=True, stdin=subprocess.DEVNULL, env=env, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert_holds(dst2, "n5", tmp_path, "cli", want, src_url)


# -- 3. bad input -------------------------------------------------------------------------------

def _refused(src: Any, dst: Any, error: type[BaseException], words: str, root: Path,
             **kwargs: Any) -> None:
    """The copy raises ``error`` (a voxgate error) matching ``words``, and nothing under
    ``root`` was created or changed."""
    assert issubclass(error, VoxgateError)
    before = snapshot(root)
    dirs = sorted(p for p in root.rglob("*") if p.is_dir())
    with pytest.raises(error, match=words):
        voxgate.copy(src, dst, progress=False, **kwargs)
    assert snapshot(root) == before
    assert sorted(p for p in root.rglob("*") if p.is_dir()) == dirs


def test_the_source_itself_is_refused_however_it_is_spelled(tmp_path: Path) -> None:
    """The same store under another spelling (a bare path, a trailing slash, a relative path,
    file://, a symlink, another format's scheme) was copied onto itself."""
    url, _ = make_source("zarr3", "uint16", tmp_path, "src")
    path = tmp_path / "src.zarr"
    (tmp_path / "link.zarr").symlink_to(path)
    rel = os.path.relpath(path)
    for dst in (url, str(path), url + "/", f"zarr://{rel}", f"zarr://file://{path}",
                f"zarr://{tmp_path}/link.zarr", f"n5://{path}", voxgate.open(url, mode="r+")):
        _refused(url, dst, InvalidRequestError, "same volume", tmp_path)
    _refused(voxgate.open(url)[0:2], url, InvalidRequestError, "same volume", tmp_path)
    h5, _ = make_source("hdf5", "uint16", tmp_path, "h")
    _refused(h5, f"hdf5://{tmp_path}/./h.h5#/v", InvalidRequestError, "same volume", tmp_path)
    # another dataset of the same HDF5 file is another volume
    voxgate.copy(h5, f"hdf5://{tmp_path}/h.h5#/w", progress=False)
    wk, _ = make_source("wk", "uint32", tmp_path, "wk")
    _refused(wk, f"webknossos://{tmp_path}/wk/segmentation", InvalidRequestError,
             "same volume", tmp_path)
    # another layer of the same dataset is another volume
    voxgate.copy(wk, f"webknossos://{tmp_path}/wk/copy", progress=False)
    _refused("mem://a", "mem://a", RemoteNotFoundError, "no in-memory volume", tmp_path)
    MemoryRemote.clear()


def test_layer_option_adds_a_layer_to_an_existing_webknossos_dataset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        sources: dict[str, tuple[str, list[np.ndarray]]]) -> None:
    """``copy(src, "webknossos://.../ds", layer="x")`` on an existing dataset is the copy to
    its layer x, as ``.../ds/x`` is.  It was refused: "options only apply when copy creates
    the destination" (the dataset exists), and for a source layer of the same dataset "the
    source lies inside the destination".  A failed one is finished by the same call."""
    _, wk_want = make_source("wk", "uint32", tmp_path, "wk")  # dataset wk, layer segmentation
    ds = f"webknossos://{tmp_path}/wk"
    wk = f"{ds}/segmentation"
    src_url, want = sources["zarr2-u64"]
    # (scale 0 alone: a first-voxel pyramid at this offset is not on WEBKNOSSOS's grid)
    voxgate.copy(src_url, ds, layer="ids", scales=[0], progress=False)
    assert_holds(f"{ds}/ids", "wk", tmp_path, "wk/ids", want, src_url, scales=[0])
    voxgate.copy(wk, ds, layer="again", progress=False)
    np.testing.assert_array_equal(voxgate.open(f"{ds}/again").read(), wk_want[0])
    from voxgate.remotes.webknossos import layer_names
    assert sorted(layer_names(f"{tmp_path}/wk")) == ["again", "ids", "segmentation"]
    np.testing.assert_array_equal(voxgate.open(wk).read(), wk_want[0])  # (untouched)
    # the source's own layer named by layer= is the source
    _refused(wk, ds, InvalidRequestError, "same volume", tmp_path, layer="segmentation")
    # failed after creating the layer, then finished by the same call (the layer exists now:
    # it is not refused as an existing destination given create options)
    failing = _FailingWrites(monkeypatch, WebknossosRemote, 1)
    with pytest.raises(PartialWriteError, match="rerun the same copy"):
        voxgate.copy(src_url, ds, layer="late", scales=[0], progress=False)
    assert failing.calls == 1 and "late" in layer_names(f"{tmp_path}/wk")
    monkeypatch.undo()
    voxgate.copy(src_url, ds, layer="late", scales=[0], progress=False)
    assert_holds(f"{ds}/late", "wk", tmp_path, "wk/late", want, src_url, scales=[0])
    # a dataset that does not exist yet is made with that layer, as before
    voxgate.copy(src_url, f"webknossos://{tmp_path}/new", layer="ids", scales=[0],
                 progress=False)
    assert layer_names(f"{tmp_path}/new") == ["ids"]


def test_a_destination_inside_the_source_is_refused(tmp_path: Path) -> None:
    """Inside the source's directory (or holding it): the copy would write into the source's
    own store.  It was created there, and copied."""
    url, _ = make_source("zarr3", "uint16", tmp_path, "src")
    for dst in (f"zarr://{tmp_path}/src.zarr/inner.zarr", f"n5://{tmp_path}/src.zarr/0/x.n5",
                f"precomputed://file://{tmp_path}/src.zarr/p", f"hdf5://{tmp_path}/src.zarr/a.h5",
                f"zarr://{tmp_path}"):
        _refused(url, dst, InvalidRequestError, "inside", tmp_path)


def test_bad_input_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    url, _ = make_source("zarr3", "uint16", tmp_path, "src")
    src = voxgate.open(url)
    _refused(url, f"nosuch://{tmp_path}/x", UnknownSchemeError, "unknown scheme", tmp_path)
    _refused(f"nosuch://{tmp_path}/x", f"zarr://{tmp_path}/y.zarr", UnknownSchemeError,
             "unknown scheme", tmp_path)
    _refused(f"zarr://{tmp_path}/absent.zarr", f"zarr://{tmp_path}/y.zarr", RemoteNotFoundError,
             "absent.zarr", tmp_path)
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "zarr.json").write_text("{not json")
    _refused(f"zarr://{tmp_path}/junk.zarr", f"zarr://{tmp_path}/y.zarr", CorruptChunkError,
             "not valid JSON", tmp_path)
    other = voxgate.create(f"n5://{tmp_path}/u8.n5", shape=SHAPE, dtype="uint8",
                           chunks=CHUNKS, voxel_size=VOXEL, offset=OFFSET, num_scales=3)
    other[:] = 5
    _refused(url, other.url, InvalidRequestError, "dtype uint8 differs from the source's uint16",
             tmp_path)
    (tmp_path / "a-file").write_bytes(b"not a volume")
    for dst, words in ((f"zarr://{tmp_path}/a-file", "is a file"),
                       (f"n5://{tmp_path}/a-file/x.n5", "is a file"),
                       (f"precomputed://file://{tmp_path}/a-file", "is a file"),
                       (f"webknossos://{tmp_path}/a-file", "is a file"),
                       (f"webknossos://{tmp_path}/a-file/layer", "is a file"),
                       (f"hdf5://{tmp_path}/a-file#/v", "not an HDF5 file")):
        _refused(url, dst, InvalidRequestError, words, tmp_path, scales=[0])
    _refused(url, f"tiff://{tmp_path}/a-file", CorruptChunkError, "not a readable TIFF",
             tmp_path, scales=[0])
    for box in (voxgate.Box(OFFSET, (OFFSET[0], 20, 60)), voxgate.Box((5, 9, 60), (6, 9, 61))):
        _refused(url, f"zarr://{tmp_path}/e.zarr", InvalidRequestError, "holds no voxels",
                 tmp_path, box=box)
    _refused(src[0:0], f"zarr://{tmp_path}/e.zarr", InvalidRequestError, "holds no voxels",
             tmp_path)
    _refused(url, f"zarr://{tmp_path}/e.zarr", InvalidRequestError, "non-empty list",
             tmp_path, scales=[])
    _refused(url, f"tiff://{tmp_path}/t.tif", CapabilityNotSupportedError, r"scales=\[0\]",
             tmp_path)


def test_a_first_voxel_pyramid_into_a_dvid_labelmap(tmp_path: Path) -> None:
    """A DVID labelmap's scales lie on the block grid through 0 too (its create_anchor says
    so, the class's pyramid_anchor does not): a first-voxel pyramid whose extents agree was
    created as the labelmap's scales, shifted.  Refused before the instance is made; scale 0
    and downsample make them."""
    from voxgate.remotes.dvid import DVIDRepo
    from voxgate.testing.dvid import start_server

    data = _data("uint64", 4)
    src = f"zarr://{tmp_path}/src.zarr"
    voxgate.create(src, shape=SHAPE, dtype="uint64", chunks=(8, 16, 24), voxel_size=(8, 8, 8),
                   kind="segmentation", offset=OFFSET)[:] = data
    voxgate.downsample(src, 3)  # factors (2, 2, 2): DVID's
    server = start_server(log=tmp_path / "dvid.log")
    try:
        repo = DVIDRepo.create(server.url, alias="audit", description="copy audit")
        url = repo.url("seg")
        with pytest.raises(InvalidRequestError,
                           match=r"grid through 0.*Nothing was created.*num_scales=N"):
            voxgate.copy(src, url, progress=False)
        assert "seg" not in repo.instances()
        # a labelmap's scales are laid out when it is made: create it, then as the message says
        voxgate.create(url, shape=SHAPE, dtype="uint64", chunks=(16, 16, 16),
                       voxel_size=(8, 8, 8), kind="segmentation", offset=OFFSET, num_scales=3)
        voxgate.copy(src, url, scales=[0], progress=False)
        # (DVID built its scales from the writes, by its own rule; voxgate's, on the grid
        # through 0, is asked for: prefer="local")
        voxgate.downsample(url, prefer="local")
        got = voxgate.open(url)
        want = [data, *downsample_scales(data, [(2, 2, 2)] * 2, "segmentation", start=OFFSET)]
        for k, w in enumerate(want):
            np.testing.assert_array_equal(got.at_scale(k).read(), w, err_msg=f"scale {k}")
    finally:
        server.stop()


def test_a_stopped_copy_of_one_multiscale_is_not_resumed_by_a_copy_of_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal's key holds the source's choosing open options (multiscale=): two
    multiscales of one OME-Zarr group with the same shapes are two sources.  The key held the
    URL alone, so the second copy resumed the first's journal and kept its blocks."""
    import shutil

    from voxgate.remotes.precomputed import PrecomputedRemote

    path = tmp_path / "two.zarr"
    vol = voxgate.create(f"zarr://{path}", shape=(16, 32, 32), dtype="uint8", chunks=(8, 8, 8),
                         voxel_size=(8, 8, 8))
    vol[:] = 1
    shutil.copytree(path / "0", path / "alt")
    doc = json.loads((path / "zarr.json").read_text())
    ms = doc["attributes"]["ome"]["multiscales"]
    ms[0]["name"] = "a"
    ms.append({**ms[0], "name": "b", "datasets": [{**ms[0]["datasets"][0], "path": "alt"}]})
    (path / "zarr.json").write_text(json.dumps(doc))
    voxgate.open(f"zarr://{path}", multiscale="b", mode="r+")[:] = 2
    dst = f"precomputed://file://{tmp_path}/dst"
    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)  # one block per chunk
    real = PrecomputedRemote.write
    writes = [0]

    def write(self: PrecomputedRemote, *args: Any, **kwargs: Any) -> None:
        writes[0] += 1
        if writes[0] == 5:
            raise OSError("the disk went away")
        real(self, *args, **kwargs)

    monkeypatch.setattr(PrecomputedRemote, "write", write)
    with pytest.raises(Exception, match="the disk went away"):
        voxgate.copy(voxgate.open(f"zarr://{path}", multiscale="a"), dst, workers=1,
                     progress=False)
    monkeypatch.setattr(PrecomputedRemote, "write", real)
    report = voxgate.copy(voxgate.open(f"zarr://{path}", multiscale="b"), dst, workers=1,
                          progress=False)
    assert not report.resumed and report.blocks_skipped == 0
    np.testing.assert_array_equal(voxgate.open(dst).read(), np.full((16, 32, 32), 2, np.uint8))
