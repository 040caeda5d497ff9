"""OME-Zarr as the NGFF versions 0.1 - 0.5 and their writers lay it out, read through ``zarr://``.

Defects found here, each silent before: a scale-only pyramid (bioformats2raw, ome-zarr-py
before 0.9: no translations) put its factor-4 and factor-8 levels one voxel before scale 0
(factor 2 not); NGFF 0.1 - 0.3 levels (no transformations) all had scale 0's voxel size; a
second scale, or a translation listed before the scale, was ignored or applied unscaled; a
pyramid listed coarsest first opened with the coarse level as scale 0.  And crashes without a
word of what was wrong: 0.1 / 0.2 5-D images without axes (IndexError), upper-case axis names
and 2-D images ("'z' is not in list"), a scale stored in an array (KeyError).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import voxgate
from voxgate.errors import CapabilityNotSupportedError, InvalidRequestError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_multiscale

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

FORMATS = [FormatV04(), FormatV05()]
FMT_IDS = ["ngff0.4-zarr2", "ngff0.5-zarr3"]
ODD = (slice(1, 4), slice(2, 9), slice(3, 11))


def levels_of(data: np.ndarray, n: int) -> list[np.ndarray]:
    """Levels subsampled by 2, 4, 8 ... in y and x, odd shapes kept (ceil)."""
    return [np.ascontiguousarray(data[..., :: 2**k, :: 2**k]) for k in range(n)]


def hand_written(path: Path, levels: list[np.ndarray], ms: dict[str, Any],
                 zarr_format: int = 2) -> str:
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    for i, a in enumerate(levels):
        root.create_array(str(i), shape=a.shape, chunks=tuple(min(n, 4) for n in a.shape),
                          dtype=a.dtype)[:] = a
    ms = {"datasets": [{"path": str(i)} for i in range(len(levels))], **ms}
    if zarr_format == 3:
        root.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    else:
        root.attrs["multiscales"] = [ms]
    return f"zarr://{path}"


def check_levels(vol: voxgate.Volume, levels: list[np.ndarray]) -> None:
    for k, level in enumerate(levels):
        view = vol.at_scale(k)
        np.testing.assert_array_equal(view.read(), level, err_msg=f"scale {k}")
        # an odd box inside each axis: one voxel in from the start, two from the end
        odd = tuple(slice(min(1, n - 1), max(min(1, n - 1) + 1, n - 2)) for n in level.shape)
        np.testing.assert_array_equal(view[odd].read(), level[odd], err_msg=f"scale {k}")


@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
def test_bioformats2raw_scale_only_pyramid_starts_where_scale_zero_does(
        tmp_path: Path, fmt: Any) -> None:
    """bioformats2raw's layout: t, c, z, y, x series with per-level scales and no
    translations, micrometre axes; every level's offset is 0, at the root and series URLs."""
    root = zarr.open_group(str(tmp_path / "b2r.zarr"), mode="w", zarr_format=fmt.zarr_format)
    if fmt.zarr_format == 3:
        root.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    else:
        root.attrs["bioformats2raw.layout"] = 3
    ome = root.create_group("OME")
    ome.attrs.update({"ome": {"version": "0.5", "series": ["0"]}} if fmt.zarr_format == 3
                     else {"series": ["0"]})
    data = np.random.default_rng(1).integers(0, 65535, (1, 1, 7, 37, 45), dtype=np.uint16)
    levels = levels_of(data, 4)
    axes = [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"},
            *({"name": n, "type": "space", "unit": "micrometer"} for n in "zyx")]
    write_multiscale(levels, root.create_group("0"), fmt=fmt, axes=axes,
                     coordinate_transformations=[
                         [{"type": "scale", "scale": [1.0, 1.0, 0.5, 0.1 * 2**k, 0.1 * 2**k]}]
                         for k in range(4)],
                     storage_options={"chunks": [1, 1, 4, 8, 8]})
    for url in (f"zarr://{tmp_path}/b2r.zarr", f"zarr://{tmp_path}/b2r.zarr/0"):
        vol = voxgate.open(url)
        assert vol.shape == (7, 37, 45) and vol.dtype == np.uint16
        # was (0, -1, -1) at the factor-4 and factor-8 levels
        assert [tuple(s.offset) for s in vol.scales] == [(0, 0, 0)] * 4
        assert [v for s in vol.scales for v in s.voxel_size.zyx()] == pytest.approx(
            [v for k in range(4) for v in (500.0, 100.0 * 2**k, 100.0 * 2**k)])
        assert [s.translation for s in vol.scales] == [(0.0, 0.0, 0.0)] * 4
        check_levels(vol, [a[0, 0] for a in levels])


@pytest.mark.parametrize(("version", "lead"), [("0.1", (1, 1)), ("0.2", ()), ("0.3", (1, 1))])
def test_ngff_before_0_4_levels_are_scaled_by_their_shapes(tmp_path: Path, version: str,
                                                           lead: tuple[int, ...]) -> None:
    """0.1 / 0.2 have no axes (5-D t, c, z, y, x), 0.3 bare names; none has transformations."""
    data = np.random.default_rng(2).integers(0, 255, (*lead, 9, 17, 23), dtype=np.uint8)
    levels = levels_of(data, 3)
    ms: dict[str, Any] = {"version": version}
    if version == "0.3":
        ms["axes"] = ["t", "c", "z", "y", "x"]
    vol = voxgate.open(hand_written(tmp_path / "old.zarr", levels, ms))
    assert vol.shape == (9, 17, 23)
    # 17 -> 5 is a downsampling by 4 (ceil) as well as by 3 (floor): the power of two wins
    assert [s.voxel_size.zyx() for s in vol.scales] == [(1.0, 1.0, 1.0), (1.0, 2.0, 2.0),
                                                        (1.0, 4.0, 4.0)]
    assert [tuple(s.offset) for s in vol.scales] == [(0, 0, 0)] * 3
    check_levels(vol, [a.reshape(a.shape[-3:]) for a in levels])


def test_a_level_no_downsampling_makes_is_refused(tmp_path: Path) -> None:
    data = np.zeros((4, 10, 10), dtype=np.uint8)
    url = hand_written(tmp_path / "odd.zarr", [data, data[:, :7, :7].copy()], {"version": "0.2"})
    with pytest.raises(InvalidRequestError, match="no downsampling"):
        voxgate.open(url)


def test_upper_case_axis_names(tmp_path: Path) -> None:
    data = np.random.default_rng(3).integers(0, 255, (2, 5, 17, 23), dtype=np.uint8)
    axes = [{"name": "C", "type": "channel"},
            *({"name": n, "type": "space", "unit": "nanometer"} for n in "ZYX")]
    url = hand_written(tmp_path / "upper.zarr", [data], {"version": "0.4", "axes": axes,
                       "datasets": [{"path": "0", "coordinateTransformations": [
                           {"type": "scale", "scale": [1, 40, 8, 4]}]}]})
    vol = voxgate.open(url)
    assert vol.shape == (2, 5, 17, 23) and vol.voxel_size.zyx() == (40.0, 8.0, 4.0)
    np.testing.assert_array_equal(vol[:, 1:4, 2:9, 3:11].read(), data[:, 1:4, 2:9, 3:11])


@pytest.mark.parametrize("names", ["yx", "cyx", "tcyx"])
def test_a_2d_image_opens_as_one_plane(tmp_path: Path, names: str) -> None:
    """(Refused until 2-D images were read as one z plane: tests/remotes/test_ome_zarr_audit2.py)"""
    sizes = {"t": 1, "c": 2, "y": 17, "x": 23}
    data = np.random.default_rng(3).integers(0, 255, [sizes[n] for n in names], dtype=np.uint8)
    kinds = {"t": "time", "c": "channel"}
    axes = [{"name": n, "type": kinds.get(n, "space")} for n in names]
    url = hand_written(tmp_path / "flat.zarr", [data], {"version": "0.4", "axes": axes,
                       "datasets": [{"path": "0", "coordinateTransformations": [
                           {"type": "scale", "scale": [1.0] * len(names)}]}]})
    vol = voxgate.open(url)
    plane = data.reshape(data.shape[-3:] if "c" in names else data.shape[-2:])
    want = plane[:, None] if "c" in names else plane[None]
    assert vol.shape == want.shape
    np.testing.assert_array_equal(vol.read(), want)


@pytest.mark.parametrize(("transforms", "size", "translation"), [
    # NGFF 0.4 orders scale then translation; listed the other way round, the translation is
    # in voxels and scaled with them
    ([{"type": "translation", "translation": [2, 3, 4]}, {"type": "scale", "scale": [40, 8, 4]}],
     (40.0, 8.0, 4.0), (80.0, 24.0, 16.0)),
    ([{"type": "scale", "scale": [10, 4, 2]}, {"type": "scale", "scale": [4, 2, 2]},
      {"type": "identity"}, {"type": "translation", "translation": [80, 24, 16]}],
     (40.0, 8.0, 4.0), (80.0, 24.0, 16.0)),
])
def test_transformations_compose_in_order(tmp_path: Path, transforms: list[Any],
                                          size: tuple[float, ...],
                                          translation: tuple[float, ...]) -> None:
    data = np.random.default_rng(4).integers(0, 255, (5, 17, 23), dtype=np.uint8)
    axes = [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    url = hand_written(tmp_path / "tf.zarr", [data], {"version": "0.4", "axes": axes,
                       "datasets": [{"path": "0", "coordinateTransformations": transforms}]})
    vol = voxgate.open(url)
    assert vol.voxel_size.zyx() == size
    assert vol.scale_meta.translation == translation
    assert tuple(vol.scale_meta.offset) == (2, 3, 4)
    np.testing.assert_array_equal(vol[ODD].read(), data[ODD])


def test_a_scale_stored_in_an_array_is_refused(tmp_path: Path) -> None:
    url = hand_written(tmp_path / "p.zarr", [np.zeros((2, 3, 4), np.uint8)], {
        "version": "0.4", "axes": [{"name": n, "type": "space"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "path": "scale_values"}]}]})
    with pytest.raises(CapabilityNotSupportedError, match="stored in an array"):
        voxgate.open(url)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_datasets_listed_coarsest_first_are_refused(tmp_path: Path, zarr_format: int) -> None:
    data = np.zeros((4, 16, 16), dtype=np.uint8)
    url = hand_written(tmp_path / "rev.zarr", [data[:, ::2, ::2].copy(), data], {
        "version": "0.4", "axes": [{"name": n, "type": "space"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
                         {"type": "scale", "scale": [1, 2, 2]}]},
                     {"path": "1", "coordinateTransformations": [
                         {"type": "scale", "scale": [1, 1, 1]}]}]}, zarr_format)
    with pytest.raises(InvalidRequestError, match="from the finest") as err:
        voxgate.open(url)
    assert f"{url}/1" in str(err.value)
