"""The proofreading Service's table of where each id is (label statistics per volume) kept
every volume proofread in the process: a script merging in one volume after another held the
id table of each for good.  Now the volumes used last are kept (at most _STATS_KEPT volumes
and _STATS_IDS ids in all, the newest always), and an edit of a volume dropped meanwhile
computes its table again and edits right."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

import voxgate

core = importlib.import_module("voxgate.services.proofread.core")

SHAPE = (4, 12, 12)


def _labels(seed: int) -> np.ndarray:
    """36 ids (1..36) in 2 x 2 x 2 blocks, shuffled by ``seed``."""
    rng = np.random.default_rng(seed)
    blocks = rng.permutation(np.arange(1, 37)).reshape(2, 6, 3)
    return np.kron(blocks, np.ones((2, 2, 4), dtype=np.int64)).astype(np.uint32)


def _make(path: Path, seed: int) -> voxgate.Volume:
    v = voxgate.create(f"zarr://{path}", shape=SHAPE, dtype="uint32", chunks=(4, 6, 6),
                       voxel_size=(40, 8, 8), kind="segmentation")
    v[:] = _labels(seed)
    return v


def test_the_tables_of_volumes_proofread_one_after_another_are_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "_STATS", type(core._STATS)())
    monkeypatch.setattr(core, "_STATS_KEPT", 4, raising=False)
    vols = [_make(tmp_path / f"v{i}.zarr", i) for i in range(10)]
    for i, v in enumerate(vols):
        voxgate.merge(v, [1, 2], history_dir=tmp_path / "h")
        assert len(core._STATS) == min(i + 1, 4)  # (grew to 10 before)
    # the first volumes' tables were dropped: an edit of one computes its table again
    want = _labels(0)
    want[np.isin(want, [1, 2])] = 1
    want[np.isin(want, [3, 4])] = 3
    voxgate.merge(vols[0], [3, 4], history_dir=tmp_path / "h")
    np.testing.assert_array_equal(voxgate.open(vols[0].url).read(), want)
    assert len(core._STATS) == 4
    assert core._stats_key(vols[0]) in core._STATS  # (the newest is kept)


def test_ids_in_all_are_bounded_and_the_newest_is_always_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "_STATS", type(core._STATS)())
    monkeypatch.setattr(core, "_STATS_IDS", 50, raising=False)  # (each volume holds 36 ids)
    vols = [_make(tmp_path / f"w{i}.zarr", 10 + i) for i in range(3)]
    for v in vols:
        voxgate.merge(v, [5, 6], history_dir=tmp_path / "h")
        assert list(core._STATS) == [core._stats_key(v)]
    # (fewer than one volume holds: still kept)
    monkeypatch.setattr(core, "_STATS_IDS", 10, raising=False)
    voxgate.merge(vols[0], [7, 8], history_dir=tmp_path / "h")
    assert list(core._STATS) == [core._stats_key(vols[0])]
    got = voxgate.open(vols[0].url).read()
    want = _labels(10)
    want[np.isin(want, [5, 6])] = 5
    want[np.isin(want, [7, 8])] = 7
    np.testing.assert_array_equal(got, want)
