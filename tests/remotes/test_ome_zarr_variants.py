"""OME-Zarr as microscopy tools write it, read and written through ``zarr://``.

- bioformats2raw's transitional layout (NGFF 0.4 / 0.5 "bioformats2raw.layout"): a root group
  with one multiscale image per series ("0", "1", ...; listed by OME/series when present).
  The root of one series opens as that image; of several, it is refused with the URL of each.
- Images written by ome-zarr-py (``write_multiscale`` / ``write_image`` /
  ``write_multiscale_labels`` into ``parse_url(..., mode="w")``), Zarr v2 + NGFF 0.4 and Zarr
  v3 + NGFF 0.5, at odd shapes, with units, anisotropic per-level scales and translations, a
  ``c`` axis, a length-1 ``t`` axis and labels: voxgate's shape, dtype, voxel size (nm),
  offset, scales and voxels are what was written, and what voxgate writes into them is what
  ome-zarr-py's Reader and zarr-python read back.
- Defects found here: an axis unit voxgate did not know (NGFF's "decimeter", "inch", ... or a
  made-up one) was read as nm; scales voxgate added to an image in micrometres were written in
  nm (1000x too large); a multiscale-level translation (and the multiscale scale's effect on the
  datasets' translations) was ignored; the "no multiscales" message printed "{location}".
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from ome_zarr_models.v04.bioformats2raw import BioFormats2Raw as Bf2Raw04
from ome_zarr_models.v04.image import Image as Image04
from ome_zarr_models.v05.bioformats2raw import BioFormats2Raw as Bf2Raw05
from ome_zarr_models.v05.image import Image as Image05

import voxgate
from voxgate.errors import (
    InvalidRequestError,
    RemoteNotFoundError,
    VoxgateWarning,
)

with warnings.catch_warnings():
    # ome_zarr.writer builds a default deprecated Scaler() at import time (ome-zarr 0.14+)
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr.writer import (
        write_image,
        write_multiscale,
        write_multiscale_labels,
        write_plate_metadata,
        write_well_metadata,
    )

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

FORMATS = [FormatV04(), FormatV05()]
FMT_IDS = ["ngff0.4-zarr2", "ngff0.5-zarr3"]
SHAPE = (9, 45, 51)  # z, y, x: odd everywhere
NM = {"micrometer": 1e3, "nanometer": 1.0}


def new_root(path: Path, fmt: Any) -> zarr.Group:
    """A fresh root group through ome-zarr-py's own ``parse_url(mode="w")``."""
    store = parse_url(str(path), mode="w", fmt=fmt).store
    return zarr.group(store=store, zarr_format=fmt.zarr_format, overwrite=True)


def pyramid(data: np.ndarray, lead: int) -> list[np.ndarray]:
    """Three levels: (1, 2, 2) then (2, 2, 2) subsampled, odd shapes kept (ceil)."""
    keep = (slice(None),) * lead
    one = data[(*keep, slice(None), slice(None, None, 2), slice(None, None, 2))]
    two = one[(*keep, slice(None, None, 2), slice(None, None, 2), slice(None, None, 2))]
    return [data, np.ascontiguousarray(one), np.ascontiguousarray(two)]


#: scale 0 voxel size and offset (voxels); levels are (1, 2, 2) and (2, 4, 4) times coarser
VOXEL0 = (0.3, 0.05, 0.05)  # in the axes' unit: anisotropic
OFFSET0 = (2, 3, 5)
FACTORS = [(1, 1, 1), (1, 2, 2), (2, 4, 4)]


def transforms(lead: int, unit_scale: float = 1.0) -> list[list[dict[str, Any]]]:
    """Per-level scale and pixel-centre translation (t_k = t_0 + (v_k - v_0) / 2), with
    lengths ``unit_scale`` times VOXEL0's numbers (1000 for the same lengths in nm)."""
    v0 = [v * unit_scale for v in VOXEL0]
    out = []
    for f in FACTORS:
        vk = [v * k for v, k in zip(v0, f, strict=True)]
        t = [o * a + (b - a) / 2 for o, a, b in zip(OFFSET0, v0, vk, strict=True)]
        out.append([{"type": "scale", "scale": [1.0] * lead + vk},
                    {"type": "translation", "translation": [0.0] * lead + t}])
    return out


def axes_of(names: str, unit: str) -> list[dict[str, str]]:
    kinds = {"t": "time", "c": "channel"}
    return [{"name": n, "type": kinds.get(n, "space"), **({"unit": unit} if n in "zyx" else {})}
            for n in names]


def write_variant(path: Path, fmt: Any, names: str, unit: str,
                  dtype: str = "uint16") -> list[np.ndarray]:
    """An ome-zarr-py multiscale image with axes ``names``; returns the levels written."""
    sizes = {"t": 1, "c": 2, "z": SHAPE[0], "y": SHAPE[1], "x": SHAPE[2]}
    rng = np.random.default_rng(len(names))
    data = rng.integers(0, 60000, [sizes[n] for n in names]).astype(dtype)
    lead = len(names) - 3
    levels = pyramid(data, lead)
    scale = 1.0 if unit == "micrometer" else 1e3  # the same lengths in either unit
    write_multiscale(levels, new_root(path, fmt), fmt=fmt, axes=axes_of(names, unit),
                     coordinate_transformations=transforms(lead, scale),
                     storage_options={"chunks": [1] * lead + [4, 16, 16]})
    (Image05 if fmt.zarr_format == 3 else Image04).from_zarr(zarr.open_group(str(path), mode="r"))
    return levels


def reader_levels(path: Path) -> list[np.ndarray]:
    node = next(iter(Reader(parse_url(str(path)))()))
    return [np.asarray(a) for a in node.data]


def dataset_paths(path: Path) -> list[str]:
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    return [d["path"] for d in attrs.get("ome", attrs)["multiscales"][0]["datasets"]]


def zyx_levels(levels: list[np.ndarray], names: str) -> list[np.ndarray]:
    """What voxgate shows: ([c,] z, y, x), a length-1 t dropped."""
    return [a[0] if names.startswith("t") else a for a in levels]


# -- ome-zarr-py variants ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
@pytest.mark.parametrize(("names", "unit"), [("zyx", "micrometer"), ("czyx", "nanometer"),
                                             ("tczyx", "micrometer"), ("tzyx", "nanometer")])
def test_ome_zarr_py_variant_reads_as_written(tmp_path: Path, fmt: Any, names: str,
                                              unit: str) -> None:
    path = tmp_path / "img.zarr"
    levels = zyx_levels(write_variant(path, fmt, names, unit), names)
    vol = voxgate.open(f"zarr://{path}")
    channels = 2 if "c" in names else 1
    assert vol.shape == ((2,) if channels > 1 else ()) + SHAPE
    assert vol.dtype == np.uint16
    assert vol.kind == "image"
    assert vol.meta.num_channels == channels
    assert len(vol.scales) == 3
    for k, (sc, f) in enumerate(zip(vol.scales, FACTORS, strict=True)):
        # 0.3 x 0.05 x 0.05 um, whatever unit the file used: nm in voxgate
        assert sc.voxel_size.zyx() == pytest.approx([v * 1e3 * m for v, m in zip(
            VOXEL0, f, strict=True)])
        assert sc.voxel_size.unit == "nm"
        # offsets: scale 0's from the translation, others offset // factor
        assert tuple(sc.offset) == tuple(o // m for o, m in zip(OFFSET0, f, strict=True))
        assert tuple(sc.shape) == levels[k].shape[-3:]
        got = vol.at_scale(k).read()
        np.testing.assert_array_equal(got, levels[k], err_msg=f"scale {k}")
    assert vol.scales[0].translation == pytest.approx([o * v * 1e3 for o, v in zip(
        OFFSET0, VOXEL0, strict=True)])


@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
@pytest.mark.parametrize("names", ["czyx", "tczyx", "zyx"])
def test_voxgate_writes_read_back_by_ome_zarr_py(tmp_path: Path, fmt: Any, names: str) -> None:
    path = tmp_path / "img.zarr"
    written = write_variant(path, fmt, names, "micrometer")
    vol = voxgate.open(f"zarr://{path}", mode="r+")
    rng = np.random.default_rng(3)
    lead = (2,) if "c" in names else ()
    patch = rng.integers(0, 60000, (*lead, 3, 7, 9), dtype=np.uint16)
    vol[..., 1:4, 2:9, 3:12] = patch  # view coordinates: 0-based, whatever the offset
    coarse = vol.at_scale(1)
    whole = rng.integers(0, 60000, coarse.shape, dtype=np.uint16)
    coarse[...] = whole

    expected = [a.copy() for a in written]
    t = (0,) if names.startswith("t") else ()
    expected[0][(*t, Ellipsis, slice(1, 4), slice(2, 9), slice(3, 12))] = patch
    expected[1][t] = whole
    got = reader_levels(path)
    for k, ds in enumerate(dataset_paths(path)):
        np.testing.assert_array_equal(got[k], expected[k], err_msg=f"ome-zarr-py, scale {k}")
        np.testing.assert_array_equal(zarr.open_array(str(path / ds), mode="r")[:],
                                      expected[k], err_msg=f"zarr-python, scale {k}")


@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
def test_ome_zarr_py_own_pyramid_and_labels(tmp_path: Path, fmt: Any) -> None:
    """write_image's own downsampling (non-integer factors at odd shapes) and a labels group
    (image-label metadata) whose label image opens as a segmentation, also after a write."""
    path = tmp_path / "cells.zarr"
    rng = np.random.default_rng(9)
    image = rng.integers(0, 255, SHAPE, dtype=np.uint8)
    labels = rng.integers(0, 7, SHAPE, dtype=np.uint8)  # uint8: only image-label says "labels"
    root = new_root(path, fmt)
    um = {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
    write_image(image, root, scale_factors=(2, 4), fmt=fmt, axes="zyx", axes_units=um,
                scale={"z": 0.04, "y": 0.008, "x": 0.008},
                storage_options={"chunks": (4, 16, 16)})
    label_levels = pyramid(labels, 0)
    nm = {"z": "nanometer", "y": "nanometer", "x": "nanometer"}
    write_multiscale_labels(label_levels, root, name="cells", fmt=fmt, axes="zyx",
                            axes_units=nm, coordinate_transformations=[
                                [{"type": "scale", "scale": [40.0 * f[0], 8.0 * f[1], 8.0 * f[2]]},
                                 {"type": "translation", "translation": [
                                     40.0 * (f[0] - 1) / 2, 4.0 * (f[1] - 1),
                                     4.0 * (f[2] - 1)]}] for f in FACTORS],
                            label_metadata={"colors": [{"label-value": 1,
                                                        "rgba": [255, 0, 0, 255]}]})
    vol = voxgate.open(f"zarr://{path}")
    node = next(iter(Reader(parse_url(str(path)))()))
    stored = node.metadata["coordinateTransformations"]
    assert vol.kind == "image" and vol.shape == SHAPE and len(vol.scales) == len(node.data)
    for k, (sc, arr) in enumerate(zip(vol.scales, node.data, strict=True)):
        np.testing.assert_array_equal(vol.at_scale(k).read(), np.asarray(arr))
        assert sc.voxel_size.zyx() == pytest.approx([v * 1e3 for v in stored[k][0]["scale"]])
        assert tuple(sc.offset) == (0, 0, 0)

    seg_url = f"zarr://{path}/labels/cells"
    seg = voxgate.open(seg_url, mode="r+")
    assert seg.kind == "segmentation" and seg.dtype == np.uint8 and seg.shape == SHAPE
    assert [v for sc in seg.scales for v in sc.voxel_size.zyx()] == pytest.approx(
        [40.0, 8.0, 8.0, 40.0, 16.0, 16.0, 80.0, 32.0, 32.0])
    assert [tuple(sc.offset) for sc in seg.scales] == [(0, 0, 0)] * 3
    for k, level in enumerate(label_levels):
        np.testing.assert_array_equal(seg.at_scale(k).read(), level)
    seg[2:5, 10:20, 30:51] = 42
    labels[2:5, 10:20, 30:51] = 42
    label_node = next(iter(Reader(parse_url(str(path / "labels" / "cells")))()))
    np.testing.assert_array_equal(np.asarray(label_node.data[0]), labels)
    assert any(isinstance(spec, Label) for spec in label_node.specs)  # a label to the reader

    with pytest.raises(InvalidRequestError, match="labels group") as err:
        voxgate.open(f"zarr://{path}/labels")
    assert seg_url in str(err.value)


@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
def test_a_longer_time_axis_needs_a_time_point(tmp_path: Path, fmt: Any) -> None:
    """A timelapse opens one time point at a time (``time=``; it was refused whole):
    tests/remotes/test_time_points_audit.py has the rest."""
    path = tmp_path / "movie.zarr"
    data = np.zeros((2, 5, 12, 13), dtype=np.uint8)
    data[1] = 7
    write_multiscale([data], new_root(path, fmt), fmt=fmt, axes="tzyx")
    with pytest.raises(InvalidRequestError, match=r"timelapse of 2 time points.*time=0\.\.1"):
        voxgate.open(f"zarr://{path}")
    assert (voxgate.open(f"zarr://{path}", time=1).read() == 7).all()


# -- units ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("unit", "nm"), [("nanometer", 1.0), ("micrometer", 1e3),
                                          ("angstrom", 0.1), ("decimeter", 1e8),
                                          ("femtometer", 1e-6), ("inch", 2.54e7)])
def test_every_ngff_length_unit_is_converted(tmp_path: Path, unit: str, nm: float) -> None:
    """decimeter, femtometer, inch (NGFF units ome-zarr-py accepts) were read as nm."""
    path = tmp_path / "u.zarr"
    fmt = FormatV04()
    write_multiscale([np.zeros((3, 5, 7), dtype=np.uint8)], new_root(path, fmt), fmt=fmt,
                     axes=axes_of("zyx", unit), coordinate_transformations=[[
                         {"type": "scale", "scale": [4.0, 2.0, 1.0]},
                         {"type": "translation", "translation": [8.0, 6.0, 3.0]}]])
    sc = voxgate.open(f"zarr://{path}").scales[0]
    assert sc.voxel_size.zyx() == pytest.approx([4 * nm, 2 * nm, nm])
    assert tuple(sc.offset) == (2, 3, 3)


def test_an_unknown_unit_is_read_as_nm_with_a_warning(tmp_path: Path) -> None:
    """A unit voxgate does not know (a non-NGFF "pixel") was taken as nm silently; it still
    is, so the voxels stay readable, with a VoxgateWarning naming the unit."""
    path = tmp_path / "px.zarr"
    fmt = FormatV05()
    write_multiscale([np.arange(105, dtype=np.uint8).reshape(3, 5, 7)], new_root(path, fmt),
                     fmt=fmt, axes="zyx", axes_units={"z": "pixel", "y": "pixel", "x": "pixel"})
    with pytest.warns(VoxgateWarning, match=r"'pixel'.*micrometer.*taken as nm"):
        vol = voxgate.open(f"zarr://{path}")
    assert vol.voxel_size.zyx() == pytest.approx((1.0, 1.0, 1.0))
    np.testing.assert_array_equal(vol.read(), np.arange(105, dtype=np.uint8).reshape(3, 5, 7))


@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
def test_scales_added_to_a_micrometre_image_are_in_micrometres(tmp_path: Path,
                                                               fmt: Any) -> None:
    """voxgate.downsample wrote nm numbers under micrometer axes: a 1000x too coarse scale."""
    path = tmp_path / "img.zarr"
    write_variant(path, fmt, "czyx", "micrometer")
    voxgate.downsample(f"zarr://{path}", 4, factors=[(1, 2, 2), (2, 2, 2), (1, 2, 2)])
    vol = voxgate.open(f"zarr://{path}")
    assert vol.scales[3].voxel_size.zyx() == pytest.approx((600.0, 400.0, 400.0))
    assert tuple(vol.scales[3].offset) == (1, 0, 0)
    node = next(iter(Reader(parse_url(str(path)))()))
    scale, translation = node.metadata["coordinateTransformations"][3]
    assert scale["scale"] == pytest.approx([1.0, 0.6, 0.4, 0.4])  # micrometres, as the axes say
    # centre of the first voxel: t_0 + (v_3 - v_0) / 2
    assert translation["translation"] == pytest.approx([0.0, 0.6 + 0.15, 0.15 + 0.175,
                                                        0.25 + 0.175])
    (Image05 if fmt.zarr_format == 3 else Image04).from_zarr(zarr.open_group(str(path), mode="r"))


def test_multiscale_level_transformations_apply_after_the_datasets(tmp_path: Path) -> None:
    """NGFF: the multiscale's own coordinateTransformations follow each dataset's, so the
    world translation is global_scale * dataset_translation + global_translation."""
    path = tmp_path / "g.zarr"
    fmt = FormatV04()
    data = np.arange(3 * 5 * 7, dtype=np.uint8).reshape(3, 5, 7)
    write_multiscale([data], new_root(path, fmt), fmt=fmt, axes=axes_of("zyx", "nanometer"),
                     coordinate_transformations=[[
                         {"type": "scale", "scale": [20.0, 4.0, 4.0]},
                         {"type": "translation", "translation": [20.0, 4.0, 8.0]}]])
    group = zarr.open_group(str(path), mode="r+")
    ms = group.attrs["multiscales"]
    ms[0]["coordinateTransformations"] = [
        {"type": "scale", "scale": [2.0, 2.0, 2.0]},
        {"type": "translation", "translation": [0.0, 16.0, 32.0]}]
    group.attrs["multiscales"] = ms
    Image04.from_zarr(zarr.open_group(str(path), mode="r"))
    vol = voxgate.open(f"zarr://{path}")
    assert vol.voxel_size.zyx() == pytest.approx((40.0, 8.0, 8.0))
    assert vol.scale_meta.translation == pytest.approx((40.0, 24.0, 48.0))
    assert tuple(vol.offset) == (1, 3, 6)
    np.testing.assert_array_equal(vol.read(), data)


def test_a_group_without_multiscales_names_itself(tmp_path: Path) -> None:
    """The message printed a literal "{location}" (a missing f-string prefix)."""
    path = tmp_path / "plain.zarr"
    zarr.open_group(str(path), mode="w", zarr_format=2)
    with pytest.raises(RemoteNotFoundError) as err:
        voxgate.open(f"zarr://{path}")
    assert "{location}" not in str(err.value)
    assert f"zarr://{path}/0" in str(err.value)


# -- bioformats2raw layout ---------------------------------------------------------------------
def write_bf2raw(path: Path, fmt: Any, series: int, *, ome_group: bool = True,
                 listed: list[str] | None = None) -> list[list[np.ndarray]]:
    """What bioformats2raw writes: the layout attribute, one image per series in "0", "1",
    ..., and an OME group with the series list and METADATA.ome.xml."""
    root = new_root(path, fmt)
    v3 = fmt.zarr_format == 3
    root.attrs.update({"ome": {"version": "0.5", "bioformats2raw.layout": 3}} if v3
                      else {"bioformats2raw.layout": 3})
    out = []
    for s in range(series):
        data = np.random.default_rng(s).integers(0, 4000, (3, 9 + s, 11 + 2 * s),
                                                 dtype=np.uint16)
        levels = pyramid(data[None], 1)[:2]  # a single-channel czyx image, two levels
        write_multiscale(levels, root.create_group(str(s)), fmt=fmt,
                         axes=axes_of("czyx", "micrometer"),
                         coordinate_transformations=[
                             [{"type": "scale", "scale": [1.0, 0.5, 0.1 * f, 0.1 * f]}]
                             for f in (1, 2)])
        out.append([a[0] for a in levels])
    if ome_group:
        names = listed if listed is not None else [str(s) for s in range(series)]
        meta = root.create_group("OME")
        meta.attrs.update({"ome": {"version": "0.5", "series": names}} if v3
                          else {"series": names})
        (path / "OME" / "METADATA.ome.xml").write_text(
            '<?xml version="1.0" encoding="UTF-8"?><OME xmlns='
            '"http://www.openmicroscopy.org/Schemas/OME/2016-06">'
            + "".join(f'<Image ID="Image:{s}"/>' for s in range(series)) + "</OME>")
    (Bf2Raw05 if v3 else Bf2Raw04).from_zarr(zarr.open_group(str(path), mode="r"))
    return out


@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
@pytest.mark.parametrize("ome_group", [True, False], ids=["OME-series", "no-OME-group"])
def test_bioformats2raw_one_series_opens_as_its_image(tmp_path: Path, fmt: Any,
                                                      ome_group: bool) -> None:
    path = tmp_path / "slide.ome.zarr"
    (levels,) = write_bf2raw(path, fmt, 1, ome_group=ome_group)
    vol = voxgate.open(f"zarr://{path}")
    assert vol.url == f"zarr://{path}/0"  # the image's own URL: spec() reopens it
    assert vol.shape == (3, 9, 11) and vol.dtype == np.uint16
    assert [v for sc in vol.scales for v in sc.voxel_size.zyx()] == pytest.approx(
        [500.0, 100.0, 100.0, 500.0, 200.0, 200.0])
    for k, level in enumerate(levels):
        np.testing.assert_array_equal(vol.at_scale(k).read(), level)
    # writable through the root too, and what is written is what ome-zarr-py reads
    rw = voxgate.open(f"zarr://{path}", mode="r+")
    rw[0, 1:3, 2:7] = 7
    levels[0][0, 1:3, 2:7] = 7
    np.testing.assert_array_equal(reader_levels(path / "0")[0][0], levels[0])


@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
@pytest.mark.parametrize("ome_group", [True, False], ids=["OME-series", "no-OME-group"])
def test_bioformats2raw_several_series_are_refused_with_their_urls(
    tmp_path: Path, fmt: Any, ome_group: bool
) -> None:
    path = tmp_path / "plate-scan.ome.zarr"
    series = write_bf2raw(path, fmt, 3, ome_group=ome_group)
    with pytest.raises(InvalidRequestError, match="bioformats2raw") as err:
        voxgate.open(f"zarr://{path}")
    message = str(err.value)
    for s in range(3):
        assert f"zarr://{path}/{s}" in message
    assert f"zarr://{path}/3" not in message and "OME" not in message.split("open one")[1]
    for s, levels in enumerate(series):
        vol = voxgate.open(f"zarr://{path}/{s}")
        assert vol.shape == levels[0].shape
        for k, level in enumerate(levels):
            np.testing.assert_array_equal(vol.at_scale(k).read(), level)


def test_bioformats2raw_series_paths_come_from_the_ome_group(tmp_path: Path) -> None:
    """OME/series names the images (in OME-XML order), even when it lists fewer groups than
    exist; a series list of one opens that image."""
    path = tmp_path / "listed.ome.zarr"
    levels = write_bf2raw(path, FormatV04(), 2, listed=["1"])
    vol = voxgate.open(f"zarr://{path}")
    assert vol.url == f"zarr://{path}/1"
    np.testing.assert_array_equal(vol.read(), levels[1][0])


def test_bioformats2raw_unknown_layout_and_empty_root(tmp_path: Path) -> None:
    path = tmp_path / "odd.zarr"
    zarr.open_group(str(path), mode="w", zarr_format=2).attrs["bioformats2raw.layout"] = 2
    with pytest.raises(InvalidRequestError, match="layout 3"):
        voxgate.open(f"zarr://{path}")
    zarr.open_group(str(path), mode="w", zarr_format=2).attrs["bioformats2raw.layout"] = 3
    with pytest.raises(RemoteNotFoundError, match="no image"):
        voxgate.open(f"zarr://{path}")


def test_hcs_plate_is_refused_with_its_field_urls(tmp_path: Path) -> None:
    path = tmp_path / "plate.zarr"
    fmt = FormatV04()
    root = new_root(path, fmt)
    write_plate_metadata(root, ["A"], ["1", "2"], ["A/1", "A/2"], fmt=fmt)
    for well in ("A/1", "A/2"):
        group = root.require_group(well)
        write_well_metadata(group, ["0"], fmt=fmt)
        write_multiscale([np.zeros((3, 5, 7), dtype=np.uint8)], group.create_group("0"),
                         fmt=fmt, axes="zyx")
    with pytest.raises(InvalidRequestError, match="HCS plate") as err:
        voxgate.open(f"zarr://{path}")
    assert f"zarr://{path}/A/1/0" in str(err.value) and f"zarr://{path}/A/2/0" in str(err.value)
    assert voxgate.open(f"zarr://{path}/A/2/0").shape == (3, 5, 7)
