"""Tiny ONNX models built with the onnx package's helper API, for predict's tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def conv_model(path: Path, *, layers: int = 2, pool: bool = False, channels_out: int = 1,
               seed: int = 0, input_shape: Sequence[str | int | None] = (1, 1, "z", "y", "x"),
               input_type: str = "FLOAT", pads: int = 1,
               card: dict[str, object] | None = None) -> Path:
    """3-D convolutions (3x3x3, fixed random weights) with ReLU between them and a Sigmoid at
    the end; ``pool`` puts a 2x max pooling after the first and a nearest 2x upsampling before
    the Sigmoid (a one-level U-Net's size step of 2); ``pads=0`` makes 'valid' convolutions
    whose output is smaller than their input; ``card``: a voxgate model card stored in the
    file's metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", getattr(TensorProto, input_type), list(input_shape))
    out_rank = 5 if len(input_shape) == 5 else len(input_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * out_rank)
    nodes, inits = [], []
    cur, cin = "x", 1
    if len(input_shape) == 4:  # (c, z, y, x): a valid model whose input rank predict refuses
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
        nodes.append(helper.make_node("Unsqueeze", ["x", "axis0"], ["x5"]))
        cur = "x5"
    if input_type != "FLOAT":
        nodes.append(helper.make_node("Cast", [cur], ["xf"], to=TensorProto.FLOAT))
        cur = "xf"
    for i in range(layers):
        cout = channels_out if i == layers - 1 else 4
        w = rng.normal(0, 0.5, (cout, cin, 3, 3, 3)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(np.full(cout, 0.1, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Conv", [cur, f"w{i}", f"b{i}"], [f"c{i}"],
                                      pads=[pads] * 6))
        cur = f"c{i}"
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
            if pool and i == 0:
                nodes.append(helper.make_node("MaxPool", [cur], ["p"], kernel_shape=[2, 2, 2],
                                              strides=[2, 2, 2]))
                cur = "p"
        cin = cout
    if pool:
        inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2, 2], np.float32), "scales"))
        nodes.append(helper.make_node("Resize", [cur, "", "scales"], ["up"], mode="nearest"))
        cur = "up"
    nodes.append(helper.make_node("Sigmoid", [cur], ["y"]))
    graph = helper.make_graph(nodes, "voxgate-test", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if card is not None:  # as voxgate.models.train stores it
        import json

        helper.set_model_props(model, {"voxgate": json.dumps(card)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def run_whole(path: Path, image: np.ndarray, step: Sequence[int] = (1, 1, 1)) -> np.ndarray:
    """onnxruntime on the whole volume (0..1 floats, zero-padded at the upper faces to the
    model's size step), the output cropped back: the reference predict must equal."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = image.astype(np.float32) / 255 if image.dtype == np.uint8 else image.astype(np.float32)
    pad = [(0, -(-n // s) * s - n) for n, s in zip(x.shape, step, strict=True)]
    out = sess.run(None, {"x": np.pad(x, pad)[None, None]})[0][0]
    out = out[(slice(None), *(slice(0, n) for n in image.shape))]
    return out[0] if out.shape[0] == 1 else out
