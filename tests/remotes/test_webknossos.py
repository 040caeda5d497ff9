from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import wkw
from click.testing import CliRunner
from hypothesis import settings

import voxgate
from voxgate.cli import main
from voxgate.errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    RemoteNotFoundError,
)
from voxgate.registry import detect_format
from voxgate.remotes.webknossos import layer_names
from voxgate.testing import RemoteTests, remote_state_machine

from .scratch import scratch_dir


class TestWebknossosZarr3(RemoteTests):
    dtypes = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
              "float32", "float64")

    def url(self, tmp_path: Path, name: str) -> str:
        return f"webknossos://{tmp_path}/{name}"

    def corrupt_chunk(self, vol: voxgate.Volume, tmp_path: Path) -> str:
        layer = vol.remote.layer
        path = tmp_path / "vol" / layer / "1" / "c" / "0" / "0" / "0" / "0"
        data = bytearray(path.read_bytes())
        data[:40] = os.urandom(40)  # a chunk's zstd frame (checksummed)
        path.write_bytes(bytes(data))
        return str(path)


TestWebknossosStateMachine = remote_state_machine(
    lambda name: f"webknossos://{scratch_dir()}/wk-{name}").TestCase
TestWebknossosStateMachine.settings = settings(max_examples=10, stateful_step_count=10,
                                               deadline=None)


def props(path: Path) -> dict:
    return json.loads((path / "datasource-properties.json").read_text())


def test_layers_of_one_dataset(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    # a new dataset at ds (its first layer named by layer=); later layers by their path
    em = voxgate.create(f"webknossos://{ds}", layer="color", shape=(30, 40, 50),
                        chunks=(16, 16, 16), dtype="uint8", voxel_size=(24, 11, 11),
                        offset=(3, 5, 7), num_scales=2)
    seg = voxgate.create(f"webknossos://{ds}/segmentation", shape=(30, 40, 50),
                         chunks=(16, 16, 16), dtype="uint32", voxel_size=(24, 11, 11),
                         kind="segmentation", offset=(3, 5, 7))
    data = np.random.default_rng(0).integers(0, 255, (30, 40, 50), dtype=np.uint8)
    em[:] = data
    seg[:] = 7
    p = props(ds)
    assert p["scale"] == {"factor": [11.0, 11.0, 24.0], "unit": "nanometer"}
    assert [la["name"] for la in p["dataLayers"]] == ["color", "segmentation"]
    color = p["dataLayers"][0]
    assert color["boundingBox"] == {"topLeft": [7, 5, 3], "width": 50, "height": 40,
                                    "depth": 30}
    assert [m["mag"] for m in color["mags"]] == [[1, 1, 1], [2, 2, 1]]  # toward isotropy
    assert color["mags"][1]["path"] == "./color/2-2-1"
    assert p["dataLayers"][1]["category"] == "segmentation"
    assert layer_names(str(ds)) == ["color", "segmentation"]
    assert detect_format(str(ds)) == "webknossos"
    again = voxgate.open(f"webknossos://{ds}/color")
    assert tuple(again.offset) == (3, 5, 7) and again.voxel_size.zyx() == (24.0, 11.0, 11.0)
    assert again.scales[1].voxel_size.zyx() == (24.0, 22.0, 22.0)
    assert tuple(again.scales[1].offset) == (3, 2, 3)
    np.testing.assert_array_equal(again.read(), data)
    assert voxgate.open(f"webknossos://{ds}", layer="segmentation").kind == "segmentation"
    with pytest.raises(InvalidRequestError, match="name one"):
        voxgate.open(f"webknossos://{ds}")
    with pytest.raises(InvalidRequestError, match="voxel size"):
        voxgate.create(f"webknossos://{ds}/other", shape=(2, 2, 2), chunks=(2, 2, 2),
                       dtype="uint8", voxel_size=(1, 1, 1))


def test_wkw_layer_read_through_wkw(tmp_path: Path) -> None:
    ds = tmp_path / "wk"
    data = np.random.default_rng(1).integers(0, 60000, (20, 30, 40), dtype=np.uint16)  # z,y,x
    mag = ds / "color" / "1"
    with wkw.Dataset.create(str(mag), wkw.Header(np.uint16, block_len=32, file_len=4)) as w:
        w.write((10, 20, 30), np.asfortranarray(data.transpose(2, 1, 0)))  # x, y, z
    ds.joinpath("datasource-properties.json").write_text(json.dumps({
        "id": {"name": "wk", "team": ""},
        "scale": [11.24, 11.24, 28.0],
        "dataLayers": [{
            "name": "color", "category": "color", "dataFormat": "wkw",
            "boundingBox": {"topLeft": [10, 20, 30], "width": 40, "height": 30, "depth": 20},
            "wkwResolutions": [{"resolution": 1, "cubeLength": 1024}],
            "elementClass": "uint16",
        }],
    }))
    vol = voxgate.open(str(ds))
    assert vol.url == f"webknossos://{ds}/color"
    assert tuple(vol.offset) == (30, 20, 10) and vol.voxel_size.zyx() == (28.0, 11.24, 11.24)
    assert tuple(vol.chunks) == (32, 32, 32)
    np.testing.assert_array_equal(vol.read(), data)
    np.testing.assert_array_equal(vol[3:9, 4:20, 5:39].read(), data[3:9, 4:20, 5:39])
    with pytest.raises(CapabilityNotSupportedError, match="WKW"):
        voxgate.open(str(ds), mode="r+")


def test_properties_naming_a_missing_layer(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    voxgate.create(f"webknossos://{ds}", shape=(4, 8, 8), chunks=(4, 8, 8),
                   dtype="uint8", voxel_size=(1, 1, 1))
    p = props(ds)
    ghost = json.loads(json.dumps(p["dataLayers"][0]))
    ghost["name"] = "ghost"
    for m in ghost["mags"]:
        m["path"] = "./ghost/1"
    p["dataLayers"].append(ghost)
    (ds / "datasource-properties.json").write_text(json.dumps(p))
    with pytest.raises(RemoteNotFoundError, match=r"ghost/1, which holds no Zarr array"):
        voxgate.open(f"webknossos://{ds}/ghost")
    with pytest.raises(RemoteNotFoundError, match=r"no layer 'nope'.*\['color', 'ghost'\]"):
        voxgate.open(f"webknossos://{ds}", layer="nope")
    (ds / "datasource-properties.json").write_text('{"dataLayers": 3}')
    with pytest.raises(InvalidRequestError, match="no dataLayers list"):
        voxgate.open(f"webknossos://{ds}/color")


def test_cli_info_and_copy(tmp_path: Path) -> None:
    src = voxgate.create(f"zarr://{tmp_path}/src.zarr", shape=(20, 30, 40), chunks=(8, 8, 8),
                         dtype="uint16", voxel_size=(30, 4, 4), num_scales=2)
    data = np.random.default_rng(2).integers(0, 999, (20, 30, 40)).astype(np.uint16)
    src[:] = data
    voxgate.copy(src, f"webknossos://{tmp_path}/copied", progress=False)
    res = CliRunner().invoke(main, ["info", "--json", f"webknossos://{tmp_path}/copied"])
    assert res.exit_code == 0, res.output
    assert [s["shape_zyx"] for s in json.loads(res.output)["scales"]] == [[20, 30, 40],
                                                                        [20, 15, 20]]
    np.testing.assert_array_equal(voxgate.open(f"webknossos://{tmp_path}/copied").read(), data)
