"""Convolution algorithms, one module each, found by name in ``ALGORITHMS``."""

from __future__ import annotations

from engine.conv.base import ConvAlgorithm
from engine.conv.depthwise_direct import DepthwiseDirect
from engine.conv.gemm_1x1 import Gemm1x1
from engine.conv.im2col_gemm import Im2colGemm
from engine.conv.im2col_gemm_chunked import Im2colGemmChunked
from engine.conv.im2col_gemm_tf32 import Im2colGemmTF32
from engine.conv.implicit_gemm import ImplicitGemm, ImplicitGemmMap, ImplicitGemmNarrow
from engine.conv.parallel import Im2colGemmBands, one_thread_variant, parallel_variant
from engine.conv.spec import ConvSpec, Epilogue
from engine.conv.winograd_compiled import WinogradF2x2Compiled, WinogradF4x4Compiled
from engine.conv.winograd_f2x2_3x3 import WinogradF2x2
from engine.conv.winograd_f4x4_3x3 import WinogradF4x4

REFERENCE = Im2colGemm.name

_BASE = (Im2colGemm, Gemm1x1, Im2colGemmChunked, WinogradF2x2, WinogradF4x4, DepthwiseDirect)
_PARALLEL = tuple(parallel_variant(algo) for algo in _BASE)
#: numba-compiled, threaded by themselves (not applicable where numba is missing)
_COMPILED = (
    ImplicitGemm,
    ImplicitGemmNarrow,
    ImplicitGemmMap,
    WinogradF2x2Compiled,
    WinogradF4x4Compiled,
)
_ONE_THREAD = tuple(one_thread_variant(algo) for algo in _COMPILED)

ALGORITHMS: dict[str, type[ConvAlgorithm]] = {
    algo.name: algo
    for algo in (*_BASE, Im2colGemmTF32, *_PARALLEL, Im2colGemmBands, *_COMPILED, *_ONE_THREAD)
}


def candidates(
    spec: ConvSpec, allowed_math: tuple[str, ...] = ("fp32",), device: str = "cpu"
) -> list[str]:
    """Names of every algorithm that can run ``spec`` on ``device`` at an allowed precision,
    reference first."""
    return [
        name
        for name, algo in ALGORITHMS.items()
        if algo.math in allowed_math and device in algo.devices and algo.applicable(spec)
    ]


def default_algorithm(spec: ConvSpec) -> str:
    """The heuristic choice when nothing was tuned: skip the gather where it is not needed,
    and never a GEMM per channel for a depthwise conv."""
    if Gemm1x1.applicable(spec):
        return Gemm1x1.name
    if spec.is_depthwise and DepthwiseDirect.applicable(spec):
        return DepthwiseDirect.name
    return Im2colGemm.name


__all__ = [
    "ALGORITHMS",
    "REFERENCE",
    "ConvAlgorithm",
    "ConvSpec",
    "Epilogue",
    "candidates",
    "default_algorithm",
]
