"""The first hour of a new user: the common mistakes test_api_sweep*.py and test_cli_audit.py
do not reach, each of which must give a voxgate error of the right class that says what was
wrong and what would be right (and on the command line one ``Error:`` line, status 1):

- a scheme misspelt (``zar://``, ``precompute://``): the closest known scheme is suggested;
- a bare path to a file voxgate does not read (a .png) or to an empty folder: said so, not
  "name the format, e.g. zarr://img.png";
- an N5 root holding several datasets, opened without naming one: the datasets are listed;
- a slice that ends before it starts (``vol[10:5]``): refused, as a slice past the end is,
  rather than numpy's silent empty selection; a float slice end in bounds="clip" mode;
- a misspelt keyword of voxgate.open / create / copy / connected_components / map_blocks
  (``chunk=``, ``voxelsize=``, ``mip=``, ``worker=``, ``connectivty=``): named with the
  parameter meant, instead of being passed on to the store and refused there as an unknown
  store option (or as "needs an out= URL"), and nothing is created.

Real stores on tmp_path (zarr, N5 written by tensorstore, precomputed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
from click.testing import CliRunner

import voxgate
from voxgate.cli import main
from voxgate.errors import (
    IndexingError,
    InvalidRequestError,
    RemoteNotFoundError,
    UnknownSchemeError,
)

from .test_cli_audit import _one_error

SHAPE = (16, 32, 32)


@pytest.fixture
def em(tmp_path: Path) -> voxgate.Volume:
    vol = voxgate.create(f"zarr://{tmp_path}/em.zarr", shape=SHAPE, dtype="uint8",
                         chunks=(8, 16, 16), voxel_size=(40, 8, 8))
    vol[:] = (np.arange(np.prod(SHAPE)) % 250 + 1).astype(np.uint8).reshape(SHAPE)
    return voxgate.open(vol.url, mode="r+")


# -- URLs --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "meant"), [("zar://em.zarr", "zarr://"),
                                            ("precompute://em", "precomputed://"),
                                            ("hdf://a.h5#/v", "hdf5://")])
def test_a_misspelt_scheme_suggests_the_known_one(url: str, meant: str) -> None:
    """Before: 'unknown scheme' and the list of schemes, without the one meant."""
    with pytest.raises(UnknownSchemeError, match=f"did you mean {meant!r}"):
        voxgate.open(url)
    _one_error(CliRunner().invoke(main, ["info", url]), 1,
               f"UnknownSchemeError: unknown scheme .* \\(did you mean {meant!r}\\?\\)")


def test_an_unknown_scheme_far_from_any_lists_them_without_a_guess() -> None:
    with pytest.raises(UnknownSchemeError) as info:
        voxgate.open("qqqq://x")
    assert "did you mean" not in str(info.value) and "zarr://" in str(info.value)


def test_a_png_file_is_said_to_be_a_file_voxgate_does_not_read(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """Before: 'name the format in the URL, e.g. zarr://img.png, precomputed://img.png' (a PNG
    is none of those)."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save("img.png")
    with pytest.raises(UnknownSchemeError) as info:
        voxgate.open("img.png")
    text = str(info.value)
    assert "cannot tell the format of 'img.png': it is a file" in text
    assert "HDF5" in text and "TIFF" in text and "zarr://img.png" not in text
    _one_error(CliRunner().invoke(main, ["info", "img.png"]), 1, "it is a file")


def test_an_empty_folder_is_said_to_be_empty(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(RemoteNotFoundError, match="'nothing': it is an empty directory"):
        voxgate.open("nothing")


def _n5_dataset(path: Path) -> None:
    ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(path)},
             "metadata": {"dimensions": [8, 8, 8], "blockSize": [4, 4, 4], "dataType": "uint8",
                          "compression": {"type": "raw"}}}, create=True).result()


@pytest.mark.parametrize("root_attributes", [False, True], ids=["tensorstore root",
                                                                 "root with attributes.json"])
def test_an_n5_root_of_several_datasets_lists_them(tmp_path: Path, root_attributes: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: 'no N5 dataset or multiscale group at ...' (tensorstore writes no attributes.json
    at the root), or 'open one of its datasets instead' without naming any; and the bare path
    was 'cannot tell the format'."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "sample.n5"
    for name in ("raw", "labels/neurons"):
        _n5_dataset(root / name)
    if root_attributes:
        (root / "attributes.json").write_text('{"n5": "2.5.0"}')
    for url in ("n5://sample.n5", "sample.n5"):
        with pytest.raises(RemoteNotFoundError) as info:
            voxgate.open(url)
        # (a relative path is made absolute: the listed URLs open from any directory)
        assert f"n5://{root}/labels/neurons, n5://{root}/raw" in str(info.value), url
    # the listed URLs open
    assert voxgate.open("n5://sample.n5/labels/neurons").shape == (8, 8, 8)
    _one_error(CliRunner().invoke(main, ["info", "sample.n5"]), 1,
               f"RemoteNotFoundError: .*n5://{root}/raw")


# -- slicing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bounds", ["error", "fill"])
@pytest.mark.parametrize(("key", "match"), [
    (slice(10, 5), r"slice 10:5 on axis z ends before it starts.*put the start first \(5:10\)"),
    ((slice(None), slice(-2, 3)),
     "slice -2:3 on axis y ends before it starts.*counted from the end it is 30:3"),
    ((0, 0, slice(9, 2, 2)), "slice 9:2:2 on axis x ends before it starts"),
])
def test_a_slice_that_ends_before_it_starts_is_refused(em: voxgate.Volume, bounds: str,
                                                       key: Any, match: str) -> None:
    """Before: an empty view, read as an empty array, and a write to it did nothing: as
    silent as the slice past the end that bounds='error' refuses."""
    vol = em.with_bounds(bounds)
    with pytest.raises(IndexingError, match=match):
        vol[key]
    with pytest.raises(IndexingError, match="ends before it starts"):
        vol[key] = 0
    np.testing.assert_array_equal(em.read().min(), 1)  # nothing written


def test_numpy_rules_still_hold_where_they_should(em: voxgate.Volume) -> None:
    assert em[5:5].shape == (0, 32, 32)  # an empty slice written start first is not a mistake
    assert em.read()[10:5].shape == em.with_bounds("clip")[10:5].read().shape == (0, 32, 32)
    assert em[..., 0].shape == (16, 32)  # numpy's: '...' then x (no channel axis is assumed)


@pytest.mark.parametrize("bounds", ["error", "clip", "fill"])
@pytest.mark.parametrize(("key", "match"), [
    (slice(1.5, 3), r"a slice start must be an integer or None, got float 1.5; round it"),
    (slice(0, 3.0), r"a slice stop must be an integer or None, got float 3.0"),
    (2.0, r"an index must be an integer, a slice or '...', got float 2.0; round it"),
])
def test_float_indices_are_indexing_errors_in_every_bounds_mode(em: voxgate.Volume, bounds: str,
                                                                key: Any, match: str) -> None:
    """Before: bounds='clip' let Python's slice.indices raise a bare TypeError, and the other
    modes said a slice start 'must be an integer, a slice or ...'."""
    with pytest.raises(IndexingError, match=match):
        em.with_bounds(bounds)[key]


def test_a_step_of_zero_is_not_told_to_reverse_the_array(em: voxgate.Volume) -> None:
    with pytest.raises(InvalidRequestError) as info:
        em[::0]
    assert "got 0" in str(info.value) and "reverse" not in str(info.value)
    with pytest.raises(InvalidRequestError, match=r"got -1 .*reverse the array"):
        em[::-1]


# -- misspelt keywords -------------------------------------------------------------------------

BASE = {"shape": (8, 16, 16), "dtype": "uint8", "voxel_size": (40, 8, 8)}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({**BASE, "chunk": (4, 8, 8)}, r"voxgate.create\(\) got the unknown keyword 'chunk' "
                                   r"\(did you mean chunks=\?\)"),
    ({**BASE, "chunk_size": (4, 8, 8)}, "'chunk_size' \\(did you mean chunks=\\?\\)"),
    ({"shape": (8, 16, 16), "dtype": "uint8", "chunks": (4, 8, 8), "voxelsize": (40, 8, 8)},
     "'voxelsize' \\(did you mean voxel_size=\\?\\)"),
    ({**BASE, "chunks": (4, 8, 8), "num_scale": 2}, "'num_scale' \\(did you mean num_scales=\\?"),
    ({**BASE, "chunks": (4, 8, 8), "offest": (0, 0, 0)}, "did you mean offset="),
])
@pytest.mark.parametrize("fmt", ["zarr", "precomputed", "n5"])
def test_create_names_the_misspelt_parameter(tmp_path: Path, fmt: str, kwargs: dict[str, Any],
                                             match: str) -> None:
    """Before: chunk= / voxelsize= gave Python's 'create() missing 1 required keyword-only
    argument: chunks', not naming the word given; num_scale= / offest= reached the store,
    which refused them as options of its own and suggested nothing."""
    url = {"zarr": f"zarr://{tmp_path}/new.zarr", "precomputed": f"precomputed://{tmp_path}/new",
           "n5": f"n5://{tmp_path}/new.n5"}[fmt]
    with pytest.raises(InvalidRequestError, match=match):
        voxgate.create(url, **kwargs)
    assert not os.listdir(tmp_path)


def test_create_without_chunks_is_still_the_missing_argument(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'chunks'"):
        voxgate.create(f"zarr://{tmp_path}/a.zarr", **BASE)
    with pytest.raises(TypeError, match=r"2 required .*'chunks' and 'voxel_size'"):
        voxgate.create(f"zarr://{tmp_path}/a.zarr", shape=(8, 8, 8), dtype="uint8")
    assert not os.listdir(tmp_path)
    # the store's own options still pass
    vol = voxgate.create(f"zarr://{tmp_path}/b.zarr", chunks=(4, 8, 8), zarr_format=2, **BASE)
    assert (tmp_path / "b.zarr" / ".zgroup").exists() and vol.shape == (8, 16, 16)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"scael": 1}, r"voxgate.open\(\) got the unknown keyword 'scael' \(did you mean scale=\?\)"),
    ({"mip": 1}, "'mip' \\(did you mean scale=\\?\\)"),
    ({"resolution": 1}, "'resolution' \\(did you mean scale=\\?\\)"),
    ({"bound": "clip"}, "'bound' \\(did you mean bounds=\\?\\)"),
])
def test_open_names_the_misspelt_parameter(em: voxgate.Volume, kwargs: dict[str, Any],
                                           match: str) -> None:
    """Before: 'zarr:// got unknown option(s) to open 'mip'; it accepts multiscale, mode,
    missing', with no word of scale= or bounds=."""
    with pytest.raises(InvalidRequestError, match=match):
        voxgate.open(em.url, **kwargs)


def test_the_stores_own_options_are_left_to_the_store(em: voxgate.Volume) -> None:
    assert voxgate.open(em.url, multiscale=0).shape == SHAPE
    with pytest.raises(InvalidRequestError, match="'multscale' \\(did you mean 'multiscale'\\?\\)"):
        voxgate.open(em.url, multscale=0)  # (docs/cli.md's example, word for word below)
    res = CliRunner().invoke(main, ["info", "-O", "multscale=1", em.url])
    _one_error(res, 1, "InvalidRequestError: zarr:// got unknown option\\(s\\) to open "
               "'multscale' \\(did you mean 'multiscale'\\?\\); it accepts multiscale, time, "
               "mode, missing$")


def test_the_cli_names_a_misspelt_open_option(em: voxgate.Volume) -> None:
    _one_error(CliRunner().invoke(main, ["info", "-O", "mip=1", em.url]), 1,
               "UnknownKeywordError: voxgate.open\\(\\) got the unknown keyword 'mip' "
               "\\(did you mean scale=\\?\\)")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"worker": 2}, r"voxgate.copy\(\) got the unknown keyword 'worker' \(did you mean "
                    r"workers=\?\)"),
    ({"progres": False}, "did you mean progress="),
    ({"bbox": None}, "'bbox' \\(did you mean box=\\?\\)"),
    ({"scale": [0]}, "'scale' \\(did you mean scales=\\?\\)"),
])
def test_copy_names_the_misspelt_parameter(em: voxgate.Volume, tmp_path: Path,
                                           kwargs: dict[str, Any], match: str) -> None:
    """Before: the destination's create refused them ('zarr:// got unknown option(s) to create
    'worker'; it accepts zarr_format, ...'), as if the user had meant a store option."""
    dst = f"zarr://{tmp_path}/copy.zarr"
    with pytest.raises(InvalidRequestError, match=match):
        voxgate.copy(em, dst, **kwargs)
    assert not (tmp_path / "copy.zarr").exists()
    # a destination's own create option is not mistaken for one of copy's
    report = voxgate.copy(em, dst, zarr_format=2, progress=False)
    assert report.blocks_written and (tmp_path / "copy.zarr" / ".zgroup").exists()


def test_services_name_the_misspelt_parameter(em: voxgate.Volume, tmp_path: Path) -> None:
    """Before: connected_components(src, connectivty=6) said "options ['connectivty'] need an
    out= URL"; map_blocks(..., out, halos=...) created nothing but blamed the store."""
    with pytest.raises(InvalidRequestError, match="'connectivty' \\(did you mean connectivity=\\?"):
        voxgate.connected_components(em, connectivty=6)
    out = f"zarr://{tmp_path}/out.zarr"
    with pytest.raises(InvalidRequestError, match="'halos' \\(did you mean halo=\\?\\)"):
        voxgate.map_blocks(lambda a: a, em, out, halos=(1, 1, 1))
    with pytest.raises(InvalidRequestError, match="'blocks' \\(did you mean block=\\?\\)"):
        voxgate.connected_components(em, out, blocks=(8, 8, 8))
    assert not (tmp_path / "out.zarr").exists()


# -- progress bars off a terminal ----------------------------------------------------------------

def test_cp_to_a_log_file_has_no_terminal_codes(em: voxgate.Volume, tmp_path: Path) -> None:
    """``voxgate cp A B 2> log`` (a batch job): the bar is drawn once, as plain text, on stderr;
    stdout has the report only."""
    proc = subprocess.run([sys.executable, "-m", "voxgate", "cp", em.url,
                           f"zarr://{tmp_path}/c.zarr"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TERM": "xterm-256color"})
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stderr and "\x1b" not in proc.stdout
    assert "copy" in proc.stderr and "100%" in proc.stderr
    assert proc.stdout.startswith("created and copied") and "━" not in proc.stdout
