"""predict on a numpy array larger than a block runs block by block, and a block whose input
window holds one value takes the model's answer computed once for its key.

A numpy array is one chunk, so predict ran it as one block: float32 in and out of the whole
array at once (a 64 MiB uint8 image peaked at 660-726 MiB above the baseline with an
identity model, 1308 MiB at 128 MiB).  It is now cut as a store of 64^3 chunks is, with
the same halo and padding, so its output is the store path's bit for bit (and the
whole-volume run's to float rounding, as every block-wise run is): 213 and 342 MiB, the
arrays themselves (uint8 in and out) and about 85 MiB of blocks in flight.

Every block ran the model, also when its whole input window (halo and padding included) held
one value: the absent chunks and black margins of a mostly empty volume.  The model's input
is then that value over the window's shape, zero-padded to its size step, and nothing else,
so predict runs the model once per (dtype, value, window shape, block's offset and shape in
the window) and reuses the answer (a handful kept; the model's answer on zeros is not zero
here, a bias and a sigmoid, so nothing may be assumed).  Measured: the built-in synapse
model over a 256 MiB zarr store of two written chunks (64 blocks) ran 64 times, 188 s of CPU;
now 18 times, 48 s.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.geometry import Box, Vec
from voxgate.services.predict import ModelRunner, load_model, predict_provenance

from ..peak_rss import peak_delta_and_stdout, prelude
from ..test_memory_bounds_services_audit import _identity_model
from .onnx_models import conv_model, run_whole
from .test_predict_audit import instance_norm

predict_module = importlib.import_module("voxgate.services.predict")

#: a volume of odd shape: no block divides it, and the pooled model pads its upper faces
SHAPE = (37, 70, 83)
BLOCK = (16, 16, 16)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 3x3x3 convolutions around a 2x pooling (size step 2, radius 6, halo 6), a bias
    and a sigmoid: its answer on zeros is not zero."""
    path = conv_model(tmp_path_factory.mktemp("reuse") / "pool.onnx", layers=3, pool=True,
                      seed=2)
    runner = load_model(path, device="cpu")
    assert tuple(runner.step) == (2, 2, 2) and tuple(runner.radius or ()) == (6, 6, 6)
    assert run_whole(path, np.zeros((8, 8, 8), np.uint8), (2, 2, 2)).min() > 0.01
    return path


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The input shape of every run of an ONNX model (the probe's runs are done before)."""
    seen: list[tuple[int, ...]] = []
    real = ModelRunner.__call__

    def counting(self: ModelRunner, x: np.ndarray) -> np.ndarray:
        seen.append(tuple(x.shape))
        return real(self, x)

    monkeypatch.setattr(ModelRunner, "__call__", counting)
    return seen


def mostly_constant() -> np.ndarray:
    """Black (0) but for a white margin (x >= 60: 200, as padding around a section) and two
    small textured patches, one inside the black, one across the margin's edge."""
    rng = np.random.default_rng(5)
    img = np.zeros(SHAPE, np.uint8)
    img[:, :, 60:] = 200
    img[3:9, 20:27, 10:15] = rng.integers(0, 255, (6, 7, 5), dtype=np.uint8)
    img[30:34, 50:58, 55:66] = rng.integers(0, 255, (4, 8, 11), dtype=np.uint8)
    return img


def expected_runs(img: np.ndarray, halo: int) -> tuple[int, int, int]:
    """(blocks, blocks of data, distinct keys of the constant windows), worked out here from
    the rule: a block's window is the block grown by the halo (the halo and blocks are
    multiples of the step 2, the grid starts at 0), clipped to the volume."""
    blocks, data, keys = 0, 0, set()
    for z in range(0, SHAPE[0], BLOCK[0]):
        for y in range(0, SHAPE[1], BLOCK[1]):
            for x in range(0, SHAPE[2], BLOCK[2]):
                block = Box(Vec(z, y, x), Vec(z, y, x) + Vec(*BLOCK)).intersect(
                    Box(Vec(0, 0, 0), Vec(*SHAPE)))
                window = Box(block.start - Vec(halo, halo, halo),
                             block.stop + Vec(halo, halo, halo)).intersect(
                    Box(Vec(0, 0, 0), Vec(*SHAPE)))
                values = np.unique(img[window.slices()])
                blocks += 1
                if values.size > 1:
                    data += 1
                else:
                    keys.add((int(values[0]), tuple(window.shape),
                              tuple(block.start - window.start), tuple(block.shape)))
    return blocks, data, len(keys)


def no_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predict_module, "_one_value", lambda raw: None)


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_constant_windows_run_the_model_once_per_key(pooled: Path, runs: list[Any],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     dtype: str) -> None:
    """With room for every key, the model runs once per block of data and once per key."""
    img = mostly_constant()
    blocks, data, keys = expected_runs(img, 6)
    # (the windows across the margin's edge hold two values: two columns of blocks of data)
    assert (blocks, data, keys) == (3 * 5 * 6, 36, 26)
    with monkeypatch.context() as mp:
        mp.setattr(predict_module, "_REUSE_ENTRIES", 1000)
        mp.setattr(predict_module, "_REUSE_BLOCKS", 1000)
        got = voxgate.predict(pooled, img, block=BLOCK, dtype=dtype, workers=2,
                              progress=False)
    assert got.provenance.details["blocks"] == blocks
    assert len(runs) == data + keys, (len(runs), data, keys)
    runs.clear()
    with monkeypatch.context() as mp:
        no_reuse(mp)
        want = voxgate.predict(pooled, img, block=BLOCK, dtype=dtype, workers=2,
                               progress=False)
    assert len(runs) == blocks
    assert got.dtype == want.dtype == np.dtype(dtype)
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8))  # bit for bit
    # (and seam-free: the whole-volume run, to float rounding)
    whole = run_whole(pooled, img, (2, 2, 2))
    if dtype == "float32":
        np.testing.assert_allclose(got, whole, atol=1e-5)


def test_the_small_default_cache_gives_the_same_output(pooled: Path, runs: list[Any],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    """With the default few keys (answers evicted and computed again) into a zarr store, and
    a second constant value only in some windows: the output of the run without reuse."""
    img = mostly_constant()
    img[20:, :40, :30] = 9  # a third value, in windows of their own
    src = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=SHAPE, chunks=(8, 16, 16),
                         dtype="uint8", voxel_size=(40, 8, 8))
    src[:] = img
    blocks, data, keys = expected_runs(img, 6)
    got = voxgate.predict(pooled, src, f"zarr://{tmp_path}/a.zarr", block=BLOCK,
                          dtype="float32", workers=2, progress=False)
    assert data + keys <= len(runs) < blocks
    runs.clear()
    with monkeypatch.context() as mp:
        no_reuse(mp)
        want = voxgate.predict(pooled, src, f"zarr://{tmp_path}/b.zarr", block=BLOCK,
                               dtype="float32", workers=2, progress=False)
    assert len(runs) == blocks
    assert np.array_equal(got.read().view(np.uint32), want.read().view(np.uint32))


def test_a_window_of_one_value_is_told_bit_for_bit() -> None:
    one = predict_module._one_value
    assert one(np.full((3, 4, 5), 7, np.uint8)) == b"\x07"
    assert one(np.zeros((3, 4, 5), np.uint8)) == b"\x00"
    a = np.zeros((3, 4, 5), np.uint8)
    a[1, 2, 3] = 1  # neither the first nor the last voxel
    assert one(a) is None
    f = np.zeros((2, 2, 2), np.float32)
    f[1, 0, 0] = -0.0  # equal to 0.0, another model input
    assert one(f) is None
    assert one(np.full((2, 2, 2), np.nan, np.float32)) is not None
    assert one(np.ones((2, 3, 2), bool)) == b"\x01"


def test_numpy_larger_than_a_block_runs_as_a_store_of_64_cubes(
        pooled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A numpy array of more voxels than a block (made small here) is cut as a store of 64^3
    chunks is: the store path's output bit for bit; an array of one block stays one."""
    monkeypatch.setattr(predict_module, "BLOCK_VOXELS", 2**15)  # a block: 64^3
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (70, 150, 133), dtype=np.uint8)
    store = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=img.shape, chunks=(64, 64, 64),
                           dtype="uint8", voxel_size=(40, 8, 8))
    store[:] = img
    for dtype in ("float32", "uint8"):
        got = voxgate.predict(pooled, img, dtype=dtype, workers=2, progress=False)
        assert got.provenance.details["blocks"] == 2 * 3 * 3
        assert got.provenance.details["block"] == (64, 64, 64)
        out = voxgate.predict(pooled, store, f"zarr://{tmp_path}/{dtype}.zarr", dtype=dtype,
                              workers=2, progress=False)
        prov = predict_provenance(out)
        assert prov is not None and prov.details["block"] == (64, 64, 64)
        assert np.array_equal(np.asarray(got).view(np.uint8), out.read().view(np.uint8))
        whole = run_whole(pooled, img, (2, 2, 2))
        if dtype == "float32":
            np.testing.assert_allclose(got, whole, atol=1e-5)
    small = rng.integers(0, 255, (30, 30, 30), dtype=np.uint8)
    assert voxgate.predict(pooled, small, progress=False).provenance.details["blocks"] == 1
    # a model that sees its whole input still runs as one block, not refused
    norm = instance_norm(tmp_path / "norm.onnx")
    assert voxgate.predict(norm, img, progress=False).provenance.details["blocks"] == 1


def test_reuse_on_a_dask_cluster(cluster: Any, pooled: Path, tmp_path: Path) -> None:
    """The cache travels to the workers (one per run in each process): the same output."""
    img = mostly_constant()
    src = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=SHAPE, chunks=(8, 16, 16),
                         dtype="uint8", voxel_size=(40, 8, 8))
    src[:] = img
    out = voxgate.predict(pooled, src.url, f"zarr://{tmp_path}/out.zarr", block=BLOCK,
                          client=cluster, dtype="float32", progress=False)
    local = voxgate.predict(pooled, img, block=BLOCK, dtype="float32", progress=False)
    assert np.array_equal(out.read().view(np.uint32), np.asarray(local).view(np.uint32))


_PRELUDE = prelude("""
    import numpy as np
    import voxgate
    import voxgate.services.predict
    import onnxruntime
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(),
                    reason="peak RSS is read from /proc/self/status (Linux)")
def test_numpy_peak_is_bounded_by_the_block_not_the_array(tmp_path: Path) -> None:
    """A 64 MiB uint8 numpy image through an identity model, two workers: the peak holds the
    image and its uint8 output, and a few float32 blocks per worker (was the image as float32
    in and out: 660-726 MiB; now 213)."""
    model = _identity_model(tmp_path / "identity.onnx")
    shape = (256, 512, 512)
    peak, stdout = peak_delta_and_stdout(f"""
        img = np.random.default_rng(0).integers(0, 255, {shape}, dtype=np.uint8)
        p = voxgate.predict("{model}", img, workers=2, progress=False)
        # (compared a slab at a time: a whole comparison would hold another array)
        assert all(np.array_equal(p[i:i + 16], img[i:i + 16]) for i in range(0, 256, 16))
        print("BLOCKS", p.provenance.details["blocks"])
    """, tmp_path, prelude=_PRELUDE)
    arrays_mib = 2 * np.prod(shape) / 2**20  # the image and its output, uint8
    block_mib = 4 * predict_module.BLOCK_VOXELS / 2**20  # a block of float32: 16 MiB
    bound = arrays_mib + 2 * 4 * block_mib  # two workers, 4 float32 blocks each
    assert peak < bound, f"predict of a 64 MiB numpy image peaked at {peak} MiB (> {bound})"
    assert "BLOCKS 16" in stdout  # (128, 128, 256) each, as a store of 64^3 chunks
