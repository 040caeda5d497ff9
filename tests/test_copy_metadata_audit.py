"""What metadata survives ``voxgate.copy`` into a destination it creates (audit).

Each source is written by the established library of its format (ome-zarr-py for OME-Zarr,
CloudVolume for precomputed) and each destination read back by it, never by voxgate alone.

Defect found here: the copy created its destination with an empty ``meta.extra``, so an
OME-Zarr image copied to OME-Zarr lost its channels' names, colours, visibility and display
windows (``omero``): ome-zarr-py and napari showed the copy as ``channel_0``, ``channel_1``
over the dtype's whole range.  Now the parts of ``extra`` that describe the image wherever it
is stored (``channel_names``, ``omero``) go to the destination's ``create``; the keys that
name parts of the source's own store (an OME-Zarr group's multiscale index and names, a
precomputed layer's mesh, skeleton and segment-property directories, which the copy does not
copy) are still left out: the guards below fail if a copy starts pointing a destination at
directories it does not hold.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from cloudvolume import CloudVolume
from ome_zarr_models.v04.image import Image as Image04
from ome_zarr_models.v05.image import Image as Image05

import voxgate

with warnings.catch_warnings():
    # ome_zarr.writer builds a default deprecated Scaler() at import time (ome-zarr 0.14+)
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr.writer import write_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

OMERO = {"name": "em-and-mito", "channels": [
    {"label": "EM", "color": "FFFFFF", "active": True,
     "window": {"min": 0, "max": 65535, "start": 100, "end": 4000}},
    {"label": "mito", "color": "FF00FF", "active": False,
     "window": {"min": 0, "max": 65535, "start": 0, "end": 900}},
], "rdefs": {"model": "color"}}
#: what ome-zarr-py's Reader makes of an image's ``omero`` (napari's layer settings)
SHOWN = ("channel_names", "contrast_limits", "colormap", "visible")


def ome_zarr_image(path: Path, fmt: Any) -> np.ndarray:
    """A 2-channel uint16 OME-Zarr image of two levels, written by ome-zarr-py with ``OMERO``
    and micrometre voxels of (0.04, 0.008, 0.008)."""
    data = np.arange(2 * 4 * 16 * 16, dtype=np.uint16).reshape(2, 4, 16, 16)
    store = parse_url(str(path), mode="w", fmt=fmt).store
    root = zarr.group(store=store, zarr_format=fmt.zarr_format, overwrite=True)
    write_image(data, root, axes="czyx", fmt=fmt, scale_factors=(2,), omero=OMERO,
                scale={"z": 0.04, "y": 0.008, "x": 0.008},
                axes_units={n: "micrometer" for n in "zyx"})
    return data


def shown(path: Path) -> dict[str, Any]:
    node = next(iter(Reader(parse_url(str(path)))()))
    return {k: node.metadata.get(k) for k in SHOWN}


def geometry(url: str) -> list[tuple[Any, ...]]:
    """Each scale's shape, offset and voxel size in nm, and the kind and channels."""
    meta = voxgate.open(url).meta
    nm = {"nm": 1.0, "um": 1e3}[meta.voxel_size.unit]
    return [(meta.kind, meta.num_channels)] + [
        (tuple(s.shape), tuple(s.offset), tuple(round(v * nm, 6) for v in s.voxel_size.zyx()))
        for s in meta.scales]


@pytest.mark.parametrize("zarr_format", [2, 3], ids=["to-zarr2", "to-zarr3"])
@pytest.mark.parametrize("fmt", [FormatV04(), FormatV05()], ids=["ngff0.4", "ngff0.5"])
def test_ome_zarr_channel_names_and_display_survive_a_copy_to_ome_zarr(
        tmp_path: Path, fmt: Any, zarr_format: int) -> None:
    src, dst = tmp_path / "src.zarr", tmp_path / "dst.zarr"
    data = ome_zarr_image(src, fmt)
    assert shown(src)["channel_names"] == ["EM", "mito"]  # (the source says so)
    voxgate.copy(f"zarr://{src}", f"zarr://{dst}", zarr_format=zarr_format, progress=False)
    # ome-zarr-py shows the copy as it shows the source: names, colours, visibility, windows
    assert shown(dst) == shown(src)
    group = zarr.open_group(str(dst), mode="r")
    attrs = dict(group.attrs)
    ome = attrs.get("ome", attrs)
    assert ome["omero"] == OMERO
    (Image05 if zarr_format == 3 else Image04).from_zarr(group)  # still valid NGFF
    assert voxgate.open(f"zarr://{dst}").meta.extra["channel_names"] == ["EM", "mito"]
    # the rest as before: the voxels, each scale's geometry (the voxel size in nm), and the
    # multiscale named by the destination, not by the source's store
    assert geometry(f"zarr://{dst}") == geometry(f"zarr://{src}")
    np.testing.assert_array_equal(voxgate.open(f"zarr://{dst}").read(), data)
    assert ome["multiscales"][0]["name"] == "dst.zarr"


def test_a_copy_of_a_region_at_one_scale_keeps_the_names(tmp_path: Path) -> None:
    """A region of scale 0 alone still holds every channel, so their names hold."""
    src, dst = tmp_path / "src.zarr", tmp_path / "part.zarr"
    ome_zarr_image(src, FormatV05())
    vol = voxgate.open(f"zarr://{src}")
    voxgate.copy(vol[:, 1:3, 4:12, 4:12], f"zarr://{dst}", scales=[0], progress=False)
    assert shown(dst) == shown(src)


def test_an_omero_block_of_other_channels_is_not_carried(tmp_path: Path) -> None:
    """A source whose ``omero`` lists another number of channels than it has (voxgate reads
    it with a warning and no channel names) gives the destination voxgate's own block, not a
    block that ome-zarr-py would pair with the wrong channels."""
    src, dst = tmp_path / "src.zarr", tmp_path / "dst.zarr"
    ome_zarr_image(src, FormatV05())
    group = zarr.open_group(str(src), mode="r+")
    attrs = dict(group.attrs)
    attrs["ome"]["omero"] = {"channels": OMERO["channels"][:1]}
    group.attrs.update(attrs)
    with pytest.warns(voxgate.errors.VoxgateWarning, match="omero"):
        voxgate.copy(f"zarr://{src}", f"zarr://{dst}", progress=False)
    assert shown(dst)["channel_names"] == ["channel_0", "channel_1"]


def cloudvolume_segmentation(path: Path) -> dict[str, Any]:
    """A precomputed segmentation written by CloudVolume, whose info names mesh, skeleton and
    segment-property directories (as Igneous leaves them)."""
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="segmentation", data_type="uint64", encoding="raw",
        resolution=[8, 8, 40], voxel_offset=[6, 4, 2], chunk_size=[16, 16, 8],
        volume_size=[32, 16, 8], mesh="mesh_mip_0_err_40", skeletons="skeletons_mip_0")
    info["segment_properties"] = "names"
    cv = CloudVolume(f"file://{path}", info=info, compress=False)
    cv.commit_info()
    cv[:, :, :] = np.arange(32 * 16 * 8, dtype=np.uint64).reshape(32, 16, 8, 1)
    return info


POINTERS = ("mesh", "skeletons", "segment_properties")


@pytest.mark.parametrize("to", ["precomputed", "zarr"])
def test_mesh_skeleton_and_property_pointers_are_not_carried(tmp_path: Path, to: str) -> None:
    """Guard: the copy copies voxels, not a layer's meshes, skeletons or segment properties,
    so the destination must not name their directories (Neuroglancer would ask for files that
    are not there); geometry and kind are carried."""
    src = tmp_path / "seg"
    cloudvolume_segmentation(src)
    assert all(k in voxgate.open(f"precomputed://{src}").meta.extra for k in POINTERS)
    dst = tmp_path / ("out" if to == "precomputed" else "out.zarr")
    voxgate.copy(f"precomputed://{src}", f"{to}://{dst}", progress=False)
    assert geometry(f"{to}://{dst}") == geometry(f"precomputed://{src}")
    if to == "precomputed":
        got = CloudVolume(f"file://{dst}").info
        assert not set(POINTERS) & set(got)
        want = CloudVolume(f"file://{src}").info
        assert got["type"] == want["type"] == "segmentation"
        for key in ("resolution", "voxel_offset", "size"):
            assert got["scales"][0][key] == want["scales"][0][key], key
    else:
        text = json.dumps(dict(zarr.open_group(str(dst), mode="r").attrs))
        assert not any(k in text for k in POINTERS)


def test_ome_zarr_channel_metadata_does_not_leak_into_a_precomputed_info(
        tmp_path: Path) -> None:
    """Guard: precomputed has no channel names or display window (Neuroglancer keeps them in
    its own state); the info CloudVolume reads holds the source's geometry and nothing of
    OME's."""
    src, dst = tmp_path / "src.zarr", tmp_path / "pc"
    ome_zarr_image(src, FormatV05())
    voxgate.copy(f"zarr://{src}", f"precomputed://{dst}", progress=False)
    info = CloudVolume(f"file://{dst}").info
    assert set(info) == {"@type", "type", "data_type", "num_channels", "scales"}
    assert info["num_channels"] == 2 and info["type"] == "image"
    assert [s["resolution"] for s in info["scales"]] == [[8, 8, 40], [16, 16, 40]]


# -- WEBKNOSSOS: a dataset URL without layer= --------------------------------------------------
def test_copy_to_a_webknossos_dataset_adds_the_layer_create_would_add(tmp_path: Path) -> None:
    """``voxgate.create("webknossos://ds", ...)`` on a dataset adds a layer named by the
    kind ("color" / "segmentation"); ``voxgate.copy(src, "webknossos://ds")`` must do the
    same, not write the source over the dataset's only layer (here "em")."""
    from .remotes.test_webknossos_peer import peer

    ds = tmp_path / "ds"
    peer("""
        import sys, numpy as np, webknossos as wk
        ds = wk.Dataset(sys.argv[1], voxel_size=(8, 8, 40))
        layer = ds.add_layer("em", "color", dtype_per_channel="uint8",
                             bounding_box=wk.BoundingBox((0, 0, 0), (16, 16, 8)))
        layer.add_mag(1, chunk_shape=32, shard_shape=64).write(
            np.full((16, 16, 8), 9, np.uint8), absolute_offset=(0, 0, 0))
    """, str(ds))
    src = voxgate.create(f"zarr://{tmp_path}/src.zarr", shape=(8, 16, 16), chunks=(8, 16, 16),
                         dtype="uint8", voxel_size=(40, 8, 8))
    src[:] = 6
    voxgate.copy(src, f"webknossos://{ds}", progress=False)
    out = peer("""
        import sys, json, webknossos as wk
        ds = wk.Dataset.open(sys.argv[1])
        print(json.dumps({name: [layer.category, int(layer.get_finest_mag().read().max())]
                          for name, layer in ds.layers.items()}))
    """, str(ds))
    assert json.loads(out.strip().splitlines()[-1]) == {"em": ["color", 9],
                                                       "color": ["color", 6]}
