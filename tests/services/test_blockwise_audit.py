"""The block-wise Services where odd geometry meets the cluster path, against brute-force
references: a 37 x 70 x 53 store (no block or chunk divides it) with an offset on every axis,
anisotropic voxels, ids above 2**32 and near 2**64 - 1, a segment that crosses block corners
diagonally only, empty blocks, views, a single voxel; each Service block-wise here, on a small
``dask.distributed`` cluster, and as the reference computes it over the whole array.

Also the defects this audit found: skeletonize failing on a block one voxel thick on two axes
(kimimaro's ``fix_borders`` on a line) and on small blocks holding ids >= 2**63 (cc3d), and
predict writing blocks off the output's chunk grid when the output is a larger Volume.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.geometry import Box
from voxgate.services.label_stats import COLUMNS

from .brute_reference import components, label_stats
from .onnx_models import conv_model, run_whole

SHAPE = (37, 70, 53)
CHUNKS = (8, 16, 12)
BLOCK = (16, 32, 24)
OFFSET = (5, 11, 3)
VS = (40, 8, 4)  # z, y, x nm
TOP = 2**64 - 1
IDS = [TOP, TOP - 1, 2**32 + 5, 2**63 + 1]
VIEW = (slice(3, 30), slice(5, 60), slice(7, 50))


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as c, Client(c, set_as_default=False) as client:
        yield client


def odd_labels() -> np.ndarray:
    """Blobs of four big ids in part of the volume (the rest: empty blocks), a random walk of
    TOP, and a diagonal of TOP - 1 through the block corner at BLOCK (corners only)."""
    rng = np.random.default_rng(0)
    lab = np.zeros(SHAPE, np.uint64)
    blobs = rng.random((20, 40, 30)) < 0.2
    lab[:20, :40, :30] = np.where(blobs, rng.choice(np.array(IDS, np.uint64), blobs.shape), 0)
    z = y = x = 0
    for _ in range(300):
        lab[z, y, x] = TOP
        d = rng.integers(0, 2, 3)
        z, y, x = min(z + d[0], 36), min(y + d[1], 69), min(x + d[2], 52)
    for k in range(-8, 8):  # (15, 31, 23) and (16, 32, 24) meet at the corner of 8 blocks
        lab[16 + k, 32 + k, 24 + k] = TOP - 1
    return lab


@pytest.fixture(scope="module")
def seg(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, voxgate.Volume, Path]:
    tmp = tmp_path_factory.mktemp("audit")
    lab = odd_labels()
    vol = voxgate.create(f"zarr://{tmp}/seg.zarr", shape=SHAPE, chunks=CHUNKS, dtype="uint64",
                         voxel_size=VS, kind="segmentation", offset=OFFSET)
    vol[:] = lab
    return lab, voxgate.open(vol.url), tmp


def view_start() -> tuple[int, ...]:
    return tuple(o + s.start for o, s in zip(OFFSET, VIEW, strict=True))


# -- connected components -----------------------------------------------------------------------

@pytest.mark.parametrize("connectivity", [6, 26])
def test_connected_components_blocks_cluster_and_view(
        cluster: Any, seg: tuple[np.ndarray, voxgate.Volume, Path], connectivity: int) -> None:
    lab, vol, tmp = seg
    want = components(lab, connectivity)
    corner = want[15, 31, 23], want[16, 32, 24]
    assert (corner[0] == corner[1]) == (connectivity == 26)  # the test tells them apart
    here = voxgate.connected_components(vol, connectivity=connectivity, block=BLOCK)
    assert here.provenance.details["blocks"] == 3 * 3 * 3
    np.testing.assert_array_equal(here, want)
    there = voxgate.connected_components(vol, f"zarr://{tmp}/cc{connectivity}.zarr",
                                         connectivity=connectivity, block=BLOCK, client=cluster)
    assert tuple(there.offset) == OFFSET
    np.testing.assert_array_equal(there.read(), want)
    part = vol[VIEW]
    want_part = components(lab[VIEW], connectivity)
    np.testing.assert_array_equal(
        voxgate.connected_components(part, connectivity=connectivity, block=BLOCK), want_part)
    out = voxgate.connected_components(part, f"zarr://{tmp}/ccv{connectivity}.zarr",
                                       connectivity=connectivity, block=BLOCK, client=cluster)
    assert tuple(out.offset) == view_start()
    np.testing.assert_array_equal(out.read(), want_part)


# -- label statistics ---------------------------------------------------------------------------

def assert_stats(df: Any, lab: np.ndarray, origin: tuple[int, ...]) -> None:
    ref = label_stats(lab, origin)
    assert list(df.columns) == COLUMNS
    assert [int(i) for i in df["id"]] == sorted(ref)
    for row in df.itertuples():
        r = ref[int(row.id)]
        assert row.voxel_count == r["count"]
        assert (row.z0, row.y0, row.x0) == r["lo"] and (row.z1, row.y1, row.x1) == r["hi"]
        np.testing.assert_allclose((row.centroid_z, row.centroid_y, row.centroid_x),
                                   r["centroid"], atol=1e-9)


def test_label_stats_blocks_cluster_and_view(
        cluster: Any, seg: tuple[np.ndarray, voxgate.Volume, Path]) -> None:
    lab, vol, _ = seg
    assert_stats(voxgate.label_stats(vol, block=BLOCK), lab, OFFSET)
    assert_stats(voxgate.label_stats(vol, block=BLOCK, client=cluster), lab, OFFSET)
    assert_stats(voxgate.label_stats(vol[VIEW], block=BLOCK, client=cluster), lab[VIEW],
                 view_start())
    one = np.full((1, 1, 1), TOP, np.uint64)
    assert_stats(voxgate.label_stats(one, block=(1, 1, 1)), one, (0, 0, 0))


# -- map_blocks ---------------------------------------------------------------------------------

def box_mean(a: np.ndarray) -> np.ndarray:
    """A 3-box mean with zeros outside (radius 1), of the ids modulo a prime (as floats)."""
    from scipy import ndimage

    return ndimage.uniform_filter((a % np.uint64(997)).astype(np.float64), 3, mode="constant")


def test_map_blocks_with_a_halo_equals_the_whole_array(
        cluster: Any, seg: tuple[np.ndarray, voxgate.Volume, Path]) -> None:
    lab, vol, tmp = seg
    want = box_mean(lab)
    here = voxgate.map_blocks(box_mean, vol, block=BLOCK, halo=(1, 1, 1), dtype="float64")
    np.testing.assert_allclose(here, want, atol=1e-9)
    there = voxgate.map_blocks(box_mean, vol, f"zarr://{tmp}/mb.zarr", block=BLOCK,
                               halo=(1, 1, 1), dtype="float64", client=cluster)
    assert tuple(there.offset) == OFFSET
    np.testing.assert_allclose(there.read(), want, atol=1e-9)
    # a view's halo reads the volume around it, as the whole array has it
    part = voxgate.map_blocks(box_mean, vol[VIEW], f"zarr://{tmp}/mbv.zarr", block=BLOCK,
                              halo=(1, 1, 1), dtype="float64", client=cluster)
    np.testing.assert_allclose(part.read(), want[VIEW], atol=1e-9)


# -- mesh ---------------------------------------------------------------------------------------

def whole_meshes(lab: np.ndarray, origin: tuple[int, ...]) -> dict[int, set[Any]]:
    """zmesh over the whole array with a layer of background around it (closed meshes), as
    sets of triangles (each a sorted triple of vertices in eighths of a nanometre)."""
    import zmesh

    mesher = zmesh.Mesher(VS[::-1])
    mesher.mesh(np.pad(lab, 1).T)
    shift = (np.asarray(origin[::-1], np.float64) - 1) * VS[::-1]
    out = {}
    for i in mesher.ids():
        m = mesher.get(i, normals=False, voxel_centered=True)
        out[int(i)] = triangles(m.vertices + shift, m.faces)
    return out


def triangles(vertices: np.ndarray, faces: np.ndarray) -> set[Any]:
    q = np.rint(np.asarray(vertices, np.float64) * 8).astype(np.int64)
    return {tuple(sorted(map(tuple, tri))) for tri in q[faces].tolist()}


def assert_meshes(got: Any, want: dict[int, set[Any]]) -> None:
    assert sorted(got) == sorted(want)
    for i, tris in want.items():
        m = got[i]
        assert triangles(m.vertices, m.faces) == tris, i
        assert len(np.unique(m.vertices, axis=0)) == len(m.vertices)  # stitched: no copies


def test_mesh_blocks_cluster_and_view_equal_the_whole_volume(
        cluster: Any, seg: tuple[np.ndarray, voxgate.Volume, Path]) -> None:
    lab, vol, _ = seg
    want = whole_meshes(lab, OFFSET)
    assert_meshes(voxgate.mesh(vol, block=BLOCK), want)
    there = voxgate.mesh(vol, block=BLOCK, client=cluster)
    assert there.provenance.details["blocks"] == 27
    assert_meshes(there, want)
    assert_meshes(voxgate.mesh(vol[VIEW], block=(5, 7, 6), client=cluster),
                  whole_meshes(lab[VIEW], view_start()))
    one = np.full((1, 1, 1), TOP, np.uint64)
    assert_meshes(voxgate.mesh(one, block=(1, 1, 1), voxel_size=VS), whole_meshes(one, (0, 0, 0)))


# -- skeletonize (defects) ----------------------------------------------------------------------

def tube_labels() -> np.ndarray:
    """Two tubes along x; one (id 2**63 + 5) in the volume's corner in z and y, so that with
    blocks (12, 13, 16) its last blocks are one voxel thick in z and y (lines along x)."""
    lab = np.zeros((13, 14, 64), np.uint64)
    lab[11:13, 9:14, 2:62] = 2**63 + 5
    lab[2:4, 2:6, 5:55] = TOP
    return lab


def assert_one_tree_inside(sk: Any, lab: np.ndarray, i: int, origin: tuple[int, ...]) -> None:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as graph_components

    n = sk.num_vertices
    assert n > 1 and sk.num_edges == n - 1
    graph = coo_matrix((np.ones(sk.num_edges), (sk.edges[:, 0], sk.edges[:, 1])), shape=(n, n))
    assert graph_components(graph, directed=False)[0] == 1
    zyx = np.floor(sk.vertices / np.array(VS[::-1], np.float32)).astype(np.int64)[:, ::-1]
    zyx -= np.asarray(origin)
    assert (lab[zyx[:, 0], zyx[:, 1], zyx[:, 2]] == np.uint64(i)).all()


def test_skeletonize_blocks_one_voxel_thick_on_two_axes_and_huge_ids(
        cluster: Any, tmp_path: Path) -> None:
    """Failed before: IndexError from kimimaro (fix_borders on a 1 x 1 x 16 block) and
    OverflowError from cc3d (a small block holding ids >= 2**63)."""
    lab = tube_labels()
    for block in [(12, 13, 16), (6, 7, 16)]:
        got = voxgate.skeletonize(lab, voxel_size=VS, dust_threshold=0, block=block)
        assert sorted(got) == [2**63 + 5, TOP]
        for i in got:
            assert_one_tree_inside(got[i], lab, i, (0, 0, 0))
    vol = voxgate.create(f"zarr://{tmp_path}/tubes.zarr", shape=lab.shape, chunks=(4, 4, 16),
                         dtype="uint64", voxel_size=VS, kind="segmentation", offset=OFFSET)
    vol[:] = lab
    there = voxgate.skeletonize(voxgate.open(vol.url), dust_threshold=0, block=(12, 13, 16),
                                client=cluster)
    assert there.provenance.details["scheduler"] == "distributed"
    for i in (2**63 + 5, TOP):
        assert_one_tree_inside(there[i], lab, i, OFFSET)
    for shape in [(1, 1, 1), (1, 1, 5), (4, 1, 1)]:  # a single voxel, lines: whole and blocks
        for i in (7, TOP):
            line = np.full(shape, i, np.uint64)
            for block in (None, (1, 1, 2)):
                got = voxgate.skeletonize(line, voxel_size=VS, dust_threshold=0, block=block)
                if max(shape) > 1:  # a line: one vertex per voxel, in a chain
                    assert_one_tree_inside(got[i], line, i, (0, 0, 0))
                    assert got[i].num_vertices == max(shape)


# -- predict (defect) ---------------------------------------------------------------------------

class _RecordingClient:
    """The cluster's client, keeping the blocks submitted to it."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.blocks: list[Box] = []

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.blocks.append(args[-1])
        return self.client.submit(fn, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_predict_into_a_larger_output_writes_whole_chunks_and_stays_seam_free(
        cluster: Any, tmp_path: Path) -> None:
    """A view predicted into a larger output Volume: the blocks lay on the view's origin, not
    the output's chunk grid, so two blocks (on two workers) wrote one chunk.  Now every block
    is whole output chunks (clipped to the view), and a pooling model (size step 2) on blocks
    that start off its step grid still equals the whole-view run."""
    rng = np.random.default_rng(5)
    image = (rng.random((20, 24, 28)) * 255).astype(np.uint8)
    src = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=image.shape, chunks=(8, 8, 8),
                         dtype="uint8", kind="image", voxel_size=VS, offset=(2, 3, 4))
    src[:] = image
    out = voxgate.create(f"zarr://{tmp_path}/prob.zarr", shape=image.shape, chunks=(8, 8, 8),
                         dtype="float32", kind="image", voxel_size=VS, offset=(2, 3, 4))
    model = conv_model(tmp_path / "pool.onnx", layers=3, pool=True, seed=2)
    sl = (slice(3, 19), slice(5, 21), slice(7, 25))
    view = voxgate.open(src.url)[sl]
    rec = _RecordingClient(cluster)
    voxgate.predict(str(model), view, out, block=(8, 8, 8), dtype="float32", device="cpu",
                    client=rec, progress=False)
    region = view.bounds
    assert len(rec.blocks) > 1
    for b in rec.blocks:
        cell_start = [o + (s - o) // 8 * 8 for s, o in zip(b.start, (2, 3, 4), strict=True)]
        cell = Box(cell_start, [c + 8 for c in cell_start])
        assert b == cell.intersect(region), b  # whole chunks of the output, clipped
    want = run_whole(model, image[sl], (2, 2, 2))
    np.testing.assert_allclose(out.read(region), want, atol=1e-5)
    assert not out.read()[0].any()  # nothing outside the view

