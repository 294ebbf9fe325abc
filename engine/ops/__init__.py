"""Operator implementations, found by ONNX op name in ``REGISTRY``."""

from engine.ops import conv, elementwise, generate, linear, lrn, pool, shape  # noqa: F401
from engine.ops.base import NHWC, PLAIN, REGISTRY, LayoutConvert, Op, OpContext

__all__ = ["REGISTRY", "Op", "OpContext", "LayoutConvert", "NHWC", "PLAIN"]
