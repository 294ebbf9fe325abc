"""The CPU backend: NumPy arrays and whatever BLAS NumPy was built against."""

from __future__ import annotations

import os
import platform

import numpy as np

from engine import jit
from engine.backends.base import Backend
from engine.threads import blas_scope, cpu_cores

_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_tile")


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() in ("flags", "Features"):
                    present = set(value.split())
                    flags = [flag for flag in _ISA_FLAGS if flag in present]
                    break
    except OSError:
        pass
    return model, flags


def _blas_library() -> str:
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # show_config's layout differs across NumPy versions
        return "unknown"


def _blas_threads() -> int:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class NumpyBackend(Backend):
    """NumPy arrays; ``cpu_threading`` is ``"engine"`` or ``"blas"`` (see engine.threads)."""

    name = "numpy"
    device = "cpu"
    xp = np

    def __init__(self, cpu_threading: str = "engine"):
        blas_scope(cpu_threading)  # refuses an unknown value here, not at the first call
        self.cpu_threading = cpu_threading

    def compute_scope(self):
        return blas_scope(self.cpu_threading)

    @property
    def native_pool(self) -> bool:
        """Pooling in one compiled pass (engine.backends.cpu_pool) where numba is installed."""
        return jit.available()

    @property
    def native_depthwise(self) -> bool:
        """Depthwise convs in one compiled pass (engine.backends.cpu_depthwise) likewise."""
        return jit.available()

    def depthwise(self, x, taps, bias, out, spec) -> None:
        from engine.backends.cpu_depthwise import depthwise

        depthwise(x, taps, bias, out, spec)

    def depthwise_calls(self, x, taps, bias, out, spec, lanes: int):
        from engine.backends.cpu_depthwise import depthwise_calls

        return depthwise_calls(x, taps, bias, out, spec, lanes)

    def pool(self, x, out, kind, kernel, strides, dilations, pads, count_include_pad) -> None:
        from engine.backends.cpu_pool import pool

        pool(x, out, kind, kernel, strides, dilations, pads, count_include_pad)

    def fingerprint(self) -> dict:
        model, flags = _cpu_model_and_flags()
        return {
            "device": "cpu",
            "cpu": model,
            "isa": flags,
            "blas": _blas_library(),
            "threads": _blas_threads(),
            "cores": cpu_cores(),
            "cpu_threading": self.cpu_threading,
            "numpy": np.__version__,
            # the compiled kernels' compiler and settings (None: numba missing, none offered)
            "kernels": jit.compiler().fingerprint() if jit.available() else None,
        }
