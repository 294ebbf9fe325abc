"""im2col + GEMM with cuBLAS allowed to round the GEMM inputs to TF32 (tensor cores).

Only on CuPy, and only offered when the user allowed TF32: its results differ from float32 GEMMs
by about 1e-3 relative. NumPy has no TF32 mode, so on the CPU this candidate never appears.
"""

from __future__ import annotations

import contextlib

import numpy as np

from engine.conv.im2col_gemm import Im2colGemm


@contextlib.contextmanager
def tf32_gemms(xp):
    """CuPy's float32 GEMMs run in TF32 inside the block (a process-wide CuPy setting)."""
    linalg = xp._core._routines_linalg  # where CuPy keeps its GEMM compute-type switch
    previous = linalg.get_compute_type(np.float32)
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32)
    try:
        yield
    finally:
        linalg.set_compute_type(np.float32, previous)


class Im2colGemmTF32(Im2colGemm):
    name = "im2col_gemm_tf32"
    math = "tf32"
    tolerance = 1e-2
    devices = ("cuda",)

    def __call__(self, x, out, workspace) -> None:
        with tf32_gemms(self.xp):
            super().__call__(x, out, workspace)
