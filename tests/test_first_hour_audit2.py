"""First-hour and interop audit, part 2: one-slash URLs, the N5 container root's version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

import voxgate
from voxgate.errors import InvalidRequestError

KW = dict(shape=(4, 8, 8), chunks=(4, 8, 8), dtype="uint8", voxel_size=(1, 1, 1))


# -- 1. "zarr:/em.zarr": one slash after the scheme -----------------------------------------------
@pytest.mark.parametrize(
    ("scheme", "name"),
    [("zarr", "em.zarr"), ("n5", "em.n5"), ("precomputed", "em"), ("hdf5", "em.h5"),
     ("tiff", "em.tif"), ("knossos", "em"), ("webknossos", "em")],
)
def test_open_one_slash_names_both_readings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str, name: str) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"{scheme}:{tmp_path}/{name}"  # tmp_path is absolute: "zarr:/tmp/.../em.zarr"
    tail = f"{str(tmp_path).lstrip('/')}/{name}"
    with pytest.raises(InvalidRequestError, match="one slash after") as info:
        voxgate.open(url)
    assert f"{scheme}:///{tail}" in str(info.value)
    assert f"{scheme}://{tail} " in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["zarr:/em.zarr", "n5:/em.n5", "hdf5:/em.h5", "em.zarr"])
def test_create_one_slash_makes_no_folder_named_after_the_scheme(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    # it used to create ./zarr:/em.zarr (a folder "zarr:" in the working directory)
    monkeypatch.chdir(tmp_path)
    if url == "em.zarr":  # the bare relative path still creates where it says
        voxgate.create(url, **KW)
        assert (tmp_path / "em.zarr").is_dir()
        return
    with pytest.raises(InvalidRequestError, match="one slash after"):
        voxgate.create(url, **KW)
    assert list(tmp_path.iterdir()) == []


def test_file_one_slash_suggests_three(tmp_path: Path) -> None:
    voxgate.create(f"zarr://{tmp_path}/em.zarr", **KW)
    with pytest.raises(InvalidRequestError, match=f"did you mean file://{tmp_path}/em.zarr"):
        voxgate.open(f"file:{tmp_path}/em.zarr")
    assert voxgate.open(f"file://{tmp_path}/em.zarr").shape == (4, 8, 8)


def test_an_existing_relative_path_of_that_name_still_opens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # not a slip: a folder "zarr:" really holds em.zarr (what the old create made)
    monkeypatch.chdir(tmp_path)
    voxgate.create(f"zarr://{tmp_path}/zarr:/em.zarr", **KW)
    assert voxgate.open("zarr:/em.zarr").shape == (4, 8, 8)


# -- 2. the N5 container root's attributes.json --------------------------------------------------
@pytest.mark.parametrize("num_scales", [1, 2])
def test_dataset_inside_a_new_container_writes_the_root_version(
        tmp_path: Path, num_scales: int) -> None:
    vol = voxgate.create(f"n5://{tmp_path}/x.n5/a", num_scales=num_scales, **KW)
    vol[:] = np.full((4, 8, 8), 7, "uint8")
    root = json.loads((tmp_path / "x.n5" / "attributes.json").read_text())
    assert root == {"n5": "2.0.0"}
    assert "n5" not in json.loads((tmp_path / "x.n5" / "a" / "attributes.json").read_text())
    # a second volume in the same container leaves the root alone
    voxgate.create(f"n5://{tmp_path}/x.n5/b/c", **KW)
    assert json.loads((tmp_path / "x.n5" / "attributes.json").read_text()) == root
    # a reader of the container (tensorstore's n5 driver) reads the dataset under it
    store = ts.open({"driver": "n5", "kvstore": f"file://{tmp_path}/x.n5/a/s0"}).result()
    assert int(store.read().result().max()) == 7


def test_existing_root_attributes_are_not_touched(tmp_path: Path) -> None:
    (tmp_path / "y.n5").mkdir()
    text = '{"note": "mine"}'
    (tmp_path / "y.n5" / "attributes.json").write_text(text)
    voxgate.create(f"n5://{tmp_path}/y.n5/deep/raw", **KW)
    assert (tmp_path / "y.n5" / "attributes.json").read_text() == text


def test_root_volume_still_carries_its_own_version(tmp_path: Path) -> None:
    voxgate.create(f"n5://{tmp_path}/z.n5", **KW)
    assert json.loads((tmp_path / "z.n5" / "attributes.json").read_text())["n5"] == "2.0.0"
