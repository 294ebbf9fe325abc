"""Gemm (alpha, beta, transA, transB, C broadcast), MatMul and Softmax (opset 11 and 13)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.engine.onnx_builders import make_model, randn, run, run_batched, single_node
from tests.engine.reference import conv2d_nchw, gemm, rel_error, softmax, softmax_legacy

TOL = 1e-5
M, K, N = 7, 13, 5
# C's shape: every way it may broadcast to (M, N)
C_SHAPES = {"none": None, "n": (N,), "1n": (1, N), "m1": (M, 1), "mn": (M, N), "scalar": (),
            "one": (1,)}  # fmt: skip


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("c_shape", list(C_SHAPES))
def test_gemm(c_shape, trans_a, trans_b):
    rng = np.random.default_rng(trans_a * 2 + trans_b)
    a = randn(rng, *((K, M) if trans_a else (M, K)))
    b = randn(rng, *((N, K) if trans_b else (K, N)))
    shape = C_SHAPES[c_shape]
    consts = {"b": b} if shape is None else {"b": b, "c": randn(rng, *shape)}
    attrs = {"alpha": 0.7, "beta": -1.3, "transA": trans_a, "transB": trans_b}
    model = single_node("Gemm", {"a": a}, consts, **attrs)
    expected = gemm(a, b, consts.get("c"), 0.7, -1.3, trans_a, trans_b)
    assert rel_error(run(model, {"a": a})[0], expected) < TOL


def test_gemm_with_runtime_b_and_c():
    rng = np.random.default_rng(1)
    a, b, c = randn(rng, M, K), randn(rng, N, K), randn(rng, N)
    feeds = {"a": a, "b": b, "c": c}
    model = single_node("Gemm", feeds, transB=1, beta=0.5)
    assert rel_error(run(model, feeds)[0], gemm(a, b, c, beta=0.5, trans_b=True)) < TOL


@pytest.mark.parametrize("features", [4, 1000])
@pytest.mark.parametrize("batch", [1, 7])
def test_classifier_head_after_conv(batch, features):
    """Conv -> GlobalAveragePool -> Flatten -> Gemm: the NHWC to plain hand-over; 1000
    features: the compiled head split across the lanes."""
    rng = np.random.default_rng(batch)
    x, w = randn(rng, batch, 3, 7, 6), randn(rng, 6, 3, 3, 3)
    fc, bias = randn(rng, features, 6), randn(rng, features)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "bias"], ["y"], transB=1),
    ]
    model = make_model(nodes, {"x": x}, ["y"], {"w": w, "fc": fc, "bias": bias})
    pooled = conv2d_nchw(x, w, None, (0, 0, 0, 0), (2, 2)).mean(axis=(2, 3))
    assert rel_error(run_batched(model, x), gemm(pooled, fc, bias, trans_b=True)) < TOL


@pytest.mark.parametrize("batch", [1, 3])
def test_compiled_head_shares_features_across_lanes(batch):
    """1000 output features: two shares of whole register-tile blocks, the second ending in a
    partial block (1000 is not a multiple of the block); each share run on its own, against
    float64, into an output poisoned with NaN."""
    from engine import jit
    from engine.backends import resolve_backend
    from engine.backends.cpu_linear import dense, dense_phases

    if not jit.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(batch)
    a, weights, shift = randn(rng, batch, 96), randn(rng, 96, 1000), randn(rng, 1000)
    algo = dense(weights, shift, batch, resolve_backend("cpu"))
    assert 1000 % algo.kb
    out = np.full((batch, 1000), np.nan, np.float32)
    (calls,) = dense_phases(algo, a, out, 2)
    assert len(calls) == 2
    for kernel, args in calls:
        kernel(*args)
    expected = a.astype(np.float64) @ weights + shift
    assert rel_error(out, expected) < TOL


MATMULS = [((7, 13), (13, 5)), ((3, 7, 13), (13, 5)), ((2, 3, 7, 13), (3, 13, 5)),
           ((3, 1, 7, 13), (1, 2, 13, 5)), ((13,), (3, 13, 5)), ((2, 7, 13), (13,)),
           ((13,), (13,))]  # fmt: skip


@pytest.mark.parametrize("constant_b", [False, True])
@pytest.mark.parametrize("shapes", MATMULS, ids=str)
def test_matmul(shapes, constant_b):
    rng = np.random.default_rng(len(shapes[0]))
    a, b = randn(rng, *shapes[0]), randn(rng, *shapes[1])
    feeds = {"a": a} if constant_b else {"a": a, "b": b}
    model = single_node("MatMul", feeds, {"b": b} if constant_b else None)
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    assert rel_error(run(model, feeds)[0], expected) < TOL


SOFTMAXES = [(13, None), (13, 1), (13, -1), (13, 2), (13, 0), (11, None), (11, 1), (11, 2),
             (11, 3), (11, -1), (11, 0)]  # fmt: skip


@pytest.mark.parametrize("opset, axis", SOFTMAXES, ids=str)
def test_softmax_4d(opset, axis):
    """Opset 13: one axis (default -1); opset 11: the trailing axes from ``axis`` (default 1)."""
    x = randn(np.random.default_rng(3), 7, 5, 3, 4, scale=3.0)
    attrs = {} if axis is None else {"axis": axis}
    model = single_node("Softmax", {"x": x}, opset=opset, **attrs)
    if opset >= 13:
        expected = softmax(x, -1 if axis is None else axis)
    else:
        expected = softmax_legacy(x, (1 if axis is None else axis) % 4)
    assert rel_error(run(model, {"x": x})[0], expected) < TOL


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_after_conv(opset):
    rng = np.random.default_rng(4)
    x, w = randn(rng, 7, 3, 5, 4), randn(rng, 6, 3, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Softmax", ["c"], ["y"], axis=1)]  # fmt: skip
    model = make_model(nodes, {"x": x}, ["y"], {"w": w}, opset)
    conv = conv2d_nchw(x, w)
    expected = softmax(conv, 1) if opset >= 13 else softmax_legacy(conv, 1)
    assert rel_error(run_batched(model, x), expected) < TOL
