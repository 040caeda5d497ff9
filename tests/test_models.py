"""voxgate.synthetic.synapses (ground truth) and the built-in synapse model (issue 12 item 2).

The shipped ONNX model runs in onnxruntime on held-out synthetic volumes (seeds training never
used) and is scored here against the generator's ground truth; torch is not needed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cc3d
import numpy as np
import pytest

from voxgate.errors import (
    CapabilityNotSupportedError,
    InvalidRequestError,
    RemoteNotFoundError,
    VoxgateError,
)
from voxgate.models import BUILTIN, load_session, model_info, resolve_model
from voxgate.models.evaluate import (
    DEFAULT_MATCH_NM,
    HELD_OUT_SEEDS,
    detect,
    match_detections,
    predict_volume,
    score,
)
from voxgate.synthetic import synapses

SHAPE = (24, 192, 192)


@pytest.fixture(scope="module")
def vol():
    return synapses(SHAPE, seed=5, density=3.0)


# --- the generator --------------------------------------------------------------------------


def test_deterministic_per_seed(vol):
    again = synapses(SHAPE, seed=5, density=3.0)
    for field in ("image", "labels", "mask", "instances", "centres", "pre_id", "post_id"):
        assert np.array_equal(getattr(vol, field), getattr(again, field)), field
    other = synapses(SHAPE, seed=6, density=3.0)
    assert not np.array_equal(vol.image, other.image)


def test_types_and_shapes(vol):
    n = len(vol.centres)
    assert n >= 3
    assert vol.image.dtype == np.uint8 and vol.image.shape == SHAPE
    assert vol.labels.dtype == np.uint64 and vol.labels.shape == SHAPE
    assert vol.mask.dtype == bool and vol.instances.dtype == np.uint32
    assert vol.centres.shape == (n, 3) and vol.centres.dtype == np.int64
    assert vol.pre_id.shape == vol.post_id.shape == (n,)
    assert vol.voxel_size == (40.0, 8.0, 8.0)
    assert np.array_equal(vol.mask, vol.instances > 0)
    assert vol["image"] is vol.image  # dict-like access too


def test_each_synapse_is_one_blob_on_a_membrane_between_pre_and_post(vol):
    for i, (c, pre, post) in enumerate(zip(vol.centres, vol.pre_id, vol.post_id, strict=True)):
        blob = vol.instances == i + 1
        assert vol.instances[tuple(c)] == i + 1 and vol.mask[tuple(c)]
        assert cc3d.connected_components(blob, connectivity=26).max() == 1
        assert pre != post
        cells = set(np.unique(vol.labels[blob]).tolist())
        assert cells == {int(pre), int(post)}  # the membrane voxels of pre, the density in post
        # the pre voxels of the blob touch the post cell: the blob hugs their shared membrane
        pre_vox = np.argwhere(blob & (vol.labels == pre))
        touching = 0
        for z, y, x in pre_vox:
            around = vol.labels[max(z - 1, 0):z + 2, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
            touching += bool((around == post).any())
        assert touching == len(pre_vox) > 0
        # the post part is a thin sheet: within 60 nm of the pre cell
        post_part = blob & (vol.labels == post)
        assert post_part.sum() > len(pre_vox)
        # the density is the darkest thing around: darker than the cells' cytoplasm
        cytoplasm = vol.image[(vol.labels == post) & ~vol.mask]
        assert vol.image[blob].mean() < cytoplasm.mean() - 60


def test_synapses_are_apart_and_density_counts():
    few = synapses(SHAPE, seed=2, density=0.5)
    many = synapses(SHAPE, seed=2, density=4.0)
    assert len(many.centres) > len(few.centres)
    nm = many.centres * np.asarray(many.voxel_size)
    d = np.sqrt(((nm[:, None] - nm[None]) ** 2).sum(-1)) + np.eye(len(nm)) * 1e9
    assert d.min() >= 600.0  # placed 700 nm apart; centres sit on their blobs
    none = synapses((8, 32, 32), seed=1, density=0.0)
    assert len(none.centres) == 0 and not none.mask.any()
    with pytest.raises(ValueError, match="densities >= 0"):
        synapses((8, 32, 32), density=-1.0)


# --- matching rule ------------------------------------------------------------------------


def test_match_detections_counts_each_point_once():
    truth = np.array([[0, 0, 0], [0, 0, 1000.0], [0, 0, 2000.0]])
    found = np.array([[0, 0, 10.0], [0, 0, 20.0], [0, 0, 1240.0], [0, 0, 5000.0]])
    m = match_detections(found, truth, max_distance_nm=250.0)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 2, 1)
    assert m["precision"] == 0.5 and m["recall"] == pytest.approx(2 / 3)
    strict = match_detections(found, truth, max_distance_nm=100.0)
    assert strict["tp"] == 1


def test_detect_finds_components_and_drops_small_ones():
    prob = np.zeros((4, 32, 32), np.float32)
    prob[1:3, 4:10, 4:10] = 0.9  # 72 voxels
    prob[2, 20, 20] = 0.9  # 1 voxel
    centroids, sizes = detect(prob, min_size=30)
    assert sizes.tolist() == [72]
    assert np.allclose(centroids[0], [1.5 * 40, 6.5 * 8, 6.5 * 8])


# --- finding the model --------------------------------------------------------------------


def test_resolve_builtin_and_paths(tmp_path):
    path = resolve_model("synapse-unet")
    assert path.is_file() and path.suffix == ".onnx" and "synapse-unet" in BUILTIN
    assert path.stat().st_size < 1024 * 1024  # small enough to ship
    assert resolve_model(path) == path
    assert resolve_model(str(path)) == path


def test_model_files_are_package_data():
    """Wheels carry the .onnx and its card (editable installs read them from src)."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = data["package-data"].get("voxgate", [])
    for name in ("synapse_unet.onnx", "synapse_unet.json"):
        assert any(fnmatch.fnmatch(f"models/{name}", p) for p in patterns), patterns
        assert (root / "src" / "voxgate" / "models" / name).is_file()


def test_resolve_errors(tmp_path):
    with pytest.raises(InvalidRequestError, match="synapse-unet"):
        resolve_model("synapse-net")
    with pytest.raises(RemoteNotFoundError, match="synapse-unet"):
        resolve_model(str(tmp_path / "missing.onnx"))
    with pytest.raises(FileNotFoundError):  # a RemoteNotFoundError is one
        resolve_model(tmp_path / "nested" / "model")
    with pytest.raises(InvalidRequestError, match="directory"):
        resolve_model(tmp_path)
    with pytest.raises(InvalidRequestError):
        resolve_model(3)  # type: ignore[arg-type]


def test_non_onnx_file_and_bad_device(tmp_path):
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"not a protobuf at all")
    with pytest.raises(InvalidRequestError, match="not a model onnxruntime can load"):
        load_session(junk)
    with pytest.raises(InvalidRequestError, match="cpu"):
        load_session("synapse-unet", device="tpu")


def test_cuda_device_needs_the_cuda_provider():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        session = load_session("synapse-unet", device="cuda")
        assert session.get_providers()[0] == "CUDAExecutionProvider"
    else:
        with pytest.raises(CapabilityNotSupportedError, match="onnxruntime-gpu"):
            load_session("synapse-unet", device="cuda")
        session = load_session("synapse-unet", device="auto")
        assert session.get_providers() == ["CPUExecutionProvider"]


def test_model_info_builtin_and_path(tmp_path):
    info = model_info("synapse-unet")
    assert info["inputs"][0]["name"] == "image" and info["outputs"][0]["name"] == "probability"
    assert info["valid_shape"]["multiple_of"] == [1, 4, 4]
    assert info["training"]["seed"] == 0
    assert info["accuracy"]["precision"] >= 0.9 and info["accuracy"]["recall"] >= 0.9
    assert info["size_bytes"] == resolve_model("synapse-unet").stat().st_size
    # the same card travels inside the ONNX file: a copy elsewhere still describes itself
    copy = tmp_path / "copy.onnx"
    shutil.copy(resolve_model("synapse-unet"), copy)
    other = model_info(copy)
    assert other["training"] == info["training"]
    assert other["inputs"][0]["name"] == "image"
    assert other["inputs"][0]["shape"][1] == 1
    card = json.loads(Path(resolve_model("synapse-unet")).with_suffix(".json").read_text())
    assert card["accuracy"] == info["accuracy"]


# --- the model finds synapses -------------------------------------------------------------


def test_shipped_model_finds_held_out_synapses():
    seed = HELD_OUT_SEEDS[-1]  # never used in training (seeds seed * 1000 + i) nor the card
    truth = synapses((32, 256, 256), seed=seed, density=3.0)
    assert len(truth.centres) >= 8
    prob = predict_volume("synapse-unet", truth.image)
    assert prob.shape == truth.image.shape and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    result = score(prob, truth, max_distance_nm=DEFAULT_MATCH_NM)
    assert result["precision"] >= 0.85 and result["recall"] >= 0.85, result
    assert result["voxel_precision"] >= 0.85 and result["voxel_recall"] >= 0.85, result
    # and a volume with no synapses gives (almost) nothing
    empty = synapses((16, 128, 128), seed=seed + 1, density=0.0, lone_vesicles=0.0)
    assert (predict_volume("synapse-unet", empty.image) >= 0.5).sum() < 30


def test_shipped_model_marks_nothing_where_the_image_is_black():
    """Black is no synapse: space outside the tissue, an unimaged margin, absent chunks read as
    0, a missing section.  (The first weights answered about 1.0 on black everywhere, and a
    mostly-black volume became one huge detection.)"""
    seed = HELD_OUT_SEEDS[-1]
    assert (predict_volume("synapse-unet", np.zeros((16, 96, 96), np.uint8)) >= 0.5).sum() == 0
    truth = synapses((32, 256, 256), seed=seed, density=3.0)
    image = truth.image.copy()
    image[..., 160:] = 0  # an unimaged margin
    image[20] = 0  # a missing section
    prob = predict_volume("synapse-unet", image)
    assert (prob[..., 160:] >= 0.5).sum() < 30 and (prob[20] >= 0.5).sum() < 30
    # the synapses in the tissue are still found (the ones the margin cuts are not asked for)
    found, _ = detect(prob, voxel_size=truth.voxel_size)
    inside = truth.centres[truth.centres[:, 2] < 140] * np.asarray(truth.voxel_size)
    assert len(inside) >= 4
    got = match_detections(found, inside, max_distance_nm=DEFAULT_MATCH_NM)
    assert got["tp"] == len(inside), got


def test_errors_are_voxgate_errors():
    with pytest.raises(VoxgateError):
        resolve_model("nope")
