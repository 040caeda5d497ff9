"""detect_synapses when one detection is huge: a model that answers ~1 on black (the built-in
``synapse-unet``'s first weights did) makes the empty space of a mostly-black volume one
detection.

The statistics pass held every foreground voxel of a block as int64 coordinates at once, and
placing a detection took ``np.argwhere`` over its whole bounding box: for a 1 GiB mostly-black
store ~1.07e9 voxels, a 24 GiB allocation.  The statistics now take a block's voxels 2**18 at
a time, and a detection whose window holds over 2**20 voxels is placed (its voxel nearest the
centroid) and given its segments block by block; and components over ``max_size`` voxels
(default 2**22) are dropped with a warning that counts them.

Measured here (a 256^3 uint8 zarr, 64^3 chunks, the model ``1 - x``, ``max_size=None``, two
workers): peak RSS above the baseline 1755 MiB before, 251 after (components in memory, the
default at this size); on the store path with a segmentation 1697 before, 287 after.  The
tables equal a brute-force numpy reference (tests/services/test_synapses_audit.py's) for the
small detections, and the huge one's position, size, score and segments are checked in numpy
too.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

import voxgate
import voxgate.services.synapses as synapses
from voxgate.errors import InvalidRequestError, VoxgateWarning

from ..peak_rss import peak_delta, prelude
from .test_synapses_audit import assert_table, blob_image, identity, reference, voronoi

SHAPE = (256, 256, 256)
VS = (40.0, 8.0, 8.0)
#: patches: a 16^3 cube of 255 (walls 3 voxels thick) with dark blobs of texture inside, at these
#: corners (across chunk borders of 64 and at the volume's faces)
PATCHES = [(20, 30, 40), (56, 120, 57), (200, 240, 240), (120, 0, 180)]
#: the old code peaked at 1755 / 1697 MiB above its baseline on the 256^3 runs, 251 / 287 now
BOUND_MIB = 400


def _inverse_model(path: Path) -> Path:
    """An ONNX model answering ``1 - x``: 1 on black, as synapse-unet's first weights did."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "z", "y", "x"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 5)
    one = numpy_helper.from_array(np.ones((), np.float32), "one")
    graph = helper.make_graph([helper.make_node("Sub", ["one", "x"], ["y"])], "inverse", [x],
                              [y], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _image() -> np.ndarray:
    img = np.zeros(SHAPE, np.uint8)
    rng = np.random.default_rng(7)
    for z, y, x in PATCHES:
        img[z:z + 16, y:y + 16, x:x + 16] = 255
        f = ndimage.gaussian_filter(rng.random((10, 10, 10)), 0.8)
        img[z + 3:z + 13, y + 3:y + 13, x + 3:x + 13] = np.where(
            f > np.quantile(f, 0.85), rng.integers(0, 120, (10, 10, 10)), 255)
    return img


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """The image in a zarr store (64^3 chunks, 40 x 8 x 8 nm) and the ONNX model."""
    root = tmp_path_factory.mktemp("huge")
    img = _image()
    vol = voxgate.create(f"zarr://{root}/em.zarr", shape=SHAPE, dtype="uint8",
                         chunks=(64, 64, 64), voxel_size=VS)
    vol[:] = img
    return root / "em.zarr", _inverse_model(root / "inverse.onnx"), img


def _small_reference(prob: np.ndarray, min_size: int) -> pd.DataFrame:
    """Brute force for the detections inside the patches, each patch on its own (walls of
    255 enclose them), numbered as one table in the C order of their first voxels."""
    parts = []
    for z, y, x in PATCHES:
        crop = prob[z:z + 16, y:y + 16, x:x + 16]
        part = reference(crop, threshold=0.5, min_size=min_size, voxel_size=VS, offset=(z, y, x))
        first = []
        for row in part.itertuples():
            lab, _ = ndimage.label(crop >= 128, structure=np.ones((3, 3, 3), bool))
            comp = lab == lab[row.z - z, row.y - y, row.x - x]
            first.append(np.ravel_multi_index(tuple(np.argwhere(comp)[0] + (z, y, x)), SHAPE))
        parts.append(part.assign(first=first))
    out = pd.concat(parts).sort_values("first", kind="stable").drop(columns="first")
    out["id"] = np.arange(1, len(out) + 1)
    return out.reset_index(drop=True)


def _huge_reference(prob: np.ndarray, small: pd.DataFrame) -> tuple[int, list[int], float]:
    """The black space's detection in numpy: size, voxel nearest its centroid (floats pick
    the candidates, exact integers decide, ties to the first in C order) and score."""
    lab, _ = ndimage.label(prob >= 128, structure=np.ones((3, 3, 3), bool))
    huge = lab == lab[0, 0, 0]
    size = int(huge.sum())
    grid = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    total = [int((huge * g).sum(dtype=np.int64)) for g in grid]
    d2 = sum(((g - t / size) * v) ** 2 for g, t, v in zip(grid, total, VS, strict=True))
    d2 = np.where(huge, d2, np.inf)
    best = d2.min()
    cand = np.argwhere(d2 <= best + 1e-3 * (best + 64 ** 2))  # C order
    exact = [sum(((size * int(c) - t) * int(v)) ** 2 for c, t, v in zip(row, total, VS,
                                                                          strict=True))
             for row in cand.tolist()]
    at = cand[int(np.argmin(exact))].tolist()
    score = float(prob[huge].astype(np.float64).sum() / 255 / size)
    assert size == SHAPE[0] * SHAPE[1] * SHAPE[2] - 4 * 16**3 and len(small) >= 15
    return size, at, score


@pytest.mark.parametrize("path", ["memory", "store"])
def test_huge_detection_bounded_memory_equals_brute_force(store: tuple[Path, Path, np.ndarray],
                                                          tmp_path: Path, path: str) -> None:
    """The model answers 1 on black: the black space of a 256^3 store is one detection of
    ~16.8M voxels.  With max_size=None it is reported, placed block by block; the run's peak
    RSS stays within block terms.  ``memory``: the default path at this size (components in
    memory), 1755 MiB before (the argwhere of the detection's 16.8M voxels, and the statistics
    pass's coordinates of the whole volume as one block), 251 after.  ``store``: the path of
    volumes over 64 Mi voxels (temporary zarr volumes), with a uint64 segmentation store, so
    the detection's segments are taken block by block too: 1697 MiB before, 287 after (most
    of it predict's and connected_components')."""
    path_, model, img = store
    seg = None
    setup, kw = "", ""
    if path == "store":
        setup = "import voxgate.services.synapses as S\nS.IN_MEMORY_VOXELS = 0\n"
        seg = np.zeros(SHAPE, np.uint64)  # a cell in the black space, one in each patch
        segv = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=SHAPE, dtype="uint64",
                              chunks=(64, 64, 64), voxel_size=VS, kind="segmentation")
        for k, (z, y, x) in enumerate([(0, 0, 0), *PATCHES]):
            box = (slice(0, 100), slice(0, 128)) if k == 0 else (
                slice(z, z + 16), slice(y, y + 16), slice(x, x + 16))
            seg[box] = segv[box] = 7 if k == 0 else 2**40 + k - 1
        kw = f', segmentation="zarr://{tmp_path}/seg.zarr"'
    peak = peak_delta(setup + textwrap.dedent(f"""
        t = voxgate.detect_synapses("zarr://{path_}", model="{model}", max_size=None,
                                    min_size=3, workers=2, progress=False{kw})
        t.to_pickle("table.pkl")
    """), tmp_path, prelude=prelude("import numpy as np\nimport voxgate\n"))
    assert peak < BOUND_MIB, f"detect_synapses with a 16M-voxel detection peaked at {peak} MiB"
    got = pd.read_pickle(tmp_path / "table.pkl")
    prob = 255 - img
    small = _small_reference(prob, 3)
    size, at, score = _huge_reference(prob, small)
    assert got["id"].tolist() == list(range(1, len(small) + 2))
    assert got.loc[0, "size"] == size  # the black space starts at voxel (0, 0, 0)
    assert got.loc[0, ["z", "y", "x"]].tolist() == at
    assert got.loc[0, "score"] == pytest.approx(score, rel=1e-6)
    rest = got.iloc[1:][list(small.columns)].reset_index(drop=True)
    assert_table(rest.assign(id=rest["id"] - 1), small)
    if seg is not None:  # the huge detection's segments, over the whole volume at once
        huge = ndimage.label(prob >= 128, structure=np.ones((3, 3, 3), bool))[0] == 1
        shell = ndimage.distance_transform_edt(~huge, sampling=VS) <= 100.0
        ids, n = np.unique(seg[huge], return_counts=True)
        post = int(ids[ids != 0][np.argmax(n[ids != 0])])
        ids, n = np.unique(seg[shell & ~huge], return_counts=True)
        other = (ids != 0) & (ids != post)
        pre = int(ids[other][np.argmax(n[other])])
        assert (post, pre) == (7, 2**40)
        assert got.loc[0, ["pre_id", "post_id"]].tolist() == [pre, post]


def test_max_size_drops_the_huge_detection_with_a_warning(
        store: tuple[Path, Path, np.ndarray], tmp_path: Path) -> None:
    """By default (max_size=2**22) the black space is dropped, with a warning that counts
    it; the small detections are the brute-force table.  The old code reported it."""
    path, model, img = store
    with pytest.warns(VoxgateWarning, match=r"dropped 1 component\(s\) larger than max_size="
                                            r"4194304 voxels \(the largest 16[0-9]{6} voxels"):
        got = voxgate.detect_synapses(f"zarr://{path}", model=str(model), min_size=3,
                                      probabilities=f"zarr://{tmp_path}/prob.zarr",
                                      progress=False)
    prob = voxgate.open(f"zarr://{tmp_path}/prob.zarr").read()
    np.testing.assert_array_equal(prob, 255 - img)
    assert_table(got, _small_reference(prob, 3))
    details = got.attrs["provenance"].details
    assert details["max_size"] == 2**22 and details["dropped_too_large"] == 1


def test_max_size_at_a_size_and_refused_values() -> None:
    """A component of exactly max_size voxels is kept, one voxel more is dropped; bad values
    are refused before anything runs."""
    img = np.zeros((12, 12, 12), np.uint8)
    img[1:4, 1:4, 1:4] = 200  # 27 voxels
    img[7:9, 7:9, 7:9] = 200  # 8 voxels
    kw = {"model": identity, "threshold": 0.5, "min_size": 1, "progress": False}
    assert voxgate.detect_synapses(img, max_size=27, **kw)["size"].tolist() == [27, 8]
    with pytest.warns(VoxgateWarning, match=r"dropped 1 component\(s\) larger than max_size=26"):
        got = voxgate.detect_synapses(img, max_size=26, **kw)
    assert got["size"].tolist() == [8] and got["id"].tolist() == [1]
    assert voxgate.detect_synapses(img, max_size=None, **kw)["size"].tolist() == [27, 8]
    for bad in (0, -1, True, 2.5, "big"):
        with pytest.raises(InvalidRequestError, match="max_size must be a positive number"):
            voxgate.detect_synapses(img, max_size=bad, **kw)
    with pytest.raises(InvalidRequestError, match="max_size=5 is below min_size=6"):
        voxgate.detect_synapses(img, **{**kw, "min_size": 6, "max_size": 5})


def test_placing_block_by_block_equals_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    """An odd-shaped volume whose detections cross the borders of blocks far smaller than
    they are, anisotropic voxels, a segmentation: every detection placed and given its
    segments block by block (the window limit forced to 30 voxels, the statistics taking 97
    voxels at a time) gives the brute-force table, and the same table as the whole-window
    path to the bit."""
    shape, block = (23, 37, 29), (5, 7, 6)
    img, seg = blob_image(shape, 1), voronoi(shape, 2)
    kw = {"model": identity, "threshold": 0.6, "min_size": 4, "segmentation": seg,
          "voxel_size": VS, "block": block, "shell": 60.0, "progress": False}
    whole = voxgate.detect_synapses(img, **kw)
    monkeypatch.setattr(synapses, "_PLACE_VOXELS", 30)
    monkeypatch.setattr(synapses, "_SLICE_VOXELS", 97)
    blocks = voxgate.detect_synapses(img, **kw)
    want = reference(img, threshold=0.6, min_size=4, voxel_size=VS, seg=seg, shell=60.0)
    assert len(want) >= 5 and (want["pre_id"] > 0).any() and (want["size"] > 50).any()
    assert_table(blocks, want)
    pd.testing.assert_frame_equal(blocks, whole)


def test_the_cli_takes_max_size(tmp_path: Path) -> None:
    """``voxgate synapses --max-size``: a number of voxels or ``none``; anything else is a
    usage error naming the option."""
    from click.testing import CliRunner

    from voxgate.cli import main

    model = _inverse_model(tmp_path / "inverse.onnx")
    img = np.zeros((24, 40, 40), np.uint8)
    img[4:12, 8:20, 8:20] = 255  # (the rest, black, is one component of 36,032 voxels)
    voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=img.shape, dtype="uint8",
                   chunks=(24, 40, 40), voxel_size=VS)[...] = img
    src = f"zarr://{tmp_path}/img.zarr"
    base = ["synapses", src, "--model", str(model), "--device", "cpu", "--no-progress"]
    kept = CliRunner().invoke(main, [*base, "--max-size", "none", "--csv",
                                     str(tmp_path / "all.csv")])
    assert kept.exit_code == 0, kept.output
    table = pd.read_csv(tmp_path / "all.csv")
    assert table["size"].tolist() == [img.size - 8 * 12 * 12]
    with pytest.warns(VoxgateWarning, match="dropped 1 component"):
        dropped = CliRunner().invoke(main, [*base, "--max-size", "1000", "--csv",
                                            str(tmp_path / "none.csv")])
    assert dropped.exit_code == 0, dropped.output
    assert pd.read_csv(tmp_path / "none.csv").empty
    bad = CliRunner().invoke(main, [*base, "--max-size", "lots"])
    assert bad.exit_code == 2 and "--max-size" in bad.output and "'lots'" in bad.output
