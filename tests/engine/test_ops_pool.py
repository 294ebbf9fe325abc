"""MaxPool and AveragePool (pads, strides, dilations, ceil_mode, count_include_pad, auto_pad),
the global pools and LRN, against the explicit-loop float64 references."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.engine.onnx_builders import make_model, randn, run, run_batched, single_node
from tests.engine.reference import conv2d_nchw, lrn_nchw, pool2d_nchw, rel_error, same_pads

TOL = 1e-6
# kernel, attributes (every case runs on a 9x11 input with 5 channels)
POOL_CASES = {
    "2x2_stride2": ((2, 2), {"strides": [2, 2]}),
    "3x3_stride2_pads": ((3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "3x2_asym_pads": ((3, 2), {"strides": [1, 2], "pads": [2, 0, 1, 1]}),
    "3x3_ceil": ((3, 3), {"strides": [2, 2], "ceil_mode": 1}),
    "3x3_ceil_pads": ((3, 3), {"strides": [2, 3], "pads": [1, 1, 1, 0], "ceil_mode": 1}),
    "2x2_ceil_last_window_on_pad": (
        (2, 2),
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    ),  # fmt: skip
    "dilations": ((2, 3), {"dilations": [2, 2], "pads": [1, 1, 1, 1]}),
    "dilations_ceil": ((3, 2), {"dilations": [2, 3], "strides": [2, 2], "ceil_mode": 1}),
    "same_upper": ((3, 2), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    "same_lower": ((2, 4), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    "valid": ((3, 3), {"auto_pad": "VALID", "strides": [2, 1]}),
}


def _reference(x, mode, kernel, attrs, count_include_pad=False):
    strides, dilations = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad.startswith("SAME"):
        pads = same_pads(x.shape[2:], kernel, strides, dilations, auto_pad == "SAME_UPPER")
    return pool2d_nchw(x, mode, kernel, tuple(pads), strides, dilations,
                       bool(attrs.get("ceil_mode", 0)), count_include_pad)  # fmt: skip


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_maxpool(case, batch):
    rng = np.random.default_rng(batch)
    kernel, attrs = POOL_CASES[case]
    x = randn(rng, batch, 5, 9, 11)
    model = single_node("MaxPool", {"x": x}, opset=12, kernel_shape=list(kernel), **attrs)
    assert rel_error(run_batched(model, x), _reference(x, "max", kernel, attrs)) < TOL


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_averagepool(case, batch, count_include_pad):
    rng = np.random.default_rng(batch)
    kernel, attrs = POOL_CASES[case]
    x = randn(rng, batch, 5, 9, 11)
    # dilations on AveragePool arrived in opset 19
    model = single_node("AveragePool", {"x": x}, opset=19, kernel_shape=list(kernel),
                        count_include_pad=count_include_pad, **attrs)  # fmt: skip
    expected = _reference(x, "avg", kernel, attrs, bool(count_include_pad))
    assert rel_error(run_batched(model, x), expected) < TOL


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pool_after_conv(op):
    """The pool reads the conv's NHWC output directly."""
    rng = np.random.default_rng(4)
    x, w = randn(rng, 7, 3, 10, 7), randn(rng, 6, 3, 3, 3)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node(
            op, ["c"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1
        ),  # fmt: skip
    ]
    model = make_model(nodes, {"x": x}, ["y"], {"w": w})
    conv = conv2d_nchw(x, w, None, (1, 1, 1, 1))
    mode = "max" if op == "MaxPool" else "avg"
    expected = pool2d_nchw(conv, mode, (3, 3), (1, 0, 1, 1), (2, 2), ceil_mode=True)
    assert rel_error(run_batched(model, x), expected) < TOL


@pytest.mark.parametrize("after_conv", [False, True])
@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(op, after_conv):
    rng = np.random.default_rng(2)
    x = randn(rng, 7, 5, 6, 9)
    nodes, consts, ref, source = [], {}, x.astype(np.float64), "x"
    if after_conv:
        w = randn(rng, 6, 5, 1, 1)
        nodes, consts, source = [helper.make_node("Conv", ["x", "w"], ["c"])], {"w": w}, "c"
        ref = conv2d_nchw(x, w)
    nodes.append(helper.make_node(op, [source], ["y"]))
    reduce = np.mean if op == "GlobalAveragePool" else np.max
    model = make_model(nodes, {"x": x}, ["y"], consts)
    assert rel_error(run_batched(model, x), reduce(ref, axis=(2, 3), keepdims=True)) < TOL


def test_global_pool_of_rank3():
    x = randn(np.random.default_rng(3), 2, 5, 7)
    got = run(single_node("GlobalAveragePool", {"x": x}), {"x": x})[0]
    assert rel_error(got, x.astype(np.float64).mean(axis=2, keepdims=True)) < TOL


@pytest.mark.parametrize("size", [1, 3, 4, 5])
@pytest.mark.parametrize("after_conv", [False, True])
def test_lrn(size, after_conv):
    rng = np.random.default_rng(size)
    x = randn(rng, 7, 7, 5, 6, scale=3.0)
    attrs = {"size": size, "alpha": 0.02, "beta": 0.7, "bias": 1.5}
    nodes, consts, ref, source = [], {}, x, "x"
    if after_conv:
        w = randn(rng, 9, 7, 3, 3)
        conv = helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])
        nodes, consts, source = [conv], {"w": w}, "c"
        ref = conv2d_nchw(x, w, None, (1, 1, 1, 1))
    nodes.append(helper.make_node("LRN", [source], ["y"], **attrs))
    model = make_model(nodes, {"x": x}, ["y"], consts)
    assert rel_error(run_batched(model, x), lrn_nchw(ref, **attrs)) < 1e-5
