"""Keyword mistakes in the methods of ``voxgate.Volume`` (audit H18).

Before: every public function of ``voxgate`` refused a misspelt keyword with
``UnknownKeywordError`` (tests/test_keyword_mistakes_audit.py), but the Volume's methods
answered ``vol.read(bbox=...)``, ``vol.to_dask(chunk=...)``, ``vol.write(a, worker=4)`` or
``vol.preview(label=seg)`` with Python's bare ``TypeError: ... got an unexpected keyword
argument``, suggesting nothing; ``vol.view(name=...)`` was refused as ``voxgate.view()``, a
function the caller never called, listing its ``volumes``.

Now each method refuses an unknown keyword with ``UnknownKeywordError`` (also a TypeError)
naming ``Volume.<method>()``, the keyword, the parameter it likely meant and all it takes,
before it reads or writes anything.
"""

from __future__ import annotations

import inspect
import pydoc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate import Box, Volume
from voxgate.errors import InvalidRequestError, UnknownKeywordError


@pytest.fixture
def vol() -> Volume:
    v = voxgate.create("mem://h18-volume", shape=(8, 16, 16), dtype="uint8", chunks=(4, 8, 8),
                       voxel_size=(40, 8, 8))
    v[:] = np.arange(8 * 16 * 16, dtype=np.uint32).reshape(8, 16, 16).astype(np.uint8)
    return voxgate.open(v.url, mode="r+")


@dataclass(frozen=True)
class Case:
    name: str  # Volume.<name>
    call: Callable[[Volume, dict[str, Any]], Any]  # correct arguments + the keyword
    wrong: str
    meant: str | None  # the parameter suggested, if any
    takes: str  # what the message lists


BOX = Box((0, 0, 0), (2, 4, 4))

CASES = [
    Case("read", lambda v, kw: v.read(**kw), "bbox", "box", "box"),
    Case("write", lambda v, kw: v.write(0, BOX, **kw), "worker", "workers", "value, box, workers"),
    Case("missing_chunks", lambda v, kw: v.missing_chunks(**kw), "bounding_box", "box", "box"),
    Case("at_scale", lambda v, kw: v.at_scale(0, **kw), "mip", "k", "k"),
    Case("with_bounds", lambda v, kw: v.with_bounds("clip", **kw), "bound", "bounds", "bounds"),
    Case("to_dask", lambda v, kw: v.to_dask(**kw), "chunk", "chunks", "chunks"),
    Case("to_xarray", lambda v, kw: v.to_xarray(**kw), "chunk_size", "chunks", "chunks, name"),
    # those with **options, passed on: checked against the function they go to
    Case("preview", lambda v, kw: v.preview(**kw), "label", "labels",
         "z, ax, labels, channel, alpha, max_px"),
    Case("view", lambda v, kw: v.view(**kw), "name", "names",
         "names, open_browser, port, segments"),
]


def _public_methods_taking_keywords() -> set[str]:
    """Every public method of Volume that takes a keyword argument (besides self)."""
    out = set()
    for name, obj in vars(Volume).items():
        if name.startswith("_") or not inspect.isfunction(obj):
            continue
        if any(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.VAR_KEYWORD)
               for p in inspect.signature(obj).parameters.values() if p.name != "self"):
            out.add(name)
    return out


def test_every_public_method_taking_keywords_has_a_case() -> None:
    assert _public_methods_taking_keywords() == {c.name for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_misspelt_keyword_is_named_with_the_method(vol: Volume, case: Case) -> None:
    """Before: Python's bare TypeError, or (view) ``voxgate.view()`` named instead."""
    before = vol.read()
    with pytest.raises(UnknownKeywordError) as info:
        case.call(vol, {case.wrong: 1})
    err = info.value
    assert isinstance(err, InvalidRequestError) and isinstance(err, TypeError)
    hint = f" (did you mean {case.meant}=?)" if case.meant else ""
    assert str(err) == (f"Volume.{case.name}() got the unknown keyword {case.wrong!r}{hint}; "
                        f"it takes {case.takes}")
    np.testing.assert_array_equal(vol.read(), before)  # refused before anything was written


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_any_unknown_keyword_is_refused(vol: Volume, case: Case) -> None:
    with pytest.raises(UnknownKeywordError) as info:
        case.call(vol, {"frobnicate": 1, "zzz": 2})
    assert str(info.value) == (f"Volume.{case.name}() got the unknown keywords 'frobnicate', "
                               f"'zzz'; it takes {case.takes}")


@pytest.mark.parametrize("wrong", ["mip", "scale", "level"])
def test_a_scale_under_another_library_s_name_suggests_k_in_at_scale(
        vol: Volume, wrong: str) -> None:
    """Before: ``vol.at_scale(mip=1)`` (CloudVolume's name) was refused suggesting nothing."""
    with pytest.raises(UnknownKeywordError) as info:
        vol.at_scale(**{wrong: 1})
    assert str(info.value) == (f"Volume.at_scale() got the unknown keyword {wrong!r} "
                               "(did you mean k=?); it takes k")


@pytest.mark.parametrize("wrong", ["mip", "scale", "level"])
def test_a_scale_is_not_suggested_where_the_method_takes_none(vol: Volume, wrong: str) -> None:
    """(guard) ``read`` takes no scale: only names the method takes are suggested."""
    with pytest.raises(UnknownKeywordError) as info:
        vol.read(**{wrong: 1})
    assert str(info.value) == f"Volume.read() got the unknown keyword {wrong!r}; it takes box"


def test_a_view_refuses_as_the_volume_does(vol: Volume) -> None:
    """A view made by indexing is a Volume: ``vol[0:2].read(bbox=...)`` is named alike."""
    with pytest.raises(UnknownKeywordError, match=r"^Volume\.read\(\) got the unknown keyword "
                       r"'bbox' \(did you mean box=\?\); it takes box$"):
        vol[0:2].read(bbox=BOX)


def test_a_misspelt_keyword_is_still_caught_as_a_type_error(vol: Volume) -> None:
    try:
        vol.to_dask(chunk=4)
    except TypeError as exc:
        assert "chunks=" in str(exc)
    else:
        raise AssertionError("no error")


def test_correct_calls_and_signatures_are_unchanged(vol: Volume) -> None:
    """The check is invisible to a correct call, to inspect.signature and to help()."""
    for name in _public_methods_taking_keywords():
        method = vars(Volume)[name]
        inner = inspect.unwrap(method)
        assert method.__name__ == name and method.__doc__ == inner.__doc__
        assert inspect.signature(method) == inspect.signature(inner)
    assert "box" in pydoc.render_doc(Volume.read)
    expected = vol.read()
    np.testing.assert_array_equal(vol.read(box=BOX), expected[:2, :4, :4])
    np.testing.assert_array_equal(vol.read(BOX), expected[:2, :4, :4])
    np.testing.assert_array_equal(vol[0:2, 0:4, 0:4].read(), expected[:2, :4, :4])
    np.testing.assert_array_equal(np.asarray(vol), expected)
    vol.write(value=7, box=BOX, workers=1)
    assert (vol.read(BOX) == 7).all()
    vol[0:2, 0:4, 0:4] = 9
    assert (vol.read(BOX) == 9).all()
    assert vol.missing_chunks(box=BOX) == []
    assert vol.at_scale(k=0).shape == vol.shape
    assert vol.with_bounds(bounds="fill").bounds_mode == "fill"
    dask_arr = vol.to_dask(chunks=(4, 8, 8))
    assert dask_arr.chunksize == (4, 8, 8)
    np.testing.assert_array_equal(dask_arr.compute(), vol.read())
    # a keyword given twice is still Python's own error
    with pytest.raises(TypeError, match="multiple values"):
        vol.read(BOX, box=BOX)
