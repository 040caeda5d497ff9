"""OME-Zarr audit 2: several multiscales, 2-D images and ``omero`` rendering settings.

Images are written by ome-zarr-py (``write_image`` / ``write_multiscale`` /
``write_multiscale_labels``, NGFF 0.4 on Zarr v2 and 0.5 on Zarr v3) and read by voxgate;
what voxgate writes is read by ome-zarr-py's Reader and validated by ome-zarr-models.

Defects found here:
- only the first entry of ``multiscales`` could be read (NGFF: "the user can choose by name,
  using the first multiscale as a fallback"); now ``voxgate.open(url, multiscale=NAME | INDEX)``
  chooses, ``spec()`` passes the choice on, errors list the names, and ``meta.extra`` holds them;
  scales added to a chosen multiscale go into it, never onto another's dataset paths;
- 2-D images (``yx``, ``cyx``, ``tcyx``; NGFF allows 2 space axes) and 2-D label images were
  refused; they now open as one z plane (z voxel size = the coarser of the level's y and x),
  read, write and downsample (new levels stay 2-D, as ome-zarr-py reads them);
- ``omero`` (channel labels, colours, windows) was ignored on reading and never written:
  ome-zarr-py and napari showed voxgate's images with guessed names and contrast.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from ome_zarr_models.common.omero import Omero
from ome_zarr_models.v04.image import Image as Image04
from ome_zarr_models.v05.image import Image as Image05

import voxgate
from voxgate.errors import InvalidRequestError, VoxgateWarning

with warnings.catch_warnings():
    # ome_zarr.writer builds a default deprecated Scaler() at import time (ome-zarr 0.14+)
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr.writer import write_image, write_multiscale, write_multiscale_labels

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

FORMATS = [FormatV04(), FormatV05()]
FMT_IDS = ["ngff0.4-zarr2", "ngff0.5-zarr3"]


def new_root(path: Path, fmt: Any) -> zarr.Group:
    store = parse_url(str(path), mode="w", fmt=fmt).store
    return zarr.group(store=store, zarr_format=fmt.zarr_format, overwrite=True)


def ome_attrs(path: Path) -> tuple[zarr.Group, dict[str, Any]]:
    """The group at ``path`` and its OME attributes (inside ``ome`` on Zarr v3)."""
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    return group, dict(attrs.get("ome", attrs))


def ome_zarr_py_node(path: Path) -> Any:
    return next(iter(Reader(parse_url(str(path)))()))


def validate(path: Path) -> None:
    group = zarr.open_group(str(path), mode="r")
    (Image05 if group.metadata.zarr_format == 3 else Image04).from_zarr(group)


# -- 2-D images ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
@pytest.mark.parametrize("axes", ["yx", "cyx", "tcyx"])
def test_a_2d_image_reads_and_writes_as_one_plane(tmp_path: Path, fmt: Any, axes: str) -> None:
    sizes = {"t": 1, "c": 2, "y": 44, "x": 52}
    data = np.random.default_rng(1).integers(0, 60000, [sizes[a] for a in axes],
                                             dtype=np.uint16)
    path = tmp_path / "section.zarr"
    write_image(data, new_root(path, fmt), axes=axes, fmt=fmt, scale_factors=(2,),
                scale={"y": 0.008, "x": 0.004}, axes_units={"y": "micrometer", "x": "micrometer"})
    vol = voxgate.open(str(path), mode="r+")
    lead = (2,) if "c" in axes else ()
    assert vol.shape == (*lead, 1, 44, 52)
    # z is the coarser in-plane voxel size of each level, so downsampling toward isotropy
    # halves y and x
    assert vol.voxel_size.zyx() == pytest.approx((8.0, 8.0, 4.0))
    assert [tuple(s.shape) for s in vol.meta.scales] == [(1, 44, 52), (1, 22, 26)]
    assert vol.meta.scales[1].voxel_size.zyx() == pytest.approx((16.0, 16.0, 8.0))
    assert vol.meta.scales[1].offset == (0, 0, 0)
    plane = data.reshape(data.shape[1:]) if axes[0] == "t" else data  # the t axis is length 1
    np.testing.assert_array_equal(vol.read(), plane[..., np.newaxis, :, :])
    np.testing.assert_array_equal(vol[..., 0, 7:20, 9:33].read(), plane[..., 7:20, 9:33])

    patch = np.full((*lead, 1, 5, 6), 7, dtype=np.uint16)
    vol[..., 0:1, 10:15, 20:26] = patch
    stored = np.asarray(zarr.open_group(str(path), mode="r")["s0"])  # the 2-D array itself
    assert stored.shape == data.shape
    expected = data.copy()
    expected[..., 10:15, 20:26] = 7
    np.testing.assert_array_equal(stored, expected)
    # ome-zarr-py reads what voxgate wrote; the level opens by its own URL as the group gives it
    np.testing.assert_array_equal(np.asarray(ome_zarr_py_node(path).data[0]), expected)
    level = voxgate.open(str(path / "s1"))
    assert level.shape == (*lead, 1, 22, 26)
    assert level.voxel_size.zyx() == pytest.approx((16.0, 16.0, 8.0))
    with pytest.raises(IndexError):
        vol[..., 1:2, 0:4, 0:4].read()  # there is one plane
    assert vol.missing_chunks() == []


@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
def test_a_2d_image_downsamples_into_2d_levels(tmp_path: Path, fmt: Any) -> None:
    data = np.random.default_rng(2).integers(0, 255, (2, 40, 64), dtype=np.uint8)
    path = tmp_path / "flat.zarr"
    write_multiscale([data], new_root(path, fmt), axes="cyx", fmt=fmt, coordinate_transformations=[
        [{"type": "scale", "scale": [1.0, 4.0, 4.0]}]])
    voxgate.downsample(voxgate.open(str(path), mode="r+"), 3)
    vol = voxgate.open(str(path))
    assert [tuple(s.shape) for s in vol.meta.scales] == [(1, 40, 64), (1, 20, 32), (1, 10, 16)]
    assert [s.voxel_size.zyx() for s in vol.meta.scales] == [
        (4.0, 4.0, 4.0), (8.0, 8.0, 8.0), (16.0, 16.0, 16.0)]
    # the new levels are 2-D arrays with 2-D transformations, as NGFF and ome-zarr-py want them
    node = ome_zarr_py_node(path)
    assert [a.shape for a in node.data] == [(2, 40, 64), (2, 20, 32), (2, 10, 16)]
    _, ome = ome_attrs(path)
    scales = [d["coordinateTransformations"][0]["scale"] for d in ome["multiscales"][0]["datasets"]]
    assert scales == [[1.0, 4.0, 4.0], [1.0, 8.0, 8.0], [1.0, 16.0, 16.0]]
    mean = data.reshape(2, 20, 2, 32, 2).mean(axis=(2, 4))
    np.testing.assert_array_equal(np.asarray(node.data[1]), np.floor(mean).astype(np.uint8))
    validate(path)


@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
def test_a_2d_label_image_opens_as_a_segmentation(tmp_path: Path, fmt: Any) -> None:
    image = np.zeros((30, 34), dtype=np.uint8)
    labels = np.random.default_rng(3).integers(0, 2**40, (30, 34), dtype=np.uint64)
    path = tmp_path / "em.zarr"
    root = new_root(path, fmt)
    write_image(image, root, axes="yx", fmt=fmt, scale_factors=())
    write_multiscale_labels([labels], root, name="cells", axes="yx", fmt=fmt)
    seg = voxgate.open(str(path / "labels" / "cells"), mode="r+")
    assert seg.meta.kind == "segmentation" and seg.shape == (1, 30, 34)
    np.testing.assert_array_equal(seg.read()[0], labels)
    seg[0:1, 0:2, 0:3] = np.full((1, 2, 3), 2**63 + 5, dtype=np.uint64)
    node = next(n for n in Reader(parse_url(str(path / "labels" / "cells")))()
                if any(isinstance(s, Label) for s in n.specs))
    assert np.asarray(node.data[0])[0:2, 0:3].tolist() == [[2**63 + 5] * 3] * 2


# -- several multiscales ------------------------------------------------------------------------
def two_multiscales(path: Path, fmt: Any) -> np.ndarray:
    """An image with multiscale "mean" (ome-zarr-py's pyramid: s0, s1) and a second one,
    "nearest", over the same s0 with its own subsampled level ``nearest/1``."""
    data = np.random.default_rng(4).integers(0, 255, (8, 32, 40), dtype=np.uint8)
    root = new_root(path, fmt)
    write_image(data, root, axes="zyx", fmt=fmt, scale_factors=(2,), name="mean")
    sub = np.ascontiguousarray(data[::2, ::2, ::2])
    root.create_array("nearest/1", data=sub, chunks=(4, 16, 20))
    key = "ome" if fmt.zarr_format == 3 else None
    attrs = dict(root.attrs)
    ome = dict(attrs[key]) if key else attrs
    first = ome["multiscales"][0]
    second = {"name": "nearest", "axes": first["axes"], "type": "nearest", "datasets": [
        first["datasets"][0],
        {"path": "nearest/1", "coordinateTransformations": [
            {"type": "scale", "scale": [2.0, 2.0, 2.0]},
            {"type": "translation", "translation": [0.5, 0.5, 0.5]}]}]}
    ome["multiscales"] = [first, second]
    root.attrs.update({key: ome} if key else ome)
    return data


@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
def test_a_multiscale_is_chosen_by_name_or_index(tmp_path: Path, fmt: Any) -> None:
    path = tmp_path / "two.zarr"
    data = two_multiscales(path, fmt)
    first = voxgate.open(str(path), scale=1)  # the first, as NGFF says
    assert first.meta.extra["multiscales"] == ["mean", "nearest"]
    assert first.meta.extra["multiscale"] == 0
    assert not np.array_equal(first.read(), data[::2, ::2, ::2])  # ome-zarr-py's resize
    for choice in ("nearest", 1):
        vol = voxgate.open(str(path), scale=1, multiscale=choice)
        assert vol.meta.extra["multiscale"] == 1
        np.testing.assert_array_equal(vol.read(), data[::2, ::2, ::2])
        # the choice travels with the volume (the relay and block-wise workers reopen it so)
        spec = vol.spec()
        assert spec["options"] == {"multiscale": choice}
        again = voxgate.open(spec["url"], scale=spec["scale"], **spec["options"])
        np.testing.assert_array_equal(again.read(), data[::2, ::2, ::2])
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(vol)).read(),
                                      data[::2, ::2, ::2])
    with pytest.raises(InvalidRequestError, match=r"0 \('mean'\), 1 \('nearest'\)"):
        voxgate.open(str(path), multiscale="median")
    with pytest.raises(InvalidRequestError, match="'nearest'"):
        voxgate.open(str(path), multiscale=2)
    with pytest.raises(InvalidRequestError, match="not an OME-Zarr group"):
        voxgate.open(str(path / "nearest" / "1"), multiscale="nearest")


@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
def test_scales_added_to_a_chosen_multiscale_go_into_it(tmp_path: Path, fmt: Any) -> None:
    path = tmp_path / "two.zarr"
    data = two_multiscales(path, fmt)
    vol = voxgate.downsample(voxgate.open(str(path), mode="r+", multiscale="nearest"), 3)
    assert [tuple(s.shape) for s in vol.meta.scales] == [(8, 32, 40), (4, 16, 20), (2, 8, 10)]
    _, ome = ome_attrs(path)
    mean, nearest = ome["multiscales"]
    assert [d["path"] for d in mean["datasets"]] == ["s0", "s1"]  # untouched
    paths = [d["path"] for d in nearest["datasets"]]
    assert paths[:2] == ["s0", "nearest/1"] and paths[2] not in ("s0", "s1", "nearest/1")
    np.testing.assert_array_equal(voxgate.open(str(path), scale=1).read(),
                                  np.asarray(zarr.open_group(str(path), mode="r")["s1"]))
    coarse = voxgate.open(str(path), scale=2, multiscale="nearest").read()
    assert coarse.shape == (2, 8, 10)
    np.testing.assert_array_equal(coarse, np.asarray(zarr.open_group(str(path))[paths[2]]))
    assert data.shape == (8, 32, 40)


# -- omero --------------------------------------------------------------------------------------
OMERO = {"channels": [
    {"label": "EM", "color": "FFFFFF", "active": True,
     "window": {"min": 0, "max": 65535, "start": 100, "end": 4000}},
    {"label": "mito", "color": "FF00FF", "active": False,
     "window": {"min": 0, "max": 65535, "start": 0, "end": 900}},
]}


@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
def test_omero_is_read_into_the_metadata(tmp_path: Path, fmt: Any) -> None:
    data = np.zeros((2, 4, 16, 16), dtype=np.uint16)
    path = tmp_path / "two_channels.zarr"
    write_image(data, new_root(path, fmt), axes="czyx", fmt=fmt, scale_factors=(),
                omero=OMERO)
    vol = voxgate.open(str(path))
    assert vol.meta.extra["channel_names"] == ["EM", "mito"]
    assert vol.meta.extra["omero"]["channels"][1]["window"]["end"] == 900
    assert vol.meta.extra["omero"]["channels"][1]["color"] == "FF00FF"
    assert voxgate.open(str(path / "s0")).meta.extra["channel_names"] == ["EM", "mito"]
    # a block voxgate cannot use costs its channel names, with a warning, never the image
    group = zarr.open_group(str(path), mode="r+")
    key = "ome" if fmt.zarr_format == 3 else None
    for omero, kept in (({"channels": OMERO["channels"][:1]}, True), ({"channels": "EM"}, False)):
        attrs = dict(group.attrs)
        (attrs[key] if key else attrs)["omero"] = omero
        group.attrs.update(attrs)
        with pytest.warns(VoxgateWarning, match="omero"):
            extra = voxgate.open(str(path)).meta.extra
        assert "channel_names" not in extra and ("omero" in extra) is kept


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize(("dtype", "channels", "window"), [
    ("uint8", 1, (0, 255)), ("uint16", 3, (0, 65535)), ("int16", 2, (-32768, 32767)),
    ("float32", 1, (0.0, 1.0)),
])
def test_voxgate_writes_an_omero_block_viewers_read(tmp_path: Path, zarr_format: int,
                                                    dtype: str, channels: int,
                                                    window: tuple[float, float]) -> None:
    path = tmp_path / "made.zarr"
    vol = voxgate.create(f"zarr://{path}", shape=(4, 32, 32), dtype=dtype, chunks=(4, 16, 16),
                         voxel_size=(40, 8, 8), num_channels=channels, num_scales=2,
                         zarr_format=zarr_format)
    assert vol.meta.extra["channel_names"] == [f"channel_{i}" for i in range(channels)]
    _, ome = ome_attrs(path)
    Omero.model_validate(ome["omero"])  # colours, windows: NGFF's schema
    validate(path)
    node = ome_zarr_py_node(path)
    assert node.metadata["channel_names"] == [f"channel_{i}" for i in range(channels)]
    assert node.metadata["contrast_limits"] == [list(window)] * channels
    colours = [c[1] for c in node.metadata["colormap"]]
    assert len(colours) == channels and len({tuple(c) for c in colours}) == channels
    # a 3-D image is still written 3-D
    assert [a["name"] for a in ome["multiscales"][0]["axes"]][-3:] == ["z", "y", "x"]


def test_a_segmentation_gets_no_omero_block(tmp_path: Path) -> None:
    path = tmp_path / "seg.zarr"
    seg = voxgate.create(f"zarr://{path}", shape=(4, 32, 32), dtype="uint64",
                         chunks=(4, 16, 16), voxel_size=(40, 8, 8), kind="segmentation")
    _, ome = ome_attrs(path)
    assert "omero" not in ome  # rendering settings of an image; labels are coloured by id
    assert seg.meta.extra == {"multiscale": 0, "multiscales": ["seg.zarr"]}
    validate(path)
