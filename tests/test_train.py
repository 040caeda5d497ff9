"""python -m voxgate.models.train (issue 12 item 2): runs only where PyTorch is importable.

torch is the optional ``train`` extra, not a test dependency; everything else about the model
(tests/test_models.py) runs on onnxruntime alone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the issue: this test runs when torch is importable

from voxgate.models import load_session, model_info  # noqa: E402
from voxgate.models.train import UNet3D, main  # noqa: E402


def test_tiny_training_exports_a_working_onnx(tmp_path, capsys):
    out = tmp_path / "tiny_unet.onnx"
    assert main(["--out", str(out), "--seed", "3", "--steps", "30", "--patch", "32",
                 "--patch-z", "4", "--batch", "2", "--volumes", "1",
                 "--channels", "4", "8", "8", "--threads", "1", "--eval-volumes", "0"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    before, after = card["training"]["probe_loss_before_after"]
    assert after < before  # the loss on a fixed batch went down
    assert card["training"]["seed"] == 3 and card["channels"] == [4, 8, 8]
    assert "wrote" in capsys.readouterr().out

    session = load_session(out)
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["probability"]
    for shape in [(1, 1, 5, 24, 36), (2, 1, 3, 16, 16)]:  # Z, Y, X (and batch) are dynamic
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        (y,) = session.run(None, {"image": x})
        assert y.shape == shape and y.dtype == np.float32
        assert 0.0 <= y.min() and y.max() <= 1.0
    # the card is stamped into the ONNX file's metadata as well
    assert model_info(out)["training"] == card["training"]


def test_onnx_matches_torch(tmp_path):
    from voxgate.models.train import export_onnx

    torch.manual_seed(0)
    model = UNet3D((4, 8, 8)).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    x = np.random.default_rng(1).random((1, 1, 6, 20, 28), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    (got,) = load_session(path).run(None, {"image": x})
    assert np.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 4"):
        from voxgate.models.train import train

        train(patch=(4, 30, 30), steps=1, volumes=1)
