"""Keyword mistakes in every public function, and an empty folder opened (audit H16).

Before:

- ``voxgate.open``, ``create``, ``copy``, ``connected_components``, ``map_blocks`` and
  ``predict`` named a misspelt keyword and the parameter meant (an ``InvalidRequestError``, not
  a ``TypeError``), but every other public function (``downsample(vol, mips=2)``,
  ``mesh(vol, workers=4)``, ``skeletonize(vol, progres=True)``, ``merge(seg, ids, usr=...)``,
  ``view``, ``read_annotations``, ``write_meshes``, ...) answered with Python's bare
  ``TypeError: f() got an unexpected keyword argument 'x'``, suggesting nothing; the
  proofreading edits opened the volume and took its edit lock first.
- ``voxgate.open(empty_folder)`` was ``UnknownSchemeError`` ("cannot tell the format"), while
  an ``s3://`` prefix holding nothing was ``RemoteNotFoundError``; neither said what voxgate
  would have recognised there.

Now every public function refuses an unknown keyword with ``UnknownKeywordError`` (an
``InvalidRequestError`` and a ``TypeError``) naming the function, the keyword, the parameter it
likely meant and all it takes, before it does anything; an empty folder is
``RemoteNotFoundError`` like an empty prefix, and both list the markers voxgate looks for.
"""

from __future__ import annotations

import hashlib
import inspect
import pydoc
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import voxgate
from voxgate.cli import main
from voxgate.errors import (
    InvalidRequestError,
    RemoteNotFoundError,
    UnknownKeywordError,
    UnknownSchemeError,
)

from .test_cli_audit import _one_error

#: the public functions that take ``**options`` and pass them on to a store (they check a
#: keyword close to one of their own parameters, and leave the rest to the store)
WITH_STORE_OPTIONS = {"open", "create", "copy", "connected_components", "map_blocks", "predict",
                      "write_meshes"}


@dataclass
class World:
    """Real inputs on disk: a segmentation (zarr), an image, a precomputed segmentation layer,
    an annotation layer and meshes of the segmentation."""

    tmp: Path
    seg: voxgate.Volume
    img: voxgate.Volume
    layer: str
    annotations: str
    meshes: Any


@pytest.fixture
def world(tmp_path: Path) -> World:
    labels = np.zeros((16, 32, 32), np.uint32)
    labels[2:8, 4:20, 4:20] = 1
    labels[8:14, 4:20, 4:20] = 2
    seg = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=labels.shape, dtype="uint32",
                         chunks=(8, 16, 16), voxel_size=(40, 8, 8), kind="segmentation")
    seg[:] = labels
    img = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=labels.shape, dtype="uint8",
                         chunks=(8, 16, 16), voxel_size=(40, 8, 8))
    img[:] = (labels * 100).astype(np.uint8)
    layer = voxgate.create(f"precomputed://{tmp_path}/layer", shape=labels.shape,
                           dtype="uint32", chunks=(8, 16, 16), voxel_size=(40, 8, 8),
                           kind="segmentation")
    layer[:] = labels
    annotations = str(tmp_path / "ann")
    voxgate.write_annotations(annotations, pd.DataFrame({"z": [3.0], "y": [5.0], "x": [6.0]}),
                              voxel_size=(40, 8, 8))
    meshes = voxgate.mesh(labels, voxel_size=(40, 8, 8))
    return World(tmp_path, voxgate.open(seg.url, mode="r+"), voxgate.open(img.url, mode="r+"),
                 layer.url, annotations, meshes)


@dataclass(frozen=True)
class Case:
    name: str  # voxgate.<name>
    call: Callable[[World, dict[str, Any]], Any]  # calls it with correct arguments + the keyword
    wrong: str
    meant: str


CASES = [
    Case("downsample", lambda w, kw: voxgate.downsample(w.img, **kw), "mips", "num_scales"),
    Case("mesh", lambda w, kw: voxgate.mesh(w.seg, **kw), "workers", "client"),
    Case("skeletonize", lambda w, kw: voxgate.skeletonize(w.seg, **kw), "progres", "progress"),
    Case("label_stats", lambda w, kw: voxgate.label_stats(w.seg, **kw), "chunk", "block"),
    Case("detect_synapses", lambda w, kw: voxgate.detect_synapses(w.img, **kw), "threshhold",
         "threshold"),
    Case("merge", lambda w, kw: voxgate.merge(w.seg, [1, 2], **kw), "usr", "user"),
    Case("split", lambda w, kw: voxgate.split(w.seg, 1, **kw), "seed", "seeds"),
    Case("relabel", lambda w, kw: voxgate.relabel(w.seg, {1: 5}, **kw), "worker", "workers"),
    Case("undo", lambda w, kw: voxgate.undo(w.seg, **kw), "progres", "progress"),
    Case("history", lambda w, kw: voxgate.history(w.seg, **kw), "history_directory",
         "history_dir"),
    Case("view", lambda w, kw: voxgate.view(w.img, **kw), "name", "names"),
    Case("read_annotations", lambda w, kw: voxgate.read_annotations(w.annotations, **kw), "bbox",
         "box"),
    Case("write_annotations",
         lambda w, kw: voxgate.write_annotations(
             w.tmp / "ann2", pd.DataFrame({"z": [1.0], "y": [1.0], "x": [1.0]}), **kw),
         "voxelsize", "voxel_size"),
    Case("write_meshes", lambda w, kw: voxgate.write_meshes(w.layer, w.meshes, **kw), "formats",
         "format"),
    Case("has_capability", lambda w, kw: voxgate.has_capability(w.seg.remote, **kw),
         "capabilty", "capability"),
    # those with **options: the same error class, now also a TypeError
    Case("open", lambda w, kw: voxgate.open(w.img.url, **kw), "mip", "scale"),
    Case("create",
         lambda w, kw: voxgate.create(f"zarr://{w.tmp}/new.zarr", shape=(8, 8, 8), dtype="uint8",
                                      voxel_size=(1, 1, 1), **kw), "chunk", "chunks"),
    Case("copy", lambda w, kw: voxgate.copy(w.img, f"zarr://{w.tmp}/c.zarr", **kw), "worker",
         "workers"),
    Case("connected_components",
         lambda w, kw: voxgate.connected_components(w.seg, f"zarr://{w.tmp}/cc.zarr", **kw),
         "connectivty", "connectivity"),
    Case("map_blocks",
         lambda w, kw: voxgate.map_blocks(lambda a: a, w.img, f"zarr://{w.tmp}/m.zarr", **kw),
         "halos", "halo"),
    Case("predict",
         lambda w, kw: voxgate.predict("membrane-unet", w.img, f"zarr://{w.tmp}/p.zarr", **kw),
         "blocks", "block"),
]


def _public_functions() -> dict[str, Callable[..., Any]]:
    """Every function in voxgate.__all__ that takes a keyword argument."""
    out = {}
    for name in voxgate.__all__:
        obj = getattr(voxgate, name)
        if inspect.isfunction(obj) and any(
                p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.VAR_KEYWORD)
                for p in inspect.signature(obj).parameters.values()):
            out[name] = obj
    return out


def _params(func: Callable[..., Any]) -> list[str]:
    return [p.name for p in inspect.signature(func).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and not p.name.startswith("_")]


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_public_function_taking_keywords_has_a_case() -> None:
    assert set(_public_functions()) == {c.name for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_misspelt_keyword_is_named_with_the_parameter_meant(world: World, case: Case) -> None:
    """Before: a bare TypeError ("got an unexpected keyword argument") for the functions
    without **options, an InvalidRequestError that was no TypeError for those with them."""
    before = _tree(world.tmp)
    with pytest.raises(UnknownKeywordError) as info:
        case.call(world, {case.wrong: 1})
    err = info.value
    assert isinstance(err, InvalidRequestError) and isinstance(err, TypeError)
    text = str(err)
    takes = ", ".join(_params(getattr(voxgate, case.name)))
    assert text.startswith(f"voxgate.{case.name}() got the unknown keyword {case.wrong!r} "
                           f"(did you mean {case.meant}=?); it takes {takes}"), text
    if case.name not in WITH_STORE_OPTIONS:
        assert text.endswith(f"it takes {takes}"), text
    # refused before anything ran: nothing written, no edit lock or history, no output
    assert _tree(world.tmp) == before


@pytest.mark.parametrize("name", sorted(set(_public_functions()) - WITH_STORE_OPTIONS))
def test_any_unknown_keyword_is_refused_before_the_arguments_are_looked_at(name: str) -> None:
    """No close parameter: the function and all it takes are still named (before: Python's
    TypeError, or for proofreading a complaint about the arguments)."""
    func = getattr(voxgate, name)
    with pytest.raises(UnknownKeywordError) as info:
        func(frobnicate=1)
    assert str(info.value) == (f"voxgate.{name}() got the unknown keyword 'frobnicate'; it "
                               f"takes {', '.join(_params(func))}")


def test_several_unknown_keywords_are_all_named(world: World) -> None:
    with pytest.raises(UnknownKeywordError, match=r"voxgate.label_stats\(\) got the unknown "
                       r"keywords 'chunk' \(did you mean block=\?\), 'progres' \(did you mean "
                       r"progress=\?\), 'zzz'; it takes source, prefer, block"):
        voxgate.label_stats(world.seg, chunk=(8, 8, 8), progres=False, zzz=1)


def test_a_misspelt_keyword_is_still_caught_as_a_type_error(world: World) -> None:
    """Code written against Python's refusal (``except TypeError``) keeps working."""
    try:
        voxgate.downsample(world.img, mips=2)
    except TypeError as exc:
        assert "num_scales=" in str(exc)
    else:
        raise AssertionError("no error")


def test_correct_calls_and_signatures_are_unchanged(world: World) -> None:
    """The check is invisible to a correct call, to inspect.signature and to help()."""
    for name, func in _public_functions().items():
        inner = inspect.unwrap(func)
        assert func.__name__ == name and func.__doc__ == inner.__doc__
        assert inspect.signature(func) == inspect.signature(inner)
    assert "num_scales" in pydoc.render_doc(voxgate.downsample)
    assert "history_dir" in pydoc.render_doc(voxgate.undo)
    stats = voxgate.label_stats(world.seg, block=(8, 16, 16), progress=False)
    assert sorted(stats["id"]) == [1, 2]
    result = voxgate.merge(world.seg, [1, 2], user="me")
    assert result.mapping == {2: 1} and set(np.unique(world.seg.read())) == {0, 1}
    assert len(voxgate.history(world.seg, history_dir=None)) == 1
    voxgate.undo(world.seg, user="me", progress=False)
    assert set(np.unique(world.seg.read())) == {0, 1, 2}
    assert voxgate.has_capability(remote=world.seg.remote, capability="write")
    assert len(voxgate.downsample(world.img, num_scales=2).scales) == 2


# -- an empty folder ------------------------------------------------------------------------------

def _assert_lists_the_markers(text: str) -> None:
    for marker in ("zarr:// (zarr.json, .zarray, .zgroup)", "n5:// (attributes.json)",
                   "precomputed:// (info)", "knossos://", "webknossos://", "hdf5://", "tiff://"):
        assert marker in text, text


@pytest.mark.parametrize("form", ["bare", "file://"])
def test_an_empty_folder_is_not_found_and_says_so(tmp_path: Path, form: str) -> None:
    """Before: UnknownSchemeError ("cannot tell the format"), as if something were there."""
    (tmp_path / "empty").mkdir()
    url = str(tmp_path / "empty") if form == "bare" else f"file://{tmp_path}/empty"
    with pytest.raises(RemoteNotFoundError) as info:
        voxgate.open(url)
    assert not isinstance(info.value, UnknownSchemeError)
    assert isinstance(info.value, FileNotFoundError)
    text = str(info.value)
    assert text.startswith(f"nothing is stored at {url!r}: it is an empty directory"), text
    _assert_lists_the_markers(text)


def test_an_empty_folder_and_an_empty_prefix_answer_alike(tmp_path: Path,
                                                          s3_bucket: str) -> None:
    (tmp_path / "empty").mkdir()
    answers = []
    for url in (str(tmp_path / "empty"), f"s3://{s3_bucket}/nothing/here"):
        with pytest.raises(RemoteNotFoundError) as info:
            voxgate.open(url)
        answers.append(str(info.value))
        assert str(info.value).startswith(f"nothing is stored at {url!r}: ")
        _assert_lists_the_markers(str(info.value))
    # the same list of what voxgate recognises, after the reason nothing is there
    assert answers[0].split("; ")[-1] == answers[1].split("; ")[-1]


def test_info_on_an_empty_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _one_error(CliRunner().invoke(main, ["info", str(tmp_path / "empty")]), 1,
               "^Error: RemoteNotFoundError: nothing is stored at .*: it is an empty directory")
    proc = subprocess.run([sys.executable, "-m", "voxgate", "info", str(tmp_path / "empty")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "RemoteNotFoundError: nothing is stored at" in lines[0], lines
