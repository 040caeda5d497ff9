"""Classic knossos.conf leftovers (H28): decimal values, other axes, png-like words.

KNOSSOS: knossos-project/knossos dataset.cpp ``Dataset::fromLegacyConf`` (commit acddc5a7,
lines 419-481): ``boundary`` and ``scale`` values are read with ``toFloat`` (the boundary
into an int Coordinate: 1024.5 is 1024), ``magnification``, ``cube_edge_length`` and
``compression_ratio`` with ``toInt`` (0 for "2.0"); a boundary/scale line whose axis is not
"x", "y" or "z" changes nothing; only a first word equal to "png" sets ``hasPNG``, any other
("png=no", "pngs") is an unknown parameter (qDebug "Skipping unknown parameter").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError, VoxgateWarning
from voxgate.remotes.knossos import parse_knossos_conf

from .test_knossos_audit import classic_conf
from .test_knossos_conf_audit import SHAPE_XYZ, _dataset


def _conf(old: str = "", new: str = "", extra: str = "") -> str:
    text = classic_conf("e", SHAPE_XYZ, (10, 10, 25), extra=extra)
    return text.replace(old, new) if old else text


@pytest.mark.parametrize(("old", "new"), [
    ("boundary x 200;", "boundary x 200.5;"),  # KNOSSOS: 200 (toFloat into an int)
    ("boundary z 130;", "boundary z 1.305e2;"),
    ("boundary y 150;", "boundary y 1e400;"),  # the old code: OverflowError from int(inf)
    ("scale x 10;", "scale x 1e400;"),  # the old code: an infinite voxel size
])
def test_a_boundary_that_is_no_whole_number_is_refused_with_its_line(
        tmp_path: Path, old: str, new: str) -> None:
    # The old code refused the first two without the line ("boundary x must be a positive
    # whole number, got 200.5"), raised OverflowError for the third, opened the fourth.
    text = _conf(old, new)
    number = text.splitlines().index(new) + 1
    root, _ = _dataset(tmp_path, text)
    what = r"(boundary|scale) [xyz] (1024|10\.0);"
    with pytest.raises(InvalidRequestError, match=rf"line {number}: '{new}' is not {what}"):
        voxgate.open(f"knossos://{root}")


def test_a_decimal_boundary_names_what_a_boundary_looks_like() -> None:
    with pytest.raises(InvalidRequestError,
                       match=r"line 1: 'boundary x 1024.5;' is not boundary x 1024; "
                             r"\(a boundary counts voxels: a whole number, not '1024.5'\)"):
        parse_knossos_conf("boundary x 1024.5;\n", "c")


def test_a_whole_decimal_boundary_still_reads(tmp_path: Path) -> None:
    # guard (passes on the old code too): 200.0 and 1.5e2 are whole numbers, as KNOSSOS reads
    root, data = _dataset(tmp_path, _conf("boundary x 200;", "boundary x 200.0;").replace(
        "boundary y 150;", "boundary y 1.5e2;"))
    vol = voxgate.open(f"knossos://{root}")
    assert vol.shape == (130, 150, 200)
    np.testing.assert_array_equal(vol.read(), data.transpose(2, 1, 0))


@pytest.mark.parametrize(("old", "new"), [
    ("magnification 1;", "magnification 1.0;"),
    ("magnification 1;", "magnification 1;\ncube_edge_length 128.0;"),
    ("magnification 1;", "magnification 1;\ncompression_ratio 1000.0;"),
])
def test_a_decimal_integer_key_is_refused_as_knossos_reads_it_as_zero(
        tmp_path: Path, old: str, new: str) -> None:
    # guard (the old code refused these too): toInt("1.0") is 0 (ok=false), so KNOSSOS would
    # scale the boundary by 0, use 0-voxel cubes, or read .raw cubes for "1000.0"
    text = _conf(old, new)
    line = new.splitlines()[-1]
    number = text.splitlines().index(line) + 1
    root, _ = _dataset(tmp_path, text)
    with pytest.raises(InvalidRequestError,
                       match=rf"line {number}: .*KNOSSOS reads '\d+\.0' as 0"):
        voxgate.open(f"knossos://{root}")


@pytest.mark.parametrize(("line", "named"), [
    ("scale q 5;", "the axis 'q'"),
    ("boundary w 3;", "the axis 'w'"),
    ("scale X 1;", "the axis 'X'"),  # KNOSSOS compares with "x" exactly
    ("boundary x100;", "the axis 'x100'"),
    ("boundary;", "no axis"),
])
def test_another_axis_is_skipped_with_a_warning(tmp_path: Path, line: str, named: str) -> None:
    # dataset.cpp 432-448: no branch matches, the line changes nothing.  The old code skipped
    # it silently.
    root, data = _dataset(tmp_path, _conf(extra=line + "\n"))
    with pytest.warns(VoxgateWarning,
                      match=rf"line 9: '{line}' names {named}, .*KNOSSOS ignores the line"):
        vol = voxgate.open(f"knossos://{root}")
    assert vol.shape == (130, 150, 200)
    assert vol.voxel_size.zyx() == (25.0, 10.0, 10.0)
    np.testing.assert_array_equal(vol.read(), data.transpose(2, 1, 0))


@pytest.mark.parametrize("key", ["boundary", "scale"])
def test_a_boundary_or_scale_line_with_nothing_after_it_is_refused(key: str) -> None:
    # KNOSSOS: tokenList.at(1) past the end of a one-word line.  The old code skipped it.
    with pytest.raises(InvalidRequestError, match=rf"line 2: '{key}' is not {key} x"):
        parse_knossos_conf(f'experiment name "e";\n{key}\n', "c")


@pytest.mark.parametrize("line", ["png=no;", "pngs;", "png=yes;", "PNG=1;"])
def test_a_png_like_word_is_skipped_with_a_warning_and_raw_cubes_read(
        tmp_path: Path, line: str) -> None:
    # dataset.cpp 477-481: only token == "png" sets hasPNG; "png=no" is an unknown parameter,
    # so KNOSSOS loads the .raw cubes.  The old code refused the first three ("is not png;").
    root, data = _dataset(tmp_path, _conf(extra=line + "\n"))
    word = line.rstrip(";")
    with pytest.warns(VoxgateWarning,
                      match=rf"line 9: '{line}' starts with '{word}', not the key 'png'"):
        vol = voxgate.open(f"knossos://{root}")
    np.testing.assert_array_equal(vol.read(), data.transpose(2, 1, 0))
    with pytest.warns(VoxgateWarning, match="KNOSSOS ignores the line"):
        assert parse_knossos_conf(line + "\n", "c") == {}


def test_a_well_formed_conf_reads_as_before(tmp_path: Path) -> None:
    # guard: no warning (filterwarnings=error), png and every key read
    text = _conf(extra="cube_edge_length 128;\ncompression_ratio 0;\npng;\n")
    assert parse_knossos_conf(text, "c") == {
        "experiment name": "e", "boundary x": 200, "boundary y": 150, "boundary z": 130,
        "scale x": 10, "scale y": 10, "scale z": 25, "magnification": 1,
        "cube_edge_length": 128, "compression_ratio": 0, "png": True}
    root, data = _dataset(tmp_path, text)
    vol = voxgate.open(f"knossos://{root}")
    assert vol.shape == (130, 150, 200)
    assert vol.voxel_size.zyx() == (25.0, 10.0, 10.0)
    np.testing.assert_array_equal(vol.read(), data.transpose(2, 1, 0))
