"""``voxgate.downsample`` adding scales to HDF5 datasets other tools wrote (ilastik / Fiji's
``element_size_um``; CREMI / gunpowder's ``resolution`` and physical ``offset``, in nm or in a
``unit``): the new levels read back by h5py and voxgate equal the numpy reference, and state
their voxel size and offset in the conventions the file's own s0 uses, so a tool reading s0's
attributes reads the new levels' alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import voxgate

from ..services.numpy_reference import downsample_scales

FACTORS = [(1, 2, 2), (2, 2, 2)]  # z, y, x
SHAPE = (9, 21, 19)
CASES: dict[str, tuple[str, dict[str, Any], type, str]] = {
    "ilastik": ("/exported_data", {"element_size_um": [0.03, 0.004, 0.005]}, np.uint8,
                "image"),
    "cremi-nm": ("/volumes/labels/neuron_ids",
                 {"resolution": [40.0, 4.0, 5.0], "offset": [40.0, 20.0, 15.0]}, np.uint64,
                 "segmentation"),
    "gunpowder-um": ("/raw", {"resolution": [0.04, 0.004, 0.005], "unit": "um",
                              "offset": [0.04, 0.008, 0.015]}, np.uint16, "image"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_new_levels_follow_s0s_attributes(tmp_path: Path, case: str) -> None:
    name, attrs, dtype, kind = CASES[case]
    path = tmp_path / "f.h5"
    rng = np.random.default_rng(6)
    data = rng.integers(0, 5 if kind == "segmentation" else 200, SHAPE).astype(dtype)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(name, data=data, chunks=(4, 8, 8))
        ds.attrs.update(attrs)
    url = f"hdf5://{path}#{name}"
    voxgate.downsample(url, num_scales=3, factors=FACTORS)
    refs = downsample_scales(data, FACTORS, kind)
    vol = voxgate.open(url)
    try:
        vs0 = vol.scales[0].voxel_size.zyx()
        with h5py.File(path, "r") as f:
            s0 = dict(f[f"{name}/s0"].attrs)
            for k, ref in enumerate(refs, start=1):
                level = f[f"{name}/s{k}"]
                np.testing.assert_array_equal(level[...], ref)
                np.testing.assert_array_equal(vol.at_scale(k).read(), ref)
                sc = vol.scales[k]
                factor = [a / b for a, b in zip(sc.voxel_size.zyx(), vs0, strict=True)]
                new = dict(level.attrs)
                for key in ("element_size_um", "resolution"):
                    if key in s0:  # in s0's unit, times the factor
                        np.testing.assert_allclose(new[key], np.asarray(s0[key]) * factor)
                if "offset" in s0:  # physical, in s0's unit: the new level's offset voxels
                    np.testing.assert_allclose(
                        new["offset"], np.asarray(sc.offset) * np.asarray(s0["resolution"])
                        * factor)
                assert new.get("unit", "nm") == s0.get("unit", "nm")
    finally:
        vol.remote.close()
