"""Small ONNX graphs for the engine's operator and model tests, built with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine import load_model


def randn(rng, *shape, scale=1.0) -> np.ndarray:
    """Fresh float32 normal samples (never all zeros)."""
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def positive(rng, *shape, low=0.5, high=1.5) -> np.ndarray:
    """Float32 samples in [low, high): variances, divisors, scales."""
    return rng.uniform(low, high, shape).astype(np.float32)


def make_model(nodes, inputs: dict, outputs, constants=None, opset=13) -> onnx.ModelProto:
    """A model over ``nodes``; ``inputs`` maps graph-input names to example arrays (their shapes
    and dtypes are declared), ``constants`` to initializer arrays."""
    constants = constants or {}
    declared = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
        for name, v in inputs.items()
    ]
    results = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs]
    inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in constants.items()]
    graph = helper.make_graph(nodes, "test", declared, results, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def single_node(op, inputs: dict, constants=None, opset=13, **attrs) -> onnx.ModelProto:
    """One node reading every input and constant in order (``""`` keys skip an optional input)."""
    names = list(inputs) + list(constants or {})
    node = helper.make_node(op, names, ["y"], **attrs)
    return make_model([node], inputs, ["y"], constants, opset)


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """Every output of ``model`` on exactly these inputs (``Model.run``)."""
    first = next(iter(feeds.values()))
    engine_model = load_model(model, batch_sizes=(max(first.shape[0], 1),), autotune_mode="off")
    return engine_model.run(feeds)


def run_batched(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The first output through ``model(x)`` with buckets 1 and 8 (batch 7 is padded to 8)."""
    return load_model(model, batch_sizes=(1, 8), autotune_mode="off")(x)
