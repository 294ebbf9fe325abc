"""Small ONNX CNNs built with onnx.helper for the service tests (random weights, fixed seed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_cnn(channels: int, size: int, classes: int, seed: int) -> onnx.ModelProto:
    """input (N, C, size, size) -> Conv 3x3 -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    hidden = 8
    weights = {
        "w": rng.standard_normal((hidden, channels, 3, 3)).astype(np.float32) * 0.5,
        "b": rng.standard_normal(hidden).astype(np.float32) * 0.1,
        "fc_w": rng.standard_normal((classes, hidden)).astype(np.float32),
        "fc_b": rng.standard_normal(classes).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model_dir(
    root: Path, name: str, channels: int = 3, size: int = 16, classes: int = 10, meta=None
) -> Path:
    """A model directory: model.onnx plus model.json (labels and preprocessing)."""
    root.mkdir(parents=True, exist_ok=True)
    directory = root / name
    directory.mkdir()
    onnx.save(build_cnn(channels, size, classes, seed=len(name)), directory / "model.onnx")
    meta = meta if meta is not None else {"labels": [f"class-{i}" for i in range(classes)]}
    (directory / "model.json").write_text(json.dumps(meta))
    return directory
