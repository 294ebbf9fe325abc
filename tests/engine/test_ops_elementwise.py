"""Activations, PRelu, Clip's two forms and broadcasting arithmetic (Add/Sub/Mul/Div/Sum), on plain
tensors and in the NHWC context after a Conv, against float64 references."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.engine.onnx_builders import make_model, positive, randn, run, run_batched, single_node
from tests.engine.reference import activation, conv2d_nchw, prelu, rel_error

TOL = 1e-6
ACTIVATIONS = [
    ("Relu", {}), ("LeakyRelu", {}), ("LeakyRelu", {"alpha": 0.3}), ("Sigmoid", {}), ("Tanh", {}),
    ("HardSigmoid", {}), ("HardSigmoid", {"alpha": 0.25, "beta": 0.6}), ("HardSwish", {}),
]  # fmt: skip
IDS = [f"{op}{'-' + '-'.join(map(str, a.values())) if a else ''}" for op, a in ACTIVATIONS]


def _conv(rng, x, k=6):
    """A 3x3 conv (padding 1) whose output is NHWC inside the engine, and its reference."""
    w = randn(rng, k, x.shape[1], 3, 3)
    node = helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])
    return node, {"w": w}, conv2d_nchw(x, w, None, (1, 1, 1, 1))


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("op, attrs", ACTIVATIONS, ids=IDS)
def test_activation_plain(op, attrs, batch):
    rng = np.random.default_rng(batch)
    x = randn(rng, batch, 5, 3, 7, scale=3.0)
    model = single_node(op, {"x": x}, opset=14, **attrs)
    assert rel_error(run_batched(model, x), activation(op, x, **attrs)) < TOL


@pytest.mark.parametrize("op, attrs", ACTIVATIONS, ids=IDS)
def test_activation_on_nhwc_after_add(op, attrs):
    """Conv + Conv -> Add -> activation on the NHWC sum: Relu and LeakyRelu fused into the Add
    (engine/passes.py), the others their own step."""
    rng = np.random.default_rng(11)
    x = randn(rng, 7, 3, 6, 5)
    conv, consts, ref = _conv(rng, x)
    add = helper.make_node("Add", ["c", "c"], ["s"])
    nodes = [conv, add, helper.make_node(op, ["s"], ["y"], **attrs)]
    model = make_model(nodes, {"x": x}, ["y"], consts, opset=14)
    assert rel_error(run_batched(model, x), activation(op, 2 * ref, **attrs)) < TOL


CLIPS = {
    "attr_both": (10, {"min": -0.4, "max": 0.9}, {}),
    "attr_default_max": (10, {"min": -0.4}, {}),
    "input_both": (13, {}, {"lo": -0.4, "hi": 0.9}),
    "input_min_only": (13, {}, {"lo": -0.4}),
    "input_max_only": (13, {}, {"": None, "hi": 0.9}),
    "input_none": (13, {}, {}),
}


@pytest.mark.parametrize("case", list(CLIPS))
def test_clip_forms(case):
    """Clip with attributes (opset < 11) and with optional constant inputs (opset >= 11)."""
    opset, attrs, bounds = CLIPS[case]
    rng = np.random.default_rng(5)
    x = randn(rng, 7, 5, 4, 3)
    names = ["x"] + list(bounds)
    constants = {k: np.float32(v) for k, v in bounds.items() if k}
    model = make_model([helper.make_node("Clip", names, ["y"], **attrs)], {"x": x}, ["y"],
                       constants, opset)  # fmt: skip
    low = attrs.get("min", bounds.get("lo", -np.inf))
    high = attrs.get("max", bounds.get("hi", np.inf))
    assert rel_error(run_batched(model, x), activation("Clip", x, min=low, max=high)) < TOL


def test_clip_bounds_at_run_time():
    rng = np.random.default_rng(6)
    x, lo, hi = randn(rng, 3, 4, 5), np.float32(-0.3), np.float32(0.5)
    model = single_node("Clip", {"x": x, "lo": lo, "hi": hi})
    got = run(model, {"x": x, "lo": lo, "hi": hi})[0]
    assert rel_error(got, activation("Clip", x, min=lo, max=hi)) < TOL


@pytest.mark.parametrize("slope_shape", [(6, 1, 1), (1,), (1, 1, 1)])
@pytest.mark.parametrize("after_conv", [False, True])
def test_prelu(slope_shape, after_conv):
    rng = np.random.default_rng(len(slope_shape))
    x, slope = randn(rng, 7, 6, 5, 4), randn(rng, *slope_shape)
    nodes, consts, ref, source = [], {"slope": slope}, x, "x"
    if after_conv:
        conv, w, ref = _conv(rng, x)
        nodes, source = [conv], "c"
        consts |= w
    nodes.append(helper.make_node("PRelu", [source, "slope"], ["y"]))
    model = make_model(nodes, {"x": x}, ["y"], consts)
    assert rel_error(run_batched(model, x), prelu(ref, slope)) < TOL


BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
          "Max": np.maximum, "Min": np.minimum}  # fmt: skip
# (first shape, second shape): NumPy broadcasting both ways, lower ranks, scalars
PLAIN_SHAPES = [((7, 5, 4, 6), (5, 1, 1)), ((7, 5, 4, 6), (6,)), ((7, 5, 4, 6), ()),
                ((3, 1, 6), (5, 1)), ((1, 5), (7, 1)), ((7, 5, 4, 6), (7, 5, 4, 6))]  # fmt: skip


def _operand(rng, op, shape):
    return positive(rng, *shape) if op == "Div" else randn(rng, *shape)


@pytest.mark.parametrize("shapes", PLAIN_SHAPES, ids=str)
@pytest.mark.parametrize("op", list(BINARY))
def test_binary_broadcasting_plain(op, shapes):
    rng = np.random.default_rng(len(shapes[1]))
    a, b = randn(rng, *shapes[0]), _operand(rng, op, shapes[1])
    model = single_node(op, {"a": a, "b": b})
    expected = BINARY[op](a.astype(np.float64), b.astype(np.float64))
    assert rel_error(run(model, {"a": a, "b": b})[0], expected) < TOL


# the other operand of a conv output (7, 6, 9, 5): constant or run-time, of lower rank or not
NHWC_OPERANDS = {
    "const_c11": ((6, 1, 1), True), "const_w": ((5,), True), "const_scalar": ((), True),
    "const_full": ((1, 6, 9, 5), True), "runtime_c11": ((6, 1, 1), False),
    "runtime_hw": ((9, 5), False), "runtime_nchw": ((7, 6, 9, 5), False),
    "runtime_n111": ((7, 1, 1, 1), False),
}  # fmt: skip


@pytest.mark.parametrize("order", ["conv_first", "conv_second"])
@pytest.mark.parametrize("case", list(NHWC_OPERANDS))
@pytest.mark.parametrize("op", list(BINARY))
def test_binary_broadcasting_after_conv(op, case, order):
    rng = np.random.default_rng(len(case))
    shape, constant = NHWC_OPERANDS[case]
    x, other = randn(rng, 7, 3, 9, 5), _operand(rng, op, shape)
    conv, consts, ref = _conv(rng, x)
    if op == "Div" and order == "conv_second":
        ref = ref + 100.0  # keep the divisor away from zero: a constant shifts the conv output
        consts["shift"] = np.float32(100.0)
        conv = [conv, helper.make_node("Add", ["c0", "shift"], ["c"])]
        conv[0].output[0] = "c0"
    conv = conv if isinstance(conv, list) else [conv]
    inputs = {"x": x} if constant else {"x": x, "o": other}
    consts |= {"o": other} if constant else {}
    names = ["c", "o"] if order == "conv_first" else ["o", "c"]
    model = make_model([*conv, helper.make_node(op, names, ["y"])], inputs, ["y"], consts)
    operands = [ref, other.astype(np.float64)][:: 1 if order == "conv_first" else -1]
    assert rel_error(run(model, inputs)[0], BINARY[op](*operands)) < TOL


@pytest.mark.parametrize("shapes", PLAIN_SHAPES, ids=str)
def test_pow_broadcasting(shapes):
    """Pow keeps the base's type: float32 base, float32 or int64 exponent."""
    rng = np.random.default_rng(len(shapes[0]))
    base, exponent = positive(rng, *shapes[0], low=0.2, high=2.0), randn(rng, *shapes[1])
    for exp in (exponent, np.rint(exponent * 2).astype(np.int64)):
        got = run(single_node("Pow", {"a": base, "b": exp}, opset=15), {"a": base, "b": exp})[0]
        assert got.dtype == np.float32
        assert rel_error(got, np.power(base.astype(np.float64), exp.astype(np.float64))) < TOL


@pytest.mark.parametrize("op", ["Max", "Min", "Sum"])
def test_variadic_of_four_after_conv(op):
    """Max/Min/Sum of an NHWC conv output, a runtime NCHW tensor, a (C,1,1) and a (W,) constant."""
    rng = np.random.default_rng(12)
    x = randn(rng, 7, 3, 9, 5)
    conv, consts, ref = _conv(rng, x)
    z, c11, w = randn(rng, 7, 6, 9, 5), randn(rng, 6, 1, 1), randn(rng, 5)
    node = helper.make_node(op, ["z", "c", "c11", "row"], ["y"])
    model = make_model([conv, node], {"x": x, "z": z}, ["y"], consts | {"c11": c11, "row": w})
    combine = {"Max": np.maximum, "Min": np.minimum, "Sum": np.add}[op]
    expected = combine(combine(combine(z.astype(np.float64), ref), c11), w)
    assert rel_error(run(model, {"x": x, "z": z})[0], expected) < TOL


@pytest.mark.parametrize("after_conv", [False, True])
def test_sum_of_three_with_broadcasting(after_conv):
    rng = np.random.default_rng(8)
    x, b, c = randn(rng, 7, 6, 9, 5), randn(rng, 6, 1, 1), randn(rng, 5)
    nodes, consts, ref, first = [], {"b": b, "c": c}, x.astype(np.float64), "x"
    if after_conv:
        conv, w, ref = _conv(rng, x)
        nodes, first = [conv], "c_out"
        conv.output[0] = "c_out"
        consts |= w
    nodes.append(helper.make_node("Sum", [first, "b", "c"], ["y"]))
    model = make_model(nodes, {"x": x}, ["y"], consts)
    assert rel_error(run_batched(model, x), ref + b + c) < TOL


def test_sum_of_one_is_a_copy():
    x = randn(np.random.default_rng(9), 2, 3, 4)
    assert np.array_equal(run(single_node("Sum", {"x": x}), {"x": x})[0], x)
