"""Whole models for the device comparisons: the CIFAR-style benchmark net, a depthwise-separable
block, every pooling variant, and a conv followed by each activation the epilogue fuses."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from engine.bench.nets import NetBuilder, cifar_net

# (kernel, strides, dilations, pads (t, l, b, r), ceil_mode, count_include_pad)
POOLS = (
    ((2, 2), (2, 2), (1, 1), (0, 0, 0, 0), 0, 0),
    ((3, 3), (2, 2), (1, 1), (1, 1, 1, 1), 0, 0),
    ((3, 3), (2, 2), (1, 1), (1, 1, 1, 1), 0, 1),
    ((3, 2), (2, 3), (1, 1), (0, 1, 1, 0), 1, 0),
    ((3, 3), (2, 2), (1, 1), (1, 0, 0, 1), 1, 1),
    ((2, 3), (1, 1), (2, 1), (1, 1, 0, 2), 0, 1),
    ((3, 3), (3, 3), (2, 2), (2, 2, 2, 2), 1, 0),
)

ACTIVATIONS = (
    ("Relu", {}, ()),
    ("LeakyRelu", {"alpha": 0.1}, ()),
    ("Clip", {}, (-0.5, 0.75)),
    ("Sigmoid", {}, ()),
    ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}, ()),
    ("HardSwish", {}, ()),
    ("Tanh", {}, ()),
)


def conv(b: NetBuilder, x: str, c: int, k: int, kernel: int, stride=1, pads=None, group=1):
    """Conv with a bias, He-initialised."""
    w = b.rng.standard_normal((k, c // group, kernel, kernel)) * np.sqrt(2 / (c // group * 9))
    return b.node("Conv", [x, b.const(w), b.const(0.1 * b.rng.standard_normal(k))],
                  kernel_shape=[kernel, kernel], strides=[stride, stride],
                  pads=pads or [kernel // 2] * 4, group=group)  # fmt: skip


def feature_model(b: NetBuilder, name: str, y: str, chw: tuple) -> onnx.ModelProto:
    """The builder's nodes as a model whose output is the 4-D map ``y`` (no head to blur it)."""
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *chw])]
    outputs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)]
    graph = helper.make_graph(b.nodes, name, inputs, outputs, b.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def separable(seed: int = 0) -> onnx.ModelProto:
    """MobileNet-style: stem, depthwise + pointwise, depthwise with multiplier 2, pools, head."""
    b = NetBuilder(seed)
    stem = b.conv_bn("input", 3, 16, 3, 2)
    x = b.node("Clip", [stem, b.const(np.float32(0)), b.const(np.float32(6))])
    x = b.node("Relu", [conv(b, x, 16, 16, 3, group=16)])
    x = b.node("HardSwish", [conv(b, x, 16, 24, 1, pads=[0] * 4)])
    x = b.node("LeakyRelu", [conv(b, x, 24, 48, 3, 2, [0, 1, 1, 0], group=24)], alpha=0.05)
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    x = b.node("AveragePool", [x], kernel_shape=[2, 2], pads=[1, 1, 0, 0], count_include_pad=1)
    return b.model("separable", "input", b.head(x, 48, 10), (3, 29, 27), 10)


def pooling(index: int, kind: str, seed: int = 0) -> onnx.ModelProto:
    """A conv, then pooling variant ``index`` of POOLS as MaxPool or AveragePool."""
    kernel, strides, dilations, pads, ceil, include_pad = POOLS[index]
    b = NetBuilder(seed)
    extra = {"count_include_pad": include_pad} if kind == "AveragePool" else {}
    y = b.node(kind, [conv(b, "input", 3, 8, 3)], kernel_shape=list(kernel),
               strides=list(strides), dilations=list(dilations), pads=list(pads),
               ceil_mode=ceil, **extra)  # fmt: skip
    return feature_model(b, f"pool{index}_{kind}", y, (3, 13, 11))


def epilogues(seed: int = 0) -> onnx.ModelProto:
    """conv -> each fusable activation in turn (7 convs, 7 different epilogues)."""
    b = NetBuilder(seed)
    x, c = "input", 3
    for op, attrs, bounds in ACTIVATIONS:
        bound_inputs = [b.const(np.float32(v)) for v in bounds]
        x, c = b.node(op, [conv(b, x, c, 6, 3), *bound_inputs], **attrs), 6
    return feature_model(b, "epilogues", x, (3, 10, 9))


MODELS = {
    "cifar": (cifar_net, (3, 32, 32)),
    "separable": (separable, (3, 29, 27)),
    "epilogues": (epilogues, (3, 10, 9)),
    **{f"pool{i}_{kind}": (lambda i=i, kind=kind: pooling(i, kind), (3, 13, 11))
       for i in range(len(POOLS)) for kind in ("MaxPool", "AveragePool")},
}  # fmt: skip
