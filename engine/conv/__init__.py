"""Convolution algorithms, one module each, found by name in ``ALGORITHMS``."""

from __future__ import annotations

from engine.conv.base import ConvAlgorithm
from engine.conv.gemm_1x1 import Gemm1x1
from engine.conv.im2col_gemm import Im2colGemm
from engine.conv.spec import ConvSpec, Epilogue

REFERENCE = Im2colGemm.name

ALGORITHMS: dict[str, type[ConvAlgorithm]] = {algo.name: algo for algo in (Im2colGemm, Gemm1x1)}


def candidates(spec: ConvSpec, allowed_math: tuple[str, ...] = ("fp32",)) -> list[str]:
    """Names of every algorithm that can run ``spec`` at an allowed precision, reference first."""
    return [
        name
        for name, algo in ALGORITHMS.items()
        if algo.math in allowed_math and algo.applicable(spec)
    ]


def default_algorithm(spec: ConvSpec) -> str:
    """The heuristic choice when nothing was tuned: skip the gather where it is not needed."""
    return Gemm1x1.name if Gemm1x1.applicable(spec) else Im2colGemm.name


__all__ = [
    "ALGORITHMS",
    "REFERENCE",
    "ConvAlgorithm",
    "ConvSpec",
    "Epilogue",
    "candidates",
    "default_algorithm",
]
