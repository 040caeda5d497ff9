"""Memory stays bounded in the Services and the copy: each entry point run in a subprocess on a
large, mostly absent volume (a few chunks written), its peak RSS above the subprocess's
baseline after its imports far below the volume's size, and its result checked against a
brute-force answer (numpy, cc3d, zmesh or kimimaro on the small region the objects lie in, or
the copied voxels read back with zarr-python and tensorstore).

The method is tests/test_memory_bounds.py's (see its docstring: VmHWM, glibc's mmap threshold
fixed).  The prelude here imports every engine the Services load (cc3d, zmesh, kimimaro,
onnxruntime, pandas) before the baseline, so only the run's own buffers count.  ``workers`` is
given everywhere: a run holds about one block per worker (64 MiB blocks of uint64 for
connected_components and label_stats, about twice that each in flight), and the default is 8
workers on 4 cores and more.

Measured peaks above the baseline (MiB, this 2-core machine, workers=2 unless said):
copy zarr -> precomputed / -> N5 / precomputed -> zarr of the 1 GiB segmentation 23 / 35 / 31,
of the 1 GiB image zarr -> N5 50, into a precomputed layer made sharded 141, a resumed copy 35
(verify=True 57); connected_components into a store 212 (121 with one worker, 404 with four,
788 with eight); label_stats 270 (142 one worker, 477 four, 862 eight); mesh of one object 266,
skeletonize 142; predict into a store of the 1 GiB image 119, of its 512 MiB half 100;
detect_synapses on its store path (68 M voxels) 225-231; slabs read from the 1 GiB volumes 11.
None grows with the volume.

The one that did: ``mesh`` of a store's volume up to its one-piece size (512 MiB) read the
whole volume and then copied it into an array with a layer of background around it (to close
the meshes at the volume's edges), holding it twice: a 20^3 object of a 512 MiB segmentation
peaked at 1038 MiB (1 GiB volume, meshed block by block: 266).  The volume is now read block
by block straight into the padded array: 538 MiB.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate

from .peak_rss import peak_delta, prelude
from .test_memory_bounds import BOUND_MIB

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="peak RSS is read from /proc/self/status (Linux)")

_PRELUDE = prelude("""
    import numpy as np
    import tensorstore
    import voxgate
    from voxgate import Box
    import voxgate.transfer
    import voxgate.services.connected_components, voxgate.services.label_stats
    import voxgate.services.mesh, voxgate.services.skeletonize, voxgate.services.predict
    import voxgate.services.synapses
    import cc3d, fastremap, kimimaro, pandas, zmesh
    import onnxruntime
""")


def _peak_delta(code: str, cwd: Path) -> float:
    """Run ``code`` in a fresh Python; its peak RSS (MiB) above its baseline after imports."""
    return peak_delta(code, cwd, prelude=_PRELUDE)


def _ball() -> np.ndarray:
    z, y, x = np.ogrid[-12:12, -12:12, -12:12]
    return np.asarray(z * z + y * y + x * x <= 100)


#: the ball of id 9, in the 24^3 box at (478, 478, 478)
_BALL = _ball()


@pytest.fixture(scope="module")
def seg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 GiB uint64 segmentation (512^3, 64^3 chunks), the rest absent (0): a 20^3 cube of
    id 5 at the origin, a ball of id 9 at the far corner, and a box of id 12 across chunk
    borders (y 128) and the border of connected_components' blocks (z 256)."""
    path = tmp_path_factory.mktemp("memseg") / "seg.zarr"
    vol = voxgate.create(f"zarr://{path}", shape=(512, 512, 512), dtype="uint64",
                         chunks=(64, 64, 64), voxel_size=(8, 8, 8), kind="segmentation")
    vol[0:20, 0:20, 0:20] = 5
    vol[478:502, 478:502, 478:502] = np.where(_BALL, 9, 0).astype(np.uint64)
    vol[250:270, 120:140, 60:70] = 12
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 GiB uint8 image (1024^3, 64^3 chunks): one random chunk at the origin, one chunk
    of 7 at the far corner, the rest absent (reads as 0)."""
    path = tmp_path_factory.mktemp("memimg") / "img.zarr"
    vol = voxgate.create(f"zarr://{path}", shape=(1024, 1024, 1024), dtype="uint8",
                         chunks=(64, 64, 64), voxel_size=(8, 8, 8))
    vol[0:64, 0:64, 0:64] = _random_chunk()
    vol[960:1024, 960:1024, 960:1024] = 7
    return path


def _random_chunk() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (64, 64, 64), dtype=np.uint8)


def _objects() -> np.ndarray:
    """The segmentation's first 64^3 chunk, brute force."""
    out = np.zeros((64, 64, 64), np.uint64)
    out[0:20, 0:20, 0:20] = 5
    return out


def _ts_read(spec: dict[str, Any], box: tuple[slice, slice, slice], xyz: bool) -> np.ndarray:
    """``box`` (z, y, x) of a store opened by tensorstore (the oracle), as (z, y, x)."""
    import tensorstore as ts

    store = ts.open(spec).result()
    if xyz:  # N5 and precomputed keep (x, y, z[, channel])
        arr = store[box[2], box[1], box[0]].read().result()
        return np.asarray(arr).reshape(arr.shape[:3]).transpose(2, 1, 0)
    return np.asarray(store[box].read().result())


def _check_seg_copy(read: Any) -> None:
    """The copied segmentation, read by ``read(slices)`` (z, y, x)."""
    assert np.array_equal(read((slice(0, 64),) * 3), _objects())
    ball = read((slice(478, 502),) * 3)
    assert np.array_equal(ball, np.where(_BALL, 9, 0))
    assert (read((slice(250, 270), slice(120, 140), slice(60, 70))) == 12).all()
    assert read((slice(300, 364), slice(0, 64), slice(0, 64))).max() == 0


def test_copy_between_stores_streams_block_by_block(seg: Path, image: Path,
                                                    tmp_path: Path) -> None:
    """zarr -> precomputed, precomputed -> zarr and zarr -> N5 of the 1 GiB segmentation,
    and zarr -> N5 of the 1 GiB image."""
    pre, back, n5, img5 = (tmp_path / n for n in ("s.precomputed", "back.zarr", "s.n5",
                                                  "img.n5"))
    peak = _peak_delta(f"""
        for src, dst in (("zarr://{seg}", "precomputed://{pre}"),
                         ("precomputed://{pre}", "zarr://{back}"),
                         ("zarr://{seg}", "n5://{n5}"), ("zarr://{image}", "n5://{img5}")):
            r = voxgate.copy(src, dst, progress=False, workers=2)
            assert r.created and r.blocks_written, r
    """, tmp_path)
    assert peak < BOUND_MIB, f"copying 1 GiB volumes between stores peaked at {peak} MiB"
    import zarr

    arr = zarr.open_array(str(back / "0"), mode="r")  # (an OME-Zarr group's scale 0)
    assert arr.shape == (512, 512, 512)
    _check_seg_copy(lambda s: arr[s])
    _check_seg_copy(lambda s: _ts_read(
        {"driver": "neuroglancer_precomputed", "kvstore": f"file://{pre}"}, s, xyz=True))
    _check_seg_copy(lambda s: _ts_read({"driver": "n5", "kvstore": f"file://{n5}/s0"}, s,
                                       xyz=True))
    spec = {"driver": "n5", "kvstore": f"file://{img5}/s0"}
    assert np.array_equal(_ts_read(spec, (slice(0, 64),) * 3, xyz=True), _random_chunk())
    assert (_ts_read(spec, (slice(960, 1024),) * 3, xyz=True) == 7).all()
    assert _ts_read(spec, (slice(500, 564),) * 3, xyz=True).max() == 0


@pytest.mark.parametrize("verify", [False, True])
def test_resumed_copy_streams_block_by_block(seg: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             verify: bool) -> None:
    """A copy interrupted after 60 of its blocks, resumed from its journal (skipping the
    finished blocks, or with ``verify`` reading them again from both stores)."""
    import voxgate.transfer as transfer

    dst = f"n5://{tmp_path}/r.n5"
    real, calls = transfer._copy_part, [0]

    def stop_after_60(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] > 60:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(transfer, "_copy_part", stop_after_60)
    with pytest.raises(transfer.CopyInterrupted) as stopped:
        voxgate.copy(f"zarr://{seg}", dst, progress=False, workers=1)
    assert stopped.value.blocks_done == 60
    monkeypatch.undo()
    peak = _peak_delta(f"""
        r = voxgate.copy("zarr://{seg}", "{dst}", progress=False, workers=2, verify={verify})
        assert r.resumed and r.blocks_skipped == 60, r
    """, tmp_path)
    assert peak < BOUND_MIB, f"resuming a copy of a 1 GiB volume peaked at {peak} MiB"
    _check_seg_copy(lambda s: _ts_read({"driver": "n5", "kvstore": f"file://{tmp_path}/r.n5/s0"},
                                       s, xyz=True))


def test_connected_components_into_a_store_runs_block_by_block(seg: Path,
                                                               tmp_path: Path) -> None:
    """Label, join (a union-find over the few labels found) and relabel, block by block, of a
    1 GiB segmentation into a store."""
    out = tmp_path / "cc.zarr"
    peak = _peak_delta(f"""
        from voxgate.services.connected_components import connected_components_provenance
        got = voxgate.connected_components("zarr://{seg}", "zarr://{out}", workers=2)
        prov = connected_components_provenance(got)
        assert prov.details["components"] == 3 and prov.details["blocks"] > 8, prov
    """, tmp_path)
    assert peak < BOUND_MIB, f"connected components of a 1 GiB volume peaked at {peak} MiB"
    check_components(f"zarr://{out}")


def test_label_stats_runs_block_by_block(seg: Path, tmp_path: Path) -> None:
    peak = _peak_delta(f"""
        df = voxgate.label_stats("zarr://{seg}", workers=2)
        df.to_pickle("stats.pkl")
    """, tmp_path)
    assert peak < BOUND_MIB, f"label_stats of a 1 GiB volume peaked at {peak} MiB"
    import pandas as pd

    check_stats(pd.read_pickle(tmp_path / "stats.pkl"))


def check_components(url: str) -> None:
    """The connected components of the ``seg`` fixture written at ``url``, against what its
    three objects are (brute force)."""
    cc = voxgate.open(url)
    # numbered by their first voxel in a C-order scan: the cube, the box, the ball
    assert np.array_equal(cc[0:64, 0:64, 0:64].read(), (_objects() > 0).astype(np.uint64))
    box = cc[248:272, 118:142, 58:72].read()
    assert (box[2:22, 2:22, 2:12] == 2).all() and (box > 0).sum() == 4000
    assert np.array_equal(cc[478:502, 478:502, 478:502].read(), np.where(_BALL, 3, 0))
    assert cc[300:364, 300:364, 300:364].read().max() == 0


def check_stats(df: Any) -> None:
    """``label_stats`` of the ``seg`` fixture, against its three objects (brute force)."""
    assert df["id"].tolist() == [5, 9, 12]
    assert df["voxel_count"].tolist() == [8000, int(_BALL.sum()), 4000]
    boxes = df[["z0", "y0", "x0", "z1", "y1", "x1"]].to_numpy().tolist()
    lo = 478 + int(np.argwhere(_BALL).min())
    hi = 478 + int(np.argwhere(_BALL).max()) + 1
    assert boxes == [[0, 0, 0, 20, 20, 20], [lo, lo, lo, hi, hi, hi],
                     [250, 120, 60, 270, 140, 70]]


def _mesh_of_cube() -> Any:
    """The cube's closed mesh, brute force: zmesh on the segmentation's first chunk."""
    from voxgate.services.mesh import mesh_kernel

    return mesh_kernel(_objects(), (8, 8, 8), (0, 0, 0), [5], close=True)[5]


def _same_mesh(vertices: np.ndarray, n_faces: int, want: Any) -> None:
    assert n_faces == len(want.faces)
    assert np.array_equal(np.unique(vertices, axis=0), np.unique(want.vertices, axis=0))


def test_mesh_of_one_small_object_runs_block_by_block(seg: Path, tmp_path: Path) -> None:
    """A 1 GiB segmentation (past the one-piece size) is meshed block by block."""
    peak = _peak_delta(f"""
        m = voxgate.mesh("zarr://{seg}", [5])
        assert m.provenance.details["blocks"] > 1, m.provenance
        np.save("v.npy", m[5].vertices)
        print("FACES", len(m[5].faces))
    """, tmp_path)
    assert peak < BOUND_MIB, f"meshing one object of a 1 GiB volume peaked at {peak} MiB"
    _same_mesh(np.load(tmp_path / "v.npy"), 4796, _mesh_of_cube())


def test_mesh_in_one_piece_holds_the_volume_once(seg: Path, tmp_path: Path) -> None:
    """A 512 MiB view (the one-piece size) is read into the array that closes the meshes at
    its edges; it was read whole and then copied into that array: 1038 MiB, now 538."""
    peak = _peak_delta(f"""
        m = voxgate.mesh(voxgate.open("zarr://{seg}")[0:256], [5])
        assert m.provenance.details["blocks"] == 1, m.provenance
        np.save("v.npy", m[5].vertices)
    """, tmp_path)
    assert peak < 1.5 * 512, f"meshing one object of a 512 MiB view peaked at {peak} MiB"
    _same_mesh(np.load(tmp_path / "v.npy"), 4796, _mesh_of_cube())


def test_mesh_in_one_piece_reads_blocks_into_the_closed_array(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-piece path of a store's view (off the chunk grid, at an offset) read in many
    blocks equals the kernel on the view's array closed in one copy."""
    mesh_module = importlib.import_module("voxgate.services.mesh")
    labels = np.zeros((40, 50, 60), np.uint32)
    labels[2:30, 0:20, 10:60] = 3
    labels[10:40, 30:50, 0:25] = 8
    labels[20, 25, 30] = 11
    url = f"zarr://{tmp_path}/small.zarr"
    vol = voxgate.create(url, shape=labels.shape, dtype="uint32", chunks=(8, 16, 16),
                         voxel_size=(40, 8, 4), kind="segmentation", offset=(3, 5, 7))
    vol[...] = labels
    monkeypatch.setattr(mesh_module, "_BLOCK_READ_BYTES", 8 * 16 * 16 * 4)
    view = voxgate.open(url)[1:37, 3:47, 5:58]
    got = voxgate.mesh(view)
    want = mesh_module.mesh_kernel(labels[1:37, 3:47, 5:58], (40, 8, 4), (4, 8, 12),
                                   close=True)
    assert sorted(got) == sorted(want) == [3, 8, 11]
    for i in want:
        assert np.array_equal(got[i].vertices, want[i].vertices)
        assert np.array_equal(got[i].faces, want[i].faces)
    open_ = voxgate.mesh(view, close=False)
    assert np.array_equal(open_[8].faces, mesh_module.mesh_kernel(
        labels[1:37, 3:47, 5:58], (40, 8, 4), (4, 8, 12), [8])[8].faces)


def test_skeletonize_of_one_small_object_runs_block_by_block(seg: Path,
                                                             tmp_path: Path) -> None:
    peak = _peak_delta(f"""
        s = voxgate.skeletonize("zarr://{seg}", [5])
        assert s.provenance.details["blocks"] > 1, s.provenance
        np.save("v.npy", s[5].vertices)
    """, tmp_path)
    assert peak < BOUND_MIB, f"skeletonizing one object of a 1 GiB volume peaked at {peak} MiB"
    # kimimaro on the first chunk, in one piece
    want = voxgate.skeletonize(_objects(), [5], voxel_size=(8, 8, 8))[5]
    got = np.load(tmp_path / "v.npy")
    assert len(got) > 1
    assert np.array_equal(np.sort(got, axis=0), np.sort(want.vertices, axis=0))


def _identity_model(path: Path) -> Path:
    """An ONNX model whose output is its input (probabilities = intensities / 255)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "z", "y", "x"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 5)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x],
                              [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_predict_into_a_store_runs_block_by_block(image: Path, tmp_path: Path) -> None:
    """Half the image, 512 MiB of uint8 (2 GiB as the model's float32 input)."""
    model = _identity_model(tmp_path / "identity.onnx")
    out = tmp_path / "pred.zarr"
    peak = _peak_delta(f"""
        voxgate.predict("{model}", voxgate.open("zarr://{image}")[0:512], "zarr://{out}",
                        workers=2, progress=False)
    """, tmp_path)
    assert peak < BOUND_MIB, f"predict over a 512 MiB image peaked at {peak} MiB"
    got = voxgate.open(f"zarr://{out}")
    assert got.shape == (512, 1024, 1024)
    assert np.array_equal(got[0:64, 0:64, 0:64].read(), _random_chunk())
    assert got[448:512, 960:1024, 960:1024].read().max() == 0
    assert got[0:64, 64:128, 0:64].read().max() == 0


def test_detect_synapses_on_its_store_path_runs_block_by_block(image: Path,
                                                               tmp_path: Path) -> None:
    """Past 2**26 voxels detect_synapses keeps its probabilities, mask and components in
    temporary zarr volumes (its components at uint64 in memory would be 520 MiB)."""
    import cc3d

    model = _identity_model(tmp_path / "identity.onnx")
    peak = _peak_delta(f"""
        v = voxgate.open("zarr://{image}")[0:256, 0:512, 0:520]
        t = voxgate.detect_synapses(v, model="{model}", threshold=0.9, workers=2,
                                    progress=False)
        t.to_pickle("synapses.pkl")
    """, tmp_path)
    assert peak < BOUND_MIB, f"detect_synapses over 68 M voxels peaked at {peak} MiB"
    import pandas as pd

    table = pd.read_pickle(tmp_path / "synapses.pkl")
    # brute force: the components of the random chunk's voxels at or above 0.9 (grey 230)
    cc, n = cc3d.connected_components(_random_chunk() >= 230, connectivity=26, return_N=True)
    sizes = np.bincount(cc.ravel())[1:]
    assert n > 100
    assert sorted(table["size"].tolist()) == sorted(s for s in sizes.tolist() if s >= 10)
    assert (table[["z", "y", "x"]].to_numpy() < 64).all()


def test_slab_reads_of_a_large_volume_read_the_slab(image: Path, seg: Path,
                                                    tmp_path: Path) -> None:
    peak = _peak_delta(f"""
        img, seg = voxgate.open("zarr://{image}"), voxgate.open("zarr://{seg}")
        planes = img[30:34].read()
        side = img[:, 7, :].read()
        far = img[..., 1000].read()
        assert planes.shape == (4, 1024, 1024) and side.shape == far.shape == (1024, 1024)
        np.save("planes.npy", planes[:, :64, :64])
        np.save("side.npy", side)
        np.save("far.npy", far)
        np.save("seg.npy", seg[:, 10, :].read())
    """, tmp_path)
    assert peak < BOUND_MIB, f"reading planes of a 1 GiB volume peaked at {peak} MiB"
    chunk = _random_chunk()
    assert np.array_equal(np.load(tmp_path / "planes.npy"), chunk[30:34])
    side = np.load(tmp_path / "side.npy")
    assert np.array_equal(side[:64, :64], chunk[:, 7, :])
    assert side[64:].max() == 0 and side[:64, 64:].max() == 0
    far = np.load(tmp_path / "far.npy")
    assert (far[960:, 960:] == 7).all() and far[:960].max() == 0
    plane = np.load(tmp_path / "seg.npy")
    assert (plane[0:20, 0:20] == 5).all() and plane[20:].max() == 0 and plane.sum() == 2000
    assert voxgate.open(f"zarr://{seg}")[255, 130, 65].read() == 12
