"""CUDA allocation failures become the engine's recoverable OutOfMemoryError, nothing else does
(checked against a stand-in of CuPy's exception types, so it runs without a GPU)."""

from __future__ import annotations

from types import SimpleNamespace

from engine.cuda.memory import as_engine_error
from engine.errors import OutOfMemoryError


class PoolOutOfMemory(Exception):
    pass


class CudaRuntimeError(Exception):
    pass


CUPY = SimpleNamespace(cuda=SimpleNamespace(
    memory=SimpleNamespace(OutOfMemoryError=PoolOutOfMemory),
    runtime=SimpleNamespace(CUDARuntimeError=CudaRuntimeError),
))  # fmt: skip


def test_allocation_failures_are_recoverable_out_of_memory():
    pool = PoolOutOfMemory("out of memory allocating 1,073,741,824 bytes")
    runtime = CudaRuntimeError("cudaErrorMemoryAllocation: out of memory")
    for error in (pool, MemoryError(), runtime):
        mapped = as_engine_error(CUPY, error, "batch 64")
        assert isinstance(mapped, OutOfMemoryError) and mapped.recoverable
        assert "batch 64" in str(mapped)


def test_other_errors_pass_through():
    for error in (CudaRuntimeError("cudaErrorIllegalAddress"), ValueError("shape")):
        assert as_engine_error(CUPY, error, "batch 64") is error
