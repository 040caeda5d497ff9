"""A Volume compared with a number or an array, asked ``x in vol``, or converted to a Python
number: before, ``seg == 5`` was False (identity), so ``np.count_nonzero(seg == 5)`` counted
0 voxels; ``5 in seg`` was False; ``int(vol[z, y, x])`` and ``float(...)`` raised a TypeError
that said nothing of a Volume, and ``bool(vol[z, y, x])`` / ``if vol[z, y, x]:`` raised
"len() of a 0-d volume".  Now comparisons with data and ``in`` refuse as arithmetic does
(LazyOperationError, nothing read), identity stays between views and other objects, and a
0-d view converts as numpy's 0-d arrays do, reading its voxel.  The truth of any other view
than one voxel is ambiguous, as numpy's (it was its non-emptiness: ``all(vol)`` was True)."""

from __future__ import annotations

import decimal
import fractions
import math

import dask.array as da
import numpy as np
import pytest

import voxgate
from voxgate.errors import LazyOperationError

SHAPE = (4, 6, 5)


@pytest.fixture
def seg() -> voxgate.Volume:
    v = voxgate.create("mem://scalars-seg", shape=SHAPE, dtype="uint64", chunks=(2, 3, 5),
                       voxel_size=(4, 4, 4), kind="segmentation")
    data = np.zeros(SHAPE, np.uint64)
    data[1, 2, 3] = 5
    data[3, 5, 4] = 2**64 - 1
    v[:] = data
    return v


@pytest.fixture
def reads(seg: voxgate.Volume, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    got: list[object] = []
    cls = type(seg.remote)
    real = cls.read

    def read(self: object, *args: object, **kwargs: object) -> object:
        got.append(args)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cls, "read", read)
    return got


@pytest.mark.parametrize("op", [
    lambda v: v == 5, lambda v: v != 5, lambda v: 5 == v, lambda v: v == np.uint64(5),
    lambda v: v == 5.0, lambda v: v == np.zeros(SHAPE, np.uint64),
    lambda v: v != da.zeros(SHAPE, dtype=np.uint64), lambda v: 5 in v,
    lambda v: np.count_nonzero(v == 5),
    lambda v: v[0, 0, :3] == [1, 2, 3], lambda v: v == fractions.Fraction(1, 2),
    lambda v: v != decimal.Decimal(5),
], ids=["eq", "ne", "reflected", "numpy scalar", "float", "ndarray", "dask", "in", "count",
        "list", "fraction", "decimal"])
def test_comparisons_with_data_and_in_refuse(seg: voxgate.Volume, reads: list[object],
                                             op: object) -> None:
    with pytest.raises(LazyOperationError, match=r"vol\.to_dask\(\)"):
        op(seg)  # type: ignore[operator]
    assert reads == []


def test_identity_stays_between_views_and_other_objects(seg: voxgate.Volume,
                                                         reads: list[object]) -> None:
    other = seg[1:]
    assert seg == seg and not (seg != seg)
    assert seg != other and not (seg == other)
    assert seg != None and not (seg == "mem://scalars-seg")  # noqa: E711
    assert {seg: 1, other: 2}[other] == 2 and seg in {seg} and other in [seg, other]
    assert reads == []


def test_a_voxel_converts_to_a_python_number(seg: voxgate.Volume) -> None:
    assert int(seg[1, 2, 3]) == 5 and float(seg[1, 2, 3]) == 5.0
    assert int(seg[3, 5, 4]) == 2**64 - 1  # exact, not through a float
    assert bool(seg[1, 2, 3]) is True and bool(seg[0, 0, 0]) is False
    assert ("yes" if seg[0, 0, 0] else "no") == "no"
    assert int(seg[1:3, 2:4][0, 0, 3]) == 5  # a voxel of a view
    assert int(seg.at_scale(0)[-3, -4, -2]) == 5
    img = voxgate.create("mem://scalars-img", shape=SHAPE, dtype="float32", chunks=SHAPE,
                         voxel_size=(4, 4, 4))
    img[2, 1, 0] = np.nan
    assert math.isnan(float(img[2, 1, 0])) and float(img[0, 0, 0]) == 0.0


def test_only_a_voxel_converts(seg: voxgate.Volume, reads: list[object]) -> None:
    for convert in (int, float):
        with pytest.raises(TypeError, match=r"one voxel .*shape \(4, 6, 5\).*vol\.read\(\)"):
            convert(seg)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"shape \(1, 1, 1\)"):
            convert(seg[1:2, 2:3, 3:4])  # type: ignore[arg-type]
    assert reads == []


def test_truth_is_a_voxels_or_ambiguous(seg: voxgate.Volume, reads: list[object]) -> None:
    """As numpy's: the truth of a view of one voxel is the voxel's, any other view's is
    ambiguous (ValueError, nothing read).  Fails on the code before, where it was
    ``len(vol) != 0``: ``all(seg)`` and ``any(seg == ...)``-free idioms like ``if seg[z]:``
    answered True whatever the voxels (here every z-plane but two is all zeros)."""
    for view in (seg, seg[0], seg[0:0], seg[:, 0, :]):
        with pytest.raises(ValueError, match=r"ambiguous.*vol\.read\(\)\.any\(\)"):
            bool(view)
    with pytest.raises(ValueError, match="ambiguous"):
        all(seg)  # (bool of each z-plane, as for numpy's arrays)
    assert reads == []
    with pytest.raises(ValueError, match="ambiguous"):
        all(seg.read())  # (numpy's own answer)
    reads.clear()
    assert bool(seg[1:2, 2:3, 3:4]) is True and bool(seg[1, 2, 3]) is True
    assert bool(seg[0:1, 0:1, 0:1]) is False and not seg[0, 0, 0]
    assert len(reads) == 4


def test_a_voxel_formats_and_rounds(seg: voxgate.Volume, reads: list[object]) -> None:
    """``f"{seg[z, y, x]:d}"`` and ``round(vol[z, y, x])`` use the voxel, as for numpy's 0-d
    arrays (fails on the code before: "unsupported format string passed to
    Volume.__format__", "type Volume doesn't define __round__ method"); a larger view refuses
    by saying it takes one voxel, reading nothing."""
    assert f"{seg[1, 2, 3]:d}|{seg[1, 2, 3]:>4}|{seg[1, 2, 3]:.1f}" == "5|   5|5.0"
    assert f"{seg[3, 5, 4]:x}" == "f" * 16
    assert round(seg[1, 2, 3]) == 5 and round(seg[1, 2, 3], -1) == 0
    assert f"{seg}".startswith("<Volume") and format(seg, "") == str(seg)
    reads.clear()
    for spec in ("d", ".2f"):
        with pytest.raises(TypeError, match=r"one voxel .*shape \(4, 6, 5\)"):
            format(seg, spec)
    with pytest.raises(TypeError, match=r"round\(\) takes one voxel"):
        round(seg[0])
    assert reads == []


def test_a_voxel_prints_as_its_value(seg: voxgate.Volume, reads: list[object]) -> None:
    """``print(seg[z, y, x])`` shows the voxel, as numpy's 0-d arrays print theirs (fails on
    the code before: it showed ``<Volume ... shape=() ...>``); a larger view prints its repr
    and reads nothing (printing a view never reads a volume)."""
    assert str(seg[1, 2, 3]) == "5" and f"{seg[1, 2, 3]}" == "5"
    assert str(seg[3, 5, 4]) == str(np.iinfo(seg.dtype).max)
    assert repr(seg[1, 2, 3]).startswith("<Volume")  # (the repr stays the view's)
    reads.clear()
    for view in (seg, seg[0], seg[1:2, 2:3, 3:4]):
        assert str(view) == repr(view) and f"{view}" == repr(view)
    assert reads == []
