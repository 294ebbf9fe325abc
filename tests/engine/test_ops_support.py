"""Refusals: a model with anything the engine does not implement fails at load with
UnsupportedModelError naming every unsupported operator and attribute, never a wrong answer."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from engine import UnsupportedModelError, load_model
from tests.engine.onnx_builders import make_model, randn, single_node


def _problems(model) -> list[str]:
    with pytest.raises(UnsupportedModelError) as caught:
        load_model(model, batch_sizes=(1,), autotune_mode="off")
    assert str(caught.value).startswith("unsupported model: ")
    return caught.value.problems


def test_every_unknown_operator_and_attribute_is_named():
    x = randn(np.random.default_rng(0), 1, 3, 5, 6)
    nodes = [
        helper.make_node("Erf", ["x"], ["a"], name="erf_node"),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("TopK", ["b", "k"], ["c", "idx"], name="topk_node"),
        helper.make_node("LeakyRelu", ["c"], ["y"], name="leaky", alpha=0.1, gamma=2.0),
    ]
    problems = _problems(make_model(nodes, {"x": x}, ["y"], {"k": np.array([2], np.int64)}))
    assert len(problems) == 3
    assert "erf_node" in problems[0] and "Erf" in problems[0]
    assert "topk_node" in problems[1] and "TopK" in problems[1]
    assert "leaky" in problems[2] and "'gamma'" in problems[2]


REFUSED = {
    "conv_3d": ("Conv", (1, 2, 4, 5, 6), {"w": (3, 2, 3, 3, 3)}, {}, "2-D"),
    "conv_unknown_attribute": ("Conv", (1, 2, 5, 6), {"w": (3, 2, 3, 3)}, {"foo": 1}, "'foo'"),
    "maxpool_1d": ("MaxPool", (1, 2, 9), {}, {"kernel_shape": [3]}, "2-D"),
    "batchnorm_training": (
        "BatchNormalization",
        (2, 3, 4, 5),
        {n: (3,) for n in ("g", "b", "m", "v")},
        {"training_mode": 1},
        "training_mode",
    ),  # fmt: skip
    "softmax_unknown_attribute": ("Softmax", (2, 5), {}, {"axes": [1]}, "'axes'"),
    "legacy_broadcast": ("Add", (2, 5), {"b": (5,)}, {"broadcast": 1}, "broadcast"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_attribute_or_shape(case):
    op, shape, consts, attrs, fragment = REFUSED[case]
    rng = np.random.default_rng(1)
    opset = 7 if case == "legacy_broadcast" else 15  # Add-7 dropped the attribute
    model = single_node(op, {"x": randn(rng, *shape)},
                        {n: randn(rng, *s) for n, s in consts.items()}, opset=opset,
                        **attrs)  # fmt: skip
    problems = _problems(model)
    assert any(fragment in p and op in p for p in problems), problems


def test_maxpool_indices_output_is_refused():
    x = randn(np.random.default_rng(2), 1, 2, 5, 6)
    node = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2])
    assert any("Indices" in p for p in _problems(make_model([node], {"x": x}, ["y", "idx"])))


def test_custom_domain_and_too_new_opset():
    x = randn(np.random.default_rng(3), 1, 2, 5, 6)
    custom = helper.make_node("Gelu", ["x"], ["y"], domain="com.example")
    problems = _problems(make_model([custom], {"x": x}, ["y"]))
    assert "com.example.Gelu" in problems[0]
    assert "opset 26" in _problems(single_node("Relu", {"x": x}, opset=26))[0]


def test_operator_missing_from_the_opset_is_refused():
    """HardSwish exists from opset 14: at opset 13 it is not an operator at all."""
    x = randn(np.random.default_rng(4), 1, 2, 5, 6)
    assert "not an operator of opset 13" in _problems(single_node("HardSwish", {"x": x}))[0]


def test_dropout_in_training_mode_is_refused():
    x = randn(np.random.default_rng(5), 2, 3)
    model = single_node("Dropout", {"x": x}, {"ratio": np.float32(0.5),
                                              "training": np.array(True)})  # fmt: skip
    assert any("training mode" in p for p in _problems(model))


@pytest.mark.parametrize("then_batchnorm", [False, True])
def test_conv_bias_at_run_time_is_refused(then_batchnorm):
    """A bias fed at run time (with or without a BatchNorm to fold) is refused, not folded."""
    rng = np.random.default_rng(6)
    x, w, b = randn(rng, 1, 3, 5, 5), randn(rng, 4, 3, 3, 3), randn(rng, 4)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c" if then_batchnorm else "y"])]
    consts = {"w": w}
    if then_batchnorm:
        consts |= {name: np.ones(4, np.float32) for name in ("g", "beta", "m", "v")}
        nodes.append(helper.make_node("BatchNormalization", ["c", "g", "beta", "m", "v"], ["y"]))
    problems = _problems(make_model(nodes, {"x": x, "b": b}, ["y"], consts))
    assert any("Conv" in p and "constant" in p for p in problems)
