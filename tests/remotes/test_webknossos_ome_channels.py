"""WEBKNOSSOS layers whose mags lie at paths of their own, and layers that hold some channels of
their mags' arrays (``channelIndex``).

- The layer's ``zarr.json`` (OME-Zarr 0.5 multiscales, which the webknossos package writes per
  zarr3 layer in ``webknossos/dataset/ome_metadata.py`` with each dataset's ``path`` the mag's
  own directory, ``mag.path.name``) names each mag by where its array is, not by the mag's
  default name: after voxgate adds a mag to a layer whose mag 1 lives at ``color/full``,
  zarr-python and ome-zarr follow the paths to the arrays voxgate reads, and the webknossos
  package, saving the dataset again, writes the same paths.
- ``channelIndex`` (a mag property in datasource-properties.json; the webknossos package
  starts the layer's c axis there, ``NDBoundingBox.from_wkw_dict``) selects the layer's
  ``numChannels`` channels of the array from that index: voxgate reads and writes those, as
  the webknossos package reads them, refuses an index past the array's channels, and refuses
  to add mags to such a layer (clearly, before anything is written).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr

import voxgate
from voxgate.errors import CapabilityNotSupportedError, InvalidRequestError

from .test_webknossos_peer import peer
from .test_webknossos_peer import pytestmark as needs_peer

SHAPE = (4, 12, 16)  # z, y, x


def props(root: Path) -> dict:
    return json.loads((root / "datasource-properties.json").read_text())


def save_props(root: Path, value: dict) -> None:
    (root / "datasource-properties.json").write_text(json.dumps(value))


def ome_paths(layer_dir: Path) -> list[str]:
    meta = json.loads((layer_dir / "zarr.json").read_text())
    return [d["path"] for d in meta["attributes"]["ome"]["multiscales"][0]["datasets"]]


def move_mag1(root: Path, rel: str) -> None:
    """Move mag 1 of layer "color" to ``color/<rel>`` and list it there."""
    (root / "color" / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / "color" / "1").rename(root / "color" / rel)
    p = props(root)
    p["dataLayers"][0]["mags"][0]["path"] = f"./color/{rel}"
    save_props(root, p)


def czyx(data: np.ndarray) -> np.ndarray:
    """A (c, x, y, z) array as voxgate's (c, z, y, x)."""
    return data.transpose(0, 3, 2, 1)


# -- mags at paths of their own -------------------------------------------------------------------
def _two_mags_at_a_custom_path(root: Path, seed: int) -> str:
    """A WEBKNOSSOS layer whose mag 1 lies in the folder "full", downsampled once by voxgate;
    returns its URL."""
    data = np.random.default_rng(seed).integers(0, 255, SHAPE, dtype=np.uint8)
    vol = voxgate.create(f"webknossos://{root}", layer="color", shape=SHAPE, chunks=(4, 8, 8),
                         dtype="uint8", voxel_size=(24, 11, 11))
    vol[:] = data
    move_mag1(root, "full")
    url = f"webknossos://{root}/color"
    voxgate.downsample(url, num_scales=2, factors=[(1, 2, 2)])
    return url


@pytest.mark.parametrize("rel", ["full", "mags/full"])
def test_ome_metadata_names_mags_by_their_paths(tmp_path: Path, rel: str) -> None:
    root = tmp_path / "ds"
    data = np.random.default_rng(0).integers(0, 255, SHAPE, dtype=np.uint8)
    vol = voxgate.create(f"webknossos://{root}", layer="color", shape=SHAPE, chunks=(4, 8, 8),
                         dtype="uint8", voxel_size=(24, 11, 11))
    vol[:] = data
    move_mag1(root, rel)
    url = f"webknossos://{root}/color"
    voxgate.downsample(url, num_scales=2, factors=[(1, 2, 2)])
    assert ome_paths(root / "color") == [rel, "2-2-1"]
    # zarr-python follows the paths from the layer group to the arrays voxgate reads
    group = zarr.open_group(str(root / "color"), mode="r")
    for k, path in enumerate([rel, "2-2-1"]):
        ours = voxgate.open(url, scale=k).read()
        np.testing.assert_array_equal(czyx(np.asarray(group[path][:]))[0], ours)
    np.testing.assert_array_equal(voxgate.open(url).read(), data)


def test_ome_zarr_reads_the_layer_voxgate_extended(tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    root = tmp_path / "ds"
    url = _two_mags_at_a_custom_path(root, seed=1)
    loc = parse_url(str(root / "color"))
    assert loc is not None
    node = next(iter(Reader(loc)()))
    assert len(node.data) == 2
    for k, arr in enumerate(node.data):
        np.testing.assert_array_equal(czyx(np.asarray(arr))[0],
                                      voxgate.open(url, scale=k).read())


def test_mag_outside_the_layer_gets_no_wrong_path(tmp_path: Path) -> None:
    """A mag kept outside the layer directory has no OME path from the layer group: the
    group lists no multiscales rather than one naming another array."""
    root = tmp_path / "ds"
    data = np.random.default_rng(2).integers(0, 255, SHAPE, dtype=np.uint8)
    vol = voxgate.create(f"webknossos://{root}", layer="color", shape=SHAPE, chunks=(4, 8, 8),
                         dtype="uint8", voxel_size=(24, 11, 11))
    vol[:] = data
    (root / "color" / "1").rename(root / "elsewhere")
    p = props(root)
    p["dataLayers"][0]["mags"][0]["path"] = "./elsewhere"
    save_props(root, p)
    url = f"webknossos://{root}/color"
    voxgate.downsample(url, num_scales=2, factors=[(1, 2, 2)])
    meta = json.loads((root / "color" / "zarr.json").read_text())
    assert meta["node_type"] == "group"
    assert "ome" not in meta.get("attributes", {})
    np.testing.assert_array_equal(voxgate.open(url).read(), data)


@needs_peer
def test_webknossos_writes_the_same_ome_paths(tmp_path: Path) -> None:
    """The webknossos package, made to write the dataset's metadata again, names the mags as
    voxgate did, and reads every mag as voxgate does."""
    root = tmp_path / "ds"
    url = _two_mags_at_a_custom_path(root, seed=3)
    ours = json.loads((root / "color" / "zarr.json").read_text())
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    peer("""
        import sys, numpy as np, webknossos as wk
        ds = wk.Dataset.open(sys.argv[1])
        layer = ds.get_layer("color")
        for mag, view in layer.mags.items():
            np.save(f"{sys.argv[2]}/{mag.to_layer_name()}.npy", view.read())
        ds._save_dataset_properties()  # what it does on every change of the dataset
    """, str(copy), str(tmp_path))
    theirs = json.loads((copy / "color" / "zarr.json").read_text())
    assert ome_paths(copy / "color") == ["full", "2-2-1"]
    assert theirs == ours
    for k, name in enumerate(["1", "2-2-1"]):
        np.testing.assert_array_equal(czyx(np.load(tmp_path / f"{name}.npy"))[0],
                                      voxgate.open(url, scale=k).read())


# -- channelIndex ---------------------------------------------------------------------------------
def three_channels(root: Path) -> np.ndarray:
    """A 3-channel uint8 layer "color" (its data, c z y x)."""
    data = np.random.default_rng(4).integers(0, 255, (3, *SHAPE), dtype=np.uint8)
    vol = voxgate.create(f"webknossos://{root}", layer="color", shape=SHAPE, chunks=(4, 8, 8),
                         dtype="uint8", voxel_size=(24, 11, 11), num_channels=3)
    vol[:] = data
    return data


def select(root: Path, index: int, count: int) -> None:
    p = props(root)
    layer = p["dataLayers"][0]
    layer["numChannels"] = count
    layer["elementClass"] = f"uint{8 * count}"
    for m in layer["mags"]:
        m["channelIndex"] = index
    save_props(root, p)


@pytest.mark.parametrize(("index", "count"), [(1, 1), (2, 1), (1, 2)])
def test_channel_index_selects_the_layers_channels(tmp_path: Path, index: int,
                                                   count: int) -> None:
    root = tmp_path / "ds"
    data = three_channels(root)
    select(root, index, count)
    vol = voxgate.open(f"webknossos://{root}/color")
    want = data[index:index + count]
    assert vol.meta.num_channels == count
    np.testing.assert_array_equal(vol.read(), want[0] if count == 1 else want)
    part = (slice(1, 3), slice(2, 9), slice(5, 14))
    cut = vol[part] if count == 1 else vol[(slice(None), *part)]
    np.testing.assert_array_equal(cut.read(), (want[0] if count == 1 else want)[(..., *part)])


def test_writes_reach_the_selected_channel_only(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    data = three_channels(root)
    select(root, 1, 1)
    vol = voxgate.open(f"webknossos://{root}/color", mode="r+")
    vol[:, 0:5, 0:7] = 7
    stored = ts.open({"driver": "zarr3", "kvstore": {"driver": "file",
                                                      "path": f"{root}/color/1/"}}).result()
    arr = czyx(np.asarray(stored.read().result()))
    want = data.copy()
    want[1, :, 0:5, 0:7] = 7
    np.testing.assert_array_equal(arr, want)


def test_channel_index_past_the_arrays_channels_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    three_channels(root)
    select(root, 2, 2)
    with pytest.raises(InvalidRequestError, match=r"3 channel\(s\).*2 from channelIndex 2"):
        voxgate.open(f"webknossos://{root}/color")


def test_mags_are_not_added_to_a_layer_with_a_channel_index(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    three_channels(root)
    select(root, 1, 1)
    before = props(root)
    with pytest.raises(CapabilityNotSupportedError, match="channelIndex 1"):
        voxgate.downsample(f"webknossos://{root}/color", num_scales=2, factors=[(1, 2, 2)])
    assert props(root) == before
    assert sorted(p.name for p in (root / "color").iterdir()) == ["1", "zarr.json"]


@needs_peer
def test_webknossos_reads_the_same_channels(tmp_path: Path) -> None:
    """A layer the webknossos package wrote with 3 channels, then described as 2 of them from
    channelIndex 1: voxgate and the webknossos package read the same voxels."""
    root = tmp_path / "ds"
    peer("""
        import sys, numpy as np, webknossos as wk
        ds = wk.Dataset(sys.argv[1], voxel_size=(11, 11, 24))
        layer = ds.add_layer("color", "color", dtype_per_channel="uint8", num_channels=3,
                             data_format="zarr3")
        data = np.random.default_rng(5).integers(0, 255, (3, 16, 12, 4), dtype=np.uint8)
        mag = layer.add_mag(1, chunk_shape=8, shard_shape=16)
        mag.write(data, absolute_offset=(0, 0, 0), allow_resize=True)
        np.save(sys.argv[2] + "/all.npy", data)
    """, str(root), str(tmp_path))
    select(root, 1, 2)
    peer("""
        import sys, numpy as np, webknossos as wk
        layer = wk.Dataset.open(sys.argv[1]).get_layer("color")
        assert layer.num_channels == 2, layer.num_channels
        np.save(sys.argv[2] + "/read.npy", layer.get_mag(1).read())
    """, str(root), str(tmp_path))
    theirs = np.load(tmp_path / "read.npy")
    full = np.load(tmp_path / "all.npy")
    np.testing.assert_array_equal(theirs, full[1:3])  # the package reads channels 1 and 2
    ours = voxgate.open(f"webknossos://{root}/color").read()
    np.testing.assert_array_equal(ours, czyx(theirs))


def test_channel_index_of_a_wkw_layer(tmp_path: Path) -> None:
    import wkw

    root = tmp_path / "ds"
    data = np.random.default_rng(6).integers(0, 255, (3, *SHAPE), dtype=np.uint8)
    with wkw.Dataset.create(str(root / "color" / "1"),
                            wkw.Header(np.uint8, num_channels=3, file_len=1)) as w:
        w.write([0, 0, 0], np.asfortranarray(data.transpose(0, 3, 2, 1)))
    z, y, x = SHAPE
    save_props(root, {
        "id": {"name": "ds", "team": ""}, "scale": {"factor": [11, 11, 24]},
        "dataLayers": [{
            "name": "color", "category": "color", "dataFormat": "wkw",
            "boundingBox": {"topLeft": [0, 0, 0], "width": x, "height": y, "depth": z},
            "elementClass": "uint8", "numChannels": 1,
            "mags": [{"mag": [1, 1, 1], "path": "./color/1", "channelIndex": 2}]}]})
    np.testing.assert_array_equal(voxgate.open(f"webknossos://{root}/color").read(), data[2])
    select(root, 2, 2)
    with pytest.raises(InvalidRequestError, match=r"3 channel\(s\).*2 from channelIndex 2"):
        voxgate.open(f"webknossos://{root}/color")
