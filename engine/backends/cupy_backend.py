"""The NVIDIA GPU backend: CuPy arrays, cuBLAS GEMMs, and RawKernels for the gathers."""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

from engine.backends.base import Backend
from engine.errors import DeviceUnavailableError

_THREADS = 256


def kernel_source(name: str) -> str:
    """The text of a CUDA source shipped in ``engine/kernels``."""
    return resources.files("engine.kernels").joinpath(name).read_text(encoding="utf-8")


def import_cupy():
    """CuPy with at least one visible device, or DeviceUnavailableError."""
    try:
        import cupy
    except ImportError as error:
        raise DeviceUnavailableError("device 'cuda' needs CuPy (pip install '.[gpu]')") from error
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDA driver missing or broken: CuPy raises its own types
        raise DeviceUnavailableError(f"no usable CUDA device: {error}") from error
    if count == 0:
        raise DeviceUnavailableError("no CUDA device visible")
    return cupy


class CupyBackend(Backend):
    name = "cupy"
    device = "cuda"

    def __init__(self):
        self.xp = import_cupy()

    @functools.cached_property
    def _im2col_kernel(self):
        return self.xp.RawKernel(kernel_source("im2col.cu"), "im2col_nhwc")

    def to_host(self, array) -> np.ndarray:
        return self.xp.asnumpy(array)

    def copy_to(self, dst, src_host: np.ndarray) -> None:
        dst.set(np.ascontiguousarray(src_host))

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, self.xp.cuda.memory.OutOfMemoryError | MemoryError)

    def im2col(self, x, cols, spec, padded) -> None:
        total = cols.size
        blocks = min((total + _THREADS - 1) // _THREADS, 65535 * 8)
        args = (x, cols, np.int64(total), *map(np.int32, (spec.h, spec.w, spec.c)))
        args += tuple(
            np.int32(v)
            for v in (
                spec.out_h, spec.out_w, spec.groups, spec.r, spec.s, spec.c_per_group,
                spec.pads[0], spec.pads[1], *spec.strides, *spec.dilations,
            )
        )  # fmt: skip
        self._im2col_kernel((blocks,), (_THREADS,), args)

    def fingerprint(self) -> dict:
        cupy = self.xp
        device = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(device.id)
        return {
            "device": "cuda",
            "gpu": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
            "compute_capability": device.compute_capability,
            "sm_count": props["multiProcessorCount"],
            "driver": cupy.cuda.runtime.driverGetVersion(),
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cublas": cupy.cuda.cublas.getVersion(device.cublas_handle),
            "cupy": cupy.__version__,
        }
