"""Voxel sizes in any length-unit spelling voxgate reads (``μm``, ``micron``, ``micrometers``,
``Å``) are converted wherever a writer or server needs nanometres.

Several places looked the unit up in a short table (nm, um, µm with the micro sign,
micrometer, mm, angstrom, pm) instead of voxgate's full one: creating a precomputed volume,
annotations or a WEBKNOSSOS layer refused ``micron`` / ``μm`` (Greek mu) / ``Å``; the notebook
helpers and the viewer took them for nanometres; the relay's bossDB coordinate frame announced
a ``μm`` channel as nanometers with sizes 1000x too small
(tests/relay/test_unit_spellings_relay.py); ``voxgate.copy`` skipped its voxel size check
between ``micron`` and nm stores."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cloudvolume import CloudVolume

import voxgate
from voxgate.errors import VoxgateWarning
from voxgate.formats.annotation import write_annotations
from voxgate.geometry import VoxelSize
from voxgate.notebook import axis_coords

SPELLINGS = [("micron", 1e3), ("μm", 1e3), ("micrometers", 1e3), ("Å", 0.1)]


@pytest.mark.parametrize(("unit", "nm"), SPELLINGS)
def test_precomputed_create_takes_the_spelling(tmp_path: Path, unit: str, nm: float) -> None:
    url = f"precomputed://file://{tmp_path}/layer"
    vol = voxgate.create(url, shape=(4, 8, 8), chunks=(4, 8, 8), dtype="uint8",
                         voxel_size=VoxelSize.of((0.04, 0.008, 0.004), unit))
    vol[:] = 7
    cv = CloudVolume(f"file://{tmp_path}/layer")
    np.testing.assert_allclose(cv.resolution, [0.004 * nm, 0.008 * nm, 0.04 * nm])


@pytest.mark.parametrize(("unit", "nm"), SPELLINGS)
def test_annotations_and_notebook_coordinates(tmp_path: Path, unit: str, nm: float) -> None:
    table = pd.DataFrame({"z": [1.0], "y": [2.0], "x": [3.0]})
    url = f"precomputed://file://{tmp_path}/ann"
    write_annotations(url, table, voxel_size=VoxelSize.of((2, 2, 2), unit))
    info = (tmp_path / "ann" / "info").read_text()
    assert '"m"' in info or '"nm"' in info
    vol = voxgate.create(f"zarr://{tmp_path}/v.zarr", shape=(4, 8, 8), chunks=(4, 8, 8),
                         dtype="uint8", voxel_size=VoxelSize.of((2, 1, 1), unit))
    coords = axis_coords(vol)
    assert coords["z"][1] == pytest.approx(2 * nm) and coords["x"][1] == pytest.approx(nm)


def test_webknossos_create_takes_angstrom(tmp_path: Path) -> None:
    vol = voxgate.create(f"webknossos://{tmp_path}/ds", shape=(8, 16, 16), chunks=(8, 16, 16),
                         dtype="uint8", voxel_size=VoxelSize.of((40, 40, 40), "Å"))
    props = json.loads((tmp_path / "ds" / "datasource-properties.json").read_text())
    assert props["scale"] == {"factor": [4.0, 4.0, 4.0], "unit": "nanometer"}
    assert vol.voxel_size.zyx() == pytest.approx((4.0, 4.0, 4.0))


def test_copy_checks_voxel_sizes_across_spellings(tmp_path: Path) -> None:
    """A source in ``micron`` copied into a destination in nm of another voxel size: warned
    of, as any voxel size mismatch is (the check was skipped for a spelling the short table
    did not know); the same size in another spelling is no mismatch."""
    src = voxgate.create(f"zarr://{tmp_path}/s.zarr", shape=(4, 8, 8), chunks=(4, 8, 8),
                         dtype="uint8", voxel_size=VoxelSize.of((0.04, 0.008, 0.008), "micron"))
    src[:] = 3
    dst = voxgate.create(f"zarr://{tmp_path}/d.zarr", shape=(4, 8, 8), chunks=(4, 8, 8),
                         dtype="uint8", voxel_size=(40, 4, 4))
    with pytest.warns(VoxgateWarning, match=r"states voxels of \(40.0, 4.0, 4.0\) nm"):
        voxgate.copy(src.url, dst.url, progress=False)
    same = voxgate.create(f"zarr://{tmp_path}/same.zarr", shape=(4, 8, 8), chunks=(4, 8, 8),
                          dtype="uint8", voxel_size=(40, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        voxgate.copy(src.url, same.url, progress=False)
    assert (voxgate.open(same.url).read() == 3).all()
