"""Device memory as plain numbers (for the service's device-memory gauges and for the report of a
bucket's planned buffers), and the mapping of CUDA allocation failures to OutOfMemoryError."""

from __future__ import annotations

from engine.errors import OutOfMemoryError


def device_memory(cupy) -> dict[str, int]:
    """Bytes free and total on the current device, and held / in use by CuPy's memory pool."""
    free, total = cupy.cuda.runtime.memGetInfo()
    pool = cupy.get_default_memory_pool()
    return {
        "device_free_bytes": int(free),
        "device_total_bytes": int(total),
        "pool_held_bytes": int(pool.total_bytes()),
        "pool_used_bytes": int(pool.used_bytes()),
    }


def is_out_of_memory(cupy, error: BaseException) -> bool:
    """A CUDA allocation failure: CuPy's device pool, or the runtime (e.g. pinned host memory)."""
    if isinstance(error, cupy.cuda.memory.OutOfMemoryError | MemoryError):
        return True
    runtime = getattr(cupy.cuda.runtime, "CUDARuntimeError", None)
    return runtime is not None and isinstance(error, runtime) and (
        "cudaErrorMemoryAllocation" in str(error)
    )  # fmt: skip


def as_engine_error(cupy, error: BaseException, what: str) -> BaseException:
    """``error`` as the engine's recoverable OutOfMemoryError when it is a CUDA allocation
    failure, else ``error`` itself."""
    return OutOfMemoryError(f"{what}: {error}") if is_out_of_memory(cupy, error) else error
