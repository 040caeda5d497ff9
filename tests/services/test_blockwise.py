"""downsample, connected_components, label_stats: block-wise equals whole, stores get scales."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tinybrain

import voxgate
from voxgate.errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    ReadOnlyError,
    RemoteExistsError,
)
from voxgate.services.connected_components import connected_components_kernel
from voxgate.services.downsample import downsample_kernel, downsample_provenance
from voxgate.synthetic import synthetic_em

from .numpy_reference import downsample_scales

SCHEMES = {
    "zarr": lambda d, n: f"zarr://{d}/{n}.zarr",
    "precomputed": lambda d, n: f"precomputed://file://{d}/{n}",
    "n5": lambda d, n: f"n5://{d}/{n}.n5",
    "hdf5": lambda d, n: f"hdf5://{d}/{n}.h5#/vol",
}


@pytest.fixture(scope="module")
def em() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_em((24, 70, 90), seed=4, cell=(8, 16, 16))


def test_tinybrain_needs_fortran_order() -> None:
    """Why the kernel passes ``.T``: C-order input makes tinybrain halve the wrong axes."""
    seg = np.zeros((2, 4, 4), dtype=np.uint64)  # (z, y, x)
    seg[0] = 1
    seg[1] = 2  # z slices differ; in x/y each slice is uniform
    right = downsample_kernel(seg, [(1, 2, 2)], "segmentation")[0]
    assert right.shape == (2, 2, 2)
    assert (right[0] == 1).all() and (right[1] == 2).all()  # each z slice keeps its label
    wrong = np.asarray(tinybrain.downsample_segmentation(seg, (2, 2, 1))[0])
    assert wrong.shape != right.shape or not np.array_equal(wrong, right)


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_downsample_into_every_store(tmp_path: Path, em: tuple[np.ndarray, np.ndarray],
                                     scheme: str) -> None:
    image, labels = em
    for name, data, kind in (("img", image, "image"), ("seg", labels, "segmentation")):
        url = SCHEMES[scheme](tmp_path, name)
        vol = voxgate.create(url, shape=data.shape, chunks=(8, 32, 32), dtype=data.dtype,
                             voxel_size=(40, 8, 8), kind=kind)
        vol[:] = data
        out = voxgate.downsample(url, 3, block=(8, 32, 32))
        assert downsample_provenance(out).path == "local"  # type: ignore[union-attr]
        again = voxgate.open(url)
        assert [tuple(s.shape) for s in again.scales] == [(24, 70, 90), (24, 35, 45),
                                                          (24, 18, 23)]
        assert again.at_scale(2).voxel_size.zyx() == (40.0, 32.0, 32.0)
        # brute-force numpy, not tinybrain: tinybrain is wrong at odd extents (issue 9)
        ref = downsample_scales(data, [(1, 2, 2), (1, 2, 2)], kind)
        for k in (1, 2):
            np.testing.assert_array_equal(again.at_scale(k).read(), ref[k - 1])


def test_downsample_isotropic_default_and_numpy(em: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = em
    vol = voxgate.downsample(labels[:16, :64, :64], 3)
    assert [tuple(s.shape) for s in vol.scales] == [(16, 64, 64), (8, 32, 32), (4, 16, 16)]
    ref = tinybrain.downsample_segmentation(np.asfortranarray(labels[:16, :64, :64].T),
                                            (2, 2, 2), num_mips=2)
    np.testing.assert_array_equal(vol.at_scale(2).read(), np.asarray(ref[1]).T)


def test_downsample_bad_input(tmp_path: Path, em: tuple[np.ndarray, np.ndarray]) -> None:
    image, _ = em
    url = f"zarr://{tmp_path}/x.zarr"
    vol = voxgate.create(url, shape=image.shape, chunks=(8, 32, 32), dtype="uint8",
                         voxel_size=(40, 8, 8))
    with pytest.raises(ReadOnlyError):
        voxgate.downsample(voxgate.open(url), 2)
    with pytest.raises(InvalidRequestError):
        voxgate.downsample(vol, 1)
    with pytest.raises(InvalidRequestError, match="factor"):
        voxgate.downsample(vol, 3, factors=[(1, 2, 2)])
    with pytest.raises(CapabilityNotSupportedError):
        voxgate.downsample(vol, 2, prefer="server")


def assert_same_partition(got: np.ndarray, oracle: np.ndarray) -> None:
    """``got`` and ``oracle`` split the volume into the same components: the same background
    (label 0) and a one-to-one map between their labels (each label of one meets exactly one
    label of the other)."""
    assert got.shape == oracle.shape
    np.testing.assert_array_equal(got == 0, oracle == 0, err_msg="background differs")
    fg = got != 0
    pairs = np.unique(np.stack([got[fg].astype(np.uint64), oracle[fg].astype(np.uint64)]),
                      axis=1)
    n_got, n_oracle = len(np.unique(got[fg])), len(np.unique(oracle[fg]))
    # every label of each side appears in exactly one pair: the map is a bijection
    assert pairs.shape[1] == n_got == n_oracle, (pairs.shape[1], n_got, n_oracle)


def test_assert_same_partition_catches_merges_and_splits() -> None:
    a = np.array([[[1, 1, 0, 2, 2]]], dtype=np.uint64)
    assert_same_partition(a, np.array([[[7, 7, 0, 3, 3]]]))  # renumbered: the same
    for wrong in ([[[7, 7, 0, 7, 7]]],  # merged
                  [[[7, 8, 0, 3, 3]]],  # split
                  [[[7, 7, 3, 3, 3]]]):  # background lost
        with pytest.raises(AssertionError):
            assert_same_partition(a, np.array(wrong))


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_connected_components_block_equals_whole(connectivity: int) -> None:
    import cc3d

    rng = np.random.default_rng(connectivity)
    lab = (rng.random((30, 40, 50)) > 0.55).astype(np.uint32) * rng.integers(
        1, 3, (30, 40, 50)).astype(np.uint32)
    oracle = cc3d.connected_components(lab, connectivity=connectivity)
    whole = connected_components_kernel(lab, connectivity)
    assert_same_partition(whole, oracle)
    for block in [(7, 9, 11), (16, 16, 16), (30, 40, 50)]:
        got = voxgate.connected_components(lab, connectivity=connectivity, block=block)
        assert_same_partition(got, oracle)
        np.testing.assert_array_equal(got, whole)  # and numbered the same whatever the blocks


def test_connected_components_to_a_store(tmp_path: Path, em: tuple[np.ndarray, np.ndarray]
                                         ) -> None:
    _, labels = em
    src = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=labels.shape, chunks=(8, 32, 32),
                         dtype="uint64", voxel_size=(40, 8, 8), kind="segmentation",
                         offset=(5, 6, 7))
    src[:] = labels
    out = voxgate.connected_components(src, out=f"zarr://{tmp_path}/cc.zarr", block=(8, 32, 32))
    assert out.kind == "segmentation" and out.dtype == np.uint64
    from voxgate.services.connected_components import connected_components_provenance

    prov = connected_components_provenance(out)
    assert prov is not None and prov.path == "local"
    assert prov.details["components"] == np.count_nonzero(np.unique(out.read()))
    assert tuple(out.offset) == (5, 6, 7)
    import cc3d

    assert_same_partition(out.read(), cc3d.connected_components(labels, connectivity=26))
    with pytest.raises(RemoteExistsError):
        voxgate.connected_components(src, out=f"zarr://{tmp_path}/cc.zarr")
    again = voxgate.connected_components(src, out=f"zarr://{tmp_path}/cc.zarr", overwrite=True)
    np.testing.assert_array_equal(again.read(), out.read())
    with pytest.raises(ReadOnlyError):
        voxgate.connected_components(src, out=voxgate.open(f"zarr://{tmp_path}/cc.zarr"))
    with pytest.raises(InvalidRequestError):
        voxgate.connected_components(src, connectivity=8)
    with pytest.raises(CapabilityNotSupportedError):
        voxgate.connected_components(src, prefer="server")


def test_label_stats(em: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    _, labels = em
    labels = labels + np.uint64(2**61)
    labels[0:3] = 0
    src = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=labels.shape, chunks=(8, 32, 32),
                         dtype="uint64", voxel_size=(40, 8, 8), kind="segmentation",
                         offset=(100, 0, 0))
    src[:] = labels
    df = voxgate.label_stats(src, block=(7, 19, 23))
    assert list(df.columns) == ["id", "voxel_count", "z0", "y0", "x0", "z1", "y1", "x1",
                                "centroid_z", "centroid_y", "centroid_x"]
    assert df["id"].dtype == np.uint64
    assert df.attrs["provenance"].path == "local"
    ids = df["id"].to_numpy()
    assert set(ids.tolist()) == {int(i) for i in np.unique(labels) if i}
    for row in range(0, len(df), 5):
        w = np.nonzero(labels == ids[row])
        assert df["voxel_count"][row] == len(w[0])
        assert (df["z0"][row], df["z1"][row]) == (100 + w[0].min(), 100 + w[0].max() + 1)
        assert (df["x0"][row], df["x1"][row]) == (w[2].min(), w[2].max() + 1)
        assert abs(df["centroid_y"][row] - w[1].mean()) < 1e-6
    whole = voxgate.label_stats(labels)  # a numpy array works too
    pd.testing.assert_frame_equal(df[["id", "voxel_count"]], whole[["id", "voxel_count"]])
    part = voxgate.label_stats(src[3:10, 0:20, 0:20])
    assert part["z0"].min() >= 103 and part["y1"].max() <= 20
    with pytest.raises(InvalidRequestError):
        voxgate.label_stats(np.zeros((2, 2, 2), dtype=np.float32))
