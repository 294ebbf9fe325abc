"""Backends by device name. ``resolve_backend`` is called once per model."""

from __future__ import annotations

from engine.backends.base import Backend
from engine.backends.numpy_backend import NumpyBackend
from engine.errors import DeviceUnavailableError

DEVICES = ("cpu", "cuda", "auto")


def cuda_available() -> bool:
    from engine.backends.cupy_backend import import_cupy

    try:
        import_cupy()
    except DeviceUnavailableError:
        return False
    return True


def resolve_backend(
    device: str = "cpu", cuda_graphs: bool = True, cpu_threading: str = "engine"
) -> Backend:
    """``cpu`` -> NumPy; ``cuda`` -> CuPy (or DeviceUnavailableError, never a quiet CPU fallback);
    ``auto`` -> CuPy when a GPU is visible, else NumPy. ``cuda_graphs`` only matters on CuPy,
    ``cpu_threading`` only on NumPy."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu" or (device == "auto" and not cuda_available()):
        return NumpyBackend(cpu_threading)
    from engine.backends.cupy_backend import CupyBackend

    return CupyBackend(cuda_graphs=cuda_graphs)


__all__ = ["Backend", "NumpyBackend", "resolve_backend", "cuda_available", "DEVICES"]
