"""The ``webknossos`` package (scalable minds) as the peer of webknossos:// and knossos://.

webknossos pins versions of click, rich, httpx, networkx and protobuf older than the ones
voxgate's environment holds, so it lives in an environment of its own: these tests run it as a
subprocess of the Python named by ``VOXGATE_WEBKNOSSOS_PYTHON`` (one with ``pip install
webknossos``), exchanging arrays as .npy files, and are skipped when it is not set.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import wkw

import voxgate

PEER = os.environ.get("VOXGATE_WEBKNOSSOS_PYTHON")
# scripts/test.sh (the README's test command and CI's) makes that environment and sets the
# variable; a bare `pytest` outside CI skips these, and in CI (CI set) they fail without it
pytestmark = pytest.mark.skipif(
    not PEER and not os.environ.get("CI"),
    reason="VOXGATE_WEBKNOSSOS_PYTHON names no Python with the webknossos package",
)


def peer(code: str, *args: str) -> str:
    assert PEER, "CI must run these: scripts/test.sh sets VOXGATE_WEBKNOSSOS_PYTHON"
    out = subprocess.run([PEER, "-c", textwrap.dedent(code), *args], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_webknossos_reads_voxgate_dataset_identically(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    rng = np.random.default_rng(0)
    em = rng.integers(0, 255, (30, 70, 90), dtype=np.uint8)
    seg = rng.integers(0, 2**40, (30, 70, 90), dtype=np.uint64)
    color = voxgate.create(f"webknossos://{ds}", layer="color", shape=em.shape,
                           chunks=(16, 32, 32), dtype="uint8", voxel_size=(24, 11, 11),
                           offset=(2, 4, 6), num_scales=2)
    color[:] = em
    coarse = rng.integers(0, 255, tuple(color.scales[1].shape), dtype=np.uint8)
    color.at_scale(1)[:] = coarse
    s = voxgate.create(f"webknossos://{ds}/segmentation", shape=seg.shape, chunks=(16, 32, 32),
                       dtype="uint64", voxel_size=(24, 11, 11), offset=(2, 4, 6),
                       kind="segmentation")
    s[:] = seg
    peer("""
        import sys, numpy as np, webknossos as wk
        ds = wk.Dataset.open(sys.argv[1])
        out = sys.argv[2]
        assert tuple(ds.voxel_size) == (11.0, 11.0, 24.0), ds.voxel_size
        for layer in ds.layers.values():
            print(layer.name, layer.category, layer.dtype, layer.bounding_box)
            for mag, view in layer.mags.items():
                data = view.read()  # (c, x, y, z) over the layer's box at this mag
                np.save(f"{out}/{layer.name}-{mag.to_layer_name()}.npy", data)
                np.save(f"{out}/{layer.name}-{mag.to_layer_name()}-bbox.npy",
                        np.array([*view.bounding_box.topleft, *view.bounding_box.size]))
        assert ds.get_layer("segmentation").category == "segmentation"
    """, str(ds), str(tmp_path))
    got = np.load(tmp_path / "color-1.npy")
    assert got.shape == (1, 90, 70, 30)
    np.testing.assert_array_equal(got[0].transpose(2, 1, 0), em)
    np.testing.assert_array_equal(np.load(tmp_path / "color-1-bbox.npy"), [6, 4, 2, 90, 70, 30])
    got2 = np.load(tmp_path / "color-2-2-1.npy")[0].transpose(2, 1, 0)
    np.testing.assert_array_equal(got2, coarse)
    gs = np.load(tmp_path / "segmentation-1.npy")
    assert gs.dtype == np.uint64
    np.testing.assert_array_equal(gs[0].transpose(2, 1, 0), seg)


def test_voxgate_reads_webknossos_dataset_identically(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    em = rng.integers(0, 255, (40, 50, 60), dtype=np.uint8)  # x, y, z as webknossos takes it
    seg = rng.integers(0, 1000, (40, 50, 60)).astype(np.uint32)
    np.save(tmp_path / "em.npy", em)
    np.save(tmp_path / "seg.npy", seg)
    peer("""
        import sys, numpy as np, webknossos as wk
        root, data = sys.argv[1], sys.argv[2]
        ds = wk.Dataset(root, voxel_size=(9, 9, 30))
        c = ds.add_layer("color", wk.COLOR_CATEGORY, dtype="uint8", data_format="zarr3")
        c.add_mag(1, chunk_shape=32, shard_shape=64).write(
            np.load(data + "/em.npy"), absolute_offset=(10, 20, 30),
            allow_resize=True)
        c.downsample(coarsest_mag=wk.Mag(2), chunk_shape=32, shard_shape=64)
        s = ds.add_layer("segmentation", wk.SEGMENTATION_CATEGORY, dtype="uint32",
                         data_format="zarr3", largest_segment_id=1000)
        s.add_mag(1, chunk_shape=32, shard_shape=64).write(
            np.load(data + "/seg.npy"), absolute_offset=(10, 20, 30),
            allow_resize=True)
        w = ds.add_layer("wkwlayer", wk.COLOR_CATEGORY, dtype="uint8", data_format="wkw")
        w.add_mag(1, chunk_shape=32, shard_shape=64).write(
            np.load(data + "/em.npy"), absolute_offset=(10, 20, 30),
            allow_resize=True)
        np.save(data + "/em-2.npy", c.get_mag("2-2-1").read()[0])
    """, str(tmp_path / "wkds"), str(tmp_path))
    color = voxgate.open(f"webknossos://{tmp_path}/wkds/color")
    assert tuple(color.offset) == (30, 20, 10) and color.voxel_size.zyx() == (30.0, 9.0, 9.0)
    np.testing.assert_array_equal(color.read(), em.transpose(2, 1, 0))
    assert color.scales[1].voxel_size.zyx() == (30.0, 18.0, 18.0)
    np.testing.assert_array_equal(color.at_scale(1).read(),
                                  np.load(tmp_path / "em-2.npy").transpose(2, 1, 0))
    s = voxgate.open(f"webknossos://{tmp_path}/wkds/segmentation")
    assert s.kind == "segmentation" and s.dtype == np.uint32
    np.testing.assert_array_equal(s.read(), seg.transpose(2, 1, 0))
    w = voxgate.open(f"webknossos://{tmp_path}/wkds/wkwlayer")
    np.testing.assert_array_equal(w.read(), em.transpose(2, 1, 0))
    assert wkw  # the same wkw package reads it in this environment


def test_webknossos_knossos_reader_reads_voxgate_cubes(tmp_path: Path) -> None:
    """webknossos' KNOSSOS reader (``webknossos convert-knossos``) on voxgate's cubes."""
    data = np.random.default_rng(2).integers(0, 255, (130, 140, 150), dtype=np.uint8)
    vol = voxgate.create(f"knossos://{tmp_path}/kn", shape=data.shape, chunks=(128, 128, 128),
                         dtype="uint8", voxel_size=(25, 10, 10), conf="knossos.conf")
    vol[:] = data
    peer("""
        import sys, numpy as np
        from webknossos.cli.convert_knossos import KnossosDataset
        with KnossosDataset.open(sys.argv[1] + "/mag1", np.dtype("uint8")) as k:
            cubes = sorted(k.list_cubes())
            assert len(cubes) == 8, cubes
            out = np.zeros((256, 256, 256), np.uint8)  # x, y, z
            for x, y, z in cubes:
                out[x*128:(x+1)*128, y*128:(y+1)*128, z*128:(z+1)*128] = k.read_cube((x, y, z))
        np.save(sys.argv[2], out)
    """, str(tmp_path / "kn"), str(tmp_path / "k.npy"))
    got = np.load(tmp_path / "k.npy")[:150, :140, :130].transpose(2, 1, 0)
    np.testing.assert_array_equal(got, data)
