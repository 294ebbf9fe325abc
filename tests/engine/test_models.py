"""Whole small CNNs built with onnx.helper (residual adds, concat branches, depthwise-separable
blocks, squeeze-excitation, channel shuffle, Gemm and MatMul heads; opsets 9 to 21) against
onnxruntime: ||y - ref|| / ||ref|| < 1e-4 at batch 1 and 7 on fresh random inputs."""

from __future__ import annotations

import itertools
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine import load_model
from tests.engine.onnx_builders import positive, randn
from tests.engine.reference import rel_error

TOL = 1e-4


class Net:
    """Accumulates nodes and initializers; each method returns the name of its output."""

    def __init__(self, rng, opset: int):
        self.rng, self.opset = rng, opset
        self.nodes, self.consts = [], {}
        self.names = (f"v{i}" for i in itertools.count())

    def const(self, array) -> str:
        name = next(self.names)
        self.consts[name] = np.asarray(array)
        return name

    def op(self, op_type, *inputs, outputs=1, **attrs) -> str:
        names = [next(self.names) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0]

    def conv(self, x, c_in, c_out, k=3, stride=1, group=1, bias=True, **attrs) -> str:
        k = (k, k) if isinstance(k, int) else k
        if "auto_pad" not in attrs:
            attrs.setdefault("pads", [k[0] // 2, k[1] // 2] * 2)
        w = self.const(randn(self.rng, c_out, c_in // group, *k, scale=(c_in // group) ** -0.5))
        inputs = [x, w] + ([self.const(randn(self.rng, c_out, scale=0.1))] if bias else [])
        return self.op("Conv", *inputs, strides=[stride, stride], group=group, **attrs)

    def bn(self, x, c) -> str:
        params = [positive(self.rng, c), randn(self.rng, c, scale=0.1),
                  randn(self.rng, c, scale=0.1), positive(self.rng, c)]  # fmt: skip
        return self.op("BatchNormalization", x, *map(self.const, params), epsilon=1e-3)

    def axes(self, op_type, x, axes) -> str:
        """Squeeze/Unsqueeze with axes as an attribute (opset < 13) or an input."""
        if self.opset < 13:
            return self.op(op_type, x, axes=axes)
        return self.op(op_type, x, self.const(np.array(axes, np.int64)))

    def model(self, shape, output) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
            [numpy_helper.from_array(v, k) for k, v in self.consts.items()])  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8 if self.opset < 19 else 10  # what onnxruntime accepts for the opset
        return model


def residual_net(net: Net) -> str:
    """ResNet-like: strided stem, max pool, identity and projection shortcuts (opset 9)."""
    y = net.op("Relu", net.bn(net.conv("x", 3, 8, k=(5, 3), stride=2, bias=False), 8))
    y = net.op("MaxPool", y, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for c_in, c_out, stride in ((8, 8, 1), (8, 12, 2)):
        body = net.op("Relu", net.bn(net.conv(y, c_in, c_out, stride=stride), c_out))
        body = net.bn(net.conv(body, c_out, c_out), c_out)
        short = y if c_in == c_out else net.bn(net.conv(y, c_in, c_out, 1, stride, pads=[0] * 4),
                                               c_out)  # fmt: skip
        y = net.op("Relu", net.op("Add", body, short))
    y = net.op("Flatten", net.op("GlobalAveragePool", y))
    return net.op("Gemm", y, net.const(randn(net.rng, 10, 12)), net.const(randn(net.rng, 10)),
                  transB=1, alpha=0.5)  # fmt: skip


def inception_net(net: Net) -> str:
    """GoogLeNet-like: LRN, branches of 1x1 / 3x3 / 5x5 SAME / pool concatenated on channels,
    average pool with count_include_pad, Dropout, Reshape, Gemm, legacy Softmax (opset 11)."""
    y = net.op("Relu", net.conv("x", 3, 10, stride=2))
    y = net.op("LRN", y, size=5, alpha=1e-3, beta=0.75, bias=1.0)
    branches = [
        net.op("Relu", net.conv(y, 10, 6, 1, pads=[0] * 4)),
        net.op("Relu", net.conv(net.conv(y, 10, 4, 1, pads=[0] * 4), 4, 7, 3)),
        net.conv(y, 10, 5, 5, auto_pad="SAME_UPPER"),
        net.conv(net.op("MaxPool", y, kernel_shape=[3, 3], pads=[1, 1, 1, 1]), 10, 3, 1),
    ]
    y = net.op("Concat", *branches, axis=1)
    y = net.op("AveragePool", y, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
               count_include_pad=1, ceil_mode=1)  # fmt: skip
    y = net.op("Dropout", net.op("GlobalMaxPool", y), ratio=0.4)
    y = net.op("Reshape", y, net.const(np.array([0, -1], np.int64)))
    y = net.op("Gemm", y, net.const(randn(net.rng, 21, 9, scale=0.1)), net.const(randn(net.rng, 9)))
    return net.op("Softmax", y)


def mobile_net(net: Net) -> str:
    """MobileNetV3-like: Clip(0, 6) as inputs, depthwise-separable blocks, HardSwish,
    squeeze-excitation (a runtime (N, C, 1, 1) scale times an NHWC map), residual Add,
    Squeeze head, Softmax on the last axis (opset 14 and newer)."""
    zero, six = net.const(np.float32(0)), net.const(np.float32(6))
    y = net.op("Clip", net.bn(net.conv("x", 3, 12, stride=2), 12), zero, six)
    for stride in (1, 2):
        dw = net.op("HardSwish", net.bn(net.conv(y, 12, 12, stride=stride, group=12), 12))
        se = net.op("Relu", net.conv(net.op("GlobalAveragePool", dw), 12, 5, 1, pads=[0] * 4))
        se = net.op("HardSigmoid", net.conv(se, 5, 12, 1, pads=[0] * 4), alpha=1 / 6)
        pw = net.bn(net.conv(net.op("Mul", dw, se), 12, 12, 1, pads=[0] * 4, bias=False), 12)
        y = net.op("Add", pw, y) if stride == 1 else pw
    y = net.op("PRelu", y, net.const(randn(net.rng, 12, 1, 1, scale=0.2)))
    y = net.axes("Squeeze", net.op("GlobalAveragePool", y), [2, 3])
    y = net.op("Gemm", y, net.const(randn(net.rng, 7, 12)), net.const(randn(net.rng, 1, 7)),
               transB=1, beta=0.5)  # fmt: skip
    return net.op("Softmax", y, axis=-1)


def shuffle_net(net: Net) -> str:
    """ShuffleNet-like: grouped 1x1 convs, channel shuffle (Reshape, Transpose, Reshape),
    average-pool shortcut concatenated, Unsqueeze, MatMul + Add head, Sigmoid/Tanh mix."""
    y = net.op("LeakyRelu", net.conv("x", 3, 12, stride=2), alpha=0.1)
    g = net.op("Relu", net.conv(y, 12, 12, 1, group=3, pads=[0] * 4))
    g = net.op("Reshape", g, net.const(np.array([0, 3, 4, -1], np.int64)))  # 0: keep N
    g = net.op("Transpose", g, perm=[0, 2, 1, 3])
    g = net.op("Reshape", g, net.const(np.array([0, 12, *net.spatial], np.int64)))
    g = net.conv(g, 12, 12, 3, stride=2, group=12)
    g = net.conv(g, 12, 6, 1, group=3, pads=[0] * 4)
    short = net.op("AveragePool", y, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    y = net.op("Sigmoid", net.op("Concat", g, short, axis=1))
    y = net.op("Tanh", net.op("Sub", y, net.const(np.float32(0.5))))
    y = net.op("Flatten", net.op("GlobalAveragePool", y), axis=1)
    y = net.op("MatMul", net.axes("Unsqueeze", y, [1]), net.const(randn(net.rng, 18, 6)))
    return net.op("Add", net.axes("Squeeze", y, [1]), net.const(randn(net.rng, 6)))


NETS = {
    "residual_opset9": (residual_net, 9, (3, 31, 27)),
    "inception_opset11": (inception_net, 11, (3, 25, 30)),
    "mobile_opset14": (mobile_net, 14, (3, 29, 23)),
    "mobile_opset21": (mobile_net, 21, (3, 16, 21)),
    "shuffle_opset13": (shuffle_net, 13, (3, 22, 18)),
    "shuffle_opset17": (shuffle_net, 17, (3, 22, 18)),
}


def build(name: str, rng) -> onnx.ModelProto:
    body, opset, shape = NETS[name]
    net = Net(rng, opset)
    net.spatial = [(shape[1] + 1) // 2, (shape[2] + 1) // 2]  # after a stride-2 stem
    return net.model(["N", *shape], body(net))


def onnxruntime_outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize(
    "name, autotune_mode",
    [(name, "off") for name in NETS] + [("residual_opset9", "force"), ("shuffle_opset17", "force")],
)
def test_net_matches_onnxruntime(name, autotune_mode):
    """Default algorithms, and (force) whichever candidates the tuner times fastest here."""
    rng = np.random.default_rng(sum(map(ord, name)))
    model = build(name, rng)
    shape = NETS[name][2]
    engine_model = load_model(model, batch_sizes=(1, 8), autotune_mode=autotune_mode)
    for batch in (1, 7):
        x = randn(rng, batch, *shape)
        y, ref = engine_model(x), onnxruntime_outputs(model, x)
        assert y.shape == ref.shape
        assert rel_error(y, ref) < TOL, (name, batch)


LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def test_light_squeezenet_logits_match_onnxruntime():
    """The onnx package's light SqueezeNet up to its logits (the conformance test compares a
    softmax of logits that are equal only up to rounding, see test_onnx_backend.py), with
    random biases and input."""
    model = onnx.load(os.path.join(LIGHT, "light_squeezenet.onnx"))
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    model.graph.node.remove(softmax)
    out = model.graph.output[0]
    out.name = softmax.input[0]
    rng = np.random.default_rng(7)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for info in model.graph.input:
        if info.name not in inits:
            dims = [d.dim_value for d in info.type.tensor_type.shape.dim]
            feeds[info.name] = randn(rng, *dims)
    engine_model = load_model(model, batch_sizes=(1,), autotune_mode="off")
    y = engine_model.run(feeds)[0]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert rel_error(y, session.run(None, feeds)[0]) < TOL
