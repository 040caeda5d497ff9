"""One level of an OME-Zarr image opened by its own URL (``zarr://img.zarr/2``).

Neuroglancer and napari users paste level paths.  Such an array is opened with the geometry
its parent group's multiscale gives that level (axes in any stored order, channel and time,
voxel size in nm and offset from the composed transformations), as a single scale: it equals
``voxgate.open("zarr://img.zarr", scale=2)`` in shape, axes, voxel size, offset, translation
and every voxel, and what is written through it is what the group reads.  Also the level of a
bioformats2raw series (``slide.zarr/0/1``), of a label image (``img.zarr/labels/cells/0``,
a segmentation) and a dataset path of two parts (the multiscale in the grandparent).  The
array's own ``voxgate`` attribute wins where it states something; an array the multiscale
does not list stays a plain array.

Images are written by zarr-python by hand ((x, y, z) order, which ome-zarr-py refuses) and by
ome-zarr-py ((t, c, z, y, x)), Zarr v2 + NGFF 0.4 and Zarr v3 + NGFF 0.5, with an odd
translation (odd whole voxels plus a fifth of one).

Defect fixed here: such a level opened as a plain array that ignored the group's metadata, so
a Zarr v2 (x, y, z) level came out transposed, a (t, c, z, y, x) one was refused, and every
level had 1 nm voxels at offset 0.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import voxgate

with warnings.catch_warnings():
    # ome_zarr.writer builds a default deprecated Scaler() at import time (ome-zarr 0.14+)
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image, write_multiscale, write_multiscale_labels

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

SHAPE = (9, 21, 26)  # z, y, x
VOXEL_UM = (0.4, 0.05, 0.06)  # z, y, x: anisotropic, y != x so a swap shows
OFFSET = (3, 5, 7)  # whole voxels of scale 0 ...
SUBVOXEL = 0.2  # ... plus this much of one: an odd translation
FACTORS = [(1, 1, 1), (1, 2, 2), (2, 4, 4)]
FMTS = [2, 3]
FMT_IDS = ["zarr2-ngff0.4", "zarr3-ngff0.5"]


def zyx_levels(seed: int, lead: tuple[int, ...] = ()) -> list[np.ndarray]:
    """Three levels ((lead...,) z, y, x), each subsampled by FACTORS from the first."""
    data = np.random.default_rng(seed).integers(0, 60000, (*lead, *SHAPE)).astype(np.uint16)
    keep = (slice(None),) * len(lead)
    return [np.ascontiguousarray(data[(*keep, *(slice(None, None, f) for f in fs))])
            for fs in FACTORS]


def zyx_transforms(k: int) -> tuple[list[float], list[float]]:
    """(scale, pixel-centre translation) of level k, z y x in micrometres."""
    v0 = list(VOXEL_UM)
    vk = [v * f for v, f in zip(v0, FACTORS[k], strict=True)]
    t0 = [(o + SUBVOXEL) * v for o, v in zip(OFFSET, v0, strict=True)]
    return vk, [t + (b - a) / 2 for t, a, b in zip(t0, v0, vk, strict=True)]


def multiscale_attrs(fmt: int, ms: dict[str, Any]) -> dict[str, Any]:
    return {"multiscales": [{**ms, "version": "0.4"}]} if fmt == 2 else {
        "ome": {"version": "0.5", "multiscales": [ms]}}


def write_xyz(path: Path, fmt: int, paths: tuple[str, ...] = ("0", "1", "2")) -> list[np.ndarray]:
    """An image stored in (x, y, z) order, written with zarr-python (no dimension names on
    Zarr v2, as ome-zarr-py writes v2); returns its levels in (z, y, x)."""
    levels = zyx_levels(1)
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    datasets = []
    for k, (p, level) in enumerate(zip(paths, levels, strict=True)):
        stored = level.transpose(2, 1, 0)
        arr = group.create_array(p, shape=stored.shape, dtype="uint16", chunks=(8, 8, 4),
                                 fill_value=0,
                                 **({"dimension_names": ["x", "y", "z"]} if fmt == 3 else {}))
        arr[...] = stored
        scale, shift = zyx_transforms(k)
        datasets.append({"path": p, "coordinateTransformations": [
            {"type": "scale", "scale": scale[::-1]},
            {"type": "translation", "translation": shift[::-1]}]})
    ms = {"name": "xyz", "datasets": datasets,
          "axes": [{"name": n, "type": "space", "unit": "micrometer"} for n in "xyz"]}
    group.attrs.update(multiscale_attrs(fmt, ms))
    return levels


def new_root(path: Path, fmt: int) -> zarr.Group:
    ngff = FormatV04() if fmt == 2 else FormatV05()
    store = parse_url(str(path), mode="w", fmt=ngff).store
    return zarr.group(store=store, zarr_format=fmt, overwrite=True)


def ngff(fmt: int) -> Any:
    return FormatV04() if fmt == 2 else FormatV05()


def axes_tczyx() -> list[dict[str, str]]:
    return [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]


def write_tczyx(group: zarr.Group, fmt: int, seed: int = 2) -> list[np.ndarray]:
    """A (t, c, z, y, x) image (t = 1, c = 2) written by ome-zarr-py into ``group``; returns
    its levels as voxgate shows them, (c, z, y, x)."""
    levels = zyx_levels(seed, (1, 2))
    write_multiscale(levels, group, fmt=ngff(fmt), axes=axes_tczyx(),
                     coordinate_transformations=[
                         [{"type": "scale", "scale": [1.0, 1.0, *zyx_transforms(k)[0]]},
                          {"type": "translation", "translation": [0.0, 0.0,
                                                                  *zyx_transforms(k)[1]]}]
                         for k in range(3)],
                     storage_options={"chunks": [1, 1, 4, 8, 8]})
    return [a[0] for a in levels]


def write_image_of(layout: str, path: Path, fmt: int) -> list[np.ndarray]:
    if layout == "xyz":
        return write_xyz(path, fmt)
    return write_tczyx(new_root(path, fmt), fmt)


def dataset(path: Path, k: int) -> str:
    """The path of level ``k`` of the image at ``path`` (ome-zarr-py's are "s0", "s1", ...)."""
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    return str(attrs.get("ome", attrs)["multiscales"][0]["datasets"][k]["path"])


def assert_same_level(level: voxgate.Volume, group: voxgate.Volume,
                      expected: np.ndarray) -> None:
    """``level`` (opened by its URL) is ``group`` (the image at that scale) in everything."""
    assert len(level.scales) == 1
    assert level.shape == group.shape == expected.shape
    assert level.dims == group.dims
    assert level.dtype == group.dtype
    assert level.kind == group.kind
    assert level.meta.num_channels == group.meta.num_channels
    assert level.voxel_size.unit == group.voxel_size.unit == "nm"
    assert level.voxel_size.zyx() == pytest.approx(group.voxel_size.zyx())
    assert tuple(level.offset) == tuple(group.offset)
    assert level.bounds == group.bounds
    assert level.scale_meta.translation == pytest.approx(group.scale_meta.translation)
    np.testing.assert_array_equal(level.read(), group.read())
    np.testing.assert_array_equal(level.read(), expected)


@pytest.mark.parametrize("fmt", FMTS, ids=FMT_IDS)
@pytest.mark.parametrize("layout", ["xyz", "tczyx"])
@pytest.mark.parametrize("k", [0, 2])
def test_a_level_opened_by_its_url_is_that_scale_of_the_image(
        tmp_path: Path, fmt: int, layout: str, k: int) -> None:
    path = tmp_path / "img.zarr"
    levels = write_image_of(layout, path, fmt)
    level = voxgate.open(f"zarr://{path}/{dataset(path, k)}")
    group = voxgate.open(f"zarr://{path}", scale=k)
    assert_same_level(level, group, levels[k])
    # the numbers themselves, not only agreement with the group
    factors = FACTORS[k]
    assert level.voxel_size.zyx() == pytest.approx(
        [v * 1e3 * f for v, f in zip(VOXEL_UM, factors, strict=True)])
    assert tuple(level.offset) == tuple(o // f for o, f in zip(OFFSET, factors, strict=True))
    assert level.scale_meta.translation == pytest.approx(
        [t * 1e3 for t in zyx_transforms(k)[1]])
    assert level.dims == (("c",) if layout == "tczyx" else ()) + ("z", "y", "x")
    # the level's URL reopens it as it is (spec round trip)
    again = voxgate.open(level.url)
    assert again.voxel_size.zyx() == pytest.approx(level.voxel_size.zyx())
    assert tuple(again.offset) == tuple(level.offset)


@pytest.mark.parametrize("fmt", FMTS, ids=FMT_IDS)
@pytest.mark.parametrize("layout", ["xyz", "tczyx"])
def test_writes_through_a_level_land_where_the_group_reads_them(
        tmp_path: Path, fmt: int, layout: str) -> None:
    path = tmp_path / "img.zarr"
    levels = write_image_of(layout, path, fmt)
    before = voxgate.open(f"zarr://{path}", scale=2)
    np.testing.assert_array_equal(before.read(), levels[2])  # (read, so cached, first)
    level = voxgate.open(f"zarr://{path}/{dataset(path, 2)}", mode="r+")
    lead = (2,) if layout == "tczyx" else ()
    patch = np.random.default_rng(5).integers(0, 60000, (*lead, 2, 3, 4), dtype=np.uint16)
    level[..., 1:3, 2:5, 1:5] = patch  # view coordinates: 0-based, whatever the offset
    levels[2][..., 1:3, 2:5, 1:5] = patch
    np.testing.assert_array_equal(voxgate.open(f"zarr://{path}", scale=2).read(), levels[2])
    np.testing.assert_array_equal(before.read(), levels[2])
    np.testing.assert_array_equal(voxgate.open(f"zarr://{path}").read(), levels[0])
    # and where zarr-python finds them, in the stored order
    stored = zarr.open_array(str(path / dataset(path, 2)), mode="r")[...]
    np.testing.assert_array_equal(
        stored.transpose(2, 1, 0) if layout == "xyz" else stored[0], levels[2])


@pytest.mark.parametrize("fmt", FMTS, ids=FMT_IDS)
def test_a_label_image_level_is_a_segmentation(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / "img.zarr"
    root = new_root(path, fmt)
    image = np.random.default_rng(7).integers(0, 255, SHAPE, dtype=np.uint8)
    write_image(image, root, scale_factors=(2,), fmt=ngff(fmt), axes="zyx",
                storage_options={"chunks": (4, 8, 8)})
    labels = [a.astype(np.uint8) % 7 for a in zyx_levels(8)]  # uint8: only image-label says so
    write_multiscale_labels(labels, root, name="cells", fmt=ngff(fmt), axes="zyx",
                            coordinate_transformations=[
                                [{"type": "scale", "scale": zyx_transforms(k)[0]},
                                 {"type": "translation", "translation": zyx_transforms(k)[1]}]
                                for k in range(3)])
    for k in (0, 2):
        cells = path / "labels" / "cells"
        level = voxgate.open(f"zarr://{cells}/{dataset(cells, k)}")
        assert level.kind == "segmentation"
        assert_same_level(level, voxgate.open(f"zarr://{path}/labels/cells", scale=k),
                          labels[k])
    # the image's own levels stay images
    assert voxgate.open(f"zarr://{path}/{dataset(path, 0)}").kind == "image"


@pytest.mark.parametrize("fmt", FMTS, ids=FMT_IDS)
def test_a_bioformats2raw_series_level(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / "slide.ome.zarr"
    root = new_root(path, fmt)
    root.attrs.update({"ome": {"version": "0.5", "bioformats2raw.layout": 3}} if fmt == 3
                      else {"bioformats2raw.layout": 3})
    write_tczyx(root.create_group("0"), fmt, seed=3)
    levels = write_tczyx(root.create_group("1"), fmt, seed=4)
    for k in (1, 2):
        assert_same_level(voxgate.open(f"zarr://{path}/1/{dataset(path / '1', k)}"),
                          voxgate.open(f"zarr://{path}/1", scale=k), levels[k])


@pytest.mark.parametrize("fmt", FMTS, ids=FMT_IDS)
def test_a_dataset_path_of_two_parts(tmp_path: Path, fmt: int) -> None:
    """The multiscale is then the grandparent's (the parent an intermediate group)."""
    path = tmp_path / "img.zarr"
    levels = write_xyz(path, fmt, paths=("mip/0", "mip/1", "mip/2"))
    for k in (0, 2):
        assert_same_level(voxgate.open(f"zarr://{path}/mip/{k}"),
                          voxgate.open(f"zarr://{path}", scale=k), levels[k])


@pytest.mark.parametrize("fmt", FMTS, ids=FMT_IDS)
def test_the_arrays_own_voxgate_attribute_wins(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / "img.zarr"
    levels = write_xyz(path, fmt)
    zarr.open_array(str(path / "2"), mode="r+").attrs["voxgate"] = {
        "voxel_size": [100, 30, 20], "offset": [4, 5, 6], "kind": "segmentation"}
    zarr.open_array(str(path / "1"), mode="r+").attrs["voxgate"] = {"kind": "segmentation"}
    level = voxgate.open(f"zarr://{path}/2")
    assert level.voxel_size.zyx() == (100, 30, 20)
    assert tuple(level.offset) == (4, 5, 6)
    assert level.kind == "segmentation"
    np.testing.assert_array_equal(level.read(), levels[2])  # the axes still the group's
    # stating only the kind keeps the group's geometry
    one = voxgate.open(f"zarr://{path}/1")
    assert one.kind == "segmentation"
    group = voxgate.open(f"zarr://{path}", scale=1)
    assert one.voxel_size.zyx() == pytest.approx(group.voxel_size.zyx())
    assert tuple(one.offset) == tuple(group.offset)
    np.testing.assert_array_equal(one.read(), levels[1])


@pytest.mark.parametrize("fmt", FMTS, ids=FMT_IDS)
def test_an_array_no_multiscale_lists_stays_plain(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / "img.zarr"
    write_xyz(path, fmt)
    data = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    for where in (path / "extra", tmp_path / "plain.zarr" / "0"):
        if where.parent != path:
            zarr.open_group(str(where.parent), mode="w", zarr_format=fmt)
        zarr.open_group(str(where.parent), mode="r+", zarr_format=fmt).create_array(
            where.name, data=data)
        vol = voxgate.open(f"zarr://{where}")
        assert vol.shape == (3, 4, 5)
        assert vol.voxel_size.zyx() == (1, 1, 1)
        assert tuple(vol.offset) == (0, 0, 0)
        np.testing.assert_array_equal(vol.read(), data)
