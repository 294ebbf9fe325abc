"""Conv (every attribute), BatchNormalization (folded and standalone) and the activations fused
into a conv epilogue, against the float64 loop references on odd, non-square shapes."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from onnx import helper

from tests.engine.onnx_builders import make_model, positive, randn, run, run_batched, single_node
from tests.engine.reference import (
    activation,
    batchnorm_nchw,
    conv2d_nchw,
    rel_error,
    same_pads,
)

TOL = 1e-5
BATCHES = [1, 7]

# (channels, filters, kernel, attributes): channels are never a multiple of 8
CONV_CASES = {
    "3x3_pad1": (5, 6, (3, 3), {"pads": [1, 1, 1, 1]}),
    "3x3_stride2_asym_pads": (5, 7, (3, 3), {"pads": [0, 1, 2, 1], "strides": [2, 2]}),
    "5x3_stride_2x1": (3, 6, (5, 3), {"pads": [2, 1, 2, 1], "strides": [2, 1]}),
    "dilations": (5, 6, (3, 3), {"pads": [2, 1, 2, 1], "dilations": [2, 1]}),
    "groups2": (6, 10, (3, 3), {"pads": [1, 1, 1, 1], "group": 2}),
    "depthwise": (6, 6, (3, 3), {"pads": [1, 1, 1, 1], "group": 6}),
    "depthwise_stride2": (7, 7, (3, 3), {"pads": [1, 0, 1, 2], "strides": [2, 2], "group": 7}),
    "depthwise_multiplier2": (3, 6, (3, 3), {"group": 3}),
    "1x1": (5, 9, (1, 1), {}),
    "1x1_stride2": (5, 9, (1, 1), {"strides": [2, 2]}),
    "2x4_same_upper_stride2": (5, 6, (2, 4), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    "2x4_same_lower_stride2": (5, 6, (2, 4), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    "3x3_same_upper_dilated": (5, 6, (3, 3), {"auto_pad": "SAME_UPPER", "dilations": [2, 2]}),
    "3x3_valid": (5, 6, (3, 3), {"auto_pad": "VALID", "strides": [1, 2]}),
    "kernel_covers_input": (3, 4, (9, 11), {}),
}


def conv_reference(x, w, b, attrs):
    strides = attrs.get("strides", [1, 1])
    dilations = attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad.startswith("SAME"):
        pads = same_pads(x.shape[2:], w.shape[2:], strides, dilations, auto_pad == "SAME_UPPER")
    return conv2d_nchw(x, w, b, (pads[0], pads[1], pads[2], pads[3]), strides, dilations,
                       attrs.get("group", 1))  # fmt: skip


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv(case, batch):
    rng = np.random.default_rng([zlib.crc32(case.encode()), batch])  # stable across processes
    c, k, kernel, attrs = CONV_CASES[case]
    groups = attrs.get("group", 1)
    x, w, b = randn(rng, batch, c, 9, 11), randn(rng, k, c // groups, *kernel), randn(rng, k)
    model = single_node("Conv", {"x": x}, {"w": w, "b": b}, kernel_shape=list(kernel), **attrs)
    assert rel_error(run_batched(model, x), conv_reference(x, w, b, attrs)) < TOL


def test_conv_without_bias_or_kernel_shape():
    rng = np.random.default_rng(1)
    x, w = randn(rng, 2, 5, 8, 13), randn(rng, 4, 5, 3, 2)
    model = single_node("Conv", {"x": x}, {"w": w}, pads=[1, 0, 1, 1])
    assert rel_error(run(model, {"x": x})[0], conv2d_nchw(x, w, None, (1, 0, 1, 1))) < TOL


def _bn_params(rng, c):
    return {"gamma": positive(rng, c), "beta": randn(rng, c), "mean": randn(rng, c),
            "var": positive(rng, c)}  # fmt: skip


@pytest.mark.parametrize("batch", BATCHES)
def test_batchnorm_folded_into_conv(batch):
    rng = np.random.default_rng(batch)
    x, w, b = randn(rng, batch, 5, 7, 10), randn(rng, 6, 5, 3, 3), randn(rng, 6)
    bn = _bn_params(rng, 6)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", *bn], ["y"], epsilon=1e-3),
    ]
    model = make_model(nodes, {"x": x}, ["y"], {"w": w, "b": b, **bn})
    expected = batchnorm_nchw(conv2d_nchw(x, w, b, (1, 1, 1, 1)), *bn.values(), epsilon=1e-3)
    assert rel_error(run_batched(model, x), expected) < TOL


@pytest.mark.parametrize("rank", [2, 3, 4])
@pytest.mark.parametrize("batch", BATCHES)
def test_batchnorm_standalone(rank, batch):
    """On a graph input (plain layout) of rank 2 to 4, opsets 9 and 15."""
    rng = np.random.default_rng(rank * 10 + batch)
    x = randn(rng, batch, 5, 6, 9)[(slice(None),) * rank + (0,) * (4 - rank)]
    bn = _bn_params(rng, 5)
    for opset in (9, 15):
        model = single_node("BatchNormalization", {"x": x}, bn, opset=opset)
        assert rel_error(run(model, {"x": x})[0], batchnorm_nchw(x, *bn.values())) < TOL


def test_batchnorm_after_conv_relu_runs_on_nhwc():
    """Not foldable (a Relu sits between): BatchNorm runs standalone on the conv's NHWC output."""
    rng = np.random.default_rng(3)
    x, w = randn(rng, 7, 3, 6, 5), randn(rng, 5, 3, 3, 3)
    bn = _bn_params(rng, 5)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("BatchNormalization", ["r", *bn], ["y"]),
    ]
    model = make_model(nodes, {"x": x}, ["y"], {"w": w, **bn})
    conv = activation("Relu", conv2d_nchw(x, w, None, (1, 1, 1, 1)))
    assert rel_error(run_batched(model, x), batchnorm_nchw(conv, *bn.values())) < TOL


FUSED = [
    ("Relu", {}), ("LeakyRelu", {"alpha": 0.13}), ("Sigmoid", {}), ("Tanh", {}),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {}),
    ("Clip", {"min": -0.5, "max": 0.7}),
]  # fmt: skip


@pytest.mark.parametrize("op, attrs", FUSED, ids=[op for op, _ in FUSED])
def test_activation_fused_into_conv(op, attrs):
    """Conv -> activation (and Clip's opset-13 input form): the epilogue applies it in place."""
    rng = np.random.default_rng(len(op))
    x, w, b = randn(rng, 7, 5, 9, 6), randn(rng, 6, 5, 3, 3), randn(rng, 6)
    constants = {"w": w, "b": b}
    act_inputs, act_attrs, opset = ["c"], dict(attrs), 14  # HardSwish is new in 14
    if op == "Clip":
        constants |= {"lo": np.float32(attrs["min"]), "hi": np.float32(attrs["max"])}
        act_inputs, act_attrs = ["c", "lo", "hi"], {}
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node(op, act_inputs, ["y"], **act_attrs),
    ]
    model = make_model(nodes, {"x": x}, ["y"], constants, opset)
    expected = activation(op, conv2d_nchw(x, w, b, (1, 1, 1, 1)), **attrs)
    assert rel_error(run_batched(model, x), expected) < TOL
