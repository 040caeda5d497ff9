"""Audit of voxgate.label_stats and voxgate.skeletonize against brute-force references.

label_stats: every id's voxel count, half-open bounding box and centroid (dataset voxel
coordinates, as docs/services/label_stats.md says) equal np.unique / np.argwhere per id, on an
odd shape with an offset that is no multiple of the chunks or blocks, anisotropic voxels,
blocks much smaller than the objects, ids above 2**53 and 2**64-1 (no float rounding), a
single voxel in corners of the volume, an all-zero volume, a view (its rows in the volume's
frame), a coarser scale, uint32 labels, one thread, several and a dask.distributed
LocalCluster giving the same table; bad input refused with voxgate errors.

skeletonize: every vertex is the centre of a voxel of its object, ``(offset + index + 0.5) *
voxel size`` nm (docs/services/skeletonize.md); a straight rod's skeleton ends at the rod's
ends; each object above the dust threshold gets one connected skeleton, block by block as in
one piece; block-wise dust is decided as the whole-volume call decides it (a segment reaching
one voxel into a block was counted short and dropped: the regression this file keeps);
serial, process and cluster runs agree; the written skeletons read back through CloudVolume;
bad input (a bogus ``client=`` was silently ignored for a region done in one piece) refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

import voxgate
from voxgate.errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    RemoteNotFoundError,
    VoxgateError,
)
from voxgate.formats.skeleton import Skeleton
from voxgate.geometry import VoxelSize

SHAPE = (23, 37, 29)
OFFSET = (5, 13, 7)  # no multiple of the chunks (8) or of any block used here
VS = (40.0, 4.0, 6.0)  # z, y, x nm
BIG = 2**60 + 12345


# -- references ------------------------------------------------------------------------------
def brute_stats(labels: np.ndarray, origin: tuple[int, ...] = (0, 0, 0)) -> dict[int, tuple]:
    """{id: (count, lo, hi, centroid)} per non-zero id, by np.unique and np.argwhere."""
    o = np.asarray(origin, dtype=np.int64)
    out = {}
    for v in np.unique(labels):
        if v == 0:
            continue
        pts = np.argwhere(labels == v).astype(np.int64) + o
        out[int(v)] = (len(pts), tuple(int(c) for c in pts.min(axis=0)),
                       tuple(int(c) for c in pts.max(axis=0) + 1),
                       tuple(float(c) for c in pts.mean(axis=0)))
    return out


def assert_table(df: Any, want: dict[int, tuple]) -> None:
    assert list(df.columns) == ["id", "voxel_count", "z0", "y0", "x0", "z1", "y1", "x1",
                                "centroid_z", "centroid_y", "centroid_x"]
    assert df["id"].dtype == np.uint64
    ids = [int(i) for i in df["id"].to_numpy()]  # exact: no float on the way
    assert sorted(ids) == sorted(want) and len(ids) == len(set(ids))
    for r in df.itertuples(index=False):
        count, lo, hi, cent = want[int(r.id)]
        assert int(r.voxel_count) == count, r.id
        assert (int(r.z0), int(r.y0), int(r.x0)) == lo, r.id
        assert (int(r.z1), int(r.y1), int(r.x1)) == hi, r.id
        np.testing.assert_allclose((r.centroid_z, r.centroid_y, r.centroid_x), cent,
                                   rtol=0, atol=1e-9)


def blob_labels(seed: int = 0) -> np.ndarray:
    """Boxes spanning many blocks, ids below and above 2**53 (2**64-1 too), single voxels in
    four corners, and lines along edges of the volume."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(SHAPE, np.uint64)
    for k in range(12):
        c = rng.integers(0, SHAPE)
        r = rng.integers(3, 10, 3)
        lab[tuple(slice(max(0, c[a] - r[a]), c[a] + r[a]) for a in range(3))] = (
            BIG + 2 * k + 1 if k % 2 else k + 1)
    lab[0, 0, 0] = BIG + 1000
    lab[-1, -1, -1] = BIG + 1001
    lab[0, -1, 0] = 2**53 + 1  # a float64 would read it as 2**53
    lab[-1, 0, -1] = 2**64 - 1
    lab[0, 0, 3:20] = 2**53
    return lab


def store(tmp_path: Path, labels: np.ndarray, name: str = "seg", fmt: str = "zarr",
          **kw: Any) -> voxgate.Volume:
    vol = voxgate.create(f"{fmt}://{tmp_path}/{name}", shape=labels.shape, dtype=labels.dtype,
                         chunks=(8, 8, 8), voxel_size=VoxelSize(z=VS[0], y=VS[1], x=VS[2]),
                         kind="segmentation", offset=OFFSET, **kw)
    vol[:] = labels
    return vol


# -- label_stats ------------------------------------------------------------------------------
def test_label_stats_equals_brute_force_on_a_store_with_an_offset(tmp_path: Path) -> None:
    lab = blob_labels()
    vol = store(tmp_path, lab)
    want = brute_stats(lab, OFFSET)
    assert len(want) >= 10 and max(want) == 2**64 - 1 and 2**53 + 1 in want
    assert 0 not in want
    one = voxgate.label_stats(vol, workers=1)
    assert_table(one, want)
    for block in ((3, 5, 4), (1, 37, 2), (23, 37, 29)):  # many blocks per object, and one
        df = voxgate.label_stats(vol, block=block, workers=3)
        assert_table(df, want)
        assert df.attrs["provenance"].details["scheduler"] == "threads"
    # threads change nothing, to the bit
    assert voxgate.label_stats(vol, block=(3, 5, 4), workers=1).equals(
        voxgate.label_stats(vol, block=(3, 5, 4), workers=4))
    # the same labels as a numpy array: no offset
    assert_table(voxgate.label_stats(lab, block=(4, 4, 4)), brute_stats(lab))


def test_label_stats_of_a_view_is_in_the_volume_frame(tmp_path: Path) -> None:
    lab = blob_labels(1)
    vol = store(tmp_path, lab)
    view = vol[2:9, 3:30, 1:28]  # indices count from the view's first voxel
    sub = lab[2:9, 3:30, 1:28]
    frame = (OFFSET[0] + 2, OFFSET[1] + 3, OFFSET[2] + 1)
    assert tuple(view.bounds.start) == frame
    for block in (None, (2, 5, 3)):
        assert_table(voxgate.label_stats(view, block=block), brute_stats(sub, frame))
    # an object cut by the view gets the box of what lies inside it
    assert_table(voxgate.label_stats(view[0:1, 0:1, 0:1]), brute_stats(sub[0:1, 0:1, 0:1],
                                                                        frame))


def test_label_stats_all_zero_uint32_and_corners() -> None:
    empty = voxgate.label_stats(np.zeros(SHAPE, np.uint64), block=(5, 5, 5))
    assert len(empty) == 0
    assert empty["id"].dtype == np.uint64 and empty["voxel_count"].dtype == np.int64
    lab = np.zeros(SHAPE, np.uint32)
    corners = [(z, y, x) for z in (0, SHAPE[0] - 1) for y in (0, SHAPE[1] - 1)
               for x in (0, SHAPE[2] - 1)]
    for n, c in enumerate(corners, start=1):
        lab[c] = 2**32 - n
    lab[5:19, 6:30, 2:27] = 7
    want = brute_stats(lab)
    assert len(want) == 9
    for block in (None, (4, 4, 4), (22, 36, 28)):  # the last: corner blocks of one voxel
        df = voxgate.label_stats(lab, block=block)
        assert_table(df, want)
        corner = df.set_index("id").loc[2**32 - 8]
        assert int(corner.voxel_count) == 1 and int(corner.z0) == SHAPE[0] - 1


def test_label_stats_at_a_coarser_scale(tmp_path: Path) -> None:
    lab = blob_labels(2)
    vol = store(tmp_path, lab, fmt="precomputed", num_scales=2)
    voxgate.downsample(vol)
    coarse = vol.at_scale(1)
    arr = np.asarray(coarse.read())
    assert arr.shape == tuple(coarse.scale_meta.shape) and arr.any()
    want = brute_stats(arr, tuple(coarse.scale_meta.offset))  # the scale's own voxels
    assert_table(voxgate.label_stats(coarse), want)
    assert_table(voxgate.label_stats(coarse, block=(3, 2, 5)), want)


def test_label_stats_on_a_local_cluster_equals_threads(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    lab = blob_labels(3)
    vol = store(tmp_path, lab)
    threads = voxgate.label_stats(vol.url, block=(4, 8, 8), workers=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        spread = voxgate.label_stats(vol.url, block=(4, 8, 8), client=client)
    assert spread.attrs["provenance"].details["scheduler"] == "distributed"
    assert spread.equals(threads)
    assert_table(spread, brute_stats(lab, OFFSET))


def test_label_stats_bad_input_is_refused_clearly(tmp_path: Path) -> None:
    lab = blob_labels()
    with pytest.raises(InvalidRequestError, match="integer labels"):
        voxgate.label_stats(lab.astype(np.float32))
    with pytest.raises(InvalidRequestError, match="3-D"):
        voxgate.label_stats(lab[0])
    with pytest.raises(InvalidRequestError, match="numpy array"):
        voxgate.label_stats(lab.tolist())
    with pytest.raises(InvalidRequestError, match="negative"):
        voxgate.label_stats(-lab[:4].astype(np.int64))
    with pytest.raises(InvalidRequestError, match="prefer"):
        voxgate.label_stats(lab, prefer="fast")  # type: ignore[arg-type]
    with pytest.raises(CapabilityNotSupportedError):
        voxgate.label_stats(lab, prefer="server")
    for workers in (0, -1, 2.5, "2", True):
        with pytest.raises(InvalidRequestError, match="workers"):
            voxgate.label_stats(lab, workers=workers)  # type: ignore[arg-type]
    for block in ((0, 1, 1), (1, 1), 4, (1.5, 1, 1)):
        with pytest.raises(InvalidRequestError, match="block"):
            voxgate.label_stats(lab, block=block)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="client"):
        voxgate.label_stats(lab, client=object())
    with pytest.raises(InvalidRequestError, match="lives in this process"):  # mem:// arrays
        voxgate.label_stats(lab, client=_FakeClient())
    vol = store(tmp_path, lab)
    with pytest.raises(InvalidRequestError, match="step 1"):
        voxgate.label_stats(vol[::2])
    img = voxgate.create(f"zarr://{tmp_path}/img", shape=(4, 4, 4), dtype="uint8",
                         chunks=(4, 4, 4), voxel_size=(1, 1, 1))
    with pytest.raises(InvalidRequestError, match="image"):
        voxgate.label_stats(img)
    # a string is no flag: "no" counted the image's intensities as labels
    with pytest.raises(InvalidRequestError, match="as_labels must be True or False"):
        voxgate.label_stats(img, as_labels="no")  # type: ignore[arg-type]
    assert len(voxgate.label_stats(img, as_labels=True)) == 0  # all zero: no labels
    with pytest.raises(RemoteNotFoundError):
        voxgate.label_stats(f"zarr://{tmp_path}/nothing")
    assert all(isinstance(e, type) and issubclass(e, VoxgateError)
               for e in (InvalidRequestError, CapabilityNotSupportedError))
    assert np.array_equal(np.asarray(vol.read()), lab)  # nothing written


class _FakeClient:
    """Has what check_client looks for; never used to run anything."""

    def submit(self, *a: Any, **k: Any) -> None:
        raise AssertionError("not to be called")

    scatter = run = submit


# -- skeletonize ------------------------------------------------------------------------------
def components(sk: Skeleton) -> int:
    n = len(sk.vertices)
    e = sk.edges.astype(np.int64)
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])


def voxels_of(sk: Skeleton, vs: tuple[float, ...], offset: tuple[int, ...]) -> np.ndarray:
    """The array index (z, y, x) of each vertex, from (offset + index + 0.5) * voxel size;
    asserts every vertex is a voxel centre."""
    idx = sk.vertices.astype(np.float64)[:, ::-1] / np.asarray(vs) - 0.5 - np.asarray(offset)
    r = np.rint(idx).astype(np.int64)
    np.testing.assert_allclose(idx, r, atol=1e-3)
    return r


def assert_inside(sk: Skeleton, labels: np.ndarray, ident: int, vs: tuple[float, ...],
                  offset: tuple[int, ...]) -> None:
    r = voxels_of(sk, vs, offset)
    assert ((r >= 0) & (r < labels.shape)).all(), ident
    assert (labels[r[:, 0], r[:, 1], r[:, 2]] == ident).all(), ident


def rod_labels() -> tuple[np.ndarray, int, tuple[slice, ...]]:
    shape = (20, 24, 60)
    lab = np.zeros(shape, np.uint64)
    rid = 2**60 + 3
    rod = (slice(8, 13), slice(10, 15), slice(5, 55))  # 5 x 5 voxels, 50 long in x
    lab[rod] = rid
    return lab, rid, rod


def test_a_rods_skeleton_runs_from_end_to_end_in_world_nm(tmp_path: Path) -> None:
    lab, rid, rod = rod_labels()
    vol = store(tmp_path, lab, fmt="precomputed")
    vz, vy, vx = VS
    whole = voxgate.skeletonize(vol)
    assert list(whole) == [rid] and whole.provenance.details["blocks"] == 1
    s = whole[rid]
    assert components(s) == 1 and len(s.edges) == len(s.vertices) - 1
    assert_inside(s, lab, rid, VS, OFFSET)
    x = s.vertices[:, 0].astype(np.float64)
    # its ends are the rod's first and last voxel centres along x
    assert x.min() == pytest.approx((OFFSET[2] + rod[2].start + 0.5) * vx)
    assert x.max() == pytest.approx((OFFSET[2] + rod[2].stop - 1 + 0.5) * vx)
    # y and z stay within the rod's cross-section, in nm of their own voxel sizes
    assert s.vertices[:, 1].min() >= (OFFSET[1] + rod[1].start + 0.5) * vy
    assert s.vertices[:, 1].max() <= (OFFSET[1] + rod[1].stop - 0.5) * vy
    assert s.vertices[:, 2].min() >= (OFFSET[0] + rod[0].start + 0.5) * vz
    assert s.vertices[:, 2].max() <= (OFFSET[0] + rod[0].stop - 0.5) * vz
    # a numpy array has no offset
    arr = voxgate.skeletonize(lab, voxel_size=VS)[rid]
    np.testing.assert_allclose(arr.vertices[:, 0].min(), (rod[2].start + 0.5) * vx)
    # block by block: still one tree inside the rod; an end may be pruned by at most the
    # invalidation ball (scale * radius + const nm, kimimaro's 1.5 and 300) near a face
    for block in ((8, 8, 16), (7, 9, 13)):
        b = voxgate.skeletonize(vol, block=block)[rid]
        assert components(b) == 1 and len(b.edges) == len(b.vertices) - 1
        assert_inside(b, lab, rid, VS, OFFSET)
        ball = 1.5 * float(np.max(b.radius)) + 300.0
        bx = b.vertices[:, 0].astype(np.float64)
        assert bx.min() - x.min() <= ball and x.max() - bx.max() <= ball
        assert bx.max() - bx.min() >= 0.5 * (x.max() - x.min())


def test_every_object_gets_one_connected_skeleton_inside_it(tmp_path: Path) -> None:
    import cc3d

    lab = blob_labels(4)
    keep = np.zeros_like(lab)  # one 26-connected component per id
    for i in np.unique(lab)[1:]:
        cc = cc3d.connected_components((lab == i).astype(np.uint8), connectivity=26)
        keep[cc == np.bincount(cc.ravel())[1:].argmax() + 1] = i
    lab = keep
    vol = store(tmp_path, lab)
    ids, counts = np.unique(lab, return_counts=True)
    count = {int(i): int(c) for i, c in zip(ids, counts, strict=True) if i}
    for dust in (0, 30):
        want = sorted(i for i, c in count.items() if c > dust and c > 1)
        runs = {"whole": voxgate.skeletonize(vol, dust_threshold=dust)}
        for block in ((8, 8, 8), (5, 11, 7)):
            runs[str(block)] = voxgate.skeletonize(vol, dust_threshold=dust, block=block)
        for name, result in runs.items():
            assert sorted(result) == want, (dust, name)
            for i, s in result.items():
                assert s.id == i
                assert components(s) == 1, (dust, name, i)
                assert len(s.edges) == len(s.vertices) - 1, (dust, name, i)
                assert_inside(s, lab, i, VS, OFFSET)
    assert any(i > 2**53 for i in want)
    # ids asked by name, above 2**53 included; a missing one comes back empty
    big = max(want)
    asked = voxgate.skeletonize(vol, ids=[big, 12345], dust_threshold=0, block=(8, 8, 8))
    assert sorted(asked) == [12345, big]
    assert len(asked[12345].vertices) == 0 and len(asked[big].vertices) > 1
    with pytest.raises(RemoteNotFoundError, match="12345"):
        voxgate.skeletonize(vol, ids=[12345], strict=True)


def test_a_view_keeps_the_volume_frame(tmp_path: Path) -> None:
    lab, rid, _ = rod_labels()
    vol = store(tmp_path, lab)
    view = vol[3:17, 2:22, 10:50]  # cuts the rod's ends off
    frame = (OFFSET[0] + 3, OFFSET[1] + 2, OFFSET[2] + 10)
    for block in (None, (7, 10, 9)):
        s = voxgate.skeletonize(view, block=block)[rid]
        assert_inside(s, lab[3:17, 2:22, 10:50], rid, VS, frame)
        assert s.vertices[:, 0].min() >= (frame[2] + 0.5) * VS[2]
        assert s.vertices[:, 0].max() <= (frame[2] + 39.5) * VS[2]


def test_blockwise_dust_counts_a_segment_reaching_one_voxel_into_a_block() -> None:
    """Regression: a block whose part of a segment is one voxel traced nothing there
    (kimimaro traces no single voxel), so its voxel went uncounted and the block-wise call
    dropped a segment of dust_threshold + 1 voxels that the whole-volume call keeps."""
    lab = np.zeros((16, 8, 8), np.uint64)
    lab[0:9, 3, 3] = 7  # 9 voxels; with blocks of 8 the last is alone in the second block
    plate = np.zeros((16, 16, 16), np.uint64)
    plate[2:9, 2:9, 8] = 5  # 49 voxels; corner and edge rows alone in their blocks
    for labels, ident in ((lab, 7), (plate, 5)):
        n = int((labels == ident).sum())
        for dust, kept in ((n - 1, [ident]), (n, [])):
            whole = voxgate.skeletonize(labels, dust_threshold=dust)
            blocks = voxgate.skeletonize(labels, dust_threshold=dust, block=(8, 8, 8))
            assert sorted(whole) == kept, (ident, dust)
            assert sorted(blocks) == kept, (ident, dust)
            for s in blocks.values():
                assert components(s) == 1
                assert_inside(s, labels, ident, (1.0, 1.0, 1.0), (0, 0, 0))


def test_blockwise_dust_equals_whole_on_random_thin_segments() -> None:
    """Lines along axes and diagonals, cut by blocks of 2..7 voxels: the same ids kept as in
    one piece at every threshold around each segment's voxel count."""
    import cc3d

    rng = np.random.default_rng(11)
    for _ in range(12):
        shape = tuple(int(n) for n in rng.integers(6, 16, 3))
        lab = np.zeros(shape, np.uint64)
        for k in range(3):
            p = rng.integers(0, shape)
            step = rng.integers(-1, 2, 3)
            step[int(rng.integers(0, 3))] = 1
            for t in range(int(rng.integers(2, 12))):
                q = p + t * step
                if ((q >= 0) & (q < shape)).all():
                    lab[tuple(q)] = k + 1
        for i in (1, 2, 3):  # one component per id
            cc = cc3d.connected_components((lab == i).astype(np.uint8), connectivity=26)
            lab[(lab == i) & (cc > 1)] = 0
        block = tuple(int(n) for n in rng.integers(2, 8, 3))
        counts = [int(c) for c in np.unique(lab, return_counts=True)[1][1:]]
        for dust in sorted({max(c - 1, 0) for c in counts} | set(counts)):
            whole = sorted(voxgate.skeletonize(lab, dust_threshold=dust))
            blocks = voxgate.skeletonize(lab, dust_threshold=dust, block=block)
            assert sorted(blocks) == whole, (shape, block, dust)
            want = sorted(i for i in (1, 2, 3) if 1 < (lab == i).sum() > dust)
            assert whole == want


def test_dust_threshold_is_voxels_or_fewer() -> None:
    lab = np.zeros((20, 20, 40), np.uint64)
    lab[2:4, 2:4, 2:12] = 1  # 40 voxels
    lab[10:12, 10:12, 2:13] = 2  # 44
    lab[15:17, 15:17, 20:29] = 3  # 36
    lab[0, 19, 39] = 4  # one voxel: never traced
    for block in (None, (10, 10, 10)):
        assert sorted(voxgate.skeletonize(lab, dust_threshold=40, block=block)) == [2]
        assert sorted(voxgate.skeletonize(lab, dust_threshold=39, block=block)) == [1, 2]
        assert sorted(voxgate.skeletonize(lab, dust_threshold=0, block=block)) == [1, 2, 3]


def test_serial_processes_and_a_cluster_agree(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    lab = blob_labels(5)
    vol = store(tmp_path, lab)
    serial = voxgate.skeletonize(vol.url, block=(8, 8, 8), dust_threshold=10)
    procs = voxgate.skeletonize(vol.url, block=(8, 8, 8), dust_threshold=10, workers=2)
    assert procs.provenance.details["scheduler"] == "processes"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        spread = voxgate.skeletonize(vol.url, block=(8, 8, 8), dust_threshold=10,
                                     client=client)
    assert spread.provenance.details["scheduler"] == "distributed"
    assert sorted(serial) == sorted(procs) == sorted(spread) and len(serial) >= 5
    for i in serial:
        for other in (procs, spread):
            assert np.array_equal(other[i].vertices, serial[i].vertices)
            assert np.array_equal(other[i].edges, serial[i].edges)


def test_written_skeletons_read_back_in_cloudvolume(tmp_path: Path) -> None:
    cloudvolume = pytest.importorskip("cloudvolume")
    from voxgate.formats.skeleton import write_skeletons

    lab, rid, _ = rod_labels()
    lab[2:5, 2:20, 20:23] = 9
    lab[15:18, 1:4, 30:58] = 2**53 + 1
    vol = store(tmp_path, lab, fmt="precomputed")
    skels = voxgate.skeletonize(vol, block=(8, 8, 16))
    assert sorted(skels) == [9, 2**53 + 1, rid]
    write_skeletons(vol.url, skels)
    cv = cloudvolume.CloudVolume(f"file://{tmp_path}/seg")
    for i, s in skels.items():
        got = cv.skeleton.get(i)
        assert int(got.id) == i
        np.testing.assert_array_equal(np.asarray(got.vertices, np.float32), s.vertices)
        np.testing.assert_array_equal(np.asarray(got.edges, np.int64),
                                      s.edges.astype(np.int64))
        assert_inside(s, lab, i, VS, OFFSET)


def test_skeletonize_bad_input_is_refused_clearly(tmp_path: Path) -> None:
    lab, rid, _ = rod_labels()
    sk = voxgate.skeletonize
    with pytest.raises(InvalidRequestError, match="integer labels"):
        sk(lab.astype(np.float64))
    with pytest.raises(InvalidRequestError, match="3-D"):
        sk(lab[0])
    for ids, msg in (("7", "list of segment ids"), (7, "list of segment ids"),
                     ([7.0], "float"), ([-1], "uint64"), ([2**64], "uint64"),
                     ([True], "boolean")):
        with pytest.raises(InvalidRequestError, match=msg):
            sk(lab, ids=ids)  # type: ignore[arg-type]
    for kw, msg in (({"dust_threshold": -1}, "dust_threshold"),
                    ({"dust_threshold": 1.5}, "dust_threshold"),
                    ({"workers": 0}, "workers"), ({"parallel": "2"}, "parallel"),
                    ({"teasar_params": {"scal": 1}}, "unknown key"),
                    ({"teasar_params": {"scale": float("nan")}}, "finite"),
                    ({"block": (0, 2, 2)}, "block"), ({"prefer": "x"}, "prefer"),
                    ({"voxel_size": (0, 1, 1)}, "positive"),
                    ({"voxel_size": (1, 1)}, "3 entries")):
        with pytest.raises(InvalidRequestError, match=msg):
            sk(lab, **kw)
    with pytest.raises(CapabilityNotSupportedError):
        sk(lab, prefer="server")
    # a client that is none is refused, not ignored, though the region runs in one piece
    with pytest.raises(InvalidRequestError, match=r"client must be a dask\.distributed Client"):
        sk(lab, client=object())
    vol = store(tmp_path, lab)
    with pytest.raises(InvalidRequestError, match=r"client must be a dask\.distributed Client"):
        sk(vol, client="tcp://127.0.0.1:8786")
    with pytest.raises(InvalidRequestError, match="open by URL"):
        sk(lab, block=(8, 8, 8), client=_FakeClient())
    with pytest.raises(InvalidRequestError, match="voxel_size is for a numpy source"):
        sk(vol, voxel_size=(1, 1, 1))
    with pytest.raises(InvalidRequestError, match="step 1"):
        sk(vol[::2])
    img = voxgate.create(f"zarr://{tmp_path}/img", shape=(4, 4, 4), dtype="uint8",
                         chunks=(4, 4, 4), voxel_size=(1, 1, 1))
    with pytest.raises(InvalidRequestError, match="image"):
        sk(img)
    assert np.array_equal(np.asarray(vol.read()), lab)  # nothing written
    assert rid in sk(vol)
