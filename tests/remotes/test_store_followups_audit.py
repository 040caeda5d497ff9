"""Store follow-ups: 2-D arrays as one z plane, an empty s3:// prefix, KNOSSOS conf lines.

- A plain 2-D zarr array (v2 or v3, no OME metadata), a 2-D HDF5 dataset and a 2-D N5 dataset
  open as a volume of one z plane, shape (1, y, x), as a 2-D OME-Zarr image already did (they
  were refused: "2-D zarr array without dimension names", "holds no 3-D ... dataset", "'dimensions'
  has 2 entries").  Reads and writes go to the 2-D array, which zarr-python, h5py and
  tensorstore read back; the metadata the other tool wrote is not touched.
- A bare ``s3://bucket/prefix`` under which nothing is stored is RemoteNotFoundError (it was
  UnknownSchemeError, whose scheme was never the problem).
- A classic knossos.conf is read as KNOSSOS' ``fromLegacyConf`` reads it: an indented line is
  skipped (KNOSSOS' key is the text before the first space: empty), and what follows a value
  is ignored (``boundary x 200 201;`` is 200; it was refused).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tensorstore as ts
import zarr

import voxgate
from voxgate.errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    RemoteNotFoundError,
    UnknownSchemeError,
    VoxgateWarning,
)
from voxgate.geometry import Box
from voxgate.remotes.knossos import parse_knossos_conf
from voxgate.storage import kvstore_spec

from .n5_files import n5_viewer_2d
from .test_knossos_audit import classic_conf, write_cubes

RNG = np.random.default_rng(13)
YX = (20, 30)


def _snapshot(root: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The bytes of every metadata file (by name) under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name in names}


# -- (1) 2-D arrays -------------------------------------------------------------------------------
_ZARR_CASES = {
    "v2": ({"zarr_format": 2}, None),
    "v3": ({"zarr_format": 3}, None),
    "v3-dimension_names": ({"zarr_format": 3, "dimension_names": ["y", "x"]}, None),
    "v2-_ARRAY_DIMENSIONS": ({"zarr_format": 2}, {"_ARRAY_DIMENSIONS": ["y", "x"]}),
}


@pytest.mark.parametrize("case", list(_ZARR_CASES))
def test_plain_2d_zarr_array_is_one_z_plane(tmp_path: Path, case: str) -> None:
    kwargs, attrs = _ZARR_CASES[case]
    data = RNG.integers(0, 250, YX, dtype=np.uint8)
    path = tmp_path / "img.zarr"
    z = zarr.create_array(str(path), shape=YX, chunks=(8, 8), dtype="uint8", **kwargs)
    z[:] = data
    if attrs:
        z.attrs.update(attrs)
    before = _snapshot(path, ("zarr.json", ".zarray", ".zattrs"))

    vol = voxgate.open(f"zarr://{path}", mode="r+")
    assert vol.shape == (1, *YX) and tuple(vol.chunks) == (1, 8, 8)
    np.testing.assert_array_equal(vol.read(), data[None])
    np.testing.assert_array_equal(vol[0, 3:11, 5:17], data[None, 3:11, 5:17][0])
    vol.write(np.full((1, 8, 12), 251, np.uint8), Box((0, 3, 5), (1, 11, 17)))

    expected = data.copy()
    expected[3:11, 5:17] = 251
    back = zarr.open_array(str(path), mode="r")
    assert back.shape == YX
    np.testing.assert_array_equal(back[:], expected)
    np.testing.assert_array_equal(voxgate.open(f"zarr://{path}").read(), expected[None])
    assert _snapshot(path, ("zarr.json", ".zarray", ".zattrs")) == before


def test_plain_2d_zarr_array_reports_absent_chunks(tmp_path: Path) -> None:
    path = tmp_path / "sparse.zarr"
    z = zarr.create_array(str(path), shape=(16, 16), chunks=(8, 8), dtype="uint16",
                          zarr_format=3)
    z[0:8, 0:8] = 5
    vol = voxgate.open(f"zarr://{path}")
    assert sorted(tuple(c) for c in vol.missing_chunks()) == [(0, 0, 1), (0, 1, 0), (0, 1, 1)]


def test_zarr_array_of_five_unnamed_dimensions_names_its_shape(tmp_path: Path) -> None:
    """Still refused (voxgate cannot tell z, y, x among five dimensions), the message now
    naming the shape and what voxgate reads (2-D included)."""
    zarr.create_array(str(tmp_path / "a.zarr"), shape=(1, 2, 3, 4, 5), dtype="uint8",
                      zarr_format=3)
    with pytest.raises(InvalidRequestError) as info:
        voxgate.open(f"zarr://{tmp_path / 'a.zarr'}")
    text = str(info.value)
    assert "5-D zarr array of shape (1, 2, 3, 4, 5)" in text
    assert "2-D (y, x)" in text and "3-D (z, y, x)" in text and "dimension_names" in text


def _h5_attrs(path: Path, name: str) -> tuple[tuple[int, ...], dict[str, Any]]:
    with h5py.File(path, "r") as f:
        ds = f[name]
        return ds.shape, {k: np.asarray(v).tolist() for k, v in ds.attrs.items()}


@pytest.mark.parametrize("url_form", ["fragment", "no-fragment"])
def test_2d_hdf5_dataset_is_one_z_plane(tmp_path: Path, url_form: str) -> None:
    data = RNG.integers(0, 60000, YX, dtype=np.uint16)
    path = tmp_path / "img.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("sections/img", data=data, chunks=(8, 8))
        ds.attrs["note"] = "made by h5py"
    before = _h5_attrs(path, "sections/img")
    url = f"hdf5://{path}#/sections/img" if url_form == "fragment" else f"hdf5://{path}"

    vol = voxgate.open(url, mode="r+")
    assert vol.shape == (1, *YX) and tuple(vol.chunks) == (1, 8, 8)
    np.testing.assert_array_equal(vol.read(), data[None])
    np.testing.assert_array_equal(vol.read(Box((0, 2, 3), (1, 9, 29))), data[None, 2:9, 3:29])
    vol.write(np.full((1, 8, 12), 7, np.uint16), Box((0, 3, 5), (1, 11, 17)))
    vol.remote.close()

    expected = data.copy()
    expected[3:11, 5:17] = 7
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["sections/img"][...], expected)
    assert _h5_attrs(path, "sections/img") == before


def test_2d_hdf5_dataset_absent_chunks_and_no_new_scales(tmp_path: Path) -> None:
    path = tmp_path / "sparse.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("img", shape=(16, 16), chunks=(8, 8), dtype="uint8")
        ds[8:16, 0:8] = 3
    vol = voxgate.open(f"hdf5://{path}#/img", mode="r+")
    assert sorted(tuple(c) for c in vol.missing_chunks()) == [(0, 0, 0), (0, 0, 1), (0, 1, 1)]
    with pytest.raises(CapabilityNotSupportedError, match="2-D dataset"):
        vol.remote.add_scales([])
    vol.remote.close()


def test_a_file_of_several_2d_datasets_names_them(tmp_path: Path) -> None:
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["a"] = np.zeros((4, 4), np.uint8)
        f["b"] = np.zeros((4, 4), np.uint8)
    with pytest.raises(RemoteNotFoundError, match=re.escape("2-D datasets (/a, /b)")):
        voxgate.open(f"hdf5://{path}")
    assert voxgate.open(f"hdf5://{path}#/b").shape == (1, 4, 4)


@pytest.mark.parametrize("axes", [None, ["x", "y"], ["y", "x"]])
def test_2d_n5_dataset_is_one_z_plane(tmp_path: Path, axes: list[str] | None) -> None:
    """tensorstore's n5 driver writes the dataset (dimensions x first; with per-axis
    resolution and units): voxgate reads it as (1, y, x), its z voxel the larger in-plane
    one, and tensorstore reads voxgate's write back."""
    x, y = 30, 20
    names = axes or ["x", "y"]
    shape = [x if n == "x" else y for n in names]
    res = {"x": 4.0, "y": 6.0}
    path = tmp_path / "img.n5" / "section"
    spec: dict[str, Any] = {
        "driver": "n5", "kvstore": {"driver": "file", "path": str(path)},
        "metadata": {"dimensions": shape, "blockSize": [8, 8], "dataType": "uint8",
                     "compression": {"type": "gzip"}},
        "schema": {"dimension_units": [[res[n], "nm"] for n in names]},
    }
    if axes is not None:
        spec["metadata"]["axes"] = axes
    store = ts.open(spec, create=True).result()
    data_xy = RNG.integers(0, 250, (x, y), dtype=np.uint8)  # [x, y]
    store[...] = data_xy if names == ["x", "y"] else data_xy.T
    attrs_before = (path / "attributes.json").read_bytes()
    assert "resolution" in json.loads(attrs_before)
    data = data_xy.T  # (y, x)

    vol = voxgate.open(f"n5://{path}", mode="r+")
    assert vol.shape == (1, y, x) and tuple(vol.chunks) == (1, 8, 8)
    assert vol.voxel_size.zyx() == (6.0, 6.0, 4.0)
    np.testing.assert_array_equal(vol.read(), data[None])
    vol.write(np.full((1, 8, 12), 251, np.uint8), Box((0, 3, 5), (1, 11, 17)))

    expected = data.copy()
    expected[3:11, 5:17] = 251
    back = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(path)}}
                   ).result().read().result()
    np.testing.assert_array_equal(back, expected.T if names == ["x", "y"] else expected)
    assert (path / "attributes.json").read_bytes() == attrs_before


def test_2d_n5_multiscale_group(tmp_path: Path) -> None:
    """An n5-viewer group of 2-D scales (downsamplingFactors and pixelResolution of two
    entries): each scale a plane, the factors and resolution read; no scales are added."""
    root = tmp_path / "pyr.n5"
    levels = n5_viewer_2d(root, RNG.integers(0, 250, (32, 24), dtype=np.uint8),  # [x, y]
                          scale_factors=True)
    vol = voxgate.open(f"n5://{root}", mode="r+")
    assert [s.shape for s in vol.scales] == [(1, 24, 32), (1, 12, 16)]
    assert [s.voxel_size.zyx() for s in vol.scales] == [(5.0, 5.0, 5.0), (10.0, 10.0, 10.0)]
    np.testing.assert_array_equal(vol.at_scale(1).read(), levels[1].T[None])
    with pytest.raises(CapabilityNotSupportedError, match="2-D image"):
        vol.remote.add_scales([])


# -- (2) an empty s3:// prefix --------------------------------------------------------------------
def test_bare_s3_url_with_nothing_stored_is_not_found(s3_bucket: str) -> None:
    for url in (f"s3://{s3_bucket}/nothing/here", f"s3://{s3_bucket}/"):
        with pytest.raises(RemoteNotFoundError, match="nothing is stored at") as info:
            voxgate.open(url)
        assert not isinstance(info.value, UnknownSchemeError)
        assert isinstance(info.value, FileNotFoundError)


def test_bare_s3_url_holding_objects_of_no_format_cannot_be_told(s3_bucket: str) -> None:
    """Something is stored there, but no format's marker: the format is what is unknown."""
    kv = ts.KvStore.open(kvstore_spec(f"s3://{s3_bucket}/stuff/")).result()
    kv.write("notes.txt", b"hello").result()
    with pytest.raises(UnknownSchemeError, match="cannot tell the format"):
        voxgate.open(f"s3://{s3_bucket}/stuff")


# -- (3) classic knossos.conf lines as KNOSSOS reads them ----------------------------------------
def _classic(tmp_path: Path, text: str) -> Path:
    root = tmp_path / "ds"
    data = RNG.integers(0, 250, (200, 150, 130), dtype=np.uint8)  # x, y, z
    write_cubes(root, "e", 1, data)
    (root / "knossos.conf").write_text(text)
    return root


def test_a_value_followed_by_more_words_is_the_first_word(tmp_path: Path) -> None:
    """KNOSSOS splits the line at spaces and ';' and takes the word after ``boundary x``."""
    text = classic_conf("e", (200, 150, 130), (10, 10, 25)).replace(
        "boundary x 200;", "boundary x 200 201;").replace("scale z 25;", "scale z 25 30;")
    vol = voxgate.open(f"knossos://{_classic(tmp_path, text)}")
    assert vol.shape == (130, 150, 200)
    assert vol.voxel_size.zyx() == (25.0, 10.0, 10.0)


def test_an_indented_line_is_skipped_with_a_warning(tmp_path: Path) -> None:
    """An indented repeat of a key does not replace the value (it did: x was 64)."""
    text = classic_conf("e", (200, 150, 130), (10, 10, 25)).replace(
        "boundary y 150;\n", "boundary y 150;\n  boundary x 64;\n\tscale x 3;\n")
    root = _classic(tmp_path, text)
    with pytest.warns(VoxgateWarning) as got:
        vol = voxgate.open(f"knossos://{root}")
    said = [str(w.message) for w in got]
    assert len(said) == 2, said
    assert "line 4: 'boundary x 64;' is indented" in said[0]
    assert "line 5: 'scale x 3;' is indented" in said[1]
    assert vol.shape == (130, 150, 200)
    assert vol.voxel_size.zyx() == (25.0, 10.0, 10.0)


def test_an_indented_only_entry_is_missing(tmp_path: Path) -> None:
    text = classic_conf("e", (200, 150, 130), (10, 10, 25)).replace(
        "boundary z 130;", "    boundary z 130;")
    root = _classic(tmp_path, text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VoxgateWarning)
        with pytest.raises(InvalidRequestError, match="has no 'boundary z' entry"):
            voxgate.open(f"knossos://{root}")


def test_an_indented_ftp_mode_line_is_skipped(tmp_path: Path) -> None:
    """KNOSSOS loads the local cubes then (ftp_mode is not its first word)."""
    text = classic_conf("e", (200, 150, 130), (10, 10, 25), extra="  ftp_mode host /d u p 5;\n")
    vol = voxgate.open(f"knossos://{_classic(tmp_path, text)}")
    assert vol.shape == (130, 150, 200)


@pytest.mark.parametrize(("line", "key", "value"), [
    ("png foo;", "png", True),
    ('experiment name "a" "b";', "experiment name", "a"),
    ("magnification 2 4;", "magnification", 2),
    ("boundary y 7 # seven", "boundary y", 7),
])
def test_words_after_the_value_are_ignored(line: str, key: str, value: object) -> None:
    assert parse_knossos_conf(line + "\n", "c")[key] == value


@pytest.mark.parametrize("line", ["boundary x 1O24;", "boundary x;",
                                  'experiment name;', "boundary x 12.5.1;"])
def test_a_value_that_is_none_is_still_refused(line: str) -> None:
    with pytest.raises(InvalidRequestError, match="line 1"):
        parse_knossos_conf(line + "\n", "c")
