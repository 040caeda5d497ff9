"""connected_components on float images with NaN, -0.0 and inf (whole, block-wise, store
paths against a scipy.ndimage reference), and boolean flags that take numpy bools and refuse
1 / "yes" / None the same way everywhere (errors.check_flag)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage

import voxgate
from voxgate.errors import InvalidRequestError, VoxgateError
from voxgate.formats.annotation import write_annotations
from voxgate.formats.mesh import Mesh, read_meshes, write_meshes
from voxgate.services.connected_components import connected_components_kernel
from voxgate.services.mesh import mesh_kernel

SHAPE = (13, 17, 19)
VALUES = np.array([0.0, -0.0, 1.5, 2.0, np.nan, np.inf, -np.inf, 1e-30])


def reference_components(img: np.ndarray, connectivity: int) -> np.ndarray:
    """The rule stated in connected_components' docstring, by scipy.ndimage one value at a
    time: voxels holding the same value connect, except background (0, -0.0 and NaN);
    components numbered by their first voxel in a C-order scan."""
    structure = scipy.ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    parts = np.zeros(img.shape, dtype=np.int64)
    n = 0
    for v in np.unique(img):  # NaNs come out one by one; they are skipped anyway
        if v == 0 or np.isnan(v):
            continue
        lab, k = scipy.ndimage.label(img == v, structure=structure)
        parts[lab > 0] = lab[lab > 0] + n
        n += k
    out = np.zeros(img.shape, dtype=np.uint64)
    flat = parts.ravel()
    seen: dict[int, int] = {}
    for p in flat.tolist():  # canonical numbering, one voxel at a time
        if p and p not in seen:
            seen[p] = len(seen) + 1
    for p, rank in seen.items():
        out[parts == p] = rank
    return out


def nan_image(seed: int, dtype: Any) -> np.ndarray:
    """Values drawn from VALUES, plus NaN slabs and a NaN ball wider than any block used."""
    rng = np.random.default_rng(seed)
    img = rng.choice(VALUES, size=SHAPE, p=[.25, .1, .15, .1, .15, .1, .05, .1]).astype(dtype)
    img[:, 6:10, :] = np.nan  # one NaN slab across every block border along z and x
    z, y, x = np.ogrid[:13, :17, :19]
    img[(z - 6) ** 2 + (y - 12) ** 2 + (x - 9) ** 2 <= 16] = np.nan
    img[2:5, 0:4, 13:19] = np.inf  # an inf region split by blocks
    img[9:12, 13:17, 0:5] = -0.0  # a -0.0 region next to values
    return img


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_is_background_whole_and_blockwise(connectivity: int, dtype: Any) -> None:
    img = nan_image(connectivity, dtype)
    before = img.copy()
    want = reference_components(img, connectivity)
    assert want.max() > 10
    whole = np.asarray(voxgate.connected_components(img, connectivity=connectivity))
    np.testing.assert_array_equal(whole, want)
    assert not whole[np.isnan(img)].any()
    np.testing.assert_array_equal(connected_components_kernel(img, connectivity), want)
    for block in [(4, 5, 6), (7, 3, 19), (1, 17, 2)]:  # blocks that cut the NaN slab / ball
        got = voxgate.connected_components(img, connectivity=connectivity, block=block,
                                           workers=3)
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"block {block}")
    np.testing.assert_array_equal(img, before)  # the caller's array is not changed (NaN too)


def test_nan_is_background_from_stores(tmp_path: Path) -> None:
    img = nan_image(7, np.float32)
    want = reference_components(img, 26)
    src = voxgate.create("mem://nan-audit-src", shape=SHAPE, chunks=(4, 8, 8),
                         dtype="float32", voxel_size=(1, 1, 1))
    src[:] = img
    np.testing.assert_array_equal(np.asarray(voxgate.connected_components(src)), want)
    got = voxgate.connected_components(src, block=(4, 8, 8))
    np.testing.assert_array_equal(np.asarray(got), want)
    # a store output: pass 3 labels every block again from the source (its other path)
    out = voxgate.connected_components(src, f"zarr://{tmp_path}/cc.zarr", block=(4, 8, 8))
    np.testing.assert_array_equal(np.asarray(out[:]), want)


def test_signed_zero_and_infinities() -> None:
    # -0.0 is background like 0.0; +inf joins +inf only; -0.0 beside 0.0 joins nothing
    line = np.array([np.nan, np.nan, 0.0, -0.0, np.inf, np.inf, -np.inf, np.nan, 2.0, 2.0,
                     -0.0, np.nan, np.nan, np.inf], dtype=np.float32)
    img = np.tile(line, (3, 5, 1))  # 3 x 5 x 14
    want_line = [0, 0, 0, 0, 1, 1, 2, 0, 3, 3, 0, 0, 0, 4]
    for block in [None, (1, 1, 1), (2, 3, 5), (3, 5, 4)]:
        got = np.asarray(voxgate.connected_components(img, block=block, connectivity=6))
        assert (got == np.asarray(want_line, dtype=np.uint64)).all(), block
    np.testing.assert_array_equal(
        np.asarray(voxgate.connected_components(img, block=(2, 2, 3))),
        reference_components(img, 26))


def test_all_nan_gives_no_components() -> None:
    img = np.full((5, 6, 7), np.nan, dtype=np.float32)
    for block in [None, (2, 3, 4)]:
        got = np.asarray(voxgate.connected_components(img, block=block))
        assert got.dtype == np.uint64 and not got.any()


# -- flags -----------------------------------------------------------------------------------

BAD = [1, 0, "yes", "no", None, np.int64(1), 1.0]


def _tetra() -> Mesh:
    v = np.array([[0, 0, 0], [10, 0, 0], [0, 20, 0], [0, 0, 30]], np.float32)
    return Mesh(v, np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.uint32))


def _layer(path: Path) -> str:
    return voxgate.create(f"precomputed://file://{path}", shape=(8, 8, 8), chunks=(8, 8, 8),
                          dtype="uint64", voxel_size=(4, 4, 4), kind="segmentation").url


def _labels() -> np.ndarray:
    lab = np.zeros((6, 7, 8), np.uint64)
    lab[1:5, 2:6, 1:4] = 3
    return lab


_NAMES = itertools.count()


def _image_volume() -> voxgate.Volume:
    vol = voxgate.create(f"mem://flag-audit-{next(_NAMES)}", shape=(6, 7, 8),
                         chunks=(3, 7, 8), dtype="uint8", voxel_size=(1, 1, 1))
    vol[:] = _labels().astype(np.uint8)
    return vol


def _points() -> pd.DataFrame:
    return pd.DataFrame({"z": [1, 2], "y": [2, 3], "x": [3, 4]})


#: (flag name, call(value) with that flag); each call completes when the flag is well given
CALLS: list[tuple[str, Callable[[Any, Path], Any]]] = [
    ("sharded", lambda v, t: write_meshes(_layer(t / "seg"), {1: _tetra()}, format="multires",
                                          sharded=v)),
    ("sharded", lambda v, t: write_annotations(t / "ann", _points(), voxel_size=(4, 4, 4),
                                               sharded=v)),
    ("verify", lambda v, t: voxgate.copy(_image_volume(),
                                         f"zarr://{t}/copy.zarr", verify=v, progress=False)),
    ("progress", lambda v, t: voxgate.copy(_image_volume(),
                                           f"zarr://{t}/copy.zarr", progress=v)),
    ("close", lambda v, t: voxgate.mesh(_labels(), voxel_size=(1, 1, 1), close=v)),
    ("strict", lambda v, t: voxgate.mesh(_labels(), voxel_size=(1, 1, 1), strict=v)),
    ("progress", lambda v, t: voxgate.mesh(_labels(), voxel_size=(1, 1, 1), progress=v)),
    # as_labels=False on an image is refused (rightly): False is tried on a segmentation
    ("as_labels", lambda v, t: voxgate.label_stats(
        _image_volume() if v is not np.False_ else _labels(), as_labels=v)),
    ("progress", lambda v, t: voxgate.label_stats(_labels(), progress=v)),
    ("progress", lambda v, t: voxgate.connected_components(_labels(), progress=v)),
    ("overwrite", lambda v, t: voxgate.connected_components(_labels(), f"zarr://{t}/cc.zarr",
                                                            overwrite=v)),
]


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[f"{n}-{i}" for i, (n, _) in
                                                         enumerate(CALLS)])
def test_flags_take_numpy_bools(name: str, call: Callable[[Any, Path], Any],
                                tmp_path: Path) -> None:
    call(np.True_, tmp_path)
    call(np.bool_(False), tmp_path / "again")


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[f"{n}-{i}" for i, (n, _) in
                                                         enumerate(CALLS)])
@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_flags_refuse_other_values(name: str, call: Callable[[Any, Path], Any], bad: Any,
                                   tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match=f"{name} must be True or False, got") as e:
        call(bad, tmp_path)
    assert isinstance(e.value, VoxgateError) and isinstance(e.value, ValueError)
    written = {"mesh", "ann", "copy.zarr", "cc.zarr"}  # refused before any is written
    assert not [p for p in tmp_path.rglob("*") if p.name in written]


def test_numpy_bool_flags_give_the_same_result(tmp_path: Path) -> None:
    url = _layer(tmp_path / "seg")
    write_meshes(url, {1: _tetra()}, format="multires", sharded=np.True_)
    write_meshes(url, {2: _tetra()}, format="multires", sharded=True)  # the same layout
    assert sorted(read_meshes(url)) == [1, 2]
    a = voxgate.mesh(_labels(), voxel_size=(1, 1, 1), close=np.True_)
    b = voxgate.mesh(_labels(), voxel_size=(1, 1, 1), close=True)
    assert a[3].num_faces == b[3].num_faces
    assert a.provenance.details["closed"] is True  # a plain bool (JSON-safe), not np.bool_


def test_synapse_flags() -> None:
    img = np.zeros((4, 4, 4), np.uint8)
    for name in ("sharded", "overwrite", "progress"):
        for bad in BAD:
            with pytest.raises(InvalidRequestError, match=f"{name} must be True or False"):
                voxgate.detect_synapses(img, **{name: bad})
    # numpy bools pass the flag checks: the next check (workers) is the one that refuses
    with pytest.raises(InvalidRequestError, match="workers must be"):
        voxgate.detect_synapses(img, sharded=np.True_, overwrite=np.False_,
                                progress=np.False_, workers=0)


def test_mesh_kernel_close_flags() -> None:
    lab = _labels()
    lab[0] = 3  # reaches the lower z side
    closed = mesh_kernel(lab, (1, 1, 1), (0, 0, 0), close=True)[3]
    assert mesh_kernel(lab, (1, 1, 1), (0, 0, 0), close=np.True_)[3].num_faces == \
        closed.num_faces
    six = mesh_kernel(lab, (1, 1, 1), (0, 0, 0), close=[np.True_] * 6)[3]
    assert six.num_faces == closed.num_faces
    lower_z = mesh_kernel(lab, (1, 1, 1), (0, 0, 0),
                          close=np.array([True, False, False, False, False, False]))[3]
    open_ = mesh_kernel(lab, (1, 1, 1), (0, 0, 0), close=False)[3]
    assert open_.num_faces < lower_z.num_faces
    for bad in [("no",) * 6, (1, 0, 0, 0, 0, 0), "abcdef", (True,) * 5, None, 1]:
        with pytest.raises(InvalidRequestError, match="close"):
            mesh_kernel(lab, (1, 1, 1), (0, 0, 0), close=bad)  # type: ignore[arg-type]

