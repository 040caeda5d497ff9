"""Classic knossos.conf lines read as KNOSSOS reads them (H26).

KNOSSOS: knossos-project/knossos dataset.cpp ``Dataset::fromLegacyConf`` (commit acddc5a7),
which splits each line at every single space and ';' (line 427:
``line.split(QRegularExpression("[ ;]"))``), takes the first piece as the key, and reads the
values with Qt's toInt / toFloat (0 when the piece is no number).  Each test fails on the old
parser, which split at any run of whitespace and ended a value at '#'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError, VoxgateWarning
from voxgate.remotes.knossos import parse_knossos_conf

from .test_knossos_audit import classic_conf, write_cubes

RNG = np.random.default_rng(26)
SHAPE_XYZ = (200, 150, 130)


def _dataset(tmp_path: Path, text: str) -> tuple[Path, np.ndarray]:
    root = tmp_path / "ds"
    data = RNG.integers(0, 250, SHAPE_XYZ, dtype=np.uint8)
    write_cubes(root, "e", 1, data)
    (root / "knossos.conf").write_text(text)
    return root, data


@pytest.mark.parametrize("line", ["boundary  x 64;", "boundary x\t64;", "boundary\tx 64;"])
def test_a_boundary_line_with_two_spaces_or_a_tab_is_skipped(tmp_path: Path, line: str) -> None:
    # dataset.cpp 441-448: tokenList.at(1) is "" / "x\t64" (no axis), or the key is
    # "boundary\tx" (430-480: an unknown parameter): the line changes nothing.  The old code
    # read x as 64.
    root, data = _dataset(tmp_path, classic_conf("e", SHAPE_XYZ, (10, 10, 25), extra=line + "\n"))
    with pytest.warns(VoxgateWarning, match="line 9: .* KNOSSOS reads no key from it"):
        vol = voxgate.open(f"knossos://{root}")
    assert vol.shape == (130, 150, 200)
    np.testing.assert_array_equal(vol.read(), data.transpose(2, 1, 0))


def test_a_scale_line_with_a_tab_after_the_axis_is_skipped(tmp_path: Path) -> None:
    # dataset.cpp 432-439: tokenList.at(1) is "z\t3", not "z".  The old code read z as 3 nm.
    text = classic_conf("e", SHAPE_XYZ, (10, 10, 25), extra="scale z\t3;\n")
    root, _ = _dataset(tmp_path, text)
    with pytest.warns(VoxgateWarning, match="a tab after the axis"):
        vol = voxgate.open(f"knossos://{root}")
    assert vol.voxel_size.zyx() == (25.0, 10.0, 10.0)


def test_a_tab_after_magnification_leaves_mag_1(tmp_path: Path) -> None:
    # dataset.cpp 427/450: the first piece is "magnification\t2", no key KNOSSOS knows (480:
    # "Skipping unknown parameter"), so the conf is mag 1.  The old code read mag 2 and doubled
    # the boundary.
    text = classic_conf("e", SHAPE_XYZ, (10, 10, 25)).replace(
        "magnification 1;", "magnification\t2;")
    root, _ = _dataset(tmp_path, text)
    with pytest.warns(VoxgateWarning, match=r"line 8: 'magnification\\t2;' has a '\\t'"):
        vol = voxgate.open(f"knossos://{root}")
    assert vol.shape == (130, 150, 200)
    assert vol.voxel_size.zyx() == (25.0, 10.0, 10.0)


@pytest.mark.parametrize(("old", "new"), [
    ("magnification 1;", "magnification  2;"),  # 451: tokenList.at(1) is "": toInt 0
    ("boundary x 200;", "boundary x 200#mag1"),  # 444: toFloat("200#mag1") is 0
    ("scale z 25;", "scale z 25//nm"),  # 439: toFloat("25//nm") is 0
    ("boundary y 150;", "boundary y  150;"),  # 446: tokenList.at(2) is "": 0
])
def test_a_value_knossos_reads_as_zero_is_refused_with_its_line(
        tmp_path: Path, old: str, new: str) -> None:
    # the old code read 2, 200, 25 and 150 (a run of spaces, a value ended at '#' or '//')
    text = classic_conf("e", SHAPE_XYZ, (10, 10, 25)).replace(old, new)
    number = text.splitlines().index(new) + 1
    root, _ = _dataset(tmp_path, text)
    with pytest.raises(InvalidRequestError, match=rf"line {number}: .*KNOSSOS reads .* as 0"):
        voxgate.open(f"knossos://{root}")


def test_a_jpg_line_is_no_key(tmp_path: Path) -> None:
    # dataset.cpp 470-481: .jpg cubes come from "compression_ratio 1000" (475); "jpg" is an
    # unknown parameter (480), and knossos_utils' parse_knossos_conf reads only "png".  The
    # old code took "jpg;" as .jpg cubes, silently.
    with pytest.warns(VoxgateWarning, match="compression_ratio 1000"):
        assert parse_knossos_conf("jpg;\n", "c") == {}
    root, data = _dataset(tmp_path, classic_conf("e", SHAPE_XYZ, (10, 10, 25), extra="jpg;\n"))
    with pytest.warns(VoxgateWarning, match="line 9: 'jpg;' is skipped"):
        vol = voxgate.open(f"knossos://{root}")
    np.testing.assert_array_equal(vol.read(), data.transpose(2, 1, 0))


@pytest.mark.parametrize(("line", "name"), [
    ('experiment "e";', "e"),  # 430-431: only the first piece is checked, then split('"')[1]
    ('experiment name "e f', "e f"),  # split('"')[1] needs no closing quote
    ("experiment name my data;", "my data"),  # knossos_utils initialize_without_conf (below)
])
def test_the_experiment_name(line: str, name: str) -> None:
    # The last: KNOSSOS indexes past the split (no quote: no name); knossos_utils'
    # initialize_without_conf writes f"experiment name {experiment_name};" (knossosdataset.py,
    # since da64ec8), the only writer of an unquoted name, so the name is all up to the ';'.
    # The old code refused the first two and read "my".
    assert parse_knossos_conf(line + "\n", "c")["experiment name"] == name
