"""cuBLAS GEMMs called straight through ctypes on CuPy's own handle: usable inside CUDA graph
capture, and with a compute type per call (FP32, TF32 or FP16 tensor cores).

Why: CuPy's cuBLAS wrappers (``cupy.matmul`` and every ``cupy_backends.cuda.libs.cublas``
routine) first rebind the handle to the current stream through their ``setStream``, which raises
``NotImplementedError`` whenever that stream is capturing (CuPy issue #6290). cuBLAS itself
supports capture. So during capture the engine calls ``cublasGemmStridedBatchedEx`` here, on
the same library and handle CuPy loaded, after binding the handle to the capturing stream with
``cublasSetStream_v2`` and giving it a fixed workspace (no allocation inside the graph). The
workspace is set again after every ``cublasSetStream_v2``: that call resets it to cuBLAS's own
default pool (so does CuPy's ``setStream`` before each of its calls).

Row-major to column-major: C = A @ B (row-major) is C^T = B^T A^T in cuBLAS's column-major
terms, so B is passed as the first operand and A as the second, each with its row stride as
the leading dimension; a transposed view (unit row stride) is passed with CUBLAS_OP_T.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

OP_N, OP_T = 0, 1
CUDA_R_32F = 0
GEMM_DEFAULT = -1
#: cublasComputeType_t per precision the user may allow (see engine.cuda.precision)
COMPUTE_TYPES = {"fp32": 68, "tf32": 77, "fp16": 74}  # 32F, 32F_FAST_TF32, 32F_FAST_16F
#: NVIDIA's recommended cuBLAS workspace on Hopper
WORKSPACE_BYTES = 32 << 20


class CublasError(RuntimeError):
    """A cuBLAS call returned a non-zero status, or a GEMM is not of a supported form."""


def linked_library(module_path: str) -> ctypes.CDLL:
    """The shared object at ``module_path`` (CuPy's cuBLAS extension); a symbol looked up in it
    resolves in the libraries it is linked against (dlsym searches an object's dependencies).

    So the cuBLAS functions come from the very libcublas CuPy's handle was created by, even when
    the process holds another one (a PyTorch wheel built for another CUDA major version, say):
    a handle from one libcublas passed to another is undefined behaviour."""
    return ctypes.CDLL(module_path)


@dataclass(frozen=True)
class Operand:
    """How cuBLAS reads one row-major matrix (or a batch of them): op, leading dim, batch stride."""

    ptr: int
    op: int
    ld: int
    batch_stride: int


def address(array) -> int:
    """Device address of a CuPy array's first element (host address for a NumPy array, which
    the tests use to check the call arithmetic against a stand-in library)."""
    data = array.data
    return data.ptr if hasattr(data, "ptr") else array.ctypes.data


def operand(array, rows: int, cols: int) -> Operand:
    """Describe the last two axes of ``array`` (float32) for cuBLAS, any leading batch axis."""
    if array.dtype != np.float32:
        raise CublasError(f"GEMM operand must be float32, got {array.dtype}")
    s_row, s_col = (s // 4 for s in array.strides[-2:])
    batch = array.strides[0] // 4 if array.ndim == 3 and array.shape[0] > 1 else 0
    if s_col == 1 or cols == 1:
        return Operand(address(array), OP_N, max(s_row if rows > 1 else cols, cols, 1), batch)
    if s_row == 1 or rows == 1:
        return Operand(address(array), OP_T, max(s_col if cols > 1 else rows, rows, 1), batch)
    raise CublasError(f"GEMM operand with strides {array.strides} has no unit stride")


class Cublas:
    """The GEMM entry points of CuPy's libcublas, bound to CuPy's handle of the current device.

    Use ``Cublas.shared(cupy)``: the workspace given to CuPy's handle must outlive every user of
    that handle, so there is one instance per device and thread for the life of the process.
    """

    _instances: dict[tuple, Cublas] = {}

    @classmethod
    def shared(cls, cupy) -> Cublas:
        key = (cupy.cuda.Device().id, cupy.cuda.device.get_cublas_handle())
        if key not in cls._instances:
            cls._instances[key] = cls(cupy)
        return cls._instances[key]

    def __init__(self, cupy):
        self.cupy = cupy
        self.handle = cupy.cuda.device.get_cublas_handle()  # loads libcublas if not yet
        from cupy_backends.cuda.libs import cublas as cupy_cublas

        self.lib = linked_library(cupy_cublas.__file__)
        self.workspace = cupy.empty(WORKSPACE_BYTES, dtype=np.uint8)  # lives as long as we do
        for name in ("cublasSetStream_v2", "cublasSetWorkspace_v2", "cublasGemmStridedBatchedEx",
                     "cublasGetPointerMode_v2", "cublasSetPointerMode_v2"):  # fmt: skip
            getattr(self.lib, name).restype = ctypes.c_int
        self._alpha, self._beta = ctypes.c_float(1.0), ctypes.c_float(0.0)

    def check(self, status: int, what: str) -> None:
        if status != 0:
            raise CublasError(f"{what} failed with cuBLAS status {status}")

    def bind(self, stream_ptr: int) -> None:
        """Point the handle at ``stream_ptr`` with our fixed workspace, scalars read from the
        host (no CuPy check)."""
        handle = ctypes.c_void_p(self.handle)
        self.check(self.lib.cublasSetStream_v2(handle, ctypes.c_void_p(stream_ptr)), "setStream")
        # after setStream, which resets the workspace to cuBLAS's default pool: a fixed one means
        # cuBLAS allocates nothing inside a graph
        self.check(self.lib.cublasSetWorkspace_v2(handle, ctypes.c_void_p(address(self.workspace)),
                                                  ctypes.c_size_t(WORKSPACE_BYTES)),
                   "setWorkspace")  # fmt: skip
        self.check(self.lib.cublasSetPointerMode_v2(handle, 0), "setPointerMode")  # host

    def matmul(self, a, b, out=None, math: str = "fp32"):
        """``out = a @ b`` for float32 2-D or batched 3-D operands (a 2-D side broadcast)."""
        batch = max(a.shape[0] if a.ndim == 3 else 1, b.shape[0] if b.ndim == 3 else 1)
        m, k = a.shape[-2:]
        k2, n = b.shape[-2:]
        if k != k2 or a.ndim not in (2, 3) or b.ndim not in (2, 3):
            raise CublasError(f"matmul of {a.shape} and {b.shape} is not supported here")
        shape = (batch, m, n) if max(a.ndim, b.ndim) == 3 else (m, n)
        if out is None:
            out = self.cupy.empty(shape, np.float32)
        if tuple(out.shape) != shape or (out.ndim == 3 and batch > 1 and out.strides[0] == 0):
            raise CublasError(f"matmul output {out.shape} for {a.shape} @ {b.shape}")
        c = operand(out, m, n)
        if c.op != OP_N:
            raise CublasError(f"matmul output must have unit column stride, got {out.strides}")
        self.gemm(operand(b, k, n), operand(a, m, k), c, (n, m, k, batch), math)
        return out

    def gemm(self, first: Operand, second: Operand, c: Operand, dims, math: str) -> None:
        """Column-major C (n x m) = first (n x k) @ second (k x m), ``batch`` times."""
        n, m, k, batch = dims
        self.bind(self.cupy.cuda.get_current_stream().ptr)
        status = self.lib.cublasGemmStridedBatchedEx(
            ctypes.c_void_p(self.handle), first.op, second.op, n, m, k,
            ctypes.byref(self._alpha),
            ctypes.c_void_p(first.ptr), CUDA_R_32F, first.ld, ctypes.c_longlong(first.batch_stride),
            ctypes.c_void_p(second.ptr), CUDA_R_32F, second.ld,
            ctypes.c_longlong(second.batch_stride),
            ctypes.byref(self._beta),
            ctypes.c_void_p(c.ptr), CUDA_R_32F, c.ld, ctypes.c_longlong(c.batch_stride),
            batch, COMPUTE_TYPES[math], GEMM_DEFAULT,
        )  # fmt: skip
        self.check(status, f"GEMM {m}x{k} @ {k}x{n} (batch {batch}, {math})")
