"""Metadata other writers put in a store, and what voxgate does with it: an NGFF 0.1 / 0.2
image (no ``axes``) keeps a readable multiscale when voxgate adds levels to it; malformed OME
plate attributes, zero or negative NGFF scales and N5 resolutions that are unreadable, in an
unknown unit or stated twice with different values are refused or warned of, naming the
attribute, never a traceback or a silent guess."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
import zarr

import voxgate
from voxgate.errors import InvalidRequestError, VoxgateWarning
from voxgate.services.downsample import downsample

from .n5_files import n5_dataset

DATA = np.arange(4 * 6 * 10, dtype=np.uint8).reshape(4, 6, 10)


# -- OME-Zarr --------------------------------------------------------------------------------
def test_levels_added_to_an_ngff_02_image_without_axes_keep_it_readable(tmp_path: Path) -> None:
    """NGFF 0.1 / 0.2 images list no axes: their arrays are t, c, z, y, x.  Adding levels took
    the axes as z, y, x: the new array got shape (4, 8, 8, 32, 32) (z, y, x in the t, c, z
    places) and 3-entry transformations, and the group no longer opened."""
    root = tmp_path / "v02.zarr"
    g = zarr.open_group(str(root), mode="w", zarr_format=2)
    g.create_array("0", shape=(1, 1, 16, 32, 32), chunks=(1, 1, 8, 16, 16), dtype="uint8")[:] = 7
    g.create_array("1", shape=(1, 1, 8, 16, 16), chunks=(1, 1, 8, 16, 16), dtype="uint8")
    g.attrs["multiscales"] = [{"version": "0.2", "datasets": [{"path": "0"}, {"path": "1"}]}]
    g.attrs["user_key"] = {"k": [1, 2]}
    vol = voxgate.open(f"zarr://{root}", mode="r+")
    downsample(vol, num_scales=3)
    attrs = json.loads((root / ".zattrs").read_text())
    assert attrs["user_key"] == {"k": [1, 2]}
    new = attrs["multiscales"][0]["datasets"][2]
    assert new["path"] == "2"
    assert [len(t[t["type"]]) for t in new["coordinateTransformations"]] == [5, 5]
    assert zarr.open_array(str(root / "2"), mode="r").shape == (1, 1, 4, 8, 8)
    again = voxgate.open(f"zarr://{root}")
    assert [tuple(s.shape) for s in again.meta.scales] == [(16, 32, 32), (8, 16, 16), (4, 8, 8)]
    assert again.meta.scales[2].voxel_size.zyx() == (4.0, 4.0, 4.0)
    level = voxgate.open(f"zarr://{root}", scale=2)
    assert (level.read(level.meta.scales[2].bounds) == 7).all()


def _plate(tmp_path: Path, plate: Any, well: Any = None) -> str:
    root = tmp_path / "plate.zarr"
    g = zarr.open_group(str(root), mode="w", zarr_format=2)
    g.attrs["plate"] = plate
    if well is not None:
        g.create_group("A/1").attrs["well"] = well
    return f"zarr://{root}"


@pytest.mark.parametrize(("plate", "well"), [
    ({"wells": 5}, None),  # was TypeError: 'int' object is not iterable
    ({"wells": [{"path": "A/1"}]}, "bad"),  # was AttributeError: 'str' ... 'get'
    ({"wells": [{"path": "A/1"}]}, {"images": 5}),  # was TypeError
])
def test_malformed_plate_attributes_are_refused_as_a_plate(
        tmp_path: Path, plate: Any, well: Any) -> None:
    with pytest.raises(InvalidRequestError, match="HCS plate"):
        voxgate.open(_plate(tmp_path, plate, well))


@pytest.mark.parametrize("scale", [[0, 1, 1], [1, -2, 1]])
def test_zero_or_negative_ngff_scale_is_refused_naming_the_dataset(
        tmp_path: Path, scale: list[int]) -> None:
    """It was refused with "voxel sizes must be positive finite numbers", naming neither the
    dataset nor its coordinateTransformations."""
    root = tmp_path / "img.zarr"
    g = zarr.open_group(str(root), mode="w", zarr_format=2)
    g.create_array("0", shape=(4, 6, 10), chunks=(4, 6, 10), dtype="uint8")
    g.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]
    with pytest.raises(InvalidRequestError,
                       match=r"img\.zarr/0: the scale of its coordinateTransformations"):
        voxgate.open(f"zarr://{root}")


# -- N5 --------------------------------------------------------------------------------------
def _dataset(tmp_path: Path, attrs: dict[str, Any]) -> str:
    return n5_dataset(tmp_path / "c.n5", DATA, attrs)[0]


def test_n5_pixel_resolution_and_resolution_disagreeing_is_warned(tmp_path: Path) -> None:
    """pixelResolution (n5-viewer) was read and resolution silently ignored."""
    url = _dataset(tmp_path, {"pixelResolution": {"unit": "nm", "dimensions": [4, 4, 40]},
                              "resolution": [8, 8, 40]})
    with pytest.warns(VoxgateWarning, match=r"'pixelResolution'.*\(4\.0, 4\.0, 40\.0\).*"
                                            r"'resolution' gives \(8\.0, 8\.0, 40\.0\)"):
        vol = voxgate.open(url)
    assert vol.meta.voxel_size.zyx() == (40.0, 4.0, 4.0)


def test_n5_agreeing_resolutions_in_other_units_are_not_warned(tmp_path: Path) -> None:
    url = _dataset(tmp_path, {"pixelResolution": {"unit": "um", "dimensions": [0.004, 0.004,
                                                                                  0.04]},
                              "resolution": [4, 4, 40], "units": ["nm", "nm", "nm"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert voxgate.open(url).meta.voxel_size.zyx() == (40.0, 4.0, 4.0)


def test_n5_group_resolutions_disagreeing_is_warned(tmp_path: Path) -> None:
    root = tmp_path / "g.n5"
    ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(root / "s0")},
             "metadata": {"dimensions": [10, 6, 4], "blockSize": [10, 6, 4],
                          "dataType": "uint8", "compression": {"type": "raw"}},
             "create": True}).result()
    (root / "attributes.json").write_text(json.dumps({
        "n5": "2.0.0", "multiScale": True, "scales": [[1, 1, 1]],
        "pixelResolution": {"unit": "nm", "dimensions": [4, 4, 40]},
        "resolution": [1, 1, 1], "units": ["um", "um", "um"]}))
    with pytest.warns(VoxgateWarning, match=r"g\.n5/attributes\.json states two voxel sizes"):
        vol = voxgate.open(f"n5://{root}")
    assert vol.meta.voxel_size.zyx() == (40.0, 4.0, 4.0)


@pytest.mark.parametrize(("attrs", "named"), [
    ({"resolution": [0, 4, 40]}, "'resolution'"),
    ({"resolution": [-4, 4, 40]}, "'resolution'"),
    ({"resolution": "4,4,40"}, "'resolution'"),
    ({"pixelResolution": {"unit": "nm", "dimensions": [4, 0, 40]}}, "'pixelResolution'"),
    ({"pixelResolution": "4 nm"}, "'pixelResolution'"),
])
def test_n5_unreadable_resolution_is_warned_not_silently_1_nm(
        tmp_path: Path, attrs: dict[str, Any], named: str) -> None:
    url = _dataset(tmp_path, attrs)
    with pytest.warns(VoxgateWarning, match=f"{named} = .* is ignored"):
        vol = voxgate.open(url)
    assert vol.meta.voxel_size.zyx() == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(("attrs", "named"), [
    ({"pixelResolution": {"unit": "furlong", "dimensions": [4, 4, 40]}},
     "'pixelResolution.unit' has unit 'furlong'"),
    ({"resolution": [4, 4, 40], "units": ["px", "px", "px"]}, "'units' has unit 'px'"),
])
def test_n5_unknown_unit_is_warned_not_silently_nm(
        tmp_path: Path, attrs: dict[str, Any], named: str) -> None:
    url = _dataset(tmp_path, attrs)
    with pytest.warns(VoxgateWarning, match=f"{named}.*taken as nm") as caught:
        vol = voxgate.open(url)
    assert len(caught) == 1  # one warning for the list, not one per axis
    assert vol.meta.voxel_size.zyx() == (40.0, 4.0, 4.0)


def test_funlib_units_ignored_says_what_is_taken(tmp_path: Path) -> None:
    """A malformed funlib ``units`` was warned of with "1 nm voxels are taken", while the
    voxel size read is its voxel_size, in nanometres."""
    url = _dataset(tmp_path, {"voxel_size": [40, 4, 4], "units": ["um", "um", 5],
                              "axis_names": ["z", "y", "x"]})
    with pytest.warns(VoxgateWarning, match=r"units = .*voxel size is taken as nanometres"):
        vol = voxgate.open(url)
    assert vol.meta.voxel_size.zyx() == (40.0, 4.0, 4.0)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_an_ome_groups_unreadable_voxgate_kind_is_warned_naming_it(tmp_path: Path,
                                                                   zarr_format: int) -> None:
    """A plain array's malformed ``voxgate.kind`` is warned and guessed; an OME-Zarr group's
    made the whole group unreadable, with "kind must be 'image' or 'segmentation', got 'x'"
    naming no file (fails on the code before).  Now as a plain array's."""
    url = f"zarr://{tmp_path / 'img.zarr'}"
    voxgate.create(url, shape=(4, 5, 6), dtype="uint32", chunks=(2, 2, 2),
                   voxel_size=(1, 2, 3), zarr_format=zarr_format)[:] = 7
    name = "zarr.json" if zarr_format == 3 else ".zattrs"
    path = tmp_path / "img.zarr" / name
    doc = json.loads(path.read_text())
    attrs = doc["attributes"] if zarr_format == 3 else doc
    attrs.setdefault("voxgate", {})["kind"] = "x"
    path.write_text(json.dumps(doc))
    with pytest.warns(VoxgateWarning, match=r"img\.zarr: attribute voxgate\.kind = 'x' is "
                                            r"ignored.*guessed from the dtype"):
        vol = voxgate.open(url)
    assert vol.kind == "segmentation"  # (uint32: the guess)
    assert (vol.read() == 7).all()
