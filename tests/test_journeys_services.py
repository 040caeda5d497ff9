"""Journeys through the proofreading Service across stores and scales, checked against
brute-force numpy references: every scale of a pyramid follows an edit (and undo restores every
scale's bytes), label statistics follow it, new ids never collide with ids above 2^32, and on
DVID's server path undoing a merge after a split of the merged body restores the exact labels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import voxgate
from tests.services.brute_reference import assert_stats_match, split_pieces
from tests.services.brute_reference import relabel as brute_relabel
from tests.services.numpy_reference import downsample_scales
from voxgate.remotes.dvid import DVIDRepo
from voxgate.testing.dvid import DVIDServerProcess, start_server

SHAPE = (13, 21, 19)          # odd on every axis
OFFSET = (3, 5, 7)            # and not a multiple of any factor
BIG = 2**40 + 5               # an id above 2^32


def labels() -> np.ndarray:
    a = np.zeros(SHAPE, dtype=np.uint64)
    a[1:6, 2:10, 2:9] = 7
    a[7:12, 12:20, 10:18] = 9           # 9: two pieces apart
    a[1:4, 14:19, 12:17] = 9
    a[8:12, 2:8, 2:6] = BIG
    a[0:2, 0:3, 15:19] = 3
    return a


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXGATE_STATE_DIR", str(tmp_path / "state"))


def _scales(vol: voxgate.Volume) -> list[np.ndarray]:
    return [vol.at_scale(k).read() for k in range(len(vol.meta.scales))]


def _pyramid(scale0: np.ndarray, vol: voxgate.Volume) -> list[np.ndarray]:
    """Scale 0 and the coarser scales a whole-volume mode downsample gives (brute force)."""
    meta = vol.meta
    factors = [tuple(round(b / a) for a, b in zip(meta.scale(k - 1).voxel_size.zyx(),
                                                  meta.scale(k).voxel_size.zyx(), strict=True))
               for k in range(1, len(meta.scales))]
    return [scale0, *downsample_scales(scale0, factors, "segmentation")]


def test_edits_reach_every_scale_and_undo_restores_every_scale(tmp_path: Path) -> None:
    url = f"precomputed://{tmp_path}/seg"
    v = voxgate.create(url, shape=SHAPE, chunks=(4, 8, 8), dtype="uint64", voxel_size=(8, 8, 8),
                       kind="segmentation", offset=OFFSET, num_scales=3,
                       encoding="compressed_segmentation")
    v[:] = labels()
    voxgate.downsample(v)
    v = voxgate.open(url, mode="r+")
    orig = _scales(v)
    assert all(np.array_equal(a, b) for a, b in zip(orig, _pyramid(labels(), v), strict=True))

    m = voxgate.merge(v, [7, 9])
    merged = brute_relabel(labels(), {9: 7})
    got = _scales(v)
    assert all(np.array_equal(a, b) for a, b in zip(got, _pyramid(merged, v), strict=True))
    assert m.provenance is not None and m.provenance.details["coarser_scales"] == "updated"

    s = voxgate.split(v, 7)                                  # three connected pieces now
    pieces, k = split_pieces(merged, 7)
    assert k == 3 and len(s.new_ids) == 2
    assert min(s.new_ids) > BIG                              # above every id in the volume
    want = merged.copy()
    for rank, i in enumerate(s.new_ids, start=2):
        want[pieces == rank] = i
    got = _scales(v)
    assert all(np.array_equal(a, b) for a, b in zip(got, _pyramid(want, v), strict=True))

    assert_stats_match(voxgate.label_stats(v), want, OFFSET)

    voxgate.undo(v)
    assert all(a.tobytes() == b.tobytes()
               for a, b in zip(_scales(v), _pyramid(merged, v), strict=True))
    voxgate.undo(v)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(_scales(v), orig, strict=True))


@pytest.fixture(scope="module")
def dvid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DVIDServerProcess]:
    server = start_server(log=tmp_path_factory.mktemp("dvid") / "server.log")
    yield server
    server.stop()


def test_dvid_undo_of_a_merge_after_splitting_the_merged_body(dvid: DVIDServerProcess) -> None:
    # DVID's split gives each split supervoxel two new ids; the merge's undo must map those,
    # not the supervoxels the merged body had before, back to their old body
    repo = DVIDRepo.create(dvid.url, alias="journey-merge-split-undo")
    url = repo.url("seg")
    v = voxgate.create(url, shape=SHAPE, chunks=(16, 16, 16), dtype="uint64",
                       voxel_size=(8, 8, 8), kind="segmentation")  # labelmap: multiples of 16
    v[:] = labels()
    v = voxgate.open(url, mode="r+")
    m = voxgate.merge(v, [7, 9])
    assert m.provenance is not None and m.provenance.path == "server"
    merged = brute_relabel(labels(), {9: 7})
    assert np.array_equal(v.read(), merged)
    s = voxgate.split(v, 7)
    pieces, _ = split_pieces(merged, 7)
    after = v.read()
    assert set(np.unique(after[pieces == 1]).tolist()) == {7}
    assert len(s.new_ids) == 2 and min(s.new_ids) > BIG
    voxgate.undo(v)
    assert v.read().tobytes() == merged.tobytes()
    voxgate.undo(v)
    assert v.read().tobytes() == labels().tobytes()


def test_predict_from_a_tiff_stack_into_precomputed_read_by_cloudvolume(tmp_path: Path) -> None:
    from cloudvolume import CloudVolume

    from tests.services.onnx_models import conv_model, run_whole

    rng = np.random.default_rng(3)
    img = (rng.random((11, 23, 17)) * 255).astype(np.uint8)
    src = f"tiff://{tmp_path}/stack.tif"
    v = voxgate.create(src, shape=img.shape, chunks=(1, 16, 16), dtype="uint8",
                       voxel_size=(40, 8, 8), offset=(2, 3, 5))
    v[:] = img
    model = conv_model(tmp_path / "pool.onnx", layers=3, pool=True, seed=2)  # size step 2
    out = voxgate.predict(str(model), src, f"precomputed://{tmp_path}/out", block=(6, 8, 8),
                          progress=False)
    assert out.bounds == voxgate.Box((2, 3, 5), (13, 26, 22))
    want = np.rint(np.clip(run_whole(model, img, (2, 2, 2)), 0, 1) * 255).astype(np.uint8)
    cv = CloudVolume(f"file://{tmp_path}/out", mip=0)
    assert tuple(cv.bounds.minpt) == (5, 3, 2) and tuple(cv.resolution) == (8, 8, 40)
    got = np.asarray(cv[cv.bounds.to_slices()])[..., 0].T   # (x, y, z) -> (z, y, x)
    assert np.abs(got.astype(int) - want).max() <= 1

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    two = f"zarr://{tmp_path}/two.zarr"
    voxgate.create(two, shape=img.shape, chunks=(4, 8, 8), dtype="uint8", voxel_size=(40, 8, 8),
                   num_channels=2)
    wrong_type = conv_model(tmp_path / "int.onnx", input_type="INT64")
    for k, (mdl, source, match) in enumerate([(bad, src, "not an ONNX model"),
                                              (model, two, "single-channel"),
                                              (wrong_type, src, "float32")]):
        with pytest.raises(voxgate.errors.InvalidRequestError, match=match):
            voxgate.predict(str(mdl), source, f"precomputed://{tmp_path}/bad{k}", progress=False)
        assert not (tmp_path / f"bad{k}").exists()              # nothing written
