"""The CUDA kernels against float64 references, onnxruntime and the NumPy backend, on fresh
random inputs. Each body runs twice: on the CPU emulator of the kernels (NumPy arrays, the CuPy
backend's own launch code; no GPU needed) and on a real GPU (CuPy arrays, marker ``gpu``).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.backends import NumpyBackend
from engine.conv import ConvSpec, Epilogue
from engine.ops.window import output_size
from tests.engine.conv_cases import EPILOGUES, SHAPES
from tests.engine.gpu_models import POOLS
from tests.engine.reference import conv2d_nchw, rel_error


def dev(backend, array):
    return backend.asarray(np.ascontiguousarray(array))


def host(backend, array):
    return backend.to_host(array)


NO_EPILOGUE = Epilogue()


def random(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def spec_of(case, epilogue=NO_EPILOGUE) -> ConvSpec:
    n, c, h, w, k, r, s, pads, strides, dilations, groups = case
    return ConvSpec(n, c, h, w, k, r, s, pads, strides, dilations, groups, epilogue=epilogue)


@pytest.mark.parametrize("case", SHAPES)
def test_im2col_matches_numpy_gather(emu, case):
    rng = np.random.default_rng()
    spec = spec_of(case)
    x = random(rng, spec.n, spec.h, spec.w, spec.c)
    windows = (spec.n, spec.out_h, spec.out_w, spec.groups, spec.r, spec.s, spec.c_per_group)
    expected, got = np.empty(windows, np.float32), dev(emu, np.full(windows, np.nan, "f4"))
    ph, pw = spec.padded_hw
    NumpyBackend().im2col(x, expected, spec, np.empty((spec.n, ph, pw, spec.c), np.float32))
    emu.im2col(dev(emu, x), got, spec, None)
    np.testing.assert_array_equal(host(emu, got), expected)


def test_im2col_reads_a_strided_view(emu):
    """The chunked algorithm passes row bands of a larger activation."""
    rng = np.random.default_rng()
    big = random(rng, 3, 12, 9, 5)
    spec = ConvSpec(2, 5, 7, 9, 4, 3, 3, (1, 1, 1, 1))
    windows = (2, spec.out_h, spec.out_w, 1, 3, 3, 5)
    expected, got = np.empty(windows, np.float32), dev(emu, np.empty(windows, np.float32))
    x = big[1:3, 2:9]
    NumpyBackend().im2col(np.ascontiguousarray(x), expected, spec, np.empty((2, 9, 11, 5), "f4"))
    emu.im2col(dev(emu, big)[1:3, 2:9], got, spec, None)
    np.testing.assert_array_equal(host(emu, got), expected)


@pytest.mark.parametrize("epilogue", EPILOGUES, ids=lambda e: e.kind)
@pytest.mark.parametrize("with_bias", [True, False])
def test_epilogue_matches_numpy(emu, epilogue, with_bias):
    rng = np.random.default_rng()
    y = random(rng, 37, 13) * 4
    bias = random(rng, 13) if with_bias else None
    expected, got = y.copy(), dev(emu, y)
    NumpyBackend().epilogue(expected, bias, epilogue)
    emu.epilogue(got, None if bias is None else dev(emu, bias), epilogue)
    np.testing.assert_allclose(host(emu, got), expected, rtol=2e-6, atol=1e-6)


def test_epilogue_keeps_nan(emu):
    y = dev(emu, np.array([[np.nan, -1.0, 2.0]], np.float32))
    emu.epilogue(y, None, Epilogue("relu"))
    y = host(emu, y)
    assert np.isnan(y[0, 0]) and y[0, 1] == 0 and y[0, 2] == 2


def onnx_pool(x_nchw, kind, kernel, strides, dilations, pads, ceil, include_pad):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    attrs = dict(kernel_shape=kernel, strides=strides, pads=list(pads[:2]) + list(pads[2:]),
                 ceil_mode=ceil, dilations=dilations)  # fmt: skip
    if kind == "AveragePool":
        attrs["count_include_pad"] = include_pad
    node = helper.make_node(kind, ["x"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_nchw.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x_nchw})[0]


@pytest.mark.parametrize("kind", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("pool", POOLS)
def test_pool_matches_onnxruntime(emu, kind, pool):
    pytest.importorskip("onnxruntime")
    kernel, strides, dilations, pads, ceil, include_pad = pool
    rng = np.random.default_rng()
    x = random(rng, 2, 5, 11, 10)
    sizes = zip((11, 10), kernel, strides, dilations)
    out_hw = [output_size(size, k, st, d, pads[i], pads[i + 2], ceil)
              for i, (size, k, st, d) in enumerate(sizes)]  # fmt: skip
    out = emu.empty((2, *out_hw, 5))
    short = "max" if kind == "MaxPool" else "average"
    emu.pool(dev(emu, x.transpose(0, 2, 3, 1)), out, short, kernel, strides, dilations, pads,
             include_pad)  # fmt: skip
    expected = onnx_pool(x, kind, kernel, strides, dilations, pads, ceil, include_pad)
    got = host(emu, out).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def apply_reference_epilogue(y, epilogue):
    y = np.asarray(y, np.float32).copy()
    NumpyBackend().epilogue(y, None, epilogue)
    return y


DEPTHWISE = (
    (2, 6, 9, 8, 6, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 6),
    (1, 5, 9, 9, 10, 3, 3, (1, 0, 1, 0), (2, 2), (1, 1), 5),
    (3, 7, 10, 7, 7, 5, 5, (2, 2, 2, 2), (1, 1), (2, 1), 7),
    (1, 4, 6, 5, 12, 3, 2, (0, 1, 2, 0), (1, 2), (1, 1), 4),
)


@pytest.mark.parametrize("case", DEPTHWISE)
@pytest.mark.parametrize("epilogue", EPILOGUES[:4], ids=lambda e: e.kind)
def test_depthwise_matches_reference(emu, case, epilogue):
    rng = np.random.default_rng()
    spec = spec_of(case, epilogue)
    x, w = random(rng, spec.n, spec.c, spec.h, spec.w), random(rng, spec.k, 1, spec.r, spec.s)
    b = random(rng, spec.k)
    ref = conv2d_nchw(x, w, b, spec.pads, spec.strides, spec.dilations, spec.groups)
    ref = apply_reference_epilogue(ref.transpose(0, 2, 3, 1).reshape(-1, spec.k), epilogue)
    taps = np.ascontiguousarray(w.reshape(spec.k, spec.r, spec.s).transpose(1, 2, 0))
    out = emu.empty((spec.n, spec.out_h, spec.out_w, spec.k))
    emu.depthwise(dev(emu, x.transpose(0, 2, 3, 1)), dev(emu, taps), dev(emu, b), out, spec)
    assert rel_error(host(emu, out).reshape(-1, spec.k), ref) < 1e-5


WINOGRAD = (
    (1, 3, 7, 9, 5, (1, 1, 1, 1)),
    (2, 6, 8, 8, 4, (1, 1, 1, 1)),
    (3, 5, 6, 5, 6, (0, 1, 2, 0)),
    (2, 9, 5, 6, 7, (0, 0, 0, 0)),
)


@pytest.mark.parametrize("case", WINOGRAD)
@pytest.mark.parametrize("fused", [True, False])
def test_winograd_transforms_compute_the_conv(emu, case, fused):
    """input transform -> 16 GEMMs with U = G g G^T -> output transform equals the conv."""
    n, c, h, w_, k, pads = case
    epilogue = Epilogue("leaky_relu", 0.1) if fused else Epilogue()
    spec = ConvSpec(n, c, h, w_, k, 3, 3, pads, epilogue=epilogue)
    rng = np.random.default_rng()
    x, w, b = random(rng, n, c, h, w_), random(rng, k, c, 3, 3), random(rng, k)
    g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    u = np.einsum("ir,kcrs,js->ijck", g, w.astype(np.float64), g).reshape(16, c, k)
    th, tw = -(-spec.out_h // 2), -(-spec.out_w // 2)
    v = emu.empty((16, n * th * tw, c))
    emu.winograd_f2x2_input(dev(emu, x.transpose(0, 2, 3, 1)), v, spec)
    m = emu.xp.matmul(v, dev(emu, u.astype(np.float32)))
    out = emu.empty((n, spec.out_h, spec.out_w, k))
    emu.winograd_f2x2_output(m, dev(emu, b) if fused else None, out, spec)
    ref = conv2d_nchw(x, w, b if fused else None, pads).transpose(0, 2, 3, 1).reshape(-1, k)
    got = host(emu, out).reshape(-1, k)
    assert rel_error(got, apply_reference_epilogue(ref, epilogue)) < 1e-5
