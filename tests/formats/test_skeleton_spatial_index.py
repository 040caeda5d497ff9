"""``write_skeletons`` into a skeleton directory whose info has a ``spatial_index`` (Igneous
writes one) enters the new skeletons in the ``.spatial`` files, so CloudVolume's
``skeleton.spatial_index`` queries find them; a replaced skeleton's old entries go.  An info
without ``@type`` gets it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cloudfiles import CloudFiles
from cloudvolume import CloudVolume
from cloudvolume.lib import Bbox

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.formats.skeleton import Skeleton, read_skeletons, write_skeletons

# the layer: x 28..220, y 40..360, z 120..760 nm; index chunks 64 x 160 x 320 nm: 3 x 2 x 2
CHUNK = [64, 160, 320]


def _skel(points: list[list[float]]) -> Skeleton:
    v = np.asarray(points, np.float32)
    e = np.array([[i, i + 1] for i in range(len(v) - 1)], np.uint32).reshape(-1, 2)
    return Skeleton(v, e, np.ones(len(v), np.float32), np.zeros(len(v), np.uint8))


OLD = _skel([[40, 60, 200], [80, 150, 400]])  # in chunk (0, 0, 0)
FAR = _skel([[170, 250, 500], [210, 340, 700]])  # in chunk (2, 1, 1)
# one long edge from chunk (0, 0, 0) to (2, 0, 1), no vertex in the chunks between
LONG = _skel([[30, 50, 130], [218, 58, 750]])
MOVED = _skel([[170, 250, 200], [200, 300, 300]])  # in chunk (2, 1, 0)


def _indexed_layer(root: Path, sharded: bool) -> tuple[str, Path]:
    """A layer whose skeleton directory has skeleton 1 and, as Igneous leaves it, an info
    with a spatial_index and one gzipped .spatial file per chunk (named by CloudVolume)."""
    url = f"precomputed://{root}/seg"
    voxgate.create(url, shape=(16, 40, 48), chunks=(16, 32, 32), dtype="uint64",
                   voxel_size=(40, 8, 4), kind="segmentation", offset=(3, 5, 7))
    write_skeletons(url, {1: OLD}, skel_dir="skeletons_mip_0", sharded=sharded)
    skel_dir = root / "seg" / "skeletons_mip_0"
    info = json.loads((skel_dir / "info").read_text())
    info.update({"mip": 0, "spatial_index": {"resolution": [4, 8, 40], "chunk_size": CHUNK}})
    (skel_dir / "info").write_text(json.dumps(info))
    index = CloudVolume(f"file://{root}/seg", progress=False).skeleton.spatial_index
    names = list(index.index_file_paths_for_bbox(index.physical_bounds))
    assert len(names) == 12
    cf = CloudFiles(f"file://{skel_dir}")
    for name in names:
        entries = {1: Bbox.from_points(OLD.vertices).to_list()} if name == names[0] else {}
        cf.put_json(name, entries, compress="gzip")
    assert (skel_dir / f"{names[0]}.gz").exists()
    return url, skel_dir


def _index(root: Path) -> Any:
    return CloudVolume(f"file://{root}/seg", progress=False).skeleton.spatial_index


@pytest.mark.parametrize("sharded", [False, True])
def test_new_skeletons_enter_the_spatial_index(tmp_path: Path, sharded: bool) -> None:
    url, skel_dir = _indexed_layer(tmp_path, sharded)
    assert _index(tmp_path).query(Bbox((190, 300, 600), (200, 320, 650))) == set()
    write_skeletons(url, {2: FAR, 3: LONG}, sharded=sharded)
    index = _index(tmp_path)
    # a box only FAR touches, a box in a chunk LONG crosses without a vertex, OLD's box
    # (a float box: CloudVolume rounds an int box's chunk grid to ints, off its own names)
    assert index.query(Bbox((190.0, 300.0, 600.0), (200.0, 320.0, 650.0))) == {2}
    assert index.query(Bbox((100, 50, 370), (110, 56, 385))) == {3}
    assert index.query(Bbox((40, 60, 200), (50, 70, 210))) == {1}
    assert index.query(index.physical_bounds) == {1, 2, 3}
    for i, s in [(1, OLD), (2, FAR), (3, LONG)]:
        assert index.get_bbox(i) == Bbox.from_points(s.vertices), i
    cv = CloudVolume(f"file://{tmp_path}/seg", progress=False)
    got = cv.skeleton.get_bbox(Bbox((190, 300, 600), (200, 320, 650)))
    assert [s.id for s in got] == [2] and np.array_equal(got[0].vertices, FAR.vertices)
    # each touched file is now plain JSON, its gzipped Igneous version gone
    assert not list(skel_dir.glob("*.spatial.gz")) or all(
        not (skel_dir / p.name.removesuffix(".gz")).exists()
        for p in skel_dir.glob("*.spatial.gz"))
    assert read_skeletons(url).keys() == {1, 2, 3}


@pytest.mark.parametrize("sharded", [False, True])
def test_a_replaced_skeleton_leaves_no_stale_entries(tmp_path: Path, sharded: bool) -> None:
    url, _ = _indexed_layer(tmp_path, sharded)
    write_skeletons(url, {1: MOVED}, sharded=sharded)
    index = _index(tmp_path)
    assert index.get_bbox(1) == Bbox.from_points(MOVED.vertices)
    assert index.query(Bbox((40, 60, 200), (50, 70, 210))) == set()  # where it was
    assert index.query(Bbox((180, 260, 220), (190, 270, 230))) == {1}


def test_float_resolution_names_files_as_cloudvolume_does(tmp_path: Path) -> None:
    url, skel_dir = _indexed_layer(tmp_path, False)
    for p in skel_dir.glob("*.spatial*"):
        p.unlink()
    info = json.loads((skel_dir / "info").read_text())
    info["spatial_index"] = {"resolution": [4.25, 8, 40], "chunk_size": [100, 150, 300]}
    (skel_dir / "info").write_text(json.dumps(info))
    index = _index(tmp_path)
    names = list(index.index_file_paths_for_bbox(index.physical_bounds))
    assert names[0].startswith("29.75-129.75_40.00-190.00")  # 7 voxels x 4.25 nm, 2 decimals
    cf = CloudFiles(f"file://{skel_dir}")
    for name in names:
        cf.put_json(name, {}, compress="gzip")
    write_skeletons(url, {2: FAR})
    written = sorted(p.name for p in skel_dir.glob("*.spatial"))
    assert written and set(written) <= set(names)
    # (get_bbox: CloudVolume's query casts the box to ints, off its own names here)
    assert _index(tmp_path).get_bbox(2) == Bbox.from_points(FAR.vertices)


def test_a_bad_spatial_index_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    url, skel_dir = _indexed_layer(tmp_path, False)
    info = json.loads((skel_dir / "info").read_text())
    info["spatial_index"] = {"resolution": [4, 8, 40]}  # no chunk_size
    (skel_dir / "info").write_text(json.dumps(info))
    with pytest.raises(InvalidRequestError, match="chunk_size"):
        write_skeletons(url, {2: FAR})
    assert not (skel_dir / "2").exists()


def test_an_info_without_type_gets_it(tmp_path: Path) -> None:
    url = f"precomputed://{tmp_path}/seg"
    voxgate.create(url, shape=(16, 40, 48), chunks=(16, 32, 32), dtype="uint64",
                   voxel_size=(40, 8, 4), kind="segmentation", offset=(3, 5, 7))
    d = tmp_path / "seg" / "skeletons"
    d.mkdir()
    attrs = [{"id": "radius", "data_type": "float32", "num_components": 1}]
    (d / "info").write_text(json.dumps({"transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
                                        "vertex_attributes": attrs}))
    s = _skel([[40, 60, 200], [80, 150, 400]])
    write_skeletons(url, {5: Skeleton(s.vertices, s.edges, s.radius)})
    info = json.loads((d / "info").read_text())
    assert info["@type"] == "neuroglancer_skeletons" and info["vertex_attributes"] == attrs
    got = CloudVolume(f"file://{tmp_path}/seg", progress=False).skeleton.get(5)
    assert np.array_equal(got.vertices, s.vertices)
