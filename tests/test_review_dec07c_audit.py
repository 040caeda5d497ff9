"""Review of the 7 Dec changes (helper D): a relative path spelled file:// (which
storage.local_path reads relative to the working directory) kept its relative spelling in the
Volume's url and spec(), so the spec reopened another store from another directory; and a
list of Python floats, now checked by value, wrote inf for a value a float32 volume cannot hold
(as a Python scalar did)."""

from __future__ import annotations

import numpy as np
import pytest

import voxgate
from voxgate.errors import DtypeError


@pytest.mark.parametrize("scheme", ["zarr", "n5", "precomputed"])
def test_file_url_relative_path_is_made_absolute(tmp_path, monkeypatch, scheme):
    a, b = tmp_path / "a", tmp_path / "b"
    specs = {}
    for folder, value in ((a, 1), (b, 2)):
        folder.mkdir()
        monkeypatch.chdir(folder)
        vol = voxgate.create(f"{scheme}://file://x.{scheme}", shape=(2, 8, 8), dtype="uint8",
                             chunks=(2, 8, 8), voxel_size=(1, 1, 1))
        vol[...] = value
        specs[value] = vol.spec()
    monkeypatch.chdir(b)
    url = specs[1]["url"]
    assert str(a) in url, url
    assert voxgate.open(url)[0, 0, 0].read() == 1  # a's store, not b's same-named one


@pytest.mark.parametrize("i, value", list(enumerate([1e40, [1e40, 0.0, 0.0], 10**40])))
def test_float_too_large_for_the_volume_is_refused(i, value):
    vol = voxgate.create(f"mem://review-dec07c-overflow-{i}", shape=(1, 1, 3), dtype="float32",
                         chunks=(1, 1, 3), voxel_size=(1, 1, 1))
    with pytest.raises(DtypeError):
        vol[0, 0, :] = value
    assert np.array_equal(vol.read(), np.zeros((1, 1, 3), np.float32))
    vol[0, 0, :] = [0.5, -3e38, float("inf")]  # what fits (and inf itself) is written
    assert vol[0, 0, 2].read() == np.inf
