"""detect_synapses against a brute-force numpy reference written here, at the Service's seams.

The reference thresholds the probabilities (grey level / 255 at or above ``threshold``), labels
them with ``scipy.ndimage.label`` (26-connected), numbers the components by their first voxel
in C order, keeps those of at least ``min_size`` voxels, places each at its voxel nearest the
centroid in nm (exact integer arithmetic, ties to the first in C order), scores it by its mean
probability, and names ``post_id`` / ``pre_id`` by the documented rule, the shell being the
voxels whose nearest detection voxel (a k-d tree in nm) lies within ``shell`` nm (anisotropic
voxels: other radii per axis).

Checked: odd shapes, offsets off the block grid, anisotropic voxels, blocks much smaller than
the detections, detections at the volume's faces, ``min_size`` and ``threshold`` exactly at a
component's size / a grey level, position ties, segmentations at another offset (and at another
scale: refused) with ids above 2**32, segment 0 everywhere, integer numpy images, the kept
``probabilities`` (predict's output exactly, an existing destination, a larger given Volume),
workers=1 against several and a dask.distributed client, and bad input: a voxgate error that
names the argument, and nothing written."""

from __future__ import annotations

import math
import os
import socket
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

import voxgate
from voxgate.errors import InvalidRequestError, RemoteExistsError, VoxgateError

from .onnx_models import conv_model

COLUMNS = ["id", "z", "y", "x", "x_nm", "y_nm", "z_nm", "size", "score"]


def identity(a: np.ndarray) -> np.ndarray:
    """A 'model' whose uint8 probabilities are the image's own grey levels."""
    return a


def blob_image(shape: tuple[int, int, int], seed: int, sigma: float = 1.6) -> np.ndarray:
    """Smooth random grey levels: above ~0.6 they make blobs of a few to hundreds of voxels."""
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.random(shape), sigma)
    f = (f - f.min()) / (f.max() - f.min())
    return np.rint(f * 255).astype(np.uint8)


def voronoi(shape: tuple[int, int, int], seed: int, cells: int = 10) -> np.ndarray:
    """Cells with uint64 ids above 2**32 (some above 2**53), a slab of background (0)."""
    rng = np.random.default_rng(seed)
    pts = rng.random((cells, 3)) * np.asarray(shape)
    grid = np.indices(shape).reshape(3, -1).T
    nearest = np.argmin(((grid[:, None, :] - pts[None]) ** 2).sum(-1), axis=1)
    ids = np.uint64(2**33) + rng.choice(2**60, cells, replace=False).astype(np.uint64)
    lab = ids[nearest].reshape(shape)
    lab[:, :, :2] = 0
    return lab


def _mode(values: np.ndarray, exclude: int | None = None) -> int:
    values = values[values != 0]
    if exclude is not None:
        values = values[values != exclude]
    if values.size == 0:
        return 0
    ids, counts = np.unique(values, return_counts=True)
    return int(ids[np.flatnonzero(counts == counts.max())[0]])  # ties: the smaller id


def _within(comp: np.ndarray, voxel_size: tuple[float, float, float],
            shell: float) -> np.ndarray:
    """Voxels of the volume within ``shell`` nm of ``comp`` (nearest detection voxel by a
    k-d tree in nm, its squared distance compared with shell**2)."""
    from scipy.spatial import cKDTree

    vs = np.asarray(voxel_size)
    vox = np.argwhere(comp)
    every = np.indices(comp.shape).reshape(3, -1).T
    _, nearest = cKDTree(vox * vs).query(every * vs, distance_upper_bound=2 * shell)
    found = nearest < len(vox)
    d2 = (((every[found] - vox[nearest[found]]) * vs) ** 2).sum(axis=1)
    near = np.zeros(comp.size, bool)
    near[np.flatnonzero(found)[d2 <= shell**2]] = True
    return near.reshape(comp.shape)


def _nearest_centroid(vox: np.ndarray, voxel_size: tuple[float, float, float]) -> np.ndarray:
    """The voxel (rows in C order) nearest the centroid in nm, ties to the first, exactly:
    m * (x - centroid) * v, scaled to integers, compared as Python ints."""
    m = len(vox)
    sums = vox.sum(axis=0)
    fr = [Fraction(v) for v in voxel_size]
    den = math.lcm(*(f.denominator for f in fr))
    vi = [int(f * den) for f in fr]
    best, best_d = 0, None
    for i, row in enumerate(vox.tolist()):
        d = sum(((m * c - int(s)) * w) ** 2 for c, s, w in zip(row, sums.tolist(), vi,
                                                                strict=True))
        if best_d is None or d < best_d:
            best, best_d = i, d
    return vox[best]


def reference(prob: np.ndarray, *, threshold: float, min_size: int,
              voxel_size: tuple[float, float, float], offset: tuple[int, int, int] = (0, 0, 0),
              seg: np.ndarray | None = None, shell: float = 100.0) -> pd.DataFrame:
    """The documented table, brute force (``seg``: the segmentation over the image's region)."""
    p = prob.astype(np.float64) / 255.0
    mask = p >= threshold
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    first = np.full(n + 1, lab.size)
    flat = lab.ravel()
    nz = np.flatnonzero(flat)
    np.minimum.at(first, flat[nz], nz)
    rows: list[dict[str, Any]] = []
    for label in np.argsort(first[1:], kind="stable") + 1:
        comp = lab == label
        vox = np.argwhere(comp)
        if len(vox) < min_size:
            continue
        at = _nearest_centroid(vox, voxel_size) + np.asarray(offset)
        row: dict[str, Any] = {
            "id": len(rows) + 1, "z": at[0], "y": at[1], "x": at[2],
            "x_nm": (at[2] + 0.5) * voxel_size[2], "y_nm": (at[1] + 0.5) * voxel_size[1],
            "z_nm": (at[0] + 0.5) * voxel_size[0], "size": len(vox), "score": p[comp].mean()}
        if seg is not None:
            post = _mode(seg[comp])
            near = _within(comp, voxel_size, shell) & ~comp
            row["pre_id"], row["post_id"] = _mode(seg[near], exclude=post), post
        rows.append(row)
    cols = COLUMNS + (["pre_id", "post_id"] if seg is not None else [])
    return pd.DataFrame(rows, columns=cols)


def assert_table(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want), (len(got), len(want))
    for col in ("id", "z", "y", "x", "size"):
        np.testing.assert_array_equal(got[col].to_numpy(np.int64), want[col].to_numpy(np.int64),
                                      err_msg=col)
    for col in ("x_nm", "y_nm", "z_nm"):
        np.testing.assert_array_equal(got[col].to_numpy(np.float64),
                                      want[col].to_numpy(np.float64), err_msg=col)
    np.testing.assert_allclose(got["score"].to_numpy(np.float64),
                               want["score"].to_numpy(np.float64), rtol=1e-6)
    for col in ("pre_id", "post_id"):
        if col in want:
            assert got[col].dtype == np.uint64
            assert got[col].tolist() == [int(v) for v in want[col]], col


def blocks_spanned(prob: np.ndarray, threshold: float, block: tuple[int, int, int]) -> list[int]:
    lab, _ = ndimage.label(prob / 255.0 >= threshold, structure=np.ones((3, 3, 3), bool))
    return [math.prod(len(range(s.start // b, (s.stop - 1) // b + 1))
                      for s, b in zip(sl, block, strict=True))
            for sl in ndimage.find_objects(lab)]


# -- geometry ---------------------------------------------------------------------------------

def test_odd_shape_small_blocks_numpy() -> None:
    """An odd-shaped numpy volume cut into blocks far smaller than its detections."""
    shape, vs, block = (23, 37, 29), (40.0, 8.0, 8.0), (5, 7, 6)
    img, seg = blob_image(shape, 1), voronoi(shape, 2)
    spans = blocks_spanned(img, 0.6, block)
    assert max(spans) >= 8 and sum(2 <= s <= 8 for s in spans) >= 3
    got = voxgate.detect_synapses(img, model=identity, threshold=0.6, min_size=4,
                                  segmentation=seg, voxel_size=vs, block=block, progress=False)
    want = reference(img, threshold=0.6, min_size=4, voxel_size=vs, seg=seg)
    assert len(want) >= 5 and (want["pre_id"] > 0).any()
    # detections at the volume's faces are there too
    lab, _ = ndimage.label(img / 255.0 >= 0.6, structure=np.ones((3, 3, 3), bool))
    assert {int(v) for v in np.unique(lab[0])} - {0} and {int(v) for v in np.unique(lab[:, :, -1])}
    assert_table(got, want)


def test_offset_off_the_block_grid_anisotropic_shell(tmp_path: Path) -> None:
    """A zarr image at an offset that is no multiple of the block, voxels of 30 x 10 x 4 nm
    (a 60 nm shell is 2, 6 and 15 voxels), the segmentation a larger zarr at another offset
    with ids above 2**32."""
    shape, vs, offset, block = (19, 26, 41), (30.0, 10.0, 4.0), (3, 5, 7), (8, 8, 8)
    img = blob_image(shape, 3, sigma=(1.0, 1.5, 2.5))
    seg_full = voronoi((24, 30, 50), 4, cells=14)
    src = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=shape, dtype="uint8",
                         chunks=(4, 8, 8), voxel_size=vs, offset=offset)
    src[:] = img
    segv = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=seg_full.shape, dtype="uint64",
                          chunks=(8, 8, 8), voxel_size=vs, offset=(1, 2, 3), kind="segmentation")
    segv[:] = seg_full
    seg = seg_full[2:2 + shape[0], 3:3 + shape[1], 4:4 + shape[2]]  # the image's region
    got = voxgate.detect_synapses(src, model=identity, threshold=0.62, min_size=3,
                                  segmentation=segv, shell=60.0, block=block, progress=False)
    want = reference(img, threshold=0.62, min_size=3, voxel_size=vs, offset=offset, seg=seg,
                     shell=60.0)
    assert len(want) >= 5
    # the anisotropic shell matters: an isotropic one of the largest radius names other cells
    iso = reference(img, threshold=0.62, min_size=3, voxel_size=(10.0, 10.0, 10.0),
                    offset=offset, seg=seg, shell=150.0)
    assert iso["pre_id"].tolist() != want["pre_id"].tolist()
    assert_table(got, want)


def test_position_ties_go_to_the_first_voxel_in_c_order() -> None:
    """A detection whose two voxels nearest the centroid are exactly as near (the centroid is
    a third of a voxel off): the first in C order is the position, as documented."""
    img = np.zeros((9, 10, 11), np.uint8)
    vox = np.array([[0, 0, 1], [1, 0, 2], [1, 1, 1]]) + np.array([2, 3, 4])
    img[tuple(vox.T)] = 200
    vs = (40.0, 8.0, 8.0)
    want = reference(img, threshold=0.5, min_size=1, voxel_size=vs)
    assert want[["z", "y", "x"]].to_numpy().tolist() == [[3, 3, 6]]  # (1, 0, 2) + offset
    got = voxgate.detect_synapses(img, model=identity, threshold=0.5, min_size=1,
                                  voxel_size=vs, progress=False)
    assert_table(got, want)


def test_threshold_at_a_grey_level_and_min_size_at_a_size() -> None:
    """"At or above": a threshold equal to a voxel's probability takes it; min_size equal to
    a component's size keeps it."""
    img = np.zeros((12, 12, 12), np.uint8)
    img[1:4, 1:4, 1:4] = 100  # 27 voxels at exactly 100 / 255
    img[7:10, 7:10, 7:10] = 99  # just below
    img[7:9, 1:3, 8:10] = 101  # 8 voxels just above
    for min_size, kept in ((8, [27, 8]), (27, [27]), (28, [])):
        got = voxgate.detect_synapses(img, model=identity, threshold=100 / 255,
                                      min_size=min_size, block=(4, 4, 4), progress=False)
        assert got["size"].tolist() == kept
        assert_table(got, reference(img, threshold=100 / 255, min_size=min_size,
                                    voxel_size=(1.0, 1.0, 1.0)))


def test_segment_zero_everywhere_and_segmentation_coverage() -> None:
    img = blob_image((12, 20, 16), 5)
    zeros = np.zeros(img.shape, np.uint64)
    got = voxgate.detect_synapses(img, model=identity, threshold=0.6, min_size=2,
                                  segmentation=zeros, progress=False)
    assert len(got) >= 2
    assert (got["pre_id"] == 0).all() and (got["post_id"] == 0).all()
    assert_table(got, reference(img, threshold=0.6, min_size=2, voxel_size=(1.0, 1.0, 1.0),
                                seg=zeros))
    # a segmentation that does not cover the image: refused, naming both regions
    with pytest.raises(InvalidRequestError, match=r"must cover the image's Box\[0:12"):
        voxgate.detect_synapses(img, model=identity, segmentation=zeros[:, 1:],
                                progress=False)


def test_segmentation_at_another_scale_is_refused(tmp_path: Path) -> None:
    """"The segmentation must cover the image's region at the same scale": one whose voxels
    are twice as large covers the image's box in its own voxels, but its ids are not the
    image's voxels'; refused, saying why, before anything is written."""
    img = blob_image((8, 12, 10), 13)
    src = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=img.shape, dtype="uint8",
                         chunks=(8, 8, 8), voxel_size=(40, 8, 8))
    src[:] = img
    seg = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=(16, 24, 20), dtype="uint64",
                         chunks=(8, 8, 8), voxel_size=(80, 16, 16), kind="segmentation")
    with pytest.raises(InvalidRequestError, match=r"voxels of \(80.0, 16.0, 16.0\)"):
        voxgate.detect_synapses(src, model=identity, segmentation=seg, progress=False,
                                probabilities=f"zarr://{tmp_path}/prob.zarr")
    assert not (tmp_path / "prob.zarr").exists()


def test_uint32_numpy_image() -> None:
    """A numpy image of any integer type is an image (its grey levels scaled by the type's
    maximum), as detect_synapses' kind check says; predict must not take it for labels."""
    img = blob_image((10, 16, 14), 6)
    wide = img.astype(np.uint32) * np.uint32((2**32 - 1) // 255)
    got = voxgate.detect_synapses(wide, model=identity, threshold=0.6, min_size=2,
                                  progress=False)
    assert_table(got, reference(img, threshold=0.6, min_size=2, voxel_size=(1.0, 1.0, 1.0)))


# -- probabilities ----------------------------------------------------------------------------

def test_kept_probabilities_are_predicts_output(tmp_path: Path) -> None:
    """An ONNX model (halo and all) cut into small blocks: the kept map is predict's output
    with the same blocks, and the table is the reference's on that map."""
    model = str(conv_model(tmp_path / "conv.onnx", seed=7))
    img = blob_image((14, 22, 19), 7)
    vs = (40.0, 8.0, 8.0)
    url = f"zarr://{tmp_path}/prob.zarr"
    got = voxgate.detect_synapses(img, model=model, threshold=0.55, min_size=2,
                                  voxel_size=vs, block=(8, 8, 8), probabilities=url,
                                  progress=False)
    expect = np.asarray(voxgate.predict(model, img, block=(8, 8, 8), progress=False))
    kept = voxgate.open(url)
    assert kept.dtype == np.uint8 and kept.shape == img.shape
    np.testing.assert_array_equal(kept.read(), expect)
    want = reference(expect, threshold=0.55, min_size=2, voxel_size=vs)
    assert len(want) >= 2
    assert_table(got, want)
    assert got.attrs["provenance"].details["probabilities"] == kept.url


def test_existing_probabilities_destination(tmp_path: Path) -> None:
    img = blob_image((10, 12, 14), 8)
    url = f"zarr://{tmp_path}/p.zarr"
    old = voxgate.create(url, shape=img.shape, dtype="float32", chunks=(8, 8, 8),
                         voxel_size=(1, 1, 1))
    old[:] = np.full(img.shape, 0.25, np.float32)
    with pytest.raises(RemoteExistsError, match="overwrite=True"):
        voxgate.detect_synapses(img, model=identity, probabilities=url, progress=False)
    with pytest.raises(InvalidRequestError, match=r"float32 .*predict writes uint8"):
        voxgate.detect_synapses(img, model=identity, probabilities=url, overwrite=True,
                                progress=False)
    assert (voxgate.open(url).read() == 0.25).all()  # left as it was


def test_probabilities_into_a_larger_volume(tmp_path: Path) -> None:
    """probabilities= a writable Volume larger than the image (and starting before it): the
    map lands on the image's region, and the table comes from that region only."""
    img = blob_image((12, 18, 15), 9)
    vs, offset = (40.0, 8.0, 8.0), (5, 3, 6)
    src = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=img.shape, dtype="uint8",
                         chunks=(4, 6, 5), voxel_size=vs, offset=offset)
    src[:] = img
    big = voxgate.create(f"zarr://{tmp_path}/big.zarr", shape=(24, 30, 30), dtype="uint8",
                         chunks=(4, 6, 5), voxel_size=vs)
    big[:] = np.full(big.shape, 255, np.uint8)  # stale content around the region
    got = voxgate.detect_synapses(src, model=identity, threshold=0.6, min_size=2,
                                  probabilities=big, block=(4, 6, 5), progress=False)
    assert_table(got, reference(img, threshold=0.6, min_size=2, voxel_size=vs, offset=offset))
    back = big.read()
    np.testing.assert_array_equal(back[5:17, 3:21, 6:21], img)
    back[5:17, 3:21, 6:21] = 255
    assert (back == 255).all()


# -- schedulers -------------------------------------------------------------------------------

def test_workers_and_a_dask_client(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    shape, vs, offset = (17, 25, 22), (40.0, 8.0, 8.0), (2, 9, 1)
    img, seg = blob_image(shape, 10), voronoi(shape, 11)
    src = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=shape, dtype="uint8",
                         chunks=(6, 8, 8), voxel_size=vs, offset=offset)
    src[:] = img
    segv = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=shape, dtype="uint64",
                          chunks=(6, 8, 8), voxel_size=vs, offset=offset, kind="segmentation")
    segv[:] = seg
    want = reference(img, threshold=0.6, min_size=3, voxel_size=vs, offset=offset, seg=seg)
    assert len(want) >= 4
    kw: dict[str, Any] = dict(model=identity, threshold=0.6, min_size=3, segmentation=segv,
                              block=(6, 8, 8), progress=False)
    one = voxgate.detect_synapses(src, workers=1, **kw)
    assert_table(one, want)
    pd.testing.assert_frame_equal(voxgate.detect_synapses(src, workers=3, **kw), one)
    big = voxgate.create(f"zarr://{tmp_path}/big.zarr", shape=(20, 40, 30), dtype="uint8",
                         chunks=(6, 8, 8), voxel_size=vs)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        on = voxgate.detect_synapses(src, client=client, **kw)
        kept = voxgate.detect_synapses(src, client=client, probabilities=big, **kw)
    pd.testing.assert_frame_equal(on, one)
    pd.testing.assert_frame_equal(kept, one)
    np.testing.assert_array_equal(big.read()[2:19, 9:34, 1:23], img)


def test_scratch_keeps_the_temporary_volumes(tmp_path: Path, s3_bucket: str) -> None:
    """scratch= (a shared directory, or s3://) holds the probabilities, mask and components of
    a large run or a cluster run: the same table, the volumes there while the run goes on, and
    nothing left after (before, they always went to a temporary directory on this machine,
    which a cluster's workers on other machines cannot reach)."""
    from distributed import Client, LocalCluster

    shape, vs = (13, 21, 18), (40.0, 8.0, 8.0)
    img = blob_image(shape, 21, sigma=1.0)
    src = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=shape, dtype="uint8",
                         chunks=(5, 8, 8), voxel_size=vs)
    src[:] = img
    want = reference(img, threshold=0.6, min_size=3, voxel_size=vs, offset=(0, 0, 0))
    assert len(want) >= 3
    seen: list[list[str]] = []
    shared = tmp_path / "shared"
    shared.mkdir()

    def watching(a: np.ndarray) -> np.ndarray:  # runs while the probabilities are written
        seen.append(sorted(os.listdir(shared)))
        return a

    kw: dict[str, Any] = dict(threshold=0.6, min_size=3, block=(5, 8, 8), progress=False)
    synapses_module = __import__("voxgate.services.synapses", fromlist=["IN_MEMORY_VOXELS"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synapses_module, "IN_MEMORY_VOXELS", 100)
        large = voxgate.detect_synapses(src, model=watching, scratch=str(shared), **kw)
    assert_table(large, want)
    # (the first calls probe the model's channels, before anything is written)
    assert len(seen[-1]) == 1 and seen[-1][0].startswith("voxgate-synapses-")
    assert list(shared.iterdir()) == []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        on = voxgate.detect_synapses(src, model=identity, client=client,
                                     scratch=f"s3://{s3_bucket}/scratch/", **kw)
    pd.testing.assert_frame_equal(on, large)
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["VOXGATE_S3_ENDPOINT"],
                      region_name="us-east-1")
    assert s3.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0


def test_a_cluster_on_other_machines_needs_a_shared_scratch(tmp_path: Path) -> None:
    """Workers on another machine cannot reach a temporary directory on this one: without
    scratch= the run is refused before anything is sent or written (before, the workers were
    told to write zarr volumes in this machine's $TMPDIR)."""
    src = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=(8, 12, 10), dtype="uint8",
                         chunks=(4, 6, 5), voxel_size=(40, 8, 8))
    src[:] = blob_image((8, 12, 10), 12)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(InvalidRequestError,
                       match=r"workers on other machines \(node-7\).*give scratch="):
        voxgate.detect_synapses(src, model=identity, client=FarClient(), progress=False,
                                probabilities=f"zarr://{tmp_path}/prob.zarr")
    assert sorted(tmp_path.rglob("*")) == before


# -- bad input --------------------------------------------------------------------------------

def two_channels(a: np.ndarray) -> np.ndarray:
    return np.stack([a, a])


BAD: list[tuple[dict[str, Any], str]] = [
    ({"threshold": 1.5}, "threshold"), ({"threshold": -0.1}, "threshold"),
    ({"threshold": 0}, "threshold"), ({"threshold": float("nan")}, "threshold"),
    ({"threshold": "0.5"}, "threshold"), ({"threshold": True}, "threshold"),
    ({"min_size": 0}, "min_size"), ({"min_size": -3}, "min_size"),
    ({"min_size": 2.5}, "min_size"), ({"min_size": True}, "min_size"),
    ({"shell": -5.0}, "shell"), ({"shell": 0}, "shell"), ({"shell": float("nan")}, "shell"),
    ({"shell": float("inf")}, "shell"), ({"shell": "100"}, "shell"),
    ({"shell": None}, "shell"), ({"shell": True}, "shell"),
    ({"model": 5}, "model"), ({"model": two_channels}, "channels"),
    ({"segmentation": "float"}, "integer"), ({"segmentation": "flat"}, "3-D"),
    ({"segmentation": "short"}, "must cover"), ({"segmentation": 5}, "expected a voxgate"),
    ({"workers": "2"}, "workers"), ({"workers": 0}, "workers"),
    ({"block": (0, 4, 4)}, "block"), ({"block": "abc"}, "block"), ({"halo": -1}, "halo"),
    ({"voxel_size": "a"}, "voxel_size"), ({"device": "gpu"}, "device"),
    ({"prefer": "x"}, "prefer"), ({"client": "x"}, "client"),
    ({"client": "cluster"}, "source .* lives in this process"),
    ({"sharded": "yes", "out": "ANN"}, "sharded"), ({"out": 123}, "out"),
    ({"out": "zarr://elsewhere.zarr"}, "annotation"), ({"out": "IMAGE"}, "not an annotation"),
    ({"overwrite": "x"}, "overwrite"),
    ({"scratch": 5}, "scratch must be a directory"), ({"scratch": ""}, "scratch"),
    ({"scratch": "zarr://x.zarr"}, "not a volume URL"),
    ({"scratch": "https://example.org/x"}, "scratch"), ({"scratch": "s3://"}, "scratch"),
    ({"source": [1, 2, 3]}, "expected a voxgate"), ({"source": "flat"}, "3-D"),
]


class FakeClient:
    """Looks like a dask.distributed Client; nothing may reach it."""

    def submit(self, *a: Any, **k: Any) -> Any:
        raise AssertionError("a block was sent")

    scatter = run = submit


class FarClient(FakeClient):
    """A client whose one worker runs on another machine: it only answers its host name."""

    def run(self, fn: Any, *a: Any, **k: Any) -> Any:
        if fn is socket.gethostname and not a and not k:
            return {"tcp://10.0.0.7:40000": "node-7"}
        raise AssertionError("a function other than the host-name probe was sent")


def _case_id(kwargs: dict[str, object]) -> str:
    """A case's id, the same in every process (a function's repr holds its address, and
    pytest-xdist's workers must collect the same ids)."""
    return repr({k: getattr(v, "__name__", v) if callable(v) else v for k, v in kwargs.items()})


@pytest.mark.parametrize(("kwargs", "message"), BAD, ids=[_case_id(k) for k, _ in BAD])
def test_bad_input_is_refused_before_anything_is_written(kwargs: dict[str, Any], message: str,
                                                         tmp_path: Path) -> None:
    img = blob_image((8, 12, 10), 12)
    special = {"float": img.astype(np.float32), "flat": img[0],
               "short": img[:, :5].astype(np.uint64), "cluster": FakeClient(),
               "far": FarClient(),
               "ANN": f"precomputed://file://{tmp_path}/ann",
               "IMAGE": f"precomputed://file://{tmp_path}/image"}
    args: dict[str, Any] = {"model": identity, "progress": False,
                            "probabilities": f"zarr://{tmp_path}/prob.zarr",
                            "segmentation": img.astype(np.uint64)}
    args.update({k: special.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()})
    source = args.pop("source", img)
    if kwargs.get("out") == "zarr://elsewhere.zarr":
        args["out"] = f"zarr://{tmp_path}/ann.zarr"
    if kwargs.get("out") == "IMAGE":  # an image layer where the annotations would go
        voxgate.create(args["out"], shape=(8, 8, 8), dtype="uint8", chunks=(8, 8, 8),
                       voxel_size=(1, 1, 1))
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(VoxgateError, match=message):
        voxgate.detect_synapses(source, **args)
    assert sorted(tmp_path.rglob("*")) == before


def test_an_image_volume_as_segmentation_is_refused(tmp_path: Path) -> None:
    """An image given as ``segmentation=`` (a uint8 zarr of kind image): its intensities were
    taken for cell ids; refused, before anything is written."""
    img = blob_image((8, 12, 10), 13)
    src = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=img.shape, dtype="uint8",
                         chunks=(8, 8, 8), voxel_size=(40, 8, 8))
    src[:] = img
    with pytest.raises(InvalidRequestError, match=r"is an image \(kind='image'\)"):
        voxgate.detect_synapses(src, model=identity, segmentation=src, progress=False,
                                probabilities=f"zarr://{tmp_path}/prob.zarr")
    assert not (tmp_path / "prob.zarr").exists()
