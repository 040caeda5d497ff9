"""Channel names and display settings between OME-Zarr, OME-TIFF and WEBKNOSSOS (audit).

Each file is written by the established library of its format (ome-zarr-py, tifffile, the
``webknossos`` package) and each destination read back by it, never by voxgate alone.

Defects found here: ``voxgate.copy`` carried an OME-Zarr image's channel names and ``omero``
block (colours, visibility, display windows) into an OME-Zarr destination only.  An OME-TIFF
holds channel names (OME-XML ``<Channel Name=...>``) and a WEBKNOSSOS layer one colour, window
and visibility (``defaultViewConfiguration``), but voxgate neither read them (an OME-TIFF
written by tifffile with named channels opened without ``channel_names``; a layer's view
configuration was ignored) nor wrote them (a copy to OME-TIFF named no channel, a copy to
WEBKNOSSOS showed the image white over the dtype's whole range).  Now each destination the
copy creates is told what it has a place for, and nothing else.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr

import voxgate

from .remotes.test_webknossos_peer import peer
from .remotes.test_webknossos_peer import pytestmark as needs_peer

with warnings.catch_warnings():
    # ome_zarr.writer builds a default deprecated Scaler() at import time (ome-zarr 0.14+)
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.format import FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr.writer import write_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

TWO = {"channels": [
    {"label": "EM", "color": "FFFFFF", "active": True,
     "window": {"min": 0, "max": 65535, "start": 100, "end": 4000}},
    {"label": "mito", "color": "FF00FF", "active": False,
     "window": {"min": 0, "max": 65535, "start": 0, "end": 900}},
], "rdefs": {"model": "color"}}
ONE = {"channels": [
    {"label": "EM", "color": "FF8000", "active": False,
     "window": {"min": 0, "max": 65535, "start": 100, "end": 4000}},
], "rdefs": {"model": "color"}}
#: what ome-zarr-py's Reader makes of an image's ``omero`` (napari's layer settings)
SHOWN = ("contrast_limits", "colormap", "visible")


def ome_zarr_image(path: Path, omero: dict[str, Any]) -> np.ndarray:
    """A uint16 OME-Zarr image of one level, one channel per entry of ``omero``, written by
    ome-zarr-py with that block."""
    nc = len(omero["channels"])
    data = np.arange(nc * 4 * 16 * 16, dtype=np.uint16).reshape(nc, 4, 16, 16)
    fmt = FormatV05()
    store = parse_url(str(path), mode="w", fmt=fmt).store
    root = zarr.group(store=store, zarr_format=3, overwrite=True)
    write_image(data if nc > 1 else data[0], root, axes="czyx" if nc > 1 else "zyx", fmt=fmt,
                scale_factors=(), omero=omero, scale={"z": 0.04, "y": 0.008, "x": 0.008},
                axes_units={n: "micrometer" for n in "zyx"})
    return data if nc > 1 else data[0]


def shown(path: Path) -> dict[str, Any]:
    node = next(iter(Reader(parse_url(str(path)))()))
    return {k: node.metadata.get(k) for k in SHOWN}


def ome_channels(path: Path) -> list[dict[str, Any]]:
    """The Channel elements of the file's OME-XML, as tifffile parses them."""
    ome = tifffile.xml2dict(tifffile.TiffFile(path).ome_metadata)["OME"]
    listed = ome["Image"]["Pixels"].get("Channel", [])
    return listed if isinstance(listed, list) else [listed]


# -- OME-TIFF ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("names", "read"), [
    (["EM", "mito", "nuclei"], ["EM", "mito", "nuclei"]),
    (["EM", "", "nuclei"], ["EM", "channel_1", "nuclei"]),  # (ome-zarr-py's name for none)
])
def test_voxgate_reads_the_channel_names_tifffile_writes(
        tmp_path: Path, names: list[str], read: list[str]) -> None:
    path = tmp_path / "cells.ome.tif"
    data = np.arange(3 * 2 * 8 * 8, dtype=np.uint8).reshape(3, 2, 8, 8)
    tifffile.imwrite(path, data, ome=True,
                     metadata={"axes": "CZYX", "Channel": {"Name": names}})
    vol = voxgate.open(f"tiff://{path}")
    assert vol.meta.num_channels == 3
    assert vol.meta.extra["channel_names"] == read
    np.testing.assert_array_equal(vol.read(), data)


def test_an_ome_tiff_without_channel_names_gives_none(tmp_path: Path) -> None:
    """Guard: no name is made up for a file that states none, nor for RGB pages (one OME
    channel of three samples, which voxgate reads as three channels)."""
    plain, rgb = tmp_path / "plain.ome.tif", tmp_path / "rgb.ome.tif"
    tifffile.imwrite(plain, np.zeros((2, 2, 8, 8), np.uint8), ome=True,
                     metadata={"axes": "CZYX"})
    tifffile.imwrite(rgb, np.zeros((2, 8, 8, 3), np.uint8), ome=True, photometric="rgb",
                     metadata={"axes": "ZYXS", "Channel": {"Name": ["colour"]}})
    for path in (plain, rgb):
        assert "channel_names" not in voxgate.open(f"tiff://{path}").meta.extra


def test_ome_zarr_channel_names_survive_a_copy_to_ome_tiff(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.zarr", tmp_path / "out.ome.tif"
    data = ome_zarr_image(src, TWO)
    voxgate.copy(f"zarr://{src}", f"tiff://{dst}", progress=False)
    assert [c["Name"] for c in ome_channels(dst)] == ["EM", "mito"]  # tifffile reads them
    np.testing.assert_array_equal(tifffile.imread(dst), data)
    vol = voxgate.open(f"tiff://{dst}")
    assert vol.meta.extra == {"channel_names": ["EM", "mito"]}  # (no omero: no place for it)
    # and on to OME-Zarr: the names come along, in voxgate's own display block
    voxgate.copy(vol, f"zarr://{tmp_path}/back.zarr", progress=False)
    node = next(iter(Reader(parse_url(str(tmp_path / "back.zarr")))()))
    assert node.metadata["channel_names"] == ["EM", "mito"]


# -- WEBKNOSSOS ----------------------------------------------------------------------------------
def view_configuration(dataset: Path, layer: str) -> dict[str, Any] | None:
    """The layer's default_view_configuration as the webknossos package reads it."""
    out = peer("""
        import json, sys, webknossos as wk
        view = wk.Dataset.open(sys.argv[1]).get_layer(sys.argv[2]).default_view_configuration
        print(json.dumps(None if view is None else {
            "color": view.color, "intensity_range": view.intensity_range, "min": view.min,
            "max": view.max, "is_disabled": view.is_disabled, "is_inverted": view.is_inverted}))
    """, str(dataset), layer)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


@needs_peer
def test_ome_zarr_window_and_colour_survive_a_copy_to_webknossos(tmp_path: Path) -> None:
    src, ds = tmp_path / "src.zarr", tmp_path / "ds"
    data = ome_zarr_image(src, ONE)
    voxgate.copy(f"zarr://{src}", f"webknossos://{ds}", layer="em", progress=False)
    assert view_configuration(ds, "em") == {
        "color": [255, 128, 0], "intensity_range": [100, 4000], "min": 0, "max": 65535,
        "is_disabled": True, "is_inverted": None}
    layer = voxgate.open(f"webknossos://{ds}/em")
    np.testing.assert_array_equal(layer.read(), data)
    # voxgate reads the layer's configuration back: a copy to OME-Zarr shows as the source
    voxgate.copy(layer, f"zarr://{tmp_path}/back.zarr", progress=False)
    assert shown(tmp_path / "back.zarr") == shown(src)


@needs_peer
def test_voxgate_reads_the_view_configuration_the_webknossos_package_writes(
        tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    peer("""
        import sys, numpy as np, webknossos as wk
        from webknossos.dataset_properties import LayerViewConfiguration
        ds = wk.Dataset(sys.argv[1], voxel_size=(8, 8, 40))
        for name, view in [
                ("em", LayerViewConfiguration(color=(0, 255, 0), intensity_range=(10, 200),
                                              is_inverted=True)),
                ("raw", None)]:
            layer = ds.add_layer(name, "color", dtype="uint8", data_format="zarr3")
            layer.add_mag(1, chunk_shape=32, shard_shape=64).write(
                np.full((16, 16, 8), 9, np.uint8), absolute_offset=(0, 0, 0),
                allow_resize=True)
            if view is not None:
                layer.default_view_configuration = view
    """, str(ds))
    em = voxgate.open(f"webknossos://{ds}/em").meta.extra
    assert em["omero"]["channels"] == [{
        "color": "00FF00", "window": {"min": 0, "max": 255, "start": 10, "end": 200},
        "active": True, "inverted": True}]
    assert voxgate.open(f"webknossos://{ds}/raw").meta.extra == {}  # (nothing configured)


def test_a_multichannel_source_gives_a_webknossos_layer_no_view_configuration(
        tmp_path: Path) -> None:
    """Guard: a layer's one view configuration is no channel's of several, so a copy of a
    2-channel image configures none (nor says anything else of the source's ``omero``)."""
    src, ds = tmp_path / "src.zarr", tmp_path / "ds"
    ome_zarr_image(src, TWO)
    voxgate.copy(f"zarr://{src}", f"webknossos://{ds}", layer="em", progress=False)
    props = json.loads((ds / "datasource-properties.json").read_text())
    assert "defaultViewConfiguration" not in props["dataLayers"][0]
    assert voxgate.open(f"webknossos://{ds}/em").meta.extra == {}
