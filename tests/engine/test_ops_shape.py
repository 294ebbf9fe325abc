"""Data-movement operators: Concat (NHWC channel path, mixed layouts, other axes), Flatten, Reshape,
Transpose, Squeeze/Unsqueeze (attribute and input forms), Dropout, Identity, Constant and
ConstantOfShape. Results are exact, so they are compared for equality with NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from tests.engine.onnx_builders import make_model, randn, run, run_batched, single_node
from tests.engine.reference import conv2d_nchw, rel_error

TOL = 1e-6


def _convs(rng, x, filters=(5, 3)):
    """Parallel 1x1 convs of x (NHWC outputs c0, c1, ...) and their references."""
    nodes, consts, refs = [], {}, []
    for i, k in enumerate(filters):
        w = randn(rng, k, x.shape[1], 1, 1)
        nodes.append(helper.make_node("Conv", ["x", f"w{i}"], [f"c{i}"]))
        consts[f"w{i}"] = w
        refs.append(conv2d_nchw(x, w))
    return nodes, consts, refs


@pytest.mark.parametrize("axis", [1, -3, 2, 3, 0])
@pytest.mark.parametrize("batch", [1, 7])
def test_concat_after_convs(axis, batch):
    """Channel axis: the NHWC path concatenates along the last physical axis; others too."""
    rng = np.random.default_rng(batch)
    x = randn(rng, batch, 3, 6, 5)
    filters = (5, 3) if axis in (1, -3) else (4, 4)
    nodes, consts, refs = _convs(rng, x, filters)
    nodes.append(helper.make_node("Concat", ["c0", "c1"], ["y"], axis=axis))
    model = make_model(nodes, {"x": x}, ["y"], consts)
    assert rel_error(run(model, {"x": x})[0], np.concatenate(refs, axis=axis)) < TOL


def test_concat_of_conv_and_graph_input_and_constant():
    """Mixed layouts: an NHWC conv output, a plain NCHW graph input and a constant."""
    rng = np.random.default_rng(2)
    x, z, k = randn(rng, 7, 3, 6, 5), randn(rng, 7, 2, 6, 5), randn(rng, 7, 1, 6, 5)
    nodes, consts, refs = _convs(rng, x, (5,))
    nodes.append(helper.make_node("Concat", ["c0", "z", "k"], ["y"], axis=1))
    model = make_model(nodes, {"x": x, "z": z}, ["y"], consts | {"k": k})
    expected = np.concatenate([refs[0], z, k], axis=1)
    assert rel_error(run(model, {"x": x, "z": z})[0], expected) < TOL


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_plain(axis):
    rng = np.random.default_rng(3)
    shapes = [(3, 4, 5), (3, 4, 5)]
    shapes[1] = tuple(d + 2 if i == axis % 3 else d for i, d in enumerate(shapes[1]))
    a, b = randn(rng, *shapes[0]), randn(rng, *shapes[1])
    got = run(single_node("Concat", {"a": a, "b": b}, axis=axis), {"a": a, "b": b})[0]
    assert np.array_equal(got, np.concatenate([a, b], axis=axis))


@pytest.mark.parametrize("axis", [0, 1, 2, 4, -1, -4])
def test_flatten_after_conv(axis):
    rng = np.random.default_rng(4)
    x = randn(rng, 7, 3, 6, 5)
    nodes, consts, refs = _convs(rng, x, (5,))
    nodes.append(helper.make_node("Flatten", ["c0"], ["y"], axis=axis))
    model = make_model(nodes, {"x": x}, ["y"], consts)
    rows = int(np.prod(refs[0].shape[: axis % 5 if axis >= 0 else axis + 4]))
    assert rel_error(run(model, {"x": x})[0], refs[0].reshape(rows, -1)) < TOL


@pytest.mark.parametrize("target", [(7, -1), (0, 5, 30), (-1, 6, 5, 5), (0, 10, 3, 0), (210, 5)])
def test_reshape_after_conv(target):
    """The shape input with 0 (copy the dimension) and -1 (infer it), NHWC source."""
    rng = np.random.default_rng(5)
    x = randn(rng, 7, 3, 6, 5)
    nodes, consts, refs = _convs(rng, x, (5,))
    nodes.append(helper.make_node("Reshape", ["c0", "shape"], ["y"]))
    model = make_model(nodes, {"x": x}, ["y"], consts | {"shape": np.array(target, np.int64)})
    shape = [refs[0].shape[i] if d == 0 else d for i, d in enumerate(target)]
    assert rel_error(run(model, {"x": x})[0], refs[0].reshape(shape)) < TOL


def test_reshape_shape_from_constant_node():
    x = randn(np.random.default_rng(6), 4, 6)
    shape = helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(
        np.array([2, -1, 3], np.int64)))  # fmt: skip
    model = make_model([shape, helper.make_node("Reshape", ["x", "s"], ["y"])], {"x": x}, ["y"])
    assert np.array_equal(run(model, {"x": x})[0], x.reshape(2, -1, 3))


@pytest.mark.parametrize("perm", [(0, 2, 3, 1), (0, 3, 1, 2), (1, 0, 2, 3), (3, 2, 1, 0), None])
def test_transpose_after_conv(perm):
    rng = np.random.default_rng(7)
    x = randn(rng, 7, 3, 6, 5)
    nodes, consts, refs = _convs(rng, x, (5,))
    attrs = {} if perm is None else {"perm": list(perm)}
    nodes.append(helper.make_node("Transpose", ["c0"], ["y"], **attrs))
    model = make_model(nodes, {"x": x}, ["y"], consts)
    assert rel_error(run(model, {"x": x})[0], refs[0].transpose(perm)) < TOL


def test_transpose_plain_rank3():
    x = randn(np.random.default_rng(8), 3, 4, 5)
    got = run(single_node("Transpose", {"x": x}, perm=[2, 0, 1]), {"x": x})[0]
    assert np.array_equal(got, x.transpose(2, 0, 1))


SQUEEZES = [
    ("Squeeze", (7, 1, 5, 1), (1, 3)), ("Squeeze", (7, 1, 5, 1), (-1,)),
    ("Squeeze", (1, 3, 1, 1), None), ("Unsqueeze", (7, 5), (0, 3)),
    ("Unsqueeze", (7, 5), (-1, 1)), ("Unsqueeze", (7, 5), (2,)),
]  # fmt: skip


def _numpy_squeeze(op, x, axes):
    if op == "Squeeze":
        return np.squeeze(x, axis=axes)
    out_rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(a % out_rank for a in axes)))


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("op, shape, axes", SQUEEZES, ids=str)
def test_squeeze_unsqueeze(op, shape, axes, opset):
    """Opset 11: axes as an attribute; opset 13: axes as an input."""
    x = randn(np.random.default_rng(9), *shape)
    if axes is None:
        model = single_node(op, {"x": x}, opset=opset)
    elif opset == 11:
        model = single_node(op, {"x": x}, opset=opset, axes=list(axes))
    else:
        model = single_node(op, {"x": x}, {"axes": np.array(axes, np.int64)}, opset=opset)
    assert np.array_equal(run(model, {"x": x})[0], _numpy_squeeze(op, x, axes))


def test_squeeze_of_global_pool_output():
    """GAP on an NHWC conv output, then Squeeze to (N, C): the classifier-head pattern."""
    rng = np.random.default_rng(10)
    x = randn(rng, 7, 3, 6, 5)
    nodes, consts, refs = _convs(rng, x, (5,))
    nodes += [helper.make_node("GlobalAveragePool", ["c0"], ["g"]),
              helper.make_node("Squeeze", ["g", "axes"], ["y"])]  # fmt: skip
    model = make_model(nodes, {"x": x}, ["y"], consts | {"axes": np.array([2, 3], np.int64)})
    assert rel_error(run_batched(model, x), refs[0].mean(axis=(2, 3))) < TOL


@pytest.mark.parametrize("opset", [7, 12, 13])
@pytest.mark.parametrize("op", ["Dropout", "Identity"])
def test_dropout_and_identity_forward(op, opset):
    """Inside the graph (removed at load) and as the graph output (kept)."""
    rng = np.random.default_rng(11)
    x = randn(rng, 7, 3, 6, 5)
    nodes, consts, refs = _convs(rng, x, (4,))
    attrs = {"ratio": 0.3} if op == "Dropout" and opset < 12 else {}
    nodes += [helper.make_node(op, ["c0"], ["d"], **attrs), helper.make_node("Relu", ["d"], ["r"]),
              helper.make_node(op, ["r"], ["y"], **attrs)]  # fmt: skip
    model = make_model(nodes, {"x": x}, ["y"], consts, opset)
    assert rel_error(run_batched(model, x), np.maximum(refs[0], 0)) < TOL


def test_dropout_mask_output_is_all_true():
    x = randn(np.random.default_rng(12), 3, 4)
    node = helper.make_node("Dropout", ["x", "ratio"], ["y", "mask"])
    model = make_model([node], {"x": x}, ["y", "mask"], {"ratio": np.float32(0.5)})
    y, mask = run(model, {"x": x})
    assert np.array_equal(y, x) and mask.dtype == bool and mask.all()


def test_constant_and_constant_of_shape_feed_arithmetic():
    """Constant (value and value_floats forms) and ConstantOfShape, folded at load."""
    x = randn(np.random.default_rng(13), 7, 4)
    nodes = [
        helper.make_node(
            "Constant",
            [],
            ["a"],
            value=numpy_helper.from_array(np.array([1.5, -2.0, 0.25, 3.0], np.float32)),
        ),  # fmt: skip
        helper.make_node("Constant", [], ["b"], value_floats=[0.5, 0.5, 2.0, -1.0]),
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["c"],
            value=numpy_helper.from_array(np.array([0.75], np.float32)),
        ),  # fmt: skip
        helper.make_node("Mul", ["x", "a"], ["xa"]),
        helper.make_node("Sum", ["xa", "b", "c"], ["y"]),
    ]
    model = make_model(nodes, {"x": x}, ["y"], {"shape": np.array([7, 4], np.int64)})
    expected = x.astype(np.float64) * [1.5, -2.0, 0.25, 3.0] + [0.5, 0.5, 2.0, -1.0] + 0.75
    assert rel_error(run(model, {"x": x})[0], expected) < TOL  # the shape fixes the batch
