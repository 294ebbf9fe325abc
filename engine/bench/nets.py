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

    def relu6(self, x: str) -> str:
        return self.node(
            "Clip", [x, self.const(np.float32(0), "lo"), self.const(np.float32(6), "hi")]
        )

    def depthwise_bn(self, x: str, c: int, stride: int) -> str:
        """3x3 depthwise conv (group = channels) + BatchNormalization with random statistics."""
        w = self.rng.standard_normal((c, 1, 3, 3)) * np.sqrt(2 / 9)
        y = self.node("Conv", [x, self.const(w)], kernel_shape=[3, 3], strides=[stride, stride],
                      pads=[1] * 4, group=c)  # fmt: skip
        stats = [1 + 0.1 * self.rng.standard_normal(c), 0.1 * self.rng.standard_normal(c),
                 0.1 * self.rng.standard_normal(c), 1 + 0.1 * self.rng.random(c)]  # fmt: skip
        return self.node("BatchNormalization", [y, *(self.const(s, "bn") for s in stats)])

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
    name = "resnet18" if size == 224 else f"resnet18_{size}"  # the NETS key
    return b.model(name, "input", b.head(x, 512, 1000), (3, size, size), 1000)


def inverted_residual(b: NetBuilder, x: str, c: int, k: int, stride: int, expand: int) -> str:
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise, 1x1 projection (ReLU6 between), with
    the identity shortcut when the shape is kept."""
    hidden = c * expand
    y = b.relu6(b.conv_bn(x, c, hidden, 1)) if expand != 1 else x
    y = b.relu6(b.depthwise_bn(y, hidden, stride))
    y = b.conv_bn(y, hidden, k, 1)
    return b.node("Add", [y, x]) if stride == 1 and c == k else y


def mobilenet(seed: int = 0, size: int = 128) -> onnx.ModelProto:
    """A MobileNetV2-style net (Sandler et al. 2018) at width 0.5 on ``size`` x ``size``
    inputs: stem, seven inverted-residual stages, 1x1 head, global pool, linear; random
    weights."""
    b = NetBuilder(seed)
    x = b.relu6(b.conv_bn("input", 3, 16, 3, 2))
    c = 16
    stages = ((8, 1, 1, 1), (12, 2, 2, 6), (16, 3, 2, 6), (32, 4, 2, 6), (48, 3, 1, 6),
              (80, 3, 2, 6), (160, 1, 1, 6))  # fmt: skip
    for k, repeats, stride, expand in stages:
        for index in range(repeats):
            x = inverted_residual(b, x, c, k, stride if index == 0 else 1, expand)
            c = k
    x = b.relu6(b.conv_bn(x, c, 640, 1))
    return b.model("mobilenet", "input", b.head(x, 640, 1000), (3, size, size), 1000)


NETS = {
    "cifar": (cifar_net, (3, 32, 32)),
    "resnet18": (resnet18, (3, 224, 224)),
    "resnet18_64": (lambda seed=0: resnet18(seed, size=64), (3, 64, 64)),
    "mobilenet": (mobilenet, (3, 128, 128)),
}
