"""predict's seams, audited against brute force: onnxruntime run once on the whole (padded)
volume, then cropped, compared voxel for voxel with predict's block-wise output.  Odd shapes,
odd offsets and chunkings, anisotropic kernels and poolings, the volume's faces, input
dtypes, channels, outputs that are views of larger stores, and models whose reach the probe
must not under-measure."""

from __future__ import annotations

import importlib
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.errors import InvalidRequestError
from voxgate.services.predict import load_model, probability_to_uint8

from .onnx_models import conv_model

predict_module = importlib.import_module("voxgate.services.predict")

SHAPE = (37, 45, 51)
OFFSET = (3, 5, 7)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(11).integers(0, 256, SHAPE).astype(np.uint8)


def graph_model(path: Path, nodes: list[Any], inits: dict[str, np.ndarray],
                in_shape: list[Any] | None = None, out_rank: int = 5) -> Path:
    """An ONNX file of ``nodes`` from input "x" (default (1, 1, z, y, x)) to output "y"."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                      in_shape or [1, 1, "z", "y", "x"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * out_rank)
    graph = helper.make_graph(nodes, "audit", [x], [y],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def one_conv(path: Path, kernel: tuple[int, int, int], *, channels: int = 1,
             pad_mode: str | None = None, seed: int = 0) -> Path:
    """One convolution of ``kernel`` ('same': zero padding by the model, or a Pad node of
    ``pad_mode``) then a Sigmoid."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    inits = {"w": rng.normal(0, 0.5, (channels, 1, *kernel)).astype(np.float32),
             "b": np.full(channels, 0.1, np.float32)}
    half = [k // 2 for k in kernel]
    nodes, cur, pads = [], "x", half * 2
    if pad_mode is not None:
        inits["pads"] = np.array([0, 0, *half, 0, 0, *half], np.int64)
        nodes.append(helper.make_node("Pad", ["x", "pads"], ["xp"], mode=pad_mode))
        cur, pads = "xp", [0] * 6
    nodes += [helper.make_node("Conv", [cur, "w", "b"], ["c"], pads=pads),
              helper.make_node("Sigmoid", ["c"], ["y"])]
    return graph_model(path, nodes, inits)


def pooled(path: Path, pool: tuple[int, int, int], seed: int = 0) -> Path:
    """conv 3^3, ReLU, max pooling by ``pool`` (anisotropic), conv 3^3, ReLU, nearest
    upsampling by ``pool``, conv 3^3, Sigmoid: a one-level U-Net of size step ``pool``."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    inits = {"w1": rng.normal(0, 0.5, (3, 1, 3, 3, 3)).astype(np.float32),
             "w2": rng.normal(0, 0.5, (3, 3, 3, 3, 3)).astype(np.float32),
             "w3": rng.normal(0, 0.5, (1, 3, 3, 3, 3)).astype(np.float32),
             "scales": np.array([1, 1, *pool], np.float32)}
    node = helper.make_node
    nodes = [node("Conv", ["x", "w1"], ["c1"], pads=[1] * 6), node("Relu", ["c1"], ["r1"]),
             node("MaxPool", ["r1"], ["p"], kernel_shape=list(pool), strides=list(pool)),
             node("Conv", ["p", "w2"], ["c2"], pads=[1] * 6), node("Relu", ["c2"], ["r2"]),
             node("Resize", ["r2", "", "scales"], ["u"], mode="nearest"),
             node("Conv", ["u", "w3"], ["c3"], pads=[1] * 6), node("Sigmoid", ["c3"], ["y"])]
    return graph_model(path, nodes, inits)


def whole(path: Path, x: np.ndarray, step: tuple[int, ...] = (1, 1, 1)) -> np.ndarray:
    """The brute-force reference: onnxruntime once on the whole 0..1 float volume, zero-padded
    at its upper faces to the size step, cropped back; (c, z, y, x)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pad = [(0, -(-n // s) * s - n) for n, s in zip(x.shape, step, strict=True)]
    out = sess.run(None, {"x": np.pad(x.astype(np.float32), pad)[None, None]})[0][0]
    return out[(slice(None), *(slice(0, n) for n in x.shape))]


def squeeze(a: np.ndarray) -> np.ndarray:
    return a[0] if a.shape[0] == 1 else a


def offset_source(tmp_path: Path, image: np.ndarray) -> voxgate.Volume:
    src = voxgate.create(f"zarr://{tmp_path}/src.zarr", shape=image.shape, chunks=(7, 9, 11),
                         dtype=image.dtype.name, voxel_size=(40, 8, 8), offset=OFFSET)
    src[:] = image
    return src


@pytest.mark.parametrize(("kernel", "pad_mode", "channels"), [
    ((3, 3, 3), None, 1), ((5, 5, 5), None, 1), ((1, 3, 5), None, 1), ((5, 1, 3), None, 3),
    ((3, 3, 3), "reflect", 1), ((3, 5, 3), "edge", 3)])
def test_convolutions_equal_the_whole_volume_run(
        kernel: tuple[int, int, int], pad_mode: str | None, channels: int, image: np.ndarray,
        tmp_path: Path) -> None:
    """Every face and corner: the model's own padding (zero, reflect, edge) is what a block
    at the volume's face sees, since blocks are read clipped to the volume."""
    path = one_conv(tmp_path / "m.onnx", kernel, channels=channels, pad_mode=pad_mode)
    runner = load_model(path, device="cpu")
    assert tuple(runner.radius or ()) == tuple(k // 2 for k in kernel)  # anisotropic halo
    ref = squeeze(whole(path, image / 255))
    src = offset_source(tmp_path, image)
    got = voxgate.predict(path, src, block=(8, 10, 12), dtype="float32", progress=False)
    assert got.provenance.details["blocks"] > 20
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    u8 = voxgate.predict(path, src, block=(8, 10, 12), progress=False)
    assert np.abs(u8.astype(int) - probability_to_uint8(ref).astype(int)).max() <= 1


@pytest.mark.parametrize("pool", [(1, 2, 2), (2, 4, 1)])
def test_anisotropic_pooling_into_offset_stores_of_other_chunks(
        pool: tuple[int, int, int], image: np.ndarray, tmp_path: Path) -> None:
    path = pooled(tmp_path / "pool.onnx", pool)
    runner = load_model(path, device="cpu")
    assert tuple(runner.step) == pool
    ref = whole(path, image / 255, pool)[0]
    src = offset_source(tmp_path, image)
    # a larger zarr at another origin, chunks unlike the source's or the blocks'
    big = voxgate.create(f"zarr://{tmp_path}/big.zarr", shape=(50, 60, 70), chunks=(5, 7, 6),
                         dtype="float32", voxel_size=(40, 8, 8), offset=(1, 2, 1))
    voxgate.predict(path, src, big, dtype="float32", block=(12, 16, 16), progress=False)
    inside = (slice(2, 39), slice(3, 48), slice(6, 57))
    every = big.read()
    np.testing.assert_allclose(every[inside], ref, rtol=0, atol=1e-6)
    every[inside] = 0
    assert not every.any()  # nothing written outside the source's region
    pc = voxgate.create(f"precomputed://file://{tmp_path}/pc", shape=(50, 60, 70),
                        chunks=(8, 8, 8), dtype="uint8", voxel_size=(40, 8, 8),
                        offset=(1, 2, 1))
    voxgate.predict(path, src, pc, block=(12, 16, 16), progress=False)
    got = pc.read()[inside].astype(int)
    assert np.abs(got - probability_to_uint8(ref).astype(int)).max() <= 1


def relu_detector(path: Path) -> Path:
    """A unit that fires only where the 3^3 mean exceeds 0.8 (never on uniform noise in
    0..1), then a 3^3 convolution of it: the output reaches 2 voxels."""
    from onnx import helper

    inits = {"w1": np.full((1, 1, 3, 3, 3), 1 / 27, np.float32),
             "b1": np.array([-0.8], np.float32),
             "w2": np.random.default_rng(1).normal(0, 1, (1, 1, 3, 3, 3)).astype(np.float32),
             "b2": np.zeros(1, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 6),
             helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], pads=[1] * 6)]
    return graph_model(path, nodes, inits)


def test_probe_measures_units_that_noise_leaves_silent(tmp_path: Path) -> None:
    """The receptive-field probe once changed a cube of uniform noise only: a unit silent on
    such noise hid its reach, the default halo came out 0, and block faces showed."""
    path = relu_detector(tmp_path / "detector.onnx")
    assert tuple(load_model(path, device="cpu").radius or ()) == (2, 2, 2)
    bright = (np.random.default_rng(5).random(SHAPE) ** 0.2 * 255).astype(np.uint8)
    ref = whole(path, bright / 255)[0]
    got = voxgate.predict(path, bright, block=(8, 16, 16), dtype="float32", progress=False)
    assert got.provenance.details["halo"] == (2, 2, 2)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def instance_norm(path: Path) -> Path:
    from onnx import helper

    return graph_model(path, [
        helper.make_node("InstanceNormalization", ["x", "s", "b"], ["n"]),
        helper.make_node("Sigmoid", ["n"], ["y"])],
        {"s": np.ones(1, np.float32), "b": np.zeros(1, np.float32)})


def test_model_seeing_its_whole_input_is_not_cut_silently(tmp_path: Path) -> None:
    """Instance normalization: every output voxel depends on every input voxel.  The probe
    used to call that a radius of 64, and blocks with that halo silently differed from the
    whole-volume run; now a cut is refused before anything is written, one block runs."""
    path = instance_norm(tmp_path / "norm.onnx")
    runner = load_model(path, device="cpu")
    assert not runner.bounded
    image = np.random.default_rng(2).integers(0, 256, (40, 150, 150)).astype(np.uint8)
    image[:, :, 75:] //= 4  # the halves' statistics differ
    out = tmp_path / "never.zarr"
    with pytest.raises(InvalidRequestError, match="statistics of its whole input"):
        voxgate.predict(path, image, f"zarr://{out}", block=(64, 64, 64), progress=False)
    assert not out.exists()
    small = image[:9, :40, 60:100]
    got = voxgate.predict(path, small, dtype="float32", progress=False)  # one block
    np.testing.assert_allclose(got, whole(path, small / 255)[0], rtol=0, atol=1e-6)


def test_output_view_blocks_own_whole_store_chunks(image: np.ndarray, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An output that is a view starting off its store's chunk grid: blocks were laid on a
    grid anchored at the view's start, so up to 8 blocks rewrote each store chunk (lost
    updates where a store's writes of one chunk are not atomic across workers)."""
    path = conv_model(tmp_path / "m.onnx", layers=1)
    src = offset_source(tmp_path, image)
    store = voxgate.create(f"zarr://{tmp_path}/store.zarr", shape=(50, 60, 70),
                           chunks=(8, 8, 8), dtype="float32", voxel_size=(40, 8, 8))
    view = store[3:40, 5:50, 7:58]  # the source's region, in the store's coordinates
    written: list[Any] = []
    real = predict_module._store

    def recording(y: np.ndarray, out: Any, block: Any) -> None:
        written.append(block)
        real(y, out, block)

    monkeypatch.setattr(predict_module, "_store", recording)
    voxgate.predict(path, src, view, dtype="float32", block=(8, 8, 8), workers=3,
                    progress=False)
    owners: dict[tuple[int, ...], int] = {}
    for box in written:
        for chunk in itertools.product(*(range(a // 8, -(-b // 8))
                                         for a, b in zip(box.start, box.stop, strict=True))):
            owners[chunk] = owners.get(chunk, 0) + 1
    assert max(owners.values()) == 1
    np.testing.assert_allclose(store.read()[3:40, 5:50, 7:58], whole(path, image / 255)[0],
                               rtol=0, atol=1e-6)


def test_nan_is_not_stored_as_zero(image: np.ndarray, tmp_path: Path) -> None:
    """A model returning NaN: uint8 output stored it as 0, silently; and the probe, seeing
    NaN != NaN, measured a pointwise model as reaching its probe's faces."""
    from onnx import helper

    path = graph_model(tmp_path / "sqrt.onnx", [  # sqrt(x - 0.5): NaN below 0.5
        helper.make_node("Sub", ["x", "half"], ["d"]), helper.make_node("Sqrt", ["d"], ["y"])],
        {"half": np.array(0.5, np.float32)})
    runner = load_model(path, device="cpu")
    assert runner.bounded and tuple(runner.radius or ()) == (0, 0, 0)
    f = voxgate.predict(path, image, dtype="float32", block=(8, 16, 16), progress=False)
    ref = whole(path, image / 255)[0]
    np.testing.assert_array_equal(np.isnan(f), np.isnan(ref))
    out = tmp_path / "u8.zarr"
    with pytest.raises(InvalidRequestError, match="NaN"):
        voxgate.predict(path, image, f"zarr://{out}", block=(8, 16, 16), progress=False)


def test_input_dtypes_and_workers(image: np.ndarray, tmp_path: Path) -> None:
    path = pooled(tmp_path / "pool.onnx", (2, 2, 2))
    ref = whole(path, image / 255, (2, 2, 2))[0]
    runs = {}
    for name, arr in [("uint8", image), ("uint16", image.astype(np.uint16) * 257),
                      ("float32", (image / 255).astype(np.float32))]:
        for workers in ((1, 3) if name == "uint8" else (2,)):
            got = voxgate.predict(path, arr, block=(8, 16, 16), dtype="float32",
                                  workers=workers, progress=False)
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6, err_msg=name)
            runs[name, workers] = np.asarray(got)
    np.testing.assert_array_equal(runs["uint8", 1], runs["uint8", 3])


def test_input_channels_mismatch_says_why(image: np.ndarray, tmp_path: Path) -> None:
    """A model wanting 2 input channels (its channel axis symbolic): the refusal carries
    onnxruntime's reason, not only "no size works"."""
    from onnx import helper

    path = graph_model(tmp_path / "two_in.onnx",
                       [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 6)],
                       {"w": np.ones((1, 2, 3, 3, 3), np.float32)},
                       in_shape=[1, "c", "z", "y", "x"])
    out = tmp_path / "never.zarr"
    with pytest.raises(InvalidRequestError, match=r"(?i)channel.*it said: .*channels"):
        voxgate.predict(path, image, f"zarr://{out}", progress=False)
    assert not out.exists()


def test_output_box_that_does_not_cover_is_refused(image: np.ndarray, tmp_path: Path) -> None:
    path = conv_model(tmp_path / "m.onnx", layers=1)
    src = offset_source(tmp_path, image)
    short = voxgate.create(f"zarr://{tmp_path}/short.zarr", shape=(36, 45, 51),
                           chunks=(8, 8, 8), dtype="uint8", voxel_size=(40, 8, 8),
                           offset=OFFSET)
    with pytest.raises(InvalidRequestError, match="covering"):
        voxgate.predict(path, src, short, progress=False)
    assert not short.read().any()
