"""Mags voxgate adds (``voxgate.downsample``) to WEBKNOSSOS layers it did not write.

The layers here are written by hand with tensorstore in axis orders other than the webknossos
package's (c, x, y, z): a 3-D (x, y, z) mag without a channel axis and a (c, z, y, x) one, at a
topLeft that is not a multiple of the mags, in a dataset whose voxel size is in micrometres.
After ``voxgate.downsample`` the new mags are listed in datasource-properties.json, voxgate
reads each equal to the brute-force reference (WEBKNOSSOS mags lie on the grid through 0:
``start`` = the offset), and the webknossos package (``VOXGATE_WEBKNOSSOS_PYTHON``) opens the
dataset and reads the same voxels.

Defect found here: the new mags were always written with axisOrder c, x, y, z, whatever the
layer's; WEBKNOSSOS and the webknossos package take a layer's axis order from its first mag
and the package refuses a layer whose mags differ ("axisOrder must be the same for all mags"),
so the whole dataset no longer opened in it.  (Datasets the webknossos package writes have
c, x, y, z throughout: tests/remotes/test_webknossos_audit.py and _peer.py.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

import voxgate
from tests.services.numpy_reference import downsample_scales

FACTORS = [(1, 2, 2), (2, 2, 2)]
OFFSET = (3, 7, 45)  # z, y, x: not multiples of the mags
SHAPE = (7, 23, 30)
LAYOUTS = {"xyz": ["x", "y", "z"], "czyx": ["c", "z", "y", "x"]}


def write_layer(root: Path, name: str, dims: list[str], data: np.ndarray) -> None:
    """A zarr3 layer ``name`` of the dataset ``root`` whose mag 1 has dimensions ``dims``."""
    extent = {"c": 1, **{a: o + s for a, o, s in zip("zyx", OFFSET, SHAPE, strict=True)}}
    store = ts.open({
        "driver": "zarr3", "kvstore": {"driver": "file", "path": str(root / name / "mag1")},
        "metadata": {
            "shape": [extent[d] for d in dims], "data_type": "uint8", "fill_value": 0,
            "chunk_grid": {"name": "regular", "configuration": {
                "chunk_shape": [1 if d == "c" else 12 for d in dims]}},
            "chunk_key_encoding": {"name": "default"}, "codecs": [{"name": "bytes"}],
            "dimension_names": dims}}, create=True).result()
    full = np.zeros([1, *(extent[a] for a in "zyx")], np.uint8)
    full[0, OFFSET[0]:, OFFSET[1]:, OFFSET[2]:] = data
    stored = full if "c" in dims else full[0]
    store.write(stored.transpose([("czyx" if "c" in dims else "zyx").index(d)
                                  for d in dims])).result()
    props_path = root / "datasource-properties.json"
    props = json.loads(props_path.read_text()) if props_path.exists() else {
        "id": {"name": "ds", "team": ""}, "version": 1, "dataLayers": [],
        "scale": {"factor": [0.011, 0.011, 0.024], "unit": "micrometer"}}
    props["dataLayers"].append({
        "name": name, "category": "color", "dataFormat": "zarr3", "elementClass": "uint8",
        "numChannels": 1,
        "boundingBox": {"topLeft": list(OFFSET[::-1]), "width": SHAPE[2], "height": SHAPE[1],
                        "depth": SHAPE[0]},
        "mags": [{"mag": [1, 1, 1], "path": f"./{name}/mag1",
                  "axisOrder": {d: i for i, d in enumerate(dims)}}]})
    props_path.write_text(json.dumps(props))


def test_added_mags_keep_the_layers_axis_order(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    data = np.random.default_rng(9).integers(0, 250, SHAPE).astype(np.uint8)
    for name, dims in LAYOUTS.items():
        write_layer(root, name, dims, data)
    want = downsample_scales(data, FACTORS, "image", start=OFFSET)
    for name, dims in LAYOUTS.items():
        url = f"webknossos://{root}/{name}"
        voxgate.downsample(url, num_scales=3, factors=FACTORS)
        vol = voxgate.open(url)
        for k, ref in enumerate(want, start=1):
            np.testing.assert_array_equal(vol.at_scale(k).read(), ref, err_msg=f"{name} {k}")
        layer = next(la for la in json.loads((root / "datasource-properties.json")
                                             .read_text())["dataLayers"] if la["name"] == name)
        assert [m["mag"] for m in layer["mags"]] == [[1, 1, 1], [2, 2, 1], [4, 4, 2]]
        assert [m["axisOrder"] for m in layer["mags"]] == [
            {d: i for i, d in enumerate(dims)}] * 3
        for mag in ("2-2-1", "4-4-2"):
            doc = json.loads((root / name / mag / "zarr.json").read_text())
            assert doc["dimension_names"] == dims
        group = json.loads((root / name / "zarr.json").read_text())
        axes = group["attributes"]["ome"]["multiscales"][0]["axes"]
        assert [a["name"] for a in axes] == dims

    if os.environ.get("VOXGATE_WEBKNOSSOS_PYTHON"):
        from tests.remotes.test_webknossos_peer import peer

        peer("""
            import sys, numpy as np, webknossos as wk
            ds = wk.Dataset.open(sys.argv[1])
            for layer in ds.layers.values():
                for mag, view in layer.mags.items():
                    np.save(f"{sys.argv[2]}/{layer.name}-{mag.to_layer_name()}.npy",
                            view.read())
        """, str(root), str(tmp_path))
        for name in LAYOUTS:
            for ref, mag in zip(want, ("2-2-1", "4-4-2"), strict=True):
                got = np.load(tmp_path / f"{name}-{mag}.npy")  # in the layer's axis order
                got = got.transpose(2, 1, 0) if name == "xyz" else got[0]
                np.testing.assert_array_equal(got, ref, err_msg=f"{name} {mag}")
    else:
        pytest.skip("VOXGATE_WEBKNOSSOS_PYTHON is not set: the webknossos package's read-back "
                    "was not run")
