"""GEMM precision on the GPU: FP32 by default; TF32 and FP16 tensor-core GEMMs only when the
user allowed them, because they change the numbers (about 1e-3 relative for TF32, more for
FP16, against about 1e-6 for FP32).

CuPy selects the float32 GEMM's compute type process-wide (``cupy._core.set_compute_type``, or
``CUPY_TF32=1`` at import); ``engine.cuda.cublas`` takes it per call. ``current_math`` reads
CuPy's setting so that both paths agree, and ``allowed_math`` is the one place that turns the
user's permissions into the precisions the autotuner may offer.

CuPy honours that setting only partly (as its 14.x source reads): its 2-D float32 GEMM
(``dot``) runs TF32 when asked but maps FP16 to plain FP32, and its batched float32 GEMM (3-D
``matmul``) always runs FP32. Only the direct cuBLAS path applies every mode to every GEMM.
"""

from __future__ import annotations

import contextlib

import numpy as np

MATH_MODES = ("fp32", "tf32", "fp16")


def allowed_math(allow_tf32: bool = False, allow_fp16: bool = False) -> tuple[str, ...]:
    """The precisions a conv may run at: FP32 always, the others only when allowed."""
    return ("fp32",) + (("tf32",) if allow_tf32 else ()) + (("fp16",) if allow_fp16 else ())


def _compute_types(cupy) -> dict[str, int]:
    linalg = cupy._core._routines_linalg
    return {"tf32": linalg.COMPUTE_TYPE_TF32, "fp16": linalg.COMPUTE_TYPE_FP16}


def current_math(cupy) -> str:
    """The precision CuPy's float32 GEMMs run at right now."""
    compute = cupy._core.get_compute_type(np.float32)
    return next((m for m, t in _compute_types(cupy).items() if t == compute), "fp32")


@contextlib.contextmanager
def gemm_math(cupy, math: str):
    """The direct cuBLAS path runs at ``math`` inside the block, and so do CuPy's own 2-D
    float32 GEMMs where CuPy applies it (TF32; see the module docstring)."""
    if math not in MATH_MODES:
        raise ValueError(f"GEMM precision must be one of {MATH_MODES}, got {math!r}")
    core = cupy._core
    previous = core.get_compute_type(np.float32)
    linalg = core._routines_linalg
    core.set_compute_type(np.float32, _compute_types(cupy).get(math, linalg.COMPUTE_TYPE_FP32))
    try:
        yield
    finally:
        core.set_compute_type(np.float32, previous)


def relative_error(xp, y, reference) -> float:
    """||y - reference|| / ||reference||, computed in float64."""
    reference = reference.astype(np.float64)
    return float(xp.linalg.norm(y.astype(np.float64) - reference)) / max(
        float(xp.linalg.norm(reference)), 1e-30
    )
