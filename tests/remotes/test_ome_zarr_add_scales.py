"""Scales added to OME-Zarr images voxgate did not write (``voxgate.downsample``).

Each image here is written by hand with zarr-python (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3):
axes in micrometres, an anisotropic voxel size, a translation, scale-0 chunks that are not
powers of two, axes (z, y, x), (c, z, y, x), (t, c, z, y, x) with t = 1 and (x, y, z).  After
``voxgate.downsample`` every scale voxgate reads equals the brute-force reference
(tests/services/numpy_reference.py, anchored at the offset), each new dataset's transformations
are in the group's axis order and units with the pixel-centre translation of docs/remotes/zarr.md,
each new array has scale 0's dimension order and names and a shape tensorstore reads as it
is, and ome-zarr-py reads the same levels.

Defects found here: ``add_scales`` refused every axis order but ([c,] z, y, x) — the
(t, c, z, y, x) layout ome-zarr-py writes by default among them —, a ``c`` axis of length 1
and multiscale-level transformations; and it copied scale 0's Zarr v3 array attributes into
the new arrays, so a new level opened on its own (``zarr://img.zarr/1``) claimed scale 0's
voxel size and offset.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
import zarr

import voxgate
from tests.services.numpy_reference import downsample_scales

with warnings.catch_warnings():
    # ome_zarr.writer builds a default deprecated Scaler() at import time (ome-zarr 0.14+)
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

SHAPE = {"z": 7, "y": 23, "x": 30}
VOXEL = {"z": 0.4, "y": 0.1, "x": 0.1}  # micrometres: anisotropic
OFFSET = {"z": 3, "y": 5, "x": 7}  # voxels
CHUNKS = {"z": 5, "y": 7, "x": 9}  # not powers of two
FACTORS = [(1, 2, 2), (2, 2, 2)]
KINDS = {"t": "time", "c": "channel"}


def write_image(path: Path, fmt: int, names: str, channels: int = 2,
                outer: tuple[dict[str, float], dict[str, float]] | None = None,
                attrs: dict[str, Any] | None = None) -> np.ndarray:
    """A one-level OME-Zarr image with axes ``names`` (length-1 t), written with zarr-python;
    returns its voxels as voxgate shows them (([c,] z, y, x), t dropped)."""
    sizes = {"t": 1, "c": channels, **SHAPE}
    data = np.random.default_rng(len(names) + fmt).integers(
        0, 60000, [sizes[n] for n in names]).astype(np.uint16)
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    array = group.create_array(
        "0", shape=data.shape, dtype="uint16", fill_value=0,
        chunks=[CHUNKS.get(n, 1) for n in names],
        **({"dimension_names": list(names)} if fmt == 3 else {}))
    array[...] = data
    if attrs:
        array.attrs.update(attrs)
    scale, shift = outer or ({}, {})
    ms: dict[str, Any] = {
        "name": "hand",
        "axes": [{"name": n, "type": KINDS.get(n, "space"),
                  **({"unit": "micrometer"} if n in "zyx" else {})} for n in names],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [VOXEL.get(n, 1.0) / scale.get(n, 1.0) for n in names]},
            {"type": "translation", "translation": [
                (OFFSET.get(n, 0) * VOXEL.get(n, 1.0) - shift.get(n, 0.0)) / scale.get(n, 1.0)
                for n in names]}]}],
    }
    if outer:
        ms["coordinateTransformations"] = [
            {"type": "scale", "scale": [scale.get(n, 1.0) for n in names]},
            {"type": "translation", "translation": [shift.get(n, 0.0) for n in names]}]
    if fmt == 2:
        group.attrs["multiscales"] = [{**ms, "version": "0.4"}]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    return as_shown(data, names)


def as_shown(data: np.ndarray, names: str) -> np.ndarray:
    """``data`` with axes ``names`` as voxgate shows it: ([c,] z, y, x), length-1 t and c
    dropped."""
    keep = [n for n in names if n in "zyx" or (n == "c" and data.shape[names.index(n)] > 1)]
    drop = tuple(i for i, n in enumerate(names) if n not in keep)
    squeezed = data.squeeze(axis=drop) if drop else data
    return np.ascontiguousarray(squeezed.transpose([keep.index(n) for n in sorted(
        keep, key="czyx".index)]))


def multiscale(path: Path) -> dict[str, Any]:
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    return dict(attrs.get("ome", attrs)["multiscales"][0])


def transform(ds: dict[str, Any], kind: str) -> list[float]:
    found = [t for t in ds["coordinateTransformations"] if t["type"] == kind]
    return list(found[0][kind])


@pytest.mark.parametrize("fmt", [2, 3], ids=["ngff0.4-zarr2", "ngff0.5-zarr3"])
@pytest.mark.parametrize("names", ["zyx", "czyx", "tczyx", "xyz"])
def test_scales_added_to_a_hand_written_image(tmp_path: Path, fmt: int, names: str) -> None:
    path = tmp_path / "img.zarr"
    data = write_image(path, fmt, names)
    voxgate.downsample(f"zarr://{path}", num_scales=3, factors=FACTORS)

    vol = voxgate.open(f"zarr://{path}")
    want = [data, *downsample_scales(data, FACTORS, "image")]
    assert len(vol.scales) == 3
    for k, ref in enumerate(want):
        np.testing.assert_array_equal(vol.at_scale(k).read(), ref, err_msg=f"scale {k}")

    ms = multiscale(path)
    assert [a["name"] for a in ms["axes"]] == list(names)
    group = zarr.open_group(str(path), mode="r")
    voxel = dict(VOXEL)
    for k, factor in enumerate(FACTORS, start=1):
        ds = ms["datasets"][k]
        voxel = {n: v * factor["zyx".index(n)] for n, v in voxel.items()}
        # micrometres, the group's order; the centre of the first voxel: t_0 + (v_k - v_0) / 2
        assert transform(ds, "scale") == pytest.approx([voxel.get(n, 1.0) for n in names])
        assert transform(ds, "translation") == pytest.approx([
            OFFSET[n] * VOXEL[n] + (voxel[n] - VOXEL[n]) / 2 if n in "zyx" else 0.0
            for n in names])
        sizes = {"t": 1, "c": 2, **dict(zip("zyx", want[k].shape[-3:], strict=True))}
        shape = tuple(sizes[n] for n in names)
        array = group[ds["path"]]
        assert isinstance(array, zarr.Array)
        assert array.shape == shape
        if fmt == 3:
            assert list(array.metadata.dimension_names or ()) == list(names)
        store = ts.open({"driver": "zarr3" if fmt == 3 else "zarr",
                         "kvstore": {"driver": "file", "path": str(path / ds["path"])}},
                        open=True).result()
        assert tuple(store.shape) == shape
        np.testing.assert_array_equal(as_shown(store.read().result(), names), want[k])

    node = next(iter(Reader(parse_url(str(path)))()))
    assert [tuple(a.shape) for a in node.data] == [
        tuple({"t": 1, "c": 2, **dict(zip("zyx", w.shape[-3:], strict=True))}[n]
              for n in names) for w in want]


@pytest.mark.parametrize("fmt", [2, 3], ids=["ngff0.4-zarr2", "ngff0.5-zarr3"])
def test_scales_added_under_multiscale_level_transformations(tmp_path: Path, fmt: int) -> None:
    """The multiscale's own transformations apply after each dataset's: a new dataset's are
    written so that the two together place it where its voxels are."""
    path = tmp_path / "img.zarr"
    scale, shift = {"z": 2.0, "y": 0.5, "x": 0.5}, {"z": 1.0, "y": -0.3, "x": 0.2}
    data = write_image(path, fmt, "czyx", outer=(scale, shift))
    before = voxgate.open(f"zarr://{path}").scale_meta
    voxgate.downsample(f"zarr://{path}", num_scales=3, factors=FACTORS)
    vol = voxgate.open(f"zarr://{path}")
    assert vol.scales[0].translation == pytest.approx(before.translation)
    for k, ref in enumerate(downsample_scales(data, FACTORS, "image"), start=1):
        np.testing.assert_array_equal(vol.at_scale(k).read(), ref)
    assert vol.scales[2].voxel_size.zyx() == pytest.approx((800.0, 400.0, 400.0))
    assert tuple(vol.scales[2].offset) == (1, 1, 1)
    # the world position, from the stored numbers: global x dataset + global translation
    ds = multiscale(path)["datasets"][2]
    world = [g * t + s for g, t, s in zip([1.0, 2.0, 0.5, 0.5], transform(ds, "translation"),
                                          [0.0, 1.0, -0.3, 0.2], strict=True)]
    assert world == pytest.approx([0.0, 1.2 + 0.2, 0.5 + 0.15, 0.7 + 0.15])


@pytest.mark.parametrize("fmt", [2, 3], ids=["ngff0.4-zarr2", "ngff0.5-zarr3"])
def test_scales_added_to_an_image_with_one_channel_axis(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / "img.zarr"
    data = write_image(path, fmt, "czyx", channels=1)
    voxgate.downsample(f"zarr://{path}", num_scales=3, factors=FACTORS)
    vol = voxgate.open(f"zarr://{path}")
    for k, ref in enumerate(downsample_scales(data, FACTORS, "image"), start=1):
        np.testing.assert_array_equal(vol.at_scale(k).read(), ref)
    group = zarr.open_group(str(path), mode="r")
    assert group["2"].shape == (1, 4, 6, 8)


def test_scale_zero_array_attributes_are_not_copied(tmp_path: Path) -> None:
    """Scale 0's attributes describe scale 0: copied into a new level, that level opened on
    its own said it had scale 0's voxel size and offset."""
    path = tmp_path / "img.zarr"
    write_image(path, 3, "zyx", attrs={"voxgate": {"voxel_size": [400, 100, 100],
                                                   "offset": [3, 5, 7]}})
    voxgate.downsample(f"zarr://{path}", num_scales=3, factors=FACTORS)
    group = zarr.open_group(str(path), mode="r")
    assert dict(group["1"].attrs) == {}
    assert voxgate.open(f"zarr://{path}/1").voxel_size.zyx() != (400.0, 100.0, 100.0)


def test_xarray_dimension_names_are_kept_on_zarr_v2(tmp_path: Path) -> None:
    """A Zarr v2 level in (x, y, z) order names its axes in ``_ARRAY_DIMENSIONS`` (opened on
    its own, unnamed axes are read as (z, y, x)); the new levels name them too."""
    path = tmp_path / "img.zarr"
    data = write_image(path, 2, "xyz", attrs={"_ARRAY_DIMENSIONS": ["x", "y", "z"]})
    voxgate.downsample(f"zarr://{path}", num_scales=3, factors=FACTORS)
    level = voxgate.open(f"zarr://{path}/2")
    np.testing.assert_array_equal(level.read(), downsample_scales(data, FACTORS, "image")[1])
