"""The benchmark networks, built with onnx.helper from random weights (nothing downloaded)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class NetBuilder:
    """Appends nodes and initialisers; ``conv_bn_relu`` is the CNN's usual unit."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv_bn(self, x: str, c: int, k: int, kernel: int, stride: int = 1) -> str:
        """Conv (He-initialised, no bias) + BatchNormalization with random statistics."""
        w = self.rng.standard_normal((k, c, kernel, kernel)) * np.sqrt(2 / (c * kernel * kernel))
        pad = kernel // 2
        y = self.node("Conv", [x, self.const(w)], kernel_shape=[kernel, kernel],
                      strides=[stride, stride], pads=[pad] * 4)  # fmt: skip
        stats = [1 + 0.1 * self.rng.standard_normal(k), 0.1 * self.rng.standard_normal(k),
                 0.1 * self.rng.standard_normal(k), 1 + 0.1 * self.rng.random(k)]  # fmt: skip
        return self.node("BatchNormalization", [y, *(self.const(s, "bn") for s in stats)])

    def conv_bn_relu(self, x: str, c: int, k: int, kernel: int = 3, stride: int = 1) -> str:
        return self.node("Relu", [self.conv_bn(x, c, k, kernel, stride)])

    def head(self, x: str, c: int, classes: int) -> str:
        """Global average pool, flatten, linear."""
        flat = self.node("Flatten", [self.node("GlobalAveragePool", [x])])
        w = self.rng.standard_normal((c, classes)) / np.sqrt(c)
        return self.node("Gemm", [flat, self.const(w), self.const(np.zeros(classes))])

    def model(self, name: str, x: str, y: str, chw: tuple[int, int, int], classes: int):
        inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", *chw])]
        outputs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", classes])]
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(model)
        return model


def cifar_net(seed: int = 0) -> onnx.ModelProto:
    """Five 3x3 convs 3->32->32->64->64->128 on 32x32, two max-pools, global pool, linear."""
    b = NetBuilder(seed)
    x = b.conv_bn_relu("input", 3, 32)
    x = b.conv_bn_relu(x, 32, 32)
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.conv_bn_relu(x, 32, 64)
    x = b.conv_bn_relu(x, 64, 64)
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.conv_bn_relu(x, 64, 128)
    return b.model("cifar", "input", b.head(x, 128, 10), (3, 32, 32), 10)


def basic_block(b: NetBuilder, x: str, c: int, k: int, stride: int) -> str:
    """ResNet basic block: two 3x3 conv-BN, a 1x1 strided projection when the shape changes."""
    y = b.conv_bn_relu(x, c, k, 3, stride)
    y = b.conv_bn(y, k, k, 3)
    shortcut = b.conv_bn(x, c, k, 1, stride) if (stride != 1 or c != k) else x
    return b.node("Relu", [b.node("Add", [y, shortcut])])


def resnet18(seed: int = 0, size: int = 224) -> onnx.ModelProto:
    """ResNet-18's shapes (He et al. 2016) on ``size`` x ``size`` inputs, random weights."""
    b = NetBuilder(seed)
    x = b.conv_bn_relu("input", 3, 64, 7, 2)
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = 64
    for k, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        x = basic_block(b, x, c, k, stride)
        x = basic_block(b, x, k, k, 1)
        c = k
    return b.model("resnet18", "input", b.head(x, 512, 1000), (3, size, size), 1000)


NETS = {"cifar": (cifar_net, (3, 32, 32)), "resnet18": (resnet18, (3, 224, 224))}
