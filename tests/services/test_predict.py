"""predict: seam-free block-wise output (callables and ONNX models), outputs, dtypes, a
dask.distributed cluster, and every bad model refused before any block runs."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxgate
from voxgate.errors import CapabilityNotSupportedError, InvalidRequestError
from voxgate.services.predict import load_model, predict_provenance, probability_to_uint8

from .onnx_models import conv_model, run_whole

# the module (voxgate.services.predict is the function, as voxgate.services.mesh is)
predict_module = importlib.import_module("voxgate.services.predict")

SHAPE = (23, 45, 51)  # odd, and no block below divides it


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    smooth = rng.random(SHAPE)
    for ax in range(3):
        smooth = (np.roll(smooth, 1, ax) + smooth + np.roll(smooth, -1, ax)) / 3
    return np.clip((smooth - smooth.min()) / np.ptp(smooth) * 255, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "conv": conv_model(d / "conv.onnx"),
        "deep": conv_model(d / "deep.onnx", layers=4, seed=1),
        "pool": conv_model(d / "pool.onnx", layers=3, pool=True, seed=2),
        "two": conv_model(d / "two.onnx", channels_out=2, seed=4),
    }


def smooth3(a: np.ndarray) -> np.ndarray:
    """A callable with context (radius 2): two 3-box means, the volume's faces reflected."""
    from scipy import ndimage

    return ndimage.uniform_filter(ndimage.uniform_filter(a, 3, mode="reflect"), 3,
                                  mode="reflect")


def test_callable_seam_free_on_odd_shapes(image: np.ndarray) -> None:
    x = image.astype(np.float32) / 255
    ref = smooth3(x)
    got = voxgate.predict(smooth3, image, block=(8, 16, 16), halo=(2, 2, 2), dtype="float32",
                          progress=False)
    assert got.provenance.details["blocks"] == 3 * 3 * 4
    np.testing.assert_allclose(got, ref, atol=1e-6)
    u8 = voxgate.predict(smooth3, image, block=(8, 16, 16), halo=(2, 2, 2), progress=False)
    assert u8.dtype == np.uint8
    assert np.abs(u8.astype(int) - probability_to_uint8(ref).astype(int)).max() <= 1
    # without the halo, block faces show: the test can tell seams
    seams = voxgate.predict(smooth3, image, block=(8, 16, 16), halo=(0, 0, 0),
                            dtype="float32", progress=False)
    assert np.abs(seams - ref).max() > 1e-3


@pytest.mark.parametrize("name", ["conv", "deep", "pool"])
def test_onnx_seam_free_with_the_derived_halo(name: str, models: dict[str, Path],
                                              image: np.ndarray) -> None:
    runner = load_model(models[name], device="cpu")
    # the measured receptive radius: 1 per 3x3x3 convolution at full resolution, 2 per
    # convolution after the 2x pooling (and its nearest upsampling's phase)
    expected = {"conv": 2, "deep": 4, "pool": 6}[name]
    assert tuple(runner.radius or ()) == (expected,) * 3
    step = (2, 2, 2) if name == "pool" else (1, 1, 1)
    assert tuple(runner.step) == step
    ref = run_whole(models[name], image, step)
    got = voxgate.predict(str(models[name]), image, block=(8, 16, 16), dtype="float32",
                          device="cpu", progress=False)
    details = got.provenance.details
    assert details["halo"] == tuple(-(-expected // s) * s for s in step)
    assert details["blocks"] > 1
    np.testing.assert_allclose(got, ref, atol=1e-5)
    u8 = voxgate.predict(models[name], image, block=(8, 16, 16), device="cpu", progress=False)
    assert np.abs(u8.astype(int) - probability_to_uint8(ref).astype(int)).max() <= 1
    # a halo below the radius leaves seams
    short = voxgate.predict(models[name], image, block=(8, 16, 16), halo=(1, 1, 1),
                            dtype="float32", device="cpu", progress=False)
    assert np.abs(short - ref).max() > 1e-3


def test_card_states_step_and_halo(tmp_path: Path, image: np.ndarray) -> None:
    """A card in the file (as voxgate.models.train writes) replaces the probes; its halo is
    used (here larger than the measured radius: still seam-free)."""
    path = conv_model(tmp_path / "carded.onnx", layers=3, pool=True, seed=2,
                      card={"valid_shape": {"multiple_of": [2, 2, 2]}, "halo": [8, 8, 8],
                            "min_size": 3})
    runner = load_model(path, device="cpu")
    assert tuple(runner.step) == (2, 2, 2) and tuple(runner.radius or ()) == (8, 8, 8)
    assert runner.card["min_size"] == 3
    got = voxgate.predict(path, image, block=(8, 16, 16), dtype="float32", progress=False)
    assert got.provenance.details["halo"] == (8, 8, 8)
    np.testing.assert_allclose(got, run_whole(path, image, (2, 2, 2)), atol=1e-5)
    wrong = conv_model(tmp_path / "wrong.onnx", pads=0,
                       card={"valid_shape": {"multiple_of": [1, 1, 1]}, "halo": [1, 1, 1]})
    with pytest.raises(InvalidRequestError, match="card's size step"):
        load_model(wrong, device="cpu")


def test_outputs_zarr_and_precomputed(models: dict[str, Path], image: np.ndarray,
                                      tmp_path: Path) -> None:
    src = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=SHAPE, chunks=(8, 16, 16),
                         dtype="uint8", voxel_size=(40, 8, 8))
    src[:] = image
    ref = run_whole(models["pool"], image, (2, 2, 2))
    z = voxgate.predict(models["pool"], src, f"zarr://{tmp_path}/prob.zarr", block=(8, 16, 16),
                        progress=False)
    assert isinstance(z, voxgate.Volume)
    assert z.dtype == np.uint8 and z.shape == SHAPE
    assert tuple(z.chunks) == (8, 16, 16) and tuple(z.voxel_size)[:3] == (40, 8, 8)
    assert np.abs(z.read().astype(int) - probability_to_uint8(ref).astype(int)).max() <= 1
    pc = voxgate.predict(models["pool"], src.url, f"precomputed://file://{tmp_path}/prob",
                         block=(8, 16, 16), dtype="float32", progress=False)
    again = voxgate.open(f"precomputed://file://{tmp_path}/prob")
    assert again.dtype == np.float32
    np.testing.assert_allclose(again.read(), ref, atol=1e-5)
    assert pc.url == again.url
    # several output channels: (c, z, y, x), a multi-channel volume
    two = voxgate.predict(models["two"], src, f"zarr://{tmp_path}/two.zarr", block=(8, 16, 16),
                          dtype="float32", progress=False)
    assert two.meta.num_channels == 2
    np.testing.assert_allclose(two.read(), run_whole(models["two"], image), atol=1e-5)
    # writing into an existing volume of the wrong kind is refused
    with pytest.raises(InvalidRequestError, match="float32 with 1 channel"):
        voxgate.predict(models["pool"], src, z, dtype="float32", progress=False)
    # ... or at another scale (it was written, each voxel where the source's is not)
    coarse = voxgate.create(f"zarr://{tmp_path}/coarse.zarr", shape=SHAPE, chunks=(8, 16, 16),
                            dtype="uint8", voxel_size=(80, 16, 16))
    with pytest.raises(InvalidRequestError, match="voxels of"):
        voxgate.predict(models["pool"], src, coarse, block=(8, 16, 16), progress=False)
    assert not coarse.read().any()
    # (a numpy source has no voxel size of its own: any scale's volume takes its output)
    voxgate.predict(models["pool"], image, coarse, block=(8, 16, 16), progress=False)
    assert coarse.read().any()
    # ... or into the source itself: blocks would read neighbours already overwritten
    before = src.read()
    with pytest.raises(InvalidRequestError, match="out is the source"):
        voxgate.predict(models["pool"], src, src, block=(8, 16, 16), progress=False)
    np.testing.assert_array_equal(src.read(), before)


def test_offset_source_and_callable_channels(tmp_path: Path, image: np.ndarray) -> None:
    src = voxgate.create(f"zarr://{tmp_path}/off.zarr", shape=SHAPE, chunks=(8, 16, 16),
                         dtype="uint8", voxel_size=(40, 8, 8),
                         offset=(5, 10, 20))
    src[:] = image

    def two_ways(a: np.ndarray) -> np.ndarray:
        return np.stack([a, 1 - a])

    got = voxgate.predict(two_ways, src, block=(8, 16, 16), progress=False)
    assert got.shape == (2, *SHAPE)
    np.testing.assert_array_equal(got[0], image)
    np.testing.assert_array_equal(got[1], 255 - image)
    out = voxgate.predict(two_ways, src, f"zarr://{tmp_path}/offout.zarr", block=(8, 16, 16),
                          progress=False)
    assert out.bounds == src.bounds


def test_dtype_handling(image: np.ndarray) -> None:
    got = voxgate.predict(lambda a: a * 2 - 0.5, image, progress=False)  # outside 0..1
    assert got.dtype == np.uint8 and got.min() == 0 and got.max() == 255
    f = voxgate.predict(lambda a: a * 2 - 0.5, image, dtype="float32", progress=False)
    assert f.dtype == np.float32 and f.min() < 0 and f.max() > 1
    as16 = voxgate.predict(lambda a: a, image.astype(np.uint16) * 257, dtype="float32",
                           progress=False)
    np.testing.assert_allclose(as16, image / 255, atol=1e-6)  # integers scaled by their max
    with pytest.raises(InvalidRequestError, match="dtype must be 'uint8'"):
        voxgate.predict(lambda a: a, image, dtype="int16", progress=False)


def test_distributed_cluster(cluster: object, models: dict[str, Path], image: np.ndarray,
                             tmp_path: Path) -> None:
    src = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=SHAPE, chunks=(8, 16, 16),
                         dtype="uint8", voxel_size=(40, 8, 8))
    src[:] = image
    out = voxgate.predict(models["pool"], src.url, f"zarr://{tmp_path}/out.zarr",
                          block=(8, 16, 16), client=cluster, dtype="float32", progress=False)
    np.testing.assert_allclose(out.read(), run_whole(models["pool"], image, (2, 2, 2)),
                               atol=1e-5)
    prov = predict_provenance(out)
    assert prov is not None and prov.details["scheduler"] == "distributed"
    with pytest.raises(InvalidRequestError, match="this process only"):
        voxgate.predict(models["pool"], image, client=cluster, progress=False)


@pytest.fixture
def blocks_run(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every block predict starts (the model called on a block's data) is recorded."""
    calls: list[Any] = []
    real = predict_module._infer

    def recording(*args: Any) -> Any:
        calls.append(args[2])
        return real(*args)

    monkeypatch.setattr(predict_module, "_infer", recording)
    return calls


def test_bad_models_refused_before_any_block(blocks_run: list[Any], image: np.ndarray,
                                             tmp_path: Path) -> None:
    out = tmp_path / "never.zarr"

    def refused(model: Any, match: str, **kw: Any) -> None:
        with pytest.raises(InvalidRequestError, match=match):
            voxgate.predict(model, image, f"zarr://{out}", block=(8, 16, 16), progress=False,
                            **kw)
        assert blocks_run == [] and not out.exists()

    refused(tmp_path / "missing.onnx", "does not exist")
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    refused(text, "not an ONNX model")
    refused(conv_model(tmp_path / "int.onnx", input_type="INT64"), r"tensor\(int64\)")
    refused(conv_model(tmp_path / "rank4.onnx", input_shape=(1, "z", "y", "x")), "rank 5")
    refused(conv_model(tmp_path / "valid.onnx", pads=0), "spatial shape")
    refused(conv_model(tmp_path / "fixed.onnx", input_shape=(1, 1, 16, 16, 16)),
            "fixed input shape")
    refused("no-such-model", "neither an existing ONNX file nor a built-in model")
    refused(42, "must be an ONNX file path")
    refused(lambda a: a, "dtype must be", dtype="uint16")
    refused(lambda a: a, "device must be", device="tpu")
    refused(lambda a: a, "halo .* is larger than the block", halo=(9, 0, 0))
    seg = voxgate.create(f"zarr://{tmp_path}/seg.zarr", shape=image.shape, chunks=(8, 16, 16),
                         dtype="uint64", voxel_size=(8, 8, 8), kind="segmentation")
    seg[:] = np.uint64(2**40)
    with pytest.raises(InvalidRequestError, match="is a segmentation"):
        voxgate.predict(lambda a: a, seg, f"zarr://{out}", progress=False)
    assert blocks_run == [] and not out.exists()
    # a callable that returns the wrong shape fails on its first block, named
    with pytest.raises(InvalidRequestError, match="returned shape"):
        voxgate.predict(lambda a: a[1:], image, progress=False)


def test_cuda_device_without_the_provider(models: dict[str, Path], image: np.ndarray) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        got = voxgate.predict(models["conv"], image, device="cuda", dtype="float32",
                              progress=False)
        assert got.provenance.details["providers"][0] == "CUDAExecutionProvider"
        np.testing.assert_allclose(got, run_whole(models["conv"], image), atol=1e-4)
        return
    with pytest.raises(CapabilityNotSupportedError, match="on its server"):
        voxgate.predict(models["conv"], image, prefer="server", progress=False)
    with pytest.raises(CapabilityNotSupportedError, match="onnxruntime-gpu"):
        voxgate.predict(models["conv"], image, device="cuda", progress=False)
    auto = voxgate.predict(models["conv"], image, device="auto", progress=False)
    assert auto.provenance.details["providers"] == ["CPUExecutionProvider"]


def test_cli_predict(models: dict[str, Path], image: np.ndarray, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from voxgate.cli import main

    src = voxgate.create(f"zarr://{tmp_path}/img.zarr", shape=SHAPE, chunks=(8, 16, 16),
                         dtype="uint8", voxel_size=(40, 8, 8))
    src[:] = image
    out = f"zarr://{tmp_path}/cli.zarr"
    res = CliRunner().invoke(main, ["predict", str(models["pool"]), src.url, out,
                                    "--block", "8,16,16", "--workers", "2", "--device", "cpu",
                                    "--float32"])
    assert res.exit_code == 0, res.output
    assert "blocks of (8, 16, 16) (halo (6, 6, 6))" in res.output
    assert "CPUExecutionProvider" in res.output
    np.testing.assert_allclose(voxgate.open(out).read(),
                               run_whole(models["pool"], image, (2, 2, 2)), atol=1e-5)
    again = CliRunner().invoke(main, ["predict", str(models["pool"]), src.url, out])
    assert again.exit_code != 0 and "overwrite" in again.output
    bad = CliRunner().invoke(main, ["predict", str(tmp_path / "none.onnx"), src.url,
                                    f"zarr://{tmp_path}/x.zarr"])
    assert bad.exit_code != 0 and "does not exist" in bad.output
