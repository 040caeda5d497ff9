"""voxgate.copy on odd geometry: views of a coarser scale, views a copy cannot carry, reruns
after the source or the destination changed, existing destinations on other write grids.
Destinations are read back with the store's own library (zarr-python, tensorstore, h5py,
cloud-volume) and compared with the source's numpy arrays."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
import voxgate.transfer
from voxgate.errors import InvalidRequestError, PartialWriteError

SHAPE = (37, 70, 53)
OFFSET = (3, 5, 7)
BIG = 2**53 + 1  # ids above 2**53: a float on the way would change them


def _ids(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = rng.integers(BIG, 2**64 - 1, size=shape, dtype=np.uint64, endpoint=True)
    out[..., : shape[-1] // 3] = BIG  # a run of one id, as segmentations have
    return out


def _source(root: Path, name: str = "src") -> tuple[voxgate.Volume, list[np.ndarray]]:
    """A two-scale uint64 zarr segmentation of odd shape with an offset, chunks 8x16x16."""
    vol = voxgate.create(f"zarr://{root}/{name}.zarr", shape=SHAPE, dtype="uint64",
                         chunks=(8, 16, 16), voxel_size=(40, 8, 8), kind="segmentation",
                         num_scales=2, offset=OFFSET)
    levels = [_ids(SHAPE, 1), _ids(tuple(vol.at_scale(1).shape), 2)]
    vol[:] = levels[0]
    vol.at_scale(1)[:] = levels[1]
    return vol, levels


def _tensorstore(spec: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    import tensorstore as ts

    arr = ts.open(spec, open=True, read=True).result().read().result()
    if arr.ndim == 4:  # precomputed: x, y, z, channel
        arr = arr[..., 0]
    return arr if arr.shape == shape else arr.T  # N5 lists its dimensions x first


def _oracle(kind: str, root: Path, name: str, scale: int, shape: tuple[int, ...]) -> np.ndarray:
    """Scale ``scale`` of a destination, read by the store's own library, as a ZYX array."""
    if kind == "hdf5":
        import h5py

        with h5py.File(root / f"{name}.h5", "r") as f:
            return np.asarray(f[f"v/s{scale}"])
    if kind == "zarr2":
        import zarr

        return np.asarray(zarr.open_array(str(root / f"{name}.zarr" / str(scale)), mode="r")[:])
    if kind == "n5":
        return _tensorstore({"driver": "n5", "kvstore": f"file://{root}/{name}.n5/s{scale}"},
                            shape)
    return _tensorstore({"driver": "neuroglancer_precomputed", "kvstore": f"file://{root}/{name}",
                         "scale_index": scale}, shape)


URLS = {
    "zarr2": lambda root, name: f"zarr://{root}/{name}.zarr",
    "n5": lambda root, name: f"n5://{root}/{name}.n5",
    "hdf5": lambda root, name: f"hdf5://{root}/{name}.h5#/v",
    "precomputed-sharded": lambda root, name: f"precomputed://file://{root}/{name}",
}
CREATE = {"zarr2": {"zarr_format": 2}, "precomputed-sharded": {"sharded": True}}


@pytest.mark.parametrize("kind", list(URLS))
def test_a_view_into_an_existing_destination_on_another_grid(tmp_path: Path, kind: str) -> None:
    """Chunks 13x11x17 (sharded: whole shards) divide neither the shape nor the source's
    8x16x16 chunks; every scale's region arrives, ids above 2**53 intact, the rest stays 0."""
    src, levels = _source(tmp_path)
    url = URLS[kind](tmp_path, "dst")
    voxgate.create(url, shape=SHAPE, dtype="uint64", chunks=(13, 11, 17), voxel_size=(40, 8, 8),
                   kind="segmentation", num_scales=2, offset=OFFSET, **CREATE.get(kind, {}))
    view = src[3:30, 5:60, 7:50]
    report = voxgate.copy(view, url, workers=2, progress=False)
    assert not report.created and report.scales == [0, 1]
    want = np.zeros_like(levels[0])
    want[3:30, 5:60, 7:50] = levels[0][3:30, 5:60, 7:50]
    np.testing.assert_array_equal(_oracle(kind, tmp_path, "dst", 0, SHAPE), want)
    # scale 1 (factors 1, 2, 2): at least the voxels the region covers, nothing outside
    # them beyond one voxel of rounding at the odd x extent
    got = _oracle(kind, tmp_path, "dst", 1, levels[1].shape)
    inner = (slice(3, 30), slice(3, 30), slice(4, 25))
    np.testing.assert_array_equal(got[inner], levels[1][inner])
    outer = np.ones(got.shape, bool)
    outer[3:30, 2:30, 3:26] = False
    assert not got[outer].any()


def test_a_view_of_a_coarser_scale_copies_that_region(tmp_path: Path) -> None:
    """``vol.at_scale(1)[...]`` names scale-1 voxels: they are copied exactly, and scale 0
    copies the scale-0 voxels covering them (the view's box was taken as a scale-0 box)."""
    src, levels = _source(tmp_path)
    view = src.at_scale(1)[2:20, 5:30, 5:20]
    dst = f"zarr://{tmp_path}/dst.zarr"
    voxgate.copy(view, dst, progress=False, zarr_format=2)
    s1 = _oracle("zarr2", tmp_path, "dst", 1, levels[1].shape)
    want = np.zeros_like(levels[1])
    want[2:20, 5:30, 5:20] = levels[1][2:20, 5:30, 5:20]
    np.testing.assert_array_equal(s1, want)
    s0 = _oracle("zarr2", tmp_path, "dst", 0, SHAPE)
    # scale 0 y and x are halved at scale 1 (53 -> 27 in x: a factor of 53/27 there)
    np.testing.assert_array_equal(s0[2:20, 10:60, 10:39], levels[0][2:20, 10:60, 10:39])
    assert not s0[:2].any() and not s0[20:].any() and not s0[:, :9].any()
    # only scale 1 of the same view, into a fresh destination
    voxgate.copy(view, f"zarr://{tmp_path}/only1.zarr", scales=[1], progress=False,
                 zarr_format=2)
    np.testing.assert_array_equal(_oracle("zarr2", tmp_path, "only1", 1, levels[1].shape), want)
    assert not _oracle("zarr2", tmp_path, "only1", 0, SHAPE).any()


def test_views_a_copy_cannot_carry_are_refused(tmp_path: Path) -> None:
    """A channel picked, a step, or part of the destination: refused before anything is
    created or written (all three were copied as the whole volume)."""
    rng = np.random.default_rng(4)
    data = rng.integers(1, 255, size=(3, *SHAPE), dtype=np.uint8)
    src = voxgate.create(f"zarr://{tmp_path}/rgb.zarr", shape=SHAPE, dtype="uint8",
                         chunks=(8, 16, 16), voxel_size=(40, 8, 8), num_channels=3,
                         offset=OFFSET)
    src[:] = data
    for view, words in ((src[1], "selects channels"), (src[0:2, 3:30], "selects channels"),
                        (src[:, ::2], "strided"), (src[:, :, 1:60:3], "strided")):
        dst = tmp_path / "never.zarr"
        with pytest.raises(InvalidRequestError, match=words):
            voxgate.copy(view, f"zarr://{dst}", progress=False)
        assert not dst.exists()
    # the whole channel axis of a region is fine, and multi-channel data arrives whole
    voxgate.copy(src[:, 3:30, 5:60, 7:50], f"hdf5://{tmp_path}/rgb.h5#/v", progress=False)
    import h5py

    with h5py.File(tmp_path / "rgb.h5", "r") as f:
        node = f["v"]  # one scale: the dataset itself
        got = np.asarray(node if isinstance(node, h5py.Dataset) else node["s0"])
    want = np.zeros_like(data)
    want[:, 3:30, 5:60, 7:50] = data[:, 3:30, 5:60, 7:50]
    np.testing.assert_array_equal(got, want)

    # part of an existing destination as the destination: refused, the destination untouched
    seg, levels = _source(tmp_path, "seg")
    dst_url = f"precomputed://file://{tmp_path}/pre"
    voxgate.copy(seg, dst_url, progress=False)
    before = {p: p.read_bytes() for p in (tmp_path / "pre").rglob("*") if p.is_file()}
    other, _ = _source(tmp_path, "other")
    with pytest.raises(InvalidRequestError, match="view of part"):
        voxgate.copy(other[0:8], voxgate.open(dst_url, mode="r+")[0:8], progress=False)
    # and a destination of another shape: refused, untouched
    small = voxgate.create(f"n5://{tmp_path}/small.n5", shape=(37, 70, 52), dtype="uint64",
                           chunks=(8, 16, 16), voxel_size=(40, 8, 8), kind="segmentation",
                           offset=OFFSET)
    with pytest.raises(InvalidRequestError, match="must match"):
        voxgate.copy(other, small.url, progress=False)
    assert not small.read().any()
    after = {p: p.read_bytes() for p in (tmp_path / "pre").rglob("*") if p.is_file()}
    assert after == before
    np.testing.assert_array_equal(_oracle("precomputed", tmp_path, "pre", 0, SHAPE), levels[0])


class _FailingWrites:
    """Patches a Remote class's write to raise at its ``fail_at``-th call (0: never) and
    counts the writes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: Any, fail_at: int) -> None:
        self.calls, self.fail_at, real = 0, fail_at, cls.write

        def write(remote: Any, *args: Any, **kwargs: Any) -> None:
            self.calls += 1
            if self.calls == self.fail_at:
                raise RuntimeError("disk on fire")
            real(remote, *args, **kwargs)

        monkeypatch.setattr(cls, "write", write)


def _journal_blocks() -> set[tuple[int, ...]]:
    [journal] = (Path(os.environ["VOXGATE_STATE_DIR"]) / "transfers").glob("*.journal")
    return voxgate.transfer._Journal.read_done(journal)[0]


def test_a_rerun_after_the_source_changed_rewrites_stale_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With verify=True, blocks an interrupted run finished are compared again on the rerun:
    the ones whose source changed (new ids, or now all 0 in a destination the copy created,
    where 0 blocks are otherwise not written) are copied again, the others are not written
    again."""
    from voxgate.remotes.precomputed import PrecomputedRemote

    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)  # one block per chunk
    src, levels = _source(tmp_path)
    dst = f"precomputed://file://{tmp_path}/dst"  # compressed_segmentation
    _FailingWrites(monkeypatch, PrecomputedRemote, 7)
    with pytest.raises(PartialWriteError) as info:
        voxgate.copy(src, dst, workers=1, progress=False)
    done = _journal_blocks()
    written = info.value.written
    assert len(done) == len(written) == 6
    # the source changes: two finished blocks and one block not yet copied
    new0 = levels[0].copy()
    renamed, emptied = written[1], written[4]
    for box, value in ((renamed, 2**63 + 5), (emptied, 0)):
        sl = tuple(slice(a - o, b - o) for a, b, o in zip(box.start, box.stop, OFFSET,
                                                          strict=True))
        new0[sl] = value
    new0[-5:, -7:, -3:] = 2**64 - 1
    src[:] = new0

    writes = _FailingWrites(monkeypatch, PrecomputedRemote, 0)
    report = voxgate.copy(src, dst, workers=2, progress=False, verify=True)
    from cloudvolume import CloudVolume

    for k, want in enumerate((new0, levels[1])):
        cv = CloudVolume(f"file://{tmp_path}/dst", mip=k, progress=False)
        got = np.asarray(cv[:, :, :])[..., 0].T
        np.testing.assert_array_equal(got, want)
    assert not voxgate.transfer.list_journals()
    assert report.resumed
    assert report.blocks_skipped == len(done) - 2  # the unchanged finished blocks
    assert report.blocks_written + report.blocks_skipped == report.blocks_total
    assert writes.calls == report.blocks_written - report.blocks_empty
    assert report.blocks_changed == 2
    assert "2 finished block(s) differed from the source" in str(report)


def test_a_rerun_after_the_destination_was_deleted_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal of a destination that no longer exists is not trusted: the copy creates
    the destination again and copies every block (it skipped the journal's blocks and left
    them absent)."""
    from voxgate.remotes.zarr import ZarrRemote

    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
    src, levels = _source(tmp_path)
    dst = f"zarr://{tmp_path}/dst.zarr"  # zarr v3, OME-Zarr multiscales
    _FailingWrites(monkeypatch, ZarrRemote, 5)
    with pytest.raises(PartialWriteError):
        voxgate.copy(src, dst, workers=1, progress=False)
    assert len(_journal_blocks()) == 4
    shutil.rmtree(tmp_path / "dst.zarr")
    _FailingWrites(monkeypatch, ZarrRemote, 0)
    report = voxgate.copy(src, dst, workers=2, progress=False)
    for k in (0, 1):
        got = _tensorstore({"driver": "zarr3", "kvstore": f"file://{tmp_path}/dst.zarr/{k}"},
                           levels[k].shape)
        np.testing.assert_array_equal(got, levels[k])
    assert report.created and not report.resumed and report.blocks_skipped == 0


def test_a_rerun_into_an_unchanged_destination_writes_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check of finished blocks writes nothing when nothing changed (N5, an existing
    destination on a 13x11x17 grid, a region of both scales)."""
    from voxgate.remotes.n5 import N5Remote

    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
    src, levels = _source(tmp_path)
    url = f"n5://{tmp_path}/dst.n5"
    voxgate.create(url, shape=SHAPE, dtype="uint64", chunks=(13, 11, 17), voxel_size=(40, 8, 8),
                   kind="segmentation", num_scales=2, offset=OFFSET)
    box = voxgate.Box((6, 15, 14), (33, 70, 57))  # dataset coordinates
    _FailingWrites(monkeypatch, N5Remote, 9)
    with pytest.raises(PartialWriteError):
        voxgate.copy(src, url, box=box, workers=1, progress=False)
    done = _journal_blocks()
    writes = _FailingWrites(monkeypatch, N5Remote, 0)
    report = voxgate.copy(src, url, box=box, workers=2, progress=False)
    assert report.resumed
    assert report.blocks_skipped == len(done) == 8
    assert writes.calls == report.blocks_written == report.blocks_total - 8
    want = np.zeros_like(levels[0])
    want[3:30, 10:65, 7:50] = levels[0][3:30, 10:65, 7:50]
    np.testing.assert_array_equal(_oracle("n5", tmp_path, "dst", 0, SHAPE), want)
    shutil.rmtree(tmp_path / "dst.n5")


def test_a_rerun_without_verify_skips_the_journal_and_cp_verify_checks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default a rerun trusts the journal (no read of the finished part, so a source
    changed in between is not seen: documented); `voxgate cp --verify` checks the finished
    blocks and copies the changed one again."""
    from click.testing import CliRunner

    from voxgate.cli import main
    from voxgate.remotes.zarr import ZarrRemote

    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
    src, levels = _source(tmp_path)
    dst = f"zarr://{tmp_path}/dst.zarr"
    _FailingWrites(monkeypatch, ZarrRemote, 5)
    with pytest.raises(PartialWriteError) as info:
        voxgate.copy(src, dst, workers=1, progress=False, zarr_format=2)
    changed = info.value.written[0]
    new0 = levels[0].copy()
    new0[tuple(slice(a - o, b - o) for a, b, o in zip(changed.start, changed.stop, OFFSET,
                                                      strict=True))] = 2**63 + 9
    src[:] = new0
    reads = {"n": 0}
    real_read = ZarrRemote.read

    def counting_read(remote: Any, *args: Any, **kwargs: Any) -> Any:
        reads["n"] += 1
        return real_read(remote, *args, **kwargs)

    monkeypatch.setattr(ZarrRemote, "read", counting_read)
    _FailingWrites(monkeypatch, ZarrRemote, 4)  # this rerun is interrupted too
    with pytest.raises(PartialWriteError):
        voxgate.copy(src, dst, workers=1, progress=False)
    # the finished blocks were neither read nor written: only the others (3 written, 1 failed)
    assert reads["n"] == 4
    _FailingWrites(monkeypatch, ZarrRemote, 0)
    out = CliRunner().invoke(main, ["cp", "--verify", "--no-progress", src.url, dst])
    assert out.exit_code == 0, out.output
    assert "1 finished block(s) differed from the source" in out.output
    for k, want in enumerate((new0, levels[1])):
        np.testing.assert_array_equal(_oracle("zarr2", tmp_path, "dst", k, want.shape), want)


def test_a_box_copies_only_the_coarse_voxels_it_covers_at_odd_extents(tmp_path: Path) -> None:
    """Scale 1 of an odd extent is not scale 0 divided by the shapes' ratio (53 halved is 27:
    53 / 27 = 1.96): the box's voxels at scale 1 come from the factor 2, so a box ending at
    scale-0 voxel 26 (relative) writes scale-1 voxels up to 13, never the 14th, of an existing
    destination."""
    src, levels = _source(tmp_path)
    url = f"n5://{tmp_path}/dst.n5"
    dst = voxgate.create(url, shape=SHAPE, dtype="uint64", chunks=(8, 16, 16),
                         voxel_size=(40, 8, 8), kind="segmentation", num_scales=2,
                         offset=OFFSET)
    assert tuple(dst.at_scale(1).shape) == (37, 35, 27)
    sentinel = np.uint64(77)
    dst.at_scale(1)[:] = np.full((37, 35, 27), sentinel, np.uint64)
    box = voxgate.Box(OFFSET, (OFFSET[0] + 37, OFFSET[1] + 70, OFFSET[2] + 26))
    voxgate.copy(src, url, box=box, progress=False)
    got = _oracle("n5", tmp_path, "dst", 1, (37, 35, 27))
    np.testing.assert_array_equal(got[:, :, :13], levels[1][:, :, :13])
    assert (got[:, :, 13:] == sentinel).all(), "scale-1 voxels outside the box were written"


def test_a_destination_stating_another_voxel_size_is_warned_about(tmp_path: Path) -> None:
    """The voxels are copied (a destination may state none of its own), with a warning naming
    both sizes; the same size in another unit is no mismatch."""
    import warnings

    from voxgate.errors import VoxgateWarning

    src, levels = _source(tmp_path)
    other = voxgate.create(f"zarr://{tmp_path}/other.zarr", shape=SHAPE, dtype="uint64",
                           chunks=(8, 16, 16), voxel_size=(40, 4, 4), kind="segmentation",
                           offset=OFFSET)
    with pytest.warns(VoxgateWarning, match=r"\(40.0, 4.0, 4.0\) nm.*\(40.0, 8.0, 8.0\) nm"):
        voxgate.copy(src, other.url, scales=[0], progress=False)
    np.testing.assert_array_equal(other.read(), levels[0])
    same = voxgate.create(f"n5://{tmp_path}/same.n5", shape=SHAPE, dtype="uint64",
                          chunks=(8, 16, 16),
                          voxel_size=voxgate.VoxelSize(0.04, 0.008, 0.008, "um"),
                          kind="segmentation", offset=OFFSET)
    assert same.voxel_size.unit == "um"
    with warnings.catch_warnings():
        warnings.simplefilter("error", VoxgateWarning)
        voxgate.copy(src, same.url, scales=[0], progress=False)
    np.testing.assert_array_equal(same.read(), levels[0])


def test_an_empty_box_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    """Before: an empty destination was created and 0 chunks "copied"."""
    src, _ = _source(tmp_path)
    box = voxgate.Box(OFFSET, (OFFSET[0], OFFSET[1] + 4, OFFSET[2] + 4))
    with pytest.raises(InvalidRequestError, match="holds no voxels"):
        voxgate.copy(src, f"zarr://{tmp_path}/dst.zarr", box=box, progress=False)
    assert not (tmp_path / "dst.zarr").exists()


def test_the_same_copy_with_its_create_options_run_again_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy that created its destination with options (``compression="zstd"``, ``cp
    --compression``) and was interrupted is finished by running the very same call again; it
    was refused ("options only apply when copy creates the destination").  Options on a
    destination no unfinished copy of this source made are still refused, before anything is
    written."""
    from voxgate.remotes.zarr import ZarrRemote

    monkeypatch.setattr(voxgate.transfer, "BLOCK_BYTES", 1)
    src, levels = _source(tmp_path)
    dst = f"zarr://{tmp_path}/dst.zarr"
    _FailingWrites(monkeypatch, ZarrRemote, 5)
    with pytest.raises(PartialWriteError):
        voxgate.copy(src, dst, workers=1, progress=False, compression="zstd")
    done = _journal_blocks()
    assert len(done) == 4
    _FailingWrites(monkeypatch, ZarrRemote, 0)
    report = voxgate.copy(src, dst, workers=2, progress=False, compression="zstd")
    assert report.resumed and report.blocks_skipped == 4 and not report.created
    for k in (0, 1):
        got = _tensorstore({"driver": "zarr3", "kvstore": f"file://{tmp_path}/dst.zarr/{k}"},
                           levels[k].shape)
        np.testing.assert_array_equal(got, levels[k])
    # finished (its journal is gone): the options are refused again, and so they are on a
    # destination another copy made
    other = voxgate.create(f"zarr://{tmp_path}/other.zarr", shape=SHAPE, dtype="uint64",
                           chunks=(8, 16, 16), voxel_size=(40, 8, 8), offset=OFFSET,
                           num_scales=2, kind="segmentation")
    for where in (dst, other.url):
        with pytest.raises(InvalidRequestError, match="only apply when copy creates"):
            voxgate.copy(src, where, progress=False, compression="zstd")
    assert not other.read().any()
