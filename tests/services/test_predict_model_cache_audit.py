"""predict's cache of checked models served nothing: ``load_model`` looked a model up by its
full sha256 and stored it under the 16-character digest, so every ``predict`` call loaded and
checked the same ONNX bytes again (an onnxruntime session built and thrown away per call).
Now the same bytes are checked once; the card of each load is the file's own card plus what
the name it was loaded by adds (a built-in model's card), not the first load's."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest

import voxgate
from voxgate.services.predict import load_model

from .onnx_models import conv_model

predict_module = importlib.import_module("voxgate.services.predict")


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    made: list[int] = []
    real = predict_module._make_session

    def counting(*args: object, **kwargs: object) -> object:
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_module, "_make_session", counting)
    return made


def test_the_same_model_is_checked_once(tmp_path: Path, sessions: list[int]) -> None:
    path = conv_model(tmp_path / "m.onnx", seed=11, card={"name": "eleven", "halo": [2, 2, 2]})
    first = load_model(path, device="cpu")
    checked = len(sessions)  # (its check, and its probe's run)
    assert checked >= 1
    again = load_model(path, device="cpu")
    copy = load_model(shutil.copy(path, tmp_path / "copy.onnx"), device="cpu")
    assert len(sessions) == checked  # (each loaded and checked again)
    for r in (again, copy):
        assert (r.step, r.radius, r.channels, r.bounded) == (
            first.step, first.radius, first.channels, first.bounded)
        assert r.card == first.card == {"name": "eleven", "halo": [2, 2, 2]}
    assert copy.name.endswith("copy.onnx")
    other = load_model(conv_model(tmp_path / "o.onnx", seed=12), device="cpu")
    assert len(sessions) > checked and other.card == {}
    checked = len(sessions)
    # predict itself: one check for the first call, none for the next
    img = (np.arange(12 * 16 * 16) % 200).astype(np.uint8).reshape(12, 16, 16)
    runs = [np.asarray(voxgate.predict(str(path), img, block=(12, 16, 16), dtype="float32",
                                       device="cpu", progress=False)) for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert len(sessions) <= checked + 2  # (the two predict calls' sessions: no checks)


def test_the_card_of_each_load_is_its_own(tmp_path: Path, sessions: list[int]) -> None:
    """A built-in model loaded by name carries its package card; the same bytes loaded from a
    file next carry the file's card alone (and the other way round)."""
    from voxgate.models import resolve_model

    builtin = load_model("synapse-unet", device="cpu")
    checked = len(sessions)
    assert builtin.card.get("path") and builtin.card.get("size_bytes")
    plain = load_model(shutil.copy(resolve_model("synapse-unet"), tmp_path / "s.onnx"),
                       device="cpu")
    assert len(sessions) == checked
    assert "path" not in plain.card and "size_bytes" not in plain.card
    again = load_model("synapse-unet", device="cpu")
    assert again.card == builtin.card
    assert len(sessions) == checked
