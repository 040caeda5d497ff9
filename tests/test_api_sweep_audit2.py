"""Bad input at public entry points tests/test_api_sweep.py does not reach: skeleton and mesh
layers (write/read_skeletons, write/read_meshes, Mesh.concatenate), annotation relationships
(read_related), proofreading's workers=, KNOSSOS / WEBKNOSSOS create options and
voxgate.synthetic.  Each case must give a voxgate error of the right class (never a bare
ValueError / TypeError / ZeroDivisionError from deep inside) and change nothing on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import voxgate
from voxgate import synthetic
from voxgate.errors import InvalidRequestError, RemoteNotFoundError, VoxgateError
from voxgate.formats.annotation import read_annotations, read_related, write_annotations
from voxgate.formats.mesh import Mesh, read_meshes, write_meshes
from voxgate.formats.skeleton import Skeleton, read_skeletons, write_skeletons

NAN = float("nan")
SHAPE = (8, 16, 16)


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _raises(call: Callable[[], Any], exc: type[VoxgateError], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()


@pytest.fixture
def layer(tmp_path: Path) -> str:
    """A precomputed segmentation layer at tmp_path/layer holding one skeleton and one mesh."""
    url = f"precomputed://file://{tmp_path}/layer"
    seg = voxgate.create(url, shape=SHAPE, chunks=(4, 8, 8), dtype="uint64",
                         voxel_size=(1, 1, 1), kind="segmentation")
    seg[1:6, 2:10, 2:10] = 5
    write_skeletons(url, {5: Skeleton(np.array([[0, 0, 0], [1, 1, 1]], np.float32),
                                      np.array([[0, 1]], np.uint32))})
    write_meshes(url, {5: Mesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32),
                               np.array([[0, 1, 2]], np.uint32))})
    return url


# -- mesh and skeleton directories stay inside their layer --------------------------------------

ESCAPES = ["..", "../other", "skel/../../x", ".", "./", "a/..", "a\\b", "a//b"]


@pytest.mark.parametrize("name", ESCAPES)
def test_skel_dir_outside_the_layer_is_refused(layer: str, tmp_path: Path, name: str) -> None:
    """Before: skel_dir='..' wrote the skeleton files and a skeleton info into the folder
    above the layer and set the layer info's "skeletons" to '..' (read back from there)."""
    before = _files(tmp_path)
    skel = Skeleton(np.array([[0, 0, 0], [2, 2, 2]], np.float32), np.array([[0, 1]], np.uint32))
    _raises(lambda: write_skeletons(layer, {7: skel}, skel_dir=name), InvalidRequestError,
            "must be a directory name inside the layer")
    _raises(lambda: read_skeletons(layer, [5], skel_dir=name), InvalidRequestError,
            "must be a directory name inside the layer")
    assert _files(tmp_path) == before
    assert list(read_skeletons(layer)) == [5]


@pytest.mark.parametrize("name", ESCAPES)
def test_mesh_dir_outside_the_layer_is_refused(layer: str, tmp_path: Path, name: str) -> None:
    before = _files(tmp_path)
    mesh = Mesh(np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0]], np.float32),
                np.array([[0, 1, 2]], np.uint32))
    _raises(lambda: write_meshes(layer, {7: mesh}, mesh_dir=name), InvalidRequestError,
            "must be a directory name inside the layer")
    _raises(lambda: read_meshes(layer, [5], mesh_dir=name), InvalidRequestError,
            "must be a directory name inside the layer")
    assert _files(tmp_path) == before


def test_nested_mesh_dir_still_works(layer: str) -> None:
    mesh = Mesh(np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0]], np.float32),
                np.array([[0, 1, 2]], np.uint32))
    write_meshes(layer, {7: mesh}, mesh_dir="meshes/v2/")
    assert list(read_meshes(layer, [7], mesh_dir="meshes/v2")) == [7]


def test_concatenate_of_a_non_iterable() -> None:
    """Before: Mesh.concatenate(None) raised a bare TypeError ('NoneType' object is not
    iterable)."""
    for bad in (None, 5):
        _raises(lambda: Mesh.concatenate(bad), InvalidRequestError,  # noqa: B023
                "concatenate takes an iterable of Mesh objects")


# -- annotation relationships --------------------------------------------------------------------

@pytest.fixture
def annotations(tmp_path: Path) -> str:
    url = f"precomputed://file://{tmp_path}/ann"
    table = pd.DataFrame({"z": [1.0, 2.0], "y": [2.0, 3.0], "x": [3.0, 4.0], "pre": [5, 7]})
    write_annotations(url, table, voxel_size=(1, 1, 1), relationships=["pre"])
    return url


RELATED_CASES = [
    ("a", "must be an integer segment id, got 'a'"),
    (NAN, "got nan"),
    (None, "got None"),
    ([5], r"got \[5\]"),
    (1.5, "got 1.5"),
    (True, "got True"),
    (-1, "-1 is not a uint64 segment id"),
    (2**64, "is not a uint64 segment id"),
]


@pytest.mark.parametrize(("segment", "match"), RELATED_CASES,
                         ids=[repr(c[0]) for c in RELATED_CASES])
def test_read_related_segment(annotations: str, segment: Any, match: str) -> None:
    """Before: 'a', nan, None and [5] raised int()'s bare ValueError / TypeError; -1, 1.5, True
    and 2**64 answered an empty table (1.5 and True as segments 1)."""
    _raises(lambda: read_related(annotations, "pre", segment), InvalidRequestError, match)


def test_read_related_relationship_name(annotations: str) -> None:
    _raises(lambda: read_related(annotations, ["pre"], 5), InvalidRequestError,
            r"relationship must be a relationship's name \(a str\), got \['pre'\]")
    assert read_related(annotations, "pre", np.uint64(5))["id"].tolist() == [1]


def test_annotations_at_a_file(annotations: str, tmp_path: Path) -> None:
    """Before: a layer URL naming a file raised a bare VoxgateError ('cannot read
    .../info/info.gz: Not a directory') instead of saying no layer is there."""
    for call in (lambda: read_annotations(f"{tmp_path}/ann/info"),
                 lambda: read_related(f"{tmp_path}/ann/info", "pre", 5)):
        _raises(call, RemoteNotFoundError, "no annotation layer at")


# -- proofreading: workers= is checked before the edit is logged ---------------------------------

@pytest.fixture
def seg(tmp_path: Path) -> voxgate.Volume:
    vol = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=SHAPE, chunks=(4, 8, 8),
                         dtype="uint64", voxel_size=(1, 1, 1), kind="segmentation")
    lab = np.zeros(SHAPE, np.uint64)
    lab[1:6, 2:10, 2:10] = 5
    lab[2:7, 11:15, 3:14] = 7
    vol[:] = lab
    return vol


EDITS: list[tuple[str, Callable[..., Any]]] = [
    ("relabel", lambda s, h, w: voxgate.relabel(s, {5: 9}, workers=w, history_dir=h)),
    ("merge", lambda s, h, w: voxgate.merge(s, [5, 7], workers=w, history_dir=h)),
    ("split", lambda s, h, w: voxgate.split(s, 5, seeds={8: [(1, 2, 2)], 9: [(5, 9, 9)]},
                                            workers=w, history_dir=h)),
    ("undo", lambda s, h, w: voxgate.undo(s, 1, workers=w, history_dir=h)),
]
BAD_WORKERS = [0, -1, 1.5, True, "2", NAN]


@pytest.mark.parametrize("workers", BAD_WORKERS, ids=[repr(w) for w in BAD_WORKERS])
@pytest.mark.parametrize("edit", [e[1] for e in EDITS], ids=[e[0] for e in EDITS])
def test_proofreading_workers(seg: voxgate.Volume, tmp_path: Path, edit: Callable[..., Any],
                              workers: Any) -> None:
    """Before: workers=-1 / '2' raised ThreadPoolExecutor's bare ValueError / TypeError after
    the edit was logged as 'started' in the history; 0, 1.5 and True ran the edit."""
    hist = tmp_path / "history"
    voxgate.relabel(seg, {7: 11}, history_dir=hist)  # (something for undo to undo)
    before = seg.read()
    log = voxgate.history(seg, history_dir=hist)
    _raises(lambda: edit(seg, hist, workers), InvalidRequestError,
            f"workers must be an integer >= 1, got {workers!r}")
    np.testing.assert_array_equal(voxgate.open(seg.url).read(), before)
    pd.testing.assert_frame_equal(voxgate.history(seg, history_dir=hist), log)


# -- KNOSSOS and WEBKNOSSOS create options -------------------------------------------------------

CREATE = {"shape": (4, 8, 8), "chunks": (4, 8, 8), "dtype": "uint8", "voxel_size": (1, 1, 1)}


@pytest.mark.parametrize("layer_name", ["..", ".", 5, "a\\b"])
def test_webknossos_layer_name(tmp_path: Path, layer_name: Any) -> None:
    """Before: layer='..' created the layer's arrays in the folder above the dataset (and
    listed a layer '..'); layer=5 raised a bare TypeError."""
    (tmp_path / "ds").mkdir()
    _raises(lambda: voxgate.create(f"webknossos://{tmp_path}/ds", layer=layer_name, **CREATE),
            InvalidRequestError, "a layer name must be a plain name")
    assert _files(tmp_path) == {}


def test_webknossos_layer_dotdot_in_the_url(tmp_path: Path) -> None:
    voxgate.create(f"webknossos://{tmp_path}/ds", layer="color", **CREATE)
    before = _files(tmp_path)
    _raises(lambda: voxgate.create(f"webknossos://{tmp_path}/ds/..", **CREATE),
            InvalidRequestError, "a layer name must be a plain name, got '..'")
    assert _files(tmp_path) == before


def test_knossos_experiment_not_a_string(tmp_path: Path) -> None:
    """Before: experiment=5 raised re's bare TypeError."""
    _raises(lambda: voxgate.create(f"knossos://{tmp_path}/kn", experiment=5, **CREATE),
            InvalidRequestError, "experiment name 5 must be letters")
    assert _files(tmp_path) == {}


# -- voxgate.synthetic -----------------------------------------------------------------------------

SYNTHETIC_CASES: list[tuple[str, Callable[[], Any], str]] = [
    ("labels shape negative", lambda: synthetic.synthetic_labels((-1, 4, 4)),
     r"shape must be 3 integers >= 1 in \(z, y, x\) order, got \(-1, 4, 4\)"),
    ("labels shape 2 axes", lambda: synthetic.synthetic_labels((4, 4)), r"got \(4, 4\)"),
    ("labels shape str", lambda: synthetic.synthetic_labels("abc"), "got 'abc'"),
    ("labels shape float", lambda: synthetic.synthetic_labels((4.5, 4, 4)), "got"),
    ("labels cell 0", lambda: synthetic.synthetic_labels((4, 4, 4), cell=(0, 4, 4)),
     r"cell must be 3 integers >= 1"),
    ("labels seed str", lambda: synthetic.synthetic_labels((4, 4, 4), seed="a"),
     "seed must be an integer >= 0, got 'a'"),
    ("labels seed negative", lambda: synthetic.synthetic_labels((4, 4, 4), seed=-1),
     "seed must be an integer >= 0, got -1"),
    ("em shape 0", lambda: synthetic.synthetic_em((0, 4, 4)), "shape must be 3 integers >= 1"),
    ("neurites radius nan", lambda: synthetic.synthetic_neurites((4, 16, 16), radius=NAN),
     "radius must be a finite number > 0, got nan"),
    ("neurites lanes 0", lambda: synthetic.synthetic_neurites((4, 16, 16), lanes=(0, 0)),
     r"lanes must be 2 integers >= 1, got \(0, 0\)"),
    ("neurites lanes int", lambda: synthetic.synthetic_neurites((4, 16, 16), lanes=2),
     "lanes must be 2 integers"),
    ("synapses density nan", lambda: synthetic.synapses((8, 32, 32), density=NAN),
     "give densities >= 0"),
    ("synapses voxel_size 0", lambda: synthetic.synapses((8, 32, 32), voxel_size=(0, 8, 8)),
     "voxel_size must be a finite number > 0"),
]


@pytest.mark.parametrize(("call", "match"), [c[1:] for c in SYNTHETIC_CASES],
                         ids=[c[0] for c in SYNTHETIC_CASES])
def test_synthetic(call: Callable[[], Any], match: str) -> None:
    """Before: numpy's bare ValueError ('negative dimensions'), ZeroDivisionError, TypeError
    from zip / SeedSequence, or 'cannot convert float NaN to integer'."""
    _raises(call, InvalidRequestError, match)


def test_synthetic_good_input_unchanged() -> None:
    labels = synthetic.synthetic_labels([6, 10, 12], cell=np.array([3, 5, 6]), seed=np.int64(2))
    assert labels.shape == (6, 10, 12) and labels.dtype == np.uint64 and labels.min() >= 1
    assert synthetic.synthetic_neurites((16, 32, 48), lanes=[1, 1], radius=2).max() == 1


# -- flags are True or False -----------------------------------------------------------------------

def test_flags_that_are_not_bools_are_refused(layer: str, seg: voxgate.Volume,
                                              tmp_path: Path) -> None:
    """``strict="no"`` was strict and ``progress="x"`` drew a bar (any truthy value); 16.0
    passed as 16 quantization bits.  Each is refused before anything is read or written."""
    files = _files(tmp_path)
    _raises(lambda: read_skeletons(layer, [5], strict="no"), InvalidRequestError,
            "strict must be True or False, got 'no'")
    _raises(lambda: read_meshes(layer, [5], strict=1), InvalidRequestError,
            "strict must be True or False, got 1")
    mesh = {6: Mesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32),
                    np.array([[0, 1, 2]], np.uint32))}
    _raises(lambda: write_meshes(layer, mesh, progress="x"), InvalidRequestError,
            "progress must be True or False, got 'x'")
    _raises(lambda: write_meshes(layer, mesh, vertex_quantization_bits=16.0),
            InvalidRequestError, "vertex_quantization_bits must be 10 or 16, got 16.0")
    table = pd.DataFrame({"z": [1.0], "y": [2.0], "x": [3.0]})
    _raises(lambda: write_annotations(f"precomputed://file://{tmp_path}/ann2", table,
                                      voxel_size=(1, 1, 1), progress="yes"),
            InvalidRequestError, "progress must be True or False, got 'yes'")
    before = seg.read()
    _raises(lambda: voxgate.relabel(seg, {5: 9}, progress=0, history_dir=tmp_path / "h"),
            InvalidRequestError, "progress must be True or False, got 0")
    np.testing.assert_array_equal(voxgate.open(seg.url).read(), before)
    assert _files(tmp_path) == files  # (nothing written: no mesh, no layer, no history)
    assert read_skeletons(layer, [5], strict=np.bool_(True))[5].vertices.shape == (2, 3)


def test_split_box_outside_the_volume_or_empty_is_refused(seg: voxgate.Volume,
                                                         tmp_path: Path) -> None:
    """A box reaching past the volume was clipped without a word, and an empty box inside
    the volume was said to lie outside it."""
    before = seg.read()
    hist = tmp_path / "h"
    _raises(lambda: voxgate.split(seg, 5, box=voxgate.Box((0, 0, 0), (8, 16, 40)),
                                  history_dir=hist), InvalidRequestError, "reaches outside")
    _raises(lambda: voxgate.split(seg, 5, box=voxgate.Box((2, 2, 2), (2, 9, 9)),
                                  history_dir=hist), InvalidRequestError, "is empty")
    np.testing.assert_array_equal(voxgate.open(seg.url).read(), before)


def test_an_array_given_for_a_volume_url_is_named_not_printed(tmp_path: Path) -> None:
    """voxgate.open and voxgate.copy given a numpy array printed the whole array's repr in
    their error; they name its type and say what to do."""
    big = np.zeros((40, 40, 40), np.uint8)
    for call in (lambda: voxgate.open(big),
                 lambda: voxgate.copy(big, f"zarr://{tmp_path}/x.zarr", progress=False)):
        with pytest.raises(InvalidRequestError, match="got ndarray") as info:
            call()
        assert len(str(info.value)) < 200 and "[[" not in str(info.value)
    assert not (tmp_path / "x.zarr").exists()
