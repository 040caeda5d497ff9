"""Journeys through the Services on the stores added last: TIFF (a file and a directory of
slices, uncompressed and zlib), KNOSSOS and the ``tensorstore://`` spec Remote (zarr3 on OCDBT),
on odd shapes with offsets and partial edge chunks.  Every result is compared with the
brute-force references of tests/services and read back by the store's own library (tifffile,
tensorstore; KNOSSOS cubes from their documented layout).

The tests after the first are defects found by that audit, each failing before its fix:

* writing a stripped, uncompressed TIFF (tifffile's and libtiff's usual layout, whose last strip
  holds only the rows left) wrote a whole strip there, over what follows it in the file: the
  next page's directory, so the file lost its pages;
* a TIFF opened with ``voxel_size=`` / ``kind=`` forgot them when reopened from its spec (a
  pickled Volume, a dask worker): 1 nm voxels of a guessed kind;
* a TIFF codec tifffile lacks (LZW, zstd: imagecodecs) gave a raw KeyError or
  ModuleNotFoundError on create (leaving a temporary file), and "corrupt" on read;
* ``tensorstore://`` specs TensorStore cannot parse raised a bare VoxgateError, not bad input;
* the Services refused the TensorStore spec dict that ``voxgate.open`` / ``create`` take (as
  ``out=``: "unknown scheme" naming the dict's repr);
* downsample on a one-scale store said only "cannot add scales";
* a create refused for bad input left an empty directory behind.
"""

from __future__ import annotations

import json
import os
import pickle
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
import tifffile

import voxgate
from voxgate.blockwise import cluster_spec, worker_remote
from voxgate.errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    MissingDependencyError,
)

from .services.brute_reference import assert_stats_match, components, relabel, split_pieces
from .services.brute_reference import label_stats as brute_stats

SHAPE = (11, 53, 37)   # z, y, x: odd, and no chunk below divides y or x
OFFSET = (3, 5, 7)
CHUNKS = (4, 16, 16)
VOXEL = (40, 8, 8)


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(tmp_path / "state"))


def labels(dtype: Any = np.uint8) -> np.ndarray:
    a = np.zeros(SHAPE, dtype=dtype)
    a[1:5, 3:20, 4:15] = 5
    a[6:10, 25:40, 10:30] = 9          # 9: two pieces apart
    a[0:3, 41:50, 20:35] = 9
    a[8:11, 45:53, 30:37] = 200        # in the partial edge chunks
    return a


def spec(tmp_path: Path, name: str) -> dict[str, Any]:
    return {"driver": "zarr3",
            "kvstore": {"driver": "ocdbt", "base": f"file://{tmp_path}/{name}/"}}


def read_back(url: str) -> np.ndarray:
    """The stored voxels as the store's own library (or documented layout) reads them."""
    scheme, _, rest = url.partition("://")
    if scheme == "tiff":
        if os.path.isdir(rest):
            return np.asarray(tifffile.imread(sorted(Path(rest).glob("*.tif"))))
        return np.asarray(tifffile.imread(rest))
    if scheme == "tensorstore":
        return np.asarray(ts.open(json.loads(rest)).result().read().result())
    path = Path(rest)  # KNOSSOS: x-fastest uint8 cubes anchored at the first voxel
    name = path.name
    layer = tomllib.loads((path / f"{name}.k.toml").read_text())["Layer"][0]
    cz, cy, cx = layer["CubeShape_px"][::-1]
    grid = [-(-n // c) for n, c in zip(SHAPE, (cz, cy, cx), strict=True)]
    full = np.zeros([g * c for g, c in zip(grid, (cz, cy, cx), strict=True)], np.uint8)
    for z, y, x in np.ndindex(*grid):
        cube = (path / "mag1" / f"x{x:04d}" / f"y{y:04d}" / f"z{z:04d}"
                / f"{name}_mag1_x{x:04d}_y{y:04d}_z{z:04d}.raw")
        if cube.exists():
            full[z * cz:(z + 1) * cz, y * cy:(y + 1) * cy, x * cx:(x + 1) * cx] = \
                np.frombuffer(cube.read_bytes(), np.uint8).reshape(cz, cy, cx)
    return full[:SHAPE[0], :SHAPE[1], :SHAPE[2]]


STORES = {
    # name: (URL of a new volume, create options, offset the store keeps)
    "tiff-file": ("tiff://{}/{}.tif", {}, OFFSET),
    "tiff-file-zlib": ("tiff://{}/{}.tif", {"compression": "zlib"}, OFFSET),
    "tiff-slices-zlib": ("tiff://{}/{}", {"compression": "zlib"}, OFFSET),
    "knossos": ("knossos://{}/{}", {}, OFFSET),
    "tensorstore-ocdbt": (None, {}, (0, 0, 0)),  # zarr3 stores no offset
}


@pytest.mark.parametrize("store", list(STORES))
def test_segmentation_journey_on_the_newer_stores(tmp_path: Path, store: str) -> None:
    """Write, copy to zarr and back, connected components, label statistics, merge / split /
    undo: each against the brute-force reference and read back by the store's library."""
    pattern, options, offset = STORES[store]

    def url(name: str) -> str:
        if pattern is None:
            return "tensorstore://" + json.dumps(spec(tmp_path, name))
        return pattern.format(tmp_path, name)

    seg = labels()
    src = url("seg")
    vol = voxgate.create(src, shape=SHAPE, chunks=CHUNKS, dtype="uint8", voxel_size=VOXEL,
                         offset=offset, kind="segmentation", **options)
    vol[:] = seg
    if store.startswith("tensorstore"):  # the spec keeps no kind: give it at open
        vol = voxgate.open(src, mode="r+", kind="segmentation")
    else:
        vol = voxgate.open(src, mode="r+")
    assert tuple(vol.bounds.start) == offset and vol.kind == "segmentation"
    assert np.array_equal(read_back(src), seg)

    zarr = f"zarr://{tmp_path}/copy.zarr"
    voxgate.copy(vol, zarr, progress=False)
    assert tuple(voxgate.open(zarr).bounds.start) == offset
    back = url("back")
    voxgate.copy(zarr, back, progress=False, **options)
    assert np.array_equal(read_back(back), seg)

    assert np.array_equal(voxgate.connected_components(vol, block=(4, 16, 16)),
                          components(seg, 26))
    assert_stats_match(voxgate.label_stats(vol, block=(4, 16, 16)), seg, offset)

    voxgate.merge(vol, [5, 9])
    merged = relabel(seg, {9: 5})
    assert np.array_equal(read_back(src), merged)
    split = voxgate.split(vol, 5)
    pieces, k = split_pieces(merged, 5)
    assert k == 3 and len(split.new_ids) == 2 and min(split.new_ids) > 200
    want = merged.copy()
    for rank, i in enumerate(split.new_ids, start=2):
        want[pieces == rank] = i
    assert np.array_equal(read_back(src), want)
    voxgate.undo(vol)
    voxgate.undo(vol)
    assert read_back(src).tobytes() == seg.tobytes()


# -- defects ------------------------------------------------------------------------------------

def test_writing_a_stripped_tiff_keeps_every_page(tmp_path: Path) -> None:
    """A stack saved by tifffile with 10-row strips: 53 rows leave a 3-row last strip, which
    has room for 3 rows only.  voxgate wrote 10 there, over the next page's directory: the file
    then held 1 page of 11.  Whole writes, a write of part of the last strip and proofreading
    edits now leave a file tifffile reads as the brute-force reference."""
    path = tmp_path / "stack.tif"
    seg = labels()
    tifffile.imwrite(path, np.zeros(SHAPE, np.uint8), rowsperstrip=10,
                     photometric="minisblack")
    with tifffile.TiffFile(path) as tf:
        counts = tf.pages[0].databytecounts
        assert len(counts) == 6 and counts[-1] == 3 * SHAPE[2]   # the short last strip
    vol = voxgate.open(f"tiff://{path}", mode="r+", kind="segmentation")
    vol[:] = seg
    assert np.array_equal(tifffile.imread(path), seg)
    vol[2:9, 48:53, 5:30] = 7                                  # inside the last strips only
    want = seg.copy()
    want[2:9, 48:53, 5:30] = 7
    assert np.array_equal(tifffile.imread(path), want)
    vol[2:9, 48:53, 5:30] = seg[2:9, 48:53, 5:30]

    voxgate.merge(vol, [9, 200])
    assert np.array_equal(tifffile.imread(path), relabel(seg, {200: 9}))
    voxgate.undo(vol)
    assert tifffile.imread(path).tobytes() == seg.tobytes()
    with tifffile.TiffFile(path) as tf:
        assert len(tf.pages) == SHAPE[0]


def test_tiff_open_options_travel_with_the_volume(tmp_path: Path) -> None:
    """A plain stack has no voxel size or kind of its own: they are given at open, and a
    pickled Volume or a worker reopening the spec must see them too (label_stats refused the
    reopened uint8 stack as an image, and its voxels were 1 nm)."""
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, labels(), photometric="minisblack")
    vs = voxgate.VoxelSize(0.04, 0.008, 0.008, "um")
    vol = voxgate.open(f"tiff://{path}", voxel_size=vs, kind="segmentation")
    clone = pickle.loads(pickle.dumps(vol))
    worker = worker_remote(cluster_spec(vol.remote))
    for other in (clone.remote, worker):
        assert other.meta.kind == "segmentation"
        assert other.meta.scale(0).voxel_size.zyx() == pytest.approx(VOXEL)
    stats = voxgate.label_stats(clone).set_index("id")
    assert sorted(int(i) for i in stats.index) == [5, 9, 200]
    # without options the spec says nothing more than the URL
    assert "options" not in voxgate.open(f"tiff://{path}").spec()


def _has_imagecodecs() -> bool:
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_has_imagecodecs(), reason="imagecodecs is installed: every codec works")
def test_tiff_codecs_that_need_imagecodecs_say_so(tmp_path: Path) -> None:
    for comp in ("lzw", "zstd"):
        with pytest.raises(MissingDependencyError, match="imagecodecs"):
            voxgate.create(f"tiff://{tmp_path}/{comp}.tif", shape=SHAPE, chunks=CHUNKS,
                           dtype="uint8", voxel_size=VOXEL, compression=comp)
    assert not list(tmp_path.glob("*.tif*"))  # no file, no temporary file

    # an LZW file from elsewhere: made as zlib, then its Compression tags say LZW (5)
    path = tmp_path / "lzw.tif"
    data = labels()
    tifffile.imwrite(path, data, tile=(16, 16), compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(path) as tf:
        at = [(p.tags["Compression"].valueoffset, tf.byteorder) for p in tf.pages]
    with open(path, "r+b") as f:
        for offset, order in at:
            f.seek(offset)
            f.write(np.array([5], order + "u2").tobytes())
    before = path.read_bytes()
    with pytest.raises(MissingDependencyError, match="imagecodecs"):
        voxgate.open(f"tiff://{path}").read()
    vol = voxgate.open(f"tiff://{path}", mode="r+")
    with pytest.raises(MissingDependencyError, match="imagecodecs"):
        vol[:] = data
    with pytest.raises(MissingDependencyError, match="imagecodecs"):
        vol[0, 0:5, 0:5] = 1
    assert path.read_bytes() == before


def test_tensorstore_specs_it_cannot_parse_are_bad_input(tmp_path: Path) -> None:
    base = f"file://{tmp_path}/a/"
    for bad, match in [({"driver": "zarr9", "kvstore": base}, "zarr9"),
                       ({"driver": "zarr3", "kvstore": {"driver": "nope"}}, "nope"),
                       ({"driver": "zarr3", "kvstore": base, "extra": 1}, "extra")]:
        with pytest.raises(InvalidRequestError, match=match):
            voxgate.open(bad)
        with pytest.raises(ValueError, match=match):
            voxgate.create(bad, shape=SHAPE, chunks=CHUNKS, dtype="uint8", voxel_size=VOXEL)
    assert not (tmp_path / "a").exists()


def test_services_take_a_tensorstore_spec_dict(tmp_path: Path) -> None:
    """voxgate.open and create take the spec as a dict; so do the Services, as source and as
    out=.  Results read back by tensorstore itself."""
    seg = labels(np.uint64)
    src = spec(tmp_path, "seg")
    voxgate.create(src, shape=SHAPE, chunks=CHUNKS, dtype="uint64", voxel_size=VOXEL,
                   kind="segmentation")[:] = seg
    stats = voxgate.label_stats(src).set_index("id")
    assert {int(i): int(n) for i, n in stats.voxel_count.items()} == {
        i: r["count"] for i, r in brute_stats(seg).items()}
    out = spec(tmp_path, "cc")
    voxgate.connected_components(src, out, block=(4, 16, 16))
    assert np.array_equal(np.asarray(ts.open(out).result().read().result()),
                          components(seg, 26))
    doubled = spec(tmp_path, "doubled")
    voxgate.map_blocks(lambda a: a * 2, src, doubled, block=(4, 16, 16), halo=(1, 1, 1))
    assert np.array_equal(np.asarray(ts.open(doubled).result().read().result()), seg * 2)


def test_downsample_on_a_one_scale_store_says_what_to_do(tmp_path: Path) -> None:
    for url in (f"tiff://{tmp_path}/a.tif", f"tiff://{tmp_path}/slices",
                "tensorstore://" + json.dumps(spec(tmp_path, "ts"))):
        vol = voxgate.create(url, shape=SHAPE, chunks=CHUNKS, dtype="uint8", voxel_size=VOXEL)
        vol[:] = labels()
        with pytest.raises(CapabilityNotSupportedError, match=r"voxgate\.copy"):
            voxgate.downsample(url)
        assert np.array_equal(read_back(url), labels())  # untouched


def test_refused_creates_leave_no_directory(tmp_path: Path) -> None:
    with pytest.raises(CapabilityNotSupportedError, match="one channel"):
        voxgate.create(f"tiff://{tmp_path}/slices", shape=SHAPE, chunks=CHUNKS, dtype="uint8",
                       voxel_size=VOXEL, num_channels=2)
    with pytest.raises(InvalidRequestError, match="128"):
        voxgate.create(f"knossos://{tmp_path}/classic", shape=SHAPE, chunks=CHUNKS,
                       dtype="uint8", voxel_size=VOXEL, conf="knossos.conf")
    assert not (tmp_path / "slices").exists() and not (tmp_path / "classic").exists()
