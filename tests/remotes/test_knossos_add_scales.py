"""``voxgate.downsample`` adding scales to .k.toml KNOSSOS layers written by hand (no KNOSSOS
Python library is installable): new scales go to the mag folders the layer's own readers look
in, and every scale read by voxgate and by a brute-force reader of the cube files equals the
numpy reference (anisotropic factors, an odd offset, cubes that divide nothing)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

import voxgate

from ..services.numpy_reference import downsample_scales
from .test_knossos_audit import brute_read, toml_layer

FACTORS = [(1, 2, 2), (2, 2, 2)]  # z, y, x
CUBE = (16, 16, 8)  # x, y, z


@pytest.mark.parametrize(("server", "existing", "folders"), [
    # KNOSSOS reads a ServerFormat "knossos" layer's scale k from mag(2**k); with one or two
    # scales the folders (mag1, mag2) fit knossos_utils' ordinal layout too, and the old code
    # put scale 2 in mag3, where KNOSSOS does not look
    ("knossos", 1, (1, 2, 4)),
    ("knossos", 2, (1, 2, 4)),
    (None, 1, (1, 2, 3)),  # no ServerFormat: ordinal folders (KNOSSOS and knossos_utils)
])
def test_new_scales_in_the_layers_mag_folders(tmp_path: Path, server: str | None,
                                              existing: int, folders: tuple[int, ...]) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    keys: dict[str, object] = dict(
        Name="s", Description="", FileExtension=[".raw"], Extent_px=[45, 37, 11],
        CubeShape_px=list(CUBE), VoxelSize_nm=[[10, 12, 30], [20, 24, 30]][:existing],
        VoxgateOffset_px=[3, 5, 1], Color="red")
    if server:
        keys["ServerFormat"] = server
    (root / "s.k.toml").write_text(toml_layer(**keys))
    data = np.random.default_rng(4).integers(0, 256, (11, 37, 45), dtype=np.uint8)
    vol = voxgate.open(str(root), mode="r+")
    vol.write(data)
    if existing == 2:
        voxgate.downsample(vol, num_scales=2, factors=FACTORS[:1])
    voxgate.downsample(str(root), num_scales=3, factors=FACTORS)

    assert sorted(p.name for p in root.glob("mag*")) == [f"mag{m}" for m in folders]
    layer = tomllib.loads((root / "s.k.toml").read_text())["Layer"][0]
    assert layer["VoxelSize_nm"] == [[10, 12, 30], [20, 24, 30], [40, 48, 60]]
    assert layer.get("ServerFormat") == server and layer["Color"] == "red"
    refs = [data, *downsample_scales(data, FACTORS, "image")]
    again = voxgate.open(str(root))
    assert [tuple(s.offset) for s in again.scales] == [(1, 5, 3), (1, 2, 1), (0, 1, 0)]
    for sc, m, ref in zip(again.scales, folders, refs, strict=True):
        np.testing.assert_array_equal(again.at_scale(sc.index).read(), ref)
        # the cube files placed by their names (KNOSSOS knows no offset: cube 0 starts at it)
        np.testing.assert_array_equal(brute_read(root, "s", m, tuple(sc.shape), CUBE), ref)
