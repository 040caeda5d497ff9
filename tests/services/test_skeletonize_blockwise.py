"""skeletonize block by block: one connected skeleton per segment across block faces, close to
the whole-volume skeleton, the same dust, the same result serially, on processes and on a
dask.distributed cluster, bounded reads, progress."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.formats.skeleton import Skeleton
from voxgate.geometry import Box
from voxgate.services import skeletonize
from voxgate.services._common import as_volume
from voxgate.synthetic import synthetic_neurites

# the module, not the function services/__init__ exports under the same name
skmod = importlib.import_module("voxgate.services.skeletonize")

VS = (40, 8, 8)  # z, y, x nm
SHAPE = (64, 128, 192)
BLOCK = (32, 32, 64)  # faces cut both lanes in z and y (mid-lane) and every tube in x


def components(sk: Skeleton) -> int:
    n = sk.num_vertices
    graph = coo_matrix((np.ones(sk.num_edges), (sk.edges[:, 0], sk.edges[:, 1])), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])


def ends_and_branches(sk: Skeleton) -> tuple[int, int]:
    degree = np.bincount(sk.edges.ravel(), minlength=sk.num_vertices)
    return int((degree == 1).sum()), int((degree >= 3).sum())


def labels_at(sk: Skeleton, labels: np.ndarray, origin: tuple[int, int, int] = (0, 0, 0)
              ) -> np.ndarray:
    """The label under each vertex (vertices sit at voxel centres: (index + 0.5) * size)."""
    xyz = np.floor(sk.vertices / np.array(VS[::-1], dtype=np.float32)).astype(np.int64)
    zyx = xyz[:, ::-1] - np.asarray(origin)
    return labels[zyx[:, 0], zyx[:, 1], zyx[:, 2]]


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_blockwise_skeletons_are_whole_and_close_to_the_whole_volume_ones(seed: int) -> None:
    labels = synthetic_neurites(SHAPE, lanes=(1, 2), seed=seed)
    whole = skeletonize(labels, voxel_size=VS)
    blocks = skeletonize(labels, voxel_size=VS, block=BLOCK)
    assert whole.provenance.details["blocks"] == 1
    assert blocks.provenance.details["blocks"] == 2 * 4 * 3
    assert sorted(blocks) == sorted(whole) == [1, 2]
    for i in whole:
        w, b = whole[i], blocks[i]
        # the segment really crosses faces in all three axes
        zz, yy, xx = np.nonzero(labels == i)
        assert zz.min() < 32 <= zz.max() and xx.min() < 64 and xx.max() >= 128
        assert yy.min() < 32 * (1 + 2 * (i - 1)) <= yy.max()
        assert components(w) == 1
        assert components(b) == 1, f"segment {i} falls apart at block faces"
        assert (labels_at(b, labels) == i).all()  # every vertex inside its segment
        assert b.num_edges == b.num_vertices - 1  # a tree: loops on faces were cut
        assert b.cable_length() == pytest.approx(w.cable_length(), rel=0.10)
        (we, wb), (be, bb) = ends_and_branches(w), ends_and_branches(b)
        assert abs(be - we) <= 1 and abs(bb - wb) <= 1, (seed, i, (we, wb), (be, bb))


def test_without_pruning_faces_leave_spurs() -> None:
    """What the face-tick pruning is for: the same run without it has more ends."""
    labels = synthetic_neurites(SHAPE, lanes=(1, 2), seed=2)
    region = Box.from_shape(SHAPE)
    pieces: dict[int, list[Any]] = {}
    for core in skmod.block_boxes(region, skmod.Vec(*BLOCK)):
        ext = Box(core.start, core.stop + skmod._ONE).intersect(region)
        for i, p in skmod.block_pieces(labels[ext.slices()], tuple(ext.start), core,
                                       VS).items():
            pieces.setdefault(i, []).append(p)
    faces = tuple(np.arange(b, n, b) for b, n in zip(BLOCK, SHAPE, strict=True))
    ends_raw = sum(ends_and_branches(skmod._join(p, VS, 100, i))[0] for i, p in pieces.items())
    ends = sum(ends_and_branches(skmod._join(p, VS, 100, i, faces))[0]
               for i, p in pieces.items())
    ends_whole = sum(ends_and_branches(s)[0]
                     for s in skeletonize(labels, voxel_size=VS).values())
    assert ends_raw > ends >= ends_whole - 1


def test_dust_is_decided_on_whole_components_not_pieces() -> None:
    labels = np.zeros((32, 32, 32), np.uint64)
    labels[14:18, 14:18, 14:18] = 5  # 64 voxels around a block corner: 8 pieces of 8
    labels[2:5, 2:5, 14:18] = 6  # 36 voxels across one face: 2 pieces of 18
    labels[20:30, 22, 4:30] = 7  # a 260-voxel plate crossing faces in z and x
    for dust, kept in ((50, [5, 7]), (10, [5, 6, 7]), (100, [7]), (300, [])):
        whole = skeletonize(labels, voxel_size=VS, dust_threshold=dust)
        blocks = skeletonize(labels, voxel_size=VS, dust_threshold=dust, block=(16, 16, 16))
        assert sorted(whole) == kept, dust
        assert sorted(blocks) == kept, dust
        for i in kept:
            assert components(blocks[i]) == 1
            assert (labels_at(blocks[i], labels) == i).all()


def test_ids_limit_the_work_and_missing_ones_come_back_empty() -> None:
    labels = synthetic_neurites(SHAPE, lanes=(1, 2), seed=1)
    both = skeletonize(labels, voxel_size=VS, block=BLOCK)
    one = skeletonize(labels, [2, 99], voxel_size=VS, block=BLOCK)
    assert sorted(one) == [2, 99]
    assert one[2] == both[2]
    assert one[99].num_vertices == 0


def test_a_view_with_an_offset_keeps_world_coordinates() -> None:
    labels = synthetic_neurites(SHAPE, lanes=(1, 2), seed=1)
    vol = as_volume(labels, voxel_size=VS)
    view = vol[5:61, 10:120, 7:190]
    sub = labels[5:61, 10:120, 7:190]
    whole = skeletonize(view)
    blocks = skeletonize(view, block=BLOCK)
    assert sorted(blocks) == sorted(whole)
    for i in whole:
        assert components(blocks[i]) == 1
        assert (labels_at(blocks[i], sub, origin=(5, 10, 7)) == i).all()
        assert blocks[i].cable_length() == pytest.approx(whole[i].cable_length(), rel=0.15)


def test_large_regions_go_block_wise_and_reads_stay_bounded(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    labels = synthetic_neurites(SHAPE, lanes=(1, 2), seed=1)
    vol = as_volume(labels, voxel_size=VS)
    reads: list[Box] = []
    read = vol.remote.read

    def recording(box: Box, scale: int = 0) -> np.ndarray:
        reads.append(box)
        return read(box, scale)

    monkeypatch.setattr(vol.remote, "read", recording)
    # a region of more than WHOLE_BYTES of labels runs in blocks of about BLOCK_BYTES
    monkeypatch.setattr(skmod, "WHOLE_BYTES", labels.nbytes - 1)
    monkeypatch.setattr(skmod, "BLOCK_BYTES", 2**20)
    result = skeletonize(vol)
    assert result.provenance.details["blocks"] > 4
    largest = max(b.size for b in reads)
    block = result.provenance.details["block"]
    assert largest <= np.prod(np.asarray(block) + 1) <= 2**20 // 8 * 2
    assert len(reads) == result.provenance.details["blocks"]  # each block read once
    assert all(components(s) == 1 for s in result.values())


def test_serial_processes_and_dask_give_the_same_skeletons(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    labels = synthetic_neurites(SHAPE, lanes=(1, 2), seed=0)
    url = f"zarr://{tmp_path}/seg.zarr"
    seg = voxgate.create(url, shape=SHAPE, dtype="uint64", chunks=BLOCK, voxel_size=VS,
                         kind="segmentation")
    seg[:] = labels
    serial = skeletonize(url, block=BLOCK)
    assert serial.provenance.details["scheduler"] == "serial"
    procs = skeletonize(url, block=BLOCK, workers=2)
    assert procs.provenance.details["scheduler"] == "processes"
    in_memory = skeletonize(labels, voxel_size=VS, block=BLOCK, workers=2)  # blocks sent over
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        on_dask = skeletonize(url, block=BLOCK, client=client)
    assert on_dask.provenance.details["scheduler"] == "distributed"
    assert sorted(serial) == sorted(procs) == sorted(in_memory) == sorted(on_dask) == [1, 2]
    for i in serial:
        assert serial[i].num_vertices > 50
        assert procs[i] == serial[i]
        assert in_memory[i] == serial[i]
        assert on_dask[i] == serial[i]


def test_progress_bar_counts_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    labels = synthetic_neurites(SHAPE, lanes=(1, 2), seed=0)
    skeletonize(labels, voxel_size=VS, block=BLOCK, progress=True)
    out = capsys.readouterr()
    assert "skeletonize" in out.out + out.err
    assert "24/24" in out.out + out.err
    skeletonize(labels, voxel_size=VS, block=BLOCK)
    quiet = capsys.readouterr()
    assert "skeletonize" not in quiet.out + quiet.err


def test_bad_block_workers_and_client_say_what_is_expected() -> None:
    labels = synthetic_neurites(SHAPE, lanes=(1, 2), seed=0)
    with pytest.raises(InvalidRequestError, match="three positive integers"):
        skeletonize(labels, voxel_size=VS, block=(0, 32, 32))
    with pytest.raises(InvalidRequestError, match="three positive integers"):
        skeletonize(labels, voxel_size=VS, block=(32, 32))
    with pytest.raises(InvalidRequestError, match="workers must be an integer >= 1"):
        skeletonize(labels, voxel_size=VS, block=BLOCK, workers=0)
    with pytest.raises(InvalidRequestError, match="open by URL"):
        skeletonize(labels, voxel_size=VS, block=BLOCK, client=object())
