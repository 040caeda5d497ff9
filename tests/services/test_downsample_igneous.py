"""voxgate.downsample against Igneous, the pipeline that writes most precomputed pyramids.

The same precomputed layer (odd extents, odd voxel offset) is downsampled twice: once by
Igneous's own downsample tasks (``igneous.task_creation.create_downsampling_tasks`` run on a
``LocalTaskQueue``), once by ``voxgate.downsample``.  Both are read back with CloudVolume.

What must agree, and why it is not simply "equal everywhere":

* every scale's geometry in ``info`` (voxel offset, size, resolution): a level that groups
  voxels from another origin, or rounds the offset the other way, fails here;
* image scale 1: voxel for voxel (both are the floor of the mean of each 2x2 block, partial at
  the odd edges);
* image scale 2: Igneous carries unrounded sums between levels (tinybrain's multi-level call),
  so its scale 2 is the floor of the mean of each 4x4 block of scale 0, while voxgate's is made
  from the stored scale 1 (docs/services/downsample.md).  Both are checked against their own
  numpy rule, and they differ by at most 1;
* segmentation: both pick a most frequent label of each block; they break ties differently
  (voxgate: first in C order for every factor; tinybrain's 2x2 rule is another), so where they
  differ, each value must still be a most frequent label of the block it was made from.

Igneous pins DracoPy below 2, whose encoder refuses voxgate's unquantized mesh positions, so it
lives in an environment of its own: it runs as a subprocess of the Python named by
``VOXGATE_IGNEOUS_PYTHON`` (scripts/test.sh makes ``.venv-igneous`` and sets it).  These tests
are skipped when it is not set, except in CI, where they fail.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections import Counter

import numpy as np
import pytest

import voxgate

from .numpy_reference import _blocks, downsample_mean

cloudvolume = pytest.importorskip("cloudvolume")

PEER = os.environ.get("VOXGATE_IGNEOUS_PYTHON")
pytestmark = pytest.mark.skipif(
    not PEER and not os.environ.get("CI"),
    reason="VOXGATE_IGNEOUS_PYTHON names no Python with the igneous-pipeline package",
)

SHAPE_XYZ = (45, 37, 9)      # odd in x and y; Igneous halves x and y for (4, 4, 40) nm voxels
OFFSET_XYZ = (3, 5, 1)       # odd: the coarse offsets are floor(3 / 2) = 1, floor(5 / 2) = 2, ...


def _layer(path, kind: str, dtype: str, data_xyz: np.ndarray) -> str:
    url = f"file://{path}"
    info = cloudvolume.CloudVolume.create_new_info(
        1, kind, dtype, "raw", [4, 4, 40], list(OFFSET_XYZ), list(SHAPE_XYZ),
        chunk_size=[16, 16, 8])
    cv = cloudvolume.CloudVolume(url, info=info)
    cv.commit_info()
    cv[:, :, :] = data_xyz[..., None]
    return url


def _level(url: str, mip: int) -> tuple[dict, np.ndarray]:
    cv = cloudvolume.CloudVolume(url, mip=mip)
    scale = cv.info["scales"][mip]
    geometry = {k: list(scale[k]) for k in ("voxel_offset", "size", "resolution")}
    zyx = np.ascontiguousarray(np.transpose(cv[:, :, :][..., 0], (2, 1, 0)))
    return geometry, zyx


def _igneous_downsample(url: str) -> None:
    assert PEER, "CI must run these: scripts/test.sh sets VOXGATE_IGNEOUS_PYTHON"
    code = textwrap.dedent("""
        import sys
        import igneous.task_creation as tc
        from taskqueue import LocalTaskQueue
        tasks = tc.create_downsampling_tasks(sys.argv[1], mip=0, num_mips=2)
        LocalTaskQueue(parallel=1, progress=False).insert_all(tasks)
        """)
    out = subprocess.run([PEER, "-c", code, url], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def _both(tmp_path, kind: str, dtype: str, data_xyz: np.ndarray):
    ign = _layer(tmp_path / "igneous", kind, dtype, data_xyz)
    vox = _layer(tmp_path / "voxgate", kind, dtype, data_xyz)
    _igneous_downsample(ign)
    voxgate.downsample(f"precomputed://{vox}", num_scales=3)
    levels = []
    for mip in range(3):
        gi, ai = _level(ign, mip)
        gv, av = _level(vox, mip)
        assert gi == gv, f"scale {mip}: Igneous {gi}, voxgate {gv}"
        levels.append((ai, av))
    assert levels[1][0].shape == (9, 19, 23)          # ceil(37 / 2), ceil(45 / 2)
    assert levels[2][0].shape == (9, 10, 12)
    return levels


def test_image_pyramid_matches_igneous(tmp_path) -> None:
    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, SHAPE_XYZ, dtype=np.uint8)
    (s0, _), (i1, v1), (i2, v2) = _both(tmp_path, "image", "uint8", data)
    np.testing.assert_array_equal(v1, i1)
    # Igneous: floor of the mean of scale 0's 4x4 blocks; voxgate: of scale 1's 2x2 blocks
    np.testing.assert_array_equal(i2, downsample_mean(s0, (1, 4, 4)))
    np.testing.assert_array_equal(v2, downsample_mean(v1, (1, 2, 2)))
    assert np.abs(i2.astype(np.int16) - v2.astype(np.int16)).max() <= 1


def _most_frequent(block: np.ndarray) -> set[int]:
    counts = Counter(int(v) for v in block)
    top = max(counts.values())
    return {label for label, n in counts.items() if n == top}


def _each_is_a_mode(result: np.ndarray, source: np.ndarray, who: str, scale: int) -> None:
    for index, covered in _blocks(source, (1, 2, 2)):
        value = int(result[index])
        assert value in _most_frequent(covered), (
            f"{who} scale {scale} at (z, y, x) {index}: {value} is not a most frequent label "
            f"of {covered.tolist()}")


def test_segmentation_pyramid_matches_igneous(tmp_path) -> None:
    rng = np.random.default_rng(8)
    # blobs of a few labels (large ids: the uint64 path), so most blocks have a clear mode and
    # some have ties
    coarse = rng.integers(0, 4, (12, 10, 3)).astype(np.uint64) + np.uint64(2**40)
    data = np.repeat(np.repeat(np.repeat(coarse, 4, 0), 4, 1), 3, 2)[:45, :37, :9]
    data = np.where(rng.random(data.shape) < 0.2, np.uint64(7), data)
    (s0, _), (i1, v1), (i2, v2) = _both(tmp_path, "segmentation", "uint64",
                                        np.ascontiguousarray(data))
    _each_is_a_mode(i1, s0, "Igneous", 1)
    _each_is_a_mode(v1, s0, "voxgate", 1)
    _each_is_a_mode(i2, i1, "Igneous", 2)
    _each_is_a_mode(v2, v1, "voxgate", 2)
    # they agree wherever the block has one most frequent label
    clear = np.array([len(_most_frequent(c)) == 1 for _, c in _blocks(s0, (1, 2, 2))])
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(i1.reshape(-1)[clear], v1.reshape(-1)[clear])
