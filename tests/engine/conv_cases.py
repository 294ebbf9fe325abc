"""Shapes and helpers shared by the conv algorithm and autotuner tests."""

from __future__ import annotations

import numpy as np

from engine.conv import ALGORITHMS, ConvSpec, Epilogue, candidates
from tests.engine.reference import conv2d_nchw

EPILOGUES = (
    Epilogue("none"),
    Epilogue("relu"),
    Epilogue("leaky_relu", 0.1),
    Epilogue("clip", -0.5, 0.75),
    Epilogue("sigmoid"),
    Epilogue("hard_sigmoid", 0.2, 0.5),
    Epilogue("hard_swish"),
    Epilogue("tanh"),
)

# (n, c, h, w, k, r, s, pads (t, l, b, r), strides, dilations, groups): odd sizes, channels that
# are not multiples of 8, batch 1 and 7, asymmetric pads, strides, dilations, groups, a map
# small enough to be one register tile.
SHAPES = (
    (1, 3, 7, 9, 5, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 1),
    (7, 5, 6, 5, 6, 3, 3, (0, 1, 2, 0), (1, 1), (1, 1), 1),
    (2, 13, 9, 11, 10, 3, 3, (0, 0, 0, 0), (1, 1), (1, 1), 1),
    (2, 6, 10, 9, 4, 3, 3, (1, 1, 1, 1), (2, 2), (1, 1), 1),
    (1, 4, 11, 10, 6, 3, 3, (2, 2, 2, 2), (1, 1), (2, 2), 1),
    (2, 6, 7, 7, 4, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 2),
    (2, 6, 9, 8, 6, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 6),
    (1, 5, 9, 9, 10, 3, 3, (1, 0, 1, 0), (2, 2), (1, 1), 5),
    (7, 9, 5, 6, 11, 1, 1, (0, 0, 0, 0), (1, 1), (1, 1), 1),
    (2, 7, 9, 8, 5, 1, 1, (0, 0, 0, 0), (2, 2), (1, 1), 1),
    (2, 9, 5, 7, 6, 1, 1, (0, 0, 0, 0), (1, 1), (1, 1), 3),
    (1, 3, 8, 7, 4, 5, 3, (2, 1, 2, 1), (1, 1), (1, 1), 1),
    (2, 3, 16, 15, 8, 7, 7, (3, 3, 3, 3), (2, 2), (1, 1), 1),
    (2, 64, 12, 12, 33, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 1),
    (3, 10, 3, 4, 7, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), 1),
)


def make_spec(shape, epilogue=EPILOGUES[0], n=None) -> ConvSpec:
    bn, c, h, w, k, r, s, pads, strides, dilations, groups = shape
    return ConvSpec(
        n if n is not None else bn, c, h, w, k, r, s, pads, strides, dilations, groups,
        epilogue=epilogue,
    )  # fmt: skip


def make_problem(spec: ConvSpec, seed: int = 0):
    """Fresh random NHWC input, weights (K, C/G, R, S) and bias for ``spec``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((spec.n, spec.h, spec.w, spec.c), dtype=np.float32)
    fan_in = spec.c_per_group * spec.r * spec.s
    weight = rng.standard_normal((spec.k, spec.c_per_group, spec.r, spec.s), dtype=np.float32)
    weight /= np.float32(np.sqrt(fan_in))
    bias = rng.standard_normal(spec.k, dtype=np.float32)
    return x, weight, bias


def activation_f64(y: np.ndarray, epi: Epilogue) -> np.ndarray:
    """The activations written out in float64, independent of engine.activations."""
    kind, a, b = epi.kind, epi.alpha, epi.beta
    if kind == "relu":
        return np.maximum(y, 0)
    if kind == "leaky_relu":
        return np.where(y < 0, a * y, y)
    if kind == "clip":
        return np.minimum(np.maximum(y, a), b)
    if kind == "sigmoid":
        return 1 / (1 + np.exp(-y))
    if kind == "hard_sigmoid":
        return np.clip(a * y + b, 0, 1)
    if kind == "hard_swish":
        return y * np.clip(y / 6 + 0.5, 0, 1)
    if kind == "tanh":
        return np.tanh(y)
    return y


def reference_nhwc(spec: ConvSpec, x, weight, bias) -> np.ndarray:
    """float64 direct convolution + epilogue, NHWC."""
    y = conv2d_nchw(
        x.transpose(0, 3, 1, 2), weight, bias, spec.pads, spec.strides, spec.dilations, spec.groups
    )
    return activation_f64(y, spec.epilogue).transpose(0, 2, 3, 1)


def run_algorithm(name: str, spec: ConvSpec, x, weight, bias, backend) -> np.ndarray:
    """Build ``name`` for ``spec`` and run it once with a workspace of exactly its size."""
    algo = ALGORITHMS[name](spec, weight, bias, backend)
    xp = backend.xp
    workspace = xp.full(ALGORITHMS[name].workspace_elems(spec), np.nan, np.float32)
    out = xp.full((spec.n, spec.out_h, spec.out_w, spec.k), np.nan, np.float32)
    algo(backend.asarray(x), out, workspace)
    return backend.to_host(out)


def compiled_first(spec, order=("implicit_gemm_1t", "implicit_gemm")) -> str:
    """A heuristic default (``engine.autotune.heuristic_default``) that picks a compiled kernel
    wherever one applies, the first of ``order``, so that untuned models run chains
    (engine/chain.py)."""
    names = candidates(spec)
    if spec.is_depthwise:
        return "depthwise_direct"  # compiled where numba is installed (native_depthwise)
    for name in order:
        if name in names:
            return name
    return "im2col_gemm"


def split_first(spec) -> str:
    """``compiled_first``, preferring the kernels that split across lanes (engine/lanes.py)."""
    return compiled_first(spec, ("implicit_gemm", "implicit_gemm_1t"))
